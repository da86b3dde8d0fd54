/* jobctl.h: the control-socket commands every job answers (a control_handler), with a
 * hook for the commands only some jobs know (follow's job-complete). */
#ifndef MI_JOBCTL_H
#define MI_JOBCTL_H

#include "control.h"
#include "job.h"

struct jobctl {
    struct job *job;
    /* Optional: handle commands the generic table does not know; return 1 when not
     * handled (then "unknown command" is answered), else as control_handler. */
    int (*extra)(void *ctx, const struct json_request *req, struct json *ret,
                 const char **err_class, char *err_desc, size_t desc_size);
    /* Optional: add members to query answers. */
    void (*query_extra)(void *ctx, struct json *ret);
    void *ctx;
};

int jobctl_handle(void *jobctl, const struct json_request *req, struct json *ret,
                  const char **err_class, char *err_desc, size_t desc_size);

#endif
