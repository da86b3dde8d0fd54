/* shortio.c: a preload library that makes file I/O misbehave the way POSIX allows, to
 * show that mirror-img ends with an exact target or a clear error, never a wrong one.
 *
 * It wraps the read and write families.  A call on a regular file whose path starts with
 * one of SHORTIO_PATHS (a colon-separated list of prefixes) may, at SHORTIO_RATE percent,
 * fail with EINTR without doing anything or transfer fewer bytes than asked (at least
 * one, and half of the time at most 8 unless SHORTIO_SHORT_MAX says otherwise; vectored
 * calls get a trimmed copy of their iovec list).  Terminals, pipes, sockets, eventfds and
 * files elsewhere are never touched.
 *
 *   SHORTIO_PATHS   prefixes of the paths to disturb; unset or empty: disturb nothing
 *   SHORTIO_RATE    percent of those calls that get a fault (default 15)
 *   SHORTIO_SEED    seed of the per-thread generators (default 1)
 *   SHORTIO_MODE    mixed (default): EINTR or a short transfer; eintr (at a rate of 100
 *                   no call gets through); short;
 *                   write0: the chosen writes return 0 (nothing written, no error)
 *   SHORTIO_SHORT_MAX  the most bytes a short transfer moves (default: no limit)
 *   SHORTIO_REPORT  at exit, append "pid=P seed=S faults=N eintr=N short=N zero=N
 *                   calls=N" to this file (default: stderr); calls counts the calls
 *                   on disturbed files, faults those that got a fault
 *   SHORTIO_EIO_AT  a host offset: the first pwrite or pwrite64 (of any file, whatever
 *                   SHORTIO_PATHS says) whose range holds it fails with EIO, once per
 *                   process (the other modes go on as configured)
 *   SHORTIO_FSYNC_DELAY_MS  fsync and fdatasync of a file under SHORTIO_PATHS sleep this
 *                   long before the real call (default 0: no delay; independent of
 *                   SHORTIO_RATE, which may be 0)
 *   SHORTIO_FSYNC_DELAY_IF  delay only while this path exists (default: always)
 *   SHORTIO_FSYNC_MARK  append "fsync pid=P fd=N\n" to this file when a delayed call
 *                   starts its sleep (so that a test can act during the slow flush)
 *
 * Thread-safe: a generator per thread, counters updated atomically.  Links only libc.
 */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define EXPORT __attribute__((visibility("default")))
#define MAX_PREFIXES 8
#define MAX_IOV 64 /* a trimmed list keeps at most this many entries (still a short transfer) */

enum mode { M_MIXED, M_EINTR, M_SHORT, M_WRITE0 };

static struct {
    const char *prefix[MAX_PREFIXES];
    size_t prefix_len[MAX_PREFIXES];
    int nprefix;
    unsigned rate;
    size_t short_max; /* 0: none */
    uint64_t seed;
    enum mode mode;
    const char *report;
    unsigned long fsync_delay_ms;
    const char *fsync_delay_if, *fsync_mark;
} cfg;

static uint64_t n_eintr, n_short, n_zero, n_calls, n_threads;

/* ---- the real functions ---- */

#define REAL_PTR(name) static __typeof__(name) *real_##name
REAL_PTR(read); REAL_PTR(write); REAL_PTR(pread); REAL_PTR(pwrite); REAL_PTR(pread64);
REAL_PTR(pwrite64); REAL_PTR(readv); REAL_PTR(writev); REAL_PTR(preadv); REAL_PTR(pwritev);
REAL_PTR(preadv64); REAL_PTR(pwritev64); REAL_PTR(preadv2); REAL_PTR(pwritev2);
REAL_PTR(preadv64v2); REAL_PTR(pwritev64v2); REAL_PTR(fsync); REAL_PTR(fdatasync);

