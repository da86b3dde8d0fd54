/* target.h: the target of `copy`: a new image (raw or qcow2, with --sync=top's backing
 * name), an existing one written into (-n), or one replaced (--force), refused when it is
 * the source or in its backing chain, or smaller than the source. */
#ifndef MI_TARGET_H
#define MI_TARGET_H

#include "endpoint.h"

#include <stdbool.h>

struct target_opts {
    const char *src, *dst;      /* the names given */
    const char *dst_fmt;        /* -O, NULL: the source's (qcow v1 becomes qcow2) */
    bool existing, force;       /* -n, --force */
    bool sync_top;              /* the target names the source's backing file */
    bool compress;              /* -c */
    struct ep_create_opts create; /* -o */
};

struct target {
    struct ep *ep;
    bool created;           /* we made the file: remove it on failure */
    uint64_t rounded_from;  /* a qcow2's size rounded up to 512 from this (0: not) */
};

/* The backing name a --sync=top target of src records (si: src's info), as QEMU's
 * absolute-paths mode does: the backing file's absolute path, or src's own relative name
 * where it still names the same file from dst's directory.  0 or -errno. */
int target_backing_name(const struct ep_info *si, const char *src, const char *dst,
                        char *out, size_t size);

/* copy --bitmaps: src's persistent bitmaps into the new qcow2 dst (stored at its close).
 * Refuses a bitmap in use.  0 or -errno with a message. */
int target_copy_bitmaps(struct ep *src, struct ep *dst);

/* Open or create the target for src (si: its info).  Returns 0 or -errno with a message. */
int target_open(const struct target_opts *o, struct ep *src, const struct ep_info *si, struct target *t);

#endif
