/* journal-writer.h: the writer's side of the journal (journal-layout.h), built into the
 * shim and used by mirror-img's unit tests to play a writer: marking dirty ranges,
 * announcing calls in flight and being held by a quiesce, the registry, pivot authority,
 * and the SIGBUS pass-through.  Nothing here allocates or takes a lock. */
#ifndef MI_JOURNAL_WRITER_H
#define MI_JOURNAL_WRITER_H

#include "journal-layout.h"

/* ------------------------------------------------------------------------------------
 * Writer side: used by the shim on its write path (inline, no allocation, no lock, no
 * system call except where said).  Also used by the unit tests to play a writer.
 */

/* Full barriers the writer gets for free on x86 (documented where used); elsewhere they
 * are explicit fences.  MIJ_FENCE_AFTER_RMW: after a seq_cst read-modify-write (a locked
 * instruction on x86, which orders every earlier store before every later load).
 * MIJ_FENCE_AFTER_WRITE: after a system call that changed a file's bytes (see mij_mark). */
#if defined(__x86_64__) || defined(__i386__)
#define MIJ_FENCE_AFTER_RMW() __asm__ __volatile__("" ::: "memory")
#define MIJ_FENCE_AFTER_WRITE() __asm__ __volatile__("" ::: "memory")
#else
#define MIJ_FENCE_AFTER_RMW() __atomic_thread_fence(__ATOMIC_SEQ_CST)
#define MIJ_FENCE_AFTER_WRITE() __atomic_thread_fence(__ATOMIC_SEQ_CST)
#endif

/* Record an untrusted reason (first pid/time per reason kept). */
void mij_untrust(struct mij *j, enum mij_reason r, int pid);

/* Mark [off, off+len) dirty.  Beyond the covered size marks the journal untrusted. */
MIJ_HOT void mij_mark(struct mij *j, uint64_t off, uint64_t len, int pid)
{
    if (!len)
        return;
    uint64_t end = off + len < off ? UINT64_MAX : off + len;
    if (end > j->covered) {
        mij_untrust(j, MIJ_U_BEYOND, pid);
        if (off >= j->covered)
            return;
        end = j->covered;
    }
    uint64_t c = off >> j->shift, last = (end - 1) >> j->shift;
    /* Test before set: a bit found set needs no locked instruction (under steady writing
     * the bits are usually set already, and a plain load keeps the cache line shared).
     * Why skipping is sound.  The follower clears a bit (a seq_cst read-modify-write,
     * mij_take) BEFORE it reads the chunk's data.  Our write's data stores precede our
     * load of the bit, with a full barrier between them: on x86 the write system call
     * itself executes locked instructions after copying the data (unlocking the page and
     * the inode), and elsewhere MIJ_FENCE_AFTER_WRITE is a fence.  If our load sees the
     * bit set, it read a value that precedes the follower's clear in the word's
     * modification order, so (store buffering with a fence on both sides) the follower's
     * later read of the data cannot miss our data: either the follower has not taken the
     * chunk yet (it will read after taking it, and see our data), or it takes it after
     * our load, which is after our data.  Only a bit found clear needs the fetch_or.  The
     * caller is the thread that made the write, after the call returned. */
    MIJ_FENCE_AFTER_WRITE();
    if (LIKELY_ONE_CHUNK(c == last)) { /* the common case: a write inside one chunk */
        uint64_t bit = 1ull << (c & 63);
        if (!(MIJ_LOAD(&j->dirty[c >> 6]) & bit))
            __atomic_fetch_or(&j->dirty[c >> 6], bit, __ATOMIC_SEQ_CST);
        return;
    }
    while (c <= last) {
        uint64_t w = c >> 6;
        unsigned b = c & 63;
        uint64_t n = last - c + 1 < 64 - b ? last - c + 1 : 64 - b;
        uint64_t mask = (n == 64 ? ~0ull : ((1ull << n) - 1)) << b;
        if ((MIJ_LOAD(&j->dirty[w]) & mask) != mask)
            __atomic_fetch_or(&j->dirty[w], mask, __ATOMIC_SEQ_CST);
        c += n;
    }
}

/* The follower's lease holds at `now`: it has not run out, and it does not reach further
 * ahead than one lease length (an expiry written under another boot's CLOCK_MONOTONIC, or
 * garbage, must not hold anybody).  Writers wait, and slow down for auto-converge, only
 * under a fresh lease. */
