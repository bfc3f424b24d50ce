/* scheduler.h — the bounded token queue and the dynamic batcher (implemented in sched.c; the header is not
 * called sched.h because server/ is on the include path and would shadow the system <sched.h>).
 *
 * Requests (jobs) carry preprocessed images. One batcher thread packs images from many jobs, in arrival order,
 * into one encoder batch of at most batch_max_tokens patches and batch_max_images images (an image larger than the
 * token budget runs alone). The batch is in vitd_batch's per-image form: the encoder reads each image's pixels
 * from, and writes its outputs into, the job's own buffers (no copy into or out of a batch buffer). After the first queued image arrives the batcher waits at
 * most batch_delay_ms for more work, or less when a batch is already full, and not at all when no booked work is
 * on its way (every booking queued or in a batch): a lone request does not wait for company. A job whose images span several
 * batches completes when its last image is done. Before encoding a job's images the batcher asks job->gone()
 * (client disconnected: VITD_E_CANCELLED) and checks job->deadline (VITD_E_TIMEOUT); such a job is skipped, not
 * encoded.
 *
 * Pipelining: with submit/wait callbacks (vitd_encoder_submit / vitd_encoder_wait) up to `pipeline` batches are
 * in flight: the batcher packs and submits batch k+1 while the GPU runs batch k, then waits for batch k and
 * completes its jobs, so the host work of one batch overlaps the GPU work of the other. A job is completed only
 * when no queue and no batch in flight holds any of its images (a failed, gone or timed-out job included), so its
 * buffers are never written after done().
 *
 * The encoder is a callback, so the packing logic can be tested with a fake (tests/test_sched.c); the server
 * passes vitd_encoder_submit / vitd_encoder_wait.
 *
 * Capacity: sched_reserve() books a job's patches against queue_max_tokens before the job is even preprocessed,
 * so a full queue is refused at once (VITD_E_BUSY); the booking is returned when the job completes (before
 * done() runs) or by sched_unreserve() when the caller gives up before sched_submit().
 *
 * Ownership: sched never owns a job or its buffers. Between sched_submit() and job->done() the job and every
 * buffer it points to must stay valid; done() is called exactly once per submitted job, on the batcher thread
 * (or, for sched_stop(s, true), on the caller's thread), and the job may be freed inside done(). A sched_submit()
 * that fails never calls done(). All functions are thread-safe except sched_free().
 */
#ifndef VITD_SCHEDULER_H
#define VITD_SCHEDULER_H

#include <stdbool.h>
#include <stddef.h>

#include "vitd.h"

typedef struct sched sched;

#define SCHED_MAX_PIPELINE 4
typedef struct sched_job sched_job;

/* Runs one batch (same contract as vitd_encoder_run). Called only from the batcher thread. */
typedef vitd_status (*sched_encode_fn)(void *user, const vitd_batch *b, vitd_err *err);
/* Pipelined encoder (contracts of vitd_encoder_submit / vitd_encoder_wait). Batcher thread only. */
typedef vitd_status (*sched_submit_fn)(void *user, const vitd_batch *b, vitd_err *err);
typedef vitd_status (*sched_wait_fn)(void *user, vitd_err *err);
/* Background work for an idle batcher (vitd_encoder_idle): one bounded piece; returns > 0 while more remains. */
typedef int (*sched_idle_fn)(void *user);
/* Told after every encoder run: images, patches, seconds spent in the encoder, its status (for metrics). */
typedef void (*sched_batch_fn)(void *user, int n_images, size_t n_patches, double encode_s, vitd_status s);

