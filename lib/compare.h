/* compare.h: the one comparer of two images, driven by block status, for `compare`,
 * `copy --verify` and the incremental verify (`copy --incremental --verify`).
 *
 * Order of the answers: [0, length) (or the common part) is compared first, so a content
 * difference there is CMP_DIFFER even when the sizes differ too; only then do the sizes
 * count (strict: CMP_SIZE; else the larger one's tail must read as zeros).
 */
#ifndef MI_COMPARE_H
#define MI_COMPARE_H

#include "endpoint.h"

#include <stdbool.h>
#include <stdint.h>

/* Options (zero-initialised = compare the whole images, non-strict). */
struct compare_opts {
    bool strict;        /* images of different sizes differ (CMP_SIZE) */
    uint64_t length;    /* compare only [0, length) of both (0: all); both must be at least that long, else CMP_SIZE */
    /* Optional (incremental verify): a difference inside the granule-aligned range
     * [g, g+granule) is read again up to 3 times, 20 ms apart; it is forgiven (the
     * comparison goes on after the granule) when forgive(ctx, g) returns true (the
     * writers changed that chunk since: it is dirty again). */
    uint64_t granule;
    bool (*forgive)(void *ctx, uint64_t off);
    void *ctx;
};
enum compare_verdict { CMP_SAME = 0, CMP_DIFFER = 1, CMP_SIZE = 2 };
struct compare_result {
    int verdict;      /* enum compare_verdict */
    uint64_t offset;  /* CMP_DIFFER: the first differing byte */
};
/* Compare what a and b read as (a guest's view).  Ranges both report as zero (block
 * status) are not read; where the sizes differ (non-strict, no length) the larger one's
 * tail must read as zeros.  Returns 0 with *res filled, or -errno with a message
 * (mi_seterr) on a read error or out of memory. */
int compare_images(struct ep *a, struct ep *b, const struct compare_opts *o, struct compare_result *res);

#endif
