/* proc.h: what /proc says of a process (liveness, start time, threads), read without
 * allocating so that a fork child may ask.  Used by both sides of the journal. */
#ifndef MI_PROC_H
#define MI_PROC_H

#include <stdbool.h>
#include <stdint.h>

/* Read PID's state letter, start time and (threads may be NULL) thread count from /proc
 * (0, or -errno). */
int mij_proc_stat(int pid, char *state, uint64_t *start_ticks, unsigned *threads);
/* A registered pid is alive: not gone, not reused, and not a zombie unless one of its
 * threads still runs (a main thread that ended before the others shows as a zombie). */
bool mij_pid_alive(int pid, uint64_t start_ticks);
/* Call fn for each entry of the directory dfd named by a decimal number (a /proc task or
 * fd directory), read with getdents64: no allocation, fine in a fork child.  Stops when fn
 * returns true.  Returns 1 when fn stopped it, 0 at the end, -1 on a read error. */
int mij_dir_numbers(int dfd, bool (*fn)(unsigned long n, void *ctx), void *ctx);

#endif
