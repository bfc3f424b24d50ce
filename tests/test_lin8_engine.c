/* labels: gpu */
/* test_lin8_engine.c — FP8 linear layers and CUDA graphs in the whole GPU engine (issue 14) on real photographs
 * (tests/fixtures/images), decoded and preprocessed by vitd.
 *
 * Checks:
 *  - accuracy, tiny and 8B presets (random weights) and the same with planted outlier channels (demo_model_opts
 *    .outliers = 1000: four channels of every QKV and fc1 input 1000x larger, the function unchanged): per image
 *    and output, whole encoder vs the CPU float32 reference for each set of FP8 GEMMs (linear_fp8_gemms qkv,
 *    proj, fc1, qkv+fc1, qkv+proj+fc1, all), with BF16 and with FP8 attention; every cosine >= 0.995 here, and the
 *    issue's gate (>= 0.999 with FP8 linear, >= 0.998 with FP8 attention too) reported per set ("gate" lines);
 *    the first FP8-linear batch runs BF16 GEMMs (it records the amax) and the next FP8;
 *  - CUDA graphs: two engines, one without graphs, the same batches in the same order (FP8 attention and FP8
 *    linear, then both BF16, then another shape, then two batches in flight): every output bit-identical, the
 *    graph engine captured and replayed segments and no capture failed;
 *  - static scales: a calibration engine (fp8_calibrate) records the linear inputs' amax, saved with margin 1.5
 *    next to the attention's; an engine loading the file runs FP8 linear from its first batch, cosine >= 0.995;
 *  - linear_dtype auto (8B): the start-up table is measured, and batches of a small and a large image take the
 *    path the table gives for their size;
 *  - bad settings: an unknown GEMM name and fc2 without fc1 fail at creation naming the problem.
 * Models: written with demo_model_write into /tmp, or the 8B one from $VITD_TEST_MODEL_8B; VITD_TEST_SKIP_8B=1 runs
 * the tiny preset only, VITD_TEST_SKIP_TINY=1 the 8B ones only. Without CUDA, a device, or compute capability
 * >= 9.0 it exits 77.
 */
#ifndef VITD_HAVE_CUDA
#include <stdio.h>
int main(void) {
    printf("SKIP: vitd was built without CUDA (VITD_CUDA=OFF or no nvcc)\n");
    return 77;
}
#else

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "attn_route.h"
#include "check.h"
#include "cpu_forward.h"
#include "demo_model.h"
#include "fp8_scales.h"
#include "gpu_attn.h"
#include "gpu_engine.h"
#include "image.h"
#include "preprocess.h"
#include "util.h"

static char tmpdir[] = "/tmp/vitd_test_lin8_XXXXXX";
static int g_fp8_attn; /* FP8 attention can run here */

#include "engine_check.h"
#include "gpu_check.h"

static vitd_status gpu_run(void *impl, const vitd_batch *b, vitd_err *err) { return gpu_engine_run(impl, b, err); }

static gpu_engine *engine(const vitd_model *m, size_t tokens, const char *attn, const char *lin, const char *gemms,
                          int graphs, vitd_err *err) {
    vitd_encoder_opts eo = vitd_encoder_opts_default();
    eo.attn_dtype = attn;
    eo.linear_dtype = lin;
    eo.linear_fp8_gemms = gemms;
    eo.no_cuda_graphs = !graphs;
    eo.max_batch_tokens = tokens;
    gpu_engine *g = NULL;
    CHECK_OK(gpu_engine_create(m, &eo, &g, err), err);
    return g;
}

/* ---- accuracy per set of FP8 GEMMs ---- */

