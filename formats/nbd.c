/* nbd.c: NBD exports through libnbd (nbd://, nbds://, nbd+unix://, nbds+unix://).
 *
 *   engine workers (-j)                     connections: 1, or up to --connections when
 *   pread / pwrite / zero / block_status    the server offers multi-conn
 *        |                                  +-------------------------------------------+
 *        |-- split into requests --------->  | conn 0: handle, I/O thread, eventfd, mutex |
 *        |   (NBD_REQ_SIZE), round robin     | conn 1: ...                                |
 *        |   over the connections            +-------------------------------------------+
 *        '-- wait for the whole batch <------ completion callbacks (run by the I/O threads)
 *
 * Why asynchronous: libnbd holds a handle's lock for the whole of a synchronous call, so
 * synchronous calls from several threads on one handle go one at a time.  Here every
 * command is queued with the asynchronous API (the lock is held only while queueing) and
 * one I/O thread per connection polls the socket and feeds the state machine, so every
 * request of every worker is in flight at once, and a large request of one worker is
 * several requests in flight.
 *
 * Lost connections: when the server goes away, libnbd fails every command in flight on that
 * handle (ENOTCONN) and the handle is dead.  The call reports the error and the engine's
 * policy decides; the next call that picks the connection reconnects first (lazily, under
 * the connection's mutex), so under `ignore` the retried chunk succeeds once the server is
 * back.  A reconnect that fails is reported the same way and tried again next time.
 *
 * Block status asks base:allocation.  A source (opened read-only; `copy` is offline, nobody
 * writes it) caches the extents it learned, so the engine's seeding pass and its per-request
 * classification cost one round trip per 2 GiB instead of one per request.  A target that
 * reads as zeros everywhere when opened (a fresh nbdkit memory export, a sparse file) gets
 * EP_CAP_IS_ZERO, so the engine sends no zero requests for the source's holes.
 *
 * Zeroing: WRITE_ZEROES (with NO_HOLE unless the caller allows holes); without it, a trim
 * when block status then shows zeros; else writes of zeros.
 *
 * Connecting: every handshake has a deadline (a qemu-nbd at its -e client limit accepts the
 * socket and never answers); TLS-PSK uses the URI's user name, else the effective user's.
 */
#include "endpoint.h"
#include "nbd-config.h"
#include "util.h"

#include <errno.h>
#include <libnbd.h>
#include <poll.h>
#include <pthread.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#define NBD_MAX_CONNS 16
#define NBD_WINDOW 64                /* requests in flight per call (then wait, go on) */
#define NBD_ZERO_MAX (1u << 30)      /* zero and trim: one request for up to 1 GiB */
#define NBD_BS_MAX (1u << 31)        /* block status: ask about this much at once */
#define NBD_BS_REPLY 256             /* extents kept from one block status reply */
#define NBD_MAX_EXTENTS (1u << 20)   /* bound on the source's extent cache */
#define NBD_TIMEOUT_FIRST 30000      /* ms for the handshake of the first connection */
#define NBD_TIMEOUT_EXTRA 500        /* at least, for the extra multi-conn connections */
#define NBD_TIMEOUT_RECONNECT 5000   /* of a reconnection */

static struct nbd_config cfg = {.connections = 4};

void nbd_configure(const struct nbd_config *c) { cfg = *c; }

struct conn {
    pthread_mutex_t lock; /* held to queue a command and to reconnect */
    struct nbd_handle *h; /* NULL after a failed reconnect */
    pthread_t io;         /* drives h while io_running */
    bool io_running;
    bool stop;            /* ask the I/O thread to return (atomic) */
    int wake;             /* eventfd: the direction may have changed, or stop */
};

struct extent {
    uint64_t off, len;
    int kind;
};

struct nbdep {
    struct ep ep;
    unsigned nconns;
    unsigned next;     /* round robin (atomic) */
    uint32_t req_size; /* NBD_REQ_SIZE, or less if the server says so */
    bool can_zero, can_trim, can_bs, can_flush;
    bool trim_no_zero; /* a trim left data: zero by writing (atomic) */
    struct conn c[NBD_MAX_CONNS];
    /* Extent cache of a read-only endpoint: ext[] covers [0, bs_end) in order. */
    pthread_mutex_t bs_lock;
    struct extent *ext;
    size_t next_ext, cap_ext;
    uint64_t bs_end;
    char meta[1100];   /* a second meta context asked for (qemu:dirty-bitmap:NAME), or "" */
};

