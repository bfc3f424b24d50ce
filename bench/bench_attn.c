/* bench_attn.c — times vitd's cuDNN attention (encoder/gpu/gpu_attn.c) on single images and mixed batches of a
 * 16-head, head_dim 72 (padded to 80) vision tower, in two modes.
 *
 * Default mode: the attention call alone. Paths: bf16-packed (one launch on the packed-plan ladder),
 * bf16-1plan (one launch on a single (64, 65536) plan), bf16-full (one full plan per image), bf16-auto (the
 * rule of gpu_attn_begin), bf16-tight (a packed plan built for exactly this batch, for reference), fp8 (split:
 * large images on their own plan) and fp8-1launch (one (n, bucket) launch).
 *
 * --e2e (issue 6's benchmark): from the BF16 QKV GEMM output to the BF16 input of the output projection, both
 * ways, total tokens 1K, 4K, 16K, 64K as single images and mixed batches:
 *   bf16 = fp8_quant_qkv_rope_bf16 (rotary + split + pad, the BF16 sibling of the FP8 pass) + gpu_attn_bf16 +
 *          attn_unpack_bf16, on each BF16 attention path (packed, full, auto), and bf16-auto-ropepack with
 *          rope.cu's rope_pack_qkv_bf16 instead (bit-identical output); the best of the four is the baseline;
 *   fp8  = fp8_quant_qkv_rope (rotary + quantise + pad + amax, kernels/fp8_quant.cu) + gpu_attn_fp8 +
 *          fp8_quant_dequant_o with the dynamic-scale ring update folded in (history 16), on the split FP8
 *          context (fp8) and the one-launch one (fp8-1launch); fp8-sep is fp8 with the ring update as its own
 *          kernel after a plain dequantisation.
 * It also times the pieces alone (graph replay): rope_pack (rope.cu), rope_bf16 (the sibling), unpack (bf16),
 * quant, quant-static (no amax), amax pre-pass, dequant (+ring), attn_unpack_fp8 (attn_pack.cu's simple dequant),
 * ring update; and the output projection that consumes the result: the BF16 GEMM [T,1152]x[1152,1152]
 * (gpu_gemm_bf16, bias + residual) vs an FP8 cuBLASLt GEMM [T,1280]x[1280,1152] + bias reading the FP8 O directly
 * (option "b": the dequantisation pass would vanish but the projection weights would be quantised; timed here
 * for the decision, not used by the engine).
 *
 * Method: random bf16 q/k/v with 20x outlier channels (8192 distinct tokens tiled over the buffer), packed once
 * (bf16 and E4M3 with per-tensor amax scales); per case, 3 rounds over all paths (interleaved against drift),
 * each: gpu_attn_begin, warm-up calls, N calls (~150 ms) each bracketed by CUDA events (median), and the same
 * calls captured 10 at a time in a CUDA graph (1 above 1 ms; median replay / calls), which removes host launch
 * gaps; reported: the median of the 3 rounds, and the spread (max-min)/min of the stream medians.
 * FLOPs = sum over images of 4 * S^2 * 72 * 16 (QK^T and PV, non-causal). One parseable line per result:
 *   attn case=<name> tokens=<T> images=<n> path=<path> ms=<median> graph_ms=<median> tflops=<best>
 *        spread=<%> plan="<plan choice>"
 *   e2e case=<name> tokens=<T> images=<n> path=<path> ms=<median> graph_ms=<median> spread=<%> plan="<...>"
 *   piece case=<name> tokens=<T> what=<piece> ms=<median> graph_ms=<median> [gbps=<bytes / time>] [tflops=..]
 * then a table. Usage: bench_attn [--e2e] [--iters N] [--full-min-len L] [--no-graph] [--cases a,b,...]
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include "cpu_ops.h"
#include "engine_kernels.h"
#include "fp8_kernels.h"
#include "gpu_attn.h"
#include "gpu_gemm.h"
#include "kernels.h"
#include "util.h"

#define H 16
#define HD 72
#define DP 80
#define MAX_IMAGES 64
#define MAX_SEQ 65536

#include "gpu_check.h"

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

/* A sequence of GPU work to time: returns 0 or a status (err filled). */
typedef int (*call_fn)(void *arg, cudaStream_t s, vitd_err *err);

