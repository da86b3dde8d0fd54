/* qcow2.c: the qcow2 reader (v2 and v3), also the mapping engine of the libqcow backend.
 *
 * Open checks everything that can be checked before a target exists: the header, the
 * header extensions, the L1 table, and every allocated L2 table once (one pass in L1
 * order), so that a pointer beyond the end of the file or a reserved bit is refused by
 * name instead of read as zeros.  Reads then map guest ranges to runs of one kind:
 *
 *   guest offset --L1[off >> (cluster_bits + l2_bits)]--> L2 table (cached)
 *                --L2[...]--> {unallocated, zero, normal @host, compressed @host+csize}
 *
 * and runs of normal clusters that are contiguous in the host file become one pread.
 * Unallocated runs read from the backing image (a qcow2 or raw file, zeros past its end).
 *
 * L2 cache: a fixed set of slots (16 MiB in all), indexed by L1 index, evicted by the
 * clock algorithm.  Lookups and scans hold q->lock; a table is read from disk without it.
 * The slots live in one allocation whose pages are touched as they fill: tables replaced
 * one by one through malloc/free spread over the workers' malloc arenas, and an image
 * with more L2 tables than the cache held about twice the cache in memory.
 * The open-time pass fills the cache, so an image with up to 16 MiB of L2 tables reads
 * each table once.
 *
 * The same engine maps qcow version 1 images (their L2 tables need not be one cluster;
 * no zero flag) and, with struct qcow2_hooks from qcow.c, AES-encrypted images whose
 * data clusters libqcow decrypts.
 */
#include "qcow2-int.h"

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

/* One run of guest bytes of one kind, within one L2 table. */
struct run {
    enum qcow2_ctype type;
    uint64_t len;
    uint64_t host;  /* NORMAL: host offset of the first byte; COMPRESSED: descriptor offset */
    uint64_t csize; /* COMPRESSED */
};

static struct ep *open_chain(const char *name, const struct ep_open_opts *opts,
                             const struct qcow2_chain *parent, const struct qcow2_hooks *hooks);

/* ---------------------------------------------------------------- mapping */

static struct qcow2_l2dec decode_granule(const struct qcow2 *q, const uint64_t *t, uint64_t gi)
{
    if (q->version == 1)
        return qcow1_decode_l2(t[gi], q->cluster_bits);
    if (q->extl2) {
        uint64_t ci = gi >> 5;
        return qcow2_decode_l2_ext_df(t[2 * ci], t[2 * ci + 1], q->cluster_bits, gi & 31,
                                      q->data_file[0]);
    }
    return qcow2_decode_l2_df(t[gi], q->cluster_bits, q->version, q->data_file[0]);
}

static void to_host_order(uint64_t *t, size_t n)
{
    for (size_t i = 0; i < n; i++)
        t[i] = mi_be64(&t[i]);
}

int qcow2_read_l2_at(struct qcow2 *q, uint64_t off, uint64_t **out)
{
    uint64_t *t = malloc(q->l2_bytes);
    if (!t)
        return mi_seterr(ENOMEM, "%s: out of memory", q->ep.name);
    int e = mi_pread_full(q->fd, t, q->l2_bytes, off);
    if (e < 0) {
        free(t);
        return mi_seterr(-e, "%s: cannot read the L2 table at 0x%llx: %s", q->ep.name,
                         (unsigned long long)off, strerror(-e));
    }
    to_host_order(t, q->l2_bytes / 8);
    *out = t;
    return 0;
}

static int read_l2(struct qcow2 *q, uint32_t l1i, uint64_t **out)
{
    uint64_t off = q->version == 1 ? q->l1[l1i] : q->l1[l1i] & QCOW2_L1_OFFSET_MASK;
    return qcow2_read_l2_at(q, off, out);
}

/* Copy table t for L1 index l1i into the cache (lock held); t stays the caller's.  With
 * evict false, only when a slot is free (returns false otherwise). */
static bool cache_put(struct qcow2 *q, uint32_t l1i, const uint64_t *t, bool evict)
{
    uint32_t s;
    if (q->nused < q->nslots) {
        s = q->nused++;
    } else {
        if (!evict)
            return false;
        while (q->slots[q->hand].ref) {
            q->slots[q->hand].ref = false;
            q->hand = (q->hand + 1) % q->nslots;
        }
        s = q->hand;
        q->hand = (q->hand + 1) % q->nslots;
        q->slot_of[q->slots[s].l1i] = -1;
    }
    uint64_t *slot = q->slab + (size_t)s * (q->l2_bytes / 8);
    memcpy(slot, t, q->l2_bytes);
    q->slots[s] = (struct l2slot){slot, l1i, true};
    q->slot_of[l1i] = (int32_t)s;
    return true;
}

/* The L2 table of L1 index l1i, with q->lock held (it is dropped while reading). */
static int get_l2(struct qcow2 *q, uint32_t l1i, const uint64_t **out)
{
    int32_t s = q->slot_of[l1i];
    if (s < 0 && q->live) /* every table is held: the L1 entry changed under us */
        return mi_seterr(EAGAIN, "%s: L2 table %u not loaded", q->ep.name, l1i);
    if (s < 0) {
        uint64_t *t;
        pthread_mutex_unlock(&q->lock);
        int e = read_l2(q, l1i, &t);
        pthread_mutex_lock(&q->lock);
        if (e < 0)
            return e;
        s = q->slot_of[l1i];
        if (s < 0) { /* else another thread was faster */
            cache_put(q, l1i, t, true);
            s = q->slot_of[l1i];
        }
        free(t);
    }
    q->slots[s].ref = true;
    *out = q->slots[s].t;
    return 0;
}

/* What block status makes of a cluster type: data (normal or compressed), zero,
 * unallocated; invalid never merges with anything. */
static int status_class(enum qcow2_ctype t)
{
    return t == QCOW2_C_COMPRESSED ? QCOW2_C_NORMAL : (int)t;
}

/* The run that starts at guest offset off, at most max bytes, within one L2 table.  For
 * reading (status false) a run is one compressed cluster or clusters of one type, normal
 * ones contiguous in the host file; for status, clusters of one status_class(). */
