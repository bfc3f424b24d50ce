/* epd.h — vitd as an encoder instance of vLLM's disaggregated serving (EPD: encode, prefill, decode;
 * ../shared/INTEGRATION.md, "vLLM, surface 2"):
 *
 *   1. registration (epd_announce.c): with ec_proxy_url set, vitd POSTs <proxy>/instances {"role": "encode",
 *      "url": <this instance>, "ec_zmq_addrs": [], "dp_size": 1, "metadata": {...}} once ready, again every
 *      ec_announce_interval_s (every 5 s until the proxy first says 200), and DELETEs the same body when it
 *      starts draining. The proxy probes GET /health.
 *   2. per image, the proxy POSTs /v1/chat/completions {"model": ..., "messages": [{"role": "user", "content":
 *      [{"type": "image_url", "image_url": {"url": "data:image/...;base64,..."}, "uuid": "<id>"}]}],
 *      "stream": false}; vitd encodes the image, writes <ec_cache_dir>/<id>/encoder_cache.safetensors
 *      (ec_cache.h) and only then answers 200 with a chat.completion whose top-level ec_transfer_params is
 *        items: {"ec_items": [{"mm_hash": "<id>", "image_grid_thw": [t, h, w]}]}   (vLLM's registry proxy)
 *        keyed: {"<id>": {"metadata": {"image_grid_thw": [t, h, w]}, "item_indices": [0]}}  (ec_transfer_format)
 *   3. the proxy hands the LLM a part {"type": "image_embeds", "image_embeds": {"image_grid_thw": ...}, "uuid":
 *      "<id>"}, and the LLM (an ECExampleConnector consumer) loads the file instead of encoding.
 *
 * The request: exactly one image part in all messages (an "image_url" part whose image_url is {"url": ...} or
 * the URL itself), given as a data: URL or bare base64 — a remote URL is refused, vitd never fetches. Its "uuid"
 * names the file; without one, vitd takes the id vLLM's proxy would: SHA-256 hex of the URL string. Other fields
 * (model, max_tokens, temperature, ...) are accepted and ignored; a text or any other part, a second image,
 * "stream": true, or ec_transfer_params naming a ZMQ consumer (a transfer vitd does not speak) are 400s naming
 * the part.
 *
 * Thread safety: pure functions (the announcer: see epd_announcer_*). */
#ifndef VITD_EPD_H
#define VITD_EPD_H

#include <stdbool.h>

#include "arena.h"
#include "body.h"
#include "metrics.h"
#include "vitd.h"

typedef struct {
    body_span image;        /* the decoded image bytes (arena) */
    char uuid[129];         /* the part's uuid, or the derived one */
    bool derived;           /* uuid was not given */
    char model[256];        /* the request's "model" (echoed), or "" */
} epd_request;

/* Parses a chat completions body (len bytes of JSON) into *out; decoded image bytes live in a. Errors are
 * VITD_E_INVALID_ARG (400) naming the field, message and part. */
vitd_status epd_parse(const uint8_t *body, size_t len, arena *a, epd_request *out, vitd_err *err);

/* The 200 answer for the request whose image has grid g and `tokens` merged tokens: a chat.completion
 * ({"id": "chatcmpl-<req_id>", "object", "created", "model", "choices": [one empty assistant message, finish
 * "stop"], "usage": {prompt_tokens = tokens}, "kv_transfer_params": null, "ec_transfer_params": ...}) with
 * ec_transfer_params in the items or keyed form. model: the request's, else served_model. Malloc'd, or NULL
 * when out of memory. */
char *epd_render(const epd_request *q, const vitd_grid *g, long long tokens, const char *req_id,
                 const char *served_model, bool keyed, size_t *len);

/* ---- registration with the proxy (epd_announce.c) ---- */

typedef struct epd_announcer epd_announcer;

/* Checks that url is http://host[:port][/path] (https is not spoken); VITD_E_INVALID_ARG names the problem. */
vitd_status epd_check_url(const char *url, const char *what, vitd_err *err);
/* Starts the thread that registers self_url (this instance's base URL) with proxy_url every interval_s (5 s
 * until the first 200). Each attempt is bounded to 5 s; failures are logged (once per change) and retried.
 * metrics may be NULL. On success *out is owned by the caller (epd_announcer_stop). */
vitd_status epd_announcer_start(const char *proxy_url, const char *self_url, int interval_s, metrics_vitd *m,
                                epd_announcer **out, vitd_err *err);
/* Tells the thread to stop announcing and DELETE the registration (one attempt of at most 5 s, plus name
 * resolution), without waiting: the drain goes on meanwhile. Accepts NULL. */
void epd_announcer_leave(epd_announcer *a);
/* Leaves (if not yet), waits for the thread (its DELETE included) and frees. Accepts NULL. */
void epd_announcer_stop(epd_announcer *a);

#endif
