/* cmd-follow.c: `mirror-img follow --journal J SRC DST`, the live mirror.
 *
 * The target mirrors the source file to file (a qcow2 source yields a byte-identical
 * qcow2 file).  The journal's dirty bitmap is the to-do list, always: a full pass marks
 * the source's data in it, the shim marks what writers change, and the engine's workers
 * take chunks from it (clear before read).  So a follower killed at any moment and
 * started again copies exactly what is still dirty.
 *
 *   start --> [full pass marked] --> drain --> READY (in sync) <--> writers dirty chunks
 *                                                  |
 *                     complete: quiesce -> drain -> flush -> [pivot] -> release -> exit 0
 */
#include "cli.h"
#include "common.h"
#include "control.h"
#include "events.h"
#include "journal.h"
#include "jsync.h"
#include "jobctl.h"
#include "nbd-config.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

enum { OPT_LEASE = 2000, OPT_AUTO_CONVERGE };

static const struct argp_option follow_options[] = {
    {0, 0, 0, 0, "Following:", 6},
    {"lease", OPT_LEASE, "DURATION", 0, "How long writers wait for a follower that stopped "
                                        "answering (e.g. 2s, 500ms; default 2s)", 6},
    {"auto-converge", OPT_AUTO_CONVERGE, 0, 0, "Slow the writers down, step by step, while "
                                               "they dirty faster than the target is updated", 6},
    {0},
};

static int parse_duration_ms(const char *s, uint64_t *ms)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || v < 0)
        return -1;
    if (!strcmp(end, "ms"))
        *ms = (uint64_t)v;
    else if (!strcmp(end, "s") || !*end)
        *ms = (uint64_t)(v * 1000);
    else
        return -1;
    return *ms >= 10 && *ms <= 3600 * 1000 ? 0 : -1;
}

static error_t follow_parse(int key, char *arg, struct argp_state *st)
{
    struct mi_opts *o = st->input;
    switch (key) {
    case ARGP_KEY_INIT:
        st->child_inputs[0] = o;
        break;
    case OPT_LEASE:
        if (parse_duration_ms(arg, &o->lease_ms) < 0)
            argp_error(st, "--lease: '%s' is not a duration from 10ms to 1h (e.g. 2s, 500ms)", arg);
        break;
    case OPT_AUTO_CONVERGE: o->auto_converge = true; break;
    default: return ARGP_ERR_UNKNOWN;
    }
    return 0;
}

static const struct argp_child children[] = {{&common_argp, 0, NULL, 0}, {0}};
static const struct argp follow_argp = {
    follow_options, follow_parse, "--journal J SRC DST",
    "Mirror SRC to DST while programs write SRC, until `mirror-img complete` or `cancel`.\v"
    "Writers must run under `mirror-img run --journal J SRC -- CMD`.  DST gets SRC's "
    "format (file to file); a local file or an NBD URI.  The control socket is J.sock "
    "unless --socket says otherwise.  Exit status: 0 completed, 1 failed, 2 usage error, "
    "3 cancelled.",
    children, NULL, NULL,
};

static volatile sig_atomic_t got_signal;
static void on_signal(int sig) { got_signal = sig; }

static void extra_members(struct json *j, void *ctx)
{
    struct follower *f = ctx;
    pthread_mutex_lock(&f->mu);
    json_bool_member(j, "ready", f->ready);
    json_bool_member(j, "in_sync", f->in_sync);
    json_u64_member(j, "backlog", jsync_backlog(f));
    json_u64_member(j, "write_rate", f->write_rate);
    json_u64_member(j, "copy_rate", f->copy_rate);
    json_bool_member(j, "converging", f->growing_secs < 3);
    json_u64_member(j, "writer_delay_us", f->delay_us);
    struct mij_writer w[64];
    int n = mij_writers(f->j, w, 64), alive = 0;
    for (int i = 0; i < n; i++)
        alive += w[i].alive;
    json_u64_member(j, "writers", (uint64_t)alive);
    char buf[256];
    uint64_t u = mij_untrusted(f->j);
    json_str_member(j, "untrusted", u ? mij_reasons_str(u, buf, sizeof buf) : "");
    pthread_mutex_unlock(&f->mu);
}


