/* labels: http */
/* test_http.c — the real `vitd serve` (VITD_EXE) on 127.0.0.1, a free port, the tiny demo model, CPU backend,
 * driven by a small raw-socket HTTP client:
 *   - routes: /health, /ready, /v1/model, 404, 405 + Allow, X-Request-Id echoed or generated;
 *   - every input format (raw PNG, raw JPEG, multipart with 3 images, JSON base64 and data: URL) and output format
 *     (JSON float, JSON base64, safetensors via Accept, deepstack=false, layout=concat, bfloat16, float16), each
 *     compared with `vitd encode --backend cpu` on the same files;
 *   - 64 concurrent clients sending images of different sizes, answers equal to the reference (1e-5 relative);
 *   - every kind of bad input gets its 4xx JSON with the right code (and the image index), and a good request
 *     succeeds after each; a slow client is cut off at the body timeout;
 *   - 401 with an API key; /metrics parses and counts what was sent;
 *   - drain: N requests in flight, SIGTERM, /ready 503 and new encodes 503 during the drain, all N answered 200,
 *     exit code 0.
 * Test images come from tests/fixtures/images/. Every wait is bounded in time; only 127.0.0.1 is used. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cJSON.h>

#include "check.h"
#include "loopback.h"
#include "safetensors.h"
#include "serve_check.h"
#include "util.h"


/* ---- reference outputs ---- */

typedef struct {
    int n_ds;
    int ds_layers[8];
    int out_hidden;
} model_info;

typedef struct {
    const image_file *img;
    float *emb;          /* [tokens, D] */
    float *ds;           /* [n_ds][tokens][D] */
    size_t tokens;
    int grid[3];
} reference;

/* Reads image i's tensors from a safetensors answer or file into ref-shaped float arrays (malloc'd). Returns
 * false when a tensor is missing. ds may be NULL (not wanted). */
static bool st_image(st_file *f, int i, const model_info *mi, float **emb, float **ds, size_t *tokens,
                     st_dtype *dt) {
    char name[96];
    snprintf(name, sizeof name, "image.%d.embeddings", i);
    const st_tensor *t = st_find(f, name);
    if (!t || t->ndim != 2) return false;
    *tokens = (size_t)t->shape[0];
    if (dt) *dt = t->dtype;
    vitd_err err;
    *emb = xmalloc((size_t)st_numel(t) * sizeof(float));
    if (st_to_f32(t, *emb, &err) != VITD_OK) return false;
    if (!ds) return true;
    *ds = xmalloc((size_t)mi->n_ds * *tokens * (size_t)mi->out_hidden * sizeof(float));
    for (int k = 0; k < mi->n_ds; k++) {
        snprintf(name, sizeof name, "image.%d.deepstack.%d", i, mi->ds_layers[k]);
        const st_tensor *d = st_find(f, name);
        if (!d || (size_t)st_numel(d) != *tokens * (size_t)mi->out_hidden) return false;
        if (st_to_f32(d, *ds + (size_t)k * *tokens * (size_t)mi->out_hidden, &err) != VITD_OK) return false;
    }
    return true;
}

/* Compares got against ref over n floats: max_rel (max abs diff over max |ref|) must stay under tol. */
static bool close_enough(const char *what, const float *got, const float *ref, size_t n, double tol, bool print) {
    cmp_stats s = cmp_f32(got, ref, n, 0, 0);
    if (print || s.max_rel > tol || s.n_nan) cmp_print(what, s);
    return s.max_rel <= tol && s.n_nan == 0;
}

/* ---- JSON answers ---- */

/* Flattens nested number arrays into out (up to cap); returns the count. */
static size_t flatten(const cJSON *a, float *out, size_t cap, size_t n) {
    if (cJSON_IsNumber(a)) {
        if (n < cap) out[n] = (float)a->valuedouble;
        return n + 1;
    }
    const cJSON *c;
    cJSON_ArrayForEach(c, a) n = flatten(c, out, cap, n);
    return n;
}

/* Decodes an "embedding" value: nested floats, or base64 of little-endian float32/bf16/f16. */
static float *embedding_values(const cJSON *e, size_t expect, const char *dtype, size_t *n) {
    float *out = xcalloc(expect + 1, sizeof(float));
    if (cJSON_IsString(e)) {
        size_t sl = strlen(e->valuestring);
        uint8_t *raw = xmalloc(sl);
        size_t bytes = b64_decode(e->valuestring, raw);
        size_t es = !strcmp(dtype, "float32") ? 4 : 2;
        *n = bytes / es;
        for (size_t i = 0; i < *n && i < expect; i++) {
            if (es == 4) memcpy(&out[i], raw + 4 * i, 4);
            else {
                uint16_t h = (uint16_t)(raw[2 * i] | raw[2 * i + 1] << 8);
                out[i] = !strcmp(dtype, "bfloat16") ? bf16_to_f32(h) : f16_to_f32(h);
            }
        }
        free(raw);
    } else {
        *n = flatten(e, out, expect, 0);
    }
    return out;
}

/* Checks a JSON encode answer against the references: data[i] of each image, embeddings and (if present)
 * deepstack within tol. Returns the number of images that matched. */
static int check_json_answer(const resp *r, const model_info *mi, reference *const *refs, int n, bool want_ds,
                             bool concat, const char *dtype, double tol, const char *what) {
    cJSON *root = cJSON_ParseWithLength(r->body, r->len);
    CHECK_MSG(root != NULL, "%s: answer is not JSON: %.200s", what, r->body);
    if (!root) return 0;
    const cJSON *data = cJSON_GetObjectItem(root, "data");
    CHECK_MSG(cJSON_GetArraySize(data) == n, "%s: %d images in the answer, expected %d", what,
              cJSON_GetArraySize(data), n);
    int ok = 0;
    size_t D = (size_t)mi->out_hidden;
    for (int i = 0; i < n && i < cJSON_GetArraySize(data); i++) {
        const cJSON *d = cJSON_GetArrayItem(data, i);
        const reference *ref = refs[i];
        size_t T = ref->tokens, width = concat ? D * (1 + (size_t)mi->n_ds) : D;
        const cJSON *grid = cJSON_GetObjectItem(d, "grid_thw");
        CHECK_MSG(cJSON_GetArraySize(grid) == 3 && cJSON_GetArrayItem(grid, 1)->valueint == ref->grid[1] &&
                      cJSON_GetArrayItem(grid, 2)->valueint == ref->grid[2],
                  "%s image %d: grid_thw differs", what, i);
        size_t got_n = 0;
        float *emb = embedding_values(cJSON_GetObjectItem(d, "embedding"), T * width, dtype, &got_n);
        CHECK_MSG(got_n == T * width, "%s image %d: %zu values, expected %zu", what, i, got_n, T * width);
        bool good = got_n == T * width;
        char label[128];
        if (good && concat) {
            /* row t = [emb_t, ds0_t, ds1_t, ...] */
            float *want = xmalloc(T * width * sizeof(float));
            for (size_t t = 0; t < T; t++) {
                memcpy(want + t * width, ref->emb + t * D, D * sizeof(float));
                for (int k = 0; k < mi->n_ds; k++)
                    memcpy(want + t * width + D * (size_t)(k + 1), ref->ds + ((size_t)k * T + t) * D,
                           D * sizeof(float));
            }
            snprintf(label, sizeof label, "%s image %d concat", what, i);
            good = close_enough(label, emb, want, T * width, tol, i == 0);
            free(want);
        } else if (good) {
            snprintf(label, sizeof label, "%s image %d embedding", what, i);
            good = close_enough(label, emb, ref->emb, T * D, tol, i == 0);
        }
        CHECK_MSG(good, "%s image %d: embedding differs from vitd encode", what, i);
        free(emb);
        const cJSON *ds = cJSON_GetObjectItem(d, "deepstack");
        if (want_ds && !concat) {
            CHECK_MSG(cJSON_GetArraySize(ds) == mi->n_ds, "%s image %d: %d deepstack entries, expected %d", what, i,
                      cJSON_GetArraySize(ds), mi->n_ds);
            for (int k = 0; k < mi->n_ds && k < cJSON_GetArraySize(ds); k++) {
                const cJSON *dk = cJSON_GetArrayItem(ds, k);
                CHECK_EQ_INT(mi->ds_layers[k], cJSON_GetObjectItem(dk, "layer")->valueint);
                float *v = embedding_values(cJSON_GetObjectItem(dk, "embedding"), T * D, dtype, &got_n);
                snprintf(label, sizeof label, "%s image %d deepstack %d", what, i, k);
                bool dgood =
                    got_n == T * D && close_enough(label, v, ref->ds + (size_t)k * T * D, T * D, tol, false);
                CHECK_MSG(dgood, "%s image %d deepstack %d differs", what, i, k);
                good = good && dgood;
                free(v);
            }
        } else {
            CHECK_MSG(cJSON_GetArraySize(ds) == 0, "%s image %d: deepstack returned though not asked", what, i);
        }
        ok += good;
    }
    const cJSON *usage = cJSON_GetObjectItem(root, "usage");
    size_t tokens = 0;
    for (int i = 0; i < n; i++) tokens += refs[i]->tokens;
    CHECK_MSG(usage && (size_t)cJSON_GetObjectItem(usage, "tokens")->valuedouble == tokens,
              "%s: usage.tokens differs from %zu", what, tokens);
    cJSON_Delete(root);
    return ok;
}