static void check_accuracy(const char *dir, const char *label, const char *const *files, int n_files) {
    vitd_err err = {0};
    images im;
    printf("%s accuracy: %s\n", label, dir);
    vitd_model *model = load_model_images(dir, files, n_files, &im);
    if (!model) return;
    const vitd_vision_config *vc = vitd_model_config(model);
    const int D = vc->out_hidden_size, nds = vc->n_deepstack;
    const size_t N = im.off[im.n], nm = N / 4;
    printf("  %d images, %zu patches\n", im.n, N);
    outputs ref, o;
    outputs_alloc(&ref, nm, D, nds);
    outputs_alloc(&o, nm, D, nds);
    cpu_reference(model, &im, D, nds, &ref);

    gpu_engine *gb = engine(model, N, "bf16", "bf16", NULL, 1, &err);
    if (gb) {
        CHECK_OK(run_subset(gpu_run, gb, &im, 0, im.n, D, nds, &o, &err), &err);
        const double w = compare("bf16 vs cpu", &im, &o, &ref, D, nds, 0.999);
        printf("  gate %s gemms=none attn=bf16 worst_cos=%.6f\n", label, w);
        CHECK(!strcmp(gpu_engine_last_linear(gb), "bf16"));
    }
    gpu_engine_free(gb);
    static const char *const sets[] = {"qkv", "proj", "fc1", "qkv,fc1", "qkv,proj,fc1", "all"};
    for (size_t k = 0; k < sizeof sets / sizeof *sets; k++) {
        gpu_engine *g = engine(model, N, g_fp8_attn ? "auto" : "bf16", "fp8", sets[k], 1, &err);
        if (!g) continue;
        CHECK(!strcmp(gpu_engine_linear_dtype(g), "fp8"));
        double w[2] = {0, 0};
        for (int fa = 0; fa < 1 + g_fp8_attn; fa++) {
            CHECK_OK(gpu_engine_set_attn(g, fa ? "fp8" : "bf16", &err), &err);
            /* the engine's first FP8-linear batch records the amax with BF16 GEMMs; the second runs FP8 */
            CHECK_OK(run_subset(gpu_run, g, &im, 0, im.n, D, nds, &o, &err), &err);
            if (fa == 0) CHECK(!strcmp(gpu_engine_last_linear(g), "bf16"));
            CHECK_OK(run_subset(gpu_run, g, &im, 0, im.n, D, nds, &o, &err), &err);
            CHECK(!strcmp(gpu_engine_last_linear(g), "fp8"));
            char what[64];
            snprintf(what, sizeof what, "fp8 %s attn %s vs cpu", sets[k], fa ? "fp8" : "bf16");
            w[fa] = compare(what, &im, &o, &ref, D, nds, 0.995);
        }
        printf("  gate %s gemms=%s attn=bf16 worst_cos=%.6f (>= 0.999: %s)", label, sets[k], w[0],
               w[0] >= 0.999 ? "yes" : "no");
        if (g_fp8_attn) printf(" attn=fp8 worst_cos=%.6f (>= 0.998: %s)", w[1], w[1] >= 0.998 ? "yes" : "no");
        printf("\n");
        gpu_engine_free(g);
    }
    outputs_free(&ref);
    outputs_free(&o);
    free(im.pv);
    vitd_model_free(model);
}

/* ---- CUDA graphs: bit-identical to plain launches ---- */

static size_t differ(const outputs *a, const outputs *b, size_t nm, int D, int nds) {
    size_t n = 0;
    for (size_t i = 0; i < nm * D; i++) n += memcmp(&a->emb[i], &b->emb[i], 4) != 0;
    for (size_t i = 0; i < (size_t)nds * nm * D; i++) n += memcmp(&a->ds[i], &b->ds[i], 4) != 0;
    return n;
}

