/* review.c: writer programs for tests/trust-review.bats, one per subcommand, each the
 * scenario of one hole an adversarial review of the live mirror found.  Writers run under
 * `mirror-img run` unless said otherwise.  They talk to the test through small files in
 * DIR ("ready", "go", "done", ...; written whole under a temporary name and renamed, so a
 * reader never sees half a line) and never make the test guess with a sleep.  The bytes
 * written are random (never what the target already holds) unless a fixed pattern is
 * needed to tell two writes apart.  Messages go to stderr (stdout may be the source).
 * Exit 0 on success, 77 when the kernel, the file system or the privileges lack what the
 * subcommand needs (the test skips, naming the reason printed on stderr), 1 otherwise.
 *
 *   review after-observe J SRC OFF LEN CMD...   (not under the shim) wait until the
 *                                 follower records the source again (seen_ns in J's header
 *                                 moves: it just did its idle check, the next is 100 ms
 *                                 away), pwrite LEN random bytes at OFF, close, exec CMD
 *   review poke SRC OFF           pwrite 4 KiB of random bytes at OFF (a tracked write)
 *   review append set|clear SRC   a forked child sets (clears) O_APPEND with F_SETFL on the
 *                                 description it shares with its parent, which opened SRC
 *                                 without (with) it; the parent then pwrites 4 KiB at 0:
 *                                 the kernel appends (writes at 0)
 *   review raw-recv SRC OFF1 OFF2 LEN  the source's descriptor comes back through
 *                                 syscall(SYS_recvmsg) and syscall(SYS_recvmmsg)
 *                                 (SCM_RIGHTS over a socketpair); pwrite LEN at OFF1
 *                                 (OFF2) through each; then a tracked poke at 0
 *   review raw-truncate SRC       syscall(SYS_truncate, SRC, 0), then pwrite 4 KiB at the
 *                                 old end - 4 KiB (the file has its old size again)
 *   review handle-probe SRC       can name_to_handle_at + open_by_handle_at open SRC?
 *   review handle-trunc SRC       open_by_handle_at(O_RDWR | O_TRUNC) (the kernel empties
 *                                 SRC), then pwrite 4 KiB at the old end - 4 KiB
 *   review static-write FD OFF LEN DIR   (linked statically: the shim never loads) pwrite
 *                                 LEN random bytes at OFF on the inherited FD, "written"
 *                                 ("PID"), wait for "quit"
 *   review system SRC OFF         SRC on fd 3 (inheritable), clearenv(), system() a shell
 *                                 whose dd writes 4 KiB at OFF through fd 3; then a tracked
 *                                 pwrite of 4 KiB at 0 through fd 3
 *   review stdout OFF LEN         stdout is the source: lseek(1, OFF), printf LEN random
 *                                 hex characters, fflush, _exit(0) (no call the shim wraps
 *                                 after the flush, no exit handlers)
 *   review mremap SRC DIR         map [0, 1 MiB) of SRC MAP_SHARED read-write, move its
 *                                 second half elsewhere (mremap MREMAP_FIXED), munmap the
 *                                 original 1 MiB, close, "unmapped"; wait for "go", store
 *                                 4 KiB of random bytes through the moved half (file offset
 *                                 512 KiB), msync, "stored"; wait for "quit"
 *   review pivot-dup SRC DIR      fd a = open(SRC), fd b = dup(a); write 4 KiB of 'A' (at 0)
 *                                 through a, "ready" ("PID A B"); wait for "go", write 4 KiB
 *                                 of 'B' through a, 4 KiB of 'C' through b, "done"
 *   review idle SRC DIR           open SRC, "ready" ("PID FD"); wait for "go" (idle: no
 *                                 call on the source meanwhile), pwrite 4 KiB of 'I' at
 *                                 1 MiB, "done" ("DEV INO" of the file the fd names)
 *   review create-as UID DIR NAME BYTES  (not under the shim, as root) open DIR, become UID
 *                                 (groups, gid and uid), create DIR/NAME (O_EXCL) and
 *                                 write BYTES zeros into it
 *   review sig-pivot SRC NFDS DIR NFDS descriptors on the source (dups: a pivot takes a
 *                                 while), a SIGALRM every 1 ms whose handler pwrites one
 *                                 byte at 4096 through the last of them while the main
 *                                 loop's write switches them (see on_sig), and a main loop
 *                                 that pwrites one byte at 0 through the first every 1 ms
 *                                 and counts its rounds in DIR/count; "ready" ("PID FD
 *                                 NFDS") after the first round; runs until killed
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "journal-layout.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define KiB 1024L
#define MiB (1024L * 1024)

__attribute__((noreturn, format(printf, 1, 2))) static void die(const char *fmt, ...)
{
    int e = errno;
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "review: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, ": %s\n", strerror(e));
    va_end(ap);
    exit(1);
}

/* Exit 77: the test skips with this reason. */
__attribute__((noreturn, format(printf, 1, 2))) static void unsupported(const char *fmt, ...)
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
        fprintf(stderr, "review: '%s' is not a number\n", s);
        exit(2);
    }
    return v;
}

