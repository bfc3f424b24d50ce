/* labels: unit */
/* test_attn_route.c — the attention path choice without a GPU (encoder/gpu/attn_route.c, encoder/encoder.c,
 * server/cli.c): the attn_dtype parser; the FP8 support rule from (runtime cuDNN version, compute capability),
 * whose "no" makes attn_dtype fp8 a start-up error in the GPU engine; the auto routing table (shapes within the
 * engine's limits, decisions from timings with margin and monotonicity, the per-batch pick); the encoder's
 * start-up errors (bad attn_dtype, fp8 on the CPU backend, a static scales file naming the bad layer, margin and
 * history bounds); the CPU backend's per-path batch counts; and the CLI's FP8 flags and `vitd calibrate` usage
 * errors (the real program in a child process). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "attn_route.h"
#include "check.h"
#include "demo_model.h"
#include "util.h"
#include "vitd.h"

static void check_mode_and_support(void) {
    attn_mode m = ATTN_MODE_BF16;
    CHECK(attn_mode_parse(NULL, &m) == 0 && m == ATTN_MODE_AUTO);
    CHECK(attn_mode_parse("auto", &m) == 0 && m == ATTN_MODE_AUTO);
    CHECK(attn_mode_parse("fp8", &m) == 0 && m == ATTN_MODE_FP8);
    CHECK(attn_mode_parse("bf16", &m) == 0 && m == ATTN_MODE_BF16);
    CHECK(attn_mode_parse("fp16", &m) == -1);
    CHECK(!strcmp(attn_mode_name(ATTN_MODE_FP8), "fp8"));

    char why[160];
    /* the GPU machine's system cuDNN 9.14 on an H100: no, and the message says which version is needed */
    CHECK_EQ_INT(0, attn_fp8_supported(91400, 9, 0, why, sizeof why));
    CHECK_STR_CONTAINS(why, "9.14.0");
    CHECK_STR_CONTAINS(why, "9.17.1");
    printf("  cuDNN 9.14, cc 9.0: %s\n", why);
    CHECK_EQ_INT(0, attn_fp8_supported(91700, 9, 0, why, sizeof why));
    CHECK_EQ_INT(1, attn_fp8_supported(91701, 9, 0, why, sizeof why));
    CHECK(why[0] == '\0');
    CHECK_EQ_INT(1, attn_fp8_supported(91900, 10, 0, why, sizeof why));
    /* Ada (8.9) has FP8 tensor cores but not cuDNN's Hopper FP8 attention here */
    CHECK_EQ_INT(0, attn_fp8_supported(91900, 8, 9, why, sizeof why));
    CHECK_STR_CONTAINS(why, "compute capability 8.9");
    printf("  cuDNN 9.19, cc 8.9: %s\n", why);
    CHECK_EQ_INT(0, attn_fp8_supported(91900, 8, 0, NULL, 0)); /* no buffer: no crash */
}

static void check_shapes(void) {
    attn_route_entry t[ATTN_ROUTE_MAX];
    int n = attn_route_shapes(16384, 64, 16384, t, ATTN_ROUTE_MAX);
    /* singles 256..16384 (7) + 4x{256,512,1024,4096} + 16x{256,512,1024} */
    CHECK_EQ_INT(14, n);
    int singles = 0;
    for (int i = 0; i < n; i++) {
        CHECK((size_t)t[i].n_images * t[i].max_len <= 16384);
        CHECK(t[i].ms_bf16 < 0 && t[i].ms_fp8 < 0 && !t[i].fp8);
        singles += t[i].n_images == 1;
    }
    CHECK_EQ_INT(7, singles);
    CHECK_EQ_INT(16384, t[6].max_len);
    /* a small engine: 4096 tokens, 8 images -> singles 256..4096, 4x256, 4x512, 4x1024 */
    n = attn_route_shapes(4096, 8, 4096, t, ATTN_ROUTE_MAX);
    CHECK_EQ_INT(8, n);
    /* capped at 65536 tokens per image, and by max */
    n = attn_route_shapes(1 << 20, 4096, 1 << 20, t, ATTN_ROUTE_MAX);
    CHECK_EQ_INT(9 + 8, n);
    CHECK_EQ_INT(65536, t[8].max_len);
    CHECK_EQ_INT(3, attn_route_shapes(1 << 20, 4096, 1 << 20, t, 3));
    /* below the smallest shape: nothing to measure */
    CHECK_EQ_INT(0, attn_route_shapes(200, 64, 200, t, ATTN_ROUTE_MAX));
}