static inline bool mij_lease_fresh(const struct mij_header *h, uint64_t now)
{
    uint64_t exp = MIJ_LOAD(&h->lease_expiry_ns), len = MIJ_LOAD(&h->lease_ns);
    if (len == 0 || len > 3600000000000ull)
        len = 3600000000000ull; /* --lease is at most an hour */
    return now < exp && exp - now <= len + 100000000ull;
}

/* Enter a tracked call (Dekker handshake with the follower's quiesce).  Returns when no
 * quiesce holds the writer any more, or when the follower's lease ran out.  on_wake, if
 * set, runs each time a held writer wakes (the shim uses it to act on a pivot). */
int mij_w_hold(struct mij *j, struct mij_slot *s, void (*on_wake)(void));

static inline void mij_w_enter(struct mij *j, struct mij_slot *s, void (*on_wake)(void))
{
    for (;;) {
        __atomic_fetch_add(&s->inflight, 1, __ATOMIC_SEQ_CST);
        if (!MIJ_LOAD(&j->h->quiesce))
            return;
        __atomic_fetch_sub(&s->inflight, 1, __ATOMIC_SEQ_CST);
        if (mij_w_hold(j, s, on_wake)) {
            /* lease expired with the quiesce still set: go on regardless */
            __atomic_fetch_add(&s->inflight, 1, __ATOMIC_SEQ_CST);
            return;
        }
    }
}

static inline void mij_w_leave(struct mij_slot *s)
{
    __atomic_fetch_sub(&s->inflight, 1, __ATOMIC_SEQ_CST);
}

/* Enter a tracked call and claim its ring entry, with one locked instruction (the shim's
 * write path).  mark: the calling thread's in-flight marker in s (s->tmark[mark], which no
 * other thread touches), or -1 to use the slot's shared in-flight count instead (slot 0,
 * shared by processes, or a thread that found no free marker).  The marker is a nesting
 * depth, changed by plain load and store: only its thread changes it, and a signal
 * handler that writes in between undoes its own change before the thread resumes.
 * Returns the ring index (mij_w_record), counted as a started write (ring_head) BEFORE the
 * call.  Leave with mij_w_end(s, mark) after marking and recording.
 *
 * The Dekker handshake (see the top of this file): the announcement (marker or count)
 * must be visible before we read the quiesce word.  The seq_cst fetch_add on ring_head
 * between them is a full barrier on x86 (a locked instruction drains the store buffer;
 * the compiler keeps the earlier store before it, being a release, and the later load
 * after it, being an acquire); elsewhere MIJ_FENCE_AFTER_RMW adds a fence.  mij_source_
 * observe relies on the same order: a follower that sees our ring_head increment sees
 * our announcement too. */
MIJ_HOT void mij_w_in(struct mij_slot *s, int mark)
{
    if (mark >= 0)
#if defined(__x86_64__) || defined(__i386__)
        /* one instruction, not locked: a signal cannot fall between its load and store */
        __asm__ __volatile__("addb $1, %0" : "+m"(s->tmark[mark]) : : "memory");
#else
        __atomic_store_n(&s->tmark[mark], (uint8_t)(__atomic_load_n(&s->tmark[mark], __ATOMIC_RELAXED) + 1),
                         __ATOMIC_RELAXED);
#endif
    else
        __atomic_fetch_add(&s->inflight, 1, __ATOMIC_SEQ_CST);
}

MIJ_HOT void mij_w_end(struct mij_slot *s, int mark)
{
    /* release: what the call marked and recorded is visible to a follower that sees us out */
    if (mark >= 0)
#if defined(__x86_64__) || defined(__i386__)
        /* a store is a release on x86; the clobber keeps earlier accesses before it */
        __asm__ __volatile__("subb $1, %0" : "+m"(s->tmark[mark]) : : "memory");
#else
        __atomic_store_n(&s->tmark[mark], (uint8_t)(__atomic_load_n(&s->tmark[mark], __ATOMIC_RELAXED) - 1),
                         __ATOMIC_RELEASE);
#endif
    else
        __atomic_fetch_sub(&s->inflight, 1, __ATOMIC_SEQ_CST);
}

MIJ_HOT uint64_t mij_w_begin(struct mij *j, struct mij_slot *s, int mark,
                                   void (*on_wake)(void))
{
    for (;;) {
        mij_w_in(s, mark);
        uint64_t idx = __atomic_fetch_add(&j->h->ring_head, 1, __ATOMIC_SEQ_CST);
        MIJ_FENCE_AFTER_RMW();
        if (__builtin_expect(!MIJ_LOAD(&j->h->quiesce), 1))
            return idx;
        mij_w_end(s, mark);
        if (mij_w_hold(j, s, on_wake)) {
            /* lease expired with the quiesce still set: go on regardless (a fresh ring
             * entry: ring_head must move after the announcement, see mij_source_observe) */
            mij_w_in(s, mark);
            idx = __atomic_fetch_add(&j->h->ring_head, 1, __ATOMIC_SEQ_CST);
            return idx;
        }
    }
}

