/* endpoint.c: probing, dispatch to the backends, and the shared fallbacks. */
#include "endpoint.h"
#include "qcow2.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

bool ep_is_nbd_uri(const char *name)
{
    return !strncmp(name, "nbd://", 6) || !strncmp(name, "nbds://", 7) ||
           !strncmp(name, "nbd+unix://", 11) || !strncmp(name, "nbds+unix://", 12);
}

const char *ep_probe(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        mi_seterr(errno, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    /* Retried until complete: one short or interrupted read would probe an image as
     * raw.  A file shorter than the magic and version is raw. */
    unsigned char hdr[8];
    struct stat st;
    int e = fstat(fd, &st) < 0 ? -errno : mi_pread_full(fd, hdr, sizeof hdr, 0);
    close(fd);
    if (e < 0) {
        mi_seterr(-e, "%s: cannot read: %s", path, strerror(-e));
        return NULL;
    }
    if ((!S_ISREG(st.st_mode) || st.st_size >= 8) && !memcmp(hdr, "QFI\xfb", 4)) {
        uint32_t version = mi_be32(hdr + 4);
        return version == 1 ? "qcow" : "qcow2";
    }
    return "raw";
}

struct ep *ep_open(const char *name, const struct ep_open_opts *opts, bool writable)
{
    const char *fmt = opts->format;
    if (ep_is_nbd_uri(name)) {
        if (fmt && strcmp(fmt, "raw") && strcmp(fmt, "nbd")) {
            mi_seterr(EINVAL, "%s: an NBD export is raw, not %s", name, fmt);
            return NULL;
        }
        return nbd_open(name, writable, opts->bitmap);
    }
    if (!fmt && !(fmt = ep_probe(name)))
        return NULL;
    if (!strcmp(fmt, "raw"))
        return raw_open(name, writable);
    if (writable && !strcmp(fmt, "qcow2"))
        return qcow2_open_rw(name);
    if (writable) {
        mi_seterr(ENOTSUP, "%s: writing into an existing %s image is not supported "
                  "(use --force to replace it)", name, fmt);
        return NULL;
    }
    if (!strcmp(fmt, "qcow2")) {
        struct ep *ep = qcow2_open(name, opts, 0);
        return ep;
    }
    if (!strcmp(fmt, "qcow"))
        return qcow_open(name, opts);
    mi_seterr(EINVAL, "%s: unknown format '%s'", name, fmt);
    return NULL;
}

struct ep *ep_create(const char *name, const struct ep_create_opts *opts)
{
    if (ep_is_nbd_uri(name))
        return nbd_open(name, true, NULL);
    if (!strcmp(opts->format, "raw"))
        return raw_create(name, opts);
    if (!strcmp(opts->format, "qcow2"))
        return qcow2_create(name, opts);
    mi_seterr(EINVAL, "%s: cannot create format '%s'", name, opts->format);
    return NULL;
}

int ep_bs_all_data(struct ep *ep, uint64_t off, uint64_t max, unsigned flags,
                   uint64_t *len, int *kind)
{
    (void)ep, (void)off, (void)flags;
    *len = max;
    *kind = EP_DATA;
    return 0;
}

/* Zeroes by writing a zero buffer: for backends with no cheaper way. */
int ep_zero_by_write(struct ep *ep, uint64_t off, uint64_t len, unsigned flags)
{
    static const char zeros[64 * 1024];
    (void)flags;
    while (len) {
        uint64_t n = mi_min(len, sizeof zeros);
        int r = ep->ops->pwrite(ep, zeros, n, off);
        if (r < 0)
            return r;
        off += n, len -= n;
    }
    return 0;
}

int ep_write_readonly(struct ep *ep, const void *buf, uint64_t len, uint64_t off)
{
    (void)buf, (void)len, (void)off;
    return mi_seterr(EROFS, "%s: opened read-only", ep->name);
}

int ep_flush_noop(struct ep *ep)
{
    (void)ep;
    return 0;
}

int ep_get_info(struct ep *ep, struct ep_info *info, bool allocation)
{
    memset(info, 0, sizeof *info);
    info->format = ep_format(ep);
    info->virtual_size = ep->size;
    if (!ep_is_nbd_uri(ep->name)) {
        struct stat st;
        if (stat(ep->name, &st) == 0)
            info->file_size = (uint64_t)st.st_blocks * 512;
    }
    /* Allocation: sum of data runs in this layer (a pass over the metadata: only for info). */
    uint64_t off = allocation ? 0 : ep->size;
    while (off < ep->size) {
        uint64_t len;
        int kind;
        int r = ep->ops->block_status(ep, off, ep->size - off, EP_BS_TOP, &len, &kind);
        if (r < 0)
            return r;
        if (kind == EP_DATA)
            info->allocated += len;
        off += len;
    }
    return ep->ops->info ? ep->ops->info(ep, info) : 0;
}

int ep_resize(struct ep *ep, uint64_t size)
{
    if (size == ep->size)
        return 0;
    if (!ep->ops->resize || !ep->writable)
        return mi_seterr(ENOTSUP, "%s: cannot resize the target to %llu bytes (%s)", ep->name,
                         (unsigned long long)size, ep->writable ? "not supported" : "read-only");
    return ep->ops->resize(ep, size);
}

int ep_refresh(struct ep *ep, uint64_t off, uint64_t len, bool conservative,
               void (*dirty)(void *ctx, uint64_t off, uint64_t len), void *ctx)
{
    if (!ep->ops->refresh)
        return mi_seterr(ENOTSUP, "%s: %s images cannot be followed in disk mode", ep->name,
                         ep_format(ep));
    return ep->ops->refresh(ep, off, len, conservative, dirty, ctx);
}