/* ---- complete ---- */

static int do_complete(struct follower *f, bool pivot, struct json *ret, char *desc, size_t dsize)
{
    if (pivot && !f->dst_is_file) {
        snprintf(desc, dsize, "%s: --pivot needs a local file target", f->dst->name);
        return -1;
    }
    if (!f->ready) {
        snprintf(desc, dsize, "%s: not ready yet (the first pass is still running)", f->dst->name);
        return -1;
    }
    pthread_mutex_lock(&f->mu);
    f->completing = true;
    pthread_mutex_unlock(&f->mu);
    uint64_t downtime;
    if (jsync_settle(f, pivot, &downtime) < 0) {
        snprintf(desc, dsize, "%s", mi_lasterr());
        goto fail;
    }
    pthread_mutex_lock(&f->mu);
    f->downtime_ms = downtime;
    f->pivoted = pivot;
    pthread_mutex_unlock(&f->mu);
    json_u64_member(ret, "downtime_ms", downtime);
    json_u64_member(ret, "bytes_copied", f->job->bytes_copied);
    json_bool_member(ret, "pivot", pivot);
    job_finish(f->job);
    return 0;
fail:
    /* Writers may write the target now: copying the source over it would undo them. */
    if (__atomic_load_n(&f->pivot_broken, __ATOMIC_SEQ_CST)) {
        job_fail(f->job, -EIO, desc);
        return -1;
    }
    pthread_mutex_lock(&f->mu);
    f->completing = false;
    pthread_mutex_unlock(&f->mu);
    return -1;
}

static int follow_extra(void *ctx, const struct json_request *req, struct json *ret,
                        const char **err_class, char *desc, size_t dsize)
{
    struct follower *f = ctx;
    (void)err_class;
    if (!strcmp(req->execute, "job-complete") || !strcmp(req->execute, "complete")) {
        const char *p = json_request_arg(req, "pivot");
        return do_complete(f, p && !strcmp(p, "true"), ret, desc, dsize);
    }
    return 1;
}

/* ---- the main loop's tick (every 100 ms) ---- */

static void converge(struct follower *f, uint64_t backlog)
{
    /* Dirtying faster than we copy: the backlog grew over the last second. */
    if (backlog > f->last_backlog && backlog > 4 * mij_granularity(f->j))
        f->growing_secs++;
    else
        f->growing_secs = 0;
    if (!f->o->auto_converge)
        return;
    uint32_t d = f->delay_us;
    if (f->growing_secs >= 2)
        d = d ? (d * 2 > 100000 ? 100000 : d * 2) : 50;
    else if (backlog == 0 && d)
        d /= 2;
    if (d != f->delay_us) {
        f->delay_us = d;
        mij_set_delay(f->j, d);
    }
}

static void sample_rates(struct follower *f, uint64_t now)
{
    uint64_t bytes, writes;
    mij_counters(f->j, &bytes, &writes);
    uint64_t backlog = jsync_backlog(f);
    double secs = (double)(now - f->last_sample_ns) / 1e9;
    pthread_mutex_lock(&f->mu);
    f->write_rate = (uint64_t)((double)(bytes - f->last_bytes) / secs);
    f->copy_rate = (uint64_t)((double)(f->job->offset - f->last_offset) / secs);
    converge(f, backlog);
    pthread_mutex_unlock(&f->mu);
    f->last_bytes = bytes;
    f->last_offset = f->job->offset;
    f->last_backlog = backlog;
    f->last_sample_ns = now;
}

static void ready_members(struct json *j, void *ctx)
{
    (void)ctx;
    json_bool_member(j, "in_sync", true);
}

