/* test-compare.c: the block-status-driven comparer (lib/compare.c) on sparse raw files.
 *
 * Images are raw files in a mkdtemp directory (under TMPDIR or /tmp), written through
 * raw_create and read back through ep_open.  Each is seen through a wrapper endpoint that
 * counts what is read, can fail a read or block status, and can make one byte read wrong
 * for the first few reads (a write in flight, for the forgiving rechecks).
 */
#include "compare.h"
#include "endpoint.h"
#include "tap.h"
#include "util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char dir[256];
static bool have_holes;

/* ---- images ---- */

/* A write: len bytes at off, all val, or (val < 0) a pattern that depends on the offset,
 * so the same pattern written at the same place in two files matches. */
struct w {
    uint64_t off, len;
    int val;
};

static void fill(uint8_t *b, const struct w *w)
{
    if (w->val >= 0) {
        memset(b, w->val, w->len);
        return;
    }
    for (uint64_t i = 0; i < w->len; i++) {
        uint64_t x = w->off + i;
        b[i] = (uint8_t)((x * 2654435761u) >> 13) | 1;
    }
}

/* Make DIR/tag.raw of size bytes with the writes, open it read-only. */
static struct ep *image(const char *tag, uint64_t size, const struct w *ws, int n)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s.raw", dir, tag);
    struct ep *ep = ep_create(path, &(struct ep_create_opts){.format = "raw", .size = size, .force = true});
    int r = ep ? 0 : -1;
    for (int i = 0; i < n && r == 0; i++) {
        uint8_t *b = malloc(ws[i].len);
        fill(b, &ws[i]);
        r = ep->ops->pwrite(ep, b, ws[i].len, ws[i].off);
        free(b);
    }
    if (r == 0)
        r = ep->ops->flush(ep);
    if (ep_close(ep) < 0 || r < 0) {
        printf("# %s: %s\n", tag, mi_lasterr());
        return NULL;
    }
    struct ep *ro = ep_open(path, &(struct ep_open_opts){.format = "raw"}, false);
    if (!ro)
        printf("# %s: %s\n", tag, mi_lasterr());
    return ro;
}

/* Bytes block status calls data (without EP_BS_TOP), the way the comparer asks. */
static uint64_t data_bytes(struct ep *ep)
{
    uint64_t total = 0, len;
    for (uint64_t off = 0; off < ep->size; off += len) {
        int kind;
        if (ep->ops->block_status(ep, off, ep->size - off, 0, &len, &kind) < 0 || len == 0)
            return UINT64_MAX;
        if (kind == EP_DATA)
            total += len;
    }
    return total;
}

/* ---- the wrapper endpoint ---- */

struct wrap {
    struct ep ep;
    struct ep *in;
    uint64_t read_bytes;
    int fail_after;     /* >= 0: the read after that many reads fails (then all do) */
    bool bs_fails;      /* block status fails */
    uint64_t flip_at;   /* reads covering this byte see it inverted ... */
    int flips;          /* ... this many times */
    int reads;
};

static int wrap_bs(struct ep *ep, uint64_t off, uint64_t max, unsigned flags, uint64_t *len, int *kind)
{
    struct wrap *w = (struct wrap *)ep;
    if (w->bs_fails)
        return mi_seterr(EIO, "%s: block status failed (test)", ep->name);
    return w->in->ops->block_status(w->in, off, max, flags, len, kind);
}

static int wrap_pread(struct ep *ep, void *buf, uint64_t len, uint64_t off)
{
    struct wrap *w = (struct wrap *)ep;
    if (w->fail_after >= 0 && w->reads >= w->fail_after)
        return mi_seterr(EIO, "%s: read error at offset %llu (test)", ep->name, (unsigned long long)off);
    w->reads++;
    int r = w->in->ops->pread(w->in, buf, len, off);
    if (r < 0)
        return r;
    w->read_bytes += len;
    if (w->flips > 0 && w->flip_at >= off && w->flip_at < off + len) {
        ((uint8_t *)buf)[w->flip_at - off] ^= 0xff;
        w->flips--;
    }
    return 0;
}

static int wrap_close(struct ep *ep)
{
    return ep_close(((struct wrap *)ep)->in);
}

