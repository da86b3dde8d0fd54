/* cmd-copy.c: `mirror-img copy SRC DST`, the offline mirror. */
#include "cli.h"
#include "common.h"
#include "control.h"
#include "events.h"
#include "jobctl.h"
#include "checksum.h"
#include "compare.h"
#include "nbd-config.h"
#include "target.h"
#include "util.h"

#include <errno.h>
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

/* The source, its info and the target. */
struct copy {
    struct mi_opts *o;
    struct ep *src;
    struct ep_info si;
    struct stat src_st;
    bool src_file; /* a regular file: checked unchanged after the copy */
    struct target t;
    struct job job;
    struct ck *ck; /* --checksum */
    char hex[2 * CK_DIGEST + 1];
};

static void completed_members(struct json *j, void *arg)
{
    struct copy *c = arg;
    json_u64_member(j, "bytes_copied", c->job.bytes_copied);
    json_u64_member(j, "bytes_read", c->job.bytes_read);
    json_u64_member(j, "duration_ms", (c->job.end_ns - c->job.start_ns) / 1000000);
    json_u64_member(j, "bytes_cloned", c->job.off.cloned);
    json_u64_member(j, "bytes_offloaded", c->job.off.offloaded);
    if (c->hex[0])
        json_str_member(j, "checksum", c->hex);
}

static void mark(void *ctx, uint64_t off, uint64_t len) { job_mark(ctx, off, len); }

/* --bitmap: what the source's dirty bitmap marks (zeros inside it are zeroed). */
static int seed_bitmap(void *ctx, struct job *job)
{
    struct copy *c = ctx;
    if (!c->src->ops->dirty)
        return mi_seterr(ENOTSUP, "%s: has no dirty bitmaps (a qcow2 image's persistent ones, "
                         "or an NBD export's qemu:dirty-bitmap)", c->src->name);
    return c->src->ops->dirty(c->src, c->o->bitmap, mark, job);
}

static void feed(void *ctx, uint64_t off, uint64_t len, const void *buf)
{
    ck_feed(ctx, off, len, buf);
}

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

/* --verify: read both back through the comparer (the target's part past the source's
 * end, a qcow2's rounding, is not the copy's business). */
static int verify(struct ep *src, struct ep *dst)
{
    struct compare_result res;
    int r = compare_images(src, dst, &(struct compare_opts){.length = src->size}, &res);
    if (r < 0)
        return r;
    if (res.verdict != CMP_SAME)
        return mi_seterr(EIO, "%s: verification failed: differs from the source at offset %llu",
                         dst->name, (unsigned long long)(res.verdict == CMP_DIFFER ? res.offset : dst->size));
    return 0;
}

static int copy_open(struct copy *c)
{
    struct mi_opts *o = c->o;
    c->src = ep_open(o->args[0], &(struct ep_open_opts){.format = o->src_fmt,
                     .password_file = o->password_file, .no_backing = o->no_backing,
                     .bitmap = o->bitmap}, false);
    if (!c->src)
        return -EIO;
    c->src_file = !ep_is_nbd_uri(o->args[0]) && stat(o->args[0], &c->src_st) == 0 &&
                  S_ISREG(c->src_st.st_mode);
    if (ep_get_info(c->src, &c->si, false) < 0)
        return -EIO;
    struct target_opts to = {
        .src = o->args[0], .dst = o->args[1], .dst_fmt = o->dst_fmt, .existing = o->existing,
        .force = o->force, .sync_top = o->sync_top, .compress = o->compress, .create = o->create,
    };
    if (o->bitmaps && (!c->src->ops->bitmaps || !c->src->ops->dirty))
        return mi_seterr(ENOTSUP, "%s: has no persistent bitmaps to carry (a qcow2 source "
                         "has them)", o->args[0]);
    if (target_open(&to, c->src, &c->si, &c->t) < 0)
        return -EIO;
    if (o->bitmaps && !c->t.ep->ops->add_bitmap)
        return mi_seterr(ENOTSUP, "%s: --bitmaps needs a new qcow2 target", o->args[1]);
    if (c->t.rounded_from && !o->quiet)
        fprintf(stderr, "mirror-img: %s: virtual size rounded up from %llu to %llu bytes (a "
                "qcow2 size is a multiple of 512; the rest reads as zeros)\n", o->args[1],
                (unsigned long long)c->t.rounded_from, (unsigned long long)c->t.ep->size);
    return 0;
}

