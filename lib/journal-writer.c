/* journal-writer.c: the writer's side of the journal (journal-writer.h).  Built into the
 * shim and into mirror-img (its unit tests play writers). */
#include "journal-writer.h"
#include "proc.h"

#include <errno.h>
#include <linux/futex.h>
#include <signal.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

void mij_untrust(struct mij *j, enum mij_reason r, int pid)
{
    uint64_t bit = MIJ_U_BIT(r);
    if (MIJ_LOADR(&j->h->untrusted) & bit)
        return;
    uint64_t old = __atomic_fetch_or(&j->h->untrusted, bit, __ATOMIC_SEQ_CST);
    if (!(old & bit)) {
        __atomic_store_n(&j->h->why[r].pid, pid, __ATOMIC_RELAXED);
        __atomic_store_n(&j->h->why[r].ns, mij_clock(CLOCK_REALTIME), __ATOMIC_RELAXED);
    }
}

static void slot_init(struct mij *j, struct mij_slot *s, uint64_t start, bool reset_inflight)
{
    if (reset_inflight) { /* only when no thread of the previous owner can still run */
        MIJ_STORE(&s->inflight, 0);
        for (unsigned i = 0; i < MIJ_TMARKS; i++)
            MIJ_STORE(&s->tmark[i], 0);
    }
    MIJ_STORE(&s->waiting, 0);
    MIJ_STORE(&s->tracked, 0);
    MIJ_STORE(&s->nmaps, 0);
    MIJ_STORE(&s->pivot_err, 0);
    MIJ_STORE(&s->pivot_ack, MIJ_LOAD(&j->h->pivot_gen));
    MIJ_STORE(&s->lapsed_qseq, 0);
    MIJ_STORE(&s->exec_pending, 0);
    MIJ_STORE(&s->start_ticks, start);
    MIJ_STORE(&s->reg_ns, mij_clock(CLOCK_REALTIME));
    MIJ_STORE(&s->last_ns, 0);
    MIJ_STORE(&s->bytes_base, MIJ_LOAD(&s->bytes));
    MIJ_STORE(&s->writes_base, MIJ_LOAD(&s->writes));
}
/* The pivot generation the registering process's descriptors are at: those it inherited
 * come from the image it exec'd from (its own pid's slot) or from its parent (fork, vfork,
 * posix_spawn), and were switched as far as that one switched them; a process nobody
 * journaled before starts at the current generation. */
static uint64_t inherited_ack(struct mij *j, struct mij_slot *own)
{
    if (own)
        return MIJ_LOAD(&own->pivot_ack);
    int ppid = getppid();
    for (unsigned i = 1; i < MIJ_NSLOTS; i++)
        if (MIJ_LOAD(&j->slots[i].pid) == ppid)
            return MIJ_LOAD(&j->slots[i].pivot_ack);
    return MIJ_LOAD(&j->h->pivot_gen);
}

struct mij_slot *mij_register(struct mij *j, int pid, uint64_t *ack)
{
    char state;
    uint64_t start = 0;
    mij_proc_stat(pid, &state, &start, NULL);
    /* Our own pid: the slot of the image we exec'd from.  Its threads are gone; one that
     * was inside a write when the exec killed it left its marker raised, and what it
     * wrote is unknown (execve keeps the start time: the marker is the only witness). */
    for (unsigned i = 1; i < MIJ_NSLOTS; i++)
        if (MIJ_LOAD(&j->slots[i].pid) == pid) {
            struct mij_slot *s = &j->slots[i];
            if (mij_slot_inflight(s))
                mij_untrust(j, MIJ_U_WRITER_DIED, pid);
            *ack = inherited_ack(j, s);
            slot_init(j, s, start, true);
            return s;
        }
    *ack = inherited_ack(j, NULL);
    for (unsigned i = 1; i < MIJ_NSLOTS; i++) {
        int32_t zero = 0;
        if (!MIJ_LOADR(&j->slots[i].pid) &&
            __atomic_compare_exchange_n(&j->slots[i].pid, &zero, pid, false, __ATOMIC_SEQ_CST,
                                        __ATOMIC_SEQ_CST)) {
            slot_init(j, &j->slots[i], start, true);
            return &j->slots[i];
        }
    }
    /* Full: reclaim the slot of a process that is gone. */
    for (unsigned i = 1; i < MIJ_NSLOTS; i++) {
        int32_t p = MIJ_LOAD(&j->slots[i].pid);
        if (p > 0 && !mij_pid_alive(p, MIJ_LOAD(&j->slots[i].start_ticks)) &&
            __atomic_compare_exchange_n(&j->slots[i].pid, &p, pid, false, __ATOMIC_SEQ_CST,
                                        __ATOMIC_SEQ_CST)) {
            if (mij_slot_inflight(&j->slots[i]))
                mij_untrust(j, MIJ_U_WRITER_DIED, p);
            slot_init(j, &j->slots[i], start, true);
            return &j->slots[i];
        }
    }
    return &j->slots[0];
}

