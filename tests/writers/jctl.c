/* jctl.c: a minimal follower for tests/shim.bats, on the journal API (lib/journal.h): it
 * does what `follow` does to the writers, one step at a time, and prints CLOCK_MONOTONIC
 * milliseconds so the test can line up the writers' timestamps.
 *
 *   jctl hold J HOLD_MS LEASE_MS RENEW   quiesce, hold HOLD_MS (renewing the lease if RENEW
 *                                        is 1), release; prints "held T" and "released T"
 *   jctl pivot J TARGET                  quiesce, copy the source to TARGET, pivot, release
 *   jctl lock J SECS                     be the follower for SECS seconds, doing nothing
 *   jctl delay J US SECS                 set the auto-converge delay for SECS seconds
 *
 * Forgeries: what a program that is not the follower could write into the journal (it maps
 * the file itself, takes no lock and no lease, and calls nothing of the journal API).
 *
 *   jctl forge-pivot J PATH              PATH into the pivot path area, pivot_gen + 1
 *   jctl forge-quiesce J                 quiesce = 1 under a lease of one hour (lease_ns,
 *                                        lease_expiry_ns = now + 1 h) "held" by a pid that
 *                                        is not alive (lease_pid, follower_pid)
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "journal.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static long now_ms(void) { return (long)(mi_now_ns() / 1000000); }

static void nap_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
}

static int fail(void)
{
    fprintf(stderr, "jctl: %s\n", mi_lasterr());
    return 1;
}

static int copy_file(const char *from, const char *to)
{
    int in = open(from, O_RDONLY), out = open(to, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    static char b[1 << 20];
    ssize_t n;
    if (in < 0 || out < 0)
        return -1;
    while ((n = read(in, b, sizeof b)) > 0)
        if (write(out, b, (size_t)n) != n)
            return -1;
    fsync(out);
    close(in);
    close(out);
    return n < 0 ? -1 : 0;
}

/* A pid that is not alive: a child that exited and was reaped. */
static int dead_pid(void)
{
    pid_t p = fork();
    if (p == 0)
        _exit(0);
    if (p > 0)
        waitpid(p, NULL, 0);
    return (int)p;
}

/* forge-pivot and forge-quiesce: the journal mapped by hand, as any program could. */
static int forge(int argc, char **argv)
{
    const char *cmd = argv[1], *jp = argv[2];
    int fd = open(jp, O_RDWR | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0 || st.st_size < (off_t)MIJ_HEADER_SIZE) {
        fprintf(stderr, "jctl: %s: cannot open a journal: %s\n", jp, strerror(errno));
        return 1;
    }
    uint8_t *base = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (base == MAP_FAILED) {
        perror("jctl: mmap");
        return 1;
    }
    struct mij_header *h = (struct mij_header *)base;
    if (!strcmp(cmd, "forge-pivot") && argc == 4) {
        char *path = (char *)base + MIJ_OFF_PIVOT_PATH;
        memset(path, 0, MIJ_PATH_MAX);
        strncpy(path, argv[3], MIJ_PATH_MAX - 1);
        uint64_t g = __atomic_add_fetch(&h->pivot_gen, 1, __ATOMIC_SEQ_CST);
        printf("forged pivot_gen %llu -> %s\n", (unsigned long long)g, path);
    } else if (!strcmp(cmd, "forge-quiesce") && argc == 3) {
        int pid = dead_pid();
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        uint64_t now = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
        uint64_t hour = 3600ull * 1000000000ull;
        __atomic_store_n(&h->lease_ns, hour, __ATOMIC_SEQ_CST);
        __atomic_store_n(&h->follower_pid, pid, __ATOMIC_SEQ_CST);
        __atomic_store_n(&h->lease_pid, pid, __ATOMIC_SEQ_CST);
        __atomic_store_n(&h->lease_expiry_ns, now + hour, __ATOMIC_SEQ_CST);
        __atomic_add_fetch(&h->quiesce_seq, 1, __ATOMIC_SEQ_CST);
        __atomic_store_n(&h->quiesce, 1, __ATOMIC_SEQ_CST);
        printf("forged quiesce by pid %d until %llu\n", pid, (unsigned long long)(now + hour));
    } else {
        fprintf(stderr, "jctl: bad command\n");
        return 2;
    }
    munmap(base, (size_t)st.st_size);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc >= 3 && !strncmp(argv[1], "forge-", 6)) {
        setvbuf(stdout, NULL, _IOLBF, 0);
        return forge(argc, argv);
    }
    if (argc < 4) {
        fprintf(stderr, "usage: jctl hold|pivot|lock|delay|forge-pivot|forge-quiesce J ARGS\n");
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    struct mij *j;
    if (mij_open(argv[2], 0, &j) < 0)
        return fail();
    const char *cmd = argv[1];
    uint64_t lease_ms = !strcmp(cmd, "hold") && argc > 4 ? strtoull(argv[4], NULL, 10) : 2000;
    if (mij_follow(j, lease_ms * 1000000) < 0)
        return fail();
    printf("following %d\n", getpid());
    if (!strcmp(cmd, "hold") && argc >= 6) {
        long hold = atol(argv[3]);
        bool renew = atoi(argv[5]) != 0;
        struct mij_quiesce_info qi;
        if (mij_quiesce_begin(j, 5000000000ull, &qi) < 0)
            return fail();
        long t0 = now_ms();
        printf("held %ld writers %u maps %u died %u waited_us %llu\n", t0, qi.writers, qi.maps,
               qi.died, (unsigned long long)(qi.waited_ns / 1000));
        while (now_ms() - t0 < hold) {
            nap_ms(10);
            if (renew && mij_lease_renew(j) < 0)
                printf("lease-lost\n");
        }
        mij_quiesce_end(j);
        printf("released %ld\n", now_ms());
    } else if (!strcmp(cmd, "pivot")) {
        if (mij_quiesce_begin(j, 5000000000ull, NULL) < 0)
            return fail();
        if (copy_file(mij_source_path(j), argv[3]) < 0) {
            perror("jctl: copy");
            return 1;
        }
        if (mij_pivot_request(j, argv[3]) < 0) {
            mij_quiesce_end(j);
            return fail();
        }
        struct mij_pivot_info pi;
        int r = mij_pivot_wait(j, 2000000000ull, &pi);
        mij_quiesce_end(j);
        printf("pivot %s switched %u idle %u failed %u\n", r < 0 ? "timeout" : "ok", pi.switched,
               pi.idle, pi.failed);
    } else if (!strcmp(cmd, "lock")) {
        long end = now_ms() + atol(argv[3]) * 1000;
        while (now_ms() < end) {
            nap_ms(100);
            mij_lease_renew(j);
        }
    } else if (!strcmp(cmd, "delay") && argc >= 5) {
        mij_set_delay(j, (uint32_t)atoi(argv[3]));
        long end = now_ms() + atol(argv[4]) * 1000;
        while (now_ms() < end) {
            nap_ms(100);
            mij_lease_renew(j);
        }
    } else {
        fprintf(stderr, "jctl: bad command\n");
        return 2;
    }
    mij_close(j);
    return 0;
}
