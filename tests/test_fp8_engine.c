/* labels: gpu */
/* test_fp8_engine.c — FP8 attention in the whole GPU engine (encoder/gpu/gpu_engine.c, attn_dtype fp8 | auto) on real
 * photographs (tests/fixtures/images), decoded and preprocessed by vitd.
 *
 * Checks:
 *  - accuracy, 8B preset (real shapes, random weights) and tiny: per image and output (embeddings and each
 *    deepstack feature), FP8 (dynamic scales) vs the BF16 engine and vs the CPU float32 reference, cosine
 *    >= 0.995 (max abs, rel-L2 reported); the first FP8 batch (scales from its own amax, pre-pass) and the same
 *    batch again (scales from the one-step history) give identical output;
 *  - static scales: amax recorded by the calibration mode, saved, loaded as fp8_scales, same cosine bound; an
 *    invalid file fails at creation naming the layer;
 *  - `vitd calibrate` (the real program) on a directory and a file writes a file that loads as --fp8-scales and
 *    `vitd encode --attn-dtype fp8 --fp8-scales` runs with it; the file carries the linear layers' scales too and
 *    `vitd encode --linear-dtype fp8 --fp8-scales` runs with them;
 *  - auto-save: two engines in one process, histories 3 and 5, margins 1.5 and 2, two files: each written once,
 *    exactly when its history fills, parses, and carries its own margin (same batches: ratio 2/1.5);
 *  - auto (8B, 16384 tokens): the measured table's decisions follow the timings (FP8 only where >= 2% faster),
 *    and batches of a small and a large image take the table's path (reported);
 *  - where FP8 cannot run (e.g. run with the system cuDNN 9.14): attn_dtype fp8 is a start-up error naming the
 *    reason, auto creates a BF16 engine with the reason as fallback, and forcing fp8 is refused.
 * Models: written with demo_model_write into /tmp, or the 8B one from $VITD_TEST_MODEL_8B; VITD_TEST_SKIP_8B=1 runs
 * the tiny preset only. Without CUDA, a device, or compute capability >= 9.0 it exits 77.
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
#include <sys/stat.h>
#include <unistd.h>

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

#define MIN_COS 0.995

static char tmpdir[] = "/tmp/vitd_test_fp8_engine_XXXXXX";

#include "engine_check.h"
#include "gpu_check.h"

static vitd_status gpu_run(void *impl, const vitd_batch *b, vitd_err *err) { return gpu_engine_run(impl, b, err); }

static gpu_engine *engine(const vitd_model *m, const char *attn, size_t tokens, const char *scales, int calib,
                          vitd_err *err) {
    vitd_encoder_opts eo = vitd_encoder_opts_default();
    eo.attn_dtype = attn;
    eo.max_batch_tokens = tokens;
    eo.fp8_scales = scales;
    eo.fp8_calibrate = calib;
    gpu_engine *g = NULL;
    CHECK_OK(gpu_engine_create(m, &eo, &g, err), err);
    return g;
}

/* ---- accuracy: FP8 vs BF16 vs CPU; static scales from the calibration mode ---- */

