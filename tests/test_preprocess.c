/* labels: unit */
/* test_preprocess.c — encoder/image/preprocess.c against the numpy oracle of MODEL.md section 2 (the reference that matched
 * transformers 5.17's torchvision backend bit for bit). Oracle data: tests/fixtures/preprocess/, written by
 * tests/fixtures/gen_preprocess_ref.py. Test images are not stored: image_fill() here and make_image() there compute
 * the same pixels from (h, w, seed).
 *
 * Covers: smart_resize on MODEL.md's cases and a 700-tuple sweep; the uint8 antialiased bicubic on up-, down-,
 * one-axis, 1-pixel and extreme resizes (bit-exact bytes); whole pixel_values [N, 1536] for four images (every
 * float, both t halves, bit-exact); general mean/std/rescale (bit-exact); the patch layout by construction for
 * several (P, T, m); cu_seqlens; error paths; defaults. Prints timings of large images (no timing asserts);
 * `test_preprocess --bench` adds the largest cases.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <png.h>

#include "check.h"
#include "prep_pool.h"

#include <stdatomic.h>
#include <unistd.h>
#include "preprocess.h"
#include "util.h"

#define FIXDIR VITD_SOURCE_DIR "/tests/fixtures/preprocess/"

/* ---- deterministic images (twin of make_image in gen_preprocess_ref.py) ---- */

static uint32_t hash32(uint32_t x) {
    x ^= x >> 16;
    x *= 0x7feb352du;
    x ^= x >> 15;
    x *= 0x846ca68bu;
    x ^= x >> 16;
    return x;
}

/* Gradients (x, y, diagonal) + noise in [-32, 31], ~2 % of samples forced to 0 or 255. rgb: [h][w][3]. */
static void image_fill(uint8_t *rgb, uint32_t h, uint32_t w, uint32_t seed) {
    for (uint32_t y = 0; y < h; y++) {
        for (uint32_t x = 0; x < w; x++) {
            for (uint32_t c = 0; c < 3; c++) {
                uint32_t r = hash32((y * w + x) * 3u + c + seed * 0x9E3779B9u);
                int64_t g;
                if (c == 0) g = (int64_t)x * 255 / (w > 1 ? w - 1 : 1);
                else if (c == 1) g = (int64_t)y * 255 / (h > 1 ? h - 1 : 1);
                else g = (int64_t)(x + y) * 255 / (h + w > 2 ? h + w - 2 : 1);
                int64_t v = g + (int64_t)(r & 63) - 32;
                v = v < 0 ? 0 : v > 255 ? 255 : v;
                uint32_t sel = (r >> 8) % 97;
                if (sel == 0) v = 255;
                else if (sel == 1) v = 0;
                rgb[((size_t)y * w + x) * 3 + c] = (uint8_t)v;
            }
        }
    }
}

static vitd_image image_make(uint32_t h, uint32_t w, uint32_t seed) {
    vitd_image img = {w, h, xmalloc((size_t)h * w * 3)};
    image_fill(img.rgb, h, w, seed);
    return img;
}

static unsigned char *fixture(const char *name, size_t want) {
    char path[512];
    snprintf(path, sizeof path, FIXDIR "%s", name);
    size_t len = 0;
    unsigned char *buf = check_read_file(path, &len);
    if (!buf) {
        fprintf(stderr, "FAIL: cannot read %s (regenerate with tests/fixtures/gen_preprocess_ref.py)\n", path);
        return NULL;
    }
    if (want != (size_t)-1 && len != want) {
        fprintf(stderr, "FAIL: %s has %zu bytes, expected %zu\n", path, len, want);
        free(buf);
        return NULL;
    }
    return buf;
}

static FILE *fixture_open(const char *name) {
    char path[512];
    snprintf(path, sizeof path, FIXDIR "%s", name);
    FILE *f = fopen(path, "r");
    if (!f) fprintf(stderr, "FAIL: cannot open %s\n", path);
    return f;
}

/* A config with the given min/max and the default everything else. */
static vitd_preproc_config cfg_minmax(size_t mn, size_t mx) {
    vitd_preproc_config c = vitd_preproc_config_default();
    c.min_pixels = mn;
    c.max_pixels = mx;
    return c;
}

/* ---- smart_resize ---- */

static void expect_target(uint32_t h, uint32_t w, size_t mn, size_t mx, uint32_t eh, uint32_t ew) {
    vitd_preproc_config c = cfg_minmax(mn, mx);
    vitd_err err = {0};
    uint32_t gh = 0, gw = 0;
    vitd_status st = preprocess_target_size(h, w, &c, &gh, &gw, &err);
    CHECK_MSG(st == VITD_OK && gh == eh && gw == ew, "%ux%u min %zu max %zu: expected %ux%u, got %ux%u (status %d %s)",
              h, w, mn, mx, eh, ew, gh, gw, st, err.msg);
}

