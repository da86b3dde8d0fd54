/* journal.h: the write journal shared by the shim (in every writer process) and mirror-img.
 *
 * The journal is one file, mapped MAP_SHARED by everybody, in native byte order (it never
 * leaves the machine).  Nothing in it is ever moved or resized after creation: every
 * offset below is fixed when the file is created, so a writer that mapped it once can use
 * it without a system call.
 *
 *   offset
 *   0        +--------------------------------------------------------------+
 *            | header (struct mij_header, 4 KiB)                            |
 *            |   identity: magic "MIRRIMGJ", byte-order mark, version,      |
 *            |     sizes and offsets, granularity, chunk count, covered size|
 *            |   source: st_dev, st_ino (st_rdev for a block device),       |
 *            |     size at creation                                         |
 *            |   control line (read by every write): quiesce word (futex),  |
 *            |     auto-converge delay, pivot generation, follower lease    |
 *            |   untrusted reasons (bitmask) + first pid/time per reason    |
 *            |   ring head (count of writes ever started)                   |
 *            |   follower's record of the source (size, ctime, ring head)   |
 *            |   follower identity, recorded target (incremental sync)      |
 *   4096     +--------------------------------------------------------------+
 *            | source path (NUL-terminated, 4 KiB)        for messages      |
 *   8192     | pivot target path (4 KiB)                  set by a pivot    |
 *   12288    | recorded target path (4 KiB)               last synced target|
 *   16384    +--------------------------------------------------------------+
 *            | writer registry: 256 slots x 256 bytes (struct mij_slot)     |
 *            |   slot 0 is shared by processes that found no free slot      |
 *   81920    +--------------------------------------------------------------+
 *            | ring of recent write records: 1024 x 64 bytes (mij_rec)      |
 *   147456   +--------------------------------------------------------------+ header_size
 *            | dirty bitmap: one bit per chunk, u64 words, bit i of word w  |
 *            |   = chunk 64*w + i; rounded up to 4 KiB                      |
 *            +--------------------------------------------------------------+
 *            | copying bitmap: same shape: chunks a follower took from the  |
 *            |   dirty bitmap and has not finished copying                  |
 *            +--------------------------------------------------------------+ file_size
 *
 * The bitmaps cover [0, covered): covered is fixed at creation (default max(4 x the source's
 * size, 64 GiB), rounded up to the granularity).  A write beyond it cannot be recorded and
 * marks the journal untrusted (MIJ_U_BEYOND): the follower must then do full passes.
 *
 * Protocols (why no write is ever missed):
 *  - Writers set dirty bits AFTER their call returned; a follower moves a chunk from dirty
 *    to copying BEFORE it reads it (mij_take).  A write that lands after the take sets the
 *    dirty bit again.  A follower killed during a copy leaves the chunk in copying, and
 *    the next follower moves copying back to dirty (mij_follow).
 *  - Quiesce is a Dekker handshake: a writer announces itself in its slot (its thread's
 *    in-flight marker, or the slot's in-flight count), then reads the quiesce word; the
 *    follower sets the quiesce word, then waits until every live slot's count and markers
 *    read zero (seq_cst).  A full barrier separates the writer's announcement from its
 *    read: the locked increment of ring_head that claims its ring entry (mij_w_begin).
 *    Either the writer sees the quiesce (and backs out to wait) or the follower sees the
 *    writer (and waits for it).  A marker belongs to one thread, so the writer sets and
 *    clears it with plain stores: the shim's write path costs one locked instruction.
 *    Writers wait only while the follower's lease (CLOCK_MONOTONIC expiry) is in the
 *    future, so a dead or stopped follower holds them at most one lease.
 *  - Writes that bypass the shim: the follower records the source's (size, ctime) together
 *    with ring_head (which every shim write increments before its call) at an instant
 *    when no shim write is in flight (mij_source_observe).  Later, a (size, ctime) that
 *    differs while ring_head has not moved means somebody changed the file behind the
 *    shim (mij_source_check says MIJ_SRC_CHANGED: do a full pass).  When shim writes did
 *    happen in between, a bypassing write in the same interval cannot be told apart:
 *    detection is "where possible", as DESIGN.md says.  chmod/chown also change ctime and
 *    so cost a full pass; ctime resolution is the file system's.
 */
#ifndef MI_JOURNAL_H
#define MI_JOURNAL_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>

#define MIJ_MAGIC "MIRRIMGJ" /* 8 bytes, not NUL-terminated in the file */
#define MIJ_BOM 0x01020304u  /* reads differently on a machine of the other byte order */
#define MIJ_VERSION 2u /* 2: per-thread in-flight markers in the slots */

