/* checksum.c: see checksum.h.  libcrypto's SHA-256 (EVP): a well-kept implementation
 * with the CPU's SHA extensions, rather than hashing by hand. */
#include "checksum.h"
#include "util.h"

#include <errno.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define READ_BLOCKS 16 /* data blocks read at once: 1 MiB */

typedef uint8_t digest_t[CK_DIGEST];

static void hash(const void *p, size_t n, uint8_t *out)
{
    EVP_Digest(p, n, out, NULL, EVP_sha256(), NULL);
}

static uint64_t nblocks(uint64_t size) { return (size + CK_BLOCK - 1) / CK_BLOCK; }
static uint64_t nsegs(uint64_t size) { return (nblocks(size) + CK_SEG_BLOCKS - 1) / CK_SEG_BLOCKS; }

static uint64_t block_len(uint64_t size, uint64_t b)
{
    return mi_min(CK_BLOCK, size - b * CK_BLOCK);
}

static const uint8_t zeros[CK_BLOCK];
static digest_t zero_full;
static void zero_init(void) { hash(zeros, CK_BLOCK, zero_full); }

/* The digest of a zero block of n bytes (a full one computed once). */
static void zero_digest(uint64_t n, uint8_t *out)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    if (n == CK_BLOCK) {
        pthread_once(&once, zero_init);
        memcpy(out, zero_full, CK_DIGEST);
    } else {
        hash(zeros, n, out);
    }
}

/* zero[k]: block k of segment j reads as zeros in ep's block status (a whole block of a
 * zero run: nothing to read). */
static int zero_blocks(struct ep *ep, uint64_t j, bool *zero)
{
    uint64_t b0 = j * CK_SEG_BLOCKS, a = b0 * CK_BLOCK;
    uint64_t end = mi_min(ep->size, (b0 + CK_SEG_BLOCKS) * CK_BLOCK);
    memset(zero, 0, CK_SEG_BLOCKS * sizeof *zero);
    while (a < end) {
        uint64_t len;
        int kind;
        int r = ep->ops->block_status(ep, a, end - a, 0, &len, &kind);
        if (r < 0)
            return r;
        if (!len || len > end - a)
            len = end - a;
        if (kind == EP_ZERO) /* the blocks wholly inside [a, a+len) */
            for (uint64_t b = (a + CK_BLOCK - 1) / CK_BLOCK; b * CK_BLOCK < a + len; b++)
                if (b * CK_BLOCK + block_len(ep->size, b) <= a + len)
                    zero[b - b0] = true;
        a += len;
    }
    return 0;
}

/* Digests of the blocks of segment j that want[k] names (NULL: all) into d. */
static int seg_blocks(struct ep *ep, uint64_t j, const bool *want, uint8_t *buf, digest_t *d)
{
    bool zero[CK_SEG_BLOCKS];
    int r = zero_blocks(ep, j, zero);
    uint64_t b0 = j * CK_SEG_BLOCKS, n = mi_min(CK_SEG_BLOCKS, nblocks(ep->size) - b0);
    for (uint64_t k = 0; k < n && r == 0;) {
        if ((want && !want[k]) || zero[k]) {
            if (!want || want[k])
                zero_digest(block_len(ep->size, b0 + k), d[k]);
            k++;
            continue;
        }
        uint64_t m = 1; /* a run of data blocks, read at once */
        while (k + m < n && m < READ_BLOCKS && !zero[k + m] && (!want || want[k + m]))
            m++;
        uint64_t off = (b0 + k) * CK_BLOCK, len = mi_min(m * CK_BLOCK, ep->size - off);
        if ((r = ep->ops->pread(ep, buf, len, off)) < 0)
            break;
        for (uint64_t i = 0; i < m; i++)
            hash(buf + i * CK_BLOCK, block_len(ep->size, b0 + k + i), d[k + i]);
        k += m;
    }
    return r;
}

static void seg_digest(const digest_t *d, uint64_t n, uint8_t *out)
{
    hash(d, n * CK_DIGEST, out);
}

static void to_hex(const uint8_t *d, char *hex)
{
    for (int i = 0; i < CK_DIGEST; i++)
        snprintf(hex + 2 * i, 3, "%02x", d[i]);
}

/* The image's hash from its segments' digests. */
static void final_digest(const digest_t *s, uint64_t nseg, uint64_t size, char *hex)
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    uint8_t le[8], out[CK_DIGEST];
    for (int i = 0; i < 8; i++)
        le[i] = (uint8_t)(size >> (8 * i));
    EVP_DigestInit_ex(ctx, EVP_sha256(), NULL);
    EVP_DigestUpdate(ctx, s, nseg * CK_DIGEST);
    EVP_DigestUpdate(ctx, le, sizeof le);
    EVP_DigestFinal_ex(ctx, out, NULL);
    EVP_MD_CTX_free(ctx);
    to_hex(out, hex);
}

/* ---- checksum_image: segments over worker threads ---- */

struct ck_run {
    struct ep *ep;
    digest_t *seg;
    uint64_t nseg, next;
    int err;
    pthread_mutex_t mu;
};

static void *ck_worker(void *arg)
{
    struct ck_run *w = arg;
    uint8_t *buf = malloc(READ_BLOCKS * CK_BLOCK);
    digest_t *d = malloc(CK_SEG_BLOCKS * sizeof *d);
    int r = buf && d ? 0 : mi_seterr(ENOMEM, "out of memory");
    for (;;) {
        pthread_mutex_lock(&w->mu);
        if (r < 0 && !w->err)
            w->err = r;
        uint64_t j = w->err ? w->nseg : w->next++;
        pthread_mutex_unlock(&w->mu);
        if (j >= w->nseg)
            break;
        if ((r = seg_blocks(w->ep, j, NULL, buf, d)) == 0)
            seg_digest(d, mi_min(CK_SEG_BLOCKS, nblocks(w->ep->size) - j * CK_SEG_BLOCKS), w->seg[j]);
    }
    free(buf);
    free(d);
    return NULL;
}

