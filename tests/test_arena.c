/* labels: unit */
/* test_arena.c — server/arena.c: alignment, contents surviving many allocations, large chunks, the byte cap,
 * calloc overflow, strdup, and arena_realloc in its three paths (newest large chunk, newest small allocation,
 * copy) with the bytes kept. Run it under -DVITD_SANITIZE=address,undefined to catch overruns. */
#include <stdint.h>

#include "arena.h"
#include "check.h"

/* Fills p with a pattern derived from seed; check_pattern says whether it is still there. */
static void fill_pattern(uint8_t *p, size_t n, unsigned seed) {
    for (size_t i = 0; i < n; i++) p[i] = (uint8_t)(seed * 131u + i * 7u + (i >> 8));
}
static int check_pattern(const uint8_t *p, size_t n, unsigned seed) {
    for (size_t i = 0; i < n; i++)
        if (p[i] != (uint8_t)(seed * 131u + i * 7u + (i >> 8))) return 0;
    return 1;
}

static void test_many_allocations(void) {
    arena *a = arena_create(0);
    CHECK(a != NULL);
    enum { N = 5000 };
    static uint8_t *ptr[N];
    static size_t len[N];
    unsigned long long rng = 1;
    size_t total = 0;
    int misaligned = 0;
    for (int i = 0; i < N; i++) {
        /* mostly small, some mid-sized, a few large (own chunk) */
        size_t r = check_rng_next(&rng) % 100;
        len[i] = r < 90 ? check_rng_next(&rng) % 200 : r < 99 ? 1000 + check_rng_next(&rng) % 20000
                                                             : 300000 + check_rng_next(&rng) % 100000;
        ptr[i] = arena_alloc(a, len[i]);
        if (!ptr[i]) break;
        if ((uintptr_t)ptr[i] % 16) misaligned++;
        fill_pattern(ptr[i], len[i], (unsigned)i);
        total += len[i];
    }
    CHECK_EQ_INT(0, misaligned);
    int broken = 0;
    for (int i = 0; i < N; i++)
        if (!ptr[i] || !check_pattern(ptr[i], len[i], (unsigned)i)) broken++;
    CHECK_EQ_INT(0, broken);
    CHECK_MSG(arena_used(a) >= total && arena_used(a) <= total + 16 * N, "used %zu for %zu requested",
              arena_used(a), total);
    printf("  %d allocations, %zu bytes requested, arena_used %zu\n", N, total, arena_used(a));
    arena_free(a);
    arena_free(NULL);
}

static void test_cap(void) {
    arena *a = arena_create(1000);
    uint8_t *p = arena_alloc(a, 512);
    CHECK(p != NULL);
    CHECK_EQ_INT(512, arena_used(a));
    CHECK(arena_alloc(a, 600) == NULL);          /* would pass the cap */
    CHECK_EQ_INT(512, arena_used(a));            /* a refused allocation costs nothing */
    CHECK(arena_alloc(a, 480) != NULL);          /* 992 <= 1000 */
    CHECK(arena_alloc(a, 16) == NULL);           /* 1008 > 1000 */
    CHECK(arena_alloc(a, 8) == NULL);            /* counts 16 after alignment: 1008 > 1000 */
    arena_free(a);

    a = arena_create(1 << 20);
    CHECK(arena_alloc(a, (1 << 20) + 1) == NULL); /* one large allocation over the cap */
    CHECK(arena_alloc(a, SIZE_MAX) == NULL);
    CHECK(arena_calloc(a, SIZE_MAX / 2, 4) == NULL); /* n * size overflows */
    uint8_t *big = arena_alloc(a, 600000);
    CHECK(big != NULL);
    CHECK(arena_realloc(a, big, 600000, 2000000) == NULL); /* growth over the cap refused, big still valid */
    fill_pattern(big, 600000, 9);
    CHECK(check_pattern(big, 600000, 9));
    arena_free(a);
}

static void test_calloc_strdup(void) {
    arena *a = arena_create(0);
    uint8_t *junk = arena_alloc(a, 4096);
    memset(junk, 0xab, 4096);
    uint32_t *z = arena_calloc(a, 1000, sizeof *z);
    int nonzero = 0;
    for (int i = 0; i < 1000; i++) nonzero += z[i] != 0;
    CHECK_EQ_INT(0, nonzero);
    char *s = arena_strdup(a, "hello, arena");
    CHECK(s && !strcmp(s, "hello, arena"));
    char *t = arena_strndup(a, "abcdef", 3);
    CHECK(t && !strcmp(t, "abc"));
    char *u = arena_strndup(a, "ab", 10);
    CHECK(u && !strcmp(u, "ab"));
    CHECK(arena_alloc(a, 0) != NULL); /* zero bytes: a valid unique pointer */
    arena_free(a);
}

static void test_realloc(void) {
    arena *a = arena_create(0);
    /* newest large chunk: grows in place (realloc), bytes kept, used tracks the new size */
    size_t n = 100000;
    uint8_t *p = arena_alloc(a, n);
    fill_pattern(p, n, 3);
    size_t before = arena_used(a);
    for (int i = 0; i < 6; i++) {
        uint8_t *q = arena_realloc(a, p, n, n * 2);
        CHECK(q != NULL);
        CHECK_MSG(check_pattern(q, n, 3), "large chunk lost bytes growing %zu -> %zu", n, n * 2);
        fill_pattern(q, n * 2, 3);
        p = q;
        n *= 2;
    }
    CHECK_EQ_INT(before - 100000 + n, arena_used(a)); /* 100000 and its doublings are multiples of 16 */
    uint8_t *q = arena_realloc(a, p, n, 1000);  /* shrink: gives the bytes back */
    CHECK(q != NULL && check_pattern(q, 1000, 3));
    CHECK_EQ_INT(before - 100000 + 1008, arena_used(a));

    /* newest small allocation: extends in place while its block has room */
    uint8_t *s = arena_alloc(a, 40);
    fill_pattern(s, 40, 4);
    uint8_t *s2 = arena_realloc(a, s, 40, 200);
    CHECK(s2 == s);
    CHECK(check_pattern(s2, 40, 4));

    /* an older allocation: copied, bytes kept, the old one untouched */
    uint8_t *old = arena_alloc(a, 100);
    fill_pattern(old, 100, 5);
    uint8_t *newer = arena_alloc(a, 50);
    fill_pattern(newer, 50, 6);
    uint8_t *moved = arena_realloc(a, old, 100, 5000);
    CHECK(moved != NULL && moved != old);
    CHECK(check_pattern(moved, 100, 5));
    CHECK(check_pattern(newer, 50, 6));
    CHECK(check_pattern(old, 100, 5));

    /* NULL grows from nothing */
    uint8_t *fresh = arena_realloc(a, NULL, 0, 300);
    CHECK(fresh != NULL);
    memset(fresh, 1, 300);
    arena_free(a);
}

int main(void) {
    test_many_allocations();
    test_cap();
    test_calloc_strdup();
    test_realloc();
    return check_done("test_arena");
}