static void check_graphs(const char *dir, const char *label, const char *const *files, int n_files) {
    vitd_err err = {0};
    images im;
    printf("%s CUDA graphs vs plain launches\n", label);
    vitd_model *model = load_model_images(dir, files, n_files, &im);
    if (!model) return;
    const vitd_vision_config *vc = vitd_model_config(model);
    const int D = vc->out_hidden_size, nds = vc->n_deepstack;
    const size_t N = im.off[im.n], nm = N / 4;
    gpu_engine *gp = engine(model, N, g_fp8_attn ? "fp8" : "bf16", "fp8", "all", 0, &err);
    gpu_engine *gg = engine(model, N, g_fp8_attn ? "fp8" : "bf16", "fp8", "all", 1, &err);
    outputs a, b;
    outputs_alloc(&a, nm, D, nds);
    outputs_alloc(&b, nm, D, nds);
    size_t bad = 0;
    int runs = 0;
    /* FP8 paths (4 batches: seen, captured, replayed twice), then BF16 (3), then the first image alone (3) */
    for (int phase = 0; phase < 3 && gp && gg; phase++) {
        if (phase == 1) {
            for (int e = 0; e < 2; e++) {
                CHECK_OK(gpu_engine_set_attn(e ? gg : gp, "bf16", &err), &err);
                CHECK_OK(gpu_engine_set_linear(e ? gg : gp, "bf16", &err), &err);
            }
        }
        const int count = phase == 2 ? 1 : im.n, reps = phase == 0 ? 4 : 3;
        for (int r = 0; r < reps; r++) {
            CHECK_OK(run_subset(gpu_run, gp, &im, 0, count, D, nds, &a, &err), &err);
            CHECK_OK(run_subset(gpu_run, gg, &im, 0, count, D, nds, &b, &err), &err);
            const size_t n = im.off[count] / 4;
            const size_t d = differ(&a, &b, n, D, 0);
            size_t dds = 0;
            for (int j = 0; j < nds; j++)
                for (size_t i = 0; i < n * D; i++)
                    dds += memcmp(&a.ds[(size_t)j * nm * D + i], &b.ds[(size_t)j * nm * D + i], 4) != 0;
            bad += d + dds;
            runs++;
        }
    }
    /* two batches in flight on the graph engine against two in a row on the plain one */
    if (gp && gg) {
        float *e1 = malloc(nm * D * sizeof(float)), *e2 = malloc(nm * D * sizeof(float));
        float *p1 = malloc(nm * D * sizeof(float)), *p2 = malloc(nm * D * sizeof(float));
        vitd_batch b1 = {.n_images = im.n, .grids = im.grids, .pixel_values = im.pv, .embeddings = e1};
        vitd_batch b2 = b1, c1 = b1, c2 = b1;
        b2.embeddings = e2;
        c1.embeddings = p1;
        c2.embeddings = p2;
        for (int e = 0; e < 2; e++) CHECK_OK(gpu_engine_set_linear(e ? gg : gp, "fp8", &err), &err);
        CHECK_OK(gpu_engine_run(gp, &c1, &err), &err);
        CHECK_OK(gpu_engine_run(gp, &c2, &err), &err);
        CHECK_OK(gpu_engine_submit(gg, &b1, &err), &err);
        CHECK_OK(gpu_engine_submit(gg, &b2, &err), &err);
        CHECK_OK(gpu_engine_wait(gg, &err), &err);
        CHECK_OK(gpu_engine_wait(gg, &err), &err);
        bad += memcmp(e1, p1, nm * D * sizeof(float)) != 0;
        bad += memcmp(e2, p2, nm * D * sizeof(float)) != 0;
        runs += 2;
        free(e1); free(e2); free(p1); free(p2);
    }
    long cap = 0, rep = 0, fail = 0, cap0 = 0, rep0 = 0;
    if (gg) gpu_engine_graph_stats(gg, &cap, &rep, &fail);
    if (gp) gpu_engine_graph_stats(gp, &cap0, &rep0, NULL);
    printf("  %d batch pairs, %zu values differ; graph engine: %ld segments captured, %ld replayed, %ld failed; "
           "plain engine: %ld / %ld\n", runs, bad, cap, rep, fail, cap0, rep0);
    CHECK_MSG(bad == 0, "%s: CUDA graph replays differ from plain launches in %zu values", label, bad);
    CHECK_MSG(cap >= 3 && rep >= 3 && fail == 0, "%s: graphs captured %ld, replayed %ld, failed %ld", label, cap,
              rep, fail);
    CHECK(cap0 == 0 && rep0 == 0);
    gpu_engine_free(gp);
    gpu_engine_free(gg);
    outputs_free(&a);
    outputs_free(&b);
    free(im.pv);
    vitd_model_free(model);
}

/* ---- static scales from a calibration engine ---- */