static void check_accuracy(const char *dir, const char *label, const char *const *files, int n_files) {
    vitd_err err = {0};
    images im;
    printf("%s accuracy: %s\n", label, dir);
    vitd_model *model = load_model_images(dir, files, n_files, &im);
    if (!model) return;
    const vitd_vision_config *vc = vitd_model_config(model);
    const int D = vc->out_hidden_size, nds = vc->n_deepstack, L = vc->depth;
    const size_t N = im.off[im.n], nm = N / 4;
    printf("  %d images, %zu patches\n", im.n, N);
    outputs ref, bf, f8, f8b, f8a, st8;
    outputs_alloc(&ref, nm, D, nds);
    outputs_alloc(&bf, nm, D, nds);
    outputs_alloc(&f8, nm, D, nds);
    outputs_alloc(&f8b, nm, D, nds);
    outputs_alloc(&f8a, nm, D, nds);
    outputs_alloc(&st8, nm, D, nds);
    cpu_reference(model, &im, D, nds, &ref);

    gpu_engine *gb = engine(model, "bf16", N, NULL, 1, &err); /* BF16 + calibration amax */
    gpu_engine *g8 = engine(model, "fp8", N, NULL, 0, &err);
    if (gb && g8) {
        CHECK(!strcmp(gpu_engine_attn_dtype(g8), "fp8") && !strcmp(gpu_engine_attn_dtype(gb), "bf16"));
        CHECK_OK(run_subset(gpu_run, gb, &im, 0, im.n, D, nds, &bf, &err), &err);
        CHECK(!strcmp(gpu_engine_last_attn(gb), "bf16"));
        CHECK_OK(run_subset(gpu_run, g8, &im, 0, im.n, D, nds, &f8, &err), &err);
        CHECK(!strcmp(gpu_engine_last_attn(g8), "fp8"));
        CHECK_EQ_INT(1, (int)gpu_engine_fp8_steps(g8));
        /* the first batch (pre-pass scales) and the same batch again (history of one step) agree bit for bit */
        CHECK_OK(run_subset(gpu_run, g8, &im, 0, im.n, D, nds, &f8b, &err), &err);
        CHECK_MSG(!memcmp(f8.emb, f8b.emb, nm * D * sizeof(float)),
                  "first FP8 batch and the same batch from the history differ");
        for (int i = 0; i < im.n; i++) CHECK_OK(run_subset(gpu_run, g8, &im, i, 1, D, nds, &f8a, &err), &err);
        double w1 = compare("fp8 vs bf16", &im, &f8, &bf, D, nds, MIN_COS);
        double w2 = compare("fp8 vs cpu", &im, &f8, &ref, D, nds, MIN_COS);
        double w3 = compare("bf16 vs cpu", &im, &bf, &ref, D, nds, 0.999);
        double w4 = compare("fp8 alone vs cpu", &im, &f8a, &ref, D, nds, MIN_COS);
        printf("  %s worst cosine: fp8 vs bf16 %.6f, fp8 vs cpu %.6f, bf16 vs cpu %.6f, fp8 alone vs cpu %.6f\n",
               label, w1, w2, w3, w4);

        /* static scales from the calibration amax of the BF16 engine (margin 1.5) */
        float *amax = xcalloc((size_t)L * 3, sizeof *amax);
        fp8_qkv *sc = xcalloc((size_t)L, sizeof *sc);
        CHECK_OK(gpu_engine_fp8_amax(gb, amax, &err), &err);
        int ok = 1;
        for (int l = 0; l < L; l++) {
            for (int t = 0; t < 3; t++) ok &= amax[l * 3 + t] > 0 && isfinite(amax[l * 3 + t]);
            sc[l] = (fp8_qkv){amax[l * 3] / 448, amax[l * 3 + 1] / 448, amax[l * 3 + 2] / 448};
        }
        CHECK_MSG(ok, "calibration amax not positive and finite");
        printf("  calibration amax layer 0: q %.3f k %.3f v %.3f; layer %d: q %.3f k %.3f v %.3f\n", amax[0], amax[1],
               amax[2], L - 1, amax[(L - 1) * 3], amax[(L - 1) * 3 + 1], amax[(L - 1) * 3 + 2]);
        char path[700];
        snprintf(path, sizeof path, "%s/%s_static.json", tmpdir, label);
        CHECK_OK(fp8_scales_save(path, sc, L, 1.5, "test_fp8_engine", &err), &err);
        gpu_engine *gs = engine(model, "fp8", N, path, 0, &err);
        if (gs) {
            CHECK_OK(run_subset(gpu_run, gs, &im, 0, im.n, D, nds, &st8, &err), &err);
            double w5 = compare("fp8 static vs bf16", &im, &st8, &bf, D, nds, MIN_COS);
            printf("  %s worst cosine: fp8 static (calibrated, margin 1.5) vs bf16 %.6f\n", label, w5);
        }
        gpu_engine_free(gs);
        /* an invalid file: the last layer missing */
        fp8_scales_save(path, sc, L - 1, 1.5, "test_fp8_engine: one layer short", &err);
        vitd_encoder_opts eo = vitd_encoder_opts_default();
        eo.attn_dtype = "fp8";
        eo.max_batch_tokens = N;
        eo.fp8_scales = path;
        gpu_engine *bad = NULL;
        CHECK_EQ_INT(VITD_E_INVALID_ARG, gpu_engine_create(model, &eo, &bad, &err));
        char want[64];
        snprintf(want, sizeof want, "blocks.%d.attn", L - 1);
        CHECK_STR_CONTAINS(err.msg, want);
        printf("  invalid scales file: %s\n", err.msg);
        gpu_engine_free(bad);
        free(amax);
        free(sc);
        /* the public API: attn_dtype fp8 on backend gpu, per-path counts */
        vitd_encoder *enc = NULL;
        eo.backend = "gpu";
        eo.fp8_scales = NULL;
        CHECK_OK(vitd_encoder_create(model, &eo, &enc, &err), &err);
        if (enc) {
            float *emb = malloc(nm * D * sizeof(float));
            vitd_batch b = {.n_images = im.n, .grids = im.grids, .pixel_values = im.pv, .embeddings = emb};
            CHECK_OK(vitd_encoder_run(enc, &b, &err), &err);
            CHECK_OK(vitd_encoder_run(enc, &b, &err), &err);
            vitd_attn_info ai;
            vitd_encoder_attn_info(enc, &ai);
            CHECK(!strcmp(ai.mode, "fp8") && !strcmp(ai.last, "fp8") && !strcmp(ai.fallback, ""));
            CHECK(ai.batches_fp8 == 2 && ai.batches_bf16 == 0 && ai.batches_fp32 == 0);
            free(emb);
        }
        vitd_encoder_free(enc);
    }
    gpu_engine_free(gb);
    gpu_engine_free(g8);
    outputs_free(&ref);
    outputs_free(&bf);
    outputs_free(&f8);
    outputs_free(&f8b);
    outputs_free(&f8a);
    outputs_free(&st8);
    free(im.pv);
    vitd_model_free(model);
}

