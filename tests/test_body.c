/* labels: unit */
/* test_body.c — server/body.c: Content-Type handling, raw bodies, JSON bodies (base64, data: URLs, remote URLs,
 * every malformed shape), options, limits, base64 round trips, the multipart part collector alone, and multipart
 * end to end through a real libmicrohttpd daemon on 127.0.0.1 (port 0) whose handler feeds body_feed in pieces of
 * 1, 2, 3, ... bytes so that every split of a part's headers and data is exercised, plus one upload by curl. */
#include <arpa/inet.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdint.h>
#include <sys/socket.h>
#include <unistd.h>

#include "arena.h"
#include "body.h"
#include "check.h"
#include "reply.h"

static const encode_options default_opts = {ENC_FLOAT, true, ST_F32, LAYOUT_SEPARATE, false};

static uint64_t fnv64(const uint8_t *p, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

static void random_bytes(uint8_t *p, size_t n, unsigned long long seed) {
    unsigned long long s = seed;
    for (size_t i = 0; i < n; i++) p[i] = (uint8_t)check_rng_next(&s);
}

/* ---- a body parsed in one go (no server) ---- */

typedef struct {
    arena *a;
    body_result res;
    vitd_err err;
    vitd_status st;
} parsed;

/* Parses body with the given Content-Type, fed in chunks of `chunk` bytes. */
static parsed parse_body(const char *ctype, const void *body, size_t len, size_t chunk, body_limits lim) {
    parsed p = {arena_create(0), {0}, {0}, VITD_OK};
    body_state *s = NULL;
    p.st = body_begin(NULL, ctype, &lim, &default_opts, p.a, &s, &p.err);
    for (size_t off = 0; !p.st && off < len; off += chunk)
        p.st = body_feed(s, (const char *)body + off, len - off < chunk ? len - off : chunk, &p.err);
    if (!p.st) p.st = body_finish(s, &p.res, &p.err);
    body_end(s);
    return p;
}

static const body_limits lim_default = {1 << 24, 16};

static void test_content_types(void) {
    const uint8_t img[] = {0x89, 'P', 'N', 'G', 1, 2, 3};
    const char *raw_types[] = {"image/png", "image/jpeg", "Image/PNG; charset=binary", " IMAGE/JPEG ;q=1",
                               "image/webp", "image/x-anything", "application/octet-stream",
                               "Application/Octet-Stream; foo=bar"};
    for (size_t i = 0; i < sizeof raw_types / sizeof raw_types[0]; i++) {
        parsed p = parse_body(raw_types[i], img, sizeof img, 3, lim_default);
        CHECK_MSG(p.st == VITD_OK, "%s: %s", raw_types[i], p.err.msg);
        CHECK(p.res.n_images == 1 && p.res.images[0].len == sizeof img &&
              !memcmp(p.res.images[0].data, img, sizeof img));
        arena_free(p.a);
    }
    const char *bad_types[] = {"text/plain", "application/xml", "application/x-www-form-urlencoded", "image/",
                               "text/html; charset=utf-8", "multipart/mixed; boundary=x"};
    for (size_t i = 0; i < sizeof bad_types / sizeof bad_types[0]; i++) {
        parsed p = parse_body(bad_types[i], img, sizeof img, 7, lim_default);
        CHECK_EQ_INT(VITD_E_UNSUPPORTED, p.st);
        CHECK_EQ_INT(415, reply_http_status(p.st));
        char sent[64];
        snprintf(sent, sizeof sent, "\"%s\"", bad_types[i]);
        CHECK_STR_CONTAINS(p.err.msg, sent);
        CHECK_STR_CONTAINS(p.err.msg, "image/png");
        CHECK_STR_CONTAINS(p.err.msg, "multipart/form-data");
        CHECK_STR_CONTAINS(p.err.msg, "application/json");
        arena_free(p.a);
    }
    parsed p = parse_body(NULL, img, sizeof img, 7, lim_default);
    CHECK_EQ_INT(VITD_E_UNSUPPORTED, p.st);
    CHECK_STR_CONTAINS(p.err.msg, "missing Content-Type");
    CHECK_STR_CONTAINS(p.err.msg, "application/octet-stream");
    arena_free(p.a);
    p = parse_body("", img, sizeof img, 7, lim_default);
    CHECK_EQ_INT(VITD_E_UNSUPPORTED, p.st);
    arena_free(p.a);
    /* control characters in the echoed type do not reach the message */
    p = parse_body("text/evil\r\nX-Injected: 1", img, sizeof img, 7, lim_default);
    CHECK_EQ_INT(VITD_E_UNSUPPORTED, p.st);
    CHECK(!strchr(p.err.msg, '\r') && !strchr(p.err.msg, '\n'));
    arena_free(p.a);

    /* multipart Content-Type problems are 400 */
    const char *bad_mp[] = {"multipart/form-data", "multipart/form-data; charset=utf-8",
                            "multipart/form-data; boundary=", "multipart/form-data; boundary=\"\"",
                            "multipart/form-data; boundary=a{b}", "multipart/form-data; boundary=\"trailing \"",
                            "multipart/form-data; boundary=0123456789012345678901234567890123456789"
                            "012345678901234567890123456789X"}; /* 71 characters */
    for (size_t i = 0; i < sizeof bad_mp / sizeof bad_mp[0]; i++) {
        parsed q = parse_body(bad_mp[i], "x", 1, 1, lim_default);
        CHECK_MSG(q.st == VITD_E_INVALID_ARG, "%s: %d %s", bad_mp[i], q.st, q.err.msg);
        CHECK_STR_CONTAINS(q.err.msg, "boundary");
        arena_free(q.a);
    }
}

static void test_raw(void) {
    size_t n = 300000;
    uint8_t *img = malloc(n);
    random_bytes(img, n, 5);
    size_t chunks[] = {1, 7, 4096, 65536, 1 << 20};
    for (size_t c = 0; c < 5; c++) {
        size_t len = chunks[c] == 1 ? 5000 : n; /* byte by byte on a shorter body */
        parsed p = parse_body("image/png", img, len, chunks[c], lim_default);
        CHECK_OK(p.st, &p.err);
        CHECK(p.res.n_images == 1 && p.res.images[0].len == len && !memcmp(p.res.images[0].data, img, len));
        CHECK(p.res.opts.deepstack && p.res.opts.dtype == ST_F32);
        arena_free(p.a);
    }
    parsed p = parse_body("image/jpeg", img, 0, 1, lim_default);
    CHECK_EQ_INT(VITD_E_INVALID_ARG, p.st);
    CHECK_STR_CONTAINS(p.err.msg, "empty body");
    arena_free(p.a);

    /* max_body_bytes: exactly the limit passes; one byte more fails in body_feed, at the chunk that passes it */
    body_limits lim = {1000, 16};
    p = parse_body("image/png", img, 1000, 100, lim);
    CHECK_OK(p.st, &p.err);
    arena_free(p.a);
    arena *a = arena_create(0);
    body_state *s;
    vitd_err err = {0};
    CHECK_OK(body_begin(NULL, "image/png", &lim, &default_opts, a, &s, &err), &err);
    CHECK_OK(body_feed(s, (const char *)img, 600, &err), &err);
    size_t used = arena_used(a);
    CHECK_EQ_INT(VITD_E_TOO_LARGE, body_feed(s, (const char *)img, 401, &err));
    CHECK_EQ_INT(413, reply_http_status(err.code));
    CHECK_STR_CONTAINS(err.msg, "max_body_bytes 1000");
    CHECK_EQ_INT(used, arena_used(a)); /* nothing of the refused chunk was buffered */
    CHECK_EQ_INT(VITD_E_TOO_LARGE, body_feed(s, (const char *)img, 1, &err)); /* sticky */
    body_result r;
    CHECK_EQ_INT(VITD_E_TOO_LARGE, body_finish(s, &r, &err));
    body_end(s);
    arena_free(a);
    /* a huge single chunk does not overflow the running total */
    a = arena_create(0);
    CHECK_OK(body_begin(NULL, "application/json", &lim, &default_opts, a, &s, &err), &err);
    CHECK_EQ_INT(VITD_E_TOO_LARGE, body_feed(s, (const char *)img, SIZE_MAX, &err));
    body_end(s);
    arena_free(a);
    free(img);
}

/* ---- base64 ---- */

static void test_base64(void) {
    unsigned long long rng = 77;
    uint8_t src[1000], dec[1100];
    char enc[1400], messy[4000];
    int bad_plain = 0, bad_nopad = 0, bad_ws = 0, bad_url = 0, bad_len = 0;
    for (int iter = 0; iter < 3000; iter++) {
        size_t n = iter < 1001 ? (size_t)iter : check_rng_next(&rng) % 1001;
        for (size_t i = 0; i < n; i++) src[i] = (uint8_t)check_rng_next(&rng);
        size_t el = body_base64_encode(src, n, enc);
        bad_len += el != (n + 2) / 3 * 4 || strlen(enc) != el;
        long got = body_base64_decode(enc, el, dec);
        bad_plain += got != (long)n || memcmp(dec, src, n);
        /* without padding */
        size_t np = el;
        while (np && enc[np - 1] == '=') np--;
        got = body_base64_decode(enc, np, dec);
        bad_nopad += got != (long)n || memcmp(dec, src, n);
        /* whitespace and newlines anywhere (as MIME line wrapping and pretty printers add them) */
        size_t m = 0;
        for (size_t i = 0; i < el; i++) {
            if (check_rng_next(&rng) % 5 == 0) messy[m++] = " \n\r\t"[check_rng_next(&rng) % 4];
            if (i % 76 == 75) { messy[m++] = '\r'; messy[m++] = '\n'; }
            messy[m++] = enc[i];
        }
        messy[m++] = '\n';
        got = body_base64_decode(messy, m, dec);
        bad_ws += got != (long)n || memcmp(dec, src, n);
        /* URL-safe alphabet: accepted (documented in body.h) */
        for (size_t i = 0; i < el; i++) enc[i] = enc[i] == '+' ? '-' : enc[i] == '/' ? '_' : enc[i];
        got = body_base64_decode(enc, el, dec);
        bad_url += got != (long)n || memcmp(dec, src, n);
    }
    CHECK_EQ_INT(0, bad_len);
    CHECK_EQ_INT(0, bad_plain);
    CHECK_EQ_INT(0, bad_nopad);
    CHECK_EQ_INT(0, bad_ws);
    CHECK_EQ_INT(0, bad_url);
    printf("  base64: 3000 round trips (lengths 0..1000) plain, unpadded, with whitespace, url-safe\n");
    /* known vectors (RFC 4648 section 10) */
    const char *vec[][2] = {{"", ""}, {"f", "Zg=="}, {"fo", "Zm8="}, {"foo", "Zm9v"}, {"foob", "Zm9vYg=="},
                            {"fooba", "Zm9vYmE="}, {"foobar", "Zm9vYmFy"}};
    for (int i = 0; i < 7; i++) {
        body_base64_encode((const uint8_t *)vec[i][0], strlen(vec[i][0]), enc);
        CHECK(!strcmp(enc, vec[i][1]));
        long got = body_base64_decode(vec[i][1], strlen(vec[i][1]), dec);
        CHECK(got == (long)strlen(vec[i][0]) && !memcmp(dec, vec[i][0], (size_t)got));
    }
    const char *invalid[] = {"Z", "Zg=", "Zg===", "Zg=a", "Z===", "=Zg=", "Zm9v!", "Zm9v\x80", "Zm 9v Y",
                             "Zg==Zg=="};
    for (size_t i = 0; i < sizeof invalid / sizeof invalid[0]; i++)
        CHECK_MSG(body_base64_decode(invalid[i], strlen(invalid[i]), dec) == -1, "\"%s\" accepted", invalid[i]);
    CHECK_EQ_INT(1, body_base64_decode("Zg==\n  ", 7, dec)); /* whitespace after padding is fine */
}

/* ---- JSON ---- */

static char *b64_of(const uint8_t *p, size_t n) {
    char *s = malloc(n / 3 * 4 + 8);
    body_base64_encode(p, n, s);
    return s;
}

/* Parses a JSON text given as a C string. */
static parsed parse_json(const char *js, body_limits lim) {
    return parse_body("application/json; charset=utf-8", js, strlen(js), 1000, lim);
}

static void expect_json_error(const char *js, vitd_status code, const char *needle) {
    parsed p = parse_json(js, lim_default);
    CHECK_MSG(p.st == code, "%.80s: status %d (%s), want %d", js, p.st, p.err.msg, code);
    CHECK_STR_CONTAINS(p.err.msg, needle);
    arena_free(p.a);
}

static void test_json(void) {
    uint8_t a[1000], b[37], c[4];
    random_bytes(a, sizeof a, 1);
    random_bytes(b, sizeof b, 2);
    random_bytes(c, sizeof c, 3);
    char *ea = b64_of(a, sizeof a), *eb = b64_of(b, sizeof b), *ec = b64_of(c, sizeof c);
    /* url-safe + unpadded for c, a data: URL for b with an escaped slash, wrapped lines for a */
    for (char *q = ec; *q; q++) *q = *q == '+' ? '-' : *q == '/' ? '_' : *q;
    ec[strcspn(ec, "=")] = '\0';
    size_t cap = strlen(ea) * 2 + 1000;
    char *js = malloc(cap), *wrapped = malloc(strlen(ea) * 2);
    size_t w = 0;
    for (size_t i = 0; ea[i]; i++) {
        if (i && i % 60 == 0) { wrapped[w++] = '\\'; wrapped[w++] = 'n'; }
        wrapped[w++] = ea[i];
    }
    wrapped[w] = '\0';
    snprintf(js, cap, "{\"model\": \"x\", \"images\": [\"%s\", \"data:image/png;base64,%s\", \"  %s\"], "
             "\"encoding_format\": \"base64\", \"deepstack\": false, \"dtype\": \"bfloat16\", "
             "\"layout\": \"concat\"}",
             wrapped, eb, ec);
    for (size_t chunk = 1; chunk <= 4096; chunk *= 8) {
        parsed p = parse_body("Application/JSON", js, strlen(js), chunk, lim_default);
        CHECK_OK(p.st, &p.err);
        CHECK_EQ_INT(3, p.res.n_images);
        if (p.res.n_images == 3) {
            CHECK(p.res.images[0].len == sizeof a && !memcmp(p.res.images[0].data, a, sizeof a));
            CHECK(p.res.images[1].len == sizeof b && !memcmp(p.res.images[1].data, b, sizeof b));
            CHECK(p.res.images[2].len == sizeof c && !memcmp(p.res.images[2].data, c, sizeof c));
        }
        CHECK(p.res.opts.encoding == ENC_BASE64 && !p.res.opts.deepstack && p.res.opts.dtype == ST_BF16 &&
              p.res.opts.layout == LAYOUT_CONCAT);
        arena_free(p.a);
    }
    /* {"image": ...} for one; data: URL with parameters; "\/" escapes; deepstack as 0/1 and as a string */
    snprintf(js, cap, "{\"image\": \"DATA:Image/JPEG;name=x.jpg;BASE64,%s\", \"deepstack\": 0, "
             "\"dtype\": \"fp16\"}", eb);
    parsed p = parse_json(js, lim_default);
    CHECK_OK(p.st, &p.err);
    CHECK(p.res.n_images == 1 && p.res.images[0].len == sizeof b && !p.res.opts.deepstack &&
          p.res.opts.dtype == ST_F16);
    arena_free(p.a);
    p = parse_json("{\"images\": [\"Zm9v\\/Ygx\"], \"deepstack\": \"false\", \"encoding_format\": null}",
                   lim_default);
    CHECK_OK(p.st, &p.err);
    CHECK(p.res.n_images == 1 && p.res.images[0].len == 6 && !p.res.opts.deepstack &&
          p.res.opts.encoding == ENC_FLOAT);
    arena_free(p.a);

    /* every malformed shape, with the message naming what and which image */
    expect_json_error("", VITD_E_INVALID_ARG, "empty body");
    expect_json_error("{\"images\": [\"Zm9v\"", VITD_E_INVALID_ARG, "invalid JSON");
    expect_json_error("{\"images\": [\"Zm9v\"]} trailing", VITD_E_INVALID_ARG, "after the value");
    expect_json_error("[\"Zm9v\"]", VITD_E_INVALID_ARG, "must be an object");
    expect_json_error("\"Zm9v\"", VITD_E_INVALID_ARG, "must be an object");
    expect_json_error("{\"pictures\": []}", VITD_E_INVALID_ARG, "no \"images\"");
    expect_json_error("{\"images\": \"Zm9v\"}", VITD_E_INVALID_ARG, "\"images\" must be an array");
    expect_json_error("{\"images\": []}", VITD_E_INVALID_ARG, "\"images\" is empty");
    expect_json_error("{\"images\": [\"Zm9v\", 42]}", VITD_E_INVALID_ARG, "image 1: must be a string");
    expect_json_error("{\"images\": [\"Zm9v\", {\"url\": \"x\"}]}", VITD_E_INVALID_ARG, "image 1: must be a string");
    expect_json_error("{\"images\": [\"Zm9v\", \"Zm9v\", \"Zm9v!\"]}", VITD_E_INVALID_ARG,
                      "image 2: invalid base64 character '!' (0x21) at offset 4");
    expect_json_error("{\"images\": [\"Zm9vY\"]}", VITD_E_INVALID_ARG, "image 0: invalid base64");
    expect_json_error("{\"images\": [\"\"]}", VITD_E_INVALID_ARG, "image 0: empty image data");
    expect_json_error("{\"images\": [\"Zm9v\", \"data:image/png;base64,\"]}", VITD_E_INVALID_ARG,
                      "image 1: empty image data");
    expect_json_error("{\"images\": [\"data:image/png,rawbytes\"]}", VITD_E_INVALID_ARG, "not base64-encoded");
    expect_json_error("{\"images\": [\"data:text/plain;base64,Zm9v\"]}", VITD_E_INVALID_ARG,
                      "image 0: data: URL type \"text/plain\" is not an image type");
    expect_json_error("{\"images\": [\"data:;base64,Zm9v\"]}", VITD_E_INVALID_ARG, "not an image type");
    expect_json_error("{\"images\": [\"data:image/png;base64\"]}", VITD_E_INVALID_ARG, "no comma");
    const char *urls[] = {"http://example.com/a.png", "https://example.com/a.png", "HTTPS://X/y", "ftp://h/f",
                          "file:///etc/passwd", "s3://bucket/key", "file:/etc/passwd"};
    for (size_t i = 0; i < sizeof urls / sizeof urls[0]; i++) {
        snprintf(js, cap, "{\"images\": [\"Zm9v\", \"%s\"]}", urls[i]);
        expect_json_error(js, VITD_E_INVALID_ARG, "image 1: remote URLs are not fetched");
    }
    expect_json_error("{\"images\": [\"Zm9v\"], \"image\": \"Zm9v\"}", VITD_E_INVALID_ARG, "both");
    expect_json_error("{\"image\": 5}", VITD_E_INVALID_ARG, "\"image\" must be a string");
    expect_json_error("{\"images\": [\"Zm9v\"], \"dtype\": 16}", VITD_E_INVALID_ARG, "\"dtype\" must be a string");
    expect_json_error("{\"images\": [\"Zm9v\"], \"deepstack\": \"maybe\"}", VITD_E_INVALID_ARG,
                      "deepstack: \"maybe\" is not one of true, false");
    expect_json_error("{\"images\": [\"Zm9v\"], \"dtype\": \"int8\"}", VITD_E_INVALID_ARG,
                      "dtype: \"int8\" is not one of float32, bfloat16, float16");
    expect_json_error("{\"images\": [\"Zm9v\"], \"encoding_format\": \"hex\"}", VITD_E_INVALID_ARG,
                      "encoding_format: \"hex\" is not one of float, base64");
    expect_json_error("{\"images\": [\"Zm9v\"], \"layout\": \"interleaved\"}", VITD_E_INVALID_ARG,
                      "layout: \"interleaved\" is not one of separate, concat");
    /* max_images: 413 before any decoding */
    body_limits two = {1 << 20, 2};
    p = parse_json("{\"images\": [\"Zm9v\", \"Zm9v\", \"!!!!\"]}", two);
    CHECK_EQ_INT(VITD_E_TOO_LARGE, p.st);
    CHECK_STR_CONTAINS(p.err.msg, "3 images exceed max_images 2");
    arena_free(p.a);
    p = parse_json("{\"images\": [\"Zm9v\", \"Zm9v\"]}", two);
    CHECK_OK(p.st, &p.err);
    arena_free(p.a);
    /* a big base64 payload decodes into the arena; the arena holds about the decoded size, not the JSON text */
    size_t big = 3 << 20;
    uint8_t *raw = malloc(big);
    random_bytes(raw, big, 9);
    char *e = b64_of(raw, big);
    size_t bigcap = strlen(e) + 64;
    char *bigjs = malloc(bigcap);
    if (!bigjs) return;
    snprintf(bigjs, bigcap, "{\"images\":[\"%s\"]}", e);
    p = parse_body("application/json", bigjs, strlen(bigjs), 65536, (body_limits){8 << 20, 4});
    CHECK_OK(p.st, &p.err);
    CHECK(p.res.n_images == 1 && p.res.images[0].len == big && !memcmp(p.res.images[0].data, raw, big));
    CHECK_MSG(arena_used(p.a) < big + (256 << 10), "arena holds %zu bytes for a %zu-byte image", arena_used(p.a),
              big);
    printf("  json: %zu-byte body -> %zu-byte image, arena_used %zu\n", strlen(bigjs), big, arena_used(p.a));
    arena_free(p.a);
    p = parse_body("application/json", bigjs, strlen(bigjs), 65536, (body_limits){4 << 20, 4});
    CHECK_EQ_INT(VITD_E_TOO_LARGE, p.st);
    arena_free(p.a);
    free(raw), free(e), free(bigjs);
    free(ea), free(eb), free(ec), free(js), free(wrapped);
}

static void test_options(void) {
    vitd_err err = {0};
    encode_options o = default_opts;
    struct { const char *k, *v; } ok[] = {{"deepstack", "false"}, {"deepstack", "TRUE"}, {"deepstack", "0"},
                                          {"deepstack", "1"}, {"dtype", "bfloat16"}, {"dtype", "bf16"},
                                          {"dtype", "float16"}, {"dtype", "FP16"}, {"dtype", "fp32"},
                                          {"dtype", "float32"}, {"encoding_format", "base64"},
                                          {"encoding_format", "float"}, {"layout", "concat"},
                                          {"layout", "separate"}};
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++)
        CHECK_MSG(body_apply_option(&o, ok[i].k, ok[i].v, &err) == 0, "%s=%s: %s", ok[i].k, ok[i].v, err.msg);
    o = default_opts;
    body_apply_option(&o, "dtype", "bf16", &err);
    CHECK(o.dtype == ST_BF16);
    body_apply_option(&o, "dtype", "fp16", &err);
    CHECK(o.dtype == ST_F16);
    body_apply_option(&o, "deepstack", "0", &err);
    CHECK(!o.deepstack);
    body_apply_option(&o, "layout", "concat", &err);
    CHECK(o.layout == LAYOUT_CONCAT);
    body_apply_option(&o, "encoding_format", "base64", &err);
    CHECK(o.encoding == ENC_BASE64);
    CHECK_EQ_INT(1, body_apply_option(&o, "model", "whatever", &err)); /* unknown keys: ignored */
    struct { const char *k, *v, *msg; } bad[] = {
        {"deepstack", "yes", "deepstack: \"yes\" is not one of true, false, 1, 0"},
        {"deepstack", NULL, "deepstack: \"\" is not one of"},
        {"dtype", "float64", "dtype: \"float64\" is not one of float32, bfloat16, float16 (or fp32, bf16, fp16)"},
        {"encoding_format", "binary", "encoding_format: \"binary\" is not one of float, base64"},
        {"layout", "stack\n", "layout: \"stack?\" is not one of separate, concat"}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        CHECK_EQ_INT(VITD_E_INVALID_ARG, body_apply_option(&o, bad[i].k, bad[i].v, &err));
        CHECK_STR_CONTAINS(err.msg, bad[i].msg);
    }
}

