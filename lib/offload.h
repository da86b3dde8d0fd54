/* offload.h: copy offload, where the file system does the work: data ranges of a source
 * file cloned into the target file (FICLONERANGE: XFS, btrfs; the extents are shared, so
 * the copy costs no space), and copy_file_range for what is not block-aligned there and on
 * NFS and SMB (server-side copies).  Elsewhere (tmpfs, ext4) reading and writing is as
 * fast and keeps zero detection, so nothing is tried: the target's file system type
 * decides (XFS, btrfs, OCFS2, bcachefs; NFS, SMB).  A "not between these files"
 * from the kernel is remembered: the next range goes straight to reading and writing.
 *
 * Both endpoints must say where a guest range is stored as plain bytes of a file
 * (ep_ops.extent): raw files, and the normal clusters of a qcow2 chain. */
#ifndef MI_OFFLOAD_H
#define MI_OFFLOAD_H

#include "endpoint.h"

#include <stdbool.h>
#include <stdint.h>

struct offload {
    bool on;                  /* tried at all (both sides are files, not turned off) */
    bool can_clone, can_cfr;  /* cleared at the first "not here" */
    uint32_t align;           /* the target file system's block size */
    uint64_t cloned;          /* bytes shared by FICLONERANGE */
    uint64_t offloaded;       /* bytes copied by the kernel (copy_file_range) */
};

/* Set o up for copies from src to dst (want: offload is allowed). */
void offload_init(struct offload *o, bool want, struct ep *src, struct ep *dst);

/* Offload as much of the guest range [a, a+len) (data in src) as the kernel takes;
 * returns the bytes done from a: the caller reads and writes the rest.  Thread-safe. */
uint64_t offload_run(struct offload *o, struct ep *src, struct ep *dst, uint64_t a, uint64_t len);

#endif
