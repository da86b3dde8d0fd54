/* sync.c: the journal-driven sync engine (see sync.h): the journal as the job's chunk
 * supply, the source's size followed, full passes, the lease, the engine's tick (checks,
 * READY, rates, auto-converge), settling (quiesce, drain, flush, pivot) and the target's
 * set-up and resume. */
#include "sync.h"
#include "bitmap.h"
#include "target.h"
#include "compare.h"
#include "journal.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

struct sync {
    struct sync_config c;
    struct mij *j;
    bool following; /* we hold the journal */
    struct ep *src, *dst;
    int src_fd;
    bool dst_is_file;
    struct job job;
    bool job_ok; /* job_init succeeded: job_destroy at the end */
    struct job_supply supply;
    const char *full_reason;
    char why[300];
    pthread_mutex_t renew_mu; /* one lease renewal at a time */
    pthread_mutex_t size_mu; /* one size change at a time (a worker's take, the tick) */
    pthread_mutex_t mu;      /* the members below read by the control thread */
    bool completing, ready, in_sync;
    bool settled;      /* incremental: settled, the job finishes */
    bool lease_lapsed; /* the lease ran out since the quiesce began */
    bool pivot_broken; /* a pivot request went out and failed: nothing more to copy */
    bool frozen;       /* no chunk is handed to the workers (a pivot is out) */
    int foreign_pid;   /* a process writing the source without the shim (last scan) */
    uint64_t last_foreign_ns;
    uint64_t downtime_ms;
    bool pivoted;
    /* rates, sampled each second by the tick */
    uint64_t last_sample_ns, last_bytes, last_backlog, write_rate, copy_rate, last_offset;
    unsigned growing_secs;
    uint32_t delay_us;
    void (*user_tick)(struct job *job, void *arg);
    void *user_arg;
    /* disk mode (a qcow2 source mirrored as the disk it holds, see disk_take) */
    bool disk;
    const char *tfmt;         /* the target's format: "raw" or "qcow2" (a flat image) */
    bool flush_epochs;        /* a qcow2 target: flushed before an epoch's file chunks are
                               * done, so that a restart finds the mapping of every chunk
                               * the journal calls copied */
    bool top;                 /* --sync=top: a new overlay naming the source's backing file */
    unsigned epochs;          /* translations so far */
    char backing[4096], backing_fmt[32]; /* the overlay's backing name and format */
    struct ep *gsrc;          /* the source as a guest sees it (live qcow2 reader) */
    pthread_mutex_t gmu;      /* the guest bitmaps */
    struct bitmap gdirty, gcopying;
    uint64_t gchunk;
    bool conservative;        /* the next translation knows nothing of the target */
    char disk_err[512];       /* a translation failed: the tick fails the job */
    /* the backing chain's files, which no journal tracks: they must not change */
    struct backing_file { char path[4096]; struct stat st; } *chain;
    unsigned nchain;
};

/* What the target mirrors: the file, or in disk mode the disk. */
static uint64_t vsize(const struct sync *s) { return s->disk ? s->gsrc->size : s->src->size; }

