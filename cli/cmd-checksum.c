/* cmd-checksum.c: `mirror-img checksum [--json] IMAGE...`: the block-based hash of what
 * each image reads as (lib/checksum.h), printed the way sha256sum prints. */
#include "checksum.h"
#include "cli.h"
#include "common.h"
#include "json.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct ck_opts {
    const char *fmt, *password_file;
    char **images;
    int nimages;
    unsigned threads;
    bool json;
};

enum { OPT_JSON = 1000, OPT_PASSWORD_FILE };

static const struct argp_option options[] = {
    {"format", 'f', "FMT", 0, "Image format: raw, qcow2 or qcow (default: probed)", 0},
    {"threads", 'j', "N", 0, "Hash with N threads (default: the CPUs, at most 16)", 0},
    {"json", OPT_JSON, 0, 0, "Print JSON", 0},
    {"password-file", OPT_PASSWORD_FILE, "FILE", 0, "Password of a legacy AES-encrypted image", 0},
    {0},
};

static error_t parse_opt(int key, char *arg, struct argp_state *st)
{
    struct ck_opts *o = st->input;
    char *end;
    switch (key) {
    case 'f':
        if (strcmp(arg, "raw") && strcmp(arg, "qcow2") && strcmp(arg, "qcow"))
            argp_error(st, "-f: unknown format '%s' (raw, qcow2 or qcow)", arg);
        o->fmt = arg;
        break;
    case 'j':
        o->threads = (unsigned)strtoul(arg, &end, 10);
        if (*end || !*arg || o->threads < 1 || o->threads > 64)
            argp_error(st, "-j: '%s' is not a thread count from 1 to 64", arg);
        break;
    case OPT_JSON: o->json = true; break;
    case OPT_PASSWORD_FILE: o->password_file = arg; break;
    case ARGP_KEY_ARGS:
        o->images = st->argv + st->next;
        o->nimages = st->argc - st->next;
        break;
    case ARGP_KEY_NO_ARGS: argp_error(st, "expected an IMAGE"); break;
    default: return ARGP_ERR_UNKNOWN;
    }
    return 0;
}

static const struct argp ck_argp = {options, parse_opt, "IMAGE...",
    "Print a block-based SHA-256 hash of what each image reads as (the guest's view: the "
    "backing chain included), as sha256sum prints: HASH, two spaces, IMAGE.  The same "
    "content at the same virtual size gives the same hash in every format (raw, qcow2, "
    "NBD).  Algorithm " CK_ALGORITHM ": see the man page.", NULL, NULL, NULL};

static int one(const struct ck_opts *o, const char *name, struct json *j)
{
    struct ep *ep = ep_open(name, &(struct ep_open_opts){.format = o->fmt,
                            .password_file = o->password_file}, false);
    if (!ep)
        return -1;
    char hex[2 * CK_DIGEST + 1];
    int r = checksum_image(ep, o->threads, hex);
    uint64_t size = ep->size;
    ep_close(ep);
    if (r < 0)
        return -1;
    if (!o->json) {
        printf("%s  %s\n", hex, name);
        return 0;
    }
    json_obj_begin(j, NULL);
    json_str_member(j, "image", name);
    json_str_member(j, "checksum", hex);
    json_str_member(j, "algorithm", CK_ALGORITHM);
    json_u64_member(j, "virtual-size", size);
    json_obj_end(j);
    return 0;
}

static int run_checksum(int argc, char **argv)
{
    struct ck_opts o = {.threads = mi_default_threads()};
    cli_parse(&ck_argp, argc, argv, NULL, &o);
    struct json j;
    json_init(&j);
    if (o.json)
        json_arr_begin(&j, NULL);
    int status = MI_EXIT_OK;
    for (int i = 0; i < o.nimages; i++)
        if (one(&o, o.images[i], &j) < 0) {
            cli_error_last();
            status = MI_EXIT_FAIL;
        }
    if (o.json) {
        json_arr_end(&j);
        printf("%s\n", json_str(&j));
    }
    json_free(&j);
    return status;
}

static const struct cli_cmd cmd_checksum = {"checksum", "print a block-based hash of what an image reads as", &ck_argp, run_checksum};
MI_COMMAND(cmd_checksum);