/* Times fn: warm-up (builds missing plans), N calls bracketed by CUDA events (median), then, if use_graph, the
 * same calls captured 10 at a time (1 above 1 ms) in a CUDA graph (median replay / calls). Fills ms, graph_ms,
 * ok; `label` names the case in messages. */
static void time_calls(call_fn fn, void *arg, cudaStream_t s, int iters, int use_graph, const char *label,
                       result *r) {
    vitd_err err = {0, ""};
    cudaEvent_t ev[2 * 256 + 2];
    int n_ev = 2 * (iters < 256 ? iters : 256);
    if (n_ev < 10) n_ev = 10;
    for (int i = 0; i < n_ev; i++) CUDA_CHECK(cudaEventCreate(&ev[i]));
    for (int i = 0; i < 3; i++)
        if (fn(arg, s, &err)) {
            fprintf(stderr, "  %s: call failed: %s\n", label, err.msg);
            goto out;
        }
    CUDA_CHECK(cudaStreamSynchronize(s));
    CUDA_CHECK(cudaEventRecord(ev[0], s));
    if (fn(arg, s, &err)) goto out;
    CUDA_CHECK(cudaEventRecord(ev[1], s));
    CUDA_CHECK(cudaEventSynchronize(ev[1]));
    float est;
    CUDA_CHECK(cudaEventElapsedTime(&est, ev[0], ev[1]));
    int n = (int)(150.0 / (est > 0.001 ? est : 0.001));
    if (n > iters) n = iters;
    if (n > n_ev / 2) n = n_ev / 2;
    if (n < 5) n = 5;
    float ts[256];
    for (int i = 0; i < n; i++) {
        CUDA_CHECK(cudaEventRecord(ev[2 * i], s));
        if (fn(arg, s, &err)) goto out;
        CUDA_CHECK(cudaEventRecord(ev[2 * i + 1], s));
    }
    CUDA_CHECK(cudaStreamSynchronize(s));
    for (int i = 0; i < n; i++) CUDA_CHECK(cudaEventElapsedTime(&ts[i], ev[2 * i], ev[2 * i + 1]));
    qsort(ts, (size_t)n, sizeof ts[0], cmp_float);
    r->ms = ts[n / 2];
    r->ok = 1;

    if (use_graph) {
        const int per_graph = est > 1.0f ? 1 : 10;
        cudaGraph_t g = NULL;
        cudaGraphExec_t ge = NULL;
        cudaError_t ce = cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal);
        int bad = ce != cudaSuccess;
        for (int i = 0; i < per_graph && !bad; i++) bad = fn(arg, s, &err) != 0;
        cudaError_t ce2 = cudaStreamEndCapture(s, &g);
        if (bad || ce2 != cudaSuccess || !g) {
            fprintf(stderr, "  %s: graph capture failed (%s%s)\n", label, cudaGetErrorString(ce2), bad ? err.msg : "");
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
            r->graph_ms = ts[reps / 2] / per_graph;
            cudaGraphExecDestroy(ge);
        } else {
            fprintf(stderr, "  %s: graph instantiate failed\n", label);
            cudaGetLastError();
        }
        if (g) cudaGraphDestroy(g);
    }
out:
    for (int i = 0; i < n_ev; i++) cudaEventDestroy(ev[i]);
    CUDA_CHECK(cudaGetLastError());
}

typedef struct {
    gpu_attn_ctx *ctx;
    int path;
    bufs *b;
} attn_arg;

static int attn_call(void *arg, cudaStream_t s, vitd_err *err) {
    attn_arg *a = arg;
    return call_once(a->ctx, a->path, a->b, s, err);
}

/* Selects the BF16 path for `path` (benchmark paths map onto gpu_attn's) and starts the batch. */
static int begin_path(gpu_attn_ctx *ctx, int path, const bcase *bc, int32_t *d_cu, cudaStream_t s, char *plan,
                      size_t plan_len) {
    vitd_err err = {0, ""};
    gpu_attn_batch batch = {bc->n, bc->lens, d_cu};
    if (path == P_PACKED || path == P_ONEPLAN || path == P_TIGHT) gpu_attn_set_bf16_path(ctx, GPU_ATTN_BF16_PACKED);
    if (path == P_FULL) gpu_attn_set_bf16_path(ctx, GPU_ATTN_BF16_FULL);
    if (path == P_AUTO || path == P_FP8 || path == P_FP8_ONE) gpu_attn_set_bf16_path(ctx, GPU_ATTN_BF16_AUTO);
    if (gpu_attn_begin(ctx, &batch, s, &err)) {
        fprintf(stderr, "  %s %s: begin failed: %s\n", bc->name, path_name[path], err.msg);
        return -1;
    }
    snprintf(plan, plan_len, "%s", gpu_attn_batch_desc(ctx));
    return 0;
}

