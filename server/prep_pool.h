/* prep_pool.h — the CPU threads that decode and preprocess images while the encoder runs the previous batch.
 *
 * A pool of N threads runs tasks in submission order. prep_pool_submit(fn, arg, n) queues n tasks fn(arg, 0..n-1)
 * at once (one per image of a request), so the images of one request are spread over all threads and several
 * requests are in flight together. The pool owns nothing of what arg points to: arg must stay valid until the last
 * of its n tasks has returned (the server hands the pool a request reference and the last task passes it on).
 *
 * prep_image() is the work of one task: decode an image span and preprocess it into caller-owned pixel_values.
 *
 * prep_pool_submit and prep_pool_pending are thread-safe; submissions racing prep_pool_stop are refused.
 */
#ifndef VITD_PREP_POOL_H
#define VITD_PREP_POOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "preprocess.h"
#include "vitd.h"

typedef struct prep_pool prep_pool;

typedef void (*prep_task_fn)(void *arg, int index);

/* Starts n_threads workers (>= 1). On success *out is owned by the caller; prep_pool_free(). */
vitd_status prep_pool_create(int n_threads, prep_pool **out, vitd_err *err);
/* Queues fn(arg, i) for i in [0, n_tasks); never runs a task on the caller's thread. Returns false (nothing
 * queued) once prep_pool_stop (or prep_pool_free) has begun: a task still running then must not hand on more work,
 * and any other thread that may still submit (the batcher's retry rounds) is refused, never handed a freed pool. */
bool prep_pool_submit(prep_pool *p, prep_task_fn fn, void *arg, int n_tasks);
/* Tasks queued and not yet started. */
int prep_pool_pending(prep_pool *p);
/* Runs every queued task to completion and joins the workers; the pool stays allocated, refusing submissions,
 * until prep_pool_free. For shutdown, where other threads (the batcher) may still submit until they are joined
 * themselves. Called from one thread; a second call does nothing. Accepts NULL. */
void prep_pool_stop(prep_pool *p);
/* prep_pool_stop, then frees the pool. Accepts NULL. */
void prep_pool_free(prep_pool *p);

/* Runs fn(arg, begin, end) over [0, n) in pieces of grain, on the calling thread and on workers that are idle
 * now (none when tasks are queued: then it is one call on this thread), and returns when every piece is done.
 * The calling thread claims pieces too, so it finishes alone if nobody helps: never a wait for a busy pool.
 * For splitting one image's preprocessing when the pool is not busy with other images. p may be NULL. */
typedef void (*prep_range_fn)(void *arg, size_t begin, size_t end);
void prep_pool_parallel(prep_pool *p, size_t n, size_t grain, prep_range_fn fn, void *arg);

/* What a prep_image call may use and reports. */
typedef struct {
    prep_pool *pool;          /* split the resize and the patch layout over its idle workers; NULL = this thread */
    double decode_s;          /* out: seconds spent decoding */
} prep_ctx;

/* Decodes data[0..len) (image_decode, max_pixels checked against the header) and runs the Qwen3-VL processor
 * into pixel_values, which holds grid->t*grid->h*grid->w rows of preprocess_row_width(cfg) floats; grid must be
 * preprocess_plan() of the image's size, and a decoded size differing from the one the plan used is refused
 * (VITD_E_BAD_IMAGE). ctx may be NULL. The result is the same bit for bit however the work is split.
 * Thread-safe; the decoded pixels are freed before return. */
vitd_status prep_image(const uint8_t *data, size_t len, size_t max_pixels, const vitd_preproc_config *cfg,
                       const vitd_grid *grid, float *pixel_values, prep_ctx *ctx, vitd_err *err);

#endif
