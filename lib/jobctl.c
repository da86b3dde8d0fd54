/* jobctl.c: see jobctl.h.  Commands (QMP names, with short aliases):
 *   query-block-jobs / status, job-pause / pause, job-resume / resume,
 *   job-cancel / cancel, block-job-set-speed / set-speed {"speed": N}. */
#include "jobctl.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static bool is(const struct json_request *r, const char *a, const char *b)
{
    return !strcmp(r->execute, a) || !strcmp(r->execute, b);
}

int jobctl_handle(void *arg, const struct json_request *req, struct json *ret,
                  const char **err_class, char *err_desc, size_t desc_size)
{
    struct jobctl *c = arg;
    struct job *job = c->job;
    if (is(req, "query-block-jobs", "status")) {
        job_query(job, ret);
        if (c->query_extra)
            c->query_extra(c->ctx, ret);
        return 0;
    }
    if (is(req, "job-pause", "pause")) {
        job_pause(job);
        return 0;
    }
    if (is(req, "job-resume", "resume")) {
        job_resume(job);
        return 0;
    }
    if (is(req, "job-cancel", "cancel")) {
        job_cancel(job);
        return 0;
    }
    if (is(req, "block-job-set-speed", "set-speed")) {
        const char *v = json_request_arg(req, "speed");
        uint64_t speed;
        if (!v || mi_parse_size(v, &speed) < 0) {
            snprintf(err_desc, desc_size, "set-speed needs a \"speed\" argument in bytes per second");
            return -1;
        }
        job_set_speed(job, speed);
        return 0;
    }
    if (c->extra) {
        int r = c->extra(c->ctx, req, ret, err_class, err_desc, desc_size);
        if (r != 1)
            return r;
    }
    *err_class = "CommandNotFound";
    snprintf(err_desc, desc_size, "The command %s has not been found", req->execute);
    return -1;
}