static void *random_buf(size_t n)
{
    uint8_t *p = malloc(n ? n : 1);
    if (!p)
        die("malloc");
    for (size_t done = 0; done < n;) {
        ssize_t r = getrandom(p + done, n - done, 0);
        if (r < 0 && errno != EINTR)
            die("getrandom");
        if (r > 0)
            done += (size_t)r;
    }
    return p;
}

static void *pattern_buf(int c, size_t n)
{
    void *p = malloc(n);
    if (!p)
        die("malloc");
    return memset(p, c, n);
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

static void write_all(int fd, const void *buf, size_t n, const char *what)
{
    const char *p = buf;
    while (n) {
        ssize_t r = write(fd, p, n);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            die("%s: write", what);
        }
        p += r;
        n -= (size_t)r;
    }
}

static void pwrite_random(int fd, off_t off, size_t len, const char *what)
{
    void *b = random_buf(len);
    pwrite_all(fd, b, len, off, what);
    free(b);
}

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

/* DIR/NAME holds TEXT (written under a temporary name, then renamed). */
static void say(const char *dir, const char *name, const char *fmt, ...)
{
    char path[4096], tmp[4200], text[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    snprintf(path, sizeof path, "%s/%s", dir, name);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        die("%s", tmp);
    write_all(fd, text, strlen(text), tmp);
    if (close(fd) < 0 || rename(tmp, path) < 0)
        die("%s", path);
}

/* Wait for DIR/NAME to exist (the test creates it); give up after SECS seconds. */
static void await(const char *dir, const char *name, int secs)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    for (long i = 0; access(path, F_OK) != 0; i++) {
        if (i >= secs * 100L) {
            errno = ETIMEDOUT;
            die("%s never appeared", path);
        }
        msleep(10);
    }
}

/* ---- a write behind the shim right before complete ------------------------------------ */

static uint64_t header_u64(int jfd, size_t off)
{
    uint64_t v;
    if (pread(jfd, &v, sizeof v, (off_t)off) != (ssize_t)sizeof v)
        die("reading the journal header");
    return v;
}

static int cmd_after_observe(int n, char **a)
{
    int jfd = open(a[0], O_RDONLY | O_CLOEXEC);
    if (jfd < 0)
        die("%s", a[0]);
    const size_t ns_off = offsetof(struct mij_header, seen_ns);
    const size_t valid_off = offsetof(struct mij_header, seen_valid);
    uint64_t before = header_u64(jfd, ns_off);
    for (long i = 0;; i++) {
        if (header_u64(jfd, valid_off) && header_u64(jfd, ns_off) != before)
            break;
        if (i > 20000) {
            errno = ETIMEDOUT;
            die("the follower never recorded the source (seen_ns did not move)");
        }
        struct timespec ts = {0, 500000};
        nanosleep(&ts, NULL);
    }
    int fd = open(a[1], O_RDWR | O_CLOEXEC);
    if (fd < 0)
        die("%s", a[1]);
    pwrite_random(fd, num(a[2]), (size_t)num(a[3]), "behind the shim");
    close(fd);
    close(jfd);
    if (n < 5) {
        errno = EINVAL;
        die("no command to run");
    }
    execvp(a[4], a + 4);
    die("exec %s", a[4]);
}

static int cmd_poke(char **a)
{
    poke(a[0], num(a[1]));
    return 0;
}

/* ---- O_APPEND changed by another process sharing the description ---------------------- */

