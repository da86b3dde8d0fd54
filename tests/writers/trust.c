/* trust.c: writer programs for tests/trust-shim.bats, one per subcommand.  Each writes
 * random bytes (never what the target already holds) to the source in a way the shim
 * must either track or report as untrusted.  Messages go to stderr (stdout may be the
 * source).  Exit 0 on success, 77 when the kernel or the file system lacks what the
 * subcommand needs (the test skips, naming the reason printed on stderr), 1 otherwise.
 *
 * Where a write could escape the shim, the subcommand also makes one ordinary tracked
 * pwrite ("poke") right after it: the follower's bypass detection (size or change time
 * moved while no shim write happened) then cannot catch the escaped write by luck, so a
 * shim that misses it leaves a stale target every time, not only now and then.
 *
 *   trust sendfd SOCK SRC                  (not under the shim) listen on SOCK, open SRC,
 *                                          pass the descriptor to the first client
 *   trust recvfd SOCK SRC OFF LEN [mmsg]   connect to SOCK, receive a descriptor with
 *                                          recvmsg (recvmmsg), pwrite LEN at OFF through it
 *   trust openat2 SRC OFF LEN              syscall(SYS_openat2), pwrite
 *   trust holdfd SRC INFO                  (not under the shim) open SRC, write "PID FD" to
 *                                          INFO, sleep until killed
 *   trust getfd PID FD SRC OFF LEN         pidfd_open + pidfd_getfd (syscall), pwrite
 *   trust handle-probe SRC                 can name_to_handle_at/open_by_handle_at open SRC?
 *   trust handle SRC OFF LEN               open_by_handle_at, pwrite
 *   trust stdout OFF LEN POKE              lseek(1, OFF), printf LEN random hex characters,
 *                                          fflush; then pwrite 4 KiB at POKE on fd 1
 *   trust dprintf SRC OFF LEN              lseek, dprintf LEN hex characters at OFF
 *   trust spawn SRC POKE LEN               posix_spawn /bin/true with an addopen(SRC,
 *                                          O_WRONLY|O_TRUNC) file action; a thread pwrites
 *                                          LEN at POKE the moment SRC reads empty
 *   trust noappend-probe SCRATCH           does pwritev2(RWF_NOAPPEND) on an O_APPEND fd
 *                                          write at the offset given?
 *   trust noappend SRC OFF LEN             pwritev2(RWF_NOAPPEND) at OFF on an O_APPEND fd
 *   trust blkdev DEV                       BLKZEROOUT, BLKDISCARD, fallocate ZERO_RANGE and
 *                                          PUNCH_HOLE (KEEP_SIZE) on 1 MiB ranges; prints
 *                                          "OP OFFSET LENGTH ok|unsupported" on stdout
 *   trust exec SRC DST PIDFILE PROG [ARG...]  a thread pwrites 64 MiB at 0 again and again;
 *                                          once the follower copied the first write to DST,
 *                                          the main thread execs PROG while the thread is
 *                                          inside the second
 *   trust cancel SRC DST STATUSFILE        a thread pwrites 16 MiB at 0 again and again;
 *                                          once the follower copied the first write, the
 *                                          main thread cancels it inside the second, says
 *                                          "cancelled" in STATUSFILE and sleeps
 *   trust mixed SRC SCRATCHDIR DST         a bit of everything the shim tracks; ends with
 *                                          a shared mapping it never unmaps, stored to
 *                                          after the follower copied (DST) what its msync
 *                                          marked
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <linux/openat2.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef RWF_NOAPPEND
#define RWF_NOAPPEND 0x00000020
#endif

#define KiB 1024L
#define MiB (1024L * 1024)

extern char **environ;

static void die(const char *fmt, ...)
{
    int e = errno;
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "trust: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, ": %s\n", strerror(e));
    va_end(ap);
    exit(1);
}

/* Exit 77: the test skips with this reason. */
static void unsupported(const char *fmt, ...)
{
    int e = errno;
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "unsupported: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, ": %s\n", strerror(e));
    va_end(ap);
    exit(77);
}

static long num(const char *s)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 0);
    if (errno || *end || v < 0) {
        fprintf(stderr, "trust: '%s' is not a number\n", s);
        exit(2);
    }
    return v;
}