static const struct ep_ops wrap_ops = {
    .name = "raw", .block_status = wrap_bs, .pread = wrap_pread, .pwrite = ep_write_readonly,
    .zero = ep_zero_by_write, .flush = ep_flush_noop, .close = wrap_close,
};

static void wrap(struct wrap *w, struct ep *in, char *name)
{
    *w = (struct wrap){.ep = {.ops = &wrap_ops, .name = name, .size = in ? in->size : 0, .align = 512},
                       .in = in, .fail_after = -1};
}

/* Compare two images made from the writes; the wrappers are left for the caller to look
 * at (and to close). */
struct pair {
    struct wrap a, b;
    struct compare_result res;
    int r;
};

static bool pair_make(struct pair *p, const char *tag, uint64_t sa, const struct w *wa, int na,
                      uint64_t sb, const struct w *wb, int nb)
{
    char ta[64], tb[64];
    snprintf(ta, sizeof ta, "%s-a", tag);
    snprintf(tb, sizeof tb, "%s-b", tag);
    memset(p, 0, sizeof *p);
    wrap(&p->a, image(ta, sa, wa, na), "A");
    wrap(&p->b, image(tb, sb, wb, nb), "B");
    return p->a.in && p->b.in;
}

static void pair_run(struct pair *p, const struct compare_opts *o)
{
    p->a.read_bytes = p->b.read_bytes = 0;
    p->r = compare_images(&p->a.ep, &p->b.ep, o, &p->res);
}

static void pair_close(struct pair *p)
{
    ep_close(&p->a.ep);
    ep_close(&p->b.ep);
}

static bool differ_at(const struct pair *p, uint64_t off)
{
    if (p->r == 0 && p->res.verdict == CMP_DIFFER && p->res.offset == off)
        return true;
    printf("# r %d verdict %d offset %llu (want %llu): %s\n", p->r, p->res.verdict,
           (unsigned long long)p->res.offset, (unsigned long long)off, p->r ? mi_lasterr() : "");
    return false;
}

static bool verdict(const struct pair *p, int v)
{
    if (p->r == 0 && p->res.verdict == v)
        return true;
    printf("# r %d verdict %d offset %llu (want verdict %d): %s\n", p->r, p->res.verdict,
           (unsigned long long)p->res.offset, v, p->r ? mi_lasterr() : "");
    return false;
}

/* ---- the cases ---- */

#define M MI_MiB

static void test_identical(void)
{
    /* data, a hole, data across a 4 MiB step, written zeros, a hole to an odd end */
    const struct w ws[] = {{0, 4096, -1}, {M, M, -1}, {3 * M + 512, 2 * M, -1}, {8 * M, M, 0},
                           {10 * M, 100, -1}};
    struct pair p;
    if (!pair_make(&p, "same", 12 * M + 3, ws, 5, 12 * M + 3, ws, 5)) {
        ok(0, "identical: images made");
        return;
    }
    pair_run(&p, &(struct compare_opts){0});
    ok(verdict(&p, CMP_SAME), "identical with holes: CMP_SAME");
    uint64_t da = data_bytes(p.a.in), db = data_bytes(p.b.in);
    ok(p.a.read_bytes == da && p.b.read_bytes == db,
       "identical: reads exactly what block status calls data (%llu of %llu bytes)",
       (unsigned long long)p.a.read_bytes, (unsigned long long)p.a.ep.size);
    if (have_holes)
        ok(p.a.read_bytes < 6 * M, "identical: the holes are not read");
    else
        ok(1, "identical: the holes are not read # skip no SEEK_HOLE here");
    pair_run(&p, NULL);
    ok(verdict(&p, CMP_SAME), "identical: NULL options are the defaults");
    pair_close(&p);
}

