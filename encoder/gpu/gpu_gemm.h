/* gpu_gemm.h — the engine's linear layers through cuBLASLt: BF16 or FP8 E4M3 in, FP32 accumulate, BF16 (or E4M3)
 * out, with the epilogues cuBLASLt fuses (bias; bias + tanh-GELU) and an optional residual accumulate
 * (y += x W^T + b, by beta = 1 with C = D).
 *
 * FP8 (gpu_gemm_run with gemm_args.fp8 set): both operands E4M3 with one float32 dequantisation factor each on the
 * device (x ~ x_descale * x8, W ~ w_descale * w8; per tensor: cuBLASLt on Hopper takes scalar scales), products
 * summed in float32 with cuBLASLt's periodic promotion into float32 registers, or without it when fast accumulation is on
 * (gpu_gemm_set_fast_accum; the engine's default, config linear_fp8_fast_accum: 6-11% faster encoder streams with
 * FP8 linear on the H100 and no measurable loss in the whole encoder, bench/RESULTS.md issue 14). The output is
 * bf16, or E4M3 (y8 = satfinite(y * y_scale), y_scale a device float) with the amax of the unscaled output written
 * to y_amax: that is how fc1 hands fc2 its input without a pass over memory. Shapes: in and out multiples of 16
 * (cuBLASLt's FP8 rule).
 *
 * Layout: PyTorch's row-major convention. x [n, in], W [out, in] (nn.Linear weight), bias [out], y [n, out].
 * Internally this is the column-major product y^T = W x^T (cuBLASLt is column-major), so no data is transposed.
 *
 * Algorithm choice: cuBLASLt's heuristic, cached per (n rounded up to a power-of-two bucket, in, out, epilogue,
 * accumulate, types), so a steady state queries nothing; matrix layouts are rebuilt per call (host-only, cheap,
 * graph-capturable). With tuning on (gpu_gemm_set_tune; the engine's default, config gemm_tune), a bucket's first
 * call times the heuristic's first 8 candidates on its own operands (into a scratch output and amax, 3 calls each
 * after a warm-up; a one-off cost of a few to tens of milliseconds that the engine's start-up warm-up pays) and
 * keeps the fastest, the heuristic's first unless another is 2% faster. When that first call cannot time (it is
 * inside a graph capture, which the engine never does for a new shape, or the scratch cannot be allocated) the
 * heuristic's first is kept without timing. Every choice made with tuning on is shared by all gpu_gemms of the
 * process on that device (the first made wins, also between threads), so two engines compute the same bits; two
 * processes may choose differently (timing noise) and then differ by float rounding.
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

/* One GEMM of either precision (the FP8 fields NULL: gpu_gemm_bf16's). */
typedef struct {
    const void *x, *w;           /* bf16 operands, or E4M3 when fp8 */
    int fp8;                     /* 1: x and w are E4M3 with x_descale / w_descale */
    const float *x_descale, *w_descale; /* device float32 each (fp8) */
    const void *bias;            /* bf16 [out] or NULL */
    void *y;                     /* bf16 [n, out], or E4M3 when y_scale is set */
    const float *y_scale;        /* fp8 only: device float, y8 = satfinite(y * *y_scale); NULL = bf16 output */
    float *y_amax;               /* fp8 only: device float set to max |y| before scaling, or NULL */
    int n, in, out;
    gemm_epilogue epi;
    int accumulate;              /* bf16 output only */
} gemm_args;
vitd_status gpu_gemm_run(gpu_gemm *g, const gemm_args *a, cudaStream_t stream, vitd_err *err);

/* FP8 fast accumulation on (1) or off (0, the default of gpu_gemm_create) for the following calls. */
void gpu_gemm_set_fast_accum(gpu_gemm *g, int on);

/* Tuning on (1) or off (0, the default of gpu_gemm_create) for shapes not chosen yet. */
void gpu_gemm_set_tune(gpu_gemm *g, int on);

/* What tuning measured over the shapes this gpu_gemm timed: ms_first sums the time per call of the heuristic's first
 * candidate that runs at the call's n, ms_chosen the chosen one's (one call of each shape, at the size it was first
 * seen). */
typedef struct {
    long shapes, changed; /* shapes timed; shapes where another candidate than the heuristic's first won */
    double ms_first, ms_chosen;
} gpu_gemm_tune_stats;
gpu_gemm_tune_stats gpu_gemm_get_tune_stats(const gpu_gemm *g);

/* 1 when cuBLASLt can run an FP8 GEMM of these sizes (in and out multiples of 16). */
int gpu_gemm_fp8_shape_ok(int in, int out);

#endif
