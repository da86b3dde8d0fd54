/* journal-status.c: see journal-status.h. */
#include "journal-status.h"
#include "util.h"

#include <errno.h>
#include <stdlib.h>

void mij_status_read(struct mij *j, struct mij_status *st)
{
    struct mij_header *h = j->h;
    st->version = h->version;
    st->src_path = mij_source_path(j);
    st->src_dev = h->src_dev;
    st->src_ino = h->src_ino;
    st->src_size0 = h->src_size0;
    st->granularity = mij_granularity(j);
    st->covered = j->covered;
    st->nchunks = j->nchunks;
    st->dirty = mij_backlog(j, &st->copying);
    st->untrusted = mij_untrusted(j);
    for (unsigned r = 0; r < MIJ_U_NREASONS; r++) {
        st->why[r].pid = (int)MIJ_LOAD(&h->why[r].pid);
        st->why[r].ns = MIJ_LOAD(&h->why[r].ns);
    }
    st->follower_pid = mij_follower(j, &st->lease_left_ns);
    st->nwriters = mij_writers(j, st->writers, MIJ_NSLOTS);
    st->writers_alive = 0;
    for (int i = 0; i < st->nwriters; i++)
        st->writers_alive += st->writers[i].alive && st->writers[i].pid > 0;
    mij_counters(j, &st->bytes, &st->writes);
    st->quiesce = MIJ_LOAD(&h->quiesce) != 0;
    st->delay_us = MIJ_LOAD(&h->delay_us);
    st->pivot_gen = MIJ_LOAD(&h->pivot_gen);
    st->source_recorded = MIJ_LOAD(&h->seen_valid) != 0;
    mij_target_get(j, &st->target);
}

/* The runs of a bitmap as [offset, length] pairs in bytes. */
static void json_runs(struct json *js, const char *key, struct mij *j, bool copying)
{
    uint64_t g = mij_granularity(j), c = 0, first, n;
    unsigned count = 0;
    json_arr_begin(js, key);
    while ((n = mij_next_run(j, copying, c, &first)) && count++ < MIJ_STATUS_MAX_RUNS) {
        json_arr_begin(js, NULL);
        json_u64_member(js, NULL, first * g);
        json_u64_member(js, NULL, n * g);
        json_arr_end(js);
        c = first + n;
    }
    json_arr_end(js);
}

static void json_untrusted(struct json *js, const struct mij_status *st)
{
    json_bool_member(js, "trusted", !st->untrusted);
    json_arr_begin(js, "untrusted");
    for (unsigned r = 0; r < MIJ_U_NREASONS; r++)
        if (st->untrusted & MIJ_U_BIT(r)) {
            json_obj_begin(js, NULL);
            json_str_member(js, "reason", mij_reason_name(r));
            json_str_member(js, "text", mij_reason_text(r));
            json_i64_member(js, "pid", st->why[r].pid);
            json_u64_member(js, "time-ns", st->why[r].ns);
            json_obj_end(js);
        }
    json_arr_end(js);
}

static void json_writers(struct json *js, const struct mij_status *st)
{
    json_arr_begin(js, "writers");
    for (int i = 0; i < st->nwriters; i++) {
        const struct mij_writer *w = &st->writers[i];
        json_obj_begin(js, NULL);
        json_i64_member(js, "pid", w->pid);
        json_bool_member(js, "alive", w->alive);
        json_u64_member(js, "in-flight", w->inflight);
        json_u64_member(js, "held", w->waiting);
        json_u64_member(js, "descriptors", w->tracked);
        json_u64_member(js, "shared-mappings", w->nmaps);
        json_u64_member(js, "writes", w->writes);
        json_u64_member(js, "bytes", w->bytes);
        json_u64_member(js, "pivot-generation", w->pivot_ack);
        json_i64_member(js, "pivot-error", w->pivot_err);
        json_obj_end(js);
    }
    json_arr_end(js);
    json_u64_member(js, "writers-alive", st->writers_alive);
}

static void json_control(struct json *js, const struct mij_status *st)
{
    json_obj_begin(js, "follower");
    json_bool_member(js, "active", st->follower_pid != 0);
    json_i64_member(js, "pid", st->follower_pid);
    json_u64_member(js, "lease-left-ms", st->lease_left_ns / 1000000);
    json_obj_end(js);
    json_u64_member(js, "bytes-written", st->bytes);
    json_u64_member(js, "writes", st->writes);
    json_bool_member(js, "quiesce", st->quiesce);
    json_u64_member(js, "pivot-generation", st->pivot_gen);
    json_u64_member(js, "delay-us", st->delay_us);
    json_bool_member(js, "source-recorded", st->source_recorded);
    json_obj_begin(js, "target");
    json_bool_member(js, "recorded", st->target.valid);
    if (st->target.valid) {
        json_str_member(js, "path", st->target.path);
        json_u64_member(js, "sync-generation", st->target.sync_gen);
    }
    json_obj_end(js);
}

void mij_status_json(struct mij *j, const struct mij_status *st, const char *path, struct json *js)
{
    json_obj_begin(js, NULL);
    json_str_member(js, "journal", path);
    json_u64_member(js, "version", st->version);
    json_obj_begin(js, "source");
    json_str_member(js, "path", st->src_path);
    json_u64_member(js, "device", st->src_dev);
    json_u64_member(js, "inode", st->src_ino);
    json_u64_member(js, "size-at-creation", st->src_size0);
    json_obj_end(js);
    json_u64_member(js, "granularity", st->granularity);
    json_u64_member(js, "covered", st->covered);
    json_u64_member(js, "chunks", st->nchunks);
    json_u64_member(js, "dirty-chunks", st->dirty);
    json_u64_member(js, "dirty-bytes", st->dirty * st->granularity);
    json_u64_member(js, "copying-chunks", st->copying);
    json_runs(js, "dirty", j, false);
    json_runs(js, "copying", j, true);
    json_untrusted(js, st);
    json_writers(js, st);
    json_control(js, st);
    json_obj_end(js);
}

int mij_dump_read(struct mij *j, unsigned long last, struct mij_rec **recs)
{
    *recs = malloc(sizeof **recs * MIJ_NRING);
    if (!*recs)
        return mi_seterr(ENOMEM, "%s: out of memory", j->path);
    int n = mij_ring_read(j, *recs, last && last < MIJ_NRING ? (int)last : MIJ_NRING);
    /* The ring's own copy failing (out of memory) shows as no records, not as an error:
     * `journal dump` has always answered so. */
    return n > 0 ? n : 0;
}

void mij_dump_json(const struct mij_rec *recs, int n, const char *path, struct json *js)
{
    json_obj_begin(js, NULL);
    json_str_member(js, "journal", path);
    json_arr_begin(js, "records");
    for (int i = 0; i < n; i++) {
        const struct mij_rec *r = &recs[i];
        json_obj_begin(js, NULL);
        json_u64_member(js, "seq", r->seq);
        json_u64_member(js, "time-ns", r->time_ns);
        json_i64_member(js, "pid", r->pid);
        json_i64_member(js, "tid", r->tid);
        json_str_member(js, "op", mij_op_name(r->op));
        if (r->op == MIJ_OP_UNTRUSTED)
            json_str_member(js, "reason", mij_reason_name((unsigned)r->off));
        json_u64_member(js, "offset", r->off);
        json_u64_member(js, "length", r->len);
        json_obj_end(js);
    }
    json_arr_end(js);
    json_obj_end(js);
}
