/* qcow2-rw.c: writing into an existing qcow2 image (copy -n into an image the user made,
 * and the qcow2 target a stopped run of follow left behind).
 *
 * Open refuses, by name and before anything is written, what this writer would damage or
 * leave lying: encryption, the corrupt bit, unknown incompatible features, an external
 * data file, internal snapshots, persistent bitmaps (they would not record these writes).
 * Then every L2 table is read into memory and the refcounts are recomputed from what the
 * image references, as `qemu-img check -r all` does: the leaks of a crash, wrong counts and
 * the dirty bit of lazy refcounts are repaired at once, before any data is written.  The header stays as it
 * is (cluster size, compression type, extended L2, backing file, extensions); only the
 * refcount table's place and the dirty bit may change.
 *
 * Space: data goes in place where the guest cluster owns a host cluster (a preallocated
 * image stays preallocated).  A new cluster is taken at the end of the file, where it reads
 * as zeros (a hole), so a partial write into it needs no fill unless the rest of the
 * cluster read as something else before.  Host space is never reused while open.
 *
 * A flush writes the metadata in the order that leaves the image consistent whatever the
 * moment of a crash (at worst leaked clusters, never a cluster in use with a count too
 * low), each step durable before the next:
 *   1. the data
 *   2. refcount blocks, counting every new cluster and still counting the clusters freed
 *      since the last flush; a grown refcount table; then the header naming it
 *   3. L2 tables, then the L1 table
 *   4. the refcounts of the freed clusters (nothing names them now); the dirty bit cleared
 *
 * Threads: one mutex guards everything, data writes included: they go to one file, where
 * the kernel serializes them anyway (EP_CAP_ONE_WRITER: the job pipes them to one thread).
 */
#include "endpoint.h"
#include "qcow2-int.h"
#include "qcow2.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define OFFM QCOW2_L2_OFFSET_MASK
#define COPIED QCOW2_OFLAG_COPIED
#define COMPRESSED QCOW2_OFLAG_COMPRESSED
#define ZFLAG QCOW2_OFLAG_ZERO
#define ALL_SUB 0xffffffffull
#define QX_MAX_REFTABLE (8 * MI_MiB) /* QEMU opens no image with a larger refcount table */

struct qx_l2 {
    uint64_t *e;   /* entries in host order (two words each with extended L2); NULL: none */
    uint64_t host; /* the table's own cluster */
    bool dirty;
};

struct qx {
    struct ep ep;
    int fd;
    int version, ctype;
    unsigned cbits, rbits; /* cluster bits; refcount bits (1..64) */
    uint64_t cs, gs;       /* cluster size; granule: subcluster with extended L2, else cs */
    bool extl2;
    unsigned words;        /* 64-bit words per L2 entry */
    uint64_t l2n;          /* entries per L2 table */
    uint32_t l1n;          /* L1 entries covering the virtual size */
    uint32_t l1_size;
    uint64_t l1_off, file_size;
    uint64_t *l1;
    bool l1_dirty;
    struct qx_l2 *l2;

    uint32_t *rc;      /* refcount of every host cluster: the truth once open */
    uint8_t *ex;       /* open only: how often a cluster is named by a sole owner */
    uint64_t rc_len;
    uint8_t *rb_dirty; /* per refcount block: differs from the file */
    uint64_t rb_len;
    uint64_t *rt;      /* the refcount table */
    uint64_t rt_n, rt_off;
    uint32_t rt_clusters;
    bool rt_dirty, hdr_dirty, clear_dirty, meta_dirty;
    bool geom_dirty;   /* the virtual size or the L1 table's place changed (a resize) */
    uint64_t *pend;    /* clusters freed since the last flush (one per reference) */
    size_t npend, pend_cap;
    uint64_t eof;      /* where the next new cluster goes */
    uint64_t hi;       /* open only: clusters up to the last one named */
    uint64_t incompat;

    struct ep *backing; /* the backing chain, read where a cluster is rewritten */
    char backing_file[QCOW2_MAX_BACKING_NAME + 1], backing_fmt[32], backing_path[4096];
    uint8_t *buf, *zbuf; /* cluster-sized scratch: contents, inflated cluster */
    pthread_mutex_t lock;
};

static const uint8_t zeros[64 * 1024];

/* ---- refcounts ---- */

static uint64_t rb_entries(const struct qx *q) { return q->cs * 8 / q->rbits; }

static uint64_t rc_max(const struct qx *q)
{
    return q->rbits == 64 ? UINT32_MAX : mi_min(UINT32_MAX, (1ull << q->rbits) - 1);
}

/* Make rc (and ex while open) hold n clusters. */
static int rc_grow(struct qx *q, uint64_t n)
{
    if (n <= q->rc_len)
        return 0;
    uint64_t len = mi_max(n, q->rc_len * 2 + 64), nb = len / rb_entries(q) + 1;
    uint32_t *rc = realloc(q->rc, len * sizeof *rc);
    if (rc)
        q->rc = rc;
    uint8_t *rb = rc ? realloc(q->rb_dirty, nb) : NULL;
    if (rb)
        q->rb_dirty = rb;
    uint8_t *ex = rb && q->ex ? realloc(q->ex, len) : NULL;
    if (ex)
        q->ex = ex;
    if (!rc || !rb || (q->ex && !ex))
        return mi_seterr(ENOMEM, "%s: out of memory for refcounts", q->ep.name);
    memset(q->rc + q->rc_len, 0, (len - q->rc_len) * sizeof *rc);
    memset(q->rb_dirty + q->rb_len, 0, nb - q->rb_len);
    if (q->ex)
        memset(q->ex + q->rc_len, 0, len - q->rc_len);
    q->rc_len = len;
    q->rb_len = nb;
    return 0;
}

static void rc_set(struct qx *q, uint64_t c, uint32_t v)
{
    q->rc[c] = v;
    q->rb_dirty[c / rb_entries(q)] = 1;
    q->meta_dirty = true;
}

/* n new clusters at the end of the file (a hole: reads as zeros), each counted once. */
static int alloc(struct qx *q, uint64_t n, uint64_t *host)
{
    if (q->eof + n * q->cs > OFFM)
        return mi_seterr(EFBIG, "%s: the image file would grow beyond 64 PiB", q->ep.name);
    int r = rc_grow(q, (q->eof >> q->cbits) + n);
    if (r < 0)
        return r;
    *host = q->eof;
    for (uint64_t i = 0; i < n; i++)
        rc_set(q, (q->eof >> q->cbits) + i, 1);
    q->eof += n * q->cs;
    return 0;
}

/* A new cluster h whose data write failed (r): not counted, so not leaked. */
static int unalloc(struct qx *q, uint64_t h, int r)
{
    rc_set(q, h >> q->cbits, 0);
    return r;
}

