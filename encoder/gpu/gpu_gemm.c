/* gpu_gemm.c — cuBLASLt linear layers for the GPU engine (see gpu_gemm.h). Owns the cuBLASLt handle, the workspace
 * and a small cache of chosen algorithms keyed by shape bucket; with tuning on, the choice is timed (tune()) and
 * shared by every gpu_gemm of the process on the same device (tuned[]). */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "gpu_common.h"
#include "gpu_gemm.h"
#include "util.h"

#define GEMM_CACHE 128
#define GEMM_TUNED_MAX 512       /* process-wide tuned shapes; past this, tuned choices stay per gpu_gemm */
#define GEMM_CANDIDATES 8        /* heuristic results timed per shape */
#define GEMM_TUNE_REPS 3         /* timed calls per candidate, after one warm-up call */
#define GEMM_TUNE_MIN_GAIN 0.02  /* another candidate replaces the heuristic's first only when 2% faster */

/* What an algorithm choice depends on. All ints and one size_t last: no padding, compared with memcmp. */
typedef struct {
    int device, n_bucket, in, out, epi, acc, kind, fast_accum;
    size_t workspace;
} gemm_key;

typedef struct {
    gemm_key key;
    cublasLtMatmulAlgo_t algo;
    int valid;
} gemm_entry;

struct gpu_gemm {
    cublasLtHandle_t lt;
    void *workspace;
    size_t workspace_bytes;
    int device;
    gemm_entry cache[GEMM_CACHE];
    int next_slot; /* round-robin replacement once full */
    int8_t fast_accum; /* FP8 products summed without cuBLASLt's periodic promotion (gpu_gemm_set_fast_accum) */
    int tune;          /* 1: time the heuristic's candidates at a shape's first sighting (gpu_gemm_set_tune) */
    cudaEvent_t ev[2]; /* tuning's timers, made at the first tuning */
    gpu_gemm_tune_stats stats;
};

/* Choices timed by any gpu_gemm of the process: a second engine (or a test's second one) on the same device runs
 * the same algorithm for the same shape, so their outputs agree bit for bit whatever the timing noise. */
static pthread_mutex_t tuned_mu = PTHREAD_MUTEX_INITIALIZER;
static gemm_entry tuned[GEMM_TUNED_MAX];
static int n_tuned;

_Static_assert(sizeof(gemm_key) == 8 * sizeof(int) + sizeof(size_t), "gemm_key is compared with memcmp: no padding");

/* The index of k's valid entry among e[0..n), or -1: serves the per-gpu_gemm cache and the tuned table. */
static int entry_find(const gemm_entry *e, int n, const gemm_key *k) {
    for (int i = 0; i < n; i++)
        if (e[i].valid && !memcmp(&e[i].key, k, sizeof *k)) return i;
    return -1;
}

/* The table's choice for k: an existing entry wins (another thread may have timed the same shape meanwhile), else
 * *algo is entered. So every gpu_gemm of the process uses the first choice made for a shape, timed or not. */
static void tuned_publish(const gemm_key *k, cublasLtMatmulAlgo_t *algo) {
    static int full_logged;
    pthread_mutex_lock(&tuned_mu);
    const int i = entry_find(tuned, n_tuned, k);
    if (i >= 0) *algo = tuned[i].algo;
    else if (n_tuned < GEMM_TUNED_MAX) tuned[n_tuned++] = (gemm_entry){*k, *algo, 1};
    else if (!full_logged) {
        full_logged = 1;
        vitd_log(VITD_LOG_INFO, "gemm: %d tuned shapes: later ones are not shared between engines", GEMM_TUNED_MAX);
    }
    pthread_mutex_unlock(&tuned_mu);
}

static int tuned_find(const gemm_key *k, cublasLtMatmulAlgo_t *algo) {
    pthread_mutex_lock(&tuned_mu);
    const int i = entry_find(tuned, n_tuned, k);
    if (i >= 0) *algo = tuned[i].algo;
    pthread_mutex_unlock(&tuned_mu);
    return i >= 0;
}

