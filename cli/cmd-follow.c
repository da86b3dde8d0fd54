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

enum { OPT_JOURNAL = 2000, OPT_LEASE, OPT_AUTO_CONVERGE };

static const struct argp_option follow_options[] = {
    {0, 0, 0, 0, "Following:", 6},
    {"journal", OPT_JOURNAL, "J", 0, "The shim's journal for SRC (created if absent)", 6},
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
    case OPT_JOURNAL: o->journal = arg; break;
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

struct follower {
    struct mi_opts *o;
    struct mij *j;
    struct job *job;
    struct ep *src, *dst;
    int src_fd;
    bool dst_is_file;
    pthread_mutex_t mu;
    bool completing, ready, in_sync;
    bool lease_lapsed; /* the lease ran out since the quiesce began */
    uint64_t downtime_ms;
    bool pivoted;
    /* rates, sampled each second by the main loop */
    uint64_t last_sample_ns, last_bytes, last_backlog, write_rate, copy_rate, last_offset;
    unsigned growing_secs;
    uint32_t delay_us;
    uint64_t untrusted_seen;
};

static volatile sig_atomic_t got_signal;
static void on_signal(int sig) { got_signal = sig; }

static int follow_size_locked(struct follower *f, bool locked);

/* ---- the journal as the engine's chunk supply ---- */

static uint64_t supply_take(void *ctx, uint64_t cursor, uint64_t max, uint64_t *first)
{
    struct follower *f = ctx;
    uint64_t n = mij_take(f->j, cursor, max, first);
    /* A write past the end we know of: the file grew; catch up before copying it. */
    if (n && (*first + n) * mij_granularity(f->j) > f->job->size &&
        follow_size_locked(f, true) < 0) {
        mij_redirty(f->j, *first, n);
        return 0;
    }
    return n;
}

static void supply_done(void *ctx, uint64_t first, uint64_t n, bool ok)
{
    struct follower *f = ctx;
    if (ok)
        mij_done(f->j, first, n);
    else
        mij_redirty(f->j, first, n);
}

static bool supply_idle(void *ctx, struct job *job)
{
    (void)ctx, (void)job;
    return false; /* following ends with complete or cancel only */
}

static uint64_t backlog_bytes(struct follower *f)
{
    uint64_t copying = 0, dirty = mij_backlog(f->j, &copying);
    return (dirty + copying) * mij_granularity(f->j);
}

static void extra_members(struct json *j, void *ctx)
{
    struct follower *f = ctx;
    pthread_mutex_lock(&f->mu);
    json_bool_member(j, "ready", f->ready);
    json_bool_member(j, "in_sync", f->in_sync);
    json_u64_member(j, "backlog", backlog_bytes(f));
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

/* ---- the source's size follows the file ---- */

/* Bring the job's, the source endpoint's and the target's sizes to the source file's.
 * Called with the job lock held (from take) or not (locked = false). */
static int follow_size_locked(struct follower *f, bool locked)
{
    struct stat st;
    if (fstat(f->src_fd, &st) < 0)
        return mi_seterr(errno, "%s: %s", f->o->args[0], strerror(errno));
    uint64_t size = S_ISREG(st.st_mode) ? (uint64_t)st.st_size : f->src->size;
    if (size == __atomic_load_n(&f->job->size, __ATOMIC_RELAXED))
        return 0;
    if (f->dst_is_file) {
        struct ep *d = f->dst;
        int fd = open(d->name, O_WRONLY | O_CLOEXEC);
        if (fd < 0 || ftruncate(fd, (off_t)size) < 0) {
            int e = errno;
            if (fd >= 0)
                close(fd);
            return mi_seterr(e, "%s: cannot resize the target to %llu bytes: %s", d->name,
                             (unsigned long long)size, strerror(e));
        }
        close(fd);
        d->size = size;
    } else if (size > f->dst->size) {
        return mi_seterr(ENOSPC, "%s: the source grew to %llu bytes, beyond the target's size",
                         f->dst->name, (unsigned long long)size);
    }
    if (!locked)
        pthread_mutex_lock(&f->job->lock);
    __atomic_store_n(&f->job->size, size, __ATOMIC_RELAXED);
    f->src->size = size;
    if (!locked)
        pthread_mutex_unlock(&f->job->lock);
    return 0;
}

static int follow_size(struct follower *f) { return follow_size_locked(f, false); }

/* Mark what a full pass must copy: the source's data (and everything, when the target
 * holds old bytes that must be overwritten or zeroed). */
static int mark_full_pass(struct follower *f, bool everything)
{
    uint64_t size = f->src->size, off = 0;
    if (everything) {
        mij_mark_range(f->j, 0, size);
        return 0;
    }
    while (off < size) {
        uint64_t len;
        int kind;
        int r = f->src->ops->block_status(f->src, off, size - off, 0, &len, &kind);
        if (r < 0)
            return r;
        if (kind == EP_DATA)
            mij_mark_range(f->j, off, len);
        off += len;
    }
    return 0;
}

/* ---- complete ---- */

/* Renew the lease.  A lease that ran out (the follower was stopped or starved) let the
 * writers go, so a quiesce in progress no longer holds: remember it for complete. */
static int renew(struct follower *f)
{
    if (mij_lease_renew(f->j) == -ETIME)
        __atomic_store_n(&f->lease_lapsed, true, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&f->lease_lapsed, __ATOMIC_SEQ_CST) && f->completing)
        return mi_seterr(ETIME, "%s: the follower's lease ran out during complete (was it "
                         "stopped?) and the writers went on: try complete again", f->o->journal);
    return 0;
}

static int drain(struct follower *f, uint64_t timeout_ns)
{
    uint64_t deadline = mi_now_ns() + timeout_ns;
    job_kick(f->job);
    for (;;) {
        if (renew(f) < 0)
            return -ETIME;
        if (follow_size(f) < 0)
            return -EIO;
        uint64_t copying = 0, dirty = mij_backlog(f->j, &copying);
        if (dirty == 0 && copying == 0 && job_idle(f->job))
            return 0;
        if (f->job->error)
            return mi_seterr(EIO, "%s", f->job->error_msg);
        if (mi_now_ns() > deadline)
            return mi_seterr(ETIMEDOUT, "%s: could not drain the dirty chunks in time", f->o->journal);
        struct timespec ts = {0, 200000};
        nanosleep(&ts, NULL);
    }
}

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
    uint64_t t0 = mi_now_ns();
    __atomic_store_n(&f->lease_lapsed, false, __ATOMIC_SEQ_CST);
    struct mij_quiesce_info qi;
    int r = mij_quiesce_begin(f->j, 5000000000ULL, &qi);
    if (r < 0) {
        snprintf(desc, dsize, "%s", mi_lasterr());
        goto fail;
    }
    if (pivot && qi.maps) {
        mij_quiesce_end(f->j);
        snprintf(desc, dsize, "%s: cannot pivot: a writer has a writable shared mapping of %s",
                 f->o->journal, f->o->args[0]);
        goto fail;
    }
    r = drain(f, 30000000000ULL);
    if (r == 0)
        r = f->dst->ops->flush(f->dst);
    if (r == 0 && pivot) {
        struct mij_pivot_info pi;
        char abs[PATH_MAX];
        if (!realpath(f->dst->name, abs))
            r = mi_seterr(errno, "%s: %s", f->dst->name, strerror(errno));
        if (r == 0)
            r = mij_pivot_request(f->j, abs);
        if (r == 0)
            r = mij_pivot_wait(f->j, 5000000000ULL, &pi);
        if (r == 0 && pi.failed) {
            r = mi_seterr(EIO, "%s: writer %d could not switch to the target: %s", f->o->journal,
                          pi.first_err_pid, strerror(pi.first_err));
        }
    }
    if (r == 0)
        r = renew(f);
    if (r == 0)
        mij_source_observe(f->j, f->src_fd);
    uint64_t downtime = (mi_now_ns() - t0) / 1000000;
    mij_quiesce_end(f->j);
    if (r < 0) {
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
    uint64_t backlog = backlog_bytes(f);
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
    renew(f);
    pthread_mutex_lock(&f->mu);
    bool completing = f->completing;
    pthread_mutex_unlock(&f->mu);
    if (completing)
        return;
    if (mij_check_alive(f->j) < 0 || follow_size(f) < 0) {
        job_fail(job, -EIO, mi_lasterr());
        return;
    }
    uint64_t u = mij_untrusted(f->j) & ~MIJ_U_BIT(MIJ_U_BYPASS);
    if (u) {
        char names[256], msg[512];
        snprintf(msg, sizeof msg, "%s: journal untrusted: %s; the target cannot be kept in sync "
                 "(see `mirror-img journal status %s`)", f->o->journal,
                 mij_reasons_str(u, names, sizeof names), f->o->journal);
        job_fail(job, -EIO, msg);
        return;
    }
    uint64_t backlog = backlog_bytes(f);
    bool idle = backlog == 0 && job_idle(job);
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
            mark_full_pass(f, true);
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

static int open_follow_target(struct mi_opts *o, struct follower *f, bool *full_pass, bool *everything)
{
    const char *dst = o->args[1];
    struct mij_target rec;
    mij_target_get(f->j, &rec);
    if (ep_is_nbd_uri(dst)) {
        f->dst = ep_open(dst, &(struct ep_open_opts){.format = "raw"}, true);
        if (!f->dst)
            return -EIO;
        if (f->dst->size < f->src->size)
            return mi_seterr(ENOSPC, "%s: the export is smaller than the source", dst);
        bool same = rec.valid && !strcmp(rec.path, dst);
        *full_pass = !same || o->existing || o->force;
        *everything = true;
        return 0;
    }
    struct stat st;
    bool exists = stat(dst, &st) == 0;
    if (exists && mi_same_file(dst, o->args[0]))
        return mi_seterr(EINVAL, "%s: is the source; refusing to overwrite it", dst);
    bool recorded = exists && rec.valid && rec.dev == (uint64_t)st.st_dev && rec.ino == (uint64_t)st.st_ino;
    f->dst_is_file = true;
    if (exists && !recorded && !o->existing && !o->force)
        return mi_seterr(EEXIST, "%s: already exists and this journal does not record it as its "
                         "target (use -n to write into it, or --force to replace it)", dst);
    if (exists && !o->force) {
        f->dst = ep_open(dst, &(struct ep_open_opts){.format = "raw"}, true);
        if (!f->dst)
            return -EIO;
        *full_pass = !recorded || o->existing;
        *everything = true;
        if (f->dst->size != f->src->size && S_ISREG(st.st_mode) && truncate(dst, (off_t)f->src->size) == 0)
            f->dst->size = f->src->size;
        return 0;
    }
    struct ep_create_opts c = {.format = "raw", .size = f->src->size, .force = o->force};
    f->dst = ep_create(dst, &c);
    if (!f->dst)
        return -EIO;
    *full_pass = true;
    *everything = false;
    return 0;
}

static int check_follow_opts(struct mi_opts *o)
{
    if (o->nargs != 2)
        return cli_usage("follow", "expected SRC and DST");
    if (!o->journal)
        return cli_usage("follow", "--journal J is required");
    if (o->sync_top || o->compress || o->create.cluster_size || o->create.preallocation ||
        o->create.compression_type)
        return cli_usage("follow", "follow mirrors the file as it is: -c, -o and --sync=top do not apply");
    if (o->src_fmt || o->dst_fmt) {
        const char *probed = ep_is_nbd_uri(o->args[0]) ? "raw" : ep_probe(o->args[0]);
        const char *want = o->dst_fmt ? o->dst_fmt : o->src_fmt;
        if (probed && strcmp(probed, want))
            return cli_usage("follow", "follow mirrors file to file: the target has the source's "
                             "format (%s); converting to %s while following is not possible "
                             "(copy it afterwards)", probed, want);
    }
    if (ep_is_nbd_uri(o->args[0]))
        return cli_usage("follow", "the source must be a local file (the shim journals it)");
    return mi_opts_check(o);
}

static int run_follow(int argc, char **argv)
{
    struct mi_opts o;
    mi_opts_defaults(&o, "follow");
    o.granularity = 0;
    cli_parse(&follow_argp, argc, argv, NULL, &o);
    int code = check_follow_opts(&o);
    if (code)
        return code;
    nbd_configure(&(struct nbd_config){o.tls_psk_file, o.tls_certificates, o.connections});

    struct follower f = {.o = &o, .src_fd = -1};
    pthread_mutex_init(&f.mu, NULL);
    struct job job;
    bool job_ok = false, following = false;
    struct control *sock = NULL;
    code = MI_EXIT_FAIL;

    struct mij_create_opts jo = {.granularity = o.granularity, .granularity_set = o.granularity != 0};
    if (mij_create(o.journal, o.args[0], &jo, &f.j, NULL) < 0)
        goto out;
    if (!(f.src = raw_open(o.args[0], false)) || (f.src_fd = open(o.args[0], O_RDONLY | O_CLOEXEC)) < 0) {
        if (f.src_fd < 0 && f.src)
            mi_seterr(errno, "%s: cannot open: %s", o.args[0], strerror(errno));
        goto out;
    }
    if (mij_follow(f.j, o.lease_ms * 1000000ULL) < 0)
        goto out;
    following = true;
    struct stat sst;
    if (fstat(f.src_fd, &sst) < 0 || mij_check_source(f.j, &sst, o.args[0]) < 0)
        goto out;
    uint64_t u = mij_untrusted(f.j) & ~MIJ_U_BIT(MIJ_U_BYPASS);
    if (u) {
        char names[256];
        mi_seterr(EIO, "%s: journal untrusted: %s (`mirror-img journal reset %s` after dealing with it)",
                  o.journal, mij_reasons_str(u, names, sizeof names), o.journal);
        goto out;
    }
    bool full_pass = false, everything = false;
    if (open_follow_target(&o, &f, &full_pass, &everything) < 0)
        goto out;
    int sc = mij_source_check(f.j, f.src_fd);
    if (sc != MIJ_SRC_OK) {
        if (!full_pass && !o.quiet)
            cli_error("%s: %s: %s; copying everything", o.journal, o.args[0],
                      sc == MIJ_SRC_CHANGED ? "changed behind the shim" : "state not recorded");
        full_pass = true;
    }
    if (full_pass) {
        mij_source_forget(f.j);
        mij_untrusted_clear(f.j, MIJ_U_BIT(MIJ_U_BYPASS));
        if (mark_full_pass(&f, everything) < 0)
            goto out;
    }
    struct stat dst_st;
    if (f.dst_is_file && stat(o.args[1], &dst_st) == 0)
        mij_target_set(f.j, o.args[1], &dst_st);

    struct job_supply supply = {&f, supply_take, supply_done, supply_idle};
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
    struct jobctl ctl = {.job = &job, .extra = follow_extra, .query_extra = NULL, .ctx = &f};
    if (!(sock = control_start(o.socket ? o.socket : defsock, jobctl_handle, &ctl)))
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
    if (code == MI_EXIT_FAIL)
        cli_error_last();
    control_stop(sock);
    if (job_ok) {
        job_set_status(&job, JOB_CONCLUDED);
        job_destroy(&job);
    }
    if (f.dst && ep_close(f.dst) < 0 && code == MI_EXIT_OK) {
        cli_error_last();
        code = MI_EXIT_FAIL;
    }
    ep_close(f.src);
    if (f.src_fd >= 0)
        close(f.src_fd);
    if (f.j) {
        if (following)
            mij_unfollow(f.j);
        mij_close(f.j);
    }
    return code;
}

static const struct cli_cmd cmd_follow = {"follow", "mirror an image while programs write it", &follow_argp, run_follow};
MI_COMMAND(cmd_follow);
