/* http.c — the libmicrohttpd daemon: routes, `struct req` and its lifetime, suspend/resume, completion cleanup.
 *
 * A request (`struct req`) is created at the first access-handler call and stored in MHD's req_cls. It owns an
 * arena holding everything the request needs (body, image spans, pixel_values, outputs). It is reference
 * counted: one reference for the connection (dropped by the completion callback, whatever the outcome) and, for
 * an encode request that went asynchronous, one for the work (prep pool -> scheduler), dropped by whoever records
 * the outcome and resumes the connection. Whoever drops the last reference frees the arena.
 *
 * Encode phases (r->phase, touched only by the connection's MHD thread, except PH_ASYNC -> PH_DONE which the
 * work side sets before MHD_resume_connection, whose locking orders it before the next handler call):
 *   PH_BODY   upload streaming into body_feed(); an error is remembered and answered when the upload ends
 *   PH_ASYNC  suspended: prep pool, then scheduler
 *   PH_DONE   resumed: render the answer
 * Other routes answer at the first call.
 */
#include "http.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <microhttpd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>

#include <cJSON.h>

#include "arena.h"
#include "body.h"
#include "image.h"
#include "log.h"
#include "metrics.h"
#include "preprocess.h"
#include "reply.h"
#include "util.h"

#define ROUTE_ENCODE "/v1/encode"
#define RETRY_AFTER_S "1"

typedef enum { RT_ENCODE, RT_HEALTH, RT_READY, RT_METRICS, RT_MODEL, RT_NOT_FOUND } route_id;

static const struct {
    const char *path;
    const char *method; /* the one method it serves (GET routes also take HEAD) */
    const char *allow;
    bool open;          /* reachable without the API key */
} g_routes[] = {
    [RT_ENCODE] = {ROUTE_ENCODE, "POST", "POST", false},
    [RT_HEALTH] = {"/health", "GET", "GET, HEAD", true},
    [RT_READY] = {"/ready", "GET", "GET, HEAD", true},
    [RT_METRICS] = {"/metrics", "GET", "GET, HEAD", false},
    [RT_MODEL] = {"/v1/model", "GET", "GET, HEAD", false},
    [RT_NOT_FOUND] = {"(unknown)", NULL, NULL, true},
};

typedef enum { PH_NEW, PH_BODY, PH_ASYNC, PH_DONE, PH_ANSWERED } req_phase;

struct http_server {
    http_opts o;
    struct MHD_Daemon *daemon;
    int port;
    atomic_bool ready;
    atomic_bool draining;
    atomic_ullong next_id;
    unsigned long long id_seed;
    char model_name[256];
    pthread_mutex_t mu;       /* guards live */
    pthread_cond_t idle_cv;   /* live reached 0 */
    int live;                 /* requests created and not freed */
};

struct req {
    atomic_int refs;
    http_server *srv;
    arena *arena;
    struct MHD_Connection *conn;
    route_id route;
    const char *method;       /* arena copy, for the access line */
    req_phase phase;
    char id[72];
    char remote[64];
    double t_start, t_body, t_prep_done, t_done;
    uint64_t bytes_in, bytes_out;
    int status;               /* HTTP status queued (0 = none yet) */
    const char *error_code;   /* error.code of a failed answer, or NULL */
    /* ---- encode ---- */
    body_state *body;
    bool body_failed;         /* answer `pending` when the upload ends */
    vitd_status pending;
    char pending_msg[sizeof(((vitd_err *)0)->msg)];
    body_result br;
    int n_images;
    vitd_grid *grids;         /* [n_images], arena */
    float **pv, **emb, **ds;  /* [n_images] each, arena; ds NULL when deepstack is not returned */
    size_t n_patches;
    int fd;                   /* the connection's socket, for the hang-up check while suspended */
    atomic_int prep_left;     /* prep tasks not finished */
    atomic_bool prep_failed;
    pthread_mutex_t prep_mu;  /* guards prep_err, prep_err_index */
    int prep_err_index;
    vitd_err prep_err;
    sched_job job;
    /* outcome, written by the work side before MHD_resume_connection */
    vitd_status outcome;
    vitd_err outcome_err;
};

/* ---- small helpers ---- */

static double now_s(void) { return vitd_now(); }

/* Request id: the client's X-Request-Id when sane (1..64 of [A-Za-z0-9._:-]), else 16 hex digits. */
static void req_set_id(http_server *h, struct req *r) {
    const char *cid = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "X-Request-Id");
    if (cid) {
        size_t n = strlen(cid);
        bool ok = n >= 1 && n <= 64;
        for (size_t i = 0; ok && i < n; i++) {
            unsigned char c = (unsigned char)cid[i];
            ok = isalnum(c) || c == '.' || c == '_' || c == ':' || c == '-';
        }
        if (ok) {
            memcpy(r->id, cid, n + 1);
            return;
        }
    }
    /* splitmix64 of a per-process seed plus a counter: unique in the process, unpredictable across restarts */
    unsigned long long z = h->id_seed + atomic_fetch_add(&h->next_id, 1) * 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    z ^= z >> 31;
    snprintf(r->id, sizeof r->id, "%016llx", z);
}

