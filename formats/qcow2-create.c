/* qcow2-create.c: the qcow2 writer (a new target image).
 *
 * The image is built in memory and on disk at once: guest data goes to the file as it
 * arrives, the mapping (L1/L2) and the refcounts stay in memory and are written at close.
 *
 *   file:  | header | data, compressed data (appended at eof) ... | L2 tables | L1 |
 *          | refcount blocks | refcount table |
 *
 * With preallocation the L2 tables and every data cluster are placed up front, in guest
 * order, right after the header.  Until close writes the final header (last, after an
 * fsync of everything else), cluster 0 holds a placeholder header with the "corrupt" bit
 * set, so a half-written image is never mistaken for a good one (nor for a raw file).
 *
 * Threads: pwrite and zero come from several threads on different ranges.  One mutex
 * guards the mapping, the allocation pointer and the refcounts; the data itself is
 * written outside it, so several threads write (and compress) concurrently.  Rare
 * read-modify-write cases (a part of a compressed cluster) run entirely under the lock.
 *
 * Never reusing host space keeps one invariant simple: a freshly allocated host cluster
 * reads as zeros (it is a hole in the file), so a partial write into it needs no fill.
 */
#include "endpoint.h"
#include "qcow2.h"
#include "util.h"
#include "writebehind.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>
#include <zstd.h>

/* Writer-side choices and limits (the on-disk constants are in qcow2.h). */
#define QW_L1_MAX_BYTES (32 * MI_MiB) /* qemu's limit on the L1 table */
#define QW_REFCOUNT_ORDER 4           /* 16-bit refcounts */
#define QW_RC_MAX 0xffffu
#define QW_COPIED QCOW2_OFLAG_COPIED
#define QW_COMPRESSED QCOW2_OFLAG_COMPRESSED
#define QW_ZERO QCOW2_OFLAG_ZERO
#define QW_OFFSET_MASK QCOW2_L2_OFFSET_MASK

/* In memory only (a reserved bit of the standard descriptor, cleared on disk): the host
 * cluster may hold non-zero bytes.  Clear for fresh and preallocated clusters. */
#define QW_MEM_DIRTY (1ull << 1)

#define QW_ZLIB_WBITS (-12) /* raw deflate with a 4 KiB window, as qcow2 readers expect */

/* A compression workspace: reused across clusters, one per concurrent caller. */
struct qw_ws {
    struct qw_ws *next;
    bool zs_ready;
    z_stream zs;
    ZSTD_CCtx *zc;
    uint8_t *in;  /* cluster-sized: the zero-padded last cluster */
    uint8_t *out; /* cluster-sized */
};

struct qw {
    struct ep ep;
    int fd;
    int version;          /* 2 or 3 */
    unsigned cluster_bits;
    uint64_t cs;          /* cluster size */
    uint32_t l2_entries;
    uint32_t l1_size;
    int ctype;            /* QCOW2_COMPRESS_* */
    bool compress;
    int prealloc;
    bool has_backing;
    char *backing_file;
    char *backing_format;
    unsigned csize_shift; /* compressed descriptor: x = 62 - (cluster_bits - 8) */
    uint64_t csize_mask;
    uint64_t coff_mask;
    bool flushed;         /* a successful flush since the last write (atomic) */
    int wb_fd;            /* write-behind for data clusters (writebehind.h), or -1 */

    pthread_mutex_t wlock;   /* one data write at a time (the kernel serializes them anyway) */

    pthread_mutex_t bk_lock; /* guards the opening of backing */
    struct ep *backing;      /* opened on the first read that needs it (verify) */

    pthread_mutex_t lock; /* guards everything below */
    uint64_t **l2;        /* l1_size slots; a table holds l2_entries entries + its host offset */
    uint64_t eof;         /* next free host offset, cluster aligned */
    uint16_t *rc;         /* refcount of each host cluster */
    uint64_t rc_len;      /* slots in rc */
    uint64_t cpos, cend;  /* compressed data: next free byte, end of the clusters taken */
    struct qw_ws *pool;   /* idle workspaces */

    /* persistent bitmaps to store at close (copy --bitmaps), and where they went */
    struct qw_bm { char *name; unsigned gbits; bool enabled; uint8_t *bits; } *bms;
    unsigned nbms;
    uint64_t bm_dir_off, bm_dir_size;
};

static const uint8_t zero_chunk[64 * 1024];

/* ---- allocation (all under q->lock) ---- */

/* Take n fresh clusters at the end of the file, refcounts 0; returns their offset. */
static int grow(struct qw *q, uint64_t n, uint64_t *host)
{
    uint64_t need = (q->eof >> q->cluster_bits) + n;
    if (q->eof + n * q->cs > QW_OFFSET_MASK)
        return mi_seterr(EFBIG, "%s: the image file would grow beyond 64 PiB", q->ep.name);
    if (need > q->rc_len) {
        uint64_t len = mi_max(need, q->rc_len * 2);
        uint16_t *rc = realloc(q->rc, len * sizeof *rc);
        if (!rc)
            return mi_seterr(ENOMEM, "%s: out of memory for refcounts", q->ep.name);
        memset(rc + q->rc_len, 0, (len - q->rc_len) * sizeof *rc);
        q->rc = rc;
        q->rc_len = len;
    }
    *host = q->eof;
    q->eof += n * q->cs;
    return 0;
}

/* Take n fresh clusters, each with refcount 1. */
static int alloc_clusters(struct qw *q, uint64_t n, uint64_t *host)
{
    int r = grow(q, n, host);
    for (uint64_t i = 0; r == 0 && i < n; i++)
        q->rc[(*host >> q->cluster_bits) + i] = 1;
    return r;
}

/* Where the L2 entry of guest cluster cl lives; with create, allocate its table (in
 * memory only: tables get host space at close).  *p = NULL when absent and !create. */
static int l2_entry(struct qw *q, uint64_t cl, bool create, uint64_t **p)
{
    uint64_t i = cl / q->l2_entries;
    if (!q->l2[i]) {
        *p = NULL;
        if (!create)
            return 0;
        q->l2[i] = calloc(q->l2_entries + 1, sizeof(uint64_t));
        if (!q->l2[i])
            return mi_seterr(ENOMEM, "%s: out of memory for L2 tables", q->ep.name);
    }
    *p = &q->l2[i][cl % q->l2_entries];
    return 0;
}

/* Change by delta the refcount of each host cluster a compressed descriptor touches. */
static void comp_ref(struct qw *q, uint64_t e, int delta)
{
    uint64_t off = e & q->coff_mask;
    uint64_t nsec = ((e >> q->csize_shift) & q->csize_mask) + 1;
    uint64_t end = (off & ~511ull) + nsec * 512;
    for (uint64_t c = off >> q->cluster_bits; c <= (end - 1) >> q->cluster_bits; c++)
        q->rc[c] = (uint16_t)(q->rc[c] + delta);
}

