/* metrics.h — a small Prometheus registry: counters, gauges and fixed-bucket histograms with up to
 * METRICS_MAX_LABELS label pairs, rendered in the text exposition format 0.0.4 for GET /metrics.
 *
 * A family (name, help, type, label names) is registered once; each distinct tuple of label values is a series.
 * Recording goes to a series handle: look it up once (metrics_series_get) and keep it, or look it up per call —
 * lookup of an existing series is lock-free too. Label values must come from known, bounded sets (route
 * templates, status codes, stage names): a family holds at most METRICS_MAX_SERIES series, and label tuples
 * beyond that are all counted in one series whose values are "_overflow".
 *
 * Usage:
 *
 *     metrics_registry *r = metrics_registry_create();
 *     metrics_family *req = metrics_counter(r, "vitd_requests_total", "Requests.", "route", "status", NULL);
 *     metrics_inc(metrics_series_get(req, "/v1/embeddings", "200", NULL));
 *     char *text = metrics_render(r, &len);   // malloc'd; free()
 *     metrics_registry_free(r);
 *
 * vitd's own metrics are predefined by metrics_vitd_create() (below) so the server only records.
 *
 * Thread safety: registering families is a start-up step (it takes the registry lock, but handles must not be
 * used before registration returns). Recording (add/inc/set/observe) is lock-free (C11 atomics) and safe from
 * any thread; metrics_series_get() is lock-free for an existing series and locks to create one;
 * metrics_render() locks against series creation only. Values are doubles; counters must not decrease.
 */
#ifndef VITD_METRICS_H
#define VITD_METRICS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define METRICS_MAX_LABELS 4
#define METRICS_MAX_SERIES 256  /* per family, the "_overflow" series included */
#define METRICS_MAX_BUCKETS 32  /* histogram bounds, +Inf not counted */
#define METRICS_MAX_VALUE_LEN 128 /* label values are cut to this many bytes */

typedef enum { METRICS_COUNTER, METRICS_GAUGE, METRICS_HISTOGRAM } metrics_type;

typedef struct metrics_registry metrics_registry;
typedef struct metrics_family metrics_family;
typedef struct metrics_series metrics_series;

metrics_registry *metrics_registry_create(void);
/* Frees the registry, its families and series; accepts NULL. No thread may record afterwards. */
void metrics_registry_free(metrics_registry *r);

/* Registers a family; the label names follow `help` and end with NULL. Names must be valid Prometheus names
 * (asserted: a bad name is a bug), unique in the registry; "le" is reserved for histograms. A family without
 * labels has its one series created at once (so it renders 0 before anything is recorded). The registry owns
 * the family. */
metrics_family *metrics_counter(metrics_registry *r, const char *name, const char *help, ...)
    __attribute__((sentinel));
metrics_family *metrics_gauge(metrics_registry *r, const char *name, const char *help, ...)
    __attribute__((sentinel));
/* bounds: n_bounds strictly increasing finite upper bounds (copied); +Inf is implicit. */
metrics_family *metrics_histogram(metrics_registry *r, const char *name, const char *help, const double *bounds,
                                  int n_bounds, ...) __attribute__((sentinel));

/* The series of the given label values (one per label name of the family, then NULL), created on first use.
 * Never NULL. Handles stay valid until the registry is freed. */
metrics_series *metrics_series_get(metrics_family *f, ...) __attribute__((sentinel));
/* Same with the values in an array of the family's label count. */
metrics_series *metrics_series_getv(metrics_family *f, const char *const *values);

/* Counter: add v >= 0 (asserted); gauge: add any v. */
void metrics_add(metrics_series *s, double v);
void metrics_inc(metrics_series *s);
/* Gauge only. */
void metrics_set(metrics_series *s, double v);
/* Histogram only: counts v in the first bucket whose bound is >= v (+Inf if none) and adds it to the sum. NaN is
 * ignored. */
void metrics_observe(metrics_series *s, double v);
/* Current value of a counter or gauge (the count of a histogram). */
double metrics_value(const metrics_series *s);