/* ---- auto-save: two engines, two files ---- */

static int file_exists(const char *p) { return access(p, F_OK) == 0; }

static void check_autosave(const char *dir) {
    vitd_err err = {0};
    vitd_model *model = NULL;
    images im;
    printf("auto-save: two engines\n");
    CHECK_OK(vitd_model_load(dir, &model, &err), &err);
    if (!model) return;
    const vitd_vision_config *vc = vitd_model_config(model);
    const int D = vc->out_hidden_size, nds = vc->n_deepstack, L = vc->depth;
    const char *files[] = {"chelsea.png", "rocket.jpg"};
    if (load_images(&im, files, 2, vitd_model_preproc(model))) {
        CHECK(0);
        vitd_model_free(model);
        return;
    }
    char pa[700], pb[700];
    snprintf(pa, sizeof pa, "%s/save_a.json", tmpdir);
    snprintf(pb, sizeof pb, "%s/save_b.json", tmpdir);
    const int hist[2] = {3, 5};
    const double margin[2] = {1.5, 2.0};
    const char *paths[2] = {pa, pb};
    gpu_engine *g[2] = {NULL, NULL};
    for (int e = 0; e < 2; e++) {
        vitd_encoder_opts eo = vitd_encoder_opts_default();
        eo.attn_dtype = "fp8";
        eo.max_batch_tokens = im.off[2];
        eo.fp8_history = hist[e];
        eo.fp8_save_scales = paths[e];
        eo.fp8_save_margin = margin[e];
        CHECK_OK(gpu_engine_create(model, &eo, &g[e], &err), &err);
    }
    outputs o;
    outputs_alloc(&o, im.off[2] / 4, D, nds);
    int written_at[2] = {0, 0}, rewrites[2] = {0, 0};
    fp8_qkv *sc[2] = {xcalloc((size_t)L, sizeof(fp8_qkv)), xcalloc((size_t)L, sizeof(fp8_qkv))};
    for (int step = 1; step <= 8 && g[0] && g[1]; step++) {
        for (int e = 0; e < 2; e++) {
            CHECK_OK(run_subset(gpu_run, g[e], &im, 0, 2, D, nds, &o, &err), &err);
            if (file_exists(paths[e])) {
                if (written_at[e]) rewrites[e]++;
                else {
                    written_at[e] = step;
                    CHECK_OK(fp8_scales_load(paths[e], L, sc[e], &err), &err);
                }
                unlink(paths[e]); /* a second write would bring it back */
            }
        }
    }
    printf("  engine A (history 3) wrote at batch %d, engine B (history 5) at batch %d; rewrites %d, %d\n",
           written_at[0], written_at[1], rewrites[0], rewrites[1]);
    CHECK_EQ_INT(3, written_at[0]);
    CHECK_EQ_INT(5, written_at[1]);
    CHECK_EQ_INT(0, rewrites[0] + rewrites[1]);
    CHECK(gpu_engine_fp8_saved(g[0]) && gpu_engine_fp8_saved(g[1]));
    /* same batches, so the same amax: B / A = 2 / 1.5 per scale */
    double worst = 0;
    for (int l = 0; l < L; l++) {
        const float a[3] = {sc[0][l].q, sc[0][l].k, sc[0][l].v}, b[3] = {sc[1][l].q, sc[1][l].k, sc[1][l].v};
        for (int t = 0; t < 3; t++) {
            double r = a[t] > 0 ? fabs(b[t] / a[t] / (2.0 / 1.5) - 1) : 1;
            if (r > worst) worst = r;
        }
    }
    printf("  scales B / A vs 2 / 1.5: worst relative difference %.2e; layer 0 q %.5f (A)\n", worst, sc[0][0].q);
    CHECK_MSG(worst < 1e-5, "saved scales do not follow each engine's margin (%.2e)", worst);
    free(sc[0]);
    free(sc[1]);
    outputs_free(&o);
    gpu_engine_free(g[0]);
    gpu_engine_free(g[1]);
    free(im.pv);
    vitd_model_free(model);
}