/* Place len bytes of compressed data, packed at byte granularity: after the previous
 * compressed cluster when that one ends at eof or leaves room, else at eof.  Returns
 * the descriptor (without bit 62) with the refcounts counted, or 0 when the offset does
 * not fit the descriptor (the caller then writes a standard cluster). */
static int comp_alloc(struct qw *q, uint64_t len, uint64_t *desc)
{
    uint64_t p = q->cpos, h;
    bool usable = p && (p < q->cend ? q->rc[p >> q->cluster_bits] < QW_RC_MAX
                                    : q->cend == q->eof);
    if (usable && p + len > q->cend && q->cend != q->eof)
        usable = false;
    if (!usable)
        p = q->cend = q->eof;
    if (p + len > q->cend) {
        uint64_t n = (mi_round_up(p + len, q->cs) - q->cend) >> q->cluster_bits;
        int r = grow(q, n, &h);
        if (r < 0)
            return r;
        q->cend = q->eof;
    }
    q->cpos = p + len;
    if (p > q->coff_mask) {
        *desc = 0;
        return 0;
    }
    uint64_t nsec = ((p + len - 1) >> 9) - (p >> 9);
    *desc = QW_COMPRESSED | nsec << q->csize_shift | p;
    comp_ref(q, *desc, +1);
    return 0;
}

/* ---- compression ---- */

static struct qw_ws *ws_get(struct qw *q)
{
    pthread_mutex_lock(&q->lock);
    struct qw_ws *w = q->pool;
    if (w)
        q->pool = w->next;
    pthread_mutex_unlock(&q->lock);
    if (w)
        return w;
    w = calloc(1, sizeof *w);
    if (!w || !(w->in = malloc(q->cs)) || !(w->out = malloc(q->cs))) {
        if (w)
            free(w->in);
        free(w);
        return NULL;
    }
    return w;
}

static void ws_put(struct qw *q, struct qw_ws *w)
{
    pthread_mutex_lock(&q->lock);
    w->next = q->pool;
    q->pool = w;
    pthread_mutex_unlock(&q->lock);
}

static void ws_free(struct qw_ws *w)
{
    if (w->zs_ready)
        deflateEnd(&w->zs);
    ZSTD_freeCCtx(w->zc);
    free(w->in);
    free(w->out);
    free(w);
}

/* Compress one full cluster into w->out.  Returns its length when smaller than a
 * cluster, 0 when it is not (store it as a standard cluster), or -errno. */
static int64_t compress_cluster(struct qw *q, struct qw_ws *w, const uint8_t *src)
{
    if (q->ctype == QCOW2_COMPRESS_ZSTD) {
        if (!w->zc && !(w->zc = ZSTD_createCCtx()))
            return -ENOMEM;
        size_t n = ZSTD_compressCCtx(w->zc, w->out, q->cs - 1, src, q->cs, ZSTD_CLEVEL_DEFAULT);
        return ZSTD_isError(n) ? 0 : (int64_t)n;
    }
    if (!w->zs_ready) {
        if (deflateInit2(&w->zs, Z_DEFAULT_COMPRESSION, Z_DEFLATED, QW_ZLIB_WBITS, 9,
                         Z_DEFAULT_STRATEGY) != Z_OK)
            return -ENOMEM;
        w->zs_ready = true;
    } else if (deflateReset(&w->zs) != Z_OK) {
        return -EIO;
    }
    w->zs.next_in = (Bytef *)src;
    w->zs.avail_in = (uInt)q->cs;
    w->zs.next_out = w->out;
    w->zs.avail_out = (uInt)(q->cs - 1);
    if (deflate(&w->zs, Z_FINISH) != Z_STREAM_END)
        return 0;
    return (int64_t)(q->cs - 1 - w->zs.avail_out);
}

/* Inflate one compressed cluster: in (len bytes, the descriptor's upper bound) into out
 * (cs bytes).  True when exactly cs bytes came out.  Shared with qcow2-rw.c. */
bool qcow2_inflate(int ctype, const uint8_t *in, size_t len, uint8_t *out, size_t cs)
{
    bool ok = false;
    if (ctype == QCOW2_COMPRESS_ZSTD) {
        size_t fl = ZSTD_findFrameCompressedSize(in, len);
        ok = !ZSTD_isError(fl) && ZSTD_decompress(out, cs, in, fl) == cs;
    } else {
        z_stream zs = {0};
        if (inflateInit2(&zs, -15) == Z_OK) {
            zs.next_in = (Bytef *)in;
            zs.avail_in = (uInt)len;
            zs.next_out = out;
            zs.avail_out = (uInt)cs;
            int zr = inflate(&zs, Z_FINISH);
            ok = (zr == Z_STREAM_END || zr == Z_BUF_ERROR) && zs.avail_out == 0;
            inflateEnd(&zs);
        }
    }
    return ok;
}

/* Read and inflate the compressed cluster e into out (cluster-sized). */
static int decompress_cluster(struct qw *q, uint64_t e, uint8_t *out)
{
    uint64_t off = e & q->coff_mask;
    uint64_t nsec = ((e >> q->csize_shift) & q->csize_mask) + 1;
    size_t len = nsec * 512 - (off & 511);
    uint8_t *in = malloc(len);
    if (!in)
        return mi_seterr(ENOMEM, "%s: out of memory", q->ep.name);
    int r = mi_pread_full(q->fd, in, len, off);
    if (r < 0) {
        free(in);
        return mi_seterr(-r, "%s: read error at host offset %llu: %s", q->ep.name,
                         (unsigned long long)off, strerror(-r));
    }
    bool ok = qcow2_inflate(q->ctype, in, len, out, q->cs);
    free(in);
    if (!ok)
        return mi_seterr(EIO, "%s: compressed cluster at host offset %llu does not decompress",
                         q->ep.name, (unsigned long long)off);
    return 0;
}

/* ---- writing ---- */

/* An allocated standard cluster (possibly zeroed with its allocation kept). */
static bool is_standard(uint64_t e)
{
    return !(e & QW_COMPRESSED) && (e & QW_OFFSET_MASK);
}

static bool is_full(struct qw *q, uint64_t off, uint64_t n)
{
    return (off & (q->cs - 1)) == 0 && (n == q->cs || off + n == q->ep.size);
}

static int write_err(struct qw *q, int e, uint64_t off, uint64_t host)
{
    return mi_seterr(-e, "%s: write error at offset %llu (host offset %llu): %s", q->ep.name,
                     (unsigned long long)off, (unsigned long long)host, strerror(-e));
}

