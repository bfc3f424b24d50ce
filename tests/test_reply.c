/* labels: unit */
/* test_reply.c — server/reply.c: the status -> HTTP table, error bodies (escaping, invalid UTF-8), the float
 * formatter (round trip through strtof and strtod+cast, shortest digits), JSON answers parsed back with cJSON
 * (values exact, shapes, deepstack layers, layout concat, dtype rounding, NaN -> null), base64 answers decoded to
 * the exact bytes, safetensors answers read back with st_open_memory, and the rendering speed of a 4 x 256 x 4096
 * float answer (printed, not asserted). */
#include <cJSON.h>
#include <float.h>
#include <stdint.h>

#include "body.h"
#include "check.h"
#include "reply.h"
#include "safetensors.h"
#include "util.h"

/* ---- status table and errors ---- */

static void test_http_status(void) {
    CHECK_EQ_INT(200, reply_http_status(VITD_OK));
    CHECK_EQ_INT(400, reply_http_status(VITD_E_INVALID_ARG));
    CHECK_EQ_INT(422, reply_http_status(VITD_E_BAD_IMAGE));
    CHECK_EQ_INT(415, reply_http_status(VITD_E_UNSUPPORTED));
    CHECK_EQ_INT(413, reply_http_status(VITD_E_TOO_LARGE));
    CHECK_EQ_INT(500, reply_http_status(VITD_E_IO));
    CHECK_EQ_INT(500, reply_http_status(VITD_E_MODEL));
    CHECK_EQ_INT(503, reply_http_status(VITD_E_NOMEM));
    CHECK_EQ_INT(500, reply_http_status(VITD_E_GPU));
    CHECK_EQ_INT(503, reply_http_status(VITD_E_BUSY));
    CHECK_EQ_INT(504, reply_http_status(VITD_E_TIMEOUT));
    CHECK_EQ_INT(503, reply_http_status(VITD_E_CANCELLED));
    CHECK_EQ_INT(500, reply_http_status(VITD_E_INTERNAL));
    CHECK_EQ_INT(500, reply_http_status((vitd_status)-99));
}

/* Parses an error body and returns its "error" object's field (or NULL). */
static const cJSON *err_field(const cJSON *root, const char *key) {
    return cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(root, "error"), key);
}

static void test_error_json(void) {
    const char *msg = "image 2: bad \"quote\" \\ back\nslash\ttab\x01\x1f ctrl, caf\xc3\xa9 \xe2\x82\xac ok";
    size_t len = 0;
    char *j = reply_error_json("invalid_argument", msg, "req-7", &len);
    CHECK(j != NULL);
    CHECK_EQ_INT(strlen(j), len);
    CHECK(len > 0 && j[len - 1] == '\n');
    CHECK_STR_CONTAINS(j, "\\\"quote\\\"");
    CHECK_STR_CONTAINS(j, "\\n");
    CHECK_STR_CONTAINS(j, "\\u0001");
    CHECK_STR_CONTAINS(j, "\\u001f");
    for (size_t i = 0; i < len - 1; i++) CHECK_MSG((unsigned char)j[i] >= 0x20, "raw control byte at %zu", i);
    cJSON *root = cJSON_Parse(j);
    CHECK_MSG(root != NULL, "error body is not JSON: %s", j);
    const cJSON *m = err_field(root, "message");
    CHECK(cJSON_IsString(m) && !strcmp(m->valuestring, msg)); /* escaping is lossless for valid UTF-8 */
    const cJSON *code = err_field(root, "code"), *rid = err_field(root, "request_id");
    CHECK(cJSON_IsString(code) && !strcmp(code->valuestring, "invalid_argument"));
    CHECK(cJSON_IsString(rid) && !strcmp(rid->valuestring, "req-7"));
    cJSON_Delete(root);
    free(j);

    /* invalid UTF-8 (lone continuation, truncated sequence, overlong, surrogate) becomes U+FFFD; no request id */
    j = reply_error_json("bad_image", "x\x80y\xc3z\xc0\xafw\xed\xa0\x80v", NULL, &len);
    root = cJSON_Parse(j);
    CHECK_MSG(root != NULL, "error body is not JSON: %s", j);
    m = err_field(root, "message");
    CHECK(cJSON_IsString(m));
    if (cJSON_IsString(m)) {
        CHECK_STR_CONTAINS(m->valuestring, "x\xef\xbf\xbdy\xef\xbf\xbdz");
        CHECK(m->valuestring[strlen(m->valuestring) - 1] == 'v');
    }
    CHECK(cJSON_IsNull(err_field(root, "request_id")));
    cJSON_Delete(root);
    free(j);
}

