/* tfollow.c: writers for tests/trust-follow.bats, run under `mirror-img run`.  Each one
 * talks to the test through small files in DIR: it announces itself ("ready": "PID FD"),
 * waits for a file the test creates ("go", "go2", "quit", "stop"), and says what it did
 * ("op-done", "done", "read"), so the test never guesses with a sleep.  Files are written
 * whole under a temporary name and renamed: a reader never sees half a line.
 *
 *   tfollow idle SRC DIR MODE     open SRC (fd N), pwrite once, "ready", wait for "go",
 *                                 then MODE, for a writer idle during `complete --pivot`:
 *       exec      exec `tfollow wfd N DIR` (it writes through the inherited fd N)
 *       forkexec  fork; the child execs `tfollow wfd N DIR` ("child": its pid)
 *       pread     pread N at READ_OFF ("read": hex of the bytes), "op-done", wait "go2",
 *                 pwrite the marker at MARK_OFF, "done"
 *       mmap      mmap N MAP_SHARED read-write at READ_OFF ("read"), "op-done", wait "go2",
 *                 store the marker at MARK_OFF through the mapping, msync, munmap, "done"
 *       fsync     fsync N, "op-done", wait "go2", pwrite the marker, "done"
 *                 and then wait for "quit" (so that /proc/PID/fd/N can be read)
 *   tfollow wfd N DIR             pwrite the marker at MARK_OFF through fd N, "done"
 *                                 ("PID"), wait for "quit"
 *   tfollow periodic SRC DIR OFF  pwrite a 4 KiB block at OFF + (i % 16) * 4 KiB every 20 ms
 *                                 while DIR/pause does not exist, until DIR/stop exists;
 *                                 "ready" ("PID FD") after the first write; DIR/count: writes
 *   tfollow pair SRC REF DIR      pwrite random 4 KiB blocks at random offsets to SRC, then
 *                                 the same to REF, until DIR/stop exists; DIR/count: writes
 *   tfollow stdio SRC OFF TEXT    fopen(SRC, "r+"), fseek to OFF, fprintf TEXT, fclose
 *   tfollow mapexit SRC DIR OFF LEN   map [OFF, OFF+LEN) of SRC MAP_SHARED read-write,
 *                                 "ready", wait "go", store random bytes into every 4 KiB
 *                                 page, exit (no msync, no munmap)
 *   tfollow sigbus ign            SIGBUS ignored, kill(getpid(), SIGBUS); then exec itself
 *                                 (`sigbus ign-exec`: the disposition is inherited, the
 *                                 shim of the new image installs its handler over it) and
 *                                 kill(getpid(), SIGBUS) again; prints "survived", exit 0
 *   tfollow sigbus handler        install a handler, raise(SIGBUS): "handler ran", exit 0
 *   tfollow sigbus pre            the handler that libtfbus.so's constructor installed
 *                                 before the shim's (a library the program links): raise
 *                                 SIGBUS, "pre handler ran N", exit 0 (built with -DTFBUS)
 *   tfollow sigbus fault DIR      store past the end of a truncated MAP_SHARED mapping of
 *                                 DIR/unrelated: dies of SIGBUS
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifdef TFBUS_LIB
/* libtfbus.so: a library whose constructor installs a SIGBUS handler.  The dynamic loader
 * runs the constructors of a program's libraries before those of LD_PRELOAD objects, so
 * the shim installs its own handler over this one and must pass SIGBUS on to it. */
static volatile sig_atomic_t pre_count;
static void pre_handler(int sig) { (void)sig; pre_count++; }
__attribute__((constructor)) static void tfbus_init(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = pre_handler;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGBUS, &sa, NULL);
}
int tfbus_count(void) { return pre_count; }
#else

#define READ_OFF (3 << 20) /* the test changes SRC here after the pivot */
#define MARK_OFF (2 << 20) /* the marker written after the pivot */
#define MARK_LEN 4096

static const char *dir;
static const char *self;

static void die(const char *what)
{
    fprintf(stderr, "tfollow: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void nap_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static char *in_dir(const char *name)
{
    static char p[4][4096];
    static int k;
    char *b = p[k++ & 3];
    snprintf(b, 4096, "%s/%s", dir, name);
    return b;
}

static int exists(const char *name) { return access(in_dir(name), F_OK) == 0; }

/* DIR/name holds text, written whole (temporary name, rename). */
static void say(const char *name, const char *text)
{
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", in_dir(name));
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0 || write(fd, text, strlen(text)) != (ssize_t)strlen(text) || close(fd) < 0)
        die(tmp);
    if (rename(tmp, in_dir(name)) < 0)
        die(name);
}

/* Wait for DIR/name (at most 60 s: a test that died leaves no writer behind). */
static void await(const char *name)
{
    for (int i = 0; i < 6000 && !exists(name); i++)
        nap_ms(10);
    if (!exists(name)) {
        fprintf(stderr, "tfollow: %s never appeared\n", in_dir(name));
        exit(1);
    }
}

static void fill(char *b, size_t n, unsigned *seed)
{
    for (size_t i = 0; i < n; i++)
        b[i] = (char)rand_r(seed);
}

/* The marker: 4 KiB of 'M', the same in every process. */
static void marker(char *b) { memset(b, 'M', MARK_LEN); }

static void pwrite_all(int fd, const void *b, size_t n, off_t off)
{
    if (pwrite(fd, b, n, off) != (ssize_t)n)
        die("pwrite");
}

static void hex(const unsigned char *b, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++)
        sprintf(out + 2 * i, "%02x", b[i]);
    strcat(out, "\n");
}