/* Write zeros into host bytes [host, host+len) (rare paths: v2, parts of clusters). */
static int write_zeros(struct qw *q, uint64_t host, uint64_t len, uint64_t off)
{
    while (len) {
        uint64_t n = mi_min(len, sizeof zero_chunk);
        int r = mi_pwrite_full(q->fd, zero_chunk, n, host);
        if (r < 0)
            return write_err(q, r, off, host);
        host += n, off += n, len -= n;
    }
    return 0;
}

/* Rewrite the cluster whose entry is *p as a whole standard cluster: its current content
 * (compressed data, or zeros) with [a, a+n) replaced by data (zeros when data is NULL).
 * Under the lock: only for parts of compressed or zeroed-with-allocation clusters. */
static int rmw_cluster(struct qw *q, uint64_t *p, uint64_t off, const void *data,
                       uint64_t a, uint64_t n)
{
    uint64_t e = *p, h = e & QW_OFFSET_MASK;
    uint8_t *buf = calloc(1, q->cs);
    if (!buf)
        return mi_seterr(ENOMEM, "%s: out of memory", q->ep.name);
    int r = 0;
    if (e & QW_COMPRESSED) {
        r = decompress_cluster(q, e, buf);
        h = 0;
    }
    if (data)
        memcpy(buf + a, data, n);
    else
        memset(buf + a, 0, n);
    if (r == 0 && !h)
        r = alloc_clusters(q, 1, &h);
    if (r == 0 && (r = mi_pwrite_full(q->fd, buf, q->cs, h)) < 0)
        r = write_err(q, r, off, h);
    free(buf);
    if (r < 0)
        return r;
    if (e & QW_COMPRESSED)
        comp_ref(q, e, -1);
    *p = h | QW_COPIED | QW_MEM_DIRTY;
    return 0;
}

/* Under the lock: map as many leading clusters of [off, off+len) as fit one contiguous
 * host run, allocating where needed.  Returns the run's length with *host set, or, when
 * the first cluster needed a read-modify-write (done here), its length with *host = 0. */
static int64_t plan_run(struct qw *q, const uint8_t *buf, uint64_t off, uint64_t len,
                        uint64_t *host)
{
    uint64_t done = 0;
    *host = 0;
    while (done < len) {
        uint64_t o = off + done, a = o & (q->cs - 1), n = mi_min(len - done, q->cs - a);
        bool full = is_full(q, o, n);
        uint64_t *p, h;
        int r = l2_entry(q, o >> q->cluster_bits, true, &p);
        if (r < 0)
            return r;
        uint64_t e = *p;
        bool fresh = false;
        if (!full && ((e & QW_COMPRESSED) || ((e & QW_ZERO) && (e & QW_MEM_DIRTY)))) {
            if (done)
                break;
            r = rmw_cluster(q, p, o, buf, a, n);
            return r < 0 ? r : (int64_t)n;
        }
        if (is_standard(e)) {
            h = e & QW_OFFSET_MASK;
        } else {
            if (!full && !(e & (QW_ZERO | QW_COMPRESSED)) && q->has_backing) {
                if (done)
                    break;
                return mi_seterr(ENOTSUP, "%s: cannot write part of the cluster at offset "
                                 "%llu over the backing file (align writes to %llu)",
                                 q->ep.name, (unsigned long long)o,
                                 (unsigned long long)q->cs);
            }
            h = q->eof;
            fresh = true;
        }
        if (done && h + a != *host + done)
            break;
        if (fresh && (r = alloc_clusters(q, 1, &h)) < 0)
            return r;
        if (e & QW_COMPRESSED) /* replaced whole: its old data is no longer used */
            comp_ref(q, e, -1);
        *p = h | QW_COPIED | QW_MEM_DIRTY;
        if (!done)
            *host = h + a;
        done += n;
    }
    return (int64_t)done;
}

/* Write guest data to host [host, host+n): outside q->lock, so threads overlap their
 * reads and compression with it.  Buffered writes to one file serialize on its inode lock
 * in the kernel, where a waiting writer spins: wlock lets it sleep instead. */
static int write_data(struct qw *q, const void *buf, uint64_t n, uint64_t host)
{
    pthread_mutex_lock(&q->wlock);
    int r = mi_pwrite_full(q->fd, buf, n, host);
    pthread_mutex_unlock(&q->wlock);
    if (r == 0 && q->wb_fd >= 0)
        wb_after_write(q, q->wb_fd, host, n);
    return r;
}

static int write_plain(struct qw *q, const uint8_t *buf, uint64_t len, uint64_t off)
{
    while (len) {
        uint64_t host;
        pthread_mutex_lock(&q->lock);
        int64_t n = plan_run(q, buf, off, len, &host);
        pthread_mutex_unlock(&q->lock);
        if (n < 0)
            return (int)n;
        if (host) {
            int r = write_data(q, buf, (uint64_t)n, host);
            if (r < 0)
                return write_err(q, r, off, host);
        }
        buf += n, off += n, len -= n;
    }
    return 0;
}

/* One full cluster (or the last, partial one) with -c: stored compressed when that is
 * smaller, else as a standard cluster; a standard cluster already there is overwritten. */
static int write_compressed(struct qw *q, const uint8_t *buf, uint64_t n, uint64_t off)
{
    struct qw_ws *w = ws_get(q);
    if (!w)
        return mi_seterr(ENOMEM, "%s: out of memory", q->ep.name);
    const uint8_t *src = buf;
    if (n < q->cs) {
        memcpy(w->in, buf, n);
        memset(w->in + n, 0, q->cs - n);
        src = w->in;
    }
    int64_t clen = compress_cluster(q, w, src);
    if (clen < 0) {
        ws_put(q, w);
        return mi_seterr((int)-clen, "%s: cannot compress: %s", q->ep.name, strerror((int)-clen));
    }
    uint64_t *p, desc = 0;
    int r = 0;
    pthread_mutex_lock(&q->lock);
    if (clen > 0 && (r = l2_entry(q, off >> q->cluster_bits, true, &p)) == 0 &&
        !is_standard(*p) &&
        (r = comp_alloc(q, (uint64_t)clen, &desc)) == 0 && desc) {
        if (*p & QW_COMPRESSED)
            comp_ref(q, *p, -1);
        *p = desc;
    }
    pthread_mutex_unlock(&q->lock);
    if (r == 0 && desc) {
        uint64_t host = desc & q->coff_mask;
        if ((r = write_data(q, w->out, (uint64_t)clen, host)) < 0)
            r = write_err(q, r, off, host);
    } else if (r == 0) {
        r = write_plain(q, buf, n, off);
    }
    ws_put(q, w);
    return r;
}

static int check_range(struct qw *q, uint64_t off, uint64_t len)
{
    if (off > q->ep.size || len > q->ep.size - off)
        return mi_seterr(EINVAL, "%s: offset %llu, length %llu is beyond the end of the image",
                         q->ep.name, (unsigned long long)off, (unsigned long long)len);
    return 0;
}