/* ---- float formatting ---- */

static int shortest_digits(float f) {
    char b[64];
    for (int n = 1; n <= 9; n++) {
        snprintf(b, sizeof b, "%.*e", n - 1, (double)f);
        if (strtof(b, NULL) == f) return n;
    }
    return 99;
}

/* Significant digits in a JSON number as written. */
static int sig_digits(const char *s) {
    char m[32];
    int j = 0;
    for (const char *p = s; *p && *p != 'e'; p++)
        if (*p >= '0' && *p <= '9') m[j++] = *p;
    m[j] = '\0';
    char *q = m;
    while (*q == '0') q++;
    int L = (int)strlen(q);
    while (L > 1 && q[L - 1] == '0') L--;
    return L;
}

static void test_format_f32(void) {
    struct { float f; const char *want; } fixed[] = {
        {0.0f, "0"}, {-0.0f, "-0"}, {1.0f, "1"}, {-2.5f, "-2.5"}, {0.1f, "0.1"}, {100.0f, "100"},
        {1e10f, "1e10"}, {1e-7f, "1e-7"}, {0.001f, "1e-3"}, {0.00123f, "0.00123"}, {123456.0f, "123456"},
        {16777216.0f, "16777216"},
        {0.3f, "0.3"}, {-1234.5f, "-1234.5"}, {3e-15f, "3e-15"},
        /* beyond 1e+-22 in the last step: 9 digits, still exact */
        {FLT_MAX, "3.40282347e38"}, {FLT_MIN, "1.17549435e-38"}, {1.4e-45f, "1.40129846e-45"},
        {NAN, "null"}, {INFINITY, "null"}, {-INFINITY, "null"},
    };
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++) {
        char b[32];
        int n = reply_format_f32(b, fixed[i].f);
        b[n] = '\0';
        CHECK_MSG(!strcmp(b, fixed[i].want), "%.9g printed as %s, want %s", (double)fixed[i].f, b, fixed[i].want);
    }
    /* random bit patterns over every exponent, and typical embedding values */
    unsigned long long rng = 12345;
    long bad_f = 0, bad_d = 0, not_shortest = 0, in_range = 0, n_total = 0, too_long = 0;
    for (int i = 0; i < 2000000; i++) {
        uint32_t u = (uint32_t)check_rng_next(&rng);
        if (i % 2) {
            float g = (float)(check_rng_normal(&rng) * 0.05);
            memcpy(&u, &g, 4);
        }
        float f;
        memcpy(&f, &u, 4);
        if (isnan(f) || isinf(f)) continue;
        char b[32];
        int n = reply_format_f32(b, f);
        if (n > 15) too_long++;
        b[n] = '\0';
        n_total++;
        float g1 = strtof(b, NULL), g2 = (float)strtod(b, NULL);
        if (memcmp(&g1, &f, 4)) { if (bad_f++ < 5) fprintf(stderr, "  strtof(%s) != %08x\n", b, u); }
        if (memcmp(&g2, &f, 4)) { if (bad_d++ < 5) fprintf(stderr, "  (float)strtod(%s) != %08x\n", b, u); }
        if (fabsf(f) >= 1e-15f && fabsf(f) < 1e22f && f != 0) {
            in_range++;
            if (sig_digits(b) != shortest_digits(f) && not_shortest++ < 5)
                fprintf(stderr, "  %s is not shortest (%d digits)\n", b, shortest_digits(f));
        }
    }
    printf("  format_f32: %ld values, %ld strtof mismatches, %ld strtod+cast mismatches, %ld of %ld in "
           "[1e-15, 1e22) not shortest\n", n_total, bad_f, bad_d, not_shortest, in_range);
    CHECK_EQ_INT(0, bad_f);
    CHECK_EQ_INT(0, bad_d);
    CHECK_EQ_INT(0, not_shortest);
    CHECK_EQ_INT(0, too_long);
}

