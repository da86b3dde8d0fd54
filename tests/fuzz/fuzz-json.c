/* fuzz-json.c: libFuzzer harness for the control request parser (lib/json.c).
 *
 * The control socket hands json_parse_request() one line of at most 4 KiB from any
 * client that passed the peer check.  Besides the sanitizers, a round trip: a request
 * that parses is written back with the JSON writer (json_put_string) and must parse to
 * the same request.
 */
#include "json.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void append(char **p, size_t *len, const char *s)
{
    size_t n = strlen(s);
    char *q = realloc(*p, *len + n + 1);
    if (!q)
        abort();
    memcpy(q + *len, s, n + 1);
    *p = q;
    *len += n;
}

static void append_string(char **p, size_t *len, const char *s)
{
    struct json j;
    json_init(&j);
    json_put_string(&j, s);
    append(p, len, json_str(&j));
    json_free(&j);
}

/* The request written back as text. */
static char *unparse(const struct json_request *r)
{
    char *p = NULL;
    size_t len = 0;
    append(&p, &len, "{\"execute\": ");
    append_string(&p, &len, r->execute);
    append(&p, &len, ", \"arguments\": {");
    for (int i = 0; i < r->nargs; i++) {
        append(&p, &len, i ? ", " : "");
        append_string(&p, &len, r->args[i].key);
        append(&p, &len, ": ");
        if (r->args[i].is_string)
            append_string(&p, &len, r->args[i].val);
        else
            append(&p, &len, r->args[i].val);
    }
    append(&p, &len, "}}");
    return p;
}

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
    if (size > 8192)
        return 0;
    char *text = malloc(size + 1);
    if (!text)
        return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    static struct json_request req, again;
    const char *why = NULL;
    if (json_parse_request(text, &req, &why) == 0) {
        if (!req.execute[0] || req.nargs < 0 || req.nargs > JSON_MAX_ARGS)
            __builtin_trap();
        json_request_arg(&req, "pivot");
        json_request_arg(&req, "speed");
        char *back = unparse(&req);
        const char *why2 = NULL;
        if (json_parse_request(back, &again, &why2) != 0 || strcmp(again.execute, req.execute) ||
            again.nargs != req.nargs)
            __builtin_trap(); /* what the writer writes, the reader must read */
        for (int i = 0; i < req.nargs; i++)
            if (strcmp(again.args[i].key, req.args[i].key) ||
                strcmp(again.args[i].val, req.args[i].val) ||
                again.args[i].is_string != req.args[i].is_string)
                __builtin_trap();
        free(back);
    } else if (!why) {
        __builtin_trap(); /* a refusal always says why */
    }
    free(text);
    return 0;
}
