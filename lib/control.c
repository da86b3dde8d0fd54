/* control.c: see control.h. */
#include "control.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

struct control {
    int fd;
    int stop_pipe[2];
    char *path;
    control_handler fn;
    void *ctx;
    pthread_t thread;
};

static int fill_addr(struct sockaddr_un *a, const char *path)
{
    memset(a, 0, sizeof *a);
    a->sun_family = AF_UNIX;
    if (strlen(path) >= sizeof a->sun_path)
        return mi_seterr(ENAMETOOLONG, "%s: socket path too long (at most %zu bytes)", path,
                         sizeof a->sun_path - 1);
    strcpy(a->sun_path, path);
    return 0;
}

static void reply_line(int fd, const char *s)
{
    size_t len = strlen(s);
    while (len) {
        ssize_t n = send(fd, s, len, MSG_NOSIGNAL);
        if (n <= 0) {
            if (n < 0 && errno == EINTR)
                continue;
            return;
        }
        s += n, len -= (size_t)n;
    }
}

static void handle_line(struct control *c, int fd, const char *line)
{
    struct json_request req;
    const char *why = NULL;
    struct json out, ret;
    json_init(&out);
    json_init(&ret);
    const char *cls = "GenericError";
    char desc[512] = "";
    int r;
    if (json_parse_request(line, &req, &why) < 0) {
        snprintf(desc, sizeof desc, "malformed request: %s", why);
        r = -1;
    } else {
        r = c->fn(c->ctx, &req, &ret, &cls, desc, sizeof desc);
    }
    if (r == 0) {
        char *text = NULL;
        if (asprintf(&text, "{\"return\": {%s}}\n", json_str(&ret)) > 0) {
            reply_line(fd, text);
            free(text);
        }
    } else {
        json_obj_begin(&out, NULL);
        json_obj_begin(&out, "error");
        json_str_member(&out, "class", cls);
        json_str_member(&out, "desc", desc);
        json_obj_end(&out);
        json_obj_end(&out);
        reply_line(fd, json_str(&out));
        reply_line(fd, "\n");
    }
    json_free(&out);
    json_free(&ret);
}

static bool peer_ok(int fd)
{
    struct ucred cr;
    socklen_t len = sizeof cr;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) < 0)
        return false;
    return cr.uid == geteuid() || cr.uid == 0;
}

/* A refused peer is answered at once, before it sends anything.  Its request is then read
 * and dropped (for at most a second, so a silent peer cannot hold the socket): closing with
 * the request unread would make the peer's send fail (EPIPE) or reset its connection, and
 * it would see that instead of the answer. */
static void refuse(struct control *c, int fd)
{
    reply_line(fd, "{\"error\": {\"class\": \"GenericError\", \"desc\": \"permission denied\"}}\n");
    shutdown(fd, SHUT_WR);
    uint64_t deadline = mi_now_ns() + 1000000000ULL;
    char buf[512];
    for (uint64_t now; (now = mi_now_ns()) < deadline;) {
        struct pollfd p[2] = {{fd, POLLIN, 0}, {c->stop_pipe[0], POLLIN, 0}};
        if (poll(p, 2, (int)((deadline - now) / 1000000 + 1)) <= 0 || (p[1].revents & POLLIN))
            return;
        ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN) ||
            (n > 0 && memchr(buf, '\n', (size_t)n)))
            return;
    }
}

static void serve_client(struct control *c, int fd)
{
    if (!peer_ok(fd)) {
        refuse(c, fd);
        return;
    }
    char buf[4096];
    size_t have = 0;
    for (;;) {
        struct pollfd p[2] = {{fd, POLLIN, 0}, {c->stop_pipe[0], POLLIN, 0}};
        if (poll(p, 2, 5000) <= 0 || (p[1].revents & POLLIN))
            return; /* idle client, or stopping */
        ssize_t n = recv(fd, buf + have, sizeof buf - 1 - have, 0);
        if (n <= 0)
            return;
        have += (size_t)n;
        buf[have] = '\0';
        char *nl;
        while ((nl = memchr(buf, '\n', have))) {
            *nl = '\0';
            if (nl > buf)
                handle_line(c, fd, buf);
            have -= (size_t)(nl + 1 - buf);
            memmove(buf, nl + 1, have);
            buf[have] = '\0';
        }
        if (have == sizeof buf - 1) {
            reply_line(fd, "{\"error\": {\"class\": \"GenericError\", \"desc\": \"request too long\"}}\n");
            return;
        }
    }
}