static const char *meta(const struct nbdep *n) { return n->meta[0] ? n->meta : NULL; }

/* ---- batches: the requests of one call, and the wait for all of them ---- */

struct batch {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    unsigned pending;
    int err; /* first error of a completed request, with its range */
    uint64_t eoff, elen;
};

struct cmd {
    struct batch *b;
    uint64_t off, len;
};

/* One batch per thread: a call waits for all its requests before it returns, so the batch
 * is idle between calls and needs no set-up or tear-down. */
static _Thread_local struct batch my_batch = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER,
                                              0, 0, 0, 0};

/* Completion callback: runs in an I/O thread (or in the issuing thread when the handle
 * dies while queueing), with the handle's lock held: touches nothing but the batch. */
static int cmd_done(void *user, int *error)
{
    struct cmd *c = user;
    struct batch *b = c->b;
    pthread_mutex_lock(&b->lock);
    if (*error && !b->err) {
        b->err = *error;
        b->eoff = c->off;
        b->elen = c->len;
    }
    if (--b->pending == 0)
        pthread_cond_broadcast(&b->cond);
    pthread_mutex_unlock(&b->lock);
    return 1; /* retire the command */
}

static void batch_wait(struct batch *b)
{
    pthread_mutex_lock(&b->lock);
    while (b->pending)
        pthread_cond_wait(&b->cond, &b->lock);
    pthread_mutex_unlock(&b->lock);
}

static void batch_add(struct batch *b, int delta)
{
    pthread_mutex_lock(&b->lock);
    b->pending = (unsigned)((int)b->pending + delta);
    pthread_mutex_unlock(&b->lock);
}

static bool is_lost(int e)
{
    return e == ENOTCONN || e == ESHUTDOWN || e == EPIPE || e == ECONNRESET || e == ECONNABORTED;
}

/* The message for a request the server (or the lost connection) failed. */
static int request_error(struct ep *ep, const char *what, int e, uint64_t off, uint64_t len)
{
    if (len == 0) /* flush */
        return mi_seterr(e, "%s: %s error: %s%s", ep->name, what,
                         is_lost(e) ? "lost the connection to the server: " : "", strerror(e));
    if (is_lost(e))
        return mi_seterr(e, "%s: %s error at offset %llu, length %llu: lost the connection to "
                         "the server (%s)", ep->name, what, (unsigned long long)off,
                         (unsigned long long)len, strerror(e));
    return mi_seterr(e, "%s: %s error at offset %llu, length %llu: %s", ep->name, what,
                     (unsigned long long)off, (unsigned long long)len, strerror(e));
}

/* ---- connections ---- */

static void *io_main(void *arg)
{
    struct conn *c = arg;
    struct nbd_handle *h = c->h;
    int fd = nbd_aio_get_fd(h);
    while (fd >= 0 && !__atomic_load_n(&c->stop, __ATOMIC_ACQUIRE)) {
        unsigned dir = nbd_aio_get_direction(h);
        if (!dir)
            break; /* dead or closed: nothing left to drive */
        short ev = (short)((dir & LIBNBD_AIO_DIRECTION_READ ? POLLIN : 0) |
                           (dir & LIBNBD_AIO_DIRECTION_WRITE ? POLLOUT : 0));
        struct pollfd p[2] = {{fd, ev, 0}, {c->wake, POLLIN, 0}};
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (p[1].revents & POLLIN) {
            uint64_t v;
            if (read(c->wake, &v, sizeof v) < 0)
                (void)0; /* already drained */
        }
        short re = p[0].revents;
        int r = 0;
        if (re & POLLNVAL)
            break; /* libnbd closed the socket: the handle is dead */
        if ((re & (POLLIN | POLLHUP | POLLERR)) && (dir & LIBNBD_AIO_DIRECTION_READ))
            r = nbd_aio_notify_read(h);
        else if ((re & (POLLOUT | POLLHUP | POLLERR)) && (dir & LIBNBD_AIO_DIRECTION_WRITE))
            r = nbd_aio_notify_write(h);
        if (r < 0 && (nbd_aio_is_dead(h) > 0 || nbd_aio_is_closed(h) > 0))
            break;
    }
    return NULL;
}

static void kick(struct conn *c)
{
    uint64_t one = 1;
    if (write(c->wake, &one, sizeof one) < 0)
        (void)0; /* the counter is saturated: the thread will wake anyway */
}

static int io_start(struct conn *c)
{
    c->stop = false;
    int r = pthread_create(&c->io, NULL, io_main, c);
    if (r)
        return -r;
    c->io_running = true;
    return 0;
}

