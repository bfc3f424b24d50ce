/* bench_attn.c — times vitd's cuDNN attention (encoder/gpu_attn.c) on single images and mixed batches of a
 * 16-head, head_dim 72 (padded to 80) vision tower. Paths: bf16-packed (one launch on the packed-plan ladder),
 * bf16-1plan (one launch on a single (64, 65536) plan), bf16-full (one full plan per image), bf16-auto (the
 * rule of gpu_attn_begin), bf16-tight (a packed plan built for exactly this batch, for reference), fp8 (split:
 * large images on their own plan) and fp8-1launch (one (n, bucket) launch).
 *
 * Method: random bf16 q/k/v with 20x outlier channels (8192 distinct tokens tiled over the buffer), packed once
 * (bf16 and E4M3 with per-tensor amax scales); per case, 3 rounds over all paths (interleaved against drift),
 * each: gpu_attn_begin, warm-up calls, N calls (~150 ms) each bracketed by CUDA events (median), and the same
 * calls captured 10 at a time in a CUDA graph (1 above 1 ms; median replay / calls), which removes host launch
 * gaps; reported: the median of the 3 rounds, and the spread (max-min)/min of the stream medians.
 * FLOPs = sum over images of 4 * S^2 * 72 * 16 (QK^T and PV, non-causal). One parseable line per result:
 *   attn case=<name> tokens=<T> images=<n> path=<path> ms=<median> graph_ms=<median> tflops=<best>
 *        spread=<%> plan="<plan choice>"
 * then a table. Usage: bench_attn [--iters N] [--full-min-len L] [--no-graph] [--cases a,b,...]
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "gpu_attn.h"
#include "kernels.h"
#include "util.h"

#define H 16
#define HD 72
#define DP 80
#define MAX_IMAGES 64
#define MAX_SEQ 65536

#define CUDA_CHECK(call)                                                                                  \
    do {                                                                                                  \
        cudaError_t e_ = (call);                                                                          \
        if (e_ != cudaSuccess) {                                                                          \
            fprintf(stderr, "FATAL %s:%d: %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_)); \
            exit(1);                                                                                      \
        }                                                                                                 \
    } while (0)

typedef struct {
    const char *name;
    int n;
    int lens[MAX_IMAGES];
} bcase;

static int g_verbose_log = 0;
static void log_hook(vitd_log_level level, const char *msg, void *user) {
    (void)user;
    if (level >= VITD_LOG_INFO || g_verbose_log) fprintf(stderr, "  [log] %s\n", msg);
}

static int cmp_float(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

typedef struct {
    uint16_t *q, *k, *v, *o;
    uint8_t *q8, *k8, *v8, *o8;
    float *scalars;
    int32_t *cu;
} bufs;

enum { P_PACKED, P_ONEPLAN, P_FULL, P_AUTO, P_TIGHT, P_FP8, P_FP8_ONE, N_PATHS };
static const char *const path_name[N_PATHS] = {"bf16-packed", "bf16-1plan", "bf16-full", "bf16-auto",
                                               "bf16-tight", "fp8", "fp8-1launch"};

/* One call of `path` on the current batch of ctx. */
static int call_once(gpu_attn_ctx *ctx, int path, bufs *b, cudaStream_t s, vitd_err *err) {
    if (path == P_FP8 || path == P_FP8_ONE) return gpu_attn_fp8(ctx, b->q8, b->k8, b->v8, b->o8, b->scalars, s, err);
    return gpu_attn_bf16(ctx, b->q, b->k, b->v, b->o, s, err);
}

typedef struct {
    double ms, graph_ms;
    char plan[96];
    int ok;
} result;