static void fill_random(void *p, size_t n)
{
    uint8_t *b = p;
    while (n) {
        ssize_t r = getrandom(b, n, 0);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            die("getrandom");
        }
        b += r;
        n -= (size_t)r;
    }
}

static void *random_buf(size_t n)
{
    void *p;
    if (posix_memalign(&p, 4096, n ? n : 1))
        die("posix_memalign");
    fill_random(p, n);
    return p;
}

/* n random hex characters, NUL-terminated */
static char *random_hex(size_t n)
{
    static const char hex[] = "0123456789abcdef";
    uint8_t *r = random_buf(n);
    char *s = malloc(n + 1);
    if (!s)
        die("malloc");
    for (size_t i = 0; i < n; i++)
        s[i] = hex[r[i] & 15];
    s[n] = '\0';
    free(r);
    return s;
}

static void pwrite_all(int fd, const void *buf, size_t n, off_t off, const char *what)
{
    const char *p = buf;
    while (n) {
        ssize_t r = pwrite(fd, p, n, off);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            die("%s: pwrite at %lld", what, (long long)off);
        }
        p += r;
        n -= (size_t)r;
        off += r;
    }
}

static void pwrite_random(int fd, off_t off, size_t len, const char *what)
{
    void *b = random_buf(len);
    pwrite_all(fd, b, len, off, what);
    free(b);
}

/* The ordinary tracked write that follows an escaping one (see the top of the file). */
static void poke(const char *src, off_t off)
{
    int fd = open(src, O_RDWR | O_CLOEXEC);
    if (fd < 0)
        die("%s", src);
    pwrite_random(fd, off, 4096, "poke");
    close(fd);
}

static void msleep(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

static void write_file(const char *path, const char *text)
{
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f || fputs(text, f) < 0 || fclose(f) != 0 || rename(tmp, path) < 0)
        die("%s", path);
}

/* ---- descriptors the shim never saw ------------------------------------------------ */

static int cmd_sendfd(char **a)
{
    int ls = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", a[0]);
    unlink(a[0]);
    if (ls < 0 || bind(ls, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(ls, 1) < 0)
        die("%s", a[0]);
    int c = accept(ls, NULL, NULL);
    if (c < 0)
        die("accept");
    int fd = open(a[1], O_RDWR | O_CLOEXEC);
    if (fd < 0)
        die("%s", a[1]);
    char byte = 'F';
    struct iovec iov = {&byte, 1};
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } u;
    memset(&u, 0, sizeof u);
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf,
                       .msg_controllen = sizeof u.buf};
    struct cmsghdr *cm = CMSG_FIRSTHDR(&m);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cm), &fd, sizeof fd);
    if (sendmsg(c, &m, 0) != 1)
        die("sendmsg");
    /* wait for the receiver to be done with it */
    if (read(c, &byte, 1) < 0)
        die("read");
    close(c);
    close(ls);
    unlink(a[0]);
    return 0;
}

static int cmd_recvfd(int n, char **a)
{
    bool mmsg = n > 4 && !strcmp(a[4], "mmsg");
    off_t off = num(a[2]);
    size_t len = (size_t)num(a[3]);
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", a[0]);
    if (s < 0 || connect(s, (struct sockaddr *)&sa, sizeof sa) < 0)
        die("%s", a[0]);
    char byte;
    struct iovec iov = {&byte, 1};
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } u;
    memset(&u, 0, sizeof u);
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf,
                       .msg_controllen = sizeof u.buf};
    if (mmsg) {
        struct mmsghdr mm = {.msg_hdr = m};
        if (recvmmsg(s, &mm, 1, 0, NULL) != 1)
            die("recvmmsg");
        m = mm.msg_hdr;
    } else if (recvmsg(s, &m, 0) != 1) {
        die("recvmsg");
    }
    struct cmsghdr *cm = CMSG_FIRSTHDR(&m);
    if (!cm || cm->cmsg_type != SCM_RIGHTS) {
        errno = EPROTO;
        die("no descriptor received");
    }
    int fd;
    memcpy(&fd, CMSG_DATA(cm), sizeof fd);
    pwrite_random(fd, off, len, "received fd");
    poke(a[1], 0);
    if (write(s, "x", 1) < 0)
        die("write");
    close(fd);
    close(s);
    return 0;
}

