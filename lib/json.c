/* json.c: see json.h. */
#include "json.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void json_init(struct json *j) { memset(j, 0, sizeof *j); }
void json_free(struct json *j) { free(j->s); json_init(j); }
const char *json_str(const struct json *j) { return j->s && !j->oom ? j->s : ""; }

static void put(struct json *j, const char *p, size_t n)
{
    if (j->oom)
        return;
    if (j->len + n + 1 > j->cap) {
        size_t cap = j->cap ? j->cap : 256;
        while (cap < j->len + n + 1)
            cap *= 2;
        char *s = realloc(j->s, cap);
        if (!s) {
            j->oom = true;
            return;
        }
        j->s = s, j->cap = cap;
    }
    memcpy(j->s + j->len, p, n);
    j->len += n;
    j->s[j->len] = '\0';
}

static void puts_(struct json *j, const char *s) { put(j, s, strlen(s)); }

void json_put_string(struct json *j, const char *s)
{
    put(j, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        char esc[8];
        switch (*p) {
        case '"': puts_(j, "\\\""); break;
        case '\\': puts_(j, "\\\\"); break;
        case '\n': puts_(j, "\\n"); break;
        case '\r': puts_(j, "\\r"); break;
        case '\t': puts_(j, "\\t"); break;
        default:
            if (*p < 0x20 || *p == 0x7f) {
                snprintf(esc, sizeof esc, "\\u%04x", *p);
                puts_(j, esc);
            } else {
                put(j, (const char *)p, 1);
            }
        }
    }
    put(j, "\"", 1);
}

static void member(struct json *j, const char *key)
{
    if (j->need_comma)
        puts_(j, ", ");
    if (key) {
        json_put_string(j, key);
        puts_(j, ": ");
    }
    j->need_comma = true;
}

void json_obj_begin(struct json *j, const char *key) { member(j, key); puts_(j, "{"); j->need_comma = false; }
void json_obj_end(struct json *j) { puts_(j, "}"); j->need_comma = true; }
void json_arr_begin(struct json *j, const char *key) { member(j, key); puts_(j, "["); j->need_comma = false; }
void json_arr_end(struct json *j) { puts_(j, "]"); j->need_comma = true; }
void json_str_member(struct json *j, const char *key, const char *val) { member(j, key); json_put_string(j, val); }
void json_bool_member(struct json *j, const char *key, bool val) { member(j, key); puts_(j, val ? "true" : "false"); }

void json_u64_member(struct json *j, const char *key, uint64_t val)
{
    char b[32];
    snprintf(b, sizeof b, "%" PRIu64, val);
    member(j, key);
    puts_(j, b);
}

void json_i64_member(struct json *j, const char *key, int64_t val)
{
    char b[32];
    snprintf(b, sizeof b, "%" PRId64, val);
    member(j, key);
    puts_(j, b);
}

void json_dbl_member(struct json *j, const char *key, double val)
{
    char b[64];
    snprintf(b, sizeof b, "%.3f", val);
    member(j, key);
    puts_(j, b);
}

/* ---- reader ---- */

struct rd {
    const char *p;
    const char *why;
};

static void ws(struct rd *r)
{
    while (*r->p == ' ' || *r->p == '\t' || *r->p == '\n' || *r->p == '\r')
        r->p++;
}

static int fail(struct rd *r, const char *why)
{
    if (!r->why)
        r->why = why;
    return -EINVAL;
}

/* A string into out (size n), unescaping; \u escapes above 0x7f are refused (ASCII only). */
static int string(struct rd *r, char *out, size_t n)
{
    size_t k = 0;
    if (*r->p != '"')
        return fail(r, "expected a string");
    r->p++;
    while (*r->p != '"') {
        unsigned char c = (unsigned char)*r->p++;
        if (c == '\0')
            return fail(r, "unterminated string");
        if (c < 0x20)
            return fail(r, "control character in string");
        if (c == '\\') {
            c = (unsigned char)*r->p++;
            switch (c) {
            case '"': case '\\': case '/': break;
            case 'n': c = '\n'; break;
            case 't': c = '\t'; break;
            case 'r': c = '\r'; break;
            case 'b': c = '\b'; break;
            case 'f': c = '\f'; break;
            case 'u': {
                unsigned v = 0;
                for (int i = 0; i < 4; i++) {
                    char h = *r->p++;
                    v <<= 4;
                    if (h >= '0' && h <= '9') v |= (unsigned)(h - '0');
                    else if (h >= 'a' && h <= 'f') v |= (unsigned)(h - 'a' + 10);
                    else if (h >= 'A' && h <= 'F') v |= (unsigned)(h - 'A' + 10);
                    else return fail(r, "bad \\u escape");
                }
                if (v == 0 || v > 0x7f)
                    return fail(r, "\\u escape outside ASCII");
                c = (unsigned char)v;
                break;
            }
            default: return fail(r, "bad escape");
            }
        }
        if (k + 1 >= n)
            return fail(r, "string too long");
        out[k++] = (char)c;
    }
    r->p++;
    out[k] = '\0';
    return 0;
}