/* Constant-time comparison of the Authorization header with "Bearer <key>": the time depends on the lengths
 * only, never on where the first difference is. */
static bool auth_ok(const http_server *h, struct MHD_Connection *conn) {
    const char *key = h->o.cfg->api_key;
    if (!key[0]) return true;
    const char *got = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (!got || strncasecmp(got, "Bearer ", 7) != 0) return false;
    got += 7;
    while (*got == ' ') got++;
    size_t gn = strlen(got), kn = strlen(key);
    unsigned char diff = (unsigned char)(gn != kn);
    for (size_t i = 0; i < kn; i++) diff |= (unsigned char)(key[i] ^ (i < gn ? got[i] : 0));
    return diff == 0;
}

static route_id route_of(const char *url) {
    for (int i = 0; i < RT_NOT_FOUND; i++)
        if (strcmp(url, g_routes[i].path) == 0) return (route_id)i;
    return RT_NOT_FOUND;
}

/* ---- request lifetime ---- */

static struct req *req_create(http_server *h, struct MHD_Connection *conn, const char *url, const char *method) {
    struct req *r = xcalloc(1, sizeof *r);
    r->arena = arena_create(0);
    if (!r->arena) {
        free(r);
        return NULL;
    }
    atomic_init(&r->refs, 1);
    atomic_init(&r->prep_left, 0);
    atomic_init(&r->prep_failed, false);
    pthread_mutex_init(&r->prep_mu, NULL);
    r->srv = h;
    r->conn = conn;
    r->t_start = now_s();
    r->route = route_of(url);
    r->method = arena_strndup(r->arena, method, 32);
    r->fd = -1;
    r->prep_err_index = -1;
    req_set_id(h, r);
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    if (ci && ci->client_addr) {
        const struct sockaddr *sa = ci->client_addr;
        if (sa->sa_family == AF_INET)
            inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, r->remote, sizeof r->remote);
        else if (sa->sa_family == AF_INET6)
            inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, r->remote, sizeof r->remote);
    }
    pthread_mutex_lock(&h->mu);
    h->live++;
    pthread_mutex_unlock(&h->mu);
    if (h->o.metrics) metrics_add(h->o.metrics->inflight_s, 1);
    return r;
}

/* Drops one reference; the last one frees the arena and the request. */
static void req_unref(struct req *r) {
    if (atomic_fetch_sub(&r->refs, 1) != 1) return;
    http_server *h = r->srv;
    VITD_ASSERT(r->body == NULL);
    arena_free(r->arena);
    pthread_mutex_destroy(&r->prep_mu);
    free(r);
    pthread_mutex_lock(&h->mu);
    if (--h->live == 0) pthread_cond_broadcast(&h->idle_cv);
    pthread_mutex_unlock(&h->mu);
}

/* ---- responses ---- */

/* Queues buf (malloc'd, len bytes; ownership passes to MHD) with status and content type, plus X-Request-Id and,
 * while draining, Connection: close. extra_name/extra_value: one more header or NULL. */
static enum MHD_Result respond(struct req *r, int status, const char *ctype, char *buf, size_t len,
                               const char *extra_name, const char *extra_value) {
    struct MHD_Response *resp = MHD_create_response_from_buffer_with_free_callback(len, buf, free);
    if (!resp) {
        free(buf);
        return MHD_NO;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
    MHD_add_response_header(resp, "X-Request-Id", r->id);
    if (extra_name) MHD_add_response_header(resp, extra_name, extra_value);
    if (atomic_load(&r->srv->draining)) MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
    r->status = status;
    r->bytes_out = len;
    r->phase = PH_ANSWERED;
    enum MHD_Result ok = MHD_queue_response(r->conn, (unsigned)status, resp);
    MHD_destroy_response(resp);
    return ok;
}

/* Error answer: JSON body {"error": {code, message, request_id}}. */
static enum MHD_Result respond_error(struct req *r, int status, const char *code, const char *extra_name,
                                     const char *extra_value, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));
static enum MHD_Result respond_error(struct req *r, int status, const char *code, const char *extra_name,
                                     const char *extra_value, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    size_t len = 0;
    char *body = reply_error_json(code, msg, r->id, &len);
    if (!body) return MHD_NO;
    r->error_code = code;
    return respond(r, status, "application/json", body, len, extra_name, extra_value);
}

/* Error answer for a vitd_status: HTTP code from reply's table, Retry-After on 503. */
static enum MHD_Result respond_status(struct req *r, vitd_status s, const char *msg) {
    int code = reply_http_status(s);
    bool retry = code == 503;
    return respond_error(r, code, vitd_status_name(s), retry ? MHD_HTTP_HEADER_RETRY_AFTER : NULL,
                         retry ? RETRY_AFTER_S : NULL, "%s", msg);
}