/* Tokens are bucketed to the next power of two (at least 64) for the algorithm choice: the best tile rarely
 * changes inside a bucket, and the cache stays small whatever mix of image sizes arrives. */
static int n_bucket(int n) {
    int b = 64;
    while (b < n) b <<= 1;
    return b;
}

vitd_status gpu_gemm_create(size_t workspace_bytes, gpu_gemm **out, vitd_err *err) {
    vitd_status st = VITD_OK;
    gpu_gemm *g = xcalloc(1, sizeof *g);
    *out = NULL;
    CUBLAS_TRY(cublasLtCreate(&g->lt));
    g->workspace_bytes = workspace_bytes;
    if (workspace_bytes) CUDA_TRY(cudaMalloc(&g->workspace, workspace_bytes));
    CUDA_TRY(cudaGetDevice(&g->device));
    *out = g;
    return VITD_OK;
fail:
    gpu_gemm_free(g);
    return st;
}

void gpu_gemm_free(gpu_gemm *g) {
    if (!g) return;
    if (g->workspace) cudaFree(g->workspace);
    for (int i = 0; i < 2; i++)
        if (g->ev[i]) cudaEventDestroy(g->ev[i]);
    if (g->lt) cublasLtDestroy(g->lt);
    free(g);
}

/* Builds the heuristic preference: the workspace limit, and split-K partial sums only in float32 (the default
 * also allows summing them "in place" or in the output type, i.e. rounded to bf16 once per part).
 * *pref must be destroyed by the caller. */
static vitd_status make_pref(const gpu_gemm *g, cublasLtMatmulPreference_t *pref, vitd_err *err) {
    vitd_status st = VITD_OK;
    const uint32_t schemes = CUBLASLT_REDUCTION_SCHEME_NONE | CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE;
    *pref = NULL;
    CUBLAS_TRY(cublasLtMatmulPreferenceCreate(pref));
    CUBLAS_TRY(cublasLtMatmulPreferenceSetAttribute(*pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                    &g->workspace_bytes, sizeof g->workspace_bytes));
    CUBLAS_TRY(cublasLtMatmulPreferenceSetAttribute(*pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, &schemes,
                                                    sizeof schemes));
    return VITD_OK;
fail:
    if (*pref) cublasLtMatmulPreferenceDestroy(*pref);
    *pref = NULL;
    return st;
}

