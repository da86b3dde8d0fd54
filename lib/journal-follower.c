/* journal-follower.c: the follower's side of the journal (journal-follower.h):
 * creating and opening journals, following (lock, lease), taking dirty chunks, quiesce and
 * pivot, the registry as the follower sees it, writers behind the shim's back, the
 * recorded source and target, observation and reset.  mirror-img only. */
#include "journal-follower.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <unistd.h>
/* ================================================================================== */
/* Follower side                                                                        */

#include <sys/ioctl.h>
#include <linux/fs.h>

/* A writer that died inside a tracked call: its range is unknown (untrusted until a full
 * pass), and its in-flight marks go, so that no later scan waits for it or reports it
 * again.  A dead process writes nothing more: clearing them is safe. */
static void reap_dead(struct mij *j, struct mij_slot *s, int pid)
{
    mij_untrust(j, MIJ_U_WRITER_DIED, pid);
    MIJ_STORE(&s->inflight, 0);
    for (unsigned i = 0; i < MIJ_TMARKS; i++)
        MIJ_STORE(&s->tmark[i], 0);
}

static void futex_wake_all(uint32_t *w)
{
    syscall(SYS_futex, w, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

/* A journal truncated under mirror-img: the next access to its mapping raises SIGBUS.
 * Like the shim, put zero pages in its place and let mij_check_alive() report it (the
 * follower's tick does); other faults go to the previous handler or kill as they would. */
#define MIJ_BUS_MAPS 8
static struct { uintptr_t base; size_t size; } bus_maps[MIJ_BUS_MAPS];
static struct sigaction old_bus;
static pthread_mutex_t bus_lock = PTHREAD_MUTEX_INITIALIZER;

static void bus_handler(int sig, siginfo_t *si, void *uc)
{
    uintptr_t a = (uintptr_t)si->si_addr;
    for (unsigned i = 0; si->si_code > 0 && i < MIJ_BUS_MAPS; i++) {
        uintptr_t b = __atomic_load_n(&bus_maps[i].base, __ATOMIC_ACQUIRE);
        size_t n = __atomic_load_n(&bus_maps[i].size, __ATOMIC_RELAXED);
        if (b && a >= b && a < b + n) {
            mmap((void *)b, n, PROT_READ | PROT_WRITE, MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS,
                 -1, 0);
            return;
        }
    }
    mij_sigbus_pass(sig, si, uc, &old_bus);
}

static void bus_watch(struct mij *j, bool on)
{
    static bool installed;
    pthread_mutex_lock(&bus_lock);
    if (on && !installed) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_sigaction = bus_handler;
        sa.sa_flags = SA_SIGINFO | SA_NODEFER;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGBUS, &sa, &old_bus);
        installed = true;
    }
    for (unsigned i = 0; i < MIJ_BUS_MAPS; i++) {
        uintptr_t want = on ? 0 : (uintptr_t)j->base;
        if (bus_maps[i].base == want) {
            bus_maps[i].size = j->size;
            __atomic_store_n(&bus_maps[i].base, on ? (uintptr_t)j->base : 0, __ATOMIC_RELEASE);
            break;
        }
    }
    pthread_mutex_unlock(&bus_lock);
}

static int open_fd(const char *jpath, unsigned flags, struct mij **out)
{
    int fd = open(jpath, ((flags & MIJ_RDONLY) ? O_RDONLY : O_RDWR) | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) {
        int e = errno;
        if (e == ENOENT)
            return mi_seterr(e, "%s: no such journal", jpath);
        if (e == ELOOP)
            return mi_seterr(e, "%s: is a symbolic link: refusing it (name the journal itself)", jpath);
        return mi_seterr(e, "%s: cannot open the journal: %s", jpath, strerror(e));
    }
    struct mij *j = calloc(1, sizeof *j);
    if (!j) {
        close(fd);
        return mi_seterr(ENOMEM, "%s: out of memory", jpath);
    }
    int r = mij_map(j, fd, jpath, flags & MIJ_RDONLY);
    if (r < 0) {
        close(fd);
        free(j);
        return r;
    }
    j->fd = fd;
    j->path = strdup(jpath);
    bus_watch(j, true);
    *out = j;
    return 0;
}

int mij_open(const char *jpath, unsigned flags, struct mij **out)
{
    return open_fd(jpath, flags, out);
}

void mij_close(struct mij *j)
{
    if (!j)
        return;
    if (j->following)
        mij_unfollow(j);
    bus_watch(j, false);
    mij_unmap(j);
    if (j->fd >= 0)
        close(j->fd);
    free(j->path);
    free(j);
}

int mij_check_source(struct mij *j, const struct stat *st, const char *path)
{
    if (mij_is_source(j->h, st))
        return 0;
    return mi_seterr(ESTALE, "%s: journal is for %s (device %llu, inode %llu), not %s", j->path,
                mij_source_path(j), (unsigned long long)j->h->src_dev,
                (unsigned long long)j->h->src_ino, path);
}

int mij_check_alive(struct mij *j)
{
    struct stat st;
    if (fstat(j->fd, &st) < 0)
        return mi_seterr(errno, "%s: %s", j->path, strerror(errno));
    if ((uint64_t)st.st_size != j->size)
        return mi_seterr(EIO, "%s: the journal was truncated or replaced under us (%llu bytes, "
                    "expected %llu)", j->path, (unsigned long long)st.st_size,
                    (unsigned long long)j->size);
    return 0;
}

static int source_size(int fd, const struct stat *st, uint64_t *size)
{
    if (S_ISBLK(st->st_mode)) {
        uint64_t s;
        if (ioctl(fd, BLKGETSIZE64, &s) < 0)
            return -errno;
        *size = s;
    } else {
        *size = (uint64_t)st->st_size;
    }
    return 0;
}

