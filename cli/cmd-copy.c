/* cmd-copy.c: `mirror-img copy SRC DST`, the offline mirror. */
#include "cli.h"
#include "common.h"
#include "control.h"
#include "events.h"
#include "jobctl.h"
#include "jsync.h"
#include "nbd-config.h"
#include "util.h"

#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const struct argp_child children[] = {{&common_argp, 0, NULL, 0}, {0}};
static const struct argp copy_argp = {
    NULL, NULL, "SRC DST",
    "Mirror SRC to DST (offline: nobody writes SRC meanwhile).\v"
    "SRC and DST are files, block devices or NBD URIs (nbd://HOST[:PORT][/EXPORT], "
    "nbds://..., nbd+unix:///EXPORT?socket=PATH).  Exit status: 0 done, 1 failed, "
    "2 usage error, 3 cancelled.",
    children, NULL, NULL,
};

static volatile sig_atomic_t got_signal;
static void on_signal(int sig) { got_signal = sig; }

struct copy_tick {
    struct mi_opts *o;
    struct job *job;
};

static void tick(struct job *job, void *arg)
{
    struct mi_opts *o = arg;
    if (got_signal)
        job_cancel(job);
    mi_error_pause_tick(job, o);
    mi_progress_tick(job, o);
}

/* The target's format: -O, else the source's (qcow v1 sources become qcow2). */
static const char *target_format(const struct mi_opts *o, const struct ep *src, const char *dst)
{
    if (ep_is_nbd_uri(dst))
        return "raw";
    if (o->dst_fmt)
        return o->dst_fmt;
    const char *f = ep_format(src);
    return !strcmp(f, "qcow2") || !strcmp(f, "qcow") ? "qcow2" : "raw";
}

/* The backing name a --sync=top target records: the source's own name when both images
 * share a directory, else the resolved path (a relative name would point elsewhere). */
static int backing_for_target(const struct ep_info *si, const char *src, const char *dst,
                              char *out, size_t size)
{
    char a[PATH_MAX], b[PATH_MAX], sd[PATH_MAX], dd[PATH_MAX];
    snprintf(a, sizeof a, "%s", src);
    snprintf(b, sizeof b, "%s", dst);
    if (!realpath(dirname(a), sd) || !realpath(dirname(b), dd))
        return mi_seterr(errno, "%s: cannot resolve the directory: %s", dst, strerror(errno));
    const char *name = si->backing_file[0] == '/' || !strcmp(sd, dd) ? si->backing_file : si->backing_path;
    if (strlen(name) >= size)
        return mi_seterr(ENAMETOOLONG, "%s: backing name too long", src);
    strcpy(out, name);
    return 0;
}

struct target {
    struct ep *ep;
    bool created; /* we made the file: remove it on failure */
};

