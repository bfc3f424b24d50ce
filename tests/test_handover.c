/* test_handover.c — the hand-over forms (server/handover/) as pure functions, on synthetic outputs of two images
 * (grids [1,4,6] and [1,2,2], out_hidden 8, two DeepStack layers, values with a few large outliers):
 *   - handover_write: every dtype and segment range equals the per-value conversions; float16 refuses 65520 and
 *     keeps 65504; a grid that is not whole merge windows is refused;
 *   - vLLM parts: options, the answer's parts decoded (strict base64, tests/torch_reader.h) back to the concat
 *     tensor and the grid in [1, 3] or (3,) form; transfer=ec_cache parts carry the grid only;
 *   - the EPD chat request: the proxy's body, the derived id, and every refusal; the answer in both forms;
 *   - KServe v2: JSON and binary requests (and a raw binary one), every refusal, and the answers' JSON and binary
 *     layouts against handover_write. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "arena.h"
#include "body.h"
#include "check.h"
#include "content_id.h"
#include "epd.h"
#include "handover.h"
#include "kserve.h"
#include "torch_reader.h"
#include "util.h"
#include "vllm.h"

enum { D = 8, K = 2, N_IMG = 2 };

typedef struct {
    vitd_grid grid[N_IMG];
    float *emb[N_IMG], *ds[N_IMG];
    reply_image img[N_IMG];
    reply_encode re;
    int64_t rows[N_IMG];
} fixture;

static void fixture_init(fixture *f, int n_images) {
    memset(f, 0, sizeof *f);
    f->grid[0] = (vitd_grid){1, 4, 6};
    f->grid[1] = (vitd_grid){1, 2, 2};
    unsigned long long rng = 42;
    for (int i = 0; i < N_IMG; i++) {
        f->rows[i] = (int64_t)f->grid[i].t * f->grid[i].h * f->grid[i].w / 4;
        size_t n = (size_t)f->rows[i] * D;
        f->emb[i] = xmalloc(n * sizeof(float));
        f->ds[i] = xmalloc(n * K * sizeof(float));
        for (size_t j = 0; j < n; j++) f->emb[i][j] = (float)check_rng_normal(&rng);
        for (size_t j = 0; j < n * K; j++) f->ds[i][j] = (float)check_rng_normal(&rng) * (j % 13 == 0 ? 300 : 1);
        f->img[i] = (reply_image){f->grid[i], f->emb[i], f->ds[i], false};
    }
    static const int layers[K] = {5, 11};
    f->re = (reply_encode){.id = "req-1", .model = "tiny", .out_hidden = D, .n_deepstack = K,
                           .deepstack_layers = layers, .n_images = n_images, .images = f->img,
                           .opts = {.dtype = ST_BF16, .deepstack = true, .layout = LAYOUT_CONCAT}};
}

static void fixture_free(fixture *f) {
    for (int i = 0; i < N_IMG; i++) {
        free(f->emb[i]);
        free(f->ds[i]);
    }
}

/* The expected value of (image i, row t, column c) of the concat tensor. */
static float concat_at(const fixture *f, int i, int64_t t, int64_t c) {
    int64_t seg = c / D, j = c % D;
    return seg == 0 ? f->emb[i][t * D + j] : f->ds[i][((seg - 1) * f->rows[i] + t) * D + j];
}

static uint16_t u16_at(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }

/* ---- handover_write ---- */

