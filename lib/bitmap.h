/* bitmap.h: a dirty bitmap, one bit per chunk, safe to set and clear from several threads.
 *
 *   chunk i covers bytes [i * granularity, (i + 1) * granularity) of the image;
 *   word w holds chunks 64w .. 64w+63, bit (i & 63) of word (i >> 6).
 *
 *   words: | 0: chunks 0..63 | 1: chunks 64..127 | ... | nwords-1 (tail bits unused) |
 */
#ifndef MI_BITMAP_H
#define MI_BITMAP_H

#include <stdbool.h>
#include <stdint.h>

struct bitmap {
    uint64_t *words;
    uint64_t nbits;
    uint64_t nwords;
};

int bitmap_init(struct bitmap *b, uint64_t nbits); /* all clear; -ENOMEM */
/* More bits, the new ones clear (no other call on b at the same time); -ENOMEM. */
int bitmap_grow(struct bitmap *b, uint64_t nbits);
void bitmap_free(struct bitmap *b);
void bitmap_set_range(struct bitmap *b, uint64_t first, uint64_t count);
void bitmap_clear_range(struct bitmap *b, uint64_t first, uint64_t count);
bool bitmap_test(const struct bitmap *b, uint64_t i);
/* First set bit at or after i, or b->nbits when none. */
uint64_t bitmap_next_set(const struct bitmap *b, uint64_t i);
/* The same, looking no further than end (returns end, or nbits if smaller, when none). */
uint64_t bitmap_next_set_before(const struct bitmap *b, uint64_t i, uint64_t end);
/* First clear bit at or after i, or b->nbits when none. */
uint64_t bitmap_next_clear(const struct bitmap *b, uint64_t i);
uint64_t bitmap_count(const struct bitmap *b);
/* Atomically clear up to max set bits starting at the first set bit at or after i, stopping
 * at the first clear bit; returns how many were cleared and sets *first.  0 when none. */
uint64_t bitmap_take_run(struct bitmap *b, uint64_t i, uint64_t max, uint64_t *first);

#endif
