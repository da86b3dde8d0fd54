/* journal-run.c: the face of lib/sync for `follow` and `copy --incremental`: options in,
 * the control socket and signals wired, the engine run, its outcome printed. */
#include "common.h"
#include "control.h"
#include "events.h"
#include "jobctl.h"
#include "sync.h"
#include "util.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>

int mi_opts_check_journal(struct mi_opts *o)
{
    const char *sub = o->sub;
    if (o->nargs != 2)
        return cli_usage(sub, "expected SRC and DST");
    if (!o->journal)
        return cli_usage(sub, "--journal J is required");
    if (o->compress || o->create.cluster_size || o->create.preallocation ||
        o->create.compression_type)
        return cli_usage(sub, "the journal mirrors the image as it is: -c and -o do not apply");
    if (ep_is_nbd_uri(o->args[0]))
        return cli_usage(sub, "the source must be a local file (the shim journals it)");
    if (o->src_fmt || o->dst_fmt) {
        const char *probed = ep_probe(o->args[0]);
        const char *want = o->dst_fmt ? o->dst_fmt : o->src_fmt;
        bool disk = probed && !strcmp(probed, "qcow2") && !strcmp(want, "raw") && o->dst_fmt;
        if (probed && strcmp(probed, want) && !disk)
            return cli_usage(sub, "the journal mirrors a %s source file to file, or a qcow2 "
                             "source as a disk into raw (-O raw): converting to %s this way is "
                             "not possible (use a plain copy)", probed, want);
    }
    return mi_opts_check(o);
}

static void notice_line(void *ctx, const char *msg)
{
    const struct mi_opts *o = ctx;
    if (!o->quiet)
        cli_error("%s", msg);
}

/* What the run ended with, said on stderr. */
static void say_end(const struct mi_opts *o, bool live, struct sync *s, int r)
{
    struct sync_result res;
    sync_result(s, &res);
    if (r == -ECANCELED) {
        if (!o->quiet)
            cli_error("%s: cancelled (%s)", o->args[1], live ? "the target is not a consistent copy"
                                                            : "the next run goes on from here");
    } else if (r < 0) {
        cli_error_last();
    } else if (live && !o->quiet && !o->json) {
        fprintf(stderr, "mirror-img: follow: %s is in sync%s; writers held %llu ms\n", o->args[1],
                res.pivoted ? " and the writers now write to it" : "",
                (unsigned long long)res.downtime_ms);
    } else if (!live && o->verbose && !o->quiet) {
        char b[32];
        const char *why = sync_full_reason(s);
        fprintf(stderr, "mirror-img: copy: %s: %s copied (%s)\n", o->args[1],
                mi_fmt_bytes(res.bytes_copied, b, sizeof b), why ? why : "incremental");
    }
}

/* Start the control socket (follow: J.sock unless --socket) and run the engine. */
static int run(struct mi_opts *o, bool live, struct sync *s)
{
    struct job *job = sync_job(s);
    char defsock[PATH_MAX];
    snprintf(defsock, sizeof defsock, "%s.sock", o->journal);
    if (live && !o->socket)
        o->socket = defsock;
    struct jobctl ctl = {.job = job, .extra = live ? sync_control : NULL, .ctx = s};
    struct control *sock = NULL;
    if (o->socket && !(sock = control_start(o->socket, jobctl_handle, &ctl)))
        return -EIO;
    if (o->json)
        events_enable(stdout);
    if (o->verbose)
        mi_opts_print(o, job);
    mi_catch_signals();
    int r = sync_run(s, mi_job_tick, o);
    control_stop(sock);
    if (r == 0 && !live && o->verify)
        r = sync_verify(s);
    if (o->socket == defsock)
        o->socket = NULL;
    return r;
}

int mi_run_journal(struct mi_opts *o, bool live)
{
    struct sync_config c = {
        .journal = o->journal, .src = o->args[0], .dst = o->args[1], .dst_fmt = o->dst_fmt,
        .live = live,
        .existing = o->existing, .force = o->force, .sync_top = o->sync_top,
        .granularity = o->granularity,
        .lease_ms = o->lease_ms, .auto_converge = o->auto_converge, .buf_size = o->buf_size,
        .speed = o->speed, .threads = o->threads, .on_source_error = o->on_source_error,
        .on_target_error = o->on_target_error, .notice = notice_line, .ctx = o,
    };
    struct sync *s;
    int r = sync_open(&c, &s);
    const char *why = s ? sync_full_reason(s) : NULL;
    if (r == 0 && why && strcmp(why, "new target") && !o->quiet && (live || !o->json))
        cli_error("%s: copying everything: %s", o->journal, why);
    if (r == 0)
        r = run(o, live, s);
    if (s)
        sync_conclude(s, r);
    int code = r == 0 ? MI_EXIT_OK : r == -ECANCELED ? MI_EXIT_CANCELLED : MI_EXIT_FAIL;
    if (s)
        say_end(o, live, s, r);
    else
        cli_error_last();
    if (sync_close(s) < 0 && code == MI_EXIT_OK) {
        cli_error_last();
        code = MI_EXIT_FAIL;
    }
    return code;
}
