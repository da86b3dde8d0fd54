/* cmd-compare.c: `mirror-img compare A B`: exit 0 identical, 1 different, 2 error.
 * Reads only what it must: ranges that read as zeros in both images are skipped. */
#include "cli.h"
#include "common.h"
#include "util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct cmp_opts {
    const char *fa, *fb, *a, *b;
    bool strict, quiet;
};

static const struct argp_option options[] = {
    {"format-a", 'f', "FMT", 0, "Format of A (default: probed)", 0},
    {"format-b", 'F', "FMT", 0, "Format of B (default: probed)", 0},
    {"strict", 's', 0, 0, "Images of different sizes differ (else the extra part must read as zeros)", 0},
    {"quiet", 'q', 0, 0, "Print nothing; the exit status tells", 0},
    {0},
};

static error_t parse_opt(int key, char *arg, struct argp_state *st)
{
    struct cmp_opts *o = st->input;
    switch (key) {
    case 'f': case 'F':
        if (strcmp(arg, "raw") && strcmp(arg, "qcow2") && strcmp(arg, "qcow"))
            argp_error(st, "-%c: unknown format '%s' (raw, qcow2 or qcow)", key, arg);
        *(key == 'f' ? &o->fa : &o->fb) = arg;
        break;
    case 's': o->strict = true; break;
    case 'q': o->quiet = true; break;
    case ARGP_KEY_ARG:
        if (!o->a) o->a = arg;
        else if (!o->b) o->b = arg;
        else argp_error(st, "expected two images");
        break;
    case ARGP_KEY_END:
        if (!o->b)
            argp_error(st, "expected two images A and B");
        break;
    default: return ARGP_ERR_UNKNOWN;
    }
    return 0;
}

static const struct argp cmp_argp = {options, parse_opt, "A B",
    "Compare what two images read as.  Exit status: 0 identical, 1 different (the first "
    "differing offset is printed), 2 error.", NULL, NULL, NULL};

/* Is [off, off+len) of ep all zeros as far as block status knows?  Sets *run to the
 * length of the answer's run. */
static int zero_run(struct ep *ep, uint64_t off, uint64_t max, uint64_t *run, bool *zero)
{
    int kind;
    int r = ep->ops->block_status(ep, off, max, 0, run, &kind);
    if (r < 0)
        return r;
    *zero = kind != EP_DATA;
    return 0;
}

/* Compare [off, end) of a and b (both within their sizes); *diff gets the first differing
 * offset or UINT64_MAX. */
static int compare_range(struct ep *a, struct ep *b, uint64_t off, uint64_t end, char *ba, char *bb,
                         uint64_t *diff)
{
    const uint64_t step = 4 * MI_MiB;
    *diff = UINT64_MAX;
    while (off < end) {
        uint64_t ra, rb;
        bool za, zb;
        int r;
        if ((r = zero_run(a, off, end - off, &ra, &za)) < 0 || (r = zero_run(b, off, end - off, &rb, &zb)) < 0)
            return r;
        uint64_t n = mi_min(mi_min(ra, rb), step);
        if (!(za && zb)) {
            if (!za && (r = a->ops->pread(a, ba, n, off)) < 0)
                return r;
            if (!zb && (r = b->ops->pread(b, bb, n, off)) < 0)
                return r;
            if (za)
                memset(ba, 0, n);
            if (zb)
                memset(bb, 0, n);
            if (memcmp(ba, bb, n)) {
                uint64_t i = 0;
                while (ba[i] == bb[i])
                    i++;
                *diff = off + i;
                return 0;
            }
        }
        off += n;
    }
    return 0;
}

/* The part of the larger image past the smaller one's end must read as zeros. */
static int tail_zero(struct ep *big, uint64_t off, char *buf, uint64_t *diff)
{
    const uint64_t step = 4 * MI_MiB;
    *diff = UINT64_MAX;
    while (off < big->size) {
        uint64_t run;
        bool z;
        int r = zero_run(big, off, big->size - off, &run, &z);
        if (r < 0)
            return r;
        uint64_t n = mi_min(run, step);
        if (!z) {
            if ((r = big->ops->pread(big, buf, n, off)) < 0)
                return r;
            if (!mi_is_zero(buf, n)) {
                uint64_t i = 0;
                while (!buf[i])
                    i++;
                *diff = off + i;
                return 0;
            }
        }
        off += n;
    }
    return 0;
}

static int run_compare(int argc, char **argv)
{
    struct cmp_opts o = {0};
    cli_parse(&cmp_argp, argc, argv, NULL, &o);
    struct ep *a = ep_open(o.a, &(struct ep_open_opts){.format = o.fa}, false);
    struct ep *b = a ? ep_open(o.b, &(struct ep_open_opts){.format = o.fb}, false) : NULL;
    char *ba = malloc(4 * MI_MiB), *bb = malloc(4 * MI_MiB);
    int code = MI_EXIT_USAGE;
    if (!a || !b || !ba || !bb) {
        if (ba && bb)
            cli_error_last();
        else
            cli_error("out of memory");
        goto out;
    }
    uint64_t diff;
    int r = compare_range(a, b, 0, mi_min(a->size, b->size), ba, bb, &diff);
    if (r == 0 && diff == UINT64_MAX && a->size != b->size) {
        if (o.strict) {
            if (!o.quiet)
                printf("Images differ in size: %llu and %llu bytes\n", (unsigned long long)a->size,
                       (unsigned long long)b->size);
            code = MI_EXIT_FAIL;
            goto out;
        }
        struct ep *big = a->size > b->size ? a : b;
        r = tail_zero(big, mi_min(a->size, b->size), ba, &diff);
    }
    if (r < 0) {
        cli_error_last();
        goto out;
    }
    if (diff != UINT64_MAX) {
        if (!o.quiet)
            printf("Content mismatch at offset %llu\n", (unsigned long long)diff);
        code = MI_EXIT_FAIL;
    } else {
        if (!o.quiet)
            printf("Images are identical.\n");
        code = MI_EXIT_OK;
    }
out:
    free(ba);
    free(bb);
    ep_close(b);
    ep_close(a);
    return code;
}

static const struct cli_cmd cmd_compare = {"compare", "compare two images (exit 0 same, 1 different, 2 error)", &cmp_argp, run_compare};
MI_COMMAND(cmd_compare);