static int cmd_openat2(char **a)
{
    struct open_how how = {.flags = O_RDWR | O_CLOEXEC, .resolve = RESOLVE_NO_MAGICLINKS};
    int fd = (int)syscall(SYS_openat2, AT_FDCWD, a[0], &how, sizeof how);
    if (fd < 0 && errno == ENOSYS)
        unsupported("openat2");
    if (fd < 0)
        die("openat2 %s", a[0]);
    pwrite_random(fd, num(a[1]), (size_t)num(a[2]), "openat2 fd");
    poke(a[0], 0);
    close(fd);
    return 0;
}

static int cmd_holdfd(char **a)
{
    int fd = open(a[0], O_RDWR | O_CLOEXEC);
    if (fd < 0)
        die("%s", a[0]);
    char info[64];
    snprintf(info, sizeof info, "%d %d\n", (int)getpid(), fd);
    write_file(a[1], info);
    for (;;)
        pause();
    return 0;
}

static int cmd_getfd(char **a)
{
    int pid = (int)num(a[0]), tfd = (int)num(a[1]);
    int pfd = (int)syscall(SYS_pidfd_open, pid, 0);
    if (pfd < 0 && errno == ENOSYS)
        unsupported("pidfd_open");
    if (pfd < 0)
        die("pidfd_open %d", pid);
    int fd = (int)syscall(SYS_pidfd_getfd, pfd, tfd, 0);
    if (fd < 0 && errno == ENOSYS)
        unsupported("pidfd_getfd");
    if (fd < 0 && errno == EPERM)
        unsupported("pidfd_getfd of pid %d (ptrace access refused)", pid);
    if (fd < 0)
        die("pidfd_getfd %d %d", pid, tfd);
    pwrite_random(fd, num(a[3]), (size_t)num(a[4]), "pidfd_getfd fd");
    poke(a[2], 0);
    close(fd);
    close(pfd);
    return 0;
}

/* open_by_handle_at needs a descriptor on the same file system: the source's directory */
static int open_handle(const char *src, bool probe)
{
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", src);
    char *slash = strrchr(dir, '/');
    if (slash == dir)
        dir[1] = '\0';
    else if (slash)
        *slash = '\0';
    else
        strcpy(dir, ".");
    struct file_handle *fh = malloc(sizeof *fh + MAX_HANDLE_SZ);
    if (!fh)
        die("malloc");
    fh->handle_bytes = MAX_HANDLE_SZ;
    int mount_id;
    if (name_to_handle_at(AT_FDCWD, src, fh, &mount_id, 0) < 0) {
        if (errno == EOPNOTSUPP || errno == ENOSYS || errno == EOVERFLOW)
            unsupported("name_to_handle_at %s", src);
        die("name_to_handle_at %s", src);
    }
    int mfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (mfd < 0)
        die("%s", dir);
    int fd = open_by_handle_at(mfd, fh, O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        if (probe && (errno == EOPNOTSUPP || errno == ESTALE || errno == EPERM || errno == EINVAL))
            unsupported("open_by_handle_at %s", src);
        die("open_by_handle_at %s", src);
    }
    close(mfd);
    free(fh);
    return fd;
}

static int cmd_handle_probe(char **a)
{
    close(open_handle(a[0], true));
    return 0;
}

static int cmd_handle(char **a)
{
    int fd = open_handle(a[0], false);
    pwrite_random(fd, num(a[1]), (size_t)num(a[2]), "open_by_handle_at fd");
    poke(a[0], 0);
    close(fd);
    return 0;
}

/* ---- glibc's internal writes -------------------------------------------------------- */

static int cmd_stdout(char **a)
{
    off_t off = num(a[0]), pk = num(a[2]);
    char *s = random_hex((size_t)num(a[1]));
    if (lseek(1, off, SEEK_SET) != off)
        die("lseek stdout");
    if (printf("%s", s) < 0 || fflush(stdout) != 0)
        die("printf");
    pwrite_random(1, pk, 4096, "stdout poke");
    free(s);
    return 0;
}