static void test_smart_resize_cases(void) {
    const size_t MN = 65536, MX = 16777216;
    expect_target(10, 10, MN, MX, 256, 256);          /* beta 25.6, min branch */
    expect_target(31, 3000, MN, MX, 32, 3008);        /* overshoots the minimum, no branch */
    expect_target(768, 1024, MN, MX, 768, 1024);      /* unchanged (MODEL.md 7) */
    expect_target(1000, 1400, MN, 200000, 352, 512);  /* max branch, grid [1,22,32] */
    expect_target(2000, 1500, MN, 1000000, 1152, 864);/* grid [1,72,54] */
    expect_target(1, 1, MN, MX, 256, 256);            /* tiny */
    expect_target(80, 48, 1, MX, 64, 64);             /* 80/32 = 2.5 -> 2 (even), 48/32 = 1.5 -> 2 */
    expect_target(112, 176, 1, MX, 128, 192);         /* 3.5 -> 4, 5.5 -> 6 */
    expect_target(4096, 4096, MN, MX, 4096, 4096);    /* exactly max_pixels */
    expect_target(5000, 5000, MN, MX, 4096, 4096);
    expect_target(1, 200, MN, MX, 32, 3648);          /* aspect exactly 200 is allowed */

    vitd_preproc_config c = vitd_preproc_config_default();
    vitd_err err = {0};
    uint32_t h, w;
    CHECK_EQ_INT(VITD_E_TOO_LARGE, preprocess_target_size(1, 201, &c, &h, &w, &err));
    CHECK_STR_CONTAINS(err.msg, "aspect ratio");
    CHECK_EQ_INT(VITD_E_TOO_LARGE, preprocess_target_size(201, 1, &c, &h, &w, &err));
    CHECK_EQ_INT(VITD_E_TOO_LARGE, preprocess_target_size(20100, 99, &c, &h, &w, &err));
    CHECK_EQ_INT(VITD_E_BAD_IMAGE, preprocess_target_size(0, 10, &c, &h, &w, &err));
    CHECK_STR_CONTAINS(err.msg, "zero");
    CHECK_EQ_INT(VITD_E_BAD_IMAGE, preprocess_target_size(10, 0, &c, &h, &w, &err));
    CHECK_EQ_INT(VITD_E_BAD_IMAGE, preprocess_target_size(0, 0, &c, &h, &w, &err));
    vitd_preproc_config z = cfg_minmax(0, 16777216);  /* min 0: 16x16 rounds to 0x0, Python returns (0, 0) */
    CHECK_EQ_INT(VITD_E_BAD_IMAGE, preprocess_target_size(16, 16, &z, &h, &w, &err));

    /* preprocess_plan: grid in patches, and the int32 patch-count limit. */
    vitd_grid g = {0, 0, 0};
    CHECK_OK(preprocess_plan(768, 1024, &c, &g, &err), &err);
    CHECK(g.t == 1 && g.h == 48 && g.w == 64);
    CHECK_OK(preprocess_plan(31, 3000, &c, &g, &err), &err);
    CHECK(g.t == 1 && g.h == 2 && g.w == 188);
    vitd_preproc_config huge = cfg_minmax(0, SIZE_MAX);
    CHECK_EQ_INT(VITD_E_TOO_LARGE, preprocess_plan(3000000000u, 3000000000u, &huge, &g, &err));
    CHECK_STR_CONTAINS(err.msg, "int32");
    CHECK_EQ_INT(VITD_E_TOO_LARGE, preprocess_plan(4294967295u, 4294967295u, &huge, &g, &err));
    CHECK_OK(preprocess_plan(46336, 46336, &huge, &g, &err), &err); /* 2896^2 = 8386816 patches: fits */
    CHECK(g.h == 2896 && g.w == 2896);
    CHECK_EQ_INT(1536, preprocess_row_width(&c));
}

static void test_smart_resize_sweep(void) {
    FILE *f = fixture_open("smart_resize.txt");
    CHECK(f != NULL);
    if (!f) return;
    char line[256];
    int n = 0, bad = 0, n_err = 0, n_zero = 0;
    while (fgets(line, sizeof line, f)) {
        if (line[0] == '#') continue;
        unsigned h, w, fac, eh = 0, ew = 0;
        unsigned long long mn, mx;
        char tail[32] = "";
        int k = sscanf(line, "%u %u %u %llu %llu %31s %u", &h, &w, &fac, &mn, &mx, tail, &ew);
        if (k < 6) continue;
        vitd_preproc_config c = cfg_minmax((size_t)mn, (size_t)mx);
        c.patch_size = (int)fac / 2;
        c.merge_size = 2;
        vitd_err err = {0};
        uint32_t gh = 0, gw = 0;
        vitd_status st = preprocess_target_size(h, w, &c, &gh, &gw, &err);
        n++;
        int ok;
        if (strcmp(tail, "E") == 0) {
            n_err++;
            ok = st == VITD_E_TOO_LARGE;
        } else {
            eh = (unsigned)strtoul(tail, NULL, 10);
            if (eh == 0 || ew == 0) { /* Python's (0, 0) for min_pixels 0: vitd refuses */
                n_zero++;
                ok = st == VITD_E_BAD_IMAGE;
            } else {
                ok = st == VITD_OK && gh == eh && gw == ew;
            }
        }
        if (!ok && bad++ < 10)
            fprintf(stderr, "  smart_resize %ux%u factor %u min %llu max %llu: expected %s %u, got %ux%u (%d %s)\n",
                    h, w, fac, mn, mx, tail, ew, gh, gw, st, err.msg);
    }
    fclose(f);
    printf("smart_resize sweep: %d cases (%d refused for aspect, %d zero-size), %d mismatches\n", n, n_err, n_zero,
           bad);
    CHECK(n >= 500);
    CHECK_EQ_INT(0, bad);
}