/* ---- vitd calibrate, then vitd encode with its file ---- */

static void check_calibrate_cli(const char *dir, int n_layers) {
    printf("vitd calibrate\n");
    char imgdir[700], a[4096], e[8192], out[700];
    snprintf(imgdir, sizeof imgdir, "%s/calib_images", tmpdir);
    snprintf(out, sizeof out, "%s/calibrated.json", tmpdir);
    mkdir(imgdir, 0755);
    const char *in_dir[] = {"chelsea.png", "photo_q90_420.jpg", "not_an_image.txt"};
    for (int i = 0; i < 3; i++) {
        char src[700], dst[800];
        snprintf(src, sizeof src, "%s/tests/fixtures/images/%s", VITD_SOURCE_DIR, in_dir[i]);
        snprintf(dst, sizeof dst, "%s/%s", imgdir, in_dir[i]);
        CHECK(symlink(src, dst) == 0);
    }
    snprintf(a, sizeof a, "calibrate --model %s --out %s --margin 1.5 %s %s/tests/fixtures/images/rocket.jpg", dir,
             out, imgdir, VITD_SOURCE_DIR);
    int rc = check_run_vitd(tmpdir, a, NULL, e, sizeof e);
    printf("  %s", e);
    CHECK_EQ_INT(0, rc);
    CHECK_STR_CONTAINS(e, "3 images");
    CHECK_STR_CONTAINS(e, "skipping");
    fp8_qkv *sc = xcalloc((size_t)n_layers, sizeof *sc);
    fp8_lin *lsc = xcalloc((size_t)n_layers, sizeof *lsc);
    vitd_err err = {0};
    int found = 0;
    CHECK_OK(fp8_scales_load(out, n_layers, sc, &err), &err);
    /* the linear layers' scales come with them (issue 14) and drive `--linear-dtype fp8` */
    CHECK_STR_CONTAINS(e, "with the linear layers' scales");
    CHECK_OK(fp8_scales_load_linear(out, n_layers, lsc, &found, &err), &err);
    CHECK(found == 1 && lsc[0].qkv > 0 && lsc[n_layers - 1].fc2 > 0);
    free(sc);
    free(lsc);
    snprintf(a, sizeof a, "encode --model %s --backend gpu --linear-dtype fp8 --fp8-scales %s "
             "%s/tests/fixtures/images/chelsea.png --format json", dir, out, VITD_SOURCE_DIR);
    CHECK_EQ_INT(0, check_run_vitd(tmpdir, a, NULL, e, sizeof e));
    snprintf(a, sizeof a, "encode --model %s --backend gpu --attn-dtype fp8 --fp8-scales %s "
             "%s/tests/fixtures/images/chelsea.png --format json", dir, out, VITD_SOURCE_DIR);
    rc = check_run_vitd(tmpdir, a, NULL, e, sizeof e);
    CHECK_EQ_INT(0, rc);
    CHECK_STR_CONTAINS(e, "attention fp8");
    const char *last = strstr(e, "vitd encode:");
    printf("  %s", last ? last : e);
    /* a file: that is not an image is an error (in a directory it is skipped) */
    snprintf(a, sizeof a, "calibrate --model %s --out %s %s/not_an_image.txt", dir, out, imgdir);
    CHECK_EQ_INT(1, check_run_vitd(tmpdir, a, NULL, e, sizeof e));
}