static enum MHD_Result respond_text(struct req *r, int status, const char *ctype, const char *text) {
    size_t n = strlen(text);
    char *buf = xmalloc(n + 1);
    memcpy(buf, text, n + 1);
    return respond(r, status, ctype, buf, n, NULL, NULL);
}

/* ---- GET routes ---- */

static enum MHD_Result handle_metrics(struct req *r) {
    http_server *h = r->srv;
    metrics_vitd *m = h->o.metrics;
    if (!m) return respond_text(r, 200, "text/plain; version=0.0.4", "");
    int jobs = 0;
    size_t queued = 0;
    if (h->o.sched) sched_depth(h->o.sched, &jobs, &queued, NULL);
    metrics_set(m->queue_requests_s, jobs);
    metrics_set(m->queue_tokens_s, (double)queued);
    metrics_set(m->ready_s, atomic_load(&h->ready) && !atomic_load(&h->draining) ? 1 : 0);
    size_t len = 0;
    char *text = metrics_render(m->reg, &len);
    if (!text) return respond_status(r, VITD_E_NOMEM, "metrics: out of memory");
    return respond(r, 200, "text/plain; version=0.0.4; charset=utf-8", text, len, NULL, NULL);
}

static cJSON *int_array(const int *v, int n) {
    cJSON *a = cJSON_CreateArray();
    for (int i = 0; i < n; i++) cJSON_AddItemToArray(a, cJSON_CreateNumber(v[i]));
    return a;
}

static enum MHD_Result handle_model(struct req *r) {
    http_server *h = r->srv;
    const vitd_config *c = h->o.cfg;
    const vitd_vision_config *vc = vitd_model_config(h->o.model);
    const vitd_preproc_config *pp = &h->o.preproc;
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "model", h->model_name);
    cJSON_AddStringToObject(root, "path", vitd_model_path(h->o.model));
    cJSON_AddStringToObject(root, "backend", h->o.backend ? h->o.backend : "");
    cJSON_AddStringToObject(root, "attn_dtype", h->o.attn_dtype ? h->o.attn_dtype : "");
    /* attention: the setting, the path(s) in use, the last batch's path and the batches per path */
    cJSON *at = cJSON_AddObjectToObject(root, "attention");
    cJSON_AddStringToObject(at, "setting", c->attn_dtype ? c->attn_dtype : "");
    if (h->o.encoder) {
        vitd_attn_info ai;
        vitd_encoder_attn_info(h->o.encoder, &ai);
        cJSON_AddStringToObject(at, "mode", ai.mode);
        const char *fp8_bf16[] = {"bf16", "fp8"}, *one[] = {ai.mode};
        const int both = !strcmp(ai.mode, "auto");
        cJSON_AddItemToObject(at, "paths", cJSON_CreateStringArray(both ? fp8_bf16 : one, both ? 2 : 1));
        cJSON_AddStringToObject(at, "last", ai.last);
        cJSON *bt = cJSON_AddObjectToObject(at, "batches");
        cJSON_AddNumberToObject(bt, "fp32", (double)ai.batches_fp32);
        cJSON_AddNumberToObject(bt, "bf16", (double)ai.batches_bf16);
        cJSON_AddNumberToObject(bt, "fp8", (double)ai.batches_fp8);
        if (ai.fallback[0]) cJSON_AddStringToObject(at, "fallback", ai.fallback);
        else cJSON_AddNullToObject(at, "fallback");
    }
    cJSON_AddStringToObject(root, "version", h->o.version ? h->o.version : "");
    cJSON *v = cJSON_AddObjectToObject(root, "vision_config");
    cJSON_AddNumberToObject(v, "depth", vc->depth);
    cJSON_AddNumberToObject(v, "hidden_size", vc->hidden_size);
    cJSON_AddNumberToObject(v, "intermediate_size", vc->intermediate_size);
    cJSON_AddNumberToObject(v, "num_heads", vc->num_heads);
    cJSON_AddNumberToObject(v, "out_hidden_size", vc->out_hidden_size);
    cJSON_AddNumberToObject(v, "patch_size", vc->patch_size);
    cJSON_AddNumberToObject(v, "temporal_patch_size", vc->temporal_patch_size);
    cJSON_AddNumberToObject(v, "spatial_merge_size", vc->spatial_merge_size);
    cJSON_AddNumberToObject(v, "num_position_embeddings", vc->num_position_embeddings);
    cJSON_AddItemToObject(v, "deepstack_visual_indexes", int_array(vc->deepstack_indexes, vc->n_deepstack));
    cJSON *p = cJSON_AddObjectToObject(root, "preprocessor");
    cJSON_AddNumberToObject(p, "min_pixels", (double)pp->min_pixels);
    cJSON_AddNumberToObject(p, "max_pixels", (double)pp->max_pixels);
    cJSON_AddNumberToObject(p, "patch_size", pp->patch_size);
    cJSON_AddNumberToObject(p, "temporal_patch_size", pp->temporal_patch_size);
    cJSON_AddNumberToObject(p, "merge_size", pp->merge_size);
    cJSON *lim = cJSON_AddObjectToObject(root, "limits");
    cJSON_AddNumberToObject(lim, "max_body_bytes", (double)c->max_body_bytes);
    cJSON_AddNumberToObject(lim, "max_images_per_request", c->max_images_per_request);
    cJSON_AddNumberToObject(lim, "max_image_pixels", (double)c->max_image_pixels);
    cJSON_AddNumberToObject(lim, "max_image_patches", (double)h->o.max_image_patches);
    cJSON_AddNumberToObject(lim, "batch_max_tokens", (double)c->batch_max_tokens);
    cJSON_AddNumberToObject(lim, "batch_max_images", c->batch_max_images);
    cJSON_AddNumberToObject(lim, "queue_max_tokens", (double)c->queue_max_tokens);
    cJSON_AddNumberToObject(lim, "request_timeout_ms", c->request_timeout_ms);
    cJSON *out = cJSON_AddObjectToObject(root, "outputs");
    cJSON_AddNumberToObject(out, "embedding_dim", vc->out_hidden_size);
    cJSON_AddNumberToObject(out, "deepstack_layers", vc->n_deepstack);
    cJSON_AddStringToObject(out, "default_dtype", c->output_dtype);
    cJSON_AddBoolToObject(out, "deepstack_default", c->deepstack_default);
    const char *dtypes[] = {"float32", "bfloat16", "float16"};
    cJSON_AddItemToObject(out, "dtypes", cJSON_CreateStringArray(dtypes, 3));
    char *text = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    if (!text) return respond_status(r, VITD_E_NOMEM, "model: out of memory");
    size_t n = strlen(text);
    char *buf = malloc(n + 2);
    if (!buf) {
        cJSON_free(text);
        return respond_status(r, VITD_E_NOMEM, "model: out of memory");
    }
    memcpy(buf, text, n);
    buf[n] = '\n';
    buf[n + 1] = 0;
    cJSON_free(text);
    return respond(r, 200, "application/json", buf, n + 1, NULL, NULL);
}