static int cmd_append(char **a)
{
    bool set = !strcmp(a[0], "set");
    if (!set && strcmp(a[0], "clear")) {
        fprintf(stderr, "review: append set|clear SRC\n");
        return 2;
    }
    int fd = open(a[1], O_RDWR | O_CLOEXEC | (set ? 0 : O_APPEND));
    if (fd < 0)
        die("%s", a[1]);
    off_t size0 = lseek(fd, 0, SEEK_END);
    pid_t p = fork();
    if (p < 0)
        die("fork");
    if (p == 0) {
        if (fcntl(fd, F_SETFL, set ? O_APPEND : 0) < 0)
            die("F_SETFL");
        _exit(0);
    }
    int st;
    if (waitpid(p, &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st))
        die("the child");
    void *b = random_buf(4096);
    if (pwrite(fd, b, 4096, 0) != 4096)
        die("pwrite");
    off_t size = lseek(fd, 0, SEEK_END);
    if (size != size0 + (set ? 4096 : 0)) {
        errno = EPROTO;
        die("the kernel did not %s: size %lld -> %lld", set ? "append" : "write at 0",
            (long long)size0, (long long)size);
    }
    fprintf(stderr, "append %s: pwrite at 0, size %lld -> %lld\n", a[0], (long long)size0,
            (long long)size);
    free(b);
    close(fd);
    return 0;
}

/* ---- descriptors from raw system calls ---------------------------------------------- */

static void send_fd(int s, int fd)
{
    char c = 'F';
    struct iovec iov = {&c, 1};
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
    if (sendmsg(s, &m, 0) != 1)
        die("sendmsg");
}

static int received_fd(struct msghdr *m)
{
    struct cmsghdr *cm = CMSG_FIRSTHDR(m);
    if (!cm || cm->cmsg_type != SCM_RIGHTS) {
        errno = EPROTO;
        die("no descriptor received");
    }
    int fd;
    memcpy(&fd, CMSG_DATA(cm), sizeof fd);
    return fd;
}

static int cmd_raw_recv(char **a)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
        die("socketpair");
    int fd = open(a[0], O_RDWR | O_CLOEXEC);
    if (fd < 0)
        die("%s", a[0]);
    size_t len = (size_t)num(a[3]);
    for (int k = 0; k < 2; k++) {
        send_fd(sv[0], fd);
        char c;
        struct iovec iov = {&c, 1};
        union {
            char buf[CMSG_SPACE(sizeof(int))];
            struct cmsghdr align;
        } u;
        memset(&u, 0, sizeof u);
        struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf,
                           .msg_controllen = sizeof u.buf};
        long r;
        if (k == 0) {
            r = syscall(SYS_recvmsg, sv[1], &m, 0);
        } else {
            struct mmsghdr mm = {.msg_hdr = m};
            r = syscall(SYS_recvmmsg, sv[1], &mm, 1, 0, NULL);
            m = mm.msg_hdr;
        }
        if (r != 1)
            die("syscall(%s)", k ? "SYS_recvmmsg" : "SYS_recvmsg");
        int nfd = received_fd(&m);
        pwrite_random(nfd, num(a[1 + k]), len, k ? "recvmmsg fd" : "recvmsg fd");
        close(nfd);
    }
    pwrite_random(fd, 0, 4096, "poke");
    close(fd);
    return 0;
}

static int cmd_raw_truncate(char **a)
{
    struct stat st;
    int fd = open(a[0], O_RDWR | O_CLOEXEC);
    if (fd < 0 || fstat(fd, &st) < 0)
        die("%s", a[0]);
    if (syscall(SYS_truncate, a[0], 0L) < 0)
        die("syscall(SYS_truncate) %s", a[0]);
    pwrite_random(fd, st.st_size - 4096, 4096, "after the truncate");
    close(fd);
    return 0;
}

/* open_by_handle_at needs a descriptor on the same file system: the source's directory */
static int open_handle(const char *src, int flags, bool probe)
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
        if (probe)
            unsupported("name_to_handle_at %s", src);
        die("name_to_handle_at %s", src);
    }
    int mfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (mfd < 0)
        die("%s", dir);
    int fd = open_by_handle_at(mfd, fh, flags | O_CLOEXEC);
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
    close(open_handle(a[0], O_RDONLY, true));
    return 0;
}

static int cmd_handle_trunc(char **a)
{
    struct stat st;
    if (stat(a[0], &st) < 0)
        die("%s", a[0]);
    int fd = open_handle(a[0], O_RDWR | O_TRUNC, false);
    struct stat s2;
    if (fstat(fd, &s2) < 0 || s2.st_size != 0) {
        errno = EPROTO;
        die("open_by_handle_at(O_TRUNC) did not empty %s", a[0]);
    }
    pwrite_random(fd, st.st_size - 4096, 4096, "after the truncation");
    close(fd);
    return 0;
}