static int qw_pwrite(struct ep *ep, const void *buf, uint64_t len, uint64_t off)
{
    struct qw *q = (struct qw *)ep;
    int r = check_range(q, off, len);
    if (r < 0)
        return r;
    __atomic_store_n(&q->flushed, false, __ATOMIC_RELAXED);
    if (!q->compress)
        return write_plain(q, buf, len, off);
    const uint8_t *b = buf;
    while (len) {
        uint64_t n = mi_min(len, q->cs - (off & (q->cs - 1)));
        r = is_full(q, off, n) ? write_compressed(q, b, n, off) : write_plain(q, b, n, off);
        if (r < 0)
            return r;
        b += n, off += n, len -= n;
    }
    return 0;
}

/* ---- zeroing (under the lock) ---- */

/* A whole cluster reads as zeros from now on. */
static int zero_full(struct qw *q, uint64_t *p, uint64_t off)
{
    uint64_t e = *p, h;
    if (e & QW_COMPRESSED) {
        comp_ref(q, e, -1);
        *p = e = 0;
    }
    if (e & QW_OFFSET_MASK) {
        if (q->version >= 3) {
            *p = e | QW_ZERO; /* zero cluster keeping its allocation */
        } else if (e & QW_MEM_DIRTY) {
            int r = write_zeros(q, e & QW_OFFSET_MASK, q->cs, off);
            if (r < 0)
                return r;
            *p = e & ~QW_MEM_DIRTY;
        }
        return 0;
    }
    if (!q->has_backing)
        return 0; /* unallocated reads as zeros */
    if (q->version >= 3) {
        *p = QW_ZERO;
        return 0;
    }
    int r = alloc_clusters(q, 1, &h); /* v2: a fresh cluster (a hole) reads as zeros */
    if (r == 0)
        *p = h | QW_COPIED;
    return r;
}

/* Bytes [a, a+n) of one cluster read as zeros from now on. */
static int zero_part(struct qw *q, uint64_t *p, uint64_t off, uint64_t a, uint64_t n)
{
    uint64_t e = *p;
    if (e & QW_COMPRESSED)
        return rmw_cluster(q, p, off, NULL, a, n);
    if (e & QW_OFFSET_MASK) {
        if ((e & QW_ZERO) || !(e & QW_MEM_DIRTY))
            return 0;
        return write_zeros(q, (e & QW_OFFSET_MASK) + a, n, off);
    }
    if ((e & QW_ZERO) || !q->has_backing)
        return 0;
    return mi_seterr(ENOTSUP, "%s: cannot zero part of the cluster at offset %llu over the "
                     "backing file (align to %llu)", q->ep.name, (unsigned long long)off,
                     (unsigned long long)q->cs);
}

static int qw_zero(struct ep *ep, uint64_t off, uint64_t len, unsigned flags)
{
    struct qw *q = (struct qw *)ep;
    (void)flags; /* zero clusters, unallocated ranges and written zeros all qualify */
    int r = check_range(q, off, len);
    if (r < 0)
        return r;
    __atomic_store_n(&q->flushed, false, __ATOMIC_RELAXED);
    uint64_t table_bytes = (uint64_t)q->l2_entries << q->cluster_bits, end = off + len;
    while (off < end && r == 0) {
        /* One L2 table's range per lock hold. */
        uint64_t stop = mi_min(end, mi_round_down(off, table_bytes) + table_bytes);
        pthread_mutex_lock(&q->lock);
        if (!q->has_backing && !q->l2[(off >> q->cluster_bits) / q->l2_entries])
            off = stop; /* nothing allocated there: it reads as zeros already */
        while (off < stop && r == 0) {
            uint64_t a = off & (q->cs - 1), n = mi_min(stop - off, q->cs - a);
            uint64_t *p;
            r = l2_entry(q, off >> q->cluster_bits, true, &p);
            if (r == 0)
                r = is_full(q, off, n) ? zero_full(q, p, off) : zero_part(q, p, off, a, n);
            off += n;
        }
        pthread_mutex_unlock(&q->lock);
    }
    return r;
}

/* ---- reading and block status ---- */

/* Read [off, off+n) of the backing file (zeros past its end), opening it the first
 * time; its name is relative to the directory of this image. */
static int backing_read(struct qw *q, uint8_t *b, uint64_t n, uint64_t off)
{
    pthread_mutex_lock(&q->bk_lock);
    if (!q->backing) {
        const char *slash = strrchr(q->ep.name, '/');
        char *path = NULL;
        if (q->backing_file[0] == '/' || !slash || ep_is_nbd_uri(q->backing_file))
            path = strdup(q->backing_file);
        else if (asprintf(&path, "%.*s/%s", (int)(slash - q->ep.name), q->ep.name,
                          q->backing_file) < 0)
            path = NULL;
        struct ep_open_opts o = {.format = q->backing_format};
        q->backing = path ? ep_open(path, &o, false) : NULL;
        if (!q->backing)
            mi_seterr(EIO, "%s: cannot open the backing file to read it: %s", q->ep.name,
                      path ? mi_lasterr() : "out of memory");
        free(path);
    }
    struct ep *bk = q->backing;
    pthread_mutex_unlock(&q->bk_lock);
    if (!bk)
        return -EIO;
    uint64_t m = off < bk->size ? mi_min(n, bk->size - off) : 0;
    memset(b + m, 0, n - m);
    return m ? bk->ops->pread(bk, b, m, off) : 0;
}

/* Copy of the entry of guest cluster cl (0 when its table is absent). */
static uint64_t get_entry(struct qw *q, uint64_t cl)
{
    uint64_t *p;
    pthread_mutex_lock(&q->lock);
    l2_entry(q, cl, false, &p);
    uint64_t e = p ? *p : 0;
    pthread_mutex_unlock(&q->lock);
    return e;
}

static int qw_pread(struct ep *ep, void *buf, uint64_t len, uint64_t off)
{
    struct qw *q = (struct qw *)ep;
    uint8_t *b = buf, *tmp = NULL;
    int r = check_range(q, off, len);
    while (r == 0 && len) {
        uint64_t a = off & (q->cs - 1), n = mi_min(len, q->cs - a);
        uint64_t e = get_entry(q, off >> q->cluster_bits);
        if (e & QW_COMPRESSED) {
            if (!tmp && !(tmp = malloc(q->cs))) {
                r = mi_seterr(ENOMEM, "%s: out of memory", ep->name);
                break;
            }
            if ((r = decompress_cluster(q, e, tmp)) == 0)
                memcpy(b, tmp + a, n);
        } else if ((e & QW_OFFSET_MASK) && !(e & QW_ZERO)) {
            if ((r = mi_pread_full(q->fd, b, n, (e & QW_OFFSET_MASK) + a)) < 0)
                r = mi_seterr(-r, "%s: read error at offset %llu: %s", ep->name,
                              (unsigned long long)off, strerror(-r));
        } else if ((e & QW_ZERO) || !q->has_backing) {
            memset(b, 0, n);
        } else {
            r = backing_read(q, b, n, off);
        }
        b += n, off += n, len -= n;
    }
    free(tmp);
    return r;
}