static void check_static(const char *dir, const char *label, const char *const *files, int n_files) {
    vitd_err err = {0};
    images im;
    printf("%s static linear scales\n", label);
    vitd_model *model = load_model_images(dir, files, n_files, &im);
    if (!model) return;
    const vitd_vision_config *vc = vitd_model_config(model);
    const int D = vc->out_hidden_size, nds = vc->n_deepstack, L = vc->depth;
    const size_t N = im.off[im.n], nm = N / 4;
    outputs ref, o;
    outputs_alloc(&ref, nm, D, nds);
    outputs_alloc(&o, nm, D, nds);
    cpu_reference(model, &im, D, nds, &ref);
    vitd_encoder_opts eo = vitd_encoder_opts_default();
    eo.attn_dtype = "bf16";
    eo.max_batch_tokens = N;
    eo.fp8_calibrate = 1;
    gpu_engine *gc = NULL;
    CHECK_OK(gpu_engine_create(model, &eo, &gc, &err), &err);
    char path[700];
    snprintf(path, sizeof path, "%s/%s_static.json", tmpdir, label);
    if (gc) {
        for (int i = 0; i < im.n; i++) CHECK_OK(run_subset(gpu_run, gc, &im, i, 1, D, nds, &o, &err), &err);
        float *aa = xcalloc((size_t)L * 3, sizeof *aa), *la = xcalloc((size_t)L * 3, sizeof *la);
        fp8_qkv *sa = xcalloc((size_t)L, sizeof *sa);
        fp8_lin *sl = xcalloc((size_t)L, sizeof *sl);
        CHECK_OK(gpu_engine_fp8_amax(gc, aa, &err), &err);
        CHECK_OK(gpu_engine_lin8_amax(gc, la, &err), &err);
        int ok = 1;
        for (int l = 0; l < L; l++) {
            for (int t = 0; t < 3; t++) ok &= la[l * 3 + t] > 0 && isfinite(la[l * 3 + t]) && aa[l * 3 + t] > 0;
            sa[l] = (fp8_qkv){aa[l * 3] / 448, aa[l * 3 + 1] / 448, aa[l * 3 + 2] / 448};
            sl[l] = (fp8_lin){la[l * 3] / 448, la[l * 3 + 1] / 448, la[l * 3 + 2] / 448};
        }
        CHECK_MSG(ok, "%s: calibration amax not positive and finite", label);
        printf("  linear amax layer 0: qkv %.3f fc1 %.3f fc2 %.3f; layer %d: qkv %.3f fc1 %.3f fc2 %.3f\n", la[0],
               la[1], la[2], L - 1, la[(L - 1) * 3], la[(L - 1) * 3 + 1], la[(L - 1) * 3 + 2]);
        CHECK_OK(fp8_scales_save_all(path, sa, sl, L, 1.5, "test_lin8_engine", &err), &err);
        free(aa); free(la); free(sa); free(sl);
        for (int fa = 0; fa < 1 + g_fp8_attn; fa++) {
            vitd_encoder_opts so = vitd_encoder_opts_default();
            so.attn_dtype = fa ? "fp8" : "bf16";
            so.linear_dtype = "fp8";
            so.linear_fp8_gemms = "all";
            so.max_batch_tokens = N;
            so.fp8_scales = path;
            gpu_engine *gs = NULL;
            CHECK_OK(gpu_engine_create(model, &so, &gs, &err), &err);
            if (!gs) continue;
            CHECK_OK(run_subset(gpu_run, gs, &im, 0, im.n, D, nds, &o, &err), &err);
            CHECK(!strcmp(gpu_engine_last_linear(gs), "fp8")); /* static: no recording batch first */
            char what[64];
            snprintf(what, sizeof what, "fp8 all static attn %s vs cpu", fa ? "fp8" : "bf16");
            const double w = compare(what, &im, &o, &ref, D, nds, 0.995);
            printf("  gate %s gemms=all static attn=%s worst_cos=%.6f\n", label, fa ? "fp8" : "bf16", w);
            gpu_engine_free(gs);
        }
    }
    gpu_engine_free(gc);
    outputs_free(&ref);
    outputs_free(&o);
    free(im.pv);
    vitd_model_free(model);
}

/* ---- linear_dtype auto and bad settings ---- */

static int table_says_fp8(const gpu_engine_lin_entry *t, int n, int tokens) {
    const gpu_engine_lin_entry *e = &t[0];
    for (int k = 1; k < n; k++)
        if (t[k].tokens <= tokens) e = &t[k];
    return e->ms_fp8 <= 0.98 * e->ms_bf16;
}