/* The H100 figures of bench/RESULTS.md's attention table, roughly: FP8 loses at <= 2K, wins from 4K. */
static void check_decide_and_pick(void) {
    attn_route_entry t[ATTN_ROUTE_MAX];
    int n = attn_route_shapes(16384, 64, 16384, t, ATTN_ROUTE_MAX);
    for (int i = 0; i < n; i++) {
        const double len = t[i].max_len, ni = t[i].n_images;
        t[i].ms_bf16 = 1e-5 * ni * len * (1 + len / 4096);
        /* FP8: 25% slower at 256, break-even near 2048, ~1.28x faster at 16K */
        double r = len <= 256 ? 0.75 : len <= 1024 ? 0.8 : len <= 2048 ? 0.99 : len <= 4096 ? 1.15 : 1.28;
        if (ni == 16 && len == 1024) r = 1.3; /* many images favour FP8 */
        t[i].ms_fp8 = t[i].ms_bf16 / r;
    }
    /* one glitch: 4096 for one image measured slower; then every shorter single must stay bf16 too */
    attn_route_entry g[ATTN_ROUTE_MAX];
    memcpy(g, t, sizeof g);
    attn_route_decide(t, n, ATTN_ROUTE_MARGIN);
    char buf[2048];
    attn_route_format(t, n, buf, sizeof buf);
    printf("  table: %s\n", buf);
    CHECK_STR_CONTAINS(buf, "1x16384");
    for (int i = 0; i < n; i++) {
        /* 2048: 0.99 ratio is within the 2% margin -> bf16 */
        const int want = t[i].max_len >= 4096 || (t[i].n_images == 16 && t[i].max_len == 1024);
        CHECK_MSG(t[i].fp8 == want, "%dx%d decided %d, want %d", t[i].n_images, t[i].max_len, t[i].fp8, want);
    }
    /* the pick: dominated shape */
    CHECK_EQ_INT(0, attn_route_fp8(t, n, 1, 100));    /* below everything */
    CHECK_EQ_INT(-1, attn_route_pick(t, n, 1, 100));
    CHECK_EQ_INT(0, attn_route_fp8(t, n, 1, 784));    /* 448x448: 1x512 */
    CHECK_EQ_INT(512, t[attn_route_pick(t, n, 1, 784)].max_len);
    CHECK_EQ_INT(0, attn_route_fp8(t, n, 16, 784));   /* 16 x 448x448: 16x512 -> bf16 */
    CHECK_EQ_INT(512, t[attn_route_pick(t, n, 16, 784)].max_len);
    CHECK_EQ_INT(16, t[attn_route_pick(t, n, 16, 784)].n_images);
    CHECK_EQ_INT(1, attn_route_fp8(t, n, 16, 1024));  /* 16x1024 */
    CHECK_EQ_INT(1, attn_route_fp8(t, n, 4, 4096));   /* 1024x1024 x4 */
    CHECK_EQ_INT(1, attn_route_fp8(t, n, 1, 16384));  /* 2048x2048 */
    CHECK_EQ_INT(1, attn_route_fp8(t, n, 1, 60000));  /* beyond the table: the longest measured */
    CHECK_EQ_INT(0, attn_route_fp8(t, n, 9, 3000));   /* mixed9-like: 4x2048 is not measured, 4x1024 -> bf16 */
    CHECK_EQ_INT(0, attn_route_fp8(t, n, 3, 4000));   /* 1x2048 */
    const int k = attn_route_pick(t, n, 5, 4096);
    CHECK(k >= 0 && t[k].n_images == 4 && t[k].max_len == 4096);

    /* monotone along length */
    for (int i = 0; i < n; i++)
        if (g[i].n_images == 1 && g[i].max_len == 8192) g[i].ms_fp8 = g[i].ms_bf16 * 1.1;
    attn_route_decide(g, n, ATTN_ROUTE_MARGIN);
    for (int i = 0; i < n; i++)
        if (g[i].n_images == 1)
            CHECK_MSG(g[i].fp8 == (g[i].max_len == 16384), "1x%d decided %d after the 8192 glitch", g[i].max_len,
                      g[i].fp8);
    /* an unmeasured FP8 (failed) never routes to FP8 */
    g[0].ms_fp8 = -1;
    attn_route_decide(g, 1, 0);
    CHECK_EQ_INT(0, g[0].fp8);
    /* an empty table: bf16 */
    CHECK_EQ_INT(0, attn_route_fp8(t, 0, 1, 16384));
}