/* Claim a ring entry (counts the write as started: call before the write itself). */
static inline uint64_t mij_w_start(struct mij *j)
{
    return __atomic_fetch_add(&j->h->ring_head, 1, __ATOMIC_SEQ_CST);
}

/* Fill the ring entry claimed by mij_w_start and count the bytes. */
MIJ_HOT void mij_w_record(struct mij *j, struct mij_slot *s, uint64_t idx, int op,
                                int fd, uint64_t off, uint64_t len, int pid, int tid)
{
    struct mij_rec *r = &j->ring[idx % MIJ_NRING];
    /* The coarse clock (a few ns; a tick of resolution) keeps the write path cheap. */
    uint64_t now = mij_clock(CLOCK_REALTIME_COARSE);
    __atomic_store_n(&r->seq, 0, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_RELEASE);
    __atomic_store_n(&r->off, off, __ATOMIC_RELAXED);
    __atomic_store_n(&r->len, len, __ATOMIC_RELAXED);
    __atomic_store_n(&r->time_ns, now, __ATOMIC_RELAXED);
    __atomic_store_n(&r->pid, pid, __ATOMIC_RELAXED);
    __atomic_store_n(&r->tid, tid, __ATOMIC_RELAXED);
    __atomic_store_n(&r->op, (uint16_t)op, __ATOMIC_RELAXED);
    __atomic_store_n(&r->fd, fd, __ATOMIC_RELAXED);
    __atomic_store_n(&r->seq, idx + 1, __ATOMIC_RELEASE);
    /* Statistics: plain load and store, no locked instruction.  Threads of one process
     * may lose an increment now and then; a rate does not need more. */
    __atomic_store_n(&s->bytes, __atomic_load_n(&s->bytes, __ATOMIC_RELAXED) + len, __ATOMIC_RELAXED);
    __atomic_store_n(&s->writes, __atomic_load_n(&s->writes, __ATOMIC_RELAXED) + 1, __ATOMIC_RELAXED);
    __atomic_store_n(&s->last_ns, now, __ATOMIC_RELAXED);
}

/* Register the calling process in the writer registry; returns its slot (slot 0, the
 * shared overflow slot, when the registry is full).  *ack: the pivot generation the
 * descriptors it inherited are at (the exec'd-from image's or the parent's, else the
 * current one).  A previous image of this pid that died inside a write (exec with another
 * thread in a write) marks the journal untrusted (MIJ_U_WRITER_DIED). */
struct mij_slot *mij_register(struct mij *j, int pid, uint64_t *ack);

/* May the writer in slot s act on pivot generation gen?  Only on a request of the follower
 * that holds the lease: either that follower saw the pivot through (pivot_done), or the
 * request belongs to the quiesce in force now, under that follower's fresh lease, and did
 * not let this process go when a lease ran out.  A forged or stale generation moves
 * nobody. */
static inline bool mij_pivot_valid(const struct mij *j, const struct mij_slot *s, uint64_t gen)
{
    const struct mij_header *h = j->h;
    int32_t by = MIJ_LOAD(&h->pivot_pid);
    if (by <= 0)
        return false;
    if (MIJ_LOAD(&h->pivot_done) == gen)
        return true;
    uint32_t q = MIJ_LOAD(&h->quiesce_seq);
    return MIJ_LOAD(&h->quiesce) && MIJ_LOAD(&h->lease_pid) == by &&
           MIJ_LOAD(&h->pivot_qseq) == q && MIJ_LOAD(&s->lapsed_qseq) != q &&
           mij_lease_fresh(h, mij_clock(CLOCK_MONOTONIC));
}

/* A SIGBUS handler that did not own the fault: pass it to the handler it replaced (old),
 * or take the default action.  Shared by the follower's journal guard and the shim's. */
void mij_sigbus_pass(int sig, siginfo_t *si, void *uc, const struct sigaction *old);

/* Threads of the slot's owner inside a tracked call: the shared count plus the per-thread
 * markers (mij_w_begin).  seq_cst loads: the follower's side of the Dekker handshake. */
static inline unsigned mij_slot_inflight(struct mij_slot *s)
{
    unsigned n = MIJ_LOAD(&s->inflight);
    for (unsigned i = 0; i < MIJ_TMARKS; i++)
        n += MIJ_LOAD(&s->tmark[i]);
    return n;
}

#endif