static int check_chain(struct sync *s);
static void notice(struct sync *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void notice(struct sync *s, const char *fmt, ...)
{
    if (!s->c.notice)
        return;
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    s->c.notice(s->c.ctx, msg);
}

static bool flag(const bool *b) { return __atomic_load_n(b, __ATOMIC_SEQ_CST); }
static void set_flag(bool *b, bool v) { __atomic_store_n(b, v, __ATOMIC_SEQ_CST); }

/* ---- the source's size follows the file ---- */

/* Bring the job's, the source endpoint's and the target's sizes to the source file's
 * (it grows and shrinks).  From a worker's take (job lock held) or the tick. */
static int follow_size(struct sync *s)
{
    struct stat st;
    if (s->disk) /* the disk's size is fixed: a resize fails the translation */
        return 0;
    /* Under the lock from the fstat on: a size read before another thread's change must
     * not undo it (a target shrunk back under a chunk just copied past the old end). */
    pthread_mutex_lock(&s->size_mu);
    if (fstat(s->src_fd, &st) < 0) {
        pthread_mutex_unlock(&s->size_mu);
        return mi_seterr(errno, "%s: %s", s->c.src, strerror(errno));
    }
    uint64_t size = S_ISREG(st.st_mode) ? (uint64_t)st.st_size : s->src->size;
    if (size == job_size(&s->job)) {
        pthread_mutex_unlock(&s->size_mu);
        return 0;
    }
    int r = 0;
    if (s->dst->ops->resize)
        r = ep_resize(s->dst, size);
    else if (size > s->dst->size)
        r = mi_seterr(ENOSPC, "%s: the source grew to %llu bytes, beyond the target's size",
                      s->dst->name, (unsigned long long)size);
    if (r == 0) {
        s->src->size = size;
        job_set_size(&s->job, size);
    }
    pthread_mutex_unlock(&s->size_mu);
    return r;
}

/* ---- the journal as the job's chunk supply ---- */

static uint64_t supply_take(void *ctx, uint64_t cursor, uint64_t max, uint64_t *first)
{
    struct sync *s = ctx;
    if (flag(&s->frozen))
        return 0; /* a pivot is out: the target is the writers' now */
    uint64_t n = mij_take(s->j, cursor, max, first);
    /* A write past the end we know of: the file grew; catch up before copying it. */
    if (n && (*first + n) * mij_granularity(s->j) > job_size(&s->job) && follow_size(s) < 0) {
        mij_redirty(s->j, *first, n);
        return 0;
    }
    return n;
}

static void supply_done(void *ctx, uint64_t first, uint64_t n, bool ok)
{
    struct sync *s = ctx;
    if (ok)
        mij_done(s->j, first, n);
    else
        mij_redirty(s->j, first, n);
}

/* follow ends with complete or cancel; an incremental copy settles first (its tick does
 * that and then finishes the job). */
static bool supply_idle(void *ctx, struct job *job)
{
    (void)ctx, (void)job;
    return false;
}

/* ---- disk mode: the journal's file chunks translated into guest chunks ----
 *
 * The journal marks what changed in the source FILE; the job copies the DISK.  When no
 * guest chunk is left to copy or in flight (an epoch ends), every file chunk taken so far
 * is done in the journal; then the dirty file chunks are taken (they stay copying in the
 * journal: a crash finds them again) and the reader translates each into the guest
 * chunks it changed (ep_refresh).  Guest chunks are taken clear-before-read, and one in
 * flight is not handed out again until its copy is done, as the journal's are. */

static void guest_dirty(void *ctx, uint64_t off, uint64_t len)
{
    struct sync *s = ctx;
    if (!len)
        return;
    uint64_t first = off / s->gchunk, last = (off + len - 1) / s->gchunk;
    pthread_mutex_lock(&s->gmu);
    if (last >= s->gdirty.nbits && /* the disk grew */
        (bitmap_grow(&s->gdirty, last + 1) < 0 || bitmap_grow(&s->gcopying, last + 1) < 0)) {
        if (!s->disk_err[0])
            snprintf(s->disk_err, sizeof s->disk_err, "out of memory for the grown disk's bitmap");
        __atomic_store_n(&s->conservative, true, __ATOMIC_SEQ_CST);
    }
    bitmap_set_range(&s->gdirty, first, last - first + 1);
    pthread_mutex_unlock(&s->gmu);
}

/* Take a run of dirty guest chunks not in flight, at or after cursor. */
static uint64_t guest_take(struct sync *s, uint64_t cursor, uint64_t max, uint64_t *first)
{
    uint64_t n = 0, nbits = s->gdirty.nbits, i = cursor;
    pthread_mutex_lock(&s->gmu);
    while ((i = bitmap_next_set(&s->gdirty, i)) < nbits && bitmap_test(&s->gcopying, i))
        i++;
    if (i < nbits) {
        *first = i;
        while (i + n < nbits && n < max && bitmap_test(&s->gdirty, i + n) &&
               !bitmap_test(&s->gcopying, i + n))
            n++;
        bitmap_clear_range(&s->gdirty, i, n);
        bitmap_set_range(&s->gcopying, i, n);
    }
    pthread_mutex_unlock(&s->gmu);
    return n;
}

static bool guest_idle(struct sync *s)
{
    pthread_mutex_lock(&s->gmu);
    bool idle = bitmap_next_set(&s->gdirty, 0) >= s->gdirty.nbits &&
                bitmap_next_set(&s->gcopying, 0) >= s->gcopying.nbits;
    pthread_mutex_unlock(&s->gmu);
    return idle;
}

/* After a translation: the disk grew (a resize), so do the target and the job.  Before
 * any chunk of the new range is handed out (the job lock is held). */
static int disk_size(struct sync *s)
{
    uint64_t size = s->gsrc->size;
    if (size == job_size(&s->job))
        return 0;
    int r = 0;
    if (s->dst->ops->resize)
        r = ep_resize(s->dst, size);
    else if (size > s->dst->size)
        r = mi_seterr(ENOSPC, "%s: the disk grew to %llu bytes, beyond the target's size",
                      s->dst->name, (unsigned long long)size);
    if (r == 0)
        job_set_size(&s->job, size);
    return r;
}

/* An epoch ended: done with the file chunks it took; take and translate the next ones. */
static void translate(struct sync *s)
{
    uint64_t first, n, g = mij_granularity(s->j), cur = 0;
    if (s->flush_epochs && mij_next_run(s->j, true, 0, &first) && s->dst->ops->flush(s->dst) < 0) {
        if (!s->disk_err[0])
            snprintf(s->disk_err, sizeof s->disk_err, "%s", mi_lasterr());
        return; /* the chunks stay copying: a restart copies them again */
    }
    while ((n = mij_next_run(s->j, true, 0, &first)))
        mij_done(s->j, first, n);
    /* --sync=top: the first pass leaves unallocated ranges to the backing file (the
     * target is new); after it, a range may have become unallocated over an older
     * allocation of the target's: copy what the chain reads there. */
    if (s->top && s->epochs++ > 0)
        job_set_top_fill(&s->job);
    bool all = __atomic_exchange_n(&s->conservative, false, __ATOMIC_SEQ_CST);
    while ((n = mij_take(s->j, cur, 1ULL << 20, &first))) {
        if (ep_refresh(s->gsrc, first * g, n * g, all, guest_dirty, s) < 0) {
            mij_redirty(s->j, first, n);
            __atomic_store_n(&s->conservative, true, __ATOMIC_SEQ_CST);
            if (!s->disk_err[0])
                snprintf(s->disk_err, sizeof s->disk_err, "%s", mi_lasterr());
            return;
        }
        cur = first + n;
    }
    if (disk_size(s) < 0 && !s->disk_err[0])
        snprintf(s->disk_err, sizeof s->disk_err, "%s", mi_lasterr());
}

/* The supply's take in disk mode (called with the job lock held: one at a time). */
static uint64_t disk_take(void *ctx, uint64_t cursor, uint64_t max, uint64_t *first)
{
    struct sync *s = ctx;
    uint64_t n = guest_take(s, cursor, max, first);
    if (n || !guest_idle(s) || s->disk_err[0])
        return n;
    translate(s);
    return s->disk_err[0] ? 0 : guest_take(s, 0, max, first);
}

static void disk_done(void *ctx, uint64_t first, uint64_t n, bool ok)
{
    struct sync *s = ctx;
    pthread_mutex_lock(&s->gmu);
    bitmap_clear_range(&s->gcopying, first, n);
    if (!ok)
        bitmap_set_range(&s->gdirty, first, n);
    pthread_mutex_unlock(&s->gmu);
}

static uint64_t backlog(struct sync *s)
{
    uint64_t copying = 0, dirty = mij_backlog(s->j, &copying);
    uint64_t b = (dirty + copying) * mij_granularity(s->j);
    if (s->disk) {
        pthread_mutex_lock(&s->gmu);
        b += (bitmap_count(&s->gdirty) + bitmap_count(&s->gcopying)) * s->gchunk;
        pthread_mutex_unlock(&s->gmu);
    }
    return b;
}

/* Mark what a full pass must copy: the source's data, or everything (the target holds
 * old bytes that must be overwritten or zeroed). */
static int mark_full_pass(struct sync *s, bool everything)
{
    uint64_t size = s->src->size, off = 0;
    if (s->disk) { /* the whole file, translated knowing nothing: the whole disk */
        struct stat st;
        if (fstat(s->src_fd, &st) == 0)
            size = (uint64_t)st.st_size;
        __atomic_store_n(&s->conservative, true, __ATOMIC_SEQ_CST);
        everything = true;
    }
    if (everything) {
        mij_mark_range(s->j, 0, size);
        return 0;
    }
    while (off < size) {
        uint64_t len;
        int kind;
        int r = s->src->ops->block_status(s->src, off, size - off, 0, &len, &kind);
        if (r < 0)
            return r;
        if (kind == EP_DATA)
            mij_mark_range(s->j, off, len);
        off += len;
    }
    return 0;
}

/* Forget what the source's state and mask said and copy everything again. */
static void full_pass_again(struct sync *s, uint64_t mask)
{
    mij_untrusted_clear(s->j, mask);
    mij_source_forget(s->j);
    mark_full_pass(s, true);
    job_kick(&s->job);
}

/* ---- checks ---- */

/* Renew the lease.  A lease that ran out (the follower was stopped or starved) let the
 * writers go, so a quiesce in progress no longer holds: remember it for complete. */
static int renew(struct sync *s)
{
    pthread_mutex_lock(&s->renew_mu); /* the tick and a complete both renew */
    if (mij_lease_renew(s->j) == -ETIME || mij_lease_lapsed(s->j))
        set_flag(&s->lease_lapsed, true);
    pthread_mutex_unlock(&s->renew_mu);
    if (flag(&s->lease_lapsed) && flag(&s->completing))
        return mi_seterr(ETIME, "%s: the follower's lease ran out during complete (was it "
                         "stopped?) and the writers went on: try complete again", s->c.journal);
    return 0;
}

/* SRC still names the file we follow (not renamed over, not replaced). */
static int check_path(struct sync *s)
{
    struct stat st;
    if (stat(s->c.src, &st) < 0)
        return mi_seterr(errno, "%s: %s: the source is gone", s->c.src, strerror(errno));
    if (mij_check_source(s->j, &st, s->c.src) < 0)
        return mi_seterr(ESTALE, "%s: now names another file than the one followed (renamed over "
                         "or replaced): the writers' file is no longer the source", s->c.src);
    return 0;
}

/* A process that can write the source behind the shim (a writer not started under
 * `run`): the journal cannot be trusted while it is there. */
static int check_foreign(struct sync *s)
{
    char comm[64];
    int pid = mij_foreign_writer(s->j, s->src_fd, comm, sizeof comm);
    /* a child between fork and its registration, or an image between exec and its
     * shim's start: look again, for up to half a second */
    for (int i = 0; pid > 0 && i < 10; i++) {
        nanosleep(&(struct timespec){0, 50000000}, NULL);
        pid = mij_foreign_writer(s->j, s->src_fd, comm, sizeof comm);
    }
    __atomic_store_n(&s->foreign_pid, pid > 0 ? pid : 0, __ATOMIC_SEQ_CST);
    if (pid <= 0)
        return 0;
    mij_untrust(s->j, MIJ_U_FOREIGN, pid);
    return mi_seterr(EIO, "%s: pid %d (%s) has %s open for writing without the shim: its writes "
                     "cannot be tracked (start it under `mirror-img run --journal %s`)",
                     s->c.journal, pid, comm, s->c.src, s->c.journal);
}

/* ---- settling: quiesce, drain, flush, [pivot], release ---- */

static int drain(struct sync *s, uint64_t timeout_ns)
{
    uint64_t deadline = mi_now_ns() + timeout_ns;
    job_kick(&s->job);
    for (;;) {
        if (renew(s) < 0)
            return -ETIME;
        if (follow_size(s) < 0)
            return -EIO;
        uint64_t copying = 0, dirty = mij_backlog(s->j, &copying);
        if (dirty == 0 && copying == 0 && job_idle(&s->job))
            return 0;
        if (s->job.error)
            return mi_seterr(EIO, "%s", s->job.error_msg);
        if (mi_now_ns() > deadline)
            return mi_seterr(ETIMEDOUT, "%s: could not drain the dirty chunks in time", s->c.journal);
        nanosleep(&(struct timespec){0, 200000}, NULL);
    }
}

/* Reasons a full pass cures (mask): mark it now, under the quiesce, so that a complete
 * retried before the engine's next tick finds it to drain, not an empty backlog; then
 * fail this completion, naming them. */
static int fail_full_pass(struct sync *s, uint64_t mask, unsigned died)
{
    char names[256];
    mij_reasons_str(mask, names, sizeof names);
    full_pass_again(s, mask);
    if (died || (mask & MIJ_U_BIT(MIJ_U_WRITER_DIED)))
        return mi_seterr(EIO, "%s: %u writer(s) died inside a write: what they wrote is "
                         "unknown, so the target is not a consistent copy; a full pass "
                         "follows: try again once in sync", s->c.journal, died ? died : 1);
    return mi_seterr(EIO, "%s: journal untrusted: %s: the target is not a consistent copy; a "
                     "full pass follows: try again once in sync", s->c.journal, names);
}

/* Nothing may complete while the journal is untrusted: a reason raised at any moment of
 * the quiesce (a writer that started stdio or AIO while we drained, a writer that died)
 * means the target may lack writes. */
static int settle_trusted(struct sync *s)
{
    uint64_t u = mij_untrusted(s->j) & ~MIJ_U_BIT(MIJ_U_BYPASS);
    char names[256];
    if (u & ~MIJ_U_TRANSIENT)
        return mi_seterr(EIO, "%s: journal untrusted: %s: the target is not a consistent copy, "
                         "not completing", s->c.journal,
                         mij_reasons_str(u & ~MIJ_U_TRANSIENT, names, sizeof names));
    return u ? fail_full_pass(s, u, 0) : 0;
}

/* A pivot failed once writers could be on the target: the job ends (pivot_broken). */
static int pivot_broke(struct sync *s, const char *why)
{
    char msg[600];
    snprintf(msg, sizeof msg, "%s (%s: stopping)", mi_lasterr(), why);
    set_flag(&s->pivot_broken, true);
    return mi_seterr(EIO, "%s", msg);
}

/* Move the writers to the target.  Once the request is out, writers held by the quiesce
 * switch and write the target: from then on a failure leaves the engine nothing to copy
 * (the source is no longer the image), so the job ends with it. */
static int settle_pivot(struct sync *s)
{
    char abs[PATH_MAX];
    if (!realpath(s->dst->name, abs))
        return mi_seterr(errno, "%s: %s", s->dst->name, strerror(errno));
    /* No copy may start once writers can be on the target (the drain left none in
     * flight); a writer that fails to switch keeps dirtying the source meanwhile. */
    set_flag(&s->frozen, true);
    if (renew(s) < 0 || mij_pivot_request(s->j, abs) < 0) {
        set_flag(&s->frozen, false);
        return -EIO; /* nobody moved */
    }
    struct mij_pivot_info pi;
    int r = mij_pivot_wait(s->j, 5000000000ULL, &pi);
    if (r == 0 && pi.failed)
        r = mi_seterr(EIO, "%s: writer %d could not switch to the target: %s", s->c.journal,
                      pi.first_err_pid, strerror(pi.first_err));
    if (r == 0)
        r = mij_pivot_finish(s->j) < 0 ? -ETIME : 0;
    return r < 0 ? pivot_broke(s, "some writers may already write the target") : 0;
}

/* With the writers quiesced (qi): everything they wrote reaches the target, nothing
 * wrote behind the shim, the journal is trusted; then the optional pivot. */
static int settle_held(struct sync *s, bool pivot, const struct mij_quiesce_info *qi)
{
    int r = drain(s, 30000000000ULL);
    if (r == 0)
        r = s->dst->ops->flush(s->dst);
    if (r == 0)
        r = check_path(s);
    if (r == 0)
        r = check_chain(s);
    /* A write behind the shim since the last record (no shim write can run now).  Stores
     * through shared mappings change the file's times without a call: not with those. */
    if (r == 0 && !qi->marked && mij_source_check(s->j, s->src_fd) == MIJ_SRC_CHANGED)
        r = fail_full_pass(s, MIJ_U_BIT(MIJ_U_BYPASS), 0);
    if (r == 0)
        r = settle_trusted(s);
    if (r == 0 && pivot)
        r = settle_pivot(s);
    if (r == 0)
        r = renew(s);
    if (r == 0)
        r = settle_trusted(s); /* a reason raised by a writer while we pivoted */
    if (r < 0 && pivot && flag(&s->frozen) && !flag(&s->pivot_broken))
        r = pivot_broke(s, "the writers were moved to the target");
    return r;
}

/* Quiesce the writers, drain, flush the target, optionally switch the writers to the
 * target (pivot), record the source's state, release.  Returns 0 or -errno. */
static int settle(struct sync *s, bool pivot)
{
    if (check_foreign(s) < 0)
        return -EIO;
    uint64_t t0 = mi_now_ns();
    set_flag(&s->lease_lapsed, false);
    struct mij_quiesce_info qi;
    int r = mij_quiesce_begin(s->j, 5000000000ULL, &qi);
    if (r < 0)
        return r;
    /* A renew that ran before the quiesce saw the last lapse: only what the journal saw
     * since the quiesce began counts. */
    pthread_mutex_lock(&s->renew_mu);
    set_flag(&s->lease_lapsed, mij_lease_lapsed(s->j));
    pthread_mutex_unlock(&s->renew_mu);
    /* A writer found dead inside a write, now (qi.died) or by the follower since its last
     * tick (the untrusted bit, its in-flight mark already reaped). */
    uint64_t transient = mij_untrusted(s->j) & MIJ_U_TRANSIENT & ~MIJ_U_BIT(MIJ_U_BYPASS);
    if (qi.died || transient)
        r = fail_full_pass(s, transient | (qi.died ? MIJ_U_BIT(MIJ_U_WRITER_DIED) : 0), qi.died);
    else if (pivot && qi.maps)
        r = mi_seterr(EBUSY, "%s: cannot pivot: a writer has a writable shared mapping of %s",
                      s->c.journal, s->c.src);
    else
        r = settle_held(s, pivot, &qi);
    if (r == 0)
        mij_source_observe(s->j, s->src_fd);
    s->downtime_ms = (mi_now_ns() - t0) / 1000000;
    mij_quiesce_end(s->j);
    return r;
}

/* ---- complete ---- */

int sync_complete(struct sync *s, bool pivot, char *desc, size_t dsize)
{
    if (pivot && s->disk) {
        snprintf(desc, dsize, "%s: cannot pivot in disk mode: the target holds the disk, not "
                 "the source's file", s->dst->name);
        return -1;
    }
    if (pivot && !s->dst_is_file) {
        snprintf(desc, dsize, "%s: --pivot needs a local file target", s->dst->name);
        return -1;
    }
    if (!flag(&s->ready)) {
        snprintf(desc, dsize, "%s: not ready yet (the first pass is still running)", s->dst->name);
        return -1;
    }
    pthread_mutex_lock(&s->mu);
    s->completing = true;
    pthread_mutex_unlock(&s->mu);
    if (settle(s, pivot) == 0) {
        pthread_mutex_lock(&s->mu);
        s->pivoted = pivot;
        pthread_mutex_unlock(&s->mu);
        job_finish(&s->job);
        return 0;
    }
    snprintf(desc, dsize, "%s", mi_lasterr());
    /* Writers may write the target now: copying the source over it would undo them. */
    if (flag(&s->pivot_broken)) {
        job_fail(&s->job, -EIO, desc);
        return -1;
    }
    pthread_mutex_lock(&s->mu);
    s->completing = false;
    pthread_mutex_unlock(&s->mu);
    return -1;
}

int sync_control(void *ctx, const struct json_request *req, struct json *ret,
                 const char **err_class, char *desc, size_t dsize)
{
    struct sync *s = ctx;
    (void)err_class;
    if (strcmp(req->execute, "job-complete") && strcmp(req->execute, "complete"))
        return 1;
    const char *p = json_request_arg(req, "pivot");
    bool pivot = p && !strcmp(p, "true");
    if (sync_complete(s, pivot, desc, dsize) < 0)
        return -1;
    json_u64_member(ret, "downtime_ms", s->downtime_ms);
    json_u64_member(ret, "bytes_copied", s->job.bytes_copied);
    json_bool_member(ret, "pivot", pivot);
    return 0;
}

/* ---- the engine's tick (every 100 ms) ---- */

static void converge(struct sync *s, uint64_t bl)
{
    /* Dirtying faster than we copy: the backlog grew over the last second. */
    if (bl > s->last_backlog && bl > 4 * mij_granularity(s->j))
        s->growing_secs++;
    else
        s->growing_secs = 0;
    if (!s->c.auto_converge)
        return;
    uint32_t d = s->delay_us;
    if (s->growing_secs >= 2)
        d = d ? (d * 2 > 100000 ? 100000 : d * 2) : 50;
    else if (bl == 0 && d)
        d /= 2;
    if (d != s->delay_us) {
        s->delay_us = d;
        mij_set_delay(s->j, d);
    }
}

static void sample_rates(struct sync *s, uint64_t now)
{
    uint64_t bytes, writes, bl = backlog(s);
    mij_counters(s->j, &bytes, &writes);
    double secs = (double)(now - s->last_sample_ns) / 1e9;
    uint64_t offset = __atomic_load_n(&s->job.offset, __ATOMIC_RELAXED);
    pthread_mutex_lock(&s->mu);
    s->write_rate = (uint64_t)((double)(bytes - s->last_bytes) / secs);
    s->copy_rate = (uint64_t)((double)(offset - s->last_offset) / secs);
    converge(s, bl);
    pthread_mutex_unlock(&s->mu);
    s->last_bytes = bytes;
    s->last_offset = offset;
    s->last_backlog = bl;
    s->last_sample_ns = now;
}

/* Now and then, a scan of /proc for a writer without the shim (said once per pid). */
static void scan_foreign(struct sync *s)
{
    uint64_t now = mi_now_ns();
    if (now - s->last_foreign_ns < 5000000000ULL)
        return;
    s->last_foreign_ns = now;
    int was = s->foreign_pid;
    if (check_foreign(s) < 0 && s->foreign_pid != was)
        notice(s, "%s", mi_lasterr());
}

/* Reasons: a transient one (a writer died inside a write, wrote by a raw syscall) is
 * cured by a full pass; any other fails the job.  Returns -1 when it failed. */
static int tick_reasons(struct sync *s)
{
    uint64_t t = mij_untrusted(s->j) & MIJ_U_TRANSIENT & ~MIJ_U_BIT(MIJ_U_BYPASS);
    char names[256];
    if (s->foreign_pid) /* a full pass cures it only once that process is gone */
        t &= ~MIJ_U_BIT(MIJ_U_FOREIGN);
    if (t) {
        notice(s, "%s: %s: copying everything again", s->c.journal,
               mij_reasons_str(t, names, sizeof names));
        full_pass_again(s, t);
    }
    uint64_t u = mij_untrusted(s->j) & ~MIJ_U_TRANSIENT;
    if (!u)
        return 0;
    mi_seterr(EIO, "%s: journal untrusted: %s; the target cannot be kept in sync (see "
              "`mirror-img journal status %s`)", s->c.journal,
              mij_reasons_str(u, names, sizeof names), s->c.journal);
    job_fail(&s->job, -EIO, mi_lasterr());
    return -1;
}

/* In sync: record the source's state so writes behind the shim are seen later; a change
 * since the last record is such a write: full pass.  Returns whether still in sync. */
static bool tick_in_sync(struct sync *s)
{
    if (mij_source_check(s->j, s->src_fd) != MIJ_SRC_CHANGED) {
        mij_source_observe(s->j, s->src_fd);
        return true;
    }
    notice(s, "%s: %s changed behind the shim (size or change time): full pass", s->c.journal,
           s->c.src);
    full_pass_again(s, MIJ_U_BIT(MIJ_U_BYPASS));
    return false;
}

static void ready_members(struct json *j, void *ctx)
{
    (void)ctx;
    json_bool_member(j, "in_sync", true);
}

static void tick_live(struct sync *s)
{
    struct job *job = &s->job;
    pthread_mutex_lock(&s->mu);
    bool completing = s->completing;
    pthread_mutex_unlock(&s->mu);
    if (completing)
        return;
    if (mij_check_alive(s->j) < 0 || check_path(s) < 0 || follow_size(s) < 0 || check_chain(s) < 0) {
        job_fail(job, -EIO, mi_lasterr());
        return;
    }
    scan_foreign(s);
    if (tick_reasons(s) < 0)
        return;
    uint64_t bl = backlog(s);
    bool idle = bl == 0 && job_idle(job) && !s->foreign_pid;
    job_set_remaining(job, bl);
    if (idle)
        idle = tick_in_sync(s);
    pthread_mutex_lock(&s->mu);
    s->in_sync = idle;
    bool first_ready = idle && !s->ready;
    if (first_ready)
        s->ready = true;
    pthread_mutex_unlock(&s->mu);
    if (first_ready)
        job_set_ready(job, ready_members, NULL);
    uint64_t now = mi_now_ns();
    if (now - s->last_sample_ns >= 1000000000ULL)
        sample_rates(s, now);
}

/* copy --incremental: once caught up, hold the writers a moment so the target is the
 * copy of one instant, then finish. */
static void tick_incremental(struct sync *s)
{
    struct job *job = &s->job;
    if (s->settled)
        return;
    if (renew(s) < 0 || follow_size(s) < 0 || mij_check_alive(s->j) < 0 || check_chain(s) < 0) {
        job_fail(job, -EIO, mi_lasterr());
        return;
    }
    uint64_t bl = backlog(s);
    job_set_remaining(job, bl);
    if (bl || !job_idle(job))
        return;
    if (settle(s, false) < 0) {
        job_fail(job, -EIO, mi_lasterr());
        return;
    }
    s->settled = true;
    job_finish(job);
}

static void tick(struct job *job, void *arg)
{
    struct sync *s = arg;
    if (s->user_tick)
        s->user_tick(job, s->user_arg);
    if (job_stopping(job))
        return;
    if (s->disk_err[0]) {
        job_fail(job, -EIO, s->disk_err);
        return;
    }
    renew(s);
    if (s->c.live)
        tick_live(s);
    else
        tick_incremental(s);
}

int sync_run(struct sync *s, void (*user_tick)(struct job *job, void *arg), void *arg)
{
    s->user_tick = user_tick;
    s->user_arg = arg;
    s->last_sample_ns = mi_now_ns();
    mij_counters(s->j, &s->last_bytes, &(uint64_t){0});
    int r = job_start(&s->job);
    int w = job_wait(&s->job, tick, s);
    return r ? r : w;
}

/* ---- events and results ---- */

/* Members of follow's progress events and status answers. */
static void live_members(struct json *j, void *ctx)
{
    struct sync *s = ctx;
    char buf[256];
    struct mij_writer w[64];
    int n = mij_writers(s->j, w, 64), alive = 0;
    for (int i = 0; i < n; i++)
        alive += w[i].alive;
    uint64_t u = mij_untrusted(s->j);
    pthread_mutex_lock(&s->mu);
    /* in_sync is the last tick's verdict; a write since then (a writer that has just
     * returned) is in the backlog already, and must not be answered "in sync" */
    uint64_t bl = backlog(s);
    json_str_member(j, "mode", s->disk ? "disk" : "file");
    json_bool_member(j, "ready", s->ready);
    json_bool_member(j, "in_sync", s->in_sync && bl == 0);
    json_u64_member(j, "backlog", bl);
    json_u64_member(j, "write_rate", s->write_rate);
    json_u64_member(j, "copy_rate", s->copy_rate);
    json_bool_member(j, "converging", s->growing_secs < 3);
    json_u64_member(j, "writer_delay_us", s->delay_us);
    json_u64_member(j, "writers", (uint64_t)alive);
    json_str_member(j, "untrusted", u ? mij_reasons_str(u, buf, sizeof buf) : "");
    pthread_mutex_unlock(&s->mu);
}

static void completed_members(struct json *j, void *ctx)
{
    struct sync *s = ctx;
    struct sync_result res;
    sync_result(s, &res);
    json_u64_member(j, "bytes_copied", res.bytes_copied);
    json_u64_member(j, "duration_ms", res.duration_ms);
    json_u64_member(j, "downtime_ms", res.downtime_ms);
    if (s->c.live) {
        json_bool_member(j, "pivot", res.pivoted);
        return;
    }
    json_bool_member(j, "incremental", s->full_reason == NULL);
    if (s->full_reason)
        json_str_member(j, "full_pass_reason", s->full_reason);
}

void sync_result(struct sync *s, struct sync_result *res)
{
    pthread_mutex_lock(&s->mu);
    res->bytes_copied = s->job.bytes_copied;
    res->duration_ms = s->job.end_ns ? (s->job.end_ns - s->job.start_ns) / 1000000 : 0;
    res->downtime_ms = s->downtime_ms;
    res->pivoted = s->pivoted;
    pthread_mutex_unlock(&s->mu);
}

static void record_target(struct sync *s)
{
    struct stat st = {0};
    if (!s->dst_is_file || stat(s->c.dst, &st) == 0) {
        if (!s->dst_is_file)
            st.st_size = (off_t)s->dst->size;
        mij_target_set_kind(s->j, s->c.dst, &st, s->disk ? MIJ_TARGET_DISK : MIJ_TARGET_FILE);
    }
}

void sync_conclude(struct sync *s, int r)
{
    if (!s->job_ok)
        return;
    if (r == 0 && !s->c.live)
        record_target(s);
    job_conclude(&s->job, r, completed_members, s);
}

/* Chunks the writers changed since the copy are dirty again: a difference there is fine. */
static bool dirty_again(void *ctx, uint64_t off)
{
    struct sync *s = ctx;
    uint64_t g = mij_granularity(s->j), first;
    return mij_next_run(s->j, false, off / g, &first) && first == off / g;
}

int sync_verify(struct sync *s)
{
    struct compare_opts o = {.length = vsize(s), .granule = mij_granularity(s->j),
                             .forgive = s->disk ? NULL : dirty_again, .ctx = s};
    struct compare_result res;
    int r = compare_images(s->disk ? s->gsrc : s->src, s->dst, &o, &res);
    if (r < 0)
        return r;
    if (res.verdict != CMP_SAME) { /* the next run must not trust this target: all again */
        mij_mark_range(s->j, 0, vsize(s));
        mij_source_forget(s->j);
    }
    if (res.verdict == CMP_DIFFER)
        return mi_seterr(EIO, "%s: verification failed: differs from the source in the chunk "
                         "at offset %llu", s->dst->name,
                         (unsigned long long)mi_round_down(res.offset, o.granule));
    if (res.verdict == CMP_SIZE)
        return mi_seterr(EIO, "%s: verification failed: smaller than the source", s->dst->name);
    return 0;
}

/* ---- set-up ---- */

static unsigned want_kind(const struct sync *s) { return s->disk ? MIJ_TARGET_DISK : MIJ_TARGET_FILE; }

/* An NBD target: written over unless it is the one this journal records. */
static int open_nbd_target(struct sync *s, const struct mij_target *rec, bool *full, bool *all)
{
    s->dst = ep_open(s->c.dst, &(struct ep_open_opts){.format = "raw"}, true);
    if (!s->dst)
        return -EIO;
    if (s->dst->size < vsize(s))
        return mi_seterr(ENOSPC, "%s: the export is smaller than the source", s->c.dst);
    bool same = rec->valid && rec->kind == want_kind(s) && !strcmp(rec->path, s->c.dst);
    *full = !same || s->c.existing || s->c.force;
    *all = true;
    return 0;
}

/* A new qcow2 target is closed empty and reopened by the writer of existing images, whose
 * flush makes the mapping durable (the writer of new images keeps it for its close). */
static int reopen_qcow2(struct sync *s)
{
    int r = s->dst->ops->flush(s->dst);
    int c = ep_close(s->dst);
    s->dst = NULL;
    if (r < 0 || c < 0)
        return -EIO;
    s->dst = ep_open(s->c.dst, &(struct ep_open_opts){.format = "qcow2"}, true);
    return s->dst ? 0 : -EIO;
}

/* The target: the one this journal records (resume), or an existing one with -n (written
 * over: everything is copied) or --force (replaced), or a new one. */
static int open_target(struct sync *s, bool *full, bool *all)
{
    const char *dst = s->c.dst;
    struct mij_target rec;
    mij_target_get(s->j, &rec);
    if (ep_is_nbd_uri(dst))
        return open_nbd_target(s, &rec, full, all);
    struct stat st;
    bool exists = stat(dst, &st) == 0;
    if (exists && mi_same_file(dst, s->c.src))
        return mi_seterr(EINVAL, "%s: is the source; refusing to overwrite it", dst);
    bool recorded = exists && rec.valid && rec.kind == want_kind(s) && rec.dev == (uint64_t)st.st_dev &&
                    rec.ino == (uint64_t)st.st_ino;
    s->dst_is_file = true;
    bool same_file = exists && rec.valid && rec.dev == (uint64_t)st.st_dev && rec.ino == (uint64_t)st.st_ino;
    if (same_file && !recorded && !s->c.existing && !s->c.force)
        return mi_seterr(EEXIST, "%s: this journal records it as a copy of the %s, and this run "
                         "mirrors the %s (%s mode): use -n to write it over, or --force to "
                         "replace it", dst, rec.kind == MIJ_TARGET_DISK ? "disk" : "file",
                         s->disk ? "disk" : "file", s->disk ? "disk" : "file");
    if (exists && !recorded && !s->c.existing && !s->c.force)
        return mi_seterr(EEXIST, "%s: already exists and this journal does not record it as its "
                         "target (use -n to write into it, or --force to replace it)", dst);
    const char *tfmt = s->tfmt ? s->tfmt : "raw";
    s->flush_epochs = !strcmp(tfmt, "qcow2");
    if (exists && !s->c.force) { /* a qcow2 target is reopened (refcounts repaired) */
        s->dst = ep_open(dst, &(struct ep_open_opts){.format = tfmt}, true);
        if (!s->dst)
            return -EIO;
        *full = !recorded || s->c.existing;
        *all = true;
        return ep_resize(s->dst, vsize(s)) < 0 && s->dst->size < vsize(s) ? -ENOSPC : 0;
    }
    struct ep_create_opts c = {.format = tfmt, .size = vsize(s), .force = s->c.force};
    if (s->top) {
        c.backing_file = s->backing;
        c.backing_format = s->backing_fmt[0] ? s->backing_fmt : NULL;
    }
    if (!(s->dst = ep_create(dst, &c)))
        return -EIO;
    *full = true;
    *all = false;
    return s->flush_epochs ? reopen_qcow2(s) : 0;
}

/* Remember the backing chain's files (from the top's backing file down). */
static int record_chain(struct sync *s, const char *first)
{
    char path[4096];
    snprintf(path, sizeof path, "%s", first);
    for (unsigned depth = 0; path[0] && depth < 64; depth++) {
        struct backing_file *c = realloc(s->chain, (s->nchain + 1) * sizeof *c);
        if (!c)
            return mi_seterr(ENOMEM, "out of memory");
        s->chain = c;
        c = &s->chain[s->nchain++];
        snprintf(c->path, sizeof c->path, "%s", path);
        if (stat(path, &c->st) < 0)
            return mi_seterr(errno, "%s: %s", path, strerror(errno));
        const char *fmt = ep_probe(path);
        if (!fmt || strcmp(fmt, "qcow2"))
            break;
        struct ep_info si;
        struct ep *e = ep_open(path, &(struct ep_open_opts){.format = fmt, .top_only = true}, false);
        if (!e || ep_get_info(e, &si, false) < 0) {
            ep_close(e);
            return -EIO;
        }
        ep_close(e);
        snprintf(path, sizeof path, "%s", si.backing_path);
    }
    return 0;
}

/* The backing files a guest reads through (no journal tracks them, no writer should
 * write them) are as they were: 0, or -ESTALE with a message naming the one that changed. */
static int check_chain(struct sync *s)
{
    for (unsigned i = 0; i < s->nchain; i++) {
        struct stat st, *b = &s->chain[i].st;
        if (stat(s->chain[i].path, &st) < 0 || st.st_dev != b->st_dev || st.st_ino != b->st_ino ||
            st.st_size != b->st_size || st.st_mtim.tv_sec != b->st_mtim.tv_sec ||
            st.st_mtim.tv_nsec != b->st_mtim.tv_nsec || st.st_ctim.tv_sec != b->st_ctim.tv_sec ||
            st.st_ctim.tv_nsec != b->st_ctim.tv_nsec)
            return mi_seterr(ESTALE, "%s: the backing file %s changed while followed (written, "
                             "replaced or committed into): no journal tracks it, so the target "
                             "cannot follow", s->c.src, s->chain[i].path);
    }
    return 0;
}

/* Disk mode, whenever the target cannot be a byte-identical copy of the file: a qcow2
 * source into another format (-O raw, an NBD export) or with a backing chain (sync full
 * flattens it).  The job then reads the source through a live qcow2 reader. */
static int open_disk(struct sync *s)
{
    const struct sync_config *c = &s->c;
    const char *fmt = ep_probe(c->src);
    if (!fmt)
        return -EIO;
    if (strcmp(fmt, "qcow2")) {
        if (c->dst_fmt && strcmp(c->dst_fmt, fmt))
            return mi_seterr(ENOTSUP, "%s: a %s source is mirrored file to file: converting "
                             "it to %s while it is written is not supported (use a plain copy)",
                             c->src, fmt, c->dst_fmt);
        return 0;
    }
    struct ep_info si;
    struct ep *top = ep_open(c->src, &(struct ep_open_opts){.format = "qcow2", .top_only = true}, false);
    if (!top || ep_get_info(top, &si, false) < 0) {
        ep_close(top);
        return -EIO;
    }
    ep_close(top);
    bool other = ep_is_nbd_uri(c->dst) || (c->dst_fmt && strcmp(c->dst_fmt, "qcow2"));
    if (!other && !si.backing_file[0])
        return 0; /* file mode: the target is the same qcow2 file */
    s->tfmt = other ? "raw" : "qcow2"; /* a chain flattened into a qcow2 of its own */
    if (c->sync_top && other)
        return mi_seterr(EINVAL, "%s: --sync=top needs a qcow2 target (a raw target or an NBD "
                         "export cannot name a backing file)", c->dst);
    if (c->sync_top) {
        s->top = true;
        if (target_backing_name(&si, c->src, c->dst, s->backing, sizeof s->backing) < 0)
            return -EIO;
        snprintf(s->backing_fmt, sizeof s->backing_fmt, "%s", si.backing_format);
    }
    if (si.backing_file[0] && record_chain(s, si.backing_path) < 0)
        return -EIO;
    s->gsrc = ep_open(c->src, &(struct ep_open_opts){.format = "qcow2", .live = true}, false);
    if (!s->gsrc)
        return -EIO;
    s->disk = true;
    s->conservative = true; /* nothing is known of what the target saw */
    s->gchunk = mij_granularity(s->j);
    uint64_t n = (s->gsrc->size + s->gchunk - 1) / s->gchunk;
    if (bitmap_init(&s->gdirty, n) < 0 || bitmap_init(&s->gcopying, n) < 0)
        return mi_seterr(ENOMEM, "out of memory for a bitmap of %llu chunks", (unsigned long long)n);
    return 0;
}

/* The journal, the source, the lease. */
static int open_journal(struct sync *s)
{
    const struct sync_config *c = &s->c;
    struct mij_create_opts jo = {.granularity = c->granularity, .granularity_set = c->granularity != 0};
    if (mij_create(c->journal, c->src, &jo, &s->j, NULL) < 0)
        return -EIO;
    if (!(s->src = ep_open(c->src, &(struct ep_open_opts){.format = "raw"}, false)))
        return -EIO;
    if ((s->src_fd = open(c->src, O_RDONLY | O_CLOEXEC)) < 0)
        return mi_seterr(errno, "%s: cannot open: %s", c->src, strerror(errno));
    if (open_disk(s) < 0)
        return -EIO;
    if (mij_follow(s->j, c->lease_ms * 1000000ULL) < 0)
        return -EBUSY;
    s->following = true;
    struct stat sst;
    if (fstat(s->src_fd, &sst) < 0 || mij_check_source(s->j, &sst, c->src) < 0)
        return -ESTALE;
    return 0;
}

/* Decide whether everything is copied (and why), and mark it. */
static int plan_pass(struct sync *s, bool full, bool all)
{
    uint64_t reasons = mij_untrusted(s->j) & ~MIJ_U_BIT(MIJ_U_BYPASS);
    if (full)
        s->full_reason = all ? "the target is not the one this journal records" : "new target";
    int sc = mij_source_check(s->j, s->src_fd);
    if (!full && sc != MIJ_SRC_OK) {
        full = true;
        s->full_reason = sc == MIJ_SRC_CHANGED ? "the source changed behind the shim (size or change time)"
                                               : "the source's state was never recorded";
    }
    if (!full && reasons) {
        char names[256];
        full = all = true;
        snprintf(s->why, sizeof s->why, "journal untrusted: %s",
                 mij_reasons_str(reasons, names, sizeof names));
        s->full_reason = s->why;
    }
    if (!full)
        return 0;
    mij_source_forget(s->j);
    mij_untrusted_clear(s->j, MIJ_U_TRANSIENT);
    return mark_full_pass(s, all) < 0 ? -EIO : 0;
}

static int make_job(struct sync *s)
{
    const struct sync_config *c = &s->c;
    s->supply = s->disk ? (struct job_supply){s, disk_take, disk_done, supply_idle}
                        : (struct job_supply){s, supply_take, supply_done, supply_idle};
    struct job_config jc = {
        .src = s->disk ? s->gsrc : s->src, .dst = s->dst, .device = c->dst, .type = c->live ? "mirror" : "copy",
        .granularity = mij_granularity(s->j), .buf_size = c->buf_size, .threads = c->threads,
        .speed = c->speed, .on_source_error = c->on_source_error,
        .on_target_error = c->on_target_error, .no_seed = true, .supply = &s->supply,
        .zero_always = true, /* writers punch holes: zero ranges are always written */
        .sync_top = s->top,
        .extra = c->live ? live_members : NULL, .extra_ctx = s,
    };
    if (job_init(&s->job, &jc) < 0)
        return -EIO;
    s->job_ok = true;
    if (s->job.chunk != (s->disk ? s->gchunk : mij_granularity(s->j)))
        return mi_seterr(EINVAL, "%s: the target needs %llu-byte alignment, more than the "
                         "journal's granularity", c->dst, (unsigned long long)s->job.chunk);
    return 0;
}

static int open_all(struct sync *s)
{
    if (open_journal(s) < 0)
        return -EIO;
    /* Transient reasons (a writer died inside a write...) are cured by a full pass; the
     * others say a writer keeps writing behind the journal's back. */
    uint64_t u = mij_untrusted(s->j) & ~MIJ_U_BIT(MIJ_U_BYPASS) & ~MIJ_U_TRANSIENT;
    if (u) { /* a full pass cannot cure these: settling would refuse it after copying */
        char names[256];
        return mi_seterr(EIO, "%s: journal untrusted: %s (`mirror-img journal reset %s` after "
                         "dealing with it)", s->c.journal, mij_reasons_str(u, names, sizeof names),
                         s->c.journal);
    }
    bool full = false, all = false;
    if (open_target(s, &full, &all) < 0 || plan_pass(s, full, all) < 0)
        return -EIO;
    /* From here on the journal holds everything the target lacks: record the source's
     * state and the target now, so that a run killed before it got in sync resumes
     * without a full pass (and a write behind the shim is still seen). */
    mij_source_observe(s->j, s->src_fd);
    record_target(s);
    return make_job(s);
}

int sync_open(const struct sync_config *c, struct sync **out)
{
    struct sync *s = calloc(1, sizeof *s);
    *out = s;
    if (!s)
        return mi_seterr(ENOMEM, "out of memory");
    s->c = *c;
    s->src_fd = -1;
    pthread_mutex_init(&s->mu, NULL);
    pthread_mutex_init(&s->size_mu, NULL);
    pthread_mutex_init(&s->gmu, NULL);
    pthread_mutex_init(&s->renew_mu, NULL);
    return open_all(s);
}

struct job *sync_job(struct sync *s) { return s && s->job_ok ? &s->job : NULL; }
const char *sync_full_reason(const struct sync *s) { return s->full_reason; }

int sync_close(struct sync *s)
{
    if (!s)
        return 0;
    if (s->job_ok)
        job_destroy(&s->job);
    int r = s->dst ? ep_close(s->dst) : 0;
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", mi_lasterr());
    ep_close(s->src);
    ep_close(s->gsrc);
    bitmap_free(&s->gdirty);
    bitmap_free(&s->gcopying);
    free(s->chain);
    pthread_mutex_destroy(&s->gmu);
    pthread_mutex_destroy(&s->renew_mu);
    if (s->src_fd >= 0)
        close(s->src_fd);
    if (s->j) {
        if (s->following)
            mij_unfollow(s->j);
        mij_close(s->j);
    }
    pthread_mutex_destroy(&s->mu);
    pthread_mutex_destroy(&s->size_mu);
    free(s);
    if (r < 0)
        mi_seterr(-r, "%s", msg);
    return r;
}