static int open_target(struct mi_opts *o, struct ep *src, const struct ep_info *si, struct target *t)
{
    const char *dst = o->args[1];
    const char *fmt = target_format(o, src, dst);
    if (o->sync_top && !strcmp(fmt, "raw")) {
        mi_seterr(EINVAL, "%s: --sync=top needs a qcow2 target (a raw target cannot name a backing file)", dst);
        return -EINVAL;
    }
    if (ep_is_nbd_uri(dst)) {
        if (o->sync_top)
            return mi_seterr(EINVAL, "%s: --sync=top needs a qcow2 target", dst);
        t->ep = ep_open(dst, &(struct ep_open_opts){.format = "raw"}, true);
    } else {
        struct stat st;
        bool exists = lstat(dst, &st) == 0;
        if (exists && (mi_same_file(dst, o->args[0]) ||
                       (si->backing_path[0] && mi_same_file(dst, si->backing_path))))
            return mi_seterr(EINVAL, "%s: is the source or in its backing chain; refusing to overwrite it", dst);
        if (o->existing) {
            if (!exists)
                return mi_seterr(ENOENT, "%s: does not exist (-n writes into an existing target)", dst);
            if (o->dst_fmt && strcmp(o->dst_fmt, "raw") && S_ISREG(st.st_mode)) {
                const char *probed = ep_probe(dst);
                if (probed && strcmp(probed, o->dst_fmt))
                    return mi_seterr(EINVAL, "%s: is %s, not %s", dst, probed, o->dst_fmt);
            }
            t->ep = ep_open(dst, &(struct ep_open_opts){.format = o->dst_fmt ? o->dst_fmt : "raw"}, true);
            if (t->ep && o->target_is_zero)
                t->ep->caps |= EP_CAP_IS_ZERO;
        } else {
            if (exists && !o->force)
                return mi_seterr(EEXIST, "%s: already exists (use -n to write into it, or --force to replace it)", dst);
            if (exists && !S_ISREG(st.st_mode) && !S_ISLNK(st.st_mode))
                return mi_seterr(EINVAL, "%s: is not a regular file; use -n to write into it", dst);
            struct ep_create_opts c = o->create;
            char backing[PATH_MAX];
            c.format = fmt;
            c.size = src->size;
            if (!strcmp(fmt, "qcow2") && c.size % 512) {
                /* as qemu-img does: the tail past the source's end reads as zeros */
                c.size = mi_round_up(c.size, 512);
                if (!o->quiet)
                    fprintf(stderr, "mirror-img: %s: virtual size rounded up from %llu to %llu "
                            "bytes (a qcow2 size is a multiple of 512; the rest reads as "
                            "zeros)\n", dst, (unsigned long long)src->size,
                            (unsigned long long)c.size);
            }
            c.force = o->force;
            if (o->sync_top && si->backing_file[0]) {
                if (backing_for_target(si, o->args[0], dst, backing, sizeof backing) < 0)
                    return -EINVAL;
                c.backing_file = backing;
                c.backing_format = si->backing_format[0] ? si->backing_format : NULL;
            }
            if (o->compress && strcmp(fmt, "qcow2"))
                return mi_seterr(EINVAL, "%s: -c needs a qcow2 target", dst);
            t->ep = ep_create(dst, &c);
            t->created = t->ep != NULL;
        }
    }
    if (!t->ep)
        return -EIO;
    if (t->ep->size < src->size) {
        char b1[32], b2[32];
        mi_seterr(ENOSPC, "%s: target is smaller than the source (%s < %s)", dst,
                  mi_fmt_bytes(t->ep->size, b1, sizeof b1), mi_fmt_bytes(src->size, b2, sizeof b2));
        ep_close(t->ep);
        t->ep = NULL;
        return -ENOSPC;
    }
    return 0;
}

static void completed_members(struct json *j, void *arg)
{
    struct job *job = arg;
    json_u64_member(j, "bytes_copied", job->bytes_copied);
    json_u64_member(j, "duration_ms", (job->end_ns - job->start_ns) / 1000000);
}

/* --verify: read both back and compare. */
/* copy is offline: a source file written while it was read leaves a target that is not a
 * copy of any one moment (a shrunk source even reads as zeros past its new end).  Its
 * size, modification time and identity must be what they were when it was opened. */
static int check_source_unchanged(const char *path, const struct stat *before)
{
    struct stat now;
    if (stat(path, &now) < 0)
        return mi_seterr(errno, "%s: cannot stat after the copy: %s", path, strerror(errno));
    if (now.st_dev != before->st_dev || now.st_ino != before->st_ino)
        return mi_seterr(ESTALE, "%s: was replaced during the copy: the target is not a copy "
                         "of it", path);
    if (now.st_size != before->st_size)
        return mi_seterr(ESTALE, "%s: changed size during the copy (%lld -> %lld bytes): the "
                         "target is not a copy of it", path, (long long)before->st_size,
                         (long long)now.st_size);
    if (now.st_mtim.tv_sec != before->st_mtim.tv_sec ||
        now.st_mtim.tv_nsec != before->st_mtim.tv_nsec)
        return mi_seterr(ESTALE, "%s: was written during the copy: the target is not a "
                         "consistent copy of it (use follow for an image in use)", path);
    return 0;
}