/* ---- multipart collector alone (no post processor) ---- */

static void test_multipart_collector(void) {
    arena *a = arena_create(0);
    body_state *s;
    vitd_err err = {0};
    body_limits lim = {1 << 20, 3};
    CHECK_OK(body_begin(NULL, "multipart/form-data; boundary=XyZ", &lim, &default_opts, a, &s, &err), &err);
    /* field, file in three pieces (with the empty first piece the post processor sends when a chunk ends right
     * after the part's headers), text field that is not an option, file by content type only, option field */
    CHECK_OK(body_multipart_piece(s, "dtype", NULL, NULL, "", 0, 0, &err), &err);
    CHECK_OK(body_multipart_piece(s, "dtype", NULL, NULL, "bf", 0, 2, &err), &err);
    CHECK_OK(body_multipart_piece(s, "dtype", NULL, NULL, "16", 2, 2, &err), &err);
    CHECK_OK(body_multipart_delimiter(s, &err), &err);
    CHECK_OK(body_multipart_piece(s, "image", "a.png", "image/png", "", 0, 0, &err), &err);
    CHECK_OK(body_multipart_piece(s, "image", "a.png", "image/png", "ABC", 0, 3, &err), &err);
    CHECK_OK(body_multipart_piece(s, "image", "a.png", "image/png", "DEFG", 3, 4, &err), &err);
    CHECK_OK(body_multipart_delimiter(s, &err), &err);
    CHECK_OK(body_multipart_piece(s, "note", NULL, "text/plain; charset=utf-8", "hello", 0, 5, &err), &err);
    CHECK_OK(body_multipart_delimiter(s, &err), &err);
    CHECK_OK(body_multipart_piece(s, "blob", NULL, "application/octet-stream", "xy", 0, 2, &err), &err);
    CHECK_OK(body_multipart_delimiter(s, &err), &err);
    CHECK_OK(body_multipart_piece(s, "layout", NULL, NULL, "concat", 0, 6, &err), &err);
    CHECK_OK(body_multipart_delimiter(s, &err), &err);
    body_result r;
    CHECK_OK(body_finish(s, &r, &err), &err);
    CHECK_EQ_INT(2, r.n_images);
    if (r.n_images == 2) {
        CHECK(r.images[0].len == 7 && !memcmp(r.images[0].data, "ABCDEFG", 7));
        CHECK(r.images[1].len == 2 && !memcmp(r.images[1].data, "xy", 2));
    }
    CHECK(r.opts.dtype == ST_BF16 && r.opts.layout == LAYOUT_CONCAT && r.opts.deepstack);
    body_end(s);

    /* an empty file part is an error naming its index; a second image after it is not needed to see it */
    CHECK_OK(body_begin(NULL, "multipart/form-data; boundary=XyZ", &lim, &default_opts, a, &s, &err), &err);
    CHECK_OK(body_multipart_piece(s, "image", "a.png", "image/png", "A", 0, 1, &err), &err);
    CHECK_OK(body_multipart_delimiter(s, &err), &err);
    CHECK_OK(body_multipart_piece(s, "image", "b.png", "image/png", "", 0, 0, &err), &err);
    CHECK_EQ_INT(VITD_E_INVALID_ARG, body_multipart_delimiter(s, &err));
    CHECK_STR_CONTAINS(err.msg, "image 1: multipart file part \"b.png\" is empty");
    CHECK_EQ_INT(VITD_E_INVALID_ARG, body_finish(s, &r, &err));
    body_end(s);

    /* more file parts than max_images: 413 when the extra part starts */
    CHECK_OK(body_begin(NULL, "multipart/form-data; boundary=XyZ", &lim, &default_opts, a, &s, &err), &err);
    for (int i = 0; i < 3; i++) {
        CHECK_OK(body_multipart_piece(s, "image", "f", NULL, "z", 0, 1, &err), &err);
        CHECK_OK(body_multipart_delimiter(s, &err), &err);
    }
    CHECK_EQ_INT(VITD_E_TOO_LARGE, body_multipart_piece(s, "image", "f", NULL, "z", 0, 1, &err));
    CHECK_STR_CONTAINS(err.msg, "max_images 3");
    body_end(s);

    /* only fields: no image; a bad option value names the key; an over-long option value */
    CHECK_OK(body_begin(NULL, "multipart/form-data; boundary=XyZ", &lim, &default_opts, a, &s, &err), &err);
    CHECK_OK(body_multipart_piece(s, "comment", NULL, NULL, "hi", 0, 2, &err), &err);
    CHECK_OK(body_multipart_delimiter(s, &err), &err);
    CHECK_EQ_INT(VITD_E_INVALID_ARG, body_finish(s, &r, &err));
    CHECK_STR_CONTAINS(err.msg, "no image in multipart body");
    body_end(s);
    CHECK_OK(body_begin(NULL, "multipart/form-data; boundary=XyZ", &lim, &default_opts, a, &s, &err), &err);
    CHECK_OK(body_multipart_piece(s, "dtype", NULL, NULL, "half", 0, 4, &err), &err);
    CHECK_EQ_INT(VITD_E_INVALID_ARG, body_multipart_delimiter(s, &err));
    CHECK_STR_CONTAINS(err.msg, "dtype: \"half\"");
    body_end(s);
    char longv[400];
    memset(longv, 'a', sizeof longv);
    CHECK_OK(body_begin(NULL, "multipart/form-data; boundary=XyZ", &lim, &default_opts, a, &s, &err), &err);
    CHECK_OK(body_multipart_piece(s, "layout", NULL, NULL, longv, 0, sizeof longv, &err), &err);
    CHECK_EQ_INT(VITD_E_INVALID_ARG, body_multipart_delimiter(s, &err));
    CHECK_STR_CONTAINS(err.msg, "layout: multipart field value longer than");
    body_end(s);
    /* a NUL inside a field would cut the value short ("float16\0junk" read as float16): refused */
    CHECK_OK(body_begin(NULL, "multipart/form-data; boundary=XyZ", &lim, &default_opts, a, &s, &err), &err);
    CHECK_OK(body_multipart_piece(s, "dtype", NULL, NULL, "float16\0junk", 0, 12, &err), &err);
    CHECK_EQ_INT(VITD_E_INVALID_ARG, body_multipart_delimiter(s, &err));
    CHECK_STR_CONTAINS(err.msg, "dtype: multipart field value holds a NUL byte");
    body_end(s);
    arena_free(a);
}