static result time_path(gpu_attn_ctx *ctx, int path, const bcase *bc, bufs *b, cudaStream_t s, int iters,
                        int use_graph) {
    result r = {0, 0, "", 0};
    vitd_err err = {0, ""};
    gpu_attn_batch batch = {bc->n, bc->lens, b->cu};
    if (path == P_PACKED || path == P_ONEPLAN || path == P_TIGHT) gpu_attn_set_bf16_path(ctx, GPU_ATTN_BF16_PACKED);
    if (path == P_FULL) gpu_attn_set_bf16_path(ctx, GPU_ATTN_BF16_FULL);
    if (path == P_AUTO || path == P_FP8 || path == P_FP8_ONE) gpu_attn_set_bf16_path(ctx, GPU_ATTN_BF16_AUTO);
    if (gpu_attn_begin(ctx, &batch, s, &err)) {
        fprintf(stderr, "  %s %s: begin failed: %s\n", bc->name, path_name[path], err.msg);
        return r;
    }
    snprintf(r.plan, sizeof r.plan, "%s", gpu_attn_batch_desc(ctx));
    cudaEvent_t ev[2 * 256 + 2];
    int n_ev = 2 * (iters < 256 ? iters : 256);
    for (int i = 0; i < n_ev; i++) CUDA_CHECK(cudaEventCreate(&ev[i]));
    /* warm-up: builds any missing plan, then estimates the time to size the loop */
    for (int i = 0; i < 3; i++)
        if (call_once(ctx, path, b, s, &err)) {
            fprintf(stderr, "  %s %s: call failed: %s\n", bc->name, path_name[path], err.msg);
            goto out;
        }
    CUDA_CHECK(cudaStreamSynchronize(s));
    if (path == P_FP8 || path == P_FP8_ONE) snprintf(r.plan, sizeof r.plan, "%s", gpu_attn_fp8_desc(ctx));
    CUDA_CHECK(cudaEventRecord(ev[0], s));
    if (call_once(ctx, path, b, s, &err)) goto out;
    CUDA_CHECK(cudaEventRecord(ev[1], s));
    CUDA_CHECK(cudaEventSynchronize(ev[1]));
    float est;
    CUDA_CHECK(cudaEventElapsedTime(&est, ev[0], ev[1]));
    int n = (int)(150.0 / (est > 0.001 ? est : 0.001));
    if (n > iters) n = iters;
    if (n < 5) n = 5;
    float ts[256];
    for (int i = 0; i < n; i++) {
        CUDA_CHECK(cudaEventRecord(ev[2 * i], s));
        if (call_once(ctx, path, b, s, &err)) goto out;
        CUDA_CHECK(cudaEventRecord(ev[2 * i + 1], s));
    }
    CUDA_CHECK(cudaStreamSynchronize(s));
    for (int i = 0; i < n; i++) CUDA_CHECK(cudaEventElapsedTime(&ts[i], ev[2 * i], ev[2 * i + 1]));
    qsort(ts, (size_t)n, sizeof ts[0], cmp_float);
    r.ms = ts[n / 2];
    r.ok = 1;

    if (use_graph) {
        const int per_graph = est > 1.0f ? 1 : 10;
        cudaGraph_t g = NULL;
        cudaGraphExec_t ge = NULL;
        cudaError_t ce = cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal);
        int bad = ce != cudaSuccess;
        for (int i = 0; i < per_graph && !bad; i++) bad = call_once(ctx, path, b, s, &err) != 0;
        cudaError_t ce2 = cudaStreamEndCapture(s, &g);
        if (bad || ce2 != cudaSuccess || !g) {
            fprintf(stderr, "  %s %s: graph capture failed (%s%s)\n", bc->name, path_name[path],
                    cudaGetErrorString(ce2), bad ? err.msg : "");
            cudaGetLastError();
        } else if (cudaGraphInstantiate(&ge, g, 0) == cudaSuccess) {
            int reps = n < 20 ? n : 20;
            CUDA_CHECK(cudaGraphLaunch(ge, s));
            for (int i = 0; i < reps; i++) {
                CUDA_CHECK(cudaEventRecord(ev[2 * i], s));
                CUDA_CHECK(cudaGraphLaunch(ge, s));
                CUDA_CHECK(cudaEventRecord(ev[2 * i + 1], s));
            }
            CUDA_CHECK(cudaStreamSynchronize(s));
            for (int i = 0; i < reps; i++) CUDA_CHECK(cudaEventElapsedTime(&ts[i], ev[2 * i], ev[2 * i + 1]));
            qsort(ts, (size_t)reps, sizeof ts[0], cmp_float);
            r.graph_ms = ts[reps / 2] / per_graph;
            cudaGraphExecDestroy(ge);
        } else {
            fprintf(stderr, "  %s %s: graph instantiate failed\n", bc->name, path_name[path]);
            cudaGetLastError();
        }
        if (g) cudaGraphDestroy(g);
    }
out:
    for (int i = 0; i < n_ev; i++) cudaEventDestroy(ev[i]);
    CUDA_CHECK(cudaGetLastError());
    return r;
}

static void add_case(bcase *cs, int *nc, const char *name, int n, const int *lens) {
    bcase *c = &cs[(*nc)++];
    c->name = name;
    c->n = n;
    for (int i = 0; i < n; i++) c->lens[i] = lens[i];
}