/* attn_short_decide / attn_short_tiling: the own kernel's reach and per-length tiling from start-up timings
 * (shaped like the H200's: own wins up to 256 tokens, tilings trade places with length). */
static void check_short(void) {
    attn_short_entry t[ATTN_SHORT_LENS] = {
        {17.1, {8.8, 7.7, 9.1}}, {15.8, {11.4, 11.9, 9.8}}, {17.8, {17.4, 17.7, 14.9}},
        {23.2, {35.8, 28.8, 29.7}}, {33.5, {64.3, 51.1, 54.9}}, {86.0, {252.0, 201.0, 217.0}}};
    int tiling[ATTN_SHORT_LENS];
    CHECK_EQ_INT(256, attn_short_decide(t, ATTN_SHORT_LENS, 16384, 0.02, tiling));
    CHECK_EQ_INT(1, tiling[0]);
    CHECK_EQ_INT(2, tiling[1]);
    CHECK_EQ_INT(2, tiling[2]);
    CHECK_EQ_INT(1, tiling[3]);
    CHECK_EQ_INT(1, attn_short_tiling(tiling, ATTN_SHORT_LENS, 1));
    CHECK_EQ_INT(1, attn_short_tiling(tiling, ATTN_SHORT_LENS, 64));
    CHECK_EQ_INT(2, attn_short_tiling(tiling, ATTN_SHORT_LENS, 65));
    CHECK_EQ_INT(2, attn_short_tiling(tiling, ATTN_SHORT_LENS, 256));
    CHECK_EQ_INT(1, attn_short_tiling(tiling, ATTN_SHORT_LENS, 100000)); /* past the table: the last entry */
    /* the cap (max_batch_tokens) stops the reach; a later win does not extend it past a loss */
    CHECK_EQ_INT(128, attn_short_decide(t, ATTN_SHORT_LENS, 200, 0.02, tiling));
    t[4].ms_own[1] = 10.0; /* 1024 wins, but 512 lost */
    CHECK_EQ_INT(256, attn_short_decide(t, ATTN_SHORT_LENS, 16384, 0.02, tiling));
    /* within the margin is not a win; an unmeasured entry ends the reach */
    t[0].ms_own[1] = 16.9;
    t[0].ms_own[0] = t[0].ms_own[2] = 17.0;
    CHECK_EQ_INT(0, attn_short_decide(t, ATTN_SHORT_LENS, 16384, 0.02, tiling));
    t[0].ms_own[1] = 7.7;
    t[1].ms_cudnn = -1;
    CHECK_EQ_INT(64, attn_short_decide(t, ATTN_SHORT_LENS, 16384, 0.02, tiling));
    CHECK_EQ_INT(0, tiling[1]);
    CHECK_EQ_INT(0, attn_short_decide(t, 0, 16384, 0.02, tiling));
}

static char tmpdir[] = "/tmp/vitd_test_attn_route_XXXXXX";

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    CHECK(f != NULL);
    if (!f) return;
    fputs(text, f);
    fclose(f);
}

