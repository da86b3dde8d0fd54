/* common.c: see common.h. */
#include "common.h"
#include "checksum.h"
#include "util.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

enum {
    OPT_FORCE = 1000, OPT_SYNC, OPT_TARGET_IS_ZERO, OPT_BUF_SIZE, OPT_ON_SRC, OPT_ON_TGT,
    OPT_JSON, OPT_SOCKET, OPT_JOURNAL, OPT_INCREMENTAL, OPT_VERIFY, OPT_PASSWORD_FILE,
    OPT_NO_BACKING, OPT_TLS_PSK, OPT_TLS_CERTS, OPT_CONNECTIONS, OPT_LEASE, OPT_AUTO_CONVERGE,
    OPT_CHECKSUM, OPT_NO_OFFLOAD, OPT_BITMAP, OPT_BITMAPS,
};

static const struct argp_option options[] = {
    {0, 0, 0, 0, "Formats:", 1},
    {"format", 'f', "FMT", 0, "Source format: raw, qcow2 or qcow (default: probed)", 1},
    {"target-format", 'O', "FMT", 0, "Target format: raw or qcow2 (default: the source's)", 1},
    {"options", 'o', "OPTS", 0, "qcow2 target options: cluster_size=SIZE, compat=0.10|1.1, "
     "compression_type=zlib|zstd, preallocation=off|metadata|falloc|full", 1},
    {"compress", 'c', 0, 0, "Write compressed clusters (qcow2 target)", 1},
    {"password-file", OPT_PASSWORD_FILE, "FILE", 0, "Password of a legacy AES-encrypted image", 1},
    {"no-backing", OPT_NO_BACKING, 0, 0, "Refuse a source with a backing chain", 1},
    {0, 0, 0, 0, "Target:", 2},
    {"existing", 'n', 0, 0, "Write into an existing target (at least as large as the source)", 2},
    {"force", OPT_FORCE, 0, 0, "Replace an existing target", 2},
    {"target-is-zero", OPT_TARGET_IS_ZERO, 0, 0, "The existing target reads as zeros: skip zero ranges", 2},
    {"sync", OPT_SYNC, "MODE", 0, "full (the whole chain, default) or top (the top layer only)", 2},
    {0, 0, 0, 0, "Engine:", 3},
    {"granularity", 'g', "SIZE", 0, "Dirty-bitmap chunk size, a power of two 512..64M (default 64K)", 3},
    {"buf-size", OPT_BUF_SIZE, "SIZE", 0, "Memory for buffers across all workers (default 16M)", 3},
    {"no-offload", OPT_NO_OFFLOAD, 0, 0, "copy: read and write every data range (no cloning by the file system)", 3},
    {"threads", 'j', "N", 0, "Worker threads (default: the number of cores)", 3},
    {"speed", 's', "RATE", 0, "Limit to RATE bytes per second (K/M/G suffixes; 0 = unlimited)", 3},
    {"on-source-error", OPT_ON_SRC, "POLICY", 0, "report, ignore, enospc or stop (default report)", 3},
    {"on-target-error", OPT_ON_TGT, "POLICY", 0, "report, ignore, enospc or stop (default report)", 3},
    {0, 0, 0, 0, "Journal, verification and NBD:", 4},
    {"journal", OPT_JOURNAL, "J", 0, "The shim's journal for SRC (follow; copy --incremental)", 4},
    {"incremental", OPT_INCREMENTAL, 0, 0, "Copy only what the journal saw change since the last "
     "run to this target (the first run copies everything)", 4},
    {"verify", OPT_VERIFY, 0, 0, "Read the target back and compare at the end", 4},
    {"bitmap", OPT_BITMAP, "NAME", 0, "copy -n: only what the source's dirty bitmap NAME marks (an incremental backup from QEMU's bitmaps)", 4},
    {"bitmaps", OPT_BITMAPS, 0, 0, "copy: carry the source's persistent bitmaps into the new qcow2 target (qemu-img convert --bitmaps)", 4},
    {"checksum", OPT_CHECKSUM, 0, 0, "copy: hash what is copied while copying (as `mirror-img checksum` does) and print it", 4},
    {"tls-psk-file", OPT_TLS_PSK, "FILE", 0, "TLS pre-shared keys for nbds:// URIs", 4},
    {"tls-certificates", OPT_TLS_CERTS, "DIR", 0, "TLS certificates directory for nbds:// URIs", 4},
    {"connections", OPT_CONNECTIONS, "N", 0, "NBD connections when the server allows multi-conn (default 4)", 4},
    {0, 0, 0, 0, "Output and control:", 5},
    {"progress", 'p', 0, 0, "Draw a progress bar on the terminal", 5},
    {"json", OPT_JSON, 0, 0, "Write QMP-shaped JSON events on stdout", 5},
    {"socket", OPT_SOCKET, "PATH", 0, "Control socket for pause, resume, set-speed, cancel, status", 5},
    {"verbose", 'v', 0, 0, "Print the settings in force", 5},
    {"quiet", 'q', 0, 0, "Print nothing but errors", 5},
    {0},
};

