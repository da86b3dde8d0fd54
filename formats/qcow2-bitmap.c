/* qcow2-bitmap.c: the persistent dirty bitmaps of a qcow2 image (QEMU's bitmaps
 * extension: `qemu-img bitmap`, block-dirty-bitmap-add persistent=true), listed for info
 * and read for copy --bitmap.  Checked like every other table: a bitmap in use (its
 * image was not closed cleanly), inconsistent, or pointing past the file is refused by
 * name.
 *
 *   extension -> directory: entries of {table offset u64, table size u32, flags u32,
 *                type u8, granularity bits u8, name size u16, extra data size u32,
 *                extra data, name, padding to 8}
 *   table     -> one u64 per cluster of bitmap data: its offset (bits 9..55), or 0 with
 *                bit 0 saying "all set" or "all clear"
 *   data      -> bit i (least significant bit of each byte first) covers the guest
 *                range [i * granularity, (i + 1) * granularity)
 */
#include "qcow2-int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BME_IN_USE 1u
#define BME_AUTO 2u
#define BME_EXTRA_COMPAT 4u
#define BME_TYPE_DIRTY 1
#define BM_DIR_MAX (64 * MI_MiB)
#define BMT_OFFSET_MASK 0x00fffffffffffe00ULL

#define FAIL(...) (mi_seterr(EINVAL, __VA_ARGS__))

struct bm {
    uint64_t table_off;
    uint32_t table_size, flags;
    uint8_t gbits;
    char name[1024];
};

/* Clusters of bitmap data a bitmap of granularity 2^gbits needs for the virtual size. */
static uint64_t table_need(const struct qcow2 *q, unsigned gbits)
{
    uint64_t bits = (q->size + (1ULL << gbits) - 1) >> gbits, per = q->cluster_size * 8;
    return (bits + per - 1) / per;
}

/* Entry at d (left bytes), checked; its length in *len. */
static int parse_entry(struct qcow2 *q, const uint8_t *d, uint64_t left, struct bm *b, uint64_t *len)
{
    const char *nm = q->ep.name;
    if (left < 24)
        return FAIL("%s: the bitmap directory is cut short", nm);
    b->table_off = mi_be64(d);
    b->table_size = mi_be32(d + 8);
    b->flags = mi_be32(d + 12);
    uint8_t type = d[16];
    b->gbits = d[17];
    uint16_t nlen = mi_be16(d + 18);
    uint32_t xlen = mi_be32(d + 20);
    *len = mi_round_up(24ULL + xlen + nlen, 8);
    if (!nlen || nlen >= sizeof b->name || *len > left)
        return FAIL("%s: a bitmap directory entry is cut short or its name is too long", nm);
    memcpy(b->name, d + 24 + xlen, nlen);
    b->name[nlen] = '\0';
    if (strlen(b->name) != nlen)
        return FAIL("%s: a bitmap name holds a NUL byte", nm);
    if (type != BME_TYPE_DIRTY || (b->flags & ~(BME_IN_USE | BME_AUTO | BME_EXTRA_COMPAT)) ||
        (xlen && !(b->flags & BME_EXTRA_COMPAT)))
        return FAIL("%s: bitmap '%s' is of a kind mirror-img does not know (type %u, flags "
                    "0x%x)", nm, b->name, type, b->flags);
    if (b->gbits < 9 || b->gbits > 31)
        return FAIL("%s: bitmap '%s' has a granularity of 2^%u bytes (9..31 allowed)", nm,
                    b->name, b->gbits);
    if ((b->table_off & (q->cluster_size - 1)) || b->table_size != table_need(q, b->gbits) ||
        b->table_off > q->file_size || b->table_size * 8ULL > q->file_size - b->table_off)
        return FAIL("%s: bitmap '%s' is inconsistent: its table (%u entries at 0x%llx) does "
                    "not fit the image", nm, b->name, b->table_size,
                    (unsigned long long)b->table_off);
    return 0;
}

/* The directory, checked; *n entries in *out (the caller frees). */
static int read_dir(struct qcow2 *q, struct bm **out, unsigned *n)
{
    const char *nm = q->ep.name;
    *out = NULL, *n = 0;
    if (!q->bm_dir_off && !q->bm_nb)
        return 0;
    if (!(q->autoclear & QCOW2_AUTOCLEAR_BITMAPS))
        return FAIL("%s: its bitmaps are stale (a program that does not know them wrote the "
                    "image)", nm);
    if (q->bm_dir_size > BM_DIR_MAX || q->bm_nb > 65535 || (q->bm_dir_off & (q->cluster_size - 1)) ||
        q->bm_dir_off > q->file_size || q->bm_dir_size > q->file_size - q->bm_dir_off)
        return FAIL("%s: the bitmap directory (%llu bytes at 0x%llx) lies beyond the file", nm,
                    (unsigned long long)q->bm_dir_size, (unsigned long long)q->bm_dir_off);
    uint8_t *d = malloc(q->bm_dir_size ? q->bm_dir_size : 1);
    struct bm *b = calloc(q->bm_nb ? q->bm_nb : 1, sizeof *b);
    int r = d && b ? mi_pread_full(q->fd, d, q->bm_dir_size, q->bm_dir_off) : -ENOMEM;
    if (r < 0)
        r = mi_seterr(-r, "%s: cannot read the bitmap directory: %s", nm, strerror(-r));
    uint64_t pos = 0, len = 0;
    for (unsigned i = 0; i < q->bm_nb && r == 0; i++, pos += len)
        r = parse_entry(q, d + pos, q->bm_dir_size - pos, &b[i], &len);
    free(d);
    if (r < 0) {
        free(b);
        return r;
    }
    *out = b, *n = q->bm_nb;
    return 0;
}

