/* test-journal.c: the journal API (lib/journal.h: layout, writer and follower sides), TAP.  The test plays both sides: the
 * follower through the API, writers through the inline writer functions the shim uses. */
#include "journal.h"
#include "tap.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static char dir[64], src[128], jpath[128];

static void nap_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
}

static void make_file(const char *p, off_t size)
{
    int fd = open(p, O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (fd < 0 || ftruncate(fd, size) < 0)
        exit(99);
    close(fd);
}

/* A writer's view of the journal, as the shim maps it. */
static struct mij W;
static struct mij_slot *WS;

static void writer_map(void)
{
    int fd = open(jpath, O_RDWR);
    if (fd < 0 || mij_map(&W, fd, jpath, false) < 0)
        exit(98);
    close(fd);
    WS = mij_register(&W, getpid(), &(uint64_t){0});
}

static void test_create_open(void)
{
    struct mij *j;
    bool created = false;
    struct mij_create_opts o = {.granularity = 4096, .granularity_set = true};
    ok(mij_create(jpath, src, &o, &j, &created) == 0 && created, "create a journal");
    struct stat st;
    stat(jpath, &st);
    ok((st.st_mode & 0777) == 0600, "journal mode is 0600 (%o)", st.st_mode & 0777);
    ok(mij_granularity(j) == 4096, "granularity as asked");
    ok(j->covered == MIJ_MIN_COVERED && j->nchunks == MIJ_MIN_COVERED / 4096,
       "covers 64 GiB for a small source");
    ok((uint64_t)st.st_size == j->h->file_size && j->h->file_size == MIJ_HEADER_SIZE + 2 * j->h->bitmap_bytes,
       "file size matches the layout");
    ok(strstr(mij_source_path(j), "/src.raw") != NULL, "records the source path");
    mij_close(j);

    ok(mij_create(jpath, src, &o, &j, &created) == 0 && !created, "reuse a journal naming the source");
    mij_close(j);
    struct mij_create_opts o2 = {.granularity = 65536, .granularity_set = true};
    ok(mij_create(jpath, src, &o2, &j, NULL) == -EINVAL &&
       strstr(mi_lasterr(), "granularity 4096, not 65536"), "refuse another granularity: %s", mi_lasterr());

    char other[160];
    snprintf(other, sizeof other, "%s/other.raw", dir);
    make_file(other, 1 << 20);
    ok(mij_create(jpath, other, NULL, &j, NULL) == -ESTALE &&
       strstr(mi_lasterr(), "journal is for") && strstr(mi_lasterr(), "not "),
       "refuse a journal naming another source: %s", mi_lasterr());

    char np[160];
    snprintf(np, sizeof np, "%s/none", dir);
    ok(mij_open(np, 0, &j) == -ENOENT && strstr(mi_lasterr(), "no such journal"), "missing journal");

    struct mij_create_opts bad = {.granularity = 3000};
    snprintf(np, sizeof np, "%s/j2", dir);
    ok(mij_create(np, src, &bad, &j, NULL) == -EINVAL && access(np, F_OK) < 0,
       "refuse a granularity that is not a power of two, leave nothing behind");
    struct mij_create_opts small = {.max_size = 4096};
    ok(mij_create(np, src, &small, &j, NULL) == -EINVAL && strstr(mi_lasterr(), "smaller than the source"),
       "refuse a maximum size below the source's size");
}

/* Copy the journal, damage the copy, open it. */
static int open_damaged(void (*damage)(int fd), char *msg, size_t size)
{
    char p[160], cmd[400];
    snprintf(p, sizeof p, "%s/damaged", dir);
    snprintf(cmd, sizeof cmd, "cp '%s' '%s'", jpath, p);
    if (system(cmd))
        return -999;
    int fd = open(p, O_RDWR);
    damage(fd);
    close(fd);
    struct mij *j;
    int r = mij_open(p, 0, &j);
    if (r == 0)
        mij_close(j);
    snprintf(msg, size, "%s", mi_lasterr());
    return r;
}

static void dmg_magic(int fd) { (void)!pwrite(fd, "XXXX", 4, 0); }
static void dmg_version(int fd) { uint32_t v = 9; (void)!pwrite(fd, &v, 4, 12); }
static void dmg_trunc(int fd) { (void)!ftruncate(fd, MIJ_HEADER_SIZE + 100); }
static void dmg_tiny(int fd) { (void)!ftruncate(fd, 100); }
static void dmg_layout(int fd) { uint64_t v = 12345; (void)!pwrite(fd, &v, 8, 40); }
static void dmg_grow(int fd) { struct stat st; fstat(fd, &st); (void)!ftruncate(fd, st.st_size + 4096); }

static void test_validation(void)
{
    char m[600];
    ok(open_damaged(dmg_magic, m, sizeof m) == -EINVAL && strstr(m, "not a mirror-img journal (bad magic)"),
       "bad magic: %s", m);
    ok(open_damaged(dmg_version, m, sizeof m) == -EINVAL && strstr(m, "journal version 9 is not supported"),
       "unknown version: %s", m);
    ok(open_damaged(dmg_trunc, m, sizeof m) == -EINVAL && strstr(m, "truncated journal"), "truncated: %s", m);
    ok(open_damaged(dmg_tiny, m, sizeof m) == -EINVAL && strstr(m, "truncated journal"), "truncated to the header: %s", m);
    ok(open_damaged(dmg_layout, m, sizeof m) == -EINVAL && strstr(m, "corrupted journal"), "inconsistent layout: %s", m);
    ok(open_damaged(dmg_grow, m, sizeof m) == -EINVAL && strstr(m, "corrupted journal"), "wrong size: %s", m);
}

static void test_bitmaps(void)
{
    struct mij *j;
    if (mij_open(jpath, 0, &j) < 0)
        exit(97);
    uint64_t g = mij_granularity(j), first, n, c;
    mij_mark(j, 10 * g + 1, 3 * g, getpid()); /* 10..13 */
    mij_mark(j, 70 * g, 1, getpid());         /* 70 */
    ok(mij_backlog(j, &c) == 5 && c == 0, "mark: 5 chunks dirty");
    n = mij_next_run(j, false, 0, &first);
    ok(first == 10 && n == 4, "first run 10+4 (%llu+%llu)", (unsigned long long)first, (unsigned long long)n);
    n = mij_take(j, 0, 2, &first);
    ok(first == 10 && n == 2, "take at most 2: 10+2");
    ok(mij_backlog(j, &c) == 3 && c == 2, "2 copying, 3 dirty");
    n = mij_take(j, 0, 100, &first);
    ok(first == 12 && n == 2, "next take: 12+2 (run ends)");
    mij_done(j, 10, 2);
    mij_redirty(j, 12, 1);
    ok(mij_backlog(j, &c) == 2 && c == 1, "done 10-11, redirty 12: dirty 12 and 70, copying 13");
    mij_recover(j); /* a follower died: copying goes back to dirty */
    ok(mij_backlog(j, &c) == 3 && c == 0, "recover: copying chunks dirty again");
    n = mij_take(j, 13, 1000, &first);
    ok(first == 13 && n == 1, "take from 13");
    n = mij_take(j, 14, 1000, &first);
    ok(first == 70 && n == 1, "take skips to 70");
    mij_done(j, 13, 1);
    mij_done(j, 70, 1);
    n = mij_take(j, 0, 1000, &first);
    ok(n == 1 && first == 12, "12 left");
    mij_done(j, 12, 1);
    ok(mij_take(j, 0, 1000, &first) == 0 && mij_backlog(j, &c) == 0 && c == 0, "empty");
    /* written again while its copy is in flight: not handed out a second time until the
     * first copy is done (two copies in flight could land in the wrong order) */
    mij_mark(j, 5 * g, 1, getpid());
    ok(mij_take(j, 0, 10, &first) == 1 && first == 5, "take 5");
    mij_mark(j, 5 * g + 7, 1, getpid());
    mij_mark(j, 6 * g, 1, getpid());
    n = mij_take(j, 0, 10, &first);
    ok(n == 1 && first == 6, "5 dirty again while copying: skipped, 6 taken (%llu+%llu)",
       (unsigned long long)first, (unsigned long long)n);
    ok(mij_take(j, 0, 10, &first) == 0, "nothing else to take while 5 is in flight");
    mij_done(j, 5, 1);
    ok(mij_take(j, 0, 10, &first) == 1 && first == 5, "5 taken again once its copy is done");
    mij_done(j, 5, 1);
    mij_done(j, 6, 1);
    /* a long run across words */
    mij_mark(j, 60 * g, 140 * g, getpid());
    n = mij_take(j, 0, 1000, &first);
    ok(first == 60 && n == 140, "take a run across three words (%llu)", (unsigned long long)n);
    mij_done(j, first, n);
    /* the last chunk and beyond */
    mij_mark(j, j->covered - 1, 1, getpid());
    ok(mij_take(j, 0, 10, &first) == 1 && first == j->nchunks - 1, "last chunk");
    mij_done(j, first, 1);
    ok(!(mij_untrusted(j) & MIJ_U_BIT(MIJ_U_BEYOND)), "still trusted");
    mij_mark(j, j->covered - g, 2 * g, getpid());
    ok(mij_untrusted(j) & MIJ_U_BIT(MIJ_U_BEYOND), "a write beyond the covered size: untrusted");
    ok(j->h->why[MIJ_U_BEYOND].pid == getpid(), "records who");
    char b[200];
    ok(!strcmp(mij_reasons_str(mij_untrusted(j), b, sizeof b), "beyond_covered_size"), "reason name");
    mij_untrusted_clear(j, MIJ_U_BIT(MIJ_U_BEYOND));
    ok(!mij_untrusted(j), "clear");
    mij_take(j, 0, 10, &first);
    mij_done(j, first, 10);
    mij_close(j);
}

/* ---- quiesce with writer threads ---- */
static volatile int q_held, q_stop;
static int q_violations, q_inside;
static long q_writes;

static void *q_writer(void *a)
{
    (void)a;
    while (!q_stop) {
        mij_w_enter(&W, WS, NULL);
        __atomic_fetch_add(&q_inside, 1, __ATOMIC_SEQ_CST);
        if (q_held)
            __atomic_fetch_add(&q_violations, 1, __ATOMIC_SEQ_CST);
        for (volatile int k = 0; k < 2000; k++)
            ;
        __atomic_fetch_add(&q_writes, 1, __ATOMIC_SEQ_CST);
        __atomic_fetch_sub(&q_inside, 1, __ATOMIC_SEQ_CST);
        mij_w_leave(WS);
    }
    return NULL;
}

static void test_quiesce(void)
{
    struct mij *j, *j2;
    mij_open(jpath, 0, &j);
    ok(mij_follow(j, 2000000000ull) == 0, "become the follower");
    mij_open(jpath, 0, &j2);
    ok(mij_follow(j2, 1000000000ull) == -EBUSY && strstr(mi_lasterr(), "another follower (pid"),
       "a second follower is refused: %s", mi_lasterr());
    ok(mij_reset(j2) == -EBUSY, "reset refused while followed");
    mij_close(j2);
    ok(mij_follower(j, NULL) == getpid(), "follower pid recorded");

    pthread_t t[4];
    for (int i = 0; i < 4; i++)
        pthread_create(&t[i], NULL, q_writer, NULL);
    nap_ms(20);
    int rounds_ok = 0;
    for (int r = 0; r < 20; r++) {
        struct mij_quiesce_info qi;
        if (mij_quiesce_begin(j, 1000000000ull, &qi) < 0)
            break;
        q_held = 1;
        int inside = __atomic_load_n(&q_inside, __ATOMIC_SEQ_CST);
        long w0 = __atomic_load_n(&q_writes, __ATOMIC_SEQ_CST);
        nap_ms(5);
        long w1 = __atomic_load_n(&q_writes, __ATOMIC_SEQ_CST);
        q_held = 0;
        mij_quiesce_end(j);
        if (inside == 0 && w0 == w1 && qi.writers >= 1)
            rounds_ok++;
        nap_ms(2);
    }
    long before = __atomic_load_n(&q_writes, __ATOMIC_SEQ_CST);
    nap_ms(20);
    ok(rounds_ok == 20, "20 quiesces: nobody inside, no write while held (%d)", rounds_ok);
    ok(q_violations == 0, "no writer entered while held");
    ok(__atomic_load_n(&q_writes, __ATOMIC_SEQ_CST) > before, "writers run again after release");

    /* lease expiry: a follower that stops renewing holds writers for one lease at most */
    mij_unfollow(j);
    mij_follow(j, 200000000ull);
    uint64_t t0 = mi_now_ns();
    mij_quiesce_begin(j, 1000000000ull, NULL);
    long w0 = __atomic_load_n(&q_writes, __ATOMIC_SEQ_CST);
    nap_ms(100);
    long w1 = __atomic_load_n(&q_writes, __ATOMIC_SEQ_CST);
    long w2;
    uint64_t t1;
    do {
        nap_ms(5);
        w2 = __atomic_load_n(&q_writes, __ATOMIC_SEQ_CST);
        t1 = mi_now_ns();
    } while (w2 == w1 && t1 - t0 < 3000000000ull);
    ok(w1 == w0, "held while the lease is fresh");
    ok(w2 > w1 && t1 - t0 >= 150000000ull && t1 - t0 < 1000000000ull,
       "released when the lease runs out (%.0f ms)", (double)(t1 - t0) / 1e6);
    ok(mij_lease_renew(j) == -ETIME, "renewing too late says so");
    mij_quiesce_end(j);
    q_stop = 1;
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);

    /* a writer that dies inside a write does not block a quiesce */
    pid_t pid = fork();
    if (pid == 0) {
        struct mij_slot *s = mij_register(&W, getpid(), &(uint64_t){0});
        __atomic_fetch_add(&s->inflight, 1, __ATOMIC_SEQ_CST);
        _exit(0);
    }
    nap_ms(100); /* not reaped: a zombie */
    struct mij_quiesce_info qi;
    mij_lease_renew(j);
    int r = mij_quiesce_begin(j, 2000000000ull, &qi);
    ok(r == 0 && qi.died == 1, "a zombie writer inside a write is ignored (died %u)", qi.died);
    ok(mij_untrusted(j) & MIJ_U_BIT(MIJ_U_WRITER_DIED), "and marks the journal untrusted");
    mij_quiesce_end(j);
    waitpid(pid, NULL, 0);

    /* a live writer inside a write times the quiesce out */
    __atomic_fetch_add(&WS->inflight, 1, __ATOMIC_SEQ_CST);
    r = mij_quiesce_begin(j, 50000000ull, NULL);
    ok(r == -ETIMEDOUT && strstr(mi_lasterr(), "still inside a write"), "timeout: %s", mi_lasterr());
    ok(!MIJ_LOAD(&j->h->quiesce), "a failed quiesce releases the writers");
    __atomic_fetch_sub(&WS->inflight, 1, __ATOMIC_SEQ_CST);

    /* pivot */
    MIJ_STORE(&WS->nmaps, 1);
    r = mij_pivot_request(j, src);
    ok(r == -EBUSY && strstr(mi_lasterr(), "writable shared mapping"), "pivot refused with a mapping: %s", mi_lasterr());
    MIJ_STORE(&WS->nmaps, 0);
    MIJ_STORE(&WS->tracked, 1);
    uint64_t g0 = MIJ_LOAD(&j->h->pivot_gen);
    char tgt[160];
    snprintf(tgt, sizeof tgt, "%s/target.raw", dir);
    make_file(tgt, 1 << 20);
    ok(mij_pivot_request(j, tgt) == -ETIME && MIJ_LOAD(&j->h->pivot_gen) == g0,
       "a pivot is asked for only during a quiesce: %s", mi_lasterr());
    /* a generation bumped by anybody else (a forged request) moves no writer */
    MIJ_STORE(&j->h->pivot_gen, g0 + 7);
    ok(!mij_pivot_valid(&W, WS, g0 + 7), "a forged pivot generation is not acted on");
    MIJ_STORE(&j->h->pivot_gen, g0);
    ok(mij_quiesce_begin(j, 1000000000ull, NULL) == 0, "quiesce for the pivot");
    ok(mij_pivot_request(j, tgt) == 0 && MIJ_LOAD(&j->h->pivot_gen) == g0 + 1 &&
       !strcmp((char *)j->base + MIJ_OFF_PIVOT_PATH, tgt), "pivot request: generation and path");
    ok(mij_pivot_valid(&W, WS, g0 + 1), "a held writer may act on it (quiesce, fresh lease)");
    MIJ_STORE(&WS->lapsed_qseq, MIJ_LOAD(&j->h->quiesce_seq));
    ok(!mij_pivot_valid(&W, WS, g0 + 1), "not a writer that a lapsed lease let go in this quiesce");
    MIJ_STORE(&WS->lapsed_qseq, 0);
    struct mij_pivot_info pi;
    ok(mij_pivot_wait(j, 100000000ull, &pi) == 0 && pi.idle >= 1, "an idle writer counts as done (it switches later)");
    __atomic_fetch_add(&WS->inflight, 1, __ATOMIC_SEQ_CST);
    ok(mij_pivot_wait(j, 50000000ull, &pi) == -ETIMEDOUT, "a busy writer that did not switch: timeout");
    MIJ_STORE(&WS->pivot_ack, g0 + 1);
    ok(mij_pivot_wait(j, 50000000ull, &pi) == 0 && pi.switched >= 1, "an acknowledged writer counts as switched");
    __atomic_fetch_sub(&WS->inflight, 1, __ATOMIC_SEQ_CST);
    ok(mij_pivot_finish(j) == 0, "pivot seen through");
    mij_quiesce_end(j);
    ok(mij_pivot_valid(&W, WS, g0 + 1), "an idle writer acts on it later (pivot done)");
    MIJ_STORE(&WS->tracked, 0);
    mij_quiesce_begin(j, 1000000000ull, NULL);
    ok(mij_pivot_request(j, "/nonexistent/x") < 0, "pivot to a missing target refused");
    mij_quiesce_end(j);

    mij_set_delay(j, 1500);
    ok(mij_get_delay(j) == 1500 && MIJ_LOAD(&W.h->delay_us) == 1500, "auto-converge delay reaches writers");
    struct mij_writer wl[8];
    int n = mij_writers(j, wl, 8);
    ok(n >= 1 && wl[0].pid == getpid() && wl[0].alive, "writer list: this process first, alive");
    mij_unfollow(j);
    ok(mij_get_delay(j) == 0 && !mij_follower(j, NULL), "unfollow clears the delay and the follower");
    ok(mij_reset(j) == 0 && !mij_untrusted(j), "reset once nobody follows");
    mij_close(j);
}

