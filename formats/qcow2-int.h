/* qcow2-int.h: the qcow2 reader's state, shared by the reader (qcow2.c) and its live
 * mode (qcow2-live.c: follow's disk mode).  Not for other rooms: they see struct ep. */
#ifndef MI_QCOW2_INT_H
#define MI_QCOW2_INT_H

#include "endpoint.h"
#include "qcow2.h"
#include "util.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#ifndef L2_CACHE_BYTES /* the fuzz build shrinks the cache so that eviction gets exercised */
#define L2_CACHE_BYTES (16 * MI_MiB)
#endif
#define MAX_L1_BYTES (32 * MI_MiB)

struct l2slot {
    uint64_t *t; /* the table in host byte order */
    uint32_t l1i;
    bool ref;    /* clock: used since the hand last passed */
};

struct qcow2 {
    struct ep ep;
    int fd;
    int data_fd; /* the external data file, or fd */
    uint64_t file_size, data_size;
    int version; /* 1, 2 or 3 */
    unsigned cluster_bits, l2_bits, g_bits; /* g: granule (cluster or subcluster) */
    uint64_t cluster_size;
    size_t l2_bytes;
    bool extl2;
    uint32_t crypt;
    uint64_t incompat, compat, autoclear;
    unsigned refcount_order;
    int compression;
    uint32_t nb_snapshots;
    uint64_t size;
    uint32_t l1_size, l1_used;
    uint64_t l1_offset;
    uint64_t *l1; /* l1_used entries, host order */
    bool has_backing;
    char backing_name[QCOW2_MAX_BACKING_NAME + 1];
    char backing_fmt[32];    /* from the header extension, "" without one */
    char backing_probed[32]; /* top_only: probed when the extension is missing */
    char backing_path[4096];
    char data_file[QCOW2_MAX_BACKING_NAME + 1];
    char data_path[4096];
    struct ep *backing; /* NULL: none, or top_only */
    struct qcow2_hooks hooks;
    bool has_hooks;

    pthread_mutex_t lock;
    int32_t *slot_of; /* per L1 index: cache slot or -1 */
    struct l2slot *slots;
    uint64_t *slab; /* nslots tables: slot s is slab + s * l2_bytes / 8 */
    uint32_t nslots, nused, hand;

    /* the bitmaps extension (qcow2-bitmap.c): 0 entries without one */
    uint32_t bm_nb;
    uint64_t bm_dir_size, bm_dir_off;

    /* live mode (qcow2_live_open): every L2 table held in slot l1i, the reverse map */
    bool live;
    struct qcow2_rmap *rmap;
};

/* ep_ops.bitmaps and ep_ops.dirty of the reader (qcow2-bitmap.c). */
int qcow2_bitmaps(struct ep *ep, struct ep_bitmap *out, unsigned max, unsigned *n);
int qcow2_dirty(struct ep *ep, const char *name,
                void (*dirty)(void *ctx, uint64_t off, uint64_t len), void *ctx);

/* Read the L2 table of L1 index l1i from the file into a new buffer (host order). */
int qcow2_read_l2_at(struct qcow2 *q, uint64_t off, uint64_t **out);

/* Live mode: at most this many bytes of L2 tables are held. */
#define QCOW2_LIVE_MAX_TABLES (512 * MI_MiB)
/* Live mode: put table t (the caller's) in slot l1i, lock held or at open. */
void qcow2_live_install(struct qcow2 *q, uint32_t l1i, const uint64_t *t);
/* Live mode: checks at open and the reverse map (0 or -errno). */
int qcow2_live_init(struct qcow2 *q);
void qcow2_live_free(struct qcow2 *q);
/* ep_ops.refresh of the reader (endpoint.h's ep_refresh). */
int qcow2_live_refresh(struct ep *ep, uint64_t off, uint64_t len, bool conservative,
                       void (*dirty)(void *ctx, uint64_t off, uint64_t len), void *ctx);
#endif