static int verify(struct ep *src, struct ep *dst)
{
    const uint64_t step = 4 * MI_MiB;
    char *a = malloc(step), *b = malloc(step);
    int r = 0;
    if (!a || !b) {
        r = mi_seterr(ENOMEM, "out of memory");
        goto out;
    }
    for (uint64_t off = 0; off < src->size && r == 0; off += step) {
        uint64_t n = mi_min(step, src->size - off);
        if ((r = src->ops->pread(src, a, n, off)) < 0 || (r = dst->ops->pread(dst, b, n, off)) < 0)
            break;
        if (memcmp(a, b, n)) {
            uint64_t i = 0;
            while (a[i] == b[i])
                i++;
            r = mi_seterr(EIO, "%s: verification failed: differs from the source at offset %llu",
                          dst->name, (unsigned long long)(off + i));
        }
    }
out:
    free(a);
    free(b);
    return r;
}

/* ---- copy --incremental: only what the journal saw change since the last run ---- */

struct inc {
    struct follower f;
    bool settled;
    const char *full_reason;
    uint64_t downtime_ms;
};

static void inc_tick(struct job *job, void *arg)
{
    struct inc *in = arg;
    struct follower *f = &in->f;
    if (got_signal) {
        job_cancel(job);
        return;
    }
    mi_error_pause_tick(job, f->o);
    if (in->settled)
        return;
    if (jsync_renew(f) < 0 || jsync_follow_size(f) < 0 || mij_check_alive(f->j) < 0) {
        job_fail(job, -EIO, mi_lasterr());
        return;
    }
    uint64_t backlog = jsync_backlog(f);
    job->len = job->offset + backlog;
    mi_progress_tick(job, f->o);
    if (backlog || !job_idle(job))
        return;
    /* Caught up: hold the writers a moment so the target is the copy of one instant. */
    if (jsync_settle(f, false, &in->downtime_ms) < 0) {
        job_fail(job, -EIO, mi_lasterr());
        return;
    }
    in->settled = true;
    job_finish(job);
}

static void inc_members(struct json *j, void *arg)
{
    struct inc *in = arg;
    json_u64_member(j, "bytes_copied", in->f.job->bytes_copied);
    json_u64_member(j, "duration_ms", (in->f.job->end_ns - in->f.job->start_ns) / 1000000);
    json_u64_member(j, "downtime_ms", in->downtime_ms);
    json_bool_member(j, "incremental", in->full_reason == NULL);
    if (in->full_reason)
        json_str_member(j, "full_pass_reason", in->full_reason);
}

/* --verify after an incremental run: chunks the writers changed since are skipped (they
 * are dirty again); any other difference is a failure. */
static int verify_chunks(struct follower *f)
{
    uint64_t g = mij_granularity(f->j);
    char *a = malloc(g), *b = malloc(g);
    int r = 0;
    if (!a || !b) {
        free(a);
        free(b);
        return mi_seterr(ENOMEM, "out of memory");
    }
    for (uint64_t off = 0; off < f->src->size && r == 0; off += g) {
        uint64_t n = mi_min(g, f->src->size - off), first;
        for (int tries = 0; tries < 3; tries++) {
            if ((r = f->src->ops->pread(f->src, a, n, off)) < 0 || (r = f->dst->ops->pread(f->dst, b, n, off)) < 0)
                break;
            if (!memcmp(a, b, n))
                break;
            bool dirty = mij_next_run(f->j, false, off / g, &first) && first == off / g;
            if (dirty)
                break;
            if (tries == 2)
                r = mi_seterr(EIO, "%s: verification failed: differs from the source in the "
                              "chunk at offset %llu", f->dst->name, (unsigned long long)off);
            struct timespec ts = {0, 20000000};
            nanosleep(&ts, NULL);
        }
    }
    free(a);
    free(b);
    return r;
}

