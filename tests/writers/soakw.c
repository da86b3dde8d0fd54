/* soakw.c: the writer of tests/soak.sh, and the comparer that judges its rounds.
 *
 *   soakw write IMG REF STOP P NPROC NTHREAD
 *       NTHREAD threads; thread t owns region P*NTHREAD+t of the NPROC*NTHREAD regions of
 *       IMG and writes random bytes inside it, without pause, at random offsets and with
 *       random lengths (never 4 KiB-aligned on purpose; one write in four straddles a
 *       64 KiB chunk boundary), each write first to IMG and then the same bytes at the same
 *       offset to REF, until the file STOP exists.  One writer per region, so REF ends with
 *       the last write of every byte.  Region boundaries are not chunk-aligned, so the two
 *       threads on either side of one share a chunk.  Each thread has descriptors of its
 *       own and takes turns with pwrite, pwritev and lseek+write.  Prints "WRITES BYTES".
 *
 *   soakw diff A B
 *       Prints "RANGES BYTES": how many runs of differing bytes A and B have (a size
 *       difference counts as one run), and how many bytes differ; the first ten runs go to
 *       stderr.  Exit 0 when they are the same, 1 when they differ, 2 on an error.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define CHUNK 65536
#define MAX_LEN (256 * 1024)
#define MAX_THREADS 64

static const char *img_path, *ref_path, *stop_path;
static off_t img_size;
static int proc, nproc, nthread;

struct thread {
    pthread_t id;
    int t;
    uint64_t writes, bytes;
};

static void die(const char *what)
{
    fprintf(stderr, "soakw: %s: %s\n", what, strerror(errno));
    exit(1);
}

static uint64_t next(uint64_t *s)  /* xorshift64: cheap enough to fill every write */
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* bound(r): where region r starts.  3001 bytes off the even split, so that no boundary
 * falls on a page or a chunk. */
static off_t bound(int r)
{
    int nreg = nproc * nthread;
    if (r == 0)
        return 0;
    if (r == nreg)
        return img_size;
    return (off_t)((double)img_size * r / nreg) - 3001;
}

/* pick OFF and LEN inside [start, end): lengths from 1 byte to 256 KiB, at any offset; one
 * in four placed across a chunk boundary. */
static size_t pick(uint64_t *s, off_t start, off_t end, off_t *off)
{
    uint64_t r = next(s);
    size_t len;
    switch (r % 8) {
    case 0: case 1: case 2: len = 1 + next(s) % 4095; break;
    case 3: case 4: case 5: len = 4096 + next(s) % (CHUNK + 8192); break;
    default: len = CHUNK + next(s) % (MAX_LEN - CHUNK); break;
    }
    if ((off_t)len > end - start)
        len = (size_t)(end - start);
    if ((r >> 8) % 4 == 0 && end - start > 2 * CHUNK) {
        /* across the boundary at B: it starts 1 to len-1 bytes before it */
        off_t b = (start / CHUNK + 1 + (off_t)(next(s) % (uint64_t)((end - start) / CHUNK))) * CHUNK;
        if (len < 2)
            len = 2 + next(s) % 8191;
        *off = b - 1 - (off_t)(next(s) % (len - 1));
    } else {
        *off = start + (off_t)(next(s) % (uint64_t)(end - start - (off_t)len + 1));
    }
    if (*off < start)
        *off = start;
    if (*off + (off_t)len > end)
        len = (size_t)(end - *off);
    return len;
}

/* the write to IMG, by the call of the turn; short writes are finished with pwrite */
static void write_img(int fd, const char *buf, size_t len, off_t off, unsigned turn, uint64_t *s)
{
    ssize_t n;
    if (turn % 3 == 0) {
        n = pwrite(fd, buf, len, off);
    } else if (turn % 3 == 1) {
        size_t a = len / 3 + next(s) % (len / 3 + 1), b = (len - a) / 2;
        struct iovec iov[3] = { { (void *)buf, a }, { (void *)(buf + a), b },
                                { (void *)(buf + a + b), len - a - b } };
        n = pwritev(fd, iov, 3, off);
    } else {
        if (lseek(fd, off, SEEK_SET) != off)
            die("lseek");
        n = write(fd, buf, len);
    }
    if (n < 0)
        die(img_path);
    while ((size_t)n < len) {
        ssize_t m = pwrite(fd, buf + n, len - (size_t)n, off + n);
        if (m <= 0)
            die(img_path);
        n += m;
    }
}