static void *serve(void *arg)
{
    struct control *c = arg;
    for (;;) {
        struct pollfd p[2] = {{c->fd, POLLIN, 0}, {c->stop_pipe[0], POLLIN, 0}};
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (p[1].revents & POLLIN)
            break;
        int fd = accept4(c->fd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0)
            continue;
        serve_client(c, fd);
        close(fd);
    }
    return NULL;
}

struct control *control_start(const char *path, control_handler fn, void *ctx)
{
    struct sockaddr_un a;
    if (fill_addr(&a, path) < 0)
        return NULL;
    /* A socket file already there: live (another job) → refuse; stale → replace. */
    struct stat st;
    if (lstat(path, &st) == 0) {
        if (!S_ISSOCK(st.st_mode)) {
            mi_seterr(EEXIST, "%s: exists and is not a socket", path);
            return NULL;
        }
        int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (probe >= 0 && connect(probe, (struct sockaddr *)&a, sizeof a) == 0) {
            close(probe);
            mi_seterr(EADDRINUSE, "%s: another job is listening on this socket", path);
            return NULL;
        }
        if (probe >= 0)
            close(probe);
        unlink(path);
    }
    struct control *c = calloc(1, sizeof *c);
    if (!c || !(c->path = strdup(path))) {
        free(c);
        mi_seterr(ENOMEM, "out of memory");
        return NULL;
    }
    c->fn = fn, c->ctx = ctx;
    c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c->fd < 0 || pipe2(c->stop_pipe, O_CLOEXEC) < 0)
        goto fail;
    mode_t old = umask(0077);
    int r = bind(c->fd, (struct sockaddr *)&a, sizeof a);
    umask(old);
    if (r < 0 || chmod(path, 0600) < 0 || listen(c->fd, 8) < 0)
        goto fail;
    if ((r = pthread_create(&c->thread, NULL, serve, c)) != 0) {
        errno = r;
        unlink(path);
        goto fail;
    }
    return c;
fail:
    mi_seterr(errno, "%s: cannot listen: %s", path, strerror(errno));
    if (c->fd >= 0)
        close(c->fd);
    free(c->path);
    free(c);
    return NULL;
}

void control_stop(struct control *c)
{
    if (!c)
        return;
    (void)!write(c->stop_pipe[1], "x", 1);
    pthread_join(c->thread, NULL);
    close(c->fd);
    close(c->stop_pipe[0]);
    close(c->stop_pipe[1]);
    unlink(c->path);
    free(c->path);
    free(c);
}

int control_call(const char *path, const char *request, char **reply)
{
    struct sockaddr_un a;
    *reply = NULL;
    if (fill_addr(&a, path) < 0)
        return -EINVAL;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return mi_seterr(errno, "%s: %s", path, strerror(errno));
    if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
        int e = errno;
        close(fd);
        return mi_seterr(e, "%s: cannot connect: %s%s", path, strerror(e),
                         e == ENOENT || e == ECONNREFUSED ? " (is the job running?)" : "");
    }
    /* A job that refuses us answers and closes, maybe before our request is sent: a send
     * that finds the connection gone is not the end, the answer may be waiting. */
    size_t len = strlen(request);
    if (send(fd, request, len, MSG_NOSIGNAL) != (ssize_t)len || send(fd, "\n", 1, MSG_NOSIGNAL) != 1) {
        int e = errno;
        if (e != EPIPE && e != ECONNRESET) {
            close(fd);
            return mi_seterr(e, "%s: cannot send: %s", path, strerror(e));
        }
    }
    size_t cap = 4096, have = 0;
    char *buf = malloc(cap);
    while (buf) {
        if (have + 1 >= cap) {
            char *nb = realloc(buf, cap *= 2);
            if (!nb)
                break;
            buf = nb;
        }
        ssize_t n = recv(fd, buf + have, cap - 1 - have, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        have += (size_t)n;
        buf[have] = '\0';
        if (memchr(buf, '\n', have))
            break;
    }
    close(fd);
    if (!buf)
        return mi_seterr(ENOMEM, "out of memory");
    if (have == 0) {
        free(buf);
        return mi_seterr(EIO, "%s: the job closed the connection without answering", path);
    }
    buf[have] = '\0';
    char *nl = strchr(buf, '\n');
    if (nl)
        *nl = '\0';
    *reply = buf;
    return 0;
}