static void check_auto(const char *dir) {
    vitd_err err = {0};
    vitd_model *model = NULL;
    printf("linear_dtype auto: %s\n", dir);
    CHECK_OK(vitd_model_load(dir, &model, &err), &err);
    if (!model) return;
    const vitd_vision_config *vc = vitd_model_config(model);
    const int D = vc->out_hidden_size;
    gpu_engine *g = engine(model, 16384, "auto", "auto", "all", 1, &err);
    if (g) {
        const gpu_engine_lin_entry *t = NULL;
        const int n = gpu_engine_linear_table(g, &t);
        CHECK_MSG(n >= 3, "auto table has %d entries", n);
        int any = 0;
        for (int k = 0; k < n; k++) {
            printf("  tokens %d: bf16 %.4f ms, fp8 %.4f ms (%.2fx)\n", t[k].tokens, t[k].ms_bf16, t[k].ms_fp8,
                   t[k].ms_bf16 / t[k].ms_fp8);
            CHECK(t[k].ms_bf16 > 0 && t[k].ms_fp8 > 0);
            any |= table_says_fp8(t, n, t[k].tokens);
        }
        CHECK(!strcmp(gpu_engine_linear_dtype(g), any ? "auto" : "bf16"));
        const int sides[2] = {16, 128}; /* 256 and 16384 patches */
        float *pv = malloc((size_t)16384 * 1536 * sizeof(float)), *emb = malloc((size_t)4096 * D * sizeof(float));
        for (size_t i = 0; i < (size_t)16384 * 1536; i++) pv[i] = (float)((i * 2654435761u) % 2001) / 1000.0f - 1;
        for (int s = 0; s < 2; s++) {
            vitd_grid gr = {1, sides[s], sides[s]};
            vitd_batch b = {.n_images = 1, .grids = &gr, .pixel_values = pv, .embeddings = emb};
            for (int r = 0; r < 2; r++) CHECK_OK(gpu_engine_run(g, &b, &err), &err); /* the first may calibrate */
            const int want = table_says_fp8(t, n, sides[s] * sides[s]);
            printf("  %d patches: ran linear %s, the table says %s\n", sides[s] * sides[s],
                   gpu_engine_last_linear(g), want ? "fp8" : "bf16");
            CHECK(!strcmp(gpu_engine_last_linear(g), want ? "fp8" : "bf16"));
        }
        free(pv);
        free(emb);
    }
    gpu_engine_free(g);
    /* bad settings */
    vitd_encoder_opts eo = vitd_encoder_opts_default();
    eo.max_batch_tokens = 1024;
    eo.linear_dtype = "fp8";
    eo.linear_fp8_gemms = "qkv,fc3";
    CHECK_EQ_INT(VITD_E_INVALID_ARG, gpu_engine_create(model, &eo, &g, &err));
    CHECK_STR_CONTAINS(err.msg, "fc3");
    eo.linear_fp8_gemms = "qkv,fc2";
    CHECK_EQ_INT(VITD_E_INVALID_ARG, gpu_engine_create(model, &eo, &g, &err));
    CHECK_STR_CONTAINS(err.msg, "fc2 needs fc1");
    printf("  bad gemm set: %s\n", err.msg);
    eo.linear_dtype = "bf16";
    eo.linear_fp8_gemms = NULL;
    CHECK_OK(gpu_engine_create(model, &eo, &g, &err), &err);
    if (g) CHECK_EQ_INT(VITD_E_UNSUPPORTED, gpu_engine_set_linear(g, "fp8", &err));
    gpu_engine_free(g);
    vitd_model_free(model);
}

int main(void) {
    struct cudaDeviceProp prop;
    gpu_require_sm90(&prop);
    vitd_log_set(log_hook, NULL);
    if (!mkdtemp(tmpdir)) SKIP("mkdtemp failed");
    gpu_attn_features f;
    vitd_err err = {0};
    CHECK_OK(gpu_attn_query(0, &f, &err), &err);
    char why[160];
    g_fp8_attn = attn_fp8_supported(f.cudnn_version, f.cc_major, f.cc_minor, why, sizeof why);
    printf("device: %s, cuDNN %d, FP8 attention %s%s\n", prop.name, f.cudnn_version, g_fp8_attn ? "yes" : "no: ",
           g_fp8_attn ? "" : why);
    const char *photos[] = {"chelsea.png", "rocket.jpg", "photo_q90_420.jpg", "photo_q95_444.jpg"};
    char tiny_buf[700], out_buf[700];
    const char *tiny = write_demo(tmpdir, "tiny", tiny_buf, sizeof tiny_buf);
    CHECK(tiny != NULL);
    const char *skip_tiny = getenv("VITD_TEST_SKIP_TINY");
    if (tiny && (!skip_tiny || strcmp(skip_tiny, "1"))) {
        check_accuracy(tiny, "tiny", photos, 4);
        check_graphs(tiny, "tiny", photos, 3);
        check_static(tiny, "tiny", photos, 4);
        const char *tiny_o = write_demo_outliers(tmpdir, "tiny", 1000, out_buf, sizeof out_buf);
        if (tiny_o) check_accuracy(tiny_o, "tiny_outliers1000", photos, 4);
    }
    const char *skip8 = getenv("VITD_TEST_SKIP_8B");
    if (!skip8 || strcmp(skip8, "1")) {
        const char *dir8 = getenv("VITD_TEST_MODEL_8B");
        char buf8[700], buf8o[700];
        if (!dir8 || !*dir8) dir8 = write_demo(tmpdir, "8b", buf8, sizeof buf8);
        CHECK(dir8 != NULL);
        if (dir8) {
            check_accuracy(dir8, "8b", photos, 4);
            check_graphs(dir8, "8b", photos, 2);
            check_static(dir8, "8b", photos, 4);
            check_auto(dir8);
        }
        const char *o8 = write_demo_outliers(tmpdir, "8b", 1000, buf8o, sizeof buf8o);
        if (o8) check_accuracy(o8, "8b_outliers1000", photos, 3);
    }
    if (check_rm_tree(tmpdir) != 0) printf("(could not remove %s)\n", tmpdir);
    return check_done("test_lin8_engine");
}
#endif