/* Builds the operation descriptor of a call; *desc must be destroyed by the caller. */
static vitd_status make_desc(const gpu_gemm *g, cublasLtMatmulDesc_t *desc, const gemm_args *a, vitd_err *err) {
    vitd_status st = VITD_OK;
    cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    const gemm_epilogue epi = a->epi;
    cublasLtEpilogue_t e = epi == GEMM_EPI_BIAS ? CUBLASLT_EPILOGUE_BIAS
                         : epi == GEMM_EPI_BIAS_GELU_TANH ? CUBLASLT_EPILOGUE_GELU_BIAS
                                                          : CUBLASLT_EPILOGUE_DEFAULT;
    cudaDataType_t bias_type = CUDA_R_16BF; /* bf16 for FP8 too: C is bf16 in every call here */
    *desc = NULL;
    CUBLAS_TRY(cublasLtMatmulDescCreate(desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    CUBLAS_TRY(cublasLtMatmulDescSetAttribute(*desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
    CUBLAS_TRY(cublasLtMatmulDescSetAttribute(*desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
    CUBLAS_TRY(cublasLtMatmulDescSetAttribute(*desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &e, sizeof e));
    if (epi != GEMM_EPI_NONE) {
        CUBLAS_TRY(cublasLtMatmulDescSetAttribute(*desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &a->bias, sizeof a->bias));
        CUBLAS_TRY(cublasLtMatmulDescSetAttribute(*desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type,
                                                  sizeof bias_type));
    }
    if (a->fp8) {
        /* cuBLASLt's A is the weight, B the activations (the column-major view in gpu_gemm.h) */
        CUBLAS_TRY(cublasLtMatmulDescSetAttribute(*desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &a->w_descale,
                                                  sizeof a->w_descale));
        CUBLAS_TRY(cublasLtMatmulDescSetAttribute(*desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &a->x_descale,
                                                  sizeof a->x_descale));
        if (a->y_scale)
            CUBLAS_TRY(cublasLtMatmulDescSetAttribute(*desc, CUBLASLT_MATMUL_DESC_D_SCALE_POINTER, &a->y_scale,
                                                      sizeof a->y_scale));
        if (a->y_amax)
            CUBLAS_TRY(cublasLtMatmulDescSetAttribute(*desc, CUBLASLT_MATMUL_DESC_AMAX_D_POINTER, &a->y_amax,
                                                      sizeof a->y_amax));
        if (g->fast_accum)
            CUBLAS_TRY(cublasLtMatmulDescSetAttribute(*desc, CUBLASLT_MATMUL_DESC_FAST_ACCUM, &g->fast_accum,
                                                      sizeof g->fast_accum));
    }
    return VITD_OK;
fail:
    if (*desc) cublasLtMatmulDescDestroy(*desc);
    *desc = NULL;
    return st;
}

int gpu_gemm_fp8_shape_ok(int in, int out) { return in > 0 && out > 0 && in % 16 == 0 && out % 16 == 0; }

/* The heuristic cache's key for the call's types: bit 0 FP8 operands, bit 1 FP8 output, bit 2 amax. */
static int kind_of(const gemm_args *a) {
    return a->fp8 ? 1 | (a->y_scale ? 2 : 0) | (a->y_amax ? 4 : 0) : 0;
}

void gpu_gemm_set_tune(gpu_gemm *g, int on) { g->tune = on != 0; }

void gpu_gemm_set_fast_accum(gpu_gemm *g, int on) { g->fast_accum = on != 0; }

gpu_gemm_tune_stats gpu_gemm_get_tune_stats(const gpu_gemm *g) { return g->stats; }

/* Times the candidates on this call's operands, writing a scratch output (y itself is not touched: the residual
 * GEMMs read it; their scratch starts as a copy of y) and a scratch amax, GEMM_TUNE_REPS calls after one warm-up
 * each. Returns the fastest candidate's index (0 unless another is GEMM_TUNE_MIN_GAIN faster than the first), or
 * -1 when nothing could be timed (a capturing stream, no memory for the scratch output, no candidate that runs).
 * desc is left as it came. */
static int tune(gpu_gemm *g, cublasLtMatmulDesc_t desc, cublasLtMatrixLayout_t lay[4], size_t y_bytes,
                const cublasLtMatmulHeuristicResult_t *res, int count, const gemm_args *a, cudaStream_t stream) {
    enum cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
    void *scratch = NULL;
    double ms[GEMM_CANDIDATES];
    int best = -1;
    if (count < 2 || cudaStreamIsCapturing(stream, &cs) != cudaSuccess || cs != cudaStreamCaptureStatusNone)
        return -1;
    for (int i = 0; i < 2; i++)
        if (!g->ev[i] && cudaEventCreate(&g->ev[i]) != cudaSuccess) return -1;
    const size_t amax_at = (y_bytes + 15) & ~(size_t)15; /* a 16-byte aligned float after the output */
    if (cudaMallocAsync(&scratch, amax_at + 16, stream) != cudaSuccess) {
        cudaGetLastError(); /* this allocation's failure (not sticky): keep the heuristic's choice */
        return -1;
    }
    float *amax = a->y_amax ? (float *)((char *)scratch + amax_at) : NULL;
    if (amax && cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_AMAX_D_POINTER, &amax, sizeof amax) !=
                    CUBLAS_STATUS_SUCCESS)
        count = 0;
    if (a->accumulate && cudaMemcpyAsync(scratch, a->y, y_bytes, cudaMemcpyDeviceToDevice, stream) != cudaSuccess)
        count = 0;
    const float alpha = 1.0f, beta = a->accumulate ? 1.0f : 0.0f;
    const void *c_ptr = a->fp8 && a->y_scale ? NULL : scratch;
    int failed = 0;
    for (int i = 0; i < count; i++) {
        ms[i] = -1;
        int ok = 1;
        for (int r = 0; r <= GEMM_TUNE_REPS && ok; r++) {
            if (r == 1) ok = cudaEventRecord(g->ev[0], stream) == cudaSuccess;
            ok = ok && cublasLtMatmul(g->lt, desc, &alpha, a->w, lay[0], a->x, lay[1], &beta, c_ptr, lay[2], scratch,
                                      lay[3], &res[i].algo, g->workspace, g->workspace_bytes,
                                      stream) == CUBLAS_STATUS_SUCCESS;
        }
        float t = 0;
        if (ok && cudaEventRecord(g->ev[1], stream) == cudaSuccess && cudaEventSynchronize(g->ev[1]) == cudaSuccess &&
            cudaEventElapsedTime(&t, g->ev[0], g->ev[1]) == cudaSuccess)
            ms[i] = t / GEMM_TUNE_REPS;
        failed |= ms[i] < 0;
        if (ms[i] >= 0 && (best < 0 || ms[i] < ms[best])) best = i;
    }
    if (amax && cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_AMAX_D_POINTER, &a->y_amax,
                                               sizeof a->y_amax) != CUBLAS_STATUS_SUCCESS)
        best = -2; /* desc could not be restored: the caller fails the call */
    cudaFreeAsync(scratch, stream);
    if (failed) cudaGetLastError(); /* a candidate that failed to launch: its error is this function's */
    if (best == -2) return -2;
    if (best < 0) return -1;
    if (ms[0] >= 0 && ms[best] > (1 - GEMM_TUNE_MIN_GAIN) * ms[0]) best = 0;
    g->stats.shapes++;
    g->stats.changed += best != 0;
    g->stats.ms_first += ms[0] >= 0 ? ms[0] : ms[best];
    g->stats.ms_chosen += ms[best];
    return best;
}

/* The algorithm for this call's shape bucket: the per-gpu_gemm cache, else the process-wide tuned table, else
 * cuBLASLt's heuristic for the bucket's n (timed among its candidates when tuning is on). */
static vitd_status choose_algo(gpu_gemm *g, cublasLtMatmulDesc_t desc, cublasLtMatrixLayout_t lay[4], size_t y_bytes,
                               const gemm_key *key, const gemm_args *a, cudaStream_t stream, const gemm_entry **hit,
                               vitd_err *err) {
    vitd_status st = VITD_OK;
    cublasLtMatmulPreference_t pref = NULL;
    cublasLtMatrixLayout_t hb = NULL, hc = NULL, hd = NULL;
    cublasLtMatmulHeuristicResult_t res[GEMM_CANDIDATES];
    const cudaDataType_t t_in = a->fp8 ? CUDA_R_8F_E4M3 : CUDA_R_16BF;
    const cudaDataType_t t_out = a->fp8 && a->y_scale ? CUDA_R_8F_E4M3 : CUDA_R_16BF;
    const int nb = key->n_bucket, in = a->in, out = a->out;
    int returned = 0, pick = 0;
    cublasLtMatmulAlgo_t algo;
    const int c = entry_find(g->cache, GEMM_CACHE, key);
    *hit = c >= 0 ? &g->cache[c] : NULL;
    if (*hit) return VITD_OK;
    if (!(g->tune && tuned_find(key, &algo))) {
        if ((st = make_pref(g, &pref, err)) != VITD_OK) goto fail;
        /* Choose with the bucket's n, so the cached algorithm suits the whole bucket. */
        cublasStatus_t hs = cublasLtMatrixLayoutCreate(&hb, t_in, in, nb, in);
        if (hs == CUBLAS_STATUS_SUCCESS) hs = cublasLtMatrixLayoutCreate(&hc, CUDA_R_16BF, out, nb, out);
        if (hs == CUBLAS_STATUS_SUCCESS) hs = cublasLtMatrixLayoutCreate(&hd, t_out, out, nb, out);
        if (hs == CUBLAS_STATUS_SUCCESS)
            hs = cublasLtMatmulAlgoGetHeuristic(g->lt, desc, lay[0], hb, hc, hd, pref, g->tune ? GEMM_CANDIDATES : 1,
                                                res, &returned);
        if (hs != CUBLAS_STATUS_SUCCESS || returned == 0) {
            st = vitd_fail(err, VITD_E_GPU, "gemm: cuBLASLt found no algorithm for n=%d in=%d out=%d epilogue %d%s: %s",
                           a->n, in, out, key->epi, a->fp8 ? " (fp8)" : "", cublasLtGetStatusName(hs));
            goto fail;
        }
        if (g->tune) {
            /* only candidates that run at this call's own n are timed (the bucket's may not all) */
            int m = 0;
            for (int i = 0; i < returned; i++) {
                cublasLtMatmulHeuristicResult_t chk;
                if (cublasLtMatmulAlgoCheck(g->lt, desc, lay[0], lay[1], lay[2], lay[3], &res[i].algo, &chk) ==
                    CUBLAS_STATUS_SUCCESS)
                    res[m++] = res[i];
            }
            pick = m ? tune(g, desc, lay, y_bytes, res, m, a, stream) : -1;
            if (pick == -2) {
                st = vitd_fail(err, VITD_E_GPU, "gemm: could not restore the amax pointer after tuning");
                goto fail;
            }
            if (pick < 0) pick = 0; /* untimed: the heuristic's first (that runs at this n, when any does) */
        }
        algo = res[pick].algo;
        if (g->tune) tuned_publish(key, &algo);
    }
    gemm_entry *slot = &g->cache[g->next_slot];
    g->next_slot = (g->next_slot + 1) % GEMM_CACHE;
    *slot = (gemm_entry){*key, algo, 1};
    *hit = slot;
fail:
    if (hb) cublasLtMatrixLayoutDestroy(hb);
    if (hc) cublasLtMatrixLayoutDestroy(hc);
    if (hd) cublasLtMatrixLayoutDestroy(hd);
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    return st;
}

vitd_status gpu_gemm_bf16(gpu_gemm *g, const void *x, const void *w, const void *bias, void *y, int n, int in,
                          int out, gemm_epilogue epi, int accumulate, cudaStream_t stream, vitd_err *err) {
    gemm_args a = {.x = x, .w = w, .bias = bias, .y = y, .n = n, .in = in, .out = out, .epi = epi,
                   .accumulate = accumulate};
    return gpu_gemm_run(g, &a, stream, err);
}

vitd_status gpu_gemm_run(gpu_gemm *g, const gemm_args *a, cudaStream_t stream, vitd_err *err) {
    vitd_status st = VITD_OK;
    cublasLtMatmulDesc_t desc = NULL;
    cublasLtMatrixLayout_t la = NULL, lb = NULL, lc = NULL, ld = NULL;
    cublasLtMatmulPreference_t pref = NULL;
    const int n = a->n, in = a->in, out = a->out, kind = kind_of(a), epi = (int)a->epi;
    if (n <= 0) return VITD_OK;
    if (a->accumulate && (a->epi == GEMM_EPI_BIAS_GELU_TANH || (a->fp8 && a->y_scale)))
        return vitd_fail(err, VITD_E_INTERNAL, "gemm: accumulate needs a bf16 output without GELU");
    if ((a->epi != GEMM_EPI_NONE) && !a->bias) return vitd_fail(err, VITD_E_INTERNAL, "gemm: epilogue needs a bias");
    if (a->fp8 && (!a->x_descale || !a->w_descale || !gpu_gemm_fp8_shape_ok(in, out)))
        return vitd_fail(err, VITD_E_INTERNAL, "gemm: FP8 needs both descales and in, out multiples of 16 (%d, %d)",
                         in, out);
    /* cuBLASLt answers CUBLAS_STATUS_NOT_SUPPORTED for scale pointers that are not 16-byte aligned (H100) */
    if (a->fp8 && (((uintptr_t)a->x_descale | (uintptr_t)a->w_descale | (uintptr_t)a->y_scale |
                    (uintptr_t)a->y_amax) & 15u))
        return vitd_fail(err, VITD_E_INTERNAL, "gemm: FP8 scale and amax pointers must be 16-byte aligned");
    const cudaDataType_t t_in = a->fp8 ? CUDA_R_8F_E4M3 : CUDA_R_16BF;
    const cudaDataType_t t_out = a->fp8 && a->y_scale ? CUDA_R_8F_E4M3 : CUDA_R_16BF;

    st = make_desc(g, &desc, a, err);
    if (st != VITD_OK) return st;
    /* Column-major views: A = W^T seen as [in, out] (ld in), transposed; B = x^T [in, n] (ld in); C = D = y^T
     * [out, n] (C is bf16 always: with an E4M3 output beta is 0 and C is not read). */
    CUBLAS_TRY(cublasLtMatrixLayoutCreate(&la, t_in, in, out, in));
    CUBLAS_TRY(cublasLtMatrixLayoutCreate(&lb, t_in, in, n, in));
    CUBLAS_TRY(cublasLtMatrixLayoutCreate(&lc, CUDA_R_16BF, out, n, out));
    CUBLAS_TRY(cublasLtMatrixLayoutCreate(&ld, t_out, out, n, out));

    const gemm_key key = {g->device, n_bucket(n), in, out, epi, a->accumulate, kind, g->fast_accum,
                          g->workspace_bytes};
    cublasLtMatrixLayout_t lay[4] = {la, lb, lc, ld};
    const gemm_entry *hit = NULL;
    if ((st = choose_algo(g, desc, lay, (size_t)n * out * (t_out == CUDA_R_16BF ? 2 : 1), &key, a, stream, &hit,
                          err)) != VITD_OK)
        goto fail;
    const float alpha = 1.0f, beta = a->accumulate ? 1.0f : 0.0f;
    /* The bucket's algorithm may not support this exact n (rare): check, and if so ask for this shape itself. */
    const cublasLtMatmulAlgo_t *algo = &hit->algo;
    cublasLtMatmulHeuristicResult_t exact;
    if (cublasLtMatmulAlgoCheck(g->lt, desc, la, lb, lc, ld, algo, &exact) != CUBLAS_STATUS_SUCCESS) {
        int returned = 0;
        if (!pref && (st = make_pref(g, &pref, err)) != VITD_OK) goto fail;
        CUBLAS_TRY(cublasLtMatmulAlgoGetHeuristic(g->lt, desc, la, lb, lc, ld, pref, 1, &exact, &returned));
        if (returned == 0) {
            st = vitd_fail(err, VITD_E_GPU, "gemm: no algorithm for n=%d in=%d out=%d", n, in, out);
            goto fail;
        }
        algo = &exact.algo;
    }
    /* C = D in place for the bf16 outputs (the residual accumulate); an E4M3 output has no C (beta 0): cuBLASLt
     * refuses C and D at one address with different types (CUBLAS_STATUS_INVALID_VALUE) */
    const void *c_ptr = t_out == CUDA_R_16BF ? a->y : NULL;
    CUBLAS_TRY(cublasLtMatmul(g->lt, desc, &alpha, a->w, la, a->x, lb, &beta, c_ptr, lc, a->y, ld, algo, g->workspace,
                              g->workspace_bytes, stream));
fail:
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    if (ld) cublasLtMatrixLayoutDestroy(ld);
    if (lc) cublasLtMatrixLayoutDestroy(lc);
    if (lb) cublasLtMatrixLayoutDestroy(lb);
    if (la) cublasLtMatrixLayoutDestroy(la);
    if (desc) cublasLtMatmulDescDestroy(desc);
    return st;
}