/* One reference to cluster c less; the file keeps counting it until the next flush has
 * written the mapping that no longer names it. */
static int drop(struct qx *q, uint64_t c)
{
    if (q->npend == q->pend_cap) {
        size_t cap = q->pend_cap * 2 + 64;
        uint64_t *p = realloc(q->pend, cap * sizeof *p);
        if (!p)
            return mi_seterr(ENOMEM, "%s: out of memory", q->ep.name);
        q->pend = p, q->pend_cap = cap;
    }
    q->pend[q->npend++] = c;
    rc_set(q, c, q->rc[c] - 1);
    return 0;
}

/* The host clusters a compressed descriptor touches: [*a, *b]. */
static void comp_span(const struct qx *q, uint64_t e, uint64_t *a, uint64_t *b)
{
    uint64_t h, len;
    qcow2_decode_compressed(e, q->cbits, &h, &len);
    *a = h >> q->cbits;
    *b = (h + len - 1) >> q->cbits;
}

/* Drop the references of the (old) L2 entry e. */
static int release(struct qx *q, uint64_t e)
{
    int r = 0;
    if (e & COMPRESSED) {
        uint64_t a, b;
        comp_span(q, e, &a, &b);
        for (uint64_t c = a; c <= b && r == 0; c++)
            r = drop(q, c);
    } else if (e & OFFM) {
        r = drop(q, (e & OFFM) >> q->cbits);
    }
    return r;
}

/* ---- the mapping ---- */

/* Bytes of guest cluster gc inside the virtual size. */
static uint64_t clen(const struct qx *q, uint64_t gc)
{
    return mi_min(q->cs, q->ep.size - (gc << q->cbits));
}

static uint64_t *entry(struct qx *q, uint64_t gc)
{
    struct qx_l2 *t = &q->l2[gc / q->l2n];
    return t->e ? t->e + (gc % q->l2n) * q->words : NULL;
}

/* The entry of gc, to be changed: its table is created (and given a cluster) if needed. */
static int entry_mut(struct qx *q, uint64_t gc, uint64_t **p)
{
    uint64_t i = gc / q->l2n;
    struct qx_l2 *t = &q->l2[i];
    if (!t->e) {
        if (!(t->e = calloc(q->l2n * q->words, 8)))
            return mi_seterr(ENOMEM, "%s: out of memory for L2 tables", q->ep.name);
        int r = alloc(q, 1, &t->host);
        if (r < 0) {
            free(t->e);
            t->e = NULL;
            return r;
        }
        q->l1[i] = t->host | COPIED;
        q->l1_dirty = true;
    }
    t->dirty = true;
    q->meta_dirty = true;
    *p = t->e + (gc % q->l2n) * q->words;
    return 0;
}

/* Granule sc (0 without extended L2) of entry p (NULL: no table). */
static struct qcow2_l2dec granule(const struct qx *q, const uint64_t *p, unsigned sc)
{
    if (!p)
        return (struct qcow2_l2dec){QCOW2_C_UNALLOC, 0, 0};
    return q->extl2 ? qcow2_decode_l2_ext(p[0], p[1], q->cbits, sc)
                    : qcow2_decode_l2(p[0], q->cbits, q->version);
}

/* The entry owns a standard host cluster (data or a preallocated zero cluster). */
static bool owned(const struct qx *q, const uint64_t *p)
{
    return p && !(p[0] & COMPRESSED) && (p[0] & OFFM) && q->rc[(p[0] & OFFM) >> q->cbits] == 1;
}

/* ---- data ---- */

static int wr(struct qx *q, const void *b, uint64_t n, uint64_t host)
{
    int r = mi_pwrite_full(q->fd, b, n, host);
    return r < 0 ? mi_seterr(-r, "%s: write error at host offset %llu: %s", q->ep.name,
                             (unsigned long long)host, strerror(-r)) : 0;
}

/* Make host bytes read as zeros, keeping them allocated where the file system can. */
static int zero_host(struct qx *q, uint64_t host, uint64_t n)
{
    if (fallocate(q->fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, (off_t)host, (off_t)n) == 0 ||
        fallocate(q->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)host, (off_t)n) == 0)
        return 0;
    for (uint64_t k = 0; k < n;) {
        uint64_t m = mi_min(sizeof zeros, n - k);
        int r = wr(q, zeros, m, host + k);
        if (r < 0)
            return r;
        k += m;
    }
    return 0;
}

static int backing_read(struct qx *q, uint8_t *b, uint64_t n, uint64_t off)
{
    uint64_t have = 0;
    struct ep *bk = q->backing;
    if (bk && off < bk->size) {
        have = mi_min(n, bk->size - off);
        int r = bk->ops->pread(bk, b, have, off);
        if (r < 0)
            return r;
    }
    memset(b + have, 0, n - have);
    return 0;
}

/* Inflate the compressed cluster e into q->zbuf. */
static int inflate_entry(struct qx *q, uint64_t e)
{
    uint64_t h, len;
    qcow2_decode_compressed(e, q->cbits, &h, &len);
    len = mi_min(len, q->file_size - mi_min(h, q->file_size));
    uint8_t *in = malloc(len ? len : 1);
    if (!in)
        return mi_seterr(ENOMEM, "%s: out of memory", q->ep.name);
    int r = mi_pread_full(q->fd, in, len, h);
    bool ok = r == 0 && qcow2_inflate(q->ctype, in, len, q->zbuf, q->cs);
    free(in);
    if (r < 0)
        return mi_seterr(-r, "%s: read error at host offset %llu: %s", q->ep.name,
                         (unsigned long long)h, strerror(-r));
    return ok ? 0 : mi_seterr(EIO, "%s: compressed cluster at host offset %llu does not "
                              "decompress", q->ep.name, (unsigned long long)h);
}

/* What [o, o+n) of guest cluster gc reads as now. */
static int read_piece(struct qx *q, uint64_t gc, uint64_t o, uint64_t n, uint8_t *out)
{
    const uint64_t *p = entry(q, gc);
    if (p && (p[0] & COMPRESSED)) {
        int r = inflate_entry(q, p[0]);
        if (r == 0)
            memcpy(out, q->zbuf + o, n);
        return r;
    }
    for (uint64_t x = o; x < o + n;) {
        uint64_t y = mi_min(mi_round_down(x, q->gs) + q->gs, o + n);
        struct qcow2_l2dec d = granule(q, p, (unsigned)(x / q->gs));
        int r = 0;
        if (d.type == QCOW2_C_NORMAL) {
            r = mi_pread_full(q->fd, out + (x - o), y - x, d.host + x % q->gs);
            if (r < 0)
                return mi_seterr(-r, "%s: read error: %s", q->ep.name, strerror(-r));
        } else if (d.type == QCOW2_C_UNALLOC) {
            r = backing_read(q, out + (x - o), y - x, (gc << q->cbits) + x);
        } else {
            memset(out + (x - o), 0, y - x);
        }
        if (r < 0)
            return r;
        x = y;
    }
    return 0;
}