/* The exposition text of every family in registration order (# HELP, # TYPE, then series in creation order;
 * histograms as cumulative _bucket{le=...} lines ending in le="+Inf", then _sum and _count, where _count equals the
 * +Inf bucket). Label values and help are escaped. Returns a malloc'd NUL-terminated string (free with free())
 * and its length in *len (if not NULL), or NULL if out of memory. */
char *metrics_render(metrics_registry *r, size_t *len);

/* ---- vitd's metrics ---- */

/* The stages of an image request, along its way (seconds): receive (first call to the whole body), decode (the
 * image decoders' time, summed over the images), preprocess (body to pixels ready, decoding and waiting for a prep
 * thread included), queue (submitted to its first batch), encode (the batches holding its images), resume (work
 * done to the answer's rendering starting), answer (rendering), send (rendered to sent), total (first call to
 * sent). */
enum { METRICS_STAGE_RECEIVE, METRICS_STAGE_DECODE, METRICS_STAGE_PREPROCESS, METRICS_STAGE_QUEUE,
       METRICS_STAGE_ENCODE, METRICS_STAGE_RESUME, METRICS_STAGE_ANSWER, METRICS_STAGE_SEND, METRICS_STAGE_TOTAL,
       METRICS_N_STAGES };
enum { METRICS_ATTN_FP32, METRICS_ATTN_BF16, METRICS_ATTN_FP8, METRICS_N_ATTN };

/* The registry with every vitd metric registered, plus series handles for the hot paths. Families:
 *   vitd_requests_total{route,status}          counter   requests answered, by route template and HTTP status
 *   vitd_request_duration_seconds{stage}       histogram stage = receive | decode | preprocess | queue | encode |
 *                                                        resume | answer | send | total (METRICS_STAGE_*)
 *   vitd_batch_images                          histogram images per encoder batch
 *   vitd_batch_tokens                          histogram patches per encoder batch
 *   vitd_queue_tokens, vitd_queue_requests     gauge     patches / requests waiting in the queue
 *   vitd_images_total, vitd_tokens_total       counter   images / patches encoded
 *   vitd_errors_total{code}                    counter   failed requests by vitd_status_name() (all pre-created)
 *   vitd_batches_total{attn}                   counter   encoder batches by attention path fp32 | bf16 | fp8
 *   vitd_inflight_requests                     gauge     requests received and not yet answered
 *   vitd_ready                                 gauge     1 when /ready answers 200
 *   vitd_build_info{version,backend,attn_dtype} gauge    1
 * Hand-over to LLM engines (server/handover/):
 *   vitd_handover_images_total{kind}           counter   images answered, by kind: encode (/v1/encode), vllm_inline,
 *                                                        vllm_ec_cache, epd (chat completions), kserve_json,
 *                                                        kserve_binary (all pre-created)
 *   vitd_handover_bytes_total{kind}            counter   answer bytes, by the same kinds
 *   vitd_ec_cache_bytes, vitd_ec_cache_files   gauge     cache files known (ec_cache.h) and their bytes
 *   vitd_ec_cache_writes_total{result}         counter   cache files written: ok | error
 *   vitd_ec_cache_evictions_total{reason}      counter   cache files removed by retention: bytes | age
 *   vitd_ec_cache_write_seconds                histogram time to write one cache file (sync and rename included)
 *   vitd_ec_proxy_registered                   gauge     1 while the EPD proxy has accepted this instance
 *   vitd_ec_proxy_announces_total{result}      counter   registrations sent to the EPD proxy: ok | error
 * Output cache (server/output_cache.h):
 *   vitd_output_cache_requests_total{result}   counter   image lookups: hit | miss | wait (joined an encode in flight);
 *                                                        retry counts waits whose encode failed elsewhere (the
 *                                                        waiter then encoded the image itself)
 *   vitd_output_cache_evictions_total          counter   ready entries evicted for the byte bound
 *   vitd_output_cache_bytes, _entries          gauge     what the cache holds (ready and pending)
 * Connections (server/conn_guard.h):
 *   vitd_connections_open                      gauge     HTTP connections open
 *   vitd_connections_closed_total{reason}      counter   connections vitd closed itself: idle_timeout, header_timeout,
 *                                                        body_timeout, send_timeout, evicted (a pending one closed to
 *                                                        make room at max_connections), over_limit (refused at
 *                                                        max_connections), linger (after an answer written early) */
