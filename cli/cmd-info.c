/* cmd-info.c: `mirror-img info [--json] IMAGE`. */
#include "cli.h"
#include "common.h"
#include "json.h"
#include "nbd-config.h"
#include "util.h"

#include <stdio.h>
#include <string.h>

struct info_opts {
    const char *fmt, *image, *password_file;
    bool json;
};

enum { OPT_JSON = 1000, OPT_PASSWORD_FILE };

static const struct argp_option options[] = {
    {"format", 'f', "FMT", 0, "Image format: raw, qcow2 or qcow (default: probed)", 0},
    {"json", OPT_JSON, 0, 0, "Print JSON", 0},
    {"password-file", OPT_PASSWORD_FILE, "FILE", 0, "Password of a legacy AES-encrypted image", 0},
    {0},
};

static error_t parse_opt(int key, char *arg, struct argp_state *st)
{
    struct info_opts *o = st->input;
    switch (key) {
    case 'f':
        if (strcmp(arg, "raw") && strcmp(arg, "qcow2") && strcmp(arg, "qcow"))
            argp_error(st, "-f: unknown format '%s' (raw, qcow2 or qcow)", arg);
        o->fmt = arg;
        break;
    case OPT_JSON: o->json = true; break;
    case OPT_PASSWORD_FILE: o->password_file = arg; break;
    case ARGP_KEY_ARG:
        if (o->image)
            argp_error(st, "expected one IMAGE");
        o->image = arg;
        break;
    case ARGP_KEY_END:
        if (!o->image)
            argp_error(st, "expected an IMAGE");
        break;
    default: return ARGP_ERR_UNKNOWN;
    }
    return 0;
}

static const struct argp info_argp = {options, parse_opt, "IMAGE",
    "Show an image's format, virtual size, allocation, cluster size, features and backing chain.",
    NULL, NULL, NULL};

/* The bitmaps as qemu-img info --output=json shows them: name, granularity, flags. */
static void bitmaps_json(struct json *j, const struct ep_bitmap *bm, unsigned n)
{
    json_arr_begin(j, "bitmaps");
    for (unsigned i = 0; i < n; i++) {
        json_obj_begin(j, NULL);
        json_str_member(j, "name", bm[i].name);
        json_u64_member(j, "granularity", bm[i].granularity);
        json_arr_begin(j, "flags");
        if (bm[i].enabled)
            json_str_member(j, NULL, "auto");
        if (bm[i].in_use)
            json_str_member(j, NULL, "in-use");
        json_arr_end(j);
        json_obj_end(j);
    }
    json_arr_end(j);
}

/* One image's description, then its backing file's, down the chain. */
static int describe(const char *name, const struct info_opts *o, struct json *j, int depth)
{
    struct ep *ep = ep_open(name, &(struct ep_open_opts){.format = depth ? NULL : o->fmt,
                            .password_file = o->password_file, .top_only = true}, false);
    if (!ep)
        return -1;
    struct ep_info in;
    static struct ep_bitmap bm[64];
    unsigned nbm = 0;
    int r = ep_get_info(ep, &in, true);
    if (r == 0 && ep->ops->bitmaps && ep->ops->bitmaps(ep, bm, 64, &nbm) < 0) {
        nbm = 0; /* stale or broken bitmaps: the rest of the image is still described */
        mi_clearerr();
    }
    ep_close(ep);
    if (r < 0)
        return -1;
    nbm = nbm > 64 ? 64 : nbm;
    char b1[32], b2[32], b3[32];
    if (o->json) {
        json_obj_begin(j, NULL);
        json_str_member(j, "filename", name);
        json_str_member(j, "format", in.format);
        json_u64_member(j, "virtual-size", in.virtual_size);
        json_u64_member(j, "actual-size", in.file_size);
        json_u64_member(j, "allocated", in.allocated);
        if (in.cluster_size)
            json_u64_member(j, "cluster-size", in.cluster_size);
        if (in.version)
            json_u64_member(j, "version", (uint64_t)in.version);
        json_arr_begin(j, "features");
        char feats[sizeof in.features];
        snprintf(feats, sizeof feats, "%s", in.features);
        char *save = NULL;
        for (char *f = strtok_r(feats, ",", &save); f; f = strtok_r(NULL, ",", &save))
            json_str_member(j, NULL, f);
        json_arr_end(j);
        if (nbm)
            bitmaps_json(j, bm, nbm);
        if (in.backing_file[0]) {
            json_str_member(j, "backing-filename", in.backing_file);
            json_str_member(j, "full-backing-filename", in.backing_path);
            if (in.backing_format[0])
                json_str_member(j, "backing-filename-format", in.backing_format);
        }
        json_obj_end(j);
    } else {
        printf("%simage: %s\nformat: %s\nvirtual size: %s (%llu bytes)\ndisk size: %s\n"
               "allocated: %s\n", depth ? "\n" : "", name, in.format,
               mi_fmt_bytes(in.virtual_size, b1, sizeof b1), (unsigned long long)in.virtual_size,
               mi_fmt_bytes(in.file_size, b2, sizeof b2), mi_fmt_bytes(in.allocated, b3, sizeof b3));
        if (in.cluster_size)
            printf("cluster size: %u\n", in.cluster_size);
        if (in.version)
            printf("version: %d\n", in.version);
        if (in.features[0])
            printf("features: %s\n", in.features);
        for (unsigned i = 0; i < nbm; i++)
            printf("%s  %s: granularity %llu%s%s\n", i ? "" : "bitmaps:\n", bm[i].name,
                   (unsigned long long)bm[i].granularity, bm[i].enabled ? ", auto" : "",
                   bm[i].in_use ? ", in-use" : "");
        if (in.backing_file[0])
            printf("backing file: %s (actual path: %s)%s%s\n", in.backing_file, in.backing_path,
                   in.backing_format[0] ? "\nbacking file format: " : "", in.backing_format);
    }
    if (in.backing_path[0])
        return describe(in.backing_path, o, j, depth + 1);
    return 0;
}

static int run_info(int argc, char **argv)
{
    struct info_opts o = {0};
    cli_parse(&info_argp, argc, argv, NULL, &o);
    struct json j;
    json_init(&j);
    if (o.json)
        json_arr_begin(&j, NULL);
    int r = describe(o.image, &o, &j, 0);
    if (r < 0) {
        cli_error_last();
        json_free(&j);
        return MI_EXIT_FAIL;
    }
    if (o.json) {
        json_arr_end(&j);
        printf("%s\n", json_str(&j));
    }
    json_free(&j);
    return MI_EXIT_OK;
}

static const struct cli_cmd cmd_info = {"info", "show an image's format, size, allocation and backing chain", &info_argp, run_info};
MI_COMMAND(cmd_info);