static void check_encoder_errors(const char *model_dir) {
    vitd_err err = {0};
    vitd_model *m = NULL;
    CHECK_OK(vitd_model_load(model_dir, &m, &err), &err);
    if (!m) return;
    vitd_encoder *e = NULL;
    vitd_encoder_opts o = vitd_encoder_opts_default();
    o.backend = "cpu";
    o.attn_dtype = "fp16";
    CHECK_EQ_INT(VITD_E_INVALID_ARG, vitd_encoder_create(m, &o, &e, &err));
    CHECK_STR_CONTAINS(err.msg, "attn_dtype 'fp16'");
    o.attn_dtype = "fp8";
    CHECK_EQ_INT(VITD_E_UNSUPPORTED, vitd_encoder_create(m, &o, &e, &err));
    CHECK_STR_CONTAINS(err.msg, "attn_dtype fp8 needs the GPU");
    printf("  cpu + fp8: %s\n", err.msg);
#ifndef VITD_HAVE_CUDA
    o.backend = "auto"; /* no CUDA in this build: fp8 cannot run anywhere */
    CHECK_EQ_INT(VITD_E_UNSUPPORTED, vitd_encoder_create(m, &o, &e, &err));
    CHECK_STR_CONTAINS(err.msg, "without CUDA");
    o.backend = "cpu";
#endif
    o.attn_dtype = "auto";
    /* FP8 linear layers (issue 14): a bad name is an argument error, fp8 where only the CPU runs a start-up one;
     * auto and bf16 run the CPU reference (float32) */
    o.linear_dtype = "int8";
    CHECK_EQ_INT(VITD_E_INVALID_ARG, vitd_encoder_create(m, &o, &e, &err));
    CHECK_STR_CONTAINS(err.msg, "linear_dtype 'int8'");
    o.linear_dtype = "fp8";
    CHECK_EQ_INT(VITD_E_UNSUPPORTED, vitd_encoder_create(m, &o, &e, &err));
    CHECK_STR_CONTAINS(err.msg, "linear_dtype fp8 needs the GPU");
    o.linear_dtype = "auto";
    CHECK_OK(vitd_encoder_create(m, &o, &e, &err), &err);
    if (e) CHECK(!strcmp(vitd_encoder_linear_dtype(e), "fp32"));
    vitd_encoder_free(e);
    e = NULL;
    o.linear_dtype = NULL;
    o.fp8_history = 0;
    CHECK_EQ_INT(VITD_E_INVALID_ARG, vitd_encoder_create(m, &o, &e, &err));
    CHECK_STR_CONTAINS(err.msg, "fp8_history");
    o.fp8_history = 16;
    o.fp8_save_margin = 0.5;
    CHECK_EQ_INT(VITD_E_INVALID_ARG, vitd_encoder_create(m, &o, &e, &err));
    CHECK_STR_CONTAINS(err.msg, "fp8_save_margin");
    o.fp8_save_margin = 1.5;

    /* a static scales file is checked at start-up on every backend; the message names the layer */
    char bad[600], good[600];
    snprintf(bad, sizeof bad, "%s/bad.json", tmpdir);
    snprintf(good, sizeof good, "%s/good.json", tmpdir);
    write_text(bad, "{\"blocks.0.attn\": {\"q\": 0.01, \"k\": 0.01, \"v\": 0.01},"
                    " \"blocks.1.attn\": {\"q\": 0.01, \"k\": -1, \"v\": 0.01},"
                    " \"blocks.2.attn\": {\"q\": 0.01, \"k\": 0.01, \"v\": 0.01},"
                    " \"blocks.3.attn\": {\"q\": 0.01, \"k\": 0.01, \"v\": 0.01}}");
    write_text(good, "{\"layers\": {\"blocks.0.attn\": {\"q_scale\": 0.01, \"k_scale\": 0.01, \"v_scale\": 0.01},"
                     " \"blocks.1.attn\": {\"q\": 0.01, \"k\": 0.01, \"v\": 0.01},"
                     " \"2\": {\"q\": 0.01, \"k\": 0.01, \"v\": 0.01},"
                     " \"model.visual.blocks.3.attn\": {\"q\": 0.01, \"k\": 0.01, \"v\": 0.01}}}");
    o.fp8_scales = bad;
    CHECK_EQ_INT(VITD_E_INVALID_ARG, vitd_encoder_create(m, &o, &e, &err));
    CHECK_STR_CONTAINS(err.msg, "blocks.1.attn");
    printf("  bad scales: %s\n", err.msg);
    o.attn_dtype = "bf16"; /* not used: not read */
    CHECK_OK(vitd_encoder_create(m, &o, &e, &err), &err);
    vitd_encoder_free(e);
    e = NULL;
    o.attn_dtype = "auto";
    o.fp8_scales = good;
    CHECK_OK(vitd_encoder_create(m, &o, &e, &err), &err);
    if (e) {
        /* the CPU backend: fp32 attention, counted per batch */
        CHECK(!strcmp(vitd_encoder_attn_dtype(e), "fp32"));
        CHECK(!strcmp(vitd_encoder_last_attn(e), ""));
        const vitd_vision_config *vc = vitd_model_config(m);
        vitd_grid grid = {1, 4, 4};
        float *pv = xmalloc(16 * 1536 * sizeof(float)), *emb = xmalloc(4 * (size_t)vc->out_hidden_size * 4);
        for (int i = 0; i < 16 * 1536; i++) pv[i] = (float)((i * 7919) % 2001) / 1000.0f - 1.0f;
        vitd_batch b = {.n_images = 1, .grids = &grid, .pixel_values = pv, .embeddings = emb};
        CHECK_OK(vitd_encoder_run(e, &b, &err), &err);
        CHECK_OK(vitd_encoder_run(e, &b, &err), &err);
        vitd_attn_info ai;
        vitd_encoder_attn_info(e, &ai);
        CHECK(!strcmp(ai.last, "fp32") && !strcmp(ai.mode, "fp32") && !strcmp(ai.fallback, ""));
        CHECK(ai.batches_fp32 == 2 && ai.batches_bf16 == 0 && ai.batches_fp8 == 0);
        /* calibration is GPU-only */
        float amax[12];
        CHECK_EQ_INT(VITD_E_UNSUPPORTED, vitd_encoder_fp8_amax(e, amax, &err));
        CHECK_STR_CONTAINS(err.msg, "GPU");
        free(pv);
        free(emb);
    }
    vitd_encoder_free(e);
    vitd_model_free(m);
    unlink(bad);
    unlink(good);
}

