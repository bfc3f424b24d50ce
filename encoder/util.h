/* util.h — small helpers shared by every module: aborting allocation for small fixed sizes, invariant asserts,
 * a monotonic clock, whole-file reads, a growable string, and bf16/f16 <-> f32 conversions (round-to-nearest-even,
 * as torch does). Implemented in status.c, which forms the vitd_util library that config/ and encoder/ both link. */
#ifndef VITD_UTIL_H
#define VITD_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "vitd.h"

/* Allocations whose size no input controls: abort with the size on failure. Sizes from input use malloc and
 * fail softly with VITD_E_NOMEM. */
void *xmalloc(size_t n) __attribute__((returns_nonnull, malloc, alloc_size(1)));
void *xcalloc(size_t n, size_t size) __attribute__((returns_nonnull, malloc, alloc_size(1, 2)));
void *xrealloc(void *p, size_t n) __attribute__((returns_nonnull, alloc_size(2)));
char *xstrdup(const char *s) __attribute__((returns_nonnull, malloc));

/* Invariants only, never something an input can cause: logs file:line and aborts. */
#define VITD_ASSERT(x) \
    do { if (!(x)) vitd_assert_fail(#x, __FILE__, __LINE__); } while (0)
void vitd_assert_fail(const char *expr, const char *file, int line) __attribute__((noreturn));

/* Monotonic clock in seconds. */
double vitd_now(void);

/* Reads a whole regular file of at most max_bytes into a malloc'd buffer with a NUL after the data (*out, the
 * caller frees; *len = size without the NUL, len may be NULL). label names the file in messages. Errors: VITD_E_IO
 * (cannot open or read, not a regular file), VITD_E_TOO_LARGE (over max_bytes), VITD_E_NOMEM. */
vitd_status vitd_read_file(const char *path, const char *label, size_t max_bytes, char **out, size_t *len,
                           vitd_err *err);

/* Writes data[len] to path atomically: a unique temporary file beside it, fsync, mode 0644, rename over path, so a
 * reader sees the old file or the new one, never a part. label names the file in messages (VITD_E_IO). */
vitd_status vitd_write_file_atomic(const char *path, const char *label, const void *data, size_t len,
                                   vitd_err *err);

/* A growable NUL-terminated string. Zero-initialise; after a failed allocation `failed` is set and appends do
 * nothing, so a renderer checks once at the end (strbuf_finish). */
typedef struct {
    char *p;
    size_t len, cap;
    bool failed;
} strbuf;

void strbuf_append(strbuf *b, const char *s, size_t n);
void strbuf_puts(strbuf *b, const char *s);
/* Room for n more bytes (and the NUL): returns where to write them, or NULL once an allocation failed; then
 * strbuf_commit(b, m) with the m <= n bytes actually written. Lets a writer (base64) fill the buffer in place. */
char *strbuf_reserve(strbuf *b, size_t n);
void strbuf_commit(strbuf *b, size_t n);
void strbuf_printf(strbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Appends s as a JSON string literal: quotes, backslashes and control characters escaped (\n, \t, \u00XX). */
void strbuf_json_string(strbuf *b, const char *s);
/* Hands over the string (the caller frees it), or frees it and returns NULL if an allocation failed. */
char *strbuf_finish(strbuf *b);

static inline float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
/* float -> bf16 with round-to-nearest-even; NaN stays NaN. */
static inline uint16_t f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);

#endif
