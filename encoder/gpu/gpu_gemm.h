/* gpu_gemm.h — the engine's linear layers through cuBLASLt: BF16 in, FP32 accumulate, BF16 out, with the epilogues
 * cuBLASLt fuses (bias; bias + tanh-GELU) and an optional residual accumulate (y += x W^T + b, by beta = 1 with C = D).
 *
 * Layout: PyTorch's row-major convention. x [n, in], W [out, in] (nn.Linear weight), bias [out], y [n, out].
 * Internally this is the column-major product y^T = W x^T (cuBLASLt is column-major), so no data is transposed.
 *
 * Algorithm choice: cuBLASLt's heuristic, cached per (n rounded up to a bucket, in, out, epilogue, accumulate), so a
 * steady state queries nothing; matrix layouts are rebuilt per call (host-only, cheap, graph-capturable).
 * A gpu_gemm owns its cuBLASLt handle and workspace (allocated at creation). One gpu_gemm is used by one thread.
 */
#ifndef VITD_GPU_GEMM_H
#define VITD_GPU_GEMM_H

#include <cuda_runtime_api.h>
#include <stddef.h>

#include "vitd.h"

typedef struct gpu_gemm gpu_gemm;

typedef enum {
    GEMM_EPI_NONE = 0,       /* y = x W^T */
    GEMM_EPI_BIAS,           /* y = x W^T + b */
    GEMM_EPI_BIAS_GELU_TANH, /* y = gelu_tanh(x W^T + b) (cuBLASLt's GELU is the tanh approximation) */
} gemm_epilogue;

vitd_status gpu_gemm_create(size_t workspace_bytes, gpu_gemm **out, vitd_err *err);
void gpu_gemm_free(gpu_gemm *g);

/* y[n, out] = epi(x[n, in] W[out, in]^T + bias) (+ y if accumulate). All bf16 device pointers (bias bf16 [out]).
 * accumulate requires epi != GELU (the residual is added after the epilogue otherwise). */
vitd_status gpu_gemm_bf16(gpu_gemm *g, const void *x, const void *w, const void *bias, void *y, int n, int in,
                          int out, gemm_epilogue epi, int accumulate, cudaStream_t stream, vitd_err *err);

#endif
