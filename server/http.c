/* http.c — the libmicrohttpd daemon: the route table and dispatch, `struct req` and its lifetime, the answer
 * helpers, the GET routes (health, readiness, metrics, model, KServe v2 metadata) and completion cleanup.
 * The image routes' pipeline (body, prep, scheduler, cache files, answers) is http_images.c; the request
 * object and the phases are described in http_req.h. */
#include "http_req.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <malloc.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>

#include <cJSON.h>

#include "conn_guard.h"
#include "content_id.h"
#include "http_frame.h"
#include "log.h"
#include "metrics.h"
#include "reply.h"
#include "util.h"

#define RETRY_AFTER_S "1"

const http_route http_routes[RT_NOT_FOUND + 1] = {
    [RT_ENCODE] = {"/v1/encode", "POST", "POST", false, false},
    [RT_VLLM_EMBEDS] = {"/v1/vllm/image_embeds", "POST", "POST", false, false},
    [RT_CHAT] = {"/v1/chat/completions", "POST", "POST", false, false},
    [RT_V2_INFER] = {"/v2/models/{model}/infer", "POST", "POST", false, true},
    [RT_HEALTH] = {"/health", "GET", "GET, HEAD", true, false},
    [RT_READY] = {"/ready", "GET", "GET, HEAD", true, false},
    [RT_METRICS] = {"/metrics", "GET", "GET, HEAD", false, false},
    [RT_MODEL] = {"/v1/model", "GET", "GET, HEAD", false, false},
    [RT_V2_SERVER] = {"/v2", "GET", "GET, HEAD", false, true},
    [RT_V2_LIVE] = {"/v2/health/live", "GET", "GET, HEAD", true, true},
    [RT_V2_READY] = {"/v2/health/ready", "GET", "GET, HEAD", true, true},
    [RT_V2_MODEL] = {"/v2/models/{model}", "GET", "GET, HEAD", false, true},
    [RT_V2_MODEL_READY] = {"/v2/models/{model}/ready", "GET", "GET, HEAD", false, true},
    [RT_NOT_FOUND] = {"(unknown)", NULL, NULL, true, false},
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
    http_new_id(h, r->id);
}

void http_new_id(http_server *h, char *out) {
    /* splitmix64 of a per-process seed plus a counter: unique in the process, unpredictable across restarts */
    unsigned long long z = h->id_seed + atomic_fetch_add(&h->next_id, 1) * 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    z ^= z >> 31;
    snprintf(out, 72, "%016llx", z);
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

/* The route of url. KServe v2 model paths, /v2/models/<model>[/versions/<v>][/ready|/infer], also give the
 * model (*model, arena: the served name when the path starts with it, else the segment up to '/') and the
 * version (*version, arena, or NULL when absent). */
static route_id route_of(const char *url, const char *served, arena *a, const char **model, const char **version) {
    static const route_id fixed[] = {RT_ENCODE, RT_VLLM_EMBEDS, RT_CHAT, RT_HEALTH, RT_READY, RT_METRICS, RT_MODEL,
                                     RT_V2_SERVER, RT_V2_LIVE, RT_V2_READY};
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++)
        if (strcmp(url, http_routes[fixed[i]].path) == 0) return fixed[i];
    static const char prefix[] = "/v2/models/";
    if (strncmp(url, prefix, sizeof prefix - 1) != 0) return RT_NOT_FOUND;
    /* the served name may hold '/' (vLLM-style "Qwen/Qwen3-VL-8B-Instruct"): it is matched whole first */
    const char *m = url + sizeof prefix - 1, *slash = strchr(m, '/');
    size_t ml = slash ? (size_t)(slash - m) : strlen(m), sl = strlen(served);
    if (sl && !strncmp(m, served, sl) && (m[sl] == '/' || !m[sl])) {
        ml = sl;
        slash = m[sl] ? m + sl : NULL;
    }
    if (ml == 0) return RT_NOT_FOUND;
    *model = arena_strndup(a, m, ml);
    const char *rest = slash ? slash : "";
    if (strncmp(rest, "/versions/", 10) == 0) {
        const char *v = rest + 10, *vs = strchr(v, '/');
        size_t vl = vs ? (size_t)(vs - v) : strlen(v);
        if (vl == 0) return RT_NOT_FOUND;
        *version = arena_strndup(a, v, vl);
        rest = vs ? vs : "";
    }
    if (!*rest) return RT_V2_MODEL;
    if (!strcmp(rest, "/ready")) return RT_V2_MODEL_READY;
    if (!strcmp(rest, "/infer")) return RT_V2_INFER;
    return RT_NOT_FOUND;
}

