/* job.c: the mirror engine; see job.h for the model. */
#include "job.h"
#include "offload.h"
#include "events.h"
#include "util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char *status_names[] = {
    "created", "running", "paused", "ready", "standby", "waiting", "pending", "aborting", "concluded",
};
static const char *policy_names[] = {"report", "ignore", "enospc", "stop"};

const char *job_status_name(int s) { return s >= 0 && s <= JOB_CONCLUDED ? status_names[s] : "?"; }
const char *job_policy_name(int p) { return p >= 0 && p <= POLICY_STOP ? policy_names[p] : "?"; }

int job_policy_parse(const char *s)
{
    for (int i = 0; i <= POLICY_STOP; i++)
        if (!strcmp(s, policy_names[i]))
            return i;
    return -1;
}

/* A request: a run of dirty chunks [first, first+n), bytes [off, off+len), read into buf
 * (cls: the kind of each unit). */
struct job_req {
    struct job_req *next;
    char *buf;
    uint8_t *cls;
    uint64_t first, n, off, len;
};

static void pipe_end(struct job *job);
static void seed_end(struct job *job);
static void req_fini(struct job_req *q);

/* Wake every waiting thread: a state change (pause, resume, cancel, error, the end). */
static void wake_all(struct job *job)
{
    pthread_cond_broadcast(&job->cond);
    pthread_cond_broadcast(&job->pipe_cond);
    pthread_cond_broadcast(&job->buf_cond);
}

/* The CLOCK_REALTIME time ns from now, for pthread_cond_timedwait. */
static struct timespec deadline_in(uint64_t ns)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += (time_t)(ns / 1000000000ULL);
    ts.tv_nsec += (long)(ns % 1000000000ULL);
    if (ts.tv_nsec >= 1000000000) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000;
    }
    return ts;
}

