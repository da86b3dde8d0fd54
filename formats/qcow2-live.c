/* qcow2-live.c: the qcow2 reader's live mode, for follow's disk mode.
 *
 * The image file is written by its own writer (QEMU, qemu-io) while we read it, and the
 * journal says which byte ranges of the file changed.  Live mode turns those file ranges
 * into guest ranges:
 *
 *   header changed  -> re-read it: the backing file must not change, the virtual size may
 *                      grow (the tables of the new L1 entries are held from then on);
 *                      a moved or grown L1 table is re-read as below
 *   L1 changed      -> re-read it; for each entry that changed, the old table against
 *                      the new one (or none), entry by entry
 *   L2 changed      -> re-read that table; every entry that differs is a changed guest
 *                      cluster (its mapping or its kind)
 *   data changed    -> the reverse map (host cluster -> guest clusters) names the guest
 *                      clusters stored there
 *
 * Refcount blocks, the snapshot table and free space change nothing a guest sees.  Every
 * L2 table is held (slot l1i holds table l1i: nothing is evicted), so there is always an
 * old table to compare against; the reverse map follows each change.  A writer that
 * allocates writes the data first and the L2 entry then: the data lands in a cluster no
 * entry names yet (nothing to do), the entry's change names the guest cluster.
 */
#include "qcow2-int.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* ---- the reverse map: host cluster -> guest cluster, a multimap (compressed clusters
 * share host clusters), open addressing with tombstones ---- */

#define RM_EMPTY 0ULL           /* host cluster 0 holds the header: never data */
#define RM_TOMB UINT64_MAX

struct qcow2_rmap {
    uint64_t *key, *val;
    size_t cap, used; /* used: live entries and tombstones */
};

static size_t rm_hash(uint64_t k, size_t cap)
{
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33;
    return (size_t)k & (cap - 1);
}

static int rm_grow(struct qcow2_rmap *m);

static int rm_add(struct qcow2_rmap *m, uint64_t k, uint64_t v)
{
    if ((m->used + 1) * 10 >= m->cap * 7 && rm_grow(m) < 0)
        return -ENOMEM;
    size_t i = rm_hash(k, m->cap);
    while (m->key[i] != RM_EMPTY && m->key[i] != RM_TOMB)
        i = (i + 1) & (m->cap - 1);
    if (m->key[i] == RM_EMPTY)
        m->used++;
    m->key[i] = k;
    m->val[i] = v;
    return 0;
}

static void rm_del(struct qcow2_rmap *m, uint64_t k, uint64_t v)
{
    for (size_t i = rm_hash(k, m->cap); m->key[i] != RM_EMPTY; i = (i + 1) & (m->cap - 1)) {
        if (m->key[i] == k && m->val[i] == v) {
            m->key[i] = RM_TOMB;
            return;
        }
    }
}

static int rm_grow(struct qcow2_rmap *m)
{
    struct qcow2_rmap n = {.cap = m->cap ? m->cap * 2 : 1024};
    n.key = calloc(n.cap, sizeof *n.key);
    n.val = malloc(n.cap * sizeof *n.val);
    if (!n.key || !n.val) {
        free(n.key);
        free(n.val);
        return -ENOMEM;
    }
    for (size_t i = 0; i < m->cap; i++)
        if (m->key[i] != RM_EMPTY && m->key[i] != RM_TOMB)
            rm_add(&n, m->key[i], m->val[i]);
    free(m->key);
    free(m->val);
    *m = n;
    return 0;
}

/* ---- entries ---- */

static unsigned entry_words(const struct qcow2 *q) { return q->extl2 ? 2 : 1; }
static uint64_t table_entries(const struct qcow2 *q) { return q->l2_bytes / 8 / entry_words(q); }

/* The host clusters entry e (first word) stores data in: [*h0, *h1]; false for none. */
static bool entry_hosts(const struct qcow2 *q, uint64_t e, uint64_t *h0, uint64_t *h1)
{
    if (e & QCOW2_OFLAG_COMPRESSED) {
        uint64_t host, csize;
        qcow2_decode_compressed(e, q->cluster_bits, &host, &csize);
        *h0 = host >> q->cluster_bits;
        *h1 = (host + csize - 1) >> q->cluster_bits;
        return host != 0;
    }
    uint64_t host = e & QCOW2_L2_OFFSET_MASK;
    *h0 = *h1 = host >> q->cluster_bits;
    return host != 0;
}

