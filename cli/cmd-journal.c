/* cmd-journal.c: `mirror-img journal status|dump|reset [--json] J`: look into a journal
 * (the dirty backlog, why it is untrusted, who writes, the recent writes) or clear it. */
#include "cli.h"
#include "journal.h"
#include "json.h"
#include "util.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct journal_opts {
    const char *action, *journal;
    bool json;
    unsigned long last; /* dump: only the last N records */
};

enum { OPT_JSON = 1000 };
#define MAX_RUNS 4096 /* dirty ranges listed by status --json */

static const struct argp_option options[] = {
    {"json", OPT_JSON, 0, 0, "Print JSON", 0},
    {"last", 'n', "N", 0, "dump: only the last N records (default: all kept, up to 1024)", 0},
    {0},
};

static error_t parse_opt(int key, char *arg, struct argp_state *st)
{
    struct journal_opts *o = st->input;
    char *end;
    switch (key) {
    case OPT_JSON: o->json = true; break;
    case 'n':
        o->last = strtoul(arg, &end, 10);
        if (*end || !*arg)
            argp_error(st, "-n: '%s' is not a number", arg);
        break;
    case ARGP_KEY_ARG:
        if (!o->action) {
            if (strcmp(arg, "status") && strcmp(arg, "dump") && strcmp(arg, "reset"))
                argp_error(st, "unknown action '%s' (status, dump or reset)", arg);
            o->action = arg;
        } else if (!o->journal) {
            o->journal = arg;
        } else {
            argp_error(st, "expected one journal");
        }
        break;
    case ARGP_KEY_END:
        if (!o->action || !o->journal)
            argp_error(st, "expected an action (status, dump or reset) and a journal");
        break;
    default: return ARGP_ERR_UNKNOWN;
    }
    return 0;
}

static const struct argp journal_argp = {options, parse_opt, "status|dump|reset J",
    "Inspect a journal written by the shim.\v"
    "status: the source, the granularity, the dirty backlog, why the journal is untrusted, "
    "the follower and the writer processes.\n"
    "dump: the most recent writes the shim recorded (time, pid, operation, offset, length).\n"
    "reset: forget every dirty chunk and untrusted reason (refused while a follower holds "
    "the journal); the next follow or incremental copy does a full pass.",
    NULL, NULL, NULL};

static void fmt_time(uint64_t ns, char *buf, size_t size)
{
    time_t t = (time_t)(ns / 1000000000);
    struct tm tm;
    localtime_r(&t, &tm);
    size_t n = strftime(buf, size, "%Y-%m-%d %H:%M:%S", &tm);
    snprintf(buf + n, size - n, ".%06llu", (unsigned long long)(ns % 1000000000 / 1000));
}

/* The runs of a bitmap as [offset, length] pairs in bytes. */
static void json_runs(struct json *js, const char *key, struct mij *j, bool copying)
{
    uint64_t g = mij_granularity(j), c = 0, first, n;
    unsigned count = 0;
    json_arr_begin(js, key);
    while ((n = mij_next_run(j, copying, c, &first)) && count++ < MAX_RUNS) {
        json_arr_begin(js, NULL);
        json_u64_member(js, NULL, first * g);
        json_u64_member(js, NULL, n * g);
        json_arr_end(js);
        c = first + n;
    }
    json_arr_end(js);
}

static void json_untrusted(struct json *js, struct mij *j)
{
    uint64_t untrusted = mij_untrusted(j);
    json_bool_member(js, "trusted", !untrusted);
    json_arr_begin(js, "untrusted");
    for (unsigned r = 0; r < MIJ_U_NREASONS; r++)
        if (untrusted & MIJ_U_BIT(r)) {
            json_obj_begin(js, NULL);
            json_str_member(js, "reason", mij_reason_name(r));
            json_str_member(js, "text", mij_reason_text(r));
            json_i64_member(js, "pid", MIJ_LOAD(&j->h->why[r].pid));
            json_u64_member(js, "time-ns", MIJ_LOAD(&j->h->why[r].ns));
            json_obj_end(js);
        }
    json_arr_end(js);
}

static void json_writers(struct json *js, struct mij *j)
{
    struct mij_writer w[MIJ_NSLOTS];
    int nw = mij_writers(j, w, MIJ_NSLOTS), alive = 0;
    json_arr_begin(js, "writers");
    for (int i = 0; i < nw; i++) {
        alive += w[i].alive && w[i].pid > 0;
        json_obj_begin(js, NULL);
        json_i64_member(js, "pid", w[i].pid);
        json_bool_member(js, "alive", w[i].alive);
        json_u64_member(js, "in-flight", w[i].inflight);
        json_u64_member(js, "held", w[i].waiting);
        json_u64_member(js, "descriptors", w[i].tracked);
        json_u64_member(js, "shared-mappings", w[i].nmaps);
        json_u64_member(js, "writes", w[i].writes);
        json_u64_member(js, "bytes", w[i].bytes);
        json_u64_member(js, "pivot-generation", w[i].pivot_ack);
        json_i64_member(js, "pivot-error", w[i].pivot_err);
        json_obj_end(js);
    }
    json_arr_end(js);
    json_u64_member(js, "writers-alive", (uint64_t)alive);
}

