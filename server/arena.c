/* arena.c — the per-request bump allocator (server/arena.h).
 *
 * Small allocations are carved from blocks that double in size (8 KiB up to 1 MiB); an allocation larger than a
 * quarter of the current block size gets a chunk of its own, so that a multi-megabyte image never wastes the
 * rest of a block and can be resized in place with realloc (arena_realloc). Everything dies in arena_free().
 * The cap counts the bytes handed out (arena_used), not the block slack, so a caller can reason about it.
 */
#include "arena.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define ARENA_ALIGN 16
#define ARENA_FIRST_BLOCK ((size_t)8 << 10)
#define ARENA_MAX_BLOCK ((size_t)1 << 20)

/* A block of small allocations or one large allocation; the data follows the header, 16-byte aligned. */
typedef struct chunk {
    struct chunk *next;
    size_t size; /* usable bytes after the header */
} chunk;

#define CHUNK_HDR ((sizeof(chunk) + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1))

struct arena {
    chunk *blocks;     /* blocks of small allocations, newest first; bump pointer in the newest */
    chunk *large;      /* dedicated chunks, newest first */
    size_t pos;        /* bytes used in blocks (the newest) */
    size_t next_block; /* size of the next block */
    size_t used;       /* bytes handed out, aligned */
    size_t cap;        /* 0 = unlimited */
    void *last;        /* most recent bump allocation (for in-place growth), or NULL */
};

static inline uint8_t *chunk_data(chunk *c) { return (uint8_t *)c + CHUNK_HDR; }

static inline size_t align_up(size_t n) { return (n + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1); }

/* True when used + n stays within the cap (and does not overflow). */
static int arena_fits(const arena *a, size_t n) {
    if (n > SIZE_MAX - a->used) return 0;
    return a->cap == 0 || a->used + n <= a->cap;
}

arena *arena_create(size_t cap_bytes) {
    arena *a = calloc(1, sizeof *a);
    if (!a) return NULL;
    a->cap = cap_bytes;
    a->next_block = ARENA_FIRST_BLOCK;
    return a;
}

void arena_free(arena *a) {
    if (!a) return;
    for (chunk *c = a->blocks, *n; c; c = n) {
        n = c->next;
        free(c);
    }
    for (chunk *c = a->large, *n; c; c = n) {
        n = c->next;
        free(c);
    }
    free(a);
}

/* A dedicated chunk of n bytes at the head of the large list; NULL when malloc fails. */
static void *arena_alloc_large(arena *a, size_t n) {
    if (n > SIZE_MAX - CHUNK_HDR) return NULL;
    chunk *c = malloc(CHUNK_HDR + n);
    if (!c) return NULL;
    c->size = n;
    c->next = a->large;
    a->large = c;
    return chunk_data(c);
}

void *arena_alloc(arena *a, size_t n) {
    if (!a) return NULL;
    size_t an = align_up(n ? n : 1);
    if (an < n || !arena_fits(a, an)) return NULL;
    if (an > a->next_block / 4) {
        void *p = arena_alloc_large(a, an);
        if (p) a->used += an;
        return p;
    }
    if (!a->blocks || a->pos + an > a->blocks->size) {
        size_t bs = a->next_block;
        while (bs < an) bs *= 2;
        chunk *c = malloc(CHUNK_HDR + bs);
        if (!c) return NULL;
        c->size = bs;
        c->next = a->blocks;
        a->blocks = c;
        a->pos = 0;
        if (a->next_block < ARENA_MAX_BLOCK) a->next_block *= 2;
    }
    void *p = chunk_data(a->blocks) + a->pos;
    a->pos += an;
    a->used += an;
    a->last = p;
    return p;
}

void *arena_calloc(arena *a, size_t n, size_t size) {
    if (size && n > SIZE_MAX / size) return NULL;
    void *p = arena_alloc(a, n * size);
    if (p) memset(p, 0, n * size);
    return p;
}

char *arena_strndup(arena *a, const char *s, size_t n) {
    size_t len = strnlen(s, n);
    char *p = arena_alloc(a, len + 1);
    if (!p) return NULL;
    memcpy(p, s, len);
    p[len] = '\0';
    return p;
}

char *arena_strdup(arena *a, const char *s) { return arena_strndup(a, s, SIZE_MAX); }

size_t arena_used(const arena *a) { return a ? a->used : 0; }

bool arena_release(arena *a, void *p) {
    if (!a || !p) return false;
    for (chunk **link = &a->large; *link; link = &(*link)->next) {
        chunk *c = *link;
        if (chunk_data(c) != (uint8_t *)p) continue;
        *link = c->next;
        a->used -= c->size;
        free(c);
        return true;
    }
    return false;
}

/* Resizes p (an allocation of old_n bytes from a, or NULL) to new_n bytes, keeping min(old_n, new_n) bytes.
 * Cheap when p is the newest dedicated chunk (realloc, which for big blocks remaps pages instead of copying) or
 * the newest small allocation with room behind it; otherwise copies into a new allocation, and the old bytes stay
 * held until arena_free. Returns NULL (p still valid) on malloc failure or when the cap would be exceeded. */
void *arena_realloc(arena *a, void *p, size_t old_n, size_t new_n) {
    if (!a) return NULL;
    if (!p) return arena_alloc(a, new_n);
    size_t aold = align_up(old_n ? old_n : 1), anew = align_up(new_n ? new_n : 1);
    if (anew < new_n) return NULL;
    if (a->large && chunk_data(a->large) == (uint8_t *)p && a->large->size == aold) {
        if (anew > aold && !arena_fits(a, anew - aold)) return NULL;
        if (anew > SIZE_MAX - CHUNK_HDR) return NULL;
        chunk *c = realloc(a->large, CHUNK_HDR + anew);
        if (!c) return NULL;
        c->size = anew;
        a->large = c;
        a->used = a->used - aold + anew;
        return chunk_data(c);
    }
    if (p == a->last && a->blocks && (uint8_t *)p + aold == chunk_data(a->blocks) + a->pos) {
        size_t start = a->pos - aold;
        if (anew <= aold || (start + anew <= a->blocks->size && arena_fits(a, anew - aold))) {
            a->pos = start + anew;
            a->used = a->used - aold + anew;
            return p;
        }
    }
    if (anew <= aold) return p;
    void *q = arena_alloc(a, new_n);
    if (!q) return NULL;
    memcpy(q, p, old_n < new_n ? old_n : new_n);
    return q;
}
