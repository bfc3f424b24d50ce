/* layernorm.cu — LayerNorm over the last dimension of a bf16 matrix, FP32 statistics (MODEL.md 3.4-3.6).
 *
 * Math (torch nn.LayerNorm on bf16 input, eps 1e-6 in Qwen3-VL): per row x of length dim,
 *   mean = sum(x) / dim,  var = sum((x - mean)^2) / dim   (biased, two passes over registers, float32)
 *   y = bf16( (x - mean) * rsqrt(var + eps) * gamma + beta )   (gamma, beta read as bf16 -> float32)
 * Used for the blocks' norm1/norm2 (dim = d), the final merger's pre-shuffle norm (dim = d) and the deepstack
 * mergers' post-shuffle norm (the residual stream viewed as [N/4, 4d], dim = 4d).
 *
 * Layout: x, y [rows, dim] bf16 row-major (y may equal x: each row is read entirely before it is written);
 * gamma, beta [dim] bf16.
 * Launch: rows of up to 2048 values (d = 1152, the blocks' norms) run one warp per row (ln_warp_kernel, below);
 * longer rows (the deepstack mergers' 4d) one block of LN_THREADS (128) threads per row. Fast path when dim % 8 == 0,
 * 16-byte aligned rows and
 * dim <= 8 * LN_THREADS * LN_MAXC (8192): each thread keeps up to MAXC chunks of 8 values in registers (MAXC = 2
 * for dim <= 2048, 5 for <= 5120, else 8: the smallest that fits, as registers limit occupancy; with MAXC 8 alone,
 * 94 registers, d = 1152 ran at 48 us per 12544 rows, 1.2 TB/s), the chunks of a row spread so that a warp
 * reads 512 contiguous bytes. Otherwise a scalar kernel re-reads the row from global memory (L1-resident) for
 * each pass. Shared memory: 2 x 4 floats for the block reductions.
 * ln_quant (FP8 linear layers, issue 14): the same vector kernel writing E4M3 for the next GEMM (y8 = satfinite(y *
 * scale) straight from the float32 y: one rounding, not two) and/or the amax of y (one atomic per block at most):
 * the quantisation rides on the LayerNorm's own pass over memory, never a pass of its own.
 * Twin: cpu_layernorm (encoder/cpu/cpu_ops.c), then cpu_e4m3_from_f32 for ln_quant. Tests: tests/test_kernels.c
 * (ln_bf16) and tests/test_fp8_linear.c (ln_quant).
 */
#include "common.cuh"
#include "engine_kernels.h"

#define LN_THREADS 128
#define LN_MAXC 8

/* Sum of v over the block (LN_THREADS threads); every thread gets the result. red holds LN_THREADS/32 floats. */
static __device__ __forceinline__ float block_sum(float v, float *red) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (lane == 0) red[warp] = v;
    __syncthreads();
    float s = 0.f;
#pragma unroll
    for (int w = 0; w < LN_THREADS / 32; w++) s += red[w];
    return s;
}

/* Folds a non-negative per-thread maximum into *amax: one atomic per block at most, skipped when the running
 * value (read from L2, never above the true maximum) is already as large. */
static __device__ __forceinline__ void block_amax(float m, float *amax, float *red) {
    m = warp_max(m);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    __syncthreads(); /* red was used by block_sum */
    if (lane == 0) red[warp] = m;
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < LN_THREADS / 32; w++) m = fmaxf(m, red[w]);
        m = fmaxf(m, red[0]);
        if (m > __ldcg(amax)) atomic_max_nonneg(amax, m);
    }
}

/* Chunk c (8 values v of a row, 16-byte aligned) of the normalised row: y = (v - mean) * rstd * gamma + beta in
 * float32, stored as E4M3 (satfinite(y * qs), OUT8) or bf16 into row `row` of yv; returns max(m, |y|). Shared by
 * the block-per-row and the warp-per-row kernels. */