#define MIJ_PATH_MAX 4096
#define MIJ_NSLOTS 256     /* writer registry; slot 0 is the shared overflow slot */
#define MIJ_SLOT_MAPS 8    /* writable shared mappings described per slot */
#define MIJ_NRING 1024     /* write records kept for `journal dump` */
#define MIJ_TMARKS 32      /* per-thread in-flight markers per slot */

#define MIJ_OFF_SRC_PATH 4096u
#define MIJ_OFF_PIVOT_PATH 8192u
#define MIJ_OFF_TARGET_PATH 12288u
#define MIJ_OFF_SLOTS 16384u
#define MIJ_OFF_RING (MIJ_OFF_SLOTS + MIJ_NSLOTS * 256u)
#define MIJ_HEADER_SIZE (MIJ_OFF_RING + MIJ_NRING * 64u) /* 147456 */

#define MIJ_DEFAULT_GRANULARITY (64u * 1024)
#define MIJ_MIN_GRANULARITY 512u
#define MIJ_MAX_GRANULARITY (1u << 30)
#define MIJ_MIN_COVERED (64ull << 30) /* default covered size is at least 64 GiB */
#define MIJ_MAX_CHUNKS (1ull << 34)   /* 2 GiB per bitmap: refuse anything larger */

/* Untrusted reasons: what the shim saw and could not follow (bit numbers). */
enum mij_reason {
    MIJ_U_IO_URING_SETUP = 0, /* a ring set up outside liburing (raw syscall): unobservable */
    MIJ_U_IO_URING_WRITE,     /* a liburing ring submitted a write/open that may reach the source */
    MIJ_U_IO_SUBMIT,          /* Linux AIO (io_submit, libaio) */
    MIJ_U_POSIX_AIO,          /* aio_write / lio_listio on the source */
    MIJ_U_BEYOND,             /* a write beyond the journal's covered size */
    MIJ_U_FD_TABLE,           /* the source on a descriptor number beyond the shim's table */
    MIJ_U_STDIO,              /* a stdio stream open for writing on the source */
    MIJ_U_RAW_SYSCALL,        /* a write-family syscall() on the source */
    MIJ_U_WRITER_DIED,        /* a writer died during a write (its range is unknown) */
    MIJ_U_BYPASS,             /* the source changed behind the shim (size/ctime) */
    MIJ_U_PIVOT_FAILED,       /* a writer could not switch to the pivot target */
    MIJ_U_MMAP_TABLE,         /* too many shared mappings of the source to track */
    MIJ_U_EXEC,               /* a program run without the shim inherited the source */
    MIJ_U_FOREIGN,            /* a process not under the shim can write the source */
    MIJ_U_NREASONS
};
#define MIJ_U_BIT(r) (1ull << (r))
/* Reasons a full pass cures: a follower may clear them (mij_untrusted_clear) just before it
 * starts one.  The others describe how a writer keeps working (io_uring, AIO, stdio...):
 * they stay until `journal reset`, and every pass must be a full one meanwhile. */
#define MIJ_U_TRANSIENT                                                                      \
    (MIJ_U_BIT(MIJ_U_WRITER_DIED) | MIJ_U_BIT(MIJ_U_BYPASS) | MIJ_U_BIT(MIJ_U_RAW_SYSCALL) |  \
     MIJ_U_BIT(MIJ_U_FOREIGN))

/* Operations in write records. */
enum mij_op {
    MIJ_OP_NONE = 0,
    MIJ_OP_WRITE, MIJ_OP_PWRITE, MIJ_OP_WRITEV, MIJ_OP_PWRITEV, MIJ_OP_PWRITEV2,
    MIJ_OP_FTRUNCATE, MIJ_OP_TRUNCATE, MIJ_OP_FALLOCATE, MIJ_OP_POSIX_FALLOCATE,
    MIJ_OP_COPY_FILE_RANGE, MIJ_OP_SENDFILE, MIJ_OP_SPLICE,
    MIJ_OP_MMAP, MIJ_OP_MSYNC, MIJ_OP_MUNMAP, MIJ_OP_MPROTECT, MIJ_OP_MREMAP,
    MIJ_OP_UNTRUSTED, /* off = reason number, len = 0 */
    MIJ_OP_PIVOT,     /* a writer switched its descriptors (off = generation) */
    MIJ_OP_NOPS
};

/* The 4 KiB header.  Fields are only touched with __atomic builtins once the file is
 * shared; "set at creation" fields never change afterwards. */
