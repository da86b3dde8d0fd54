/* qcow.c: encrypted images through libqcow: legacy AES qcow2 and AES qcow version 1.
 *
 * libqcow decrypts, but ignores the v3 zero flag, so it never decides what a range
 * holds: the mapping engine of qcow2.c parses the header and the L1/L2 tables, answers
 * block status, and asks libqcow only for guest ranges that are allocated data
 * (struct qcow2_hooks).  A libqcow handle is not thread-safe: one mutex guards it.
 *
 * Unencrypted qcow v1 images are read by qcow2.c itself: libqcow 20201213 cannot read a
 * v1 image that names a backing file (it wants a libqcow parent handle, so no raw
 * backing, and it loses allocated clusters when l2_bits != cluster_bits - 3, which is the
 * layout QEMU gives v1 images with a backing file).
 */
#include "endpoint.h"
#include "qcow2.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <libqcow.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_PASSWORD 4096

struct qlib {
    libqcow_file_t *file;
    libqcow_file_t *parent; /* the image itself: see lib_open */
    pthread_mutex_t lock;
    char *name;
};

static void lib_error(libqcow_error_t *err, char *buf, size_t size)
{
    buf[0] = '\0';
    if (err) {
        libqcow_error_sprint(err, buf, size);
        libqcow_error_free(&err);
    }
    char *nl = strchr(buf, '\n');
    if (nl)
        *nl = '\0';
}

static int lib_read(void *opaque, void *vbuf, uint64_t len, uint64_t off)
{
    struct qlib *l = opaque;
    uint8_t *buf = vbuf;
    while (len) {
        size_t n = (size_t)mi_min(len, 64 * MI_MiB);
        libqcow_error_t *err = NULL;
        pthread_mutex_lock(&l->lock);
        ssize_t got = libqcow_file_read_buffer_at_offset(l->file, buf, n, (off64_t)off, &err);
        pthread_mutex_unlock(&l->lock);
        if (got != (ssize_t)n) {
            char msg[512];
            lib_error(err, msg, sizeof msg);
            return mi_seterr(EIO, "%s: read error at offset %llu, length %zu (libqcow): %s",
                             l->name, (unsigned long long)off, n, msg[0] ? msg : "short read");
        }
        buf += n, off += n, len -= n;
    }
    return 0;
}

static void lib_close(libqcow_file_t **f)
{
    if (*f) {
        libqcow_file_close(*f, NULL); /* harmless on a handle that never opened */
        libqcow_file_free(f, NULL);
    }
}

static void lib_free(void *opaque)
{
    struct qlib *l = opaque;
    lib_close(&l->file);
    lib_close(&l->parent);
    pthread_mutex_destroy(&l->lock);
    free(l->name);
    free(l);
}

/* The password: the file's first line (without its newline). */
static int read_password(const char *name, const char *path, char *pw, size_t size)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return mi_seterr(errno, "%s: cannot open the password file %s: %s", name, path,
                         strerror(errno));
    /* Read up to the first newline: a pipe (or an interrupted read) may hand the
     * password over in pieces. */
    size_t got = 0;
    int err = 0;
    while (got < size - 1 && !memchr(pw, '\n', got)) {
        ssize_t n = read(fd, pw + got, size - 1 - got);
        if (n > 0)
            got += (size_t)n;
        else if (n == 0)
            break;
        else if (errno != EINTR) {
            err = errno;
            break;
        }
    }
    close(fd);
    if (err)
        return mi_seterr(err, "%s: cannot read the password file %s: %s", name, path,
                         strerror(err));
    pw[got] = '\0';
    pw[strcspn(pw, "\r\n")] = '\0';
    if (!pw[0])
        return mi_seterr(EINVAL, "%s: the password file %s is empty", name, path);
    return 0;
}

/* Peek at the header: version, encryption method, whether a backing file is named, and
 * for v1 whether L2 tables are one cluster (the only layout libqcow maps right). */