static int cmd_dprintf(char **a)
{
    off_t off = num(a[1]);
    char *s = random_hex((size_t)num(a[2]));
    int fd = open(a[0], O_RDWR | O_CLOEXEC);
    if (fd < 0)
        die("%s", a[0]);
    if (lseek(fd, off, SEEK_SET) != off)
        die("lseek");
    if (dprintf(fd, "%s", s) != (int)strlen(s))
        die("dprintf");
    pwrite_random(fd, 0, 4096, "dprintf poke");
    free(s);
    close(fd);
    return 0;
}

/* The write that follows the spawn's truncation: a thread of ours (the vfork child stops
 * only the thread that spawns) waits for the source to read empty and writes at once, so
 * that no follower can see the empty file in between and happen to mirror it. */
struct after_trunc {
    int fd;
    off_t off;
    size_t len;
    void *buf;
};

static void *write_after_trunc(void *arg)
{
    struct after_trunc *w = arg;
    struct stat st;
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        if (fstat(w->fd, &st) < 0)
            die("fstat");
        if (st.st_size == 0)
            break;
        clock_gettime(CLOCK_MONOTONIC, &t);
        if (t.tv_sec - t0.tv_sec > 10) {
            errno = ETIMEDOUT;
            die("the spawn never truncated the source");
        }
    }
    pwrite_all(w->fd, w->buf, w->len, w->off, "after the spawn's truncation");
    return NULL;
}

static int cmd_spawn(char **a)
{
    struct after_trunc w = {.off = num(a[1]), .len = (size_t)num(a[2])};
    w.buf = random_buf(w.len);
    w.fd = open(a[0], O_RDWR | O_CLOEXEC);
    if (w.fd < 0)
        die("%s", a[0]);
    pthread_t t;
    if (pthread_create(&t, NULL, write_after_trunc, &w))
        die("pthread_create");
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 5, a[0], O_WRONLY | O_TRUNC, 0);
    char *argv[] = {"true", NULL};
    pid_t pid;
    int r = posix_spawn(&pid, "/bin/true", &fa, NULL, argv, environ);
    if (r) {
        errno = r;
        die("posix_spawn /bin/true");
    }
    pthread_join(t, NULL);
    int st;
    if (waitpid(pid, &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st))
        die("child");
    posix_spawn_file_actions_destroy(&fa);
    close(w.fd);
    free(w.buf);
    return 0;
}

/* ---- pwritev2(RWF_NOAPPEND) ---------------------------------------------------------- */

static int cmd_noappend_probe(char **a)
{
    int fd = open(a[0], O_RDWR | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0600);
    if (fd < 0)
        die("%s", a[0]);
    if (write(fd, "AAAAAAAA", 8) != 8)
        die("write");
    struct iovec iov = {"BB", 2};
    ssize_t r = pwritev2(fd, &iov, 1, 0, RWF_NOAPPEND);
    if (r < 0 && (errno == EOPNOTSUPP || errno == EINVAL || errno == ENOSYS))
        unsupported("pwritev2(RWF_NOAPPEND)");
    if (r != 2)
        die("pwritev2");
    char got[16] = {0};
    if (pread(fd, got, sizeof got, 0) != 8 || memcmp(got, "BBAAAAAA", 8)) {
        errno = EOPNOTSUPP;
        unsupported("pwritev2(RWF_NOAPPEND) appended (the file reads '%.10s')", got);
    }
    close(fd);
    unlink(a[0]);
    return 0;
}

static int cmd_noappend(char **a)
{
    off_t off = num(a[1]);
    size_t len = (size_t)num(a[2]);
    void *b = random_buf(len);
    int fd = open(a[0], O_WRONLY | O_APPEND | O_CLOEXEC);
    if (fd < 0)
        die("%s", a[0]);
    struct iovec iov = {b, len};
    ssize_t r = pwritev2(fd, &iov, 1, off, RWF_NOAPPEND);
    if (r != (ssize_t)len)
        die("pwritev2(RWF_NOAPPEND)");
    close(fd);
    free(b);
    return 0;
}

/* ---- block devices ------------------------------------------------------------------ */

static void report(const char *op, uint64_t off, uint64_t len, int r)
{
    if (r < 0 && errno != EOPNOTSUPP && errno != ENOTTY && errno != EINVAL)
        die("%s at %llu", op, (unsigned long long)off);
    printf("%s %llu %llu %s\n", op, (unsigned long long)off, (unsigned long long)len,
           r < 0 ? "unsupported" : "ok");
    fflush(stdout);
}