/* Fill a fresh header for the source. */
static void init_header(struct mij *j, uint64_t gran, uint64_t nchunks, uint64_t bb,
                        const struct stat *st, uint64_t size, const char *srcpath)
{
    struct mij_header *h = j->h;
    memcpy(h->magic, MIJ_MAGIC, 8);
    h->bom = MIJ_BOM;
    h->version = MIJ_VERSION;
    h->header_size = MIJ_HEADER_SIZE;
    h->granularity = gran;
    h->nchunks = nchunks;
    h->covered = nchunks * gran;
    h->bitmap_bytes = bb;
    h->dirty_off = MIJ_HEADER_SIZE;
    h->copying_off = MIJ_HEADER_SIZE + bb;
    h->file_size = MIJ_HEADER_SIZE + 2 * bb;
    h->slots_off = MIJ_OFF_SLOTS;
    h->nslots = MIJ_NSLOTS;
    h->slot_size = sizeof(struct mij_slot);
    h->ring_off = MIJ_OFF_RING;
    h->nring = MIJ_NRING;
    h->rec_size = sizeof(struct mij_rec);
    h->paths_off = MIJ_OFF_SRC_PATH;
    h->created_ns = mij_clock(CLOCK_REALTIME);
    h->src_type = S_ISBLK(st->st_mode) ? S_IFBLK : S_IFREG;
    h->src_dev = (uint64_t)st->st_dev;
    h->src_ino = (uint64_t)st->st_ino;
    h->src_rdev = (uint64_t)st->st_rdev;
    h->src_size0 = size;
    snprintf((char *)j->base + MIJ_OFF_SRC_PATH, MIJ_PATH_MAX, "%s", srcpath);
    struct mij_slot *ovf = (struct mij_slot *)(j->base + MIJ_OFF_SLOTS);
    ovf->pid = -1;
}

/* Link the finished temporary file to its name; -EEXIST if somebody was faster. */
static int publish(const char *tmp, const char *jpath)
{
    if (link(tmp, jpath) == 0) {
        unlink(tmp);
        return 0;
    }
    int e = errno;
    if (e == EPERM || e == ENOTSUP || e == EOPNOTSUPP || e == EMLINK) {
        if (renameat2(AT_FDCWD, tmp, AT_FDCWD, jpath, RENAME_NOREPLACE) == 0)
            return 0;
        e = errno;
    }
    unlink(tmp);
    return -e;
}

static int create_new(const char *jpath, int sfd, const struct stat *st, uint64_t size,
                      const char *srcpath, uint64_t gran, uint64_t covered, struct mij **out)
{
    uint64_t nchunks = covered / gran;
    uint64_t bb = mij_bitmap_bytes(nchunks);
    uint64_t fsize = MIJ_HEADER_SIZE + 2 * bb;
    (void)sfd;
    size_t l = strlen(jpath);
    char *tmp = malloc(l + 16);
    if (!tmp)
        return mi_seterr(ENOMEM, "%s: out of memory", jpath);
    const char *slash = strrchr(jpath, '/');
    size_t dl = slash ? (size_t)(slash - jpath) + 1 : 0;
    memcpy(tmp, jpath, dl);
    snprintf(tmp + dl, l + 16 - dl, ".%.*s.XXXXXX", (int)(l - dl > 200 ? 200 : l - dl), jpath + dl);
    int fd = mkostemp(tmp, O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        free(tmp);
        return mi_seterr(e, "%s: cannot create the journal: %s", jpath, strerror(e));
    }
    int r;
    if (fchmod(fd, 0600) < 0 || ftruncate(fd, (off_t)fsize) < 0) {
        r = mi_seterr(errno, "%s: cannot create the journal: %s", jpath, strerror(errno));
        goto fail;
    }
    struct mij *j = calloc(1, sizeof *j);
    if (!j) {
        r = mi_seterr(ENOMEM, "%s: out of memory", jpath);
        goto fail;
    }
    void *p = mmap(NULL, fsize, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
        r = mi_seterr(errno, "%s: cannot map the journal: %s", jpath, strerror(errno));
        free(j);
        goto fail;
    }
    j->base = p;
    j->h = p;
    init_header(j, gran, nchunks, bb, st, size, srcpath);
    munmap(p, fsize);
    free(j);
    if (fsync(fd) < 0) {
        r = mi_seterr(errno, "%s: cannot write the journal: %s", jpath, strerror(errno));
        goto fail;
    }
    r = publish(tmp, jpath);
    if (r < 0) {
        close(fd);
        free(tmp);
        if (r == -EEXIST)
            return r;
        return mi_seterr(-r, "%s: cannot create the journal: %s", jpath, strerror(-r));
    }
    free(tmp);
    close(fd);
    return open_fd(jpath, 0, out);
fail:
    close(fd);
    unlink(tmp);
    free(tmp);
    return r;
}

int mij_create(const char *jpath, const char *src, const struct mij_create_opts *o,
               struct mij **out, bool *created)
{
    struct mij_create_opts def = {0};
    if (!o)
        o = &def;
    if (created)
        *created = false;
    int sfd = open(src, O_RDONLY | O_CLOEXEC);
    if (sfd < 0)
        return mi_seterr(errno, "%s: %s", src, strerror(errno));
    struct stat st;
    uint64_t size = 0;
    int r;
    if (fstat(sfd, &st) < 0 || (r = source_size(sfd, &st, &size)) < 0) {
        r = mi_seterr(errno, "%s: %s", src, strerror(errno));
        goto out;
    }
    if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode)) {
        r = mi_seterr(EINVAL, "%s: not a regular file or block device", src);
        goto out;
    }
    uint64_t gran = o->granularity ? o->granularity : MIJ_DEFAULT_GRANULARITY;
    if (gran < MIJ_MIN_GRANULARITY || gran > MIJ_MAX_GRANULARITY || (gran & (gran - 1))) {
        r = mi_seterr(EINVAL, "%s: granularity must be a power of two from 512 to 1G", jpath);
        goto out;
    }
    for (int attempt = 0; attempt < 3; attempt++) {
        struct mij *j;
        r = open_fd(jpath, 0, &j);
        if (r == 0) {
            r = mij_check_source(j, &st, src);
            if (r == 0 && o->granularity_set && mij_granularity(j) != gran)
                r = mi_seterr(EINVAL, "%s: journal has granularity %llu, not %llu (remove it to "
                         "start a new one)", jpath, (unsigned long long)mij_granularity(j),
                         (unsigned long long)gran);
            if (r < 0) {
                mij_close(j);
                goto out;
            }
            *out = j;
            goto out;
        }
        if (r != -ENOENT)
            goto out;
        uint64_t covered = o->max_size;
        if (!covered)
            covered = size > MIJ_MIN_COVERED / 4 ? size * 4 : MIJ_MIN_COVERED;
        if (covered < size) {
            r = mi_seterr(EINVAL, "%s: maximum size %llu is smaller than the source (%llu bytes)",
                     jpath, (unsigned long long)covered, (unsigned long long)size);
            goto out;
        }
        covered = (covered + gran - 1) / gran * gran;
        if (covered / gran > MIJ_MAX_CHUNKS) {
            r = mi_seterr(EINVAL, "%s: %llu chunks of %llu bytes are too many: use a larger "
                     "granularity", jpath, (unsigned long long)(covered / gran),
                     (unsigned long long)gran);
            goto out;
        }
        char *abs = realpath(src, NULL);
        r = create_new(jpath, sfd, &st, size, abs ? abs : src, gran, covered, out);
        free(abs);
        if (r == 0 && created)
            *created = true;
        if (r != -EEXIST)
            goto out;
    }
    r = mi_seterr(EEXIST, "%s: journal keeps changing under us", jpath);
