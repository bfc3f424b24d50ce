/* bench_encoder.c — images/s and latency of the GPU engine (encoder/gpu/gpu_engine.c) on the shapes of the issue:
 * 448x448 in batches of 16, 1024x1024 in batches of 4, 2048x2048 alone, and a mixed batch; on the 8B tower (the
 * "8b" demo preset: real shapes, random weights) unless --model names another checkpoint; plus one 448x448 image
 * alone (latency). Each case runs on every attention path of --attn (default bf16,fp8,auto) in the same process,
 * one engine created with attn_dtype auto (so its start-up routing table is logged) and the path forced per case
 * (gpu_engine_set_attn; fp8 = dynamic scales, history 16); then one line per case with fp8 / bf16 and auto / bf16.
 *
 * Method: pixel values are seeded uniform [-1, 1] floats in host memory (never zeros), as a server hands them over;
 * one engine sized for the largest case; per case --warmup runs, then --iters runs each timed with the host clock
 * around gpu_engine_run, which returns after the outputs are float32 in host memory (so copies in and out and the
 * host conversions are included). Median and p10/p90 reported; img/s = images / median. TFLOP/s counts
 * S*(L*(2(4d^2+2dI) + 4*S*d) + 2*K*d) per image of S patches plus the mergers' GEMMs (DEVICE.md's formula).
 * Then the same case as a stream (what a loaded server does): --iters batches through gpu_engine_submit /
 * gpu_engine_wait with two in flight, in the per-image batch form (each image's own input and output pointers),
 * timed from the first submit to the last wait: ms per batch = wall / iters. Host conversions of one batch then
 * overlap the GPU work of the other, so this is the engine's throughput; the synchronous figure is its latency.
 * --profile then runs each case once more with per-operation CUDA events and prints where the time goes.
 * One parseable line per result:
 *   encoder case=<name> attn=<path> images=<n> tokens=<T> ms=<median> p10_ms=.. p90_ms=.. img_s=<n/median>
 *           tflops=<eff> ran=<path of the last batch>
 *   stage case=<name> attn=<path> stage=<stage> ms=<sum> calls=<n> share=<% of wall>
 *   stream case=<name> attn=<path> images=<n> batches=<iters> ms_per_batch=<wall/iters> img_s=.. tflops=..
 *   ratio case=<name> fp8_over_bf16=<bf16 ms / fp8 ms> auto_over_bf16=<bf16 ms / auto ms> auto_ran=<path>
 *         (synchronous medians; stream_fp8_over_bf16 and stream_auto_over_bf16 the same for the streams)
 * Linear layers (issue 14): each attention path runs once per linear path of --linear (default bf16,fp8; the
 * engine is created with linear_dtype fp8, or auto when the list names auto, and the path forced per case with
 * gpu_engine_set_linear; --linear-gemms picks the FP8 GEMMs), so the lines carry attn=<path> linear=<path>, and
 *   linratio case=<name> attn=<path> fp8_over_bf16=<bf16-linear ms / fp8-linear ms> stream_fp8_over_bf16=..
 * CUDA graphs are on as in the engine (a shape seen twice is captured): every timed run is a replay; --no-graphs
 * turns them off for the comparison. The linear auto table and the graph counters are printed too, and what the
 * cuBLASLt algorithm tuning measured (gemm_tune line: shapes timed, how many changed, the heuristic's first choices'
 * summed time against the chosen ones'); --no-gemm-tune keeps the heuristic's first choices. --precise-accum runs
 * the FP8 GEMMs with cuBLASLt's periodic float32 promotion instead of the default fast accumulation.
 * --bf16-out: every run (synchronous ones too) in the per-image form with bf16 outputs (vitd_batch.image_bf16),
 * which is what the server asks for (output_dtype auto): no float32 conversion on the host.
 * --attn-short-max N: BF16 attention of batches of at most N patches on vitd's own kernel (attn_short_max; 0 =
 * always cuDNN, for the comparison; default: measured by the engine at start-up, logged).
 * --cuda-profiler-range: after each case's timed runs, one more run between cudaProfilerStart and cudaProfilerStop,
 * so that a profiler started with the range off (`ncu --profile-from-start off`) sees one forward pass of each case
 * and nothing of the start-up (tuning, the attention measurements).
 * Usage: bench_encoder [--model DIR] [--iters N] [--warmup N] [--cases a,b] [--attn bf16,fp8,auto] [--profile]
 *                      [--max-batch-tokens N] [--linear bf16,fp8,auto] [--linear-gemms qkv,proj,fc1,fc2]
 *                      [--no-graphs] [--no-gemm-tune] [--precise-accum] [--bf16-out] [--attn-short-max N]
 *                      [--cuda-profiler-range]
 * Without --model it writes the 8b demo checkpoint to /tmp/vitd_bench_8b (kept for later runs).
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cuda_profiler_api.h>
#include <cuda_runtime.h>

#include "demo_model.h"
#include "gpu_engine.h"
#include "util.h"

#define MAX_IMAGES 64

static int profiler_range; /* --cuda-profiler-range */