static int cmd_blkdev(char **a)
{
    int fd = open(a[0], O_RDWR | O_CLOEXEC);
    if (fd < 0)
        die("%s", a[0]);
    uint64_t r1[2] = {1 * MiB, 1 * MiB}, r2[2] = {4 * MiB, 1 * MiB};
    report("BLKZEROOUT", r1[0], r1[1], ioctl(fd, BLKZEROOUT, r1));
    report("BLKDISCARD", r2[0], r2[1], ioctl(fd, BLKDISCARD, r2));
    report("ZERO_RANGE", 8 * MiB, 1 * MiB,
           fallocate(fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, 8 * MiB, 1 * MiB));
    report("PUNCH_HOLE", 12 * MiB, 1 * MiB,
           fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 12 * MiB, 1 * MiB));
    close(fd);
    return 0;
}

/* ---- threads killed or cancelled inside a write --------------------------------------- */

static int wfd;
static size_t wlen;
static uint8_t *wbuf;
static int in_write, writes_done, writes_allowed = 1 << 30;

static void *big_writer(void *arg)
{
    (void)arg;
    for (int it = 1;; it++) {
        while (__atomic_load_n(&writes_allowed, __ATOMIC_SEQ_CST) < it)
            sched_yield();
        /* new bytes each round: one byte per 4 KiB page changes */
        for (size_t p = 0; p < wlen; p += 4096)
            wbuf[p] ^= (uint8_t)(it * 151u + 1u);
        __atomic_store_n(&in_write, 1, __ATOMIC_SEQ_CST);
        ssize_t r = pwrite(wfd, wbuf, wlen, 0);
        __atomic_store_n(&in_write, 0, __ATOMIC_SEQ_CST);
        if (r < 0)
            die("pwrite");
        __atomic_fetch_add(&writes_done, 1, __ATOMIC_SEQ_CST);
    }
    return NULL;
}

/* Wait until the thread finished `done` writes and is inside the next one, and some way
 * into it (a write of this size takes several milliseconds). */
static void wait_inside(int done)
{
    while (__atomic_load_n(&writes_done, __ATOMIC_SEQ_CST) < done ||
           !__atomic_load_n(&in_write, __ATOMIC_SEQ_CST))
        sched_yield();
    msleep(1);
}

static void wait_copied(int fd, const char *dst, off_t off, size_t len);

static int cmd_exec(char **a)
{
    wfd = open(a[0], O_RDWR | O_CLOEXEC);
    if (wfd < 0)
        die("%s", a[0]);
    wlen = 64 * MiB;
    wbuf = random_buf(wlen);
    writes_allowed = 1;
    pthread_t t;
    if (pthread_create(&t, NULL, big_writer, NULL))
        die("pthread_create");
    char pid[32];
    snprintf(pid, sizeof pid, "%d\n", (int)getpid());
    write_file(a[2], pid);
    /* the first write is marked and copied: the target holds it */
    while (__atomic_load_n(&writes_done, __ATOMIC_SEQ_CST) < 1)
        sched_yield();
    wait_copied(wfd, a[1], 0, wlen);
    __atomic_store_n(&writes_allowed, 1 << 30, __ATOMIC_SEQ_CST);
    wait_inside(1);
    execv(a[3], a + 3);
    die("exec %s", a[3]);
    return 1;
}

static void *cancel_writer(void *arg)
{
    (void)arg;
    int old;
    pthread_setcanceltype(PTHREAD_CANCEL_DEFERRED, &old);
    for (int it = 1;; it++) {
        while (__atomic_load_n(&writes_allowed, __ATOMIC_SEQ_CST) < it)
            sched_yield();
        for (size_t p = 0; p < wlen; p += 4096)
            wbuf[p] ^= (uint8_t)(it * 151u + 1u);
        __atomic_store_n(&in_write, 1, __ATOMIC_SEQ_CST);
        ssize_t r = pwrite(wfd, wbuf, wlen, 0); /* a cancellation point */
        __atomic_store_n(&in_write, 0, __ATOMIC_SEQ_CST);
        if (r < 0)
            die("pwrite");
        __atomic_fetch_add(&writes_done, 1, __ATOMIC_SEQ_CST);
    }
    return NULL;
}

