/* raw.c: raw image files and block devices.
 *
 * Holes are found with SEEK_DATA/SEEK_HOLE (a filesystem without them answers "all data");
 * zeroes are punched (keeping the size) or, when that is not supported, written.
 *
 * Speed notes (measured with `make bench`):
 * - SEEK_HOLE from inside a data extent scans the page cache to the extent's end, so
 *   asking it once per request costs O(extent) each time: a dense 1 GiB file took 1 s of
 *   CPU in lseek alone.  The data extents found are remembered (the memo below) and later
 *   questions inside them answered without a syscall.  Only data is remembered: a hole
 *   may fill up behind our back (follow copies a live source), but "data" is always a
 *   safe answer (reading it returns whatever is there now, zeros included).
 * - Buffered writes to one regular file serialize on its inode lock in the kernel, where
 *   a waiting writer spins; one writer at a time here lets the others sleep instead.
 * - A target on a disk gets write-behind (writebehind.h).
 */
#include "endpoint.h"
#include "util.h"
#include "writebehind.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

/* Data extents seen by SEEK_HOLE, sorted by start (a merge may leave two overlapping,
 * which is harmless: each is data); at most MEMO_MAX of them (1 MiB). */
#define MEMO_MAX 65536
struct extent {
    uint64_t start, end;
};

struct raw {
    struct ep ep;
    int fd;
    bool is_blk;
    bool is_reg;
    bool can_seek_data; /* cleared on the first EINVAL/ENOTSUP from SEEK_DATA */
    bool can_punch;     /* cleared on the first EOPNOTSUPP from fallocate */
    bool can_zero_range;
    int wb_fd;          /* write-behind (writebehind.h): a target not in memory, else -1 */

    pthread_mutex_t memo_lock;
    struct extent *memo;
    size_t nmemo, memo_cap;

    pthread_mutex_t write_lock; /* regular files: one buffered writer at a time */
};

/* With memo_lock held: the index of the last extent starting at or before off, or -1. */
static ptrdiff_t memo_find(const struct raw *r, uint64_t off)
{
    ptrdiff_t lo = 0, hi = (ptrdiff_t)r->nmemo - 1, found = -1;
    while (lo <= hi) {
        ptrdiff_t mid = lo + (hi - lo) / 2;
        if (r->memo[mid].start <= off)
            found = mid, lo = mid + 1;
        else
            hi = mid - 1;
    }
    return found;
}

/* Is off inside a remembered data extent?  Then *end is that extent's end. */
static bool memo_lookup(struct raw *r, uint64_t off, uint64_t *end)
{
    pthread_mutex_lock(&r->memo_lock);
    ptrdiff_t i = memo_find(r, off);
    bool hit = i >= 0 && off < r->memo[i].end;
    if (hit)
        *end = r->memo[i].end;
    pthread_mutex_unlock(&r->memo_lock);
    return hit;
}

/* Remember that [start, end) is data (a miss above, so start lies in no extent). */
static void memo_add(struct raw *r, uint64_t start, uint64_t end)
{
    pthread_mutex_lock(&r->memo_lock);
    ptrdiff_t i = memo_find(r, start);
    size_t at = (size_t)(i + 1);
    if (i >= 0 && r->memo[i].end >= start) { /* touches its predecessor: extend it */
        if (end > r->memo[i].end)
            r->memo[i].end = end;
        goto out;
    }
    if (at < r->nmemo && r->memo[at].start <= end) /* reaches its successor: merge */ {
        r->memo[at].start = start;
        if (end > r->memo[at].end)
            r->memo[at].end = end;
        goto out;
    }
    if (r->nmemo == r->memo_cap) {
        size_t cap = r->memo_cap ? r->memo_cap * 2 : 256;
        struct extent *m = cap <= MEMO_MAX ? realloc(r->memo, cap * sizeof *m) : NULL;
        if (!m)
            goto out; /* a memo is an optimisation: stop remembering */
        r->memo = m;
        r->memo_cap = cap;
    }
    memmove(r->memo + at + 1, r->memo + at, (r->nmemo - at) * sizeof *r->memo);
    r->memo[at] = (struct extent){start, end};
    r->nmemo++;
out:
    pthread_mutex_unlock(&r->memo_lock);
}

