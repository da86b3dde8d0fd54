/* raw.c: raw image files and block devices.
 *
 * Holes are found with SEEK_DATA/SEEK_HOLE (a filesystem without them answers "all data");
 * zeroes are punched (keeping the size) or, when that is not supported, written.
 */
#include "endpoint.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

struct raw {
    struct ep ep;
    int fd;
    bool is_blk;
    bool can_seek_data; /* cleared on the first EINVAL/ENOTSUP from SEEK_DATA */
    bool can_punch;     /* cleared on the first EOPNOTSUPP from fallocate */
    bool can_zero_range;
};

static int raw_block_status(struct ep *ep, uint64_t off, uint64_t max, unsigned flags,
                            uint64_t *len, int *kind)
{
    struct raw *r = (struct raw *)ep;
    (void)flags;
    if (!__atomic_load_n(&r->can_seek_data, __ATOMIC_RELAXED))
        return ep_bs_all_data(ep, off, max, flags, len, kind);
    off_t data = lseek(r->fd, (off_t)off, SEEK_DATA);
    if (data < 0) {
        if (errno == ENXIO) { /* no data from off to the end of the file */
            *len = max;
            *kind = EP_ZERO;
            return 0;
        }
        __atomic_store_n(&r->can_seek_data, false, __ATOMIC_RELAXED);
        return ep_bs_all_data(ep, off, max, flags, len, kind);
    }
    if ((uint64_t)data > off) {
        *len = mi_min((uint64_t)data - off, max);
        *kind = EP_ZERO;
        return 0;
    }
    off_t hole = lseek(r->fd, (off_t)off, SEEK_HOLE);
    if (hole < 0 || (uint64_t)hole <= off)
        hole = (off_t)(off + max);
    *len = mi_min((uint64_t)hole - off, max);
    *kind = EP_DATA;
    return 0;
}

static int raw_pread(struct ep *ep, void *buf, uint64_t len, uint64_t off)
{
    struct raw *r = (struct raw *)ep;
    int e = mi_pread_full(r->fd, buf, len, off);
    if (e < 0)
        return mi_seterr(-e, "%s: read error at offset %llu, length %llu: %s", ep->name,
                         (unsigned long long)off, (unsigned long long)len, strerror(-e));
    return 0;
}

static int raw_pwrite(struct ep *ep, const void *buf, uint64_t len, uint64_t off)
{
    struct raw *r = (struct raw *)ep;
    int e = mi_pwrite_full(r->fd, buf, len, off);
    if (e < 0)
        return mi_seterr(-e, "%s: write error at offset %llu, length %llu: %s", ep->name,
                         (unsigned long long)off, (unsigned long long)len, strerror(-e));
    return 0;
}

static int raw_zero(struct ep *ep, uint64_t off, uint64_t len, unsigned flags)
{
    struct raw *r = (struct raw *)ep;
    if ((flags & EP_ZERO_MAY_UNMAP) && __atomic_load_n(&r->can_punch, __ATOMIC_RELAXED)) {
        if (fallocate(r->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off,
                      (off_t)len) == 0)
            return 0;
        if (errno != EOPNOTSUPP && errno != ENOSYS && errno != EINVAL)
            return mi_seterr(errno, "%s: cannot zero offset %llu, length %llu: %s", ep->name,
                             (unsigned long long)off, (unsigned long long)len, strerror(errno));
        __atomic_store_n(&r->can_punch, false, __ATOMIC_RELAXED);
    }
    if (__atomic_load_n(&r->can_zero_range, __ATOMIC_RELAXED)) {
        if (fallocate(r->fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, (off_t)off,
                      (off_t)len) == 0)
            return 0;
        if (errno != EOPNOTSUPP && errno != ENOSYS && errno != EINVAL)
            return mi_seterr(errno, "%s: cannot zero offset %llu, length %llu: %s", ep->name,
                             (unsigned long long)off, (unsigned long long)len, strerror(errno));
        __atomic_store_n(&r->can_zero_range, false, __ATOMIC_RELAXED);
    }
    if (r->is_blk) {
        uint64_t range[2] = {off, len};
        if (ioctl(r->fd, BLKZEROOUT, range) == 0)
            return 0;
    }
    return ep_zero_by_write(ep, off, len, flags);
}