static result time_path(gpu_attn_ctx *ctx, int path, const bcase *bc, bufs *b, cudaStream_t s, int iters,
                        int use_graph) {
    result r = {0, 0, "", 0};
    if (begin_path(ctx, path, bc, b->cu, s, r.plan, sizeof r.plan)) return r;
    attn_arg a = {ctx, path, b};
    char label[128];
    snprintf(label, sizeof label, "%s %s", bc->name, path_name[path]);
    time_calls(attn_call, &a, s, iters, use_graph, label, &r);
    if (path == P_FP8 || path == P_FP8_ONE) snprintf(r.plan, sizeof r.plan, "%s", gpu_attn_fp8_desc(ctx));
    return r;
}

static void add_case(bcase *cs, int *nc, const char *name, int n, const int *lens) {
    bcase *c = &cs[(*nc)++];
    c->name = name;
    c->n = n;
    for (int i = 0; i < n; i++) c->lens[i] = lens[i];
}

/* ---- --e2e: BF16 QKV -> BF16 input of the output projection, both ways ---- */

#define HIST 16
#define DMODEL (H * HD)

enum { E_BF16_PACKED, E_BF16_FULL, E_BF16_AUTO, E_BF16_ROPEPACK, E_FP8, E_FP8_ONE, E_FP8_SEP, N_E2E };
static const char *const e2e_name[N_E2E] = {"bf16-packed", "bf16-full", "bf16-auto", "bf16-auto-ropepack", "fp8",
                                            "fp8-1launch", "fp8-sep"};
static const int e2e_attn_path[N_E2E] = {P_PACKED, P_FULL, P_AUTO, P_AUTO, P_FP8, P_FP8_ONE, P_FP8};

enum { K_ROPE, K_ROPE_FAST, K_UNPACK, K_QUANT, K_QUANT_STATIC, K_AMAX, K_DEQUANT, K_UNPACK_FP8, K_RING,
       K_GEMM_BF16, K_GEMM_FP8, N_PIECES };
static const char *const piece_name[N_PIECES] = {"rope_pack", "rope_bf16", "unpack_bf16", "quant",
                                                 "quant_static", "amax", "dequant+ring", "attn_unpack_fp8", "ring", "proj_bf16",
                                                 "proj_fp8"};

/* FP8 projection GEMM (option b, timing only): y[T, 1152] bf16 = x8[T, 1280] E4M3 . w8[1152, 1280]^T E4M3 + bias
 * (+ y), cuBLASLt "TN" with A/B scale pointers. */
typedef struct {
    cublasLtHandle_t lt;
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t la, lb, lc;
    cublasLtMatmulAlgo_t algo;
    void *ws;
    size_t ws_bytes;
    int n, ok;
} fp8_gemm;

static void fp8_gemm_release(fp8_gemm *g) {
    if (g->la) cublasLtMatrixLayoutDestroy(g->la);
    if (g->lb) cublasLtMatrixLayoutDestroy(g->lb);
    if (g->lc) cublasLtMatrixLayoutDestroy(g->lc);
    if (g->desc) cublasLtMatmulDescDestroy(g->desc);
    g->la = g->lb = g->lc = NULL;
    g->desc = NULL;
    g->ok = 0;
}

