/* writer.c: writer programs for tests/shim.bats, one per subcommand.  Each prints the byte
 * ranges it wrote to the source as "OFFSET LENGTH" lines (the test's expectation), and
 * other facts as "KEY VALUE" lines.  Exit 0 on success, 1 with a message otherwise.
 *
 *   writer mt SRC             4 threads: pwrite, pwritev, lseek+write, O_APPEND write
 *   writer fork SRC           parent and forked child both pwrite
 *   writer dup SRC OTHER      dup, dup2, dup3, F_DUPFD, F_DUPFD_CLOEXEC, then close the original
 *   writer mmap SRC OFF LEN   writable shared mapping; then a read-only one made writable
 *   writer maphold SRC SECS   keep a writable shared mapping for SECS seconds
 *   writer xfer SRC OTHER     copy_file_range, sendfile and splice into SRC
 *   writer errno SRC          errno and return values through the shim
 *   writer tick SRC N MS [OFF]   N pwrites of 4 KiB every MS ms, "i time_ms" after each
 *   writer seqtick SRC N MS [OFF] the same with lseek once and write() (the file position)
 *   writer stdio SRC          fopen("r+") + fwrite (untrackable)
 *   writer aio SRC            POSIX aio_write
 *   writer raw SRC            syscall(SYS_pwrite64)
 */
#define _GNU_SOURCE
#include <aio.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define KiB 1024L
#define MiB (1024L * 1024)

static pthread_mutex_t out_lock = PTHREAD_MUTEX_INITIALIZER;
static char buf[1 * MiB];

static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "writer: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, ": %s\n", strerror(errno));
    va_end(ap);
    exit(1);
}

static void wrote(long off, long len)
{
    pthread_mutex_lock(&out_lock);
    printf("%ld %ld\n", off, len);
    fflush(stdout);
    pthread_mutex_unlock(&out_lock);
}

static int open_or_die(const char *p, int flags)
{
    int fd = open(p, flags, 0644);
    if (fd < 0)
        die("%s", p);
    return fd;
}

static void pw(int fd, long off, long len)
{
    if (pwrite(fd, buf, (size_t)len, off) != len)
        die("pwrite");
    wrote(off, len);
}

/* ---- mt ---- */
static const char *mt_src;
static int mt_fd;

static long rnd_off(unsigned *seed) { return (long)(rand_r(seed) % 4096) * 4096; } /* < 16 MiB */

static void *mt_pwrite(void *a)
{
    unsigned seed = 1;
    (void)a;
    for (int i = 0; i < 50; i++)
        pw(mt_fd, rnd_off(&seed), 4096);
    return NULL;
}

static void *mt_pwritev(void *a)
{
    unsigned seed = 2;
    (void)a;
    for (int i = 0; i < 50; i++) {
        struct iovec iov[2] = {{buf, 4096}, {buf + 4096, 8192}};
        long off = rnd_off(&seed);
        if (pwritev(mt_fd, iov, 2, off) != 12288)
            die("pwritev");
        wrote(off, 12288);
    }
    return NULL;
}

static void *mt_write(void *a)
{
    unsigned seed = 3;
    int fd = open_or_die(mt_src, O_WRONLY);
    (void)a;
    for (int i = 0; i < 50; i++) {
        long off = rnd_off(&seed);
        if (lseek(fd, off, SEEK_SET) != off || write(fd, buf, 4096) != 4096)
            die("write");
        wrote(off, 4096);
    }
    close(fd);
    return NULL;
}

static void *mt_append(void *a)
{
    int fd = open_or_die(mt_src, O_WRONLY | O_APPEND);
    (void)a;
    for (int i = 0; i < 10; i++) {
        if (write(fd, buf, 4096) != 4096)
            die("append");
        wrote(lseek(fd, 0, SEEK_CUR) - 4096, 4096);
    }
    close(fd);
    return NULL;
}

static int cmd_mt(char **argv)
{
    mt_src = argv[0];
    mt_fd = open_or_die(mt_src, O_RDWR);
    pthread_t t[4];
    void *(*fn[4])(void *) = {mt_pwrite, mt_pwritev, mt_write, mt_append};
    for (int i = 0; i < 4; i++)
        pthread_create(&t[i], NULL, fn[i], NULL);
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    return 0;
}

/* ---- fork ---- */
static int cmd_fork(char **argv)
{
    int fd = open_or_die(argv[0], O_RDWR);
    pid_t pid = fork();
    if (pid < 0)
        die("fork");
    if (pid == 0) {
        pw(fd, 2 * MiB, 4096);
        printf("child %d\n", getpid());
        fflush(stdout);
        _exit(0);
    }
    int st;
    waitpid(pid, &st, 0);
    pw(fd, 3 * MiB, 4096);
    printf("parent %d\n", getpid());
    return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : 1;
}