/* ---- encode: work side (prep pool and scheduler threads) ---- */

/* Records the outcome and hands the connection back to MHD; drops the work reference. */
static void req_finish(struct req *r, vitd_status s, const vitd_err *err) {
    r->outcome = s;
    if (s != VITD_OK && err) r->outcome_err = *err;
    else if (s != VITD_OK) vitd_fail(&r->outcome_err, s, "%s", vitd_status_name(s));
    r->t_done = now_s();
    r->phase = PH_DONE;
    MHD_resume_connection(r->conn);
    req_unref(r);
}

static struct req *req_of_job(sched_job *j) { return (struct req *)((char *)j - offsetof(struct req, job)); }

static void job_done(sched_job *j, vitd_status s, const vitd_err *err) { req_finish(req_of_job(j), s, err); }

/* The client hung up (MHD does not watch suspended connections): peer closed or reset the socket. */
static bool job_gone(sched_job *j) {
    struct req *r = req_of_job(j);
    if (r->fd < 0) return false;
    struct pollfd p = {.fd = r->fd, .events = POLLIN | POLLRDHUP};
    if (poll(&p, 1, 0) <= 0) return false;
    return (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) != 0;
}

/* One prep task: decode and preprocess image i into its arena buffer. Once an image has failed, the tasks not yet
 * started skip their work. The last task to finish submits the job, or answers with the failure of the lowest
 * image index that failed. */
static void prep_task(void *arg, int i) {
    struct req *r = arg;
    http_server *h = r->srv;
    if (!atomic_load(&r->prep_failed)) {
        vitd_err err = {0};
        body_span sp = r->br.images[i];
        log_request_begin(r->id);
        vitd_status s = prep_image(sp.data, sp.len, h->o.cfg->max_image_pixels, &h->o.preproc, &r->grids[i],
                                   r->pv[i], &err);
        log_request_end();
        if (s != VITD_OK) {
            pthread_mutex_lock(&r->prep_mu);
            if (r->prep_err_index < 0 || i < r->prep_err_index) {
                r->prep_err_index = i;
                vitd_fail(&r->prep_err, s, "image %d: %s", i, err.msg);
            }
            pthread_mutex_unlock(&r->prep_mu);
            atomic_store(&r->prep_failed, true);
        }
    }
    if (atomic_fetch_sub(&r->prep_left, 1) != 1) return;
    /* last task: every write above happened before this point (acq_rel on prep_left) */
    r->t_prep_done = now_s();
    if (atomic_load(&r->prep_failed)) {
        sched_unreserve(h->o.sched, r->n_patches);
        req_finish(r, r->prep_err.code, &r->prep_err);
        return;
    }
    vitd_err err = {0};
    vitd_status s = sched_submit(h->o.sched, &r->job, &err);
    if (s != VITD_OK) {
        if (s != VITD_E_CANCELLED) sched_unreserve(h->o.sched, r->n_patches); /* cancelled returns it itself */
        req_finish(r, s, &err);
    }
}