/* ---- programs without the shim ---------------------------------------------------------- */

static int cmd_static_write(char **a)
{
    pwrite_random((int)num(a[0]), num(a[1]), (size_t)num(a[2]), "static writer");
    say(a[3], "written", "%d\n", (int)getpid());
    await(a[3], "quit", 60);
    return 0;
}

static int cmd_system(char **a)
{
    int fd = open(a[0], O_RDWR);
    if (fd < 0)
        die("%s", a[0]);
    if (fd != 3) {
        if (dup2(fd, 3) < 0)
            die("dup2");
        close(fd);
        fd = 3;
    }
    clearenv();
    setenv("PATH", "/usr/bin:/bin", 1);
    char cmd[256];
    snprintf(cmd, sizeof cmd,
             "dd if=/dev/urandom bs=4096 count=1 seek=%ld conv=notrunc status=none >&3",
             num(a[1]) / 4096);
    int r = system(cmd);
    if (r != 0) {
        errno = ECHILD;
        die("system(\"%s\") returned %d", cmd, r);
    }
    pwrite_random(fd, 0, 4096, "poke");
    close(fd);
    return 0;
}

static int cmd_stdout(char **a)
{
    off_t off = num(a[0]);
    size_t len = (size_t)num(a[1]);
    uint8_t *r = random_buf(len);
    char *s = malloc(len + 1);
    if (!s)
        die("malloc");
    for (size_t i = 0; i < len; i++)
        s[i] = "0123456789abcdef"[r[i] & 15];
    s[len] = '\0';
    if (lseek(1, off, SEEK_SET) != off)
        die("lseek stdout");
    if (printf("%s", s) < 0 || fflush(stdout) != 0)
        die("printf");
    _exit(0);
}

/* ---- mremap of part of a tracked mapping ------------------------------------------------ */

static int cmd_mremap(char **a)
{
    size_t len = 1 * MiB, half = len / 2;
    int fd = open(a[0], O_RDWR | O_CLOEXEC);
    if (fd < 0)
        die("%s", a[0]);
    char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED)
        die("mmap");
    char *spot = mmap(NULL, half, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (spot == MAP_FAILED)
        die("mmap (anonymous)");
    char *q = mremap(p + half, half, half, MREMAP_MAYMOVE | MREMAP_FIXED, spot);
    if (q == MAP_FAILED)
        die("mremap");
    if (munmap(p, len) < 0) /* the first half, and the range the second half left */
        die("munmap");
    close(fd);
    say(a[1], "unmapped", "%d\n", (int)getpid());
    await(a[1], "go", 30);
    void *b = random_buf(4096);
    memcpy(q, b, 4096);
    if (msync(q, 4096, MS_SYNC) < 0)
        die("msync");
    say(a[1], "stored", "%d\n", (int)getpid());
    await(a[1], "quit", 60);
    return 0;
}

/* ---- pivots ----------------------------------------------------------------------------- */

static int cmd_pivot_dup(char **a)
{
    int fa = open(a[0], O_RDWR | O_CLOEXEC);
    if (fa < 0)
        die("%s", a[0]);
    int fb = dup(fa);
    if (fb < 0)
        die("dup");
    write_all(fa, pattern_buf('A', 4096), 4096, "A");
    say(a[1], "ready", "%d %d %d\n", (int)getpid(), fa, fb);
    await(a[1], "go", 30);
    write_all(fa, pattern_buf('B', 4096), 4096, "B");
    write_all(fb, pattern_buf('C', 4096), 4096, "C");
    say(a[1], "done", "%lld\n", (long long)lseek(fa, 0, SEEK_CUR));
    return 0;
}

static int cmd_idle(char **a)
{
    int fd = open(a[0], O_RDWR | O_CLOEXEC);
    if (fd < 0)
        die("%s", a[0]);
    say(a[1], "ready", "%d %d\n", (int)getpid(), fd);
    await(a[1], "go", 30);
    pwrite_all(fd, pattern_buf('I', 4096), 4096, 1 * MiB, "idle writer");
    struct stat st;
    if (fstat(fd, &st) < 0)
        die("fstat");
    say(a[1], "done", "%llu %llu\n", (unsigned long long)st.st_dev, (unsigned long long)st.st_ino);
    return 0;
}