/* ---- bicubic ---- */

static void test_resize_fixtures(void) {
    FILE *f = fixture_open("resize.txt");
    CHECK(f != NULL);
    if (!f) return;
    char line[256];
    int n_cases = 0;
    while (fgets(line, sizeof line, f)) {
        if (line[0] == '#') continue;
        char name[64];
        unsigned ih, iw, oh, ow, seed;
        if (sscanf(line, "%63s %u %u %u %u %u", name, &ih, &iw, &oh, &ow, &seed) != 6) continue;
        char fname[128];
        snprintf(fname, sizeof fname, "resize_%s.u8", name);
        size_t n = (size_t)oh * ow * 3;
        unsigned char *want = fixture(fname, n);
        CHECK_MSG(want != NULL, "fixture %s", fname);
        if (!want) continue;
        uint8_t *src = xmalloc((size_t)ih * iw * 3), *got = xmalloc(n);
        image_fill(src, ih, iw, seed);
        vitd_err err = {0};
        CHECK_OK(preprocess_resize_bicubic(src, ih, iw, got, oh, ow, &err), &err);
        size_t n_diff = 0, first = (size_t)-1;
        int max_diff = 0;
        for (size_t i = 0; i < n; i++) {
            int d = abs((int)got[i] - (int)want[i]);
            if (d) {
                if (!n_diff) first = i;
                n_diff++;
                if (d > max_diff) max_diff = d;
            }
        }
        printf("  resize %-13s %4ux%-4u -> %4ux%-4u  %zu of %zu bytes differ (max %d)\n", name, ih, iw, oh, ow, n_diff,
               n, max_diff);
        CHECK_MSG(n_diff == 0, "resize %s: %zu bytes differ, first at %zu (got %d want %d)", name, n_diff, first,
                  n_diff ? got[first] : 0, n_diff ? want[first] : 0);
        free(src);
        free(got);
        free(want);
        n_cases++;
    }
    fclose(f);
    CHECK(n_cases >= 15);
}

/* Properties that need no oracle: a constant image stays constant for any ratio (the weights of each output sum
 * to 2^prec up to rounding, which the bias and shift absorb), and a 1-pixel image up-scales to a constant. */
static void test_resize_properties(void) {
    const uint32_t sizes[][4] = {{50, 70, 13, 200}, {1, 1, 64, 32}, {300, 9, 7, 300}, {1000, 5, 1, 1}};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        uint32_t ih = sizes[s][0], iw = sizes[s][1], oh = sizes[s][2], ow = sizes[s][3];
        uint8_t *src = xmalloc((size_t)ih * iw * 3), *dst = xmalloc((size_t)oh * ow * 3);
        for (size_t i = 0; i < (size_t)ih * iw; i++) {
            src[3 * i] = 7;
            src[3 * i + 1] = 128;
            src[3 * i + 2] = 250;
        }
        vitd_err err = {0};
        CHECK_OK(preprocess_resize_bicubic(src, ih, iw, dst, oh, ow, &err), &err);
        size_t bad = 0;
        for (size_t i = 0; i < (size_t)oh * ow; i++)
            bad += dst[3 * i] != 7 || dst[3 * i + 1] != 128 || dst[3 * i + 2] != 250;
        CHECK_MSG(bad == 0, "constant %ux%u -> %ux%u: %zu pixels changed", ih, iw, oh, ow, bad);
        free(src);
        free(dst);
    }
    vitd_err err = {0};
    uint8_t px[3] = {1, 2, 3}, out[3];
    CHECK_EQ_INT(VITD_E_INVALID_ARG, preprocess_resize_bicubic(px, 1, 1, out, 0, 1, &err));
    CHECK_EQ_INT(VITD_E_INVALID_ARG, preprocess_resize_bicubic(px, 0, 1, out, 1, 1, &err));
}

/* ---- whole pixel_values ---- */

static int floats_identical(const float *a, const float *b, size_t n, size_t *first) {
    for (size_t i = 0; i < n; i++) {
        uint32_t ua, ub;
        memcpy(&ua, &a[i], 4);
        memcpy(&ub, &b[i], 4);
        if (ua != ub) {
            *first = i;
            return 0;
        }
    }
    return 1;
}