static void json_control(struct json *js, struct mij *j)
{
    struct mij_header *h = j->h;
    uint64_t left, bytes, writes;
    int fpid = mij_follower(j, &left);
    mij_counters(j, &bytes, &writes);
    json_obj_begin(js, "follower");
    json_bool_member(js, "active", fpid != 0);
    json_i64_member(js, "pid", fpid);
    json_u64_member(js, "lease-left-ms", left / 1000000);
    json_obj_end(js);
    json_u64_member(js, "bytes-written", bytes);
    json_u64_member(js, "writes", writes);
    json_bool_member(js, "quiesce", MIJ_LOAD(&h->quiesce) != 0);
    json_u64_member(js, "pivot-generation", MIJ_LOAD(&h->pivot_gen));
    json_u64_member(js, "delay-us", MIJ_LOAD(&h->delay_us));
    json_bool_member(js, "source-recorded", MIJ_LOAD(&h->seen_valid) != 0);
    struct mij_target t;
    mij_target_get(j, &t);
    json_obj_begin(js, "target");
    json_bool_member(js, "recorded", t.valid);
    if (t.valid) {
        json_str_member(js, "path", t.path);
        json_u64_member(js, "sync-generation", t.sync_gen);
    }
    json_obj_end(js);
}

static void status_json(struct mij *j, const char *path)
{
    struct mij_header *h = j->h;
    struct json js;
    uint64_t copying, dirty = mij_backlog(j, &copying), g = mij_granularity(j);
    json_init(&js);
    json_obj_begin(&js, NULL);
    json_str_member(&js, "journal", path);
    json_u64_member(&js, "version", h->version);
    json_obj_begin(&js, "source");
    json_str_member(&js, "path", mij_source_path(j));
    json_u64_member(&js, "device", h->src_dev);
    json_u64_member(&js, "inode", h->src_ino);
    json_u64_member(&js, "size-at-creation", h->src_size0);
    json_obj_end(&js);
    json_u64_member(&js, "granularity", g);
    json_u64_member(&js, "covered", j->covered);
    json_u64_member(&js, "chunks", j->nchunks);
    json_u64_member(&js, "dirty-chunks", dirty);
    json_u64_member(&js, "dirty-bytes", dirty * g);
    json_u64_member(&js, "copying-chunks", copying);
    json_runs(&js, "dirty", j, false);
    json_runs(&js, "copying", j, true);
    json_untrusted(&js, j);
    json_writers(&js, j);
    json_control(&js, j);
    json_obj_end(&js);
    printf("%s\n", json_str(&js));
    json_free(&js);
}

static void status_text(struct mij *j, const char *path)
{
    struct mij_header *h = j->h;
    char b1[32], b2[32], b3[32];
    uint64_t copying, dirty = mij_backlog(j, &copying), g = mij_granularity(j), left;
    uint64_t bytes, writes, untrusted = mij_untrusted(j);
    mij_counters(j, &bytes, &writes);
    printf("journal:     %s (version %u)\n", path, h->version);
    printf("source:      %s (device %" PRIu64 ", inode %" PRIu64 ")\n", mij_source_path(j),
           h->src_dev, h->src_ino);
    printf("granularity: %s, covering %s (%" PRIu64 " chunks)\n", mi_fmt_bytes(g, b1, sizeof b1),
           mi_fmt_bytes(j->covered, b2, sizeof b2), j->nchunks);
    printf("dirty:       %" PRIu64 " chunks (%s), %" PRIu64 " being copied (%s)\n", dirty,
           mi_fmt_bytes(dirty * g, b1, sizeof b1), copying, mi_fmt_bytes(copying * g, b3, sizeof b3));
    if (!untrusted)
        printf("trusted:     yes\n");
    for (unsigned r = 0; r < MIJ_U_NREASONS; r++)
        if (untrusted & MIJ_U_BIT(r)) {
            char t[64];
            fmt_time(MIJ_LOAD(&h->why[r].ns), t, sizeof t);
            printf("untrusted:   %s: %s (pid %d, %s)\n", mij_reason_name(r), mij_reason_text(r),
                   (int)MIJ_LOAD(&h->why[r].pid), t);
        }
    int fpid = mij_follower(j, &left);
    if (fpid)
        printf("follower:    pid %d, lease %.1f s left\n", fpid, (double)left / 1e9);
    else
        printf("follower:    none\n");
    struct mij_writer w[MIJ_NSLOTS];
    int nw = mij_writers(j, w, MIJ_NSLOTS);
    for (int i = 0; i < nw; i++)
        if (w[i].alive)
            printf("writer:      pid %d: %u descriptor%s, %u mapping%s, %" PRIu64 " writes (%s)%s\n",
                   w[i].pid, w[i].tracked, w[i].tracked == 1 ? "" : "s", w[i].nmaps,
                   w[i].nmaps == 1 ? "" : "s", w[i].writes, mi_fmt_bytes(w[i].bytes, b1, sizeof b1),
                   w[i].inflight ? ", in a write" : "");
    printf("written:     %s in %" PRIu64 " calls through the shim\n",
           mi_fmt_bytes(bytes, b1, sizeof b1), writes);
    if (MIJ_LOAD(&h->quiesce) || MIJ_LOAD(&h->delay_us) || MIJ_LOAD(&h->pivot_gen))
        printf("control:     quiesce %s, auto-converge delay %u us, pivot generation %" PRIu64 "\n",
               MIJ_LOAD(&h->quiesce) ? "requested" : "off", MIJ_LOAD(&h->delay_us),
               MIJ_LOAD(&h->pivot_gen));
    struct mij_target t;
    mij_target_get(j, &t);
    if (t.valid)
        printf("target:      %s (sync generation %" PRIu64 ")\n", t.path, t.sync_gen);
}

