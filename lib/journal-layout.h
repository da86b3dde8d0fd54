/* journal-layout.h: the journal file, shared by the shim (in every writer process) and
 * mirror-img: its layout, its validation, and the few helpers both sides use.  The
 * writer's side is journal-writer.h, the follower's journal-follower.h, /proc liveness
 * proc.h; journal.h includes them all for mirror-img.
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
#ifndef MI_JOURNAL_LAYOUT_H
#define MI_JOURNAL_LAYOUT_H

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
    uint64_t pivot_dev, pivot_ino; /* the pivot target the follower meant (writers check) */
    /* 320: untrusted reasons (bit per enum mij_reason) */
    uint64_t untrusted;
    uint64_t append_gen;      /* bumped when a writer changes O_APPEND on the source: the
                               * description may be shared with other processes */
    uint64_t reserved2[6];
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
    uint32_t exec_pending; /* the owner is exec'ing with the source open (its new image
                            * clears it when it registers: one that never does runs
                            * without the shim) */
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

/* The size of each bitmap for nchunks chunks: u64 words, rounded up to 4 KiB. */
static inline uint64_t mij_bitmap_bytes(uint64_t nchunks)
{
    uint64_t words = (nchunks + 63) / 64;
    return (words * 8 + 4095) / 4096 * 4096;
}

static inline uint64_t mij_granularity(const struct mij *j) { return 1ull << j->shift; }

/* True when st (a stat of some descriptor or path) is the journal's source. */
static inline bool mij_is_source(const struct mij_header *h, const struct stat *st)
{
    if (h->src_type == S_IFBLK)
        return S_ISBLK(st->st_mode) && (uint64_t)st->st_rdev == h->src_rdev;
    return S_ISREG(st->st_mode) && (uint64_t)st->st_dev == h->src_dev &&
           (uint64_t)st->st_ino == h->src_ino;
}

/* Map an open journal file descriptor and validate it (shared by the shim and mirror-img).
 * On failure returns -errno and leaves a message (mi_seterr).  The fd is not closed. */
int mij_map(struct mij *j, int fd, const char *path, bool rdonly);
void mij_unmap(struct mij *j);

/* The C library calls the journal code makes where the shim could see them (open, close,
 * read, pread, syscall): in the shim they would enter its own wrappers, so the shim points
 * these at the real ones before it maps a journal.  Elsewhere they are libc's. */
struct mij_libc {
    int (*open)(const char *path, int flags, ...);
    int (*close)(int fd);
    ssize_t (*read)(int fd, void *buf, size_t n);
    ssize_t (*pread)(int fd, void *buf, size_t n, off_t off);
    long (*syscall)(long nr, ...);
};
extern struct mij_libc mij_libc;

#endif