static void test_pixel_values_fixtures(void) {
    FILE *f = fixture_open("preprocess.txt");
    CHECK(f != NULL);
    if (!f) return;
    char line[256];
    int n_cases = 0;
    while (fgets(line, sizeof line, f)) {
        if (line[0] == '#') continue;
        char name[64];
        unsigned h, w, seed, hb, wb;
        unsigned long long mn, mx;
        if (sscanf(line, "%63s %u %u %u %llu %llu %u %u", name, &h, &w, &seed, &mn, &mx, &hb, &wb) != 8) continue;
        vitd_preproc_config c = cfg_minmax((size_t)mn, (size_t)mx);
        vitd_err err = {0};
        vitd_grid g = {0, 0, 0};
        CHECK_OK(preprocess_plan(h, w, &c, &g, &err), &err);
        CHECK_MSG(g.t == 1 && g.h == (int)hb / 16 && g.w == (int)wb / 16, "%s: grid [%d,%d,%d], want [1,%u,%u]", name,
                  g.t, g.h, g.w, hb / 16, wb / 16);
        size_t rows = (size_t)hb / 16 * (wb / 16), row_w = preprocess_row_width(&c);
        char fname[128];
        snprintf(fname, sizeof fname, "preprocess_%s.u8", name);
        unsigned char *u = fixture(fname, rows * 768);
        CHECK_MSG(u != NULL, "fixture %s", fname);
        if (!u || g.h != (int)hb / 16 || g.w != (int)wb / 16) { free(u); continue; }

        /* Expected: the oracle's t=0 bytes u[row][c][py*16+px] -> (u - 127.5f) / 127.5f at column
         * ((c*2 + t)*16 + py)*16 + px for t = 0 and 1. */
        float *want = xmalloc(rows * row_w * sizeof(float)), *got = xmalloc(rows * row_w * sizeof(float));
        for (size_t r = 0; r < rows; r++)
            for (size_t k = 0; k < row_w; k++) {
                size_t cc = k / 512, rest = k % 256;
                want[r * row_w + k] = ((float)u[r * 768 + cc * 256 + rest] - 127.5f) / 127.5f;
            }
        vitd_image img = image_make(h, w, seed);
        CHECK_OK(preprocess_run(&img, &c, &g, got, &err), &err);
        size_t first = 0;
        int same = floats_identical(got, want, rows * row_w, &first);
        cmp_stats s = cmp_f32(got, want, rows * row_w, 0, 0);
        char what[192];
        snprintf(what, sizeof what, "pixel_values %s %ux%u -> [%zu,%zu]", name, h, w, rows, row_w);
        cmp_print(what, s);
        CHECK_MSG(same, "%s: first differing float at %zu (row %zu col %zu): got %.9g want %.9g", name, first,
                  first / row_w, first % row_w, got[first], want[first]);
        free(img.rgb);
        free(want);
        free(got);
        free(u);
        n_cases++;
    }
    fclose(f);
    CHECK_EQ_INT(4, n_cases);
}

/* ---- general mean/std/rescale ---- */

/* pixel_values[r][k] -> (channel, y, x) of the image, written from MODEL.md 2.7 independently of patchify(). */
static void layout_source(size_t r, size_t k, int P, int T, int m, int gw, int *c, int *t, int *y, int *x) {
    int mw = (int)(r % (size_t)m), mh = (int)(r / (size_t)m % (size_t)m);
    int blk = (int)(r / (size_t)(m * m)), bw = blk % (gw / m), bh = blk / (gw / m);
    int px = (int)(k % (size_t)P), py = (int)(k / (size_t)P % (size_t)P);
    *t = (int)(k / (size_t)(P * P) % (size_t)T);
    *c = (int)(k / (size_t)(P * P * T));
    *y = (bh * m + mh) * P + py;
    *x = (bw * m + mw) * P + px;
}

static void test_normalize_fixtures(void) {
    FILE *f = fixture_open("normalize.txt");
    CHECK(f != NULL);
    if (!f) return;
    /* 64x96 image, no resize (min_pixels lowered); each channel takes all 256 values. */
    const uint32_t H = 64, W = 96;
    vitd_image img = {W, H, xmalloc((size_t)H * W * 3)};
    for (uint32_t i = 0; i < H * W; i++) {
        img.rgb[3 * i] = (uint8_t)i;
        img.rgb[3 * i + 1] = (uint8_t)(i * 7 + 3);
        img.rgb[3 * i + 2] = (uint8_t)(255 - i / 24);
    }
    char line[512];
    int n_cases = 0;
    while (fgets(line, sizeof line, f)) {
        if (line[0] == '#') continue;
        char name[64];
        double r, m0, m1, m2, s0, s1, s2;
        if (sscanf(line, "%63s %lf %lf %lf %lf %lf %lf %lf", name, &r, &m0, &m1, &m2, &s0, &s1, &s2) != 8) continue;
        char fname[128];
        snprintf(fname, sizeof fname, "normalize_%s.f32", name);
        float *want = (float *)fixture(fname, 3 * 256 * 4);
        CHECK_MSG(want != NULL, "fixture %s", fname);
        if (!want) continue;
        vitd_preproc_config c = cfg_minmax(1024, 16777216);
        c.rescale_factor = r;
        c.image_mean[0] = (float)m0, c.image_mean[1] = (float)m1, c.image_mean[2] = (float)m2;
        c.image_std[0] = (float)s0, c.image_std[1] = (float)s1, c.image_std[2] = (float)s2;
        vitd_err err = {0};
        vitd_grid g;
        CHECK_OK(preprocess_plan(H, W, &c, &g, &err), &err);
        size_t rows = (size_t)g.h * g.w, row_w = preprocess_row_width(&c);
        float *got = xmalloc(rows * row_w * sizeof(float)), *exp = xmalloc(rows * row_w * sizeof(float));
        CHECK_OK(preprocess_run(&img, &c, &g, got, &err), &err);
        int seen[3][256] = {{0}};
        for (size_t i = 0; i < rows; i++)
            for (size_t k = 0; k < row_w; k++) {
                int cc, t, y, x;
                layout_source(i, k, 16, 2, 2, g.w, &cc, &t, &y, &x);
                uint8_t u = img.rgb[((size_t)y * W + (size_t)x) * 3 + (size_t)cc];
                seen[cc][u] = 1;
                exp[i * row_w + k] = want[cc * 256 + u];
            }
        int all = 1;
        for (int cc = 0; cc < 3; cc++)
            for (int u = 0; u < 256; u++) all &= seen[cc][u];
        CHECK_MSG(all, "%s: the test image misses a value", name);
        size_t first = 0;
        int same = floats_identical(got, exp, rows * row_w, &first);
        cmp_stats s = cmp_f32(got, exp, rows * row_w, 0, 0);
        char what[192];
        snprintf(what, sizeof what, "normalize %s", name);
        cmp_print(what, s);
        CHECK_MSG(same, "%s: first differing float at %zu: got %.9g want %.9g", name, first, got[first], exp[first]);
        free(got);
        free(exp);
        free(want);
        n_cases++;
    }
    fclose(f);
    free(img.rgb);
    CHECK_EQ_INT(4, n_cases);
}

