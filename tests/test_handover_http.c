/* labels: http */
/* test_handover_http.c — the hand-overs to LLM engines through the real `vitd serve` (VITD_EXE, tiny demo model,
 * CPU backend, 127.0.0.1), played from the engines' side:
 *   - vLLM image_embeds parts (raw, JSON with uuids, multipart with uuid fields; bfloat16, float16, float32;
 *     grid layouts): every answer decoded by tests/handover_check.py with torch.load(weights_only=True) and with
 *     its own reader, bits equal to `vitd encode --layout concat` of the same batch; derived ids stable;
 *   - the EPD proxy: registration with a fake proxy (its body, the DELETE on drain); the proxy's chat request
 *     answered with ec_transfer_params after the cache file is in place; the file read as the consumer reads it
 *     and compared with `vitd encode`; the retention bound; the refusals;
 *   - KServe v2: metadata and health routes, JSON and binary infer (BF16 / FP16 / FP32, a raw binary request)
 *     against `vitd encode`, errors in the protocol's shape;
 *   - the API key, metrics per route and hand-over kind, and the drain on the new routes.
 * torch: the first of $VITD_PYTHON, python3, /usr/bin/python3 that imports it runs the checks; without any,
 * the torch part is reported skipped and the hand-written readers still run. */
#include <arpa/inet.h>
#include <sys/stat.h>

#include "check.h"
#include "content_id.h"
#include "fake_proxy.h"
#include "loopback.h"
#include "safetensors.h"
#include "serve_check.h"
#include "util.h"

#define CHECK_PY VITD_SOURCE_DIR "/tests/handover_check.py"

enum { N_IMG = 4 };
static const char *k_names[N_IMG][2] = {{"chelsea.png", "image/png"}, {"rgb8.png", "image/png"},
                                        {"photo_q90_420.jpg", "image/jpeg"}, {"gif.gif", "image/gif"}};

typedef struct {
    char dir[256], model[600];
    image_file img[N_IMG];
    char ref_one[3][700];       /* one by one, concat: bfloat16, float16, float32 */
    char ref_b01[2][700];       /* images 0,1 in one batch: bfloat16, float32 */
    char ref_b012[700];         /* images 0,1,2 in one batch, bfloat16 */
    char python[256];           /* an interpreter that imports torch, or one without ("" = none) */
    bool torch;
    int port, D, k;
    proxy px;
} suite;

/* ---- references and the Python checks ---- */

static int encode_ref(suite *S, const char *out, const char *dtype, bool one_by_one, const int *imgs, int n) {
    char *argv[16];
    int a = 0;
    argv[a++] = arg("%s", VITD_EXE);
    argv[a++] = arg("encode");
    argv[a++] = arg("--model=%s", S->model);
    argv[a++] = arg("--backend=cpu");
    argv[a++] = arg("--threads=2"); /* as the server's encoder */
    argv[a++] = arg("--layout=concat");
    argv[a++] = arg("--dtype=%s", dtype);
    argv[a++] = arg("--out=%s", out);
    if (one_by_one) argv[a++] = arg("--one-by-one");
    for (int i = 0; i < n; i++) argv[a++] = arg(IMG_DIR "%s", k_names[imgs[i]][0]);
    argv[a] = NULL;
    char log[800];
    snprintf(log, sizeof log, "%s.log", out);
    int rc = run_tool(argv, log);
    free_args(argv);
    return rc;
}

static void find_python(suite *S) {
    const char *cand[] = {getenv("VITD_PYTHON"), "python3", "/usr/bin/python3"};
    char cmd[512];
    for (int i = 0; i < 3; i++) {
        if (!cand[i] || !cand[i][0]) continue;
        snprintf(cmd, sizeof cmd, "%s -c 'import torch' >/dev/null 2>&1", cand[i]);
        if (system(cmd) == 0) {
            snprintf(S->python, sizeof S->python, "%s", cand[i]);
            S->torch = true;
            return;
        }
        snprintf(cmd, sizeof cmd, "%s -c 'import json' >/dev/null 2>&1", cand[i]);
        if (!S->python[0] && system(cmd) == 0) snprintf(S->python, sizeof S->python, "%s", cand[i]);
    }
}