static void io_stop(struct conn *c)
{
    if (!c->io_running)
        return;
    __atomic_store_n(&c->stop, true, __ATOMIC_RELEASE);
    kick(c);
    pthread_join(c->io, NULL);
    c->io_running = false;
}

/* Run the handshake of h with a deadline: a server at its client limit (qemu-nbd -e N)
 * accepts the socket but never answers, and must not hang us. */
static int handshake(struct nbd_handle *h, const char *uri, int timeout_ms)
{
    if (nbd_aio_connect_uri(h, uri) < 0)
        return -1;
    uint64_t deadline = mi_now_ns() + (uint64_t)timeout_ms * 1000000ULL;
    while (nbd_aio_is_connecting(h) > 0) {
        uint64_t now = mi_now_ns();
        if (now >= deadline) {
            errno = ETIMEDOUT;
            return -2;
        }
        if (nbd_poll(h, (int)((deadline - now) / 1000000ULL) + 1) < 0)
            return -1;
    }
    return nbd_aio_is_ready(h) > 0 ? 0 : -1;
}

/* TLS with pre-shared keys needs a username: the URI's (nbds://NAME@host/...), else the
 * user running us (libnbd would ask getlogin(), which fails without a terminal). */
static int set_tls(struct nbd_handle *h)
{
    if (cfg.tls_psk_file) {
        if (nbd_set_tls_psk_file(h, cfg.tls_psk_file) < 0)
            return -1;
        char buf[1024];
        struct passwd pw, *res = NULL;
        const char *user = getenv("LOGNAME");
        if (getpwuid_r(geteuid(), &pw, buf, sizeof buf, &res) == 0 && res)
            user = res->pw_name;
        if (user && nbd_set_tls_username(h, user) < 0)
            return -1;
    }
    if (cfg.tls_certificates && nbd_set_tls_certificates(h, cfg.tls_certificates) < 0)
        return -1;
    return 0;
}

/* Connect to uri asking for base:allocation and the meta context extra (NULL: none); on
 * failure set *err and why (the reason) and return NULL. */
static struct nbd_handle *connect_ctx(const char *uri, int timeout_ms, const char *extra,
                                      int *err, char *why, size_t size)
{
    struct nbd_handle *h = nbd_create();
    int r = -1;
    if (h) {
        nbd_add_meta_context(h, LIBNBD_CONTEXT_BASE_ALLOCATION);
        if (extra)
            nbd_add_meta_context(h, extra);
        if (set_tls(h) == 0 && (r = handshake(h, uri, timeout_ms)) == 0)
            return h;
    }
    if (r == -2) {
        *err = ETIMEDOUT;
        snprintf(why, size, "no answer to the handshake within %.1f s (is the server at its "
                 "limit of clients?)", timeout_ms / 1000.0);
    } else {
        int e = nbd_get_errno();
        const char *m = nbd_get_error();
        *err = e ? e : ECONNREFUSED;
        if (m && !strncmp(m, "nbd_", 4) && strstr(m, ": "))
            m = strstr(m, ": ") + 2; /* drop libnbd's "nbd_aio_connect_uri: " */
        const char *hint = !m ? ""
                           : strstr(m, "requires TLS") ? " (use an nbds:// URI)"
                           : strstr(m, "gnutls") ? " (wrong TLS key or certificate?)" : "";
        snprintf(why, size, "%s%s", m ? m : strerror(*err), hint);
    }
    nbd_close(h);
    return NULL;
}

/* On a Unix socket the sender's buffer bounds what is in flight (the default, 208 KiB, is
 * less than one request): make room for a few requests, so that a worker queues a whole
 * request at once instead of waking the I/O thread to finish sending it.  TCP is left to
 * the kernel's autotuning, which setting SO_SNDBUF would turn off. */
static void tune_socket(struct nbd_handle *h)
{
    int fd = nbd_aio_get_fd(h), domain = 0, size = 4 * NBD_REQ_SIZE;
    socklen_t len = sizeof domain;
    if (fd >= 0 && getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) == 0 && domain == AF_UNIX)
        (void)setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
}