static void test_first_diff(void)
{
    const uint64_t size = 12 * M + 5;
    const struct w wa[] = {{M, 5 * M, -1}, {11 * M, M + 5, -1}};
    /* the same, but one byte wrong at 5 MiB + 12345 (the second 4 MiB step) */
    const struct w wb[] = {{M, 5 * M, -1}, {11 * M, M + 5, -1}, {5 * M + 12345, 1, 0}};
    struct pair p;
    if (pair_make(&p, "diff", size, wa, 2, size, wb, 3)) {
        pair_run(&p, &(struct compare_opts){0});
        ok(differ_at(&p, 5 * M + 12345), "first difference: exact offset in a data range");
        pair_close(&p);
    }
    /* the very last byte */
    const struct w wc[] = {{M, 5 * M, -1}, {11 * M, M + 5, -1}, {size - 1, 1, 0}};
    if (pair_make(&p, "last", size, wa, 2, size, wc, 3)) {
        pair_run(&p, &(struct compare_opts){0});
        ok(differ_at(&p, size - 1), "first difference: the last byte of an odd-sized image");
        pair_close(&p);
    }
    /* a hole in A, data in B that is zeros but one byte, 777 bytes into it */
    const struct w wd[] = {{M, 5 * M, -1}, {11 * M, M + 5, -1}, {8 * M, M, 0}, {8 * M + 777, 1, 'x'}};
    if (pair_make(&p, "hole", size, wa, 2, size, wd, 4)) {
        pair_run(&p, &(struct compare_opts){0});
        ok(differ_at(&p, 8 * M + 777), "first difference: inside a hole (A) vs data (B)");
        /* A reads [1 MiB, 6 MiB) and stops: nothing of its hole at 8 MiB */
        if (have_holes)
            ok(p.a.read_bytes == 5 * M, "hole vs data: the hole side is not read (%llu bytes)",
               (unsigned long long)p.a.read_bytes);
        else
            ok(1, "hole vs data: the hole side is not read # skip no SEEK_HOLE here");
        pair_close(&p);
    }
    if (pair_make(&p, "hole2", size, wd, 4, size, wa, 2)) {
        pair_run(&p, &(struct compare_opts){0});
        ok(differ_at(&p, 8 * M + 777), "first difference: inside data (A) vs a hole (B)");
        pair_close(&p);
    }
    const struct w we[] = {{0, 1, 'y'}};
    if (pair_make(&p, "zero", size, we, 1, size, NULL, 0)) {
        pair_run(&p, &(struct compare_opts){0});
        ok(differ_at(&p, 0), "first difference: byte 0 against an empty image");
        pair_close(&p);
    }
}

static void test_sizes(void)
{
    const struct w wa[] = {{0, 2 * M, -1}};
    const struct w zero_tail[] = {{0, 2 * M, -1}, {6 * M, 512, 0}};
    const struct w data_tail[] = {{0, 2 * M, -1}, {6 * M + 8 * M + 3, 1, 'z'}};
    struct pair p;
    if (pair_make(&p, "ztail", 6 * M, wa, 1, 6 * M + 512, zero_tail, 2)) {
        pair_run(&p, &(struct compare_opts){0});
        ok(verdict(&p, CMP_SAME), "sizes: non-strict, the larger's tail reads as zeros: CMP_SAME");
        pair_run(&p, &(struct compare_opts){.strict = true});
        ok(verdict(&p, CMP_SIZE), "sizes: strict: CMP_SIZE");
        pair_close(&p);
    }
    /* a tail of 9 MiB + 3 (more than two steps), non-zero 8 MiB + 3 into it; B is the smaller */
    if (pair_make(&p, "dtail", 15 * M + 3, data_tail, 2, 6 * M, wa, 1)) {
        pair_run(&p, &(struct compare_opts){0});
        ok(differ_at(&p, 14 * M + 3), "sizes: non-strict, a non-zero tail (A larger): its first non-zero byte");
        pair_run(&p, &(struct compare_opts){.strict = true});
        ok(verdict(&p, CMP_SIZE), "sizes: strict, non-zero tail: CMP_SIZE");
        pair_close(&p);
    }
    if (pair_make(&p, "dtail2", 6 * M, wa, 1, 15 * M + 3, data_tail, 2)) {
        pair_run(&p, &(struct compare_opts){0});
        ok(differ_at(&p, 14 * M + 3), "sizes: non-strict, a non-zero tail (B larger)");
        pair_close(&p);
    }
    const struct w wb[] = {{0, 2 * M, -1}, {M + 1, 1, 0}};
    if (pair_make(&p, "both", 6 * M, wa, 1, 7 * M, wb, 2)) {
        pair_run(&p, &(struct compare_opts){.strict = true});
        ok(differ_at(&p, M + 1), "sizes: strict, content differs too: the content first (CMP_DIFFER)");
        pair_close(&p);
    }
}