template <bool OUT8>
static __device__ __forceinline__ float ln_store_chunk(const float *v, float mean, float rstd, const uint16_t *gamma,
                                                       const uint16_t *beta, float qs, void *yv, long long row,
                                                       int dim, int c, float m) {
    const uint4 gu = reinterpret_cast<const uint4 *>(gamma)[c], bu = reinterpret_cast<const uint4 *>(beta)[c];
    const uint16_t *gh = reinterpret_cast<const uint16_t *>(&gu);
    const uint16_t *bh = reinterpret_cast<const uint16_t *>(&bu);
    float o[8];
#pragma unroll
    for (int j = 0; j < 8; j++) {
        o[j] = (v[j] - mean) * rstd * bf16_bits_to_f32(gh[j]) + bf16_bits_to_f32(bh[j]);
        m = fmaxf(m, fabsf(o[j]));
    }
    if (OUT8) {
        uint2 q;
        uint8_t *qb = reinterpret_cast<uint8_t *>(&q);
#pragma unroll
        for (int j = 0; j < 8; j++) qb[j] = f32_to_e4m3(o[j] * qs);
        reinterpret_cast<uint2 *>(static_cast<uint8_t *>(yv) + row * dim)[c] = q;
    } else {
        uint4 out;
        uint16_t *oh = reinterpret_cast<uint16_t *>(&out);
#pragma unroll
        for (int j = 0; j < 8; j++) oh[j] = f32_to_bf16_bits(o[j]);
        reinterpret_cast<uint4 *>(static_cast<uint16_t *>(yv) + row * dim)[c] = out;
    }
    return m;
}

/* OUT8: the output is E4M3 (y8 = satfinite(y * *qscale), from the float32 y) instead of bf16; amax (or NULL)
 * collects max |y| of the float32 values. */
template <int MAXC, bool OUT8>
__global__ __launch_bounds__(LN_THREADS) void ln_vec_kernel(const uint16_t *x,
                                                            const uint16_t *__restrict__ gamma,
                                                            const uint16_t *__restrict__ beta,
                                                            void *yv, int dim, float eps,
                                                            const float *__restrict__ qscale, float *amax) {
    __shared__ float red[2][LN_THREADS / 32];
    const long long row = blockIdx.x;
    const int nchunk = dim / 8;
    const uint4 *xr = reinterpret_cast<const uint4 *>(x + row * dim);
    float v[MAXC][8];
    float sum = 0.f;
#pragma unroll
    for (int i = 0; i < MAXC; i++) {
        const int c = threadIdx.x + i * LN_THREADS;
        if (c < nchunk) {
            uint4 u = xr[c];
            const uint16_t *h = reinterpret_cast<const uint16_t *>(&u);
#pragma unroll
            for (int j = 0; j < 8; j++) {
                v[i][j] = bf16_bits_to_f32(h[j]);
                sum += v[i][j];
            }
        }
    }
    const float mean = block_sum(sum, red[0]) / (float)dim;
    float ss = 0.f;
#pragma unroll
    for (int i = 0; i < MAXC; i++) {
        const int c = threadIdx.x + i * LN_THREADS;
        if (c < nchunk) {
#pragma unroll
            for (int j = 0; j < 8; j++) {
                const float dv = v[i][j] - mean;
                ss += dv * dv;
            }
        }
    }
    const float rstd = rsqrtf(block_sum(ss, red[1]) / (float)dim + eps);
    const float qs = OUT8 ? *qscale : 0.f;
    float m = 0.f;
#pragma unroll
    for (int i = 0; i < MAXC; i++) {
        const int c = threadIdx.x + i * LN_THREADS;
        if (c < nchunk) m = ln_store_chunk<OUT8>(v[i], mean, rstd, gamma, beta, qs, yv, row, dim, c, m);
    }
    if (amax) block_amax(m, amax, red[0]);
}

/* One warp per row (LN_WARP_ROWS rows per block) for rows of up to 32 * 8 * MAXC values: the reductions are warp
 * shuffles only, no shared memory and no block barrier, so the kernel streams at close to HBM bandwidth where the
 * block-per-row kernel (two block reductions per row) stalled on its barriers: d = 1152 at 16384 rows moved
 * 1.6 TB/s there (35 us per LayerNorm on the H100, bench/RESULTS.md issue 14). Lane l holds chunks l, l + 32, ...
 * of 8 values, so each step of a warp reads 512 contiguous bytes. Same math as ln_vec_kernel (float32, two
 * passes over registers); the sums run in another order, so results may differ from it in the last bit. */
#define LN_WARP_ROWS 4