/* Give guest cluster gc the contents q->buf (clen bytes): in its own cluster where it owns
 * one, else in a new one (written only where not zero: a new cluster is a hole). */
static int rewrite(struct qx *q, uint64_t gc, uint64_t *p)
{
    uint64_t n = clen(q, gc), h;
    int r;
    if (owned(q, p)) { /* the entry changes once the data is there (a failed write: as before) */
        if ((r = wr(q, q->buf, n, p[0] & OFFM)) < 0)
            return r;
        p[0] = (p[0] & OFFM) | COPIED;
        if (q->extl2)
            p[1] = ALL_SUB;
        return 0;
    }
    if ((r = alloc(q, 1, &h)) < 0)
        return r;
    if (!mi_is_zero(q->buf, n) && (r = wr(q, q->buf, n, h)) < 0)
        return unalloc(q, h, r);
    if ((r = release(q, p[0])) < 0)
        return r;
    p[0] = h | COPIED;
    if (q->extl2)
        p[1] = ALL_SUB;
    return 0;
}

/* A compressed cluster (extended L2) becomes a standard one, every subcluster data. */
static int materialize(struct qx *q, uint64_t gc, uint64_t *p)
{
    int r = read_piece(q, gc, 0, clen(q, gc), q->buf);
    return r < 0 ? r : rewrite(q, gc, p);
}

/* Write [o, o+n) of guest cluster gc, standard L2 entries. */
static int write_std(struct qx *q, uint64_t gc, const uint8_t *b, uint64_t o, uint64_t n)
{
    uint64_t *p;
    int r = entry_mut(q, gc, &p);
    if (r < 0)
        return r;
    bool zero = q->version >= 3 && (p[0] & ZFLAG);
    if (owned(q, p) && !zero) {
        p[0] = (p[0] & OFFM) | COPIED;
        return wr(q, b, n, (p[0] & OFFM) + o);
    }
    uint64_t h;
    if (n == clen(q, gc) && !owned(q, p)) { /* a whole new cluster */
        if ((r = alloc(q, 1, &h)) < 0)
            return r;
        if ((r = wr(q, b, n, h)) < 0)
            return unalloc(q, h, r);
        if ((r = release(q, p[0])) < 0)
            return r;
        p[0] = h | COPIED;
        return 0;
    }
    if ((r = read_piece(q, gc, 0, clen(q, gc), q->buf)) < 0)
        return r;
    memcpy(q->buf + o, b, n);
    return rewrite(q, gc, p);
}

/* Write [o, o+n) of guest cluster gc, extended L2 entries: subcluster by subcluster, runs
 * of whole or allocated subclusters in one write. */
static int write_ext(struct qx *q, uint64_t gc, const uint8_t *b, uint64_t o, uint64_t n)
{
    uint64_t *p, h;
    int r = entry_mut(q, gc, &p);
    if (r == 0 && (p[0] & COMPRESSED))
        r = materialize(q, gc, p);
    bool fresh = !(p[0] & OFFM);
    if (r == 0 && fresh && (r = alloc(q, 1, &h)) == 0)
        p[0] = h | COPIED;
    if (r < 0)
        return r;
    uint64_t host = p[0] & OFFM, end = o + n, run = o, bits = 0; /* bits: of the run */
    for (uint64_t x = o; x < end;) {
        uint64_t s = x / q->gs, g0 = s * q->gs, y = mi_min(g0 + q->gs, end);
        uint64_t glen = mi_min(q->gs, clen(q, gc) - g0), bit = 1ull << s;
        bool direct = (x == g0 && y - g0 == glen) || (p[1] & bit);
        if (!direct) {
            if (x > run && (r = wr(q, b + (run - o), x - run, host + run)) < 0)
                return r;
            p[1] = (p[1] | bits) & ~(bits << 32);
            bits = 0;
            if ((r = read_piece(q, gc, g0, glen, q->buf)) < 0)
                return r;
            memcpy(q->buf + (x - g0), b + (x - o), y - x);
            bool skip = fresh && mi_is_zero(q->buf, glen);
            if ((r = skip ? wr(q, b + (x - o), y - x, host + x) : wr(q, q->buf, glen, host + g0)) < 0)
                return r;
            p[1] = (p[1] | bit) & ~(bit << 32);
            run = y;
        } else {
            bits |= bit;
        }
        x = y;
    }
    if (run < end && (r = wr(q, b + (run - o), end - run, host + run)) < 0)
        return r;
    p[1] = (p[1] | bits) & ~(bits << 32); /* the bitmap changes once the data is there */
    return 0;
}

static int qx_pwrite(struct ep *ep, const void *buf, uint64_t len, uint64_t off)
{
    struct qx *q = (struct qx *)ep;
    if (off > ep->size || len > ep->size - off)
        return mi_seterr(EINVAL, "%s: write beyond the end of the image", ep->name);
    const uint8_t *b = buf;
    int r = 0;
    pthread_mutex_lock(&q->lock);
    while (len && r == 0) {
        uint64_t gc = off >> q->cbits, o = off & (q->cs - 1), n = mi_min(len, q->cs - o);
        r = q->extl2 ? write_ext(q, gc, b, o, n) : write_std(q, gc, b, o, n);
        b += n, off += n, len -= n;
    }
    pthread_mutex_unlock(&q->lock);
    return r;
}

/* ---- zeroing, and giving ranges back to the backing file ---- */

/* [o, o+n) of cluster gc through a rewrite: the old contents with the range zeroed, or
 * (back) read from the backing file.  A cluster that ends up all zero becomes a zero
 * cluster (v3) or, without a backing file, unallocated. */
static int patch_cluster(struct qx *q, uint64_t gc, uint64_t o, uint64_t n, bool back)
{
    uint64_t *p;
    int r = entry_mut(q, gc, &p);
    if (r == 0)
        r = read_piece(q, gc, 0, clen(q, gc), q->buf);
    if (r == 0)
        r = back ? backing_read(q, q->buf + o, n, (gc << q->cbits) + o) : 0;
    if (r < 0)
        return r;
    if (!back)
        memset(q->buf + o, 0, n);
    if (!q->extl2 && mi_is_zero(q->buf, clen(q, gc)) && (q->version >= 3 || !q->backing)) {
        if (owned(q, p))
            p[0] = (p[0] & OFFM) | (q->version >= 3 ? ZFLAG : 0) | COPIED;
        else if ((r = release(q, p[0])) == 0)
            p[0] = q->version >= 3 ? ZFLAG : 0;
        if (q->version < 3 && owned(q, p))
            r = zero_host(q, p[0] & OFFM, clen(q, gc));
        return r;
    }
    return rewrite(q, gc, p);
}