static int entry_kind(struct qw *q, uint64_t e, unsigned flags)
{
    if (e & QW_COMPRESSED)
        return EP_DATA;
    if (e & QW_ZERO)
        return EP_ZERO;
    if (e & QW_OFFSET_MASK)
        return EP_DATA;
    if (flags & EP_BS_TOP)
        return EP_UNALLOC;
    return q->has_backing ? EP_DATA : EP_ZERO;
}

static int qw_block_status(struct ep *ep, uint64_t off, uint64_t max, unsigned flags,
                           uint64_t *len, int *kind)
{
    struct qw *q = (struct qw *)ep;
    if (off >= q->ep.size || max == 0)
        return mi_seterr(EINVAL, "%s: block status at offset %llu is beyond the end of the "
                         "image", ep->name, (unsigned long long)off);
    max = mi_min(max, q->ep.size - off);
    uint64_t end = off + max, pos = off, budget = 1 << 16;
    pthread_mutex_lock(&q->lock);
    *kind = -1;
    while (pos < end && budget--) {
        uint64_t cl = pos >> q->cluster_bits, *p;
        l2_entry(q, cl, false, &p);
        uint64_t next = p ? (cl + 1) << q->cluster_bits
                          : (cl / q->l2_entries + 1) * q->l2_entries << q->cluster_bits;
        int k = entry_kind(q, p ? *p : 0, flags);
        if (*kind >= 0 && k != *kind)
            break;
        *kind = k;
        pos = mi_min(next, end);
    }
    pthread_mutex_unlock(&q->lock);
    *len = pos - off;
    return 0;
}

/* ---- flush, close, finalize ---- */

static int qw_flush(struct ep *ep)
{
    struct qw *q = (struct qw *)ep;
    if (fsync(q->fd) < 0)
        return mi_seterr(errno, "%s: flush failed: %s", ep->name, strerror(errno));
    __atomic_store_n(&q->flushed, true, __ATOMIC_RELAXED);
    return 0;
}

static int pwrite_meta(struct qw *q, const void *buf, size_t len, uint64_t host, const char *what)
{
    int r = mi_pwrite_full(q->fd, buf, len, host);
    if (r < 0)
        return mi_seterr(-r, "%s: cannot write the %s at offset %llu: %s", q->ep.name, what,
                         (unsigned long long)host, strerror(-r));
    return 0;
}

/* Give every touched L2 table and the L1 table host space, then write them. */
static int write_mapping(struct qw *q, uint64_t *l1_off)
{
    uint64_t h;
    int r = 0;
    for (uint32_t i = 0; i < q->l1_size && r == 0; i++)
        if (q->l2[i] && !q->l2[i][q->l2_entries] && (r = alloc_clusters(q, 1, &h)) == 0)
            q->l2[i][q->l2_entries] = h;
    uint64_t l1_bytes = mi_round_up((uint64_t)q->l1_size * 8, q->cs);
    *l1_off = 0;
    if (r == 0 && q->l1_size)
        r = alloc_clusters(q, l1_bytes >> q->cluster_bits, l1_off);
    uint8_t *buf = r == 0 ? calloc(1, mi_max(l1_bytes, q->cs)) : NULL;
    if (r == 0 && !buf)
        r = mi_seterr(ENOMEM, "%s: out of memory", q->ep.name);
    for (uint32_t i = 0; i < q->l1_size && r == 0; i++) {
        if (!q->l2[i])
            continue;
        for (uint32_t j = 0; j < q->l2_entries; j++) {
            uint64_t e = q->l2[i][j];
            mi_put_be64(buf + 8 * j, e & QW_COMPRESSED ? e : e & ~QW_MEM_DIRTY);
        }
        r = pwrite_meta(q, buf, q->cs, q->l2[i][q->l2_entries], "L2 table");
    }
    if (r == 0 && q->l1_size) {
        memset(buf, 0, l1_bytes);
        for (uint32_t i = 0; i < q->l1_size; i++)
            if (q->l2[i])
                mi_put_be64(buf + 8 * i, q->l2[i][q->l2_entries] | QW_COPIED);
        r = pwrite_meta(q, buf, l1_bytes, *l1_off, "L1 table");
    }
    free(buf);
    return r;
}

/* Place the refcount blocks and table after everything else, sized to count themselves
 * too, then write them. */
static int write_refcounts(struct qw *q, uint64_t *rt_off, uint32_t *rt_clusters)
{
    uint64_t per_block = q->cs * 8 >> QW_REFCOUNT_ORDER, used = q->eof >> q->cluster_bits;
    uint64_t nb = 0, nt = 0;
    for (;;) {
        uint64_t nb2 = (used + nb + nt + per_block - 1) / per_block;
        uint64_t nt2 = (nb2 * 8 + q->cs - 1) / q->cs;
        if (nb2 == nb && nt2 == nt)
            break;
        nb = nb2, nt = nt2;
    }
    if (nt > UINT32_MAX)
        return mi_seterr(EFBIG, "%s: refcount table too large", q->ep.name);
    uint64_t rb_off;
    int r = alloc_clusters(q, nb, &rb_off);
    if (r == 0)
        r = alloc_clusters(q, nt, rt_off);
    uint8_t *buf = r == 0 ? malloc(mi_max(nt * q->cs, q->cs)) : NULL;
    if (r == 0 && !buf)
        r = mi_seterr(ENOMEM, "%s: out of memory", q->ep.name);
    uint64_t total = q->eof >> q->cluster_bits;
    for (uint64_t b = 0; b < nb && r == 0; b++) {
        memset(buf, 0, q->cs);
        for (uint64_t i = 0; i < per_block && b * per_block + i < total; i++)
            mi_put_be16(buf + 2 * i, q->rc[b * per_block + i]);
        r = pwrite_meta(q, buf, q->cs, rb_off + b * q->cs, "refcount block");
    }
    if (r == 0) {
        memset(buf, 0, nt * q->cs);
        for (uint64_t b = 0; b < nb; b++)
            mi_put_be64(buf + 8 * b, rb_off + b * q->cs);
        r = pwrite_meta(q, buf, nt * q->cs, *rt_off, "refcount table");
    }
    free(buf);
    *rt_clusters = (uint32_t)nt;
    return r;
}

/* The header cluster: fields, extensions, backing file name.  final = false gives the
 * placeholder written at creation (marked corrupt until close replaces it). */
