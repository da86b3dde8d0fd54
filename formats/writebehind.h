/* writebehind.h: keep a big copy from flooding the page cache (raw and qcow2 targets).
 *
 * Without it, a copy leaves the whole image dirty in memory and the final flush writes it
 * all at once; on a machine whose free memory is cold (a VM whose host reclaimed it) every
 * fresh page cache page is expensive to touch, and the copy slows down as it goes.  So,
 * as nbdcopy does: after each write, start writeback of what was just written, then wait
 * for the previous write of the same thread to reach the disk and drop its pages.  The
 * next writes reuse those warm pages, dirty memory stays at a few requests, and the final
 * flush has little left to do.  Not for tmpfs or ramfs, where the page cache is the file.
 *
 * Errors: waiting for writeback reports a write error once per open file description and
 * then forgets it.  So the waiting happens on a second description of the file, and the
 * target's own descriptor still gets the error from its final fsync: a failed writeback
 * fails the copy, whatever happened to the request that wrote it.
 */
#ifndef MI_WRITEBEHIND_H
#define MI_WRITEBEHIND_H

#include <stdint.h>

/* A second description of fd for write-behind, or -1 when it is not worth it (not a
 * regular file or block device, or one in memory) or not possible.  Close it with
 * close(). */
int wb_open(int fd);

/* After a successful write of [off, off+len) through the target's descriptor, on behalf
 * of owner (one endpoint).  Never fails: errors surface at the final fsync. */
void wb_after_write(const void *owner, int wb_fd, uint64_t off, uint64_t len);

#endif