/* Resolved in the constructor, or lazily for a call from another library's constructor. */
#define REAL(name)                                                                           \
    (*({                                                                                     \
        if (!real_##name)                                                                    \
            real_##name = (__typeof__(real_##name))dlsym(RTLD_NEXT, #name);                  \
        real_##name;                                                                         \
    }))

/* ---- configuration and report ---- */

static unsigned long env_num(const char *name, unsigned long dflt)
{
    const char *s = getenv(name);
    if (!s || !*s)
        return dflt;
    char *end;
    unsigned long v = strtoul(s, &end, 0);
    return *end ? dflt : v;
}

static void parse_paths(void)
{
    /* strtok_r cuts the string it scans: scan a copy. */
    const char *s = getenv("SHORTIO_PATHS");
    static char buf[4096];
    if (!s || strlen(s) >= sizeof buf)
        return;
    strcpy(buf, s);
    for (char *save = NULL, *p = strtok_r(buf, ":", &save); p && cfg.nprefix < MAX_PREFIXES;
         p = strtok_r(NULL, ":", &save)) {
        cfg.prefix[cfg.nprefix] = p;
        cfg.prefix_len[cfg.nprefix++] = strlen(p);
    }
}

__attribute__((constructor)) static void shortio_init(void)
{
    (void)REAL(read), (void)REAL(write), (void)REAL(pread), (void)REAL(pwrite);
    (void)REAL(pread64), (void)REAL(pwrite64), (void)REAL(readv), (void)REAL(writev);
    (void)REAL(preadv), (void)REAL(pwritev), (void)REAL(preadv64), (void)REAL(pwritev64);
    (void)REAL(preadv2), (void)REAL(pwritev2), (void)REAL(preadv64v2), (void)REAL(pwritev64v2);
    (void)REAL(fsync), (void)REAL(fdatasync);
    parse_paths();
    cfg.fsync_delay_ms = env_num("SHORTIO_FSYNC_DELAY_MS", 0);
    cfg.fsync_delay_if = getenv("SHORTIO_FSYNC_DELAY_IF");
    cfg.fsync_mark = getenv("SHORTIO_FSYNC_MARK");
    cfg.rate = (unsigned)env_num("SHORTIO_RATE", 15);
    if (cfg.rate > 100)
        cfg.rate = 100;
    cfg.seed = env_num("SHORTIO_SEED", 1);
    cfg.short_max = env_num("SHORTIO_SHORT_MAX", 0);
    cfg.report = getenv("SHORTIO_REPORT");
    const char *m = getenv("SHORTIO_MODE");
    static const char *const names[] = {"mixed", "eintr", "short", "write0"};
    int i = 0;
    while (m && i < 4 && strcmp(m, names[i]))
        i++;
    if (i == 4) {
        static const char msg[] = "shortio: unknown SHORTIO_MODE: using mixed\n";
        (void)!REAL(write)(2, msg, sizeof msg - 1);
    }
    cfg.mode = i < 4 ? (enum mode)i : M_MIXED;
}

__attribute__((destructor)) static void shortio_report(void)
{
    if (!cfg.nprefix)
        return;
    uint64_t e = __atomic_load_n(&n_eintr, __ATOMIC_RELAXED);
    uint64_t s = __atomic_load_n(&n_short, __ATOMIC_RELAXED);
    uint64_t z = __atomic_load_n(&n_zero, __ATOMIC_RELAXED);
    char line[160];
    int n = snprintf(line, sizeof line, "pid=%d seed=%llu faults=%llu eintr=%llu short=%llu "
                     "zero=%llu calls=%llu\n", (int)getpid(), (unsigned long long)cfg.seed,
                     (unsigned long long)(e + s + z),
                     (unsigned long long)e, (unsigned long long)s, (unsigned long long)z,
                     (unsigned long long)__atomic_load_n(&n_calls, __ATOMIC_RELAXED));
    int fd = cfg.report ? open(cfg.report, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644) : 2;
    if (fd < 0)
        return;
    if (REAL(write)(fd, line, (size_t)n) < 0 && fd != 2)
        (void)REAL(write)(2, line, (size_t)n);
    if (fd != 2)
        close(fd);
}

/* ---- which descriptors, and when ---- */

/* A regular file under one of the prefixes?  Asked on every call: descriptors are reused,
 * and a test's few thousand calls can afford an fstat and a readlink each. */
static bool disturbed(int fd)
{
    struct stat st;
    if (!cfg.nprefix || fd < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode))
        return false;
    char link[32] = "/proc/self/fd/", digits[12], path[4096];
    int nd = 0;
    unsigned v = (unsigned)fd;
    do
        digits[nd++] = (char)('0' + v % 10);
    while ((v /= 10) && nd < 11);
    size_t l = 14;
    while (nd)
        link[l++] = digits[--nd];
    link[l] = '\0';
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n <= 0)
        return false;
    path[n] = '\0';
    for (int i = 0; i < cfg.nprefix; i++)
        if (!strncmp(path, cfg.prefix[i], cfg.prefix_len[i]))
            return true;
    return false;
}

static __thread uint64_t rng;