/* Runs handover_check.py with args; prints its output; CHECKs its verdict. */
static void py_check(suite *S, const char *what, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void py_check(suite *S, const char *what, const char *fmt, ...) {
    char args[2048], cmd[3072], log[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    if (!S->python[0]) {
        CHECK_MSG(0, "%s: no python3 to run handover_check.py", what);
        return;
    }
    snprintf(log, sizeof log, "%s/py.log", S->dir);
    snprintf(cmd, sizeof cmd, "%s " CHECK_PY " %s --torch %s >%s 2>&1", S->python, args,
             S->torch ? "require" : "skip", log);
    int rc = system(cmd);
    size_t n = 0;
    char *out = (char *)check_read_file(log, &n);
    int fails = 0, oks = 0;
    for (char *p = out, *e; p && p < out + n; p = e + 1) {
        e = memchr(p, '\n', (size_t)(out + n - p));
        if (!e) e = out + n;
        fails += !strncmp(p, "FAIL", 4);
        oks += !strncmp(p, "ok ", 3);
        if (strncmp(p, "ok ", 3)) printf("    %.*s\n", (int)(e - p), p);
    }
    printf("  %s: %d checks passed in python%s\n", what, oks, S->torch ? " (torch present)" : "");
    CHECK_MSG(rc == 0 && fails == 0 && oks > 0, "%s: handover_check.py exit %d, %d failed", what, rc, fails);
    free(out);
}

static bool save(const char *path, const resp *r) {
    FILE *f = fopen(path, "wb");
    if (!f) return false;
    bool ok = fwrite(r->body, 1, r->len, f) == r->len;
    return fclose(f) == 0 && ok;
}

/* ---- requests ---- */

static bool post(int port, const char *path, const char *headers, const void *body, size_t len, resp *r) {
    return http_do(port, "POST", path, headers, body, len, r);
}

/* {"images": [b64 of imgs...], <extra>} */
static char *json_images(suite *S, const int *imgs, int n, const char *extra) {
    strbuf b = {0};
    strbuf_puts(&b, "{\"images\":[");
    for (int i = 0; i < n; i++) {
        char *e = b64_encode(S->img[imgs[i]].data, S->img[imgs[i]].len);
        strbuf_printf(&b, "%s\"%s\"", i ? "," : "", e);
        free(e);
    }
    strbuf_printf(&b, "]%s%s}", extra ? "," : "", extra ? extra : "");
    return strbuf_finish(&b);
}

/* The proxy's chat request for one image: {"model", "messages": [{"role": "user", "content": [{image_url part
 * with the data: URL, "uuid"}]}], "stream": false}; uuid NULL: none. */
static char *chat_body(const image_file *img, const char *uuid, char **url_out) {
    char *e = b64_encode(img->data, img->len);
    strbuf u = {0}, b = {0};
    strbuf_printf(&u, "data:%s;base64,%s", img->ctype, e);
    free(e);
    char *url = strbuf_finish(&u);
    strbuf_puts(&b, "{\"model\":\"Qwen/Qwen3-VL-8B-Instruct\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":"
                    "\"image_url\",\"image_url\":{\"url\":\"");
    strbuf_puts(&b, url);
    strbuf_puts(&b, "\"}");
    if (uuid) strbuf_printf(&b, ",\"uuid\":\"%s\"", uuid);
    strbuf_puts(&b, "}]}],\"stream\":false}");
    if (url_out) *url_out = url;
    else free(url);
    return strbuf_finish(&b);
}

static const cJSON *jpath(const cJSON *j, const char *a, const char *b) {
    j = cJSON_GetObjectItem(j, a);
    return b ? cJSON_GetObjectItem(j, b) : j;
}

/* A KServe error: the status and {"error": "...needle..."}. */
static void check_v2_error(const resp *r, int status, const char *needle, const char *what) {
    cJSON *root = r->body ? cJSON_ParseWithLength(r->body, r->len) : NULL;
    const cJSON *e = cJSON_GetObjectItem(root, "error");
    CHECK_MSG(r->status == status && cJSON_IsString(e) && strstr(e->valuestring, needle),
              "%s: %d %s (want %d, \"%s\")", what, r->status, r->body ? r->body : "", status, needle);
    if (cJSON_IsString(e)) printf("  %-30s %d %s\n", what, r->status, e->valuestring);
    cJSON_Delete(root);
}

/* ---- vLLM image_embeds parts ---- */

static void test_vllm_parts(suite *S) {
    printf("vLLM image_embeds parts\n");
    char path[800];
    resp r;
    const char *dts[3] = {"bfloat16", "float16", "float32"};
    for (int d = 0; d < 3; d++) {
        char url[128];
        snprintf(url, sizeof url, "/v1/vllm/image_embeds%s%s", d ? "?dtype=" : "", d ? dts[d] : "");
        CHECK(post(S->port, url, "Content-Type: image/png\r\n", S->img[1].data, S->img[1].len, &r));
        CHECK_MSG(r.status == 200, "raw %s: %d %.200s", dts[d], r.status, r.body);
        snprintf(path, sizeof path, "%s/parts_%s.json", S->dir, dts[d]);
        CHECK(save(path, &r));
        py_check(S, dts[d], "parts %s %s 1", path, S->ref_one[d]);
        resp_free(&r);
    }
    /* JSON with uuids: three images in one batch; the same images with grid_layout=2d */
    int three[3] = {0, 1, 2};
    char *body = json_images(S, three, 3, "\"uuids\":[\"img-a\",\"img-b\",\"img-c\"]");
    CHECK(post(S->port, "/v1/vllm/image_embeds", "Content-Type: application/json\r\n", body, strlen(body), &r));
    CHECK_MSG(r.status == 200, "JSON with uuids: %d %.200s", r.status, r.body);
    snprintf(path, sizeof path, "%s/parts_three.json", S->dir);
    CHECK(save(path, &r));
    py_check(S, "three images, uuids", "parts %s %s 0,1,2", path, S->ref_b012);
    cJSON *root = cJSON_ParseWithLength(r.body, r.len);
    const char *want[3] = {"img-a", "img-b", "img-c"};
    for (int i = 0; i < 3; i++) {
        const cJSON *part = cJSON_GetArrayItem(cJSON_GetObjectItem(root, "content"), i);
        const cJSON *di = cJSON_GetArrayItem(cJSON_GetObjectItem(root, "data"), i);
        CHECK(!strcmp(cJSON_GetObjectItem(part, "uuid")->valuestring, want[i]) &&
              !strcmp(cJSON_GetObjectItem(di, "uuid_source")->valuestring, "client"));
    }
    cJSON_Delete(root);
    resp_free(&r);
    CHECK(post(S->port, "/v1/vllm/image_embeds?grid_layout=2d", "Content-Type: application/json\r\n", body,
               strlen(body), &r));
    snprintf(path, sizeof path, "%s/parts_three_2d.json", S->dir);
    CHECK(r.status == 200 && save(path, &r));
    py_check(S, "three images, grid_layout=2d", "parts %s %s 0,1,2 --grid 2d", path, S->ref_b012);
    resp_free(&r);
    free(body);
    /* multipart: uuid fields in order */
    const image_file *mp[2] = {&S->img[0], &S->img[1]};
    size_t ml = 0;
    char *m = multipart(mp, 2, "uuid", "mp-0", "BoUnDaRy7", &ml);
    /* a second uuid field: insert it before the closing boundary */
    char *m2 = xmalloc(ml + 200);
    size_t tail = strlen("--BoUnDaRy7--\r\n");
    memcpy(m2, m, ml - tail);
    int extra = sprintf(m2 + ml - tail, "--BoUnDaRy7\r\nContent-Disposition: form-data; name=\"uuid\"\r\n\r\nmp-1\r\n"
                        "--BoUnDaRy7--\r\n");
    CHECK(post(S->port, "/v1/vllm/image_embeds?grid_layout=1d",
               "Content-Type: multipart/form-data; boundary=BoUnDaRy7\r\n", m2, ml - tail + (size_t)extra, &r));
    CHECK_MSG(r.status == 200, "multipart: %d %.200s", r.status, r.body);
    snprintf(path, sizeof path, "%s/parts_multipart.json", S->dir);
    CHECK(save(path, &r));
    py_check(S, "multipart, uuid fields", "parts %s %s 0,1 --grid 1d", path, S->ref_b01[0]);
    CHECK(strstr(r.body, "\"uuid\":\"mp-0\"") && strstr(r.body, "\"uuid\":\"mp-1\""));
    resp_free(&r);
    free(m);
    free(m2);
    char longv[400];
    memset(longv, 'u', 300);
    longv[300] = 0;
    const char *fields[2] = {"uuid", "note"};
    for (int f = 0; f < 2; f++) {
        m = multipart(mp, 1, fields[f], longv, "BoUnDaRy7", &ml);
        CHECK(post(S->port, "/v1/vllm/image_embeds", "Content-Type: multipart/form-data; boundary=BoUnDaRy7\r\n", m,
                   ml, &r));
        if (f == 0) check_error(&r, 400, "invalid_argument", "longer than 256", "multipart long uuid");
        else CHECK_MSG(r.status == 200, "a long unknown multipart field: %d %.200s", r.status, r.body);
        resp_free(&r);
        free(m);
    }
    /* derived ids: 64 hex digits, the same for the same bytes, another for other bytes */
    char ids[3][80] = {"", "", ""};
    int which[3] = {1, 1, 2};
    for (int i = 0; i < 3; i++) {
        const image_file *f = &S->img[which[i]];
        char h[64];
        snprintf(h, sizeof h, "Content-Type: %s\r\n", f->ctype);
        CHECK(post(S->port, "/v1/vllm/image_embeds", h, f->data, f->len, &r));
        root = cJSON_ParseWithLength(r.body, r.len);
        const cJSON *di = cJSON_GetArrayItem(cJSON_GetObjectItem(root, "data"), 0);
        if (di) snprintf(ids[i], sizeof ids[i], "%s", cJSON_GetObjectItem(di, "uuid")->valuestring);
        CHECK(di && !strcmp(cJSON_GetObjectItem(di, "uuid_source")->valuestring, "derived"));
        cJSON_Delete(root);
        resp_free(&r);
    }
    CHECK_MSG(strlen(ids[0]) == 64 && !strcmp(ids[0], ids[1]) && strcmp(ids[0], ids[2]), "derived ids %s %s %s",
              ids[0], ids[1], ids[2]);
    /* refusals */
    static const struct {
        const char *query, *ctype, *body, *code, *needle;
    } bad[] = {
        {"?uuid=a&uuid=b", "image/png", NULL, "invalid_argument", "2 uuids for 1 images"},
        {"?uuid=a%2Fb", "image/png", NULL, "invalid_argument", "uuid 0"},
        {"?deepstack=false", "image/png", NULL, "invalid_argument", "DeepStack"},
        {"?grid_layout=3d", "image/png", NULL, "invalid_argument", "grid_layout"},
        {"?transfer=nccl", "image/png", NULL, "invalid_argument", "transfer"},
        {"?dtype=int8", "image/png", NULL, "invalid_argument", "dtype"},
        {"?transfer=ec_cache&dtype=float32", "image/png", NULL, "invalid_argument", "bfloat16"},
        {"", "application/json", "{\"images\":[\"aGk=\"],\"uuids\":[\"x\",\"x\"]}", "invalid_argument", "2 uuids"},
        {"", "text/plain", "hello", "unsupported", "Content-Type"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char url[128], h[96];
        snprintf(url, sizeof url, "/v1/vllm/image_embeds%s", bad[i].query);
        snprintf(h, sizeof h, "Content-Type: %s\r\n", bad[i].ctype);
        const void *b = bad[i].body ? (const void *)bad[i].body : S->img[1].data;
        size_t bl = bad[i].body ? strlen(bad[i].body) : S->img[1].len;
        CHECK(post(S->port, url, h, b, bl, &r));
        check_error(&r, !strcmp(bad[i].code, "unsupported") ? 415 : 400, bad[i].code, bad[i].needle, url);
        resp_free(&r);
    }
    int two[2] = {0, 1};
    body = json_images(S, two, 2, "\"uuids\":[\"d1\",\"d1\"]");
    CHECK(post(S->port, "/v1/vllm/image_embeds", "Content-Type: application/json\r\n", body, strlen(body), &r));
    check_error(&r, 400, "invalid_argument", "repeats", "repeated uuid");
    resp_free(&r);
    free(body);
}

/* ---- EC cache files: transfer=ec_cache and the EPD encoder instance ---- */

static void test_ec_transfer(suite *S) {
    printf("EC cache files (transfer=ec_cache)\n");
    char ecdir[400];
    snprintf(ecdir, sizeof ecdir, "%s/ec", S->dir);
    int two[2] = {0, 1};
    char *body = json_images(S, two, 2, "\"uuids\":[\"tc-0\",\"tc-1\"],\"transfer\":\"ec_cache\"");
    resp r;
    CHECK(post(S->port, "/v1/vllm/image_embeds", "Content-Type: application/json\r\n", body, strlen(body), &r));
    CHECK_MSG(r.status == 200, "transfer=ec_cache: %d %.200s", r.status, r.body);
    cJSON *root = cJSON_ParseWithLength(r.body, r.len);
    for (int i = 0; i < 2; i++) {
        const cJSON *ie = jpath(cJSON_GetArrayItem(cJSON_GetObjectItem(root, "content"), i), "image_embeds", NULL);
        CHECK_MSG(ie && cJSON_GetObjectItem(ie, "image_grid_thw") && !cJSON_GetObjectItem(ie, "image_embeds"),
                  "part %d carries the grid only", i);
        char what[32];
        snprintf(what, sizeof what, "cache file tc-%d", i);
        py_check(S, what, "cache %s tc-%d %s %d", ecdir, i, S->ref_b01[0], i);
    }
    cJSON_Delete(root);
    resp_free(&r);
    free(body);
}

static void test_epd(suite *S) {
    printf("EPD encoder instance\n");
    char ecdir[400];
    snprintf(ecdir, sizeof ecdir, "%s/ec", S->dir);
    /* registration: the proxy has this instance's URL */
    CHECK_MSG(proxy_wait(&S->px, 1, 15), "no registration reached the fake proxy");
    char want_url[64];
    snprintf(want_url, sizeof want_url, "http://127.0.0.1:%d", S->port);
    pthread_mutex_lock(&S->px.mu);
    cJSON *reg = cJSON_Parse(S->px.body[0]);
    bool reg_ok = !strcmp(S->px.method[0], "POST") && !strcmp(S->px.path[0], "/instances") && reg &&
                  !strcmp(cJSON_GetObjectItem(reg, "role")->valuestring, "encode") &&
                  !strcmp(cJSON_GetObjectItem(reg, "url")->valuestring, want_url);
    printf("  registration: %s %s %s\n", S->px.method[0], S->px.path[0], S->px.body[0]);
    pthread_mutex_unlock(&S->px.mu);
    CHECK_MSG(reg_ok, "registration body");
    cJSON_Delete(reg);
    /* the proxy's request, with a uuid as vLLM's proxy makes them */
    const char *uuid = "5f1e7b2c9a0d4e8f6a3b1c2d7e9f0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b";
    for (int i = 0; i < 2; i++) {
        int img = i ? 2 : 1;
        char *url = NULL;
        char *body = chat_body(&S->img[img], i ? NULL : uuid, &url);
        resp r;
        CHECK(post(S->port, "/v1/chat/completions", "Content-Type: application/json\r\n", body, strlen(body), &r));
        CHECK_MSG(r.status == 200, "chat: %d %.300s", r.status, r.body);
        char expect[65];
        if (i) {
            /* no uuid: the id vLLM's proxy would give, SHA-256 of the URL */
            uint8_t h[32];
            content_id_sha256(url, strlen(url), h);
            for (int j = 0; j < 32; j++) sprintf(expect + 2 * j, "%02x", h[j]);
        } else {
            snprintf(expect, sizeof expect, "%s", uuid);
        }
        cJSON *root = cJSON_ParseWithLength(r.body, r.len);
        const cJSON *item = cJSON_GetArrayItem(jpath(root, "ec_transfer_params", "ec_items"), 0);
        const cJSON *grid = cJSON_GetObjectItem(item, "image_grid_thw");
        CHECK_MSG(item && !strcmp(cJSON_GetObjectItem(item, "mm_hash")->valuestring, expect) &&
                      cJSON_GetArraySize(grid) == 3 && cJSON_GetArrayItem(grid, 0)->valueint == 1,
                  "ec_items[0]: %.300s", r.body);
        CHECK(!strcmp(cJSON_GetObjectItem(root, "object")->valuestring, "chat.completion") &&
              !strcmp(cJSON_GetObjectItem(root, "model")->valuestring, "Qwen/Qwen3-VL-8B-Instruct"));
        char ctype[64];
        CHECK(resp_header(&r, "Content-Type", ctype, sizeof ctype) && strstr(ctype, "application/json"));
        /* the file is in place when the answer comes: read it as the consumer would */
        char what[48];
        snprintf(what, sizeof what, "EPD file (%s uuid)", i ? "derived" : "proxy's");
        py_check(S, what, "cache %s %s %s %d", ecdir, expect, S->ref_one[0], img);
        cJSON_Delete(root);
        resp_free(&r);
        free(body);
        free(url);
    }
    /* refusals */
    char *one = chat_body(&S->img[1], "r", NULL);
    static const struct {
        const char *body, *ctype, *needle;
        int status;
    } bad[] = {
        {"{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"What is it?\"}]}]}",
         "application/json", "\"text\" part", 400},
        {"{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\",\"image_url\":{\"url\":"
         "\"https://example.com/cat.png\"}}]}]}", "application/json", "remote URLs", 400},
        {"{\"stream\":true,\"messages\":[]}", "application/json", "stream", 400},
        {"{\"messages\":", "application/json", "invalid JSON", 400},
        {"{}", "text/plain", "application/json", 415},
    };
    resp r;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char h[96];
        snprintf(h, sizeof h, "Content-Type: %s\r\n", bad[i].ctype);
        CHECK(post(S->port, "/v1/chat/completions", h, bad[i].body, strlen(bad[i].body), &r));
        check_error(&r, bad[i].status, bad[i].status == 415 ? "unsupported" : "invalid_argument", bad[i].needle,
                    "chat refusal");
        resp_free(&r);
    }
    /* two images in one request */
    const char *p2 = strstr(one, "{\"type\":\"image_url\"");
    size_t plen = strlen(p2) - strlen("]}],\"stream\":false}");
    strbuf b = {0};
    strbuf_puts(&b, "{\"messages\":[{\"role\":\"user\",\"content\":[");
    strbuf_append(&b, p2, plen);
    strbuf_puts(&b, ",");
    strbuf_append(&b, p2, plen);
    strbuf_puts(&b, "]}]}");
    char *twice = strbuf_finish(&b);
    CHECK(post(S->port, "/v1/chat/completions", "Content-Type: application/json\r\n", twice, strlen(twice), &r));
    check_error(&r, 400, "invalid_argument", "second image", "chat with two images");
    resp_free(&r);
    free(twice);
    free(one);
}

/* The retention bound over HTTP: more chat requests than the cache holds. */
static void test_retention(suite *S, size_t max_bytes) {
    printf("retention bound (ec_cache_max_bytes %zu)\n", max_bytes);
    char ecdir[400], p[700];
    snprintf(ecdir, sizeof ecdir, "%s/ec", S->dir);
    enum { N = 10 };
    for (int i = 0; i < N; i++) {
        char uuid[32];
        snprintf(uuid, sizeof uuid, "ret-%d", i);
        char *body = chat_body(&S->img[1], uuid, NULL);
        resp r;
        CHECK(post(S->port, "/v1/chat/completions", "Content-Type: application/json\r\n", body, strlen(body), &r));
        CHECK_EQ_INT(200, r.status);
        resp_free(&r);
        free(body);
    }
    snprintf(p, sizeof p, "%s/ret-0/encoder_cache.safetensors", ecdir);
    bool first_gone = access(p, F_OK) != 0;
    snprintf(p, sizeof p, "%s/ret-%d/encoder_cache.safetensors", ecdir, N - 1);
    bool last_there = access(p, F_OK) == 0;
    resp r;
    CHECK(http_do(S->port, "GET", "/metrics", NULL, NULL, 0, &r));
    double bytes = metric_value(r.body, "vitd_ec_cache_bytes"), files = metric_value(r.body, "vitd_ec_cache_files");
    double ev = metric_value(r.body, "vitd_ec_cache_evictions_total{reason=\"bytes\"}");
    printf("  after %d more files: %.0f files, %.0f bytes, %.0f evicted for bytes\n", N, files, bytes, ev);
    CHECK_MSG(first_gone && last_there && bytes <= (double)max_bytes && ev >= 1, "retention bound did not hold");
    resp_free(&r);
}

/* ---- KServe v2 ---- */

static void test_kserve(suite *S) {
    printf("KServe v2\n");
    resp r;
    static const struct {
        const char *path;
        int status;
        const char *needle;
    } gets[] = {
        {"/v2", 200, "binary_tensor_data"},
        {"/v2/health/live", 200, "\"live\":true"},
        {"/v2/health/ready", 200, "\"ready\":true"},
        {"/v2/models/model", 200, "\"NUM_TOKENS\""},
        {"/v2/models/model/versions/1", 200, "\"IMAGE\""},
        {"/v2/models/model/ready", 200, "\"ready\":true"},
        {"/v2/models/other", 404, "unknown model: 'other'"},
        {"/v2/models/model/versions/2/ready", 404, "version 2"},
    };
    for (size_t i = 0; i < sizeof gets / sizeof gets[0]; i++) {
        CHECK(http_do(S->port, "GET", gets[i].path, NULL, NULL, 0, &r));
        CHECK_MSG(r.status == gets[i].status && r.body && strstr(r.body, gets[i].needle), "GET %s: %d %.200s",
                  gets[i].path, r.status, r.body);
        resp_free(&r);
    }
    /* JSON: two images, FP32 EMBEDS and the split points, against the float32 reference of that batch */
    st_file *ref32 = NULL, *ref16 = NULL;
    vitd_err err;
    CHECK_OK(st_open(S->ref_b01[1], &ref32, &err), &err);
    CHECK_OK(st_open(S->ref_b01[0], &ref16, &err), &err);
    if (!ref32 || !ref16) return;
    const st_tensor *rt[2] = {st_find(ref32, "image.0.embeddings"), st_find(ref32, "image.1.embeddings")};
    const st_tensor *rb[2] = {st_find(ref16, "image.0.embeddings"), st_find(ref16, "image.1.embeddings")};
    int64_t rows = rt[0]->shape[0] + rt[1]->shape[0], W = rt[0]->shape[1];
    char *e0 = b64_encode(S->img[0].data, S->img[0].len), *e1 = b64_encode(S->img[1].data, S->img[1].len);
    strbuf b = {0};
    strbuf_printf(&b, "{\"id\":\"kv-1\",\"inputs\":[{\"name\":\"IMAGE\",\"datatype\":\"BYTES\",\"shape\":[2],"
                      "\"data\":[\"%s\",\"%s\"]}],\"outputs\":[{\"name\":\"EMBEDS\"},{\"name\":\"NUM_TOKENS\"},"
                      "{\"name\":\"GRID_THW\"}]}", e0, e1);
    char *body = strbuf_finish(&b);
    CHECK(post(S->port, "/v2/models/model/infer", "Content-Type: application/json\r\n", body, strlen(body), &r));
    cJSON *root = r.status == 200 ? cJSON_ParseWithLength(r.body, r.len) : NULL;
    CHECK_MSG(root, "JSON infer: %d %.300s", r.status, r.body);
    const cJSON *outs = cJSON_GetObjectItem(root, "outputs");
    const cJSON *data = cJSON_GetObjectItem(cJSON_GetArrayItem(outs, 0), "data");
    int n_bad = 0;
    int64_t at = 0;
    for (int i = 0; i < 2 && data; i++)
        for (int64_t t = 0; t < rt[i]->shape[0]; t++)
            for (int c = 0; c < S->D; c++, at++) {
                float want;
                memcpy(&want, (const uint8_t *)rt[i]->data + 4 * (size_t)(t * W + c), 4);
                n_bad += (float)cJSON_GetArrayItem(data, (int)at)->valuedouble != want;
            }
    CHECK_MSG(root && at == rows * S->D && n_bad == 0, "EMBEDS (JSON): %d of %lld values differ from vitd encode", n_bad,
              (long long)at);
    const cJSON *nt = cJSON_GetObjectItem(cJSON_GetArrayItem(outs, 1), "data");
    CHECK(cJSON_GetArrayItem(nt, 0)->valueint == rt[0]->shape[0] && cJSON_GetArrayItem(nt, 1)->valueint == rt[1]->shape[0]);
    CHECK(!strcmp(cJSON_GetObjectItem(root, "id")->valuestring, "kv-1"));
    cJSON_Delete(root);
    resp_free(&r);
    free(body);
    /* binary both ways (as tritonclient does by default): BF16 CONCAT against the bfloat16 reference */
    size_t l0 = S->img[0].len, l1 = S->img[1].len;
    char json[512];
    int jl = snprintf(json, sizeof json, "{\"inputs\":[{\"name\":\"IMAGE\",\"datatype\":\"BYTES\",\"shape\":[2],"
                      "\"parameters\":{\"binary_data_size\":%zu}}],\"outputs\":[{\"name\":\"CONCAT\",\"parameters\":"
                      "{\"binary_data\":true,\"datatype\":\"BF16\"}},{\"name\":\"NUM_TOKENS\",\"parameters\":"
                      "{\"binary_data\":true}}]}", 8 + l0 + l1);
    size_t bl = (size_t)jl + 8 + l0 + l1;
    uint8_t *bin = xmalloc(bl);
    memcpy(bin, json, (size_t)jl);
    uint32_t u0 = (uint32_t)l0, u1 = (uint32_t)l1;
    memcpy(bin + jl, &u0, 4);
    memcpy(bin + jl + 4, S->img[0].data, l0);
    memcpy(bin + jl + 4 + l0, &u1, 4);
    memcpy(bin + jl + 8 + l0, S->img[1].data, l1);
    char hdr[160];
    snprintf(hdr, sizeof hdr, "Content-Type: application/octet-stream\r\nInference-Header-Content-Length: %d\r\n", jl);
    CHECK(post(S->port, "/v2/models/model/versions/1/infer", hdr, bin, bl, &r));
    char v[32], ct[64];
    size_t hl = resp_header(&r, "Inference-Header-Content-Length", v, sizeof v) ? strtoull(v, NULL, 10) : 0;
    CHECK_MSG(r.status == 200 && hl > 0 && resp_header(&r, "Content-Type", ct, sizeof ct) &&
                  !strcmp(ct, "application/octet-stream"), "binary infer: %d %.200s", r.status, r.body);
    size_t cat = (size_t)(rows * W * 2);
    CHECK_MSG(r.len == hl + cat + 16, "binary answer %zu bytes, want %zu", r.len, hl + cat + 16);
    if (r.len == hl + cat + 16) {
        size_t b0 = rb[0]->nbytes;
        CHECK_MSG(!memcmp(r.body + hl, rb[0]->data, b0) && !memcmp(r.body + hl + b0, rb[1]->data, rb[1]->nbytes),
                  "CONCAT (BF16, binary) differs from vitd encode");
        int64_t n0, n1;
        memcpy(&n0, r.body + hl + cat, 8);
        memcpy(&n1, r.body + hl + cat + 8, 8);
        CHECK(n0 == rt[0]->shape[0] && n1 == rt[1]->shape[0]);
        printf("  binary infer: %zu-byte JSON + %zu bytes of CONCAT BF16 + NUM_TOKENS, equal to vitd encode\n", hl, cat);
    }
    resp_free(&r);
    /* a raw binary request (Inference-Header-Content-Length: 0): one element, every output binary */
    CHECK(post(S->port, "/v2/models/model/infer", "Inference-Header-Content-Length: 0\r\n", bin + jl, 4 + l0, &r));
    hl = resp_header(&r, "Inference-Header-Content-Length", v, sizeof v) ? strtoull(v, NULL, 10) : 0;
    CHECK_MSG(r.status == 200 && hl > 0 && strstr(r.body, "\"GRID_THW\""), "raw binary infer: %d", r.status);
    resp_free(&r);
    free(bin);
    free(e0);
    free(e1);
    /* errors in the protocol's shape */
    static const struct {
        const char *path, *headers, *body, *needle;
        int status;
    } bad[] = {
        {"/v2/models/model/infer", "", "{\"inputs\":[{\"name\":\"PIXELS\",\"datatype\":\"BYTES\",\"shape\":[1],"
         "\"data\":[\"aGk=\"]}]}", "unexpected inference input 'PIXELS'", 400},
        {"/v2/models/model/infer", "Inference-Header-Content-Length: x\r\n", "{}", "Inference-Header-Content-Length",
         400},
        {"/v2/models/other/infer", "", "{}", "unknown model: 'other'", 404},
        {"/v2/models/model/infer", "", "{\"inputs\":[{\"name\":\"IMAGE\",\"datatype\":\"BYTES\",\"shape\":[1],"
         "\"data\":[\"aGk=\"]}],\"outputs\":[{\"name\":\"EMBEDS\",\"parameters\":{\"datatype\":\"BF16\"}}]}",
         "via JSON", 400},
        {"/v2/models/model/infer", "", "{\"inputs\":[{\"name\":\"IMAGE\",\"datatype\":\"BYTES\",\"shape\":[1],"
         "\"data\":[\"aGVsbG8gd29ybGQ=\"]}]}", "image 0: unrecognised", 422},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        CHECK(post(S->port, bad[i].path, bad[i].headers, bad[i].body, strlen(bad[i].body), &r));
        check_v2_error(&r, bad[i].status, bad[i].needle, "v2 refusal");
        resp_free(&r);
    }
    CHECK(http_do(S->port, "GET", "/v2/models/model/infer", NULL, NULL, 0, &r));
    check_v2_error(&r, 405, "allowed", "GET on infer");
    resp_free(&r);
    st_close(ref32);
    st_close(ref16);
}

static void test_metrics(suite *S) {
    printf("metrics\n");
    resp r;
    CHECK(http_do(S->port, "GET", "/metrics", NULL, NULL, 0, &r));
    static const char *const positive[] = {
        "vitd_handover_images_total{kind=\"vllm_inline\"}", "vitd_handover_images_total{kind=\"vllm_ec_cache\"}",
        "vitd_handover_images_total{kind=\"epd\"}", "vitd_handover_images_total{kind=\"kserve_json\"}",
        "vitd_handover_images_total{kind=\"kserve_binary\"}", "vitd_handover_bytes_total{kind=\"vllm_inline\"}",
        "vitd_requests_total{route=\"/v1/vllm/image_embeds\",status=\"200\"}",
        "vitd_requests_total{route=\"/v1/chat/completions\",status=\"200\"}",
        "vitd_requests_total{route=\"/v2/models/{model}/infer\",status=\"200\"}",
        "vitd_ec_cache_writes_total{result=\"ok\"}", "vitd_ec_cache_files", "vitd_ec_proxy_registered",
        "vitd_ec_proxy_announces_total{result=\"ok\"}",
    };
    for (size_t i = 0; i < sizeof positive / sizeof positive[0]; i++) {
        double v = r.body ? metric_value(r.body, positive[i]) : -1;
        CHECK_MSG(v > 0, "%s = %g", positive[i], v);
    }
    printf("  vitd_handover_images_total: inline %.0f, ec_cache %.0f, epd %.0f, kserve %.0f + %.0f\n",
           metric_value(r.body, positive[0]), metric_value(r.body, positive[1]), metric_value(r.body, positive[2]),
           metric_value(r.body, positive[3]), metric_value(r.body, positive[4]));
    resp_free(&r);
}

/* API key on every new route but the probes; the keyed answer form; a new-route request during a drain. */
static void test_auth_keyed_drain(suite *S) {
    printf("API key, keyed ec_transfer_params, drain\n");
    server s;
    char ec[400], a_ec[500];
    snprintf(ec, sizeof ec, "%s/ec2", S->dir);
    snprintf(a_ec, sizeof a_ec, "--ec-cache-dir=%s", ec);
    const char *extra[] = {"--api-key=sekret", a_ec, "--ec-transfer-format=keyed", "--batch-delay-ms=1000",
                           "--model-name=org/tiny-vl", "--output-dtype=bfloat16", NULL};
    if (!start_server(&s, S->dir, S->model, "auth", extra)) {
        CHECK_MSG(0, "auth server did not start");
        server_wait_exit(&s, 5);
        return;
    }
    static const struct {
        const char *method, *path;
        int status;
    } routes[] = {
        {"POST", "/v1/vllm/image_embeds", 401}, {"POST", "/v1/chat/completions", 401},
        {"POST", "/v2/models/org/tiny-vl/infer", 401}, {"GET", "/v2", 401}, {"GET", "/v2/models/org/tiny-vl", 401},
        {"GET", "/v2/health/live", 200}, {"GET", "/v2/health/ready", 200},
    };
    resp r;
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++) {
        CHECK(http_do(s.port, routes[i].method, routes[i].path, "Content-Type: application/json\r\n", "{}", 2, &r));
        CHECK_MSG(r.status == routes[i].status, "%s %s without the key: %d", routes[i].method, routes[i].path,
                  r.status);
        if (routes[i].status == 401 && !strncmp(routes[i].path, "/v2", 3)) check_v2_error(&r, 401, "API key", "v2 401");
        resp_free(&r);
    }
    /* a served name with '/', and KServe's JSON floats stay FP32 whatever output_dtype says */
    const char *key = "Authorization: Bearer sekret\r\n";
    CHECK(http_do(s.port, "GET", "/v2/models/org/tiny-vl/versions/1/ready", key, NULL, 0, &r));
    CHECK_MSG(r.status == 200 && strstr(r.body, "\"name\":\"org/tiny-vl\""), "ready: %d %.100s", r.status, r.body);
    resp_free(&r);
    CHECK(http_do(s.port, "GET", "/v2/nothing/here", key, NULL, 0, &r));
    check_v2_error(&r, 404, "no route", "unknown v2 path");
    resp_free(&r);
    char *e1 = b64_encode(S->img[1].data, S->img[1].len);
    strbuf jb = {0};
    strbuf_printf(&jb, "{\"inputs\":[{\"name\":\"IMAGE\",\"datatype\":\"BYTES\",\"shape\":[1],\"data\":[\"%s\"]}],"
                       "\"outputs\":[{\"name\":\"EMBEDS\"}]}", e1);
    char *jbody = strbuf_finish(&jb);
    char jh[128];
    snprintf(jh, sizeof jh, "%sContent-Type: application/json\r\n", key);
    CHECK(post(s.port, "/v2/models/org/tiny-vl/infer", jh, jbody, strlen(jbody), &r));
    CHECK_MSG(r.status == 200 && strstr(r.body, "\"datatype\":\"FP32\""), "JSON infer with output_dtype bfloat16: "
              "%d %.200s", r.status, r.body);
    resp_free(&r);
    free(jbody);
    free(e1);
    /* with the key: a chat request answered in the keyed form, half uploaded when SIGTERM arrives (so it is in
     * flight for sure), finished during the drain */
    char *body = chat_body(&S->img[1], "keyed-1", NULL);
    size_t blen = strlen(body), half = blen / 2;
    int fd = loopback_connect(s.port, IO_TIMEOUT_S);
    char head[256];
    int hn = snprintf(head, sizeof head, "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: "
                      "Bearer sekret\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n\r\n", blen);
    CHECK(fd >= 0 && loopback_send_all(fd, head, (size_t)hn) && loopback_send_all(fd, body, half));
    /* the chat request and the /metrics request (see wait_inflight) */
    double inflight = wait_inflight(s.port, "Authorization: Bearer sekret\r\n", 2, 10);
    CHECK_MSG(inflight >= 2, "the chat request never showed in flight (%.0f)", inflight);
    kill(s.pid, SIGTERM);
    int ready = 0;
    double t0 = vitd_now();
    while (vitd_now() - t0 < 5 && ready != 400) {
        if (!http_do(s.port, "GET", "/v2/health/ready", NULL, NULL, 0, &r)) break;
        ready = r.status;
        resp_free(&r);
    }
    CHECK_EQ_INT(400, ready);
    CHECK(http_do(s.port, "POST", "/v1/vllm/image_embeds", "Authorization: Bearer sekret\r\nContent-Type: image/png\r\n",
                  S->img[1].data, S->img[1].len, &r));
    check_error(&r, 503, "cancelled", "shutting down", "image_embeds during drain");
    resp_free(&r);
    CHECK(fd >= 0 && loopback_send_all(fd, body + half, blen - half));
    resp a;
    CHECK(fd >= 0 && read_response(fd, &a, false));
    cJSON *root = a.status == 200 ? cJSON_ParseWithLength(a.body, a.len) : NULL;
    const cJSON *kg = jpath(jpath(root, "ec_transfer_params", "keyed-1"), "metadata", "image_grid_thw");
    CHECK_MSG(cJSON_GetArraySize(kg) == 3, "keyed answer after SIGTERM: %d %.200s", a.status, a.body);
    char p[600];
    snprintf(p, sizeof p, "%s/keyed-1/encoder_cache.safetensors", ec);
    CHECK(access(p, F_OK) == 0);
    cJSON_Delete(root);
    resp_free(&a);
    if (fd >= 0) close(fd);
    free(body);
    CHECK_EQ_INT(0, server_wait_exit(&s, 60));
}

/* ec_proxy_url without ec_cache_dir is refused at start; a drain that times out while an upload is still
 * arriving answers it (or closes it) and exits 0, never touching freed pools; /metrics scraped in between reads
 * no freed scheduler. */
static void test_start_and_drain_timeout(suite *S) {
    printf("start-up check, drain timeout with an upload in flight\n");
    char log[700];
    snprintf(log, sizeof log, "%s/noproxydir.log", S->dir);
    char *argv[] = {VITD_EXE, "serve", "--model", S->model, "--port=0", "--backend=cpu",
                    "--ec-proxy-url=http://127.0.0.1:9", NULL};
    int rc = run_tool(argv, log);
    size_t n = 0;
    char *text = (char *)check_read_file(log, &n);
    CHECK_MSG(rc == 2 && text && strstr(text, "ec_proxy_url needs ec_cache_dir"), "exit %d", rc);
    free(text);
    server s;
    const char *extra[] = {"--drain-timeout-ms=300", NULL};
    if (!start_server(&s, S->dir, S->model, "dtimeout", extra)) {
        CHECK_MSG(0, "server did not start");
        server_wait_exit(&s, 5);
        return;
    }
    int fd = loopback_connect(s.port, IO_TIMEOUT_S);
    char head[256];
    int hn = snprintf(head, sizeof head, "POST /v1/vllm/image_embeds HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                      "image/png\r\nContent-Length: %zu\r\n\r\n", S->img[1].len);
    size_t half = S->img[1].len / 2;
    CHECK(fd >= 0 && loopback_send_all(fd, head, (size_t)hn) && loopback_send_all(fd, S->img[1].data, half));
    usleep(100 * 1000);
    kill(s.pid, SIGTERM);
    usleep(700 * 1000); /* past drain_timeout_ms: the pools are freed while the upload is unfinished */
    /* a scrape now (MHD still answers for up to 2 s) reads no freed scheduler: the queue reads empty */
    resp m;
    if (http_do(s.port, "GET", "/metrics", NULL, NULL, 0, &m)) {
        CHECK_MSG(m.status == 200 && metric_value(m.body, "vitd_queue_requests") == 0,
                  "/metrics after the drain timed out: %d", m.status);
        resp_free(&m);
    } else {
        CHECK_MSG(0, "/metrics after the drain timed out: no answer");
    }
    loopback_send_all(fd, S->img[1].data + half, S->img[1].len - half);
    resp a;
    bool got = read_response(fd, &a, false);
    printf("  the late upload: %s\n", got ? (a.status == 503 ? "503" : "answered") : "connection closed");
    CHECK_MSG(!got || a.status == 503 || a.status == 200, "late upload answered %d", a.status);
    if (got) resp_free(&a);
    close(fd);
    CHECK_EQ_INT(0, server_wait_exit(&s, 30));
}

int main(void) {
    signal(SIGPIPE, SIG_IGN);
    suite S = {0};
    snprintf(S.dir, sizeof S.dir, "/tmp/vitd_test_handover_XXXXXX");
    if (!mkdtemp(S.dir)) SKIP("cannot create a temporary directory");
    snprintf(S.model, sizeof S.model, "%s/model", S.dir);
    char log[700];
    snprintf(log, sizeof log, "%s/demo-model.log", S.dir);
    char *dm[] = {VITD_EXE, "demo-model", "--preset", "tiny", "--out", S.model, NULL};
    int rc = run_tool(dm, log);
    if (rc != 0) SKIP("`vitd demo-model --preset tiny` failed (exit %d); see %s", rc, log);
    for (int i = 0; i < N_IMG; i++)
        if (!load_image(&S.img[i], k_names[i][0], k_names[i][1])) SKIP("fixture %s missing", k_names[i][0]);
    /* references: `vitd encode --layout concat` of the same batches the server will run */
    int all[N_IMG] = {0, 1, 2, 3}, b01[2] = {0, 1}, b012[3] = {0, 1, 2};
    const char *dts[3] = {"bfloat16", "float16", "float32"};
    for (int d = 0; d < 3; d++) {
        snprintf(S.ref_one[d], sizeof S.ref_one[d], "%s/ref_one_%s.safetensors", S.dir, dts[d]);
        if (encode_ref(&S, S.ref_one[d], dts[d], true, all, N_IMG)) SKIP("vitd encode failed: %s.log", S.ref_one[d]);
    }
    for (int d = 0; d < 2; d++) {
        snprintf(S.ref_b01[d], sizeof S.ref_b01[d], "%s/ref_b01_%s.safetensors", S.dir, d ? "float32" : "bfloat16");
        if (encode_ref(&S, S.ref_b01[d], d ? "float32" : "bfloat16", false, b01, 2)) SKIP("vitd encode failed");
    }
    snprintf(S.ref_b012, sizeof S.ref_b012, "%s/ref_b012.safetensors", S.dir);
    if (encode_ref(&S, S.ref_b012, "bfloat16", false, b012, 3)) SKIP("vitd encode failed");
    find_python(&S);
    printf("python: %s (%s)\n", S.python[0] ? S.python : "none",
           S.torch ? "torch.load checks run" : "no torch here: the torch checks are skipped, the readers still run");

    if (!proxy_start(&S.px, 0)) SKIP("cannot listen on 127.0.0.1");
    char a_proxy[64], a_ec[500];
    snprintf(a_proxy, sizeof a_proxy, "--ec-proxy-url=http://127.0.0.1:%d", S.px.port);
    snprintf(a_ec, sizeof a_ec, "--ec-cache-dir=%s/ec", S.dir);
    const size_t max_bytes = 250000;
    char a_max[64];
    snprintf(a_max, sizeof a_max, "--ec-cache-max-bytes=%zu", max_bytes);
    const char *extra[] = {a_proxy, a_ec, a_max, "--ec-announce-interval-s=1", "--batch-delay-ms=5",
                           "--max-images-per-request=4", NULL};
    server srv;
    if (!start_server(&srv, S.dir, S.model, "main", extra)) {
        server_wait_exit(&srv, 5);
        CHECK_MSG(0, "vitd serve did not start");
        return check_done("test_handover_http");
    }
    S.port = srv.port;
    resp r;
    CHECK(http_do(S.port, "GET", "/v1/model", NULL, NULL, 0, &r));
    cJSON *m = cJSON_ParseWithLength(r.body, r.len);
    const cJSON *vc = cJSON_GetObjectItem(m, "vision_config");
    S.D = cJSON_GetObjectItem(vc, "out_hidden_size")->valueint;
    S.k = cJSON_GetArraySize(cJSON_GetObjectItem(vc, "deepstack_visual_indexes"));
    const cJSON *ho = jpath(m, "handover", "vllm");
    CHECK(cJSON_IsTrue(cJSON_GetObjectItem(ho, "ec_cache")) &&
          cJSON_GetObjectItem(ho, "embedding_width")->valueint == S.D * (1 + S.k));
    cJSON_Delete(m);
    resp_free(&r);

    test_vllm_parts(&S);
    test_ec_transfer(&S);
    test_epd(&S);
    test_retention(&S, max_bytes);
    test_kserve(&S);
    test_metrics(&S);
    /* drain: the proxy hears the DELETE before the process exits */
    int before = proxy_calls(&S.px);
    kill(srv.pid, SIGTERM);
    CHECK_EQ_INT(0, server_wait_exit(&srv, 60));
    int n = proxy_calls(&S.px);
    CHECK_MSG(n > before && !strcmp(S.px.method[proxy_slot(n - 1)], "DELETE") && !strcmp(S.px.path[proxy_slot(n - 1)], "/instances"),
              "no DELETE /instances on drain (last call %s %s)", n ? S.px.method[proxy_slot(n - 1)] : "-",
              n ? S.px.path[proxy_slot(n - 1)] : "-");
    proxy_stop(&S.px);
    test_auth_keyed_drain(&S);
    test_start_and_drain_timeout(&S);

    for (int i = 0; i < N_IMG; i++) free(S.img[i].data);
    int result = check_done("test_handover_http");
    if (result == 0) check_rm_tree(S.dir);
    else fprintf(stderr, "logs kept in %s\n", S.dir);
    return result;
}
