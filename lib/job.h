/* job.h: the mirror engine.
 *
 * A job copies the dirty chunks of a source endpoint to a target endpoint with a pool of
 * workers.  `copy` seeds the dirty bitmap from the source's block status and runs until
 * nothing is dirty; `follow` plugs its own chunk supply (the journal) into the same
 * workers through struct job_supply.
 *
 * Job states (as QEMU's):
 *
 *   created --> running <--> paused          (pause/resume, or an error under stop/enospc)
 *                  |  \
 *                  |   ready  (follow: in sync at least once; keeps mirroring)
 *                  v    |
 *               pending/aborting --> concluded
 *
 * Each request: the worker takes a run of chunks (clearing them: clear before read), asks
 * the source's block status for the run, reads only the units holding data, detects zeros
 * in what it read, writes data units and zeroes zero units (or skips them when the target
 * already reads as zeros).  On an error the policy decides: report (stop the job), ignore
 * (retry the run later with backoff, a bounded number of passes), stop / enospc (pause
 * with BLOCK_JOB_ERROR until resume).
 */
#ifndef MI_JOB_H
#define MI_JOB_H

#include "bitmap.h"
#include "bucket.h"
#include "endpoint.h"
#include "offload.h"
#include "json.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

enum job_status {
    JOB_CREATED, JOB_RUNNING, JOB_PAUSED, JOB_READY, JOB_STANDBY, JOB_WAITING,
    JOB_PENDING, JOB_ABORTING, JOB_CONCLUDED,
};
const char *job_status_name(int status);

enum job_policy { POLICY_REPORT, POLICY_IGNORE, POLICY_ENOSPC, POLICY_STOP };
/* Parse a policy name; -1 when unknown. */
int job_policy_parse(const char *s);
const char *job_policy_name(int p);

struct job;

/* Where chunks come from.  The default (NULL) is the job's own bitmap, seeded from the
 * source's block status. */
struct job_supply {
    void *ctx;
    /* Take up to max dirty chunks in a run at or after *cursor (wrapping is the caller's
     * business); returns the count and sets *first; 0 when nothing is dirty now. */
    uint64_t (*take)(void *ctx, uint64_t cursor, uint64_t max, uint64_t *first);
    /* A taken run was copied (ok) or must be copied again (!ok). */
    void (*done)(void *ctx, uint64_t first, uint64_t n, bool ok);
    /* Nothing dirty and no worker busy: return true to finish the job, false to wait for
     * more (follow).  Called with the job lock held. */
    bool (*idle)(void *ctx, struct job *job);
};

struct job_config {
    struct ep *src, *dst;
    const char *device;       /* the job's id in events */
    const char *type;         /* "copy" or "mirror" */
    uint64_t granularity;     /* chunk size; raised to the target's alignment */
    uint64_t buf_size;        /* memory for buffers, split across workers */
    unsigned threads;
    uint64_t speed;           /* bytes/s, 0 = unlimited */
    int on_source_error, on_target_error;
    bool sync_top;            /* copy only what the source's top layer allocates */
    bool target_is_zero;      /* the target reads as zeros already */
    bool zero_always;         /* write zero ranges even to a target that reads as zeros
                               * now (follow: writers punch holes later) */
    bool no_seed;             /* don't seed from block status (the supply decides) */
    bool offload;             /* data ranges the file system can share are cloned
                               * (FICLONERANGE; copy_file_range for unaligned tails and
                               * on NFS/SMB) instead of read and written */
    bool seed_async;          /* seed in a thread of its own while the copy starts (a
                               * target created for the job: nothing of the user's is
                               * written before an error in the source's map shows) */
    unsigned max_passes;      /* ignore policy: passes over failing chunks (0 = 5) */
    const struct job_supply *supply;
    /* Optional: what each request read, [off, off+len) of the source as a guest reads it
     * (zero ranges filled with zeros), before it is written (copy --checksum).  Called from
     * the workers at once; a request read again after an error is seen again. */
    void (*on_read)(void *ctx, uint64_t off, uint64_t len, const void *buf);
    void *read_ctx;
    /* Optional: instead of the source's block status, seed_from marks what to copy with
     * job_mark (copy --bitmap: the dirty ranges of a bitmap).  0 or -errno. */
    int (*seed_from)(void *ctx, struct job *job);
    void *seed_ctx;
    /* Optional: more members for status answers and progress events (follow's backlog). */
    void (*extra)(struct json *j, void *ctx);
    void *extra_ctx;
};

struct job_req;

struct job {
    struct job_config c;
    uint64_t size;          /* bytes mirrored */
    uint64_t chunk;         /* chunk size in bytes */
    uint64_t nchunks;
    uint32_t unit;          /* zero-detection and alignment unit */
    uint64_t req_max;       /* bytes per request */
    bool need_zero_write;   /* zero units must be written (target not known zero) */
    bool need_back;         /* --sync=top into an existing qcow2 with a backing file: what
                             * the source's top leaves unallocated is unallocated on the
                             * target too (EP_ZERO_BACKING), so stale data there goes */
    unsigned nworkers;