/* ---- auto routing ---- */

static void check_auto(const char *dir) {
    vitd_err err = {0};
    vitd_model *model = NULL;
    printf("auto routing: %s\n", dir);
    CHECK_OK(vitd_model_load(dir, &model, &err), &err);
    if (!model) return;
    const vitd_vision_config *vc = vitd_model_config(model);
    const int D = vc->out_hidden_size;
    gpu_engine *g = engine(model, "auto", 16384, NULL, 0, &err);
    if (g) {
        const attn_route_entry *t = NULL;
        int n = gpu_engine_route_table(g, &t);
        CHECK(n >= 7);
        int any = 0;
        for (int i = 0; i < n; i++) {
            printf("  %2dx%-5d bf16 %8.4f ms fp8 %8.4f ms  %.2fx -> %s\n", t[i].n_images, t[i].max_len,
                   t[i].ms_bf16, t[i].ms_fp8, t[i].ms_bf16 / t[i].ms_fp8, t[i].fp8 ? "fp8" : "bf16");
            CHECK(t[i].ms_bf16 > 0 && t[i].ms_fp8 > 0);
            if (t[i].fp8) CHECK_MSG(t[i].ms_fp8 < 0.98 * t[i].ms_bf16, "%dx%d routed fp8 but not faster",
                                    t[i].n_images, t[i].max_len);
            any |= t[i].fp8;
        }
        CHECK(!strcmp(gpu_engine_attn_dtype(g), any ? "auto" : "bf16"));
        /* a small image and a large one: each takes its table decision */
        const vitd_grid shapes[2] = {{1, 28, 28}, {1, 128, 128}};
        float *pv = malloc(16384 * 1536 * sizeof(float)), *emb = malloc(4096 * (size_t)D * sizeof(float));
        for (size_t i = 0; i < (size_t)16384 * 1536; i++) pv[i] = (float)((i * 2654435761u) % 2001) / 1000.f - 1.f;
        for (int s = 0; s < 2; s++) {
            vitd_batch b = {.n_images = 1, .grids = &shapes[s], .pixel_values = pv, .embeddings = emb};
            CHECK_OK(gpu_engine_run(g, &b, &err), &err);
            const int len = shapes[s].h * shapes[s].w, want = attn_route_fp8(t, n, 1, len);
            printf("  one image of %d patches: table says %s, ran %s\n", len, want ? "fp8" : "bf16",
                   gpu_engine_last_attn(g));
            CHECK(!strcmp(gpu_engine_last_attn(g), want ? "fp8" : "bf16"));
            cmp_stats st = cmp_f32(emb, emb, (size_t)len / 4 * D, 0, 0);
            CHECK_MSG(st.n_nan == 0, "auto output has %zu NaN", st.n_nan);
        }
        /* forcing a path (benchmarks) and back */
        CHECK_OK(gpu_engine_set_attn(g, "fp8", &err), &err);
        vitd_batch b = {.n_images = 1, .grids = &shapes[0], .pixel_values = pv, .embeddings = emb};
        CHECK_OK(gpu_engine_run(g, &b, &err), &err);
        CHECK(!strcmp(gpu_engine_last_attn(g), "fp8"));
        CHECK_EQ_INT(VITD_E_INVALID_ARG, gpu_engine_set_attn(g, "fp16", &err));
        CHECK_OK(gpu_engine_set_attn(g, "auto", &err), &err);

        /* Deferred plan builds (the server's mode): a batch whose FP8 plan is missing runs BF16 at once,
         * gpu_engine_idle builds the plan, and the same batch then runs FP8. The shape: one image more than a
         * measured FP8 shape (same decision, a plan the start-up timing did not build). */
        int nb = 0, len = 0;
        for (int i = 0; i < n && !nb; i++)
            if (t[i].fp8 && t[i].n_images >= 2 && t[i].max_len % 64 == 0 &&
                (size_t)(t[i].n_images + 1) * t[i].max_len <= 16384 && attn_route_fp8(t, n, t[i].n_images + 1,
                                                                                      t[i].max_len)) {
                nb = t[i].n_images + 1;
                len = t[i].max_len;
            }
        if (!nb) {
            printf("  deferred builds: no multi-image shape routes to FP8 here; not checked\n");
        } else {
            vitd_encoder_opts eo = vitd_encoder_opts_default();
            eo.attn_dtype = "auto";
            eo.max_batch_tokens = 16384;
            eo.defer_plan_builds = 1;
            gpu_engine *gd = NULL;
            CHECK_OK(gpu_engine_create(model, &eo, &gd, &err), &err);
            if (gd) {
                vitd_grid grids[16];
                for (int i = 0; i < nb; i++) grids[i] = (vitd_grid){1, 16, len / 16};
                vitd_batch bd = {.n_images = nb, .grids = grids, .pixel_values = pv, .embeddings = emb};
                CHECK_OK(gpu_engine_run(gd, &bd, &err), &err);
                const char *first = gpu_engine_last_attn(gd);
                CHECK(!strcmp(first, "bf16"));
                int left = -1, rounds = 0;
                while ((left = gpu_engine_idle(gd)) > 0 && ++rounds < 10) {
                }
                CHECK_EQ_INT(0, left);
                CHECK_OK(gpu_engine_run(gd, &bd, &err), &err);
                printf("  deferred builds: %d x %d patches ran %s, then %s after %d idle build(s)\n", nb, len, first,
                       gpu_engine_last_attn(gd), rounds + 1);
                CHECK(!strcmp(gpu_engine_last_attn(gd), "fp8"));
                CHECK_EQ_INT(0, gpu_engine_idle(gd));
                cmp_stats st = cmp_f32(emb, emb, (size_t)nb * len / 4 * D, 0, 0);
                CHECK_MSG(st.n_nan == 0, "deferred FP8 output has %zu NaN", st.n_nan);
            }
            gpu_engine_free(gd);
        }
        /* The saved routing table: the first engine measures and writes it, the second reads the same timings
         * (to 15 significant digits: cJSON prints the shortest form that reads back within a few ulps) and makes
         * the same decisions instead of measuring. */
        char rpath[700];
        snprintf(rpath, sizeof rpath, "%s/route.json", tmpdir);
        vitd_encoder_opts ro = vitd_encoder_opts_default();
        ro.attn_dtype = "auto";
        ro.max_batch_tokens = 16384;
        ro.attn_route_file = rpath;
        gpu_engine *r1 = NULL, *r2 = NULL;
        double tr0 = vitd_now();
        CHECK_OK(gpu_engine_create(model, &ro, &r1, &err), &err);
        double tr1 = vitd_now();
        CHECK_MSG(access(rpath, R_OK) == 0, "attn_route_file %s was not written", rpath);
        CHECK_OK(gpu_engine_create(model, &ro, &r2, &err), &err);
        double tr2 = vitd_now();
        if (r1 && r2) {
            const attn_route_entry *t1 = NULL, *t2 = NULL;
            const int n1 = gpu_engine_route_table(r1, &t1), n2 = gpu_engine_route_table(r2, &t2);
            CHECK_EQ_INT(n1, n2);
            int same = n1 == n2 && n1 > 0;
            for (int i = 0; same && i < n1; i++)
                same = t1[i].n_images == t2[i].n_images && t1[i].max_len == t2[i].max_len &&
                       fabs(t1[i].ms_bf16 - t2[i].ms_bf16) <= 1e-12 * t1[i].ms_bf16 &&
                       fabs(t1[i].ms_fp8 - t2[i].ms_fp8) <= 1e-12 * t1[i].ms_fp8 && t1[i].fp8 == t2[i].fp8;
            CHECK_MSG(same, "the engine that read %s has another routing table", rpath);
            printf("  attn_route_file: engine that measured and wrote it %.1f s, engine that read it %.1f s\n",
                   tr1 - tr0, tr2 - tr1);
        }
        gpu_engine_free(r1);
        gpu_engine_free(r2);
        free(pv);
        free(emb);
    }
    gpu_engine_free(g);
    vitd_model_free(model);
}

