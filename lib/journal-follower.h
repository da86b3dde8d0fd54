/* journal-follower.h: the follower's side of the journal (mirror-img only). */
#ifndef MI_JOURNAL_FOLLOWER_H
#define MI_JOURNAL_FOLLOWER_H

#include "journal-writer.h"
#include "proc.h"

/* ------------------------------------------------------------------------------------
 * Follower side (mirror-img only).  Every function that can fail returns 0 (or a count)
 * or -errno with a message "J: ..." left by mi_seterr().
 *
 * How `follow` is meant to use it:
 *
 *   mij_create(J, SRC, &opts, &j, NULL)        create, or reuse one naming SRC
 *   mij_follow(j, lease_ns)                    exclusive; copying chunks become dirty again
 *   mij_untrusted(j) & ~MIJ_U_TRANSIENT        a writer uses io_uring/AIO/stdio...: say so
 *                                              (by name, mij_reasons_str) and do not claim
 *                                              to be in sync
 *   mij_source_check(j, srcfd) != MIJ_SRC_OK,  full pass: mij_untrusted_clear(j,
 *   or transient reasons set, or a new target    MIJ_U_TRANSIENT), mij_source_forget(j), then
 *                                              copy everything (the journal keeps marking)
 *   loop:
 *     mij_lease_renew(j)                       at least every lease/2
 *     n = mij_take(j, from, max, &first)       then read [first*g, (first+n)*g), clipped to
 *                                              the source's current size, and write it
 *     mij_done(j, first, n)                    or mij_redirty() when the copy failed
 *     backlog 0: mij_source_observe(j, srcfd)  (and BLOCK_JOB_READY the first time)
 *     write rate: mij_counters() sampled twice; too fast: mij_set_delay(j, us)
 *     now and then: mij_check_alive(j); mij_writers() (nobody registered: is the shim
 *     loaded?); apply the source's size to the target (ftruncate/fallocate mark dirty
 *     ranges, but shrinking is the follower's to mirror)
 *   complete:
 *     mij_quiesce_begin(j, timeout, &qi)        writers held, none in a write
 *     drain with mij_take/mij_done until mij_backlog() is 0; flush the target
 *     --pivot: mij_pivot_request(j, DST); mij_pivot_wait(j, timeout, &pi)
 *     mij_source_observe(j, srcfd); mij_target_set(j, DST, &dst_stat)
 *     mij_quiesce_end(j)                        downtime = now - quiesce start
 *   mij_close(j)                               (unfollows)
 */

struct mij_create_opts {
    uint64_t granularity; /* 0: MIJ_DEFAULT_GRANULARITY; a power of two, 512 B..1 GiB */
    uint64_t max_size;    /* covered size; 0: max(4 x source size, 64 GiB) */
    bool granularity_set; /* reuse refuses a journal with another granularity */
};

/* Create the journal JPATH for the source SRC (mode 0600, atomically: a half-written
 * journal is never visible), or open and reuse it when it already names SRC.  Refuses a
 * journal that names another source, or that is not a valid journal.  *created tells
 * which happened (may be NULL). */
int mij_create(const char *jpath, const char *src, const struct mij_create_opts *o,
               struct mij **out, bool *created);

#define MIJ_RDONLY 1u
/* Open and validate an existing journal (magic, byte order, version, every size and offset
 * against the file's size).  flags: MIJ_RDONLY maps it read-only (status, dump). */
int mij_open(const char *jpath, unsigned flags, struct mij **out);
void mij_close(struct mij *j);

/* 0 when the journal names the file st describes; else -ESTALE with a message naming
 * both ("J: journal is for SRC (device D, inode I), not PATH"). */
int mij_check_source(struct mij *j, const struct stat *st, const char *path);

/* The journal file is still whole (fstat; cheap): call it in a follower's loop.  A
 * journal truncated under a follower is not recoverable: stop following. */
int mij_check_alive(struct mij *j);

/* --- becoming the follower ------------------------------------------------------------ */

/* Become THE follower: exclusive flock on the journal ("J: another follower (pid N) is
 * using this journal" with -EBUSY otherwise), record our pid, move copying chunks back to
 * dirty (a previous follower died mid-copy), and take the lease (lease_ns, e.g. 2 s). */