static int raw_flush(struct ep *ep)
{
    struct raw *r = (struct raw *)ep;
    if (fsync(r->fd) < 0 && errno != EINVAL && errno != EROFS)
        return mi_seterr(errno, "%s: flush failed: %s", ep->name, strerror(errno));
    return 0;
}

static int raw_close(struct ep *ep)
{
    struct raw *r = (struct raw *)ep;
    int ret = 0;
    if (close(r->fd) < 0 && ep->writable)
        ret = mi_seterr(errno, "%s: close failed: %s", ep->name, strerror(errno));
    free(ep->name);
    free(r);
    return ret;
}

static const struct ep_ops raw_ops = {
    .name = "raw",
    .block_status = raw_block_status,
    .pread = raw_pread,
    .pwrite = raw_pwrite,
    .zero = raw_zero,
    .flush = raw_flush,
    .close = raw_close,
};

static struct ep *raw_from_fd(const char *name, int fd, bool writable)
{
    struct stat st;
    if (fstat(fd, &st) < 0) {
        mi_seterr(errno, "%s: cannot stat: %s", name, strerror(errno));
        close(fd);
        return NULL;
    }
    struct raw *r = calloc(1, sizeof *r);
    if (!r || !(r->ep.name = strdup(name))) {
        free(r);
        close(fd);
        mi_seterr(ENOMEM, "%s: out of memory", name);
        return NULL;
    }
    r->fd = fd;
    r->ep.ops = &raw_ops;
    r->ep.writable = writable;
    r->ep.align = 512;
    r->ep.caps = EP_CAP_BLOCK_STATUS | EP_CAP_ZERO;
    r->can_seek_data = r->can_punch = r->can_zero_range = true;
    if (S_ISBLK(st.st_mode)) {
        uint64_t sz = 0;
        if (ioctl(fd, BLKGETSIZE64, &sz) < 0) {
            mi_seterr(errno, "%s: cannot get the device size: %s", name, strerror(errno));
            raw_close(&r->ep);
            return NULL;
        }
        r->ep.size = sz;
        r->is_blk = true;
        r->can_seek_data = false;
        r->can_punch = false; /* a discard may not read back as zeros */
    } else if (S_ISREG(st.st_mode)) {
        r->ep.size = (uint64_t)st.st_size;
        r->ep.align = st.st_blksize > 512 && st.st_blksize <= 65536 ? (uint32_t)st.st_blksize : 4096;
        if (!mi_is_pow2(r->ep.align))
            r->ep.align = 4096;
    } else {
        mi_seterr(EINVAL, "%s: not a regular file or block device", name);
        raw_close(&r->ep);
        return NULL;
    }
    return &r->ep;
}

struct ep *raw_open(const char *name, bool writable)
{
    int fd = open(name, (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC);
    if (fd < 0) {
        mi_seterr(errno, "%s: cannot open: %s", name, strerror(errno));
        return NULL;
    }
    return raw_from_fd(name, fd, writable);
}

struct ep *raw_create(const char *name, const struct ep_create_opts *opts)
{
    int fd = open(name, O_RDWR | O_CREAT | O_CLOEXEC | (opts->force ? O_TRUNC : O_EXCL), 0644);
    if (fd < 0) {
        mi_seterr(errno, "%s: cannot create: %s", name, strerror(errno));
        return NULL;
    }
    if (ftruncate(fd, (off_t)opts->size) < 0) {
        mi_seterr(errno, "%s: cannot set the size to %llu: %s", name,
                  (unsigned long long)opts->size, strerror(errno));
        close(fd);
        unlink(name);
        return NULL;
    }
    if (opts->preallocation == EP_PREALLOC_FALLOC || opts->preallocation == EP_PREALLOC_FULL)
        (void)posix_fallocate(fd, 0, (off_t)opts->size);
    struct ep *ep = raw_from_fd(name, fd, true);
    if (ep)
        ep->caps |= EP_CAP_IS_ZERO;
    return ep;
}