static int parse_uint(const char *s, unsigned lo, unsigned hi, unsigned *out)
{
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (!*s || *end || errno || v < lo || v > hi || *s == '-')
        return -1;
    *out = (unsigned)v;
    return 0;
}

/* -o cluster_size=64K,compat=1.1,compression_type=zstd,preallocation=metadata */
static int parse_create_opts(struct mi_opts *o, char *arg, struct argp_state *st)
{
    char *save = NULL;
    for (char *kv = strtok_r(arg, ",", &save); kv; kv = strtok_r(NULL, ",", &save)) {
        char *v = strchr(kv, '=');
        if (!v)
            argp_error(st, "-o: '%s' is not KEY=VALUE", kv);
        *v++ = '\0';
        if (!strcmp(kv, "cluster_size")) {
            uint64_t cs;
            if (mi_parse_size(v, &cs) < 0 || !mi_is_pow2(cs) || cs < 512 || cs > 2 * MI_MiB)
                argp_error(st, "-o cluster_size: '%s' is not a power of two from 512 to 2M", v);
            o->create.cluster_size = (uint32_t)cs;
        } else if (!strcmp(kv, "compat")) {
            if (!strcmp(v, "0.10") || !strcmp(v, "v2"))
                o->create.compat = 2;
            else if (!strcmp(v, "1.1") || !strcmp(v, "v3"))
                o->create.compat = 3;
            else
                argp_error(st, "-o compat: '%s' is not 0.10 or 1.1", v);
        } else if (!strcmp(kv, "compression_type")) {
            if (!strcmp(v, "zlib"))
                o->create.compression_type = 0;
            else if (!strcmp(v, "zstd"))
                o->create.compression_type = 1;
            else
                argp_error(st, "-o compression_type: '%s' is not zlib or zstd", v);
        } else if (!strcmp(kv, "preallocation")) {
            static const char *names[] = {"off", "metadata", "falloc", "full"};
            int i;
            for (i = 0; i < 4 && strcmp(v, names[i]); i++)
                ;
            if (i == 4)
                argp_error(st, "-o preallocation: '%s' is not off, metadata, falloc or full", v);
            o->create.preallocation = i;
        } else {
            argp_error(st, "-o: unknown option '%s' (cluster_size, compat, compression_type, "
                           "preallocation)", kv);
        }
    }
    return 0;
}

static int parse_policy(const char *arg, struct argp_state *st, const char *opt)
{
    int p = job_policy_parse(arg);
    if (p < 0)
        argp_error(st, "%s: '%s' is not report, ignore, enospc or stop", opt, arg);
    return p;
}