/* ---- encode: MHD side ---- */

static enum MHD_Result apply_query(void *cls, enum MHD_ValueKind kind, const char *key, const char *value) {
    (void)kind;
    struct req *r = cls;
    vitd_err err = {0};
    if (body_apply_option(&r->br.opts, key, value ? value : "", &err) < 0) {
        r->body_failed = true;
        r->pending = VITD_E_INVALID_ARG;
        memcpy(r->pending_msg, err.msg, sizeof r->pending_msg); /* body names the key */
        return MHD_NO;
    }
    return MHD_YES;
}

/* First call of POST /v1/encode: limits known from headers, options from the query, body parser. */
static enum MHD_Result encode_begin(struct req *r) {
    http_server *h = r->srv;
    const vitd_config *c = h->o.cfg;
    if (atomic_load(&h->draining))
        return respond_error(r, 503, "cancelled", MHD_HTTP_HEADER_RETRY_AFTER, RETRY_AFTER_S,
                             "the server is shutting down; retry on another replica");
    const char *cl = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (cl) {
        char *end = NULL;
        errno = 0;
        unsigned long long n = strtoull(cl, &end, 10);
        if (errno == 0 && end != cl && n > c->max_body_bytes)
            return respond_error(r, 413, "too_large", NULL, NULL, "body of %llu bytes exceeds max_body_bytes %zu",
                                 n, c->max_body_bytes);
    }
    encode_options opts = {.encoding = ENC_FLOAT, .deepstack = c->deepstack_default, .dtype = ST_F32,
                           .layout = LAYOUT_SEPARATE};
    if (!strcmp(c->output_dtype, "bfloat16")) opts.dtype = ST_BF16;
    else if (!strcmp(c->output_dtype, "float16")) opts.dtype = ST_F16;
    r->br.opts = opts;
    MHD_get_connection_values(r->conn, MHD_GET_ARGUMENT_KIND, apply_query, r);
    if (r->body_failed) return respond_status(r, r->pending, r->pending_msg);
    body_limits lim = {.max_body_bytes = c->max_body_bytes, .max_images = c->max_images_per_request};
    const char *ctype = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE);
    vitd_err err = {0};
    vitd_status s = body_begin(r->conn, ctype, &lim, &r->br.opts, r->arena, &r->body, &err);
    if (s != VITD_OK) return respond_status(r, s, err.msg);
    r->phase = PH_BODY;
    return MHD_YES;
}

/* The upload is complete: parse, probe and plan every image, book queue capacity, allocate the request's
 * buffers, suspend and hand the work reference to the prep pool. Answers at once on any failure. */
static enum MHD_Result encode_start(struct req *r) {
    http_server *h = r->srv;
    const vitd_config *c = h->o.cfg;
    const vitd_vision_config *vc = vitd_model_config(h->o.model);
    vitd_err err = {0};
    r->t_body = now_s();
    vitd_status s = body_finish(r->body, &r->br, &err);
    body_end(r->body);
    r->body = NULL;
    if (s != VITD_OK) return respond_status(r, s, err.msg);
    int n = r->br.n_images;
    if (n <= 0) return respond_status(r, VITD_E_INVALID_ARG, "the body holds no image");
    r->n_images = n;
    r->grids = arena_calloc(r->arena, (size_t)n, sizeof *r->grids);
    r->pv = arena_calloc(r->arena, (size_t)n, sizeof *r->pv);
    r->emb = arena_calloc(r->arena, (size_t)n, sizeof *r->emb);
    bool want_ds = r->br.opts.deepstack && vc->n_deepstack > 0;
    r->ds = want_ds ? arena_calloc(r->arena, (size_t)n, sizeof *r->ds) : NULL;
    if (!r->grids || !r->pv || !r->emb || (want_ds && !r->ds))
        return respond_status(r, VITD_E_NOMEM, "out of memory for the request's image table");
    size_t total = 0;
    for (int i = 0; i < n; i++) {
        body_span sp = r->br.images[i];
        image_format fmt;
        uint32_t w = 0, hgt = 0;
        s = image_probe(sp.data, sp.len, &fmt, &w, &hgt, &err);
        if (s != VITD_OK) {
            char msg[300];
            snprintf(msg, sizeof msg, "image %d: %s", i, err.msg);
            return respond_status(r, s, msg);
        }
        if ((uint64_t)w * hgt > c->max_image_pixels)
            return respond_error(r, 413, "too_large", NULL, NULL,
                                 "image %d: %ux%u is %llu pixels, over "
                                 "max_image_pixels %zu",
                                 i, w, hgt, (unsigned long long)w * hgt, c->max_image_pixels);
        s = preprocess_plan(hgt, w, &h->o.preproc, &r->grids[i], &err);
        if (s != VITD_OK) {
            char msg[300];
            snprintf(msg, sizeof msg, "image %d: %s", i, err.msg);
            return respond_status(r, s, msg);
        }
        size_t p = (size_t)r->grids[i].t * r->grids[i].h * r->grids[i].w;
        if (p > h->o.max_image_patches)
            return respond_error(r, 413, "too_large", NULL, NULL, "image %d: %ux%u needs %zu patches, over the "
                                 "%zu an image may have (max_pixels / patch area)", i, w, hgt, p, h->o.max_image_patches);
        total += p;
    }
    s = sched_reserve(h->o.sched, total, &err);
    if (s != VITD_OK) return respond_status(r, s, err.msg);
    r->n_patches = total;
    size_t row = preprocess_row_width(&h->o.preproc), D = (size_t)vc->out_hidden_size;
    size_t merge = (size_t)vc->spatial_merge_size * (size_t)vc->spatial_merge_size;
    for (int i = 0; i < n; i++) {
        size_t p = (size_t)r->grids[i].t * r->grids[i].h * r->grids[i].w, tokens = p / merge;
        r->pv[i] = arena_alloc(r->arena, p * row * sizeof(float));
        r->emb[i] = arena_alloc(r->arena, tokens * D * sizeof(float));
        if (want_ds) r->ds[i] = arena_alloc(r->arena, tokens * D * (size_t)vc->n_deepstack * sizeof(float));
        if (!r->pv[i] || !r->emb[i] || (want_ds && !r->ds[i])) {
            sched_unreserve(h->o.sched, total);
            return respond_status(r, VITD_E_NOMEM, "out of memory for the request's pixel and output buffers");
        }
    }
    sched_job *j = &r->job;
    j->n_images = n;
    j->grids = r->grids;
    j->pixel_values = r->pv;
    j->embeddings = r->emb;
    j->deepstack = want_ds ? r->ds : NULL;
    j->n_patches = total;
    j->deadline = r->t_start + c->request_timeout_ms * 1e-3;
    j->gone = job_gone;
    j->done = job_done;
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    r->fd = ci ? ci->connect_fd : -1;
    atomic_store(&r->prep_left, n);
    atomic_fetch_add(&r->refs, 1); /* the work reference */
    r->phase = PH_ASYNC;
    MHD_suspend_connection(r->conn);
    prep_pool_submit(h->o.prep, prep_task, r, n);
    return MHD_YES;
}

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