out:
    close(sfd);
    return r;
}

/* ---------------------------------------------------------------------------------- */
/* Following                                                                            */

int mij_follow(struct mij *j, uint64_t lease_ns)
{
    if (j->rdonly)
        return mi_seterr(EBADF, "%s: journal opened read-only", j->path);
    if (flock(j->fd, LOCK_EX | LOCK_NB) < 0) {
        int e = errno;
        if (e == EWOULDBLOCK)
            return mi_seterr(EBUSY, "%s: another follower (pid %d) is using this journal", j->path,
                        (int)MIJ_LOAD(&j->h->follower_pid));
        return mi_seterr(e, "%s: cannot lock the journal: %s", j->path, strerror(e));
    }
    j->following = true;
    j->lease_ns = lease_ns ? lease_ns : 2000000000ull;
    MIJ_STORE(&j->h->follower_pid, (int32_t)getpid());
    MIJ_STORE(&j->h->follower_since_ns, mij_clock(CLOCK_REALTIME));
    MIJ_STORE(&j->h->lease_ns, j->lease_ns);
    /* A quiesce left by a follower that died: it no longer holds anybody (its lease ran
     * out), but clear it before taking a fresh lease so it cannot start holding again. */
    MIJ_STORE(&j->h->quiesce, 0);
    futex_wake_all(&j->h->quiesce);
    MIJ_STORE(&j->h->lease_expiry_ns, 0);
    mij_recover(j);
    mij_lease_renew(j);
    return 0;
}

void mij_unfollow(struct mij *j)
{
    if (!j->following)
        return;
    MIJ_STORE(&j->h->quiesce, 0);
    futex_wake_all(&j->h->quiesce);
    MIJ_STORE(&j->h->lease_expiry_ns, 0);
    MIJ_STORE(&j->h->lease_pid, 0);
    MIJ_STORE(&j->h->follower_pid, 0);
    MIJ_STORE(&j->h->delay_us, 0);
    flock(j->fd, LOCK_UN);
    j->following = false;
}

int mij_lease_renew(struct mij *j)
{
    uint64_t now = mij_clock(CLOCK_MONOTONIC);
    uint64_t old = MIJ_LOAD(&j->h->lease_expiry_ns);
    int r = (old && now >= old) ? -ETIME : 0;
    if (r < 0)
        j->lapsed = true;
    MIJ_STORE(&j->h->lease_pid, (int32_t)getpid());
    MIJ_STORE(&j->h->lease_expiry_ns, now + j->lease_ns);
    j->lease_last = now + j->lease_ns;
    if (r < 0)
        mi_seterr(ETIME, "%s: the follower's lease ran out before it was renewed", j->path);
    return r;
}

int mij_follower(struct mij *j, uint64_t *lease_left_ns)
{
    uint64_t exp = MIJ_LOAD(&j->h->lease_expiry_ns), now = mij_clock(CLOCK_MONOTONIC);
    int pid = MIJ_LOAD(&j->h->follower_pid);
    if (lease_left_ns)
        *lease_left_ns = exp > now ? exp - now : 0;
    /* A follower killed with -9 left its pid behind (a stopped one is still a follower). */
    if (pid && !j->following && !mij_pid_alive(pid, 0))
        return 0;
    return pid;
}

/* ---------------------------------------------------------------------------------- */
/* Bitmaps                                                                              */

static inline uint64_t run_mask(unsigned b, uint64_t n)
{
    return (n >= 64 ? ~0ull : ((1ull << n) - 1)) << b;
}

/* First set bit at or after c in bm (nchunks if none). */
static uint64_t next_set(const struct mij *j, const uint64_t *bm, uint64_t c)
{
    while (c < j->nchunks) {
        uint64_t w = MIJ_LOAD(&bm[c >> 6]) >> (c & 63);
        if (w)
            return c + (uint64_t)__builtin_ctzll(w) < j->nchunks ? c + (uint64_t)__builtin_ctzll(w)
                                                                 : j->nchunks;
        c = (c | 63) + 1;
    }
    return j->nchunks;
}

uint64_t mij_next_run(struct mij *j, bool copying, uint64_t from, uint64_t *first)
{
    const uint64_t *bm = copying ? j->copying : j->dirty;
    uint64_t c = next_set(j, bm, from), n = 0;
    *first = c;
    while (c + n < j->nchunks) {
        uint64_t x = ~MIJ_LOAD(&bm[(c + n) >> 6]) >> ((c + n) & 63);
        unsigned b = (unsigned)((c + n) & 63);
        uint64_t ones = x ? (uint64_t)__builtin_ctzll(x) : 64 - b;
        if (ones > 64 - b)
            ones = 64 - b;
        n += ones;
        if (b + ones < 64)
            break;
    }
    if (c + n > j->nchunks)
        n = j->nchunks - c;
    return n;
}

/* Chunks dirty and not being copied, in word w. */
static inline uint64_t takeable(const struct mij *j, uint64_t w)
{
    return MIJ_LOAD(&j->dirty[w]) & ~MIJ_LOAD(&j->copying[w]);
}

/* A chunk that is dirty again while a copy of it is still in flight is not handed out
 * twice: two copies of one chunk in flight may finish in either order, and the older
 * read written last would leave the target stale with the dirty bit clear.  It stays
 * dirty and is taken once the copy in flight is done (the follower's takes and dones are
 * serialized: one follower per journal, its workers under the job's lock). */
