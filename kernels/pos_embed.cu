/* pos_embed.cu — the learned position embedding, bilinearly resampled to each image's grid in merge order and
 * added to the patch embeddings (MODEL.md 3.2, transformers 5.17's get_vision_interpolation_indices_and_weights).
 *
 * Math, per token at grid (row, col) of a frame of h x w patches, over the side x side table (side = 48):
 *   src_r = float(row*(side-1)) / float(max(h-1, 1))   (one IEEE division)   r0 = floor(src_r), fr = src_r - r0
 *   r1 = min(r0+1, side-1), wr0 = 1 - fr, wr1 = 1 - |fr - 1|            (columns likewise with w)
 *   pe = ((e(r0,c0) wr0wc0 + e(r0,c1) wr0wc1) + e(r1,c0) wr1wc0) + e(r1,c1) wr1wc1     float32, no FMA
 *   x  = bf16( float(x) + float(bf16(pe)) )           HF casts pe to bf16, then adds in bf16
 * Every product and sum uses the _rn intrinsics so nvcc cannot contract them into FMAs: the sum then equals the
 * CPU twin's bit for bit (the test checks the bf16 result exactly, up to the twin's own double-rounding).
 *
 * Layout: x [n_tokens, d] bf16 (in place); table [side*side, d] float32 (pos_embed.weight upcast once at
 * upload, entry (r, c) at row r*side + c); tok [n_tokens, 4] int32 {row, col, h, w}.
 * Launch: one thread per 4 consecutive channels of one token (float4 table reads, 8-byte bf16 reads/writes)
 * when d % 4 == 0 and pointers are aligned, else one thread per channel; 256 threads per block, grid-stride.
 * The bilinear weights are recomputed per thread (a dozen float ops, cheaper than a second pass).
 * No shared memory. Twin: cpu_pos_embed. Test: tests/test_kernels.c rows "pos_embed".
 */
#include "common.cuh"
#include "engine_kernels.h"

/* One axis of align_corners=True sampling, exactly as cpu_ops.c interp_axis. */
static __device__ __forceinline__ void interp_axis(int pos, int len, int side, int *i0, int *i1, float *w0,
                                                   float *w1) {
    const float src = __fdiv_rn((float)(pos * (side - 1)), (float)(len > 1 ? len - 1 : 1));
    const float fl = floorf(src);
    const float fr = __fsub_rn(src, fl);
    int a = (int)fl;
    if (a > side - 1) a = side - 1;
    *i0 = a;
    *i1 = a + 1 < side - 1 ? a + 1 : side - 1;
    *w0 = __fsub_rn(1.0f, fr);
    *w1 = __fsub_rn(1.0f, fabsf(__fsub_rn(fr, 1.0f)));
}

template <int V>
__global__ __launch_bounds__(256) void pos_embed_add_kernel(uint16_t *__restrict__ x,
                                                            const float *__restrict__ table, int side, int d,
                                                            const int4 *__restrict__ tok, int n_tokens) {
    const int cpt = d / V; /* chunks per token */
    const long long total = (long long)n_tokens * cpt;
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += (long long)gridDim.x * blockDim.x) {
        const long long t = idx / cpt;
        const int c0 = (int)(idx - t * cpt) * V;
        const int4 g = tok[t]; /* row, col, h, w */
        int r0, r1, q0, q1;
        float wr0, wr1, wc0, wc1;
        interp_axis(g.x, g.z, side, &r0, &r1, &wr0, &wr1);
        interp_axis(g.y, g.w, side, &q0, &q1, &wc0, &wc1);
        const float w00 = __fmul_rn(wr0, wc0), w01 = __fmul_rn(wr0, wc1);
        const float w10 = __fmul_rn(wr1, wc0), w11 = __fmul_rn(wr1, wc1);
        const float *e00 = table + ((long long)r0 * side + q0) * d + c0;
        const float *e01 = table + ((long long)r0 * side + q1) * d + c0;
        const float *e10 = table + ((long long)r1 * side + q0) * d + c0;
        const float *e11 = table + ((long long)r1 * side + q1) * d + c0;
        float a00[V], a01[V], a10[V], a11[V];
        uint16_t xv[V];
        uint16_t *xp = x + t * d + c0;
        if (V == 4) {
            const float4 f00 = *reinterpret_cast<const float4 *>(e00), f01 = *reinterpret_cast<const float4 *>(e01);
            const float4 f10 = *reinterpret_cast<const float4 *>(e10), f11 = *reinterpret_cast<const float4 *>(e11);
            a00[0] = f00.x; a00[1] = f00.y; a00[2] = f00.z; a00[3] = f00.w;
            a01[0] = f01.x; a01[1] = f01.y; a01[2] = f01.z; a01[3] = f01.w;
            a10[0] = f10.x; a10[1] = f10.y; a10[2] = f10.z; a10[3] = f10.w;
            a11[0] = f11.x; a11[1] = f11.y; a11[2] = f11.z; a11[3] = f11.w;
            const uint2 u = *reinterpret_cast<const uint2 *>(xp);
            const uint16_t *h = reinterpret_cast<const uint16_t *>(&u);
#pragma unroll
            for (int j = 0; j < V; j++) xv[j] = h[j];
        } else {
#pragma unroll
            for (int j = 0; j < V; j++) {
                a00[j] = e00[j]; a01[j] = e01[j]; a10[j] = e10[j]; a11[j] = e11[j];
                xv[j] = xp[j];
            }
        }
#pragma unroll
        for (int j = 0; j < V; j++) {
            float acc = __fmul_rn(a00[j], w00);
            acc = __fadd_rn(acc, __fmul_rn(a01[j], w01));
            acc = __fadd_rn(acc, __fmul_rn(a10[j], w10));
            acc = __fadd_rn(acc, __fmul_rn(a11[j], w11));
            const float pe = bf16_bits_to_f32(f32_to_bf16_bits(acc));
            xv[j] = f32_to_bf16_bits(__fadd_rn(bf16_bits_to_f32(xv[j]), pe));
        }
        if (V == 4) {
            uint2 u;
            uint16_t *h = reinterpret_cast<uint16_t *>(&u);
#pragma unroll
            for (int j = 0; j < V; j++) h[j] = xv[j];
            *reinterpret_cast<uint2 *>(xp) = u;
        } else {
#pragma unroll
            for (int j = 0; j < V; j++) xp[j] = xv[j];
        }
    }
}

extern "C" cudaError_t pos_embed_add_bf16(uint16_t *x, const float *table, int side, int d, const int32_t *tok,
                                          int n_tokens, cudaStream_t stream) {
    if (n_tokens <= 0) return cudaSuccess;
    if (d <= 0 || side <= 0) return cudaErrorInvalidValue;
    const int threads = 256;
    const bool vec = d % 4 == 0 && (((uintptr_t)x & 7u) | ((uintptr_t)table & 15u)) == 0;
    const long long work = (long long)n_tokens * (vec ? d / 4 : d);
    long long blocks = (work + threads - 1) / threads;
    if (blocks > 65535LL * 32) blocks = 65535LL * 32;
    const int4 *t4 = reinterpret_cast<const int4 *>(tok);
    if (vec)
        pos_embed_add_kernel<4><<<(unsigned)blocks, threads, 0, stream>>>(x, table, side, d, t4, n_tokens);
    else
        pos_embed_add_kernel<1><<<(unsigned)blocks, threads, 0, stream>>>(x, table, side, d, t4, n_tokens);
    return cudaGetLastError();
}
