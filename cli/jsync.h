/* jsync.h: copying from the shim's journal, shared by `follow` and `copy --incremental`.
 *
 * The journal's dirty bitmap is the to-do list, always: a full pass marks the source's data
 * in it, the shim marks what writers change, and the engine's workers take chunks from it
 * (clear before read; a taken chunk sits in the copying bitmap until done).  So a process
 * killed at any moment and started again copies exactly what is still to be copied.
 */
#ifndef MI_JSYNC_H
#define MI_JSYNC_H

#include "common.h"
#include "journal.h"

#include <pthread.h>

struct control;

struct follower {
    bool following;         /* we hold the journal */
    struct mi_opts *o;
    struct mij *j;
    struct job *job;
    struct ep *src, *dst;
    int src_fd;
    bool dst_is_file;
    pthread_mutex_t mu;
    bool completing, ready, in_sync;
    bool lease_lapsed; /* the lease ran out since the quiesce began */
    bool pivot_broken; /* a pivot request went out and failed: nothing more to copy */
    bool frozen;       /* no chunk is handed to the workers (a pivot is out) */
    int foreign_pid;   /* a process writing the source without the shim (last scan) */
    uint64_t last_foreign_ns;
    uint64_t downtime_ms;
    bool pivoted;
    /* rates, sampled each second by the main loop */
    uint64_t last_sample_ns, last_bytes, last_backlog, write_rate, copy_rate, last_offset;
    unsigned growing_secs;
    uint32_t delay_us;
};

/* The engine's chunk supply backed by the journal (ctx: the follower). */
extern const struct job_supply jsync_supply;

/* Bytes still to copy (dirty and copying chunks). */
uint64_t jsync_backlog(struct follower *f);
/* Bring the job's and the target's size to the source file's (it grows and shrinks). */
int jsync_follow_size(struct follower *f);
/* Mark what a full pass must copy: the source's data, or everything (the target holds
 * old bytes that must be overwritten or zeroed). */
int jsync_mark_full_pass(struct follower *f, bool everything);
/* Renew the lease; fails (with a message) when it lapsed during a quiesce. */
int jsync_renew(struct follower *f);
/* Quiesce the writers, drain, flush the target, optionally switch the writers to the
 * target (pivot), record the source's state, release.  *downtime_ms: how long writers
 * were held.  Returns 0 or -errno with a message. */
int jsync_settle(struct follower *f, bool pivot, uint64_t *downtime_ms);
/* Scan for a process that has the source open for writing (or mapped writable) without
 * the shim: 0 when there is none, else -EIO with a message naming it (and the journal
 * untrusted: writer_without_shim, cured by a full pass once it is gone). */
int jsync_check_foreign(struct follower *f);
/* SRC still names the file the journal follows: 0, or -ESTALE with a message. */
int jsync_check_path(struct follower *f);

/* Set up from f->o: the journal (created or reused), the source, becoming the follower, the
 * target (the recorded one resumes; else -n, --force or new), and a full pass marked in
 * the journal when needed.  *full_reason is NULL when resuming, else why everything is
 * copied.  An untrusted journal fails when untrusted_fails, else forces a full pass. */
int jsync_begin(struct follower *f, bool untrusted_fails, const char **full_reason);
/* Usage checks shared by follow and copy --incremental (returns 0 or MI_EXIT_USAGE). */
int jsync_check_opts(struct mi_opts *o);
/* Close the source and the journal (stop following).  The target is the caller's. */
void jsync_end(struct follower *f);
/* Record the target (path, identity, size) in the journal: the next run resumes into it. */
void jsync_record_target(struct follower *f);
/* The common end of follow and copy --incremental: report a failure (code MI_EXIT_FAIL),
 * stop the control socket, conclude and destroy the job (job_ok), close the target (a
 * failed close turns success into MI_EXIT_FAIL) and jsync_end.  Returns the exit code. */
int jsync_close(struct follower *f, struct job *job, bool job_ok, struct control *sock, int code);

#endif