template <int MAXC, bool OUT8>
__global__ __launch_bounds__(32 * LN_WARP_ROWS) void ln_warp_kernel(const uint16_t *x,
                                                                    const uint16_t *__restrict__ gamma,
                                                                    const uint16_t *__restrict__ beta, void *yv,
                                                                    int rows, int dim, float eps,
                                                                    const float *__restrict__ qscale, float *amax) {
    const int lane = threadIdx.x & 31;
    const long long row = (long long)blockIdx.x * LN_WARP_ROWS + (threadIdx.x >> 5);
    if (row >= rows) return;
    const int nchunk = dim / 8;
    const uint4 *xr = reinterpret_cast<const uint4 *>(x + row * dim);
    float v[MAXC][8];
    float sum = 0.f;
#pragma unroll
    for (int i = 0; i < MAXC; i++) {
        const int c = lane + 32 * i;
        if (c < nchunk) {
            uint4 u = xr[c];
            const uint16_t *h = reinterpret_cast<const uint16_t *>(&u);
#pragma unroll
            for (int j = 0; j < 8; j++) {
                v[i][j] = bf16_bits_to_f32(h[j]);
                sum += v[i][j];
            }
        }
    }
    for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
    const float mean = sum / (float)dim;
    float ss = 0.f;
#pragma unroll
    for (int i = 0; i < MAXC; i++) {
        if (lane + 32 * i < nchunk) {
#pragma unroll
            for (int j = 0; j < 8; j++) {
                const float dv = v[i][j] - mean;
                ss += dv * dv;
            }
        }
    }
    for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
    const float rstd = rsqrtf(ss / (float)dim + eps);
    const float qs = OUT8 ? *qscale : 0.f;
    float m = 0.f;
#pragma unroll
    for (int i = 0; i < MAXC; i++) {
        const int c = lane + 32 * i;
        if (c < nchunk) m = ln_store_chunk<OUT8>(v[i], mean, rstd, gamma, beta, qs, yv, row, dim, c, m);
    }
    if (amax) {
        m = warp_max(m);
        if (lane == 0 && m > __ldcg(amax)) atomic_max_nonneg(amax, m);
    }
}

/* The warp kernel for dim / 8 <= 32 * MAXC chunks, MAXC the smallest of 2, 5, 8 that fits; 0 if none does. */
template <bool OUT8>
static int ln_warp_launch(int rows, const uint16_t *x, const uint16_t *gamma, const uint16_t *beta, void *y, int dim,
                          float eps, const float *qscale, float *amax, cudaStream_t stream) {
    const int nchunk = dim / 8, blocks = (rows + LN_WARP_ROWS - 1) / LN_WARP_ROWS, t = 32 * LN_WARP_ROWS;
    if (nchunk <= 64)
        ln_warp_kernel<2, OUT8><<<blocks, t, 0, stream>>>(x, gamma, beta, y, rows, dim, eps, qscale, amax);
    else if (nchunk <= 160)
        ln_warp_kernel<5, OUT8><<<blocks, t, 0, stream>>>(x, gamma, beta, y, rows, dim, eps, qscale, amax);
    else if (nchunk <= 256)
        ln_warp_kernel<8, OUT8><<<blocks, t, 0, stream>>>(x, gamma, beta, y, rows, dim, eps, qscale, amax);
    else
        return 0;
    return 1;
}

/* Any dim: three passes over the row in global memory (the row stays in L1). */
__global__ __launch_bounds__(LN_THREADS) void ln_scalar_kernel(const uint16_t *x, const uint16_t *__restrict__ gamma,
                                                               const uint16_t *__restrict__ beta, uint16_t *y,
                                                               int dim, float eps) {
    __shared__ float red[2][LN_THREADS / 32];
    const long long row = blockIdx.x;
    const uint16_t *xr = x + row * dim;
    float sum = 0.f;
    for (int j = threadIdx.x; j < dim; j += LN_THREADS) sum += bf16_bits_to_f32(xr[j]);
    const float mean = block_sum(sum, red[0]) / (float)dim;
    float ss = 0.f;
    for (int j = threadIdx.x; j < dim; j += LN_THREADS) {
        const float dv = bf16_bits_to_f32(xr[j]) - mean;
        ss += dv * dv;
    }
    const float rstd = rsqrtf(block_sum(ss, red[1]) / (float)dim + eps);
    /* Every thread has read its share of the row for both sums (the barriers in block_sum order them), so an
     * in-place write cannot be seen by a read of this row. */
    uint16_t *yr = y + row * dim;
    for (int j = threadIdx.x; j < dim; j += LN_THREADS)
        yr[j] = f32_to_bf16_bits((bf16_bits_to_f32(xr[j]) - mean) * rstd * bf16_bits_to_f32(gamma[j]) +
                                 bf16_bits_to_f32(beta[j]));
}

