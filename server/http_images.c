/* http_images.c — the pipeline the image routes share (http_req.h): POST /v1/encode, /v1/vllm/image_embeds,
 * /v1/chat/completions and KServe v2 infer.
 *
 *   begin    drain and size checks, options from the query, a body parser for the route
 *   upload   chunks into body_feed(); the last call parses the body into image spans (body.c, or the route's
 *            own parser: epd_parse, kserve_parse), probes and plans every image, and hands it to the work
 *            (work_begin)
 *   work     http_work.c: the output cache, prep tasks, the batcher's job, vLLM cache files, completion
 *   answer   the resumed handler renders the route's answer (reply.c, vllm.c, epd.c, kserve.c)
 * libmicrohttpd threads never wait for the encoder or the disk. */
#include "http_req.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "content_id.h"
#include "handover.h"
#include "image.h"
#include "log.h"
#include "preprocess.h"
#include "reply.h"
#include "util.h"

#define RETRY_AFTER_S "1"

static double now_s(void) { return vitd_now(); }

/* ---- MHD side: begin ---- */

/* One query parameter. With the sizes, so that a NUL decoded from %00 ("dtype=float32%00junk", "uuid=a%00/..")
 * is refused instead of cutting the C string short. */
static enum MHD_Result apply_query(void *cls, enum MHD_ValueKind kind, const char *key, size_t key_size,
                                   const char *value, size_t value_size) {
    (void)kind;
    struct req *r = cls;
    vitd_err err = {0};
    int rc;
    if (strlen(key) != key_size || (value && strlen(value) != value_size))
        rc = vitd_fail(&err, VITD_E_INVALID_ARG, "query parameter \"%.40s\" holds a NUL byte (%%00)", key);
    else
        rc = body_apply_option(&r->br.opts, key, value ? value : "", &err);
    if (rc == 1 && r->route == RT_VLLM_EMBEDS) rc = vllm_apply_option(&r->vllm, key, value, &err);
    if (rc < 0) {
        r->body_failed = true;
        r->pending = (vitd_status)rc;
        memcpy(r->pending_msg, err.msg, sizeof r->pending_msg); /* the message names the key */
        return MHD_NO;
    }
    return MHD_YES;
}

/* Whether the Content-Type is application/json (parameters allowed). */
static bool is_json(const char *ctype) {
    if (!ctype) return false;
    while (*ctype == ' ') ctype++;
    size_t n = strlen("application/json");
    return !strncasecmp(ctype, "application/json", n) && (!ctype[n] || ctype[n] == ';' || ctype[n] == ' ');
}

enum MHD_Result images_begin(struct req *r) {
    http_server *h = r->srv;
    const vitd_config *c = h->o.cfg;
    if (atomic_load(&h->draining))
        return http_respond_error(r, 503, "cancelled", MHD_HTTP_HEADER_RETRY_AFTER, RETRY_AFTER_S,
                                  "the server is shutting down; retry on another replica");
    if (r->route == RT_CHAT && !h->o.ec)
        return http_respond_error(r, 404, "not_found", NULL, NULL, "POST /v1/chat/completions is vLLM's encoder-"
                                  "instance route: it needs ec_cache_dir (the shared storage of vLLM's EC transfer)");
    const char *cl = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (cl) {
        char *end = NULL;
        errno = 0;
        unsigned long long n = strtoull(cl, &end, 10);
        if (errno == 0 && end != cl && n > c->max_body_bytes)
            return http_respond_error(r, 413, "too_large", NULL, NULL,
                                      "body of %llu bytes exceeds max_body_bytes %zu", n, c->max_body_bytes);
    }
    encode_options opts = {.encoding = ENC_FLOAT, .deepstack = c->deepstack_default, .dtype = ST_F32,
                           .layout = LAYOUT_SEPARATE, .dtype_auto = !strcmp(c->output_dtype, "auto")};
    if (!strcmp(c->output_dtype, "bfloat16")) opts.dtype = ST_BF16;
    else if (!strcmp(c->output_dtype, "float16")) opts.dtype = ST_F16;
    if (r->route == RT_VLLM_EMBEDS || r->route == RT_CHAT) {
        /* vLLM takes the tower's dtype and the concat layout, DeepStack included */
        opts = (encode_options){.encoding = ENC_BASE64, .deepstack = true, .dtype = ST_BF16,
                                .layout = LAYOUT_CONCAT};
        vllm_options_init(&r->vllm, r->arena, c->max_images_per_request);
    }
    r->br.opts = opts;
    if (r->route == RT_ENCODE || r->route == RT_VLLM_EMBEDS) {
        MHD_get_connection_values_n(r->conn, MHD_GET_ARGUMENT_KIND, apply_query, r);
        if (r->body_failed) return http_respond_status(r, r->pending, r->pending_msg);
    }
    body_limits lim = {.max_body_bytes = c->max_body_bytes, .max_images = c->max_images_per_request};
    const char *ctype = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE);
    vitd_err err = {0};
    vitd_status s;
    if (r->route == RT_CHAT && !is_json(ctype))
        return http_respond_status(r, VITD_E_UNSUPPORTED, "chat completions take Content-Type: application/json");
    if (r->route == RT_CHAT || r->route == RT_V2_INFER) {
        s = body_begin_whole(&lim, &r->br.opts, r->arena, &r->body, &err);
    } else {
        s = body_begin(r->conn, ctype, &lim, &r->br.opts, r->arena, &r->body, &err);
        if (s == VITD_OK && r->route == RT_VLLM_EMBEDS) body_set_extra_options(r->body, vllm_apply_option, &r->vllm);
    }
    if (s != VITD_OK) return http_respond_status(r, s, err.msg);
    r->phase = PH_BODY;
    return MHD_YES;
}