/* Checks a safetensors answer against the references. Returns images that matched. */
static int check_st_answer(const resp *r, const model_info *mi, reference *const *refs, int n, st_dtype want_dt,
                           double tol, const char *what, bool print) {
    st_file *f = NULL;
    vitd_err err;
    if (st_open_memory(r->body, r->len, &f, &err) != VITD_OK) {
        CHECK_MSG(0, "%s: answer is not safetensors: %s", what, err.msg);
        return 0;
    }
    int ok = 0;
    for (int i = 0; i < n; i++) {
        float *emb = NULL, *ds = NULL;
        size_t T = 0;
        st_dtype dt = ST_F32;
        bool have = st_image(f, i, mi, &emb, &ds, &T, &dt);
        CHECK_MSG(have && T == refs[i]->tokens, "%s image %d: tensors missing or %zu tokens", what, i, T);
        CHECK_MSG(dt == want_dt, "%s image %d: dtype %s, expected %s", what, i, st_dtype_name(dt),
                  st_dtype_name(want_dt));
        if (have && T == refs[i]->tokens) {
            char label[128];
            snprintf(label, sizeof label, "%s image %d embeddings", what, i);
            bool g1 = close_enough(label, emb, refs[i]->emb, T * (size_t)mi->out_hidden, tol, print && i == 0);
            snprintf(label, sizeof label, "%s image %d deepstack", what, i);
            bool g2 =
                close_enough(label, ds, refs[i]->ds, (size_t)mi->n_ds * T * (size_t)mi->out_hidden, tol, false);
            CHECK_MSG(g1 && g2, "%s image %d differs from vitd encode", what, i);
            ok += g1 && g2;
        }
        free(emb);
        free(ds);
    }
    st_close(f);
    return ok;
}

/* ---- the suite ---- */

typedef struct {
    int port;
    model_info mi;
    reference *refs;
    int n_refs;
    image_file *good;        /* a small good image for "the server goes on" */
    reference *good_ref;
    int encode_200, images_200;
} suite;

static bool good_request(suite *S, const char *after) {
    resp r;
    bool ok =
        http_do(S->port, "POST", "/v1/encode", "Content-Type: image/png\r\nAccept: application/vnd.safetensors\r\n",
                S->good->data, S->good->len, &r);
    bool good =
        ok && r.status == 200 && check_st_answer(&r, &S->mi, &S->good_ref, 1, ST_F32, 1e-5, after, false) == 1;
    CHECK_MSG(good, "good request after %s failed: status %d", after, r.status);
    if (good) {
        S->encode_200++;
        S->images_200++;
    }
    resp_free(&r);
    return good;
}

static void test_routes(suite *S) {
    printf("routes\n");
    resp r;
    char v[256];
    CHECK(http_do(S->port, "GET", "/health", "X-Request-Id: test-health.1\r\n", NULL, 0, &r));
    CHECK_EQ_INT(200, r.status);
    CHECK_STR_CONTAINS(r.body, "\"status\":\"ok\"");
    CHECK(resp_header(&r, "X-Request-Id", v, sizeof v) && !strcmp(v, "test-health.1"));
    resp_free(&r);
    /* an insane id is replaced by a generated one */
    CHECK(http_do(S->port, "GET", "/health", "X-Request-Id: bad id with spaces\r\n", NULL, 0, &r));
    CHECK(resp_header(&r, "X-Request-Id", v, sizeof v) && strlen(v) == 16 && !strchr(v, ' '));
    resp_free(&r);
    CHECK(http_do(S->port, "GET", "/ready", NULL, NULL, 0, &r));
    CHECK_EQ_INT(200, r.status);
    resp_free(&r);
    CHECK(http_do(S->port, "HEAD", "/health", NULL, NULL, 0, &r));
    CHECK_EQ_INT(200, r.status);
    resp_free(&r);
    CHECK(http_do(S->port, "GET", "/v1/model", NULL, NULL, 0, &r));
    CHECK_EQ_INT(200, r.status);
    cJSON *m = cJSON_ParseWithLength(r.body, r.len);
    const cJSON *vc = m ? cJSON_GetObjectItem(m, "vision_config") : NULL;
    CHECK(vc && cJSON_GetObjectItem(vc, "out_hidden_size")->valueint == S->mi.out_hidden);
    CHECK(m && !strcmp(cJSON_GetObjectItem(m, "backend")->valuestring, "cpu"));
    CHECK(m && cJSON_GetObjectItem(m, "attn_dtype") && cJSON_GetObjectItem(m, "limits") &&
          cJSON_GetObjectItem(m, "version"));
    cJSON_Delete(m);
    resp_free(&r);
    CHECK(http_do(S->port, "GET", "/nope", NULL, NULL, 0, &r));
    check_error(&r, 404, "not_found", "/nope", "unknown path");
    resp_free(&r);
    CHECK(http_do(S->port, "GET", "/v1/encode", NULL, NULL, 0, &r));
    check_error(&r, 405, "method_not_allowed", "GET", "GET /v1/encode");
    CHECK(resp_header(&r, "Allow", v, sizeof v) && !strcmp(v, "POST"));
    resp_free(&r);
    CHECK(http_do(S->port, "POST", "/health", NULL, "x", 1, &r));
    check_error(&r, 405, "method_not_allowed", NULL, "POST /health");
    CHECK(resp_header(&r, "Allow", v, sizeof v) && strstr(v, "GET"));
    resp_free(&r);
}

