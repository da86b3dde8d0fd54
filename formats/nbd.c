/* nbd.c: NBD exports through libnbd (nbd://, nbds://, nbd+unix://, nbds+unix://).
 *
 * Several connections when the server allows multi-conn (--connections); each worker
 * thread sticks to one connection, so requests from different workers are in flight at
 * once.  Block status uses the base:allocation context.
 */
#include "endpoint.h"
#include "nbd-config.h"
#include "util.h"

#include <errno.h>
#include <libnbd.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define NBD_MAX_CONNS 16
#define NBD_MAX_REQ (32u * 1024 * 1024) /* NBD servers refuse requests above 32 MiB */

static struct nbd_config cfg = {.connections = 4};

void nbd_configure(const struct nbd_config *c) { cfg = *c; }

struct nbdep {
    struct ep ep;
    unsigned nconns;
    struct nbd_handle *h[NBD_MAX_CONNS];
    unsigned next;
    bool can_zero, can_bs, can_trim;
};

static _Thread_local int my_conn = -1;

static struct nbd_handle *conn(struct nbdep *n)
{
    if (my_conn < 0)
        my_conn = (int)__atomic_fetch_add(&n->next, 1, __ATOMIC_RELAXED);
    return n->h[(unsigned)my_conn % n->nconns];
}

static int nbd_fail(struct ep *ep, const char *what, uint64_t off, uint64_t len)
{
    int e = nbd_get_errno();
    if (e == 0)
        e = EIO;
    return mi_seterr(e, "%s: %s error at offset %llu, length %llu: %s", ep->name, what,
                     (unsigned long long)off, (unsigned long long)len, nbd_get_error());
}

struct bs_ctx {
    uint64_t off, len;
    int kind;
    bool got;
};

static int extent_cb(void *user, const char *metacontext, uint64_t offset, uint32_t *entries,
                     size_t nr, int *error)
{
    struct bs_ctx *c = user;
    (void)offset, (void)error;
    if (strcmp(metacontext, LIBNBD_CONTEXT_BASE_ALLOCATION) || nr < 2 || c->got)
        return 0;
    c->len = entries[0];
    c->kind = (entries[1] & LIBNBD_STATE_ZERO) ? EP_ZERO : EP_DATA;
    c->got = true;
    return 0;
}

static int nbdep_block_status(struct ep *ep, uint64_t off, uint64_t max, unsigned flags,
                              uint64_t *len, int *kind)
{
    struct nbdep *n = (struct nbdep *)ep;
    if (!n->can_bs)
        return ep_bs_all_data(ep, off, max, flags, len, kind);
    struct bs_ctx c = {0};
    uint64_t ask = mi_min(max, 1ULL << 30);
    if (nbd_block_status(conn(n), ask, off,
                         (nbd_extent_callback){.callback = extent_cb, .user_data = &c}, 0) < 0)
        return nbd_fail(ep, "block status", off, ask);
    if (!c.got || c.len == 0)
        return ep_bs_all_data(ep, off, max, flags, len, kind);
    *len = mi_min(c.len, max);
    *kind = c.kind;
    return 0;
}

static int nbdep_pread(struct ep *ep, void *buf, uint64_t len, uint64_t off)
{
    struct nbdep *n = (struct nbdep *)ep;
    for (uint64_t done = 0; done < len;) {
        uint64_t k = mi_min(len - done, NBD_MAX_REQ);
        if (nbd_pread(conn(n), (char *)buf + done, k, off + done, 0) < 0)
            return nbd_fail(ep, "read", off + done, k);
        done += k;
    }
    return 0;
}

static int nbdep_pwrite(struct ep *ep, const void *buf, uint64_t len, uint64_t off)
{
    struct nbdep *n = (struct nbdep *)ep;
    for (uint64_t done = 0; done < len;) {
        uint64_t k = mi_min(len - done, NBD_MAX_REQ);
        if (nbd_pwrite(conn(n), (const char *)buf + done, k, off + done, 0) < 0)
            return nbd_fail(ep, "write", off + done, k);
        done += k;
    }
    return 0;
}