/* ---- MHD side: the body is complete ---- */

/* Route-specific parsing after body_finish: the image spans (r->br), ids and options. */
static vitd_status parse_route(struct req *r, vitd_err *err) {
    http_server *h = r->srv;
    const vitd_config *c = h->o.cfg;
    const vitd_vision_config *vc = vitd_model_config(h->o.model);
    body_span whole = r->br.n_images == 1 ? r->br.images[0] : (body_span){NULL, 0};
    switch (r->route) {
    case RT_ENCODE: return VITD_OK;
    case RT_VLLM_EMBEDS:
        if (!r->br.opts.deepstack)
            return vitd_fail(err, VITD_E_INVALID_ARG, "deepstack=false: vLLM's Qwen3-VL splits the DeepStack "
                             "features off the concat tensor, so the hand-over always carries them");
        if (r->br.opts.dtype != ST_BF16 && r->br.opts.dtype != ST_F16 && r->br.opts.dtype != ST_F32)
            return vitd_fail(err, VITD_E_INVALID_ARG, "dtype: not a hand-over dtype");
        if (r->vllm.transfer == VLLM_EC_CACHE && !h->o.ec)
            return vitd_fail(err, VITD_E_INVALID_ARG, "transfer=ec_cache needs ec_cache_dir (vLLM's shared storage) "
                             "set on the server");
        if (r->vllm.transfer == VLLM_EC_CACHE && r->br.opts.dtype != ST_BF16)
            return vitd_fail(err, VITD_E_INVALID_ARG, "transfer=ec_cache writes bfloat16 files (what vLLM's "
                             "connector loads): dtype must be bfloat16");
        if (r->vllm.n_uuids && r->vllm.n_uuids != r->br.n_images)
            return vitd_fail(err, VITD_E_INVALID_ARG, "%d uuids for %d images: give one per image, or none",
                             r->vllm.n_uuids, r->br.n_images);
        for (int i = 0; i < r->vllm.n_uuids; i++)
            for (int j = 0; j < i; j++)
                if (!strcmp(r->vllm.uuids[i], r->vllm.uuids[j]))
                    return vitd_fail(err, VITD_E_INVALID_ARG, "uuid %d repeats uuid %d (\"%.64s\")", i, j,
                                     r->vllm.uuids[i]);
        return VITD_OK;
    case RT_CHAT: {
        vitd_status s = epd_parse(whole.data, whole.len, r->arena, &r->chat, err);
        if (s) return s;
        r->br.images = &r->chat.image;
        r->br.n_images = 1;
        return VITD_OK;
    }
    case RT_V2_INFER: {
        long long hl = -1;
        const char *hv = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Inference-Header-Content-Length");
        if (hv) {
            char *end = NULL;
            errno = 0;
            hl = strtoll(hv, &end, 10);
            if (errno || end == hv || *end || hl < 0)
                return vitd_fail(err, VITD_E_INVALID_ARG, "unable to parse Inference-Header-Content-Length, got: "
                                 "%.32s", hv);
        }
        kserve_model km = {.model = h->model_name, .n_deepstack = vc->n_deepstack,
                           .max_images = c->max_images_per_request, .default_dtype = ST_F32};
        r->v2 = arena_calloc(r->arena, 1, sizeof *r->v2);
        if (!r->v2) return vitd_fail(err, VITD_E_NOMEM, "out of request memory");
        vitd_status s = kserve_parse(whole.data, whole.len, hl, &km, r->arena, r->v2, err);
        if (s) return s;
        r->br.images = r->v2->images;
        r->br.n_images = r->v2->n_images;
        bool ds = false;
        for (int i = 0; i < r->v2->n_out; i++) ds |= r->v2->out[i] == KS_DEEPSTACK || r->v2->out[i] == KS_CONCAT;
        r->br.opts.deepstack = ds;
        return VITD_OK;
    }
    default: break;
    }
    return vitd_fail(err, VITD_E_INTERNAL, "route %d has no body parser", (int)r->route);
}

