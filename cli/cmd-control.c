/* cmd-control.c: the thin clients of a job's control socket:
 *   complete [--pivot] SOCKET, cancel SOCKET, pause SOCKET, resume SOCKET,
 *   set-speed SOCKET RATE, status [--json] SOCKET. */
#include "cli.h"
#include "json.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "control.h"

struct ctl_opts {
    const char *name;
    const char *socket;
    const char *rate;
    bool pivot, json;
};

enum { OPT_PIVOT = 1000, OPT_JSON };

static const struct argp_option complete_options[] = {
    {"pivot", OPT_PIVOT, 0, 0, "Move the writers onto the target (QEMU's block-job-complete)", 0},
    {0},
};
static const struct argp_option status_options[] = {
    {"json", OPT_JSON, 0, 0, "Print the job's state as JSON", 0},
    {0},
};

static error_t parse_opt(int key, char *arg, struct argp_state *st)
{
    struct ctl_opts *o = st->input;
    switch (key) {
    case OPT_PIVOT: o->pivot = true; break;
    case OPT_JSON: o->json = true; break;
    case ARGP_KEY_ARG:
        if (!o->socket)
            o->socket = arg;
        else if (!strcmp(o->name, "set-speed") && !o->rate)
            o->rate = arg;
        else
            argp_error(st, "too many arguments");
        break;
    case ARGP_KEY_END:
        if (!o->socket)
            argp_error(st, "expected the job's SOCKET");
        if (!strcmp(o->name, "set-speed")) {
            uint64_t v;
            if (!o->rate)
                argp_error(st, "expected SOCKET RATE");
            if (mi_parse_size(o->rate, &v) < 0)
                argp_error(st, "'%s' is not a rate (bytes per second, K/M/G suffixes)", o->rate);
        }
        break;
    default: return ARGP_ERR_UNKNOWN;
    }
    return 0;
}

static const struct argp complete_argp = {complete_options, parse_opt, "SOCKET",
    "Quiesce the writers, drain, flush the target and finish: the target becomes a consistent "
    "copy of that instant (QEMU's cancel-in-ready); with --pivot the writers move onto the "
    "target first (QEMU's block-job-complete).", NULL, NULL, NULL};
static const struct argp status_argp = {status_options, parse_opt, "SOCKET", "Show a running job's state.", NULL, NULL, NULL};
static const struct argp cancel_argp = {NULL, parse_opt, "SOCKET", "Stop a job now (exit 3; the target is not consistent).", NULL, NULL, NULL};
static const struct argp pause_argp = {NULL, parse_opt, "SOCKET", "Pause a job.", NULL, NULL, NULL};
static const struct argp resume_argp = {NULL, parse_opt, "SOCKET", "Resume a paused job (also after an error under the stop and enospc policies).", NULL, NULL, NULL};
static const struct argp speed_argp = {NULL, parse_opt, "SOCKET RATE", "Change a job's speed limit (0 = unlimited).", NULL, NULL, NULL};

/* Print an answer: {"return": {...}} → 0 (status prints it), {"error": ...} → 1. */
static int answer(const struct ctl_opts *o, const char *reply)
{
    if (strncmp(reply, "{\"return\"", 9)) {
        const char *d = strstr(reply, "\"desc\": \"");
        char desc[512] = "";
        if (d) {
            d += 9;
            size_t i = 0;
            while (*d && *d != '"' && i < sizeof desc - 1) {
                if (*d == '\\' && d[1])
                    d++;
                desc[i++] = *d++;
            }
            desc[i] = '\0';
        }
        cli_error("%s: %s", o->socket, desc[0] ? desc : reply);
        return MI_EXIT_FAIL;
    }
    if (!strcmp(o->name, "status") || !strcmp(o->name, "complete")) {
        if (o->json) {
            printf("%s\n", reply);
        } else {
            /* "key": value pairs, one a line */
            const char *p = strchr(reply + 1, '{');
            for (p = p ? p + 1 : ""; *p && *p != '}';) {
                while (*p == ' ' || *p == ',')
                    p++;
                const char *k = p;
                while (*p && !(p[0] == ':' && p[-1] == '"'))
                    p++;
                if (!*p)
                    break;
                int klen = (int)(p - k);
                p++;
                while (*p == ' ')
                    p++;
                const char *v = p;
                int depth = 0;
                bool str = false;
                while (*p && (str || depth || (*p != ',' && *p != '}'))) {
                    if (*p == '"' && p[-1] != '\\')
                        str = !str;
                    else if (!str && (*p == '[' || *p == '{'))
                        depth++;
                    else if (!str && (*p == ']' || *p == '}'))
                        depth--;
                    p++;
                }
                printf("%.*s: %.*s\n", klen - 2, k + 1, (int)(p - v), v);
            }
        }
    }
    return MI_EXIT_OK;
}

static int run_ctl(const char *name, const struct argp *argp, int argc, char **argv)
{
    struct ctl_opts o = {.name = name};
    cli_parse(argp, argc, argv, NULL, &o);
    char req[256];
    if (!strcmp(name, "complete"))
        snprintf(req, sizeof req, "{\"execute\": \"job-complete\", \"arguments\": {\"pivot\": %s}}",
                 o.pivot ? "true" : "false");
    else if (!strcmp(name, "set-speed")) {
        uint64_t v = 0;
        mi_parse_size(o.rate, &v);
        snprintf(req, sizeof req, "{\"execute\": \"block-job-set-speed\", \"arguments\": {\"speed\": %llu}}",
                 (unsigned long long)v);
    } else if (!strcmp(name, "status"))
        snprintf(req, sizeof req, "{\"execute\": \"query-block-jobs\"}");
    else
        snprintf(req, sizeof req, "{\"execute\": \"job-%s\"}", name);
    char *reply = NULL;
    if (control_call(o.socket, req, &reply) < 0) {
        cli_error_last();
        return MI_EXIT_FAIL;
    }
    int code = answer(&o, reply);
    free(reply);
    return code;
}

#define CTL(id, str, argp, summary) \
    static int run_##id(int argc, char **argv) { return run_ctl(str, &argp, argc, argv); } \
    static const struct cli_cmd cmd_##id = {str, summary, &argp, run_##id}; \
    MI_COMMAND(cmd_##id)

CTL(complete, "complete", complete_argp, "finish a follow job (--pivot: move the writers to the target)");
CTL(cancel, "cancel", cancel_argp, "stop a job now (the target is not consistent)");
CTL(pause, "pause", pause_argp, "pause a job");
CTL(resume, "resume", resume_argp, "resume a paused job");
CTL(set_speed, "set-speed", speed_argp, "change a job's speed limit");
CTL(status, "status", status_argp, "show a running job's state");
