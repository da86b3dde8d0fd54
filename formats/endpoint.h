/* endpoint.h: every image behind one interface.
 *
 * An endpoint is a source or a target: a raw file or block device, a qcow2 image (read and
 * write), a legacy qcow image through libqcow, an NBD export.  Each backend embeds
 * struct ep first and points ops at a static const table.  Operations return 0 or -errno
 * and leave a message naming the object in mi_seterr(); they never print or exit.
 *
 * Threads: once open, pread, block_status, pwrite and zero may be called from several
 * threads at once on different ranges; a backend that keeps shared state locks it.
 * flush and close are called from one thread with no other call in flight.
 */
#ifndef MI_ENDPOINT_H
#define MI_ENDPOINT_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

/* What a range of the image holds. */
enum ep_kind {
    EP_DATA = 0,    /* allocated data: must be read */
    EP_ZERO = 1,    /* reads as zeros (hole, zero cluster, past a short backing file) */
    EP_UNALLOC = 2, /* only with EP_BS_TOP: not allocated in this layer, the backing decides */
};

/* block_status flags */
#define EP_BS_TOP 1u /* describe this layer only (for --sync=top) */

/* zero flags */
#define EP_ZERO_MAY_UNMAP 1u /* a hole or zero cluster is fine (not just zeros written) */
#define EP_ZERO_BACKING 2u   /* instead of zeros: unallocated here, reading the backing file
                              * again (only where EP_CAP_BACKING: --sync=top into an existing
                              * qcow2 target) */

/* capability flags (ep.caps) */
#define EP_CAP_BLOCK_STATUS 1u /* block_status gives real answers (else: all data) */
#define EP_CAP_ZERO 2u         /* zero is efficient (punch, zero cluster, NBD zero) */
#define EP_CAP_IS_ZERO 4u      /* a freshly created target: reads as zeros everywhere */
#define EP_CAP_FUA 8u          /* reserved */
#define EP_CAP_ONE_WRITER 16u  /* writes serialize (one file): the job pipes them to one thread */
#define EP_CAP_BACKING 32u     /* an existing image with a backing file: zero takes
                                * EP_ZERO_BACKING */

struct ep;
struct ep_info;
struct ep_bitmap;

struct ep_ops {
    const char *name; /* format name: "raw", "qcow2", "qcow", "nbd" */

    /* Describe the image from off: set *len (0 < *len <= max) to the length of the run
     * that starts at off and has one kind, and *kind to that kind.  Without EP_BS_TOP
     * the answer is the image as a guest sees it (EP_DATA or EP_ZERO, backing chain
     * included).  May return a shorter run than the truth; never a wrong kind (EP_DATA
     * is always a safe answer). */
    int (*block_status)(struct ep *ep, uint64_t off, uint64_t max, unsigned flags,
                        uint64_t *len, int *kind);

    /* Read len bytes at off (off + len <= size), as a guest sees them. */
    int (*pread)(struct ep *ep, void *buf, uint64_t len, uint64_t off);

    /* Write len bytes at off.  Callers align off and len to ep.align except at the end
     * of the image. */
    int (*pwrite)(struct ep *ep, const void *buf, uint64_t len, uint64_t off);

    /* Make [off, off+len) read as zeros (same alignment rules as pwrite). */
    int (*zero)(struct ep *ep, uint64_t off, uint64_t len, unsigned flags);

    /* Make everything written so far durable. */
    int (*flush)(struct ep *ep);

    /* Finish (a qcow2 writer writes its metadata here) and free.  Always frees, also on
     * error.  A target is closed only after a successful flush, or to be discarded. */
    int (*close)(struct ep *ep);

    /* Optional (may be NULL): fill format-specific fields of struct ep_info. */
    int (*info)(struct ep *ep, struct ep_info *info);

    /* Optional (may be NULL): give a writable image the new virtual size (follow: the
     * source file grew or shrank).  Sets ep.size.  Called with no other call in flight
     * on the range past the smaller of the two sizes. */
    int (*resize)(struct ep *ep, uint64_t size);