static int do_wfd(int fd)
{
    char m[MARK_LEN], line[64];
    marker(m);
    pwrite_all(fd, m, sizeof m, MARK_OFF);
    snprintf(line, sizeof line, "%d\n", (int)getpid());
    say("done", line);
    await("quit");
    return 0;
}

static int do_idle(const char *src, const char *mode)
{
    int fd = open(src, O_RDWR);
    if (fd < 0)
        die(src);
    char b[4096], line[64];
    unsigned seed = 42;
    fill(b, sizeof b, &seed);
    pwrite_all(fd, b, sizeof b, 1 << 20); /* written once: a tracked descriptor */
    snprintf(line, sizeof line, "%d %d\n", (int)getpid(), fd);
    say("ready", line);
    await("go");
    char fds[16];
    snprintf(fds, sizeof fds, "%d", fd);
    if (!strcmp(mode, "exec")) {
        execl(self, self, "wfd", fds, dir, (char *)NULL);
        die("exec");
    }
    if (!strcmp(mode, "forkexec")) {
        pid_t p = fork();
        if (p < 0)
            die("fork");
        if (p == 0) {
            execl(self, self, "wfd", fds, dir, (char *)NULL);
            die("exec");
        }
        snprintf(line, sizeof line, "%d\n", (int)p);
        say("child", line);
        int st;
        if (waitpid(p, &st, 0) < 0)
            die("waitpid");
        return WIFEXITED(st) ? WEXITSTATUS(st) : 1;
    }
    unsigned char r[16];
    char text[64] = "";
    char m[MARK_LEN];
    marker(m);
    if (!strcmp(mode, "pread")) {
        if (pread(fd, r, sizeof r, READ_OFF) != (ssize_t)sizeof r)
            die("pread");
        hex(r, sizeof r, text);
        say("read", text);
        say("op-done", "pread\n");
        await("go2");
        pwrite_all(fd, m, sizeof m, MARK_OFF);
    } else if (!strcmp(mode, "mmap")) {
        /* One mapping over both offsets: [MARK_OFF, READ_OFF + 64 KiB). */
        size_t len = READ_OFF - MARK_OFF + 65536;
        unsigned char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, MARK_OFF);
        if (p == MAP_FAILED)
            die("mmap");
        memcpy(r, p + (READ_OFF - MARK_OFF), sizeof r);
        hex(r, sizeof r, text);
        say("read", text);
        say("op-done", "mmap\n");
        await("go2");
        memcpy(p, m, sizeof m);
        if (msync(p, len, MS_SYNC) < 0)
            die("msync");
        if (munmap(p, len) < 0)
            die("munmap");
    } else if (!strcmp(mode, "fsync")) {
        if (fsync(fd) < 0)
            die("fsync");
        say("op-done", "fsync\n");
        await("go2");
        pwrite_all(fd, m, sizeof m, MARK_OFF);
    } else {
        fprintf(stderr, "tfollow: idle: unknown mode %s\n", mode);
        return 2;
    }
    snprintf(line, sizeof line, "%d\n", (int)getpid());
    say("done", line);
    await("quit");
    return 0;
}

/* DIR/count: the number of writes so far (rewritten in place, fixed width). */
static void count_to(int cfd, unsigned long long n)
{
    char line[32];
    snprintf(line, sizeof line, "%20llu\n", n);
    if (pwrite(cfd, line, 21, 0) != 21)
        die("count");
}

static int do_periodic(const char *src, off_t off)
{
    int fd = open(src, O_RDWR);
    int cfd = open(in_dir("count"), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0 || cfd < 0)
        die(src);
    char b[4096], line[64];
    unsigned seed = (unsigned)getpid();
    unsigned long long n = 0;
    while (!exists("stop")) {
        if (!exists("pause")) {
            fill(b, sizeof b, &seed);
            pwrite_all(fd, b, sizeof b, off + (off_t)(n % 16) * 4096);
            count_to(cfd, ++n);
            if (n == 1) {
                snprintf(line, sizeof line, "%d %d\n", (int)getpid(), fd);
                say("ready", line);
            }
        }
        nap_ms(20);
    }
    return 0;
}