static void build_header(struct qw *q, uint8_t *h, bool final, uint64_t l1_off,
                         uint64_t rt_off, uint32_t rt_clusters)
{
    memset(h, 0, q->cs);
    mi_put_be32(h + QCOW2_HDR_MAGIC, QCOW2_MAGIC);
    int version = final ? q->version : 3;
    uint32_t hlen = version == 2 ? QCOW2_V2_HEADER_LEN
                  : q->ctype == QCOW2_COMPRESS_ZSTD ? QCOW2_V3_HEADER_LEN_COMP : QCOW2_V3_HEADER_LEN;
    mi_put_be32(h + QCOW2_HDR_VERSION, (uint32_t)version);
    mi_put_be32(h + QCOW2_HDR_CLUSTER_BITS, q->cluster_bits);
    mi_put_be64(h + QCOW2_HDR_SIZE, q->ep.size);
    if (final) {
        mi_put_be32(h + QCOW2_HDR_L1_SIZE, q->l1_size);
        mi_put_be64(h + QCOW2_HDR_L1_OFFSET, l1_off);
        mi_put_be64(h + QCOW2_HDR_REFTABLE_OFFSET, rt_off);
        mi_put_be32(h + QCOW2_HDR_REFTABLE_CLUSTERS, rt_clusters);
    }
    if (version >= 3) {
        uint64_t incompat = final ? 0 : QCOW2_INCOMPAT_CORRUPT;
        if (q->ctype == QCOW2_COMPRESS_ZSTD) {
            incompat |= QCOW2_INCOMPAT_COMPRESSION;
            h[QCOW2_HDR_COMPRESSION] = QCOW2_COMPRESS_ZSTD;
        }
        mi_put_be64(h + QCOW2_HDR_INCOMPAT, incompat);
        mi_put_be32(h + QCOW2_HDR_REFCOUNT_ORDER, QW_REFCOUNT_ORDER);
        mi_put_be32(h + QCOW2_HDR_LENGTH, hlen);
    }
    if (!final)
        return;
    uint8_t *x = h + hlen;
    if (q->backing_format) {
        size_t n = strlen(q->backing_format);
        mi_put_be32(x, QCOW2_EXT_BACKING_FORMAT);
        mi_put_be32(x + 4, (uint32_t)n);
        memcpy(x + 8, q->backing_format, n);
        x += 8 + mi_round_up(n, 8);
    }
    if (q->nbms) {
        mi_put_be64(h + QCOW2_HDR_AUTOCLEAR, QCOW2_AUTOCLEAR_BITMAPS);
        mi_put_be32(x, QCOW2_EXT_BITMAPS);
        mi_put_be32(x + 4, 24);
        mi_put_be32(x + 8, q->nbms);
        mi_put_be64(x + 16, q->bm_dir_size);
        mi_put_be64(x + 24, q->bm_dir_off);
        x += 32;
    }
    x += 8; /* end of the extensions: type 0, length 0 */
    if (q->backing_file) {
        size_t n = strlen(q->backing_file);
        memcpy(x, q->backing_file, n);
        mi_put_be64(h + QCOW2_HDR_BACKING_OFFSET, (uint64_t)(x - h));
        mi_put_be32(h + QCOW2_HDR_BACKING_SIZE, (uint32_t)n);
    }
}

/* Bytes the final header takes: it must fit the first cluster. */
static uint64_t header_bytes(int version, int ctype, const char *bfile, const char *bfmt)
{
    uint64_t n = version == 2 ? QCOW2_V2_HEADER_LEN
               : ctype == QCOW2_COMPRESS_ZSTD ? QCOW2_V3_HEADER_LEN_COMP : QCOW2_V3_HEADER_LEN;
    if (bfmt)
        n += 8 + mi_round_up(strlen(bfmt), 8);
    n += 8 + 32; /* the end, and room for a bitmaps extension */
    return n + (bfile ? strlen(bfile) : 0);
}

/* Bitmap b's data clusters (all-zero ones stay 0 in its table) and table; *table its
 * table's offset, *n its entries. */
static int write_bitmap(struct qw *q, const struct qw_bm *b, uint64_t *table, uint32_t *n)
{
    uint64_t bits = (q->ep.size + (1ULL << b->gbits) - 1) >> b->gbits, nbytes = (bits + 7) / 8;
    uint64_t nc = (nbytes + q->cs - 1) / q->cs, h;
    uint64_t *t = calloc(nc ? nc : 1, 8);
    uint8_t *c = malloc(q->cs);
    int r = t && c ? 0 : mi_seterr(ENOMEM, "%s: out of memory", q->ep.name);
    for (uint64_t i = 0; i < nc && r == 0; i++) {
        uint64_t len = mi_min(q->cs, nbytes - i * q->cs);
        if (mi_is_zero(b->bits + i * q->cs, len))
            continue;
        memset(c, 0, q->cs);
        memcpy(c, b->bits + i * q->cs, len);
        if ((r = alloc_clusters(q, 1, &h)) == 0 && (r = pwrite_meta(q, c, q->cs, h, "bitmap")) == 0)
            mi_put_be64(&t[i], h);
    }
    uint64_t tc = (nc * 8 + q->cs - 1) / q->cs;
    if (r == 0 && (r = alloc_clusters(q, tc ? tc : 1, table)) == 0)
        r = pwrite_meta(q, t, nc * 8, *table, "bitmap table");
    *n = (uint32_t)nc;
    free(t);
    free(c);
    return r;
}

/* The bitmaps, then their directory (named by the header's extension). */
static int write_bitmaps(struct qw *q)
{
    uint64_t size = 0;
    for (unsigned i = 0; i < q->nbms; i++)
        size += mi_round_up(24 + strlen(q->bms[i].name), 8);
    uint8_t *d = calloc(1, size ? size : 1);
    int r = d ? 0 : mi_seterr(ENOMEM, "%s: out of memory", q->ep.name);
    uint64_t pos = 0;
    for (unsigned i = 0; i < q->nbms && r == 0; i++) {
        const struct qw_bm *b = &q->bms[i];
        uint64_t table;
        uint32_t n;
        size_t nl = strlen(b->name);
        if ((r = write_bitmap(q, b, &table, &n)) < 0)
            break;
        mi_put_be64(d + pos, table);
        mi_put_be32(d + pos + 8, n);
        mi_put_be32(d + pos + 12, b->enabled ? 2 : 0); /* "auto": records writes */
        d[pos + 16] = 1;                               /* dirty tracking */
        d[pos + 17] = (uint8_t)b->gbits;
        mi_put_be16(d + pos + 18, (uint16_t)nl);
        memcpy(d + pos + 24, b->name, nl);
        pos += mi_round_up(24 + nl, 8);
    }
    uint64_t dc = (size + q->cs - 1) / q->cs;
    if (r == 0 && (r = alloc_clusters(q, dc, &q->bm_dir_off)) == 0)
        r = pwrite_meta(q, d, size, q->bm_dir_off, "bitmap directory");
    q->bm_dir_size = size;
    free(d);
    return r;
}

