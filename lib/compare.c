/* compare.c: compare two images as a guest reads them, led by block status.
 *
 * One loop walks [off, end) in steps of at most 4 MiB, each step a run where both sides
 * keep one kind.  A step zero in both is skipped; a side that is zero there is memset
 * instead of read.  Past an image's end it reads as zeros, so the tail of the larger
 * image is the same loop against nothing.  With a forgive callback, a difference is
 * looked at again granule by granule (the writers may have changed that chunk since).
 */
#include "compare.h"
#include "util.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define STEP (4 * MI_MiB)
#define NO_DIFF UINT64_MAX
#define RETRIES 3

struct cmp {
    struct ep *ep[2];
    uint64_t size[2]; /* as at the start: a run never reads past these */
    char *buf[2];
    const struct compare_opts *o;
};

/* The run of one kind from off (at most max) on side i; past its end: zeros. */
static int side_run(struct cmp *c, int i, uint64_t off, uint64_t max, uint64_t *run, bool *zero)
{
    struct ep *ep = c->ep[i];
    if (off >= c->size[i]) {
        *run = max;
        *zero = true;
        return 0;
    }
    max = mi_min(max, c->size[i] - off);
    int kind;
    int r = ep->ops->block_status(ep, off, max, 0, run, &kind);
    if (r < 0)
        return r;
    *zero = kind != EP_DATA;
    if (*run == 0 || *run > max) { /* a broken answer: data is always safe, and ends */
        *run = max;
        *zero = false;
    }
    return 0;
}

/* Compare [off, off+n) once: *diff = the first differing offset or NO_DIFF. */
static int cmp_step(struct cmp *c, uint64_t off, uint64_t n, const bool zero[2], uint64_t *diff)
{
    for (int i = 0; i < 2; i++) {
        int r;
        if (zero[i])
            memset(c->buf[i], 0, n);
        else if ((r = c->ep[i]->ops->pread(c->ep[i], c->buf[i], n, off)) < 0)
            return r;
    }
    const char *a = c->buf[0], *b = c->buf[1];
    *diff = NO_DIFF;
    if (memcmp(a, b, n)) {
        uint64_t i = 0;
        while (a[i] == b[i])
            i++;
        *diff = off + i;
    }
    return 0;
}

/* One pass over [off, end): *diff = the first differing offset or NO_DIFF. */
static int cmp_range(struct cmp *c, uint64_t off, uint64_t end, uint64_t *diff)
{
    *diff = NO_DIFF;
    while (off < end) {
        uint64_t run[2];
        bool zero[2];
        int r;
        if ((r = side_run(c, 0, off, end - off, &run[0], &zero[0])) < 0 ||
            (r = side_run(c, 1, off, end - off, &run[1], &zero[1])) < 0)
            return r;
        uint64_t n = mi_min(mi_min(run[0], run[1]), STEP);
        if (!(zero[0] && zero[1])) {
            if ((r = cmp_step(c, off, n, zero, diff)) < 0 || *diff != NO_DIFF)
                return r;
        }
        off += n;
    }
    return 0;
}

/* The granule [g, ge) differs at *diff: forgive it, or read it again (20 ms apart) until
 * it matches.  *go_on when the comparison may go on after it; else *diff is the first
 * difference the last read found. */
static int recheck(struct cmp *c, uint64_t g, uint64_t ge, uint64_t *diff, bool *go_on)
{
    const struct compare_opts *o = c->o;
    for (int tries = 0;; tries++) {
        *go_on = o->forgive(o->ctx, g);
        if (*go_on || tries == RETRIES)
            return 0;
        nanosleep(&(struct timespec){0, 20 * 1000 * 1000}, NULL);
        int r = cmp_range(c, g, ge, diff);
        if (r < 0)
            return r;
        if (*diff == NO_DIFF) {
            *go_on = true;
            return 0;
        }
    }
}

/* [off, end) with the forgiving rechecks when the options ask for them. */
static int cmp_forgiving(struct cmp *c, uint64_t off, uint64_t end, uint64_t *diff)
{
    const struct compare_opts *o = c->o;
    for (;;) {
        int r = cmp_range(c, off, end, diff);
        if (r < 0 || *diff == NO_DIFF || !o->forgive || !o->granule)
            return r;
        uint64_t g = mi_round_down(*diff, o->granule);
        uint64_t ge = g + mi_min(o->granule, end - g);
        bool go_on;
        if ((r = recheck(c, g, ge, diff, &go_on)) < 0 || !go_on)
            return r;
        *diff = NO_DIFF;
        off = ge;
    }
}

/* The common part (or [0, length)), then the sizes. */
static int cmp_all(struct cmp *c, struct compare_result *res)
{
    const struct compare_opts *o = c->o;
    uint64_t small = mi_min(c->size[0], c->size[1]), big = mi_max(c->size[0], c->size[1]);
    uint64_t diff;
    int r = cmp_forgiving(c, 0, o->length ? o->length : small, &diff);
    if (r == 0 && diff == NO_DIFF && small != big) {
        if (o->strict) {
            res->verdict = CMP_SIZE;
            return 0;
        }
        if (!o->length)
            r = cmp_forgiving(c, small, big, &diff);
    }
    if (r == 0 && diff != NO_DIFF) {
        res->verdict = CMP_DIFFER;
        res->offset = diff;
    }
    return r;
}

int compare_images(struct ep *a, struct ep *b, const struct compare_opts *o, struct compare_result *res)
{
    static const struct compare_opts whole;
    struct cmp c = {.ep = {a, b}, .size = {a->size, b->size}, .o = o ? o : &whole};
    *res = (struct compare_result){.verdict = CMP_SAME};
    if (c.o->length && (c.size[0] < c.o->length || c.size[1] < c.o->length)) {
        res->verdict = CMP_SIZE;
        return 0;
    }
    c.buf[0] = malloc(STEP);
    c.buf[1] = malloc(STEP);
    int r = c.buf[0] && c.buf[1] ? cmp_all(&c, res) : mi_seterr(ENOMEM, "out of memory");
    free(c.buf[0]);
    free(c.buf[1]);
    return r;
}