/* Replace the dead handle of c (its lock held) by a new connection. */
static int reconnect(struct nbdep *n, struct conn *c)
{
    io_stop(c);
    if (c->h)
        nbd_close(c->h); /* dead: libnbd has failed every command that was in flight */
    char why[512];
    int e;
    c->h = connect_ctx(n->ep.name, NBD_TIMEOUT_RECONNECT, meta(n), &e, why, sizeof why);
    if (!c->h)
        return mi_seterr(e, "%s: lost the connection to the server and cannot reconnect: %s",
                         n->ep.name, why);
    tune_socket(c->h);
    int64_t size = nbd_get_size(c->h);
    const char *bad = size != (int64_t)n->ep.size ? "the export changed size"
                      : n->ep.writable && nbd_is_read_only(c->h) > 0 ? "the export is read-only" : NULL;
    int r = bad ? -EIO : io_start(c);
    if (r < 0) {
        nbd_close(c->h);
        c->h = NULL;
        return mi_seterr(-r, "%s: reconnected, but %s", n->ep.name, bad ? bad : strerror(-r));
    }
    return 0;
}

/* Lock c with a live handle (reconnecting a dead one); unlocked again on error. */
static int conn_acquire(struct nbdep *n, struct conn *c)
{
    pthread_mutex_lock(&c->lock);
    if (c->h && nbd_aio_is_dead(c->h) <= 0 && nbd_aio_is_closed(c->h) <= 0)
        return 0;
    int r = reconnect(n, c);
    if (r < 0)
        pthread_mutex_unlock(&c->lock);
    return r;
}

/* ---- issuing requests ---- */

enum op { OP_READ, OP_WRITE, OP_WRITE_ZEROBUF, OP_ZERO, OP_TRIM, OP_FLUSH, OP_BS, OP_DIRTY };

static const char *op_name[] = {"read", "write", "write", "zero", "trim", "flush", "block status",
                                "dirty bitmap"};

static int dirty_cb(void *user, const char *metacontext, uint64_t offset, uint32_t *entries,
                    size_t nr, int *error);

/* Never written: a source of zeros for servers that cannot zero (in .bss, not the binary). */
static char zero_buf[NBD_REQ_SIZE];

struct bs_reply {
    uint64_t off, end; /* asked about [off, end) */
    struct extent e[NBD_BS_REPLY];
    size_t n;
};

static int extent_cb(void *user, const char *metacontext, uint64_t offset, uint32_t *entries,
                     size_t nr, int *error)
{
    struct bs_reply *rep = user;
    (void)offset, (void)error;
    if (strcmp(metacontext, LIBNBD_CONTEXT_BASE_ALLOCATION) || rep->n)
        return 0;
    uint64_t pos = rep->off;
    for (size_t i = 0; i + 1 < nr && pos < rep->end; i += 2) {
        uint64_t len = mi_min(entries[i], rep->end - pos);
        int kind = (entries[i + 1] & LIBNBD_STATE_ZERO) ? EP_ZERO : EP_DATA;
        if (len == 0)
            break;
        if (rep->n && rep->e[rep->n - 1].kind == kind)
            rep->e[rep->n - 1].len += len;
        else if (rep->n < NBD_BS_REPLY)
            rep->e[rep->n++] = (struct extent){pos, len, kind};
        else
            break;
        pos += len;
    }
    return 0;
}

/* Queue one request on connection ci.  On a refusal the message is set and no callback
 * will come; otherwise cmd_done will be called exactly once. */
static int issue(struct nbdep *n, unsigned ci, struct cmd *cm, enum op op, void *buf,
                 uint32_t flags, struct bs_reply *rep)
{
    struct conn *c = &n->c[ci];
    int r = conn_acquire(n, c);
    if (r < 0)
        return r;
    batch_add(cm->b, 1);
    nbd_completion_callback cb = {.callback = cmd_done, .user_data = cm};
    struct nbd_handle *h = c->h;
    int64_t cookie = -1;
    switch (op) {
    case OP_READ: cookie = nbd_aio_pread(h, buf, cm->len, cm->off, cb, 0); break;
    case OP_WRITE:
    case OP_WRITE_ZEROBUF: cookie = nbd_aio_pwrite(h, buf, cm->len, cm->off, cb, 0); break;
    case OP_ZERO: cookie = nbd_aio_zero(h, cm->len, cm->off, cb, flags); break;
    case OP_TRIM: cookie = nbd_aio_trim(h, cm->len, cm->off, cb, 0); break;
    case OP_FLUSH: cookie = nbd_aio_flush(h, cb, 0); break;
    case OP_BS:
        cookie = nbd_aio_block_status(h, cm->len, cm->off,
                                      (nbd_extent_callback){.callback = extent_cb, .user_data = rep},
                                      cb, 0);
        break;
    case OP_DIRTY: /* buf: the struct dirty_walk */
        cookie = nbd_aio_block_status(h, cm->len, cm->off,
                                      (nbd_extent_callback){.callback = dirty_cb, .user_data = buf},
                                      cb, 0);
        break;
    }
    if (cookie < 0) {
        int e = nbd_get_errno();
        batch_add(cm->b, -1);
        r = mi_seterr(e ? e : EIO, "%s: %s error at offset %llu, length %llu: %s", n->ep.name,
                      op_name[op], (unsigned long long)cm->off, (unsigned long long)cm->len,
                      nbd_get_error());
    } else if (nbd_aio_get_direction(h) & LIBNBD_AIO_DIRECTION_WRITE) {
        kick(c); /* the request is not all sent: the I/O thread must wait for POLLOUT */
    }
    pthread_mutex_unlock(&c->lock);
    return r;
}