/* ---- request lifetime ---- */

static struct req *req_create(http_server *h, struct MHD_Connection *conn, const char *method) {
    struct req *r = xcalloc(1, sizeof *r);
    r->arena = arena_create(0);
    if (!r->arena) {
        free(r);
        return NULL;
    }
    atomic_init(&r->refs, 1);
    atomic_init(&r->prep_left, 0);
    atomic_init(&r->prep_failed, false);
    atomic_init(&r->io_left, 0);
    pthread_mutex_init(&r->prep_mu, NULL);
    r->srv = h;
    r->conn = conn;
    r->t_start = now_s();
    r->route = RT_NOT_FOUND;
    r->method = arena_strndup(r->arena, method, 32);
    r->fd = -1;
    r->prep_err_index = -1;
    r->io_err_index = -1;
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

void http_req_unref(struct req *r) {
    if (atomic_fetch_sub(&r->refs, 1) != 1) return;
    http_server *h = r->srv;
    VITD_ASSERT(r->body == NULL);
    work_release(r);
    free(r->early.buf);
    arena_free(r->arena);
    pthread_mutex_destroy(&r->prep_mu);
    free(r);
    pthread_mutex_lock(&h->mu);
    if (--h->live == 0) pthread_cond_broadcast(&h->idle_cv);
    pthread_mutex_unlock(&h->mu);
}

/* ---- answers ---- */

enum MHD_Result http_respond(struct req *r, int status, const char *ctype, char *buf, size_t len,
                             const char *extra_name, const char *extra_value) {
    /* libmicrohttpd closes the connection after an answer queued in the first call: keep it for the final one */
    if (r->first_call && early_defer(r, status, ctype, buf, len, extra_name, extra_value)) return MHD_YES;
    struct MHD_Response *resp = MHD_create_response_from_buffer_with_free_callback(len, buf, free);
    if (!resp) {
        free(buf);
        return MHD_NO;
    }
    if (ctype) MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
    MHD_add_response_header(resp, "X-Request-Id", r->id);
    if (extra_name) MHD_add_response_header(resp, extra_name, extra_value);
    if (r->must_close || atomic_load(&r->srv->draining))
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
    r->status = status;
    r->bytes_out = len;
    r->phase = PH_ANSWERED;
    conn_guard_phase(r->conn, CONN_SENDING);
    enum MHD_Result ok = MHD_queue_response(r->conn, (unsigned)status, resp);
    MHD_destroy_response(resp);
    return ok;
}

enum MHD_Result http_respond_iov(struct req *r, int status, const char *ctype, const struct MHD_IoVec *iov,
                                 unsigned n, size_t total, MHD_ContentReaderFreeCallback free_cb, void *cls) {
    struct MHD_Response *resp = MHD_create_response_from_iovec(iov, n, free_cb, cls);
    if (!resp) {
        free_cb(cls);
        return MHD_NO;
    }
    if (ctype) MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
    MHD_add_response_header(resp, "X-Request-Id", r->id);
    if (atomic_load(&r->srv->draining)) MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
    r->status = status;
    r->bytes_out = total;
    r->phase = PH_ANSWERED;
    conn_guard_phase(r->conn, CONN_SENDING);
    enum MHD_Result ok = MHD_queue_response(r->conn, (unsigned)status, resp);
    MHD_destroy_response(resp);
    return ok;
}

enum MHD_Result http_respond_error(struct req *r, int status, const char *code, const char *extra_name,
                                   const char *extra_value, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    size_t len = 0;
    char *body = r->v2_errors ? kserve_error(msg, &len) : reply_error_json(code, msg, r->id, &len);
    if (!body) return MHD_NO;
    r->error_code = code;
    return http_respond(r, status, "application/json", body, len, extra_name, extra_value);
}

enum MHD_Result http_respond_status(struct req *r, vitd_status s, const char *msg) {
    int code = reply_http_status(s);
    bool retry = code == 503;
    return http_respond_error(r, code, vitd_status_name(s), retry ? MHD_HTTP_HEADER_RETRY_AFTER : NULL,
                              retry ? RETRY_AFTER_S : NULL, "%s", msg);
}

enum MHD_Result http_respond_text(struct req *r, int status, const char *ctype, const char *text) {
    size_t n = strlen(text);
    char *buf = xmalloc(n + 1);
    memcpy(buf, text, n + 1);
    return http_respond(r, status, ctype, buf, n, NULL, NULL);
}

/* ---- GET routes ---- */

static enum MHD_Result handle_metrics(struct req *r) {
    http_server *h = r->srv;
    metrics_vitd *m = h->o.metrics;
    if (!m) return http_respond_text(r, 200, "text/plain; version=0.0.4", "");
    int jobs = 0;
    size_t queued = 0;
    /* the scheduler is freed once work is closed (a drain that timed out), while MHD still answers for a while */
    pthread_rwlock_rdlock(&h->work_lock);
    if (h->o.sched && !h->work_closed) sched_depth(h->o.sched, &jobs, &queued, NULL);
    pthread_rwlock_unlock(&h->work_lock);
    metrics_set(m->queue_requests_s, jobs);
    metrics_set(m->queue_tokens_s, (double)queued);
    metrics_set(m->ready_s, atomic_load(&h->ready) && !atomic_load(&h->draining) ? 1 : 0);
    struct mallinfo2 mi = mallinfo2(); /* glibc >= 2.33; walks the arenas (malloc_arenas keeps them few) */
    metrics_set(m->heap_in_use_s, (double)(mi.uordblks + mi.hblkhd));
    metrics_set(m->heap_held_s, (double)(mi.arena + mi.hblkhd));
    size_t len = 0;
    char *text = metrics_render(m->reg, &len);
    if (!text) return http_respond_status(r, VITD_E_NOMEM, "metrics: out of memory");
    return http_respond(r, 200, "text/plain; version=0.0.4; charset=utf-8", text, len, NULL, NULL);
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
    cJSON_AddStringToObject(root, "linear_dtype", h->o.encoder ? vitd_encoder_linear_dtype(h->o.encoder) : "");
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
    /* the hand-overs to LLM engines this server offers (README "Handing embeddings to LLM engines") */
    cJSON *ho = cJSON_AddObjectToObject(root, "handover");
    cJSON *vl = cJSON_AddObjectToObject(ho, "vllm");
    cJSON_AddStringToObject(vl, "image_embeds", "/v1/vllm/image_embeds");
    cJSON_AddNumberToObject(vl, "embedding_width", vc->out_hidden_size * (1 + vc->n_deepstack));
    cJSON_AddBoolToObject(vl, "ec_cache", h->o.ec != NULL);
    if (h->o.ec) {
        cJSON_AddStringToObject(vl, "ec_cache_dir", c->ec_cache_dir);
        cJSON_AddStringToObject(vl, "encoder_instance", "/v1/chat/completions");
        cJSON_AddStringToObject(vl, "ec_transfer_format", c->ec_transfer_format);
    }
    if (c->ec_proxy_url[0]) cJSON_AddStringToObject(vl, "ec_proxy_url", c->ec_proxy_url);
    cJSON *ks = cJSON_AddObjectToObject(ho, "kserve_v2");
    char v2path[300];
    snprintf(v2path, sizeof v2path, "/v2/models/%s", h->model_name);
    cJSON_AddStringToObject(ks, "model", v2path);
    char *text = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    if (!text) return http_respond_status(r, VITD_E_NOMEM, "model: out of memory");
    size_t n = strlen(text);
    char *buf = malloc(n + 2);
    if (!buf) {
        cJSON_free(text);
        return http_respond_status(r, VITD_E_NOMEM, "model: out of memory");
    }
    memcpy(buf, text, n);
    buf[n] = '\n';
    buf[n + 1] = 0;
    cJSON_free(text);
    return http_respond(r, 200, "application/json", buf, n + 1, NULL, NULL);
}

/* ---- KServe v2 GET routes ---- */

/* 404 in KServe's words unless r names the served model (version absent or "1"). */
static bool v2_model_known(struct req *r, const char *version) {
    http_server *h = r->srv;
    if (strcmp(r->v2_model, h->model_name) != 0) {
        http_respond_error(r, 404, "not_found", NULL, NULL, "Request for unknown model: '%.128s' is not found",
                           r->v2_model);
        return false;
    }
    if (version && strcmp(version, "1") != 0) {
        http_respond_error(r, 404, "not_found", NULL, NULL, "Request for unknown model: '%s' version %.32s is not "
                           "found (it has version 1)", h->model_name, version);
        return false;
    }
    return true;
}

static enum MHD_Result v2_answer(struct req *r, int status, char *text, size_t len) {
    if (!text) return http_respond_status(r, VITD_E_NOMEM, "out of memory");
    return http_respond(r, status, "application/json", text, len, NULL, NULL);
}

static enum MHD_Result v2_get(struct req *r, const char *version) {
    http_server *h = r->srv;
    bool ready = atomic_load(&h->ready) && !atomic_load(&h->draining);
    size_t len = 0;
    switch (r->route) {
    case RT_V2_SERVER: {
        char *t = kserve_server_metadata(h->o.version, &len);
        return v2_answer(r, 200, t, len);
    }
    case RT_V2_LIVE: return http_respond_text(r, 200, "application/json", "{\"live\":true}\n");
    case RT_V2_READY:
        return http_respond_text(r, ready ? 200 : 400, "application/json",
                                 ready ? "{\"ready\":true}\n" : "{\"ready\":false}\n");
    case RT_V2_MODEL:
    case RT_V2_MODEL_READY: {
        if (!v2_model_known(r, version)) return MHD_YES;
        if (r->route == RT_V2_MODEL_READY) {
            strbuf b = {0};
            strbuf_puts(&b, "{\"name\":");
            strbuf_json_string(&b, h->model_name);
            strbuf_printf(&b, ",\"ready\":%s}\n", ready ? "true" : "false");
            char *t = strbuf_finish(&b);
            return v2_answer(r, ready ? 200 : 400, t, t ? strlen(t) : 0);
        }
        const vitd_vision_config *vc = vitd_model_config(h->o.model);
        char *t = kserve_model_metadata(h->model_name, vc->out_hidden_size, vc->n_deepstack, &len);
        return v2_answer(r, 200, t, len);
    }
    default: break;
    }
    return MHD_NO;
}

/* ---- MHD callbacks ---- */

enum MHD_Result http_get_answer(struct req *r) {
    http_server *h = r->srv;
    switch (r->route) {
    case RT_HEALTH: return http_respond_text(r, 200, "application/json", "{\"status\":\"ok\"}\n");
    case RT_READY:
        if (atomic_load(&h->failed))
            return http_respond_text(r, 503, "application/json", "{\"status\":\"device_failed\"}\n");
        if (atomic_load(&h->draining))
            return http_respond_text(r, 503, "application/json", "{\"status\":\"draining\"}\n");
        if (!atomic_load(&h->ready))
            return http_respond_text(r, 503, "application/json", "{\"status\":\"starting\"}\n");
        return http_respond_text(r, 200, "application/json", "{\"status\":\"ready\"}\n");
    case RT_METRICS: return handle_metrics(r);
    case RT_MODEL: return handle_model(r);
    case RT_V2_SERVER:
    case RT_V2_LIVE:
    case RT_V2_READY:
    case RT_V2_MODEL:
    case RT_V2_MODEL_READY: return v2_get(r, r->v2_version);
    default: break;
    }
    return MHD_NO;
}

static enum MHD_Result frame_header(void *cls, enum MHD_ValueKind kind, const char *key, const char *value) {
    (void)kind;
    http_frame_add(cls, key, value);
    return MHD_YES;
}

/* The first call: framing, the API key (before anything route-specific is revealed), route and method, then
 * the route's start. Answers made here wait for the final call (http_early.c). */
static enum MHD_Result first_call(struct req *r, const char *url, const char *method, const char *version) {
    http_server *h = r->srv;
    struct MHD_Connection *conn = r->conn;
    http_frame f;
    http_frame_init(&f);
    MHD_get_connection_values(conn, MHD_HEADER_KIND, frame_header, &f);
    http_frame_verdict v;
    if (http_frame_check(&f, version, &v)) {
        r->must_close = true; /* what follows on this connection cannot be trusted to be a request */
        return http_respond_error(r, v.status, v.code, NULL, NULL, "%s", v.msg);
    }
    /* a Content-Length past LLONG_MAX (up to 19 digits pass) is clamped, never read as negative (= chunked) */
    long long cl = f.content_length > (unsigned long long)LLONG_MAX ? LLONG_MAX : (long long)f.content_length;
    r->body_pending = f.n_transfer_encoding ? -1 : f.n_content_length ? cl : 0;
    r->route = route_of(url, h->model_name, r->arena, &r->v2_model, &r->v2_version);
    r->v2_errors = !strncmp(url, "/v2", 3) && (url[3] == '\0' || url[3] == '/');
    bool open = r->route != RT_NOT_FOUND && http_routes[r->route].open;
    if (!open && !auth_ok(h, conn))
        return http_respond_error(r, 401, "unauthorized", MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer realm=\"vitd\"",
                                  "missing or wrong API key (Authorization: Bearer <key>)");
    if (r->route == RT_NOT_FOUND)
        return http_respond_error(r, 404, "not_found", NULL, NULL, "no route %s %s", method, url);
    const http_route *rt = &http_routes[r->route];
    bool get_like = !strcmp(rt->method, "GET") && !strcmp(method, "HEAD");
    if (strcmp(method, rt->method) != 0 && !get_like)
        return http_respond_error(r, 405, "method_not_allowed", MHD_HTTP_HEADER_ALLOW, rt->allow,
                                  "%s does not allow %s (allowed: %s)", url, method, rt->allow);
    if (r->route >= RT_IMAGE_ROUTES) {
        r->phase = PH_GET; /* answered at the final call: now would close the connection */
        return MHD_YES;
    }
    if (r->route == RT_V2_INFER && !v2_model_known(r, r->v2_version)) return MHD_YES;
    return images_begin(r);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
                                  const char *version, const char *upload_data, size_t *upload_data_size,
                                  void **req_cls) {
    http_server *h = cls;
    struct req *r = *req_cls;
    if (!r) {
        if (conn_guard_lingering(conn)) return MHD_NO; /* answered from the URI callback, or being closed */
        r = req_create(h, conn, method);
        if (!r) return MHD_NO;
        *req_cls = r;
        conn_guard_phase(conn, CONN_BODY);
        r->first_call = true;
        enum MHD_Result res = first_call(r, url, method, version);
        r->first_call = false;
        return res;
    }
    switch (r->phase) {
    case PH_GET:
    case PH_DISCARD:
    case PH_LINGER:
        if (*upload_data_size == 0 && r->phase != PH_LINGER) conn_guard_phase(conn, CONN_WORK);
        return early_upload(r, upload_data, upload_data_size);
    case PH_BODY:
        if (*upload_data_size == 0) conn_guard_phase(conn, CONN_WORK);
        return images_upload(r, upload_data, upload_data_size);
    case PH_DONE: return images_answer(r);
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
    conn_guard_phase(conn, CONN_IDLE); /* kept alive: the next request line is awaited */
    const char *route = r->route == RT_NOT_FOUND ? "other" : http_routes[r->route].path;
    double st[METRICS_N_STAGES];
    for (int i = 0; i < METRICS_N_STAGES; i++) st[i] = -1;
    st[METRICS_STAGE_TOTAL] = t_end - r->t_start;
    uint64_t tokens = 0;
    if (r->route < RT_IMAGE_ROUTES && r->n_images > 0) {
        const vitd_vision_config *vc = vitd_model_config(h->o.model);
        tokens = r->n_patches / ((size_t)vc->spatial_merge_size * vc->spatial_merge_size);
        if (r->t_body > 0) st[METRICS_STAGE_RECEIVE] = r->t_body - r->t_start;
        if (r->t_prep_done > 0) {
            st[METRICS_STAGE_PREPROCESS] = r->t_prep_done - r->t_body;
            st[METRICS_STAGE_DECODE] = (double)atomic_load(&r->decode_us) * 1e-6;
        }
        if (r->job.t_submitted > 0) {
            double start = r->job.t_first_batch > 0 ? r->job.t_first_batch : r->t_done;
            st[METRICS_STAGE_QUEUE] = start - r->job.t_submitted;
            if (r->job.n_batches > 0) st[METRICS_STAGE_ENCODE] = r->job.encode_s;
        }
        if (r->t_answer > 0 && r->t_done > 0) st[METRICS_STAGE_RESUME] = r->t_answer - r->t_done;
        if (r->t_answered > 0) {
            st[METRICS_STAGE_ANSWER] = r->t_answered - r->t_answer;
            st[METRICS_STAGE_SEND] = t_end - r->t_answered;
        }
    }
    double queue_s = st[METRICS_STAGE_QUEUE], prep_s = st[METRICS_STAGE_PREPROCESS], encode_s = st[METRICS_STAGE_ENCODE];
    double total_s = st[METRICS_STAGE_TOTAL];
    if (h->o.metrics) {
        metrics_vitd_request(h->o.metrics, route, status, st);
        if (status >= 400 && error) metrics_vitd_error(h->o.metrics, error);
        metrics_add(h->o.metrics->inflight_s, -1);
    }
    log_access_rec a = {.req_id = r->id, .method = r->method, .route = route, .status = status, .error = error,
                        .remote = r->remote[0] ? r->remote : NULL, .images = r->n_images, .tokens = tokens,
                        .bytes_in = r->bytes_in, .bytes_out = r->bytes_out,
                        .queue_ms = queue_s > 0 ? queue_s * 1e3 : 0, .prep_ms = prep_s > 0 ? prep_s * 1e3 : 0,
                        .encode_ms = encode_s > 0 ? encode_s * 1e3 : 0, .total_ms = total_s * 1e3};
    log_request_line(&a);
    http_req_unref(r);
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
    pthread_rwlock_init(&h->work_lock, NULL);
    atomic_init(&h->io_patches, 0);
    atomic_init(&h->ready, false);
    atomic_init(&h->draining, false);
    atomic_init(&h->failed, false);
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
    if (c->model_name[0]) snprintf(h->model_name, sizeof h->model_name, "%.255s", c->model_name);
    else snprintf(h->model_name, sizeof h->model_name, "%.*s", (int)(plen - b), path + b);
    content_id_model(o->model, h->model_fp);

    conn_limits cl = {.max_connections = c->max_connections, .idle_s = c->connection_timeout_s,
                      .header_s = c->header_timeout_s, .body_s = c->body_timeout_s, .send_s = c->send_timeout_s};
    h->guard = conn_guard_create(&cl, o->metrics);
    if (!h->guard) {
        http_free(h);
        return vitd_fail(err, VITD_E_INTERNAL, "http: cannot start the connection guard thread");
    }
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    if (v6) flags |= MHD_USE_IPv6;
    /* libmicrohttpd's own limit stays well above max_connections: at its limit it stops accepting and clients
     * hang in the listen backlog, while the guard answers or makes room (conn_guard.h) */
    unsigned mhd_limit = 2u * (unsigned)c->max_connections + 4u * (unsigned)c->http_threads + 16u;
    /* The guard enforces each phase's own deadline (conn_guard.h); libmicrohttpd's idle timeout would cut every
     * phase at connection_timeout_s (a paused upload, an answer read slowly), so it is only a backstop past the
     * longest of them. */
    int mhd_timeout = c->connection_timeout_s;
    if (c->header_timeout_s > mhd_timeout) mhd_timeout = c->header_timeout_s;
    if (c->body_timeout_s > mhd_timeout) mhd_timeout = c->body_timeout_s;
    if (c->send_timeout_s > mhd_timeout) mhd_timeout = c->send_timeout_s;
    mhd_timeout += 5;
    h->daemon = MHD_start_daemon(
        flags, (uint16_t)c->port, NULL, NULL, on_request, h, MHD_OPTION_EXTERNAL_LOGGER, mhd_logger, NULL,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, h, MHD_OPTION_NOTIFY_CONNECTION, conn_guard_notify, h->guard,
        MHD_OPTION_URI_LOG_CALLBACK, early_on_uri, h, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
        MHD_OPTION_THREAD_POOL_SIZE, (unsigned)c->http_threads, MHD_OPTION_CONNECTION_LIMIT, mhd_limit,
        MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)c->max_connections_per_ip, MHD_OPTION_CONNECTION_TIMEOUT,
        (unsigned)mhd_timeout, MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)256 * 1024,
        MHD_OPTION_LISTEN_BACKLOG_SIZE, (unsigned)1024, MHD_OPTION_END);
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

void http_set_failed(http_server *h) {
    atomic_store(&h->failed, true);
    http_set_ready(h, false);
}

void http_close_work(http_server *h) {
    pthread_rwlock_wrlock(&h->work_lock);
    h->work_closed = true;
    pthread_rwlock_unlock(&h->work_lock);
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
    conn_guard_free(h->guard); /* after the daemon: every connection was closed and notified */
    pthread_cond_destroy(&h->idle_cv);
    pthread_mutex_destroy(&h->mu);
    pthread_rwlock_destroy(&h->work_lock);
    free(h);
}
