/* labels: http */
/* test_serving.c — the serving path through the real `vitd serve` (VITD_EXE, tiny demo model, CPU backend,
 * 127.0.0.1):
 *   - the output cache: every answer form is byte-identical on a miss, on the hit that follows, and on a server
 *     without the cache; concurrent requests for one new image share one encode (single flight); a request that
 *     waited on a leader whose client left encodes the image itself and answers right; the byte bound evicts and
 *     counts;
 *   - dtype defaults: with output_dtype auto the CPU backend's binary answers are float32 (its own dtype);
 *   - preprocessing split across the prep threads gives the same answers as one thread per image. */
#include <png.h>
#include <sys/stat.h>

#include "check.h"
#include "loopback.h"
#include "safetensors.h"
#include "serve_check.h"
#include "util.h"

enum { N_IMG = 4 };
static const char *k_names[N_IMG][2] = {{"chelsea.png", "image/png"}, {"rgb8.png", "image/png"},
                                        {"photo_q90_420.jpg", "image/jpeg"}, {"gif.gif", "image/gif"}};

typedef struct {
    char dir[256], model[600];
    image_file img[N_IMG];
    image_file big;             /* a 1600x1600 noise PNG: tens of milliseconds to decode */
} suite;

/* A w x h PNG of seeded noise (it does not compress, so it decodes slowly), malloc'd into f. */
static bool noise_png(image_file *f, uint32_t w, uint32_t h) {
    uint8_t *rgb = xmalloc((size_t)w * h * 3);
    unsigned long long rng = 4242;
    for (size_t i = 0; i < (size_t)w * h * 3; i++) rgb[i] = (uint8_t)check_rng_next(&rng);
    png_image pi;
    memset(&pi, 0, sizeof pi);
    pi.version = PNG_IMAGE_VERSION;
    pi.width = w;
    pi.height = h;
    pi.format = PNG_FORMAT_RGB;
    png_alloc_size_t n = 0;
    bool ok = png_image_write_to_memory(&pi, NULL, &n, 0, rgb, 0, NULL);
    f->data = ok ? xmalloc(n) : NULL;
    ok = ok && png_image_write_to_memory(&pi, f->data, &n, 0, rgb, 0, NULL);
    f->len = n;
    f->name = "noise.png";
    f->ctype = "image/png";
    free(rgb);
    return ok;
}

/* One request with a fixed request id (answers carry it), so two servers' answers can be compared byte for byte. */
static bool ask(int port, const char *path, const image_file *f, const char *accept, resp *r) {
    char h[256];
    snprintf(h, sizeof h, "Content-Type: %s\r\nX-Request-Id: fixed-id\r\n%s%s%s", f->ctype, accept ? "Accept: " : "",
             accept ? accept : "", accept ? "\r\n" : "");
    return http_do(port, "POST", path, h, f->data, f->len, r);
}