typedef struct {
    size_t batch_max_tokens;   /* patches per batch (sum of t*h*w); an image above it runs alone */
    int batch_max_images;      /* images per batch */
    int batch_delay_ms;        /* longest wait for more work after the first image arrives */
    size_t queue_max_tokens;   /* patches booked at once (prep + queue + running batch) */
    size_t row_width;          /* floats per patch row of pixel_values (3*T*P*P) */
    int out_hidden;            /* width of an output token */
    int n_deepstack;           /* deepstack layers (0 = none) */
    int merge_patches;         /* patches per output token (spatial_merge_size^2) */
    sched_encode_fn encode;    /* synchronous encoder; used when submit is NULL */
    sched_submit_fn submit;    /* pipelined encoder: submit and wait together, or both NULL */
    sched_wait_fn wait;
    int pipeline;              /* batches in flight with submit/wait: 1..SCHED_MAX_PIPELINE (0 = 2) */
    sched_idle_fn idle;        /* may be NULL; called (with encode_user) while nothing is queued or in flight,
                                  one piece at a time, until it returns 0 or work arrives; asked again after
                                  the next batch */
    int idle_quiet_ms;         /* idle work starts only once nothing has been queued or in flight for this long,
                                  so a client's next request does not wait behind it (0 = at once) */
    void *encode_user;         /* passed to encode, submit and wait */
    sched_batch_fn on_batch;   /* may be NULL */
    void *batch_user;
} sched_config;

struct sched_job {
    /* ---- set by the owner before sched_submit(); read-only afterwards ---- */
    int n_images;
    const vitd_grid *grids;            /* [n_images] */
    float *const *pixel_values;        /* [n_images] -> [t*h*w, row_width] float32 */
    float *const *embeddings;          /* [n_images] -> [t*h*w / merge, out_hidden] float32 */
    float *const *deepstack;           /* NULL (not wanted) or [n_images] -> [n_deepstack][tokens][out_hidden] */
    bool out_bf16;                     /* the output buffers hold bfloat16 (uint16_t) values (vitd_batch.image_bf16) */
    size_t n_patches;                  /* sum of t*h*w; booked with sched_reserve() */
    double deadline;                   /* vitd_now() time after which it fails with VITD_E_TIMEOUT; 0 = none */
    bool (*gone)(sched_job *j);        /* true when nobody waits for the answer any more; NULL = never */
    /* The outcome: VITD_OK with every output filled, or a failure (err names it). Called once. */
    void (*done)(sched_job *j, vitd_status s, const vitd_err *err);
    /* ---- filled by sched before done() (stage timings for the owner) ---- */
    double t_submitted;                /* vitd_now() at sched_submit() */
    double t_first_batch;              /* when its first image started encoding (0 if never) */
    double encode_s;                   /* seconds of the encoder runs that held its images */
    int n_batches;                     /* encoder runs that held its images */
    /* ---- private to sched, guarded by its mutex ---- */
    int next_image;                    /* first image not yet taken into a batch */
    bool in_queue;
    int in_batches;                    /* batches in flight holding some of its images */
    vitd_status fail;                  /* first failure (VITD_OK: none), reported when it settles */
    vitd_err fail_err;
    sched_job *next;
};

/* Checks cfg, allocates and starts the batcher thread. On success *out is owned by the caller; sched_free(). */
vitd_status sched_create(const sched_config *cfg, sched **out, vitd_err *err);

/* Books n_patches of queue capacity. VITD_E_TOO_LARGE if n_patches alone exceeds queue_max_tokens, VITD_E_BUSY
 * when the queue is too full now (retry later), VITD_E_CANCELLED once stopping. */
vitd_status sched_reserve(sched *s, size_t n_patches, vitd_err *err);
/* Returns a booking that will not be submitted. */
void sched_unreserve(sched *s, size_t n_patches);

/* Queues a job whose n_patches were booked. VITD_E_CANCELLED once stopping (the booking is then returned and
 * done() is not called); VITD_E_INVALID_ARG for an empty or inconsistent job (booking kept). */
vitd_status sched_submit(sched *s, sched_job *job, vitd_err *err);

/* Stops accepting work. cancel = false: the batcher finishes every queued job, then exits. cancel = true: queued
 * jobs that are not in the running batch complete now with VITD_E_CANCELLED (done() on this thread). */
void sched_stop(sched *s, bool cancel);
/* sched_stop(s, true) if not stopped, waits for the batcher thread, frees. Accepts NULL. */
void sched_free(sched *s);

/* Snapshot for /metrics: jobs and patches waiting in the queue (not yet taken into a batch), patches booked. */
void sched_depth(sched *s, int *jobs, size_t *queued_patches, size_t *booked_patches);

#endif
