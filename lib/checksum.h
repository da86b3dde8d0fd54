/* checksum.h: a block-based hash of what an image reads as (the idea of blkhash, as
 * nbdcopy --blkhash and blksum use it), SHA-256 throughout (OpenSSL's libcrypto):
 *
 *   block i  (64 KiB of the virtual disk; the last may be shorter):  d_i = H(bytes)
 *   segment j (1024 blocks, 64 MiB):                                s_j = H(d_1024j .. )
 *   image:                                    H(s_0 || s_1 || .. || le64(virtual size))
 *
 * The same guest content at the same virtual size gives the same hash in every format.
 * Blocks the image reports as zero cost nothing (their digest is computed once); segments
 * are hashed by several threads at once.
 */
#ifndef MI_CHECKSUM_H
#define MI_CHECKSUM_H

#include "endpoint.h"

#include <stdbool.h>
#include <stdint.h>

#define CK_BLOCK (64 * 1024)
#define CK_SEG_BLOCKS 1024
#define CK_DIGEST 32
#define CK_ALGORITHM "blkhash-sha256-64k"

/* The hash of ep (the guest view: the backing chain included) with threads workers into
 * hex (65 bytes).  0 or -errno with a message. */
int checksum_image(struct ep *ep, unsigned threads, char *hex);

/* Blocks fed in any order, from several threads (copy --checksum). */
struct ck;
struct ck *ck_new(uint64_t size);
/* [off, off+len) of the image, block aligned (len: whole blocks, or up to the end). */
void ck_feed(struct ck *c, uint64_t off, uint64_t len, const void *data);
/* The hash; blocks never fed are read from src (zeros by its block status cost nothing). */
int ck_final(struct ck *c, struct ep *src, char *hex);
void ck_free(struct ck *c);

#endif