    pthread_mutex_t lock;
    pthread_cond_t cond;
    struct bitmap dirty;    /* default supply */
    struct bitmap failed;   /* ignore policy: runs to retry on the next pass */
    uint64_t cursor;
    /* Seeding in its own thread (seed_async): chunks below `seeded` are final in the
     * bitmap; the workers take none above it while `seeding`.  Under lock. */
    bool seeding, seed_started;
    bool top_fill;          /* sync_top: unallocated units are read through the chain and
                             * written too (the target may hold an older allocation) */
    uint64_t seeded;
    pthread_t seed_thread;
    int status;
    bool pause_req, cancel_req, error_paused, finished;
    int error;              /* first fatal error (-errno) */
    char error_msg[1024];
    char ignored_msg[512];  /* the last error the ignore policy let pass */
    unsigned error_pauses;  /* pauses on an error (stop, enospc): the CLI says so */
    bool pause_on_target;   /* the last of them: a target error (else a source one) */
    char pause_msg[1024];   /* ... and its message */
    bool backoff;           /* a worker should pause before retrying (ignore + supply) */
    unsigned active;        /* workers inside a request */
    unsigned waiters;       /* threads waiting on cond (for work, a buffer or a resume) */
    /* The write pipe, for a target that takes one writer at a time (EP_CAP_ONE_WRITER) in
     * a plain copy: the workers read, one more thread writes, so the target never waits
     * for a worker to wake up.  Under lock. */
    bool pipe;
    bool pipe_stop;                     /* the workers are gone: write what is queued, end */
    struct job_req *pipe_head, *pipe_tail; /* read, to write (in order) */
    struct job_req *pipe_free;          /* buffers for the workers */
    struct job_req *pipe_reqs;          /* all of them */
    unsigned pipe_nreqs;
    pthread_cond_t pipe_cond;           /* the writer waits for a request */
    pthread_cond_t buf_cond;            /* workers wait for a buffer */
    pthread_t pipe_thread;
    bool pipe_started;
    uint64_t requests_done; /* wakes job_wait's ticks */
    unsigned pass;

    struct bucket bucket;
    pthread_mutex_t bucket_lock;

    uint64_t len;           /* progress: total work in bytes */
    uint64_t offset;        /* progress: work done */
    uint64_t bytes_copied;  /* bytes written to the target (data, not zeroes) */
    uint64_t bytes_zeroed;
    uint64_t bytes_read;    /* data bytes read from the source */
    struct offload off;       /* copy offload (offload.h): bytes cloned, copied by the kernel */
    uint64_t start_ns, end_ns;
    pthread_t *threads;
};

/* Validate the config, pick the chunk size and seed the dirty bitmap.  Returns 0 or -errno
 * with a message. */
int job_init(struct job *job, const struct job_config *c);
/* Start the workers (status running). */
int job_start(struct job *job);
/* Wait until the job finishes, printing progress (-p) every 100 ms via the callback;
 * returns 0 (complete), -ECANCELED, or the first error. */
int job_wait(struct job *job, void (*tick)(struct job *job, void *arg), void *arg);
/* Free the job (status concluded, with its event, once it had started or failed). */
void job_destroy(struct job *job);
/* The end of a run, from job_wait's result or a later step's: 0 makes the job pending and
 * emits BLOCK_JOB_COMPLETED with fn's members; -ECANCELED aborting and
 * BLOCK_JOB_CANCELLED; any other error aborting. */
void job_conclude(struct job *job, int r, void (*fn)(struct json *j, void *arg), void *arg);

/* Control, from any thread. */
void job_pause(struct job *job);
void job_resume(struct job *job);
void job_cancel(struct job *job);
void job_set_speed(struct job *job, uint64_t speed);
/* Members of a query-block-jobs-like answer (device, len, offset, speed, status...). */
void job_query(struct job *job, struct json *j);
/* Fail the job with err and msg (the first failure wins); workers stop. */
void job_fail(struct job *job, int err, const char *msg);
/* End the job successfully: workers stop after their current request (follow's complete). */
void job_finish(struct job *job);
/* The job is ending: finished, cancelled or failed. */
bool job_stopping(struct job *job);
/* No worker is inside a request. */
bool job_idle(struct job *job);
/* Wake the workers (the supply has new dirty chunks). */
void job_kick(struct job *job);
/* Set the status and emit JOB_STATUS_CHANGE (lock held or not: takes care of itself). */
void job_set_status(struct job *job, int status);
/* From seed_from: [off, off+len) is to be copied. */
void job_mark(struct job *job, uint64_t off, uint64_t len);
/* The source's size changed (follow): requests are cut at it.  Lock held or not. */
void job_set_size(struct job *job, uint64_t size);
static inline uint64_t job_size(struct job *job) { return __atomic_load_n(&job->size, __ATOMIC_RELAXED); }
/* Progress: `remaining` bytes are still to copy (len = offset + remaining). */
void job_set_remaining(struct job *job, uint64_t remaining);
/* In sync for the first time (follow): status ready and BLOCK_JOB_READY with fn's members. */
void job_set_ready(struct job *job, void (*fn)(struct json *j, void *arg), void *arg);
/* sync_top from now on copies what the chain reads in the top's unallocated ranges too
 * (follow: a range that became unallocated must not keep the target's old data). */
void job_set_top_fill(struct job *job);
/* The job's pauses on an error so far (stop, enospc policies); the last one's side and
 * message go to *on_target and msg. */
unsigned job_error_pauses(struct job *job, bool *on_target, char *msg, size_t size);
/* Mark [off, off+len) of the default bitmap dirty (bytes). */
void job_mark_dirty(struct job *job, uint64_t off, uint64_t len);

/* Emit an event with the job's device/len/offset/speed plus extra members built by fn. */
void job_event(struct job *job, const char *name, void (*fn)(struct json *j, void *arg), void *arg);

#endif