/* A whole cluster reads as zeros (back: as the backing file), standard L2 entries. */
static int zero_whole_std(struct qx *q, uint64_t gc, bool back)
{
    uint64_t *p = entry(q, gc);
    struct qcow2_l2dec d = granule(q, p, 0);
    bool unalloc = d.type == QCOW2_C_UNALLOC;
    if (back ? unalloc : d.type == QCOW2_C_ZERO || (unalloc && !q->backing))
        return 0;
    if (!back && q->version < 3 && owned(q, p))
        return zero_host(q, p[0] & OFFM, clen(q, gc));
    if (!back && q->version < 3 && q->backing) /* zeros must hide the backing file */
        return patch_cluster(q, gc, 0, clen(q, gc), false);
    int r = entry_mut(q, gc, &p);
    if (r < 0)
        return r;
    if (!back && owned(q, p)) {
        p[0] = (p[0] & OFFM) | ZFLAG | COPIED;
        return 0;
    }
    if ((r = release(q, p[0])) < 0)
        return r;
    p[0] = back || q->version < 3 ? 0 : ZFLAG;
    return 0;
}

static int zero_std(struct qx *q, uint64_t gc, uint64_t o, uint64_t n, bool back)
{
    if (n == clen(q, gc))
        return zero_whole_std(q, gc, back);
    uint64_t *p = entry(q, gc);
    struct qcow2_l2dec d = granule(q, p, 0);
    if (back ? d.type == QCOW2_C_UNALLOC
             : d.type == QCOW2_C_ZERO || (d.type == QCOW2_C_UNALLOC && !q->backing))
        return 0;
    if (d.type == QCOW2_C_NORMAL && owned(q, p) && !back)
        return zero_host(q, d.host + o, n);
    return patch_cluster(q, gc, o, n, back);
}

/* Subcluster s of an extended L2 entry: [x, y) of it (cluster offsets) reads as zeros, or
 * (back) as the backing file. */
static int zero_sub(struct qx *q, uint64_t gc, uint64_t *p, uint64_t s, uint64_t x,
                    uint64_t y, bool back)
{
    uint64_t g0 = s * q->gs, glen = mi_min(q->gs, clen(q, gc) - g0), h;
    bool a = p[1] >> s & 1, z = p[1] >> (32 + s) & 1;
    if (x == g0 && y - g0 == glen) { /* whole: the bitmap says it */
        p[1] &= ~(1ull << s | 1ull << (32 + s));
        if (!back)
            p[1] |= 1ull << (32 + s);
        return 0;
    }
    if (back ? !a && !z : z || (!a && !q->backing))
        return 0;
    int r = 0;
    if (a && !back)
        return zero_host(q, (p[0] & OFFM) + x, y - x);
    if (!(p[0] & OFFM) && (r = alloc(q, 1, &h)) == 0)
        p[0] = h | COPIED;
    if (r == 0)
        r = read_piece(q, gc, g0, glen, q->buf);
    if (r == 0 && back)
        r = backing_read(q, q->buf + (x - g0), y - x, (gc << q->cbits) + x);
    else if (r == 0)
        memset(q->buf + (x - g0), 0, y - x);
    if (r == 0)
        r = wr(q, q->buf, glen, (p[0] & OFFM) + g0);
    if (r == 0) /* the bitmap changes once the data is there */
        p[1] = (p[1] | 1ull << s) & ~(1ull << (32 + s));
    return r;
}

static int zero_ext(struct qx *q, uint64_t gc, uint64_t o, uint64_t n, bool back)
{
    uint64_t *p = entry(q, gc);
    if (!p && (back || !q->backing))
        return 0; /* no table: unallocated, and zeros without a backing file */
    int r = entry_mut(q, gc, &p);
    if (r == 0 && (p[0] & COMPRESSED)) {
        if (n == clen(q, gc)) {
            if ((r = release(q, p[0])) == 0)
                p[0] = 0, p[1] = back ? 0 : ALL_SUB << 32;
            return r;
        }
        r = materialize(q, gc, p);
    }
    for (uint64_t x = o; x < o + n && r == 0;) {
        uint64_t s = x / q->gs, y = mi_min((s + 1) * q->gs, o + n);
        r = zero_sub(q, gc, p, s, x, y, back);
        x = y;
    }
    return r;
}

static int qx_zero(struct ep *ep, uint64_t off, uint64_t len, unsigned flags)
{
    struct qx *q = (struct qx *)ep;
    if (off > ep->size || len > ep->size - off)
        return mi_seterr(EINVAL, "%s: zero beyond the end of the image", ep->name);
    bool back = flags & EP_ZERO_BACKING;
    int r = 0;
    pthread_mutex_lock(&q->lock);
    while (len && r == 0) {
        uint64_t gc = off >> q->cbits, o = off & (q->cs - 1), n = mi_min(len, q->cs - o);
        r = q->extl2 ? zero_ext(q, gc, o, n, back) : zero_std(q, gc, o, n, back);
        off += n, len -= n;
    }
    pthread_mutex_unlock(&q->lock);
    return r;
}

static int qx_pread(struct ep *ep, void *buf, uint64_t len, uint64_t off)
{
    struct qx *q = (struct qx *)ep;
    uint8_t *b = buf;
    int r = 0;
    pthread_mutex_lock(&q->lock);
    while (len && r == 0) {
        uint64_t gc = off >> q->cbits, o = off & (q->cs - 1), n = mi_min(len, q->cs - o);
        r = read_piece(q, gc, o, n, b);
        b += n, off += n, len -= n;
    }
    pthread_mutex_unlock(&q->lock);
    return r;
}

/* ---- flush: the metadata, in the order of the opening comment ---- */

static int sync_file(struct qx *q, const char *what)
{
    if (fdatasync(q->fd) < 0)
        return mi_seterr(errno, "%s: flushing the %s failed: %s", q->ep.name, what, strerror(errno));
    return 0;
}

static void encode_block(const struct qx *q, uint64_t i, uint8_t *out)
{
    uint64_t E = rb_entries(q), c0 = i * E;
    memset(out, 0, q->cs);
    for (uint64_t k = 0; k < E && c0 + k < q->rc_len; k++) {
        uint64_t v = q->rc[c0 + k];
        if (q->rbits == 64)
            mi_put_be64(out + 8 * k, v);
        else if (q->rbits == 32)
            mi_put_be32(out + 4 * k, (uint32_t)v);
        else if (q->rbits == 16)
            mi_put_be16(out + 2 * k, (uint16_t)v);
        else if (q->rbits == 8)
            out[k] = (uint8_t)v;
        else
            out[k * q->rbits / 8] |= (uint8_t)(v << (k * q->rbits % 8));
    }
}