/* Cover [off, off+len) with requests of at most piece bytes, round robin over the
 * connections, up to NBD_WINDOW in flight, and wait for all of them. */
static int run(struct nbdep *n, enum op op, char *buf, uint64_t off, uint64_t len,
               uint64_t piece, uint32_t flags)
{
    struct batch *b = &my_batch;
    struct cmd cmds[NBD_WINDOW];
    unsigned ci = __atomic_fetch_add(&n->next, 1, __ATOMIC_RELAXED);
    uint64_t done = 0;
    int r = 0;
    while (r == 0 && done < len) {
        b->err = 0;
        for (unsigned k = 0; r == 0 && k < NBD_WINDOW && done < len; k++) {
            uint64_t l = mi_min(piece, len - done);
            cmds[k] = (struct cmd){b, off + done, l};
            char *p = op == OP_WRITE_ZEROBUF ? (char *)zero_buf : buf ? buf + done : NULL;
            r = issue(n, ci++ % n->nconns, &cmds[k], op, p, flags, NULL);
            done += l;
        }
        batch_wait(b);
        if (r == 0 && b->err)
            r = request_error(&n->ep, op_name[op], b->err, b->eoff, b->elen);
    }
    return r;
}

/* ---- block status ---- */

/* Look off up in the extent cache. */
static bool bs_lookup(struct nbdep *n, uint64_t off, uint64_t max, uint64_t *len, int *kind)
{
    bool hit = false;
    pthread_mutex_lock(&n->bs_lock);
    if (off < n->bs_end) {
        size_t lo = 0, hi = n->next_ext;
        while (hi - lo > 1) {
            size_t mid = lo + (hi - lo) / 2;
            if (n->ext[mid].off <= off)
                lo = mid;
            else
                hi = mid;
        }
        const struct extent *e = &n->ext[lo];
        *len = mi_min(e->off + e->len - off, max);
        *kind = e->kind;
        hit = true;
    }
    pthread_mutex_unlock(&n->bs_lock);
    return hit;
}

/* Append a reply that continues the cache (others are simply not kept). */
static void bs_store(struct nbdep *n, const struct bs_reply *rep)
{
    pthread_mutex_lock(&n->bs_lock);
    for (size_t i = 0; i < rep->n && rep->e[i].off == n->bs_end; i++) {
        const struct extent *e = &rep->e[i];
        struct extent *last = n->next_ext ? &n->ext[n->next_ext - 1] : NULL;
        if (last && last->kind == e->kind) {
            last->len += e->len;
        } else {
            if (n->next_ext == n->cap_ext) {
                size_t cap = n->cap_ext ? n->cap_ext * 2 : 256;
                struct extent *x = cap <= NBD_MAX_EXTENTS ? realloc(n->ext, cap * sizeof *x) : NULL;
                if (!x)
                    break;
                n->ext = x, n->cap_ext = cap;
            }
            n->ext[n->next_ext++] = *e;
        }
        n->bs_end += e->len;
    }
    pthread_mutex_unlock(&n->bs_lock);
}

/* Ask the server about [off, off+ask). */
static int bs_query(struct nbdep *n, uint64_t off, uint64_t ask, struct bs_reply *rep)
{
    struct batch *b = &my_batch;
    struct cmd cm = {b, off, ask};
    rep->off = off, rep->end = off + ask, rep->n = 0;
    b->err = 0;
    unsigned ci = __atomic_fetch_add(&n->next, 1, __ATOMIC_RELAXED) % n->nconns;
    int r = issue(n, ci, &cm, OP_BS, NULL, 0, rep);
    batch_wait(b);
    if (r == 0 && b->err)
        r = request_error(&n->ep, "block status", b->err, off, ask);
    return r;
}