static int map_run(struct qcow2 *q, uint64_t off, uint64_t max, bool status, struct run *r)
{
    unsigned tbits = q->cluster_bits + q->l2_bits;
    uint64_t l1i = off >> tbits, tstart = l1i << tbits;
    max = mi_min(max, tstart + (1ULL << tbits) - off);
    pthread_mutex_lock(&q->lock); /* live mode changes the L1 table under it */
    uint64_t l2off = l1i < q->l1_used ? q->l1[l1i] : 0;
    if (q->version != 1)
        l2off &= QCOW2_L1_OFFSET_MASK;
    if (!l2off) {
        pthread_mutex_unlock(&q->lock);
        *r = (struct run){QCOW2_C_UNALLOC, max, 0, 0};
        return 0;
    }
    const uint64_t *t = NULL;
    int e = get_l2(q, (uint32_t)l1i, &t);
    if (e < 0) {
        pthread_mutex_unlock(&q->lock);
        return e;
    }
    uint64_t gsize = 1ULL << q->g_bits, gi = (off - tstart) >> q->g_bits;
    uint64_t ngran = (1ULL << tbits) >> q->g_bits;
    struct qcow2_l2dec d0 = decode_granule(q, t, gi);
    uint64_t len = gsize - (off & (gsize - 1));
    if (d0.type == QCOW2_C_COMPRESSED && !status) {
        len = q->cluster_size - (off & (q->cluster_size - 1));
    } else if (d0.type == QCOW2_C_UNALLOC && !q->extl2) {
        /* A sparse image is mostly entries of 0 (unallocated in every version): skip
         * them without decoding (a 256 GiB image with 1 GiB of data has 4 M of them). */
        for (gi++; len < max && gi < ngran && t[gi] == 0; gi++)
            len += gsize;
        for (; len < max && gi < ngran; gi++) {
            struct qcow2_l2dec d = decode_granule(q, t, gi);
            bool same = (status ? status_class(d.type) : (int)d.type) == QCOW2_C_UNALLOC;
            if (!same)
                break;
            len += gsize;
        }
    } else if (d0.type != QCOW2_C_INVALID) {
        uint64_t next = d0.host + gsize;
        for (gi++; len < max && gi < ngran; gi++) {
            struct qcow2_l2dec d = decode_granule(q, t, gi);
            bool same = status ? status_class(d.type) == status_class(d0.type)
                               : d.type == d0.type && (d.type != QCOW2_C_NORMAL || d.host == next);
            if (!same)
                break;
            len += gsize;
            next += gsize;
        }
    }
    pthread_mutex_unlock(&q->lock);
    if (d0.type == QCOW2_C_INVALID)
        return mi_seterr(EIO, "%s: invalid L2 entry for guest offset 0x%llx", q->ep.name,
                         (unsigned long long)off);
    r->type = d0.type;
    r->len = mi_min(len, max);
    r->host = d0.type == QCOW2_C_NORMAL ? d0.host + (off & (gsize - 1)) : d0.host;
    r->csize = d0.csize;
    return 0;
}

/* ---------------------------------------------------------------- reading */

/* Decompression state for one pread: the zlib stream is set up once and reset for each
 * cluster (inflateInit allocates a 32 KiB window every time). */
struct zbuf {
    uint8_t *in, *out;
    ZSTD_DCtx *zd;
    z_stream zs;
    bool zs_ready;
};

static int bad_compressed(struct qcow2 *q, const struct run *r, uint64_t guest, const char *why)
{
    return mi_seterr(EIO, "%s: compressed cluster at host offset 0x%llx (guest offset 0x%llx) "
                     "%s", q->ep.name, (unsigned long long)r->host,
                     (unsigned long long)guest, why);
}

static int inflate_zlib(struct qcow2 *q, struct zbuf *z, size_t n, uint8_t *out,
                        const struct run *r, uint64_t guest)
{
    z_stream *s = &z->zs;
    if (!z->zs_ready) {
        memset(s, 0, sizeof *s);
        if (inflateInit2(s, -15) != Z_OK)
            return mi_seterr(ENOMEM, "%s: cannot initialize zlib", q->ep.name);
        z->zs_ready = true;
    } else if (inflateReset(s) != Z_OK) {
        return mi_seterr(EIO, "%s: cannot reset zlib", q->ep.name);
    }
    s->next_in = z->in;
    s->avail_in = (uInt)n;
    s->next_out = out;
    s->avail_out = (uInt)q->cluster_size;
    int ret = inflate(s, Z_FINISH);
    if (ret != Z_STREAM_END && s->avail_out == 0 && (ret == Z_OK || ret == Z_BUF_ERROR)) {
        /* the output is full: the stream must end here, without one more byte */
        unsigned char extra;
        s->next_out = &extra;
        s->avail_out = 1;
        ret = inflate(s, Z_FINISH);
        if (s->avail_out == 0)
            ret = Z_DATA_ERROR;
    }
    bool ok = ret == Z_STREAM_END && s->total_out == q->cluster_size;
    return ok ? 0 : bad_compressed(q, r, guest, "does not inflate to exactly one cluster");
}

static int inflate_zstd(struct qcow2 *q, struct zbuf *z, size_t n, uint8_t *out,
                        const struct run *r, uint64_t guest)
{
    if (!z->zd && !(z->zd = ZSTD_createDCtx()))
        return mi_seterr(ENOMEM, "%s: cannot initialize zstd", q->ep.name);
    size_t fsz = ZSTD_findFrameCompressedSize(z->in, n);
    if (ZSTD_isError(fsz))
        return bad_compressed(q, r, guest, "holds no complete zstd frame");
    size_t got = ZSTD_decompressDCtx(z->zd, out, q->cluster_size, z->in, fsz);
    if (ZSTD_isError(got) || got != q->cluster_size)
        return bad_compressed(q, r, guest, "does not inflate to exactly one cluster");
    return 0;
}

/* Read guest bytes [off, off + r->len) of a compressed cluster into buf: straight into
 * buf when that is the whole cluster, else through a bounce buffer. */
