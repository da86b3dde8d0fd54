/* shim.c: the LD_PRELOAD library (build/mirror-img-shim.so).
 *
 * Without MIRROR_IMG_JOURNAL in the environment it is a pure pass-through.  With it, it
 * maps the journal, finds the source by device and inode on every descriptor that reaches
 * it, and after each call that changed the source's bytes or size marks the range the
 * call reports in the journal's dirty bitmap (journal.h has the protocols).
 *
 * Rules for every wrapper:
 *  - the real call gets the caller's errno and the caller gets the real call's errno and
 *    return value, whatever the shim did around it;
 *  - nothing on the write path allocates, takes a lock or can block, except a writer held
 *    by a quiesce (mij_w_enter) while the follower's lease is fresh;
 *  - descriptors are tracked in a fixed table (fdst): one byte per descriptor number.
 *
 * A truncated journal: the shim maps the journal once and never checks its size again (a
 * check per write would cost a system call).  If the file is truncated anyway, the next
 * access raises SIGBUS; the shim's SIGBUS handler recognises a fault inside the journal's
 * mapping, replaces that mapping with anonymous memory, stops journaling (the writer goes
 * on untouched) and says so on stderr; any other SIGBUS goes to the handler that was there
 * before (or the default action).  mirror-img itself never truncates a journal.
 */
#include "journal-writer.h"
#include "proc.h"
#include "util.h"

#include <aio.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <spawn.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/pidfd.h>
#include <sys/socket.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#define EXPORT __attribute__((visibility("default")))
#define LIKELY(x) __builtin_expect(!!(x), 1)
#define UNLIKELY(x) __builtin_expect(!!(x), 0)

#define FD_MAX 65536
enum { FD_TRACKED = 1, FD_APPEND = 2 };

static struct mij J;
static int active;             /* the journal is mapped and usable */
static struct mij_slot *S;     /* this process's registry slot */
static int mypid;
static uint8_t fdst[FD_MAX];   /* per descriptor: FD_TRACKED, FD_APPEND */
static int ntracked, maxfd;    /* tracked descriptors; highest number ever tracked */
static uint64_t seen_gen;      /* pivot generation this process acted on */
static int pivoting;
static __thread int my_tid __attribute__((tls_model("initial-exec")));
/* This thread's in-flight marker in S (journal.h, mij_w_begin): 0 = none claimed yet,
 * k + 1 = marker k, -1 = none available (the slot's shared count is used instead). */
static __thread int my_mark __attribute__((tls_model("initial-exec")));
static int mark_owner[MIJ_TMARKS]; /* tid owning each marker of S (this process only) */

/* ---------------------------------------------------------------------------------- */
/* The real functions                                                                   */

/* glibc's fortified entry points (declared by its headers only under _FORTIFY_SOURCE) */
int __open_2(const char *path, int flags);
int __open64_2(const char *path, int flags);
int __openat_2(int dirfd, const char *path, int flags);
int __openat64_2(int dirfd, const char *path, int flags);

#define REAL_PTR(name) static __typeof__(name) *real_##name
REAL_PTR(open); REAL_PTR(open64); REAL_PTR(openat); REAL_PTR(openat64);
REAL_PTR(creat); REAL_PTR(creat64); REAL_PTR(__open_2); REAL_PTR(__open64_2);
REAL_PTR(__openat_2); REAL_PTR(__openat64_2);
REAL_PTR(dup); REAL_PTR(dup2); REAL_PTR(dup3); REAL_PTR(fcntl); REAL_PTR(fcntl64);
REAL_PTR(close); REAL_PTR(close_range); REAL_PTR(closefrom);
REAL_PTR(write); REAL_PTR(pwrite); REAL_PTR(pwrite64); REAL_PTR(writev);
REAL_PTR(pwritev); REAL_PTR(pwritev64); REAL_PTR(pwritev2); REAL_PTR(pwritev64v2);
REAL_PTR(ftruncate); REAL_PTR(ftruncate64); REAL_PTR(truncate); REAL_PTR(truncate64);
REAL_PTR(fallocate); REAL_PTR(fallocate64); REAL_PTR(posix_fallocate);
REAL_PTR(posix_fallocate64); REAL_PTR(copy_file_range); REAL_PTR(sendfile);
REAL_PTR(sendfile64); REAL_PTR(splice);
REAL_PTR(mmap); REAL_PTR(mmap64); REAL_PTR(munmap); REAL_PTR(msync); REAL_PTR(mprotect);
REAL_PTR(mremap);
REAL_PTR(syscall); REAL_PTR(aio_write); REAL_PTR(aio_write64); REAL_PTR(lio_listio);
REAL_PTR(lio_listio64);
REAL_PTR(fopen); REAL_PTR(fopen64); REAL_PTR(freopen); REAL_PTR(freopen64); REAL_PTR(fdopen);
REAL_PTR(fclose);
REAL_PTR(read); REAL_PTR(pread); REAL_PTR(pread64); REAL_PTR(readv); REAL_PTR(preadv);
REAL_PTR(preadv64); REAL_PTR(preadv2); REAL_PTR(preadv64v2); REAL_PTR(fsync); REAL_PTR(fdatasync);
REAL_PTR(sync_file_range); REAL_PTR(recvmsg); REAL_PTR(recvmmsg); REAL_PTR(open_by_handle_at);
REAL_PTR(pidfd_getfd); REAL_PTR(vdprintf); REAL_PTR(posix_spawn_file_actions_addopen);
REAL_PTR(posix_spawn_file_actions_destroy); REAL_PTR(posix_spawn); REAL_PTR(posix_spawnp);
REAL_PTR(fflush); REAL_PTR(fwrite); REAL_PTR(fputs); REAL_PTR(puts); REAL_PTR(fputc);
REAL_PTR(putc); REAL_PTR(putchar); REAL_PTR(vfprintf); REAL_PTR(vprintf);
static int (*real___vfprintf_chk)(FILE *, int, const char *, va_list);
static int (*real___vprintf_chk)(int, const char *, va_list);
REAL_PTR(ioctl); REAL_PTR(system); REAL_PTR(popen); REAL_PTR(execv); REAL_PTR(execvp); REAL_PTR(execve); REAL_PTR(execvpe); REAL_PTR(fexecve);
/* fortified entry points, declared where they are wrapped */
static ssize_t (*real___read_chk)(int, void *, size_t, size_t);
static ssize_t (*real___pread_chk)(int, void *, size_t, off_t, size_t);
static ssize_t (*real___pread64_chk)(int, void *, size_t, off64_t, size_t);
static int (*real___vdprintf_chk)(int, int, const char *, va_list);

/* Resolved in the constructor; a call that comes before it (another library's
 * constructor) resolves lazily. */