/* Prepares the FP8 GEMM for n tokens; g->ok = 0 (with a message) when cuBLASLt offers no algorithm. */
static void fp8_gemm_setup(fp8_gemm *g, int n, const float *d_one, const void *bias) {
    fp8_gemm_release(g);
    g->n = n;
    const int k = H * DP, m = DMODEL;
    cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
    cudaDataType_t bias_type = CUDA_R_16BF;
    cublasLtMatmulPreference_t pref = NULL;
    cublasLtMatmulHeuristicResult_t res;
    int returned = 0;
    if (cublasLtMatmulDescCreate(&g->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F) ||
        cublasLtMatmulDescSetAttribute(g->desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta) ||
        cublasLtMatmulDescSetAttribute(g->desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb) ||
        cublasLtMatmulDescSetAttribute(g->desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &d_one, sizeof d_one) ||
        cublasLtMatmulDescSetAttribute(g->desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &d_one, sizeof d_one) ||
        cublasLtMatmulDescSetAttribute(g->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi) ||
        cublasLtMatmulDescSetAttribute(g->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias) ||
        cublasLtMatmulDescSetAttribute(g->desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type, sizeof bias_type) ||
        cublasLtMatrixLayoutCreate(&g->la, CUDA_R_8F_E4M3, k, m, k) ||
        cublasLtMatrixLayoutCreate(&g->lb, CUDA_R_8F_E4M3, k, n, k) ||
        cublasLtMatrixLayoutCreate(&g->lc, CUDA_R_16BF, m, n, m) || cublasLtMatmulPreferenceCreate(&pref) ||
        cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &g->ws_bytes,
                                             sizeof g->ws_bytes) ||
        cublasLtMatmulAlgoGetHeuristic(g->lt, g->desc, g->la, g->lb, g->lc, g->lc, pref, 1, &res, &returned) ||
        returned == 0) {
        fprintf(stderr, "  fp8 gemm n=%d: cuBLASLt has no algorithm (or a setup call failed)\n", n);
        if (pref) cublasLtMatmulPreferenceDestroy(pref);
        fp8_gemm_release(g);
        return;
    }
    cublasLtMatmulPreferenceDestroy(pref);
    g->algo = res.algo;
    g->ok = 1;
}

typedef struct {
    int kind;          /* E_* for a path, N_E2E + K_* for a piece */
    gpu_attn_ctx *ctx;
    bufs *b;
    const uint16_t *qkv;
    const float *cos_t, *sin_t;
    float *state;      /* FP8 state block of one layer (slots, amax, ring) */
    uint16_t *out;     /* [T, H*HD] bf16: what the output projection reads */
    int T;
    gpu_gemm *gemm;
    const uint16_t *w, *bias;
    uint16_t *y;
    fp8_gemm *g8;
    const uint8_t *w8;
} e2e_arg;