static void *writer(void *arg)
{
    struct thread *th = arg;
    int r = proc * nthread + th->t;
    off_t start = bound(r), end = bound(r + 1);
    uint64_t s = ((uint64_t)getpid() << 20) ^ (uint64_t)time(NULL) ^ ((uint64_t)r * 0x9e3779b97f4a7c15ull);
    char *buf = malloc(MAX_LEN + 8);
    int img = open(img_path, O_RDWR), ref = open(ref_path, O_RDWR);
    if (!buf || img < 0 || ref < 0)
        die("open");
    for (unsigned turn = 0;; turn++) {
        if (turn % 32 == 0 && access(stop_path, F_OK) == 0)
            break;
        off_t off;
        size_t len = pick(&s, start, end, &off);
        if (len == 0)
            continue;
        for (size_t i = 0; i < len; i += 8) {
            uint64_t v = next(&s);
            memcpy(buf + i, &v, 8);
        }
        write_img(img, buf, len, off, turn, &s);
        for (size_t done = 0; done < len;) {
            ssize_t m = pwrite(ref, buf + done, len - done, off + (off_t)done);
            if (m <= 0)
                die(ref_path);
            done += (size_t)m;
        }
        th->writes++;
        th->bytes += len;
    }
    close(img);
    close(ref);
    free(buf);
    return NULL;
}

static int cmd_write(char **argv)
{
    struct stat st;
    struct thread th[MAX_THREADS];
    img_path = argv[0];
    ref_path = argv[1];
    stop_path = argv[2];
    proc = atoi(argv[3]);
    nproc = atoi(argv[4]);
    nthread = atoi(argv[5]);
    if (nproc < 1 || nthread < 1 || nthread > MAX_THREADS || proc < 0 || proc >= nproc) {
        fprintf(stderr, "soakw: bad P, NPROC or NTHREAD\n");
        return 2;
    }
    if (stat(img_path, &st) < 0)
        die(img_path);
    img_size = st.st_size;
    if (img_size / (nproc * nthread) < 4 * CHUNK) {
        fprintf(stderr, "soakw: %s is too small for %d regions\n", img_path, nproc * nthread);
        return 2;
    }
    for (int t = 0; t < nthread; t++) {
        th[t] = (struct thread){ .t = t };
        if (pthread_create(&th[t].id, NULL, writer, &th[t]))
            die("pthread_create");
    }
    uint64_t writes = 0, bytes = 0;
    for (int t = 0; t < nthread; t++) {
        pthread_join(th[t].id, NULL);
        writes += th[t].writes;
        bytes += th[t].bytes;
    }
    printf("%" PRIu64 " %" PRIu64 "\n", writes, bytes);
    return 0;
}

static int cmd_diff(char **argv)
{
    static char a[1 << 20], b[1 << 20];
    int fa = open(argv[0], O_RDONLY), fb = open(argv[1], O_RDONLY);
    if (fa < 0 || fb < 0) {
        fprintf(stderr, "soakw: diff: %s\n", strerror(errno));
        return 2;
    }
    uint64_t ranges = 0, bytes = 0;
    off_t pos = 0, run_start = -1;
    for (;;) {
        ssize_t na = pread(fa, a, sizeof a, pos), nb = pread(fb, b, sizeof b, pos);
        if (na < 0 || nb < 0) {
            fprintf(stderr, "soakw: diff: %s\n", strerror(errno));
            return 2;
        }
        ssize_t n = na < nb ? na : nb;
        for (ssize_t i = 0; i < n; i++) {
            if (a[i] != b[i]) {
                bytes++;
                if (run_start < 0)
                    run_start = pos + i;
            } else if (run_start >= 0) {
                if (++ranges <= 10)
                    fprintf(stderr, "soakw: differ at %jd, %jd bytes\n", (intmax_t)run_start,
                            (intmax_t)(pos + i - run_start));
                run_start = -1;
            }
        }
        pos += n;
        if (na != nb || n == 0)
            break;
    }
    if (run_start >= 0 && ++ranges <= 10)
        fprintf(stderr, "soakw: differ at %jd, %jd bytes\n", (intmax_t)run_start,
                (intmax_t)(pos - run_start));
    struct stat sa, sb;
    if (fstat(fa, &sa) == 0 && fstat(fb, &sb) == 0 && sa.st_size != sb.st_size) {
        ranges++;
        fprintf(stderr, "soakw: sizes differ: %jd and %jd\n", (intmax_t)sa.st_size, (intmax_t)sb.st_size);
    }
    printf("%" PRIu64 " %" PRIu64 "\n", ranges, bytes);
    return ranges ? 1 : 0;
}

int main(int argc, char **argv)
{
    if (argc == 8 && strcmp(argv[1], "write") == 0)
        return cmd_write(argv + 2);
    if (argc == 4 && strcmp(argv[1], "diff") == 0)
        return cmd_diff(argv + 2);
    fprintf(stderr, "usage: soakw write IMG REF STOP P NPROC NTHREAD\n"
                    "       soakw diff A B\n");
    return 2;
}