#define REAL(name)                                                                           \
    (*({                                                                                     \
        if (UNLIKELY(!real_##name))                                                          \
            real_##name = (__typeof__(real_##name))dlsym(RTLD_NEXT, #name);                  \
        real_##name;                                                                         \
    }))

static void resolve_all(void)
{
#define R(name) (void)REAL(name)
    R(open); R(open64); R(openat); R(openat64); R(creat); R(creat64); R(__open_2);
    R(__open64_2); R(__openat_2); R(__openat64_2); R(dup); R(dup2); R(dup3); R(fcntl);
    R(fcntl64); R(close); R(close_range); R(closefrom); R(write); R(pwrite); R(pwrite64);
    R(writev); R(pwritev); R(pwritev64); R(pwritev2); R(pwritev64v2); R(ftruncate);
    R(ftruncate64); R(truncate); R(truncate64); R(fallocate); R(fallocate64);
    R(posix_fallocate); R(posix_fallocate64); R(copy_file_range); R(sendfile); R(sendfile64);
    R(splice); R(mmap); R(mmap64); R(munmap); R(msync); R(mprotect); R(mremap); R(syscall);
    R(aio_write); R(aio_write64); R(lio_listio); R(lio_listio64); R(fopen); R(fopen64);
    R(freopen); R(freopen64); R(fdopen); R(fclose);
#undef R
}

static void say(const char *a, const char *b, const char *c)
{
    const char *parts[4] = {"mirror-img-shim: ", a, b, c};
    for (int i = 0; i < 4; i++)
        if (parts[i] && REAL(write)(2, parts[i], strlen(parts[i])) < 0)
            return;
    if (REAL(write)(2, "\n", 1) < 0)
        return;
}

/* ---------------------------------------------------------------------------------- */
/* Descriptor table                                                                     */

static inline int tracked(int fd)
{
    return (unsigned)fd < FD_MAX && (__atomic_load_n(&fdst[fd], __ATOMIC_RELAXED) & FD_TRACKED) &&
           LIKELY(__atomic_load_n(&active, __ATOMIC_RELAXED));
}

static void refresh_append(void);
static uint64_t seen_append_gen; /* J.h->append_gen when our FD_APPEND bits were read */

/* O_APPEND belongs to the open file description, which another process may share (fork,
 * SCM_RIGHTS) and change with F_SETFL: whoever does bumps append_gen, and the others read
 * their descriptors' flags again before their next write. */
static inline int fd_append(int fd)
{
    uint64_t g = MIJ_LOADR(&J.h->append_gen);
    if (UNLIKELY(g != __atomic_load_n(&seen_append_gen, __ATOMIC_RELAXED))) {
        __atomic_store_n(&seen_append_gen, g, __ATOMIC_RELAXED);
        refresh_append();
    }
    return __atomic_load_n(&fdst[fd], __ATOMIC_RELAXED) & FD_APPEND;
}

/* A vfork child shares our memory: it must not change the parent's table. */
static inline bool may_change_table(void)
{
    return getpid() == mypid;
}

static void set_state(int fd, uint8_t st)
{
    if (fd < 0 || fd >= FD_MAX)
        return;
    uint8_t old = __atomic_exchange_n(&fdst[fd], st, __ATOMIC_SEQ_CST);
    int d = (st & FD_TRACKED) - (old & FD_TRACKED);
    if (d) {
        __atomic_fetch_add(&ntracked, d, __ATOMIC_SEQ_CST);
        if (S)
            __atomic_fetch_add(&S->tracked, (uint32_t)d, __ATOMIC_SEQ_CST);
    }
    if ((st & FD_TRACKED) && fd > __atomic_load_n(&maxfd, __ATOMIC_RELAXED))
        __atomic_store_n(&maxfd, fd, __ATOMIC_RELAXED);
}

static void record_event(int op, int fd, uint64_t off, uint64_t len)
{
    uint64_t idx = mij_w_start(&J);
    mij_w_record(&J, S, idx, op, fd, off, len, mypid, my_tid);
}

static void untrust(enum mij_reason r)
{
    if (!(MIJ_LOADR(&J.h->untrusted) & MIJ_U_BIT(r)))
        record_event(MIJ_OP_UNTRUSTED, -1, (uint64_t)r, 0);
    mij_untrust(&J, r, mypid);
}

/* stdout and stderr write through glibc's internal write (printf, puts, perror...), out
 * of the shim's reach, and a buffered stream cannot be marked after its write returns.
 * The source on one of them, open for writing, is watched (std_watch: bit 1 << fd); once
 * the stream has been used for output (it has a buffer, or bytes in it) the journal is
 * untrusted.  A program that writes its stdout with write(2), as dd does, stays tracked.
 * Checked when the descriptor becomes the source, in every tracked call, at close and at
 * exit (before exit's own flush). */
static int std_watch;

static bool std_used(const FILE *f)
{
    return f && (f->_IO_buf_base || f->_IO_write_ptr != f->_IO_write_base);
}

static void std_check(void)
{
    int w = __atomic_load_n(&std_watch, __ATOMIC_RELAXED);
    for (int fd = 1; w && fd <= 2; fd++) {
        if (!(w & (1 << fd)))
            continue;
        if (!(__atomic_load_n(&fdst[fd], __ATOMIC_RELAXED) & FD_TRACKED))
            __atomic_and_fetch(&std_watch, ~(1 << fd), __ATOMIC_RELAXED);
        else if (std_used(fd == 1 ? stdout : stderr))
            untrust(MIJ_U_STDIO);
    }
}

/* A watched stream is being used (fd 1 or 2; 0: fflush(NULL), both). */
static void std_check_used(int fd)
{
    int w = __atomic_load_n(&std_watch, __ATOMIC_RELAXED);
    for (int k = 1; k <= 2; k++)
        if ((w & (1 << k)) && (!fd || fd == k) &&
            (__atomic_load_n(&fdst[k], __ATOMIC_RELAXED) & FD_TRACKED))
            untrust(MIJ_U_STDIO);
}

static void std_stream_check(int fd, int flags)
{
    if ((fd == 1 || fd == 2) && (flags & O_ACCMODE) != O_RDONLY) {
        __atomic_or_fetch(&std_watch, 1 << fd, __ATOMIC_RELAXED);
        std_check();
    }
}

/* Set while the constructor looks at the descriptors inherited across exec: those are
 * where the previous image left them, at the pivot generation it acted on. */
static bool inheriting;

/* After a call that produced descriptor fd: is it the source?  flags: its open flags, or
 * -1 to ask.  Called with the journal active; keeps errno. */
static void check_new_fd(int fd, int flags)
{
    if (fd < 0)
        return;
    int e = errno;
    struct stat st;
    bool src = fstat(fd, &st) == 0 && mij_is_source(J.h, &st);
    if (src && flags < 0)
        flags = REAL(fcntl)(fd, F_GETFL);
    if (src && (flags & O_PATH) == O_PATH)
        src = false;
    if (src && fd >= FD_MAX)
        untrust(MIJ_U_FD_TABLE);
    else if (src || (fd < FD_MAX && __atomic_load_n(&fdst[fd], __ATOMIC_RELAXED))) {
        if (may_change_table()) {
            if (src && !__atomic_load_n(&ntracked, __ATOMIC_SEQ_CST) && !inheriting) {
                /* Nothing to switch at the current pivot generation (a source opened
                 * after a pivot is the user's choice, not ours to move). */
                uint64_t g = MIJ_LOAD(&J.h->pivot_gen);
                __atomic_store_n(&seen_gen, g, __ATOMIC_SEQ_CST);
                MIJ_STORE(&S->pivot_ack, g);
            }
            set_state(fd, src ? (uint8_t)(FD_TRACKED | ((flags & O_APPEND) ? FD_APPEND : 0)) : 0);
        }
        if (src)
            std_stream_check(fd, flags);
    }
    errno = e;
}

static void copy_state(int from, int to)
{
    if (to < 0 || !may_change_table())
        return;
    uint8_t st = (unsigned)from < FD_MAX ? __atomic_load_n(&fdst[from], __ATOMIC_RELAXED) : 0;
    if (to >= FD_MAX) {
        if (st & FD_TRACKED)
            untrust(MIJ_U_FD_TABLE);
        return;
    }
    if (st || __atomic_load_n(&fdst[to], __ATOMIC_RELAXED))
        set_state(to, st);
    if ((st & FD_TRACKED) && (to == 1 || to == 2)) {
        int e = errno;
        std_stream_check(to, REAL(fcntl)(to, F_GETFL));
        errno = e;
    }
}

/* O_APPEND is a property of the open file description, shared by dup'd descriptors:
 * after an F_SETFL, refresh every tracked descriptor. */
static void refresh_append(void)
{
    int e = errno, top = __atomic_load_n(&maxfd, __ATOMIC_RELAXED);
    for (int fd = 0; fd <= top; fd++)
        if (__atomic_load_n(&fdst[fd], __ATOMIC_RELAXED) & FD_TRACKED) {
            int fl = REAL(fcntl)(fd, F_GETFL);
            if (fl >= 0)
                __atomic_store_n(&fdst[fd], (uint8_t)(FD_TRACKED | ((fl & O_APPEND) ? FD_APPEND : 0)),
                                 __ATOMIC_SEQ_CST);
        }
    errno = e;
}

/* ---------------------------------------------------------------------------------- */
/* Writable shared mappings                                                             */

#define NMAPS 64
static struct map {
    uintptr_t addr;
    size_t len;
    uint64_t off;
    bool writable;
} maps[NMAPS];
static int nmaps_used, nwmaps, maps_lock;

static void maps_lock_take(void)
{
    while (__atomic_exchange_n(&maps_lock, 1, __ATOMIC_ACQUIRE))
        sched_yield();
}
static void maps_lock_give(void) { __atomic_store_n(&maps_lock, 0, __ATOMIC_RELEASE); }

/* Publish the writable ones in our registry slot (the follower marks them at quiesce). */
static void maps_publish(void)
{
    unsigned n = 0;
    for (int i = 0; i < nmaps_used; i++)
        if (maps[i].len && maps[i].writable) {
            if (n < MIJ_SLOT_MAPS) {
                MIJ_STORE(&S->maps[n].off, maps[i].off);
                MIJ_STORE(&S->maps[n].len, (uint64_t)maps[i].len);
            }
            n++;
        }
    nwmaps = (int)n;
    MIJ_STORE(&S->nmaps, n);
}

static void mark_event(int op, int fd, uint64_t off, uint64_t len)
{
    if (!len)
        return;
    mij_mark(&J, off, len, mypid);
    record_event(op, fd, off, len);
}

/* For each tracked writable mapping overlapping [a, a+len): mark the overlap dirty; with
 * drop, forget the parts that are gone. */
static void maps_touch(uintptr_t a, size_t len, int op, bool drop)
{
    uintptr_t e = a + len;
    bool changed = false;
    maps_lock_take();
    for (int i = 0; i < nmaps_used; i++) {
        struct map *m = &maps[i];
        uintptr_t me = m->addr + m->len;
        if (!m->len || me <= a || m->addr >= e)
            continue;
        uintptr_t lo = m->addr > a ? m->addr : a, hi = me < e ? me : e;
        if (m->writable)
            mark_event(op, -1, m->off + (lo - m->addr), hi - lo);
        if (!drop)
            continue;
        changed = true;
        if (lo == m->addr && hi == me) {
            m->len = 0;
        } else if (lo == m->addr) {
            m->off += hi - m->addr;
            m->len = me - hi;
            m->addr = hi;
        } else if (hi == me) {
            m->len = lo - m->addr;
        } /* a hole in the middle: keep it whole (marks a bit more later) */
    }
    if (changed)
        maps_publish();
    maps_lock_give();
}

static void maps_add(uintptr_t a, size_t len, uint64_t off, bool writable)
{
    maps_lock_take();
    int i;
    for (i = 0; i < nmaps_used && maps[i].len; i++)
        ;
    if (i == NMAPS) {
        maps_lock_give();
        untrust(MIJ_U_MMAP_TABLE);
        return;
    }
    maps[i] = (struct map){a, len, off, writable};
    if (i == nmaps_used)
        nmaps_used++;
    maps_publish();
    maps_lock_give();
    if (writable)
        mark_event(MIJ_OP_MMAP, -1, off, len);
}

/* ---------------------------------------------------------------------------------- */
/* Pivot                                                                                */

/* Open the pivot target for a descriptor with open flags fl: never through a symbolic
 * link, and only the file the follower meant (its device and inode are in the journal):
 * a target moved or replaced since the pivot, by anybody, gets no writes. */
static int open_target(const char *path, int fl, int *err)
{
    int nfd = REAL(open)(path, (fl & ~(O_CREAT | O_TRUNC | O_EXCL | O_NOCTTY)) | O_CLOEXEC | O_NOFOLLOW);
    if (nfd < 0) {
        *err = errno;
        return -1;
    }
    struct stat st;
    uint64_t dev = MIJ_LOAD(&J.h->pivot_dev), ino = MIJ_LOAD(&J.h->pivot_ino);
    if (fstat(nfd, &st) < 0 || (ino && ((uint64_t)st.st_dev != dev || (uint64_t)st.st_ino != ino))) {
        REAL(close)(nfd);
        *err = ESTALE;
        return -1;
    }
    return nfd;
}

/* Descriptors that share one open file description (dup) must share one on the target
 * too, or their common file position splits.  kcmp tells; without it, one each. */
static bool same_description(int a, int b)
{
    return syscall(SYS_kcmp, mypid, mypid, 0 /* KCMP_FILE */, a, b) == 0;
}

#define PIVOT_BATCH 256

/* Switch one group: the descriptors in fds[0..n) share the description of fds[0]. */
static void pivot_group(const char *path, const int *fds, int n, int *err)
{
    int fl = REAL(fcntl)(fds[0], F_GETFL);
    off_t pos = lseek(fds[0], 0, SEEK_CUR);
    int nfd = open_target(path, fl, err);
    if (nfd < 0)
        return;
    if (pos > 0)
        lseek(nfd, pos, SEEK_SET);
    for (int i = 0; i < n; i++) {
        int fdfl = REAL(fcntl)(fds[i], F_GETFD);
        if (REAL(dup3)(nfd, fds[i], (fdfl >= 0 && (fdfl & FD_CLOEXEC)) ? O_CLOEXEC : 0) < 0)
            *err = errno;
        else
            set_state(fds[i], 0);
    }
    REAL(close)(nfd);
}

static void pivot_fds(const char *path, int *err)
{
    int top = __atomic_load_n(&maxfd, __ATOMIC_RELAXED), fd = 0;
    while (fd <= top) {
        /* a batch of tracked descriptors still on the source, grouped by description
         * before any of them moves (on the stack: no allocation) */
        int list[PIVOT_BATCH], group[PIVOT_BATCH], n = 0;
        for (; fd <= top && n < PIVOT_BATCH; fd++) {
            if (!(__atomic_load_n(&fdst[fd], __ATOMIC_RELAXED) & FD_TRACKED))
                continue;
            struct stat st;
            if (fstat(fd, &st) < 0 || !mij_is_source(J.h, &st)) {
                set_state(fd, 0); /* stale: closed behind our back */
                continue;
            }
            group[n] = n;
            for (int k = 0; k < n; k++)
                if (group[k] == k && same_description(list[k], fd)) {
                    group[n] = k;
                    break;
                }
            list[n++] = fd;
        }
        for (int k = 0; k < n; k++) {
            if (group[k] != k)
                continue;
            int members[PIVOT_BATCH], m = 0;
            for (int i = k; i < n; i++)
                if (group[i] == k)
                    members[m++] = list[i];
            pivot_group(path, members, m, err);
        }
    }
}

/* The follower bumped the pivot generation: switch every tracked descriptor of this
 * process to the target (one thread does it; the others wait for it). */
static void pivot_now(void)
{
    if (!may_change_table())
        return; /* a vfork child: its descriptors are not the ones our table describes */
    uint64_t gen = MIJ_LOAD(&J.h->pivot_gen);
    /* A signal handler that writes the source must not run while this thread switches:
     * it would wait for this very thread, or write through a half-switched table. */
    int e = errno;
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    int zero = 0;
    if (!__atomic_compare_exchange_n(&pivoting, &zero, 1, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
        while (__atomic_load_n(&seen_gen, __ATOMIC_SEQ_CST) != gen &&
               __atomic_load_n(&pivoting, __ATOMIC_SEQ_CST))
            sched_yield(); /* another thread switches */
    } else {
        if (__atomic_load_n(&seen_gen, __ATOMIC_SEQ_CST) != gen) {
            int err = 0;
            if (!mij_pivot_valid(&J, S, gen)) {
                err = EPERM; /* not asked for by the follower holding the lease: stay */
            } else if (nwmaps) {
                err = EBUSY; /* stores through a mapping cannot be moved: stay, and say so */
            } else if (__atomic_load_n(&ntracked, __ATOMIC_SEQ_CST)) {
                char path[MIJ_PATH_MAX];
                memcpy(path, J.base + MIJ_OFF_PIVOT_PATH, sizeof path);
                path[sizeof path - 1] = '\0';
                pivot_fds(path, &err);
            }
            if (err)
                untrust(MIJ_U_PIVOT_FAILED);
            MIJ_STORE(&S->pivot_err, err);
            MIJ_STORE(&S->pivot_ack, gen);
            record_event(MIJ_OP_PIVOT, -1, gen, 0);
            __atomic_store_n(&seen_gen, gen, __ATOMIC_SEQ_CST);
        }
        __atomic_store_n(&pivoting, 0, __ATOMIC_SEQ_CST);
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    errno = e;
}

/* A pivot not acted on yet, before a call on fd (reads and flushes too, below). */
static inline void pivot_check(int fd)
{
    if (UNLIKELY(tracked(fd)) &&
        UNLIKELY(MIJ_LOADR(&J.h->pivot_gen) != __atomic_load_n(&seen_gen, __ATOMIC_RELAXED)))
        pivot_now();
}

static void on_wake(void)
{
    if (MIJ_LOAD(&J.h->pivot_gen) != __atomic_load_n(&seen_gen, __ATOMIC_RELAXED))
        pivot_now();
}

/* ---------------------------------------------------------------------------------- */
/* The write path                                                                       */

enum { M_POS, M_STREAM, M_SIZE };

struct wc {
    uint64_t idx;
    int64_t before; /* M_STREAM: file position; M_SIZE: file size */
    int e0, mode;
    int mark;       /* this thread's in-flight marker, or -1 (mij_w_begin) */
    bool live;      /* between wbegin and the end of the call's marking */
    uint64_t off, n; /* what a positional call may touch (for a cancelled call): n bytes, */
    const struct iovec *iov; /* or those of iov[0..cnt) when iov is set */
    int cnt;
};

static void mark_event(int op, int fd, uint64_t off, uint64_t len);
static void untrust(enum mij_reason r);

/* A thread cancelled (pthread_cancel) inside the real call unwinds through the wrapper:
 * the cleanup of its struct wc marks what the call may have written and lowers the
 * thread's in-flight marker, which would otherwise hold every later quiesce.  The shim
 * is built with -fexceptions so that the unwinder runs it; on the normal path it is one
 * test of c->live. */
static void wc_unwind(struct wc *c)
{
    if (__builtin_expect(!c->live, 1))
        return;
    uint64_t n = c->n;
    for (int i = 0; c->iov && i < c->cnt; i++)
        n += c->iov[i].iov_len;
    if (n)
        mark_event(MIJ_OP_WRITE, -1, c->off, n);
    else
        untrust(MIJ_U_WRITER_DIED); /* a stream or size change: its range is unknown */
    mij_w_end(S, c->mark);
    c->live = false;
}
#define WC(c) struct wc c __attribute__((cleanup(wc_unwind))); c.live = false

static int64_t fd_size(int fd)
{
    struct stat st;
    return fstat(fd, &st) == 0 ? (int64_t)st.st_size : -1;
}

/* Enter a tracked call on fd.  Returns false when fd turned out not to be tracked any
 * more (it was switched to the pivot target): the caller then just makes the call. */
static void delay_write(uint32_t us)
{
    if (us > 100000)
        us = 100000; /* the follower asks for at most 100 ms; a larger value is not its */
    int e = errno;
    struct timespec ts = {(time_t)(us / 1000000), (long)(us % 1000000) * 1000};
    nanosleep(&ts, NULL);
    errno = e;
}

/* A thread's first tracked call: claim one of our slot's markers (a free one, else one
 * whose thread is gone: tgkill(0) says ESRCH; it is not in a write, so its marker is
 * cleared).  None free, or the shared overflow slot: -1, the shared count.  Keeps errno. */
static __attribute__((noinline, cold)) int claim_mark(void)
{
    int e = errno, got = -1;
    if (UNLIKELY(!my_tid))
        my_tid = gettid();
    if (S != &J.slots[0] && may_change_table()) {
        for (int i = 0; i < MIJ_TMARKS && got < 0; i++) {
            int zero = 0;
            if (__atomic_compare_exchange_n(&mark_owner[i], &zero, my_tid, false, __ATOMIC_SEQ_CST,
                                            __ATOMIC_SEQ_CST))
                got = i;
        }
        for (int i = 0; i < MIJ_TMARKS && got < 0; i++) {
            int t = __atomic_load_n(&mark_owner[i], __ATOMIC_SEQ_CST);
            /* our own tid: its previous owner is dead (tids are unique among live threads) */
            if (t && (t == my_tid || (syscall(SYS_tgkill, mypid, t, 0) < 0 && errno == ESRCH)) &&
                __atomic_compare_exchange_n(&mark_owner[i], &t, my_tid, false, __ATOMIC_SEQ_CST,
                                            __ATOMIC_SEQ_CST)) {
                __atomic_store_n(&S->tmark[i], 0, __ATOMIC_SEQ_CST);
                got = i;
            }
        }
    }
    /* A vfork child runs on its parent's thread (and TLS) in our memory: it uses the shared
     * count, and leaves our markers to us. */
    if (may_change_table())
        my_mark = got >= 0 ? got + 1 : -1;
    errno = e;
    return got;
}

static inline int thread_mark(void)
{
    int m = my_mark;
    if (LIKELY(m > 0))
        return m - 1;
    return m < 0 ? -1 : claim_mark();
}

/* The slow paths below keep errno themselves; on the common path (a positional write, no
 * quiesce, no pivot) nothing here touches errno at all. */
static inline __attribute__((always_inline)) bool wbegin(struct wc *c, int fd, int mode)
{
    uint32_t d = MIJ_LOADR(&J.h->delay_us);
    /* auto-converge, before entering (never while counted in flight), and only while the
     * follower that asked for it holds a fresh lease */
    if (UNLIKELY(d) && mij_lease_fresh(J.h, mij_clock(CLOCK_MONOTONIC)))
        delay_write(d);
    if (UNLIKELY(__atomic_load_n(&std_watch, __ATOMIC_RELAXED)))
        std_check();
    c->mark = thread_mark();
    /* in flight, and the ring entry claimed (the write counts as started) */
    c->idx = mij_w_begin(&J, S, c->mark, on_wake); /* mij_w_hold and pivot_now keep errno */
    if (UNLIKELY(MIJ_LOAD(&J.h->pivot_gen) != __atomic_load_n(&seen_gen, __ATOMIC_RELAXED)))
        pivot_now();
    if (UNLIKELY(fd >= 0 && !tracked(fd))) {
        mij_w_end(S, c->mark);
        return false;
    }
    c->mode = mode; /* my_tid: set by claim_mark, the thread's first call */
    c->before = 0;
    c->n = 0;
    c->iov = NULL;
    c->live = true;
    if (mode != M_POS) {
        int e = errno;
        c->before = mode == M_STREAM ? lseek(fd, 0, SEEK_CUR) : fd_size(fd);
        errno = e;
    }
    return true;
}

/* Leave: mark [a, b) (nothing when a >= b), record, keep the call's errno. */
static inline __attribute__((always_inline)) void wend_range(struct wc *c, int fd, int op,
                                                             uint64_t a, uint64_t b)
{
    if (b > a) {
        mij_mark(&J, a, b - a, mypid); /* may record an untrusted reason: keeps errno */
        mij_w_record(&J, S, c->idx, op, fd, a, b - a, mypid, my_tid);
    }
    c->live = false;
    mij_w_end(S, c->mark);
}

/* Leave after a data write that returned r bytes (off: its offset for M_POS). */
static inline __attribute__((always_inline)) void wend(struct wc *c, int fd, int op, ssize_t r,
                                                       uint64_t off)
{
    if (r <= 0) {
        wend_range(c, fd, op, 0, 0);
        return;
    }
    if (LIKELY(c->mode == M_POS)) {
        wend_range(c, fd, op, off, off + (uint64_t)r);
        return;
    }
    int e1 = errno;
    uint64_t n = (uint64_t)r, a, b;
    if (c->mode == M_STREAM) {
        /* Threads sharing the description may move its position around ours: the write
         * lies between the position before and the position after. */
        int64_t after = lseek(fd, 0, SEEK_CUR);
        if (c->before < 0 && after < 0) {
            a = 0;
            b = UINT64_MAX;
        } else if (c->before < 0) {
            a = (uint64_t)after - n;
            b = (uint64_t)after;
        } else if (after < 0) {
            a = (uint64_t)c->before;
            b = a + n;
        } else {
            a = (uint64_t)after - n < (uint64_t)c->before ? (uint64_t)after - n : (uint64_t)c->before;
            b = (uint64_t)after > (uint64_t)c->before + n ? (uint64_t)after : (uint64_t)c->before + n;
        }
    } else { /* appended: somewhere between the old end and the new end */
        int64_t after = fd_size(fd);
        a = c->before < 0 ? 0 : (uint64_t)c->before;
        b = after > (int64_t)(a + n) ? (uint64_t)after : a + n;
    }
    if (b == UINT64_MAX)
        b = J.covered;
    wend_range(c, fd, op, a, b);
    errno = e1;
}

static inline int data_mode(int fd, int positional)
{
    return fd_append(fd) ? M_SIZE : positional ? M_POS : M_STREAM;
}

EXPORT ssize_t write(int fd, const void *buf, size_t n)
{
    WC(c);
    if (LIKELY(!tracked(fd)) || !wbegin(&c, fd, data_mode(fd, 0)))
        return REAL(write)(fd, buf, n);
    ssize_t r = REAL(write)(fd, buf, n);
    wend(&c, fd, MIJ_OP_WRITE, r, 0);
    return r;
}

EXPORT ssize_t writev(int fd, const struct iovec *iov, int cnt)
{
    WC(c);
    if (LIKELY(!tracked(fd)) || !wbegin(&c, fd, data_mode(fd, 0)))
        return REAL(writev)(fd, iov, cnt);
    ssize_t r = REAL(writev)(fd, iov, cnt);
    wend(&c, fd, MIJ_OP_WRITEV, r, 0);
    return r;
}

/* EXTENT records what the call may touch, for a thread cancelled inside it (wc_unwind). */
#define PWRITE_LIKE(name, op, args, EXTENT, ...)                                             \
    EXPORT ssize_t name args                                                                 \
    {                                                                                        \
        WC(c);                                                                               \
        if (LIKELY(!tracked(fd)) || !wbegin(&c, fd, data_mode(fd, 1)))                       \
            return REAL(name)(__VA_ARGS__);                                                  \
        if (c.mode == M_POS) {                                                               \
            c.off = (uint64_t)off;                                                           \
            EXTENT;                                                                          \
        }                                                                                    \
        ssize_t r = REAL(name)(__VA_ARGS__);                                                 \
        wend(&c, fd, op, r, (uint64_t)off);                                                  \
        return r;                                                                            \
    }

PWRITE_LIKE(pwrite, MIJ_OP_PWRITE, (int fd, const void *buf, size_t n, off_t off), c.n = n, fd, buf, n, off)
PWRITE_LIKE(pwrite64, MIJ_OP_PWRITE, (int fd, const void *buf, size_t n, off64_t off), c.n = n, fd, buf, n, off)
PWRITE_LIKE(pwritev, MIJ_OP_PWRITEV, (int fd, const struct iovec *iov, int cnt, off_t off),
            (c.iov = iov, c.cnt = cnt), fd, iov, cnt, off)
PWRITE_LIKE(pwritev64, MIJ_OP_PWRITEV, (int fd, const struct iovec *iov, int cnt, off64_t off),
            (c.iov = iov, c.cnt = cnt), fd, iov, cnt, off)

#ifndef RWF_NOAPPEND
#define RWF_NOAPPEND 0x00000020 /* Linux 6.9 */
#endif

/* Where pwritev2 writes: at the end with RWF_APPEND, or on an O_APPEND descriptor unless
 * RWF_NOAPPEND says otherwise (the kernel honours it from 6.9 on; an older one refuses the
 * flag with EOPNOTSUPP and writes nothing, so the positional guess costs nothing there);
 * at the file position for off -1; else at off. */
static inline int pwritev2_mode(int fd, int64_t off, int flags)
{
    if ((flags & RWF_APPEND) || (fd_append(fd) && !(flags & RWF_NOAPPEND)))
        return M_SIZE;
    return off == -1 ? M_STREAM : M_POS;
}

#define PWRITEV2_LIKE(name, offt)                                                            \
    EXPORT ssize_t name(int fd, const struct iovec *iov, int cnt, offt off, int flags)       \
    {                                                                                        \
        WC(c);                                                                               \
        if (LIKELY(!tracked(fd)) || !wbegin(&c, fd, pwritev2_mode(fd, off, flags)))           \
            return REAL(name)(fd, iov, cnt, off, flags);                                     \
        if (c.mode == M_POS)                                                                 \
            c.off = (uint64_t)off, c.iov = iov, c.cnt = cnt;                                 \
        ssize_t r = REAL(name)(fd, iov, cnt, off, flags);                                    \
        wend(&c, fd, MIJ_OP_PWRITEV2, r, (uint64_t)off);                                     \
        return r;                                                                            \
    }

PWRITEV2_LIKE(pwritev2, off_t)
PWRITEV2_LIKE(pwritev64v2, off64_t)

/* Size changes: mark between the old and the new size (the follower also applies the
 * source's size to the target). */
#define FTRUNCATE_LIKE(name, offt)                                                           \
    EXPORT int name(int fd, offt len)                                                        \
    {                                                                                        \
        WC(c);                                                                               \
        if (LIKELY(!tracked(fd)) || !wbegin(&c, fd, M_SIZE))                                 \
            return REAL(name)(fd, len);                                                      \
        int r = REAL(name)(fd, len);                                                         \
        uint64_t a = c.before < 0 ? 0 : (uint64_t)c.before, b = (uint64_t)len;               \
        if (r)                                                                               \
            a = b = 0;                                                                       \
        wend_range(&c, fd, MIJ_OP_FTRUNCATE, a < b ? a : b, a < b ? b : a);                  \
        return r;                                                                            \
    }

FTRUNCATE_LIKE(ftruncate, off_t)
FTRUNCATE_LIKE(ftruncate64, off64_t)

/* truncate by path: stat it first (a rare call: the cost does not matter). */
#define TRUNCATE_LIKE(name, offt)                                                            \
    EXPORT int name(const char *path, offt len)                                              \
    {                                                                                        \
        struct stat st;                                                                      \
        WC(c);                                                                               \
        int e = errno;                                                                       \
        if (!__atomic_load_n(&active, __ATOMIC_RELAXED) || stat(path, &st) < 0 ||            \
            !mij_is_source(J.h, &st)) {                                                      \
            errno = e;                                                                       \
            return REAL(name)(path, len);                                                    \
        }                                                                                    \
        errno = e;                                                                           \
        wbegin(&c, -1, M_POS);                                                               \
        int r = REAL(name)(path, len);                                                       \
        uint64_t a = (uint64_t)st.st_size, b = (uint64_t)len;                                \
        wend_range(&c, -1, MIJ_OP_TRUNCATE, r ? 0 : (a < b ? a : b), r ? 0 : (a < b ? b : a)); \
        return r;                                                                            \
    }

TRUNCATE_LIKE(truncate, off_t)
TRUNCATE_LIKE(truncate64, off64_t)

/* fallocate: every mode marks its range; collapse and insert shift the rest of the file. */
static void falloc_range(int mode, int64_t before, uint64_t off, uint64_t len, uint64_t *a,
                         uint64_t *b)
{
    uint64_t old = before < 0 ? J.covered : (uint64_t)before;
    *a = off;
    if (mode & FALLOC_FL_COLLAPSE_RANGE)
        *b = old > off + len ? old : off + len;
    else if (mode & FALLOC_FL_INSERT_RANGE)
        *b = old + len;
    else
        *b = off + len;
}

#define FALLOCATE_LIKE(name, offt)                                                           \
    EXPORT int name(int fd, int mode, offt off, offt len)                                    \
    {                                                                                        \
        WC(c);                                                                               \
        if (LIKELY(!tracked(fd)) || !wbegin(&c, fd, M_SIZE))                                 \
            return REAL(name)(fd, mode, off, len);                                           \
        int r = REAL(name)(fd, mode, off, len);                                              \
        uint64_t a = 0, b = 0;                                                               \
        if (r == 0)                                                                          \
            falloc_range(mode, c.before, (uint64_t)off, (uint64_t)len, &a, &b);              \
        wend_range(&c, fd, MIJ_OP_FALLOCATE, a, b);                                          \
        return r;                                                                            \
    }

FALLOCATE_LIKE(fallocate, off_t)
FALLOCATE_LIKE(fallocate64, off64_t)

#define POSIX_FALLOCATE_LIKE(name, offt)                                                     \
    EXPORT int name(int fd, offt off, offt len)                                              \
    {                                                                                        \
        WC(c);                                                                               \
        if (LIKELY(!tracked(fd)) || !wbegin(&c, fd, M_POS))                                  \
            return REAL(name)(fd, off, len);                                                 \
        int r = REAL(name)(fd, off, len);                                                    \
        wend_range(&c, fd, MIJ_OP_POSIX_FALLOCATE, r ? 0 : (uint64_t)off,                    \
                   r ? 0 : (uint64_t)off + (uint64_t)len);                                   \
        return r;                                                                            \
    }

POSIX_FALLOCATE_LIKE(posix_fallocate, off_t)
POSIX_FALLOCATE_LIKE(posix_fallocate64, off64_t)

EXPORT ssize_t copy_file_range(int in, off64_t *off_in, int out, off64_t *off_out, size_t len,
                               unsigned flags)
{
    WC(c);
    pivot_check(in); /* reading the source after a pivot reads the target */
    if (LIKELY(!tracked(out)) || !wbegin(&c, out, off_out ? M_POS : data_mode(out, 0)))
        return REAL(copy_file_range)(in, off_in, out, off_out, len, flags);
    ssize_t r = REAL(copy_file_range)(in, off_in, out, off_out, len, flags);
    /* *off_out was advanced by the call: read it only once the call proved it valid */
    wend(&c, out, MIJ_OP_COPY_FILE_RANGE, r, r > 0 && off_out ? (uint64_t)*off_out - (uint64_t)r : 0);
    return r;
}

EXPORT ssize_t splice(int in, off64_t *off_in, int out, off64_t *off_out, size_t len,
                      unsigned flags)
{
    WC(c);
    pivot_check(in); /* reading the source after a pivot reads the target */
    if (LIKELY(!tracked(out)) || !wbegin(&c, out, off_out ? M_POS : data_mode(out, 0)))
        return REAL(splice)(in, off_in, out, off_out, len, flags);
    ssize_t r = REAL(splice)(in, off_in, out, off_out, len, flags);
    wend(&c, out, MIJ_OP_SPLICE, r, r > 0 && off_out ? (uint64_t)*off_out - (uint64_t)r : 0);
    return r;
}

#define SENDFILE_LIKE(name, offt)                                                            \
    EXPORT ssize_t name(int out, int in, offt *off, size_t count)                            \
    {                                                                                        \
        WC(c);                                                                               \
        pivot_check(in);                                                                     \
        if (LIKELY(!tracked(out)) || !wbegin(&c, out, data_mode(out, 0)))                    \
            return REAL(name)(out, in, off, count);                                          \
        ssize_t r = REAL(name)(out, in, off, count);                                         \
        wend(&c, out, MIJ_OP_SENDFILE, r, 0);                                                \
        return r;                                                                            \
    }

SENDFILE_LIKE(sendfile, off_t)
SENDFILE_LIKE(sendfile64, off64_t)

/* ---------------------------------------------------------------------------------- */
/* Opening, duplicating, closing                                                        */

/* An open with O_TRUNC of the source empties it: a write like any other. */
static bool trunc_target(int dirfd, const char *path, int flags, struct stat *st)
{
    if (!(flags & O_TRUNC) || (flags & O_ACCMODE) == O_RDONLY)
        return false;
    int e = errno;
    bool is = fstatat(dirfd, path, st, 0) == 0 && mij_is_source(J.h, st) && st->st_size > 0;
    errno = e;
    return is;
}

#define OPEN_BODY(call, dirfd)                                                               \
    if (!__atomic_load_n(&active, __ATOMIC_RELAXED))                                         \
        return call;                                                                         \
    struct stat st_;                                                                         \
    WC(c_);                                                                            \
    bool tr_ = trunc_target(dirfd, path, flags, &st_) && wbegin(&c_, -1, M_POS);             \
    int fd_ = call;                                                                          \
    check_new_fd(fd_, flags);                                                                \
    if (tr_)                                                                                 \
        wend_range(&c_, fd_, MIJ_OP_TRUNCATE, 0, fd_ >= 0 ? (uint64_t)st_.st_size : 0);      \
    return fd_;

#define MODE_ARG                                                                             \
    mode_t mode = 0;                                                                         \
    if (__OPEN_NEEDS_MODE(flags)) {                                                          \
        va_list ap;                                                                          \
        va_start(ap, flags);                                                                 \
        mode = (mode_t)va_arg(ap, int);                                                      \
        va_end(ap);                                                                          \
    }

EXPORT int open(const char *path, int flags, ...) { MODE_ARG OPEN_BODY(REAL(open)(path, flags, mode), AT_FDCWD) }
EXPORT int open64(const char *path, int flags, ...) { MODE_ARG OPEN_BODY(REAL(open64)(path, flags, mode), AT_FDCWD) }
EXPORT int openat(int dirfd, const char *path, int flags, ...) { MODE_ARG OPEN_BODY(REAL(openat)(dirfd, path, flags, mode), dirfd) }
EXPORT int openat64(int dirfd, const char *path, int flags, ...) { MODE_ARG OPEN_BODY(REAL(openat64)(dirfd, path, flags, mode), dirfd) }
EXPORT int __open_2(const char *path, int flags) { OPEN_BODY(REAL(__open_2)(path, flags), AT_FDCWD) }
EXPORT int __open64_2(const char *path, int flags) { OPEN_BODY(REAL(__open64_2)(path, flags), AT_FDCWD) }
EXPORT int __openat_2(int dirfd, const char *path, int flags) { OPEN_BODY(REAL(__openat_2)(dirfd, path, flags), dirfd) }
EXPORT int __openat64_2(int dirfd, const char *path, int flags) { OPEN_BODY(REAL(__openat64_2)(dirfd, path, flags), dirfd) }
EXPORT int creat(const char *path, mode_t mode) { int flags = O_CREAT | O_WRONLY | O_TRUNC; OPEN_BODY(REAL(creat)(path, mode), AT_FDCWD) }
EXPORT int creat64(const char *path, mode_t mode) { int flags = O_CREAT | O_WRONLY | O_TRUNC; OPEN_BODY(REAL(creat64)(path, mode), AT_FDCWD) }

EXPORT int dup(int fd)
{
    int r = REAL(dup)(fd);
    if (r >= 0 && __atomic_load_n(&active, __ATOMIC_RELAXED))
        copy_state(fd, r);
    return r;
}

EXPORT int dup2(int fd, int fd2)
{
    int r = REAL(dup2)(fd, fd2);
    if (r >= 0 && fd != fd2 && __atomic_load_n(&active, __ATOMIC_RELAXED))
        copy_state(fd, r);
    return r;
}

EXPORT int dup3(int fd, int fd2, int flags)
{
    int r = REAL(dup3)(fd, fd2, flags);
    if (r >= 0 && __atomic_load_n(&active, __ATOMIC_RELAXED))
        copy_state(fd, r);
    return r;
}

/* fcntl is variadic: like glibc, take one pointer-sized argument whatever cmd is (the
 * kernel reads it as an unsigned long and ignores it when cmd takes none). */
__attribute__((noinline)) static int fcntl_after(int fd, int cmd, int r)
{
    if (r < 0 || !__atomic_load_n(&active, __ATOMIC_RELAXED))
        return r;
    if (cmd == F_DUPFD || cmd == F_DUPFD_CLOEXEC)
        copy_state(fd, r);
    else if (cmd == F_SETFL && tracked(fd)) {
        __atomic_fetch_add(&J.h->append_gen, 1, __ATOMIC_SEQ_CST);
        refresh_append();
    }
    return r;
}

EXPORT int fcntl(int fd, int cmd, ...)
{
    va_list ap;
    va_start(ap, cmd);
    void *arg = va_arg(ap, void *);
    va_end(ap);
    return fcntl_after(fd, cmd, REAL(fcntl)(fd, cmd, arg));
}

EXPORT int fcntl64(int fd, int cmd, ...)
{
    va_list ap;
    va_start(ap, cmd);
    void *arg = va_arg(ap, void *);
    va_end(ap);
    return fcntl_after(fd, cmd, REAL(fcntl64)(fd, cmd, arg));
}

/* Untrack before the real close: once it returns the number may be reused at once by
 * another thread's open, whose tracking we must not undo. */
EXPORT int close(int fd)
{
    if (UNLIKELY(__atomic_load_n(&std_watch, __ATOMIC_RELAXED)))
        std_check();
    if ((unsigned)fd < FD_MAX && __atomic_load_n(&fdst[fd], __ATOMIC_RELAXED) && may_change_table())
        set_state(fd, 0);
    return REAL(close)(fd);
}

static void untrack_from(unsigned first, unsigned last)
{
    int top = __atomic_load_n(&maxfd, __ATOMIC_RELAXED);
    if (!__atomic_load_n(&active, __ATOMIC_RELAXED) || !may_change_table())
        return;
    for (unsigned fd = first; fd <= last && fd <= (unsigned)top; fd++)
        if (__atomic_load_n(&fdst[fd], __ATOMIC_RELAXED))
            set_state((int)fd, 0);
}

EXPORT int close_range(unsigned first, unsigned last, int flags)
{
    if (!(flags & CLOSE_RANGE_CLOEXEC))
        untrack_from(first, last);
    return REAL(close_range)(first, last, flags);
}

EXPORT void closefrom(int low)
{
    untrack_from(low < 0 ? 0 : (unsigned)low, ~0u);
    REAL(closefrom)(low);
}

/* ---------------------------------------------------------------------------------- */
/* Mappings                                                                             */

#define MMAP_LIKE(name, offt)                                                                \
    EXPORT void *name(void *addr, size_t len, int prot, int flags, int fd, offt off)         \
    {                                                                                        \
        pivot_check(fd); /* a mapping made after a pivot maps the target */                 \
        void *p = REAL(name)(addr, len, prot, flags, fd, off);                               \
        if (p == MAP_FAILED || !tracked(fd) || !(flags & MAP_SHARED))                        \
            return p;                                                                        \
        int e = errno;                                                                       \
        if (flags & MAP_FIXED)                                                               \
            maps_touch((uintptr_t)p, len, MIJ_OP_MUNMAP, true);                              \
        /* a mapping of a read-write descriptor may become writable by mprotect */          \
        if ((REAL(fcntl)(fd, F_GETFL) & O_ACCMODE) == O_RDWR)                                \
            maps_add((uintptr_t)p, len, (uint64_t)off, prot & PROT_WRITE);                   \
        errno = e;                                                                           \
        return p;                                                                            \
    }

MMAP_LIKE(mmap, off_t)
MMAP_LIKE(mmap64, off64_t)

EXPORT int munmap(void *addr, size_t len)
{
    int r = REAL(munmap)(addr, len);
    if (r == 0 && __atomic_load_n(&active, __ATOMIC_RELAXED) && nmaps_used) {
        int e = errno;
        maps_touch((uintptr_t)addr, len, MIJ_OP_MUNMAP, true);
        errno = e;
    }
    return r;
}

EXPORT int msync(void *addr, size_t len, int flags)
{
    int r = REAL(msync)(addr, len, flags);
    if (__atomic_load_n(&active, __ATOMIC_RELAXED) && nmaps_used) {
        int e = errno;
        maps_touch((uintptr_t)addr, len, MIJ_OP_MSYNC, false);
        errno = e;
    }
    return r;
}

EXPORT int mprotect(void *addr, size_t len, int prot)
{
    int r = REAL(mprotect)(addr, len, prot);
    if (r == 0 && __atomic_load_n(&active, __ATOMIC_RELAXED) && nmaps_used) {
        int e = errno;
        uintptr_t a = (uintptr_t)addr, z = a + len;
        bool changed = false;
        maps_lock_take();
        for (int i = 0; i < nmaps_used; i++) {
            struct map *m = &maps[i];
            if (!m->len || m->addr + m->len <= a || m->addr >= z)
                continue;
            if (m->writable) /* what it wrote so far */
                mark_event(MIJ_OP_MPROTECT, -1, m->off, m->len);
            bool w = (prot & PROT_WRITE) || (m->writable && !(a <= m->addr && z >= m->addr + m->len));
            changed |= w != m->writable;
            m->writable = w;
        }
        if (changed)
            maps_publish();
        maps_lock_give();
        errno = e;
    }
    return r;
}

/* [old, old+old_len) of a tracked mapping now lives at [p, p+new_len): the parts of the
 * mapping around it stay where they were (one entry each), the moved part gets an entry
 * of its own, marked dirty if writable. */
static void maps_moved(uintptr_t old, size_t old_len, uintptr_t p, size_t new_len)
{
    bool full = false;
    maps_lock_take();
    int n = nmaps_used;
    for (int i = 0; i < n; i++) {
        struct map m = maps[i];
        uintptr_t me = m.addr + m.len;
        if (!m.len || me <= old || m.addr >= old + old_len)
            continue;
        uintptr_t lo = old > m.addr ? old : m.addr, hi = old + old_len < me ? old + old_len : me;
        /* the moved part ends where the new range ends when it reached the old range's end
         * (it grew or shrank with it) */
        size_t moved = hi < old + old_len ? hi - lo : new_len > lo - old ? new_len - (lo - old) : 0;
        struct map parts[3] = {
            {m.addr, lo - m.addr, m.off, m.writable},                       /* left */
            {p + (lo - old), moved, m.off + (lo - m.addr), m.writable},     /* moved */
            {hi, me - hi, m.off + (hi - m.addr), m.writable},               /* right */
        };
        maps[i].len = 0;
        for (int k = 0; k < 3; k++) {
            if (!parts[k].len)
                continue;
            int f;
            for (f = 0; f < NMAPS && maps[f].len; f++)
                ;
            if (f == NMAPS) {
                full = true;
                break;
            }
            maps[f] = parts[k];
            if (f >= nmaps_used)
                nmaps_used = f + 1;
            if (k == 1 && parts[k].writable)
                mark_event(MIJ_OP_MREMAP, -1, parts[k].off, parts[k].len);
        }
    }
    maps_publish();
    maps_lock_give();
    if (full)
        untrust(MIJ_U_MMAP_TABLE);
}

EXPORT void *mremap(void *old, size_t old_len, size_t new_len, int flags, ...)
{
    void *want = NULL;
    if (flags & MREMAP_FIXED) {
        va_list ap;
        va_start(ap, flags);
        want = va_arg(ap, void *);
        va_end(ap);
    }
    void *p = REAL(mremap)(old, old_len, new_len, flags, want);
    if (p != MAP_FAILED && __atomic_load_n(&active, __ATOMIC_RELAXED) && nmaps_used) {
        int e = errno;
        maps_moved((uintptr_t)old, old_len, (uintptr_t)p, new_len);
        errno = e;
    }
    return p;
}

/* ---------------------------------------------------------------------------------- */
/* What cannot be followed: mark the journal untrusted (after the call: the flag must not
 * come before what it warns about)                                                     */

static bool raw_write_nr(long nr, long a1, long a3)
{
    switch (nr) {
    case SYS_write: case SYS_pwrite64: case SYS_writev: case SYS_pwritev: case SYS_pwritev2:
    case SYS_ftruncate: case SYS_fallocate: case SYS_sendfile:
        return tracked((int)a1);
    case SYS_copy_file_range: case SYS_splice:
        return tracked((int)a3);
    case SYS_truncate: { /* by path: is it the source? */
        struct stat st;
        return a1 && stat((const char *)a1, &st) == 0 && mij_is_source(J.h, &st);
    }
    default:
        return false;
    }
}

static void check_rights(const struct msghdr *m);
static int fcntl_after(int fd, int cmd, int r);

/* Descriptors made by raw system calls (openat2 has no glibc wrapper): track them as if
 * the wrapper had made them.  An open that truncated the source cannot be marked
 * before the fact: its range is unknown, so a full pass follows (raw_syscall). */
static void raw_new_fd(long nr, long r, long a1, long a2, long a3)
{
    int flags = -1;
    switch (nr) {
#ifdef SYS_open
    case SYS_open: flags = (int)a2; break;
    case SYS_creat: flags = O_CREAT | O_WRONLY | O_TRUNC; break;
#endif
    case SYS_openat: flags = (int)a3; break;
    case SYS_openat2: {
        uint64_t f = 0; /* struct open_how starts with the u64 flags */
        if (a3 >= 8 && a3 <= 4096 && a2)
            memcpy(&f, (const void *)a2, sizeof f);
        flags = (int)f;
        break;
    }
    case SYS_open_by_handle_at: flags = (int)a3; break;
    case SYS_pidfd_getfd: check_new_fd((int)r, -1); return;
    case SYS_recvmsg: check_rights((const struct msghdr *)a2); return;
    case SYS_recvmmsg:
        for (long i = 0; i < r; i++)
            check_rights(&((const struct mmsghdr *)a2)[i].msg_hdr);
        return;
#ifdef SYS_dup2
    case SYS_dup2:
#endif
    case SYS_dup: case SYS_dup3:
        if (r != a1)
            copy_state((int)a1, (int)r);
        return;
    case SYS_fcntl:
        if (a2 == F_DUPFD || a2 == F_DUPFD_CLOEXEC)
            copy_state((int)a1, (int)r);
        else if (a2 == F_SETFL && (unsigned long)a1 < FD_MAX && tracked((int)a1))
            fcntl_after((int)a1, F_SETFL, 0);
        return;
    default:
        return;
    }
    check_new_fd((int)r, flags);
    if ((flags & O_TRUNC) && (flags & O_ACCMODE) != O_RDONLY && (unsigned long)r < FD_MAX && tracked((int)r))
        untrust(MIJ_U_RAW_SYSCALL);
}

EXPORT long syscall(long nr, ...)
{
    va_list ap;
    va_start(ap, nr);
    long a1 = va_arg(ap, long), a2 = va_arg(ap, long), a3 = va_arg(ap, long);
    long a4 = va_arg(ap, long), a5 = va_arg(ap, long), a6 = va_arg(ap, long);
    va_end(ap);
    if (nr == SYS_close && __atomic_load_n(&active, __ATOMIC_RELAXED) && (unsigned long)a1 < FD_MAX &&
        __atomic_load_n(&fdst[a1], __ATOMIC_RELAXED) && may_change_table())
        set_state((int)a1, 0); /* as close(): before the number can be reused */
    long r = REAL(syscall)(nr, a1, a2, a3, a4, a5, a6);
    if (__atomic_load_n(&active, __ATOMIC_RELAXED)) {
        int e = errno;
        if (r >= 0)
            raw_new_fd(nr, r, a1, a2, a3);
        if (nr == SYS_io_uring_setup)
            untrust(MIJ_U_IO_URING_SETUP);
        else if (nr == SYS_io_submit)
            untrust(MIJ_U_IO_SUBMIT);
        else if (raw_write_nr(nr, a1, a3))
            untrust(MIJ_U_RAW_SYSCALL);
        errno = e;
    }
    return r;
}

/* libaio (its io_submit also goes through syscall() on Debian, but not everywhere). */
EXPORT int io_submit(void *ctx, long nr, void **iocbs)
{
    static int (*real)(void *, long, void **);
    if (!real)
        real = (int (*)(void *, long, void **))dlsym(RTLD_NEXT, "io_submit");
    if (!real)
        return -ENOSYS;
    int r = real(ctx, nr, iocbs);
    if (__atomic_load_n(&active, __ATOMIC_RELAXED)) {
        int e = errno;
        untrust(MIJ_U_IO_SUBMIT);
        errno = e;
    }
    return r;
}

static void aio_check(const struct aiocb *cb)
{
    if (cb && __atomic_load_n(&active, __ATOMIC_RELAXED) && tracked(cb->aio_fildes)) {
        int e = errno;
        untrust(MIJ_U_POSIX_AIO);
        errno = e;
    }
}

EXPORT int aio_write(struct aiocb *cb)
{
    int r = REAL(aio_write)(cb);
    aio_check(cb);
    return r;
}

EXPORT int aio_write64(struct aiocb64 *cb)
{
    int r = REAL(aio_write64)(cb);
    aio_check((const struct aiocb *)cb); /* same layout on 64-bit */
    return r;
}

EXPORT int lio_listio(int mode, struct aiocb *const list[], int n, struct sigevent *sev)
{
    int r = REAL(lio_listio)(mode, list, n, sev);
    for (int i = 0; i < n; i++)
        if (list[i] && list[i]->aio_lio_opcode == LIO_WRITE)
            aio_check(list[i]);
    return r;
}

EXPORT int lio_listio64(int mode, struct aiocb64 *const list[], int n, struct sigevent *sev)
{
    int r = REAL(lio_listio64)(mode, list, n, sev);
    for (int i = 0; i < n; i++)
        if (list[i] && list[i]->aio_lio_opcode == LIO_WRITE)
            aio_check((const struct aiocb *)list[i]);
    return r;
}

/* stdio streams write through glibc's internal write, out of our reach. */
static FILE *stdio_check(FILE *f, const char *mode)
{
    if (!f || !__atomic_load_n(&active, __ATOMIC_RELAXED))
        return f;
    int e = errno, fd = fileno(f);
    check_new_fd(fd, -1);
    if (tracked(fd) && mode && strpbrk(mode, "wa+"))
        untrust(MIJ_U_STDIO);
    errno = e;
    return f;
}

EXPORT FILE *fopen(const char *p, const char *m) { return stdio_check(REAL(fopen)(p, m), m); }
EXPORT FILE *fopen64(const char *p, const char *m) { return stdio_check(REAL(fopen64)(p, m), m); }
EXPORT FILE *freopen(const char *p, const char *m, FILE *f) { return stdio_check(REAL(freopen)(p, m, f), m); }
EXPORT FILE *freopen64(const char *p, const char *m, FILE *f) { return stdio_check(REAL(freopen64)(p, m, f), m); }

EXPORT FILE *fdopen(int fd, const char *m)
{
    FILE *f = REAL(fdopen)(fd, m);
    if (f && tracked(fd) && m && strpbrk(m, "wa+")) {
        int e = errno;
        untrust(MIJ_U_STDIO);
        errno = e;
    }
    return f;
}

EXPORT int fclose(FILE *f)
{
    if (f && __atomic_load_n(&active, __ATOMIC_RELAXED)) {
        int fd = fileno(f);
        if ((unsigned)fd < FD_MAX && __atomic_load_n(&fdst[fd], __ATOMIC_RELAXED) && may_change_table())
            set_state(fd, 0);
    }
    return REAL(fclose)(f);
}

/* stdout or stderr on the source (std_watch): the first use of the stream raises stdio,
 * before its bytes can reach the file (a later fflush, or exit, writes them unseen). */
static inline void std_use(FILE *f)
{
    if (UNLIKELY(__atomic_load_n(&std_watch, __ATOMIC_RELAXED)) && (!f || f == stdout || f == stderr)) {
        int e = errno;
        std_check_used(f ? (f == stdout ? 1 : 2) : 0);
        errno = e;
    }
}

/* fflush writes only what is pending (bash flushes stdout after every builtin). */
EXPORT int fflush(FILE *f)
{
    if (UNLIKELY(__atomic_load_n(&std_watch, __ATOMIC_RELAXED))) {
        if ((!f || f == stdout) && stdout && stdout->_IO_write_ptr > stdout->_IO_write_base)
            std_use(stdout);
        if ((!f || f == stderr) && stderr && stderr->_IO_write_ptr > stderr->_IO_write_base)
            std_use(stderr);
    }
    return REAL(fflush)(f);
}
EXPORT size_t fwrite(const void *p, size_t sz, size_t n, FILE *f) { std_use(f); return REAL(fwrite)(p, sz, n, f); }
EXPORT int fputs(const char *str, FILE *f) { std_use(f); return REAL(fputs)(str, f); }
EXPORT int puts(const char *str) { std_use(stdout); return REAL(puts)(str); }
EXPORT int fputc(int c, FILE *f) { std_use(f); return REAL(fputc)(c, f); }
EXPORT int putc(int c, FILE *f) { std_use(f); return REAL(putc)(c, f); }
EXPORT int putchar(int c) { std_use(stdout); return REAL(putchar)(c); }
EXPORT int vfprintf(FILE *f, const char *fmt, va_list ap) { std_use(f); return REAL(vfprintf)(f, fmt, ap); }
EXPORT int vprintf(const char *fmt, va_list ap) { std_use(stdout); return REAL(vprintf)(fmt, ap); }
EXPORT int fprintf(FILE *f, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    std_use(f);
    int r = REAL(vfprintf)(f, fmt, ap);
    va_end(ap);
    return r;
}
EXPORT int printf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    std_use(stdout);
    int r = REAL(vprintf)(fmt, ap);
    va_end(ap);
    return r;
}
int __vfprintf_chk(FILE *f, int flag, const char *fmt, va_list ap);
int __vprintf_chk(int flag, const char *fmt, va_list ap);
EXPORT int __vfprintf_chk(FILE *f, int flag, const char *fmt, va_list ap)
{
    std_use(f);
    return REAL(__vfprintf_chk)(f, flag, fmt, ap);
}
EXPORT int __vprintf_chk(int flag, const char *fmt, va_list ap)
{
    std_use(stdout);
    return REAL(__vprintf_chk)(flag, fmt, ap);
}
EXPORT int __fprintf_chk(FILE *f, int flag, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    std_use(f);
    int r = REAL(__vfprintf_chk)(f, flag, fmt, ap);
    va_end(ap);
    return r;
}
EXPORT int __printf_chk(int flag, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    std_use(stdout);
    int r = REAL(__vprintf_chk)(flag, fmt, ap);
    va_end(ap);
    return r;
}

/* ---------------------------------------------------------------------------------- */
/* liburing: its system calls are inline (not through syscall()), so look at what a ring
 * submits instead.  QEMU sets up rings for its event loop (polls only): those are fine.
 * struct io_uring is liburing's public ABI (soname 2): the application inlines
 * io_uring_get_sqe, which reads these very fields. */

struct uring_sq_abi {
    unsigned *khead, *ktail, *kring_mask, *kring_entries, *kflags, *kdropped, *array;
    uint8_t *sqes;
    unsigned sqe_head, sqe_tail;
    size_t ring_sz;
    void *ring_ptr;
    unsigned pad[4];
};
struct uring_cq_abi {
    unsigned *khead, *ktail, *kring_mask, *kring_entries, *kflags, *koverflow;
    void *cqes;
    size_t ring_sz;
    void *ring_ptr;
    unsigned pad[4];
};
struct uring_abi {
    struct uring_sq_abi sq;
    struct uring_cq_abi cq;
    unsigned flags;
    int ring_fd;
};

#define URING_SETUP_SQE128 (1u << 10)
#define URING_SQE_FIXED_FILE 1u

/* io_uring opcodes that write to their fd, or make descriptors we never see. */
static bool uring_sqe_risky(const uint8_t *sqe)
{
    uint8_t op = sqe[0], fl = sqe[1];
    int32_t fd;
    memcpy(&fd, sqe + 4, sizeof fd);
    switch (op) {
    case 2: case 5: case 17: case 23: case 30: case 46: case 55: /* WRITEV, WRITE_FIXED,
        FALLOCATE, WRITE, SPLICE (fd = out), URING_CMD, FTRUNCATE */
        return (fl & URING_SQE_FIXED_FILE) || tracked(fd);
    case 18: case 28: case 54: /* OPENAT, OPENAT2, FIXED_FD_INSTALL */
        return true;
    default:
        return op > 57 && tracked(fd); /* newer than us */
    }
}

static void uring_scan(void *ring)
{
    if (!ring || !__atomic_load_n(&active, __ATOMIC_RELAXED))
        return;
    struct uring_abi *r = ring;
    unsigned mask = *r->sq.kring_mask, shift = (r->flags & URING_SETUP_SQE128) ? 7 : 6;
    for (unsigned i = r->sq.sqe_head; i != r->sq.sqe_tail; i++)
        if (uring_sqe_risky(r->sq.sqes + ((size_t)(i & mask) << shift))) {
            int e = errno;
            untrust(MIJ_U_IO_URING_WRITE);
            errno = e;
            return;
        }
}

#define URING_FN(ret, name, params, ...)                                                     \
    EXPORT ret name params                                                                   \
    {                                                                                        \
        static ret (*real) params;                                                           \
        if (!real)                                                                           \
            real = (ret(*) params)dlsym(RTLD_NEXT, #name);                                   \
        if (!real)                                                                           \
            return -ENOSYS;                                                                  \
        uring_scan(ring);                                                                    \
        return real(__VA_ARGS__);                                                            \
    }

URING_FN(int, io_uring_submit, (void *ring), ring)
URING_FN(int, io_uring_submit_and_wait, (void *ring, unsigned n), ring, n)
URING_FN(int, io_uring_submit_and_wait_timeout,
         (void *ring, void **cqe, unsigned n, void *ts, void *sig), ring, cqe, n, ts, sig)
URING_FN(int, io_uring_submit_and_get_events, (void *ring), ring)
URING_FN(int, io_uring_wait_cqes, (void *ring, void **cqe, unsigned n, void *ts, void *sig),
         ring, cqe, n, ts, sig)
URING_FN(int, io_uring_wait_cqe_timeout, (void *ring, void **cqe, void *ts), ring, cqe, ts)
URING_FN(int, __io_uring_get_cqe, (void *ring, void **cqe, unsigned submit, unsigned n, void *sig),
         ring, cqe, submit, n, sig)

/* Rings driven by hand through liburing's raw wrappers: nothing to inspect. */
EXPORT int io_uring_setup(unsigned entries, void *p)
{
    static int (*real)(unsigned, void *);
    if (!real)
        real = (int (*)(unsigned, void *))dlsym(RTLD_NEXT, "io_uring_setup");
    if (!real)
        return -ENOSYS;
    int r = real(entries, p);
    if (__atomic_load_n(&active, __ATOMIC_RELAXED)) {
        int e = errno;
        untrust(MIJ_U_IO_URING_SETUP);
        errno = e;
    }
    return r;
}

/* ---------------------------------------------------------------------------------- */
/* A pivot reaches idle writers at any call on the source, not only writes: a read, a
 * flush or a new mapping after the pivot must see the target.                          */

#define PIVOT_FIRST(ret, name, params, ...)                                                  \
    EXPORT ret name params                                                                   \
    {                                                                                        \
        pivot_check(fd);                                                                     \
        return REAL(name)(__VA_ARGS__);                                                      \
    }

PIVOT_FIRST(ssize_t, read, (int fd, void *b, size_t n), fd, b, n)
PIVOT_FIRST(ssize_t, pread, (int fd, void *b, size_t n, off_t o), fd, b, n, o)
PIVOT_FIRST(ssize_t, pread64, (int fd, void *b, size_t n, off64_t o), fd, b, n, o)
PIVOT_FIRST(ssize_t, readv, (int fd, const struct iovec *v, int c), fd, v, c)
PIVOT_FIRST(ssize_t, preadv, (int fd, const struct iovec *v, int c, off_t o), fd, v, c, o)
PIVOT_FIRST(ssize_t, preadv64, (int fd, const struct iovec *v, int c, off64_t o), fd, v, c, o)
PIVOT_FIRST(ssize_t, preadv2, (int fd, const struct iovec *v, int c, off_t o, int f), fd, v, c, o, f)
PIVOT_FIRST(ssize_t, preadv64v2, (int fd, const struct iovec *v, int c, off64_t o, int f), fd, v, c, o, f)
PIVOT_FIRST(int, fsync, (int fd), fd)
PIVOT_FIRST(int, fdatasync, (int fd), fd)
PIVOT_FIRST(int, sync_file_range, (int fd, off64_t o, off64_t n, unsigned int f), fd, o, n, f)
/* glibc's fortified entry points (_FORTIFY_SOURCE) */
ssize_t __read_chk(int fd, void *b, size_t n, size_t bl);
ssize_t __pread_chk(int fd, void *b, size_t n, off_t o, size_t bl);
ssize_t __pread64_chk(int fd, void *b, size_t n, off64_t o, size_t bl);
PIVOT_FIRST(ssize_t, __read_chk, (int fd, void *b, size_t n, size_t bl), fd, b, n, bl)
PIVOT_FIRST(ssize_t, __pread_chk, (int fd, void *b, size_t n, off_t o, size_t bl), fd, b, n, o, bl)
PIVOT_FIRST(ssize_t, __pread64_chk, (int fd, void *b, size_t n, off64_t o, size_t bl), fd, b, n, o, bl)

/* ---------------------------------------------------------------------------------- */
/* Descriptors that reach the process other than by open: received over a socket
 * (SCM_RIGHTS: how libvirt hands images to QEMU), taken from another process
 * (pidfd_getfd), opened from a file handle.                                            */

static void check_rights(const struct msghdr *m)
{
    if (!m || !m->msg_control || m->msg_controllen < sizeof(struct cmsghdr))
        return;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(m); c; c = CMSG_NXTHDR((struct msghdr *)m, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS || c->cmsg_len < CMSG_LEN(0))
            continue;
        size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < n; i++) {
            int fd;
            memcpy(&fd, CMSG_DATA(c) + i * sizeof fd, sizeof fd);
            check_new_fd(fd, -1);
        }
    }
}

EXPORT ssize_t recvmsg(int s, struct msghdr *m, int flags)
{
    ssize_t r = REAL(recvmsg)(s, m, flags);
    if (r >= 0 && __atomic_load_n(&active, __ATOMIC_RELAXED))
        check_rights(m);
    return r;
}

EXPORT int recvmmsg(int s, struct mmsghdr *v, unsigned int n, int flags, struct timespec *t)
{
    int r = REAL(recvmmsg)(s, v, n, flags, t);
    for (int i = 0; i < r && __atomic_load_n(&active, __ATOMIC_RELAXED); i++)
        check_rights(&v[i].msg_hdr);
    return r;
}

EXPORT int open_by_handle_at(int mount_fd, struct file_handle *h, int flags)
{
    int r = REAL(open_by_handle_at)(mount_fd, h, flags);
    if (r >= 0 && __atomic_load_n(&active, __ATOMIC_RELAXED)) {
        check_new_fd(r, flags);
        /* it emptied the source, whose old size a handle does not tell: a full pass */
        if ((flags & O_TRUNC) && (flags & O_ACCMODE) != O_RDONLY && tracked(r)) {
            int e = errno;
            untrust(MIJ_U_RAW_SYSCALL);
            errno = e;
        }
    }
    return r;
}

EXPORT int pidfd_getfd(int pidfd, int targetfd, unsigned int flags)
{
    int r = REAL(pidfd_getfd)(pidfd, targetfd, flags);
    if (r >= 0 && __atomic_load_n(&active, __ATOMIC_RELAXED))
        check_new_fd(r, -1);
    return r;
}

/* ---------------------------------------------------------------------------------- */
/* Writes glibc makes with its internal write: dprintf flushes before it returns, so it is
 * marked like a write at the descriptor's position.                                   */

EXPORT int vdprintf(int fd, const char *fmt, va_list ap)
{
    WC(c);
    if (LIKELY(!tracked(fd)) || !wbegin(&c, fd, data_mode(fd, 0)))
        return REAL(vdprintf)(fd, fmt, ap);
    int r = REAL(vdprintf)(fd, fmt, ap);
    wend(&c, fd, MIJ_OP_WRITE, r, 0);
    return r;
}

EXPORT int dprintf(int fd, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int r = vdprintf(fd, fmt, ap);
    va_end(ap);
    return r;
}

int __vdprintf_chk(int fd, int flag, const char *fmt, va_list ap);
EXPORT int __vdprintf_chk(int fd, int flag, const char *fmt, va_list ap)
{
    WC(c);
    if (LIKELY(!tracked(fd)) || !wbegin(&c, fd, data_mode(fd, 0)))
        return REAL(__vdprintf_chk)(fd, flag, fmt, ap);
    int r = REAL(__vdprintf_chk)(fd, flag, fmt, ap);
    wend(&c, fd, MIJ_OP_WRITE, r, 0);
    return r;
}

int __dprintf_chk(int fd, int flag, const char *fmt, ...);
EXPORT int __dprintf_chk(int fd, int flag, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int r = __vdprintf_chk(fd, flag, fmt, ap);
    va_end(ap);
    return r;
}

/* posix_spawn runs its file actions in the child with glibc's internal open: an action
 * that opens the source with O_TRUNC empties it unseen.  Such action lists are
 * remembered here, and the spawn is marked like a truncate to 0 of the source.         */

static void exec_check(char *const envp[]);
static void exec_check_as(char *const envp[], bool self);

#define SPAWN_TRUNC_MAX 16
static const posix_spawn_file_actions_t *spawn_trunc[SPAWN_TRUNC_MAX];

static bool spawn_truncates(const posix_spawn_file_actions_t *fa)
{
    for (int i = 0; fa && i < SPAWN_TRUNC_MAX; i++)
        if (__atomic_load_n(&spawn_trunc[i], __ATOMIC_SEQ_CST) == fa)
            return true;
    return false;
}

static void spawn_forget(const posix_spawn_file_actions_t *fa)
{
    for (int i = 0; i < SPAWN_TRUNC_MAX; i++) {
        const posix_spawn_file_actions_t *want = fa;
        __atomic_compare_exchange_n(&spawn_trunc[i], &want, NULL, false, __ATOMIC_SEQ_CST,
                                    __ATOMIC_SEQ_CST);
    }
}

EXPORT int posix_spawn_file_actions_addopen(posix_spawn_file_actions_t *fa, int fd,
                                            const char *path, int oflag, mode_t mode)
{
    int r = REAL(posix_spawn_file_actions_addopen)(fa, fd, path, oflag, mode);
    if (r || !__atomic_load_n(&active, __ATOMIC_RELAXED) || !(oflag & O_TRUNC) ||
        (oflag & O_ACCMODE) == O_RDONLY || spawn_truncates(fa))
        return r;
    int e = errno;
    struct stat st;
    if (stat(path, &st) == 0 && mij_is_source(J.h, &st)) {
        int i;
        for (i = 0; i < SPAWN_TRUNC_MAX; i++) {
            const posix_spawn_file_actions_t *none = NULL;
            if (__atomic_compare_exchange_n(&spawn_trunc[i], &none, fa, false, __ATOMIC_SEQ_CST,
                                            __ATOMIC_SEQ_CST))
                break;
        }
        if (i == SPAWN_TRUNC_MAX)
            untrust(MIJ_U_STDIO); /* cannot remember it: say so rather than miss it */
    }
    errno = e;
    return r;
}

EXPORT int posix_spawn_file_actions_destroy(posix_spawn_file_actions_t *fa)
{
    spawn_forget(fa);
    return REAL(posix_spawn_file_actions_destroy)(fa);
}

#define SPAWN_LIKE(name)                                                                     \
    EXPORT int name(pid_t *pid, const char *path, const posix_spawn_file_actions_t *fa,      \
                    const posix_spawnattr_t *at, char *const argv[], char *const envp[])     \
    {                                                                                        \
        WC(c);                                                                               \
        int64_t size = -1;                                                                   \
        if (__atomic_load_n(&active, __ATOMIC_RELAXED) && spawn_truncates(fa)) {             \
            int e = errno;                                                                   \
            struct stat st;                                                                  \
            if (stat((const char *)J.base + MIJ_OFF_SRC_PATH, &st) == 0 && mij_is_source(J.h, &st))           \
                size = (int64_t)st.st_size;                                                  \
            errno = e;                                                                       \
        }                                                                                    \
        exec_check_as(envp, false);                                                          \
        if (size < 0 || !wbegin(&c, -1, M_POS))                                              \
            return REAL(name)(pid, path, fa, at, argv, envp);                                \
        int r = REAL(name)(pid, path, fa, at, argv, envp);                                   \
        /* the child may still be running its actions: wait for the truncation we mark */   \
        wend_range(&c, -1, MIJ_OP_TRUNCATE, 0, r ? 0 : (uint64_t)size);                      \
        return r;                                                                            \
    }

SPAWN_LIKE(posix_spawn)
SPAWN_LIKE(posix_spawnp)

/* ---------------------------------------------------------------------------------- */
/* A program started with an environment of its own (execve, execvpe, execle, fexecve,
 * posix_spawn) that drops MIRROR_IMG_JOURNAL or the shim from LD_PRELOAD runs without
 * the shim: if it inherits the source open, nothing marks what it writes.  The calls
 * that take the caller's environment (execv, execvp, execl, execlp) keep both.        */

static const char *journal_env; /* "MIRROR_IMG_JOURNAL=..." as this process got it */

static bool env_has_shim(char *const envp[])
{
    bool j = false, pre = false;
    for (size_t i = 0; envp && envp[i] && !(j && pre); i++) {
        if (!strcmp(envp[i], journal_env))
            j = true;
        else if (!strncmp(envp[i], "LD_PRELOAD=", 11) && strstr(envp[i], "mirror-img-shim"))
            pre = true;
    }
    return j && pre;
}

/* Some descriptor on the source survives an exec (no close-on-exec). */
static bool source_inherited(void)
{
    int top = __atomic_load_n(&maxfd, __ATOMIC_RELAXED);
    for (int fd = 0; fd <= top; fd++)
        if (__atomic_load_n(&fdst[fd], __ATOMIC_RELAXED) & FD_TRACKED) {
            int fl = REAL(fcntl)(fd, F_GETFD);
            if (fl >= 0 && !(fl & FD_CLOEXEC))
                return true;
        }
    return false;
}

/* Before an exec of this process (pending: true) or a spawn of another (false). */
static void exec_check_as(char *const envp[], bool self)
{
    if (!__atomic_load_n(&active, __ATOMIC_RELAXED) || !journal_env ||
        !__atomic_load_n(&ntracked, __ATOMIC_RELAXED))
        return;
    int e = errno;
    if (source_inherited()) {
        if (!env_has_shim(envp))
            untrust(MIJ_U_EXEC);
        else if (self && may_change_table())
            MIJ_STORE(&S->exec_pending, 1); /* the new image's shim clears it */
    }
    errno = e;
}

static void exec_check(char *const envp[]) { exec_check_as(envp, true); }

/* An exec that failed: this image goes on. */
static int exec_failed(int r)
{
    if (__atomic_load_n(&active, __ATOMIC_RELAXED) && may_change_table())
        MIJ_STORE(&S->exec_pending, 0);
    return r;
}

EXPORT int execve(const char *path, char *const argv[], char *const envp[])
{
    exec_check(envp);
    return exec_failed(REAL(execve)(path, argv, envp));
}

EXPORT int execvpe(const char *file, char *const argv[], char *const envp[])
{
    exec_check(envp);
    return exec_failed(REAL(execvpe)(file, argv, envp));
}

EXPORT int fexecve(int fd, char *const argv[], char *const envp[])
{
    exec_check(envp);
    return exec_failed(REAL(fexecve)(fd, argv, envp));
}

/* These take the caller's environment, which the program may have cleared (env -i). */
EXPORT int execv(const char *path, char *const argv[])
{
    exec_check(environ);
    return exec_failed(REAL(execv)(path, argv));
}

EXPORT int execvp(const char *file, char *const argv[])
{
    exec_check(environ);
    return exec_failed(REAL(execvp)(file, argv));
}

/* system and popen spawn a shell with glibc's internal posix_spawn and the caller's
 * environment. */
EXPORT int system(const char *cmd)
{
    exec_check_as(environ, false);
    return REAL(system)(cmd);
}

EXPORT FILE *popen(const char *cmd, const char *mode)
{
    exec_check_as(environ, false);
    return REAL(popen)(cmd, mode);
}

/* execl, execlp, execle: their arguments as an array (on the stack: no allocation). */
#define EXEC_ARGS(argv, arg, want_env, envp)                                                       \
    va_list ap;                                                                              \
    size_t n_ = 1;                                                                           \
    va_start(ap, arg);                                                                       \
    while (va_arg(ap, const char *))                                                         \
        n_++;                                                                                \
    va_end(ap);                                                                              \
    const char *argv[n_ + 1];                                                                \
    argv[0] = arg;                                                                           \
    va_start(ap, arg);                                                                       \
    for (size_t i_ = 1; i_ <= n_; i_++)                                                      \
        argv[i_] = i_ < n_ ? va_arg(ap, const char *) : NULL;                                \
    (void)va_arg(ap, const char *); /* the NULL that ends them */                          \
    if (want_env)                                                                            \
        envp = va_arg(ap, char *const *);                                                    \
    va_end(ap)

EXPORT int execl(const char *path, const char *arg, ...)
{
    char *const *envp = environ;
    EXEC_ARGS(argv, arg, 0, envp);
    exec_check(envp);
    return exec_failed(REAL(execv)(path, (char *const *)argv));
}

EXPORT int execlp(const char *file, const char *arg, ...)
{
    char *const *envp = environ;
    EXEC_ARGS(argv, arg, 0, envp);
    exec_check(envp);
    return exec_failed(REAL(execvp)(file, (char *const *)argv));
}

EXPORT int execle(const char *path, const char *arg, ...)
{
    char *const *envp = NULL;
    EXEC_ARGS(argv, arg, 1, envp);
    exec_check(envp);
    return exec_failed(REAL(execve)(path, (char *const *)argv, envp));
}

/* ---------------------------------------------------------------------------------- */
/* Block devices: QEMU zeroes and discards host devices with ioctls.  FICLONE and
 * FICLONERANGE replace a file's extents with another's.                               */

static bool ioctl_writes(unsigned long req)
{
    return req == BLKZEROOUT || req == BLKDISCARD || req == BLKSECDISCARD || req == FICLONE ||
           req == FICLONERANGE;
}

EXPORT int ioctl(int fd, unsigned long req, ...)
{
    va_list ap;
    va_start(ap, req);
    void *arg = va_arg(ap, void *);
    va_end(ap);
    WC(c);
    if (LIKELY(!tracked(fd)) || !ioctl_writes(req) || !wbegin(&c, fd, M_SIZE))
        return REAL(ioctl)(fd, req, arg);
    int r = REAL(ioctl)(fd, req, arg);
    uint64_t a = 0, b = 0;
    if (r == 0) { /* the kernel read arg: it is readable */
        if (req == FICLONE) {
            int64_t after = fd_size(fd);
            b = (uint64_t)(after > c.before ? after : c.before);
        } else if (req == FICLONERANGE) {
            struct file_clone_range fcr;
            memcpy(&fcr, arg, sizeof fcr);
            a = fcr.dest_offset;
            b = fcr.src_length ? a + fcr.src_length : J.covered; /* 0: to the source's end */
        } else {
            uint64_t range[2];
            memcpy(range, arg, sizeof range);
            a = range[0];
            b = range[0] + range[1];
        }
    }
    wend_range(&c, fd, MIJ_OP_FALLOCATE, a, b);
    return r;
}

/* ---------------------------------------------------------------------------------- */
/* Loading, fork, SIGBUS                                                                */

static struct sigaction old_bus;

static void bus_handler(int sig, siginfo_t *si, void *uc)
{
    uintptr_t a = (uintptr_t)si->si_addr, b = (uintptr_t)J.base;
    if (b && si->si_code > 0 && a >= b && a < b + J.size) {
        /* The journal was truncated under us: stop journaling, keep the writer alive. */
        __atomic_store_n(&active, 0, __ATOMIC_SEQ_CST);
        REAL(mmap)(J.base, J.size, PROT_READ | PROT_WRITE, MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS,
                   -1, 0);
        say("journal ", "truncated under this process: ", "not journaling any more");
        return;
    }
    mij_sigbus_pass(sig, si, uc, &old_bus);
}

static void install_bus_handler(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = bus_handler;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESTART | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGBUS, &sa, &old_bus);
}

static bool scan_one_fd(unsigned long fd, void *dfd)
{
    if (fd <= INT_MAX && (int)fd != *(int *)dfd)
        check_new_fd((int)fd, -1);
    return false;
}

/* Descriptors inherited across exec: list /proc/self/fd without allocating. */
static void scan_fds(void)
{
    int dfd = REAL(open)("/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) {
        inheriting = true;
        for (int fd = 0; fd < 1024; fd++)
            check_new_fd(fd, -1);
        inheriting = false;
        return;
    }
    inheriting = true;
    mij_dir_numbers(dfd, scan_one_fd, &dfd);
    inheriting = false;
    REAL(close)(dfd);
}

static void after_fork_child(void)
{
    if (!__atomic_load_n(&active, __ATOMIC_RELAXED))
        return;
    mypid = getpid();
    my_tid = gettid();
    maps_lock = 0;
    pivoting = 0;
    memset(mark_owner, 0, sizeof mark_owner); /* the markers were our parent's slot's */
    my_mark = 0;
    uint64_t ack;
    S = mij_register(&J, mypid, &ack); /* our memory says where our descriptors are */
    MIJ_STORE(&S->tracked, (uint32_t)__atomic_load_n(&ntracked, __ATOMIC_SEQ_CST));
    MIJ_STORE(&S->pivot_ack, __atomic_load_n(&seen_gen, __ATOMIC_SEQ_CST));
    maps_publish();
}

/* exit flushes stdio after the destructors: a stream used on the source is seen here */
__attribute__((destructor)) static void shim_fini(void)
{
    if (__atomic_load_n(&active, __ATOMIC_RELAXED)) {
        int e = errno;
        std_check();
        errno = e;
    }
}

__attribute__((constructor)) static void shim_init(void)
{
    resolve_all();
    /* The journal code's own calls must not enter our wrappers. */
    mij_libc = (struct mij_libc){REAL(open), REAL(close), REAL(read), REAL(pread), REAL(syscall)};
    const char *jp = secure_getenv("MIRROR_IMG_JOURNAL");
    if (!jp || !*jp)
        return;
    journal_env = jp - strlen("MIRROR_IMG_JOURNAL="); /* the "NAME=value" string itself */
    int e = errno;
    /* Never through a symbolic link; mij_map refuses a journal of another owner or one
     * that others may write: nothing another user can write steers this process. */
    int fd = REAL(open)(jp, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) {
        say(jp, ": cannot open the journal: ", errno == ELOOP ? "a symbolic link" : strerror(errno));
        say(jp, ": ", "not journaling");
        errno = e;
        return;
    }
    int r = mij_map(&J, fd, jp, false);
    REAL(close)(fd);
    if (r < 0) {
        say(mi_lasterr(), ": not journaling", NULL);
        errno = e;
        return;
    }
    mypid = getpid();
    my_tid = gettid();
    uint64_t ack;
    S = mij_register(&J, mypid, &ack);
    /* Inherited descriptors are still where the previous image or the parent left them: a
     * pivot it did not act on is ours to act on (at the next call on the source). */
    seen_gen = ack;
    MIJ_STORE(&S->pivot_ack, ack);
    install_bus_handler();
    __atomic_store_n(&active, 1, __ATOMIC_SEQ_CST);
    scan_fds();
    pthread_atfork(NULL, NULL, after_fork_child);
    errno = e;
}