uint64_t mij_take(struct mij *j, uint64_t from, uint64_t max, uint64_t *first)
{
    uint64_t c = from, n = 0;
    while (c < j->nchunks) {
        uint64_t x = takeable(j, c >> 6) >> (c & 63);
        if (x) {
            c += (uint64_t)__builtin_ctzll(x);
            break;
        }
        c = (c | 63) + 1;
    }
    if (c > j->nchunks)
        c = j->nchunks;
    *first = c;
    if (!max)
        max = 1;
    while (c + n < j->nchunks && n < max) {
        uint64_t cc = c + n, w = cc >> 6;
        unsigned b = (unsigned)(cc & 63);
        uint64_t x = takeable(j, w) >> b;
        if (!(x & 1))
            break;
        uint64_t ones = ~x ? (uint64_t)__builtin_ctzll(~x) : 64 - b;
        if (ones > 64 - b)
            ones = 64 - b;
        if (ones > max - n)
            ones = max - n;
        if (cc + ones > j->nchunks)
            ones = j->nchunks - cc;
        uint64_t mask = run_mask(b, ones);
        /* copying first: a crash between the two leaves the chunk in both, never in none */
        __atomic_fetch_or(&j->copying[w], mask, __ATOMIC_SEQ_CST);
        __atomic_fetch_and(&j->dirty[w], ~mask, __ATOMIC_SEQ_CST);
        n += ones;
        if (b + ones < 64)
            break;
    }
    return n;
}

static void for_bits(struct mij *j, uint64_t first, uint64_t n,
                     void (*fn)(struct mij *, uint64_t w, uint64_t mask))
{
    if (first >= j->nchunks)
        return;
    if (n > j->nchunks - first)
        n = j->nchunks - first;
    while (n) {
        unsigned b = (unsigned)(first & 63);
        uint64_t k = n < 64 - b ? n : 64 - b;
        fn(j, first >> 6, run_mask(b, k));
        first += k;
        n -= k;
    }
}

static void done_fn(struct mij *j, uint64_t w, uint64_t m)
{
    __atomic_fetch_and(&j->copying[w], ~m, __ATOMIC_SEQ_CST);
}

static void redirty_fn(struct mij *j, uint64_t w, uint64_t m)
{
    __atomic_fetch_or(&j->dirty[w], m, __ATOMIC_SEQ_CST);
    __atomic_fetch_and(&j->copying[w], ~m, __ATOMIC_SEQ_CST);
}

void mij_done(struct mij *j, uint64_t first, uint64_t n) { for_bits(j, first, n, done_fn); }
void mij_redirty(struct mij *j, uint64_t first, uint64_t n) { for_bits(j, first, n, redirty_fn); }

void mij_recover(struct mij *j)
{
    for (uint64_t w = 0; w < j->words; w++) {
        uint64_t c = MIJ_LOAD(&j->copying[w]);
        if (c) {
            __atomic_fetch_or(&j->dirty[w], c, __ATOMIC_SEQ_CST);
            __atomic_fetch_and(&j->copying[w], ~c, __ATOMIC_SEQ_CST);
        }
    }
}

void mij_mark_range(struct mij *j, uint64_t off, uint64_t len)
{
    mij_mark(j, off, len, getpid());
}

uint64_t mij_backlog(struct mij *j, uint64_t *copying)
{
    uint64_t d = 0, c = 0;
    for (uint64_t w = 0; w < j->words; w++) {
        d += (uint64_t)__builtin_popcountll(MIJ_LOADR(&j->dirty[w]));
        c += (uint64_t)__builtin_popcountll(MIJ_LOADR(&j->copying[w]));
    }
    if (copying)
        *copying = c;
    return d;
}

/* ---------------------------------------------------------------------------------- */
/* Quiesce and pivot                                                                    */

static void pause_a_little(unsigned iter)
{
    if (iter < 200) {
        sched_yield();
    } else {
        struct timespec ts = {0, 50000};
        nanosleep(&ts, NULL);
    }
}

/* Renew the lease when half of it is gone (callers loop on writers). */
static void lease_keep(struct mij *j)
{
    if (mij_clock(CLOCK_MONOTONIC) + j->lease_ns / 2 >= j->lease_last)
        mij_lease_renew(j);
}

int mij_quiesce_begin(struct mij *j, uint64_t timeout_ns, struct mij_quiesce_info *qi)
{
    struct mij_quiesce_info dummy;
    if (!qi)
        qi = &dummy;
    memset(qi, 0, sizeof *qi);
    if (!j->following)
        return mi_seterr(EPERM, "%s: quiesce needs the follower's lock", j->path);
    mij_lease_renew(j);
    j->lapsed = false;
    uint64_t t0 = mij_clock(CLOCK_MONOTONIC);
    uint32_t q = MIJ_LOAD(&j->h->quiesce_seq) + 1;
    MIJ_STORE(&j->h->quiesce_seq, q ? q : 1); /* 0 is "never" in the slots' lapsed_qseq */
    MIJ_STORE(&j->h->quiesce, 1);
    bool seen_dead[MIJ_NSLOTS] = {false};
    for (unsigned iter = 0;; iter++) {
        unsigned busy = 0;
        int busy_pid = 0;
        for (unsigned i = 0; i < MIJ_NSLOTS; i++) {
            struct mij_slot *s = &j->slots[i];
            int pid = MIJ_LOAD(&s->pid);
            if (!pid || !mij_slot_inflight(s) || seen_dead[i])
                continue;
            if (!mij_pid_alive(pid, MIJ_LOAD(&s->start_ticks))) {
                /* killed inside a write: what it wrote is unknown */
                seen_dead[i] = true;
                qi->died++;
                reap_dead(j, s, pid);
                continue;
            }
            busy++;
            busy_pid = pid;
        }
        if (!busy)
            break;
        uint64_t now = mij_clock(CLOCK_MONOTONIC);
        if (now - t0 > timeout_ns) {
            mij_quiesce_end(j);
            return mi_seterr(ETIMEDOUT, "%s: %u writer%s still inside a write after %llu ms "
                        "(pid %d)", j->path, busy, busy == 1 ? "" : "s",
                        (unsigned long long)((now - t0) / 1000000), busy_pid);
        }
        lease_keep(j);
        pause_a_little(iter);
    }
    /* Writable shared mappings: their stores need no call; mark what they cover. */
    for (unsigned i = 0; i < MIJ_NSLOTS; i++) {
        struct mij_slot *s = &j->slots[i];
        int pid = MIJ_LOAD(&s->pid);
        if (!pid)
            continue;
        /* A process that ended without munmap left its stores in the page cache: mark
         * its mappings once, then forget them. */
        bool alive = mij_pid_alive(pid, MIJ_LOAD(&s->start_ticks));
        if (alive && pid > 0)
            qi->writers++;
        uint32_t nm = MIJ_LOAD(&s->nmaps);
        if (!nm)
            continue;
        if (!alive)
            MIJ_STORE(&s->nmaps, 0);
        else
            qi->maps += nm;
        qi->marked += nm;
        if (nm > MIJ_SLOT_MAPS) {
            mij_mark_range(j, 0, j->covered);
            continue;
        }
        for (unsigned m = 0; m < nm; m++)
            mij_mark_range(j, MIJ_LOAD(&s->maps[m].off), MIJ_LOAD(&s->maps[m].len));
    }
    qi->waited_ns = mij_clock(CLOCK_MONOTONIC) - t0;
    return 0;
}

