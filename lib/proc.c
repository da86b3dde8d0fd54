/* proc.c: see proc.h.  Reads through mij_libc: in the shim, the real calls. */
#include "proc.h"
#include "journal-layout.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

/* ---------------------------------------------------------------------------------- */
/* Processes                                                                            */

/* Append v in decimal at p; returns the end. */
static char *put_dec(char *p, unsigned v)
{
    char digits[12];
    int n = 0;
    do
        digits[n++] = (char)('0' + v % 10);
    while ((v /= 10) && n < 11);
    while (n)
        *p++ = digits[--n];
    return p;
}

/* Parse a /proc stat file: state (field 3), num_threads (20, when threads is not NULL) and
 * starttime (22).  Async-signal-safe enough for a fork child: no stdio, no allocation. */
static int read_stat(const char *path, char *state, uint64_t *start_ticks, unsigned *threads)
{
    int fd = mij_libc.open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    char buf[1024];
    ssize_t got = mij_libc.read(fd, buf, sizeof buf - 1);
    mij_libc.close(fd);
    if (got <= 0)
        return -EIO;
    buf[got] = '\0';
    char *p = strrchr(buf, ')'); /* the command name may hold anything */
    if (!p || p[1] != ' ')
        return -EIO;
    p += 2;
    *state = *p;
    for (int f = 3; f < 22; f++) {
        p = strchr(p, ' ');
        if (!p)
            return -EIO;
        p++;
        if (f + 1 == 20 && threads) {
            unsigned t = 0;
            while (*p >= '0' && *p <= '9')
                t = t * 10 + (unsigned)(*p++ - '0');
            *threads = t;
        }
    }
    uint64_t t = 0;
    while (*p >= '0' && *p <= '9')
        t = t * 10 + (uint64_t)(*p++ - '0');
    *start_ticks = t;
    return 0;
}

int mij_proc_stat(int pid, char *state, uint64_t *start_ticks, unsigned *threads)
{
    char path[32] = "/proc/";
    memcpy(put_dec(path + 6, (unsigned)pid), "/stat", 6);
    return read_stat(path, state, start_ticks, threads);
}

int mij_dir_numbers(int dfd, bool (*fn)(unsigned long n, void *ctx), void *ctx)
{
    char buf[4096] __attribute__((aligned(8)));
    for (;;) {
        long n = mij_libc.syscall(SYS_getdents64, dfd, buf, sizeof buf);
        if (n <= 0)
            return n < 0 ? -1 : 0;
        for (long at = 0; at < n;) {
            /* struct linux_dirent64: ino (8), off (8), reclen (2), type (1), name */
            unsigned short reclen;
            memcpy(&reclen, buf + at + 16, sizeof reclen);
            const char *name = buf + at + 19;
            at += reclen;
            if (name[0] < '0' || name[0] > '9')
                continue;
            unsigned long v = 0;
            for (const char *c = name; *c >= '0' && *c <= '9'; c++)
                v = v * 10 + (unsigned long)(*c - '0');
            if (fn(v, ctx))
                return 1;
        }
    }
}

struct task_scan {
    const char *dir; /* /proc/PID/task */
};

/* A thread that is not a zombie (or whose state cannot be read): stop. */
static bool task_runs(unsigned long tid, void *arg)
{
    const struct task_scan *ts = arg;
    char path[64]; /* /proc/PID/task/TID/stat */
    size_t dl = strlen(ts->dir);
    memcpy(path, ts->dir, dl);
    path[dl] = '/';
    memcpy(put_dec(path + dl + 1, (unsigned)tid), "/stat", 6);
    char st;
    uint64_t t;
    int r = read_stat(path, &st, &t, NULL);
    if (r == -ENOENT || r == -ESRCH)
        return false; /* gone meanwhile */
    return r < 0 || (st != 'Z' && st != 'X' && st != 'x');
}

/* Is any thread of pid other than a zombie?  Threads that ended under a tracer stay
 * zombies (and counted in num_threads) until it waits for them: they write nothing.
 * When it cannot tell: true. */
static bool some_thread_runs(int pid)
{
    char dir[32] = "/proc/";
    memcpy(put_dec(dir + 6, (unsigned)pid), "/task", 6);
    int fd = mij_libc.open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return errno != ENOENT && errno != ESRCH;
    struct task_scan ts = {dir};
    int r = mij_dir_numbers(fd, task_runs, &ts);
    mij_libc.close(fd);
    return r != 0;
}

/* The state shown for a pid is its main thread's.  A main thread that ended (pthread_exit,
 * or the first of a process's threads to go under SIGKILL) is a zombie while its other
 * threads still run, and one of them may be inside a write: such a process is dead only
 * when none of its threads is anything but a zombie. */
bool mij_pid_alive(int pid, uint64_t start_ticks)
{
    if (pid <= 0)
        return pid == -1;
    char state;
    uint64_t t;
    unsigned threads = 0;
    int r = mij_proc_stat(pid, &state, &t, &threads);
    if (r == -ENOENT || r == -ESRCH)
        return false;
    if (r < 0) /* no /proc: fall back to kill(0) (zombies look alive) */
        return !(kill(pid, 0) < 0 && errno == ESRCH);
    if (start_ticks && t != start_ticks)
        return false; /* the pid was reused */
    if (state == 'X' || state == 'x')
        return false;
    if (state != 'Z')
        return true;
    return threads > 1 && some_thread_runs(pid);
}