/* ---- end to end through libmicrohttpd ---- */

typedef struct {
    arena *a;
    body_state *s;
    vitd_status st;
    vitd_err err;
    encode_options opts;
    size_t split;
} conn_ctx;

static enum MHD_Result apply_query(void *cls, enum MHD_ValueKind kind, const char *key, const char *value) {
    (void)kind;
    conn_ctx *x = cls;
    if (x->st) return MHD_NO;
    int r = body_apply_option(&x->opts, key, value, &x->err);
    if (r < 0) x->st = (vitd_status)r;
    return MHD_YES;
}

/* The test server: request headers X-Split (feed size), X-Max-Body and X-Max-Images set the knobs; the answer
 * lists the options and each image's length and FNV-1a hash, or is reply_error_json with its HTTP status. */
static enum MHD_Result handler(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                               const char *version, const char *upload, size_t *upload_size, void **req_cls) {
    (void)cls, (void)url, (void)method, (void)version;
    conn_ctx *x = *req_cls;
    if (!x) {
        x = calloc(1, sizeof *x);
        *req_cls = x;
        x->a = arena_create(0);
        x->opts = default_opts;
        const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-Split");
        x->split = h ? strtoul(h, NULL, 10) : 0;
        body_limits lim = {64 << 20, 16};
        if ((h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-Max-Body")))
            lim.max_body_bytes = strtoul(h, NULL, 10);
        if ((h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-Max-Images"))) lim.max_images = atoi(h);
        MHD_get_connection_values(c, MHD_GET_ARGUMENT_KIND, apply_query, x);
        const char *ct = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE);
        if (!x->st) x->st = body_begin(c, ct, &lim, &x->opts, x->a, &x->s, &x->err);
        return MHD_YES;
    }
    if (*upload_size) {
        size_t step = x->split ? x->split : *upload_size;
        for (size_t off = 0; !x->st && off < *upload_size; off += step)
            x->st = body_feed(x->s, upload + off, *upload_size - off < step ? *upload_size - off : step, &x->err);
        *upload_size = 0;
        return MHD_YES;
    }
    body_result r = {0};
    if (!x->st) x->st = body_finish(x->s, &r, &x->err);
    char *text;
    size_t len;
    int code = 200;
    if (x->st) {
        text = reply_error_json(vitd_status_name(x->st), x->err.msg, "test", &len);
        code = reply_http_status(x->st);
    } else {
        text = malloc(64 + 40 * (size_t)r.n_images);
        len = (size_t)sprintf(text, "n=%d enc=%d ds=%d dtype=%d layout=%d\n", r.n_images, r.opts.encoding,
                              r.opts.deepstack, r.opts.dtype, r.opts.layout);
        for (int i = 0; i < r.n_images; i++)
            len += (size_t)sprintf(text + len, "%zu %016llx\n", r.images[i].len,
                                   (unsigned long long)fnv64(r.images[i].data, r.images[i].len));
    }
    struct MHD_Response *resp = MHD_create_response_from_buffer(len, text, MHD_RESPMEM_MUST_FREE);
    enum MHD_Result ret = MHD_queue_response(c, (unsigned)code, resp);
    MHD_destroy_response(resp);
    return ret;
}

static void completed(void *cls, struct MHD_Connection *c, void **req_cls, enum MHD_RequestTerminationCode toe) {
    (void)cls, (void)c, (void)toe;
    conn_ctx *x = *req_cls;
    if (!x) return;
    body_end(x->s);
    arena_free(x->a);
    free(x);
    *req_cls = NULL;
}

typedef struct {
    int status;
    char body[8192];
} http_resp;

/* POSTs body to 127.0.0.1:port (one connection, Connection: close) and reads the whole answer. */
static int http_post(int port, const char *path, const char *ctype, const char *extra, const void *body, size_t len,
                     http_resp *out) {
    memset(out, 0, sizeof *out);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        if (fd >= 0) close(fd);
        return -1;
    }
    char head[1024];
    int hl = snprintf(head, sizeof head, "POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                      "Content-Length: %zu\r\n%s%s%s%s\r\n", path, len, ctype ? "Content-Type: " : "",
                      ctype ? ctype : "", ctype ? "\r\n" : "", extra ? extra : "");
    const char *parts[2] = {head, body};
    size_t lens[2] = {(size_t)hl, len};
    for (int k = 0; k < 2; k++)
        for (size_t off = 0; off < lens[k];) {
            ssize_t n = send(fd, parts[k] + off, lens[k] - off, MSG_NOSIGNAL);
            if (n <= 0) break; /* the server may answer and close early */
            off += (size_t)n;
        }
    static char buf[1 << 16];
    size_t got = 0;
    for (ssize_t n; got < sizeof buf - 1 && (n = recv(fd, buf + got, sizeof buf - 1 - got, 0)) > 0;)
        got += (size_t)n;
    buf[got] = '\0';
    close(fd);
    if (sscanf(buf, "HTTP/1.%*d %d", &out->status) != 1) return -1;
    const char *b = strstr(buf, "\r\n\r\n");
    snprintf(out->body, sizeof out->body, "%s", b ? b + 4 : "");
    return 0;
}

typedef struct {
    const char *name, *filename, *ctype;
    const uint8_t *data;
    size_t len;
} mpart;

/* Writes a multipart/form-data body as curl and browsers do; closing = whether the final "--B--" is written. */
static size_t build_multipart(uint8_t *out, const char *boundary, const mpart *p, int n, int closing) {
    size_t o = 0;
    for (int i = 0; i < n; i++) {
        o += (size_t)sprintf((char *)out + o, "--%s\r\nContent-Disposition: form-data; name=\"%s\"", boundary,
                             p[i].name);
        if (p[i].filename) o += (size_t)sprintf((char *)out + o, "; filename=\"%s\"", p[i].filename);
        o += (size_t)sprintf((char *)out + o, "\r\n");
        if (p[i].ctype) o += (size_t)sprintf((char *)out + o, "Content-Type: %s\r\n", p[i].ctype);
        o += (size_t)sprintf((char *)out + o, "\r\n");
        memcpy(out + o, p[i].data, p[i].len);
        o += p[i].len;
        o += (size_t)sprintf((char *)out + o, "\r\n");
    }
    if (closing) o += (size_t)sprintf((char *)out + o, "--%s--\r\n", boundary);
    return o;
}

/* Random image bytes salted with near-delimiters ("\r\n--" + a prefix of the boundary, "\r\n-", "--B" without
 * the CR LF) that must stay data. */
static void tricky_bytes(uint8_t *p, size_t n, const char *boundary, unsigned long long seed) {
    random_bytes(p, n, seed);
    unsigned long long s = seed;
    size_t bl = strlen(boundary);
    for (int k = 0; k < 20 && n > 100; k++) {
        size_t at = check_rng_next(&s) % (n - 90);
        size_t pre = check_rng_next(&s) % bl; /* strictly shorter than the boundary */
        int kind = k % 3;
        if (kind == 0) { memcpy(p + at, "\r\n--", 4); memcpy(p + at + 4, boundary, pre); }
        else if (kind == 1) memcpy(p + at, "\r\n-\r\n", 5);
        else { memcpy(p + at, "--", 2); memcpy(p + at + 2, boundary, bl); }
    }
    /* overlapping insertions may complete a real delimiter: break those (a client picks a boundary not in its
     * data) */
    char delim[128];
    int dl = snprintf(delim, sizeof delim, "\r\n--%s", boundary);
    for (uint8_t *q; (q = memmem(p, n, delim, (size_t)dl));) q[1] = 'x';
}

static void expect_images(const http_resp *r, const char *what, int n, const uint8_t *const *data,
                          const size_t *lens, const char *opts_line) {
    char want[4096];
    size_t o = (size_t)sprintf(want, "n=%d %s\n", n, opts_line);
    for (int i = 0; i < n; i++)
        o += (size_t)sprintf(want + o, "%zu %016llx\n", lens[i], (unsigned long long)fnv64(data[i], lens[i]));
    CHECK_MSG(r->status == 200 && !strcmp(r->body, want), "%s: got %d\n%s\nwant\n%s", what, r->status, r->body,
              want);
}

static void expect_error(const http_resp *r, const char *what, int status, const char *needle) {
    CHECK_MSG(r->status == status, "%s: status %d, want %d (%s)", what, r->status, status, r->body);
    CHECK_MSG(strstr(r->body, needle) != NULL, "%s: \"%s\" not in %s", what, needle, r->body);
    CHECK_MSG(strstr(r->body, "{\"error\":{\"code\":") == r->body, "%s: not an error body: %s", what, r->body);
}

static void test_http(void) {
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = 0};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct MHD_Daemon *d = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD, 0, NULL, NULL, handler, NULL,
                                            MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
                                            MHD_OPTION_NOTIFY_COMPLETED, completed, NULL, MHD_OPTION_END);
    if (!d) {
        printf("  http: cannot start a libmicrohttpd daemon on 127.0.0.1; end-to-end multipart not tested\n");
        CHECK(d != NULL);
        return;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    int port = info ? info->port : 0;
    CHECK(port > 0);
    const char *B = "----vitdTest7MA4YWxkTrZu0gW";
    size_t la = 3000, lb = 1, lc = 150000;
    uint8_t *ia = malloc(la), ib[1] = {0x42}, *ic = malloc(lc);
    tricky_bytes(ia, la, B, 11);
    tricky_bytes(ic, lc, B, 12);
    uint8_t *body = malloc(lc * 2 + 10000);
    char ct[256], hdr[256];
    snprintf(ct, sizeof ct, "multipart/form-data; boundary=%s", B);
    http_resp r;

    /* fields and three files (by filename, by content type only, big enough to arrive in many pieces), fed to the
     * post processor in pieces of every small size so that each split point of headers and data occurs */
    mpart parts[] = {{"deepstack", NULL, NULL, (const uint8_t *)"false", 5},
                     {"image", "a.png", "image/png", ia, la},
                     {"note", NULL, NULL, (const uint8_t *)"hello", 5},
                     {"img", NULL, "application/octet-stream", ib, lb},
                     {"dtype", NULL, "text/plain", (const uint8_t *)"bf16", 4},
                     {"image", "c.jpg", "image/jpeg", ic, lc}};
    size_t n = build_multipart(body, B, parts, 6, 1);
    const uint8_t *want_data[] = {ia, ib, ic};
    size_t want_len[] = {la, lb, lc};
    size_t splits[] = {1, 2, 3, 4, 5, 7, 11, 13, 64, 1000, 0};
    for (size_t k = 0; k < sizeof splits / sizeof splits[0]; k++) {
        char what[64];
        snprintf(what, sizeof what, "multipart split %zu", splits[k]);
        snprintf(hdr, sizeof hdr, "X-Split: %zu\r\n", splits[k]);
        CHECK(http_post(port, "/v1/encode?encoding_format=base64&dtype=float16", ct, hdr, body, n, &r) == 0);
        expect_images(&r, what, 3, want_data, want_len, "enc=1 ds=0 dtype=2 layout=0"); /* field bf16 (2) wins */
    }

    /* a preamble before the first delimiter and an epilogue after the closing one (RFC 2046 5.1.1: both are
     * ignored), at every split; the epilogue holds a fake delimiter and a part that must not be read */
    {
        static const char pre[] = "This is the preamble.  It is to be ignored.\r\n";
        char epi[256];
        snprintf(epi, sizeof epi, "This is the epilogue.\r\n--%s\r\nContent-Disposition: form-data; "
                 "name=\"image\"; filename=\"z.png\"\r\n\r\nnot an image\r\n--%s--\r\n", B, B);
        size_t lp = strlen(pre), le = strlen(epi);
        memcpy(body, pre, lp);
        n = lp + build_multipart(body + lp, B, parts, 6, 1);
        memcpy(body + n, epi, le);
        n += le;
        for (size_t k = 0; k < sizeof splits / sizeof splits[0]; k++) {
            char what[64];
            snprintf(what, sizeof what, "preamble + epilogue, split %zu", splits[k]);
            snprintf(hdr, sizeof hdr, "X-Split: %zu\r\n", splits[k]);
            CHECK(http_post(port, "/v1/encode?encoding_format=base64&dtype=float16", ct, hdr, body, n, &r) == 0);
            expect_images(&r, what, 3, want_data, want_len, "enc=1 ds=0 dtype=2 layout=0");
        }
    }

    /* an empty file part between two images: 400 naming image 1, at every split */
    mpart with_empty[] = {{"image", "a.png", "image/png", ia, 100},
                          {"image", "b.png", "image/png", ia, 0},
                          {"image", "c.png", "image/png", ic, 200}};
    n = build_multipart(body, B, with_empty, 3, 1);
    for (size_t k = 0; k < sizeof splits / sizeof splits[0]; k++) {
        snprintf(hdr, sizeof hdr, "X-Split: %zu\r\n", splits[k]);
        CHECK(http_post(port, "/v1/encode", ct, hdr, body, n, &r) == 0);
        expect_error(&r, "empty part", 400, "image 1: multipart file part \\\"b.png\\\" is empty");
    }
    /* an empty text field is fine */
    mpart empty_field[] = {{"comment", NULL, NULL, ia, 0}, {"image", "a.png", "image/png", ia, 100}};
    n = build_multipart(body, B, empty_field, 2, 1);
    for (size_t k = 0; k < sizeof splits / sizeof splits[0]; k++) {
        snprintf(hdr, sizeof hdr, "X-Split: %zu\r\n", splits[k]);
        CHECK(http_post(port, "/v1/encode", ct, hdr, body, n, &r) == 0);
        size_t l100 = 100;
        expect_images(&r, "empty field", 1, want_data, &l100, "enc=0 ds=1 dtype=0 layout=0");
    }
    /* only fields */
    n = build_multipart(body, B, parts, 1, 1);
    CHECK(http_post(port, "/v1/encode", ct, NULL, body, n, &r) == 0);
    expect_error(&r, "no file part", 400, "no image in multipart body");
    /* a body written with another boundary */
    mpart plain[] = {{"image", "x.png", "image/png", (const uint8_t *)"\x89PNG plain bytes", 15}};
    n = build_multipart(body, "otherBoundary", plain, 1, 1);
    CHECK(http_post(port, "/v1/encode", ct, NULL, body, n, &r) == 0);
    expect_error(&r, "wrong boundary", 400, "does not contain the boundary");
    /* no closing delimiter */
    n = build_multipart(body, B, parts, 2, 0);
    CHECK(http_post(port, "/v1/encode", ct, NULL, body, n, &r) == 0);
    expect_error(&r, "truncated", 400, "truncated");
    /* Content-Type problems */
    CHECK(http_post(port, "/v1/encode", "multipart/form-data", NULL, body, n, &r) == 0);
    expect_error(&r, "no boundary", 400, "without a boundary");
    CHECK(http_post(port, "/v1/encode", "multipart/form-data; boundary=abc; charset=utf-8", NULL, body, n, &r) == 0);
    expect_error(&r, "boundary not last", 400, "last Content-Type parameter");
    /* a quoted boundary with a space and a colon; upper-case media type */
    const char *qb = "my boundary:42";
    n = build_multipart(body, qb, parts + 1, 1, 1);
    CHECK(http_post(port, "/v1/encode", "Multipart/Form-Data; boundary=\"my boundary:42\"", "X-Split: 3\r\n", body,
                    n, &r) == 0);
    expect_images(&r, "quoted boundary", 1, want_data, want_len, "enc=0 ds=1 dtype=0 layout=0");
    /* max_images and max_body_bytes */
    n = build_multipart(body, B, parts, 6, 1);
    CHECK(http_post(port, "/v1/encode", ct, "X-Max-Images: 2\r\n", body, n, &r) == 0);
    expect_error(&r, "max_images", 413, "max_images 2");
    CHECK(http_post(port, "/v1/encode", ct, "X-Max-Body: 100000\r\n", body, n, &r) == 0);
    expect_error(&r, "max_body_bytes", 413, "max_body_bytes 100000");

    /* raw and JSON bodies and query options through the same server */
    CHECK(http_post(port, "/v1/encode?deepstack=0&layout=concat", "Image/PNG; charset=binary", "X-Split: 777\r\n",
                    ic, lc, &r) == 0);
    expect_images(&r, "raw", 1, want_data + 2, want_len + 2, "enc=0 ds=0 dtype=0 layout=1");
    CHECK(http_post(port, "/v1/encode?dtype=int4", "image/png", NULL, ic, 100, &r) == 0);
    expect_error(&r, "bad query option", 400, "dtype: \\\"int4\\\" is not one of");
    CHECK(http_post(port, "/v1/encode", "image/png", NULL, ic, 0, &r) == 0);
    expect_error(&r, "empty raw", 400, "empty body");
    CHECK(http_post(port, "/v1/encode", "text/plain", NULL, "hello", 5, &r) == 0);
    expect_error(&r, "text/plain", 415, "unsupported Content-Type \\\"text/plain\\\"");
    CHECK(http_post(port, "/v1/encode", NULL, NULL, "hello", 5, &r) == 0);
    expect_error(&r, "no Content-Type", 415, "missing Content-Type");
    char *js = malloc(la * 2 + 100);
    strcpy(js, "{\"images\": [\"data:image/png;base64,");
    body_base64_encode(ia, la, js + strlen(js));
    strcat(js, "\"], \"dtype\": \"bf16\"}");
    CHECK(http_post(port, "/v1/encode?dtype=fp16&deepstack=false", "application/json", "X-Split: 5\r\n", js,
                    strlen(js), &r) == 0);
    expect_images(&r, "json", 1, want_data, want_len, "enc=0 ds=0 dtype=2 layout=0"); /* JSON field beats query */
    free(js);

    /* a real client: curl -F writes its own multipart layout */
    char dir[] = "/tmp/vitd_test_body_XXXXXX";
    if (access("/usr/bin/curl", X_OK) == 0 && mkdtemp(dir)) {
        char fa[600], fc[600], cmd[2048];
        snprintf(fa, sizeof fa, "%s/a.png", dir);
        snprintf(fc, sizeof fc, "%s/c.jpg", dir);
        FILE *f = fopen(fa, "wb");
        fwrite(ia, 1, la, f);
        fclose(f);
        f = fopen(fc, "wb");
        fwrite(ic, 1, lc, f);
        fclose(f);
        snprintf(cmd, sizeof cmd, "curl -s -H 'X-Split: 7' -F 'image=@%s;type=image/png' -F 'layout=concat' "
                 "-F 'second=@%s' 'http://127.0.0.1:%d/v1/encode?dtype=bf16'", fa, fc, port);
        FILE *pp = popen(cmd, "r");
        char out[4096] = "";
        size_t got = pp ? fread(out, 1, sizeof out - 1, pp) : 0;
        out[got] = '\0';
        if (pp) pclose(pp);
        http_resp cr = {200, ""};
        snprintf(cr.body, sizeof cr.body, "%s", out);
        const uint8_t *cd[] = {ia, ic};
        size_t cl[] = {la, lc};
        expect_images(&cr, "curl -F", 2, cd, cl, "enc=0 ds=1 dtype=2 layout=1");
        unlink(fa);
        unlink(fc);
        rmdir(dir);
    } else {
        printf("  http: curl not found; the curl upload case is not run\n");
    }
    printf("  http: multipart, raw and JSON bodies through libmicrohttpd on port %d, splits 1..1000\n", port);
    MHD_stop_daemon(d);
    free(ia), free(ic), free(body);
}

int main(void) {
    test_content_types();
    test_raw();
    test_base64();
    test_json();
    test_options();
    test_multipart_collector();
    test_http();
    return check_done("test_body");
}