/* The job, under the control socket; then flush, the source unchanged, --verify. */
static int copy_run(struct copy *c)
{
    struct mi_opts *o = c->o;
    struct job_config jc = {
        .src = c->src, .dst = c->t.ep, .device = o->args[1], .type = "copy",
        .granularity = o->granularity, .buf_size = o->buf_size, .threads = o->threads,
        .speed = o->speed, .on_source_error = o->on_source_error,
        .on_target_error = o->on_target_error, .sync_top = o->sync_top,
        .target_is_zero = o->target_is_zero, .seed_async = c->t.created,
        .offload = !o->no_offload && !o->checksum,
    };
    if (o->checksum && !(c->ck = ck_new(c->src->size)))
        return -ENOMEM;
    jc.on_read = c->ck ? feed : NULL, jc.read_ctx = c->ck;
    if (o->bitmap)
        jc.seed_from = seed_bitmap, jc.seed_ctx = c;
    int r = job_init(&c->job, &jc);
    struct jobctl ctl = {.job = &c->job};
    struct control *sock = NULL;
    if (r == 0 && o->socket && !(sock = control_start(o->socket, jobctl_handle, &ctl)))
        r = -EIO;
    if (r == 0) {
        if (o->verbose)
            mi_opts_print(o, &c->job);
        mi_catch_signals();
        r = job_start(&c->job);
        int w = job_wait(&c->job, mi_job_tick, o);
        if (r == 0)
            r = w;
    }
    if (r == 0)
        r = c->t.ep->ops->flush(c->t.ep);
    if (r == 0 && c->src_file)
        r = check_source_unchanged(o->args[0], &c->src_st);
    if (r == 0 && o->verify)
        r = verify(c->src, c->t.ep);
    if (r == 0 && o->bitmaps)
        r = target_copy_bitmaps(c->src, c->t.ep);
    if (r == 0 && c->ck) /* blocks the job did not read (zeros it skipped) by block status */
        r = ck_final(c->ck, c->src, c->hex);
    ck_free(c->ck);
    control_stop(sock);
    return r;
}

/* Say how it ended, close the target (a failed close fails the copy) and conclude. */
static int copy_end(struct copy *c, int r)
{
    struct mi_opts *o = c->o;
    int code = r == 0 ? MI_EXIT_OK : r == -ECANCELED ? MI_EXIT_CANCELLED : MI_EXIT_FAIL;
    if (r == -ECANCELED && !o->quiet)
        cli_error("%s: cancelled", o->args[1]);
    else if (r < 0)
        cli_error_last();
    if (r < 0)
        job_conclude(&c->job, r, NULL, NULL);
    int rc = c->t.ep->ops->close(c->t.ep);
    if (code == MI_EXIT_OK && rc < 0) {
        cli_error_last();
        code = MI_EXIT_FAIL;
        job_conclude(&c->job, rc, NULL, NULL);
    }
    if (code == MI_EXIT_OK) {
        job_conclude(&c->job, 0, completed_members, c);
        if (c->hex[0] && !o->json)
            printf("%s  %s\n", c->hex, o->args[1]);
        if (!o->quiet && !o->json && o->verbose) {
            char b1[32];
            char b2[32], b3[32];
            fprintf(stderr, "mirror-img: copy: %s copied in %.2f s (%s cloned, %s copied by "
                    "the kernel)\n", mi_fmt_bytes(c->job.bytes_copied, b1, sizeof b1),
                    (double)(c->job.end_ns - c->job.start_ns) / 1e9,
                    mi_fmt_bytes(c->job.off.cloned, b2, sizeof b2),
                    mi_fmt_bytes(c->job.off.offloaded, b3, sizeof b3));
        }
    } else if (c->t.created) {
        unlink(o->args[1]);
    }
    job_destroy(&c->job);
    return code;
}

static int run_copy(int argc, char **argv)
{
    struct mi_opts o;
    mi_opts_defaults(&o, "copy");
    cli_parse(&copy_argp, argc, argv, NULL, &o);
    if (o.nargs != 2)
        return cli_usage("copy", "expected SRC and DST");
    if (mi_opts_check(&o) || (o.incremental && mi_opts_check_journal(&o)))
        return MI_EXIT_USAGE;
    if (o.sync_top && o.dst_fmt && !strcmp(o.dst_fmt, "raw"))
        return cli_usage("copy", "--sync=top needs a qcow2 target (-O qcow2)");
    nbd_configure(&(struct nbd_config){o.tls_psk_file, o.tls_certificates, o.connections});
    if (o.incremental)
        return mi_run_journal(&o, false);
    struct copy c = {.o = &o};
    if (copy_open(&c) < 0) {
        cli_error_last();
        ep_close(c.t.ep);
        ep_close(c.src);
        return MI_EXIT_FAIL;
    }
    if (o.json)
        events_enable(stdout);
    int code = copy_end(&c, copy_run(&c));
    ep_close(c.src);
    return code;
}

static const struct cli_cmd cmd_copy = {"copy", "mirror an image offline (SRC to DST)", &copy_argp, run_copy};
MI_COMMAND(cmd_copy);
