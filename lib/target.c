/* target.c: see target.h. */
#include "target.h"
#include "util.h"

#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* The target's format: -O, else the source's (qcow v1 sources become qcow2). */
static const char *target_format(const struct target_opts *o, const struct ep *src, const char *dst)
{
    if (ep_is_nbd_uri(dst))
        return "raw";
    if (o->dst_fmt)
        return o->dst_fmt;
    const char *f = ep_format(src);
    return !strcmp(f, "qcow2") || !strcmp(f, "qcow") ? "qcow2" : "raw";
}

/* The backing name a --sync=top target records, as QEMU's absolute-paths mode does: the
 * backing file's absolute path, or the source's own relative name where it still names
 * the same file from the target's directory (a relative name resolves from there). */
int target_backing_name(const struct ep_info *si, const char *src, const char *dst,
                        char *out, size_t size)
{
    char d[PATH_MAX], rel[PATH_MAX * 2], abs[PATH_MAX];
    snprintf(d, sizeof d, "%s", dst);
    snprintf(rel, sizeof rel, "%s/%s", dirname(d), si->backing_file);
    const char *name = si->backing_file;
    if (name[0] != '/' && !mi_same_file(rel, si->backing_path)) {
        if (!realpath(si->backing_path, abs))
            return mi_seterr(errno, "%s: cannot resolve the backing file %s: %s", src,
                             si->backing_path, strerror(errno));
        name = abs;
    }
    if (strlen(name) >= size)
        return mi_seterr(ENAMETOOLONG, "%s: backing name too long", src);
    strcpy(out, name);
    return 0;
}

/* -n: write into what is there, in its format: -O's, else what it probes as when that is
 * raw or the source's format.  A qcow2 target of a raw source needs -O either way (-O raw
 * overwrites its bytes): guessing would write raw bytes over an image, or the reverse. */
static int open_existing(const struct target_opts *o, const char *fmt_default, struct target *t)
{
    const char *dst = o->dst, *fmt = o->dst_fmt;
    const char *probed = ep_probe(dst);
    if (!probed)
        return -EIO;
    if (!fmt && (!strcmp(probed, "raw") || !strcmp(probed, fmt_default)))
        fmt = probed;
    else if (!fmt)
        return mi_seterr(EINVAL, "%s: is a %s image; give -O %s to write into it as one, or "
                         "-O raw to overwrite its bytes", dst, probed, probed);
    else if (strcmp(fmt, "raw") && strcmp(probed, fmt))
        return mi_seterr(EINVAL, "%s: is %s, not %s", dst, probed, fmt);
    t->ep = ep_open(dst, &(struct ep_open_opts){.format = fmt}, true);
    if (!t->ep)
        return -EIO;
    struct ep_info info;
    if (o->sync_top && !strcmp(fmt, "qcow2") && ep_get_info(t->ep, &info, false) == 0 &&
        !info.backing_file[0]) {
        ep_close(t->ep);
        t->ep = NULL;
        return mi_seterr(EINVAL, "%s: has no backing file; --sync=top into an existing image "
                         "needs one (the source's top alone does not read as the source)", dst);
    }
    return 0;
}

/* A new image (or one replaced with --force). */
static int create_new(const struct target_opts *o, const char *fmt, struct ep *src,
                      const struct ep_info *si, struct target *t)
{
    const char *dst = o->dst;
    struct ep_create_opts c = o->create;
    char backing[PATH_MAX];
    c.format = fmt;
    c.size = src->size;
    if (!strcmp(fmt, "qcow2") && c.size % 512) {
        /* as qemu-img does: the tail past the source's end reads as zeros */
        c.size = mi_round_up(c.size, 512);
        t->rounded_from = src->size;
    }
    c.force = o->force;
    if (o->sync_top && si->backing_file[0]) {
        if (target_backing_name(si, o->src, dst, backing, sizeof backing) < 0)
            return -EINVAL;
        c.backing_file = backing;
        c.backing_format = si->backing_format[0] ? si->backing_format : NULL;
    }
    if (o->compress && strcmp(fmt, "qcow2"))
        return mi_seterr(EINVAL, "%s: -c needs a qcow2 target", dst);
    t->ep = ep_create(dst, &c);
    t->created = t->ep != NULL;
    return t->ep ? 0 : -EIO;
}