static int read_compressed(struct qcow2 *q, struct zbuf *z, void *buf, uint64_t off,
                           const struct run *r)
{
    uint64_t cstart = mi_round_down(off, q->cluster_size);
    bool whole = off == cstart && r->len == q->cluster_size;
    if (!z->in && !(z->in = malloc(2 * q->cluster_size + 512)))
        return mi_seterr(ENOMEM, "%s: out of memory", q->ep.name);
    if (!whole && !z->out && !(z->out = malloc(q->cluster_size)))
        return mi_seterr(ENOMEM, "%s: out of memory", q->ep.name);
    size_t n = (size_t)mi_min(r->csize, 2 * q->cluster_size + 512);
    int e = mi_pread_full(q->fd, z->in, n, r->host);
    if (e < 0)
        return mi_seterr(-e, "%s: read error at offset %llu: %s", q->ep.name,
                         (unsigned long long)r->host, strerror(-e));
    uint8_t *out = whole ? buf : z->out;
    e = q->compression == QCOW2_COMPRESS_ZSTD ? inflate_zstd(q, z, n, out, r, cstart)
                                              : inflate_zlib(q, z, n, out, r, cstart);
    if (e < 0)
        return e;
    if (!whole)
        memcpy(buf, z->out + (off - cstart), r->len);
    return 0;
}

static int read_data(struct qcow2 *q, void *buf, uint64_t off, const struct run *r)
{
    if (q->has_hooks)
        return q->hooks.read(q->hooks.opaque, buf, r->len, off);
    int e = mi_pread_full(q->data_fd, buf, r->len, r->host);
    if (e < 0)
        return mi_seterr(-e, "%s: read error at host offset %llu, length %llu: %s", q->ep.name,
                         (unsigned long long)r->host, (unsigned long long)r->len, strerror(-e));
    return 0;
}

static int read_backing(struct qcow2 *q, uint8_t *buf, uint64_t len, uint64_t off)
{
    uint64_t n = 0;
    if (q->backing && off < q->backing->size) {
        n = mi_min(len, q->backing->size - off);
        int e = q->backing->ops->pread(q->backing, buf, n, off);
        if (e < 0)
            return e;
    }
    memset(buf + n, 0, len - n);
    return 0;
}

static int q2_pread(struct ep *ep, void *vbuf, uint64_t len, uint64_t off)
{
    struct qcow2 *q = (struct qcow2 *)ep;
    uint8_t *buf = vbuf;
    struct zbuf z = {0};
    int e = 0;
    while (len && e == 0) {
        struct run r;
        if ((e = map_run(q, off, len, false, &r)) < 0)
            break;
        switch (r.type) {
        case QCOW2_C_NORMAL:
            e = read_data(q, buf, off, &r);
            break;
        case QCOW2_C_COMPRESSED:
            e = q->has_hooks ? read_data(q, buf, off, &r) : read_compressed(q, &z, buf, off, &r);
            break;
        case QCOW2_C_ZERO:
            memset(buf, 0, r.len);
            break;
        default:
            e = read_backing(q, buf, r.len, off);
            break;
        }
        buf += r.len, off += r.len, len -= r.len;
    }
    free(z.in);
    free(z.out);
    ZSTD_freeDCtx(z.zd);
    if (z.zs_ready)
        inflateEnd(&z.zs);
    return e;
}

/* One piece of block status from off: one run of this layer, or of the backing. */
static int bs_piece(struct qcow2 *q, uint64_t off, uint64_t max, unsigned flags,
                    uint64_t *len, int *kind)
{
    struct run r;
    int e = map_run(q, off, max, true, &r);
    if (e < 0)
        return e;
    *len = r.len;
    switch (r.type) {
    case QCOW2_C_NORMAL:
    case QCOW2_C_COMPRESSED:
        *kind = EP_DATA;
        return 0;
    case QCOW2_C_ZERO:
        *kind = EP_ZERO;
        return 0;
    default:
        break;
    }
    if (flags & EP_BS_TOP)
        *kind = EP_UNALLOC;
    else if (q->backing && off < q->backing->size)
        return q->backing->ops->block_status(q->backing, off,
                                             mi_min(r.len, q->backing->size - off), 0, len, kind);
    else if (!q->backing && q->has_backing)
        *kind = EP_DATA; /* opened without its chain: unknown, so data is the safe answer */
    else
        *kind = EP_ZERO;
    return 0;
}

static int q2_block_status(struct ep *ep, uint64_t off, uint64_t max, unsigned flags,
                           uint64_t *len, int *kind)
{
    struct qcow2 *q = (struct qcow2 *)ep;
    uint64_t total = 0;
    int k0 = -1;
    max = mi_min(max, ep->size - off);
    while (total < max) {
        uint64_t n;
        int k;
        int e = bs_piece(q, off + total, max - total, flags, &n, &k);
        if (e < 0)
            return e;
        if (k0 >= 0 && k != k0)
            break;
        k0 = k;
        total += n;
    }
    *len = total;
    *kind = k0 < 0 ? EP_DATA : k0;
    return 0;
}

/* ---------------------------------------------------------------- info, close */

static void add_feature(char *s, size_t size, const char *f)
{
    size_t n = strlen(s);
    snprintf(s + n, size - n, "%s%s", n ? "," : "", f);
}