static int nbdep_zero(struct ep *ep, uint64_t off, uint64_t len, unsigned flags)
{
    struct nbdep *n = (struct nbdep *)ep;
    if (!n->can_zero)
        return ep_zero_by_write(ep, off, len, flags);
    for (uint64_t done = 0; done < len;) {
        uint64_t k = mi_min(len - done, 1ULL << 30);
        uint32_t f = (flags & EP_ZERO_MAY_UNMAP) ? 0 : LIBNBD_CMD_FLAG_NO_HOLE;
        if (nbd_zero(conn(n), k, off + done, f) < 0)
            return nbd_fail(ep, "zero", off + done, k);
        done += k;
    }
    return 0;
}

static int nbdep_flush(struct ep *ep)
{
    struct nbdep *n = (struct nbdep *)ep;
    for (unsigned i = 0; i < n->nconns; i++)
        if (nbd_can_flush(n->h[i]) > 0 && nbd_flush(n->h[i], 0) < 0)
            return nbd_fail(ep, "flush", 0, 0);
    return 0;
}

static int nbdep_close(struct ep *ep)
{
    struct nbdep *n = (struct nbdep *)ep;
    for (unsigned i = 0; i < n->nconns; i++) {
        if (ep->writable)
            nbd_shutdown(n->h[i], 0);
        nbd_close(n->h[i]);
    }
    free(ep->name);
    free(n);
    return 0;
}

static const struct ep_ops nbd_ops = {
    .name = "nbd",
    .block_status = nbdep_block_status,
    .pread = nbdep_pread,
    .pwrite = nbdep_pwrite,
    .zero = nbdep_zero,
    .flush = nbdep_flush,
    .close = nbdep_close,
};

static struct nbd_handle *connect_one(const char *uri)
{
    struct nbd_handle *h = nbd_create();
    if (!h) {
        mi_seterr(ENOMEM, "%s: %s", uri, nbd_get_error());
        return NULL;
    }
    nbd_add_meta_context(h, LIBNBD_CONTEXT_BASE_ALLOCATION);
    if ((cfg.tls_psk_file && nbd_set_tls_psk_file(h, cfg.tls_psk_file) < 0) ||
        (cfg.tls_certificates && nbd_set_tls_certificates(h, cfg.tls_certificates) < 0) ||
        nbd_connect_uri(h, uri) < 0) {
        int e = nbd_get_errno();
        mi_seterr(e ? e : ECONNREFUSED, "%s: cannot connect: %s", uri, nbd_get_error());
        nbd_close(h);
        return NULL;
    }
    return h;
}

struct ep *nbd_open(const char *uri, bool writable)
{
    struct nbdep *n = calloc(1, sizeof *n);
    if (!n || !(n->ep.name = strdup(uri))) {
        free(n);
        mi_seterr(ENOMEM, "%s: out of memory", uri);
        return NULL;
    }
    n->ep.ops = &nbd_ops;
    n->ep.writable = writable;
    if (!(n->h[0] = connect_one(uri))) {
        free(n->ep.name);
        free(n);
        return NULL;
    }
    n->nconns = 1;
    int64_t size = nbd_get_size(n->h[0]);
    if (size < 0) {
        mi_seterr(EIO, "%s: cannot get the export size: %s", uri, nbd_get_error());
        nbdep_close(&n->ep);
        return NULL;
    }
    if (writable && nbd_is_read_only(n->h[0]) > 0) {
        mi_seterr(EROFS, "%s: the export is read-only", uri);
        nbdep_close(&n->ep);
        return NULL;
    }
    n->ep.size = (uint64_t)size;
    n->can_zero = nbd_can_zero(n->h[0]) > 0;
    n->can_bs = nbd_can_meta_context(n->h[0], LIBNBD_CONTEXT_BASE_ALLOCATION) > 0;
    int64_t bs = nbd_get_block_size(n->h[0], LIBNBD_SIZE_PREFERRED);
    n->ep.align = bs > 0 && mi_is_pow2((uint64_t)bs) && bs <= 65536 ? (uint32_t)bs : 512;
    n->ep.caps = (n->can_bs ? EP_CAP_BLOCK_STATUS : 0) | (n->can_zero ? EP_CAP_ZERO : 0);
    unsigned want = cfg.connections ? cfg.connections : 1;
    if (want > NBD_MAX_CONNS)
        want = NBD_MAX_CONNS;
    if (nbd_can_multi_conn(n->h[0]) > 0) {
        while (n->nconns < want) {
            struct nbd_handle *h = connect_one(uri);
            if (!h)
                break; /* fewer connections is fine */
            n->h[n->nconns++] = h;
        }
    }
    return &n->ep;
}