/* A local target: refused when it is the source or in its chain, else -n, new or --force. */
static int open_local(const struct target_opts *o, const char *fmt, struct ep *src,
                      const struct ep_info *si, struct target *t)
{
    const char *dst = o->dst;
    struct stat st;
    bool exists = lstat(dst, &st) == 0;
    if (exists && (mi_same_file(dst, o->src) ||
                   (si->backing_path[0] && mi_same_file(dst, si->backing_path))))
        return mi_seterr(EINVAL, "%s: is the source or in its backing chain; refusing to overwrite it", dst);
    if (o->existing) {
        if (!exists)
            return mi_seterr(ENOENT, "%s: does not exist (-n writes into an existing target)", dst);
        return open_existing(o, fmt, t);
    }
    if (exists && !o->force)
        return mi_seterr(EEXIST, "%s: already exists (use -n to write into it, or --force to replace it)", dst);
    if (exists && !S_ISREG(st.st_mode) && !S_ISLNK(st.st_mode))
        return mi_seterr(EINVAL, "%s: is not a regular file; use -n to write into it", dst);
    return create_new(o, fmt, src, si, t);
}

int target_open(const struct target_opts *o, struct ep *src, const struct ep_info *si, struct target *t)
{
    const char *dst = o->dst;
    const char *fmt = target_format(o, src, dst);
    if (o->sync_top && !strcmp(fmt, "raw"))
        return mi_seterr(EINVAL, "%s: --sync=top needs a qcow2 target (a raw target cannot name "
                         "a backing file)", dst);
    int r;
    if (ep_is_nbd_uri(dst))
        r = (t->ep = ep_open(dst, &(struct ep_open_opts){.format = "raw"}, true)) ? 0 : -EIO;
    else
        r = open_local(o, fmt, src, si, t);
    if (r < 0)
        return r;
    if (t->ep->size < src->size) {
        char b1[32], b2[32];
        mi_seterr(ENOSPC, "%s: target is smaller than the source (%s < %s)", dst,
                  mi_fmt_bytes(t->ep->size, b1, sizeof b1), mi_fmt_bytes(src->size, b2, sizeof b2));
        ep_close(t->ep);
        t->ep = NULL;
        return -ENOSPC;
    }
    return 0;
}

/* --bitmaps: one bit per granule, set where the source's bitmap says dirty. */
struct bits {
    uint8_t *b;
    unsigned g;
};

static void set_bits(void *ctx, uint64_t off, uint64_t len)
{
    struct bits *x = ctx;
    for (uint64_t i = off >> x->g; i <= (off + len - 1) >> x->g; i++)
        x->b[i / 8] |= (uint8_t)(1u << (i % 8));
}

int target_copy_bitmaps(struct ep *src, struct ep *dst)
{
    static struct ep_bitmap bm[256];
    unsigned n = 0;
    int r = src->ops->bitmaps(src, bm, 256, &n);
    for (unsigned i = 0; r == 0 && i < n && i < 256; i++) {
        if (bm[i].in_use)
            return mi_seterr(EINVAL, "%s: bitmap '%s' is in use: it may miss writes",
                             src->name, bm[i].name);
        struct bits x = {NULL, (unsigned)__builtin_ctzll(bm[i].granularity)};
        uint64_t nbytes = (((src->size + bm[i].granularity - 1) >> x.g) + 7) / 8;
        if (!(x.b = calloc(1, nbytes ? nbytes : 1)))
            return mi_seterr(ENOMEM, "out of memory");
        r = src->ops->dirty(src, bm[i].name, set_bits, &x);
        if (r == 0)
            r = dst->ops->add_bitmap(dst, &bm[i], x.b);
        free(x.b);
    }
    return r;
}
