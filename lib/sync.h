/* sync.h: the journal-driven sync engine, for `follow` (the live mirror) and
 * `copy --incremental`.
 *
 * The journal's dirty bitmap is the to-do list, always: a full pass marks the source's data
 * in it, the shim marks what writers change, and the job's workers take chunks from it
 * (clear before read; a taken chunk sits in the copying bitmap until done).  So a process
 * killed at any moment and started again copies exactly what is still to be copied.
 *
 *   sync_open:  journal (created or reused) -> source -> lease (we follow) -> target (the
 *               recorded one resumes; else -n, --force or new) -> full pass marked when
 *               needed -> source state and target recorded -> job
 *   sync_run:   the job's workers copy; each 100 ms the engine checks the writers (alive,
 *               SRC still the file, size, untrusted reasons, writes behind the shim, a
 *               writer without the shim), follows the size, samples rates, slows writers
 *               (auto-converge) and says READY once in sync.  follow runs until
 *               sync_complete; an incremental copy settles as soon as it caught up.
 *   settle:     quiesce the writers -> drain -> flush -> [pivot] -> record -> release.
 *
 * The engine never prints: notices go to config.notice, failures to mi_seterr, state to
 * events (BLOCK_JOB_READY, BLOCK_JOB_COMPLETED with downtime_ms and pivot).
 */
#ifndef MI_SYNC_H
#define MI_SYNC_H

#include "job.h"
#include "json.h"

#include <stdbool.h>
#include <stdint.h>

struct sync_config {
    const char *journal;  /* the journal's path */
    const char *src;      /* the source file the shim journals */
    const char *dst;      /* the target: a file or an NBD URI */
    const char *dst_fmt;  /* -O: NULL, or "raw" (disk mode of a qcow2 source), or the
                           * source's own format */
    bool live;            /* follow: mirrors until sync_complete; else (copy --incremental)
                           * settles and ends once caught up */
    bool existing, force; /* -n (write into an existing target), --force (replace it) */
    bool sync_top;        /* disk mode: a new qcow2 overlay of the source's top layer,
                           * naming its backing file (a source without one: file mode) */
    uint64_t granularity; /* a new journal's chunk size (0: the journal's default) */
    uint64_t lease_ms;    /* how long writers wait for a follower that stopped answering */
    bool auto_converge;   /* slow writers down while they dirty faster than we copy */
    /* the job */
    uint64_t buf_size, speed;
    unsigned threads;
    int on_source_error, on_target_error;
    /* Optional: a line worth telling the user (a full pass started and why, a writer found
     * without the shim).  Called from the engine's threads, one at a time. */
    void (*notice)(void *ctx, const char *msg);
    void *ctx;
};

struct sync;

/* Set up as above.  A journal untrusted for a reason a full pass cannot cure (a writer
 * keeps writing behind its back) is refused; the other reasons make a full pass.  Returns 0 or -errno with a message; *out is set in both cases (give it
 * to sync_close). */
int sync_open(const struct sync_config *c, struct sync **out);
/* The job (for the control socket and progress); NULL before sync_open made it. */
struct job *sync_job(struct sync *s);
/* Why everything is copied (NULL when resuming, "new target" for a new one). */
const char *sync_full_reason(const struct sync *s);

/* Run the job until it ends: complete (live), caught up and settled (incremental), cancel
 * (-ECANCELED) or an error (-errno with a message).  tick, if set, runs every 100 ms
 * before the engine's own checks (signals, progress, the CLI's pause notices). */
int sync_run(struct sync *s, void (*tick)(struct job *job, void *arg), void *arg);

/* complete (follow): quiesce the writers, drain, flush, [pivot them to the target],
 * release; the job then finishes.  Returns 0, or -1 with the reason in desc. */
int sync_complete(struct sync *s, bool pivot, char *desc, size_t dsize);

/* The control socket's extra commands (jobctl's extra hook; ctx: the sync): job-complete
 * and complete [pivot=true]. */
int sync_control(void *ctx, const struct json_request *req, struct json *ret,
                 const char **err_class, char *desc, size_t dsize);

/* copy --incremental --verify: read both back; chunks the writers changed since are
 * dirty again and skipped, any other difference fails. */
int sync_verify(struct sync *s);

/* After sync_run returned r (0, or a failure of a later step): the job's last state and
 * event (BLOCK_JOB_COMPLETED with the engine's members); an incremental copy that ended
 * well records the target for the next run. */
void sync_conclude(struct sync *s, int r);

struct sync_result {
    uint64_t bytes_copied, duration_ms, downtime_ms;
    bool pivoted;
};
void sync_result(struct sync *s, struct sync_result *res);

/* Stop following, close the target (an error there is returned with a message), free.
 * NULL-safe. */
int sync_close(struct sync *s);

#endif