enum { METRICS_CONN_IDLE, METRICS_CONN_HEADER, METRICS_CONN_BODY, METRICS_CONN_SEND, METRICS_CONN_EVICTED,
       METRICS_CONN_OVER_LIMIT, METRICS_CONN_LINGER, METRICS_N_CONN };
enum { METRICS_KIND_ENCODE, METRICS_KIND_VLLM_INLINE, METRICS_KIND_VLLM_EC, METRICS_KIND_EPD,
       METRICS_KIND_KSERVE_JSON, METRICS_KIND_KSERVE_BINARY, METRICS_N_KINDS };
typedef struct {
    metrics_registry *reg;
    metrics_family *requests_total, *request_duration, *batch_images, *batch_tokens, *queue_tokens,
        *queue_requests, *images_total, *tokens_total, *errors_total, *batches_total, *inflight_requests, *ready,
        *build_info;
    metrics_family *handover_images, *handover_bytes, *ec_bytes, *ec_files, *ec_writes, *ec_evictions,
        *ec_write_seconds, *ec_registered, *ec_announces;
    metrics_series *kind_images[METRICS_N_KINDS], *kind_bytes[METRICS_N_KINDS];
    metrics_series *ec_bytes_s, *ec_files_s, *ec_write_ok_s, *ec_write_err_s, *ec_evict_bytes_s, *ec_evict_age_s,
        *ec_write_seconds_s, *ec_registered_s, *ec_announce_ok_s, *ec_announce_err_s;
    metrics_family *oc_requests, *oc_evictions, *oc_bytes, *oc_entries;
    metrics_series *oc_hit_s, *oc_miss_s, *oc_wait_s, *oc_retry_s, *oc_evictions_s, *oc_bytes_s, *oc_entries_s;
    metrics_family *conn_open, *conn_closed;
    metrics_series *conn_open_s, *conn_closed_s[METRICS_N_CONN];
    metrics_family *heap;                      /* vitd_heap_bytes{kind="in_use"|"held"}: malloc's view, per scrape */
    metrics_series *heap_in_use_s, *heap_held_s;
    metrics_series *stage[METRICS_N_STAGES];   /* vitd_request_duration_seconds{stage=...} */
    metrics_series *batches[METRICS_N_ATTN];   /* vitd_batches_total{attn=...} */
    metrics_series *batch_images_s, *batch_tokens_s, *queue_tokens_s, *queue_requests_s, *images_s, *tokens_s,
        *inflight_s, *ready_s;
    metrics_series *build_s;                   /* the current vitd_build_info series, or NULL */
} metrics_vitd;

/* Creates the registry and every family above; free with metrics_vitd_free() (accepts NULL). */
metrics_vitd *metrics_vitd_create(void);
void metrics_vitd_free(metrics_vitd *m);

/* One finished request: vitd_requests_total{route,status} += 1 and each stage time observed in seconds
 * (stage_s[METRICS_STAGE_*]; a negative time means the request never reached that stage and is not observed).
 * route is the route template. */
void metrics_vitd_request(metrics_vitd *m, const char *route, int status, const double *stage_s);
/* One failed request: vitd_errors_total{code} += 1 (code = vitd_status_name()). */
void metrics_vitd_error(metrics_vitd *m, const char *code);
/* One encoder batch: vitd_batches_total{attn} += 1 (attn = "fp32" | "bf16" | "fp8"), batch histograms, and the
 * images and tokens (patches) counters. */
void metrics_vitd_batch(metrics_vitd *m, const char *attn, int images, uint64_t tokens);
/* One answer handed over: kind is METRICS_KIND_*; images and answer bytes are added to its counters. */
void metrics_vitd_handover(metrics_vitd *m, int kind, int images, uint64_t bytes);
/* Sets vitd_build_info{version,backend,attn_dtype} 1 (call after the encoder is created; a later call with other
 * values sets the previous series to 0). */
void metrics_vitd_set_build(metrics_vitd *m, const char *version, const char *backend, const char *attn_dtype);

#ifdef __cplusplus
}
#endif
#endif /* VITD_METRICS_H */