static int q2_info(struct ep *ep, struct ep_info *info)
{
    struct qcow2 *q = (struct qcow2 *)ep;
    char *f = info->features;
    size_t fs = sizeof info->features;
    info->format = q->version == 1 ? "qcow" : "qcow2";
    info->cluster_size = (uint32_t)q->cluster_size;
    info->version = q->version;
    f[0] = '\0';
    if (q->compat & QCOW2_COMPAT_LAZY_REFCOUNTS)
        add_feature(f, fs, "lazy_refcounts");
    if (q->extl2)
        add_feature(f, fs, "extended_l2");
    if (q->incompat & QCOW2_INCOMPAT_DIRTY)
        add_feature(f, fs, "dirty");
    if (q->incompat & QCOW2_INCOMPAT_CORRUPT)
        add_feature(f, fs, "corrupt");
    if (q->incompat & QCOW2_INCOMPAT_DATA_FILE)
        add_feature(f, fs, "external_data_file");
    if (q->compression == QCOW2_COMPRESS_ZSTD)
        add_feature(f, fs, "compression=zstd");
    if (q->crypt == QCOW2_CRYPT_AES)
        add_feature(f, fs, "encryption=aes");
    if (q->version >= 2 && q->refcount_order != 4) {
        char b[32];
        snprintf(b, sizeof b, "refcount_bits=%u", 1u << q->refcount_order);
        add_feature(f, fs, b);
    }
    if (q->nb_snapshots) {
        char b[32];
        snprintf(b, sizeof b, "snapshots=%u", q->nb_snapshots);
        add_feature(f, fs, b);
    }
    snprintf(info->backing_file, sizeof info->backing_file, "%s", q->backing_name);
    snprintf(info->backing_format, sizeof info->backing_format, "%s",
             q->backing_fmt[0] ? q->backing_fmt
             : q->backing ? ep_format(q->backing) : q->backing_probed);
    snprintf(info->backing_path, sizeof info->backing_path, "%s", q->backing_path);
    return 0;
}

static void q2_free(struct qcow2 *q)
{
    qcow2_live_free(q);
    free(q->slab);
    free(q->slots);
    free(q->slot_of);
    free(q->l1);
    ep_close(q->backing);
    if (q->has_hooks && q->hooks.free)
        q->hooks.free(q->hooks.opaque);
    if (q->data_fd >= 0 && q->data_fd != q->fd)
        close(q->data_fd);
    if (q->fd >= 0)
        close(q->fd);
    pthread_mutex_destroy(&q->lock);
    free(q->ep.name);
    free(q);
}

static int q2_close(struct ep *ep)
{
    q2_free((struct qcow2 *)ep);
    return 0;
}

/* Normal clusters are plain bytes of the image (or data) file; unallocated ones are the
 * backing file's, where it has them. */
static int q2_extent(struct ep *ep, uint64_t off, uint64_t max, int *fd, uint64_t *host,
                     uint64_t *len)
{
    struct qcow2 *q = (struct qcow2 *)ep;
    struct run r;
    if (q->has_hooks || q->crypt || off >= q->size || map_run(q, off, mi_min(max, q->size - off),
                                                              false, &r) < 0)
        return -ENOTSUP;
    if (r.type == QCOW2_C_NORMAL) {
        *fd = q->data_fd, *host = r.host, *len = r.len;
        return 0;
    }
    struct ep *b = q->backing;
    if (r.type != QCOW2_C_UNALLOC || !b || !b->ops->extent || off >= b->size)
        return -ENOTSUP;
    return b->ops->extent(b, off, mi_min(r.len, b->size - off), fd, host, len);
}

static const struct ep_ops qcow2_ops = {
    .name = "qcow2",
    .block_status = q2_block_status,
    .pread = q2_pread,
    .pwrite = ep_write_readonly,
    .zero = ep_zero_by_write,
    .flush = ep_flush_noop,
    .close = q2_close,
    .info = q2_info,
    .refresh = qcow2_live_refresh,
    .extent = q2_extent,
    .bitmaps = qcow2_bitmaps,
    .dirty = qcow2_dirty,
};


/* ---------------------------------------------------------------- open: header */

#define FAIL(...) (mi_seterr(EINVAL, __VA_ARGS__))

/* Header extensions: between the header and the backing file name (or the end of the
 * header cluster). */
static int parse_extensions(struct qcow2 *q, const uint8_t *h, uint64_t start, uint64_t end)
{
    const char *nm = q->ep.name;
    uint64_t off = start;
    while (off < end) {
        if (end - off < 8)
            return FAIL("%s: header extension at offset %llu overruns the header", nm,
                        (unsigned long long)off);
        uint32_t type = mi_be32(h + off), len = mi_be32(h + off + 4);
        if (type == QCOW2_EXT_END)
            return 0;
        if (len > end - off - 8)
            return FAIL("%s: header extension 0x%08x at offset %llu (length %u) overruns "
                        "the header", nm, type, (unsigned long long)off, len);
        const uint8_t *d = h + off + 8;
        if (type == QCOW2_EXT_BACKING_FORMAT) {
            if (len >= sizeof q->backing_fmt)
                return FAIL("%s: backing format name is too long (%u bytes)", nm, len);
            memcpy(q->backing_fmt, d, len);
            q->backing_fmt[len] = '\0';
        } else if (type == QCOW2_EXT_DATA_FILE) {
            if (len > QCOW2_MAX_BACKING_NAME)
                return FAIL("%s: external data file name is too long (%u bytes)", nm, len);
            memcpy(q->data_file, d, len);
            q->data_file[len] = '\0';
        } else if (type == QCOW2_EXT_BITMAPS) { /* checked when a bitmap is asked for */
            if (len < 24)
                return FAIL("%s: the bitmaps extension is %u bytes long (24 expected)", nm, len);
            q->bm_nb = mi_be32(d);
            q->bm_dir_size = mi_be64(d + 8);
            q->bm_dir_off = mi_be64(d + 16);
        }
        off += 8 + mi_round_up(len, 8);
    }
    return 0;
}