/* ---- patch layout by construction ---- */

/* With mean 0, std 1, rescale 1 the output is the pixel value itself; R = y, G = x, B = a mix, so every float says
 * where it came from. */
static void test_layout(int P, int T, int m, uint32_t H, uint32_t W) {
    vitd_preproc_config c = cfg_minmax(1, SIZE_MAX);
    c.patch_size = P;
    c.temporal_patch_size = T;
    c.merge_size = m;
    c.rescale_factor = 1.0;
    for (int i = 0; i < 3; i++) c.image_mean[i] = 0.0f, c.image_std[i] = 1.0f;
    vitd_image img = {W, H, xmalloc((size_t)H * W * 3)};
    for (uint32_t y = 0; y < H; y++)
        for (uint32_t x = 0; x < W; x++) {
            uint8_t *p = img.rgb + ((size_t)y * W + x) * 3;
            p[0] = (uint8_t)y, p[1] = (uint8_t)x, p[2] = (uint8_t)(y * 31 + x * 17);
        }
    vitd_err err = {0};
    vitd_grid g;
    CHECK_OK(preprocess_plan(H, W, &c, &g, &err), &err);
    CHECK_MSG(g.t == 1 && g.h == (int)H / P && g.w == (int)W / P, "layout P=%d: grid [%d,%d,%d]", P, g.t, g.h, g.w);
    size_t rows = (size_t)g.h * g.w, row_w = preprocess_row_width(&c);
    CHECK_EQ_INT((size_t)3 * T * P * P, row_w);
    float *pv = xmalloc((rows * row_w + 16) * sizeof(float));
    for (size_t i = 0; i < rows * row_w + 16; i++) pv[i] = -7.0f; /* canary past the end */
    CHECK_OK(preprocess_run(&img, &c, &g, pv, &err), &err);
    size_t bad = 0;
    for (size_t r = 0; r < rows; r++)
        for (size_t k = 0; k < row_w; k++) {
            int cc, t, y, x;
            layout_source(r, k, P, T, m, g.w, &cc, &t, &y, &x);
            float e = cc == 0 ? (float)(uint8_t)y : cc == 1 ? (float)(uint8_t)x : (float)(uint8_t)(y * 31 + x * 17);
            if (pv[r * row_w + k] != e && bad++ < 5)
                fprintf(stderr, "  layout P=%d T=%d m=%d: row %zu col %zu = %g, want %g (c %d t %d y %d x %d)\n", P, T, m,
                        r, k, pv[r * row_w + k], e, cc, t, y, x);
        }
    size_t canary = 0;
    for (size_t i = 0; i < 16; i++) canary += pv[rows * row_w + i] != -7.0f;
    printf("  layout P=%d T=%d m=%d %ux%u: %zu rows x %zu, %zu wrong, canary %s\n", P, T, m, W, H, rows, row_w, bad,
           canary ? "CHANGED" : "intact");
    CHECK_EQ_INT(0, bad);
    CHECK_EQ_INT(0, canary);
    free(pv);
    free(img.rgb);
}

/* ---- cu_seqlens ---- */