static uint64_t decode_rc(const struct qx *q, const uint8_t *blk, uint64_t k)
{
    switch (q->rbits) {
    case 64: return mi_be64(blk + 8 * k);
    case 32: return mi_be32(blk + 4 * k);
    case 16: return mi_be16(blk + 2 * k);
    case 8: return blk[k];
    default: return blk[k * q->rbits / 8] >> (k * q->rbits % 8) & ((1u << q->rbits) - 1);
    }
}

/* A bigger refcount table for at least need blocks, at the end of the file; the old one
 * is freed once the header names the new one. */
static int grow_reftable(struct qx *q, uint64_t need)
{
    uint64_t n = mi_min(need + need / 2 + q->cs / 8, QX_MAX_REFTABLE / 8), h;
    if (need > n)
        return mi_seterr(EFBIG, "%s: the refcount table would outgrow %llu MiB (QEMU's limit): "
                         "the file is too large for its cluster size", q->ep.name,
                         (unsigned long long)(QX_MAX_REFTABLE >> 20));
    uint64_t clusters = mi_round_up(n * 8, q->cs) >> q->cbits;
    uint64_t *rt = calloc(clusters * q->cs / 8, 8);
    int r = rt ? alloc(q, clusters, &h) : mi_seterr(ENOMEM, "%s: out of memory", q->ep.name);
    if (r < 0) {
        free(rt);
        return r;
    }
    memcpy(rt, q->rt, q->rt_n * 8);
    for (uint64_t c = 0; c < q->rt_clusters && r == 0; c++)
        r = drop(q, (q->rt_off >> q->cbits) + c);
    free(q->rt);
    q->rt = rt;
    q->rt_n = clusters * q->cs / 8;
    q->rt_off = h;
    q->rt_clusters = (uint32_t)clusters;
    q->rt_dirty = q->hdr_dirty = true;
    return r;
}

/* Every cluster up to eof gets a refcount block (which may need clusters itself). */
static int cover(struct qx *q)
{
    uint64_t E = rb_entries(q), h;
    for (bool more = true; more;) {
        uint64_t nblk = ((q->eof >> q->cbits) + E - 1) / E;
        int r = nblk > q->rt_n ? grow_reftable(q, nblk) : 0;
        more = false;
        for (uint64_t i = 0; i < nblk && i < q->rt_n && r == 0; i++)
            if (!q->rt[i] && (r = alloc(q, 1, &h)) == 0) {
                q->rt[i] = h;
                q->rt_dirty = more = true;
                q->rb_dirty[i] = 1;
            }
        if (r < 0)
            return r;
        more = more || nblk > q->rt_n;
    }
    return 0;
}

static int write_blocks(struct qx *q)
{
    bool any = false;
    for (uint64_t i = 0; i < q->rb_len; i++) {
        if (!q->rb_dirty[i])
            continue;
        if (i < q->rt_n && q->rt[i]) {
            encode_block(q, i, q->buf);
            int r = wr(q, q->buf, q->cs, q->rt[i]);
            if (r < 0)
                return r;
            any = true;
        }
        q->rb_dirty[i] = 0;
    }
    return any ? sync_file(q, "refcount blocks") : 0;
}

static int write_be64s(struct qx *q, const uint64_t *v, uint64_t n, uint64_t host)
{
    uint64_t *t = malloc(n * 8);
    if (!t)
        return mi_seterr(ENOMEM, "%s: out of memory", q->ep.name);
    for (uint64_t i = 0; i < n; i++)
        mi_put_be64(&t[i], v[i]);
    int r = wr(q, t, n * 8, host);
    free(t);
    return r;
}

/* Step 2: refcounts that still count the freed clusters, the table, the header. */
static int write_counts(struct qx *q)
{
    for (size_t i = 0; i < q->npend; i++)
        q->rc[q->pend[i]]++;
    int r = write_blocks(q);
    for (size_t i = 0; i < q->npend; i++)
        rc_set(q, q->pend[i], q->rc[q->pend[i]] - 1);
    if (r == 0 && q->rt_dirty && (r = write_be64s(q, q->rt, q->rt_n, q->rt_off)) == 0 &&
        (r = sync_file(q, "refcount table")) == 0)
        q->rt_dirty = false;
    if (r == 0 && q->hdr_dirty) {
        uint8_t h[12];
        mi_put_be64(h, q->rt_off);
        mi_put_be32(h + 8, q->rt_clusters);
        if ((r = wr(q, h, sizeof h, QCOW2_HDR_REFTABLE_OFFSET)) == 0 &&
            (r = sync_file(q, "header")) == 0)
            q->hdr_dirty = false;
    }
    return r;
}

/* Step 3: the L2 tables, then the L1 table. */
static int write_mapping(struct qx *q)
{
    bool any = false;
    int r = 0;
    for (uint32_t i = 0; i < q->l1n && r == 0; i++) {
        struct qx_l2 *t = &q->l2[i];
        if (t->e && t->dirty && (r = write_be64s(q, t->e, q->l2n * q->words, t->host)) == 0)
            t->dirty = false, any = true;
    }
    if (r == 0 && any)
        r = sync_file(q, "L2 tables");
    if (r == 0 && q->l1_dirty && (r = write_be64s(q, q->l1, q->l1n, q->l1_off)) == 0 &&
        (r = sync_file(q, "L1 table")) == 0)
        q->l1_dirty = false;
    return r;
}

/* New clusters left as holes at the end still lie inside the file. */
static int extend(struct qx *q)
{
    struct stat st;
    if (fstat(q->fd, &st) < 0)
        return mi_seterr(errno, "%s: %s", q->ep.name, strerror(errno));
    if ((uint64_t)st.st_size < q->eof && ftruncate(q->fd, (off_t)q->eof) < 0)
        return mi_seterr(errno, "%s: cannot extend the file: %s", q->ep.name, strerror(errno));
    return 0;
}

/* Step 3b, after a resize: the header names the new size and L1 table. */
static int write_geometry(struct qx *q)
{
    uint8_t b[8], l1[12];
    mi_put_be64(b, q->ep.size);
    mi_put_be32(l1, q->l1_size);
    mi_put_be64(l1 + 4, q->l1_off);
    int r = wr(q, l1, sizeof l1, QCOW2_HDR_L1_SIZE);
    if (r == 0)
        r = wr(q, b, sizeof b, QCOW2_HDR_SIZE);
    if (r == 0 && (r = sync_file(q, "header")) == 0)
        q->geom_dirty = false;
    return r;
}