/* Add (or remove) the reverse-map entries of entry e naming guest cluster gc. */
static int rmap_entry(struct qcow2 *q, uint64_t e, uint64_t gc, bool add)
{
    uint64_t h0, h1;
    if (!entry_hosts(q, e, &h0, &h1))
        return 0;
    for (uint64_t h = h0; h <= h1; h++) {
        if (!add)
            rm_del(q->rmap, h, gc);
        else if (rm_add(q->rmap, h, gc) < 0)
            return mi_seterr(ENOMEM, "%s: out of memory for the reverse map", q->ep.name);
    }
    return 0;
}

static bool entry_changed(const struct qcow2 *q, const uint64_t *o, const uint64_t *n, uint64_t i)
{
    unsigned w = entry_words(q);
    uint64_t a = o ? o[i * w] : 0, b = n ? n[i * w] : 0;
    if ((a & ~QCOW2_OFLAG_COPIED) != (b & ~QCOW2_OFLAG_COPIED))
        return true;
    return w == 2 && (o ? o[i * 2 + 1] : 0) != (n ? n[i * 2 + 1] : 0);
}

/* ---- install, diff ---- */

void qcow2_live_install(struct qcow2 *q, uint32_t l1i, const uint64_t *t)
{
    uint64_t *slot = q->slab + (size_t)l1i * (q->l2_bytes / 8);
    if (t)
        memcpy(slot, t, q->l2_bytes);
    q->slots[l1i] = (struct l2slot){slot, l1i, true};
    q->slot_of[l1i] = t ? (int32_t)l1i : -1;
}

typedef void (*dirty_fn)(void *ctx, uint64_t off, uint64_t len);

/* Table l1i goes from what the slot holds (or nothing) to n (or nothing): report the
 * guest clusters that changed (all of them with all), follow them in the reverse map,
 * install n.  Lock held. */
static int swap_table(struct qcow2 *q, uint32_t l1i, const uint64_t *n, bool all, dirty_fn dirty, void *ctx)
{
    const uint64_t *o = q->slot_of[l1i] >= 0 ? q->slots[l1i].t : NULL;
    unsigned tbits = q->cluster_bits + q->l2_bits, w = entry_words(q);
    uint64_t base = (uint64_t)l1i << tbits, gc0 = base >> q->cluster_bits;
    uint64_t run = 0, run_len = 0;
    for (uint64_t i = 0; i < table_entries(q) && base + (i << q->cluster_bits) < q->size; i++) {
        bool ch = entry_changed(q, o, n, i);
        if (ch && (rmap_entry(q, o ? o[i * w] : 0, gc0 + i, false) < 0 ||
                   rmap_entry(q, n ? n[i * w] : 0, gc0 + i, true) < 0))
            return -ENOMEM;
        if (ch || all) {
            uint64_t g = base + (i << q->cluster_bits);
            if (run_len && run + run_len != g) {
                dirty(ctx, run, run_len);
                run_len = 0;
            }
            if (!run_len)
                run = g;
            run_len += mi_min(q->cluster_size, q->size - g);
        }
    }
    if (run_len)
        dirty(ctx, run, run_len);
    else if (all && !o && !n) /* no table before or after: the backing's range */
        dirty(ctx, base, mi_min(1ULL << tbits, q->size - base));
    qcow2_live_install(q, l1i, n);
    return 0;
}

/* Re-read table l1i at offset off (0: none now) and swap it in. */
static int reload_table(struct qcow2 *q, uint32_t l1i, uint64_t off, bool all, dirty_fn dirty, void *ctx)
{
    uint64_t *t = NULL;
    if (off && qcow2_read_l2_at(q, off, &t) < 0)
        return -EIO;
    pthread_mutex_lock(&q->lock);
    int r = swap_table(q, l1i, t, all, dirty, ctx);
    q->l1[l1i] = off ? off | (q->l1[l1i] & ~QCOW2_L1_OFFSET_MASK) : 0;
    pthread_mutex_unlock(&q->lock);
    free(t);
    return r;
}

/* Re-read the L1 table (at the header's offset); swap every table whose entry moved, or
 * every table with all. */
static int reload_l1(struct qcow2 *q, uint64_t l1_offset, bool all, dirty_fn dirty, void *ctx)
{
    uint64_t *l1 = malloc(q->l1_used * 8ULL + 8);
    if (!l1)
        return mi_seterr(ENOMEM, "%s: out of memory", q->ep.name);
    int e = mi_pread_full(q->fd, l1, q->l1_used * 8ULL, l1_offset);
    for (uint32_t i = 0; e == 0 && i < q->l1_used; i++) {
        uint64_t n = mi_be64(&l1[i]), off = n & QCOW2_L1_OFFSET_MASK;
        pthread_mutex_lock(&q->lock);
        bool moved = (q->l1[i] & QCOW2_L1_OFFSET_MASK) != off;
        pthread_mutex_unlock(&q->lock);
        if (moved || all)
            e = reload_table(q, i, off, all, dirty, ctx);
    }
    free(l1);
    if (e < 0)
        return mi_seterr(EIO, "%s: cannot read the L1 table: %s", q->ep.name, mi_lasterr());
    q->l1_offset = l1_offset;
    return 0;
}

