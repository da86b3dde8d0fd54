/* cmd-run.c: `mirror-img run --journal J SRC -- CMD [ARG...]`: run CMD with the shim
 * journaling every write it (and its children) make to SRC. */
#include "cli.h"
#include "journal.h"
#include "util.h"

#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

struct run_opts {
    const char *journal, *src;
    struct mij_create_opts create;
    char **cmd;
    int ncmd;
};

enum { OPT_JOURNAL = 1000, OPT_MAX_SIZE };

static const struct argp_option options[] = {
    {"journal", OPT_JOURNAL, "J", 0, "The journal file (created for SRC if absent; reused if it "
                                     "names SRC; refused if it names another file)", 0},
    {"granularity", 'g', "SIZE", 0, "Bytes per journal chunk for a new journal: a power of two "
                                    "from 512 to 1G (default 64K)", 0},
    {"max-size", OPT_MAX_SIZE, "SIZE", 0, "Largest source size a new journal covers (default: "
                                          "4 x the source's size, at least 64G); writes beyond "
                                          "it mark the journal untrusted", 0},
    {0},
};

static error_t parse_opt(int key, char *arg, struct argp_state *st)
{
    struct run_opts *o = st->input;
    uint64_t v;
    switch (key) {
    case OPT_JOURNAL: o->journal = arg; break;
    case 'g':
        if (mi_parse_size(arg, &v) < 0 || !mi_is_pow2(v) || v < MIJ_MIN_GRANULARITY ||
            v > MIJ_MAX_GRANULARITY)
            argp_error(st, "--granularity: '%s' is not a power of two from 512 to 1G", arg);
        o->create.granularity = v;
        o->create.granularity_set = true;
        break;
    case OPT_MAX_SIZE:
        if (mi_parse_size(arg, &v) < 0 || !v)
            argp_error(st, "--max-size: '%s' is not a size", arg);
        o->create.max_size = v;
        break;
    case ARGP_KEY_ARG:
        if (o->src)
            return ARGP_ERR_UNKNOWN; /* the command starts here: take the rest as is */
        o->src = arg;
        break;
    case ARGP_KEY_ARGS:
        o->cmd = st->argv + st->next;
        o->ncmd = st->argc - st->next;
        st->next = st->argc;
        break;
    case ARGP_KEY_END:
        if (!o->journal)
            argp_error(st, "--journal J is required");
        if (!o->src)
            argp_error(st, "expected SRC and a command");
        if (!o->ncmd)
            argp_error(st, "expected a command after SRC (put it after --)");
        break;
    default: return ARGP_ERR_UNKNOWN;
    }
    return 0;
}

static const struct argp run_argp = {options, parse_opt, "SRC -- CMD [ARG...]",
    "Run CMD with the journaling shim preloaded: every write that CMD and its children make "
    "to SRC is marked in the journal J, for `follow`, `copy --incremental` and `journal "
    "dump`.  Exits with CMD's exit status (128+N if a signal N killed it).",
    NULL, NULL, NULL};

static volatile pid_t child_pid;

/* A signal sent to us by kill(1) goes on to the command.  One from the terminal (SI_KERNEL)
 * reached the whole process group, the command included: forwarding would double it. */
static void forward(int sig, siginfo_t *si, void *uc)
{
    (void)uc;
    if (child_pid > 0 && si->si_code != SI_KERNEL)
        kill(child_pid, sig);
}

static const int forwarded[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT};

static char *preload_value(const char *shim)
{
    const char *old = getenv("LD_PRELOAD");
    size_t n = strlen(shim) + (old ? strlen(old) : 0) + 2;
    char *v = malloc(n);
    if (v)
        snprintf(v, n, "%s%s%s", shim, old && *old ? ":" : "", old && *old ? old : "");
    return v;
}

/* In the child: environment, default signals, exec.  Never returns. */
static void exec_child(const struct run_opts *o, const char *preload, const char *jabs)
{
    for (size_t i = 0; i < sizeof forwarded / sizeof *forwarded; i++)
        signal(forwarded[i], SIG_DFL);
    if (setenv("LD_PRELOAD", preload, 1) < 0 || setenv("MIRROR_IMG_JOURNAL", jabs, 1) < 0) {
        fprintf(stderr, "mirror-img: %s: %s\n", o->cmd[0], strerror(errno));
        _exit(126);
    }
    execvp(o->cmd[0], o->cmd);
    int e = errno;
    fprintf(stderr, "mirror-img: %s: cannot run: %s\n", o->cmd[0], strerror(e));
    _exit(e == ENOENT ? 127 : 126);
}

static int run_run(int argc, char **argv)
{
    struct run_opts o = {0};
    cli_parse(&run_argp, argc, argv, NULL, &o);

    const char *shim = cli_shim_path();
    if (access(shim, R_OK) < 0) {
        cli_error("%s: cannot find the shim library: %s", shim, strerror(errno));
        return MI_EXIT_FAIL;
    }
    if (strpbrk(shim, ": ")) {
        cli_error("%s: the shim's path cannot go in LD_PRELOAD (it contains ':' or a space)", shim);
        return MI_EXIT_FAIL;
    }
    struct mij *j;
    mi_clearerr();
    if (mij_create(o.journal, o.src, &o.create, &j, NULL) < 0) {
        cli_error_last();
        return MI_EXIT_FAIL;
    }
    mij_close(j);
    char *jabs = realpath(o.journal, NULL), *preload = preload_value(shim);
    if (!jabs || !preload) {
        cli_error("%s: %s", o.journal, strerror(errno));
        return MI_EXIT_FAIL;
    }

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = forward;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigemptyset(&sa.sa_mask);
    for (size_t i = 0; i < sizeof forwarded / sizeof *forwarded; i++)
        sigaction(forwarded[i], &sa, NULL);

    pid_t pid = fork();
    if (pid < 0) {
        cli_error("%s: cannot start: %s", o.cmd[0], strerror(errno));
        return MI_EXIT_FAIL;
    }
    if (pid == 0)
        exec_child(&o, preload, jabs);
    child_pid = pid;
    int status;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR) {
            cli_error("%s: %s", o.cmd[0], strerror(errno));
            return MI_EXIT_FAIL;
        }
    free(jabs);
    free(preload);
    if (WIFSIGNALED(status))
        return 128 + WTERMSIG(status);
    return WEXITSTATUS(status);
}

static const struct cli_cmd run_cmd = {
    .name = "run",
    .summary = "run a command with the journaling shim on a source image",
    .argp = &run_argp,
    .run = run_run,
};
MI_COMMAND(run_cmd);