    /* Optional (may be NULL): where the guest range at off is stored as plain bytes of a
     * local file, for copy offload (FICLONERANGE, copy_file_range): *fd, the offset there
     * (*host) and the length of the run so stored (0 < *len <= max).  -ENOTSUP (no
     * message) where it is not: compressed or encrypted data, zeros, an NBD export. */
    int (*extent)(struct ep *ep, uint64_t off, uint64_t max, int *fd, uint64_t *host,
                  uint64_t *len);

    /* Optional (may be NULL): the image's persistent dirty bitmaps, at most max into out,
     * their count in *n (qcow2: the bitmaps extension). */
    int (*bitmaps)(struct ep *ep, struct ep_bitmap *out, unsigned max, unsigned *n);

    /* Optional (may be NULL): call dirty(ctx, off, len) for every guest range that bitmap
     * name marks dirty, in order.  Refuses (by name, with a message) a bitmap that is
     * missing, in use or inconsistent: its bits would not be the writes since it began. */
    int (*dirty)(struct ep *ep, const char *name,
                 void (*dirty)(void *ctx, uint64_t off, uint64_t len), void *ctx);

    /* Optional (may be NULL): store bitmap b at close, its bits one per granule of the
     * virtual size, least significant bit of each byte first (copy --bitmaps into a new
     * qcow2). */
    int (*add_bitmap)(struct ep *ep, const struct ep_bitmap *b, const uint8_t *bits);

    /* Optional (may be NULL): see ep_refresh. */
    int (*refresh)(struct ep *ep, uint64_t off, uint64_t len, bool conservative,
                   void (*dirty)(void *ctx, uint64_t off, uint64_t len), void *ctx);
};

struct ep {
    const struct ep_ops *ops;
    const char *format; /* the image format when it is not ops->name (qcow v1 shares the
                         * qcow2 reader's table); use ep_format() */
    char *name;        /* as the user named it: used in every message */
    uint64_t size;     /* virtual size in bytes */
    uint32_t align;    /* writes and zeroes should be aligned to this (power of two) */
    uint32_t caps;     /* EP_CAP_* */
    bool writable;
};

/* The endpoint's image format ("raw", "qcow2", "qcow", "nbd"). */
static inline const char *ep_format(const struct ep *ep)
{
    return ep->format ? ep->format : ep->ops->name;
}

/* Options for opening an image. */
struct ep_open_opts {
    const char *format;        /* "raw", "qcow2", "qcow", "nbd" or NULL to probe */
    const char *password_file; /* legacy AES qcow2 / qcow: file holding the password */
    bool no_backing;           /* refuse any backing chain (security option) */
    bool top_only;             /* open the top layer without its backing chain (--sync=top) */
    bool live;                 /* qcow2: the file is written while open (follow's disk
                                * mode): hold every table, answer ep_refresh */
    const char *bitmap;        /* NBD: also ask for qemu:dirty-bitmap:BITMAP (copy --bitmap) */
};

/* Options for creating a target. */
struct ep_create_opts {
    const char *format;           /* "raw" or "qcow2" */
    uint64_t size;                /* virtual size */
    uint32_t cluster_size;        /* qcow2: 0 = 64 KiB */
    int compat;                   /* qcow2: 2 = compat 0.10 (v2), 3 = 1.1 (v3, default) */
    int compression_type;         /* qcow2: 0 zlib (default), 1 zstd */
    int preallocation;            /* EP_PREALLOC_* */
    bool compress;                /* qcow2: write data clusters compressed (-c) */
    const char *backing_file;     /* qcow2: name recorded as the backing file (sync=top) */
    const char *backing_format;   /* qcow2: its format */
    bool force;                   /* replace an existing file */
};

enum { EP_PREALLOC_OFF, EP_PREALLOC_METADATA, EP_PREALLOC_FALLOC, EP_PREALLOC_FULL };