static uint64_t parse_size_opt(const char *arg, struct argp_state *st, const char *opt)
{
    uint64_t v;
    int r = mi_parse_size(arg, &v);
    if (r == -ERANGE)
        argp_error(st, "%s: '%s' is too large", opt, arg);
    if (r < 0)
        argp_error(st, "%s: '%s' is not a size (digits with an optional K, M, G or T)", opt, arg);
    return v;
}

static bool is_format(const char *f) { return !strcmp(f, "raw") || !strcmp(f, "qcow2") || !strcmp(f, "qcow"); }

static error_t parse_opt(int key, char *arg, struct argp_state *st)
{
    struct mi_opts *o = st->input;
    switch (key) {
    case 'f':
        if (!is_format(arg))
            argp_error(st, "-f: unknown format '%s' (raw, qcow2 or qcow)", arg);
        o->src_fmt = arg;
        break;
    case 'O':
        if (strcmp(arg, "raw") && strcmp(arg, "qcow2"))
            argp_error(st, "-O: cannot write format '%s' (raw or qcow2)", arg);
        o->dst_fmt = arg;
        break;
    case 'o': parse_create_opts(o, arg, st); o->create_set = true; break;
    case 'c': o->compress = true; break;
    case 'n': o->existing = true; break;
    case OPT_FORCE: o->force = true; break;
    case OPT_TARGET_IS_ZERO: o->target_is_zero = true; break;
    case OPT_SYNC:
        if (!strcmp(arg, "full"))
            o->sync_top = false;
        else if (!strcmp(arg, "top"))
            o->sync_top = true;
        else
            argp_error(st, "--sync: '%s' is not full or top", arg);
        break;
    case 'g':
        o->granularity = parse_size_opt(arg, st, "--granularity");
        if (!mi_is_pow2(o->granularity) || o->granularity < 512 || o->granularity > 64 * MI_MiB)
            argp_error(st, "--granularity: '%s' is not a power of two from 512 to 64M", arg);
        break;
    case OPT_BUF_SIZE:
        o->buf_size = parse_size_opt(arg, st, "--buf-size");
        /* below one chunk per worker the engine rounds it up (QEMU rounds buf-size up to
         * the granularity too); -v says what is in force */
        if (o->buf_size == 0 || o->buf_size > 4 * MI_GiB)
            argp_error(st, "--buf-size: '%s' is outside 1..4G", arg);
        break;
    case 'j':
        if (parse_uint(arg, 1, 64, &o->threads) < 0)
            argp_error(st, "--threads: '%s' is not a number from 1 to 64", arg);
        o->threads_set = true;
        break;
    case 's': o->speed = parse_size_opt(arg, st, "--speed"); break;
    case OPT_ON_SRC: o->on_source_error = parse_policy(arg, st, "--on-source-error"); break;
    case OPT_ON_TGT: o->on_target_error = parse_policy(arg, st, "--on-target-error"); break;
    case OPT_VERIFY: o->verify = true; break;
    case OPT_CHECKSUM: o->checksum = true; break;
    case OPT_NO_OFFLOAD: o->no_offload = true; break;
    case OPT_BITMAP: o->bitmap = arg; break;
    case OPT_BITMAPS: o->bitmaps = true; break;
    case OPT_JOURNAL: o->journal = arg; break;
    case OPT_INCREMENTAL: o->incremental = true; break;
    case OPT_PASSWORD_FILE: o->password_file = arg; break;
    case OPT_NO_BACKING: o->no_backing = true; break;
    case OPT_TLS_PSK: o->tls_psk_file = arg; break;
    case OPT_TLS_CERTS: o->tls_certificates = arg; break;
    case OPT_CONNECTIONS:
        if (parse_uint(arg, 1, 16, &o->connections) < 0)
            argp_error(st, "--connections: '%s' is not a number from 1 to 16", arg);
        break;
    case 'p': o->progress = true; break;
    case OPT_JSON: o->json = true; break;
    case OPT_SOCKET: o->socket = arg; break;
    case 'v': o->verbose = true; break;
    case 'q': o->quiet = true; break;
    case ARGP_KEY_ARG:
        if (o->nargs >= 4)
            argp_error(st, "too many arguments");
        o->args[o->nargs++] = arg;
        break;
    default:
        return ARGP_ERR_UNKNOWN;
    }
    return 0;
}