static int nbdep_block_status(struct ep *ep, uint64_t off, uint64_t max, unsigned flags,
                              uint64_t *len, int *kind)
{
    struct nbdep *n = (struct nbdep *)ep;
    if (!n->can_bs || off >= ep->size)
        return ep_bs_all_data(ep, off, max, flags, len, kind);
    if (!ep->writable && bs_lookup(n, off, max, len, kind))
        return 0;
    /* A source asks well ahead: the reply fills the cache for the calls to come. */
    uint64_t ask = mi_min(ep->writable ? max : ep->size - off, NBD_BS_MAX);
    struct bs_reply rep;
    int r = bs_query(n, off, ask, &rep);
    if (r < 0)
        return r;
    if (rep.n == 0)
        return ep_bs_all_data(ep, off, max, flags, len, kind);
    if (!ep->writable)
        bs_store(n, &rep);
    *len = mi_min(rep.e[0].len, max);
    *kind = rep.e[0].kind;
    return 0;
}

/* ---- data ---- */

static int nbdep_pread(struct ep *ep, void *buf, uint64_t len, uint64_t off)
{
    struct nbdep *n = (struct nbdep *)ep;
    return run(n, OP_READ, buf, off, len, n->req_size, 0);
}

static int nbdep_pwrite(struct ep *ep, const void *buf, uint64_t len, uint64_t off)
{
    struct nbdep *n = (struct nbdep *)ep;
    return run(n, OP_WRITE, (char *)buf, off, len, n->req_size, 0);
}

/* Does [off, off+len) read as zeros, by at most max_queries block status requests? */
static bool reads_as_zero(struct nbdep *n, uint64_t off, uint64_t len, unsigned max_queries)
{
    uint64_t end = off + len;
    for (unsigned q = 0; off < end; q++) {
        if (q == max_queries)
            return false; /* cannot tell cheaply: "no" is always safe */
        struct bs_reply rep;
        if (bs_query(n, off, mi_min(end - off, NBD_BS_MAX), &rep) < 0 || rep.n == 0)
            return false;
        for (size_t i = 0; i < rep.n; i++) {
            if (rep.e[i].kind != EP_ZERO)
                return false;
            off += rep.e[i].len;
        }
    }
    return true;
}

static int nbdep_zero(struct ep *ep, uint64_t off, uint64_t len, unsigned flags)
{
    struct nbdep *n = (struct nbdep *)ep;
    bool may_unmap = flags & EP_ZERO_MAY_UNMAP;
    if (n->can_zero)
        return run(n, OP_ZERO, NULL, off, len, NBD_ZERO_MAX, may_unmap ? 0 : LIBNBD_CMD_FLAG_NO_HOLE);
    /* No WRITE_ZEROES: a trim that leaves zeros will do when holes are allowed.  Once a
     * trim has left data behind, this server's trims are not tried again. */
    if (may_unmap && n->can_trim && n->can_bs && !__atomic_load_n(&n->trim_no_zero, __ATOMIC_RELAXED)) {
        /* Trim alone promises nothing: check that it left zeros. */
        if (run(n, OP_TRIM, NULL, off, len, NBD_ZERO_MAX, 0) == 0 && reads_as_zero(n, off, len, 64))
            return 0;
        __atomic_store_n(&n->trim_no_zero, true, __ATOMIC_RELAXED);
    }
    return run(n, OP_WRITE_ZEROBUF, NULL, off, len, n->req_size, 0);
}

static int nbdep_flush(struct ep *ep)
{
    struct nbdep *n = (struct nbdep *)ep;
    if (!n->can_flush)
        return 0;
    /* One flush per connection, all in flight together. */
    struct batch *b = &my_batch;
    struct cmd cmds[NBD_MAX_CONNS];
    int r = 0;
    b->err = 0;
    for (unsigned i = 0; i < n->nconns && r == 0; i++) {
        cmds[i] = (struct cmd){b, 0, 0};
        r = issue(n, i, &cmds[i], OP_FLUSH, NULL, 0, NULL);
    }
    batch_wait(b);
    if (r == 0 && b->err)
        r = request_error(ep, "flush", b->err, 0, 0);
    return r;
}

static void conn_close(struct conn *c)
{
    io_stop(c);
    if (c->h) {
        if (nbd_aio_is_ready(c->h) > 0)
            nbd_shutdown(c->h, 0); /* a polite NBD_CMD_DISC, not a reset */
        nbd_close(c->h);
    }
    if (c->wake >= 0)
        close(c->wake);
    pthread_mutex_destroy(&c->lock);
}

