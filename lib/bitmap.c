/* bitmap.c: see bitmap.h.  Sets and clears are atomic per word, so workers and the seeding
 * thread may work on the same bitmap at once. */
#include "bitmap.h"

#include <errno.h>
#include <stdlib.h>

int bitmap_init(struct bitmap *b, uint64_t nbits)
{
    b->nbits = nbits;
    b->nwords = (nbits + 63) / 64;
    b->words = calloc(b->nwords ? b->nwords : 1, sizeof *b->words);
    return b->words ? 0 : -ENOMEM;
}

int bitmap_grow(struct bitmap *b, uint64_t nbits)
{
    if (nbits <= b->nbits)
        return 0;
    uint64_t nwords = (nbits + 63) / 64;
    if (nwords > b->nwords) {
        uint64_t *w = realloc(b->words, nwords * sizeof *w);
        if (!w)
            return -ENOMEM;
        for (uint64_t i = b->nwords; i < nwords; i++)
            w[i] = 0;
        b->words = w;
        b->nwords = nwords;
    }
    b->nbits = nbits; /* the tail bits of the old last word were clear */
    return 0;
}

void bitmap_free(struct bitmap *b)
{
    free(b->words);
    b->words = NULL;
    b->nbits = b->nwords = 0;
}

/* Mask of bits [lo, hi) within one word, 0 <= lo < hi <= 64. */
static inline uint64_t mask(unsigned lo, unsigned hi)
{
    uint64_t m = hi == 64 ? ~0ULL : (1ULL << hi) - 1;
    return m & ~((1ULL << lo) - 1);
}

static void apply(struct bitmap *b, uint64_t first, uint64_t count, bool set)
{
    if (first >= b->nbits)
        return;
    if (count > b->nbits - first)
        count = b->nbits - first;
    uint64_t end = first + count;
    while (first < end) {
        uint64_t w = first / 64;
        unsigned lo = first % 64;
        unsigned hi = (end - w * 64) >= 64 ? 64 : (unsigned)(end - w * 64);
        uint64_t m = mask(lo, hi);
        if (set)
            __atomic_fetch_or(&b->words[w], m, __ATOMIC_SEQ_CST);
        else
            __atomic_fetch_and(&b->words[w], ~m, __ATOMIC_SEQ_CST);
        first = w * 64 + hi;
    }
}

void bitmap_set_range(struct bitmap *b, uint64_t first, uint64_t count) { apply(b, first, count, true); }
void bitmap_clear_range(struct bitmap *b, uint64_t first, uint64_t count) { apply(b, first, count, false); }

bool bitmap_test(const struct bitmap *b, uint64_t i)
{
    if (i >= b->nbits)
        return false;
    return (__atomic_load_n(&b->words[i / 64], __ATOMIC_RELAXED) >> (i % 64)) & 1;
}

static uint64_t next(const struct bitmap *b, uint64_t i, uint64_t end, bool want_set)
{
    if (end > b->nbits)
        end = b->nbits;
    while (i < end) {
        uint64_t w = __atomic_load_n(&b->words[i / 64], __ATOMIC_RELAXED);
        if (!want_set)
            w = ~w;
        w &= ~0ULL << (i % 64);
        if (w) {
            uint64_t r = (i / 64) * 64 + (uint64_t)__builtin_ctzll(w);
            return r < end ? r : end;
        }
        i = (i / 64 + 1) * 64;
    }
    return end;
}

uint64_t bitmap_next_set(const struct bitmap *b, uint64_t i) { return next(b, i, b->nbits, true); }
uint64_t bitmap_next_clear(const struct bitmap *b, uint64_t i) { return next(b, i, b->nbits, false); }
uint64_t bitmap_next_set_before(const struct bitmap *b, uint64_t i, uint64_t end)
{
    return next(b, i, end, true);
}

uint64_t bitmap_count(const struct bitmap *b)
{
    uint64_t n = 0;
    for (uint64_t w = 0; w < b->nwords; w++)
        n += (uint64_t)__builtin_popcountll(__atomic_load_n(&b->words[w], __ATOMIC_RELAXED));
    return n;
}

uint64_t bitmap_take_run(struct bitmap *b, uint64_t i, uint64_t max, uint64_t *first)
{
    uint64_t start = bitmap_next_set(b, i), n = 0;
    *first = start;
    /* Claim bit by bit with fetch_and: another thread may take the same bits at once, and
     * each bit must go to exactly one taker. */
    while (start + n < b->nbits && n < max) {
        uint64_t bit = start + n, m = 1ULL << (bit % 64);
        uint64_t old = __atomic_fetch_and(&b->words[bit / 64], ~m, __ATOMIC_SEQ_CST);
        if (!(old & m))
            break;
        n++;
    }
    return n;
}