/* Every input and output format, each compared with vitd encode. refs: [0] PNG, [1] JPEG, [2] another. */
static void test_formats(suite *S) {
    printf("formats\n");
    reference *png = &S->refs[0], *jpg = &S->refs[1], *third = &S->refs[2];
    const model_info *mi = &S->mi;
    resp r;
    char hdr[256];

    /* raw PNG and JPEG, JSON float */
    reference *one[1] = {png};
    snprintf(hdr, sizeof hdr, "Content-Type: %s\r\n", png->img->ctype);
    CHECK(http_do(S->port, "POST", "/v1/encode", hdr, png->img->data, png->img->len, &r));
    CHECK_EQ_INT(200, r.status);
    CHECK_EQ_INT(1, check_json_answer(&r, mi, one, 1, true, false, "float32", 1e-5, "raw png json"));
    resp_free(&r);
    one[0] = jpg;
    snprintf(hdr, sizeof hdr, "Content-Type: %s\r\n", jpg->img->ctype);
    CHECK(http_do(S->port, "POST", "/v1/encode", hdr, jpg->img->data, jpg->img->len, &r));
    CHECK_EQ_INT(200, r.status);
    CHECK_EQ_INT(1, check_json_answer(&r, mi, one, 1, true, false, "float32", 1e-5, "raw jpeg json"));
    resp_free(&r);

    /* multipart with 3 images */
    const image_file *three[3] = {png->img, jpg->img, third->img};
    reference *three_ref[3] = {png, jpg, third};
    size_t mlen;
    char *mp = multipart(three, 3, NULL, NULL, "vitdTestBoundary42", &mlen);
    CHECK(http_do(S->port, "POST", "/v1/encode",
                  "Content-Type: multipart/form-data; boundary=vitdTestBoundary42\r\n", mp, mlen, &r));
    CHECK_EQ_INT(200, r.status);
    CHECK_EQ_INT(3, check_json_answer(&r, mi, three_ref, 3, true, false, "float32", 1e-5, "multipart x3"));
    resp_free(&r);
    /* multipart with an option field: deepstack=false */
    free(mp);
    mp = multipart(three, 2, "deepstack", "false", "b0undary", &mlen);
    CHECK(http_do(S->port, "POST", "/v1/encode", "Content-Type: multipart/form-data; boundary=b0undary\r\n", mp,
                  mlen, &r));
    CHECK_EQ_INT(200, r.status);
    CHECK_EQ_INT(
        2, check_json_answer(&r, mi, three_ref, 2, false, false, "float32", 1e-5, "multipart deepstack=false"));
    resp_free(&r);
    free(mp);

    /* JSON base64 and a data: URL, base64 output */
    char *b1 = b64_encode(png->img->data, png->img->len), *b2 = b64_encode(jpg->img->data, jpg->img->len);
    size_t jcap = strlen(b1) + strlen(b2) + 256;
    char *json = xmalloc(jcap);
    int jn =
        snprintf(json, jcap,
                 "{\"images\": [\"%s\", \"data:image/jpeg;base64,%s\"], \"encoding_format\": \"base64\"}", b1, b2);
    reference *two[2] = {png, jpg};
    CHECK(http_do(S->port, "POST", "/v1/encode", "Content-Type: application/json\r\n", json, (size_t)jn, &r));
    CHECK_EQ_INT(200, r.status);
    CHECK_EQ_INT(2, check_json_answer(&r, mi, two, 2, true, false, "float32", 1e-5, "json base64 in+out"));
    resp_free(&r);
    /* JSON: one image, bfloat16 base64 output, layout concat */
    jn = snprintf(json, jcap, "{\"image\": \"%s\", \"encoding_format\": \"base64\", \"dtype\": \"bfloat16\", "
                              "\"layout\": \"concat\"}", b1);
    one[0] = png;
    CHECK(http_do(S->port, "POST", "/v1/encode", "Content-Type: application/json\r\n", json, (size_t)jn, &r));
    CHECK_EQ_INT(200, r.status);
    CHECK_EQ_INT(1, check_json_answer(&r, mi, one, 1, true, true, "bfloat16", 8e-3, "json bf16 concat"));
    resp_free(&r);
    free(b1);
    free(b2);
    free(json);

    /* query options on a raw body: layout=concat (JSON float) */
    snprintf(hdr, sizeof hdr, "Content-Type: %s\r\n", png->img->ctype);
    CHECK(http_do(S->port, "POST", "/v1/encode?layout=concat", hdr, png->img->data, png->img->len, &r));
    CHECK_EQ_INT(200, r.status);
    CHECK_EQ_INT(1, check_json_answer(&r, mi, one, 1, true, true, "float32", 1e-5, "query layout=concat"));
    resp_free(&r);

    /* safetensors via Accept: float32, then float16 and bfloat16 via the query */
    const char *accepts[] = {"application/vnd.safetensors", "application/octet-stream"};
    for (int a = 0; a < 2; a++) {
        snprintf(hdr, sizeof hdr, "Content-Type: %s\r\nAccept: %s\r\n", jpg->img->ctype, accepts[a]);
        CHECK(http_do(S->port, "POST", "/v1/encode", hdr, jpg->img->data, jpg->img->len, &r));
        CHECK_EQ_INT(200, r.status);
        char ct[128];
        CHECK(resp_header(&r, "Content-Type", ct, sizeof ct) && !strcmp(ct, accepts[a]));
        one[0] = jpg;
        CHECK_EQ_INT(1, check_st_answer(&r, mi, one, 1, ST_F32, 1e-5, accepts[a], true));
        resp_free(&r);
    }
    struct {
        const char *q;
        st_dtype dt;
        double tol;
    } dts[] = {{"float16", ST_F16, 1e-3}, {"bfloat16", ST_BF16, 8e-3}};
    for (int k = 0; k < 2; k++) {
        char path[96];
        snprintf(path, sizeof path, "/v1/encode?dtype=%s", dts[k].q);
        snprintf(hdr, sizeof hdr, "Content-Type: %s\r\nAccept: application/vnd.safetensors\r\n", jpg->img->ctype);
        CHECK(http_do(S->port, "POST", path, hdr, jpg->img->data, jpg->img->len, &r));
        CHECK_EQ_INT(200, r.status);
        CHECK_EQ_INT(1, check_st_answer(&r, mi, one, 1, dts[k].dt, dts[k].tol, dts[k].q, true));
        resp_free(&r);
    }
    S->encode_200 += 11;
    S->images_200 += 1 + 1 + 3 + 2 + 2 + 1 + 1 + 2 + 2;
}

/* 64 client threads, each sending images of different sizes (some as multipart pairs), answers compared with the
 * reference in the main thread. */
#define N_CLIENTS 64
#define PER_CLIENT 2
typedef struct {
    suite *S;
    int index;
    int n_ok, n_images, n_bad;
    int status[PER_CLIENT];
    char note[256];
} client;