/* The hand-over ids of the vLLM routes: the client's, else buffers the prep tasks fill (content_id_image). */
static vitd_status set_uuids(struct req *r, vitd_err *err) {
    int n = r->n_images;
    if (r->route != RT_VLLM_EMBEDS && r->route != RT_CHAT) return VITD_OK;
    r->uuids = arena_calloc(r->arena, (size_t)n, sizeof *r->uuids);
    r->uuid_derived = arena_calloc(r->arena, (size_t)n, sizeof *r->uuid_derived);
    if (!r->uuids || !r->uuid_derived) return vitd_fail(err, VITD_E_NOMEM, "out of request memory for uuids");
    if (r->route == RT_CHAT) {
        r->uuids[0] = r->chat.uuid;       /* the part's, or SHA-256 of its URL (epd_parse) */
        r->uuid_derived[0] = r->chat.derived;
        return VITD_OK;
    }
    if (r->vllm.n_uuids == n) {
        for (int i = 0; i < n; i++) r->uuids[i] = r->vllm.uuids[i];
        return VITD_OK;
    }
    r->uuid_derive = arena_calloc(r->arena, (size_t)n, sizeof *r->uuid_derive); /* the prep task (or the cache
                                                                                   lookup) fills each one */
    if (!r->uuid_derive) return vitd_fail(err, VITD_E_NOMEM, "out of request memory for uuids");
    for (int i = 0; i < n; i++) {
        r->uuids[i] = arena_alloc(r->arena, CONTENT_ID_LEN + 1);
        if (!r->uuids[i]) return vitd_fail(err, VITD_E_NOMEM, "out of request memory for uuids");
        r->uuid_derived[i] = r->uuid_derive[i] = true;
    }
    return VITD_OK;
}

/* Parses the body, probes and plans every image, books queue capacity, allocates the request's buffers,
 * suspends and hands the work reference to the prep pool. Answers at once on any failure. */
static enum MHD_Result images_start_locked(struct req *r);

/* The body is complete. Work is handed on only while the server takes work (http_close_work): the check and the
 * hand-over happen under the work lock, so the pools and the batcher cannot be freed in between. */
static enum MHD_Result images_start(struct req *r) {
    http_server *h = r->srv;
    pthread_rwlock_rdlock(&h->work_lock);
    enum MHD_Result res;
    if (h->work_closed) {
        body_end(r->body);
        r->body = NULL;
        res = http_respond_error(r, 503, "cancelled", MHD_HTTP_HEADER_RETRY_AFTER, RETRY_AFTER_S,
                                 "the server is shutting down; retry on another replica");
    } else {
        res = images_start_locked(r);
    }
    pthread_rwlock_unlock(&h->work_lock);
    return res;
}