/* ---- encode answers ---- */

typedef struct {
    int n_images, D, nd;
    int layers[3];
    vitd_grid grids[3];
    float *emb[3], *ds[3];
    reply_image ri[3];
    reply_encode r;
} fixture;

static int64_t tokens_of(const vitd_grid *g) { return (int64_t)g->t * g->h * g->w / 4; }

/* Three images of different grids, D = 24, three deepstack layers (5, 11, 17), seeded normal values with a few
 * huge, tiny, negative-zero, NaN and infinite entries. */
static void fixture_init(fixture *f, unsigned long long seed) {
    memset(f, 0, sizeof *f);
    f->n_images = 3;
    f->D = 24;
    f->nd = 3;
    f->layers[0] = 5, f->layers[1] = 11, f->layers[2] = 17;
    f->grids[0] = (vitd_grid){1, 4, 6};
    f->grids[1] = (vitd_grid){1, 2, 2};
    f->grids[2] = (vitd_grid){1, 6, 4};
    unsigned long long rng = seed;
    for (int i = 0; i < 3; i++) {
        int64_t n = tokens_of(&f->grids[i]) * f->D;
        f->emb[i] = malloc((size_t)n * sizeof(float));
        f->ds[i] = malloc((size_t)(n * f->nd) * sizeof(float));
        for (int64_t k = 0; k < n; k++) f->emb[i][k] = (float)check_rng_normal(&rng);
        for (int64_t k = 0; k < n * f->nd; k++) f->ds[i][k] = (float)(check_rng_normal(&rng) * 3.0);
        f->ri[i] = (reply_image){f->grids[i], f->emb[i], f->ds[i], false};
    }
    f->emb[0][1] = 3.0e30f;
    f->emb[0][2] = -1.5e-30f;
    f->emb[0][3] = -0.0f;
    f->emb[1][5] = 70000.0f; /* beyond float16: inf in f16 */
    f->ds[2][7] = 1e-40f;    /* subnormal */
    f->r = (reply_encode){.id = "req-\"42\"", .model = "demo/tiny", .out_hidden = f->D, .n_deepstack = f->nd,
                          .deepstack_layers = f->layers, .n_images = 3, .images = f->ri,
                          .opts = {ENC_FLOAT, true, ST_F32, LAYOUT_SEPARATE}};
}

static void fixture_free(fixture *f) {
    for (int i = 0; i < 3; i++) {
        free(f->emb[i]);
        free(f->ds[i]);
    }
}

/* Expected value of row t, column c of image i's answer tensor seg (0 = embeddings, 1.. deepstack) in dtype. */
static float expect(const fixture *f, int i, int seg, int64_t t, int c, st_dtype dt) {
    int64_t T = tokens_of(&f->grids[i]);
    float x = seg == 0 ? f->emb[i][t * f->D + c] : f->ds[i][((seg - 1) * T + t) * f->D + c];
    if (dt == ST_BF16) return bf16_to_f32(f32_to_bf16(x));
    if (dt == ST_F16) return f16_to_f32(f32_to_f16(x));
    return x;
}