static void sleep_ns(uint64_t ns)
{
    struct timespec ts = {(time_t)(ns / 1000000000ULL), (long)(ns % 1000000000ULL)};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

/* ---- events ---- */

void job_event(struct job *job, const char *name, void (*fn)(struct json *j, void *arg), void *arg)
{
    if (!events_enabled())
        return;
    struct json j;
    json_init(&j);
    json_str_member(&j, "device", job->c.device);
    json_str_member(&j, "type", job->c.type);
    /* offset first: len only grows (a new target's map is read while the copy goes) */
    uint64_t off = __atomic_load_n(&job->offset, __ATOMIC_ACQUIRE);
    json_u64_member(&j, "len", mi_max(__atomic_load_n(&job->len, __ATOMIC_ACQUIRE), off));
    json_u64_member(&j, "offset", off);
    json_u64_member(&j, "speed", bucket_rate(&job->bucket));
    if (fn)
        fn(&j, arg);
    events_emit(name, &j);
    json_free(&j);
}

void job_set_status(struct job *job, int status)
{
    if (job->status == status)
        return;
    job->status = status;
    if (!events_enabled())
        return;
    struct json j;
    json_init(&j);
    json_str_member(&j, "id", job->c.device);
    json_str_member(&j, "status", job_status_name(status));
    events_emit("JOB_STATUS_CHANGE", &j);
    json_free(&j);
}

/* ---- set-up ---- */

/* Mark what the source's map says needs copying, from the start to the end.  With a
 * seeder thread (async), each step is published under the lock: the bitmap below
 * `seeded` is final, and len grows with what is marked.  Returns 0 or -errno. */
static int seed(struct job *job, bool async)
{
    unsigned flags = job->c.sync_top ? EP_BS_TOP : 0;
    bool skip_zero = !job->need_zero_write;
    uint64_t off = 0, marked = 0, next_unmarked = 0;
    while (off < job->size) {
        uint64_t len;
        int kind;
        int r = job->c.src->ops->block_status(job->c.src, off, job->size - off, flags, &len, &kind);
        if (r < 0)
            return r;
        if (len == 0)
            return mi_seterr(EIO, "%s: block status made no progress at offset %llu",
                             job->c.src->name, (unsigned long long)off);
        bool need = kind == EP_DATA || (kind == EP_ZERO && !skip_zero) ||
                    (kind == EP_UNALLOC && job->need_back);
        if (async)
            pthread_mutex_lock(&job->lock);
        if (need) {
            uint64_t first = mi_max(off / job->chunk, next_unmarked), last = (off + len - 1) / job->chunk;
            if (first <= last) {
                bitmap_set_range(&job->dirty, first, last - first + 1);
                marked += last - first + 1;
                next_unmarked = last + 1;
            }
        }
        off += len;
        __atomic_store_n(&job->len, mi_min(marked * job->chunk, job->size), __ATOMIC_RELEASE);
        if (async) {
            uint64_t was = job->seeded;
            job->seeded = mi_min(off, job->size) / job->chunk;
            bool stop = job->cancel_req || job->error;
            /* wake waiting workers only when chunks marked for copying became settled */
            if (job->seeded > was && next_unmarked > was && job->waiters)
                pthread_cond_broadcast(&job->cond);
            pthread_mutex_unlock(&job->lock);
            if (stop)
                return 0;
        }
    }
    return 0;
}

static void *seeder(void *arg)
{
    struct job *job = arg;
    int r = seed(job, true);
    if (r < 0)
        job_fail(job, r, mi_lasterr());
    pthread_mutex_lock(&job->lock);
    job->seeding = false;
    job->seeded = job->nchunks;
    wake_all(job);
    pthread_mutex_unlock(&job->lock);
    return NULL;
}

int job_init(struct job *job, const struct job_config *c)
{
    memset(job, 0, sizeof *job);
    job->c = *c;
    if (!job->c.device)
        job->c.device = c->dst->name;
    if (!job->c.type)
        job->c.type = "copy";
    if (!job->c.max_passes)
        job->c.max_passes = 5;
    job->size = c->src->size;
    uint32_t dalign = c->dst->align ? c->dst->align : 512;
    job->unit = dalign > 4096 ? dalign : 4096;
    job->chunk = mi_max(c->granularity ? c->granularity : 64 * 1024, dalign);
    if (job->unit > job->chunk)
        job->unit = (uint32_t)job->chunk;
    job->nchunks = (job->size + job->chunk - 1) / job->chunk;
    job->nworkers = c->threads ? c->threads : 1;
    /* The write pipe: with more than one worker, no supply (follow and incremental keep
     * each request in one worker) and a target that takes one writer at a time. */
    job->pipe = job->nworkers > 1 && !c->supply && (c->dst->caps & EP_CAP_ONE_WRITER);
    uint64_t buf = c->buf_size ? c->buf_size : 16 * MI_MiB;
    job->req_max = mi_round_down(mi_min(buf / (job->nworkers + job->pipe), 8 * MI_MiB),
                                 job->chunk);
    if (job->req_max < job->chunk)
        job->req_max = job->chunk;
    job->need_zero_write = c->sync_top || c->zero_always ||
                            !(c->target_is_zero || (c->dst->caps & EP_CAP_IS_ZERO));
    job->need_back = c->sync_top && (c->dst->caps & EP_CAP_BACKING) &&
                     !(c->target_is_zero || (c->dst->caps & EP_CAP_IS_ZERO));
    offload_init(&job->off, c->offload, c->src, c->dst);
    pthread_mutex_init(&job->lock, NULL);
    pthread_cond_init(&job->cond, NULL);
    pthread_cond_init(&job->pipe_cond, NULL);
    pthread_cond_init(&job->buf_cond, NULL);
    pthread_mutex_init(&job->bucket_lock, NULL);
    bucket_init(&job->bucket, c->speed, mi_now_ns());
    job->status = JOB_CREATED;
    if (bitmap_init(&job->dirty, job->nchunks) < 0 || bitmap_init(&job->failed, job->nchunks) < 0)
        return mi_seterr(ENOMEM, "out of memory for a bitmap of %llu chunks",
                         (unsigned long long)job->nchunks);
    if (c->seed_from) { /* what to copy comes from elsewhere (copy --bitmap) */
        int r = c->seed_from(c->seed_ctx, job);
        if (r < 0)
            return r;
        job->len = mi_min(bitmap_count(&job->dirty) * job->chunk, job->size);
    } else if (!c->no_seed && c->seed_async && !c->supply) {
        job->seeding = true; /* by the seeder thread, from job_start */
    } else if (!c->no_seed) {
        int r = seed(job, false);
        if (r < 0)
            return r;
    }
    return 0;
}

void job_destroy(struct job *job)
{
    job_set_status(job, JOB_CONCLUDED);
    pipe_end(job);
    if (job->seed_started) {
        job_cancel(job);
        seed_end(job);
    }
    for (unsigned i = 0; i < job->pipe_nreqs; i++)
        req_fini(&job->pipe_reqs[i]);
    free(job->pipe_reqs);
    bitmap_free(&job->dirty);
    bitmap_free(&job->failed);
    free(job->threads);
    pthread_mutex_destroy(&job->lock);
    pthread_cond_destroy(&job->cond);
    pthread_cond_destroy(&job->pipe_cond);
    pthread_cond_destroy(&job->buf_cond);
    pthread_mutex_destroy(&job->bucket_lock);
}

void job_conclude(struct job *job, int r, void (*fn)(struct json *j, void *arg), void *arg)
{
    if (r == 0) {
        __atomic_store_n(&job->offset, job->len, __ATOMIC_RELEASE);
        job_set_status(job, JOB_PENDING);
        job_event(job, "BLOCK_JOB_COMPLETED", fn, arg);
        return;
    }
    job_set_status(job, JOB_ABORTING);
    if (r == -ECANCELED)
        job_event(job, "BLOCK_JOB_CANCELLED", NULL, NULL);
}

void job_mark(struct job *job, uint64_t off, uint64_t len)
{
    if (!len || off >= job->size)
        return;
    uint64_t last = (mi_min(off + len, job->size) - 1) / job->chunk;
    bitmap_set_range(&job->dirty, off / job->chunk, last - off / job->chunk + 1);
}

void job_set_size(struct job *job, uint64_t size)
{
    __atomic_store_n(&job->size, size, __ATOMIC_RELAXED);
}

void job_set_remaining(struct job *job, uint64_t remaining)
{
    uint64_t off = __atomic_load_n(&job->offset, __ATOMIC_ACQUIRE);
    __atomic_store_n(&job->len, off + remaining, __ATOMIC_RELEASE);
}

void job_set_ready(struct job *job, void (*fn)(struct json *j, void *arg), void *arg)
{
    pthread_mutex_lock(&job->lock);
    job_set_status(job, JOB_READY);
    pthread_mutex_unlock(&job->lock);
    job_event(job, "BLOCK_JOB_READY", fn, arg);
}

void job_set_top_fill(struct job *job) { __atomic_store_n(&job->top_fill, true, __ATOMIC_RELAXED); }

unsigned job_error_pauses(struct job *job, bool *on_target, char *msg, size_t size)
{
    pthread_mutex_lock(&job->lock);
    unsigned n = job->error_pauses;
    *on_target = job->pause_on_target;
    snprintf(msg, size, "%s", job->pause_msg);
    pthread_mutex_unlock(&job->lock);
    return n;
}

void job_mark_dirty(struct job *job, uint64_t off, uint64_t len)
{
    if (!len)
        return;
    uint64_t first = off / job->chunk, last = (off + len - 1) / job->chunk;
    bitmap_set_range(&job->dirty, first, last - first + 1);
}

/* ---- the data path ---- */

/* What a unit holds: classify gives the first three (a unit takes the strongest of what it
 * holds); read_range turns data units that read as zeroes into U_DATA_ZERO. */
enum { U_UNALLOC, U_ZERO, U_DATA, U_DATA_ZERO, U_DONE /* offloaded: nothing to write */ };

/* Classify each unit of [off, off+len) from the source's block status. */
static int classify(struct job *job, uint64_t off, uint64_t len, uint8_t *cls)
{
    unsigned flags = job->c.sync_top ? EP_BS_TOP : 0;
    uint64_t nunits = (len + job->unit - 1) / job->unit;
    memset(cls, U_UNALLOC, nunits);
    uint64_t pos = off, end = off + len;
    while (pos < end) {
        uint64_t n;
        int kind;
        int r = job->c.src->ops->block_status(job->c.src, pos, end - pos, flags, &n, &kind);
        if (r < 0)
            return r;
        if (n == 0 || n > end - pos)
            n = end - pos;
        int c = kind == EP_DATA ? U_DATA : kind == EP_ZERO ? U_ZERO : U_UNALLOC;
        if (c == U_UNALLOC && __atomic_load_n(&job->top_fill, __ATOMIC_RELAXED))
            c = U_DATA; /* pread reads the backing chain there */
        /* A unit takes the strongest kind of anything inside it: data > zero > unallocated. */
        uint64_t u0 = (pos - off) / job->unit, u1 = (pos + n - 1 - off) / job->unit;
        for (uint64_t u = u0; u <= u1; u++)
            if (cls[u] < c)
                cls[u] = (uint8_t)c;
        pos += n;
    }
    return 0;
}

struct werr {
    int rc;
    bool target; /* the target failed (else the source) */
};

static void throttle(struct job *job, uint64_t n)
{
    pthread_mutex_lock(&job->bucket_lock);
    uint64_t wait = bucket_run(&job->bucket, n, mi_now_ns());
    pthread_mutex_unlock(&job->bucket_lock);
    /* Sleep in slices so cancel and set-speed are felt. */
    while (wait && !__atomic_load_n(&job->cancel_req, __ATOMIC_RELAXED)) {
        uint64_t s = mi_min(wait, 100000000ULL);
        sleep_ns(s);
        wait -= s;
    }
}

/* Read what [off, off+len) holds into buf (buf mirrors the range: the data at off+k is
 * at buf+k), after classifying it into cls.  Chunk aligned; may end at the image's end. */
static int read_range(struct job *job, char *buf, uint8_t *cls, uint64_t off, uint64_t len,
                      struct werr *e)
{
    struct ep *src = job->c.src;
    int r = classify(job, off, len, cls);
    if (r < 0) {
        e->rc = r, e->target = false;
        return r;
    }
    uint64_t nunits = (len + job->unit - 1) / job->unit;
    for (uint64_t u = 0; u < nunits;) {
        uint64_t v = u + 1;
        while (v < nunits && cls[v] == cls[u])
            v++;
        uint64_t a = off + u * job->unit, b = mi_min(off + v * job->unit, off + len);
        if (cls[u] == U_DATA && job->off.on) { /* what the kernel copies is not read */
            uint64_t done = offload_run(&job->off, job->c.src, job->c.dst, a, b - a);
            throttle(job, done);
            __atomic_fetch_add(&job->bytes_copied, done, __ATOMIC_RELAXED);
            uint64_t du = (b == off + len && done == b - a) ? v - u : done / job->unit;
            memset(cls + u, U_DONE, du);
            a += du * job->unit;
            if (u + du == v) {
                u = v;
                continue;
            }
            u += du;
        }
        if (cls[u] == U_DATA) {
            throttle(job, b - a);
            r = src->ops->pread(src, buf + (a - off), b - a, a);
            if (r < 0) {
                e->rc = r, e->target = false;
                return r;
            }
            __atomic_fetch_add(&job->bytes_read, b - a, __ATOMIC_RELAXED);
            for (uint64_t k = u; k < v; k++) {
                uint64_t ka = off + k * job->unit;
                if (mi_is_zero(buf + (ka - off), mi_min(job->unit, off + len - ka)))
                    cls[k] = U_DATA_ZERO;
            }
        }
        u = v;
    }
    return 0;
}

/* Write what read_range read: the data, and zeroes where they must be. */
static int write_range(struct job *job, const char *buf, const uint8_t *cls, uint64_t off,
                       uint64_t len, struct werr *e)
{
    struct ep *dst = job->c.dst;
    uint64_t nunits = (len + job->unit - 1) / job->unit;
    for (uint64_t u = 0; u < nunits;) {
        uint64_t v = u + 1;
        bool zero = cls[u] == U_ZERO || cls[u] == U_DATA_ZERO;
        while (v < nunits && (cls[v] == cls[u] || (zero && (cls[v] == U_ZERO ||
                                                            cls[v] == U_DATA_ZERO))))
            v++;
        uint64_t a = off + u * job->unit, b = mi_min(off + v * job->unit, off + len);
        if (cls[u] == U_DONE) {
            /* offloaded: copied already */
        } else if (cls[u] == U_DATA) {
            int r = dst->ops->pwrite(dst, buf + (a - off), b - a, a);
            if (r < 0) {
                e->rc = r, e->target = true;
                return r;
            }
            __atomic_fetch_add(&job->bytes_copied, b - a, __ATOMIC_RELAXED);
        } else if (cls[u] == U_UNALLOC && job->need_back) {
            int r = dst->ops->zero(dst, a, b - a, EP_ZERO_BACKING);
            if (r < 0) {
                e->rc = r, e->target = true;
                return r;
            }
        } else if (zero && job->need_zero_write) {
            int r = dst->ops->zero(dst, a, b - a, EP_ZERO_MAY_UNMAP);
            if (r < 0) {
                e->rc = r, e->target = true;
                return r;
            }
            __atomic_fetch_add(&job->bytes_zeroed, b - a, __ATOMIC_RELAXED);
        }
        u = v;
    }
    return 0;
}

/* ---- error policies ---- */

struct err_info {
    const char *op;
    const char *action;
    const char *msg;
    uint64_t off, len;
};

static void err_members(struct json *j, void *arg)
{
    struct err_info *i = arg;
    json_str_member(j, "operation", i->op);
    json_str_member(j, "action", i->action);
    json_u64_member(j, "error_offset", i->off);
    json_u64_member(j, "error_len", i->len);
    json_str_member(j, "message", i->msg);
}

static uint64_t take(struct job *job, uint64_t max, uint64_t *first)
{
    if (job->c.supply)
        return job->c.supply->take(job->c.supply->ctx, job->cursor, max, first);
    uint64_t from = job->cursor;
    if (job->seeding) { /* only what the seeder has settled (no scan beyond it) */
        from = bitmap_next_set_before(&job->dirty, from, job->seeded);
        if (from >= job->seeded)
            return 0;
        max = mi_min(max, job->seeded - from);
    }
    return bitmap_take_run(&job->dirty, from, max, first);
}

static void give_back(struct job *job, uint64_t first, uint64_t n, bool ok)
{
    if (job->c.supply)
        job->c.supply->done(job->c.supply->ctx, first, n, ok);
    else if (!ok)
        bitmap_set_range(&job->dirty, first, n);
}

/* Called with the lock held after a request failed. */
static void on_error(struct job *job, uint64_t first, uint64_t n, const struct werr *e)
{
    int policy = e->target ? job->c.on_target_error : job->c.on_source_error;
    uint64_t off = first * job->chunk, size = job_size(job);
    uint64_t len = mi_min(n * job->chunk, size - mi_min(off, size));
    struct err_info info = {e->target ? "write" : "read", "report", mi_lasterr(), off, len};
    bool pause = policy == POLICY_STOP || (policy == POLICY_ENOSPC && e->rc == -ENOSPC);
    if (pause) {
        info.action = "stop";
        give_back(job, first, n, false);
        job->error_paused = true;
        job->error_pauses++;
        job->pause_on_target = e->target;
        snprintf(job->pause_msg, sizeof job->pause_msg, "%s", mi_lasterr());
        job_event(job, "BLOCK_JOB_ERROR", err_members, &info);
        job_set_status(job, JOB_PAUSED);
        return;
    }
    if (policy == POLICY_IGNORE) {
        info.action = "ignore";
        snprintf(job->ignored_msg, sizeof job->ignored_msg, "%s", mi_lasterr());
        if (job->c.supply) {
            give_back(job, first, n, false);
            job->backoff = true; /* the supply hands the run out again at once */
        } else {
            bitmap_set_range(&job->failed, first, n);
        }
        job_event(job, "BLOCK_JOB_ERROR", err_members, &info);
        return;
    }
    give_back(job, first, n, false);
    job_event(job, "BLOCK_JOB_ERROR", err_members, &info);
    if (!job->error) {
        job->error = e->rc;
        snprintf(job->error_msg, sizeof job->error_msg, "%s", mi_lasterr());
    }
}

/* The ignore policy ran out of passes: fail, naming the ranges still failing. */
static void fail_ignored(struct job *job)
{
    char *p = job->error_msg;
    size_t room = sizeof job->error_msg;
    int n = snprintf(p, room, "%s: ranges still failing after %u passes (last error: %s):",
                     job->c.device, job->c.max_passes, job->ignored_msg);
    uint64_t i = 0, shown = 0;
    while ((i = bitmap_next_set(&job->failed, i)) < job->nchunks && n > 0 && (size_t)n < room) {
        uint64_t j = bitmap_next_clear(&job->failed, i);
        uint64_t off = i * job->chunk, end = mi_min(j * job->chunk, job->size);
        if (shown++ == 8) {
            n += snprintf(p + n, room - (size_t)n, " ...");
            break;
        }
        n += snprintf(p + n, room - (size_t)n, " %llu+%llu", (unsigned long long)off,
                      (unsigned long long)(end - off));
        i = j;
    }
    job->error = -EIO;
}

/* ---- workers ---- */

static bool should_wait(struct job *job)
{
    return (job->pause_req || job->error_paused) && !job->cancel_req && !job->error;
}

static int req_init(struct job *job, struct job_req *q)
{
    q->cls = malloc(job->req_max / job->unit + 2);
    if (posix_memalign((void **)&q->buf, 4096, job->req_max) != 0)
        q->buf = NULL;
    return q->buf && q->cls ? 0 : -ENOMEM;
}

static void req_fini(struct job_req *q)
{
    free(q->buf);
    free(q->cls);
}

/* With the lock held: request q ended (r: 0 or its error, in e). */
static void req_done(struct job *job, struct job_req *q, int r, const struct werr *e)
{
    job->active--;
    job->requests_done++;
    if (r < 0) {
        on_error(job, q->first, q->n, e);
        if (job->backoff) {
            job->backoff = false;
            pthread_mutex_unlock(&job->lock);
            sleep_ns(100000000ULL);
            pthread_mutex_lock(&job->lock);
        }
    } else {
        give_back(job, q->first, q->n, true);
        __atomic_fetch_add(&job->offset, q->len, __ATOMIC_RELAXED);
    }
    /* Wake whoever waits on this request: workers waiting for work (at the end), and
     * job_wait's ticks when a supply feeds the job (they react to each finished request).
     * A plain copy's main thread sleeps through to its 100 ms tick. */
    if (r < 0 || job->c.supply)
        wake_all(job);
    else if (job->waiters)
        pthread_cond_broadcast(&job->cond);
}

/* With the lock held: q's buffer is free again (the write pipe's). */
static void buf_free(struct job *job, struct job_req *q)
{
    q->next = job->pipe_free;
    job->pipe_free = q;
    pthread_cond_signal(&job->buf_cond);
}

/* Wait on job->cond (waiters counts the workers there), at most timeout_ns (0: no limit). */
static void wait_cond(struct job *job, uint64_t timeout_ns)
{
    job->waiters++;
    if (timeout_ns) {
        struct timespec ts = deadline_in(timeout_ns);
        pthread_cond_timedwait(&job->cond, &job->lock, &ts);
    } else {
        pthread_cond_wait(&job->cond, &job->lock);
    }
    job->waiters--;
}

/* The worker's own request, unless the write pipe lends the buffers: on ENOMEM the job
 * fails and the worker ends at once. */
static int worker_alloc(struct job *job, struct job_req *own)
{
    if (job->pipe || req_init(job, own) == 0)
        return 0;
    req_fini(own);
    pthread_mutex_lock(&job->lock);
    if (!job->error) {
        job->error = -ENOMEM;
        snprintf(job->error_msg, sizeof job->error_msg, "out of memory for buffers");
    }
    wake_all(job);
    pthread_mutex_unlock(&job->lock);
    return -ENOMEM;
}

/* With the lock held: take the next run for a request, from the cursor on, then once more
 * from the start. */
static inline uint64_t take_next(struct job *job, uint64_t max_chunks, uint64_t *first)
{
    uint64_t maxc = max_chunks;
    uint64_t rate = bucket_rate(&job->bucket);
    if (rate) /* keep requests small enough for the rate to be smooth */
        maxc = mi_max(1, mi_min(maxc, rate / 4 / job->chunk));
    uint64_t n = take(job, maxc, first);
    if (n == 0 && job->cursor) {
        job->cursor = 0;
        n = take(job, maxc, first);
    }
    return n;
}

/* What a worker does next when take() found nothing. */
enum idle_action {
    IDLE_AGAIN, /* look for work again (after a wait or a backoff) */
    IDLE_STOP,  /* the job finished or failed: the worker ends */
};

/* With the lock held, no worker busy and failed runs left (ignore policy): fail once the
 * passes run out, else start the next pass. */
static enum idle_action next_pass(struct job *job)
{
    if (++job->pass >= job->c.max_passes) {
        fail_ignored(job);
        wake_all(job);
        return IDLE_STOP;
    }
    /* Back off, then retry the failed runs. */
    job->active++;
    pthread_mutex_unlock(&job->lock);
    sleep_ns(50000000ULL << job->pass);
    pthread_mutex_lock(&job->lock);
    job->active--;
    for (uint64_t w = 0; w < job->failed.nwords; w++) {
        job->dirty.words[w] |= job->failed.words[w];
        job->failed.words[w] = 0;
    }
    return IDLE_AGAIN;
}

/* With the lock held: take() found nothing.  Wait for the seeder or the other workers,
 * retry the failed runs, or finish (when the supply, if any, agrees). */
static enum idle_action on_empty(struct job *job)
{
    if (job->seeding) { /* woken as the seeder goes on */
        wait_cond(job, 20000000);
        return IDLE_AGAIN;
    }
    if (job->active == 0) {
        if (bitmap_next_set(&job->failed, 0) < job->nchunks)
            return next_pass(job);
        if (!job->c.supply || !job->c.supply->idle ||
            job->c.supply->idle(job->c.supply->ctx, job)) {
            job->finished = true;
            wake_all(job);
            return IDLE_STOP;
        }
    }
    wait_cond(job, 20000000);
    return IDLE_AGAIN;
}

/* on_read: the request as the source reads, zero units (not read) filled in. */
static void show_read(struct job *job, struct job_req *q)
{
    uint64_t nunits = (q->len + job->unit - 1) / job->unit;
    for (uint64_t u = 0; u < nunits; u++)
        if (q->cls[u] == U_ZERO || q->cls[u] == U_UNALLOC)
            memset(q->buf + u * job->unit, 0, mi_min(job->unit, q->len - u * job->unit));
    job->c.on_read(job->c.read_ctx, q->off, q->len, q->buf);
}

/* With the lock held (dropped meanwhile): copy the run of n chunks at first with q's
 * buffers, or only read it and queue it for the write pipe. */
static inline void run_req(struct job *job, struct job_req *q, uint64_t first, uint64_t n)
{
    if (job->pipe)
        job->pipe_free = q->next;
    job->cursor = first + n;
    job->active++;
    pthread_mutex_unlock(&job->lock);

    q->first = first, q->n = n, q->off = first * job->chunk;
    uint64_t size = job_size(job); /* follow moves it: read once */
    q->len = mi_min(n * job->chunk, size - mi_min(q->off, size));
    struct werr e = {0, false};
    int r = q->len ? read_range(job, q->buf, q->cls, q->off, q->len, &e) : 0;
    if (r == 0 && q->len && job->c.on_read)
        show_read(job, q);
    if (r == 0 && q->len && !job->pipe)
        r = write_range(job, q->buf, q->cls, q->off, q->len, &e);

    pthread_mutex_lock(&job->lock);
    if (job->pipe && r == 0) {
        /* Read: the writer takes it from here. */
        q->next = NULL;
        if (job->pipe_tail)
            job->pipe_tail->next = q;
        else
            job->pipe_head = q;
        job->pipe_tail = q;
        pthread_cond_signal(&job->pipe_cond);
        return;
    }
    req_done(job, q, r, &e);
    if (job->pipe)
        buf_free(job, q);
}

static void *worker(void *arg)
{
    struct job *job = arg;
    struct job_req own = {0};
    if (worker_alloc(job, &own) < 0)
        return NULL;
    uint64_t max_chunks = job->req_max / job->chunk;
    pthread_mutex_lock(&job->lock);
    for (;;) {
        while (should_wait(job))
            wait_cond(job, 0);
        if (job->cancel_req || job->error || job->finished)
            break;
        struct job_req *q = &own;
        if (job->pipe && !(q = job->pipe_free)) {
            pthread_cond_wait(&job->buf_cond, &job->lock); /* all queued for the writer */
            continue;
        }
        uint64_t first, n = take_next(job, max_chunks, &first);
        if (n == 0) {
            if (on_empty(job) == IDLE_STOP)
                break;
            continue;
        }
        run_req(job, q, first, n);
    }
    wake_all(job);
    pthread_mutex_unlock(&job->lock);
    req_fini(&own);
    return NULL;
}

/* The write pipe's thread: writes the requests the workers read, in their order.  What is
 * queued is written even when the job pauses, fails or is cancelled meanwhile (as a worker
 * finishes the request it is in: a paused job has no request in flight); it ends when the
 * workers have ended. */
static void *pipe_writer(void *arg)
{
    struct job *job = arg;
    pthread_mutex_lock(&job->lock);
    for (;;) {
        struct job_req *q = job->pipe_head;
        if (q) {
            job->pipe_head = q->next;
            if (!job->pipe_head)
                job->pipe_tail = NULL;
            if (job->error_paused) {
                /* A request failed and the job paused on it (stop, enospc): what is queued
                 * is not written into the same failure but read again after resume. */
                job->active--;
                job->requests_done++;
                give_back(job, q->first, q->n, false);
                buf_free(job, q);
                if (job->waiters)
                    pthread_cond_broadcast(&job->cond);
                continue;
            }
            pthread_mutex_unlock(&job->lock);
            struct werr e = {0, false};
            int r = q->len ? write_range(job, q->buf, q->cls, q->off, q->len, &e) : 0;
            pthread_mutex_lock(&job->lock);
            req_done(job, q, r, &e);
            buf_free(job, q);
            continue;
        }
        if (!q && job->pipe_stop)
            break;
        pthread_cond_wait(&job->pipe_cond, &job->lock);
    }
    pthread_mutex_unlock(&job->lock);
    return NULL;
}

/* job_start failed before its workers ran: job_wait (which callers still call) joins none
 * and returns at once. */
static int start_failed(struct job *job, int err, const char *what)
{
    job->nworkers = 0;
    job_cancel(job);
    return mi_seterr(err, "%s: %s", what, strerror(err));
}

int job_start(struct job *job)
{
    job->start_ns = mi_now_ns();
    if (job->pipe) {
        unsigned nreqs = job->nworkers + 1; /* one in each worker, one being written */
        job->pipe_reqs = calloc(nreqs, sizeof *job->pipe_reqs);
        if (!job->pipe_reqs)
            return start_failed(job, ENOMEM, "cannot allocate buffers");
        job->pipe_nreqs = nreqs;
        for (unsigned i = 0; i < job->pipe_nreqs; i++) {
            if (req_init(job, &job->pipe_reqs[i]) < 0)
                return start_failed(job, ENOMEM, "cannot allocate buffers");
            job->pipe_reqs[i].next = job->pipe_free;
            job->pipe_free = &job->pipe_reqs[i];
        }
        int r = pthread_create(&job->pipe_thread, NULL, pipe_writer, job);
        if (r)
            return start_failed(job, r, "cannot start the writer thread");
        job->pipe_started = true;
    }
    job->threads = calloc(job->nworkers, sizeof *job->threads);
    if (!job->threads)
        return start_failed(job, ENOMEM, "cannot start the workers");
    pthread_mutex_lock(&job->lock); /* the control socket may pause it meanwhile */
    if (job->status == JOB_CREATED)
        job_set_status(job, JOB_RUNNING);
    pthread_mutex_unlock(&job->lock);
    if (job->seeding) {
        int r = pthread_create(&job->seed_thread, NULL, seeder, job);
        if (r) {
            job->seeding = false;
            int e = seed(job, false);
            if (e < 0) {
                job->nworkers = 0;
                job_fail(job, e, mi_lasterr());
                return e;
            }
        } else {
            job->seed_started = true;
        }
    }
    for (unsigned i = 0; i < job->nworkers; i++) {
        int r = pthread_create(&job->threads[i], NULL, worker, job);
        if (r) {
            job->nworkers = i;
            job_cancel(job);
            return mi_seterr(r, "cannot start a worker thread: %s", strerror(r));
        }
    }
    return 0;
}

/* The workers are gone (the job finished, failed or was cancelled): the seeder, which
 * looks at those after each step, ends too. */
static void seed_end(struct job *job)
{
    if (!job->seed_started)
        return;
    pthread_join(job->seed_thread, NULL);
    job->seed_started = false;
}

/* The workers are gone: the writer writes what is queued and ends. */
static void pipe_end(struct job *job)
{
    if (!job->pipe_started)
        return;
    pthread_mutex_lock(&job->lock);
    job->pipe_stop = true;
    wake_all(job);
    pthread_mutex_unlock(&job->lock);
    pthread_join(job->pipe_thread, NULL);
    job->pipe_started = false;
}

int job_wait(struct job *job, void (*tick)(struct job *job, void *arg), void *arg)
{
    pthread_mutex_lock(&job->lock);
    uint64_t last_event = mi_now_ns(), seen = job->requests_done;
    while (!job->finished && !job->cancel_req && !job->error) {
        /* Sleep unless a request finished since the last tick (no lost wake-up). */
        if (job->requests_done == seen) {
            struct timespec ts = deadline_in(100000000ULL);
            pthread_cond_timedwait(&job->cond, &job->lock, &ts);
        }
        seen = job->requests_done;
        pthread_mutex_unlock(&job->lock);
        if (tick)
            tick(job, arg);
        uint64_t now = mi_now_ns();
        if (now - last_event >= 1000000000ULL) {
            job_event(job, "BLOCK_JOB_PROGRESS", job->c.extra, job->c.extra_ctx);
            last_event = now;
        }
        pthread_mutex_lock(&job->lock);
    }
    pthread_mutex_unlock(&job->lock);
    for (unsigned i = 0; i < job->nworkers; i++)
        pthread_join(job->threads[i], NULL);
    pipe_end(job);
    seed_end(job);
    job->end_ns = mi_now_ns();
    if (tick)
        tick(job, arg);
    if (job->error) {
        mi_seterr(-job->error, "%s", job->error_msg);
        return job->error;
    }
    if (job->cancel_req)
        return -ECANCELED;
    return 0;
}

/* ---- control ---- */

void job_pause(struct job *job)
{
    pthread_mutex_lock(&job->lock);
    job->pause_req = true;
    job_set_status(job, JOB_PAUSED);
    wake_all(job);
    pthread_mutex_unlock(&job->lock);
}

void job_resume(struct job *job)
{
    pthread_mutex_lock(&job->lock);
    job->pause_req = false;
    job->error_paused = false;
    job_set_status(job, job->status == JOB_PAUSED ? JOB_RUNNING : job->status);
    wake_all(job);
    pthread_mutex_unlock(&job->lock);
}

void job_cancel(struct job *job)
{
    pthread_mutex_lock(&job->lock);
    job->cancel_req = true;
    wake_all(job);
    pthread_mutex_unlock(&job->lock);
}

void job_fail(struct job *job, int err, const char *msg)
{
    pthread_mutex_lock(&job->lock);
    if (!job->error) {
        job->error = err < 0 ? err : -EIO;
        snprintf(job->error_msg, sizeof job->error_msg, "%s", msg);
    }
    wake_all(job);
    pthread_mutex_unlock(&job->lock);
}

void job_finish(struct job *job)
{
    pthread_mutex_lock(&job->lock);
    job->finished = true;
    wake_all(job);
    pthread_mutex_unlock(&job->lock);
}

bool job_stopping(struct job *job)
{
    pthread_mutex_lock(&job->lock);
    bool stopping = job->finished || job->cancel_req || job->error;
    pthread_mutex_unlock(&job->lock);
    return stopping;
}

bool job_idle(struct job *job)
{
    pthread_mutex_lock(&job->lock);
    bool idle = job->active == 0;
    pthread_mutex_unlock(&job->lock);
    return idle;
}

void job_kick(struct job *job)
{
    pthread_mutex_lock(&job->lock);
    wake_all(job);
    pthread_mutex_unlock(&job->lock);
}

void job_set_speed(struct job *job, uint64_t speed)
{
    pthread_mutex_lock(&job->bucket_lock);
    bucket_adjust(&job->bucket, speed, mi_now_ns());
    pthread_mutex_unlock(&job->bucket_lock);
    job_kick(job);
}

void job_query(struct job *job, struct json *j)
{
    pthread_mutex_lock(&job->lock);
    json_str_member(j, "device", job->c.device);
    json_str_member(j, "type", job->c.type);
    json_str_member(j, "status", job_status_name(job->status));
    json_u64_member(j, "len", job->len);
    json_u64_member(j, "offset", __atomic_load_n(&job->offset, __ATOMIC_RELAXED));
    json_u64_member(j, "speed", bucket_rate(&job->bucket));
    json_u64_member(j, "bytes_copied", __atomic_load_n(&job->bytes_copied, __ATOMIC_RELAXED));
    json_bool_member(j, "paused", job->pause_req || job->error_paused);
    json_bool_member(j, "busy", job->active > 0);
    json_u64_member(j, "granularity", job->chunk);
    json_u64_member(j, "threads", job->nworkers);
    pthread_mutex_unlock(&job->lock);
    if (job->c.extra)
        job->c.extra(j, job->c.extra_ctx);
}