static uint64_t next_random(void)
{
    if (!rng) { /* splitmix64 of the seed and the thread's number: never 0 */
        uint64_t z = cfg.seed + 0x9e3779b97f4a7c15ULL *
                     (1 + __atomic_fetch_add(&n_threads, 1, __ATOMIC_RELAXED));
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
        rng = (z ^ (z >> 31)) | 1;
    }
    rng ^= rng << 13; /* xorshift64 */
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

enum fault { F_NONE, F_EINTR, F_SHORT, F_ZERO };

/* What to do with a call of len bytes on fd (is_write: it would change the file). */
static enum fault choose(int fd, size_t len, bool is_write, size_t *short_len)
{
    if (!len || !cfg.nprefix || !disturbed(fd))
        return F_NONE;
    __atomic_fetch_add(&n_calls, 1, __ATOMIC_RELAXED);
    uint64_t r = next_random();
    if (r % 100 >= cfg.rate)
        return F_NONE;
    r >>= 8;
    enum fault f;
    switch (cfg.mode) {
    case M_WRITE0: f = is_write ? F_ZERO : F_NONE; break;
    case M_EINTR: f = F_EINTR; break;
    case M_SHORT: f = len > 1 ? F_SHORT : F_NONE; break;
    default: /* a 1-byte call cannot be shorter: let it through instead, so that even a
              * rate of 100 lets every transfer make progress */
        f = !(r & 1) ? F_EINTR : len > 1 ? F_SHORT : F_NONE;
        break;
    }
    if (f == F_SHORT) { /* half of them 8 bytes at most: the tail of a header, say */
        size_t most = (r & 2) && len > 9 ? 8 : len - 1;
        if (cfg.short_max && most > cfg.short_max)
            most = cfg.short_max;
        *short_len = 1 + (size_t)((r >> 2) % most);
    }
    return f;
}

static void count(enum fault f)
{
    __atomic_fetch_add(f == F_EINTR ? &n_eintr : f == F_SHORT ? &n_short : &n_zero, 1,
                       __ATOMIC_RELAXED);
}

/* A fault that ends the call before it is made (counted): EINTR, or a return of 0. */
static bool fault_ends_call(enum fault f, ssize_t *ret)
{
    count(f);
    if (f == F_EINTR) {
        errno = EINTR;
        *ret = -1;
        return true;
    }
    if (f == F_ZERO) {
        *ret = 0;
        return true;
    }
    return false;
}

static size_t iov_total(const struct iovec *iov, int cnt)
{
    size_t t = 0;
    for (int i = 0; i < cnt; i++)
        t += iov[i].iov_len;
    return t;
}

/* Copy the first len bytes' worth of iov into out (at most MAX_IOV entries); the count. */
static int iov_trim(const struct iovec *iov, int cnt, size_t len, struct iovec *out)
{
    int n = 0;
    for (int i = 0; i < cnt && len && n < MAX_IOV; i++) {
        out[n] = iov[i];
        if (out[n].iov_len > len)
            out[n].iov_len = len;
        len -= out[n++].iov_len;
    }
    return n;
}

/* ---- the wrappers ---- */

/* Plain calls: args is the call as made, shortargs the same with n bytes cut to s. */
#define PLAIN(decl, is_write, call, args, shortargs)                                         \
    EXPORT ssize_t decl                                                                      \
    {                                                                                        \
        size_t s = 0;                                                                        \
        enum fault f = choose(fd, n, is_write, &s);                                          \
        if (f == F_NONE)                                                                     \
            return REAL(call) args;                                                          \
        ssize_t early;                                                                       \
        if (fault_ends_call(f, &early))                                                      \
            return early;                                                                    \
        return REAL(call) shortargs;                                                         \
    }

PLAIN(read(int fd, void *buf, size_t n), false, read, (fd, buf, n), (fd, buf, s))
PLAIN(write(int fd, const void *buf, size_t n), true, write, (fd, buf, n), (fd, buf, s))
PLAIN(pread(int fd, void *buf, size_t n, off_t off), false, pread, (fd, buf, n, off),
      (fd, buf, s, off))
PLAIN(shortio_pwrite(int fd, const void *buf, size_t n, off_t off), true, pwrite, (fd, buf, n, off),
      (fd, buf, s, off))
PLAIN(pread64(int fd, void *buf, size_t n, off64_t off), false, pread64, (fd, buf, n, off),
      (fd, buf, s, off))
PLAIN(shortio_pwrite64(int fd, const void *buf, size_t n, off64_t off), true, pwrite64,
      (fd, buf, n, off), (fd, buf, s, off))

/* SHORTIO_EIO_AT: does this positional write fail (the first one over the offset)? */
static bool eio_at(off64_t off, size_t n)
{
    static int state; /* 0: not read yet, 1: armed, 2: off or spent */
    static uint64_t at;
    if (__atomic_load_n(&state, __ATOMIC_ACQUIRE) == 0) {
        const char *s = getenv("SHORTIO_EIO_AT");
        at = s && *s ? strtoull(s, NULL, 0) : 0;
        __atomic_store_n(&state, s && *s ? 1 : 2, __ATOMIC_RELEASE);
    }
    int armed = 1;
    if (!n || (uint64_t)off > at || at - (uint64_t)off >= n ||
        !__atomic_compare_exchange_n(&state, &armed, 2, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
        return false;
    errno = EIO;
    return true;
}

EXPORT ssize_t pwrite(int fd, const void *buf, size_t n, off_t off)
{
    return eio_at(off, n) ? -1 : shortio_pwrite(fd, buf, n, off);
}

EXPORT ssize_t pwrite64(int fd, const void *buf, size_t n, off64_t off)
{
    return eio_at(off, n) ? -1 : shortio_pwrite64(fd, buf, n, off);
}


/* Vectored calls: the same, with the list trimmed to the short length; the arguments
 * after the list (offset, flags) follow it unchanged. */
#define VEC(decl, is_write, call, ...)                                                       \
    EXPORT ssize_t decl                                                                      \
    {                                                                                        \
        size_t s = 0, n = cnt > 0 ? iov_total(iov, cnt) : 0;                                 \
        enum fault f = choose(fd, n, is_write, &s);                                          \
        if (f == F_NONE)                                                                     \
            return REAL(call)(fd, iov, cnt, ##__VA_ARGS__);                                  \
        ssize_t early;                                                                       \
        if (fault_ends_call(f, &early))                                                      \
            return early;                                                                    \
        struct iovec t[MAX_IOV];                                                             \
        int tc = iov_trim(iov, cnt, s, t);                                                   \
        return REAL(call)(fd, t, tc, ##__VA_ARGS__);                                         \
    }

VEC(readv(int fd, const struct iovec *iov, int cnt), false, readv)
VEC(writev(int fd, const struct iovec *iov, int cnt), true, writev)
VEC(preadv(int fd, const struct iovec *iov, int cnt, off_t off), false, preadv, off)
VEC(pwritev(int fd, const struct iovec *iov, int cnt, off_t off), true, pwritev, off)
VEC(preadv64(int fd, const struct iovec *iov, int cnt, off64_t off), false, preadv64, off)
VEC(pwritev64(int fd, const struct iovec *iov, int cnt, off64_t off), true, pwritev64, off)
VEC(preadv2(int fd, const struct iovec *iov, int cnt, off_t off, int fl), false, preadv2, off,
    fl)
VEC(pwritev2(int fd, const struct iovec *iov, int cnt, off_t off, int fl), true, pwritev2, off,
    fl)
VEC(preadv64v2(int fd, const struct iovec *iov, int cnt, off64_t off, int fl), false,
    preadv64v2, off, fl)
VEC(pwritev64v2(int fd, const struct iovec *iov, int cnt, off64_t off, int fl), true,
    pwritev64v2, off, fl)

/* ---- slow flushes (SHORTIO_FSYNC_DELAY_MS) ---- */

/* Sleep before an fsync or fdatasync of a disturbed file (the whole delay, through EINTR). */
static void fsync_delay(int fd)
{
    if (!cfg.fsync_delay_ms || !disturbed(fd))
        return;
    if (cfg.fsync_delay_if && *cfg.fsync_delay_if && access(cfg.fsync_delay_if, F_OK) < 0)
        return;
    if (cfg.fsync_mark && *cfg.fsync_mark) {
        int m = open(cfg.fsync_mark, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (m >= 0) {
            char line[64];
            int n = snprintf(line, sizeof line, "fsync pid=%d fd=%d\n", (int)getpid(), fd);
            (void)!REAL(write)(m, line, (size_t)n);
            close(m);
        }
    }
    struct timespec ts = {(time_t)(cfg.fsync_delay_ms / 1000),
                          (long)(cfg.fsync_delay_ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

EXPORT int fsync(int fd)
{
    int e = errno;
    fsync_delay(fd);
    errno = e;
    return REAL(fsync)(fd);
}

EXPORT int fdatasync(int fd)
{
    int e = errno;
    fsync_delay(fd);
    errno = e;
    return REAL(fdatasync)(fd);
}