int checksum_image(struct ep *ep, unsigned threads, char *hex)
{
    struct ck_run w = {.ep = ep, .nseg = nsegs(ep->size), .mu = PTHREAD_MUTEX_INITIALIZER};
    w.seg = malloc((w.nseg ? w.nseg : 1) * sizeof *w.seg);
    if (!w.seg)
        return mi_seterr(ENOMEM, "%s: out of memory", ep->name);
    threads = (unsigned)mi_max(1, mi_min(threads ? threads : 1, mi_max(w.nseg, 1)));
    pthread_t tid[64];
    unsigned started = 0;
    for (; started < threads && started < 64; started++)
        if (pthread_create(&tid[started], NULL, ck_worker, &w) != 0)
            break;
    if (!started)
        ck_worker(&w);
    for (unsigned i = 0; i < started; i++)
        pthread_join(tid[i], NULL);
    if (w.err == 0)
        final_digest(w.seg, w.nseg, ep->size, hex);
    free(w.seg);
    return w.err;
}

/* ---- fed in any order (copy --checksum) ---- */

struct ck_seg {
    digest_t *d;     /* while open */
    bool *seen;
    uint32_t nseen;
    bool done;       /* its digest is in ck.seg */
};

struct ck {
    uint64_t size, nseg;
    pthread_mutex_t mu;
    struct ck_seg *segs;
    digest_t *seg;
};

struct ck *ck_new(uint64_t size)
{
    struct ck *c = calloc(1, sizeof *c);
    uint64_t n = nsegs(size);
    if (c) {
        c->size = size, c->nseg = n;
        c->segs = calloc(n ? n : 1, sizeof *c->segs);
        c->seg = malloc((n ? n : 1) * sizeof *c->seg);
        pthread_mutex_init(&c->mu, NULL);
    }
    if (!c || !c->segs || !c->seg) {
        ck_free(c);
        mi_seterr(ENOMEM, "out of memory for the checksum");
        return NULL;
    }
    return c;
}

static uint64_t seg_len(const struct ck *c, uint64_t j)
{
    return mi_min(CK_SEG_BLOCKS, nblocks(c->size) - j * CK_SEG_BLOCKS);
}

/* Block b's digest (lock held); the segment closes when it has them all. */
static void put_block(struct ck *c, uint64_t b, const uint8_t *d)
{
    uint64_t j = b / CK_SEG_BLOCKS, k = b % CK_SEG_BLOCKS;
    struct ck_seg *s = &c->segs[j];
    if (s->done)
        return;
    if (!s->d && (!(s->d = malloc(CK_SEG_BLOCKS * sizeof *s->d)) ||
                  !(s->seen = calloc(CK_SEG_BLOCKS, sizeof *s->seen)))) {
        free(s->d); /* ck_final reads the segment instead */
        s->d = NULL;
        return;
    }
    if (!s->seen[k])
        s->seen[k] = true, s->nseen++;
    memcpy(s->d[k], d, CK_DIGEST);
    if (s->nseen == seg_len(c, j)) {
        seg_digest(s->d, s->nseen, c->seg[j]);
        free(s->d);
        free(s->seen);
        s->d = NULL, s->seen = NULL, s->done = true;
    }
}

void ck_feed(struct ck *c, uint64_t off, uint64_t len, const void *data)
{
    const uint8_t *p = data;
    for (uint64_t b = off / CK_BLOCK; b * CK_BLOCK < off + len && b < nblocks(c->size); b++) {
        uint64_t n = block_len(c->size, b);
        if (b * CK_BLOCK < off || b * CK_BLOCK + n > off + len)
            continue; /* not wholly here */
        digest_t d;
        hash(p + (b * CK_BLOCK - off), n, d);
        pthread_mutex_lock(&c->mu);
        put_block(c, b, d);
        pthread_mutex_unlock(&c->mu);
    }
}

int ck_final(struct ck *c, struct ep *src, char *hex)
{
    uint8_t *buf = malloc(READ_BLOCKS * CK_BLOCK);
    digest_t *d = malloc(CK_SEG_BLOCKS * sizeof *d);
    bool want[CK_SEG_BLOCKS];
    int r = buf && d ? 0 : mi_seterr(ENOMEM, "out of memory for the checksum");
    for (uint64_t j = 0; j < c->nseg && r == 0; j++) {
        struct ck_seg *s = &c->segs[j];
        if (s->done)
            continue;
        for (uint64_t k = 0; k < CK_SEG_BLOCKS; k++)
            want[k] = !s->seen || !s->seen[k];
        if ((r = seg_blocks(src, j, want, buf, d)) < 0)
            break;
        for (uint64_t k = 0; k < seg_len(c, j); k++)
            if (!want[k])
                memcpy(d[k], s->d[k], CK_DIGEST);
        seg_digest(d, seg_len(c, j), c->seg[j]);
    }
    if (r == 0)
        final_digest(c->seg, c->nseg, c->size, hex);
    free(buf);
    free(d);
    return r;
}

void ck_free(struct ck *c)
{
    if (!c)
        return;
    for (uint64_t j = 0; c->segs && j < c->nseg; j++)
        free(c->segs[j].d), free(c->segs[j].seen);
    free(c->segs);
    free(c->seg);
    pthread_mutex_destroy(&c->mu);
    free(c);
}
