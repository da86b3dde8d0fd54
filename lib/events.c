/* events.c: see events.h. */
#include "events.h"

#include <pthread.h>
#include <sys/time.h>

static FILE *ev_out;
static pthread_mutex_t ev_lock = PTHREAD_MUTEX_INITIALIZER;

void events_enable(FILE *out) { ev_out = out; }
bool events_enabled(void) { return ev_out != NULL; }

void events_emit(const char *name, const struct json *data)
{
    if (!ev_out)
        return;
    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct json j;
    json_init(&j);
    json_obj_begin(&j, NULL);
    json_obj_begin(&j, "timestamp");
    json_i64_member(&j, "seconds", tv.tv_sec);
    json_i64_member(&j, "microseconds", tv.tv_usec);
    json_obj_end(&j);
    json_str_member(&j, "event", name);
    json_obj_begin(&j, "data");
    pthread_mutex_lock(&ev_lock);
    fprintf(ev_out, "%s%s}}\n", json_str(&j), data ? json_str(data) : "");
    fflush(ev_out);
    pthread_mutex_unlock(&ev_lock);
    json_free(&j);
}