static int flush_locked(struct qx *q)
{
    int r = extend(q);
    if (r == 0)
        r = sync_file(q, "data");
    if (r < 0 || (!q->meta_dirty && !q->clear_dirty))
        return r;
    if ((r = cover(q)) < 0 || (r = write_counts(q)) < 0 || (r = write_mapping(q)) < 0 ||
        (q->geom_dirty && (r = write_geometry(q)) < 0))
        return r;
    q->npend = 0; /* step 4: write_counts left their blocks dirty with the true counts */
    if ((r = write_blocks(q)) < 0)
        return r;
    if (q->clear_dirty) {
        uint8_t b[8];
        mi_put_be64(b, q->incompat & ~QCOW2_INCOMPAT_DIRTY);
        if ((r = wr(q, b, 8, QCOW2_HDR_INCOMPAT)) < 0 || (r = sync_file(q, "header")) < 0)
            return r;
        q->incompat &= ~QCOW2_INCOMPAT_DIRTY;
        q->clear_dirty = false;
    }
    q->meta_dirty = false;
    return 0;
}

static int qx_flush(struct ep *ep)
{
    struct qx *q = (struct qx *)ep;
    pthread_mutex_lock(&q->lock);
    int r = flush_locked(q);
    pthread_mutex_unlock(&q->lock);
    return r;
}

/* A bigger L1 table for need entries, at the end of the file (the old one is freed once
 * the header names the new one). */
static int move_l1(struct qx *q, uint32_t need)
{
    uint64_t clusters = mi_round_up(need * 8ull, q->cs) >> q->cbits, h;
    uint64_t old = mi_round_up(q->l1_size * 8ull, q->cs) >> q->cbits;
    int r = alloc(q, clusters, &h);
    for (uint64_t c = 0; c < old && r == 0 && q->l1_size; c++)
        r = drop(q, (q->l1_off >> q->cbits) + c);
    if (r == 0)
        q->l1_off = h, q->l1_size = need;
    return r;
}

/* Follow a disk that grew: the new range is unallocated (zeros, or the backing file). */
static int qx_resize(struct ep *ep, uint64_t size)
{
    struct qx *q = (struct qx *)ep;
    if (size < ep->size || size % 512)
        return mi_seterr(ENOTSUP, "%s: a qcow2 target grows only, to a multiple of 512 bytes "
                         "(not %llu bytes)", ep->name, (unsigned long long)size);
    uint64_t span = q->cs * q->l2n, need = (size + span - 1) / span;
    if (need > UINT32_MAX / 8 || need * 8 > 32 * MI_MiB)
        return mi_seterr(EFBIG, "%s: %llu bytes need an L1 table beyond 32 MiB", ep->name,
                         (unsigned long long)size);
    pthread_mutex_lock(&q->lock);
    int r = 0;
    if (need > q->l1n) {
        uint64_t *l1 = realloc(q->l1, need * 8);
        struct qx_l2 *l2 = l1 ? realloc(q->l2, need * sizeof *l2) : NULL;
        if (l1)
            q->l1 = l1;
        if (l2)
            q->l2 = l2;
        r = l2 ? 0 : mi_seterr(ENOMEM, "%s: out of memory", ep->name);
        if (r == 0 && need > q->l1_size)
            r = move_l1(q, (uint32_t)need);
        for (uint64_t i = q->l1n; r == 0 && i < need; i++)
            q->l1[i] = 0, q->l2[i] = (struct qx_l2){NULL, 0, false};
        if (r == 0)
            q->l1n = (uint32_t)need, q->l1_dirty = true;
    }
    if (r == 0)
        ep->size = size, q->geom_dirty = q->meta_dirty = true;
    pthread_mutex_unlock(&q->lock);
    return r;
}

static void qx_free(struct qx *q)
{
    if (q->l2)
        for (uint32_t i = 0; i < q->l1n; i++)
            free(q->l2[i].e);
    free(q->l2);
    free(q->l1);
    free(q->rc);
    free(q->ex);
    free(q->rb_dirty);
    free(q->rt);
    free(q->pend);
    free(q->buf);
    free(q->zbuf);
    ep_close(q->backing);
    if (q->fd >= 0)
        close(q->fd);
    pthread_mutex_destroy(&q->lock);
    free(q->ep.name);
    free(q);
}

static int qx_close(struct ep *ep)
{
    struct qx *q = (struct qx *)ep;
    int r = flush_locked(q); /* what was written is named: a consistent image either way */
    if (close(q->fd) < 0 && r == 0)
        r = mi_seterr(errno, "%s: close failed: %s", ep->name, strerror(errno));
    q->fd = -1;
    qx_free(q);
    return r;
}

static int qx_info(struct ep *ep, struct ep_info *info)
{
    struct qx *q = (struct qx *)ep;
    info->cluster_size = (uint32_t)q->cs;
    info->version = q->version;
    snprintf(info->backing_file, sizeof info->backing_file, "%s", q->backing_file);
    snprintf(info->backing_format, sizeof info->backing_format, "%s", q->backing_fmt);
    snprintf(info->backing_path, sizeof info->backing_path, "%s", q->backing_path);
    return 0;
}

static const struct ep_ops qx_ops = {
    .name = "qcow2",
    .block_status = ep_bs_all_data,
    .pread = qx_pread,
    .pwrite = qx_pwrite,
    .zero = qx_zero,
    .flush = qx_flush,
    .close = qx_close,
    .info = qx_info,
    .resize = qx_resize,
};

/* ---- open ---- */

#define REFUSE(...) (mi_seterr(EINVAL, __VA_ARGS__))