static int cmd_cancel(char **a)
{
    wfd = open(a[0], O_RDWR | O_CLOEXEC);
    if (wfd < 0)
        die("%s", a[0]);
    wlen = 16 * MiB;
    wbuf = random_buf(wlen);
    writes_allowed = 1;
    pthread_t t;
    if (pthread_create(&t, NULL, cancel_writer, NULL))
        die("pthread_create");
    /* the first write is marked and copied; the thread is cancelled inside the second */
    while (__atomic_load_n(&writes_done, __ATOMIC_SEQ_CST) < 1)
        sched_yield();
    wait_copied(wfd, a[1], 0, wlen);
    __atomic_store_n(&writes_allowed, 1 << 30, __ATOMIC_SEQ_CST);
    wait_inside(1);
    pthread_cancel(t);
    void *res;
    pthread_join(t, &res);
    if (res != PTHREAD_CANCELED) {
        errno = EPROTO;
        die("the writer thread was not cancelled");
    }
    char msg[64];
    snprintf(msg, sizeof msg, "cancelled after %d writes\n", writes_done);
    write_file(a[2], msg);
    for (;;)
        pause();
    return 0;
}

/* ---- the mixed workload ------------------------------------------------------------- */

static int xfer_src(const char *dir, size_t len)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/xfer.bin", dir);
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        die("%s", path);
    pwrite_random(fd, 0, len, "xfer source");
    return fd;
}

/* fallocate with a mode the file system may not have: skipped when it says so */
static void try_fallocate(int fd, int mode, off_t off, off_t len, const char *name)
{
    if (fallocate(fd, mode, off, len) == 0)
        fprintf(stderr, "mixed: fallocate %s ok\n", name);
    else if (errno == EOPNOTSUPP || errno == EINVAL || errno == ENOSYS)
        fprintf(stderr, "mixed: fallocate %s not supported here (%s)\n", name, strerror(errno));
    else
        die("fallocate %s", name);
}

/* Wait (10 s at most) until the target holds the source's bytes [off, off+len). */
static void wait_copied(int fd, const char *dst, off_t off, size_t len)
{
    uint8_t *x = malloc(len), *y = malloc(len);
    if (!x || !y)
        die("malloc");
    for (int i = 0; i < 1000; i++) {
        int t = open(dst, O_RDONLY | O_CLOEXEC);
        bool same = t >= 0 && pread(fd, x, len, off) == (ssize_t)len &&
                    pread(t, y, len, off) == (ssize_t)len && !memcmp(x, y, len);
        if (t >= 0)
            close(t);
        if (same) {
            free(x);
            free(y);
            return;
        }
        msleep(10);
    }
    errno = ETIMEDOUT;
    die("the follower never copied [%lld, +%zu) to %s", (long long)off, len, dst);
}