extern "C" cudaError_t ln_bf16(const uint16_t *x, const uint16_t *gamma, const uint16_t *beta, uint16_t *y, int rows,
                               int dim, float eps, cudaStream_t stream) {
    if (rows <= 0) return cudaSuccess;
    if (dim <= 0) return cudaErrorInvalidValue;
    const bool aligned = (((uintptr_t)x | (uintptr_t)y | (uintptr_t)gamma | (uintptr_t)beta) & 15u) == 0;
    const int nchunk = dim / 8;
    if (dim % 8 == 0 && aligned && ln_warp_launch<false>(rows, x, gamma, beta, y, dim, eps, NULL, NULL, stream))
        return cudaGetLastError();
    if (dim % 8 == 0 && aligned && nchunk <= 2 * LN_THREADS)
        ln_vec_kernel<2, false><<<rows, LN_THREADS, 0, stream>>>(x, gamma, beta, y, dim, eps, NULL, NULL);
    else if (dim % 8 == 0 && aligned && nchunk <= 5 * LN_THREADS)
        ln_vec_kernel<5, false><<<rows, LN_THREADS, 0, stream>>>(x, gamma, beta, y, dim, eps, NULL, NULL);
    else if (dim % 8 == 0 && aligned && nchunk <= LN_MAXC * LN_THREADS)
        ln_vec_kernel<LN_MAXC, false><<<rows, LN_THREADS, 0, stream>>>(x, gamma, beta, y, dim, eps, NULL, NULL);
    else
        ln_scalar_kernel<<<rows, LN_THREADS, 0, stream>>>(x, gamma, beta, y, dim, eps);
    return cudaGetLastError();
}

template <bool OUT8>
static void ln_vec_launch(int nchunk, int rows, const uint16_t *x, const uint16_t *gamma, const uint16_t *beta,
                          void *y, int dim, float eps, const float *qscale, float *amax, cudaStream_t stream) {
    if (nchunk <= 2 * LN_THREADS)
        ln_vec_kernel<2, OUT8><<<rows, LN_THREADS, 0, stream>>>(x, gamma, beta, y, dim, eps, qscale, amax);
    else if (nchunk <= 5 * LN_THREADS)
        ln_vec_kernel<5, OUT8><<<rows, LN_THREADS, 0, stream>>>(x, gamma, beta, y, dim, eps, qscale, amax);
    else
        ln_vec_kernel<LN_MAXC, OUT8><<<rows, LN_THREADS, 0, stream>>>(x, gamma, beta, y, dim, eps, qscale, amax);
}

extern "C" cudaError_t ln_quant(const uint16_t *x, const uint16_t *gamma, const uint16_t *beta, int rows, int dim,
                                float eps, uint16_t *y, uint8_t *y8, const float *scale, float *amax,
                                cudaStream_t stream) {
    if (rows <= 0) return cudaSuccess;
    const uintptr_t bits = (uintptr_t)x | (uintptr_t)gamma | (uintptr_t)beta | (uintptr_t)(y ? (void *)y : y8);
    if (dim <= 0 || dim % 8 || dim / 8 > LN_MAXC * LN_THREADS || (bits & 15u) || (!y == !y8) || (y8 && !scale))
        return cudaErrorInvalidValue;
    if (y8) {
        if (!ln_warp_launch<true>(rows, x, gamma, beta, y8, dim, eps, scale, amax, stream))
            ln_vec_launch<true>(dim / 8, rows, x, gamma, beta, y8, dim, eps, scale, amax, stream);
    } else if (!ln_warp_launch<false>(rows, x, gamma, beta, y, dim, eps, NULL, amax, stream)) {
        ln_vec_launch<false>(dim / 8, rows, x, gamma, beta, y, dim, eps, NULL, amax, stream);
    }
    return cudaGetLastError();
}