/* What this writer refuses, read from the header cluster h (hlen bytes). */
static int refuse_header(const char *nm, const uint8_t *h, uint64_t hlen)
{
    int version = (int)mi_be32(h + QCOW2_HDR_VERSION);
    if (version == 1)
        return REFUSE("%s: is a qcow (version 1) image; mirror-img writes into qcow2 only", nm);
    if (mi_be32(h + QCOW2_HDR_CRYPT_METHOD))
        return REFUSE("%s: is encrypted; writing into an encrypted image is not supported", nm);
    if (mi_be32(h + QCOW2_HDR_NB_SNAPSHOTS))
        return REFUSE("%s: has %u internal snapshot(s); writing into it would change what they "
                      "share (delete them with qemu-img snapshot -d)", nm,
                      mi_be32(h + QCOW2_HDR_NB_SNAPSHOTS));
    if (version < 3)
        return 0;
    uint64_t inc = mi_be64(h + QCOW2_HDR_INCOMPAT);
    if (inc & QCOW2_INCOMPAT_CORRUPT)
        return REFUSE("%s: is marked corrupt; repair it first (qemu-img check -r all)", nm);
    if (inc & ~QCOW2_INCOMPAT_KNOWN)
        return REFUSE("%s: has unknown incompatible features (0x%llx)", nm,
                      (unsigned long long)(inc & ~QCOW2_INCOMPAT_KNOWN));
    if (inc & QCOW2_INCOMPAT_DATA_FILE)
        return REFUSE("%s: has an external data file; writing into it is not supported", nm);
    uint64_t off = mi_be32(h + QCOW2_HDR_LENGTH);
    while (off + 8 <= hlen) {
        uint32_t type = mi_be32(h + off), len = mi_be32(h + off + 4);
        if (type == QCOW2_EXT_END)
            break;
        if (type == QCOW2_EXT_BITMAPS)
            return REFUSE("%s: has persistent bitmaps, which these writes would leave stale "
                          "(remove them with qemu-img bitmap --remove)", nm);
        off += 8 + mi_round_up(len, 8);
    }
    return 0;
}

