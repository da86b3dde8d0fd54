/* json.h: a small JSON writer (events, control answers, --json output) and a reader for
 * the flat control requests the socket accepts.
 *
 * Written by hand rather than with a library: the build's dependencies are fixed (see the
 * README), the writer is a string builder, and the reader accepts one shape only:
 *   {"execute": NAME, "arguments": {KEY: SCALAR, ...}}   (arguments optional)
 */
#ifndef MI_JSON_H
#define MI_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct json {
    char *s;
    size_t len, cap;
    bool need_comma;
    bool oom;
};

void json_init(struct json *j);
void json_free(struct json *j);
/* The text so far (never NULL; "" after an allocation failure). */
const char *json_str(const struct json *j);

void json_obj_begin(struct json *j, const char *key); /* key NULL: a value, not a member */
void json_obj_end(struct json *j);
void json_arr_begin(struct json *j, const char *key);
void json_arr_end(struct json *j);
void json_str_member(struct json *j, const char *key, const char *val);
void json_u64_member(struct json *j, const char *key, uint64_t val);
void json_i64_member(struct json *j, const char *key, int64_t val);
void json_dbl_member(struct json *j, const char *key, double val);
void json_bool_member(struct json *j, const char *key, bool val);
/* Append s escaped as a JSON string (with quotes). */
void json_put_string(struct json *j, const char *s);

/* A parsed control request. */
#define JSON_MAX_ARGS 8
struct json_request {
    char execute[64];
    int nargs;
    struct {
        char key[32];
        char val[512]; /* strings unescaped; numbers and booleans as written */
        bool is_string;
    } args[JSON_MAX_ARGS];
};
/* Parse one request; returns 0 or -EINVAL with a reason in *why. */
int json_parse_request(const char *text, struct json_request *req, const char **why);
/* Look up an argument; NULL when absent. */
const char *json_request_arg(const struct json_request *req, const char *key);

#endif
