/* arena.h — a request's bump allocator: every per-request allocation comes from it and dies with it.
 * Not thread-safe: one owner at a time (see STYLE.md "Memory: one owner per buffer"). Allocations are 16-byte
 * aligned. Large blocks get their own chunk. arena_alloc returns NULL (never aborts) when malloc fails or when the
 * arena's byte cap would be exceeded, so request-sized allocations fail softly. */
#ifndef VITD_ARENA_H
#define VITD_ARENA_H

#include <stdbool.h>
#include <stddef.h>

typedef struct arena arena;

/* cap_bytes: most bytes the arena may hold in all (0 = unlimited). */
arena *arena_create(size_t cap_bytes);
void arena_free(arena *a);
void *arena_alloc(arena *a, size_t n);
void *arena_calloc(arena *a, size_t n, size_t size);
char *arena_strdup(arena *a, const char *s);
char *arena_strndup(arena *a, const char *s, size_t n);
size_t arena_used(const arena *a); /* bytes handed out (aligned), what the cap limits */
/* Gives back p early when it has a chunk of its own (an allocation over a quarter of the current block size,
 * e.g. a large JSON string once decoded); returns false, and keeps p, otherwise. */
bool arena_release(arena *a, void *p);
/* Resizes p (an allocation of exactly old_n bytes from a, or NULL) to new_n bytes, keeping the first
 * min(old_n, new_n). In place (realloc of its own chunk, no copy for big blocks) when p is the newest large
 * allocation or the newest small one; otherwise copies, and the old bytes stay held until arena_free. Returns NULL
 * (p still valid) on malloc failure or when the cap would be exceeded. For buffers that grow while a body
 * streams in. */
void *arena_realloc(arena *a, void *p, size_t old_n, size_t new_n);

#endif