/* Every answer form: a miss and the hit after it on the caching server, and the uncached server, all equal. */
static void test_identical(suite *S, int cached, int plain) {
    printf("answers with and without the output cache\n");
    static const struct {
        const char *path, *accept;
    } forms[] = {
        {"/v1/encode", NULL},
        {"/v1/encode?encoding_format=base64&dtype=bfloat16", NULL},
        {"/v1/encode?deepstack=false", "application/vnd.safetensors"},
        {"/v1/encode", "application/vnd.safetensors"},
        {"/v1/encode?dtype=bfloat16&layout=concat", "application/vnd.safetensors"},
        {"/v1/encode?dtype=float16", "application/vnd.safetensors"},
        {"/v1/vllm/image_embeds", NULL},
    };
    int same = 0, total = 0;
    for (int i = 0; i < N_IMG; i++) {
        for (size_t f = 0; f < sizeof forms / sizeof forms[0]; f++) {
            resp a, b, c;
            bool ok = ask(cached, forms[f].path, &S->img[i], forms[f].accept, &a) &&
                      ask(cached, forms[f].path, &S->img[i], forms[f].accept, &b) &&
                      ask(plain, forms[f].path, &S->img[i], forms[f].accept, &c);
            bool eq = ok && a.status == 200 && b.status == 200 && c.status == 200 && a.len == b.len &&
                      a.len == c.len && !memcmp(a.body, b.body, a.len) && !memcmp(a.body, c.body, a.len);
            CHECK_MSG(eq, "%s %s (%s): statuses %d %d %d, %zu / %zu / %zu bytes", k_names[i][0], forms[f].path,
                      forms[f].accept ? forms[f].accept : "json", a.status, b.status, c.status, a.len, b.len, c.len);
            same += eq;
            total++;
            resp_free(&a), resp_free(&b), resp_free(&c);
        }
    }
    double hits = metric_at(cached, NULL, "vitd_output_cache_requests_total{result=\"hit\"}");
    double plain_hits = metric_at(plain, NULL, "vitd_output_cache_requests_total{result=\"hit\"}");
    printf("  %d of %d answers byte-identical (miss, hit, no cache); hits %.0f (uncached server: %.0f)\n", same,
           total, hits, plain_hits);
    CHECK_MSG(hits >= total, "only %.0f hits for %d repeated requests", hits, total);
    CHECK(plain_hits == 0);
    /* CPU backend, output_dtype auto: the binary answer is the engine's own float32 */
    resp r;
    CHECK(ask(plain, "/v1/encode", &S->img[1], "application/vnd.safetensors", &r));
    st_file *st = NULL;
    vitd_err err;
    CHECK(r.status == 200 && st_open_memory(r.body, r.len, &st, &err) == VITD_OK);
    if (st) {
        const st_tensor *t = st_find(st, "image.0.embeddings");
        CHECK_MSG(t && t->dtype == ST_F32 && !strcmp(st_metadata(st, "dtype"), "float32"),
                  "CPU auto dtype: not float32");
        st_close(st);
    }
    resp_free(&r);
}

typedef struct {
    int port;
    const image_file *img;
    resp r;
    bool ok;
} client;

static void *client_main(void *arg) {
    client *c = arg;
    c->ok = ask(c->port, "/v1/encode", c->img, "application/vnd.safetensors", &c->r);
    return NULL;
}

/* N concurrent requests for one image the server has not seen: one encode, N equal answers. */
static void test_single_flight(suite *S, int port, int plain) {
    enum { N = 6 };
    printf("single flight: %d concurrent requests for one new image\n", N);
    double enc0 = metric_at(port, NULL, "vitd_images_total");
    double waits0 = metric_at(port, NULL, "vitd_output_cache_requests_total{result=\"wait\"}");
    double hits0 = metric_at(port, NULL, "vitd_output_cache_requests_total{result=\"hit\"}");
    client c[N];
    pthread_t t[N];
    for (int i = 0; i < N; i++) {
        c[i] = (client){.port = port, .img = &S->big};
        pthread_create(&t[i], NULL, client_main, &c[i]);
    }
    for (int i = 0; i < N; i++) pthread_join(t[i], NULL);
    resp ref;
    CHECK(ask(plain, "/v1/encode", &S->big, "application/vnd.safetensors", &ref));
    int equal = 0;
    for (int i = 0; i < N; i++) {
        equal += c[i].ok && c[i].r.status == 200 && c[i].r.len == ref.len && !memcmp(c[i].r.body, ref.body, ref.len);
        resp_free(&c[i].r);
    }
    resp_free(&ref);
    double enc = metric_at(port, NULL, "vitd_images_total") - enc0;
    double waits = metric_at(port, NULL, "vitd_output_cache_requests_total{result=\"wait\"}") - waits0;
    double hits = metric_at(port, NULL, "vitd_output_cache_requests_total{result=\"hit\"}") - hits0;
    printf("  %d of %d answers equal to the uncached server's; images encoded %.0f, waits %.0f, hits %.0f\n", equal,
           N, enc, waits, hits);
    CHECK_EQ_INT(N, equal);
    CHECK_MSG(enc == 1 && waits >= 1 && waits + hits == N - 1, "encoded %.0f images, %.0f waited, %.0f hit; want 1, "
              ">= 1 and %d in all", enc, waits, hits, N - 1);
}

/* The leader's client hangs up, so its encode is cancelled: the request that waited on it encodes the image.
 * The hang-up must reach the server before the batcher starts the leader's image (the tens of milliseconds its
 * decode takes); on a loaded machine (sanitizers, two cores) it sometimes does not, and the waiter is served by
 * the leader's encode instead. So up to five rounds, each with a new key: every answer must be right, and at
 * least one round must take the retry path. */