int main(int argc, char **argv) {
    int iters = 100, use_graph = 1, full_min_len = -1;
    const char *only = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--iters") && i + 1 < argc) iters = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--full-min-len") && i + 1 < argc) full_min_len = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--no-graph")) use_graph = 0;
        else if (!strcmp(argv[i], "--cases") && i + 1 < argc) only = argv[++i];
        else if (!strcmp(argv[i], "-v")) g_verbose_log = 1;
        else {
            fprintf(stderr, "usage: bench_attn [--iters N] [--full-min-len L] [--no-graph] [--cases a,b] [-v]\n");
            return 2;
        }
    }
    if (iters > 256) iters = 256;
    vitd_log_set(log_hook, NULL);

    static bcase cs[32];
    int nc = 0;
    static const int l256[] = {256}, l1k[] = {1024}, l2k[] = {2048}, l4k[] = {4096}, l16k[] = {16384},
                     l64k[] = {65536};
    static const int mix5[] = {16384, 4096, 1024, 256, 64}, mix3[] = {1024, 4096, 16}, odd3[] = {257, 1000, 63};
    int x16k1[16], x4k4[4], x64s[64], x4k2[4];
    for (int i = 0; i < 16; i++) x16k1[i] = 1024;
    for (int i = 0; i < 4; i++) x4k4[i] = 4096;
    for (int i = 0; i < 64; i++) x64s[i] = 256;
    for (int i = 0; i < 4; i++) x4k2[i] = 2048;
    add_case(cs, &nc, "1x256", 1, l256);
    add_case(cs, &nc, "1x1024", 1, l1k);
    add_case(cs, &nc, "1x2048", 1, l2k);
    add_case(cs, &nc, "1x4096", 1, l4k);
    add_case(cs, &nc, "1x16384", 1, l16k);
    add_case(cs, &nc, "1x65536", 1, l64k);
    add_case(cs, &nc, "16x1024", 16, x16k1);
    add_case(cs, &nc, "4x2048", 4, x4k2);
    add_case(cs, &nc, "4x4096", 4, x4k4);
    add_case(cs, &nc, "64x256", 64, x64s);
    add_case(cs, &nc, "1024+4096+16", 3, mix3);
    add_case(cs, &nc, "257+1000+63", 3, odd3);
    add_case(cs, &nc, "16384+4096+1024+256+64", 5, mix5);

    int n_dev = 0;
    if (cudaGetDeviceCount(&n_dev) != cudaSuccess || n_dev == 0) {
        fprintf(stderr, "bench_attn: no CUDA device\n");
        return 77;
    }
    vitd_err err = {0, ""};
    gpu_attn_opts o = gpu_attn_opts_default();
    o.max_batch = MAX_IMAGES;
    o.max_seqlen = MAX_SEQ;
    if (full_min_len > 0) o.full_min_len = full_min_len;
    o.full_cache = 64;
    o.fp8_cache = 32;
    gpu_attn_ctx *ctx = NULL, *ctx1 = NULL;
    double t0 = vitd_now();
    if (gpu_attn_create(0, &o, &ctx, &err)) {
        fprintf(stderr, "bench_attn: %s\n", err.msg);
        return 1;
    }
    double t_create = vitd_now() - t0;
    /* the same without the packed ladder and the FP8 split: one (64, 65536) plan, one FP8 launch */
    gpu_attn_opts o1 = o;
    o1.packed_ladder = 0;
    o1.fp8_split = 0;
    if (gpu_attn_create(0, &o1, &ctx1, &err)) {
        fprintf(stderr, "bench_attn: %s\n", err.msg);
        return 1;
    }
    const gpu_attn_features *f = gpu_attn_features_of(ctx);
    printf("# device %s (cc %d.%d, %d SMs), cuDNN %d, fp8 %s, context created in %.2f s, full_min_len %d\n",
           f->device_name, f->cc_major, f->cc_minor, f->sm_count, f->cudnn_version, f->fp8 ? "yes" : "no",
           t_create, gpu_attn_opts_of(ctx)->full_min_len);

    /* buffers for the largest batch: 65536 tokens (the 5-image mix has 21824) */
    int max_t = 0;
    for (int i = 0; i < nc; i++) {
        int t = 0;
        for (int j = 0; j < cs[i].n; j++) t += cs[i].lens[j];
        if (t > max_t) max_t = t;
    }
    const size_t rows = (size_t)max_t + GPU_ATTN_SLACK_ROWS, row_qkv = 3 * H * HD;
    bufs b;
    uint16_t *d_qkv;
    float *d_amax;
    CUDA_CHECK(cudaMalloc((void **)&d_qkv, 2 * rows * row_qkv));
    CUDA_CHECK(cudaMalloc((void **)&b.q, 2 * rows * H * DP));
    CUDA_CHECK(cudaMalloc((void **)&b.k, 2 * rows * H * DP));
    CUDA_CHECK(cudaMalloc((void **)&b.v, 2 * rows * H * DP));
    CUDA_CHECK(cudaMalloc((void **)&b.o, 2 * rows * H * DP));
    CUDA_CHECK(cudaMalloc((void **)&b.q8, rows * H * DP));
    CUDA_CHECK(cudaMalloc((void **)&b.k8, rows * H * DP));
    CUDA_CHECK(cudaMalloc((void **)&b.v8, rows * H * DP));
    CUDA_CHECK(cudaMalloc((void **)&b.o8, rows * H * DP));
    CUDA_CHECK(cudaMalloc((void **)&b.scalars, ATTN_FP8_N_SLOTS * ATTN_FP8_SLOT_FLOATS * sizeof(float)));
    CUDA_CHECK(cudaMalloc((void **)&b.cu, sizeof(int32_t) * (MAX_IMAGES + 1)));
    CUDA_CHECK(cudaMalloc((void **)&d_amax, 4 * sizeof(float)));
    {
        const size_t tile = 8192;
        uint16_t *h = malloc(2 * tile * row_qkv);
        unsigned long long rng = 0xbe11c4ULL;
        for (size_t i = 0; i < tile * row_qkv; i++) {
            rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
            double u1 = ((rng >> 11) + 1.0) / 9007199254740993.0;
            rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
            double u2 = (rng >> 11) / 9007199254740992.0;
            double x = sqrt(-2 * log(u1)) * cos(6.283185307179586 * u2);
            int col = (int)(i % row_qkv), which = col / (H * HD), ch = col % HD;
            if ((which == 0 && ch == 5) || (which == 1 && ch == 61) || (which == 2 && ch == 11)) x *= 20;
            h[i] = f32_to_bf16((float)x);
        }
        for (size_t r0 = 0; r0 < rows; r0 += tile) {
            size_t nr = rows - r0 < tile ? rows - r0 : tile;
            CUDA_CHECK(cudaMemcpy(d_qkv + r0 * row_qkv, h, 2 * nr * row_qkv, cudaMemcpyHostToDevice));
        }
        free(h);
        CUDA_CHECK(attn_pack_qkv_bf16(d_qkv, (int)rows, H, HD, DP, b.q, b.k, b.v, 0));
        CUDA_CHECK(attn_qkv_amax_bf16(d_qkv, (int)rows, H, HD, d_amax, 0));
        CUDA_CHECK(attn_fp8_scales_from_amax(d_amax, b.scalars, 0));
        CUDA_CHECK(attn_pack_qkv_fp8(d_qkv, (int)rows, H, HD, DP, b.scalars, b.q8, b.k8, b.v8, 0));
        CUDA_CHECK(cudaDeviceSynchronize());
    }
    cudaStream_t s;
    CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));

    static result res[32][N_PATHS];
    static double flops[32];
    for (int ci = 0; ci < nc; ci++) {
        bcase *bc = &cs[ci];
        if (only && !strstr(only, bc->name)) continue;
        int32_t cu[MAX_IMAGES + 1];
        cu[0] = 0;
        double fl = 0;
        int smax = 0;
        for (int i = 0; i < bc->n; i++) {
            cu[i + 1] = cu[i] + bc->lens[i];
            fl += 4.0 * bc->lens[i] * (double)bc->lens[i] * HD * H;
            if (bc->lens[i] > smax) smax = bc->lens[i];
        }
        flops[ci] = fl;
        CUDA_CHECK(cudaMemcpy(b.cu, cu, sizeof(int32_t) * (bc->n + 1), cudaMemcpyHostToDevice));
        /* ROUNDS rounds over all paths, the paths interleaved so that clock or thermal drift hits them alike;
         * the reported time is the median of the per-round medians */
        gpu_attn_ctx *tight = NULL;
        gpu_attn_opts ot = o;
        ot.max_batch = bc->n;
        ot.max_seqlen = smax;
        ot.fp8 = 0;
        ot.packed_ladder = 0;
        if (gpu_attn_create(0, &ot, &tight, &err)) fprintf(stderr, "  tight plan for %s: %s\n", bc->name, err.msg);
        enum { ROUNDS = 3 };
        result rr[ROUNDS][N_PATHS];
        memset(rr, 0, sizeof rr);
        for (int round = 0; round < ROUNDS; round++)
            for (int p = 0; p < N_PATHS; p++) {
                if ((p == P_FP8 || p == P_FP8_ONE) && !gpu_attn_opts_of(ctx)->fp8) continue;
                gpu_attn_ctx *use = (p == P_ONEPLAN || p == P_FP8_ONE) ? ctx1 : p == P_TIGHT ? tight : ctx;
                if (!use) continue;
                rr[round][p] = time_path(use, p, bc, &b, s, iters, use_graph);
            }
        gpu_attn_free(tight);
        for (int p = 0; p < N_PATHS; p++) {
            float ms[ROUNDS], gms[ROUNDS];
            int k = 0, kg = 0;
            for (int round = 0; round < ROUNDS; round++) {
                if (!rr[round][p].ok) continue;
                ms[k++] = (float)rr[round][p].ms;
                if (rr[round][p].graph_ms > 0) gms[kg++] = (float)rr[round][p].graph_ms;
            }
            if (k == 0) continue;
            qsort(ms, (size_t)k, sizeof ms[0], cmp_float);
            qsort(gms, (size_t)kg, sizeof gms[0], cmp_float);
            result r = rr[0][p];
            r.ok = 1;
            r.ms = ms[k / 2];
            r.graph_ms = kg ? gms[kg / 2] : 0;
            res[ci][p] = r;
            double best = r.graph_ms > 0 && r.graph_ms < r.ms ? r.graph_ms : r.ms;
            printf("attn case=%s tokens=%d images=%d path=%s ms=%.4f graph_ms=%.4f tflops=%.1f spread=%.1f%% "
                   "plan=\"%s\"\n", bc->name, cu[bc->n], bc->n, path_name[p], r.ms, r.graph_ms,
                   fl / (best * 1e-3) / 1e12, 100.0 * (ms[k - 1] - ms[0]) / ms[0], r.plan);
            fflush(stdout);
        }
    }

    printf("\n| case | tokens |");
    for (int p = 0; p < N_PATHS; p++) printf(" %s ms (TFLOP/s) |", path_name[p]);
    printf(" fp8 / best bf16 |\n|---|---|");
    for (int p = 0; p <= N_PATHS; p++) printf("---|");
    printf("\n");
    for (int ci = 0; ci < nc; ci++) {
        if (only && !strstr(only, cs[ci].name)) continue;
        int t = 0;
        for (int j = 0; j < cs[ci].n; j++) t += cs[ci].lens[j];
        printf("| %s | %d |", cs[ci].name, t);
        double best_bf16 = 1e30;
        for (int p = 0; p < N_PATHS; p++) {
            result *r = &res[ci][p];
            if (!r->ok) {
                printf(" - |");
                continue;
            }
            double best = r->graph_ms > 0 && r->graph_ms < r->ms ? r->graph_ms : r->ms;
            if ((p == P_PACKED || p == P_FULL || p == P_AUTO) && best < best_bf16) best_bf16 = best;
            printf(" %.4f (%.0f) |", best, flops[ci] / (best * 1e-3) / 1e12);
        }
        result *r8 = &res[ci][P_FP8];
        double b8 = r8->graph_ms > 0 && r8->graph_ms < r8->ms ? r8->graph_ms : r8->ms;
        if (r8->ok) printf(" %.2fx |\n", best_bf16 / b8);
        else printf(" - |\n");
    }
    printf("(ms = min of the stream median and the CUDA-graph median per call; fp8 / best bf16 = fp8 vs the best of "
           "bf16-packed, bf16-full, bf16-auto)\n");
    gpu_attn_stats st;
    gpu_attn_get_stats(ctx, &st);
    printf("# plans built %d (%.1f s), full hits/misses %d/%d, fp8 hits/misses %d/%d\n", st.plans_built,
           st.build_ms_total / 1e3, st.full_hits, st.full_misses, st.fp8_hits, st.fp8_misses);
    gpu_attn_free(ctx);
    gpu_attn_free(ctx1);
    cudaFree(d_qkv);
    return 0;
}