static void *client_main(void *arg) {
    client *c = arg;
    suite *S = c->S;
    for (int k = 0; k < PER_CLIENT; k++) {
        int a = (c->index * 7 + k * 3) % S->n_refs, b = (a + 1 + c->index % 3) % S->n_refs;
        bool pair = (c->index + k) % 4 == 0;
        resp r;
        bool ok;
        if (pair) {
            const image_file *imgs[2] = {S->refs[a].img, S->refs[b].img};
            size_t len;
            char *mp = multipart(imgs, 2, NULL, NULL, "concurrentBoundary", &len);
            ok = http_do(S->port, "POST", "/v1/encode",
                         "Content-Type: multipart/form-data; boundary=concurrentBoundary\r\n"
                         "Accept: application/vnd.safetensors\r\n", mp, len, &r);
            free(mp);
        } else {
            char hdr[256];
            snprintf(hdr, sizeof hdr, "Content-Type: %s\r\nAccept: application/vnd.safetensors\r\n",
                     S->refs[a].img->ctype);
            ok = http_do(S->port, "POST", "/v1/encode", hdr, S->refs[a].img->data, S->refs[a].img->len, &r);
        }
        c->status[k] = ok ? r.status : 0;
        if (ok && r.status == 200) {
            /* compare here without CHECK (not thread-safe): count matches */
            st_file *f = NULL;
            vitd_err err;
            if (st_open_memory(r.body, r.len, &f, &err) == VITD_OK) {
                int idx[2] = {a, b};
                for (int i = 0; i < (pair ? 2 : 1); i++) {
                    float *emb = NULL, *ds = NULL;
                    size_t T = 0;
                    reference *ref = &S->refs[idx[i]];
                    bool good = st_image(f, i, &S->mi, &emb, &ds, &T, NULL) && T == ref->tokens;
                    if (good) {
                        cmp_stats s1 = cmp_f32(emb, ref->emb, T * (size_t)S->mi.out_hidden, 0, 0);
                        cmp_stats s2 =
                            cmp_f32(ds, ref->ds, (size_t)S->mi.n_ds * T * (size_t)S->mi.out_hidden, 0, 0);
                        good = s1.max_rel <= 1e-5 && s2.max_rel <= 1e-5 && !s1.n_nan && !s2.n_nan;
                        if (!good)
                            snprintf(c->note, sizeof c->note, "request %d image %d (%s): max_rel %.3e / %.3e", k, i,
                                     ref->img->name, s1.max_rel, s2.max_rel);
                    }
                    if (good) c->n_images++;
                    else c->n_bad++;
                    free(emb);
                    free(ds);
                }
                st_close(f);
            } else {
                c->n_bad++;
            }
            c->n_ok++;
        }
        resp_free(&r);
    }
    return NULL;
}

static void test_concurrent(suite *S) {
    printf("%d concurrent clients x %d requests\n", N_CLIENTS, PER_CLIENT);
    client *cl = xcalloc(N_CLIENTS, sizeof *cl);
    pthread_t th[N_CLIENTS];
    double t0 = vitd_now();
    for (int i = 0; i < N_CLIENTS; i++) {
        cl[i].S = S;
        cl[i].index = i;
        pthread_create(&th[i], NULL, client_main, &cl[i]);
    }
    int ok = 0, images = 0, bad = 0;
    for (int i = 0; i < N_CLIENTS; i++) {
        pthread_join(th[i], NULL);
        ok += cl[i].n_ok;
        images += cl[i].n_images;
        bad += cl[i].n_bad;
        for (int k = 0; k < PER_CLIENT; k++)
            CHECK_MSG(cl[i].status[k] == 200, "client %d request %d: status %d", i, k, cl[i].status[k]);
        CHECK_MSG(cl[i].n_bad == 0, "client %d: %s", i, cl[i].note);
    }
    printf("  %d requests answered 200, %d images equal to vitd encode (max_rel <= 1e-5), %d differ, %.2f s\n", ok,
           images, bad, vitd_now() - t0);
    CHECK_EQ_INT(N_CLIENTS * PER_CLIENT, ok);
    CHECK_EQ_INT(0, bad);
    S->encode_200 += ok;
    S->images_200 += images;
    free(cl);
}

/* Sends headers, then part of the body, then stalls: the server must close at its body timeout. */
static void test_slow_client(suite *S, int timeout_s) {
    int fd = loopback_connect(S->port, IO_TIMEOUT_S);
    CHECK(fd >= 0);
    if (fd < 0) return;
    char head[256];
    int hn = snprintf(head, sizeof head,
                      "POST /v1/encode HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
                      "Content-Length: %zu\r\n\r\n",
                      S->good->len);
    CHECK(loopback_send_all(fd, head, (size_t)hn) && loopback_send_all(fd, S->good->data, S->good->len / 2));
    double t0 = vitd_now();
    char buf[512];
    ssize_t n;
    do n = recv(fd, buf, sizeof buf, 0);
    while (n > 0 && vitd_now() - t0 < IO_TIMEOUT_S); /* a 408 body, if any, then EOF */
    double waited = vitd_now() - t0;
    bool closed = n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK);
    printf("  %-34s closed by the server after %.2f s (body_timeout_s %d)\n", "slow client", waited, timeout_s);
    CHECK_MSG(closed, "slow client: connection not closed (recv %zd errno %d)", n, errno);
    CHECK_MSG(waited < timeout_s + 3, "slow client: closed after %.2f s, body_timeout_s is %d", waited, timeout_s);
    close(fd);
}

/* An oversized Content-Length is answered 413 right after the headers, before any body byte is sent. */
static void test_oversized(suite *S, size_t max_body) {
    int fd = loopback_connect(S->port, IO_TIMEOUT_S);
    CHECK(fd >= 0);
    if (fd < 0) return;
    char head[256];
    int hn = snprintf(head, sizeof head,
                      "POST /v1/encode HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
                      "Content-Length: %zu\r\n\r\n",
                      max_body + 1);
    CHECK(loopback_send_all(fd, head, (size_t)hn));
    resp r;
    CHECK(read_response(fd, &r, false));
    check_error(&r, 413, "too_large", "max_body_bytes", "oversized body (Content-Length)");
    resp_free(&r);
    close(fd);
    /* a chunked body that grows past the limit: the connection is closed (no answer can be sent mid-upload) */
    fd = loopback_connect(S->port, IO_TIMEOUT_S);
    CHECK(fd >= 0);
    if (fd < 0) return;
    hn = snprintf(head, sizeof head, "POST /v1/encode HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
                  "Transfer-Encoding: chunked\r\n\r\n");
    bool sent = loopback_send_all(fd, head, (size_t)hn);
    char *chunk = xcalloc(1, 65536 + 16);
    size_t total = 0;
    while (sent && total <= max_body + 65536) {
        int cn = snprintf(chunk, 16, "10000\r\n");
        memset(chunk + cn, 'x', 65536);
        memcpy(chunk + cn + 65536, "\r\n", 2);
        sent = loopback_send_all(fd, chunk, (size_t)cn + 65536 + 2);
        total += 65536;
    }
    char buf[256];
    ssize_t n = sent ? recv(fd, buf, sizeof buf, 0) : 0;
    CHECK_MSG(!sent || n <= 0 || (n > 12 && !strncmp(buf + 9, "413", 3)), "chunked oversized body: got %.40s", buf);
    printf("  %-34s connection closed after %zu bytes\n", "oversized chunked body", total);
    free(chunk);
    close(fd);
}