/* Compares a parsed "embedding" with the expected tensor made of segments [seg0, seg1) per row. */
static int check_json_tensor(const fixture *f, const cJSON *emb, int i, int seg0, int seg1, st_dtype dt,
                             const char *enc) {
    int64_t T = tokens_of(&f->grids[i]);
    int width = f->D * (seg1 - seg0), bad = 0;
    if (!strcmp(enc, "base64")) {
        if (!cJSON_IsString(emb)) return 1;
        size_t es = dt == ST_F32 ? 4 : 2, n = (size_t)T * (size_t)width;
        const char *s = emb->valuestring;
        uint8_t *raw = malloc(strlen(s) / 4 * 3 + 3);
        long got = body_base64_decode(s, strlen(s), raw);
        if (got != (long)(n * es)) {
            fprintf(stderr, "  image %d: base64 gives %ld bytes, want %zu\n", i, got, n * es);
            free(raw);
            return 1;
        }
        for (int64_t t = 0; t < T; t++)
            for (int c = 0; c < width; c++) {
                float x = expect(f, i, seg0 + c / f->D, t, c % f->D, ST_F32);
                size_t k = (size_t)(t * width + c);
                if (dt == ST_F32) {
                    bad += memcmp(raw + 4 * k, &x, 4) != 0; /* little-endian float32 bytes */
                } else {
                    uint16_t h = (uint16_t)(raw[2 * k] | raw[2 * k + 1] << 8);
                    bad += h != (dt == ST_BF16 ? f32_to_bf16(x) : f32_to_f16(x));
                }
            }
        free(raw);
        return bad;
    }
    if (!cJSON_IsArray(emb) || cJSON_GetArraySize(emb) != T) return 1;
    int64_t t = 0;
    for (const cJSON *row = emb->child; row; row = row->next, t++) {
        if (cJSON_GetArraySize(row) != width) return 1;
        int c = 0;
        for (const cJSON *v = row->child; v; v = v->next, c++) {
            float x = expect(f, i, seg0 + c / f->D, t, c % f->D, dt);
            if (isnan(x) || isinf(x)) bad += !cJSON_IsNull(v);
            else bad += !cJSON_IsNumber(v) || memcmp(&(float){(float)v->valuedouble}, &x, 4) != 0;
        }
    }
    return bad;
}