struct mij_header {
    /* 0: identity (set at creation) */
    char magic[8];
    uint32_t bom;
    uint32_t version;
    uint64_t header_size;  /* offset of the dirty bitmap */
    uint64_t file_size;    /* the journal file's size */
    uint64_t granularity;  /* bytes per chunk, a power of two */
    uint64_t nchunks;
    uint64_t covered;      /* nchunks * granularity */
    uint64_t bitmap_bytes; /* size of each bitmap (multiple of 4096) */
    uint64_t dirty_off;
    uint64_t copying_off;
    uint64_t slots_off;
    uint32_t nslots, slot_size;
    uint64_t ring_off;
    uint32_t nring, rec_size;
    uint64_t paths_off;    /* source path; pivot and target paths follow, 4 KiB each */
    uint64_t created_ns;   /* CLOCK_REALTIME */
    /* 128: the source (set at creation) */
    uint64_t src_dev, src_ino, src_rdev;
    uint32_t src_type;     /* S_IFREG or S_IFBLK */
    uint32_t pad0;
    uint64_t src_size0;    /* size at creation */
    uint64_t reserved0[11];
    /* 256: control, read by every write, written rarely (by the follower) */
    uint32_t quiesce;         /* 1 while a quiesce is requested (futex word) */
    uint32_t delay_us;        /* auto-converge: sleep before each write */
    uint64_t pivot_gen;       /* bumped by each pivot request */
    uint64_t lease_expiry_ns; /* CLOCK_MONOTONIC; 0 = no follower */
    int32_t lease_pid;
    uint32_t quiesce_seq;     /* bumped by each quiesce (mij_quiesce_begin) */
    int32_t pivot_pid;        /* the follower that made the last pivot request */
    uint32_t pivot_qseq;      /* ... during this quiesce */
    uint64_t pivot_done;      /* the last pivot generation its follower saw through */
    uint64_t reserved1[2];
    /* 320: untrusted reasons (bit per enum mij_reason) */
    uint64_t untrusted;
    uint64_t reserved2[7];
    /* 384: written by every write */
    uint64_t ring_head;       /* writes ever started through the shim */
    uint64_t reserved3[7];
    /* 448: the follower's record of the source (mij_source_observe) */
    uint64_t seen_valid, seen_size, seen_ctime_sec, seen_ctime_nsec, seen_ring, seen_ns;
    uint64_t reserved4[2];
    /* 512: the follower */
    int32_t follower_pid;
    uint32_t pad2;
    uint64_t follower_since_ns; /* CLOCK_REALTIME */
    uint64_t lease_ns;          /* the follower's lease length */
    uint64_t resets;            /* times `journal reset` ran */
    uint64_t bytes_retired;     /* reserved */
    uint64_t reserved5[3];
    /* 576: the recorded target (incremental replication) */
    uint64_t target_valid, target_dev, target_ino, target_size, sync_gen, synced_ns;
    uint64_t reserved6[2];
    /* 640: first pid and time (CLOCK_REALTIME ns) per untrusted reason */
    struct { int32_t pid; uint32_t pad; uint64_t ns; } why[32];
    /* 1152.. reserved up to 4096 */
};

/* One writer process (256 bytes). */
struct mij_slot {
    /* line 0: updated by the owner on each write */
    uint32_t inflight;     /* threads of this process inside a tracked call (those that
                            * have no marker below) */
    uint32_t pad0;
    uint64_t bytes;        /* bytes written (monotonic across owners; see bytes_base) */
    uint64_t writes;       /* tracked calls (monotonic across owners) */
    uint64_t last_ns;      /* CLOCK_REALTIME of the last write */
    uint8_t tmark[MIJ_TMARKS]; /* per-thread in-flight markers: nesting depth of the thread
                                * that owns marker i (the owner process hands them out) */
    /* line 1: owner */
    int32_t pid;           /* 0 = free, -1 = the shared overflow slot */
    uint32_t lapsed_qseq;  /* a quiesce that let this process go when its lease ran out */
    uint64_t start_ticks;  /* /proc/PID/stat starttime: tells a reused pid apart */
    uint64_t reg_ns;       /* CLOCK_REALTIME of registration */
    uint64_t bytes_base, writes_base; /* counters when this owner claimed the slot */
    uint32_t waiting;      /* threads held by a quiesce right now */
    uint32_t tracked;      /* descriptors referring to the source */
    uint64_t pivot_ack;    /* last pivot generation this process acted on */
    int32_t pivot_err;     /* 0, or the errno of its last failed/refused pivot */
    uint32_t nmaps;        /* writable shared mappings of the source */
    /* lines 2-3: the first MIJ_SLOT_MAPS of them, as file ranges */
    struct { uint64_t off, len; } maps[MIJ_SLOT_MAPS];
};