/* A PNG whose IHDR declares width x height, followed by a few bytes of IDAT and IEND (CRCs correct). */
static uint32_t crc32_png(const uint8_t *p, size_t n) {
    uint32_t c = 0xffffffffu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0xedb88320u & (0u - (c & 1u)));
    }
    return c ^ 0xffffffffu;
}
static void put32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24), p[1] = (uint8_t)(v >> 16), p[2] = (uint8_t)(v >> 8), p[3] = (uint8_t)v;
}
static size_t png_header_only(uint8_t *out, uint32_t w, uint32_t h) {
    static const uint8_t sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    size_t o = 0;
    memcpy(out, sig, 8);
    o = 8;
    put32(out + o, 13);
    memcpy(out + o + 4, "IHDR", 4);
    put32(out + o + 8, w);
    put32(out + o + 12, h);
    out[o + 16] = 8, out[o + 17] = 2, out[o + 18] = 0, out[o + 19] = 0, out[o + 20] = 0;
    put32(out + o + 21, crc32_png(out + o + 4, 17));
    o += 25;
    put32(out + o, 4);
    memcpy(out + o + 4, "IDAT", 4);
    memcpy(out + o + 8, "\x78\x9c\x00\x00", 4);
    put32(out + o + 12, crc32_png(out + o + 4, 8));
    o += 16;
    put32(out + o, 0);
    memcpy(out + o + 4, "IEND", 4);
    put32(out + o + 8, crc32_png(out + o + 4, 4));
    return o + 12;
}

static void test_bad_inputs(suite *S, size_t max_body, int max_images, int timeout_s) {
    printf("bad inputs\n");
    resp r;
    image_file trunc_png, trunc_jpg, big, webp;
    CHECK(load_image(&trunc_png, "truncated.png", "image/png"));
    CHECK(load_image(&trunc_jpg, "truncated.jpg", "image/jpeg"));
    CHECK(load_image(&big, "rocket.jpg", "image/jpeg"));
    CHECK(load_image(&webp, "refused.webp", "image/webp"));

    CHECK(http_do(S->port, "POST", "/v1/encode", "Content-Type: image/png\r\n", NULL, 0, &r));
    check_error(&r, 400, "invalid_argument", NULL, "empty body");
    resp_free(&r);
    good_request(S, "empty body");

    CHECK(http_do(S->port, "POST", "/v1/encode", "Content-Type: image/png\r\n", trunc_png.data, trunc_png.len, &r));
    check_error(&r, 422, "bad_image", "image 0", "truncated png");
    resp_free(&r);
    good_request(S, "truncated png");

    CHECK(
        http_do(S->port, "POST", "/v1/encode", "Content-Type: image/jpeg\r\n", trunc_jpg.data, trunc_jpg.len, &r));
    check_error(&r, 422, "bad_image", "image 0", "truncated jpeg");
    resp_free(&r);
    good_request(S, "truncated jpeg");

    /* the failing image of a multipart body is named by its index */
    const image_file *mixed[3] = {S->good, S->good, &trunc_jpg};
    size_t len;
    char *mp = multipart(mixed, 3, NULL, NULL, "xyz", &len);
    CHECK(
        http_do(S->port, "POST", "/v1/encode", "Content-Type: multipart/form-data; boundary=xyz\r\n", mp, len, &r));
    check_error(&r, 422, "bad_image", "image 2", "multipart, 3rd image truncated");
    resp_free(&r);
    free(mp);
    good_request(S, "multipart with a truncated image");

    CHECK(http_do(S->port, "POST", "/v1/encode", "Content-Type: text/plain\r\n", S->good->data, S->good->len, &r));
    check_error(&r, 415, "unsupported", NULL, "wrong content type");
    resp_free(&r);
    good_request(S, "wrong content type");

    CHECK(http_do(S->port, "POST", "/v1/encode", NULL, S->good->data, S->good->len, &r));
    check_error(&r, 415, "unsupported", NULL, "missing content type");
    resp_free(&r);
    good_request(S, "missing content type");

    CHECK(http_do(S->port, "POST", "/v1/encode", "Content-Type: image/webp\r\n", webp.data, webp.len, &r));
    check_error(&r, 415, "unsupported", "image 0", "webp (refused format)");
    resp_free(&r);
    good_request(S, "webp");

    const char *badb64 = "{\"images\": [\"iVBORw0KGgo!!!*notbase64*\"]}";
    CHECK(http_do(S->port, "POST", "/v1/encode", "Content-Type: application/json\r\n", badb64, strlen(badb64), &r));
    check_error(&r, 400, "invalid_argument", NULL, "invalid base64");
    resp_free(&r);
    good_request(S, "invalid base64");

    const char *badjson = "{\"images\": [\"abc\", ";
    CHECK(
        http_do(S->port, "POST", "/v1/encode", "Content-Type: application/json\r\n", badjson, strlen(badjson), &r));
    check_error(&r, 400, "invalid_argument", NULL, "invalid JSON");
    resp_free(&r);
    good_request(S, "invalid JSON");

    const char *remote = "{\"images\": [\"https://example.com/cat.png\"]}";
    CHECK(http_do(S->port, "POST", "/v1/encode", "Content-Type: application/json\r\n", remote, strlen(remote), &r));
    check_error(&r, 400, "invalid_argument", NULL, "remote URL");
    resp_free(&r);
    good_request(S, "remote URL");

    CHECK(http_do(S->port, "POST", "/v1/encode?dtype=float64", "Content-Type: image/png\r\n", S->good->data,
                  S->good->len, &r));
    check_error(&r, 400, "invalid_argument", "dtype", "bad option value");
    resp_free(&r);
    good_request(S, "bad option value");

    /* NULs that would cut a C string short (a black-box test found both accepted as their first part) */
    CHECK(http_do(S->port, "POST", "/v1/encode?dtype=float32%00junk", "Content-Type: image/png\r\n", S->good->data,
                  S->good->len, &r));
    check_error(&r, 400, "invalid_argument", "NUL byte", "query value with %00");
    resp_free(&r);
    char *good64 = b64_encode(S->good->data, S->good->len);
    size_t nul_cap = strlen(good64) + 64;
    char *nul_json = xmalloc(nul_cap);
    snprintf(nul_json, nul_cap, "{\"images\": [\"%s\\u0000!!!garbage\"]}", good64);
    CHECK(http_do(S->port, "POST", "/v1/encode", "Content-Type: application/json\r\n", nul_json, strlen(nul_json),
                  &r));
    check_error(&r, 400, "invalid_argument", "u0000", "JSON string with \\u0000");
    resp_free(&r);
    free(nul_json);
    free(good64);
    good_request(S, "NUL bytes");

    test_oversized(S, max_body);
    good_request(S, "oversized body");

    CHECK(http_do(S->port, "POST", "/v1/encode", "Content-Type: image/jpeg\r\n", big.data, big.len, &r));
    check_error(&r, 413, "too_large", "image 0", "too many pixels (640x427)");
    resp_free(&r);
    good_request(S, "too many pixels");

    uint8_t bomb[128];
    size_t bl = png_header_only(bomb, 100000, 100000);
    CHECK(http_do(S->port, "POST", "/v1/encode", "Content-Type: image/png\r\n", bomb, bl, &r));
    check_error(&r, 413, "too_large", "image 0", "header declares 100000x100000");
    resp_free(&r);
    good_request(S, "huge header");

    const image_file **many = xcalloc((size_t)max_images + 1, sizeof *many);
    for (int i = 0; i <= max_images; i++) many[i] = S->good;
    mp = multipart(many, max_images + 1, NULL, NULL, "many", &len);
    CHECK(http_do(S->port, "POST", "/v1/encode", "Content-Type: multipart/form-data; boundary=many\r\n", mp, len,
                  &r));
    check_error(&r, 413, "too_large", NULL, "too many images");
    resp_free(&r);
    free(mp);
    free(many);
    good_request(S, "too many images");

    mp = multipart(NULL, 0, "deepstack", "false", "noimg", &len);
    CHECK(http_do(S->port, "POST", "/v1/encode", "Content-Type: multipart/form-data; boundary=noimg\r\n", mp, len,
                  &r));
    check_error(&r, 400, "invalid_argument", NULL, "multipart without an image");
    resp_free(&r);
    free(mp);
    good_request(S, "multipart without an image");

    test_slow_client(S, timeout_s);
    good_request(S, "slow client");

    free(trunc_png.data);
    free(trunc_jpg.data);
    free(big.data);
    free(webp.data);
}