/* Renders the fixture as JSON with the given options, parses it back, checks every field and value. */
static void check_json_answer(fixture *f, encode_options o, const char *what) {
    f->r.opts = o;
    size_t len = 0;
    char *js = reply_encode_json(&f->r, &len);
    CHECK(js != NULL && strlen(js) == len);
    cJSON *root = cJSON_ParseWithLength(js, len);
    CHECK_MSG(root != NULL, "%s: answer is not JSON", what);
    if (!root) {
        free(js);
        return;
    }
    const char *enc = o.encoding == ENC_BASE64 ? "base64" : "float";
    CHECK(!strcmp(cJSON_GetObjectItem(root, "id")->valuestring, "req-\"42\""));
    CHECK(!strcmp(cJSON_GetObjectItem(root, "model")->valuestring, "demo/tiny"));
    CHECK(!strcmp(cJSON_GetObjectItem(root, "encoding_format")->valuestring, enc));
    const cJSON *data = cJSON_GetObjectItem(root, "data");
    CHECK_EQ_INT(3, cJSON_GetArraySize(data));
    bool concat = o.layout == LAYOUT_CONCAT;
    int nd = o.deepstack ? f->nd : 0, bad = 0;
    long patches = 0;
    for (int i = 0; i < 3; i++) {
        const cJSON *it = cJSON_GetArrayItem(data, i);
        int64_t T = tokens_of(&f->grids[i]);
        patches += (long)(T * 4);
        CHECK_EQ_INT(i, cJSON_GetObjectItem(it, "index")->valueint);
        const cJSON *g = cJSON_GetObjectItem(it, "grid_thw");
        CHECK(cJSON_GetArraySize(g) == 3 && cJSON_GetArrayItem(g, 0)->valueint == f->grids[i].t &&
              cJSON_GetArrayItem(g, 1)->valueint == f->grids[i].h &&
              cJSON_GetArrayItem(g, 2)->valueint == f->grids[i].w);
        const cJSON *sh = cJSON_GetObjectItem(it, "shape");
        CHECK_EQ_INT(T, cJSON_GetArrayItem(sh, 0)->valueint);
        CHECK_EQ_INT(f->D * (concat ? 1 + nd : 1), cJSON_GetArrayItem(sh, 1)->valueint);
        bad += check_json_tensor(f, cJSON_GetObjectItem(it, "embedding"), i, 0, concat ? 1 + nd : 1, o.dtype, enc);
        const cJSON *ds = cJSON_GetObjectItem(it, "deepstack");
        if (concat || !nd) {
            CHECK_MSG(ds == NULL, "%s: unexpected deepstack list", what);
            continue;
        }
        CHECK_EQ_INT(nd, cJSON_GetArraySize(ds));
        for (int l = 0; l < nd; l++) {
            const cJSON *e = cJSON_GetArrayItem(ds, l);
            CHECK_EQ_INT(f->layers[l], cJSON_GetObjectItem(e, "layer")->valueint);
            const cJSON *s2 = cJSON_GetObjectItem(e, "shape");
            CHECK(cJSON_GetArrayItem(s2, 0)->valueint == T && cJSON_GetArrayItem(s2, 1)->valueint == f->D);
            bad += check_json_tensor(f, cJSON_GetObjectItem(e, "embedding"), i, 1 + l, 2 + l, o.dtype, enc);
        }
    }
    CHECK_MSG(bad == 0, "%s: %d values differ", what, bad);
    const cJSON *u = cJSON_GetObjectItem(root, "usage");
    CHECK_EQ_INT(3, cJSON_GetObjectItem(u, "images")->valueint);
    CHECK_EQ_INT(patches, cJSON_GetObjectItem(u, "patches")->valueint);
    CHECK_EQ_INT(patches / 4, cJSON_GetObjectItem(u, "tokens")->valueint);
    printf("  json %-34s %7zu bytes, %d values differ\n", what, len, bad);
    cJSON_Delete(root);
    free(js);
}

static void test_json_answers(void) {
    fixture f;
    fixture_init(&f, 7);
    f.emb[2][0] = NAN;
    f.ds[1][3] = INFINITY;
    check_json_answer(&f, (encode_options){ENC_FLOAT, true, ST_F32, LAYOUT_SEPARATE, false}, "float f32 separate");
    check_json_answer(&f, (encode_options){ENC_FLOAT, false, ST_F32, LAYOUT_SEPARATE, false}, "float f32 no deepstack");
    check_json_answer(&f, (encode_options){ENC_FLOAT, true, ST_F32, LAYOUT_CONCAT, false}, "float f32 concat");
    check_json_answer(&f, (encode_options){ENC_FLOAT, false, ST_F32, LAYOUT_CONCAT, false}, "float f32 concat no ds");
    check_json_answer(&f, (encode_options){ENC_FLOAT, true, ST_BF16, LAYOUT_SEPARATE, false}, "float bf16 separate");
    check_json_answer(&f, (encode_options){ENC_FLOAT, true, ST_F16, LAYOUT_CONCAT, false}, "float f16 concat");
    check_json_answer(&f, (encode_options){ENC_BASE64, true, ST_F32, LAYOUT_SEPARATE, false}, "base64 f32 separate");
    check_json_answer(&f, (encode_options){ENC_BASE64, true, ST_BF16, LAYOUT_SEPARATE, false}, "base64 bf16 separate");
    check_json_answer(&f, (encode_options){ENC_BASE64, true, ST_F16, LAYOUT_CONCAT, false}, "base64 f16 concat");
    check_json_answer(&f, (encode_options){ENC_BASE64, false, ST_F32, LAYOUT_CONCAT, false}, "base64 f32 concat no ds");

    /* concat places the embeddings first, then each deepstack layer, on the last axis: spot-check by hand */
    f.r.opts = (encode_options){ENC_FLOAT, true, ST_F32, LAYOUT_CONCAT, false};
    char *js = reply_encode_json(&f.r, NULL);
    cJSON *root = cJSON_Parse(js);
    const cJSON *item1 = cJSON_GetArrayItem(cJSON_GetObjectItem(root, "data"), 1);
    const cJSON *row = cJSON_GetArrayItem(cJSON_GetObjectItem(item1, "embedding"), 0);
    int64_t T1 = tokens_of(&f.grids[1]);
    CHECK((float)cJSON_GetArrayItem(row, 0)->valuedouble == f.emb[1][0]);
    CHECK((float)cJSON_GetArrayItem(row, f.D - 1)->valuedouble == f.emb[1][f.D - 1]);
    CHECK((float)cJSON_GetArrayItem(row, f.D)->valuedouble == f.ds[1][0]);              /* layer 5, token 0 */
    CHECK((float)cJSON_GetArrayItem(row, 3 * f.D)->valuedouble == f.ds[1][2 * T1 * f.D]); /* layer 17, token 0 */
    cJSON_Delete(root);
    free(js);
    fixture_free(&f);
}