static int nbdep_close(struct ep *ep)
{
    struct nbdep *n = (struct nbdep *)ep;
    for (unsigned i = 0; i < n->nconns; i++)
        conn_close(&n->c[i]);
    pthread_mutex_destroy(&n->bs_lock);
    free(n->ext);
    free(ep->name);
    free(n);
    return 0;
}

/* ---- qemu:dirty-bitmap:NAME (copy --bitmap), on a connection of its own ---- */

struct dirty_walk {
    const char *ctxname;
    uint64_t pos, end;
    void (*dirty)(void *ctx, uint64_t off, uint64_t len);
    void *ctx;
};

static int dirty_cb(void *user, const char *metacontext, uint64_t offset, uint32_t *entries,
                    size_t nr, int *error)
{
    struct dirty_walk *w = user;
    (void)error;
    if (strcmp(metacontext, w->ctxname))
        return 0;
    uint64_t pos = offset;
    for (size_t i = 0; i + 1 < nr && pos < w->end; i += 2) {
        uint64_t len = mi_min(entries[i], w->end - pos);
        if (entries[i + 1] & 1) /* dirty */
            w->dirty(w->ctx, pos, len);
        pos += len;
    }
    w->pos = mi_max(w->pos, pos);
    return 0;
}

static int nbdep_dirty(struct ep *ep, const char *name,
                       void (*dirty)(void *ctx, uint64_t off, uint64_t len), void *ctx)
{
    struct nbdep *n = (struct nbdep *)ep;
    const char *pre = "qemu:dirty-bitmap:";
    if (!n->meta[0] || strcmp(n->meta + strlen(pre), name))
        return mi_seterr(EINVAL, "%s: opened without asking for %s%s", ep->name, pre, name);
    if (nbd_can_meta_context(n->c[0].h, n->meta) <= 0)
        return mi_seterr(ENOENT, "%s: the export offers no %s (qemu-nbd -B %s exports it)",
                         ep->name, n->meta, name);
    struct dirty_walk w = {n->meta, 0, ep->size, dirty, ctx};
    struct batch *b = &my_batch;
    int r = 0;
    while (r == 0 && w.pos < w.end) {
        uint64_t was = w.pos;
        struct cmd cm = {b, w.pos, mi_min(w.end - w.pos, 1ULL << 30)};
        b->err = 0;
        r = issue(n, 0, &cm, OP_DIRTY, (void *)&w, 0, NULL);
        batch_wait(b);
        if (r == 0 && b->err)
            r = request_error(&n->ep, op_name[OP_DIRTY], b->err, cm.off, cm.len);
        if (r == 0 && w.pos == was)
            r = mi_seterr(EIO, "%s: %s made no progress at offset %llu", ep->name, n->meta,
                          (unsigned long long)was);
    }
    return r;
}

static const struct ep_ops nbd_ops = {
    .name = "nbd",
    .block_status = nbdep_block_status,
    .pread = nbdep_pread,
    .pwrite = nbdep_pwrite,
    .zero = nbdep_zero,
    .flush = nbdep_flush,
    .close = nbdep_close,
    .dirty = nbdep_dirty,
};

/* ---- opening ---- */

/* Set up connection slot i around the connected handle h. */
static int conn_init(struct nbdep *n, unsigned i, struct nbd_handle *h)
{
    struct conn *c = &n->c[i];
    pthread_mutex_init(&c->lock, NULL);
    c->h = h;
    tune_socket(h);
    c->wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    n->nconns = i + 1; /* from here on, close takes care of the slot */
    if (c->wake < 0)
        return mi_seterr(errno, "%s: eventfd: %s", n->ep.name, strerror(errno));
    int r = io_start(c);
    if (r < 0)
        return mi_seterr(-r, "%s: cannot start a thread: %s", n->ep.name, strerror(-r));
    return 0;
}

/* A target that reads as zeros everywhere already (a fresh memory or sparse export) needs
 * no zero requests: say so with EP_CAP_IS_ZERO.  Stops at the first extent holding data. */
static bool export_is_zero(struct nbdep *n)
{
    return n->can_bs && reads_as_zero(n, 0, n->ep.size, 64);
}