static int cmd_mixed(char **a)
{
    const char *src = a[0];
    int fd = open(src, O_RDWR | O_CLOEXEC);
    if (fd < 0)
        die("%s", src);
    struct stat st;
    if (fstat(fd, &st) < 0)
        die("fstat");
    off_t size = st.st_size; /* 32 MiB, random data: changes below land on old data */
    long bs = st.st_blksize > 0 ? st.st_blksize : 4096;
    if (bs < 4096)
        bs = 4096;

    /* pwrite, pwritev, pwritev2 without flags */
    pwrite_random(fd, 1 * MiB + 512, 100 * KiB, "pwrite");
    void *v1 = random_buf(3000), *v2 = random_buf(70 * KiB), *v3 = random_buf(5);
    struct iovec iov[3] = {{v1, 3000}, {v2, 70 * KiB}, {v3, 5}};
    if (pwritev(fd, iov, 3, 2 * MiB - 1000) < 0)
        die("pwritev");
    if (pwritev2(fd, iov, 3, 2 * MiB + 300 * KiB, 0) < 0)
        die("pwritev2");
    /* writev and write at the file position */
    if (lseek(fd, 3 * MiB + 7, SEEK_SET) < 0 || writev(fd, iov, 3) < 0)
        die("writev");
    if (write(fd, v2, 10 * KiB) < 0)
        die("write");

    /* dup'd descriptors, then the original closed */
    int d1 = dup(fd), d2 = fcntl(fd, F_DUPFD_CLOEXEC, 40), d3 = dup3(fd, 50, O_CLOEXEC);
    if (d1 < 0 || d2 < 0 || d3 < 0)
        die("dup");
    pwrite_random(d1, 4 * MiB, 64 * KiB, "dup");
    pwrite_random(d2, 4 * MiB + 200 * KiB, 64 * KiB, "F_DUPFD_CLOEXEC");
    pwrite_random(d3, 4 * MiB + 400 * KiB, 64 * KiB, "dup3");
    close(fd);
    fd = d1;

    /* O_APPEND, also switched on with F_SETFL */
    int afd = open(src, O_WRONLY | O_APPEND | O_CLOEXEC);
    if (afd < 0)
        die("%s O_APPEND", src);
    if (write(afd, v2, 33 * KiB) != 33 * KiB)
        die("append");
    int sfl = fcntl(d2, F_GETFL);
    if (fcntl(d2, F_SETFL, sfl | O_APPEND) < 0 || write(d2, v1, 3000) != 3000 ||
        fcntl(d2, F_SETFL, sfl) < 0)
        die("F_SETFL O_APPEND write");
    close(afd);

    /* ftruncate: grow, write near the new end, shrink below the old size, grow again
     * (the range between reads zeros now) */
    if (fstat(fd, &st) < 0)
        die("fstat");
    size = st.st_size;
    if (ftruncate(fd, size + 3 * MiB) < 0)
        die("ftruncate grow");
    pwrite_random(fd, size + 2 * MiB, 64 * KiB, "after grow");
    if (ftruncate(fd, 30 * MiB + 12345) < 0)
        die("ftruncate shrink");
    if (ftruncate(fd, 31 * MiB) < 0)
        die("ftruncate grow again");
    size = 31 * MiB;

    /* fallocate, every mode the file system has */
    try_fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 5 * MiB + bs, 8 * bs, "PUNCH_HOLE");
    try_fallocate(fd, FALLOC_FL_ZERO_RANGE, 6 * MiB + 100, 50 * KiB, "ZERO_RANGE");
    try_fallocate(fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, size - 64 * KiB, 1 * MiB,
                  "ZERO_RANGE|KEEP_SIZE past the end");
    try_fallocate(fd, 0, size, 256 * KiB, "mode 0 (grows the file)");
    try_fallocate(fd, FALLOC_FL_KEEP_SIZE, 7 * MiB, 256 * KiB, "KEEP_SIZE");
    try_fallocate(fd, FALLOC_FL_COLLAPSE_RANGE, 9 * MiB, 16 * bs, "COLLAPSE_RANGE");
    try_fallocate(fd, FALLOC_FL_INSERT_RANGE, 10 * MiB, 8 * bs, "INSERT_RANGE");
    if (posix_fallocate(fd, 11 * MiB, 64 * KiB))
        fprintf(stderr, "mixed: posix_fallocate failed\n");

    /* sendfile, copy_file_range (explicit and file-position offsets), splice */
    int in = xfer_src(a[1], 1 * MiB);
    off_t ioff = 1000;
    if (lseek(fd, 12 * MiB + 3, SEEK_SET) < 0 || sendfile(fd, in, &ioff, 200 * KiB) < 0)
        die("sendfile");
    loff_t cin = 4096, cout = 13 * MiB - 4096;
    if (copy_file_range(in, &cin, fd, &cout, 300 * KiB, 0) < 0)
        die("copy_file_range");
    cin = 8192;
    if (lseek(fd, 14 * MiB, SEEK_SET) < 0 || copy_file_range(in, &cin, fd, NULL, 100 * KiB, 0) < 0)
        die("copy_file_range at the file position");
    int p[2];
    if (pipe(p) < 0 || write(p[1], v2, 60 * KiB) != 60 * KiB)
        die("pipe");
    loff_t sout = 15 * MiB + 11;
    if (splice(p[0], NULL, fd, &sout, 60 * KiB, 0) < 0)
        die("splice");
    close(p[0]);
    close(p[1]);
    close(in);

    /* O_DIRECT, aligned */
    int dfd = open(src, O_RDWR | O_DIRECT | O_CLOEXEC);
    if (dfd < 0 && errno == EINVAL) {
        fprintf(stderr, "mixed: O_DIRECT not supported here\n");
    } else if (dfd < 0) {
        die("%s O_DIRECT", src);
    } else {
        void *ab = random_buf(128 * KiB);
        ssize_t r = pwrite(dfd, ab, 128 * KiB, 16 * MiB);
        if (r < 0 && errno == EINVAL)
            fprintf(stderr, "mixed: O_DIRECT pwrite refused (EINVAL)\n");
        else if (r != 128 * KiB)
            die("O_DIRECT pwrite");
        free(ab);
        close(dfd);
    }

    /* a writable shared mapping: stores, msync, more stores, munmap */
    size_t ml = 1 * MiB;
    uint8_t *m = mmap(NULL, ml, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 17 * MiB);
    if (m == MAP_FAILED)
        die("mmap");
    fill_random(m, 300 * KiB);
    if (msync(m, ml, MS_SYNC) < 0)
        die("msync");
    fill_random(m + 700 * KiB, 200 * KiB);
    if (munmap(m, ml) < 0)
        die("munmap");

    /* a child writes too: through the inherited descriptor and one of its own */
    pid_t pid = fork();
    if (pid < 0)
        die("fork");
    if (pid == 0) {
        pwrite_random(fd, 18 * MiB, 64 * KiB, "child");
        int cfd = open(src, O_RDWR | O_CLOEXEC);
        if (cfd < 0)
            die("child open");
        pwrite_random(cfd, 19 * MiB + 1, 64 * KiB, "child's own fd");
        _exit(0);
    }
    int wst;
    if (waitpid(pid, &wst, 0) < 0 || !WIFEXITED(wst) || WEXITSTATUS(wst))
        die("child");

    pwrite_random(fd, 20 * MiB, 4096, "last");
    close(d2);
    close(d3);
    free(v1);
    free(v2);
    free(v3);

    /* A mapping left in place at exit, as most programs do: stores after its msync, once
     * the follower has copied what the msync marked, reach the file with no call at all.
     * Only the follower's quiesce can find them (the writer's published mappings). */
    size_t kl = 256 * KiB;
    off_t ko = 21 * MiB;
    uint8_t *k = mmap(NULL, kl, PROT_READ | PROT_WRITE, MAP_SHARED, fd, ko);
    if (k == MAP_FAILED)
        die("mmap (kept)");
    fill_random(k, kl);
    if (msync(k, kl, MS_SYNC) < 0)
        die("msync (kept)");
    wait_copied(fd, a[2], ko, kl);
    fill_random(k + 64 * KiB, 64 * KiB);
    close(fd);
    return 0; /* no munmap: exit unmaps it */
}