/* ---- safetensors ---- */

static void check_st_answer(fixture *f, encode_options o, const char *what) {
    f->r.opts = o;
    size_t len = 0;
    uint8_t *buf = reply_encode_safetensors(&f->r, &len);
    CHECK_MSG(buf != NULL, "%s: no safetensors answer", what);
    if (!buf) return;
    vitd_err err = {0};
    st_file *sf = NULL;
    CHECK_OK(st_open_memory(buf, len, &sf, &err), &err);
    if (!sf) {
        free(buf);
        return;
    }
    bool concat = o.layout == LAYOUT_CONCAT;
    int nd = o.deepstack ? f->nd : 0, bad = 0;
    CHECK_EQ_INT(3 * (2 + (concat ? 0 : nd)), st_count(sf));
    CHECK(st_metadata(sf, "id") && !strcmp(st_metadata(sf, "id"), "req-\"42\""));
    CHECK(st_metadata(sf, "model") && !strcmp(st_metadata(sf, "model"), "demo/tiny"));
    for (int i = 0; i < 3; i++) {
        int64_t T = tokens_of(&f->grids[i]);
        char name[64];
        snprintf(name, sizeof name, "image.%d.grid_thw", i);
        const st_tensor *g = st_find(sf, name);
        CHECK_MSG(g && g->dtype == ST_I64 && g->ndim == 1 && g->shape[0] == 3, "%s: %s", what, name);
        if (g) {
            int64_t thw[3];
            memcpy(thw, g->data, sizeof thw);
            CHECK(thw[0] == f->grids[i].t && thw[1] == f->grids[i].h && thw[2] == f->grids[i].w);
        }
        for (int seg = 0; seg < (concat ? 1 : 1 + nd); seg++) {
            if (seg == 0) snprintf(name, sizeof name, "image.%d.embeddings", i);
            else snprintf(name, sizeof name, "image.%d.deepstack.%d", i, f->layers[seg - 1]);
            const st_tensor *t = st_find(sf, name);
            int width = f->D * (concat ? 1 + nd : 1);
            CHECK_MSG(t && t->dtype == o.dtype && t->ndim == 2 && t->shape[0] == T && t->shape[1] == width,
                      "%s: tensor %s missing or wrong dtype/shape", what, name);
            if (!t) continue;
            float *vals = malloc((size_t)(T * width) * sizeof(float));
            CHECK_OK(st_to_f32(t, vals, &err), &err);
            for (int64_t r = 0; r < T; r++)
                for (int c = 0; c < width; c++) {
                    int s = concat ? c / f->D : seg, cc = concat ? c % f->D : c;
                    float x = expect(f, i, s, r, cc, o.dtype), y = vals[r * width + c];
                    bad += !(memcmp(&x, &y, 4) == 0 || (isnan(x) && isnan(y)));
                }
            free(vals);
        }
        snprintf(name, sizeof name, "image.%d.deepstack.%d", i, f->layers[0]);
        if (concat || !nd) CHECK_MSG(st_find(sf, name) == NULL, "%s: %s should be absent", what, name);
    }
    CHECK_MSG(bad == 0, "%s: %d values differ", what, bad);
    printf("  safetensors %-27s %7zu bytes, %d tensors, %d values differ\n", what, len, st_count(sf), bad);
    st_close(sf);
    free(buf);
}