/* Does the header h name another backing file than the one opened (rebase)? */
static bool backing_changed(struct qcow2 *q, const uint8_t *h)
{
    uint64_t boff = mi_be64(h + QCOW2_HDR_BACKING_OFFSET);
    uint32_t blen = mi_be32(h + QCOW2_HDR_BACKING_SIZE);
    if ((boff != 0) != q->has_backing)
        return true;
    if (!boff)
        return false;
    char name[QCOW2_MAX_BACKING_NAME + 1];
    if (blen > QCOW2_MAX_BACKING_NAME || mi_pread_full(q->fd, name, blen, boff) < 0)
        return true;
    name[blen] = '\0';
    return strcmp(name, q->backing_name) != 0;
}

/* The disk grew (a resize): hold tables for the new L1 entries (none yet: the L1 table is
 * re-read next) and report the new range, which reads as zeros or the backing file. */
static int grow(struct qcow2 *q, uint64_t size, uint32_t l1_size, dirty_fn dirty, void *ctx)
{
    unsigned tbits = q->cluster_bits + q->l2_bits;
    uint64_t need = (size + (1ULL << tbits) - 1) >> tbits, words = q->l2_bytes / 8;
    if (need > l1_size)
        return mi_seterr(EINVAL, "%s: the L1 table (%u entries) is too small for the new "
                         "virtual size %llu", q->ep.name, l1_size, (unsigned long long)size);
    if (need * q->l2_bytes > QCOW2_LIVE_MAX_TABLES)
        return mi_seterr(ENOTSUP, "%s: grew to %llu MiB of L2 tables: more than disk mode holds",
                         q->ep.name, (unsigned long long)(need * q->l2_bytes >> 20));
    pthread_mutex_lock(&q->lock);
    uint64_t *l1 = realloc(q->l1, need * 8);
    if (l1)
        q->l1 = l1;
    int32_t *so = l1 ? realloc(q->slot_of, need * sizeof *so) : NULL;
    if (so)
        q->slot_of = so;
    struct l2slot *sl = so ? realloc(q->slots, need * sizeof *sl) : NULL;
    if (sl)
        q->slots = sl;
    uint64_t *slab = sl ? realloc(q->slab, need * q->l2_bytes) : NULL;
    if (!slab) {
        pthread_mutex_unlock(&q->lock);
        return mi_seterr(ENOMEM, "%s: out of memory for the grown disk's tables", q->ep.name);
    }
    q->slab = slab;
    for (uint32_t i = 0; i < need; i++) {
        if (i >= q->l1_used)
            q->l1[i] = 0, q->slot_of[i] = -1, q->slots[i] = (struct l2slot){NULL, i, false};
        q->slots[i].t = slab + i * words;
    }
    uint64_t old = q->size;
    q->l1_used = q->nslots = q->nused = (uint32_t)need;
    q->l1_size = l1_size;
    q->size = q->ep.size = size;
    pthread_mutex_unlock(&q->lock);
    dirty(ctx, old, size - old);
    return 0;
}

/* The header changed: what a guest sees must not (backing file, cluster size, encryption);
 * the disk may grow, the L1 table may have grown and moved. */
static int reload_header(struct qcow2 *q, bool all, dirty_fn dirty, void *ctx)
{
    uint8_t h[QCOW2_V2_HEADER_LEN];
    int e = mi_pread_full(q->fd, h, sizeof h, 0);
    if (e < 0)
        return mi_seterr(-e, "%s: cannot read the header: %s", q->ep.name, strerror(-e));
    uint64_t size = mi_be64(h + QCOW2_HDR_SIZE);
    if (size < q->size)
        return mi_seterr(ENOTSUP, "%s: the virtual size shrank while followed (%llu -> %llu "
                         "bytes): disk mode cannot follow a shrink", q->ep.name,
                         (unsigned long long)q->size, (unsigned long long)size);
    if (backing_changed(q, h) || mi_be32(h + QCOW2_HDR_CLUSTER_BITS) != q->cluster_bits ||
        mi_be32(h + QCOW2_HDR_CRYPT_METHOD) != q->crypt)
        return mi_seterr(ENOTSUP, "%s: the backing file, cluster size or encryption changed "
                         "while followed: disk mode cannot follow that", q->ep.name);
    if (mi_be32(h + QCOW2_HDR_L1_SIZE) < q->l1_used)
        return mi_seterr(ENOTSUP, "%s: the L1 table shrank while followed", q->ep.name);
    bool grew = size > q->size;
    if (grew && (e = grow(q, size, mi_be32(h + QCOW2_HDR_L1_SIZE), dirty, ctx)) < 0)
        return e;
    uint64_t l1_offset = mi_be64(h + QCOW2_HDR_L1_OFFSET);
    if (l1_offset != q->l1_offset || all || grew)
        return reload_l1(q, l1_offset, all, dirty, ctx);
    return 0;
}