static void test_leader_gone(suite *S, int port, int plain) {
    printf("single flight: the leader's client leaves\n");
    int retried_rounds = 0, rounds = 0;
    for (int round = 0; round < 5 && !retried_rounds; round++, rounds++) {
        image_file big2 = S->big;
        big2.len = S->big.len + 1 + (size_t)round;
        big2.data = xcalloc(big2.len, 1); /* bytes after IEND: the same image, another key each round */
        memcpy(big2.data, S->big.data, S->big.len);
        const image_file *f = &big2;
        double waits0 = metric_at(port, NULL, "vitd_output_cache_requests_total{result=\"wait\"}");
        double retry0 = metric_at(port, NULL, "vitd_output_cache_requests_total{result=\"retry\"}");
        /* the leader sends its image and hangs up at once: its job is cancelled when the batcher reaches it */
        int fd = loopback_connect(port, IO_TIMEOUT_S);
        char head[256];
        int hn = snprintf(head, sizeof head, "POST /v1/encode HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: %s\r\n"
                          "Content-Length: %zu\r\n\r\n", f->ctype, f->len);
        CHECK(fd >= 0 && loopback_send_all(fd, head, (size_t)hn) && loopback_send_all(fd, f->data, f->len));
        usleep(2 * 1000);
        client w = {.port = port, .img = f};
        pthread_t t;
        pthread_create(&t, NULL, client_main, &w);
        usleep(2 * 1000); /* the waiter's body is on its way; the leader leaves */
        if (fd >= 0) close(fd);
        pthread_join(t, NULL);
        resp ref;
        CHECK(ask(plain, "/v1/encode", f, "application/vnd.safetensors", &ref));
        bool eq = w.ok && w.r.status == 200 && w.r.len == ref.len && !memcmp(w.r.body, ref.body, ref.len);
        double waits = metric_at(port, NULL, "vitd_output_cache_requests_total{result=\"wait\"}") - waits0;
        double retries = metric_at(port, NULL, "vitd_output_cache_requests_total{result=\"retry\"}") - retry0;
        printf("  round %d: the waiter: %d, %s the uncached answer (waits %.0f, of which encoded again %.0f)\n",
               round, w.r.status, eq ? "equal to" : "unlike", waits, retries);
        CHECK(eq && waits == 1 && retries <= 1);
        if (retries == 1) retried_rounds++;
        resp_free(&w.r);
        resp_free(&ref);
        free(big2.data);
    }
    CHECK_MSG(retried_rounds == 1, "in %d rounds the leader's hang-up never made the waiter encode again", rounds);
}

/* A failing image fails fast (a truncated PNG: its prep task is done before the round's job is counted, unless
 * the count comes first): 60 of them, each followed by a good image, must all be answered, by both servers. A
 * job counted after its tasks were handed out freed the request twice within a few tries (a crash). */
static void test_fast_failures(suite *S, int port, int plain) {
    printf("fast failures\n");
    image_file trunc;
    if (!load_image(&trunc, "truncated.png", "image/png")) {
        CHECK_MSG(0, "fixture truncated.png missing");
        return;
    }
    int ok = 0;
    for (int i = 0; i < 60; i++) {
        int p = i % 2 ? plain : port;
        resp r;
        ok += ask(p, "/v1/encode", &trunc, "application/vnd.safetensors", &r) && r.status == 422;
        resp_free(&r);
        ok += ask(p, "/v1/encode", &S->img[1], "application/vnd.safetensors", &r) && r.status == 200;
        resp_free(&r);
    }
    printf("  60 truncated PNGs, each followed by a good image: %d of 120 answered as expected\n", ok);
    CHECK_EQ_INT(120, ok);
    free(trunc.data);
}