static void test_cu_seqlens(void) {
    const vitd_grid grids[] = {{1, 4, 6}, {2, 8, 10}, {1, 2, 2}, {3, 4, 4}};
    int32_t cu[8] = {0};
    int mx = -1;
    int n = preprocess_cu_seqlens(grids, 4, cu, &mx);
    const int32_t want[8] = {0, 24, 104, 184, 188, 204, 220, 236};
    CHECK_EQ_INT(7, n);
    CHECK_EQ_INT(80, mx);
    CHECK(memcmp(cu, want, sizeof want) == 0);
    for (int i = 0; i < 8; i++) CHECK_EQ_INT(want[i], cu[i]);

    n = preprocess_cu_seqlens(grids, 0, cu, &mx);
    CHECK_EQ_INT(0, n);
    CHECK_EQ_INT(0, cu[0]);
    CHECK_EQ_INT(0, mx);
    CHECK_EQ_INT(1, preprocess_cu_seqlens(grids + 2, 1, cu, NULL));
    CHECK_EQ_INT(4, cu[1]);
    const vitd_grid zero_t = {0, 4, 4};
    CHECK_EQ_INT(VITD_E_INVALID_ARG, preprocess_cu_seqlens(&zero_t, 1, cu, &mx));
    const vitd_grid big[2] = {{1, 46340, 46340}, {1, 2000, 2000}}; /* 2147395600 + 4000000 > INT32_MAX */
    CHECK_EQ_INT(VITD_E_TOO_LARGE, preprocess_cu_seqlens(big, 2, cu, &mx));
    CHECK_EQ_INT(1, preprocess_cu_seqlens(big, 1, cu, &mx));
    CHECK_EQ_INT(2147395600, cu[1]);
    CHECK_EQ_INT(VITD_E_INVALID_ARG, preprocess_cu_seqlens(grids, -1, cu, &mx));
}

/* ---- errors and defaults ---- */

static void test_errors(void) {
    vitd_err err = {0};
    vitd_preproc_config c = vitd_preproc_config_default();
    vitd_image img = image_make(40, 60, 99);
    vitd_grid g;
    CHECK_OK(preprocess_plan(40, 60, &c, &g, &err), &err);
    float *pv = xmalloc((size_t)g.h * g.w * preprocess_row_width(&c) * sizeof(float));
    vitd_grid wrong = {g.t, g.h + 2, g.w};
    CHECK_EQ_INT(VITD_E_INVALID_ARG, preprocess_run(&img, &c, &wrong, pv, &err));
    CHECK_STR_CONTAINS(err.msg, "does not match");
    vitd_preproc_config bad = c;
    bad.patch_size = 0;
    CHECK_EQ_INT(VITD_E_INVALID_ARG, preprocess_run(&img, &bad, &g, pv, &err));
    CHECK_STR_CONTAINS(err.msg, "patch_size");
    bad = c;
    bad.image_std[1] = 0.0f;
    CHECK_EQ_INT(VITD_E_INVALID_ARG, preprocess_run(&img, &bad, &g, pv, &err));
    CHECK_STR_CONTAINS(err.msg, "image_std[1]");
    bad = c;
    bad.rescale_factor = 0.0;
    CHECK_EQ_INT(VITD_E_INVALID_ARG, preprocess_plan(40, 60, &bad, &g, &err));
    bad = c;
    bad.max_pixels = 0;
    CHECK_EQ_INT(VITD_E_INVALID_ARG, preprocess_plan(40, 60, &bad, &g, &err));
    CHECK_EQ_INT(VITD_E_INVALID_ARG, preprocess_run(NULL, &c, &g, pv, &err));
    vitd_image flat = {300, 1, img.rgb};  /* 300:1 */
    CHECK_EQ_INT(VITD_E_TOO_LARGE, preprocess_run(&flat, &c, &g, pv, &err));
    free(pv);
    free(img.rgb);
}

static void test_defaults(void) {
    vitd_vision_config v = vitd_vision_config_default();
    CHECK(v.depth == 27 && v.hidden_size == 1152 && v.intermediate_size == 4304 && v.num_heads == 16);
    CHECK(v.out_hidden_size == 3584 && v.patch_size == 16 && v.temporal_patch_size == 2 && v.spatial_merge_size == 2);
    CHECK(v.in_channels == 3 && v.num_position_embeddings == 2304 && v.n_deepstack == 3);
    CHECK(v.deepstack_indexes[0] == 8 && v.deepstack_indexes[1] == 16 && v.deepstack_indexes[2] == 24);
    CHECK(v.rope_theta == 10000.0 && v.ln_eps == 1e-6);
    vitd_preproc_config p = vitd_preproc_config_default();
    CHECK(p.min_pixels == 65536 && p.max_pixels == 16777216 && p.patch_size == 16);
    CHECK(p.temporal_patch_size == 2 && p.merge_size == 2 && p.rescale_factor == 1.0 / 255.0);
    for (int i = 0; i < 3; i++) CHECK(p.image_mean[i] == 0.5f && p.image_std[i] == 0.5f);
    CHECK(1.0 / p.rescale_factor == 255.0); /* MODEL.md 2.6: so mean' = std' = 127.5 exactly */
}

/* ---- timing (printed, never asserted) ---- */