static int qw_add_bitmap(struct ep *ep, const struct ep_bitmap *b, const uint8_t *bits)
{
    struct qw *q = (struct qw *)ep;
    unsigned g = (unsigned)__builtin_ctzll(b->granularity);
    uint64_t nbytes = (((q->ep.size + b->granularity - 1) >> g) + 7) / 8;
    if (q->version < 3)
        return mi_seterr(ENOTSUP, "%s: bitmaps need a version 3 image (compat=1.1)", ep->name);
    if (q->nbms >= 65535 || strlen(b->name) > 1023 || g < 9 || g > 31 || !mi_is_pow2(b->granularity))
        return mi_seterr(EINVAL, "%s: bitmap '%s' cannot be stored", ep->name, b->name);
    struct qw_bm *a = realloc(q->bms, (q->nbms + 1) * sizeof *a);
    if (a)
        q->bms = a;
    uint8_t *copy = a ? malloc(nbytes ? nbytes : 1) : NULL;
    char *name = copy ? strdup(b->name) : NULL;
    if (!name) {
        free(copy);
        return mi_seterr(ENOMEM, "%s: out of memory", ep->name);
    }
    memcpy(copy, bits, nbytes);
    q->bms[q->nbms++] = (struct qw_bm){name, g, b->enabled, copy};
    return 0;
}

static int finalize(struct qw *q)
{
    uint64_t l1_off = 0, rt_off = 0;
    uint32_t rt_clusters = 0;
    int r = q->nbms ? write_bitmaps(q) : 0;
    if (r == 0)
        r = write_mapping(q, &l1_off);
    if (r == 0)
        r = write_refcounts(q, &rt_off, &rt_clusters);
    if (r == 0 && ftruncate(q->fd, (off_t)q->eof) < 0)
        r = mi_seterr(errno, "%s: cannot set the file size: %s", q->ep.name, strerror(errno));
    if (r == 0 && fsync(q->fd) < 0)
        r = mi_seterr(errno, "%s: flush failed: %s", q->ep.name, strerror(errno));
    if (r < 0)
        return r;
    uint8_t *h = malloc(q->cs);
    if (!h)
        return mi_seterr(ENOMEM, "%s: out of memory", q->ep.name);
    build_header(q, h, true, l1_off, rt_off, rt_clusters);
    /* The rest of the cluster is zeros already: write the used part (and at least the
     * placeholder's bytes), which keeps a 2 MiB header cluster sparse. */
    uint64_t used = header_bytes(q->version, q->ctype, q->backing_file, q->backing_format);
    used = mi_min(mi_round_up(mi_max(used, QCOW2_V3_HEADER_LEN_COMP), 4096), q->cs);
    r = pwrite_meta(q, h, used, 0, "header");
    free(h);
    if (r == 0 && fsync(q->fd) < 0)
        r = mi_seterr(errno, "%s: flush failed: %s", q->ep.name, strerror(errno));
    return r;
}

static void qw_free(struct qw *q)
{
    if (q->l2)
        for (uint32_t i = 0; i < q->l1_size; i++)
            free(q->l2[i]);
    free(q->l2);
    free(q->rc);
    for (unsigned i = 0; i < q->nbms; i++)
        free(q->bms[i].name), free(q->bms[i].bits);
    free(q->bms);
    while (q->pool) {
        struct qw_ws *w = q->pool;
        q->pool = w->next;
        ws_free(w);
    }
    ep_close(q->backing);
    if (q->wb_fd >= 0)
        close(q->wb_fd);
    pthread_mutex_destroy(&q->lock);
    pthread_mutex_destroy(&q->bk_lock);
    pthread_mutex_destroy(&q->wlock);
    free(q->backing_file);
    free(q->backing_format);
    free(q->ep.name);
    free(q);
}

/* After a successful flush: write the metadata and the header.  Otherwise the image is
 * being discarded: keep the placeholder header (marked corrupt) and free. */
static int qw_close(struct ep *ep)
{
    struct qw *q = (struct qw *)ep;
    int r = 0;
    if (__atomic_load_n(&q->flushed, __ATOMIC_RELAXED))
        r = finalize(q);
    if (close(q->fd) < 0 && r == 0)
        r = mi_seterr(errno, "%s: close failed: %s", ep->name, strerror(errno));
    qw_free(q);
    return r;
}

static int qw_info(struct ep *ep, struct ep_info *info)
{
    struct qw *q = (struct qw *)ep;
    info->cluster_size = (uint32_t)q->cs;
    info->version = q->version;
    if (q->backing_file)
        snprintf(info->backing_file, sizeof info->backing_file, "%s", q->backing_file);
    if (q->backing_format)
        snprintf(info->backing_format, sizeof info->backing_format, "%s", q->backing_format);
    return 0;
}

static const struct ep_ops qw_ops = {
    .name = "qcow2",
    .block_status = qw_block_status,
    .pread = qw_pread,
    .pwrite = qw_pwrite,
    .zero = qw_zero,
    .flush = qw_flush,
    .close = qw_close,
    .info = qw_info,
    .add_bitmap = qw_add_bitmap,
};

/* ---- creation ---- */

/* Check every option before the file is touched. */
static int validate(const char *name, const struct ep_create_opts *o, int version)
{
    uint32_t cs = o->cluster_size ? o->cluster_size : 65536;
    if (!mi_is_pow2(cs) || cs < 512 || cs > 2 * MI_MiB)
        return mi_seterr(EINVAL, "%s: invalid cluster size %u (a power of two from 512 "
                         "to 2M)", name, o->cluster_size);
    if (version != 2 && version != 3)
        return mi_seterr(EINVAL, "%s: invalid compat level %d (2 for 0.10, 3 for 1.1)",
                         name, o->compat);
    if (o->compression_type != QCOW2_COMPRESS_ZLIB && o->compression_type != QCOW2_COMPRESS_ZSTD)
        return mi_seterr(EINVAL, "%s: invalid compression type %d", name, o->compression_type);
    if (o->compression_type == QCOW2_COMPRESS_ZSTD && version == 2)
        return mi_seterr(EINVAL, "%s: compression_type=zstd needs compat=1.1", name);
    if (o->preallocation < EP_PREALLOC_OFF || o->preallocation > EP_PREALLOC_FULL)
        return mi_seterr(EINVAL, "%s: invalid preallocation mode %d", name, o->preallocation);
    if (o->preallocation != EP_PREALLOC_OFF && o->compress)
        return mi_seterr(EINVAL, "%s: compression and preallocation cannot be combined", name);
    if (o->preallocation != EP_PREALLOC_OFF && o->backing_file)
        return mi_seterr(EINVAL, "%s: preallocation cannot be combined with a backing file "
                         "(it would hide the backing data)", name);
    if (o->size % 512)
        return mi_seterr(EINVAL, "%s: virtual size %llu is not a multiple of 512", name,
                         (unsigned long long)o->size);
    if (o->backing_format && !o->backing_file)
        return mi_seterr(EINVAL, "%s: a backing format needs a backing file", name);
    if (o->backing_file && (!*o->backing_file || strlen(o->backing_file) > QCOW2_MAX_BACKING_NAME))
        return mi_seterr(EINVAL, "%s: backing file name must be 1 to %u bytes long", name,
                         QCOW2_MAX_BACKING_NAME);
    if (o->backing_format && (!*o->backing_format || strlen(o->backing_format) > 64))
        return mi_seterr(EINVAL, "%s: invalid backing format name", name);
    if (header_bytes(version, o->compression_type, o->backing_file, o->backing_format) > cs)
        return mi_seterr(EINVAL, "%s: the backing file name does not fit in the header "
                         "cluster of %u bytes (use a larger cluster size)", name, cs);
    uint64_t clusters = (o->size + cs - 1) / cs, per_l2 = cs / 8;
    if ((clusters + per_l2 - 1) / per_l2 * 8 > QW_L1_MAX_BYTES)
        return mi_seterr(EFBIG, "%s: virtual size %llu is too large for cluster size %u",
                         name, (unsigned long long)o->size, cs);
    return 0;
}