static int raw_block_status(struct ep *ep, uint64_t off, uint64_t max, unsigned flags,
                            uint64_t *len, int *kind)
{
    struct raw *r = (struct raw *)ep;
    (void)flags;
    if (!__atomic_load_n(&r->can_seek_data, __ATOMIC_RELAXED))
        return ep_bs_all_data(ep, off, max, flags, len, kind);
    uint64_t end;
    if (memo_lookup(r, off, &end)) {
        *len = mi_min(end - off, max);
        *kind = EP_DATA;
        return 0;
    }
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
    else
        memo_add(r, off, (uint64_t)hole);
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
    if (r->is_reg)
        pthread_mutex_lock(&r->write_lock);
    int e = mi_pwrite_full(r->fd, buf, len, off);
    if (r->is_reg)
        pthread_mutex_unlock(&r->write_lock);
    if (e == 0 && r->wb_fd >= 0)
        wb_after_write(r, r->wb_fd, off, len);
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
    if (r->wb_fd >= 0)
        close(r->wb_fd);
    pthread_mutex_destroy(&r->memo_lock);
    pthread_mutex_destroy(&r->write_lock);
    free(r->memo);
    free(ep->name);
    free(r);
    return ret;
}

/* A regular file takes the new size (holes past the old end); a device keeps its own. */
static int raw_resize(struct ep *ep, uint64_t size)
{
    struct raw *r = (struct raw *)ep;
    if (!r->is_reg)
        return size <= ep->size ? 0 : mi_seterr(ENOSPC, "%s: a device cannot grow to %llu bytes",
                                               ep->name, (unsigned long long)size);
    if (ftruncate(r->fd, (off_t)size) < 0)
        return mi_seterr(errno, "%s: cannot resize to %llu bytes: %s", ep->name,
                         (unsigned long long)size, strerror(errno));
    ep->size = size;
    return 0;
}

/* A raw image is its own map: the file range is the guest range. */
static int raw_refresh(struct ep *ep, uint64_t off, uint64_t len, bool conservative,
                       void (*dirty)(void *ctx, uint64_t off, uint64_t len), void *ctx)
{
    (void)conservative;
    if (off < ep->size)
        dirty(ctx, off, mi_min(len, ep->size - off));
    return 0;
}

/* A regular file stores every byte at its own offset. */
static int raw_extent(struct ep *ep, uint64_t off, uint64_t max, int *fd, uint64_t *host,
                      uint64_t *len)
{
    struct raw *r = (struct raw *)ep;
    if (!r->is_reg || off >= ep->size)
        return -ENOTSUP;
    *fd = r->fd, *host = off, *len = mi_min(max, ep->size - off);
    return 0;
}

static const struct ep_ops raw_ops = {
    .name = "raw",
    .block_status = raw_block_status,
    .pread = raw_pread,
    .pwrite = raw_pwrite,
    .zero = raw_zero,
    .flush = raw_flush,
    .close = raw_close,
    .resize = raw_resize,
    .refresh = raw_refresh,
    .extent = raw_extent,
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
    r->wb_fd = -1;
    pthread_mutex_init(&r->memo_lock, NULL);
    pthread_mutex_init(&r->write_lock, NULL);
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
        r->is_reg = true;
        r->ep.caps |= EP_CAP_ONE_WRITER;
        r->ep.size = (uint64_t)st.st_size;
        r->ep.align = st.st_blksize > 512 && st.st_blksize <= 65536 ? (uint32_t)st.st_blksize : 4096;
        if (!mi_is_pow2(r->ep.align))
            r->ep.align = 4096;
    } else {
        mi_seterr(EINVAL, "%s: not a regular file or block device", name);
        raw_close(&r->ep);
        return NULL;
    }
    r->wb_fd = writable ? wb_open(fd) : -1;
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
