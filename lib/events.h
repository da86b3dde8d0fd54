/* events.h: QMP-shaped events on stdout (--json), one JSON object per line:
 *   {"timestamp": {"seconds": S, "microseconds": U}, "event": NAME, "data": {...}}
 * Thread-safe: workers report errors while the main thread reports progress.
 */
#ifndef MI_EVENTS_H
#define MI_EVENTS_H

#include "json.h"
#include <stdio.h>

/* Emit one event when --json is on; data is the already built "data" object's members
 * (json_str of a struct json holding members only, no braces), may be NULL. */
void events_enable(FILE *out);
bool events_enabled(void);
void events_emit(const char *name, const struct json *data_members);

#endif