/* The resumed handler: renders the outcome into one heap buffer handed to MHD. */
static enum MHD_Result encode_answer(struct req *r) {
    http_server *h = r->srv;
    if (r->outcome != VITD_OK) return respond_status(r, r->outcome, r->outcome_err.msg);
    const vitd_vision_config *vc = vitd_model_config(h->o.model);
    reply_image *imgs = arena_calloc(r->arena, (size_t)r->n_images, sizeof *imgs);
    if (!imgs) return respond_status(r, VITD_E_NOMEM, "out of memory rendering the answer");
    for (int i = 0; i < r->n_images; i++) {
        imgs[i].grid = r->grids[i];
        imgs[i].embeddings = r->emb[i];
        imgs[i].deepstack = r->ds ? r->ds[i] : NULL;
    }
    reply_encode re = {.id = r->id, .model = h->model_name, .out_hidden = vc->out_hidden_size,
                       .n_deepstack = r->ds ? vc->n_deepstack : 0, .deepstack_layers = vc->deepstack_indexes,
                       .n_images = r->n_images, .images = imgs, .opts = r->br.opts};
    if (!r->ds) re.opts.deepstack = false;
    const char *ctype = NULL;
    size_t len = 0;
    if (wants_safetensors(r->conn, &ctype)) {
        uint8_t *buf = reply_encode_safetensors(&re, &len);
        if (!buf) return respond_status(r, VITD_E_NOMEM, "out of memory rendering the safetensors answer");
        return respond(r, 200, ctype, (char *)buf, len, NULL, NULL);
    }
    char *buf = reply_encode_json(&re, &len);
    if (!buf) return respond_status(r, VITD_E_NOMEM, "out of memory rendering the JSON answer");
    return respond(r, 200, "application/json", buf, len, NULL, NULL);
}