/* A scalar that is not a string: number, true, false, null. */
static int scalar(struct rd *r, char *out, size_t n)
{
    size_t k = 0;
    while (*r->p && strchr("0123456789+-.eEtruefalsn", *r->p)) {
        if (k + 1 >= n)
            return fail(r, "value too long");
        out[k++] = *r->p++;
    }
    out[k] = '\0';
    if (k == 0)
        return fail(r, "expected a value");
    return 0;
}

static int arguments(struct rd *r, struct json_request *req)
{
    ws(r);
    if (*r->p++ != '{')
        return fail(r, "\"arguments\" must be an object");
    ws(r);
    if (*r->p == '}') {
        r->p++;
        return 0;
    }
    for (;;) {
        if (req->nargs >= JSON_MAX_ARGS)
            return fail(r, "too many arguments");
        ws(r);
        if (string(r, req->args[req->nargs].key, sizeof req->args[0].key) < 0)
            return -EINVAL;
        ws(r);
        if (*r->p++ != ':')
            return fail(r, "expected ':'");
        ws(r);
        req->args[req->nargs].is_string = *r->p == '"';
        int e = *r->p == '"' ? string(r, req->args[req->nargs].val, sizeof req->args[0].val)
                             : scalar(r, req->args[req->nargs].val, sizeof req->args[0].val);
        if (e < 0)
            return e;
        req->nargs++;
        ws(r);
        if (*r->p == ',') {
            r->p++;
            continue;
        }
        if (*r->p++ != '}')
            return fail(r, "expected ',' or '}'");
        return 0;
    }
}

int json_parse_request(const char *text, struct json_request *req, const char **why)
{
    struct rd r = {.p = text};
    memset(req, 0, sizeof *req);
    ws(&r);
    if (*r.p++ != '{')
        return *why = "expected an object", -EINVAL;
    for (;;) {
        char key[32];
        ws(&r);
        if (*r.p == '}' && !req->execute[0]) {
            r.p++;
            break;
        }
        if (string(&r, key, sizeof key) < 0)
            goto bad;
        ws(&r);
        if (*r.p++ != ':') {
            fail(&r, "expected ':'");
            goto bad;
        }
        ws(&r);
        if (!strcmp(key, "execute")) {
            if (string(&r, req->execute, sizeof req->execute) < 0)
                goto bad;
        } else if (!strcmp(key, "arguments")) {
            if (arguments(&r, req) < 0)
                goto bad;
        } else if (!strcmp(key, "id")) {
            char tmp[128];
            if ((*r.p == '"' ? string(&r, tmp, sizeof tmp) : scalar(&r, tmp, sizeof tmp)) < 0)
                goto bad;
        } else {
            fail(&r, "unknown member");
            goto bad;
        }
        ws(&r);
        if (*r.p == ',') {
            r.p++;
            continue;
        }
        if (*r.p++ != '}') {
            fail(&r, "expected ',' or '}'");
            goto bad;
        }
        break;
    }
    ws(&r);
    if (*r.p) {
        fail(&r, "trailing text");
        goto bad;
    }
    if (!req->execute[0]) {
        *why = "missing \"execute\"";
        return -EINVAL;
    }
    return 0;
bad:
    *why = r.why ? r.why : "malformed request";
    return -EINVAL;
}

const char *json_request_arg(const struct json_request *req, const char *key)
{
    for (int i = 0; i < req->nargs; i++)
        if (!strcmp(req->args[i].key, key))
            return req->args[i].val;
    return NULL;
}