static int dump(struct mij *j, const struct journal_opts *o)
{
    struct mij_rec *recs = malloc(sizeof *recs * MIJ_NRING);
    if (!recs) {
        cli_error("%s: out of memory", o->journal);
        return MI_EXIT_FAIL;
    }
    int n = mij_ring_read(j, recs, o->last ? (int)(o->last < MIJ_NRING ? o->last : MIJ_NRING) : MIJ_NRING);
    struct json js;
    json_init(&js);
    if (o->json) {
        json_obj_begin(&js, NULL);
        json_str_member(&js, "journal", o->journal);
        json_arr_begin(&js, "records");
    } else {
        printf("%-26s %8s %8s %-16s %14s %12s\n", "TIME", "PID", "TID", "OP", "OFFSET", "LENGTH");
    }
    for (int i = 0; i < n; i++) {
        struct mij_rec *r = &recs[i];
        const char *what = r->op == MIJ_OP_UNTRUSTED ? mij_reason_name((unsigned)r->off) : NULL;
        if (o->json) {
            json_obj_begin(&js, NULL);
            json_u64_member(&js, "seq", r->seq);
            json_u64_member(&js, "time-ns", r->time_ns);
            json_i64_member(&js, "pid", r->pid);
            json_i64_member(&js, "tid", r->tid);
            json_str_member(&js, "op", mij_op_name(r->op));
            if (what)
                json_str_member(&js, "reason", what);
            json_u64_member(&js, "offset", r->off);
            json_u64_member(&js, "length", r->len);
            json_obj_end(&js);
        } else {
            char t[64];
            fmt_time(r->time_ns, t, sizeof t);
            if (what)
                printf("%-26s %8d %8d %-16s %s\n", t, r->pid, r->tid, mij_op_name(r->op), what);
            else
                printf("%-26s %8d %8d %-16s %14" PRIu64 " %12" PRIu64 "\n", t, r->pid, r->tid,
                       mij_op_name(r->op), r->off, r->len);
        }
    }
    if (o->json) {
        json_arr_end(&js);
        json_obj_end(&js);
        printf("%s\n", json_str(&js));
    }
    json_free(&js);
    free(recs);
    return MI_EXIT_OK;
}

static int run_journal(int argc, char **argv)
{
    struct journal_opts o = {0};
    cli_parse(&journal_argp, argc, argv, NULL, &o);
    bool reset = !strcmp(o.action, "reset");
    struct mij *j;
    mi_clearerr();
    if (mij_open(o.journal, reset ? 0 : MIJ_RDONLY, &j) < 0) {
        cli_error_last();
        return MI_EXIT_FAIL;
    }
    int rc = MI_EXIT_OK;
    if (reset) {
        if (mij_reset(j) < 0) {
            cli_error_last();
            rc = MI_EXIT_FAIL;
        }
    } else if (!strcmp(o.action, "dump")) {
        rc = dump(j, &o);
    } else if (o.json) {
        status_json(j, o.journal);
    } else {
        status_text(j, o.journal);
    }
    mij_close(j);
    return rc;
}

static const struct cli_cmd journal_cmd = {
    .name = "journal",
    .summary = "inspect a journal: status, dump of recent writes, reset",
    .argp = &journal_argp,
    .run = run_journal,
};
MI_COMMAND(journal_cmd);