/* ---- MHD callbacks ---- */

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
                                  const char *version, const char *upload_data, size_t *upload_data_size,
                                  void **req_cls) {
    (void)version;
    http_server *h = cls;
    struct req *r = *req_cls;
    if (!r) {
        r = req_create(h, conn, url, method);
        if (!r) return MHD_NO;
        *req_cls = r;
        if (r->route == RT_NOT_FOUND)
            return respond_error(r, 404, "not_found", NULL, NULL, "no route %s %s", method, url);
        bool get_like = !strcmp(g_routes[r->route].method, "GET") && !strcmp(method, "HEAD");
        if (strcmp(method, g_routes[r->route].method) != 0 && !get_like)
            return respond_error(r, 405, "method_not_allowed", MHD_HTTP_HEADER_ALLOW, g_routes[r->route].allow,
                                 "%s does not allow %s (allowed: %s)", g_routes[r->route].path, method,
                                 g_routes[r->route].allow);
        if (!g_routes[r->route].open && !auth_ok(h, conn))
            return respond_error(r, 401, "unauthorized", MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer realm=\"vitd\"",
                                 "missing or wrong API key (Authorization: Bearer <key>)");
        switch (r->route) {
        case RT_HEALTH: return respond_text(r, 200, "application/json", "{\"status\":\"ok\"}\n");
        case RT_READY:
            if (atomic_load(&h->draining))
                return respond_text(r, 503, "application/json", "{\"status\":\"draining\"}\n");
            if (!atomic_load(&h->ready))
                return respond_text(r, 503, "application/json", "{\"status\":\"starting\"}\n");
            return respond_text(r, 200, "application/json", "{\"status\":\"ready\"}\n");
        case RT_METRICS: return handle_metrics(r);
        case RT_MODEL: return handle_model(r);
        case RT_ENCODE: return encode_begin(r);
        case RT_NOT_FOUND: break;
        }
        return MHD_NO;
    }
    switch (r->phase) {
    case PH_BODY:
        if (*upload_data_size > 0) {
            size_t n = *upload_data_size;
            r->bytes_in += n;
            *upload_data_size = 0;
            if (r->bytes_in > h->o.cfg->max_body_bytes) {
                /* a chunked upload grew past the limit: MHD cannot answer mid-upload, so close */
                r->status = 413;
                r->error_code = "too_large";
                log_req(VITD_LOG_WARN, r->id,
                        "body over max_body_bytes %zu while streaming; closing the connection",
                        h->o.cfg->max_body_bytes);
                return MHD_NO;
            }
            if (!r->body_failed) {
                vitd_err err = {0};
                vitd_status s = body_feed(r->body, upload_data, n, &err);
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
            return respond_status(r, r->pending, r->pending_msg);
        }
        return encode_start(r);
    case PH_DONE: return encode_answer(r);
    case PH_ASYNC:   /* not called while suspended */
    case PH_ANSWERED:
    case PH_NEW: return MHD_YES;
    }
    return MHD_YES;
}

/* MHD is done with the request (answer sent, error, client gone, timeout): access line, metrics, and the
 * connection's reference. */
static void on_completed(void *cls, struct MHD_Connection *conn, void **req_cls,
                         enum MHD_RequestTerminationCode toe) {
    (void)conn;
    http_server *h = cls;
    struct req *r = *req_cls;
    if (!r) return;
    *req_cls = NULL;
    if (r->body) {
        body_end(r->body);
        r->body = NULL;
    }
    double t_end = now_s();
    int status = r->status;
    const char *error = r->error_code;
    if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK && status == 0) {
        /* nothing was sent: record why, with the conventional codes of proxies */
        status = toe == MHD_REQUEST_TERMINATED_TIMEOUT_REACHED ? 408 : 499;
        error = toe == MHD_REQUEST_TERMINATED_TIMEOUT_REACHED ? "connection_timeout" : "client_closed";
    }
    const char *route = r->route == RT_NOT_FOUND ? "other" : g_routes[r->route].path;
    double queue_s = -1, prep_s = -1, encode_s = -1, total_s = t_end - r->t_start;
    uint64_t tokens = 0;
    if (r->route == RT_ENCODE && r->n_images > 0) {
        const vitd_vision_config *vc = vitd_model_config(h->o.model);
        tokens = r->n_patches / ((size_t)vc->spatial_merge_size * vc->spatial_merge_size);
        if (r->t_prep_done > 0) prep_s = r->t_prep_done - r->t_body;
        if (r->job.t_submitted > 0) {
            double start = r->job.t_first_batch > 0 ? r->job.t_first_batch : r->t_done;
            queue_s = start - r->job.t_submitted;
            if (r->job.n_batches > 0) encode_s = r->job.encode_s;
        }
    }
    if (h->o.metrics) {
        metrics_vitd_request(h->o.metrics, route, status, queue_s, prep_s, encode_s, total_s);
        if (status >= 400 && error) metrics_vitd_error(h->o.metrics, error);
        metrics_add(h->o.metrics->inflight_s, -1);
    }
    log_access_rec a = {.req_id = r->id, .method = r->method, .route = route, .status = status, .error = error,
                        .remote = r->remote[0] ? r->remote : NULL, .images = r->n_images, .tokens = tokens,
                        .bytes_in = r->bytes_in, .bytes_out = r->bytes_out,
                        .queue_ms = queue_s > 0 ? queue_s * 1e3 : 0, .prep_ms = prep_s > 0 ? prep_s * 1e3 : 0,
                        .encode_ms = encode_s > 0 ? encode_s * 1e3 : 0, .total_ms = total_s * 1e3};
    log_request_line(&a);
    req_unref(r);
}

static void mhd_logger(void *cls, const char *fmt, va_list ap) {
    (void)cls;
    char buf[512];
    vsnprintf(buf, sizeof buf, fmt, ap);
    size_t n = strlen(buf);
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r')) buf[--n] = 0;
    log_msg(VITD_LOG_WARN, "libmicrohttpd: %s", buf);
}

/* ---- public API ---- */