static int peek(const char *name, int *version, uint32_t *crypt, bool *backing, bool *l2_ok)
{
    uint8_t h[48];
    int fd = open(name, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return mi_seterr(errno, "%s: cannot open: %s", name, strerror(errno));
    int e = mi_pread_full(fd, h, sizeof h, 0);
    close(fd);
    if (e < 0)
        return mi_seterr(-e, "%s: cannot read: %s", name, strerror(-e));
    if (mi_be32(h) != QCOW2_MAGIC)
        return mi_seterr(EINVAL, "%s: not a qcow image (bad magic)", name);
    *version = (int)mi_be32(h + 4);
    *crypt = mi_be32(h + (*version == 1 ? 36 : QCOW2_HDR_CRYPT_METHOD));
    *backing = mi_be64(h + QCOW2_HDR_BACKING_OFFSET) != 0;
    *l2_ok = *version != 1 || h[33] + 3 == h[32];
    return 0;
}

static bool lib_open_file(libqcow_file_t **f, const char *name, const char *password,
                          libqcow_error_t **err)
{
    return libqcow_file_initialize(f, err) == 1 &&
           (!password || libqcow_file_set_utf8_password(*f, (const uint8_t *)password,
                                                        strlen(password), err) == 1) &&
           libqcow_file_open(*f, name, LIBQCOW_OPEN_READ, err) == 1;
}

/* With backing true, libqcow refuses to read anything without a parent handle, although
 * it is only asked for allocated clusters: give it the image itself, never read. */
static struct qlib *lib_open(const char *name, const char *password, bool backing)
{
    struct qlib *l = calloc(1, sizeof *l);
    libqcow_error_t *err = NULL;
    char msg[512];
    if (!l || !(l->name = strdup(name))) {
        free(l);
        mi_seterr(ENOMEM, "%s: out of memory", name);
        return NULL;
    }
    pthread_mutex_init(&l->lock, NULL);
    if (!lib_open_file(&l->file, name, password, &err))
        goto fail;
    if (backing && (!lib_open_file(&l->parent, name, password, &err) ||
                    libqcow_file_set_parent_file(l->file, l->parent, &err) != 1))
        goto fail;
    return l;
fail:
    lib_error(err, msg, sizeof msg);
    mi_seterr(EIO, "%s: libqcow cannot open the image: %s", name, msg);
    lib_free(l);
    return NULL;
}

struct ep *qcow_open_chain(const char *name, const struct ep_open_opts *opts,
                           const struct qcow2_chain *parent)
{
    int version = 0;
    uint32_t crypt = 0;
    bool backing = false, l2_ok = false;
    char pw[MAX_PASSWORD];
    if (peek(name, &version, &crypt, &backing, &l2_ok) < 0)
        return NULL;
    if (crypt != QCOW2_CRYPT_AES) /* unencrypted (LUKS and unknown: refused there) */
        return qcow2_open_chain(name, opts, parent, NULL);
    if (version != 1 && version != 2 && version != 3) {
        mi_seterr(EINVAL, "%s: unsupported qcow version %d", name, version);
        return NULL;
    }
    if (!opts->password_file) {
        mi_seterr(EINVAL, "%s: image is encrypted (AES); give --password-file", name);
        return NULL;
    }
    if (!l2_ok) {
        mi_seterr(ENOTSUP, "%s: encrypted qcow (v1) images whose L2 tables are not one "
                  "cluster (as QEMU makes them with a backing file) are not supported", name);
        return NULL;
    }
    if (read_password(name, opts->password_file, pw, sizeof pw) < 0)
        return NULL;
    struct qlib *l = lib_open(name, pw, backing);
    memset(pw, 0, sizeof pw);
    if (!l)
        return NULL;
    struct qcow2_hooks hooks = {lib_read, lib_free, l};
    return qcow2_open_chain(name, opts, parent, &hooks);
}

struct ep *qcow_open(const char *name, const struct ep_open_opts *opts)
{
    return qcow_open_chain(name, opts, NULL);
}