static int check_export(struct nbdep *n, bool writable)
{
    struct nbd_handle *h = n->c[0].h;
    int64_t size = nbd_get_size(h);
    if (size < 0)
        return mi_seterr(EIO, "%s: cannot get the export size: %s", n->ep.name, nbd_get_error());
    if (writable && nbd_is_read_only(h) > 0)
        return mi_seterr(EROFS, "%s: the export is read-only", n->ep.name);
    n->ep.size = (uint64_t)size;
    n->can_zero = nbd_can_zero(h) > 0;
    n->can_trim = nbd_can_trim(h) > 0;
    n->can_flush = nbd_can_flush(h) > 0;
    n->can_bs = nbd_can_meta_context(h, LIBNBD_CONTEXT_BASE_ALLOCATION) > 0;
    int64_t bs = nbd_get_block_size(h, LIBNBD_SIZE_PREFERRED);
    n->ep.align = bs > 0 && mi_is_pow2((uint64_t)bs) && bs <= 65536 ? (uint32_t)bs : 512;
    int64_t max = nbd_get_block_size(h, LIBNBD_SIZE_MAXIMUM);
    n->req_size = NBD_REQ_SIZE;
    if (max >= (int64_t)n->ep.align && max < NBD_REQ_SIZE)
        n->req_size = (uint32_t)mi_round_down((uint64_t)max, n->ep.align);
    n->ep.caps = (n->can_bs ? EP_CAP_BLOCK_STATUS : 0) | (n->can_zero ? EP_CAP_ZERO : 0);
    return 0;
}

/* More connections when the server says they see the same data (multi-conn).  The first
 * handshake took first_ms: a server slower than 20 times that is at its client limit. */
static int add_connections(struct nbdep *n, uint64_t first_ms)
{
    int timeout = (int)mi_min(mi_max(first_ms * 20, NBD_TIMEOUT_EXTRA), NBD_TIMEOUT_RECONNECT);
    unsigned want = cfg.connections ? cfg.connections : 4;
    if (want > NBD_MAX_CONNS)
        want = NBD_MAX_CONNS;
    if (nbd_can_multi_conn(n->c[0].h) <= 0)
        return 0;
    while (n->nconns < want) {
        char why[512];
        int e;
        struct nbd_handle *h = connect_ctx(n->ep.name, timeout, meta(n), &e, why, sizeof why);
        if (!h)
            return 0; /* fewer connections is fine */
        if (conn_init(n, n->nconns, h) < 0)
            return -EIO;
    }
    return 0;
}

/* libnbd falls back to the system's CAs, without checking the server's certificate, when
 * the directory has no ca-cert.pem: refuse that instead of trusting any server. */
static int check_certificates(const char *uri)
{
    if (!cfg.tls_certificates || strncmp(uri, "nbds", 4))
        return 0;
    char path[4096];
    snprintf(path, sizeof path, "%s/ca-cert.pem", cfg.tls_certificates);
    if (access(path, R_OK) < 0)
        return mi_seterr(errno, "%s: cannot read %s (the CA that signed the server's "
                         "certificate): %s", uri, path, strerror(errno));
    return 0;
}

struct ep *nbd_open(const char *uri, bool writable, const char *bitmap)
{
    if (check_certificates(uri) < 0)
        return NULL;
    struct nbdep *n = calloc(1, sizeof *n);
    if (!n || !(n->ep.name = strdup(uri))) {
        free(n);
        mi_seterr(ENOMEM, "%s: out of memory", uri);
        return NULL;
    }
    n->ep.ops = &nbd_ops;
    n->ep.writable = writable;
    if (bitmap)
        snprintf(n->meta, sizeof n->meta, "qemu:dirty-bitmap:%s", bitmap);
    pthread_mutex_init(&n->bs_lock, NULL);
    char why[512];
    int e;
    uint64_t t0 = mi_now_ns();
    struct nbd_handle *h = connect_ctx(uri, NBD_TIMEOUT_FIRST, meta(n), &e, why, sizeof why);
    uint64_t first_ms = (mi_now_ns() - t0) / 1000000;
    if (!h) {
        mi_seterr(e, "%s: cannot connect: %s", uri, why);
        pthread_mutex_destroy(&n->bs_lock);
        free(n->ep.name);
        free(n);
        return NULL;
    }
    int r = conn_init(n, 0, h);
    if (r == 0)
        r = check_export(n, writable);
    if (r == 0)
        r = add_connections(n, first_ms);
    if (r < 0) {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", mi_lasterr());
        nbdep_close(&n->ep);
        mi_seterr(-r, "%s", msg);
        return NULL;
    }
    if (writable && export_is_zero(n))
        n->ep.caps |= EP_CAP_IS_ZERO;
    return &n->ep;
}