static void test_safetensors_answers(void) {
    fixture f;
    fixture_init(&f, 99);
    check_st_answer(&f, (encode_options){ENC_FLOAT, true, ST_F32, LAYOUT_SEPARATE, false}, "f32 separate");
    check_st_answer(&f, (encode_options){ENC_FLOAT, true, ST_BF16, LAYOUT_SEPARATE, false}, "bf16 separate");
    check_st_answer(&f, (encode_options){ENC_FLOAT, true, ST_F16, LAYOUT_SEPARATE, false}, "f16 separate");
    check_st_answer(&f, (encode_options){ENC_FLOAT, false, ST_F32, LAYOUT_SEPARATE, false}, "f32 no deepstack");
    check_st_answer(&f, (encode_options){ENC_FLOAT, true, ST_F32, LAYOUT_CONCAT, false}, "f32 concat");
    check_st_answer(&f, (encode_options){ENC_FLOAT, true, ST_BF16, LAYOUT_CONCAT, false}, "bf16 concat");
    check_st_answer(&f, (encode_options){ENC_FLOAT, false, ST_F16, LAYOUT_CONCAT, false}, "f16 concat no deepstack");
    fixture_free(&f);
}

/* ---- speed ---- */

static void bench_json(void) {
    enum { NI = 4, T = 256, D = 4096 };
    float *emb = malloc(sizeof(float) * NI * T * D);
    unsigned long long rng = 3;
    for (size_t k = 0; k < (size_t)NI * T * D; k++) emb[k] = (float)(check_rng_normal(&rng) * 0.02);
    reply_image ri[NI];
    for (int i = 0; i < NI; i++) ri[i] = (reply_image){{1, 32, 32}, emb + (size_t)i * T * D, NULL, false};
    reply_encode r = {.id = "bench", .model = "bench", .out_hidden = D, .n_images = NI, .images = ri,
                      .opts = {ENC_FLOAT, true, ST_F32, LAYOUT_SEPARATE}};
    for (int pass = 0; pass < 2; pass++) {
        r.opts.encoding = pass ? ENC_BASE64 : ENC_FLOAT;
        double best = 1e9;
        size_t len = 0;
        for (int rep = 0; rep < 3; rep++) {
            double t0 = vitd_now();
            char *js = reply_encode_json(&r, &len);
            double dt = vitd_now() - t0;
            CHECK(js != NULL);
            free(js);
            if (dt < best) best = dt;
        }
        printf("  bench json %-6s 4 x 256 x 4096: %zu bytes in %.1f ms = %.0f MB/s (%.1f M floats/s)\n",
               pass ? "base64" : "float", len, best * 1e3, len / best / 1e6, NI * T * D / best / 1e6);
    }
    free(emb);
}

/* The same answers from outputs stored as bfloat16 (the GPU engine's) as from float32 outputs holding the same
 * values, byte for byte, in every encoding, dtype and layout; and the vectored safetensors answer (sent from the
 * outputs' own buffers) byte-identical to the assembled one, for both storages. */
