/* offload.c: see offload.h. */
#include "offload.h"
#include "util.h"

#include <errno.h>
#include <linux/fs.h>
#include <linux/magic.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#define SMB2_MAGIC 0xfe534d42u
#define CIFS_MAGIC 0xff534d42u
#define OCFS2_MAGIC 0x7461636fu
#define BCACHEFS_MAGIC 0xca451a4eu

/* The kernel errors that mean "not between these files": remembered, never retried. */
static bool not_here(int e)
{
    return e == EXDEV || e == EOPNOTSUPP || e == EINVAL || e == ENOTTY || e == ENOSYS ||
           e == EBADF || e == EPERM || e == ETXTBSY;
}

static bool get(const bool *b) { return __atomic_load_n(b, __ATOMIC_RELAXED); }
static void clear(bool *b) { __atomic_store_n(b, false, __ATOMIC_RELAXED); }

/* n bytes from (sfd, sh) to (dfd, dh): cloned where block-aligned, else copy_file_range
 * where allowed.  Returns the bytes done (0: read and write them). */
static uint64_t one(struct offload *o, int sfd, uint64_t sh, int dfd, uint64_t dh, uint64_t n)
{
    uint64_t whole = mi_round_down(n, o->align);
    if (get(&o->can_clone) && whole && !(sh % o->align) && !(dh % o->align)) {
        struct file_clone_range fcr = {.src_fd = sfd, .src_offset = sh, .src_length = whole,
                                       .dest_offset = dh};
        if (ioctl(dfd, FICLONERANGE, &fcr) == 0) {
            __atomic_fetch_add(&o->cloned, whole, __ATOMIC_RELAXED);
            return whole;
        }
        if (not_here(errno))
            clear(&o->can_clone);
        return 0;
    }
    if (!get(&o->can_cfr))
        return 0;
    loff_t so = (loff_t)sh, d = (loff_t)dh;
    uint64_t done = 0;
    while (done < n) {
        ssize_t k = copy_file_range(sfd, &so, dfd, &d, n - done, 0);
        if (k <= 0) {
            if (k < 0 && not_here(errno))
                clear(&o->can_cfr);
            break;
        }
        done += (uint64_t)k;
    }
    __atomic_fetch_add(&o->offloaded, done, __ATOMIC_RELAXED);
    return done;
}

uint64_t offload_run(struct offload *o, struct ep *src, struct ep *dst, uint64_t a, uint64_t len)
{
    uint64_t done = 0;
    while (done < len && (get(&o->can_clone) || get(&o->can_cfr))) {
        int sfd, dfd;
        uint64_t sh, dh, n, m;
        if (src->ops->extent(src, a + done, len - done, &sfd, &sh, &n) < 0 ||
            dst->ops->extent(dst, a + done, n, &dfd, &dh, &m) < 0)
            break;
        uint64_t k = one(o, sfd, sh, dfd, dh, mi_min(n, m));
        if (!k)
            break;
        done += k;
    }
    return done;
}

void offload_init(struct offload *o, bool want, struct ep *src, struct ep *dst)
{
    int dfd;
    uint64_t h, n;
    struct stat st;
    struct statfs sf;
    *o = (struct offload){0};
    /* the target's file (a raw target stores every offset); the source's per range */
    if (!want || !src->ops->extent || !dst->ops->extent || !src->size || !dst->size ||
        dst->ops->extent(dst, 0, 1, &dfd, &h, &n) < 0 || fstat(dfd, &st) < 0 ||
        fstatfs(dfd, &sf) < 0)
        return;
    uint32_t t = (uint32_t)sf.f_type;
    bool remote = t == NFS_SUPER_MAGIC || t == SMB_SUPER_MAGIC || t == SMB2_MAGIC || t == CIFS_MAGIC;
    bool shares = t == XFS_SUPER_MAGIC || t == BTRFS_SUPER_MAGIC || t == OCFS2_MAGIC ||
                  t == BCACHEFS_MAGIC;
    /* nothing is tried elsewhere (tmpfs, ext4): not even one refused call per copy */
    o->on = remote || shares;
    o->align = st.st_blksize > 0 ? (uint32_t)st.st_blksize : 4096;
    o->can_clone = shares || remote;
    o->can_cfr = o->on;
}