static enum MHD_Result images_start_locked(struct req *r) {
    http_server *h = r->srv;
    const vitd_config *c = h->o.cfg;
    vitd_err err = {0};
    r->t_body = now_s();
    vitd_status s = body_finish(r->body, &r->br, &err);
    body_end(r->body);
    r->body = NULL;
    if (s == VITD_OK) s = parse_route(r, &err);
    if (s != VITD_OK) return http_respond_status(r, s, err.msg);
    int n = r->br.n_images;
    if (n <= 0) return http_respond_status(r, VITD_E_INVALID_ARG, "the body holds no image");
    r->n_images = n;
    if ((s = set_uuids(r, &err))) return http_respond_status(r, s, err.msg);
    r->grids = arena_calloc(r->arena, (size_t)n, sizeof *r->grids);
    if (!r->grids) return http_respond_status(r, VITD_E_NOMEM, "out of memory for the request's image table");
    size_t total = 0;
    for (int i = 0; i < n; i++) {
        body_span sp = r->br.images[i];
        image_format fmt;
        uint32_t w = 0, hgt = 0;
        s = image_probe(sp.data, sp.len, &fmt, &w, &hgt, &err);
        if (s != VITD_OK) return http_respond_error(r, reply_http_status(s), vitd_status_name(s), NULL, NULL,
                                                    "image %d: %s", i, err.msg);
        if ((uint64_t)w * hgt > c->max_image_pixels)
            return http_respond_error(r, 413, "too_large", NULL, NULL,
                                      "image %d: %ux%u is %llu pixels, over max_image_pixels %zu", i, w, hgt,
                                      (unsigned long long)w * hgt, c->max_image_pixels);
        s = preprocess_plan(hgt, w, &h->o.preproc, &r->grids[i], &err);
        if (s != VITD_OK) return http_respond_error(r, reply_http_status(s), vitd_status_name(s), NULL, NULL,
                                                    "image %d: %s", i, err.msg);
        size_t p = (size_t)r->grids[i].t * r->grids[i].h * r->grids[i].w;
        if (p > h->o.max_image_patches)
            return http_respond_error(r, 413, "too_large", NULL, NULL, "image %d: %ux%u needs %zu patches, over the "
                                      "%zu an image may have (max_pixels / patch area)", i, w, hgt, p,
                                      h->o.max_image_patches);
        total += p;
    }
    /* cache files are written after encoding: past a backlog of one full batch, refuse rather than let requests
     * that wait for the disk pile up in memory */
    size_t io_backlog = atomic_load(&h->io_patches), io_max = c->batch_max_tokens > h->o.max_image_patches
                                                                  ? c->batch_max_tokens
                                                                  : h->o.max_image_patches;
    if (work_writes_cache(r) && io_backlog > io_max)
        return http_respond_status(r, VITD_E_BUSY, "vLLM cache files are written slower than images arrive "
                                   "(a backlog of patches waits for the disk); retry shortly");
    r->n_patches = total;
    return work_begin(r);
}

enum MHD_Result images_upload(struct req *r, const char *data, size_t *size) {
    http_server *h = r->srv;
    if (*size > 0) {
        size_t n = *size;
        r->bytes_in += n;
        *size = 0;
        if (r->bytes_in > h->o.cfg->max_body_bytes) {
            /* a chunked upload grew past the limit: libmicrohttpd cannot queue an answer mid-body, so the 413 is
             * written on the socket and the rest of the body dropped (http_early.c) */
            body_end(r->body);
            r->body = NULL;
            char msg[160];
            snprintf(msg, sizeof msg, "body over max_body_bytes %zu (a chunked upload; stopped reading at %llu "
                     "bytes)", h->o.cfg->max_body_bytes, (unsigned long long)r->bytes_in);
            size_t len = 0;
            char *body = r->v2_errors ? kserve_error(msg, &len) : reply_error_json("too_large", msg, r->id, &len);
            r->error_code = "too_large";
            early_write(r, 413, "application/json", body, len, NULL, NULL);
            return MHD_YES;
        }
        if (!r->body_failed) {
            vitd_err err = {0};
            vitd_status s = body_feed(r->body, data, n, &err);
            if (s != VITD_OK) {
                r->body_failed = true;
                r->pending = s;
                snprintf(r->pending_msg, sizeof r->pending_msg, "%s", err.msg);
            }
        }
        return MHD_YES;
    }
    if (r->body_failed) {
        body_end(r->body);
        r->body = NULL;
        return http_respond_status(r, r->pending, r->pending_msg);
    }
    return images_start(r);
}

