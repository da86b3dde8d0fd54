/* jsync.c: see jsync.h. */
#include "jsync.h"
#include "control.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static int follow_size_locked(struct follower *f, bool locked);

/* ---- the journal as the engine's chunk supply ---- */

static uint64_t supply_take(void *ctx, uint64_t cursor, uint64_t max, uint64_t *first)
{
    struct follower *f = ctx;
    if (__atomic_load_n(&f->frozen, __ATOMIC_SEQ_CST))
        return 0; /* a pivot is out: the target is the writers' now */
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
    /* follow ends with complete or cancel; copy --incremental settles first (its tick
     * does that and then finishes the job). */
    return false;
}

const struct job_supply jsync_supply = {NULL, supply_take, supply_done, supply_idle};

uint64_t jsync_backlog(struct follower *f)
{
    uint64_t copying = 0, dirty = mij_backlog(f->j, &copying);
    return (dirty + copying) * mij_granularity(f->j);
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

int jsync_follow_size(struct follower *f) { return follow_size_locked(f, false); }

/* Mark what a full pass must copy: the source's data (and everything, when the target
 * holds old bytes that must be overwritten or zeroed). */
int jsync_mark_full_pass(struct follower *f, bool everything)
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
int jsync_renew(struct follower *f)
{
    if (mij_lease_renew(f->j) == -ETIME || mij_lease_lapsed(f->j))
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
        if (jsync_renew(f) < 0)
            return -ETIME;
        if (jsync_follow_size(f) < 0)
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
/* Reasons a full pass cures (mask): mark it now, under the quiesce, so that a complete
 * retried before the follower's next tick finds it to drain, not an empty backlog; then
 * fail this completion, naming them. */
static int fail_full_pass(struct follower *f, uint64_t mask, unsigned died)
{
    char names[256];
    mij_reasons_str(mask, names, sizeof names);
    mij_untrusted_clear(f->j, mask);
    mij_source_forget(f->j);
    jsync_mark_full_pass(f, true);
    job_kick(f->job);
    if (died || (mask & MIJ_U_BIT(MIJ_U_WRITER_DIED)))
        return mi_seterr(EIO, "%s: %u writer(s) died inside a write: what they wrote is "
                         "unknown, so the target is not a consistent copy; a full pass "
                         "follows: try again once in sync", f->o->journal, died ? died : 1);
    return mi_seterr(EIO, "%s: journal untrusted: %s: the target is not a consistent copy; a "
                     "full pass follows: try again once in sync", f->o->journal, names);
}

/* Nothing may complete while the journal is untrusted: a reason raised at any moment of
 * the quiesce (a writer that started stdio or AIO while we drained, a writer that died)
 * means the target may lack writes. */
static int settle_trusted(struct follower *f)
{
    uint64_t u = mij_untrusted(f->j) & ~MIJ_U_BIT(MIJ_U_BYPASS);
    char names[256];
    if (u & ~MIJ_U_TRANSIENT)
        return mi_seterr(EIO, "%s: journal untrusted: %s: the target is not a consistent copy, "
                         "not completing", f->o->journal,
                         mij_reasons_str(u & ~MIJ_U_TRANSIENT, names, sizeof names));
    return u ? fail_full_pass(f, u, 0) : 0;
}

/* Move the writers to the target.  Once the request is out, writers held by the quiesce
 * switch and write the target: from then on a failure leaves the follower nothing to copy
 * (the source is no longer the image), so the job ends with it (pivot_broken). */
static int settle_pivot(struct follower *f)
{
    char abs[PATH_MAX];
    if (!realpath(f->dst->name, abs))
        return mi_seterr(errno, "%s: %s", f->dst->name, strerror(errno));
    /* No copy may start once writers can be on the target (the drain left none in
     * flight); a writer that fails to switch keeps dirtying the source meanwhile. */
    __atomic_store_n(&f->frozen, true, __ATOMIC_SEQ_CST);
    if (jsync_renew(f) < 0 || mij_pivot_request(f->j, abs) < 0) {
        __atomic_store_n(&f->frozen, false, __ATOMIC_SEQ_CST);
        return -EIO; /* nobody moved */
    }
    struct mij_pivot_info pi;
    int r = mij_pivot_wait(f->j, 5000000000ULL, &pi);
    if (r == 0 && pi.failed)
        r = mi_seterr(EIO, "%s: writer %d could not switch to the target: %s", f->o->journal,
                      pi.first_err_pid, strerror(pi.first_err));
    if (r == 0)
        r = mij_pivot_finish(f->j) < 0 ? -ETIME : 0;
    if (r < 0) {
        char msg[600];
        snprintf(msg, sizeof msg, "%s (some writers may already write the target: stopping)",
                 mi_lasterr());
        mi_seterr(EIO, "%s", msg);
        __atomic_store_n(&f->pivot_broken, true, __ATOMIC_SEQ_CST);
    }
    return r;
}

/* SRC still names the file we follow (not renamed over, not replaced). */
int jsync_check_path(struct follower *f)
{
    struct stat st;
    if (stat(f->o->args[0], &st) < 0)
        return mi_seterr(errno, "%s: %s: the source is gone", f->o->args[0], strerror(errno));
    if (mij_check_source(f->j, &st, f->o->args[0]) < 0)
        return mi_seterr(ESTALE, "%s: now names another file than the one followed (renamed over "
                         "or replaced): the writers' file is no longer the source", f->o->args[0]);
    return 0;
}

/* A process that can write the source behind the shim (a writer not started under
 * `run`): the journal cannot be trusted while it is there. */
int jsync_check_foreign(struct follower *f)
{
    char comm[64];
    int pid = mij_foreign_writer(f->j, f->src_fd, comm, sizeof comm);
    /* a child between fork and its registration, or an image between exec and its
     * shim's start: look again, for up to half a second */
    for (int i = 0; pid > 0 && i < 10; i++) {
        struct timespec ts = {0, 50000000};
        nanosleep(&ts, NULL);
        pid = mij_foreign_writer(f->j, f->src_fd, comm, sizeof comm);
    }
    __atomic_store_n(&f->foreign_pid, pid > 0 ? pid : 0, __ATOMIC_SEQ_CST);
    if (pid <= 0)
        return 0;
    mij_untrust(f->j, MIJ_U_FOREIGN, pid);
    return mi_seterr(EIO, "%s: pid %d (%s) has %s open for writing without the shim: its writes "
                     "cannot be tracked (start it under `mirror-img run --journal %s`)",
                     f->o->journal, pid, comm, f->o->args[0], f->o->journal);
}

int jsync_settle(struct follower *f, bool pivot, uint64_t *downtime_ms)
{
    if (jsync_check_foreign(f) < 0)
        return -EIO;
    uint64_t t0 = mi_now_ns();
    __atomic_store_n(&f->lease_lapsed, false, __ATOMIC_SEQ_CST);
    struct mij_quiesce_info qi;
    int r = mij_quiesce_begin(f->j, 5000000000ULL, &qi);
    if (r < 0)
        return r;
    /* A writer found dead inside a write, now (qi.died) or by the follower since its last
     * tick (the untrusted bit, its in-flight mark already reaped). */
    uint64_t transient = mij_untrusted(f->j) & MIJ_U_TRANSIENT & ~MIJ_U_BIT(MIJ_U_BYPASS);
    if (qi.died || transient) {
        r = fail_full_pass(f, transient | (qi.died ? MIJ_U_BIT(MIJ_U_WRITER_DIED) : 0), qi.died);
        mij_quiesce_end(f->j);
        return r;
    }
    if (pivot && qi.maps) {
        mij_quiesce_end(f->j);
        return mi_seterr(EBUSY, "%s: cannot pivot: a writer has a writable shared mapping of %s",
                         f->o->journal, f->o->args[0]);
    }
    r = drain(f, 30000000000ULL);
    if (r == 0)
        r = f->dst->ops->flush(f->dst);
    if (r == 0)
        r = jsync_check_path(f);
    /* A write behind the shim since the last record (no shim write can run now).  Stores
     * through shared mappings change the file's times without a call: not with those. */
    if (r == 0 && !qi.marked && mij_source_check(f->j, f->src_fd) == MIJ_SRC_CHANGED)
        r = fail_full_pass(f, MIJ_U_BIT(MIJ_U_BYPASS), 0);
    if (r == 0)
        r = settle_trusted(f);
    if (r == 0 && pivot)
        r = settle_pivot(f);
    if (r == 0)
        r = jsync_renew(f);
    if (r == 0)
        r = settle_trusted(f); /* a reason raised by a writer while we pivoted */
    if (r < 0 && pivot && __atomic_load_n(&f->frozen, __ATOMIC_SEQ_CST) &&
        !__atomic_load_n(&f->pivot_broken, __ATOMIC_SEQ_CST)) {
        char msg[600];
        snprintf(msg, sizeof msg, "%s (the writers were moved to the target: stopping)", mi_lasterr());
        mi_seterr(EIO, "%s", msg);
        __atomic_store_n(&f->pivot_broken, true, __ATOMIC_SEQ_CST);
    }
    if (r == 0)
        mij_source_observe(f->j, f->src_fd);
    *downtime_ms = (mi_now_ns() - t0) / 1000000;
    mij_quiesce_end(f->j);
    return r;
}

/* ---- set-up ---- */

/* The target: the one this journal records (resume), or an existing one with -n (written
 * over: everything is copied) or --force (replaced), or a new one. */
static int open_target(struct mi_opts *o, struct follower *f, bool *full_pass, bool *everything)
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

int jsync_begin(struct follower *f, bool untrusted_fails, const char **full_reason)
{
    struct mi_opts *o = f->o;
    *full_reason = NULL;
    struct mij_create_opts jo = {.granularity = o->granularity, .granularity_set = o->granularity != 0};
    if (mij_create(o->journal, o->args[0], &jo, &f->j, NULL) < 0)
        return -EIO;
    if (!(f->src = raw_open(o->args[0], false)))
        return -EIO;
    if ((f->src_fd = open(o->args[0], O_RDONLY | O_CLOEXEC)) < 0)
        return mi_seterr(errno, "%s: cannot open: %s", o->args[0], strerror(errno));
    if (mij_follow(f->j, o->lease_ms * 1000000ULL) < 0)
        return -EBUSY;
    f->following = true;
    struct stat sst;
    if (fstat(f->src_fd, &sst) < 0 || mij_check_source(f->j, &sst, o->args[0]) < 0)
        return -ESTALE;
    /* Transient reasons (a writer died inside a write...) are cured by a full pass; the
     * others say a writer keeps writing behind the journal's back. */
    uint64_t all = mij_untrusted(f->j) & ~MIJ_U_BIT(MIJ_U_BYPASS);
    uint64_t u = all & ~MIJ_U_TRANSIENT;
    static char why[300];
    if (u && untrusted_fails) {
        char names[256];
        return mi_seterr(EIO, "%s: journal untrusted: %s (`mirror-img journal reset %s` after "
                         "dealing with it)", o->journal, mij_reasons_str(u, names, sizeof names),
                         o->journal);
    }
    bool full_pass = false, everything = false;
    if (open_target(o, f, &full_pass, &everything) < 0)
        return -EIO;
    if (full_pass)
        *full_reason = everything ? "the target is not the one this journal records" : "new target";
    int sc = mij_source_check(f->j, f->src_fd);
    if (!full_pass && sc != MIJ_SRC_OK) {
        full_pass = true;
        *full_reason = sc == MIJ_SRC_CHANGED ? "the source changed behind the shim (size or change time)"
                                             : "the source's state was never recorded";
    }
    if (!full_pass && all) {
        char names[256];
        full_pass = everything = true;
        snprintf(why, sizeof why, "journal untrusted: %s", mij_reasons_str(all, names, sizeof names));
        *full_reason = why;
    }
    if (full_pass) {
        mij_source_forget(f->j);
        mij_untrusted_clear(f->j, MIJ_U_TRANSIENT);
        if (jsync_mark_full_pass(f, everything) < 0)
            return -EIO;
    }
    /* From here on the journal holds everything the target lacks: record the source's
     * state now, so that a run killed before it got in sync resumes without a full pass
     * (and a write behind the shim is still seen). */
    mij_source_observe(f->j, f->src_fd);
    /* The journal now holds everything the target lacks: record the target so that a
     * run killed from here on resumes. */
    jsync_record_target(f);
    return 0;
}

void jsync_record_target(struct follower *f)
{
    struct stat st = {0};
    if (!f->dst_is_file || stat(f->o->args[1], &st) == 0) {
        if (!f->dst_is_file)
            st.st_size = (off_t)f->dst->size;
        mij_target_set(f->j, f->o->args[1], &st);
    }
}

int jsync_close(struct follower *f, struct job *job, bool job_ok, struct control *sock, int code)
{
    if (code == MI_EXIT_FAIL)
        cli_error_last();
    control_stop(sock);
    if (job_ok) {
        job_set_status(job, JOB_CONCLUDED);
        job_destroy(job);
    }
    if (f->dst && ep_close(f->dst) < 0 && code == MI_EXIT_OK) {
        cli_error_last();
        code = MI_EXIT_FAIL;
    }
    jsync_end(f);
    return code;
}

void jsync_end(struct follower *f)
{
    ep_close(f->src);
    f->src = NULL;
    if (f->src_fd >= 0)
        close(f->src_fd);
    f->src_fd = -1;
    if (f->j) {
        if (f->following)
            mij_unfollow(f->j);
        mij_close(f->j);
        f->j = NULL;
    }
}

int jsync_check_opts(struct mi_opts *o)
{
    const char *sub = o->sub;
    if (o->nargs != 2)
        return cli_usage(sub, "expected SRC and DST");
    if (!o->journal)
        return cli_usage(sub, "--journal J is required");
    if (o->sync_top || o->compress || o->create.cluster_size || o->create.preallocation ||
        o->create.compression_type)
        return cli_usage(sub, "the journal mirrors the file as it is: -c, -o and --sync=top do not apply");
    if (ep_is_nbd_uri(o->args[0]))
        return cli_usage(sub, "the source must be a local file (the shim journals it)");
    if (o->src_fmt || o->dst_fmt) {
        const char *probed = ep_probe(o->args[0]);
        const char *want = o->dst_fmt ? o->dst_fmt : o->src_fmt;
        if (probed && strcmp(probed, want))
            return cli_usage(sub, "the journal mirrors file to file: the target has the source's "
                             "format (%s); converting to %s this way is not possible (use a "
                             "plain copy)", probed, want);
    }
    return mi_opts_check(o);
}