/* Probe the format of a local file: returns "raw", "qcow2" or "qcow" (v1), or NULL with
 * a message when the file cannot be read. */
const char *ep_probe(const char *path);

/* Open an image for reading (or for writing into it, with writable). */
struct ep *ep_open(const char *name, const struct ep_open_opts *opts, bool writable);

/* Create a new target image.  Refuses an existing file unless opts->force. */
struct ep *ep_create(const char *name, const struct ep_create_opts *opts);

/* Per-backend constructors used by ep_open/ep_create (formats/endpoint.c dispatches). */
struct ep *raw_open(const char *name, bool writable);
struct ep *raw_create(const char *name, const struct ep_create_opts *opts);
struct ep *qcow2_open(const char *name, const struct ep_open_opts *opts, int depth);
struct ep *qcow2_create(const char *name, const struct ep_create_opts *opts);
struct ep *qcow_open(const char *name, const struct ep_open_opts *opts); /* libqcow, v1 */
struct ep *nbd_open(const char *uri, bool writable, const char *bitmap);

/* True when name is an NBD URI (nbd://, nbds://, nbd+unix://, nbds+unix://). */
bool ep_is_nbd_uri(const char *name);

/* Shared fallbacks a backend can put in its ops table. */
int ep_bs_all_data(struct ep *ep, uint64_t off, uint64_t max, unsigned flags,
                   uint64_t *len, int *kind);
int ep_zero_by_write(struct ep *ep, uint64_t off, uint64_t len, unsigned flags);
int ep_write_readonly(struct ep *ep, const void *buf, uint64_t len, uint64_t off);
int ep_flush_noop(struct ep *ep);

/* follow's disk mode: the image file (opened with live) changed in [off, off+len) (file
 * offsets).  The reader re-reads what it holds of that range (header, L1, L2 tables) and
 * calls dirty(ctx, guest_off, guest_len) for every guest range whose content or mapping
 * may have changed: the data clusters stored there, and the entries that differ from
 * the tables it held.  With conservative (nothing is known of what the target saw: a
 * first pass, a restart), a re-read table counts every entry as changed and a change of
 * the header or the L1 table the whole disk.  A raw image maps the range to itself.
 * Returns 0, or -errno with a message (a read error; a change disk mode cannot follow:
 * the virtual size, the backing file). */
int ep_refresh(struct ep *ep, uint64_t off, uint64_t len, bool conservative,
               void (*dirty)(void *ctx, uint64_t off, uint64_t len), void *ctx);

/* Resize through ops->resize; -ENOTSUP with a message when the backend cannot. */
int ep_resize(struct ep *ep, uint64_t size);

/* Close helper: NULL-safe. */
static inline int ep_close(struct ep *ep) { return ep ? ep->ops->close(ep) : 0; }

/* A persistent dirty bitmap (info, copy --bitmap). */
struct ep_bitmap {
    char name[1024];
    uint64_t granularity;
    bool in_use;  /* not stored cleanly: its bits cannot be trusted */
    bool enabled; /* records writes ("auto") */
};

/* Info for `mirror-img info` (filled by the backend's info op through ep_info). */
struct ep_info {
    const char *format;
    uint64_t virtual_size;
    uint64_t file_size;       /* bytes the file takes (st_blocks * 512), 0 if unknown */
    uint64_t allocated;       /* guest bytes allocated in this layer */
    uint32_t cluster_size;    /* 0 if none */
    int version;              /* qcow2: 2 or 3; 0 otherwise */
    char features[256];       /* comma-separated: "lazy_refcounts,extended_l2,dirty,..." */
    char backing_file[1024];  /* as named in the image, "" if none */
    char backing_format[32];
    char backing_path[4096];  /* resolved path, "" if none */
};
/* Fill info; the allocated byte count takes a pass over the image's block status, so it is
 * computed only when allocation is true. */
int ep_get_info(struct ep *ep, struct ep_info *info, bool allocation);

#endif