int qcow2_bitmaps(struct ep *ep, struct ep_bitmap *out, unsigned max, unsigned *n)
{
    struct bm *b;
    int r = read_dir((struct qcow2 *)ep, &b, n);
    for (unsigned i = 0; r == 0 && i < *n && i < max; i++) {
        snprintf(out[i].name, sizeof out[i].name, "%s", b[i].name);
        out[i].granularity = 1ULL << b[i].gbits;
        out[i].in_use = b[i].flags & BME_IN_USE;
        out[i].enabled = b[i].flags & BME_AUTO;
    }
    free(b);
    return r;
}

/* Report the set bits of one cluster of bitmap data (all when all), merged into runs. */
struct runs {
    uint64_t start, end; /* the run being built */
    uint64_t size;
    void (*dirty)(void *ctx, uint64_t off, uint64_t len);
    void *ctx;
};

static void add(struct runs *u, uint64_t off, uint64_t len)
{
    uint64_t end = mi_min(off + len, u->size);
    if (off >= end)
        return;
    if (u->end == off) {
        u->end = end;
        return;
    }
    if (u->end > u->start)
        u->dirty(u->ctx, u->start, u->end - u->start);
    u->start = off, u->end = end;
}

static void bits(struct runs *u, const uint8_t *c, uint64_t nbytes, uint64_t first_bit, unsigned gbits)
{
    for (uint64_t k = 0; k < nbytes; k++) {
        if (!c[k])
            continue;
        for (unsigned i = 0; i < 8; i++)
            if (c[k] >> i & 1)
                add(u, (first_bit + k * 8 + i) << gbits, 1ULL << gbits);
    }
}

static int walk(struct qcow2 *q, const struct bm *b, struct runs *u)
{
    const char *nm = q->ep.name;
    uint64_t *t = malloc(b->table_size * 8ULL + 8);
    uint8_t *c = malloc(q->cluster_size);
    int r = t && c ? mi_pread_full(q->fd, t, b->table_size * 8ULL, b->table_off) : -ENOMEM;
    if (r < 0)
        r = mi_seterr(-r, "%s: cannot read bitmap '%s': %s", nm, b->name, strerror(-r));
    uint64_t per = q->cluster_size * 8;
    for (uint32_t i = 0; i < b->table_size && r == 0; i++) {
        uint64_t e = mi_be64(&t[i]), off = e & BMT_OFFSET_MASK;
        if ((e & ~BMT_OFFSET_MASK & ~1ULL) || (off && (e & 1)) || (off & (q->cluster_size - 1)) ||
            off > q->file_size || q->cluster_size > q->file_size - off) {
            r = FAIL("%s: bitmap '%s' is inconsistent: table entry %u (0x%016llx)", nm, b->name,
                     i, (unsigned long long)e);
        } else if (!off) {
            if (e & 1)
                add(u, (i * per) << b->gbits, per << b->gbits);
        } else if ((r = mi_pread_full(q->fd, c, q->cluster_size, off)) < 0) {
            r = mi_seterr(-r, "%s: cannot read bitmap '%s': %s", nm, b->name, strerror(-r));
        } else {
            bits(u, c, q->cluster_size, i * per, b->gbits);
        }
    }
    free(t);
    free(c);
    return r;
}

int qcow2_dirty(struct ep *ep, const char *name,
                void (*dirty)(void *ctx, uint64_t off, uint64_t len), void *ctx)
{
    struct qcow2 *q = (struct qcow2 *)ep;
    struct bm *b;
    unsigned n;
    int r = read_dir(q, &b, &n);
    if (r < 0)
        return r;
    unsigned i = 0;
    while (i < n && strcmp(b[i].name, name))
        i++;
    if (i == n)
        r = mi_seterr(ENOENT, "%s: has no bitmap '%s'%s", ep->name, name,
                      n ? " (mirror-img info lists its bitmaps)" : " (it has no bitmaps)");
    else if (b[i].flags & BME_IN_USE)
        r = FAIL("%s: bitmap '%s' is in use (the image was not closed cleanly, or a QEMU has "
                 "it open): it may miss writes", ep->name, name);
    struct runs u = {.size = q->size, .dirty = dirty, .ctx = ctx};
    if (r == 0 && (r = walk(q, &b[i], &u)) == 0 && u.end > u.start)
        dirty(ctx, u.start, u.end - u.start);
    free(b);
    return r;
}