static int run_incremental(struct mi_opts *o)
{
    int code = jsync_check_opts(o);
    if (code)
        return code;
    struct inc in = {.f = {.o = o, .src_fd = -1}};
    struct follower *f = &in.f;
    pthread_mutex_init(&f->mu, NULL);
    struct job job;
    bool job_ok = false;
    struct control *sock = NULL;
    code = MI_EXIT_FAIL;
    if (jsync_begin(f, false, &in.full_reason) < 0)
        goto out;
    if (in.full_reason && !o->quiet && !o->json && strcmp(in.full_reason, "new target"))
        cli_error("%s: copying everything: %s", o->journal, in.full_reason);
    struct job_supply supply = jsync_supply;
    supply.ctx = f;
    struct job_config jc = {
        .src = f->src, .dst = f->dst, .device = o->args[1], .type = "copy",
        .granularity = mij_granularity(f->j), .buf_size = o->buf_size, .threads = o->threads,
        .speed = o->speed, .on_source_error = o->on_source_error,
        .on_target_error = o->on_target_error, .no_seed = true, .supply = &supply,
    };
    f->dst->caps &= ~EP_CAP_IS_ZERO; /* holes punched since the last run must be zeroed */
    if (job_init(&job, &jc) < 0)
        goto out;
    job_ok = true;
    f->job = &job;
    if (job.chunk != mij_granularity(f->j)) {
        mi_seterr(EINVAL, "%s: the target needs %llu-byte alignment, more than the journal's "
                  "granularity", o->args[1], (unsigned long long)job.chunk);
        goto out;
    }
    struct jobctl ctl = {.job = &job};
    if (o->socket && !(sock = control_start(o->socket, jobctl_handle, &ctl)))
        goto out;
    if (o->json)
        events_enable(stdout);
    if (o->verbose)
        mi_opts_print(o, &job);
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    int r = job_start(&job);
    int w = job_wait(&job, inc_tick, &in);
    if (r == 0)
        r = w;
    control_stop(sock);
    sock = NULL;
    if (r == 0 && o->verify)
        r = verify_chunks(f);
    if (r == -ECANCELED) {
        job_event(&job, "BLOCK_JOB_CANCELLED", NULL, NULL);
        if (!o->quiet)
            cli_error("%s: cancelled (the next run goes on from here)", o->args[1]);
        code = MI_EXIT_CANCELLED;
        goto out;
    }
    if (r < 0)
        goto out;
    jsync_record_target(f);
    job.offset = job.len;
    job_set_status(&job, JOB_PENDING);
    job_event(&job, "BLOCK_JOB_COMPLETED", inc_members, &in);
    if (o->verbose && !o->quiet) {
        char b1[32];
        fprintf(stderr, "mirror-img: copy: %s: %s copied (%s)\n", o->args[1],
                mi_fmt_bytes(job.bytes_copied, b1, sizeof b1),
                in.full_reason ? in.full_reason : "incremental");
    }
    code = MI_EXIT_OK;
out:
    return jsync_close(f, &job, job_ok, sock, code);
}