static int check_header(const char *nm)
{
    int fd = open(nm, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return mi_seterr(errno, "%s: cannot open: %s", nm, strerror(errno));
    uint8_t *h = calloc(1, 2 * MI_MiB);
    struct stat st;
    int r = h && fstat(fd, &st) == 0 ? 0 : -ENOMEM;
    uint64_t n = r == 0 ? mi_min((uint64_t)st.st_size, 2 * MI_MiB) : 0;
    if (r == 0 && n >= QCOW2_V2_HEADER_LEN && (r = mi_pread_full(fd, h, n, 0)) == 0 &&
        mi_be32(h) == QCOW2_MAGIC) {
        unsigned cb = mi_be32(h + QCOW2_HDR_CLUSTER_BITS);
        uint64_t hlen = cb >= QCOW2_MIN_CLUSTER_BITS && cb <= QCOW2_MAX_CLUSTER_BITS
                            ? mi_min(n, 1ull << cb) : n;
        r = refuse_header(nm, h, hlen);
    } else if (r < 0) {
        r = mi_seterr(-r, "%s: cannot read the header: %s", nm, strerror(-r));
    }
    free(h);
    close(fd);
    return r; /* anything else wrong with it: the reader says */
}

/* Count one more reference to [off, off+len); sole: the one owner it may have. */
static int count(struct qx *q, uint64_t off, uint64_t len, bool sole, const char *what)
{
    if (!len)
        return 0;
    uint64_t a = off >> q->cbits, b = (off + len - 1) >> q->cbits;
    int r = rc_grow(q, b + 1);
    for (uint64_t c = a; c <= b && r == 0; c++) {
        if (q->ex[c] || (sole && q->rc[c]) || q->rc[c] >= rc_max(q))
            return REFUSE("%s: host cluster 0x%llx (%s) is used twice; the image is corrupt "
                          "(qemu-img check)", q->ep.name, (unsigned long long)(c << q->cbits),
                          what);
        q->rc[c]++;
        q->ex[c] = sole;
    }
    q->hi = mi_max(q->hi, b + 1);
    return r;
}

static int count_table(struct qx *q, const struct qx_l2 *t)
{
    int r = count(q, t->host, q->cs, true, "L2 table");
    for (uint64_t j = 0; j < q->l2n && r == 0; j++) {
        uint64_t e = t->e[j * q->words], a, b;
        if (e & COMPRESSED) {
            comp_span(q, e, &a, &b);
            r = count(q, a << q->cbits, (b - a + 1) << q->cbits, false, "compressed data");
        } else if (e & OFFM) {
            r = count(q, e & OFFM, q->cs, true, "data");
        }
    }
    return r;
}

static int read_table(struct qx *q, struct qx_l2 *t, uint64_t off)
{
    t->host = off;
    int r = (t->e = malloc(q->cs)) ? mi_pread_full(q->fd, t->e, q->cs, off) : -ENOMEM;
    if (r < 0)
        return mi_seterr(-r, "%s: cannot read the L2 table at 0x%llx: %s", q->ep.name,
                         (unsigned long long)off, strerror(-r));
    for (uint64_t k = 0; k < q->cs / 8; k++)
        t->e[k] = mi_be64(&t->e[k]);
    return 0;
}

/* Read the L2 tables and the refcount table (the reader has checked their places). */
static int load(struct qx *q)
{
    const char *nm = q->ep.name;
    int r = 0;
    uint64_t *l1 = calloc(q->l1_size ? q->l1_size : 1, 8);
    q->l1 = calloc(q->l1n ? q->l1n : 1, 8);
    q->l2 = calloc(q->l1n ? q->l1n : 1, sizeof *q->l2);
    if (!l1 || !q->l1 || !q->l2)
        r = mi_seterr(ENOMEM, "%s: out of memory", nm);
    if (r == 0 && (r = mi_pread_full(q->fd, l1, q->l1_size * 8ull, q->l1_off)) < 0)
        r = mi_seterr(-r, "%s: cannot read the L1 table: %s", nm, strerror(-r));
    for (uint32_t i = 0; i < q->l1_size && r == 0; i++) {
        uint64_t e = mi_be64(&l1[i]), off = e & QCOW2_L1_OFFSET_MASK;
        if (i >= q->l1n) {
            if (off)
                r = REFUSE("%s: L1 entry %u names an L2 table past the virtual size", nm, i);
            continue;
        }
        q->l1[i] = e;
        if (off)
            r = read_table(q, &q->l2[i], off);
    }
    free(l1);
    q->rt_n = (uint64_t)q->rt_clusters * q->cs / 8;
    if (r == 0 && !(q->rt = calloc(q->rt_n ? q->rt_n : 1, 8)))
        r = mi_seterr(ENOMEM, "%s: out of memory", nm);
    if (r == 0 && (r = mi_pread_full(q->fd, q->rt, q->rt_n * 8, q->rt_off)) < 0)
        r = mi_seterr(-r, "%s: cannot read the refcount table: %s", nm, strerror(-r));
    for (uint64_t i = 0; i < q->rt_n && r == 0; i++) {
        q->rt[i] = mi_be64(&q->rt[i]);
        uint64_t o = q->rt[i] & OFFM;
        if (q->rt[i] != o || (o & (q->cs - 1)) || o + q->cs > mi_round_up(q->file_size, q->cs))
            r = REFUSE("%s: refcount table entry %llu (0x%llx) is invalid", nm,
                       (unsigned long long)i, (unsigned long long)q->rt[i]);
    }
    return r;
}

/* Refcount block i against the counts: rewritten (at the first flush) where it differs. */
static int check_block(struct qx *q, uint64_t i, uint64_t E)
{
    if (i * E > 4 * mi_max(q->rc_len, E))
        return REFUSE("%s: refcount block %llu describes clusters far past the end of the file",
                      q->ep.name, (unsigned long long)i);
    int r = rc_grow(q, (i + 1) * E);
    if (r == 0 && (r = mi_pread_full(q->fd, q->buf, q->cs, q->rt[i])) < 0)
        return mi_seterr(-r, "%s: cannot read a refcount block: %s", q->ep.name, strerror(-r));
    for (uint64_t k = 0; k < E && r == 0; k++)
        if (decode_rc(q, q->buf, k) != q->rc[i * E + k]) {
            q->rb_dirty[i] = 1;
            q->meta_dirty = true;
            break;
        }
    return r;
}

/* Refcounts from what the image names; the blocks that say otherwise are rewritten. */
static int recount(struct qx *q)
{
    q->ex = malloc(1);
    int r = q->ex ? rc_grow(q, q->eof >> q->cbits) : -ENOMEM;
    if (r == 0)
        r = count(q, 0, q->cs, true, "header");
    if (r == 0)
        r = count(q, q->l1_off, q->l1_size * 8ull, true, "L1 table");
    if (r == 0)
        r = count(q, q->rt_off, (uint64_t)q->rt_clusters << q->cbits, true, "refcount table");
    for (uint64_t i = 0; i < q->rt_n && r == 0; i++)
        if (q->rt[i])
            r = count(q, q->rt[i], q->cs, true, "refcount block");
    for (uint32_t i = 0; i < q->l1n && r == 0; i++)
        if (q->l2[i].e)
            r = count_table(q, &q->l2[i]);
    free(q->ex);
    q->ex = NULL;
    uint64_t E = rb_entries(q);
    for (uint64_t i = 0; i < q->rt_n && r == 0; i++)
        if (q->rt[i])
            r = check_block(q, i, E);
    q->eof = mi_max(q->eof, q->hi << q->cbits);
    return r;
}

/* The copied flags say refcount 1 (every owned cluster here); fix the ones that do not. */
static void fix_copied(struct qx *q)
{
    for (uint32_t i = 0; i < q->l1n; i++) {
        struct qx_l2 *t = &q->l2[i];
        if (!t->e)
            continue;
        if (!(q->l1[i] & COPIED))
            q->l1[i] |= COPIED, q->l1_dirty = q->meta_dirty = true;
        for (uint64_t j = 0; j < q->l2n; j++) {
            uint64_t *e = &t->e[j * q->words];
            if (!(*e & COMPRESSED) && (*e & OFFM) && !(*e & COPIED))
                *e |= COPIED, t->dirty = q->meta_dirty = true;
        }
    }
}

/* Take the reader's view of the image (checked by it) and its backing chain. */
static void take_reader(struct qx *q, struct qcow2 *rd)
{
    q->version = rd->version;
    q->ctype = rd->compression;
    q->cbits = rd->cluster_bits;
    q->cs = rd->cluster_size;
    q->extl2 = rd->extl2;
    q->words = q->extl2 ? 2 : 1;
    q->gs = q->extl2 ? q->cs / QCOW2_SUBCLUSTERS : q->cs;
    q->l2n = q->cs / (8 * q->words);
    q->rbits = 1u << rd->refcount_order;
    q->l1n = rd->l1_used;
    q->l1_size = rd->l1_size;
    q->l1_off = rd->l1_offset;
    q->file_size = rd->file_size;
    q->incompat = rd->incompat;
    q->clear_dirty = rd->incompat & QCOW2_INCOMPAT_DIRTY;
    q->ep.size = rd->size;
    q->backing = rd->backing;
    rd->backing = NULL;
    snprintf(q->backing_file, sizeof q->backing_file, "%s", rd->has_backing ? rd->backing_name : "");
    snprintf(q->backing_fmt, sizeof q->backing_fmt, "%s", rd->backing_fmt);
    snprintf(q->backing_path, sizeof q->backing_path, "%s", rd->backing_path);
}

static int read_reftable_place(struct qx *q)
{
    uint8_t h[12];
    int r = mi_pread_full(q->fd, h, sizeof h, QCOW2_HDR_REFTABLE_OFFSET);
    if (r < 0)
        return mi_seterr(-r, "%s: cannot read the header: %s", q->ep.name, strerror(-r));
    q->rt_off = mi_be64(h);
    q->rt_clusters = mi_be32(h + 8);
    if ((q->rt_off & (q->cs - 1)) || !q->rt_clusters || q->rt_clusters > QX_MAX_REFTABLE / q->cs ||
        q->rt_off + ((uint64_t)q->rt_clusters << q->cbits) > mi_round_up(q->file_size, q->cs))
        return REFUSE("%s: the refcount table (0x%llx, %u clusters) is invalid", q->ep.name,
                      (unsigned long long)q->rt_off, q->rt_clusters);
    return 0;
}

struct ep *qcow2_open_rw(const char *name)
{
    if (check_header(name) < 0)
        return NULL;
    struct ep *rd = qcow2_open(name, &(struct ep_open_opts){.format = "qcow2"}, 0);
    if (!rd)
        return NULL;
    struct qx *q = calloc(1, sizeof *q);
    if (!q || !(q->ep.name = strdup(name))) {
        free(q);
        ep_close(rd);
        mi_seterr(ENOMEM, "%s: out of memory", name);
        return NULL;
    }
    pthread_mutex_init(&q->lock, NULL);
    take_reader(q, (struct qcow2 *)rd);
    ep_close(rd);
    q->fd = open(name, O_RDWR | O_CLOEXEC);
    int r = q->fd < 0 ? mi_seterr(errno, "%s: cannot open for writing: %s", name, strerror(errno)) : 0;
    q->eof = mi_round_up(q->file_size, q->cs);
    if (r == 0 && (!(q->buf = malloc(q->cs)) || !(q->zbuf = malloc(q->cs))))
        r = mi_seterr(ENOMEM, "%s: out of memory", name);
    if (r == 0 && (r = read_reftable_place(q)) == 0 && (r = load(q)) == 0 && (r = recount(q)) == 0)
        fix_copied(q);
    /* Repaired before anything is written: a run stopped from now on leaves leaks at most. */
    if (r == 0 && (q->meta_dirty || q->clear_dirty))
        r = flush_locked(q);
    if (r < 0) {
        qx_free(q);
        return NULL;
    }
    q->ep.ops = &qx_ops;
    q->ep.align = 512;
    q->ep.caps = EP_CAP_ZERO | EP_CAP_ONE_WRITER | (q->backing ? EP_CAP_BACKING : 0);
    q->ep.writable = true;
    return &q->ep;
}