int main(int argc, char **argv)
{
    if (argc < 2)
        goto usage;
    const char *c = argv[1];
    int n = argc - 2;
    char **a = argv + 2;
#define CMD(name, min, call)                                                                 \
    if (!strcmp(c, name)) {                                                                  \
        if (n < (min))                                                                       \
            goto usage;                                                                      \
        return call;                                                                         \
    }
    CMD("sendfd", 2, cmd_sendfd(a));
    CMD("recvfd", 4, cmd_recvfd(n, a));
    CMD("openat2", 3, cmd_openat2(a));
    CMD("holdfd", 2, cmd_holdfd(a));
    CMD("getfd", 5, cmd_getfd(a));
    CMD("handle-probe", 1, cmd_handle_probe(a));
    CMD("handle", 3, cmd_handle(a));
    CMD("stdout", 3, cmd_stdout(a));
    CMD("dprintf", 3, cmd_dprintf(a));
    CMD("spawn", 3, cmd_spawn(a));
    CMD("noappend-probe", 1, cmd_noappend_probe(a));
    CMD("noappend", 3, cmd_noappend(a));
    CMD("blkdev", 1, cmd_blkdev(a));
    CMD("exec", 4, cmd_exec(a));
    CMD("cancel", 3, cmd_cancel(a));
    CMD("mixed", 3, cmd_mixed(a));
usage:
    fprintf(stderr, "usage: trust SUBCOMMAND ARGS... (see the top of tests/writers/trust.c)\n");
    return 2;
}
