/* journal-status.h: what `journal status` and `journal dump` show, read from an open journal
 * (read-only is enough): a snapshot of its state and the ring's last records, for the text,
 * and the --json objects built from them.  Nothing here prints; cli/cmd-journal.c does.
 * Unlike the other lib/journal-*.c it needs json.c: the test programs built from the
 * journal's own sources (tests/helpers.bash JOURNAL_SRC) leave it out. */
#ifndef MI_JOURNAL_STATUS_H
#define MI_JOURNAL_STATUS_H

#include "journal.h"
#include "json.h"

#include <stdbool.h>
#include <stdint.h>

/* One look at a journal.  The values are read one after the other while writers and a
 * follower go on: each is current, together they are not atomic. */
struct mij_status {
    uint32_t version;
    const char *src_path;      /* in the journal's mapping: valid while it is open */
    uint64_t src_dev, src_ino, src_size0;
    uint64_t granularity, covered, nchunks;
    uint64_t dirty, copying;   /* chunk counts */
    uint64_t untrusted;        /* MIJ_U_BIT(reason) mask */
    struct {
        int pid;               /* first process that set the reason ... */
        uint64_t ns;           /* ... and when (CLOCK_REALTIME) */
    } why[MIJ_U_NREASONS];
    int follower_pid;          /* 0: none */
    uint64_t lease_left_ns;
    int nwriters;              /* registered, live ones first (mij_writers) */
    unsigned writers_alive;    /* live ones with a slot of their own (not the overflow) */
    struct mij_writer writers[MIJ_NSLOTS];
    uint64_t bytes, writes;    /* through the shim since creation */
    bool quiesce;              /* a quiesce is requested */
    uint32_t delay_us;         /* auto-converge */
    uint64_t pivot_gen;
    bool source_recorded;      /* the follower recorded the source after a drain */
    struct mij_target target;
};

/* Fill st from j. */
void mij_status_read(struct mij *j, struct mij_status *st);

/* The object of `journal status --json` for the journal at path (as given), appended to
 * js (json_init'd by the caller): st's values, plus the dirty and copying runs read from j
 * as [offset, length] pairs in bytes (at most MIJ_STATUS_MAX_RUNS each). */
#define MIJ_STATUS_MAX_RUNS 4096
void mij_status_json(struct mij *j, const struct mij_status *st, const char *path, struct json *js);

/* The last `last` write records the ring keeps (0 or more than MIJ_NRING: all of them),
 * oldest first, into *recs (malloc'd; the caller frees it, also when the count is 0).
 * Returns the count, or -ENOMEM with a message ("J: out of memory"). */
int mij_dump_read(struct mij *j, unsigned long last, struct mij_rec **recs);

/* The object of `journal dump --json`: {"journal": path, "records": [...]}, appended to js
 * (json_init'd by the caller). */
void mij_dump_json(const struct mij_rec *recs, int n, const char *path, struct json *js);

#endif