/* ---------------------------------------------------------------------------------- */
/* Writer: held by a quiesce                                                            */

/* The follower that holds the lease is a live process: a quiesce word and a lease left in
 * the file by anything else hold nobody.  (A system call, on the held path only.) */
static bool holder_alive(const struct mij_header *h)
{
    int pid = MIJ_LOAD(&h->lease_pid);
    return pid > 0 && MIJ_LOAD(&h->follower_pid) == pid &&
           (kill(pid, 0) == 0 || errno == EPERM);
}

int mij_w_hold(struct mij *j, struct mij_slot *s, void (*on_wake)(void))
{
    struct mij_header *h = j->h;
    int expired = 0, e = errno; /* the shim's callers count on it */
    __atomic_fetch_add(&s->waiting, 1, __ATOMIC_SEQ_CST);
    for (;;) {
        if (on_wake)
            on_wake();
        if (!MIJ_LOAD(&h->quiesce))
            break;
        uint64_t exp = MIJ_LOAD(&h->lease_expiry_ns), now = mij_clock(CLOCK_MONOTONIC);
        if (!mij_lease_fresh(h, now) || !holder_alive(h)) {
            /* Let go on a lapsed lease: a pivot asked for during this quiesce must not
             * move this process, whose writes from now on reach the source unheld. */
            MIJ_STORE(&s->lapsed_qseq, MIJ_LOAD(&h->quiesce_seq));
            expired = 1;
            break;
        }
        uint64_t d = exp - now;
        if (d > 50000000)
            d = 50000000; /* re-check now and then: a lease can be shortened */
        struct timespec ts = {(time_t)(d / 1000000000), (long)(d % 1000000000)};
        /* Shared futex on the journal page: woken by mij_quiesce_end. */
        mij_libc.syscall(SYS_futex, &h->quiesce, FUTEX_WAIT, 1, &ts, NULL, 0);
    }
    __atomic_fetch_sub(&s->waiting, 1, __ATOMIC_SEQ_CST);
    errno = e;
    return expired;
}

/* Built into the shim too: its SIGBUS handler passes on what it does not own. */
void mij_sigbus_pass(int sig, siginfo_t *si, void *uc, const struct sigaction *old)
{
    if ((old->sa_flags & SA_SIGINFO) && old->sa_sigaction) {
        old->sa_sigaction(sig, si, uc);
        return;
    }
    if (old->sa_handler != SIG_DFL && old->sa_handler != SIG_IGN) {
        old->sa_handler(sig);
        return;
    }
    /* Ignored: a sent signal is ignored as it would have been; a real fault cannot be
     * ignored (the kernel kills for it), so it takes the default action below. */
    if (old->sa_handler == SIG_IGN && si->si_code <= 0)
        return;
    /* Default action: uninstall the handler; a fault happens again on return and kills as
     * it would have; a sent signal is raised again. */
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigaction(SIGBUS, &dfl, NULL);
    if (si->si_code <= 0)
        raise(SIGBUS);
}