static void test_write(void) {
    printf("handover_write\n");
    fixture f;
    fixture_init(&f, 2);
    vitd_err err = {0};
    for (int i = 0; i < N_IMG; i++) {
        handover_src s;
        CHECK_OK(handover_src_of(&f.re, i, 2, &s, &err), &err);
        CHECK(s.rows == f.rows[i] && s.k == K && s.D == D);
        const int ranges[3][2] = {{0, 1}, {1, 1 + K}, {0, 1 + K}};
        const st_dtype dts[3] = {ST_F32, ST_BF16, ST_F16};
        for (int r = 0; r < 3; r++)
            for (int d = 0; d < 3; d++) {
                int s0 = ranges[r][0], s1 = ranges[r][1];
                size_t nb = handover_bytes(&s, s0, s1, dts[d]);
                uint8_t *buf = xmalloc(nb);
                vitd_status st = handover_write(&s, s0, s1, dts[d], buf, &err);
                CHECK_OK(st, &err);
                int64_t width = (int64_t)D * (s1 - s0);
                int bad = 0;
                for (int64_t t = 0; t < s.rows; t++)
                    for (int64_t c = 0; c < width; c++) {
                        float x = concat_at(&f, i, t, c + (int64_t)s0 * D);
                        size_t at = (size_t)(t * width + c);
                        if (dts[d] == ST_F32) bad += memcmp(buf + 4 * at, &x, 4) != 0;
                        else if (dts[d] == ST_BF16) bad += u16_at(buf + 2 * at) != f32_to_bf16(x);
                        else bad += u16_at(buf + 2 * at) != f32_to_f16(x);
                    }
                CHECK_MSG(bad == 0, "image %d segments [%d,%d) %s: %d values differ", i, s0, s1,
                          st_dtype_name(dts[d]), bad);
                free(buf);
            }
    }
    /* bfloat16 storage (the GPU engine's outputs) writes exactly what float32 storage of the same values does */
    {
        handover_src s32, s16;
        CHECK_OK(handover_src_of(&f.re, 0, 2, &s32, &err), &err);
        size_t n = (size_t)f.rows[0] * D;
        uint16_t *he = xmalloc(n * 2), *hd = xmalloc(n * K * 2);
        for (size_t j = 0; j < n; j++) f.emb[0][j] = bf16_to_f32(he[j] = f32_to_bf16(f.emb[0][j]));
        for (size_t j = 0; j < n * K; j++) f.ds[0][j] = bf16_to_f32(hd[j] = f32_to_bf16(f.ds[0][j]));
        s16 = s32;
        s16.emb = he;
        s16.ds = hd;
        s16.bf16 = true;
        const st_dtype dts[3] = {ST_F32, ST_BF16, ST_F16};
        int differ = 0;
        for (int d = 0; d < 3; d++) {
            size_t nb = handover_bytes(&s32, 0, 1 + K, dts[d]);
            uint8_t *a = xmalloc(nb), *b = xmalloc(nb);
            CHECK_OK(handover_write(&s32, 0, 1 + K, dts[d], a, &err), &err);
            CHECK_OK(handover_write(&s16, 0, 1 + K, dts[d], b, &err), &err);
            differ += memcmp(a, b, nb) != 0;
            free(a);
            free(b);
        }
        CHECK_MSG(differ == 0, "bfloat16 storage writes differently in %d dtypes", differ);
        free(he);
        free(hd);
    }
    /* float16's edge: 65504 is kept, 65520 would round to infinity */
    handover_src s;
    handover_src_of(&f.re, 1, 2, &s, &err);
    uint8_t buf[4096];
    f.ds[1][3] = 65504.0f;
    CHECK_OK(handover_write(&s, 0, 1 + K, ST_F16, buf, &err), &err);
    CHECK_OK(handover_check_f16(&s, &err), &err);
    f.ds[1][3] = -65520.0f;
    CHECK_EQ_INT(VITD_E_INVALID_ARG, handover_write(&s, 0, 1 + K, ST_F16, buf, &err));
    CHECK_STR_CONTAINS(err.msg, "image 1");
    CHECK_STR_CONTAINS(err.msg, "float16");
    CHECK_EQ_INT(VITD_E_INVALID_ARG, handover_check_f16(&s, &err));
    CHECK_OK(handover_write(&s, 0, 1 + K, ST_BF16, buf, &err), &err);
    /* DeepStack the answer leaves out (deepstack=false, buffers still there, as a cache entry's are) is neither
     * handed over nor checked: the overflow above no longer fails (it did before the review of issue 12) */
    f.re.opts.deepstack = false;
    CHECK_OK(handover_src_of(&f.re, 1, 2, &s, &err), &err);
    CHECK(s.ds == NULL && s.k == 0);
    CHECK_OK(handover_check_f16(&s, &err), &err);
    f.re.opts.deepstack = true;
    int64_t rows = 0;
    vitd_grid odd = {1, 3, 4}, empty = {1, 0, 4};
    CHECK_EQ_INT(VITD_E_INTERNAL, handover_rows(&odd, 2, 7, &rows, &err));
    CHECK_STR_CONTAINS(err.msg, "image 7");
    CHECK_EQ_INT(VITD_E_INTERNAL, handover_rows(&empty, 2, 0, &rows, &err));
    CHECK_EQ_INT(VITD_E_INTERNAL, handover_write(&s, 1, 1, ST_F32, buf, &err));
    fixture_free(&f);
}

/* ---- vLLM parts ---- */