static void tick(struct job *job, void *arg)
{
    struct follower *f = arg;
    if (got_signal) {
        job_cancel(job);
        return;
    }
    mi_error_pause_tick(job, f->o);
    jsync_renew(f);
    pthread_mutex_lock(&f->mu);
    bool completing = f->completing;
    pthread_mutex_unlock(&f->mu);
    if (completing)
        return;
    if (mij_check_alive(f->j) < 0 || jsync_check_path(f) < 0 || jsync_follow_size(f) < 0) {
        job_fail(job, -EIO, mi_lasterr());
        return;
    }
    uint64_t now0 = mi_now_ns();
    if (now0 - f->last_foreign_ns >= 5000000000ULL) { /* a scan of /proc: now and then */
        f->last_foreign_ns = now0;
        int was = f->foreign_pid;
        if (jsync_check_foreign(f) < 0 && f->foreign_pid != was && !f->o->quiet)
            cli_error_last();
    }
    uint64_t t = mij_untrusted(f->j) & MIJ_U_TRANSIENT & ~MIJ_U_BIT(MIJ_U_BYPASS);
    if (f->foreign_pid) /* a full pass cures it only once that process is gone */
        t &= ~MIJ_U_BIT(MIJ_U_FOREIGN);
    if (t) {
        /* A writer died inside a write, or wrote by a raw syscall: a full pass cures it. */
        char names[256];
        if (!f->o->quiet)
            cli_error("%s: %s: copying everything again", f->o->journal,
                      mij_reasons_str(t, names, sizeof names));
        mij_untrusted_clear(f->j, t);
        mij_source_forget(f->j);
        jsync_mark_full_pass(f, true);
        job_kick(job);
    }
    uint64_t u = mij_untrusted(f->j) & ~MIJ_U_TRANSIENT;
    if (u) {
        char names[256], msg[512];
        snprintf(msg, sizeof msg, "%s: journal untrusted: %s; the target cannot be kept in sync "
                 "(see `mirror-img journal status %s`)", f->o->journal,
                 mij_reasons_str(u, names, sizeof names), f->o->journal);
        job_fail(job, -EIO, msg);
        return;
    }
    uint64_t backlog = jsync_backlog(f);
    bool idle = backlog == 0 && job_idle(job) && !f->foreign_pid;
    job->len = job->offset + backlog;
    if (idle) {
        /* In sync: record the source's state so writes behind the shim are seen later. */
        int c = mij_source_check(f->j, f->src_fd);
        if (c == MIJ_SRC_CHANGED) {
            if (!f->o->quiet)
                cli_error("%s: %s changed behind the shim (size or change time): full pass",
                          f->o->journal, f->o->args[0]);
            mij_source_forget(f->j);
            mij_untrusted_clear(f->j, MIJ_U_BIT(MIJ_U_BYPASS));
            jsync_mark_full_pass(f, true);
            job_kick(job);
            idle = false;
        } else {
            mij_source_observe(f->j, f->src_fd);
        }
    }
    pthread_mutex_lock(&f->mu);
    f->in_sync = idle;
    bool first_ready = idle && !f->ready;
    if (first_ready)
        f->ready = true;
    pthread_mutex_unlock(&f->mu);
    if (first_ready) {
        pthread_mutex_lock(&job->lock);
        job_set_status(job, JOB_READY);
        pthread_mutex_unlock(&job->lock);
        job_event(job, "BLOCK_JOB_READY", ready_members, NULL);
    }
    uint64_t now = mi_now_ns();
    if (now - f->last_sample_ns >= 1000000000ULL)
        sample_rates(f, now);
}

static void completed_members(struct json *j, void *ctx)
{
    struct follower *f = ctx;
    json_u64_member(j, "bytes_copied", f->job->bytes_copied);
    json_u64_member(j, "duration_ms", (f->job->end_ns - f->job->start_ns) / 1000000);
    json_u64_member(j, "downtime_ms", f->downtime_ms);
    json_bool_member(j, "pivot", f->pivoted);
}