void mij_quiesce_end(struct mij *j)
{
    MIJ_STORE(&j->h->quiesce, 0);
    futex_wake_all(&j->h->quiesce);
}

int mij_pivot_request(struct mij *j, const char *target)
{
    if (!j->following)
        return mi_seterr(EPERM, "%s: pivot needs the follower's lock", j->path);
    for (unsigned i = 0; i < MIJ_NSLOTS; i++) {
        struct mij_slot *s = &j->slots[i];
        int pid = MIJ_LOAD(&s->pid);
        if (pid && MIJ_LOAD(&s->nmaps) && mij_pid_alive(pid, MIJ_LOAD(&s->start_ticks)))
            return mi_seterr(EBUSY, "%s: writer pid %d has a writable shared mapping of the source: "
                        "cannot pivot", j->path, pid);
    }
    char *abs = realpath(target, NULL);
    if (!abs)
        return mi_seterr(errno, "%s: %s", target, strerror(errno));
    struct stat st;
    if (stat(abs, &st) < 0 || !(S_ISREG(st.st_mode) || S_ISBLK(st.st_mode))) {
        free(abs);
        return mi_seterr(EINVAL, "%s: pivot target must be a local file or block device", target);
    }
    if (strlen(abs) >= MIJ_PATH_MAX) {
        free(abs);
        return mi_seterr(ENAMETOOLONG, "%s: path too long", target);
    }
    /* Writers act on a request of the lease holder during the quiesce in force (see
     * mij_pivot_valid): renew now, and refuse if the lease ran out since the quiesce
     * began, when writers may have written the source unheld after the drain. */
    if (!MIJ_LOAD(&j->h->quiesce) || (mij_lease_renew(j), j->lapsed)) {
        free(abs);
        return mi_seterr(ETIME, "%s: the follower's lease ran out during the quiesce (was it stopped "
                    "or starved?): the writers went on, so they stay on the source", j->path);
    }
    char *dst = (char *)j->base + MIJ_OFF_PIVOT_PATH;
    memset(dst, 0, MIJ_PATH_MAX);
    memcpy(dst, abs, strlen(abs));
    free(abs);
    MIJ_STORE(&j->h->pivot_dev, (uint64_t)st.st_dev);
    MIJ_STORE(&j->h->pivot_ino, (uint64_t)st.st_ino);
    MIJ_STORE(&j->h->pivot_pid, (int32_t)getpid());
    MIJ_STORE(&j->h->pivot_qseq, MIJ_LOAD(&j->h->quiesce_seq));
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    __atomic_fetch_add(&j->h->pivot_gen, 1, __ATOMIC_SEQ_CST);
    futex_wake_all(&j->h->quiesce); /* held writers switch while held */
    return 0;
}

bool mij_lease_lapsed(const struct mij *j) { return j->lapsed; }

int mij_pivot_finish(struct mij *j)
{
    mij_lease_renew(j);
    if (j->lapsed)
        return mi_seterr(ETIME, "%s: the follower's lease ran out during the pivot: writers that were "
                    "let go stay on the source", j->path);
    MIJ_STORE(&j->h->pivot_done, MIJ_LOAD(&j->h->pivot_gen));
    return 0;
}

int mij_pivot_wait(struct mij *j, uint64_t timeout_ns, struct mij_pivot_info *pi)
{
    struct mij_pivot_info dummy;
    if (!pi)
        pi = &dummy;
    uint64_t gen = MIJ_LOAD(&j->h->pivot_gen), t0 = mij_clock(CLOCK_MONOTONIC);
    for (unsigned iter = 0;; iter++) {
        unsigned pending = 0;
        memset(pi, 0, sizeof *pi);
        for (unsigned i = 1; i < MIJ_NSLOTS; i++) {
            struct mij_slot *s = &j->slots[i];
            int pid = MIJ_LOAD(&s->pid);
            if (pid <= 0 || !mij_pid_alive(pid, MIJ_LOAD(&s->start_ticks)))
                continue;
            if (MIJ_LOAD(&s->pivot_ack) == gen) {
                int e = MIJ_LOAD(&s->pivot_err);
                if (e) {
                    if (!pi->failed++) {
                        pi->first_err_pid = pid;
                        pi->first_err = e;
                    }
                } else {
                    pi->switched++;
                }
            } else if (!MIJ_LOAD(&s->tracked) ||
                       (!mij_slot_inflight(s) && !MIJ_LOAD(&s->waiting))) {
                pi->idle++;
            } else {
                pending++;
            }
        }
        if (!pending)
            return 0;
        if (mij_clock(CLOCK_MONOTONIC) - t0 > timeout_ns)
            return mi_seterr(ETIMEDOUT, "%s: %u writer%s did not switch to the target", j->path,
                        pending, pending == 1 ? "" : "s");
        if (j->following)
            lease_keep(j);
        pause_a_little(iter);
    }
}

void mij_set_delay(struct mij *j, uint32_t us) { MIJ_STORE(&j->h->delay_us, us); }
uint32_t mij_get_delay(struct mij *j) { return MIJ_LOAD(&j->h->delay_us); }

/* ---------------------------------------------------------------------------------- */
/* Writers, counters, reasons                                                           */

