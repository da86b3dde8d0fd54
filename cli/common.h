/* common.h: options shared by copy and follow (one argp child, one source of truth), and
 * the pieces of a job run both commands use: opening the endpoints, progress, events. */
#ifndef MI_COMMON_H
#define MI_COMMON_H

#include "cli.h"
#include "endpoint.h"
#include "job.h"

struct mi_opts {
    const char *src_fmt, *dst_fmt;
    bool existing, force, target_is_zero, sync_top;
    bool create_set;         /* -o was given */
    uint64_t granularity, buf_size, speed;
    int on_source_error, on_target_error;
    bool compress;
    struct ep_create_opts create; /* -o parsed into it */
    bool progress, json, quiet, verbose;
    const char *socket;
    const char *journal;
    bool incremental, verify, checksum, no_offload;
    const char *bitmap;      /* copy --bitmap=NAME */
    bool bitmaps;            /* copy --bitmaps */
    unsigned threads;
    bool threads_set; /* -j given (else NBD endpoints get more workers) */
    const char *password_file;
    bool no_backing;
    const char *tls_psk_file, *tls_certificates;
    unsigned connections;
    uint64_t lease_ms;
    bool auto_converge;
    const char *sub; /* subcommand name, for messages */
    int nargs;
    const char *args[4];
};

extern const struct argp common_argp; /* the shared options, as an argp child */

/* Worker threads by default: the online CPUs, at most 16. */
unsigned mi_default_threads(void);
void mi_opts_defaults(struct mi_opts *o, const char *sub);
/* Checks after parsing that involve several options; returns 0 or MI_EXIT_USAGE. */
int mi_opts_check(struct mi_opts *o);
/* Workers: -j, else the number of cores, at least 8 with an NBD endpoint (each worker
 * has one request in flight at a time; a network round trip wants several). */
void mi_opts_threads(struct mi_opts *o);
/* Print the settings in force (-v). */
void mi_opts_print(const struct mi_opts *o, const struct job *job);

/* follow and copy --incremental: their usage checks (0 or MI_EXIT_USAGE), and the run
 * of lib/sync with the control socket, signals and messages (returns the exit code). */
int mi_opts_check_journal(struct mi_opts *o);
int mi_run_journal(struct mi_opts *o, bool live);

/* SIGINT and SIGTERM cancel the job: mi_catch_signals() before job_wait, with
 * mi_job_tick as its tick (arg: the mi_opts): the signal, the pause notices, progress. */
void mi_catch_signals(void);
void mi_job_tick(struct job *job, void *arg);

/* Progress bar on stderr when -p and stderr is a terminal; at most 10 updates a second. */
void mi_progress_tick(struct job *job, void *arg);

/* Say on stderr when the job paused on an error (stop and enospc policies): the error and
 * how to go on.  Call it from the job's tick. */
void mi_error_pause_tick(struct job *job, const struct mi_opts *o);

#endif
