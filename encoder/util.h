/* util.h — small helpers shared by every module: aborting allocation for small fixed sizes, invariant asserts,
 * a monotonic clock, and bf16/f16 <-> f32 conversions (round-to-nearest-even, as torch does). */
#ifndef VITD_UTIL_H
#define VITD_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* Allocations whose size no input controls: abort with the size on failure. Sizes from input use malloc and
 * fail softly with VITD_E_NOMEM. */
void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t size);
char *xstrdup(const char *s);

/* Invariants only, never something an input can cause: logs file:line and aborts. */
#define VITD_ASSERT(x) \
    do { if (!(x)) vitd_assert_fail(#x, __FILE__, __LINE__); } while (0)
void vitd_assert_fail(const char *expr, const char *file, int line) __attribute__((noreturn));

/* Monotonic clock in seconds. */
double vitd_now(void);

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