/* /metrics parses and counts what this test sent (the counters update when MHD completes a request, just after
 * the client has its answer, so poll briefly until they settle). */
static void test_metrics(suite *S, int n_422, int n_415) {
    printf("metrics\n");
    char *text = NULL;
    double enc200 = -1, e422 = -1, e415 = -1;
    double t0 = vitd_now();
    for (int attempt = 0; attempt < 100000 && vitd_now() - t0 < 10; attempt++) {
        resp r;
        if (!http_do(S->port, "GET", "/metrics", NULL, NULL, 0, &r)) break;
        free(text);
        text = r.body;
        enc200 = metric_value(text, "vitd_requests_total{route=\"/v1/encode\",status=\"200\"}");
        e422 = metric_value(text, "vitd_requests_total{route=\"/v1/encode\",status=\"422\"}");
        e415 = metric_value(text, "vitd_requests_total{route=\"/v1/encode\",status=\"415\"}");
        if ((int)enc200 == S->encode_200 && (int)e422 == n_422 && (int)e415 == n_415) break;
    }
    if (!text) {
        CHECK_MSG(0, "GET /metrics failed");
        return;
    }
    int lines = 0;
    CHECK_MSG(metrics_parse_ok(text, &lines), "metrics text does not parse");
    printf("  %d series lines; encode 200 = %.0f (sent %d), 422 = %.0f (sent %d), 415 = %.0f (sent %d)\n", lines,
           enc200, S->encode_200, e422, n_422, e415, n_415);
    CHECK_EQ_INT(S->encode_200, (long long)enc200);
    CHECK_EQ_INT(n_422, (long long)e422);
    CHECK_EQ_INT(n_415, (long long)e415);
    /* every image answered was encoded, found in the output cache, or waited for an encode in flight */
    double images = metric_value(text, "vitd_images_total");
    double hits = metric_value(text, "vitd_output_cache_requests_total{result=\"hit\"}");
    double waits = metric_value(text, "vitd_output_cache_requests_total{result=\"wait\"}");
    printf("  images encoded %.0f, output-cache hits %.0f, waits %.0f, answered %d\n", images, hits, waits,
           S->images_200);
    CHECK_MSG(images + hits + waits >= S->images_200, "vitd_images_total %.0f + hits %.0f + waits %.0f < %d images "
              "answered", images, hits, waits, S->images_200);
    double bad_image = metric_value(text, "vitd_errors_total{code=\"bad_image\"}");
    CHECK_EQ_INT(n_422, (long long)bad_image);
    double batches = metric_value(text, "vitd_batch_images_count");
    double batch_images = metric_value(text, "vitd_batch_images_sum");
    printf("  %.0f batches, %.0f images, %.2f images per batch\n", batches, batch_images,
           batches > 0 ? batch_images / batches : 0);
    CHECK(batches > 0 && batch_images >= images);
    CHECK(metric_value(text, "vitd_ready") == 1);
    CHECK(metric_value(text, "vitd_request_duration_seconds_count{stage=\"encode\"}") > 0);
    /* malloc's heap at the scrape: a server that loaded a model and encoded holds megabytes, and malloc holds at
     * least what is in use */
    double in_use = metric_value(text, "vitd_heap_bytes{kind=\"in_use\"}");
    double held = metric_value(text, "vitd_heap_bytes{kind=\"held\"}");
    printf("  heap in use %.1f MB, held %.1f MB\n", in_use / 1048576, held / 1048576);
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
    /* the sanitizers' allocator replaces glibc's and answers mallinfo2 with zeros (the server is built like this
     * test): nothing to check here */
    printf("  heap figures not checked: sanitizer build\n");
#else
    CHECK_MSG(in_use > 1048576 && held >= in_use, "vitd_heap_bytes: in_use %.0f, held %.0f", in_use, held);
#endif
    free(text);
}

/* API key: every route but /health and /ready needs it. */
static void test_auth(suite *S, const char *dir, const char *model) {
    printf("api key\n");
    server s;
    const char *extra[] = {"--api-key=s3cret-key", NULL};
    if (!start_server(&s, dir, model, "auth", extra)) {
        CHECK_MSG(0, "auth server did not start");
        server_wait_exit(&s, 5);
        return;
    }
    resp r;
    char v[128];
    CHECK(http_do(s.port, "POST", "/v1/encode", "Content-Type: image/png\r\n", S->good->data, S->good->len, &r));
    check_error(&r, 401, "unauthorized", NULL, "no key");
    CHECK(resp_header(&r, "WWW-Authenticate", v, sizeof v) && strstr(v, "Bearer"));
    resp_free(&r);
    CHECK(http_do(s.port, "POST", "/v1/encode", "Content-Type: image/png\r\nAuthorization: Bearer s3cret-kez\r\n",
                  S->good->data, S->good->len, &r));
    check_error(&r, 401, "unauthorized", NULL, "wrong key");
    resp_free(&r);
    CHECK(http_do(s.port, "POST", "/v1/encode",
                  "Content-Type: image/png\r\nAuthorization: Bearer s3cret-key-longer\r\n", S->good->data,
                  S->good->len, &r));
    check_error(&r, 401, "unauthorized", NULL, "longer key");
    resp_free(&r);
    CHECK(http_do(
        s.port, "POST", "/v1/encode",
        "Content-Type: image/png\r\nAuthorization: Bearer s3cret-key\r\nAccept: application/vnd.safetensors\r\n",
        S->good->data, S->good->len, &r));
    CHECK_EQ_INT(200, r.status);
    CHECK_EQ_INT(1, check_st_answer(&r, &S->mi, &S->good_ref, 1, ST_F32, 1e-5, "with key", false));
    resp_free(&r);
    CHECK(http_do(s.port, "GET", "/metrics", NULL, NULL, 0, &r));
    CHECK_EQ_INT(401, r.status);
    resp_free(&r);
    CHECK(http_do(s.port, "GET", "/v1/model", NULL, NULL, 0, &r));
    CHECK_EQ_INT(401, r.status);
    resp_free(&r);
    CHECK(http_do(s.port, "GET", "/health", NULL, NULL, 0, &r));
    CHECK_EQ_INT(200, r.status);
    resp_free(&r);
    CHECK(http_do(s.port, "GET", "/ready", NULL, NULL, 0, &r));
    CHECK_EQ_INT(200, r.status);
    resp_free(&r);
    kill(s.pid, SIGTERM);
    CHECK_EQ_INT(0, server_wait_exit(&s, 60));
}