/* One write record (64 bytes). */
struct mij_rec {
    uint64_t seq;      /* ring index + 1 once complete; 0 while being filled */
    uint64_t off, len;
    uint64_t time_ns;  /* CLOCK_REALTIME */
    int32_t pid, tid;
    uint16_t op, pad;
    int32_t fd;
    uint64_t pad2[2];
};

_Static_assert(sizeof(struct mij_header) <= 4096, "header fits a page");
_Static_assert(offsetof(struct mij_header, quiesce) == 256, "control line");
_Static_assert(offsetof(struct mij_header, untrusted) == 320, "untrusted line");
_Static_assert(offsetof(struct mij_header, ring_head) == 384, "ring line");
_Static_assert(offsetof(struct mij_header, why) == 640, "reasons");
_Static_assert(sizeof(struct mij_slot) == 256, "slot size");
_Static_assert(sizeof(struct mij_rec) == 64, "record size");

/* An open journal: the mapping and where its parts are. */
struct mij {
    struct mij_header *h;
    uint8_t *base;
    size_t size;
    uint64_t *dirty, *copying;
    struct mij_slot *slots;
    struct mij_rec *ring;
    uint64_t nchunks, covered, words;
    unsigned shift;       /* log2(granularity) */
    int fd;               /* -1 in the shim (closed after mapping) */
    bool rdonly, following;
    bool lapsed;          /* the lease ran out since the quiesce began (follower) */
    uint64_t lease_ns;    /* lease length while following */
    uint64_t lease_last;  /* expiry we last wrote */
    char *path;           /* the journal's path as given (messages) */
};

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

/* The write path's functions are inlined into every wrapper, whatever the compiler's
 * size heuristics say (a call and a split-off part cost more than they save). */
#define MIJ_HOT static inline __attribute__((always_inline))

#define MIJ_LOAD(p) __atomic_load_n((p), __ATOMIC_SEQ_CST)
#define MIJ_LOADR(p) __atomic_load_n((p), __ATOMIC_RELAXED)
#define MIJ_STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_SEQ_CST)
#define LIKELY_ONE_CHUNK(x) __builtin_expect(!!(x), 1)

static inline uint64_t mij_clock(clockid_t c)
{
    struct timespec ts;
    clock_gettime(c, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

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

/* True when st (a stat of some descriptor or path) is the journal's source. */
static inline bool mij_is_source(const struct mij_header *h, const struct stat *st)
{
    if (h->src_type == S_IFBLK)
        return S_ISBLK(st->st_mode) && (uint64_t)st->st_rdev == h->src_rdev;
    return S_ISREG(st->st_mode) && (uint64_t)st->st_dev == h->src_dev &&
           (uint64_t)st->st_ino == h->src_ino;
}

/* Map an open journal file descriptor and validate it (shared by the shim and mirror-img).
 * On failure returns -errno and leaves a message in mij_errbuf (and mi_seterr outside the
 * shim).  The fd is not closed. */
int mij_map(struct mij *j, int fd, const char *path, bool rdonly);
void mij_unmap(struct mij *j);

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

/* Read PID's state letter, start time and (threads may be NULL) thread count from /proc
 * (0, or -errno). */
int mij_proc_stat(int pid, char *state, uint64_t *start_ticks, unsigned *threads);
/* A registered pid is alive: not gone, not reused, and not a zombie unless one of its
 * threads still runs (a main thread that ended before the others shows as a zombie). */
bool mij_pid_alive(int pid, uint64_t start_ticks);
/* Call fn for each entry of the directory dfd named by a decimal number (a /proc task or
 * fd directory), read with getdents64: no allocation, fine in a fork child.  Stops when fn
 * returns true.  Returns 1 when fn stopped it, 0 at the end, -1 on a read error. */
int mij_dir_numbers(int dfd, bool (*fn)(unsigned long n, void *ctx), void *ctx);

extern char mij_errbuf[512];

/* A SIGBUS handler that did not own the fault: pass it to the handler it replaced (old),
 * or take the default action.  Shared by the follower's journal guard and the shim's. */
void mij_sigbus_pass(int sig, siginfo_t *si, void *uc, const struct sigaction *old);

#ifndef MI_SHIM
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

static inline uint64_t mij_granularity(const struct mij *j) { return 1ull << j->shift; }

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

struct mij_target {
    bool valid;
    char path[MIJ_PATH_MAX];
    uint64_t dev, ino, size, sync_gen, synced_ns;
};
void mij_target_get(struct mij *j, struct mij_target *t);
/* Record a successful sync to the target at path (st: its stat after the sync); bumps and
 * returns the sync generation. */
uint64_t mij_target_set(struct mij *j, const char *path, const struct stat *st);
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
#endif /* !MI_SHIM */

#endif
