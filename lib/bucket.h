/* bucket.h: a token bucket for --speed.
 *
 * Tokens are bytes.  The rate may change at any time (set-speed); rate 0 means unlimited.
 * The clock is passed in, so a test can drive it.  Not thread-safe: the caller locks.
 */
#ifndef MI_BUCKET_H
#define MI_BUCKET_H

#include <stdint.h>

struct bucket {
    uint64_t rate;     /* bytes per second, 0 = unlimited */
    uint64_t capacity; /* burst, in bytes */
    double level;      /* tokens available (may go negative: a debt) */
    uint64_t last_ns;  /* clock at the last refill */
};

void bucket_init(struct bucket *b, uint64_t rate, uint64_t now_ns);
void bucket_adjust(struct bucket *b, uint64_t rate, uint64_t now_ns);
/* The rate, read from any thread without the bucket's lock. */
static inline uint64_t bucket_rate(const struct bucket *b)
{
    return __atomic_load_n(&b->rate, __ATOMIC_RELAXED);
}
/* Take n tokens at time now_ns; returns how long (ns) the caller must wait before going
 * on (0 = go now).  The tokens are taken in any case (the wait pays the debt). */
uint64_t bucket_run(struct bucket *b, uint64_t n, uint64_t now_ns);

#endif