static void time_case(uint32_t h, uint32_t w, size_t max_pixels, int reps) {
    vitd_preproc_config c = cfg_minmax(65536, max_pixels);
    vitd_err err = {0};
    vitd_grid g;
    if (preprocess_plan(h, w, &c, &g, &err) != VITD_OK) {
        CHECK_MSG(0, "bench plan %ux%u: %s", w, h, err.msg);
        return;
    }
    vitd_image img = image_make(h, w, 5);
    size_t rows = (size_t)g.h * g.w, row_w = preprocess_row_width(&c);
    float *pv = malloc(rows * row_w * sizeof(float));
    uint8_t *rs = malloc((size_t)g.h * 16 * g.w * 16 * 3);
    CHECK(pv != NULL && rs != NULL);
    if (pv && rs) {
        double best = 1e30, best_rs = 1e30;
        for (int i = 0; i < reps; i++) {
            double t0 = vitd_now();
            vitd_status st = preprocess_run(&img, &c, &g, pv, &err);
            double t1 = vitd_now();
            CHECK_EQ_INT(VITD_OK, st);
            if (t1 - t0 < best) best = t1 - t0;
            if ((uint32_t)g.h * 16 != h || (uint32_t)g.w * 16 != w) {
                t0 = vitd_now();
                preprocess_resize_bicubic(img.rgb, h, w, rs, (uint32_t)g.h * 16, (uint32_t)g.w * 16, &err);
                t1 = vitd_now();
                if (t1 - t0 < best_rs) best_rs = t1 - t0;
            }
        }
        printf("  bench %5ux%-5u -> %5dx%-5d [%7zu x %zu]: preprocess_run %8.1f ms", w, h, g.w * 16, g.h * 16, rows,
               row_w, best * 1e3);
        if (best_rs < 1e30) printf(" (resize alone %.1f ms)", best_rs * 1e3);
        printf("\n");
    }
    free(pv);
    free(rs);
    free(img.rgb);
}

/* ---- split preprocessing ---- */

/* The image as a PNG in memory (libpng's simplified writer); malloc'd. */
static uint8_t *png_of(const vitd_image *img, size_t *len) {
    png_image pi;
    memset(&pi, 0, sizeof pi);
    pi.version = PNG_IMAGE_VERSION;
    pi.width = img->width;
    pi.height = img->height;
    pi.format = PNG_FORMAT_RGB;
    png_alloc_size_t n = 0;
    if (!png_image_write_to_memory(&pi, NULL, &n, 0, img->rgb, 0, NULL)) return NULL;
    uint8_t *out = xmalloc(n);
    if (!png_image_write_to_memory(&pi, out, &n, 0, img->rgb, 0, NULL)) {
        free(out);
        return NULL;
    }
    *len = n;
    return out;
}

/* A runner that does the pieces of grain in reverse order, on this thread: another order than one pass. */
static void reverse_run(void *ctx, size_t n, size_t grain, preprocess_range_fn fn, void *arg) {
    (void)ctx;
    size_t pieces = (n + grain - 1) / grain;
    for (size_t k = pieces; k-- > 0;) fn(arg, k * grain, (k + 1) * grain < n ? (k + 1) * grain : n);
}

/* preprocess_run split into pieces (in reverse order, and over an idle prep pool of 4 threads through
 * prep_image) gives the same pixel values bit for bit, with resizes up, down and on one axis only. */
static void test_split(void) {
    printf("split preprocessing\n");
    prep_pool *pool = NULL;
    vitd_err err = {0};
    CHECK_OK(prep_pool_create(4, &pool, &err), &err);
    const uint32_t sizes[][2] = {{300, 451}, {141, 203}, {800, 1203}, {1024, 512}, {64, 2000}, {640, 427}};
    for (size_t c = 0; c < sizeof sizes / sizeof sizes[0]; c++) {
        uint32_t h = sizes[c][0], w = sizes[c][1];
        vitd_image img = {.height = h, .width = w, .rgb = xmalloc((size_t)h * w * 3)};
        image_fill(img.rgb, h, w, (uint32_t)c + 7);
        vitd_preproc_config cfg = vitd_preproc_config_default();
        if (c == 3) cfg.max_pixels = 256 * 1024; /* a downscale */
        vitd_grid g;
        CHECK_OK(preprocess_plan(h, w, &cfg, &g, &err), &err);
        size_t nvals = (size_t)g.h * g.w * preprocess_row_width(&cfg);
        float *a = xmalloc(nvals * 4), *b = xmalloc(nvals * 4);
        CHECK_OK(preprocess_run(&img, &cfg, &g, a, &err), &err);
        preprocess_parallel rev = {reverse_run, NULL};
        memset(b, 0xff, nvals * 4);
        CHECK_OK(preprocess_run_par(&img, &cfg, &g, b, &rev, &err), &err);
        bool same_rev = !memcmp(a, b, nvals * 4);
        /* the same image through prep_image over the pool (a PNG of it) */
        size_t png_len = 0;
        uint8_t *png = png_of(&img, &png_len);
        prep_ctx pc = {.pool = pool};
        memset(b, 0xff, nvals * 4);
        CHECK_OK(prep_image(png, png_len, 0, &cfg, &g, b, &pc, &err), &err);
        bool same_pool = !memcmp(a, b, nvals * 4);
        printf("  %ux%u -> grid %dx%d: reverse pieces %s, pool %s (decode %.2f ms)\n", w, h, g.h, g.w,
               same_rev ? "equal" : "DIFFER", same_pool ? "equal" : "DIFFER", pc.decode_s * 1e3);
        CHECK(same_rev && same_pool);
        free(png);
        free(a);
        free(b);
        free(img.rgb);
    }
    prep_pool_free(pool);
}