/* An image with more patches than batch_max_tokens is not refused: it runs alone in its own batch, and its answer
 * equals `vitd encode`'s. */
static void test_over_budget(suite *S, const char *dir, const char *model) {
    printf("image over the batch budget\n");
    server s;
    const char *extra[] = {"--batch-max-tokens=64", NULL};
    if (!start_server(&s, dir, model, "budget", extra)) {
        CHECK_MSG(0, "budget server did not start");
        server_wait_exit(&s, 5);
        return;
    }
    for (int i = 0; i < 2; i++) {
        resp r;
        CHECK(http_do(s.port, "POST", "/v1/encode",
                      "Content-Type: image/png\r\nAccept: application/vnd.safetensors\r\n", S->good->data,
                      S->good->len, &r));
        CHECK_EQ_INT(200, r.status);
        CHECK_EQ_INT(1, check_st_answer(&r, &S->mi, &S->good_ref, 1, ST_F32, 1e-5, "over the batch budget", false));
        resp_free(&r);
    }
    kill(s.pid, SIGTERM);
    CHECK_EQ_INT(0, server_wait_exit(&s, 60));
}

/* Drain: N requests in flight (held by a long batch delay), SIGTERM, /ready 503 and a new encode 503 while they
 * finish, all N answered 200, exit code 0. */
static void test_drain(suite *S, const char *dir, const char *model) {
    enum { N = 8 };
    printf("drain with %d requests in flight\n", N);
    server s;
    const char *extra[] = {"--batch-delay-ms=1000", "--batch-max-images=64", "--drain-timeout-ms=60000", NULL};
    if (!start_server(&s, dir, model, "drain", extra)) {
        CHECK_MSG(0, "drain server did not start");
        server_wait_exit(&s, 5);
        return;
    }
    /* a client that sends its request and hangs up at once: skipped by the batcher, never encoded */
    int gone_fd = loopback_connect(s.port, IO_TIMEOUT_S);
    char head[256];
    int gn = snprintf(head, sizeof head,
                      "POST /v1/encode HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
                      "X-Request-Id: gone-client-1\r\nContent-Length: %zu\r\n\r\n",
                      S->good->len);
    CHECK(gone_fd >= 0 && loopback_send_all(gone_fd, head, (size_t)gn) &&
          loopback_send_all(gone_fd, S->good->data, S->good->len));
    int fds[N];
    for (int i = 0; i < N; i++) {
        reference *ref = &S->refs[i % S->n_refs];
        fds[i] = loopback_connect(s.port, IO_TIMEOUT_S);
        int hn = snprintf(head, sizeof head, "POST /v1/encode HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: %s\r\n"
                          "Accept: application/vnd.safetensors\r\nContent-Length: %zu\r\n\r\n", ref->img->ctype,
                          ref->img->len);
        CHECK(fds[i] >= 0 && loopback_send_all(fds[i], head, (size_t)hn) &&
              loopback_send_all(fds[i], ref->img->data, ref->img->len));
    }
    /* wait until the server holds all N and the hung-up one (plus the /metrics request); see wait_inflight */
    double inflight = wait_inflight(s.port, NULL, N + 2, 30);
    CHECK_MSG(inflight >= N + 2, "only %.0f requests in flight", inflight);
    if (gone_fd >= 0) close(gone_fd);
    kill(s.pid, SIGTERM);
    /* /ready turns 503 while the held requests finish; a new encode request is refused */
    int ready_status = 0;
    double t0 = vitd_now();
    while (vitd_now() - t0 < 10) {
        resp r;
        if (!http_do(s.port, "GET", "/ready", NULL, NULL, 0, &r)) break;
        ready_status = r.status;
        resp_free(&r);
        if (ready_status == 503) break;
    }
    CHECK_EQ_INT(503, ready_status);
    resp r;
    CHECK(http_do(s.port, "POST", "/v1/encode", "Content-Type: image/png\r\n", S->good->data, S->good->len, &r));
    check_error(&r, 503, "cancelled", "shutting down", "encode during drain");
    char v[64];
    CHECK(resp_header(&r, "Retry-After", v, sizeof v) != NULL);
    resp_free(&r);
    int answered = 0;
    for (int i = 0; i < N; i++) {
        if (fds[i] < 0) continue;
        resp a;
        bool ok = read_response(fds[i], &a, false);
        reference *ref = &S->refs[i % S->n_refs];
        if (ok && a.status == 200 && check_st_answer(&a, &S->mi, &ref, 1, ST_F32, 1e-5, "drained", false) == 1)
            answered++;
        else
            CHECK_MSG(0, "in-flight request %d: status %d", i, ok ? a.status : 0);
        resp_free(&a);
        close(fds[i]);
    }
    printf("  %d of %d in-flight requests answered 200 after SIGTERM\n", answered, N);
    CHECK_EQ_INT(N, answered);
    int code = server_wait_exit(&s, 60);
    CHECK_EQ_INT(0, code);
    /* the access line of the hung-up request: cancelled, never encoded */
    size_t ln = 0;
    char *log = (char *)check_read_file(s.log_path, &ln);
    char *text = xcalloc(ln + 1, 1);
    if (log) memcpy(text, log, ln);
    const char *line = strstr(text, "req=gone-client-1 ");
    char one[1024] = "";
    if (line) {
        const char *e = strchr(line, '\n');
        snprintf(one, sizeof one, "%.*s", (int)(e ? e - line : (long)strlen(line)), line);
    }
    printf("  hung-up client: %s\n", one[0] ? one : "(no access line)");
    /* A lone request starts at once (issue 12), so the hang-up sometimes arrives after its encode began: then it
     * is answered 200 into a closed socket. Otherwise it is skipped, never encoded: answered 503 cancelled, or,
     * when libmicrohttpd saw the closed socket before that answer went out (the scheduler's watcher drops such a
     * job within a moment of its queueing), logged 499 client_closed. (test_serving's leader-gone case and
     * test_sched require the skip.) */
    bool skipped = (strstr(one, "error=cancelled") || strstr(one, "error=client_closed")) &&
                   strstr(one, "encode_ms=0.000");
    bool encoded_first = strstr(one, "status=200") != NULL;
    CHECK_MSG(skipped || encoded_first, "hung-up request neither skipped nor encoded before it left: %s", one);
    free(text);
    free(log);
}