/* The saved table: written atomically and read back equal; refused with the field named when measured on another
 * GPU, cuDNN, shape or scaling; clear errors for a missing file, another JSON, a bad shape entry. */
static void check_route_file(void) {
    vitd_err err = {0};
    char path[700];
    snprintf(path, sizeof path, "%s/route.json", tmpdir);
    attn_route_key key = {.device = "NVIDIA H100 80GB HBM3", .cc_major = 9, .cc_minor = 0, .cudnn_version = 91900,
                          .n_heads = 16, .head_dim = 72, .head_dim_padded = 80, .fp8_static = 0, .fp8_history = 16,
                          .max_tokens = 16384, .max_images = 64, .attn_short_max = 256};
    attn_route_entry t[ATTN_ROUTE_MAX], back[ATTN_ROUTE_MAX];
    int n = attn_route_shapes(16384, 64, 16384, t, ATTN_ROUTE_MAX), nb = 0;
    for (int i = 0; i < n; i++) {
        t[i].ms_bf16 = 0.01 * (i + 1) + 1.0 / 3.0;
        t[i].ms_fp8 = t[i].ms_bf16 * (i % 2 ? 0.8 : 1.1);
    }
    CHECK_EQ_INT(VITD_E_IO, attn_route_load(path, &key, back, ATTN_ROUTE_MAX, &nb, &err));
    CHECK_OK(attn_route_save(path, &key, t, n, &err), &err);
    CHECK_OK(attn_route_load(path, &key, back, ATTN_ROUTE_MAX, &nb, &err), &err);
    CHECK_EQ_INT(n, nb);
    int same = 1;
    for (int i = 0; i < n && i < nb; i++)
        same &= back[i].n_images == t[i].n_images && back[i].max_len == t[i].max_len &&
                fabs(back[i].ms_bf16 - t[i].ms_bf16) <= 1e-12 * t[i].ms_bf16 &&
                fabs(back[i].ms_fp8 - t[i].ms_fp8) <= 1e-12 * t[i].ms_fp8 && back[i].fp8 == 0;
    CHECK_MSG(same, "the table read back differs from the one written");
    /* measured on something else: each field is named */
    struct {
        attn_route_key k;
        const char *want;
    } other[7];
    for (int i = 0; i < 7; i++) other[i].k = key;
    snprintf(other[0].k.device, sizeof other[0].k.device, "NVIDIA H200");
    other[0].want = "device";
    other[1].k.cudnn_version = 91700;
    other[1].want = "cudnn 91900";
    other[2].k.fp8_static = 1;
    other[2].want = "dynamic FP8 scaling";
    other[3].k.head_dim = 64;
    other[3].want = "head_dim 72";
    other[4].k.cc_minor = 1;
    other[4].want = "compute capability 9.0";
    other[5].k.max_tokens = 65536;
    other[5].want = "max_tokens 16384";
    other[6].k.attn_short_max = 0; /* BF16 timings taken with the own kernel are not cuDNN's */
    other[6].want = "attn_short_max 256";
    for (int i = 0; i < 7; i++) {
        CHECK_EQ_INT(VITD_E_UNSUPPORTED, attn_route_load(path, &other[i].k, back, ATTN_ROUTE_MAX, &nb, &err));
        CHECK_STR_CONTAINS(err.msg, other[i].want);
    }
    /* too many shapes for the caller's array */
    CHECK_EQ_INT(VITD_E_INVALID_ARG, attn_route_load(path, &key, back, n - 1, &nb, &err));
    /* another JSON file, and a table with a bad entry */
    write_text(path, "{\"layers\": {}}");
    CHECK_EQ_INT(VITD_E_INVALID_ARG, attn_route_load(path, &key, back, ATTN_ROUTE_MAX, &nb, &err));
    CHECK_STR_CONTAINS(err.msg, "not a vitd attention routing table");
    write_text(path, "{\"vitd_attn_route\": 1, \"measured_on\": {\"device\": \"NVIDIA H100 80GB HBM3\", \"cc\": "
                     "\"9.0\", \"cudnn\": 91900, \"heads\": 16, \"head_dim\": 72, \"head_dim_padded\": 80, "
                     "\"fp8_scaling\": \"dynamic\", \"fp8_history\": 16, \"max_tokens\": 16384, "
                     "\"max_images\": 64, \"attn_short_max\": 256}, \"shapes\": [{\"images\": 1, "
                     "\"max_len\": 0, \"bf16_ms\": 1, \"fp8_ms\": 1}]}");
    CHECK_EQ_INT(VITD_E_INVALID_ARG, attn_route_load(path, &key, back, ATTN_ROUTE_MAX, &nb, &err));
    CHECK_STR_CONTAINS(err.msg, "shape 0");
    CHECK_EQ_INT(0, nb);
}

