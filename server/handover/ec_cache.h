/* ec_cache.h — vLLM's EC-transfer cache files (../shared/INTEGRATION.md, "vLLM, surface 2"): for an image handed
 * over under uuid U, vitd writes
 *
 *     <ec_cache_dir>/<U>/encoder_cache.safetensors     one tensor "ec_cache", BF16, [T, out_hidden x (1 + k)]
 *
 * (the concat layout of vllm.h), the file an LLM started with ECExampleConnector as ec_consumer and
 * shared_storage_path = ec_cache_dir loads instead of running its own vision tower. A consumer decides on the
 * file's existence alone, so it is written under a temporary name, synced and renamed into place: a reader sees
 * the whole file or none. __metadata__ records the producer, the grid and the shape.
 *
 * Retention (vLLM never removes these files): the cache knows the files it found under the directory at start
 * and those it wrote since, by modification time; after every write, and once a minute, it removes the oldest
 * until their total is at most max_bytes, and every file older than max_age_s (0 turns either bound off). The
 * file just written is never removed by its own write. Temporary files left by a crash (older than 10 minutes)
 * are removed at start. Several replicas may share a directory; each bounds the files it knows of.
 * Metrics: vitd_ec_cache_bytes, vitd_ec_cache_files, vitd_ec_cache_writes_total{result},
 * vitd_ec_cache_evictions_total{reason}, vitd_ec_cache_write_seconds.
 *
 * Thread safety: ec_cache_put and ec_cache_stats from any thread; open/free from the owner. */
#ifndef VITD_EC_CACHE_H
#define VITD_EC_CACHE_H

#include <stddef.h>

#include "handover.h"
#include "metrics.h"
#include "vitd.h"

typedef struct ec_cache ec_cache;

#define EC_CACHE_FILE "encoder_cache.safetensors"
#define EC_CACHE_TENSOR "ec_cache"

/* Opens dir (created if missing; its parent must exist), learns the files already there, applies the bounds
 * once, and starts the minute sweep. metrics may be NULL. On success *out is owned by the caller
 * (ec_cache_free). VITD_E_IO names the directory when it cannot be created or read. */
vitd_status ec_cache_open(const char *dir, size_t max_bytes, int max_age_s, metrics_vitd *metrics, ec_cache **out,
                          vitd_err *err);
/* Writes the file of uuid (content_id_uuid_ok) from src's rows (all 1 + k segments, converted to bfloat16),
 * replacing an earlier file of that uuid, then applies the bounds. VITD_E_IO names the path on failure (no file
 * is then left at the final name). */
vitd_status ec_cache_put(ec_cache *c, const char *uuid, const handover_src *src, const vitd_grid *grid,
                         vitd_err *err);
/* Files and bytes the cache knows of now. */
void ec_cache_stats(ec_cache *c, size_t *files, size_t *bytes);
/* The final path of uuid's file into buf (n bytes); returns buf. */
const char *ec_cache_path(const ec_cache *c, const char *uuid, char *buf, size_t n);
/* Stops the sweep and frees (the files stay). Accepts NULL. */
void ec_cache_free(ec_cache *c);

#endif
