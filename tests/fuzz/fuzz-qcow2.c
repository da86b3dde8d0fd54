/* fuzz-qcow2.c: libFuzzer harness for the qcow2 reader (formats/qcow2.c).
 *
 * The input is written as a file "img" in a private temporary directory and opened with
 * qcow2_open(), which checks the header, the extensions, the L1 table and every L2 table;
 * then block status is walked over the whole virtual size (with and without EP_BS_TOP) and
 * a bounded amount of data is read (at most READ_BUDGET bytes per input, whatever the
 * virtual size says).  Oracles besides the sanitizers: block status honours its contract
 * (0 < len <= max, a known kind) and a range it calls EP_ZERO reads as zeros.
 *
 * Backing files: the directory also holds "base.raw" (a small raw file) and "base.qcow2"
 * (a second copy of the input), so relative backing and data-file names that the seeds use
 * resolve to something real and loops are exercised.  Names with a '/' could reach any
 * file on the machine (a FIFO would hang the fuzzer): such an input is first opened with
 * no_backing (the name is still read and checked), then with the name neutralised.
 */
#include "endpoint.h"
#include "qcow2.h"
#include "util.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define READ_BUDGET (1u << 20)
#define MAX_CALLS 4096

static char dir[64], img[96], base_qcow2[96];
static uint8_t *rbuf;

static void die(const char *what)
{
    perror(what);
    abort();
}

static void put_file(const char *path, const uint8_t *data, size_t size)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        die(path);
    size_t done = 0;
    while (done < size) {
        ssize_t n = write(fd, data + done, size - done);
        if (n <= 0)
            die(path);
        done += (size_t)n;
    }
    close(fd);
}

static void cleanup(void)
{
    char p[128];
    const char *names[] = {"img", "base.qcow2", "base.raw"};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, names[i]);
        unlink(p);
    }
    rmdir(dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    snprintf(dir, sizeof dir, "%s", "/tmp/mi-fuzz-qcow2.XXXXXX");
    if (!mkdtemp(dir))
        die("mkdtemp");
    atexit(cleanup);
    snprintf(img, sizeof img, "%s/img", dir);
    snprintf(base_qcow2, sizeof base_qcow2, "%s/base.qcow2", dir);
    char p[128];
    snprintf(p, sizeof p, "%s/base.raw", dir);
    static uint8_t pattern[256 * 1024];
    for (size_t i = 0; i < sizeof pattern; i++)
        pattern[i] = (uint8_t)(i * 7 + (i >> 9));
    put_file(p, pattern, sizeof pattern);
    if (!(rbuf = malloc(64 * 1024)))
        die("malloc");
    return 0;
}

/* A name of len bytes at off in the input that could leave the directory. */
static bool escapes(const uint8_t *d, size_t size, uint64_t off, uint64_t len)
{
    return off && len && len <= 4096 && off < size && len <= size - off &&
           memchr(d + off, '/', len);
}

/* Neutralise a backing file name that could leave the directory. */
static bool confine_backing(uint8_t *d, size_t size)
{
    if (size < 20 || !escapes(d, size, mi_be64(d + 8), mi_be32(d + 16)))
        return false;
    memset(d + 8, 0, 8); /* backing file offset (v1, v2 and v3 alike) */
    return true;
}

/* The same for external data file names: their extensions sit at 8-aligned offsets in
 * the first cluster (at most 2 MiB). */
static void confine_data_file(uint8_t *d, size_t size)
{
    size_t end = size < (2u << 20) ? size : (2u << 20);
    for (size_t o = 72; o + 8 <= end; o += 8)
        if (mi_be32(d + o) == QCOW2_EXT_DATA_FILE && escapes(d, size, o + 8, mi_be32(d + o + 4)))
            mi_put_be32(d + o, 0x7a7a7a7au); /* an unknown extension: skipped */
}

static bool all_zero(const uint8_t *b, size_t n)
{
    static const uint8_t zeros[64 * 1024];
    return !memcmp(b, zeros, n);
}

static void walk(struct ep *ep)
{
    uint64_t budget = READ_BUDGET, size = ep->size;
    unsigned calls = 0;
    for (unsigned flags = 0; flags <= EP_BS_TOP; flags += EP_BS_TOP) {
        for (uint64_t off = 0; off < size && calls < MAX_CALLS; calls++) {
            uint64_t len = 0;
            int kind = -1;
            if (ep->ops->block_status(ep, off, size - off, flags, &len, &kind) < 0)
                break;
            if (len == 0 || len > size - off)
                __builtin_trap(); /* contract: 0 < len <= max */
            if (kind != EP_DATA && kind != EP_ZERO && !(flags && kind == EP_UNALLOC))
                __builtin_trap();
            /* Read the run (as far as the budget goes) in 64 KiB pieces, and once at an
             * odd offset: reads that start and end inside clusters. */
            for (uint64_t p = 0; !flags && p < len && budget; ) {
                uint64_t n = mi_min(mi_min(len - p, budget), 64 * 1024);
                budget -= n;
                if (ep->ops->pread(ep, rbuf, n, off + p) == 0 && kind == EP_ZERO &&
                    !all_zero(rbuf, n))
                    __builtin_trap(); /* a range said to be zero reads as data */
                p += n;
            }
            if (!flags && len > 4000 && budget >= 3000) {
                budget -= 3000;
                if (ep->ops->pread(ep, rbuf, 3000, off + 777) == 0 && kind == EP_ZERO &&
                    !all_zero(rbuf, 3000))
                    __builtin_trap();
            }
            off += len;
        }
    }
    /* The end of the image, and a read that crosses cluster and table boundaries. */
    if (size) {
        uint64_t n = mi_min(size, 64 * 1024);
        ep->ops->pread(ep, rbuf, n, size - n);
        if (size > 3 * 4096)
            ep->ops->pread(ep, rbuf, mi_min(64 * 1024, size / 2), size / 3);
    }
    struct ep_info info;
    if (ep->ops->info)
        ep->ops->info(ep, &info);
}

static void open_walk(const struct ep_open_opts *o)
{
    mi_clearerr();
    struct ep *ep = qcow2_open(img, o, 0);
    if (!ep) {
        if (!mi_lasterr()[0])
            __builtin_trap(); /* a refusal always says why */
        return;
    }
    walk(ep);
    ep_close(ep);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t *d = malloc(size ? size : 1);
    if (!d)
        return 0;
    memcpy(d, data, size);
    confine_data_file(d, size);
    uint8_t save[8];
    if (size >= 20)
        memcpy(save, d + 8, 8);
    if (confine_backing(d, size)) {
        /* the name is read and refused, never followed */
        memcpy(d + 8, save, 8);
        put_file(img, d, size);
        open_walk(&(struct ep_open_opts){.no_backing = true});
        memset(d + 8, 0, 8);
    }
    put_file(img, d, size);
    put_file(base_qcow2, d, size);
    open_walk(&(struct ep_open_opts){0});
    open_walk(&(struct ep_open_opts){.top_only = true});
    free(d);
    return 0;
}
