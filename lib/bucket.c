/* bucket.c: see bucket.h. */
#include "bucket.h"

static void refill(struct bucket *b, uint64_t now_ns)
{
    if (now_ns > b->last_ns) {
        b->level += (double)b->rate * (double)(now_ns - b->last_ns) / 1e9;
        if (b->level > (double)b->capacity)
            b->level = (double)b->capacity;
    }
    b->last_ns = now_ns;
}

void bucket_adjust(struct bucket *b, uint64_t rate, uint64_t now_ns)
{
    refill(b, now_ns);
    __atomic_store_n(&b->rate, rate, __ATOMIC_RELAXED); /* read without the lock by bucket_rate */
    /* A tenth of a second of burst keeps the rate smooth at the scale of a progress bar. */
    b->capacity = rate / 10 ? rate / 10 : 1;
    if (b->level > (double)b->capacity)
        b->level = (double)b->capacity;
}

void bucket_init(struct bucket *b, uint64_t rate, uint64_t now_ns)
{
    b->level = 0;
    b->last_ns = now_ns;
    bucket_adjust(b, rate, now_ns);
}

uint64_t bucket_run(struct bucket *b, uint64_t n, uint64_t now_ns)
{
    if (b->rate == 0) {
        b->last_ns = now_ns;
        b->level = 0;
        return 0;
    }
    refill(b, now_ns);
    b->level -= (double)n;
    if (b->level >= 0)
        return 0;
    return (uint64_t)(-b->level * 1e9 / (double)b->rate);
}
