/* cmd-compare.c: `mirror-img compare A B`: exit 0 identical, 1 different, 2 error.
 * Reads only what it must (lib/compare.c): ranges that read as zeros in both images are
 * skipped. */
#include "cli.h"
#include "common.h"
#include "compare.h"

#include <stdio.h>
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

/* The verdict as the user reads it; the exit status. */
static int report(const struct cmp_opts *o, struct ep *a, struct ep *b, const struct compare_result *res)
{
    switch (res->verdict) {
    case CMP_SIZE:
        if (!o->quiet)
            printf("Images differ in size: %llu and %llu bytes\n", (unsigned long long)a->size,
                   (unsigned long long)b->size);
        return MI_EXIT_FAIL;
    case CMP_DIFFER:
        if (!o->quiet)
            printf("Content mismatch at offset %llu\n", (unsigned long long)res->offset);
        return MI_EXIT_FAIL;
    default:
        if (!o->quiet)
            printf("Images are identical.\n");
        return MI_EXIT_OK;
    }
}

static int run_compare(int argc, char **argv)
{
    struct cmp_opts o = {0};
    cli_parse(&cmp_argp, argc, argv, NULL, &o);
    struct ep *a = ep_open(o.a, &(struct ep_open_opts){.format = o.fa}, false);
    struct ep *b = a ? ep_open(o.b, &(struct ep_open_opts){.format = o.fb}, false) : NULL;
    struct compare_result res;
    int code = MI_EXIT_USAGE;
    if (!a || !b || compare_images(a, b, &(struct compare_opts){.strict = o.strict}, &res) < 0)
        cli_error_last();
    else
        code = report(&o, a, b, &res);
    ep_close(b);
    ep_close(a);
    return code;
}

static const struct cli_cmd cmd_compare = {"compare", "compare two images (exit 0 same, 1 different, 2 error)", &cmp_argp, run_compare};
MI_COMMAND(cmd_compare);
