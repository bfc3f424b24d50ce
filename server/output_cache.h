/* output_cache.h — encoder outputs kept in memory by content, so an image sent again (a frontend re-sends the same
 * picture on every turn of a conversation) is answered without decoding or encoding it, and concurrent requests
 * for an image being encoded wait for that one encode instead of starting another (single flight).
 *
 * Key: 32 bytes, SHA-256 of the image bytes and everything that changes its outputs (content_id_key: the model
 * fingerprint and the resize bounds); every route shares the cache. Value (an entry): the image's grid and its
 * outputs in the server's storage dtype (bfloat16 on the GPU, float32 on the CPU), embeddings [tokens, D] and all
 * k DeepStack layers [k][tokens][D] (an entry is complete whatever the request that made it asked), in memory the
 * entry owns.
 *
 * output_cache_get() answers one of:
 *   HIT   a ready entry: its buffers hold the outputs;
 *   LEAD  a new pending entry whose buffers the caller fills (the encoder writes into them) and then settles with
 *         output_cache_settle(ok): ready and kept, or dropped on failure;
 *   WAIT  a pending entry another request is filling: `on_settle(arg, ok)` is called once it settles (on the
 *         settling thread, without the cache's lock); on ok its buffers hold the outputs, else the caller encodes
 *         the image itself;
 *   SOLO  no entry (the cache is off, or the image's outputs are larger than the whole cache).
 * HIT, LEAD and WAIT give the caller a reference (output_cache_release when done with the buffers: the memory
 * lives until the last reference, even when the entry left the cache). Ready entries are bounded by bytes
 * (max_bytes) and evicted least-recently-used first; pending entries are never evicted. Metrics:
 * vitd_output_cache_requests_total{result="hit"|"miss"|"wait"}, _evictions_total, _bytes, _entries.
 *
 * Thread safety: every call from any thread. */
#ifndef VITD_OUTPUT_CACHE_H
#define VITD_OUTPUT_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "metrics.h"
#include "vitd.h"

typedef struct output_cache output_cache;
typedef struct oc_entry oc_entry;

typedef enum { OC_SOLO, OC_HIT, OC_LEAD, OC_WAIT } oc_result;

/* Called once when a pending entry waited on settles (ok: its buffers hold the outputs). */
typedef void (*oc_settle_fn)(void *arg, bool ok);

/* A cache of at most max_bytes of outputs; NULL when max_bytes is 0 (off). metrics may be NULL. */
output_cache *output_cache_create(size_t max_bytes, metrics_vitd *metrics);
void output_cache_free(output_cache *c);

/* Looks the image up (see above). grid, D, k and es (bytes per value: 2 for bfloat16, 4 for float32) size a new
 * entry. On HIT, LEAD and WAIT, *e is the entry (a reference for the caller). On WAIT, on_settle(arg, ok) will be
 * called. c may be NULL (SOLO). VITD_E_NOMEM leaves SOLO too: the caller encodes as if there were no cache. */
oc_result output_cache_get(output_cache *c, const uint8_t key[32], const vitd_grid *grid, int D, int k, size_t es,
                           oc_settle_fn on_settle, void *arg, oc_entry **e);
/* The entry's grid and buffers: embeddings [tokens, D], DeepStack [k][tokens][D] (NULL when k = 0). */
const vitd_grid *oc_entry_grid(const oc_entry *e);
void *oc_entry_embeddings(oc_entry *e);
void *oc_entry_deepstack(oc_entry *e);
/* The leader settles its entry: ok = its buffers hold the outputs (it becomes a hit for later requests), else it
 * leaves the cache. Waiters are told either way. */
void output_cache_settle(output_cache *c, oc_entry *e, bool ok);
/* Drops a reference. Accepts NULL. */
void output_cache_release(output_cache *c, oc_entry *e);
/* Entries and bytes held by the cache now (ready and pending). */
void output_cache_stats(output_cache *c, size_t *entries, size_t *bytes);

#endif
