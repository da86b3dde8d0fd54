/* test-qcow2-create.c: the qcow2 writer, judged by QEMU's tools.
 *
 * Each scenario creates an image through qcow2_create and a raw reference file, applies
 * the same writes and zeroes to both (from two threads where it matters), flushes and
 * closes, then asks `qemu-img check` (no error, no leak) and `qemu-img compare` (same
 * content), and looks at `qemu-img info`/`map` for the layout claims.
 *
 * Usage: test-qcow2-create                     the TAP suite
 *        test-qcow2-create --bench FILE MIB [zlib|zstd]   write speed from two threads
 */
#include "endpoint.h"
#include "tap.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char dir[256];
static bool have_qemu;

/* ---- data patterns ---- */

enum { K_RANDOM, K_TEXT, K_ZEROS };

/* Deterministic bytes for [off, off+len): random-looking (incompressible), text
 * (compressible) or zeros.  The seed makes rewrites differ from first writes. */
static void fill(uint8_t *b, uint64_t len, uint64_t off, int kind, unsigned seed)
{
    if (kind == K_ZEROS) {
        memset(b, 0, len);
        return;
    }
    if (kind == K_TEXT) {
        for (uint64_t i = 0; i < len;) {
            char line[64];
            int n = snprintf(line, sizeof line, "seed %u offset %llu: the quick brown fox\n",
                             seed, (unsigned long long)(off + i));
            for (int j = 0; j < n && i < len; j++, i++)
                b[i] = (uint8_t)line[j];
        }
        return;
    }
    uint64_t x = (off / 8 + 1) * 0x9e3779b97f4a7c15ull ^ seed;
    for (uint64_t i = 0; i < len; i++) {
        if (i % 8 == 0) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        }
        b[i] = (uint8_t)(x >> (8 * (i % 8)));
    }
}

/* ---- a scenario: an image and its raw reference ---- */

struct scen {
    struct ep *ep;
    int ref;
    uint64_t size;
    char img[512], refpath[512];
    const char *tag;
};

static bool scen_open(struct scen *s, const char *tag, struct ep_create_opts *o)
{
    memset(s, 0, sizeof *s);
    s->tag = tag;
    s->size = o->size;
    snprintf(s->img, sizeof s->img, "%s/%s.qcow2", dir, tag);
    snprintf(s->refpath, sizeof s->refpath, "%s/%s.raw", dir, tag);
    unlink(s->img);
    o->format = "qcow2";
    s->ep = qcow2_create(s->img, o);
    if (!s->ep) {
        printf("# %s: %s\n", tag, mi_lasterr());
        return false;
    }
    s->ref = open(s->refpath, O_RDWR | O_CREAT | O_TRUNC, 0644);
    return s->ref >= 0 && ftruncate(s->ref, (off_t)s->size) == 0;
}

static bool do_write(struct scen *s, uint64_t off, uint64_t len, int kind, unsigned seed)
{
    uint8_t *b = malloc(len);
    fill(b, len, off, kind, seed);
    int r = s->ep->ops->pwrite(s->ep, b, len, off);
    if (r < 0)
        printf("# %s: pwrite %llu+%llu: %s\n", s->tag, (unsigned long long)off,
               (unsigned long long)len, mi_lasterr());
    bool good = r == 0 && mi_pwrite_full(s->ref, b, len, off) == 0;
    free(b);
    return good;
}

static bool do_zero(struct scen *s, uint64_t off, uint64_t len)
{
    int r = s->ep->ops->zero(s->ep, off, len, EP_ZERO_MAY_UNMAP);
    if (r < 0)
        printf("# %s: zero %llu+%llu: %s\n", s->tag, (unsigned long long)off,
               (unsigned long long)len, mi_lasterr());
    uint8_t *b = calloc(1, len);
    bool good = r == 0 && mi_pwrite_full(s->ref, b, len, off) == 0;
    free(b);
    return good;
}

/* Run a shell command; 0 when it exits 0.  Its output goes to the TAP stream as comments
 * when it fails. */
