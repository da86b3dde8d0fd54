/* tap.h: the smallest TAP producer for the C unit tests. */
#ifndef MI_TAP_H
#define MI_TAP_H
#include <stdio.h>

static int tap_n, tap_failed;
#define ok(cond, ...) do { \
        int tap_c_ = (cond) ? 1 : 0; \
        tap_n++; \
        if (tap_c_) { printf("ok %d - ", tap_n); } \
        else { tap_failed++; printf("not ok %d - ", tap_n); } \
        printf(__VA_ARGS__); \
        printf("%s\n", tap_c_ ? "" : "  (" #cond " at " __FILE__ ")"); \
    } while (0)
#define tap_done() (printf("1..%d\n", tap_n), tap_failed ? 1 : 0)
#endif
