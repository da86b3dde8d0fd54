/* main.c: dispatch to the subcommand table. */
#include "cli.h"
#include "util.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

extern const struct cli_cmd *const __start_mi_cmds[];
extern const struct cli_cmd *const __stop_mi_cmds[];

#ifndef MI_VERSION
#define MI_VERSION "0.1"
#endif

const char *argp_program_version = "mirror-img " MI_VERSION;
const char *argp_program_bug_address = NULL;

void cli_error(const char *fmt, ...)
{
    va_list ap;
    fputs("mirror-img: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

void cli_error_last(void)
{
    const char *m = mi_lasterr();
    cli_error("%s", *m ? m : "unknown error");
}

int cli_usage(const char *sub, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "mirror-img: %s: ", sub);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nTry 'mirror-img %s --help' for more information.\n", sub);
    return MI_EXIT_USAGE;
}

/* Usage errors from argp and getopt name the program as "mirror-img SUB: "; ours are
 * "mirror-img: SUB: ".  While argp parses, standard error goes through this stream, which
 * rewrites that prefix at the start of a line (the messages are whole in its buffer: argp
 * exits right after them, and exit flushes it). */
struct usage_stream {
    const char *from, *to;
};

static void write_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return;
        p += w, n -= (size_t)w;
    }
}

static ssize_t usage_write(void *cookie, const char *buf, size_t n)
{
    const struct usage_stream *u = cookie;
    size_t from_len = strlen(u->from);
    for (size_t i = 0; i < n;) {
        const char *nl = memchr(buf + i, '\n', n - i);
        size_t len = nl ? (size_t)(nl - (buf + i)) + 1 : n - i;
        const char *line = buf + i;
        if (len >= from_len && !memcmp(line, u->from, from_len)) {
            write_all(2, u->to, strlen(u->to));
            line += from_len, len -= from_len;
        }
        write_all(2, line, len);
        i = (size_t)(line - buf) + len;
    }
    return (ssize_t)n;
}

void cli_parse(const struct argp *argp, int argc, char **argv, int *arg_index, void *input)
{
    char name[64], from[80], to[80];
    snprintf(name, sizeof name, "mirror-img %s", argv[0]);
    snprintf(from, sizeof from, "%s: ", name);
    snprintf(to, sizeof to, "mirror-img: %s: ", argv[0]);
    char *saved = argv[0];
    argv[0] = name;
    struct usage_stream u = {from, to};
    static char ebuf[8192];
    FILE *real = stderr, *err = fopencookie(&u, "w", (cookie_io_functions_t){.write = usage_write});
    if (err && setvbuf(err, ebuf, _IOFBF, sizeof ebuf) == 0)
        stderr = err;
    /* argp exits with argp_err_exit_status on usage errors. */
    argp_err_exit_status = MI_EXIT_USAGE;
    error_t e = argp_parse(argp, argc, argv, 0, arg_index, input);
    if (err) {
        stderr = real;
        fclose(err);
    }
    argv[0] = saved;
    if (e)
        exit(MI_EXIT_USAGE);
}

const char *cli_shim_path(void)
{
    static char path[PATH_MAX];
    const char *env = getenv("MIRROR_IMG_SHIM");
    if (env && *env)
        return env;
    ssize_t n = readlink("/proc/self/exe", path, sizeof path - 32);
    if (n > 0) {
        path[n] = '\0';
        char *slash = strrchr(path, '/');
        if (slash) {
            strcpy(slash + 1, "mirror-img-shim.so");
            if (access(path, R_OK) == 0)
                return path;
        }
    }
    snprintf(path, sizeof path, "%s/mirror-img/mirror-img-shim.so", MI_LIBDIR);
    return path;
}

static int cmp_cmd(const void *a, const void *b)
{
    return strcmp((*(const struct cli_cmd *const *)a)->name, (*(const struct cli_cmd *const *)b)->name);
}

static void usage(FILE *f)
{
    size_t n = (size_t)(__stop_mi_cmds - __start_mi_cmds);
    const struct cli_cmd *cmds[64];
    if (n > 64)
        n = 64;
    memcpy(cmds, __start_mi_cmds, n * sizeof *cmds);
    qsort(cmds, n, sizeof *cmds, cmp_cmd);
    fprintf(f, "Usage: mirror-img COMMAND [OPTION...] ARGS...\n"
               "Mirror disk images: offline (copy) or while a program writes them (follow).\n\n"
               "Commands:\n");
    for (size_t i = 0; i < n; i++)
        fprintf(f, "  %-12s %s\n", cmds[i]->name, cmds[i]->summary);
    fprintf(f, "\n'mirror-img COMMAND --help' shows a command's options; "
               "man mirror-img(1) has the details.\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return MI_EXIT_USAGE;
    }
    const char *sub = argv[1];
    if (!strcmp(sub, "--help") || !strcmp(sub, "-h") || !strcmp(sub, "help")) {
        usage(stdout);
        return MI_EXIT_OK;
    }
    if (!strcmp(sub, "--version") || !strcmp(sub, "-V")) {
        printf("%s\n", argp_program_version);
        return MI_EXIT_OK;
    }
    const struct cli_cmd *found = NULL;
    int matches = 0;
    size_t len = strlen(sub);
    for (const struct cli_cmd *const *c = __start_mi_cmds; c < __stop_mi_cmds; c++) {
        if (!strcmp((*c)->name, sub)) {
            found = *c;
            matches = 1;
            break;
        }
        if (!strncmp((*c)->name, sub, len)) {
            found = *c;
            matches++;
        }
    }
    if (matches == 0) {
        cli_error("unknown command '%s' (try 'mirror-img --help')", sub);
        return MI_EXIT_USAGE;
    }
    if (matches > 1) {
        fprintf(stderr, "mirror-img: ambiguous command '%s': could be", sub);
        for (const struct cli_cmd *const *c = __start_mi_cmds; c < __stop_mi_cmds; c++)
            if (!strncmp((*c)->name, sub, len))
                fprintf(stderr, " %s", (*c)->name);
        fputc('\n', stderr);
        return MI_EXIT_USAGE;
    }
    return found->run(argc - 1, argv + 1);
}
