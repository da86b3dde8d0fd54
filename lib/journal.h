/* journal.h: the write journal as mirror-img uses it: its layout (journal-layout.h), the
 * writer's side (journal-writer.h, also built into the shim), the follower's side
 * (journal-follower.h) and /proc liveness (proc.h). */
#ifndef MI_JOURNAL_H
#define MI_JOURNAL_H

#include "journal-follower.h"

#endif
