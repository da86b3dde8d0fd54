/* cli.h: subcommands as table entries.
 *
 * Each cli/cmd-*.c file defines one `struct cli_cmd` with MI_COMMAND(); main() finds them
 * all through the linker section, dispatches by name (a unique prefix is accepted) and
 * exits with what run() returns.  Only cli/ prints final messages and exits.
 */
#ifndef MI_CLI_H
#define MI_CLI_H

#include <argp.h>
#include <stdbool.h>
#include <stdint.h>

enum { MI_EXIT_OK = 0, MI_EXIT_FAIL = 1, MI_EXIT_USAGE = 2, MI_EXIT_CANCELLED = 3 };

struct cli_cmd {
    const char *name;
    const char *summary;           /* one line for `mirror-img --help` */
    const struct argp *argp;       /* its options (the single source of truth) */
    int (*run)(int argc, char **argv); /* argv[0] is the subcommand name */
};

#define MI_COMMAND(var) \
    const struct cli_cmd *const var##_entry __attribute__((section("mi_cmds"), used)) = &var

/* Print "mirror-img: MSG" on stderr (MSG is printf-style). */
void cli_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Print "mirror-img: <last error message>" on stderr. */
void cli_error_last(void);
/* Usage error: print "mirror-img: SUB: MSG" and a hint, return MI_EXIT_USAGE. */
int cli_usage(const char *sub, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Run argp on a subcommand's argv with the program name "mirror-img SUB"; exits 2 with a
 * message on a usage error, 0 after --help. */
void cli_parse(const struct argp *argp, int argc, char **argv, int *arg_index, void *input);

/* Path of the shim library: MIRROR_IMG_SHIM, else beside the binary, else MI_LIBDIR. */
const char *cli_shim_path(void);

#endif
