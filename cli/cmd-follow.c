/* cmd-follow.c: `mirror-img follow --journal J SRC DST`, the live mirror: its options;
 * the engine is lib/sync.c (run through journal-run.c, shared with copy --incremental).
 *
 * File mode mirrors the source file to file (a qcow2 source yields a byte-identical
 * qcow2 file); disk mode mirrors the disk a qcow2 source holds (lib/sync.c).
 *
 *   start --> [full pass marked] --> drain --> READY (in sync) <--> writers dirty chunks
 *                                                  |
 *                     complete: quiesce -> drain -> flush -> [pivot] -> release -> exit 0
 */
#include "cli.h"
#include "common.h"
#include "nbd-config.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

enum { OPT_LEASE = 2000, OPT_AUTO_CONVERGE };

static const struct argp_option follow_options[] = {
    {0, 0, 0, 0, "Following:", 6},
    {"lease", OPT_LEASE, "DURATION", 0, "How long writers wait for a follower that stopped "
                                        "answering (e.g. 2s, 500ms; default 2s)", 6},
    {"auto-converge", OPT_AUTO_CONVERGE, 0, 0, "Slow the writers down, step by step, while "
                                               "they dirty faster than the target is updated", 6},
    {0},
};

static int parse_duration_ms(const char *s, uint64_t *ms)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || v < 0)
        return -1;
    if (!strcmp(end, "ms"))
        *ms = (uint64_t)v;
    else if (!strcmp(end, "s") || !*end)
        *ms = (uint64_t)(v * 1000);
    else
        return -1;
    return *ms >= 200 && *ms <= 3600 * 1000 ? 0 : -1; /* renewed every 100 ms */
}

static error_t follow_parse(int key, char *arg, struct argp_state *st)
{
    struct mi_opts *o = st->input;
    switch (key) {
    case ARGP_KEY_INIT:
        st->child_inputs[0] = o;
        break;
    case OPT_LEASE:
        if (parse_duration_ms(arg, &o->lease_ms) < 0)
            argp_error(st, "--lease: '%s' is not a duration from 200ms to 1h (e.g. 2s, 500ms)", arg);
        break;
    case OPT_AUTO_CONVERGE: o->auto_converge = true; break;
    default: return ARGP_ERR_UNKNOWN;
    }
    return 0;
}

static const struct argp_child children[] = {{&common_argp, 0, NULL, 0}, {0}};
static const struct argp follow_argp = {
    follow_options, follow_parse, "--journal J SRC DST",
    "Mirror SRC to DST while programs write SRC, until `mirror-img complete` or `cancel`.\v"
    "Writers must run under `mirror-img run --journal J SRC -- CMD`.  DST is a local file "
    "or an NBD URI.  File mode copies SRC file to file; disk mode (a qcow2 SRC with -O raw, "
    "into NBD, or with a backing chain) mirrors the disk it holds.  The control socket is J.sock "
    "unless --socket says otherwise.  Exit status: 0 completed, 1 failed, 2 usage error, "
    "3 cancelled.",
    children, NULL, NULL,
};

static int run_follow(int argc, char **argv)
{
    struct mi_opts o;
    mi_opts_defaults(&o, "follow");
    cli_parse(&follow_argp, argc, argv, NULL, &o);
    if (o.incremental)
        return cli_usage("follow", "--incremental is for copy");
    int code = mi_opts_check_journal(&o);
    if (code)
        return code;
    nbd_configure(&(struct nbd_config){o.tls_psk_file, o.tls_certificates, o.connections});
    return mi_run_journal(&o, true);
}

static const struct cli_cmd cmd_follow = {"follow", "mirror an image while programs write it", &follow_argp, run_follow};
MI_COMMAND(cmd_follow);