/* A bound of about two and a half entries: older entries are evicted, the bytes stay under it. */
static void test_bound(suite *S) {
    printf("byte bound\n");
    /* one entry of rgb8.png (80 tokens) on the tiny model: 80 x 64 x 3 float32 values */
    size_t one = 80 * 64 * 3 * 4, bound = one * 5 / 2;
    char a_bound[64];
    snprintf(a_bound, sizeof a_bound, "--output-cache-bytes=%zu", bound);
    const char *extra[] = {a_bound, NULL};
    server s;
    if (!start_server(&s, S->dir, S->model, "bound", extra)) {
        CHECK_MSG(0, "server did not start");
        server_wait_exit(&s, 5);
        return;
    }
    /* rgb8.png, then three variants of it (other bytes: a comment chunk after IEND), each its own entry */
    image_file v[4];
    for (int i = 0; i < 4; i++) {
        v[i] = S->img[1];
        v[i].data = xmalloc(S->img[1].len + 16);
        memcpy(v[i].data, S->img[1].data, S->img[1].len);
        v[i].len = S->img[1].len + (size_t)i; /* trailing bytes after IEND: the same pixels, another key */
        memset(v[i].data + S->img[1].len, 0, (size_t)i);
    }
    for (int i = 0; i < 4; i++) {
        resp r;
        CHECK(ask(s.port, "/v1/encode", &v[i], "application/vnd.safetensors", &r) && r.status == 200);
        resp_free(&r);
    }
    double ev = metric_at(s.port, NULL, "vitd_output_cache_evictions_total");
    double bytes = metric_at(s.port, NULL, "vitd_output_cache_bytes");
    double miss0 = metric_at(s.port, NULL, "vitd_output_cache_requests_total{result=\"miss\"}");
    resp r;
    CHECK(ask(s.port, "/v1/encode", &v[0], "application/vnd.safetensors", &r) && r.status == 200); /* evicted */
    resp_free(&r);
    double miss = metric_at(s.port, NULL, "vitd_output_cache_requests_total{result=\"miss\"}") - miss0;
    printf("  4 images into a cache of %zu bytes: %.0f evicted, %.0f bytes held; the first again: %s\n", bound, ev,
           bytes, miss == 1 ? "a miss" : "a hit");
    CHECK(ev >= 2 && bytes <= (double)bound && miss == 1);
    for (int i = 0; i < 4; i++) free(v[i].data);
    kill(s.pid, SIGTERM);
    CHECK_EQ_INT(0, server_wait_exit(&s, 30));
}

int main(void) {
    signal(SIGPIPE, SIG_IGN);
    suite S = {0};
    snprintf(S.dir, sizeof S.dir, "/tmp/vitd_test_serving_XXXXXX");
    if (!mkdtemp(S.dir)) SKIP("cannot create a temporary directory");
    snprintf(S.model, sizeof S.model, "%s/model", S.dir);
    char log[700];
    snprintf(log, sizeof log, "%s/demo-model.log", S.dir);
    char *dm[] = {VITD_EXE, "demo-model", "--preset", "tiny", "--out", S.model, NULL};
    int rc = run_tool(dm, log);
    if (rc != 0) SKIP("`vitd demo-model --preset tiny` failed (exit %d); see %s", rc, log);
    for (int i = 0; i < N_IMG; i++)
        if (!load_image(&S.img[i], k_names[i][0], k_names[i][1])) SKIP("fixture %s missing", k_names[i][0]);
    if (!noise_png(&S.big, 1600, 1600)) SKIP("cannot write a PNG");
    server cached, plain;
    const char *a_cached[] = {"--max-image-pixels=4000000", NULL};
    const char *a_plain[] = {"--output-cache-bytes=0", "--max-image-pixels=4000000", NULL};
    if (!start_server(&cached, S.dir, S.model, "cached", a_cached) ||
        !start_server(&plain, S.dir, S.model, "plain", a_plain)) {
        CHECK_MSG(0, "servers did not start");
        return check_done("test_serving");
    }
    test_single_flight(&S, cached.port, plain.port);
    test_leader_gone(&S, cached.port, plain.port);
    test_fast_failures(&S, cached.port, plain.port);
    test_identical(&S, cached.port, plain.port);
    kill(cached.pid, SIGTERM);
    kill(plain.pid, SIGTERM);
    CHECK_EQ_INT(0, server_wait_exit(&cached, 30));
    CHECK_EQ_INT(0, server_wait_exit(&plain, 30));
    test_bound(&S);
    for (int i = 0; i < N_IMG; i++) free(S.img[i].data);
    free(S.big.data);
    int result = check_done("test_serving");
    if (result == 0) check_rm_tree(S.dir);
    else fprintf(stderr, "logs kept in %s\n", S.dir);
    return result;
}