static int check_header_v23(struct qcow2 *q, const uint8_t *h, uint64_t hdr_len)
{
    const char *nm = q->ep.name;
    if (q->version == 3) {
        uint64_t unknown = q->incompat & ~QCOW2_INCOMPAT_KNOWN;
        if (unknown)
            return FAIL("%s: unknown incompatible feature bit %d", nm, __builtin_ctzll(unknown));
        q->refcount_order = mi_be32(h + QCOW2_HDR_REFCOUNT_ORDER);
        if (q->refcount_order > QCOW2_MAX_REFCOUNT_ORDER)
            return FAIL("%s: refcount_order %u is invalid (at most %d)", nm, q->refcount_order,
                        QCOW2_MAX_REFCOUNT_ORDER);
        q->extl2 = q->incompat & QCOW2_INCOMPAT_EXTL2;
        if (q->extl2 && q->cluster_bits < QCOW2_MIN_CLUSTER_BITS_EXTL2)
            return FAIL("%s: extended L2 entries need a cluster size of at least 16 KiB "
                        "(cluster_bits is %u)", nm, q->cluster_bits);
        unsigned ct = hdr_len > QCOW2_HDR_COMPRESSION ? h[QCOW2_HDR_COMPRESSION] : 0;
        if (ct > QCOW2_COMPRESS_ZSTD)
            return FAIL("%s: unknown compression type %u", nm, ct);
        if (!ct != !(q->incompat & QCOW2_INCOMPAT_COMPRESSION))
            return FAIL("%s: the compression type (%u) and the compression type feature bit "
                        "disagree", nm, ct);
        q->compression = (int)ct;
    } else {
        q->refcount_order = 4;
    }
    switch (q->crypt) {
    case QCOW2_CRYPT_NONE:
        break;
    case QCOW2_CRYPT_AES:
        if (!q->has_hooks)
            return FAIL("%s: image is encrypted (AES); give --password-file", nm);
        break;
    case QCOW2_CRYPT_LUKS:
        return FAIL("%s: LUKS encryption is not supported", nm);
    default:
        return FAIL("%s: unknown encryption method %u", nm, q->crypt);
    }
    if ((q->incompat & QCOW2_INCOMPAT_DATA_FILE) && q->has_hooks)
        return FAIL("%s: an encrypted image with an external data file is not supported", nm);
    return 0;
}

static int read_backing_name(struct qcow2 *q, uint64_t boff, uint32_t blen)
{
    const char *nm = q->ep.name;
    if (!boff)
        return 0;
    if (blen > QCOW2_MAX_BACKING_NAME)
        return FAIL("%s: backing file name is %u bytes long (at most %d)", nm, blen,
                    QCOW2_MAX_BACKING_NAME);
    if (boff > q->file_size || blen > q->file_size - boff)
        return FAIL("%s: backing file name at 0x%llx lies beyond the end of the file", nm,
                    (unsigned long long)boff);
    if (!blen)
        return 0;
    int e = mi_pread_full(q->fd, q->backing_name, blen, boff);
    if (e < 0)
        return mi_seterr(-e, "%s: cannot read the backing file name: %s", nm, strerror(-e));
    q->backing_name[blen] = '\0';
    if (strlen(q->backing_name) != blen)
        return FAIL("%s: backing file name contains a NUL byte", nm);
    q->has_backing = true;
    return 0;
}

static int parse_v23(struct qcow2 *q)
{
    const char *nm = q->ep.name;
    uint8_t h0[QCOW2_V3_HEADER_LEN];
    if (q->file_size < QCOW2_V2_HEADER_LEN)
        return FAIL("%s: truncated header (%llu bytes)", nm, (unsigned long long)q->file_size);
    int e = mi_pread_full(q->fd, h0, sizeof h0, 0);
    if (e < 0)
        return mi_seterr(-e, "%s: cannot read the header: %s", nm, strerror(-e));
    q->cluster_bits = mi_be32(h0 + QCOW2_HDR_CLUSTER_BITS);
    if (q->cluster_bits < QCOW2_MIN_CLUSTER_BITS || q->cluster_bits > QCOW2_MAX_CLUSTER_BITS)
        return FAIL("%s: cluster_bits %u is out of range (%d..%d)", nm, q->cluster_bits,
                    QCOW2_MIN_CLUSTER_BITS, QCOW2_MAX_CLUSTER_BITS);
    q->cluster_size = 1ULL << q->cluster_bits;
    uint64_t hdr_len = QCOW2_V2_HEADER_LEN;
    if (q->version == 3) {
        if (q->file_size < QCOW2_V3_HEADER_LEN)
            return FAIL("%s: truncated header (%llu bytes)", nm,
                        (unsigned long long)q->file_size);
        hdr_len = mi_be32(h0 + QCOW2_HDR_LENGTH);
        if (hdr_len < QCOW2_V3_HEADER_LEN || hdr_len % 8 || hdr_len > q->cluster_size ||
            hdr_len > q->file_size)
            return FAIL("%s: header length %llu is invalid", nm, (unsigned long long)hdr_len);
        q->incompat = mi_be64(h0 + QCOW2_HDR_INCOMPAT);
        q->compat = mi_be64(h0 + QCOW2_HDR_COMPAT);
        q->autoclear = mi_be64(h0 + QCOW2_HDR_AUTOCLEAR);
    }
    /* The whole header cluster, as far as the file goes. */
    uint64_t hsz = mi_min(q->cluster_size, q->file_size);
    uint8_t *h = malloc(hsz);
    if (!h)
        return mi_seterr(ENOMEM, "%s: out of memory", nm);
    if ((e = mi_pread_full(q->fd, h, hsz, 0)) < 0) {
        free(h);
        return mi_seterr(-e, "%s: cannot read the header: %s", nm, strerror(-e));
    }
    q->crypt = mi_be32(h + QCOW2_HDR_CRYPT_METHOD);
    q->size = mi_be64(h + QCOW2_HDR_SIZE);
    q->l1_size = mi_be32(h + QCOW2_HDR_L1_SIZE);
    q->l1_offset = mi_be64(h + QCOW2_HDR_L1_OFFSET);
    q->nb_snapshots = mi_be32(h + QCOW2_HDR_NB_SNAPSHOTS);
    uint64_t boff = mi_be64(h + QCOW2_HDR_BACKING_OFFSET);
    uint32_t blen = mi_be32(h + QCOW2_HDR_BACKING_SIZE);
    q->extl2 = false;
    q->l2_bits = q->cluster_bits - 3;
    e = check_header_v23(q, h, hdr_len);
    if (e == 0) {
        if (q->extl2)
            q->l2_bits = q->cluster_bits - 4;
        uint64_t ext_end = boff && boff < hsz ? boff : hsz;
        if (ext_end < hdr_len)
            e = FAIL("%s: backing file name at 0x%llx overlaps the header", nm,
                     (unsigned long long)boff);
        else
            e = parse_extensions(q, h, hdr_len, ext_end);
    }
    free(h);
    if (e < 0)
        return e;
    if ((e = read_backing_name(q, boff, blen)) < 0)
        return e;
    if ((q->incompat & QCOW2_INCOMPAT_DATA_FILE) && !q->data_file[0])
        return FAIL("%s: the image uses an external data file but does not name it", nm);
    if (!(q->incompat & QCOW2_INCOMPAT_DATA_FILE))
        q->data_file[0] = '\0';
    q->g_bits = q->extl2 ? q->cluster_bits - 5 : q->cluster_bits;
    q->l2_bytes = q->cluster_size;
    return 0;
}