/* ---- dup ---- */
static int cmd_dup(char **argv)
{
    int fd = open_or_die(argv[0], O_RDWR);
    int other = open_or_die(argv[1], O_RDWR);
    int a = dup(fd), b = dup2(fd, 100), c = fcntl(fd, F_DUPFD, 200);
    int d = fcntl(fd, F_DUPFD_CLOEXEC, 300), e = dup3(fd, 400, O_CLOEXEC);
    if (a < 0 || b != 100 || c < 200 || d < 300 || e != 400)
        die("dup");
    close(fd);
    pw(a, 1 * MiB, 4096);
    pw(b, 2 * MiB, 4096);
    pw(c, 3 * MiB, 4096);
    pw(d, 4 * MiB, 4096);
    pw(e, 5 * MiB, 4096);
    /* 100 now names the other file: its writes are not the source's */
    if (dup2(other, 100) != 100 || pwrite(100, buf, 4096, 6 * MiB) != 4096)
        die("dup2 other");
    /* and a closed number reused by an open of another file */
    close(e);
    int o2 = open_or_die(argv[1], O_RDWR);
    if (pwrite(o2, buf, 4096, 7 * MiB) != 4096)
        die("pwrite other");
    return 0;
}

/* ---- mmap ---- */
static int cmd_mmap(char **argv)
{
    int fd = open_or_die(argv[0], O_RDWR);
    long off = atol(argv[1]), len = atol(argv[2]);
    char *p = mmap(NULL, (size_t)len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, off);
    if (p == MAP_FAILED)
        die("mmap");
    memset(p, 0x5a, (size_t)len);
    if (msync(p, (size_t)len, MS_SYNC) < 0 || munmap(p, (size_t)len) < 0)
        die("msync/munmap");
    wrote(off, len);
    /* read-only first, then made writable */
    long off2 = off + 8 * MiB;
    p = mmap(NULL, (size_t)len, PROT_READ, MAP_SHARED, fd, off2);
    if (p == MAP_FAILED || mprotect(p, (size_t)len, PROT_READ | PROT_WRITE) < 0)
        die("mmap/mprotect");
    memset(p, 0xa5, (size_t)len);
    if (munmap(p, (size_t)len) < 0)
        die("munmap");
    wrote(off2, len);
    return 0;
}

static int cmd_maphold(char **argv)
{
    int fd = open_or_die(argv[0], O_RDWR);
    char *p = mmap(NULL, 64 * KiB, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED)
        die("mmap");
    p[0] = 1;
    printf("mapped\n");
    fflush(stdout);
    sleep((unsigned)atoi(argv[1]));
    return 0;
}

/* ---- xfer ---- */
static int cmd_xfer(char **argv)
{
    int fd = open_or_die(argv[0], O_RDWR), in = open_or_die(argv[1], O_RDONLY);
    loff_t oin = 0, oout = 4 * MiB;
    if (copy_file_range(in, &oin, fd, &oout, 64 * KiB, 0) != 64 * KiB)
        die("copy_file_range");
    wrote(4 * MiB, 64 * KiB);
    if (lseek(fd, 5 * MiB, SEEK_SET) < 0 || lseek(in, 0, SEEK_SET) < 0)
        die("lseek");
    if (sendfile(fd, in, NULL, 64 * KiB) != 64 * KiB)
        die("sendfile");
    wrote(5 * MiB, 64 * KiB);
    int pfd[2];
    if (pipe(pfd) < 0 || splice(in, NULL, pfd[1], NULL, 64 * KiB, 0) != 64 * KiB)
        die("splice in");
    oout = 6 * MiB;
    long done = 0;
    while (done < 64 * KiB) {
        ssize_t n = splice(pfd[0], NULL, fd, &oout, (size_t)(64 * KiB - done), 0);
        if (n <= 0)
            die("splice out");
        done += n;
    }
    wrote(6 * MiB, 64 * KiB);
    return 0;
}

/* ---- errno ---- */
#define CHECK(cond, what)                                                                   \
    do {                                                                                    \
        if (!(cond)) {                                                                      \
            fprintf(stderr, "writer: errno check failed: %s (errno %d)\n", what, errno);     \
            fails++;                                                                        \
        }                                                                                   \
    } while (0)