static int cmd_create_as(char **a)
{
    uid_t uid = (uid_t)num(a[0]);
    int dfd = open(a[1], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0)
        die("%s", a[1]);
    if (setgroups(0, NULL) < 0 || setresgid(uid, uid, uid) < 0 || setresuid(uid, uid, uid) < 0) {
        if (errno == EPERM)
            unsupported("becoming uid %u", (unsigned)uid);
        die("becoming uid %u", (unsigned)uid);
    }
    int fd = openat(dfd, a[2], O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0)
        die("%s/%s as uid %u", a[1], a[2], (unsigned)uid);
    size_t left = (size_t)num(a[3]);
    void *z = pattern_buf(0, 64 * KiB);
    while (left) {
        size_t k = left < 64 * KiB ? left : 64 * KiB;
        write_all(fd, z, k, a[2]);
        left -= k;
    }
    if (close(fd) < 0)
        die("close");
    return 0;
}

/* sig-pivot's handler: one byte through the last descriptor, once the shim has begun to
 * switch the descriptors (the first one, switched first, no longer names the source) and
 * while the main loop is inside the write that switches them.  Not before: a handler
 * whose own write were the call a quiesce holds would make the switch itself, inside
 * the handler, its signal blocked.  So the main loop switches, and the signal comes in
 * while it does. */
static int fd0, hfd;
static struct stat src_st;
static volatile sig_atomic_t in_write;
static void on_sig(int s)
{
    (void)s;
    if (!in_write)
        return;
    int e = errno;
    struct stat st;
    if (fstat(fd0, &st) == 0 && (st.st_dev != src_st.st_dev || st.st_ino != src_st.st_ino)) {
        char c = 'h';
        if (pwrite(hfd, &c, 1, 4096) < 0)
            _exit(3);
    }
    errno = e;
}

static int cmd_sig_pivot(char **a)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    long n = num(a[1]);
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
        (long)rl.rlim_cur - 64 < n)
        n = (long)rl.rlim_cur - 64;
    char path[4096];
    snprintf(path, sizeof path, "%s/count", a[2]);
    int cfd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (cfd < 0)
        die("%s", path);
    int fd = open(a[0], O_RDWR | O_CLOEXEC);
    if (fd < 0 || fstat(fd, &src_st) < 0)
        die("%s", a[0]);
    fd0 = hfd = fd;
    for (long i = 1; i < n; i++)
        if ((hfd = dup(fd)) < 0)
            die("dup (%ld descriptors)", i);
    struct sigaction sa = {0};
    sa.sa_handler = on_sig;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGALRM, &sa, NULL);
    struct itimerval it = {{0, 1000}, {0, 1000}};
    if (setitimer(ITIMER_REAL, &it, NULL) < 0)
        die("setitimer");
    for (unsigned long i = 1;; i++) {
        char c = (char)('a' + i % 26);
        in_write = 1;
        while (pwrite(fd, &c, 1, 0) < 0)
            if (errno != EINTR)
                die("pwrite");
        in_write = 0;
        if (i % 10 == 0 || i == 1) {
            char line[32];
            int k = snprintf(line, sizeof line, "%20lu\n", i);
            if (pwrite(cfd, line, (size_t)k, 0) < 0 && errno != EINTR)
                die("%s", path);
        }
        if (i == 1)
            say(a[2], "ready", "%d %d %ld\n", (int)getpid(), fd, n);
        msleep(1);
    }
    return 0;
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
    CMD("after-observe", 5, cmd_after_observe(n, a));
    CMD("poke", 2, cmd_poke(a));
    CMD("append", 2, cmd_append(a));
    CMD("raw-recv", 4, cmd_raw_recv(a));
    CMD("raw-truncate", 1, cmd_raw_truncate(a));
    CMD("handle-probe", 1, cmd_handle_probe(a));
    CMD("handle-trunc", 1, cmd_handle_trunc(a));
    CMD("static-write", 4, cmd_static_write(a));
    CMD("system", 2, cmd_system(a));
    CMD("stdout", 2, cmd_stdout(a));
    CMD("mremap", 2, cmd_mremap(a));
    CMD("pivot-dup", 2, cmd_pivot_dup(a));
    CMD("idle", 2, cmd_idle(a));
    CMD("create-as", 4, cmd_create_as(a));
    CMD("sig-pivot", 3, cmd_sig_pivot(a));
usage:
    fprintf(stderr, "usage: review SUBCOMMAND ARGS... (see the top of tests/writers/review.c)\n");
    return 2;
}