static void test_bf16_storage(void) {
    printf("answers from bfloat16 storage\n");
    fixture f;
    fixture_init(&f, 77);
    uint16_t *hemb[3], *hds[3];
    reply_image hb[3];
    for (int i = 0; i < 3; i++) {
        int64_t n = tokens_of(&f.grids[i]) * f.D;
        hemb[i] = malloc((size_t)n * 2);
        hds[i] = malloc((size_t)(n * f.nd) * 2);
        for (int64_t k = 0; k < n; k++) {
            hemb[i][k] = f32_to_bf16(f.emb[i][k]);
            f.emb[i][k] = bf16_to_f32(hemb[i][k]); /* the float32 twin holds the same values */
        }
        for (int64_t k = 0; k < n * f.nd; k++) {
            hds[i][k] = f32_to_bf16(f.ds[i][k]);
            f.ds[i][k] = bf16_to_f32(hds[i][k]);
        }
        hb[i] = (reply_image){f.grids[i], hemb[i], hds[i], true};
    }
    reply_encode rb = f.r;
    rb.images = hb;
    const body_encoding encs[2] = {ENC_FLOAT, ENC_BASE64};
    const st_dtype dts[3] = {ST_F32, ST_BF16, ST_F16};
    int differ = 0, cases = 0;
    for (int e = 0; e < 2; e++)
        for (int d = 0; d < 3; d++)
            for (int l = 0; l < 2; l++)
                for (int ds = 0; ds < 2; ds++) {
                    encode_options o = {encs[e], ds != 0, dts[d], l ? LAYOUT_CONCAT : LAYOUT_SEPARATE, false};
                    f.r.opts = rb.opts = o;
                    size_t la = 0, lb = 0;
                    char *a = reply_encode_json(&f.r, &la), *b = reply_encode_json(&rb, &lb);
                    differ += !a || !b || la != lb || memcmp(a, b, la);
                    free(a);
                    free(b);
                    uint8_t *sa = reply_encode_safetensors(&f.r, &la), *sb = reply_encode_safetensors(&rb, &lb);
                    differ += !sa || !sb || la != lb || memcmp(sa, sb, la);
                    /* the vectored form, where the storage is the answer's dtype */
                    for (int src = 0; src < 2; src++) {
                        reply_segments seg;
                        const reply_encode *rr = src ? &rb : &f.r;
                        int rc = reply_encode_safetensors_segments(rr, &seg);
                        bool direct = !l && dts[d] == (src ? ST_BF16 : ST_F32);
                        CHECK_MSG(rc == (direct ? 0 : 1), "segments: rc %d for layout %d dtype %d storage %d", rc, l,
                                  d, src);
                        if (rc != 0) continue;
                        uint8_t *joined = malloc(seg.total);
                        size_t at = 0;
                        memcpy(joined, seg.header, seg.header_len);
                        at = seg.header_len;
                        for (int k = 0; k < seg.n_seg; k++) {
                            memcpy(joined + at, seg.seg[k].data, seg.seg[k].len);
                            at += seg.seg[k].len;
                        }
                        CHECK_MSG(at == seg.total && at == la && !memcmp(joined, sa, la),
                                  "vectored answer differs from the assembled one (storage %s)", src ? "bf16" : "f32");
                        free(joined);
                        reply_segments_release(&seg);
                    }
                    free(sa);
                    free(sb);
                    cases++;
                }
    printf("  %d option sets: JSON and safetensors from bf16 storage, %d differ\n", cases, differ);
    CHECK_EQ_INT(0, differ);
    for (int i = 0; i < 3; i++) {
        free(hemb[i]);
        free(hds[i]);
    }
    fixture_free(&f);
}

int main(void) {
    test_http_status();
    test_error_json();
    test_format_f32();
    test_json_answers();
    test_bf16_storage();
    test_safetensors_answers();
    bench_json();
    return check_done("test_reply");
}