static int do_pair(const char *src, const char *ref)
{
    int fd = open(src, O_RDWR), rfd = open(ref, O_RDWR);
    int cfd = open(in_dir("count"), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    struct stat st;
    if (fd < 0 || rfd < 0 || cfd < 0 || fstat(fd, &st) < 0)
        die(src);
    long blocks = st.st_size / 4096;
    char b[4096], line[64];
    unsigned seed = 11;
    unsigned long long n = 0;
    snprintf(line, sizeof line, "%d %d\n", (int)getpid(), fd);
    say("ready", line);
    while (!exists("stop")) {
        off_t off = (off_t)(rand_r(&seed) % blocks) * 4096;
        fill(b, sizeof b, &seed);
        pwrite_all(fd, b, sizeof b, off);  /* held while a quiesce holds it */
        pwrite_all(rfd, b, sizeof b, off); /* the reference gets every write */
        count_to(cfd, ++n);
        if (n % 32 == 0)
            nap_ms(1);
    }
    printf("%llu\n", n);
    return 0;
}

static int do_stdio(const char *src, long off, const char *text)
{
    FILE *f = fopen(src, "r+");
    if (!f)
        die(src);
    if (fseek(f, off, SEEK_SET) < 0)
        die("fseek");
    fprintf(f, "%s", text);
    if (fclose(f) != 0)
        die("fclose");
    return 0;
}

static int do_mapexit(const char *src, off_t off, size_t len)
{
    int fd = open(src, O_RDWR);
    if (fd < 0)
        die(src);
    unsigned char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, off);
    if (p == MAP_FAILED)
        die("mmap");
    char line[64];
    snprintf(line, sizeof line, "%d\n", (int)getpid());
    say("ready", line);
    await("go");
    unsigned seed = (unsigned)getpid();
    for (size_t i = 0; i < len; i += 4096)
        fill((char *)p + i, 512, &seed);
    exit(0); /* no msync, no munmap */
}

static volatile sig_atomic_t ran;
static void handler(int sig) { (void)sig; ran = 1; }

#ifdef TFBUS
int tfbus_count(void);
#endif

static int do_sigbus(const char *mode)
{
    if (!strcmp(mode, "ign")) {
        signal(SIGBUS, SIG_IGN);
        kill(getpid(), SIGBUS);
        execl(self, self, "sigbus", "ign-exec", (char *)NULL);
        die("exec");
    }
    if (!strcmp(mode, "ign-exec")) {
        kill(getpid(), SIGBUS);
        printf("survived\n");
        return 0;
    }
    if (!strcmp(mode, "handler")) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = handler;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGBUS, &sa, NULL);
        raise(SIGBUS);
        printf(ran ? "handler ran\n" : "handler did not run\n");
        return ran ? 0 : 1;
    }
#ifdef TFBUS
    if (!strcmp(mode, "pre")) {
        raise(SIGBUS);
        int n = tfbus_count();
        printf("pre handler ran %d\n", n);
        return n == 1 ? 0 : 1;
    }
#endif
    if (!strcmp(mode, "fault")) {
        int fd = open(in_dir("unrelated"), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd < 0 || ftruncate(fd, 8192) < 0)
            die("unrelated");
        volatile char *p = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (p == MAP_FAILED)
            die("mmap");
        if (ftruncate(fd, 0) < 0)
            die("ftruncate");
        printf("storing\n");
        fflush(stdout);
        p[4096] = 1; /* beyond the end of the file: SIGBUS */
        printf("no fault\n");
        return 0;
    }
    fprintf(stderr, "tfollow: sigbus: unknown mode %s\n", mode);
    return 2;
}

int main(int argc, char **argv)
{
    self = argv[0];
    setvbuf(stdout, NULL, _IOLBF, 0);
    const char *cmd = argc > 1 ? argv[1] : "";
    if (!strcmp(cmd, "idle") && argc == 5) {
        dir = argv[3];
        return do_idle(argv[2], argv[4]);
    }
    if (!strcmp(cmd, "wfd") && argc == 4) {
        dir = argv[3];
        return do_wfd(atoi(argv[2]));
    }
    if (!strcmp(cmd, "periodic") && argc == 5) {
        dir = argv[3];
        return do_periodic(argv[2], (off_t)strtoll(argv[4], NULL, 0));
    }
    if (!strcmp(cmd, "pair") && argc == 5) {
        dir = argv[4];
        return do_pair(argv[2], argv[3]);
    }
    if (!strcmp(cmd, "stdio") && argc == 5)
        return do_stdio(argv[2], atol(argv[3]), argv[4]);
    if (!strcmp(cmd, "mapexit") && argc == 6) {
        dir = argv[3];
        return do_mapexit(argv[2], (off_t)strtoll(argv[4], NULL, 0), (size_t)strtoull(argv[5], NULL, 0));
    }
    if (!strcmp(cmd, "sigbus") && argc >= 3) {
        dir = argc > 3 ? argv[3] : ".";
        return do_sigbus(argv[2]);
    }
    fprintf(stderr, "usage: tfollow idle|wfd|periodic|pair|stdio|mapexit|sigbus ... (see the source)\n");
    return 2;
}
#endif