/* ---- MHD side: the answer ---- */

/* Whether the client asked for safetensors; *ctype gets the type to answer with. */
static bool wants_safetensors(struct MHD_Connection *conn, const char **ctype) {
    const char *acc = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_ACCEPT);
    if (!acc) return false;
    if (strcasestr(acc, "application/vnd.safetensors")) {
        *ctype = "application/vnd.safetensors";
        return true;
    }
    if (strcasestr(acc, "application/octet-stream")) {
        *ctype = "application/octet-stream";
        return true;
    }
    return false;
}

/* What a vectored answer keeps alive until MHD is done with it: the segments and a request reference (the
 * outputs live in the request's arena). */
typedef struct {
    struct req *r;
    reply_segments seg;
    struct MHD_IoVec iov[];
} held_answer;

static void held_free(void *cls) {
    held_answer *a = cls;
    reply_segments_release(&a->seg);
    http_req_unref(a->r);
    free(a);
}

/* The safetensors answer sent from the outputs' own buffers when no conversion is needed; MHD_NO when it cannot
 * be made that way (*tried false: the caller assembles one). */
static enum MHD_Result send_segments(struct req *r, const reply_encode *re, const char *ctype, bool *tried) {
    reply_segments seg;
    *tried = false;
    if (reply_encode_safetensors_segments(re, &seg) != 0) return MHD_NO;
    held_answer *a = malloc(sizeof *a + (size_t)(seg.n_seg + 1) * sizeof(struct MHD_IoVec));
    if (!a) {
        reply_segments_release(&seg);
        return MHD_NO;
    }
    *tried = true;
    a->r = r;
    a->seg = seg;
    a->iov[0] = (struct MHD_IoVec){seg.header, seg.header_len};
    for (int i = 0; i < seg.n_seg; i++) a->iov[1 + i] = (struct MHD_IoVec){seg.seg[i].data, seg.seg[i].len};
    atomic_fetch_add(&r->refs, 1); /* the answer's reference: held_free drops it */
    metrics_vitd *m = r->srv->o.metrics;
    if (m) metrics_vitd_handover(m, METRICS_KIND_ENCODE, re->n_images, seg.total);
    return http_respond_iov(r, 200, ctype, a->iov, (unsigned)seg.n_seg + 1, seg.total, held_free, a);
}

/* /v1/encode: JSON or safetensors (reply.c); float16 is checked for overflow first. An unasked dtype (output_dtype
 * auto) is the engine's own for binary answers (safetensors, base64), float32 for JSON numbers. */
static enum MHD_Result encode_answer(struct req *r, reply_encode *re, int merge) {
    vitd_err err = {0};
    const char *ctype = NULL;
    bool st_answer = wants_safetensors(r->conn, &ctype);
    if (re->opts.dtype_auto)
        re->opts.dtype = (st_answer || re->opts.encoding == ENC_BASE64) && r->out_bf16 ? ST_BF16 : ST_F32;
    for (int i = 0; re->opts.dtype == ST_F16 && i < re->n_images; i++) {
        handover_src src;
        vitd_status s = handover_src_of(re, i, merge, &src, &err);
        if (!s) s = handover_check_f16(&src, &err);
        if (s) return http_respond_status(r, s, err.msg);
    }
    size_t len = 0;
    metrics_vitd *m = r->srv->o.metrics;
    if (st_answer) {
        bool tried = false;
        enum MHD_Result res = send_segments(r, re, ctype, &tried);
        if (tried) return res;
        uint8_t *buf = reply_encode_safetensors(re, &len);
        if (!buf) return http_respond_status(r, VITD_E_NOMEM, "out of memory rendering the safetensors answer");
        if (m) metrics_vitd_handover(m, METRICS_KIND_ENCODE, re->n_images, len);
        return http_respond(r, 200, ctype, (char *)buf, len, NULL, NULL);
    }
    char *buf = reply_encode_json(re, &len);
    if (!buf) return http_respond_status(r, VITD_E_NOMEM, "out of memory rendering the JSON answer");
    if (m) metrics_vitd_handover(m, METRICS_KIND_ENCODE, re->n_images, len);
    return http_respond(r, 200, "application/json", buf, len, NULL, NULL);
}