static void test_length(void)
{
    const struct w wa[] = {{0, 6 * M, -1}};
    const struct w wb[] = {{0, 6 * M, -1}, {5 * M, 1, 0}, {7 * M, 10, 'q'}};
    struct pair p;
    if (!pair_make(&p, "len", 6 * M, wa, 1, 8 * M, wb, 3))
        return;
    pair_run(&p, &(struct compare_opts){.length = 5 * M});
    ok(verdict(&p, CMP_SAME), "length: a difference at length is outside: CMP_SAME (B's tail not looked at)");
    ok(p.a.read_bytes == 5 * M && p.b.read_bytes == 5 * M, "length: reads [0, length) only");
    pair_run(&p, &(struct compare_opts){.length = 5 * M + 1});
    ok(differ_at(&p, 5 * M), "length: one byte more: CMP_DIFFER at it");
    pair_run(&p, &(struct compare_opts){.length = 6 * M + 1});
    ok(verdict(&p, CMP_SIZE) && p.a.read_bytes == 0, "length: longer than A: CMP_SIZE, nothing read");
    pair_run(&p, &(struct compare_opts){.length = 9 * M});
    ok(verdict(&p, CMP_SIZE), "length: longer than both: CMP_SIZE");
    pair_close(&p);
}

/* ---- forgiving ---- */

struct fg {
    uint64_t yes; /* forgive this granule */
    int calls;
    uint64_t offs[32];
};

static bool forgive(void *ctx, uint64_t off)
{
    struct fg *f = ctx;
    if (f->calls < 32)
        f->offs[f->calls] = off;
    f->calls++;
    return off == f->yes;
}

static bool calls_all(const struct fg *f, int from, int to, uint64_t off)
{
    for (int i = from; i < to && i < 32; i++)
        if (f->offs[i] != off)
            return false;
    return true;
}

static void test_forgive(void)
{
    const struct w wa[] = {{0, 10 * M, -1}};
    /* differences at 1 MiB + 100 and 2 MiB + 7: one 4 MiB step, two 1 MiB granules */
    const struct w wb[] = {{0, 10 * M, -1}, {M + 100, 1, 0}, {2 * M + 7, 1, 0}};
    struct pair p;
    if (!pair_make(&p, "fg", 10 * M, wa, 1, 10 * M, wb, 3))
        return;
    struct fg f = {.yes = M};
    struct compare_opts o = {.granule = M, .forgive = forgive, .ctx = &f};
    uint64_t t0 = mi_now_ns();
    pair_run(&p, &o);
    uint64_t ms = (mi_now_ns() - t0) / 1000000;
    ok(differ_at(&p, 2 * M + 7), "forgive: the forgiven granule is passed, the next difference counts");
    ok(f.calls == 1 + 4 && f.offs[0] == M && calls_all(&f, 1, 5, 2 * M),
       "forgive: called with the granule offset: once for the forgiven one, 4 times (3 re-reads) "
       "for the other (%d calls)", f.calls);
    ok(ms >= 60, "forgive: the re-reads are 20 ms apart (%llu ms)", (unsigned long long)ms);

    f = (struct fg){.yes = UINT64_MAX};
    pair_run(&p, &o);
    ok(differ_at(&p, M + 100) && f.calls == 4 && calls_all(&f, 0, 4, M),
       "forgive: nothing forgiven: the first difference (%d calls)", f.calls);

    f = (struct fg){.yes = 0};
    o.granule = 8 * M; /* larger than a step: both differences are in granule 0 */
    pair_run(&p, &o);
    ok(verdict(&p, CMP_SAME) && f.calls == 1 && f.offs[0] == 0,
       "forgive: a granule larger than 4 MiB is forgiven whole");
    pair_close(&p);
}

