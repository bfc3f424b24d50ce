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
 * Launch: one block of LN_THREADS (128) threads per row. Fast path when dim % 8 == 0, 16-byte aligned rows and
 * dim <= 8 * LN_THREADS * LN_MAXC (8192): each thread keeps up to MAXC chunks of 8 values in registers (MAXC = 2
 * for dim <= 2048, 5 for <= 5120, else 8: the smallest that fits, as registers limit occupancy; with MAXC 8 alone,
 * 94 registers, d = 1152 ran at 48 us per 12544 rows, 1.2 TB/s), the chunks of a row spread so that a warp
 * reads 512 contiguous bytes. Otherwise a scalar kernel re-reads the row from global memory (L1-resident) for
 * each pass. Shared memory: 2 x 4 floats for the block reductions.
 * Twin: cpu_layernorm (encoder/cpu/cpu_ops.c). Test: tests/test_kernels.c rows "ln".
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

template <int MAXC>
__global__ __launch_bounds__(LN_THREADS) void ln_vec_kernel(const uint16_t *x,
                                                            const uint16_t *__restrict__ gamma,
                                                            const uint16_t *__restrict__ beta,
                                                            uint16_t *y, int dim, float eps) {
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
    const uint4 *g4 = reinterpret_cast<const uint4 *>(gamma);
    const uint4 *b4 = reinterpret_cast<const uint4 *>(beta);
    uint4 *yr = reinterpret_cast<uint4 *>(y + row * dim);
#pragma unroll
    for (int i = 0; i < MAXC; i++) {
        const int c = threadIdx.x + i * LN_THREADS;
        if (c < nchunk) {
            uint4 gu = g4[c], bu = b4[c], out;
            const uint16_t *gh = reinterpret_cast<const uint16_t *>(&gu);
            const uint16_t *bh = reinterpret_cast<const uint16_t *>(&bu);
            uint16_t *oh = reinterpret_cast<uint16_t *>(&out);
#pragma unroll
            for (int j = 0; j < 8; j++)
                oh[j] = f32_to_bf16_bits((v[i][j] - mean) * rstd * bf16_bits_to_f32(gh[j]) + bf16_bits_to_f32(bh[j]));
            yr[c] = out;
        }
    }
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
    if (dim % 8 == 0 && aligned && nchunk <= 2 * LN_THREADS)
        ln_vec_kernel<2><<<rows, LN_THREADS, 0, stream>>>(x, gamma, beta, y, dim, eps);
    else if (dim % 8 == 0 && aligned && nchunk <= 5 * LN_THREADS)
        ln_vec_kernel<5><<<rows, LN_THREADS, 0, stream>>>(x, gamma, beta, y, dim, eps);
    else if (dim % 8 == 0 && aligned && nchunk <= LN_MAXC * LN_THREADS)
        ln_vec_kernel<LN_MAXC><<<rows, LN_THREADS, 0, stream>>>(x, gamma, beta, y, dim, eps);
    else
        ln_scalar_kernel<<<rows, LN_THREADS, 0, stream>>>(x, gamma, beta, y, dim, eps);
    return cudaGetLastError();
}