/* qcow version 1: {magic, version, backing offset u64, backing size u32, mtime u32,
 * size u64, cluster_bits u8, l2_bits u8, pad u16, crypt u32, l1 offset u64}. */
static int parse_v1(struct qcow2 *q)
{
    const char *nm = q->ep.name;
    uint8_t h[48];
    if (q->file_size < sizeof h)
        return FAIL("%s: truncated header (%llu bytes)", nm, (unsigned long long)q->file_size);
    int e = mi_pread_full(q->fd, h, sizeof h, 0);
    if (e < 0)
        return mi_seterr(-e, "%s: cannot read the header: %s", nm, strerror(-e));
    q->size = mi_be64(h + 24);
    q->cluster_bits = h[32];
    q->l2_bits = h[33];
    q->crypt = mi_be32(h + 36);
    q->l1_offset = mi_be64(h + 40);
    if (q->cluster_bits < 9 || q->cluster_bits > 16)
        return FAIL("%s: cluster_bits %u is out of range (9..16)", nm, q->cluster_bits);
    if (q->l2_bits < 6 || q->l2_bits > 16)
        return FAIL("%s: l2_bits %u is out of range (6..16)", nm, q->l2_bits);
    if (q->crypt > QCOW2_CRYPT_AES)
        return FAIL("%s: unknown encryption method %u", nm, q->crypt);
    if (q->crypt == QCOW2_CRYPT_AES && !q->has_hooks)
        return FAIL("%s: image is encrypted (AES); give --password-file", nm);
    q->cluster_size = 1ULL << q->cluster_bits;
    q->g_bits = q->cluster_bits;
    q->l2_bytes = (size_t)8 << q->l2_bits;
    q->refcount_order = 0;
    unsigned tbits = q->cluster_bits + q->l2_bits;
    uint64_t need = (q->size >> tbits) + !!(q->size & ((1ULL << tbits) - 1));
    if (need > MAX_L1_BYTES / 8)
        return FAIL("%s: virtual size %llu is too large", nm, (unsigned long long)q->size);
    q->l1_size = (uint32_t)need;
    return read_backing_name(q, mi_be64(h + 8), mi_be32(h + 16));
}

/* ---------------------------------------------------------------- open: tables */

static int check_entry(struct qcow2 *q, const uint64_t *t, uint64_t j, uint64_t guest)
{
    const char *nm = q->ep.name;
    uint64_t e0 = q->extl2 ? t[2 * j] : t[j], host, csize;
    const char *where = q->data_fd != q->fd ? "the external data file" : "the file";
    if (q->version == 1) {
        struct qcow2_l2dec d = qcow1_decode_l2(e0, q->cluster_bits);
        if (d.type == QCOW2_C_COMPRESSED && (d.host >= q->file_size ||
                                             d.csize > q->file_size - d.host))
            return FAIL("%s: compressed cluster at 0x%llx (guest offset 0x%llx) lies beyond "
                        "the end of the file", nm, (unsigned long long)d.host,
                        (unsigned long long)guest);
        if (d.type == QCOW2_C_NORMAL && (d.host & 511))
            return FAIL("%s: data cluster at 0x%llx (guest offset 0x%llx) is not aligned", nm,
                        (unsigned long long)d.host, (unsigned long long)guest);
        if (d.type == QCOW2_C_NORMAL && d.host >= q->file_size)
            goto beyond;
        return 0;
    }
    bool df = q->data_file[0];
    if ((e0 & QCOW2_OFLAG_COMPRESSED) && df)
        return FAIL("%s: compressed cluster (guest offset 0x%llx) in an image with an "
                    "external data file", nm, (unsigned long long)guest);
    if (e0 & QCOW2_OFLAG_COMPRESSED) {
        if (q->extl2 && t[2 * j + 1])
            goto invalid;
        qcow2_decode_compressed(e0, q->cluster_bits, &host, &csize);
        if (host >= q->file_size || host + csize > mi_round_up(q->file_size, 512))
            return FAIL("%s: compressed cluster at 0x%llx (guest offset 0x%llx) lies beyond "
                        "the end of the file", nm, (unsigned long long)host,
                        (unsigned long long)guest);
        return 0;
    }
    host = e0 & QCOW2_L2_OFFSET_MASK;
    bool used;
    if (q->extl2) {
        /* subcluster 0 stands for the entry: the bitmap checks cover all 32 */
        if (qcow2_decode_l2_ext_df(e0, t[2 * j + 1], q->cluster_bits, 0, df).type ==
            QCOW2_C_INVALID)
            goto invalid;
        used = t[2 * j + 1] & 0xffffffffu;
    } else {
        struct qcow2_l2dec d = qcow2_decode_l2_df(e0, q->cluster_bits, q->version, df);
        if (d.type == QCOW2_C_INVALID)
            goto invalid;
        used = d.type == QCOW2_C_NORMAL;
    }
    if (!used)
        return 0;
    if (host & (q->cluster_size - 1))
        return FAIL("%s: data cluster at 0x%llx (guest offset 0x%llx) is not cluster-aligned",
                    nm, (unsigned long long)host, (unsigned long long)guest);
    if (host >= q->data_size)
        goto beyond;
    return 0;
invalid:
    return FAIL("%s: invalid L2 entry 0x%016llx for guest offset 0x%llx", nm,
                (unsigned long long)e0, (unsigned long long)guest);
beyond:
    return FAIL("%s: data cluster at 0x%llx (guest offset 0x%llx) lies beyond the end of %s",
                nm, (unsigned long long)(e0 & QCOW2_L2_OFFSET_MASK), (unsigned long long)guest,
                where);
}

/* Read the L1 table and walk every allocated L2 table once: refuse what points outside
 * the file, keep the first tables in the cache. */