/* Strict base64 as vLLM decodes it (standard alphabet, padded, nothing else) into a malloc'd buffer. */
static uint8_t *strict_b64(const char *s, size_t *n) {
    size_t l = strlen(s);
    if (l % 4 || strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=") != l) return NULL;
    const char *pad = strchr(s, '=');
    if (pad && (size_t)(pad - s) < l - 2) return NULL;
    uint8_t *out = xmalloc(l / 4 * 3 + 3);
    long got = body_base64_decode(s, l, out);
    if (got < 0) {
        free(out);
        return NULL;
    }
    *n = (size_t)got;
    return out;
}

/* Decodes one archive string of a part; t holds the tensor (buf stays allocated in *keep). */
static bool part_tensor(const cJSON *s, tr_tensor *t, uint8_t **keep) {
    size_t n = 0;
    *keep = cJSON_IsString(s) ? strict_b64(s->valuestring, &n) : NULL;
    if (!*keep) return false;
    bool ok = tr_read(*keep, n, t);
    if (!ok) printf("  archive: %s\n", t->why);
    return ok;
}

static void check_grid_part(const cJSON *g, const vitd_grid *want, bool two_d, const char *what) {
    tr_tensor t;
    uint8_t *keep = NULL;
    bool ok = part_tensor(g, &t, &keep) && !strcmp(t.storage, "LongStorage") && t.numel == 3;
    CHECK_MSG(ok, "%s: grid archive", what);
    if (ok) {
        CHECK_MSG(two_d ? (t.ndim == 2 && t.shape[0] == 1 && t.shape[1] == 3) : (t.ndim == 1 && t.shape[0] == 3),
                  "%s: grid shape of %d dims, want %s", what, t.ndim, two_d ? "[1,3]" : "(3,)");
        int64_t v[3];
        memcpy(v, t.data, 24);
        CHECK_MSG(v[0] == want->t && v[1] == want->h && v[2] == want->w, "%s: grid %lld %lld %lld", what,
                  (long long)v[0], (long long)v[1], (long long)v[2]);
    }
    free(keep);
}

static void test_vllm(void) {
    printf("vLLM image_embeds parts\n");
    arena *a = arena_create(0);
    vllm_options o;
    vitd_err err = {0};
    vllm_options_init(&o, a, 3);
    CHECK_EQ_INT(0, vllm_apply_option(&o, "grid_layout", "1D", &err));
    CHECK(o.grid == VLLM_GRID_1D);
    CHECK_EQ_INT(0, vllm_apply_option(&o, "transfer", "ec_cache", &err));
    CHECK(o.transfer == VLLM_EC_CACHE);
    CHECK_EQ_INT(VITD_E_INVALID_ARG, vllm_apply_option(&o, "grid_layout", "3d", &err));
    CHECK_STR_CONTAINS(err.msg, "grid_layout");
    CHECK_EQ_INT(VITD_E_INVALID_ARG, vllm_apply_option(&o, "transfer", "zmq", &err));
    CHECK_EQ_INT(VITD_E_INVALID_ARG, vllm_apply_option(&o, "uuid", "../etc", &err));
    CHECK_STR_CONTAINS(err.msg, "uuid 0");
    CHECK_EQ_INT(VITD_E_INVALID_ARG, vllm_apply_option(&o, "uuids", NULL, &err));
    for (int i = 0; i < 3; i++) CHECK_EQ_INT(0, vllm_apply_option(&o, "uuids", "u", &err));
    CHECK_EQ_INT(VITD_E_TOO_LARGE, vllm_apply_option(&o, "uuid", "u4", &err));
    CHECK_EQ_INT(1, vllm_apply_option(&o, "layout", "concat", &err));
    CHECK(vllm_grid_2d(&(vllm_options){.grid = VLLM_GRID_AUTO}, 1) && !vllm_grid_2d(&(vllm_options){0}, 2));

    fixture f;
    char *uuids[N_IMG] = {"img-a", "img-b"};
    bool derived[N_IMG] = {false, true};
    const st_dtype dts[3] = {ST_BF16, ST_F16, ST_F32};
    for (int n = 1; n <= N_IMG; n++)
        for (int d = 0; d < 3; d++) {
            fixture_init(&f, n);
            f.re.opts.dtype = dts[d];
            vllm_options_init(&o, a, 8);
            size_t len = 0;
            char *text = vllm_render(&f.re, &o, uuids, derived, 2, &len, &err);
            CHECK_MSG(text && len == strlen(text), "render %d images %s: %s", n, st_dtype_name(dts[d]), err.msg);
            cJSON *root = text ? cJSON_Parse(text) : NULL;
            const cJSON *content = cJSON_GetObjectItem(root, "content"), *data = cJSON_GetObjectItem(root, "data");
            CHECK(cJSON_GetArraySize(content) == n && cJSON_GetArraySize(data) == n);
            for (int i = 0; i < n && i < cJSON_GetArraySize(content); i++) {
                const cJSON *p = cJSON_GetArrayItem(content, i), *ie = cJSON_GetObjectItem(p, "image_embeds");
                CHECK(!strcmp(cJSON_GetObjectItem(p, "type")->valuestring, "image_embeds"));
                CHECK(!strcmp(cJSON_GetObjectItem(p, "uuid")->valuestring, uuids[i]));
                tr_tensor t;
                uint8_t *keep = NULL;
                bool ok = part_tensor(cJSON_GetObjectItem(ie, "image_embeds"), &t, &keep);
                CHECK_MSG(ok, "image %d: embeds archive", i);
                int64_t W = D * (1 + K);
                if (ok) {
                    CHECK_MSG(!strcmp(t.storage, dts[d] == ST_BF16 ? "BFloat16Storage"
                                                 : dts[d] == ST_F16 ? "HalfStorage" : "FloatStorage"),
                              "storage %s", t.storage);
                    CHECK(t.ndim == 2 && t.shape[0] == f.rows[i] && t.shape[1] == W);
                    int bad = 0;
                    for (int64_t r = 0; r < f.rows[i]; r++)
                        for (int64_t c = 0; c < W; c++) {
                            float x = concat_at(&f, i, r, c);
                            size_t at = (size_t)(r * W + c);
                            if (dts[d] == ST_F32) bad += memcmp(t.data + 4 * at, &x, 4) != 0;
                            else bad += u16_at(t.data + 2 * at) != (dts[d] == ST_BF16 ? f32_to_bf16(x) : f32_to_f16(x));
                        }
                    CHECK_MSG(bad == 0, "image %d %s: %d values differ from the concat tensor", i,
                              st_dtype_name(dts[d]), bad);
                }
                free(keep);
                check_grid_part(cJSON_GetObjectItem(ie, "image_grid_thw"), &f.grid[i], n == 1, "auto grid");
                const cJSON *di = cJSON_GetArrayItem(data, i);
                CHECK(!strcmp(cJSON_GetObjectItem(di, "uuid_source")->valuestring, derived[i] ? "derived" : "client"));
                CHECK(cJSON_GetArrayItem(cJSON_GetObjectItem(di, "shape"), 0)->valueint == f.rows[i] &&
                      cJSON_GetArrayItem(cJSON_GetObjectItem(di, "shape"), 1)->valueint == W);
            }
            CHECK((int64_t)cJSON_GetObjectItem(cJSON_GetObjectItem(root, "usage"), "tokens")->valuedouble ==
                  f.rows[0] + (n > 1 ? f.rows[1] : 0));
            cJSON_Delete(root);
            free(text);
            fixture_free(&f);
        }
    /* forced layouts and the ec_cache form */
    fixture_init(&f, 2);
    vllm_options_init(&o, a, 8);
    o.grid = VLLM_GRID_2D;
    o.transfer = VLLM_EC_CACHE;
    size_t len = 0;
    char *text = vllm_render(&f.re, &o, uuids, derived, 2, &len, &err);
    cJSON *root = text ? cJSON_Parse(text) : NULL;
    const cJSON *p = cJSON_GetArrayItem(cJSON_GetObjectItem(root, "content"), 1);
    const cJSON *ie = cJSON_GetObjectItem(p, "image_embeds");
    CHECK_MSG(ie && !cJSON_GetObjectItem(ie, "image_embeds"), "ec_cache part carries embeddings");
    check_grid_part(cJSON_GetObjectItem(ie, "image_grid_thw"), &f.grid[1], true, "2d grid");
    CHECK(!strcmp(cJSON_GetObjectItem(root, "transfer")->valuestring, "ec_cache"));
    cJSON_Delete(root);
    free(text);
    /* float16 refuses what it cannot hold; a broken grid is never handed over */
    o = (vllm_options){0};
    f.re.opts.dtype = ST_F16;
    f.emb[1][5] = 1e5f;
    CHECK(vllm_render(&f.re, &o, uuids, derived, 2, &len, &err) == NULL && err.code == VITD_E_INVALID_ARG);
    CHECK_STR_CONTAINS(err.msg, "float16");
    f.re.opts.dtype = ST_BF16;
    f.img[0].grid.h = 3;
    CHECK(vllm_render(&f.re, &o, uuids, derived, 2, &len, &err) == NULL && err.code == VITD_E_INTERNAL);
    fixture_free(&f);
    arena_free(a);
}

/* ---- EPD ---- */

static vitd_status parse_chat(const char *json, arena *a, epd_request *q, vitd_err *err) {
    return epd_parse((const uint8_t *)json, strlen(json), a, q, err);
}

static void test_epd(void) {
    printf("EPD chat requests and answers\n");
    arena *a = arena_create(0);
    epd_request q;
    vitd_err err = {0};
    /* the proxy's request: one image_url part with its uuid */
    const char *url = "data:image/png;base64,iVBORw0KGgo=";
    char body[1024];
    snprintf(body, sizeof body, "{\"model\":\"Qwen/Qwen3-VL-8B\",\"messages\":[{\"role\":\"user\",\"content\":"
             "[{\"type\":\"image_url\",\"image_url\":{\"url\":\"%s\"},\"uuid\":\"f00d\"}]}],\"stream\":false,"
             "\"max_tokens\":1,\"temperature\":0}", url);
    CHECK_OK(parse_chat(body, a, &q, &err), &err);
    CHECK(!strcmp(q.uuid, "f00d") && !q.derived && !strcmp(q.model, "Qwen/Qwen3-VL-8B"));
    CHECK(q.image.len == 8 && !memcmp(q.image.data, "\x89PNG\r\n\x1a\n", 8));
    /* no uuid: SHA-256 hex of the URL string, as vLLM's proxy names it */
    snprintf(body, sizeof body, "{\"messages\":[{\"role\":\"system\",\"content\":\"\"},{\"role\":\"user\","
             "\"content\":[{\"type\":\"image_url\",\"image_url\":\"%s\"}]}]}", url);
    CHECK_OK(parse_chat(body, a, &q, &err), &err);
    uint8_t h[32];
    char want[65];
    content_id_sha256(url, strlen(url), h);
    for (int i = 0; i < 32; i++) sprintf(want + 2 * i, "%02x", h[i]);
    CHECK_MSG(q.derived && !strcmp(q.uuid, want), "derived uuid %s, want %s", q.uuid, want);
    static const struct {
        const char *body, *needle;
    } bad[] = {
        {"", "empty"},
        {"[1]", "object"},
        {"{\"messages\": 3}", "messages"},
        {"{\"messages\": []}", "messages"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"describe\"}]}", "text"},
        {"{\"messages\":[{\"content\":[{\"type\":\"text\",\"text\":\"hi\"}]}]}", "\"text\" part"},
        {"{\"messages\":[{\"content\":[{\"type\":\"image_url\",\"image_url\":{\"url\":\"data:image/png;base64,AAAA\"}},"
         "{\"type\":\"image_url\",\"image_url\":{\"url\":\"data:image/png;base64,AAAA\"}}]}]}", "second image"},
        {"{\"messages\":[{\"content\":[{\"type\":\"image_url\",\"image_url\":{\"url\":\"https://x.org/a.png\"}}]}]}",
         "remote URLs"},
        {"{\"messages\":[{\"content\":[{\"type\":\"image_url\",\"image_url\":{}}]}]}", "image_url"},
        {"{\"messages\":[{\"content\":[{\"type\":\"image_url\",\"image_url\":{\"url\":\"data:image/png;base64,AAAA\"},"
         "\"uuid\":\"a/b\"}]}]}", "uuid"},
        {"{\"messages\":[{\"content\":[{\"type\":\"image_url\",\"image_url\":{\"url\":\"data:image/png;base64,AAAA\"},"
         "\"uuid\":7}]}]}", "uuid"},
        {"{\"stream\":true,\"messages\":[]}", "stream"},
        {"{\"ec_transfer_params\":{\"consumer_zmq\":\"tcp://x:1\"},\"messages\":[]}", "ZMQ"},
        {"{\"messages\":[{\"content\":[]}]}", "no image_url"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        vitd_status s = parse_chat(bad[i].body, a, &q, &err);
        CHECK_MSG(s == VITD_E_INVALID_ARG && strstr(err.msg, bad[i].needle), "bad body %zu: status %d \"%s\"", i, s,
                  err.msg);
    }
    /* answers */
    snprintf(q.uuid, sizeof q.uuid, "f00d");
    q.model[0] = 0;
    vitd_grid g = {1, 24, 32};
    for (int keyed = 0; keyed < 2; keyed++) {
        size_t len = 0;
        char *text = epd_render(&q, &g, 192, "abc", "served", keyed, &len);
        cJSON *root = text ? cJSON_Parse(text) : NULL;
        CHECK_MSG(root && len == strlen(text), "answer is not JSON: %s", text ? text : "");
        CHECK(!strcmp(cJSON_GetObjectItem(root, "object")->valuestring, "chat.completion"));
        CHECK(!strcmp(cJSON_GetObjectItem(root, "model")->valuestring, "served"));
        CHECK(cJSON_GetObjectItem(cJSON_GetObjectItem(root, "usage"), "prompt_tokens")->valueint == 192);
        const cJSON *ec = cJSON_GetObjectItem(root, "ec_transfer_params"), *grid;
        if (!keyed) {
            const cJSON *it = cJSON_GetArrayItem(cJSON_GetObjectItem(ec, "ec_items"), 0);
            CHECK(!strcmp(cJSON_GetObjectItem(it, "mm_hash")->valuestring, "f00d"));
            grid = cJSON_GetObjectItem(it, "image_grid_thw");
        } else {
            grid = cJSON_GetObjectItem(cJSON_GetObjectItem(cJSON_GetObjectItem(ec, "f00d"), "metadata"),
                                       "image_grid_thw");
        }
        CHECK_MSG(cJSON_GetArraySize(grid) == 3 && cJSON_GetArrayItem(grid, 1)->valueint == 24 &&
                      cJSON_GetArrayItem(grid, 2)->valueint == 32, "%s form: grid", keyed ? "keyed" : "items");
        cJSON_Delete(root);
        free(text);
    }
    arena_free(a);
}

/* ---- KServe v2 ---- */

static const kserve_model k_model = {.model = "tiny", .n_deepstack = K, .max_images = 4, .default_dtype = ST_F32};

static vitd_status parse_v2(const char *json, const uint8_t *bin, size_t bin_len, bool header, arena *a,
                            kserve_request *q, vitd_err *err) {
    size_t jl = strlen(json);
    uint8_t *body = xmalloc(jl + bin_len + 1);
    memcpy(body, json, jl);
    if (bin_len) memcpy(body + jl, bin, bin_len);
    /* spans point into the body: keep it in the arena */
    uint8_t *kept = arena_alloc(a, jl + bin_len + 1);
    memcpy(kept, body, jl + bin_len);
    free(body);
    return kserve_parse(kept, jl + bin_len, header ? (long long)jl : -1, &k_model, a, q, err);
}

static size_t put_element(uint8_t *p, const char *s) {
    uint32_t l = (uint32_t)strlen(s);
    memcpy(p, &l, 4);
    memcpy(p + 4, s, l);
    return 4 + l;
}

static void test_kserve_parse(void) {
    printf("KServe v2 requests\n");
    arena *a = arena_create(0);
    kserve_request q;
    vitd_err err = {0};
    /* JSON: base64 images, default outputs */
    CHECK_OK(parse_v2("{\"id\":\"r7\",\"inputs\":[{\"name\":\"IMAGE\",\"datatype\":\"BYTES\",\"shape\":[2],"
                      "\"data\":[\"aGVsbG8=\",\"d29ybGQ=\"]}]}", NULL, 0, false, a, &q, &err), &err);
    CHECK(q.n_images == 2 && q.images[1].len == 5 && !memcmp(q.images[1].data, "world", 5) && !strcmp(q.id, "r7"));
    CHECK(q.n_out == 4 && q.out[0] == KS_EMBEDS && q.out[1] == KS_DEEPSTACK && q.out[3] == KS_NUM_TOKENS &&
          !q.any_binary);
    /* [N, 1], nested data, data: URLs, explicit outputs, content_type base64 */
    CHECK_OK(parse_v2("{\"inputs\":[{\"name\":\"IMAGE\",\"datatype\":\"BYTES\",\"shape\":[2,1],\"parameters\":"
                      "{\"content_type\":\"base64\"},\"data\":[[\"aGVsbG8=\"],[\"data:image/png;base64,d29ybGQ=\"]]}],"
                      "\"outputs\":[{\"name\":\"GRID_THW\"},{\"name\":\"CONCAT\",\"parameters\":{\"binary_data\":true,"
                      "\"datatype\":\"BF16\"}}]}", NULL, 0, false, a, &q, &err), &err);
    CHECK(q.n_images == 2 && q.n_out == 2 && q.out[1] == KS_CONCAT && q.binary[KS_CONCAT] &&
          q.dtype[KS_CONCAT] == ST_BF16 && !q.binary[KS_GRID_THW] && q.any_binary);
    /* binary: two elements after the JSON; the spans point into the body */
    uint8_t bin[64];
    size_t bl = put_element(bin, "first");
    bl += put_element(bin + bl, "second!");
    char json[256];
    snprintf(json, sizeof json, "{\"inputs\":[{\"name\":\"IMAGE\",\"datatype\":\"BYTES\",\"shape\":[2],"
             "\"parameters\":{\"binary_data_size\":%zu}}],\"parameters\":{\"binary_data_output\":true,"
             "\"datatype\":\"FP16\"}}", bl);
    CHECK_OK(parse_v2(json, bin, bl, true, a, &q, &err), &err);
    CHECK(q.n_images == 2 && q.images[1].len == 7 && !memcmp(q.images[1].data, "second!", 7));
    CHECK(q.binary[KS_EMBEDS] && q.dtype[KS_EMBEDS] == ST_F16 && q.binary[KS_NUM_TOKENS]);
    /* binary_data_output holds for listed outputs too, unless an output's own binary_data says false (Triton's
     * rule; a review found listed outputs answered in JSON, and a BF16 request refused) */
    CHECK_OK(parse_v2("{\"inputs\":[{\"name\":\"IMAGE\",\"datatype\":\"BYTES\",\"shape\":[1],\"data\":"
                      "[\"aGVsbG8=\"]}],\"parameters\":{\"binary_data_output\":true,\"datatype\":\"BF16\"},"
                      "\"outputs\":[{\"name\":\"EMBEDS\"},{\"name\":\"GRID_THW\",\"parameters\":"
                      "{\"binary_data\":false}}]}", NULL, 0, false, a, &q, &err), &err);
    CHECK(q.n_out == 2 && q.binary[KS_EMBEDS] && q.dtype[KS_EMBEDS] == ST_BF16 && !q.binary[KS_GRID_THW]);
    /* the id is echoed whole (it was cut at 256 bytes, splitting a UTF-8 character) */
    char long_id[400], idjson[700];
    memset(long_id, 'a', 299);
    memcpy(long_id + 299, "\xc3\xa9", 3); /* e-acute and the terminator */
    snprintf(idjson, sizeof idjson, "{\"id\":\"%s\",\"inputs\":[{\"name\":\"IMAGE\",\"datatype\":\"BYTES\","
             "\"shape\":[1],\"data\":[\"aGVsbG8=\"]}]}", long_id);
    CHECK_OK(parse_v2(idjson, NULL, 0, false, a, &q, &err), &err);
    CHECK(q.id && !strcmp(q.id, long_id));
    /* a raw binary request (header 0): the body is the input's data */
    CHECK_OK(kserve_parse(bin, bl, 0, &k_model, a, &q, &err), &err);
    CHECK(q.n_images == 2 && q.any_binary);
    static const struct {
        const char *json;
        bool header;
        const char *needle;
    } bad[] = {
        {"", false, "empty"},
        {"{", false, "parse"},
        {"[]", false, "object"},
        {"{\"id\":5,\"inputs\":[]}", false, "'id'"},
        {"{\"inputs\":[]}", false, "exactly one"},
        {"{\"inputs\":[{\"name\":\"PIXELS\",\"datatype\":\"BYTES\",\"shape\":[1],\"data\":[\"AA==\"]}]}", false,
         "unexpected inference input 'PIXELS'"},
        {"{\"inputs\":[{\"name\":\"IMAGE\",\"datatype\":\"FP32\",\"shape\":[1],\"data\":[1]}]}", false, "BYTES"},
        {"{\"inputs\":[{\"name\":\"IMAGE\",\"datatype\":\"BYTES\",\"shape\":[1,2],\"data\":[\"AA==\",\"AA==\"]}]}",
         false, "[N, 1]"},
        {"{\"inputs\":[{\"name\":\"IMAGE\",\"datatype\":\"BYTES\",\"shape\":[0],\"data\":[]}]}", false, "no image"},
        {"{\"inputs\":[{\"name\":\"IMAGE\",\"datatype\":\"BYTES\",\"shape\":[2],\"data\":[\"AA==\"]}]}", false,
         "another number"},
        {"{\"inputs\":[{\"name\":\"IMAGE\",\"datatype\":\"BYTES\",\"shape\":[1],\"data\":[3]}]}", false,
         "another kind"},
        {"{\"inputs\":[{\"name\":\"IMAGE\",\"datatype\":\"BYTES\",\"shape\":[1],\"data\":[\"AA==\"],"
         "\"parameters\":{\"binary_data_size\":4}}]}", true, "exactly one"},
        {"{\"inputs\":[{\"name\":\"IMAGE\",\"datatype\":\"BYTES\",\"shape\":[1],\"parameters\":"
         "{\"binary_data_size\":9}}]}", false, "Inference-Header-Content-Length"},
        {"{\"inputs\":[{\"name\":\"IMAGE\",\"datatype\":\"BYTES\",\"shape\":[1],\"parameters\":"
         "{\"content_type\":\"str\"},\"data\":[\"png\"]}]}", false, "content_type"},
        {"{\"inputs\":[{\"name\":\"IMAGE\",\"datatype\":\"BYTES\",\"shape\":[9],\"data\":[]}]}", false,
         "max_images"},
        {"{\"inputs\":[{\"name\":\"IMAGE\",\"datatype\":\"BYTES\",\"shape\":[1],\"data\":[\"AA==\"]}],"
         "\"outputs\":[{\"name\":\"LOGITS\"}]}", false, "unexpected inference output 'LOGITS'"},
        {"{\"inputs\":[{\"name\":\"IMAGE\",\"datatype\":\"BYTES\",\"shape\":[1],\"data\":[\"AA==\"]}],"
         "\"outputs\":[{\"name\":\"EMBEDS\"},{\"name\":\"EMBEDS\"}]}", false, "twice"},
        {"{\"inputs\":[{\"name\":\"IMAGE\",\"datatype\":\"BYTES\",\"shape\":[1],\"data\":[\"AA==\"]}],"
         "\"outputs\":[{\"name\":\"EMBEDS\",\"parameters\":{\"datatype\":\"BF16\"}}]}", false, "via JSON"},
        {"{\"inputs\":[{\"name\":\"IMAGE\",\"datatype\":\"BYTES\",\"shape\":[1],\"data\":[\"AA==\"]}],"
         "\"parameters\":{\"datatype\":\"INT8\"}}", false, "FP32, BF16, FP16"},
        {"{\"inputs\":[{\"name\":\"IMAGE\",\"datatype\":\"BYTES\",\"shape\":[1],\"data\":[\"http://x/y.png\"]}]}",
         false, "remote URLs"},
        {"{\"inputs\":[{\"name\":\"IMAGE\",\"datatype\":\"BYTES\",\"shape\":[1e300],\"data\":[]}]}", false,
         "non-negative integers"},
        {"{\"inputs\":[{\"name\":\"IMAGE\",\"datatype\":\"BYTES\",\"shape\":[1],\"parameters\":"
         "{\"binary_data_size\":0.5}}]}", true, "binary_data_size"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        vitd_status s = parse_v2(bad[i].json, NULL, 0, bad[i].header, a, &q, &err);
        CHECK_MSG(s < 0 && strstr(err.msg, bad[i].needle), "bad request %zu: status %d \"%s\" (want \"%s\")", i, s,
                  err.msg, bad[i].needle);
    }
    /* binary sizes that do not add up */
    snprintf(json, sizeof json, "{\"inputs\":[{\"name\":\"IMAGE\",\"datatype\":\"BYTES\",\"shape\":[2],"
             "\"parameters\":{\"binary_data_size\":%zu}}]}", bl - 2);
    CHECK(parse_v2(json, bin, bl, true, a, &q, &err) == VITD_E_INVALID_ARG);
    snprintf(json, sizeof json, "{\"inputs\":[{\"name\":\"IMAGE\",\"datatype\":\"BYTES\",\"shape\":[1],"
             "\"parameters\":{\"binary_data_size\":%zu}}]}", bl);
    CHECK(parse_v2(json, bin, bl, true, a, &q, &err) == VITD_E_INVALID_ARG);
    snprintf(json, sizeof json, "{\"inputs\":[{\"name\":\"IMAGE\",\"datatype\":\"BYTES\",\"shape\":[1],"
             "\"parameters\":{\"binary_data_size\":%zu}}]}", (size_t)4 + 5); /* the first element only */
    CHECK(parse_v2(json, bin, bl, true, a, &q, &err) == VITD_E_INVALID_ARG);
    CHECK_STR_CONTAINS(err.msg, "additional input data");
    CHECK(kserve_parse(bin, bl, (long long)bl + 1, &k_model, a, &q, &err) == VITD_E_INVALID_ARG);
    /* a NUL after the JSON header is not whitespace */
    static const char nul[] = "{\"inputs\":[{\"name\":\"IMAGE\",\"datatype\":\"BYTES\",\"shape\":[1],"
                              "\"data\":[\"aGk=\"]}]}\0";
    CHECK(kserve_parse((const uint8_t *)nul, sizeof nul, (long long)sizeof nul, &k_model, a, &q, &err) ==
          VITD_E_INVALID_ARG);
    /* DEEPSTACK exists only with DeepStack layers */
    kserve_model flat = k_model;
    flat.n_deepstack = 0;
    const char *ds = "{\"inputs\":[{\"name\":\"IMAGE\",\"datatype\":\"BYTES\",\"shape\":[1],\"data\":[\"AA==\"]}],"
                     "\"outputs\":[{\"name\":\"DEEPSTACK\"}]}";
    CHECK(kserve_parse((const uint8_t *)ds, strlen(ds), -1, &flat, a, &q, &err) == VITD_E_INVALID_ARG);
    arena_free(a);
}

static void test_kserve_render(void) {
    printf("KServe v2 answers\n");
    fixture f;
    fixture_init(&f, 2);
    vitd_err err = {0};
    int64_t rows = f.rows[0] + f.rows[1];
    /* JSON: FP32 EMBEDS, GRID_THW, NUM_TOKENS */
    kserve_request q = {.id = "r1", .n_out = 3, .out = {KS_EMBEDS, KS_GRID_THW, KS_NUM_TOKENS}};
    q.dtype[KS_EMBEDS] = ST_F32;
    size_t len = 0, jl = 1;
    uint8_t *body = kserve_render(&q, &f.re, 2, &len, &jl, &err);
    cJSON *root = body ? cJSON_ParseWithLength((const char *)body, len) : NULL;
    CHECK_MSG(root && jl == 0, "JSON answer: %s", err.msg);
    CHECK(!strcmp(cJSON_GetObjectItem(root, "id")->valuestring, "r1") &&
          !strcmp(cJSON_GetObjectItem(root, "model_version")->valuestring, "1"));
    const cJSON *outs = cJSON_GetObjectItem(root, "outputs");
    const cJSON *emb = cJSON_GetArrayItem(outs, 0), *data = cJSON_GetObjectItem(emb, "data");
    CHECK(cJSON_GetArrayItem(cJSON_GetObjectItem(emb, "shape"), 0)->valueint == rows &&
          cJSON_GetArraySize(data) == rows * D);
    int bad = 0, at = 0;
    for (int i = 0; i < 2; i++)
        for (int64_t t = 0; t < f.rows[i]; t++)
            for (int c = 0; c < D; c++, at++) bad += (float)cJSON_GetArrayItem(data, at)->valuedouble != concat_at(&f, i, t, c);
    CHECK_MSG(bad == 0, "EMBEDS: %d JSON numbers differ", bad);
    const cJSON *nt = cJSON_GetObjectItem(cJSON_GetArrayItem(outs, 2), "data");
    CHECK(cJSON_GetArrayItem(nt, 0)->valueint == f.rows[0] && cJSON_GetArrayItem(nt, 1)->valueint == f.rows[1]);
    const cJSON *gt = cJSON_GetObjectItem(cJSON_GetArrayItem(outs, 1), "data");
    CHECK(cJSON_GetArraySize(gt) == 6 && cJSON_GetArrayItem(gt, 4)->valueint == 2);
    cJSON_Delete(root);
    free(body);
    /* binary: BF16 CONCAT, FP16 DEEPSTACK, INT64 NUM_TOKENS in binary; FP32 EMBEDS in JSON */
    kserve_request b = {.n_out = 4, .out = {KS_CONCAT, KS_EMBEDS, KS_DEEPSTACK, KS_NUM_TOKENS}, .any_binary = true};
    b.binary[KS_CONCAT] = b.binary[KS_DEEPSTACK] = b.binary[KS_NUM_TOKENS] = true;
    b.dtype[KS_CONCAT] = ST_BF16;
    b.dtype[KS_DEEPSTACK] = ST_F16;
    b.dtype[KS_EMBEDS] = ST_F32;
    body = kserve_render(&b, &f.re, 2, &len, &jl, &err);
    root = body && jl ? cJSON_ParseWithLength((const char *)body, jl) : NULL;
    CHECK_MSG(root, "binary answer: %s", err.msg);
    outs = cJSON_GetObjectItem(root, "outputs");
    size_t want[4] = {(size_t)rows * D * (1 + K) * 2, 0, (size_t)rows * D * K * 2, 2 * 8}, off = jl;
    for (int o = 0; o < 4; o++) {
        const cJSON *oj = cJSON_GetArrayItem(outs, o), *pj = cJSON_GetObjectItem(oj, "parameters");
        size_t got = pj ? (size_t)cJSON_GetObjectItem(pj, "binary_data_size")->valuedouble : 0;
        CHECK_MSG(got == want[o] && (o == 1) == (cJSON_GetObjectItem(oj, "data") != NULL),
                  "output %d: binary_data_size %zu, want %zu", o, got, want[o]);
    }
    CHECK(!strcmp(cJSON_GetObjectItem(cJSON_GetArrayItem(outs, 0), "datatype")->valuestring, "BF16"));
    CHECK_MSG(len == jl + want[0] + want[2] + want[3], "answer %zu bytes", len);
    /* the bytes: CONCAT rows of image 0 then image 1, then DEEPSTACK, then NUM_TOKENS */
    bad = 0;
    const uint8_t *p = body + off;
    for (int i = 0; i < 2; i++)
        for (int64_t t = 0; t < f.rows[i]; t++)
            for (int c = 0; c < D * (1 + K); c++, p += 2) bad += u16_at(p) != f32_to_bf16(concat_at(&f, i, t, c));
    for (int i = 0; i < 2; i++)
        for (int64_t t = 0; t < f.rows[i]; t++)
            for (int c = D; c < D * (1 + K); c++, p += 2) bad += u16_at(p) != f32_to_f16(concat_at(&f, i, t, c));
    int64_t n0, n1;
    memcpy(&n0, p, 8);
    memcpy(&n1, p + 8, 8);
    CHECK_MSG(bad == 0 && n0 == f.rows[0] && n1 == f.rows[1], "binary data: %d values differ, tokens %lld %lld", bad,
              (long long)n0, (long long)n1);
    cJSON_Delete(root);
    free(body);
    /* FP16 overflow is refused */
    f.ds[0][0] = 7e4f;
    CHECK(kserve_render(&b, &f.re, 2, &len, &jl, &err) == NULL && err.code == VITD_E_INVALID_ARG);
    /* metadata and errors are JSON */
    char *t = kserve_model_metadata("tiny", D, K, &len);
    root = t ? cJSON_Parse(t) : NULL;
    CHECK(root && cJSON_GetArraySize(cJSON_GetObjectItem(root, "outputs")) == 5 &&
          !strcmp(cJSON_GetArrayItem(cJSON_GetObjectItem(root, "versions"), 0)->valuestring, "1"));
    cJSON_Delete(root);
    free(t);
    t = kserve_model_metadata("tiny", D, 0, &len);
    root = t ? cJSON_Parse(t) : NULL;
    CHECK(root && cJSON_GetArraySize(cJSON_GetObjectItem(root, "outputs")) == 4);
    cJSON_Delete(root);
    free(t);
    t = kserve_server_metadata("0.1.0", &len);
    CHECK(t && strstr(t, "\"binary_tensor_data\"") && len == strlen(t));
    free(t);
    t = kserve_error("bad \"x\"\n", &len);
    root = t ? cJSON_Parse(t) : NULL;
    CHECK(root && !strcmp(cJSON_GetObjectItem(root, "error")->valuestring, "bad \"x\"\n"));
    cJSON_Delete(root);
    free(t);
    fixture_free(&f);
}

int main(void) {
    test_write();
    test_vllm();
    test_epd();
    test_kserve_parse();
    test_kserve_render();
    return check_done("test_handover");
}