/* Resolves host (numeric IPv4/IPv6 or a name) into *ss for port; returns false when it cannot. */
static bool resolve(const char *host, int port, struct sockaddr_storage *ss, bool *v6) {
    memset(ss, 0, sizeof *ss);
    struct sockaddr_in *a4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)port);
        *v6 = false;
        return true;
    }
    if (inet_pton(AF_INET6, host, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)port);
        *v6 = true;
        return true;
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res = NULL;
    if (getaddrinfo(host, NULL, &hints, &res) != 0 || !res) return false;
    memcpy(ss, res->ai_addr, res->ai_addrlen);
    *v6 = res->ai_family == AF_INET6;
    if (*v6) a6->sin6_port = htons((uint16_t)port);
    else a4->sin_port = htons((uint16_t)port);
    freeaddrinfo(res);
    return true;
}

vitd_status http_start(const http_opts *o, http_server **out, vitd_err *err) {
    *out = NULL;
    const vitd_config *c = o->cfg;
    if (!c || !o->model || !o->sched || !o->prep)
        return vitd_fail(err, VITD_E_INVALID_ARG, "http: config, model, scheduler and prep pool are required");
    struct sockaddr_storage ss;
    bool v6 = false;
    if (!resolve(c->host, c->port, &ss, &v6))
        return vitd_fail(err, VITD_E_IO, "host '%s': not an address and cannot be resolved", c->host);
    http_server *h = xcalloc(1, sizeof *h);
    h->o = *o;
    pthread_mutex_init(&h->mu, NULL);
    pthread_cond_init(&h->idle_cv, NULL);
    atomic_init(&h->ready, false);
    atomic_init(&h->draining, false);
    atomic_init(&h->next_id, 1);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    h->id_seed = (unsigned long long)ts.tv_sec * 1000000007ULL ^ (unsigned long long)ts.tv_nsec ^
                 ((unsigned long long)(uintptr_t)h << 16);
    /* the model's name: the last component of its directory */
    const char *path = vitd_model_path(o->model);
    size_t plen = strlen(path);
    while (plen > 1 && path[plen - 1] == '/') plen--;
    size_t b = plen;
    while (b > 0 && path[b - 1] != '/') b--;
    snprintf(h->model_name, sizeof h->model_name, "%.*s", (int)(plen - b), path + b);

    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    if (v6) flags |= MHD_USE_IPv6;
    h->daemon = MHD_start_daemon(
        flags, (uint16_t)c->port, NULL, NULL, on_request, h, MHD_OPTION_EXTERNAL_LOGGER, mhd_logger, NULL,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, h, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
        MHD_OPTION_THREAD_POOL_SIZE, (unsigned)c->http_threads, MHD_OPTION_CONNECTION_LIMIT,
        (unsigned)c->max_connections, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)c->connection_timeout_s,
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)256 * 1024, MHD_OPTION_LISTEN_BACKLOG_SIZE, (unsigned)1024,
        MHD_OPTION_END);
    if (!h->daemon) {
        int e = errno;
        http_free(h);
        return vitd_fail(err, VITD_E_IO, "cannot listen on %s:%d: %s", c->host, c->port,
                         e ? strerror(e) : "libmicrohttpd refused to start");
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(h->daemon, MHD_DAEMON_INFO_BIND_PORT);
    h->port = di ? di->port : c->port;
    *out = h;
    return VITD_OK;
}

int http_port(const http_server *h) { return h->port; }

void http_set_ready(http_server *h, bool ready) {
    atomic_store(&h->ready, ready);
    if (h->o.metrics) metrics_set(h->o.metrics->ready_s, ready && !atomic_load(&h->draining) ? 1 : 0);
}

void http_drain_begin(http_server *h) {
    atomic_store(&h->draining, true);
    if (h->o.metrics) metrics_set(h->o.metrics->ready_s, 0);
}

int http_live_requests(http_server *h) {
    pthread_mutex_lock(&h->mu);
    int n = h->live;
    pthread_mutex_unlock(&h->mu);
    return n;
}

bool http_wait_idle(http_server *h, int timeout_ms) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    long long ns = ts.tv_nsec + (long long)(timeout_ms % 1000) * 1000000LL;
    ts.tv_sec += timeout_ms / 1000 + (time_t)(ns / 1000000000LL);
    ts.tv_nsec = (long)(ns % 1000000000LL);
    pthread_mutex_lock(&h->mu);
    while (h->live > 0) {
        if (pthread_cond_timedwait(&h->idle_cv, &h->mu, &ts) == ETIMEDOUT) break;
    }
    bool idle = h->live == 0;
    pthread_mutex_unlock(&h->mu);
    return idle;
}

void http_stop(http_server *h) {
    if (!h || !h->daemon) return;
    MHD_stop_daemon(h->daemon);
    h->daemon = NULL;
}

void http_free(http_server *h) {
    if (!h) return;
    http_stop(h);
    pthread_cond_destroy(&h->idle_cv);
    pthread_mutex_destroy(&h->mu);
    free(h);
}