/* request_timeout_ms: a request still queued past its deadline is answered 504 and the server goes on. */
static void test_timeout(suite *S, const char *dir, const char *model) {
    printf("request timeout\n");
    server s;
    const char *extra[] = {"--request-timeout-ms=1", "--batch-delay-ms=100", NULL};
    if (!start_server(&s, dir, model, "timeout", extra)) {
        CHECK_MSG(0, "timeout server did not start");
        server_wait_exit(&s, 5);
        return;
    }
    /* a photograph (chelsea.png: milliseconds of decoding and resizing) always reaches the queue past a 1 ms
     * deadline; the tiny rgb8.png sometimes did not, since a lone request starts at once (issue 12) */
    const image_file *photo = S->refs[0].img;
    for (int i = 0; i < 2; i++) {
        resp r;
        char ctype[96];
        snprintf(ctype, sizeof ctype, "Content-Type: %s\r\n", photo->ctype);
        CHECK(http_do(s.port, "POST", "/v1/encode", ctype, photo->data, photo->len, &r));
        check_error(&r, 504, "timeout", "timed out", "queued past request_timeout_ms");
        resp_free(&r);
    }
    kill(s.pid, SIGTERM);
    CHECK_EQ_INT(0, server_wait_exit(&s, 60));
}

int main(void) {
    signal(SIGPIPE, SIG_IGN);
    char dir[] = "/tmp/vitd_test_http_XXXXXX";
    if (!mkdtemp(dir)) SKIP("cannot create a temporary directory");
    char model[600], log[600];
    snprintf(model, sizeof model, "%s/model", dir);
    snprintf(log, sizeof log, "%s/demo-model.log", dir);
    char *dm[] = {VITD_EXE, "demo-model", "--preset", "tiny", "--out", model, NULL};
    int rc = run_tool(dm, log);
    if (rc != 0) SKIP("`vitd demo-model --preset tiny` failed (exit %d); see %s", rc, log);

    /* fixture images: name, content type */
    static const char *names[][2] = {
        {"chelsea.png", "image/png"}, {"photo_q90_420.jpg", "image/jpeg"}, {"rgb8.png", "image/png"},
        {"photo_progressive.jpg", "image/jpeg"}, {"pal8.png", "image/png"}, {"photo_crop.png", "image/png"},
        {"gray8.png", "image/png"}, {"rgba8.png", "image/png"}, {"bmp24.bmp", "image/bmp"},
        {"jpeg_4x600.jpg", "image/jpeg"}, {"photo_q80_422.jpg", "image/jpeg"}, {"gif.gif", "image/gif"},
    };
    enum { N_IMG = sizeof names / sizeof names[0] };
    image_file imgs[N_IMG];
    for (int i = 0; i < N_IMG; i++)
        if (!load_image(&imgs[i], names[i][0], names[i][1])) SKIP("fixture %s%s missing", IMG_DIR, names[i][0]);

    /* the reference: vitd encode --backend cpu on the same files */
    char ref_path[600];
    snprintf(ref_path, sizeof ref_path, "%s/ref.safetensors", dir);
    snprintf(log, sizeof log, "%s/encode.log", dir);
    char *enc[8 + N_IMG];
    int ne = 0;
    enc[ne++] = arg("%s", VITD_EXE);
    enc[ne++] = arg("encode");
    enc[ne++] = arg("--model=%s", model);
    enc[ne++] = arg("--backend=cpu");
    enc[ne++] = arg("--out=%s", ref_path);
    for (int i = 0; i < N_IMG; i++) enc[ne++] = arg("%s%s", IMG_DIR, names[i][0]);
    enc[ne] = NULL;
    rc = run_tool(enc, log);
    free_args(enc);
    if (rc != 0) SKIP("`vitd encode` failed (exit %d); see %s", rc, log);

    /* the main server: short body timeout for the slow-client case, small limits for the bad inputs */
    const size_t max_body = 4u << 20;
    const int max_images = 4, timeout_s = 2;
    char a_body[64], a_imgs[64], a_to[64];
    snprintf(a_body, sizeof a_body, "--max-body-bytes=%zu", max_body);
    snprintf(a_imgs, sizeof a_imgs, "--max-images-per-request=%d", max_images);
    snprintf(a_to, sizeof a_to, "--body-timeout-s=%d", timeout_s);
    const char *extra[] = {a_body, a_imgs, a_to, "--max-image-pixels=250000", "--batch-delay-ms=5",
                           "--max-connections=512", "--http-threads=4", NULL};
    server srv;
    if (!start_server(&srv, dir, model, "main", extra)) {
        server_wait_exit(&srv, 5);
        CHECK_MSG(0, "vitd serve did not start");
        return check_done("test_http");
    }
    printf("server on 127.0.0.1:%d (log %s/main.log)\n", srv.port, dir);

    suite S = {.port = srv.port};
    /* model info from /v1/model */
    resp r;
    CHECK(http_do(srv.port, "GET", "/v1/model", NULL, NULL, 0, &r));
    cJSON *m = cJSON_ParseWithLength(r.body, r.len);
    const cJSON *vc = m ? cJSON_GetObjectItem(m, "vision_config") : NULL;
    if (!vc) SKIP("/v1/model unusable: %.200s", r.body);
    S.mi.out_hidden = cJSON_GetObjectItem(vc, "out_hidden_size")->valueint;
    const cJSON *dsi = cJSON_GetObjectItem(vc, "deepstack_visual_indexes");
    S.mi.n_ds = cJSON_GetArraySize(dsi);
    for (int k = 0; k < S.mi.n_ds && k < 8; k++) S.mi.ds_layers[k] = cJSON_GetArrayItem(dsi, k)->valueint;
    cJSON_Delete(m);
    resp_free(&r);

    st_file *ref = NULL;
    vitd_err err;
    if (st_open(ref_path, &ref, &err) != VITD_OK) SKIP("reference %s unreadable: %s", ref_path, err.msg);
    reference refs[N_IMG];
    for (int i = 0; i < N_IMG; i++) {
        refs[i].img = &imgs[i];
        if (!st_image(ref, i, &S.mi, &refs[i].emb, &refs[i].ds, &refs[i].tokens, NULL))
            SKIP("reference tensors of image %d missing", i);
        char name[64];
        snprintf(name, sizeof name, "image.%d.grid_thw", i);
        const st_tensor *g = st_find(ref, name);
        int64_t gv[3] = {0, 0, 0};
        if (g && g->nbytes == sizeof gv) memcpy(gv, g->data, sizeof gv);
        for (int k = 0; k < 3; k++) refs[i].grid[k] = (int)gv[k];
    }
    st_close(ref);
    S.refs = refs;
    S.n_refs = N_IMG;
    S.good = &imgs[2]; /* rgb8.png, 61x47 */
    S.good_ref = &refs[2];

    test_routes(&S);
    test_formats(&S);
    test_concurrent(&S);
    test_bad_inputs(&S, max_body, max_images, timeout_s);
    /* 422: truncated png, truncated jpeg, multipart with a truncated image; 415: text/plain, none, webp */
    test_metrics(&S, 3, 3);
    kill(srv.pid, SIGTERM);
    CHECK_EQ_INT(0, server_wait_exit(&srv, 60));

    test_auth(&S, dir, model);
    test_over_budget(&S, dir, model);
    test_timeout(&S, dir, model);
    test_drain(&S, dir, model);

    for (int i = 0; i < N_IMG; i++) {
        free(refs[i].emb);
        free(refs[i].ds);
        free(imgs[i].data);
    }
    int result = check_done("test_http");
    if (result == 0) {
        if (check_rm_tree(dir) != 0) fprintf(stderr, "could not remove %s\n", dir);
    } else {
        fprintf(stderr, "logs kept in %s\n", dir);
    }
    return result;
}