#define LAUNCH(call)                                             \
    do {                                                         \
        cudaError_t e_ = (call);                                 \
        if (e_ != cudaSuccess)                                   \
            return vitd_fail(err, VITD_E_GPU, "%s: %s", #call, cudaGetErrorString(e_)); \
    } while (0)

static int e2e_call(void *arg, cudaStream_t s, vitd_err *err) {
    e2e_arg *a = arg;
    bufs *b = a->b;
    float *amax = a->state + FP8_STATE_AMAX;
    const int T = a->T;
    switch (a->kind) {
    case E_BF16_PACKED:
    case E_BF16_FULL:
    case E_BF16_AUTO:
    case E_BF16_ROPEPACK:
        if (a->kind == E_BF16_ROPEPACK)
            LAUNCH(rope_pack_qkv_bf16(a->qkv, a->cos_t, a->sin_t, T, H, HD, DP, b->q, b->k, b->v, s));
        else
            LAUNCH(fp8_quant_qkv_rope_bf16(a->qkv, a->cos_t, a->sin_t, T, H, HD, DP, b->q, b->k, b->v, s));
        if (gpu_attn_bf16(a->ctx, b->q, b->k, b->v, b->o, s, err)) return -1;
        LAUNCH(attn_unpack_bf16(b->o, T, H, HD, DP, a->out, s));
        return 0;
    case E_FP8:
    case E_FP8_ONE:
    case E_FP8_SEP:
        LAUNCH(fp8_quant_qkv_rope(a->qkv, a->cos_t, a->sin_t, T, H, HD, DP, a->state, amax, b->q8, b->k8, b->v8, s));
        if (gpu_attn_fp8(a->ctx, b->q8, b->k8, b->v8, b->o8, a->state, s, err)) return -1;
        if (a->kind == E_FP8_SEP) {
            LAUNCH(fp8_quant_dequant_o(b->o8, T, H, HD, DP, a->state, 0, a->out, s));
            LAUNCH(fp8_quant_ring_update(a->state, HIST, s));
        } else {
            LAUNCH(fp8_quant_dequant_o(b->o8, T, H, HD, DP, a->state, HIST, a->out, s));
        }
        return 0;
    case N_E2E + K_ROPE:
        LAUNCH(rope_pack_qkv_bf16(a->qkv, a->cos_t, a->sin_t, T, H, HD, DP, b->q, b->k, b->v, s));
        return 0;
    case N_E2E + K_ROPE_FAST:
        LAUNCH(fp8_quant_qkv_rope_bf16(a->qkv, a->cos_t, a->sin_t, T, H, HD, DP, b->q, b->k, b->v, s));
        return 0;
    case N_E2E + K_UNPACK:
        LAUNCH(attn_unpack_bf16(b->o, T, H, HD, DP, a->out, s));
        return 0;
    case N_E2E + K_QUANT:
        LAUNCH(fp8_quant_qkv_rope(a->qkv, a->cos_t, a->sin_t, T, H, HD, DP, a->state, amax, b->q8, b->k8, b->v8, s));
        return 0;
    case N_E2E + K_QUANT_STATIC:
        LAUNCH(fp8_quant_qkv_rope(a->qkv, a->cos_t, a->sin_t, T, H, HD, DP, a->state, NULL, b->q8, b->k8, b->v8, s));
        return 0;
    case N_E2E + K_AMAX:
        LAUNCH(fp8_quant_qkv_amax(a->qkv, a->cos_t, a->sin_t, T, H, HD, amax, s));
        return 0;
    case N_E2E + K_DEQUANT:
        LAUNCH(fp8_quant_dequant_o(b->o8, T, H, HD, DP, a->state, HIST, a->out, s));
        return 0;
    case N_E2E + K_UNPACK_FP8:
        LAUNCH(attn_unpack_fp8(b->o8, T, H, HD, DP, a->state, a->out, s));
        return 0;
    case N_E2E + K_RING:
        LAUNCH(fp8_quant_ring_update(a->state, HIST, s));
        return 0;
    case N_E2E + K_GEMM_BF16:
        return gpu_gemm_bf16(a->gemm, a->out, a->w, a->bias, a->y, T, DMODEL, DMODEL, GEMM_EPI_BIAS, 1, s, err);
    case N_E2E + K_GEMM_FP8: {
        if (!a->g8->ok) return vitd_fail(err, VITD_E_UNSUPPORTED, "no FP8 GEMM");
        const float one = 1.0f, zero = 0.0f;
        cublasStatus_t st = cublasLtMatmul(a->g8->lt, a->g8->desc, &one, a->w8, a->g8->la, b->o8, a->g8->lb, &zero,
                                           a->y, a->g8->lc, a->y, a->g8->lc, &a->g8->algo, a->g8->ws,
                                           a->g8->ws_bytes, s);
        if (st != CUBLAS_STATUS_SUCCESS) return vitd_fail(err, VITD_E_GPU, "cublasLtMatmul fp8: %d", (int)st);
        return 0;
    }
    }
    return vitd_fail(err, VITD_E_INVALID_ARG, "kind %d", a->kind);
}

static double best_ms(const result *r) { return r->graph_ms > 0 && r->graph_ms < r->ms ? r->graph_ms : r->ms; }

/* Bytes a piece moves (reads + writes) for T tokens, for GB/s; 0 where not meaningful. */
static double piece_bytes(int k, double T) {
    const double qkv = T * 3 * H * HD * 2, tabs = T * HD / 2 * 4 * 2;
    switch (k) {
    case K_ROPE:
    case K_ROPE_FAST: return qkv + tabs + 3 * T * H * DP * 2;
    case K_UNPACK: return 2 * T * H * HD * 2;
    case K_QUANT:
    case K_QUANT_STATIC: return qkv + tabs + 3 * T * H * DP;
    case K_AMAX: return qkv + tabs;
    case K_DEQUANT:
    case K_UNPACK_FP8: return T * H * HD + T * H * HD * 2;
    default: return 0;
    }
}

static void run_e2e(gpu_attn_ctx *ctx, gpu_attn_ctx *ctx1, bcase *cs, int nc, const char *only, bufs *b,
                    const uint16_t *d_qkv, int max_t, cudaStream_t s, int iters, int use_graph) {
    const size_t rows = (size_t)max_t + GPU_ATTN_SLACK_ROWS;
    vitd_err err = {0, ""};
    /* rotary tables: token t at grid (t / 64 % 128, t % 64) */
    float inv_freq[HD / 4];
    cpu_rope_inv_freq(HD, 10000.0, inv_freq);
    float *hc = malloc(rows * HD / 2 * sizeof(float)), *hs = malloc(rows * HD / 2 * sizeof(float));
    for (size_t t = 0; t < rows; t++)
        for (int i = 0; i < HD / 2; i++) {
            float pos = i < HD / 4 ? (float)(t / 64 % 128) : (float)(t % 64);
            float ang = pos * inv_freq[i % (HD / 4)];
            hc[t * HD / 2 + i] = (float)cos((double)ang);
            hs[t * HD / 2 + i] = (float)sin((double)ang);
        }
    float *d_cos, *d_sin, *d_state, *d_one;
    uint16_t *d_out, *d_w, *d_bias, *d_y;
    uint8_t *d_w8;
    CUDA_CHECK(cudaMalloc((void **)&d_cos, rows * HD / 2 * sizeof(float)));
    CUDA_CHECK(cudaMalloc((void **)&d_sin, rows * HD / 2 * sizeof(float)));
    CUDA_CHECK(cudaMemcpy(d_cos, hc, rows * HD / 2 * sizeof(float), cudaMemcpyHostToDevice));
    CUDA_CHECK(cudaMemcpy(d_sin, hs, rows * HD / 2 * sizeof(float), cudaMemcpyHostToDevice));
    free(hc);
    free(hs);
    CUDA_CHECK(cudaMalloc((void **)&d_state, fp8_state_floats(HIST) * sizeof(float)));
    CUDA_CHECK(cudaMemset(d_state, 0, fp8_state_floats(HIST) * sizeof(float)));
    CUDA_CHECK(cudaMalloc((void **)&d_out, rows * DMODEL * 2));
    CUDA_CHECK(cudaMalloc((void **)&d_y, rows * DMODEL * 2));
    CUDA_CHECK(cudaMalloc((void **)&d_w, (size_t)DMODEL * DMODEL * 2));
    CUDA_CHECK(cudaMalloc((void **)&d_w8, (size_t)DMODEL * H * DP));
    CUDA_CHECK(cudaMalloc((void **)&d_bias, DMODEL * 2));
    CUDA_CHECK(cudaMalloc((void **)&d_one, sizeof(float)));
    CUDA_CHECK(cudaMemset(d_w, 0x3c, (size_t)DMODEL * DMODEL * 2)); /* bf16 0x3c3c ~ 0.0115 */
    CUDA_CHECK(cudaMemset(d_w8, 0x28, (size_t)DMODEL * H * DP));     /* E4M3 0x28 = 0.125 */
    CUDA_CHECK(cudaMemset(d_bias, 0, DMODEL * 2));
    CUDA_CHECK(cudaMemset(d_y, 0, rows * DMODEL * 2));
    const float one = 1.0f;
    CUDA_CHECK(cudaMemcpy(d_one, &one, sizeof one, cudaMemcpyHostToDevice));
    /* a first dynamic step over the whole buffer: scales from its own amax */
    CUDA_CHECK(fp8_quant_qkv_amax(d_qkv, d_cos, d_sin, max_t, H, HD, d_state + FP8_STATE_AMAX, s));
    CUDA_CHECK(fp8_quant_first_scales(d_state, s));
    CUDA_CHECK(fp8_quant_ring_update(d_state, HIST, s));
    gpu_gemm *gemm = NULL;
    if (gpu_gemm_create((size_t)32 << 20, &gemm, &err)) fprintf(stderr, "  gpu_gemm_create: %s\n", err.msg);
    fp8_gemm g8;
    memset(&g8, 0, sizeof g8);
    g8.ws_bytes = (size_t)32 << 20;
    CUDA_CHECK(cudaMalloc(&g8.ws, g8.ws_bytes));
    if (cublasLtCreate(&g8.lt) != CUBLAS_STATUS_SUCCESS) fprintf(stderr, "  cublasLtCreate failed\n");
    const int fp8_ok = gpu_attn_opts_of(ctx)->fp8;

    static result res[32][N_E2E], pieces[32][N_PIECES];
    memset(res, 0, sizeof res);
    memset(pieces, 0, sizeof pieces);
    for (int ci = 0; ci < nc; ci++) {
        bcase *bc = &cs[ci];
        if (only && !strstr(only, bc->name)) continue;
        int32_t cu[MAX_IMAGES + 1];
        cu[0] = 0;
        for (int i = 0; i < bc->n; i++) cu[i + 1] = cu[i] + bc->lens[i];
        const int T = cu[bc->n];
        CUDA_CHECK(cudaMemcpy(b->cu, cu, sizeof(int32_t) * (bc->n + 1), cudaMemcpyHostToDevice));
        e2e_arg a = {0, NULL, b, d_qkv, d_cos, d_sin, d_state, d_out, T, gemm, d_w, d_bias, d_y, &g8, d_w8};
        enum { ROUNDS = 3 };
        result rr[ROUNDS][N_E2E];
        memset(rr, 0, sizeof rr);
        for (int round = 0; round < ROUNDS; round++)
            for (int p = 0; p < N_E2E; p++) {
                if (p >= E_FP8 && !fp8_ok) continue;
                gpu_attn_ctx *use = p == E_FP8_ONE ? ctx1 : ctx;
                result *r = &rr[round][p];
                if (begin_path(use, e2e_attn_path[p], bc, b->cu, s, r->plan, sizeof r->plan)) continue;
                a.kind = p;
                a.ctx = use;
                char label[128];
                snprintf(label, sizeof label, "%s %s", bc->name, e2e_name[p]);
                time_calls(e2e_call, &a, s, iters, use_graph, label, r);
                if (p >= E_FP8) snprintf(r->plan, sizeof r->plan, "%s", gpu_attn_fp8_desc(use));
            }
        for (int p = 0; p < N_E2E; p++) {
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
            printf("e2e case=%s tokens=%d images=%d path=%s ms=%.4f graph_ms=%.4f spread=%.1f%% plan=\"%s\"\n",
                   bc->name, T, bc->n, e2e_name[p], r.ms, r.graph_ms, 100.0 * (ms[k - 1] - ms[0]) / ms[0], r.plan);
            fflush(stdout);
        }
        /* pieces, once each (graph replay); the attention output buffers hold the last path's results */
        if (gemm) fp8_gemm_setup(&g8, T, d_one, d_bias);
        for (int k = 0; k < N_PIECES; k++) {
            if ((k == K_GEMM_BF16 && !gemm) || (k == K_GEMM_FP8 && !g8.ok)) continue;
            a.kind = N_E2E + k;
            char label[128];
            snprintf(label, sizeof label, "%s %s", bc->name, piece_name[k]);
            result *r = &pieces[ci][k];
            time_calls(e2e_call, &a, s, iters, use_graph, label, r);
            if (!r->ok) continue;
            double t = best_ms(r), by = piece_bytes(k, T);
            double fl = k == K_GEMM_BF16 ? 2.0 * T * DMODEL * DMODEL : k == K_GEMM_FP8 ? 2.0 * T * H * DP * DMODEL : 0;
            printf("piece case=%s tokens=%d what=%s ms=%.4f graph_ms=%.4f", bc->name, T, piece_name[k], r->ms,
                   r->graph_ms);
            if (by > 0) printf(" gbps=%.0f", by / (t * 1e-3) / 1e9);
            if (fl > 0) printf(" tflops=%.0f", fl / (t * 1e-3) / 1e12);
            printf("\n");
            fflush(stdout);
        }
    }

    printf("\n| case | tokens |");
    for (int p = 0; p < N_E2E; p++) printf(" %s |", e2e_name[p]);
    printf(" fp8 / best bf16 | best fp8 / best bf16 |\n|---|---:|");
    for (int p = 0; p < N_E2E + 2; p++) printf("---:|");
    printf("\n");
    for (int ci = 0; ci < nc; ci++) {
        if (only && !strstr(only, cs[ci].name)) continue;
        int t = 0;
        for (int j = 0; j < cs[ci].n; j++) t += cs[ci].lens[j];
        printf("| %s | %d |", cs[ci].name, t);
        double bb = 1e30, bf = 1e30;
        for (int p = 0; p < N_E2E; p++) {
            result *r = &res[ci][p];
            if (!r->ok) {
                printf(" - |");
                continue;
            }
            double m = best_ms(r);
            if (p < E_FP8 && m < bb) bb = m;
            if (p >= E_FP8 && p != E_FP8_SEP && m < bf) bf = m;
            printf(" %.4f |", m);
        }
        if (res[ci][E_FP8].ok && bb < 1e30) printf(" %.2fx | %.2fx |\n", bb / best_ms(&res[ci][E_FP8]), bb / bf);
        else printf(" - | - |\n");
    }
    printf("(ms per call from the BF16 QKV to the BF16 projection input; min of stream and CUDA-graph medians; bf16-*"
           " use fp8_quant_qkv_rope_bf16, bf16-auto-ropepack rope.cu's rope_pack_qkv_bf16; best bf16 = min of all"
           " four, best fp8 = min of fp8 and fp8-1launch)\n");
    printf("\n| case | tokens |");
    for (int k = 0; k < N_PIECES; k++) printf(" %s |", piece_name[k]);
    printf("\n|---|---:|");
    for (int k = 0; k < N_PIECES; k++) printf("---:|");
    printf("\n");
    for (int ci = 0; ci < nc; ci++) {
        if (only && !strstr(only, cs[ci].name)) continue;
        int t = 0;
        for (int j = 0; j < cs[ci].n; j++) t += cs[ci].lens[j];
        printf("| %s | %d |", cs[ci].name, t);
        for (int k = 0; k < N_PIECES; k++) {
            if (pieces[ci][k].ok) printf(" %.4f |", best_ms(&pieces[ci][k]));
            else printf(" - |");
        }
        printf("\n");
    }
    printf("(ms per call of each piece alone; proj = the output projection that reads the result)\n");
    fp8_gemm_release(&g8);
    if (g8.lt) cublasLtDestroy(g8.lt);
    cudaFree(g8.ws);
    gpu_gemm_free(gemm);
    cudaFree(d_cos);
    cudaFree(d_sin);
    cudaFree(d_state);
    cudaFree(d_out);
    cudaFree(d_y);
    cudaFree(d_w);
    cudaFree(d_w8);
    cudaFree(d_bias);
    cudaFree(d_one);
}

int main(int argc, char **argv) {
    int iters = 100, use_graph = 1, full_min_len = -1, e2e = 0;
    const char *only = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--iters") && i + 1 < argc) iters = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--full-min-len") && i + 1 < argc) full_min_len = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--no-graph")) use_graph = 0;
        else if (!strcmp(argv[i], "--cases") && i + 1 < argc) only = argv[++i];
        else if (!strcmp(argv[i], "-v")) g_verbose_log = 1;
        else if (!strcmp(argv[i], "--e2e")) e2e = 1;
        else {
            fprintf(stderr,
                    "usage: bench_attn [--e2e] [--iters N] [--full-min-len L] [--no-graph] [--cases a,b] [-v]\n");
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
    /* --e2e: total tokens 1K, 4K, 16K and 64K as single images and as mixed batches */
    static const int mix1k[] = {512, 256, 192, 64}, mix4k[] = {2304, 1024, 512, 256},
                     mix16k[] = {8192, 4096, 2048, 1024, 1024},
                     mix64k[] = {16384, 16384, 16384, 8192, 4096, 2048, 1024, 1024};
    int x16k4[4];
    for (int i = 0; i < 4; i++) x16k4[i] = 16384;
    if (e2e) {
        add_case(cs, &nc, "1x1024", 1, l1k);
        add_case(cs, &nc, "512+256+192+64", 4, mix1k);
        add_case(cs, &nc, "1x4096", 1, l4k);
        add_case(cs, &nc, "2304+1024+512+256", 4, mix4k);
        add_case(cs, &nc, "1x16384", 1, l16k);
        add_case(cs, &nc, "4x4096", 4, x4k4);
        add_case(cs, &nc, "16x1024", 16, x16k1);
        add_case(cs, &nc, "8192+4096+2048+1024+1024", 5, mix16k);
        add_case(cs, &nc, "1x65536", 1, l64k);
        add_case(cs, &nc, "4x16384", 4, x16k4);
        add_case(cs, &nc, "16384x3+8192+4096+2048+1024x2", 8, mix64k);
    } else {
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
    }

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
    if (e2e) {
        run_e2e(ctx, ctx1, cs, nc, only, &b, d_qkv, max_t, s, iters, use_graph);
        gpu_attn_free(ctx);
        gpu_attn_free(ctx1);
        cudaFree(d_qkv);
        return 0;
    }

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
