/* util.h: the base every room may use (lib/, formats/, cli/ and the shim): error messages,
 * size parsing and small helpers.  It depends on libc only.
 *
 * Errors travel up: a function that fails returns -errno (or NULL) and leaves a full
 * message, "OBJECT: what failed: reason", in a thread-local buffer (mi_seterr).  Only
 * cli/ prints it, prefixed with "mirror-img: ", and exits.
 */
#ifndef MI_UTIL_H
#define MI_UTIL_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

#define MI_KiB (1024ULL)
#define MI_MiB (1024ULL * 1024)
#define MI_GiB (1024ULL * 1024 * 1024)

/* Record the message for the current failure (printf-style).  Returns -code when code is
 * a positive errno, so `return mi_seterr(EIO, "%s: ...", name);` reads naturally. */
int mi_seterr(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The last message recorded on this thread ("" if none). */
const char *mi_lasterr(void);
/* Clear the message (before an operation whose failure must not show a stale one). */
void mi_clearerr(void);

/* Parse a size: decimal digits with an optional K, M, G, T (1024-based, case-insensitive,
 * optional trailing "iB"/"B").  Rejects empty, negative, fractional and overflowing input.
 * Returns 0 or -EINVAL / -ERANGE. */
int mi_parse_size(const char *s, uint64_t *out);

static inline bool mi_is_pow2(uint64_t x) { return x && !(x & (x - 1)); }
static inline uint64_t mi_min(uint64_t a, uint64_t b) { return a < b ? a : b; }
static inline uint64_t mi_max(uint64_t a, uint64_t b) { return a > b ? a : b; }
static inline uint64_t mi_round_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }
static inline uint64_t mi_round_down(uint64_t x, uint64_t a) { return x / a * a; }

/* Full pread/pwrite: loop over short transfers and EINTR.  pread past EOF fills zeros.
 * Return 0 or -errno. */
int mi_pread_full(int fd, void *buf, size_t len, uint64_t off);
int mi_pwrite_full(int fd, const void *buf, size_t len, uint64_t off);

/* True when len bytes at buf are all zero (fast, word-at-a-time). */
bool mi_is_zero(const void *buf, size_t len);

/* True when a and b name the same file (device and inode). */
bool mi_same_file(const char *a, const char *b);

/* Monotonic clock in nanoseconds. */
uint64_t mi_now_ns(void);

/* Format bytes as "1.5 GiB" into buf (size >= 16). */
const char *mi_fmt_bytes(uint64_t n, char *buf, size_t size);

/* Big-endian loads/stores for on-disk formats. */
static inline uint16_t mi_be16(const void *p) { const uint8_t *b = p; return (uint16_t)(b[0] << 8 | b[1]); }
static inline uint32_t mi_be32(const void *p) { const uint8_t *b = p; return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3]; }
static inline uint64_t mi_be64(const void *p) { return (uint64_t)mi_be32(p) << 32 | mi_be32((const uint8_t *)p + 4); }
static inline void mi_put_be16(void *p, uint16_t v) { uint8_t *b = p; b[0] = v >> 8; b[1] = v; }
static inline void mi_put_be32(void *p, uint32_t v) { uint8_t *b = p; b[0] = v >> 24; b[1] = v >> 16; b[2] = v >> 8; b[3] = v; }
static inline void mi_put_be64(void *p, uint64_t v) { mi_put_be32(p, v >> 32); mi_put_be32((uint8_t *)p + 4, (uint32_t)v); }

#endif
