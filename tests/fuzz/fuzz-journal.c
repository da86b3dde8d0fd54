/* fuzz-journal.c: libFuzzer harness for the journal parser (lib/journal.c).
 *
 * The input is written to a temporary file and opened with mij_open(), read-only first
 * (what `journal status` and `journal dump` do), then read-write (what `follow` and
 * `run` do, and what the shim's mij_map does in every writer).  Whatever validation lets
 * through must be safe to use: every inspection function is called, then, read-write, the
 * follower's and a writer's operations, with offsets taken from the input's last bytes.
 * Operations that wait for other processes are called with tiny timeouts.
 *
 * A journal is at least MIJ_HEADER_SIZE + 2 * 4096 bytes (155648): run with
 * -max_len=262144 or more; the seeds are real journals made by `mirror-img run`.
 */
#include "journal.h"
#include "util.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char dir[64], path[96], target[96];

static void die(const char *what)
{
    perror(what);
    abort();
}

static void cleanup(void)
{
    unlink(path);
    unlink(target);
    rmdir(dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    snprintf(dir, sizeof dir, "%s", "/tmp/mi-fuzz-journal.XXXXXX");
    if (!mkdtemp(dir))
        die("mkdtemp");
    atexit(cleanup);
    snprintf(path, sizeof path, "%s/j", dir);
    snprintf(target, sizeof target, "%s/target", dir);
    int fd = open(target, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0 || ftruncate(fd, 1 << 20) < 0)
        die(target);
    close(fd);
    return 0;
}

static uint64_t tail64(const uint8_t *d, size_t size, unsigned k)
{
    uint64_t v = 0;
    if (size >= 8 * (k + 1))
        memcpy(&v, d + size - 8 * (k + 1), 8);
    return v;
}

static void inspect(struct mij *j)
{
    static struct mij_writer w[MIJ_NSLOTS];
    static struct mij_rec recs[MIJ_NRING];
    static struct mij_target t;
    char buf[512];
    uint64_t copying, bytes, writes, left, first;
    mij_backlog(j, &copying);
    mij_writers(j, w, MIJ_NSLOTS);
    if (mij_ring_read(j, recs, MIJ_NRING) < 0)
        return;
    mij_reasons_str(mij_untrusted(j), buf, sizeof buf);
    mij_target_get(j, &t);
    if (strlen(mij_source_path(j)) >= MIJ_PATH_MAX + 1024)
        __builtin_trap();
    mij_follower(j, &left);
    mij_counters(j, &bytes, &writes);
    mij_get_delay(j);
    for (int copy = 0; copy < 2; copy++) {
        uint64_t from = 0;
        for (int i = 0; i < 64; i++) {
            uint64_t n = mij_next_run(j, copy, from, &first);
            if (!n)
                break;
            if (first >= j->nchunks || n > j->nchunks - first)
                __builtin_trap(); /* a run outside the bitmap */
            from = first + n;
        }
    }
    for (unsigned r = 0; r <= MIJ_U_NREASONS; r++)
        mij_reason_text(r);
    struct stat st;
    if (stat(path, &st) == 0)
        mij_check_source(j, &st, path);
}

/* What the follower does to a journal it opened read-write. */
static void follower(struct mij *j, const uint8_t *d, size_t size)
{
    int fd = open(target, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        die(target);
    mij_source_check(j, fd);
    if (mij_follow(j, 1000000) == 0) {
        uint64_t first, n, from = tail64(d, size, 0) % (j->nchunks + 1);
        for (int i = 0; i < 16 && (n = mij_take(j, from, 1 + tail64(d, size, 1) % 4096, &first)); i++) {
            if (first >= j->nchunks || n > j->nchunks - first)
                __builtin_trap();
            if (i & 1)
                mij_redirty(j, first, n);
            else
                mij_done(j, first, n);
            from = first + n;
        }
        mij_mark_range(j, tail64(d, size, 2), tail64(d, size, 3));
        struct mij_quiesce_info qi;
        if (mij_quiesce_begin(j, 1000000, &qi) == 0) {
            mij_pivot_request(j, target);
            struct mij_pivot_info pi;
            mij_pivot_wait(j, 1000000, &pi);
            mij_quiesce_end(j);
        }
        mij_source_observe(j, fd);
        struct stat st;
        if (fstat(fd, &st) == 0)
            mij_target_set(j, target, &st);
        mij_set_delay(j, 0);
        mij_reset(j);
        mij_unfollow(j);
    }
    close(fd);
}

/* What the shim does on its write path (minus the quiesce wait, which honours a lease
 * taken from the file). */
static void writer(struct mij *j, const uint8_t *d, size_t size)
{
    struct mij_slot *s = mij_register(j, getpid(), &(uint64_t){0});
    uint64_t idx = mij_w_start(j);
    mij_mark(j, tail64(d, size, 4), tail64(d, size, 5), getpid());
    mij_w_record(j, s, idx, MIJ_OP_PWRITE, 3, tail64(d, size, 4), tail64(d, size, 5), getpid(), 1);
    mij_untrust(j, (enum mij_reason)(tail64(d, size, 6) % MIJ_U_NREASONS), getpid());
    char buf[256];
    mij_reasons_str(~0ull, buf, sizeof buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        die(path);
    if (size && write(fd, data, size) != (ssize_t)size)
        die(path);
    close(fd);
    struct mij *j;
    mi_clearerr();
    if (mij_open(path, MIJ_RDONLY, &j) < 0) {
        if (strncmp(mi_lasterr(), path, strlen(path)))
            __builtin_trap(); /* every refusal names the journal */
        return 0;
    }
    inspect(j);
    mij_close(j);
    if (mij_open(path, 0, &j) < 0)
        return 0;
    inspect(j);
    writer(j, data, size);
    follower(j, data, size);
    mij_close(j);
    return 0;
}
