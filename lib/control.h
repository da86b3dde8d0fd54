/* control.h: the control socket.
 *
 * A Unix stream socket (mode 0600; a peer whose uid is neither ours nor root is refused).
 * Each line a client sends is one QMP-style request,
 *   {"execute": "job-pause"}   {"execute": "block-job-set-speed", "arguments": {"speed": 1048576}}
 * and each gets one line back: {"return": {...}} or {"error": {"class": C, "desc": D}}.
 */
#ifndef MI_CONTROL_H
#define MI_CONTROL_H

#include "json.h"

/* Handle one request: fill *ret with the members of the "return" object and return 0, or
 * return -1 after setting *err_class and writing a description into err_desc. */
typedef int (*control_handler)(void *ctx, const struct json_request *req, struct json *ret,
                               const char **err_class, char *err_desc, size_t desc_size);

struct control;
/* Bind path (refusing a live socket there; replacing a stale one) and serve it on a
 * thread.  Returns NULL with a message. */
struct control *control_start(const char *path, control_handler fn, void *ctx);
/* Stop serving and remove the socket. NULL-safe. */
void control_stop(struct control *c);

/* Client: send one request, read one reply line into reply (malloc'd).  Returns 0 or
 * -errno with a message. */
int control_call(const char *path, const char *request, char **reply);

#endif