static bool overlaps(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
    return a < b + blen && b < a + alen;
}

/* Data clusters stored in [off, end): their guest clusters. */
static void data_dirty(struct qcow2 *q, uint64_t off, uint64_t end, dirty_fn dirty, void *ctx)
{
    struct qcow2_rmap *m = q->rmap;
    pthread_mutex_lock(&q->lock);
    for (uint64_t h = off >> q->cluster_bits; h <= (end - 1) >> q->cluster_bits; h++) {
        if (!h)
            continue;
        for (size_t i = rm_hash(h, m->cap); m->key[i] != RM_EMPTY; i = (i + 1) & (m->cap - 1)) {
            if (m->key[i] != h)
                continue;
            uint64_t g = m->val[i] << q->cluster_bits;
            if (g < q->size)
                dirty(ctx, g, mi_min(q->cluster_size, q->size - g));
        }
    }
    pthread_mutex_unlock(&q->lock);
}

static int live_refresh(struct ep *ep, uint64_t off, uint64_t len, bool conservative,
                        dirty_fn dirty, void *ctx)
{
    struct qcow2 *q = (struct qcow2 *)ep;
    if (!q->live)
        return mi_seterr(EINVAL, "%s: not opened for disk mode", ep->name);
    if (!len)
        return 0;
    int e = 0;
    if (off < q->cluster_size)
        e = reload_header(q, conservative, dirty, ctx);
    if (e == 0 && overlaps(off, len, q->l1_offset, q->l1_used * 8ULL))
        e = reload_l1(q, q->l1_offset, conservative, dirty, ctx);
    for (uint32_t i = 0; e == 0 && i < q->l1_used; i++) {
        pthread_mutex_lock(&q->lock);
        uint64_t t = q->l1[i] & QCOW2_L1_OFFSET_MASK;
        pthread_mutex_unlock(&q->lock);
        if (t && overlaps(off, len, t, q->l2_bytes))
            e = reload_table(q, i, t, conservative, dirty, ctx);
    }
    if (e == 0)
        data_dirty(q, off, off + len, dirty, ctx);
    return e;
}

int qcow2_live_refresh(struct ep *ep, uint64_t off, uint64_t len, bool conservative,
                       void (*dirty)(void *ctx, uint64_t off, uint64_t len), void *ctx)
{
    return live_refresh(ep, off, len, conservative, dirty, ctx);
}

int qcow2_live_init(struct qcow2 *q)
{
    const char *nm = q->ep.name;
    if (q->version == 1 || q->data_file[0] || q->crypt != QCOW2_CRYPT_NONE)
        return mi_seterr(ENOTSUP, "%s: disk mode follows qcow2 v2 and v3 images without an "
                         "external data file or encryption", nm);
    if (!(q->rmap = calloc(1, sizeof *q->rmap)) || rm_grow(q->rmap) < 0)
        return mi_seterr(ENOMEM, "%s: out of memory", nm);
    q->nused = q->nslots; /* slots are by L1 index: the cache never hands one out */
    unsigned w = entry_words(q), tbits = q->cluster_bits + q->l2_bits;
    for (uint32_t i = 0; i < q->l1_used; i++) {
        if (q->slot_of[i] < 0)
            continue;
        const uint64_t *t = q->slots[i].t;
        uint64_t gc0 = ((uint64_t)i << tbits) >> q->cluster_bits;
        for (uint64_t k = 0; k < table_entries(q); k++)
            if (rmap_entry(q, t[k * w], gc0 + k, true) < 0)
                return -ENOMEM;
    }
    return 0;
}

void qcow2_live_free(struct qcow2 *q)
{
    if (!q->rmap)
        return;
    free(q->rmap->key);
    free(q->rmap->val);
    free(q->rmap);
    q->rmap = NULL;
}