/* Preallocation: every L2 table, then every data cluster in guest order. */
static int preallocate(struct qw *q)
{
    uint64_t h, clusters = (q->ep.size + q->cs - 1) >> q->cluster_bits, data;
    int r = 0;
    for (uint32_t i = 0; i < q->l1_size && r == 0; i++) {
        uint64_t *p;
        if ((r = l2_entry(q, (uint64_t)i * q->l2_entries, true, &p)) == 0 &&
            (r = alloc_clusters(q, 1, &h)) == 0)
            q->l2[i][q->l2_entries] = h;
    }
    if (r == 0)
        r = alloc_clusters(q, clusters, &data);
    for (uint64_t c = 0; c < clusters && r == 0; c++)
        q->l2[c / q->l2_entries][c % q->l2_entries] = (data + (c << q->cluster_bits)) | QW_COPIED;
    if (r < 0)
        return r;
    if (ftruncate(q->fd, (off_t)q->eof) < 0)
        return mi_seterr(errno, "%s: cannot set the file size: %s", q->ep.name, strerror(errno));
    if (q->prealloc == EP_PREALLOC_FALLOC || q->prealloc == EP_PREALLOC_FULL) {
        int e = clusters ? posix_fallocate(q->fd, (off_t)data, (off_t)(clusters * q->cs)) : 0;
        if (e && (q->prealloc == EP_PREALLOC_FALLOC || e != EOPNOTSUPP))
            return mi_seterr(e, "%s: cannot preallocate %llu bytes: %s", q->ep.name,
                             (unsigned long long)(clusters * q->cs), strerror(e));
    }
    if (q->prealloc == EP_PREALLOC_FULL)
        return write_zeros(q, data, clusters * q->cs, 0);
    return 0;
}

static struct qw *qw_new(const char *name, const struct ep_create_opts *o, int version)
{
    struct qw *q = calloc(1, sizeof *q);
    if (!q)
        return NULL;
    q->fd = q->wb_fd = -1;
    pthread_mutex_init(&q->lock, NULL);
    pthread_mutex_init(&q->bk_lock, NULL);
    pthread_mutex_init(&q->wlock, NULL);
    q->ep.ops = &qw_ops;
    q->ep.size = o->size;
    q->ep.writable = true;
    q->version = version;
    q->cs = o->cluster_size ? o->cluster_size : 65536;
    q->cluster_bits = (unsigned)__builtin_ctzll(q->cs);
    q->ep.align = (uint32_t)q->cs;
    q->l2_entries = (uint32_t)(q->cs / 8);
    q->l1_size = (uint32_t)(((o->size + q->cs - 1) / q->cs + q->l2_entries - 1) / q->l2_entries);
    q->ctype = o->compression_type;
    q->compress = o->compress;
    q->prealloc = o->preallocation;
    q->has_backing = o->backing_file != NULL;
    q->csize_shift = 62 - (q->cluster_bits - 8);
    q->csize_mask = (1ull << (q->cluster_bits - 8)) - 1;
    q->coff_mask = (1ull << q->csize_shift) - 1;
    q->eof = q->cs; /* cluster 0: the header */
    /* Data writes serialize on wlock; with -c the writers compress first, in parallel. */
    q->ep.caps = EP_CAP_BLOCK_STATUS | EP_CAP_ZERO | (q->has_backing ? 0 : EP_CAP_IS_ZERO) |
                 (q->compress ? 0 : EP_CAP_ONE_WRITER);
    if (!(q->ep.name = strdup(name)) ||
        !(q->l2 = calloc(mi_max(q->l1_size, 1), sizeof *q->l2)) ||
        (o->backing_file && !(q->backing_file = strdup(o->backing_file))) ||
        (o->backing_format && !(q->backing_format = strdup(o->backing_format))) ||
        !(q->rc = calloc(q->rc_len = 64, sizeof *q->rc))) {
        qw_free(q);
        return NULL;
    }
    q->rc[0] = 1;
    return q;
}

struct ep *qcow2_create(const char *name, const struct ep_create_opts *opts)
{
    int version = opts->compat ? opts->compat : 3;
    if (validate(name, opts, version) < 0)
        return NULL;
    struct qw *q = qw_new(name, opts, version);
    if (!q) {
        mi_seterr(ENOMEM, "%s: out of memory", name);
        return NULL;
    }
    q->fd = open(name, O_RDWR | O_CREAT | O_CLOEXEC | (opts->force ? O_TRUNC : O_EXCL), 0644);
    if (q->fd < 0) {
        mi_seterr(errno, "%s: cannot create: %s", name, strerror(errno));
        qw_free(q);
        return NULL;
    }
    /* Compressed clusters share pages with their neighbours: dropping those pages would
     * make the next write read them back, so only whole-page data gets write-behind. */
    q->wb_fd = !q->compress && q->cs >= 4096 ? wb_open(q->fd) : -1;
    uint8_t *h = malloc(q->cs);
    int r = h ? 0 : mi_seterr(ENOMEM, "%s: out of memory", name);
    if (r == 0) {
        build_header(q, h, false, 0, 0, 0);
        r = pwrite_meta(q, h, QCOW2_V3_HEADER_LEN_COMP, 0, "header");
    }
    free(h);
    if (r == 0 && q->prealloc != EP_PREALLOC_OFF)
        r = preallocate(q);
    if (r < 0) {
        close(q->fd);
        unlink(name);
        qw_free(q);
        return NULL;
    }
    return &q->ep;
}