const struct argp common_argp = {options, parse_opt, NULL, NULL, NULL, NULL, NULL};

unsigned mi_default_threads(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (unsigned)(n > 16 ? 16 : n) : 2;
}

void mi_opts_defaults(struct mi_opts *o, const char *sub)
{
    memset(o, 0, sizeof *o);
    o->sub = sub;
    o->on_source_error = o->on_target_error = POLICY_REPORT;
    o->buf_size = 16 * MI_MiB;
    o->threads = mi_default_threads();
    o->connections = 4;
    o->create.compat = 3;
    o->lease_ms = 2000;
}

int mi_opts_check(struct mi_opts *o)
{
    if (o->existing && o->force)
        return cli_usage(o->sub, "-n and --force exclude each other");
    if (o->quiet && o->progress)
        o->progress = false;
    if (o->incremental && !o->journal)
        return cli_usage(o->sub, "--incremental needs --journal");
    if (o->journal && !o->incremental && !strcmp(o->sub, "copy"))
        return cli_usage(o->sub, "--journal goes with --incremental (or with follow)");
    if (o->bitmap && (strcmp(o->sub, "copy") || !o->existing || o->incremental || o->sync_top ||
                      o->checksum))
        return cli_usage(o->sub, "--bitmap copies what changed onto an earlier full copy: copy "
                         "with -n, not with --incremental, --sync=top or --checksum (what is "
                         "copied is not the image)");
    if (o->bitmaps && (strcmp(o->sub, "copy") || o->existing || o->incremental ||
                       (o->dst_fmt && strcmp(o->dst_fmt, "qcow2"))))
        return cli_usage(o->sub, "--bitmaps carries the source's bitmaps into a new qcow2 "
                         "target: copy without -n or --incremental, into -O qcow2");
    if (o->checksum && (strcmp(o->sub, "copy") || o->incremental || o->sync_top))
        return cli_usage(o->sub, "--checksum hashes a whole image copied by copy: not with "
                         "follow, --incremental or --sync=top (what is copied is not the image)");
    if (o->checksum && o->granularity && o->granularity < CK_BLOCK)
        o->granularity = CK_BLOCK; /* requests hold whole blocks of the hash */
    if (o->existing && (o->compress || o->create_set))
        return cli_usage(o->sub, "-c and -o shape a new image; -n writes into the existing one as "
                         "it is");
    if (o->compress && o->dst_fmt && strcmp(o->dst_fmt, "qcow2"))
        return cli_usage(o->sub, "-c needs a qcow2 target (-O qcow2)");
    o->create.compress = o->compress;
    mi_opts_threads(o);
    return 0;
}

void mi_opts_threads(struct mi_opts *o)
{
    if (!o->threads_set && o->nargs >= 2 && (ep_is_nbd_uri(o->args[0]) || ep_is_nbd_uri(o->args[1])))
        o->threads = (unsigned)mi_max(o->threads, 8);
}