/* ---------------------------------------------------------------------------------- */
/* Writers behind the shim's back                                                       */

struct foreign_scan {
    struct mij *j;
    struct stat src;
    int self, found, pdfd;
    char path[64];
};

/* A live registered writer, whose shim tracks it: not one that exec'd with the source open
 * and whose new image has not registered (yet: a static program never will). */
static bool registered_alive(struct mij *j, int pid)
{
    for (unsigned i = 1; i < MIJ_NSLOTS; i++)
        if (MIJ_LOAD(&j->slots[i].pid) == pid)
            return !MIJ_LOAD(&j->slots[i].exec_pending) &&
                   mij_pid_alive(pid, MIJ_LOAD(&j->slots[i].start_ticks));
    return false;
}

/* The open flags of /proc/PID/fdinfo/FD ("flags:\t0100002"), or -1. */
static int fd_flags(int pdfd, unsigned long fd)
{
    char name[40];
    snprintf(name, sizeof name, "fdinfo/%lu", fd);
    int f = openat(pdfd, name, O_RDONLY | O_CLOEXEC);
    if (f < 0)
        return -1;
    char buf[256];
    ssize_t n = read(f, buf, sizeof buf - 1);
    close(f);
    if (n <= 0)
        return -1;
    buf[n] = '\0';
    char *p = strstr(buf, "flags:");
    return p ? (int)strtol(p + 6, NULL, 8) : -1;
}

static bool fd_writes_source(unsigned long fd, void *arg)
{
    struct foreign_scan *fs = arg;
    char name[40];
    struct stat st;
    snprintf(name, sizeof name, "fd/%lu", fd);
    if (fstatat(fs->pdfd, name, &st, 0) < 0 || !mij_is_source(fs->j->h, &st))
        return false;
    int fl = fd_flags(fs->pdfd, fd);
    return fl < 0 || (fl & O_ACCMODE) != O_RDONLY;
}

/* A writable shared mapping of the source in /proc/PID/maps ("rw-s ... MM:mm INODE"). */
static bool maps_source(struct foreign_scan *fs)
{
    if (fs->j->h->src_type != S_IFREG)
        return false;
    int f = openat(fs->pdfd, "maps", O_RDONLY | O_CLOEXEC);
    if (f < 0)
        return false;
    FILE *m = fdopen(f, "r");
    if (!m) {
        close(f);
        return false;
    }
    char line[512];
    bool hit = false;
    while (!hit && fgets(line, sizeof line, m)) {
        char perms[8];
        unsigned maj, min;
        unsigned long long ino;
        if (sscanf(line, "%*s %7s %*s %x:%x %llu", perms, &maj, &min, &ino) == 4 &&
            perms[1] == 'w' && perms[3] == 's' && ino == fs->j->h->src_ino &&
            makedev(maj, min) == (dev_t)fs->j->h->src_dev)
            hit = true;
    }
    fclose(m);
    return hit;
}

static bool pid_writes_source(unsigned long pid, void *arg)
{
    struct foreign_scan *fs = arg;
    if ((int)pid == fs->self || registered_alive(fs->j, (int)pid))
        return false;
    snprintf(fs->path, sizeof fs->path, "/proc/%lu", pid);
    fs->pdfd = open(fs->path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fs->pdfd < 0)
        return false;
    bool hit = false;
    int fdd = openat(fs->pdfd, "fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fdd >= 0) {
        hit = mij_dir_numbers(fdd, fd_writes_source, fs) == 1;
        close(fdd);
    }
    if (!hit)
        hit = maps_source(fs);
    close(fs->pdfd);
    if (hit)
        fs->found = (int)pid;
    return hit;
}