typedef struct {
    const char *name;
    int n;
    vitd_grid grids[MAX_IMAGES];
} bcase;

static void log_hook(vitd_log_level level, const char *msg, void *user) {
    (void)user;
    if (level >= VITD_LOG_INFO) fprintf(stderr, "  [log] %s\n", msg);
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void make_cases(bcase *c, int *n) {
    int k = 0;
    c[k] = (bcase){.name = "448x448x16", .n = 16};
    for (int i = 0; i < 16; i++) c[k].grids[i] = (vitd_grid){1, 28, 28};
    k++;
    c[k] = (bcase){.name = "448x448x1", .n = 1};
    c[k].grids[0] = (vitd_grid){1, 28, 28};
    k++;
    c[k] = (bcase){.name = "1024x1024x4", .n = 4};
    for (int i = 0; i < 4; i++) c[k].grids[i] = (vitd_grid){1, 64, 64};
    k++;
    c[k] = (bcase){.name = "2048x2048x1", .n = 1};
    c[k].grids[0] = (vitd_grid){1, 128, 128};
    k++;
    /* mixed: 1024x1024, two 640x480, four 448x448, two 256x256 = 10144 patches */
    c[k] = (bcase){.name = "mixed9", .n = 9};
    c[k].grids[0] = (vitd_grid){1, 64, 64};
    c[k].grids[1] = c[k].grids[2] = (vitd_grid){1, 30, 40};
    for (int i = 3; i < 7; i++) c[k].grids[i] = (vitd_grid){1, 28, 28};
    c[k].grids[7] = c[k].grids[8] = (vitd_grid){1, 16, 16};
    k++;
    *n = k;
}

static double case_flops(const bcase *c, const vitd_vision_config *v) {
    const double d = v->hidden_size, I = v->intermediate_size, L = v->depth, D = v->out_hidden_size;
    const double K = (double)v->in_channels * v->temporal_patch_size * v->patch_size * v->patch_size;
    const double gd = 4 * d;
    double f = 0;
    for (int i = 0; i < c->n; i++) {
        double S = (double)c->grids[i].t * c->grids[i].h * c->grids[i].w;
        f += S * (L * (2 * (4 * d * d + 2 * d * I) + 4 * S * d) + 2 * K * d);
        f += S / 4 * (1 + v->n_deepstack) * 2 * (gd * gd + gd * D);
    }
    return f;
}

/* Runs one case on the engine's current attention path: warm-up, `iters` timed runs (host clock around
 * gpu_engine_run), one `encoder` line, and with profile the per-stage lines. Returns the median ms, -1 on error
 * (printed). ms: scratch [iters]. */
static double time_case(gpu_engine *ge, const bcase *bc, const vitd_vision_config *vc, const vitd_batch *b,
                        const char *path, int iters, int warmup, int profile, double *ms) {
    vitd_err err = {0};
    int ok = 1;
    for (int w = 0; w < warmup && ok; w++) ok = gpu_engine_run(ge, b, &err) == VITD_OK;
    for (int it = 0; it < iters && ok; it++) {
        double a = vitd_now();
        ok = gpu_engine_run(ge, b, &err) == VITD_OK;
        ms[it] = (vitd_now() - a) * 1e3;
    }
    if (!ok) {
        fprintf(stderr, "case %s attn %s: %s\n", bc->name, path, err.msg);
        return -1;
    }
    qsort(ms, (size_t)iters, sizeof *ms, cmp_double);
    int i90 = iters * 9 / 10;
    if (i90 >= iters) i90 = iters - 1;
    const double med = ms[iters / 2], p10 = ms[iters / 10], p90 = ms[i90];
    const size_t T = vitd_grids_patches(bc->grids, bc->n);
    printf("encoder case=%s attn=%s images=%d tokens=%zu ms=%.3f p10_ms=%.3f p90_ms=%.3f img_s=%.1f tflops=%.1f "
           "ran=%s\n", bc->name, path, bc->n, T, med, p10, p90, bc->n / (med * 1e-3),
           case_flops(bc, vc) / (med * 1e-3) / 1e12, gpu_engine_last_attn(ge));
    fflush(stdout);
    if (profiler_range) {
        cudaDeviceSynchronize();
        cudaProfilerStart();
        ok = gpu_engine_run(ge, b, &err) == VITD_OK;
        cudaDeviceSynchronize();
        cudaProfilerStop();
        if (!ok) fprintf(stderr, "case %s attn %s (profiler range): %s\n", bc->name, path, err.msg);
    }
    if (profile) {
        gpu_engine_set_profile(ge, 1);
        gpu_engine_stage st[32];
        int ns = 0;
        /* two profiled runs: the first settles the event pool, the second is reported */
        for (int r = 0; r < 2 && ok; r++) ok = gpu_engine_run(ge, b, &err) == VITD_OK;
        if (ok) ns = gpu_engine_profile(ge, st, 32);
        gpu_engine_set_profile(ge, 0);
        double wall = 0;
        for (int i = 0; i < ns; i++)
            if (!strcmp(st[i].name, "wall_total")) wall = st[i].ms;
        for (int i = 0; i < ns; i++)
            if (st[i].calls > 0 || st[i].ms > 0)
                printf("stage case=%s attn=%s stage=%s ms=%.3f calls=%d share=%.1f%%\n", bc->name, path,
                       st[i].name, st[i].ms, st[i].calls, wall > 0 ? 100 * st[i].ms / wall : 0);
        fflush(stdout);
    }
    return med;
}

/* The case as a stream of `iters` batches, two in flight (see the header). b: the per-image form. Returns ms per
 * batch, -1 on error (printed). */
static double time_stream(gpu_engine *ge, const bcase *bc, const vitd_vision_config *vc, const vitd_batch *b,
                          const char *path, int iters) {
    vitd_err err = {0};
    int ok = 1;
    for (int w = 0; w < 2 && ok; w++) ok = gpu_engine_run(ge, b, &err) == VITD_OK;
    int sub = 0, done = 0;
    double a = vitd_now();
    while (ok && done < iters) {
        while (ok && sub < iters && gpu_engine_in_flight(ge) < VITD_ENCODER_PIPELINE) {
            ok = gpu_engine_submit(ge, b, &err) == VITD_OK;
            sub++;
        }
        if (ok) ok = gpu_engine_wait(ge, &err) == VITD_OK;
        done++;
    }
    while (gpu_engine_in_flight(ge)) gpu_engine_wait(ge, NULL);
    if (!ok) {
        fprintf(stderr, "stream case %s attn %s: %s\n", bc->name, path, err.msg);
        return -1;
    }
    const double ms = (vitd_now() - a) * 1e3 / iters;
    printf("stream case=%s attn=%s images=%d batches=%d ms_per_batch=%.3f img_s=%.1f tflops=%.1f\n", bc->name, path,
           bc->n, iters, ms, bc->n / (ms * 1e-3), case_flops(bc, vc) / (ms * 1e-3) / 1e12);
    fflush(stdout);
    return ms;
}

int main(int argc, char **argv) {
    const char *model_dir = NULL, *only = NULL, *attn_list = "bf16,fp8,auto", *lin_list = "bf16,fp8";
    const char *lin_gemms = NULL;
    int iters = 20, warmup = 3, profile = 0, no_graphs = 0, bf16_out = 0, no_tune = 0, precise = 0, short_max = -1;
    size_t max_tokens = 16384;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--model") && i + 1 < argc) model_dir = argv[++i];
        else if (!strcmp(argv[i], "--iters") && i + 1 < argc) iters = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--warmup") && i + 1 < argc) warmup = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--cases") && i + 1 < argc) only = argv[++i];
        else if (!strcmp(argv[i], "--attn") && i + 1 < argc) attn_list = argv[++i];
        else if (!strcmp(argv[i], "--max-batch-tokens") && i + 1 < argc) max_tokens = (size_t)atol(argv[++i]);
        else if (!strcmp(argv[i], "--linear") && i + 1 < argc) lin_list = argv[++i];
        else if (!strcmp(argv[i], "--linear-gemms") && i + 1 < argc) lin_gemms = argv[++i];
        else if (!strcmp(argv[i], "--no-graphs")) no_graphs = 1;
        else if (!strcmp(argv[i], "--bf16-out")) bf16_out = 1;
        else if (!strcmp(argv[i], "--no-gemm-tune")) no_tune = 1;
        else if (!strcmp(argv[i], "--precise-accum")) precise = 1;
        else if (!strcmp(argv[i], "--attn-short-max") && i + 1 < argc && atoi(argv[i + 1]) >= 0)
            short_max = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--profile")) profile = 1;
        else if (!strcmp(argv[i], "--cuda-profiler-range")) profiler_range = 1;
        else {
            fprintf(stderr, "usage: bench_encoder [--model DIR] [--iters N] [--warmup N] [--cases a,b] "
                            "[--attn bf16,fp8,auto] [--profile] [--max-batch-tokens N] [--linear bf16,fp8,auto] "
                            "[--linear-gemms LIST] [--no-graphs] [--no-gemm-tune] [--precise-accum] [--bf16-out] "
                            "[--attn-short-max N] [--cuda-profiler-range]\n");
            return 2;
        }
    }
    if (iters < 1) iters = 1;
    vitd_log_set(log_hook, NULL);
    vitd_err err = {0};
    if (!model_dir) {
        model_dir = "/tmp/vitd_bench_8b";
        struct stat sb;
        if (stat("/tmp/vitd_bench_8b/model.safetensors", &sb) != 0) {
            demo_model_opts o = demo_model_opts_default();
            o.preset = "8b";
            o.out_dir = model_dir;
            double t = vitd_now();
            if (demo_model_write(&o, &err) != VITD_OK) {
                fprintf(stderr, "demo_model_write: %s\n", err.msg);
                return 1;
            }
            fprintf(stderr, "wrote the 8b demo model to %s in %.1f s\n", model_dir, vitd_now() - t);
        }
    }
    vitd_model *model = NULL;
    if (vitd_model_load(model_dir, &model, &err) != VITD_OK) {
        fprintf(stderr, "model: %s\n", err.msg);
        return 1;
    }
    const vitd_vision_config *vc = vitd_model_config(model);
    const int D = vc->out_hidden_size, nds = vc->n_deepstack;
    const size_t K = (size_t)vc->in_channels * vc->temporal_patch_size * vc->patch_size * vc->patch_size;

    bcase cases[8];
    int n_cases = 0;
    make_cases(cases, &n_cases);
    size_t need = 0;
    for (int c = 0; c < n_cases; c++) {
        size_t t = vitd_grids_patches(cases[c].grids, cases[c].n);
        if (t > need) need = t;
    }
    if (max_tokens < need) max_tokens = need;

    vitd_encoder_opts eo = vitd_encoder_opts_default();
    eo.max_batch_tokens = max_tokens;
    eo.attn_dtype = strstr(attn_list, "fp8") || strstr(attn_list, "auto") ? "auto" : "bf16";
    eo.linear_dtype = strstr(lin_list, "auto") ? "auto" : strstr(lin_list, "fp8") ? "fp8" : "bf16";
    eo.linear_fp8_gemms = lin_gemms;
    eo.no_cuda_graphs = no_graphs;
    eo.no_gemm_tune = no_tune;
    eo.fp8_precise_accum = precise;
    if (short_max >= 0) eo.attn_short_max = short_max ? short_max : -1; /* else measured (opts 0) */
    gpu_engine *ge = NULL;
    double t0 = vitd_now();
    if (gpu_engine_create(model, &eo, &ge, &err) != VITD_OK) {
        fprintf(stderr, "gpu_engine_create: %s\n", err.msg);
        return 1;
    }
    fprintf(stderr, "engine created in %.2f s (max_batch_tokens %zu, attention %s)\n", vitd_now() - t0, max_tokens,
            gpu_engine_attn_dtype(ge));
    {
        const attn_route_entry *t = NULL;
        const int n = gpu_engine_route_table(ge, &t);
        for (int i = 0; i < n; i++)
            printf("route shape=%dx%d bf16_ms=%.4f fp8_ms=%.4f ratio=%.3f path=%s\n", t[i].n_images, t[i].max_len,
                   t[i].ms_bf16, t[i].ms_fp8, t[i].ms_fp8 > 0 ? t[i].ms_bf16 / t[i].ms_fp8 : 0,
                   t[i].fp8 ? "fp8" : "bf16");
    }
    {
        const gpu_engine_lin_entry *t = NULL;
        const int n = gpu_engine_linear_table(ge, &t);
        for (int i = 0; i < n; i++)
            printf("linroute tokens=%d bf16_ms=%.4f fp8_ms=%.4f ratio=%.3f\n", t[i].tokens, t[i].ms_bf16,
                   t[i].ms_fp8, t[i].ms_fp8 > 0 ? t[i].ms_bf16 / t[i].ms_fp8 : 0);
    }
    static const char *const paths[3] = {"bf16", "fp8", "auto"};

    /* Inputs and outputs sized for the largest case, in plain (pageable) host memory as a caller's would be. */
    float *pv = malloc(need * K * sizeof(float));
    float *emb = malloc(need / 4 * D * sizeof(float));
    float *ds = malloc((size_t)(nds ? nds : 1) * need / 4 * D * sizeof(float));
    unsigned long long s = 0x1234567ULL;
    for (size_t i = 0; i < need * K; i++) {
        s = s * 6364136223846793005ULL + 1442695040888963407ULL;
        pv[i] = (float)((double)(s >> 11) / 9007199254740992.0 * 2.0 - 1.0);
    }
    double *ms = malloc((size_t)iters * sizeof(double));
    unsigned char ones[MAX_IMAGES];
    memset(ones, 1, sizeof ones);
    printf("# encoder bench: %s, depth %d, d %d, I %d, D_out %d; iters %d, warmup %d; outputs %s\n", model_dir,
           vc->depth, vc->hidden_size, vc->intermediate_size, D, iters, warmup, bf16_out ? "bf16" : "float32");
    for (int c = 0; c < n_cases; c++) {
        const bcase *bc = &cases[c];
        if (only && !strstr(only, bc->name)) continue;
        vitd_batch b = {.n_images = bc->n, .grids = bc->grids, .pixel_values = pv, .embeddings = emb,
                        .deepstack = nds ? ds : NULL};
        /* the same buffers in the per-image form (deepstack per image: [nds][tokens][D] at its own offset) */
        const float *img_pv[MAX_IMAGES];
        float *img_emb[MAX_IMAGES], *img_ds[MAX_IMAGES];
        size_t row = 0;
        for (int i = 0; i < bc->n; i++) {
            img_pv[i] = pv + row * K;
            img_emb[i] = emb + row / 4 * D;
            img_ds[i] = ds + (size_t)nds * row / 4 * D;
            row += vitd_grids_patches(&bc->grids[i], 1);
        }
        vitd_batch bi = {.n_images = bc->n, .grids = bc->grids, .image_pixels = img_pv, .image_embeddings = img_emb,
                         .image_deepstack = nds ? img_ds : NULL, .image_bf16 = bf16_out ? ones : NULL};
        double med_of[3][3] = {{0}}, stream_of[3][3] = {{0}}; /* [linear][attention] */
        for (int li = 0; li < 3; li++) {
            if (!strstr(lin_list, paths[li])) continue;
            if (gpu_engine_set_linear(ge, paths[li], &err) != VITD_OK) {
                fprintf(stderr, "case %s linear %s: %s\n", bc->name, paths[li], err.msg);
                continue;
            }
            char ran_auto[8] = "";
            for (int pi = 0; pi < 3; pi++) {
                if (!strstr(attn_list, paths[pi])) continue;
                if (gpu_engine_set_attn(ge, paths[pi], &err) != VITD_OK) {
                    fprintf(stderr, "case %s attn %s: %s\n", bc->name, paths[pi], err.msg);
                    continue;
                }
                char label[40];
                snprintf(label, sizeof label, "%s linear=%s", paths[pi], paths[li]);
                med_of[li][pi] = time_case(ge, bc, vc, bf16_out ? &bi : &b, label, iters, warmup, profile, ms);
                if (med_of[li][pi] < 0) return 1;
                stream_of[li][pi] = time_stream(ge, bc, vc, &bi, label, iters);
                if (stream_of[li][pi] < 0) return 1;
                if (pi == 2) snprintf(ran_auto, sizeof ran_auto, "%s", gpu_engine_last_attn(ge));
            }
            const double *m = med_of[li], *st = stream_of[li];
            if (m[0] > 0 && (m[1] > 0 || m[2] > 0))
                printf("ratio case=%s linear=%s fp8_over_bf16=%.3f auto_over_bf16=%.3f auto_ran=%s "
                       "stream_fp8_over_bf16=%.3f stream_auto_over_bf16=%.3f\n", bc->name, paths[li],
                       m[1] > 0 ? m[0] / m[1] : 0, m[2] > 0 ? m[0] / m[2] : 0, ran_auto[0] ? ran_auto : "-",
                       st[1] > 0 ? st[0] / st[1] : 0, st[2] > 0 ? st[0] / st[2] : 0);
        }
        for (int pi = 0; pi < 3; pi++)
            if (med_of[0][pi] > 0 && med_of[1][pi] > 0)
                printf("linratio case=%s attn=%s fp8_over_bf16=%.3f stream_fp8_over_bf16=%.3f\n", bc->name,
                       paths[pi], med_of[0][pi] / med_of[1][pi], stream_of[0][pi] / stream_of[1][pi]);
        fflush(stdout);
    }
    {
        long cap = 0, rep = 0, failed = 0;
        gpu_engine_graph_stats(ge, &cap, &rep, &failed);
        printf("graphs captured=%ld replayed=%ld failed=%ld%s\n", cap, rep, failed, no_graphs ? " (off)" : "");
        long shapes = 0, changed = 0;
        double first = 0, chosen = 0;
        gpu_engine_gemm_tune_stats(ge, &shapes, &changed, &first, &chosen);
        printf("gemm_tune shapes=%ld changed=%ld first_ms=%.3f chosen_ms=%.3f%s\n", shapes, changed, first, chosen,
               no_tune ? " (off)" : "");
    }
    gpu_engine_set_linear(ge, "auto", &err);
    gpu_engine_set_attn(ge, "auto", &err);
    free(ms);
    free(pv);
    free(emb);
    free(ds);
    gpu_engine_free(ge);
    vitd_model_free(model);
    return 0;
}