static int cmd_errno(char **argv)
{
    int fails = 0;
    int ro = open_or_die(argv[0], O_RDONLY);
    errno = 0;
    ssize_t r = write(ro, buf, 4096);
    CHECK(r == -1 && errno == EBADF, "write to a read-only descriptor gives EBADF");
    errno = 0;
    r = pwrite(ro, buf, 4096, 0);
    CHECK(r == -1 && errno == EBADF, "pwrite to a read-only descriptor gives EBADF");
    int fd = open_or_die(argv[0], O_RDWR);
    errno = 77;
    r = pwrite(fd, buf, 4096, 8 * MiB);
    CHECK(r == 4096 && errno == 77, "a successful pwrite leaves errno alone");
    errno = 78;
    r = write(fd, buf, 4096);
    CHECK(r == 4096 && errno == 78, "a successful write leaves errno alone");
    errno = 79;
    struct stat st;
    fstat(fd, &st);
    CHECK(ftruncate(fd, st.st_size) == 0 && errno == 79, "a successful ftruncate leaves errno alone");
    errno = 0;
    void *volatile bad = (void *)8; /* hidden from the compiler's checks */
    r = pwrite(fd, bad, 4096, 0);
    CHECK(r == -1 && errno == EFAULT, "pwrite of a bad buffer gives EFAULT");
    errno = 0;
    CHECK(write(-5, buf, 1) == -1 && errno == EBADF, "write to -5 gives EBADF");
    errno = 0;
    CHECK(ftruncate(ro, 0) == -1 && errno == EINVAL, "ftruncate of a read-only descriptor gives EINVAL");
    errno = 0;
    CHECK(fallocate(fd, 0x12345, 0, 4096) == -1 && (errno == EOPNOTSUPP || errno == EINVAL),
          "fallocate with bad mode fails with EOPNOTSUPP/EINVAL");
    errno = 0;
    CHECK(open("/nonexistent/x", O_RDONLY) == -1 && errno == ENOENT, "open of a missing file gives ENOENT");
    errno = 80;
    int d = dup(fd);
    CHECK(d >= 0 && errno == 80, "dup leaves errno alone");
    errno = 81;
    CHECK(close(d) == 0 && errno == 81, "close leaves errno alone");
    errno = 0;
    CHECK(close(d) == -1 && errno == EBADF, "double close gives EBADF");
    errno = 0;
    CHECK((fcntl(fd, F_GETFL) & O_ACCMODE) == O_RDWR && errno == 0, "fcntl F_GETFL through the shim");
    printf("errno-fails %d\n", fails);
    return fails ? 1 : 0;
}

/* ---- tick ---- */
static long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000L + ts.tv_nsec / 1000000;
}

static int tick(char **argv, bool seq)
{
    int fd = open_or_die(argv[0], O_RDWR);
    long n = atol(argv[1]), ms = atol(argv[2]), off0 = argv[3] ? atol(argv[3]) : 0;
    if (seq && lseek(fd, off0, SEEK_SET) != off0)
        die("lseek");
    for (long i = 0; i < n; i++) {
        memset(buf, (int)(i % 251 + 1), 4096);
        if ((seq ? write(fd, buf, 4096) : pwrite(fd, buf, 4096, off0 + i * 4096)) != 4096)
            die("write");
        printf("%ld %ld\n", i, now_ms());
        fflush(stdout);
        struct timespec ts = {ms / 1000, (ms % 1000) * 1000000};
        nanosleep(&ts, NULL);
    }
    return 0;
}

static int cmd_tick(char **argv) { return tick(argv, false); }
static int cmd_seqtick(char **argv) { return tick(argv, true); }

/* ---- untrackable ---- */
static int cmd_stdio(char **argv)
{
    FILE *f = fopen(argv[0], "r+");
    if (!f || fseek(f, 1 * MiB, SEEK_SET) < 0 || fwrite(buf, 1, 4096, f) != 4096 || fclose(f))
        die("stdio");
    return 0;
}

static int cmd_aio(char **argv)
{
    int fd = open_or_die(argv[0], O_RDWR);
    struct aiocb cb;
    memset(&cb, 0, sizeof cb);
    cb.aio_fildes = fd;
    cb.aio_buf = buf;
    cb.aio_nbytes = 4096;
    cb.aio_offset = 1 * MiB;
    if (aio_write(&cb) < 0)
        die("aio_write");
    const struct aiocb *l[1] = {&cb};
    while (aio_error(&cb) == EINPROGRESS)
        aio_suspend(l, 1, NULL);
    return aio_return(&cb) == 4096 ? 0 : 1;
}

static int cmd_raw(char **argv)
{
    int fd = open_or_die(argv[0], O_RDWR);
    return syscall(SYS_pwrite64, fd, buf, 4096, 1 * MiB) == 4096 ? 0 : 1;
}

int main(int argc, char **argv)
{
    static const struct {
        const char *name;
        int nargs;
        int (*fn)(char **);
    } cmds[] = {
        {"mt", 1, cmd_mt}, {"fork", 1, cmd_fork}, {"dup", 2, cmd_dup}, {"mmap", 3, cmd_mmap},
        {"maphold", 2, cmd_maphold}, {"xfer", 2, cmd_xfer}, {"errno", 1, cmd_errno},
        {"tick", 3, cmd_tick}, {"seqtick", 3, cmd_seqtick}, {"stdio", 1, cmd_stdio}, {"aio", 1, cmd_aio}, {"raw", 1, cmd_raw},
    };
    memset(buf, 0x77, sizeof buf);
    if (argc >= 2)
        for (size_t i = 0; i < sizeof cmds / sizeof *cmds; i++)
            if (!strcmp(argv[1], cmds[i].name) && argc - 2 >= cmds[i].nargs)
                return cmds[i].fn(argv + 2);
    fprintf(stderr, "usage: writer mt|fork|dup|mmap|maphold|xfer|errno|tick|seqtick|stdio|aio|raw ARGS\n");
    return 2;
}