void mi_opts_print(const struct mi_opts *o, const struct job *job)
{
    char b1[32], b2[32], b3[32];
    fprintf(stderr,
            "mirror-img: %s: source %s (%s), target %s (%s), sync %s, granularity %s, "
            "%u threads, %s per request, speed %s, on-source-error %s, on-target-error %s\n",
            o->sub, o->args[0], ep_format(job->c.src), o->args[1], ep_format(job->c.dst),
            o->sync_top ? "top" : "full", mi_fmt_bytes(job->chunk, b1, sizeof b1),
            job->nworkers, mi_fmt_bytes(job->req_max, b2, sizeof b2),
            o->speed ? (mi_fmt_bytes(o->speed, b3, sizeof b3), strcat(b3, "/s")) : "unlimited",
            job_policy_name(o->on_source_error), job_policy_name(o->on_target_error));
    uint64_t need = job->req_max * (job->nworkers + job->pipe);
    if (o->buf_size < need)
        fprintf(stderr, "mirror-img: %s: --buf-size %s rounded up to %s (one %s request per "
                "worker)\n", o->sub, mi_fmt_bytes(o->buf_size, b1, sizeof b1),
                mi_fmt_bytes(need, b2, sizeof b2), mi_fmt_bytes(job->req_max, b3, sizeof b3));
}

void mi_progress_tick(struct job *job, void *arg)
{
    static uint64_t last_ns;
    static bool drawn;
    const struct mi_opts *o = arg;
    if (!o->progress || !isatty(2))
        return;
    uint64_t now = mi_now_ns();
    bool final = job->end_ns != 0;
    if (!final && now - last_ns < 100000000ULL)
        return;
    last_ns = now;
    uint64_t off = __atomic_load_n(&job->offset, __ATOMIC_ACQUIRE),
             len = __atomic_load_n(&job->len, __ATOMIC_ACQUIRE);
    if (off > len) /* len grows while a new target's map is read */
        len = off;
    double pct = len ? 100.0 * (double)off / (double)len : 100.0;
    double secs = (double)(now - job->start_ns) / 1e9;
    double rate = secs > 0 ? (double)off / secs : 0;
    char b1[32], b2[32], b3[32];
    char eta[32] = "--:--";
    if (rate > 0 && off < len) {
        uint64_t s = (uint64_t)((double)(len - off) / rate);
        snprintf(eta, sizeof eta, "%02llu:%02llu", (unsigned long long)(s / 60), (unsigned long long)(s % 60));
    } else if (off >= len) {
        snprintf(eta, sizeof eta, "00:00");
    }
    int width = 30, fill = (int)(pct / 100 * width);
    char bar[64];
    for (int i = 0; i < width; i++)
        bar[i] = i < fill ? '#' : '.';
    bar[width] = '\0';
    /* \033[K clears what a longer earlier line left at the end */
    fprintf(stderr, "\r[%s] %5.1f%% %s / %s  %s/s  ETA %s\033[K", bar, pct,
            mi_fmt_bytes(off, b1, sizeof b1), mi_fmt_bytes(len, b2, sizeof b2),
            mi_fmt_bytes((uint64_t)rate, b3, sizeof b3), eta);
    drawn = true;
    if (final && drawn)
        fputc('\n', stderr);
}

void mi_error_pause_tick(struct job *job, const struct mi_opts *o)
{
    static unsigned seen;
    char msg[sizeof job->pause_msg];
    bool target;
    unsigned n = job_error_pauses(job, &target, msg, sizeof msg);
    if (n == seen)
        return;
    seen = n;
    const char *side = target ? "target" : "source";
    int policy = target ? o->on_target_error : o->on_source_error;
    if (o->socket)
        cli_error("%s; job paused (--on-%s-error=%s): 'mirror-img resume %s' retries, "
                  "'mirror-img cancel %s' gives up", msg, side, job_policy_name(policy),
                  o->socket, o->socket);
    else
        cli_error("%s; job paused (--on-%s-error=%s) with no --socket to resume it: "
                  "SIGINT or SIGTERM cancels", msg, side, job_policy_name(policy));
}

static volatile sig_atomic_t got_signal;
static void on_signal(int sig) { got_signal = sig; }

void mi_catch_signals(void)
{
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
}

void mi_job_tick(struct job *job, void *arg)
{
    struct mi_opts *o = arg;
    if (got_signal)
        job_cancel(job);
    mi_error_pause_tick(job, o);
    mi_progress_tick(job, o);
}
