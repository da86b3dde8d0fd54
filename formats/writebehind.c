/* writebehind.c: see writebehind.h. */
#include "writebehind.h"

#include <fcntl.h>
#include <linux/magic.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/vfs.h>

int wb_open(int fd)
{
    struct stat st;
    struct statfs sf;
    if (fstat(fd, &st) < 0 || !(S_ISREG(st.st_mode) || S_ISBLK(st.st_mode)))
        return -1;
    if (S_ISREG(st.st_mode) &&
        (fstatfs(fd, &sf) < 0 || sf.f_type == TMPFS_MAGIC || sf.f_type == RAMFS_MAGIC))
        return -1;
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    return open(path, O_RDONLY | O_CLOEXEC); /* -1 without /proc: no write-behind */
}

/* The previous write of this thread (workers write their own requests). */
static _Thread_local struct {
    const void *owner;
    int fd;
    uint64_t off, len;
} prev;

void wb_after_write(const void *owner, int wb_fd, uint64_t off, uint64_t len)
{
    /* Start writing what was just written, without waiting. */
    (void)sync_file_range(wb_fd, (off64_t)off, (off64_t)len, SYNC_FILE_RANGE_WRITE);
    if (prev.owner == owner && prev.fd == wb_fd && prev.len &&
        sync_file_range(wb_fd, (off64_t)prev.off, (off64_t)prev.len,
                        SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE |
                        SYNC_FILE_RANGE_WAIT_AFTER) == 0)
        (void)posix_fadvise(wb_fd, (off_t)prev.off, (off_t)prev.len, POSIX_FADV_DONTNEED);
    prev.owner = owner;
    prev.fd = wb_fd;
    prev.off = off;
    prev.len = len;
}
