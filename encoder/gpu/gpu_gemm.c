/* gpu_gemm.c — cuBLASLt linear layers for the GPU engine (see gpu_gemm.h). Owns the cuBLASLt handle, the workspace
 * and a small cache of heuristic results keyed by shape bucket. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "gpu_common.h"
#include "gpu_gemm.h"
#include "util.h"

#define GEMM_CACHE 128

typedef struct {
    int n_bucket, in, out, epi, acc, kind;
    cublasLtMatmulAlgo_t algo;
    int valid;
} gemm_entry;

struct gpu_gemm {
    cublasLtHandle_t lt;
    void *workspace;
    size_t workspace_bytes;
    gemm_entry cache[GEMM_CACHE];
    int next_slot; /* round-robin replacement once full */
    int8_t fast_accum; /* VITD_FP8_FAST_ACCUM=1: FP8 products summed without cuBLASLt's periodic promotion */
};

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
    const char *fa = getenv("VITD_FP8_FAST_ACCUM");
    g->fast_accum = fa && !strcmp(fa, "1");
    *out = g;
    return VITD_OK;
fail:
    gpu_gemm_free(g);
    return st;
}

void gpu_gemm_free(gpu_gemm *g) {
    if (!g) return;
    if (g->workspace) cudaFree(g->workspace);
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

    int nb = n_bucket(n);
    gemm_entry *hit = NULL;
    for (int i = 0; i < GEMM_CACHE; i++) {
        gemm_entry *c = &g->cache[i];
        if (c->valid && c->n_bucket == nb && c->in == in && c->out == out && c->epi == epi &&
            c->acc == a->accumulate && c->kind == kind) {
            hit = c;
            break;
        }
    }
    if (!hit) {
        cublasLtMatmulHeuristicResult_t res;
        int returned = 0;
        if ((st = make_pref(g, &pref, err)) != VITD_OK) goto fail;
        /* Choose with the bucket's n, so the cached algorithm suits the whole bucket. */
        cublasLtMatrixLayout_t hb = NULL, hc = NULL, hd = NULL;
        cublasStatus_t hs = cublasLtMatrixLayoutCreate(&hb, t_in, in, nb, in);
        if (hs == CUBLAS_STATUS_SUCCESS) hs = cublasLtMatrixLayoutCreate(&hc, CUDA_R_16BF, out, nb, out);
        if (hs == CUBLAS_STATUS_SUCCESS) hs = cublasLtMatrixLayoutCreate(&hd, t_out, out, nb, out);
        if (hs == CUBLAS_STATUS_SUCCESS)
            hs = cublasLtMatmulAlgoGetHeuristic(g->lt, desc, la, hb, hc, hd, pref, 1, &res, &returned);
        if (hb) cublasLtMatrixLayoutDestroy(hb);
        if (hc) cublasLtMatrixLayoutDestroy(hc);
        if (hd) cublasLtMatrixLayoutDestroy(hd);
        if (hs != CUBLAS_STATUS_SUCCESS || returned == 0) {
            st = vitd_fail(err, VITD_E_GPU, "gemm: cuBLASLt found no algorithm for n=%d in=%d out=%d epilogue %d%s: %s",
                           n, in, out, epi, a->fp8 ? " (fp8)" : "", cublasLtGetStatusName(hs));
            goto fail;
        }
        hit = &g->cache[g->next_slot];
        g->next_slot = (g->next_slot + 1) % GEMM_CACHE;
        *hit = (gemm_entry){nb, in, out, epi, a->accumulate, kind, res.algo, 1};
    }
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