/* ---- where FP8 cannot run ---- */

static void check_unsupported(const char *dir, const char *why) {
    vitd_err err = {0};
    vitd_model *model = NULL;
    printf("FP8 unavailable here (%s): start-up error and fallback\n", why);
    CHECK_OK(vitd_model_load(dir, &model, &err), &err);
    if (!model) return;
    vitd_encoder_opts eo = vitd_encoder_opts_default();
    eo.max_batch_tokens = 4096;
    eo.attn_dtype = "fp8";
    gpu_engine *g = NULL;
    CHECK_EQ_INT(VITD_E_UNSUPPORTED, gpu_engine_create(model, &eo, &g, &err));
    CHECK_STR_CONTAINS(err.msg, "attn_dtype fp8");
    CHECK_STR_CONTAINS(err.msg, why);
    printf("  attn_dtype fp8: %s\n", err.msg);
    vitd_encoder *enc = NULL;
    eo.backend = "auto"; /* not a silent CPU fallback either */
    CHECK_EQ_INT(VITD_E_UNSUPPORTED, vitd_encoder_create(model, &eo, &enc, &err));
    eo.attn_dtype = "auto";
    CHECK_OK(gpu_engine_create(model, &eo, &g, &err), &err);
    if (g) {
        CHECK(!strcmp(gpu_engine_attn_dtype(g), "bf16"));
        CHECK_STR_CONTAINS(gpu_engine_fp8_fallback(g), why);
        CHECK_EQ_INT(VITD_E_UNSUPPORTED, gpu_engine_set_attn(g, "fp8", &err));
    }
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
    const int fp8 = attn_fp8_supported(f.cudnn_version, f.cc_major, f.cc_minor, why, sizeof why);
    printf("device: %s, cuDNN %d, FP8 attention %s%s\n", prop.name, f.cudnn_version, fp8 ? "yes" : "no: ", why);

    char tiny_buf[700];
    const char *tiny = write_demo(tmpdir, "tiny", tiny_buf, sizeof tiny_buf);
    CHECK(tiny != NULL);
    if (tiny && !fp8) {
        /* "cuDNN 9.14.0 < 9.17.1 ..." or "compute capability ..." */
        check_unsupported(tiny, strstr(why, "cuDNN") ? "9.17.1" : "compute capability");
    } else if (tiny) {
        const char *photos[] = {"chelsea.png", "rocket.jpg", "photo_q90_420.jpg", "photo_q95_444.jpg",
                                "rgb8_4x600.png"};
        check_accuracy(tiny, "tiny", photos, 5);
        check_autosave(tiny);
        check_calibrate_cli(tiny, 4);
        const char *skip8 = getenv("VITD_TEST_SKIP_8B");
        if (!skip8 || strcmp(skip8, "1")) {
            const char *dir8 = getenv("VITD_TEST_MODEL_8B");
            char buf8[700];
            if (!dir8 || !*dir8) dir8 = write_demo(tmpdir, "8b", buf8, sizeof buf8);
            CHECK(dir8 != NULL);
            if (dir8) {
                check_accuracy(dir8, "8b", photos, 4);
                check_auto(dir8);
            }
        }
    }
    if (check_rm_tree(tmpdir) != 0) printf("(could not remove %s)\n", tmpdir);
    return check_done("test_fp8_engine");
}
#endif