static int sh(const char *fmt, ...)
{
    char cmd[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    char full[2600];
    snprintf(full, sizeof full, "(%s) > %s/sh.log 2>&1", cmd, dir);
    int r = system(full);
    if (r != 0) {
        char log[300];
        snprintf(log, sizeof log, "%s/sh.log", dir);
        printf("# command failed (%d): %s\n", r, cmd);
        FILE *f = fopen(log, "r");
        char line[512];
        for (int i = 0; f && i < 20 && fgets(line, sizeof line, f); i++)
            printf("#   %s", line);
        if (f)
            fclose(f);
    }
    return r;
}

/* Output of a command, as a malloc'd string. */
static char *capture(const char *fmt, ...)
{
    char cmd[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    FILE *f = popen(cmd, "r");
    size_t cap = 1 << 16, len = 0;
    char *out = malloc(cap);
    size_t n;
    while (f && (n = fread(out + len, 1, cap - len - 1, f)) > 0) {
        len += n;
        if (len + 1 == cap)
            out = realloc(out, cap *= 2);
    }
    out[len] = 0;
    if (f)
        pclose(f);
    return out;
}

static bool qcheck(const char *img) { return sh("qemu-img check -f qcow2 '%s'", img) == 0; }

static bool qsame(const struct scen *s)
{
    return sh("qemu-img compare -f raw -F qcow2 '%s' '%s'", s->refpath, s->img) == 0;
}

/* Flush and close the image, then judge it: qemu-img check and compare. */
static void scen_judge(struct scen *s, const char *what)
{
    int fr = s->ep->ops->flush(s->ep);
    int cr = ep_close(s->ep);
    s->ep = NULL;
    close(s->ref);
    if (fr || cr)
        printf("# %s: flush/close: %s\n", s->tag, mi_lasterr());
    ok(fr == 0 && cr == 0, "%s: flush and close succeed", what);
    if (!have_qemu) {
        printf("ok %d # skip qemu-img is not installed\n", ++tap_n);
        printf("ok %d # skip qemu-img is not installed\n", ++tap_n);
        return;
    }
    ok(qcheck(s->img), "%s: qemu-img check finds no error and no leak", what);
    ok(qsame(s), "%s: qemu-img compare: identical to the raw reference", what);
}

/* ---- qemu-img map --output=json, parsed ---- */

struct mapent {
    uint64_t start, length, offset;
    int depth;
    bool data, zero, has_offset;
};

static int read_map(const char *img, struct mapent **out)
{
    char *s = capture("qemu-img map -f qcow2 --output=json '%s' 2>/dev/null", img);
    int n = 0, cap = 16;
    struct mapent *m = malloc(cap * sizeof *m);
    for (char *p = s; (p = strstr(p, "\"start\":")); p++) {
        if (n == cap)
            m = realloc(m, (cap *= 2) * sizeof *m);
        char *end = strchr(p, '}');
        struct mapent e = {0};
        e.start = strtoull(p + 8, NULL, 10);
        char *q = strstr(p, "\"length\":");
        e.length = q ? strtoull(q + 9, NULL, 10) : 0;
        q = strstr(p, "\"depth\":");
        e.depth = q ? atoi(q + 8) : 0;
        q = strstr(p, "\"data\":");
        e.data = q && q < end && !strncmp(q + 8, "true", 4);
        q = strstr(p, "\"zero\":");
        e.zero = q && q < end && !strncmp(q + 8, "true", 4);
        q = strstr(p, "\"offset\":");
        e.has_offset = q && q < end;
        e.offset = e.has_offset ? strtoull(q + 9, NULL, 10) : 0;
        m[n++] = e;
    }
    free(s);
    *out = m;
    return n;
}

/* Does any map entry with data (at depth 0 when top) overlap [off, off+len)? */
static bool map_has_data(const char *img, uint64_t off, uint64_t len)
{
    struct mapent *m;
    int n = read_map(img, &m);
    bool found = false;
    for (int i = 0; i < n; i++)
        if (m[i].data && m[i].start < off + len && off < m[i].start + m[i].length)
            found = true;
    free(m);
    return found;
}

/* Guest bytes stored compressed (data, no host offset). */
static uint64_t map_compressed_bytes(const char *img)
{
    struct mapent *m;
    int n = read_map(img, &m);
    uint64_t sum = 0;
    for (int i = 0; i < n; i++)
        if (m[i].data && !m[i].has_offset)
            sum += m[i].length;
    free(m);
    return sum;
}

static bool info_has(const char *img, const char *needle)
{
    char *s = capture("qemu-img info --output=json '%s' 2>&1", img);
    bool r = strstr(s, needle) != NULL;
    if (!r)
        printf("# '%s' not in qemu-img info:\n# %s\n", needle, s);
    free(s);
    return r;
}

static bool read_header(const char *img, uint8_t *h, size_t len)
{
    int fd = open(img, O_RDONLY);
    bool r = fd >= 0 && mi_pread_full(fd, h, len, 0) == 0;
    if (fd >= 0)
        close(fd);
    return r;
}

/* ---- two writers ---- */

/* A layout: the image cut into chunks, each written, zeroed or left alone. */
enum { A_HOLE, A_DATA, A_TEXT, A_ZERO, A_ZERODATA };

struct plan {
    struct scen *s;
    uint64_t chunk;
    const int *acts;
    int nacts;
    int thread;
    bool fail;
};

static uint64_t nchunks(const struct plan *p)
{
    return (p->s->size + p->chunk - 1) / p->chunk;
}

static void *plan_worker(void *arg)
{
    struct plan *p = arg;
    for (uint64_t i = (uint64_t)p->thread; i < nchunks(p); i += 2) {
        uint64_t off = i * p->chunk, len = mi_min(p->chunk, p->s->size - off);
        bool good = true;
        switch (p->acts[i % p->nacts]) {
        case A_DATA: good = do_write(p->s, off, len, K_RANDOM, 1); break;
        case A_TEXT: good = do_write(p->s, off, len, K_TEXT, 1); break;
        case A_ZERODATA: good = do_write(p->s, off, len, K_ZEROS, 1); break;
        case A_ZERO: good = do_zero(p->s, off, len); break;
        default: break;
        }
        if (!good)
            p->fail = true;
    }
    return NULL;
}

/* Apply the layout from two threads (chunks alternate between them). */
static bool run_plan(struct scen *s, uint64_t chunk, const int *acts, int nacts)
{
    struct plan p[2];
    pthread_t t[2];
    for (int i = 0; i < 2; i++) {
        p[i] = (struct plan){s, chunk, acts, nacts, i, false};
        pthread_create(&t[i], NULL, plan_worker, &p[i]);
    }
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    return !p[0].fail && !p[1].fail;
}

static const int mixed[] = {A_DATA, A_TEXT, A_ZERO, A_HOLE, A_DATA, A_ZERODATA, A_TEXT};
#define NMIXED ((int)(sizeof mixed / sizeof mixed[0]))

/* A whole scenario with the mixed layout. */
static void mixed_case(const char *tag, struct ep_create_opts *o, uint64_t chunk)
{
    struct scen s;
    char what[128];
    snprintf(what, sizeof what, "%s", tag);
    bool opened = scen_open(&s, tag, o);
    ok(opened, "%s: created", what);
    if (!opened)
        return;
    ok(run_plan(&s, chunk, mixed, NMIXED), "%s: writes and zeroes from two threads", what);
    scen_judge(&s, what);
}

/* ---- the tests ---- */

static void test_refusals(void)
{
    char path[512];
    snprintf(path, sizeof path, "%s/exists.qcow2", dir);
    int fd = open(path, O_CREAT | O_WRONLY | O_TRUNC, 0644);
    close(fd);
    struct ep_create_opts o = {.format = "qcow2", .size = MI_MiB};
    struct ep *ep = qcow2_create(path, &o);
    char want[600];
    snprintf(want, sizeof want, "%s: cannot create: File exists", path);
    ok(!ep && !strcmp(mi_lasterr(), want), "an existing file is refused: %s", mi_lasterr());
    o.force = true;
    ep = qcow2_create(path, &o);
    ok(ep != NULL, "--force replaces it");
    if (ep) {
        ep->ops->flush(ep);
        ep_close(ep);
        ok(!have_qemu || qcheck(path), "the replaced image is a valid empty qcow2");
    }

    o = (struct ep_create_opts){.format = "qcow2", .size = 0, .force = true};
    ep = qcow2_create(path, &o);
    ok(ep && ep->ops->flush(ep) == 0 && ep_close(ep) == 0 && (!have_qemu || qcheck(path)),
       "an empty (0-byte) image is valid");

    snprintf(path, sizeof path, "%s/bad.qcow2", dir);
    char long_name[501];
    memset(long_name, 'b', 500);
    long_name[500] = 0;
    struct {
        struct ep_create_opts o;
        const char *msg;
    } bad[] = {
        {{.size = MI_MiB, .cluster_size = 1000}, "invalid cluster size 1000"},
        {{.size = MI_MiB, .cluster_size = 256}, "invalid cluster size 256"},
        {{.size = MI_MiB, .cluster_size = 4 * MI_MiB}, "invalid cluster size 4194304"},
        {{.size = MI_MiB, .compat = 2, .compression_type = 1}, "zstd needs compat=1.1"},
        {{.size = MI_MiB, .compression_type = 7}, "invalid compression type"},
        {{.size = MI_MiB, .compat = 4}, "invalid compat level"},
        {{.size = MI_MiB, .compress = true, .preallocation = EP_PREALLOC_METADATA},
         "compression and preallocation"},
        {{.size = MI_MiB, .backing_file = "b.raw", .preallocation = EP_PREALLOC_FULL},
         "preallocation cannot be combined with a backing file"},
        {{.size = MI_MiB + 100}, "not a multiple of 512"},
        {{.size = MI_MiB, .backing_format = "raw"}, "backing format needs a backing file"},
        {{.size = 200 * MI_GiB, .cluster_size = 512}, "too large for cluster size 512"},
        {{.size = MI_MiB, .cluster_size = 512, .backing_file = long_name},
         "does not fit in the header cluster"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        unlink(path);
        bad[i].o.format = "qcow2";
        ep = qcow2_create(path, &bad[i].o);
        char prefix[600];
        snprintf(prefix, sizeof prefix, "%s: ", path);
        ok(!ep && !strncmp(mi_lasterr(), prefix, strlen(prefix)) &&
               strstr(mi_lasterr(), bad[i].msg) && access(path, F_OK) != 0,
           "refused before creating anything: %s", mi_lasterr());
        ep_close(ep);
    }
}

static void test_default(void)
{
    /* 6 MiB and 3 sectors: the last cluster is partial. */
    struct ep_create_opts o = {.size = 6 * MI_MiB + 1536};
    struct scen s;
    bool opened = scen_open(&s, "default", &o);
    ok(opened && s.ep->align == 65536 && (s.ep->caps & EP_CAP_IS_ZERO) &&
           (s.ep->caps & EP_CAP_ZERO),
       "default: 64 KiB clusters, align 65536, a fresh image reads as zeros");
    if (!opened)
        return;
    bool w = run_plan(&s, 256 * 1024, mixed, NMIXED);
    /* the partial last cluster, written on its own */
    w = w && do_write(&s, 6 * MI_MiB, 1536, K_RANDOM, 2);
    ok(w, "default: mixed writes and zeroes from two threads, partial last cluster");

    /* Read back through the writer before closing (what a verify pass would do). */
    uint8_t *a = malloc(s.size), *b = malloc(s.size);
    bool same = s.ep->ops->pread(s.ep, a, s.size, 0) == 0 &&
                mi_pread_full(s.ref, b, s.size, 0) == 0 && !memcmp(a, b, s.size);
    ok(same, "default: pread reads back what was written");
    free(a);
    free(b);

    /* Block status of this layer: chunk 2 zeroed (never allocated: reads as zeros),
     * chunk 3 a hole, chunk 0 data. */
    uint64_t len;
    int kind;
    int r = s.ep->ops->block_status(s.ep, 0, s.size, EP_BS_TOP, &len, &kind);
    ok(r == 0 && kind == EP_DATA && len == 2 * 256 * 1024,
       "default: block status: data run at 0 (len %llu)", (unsigned long long)len);
    r = s.ep->ops->block_status(s.ep, 2 * 256 * 1024, s.size - 2 * 256 * 1024, EP_BS_TOP,
                                &len, &kind);
    ok(r == 0 && kind == EP_UNALLOC && len == 2 * 256 * 1024,
       "default: block status: zeroed and untouched chunks are unallocated");
    r = s.ep->ops->block_status(s.ep, 2 * 256 * 1024, 256 * 1024, 0, &len, &kind);
    ok(r == 0 && kind == EP_ZERO && len == 256 * 1024,
       "default: block status: they read as zeros");
    scen_judge(&s, "default");
    if (!have_qemu)
        return;
    ok(!map_has_data(s.img, 2 * 256 * 1024, 2 * 256 * 1024),
       "default: zeroed and untouched ranges hold no data (qemu-img map)");
    ok(info_has(s.img, "\"compat\": \"1.1\"") && info_has(s.img, "\"cluster-size\": 65536") &&
           info_has(s.img, "\"virtual-size\": 6292992") &&
           info_has(s.img, "\"refcount-bits\": 16"),
       "default: qemu-img info: compat 1.1, 64 KiB clusters, exact virtual size");
    uint8_t h[112];
    ok(read_header(s.img, h, sizeof h) && mi_be32(h + 4) == 3 && mi_be32(h + 100) == 104 &&
           mi_be64(h + 72) == 0,
       "default: v3 header, length 104, no incompatible feature");
    /* data clusters in the order the writes came: the first chunk's clusters follow
     * each other in the file */
    struct mapent *m;
    int n = read_map(s.img, &m);
    ok(n > 0 && m[0].start == 0 && m[0].has_offset && m[0].length >= 256 * 1024,
       "default: a chunk written at once is contiguous in the file");
    free(m);
}

static void test_cluster_sizes(void)
{
    struct ep_create_opts o = {.size = 3 * MI_MiB + 512, .cluster_size = 512};
    mixed_case("cluster 512", &o, 64 * 1024);
    o = (struct ep_create_opts){.size = 3 * MI_MiB + 3584, .cluster_size = 4096};
    mixed_case("cluster 4096", &o, 128 * 1024);
    o = (struct ep_create_opts){.size = 9 * MI_MiB + 512, .cluster_size = 2 * MI_MiB};
    mixed_case("cluster 2M", &o, 2 * MI_MiB);
    if (have_qemu) {
        char img[512];
        snprintf(img, sizeof img, "%s/cluster 2M.qcow2", dir);
        ok(info_has(img, "\"cluster-size\": 2097152"), "cluster 2M: qemu-img info agrees");
    }
    /* 512-byte clusters: a small L2 table covers 32 KiB, so many tables */
    o = (struct ep_create_opts){.size = 64 * MI_MiB, .cluster_size = 512};
    struct scen s;
    ok(scen_open(&s, "cluster 512 sparse", &o), "cluster 512 sparse: created");
    bool w = true;
    for (uint64_t off = 0; off < o.size && w; off += 3 * MI_MiB + 4096)
        w = do_write(&s, off, 8192, K_RANDOM, 3);
    ok(w, "cluster 512 sparse: scattered writes");
    scen_judge(&s, "cluster 512 sparse");
}

static void test_v2(void)
{
    struct ep_create_opts o = {.size = 4 * MI_MiB + 1024, .compat = 2};
    struct scen s;
    ok(scen_open(&s, "compat 0.10", &o), "compat 0.10: created");
    bool w = run_plan(&s, 128 * 1024, mixed, NMIXED);
    /* zero over written data: v2 has no zero flag, the data must become zeros */
    w = w && do_zero(&s, 0, 128 * 1024) && do_zero(&s, 4 * MI_MiB, 1024);
    w = w && do_write(&s, 128 * 1024, 4096, K_RANDOM, 9) && do_zero(&s, 128 * 1024 + 512, 1024);
    ok(w, "compat 0.10: writes, zeroes, zeroes over data");
    scen_judge(&s, "compat 0.10");
    if (!have_qemu)
        return;
    ok(info_has(s.img, "\"compat\": \"0.10\""), "compat 0.10: qemu-img info says 0.10");
    uint8_t h[8];
    ok(read_header(s.img, h, 8) && mi_be32(h + 4) == 2, "compat 0.10: header version 2");
    ok(!map_has_data(s.img, 2 * 128 * 1024, 2 * 128 * 1024),
       "compat 0.10: zero ranges stay unallocated (no backing file)");
}

static void test_compress(int ctype, const char *name)
{
    char tag[64];
    snprintf(tag, sizeof tag, "compress %s", name);
    struct ep_create_opts o = {.size = 8 * MI_MiB + 2560, .compress = true,
                               .compression_type = ctype};
    struct scen s;
    ok(scen_open(&s, tag, &o), "%s: created", tag);
    bool w = run_plan(&s, 192 * 1024, mixed, NMIXED);
    w = w && do_write(&s, 8 * MI_MiB, 2560, K_TEXT, 4); /* partial last cluster, padded */
    ok(w, "%s: writes and zeroes from two threads", tag);
    uint8_t *a = malloc(s.size), *b = malloc(s.size);
    ok(s.ep->ops->pread(s.ep, a, s.size, 0) == 0 && mi_pread_full(s.ref, b, s.size, 0) == 0 &&
           !memcmp(a, b, s.size),
       "%s: pread decompresses what was written", tag);
    free(a);
    free(b);
    scen_judge(&s, tag);
    if (!have_qemu)
        return;
    uint64_t cbytes = map_compressed_bytes(s.img);
    ok(cbytes >= 2 * MI_MiB, "%s: text clusters are stored compressed (%llu bytes)", tag,
       (unsigned long long)cbytes);
    struct stat st;
    stat(s.img, &st);
    ok(st.st_size < (off_t)(5 * MI_MiB), "%s: the file (%lld bytes) is smaller than the data",
       tag, (long long)st.st_size);
    char want[64];
    snprintf(want, sizeof want, "\"compression-type\": \"%s\"", name);
    ok(info_has(s.img, want), "%s: qemu-img info shows the compression type", tag);
    uint8_t h[112];
    read_header(s.img, h, sizeof h);
    if (ctype == 1)
        ok(mi_be32(h + 100) == 112 && (mi_be64(h + 72) & 8) && h[104] == 1,
           "%s: incompatible bit 3, compression type byte 1, header length 112", tag);
    else
        ok(mi_be32(h + 100) == 104 && mi_be64(h + 72) == 0, "%s: plain v3 header", tag);
}

/* Many tiny compressed clusters sharing host clusters, with 512-byte and 2 MiB clusters. */
static void test_compress_packing(void)
{
    struct ep_create_opts o = {.size = 2 * MI_MiB + 512, .cluster_size = 512, .compress = true};
    mixed_case("compress cluster 512", &o, 32 * 1024);
    o = (struct ep_create_opts){.size = 12 * MI_MiB, .cluster_size = 2 * MI_MiB,
                                .compress = true, .compression_type = 1};
    mixed_case("compress zstd cluster 2M", &o, 2 * MI_MiB);
    o = (struct ep_create_opts){.size = 3 * MI_MiB + 512, .compat = 2, .compress = true,
                                .cluster_size = 4096};
    mixed_case("compress compat 0.10", &o, 64 * 1024);
    o = (struct ep_create_opts){.size = 64 * MI_MiB, .cluster_size = 65536, .compress = true};
    struct scen s;
    ok(scen_open(&s, "compress tiny", &o), "compress tiny: created");
    /* runs of one byte value: each cluster compresses to a few dozen bytes, so hundreds
     * of clusters share each host cluster */
    bool w = true;
    uint8_t *b = malloc(MI_MiB);
    for (uint64_t off = 0; off < o.size && w; off += MI_MiB) {
        memset(b, (int)(off / MI_MiB) + 1, MI_MiB);
        w = s.ep->ops->pwrite(s.ep, b, MI_MiB, off) == 0 &&
            mi_pwrite_full(s.ref, b, MI_MiB, off) == 0;
    }
    free(b);
    ok(w, "compress tiny: 64 MiB of constant runs");
    scen_judge(&s, "compress tiny");
    struct stat st;
    /* 1024 clusters of a few dozen bytes each: about two host clusters of data at byte
     * granularity, 512 KiB at sector granularity; plus 5 clusters of metadata */
    ok(stat(s.img, &st) == 0 && st.st_size <= (off_t)(5 + 4) * 65536,
       "compress tiny: packed at byte granularity (%lld bytes)", (long long)st.st_size);
}

static void test_prealloc(int mode, const char *name)
{
    char tag[64];
    snprintf(tag, sizeof tag, "preallocation %s", name);
    struct ep_create_opts o = {.size = 5 * MI_MiB + 512, .preallocation = mode};
    struct scen s;
    ok(scen_open(&s, tag, &o), "%s: created", tag);
    struct stat st;
    stat(s.img, &st);
    if (mode != EP_PREALLOC_METADATA)
        ok((uint64_t)st.st_blocks * 512 >= o.size, "%s: %llu bytes allocated up front", tag,
           (unsigned long long)st.st_blocks * 512);
    ok(run_plan(&s, 256 * 1024, mixed, NMIXED) && do_zero(&s, 5 * MI_MiB, 512),
       "%s: writes and zeroes from two threads", tag);
    scen_judge(&s, tag);
    if (!have_qemu)
        return;
    /* every cluster has a host offset, in guest order */
    struct mapent *m;
    int n = read_map(s.img, &m);
    bool ordered = n > 0;
    uint64_t covered = 0;
    for (int i = 0; i < n; i++) {
        if (!m[i].has_offset || (i && m[i].offset <= m[i - 1].offset))
            ordered = false;
        if (i && m[i].offset - m[i - 1].offset != m[i].start - m[i - 1].start)
            ordered = false;
        covered += m[i].length;
    }
    ok(ordered && covered == o.size,
       "%s: every cluster allocated, contiguous in guest order (%d runs)", tag, n);
    free(m);
}

static void test_backing(int compat)
{
    char tag[64], base[512];
    snprintf(tag, sizeof tag, "backing v%d", compat);
    snprintf(base, sizeof base, "%s/base%d.raw", dir, compat);
    const uint64_t size = 4 * MI_MiB, chunk = 256 * 1024;
    /* the base: random data everywhere */
    int fd = open(base, O_RDWR | O_CREAT | O_TRUNC, 0644);
    uint8_t *b = malloc(size);
    fill(b, size, 0, K_RANDOM, 77);
    mi_pwrite_full(fd, b, size, 0);
    close(fd);
    char bname[32];
    snprintf(bname, sizeof bname, "base%d.raw", compat); /* relative to the image */
    struct ep_create_opts o = {.size = size, .compat = compat, .backing_file = bname,
                               .backing_format = "raw"};
    struct scen s;
    bool opened = scen_open(&s, tag, &o);
    ok(opened && !(s.ep->caps & EP_CAP_IS_ZERO),
       "%s: created; it does not claim to read as zeros", tag);
    if (!opened) {
        free(b);
        return;
    }
    mi_pwrite_full(s.ref, b, size, 0); /* the reference starts as the base */
    free(b);
    /* chunk 0 data, 1 zero, 2 untouched, 3 zeroed text ... */
    static const int acts[] = {A_DATA, A_ZERO, A_HOLE, A_TEXT};
    ok(run_plan(&s, chunk, acts, 4), "%s: writes and zeroes over the backing file", tag);
    uint64_t len;
    int kind;
    ok(s.ep->ops->block_status(s.ep, 2 * chunk, chunk, EP_BS_TOP, &len, &kind) == 0 &&
           kind == EP_UNALLOC && len == chunk,
       "%s: untouched ranges are unallocated in this layer", tag);
    ok(s.ep->ops->block_status(s.ep, chunk, chunk, EP_BS_TOP, &len, &kind) == 0 &&
           kind == (compat == 3 ? EP_ZERO : EP_DATA),
       "%s: zeroed ranges are %s in this layer", tag, compat == 3 ? "zero" : "data");
    uint8_t *x = malloc(size), *y = malloc(size);
    ok(s.ep->ops->pread(s.ep, x, size, 0) == 0 && mi_pread_full(s.ref, y, size, 0) == 0 &&
           !memcmp(x, y, size),
       "%s: pread reads through the backing file where this layer has nothing", tag);
    free(x);
    free(y);
    uint8_t part[512] = {1};
    ok(s.ep->ops->pwrite(s.ep, part, 512, 2 * chunk + 512) == -ENOTSUP,
       "%s: a part of an unallocated cluster cannot be written over the backing file", tag);
    scen_judge(&s, tag);
    if (!have_qemu)
        return;
    ok(info_has(s.img, "\"backing-filename\": \"") && info_has(s.img, bname) &&
           info_has(s.img, "\"backing-filename-format\": \"raw\""),
       "%s: backing file name and format recorded", tag);
    struct mapent *m;
    int n = read_map(s.img, &m);
    bool zero_top = false, untouched_below = false;
    for (int i = 0; i < n; i++) {
        if (m[i].start <= chunk && chunk < m[i].start + m[i].length)
            zero_top = m[i].depth == 0 && (compat == 3 ? m[i].zero && !m[i].data : true);
        if (m[i].start <= 2 * chunk && 2 * chunk < m[i].start + m[i].length)
            untouched_below = m[i].depth == 1;
    }
    free(m);
    ok(zero_top, "%s: zeroed ranges hide the backing data (qemu-img map)", tag);
    ok(untouched_below, "%s: untouched ranges come from the backing file (qemu-img map)", tag);
}

/* Second writes to the same clusters, parts of clusters, zeroes over data. */
static void test_rewrites(bool compress, int ctype)
{
    char tag[64];
    snprintf(tag, sizeof tag, "rewrites%s%s", compress ? " compressed " : "",
             compress ? (ctype ? "zstd" : "zlib") : "");
    const uint64_t C = 65536;
    struct ep_create_opts o = {.size = 32 * C + 1024, .compress = compress,
                               .compression_type = ctype};
    struct scen s;
    ok(scen_open(&s, tag, &o), "%s: created", tag);
    bool w = true;
    w = w && do_write(&s, 0, 8 * C, K_TEXT, 1);         /* compressible */
    w = w && do_write(&s, 8 * C, 8 * C, K_RANDOM, 1);   /* not */
    w = w && do_write(&s, 0, 2 * C, K_TEXT, 2);         /* rewrite, whole clusters */
    w = w && do_write(&s, 2 * C, C, K_RANDOM, 2);       /* compressed -> standard */
    w = w && do_write(&s, 8 * C, C, K_TEXT, 2);         /* standard -> overwrite */
    w = w && do_zero(&s, 3 * C, C);                     /* zero a compressed cluster */
    w = w && do_zero(&s, 9 * C, C);                     /* zero a standard cluster */
    w = w && do_write(&s, 4 * C + 4096, 512, K_RANDOM, 3);  /* part of a compressed one */
    w = w && do_zero(&s, 5 * C + 8192, 4096);               /* zero part of a compressed one */
    w = w && do_write(&s, 9 * C + 1024, 2048, K_RANDOM, 3); /* part of a zeroed one */
    w = w && do_zero(&s, 10 * C + 512, 1536);               /* zero part of a standard one */
    w = w && do_write(&s, 20 * C + 512, 512, K_RANDOM, 3);  /* part of a fresh one */
    w = w && do_zero(&s, 21 * C + 512, 512);                /* part of a fresh one */
    w = w && do_write(&s, 32 * C, 1024, K_TEXT, 3);         /* partial last cluster */
    w = w && do_write(&s, 32 * C, 1024, K_RANDOM, 4);       /* and again */
    w = w && do_zero(&s, 6 * C, 3 * C);                     /* compressed + standard */
    w = w && do_write(&s, 6 * C, C, K_TEXT, 5);             /* over a zeroed one */
    w = w && do_write(&s, 24 * C, C, K_RANDOM, 6) && do_write(&s, 26 * C, C, K_RANDOM, 6);
    w = w && do_write(&s, 23 * C, 5 * C, K_RANDOM, 7);      /* fresh and old, mixed */
    ok(w, "%s: rewrites, parts, zeroes over data", tag);
    uint8_t *a = malloc(s.size), *b = malloc(s.size);
    ok(s.ep->ops->pread(s.ep, a, s.size, 0) == 0 && mi_pread_full(s.ref, b, s.size, 0) == 0 &&
           !memcmp(a, b, s.size),
       "%s: pread reads back the latest data", tag);
    free(a);
    free(b);
    scen_judge(&s, tag);
}

/* A huge virtual size with little data: small memory, a fast whole-image zero. */
static void test_huge(void)
{
    struct ep_create_opts o = {.size = 4 * 1024 * MI_GiB};
    struct scen s;
    ok(scen_open(&s, "huge", &o), "huge: a 4 TiB image created");
    bool w = do_write(&s, 0, MI_MiB, K_RANDOM, 1) &&
             do_write(&s, 3 * 1024 * MI_GiB + 7 * 65536, 65536, K_TEXT, 1) &&
             do_write(&s, o.size - 65536, 65536, K_RANDOM, 1);
    uint64_t t0 = mi_now_ns();
    int r = s.ep->ops->zero(s.ep, MI_MiB, o.size - 2 * MI_MiB, EP_ZERO_MAY_UNMAP);
    uint64_t ms = (mi_now_ns() - t0) / 1000000;
    ok(w && r == 0 && ms < 2000, "huge: zeroing 4 TiB takes %llu ms", (unsigned long long)ms);
    /* the reference knows the same zeroes */
    uint8_t z[65536] = {0};
    mi_pwrite_full(s.ref, z, sizeof z, 3 * 1024 * MI_GiB + 7 * 65536);
    int fr = s.ep->ops->flush(s.ep), cr = ep_close(s.ep);
    close(s.ref);
    ok(fr == 0 && cr == 0, "huge: flush and close");
    struct stat st;
    ok(stat(s.img, &st) == 0 && st.st_size < 4 * (off_t)MI_MiB,
       "huge: the file is small (%lld bytes)", (long long)st.st_size);
    if (have_qemu) {
        ok(qcheck(s.img), "huge: qemu-img check");
        ok(qsame(&s), "huge: qemu-img compare");
    }
}

/* A target closed without a flush is being discarded: it must not look usable. */
static void test_discard(void)
{
    struct ep_create_opts o = {.size = MI_MiB};
    struct scen s;
    ok(scen_open(&s, "discard", &o), "discard: created");
    ok(do_write(&s, 0, 65536, K_RANDOM, 1) && ep_close(s.ep) == 0,
       "discard: closed without a flush");
    close(s.ref);
    uint8_t h[80];
    ok(read_header(s.img, h, sizeof h) && !memcmp(h, "QFI\xfb", 4) && (mi_be64(h + 72) & 2),
       "discard: the file is marked corrupt, not mistaken for raw");
    char cmd[700];
    snprintf(cmd, sizeof cmd, "qemu-img check -f qcow2 '%s' >/dev/null 2>&1", s.img);
    ok(!have_qemu || system(cmd) != 0, "discard: qemu-img check refuses it");
}

/* ---- benchmark ---- */

struct bench {
    struct ep *ep;
    uint64_t size;
    int thread;
    const uint8_t *buf;
    int err;
};

static void *bench_worker(void *arg)
{
    struct bench *b = arg;
    const uint64_t chunk = MI_MiB;
    for (uint64_t off = (uint64_t)b->thread * chunk; off < b->size && !b->err; off += 2 * chunk)
        b->err = b->ep->ops->pwrite(b->ep, b->buf + (off / chunk % 8) * chunk,
                                    mi_min(chunk, b->size - off), off);
    return NULL;
}

static int bench(const char *path, uint64_t mib, const char *comp)
{
    struct ep_create_opts o = {.format = "qcow2", .size = mib * MI_MiB, .force = true};
    if (comp) {
        o.compress = true;
        o.compression_type = !strcmp(comp, "zstd");
    }
    uint8_t *buf = malloc(9 * MI_MiB);
    fill(buf, 9 * MI_MiB, 0, comp ? K_TEXT : K_RANDOM, 1);
    uint64_t t0 = mi_now_ns();
    struct ep *ep = qcow2_create(path, &o);
    if (!ep) {
        fprintf(stderr, "%s\n", mi_lasterr());
        return 1;
    }
    struct bench b[2];
    pthread_t t[2];
    for (int i = 0; i < 2; i++) {
        b[i] = (struct bench){ep, o.size, i, buf, 0};
        pthread_create(&t[i], NULL, bench_worker, &b[i]);
    }
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    int r = b[0].err ? b[0].err : b[1].err;
    if (!r)
        r = ep->ops->flush(ep);
    int c = ep_close(ep);
    double s = (double)(mi_now_ns() - t0) / 1e9;
    if (r || c) {
        fprintf(stderr, "%s\n", mi_lasterr());
        return 1;
    }
    printf("%llu MiB in %.2f s: %.0f MB/s (flush and close included)\n",
           (unsigned long long)mib, s, (double)o.size / 1e6 / s);
    free(buf);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc >= 4 && !strcmp(argv[1], "--bench"))
        return bench(argv[2], strtoull(argv[3], NULL, 10), argc > 4 ? argv[4] : NULL);
    setvbuf(stdout, NULL, _IOLBF, 0);
    const char *tmp = getenv("TMPDIR");
    snprintf(dir, sizeof dir, "%s/test-qcow2-create.XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    have_qemu = system("qemu-img --version >/dev/null 2>&1") == 0;
    if (!have_qemu)
        printf("# qemu-img is not installed: its judgements are skipped\n");

    test_refusals();
    test_default();
    test_cluster_sizes();
    test_v2();
    test_compress(0, "zlib");
    test_compress(1, "zstd");
    test_compress_packing();
    test_prealloc(EP_PREALLOC_METADATA, "metadata");
    test_prealloc(EP_PREALLOC_FALLOC, "falloc");
    test_prealloc(EP_PREALLOC_FULL, "full");
    test_backing(3);
    test_backing(2);
    test_rewrites(false, 0);
    test_rewrites(true, 0);
    test_rewrites(true, 1);
    test_huge();
    test_discard();

    int r = tap_done();
    if (r == 0 && !getenv("MI_KEEP_TMP")) {
        char cmd[300];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
        if (system(cmd) != 0)
            printf("# could not remove %s\n", dir);
    } else {
        printf("# files kept in %s\n", dir);
    }
    return r;
}