static enum MHD_Result render_answer(struct req *r);

/* The resumed handler (or work_begin, for a request answered from the cache): renders the answer, timed. */
enum MHD_Result images_answer(struct req *r) {
    r->t_answer = now_s();
    enum MHD_Result res = render_answer(r);
    r->t_answered = now_s();
    return res;
}

static enum MHD_Result render_answer(struct req *r) {
    http_server *h = r->srv;
    if (r->outcome != VITD_OK) return http_respond_status(r, r->outcome, r->outcome_err.msg);
    const vitd_vision_config *vc = vitd_model_config(h->o.model);
    metrics_vitd *m = h->o.metrics;
    int merge = vc->spatial_merge_size;
    reply_image *imgs = arena_calloc(r->arena, (size_t)r->n_images, sizeof *imgs);
    if (!imgs) return http_respond_status(r, VITD_E_NOMEM, "out of memory rendering the answer");
    for (int i = 0; i < r->n_images; i++) {
        imgs[i].grid = r->grids[i];
        imgs[i].embeddings = r->emb[i];
        imgs[i].deepstack = r->want_ds ? r->ds[i] : NULL; /* a cache entry holds DeepStack the client may not want */
        imgs[i].bf16 = r->out_bf16;
    }
    reply_encode re = {.id = r->id, .model = h->model_name, .out_hidden = vc->out_hidden_size,
                       .n_deepstack = r->want_ds ? vc->n_deepstack : 0, .deepstack_layers = vc->deepstack_indexes,
                       .n_images = r->n_images, .images = imgs, .opts = r->br.opts};
    if (!r->want_ds) re.opts.deepstack = false;
    vitd_err err = {0};
    size_t len = 0;
    switch (r->route) {
    case RT_ENCODE: return encode_answer(r, &re, merge);
    case RT_VLLM_EMBEDS: {
        char *text = vllm_render(&re, &r->vllm, r->uuids, r->uuid_derived, merge, &len, &err);
        if (!text) return http_respond_status(r, err.code, err.msg);
        if (m)
            metrics_vitd_handover(m, r->vllm.transfer == VLLM_INLINE ? METRICS_KIND_VLLM_INLINE : METRICS_KIND_VLLM_EC,
                                  r->n_images, len);
        return http_respond(r, 200, "application/json", text, len, NULL, NULL);
    }
    case RT_CHAT: {
        int64_t rows = 0;
        vitd_status s = handover_rows(&r->grids[0], merge, 0, &rows, &err);
        if (s) return http_respond_status(r, s, err.msg);
        char *text = epd_render(&r->chat, &r->grids[0], (long long)rows, r->id, h->model_name,
                                !strcmp(h->o.cfg->ec_transfer_format, "keyed"), &len);
        if (!text) return http_respond_status(r, VITD_E_NOMEM, "out of memory rendering the answer");
        if (m) metrics_vitd_handover(m, METRICS_KIND_EPD, 1, len);
        return http_respond(r, 200, "application/json", text, len, NULL, NULL);
    }
    case RT_V2_INFER: {
        size_t json_len = 0;
        uint8_t *body = kserve_render(r->v2, &re, merge, &len, &json_len, &err);
        if (!body) return http_respond_status(r, err.code, err.msg);
        if (m) metrics_vitd_handover(m, json_len ? METRICS_KIND_KSERVE_BINARY : METRICS_KIND_KSERVE_JSON,
                                     r->n_images, len);
        if (!json_len) return http_respond(r, 200, "application/json", (char *)body, len, NULL, NULL);
        char hl[32];
        snprintf(hl, sizeof hl, "%zu", json_len);
        return http_respond(r, 200, "application/octet-stream", (char *)body, len, "Inference-Header-Content-Length",
                            hl);
    }
    default: break;
    }
    return http_respond_status(r, VITD_E_INTERNAL, "no answer for this route");
}