int mij_follow(struct mij *j, uint64_t lease_ns);
/* Stop following: end any quiesce, drop the lease, release the lock. */
void mij_unfollow(struct mij *j);
/* Renew the lease (call at least every lease/2).  Returns 0, or -ETIME when the previous
 * lease had already run out: writers may have gone through a quiesce held since then. */
int mij_lease_renew(struct mij *j);
/* Who follows (pid, 0 if nobody) and how long its lease still runs (ns, 0 if expired). */
int mij_follower(struct mij *j, uint64_t *lease_left_ns);

/* --- dirty chunks ------------------------------------------------------------------- */


/* Take a run of dirty chunks: find the first dirty chunk at or after `from`, and move it
 * and up to max-1 dirty chunks that follow it from dirty to copying (copying bit set
 * first, so a crash never forgets it).  Returns the run's length (0: nothing dirty at or
 * after from) and its first chunk in *first.  Read the data only AFTER this returns. */
uint64_t mij_take(struct mij *j, uint64_t from, uint64_t max, uint64_t *first);
/* The chunks [first, first+n) are copied: clear their copying bits. */
void mij_done(struct mij *j, uint64_t first, uint64_t n);
/* Copying [first, first+n) failed: make them dirty again (then clear copying). */
void mij_redirty(struct mij *j, uint64_t first, uint64_t n);
/* Copying -> dirty for every chunk (done by mij_follow). */
void mij_recover(struct mij *j);
/* Mark a byte range dirty as a follower (a full pass, mappings at quiesce). */
void mij_mark_range(struct mij *j, uint64_t off, uint64_t len);
/* Dirty and copying chunk counts (the backlog is their sum). */
uint64_t mij_backlog(struct mij *j, uint64_t *copying);
/* Next run of set bits in the dirty (copying = false) or copying bitmap at or after from:
 * returns its length (0 if none) and first chunk. */
uint64_t mij_next_run(struct mij *j, bool copying, uint64_t from, uint64_t *first);

/* --- quiesce, pivot, auto-converge ---------------------------------------------------- */

struct mij_quiesce_info {
    unsigned writers;  /* live writer processes */
    unsigned maps;     /* writable shared mappings (their ranges were marked dirty; they can
                        * still change during the quiesce: the copy is not guaranteed) */
    unsigned died;     /* writers found dead inside a write (journal marked untrusted) */
    unsigned marked;   /* mappings marked, of live writers and of writers that exited
                        * (their stores change the file's times without a call) */
    uint64_t waited_ns;
};
/* Hold the writers: renew the lease, set the quiesce word, wait until no live writer is
 * inside a tracked call (dead ones are ignored), then mark writable shared mappings dirty.
 * -ETIMEDOUT (quiesce lifted again) after timeout_ns with writers still busy. */
int mij_quiesce_begin(struct mij *j, uint64_t timeout_ns, struct mij_quiesce_info *qi);
/* Release the writers. */
void mij_quiesce_end(struct mij *j);

/* Ask every writer to switch its descriptors to TARGET (a local file identical to the
 * source; made absolute here).  Refused (-EBUSY, naming the pid) when a writer has a
 * writable shared mapping of the source.  Call while quiesced, after the drain.  Writers
 * held by the quiesce switch at once; idle ones at their next call on the source. */
int mij_pivot_request(struct mij *j, const char *target);
struct mij_pivot_info {
    unsigned switched; /* acknowledged this generation */
    unsigned idle;     /* idle: will switch at their next call */
    unsigned failed;   /* acknowledged with an error (see first_err_pid/first_err) */
    int first_err_pid, first_err;
};
/* Wait until every live writer with descriptors on the source switched or is idle.
 * -ETIMEDOUT when some are still busy after timeout_ns; failed ones are reported, not an
 * error (they go on writing the source, and the journal is marked untrusted). */
int mij_pivot_wait(struct mij *j, uint64_t timeout_ns, struct mij_pivot_info *pi);
/* The pivot is through (every writer switched, the target flushed): writers that were idle
 * may switch at their next call.  -ETIME when the lease ran out at any moment of this
 * quiesce (writers may have written the source unheld): then nobody idle switches. */
int mij_pivot_finish(struct mij *j);
/* The lease ran out at some moment since this quiesce began. */
bool mij_lease_lapsed(const struct mij *j);

/* Auto-converge: writers sleep this long before each write (0 = off). */
void mij_set_delay(struct mij *j, uint32_t us);
uint32_t mij_get_delay(struct mij *j);