/* A task still running while the pool shuts down (a drain that timed out) keeps splitting its work and handing
 * on more: prep_pool_parallel must run alone and prep_pool_submit must refuse, never abort (review of issue 12:
 * this aborted within a dozen iterations). */
typedef struct {
    prep_pool *pool;
    atomic_int rounds, refused;
    atomic_bool stop;
} shutdown_job;

static void count_range(void *arg, size_t b, size_t e) {
    atomic_int *sum = arg;
    atomic_fetch_add(sum, (int)(e - b));
}

static void noop_task(void *arg, int i) { (void)arg; (void)i; }

static void busy_task(void *arg, int i) {
    (void)i;
    shutdown_job *j = arg;
    while (!atomic_load(&j->stop)) {
        atomic_int sum = 0;
        prep_pool_parallel(j->pool, 1000, 10, count_range, &sum);
        CHECK_EQ_INT(1000, atomic_load(&sum));
        if (!prep_pool_submit(j->pool, noop_task, NULL, 1)) {
            atomic_fetch_add(&j->refused, 1);
            atomic_store(&j->stop, true);
        }
        atomic_fetch_add(&j->rounds, 1);
    }
}

static void test_pool_shutdown_race(void) {
    for (int trial = 0; trial < 20; trial++) {
        vitd_err err;
        shutdown_job j = {0};
        CHECK_OK(prep_pool_create(4, &j.pool, &err), &err);
        CHECK(prep_pool_submit(j.pool, busy_task, &j, 1));
        while (atomic_load(&j.rounds) < 3) usleep(100);
        prep_pool_free(j.pool); /* returns once busy_task saw the refusal and stopped */
        CHECK_EQ_INT(1, atomic_load(&j.refused));
    }
    printf("pool shutdown with a running task: 20 trials, each refused once, none aborted\n");
}

static void count_task(void *arg, int i) {
    (void)i;
    atomic_fetch_add((atomic_int *)arg, 1);
}

/* Shutdown in two steps (serve.c): prep_pool_stop runs what is queued and joins the workers while the pool stays
 * allocated, so a thread that is no worker of it (the batcher, starting a retry round after its batch failed)
 * and submits afterwards is refused, never handed freed memory; prep_pool_free frees it later. */
static void test_pool_stop_then_submit(void) {
    vitd_err err;
    prep_pool *p = NULL;
    CHECK_OK(prep_pool_create(2, &p, &err), &err);
    atomic_int ran = 0, sum = 0;
    CHECK(prep_pool_submit(p, count_task, &ran, 64));
    prep_pool_stop(p);
    CHECK_EQ_INT(64, atomic_load(&ran)); /* the queue ran dry before the workers left */
    CHECK(!prep_pool_submit(p, count_task, &ran, 1));
    CHECK_EQ_INT(0, prep_pool_pending(p));
    prep_pool_parallel(p, 1000, 10, count_range, &sum); /* no workers: all of it on this thread */
    CHECK_EQ_INT(1000, atomic_load(&sum));
    prep_pool_stop(p); /* a second call does nothing */
    prep_pool_free(p);
    CHECK_EQ_INT(64, atomic_load(&ran));
    printf("pool stopped before it is freed: queued tasks ran, a later submission refused\n");
}

int main(int argc, char **argv) {
    int bench = argc > 1 && strcmp(argv[1], "--bench") == 0;
    test_defaults();
    test_smart_resize_cases();
    test_smart_resize_sweep();
    test_resize_fixtures();
    test_resize_properties();
    test_pixel_values_fixtures();
    test_normalize_fixtures();
    test_layout(16, 2, 2, 96, 64);
    test_layout(16, 2, 2, 64, 160);
    test_layout(14, 3, 2, 84, 112);
    test_layout(8, 1, 1, 40, 24);
    test_layout(4, 2, 4, 32, 48);
    test_cu_seqlens();
    test_errors();
    test_split();
    test_pool_shutdown_race();
    test_pool_stop_then_submit();

    printf("timing (best of %d, one thread, no asserts):\n", bench ? 5 : 2);
    time_case(2048, 2048, 16777216, bench ? 5 : 2);           /* no resize */
    time_case(4096, 4096, 16777216, bench ? 5 : 2);           /* no resize, the largest default output */
    time_case(4096, 4096, 4194304, bench ? 5 : 2);            /* 2x down to 2048x2048 */
    time_case(3000, 4000, 16777216, bench ? 5 : 2);           /* photo, ~1% resize to 3008x4000 */
    if (bench) {
        time_case(5000, 5000, 16777216, 5);                   /* down to 4096x4096 */
        time_case(8192, 8192, 16777216, 3);                   /* 2x down to 4096x4096 */
        time_case(300, 400, 16777216, 5);                     /* small photo: 300x400 -> 288x384 */
    }
    return check_done("test_preprocess");
}