static void check_cli(const char *model_dir) {
    char e[4096], a[2048];
    CHECK_EQ_INT(2, check_run_vitd(tmpdir, "calibrate", NULL, e, sizeof e));
    CHECK_STR_CONTAINS(e, "usage: vitd calibrate");
    CHECK_EQ_INT(0, check_run_vitd(tmpdir, "calibrate --help", NULL, e, sizeof e));
    snprintf(a, sizeof a, "calibrate --model %s --out %s/s.json --margin 0.5 x.png", model_dir, tmpdir);
    CHECK_EQ_INT(2, check_run_vitd(tmpdir, a, NULL, e, sizeof e));
    CHECK_STR_CONTAINS(e, "--margin");
    snprintf(a, sizeof a, "calibrate --model %s --out %s/s.json --backend cpu %s/tests/fixtures/images/chelsea.png",
             model_dir, tmpdir, VITD_SOURCE_DIR);
    CHECK_EQ_INT(1, check_run_vitd(tmpdir, a, NULL, e, sizeof e));
    CHECK_STR_CONTAINS(e, "GPU");
    printf("  calibrate --backend cpu: %s", e);
    snprintf(a, sizeof a, "calibrate --model %s --out %s/s.json --bogus x", model_dir, tmpdir);
    CHECK_EQ_INT(2, check_run_vitd(tmpdir, a, NULL, e, sizeof e));
    snprintf(a, sizeof a, "calibrate --model %s --out %s/s.json %s/no_such_dir", model_dir, tmpdir, tmpdir);
    CHECK_EQ_INT(1, check_run_vitd(tmpdir, a, NULL, e, sizeof e));
    CHECK_STR_CONTAINS(e, "no_such_dir");
    snprintf(a, sizeof a, "encode --model %s --fp8-history 0 x.png --format json", model_dir);
    CHECK_EQ_INT(2, check_run_vitd(tmpdir, a, NULL, e, sizeof e));
    CHECK_STR_CONTAINS(e, "--fp8-history");
    snprintf(a, sizeof a, "encode --model %s --attn-dtype fp4 x.png --format json", model_dir);
    CHECK_EQ_INT(2, check_run_vitd(tmpdir, a, NULL, e, sizeof e));
    CHECK_STR_CONTAINS(e, "--attn-dtype");
    snprintf(a, sizeof a, "encode --model %s --fp8-save-margin 200 x.png --format json", model_dir);
    CHECK_EQ_INT(2, check_run_vitd(tmpdir, a, NULL, e, sizeof e));
    /* fp8 on the CPU backend: a start-up error, exit 1 */
    snprintf(a, sizeof a, "encode --model %s --backend cpu --attn-dtype fp8 %s/tests/fixtures/images/chelsea.png "
             "--format json", model_dir, VITD_SOURCE_DIR);
    CHECK_EQ_INT(1, check_run_vitd(tmpdir, a, NULL, e, sizeof e));
    CHECK_STR_CONTAINS(e, "attn_dtype fp8 needs the GPU");
    snprintf(a, sizeof a, "encode --model %s --linear-dtype int4 x.png --format json", model_dir);
    CHECK_EQ_INT(2, check_run_vitd(tmpdir, a, NULL, e, sizeof e));
    CHECK_STR_CONTAINS(e, "--linear-dtype");
    snprintf(a, sizeof a, "encode --model %s --backend cpu --linear-dtype fp8 %s/tests/fixtures/images/chelsea.png "
             "--format json", model_dir, VITD_SOURCE_DIR);
    CHECK_EQ_INT(1, check_run_vitd(tmpdir, a, NULL, e, sizeof e));
    CHECK_STR_CONTAINS(e, "linear_dtype fp8 needs the GPU");
    /* the FP8 flags are accepted with bf16/cpu (parsed, then unused) */
    snprintf(a, sizeof a, "encode --model %s --backend cpu --attn-dtype bf16 --fp8-history 4 --fp8-save-margin 2 "
             "--fp8-save-scales %s/unused.json %s/tests/fixtures/images/chelsea.png --format json", model_dir, tmpdir,
             VITD_SOURCE_DIR);
    CHECK_EQ_INT(0, check_run_vitd(tmpdir, a, NULL, e, sizeof e));
    snprintf(a, sizeof a, "%s/unused.json", tmpdir);
    CHECK_MSG(access(a, F_OK) != 0, "%s written by the CPU backend", a);
}

int main(void) {
    printf("mode and FP8 support\n");
    check_mode_and_support();
    printf("routing shapes\n");
    check_shapes();
    printf("decide and pick\n");
    check_decide_and_pick();
    check_short();
    if (!mkdtemp(tmpdir)) {
        CHECK_MSG(0, "mkdtemp failed");
        return check_done("test_attn_route");
    }
    char model[700];
    snprintf(model, sizeof model, "%s/tiny", tmpdir);
    demo_model_opts o = demo_model_opts_default();
    o.preset = "tiny";
    o.out_dir = model;
    vitd_err err = {0};
    CHECK_OK(demo_model_write(&o, &err), &err);
    printf("encoder start-up errors and counts\n");
    check_encoder_errors(model);
    printf("cli\n");
    check_cli(model);
    printf("saved routing table\n");
    check_route_file();
    if (check_rm_tree(tmpdir) != 0) printf("  (could not remove %s)\n", tmpdir);
    return check_done("test_attn_route");
}