int mij_foreign_writer(struct mij *j, int src_fd, char *comm, size_t commsize)
{
    struct foreign_scan fs = {.j = j, .self = getpid()};
    if (fstat(src_fd, &fs.src) < 0)
        return -errno;
    int d = open("/proc", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (d < 0)
        return -errno;
    mij_dir_numbers(d, pid_writes_source, &fs);
    close(d);
    if (fs.found && comm && commsize) {
        snprintf(fs.path, sizeof fs.path, "/proc/%d/comm", fs.found);
        comm[0] = '\0';
        int f = open(fs.path, O_RDONLY | O_CLOEXEC);
        ssize_t n = f >= 0 ? read(f, comm, commsize - 1) : -1;
        if (f >= 0)
            close(f);
        comm[n > 0 ? n : 0] = '\0';
        comm[strcspn(comm, "\n")] = '\0';
    }
    return fs.found;
}

int mij_writers(struct mij *j, struct mij_writer *w, int max)
{
    int n = 0;
    for (int pass = 0; pass < 2; pass++)
        for (unsigned i = 0; i < MIJ_NSLOTS && n < max; i++) {
            struct mij_slot *s = &j->slots[i];
            int pid = MIJ_LOAD(&s->pid);
            if (!pid)
                continue;
            if (pid == -1 && !MIJ_LOAD(&s->writes) && !mij_slot_inflight(s))
                continue;
            bool alive = mij_pid_alive(pid, MIJ_LOAD(&s->start_ticks));
            if (alive != (pass == 0))
                continue;
            struct mij_writer *x = &w[n++];
            x->pid = pid;
            x->alive = alive;
            x->inflight = mij_slot_inflight(s);
            x->waiting = MIJ_LOAD(&s->waiting);
            x->tracked = MIJ_LOAD(&s->tracked);
            x->nmaps = MIJ_LOAD(&s->nmaps);
            x->bytes = MIJ_LOAD(&s->bytes) - MIJ_LOAD(&s->bytes_base);
            x->writes = MIJ_LOAD(&s->writes) - MIJ_LOAD(&s->writes_base);
            x->reg_ns = MIJ_LOAD(&s->reg_ns);
            x->last_ns = MIJ_LOAD(&s->last_ns);
            x->pivot_ack = MIJ_LOAD(&s->pivot_ack);
            x->pivot_err = MIJ_LOAD(&s->pivot_err);
        }
    return n;
}

void mij_counters(struct mij *j, uint64_t *bytes, uint64_t *writes)
{
    uint64_t b = 0, w = 0;
    for (unsigned i = 0; i < MIJ_NSLOTS; i++) {
        b += MIJ_LOADR(&j->slots[i].bytes);
        w += MIJ_LOADR(&j->slots[i].writes);
    }
    if (bytes)
        *bytes = b;
    if (writes)
        *writes = w;
}

uint64_t mij_untrusted(struct mij *j) { return MIJ_LOAD(&j->h->untrusted); }

void mij_untrusted_clear(struct mij *j, uint64_t mask)
{
    __atomic_fetch_and(&j->h->untrusted, ~mask, __ATOMIC_SEQ_CST);
}

static const struct {
    const char *name, *text;
} reasons[MIJ_U_NREASONS] = {
    [MIJ_U_IO_URING_SETUP] = {"io_uring_setup", "an io_uring was set up through a raw system call"},
    [MIJ_U_IO_URING_WRITE] = {"io_uring", "an io_uring submitted a write or open that may reach the source"},
    [MIJ_U_IO_SUBMIT] = {"io_submit", "Linux AIO (io_submit, libaio) was used"},
    [MIJ_U_POSIX_AIO] = {"posix_aio", "POSIX AIO (aio_write, lio_listio) wrote the source"},
    [MIJ_U_BEYOND] = {"beyond_covered_size", "a write went beyond the size the journal covers"},
    [MIJ_U_FD_TABLE] = {"fd_table", "the source was open on a descriptor beyond the shim's table"},
    [MIJ_U_STDIO] = {"stdio", "a stdio stream was opened for writing on the source"},
    [MIJ_U_RAW_SYSCALL] = {"raw_syscall", "a raw write system call reached the source"},
    [MIJ_U_WRITER_DIED] = {"writer_died", "a writer died during a write"},
    [MIJ_U_BYPASS] = {"bypass", "the source changed behind the shim (size or change time)"},
    [MIJ_U_PIVOT_FAILED] = {"pivot_failed", "a writer could not switch to the pivot target"},
    [MIJ_U_MMAP_TABLE] = {"mmap_table", "too many shared mappings of the source to track"},
    [MIJ_U_FOREIGN] = {"writer_without_shim", "a process not started under the shim has the "
                       "source open for writing (see the follower's message for its pid)"},
    [MIJ_U_EXEC] = {"exec_without_shim", "a program started without the shim inherited the "
                    "source open (its environment dropped MIRROR_IMG_JOURNAL or LD_PRELOAD)"},
};

const char *mij_reason_name(unsigned r) { return r < MIJ_U_NREASONS ? reasons[r].name : "unknown"; }
const char *mij_reason_text(unsigned r) { return r < MIJ_U_NREASONS ? reasons[r].text : "unknown reason"; }

const char *mij_reasons_str(uint64_t mask, char *buf, size_t size)
{
    size_t l = 0;
    buf[0] = '\0';
    for (unsigned r = 0; r < 64; r++)
        if (mask & (1ull << r)) {
            int n = snprintf(buf + l, size - l, "%s%s", l ? ", " : "", mij_reason_name(r));
            if (n < 0 || (size_t)n >= size - l)
                break;
            l += (size_t)n;
        }
    return buf;
}

static const char *const op_names[MIJ_OP_NOPS] = {
    [MIJ_OP_NONE] = "none", [MIJ_OP_WRITE] = "write", [MIJ_OP_PWRITE] = "pwrite",
    [MIJ_OP_WRITEV] = "writev", [MIJ_OP_PWRITEV] = "pwritev", [MIJ_OP_PWRITEV2] = "pwritev2",
    [MIJ_OP_FTRUNCATE] = "ftruncate", [MIJ_OP_TRUNCATE] = "truncate",
    [MIJ_OP_FALLOCATE] = "fallocate", [MIJ_OP_POSIX_FALLOCATE] = "posix_fallocate",
    [MIJ_OP_COPY_FILE_RANGE] = "copy_file_range", [MIJ_OP_SENDFILE] = "sendfile",
    [MIJ_OP_SPLICE] = "splice", [MIJ_OP_MMAP] = "mmap", [MIJ_OP_MSYNC] = "msync",
    [MIJ_OP_MUNMAP] = "munmap", [MIJ_OP_MPROTECT] = "mprotect", [MIJ_OP_MREMAP] = "mremap",
    [MIJ_OP_UNTRUSTED] = "untrusted", [MIJ_OP_PIVOT] = "pivot",
};

const char *mij_op_name(unsigned op) { return op < MIJ_OP_NOPS ? op_names[op] : "unknown"; }

/* ---------------------------------------------------------------------------------- */
/* The source behind the shim's back                                                    */

static bool writers_quiet(struct mij *j)
{
    for (unsigned i = 0; i < MIJ_NSLOTS; i++) {
        struct mij_slot *s = &j->slots[i];
        int pid = MIJ_LOAD(&s->pid);
        if (!pid || !mij_slot_inflight(s))
            continue;
        if (mij_pid_alive(pid, MIJ_LOAD(&s->start_ticks)))
            return false;
        reap_dead(j, s, pid);
    }
    return true;
}

int mij_source_check(struct mij *j, int src_fd)
{
    struct stat st;
    if (fstat(src_fd, &st) < 0)
        return mi_seterr(errno, "%s: %s", mij_source_path(j), strerror(errno));
    int r = mij_check_source(j, &st, mij_source_path(j));
    if (r < 0)
        return r;
    if (!MIJ_LOAD(&j->h->seen_valid))
        return MIJ_SRC_UNKNOWN;
    uint64_t size = 0;
    source_size(src_fd, &st, &size);
    bool same = size == MIJ_LOAD(&j->h->seen_size) &&
                (uint64_t)st.st_ctim.tv_sec == MIJ_LOAD(&j->h->seen_ctime_sec) &&
                (uint64_t)st.st_ctim.tv_nsec == MIJ_LOAD(&j->h->seen_ctime_nsec);
    if (same || MIJ_LOAD(&j->h->ring_head) != MIJ_LOAD(&j->h->seen_ring))
        return MIJ_SRC_OK;
    mij_untrust(j, MIJ_U_BYPASS, getpid());
    return MIJ_SRC_CHANGED;
}

int mij_source_observe(struct mij *j, int src_fd)
{
    uint64_t h0 = MIJ_LOAD(&j->h->ring_head);
    if (!writers_quiet(j))
        return 0;
    struct stat st;
    if (fstat(src_fd, &st) < 0)
        return mi_seterr(errno, "%s: %s", mij_source_path(j), strerror(errno));
    if (MIJ_LOAD(&j->h->ring_head) != h0)
        return 0;
    uint64_t size = 0;
    source_size(src_fd, &st, &size);
    MIJ_STORE(&j->h->seen_valid, 0);
    MIJ_STORE(&j->h->seen_size, size);
    MIJ_STORE(&j->h->seen_ctime_sec, (uint64_t)st.st_ctim.tv_sec);
    MIJ_STORE(&j->h->seen_ctime_nsec, (uint64_t)st.st_ctim.tv_nsec);
    MIJ_STORE(&j->h->seen_ring, h0);
    MIJ_STORE(&j->h->seen_ns, mij_clock(CLOCK_REALTIME));
    MIJ_STORE(&j->h->seen_valid, 1);
    return 1;
}

void mij_source_forget(struct mij *j) { MIJ_STORE(&j->h->seen_valid, 0); }

/* ---------------------------------------------------------------------------------- */
/* The recorded target                                                                  */

void mij_target_get(struct mij *j, struct mij_target *t)
{
    memset(t, 0, sizeof *t);
    uint64_t v = MIJ_LOAD(&j->h->target_valid);
    t->valid = v != 0;
    t->kind = v == MIJ_TARGET_DISK ? MIJ_TARGET_DISK : MIJ_TARGET_FILE;
    snprintf(t->path, sizeof t->path, "%s", (const char *)j->base + MIJ_OFF_TARGET_PATH);
    t->dev = MIJ_LOAD(&j->h->target_dev);
    t->ino = MIJ_LOAD(&j->h->target_ino);
    t->size = MIJ_LOAD(&j->h->target_size);
    t->sync_gen = MIJ_LOAD(&j->h->sync_gen);
    t->synced_ns = MIJ_LOAD(&j->h->synced_ns);
}

uint64_t mij_target_set(struct mij *j, const char *path, const struct stat *st)
{
    return mij_target_set_kind(j, path, st, MIJ_TARGET_FILE);
}

uint64_t mij_target_set_kind(struct mij *j, const char *path, const struct stat *st, unsigned kind)
{
    char *abs = realpath(path, NULL);
    char *dst = (char *)j->base + MIJ_OFF_TARGET_PATH;
    MIJ_STORE(&j->h->target_valid, 0);
    snprintf(dst, MIJ_PATH_MAX, "%s", abs ? abs : path);
    free(abs);
    MIJ_STORE(&j->h->target_dev, (uint64_t)st->st_dev);
    MIJ_STORE(&j->h->target_ino, (uint64_t)st->st_ino);
    MIJ_STORE(&j->h->target_size, (uint64_t)st->st_size);
    MIJ_STORE(&j->h->synced_ns, mij_clock(CLOCK_REALTIME));
    uint64_t g = __atomic_add_fetch(&j->h->sync_gen, 1, __ATOMIC_SEQ_CST);
    MIJ_STORE(&j->h->target_valid, kind == MIJ_TARGET_DISK ? MIJ_TARGET_DISK : MIJ_TARGET_FILE);
    return g;
}

void mij_target_forget(struct mij *j) { MIJ_STORE(&j->h->target_valid, 0); }

/* ---------------------------------------------------------------------------------- */
/* Observation and reset                                                                */

static int rec_cmp(const void *a, const void *b)
{
    uint64_t x = ((const struct mij_rec *)a)->seq, y = ((const struct mij_rec *)b)->seq;
    return x < y ? -1 : x > y;
}

int mij_ring_read(struct mij *j, struct mij_rec *out, int max)
{
    struct mij_rec *all = malloc(sizeof *all * MIJ_NRING);
    if (!all)
        return mi_seterr(ENOMEM, "%s: out of memory", j->path);
    int n = 0;
    for (unsigned i = 0; i < MIJ_NRING; i++) {
        struct mij_rec *r = &j->ring[i];
        uint64_t s1 = __atomic_load_n(&r->seq, __ATOMIC_ACQUIRE);
        if (!s1)
            continue;
        struct mij_rec c;
        c.seq = s1;
        c.off = __atomic_load_n(&r->off, __ATOMIC_RELAXED);
        c.len = __atomic_load_n(&r->len, __ATOMIC_RELAXED);
        c.time_ns = __atomic_load_n(&r->time_ns, __ATOMIC_RELAXED);
        c.pid = __atomic_load_n(&r->pid, __ATOMIC_RELAXED);
        c.tid = __atomic_load_n(&r->tid, __ATOMIC_RELAXED);
        c.op = __atomic_load_n(&r->op, __ATOMIC_RELAXED);
        c.fd = __atomic_load_n(&r->fd, __ATOMIC_RELAXED);
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        if (__atomic_load_n(&r->seq, __ATOMIC_RELAXED) != s1)
            continue; /* rewritten while we read it */
        all[n++] = c;
    }
    qsort(all, (size_t)n, sizeof *all, rec_cmp);
    int skip = n > max ? n - max : 0;
    memcpy(out, all + skip, sizeof *all * (size_t)(n - skip));
    free(all);
    return n - skip;
}

int mij_reset(struct mij *j)
{
    if (j->rdonly)
        return mi_seterr(EBADF, "%s: journal opened read-only", j->path);
    if (!j->following && flock(j->fd, LOCK_EX | LOCK_NB) < 0) {
        if (errno == EWOULDBLOCK)
            return mi_seterr(EBUSY, "%s: another follower (pid %d) is using this journal", j->path,
                        (int)MIJ_LOAD(&j->h->follower_pid));
        return mi_seterr(errno, "%s: cannot lock the journal: %s", j->path, strerror(errno));
    }
    for (uint64_t w = 0; w < j->words; w++) {
        MIJ_STORE(&j->copying[w], 0);
        MIJ_STORE(&j->dirty[w], 0);
    }
    MIJ_STORE(&j->h->untrusted, 0);
    for (unsigned r = 0; r < 32; r++) {
        MIJ_STORE(&j->h->why[r].pid, 0);
        MIJ_STORE(&j->h->why[r].ns, 0);
    }
    mij_source_forget(j);
    mij_target_forget(j);
    __atomic_fetch_add(&j->h->resets, 1, __ATOMIC_SEQ_CST);
    if (!j->following)
        flock(j->fd, LOCK_UN);
    return 0;
}