static void test_transient(void)
{
    const struct w ws[] = {{0, 6 * M, -1}};
    struct pair p;
    if (!pair_make(&p, "flip", 6 * M, ws, 1, 6 * M, ws, 1))
        return;
    struct fg f = {.yes = UINT64_MAX};
    struct compare_opts o = {.granule = M, .forgive = forgive, .ctx = &f};
    p.b.flip_at = 3 * M + 9, p.b.flips = 1;
    pair_run(&p, &o);
    ok(verdict(&p, CMP_SAME) && f.calls == 1 && f.offs[0] == 3 * M,
       "recheck: a difference gone on the re-read is no difference");
    p.b.flips = 3;
    f.calls = 0;
    pair_run(&p, &o);
    ok(verdict(&p, CMP_SAME) && f.calls == 3, "recheck: gone on the third re-read: CMP_SAME");
    p.b.flips = 4;
    f.calls = 0;
    pair_run(&p, &o);
    ok(differ_at(&p, 3 * M + 9) && f.calls == 4, "recheck: still there after 3 re-reads: CMP_DIFFER");
    p.b.flips = 1;
    pair_run(&p, &(struct compare_opts){0});
    ok(differ_at(&p, 3 * M + 9), "recheck: none without a forgive callback");
    pair_close(&p);
}

/* ---- errors ---- */

static void test_errors(void)
{
    const struct w ws[] = {{0, 6 * M, -1}};
    struct pair p;
    if (!pair_make(&p, "err", 6 * M, ws, 1, 7 * M, ws, 1))
        return;
    p.a.fail_after = 0;
    pair_run(&p, &(struct compare_opts){0});
    ok(p.r == -EIO && strstr(mi_lasterr(), "A: read error at offset 0"),
       "errors: a failed read: -EIO and its message (%s)", mi_lasterr());
    p.a.fail_after = 1; /* the second step's read */
    pair_run(&p, &(struct compare_opts){0});
    ok(p.r == -EIO && strstr(mi_lasterr(), "A: read error at offset 4194304"),
       "errors: a failed read later on (%s)", mi_lasterr());
    p.a.fail_after = -1;
    p.b.bs_fails = true;
    pair_run(&p, &(struct compare_opts){0});
    ok(p.r == -EIO && strstr(mi_lasterr(), "B: block status failed"), "errors: a failed block status");
    p.b.bs_fails = false;

    /* a read failing in a recheck */
    struct fg f = {.yes = UINT64_MAX};
    p.b.flip_at = 2 * M, p.b.flips = 1, p.b.fail_after = p.b.reads + 1;
    pair_run(&p, &(struct compare_opts){.granule = M, .forgive = forgive, .ctx = &f});
    ok(p.r == -EIO && strstr(mi_lasterr(), "B: read error at offset 2097152"),
       "errors: a failed read in a recheck (%s)", mi_lasterr());
    pair_close(&p);

    /* an endpoint that cannot read at all, against itself */
    struct wrap bad;
    wrap(&bad, NULL, "bad");
    static const struct ep_ops bad_ops = {
        .name = "raw", .block_status = ep_bs_all_data, .pread = wrap_pread,
        .pwrite = ep_write_readonly, .zero = ep_zero_by_write, .flush = ep_flush_noop,
    };
    bad.ep.ops = &bad_ops;
    bad.ep.size = 1000;
    bad.fail_after = 0;
    struct compare_result res;
    ok(compare_images(&bad.ep, &bad.ep, &(struct compare_opts){0}, &res) == -EIO &&
           strstr(mi_lasterr(), "bad: read error"), "errors: an endpoint whose pread fails");
}

/* Does this file system report holes?  (Else the "not read" checks are skipped.) */
static bool probe_holes(void)
{
    const struct w ws[] = {{0, 4096, 1}};
    struct ep *ep = image("probe", 8 * M, ws, 1);
    bool holes = ep && data_bytes(ep) < 8 * M;
    ep_close(ep);
    if (!holes)
        printf("# no holes reported in %s: the \"not read\" checks are skipped\n", dir);
    return holes;
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    const char *tmp = getenv("TMPDIR");
    snprintf(dir, sizeof dir, "%s/test-compare.XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    have_holes = probe_holes();
    test_identical();
    test_first_diff();
    test_sizes();
    test_length();
    test_forgive();
    test_transient();
    test_errors();
    int r = tap_done();
    if (!getenv("MI_KEEP_TMP")) {
        char cmd[300];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
        if (system(cmd) != 0)
            printf("# could not remove %s\n", dir);
    } else {
        printf("# files kept in %s\n", dir);
    }
    return r;
}