static void test_source_and_ring(void)
{
    struct mij *j;
    mij_open(jpath, 0, &j);
    int fd = open(src, O_RDWR);
    ok(mij_source_check(j, fd) == MIJ_SRC_UNKNOWN, "never observed: unknown (full pass)");
    ok(mij_source_observe(j, fd) == 1, "observe when no write is in flight");
    ok(mij_source_check(j, fd) == MIJ_SRC_OK, "unchanged: ok");
    __atomic_fetch_add(&WS->inflight, 1, __ATOMIC_SEQ_CST);
    ok(mij_source_observe(j, fd) == 0, "no observation while a write is in flight");
    __atomic_fetch_sub(&WS->inflight, 1, __ATOMIC_SEQ_CST);
    /* a write through the shim (ring head moves): explained */
    nap_ms(20);
    uint64_t idx = mij_w_start(&W);
    (void)!pwrite(fd, "abc", 3, 100);
    mij_mark(&W, 100, 3, getpid());
    mij_w_record(&W, WS, idx, MIJ_OP_PWRITE, fd, 100, 3, getpid(), getpid());
    ok(mij_source_check(j, fd) == MIJ_SRC_OK, "a shim write explains the change");
    ok(mij_source_observe(j, fd) == 1, "observe again");
    /* behind the shim: size */
    (void)!ftruncate(fd, 2 << 20);
    ok(mij_source_check(j, fd) == MIJ_SRC_CHANGED, "size changed behind the shim");
    ok(mij_untrusted(j) & MIJ_U_BIT(MIJ_U_BYPASS), "marked bypass");
    mij_untrusted_clear(j, ~0ull);
    ok(mij_source_observe(j, fd) == 1, "observe after the full pass");
    nap_ms(20);
    (void)!pwrite(fd, "xyz", 3, 200);
    ok(mij_source_check(j, fd) == MIJ_SRC_CHANGED, "content changed behind the shim (ctime)");
    struct stat st;
    fstat(fd, &st);
    ok(mij_check_source(j, &st, src) == 0, "identity check");
    close(fd);

    struct mij_rec recs[MIJ_NRING];
    for (int i = 0; i < 5; i++) {
        uint64_t k = mij_w_start(&W);
        mij_w_record(&W, WS, k, MIJ_OP_WRITE, 3, (uint64_t)i * 4096, 4096, getpid(), getpid());
    }
    int n = mij_ring_read(j, recs, MIJ_NRING);
    ok(n == 6 && recs[0].op == MIJ_OP_PWRITE && recs[5].off == 4 * 4096 && recs[5].seq > recs[4].seq,
       "ring read, oldest first (%d)", n);
    n = mij_ring_read(j, recs, 2);
    ok(n == 2 && recs[1].off == 4 * 4096, "the last 2");
    for (int i = 0; i < MIJ_NRING + 10; i++) {
        uint64_t k = mij_w_start(&W);
        mij_w_record(&W, WS, k, MIJ_OP_PWRITE, 3, (uint64_t)i, 1, getpid(), getpid());
    }
    n = mij_ring_read(j, recs, MIJ_NRING);
    ok(n == MIJ_NRING && recs[MIJ_NRING - 1].off == MIJ_NRING + 9 && recs[0].off == 10, "the ring wraps");
    uint64_t bytes, writes;
    mij_counters(j, &bytes, &writes);
    ok(writes == 6 + MIJ_NRING + 10 && bytes == 3 + 5 * 4096 + MIJ_NRING + 10, "write counters");
    ok(!strcmp(mij_op_name(MIJ_OP_COPY_FILE_RANGE), "copy_file_range"), "op names");

    struct stat tst = {.st_dev = 5, .st_ino = 6, .st_size = 7};
    uint64_t g = mij_target_set(j, src, &tst);
    struct mij_target t;
    mij_target_get(j, &t);
    ok(t.valid && t.sync_gen == g && t.dev == 5 && t.ino == 6 && strstr(t.path, "src.raw"), "target record");
    ok(mij_reset(j) == 0, "reset");
    mij_target_get(j, &t);
    ok(!t.valid && !MIJ_LOAD(&j->h->seen_valid), "reset forgets the target and the source record");
    ok(mij_check_alive(j) == 0, "journal whole");
    mij_close(j);
}

int main(void)
{
    snprintf(dir, sizeof dir, "/tmp/mi-jtest.XXXXXX");
    if (!mkdtemp(dir))
        return 99;
    snprintf(src, sizeof src, "%s/src.raw", dir);
    snprintf(jpath, sizeof jpath, "%s/j", dir);
    make_file(src, 1 << 20);
    test_create_open();
    test_validation();
    test_bitmaps();
    writer_map();
    ok(WS != &W.slots[0] && WS->pid == getpid(), "a writer registers in its own slot");
    test_quiesce();
    test_source_and_ring();
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd))
        return 1;
    return tap_done();
}
