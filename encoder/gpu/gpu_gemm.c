/* gpu_gemm.c — cuBLASLt linear layers for the GPU engine (see gpu_gemm.h). Owns the cuBLASLt handle, the workspace
 * and a small cache of heuristic results keyed by shape bucket. */
#include <stdlib.h>
#include <string.h>

#include "gpu_common.h"
#include "gpu_gemm.h"
#include "util.h"

#define GEMM_CACHE 128

typedef struct {
    int n_bucket, in, out, epi, acc;
    cublasLtMatmulAlgo_t algo;
    int valid;
} gemm_entry;

struct gpu_gemm {
    cublasLtHandle_t lt;
    void *workspace;
    size_t workspace_bytes;
    gemm_entry cache[GEMM_CACHE];
    int next_slot; /* round-robin replacement once full */
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

/* Builds the operation descriptor for an epilogue; *desc must be destroyed by the caller. */
static vitd_status make_desc(cublasLtMatmulDesc_t *desc, gemm_epilogue epi, const void *bias, vitd_err *err) {
    vitd_status st = VITD_OK;
    cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    cublasLtEpilogue_t e = epi == GEMM_EPI_BIAS ? CUBLASLT_EPILOGUE_BIAS
                         : epi == GEMM_EPI_BIAS_GELU_TANH ? CUBLASLT_EPILOGUE_GELU_BIAS
                                                          : CUBLASLT_EPILOGUE_DEFAULT;
    cudaDataType_t bias_type = CUDA_R_16BF;
    *desc = NULL;
    CUBLAS_TRY(cublasLtMatmulDescCreate(desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    CUBLAS_TRY(cublasLtMatmulDescSetAttribute(*desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
    CUBLAS_TRY(cublasLtMatmulDescSetAttribute(*desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
    CUBLAS_TRY(cublasLtMatmulDescSetAttribute(*desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &e, sizeof e));
    if (epi != GEMM_EPI_NONE) {
        CUBLAS_TRY(cublasLtMatmulDescSetAttribute(*desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias));
        CUBLAS_TRY(cublasLtMatmulDescSetAttribute(*desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type,
                                                  sizeof bias_type));
    }
    return VITD_OK;
fail:
    if (*desc) cublasLtMatmulDescDestroy(*desc);
    *desc = NULL;
    return st;
}

vitd_status gpu_gemm_bf16(gpu_gemm *g, const void *x, const void *w, const void *bias, void *y, int n, int in,
                          int out, gemm_epilogue epi, int accumulate, cudaStream_t stream, vitd_err *err) {
    vitd_status st = VITD_OK;
    cublasLtMatmulDesc_t desc = NULL;
    cublasLtMatrixLayout_t la = NULL, lb = NULL, lc = NULL;
    cublasLtMatmulPreference_t pref = NULL;
    if (n <= 0) return VITD_OK;
    if (accumulate && epi == GEMM_EPI_BIAS_GELU_TANH)
        return vitd_fail(err, VITD_E_INTERNAL, "gemm: accumulate with a GELU epilogue is not supported");
    if ((epi != GEMM_EPI_NONE) && !bias) return vitd_fail(err, VITD_E_INTERNAL, "gemm: epilogue needs a bias");

    st = make_desc(&desc, epi, bias, err);
    if (st != VITD_OK) return st;
    /* Column-major views: A = W^T seen as [in, out] (ld in), transposed; B = x^T [in, n] (ld in); C = y^T [out, n]. */
    CUBLAS_TRY(cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, in, out, in));
    CUBLAS_TRY(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, in, n, in));
    CUBLAS_TRY(cublasLtMatrixLayoutCreate(&lc, CUDA_R_16BF, out, n, out));

    int nb = n_bucket(n);
    gemm_entry *hit = NULL;
    for (int i = 0; i < GEMM_CACHE; i++) {
        gemm_entry *c = &g->cache[i];
        if (c->valid && c->n_bucket == nb && c->in == in && c->out == out && c->epi == (int)epi &&
            c->acc == accumulate) {
            hit = c;
            break;
        }
    }
    if (!hit) {
        cublasLtMatmulHeuristicResult_t res;
        int returned = 0;
        if ((st = make_pref(g, &pref, err)) != VITD_OK) goto fail;
        /* Choose with the bucket's n, so the cached algorithm suits the whole bucket. */
        cublasLtMatrixLayout_t hb = NULL, hc = NULL;
        CUBLAS_TRY(cublasLtMatrixLayoutCreate(&hb, CUDA_R_16BF, in, nb, in));
        if (cublasLtMatrixLayoutCreate(&hc, CUDA_R_16BF, out, nb, out) != CUBLAS_STATUS_SUCCESS) {
            cublasLtMatrixLayoutDestroy(hb);
            st = vitd_fail(err, VITD_E_GPU, "gemm: layout for %dx%dx%d", nb, in, out);
            goto fail;
        }
        cublasStatus_t hs = cublasLtMatmulAlgoGetHeuristic(g->lt, desc, la, hb, hc, hc, pref, 1, &res, &returned);
        cublasLtMatrixLayoutDestroy(hb);
        cublasLtMatrixLayoutDestroy(hc);
        if (hs != CUBLAS_STATUS_SUCCESS || returned == 0) {
            st = vitd_fail(err, VITD_E_GPU, "gemm: cuBLASLt found no algorithm for n=%d in=%d out=%d epilogue %d: %s",
                           n, in, out, (int)epi, cublasLtGetStatusName(hs));
            goto fail;
        }
        hit = &g->cache[g->next_slot];
        g->next_slot = (g->next_slot + 1) % GEMM_CACHE;
        *hit = (gemm_entry){nb, in, out, (int)epi, accumulate, res.algo, 1};
    }
    const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
    /* The bucket's algorithm may not support this exact n (rare): check, and if so ask for this shape itself. */
    const cublasLtMatmulAlgo_t *algo = &hit->algo;
    cublasLtMatmulHeuristicResult_t exact;
    if (cublasLtMatmulAlgoCheck(g->lt, desc, la, lb, lc, lc, algo, &exact) != CUBLAS_STATUS_SUCCESS) {
        int returned = 0;
        if (!pref && (st = make_pref(g, &pref, err)) != VITD_OK) goto fail;
        CUBLAS_TRY(cublasLtMatmulAlgoGetHeuristic(g->lt, desc, la, lb, lc, lc, pref, 1, &exact, &returned));
        if (returned == 0) {
            st = vitd_fail(err, VITD_E_GPU, "gemm: no algorithm for n=%d in=%d out=%d", n, in, out);
            goto fail;
        }
        algo = &exact.algo;
    }
    CUBLAS_TRY(cublasLtMatmul(g->lt, desc, &alpha, w, la, x, lb, &beta, y, lc, y, lc, algo, g->workspace,
                              g->workspace_bytes, stream));
fail:
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    if (lc) cublasLtMatrixLayoutDestroy(lc);
    if (lb) cublasLtMatrixLayoutDestroy(lb);
    if (la) cublasLtMatrixLayoutDestroy(la);
    if (desc) cublasLtMatmulDescDestroy(desc);
    return st;
}