/* --- writers, counters, untrusted ----------------------------------------------------- */

struct mij_writer {
    int pid;           /* -1: processes sharing the overflow slot */
    bool alive;
    unsigned inflight, waiting, tracked, nmaps;
    uint64_t bytes, writes; /* since it registered */
    uint64_t reg_ns, last_ns;
    uint64_t pivot_ack;
    int pivot_err;
};
/* Registered writers (live ones first, dead ones with alive = false); returns the count
 * written to w (at most max). */
int mij_writers(struct mij *j, struct mij_writer *w, int max);
/* Bytes and calls written through the shim since the journal was created (for a write
 * rate: sample twice). */
void mij_counters(struct mij *j, uint64_t *bytes, uint64_t *writes);

uint64_t mij_untrusted(struct mij *j);
/* Clear reasons (before a full pass: a reason set again during it is seen next time). */
void mij_untrusted_clear(struct mij *j, uint64_t mask);
const char *mij_reason_name(unsigned r);   /* "io_submit" */
const char *mij_reason_text(unsigned r);   /* "Linux AIO (io_submit) was used" */
/* Names of the bits in mask, comma-separated, into buf. */
const char *mij_reasons_str(uint64_t mask, char *buf, size_t size);
const char *mij_op_name(unsigned op);

/* --- the source behind the shim's back ---------------------------------------------- */

/* A process that can write the source behind the shim: it holds the source open for
 * writing, or mapped writable and shared, and is not a live registered writer (nor this
 * process).  Returns its pid (and its command name in comm), 0 when there is none, or
 * -errno when /proc cannot be read.  A scan of every process's descriptors: call it now
 * and then, not per chunk.  Processes of other users whose /proc entries we may not
 * read are skipped. */
int mij_foreign_writer(struct mij *j, int src_fd, char *comm, size_t commsize);

enum { MIJ_SRC_OK = 0, MIJ_SRC_UNKNOWN = 1, MIJ_SRC_CHANGED = 2 };
/* Compare the source (fd) with the journal's record: MIJ_SRC_OK (only shim writes, or
 * nothing, since the record), MIJ_SRC_UNKNOWN (never recorded: a full pass is needed),
 * MIJ_SRC_CHANGED (size or ctime moved with no shim write: a full pass is needed; also
 * marks the journal untrusted MIJ_U_BYPASS), or -errno (not the source). */
int mij_source_check(struct mij *j, int src_fd);
/* Record (size, ctime, ring head) after a drain.  Returns 1 when recorded, 0 when a shim
 * write was in flight (try again after the next drain). */
int mij_source_observe(struct mij *j, int src_fd);
/* Forget the record (after a full pass is started, or by `journal reset`). */
void mij_source_forget(struct mij *j);

/* --- the recorded target (incremental replication) ----------------------------------- */

/* What a recorded target holds (target_valid's value): the source file, or the disk a
 * qcow2 source holds (follow's disk mode).  Journals before disk mode record 1. */
enum { MIJ_TARGET_FILE = 1, MIJ_TARGET_DISK = 2 };
struct mij_target {
    bool valid;
    unsigned kind; /* MIJ_TARGET_FILE or MIJ_TARGET_DISK */
    char path[MIJ_PATH_MAX];
    uint64_t dev, ino, size, sync_gen, synced_ns;
};
void mij_target_get(struct mij *j, struct mij_target *t);
/* Record a successful sync to the target at path (st: its stat after the sync); bumps and
 * returns the sync generation. */
uint64_t mij_target_set(struct mij *j, const char *path, const struct stat *st);
/* The same, saying what the target holds (MIJ_TARGET_FILE or MIJ_TARGET_DISK). */
uint64_t mij_target_set_kind(struct mij *j, const char *path, const struct stat *st, unsigned kind);
void mij_target_forget(struct mij *j);

/* --- observation ---------------------------------------------------------------------- */

/* Copy the complete ring records, oldest first; returns how many (at most max). */
int mij_ring_read(struct mij *j, struct mij_rec *out, int max);

/* Clear dirty, copying, untrusted, the source record and the target record.  Refused
 * while a follower holds the journal. */
int mij_reset(struct mij *j);

/* Source path recorded at creation. */
static inline const char *mij_source_path(const struct mij *j)
{
    return (const char *)j->base + MIJ_OFF_SRC_PATH;
}
#endif