static int run_copy(int argc, char **argv)
{
    struct mi_opts o;
    mi_opts_defaults(&o, "copy");
    cli_parse(&copy_argp, argc, argv, NULL, &o);
    if (o.nargs != 2)
        return cli_usage("copy", "expected SRC and DST");
    if (mi_opts_check(&o))
        return MI_EXIT_USAGE;
    if (o.sync_top && o.dst_fmt && !strcmp(o.dst_fmt, "raw"))
        return cli_usage("copy", "--sync=top needs a qcow2 target (-O qcow2)");
    nbd_configure(&(struct nbd_config){o.tls_psk_file, o.tls_certificates, o.connections});
    if (o.incremental)
        return run_incremental(&o);

    struct ep *src = ep_open(o.args[0], &(struct ep_open_opts){.format = o.src_fmt,
                             .password_file = o.password_file, .no_backing = o.no_backing}, false);
    if (!src) {
        cli_error_last();
        return MI_EXIT_FAIL;
    }
    struct stat src_st;
    bool src_file = !ep_is_nbd_uri(o.args[0]) && stat(o.args[0], &src_st) == 0 &&
                    S_ISREG(src_st.st_mode);
    struct ep_info si;
    if (ep_get_info(src, &si, false) < 0) {
        cli_error_last();
        ep_close(src);
        return MI_EXIT_FAIL;
    }
    struct target t = {0};
    if (open_target(&o, src, &si, &t) < 0) {
        cli_error_last();
        ep_close(src);
        return MI_EXIT_FAIL;
    }

    if (o.json)
        events_enable(stdout);
    struct job job;
    struct job_config jc = {
        .src = src, .dst = t.ep, .device = o.args[1], .type = "copy",
        .granularity = o.granularity, .buf_size = o.buf_size, .threads = o.threads,
        .speed = o.speed, .on_source_error = o.on_source_error,
        .on_target_error = o.on_target_error, .sync_top = o.sync_top,
        .target_is_zero = o.target_is_zero, .seed_async = t.created,
    };
    int r = job_init(&job, &jc);
    struct jobctl ctl = {.job = &job};
    struct control *sock = NULL;
    if (r == 0 && o.socket && !(sock = control_start(o.socket, jobctl_handle, &ctl)))
        r = -EIO;
    if (r == 0) {
        if (o.verbose)
            mi_opts_print(&o, &job);
        signal(SIGINT, on_signal);
        signal(SIGTERM, on_signal);
        r = job_start(&job);
        int w = job_wait(&job, tick, &o);
        if (r == 0)
            r = w;
    }
    if (r == 0)
        r = t.ep->ops->flush(t.ep);
    if (r == 0 && src_file)
        r = check_source_unchanged(o.args[0], &src_st);
    if (r == 0 && o.verify)
        r = verify(src, t.ep);
    control_stop(sock);

    int code = MI_EXIT_OK;
    if (r == -ECANCELED) {
        job_set_status(&job, JOB_ABORTING);
        job_event(&job, "BLOCK_JOB_CANCELLED", NULL, NULL);
        if (!o.quiet)
            cli_error("%s: cancelled", o.args[1]);
        code = MI_EXIT_CANCELLED;
    } else if (r < 0) {
        job_set_status(&job, JOB_ABORTING);
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", mi_lasterr());
        cli_error("%s", msg);
        code = MI_EXIT_FAIL;
    }
    int rc = t.ep->ops->close(t.ep);
    if (code == MI_EXIT_OK && rc < 0) {
        cli_error_last();
        code = MI_EXIT_FAIL;
    }
    if (code == MI_EXIT_OK) {
        job.offset = job.len;
        job_set_status(&job, JOB_PENDING);
        job_event(&job, "BLOCK_JOB_COMPLETED", completed_members, &job);
        if (!o.quiet && !o.json && o.verbose) {
            char b1[32];
            fprintf(stderr, "mirror-img: copy: %s copied in %.2f s\n",
                    mi_fmt_bytes(job.bytes_copied, b1, sizeof b1), (double)(job.end_ns - job.start_ns) / 1e9);
        }
    } else if (t.created) {
        unlink(o.args[1]);
    }
    job_set_status(&job, JOB_CONCLUDED);
    job_destroy(&job);
    ep_close(src);
    return code;
}

static const struct cli_cmd cmd_copy = {"copy", "mirror an image offline (SRC to DST)", &copy_argp, run_copy};
MI_COMMAND(cmd_copy);