/* ---- set-up ---- */

static int run_follow(int argc, char **argv)
{
    struct mi_opts o;
    mi_opts_defaults(&o, "follow");
    cli_parse(&follow_argp, argc, argv, NULL, &o);
    if (o.incremental)
        return cli_usage("follow", "--incremental is for copy");
    int code = jsync_check_opts(&o);
    if (code)
        return code;
    nbd_configure(&(struct nbd_config){o.tls_psk_file, o.tls_certificates, o.connections});

    struct follower f = {.o = &o, .src_fd = -1};
    pthread_mutex_init(&f.mu, NULL);
    struct job job;
    bool job_ok = false;
    struct control *sock = NULL;
    code = MI_EXIT_FAIL;

    const char *full_reason = NULL;
    if (jsync_begin(&f, true, &full_reason) < 0)
        goto out;
    if (full_reason && strcmp(full_reason, "new target") && !o.quiet)
        cli_error("%s: copying everything: %s", o.journal, full_reason);

    struct job_supply supply = jsync_supply;
    supply.ctx = &f;
    struct job_config jc = {
        .src = f.src, .dst = f.dst, .device = o.args[1], .type = "mirror",
        .granularity = mij_granularity(f.j), .buf_size = o.buf_size, .threads = o.threads,
        .speed = o.speed, .on_source_error = o.on_source_error,
        .on_target_error = o.on_target_error, .no_seed = true, .supply = &supply,
        .extra = extra_members, .extra_ctx = &f,
    };
    /* Writers may punch holes: zero ranges are always written once following. */
    f.dst->caps &= ~EP_CAP_IS_ZERO;
    if (job_init(&job, &jc) < 0)
        goto out;
    job_ok = true;
    f.job = &job;
    if (job.chunk != mij_granularity(f.j)) {
        mi_seterr(EINVAL, "%s: the target needs %llu-byte alignment, more than the journal's "
                  "granularity", o.args[1], (unsigned long long)job.chunk);
        goto out;
    }
    char defsock[PATH_MAX];
    snprintf(defsock, sizeof defsock, "%s.sock", o.journal);
    if (!o.socket)
        o.socket = defsock;
    struct jobctl ctl = {.job = &job, .extra = follow_extra, .query_extra = NULL, .ctx = &f};
    if (!(sock = control_start(o.socket, jobctl_handle, &ctl)))
        goto out;
    if (o.json)
        events_enable(stdout);
    if (o.verbose)
        mi_opts_print(&o, &job);
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    f.last_sample_ns = mi_now_ns();
    mij_counters(f.j, &f.last_bytes, &(uint64_t){0});
    int r = job_start(&job);
    int w = job_wait(&job, tick, &f);
    if (r == 0)
        r = w;
    control_stop(sock);
    sock = NULL;
    if (r == -ECANCELED) {
        job_set_status(&job, JOB_ABORTING);
        job_event(&job, "BLOCK_JOB_CANCELLED", NULL, NULL);
        if (!o.quiet)
            cli_error("%s: cancelled (the target is not a consistent copy)", o.args[1]);
        code = MI_EXIT_CANCELLED;
        goto out;
    }
    if (r < 0)
        goto out;
    job_set_status(&job, JOB_PENDING);
    job.offset = job.len;
    job_event(&job, "BLOCK_JOB_COMPLETED", completed_members, &f);
    if (!o.quiet && !o.json)
        fprintf(stderr, "mirror-img: follow: %s is in sync%s; writers held %llu ms\n", o.args[1],
                f.pivoted ? " and the writers now write to it" : "",
                (unsigned long long)f.downtime_ms);
    code = MI_EXIT_OK;
out:
    return jsync_close(&f, &job, job_ok, sock, code);
}

static const struct cli_cmd cmd_follow = {"follow", "mirror an image while programs write it", &follow_argp, run_follow};
MI_COMMAND(cmd_follow);