static int load_tables(struct qcow2 *q)
{
    const char *nm = q->ep.name;
    unsigned tbits = q->cluster_bits + q->l2_bits;
    uint64_t need = (q->size >> tbits) + !!(q->size & ((1ULL << tbits) - 1));
    if (q->l1_size > MAX_L1_BYTES / 8)
        return FAIL("%s: L1 table has %u entries (more than 32 MiB)", nm, q->l1_size);
    if (need > q->l1_size)
        return FAIL("%s: L1 table has %u entries, too few for the virtual size %llu "
                    "(%llu needed)", nm, q->l1_size, (unsigned long long)q->size,
                    (unsigned long long)need);
    q->l1_used = (uint32_t)need;
    uint64_t l1_align = q->version == 1 ? 8 : q->cluster_size;
    if (need && (q->l1_offset & (l1_align - 1)))
        return FAIL("%s: L1 table offset 0x%llx is not aligned", nm,
                    (unsigned long long)q->l1_offset);
    if (need && (q->l1_offset > q->file_size || need * 8 > q->file_size - q->l1_offset))
        return FAIL("%s: L1 table at 0x%llx lies beyond the end of the file", nm,
                    (unsigned long long)q->l1_offset);
    q->nslots = (uint32_t)mi_max(4, L2_CACHE_BYTES / q->l2_bytes);
    if (q->live) { /* one slot per L1 entry, never evicted (qcow2-live.c) */
        if ((uint64_t)need * q->l2_bytes > QCOW2_LIVE_MAX_TABLES)
            return FAIL("%s: %llu MiB of L2 tables: more than disk mode holds (%llu MiB)", nm,
                        (unsigned long long)(need * q->l2_bytes >> 20),
                        (unsigned long long)(QCOW2_LIVE_MAX_TABLES >> 20));
        q->nslots = (uint32_t)mi_max(1, need);
    }
    q->l1 = calloc(need ? need : 1, 8);
    q->slot_of = malloc((need ? need : 1) * sizeof *q->slot_of);
    q->slots = calloc(q->nslots, sizeof *q->slots);
    q->slab = malloc((size_t)q->nslots * q->l2_bytes);
    if (!q->l1 || !q->slot_of || !q->slots || !q->slab)
        return mi_seterr(ENOMEM, "%s: out of memory", nm);
    int e = mi_pread_full(q->fd, q->l1, need * 8, q->l1_offset);
    if (e < 0)
        return mi_seterr(-e, "%s: cannot read the L1 table: %s", nm, strerror(-e));
    to_host_order(q->l1, need);
    uint64_t entries = q->l2_bytes / (q->extl2 ? 16 : 8);
    for (uint32_t i = 0; i < need; i++) {
        q->slot_of[i] = -1;
        uint64_t off = q->version == 1 ? q->l1[i] : q->l1[i] & QCOW2_L1_OFFSET_MASK;
        if (!off)
            continue;
        uint64_t align = q->version == 1 ? 8 : q->cluster_size;
        if (off & (align - 1))
            return FAIL("%s: L2 table at 0x%llx is not aligned", nm, (unsigned long long)off);
        if (off > q->file_size || q->l2_bytes > q->file_size - off)
            return FAIL("%s: L2 table at 0x%llx lies beyond the end of the file", nm,
                        (unsigned long long)off);
        uint64_t *t;
        if ((e = read_l2(q, i, &t)) < 0)
            return e;
        uint64_t guest = (uint64_t)i << tbits;
        for (uint64_t j = 0; j < entries && guest < q->size && e == 0; j++) {
            e = check_entry(q, t, j, guest);
            guest += q->cluster_size;
        }
        if (e == 0 && q->live)
            qcow2_live_install(q, i, t);
        else if (e == 0)
            cache_put(q, i, t, false);
        free(t);
        if (e < 0)
            return e;
    }
    return 0;
}

/* ---------------------------------------------------------------- open: files */

/* A name with a protocol prefix ("nbd:", "json:", "file:"...): a colon before any slash. */
static bool has_protocol(const char *s)
{
    const char *c = strchr(s, ':'), *sl = strchr(s, '/');
    return c && (!sl || c < sl);
}

/* name relative to the directory of the image `base` names it from. */
static int resolve(const struct qcow2 *q, const char *name, char *out, size_t size)
{
    const char *slash = strrchr(q->ep.name, '/');
    int n;
    if (name[0] == '/' || !slash)
        n = snprintf(out, size, "%s", name);
    else
        n = snprintf(out, size, "%.*s%s", (int)(slash - q->ep.name + 1), q->ep.name, name);
    if (n < 0 || (size_t)n >= size)
        return FAIL("%s: path of '%s' is too long", q->ep.name, name);
    return 0;
}

static int open_data_file(struct qcow2 *q)
{
    const char *nm = q->ep.name;
    q->data_fd = q->fd;
    q->data_size = q->file_size;
    if (!q->data_file[0])
        return 0;
    if (has_protocol(q->data_file))
        return FAIL("%s: external data file '%s' is not a local file name (protocols are "
                    "not supported)", nm, q->data_file);
    int e = resolve(q, q->data_file, q->data_path, sizeof q->data_path);
    if (e < 0)
        return e;
    int fd = open(q->data_path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0)
        return mi_seterr(errno, "%s: cannot open the external data file %s: %s", nm,
                         q->data_path, strerror(errno));
    q->data_fd = fd;
    if (fstat(fd, &st) < 0)
        return mi_seterr(errno, "%s: cannot stat %s: %s", nm, q->data_path, strerror(errno));
    q->data_size = (uint64_t)st.st_size;
    return 0;
}

