/* cmd-journal.c: `mirror-img journal status|dump|reset [--json] J`: look into a journal
 * (the dirty backlog, why it is untrusted, who writes, the recent writes) or clear it.  The
 * journal is read by lib/journal-status.c; this file parses and prints. */
#include "cli.h"
#include "journal-status.h"
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

static void print_untrusted(const struct mij_status *st)
{
    if (!st->untrusted)
        printf("trusted:     yes\n");
    for (unsigned r = 0; r < MIJ_U_NREASONS; r++)
        if (st->untrusted & MIJ_U_BIT(r)) {
            char t[64];
            fmt_time(st->why[r].ns, t, sizeof t);
            printf("untrusted:   %s: %s (pid %d, %s)\n", mij_reason_name(r), mij_reason_text(r),
                   st->why[r].pid, t);
        }
}

static void print_writers(const struct mij_status *st)
{
    char b[32];
    for (int i = 0; i < st->nwriters; i++) {
        const struct mij_writer *w = &st->writers[i];
        if (w->alive)
            printf("writer:      pid %d: %u descriptor%s, %u mapping%s, %" PRIu64
                   " writes (%s)%s\n", w->pid, w->tracked, w->tracked == 1 ? "" : "s",
                   w->nmaps, w->nmaps == 1 ? "" : "s", w->writes,
                   mi_fmt_bytes(w->bytes, b, sizeof b), w->inflight ? ", in a write" : "");
    }
}

static void print_status(const struct mij_status *st, const char *path)
{
    char b1[32], b2[32];
    uint64_t g = st->granularity;
    printf("journal:     %s (version %u)\n", path, st->version);
    printf("source:      %s (device %" PRIu64 ", inode %" PRIu64 ")\n", st->src_path,
           st->src_dev, st->src_ino);
    printf("granularity: %s, covering %s (%" PRIu64 " chunks)\n", mi_fmt_bytes(g, b1, sizeof b1),
           mi_fmt_bytes(st->covered, b2, sizeof b2), st->nchunks);
    printf("dirty:       %" PRIu64 " chunks (%s), %" PRIu64 " being copied (%s)\n", st->dirty,
           mi_fmt_bytes(st->dirty * g, b1, sizeof b1), st->copying,
           mi_fmt_bytes(st->copying * g, b2, sizeof b2));
    print_untrusted(st);
    if (st->follower_pid)
        printf("follower:    pid %d, lease %.1f s left\n", st->follower_pid,
               (double)st->lease_left_ns / 1e9);
    else
        printf("follower:    none\n");
    print_writers(st);
    printf("written:     %s in %" PRIu64 " calls through the shim\n",
           mi_fmt_bytes(st->bytes, b1, sizeof b1), st->writes);
    if (st->quiesce || st->delay_us || st->pivot_gen)
        printf("control:     quiesce %s, auto-converge delay %u us, pivot generation %" PRIu64 "\n",
               st->quiesce ? "requested" : "off", st->delay_us, st->pivot_gen);
    if (st->target.valid)
        printf("target:      %s (sync generation %" PRIu64 ")\n", st->target.path,
               st->target.sync_gen);
}

static void print_dump(const struct mij_rec *recs, int n)
{
    printf("%-26s %8s %8s %-16s %14s %12s\n", "TIME", "PID", "TID", "OP", "OFFSET", "LENGTH");
    for (int i = 0; i < n; i++) {
        const struct mij_rec *r = &recs[i];
        char t[64];
        fmt_time(r->time_ns, t, sizeof t);
        if (r->op == MIJ_OP_UNTRUSTED)
            printf("%-26s %8d %8d %-16s %s\n", t, r->pid, r->tid, mij_op_name(r->op),
                   mij_reason_name((unsigned)r->off));
        else
            printf("%-26s %8d %8d %-16s %14" PRIu64 " %12" PRIu64 "\n", t, r->pid, r->tid,
                   mij_op_name(r->op), r->off, r->len);
    }
}

static void print_json(struct json *js)
{
    printf("%s\n", json_str(js));
    json_free(js);
}

static void status(struct mij *j, const struct journal_opts *o)
{
    struct mij_status st;
    mij_status_read(j, &st);
    if (o->json) {
        struct json js;
        json_init(&js);
        mij_status_json(j, &st, o->journal, &js);
        print_json(&js);
    } else {
        print_status(&st, o->journal);
    }
}

static int dump(struct mij *j, const struct journal_opts *o)
{
    struct mij_rec *recs;
    int n = mij_dump_read(j, o->last, &recs);
    if (n < 0) {
        cli_error_last();
        return MI_EXIT_FAIL;
    }
    if (o->json) {
        struct json js;
        json_init(&js);
        mij_dump_json(recs, n, o->journal, &js);
        print_json(&js);
    } else {
        print_dump(recs, n);
    }
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
    } else {
        status(j, &o);
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
