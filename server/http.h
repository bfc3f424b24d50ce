/* http.h — the libmicrohttpd daemon of `vitd serve`: routes, `struct req` and its lifetime, suspend/resume,
 * completion cleanup (STYLE.md "Memory: one owner per buffer"). Internals: http_req.h; http.c (daemon, routes,
 * GET handlers), http_images.c (the pipeline of the image routes).
 *
 * Routes:
 *   POST /v1/encode   images in (raw, multipart, JSON base64; server/body.h), embeddings out (JSON or safetensors;
 *                     server/reply.h)
 *   POST /v1/vllm/image_embeds   the same bodies; vLLM `image_embeds` chat content parts out (handover/vllm.h)
 *   POST /v1/chat/completions    vLLM EPD encoder instance: one image in, a cache file written, ec_transfer_params
 *                     out (handover/epd.h); 404 unless ec_cache_dir is set
 *   GET  /health      200 {"status":"ok"} while the process runs
 *   GET  /ready       200 once http_set_ready(true) (model loaded, warm-up done); 503 while starting or draining
 *   GET  /metrics     Prometheus text (server/metrics.h)
 *   GET  /v1/model    model config, backend, attention dtype, limits, hand-overs, version
 *   KServe v2         GET /v2, /v2/health/live, /v2/health/ready, /v2/models/<name>[/versions/1][/ready],
 *                     POST /v2/models/<name>[/versions/1]/infer (handover/kserve.h)
 * Unknown paths get 404, other methods 405 with Allow. Every answer carries X-Request-Id (the client's when it is
 * 1..64 characters of [A-Za-z0-9._:-], else generated); every error body is reply_error_json(), or on KServe v2
 * routes {"error": "<message>"}. With an API key, every route except the probes (/health, /ready,
 * /v2/health/live, /v2/health/ready) needs `Authorization: Bearer <key>` (401 + WWW-Authenticate otherwise).
 *
 * An image request: the body streams into body_feed() (413 at once when Content-Length is over max_body_bytes;
 * a chunked body that grows past it has its connection closed); when complete, each image's header is probed and
 * planned (too many pixels, bad header, aspect ratio: answered at once with the image index), its patches are
 * booked in the scheduler (503 + Retry-After when the queue is full), the connection is suspended and the prep pool
 * gets a second reference to the request. The last prep task submits the job to the scheduler; the scheduler's
 * done() (or a failing prep task) records the outcome and resumes the connection — or, for a request that writes
 * vLLM cache files, hands them to the io pool, whose last task does; the resumed handler renders the answer.
 * libmicrohttpd threads never wait for the encoder or the disk.
 *
 * Draining (http_drain_begin): /ready turns 503, encode requests that arrive from then on get 503 + Retry-After
 * and every answer says Connection: close; requests already started are served. http_wait_idle() waits for them.
 *
 * Thread safety: http_set_ready, http_drain_begin, http_live_requests, http_wait_idle may be called from any
 * thread; http_start/http_stop/http_free from the owning thread only.
 */
#ifndef VITD_HTTP_H
#define VITD_HTTP_H

#include <stdbool.h>
#include <stddef.h>

#include "config.h"
#include "ec_cache.h"
#include "metrics.h"
#include "output_cache.h"
#include "prep_pool.h"
#include "scheduler.h"
#include "vitd.h"

typedef struct http_server http_server;

typedef struct {
    const vitd_config *cfg;              /* limits, key, host/port, threads, timeouts; must outlive the server */
    const vitd_model *model;             /* for /v1/model and the answer's shapes */
    const char *backend;                 /* "cpu" | "gpu", as the encoder reports */
    const char *attn_dtype;              /* "fp32" | "bf16" | "fp8" | "auto" (vitd_encoder_attn_dtype) */
    const vitd_encoder *encoder;         /* /v1/model's per-path batch counts, and whether its device failed (a failed
                                            batch then answers 503, retry elsewhere); NULL = none (not owned) */
    const char *version;                 /* vitd version string */
    vitd_preproc_config preproc;         /* effective processor settings (config min/max_pixels applied) */
    size_t max_image_patches;            /* largest single image accepted (the encoder's batch plan) */
    bool out_bf16;                       /* the encoder's outputs are bfloat16 (vitd_encoder_native_bf16): requests
                                            take them so, never widened to float32 on the way */
    sched *sched;                        /* not owned */
    prep_pool *prep;                     /* not owned */
    prep_pool *io;                       /* cache-file writes (not owned); NULL when ec is NULL */
    ec_cache *ec;                        /* vLLM EC-transfer cache files (not owned); NULL = off */
    output_cache *cache;                 /* encoder outputs by content (not owned); NULL = off */
    metrics_vitd *metrics;               /* not owned; NULL = no metrics */
} http_opts;

/* Binds cfg->host:cfg->port (0 = a free port) and starts the daemon threads. On success *out is owned by the
 * caller (http_stop, then http_free). VITD_E_IO when the address cannot be bound (message names host and port). */
vitd_status http_start(const http_opts *o, http_server **out, vitd_err *err);
/* The port actually bound. */
int http_port(const http_server *h);
/* Sets what /ready answers (200 when true and not draining). */
void http_set_ready(http_server *h, bool ready);
/* The encoder's device failed for good: /ready (and KServe's ready routes) answer 503 "device_failed" from now
 * on, so a load balancer stops sending work while the process winds down. */
void http_set_failed(http_server *h);
/* Starts draining (see above). Idempotent. */
void http_drain_begin(http_server *h);
/* Requests started and not yet completed (answer sent or connection gone). */
int http_live_requests(http_server *h);
/* From now on, a request whose body completes is answered 503 instead of being handed to the prep pool and the
 * batcher: call before freeing them while the daemon still runs (a drain that timed out). Waits for requests
 * that are handing work over right now. Idempotent. */
void http_close_work(http_server *h);
/* Waits until no request is live or timeout_ms passes; true when idle. */
bool http_wait_idle(http_server *h, int timeout_ms);
/* Stops the daemon: closes the listening socket and every connection. Every suspended connection must have been
 * resumed (the scheduler and prep pool finished or cancelled). */
void http_stop(http_server *h);
/* Frees the server (after http_stop). Accepts NULL. */
void http_free(http_server *h);

#endif