static int open_backing(struct qcow2 *q, const struct ep_open_opts *opts,
                        const struct qcow2_chain *self)
{
    const char *nm = q->ep.name;
    if (!q->has_backing)
        return 0;
    if (opts->no_backing)
        return FAIL("%s: the image has a backing file (%s) and backing files are not allowed",
                    nm, q->backing_name);
    if (has_protocol(q->backing_name))
        return FAIL("%s: backing file '%s' is not a local file name (protocols are not "
                    "supported)", nm, q->backing_name);
    int e = resolve(q, q->backing_name, q->backing_path, sizeof q->backing_path);
    if (e < 0)
        return e;
    struct stat st;
    if (opts->top_only) {
        /* the chain is not read, but info (and a --sync=top target) wants its format */
        const char *fmt = q->backing_fmt[0] || stat(q->backing_path, &st) < 0
                          ? NULL : ep_probe(q->backing_path);
        if (fmt)
            snprintf(q->backing_probed, sizeof q->backing_probed, "%s", fmt);
        return 0;
    }
    if (stat(q->backing_path, &st) < 0)
        return mi_seterr(errno, "%s: cannot open the backing file %s: %s", nm, q->backing_path,
                         strerror(errno));
    const char *fmt = q->backing_fmt[0] ? q->backing_fmt : ep_probe(q->backing_path);
    if (!fmt)
        return -EIO;
    struct ep_open_opts bo = {.password_file = opts->password_file};
    if (!strcmp(fmt, "raw"))
        q->backing = raw_open(q->backing_path, false);
    else if (!strcmp(fmt, "qcow2"))
        q->backing = open_chain(q->backing_path, &bo, self, NULL);
    else if (!strcmp(fmt, "qcow"))
        q->backing = qcow_open_chain(q->backing_path, &bo, self);
    else
        return FAIL("%s: backing file %s has format '%s', which is not supported", nm,
                    q->backing_path, fmt);
    return q->backing ? 0 : -EIO;
}

/* The chain from the top to self, as "a -> b -> c". */
static void chain_text(const struct qcow2_chain *c, char *out, size_t size)
{
    if (c->parent) {
        chain_text(c->parent, out, size);
        size_t n = strlen(out);
        snprintf(out + n, size - n, " -> %s", c->name);
    } else {
        snprintf(out, size, "%s", c->name);
    }
}

static int check_chain(const struct qcow2_chain *self)
{
    const struct qcow2_chain *top = self;
    while (top->parent)
        top = top->parent;
    for (const struct qcow2_chain *p = self->parent; p; p = p->parent)
        if (p->dev == self->dev && p->ino == self->ino) {
            char text[2048];
            chain_text(self, text, sizeof text);
            return FAIL("%s: backing chain loops: %s", top->name, text);
        }
    if (self->depth > QCOW2_MAX_CHAIN)
        return FAIL("%s: backing chain is longer than %d images", top->name, QCOW2_MAX_CHAIN);
    return 0;
}

static int open_layers(struct qcow2 *q, const struct ep_open_opts *opts,
                       const struct qcow2_chain *self)
{
    int e = q->version == 1 ? parse_v1(q) : parse_v23(q);
    if (e == 0)
        e = open_data_file(q);
    if (e == 0)
        e = load_tables(q);
    if (e == 0)
        e = open_backing(q, opts, self);
    return e;
}

static struct ep *open_chain(const char *name, const struct ep_open_opts *opts,
                             const struct qcow2_chain *parent, const struct qcow2_hooks *hooks)
{
    struct qcow2 *q = calloc(1, sizeof *q);
    if (!q || !(q->ep.name = strdup(name))) {
        free(q);
        if (hooks && hooks->free)
            hooks->free(hooks->opaque);
        mi_seterr(ENOMEM, "%s: out of memory", name);
        return NULL;
    }
    pthread_mutex_init(&q->lock, NULL);
    q->data_fd = -1;
    if (hooks) {
        q->hooks = *hooks;
        q->has_hooks = true;
    }
    struct stat st;
    uint8_t magic[40];
    int e;
    q->fd = open(name, O_RDONLY | O_CLOEXEC);
    if (q->fd < 0 || fstat(q->fd, &st) < 0) {
        e = mi_seterr(errno, "%s: cannot open: %s", name, strerror(errno));
        goto fail;
    }
    q->file_size = (uint64_t)st.st_size;
    struct qcow2_chain self = {st.st_dev, st.st_ino, name, parent, parent ? parent->depth + 1 : 0};
    if ((e = check_chain(&self)) < 0)
        goto fail;
    if (q->file_size < 8) {
        e = FAIL("%s: truncated header (%llu bytes)", name, (unsigned long long)q->file_size);
        goto fail;
    }
    if ((e = mi_pread_full(q->fd, magic, sizeof magic, 0)) < 0) {
        e = mi_seterr(-e, "%s: cannot read: %s", name, strerror(-e));
        goto fail;
    }
    q->version = (int)mi_be32(magic + 4);
    if (mi_be32(magic) != QCOW2_MAGIC) {
        e = FAIL("%s: not a qcow2 image (bad magic)", name);
        goto fail;
    }
    if (q->version < 1 || q->version > 3) {
        e = FAIL("%s: unsupported qcow2 version %d", name, q->version);
        goto fail;
    }
    uint32_t crypt = mi_be32(magic + (q->version == 1 ? 36 : QCOW2_HDR_CRYPT_METHOD));
    if (!hooks && crypt == QCOW2_CRYPT_AES && opts->password_file) {
        /* AES: libqcow decrypts the data, this file maps it */
        q2_free(q);
        return qcow_open_chain(name, opts, parent);
    }
    q->live = opts->live && !parent && !hooks;
    if ((e = open_layers(q, opts, &self)) < 0 || (q->live && (e = qcow2_live_init(q)) < 0))
        goto fail;
    q->ep.ops = &qcow2_ops; /* one reader for both: only the format's name differs */
    q->ep.format = q->version == 1 ? "qcow" : "qcow2";
    q->ep.size = q->size;
    q->ep.align = (uint32_t)q->cluster_size;
    q->ep.caps = EP_CAP_BLOCK_STATUS;
    return &q->ep;
fail:
    q2_free(q);
    return NULL;
}

struct ep *qcow2_open_chain(const char *name, const struct ep_open_opts *opts,
                            const struct qcow2_chain *parent, const struct qcow2_hooks *hooks)
{
    return open_chain(name, opts, parent, hooks);
}

struct ep *qcow2_open(const char *name, const struct ep_open_opts *opts, int depth)
{
    (void)depth; /* the chain itself counts the depth */
    return open_chain(name, opts, NULL, NULL);
}
