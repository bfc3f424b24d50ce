/* attn_rope_split.cu — the key-split tiling of vitd's short-image attention (attn_rope.cu has the math, the
 * layouts and the single-pass tilings). One 448x448 image gives 16 heads x 49 warp tiles of 16 query rows: about
 * 1.5 warps per scheduler of an H100, each walking all 13 key blocks in turn, so the single-pass kernels are bound
 * by that serial chain, not by the tensor cores. Here a block of 8 warps owns 64 query rows and splits the keys in
 * two: warps 0-3 take the first half of the key blocks, warps 4-7 the second, each half staging its own K and V
 * tiles (loaded, rotated and stored at the start of each step: no register prefetch, so that two blocks fit on a
 * multiprocessor and the other block's math hides the loads), then the second half hands its (O, row max, row sum)
 * to the first through shared memory and the first combines them:
 *   m = max(m_a, m_b),  l = l_a 2^(m_a - m) + l_b 2^(m_b - m),  O = (O_a 2^(m_a - m) + O_b 2^(m_b - m)) / l.
 * The sum order differs from the single-pass tilings (within rounding, not bit-identical).
 */
#include "attn_mma.cuh"
#include "engine_kernels.h"

using namespace attn_mma;

namespace {

constexpr int BN = 64, BM = 64, THREADS = 256;

/* named barrier `id` over the `n` threads of one half */
__device__ __forceinline__ void half_sync(int id, int n) {
    asm volatile("bar.sync %0, %1;\n" : : "r"(id), "r"(n) : "memory"); /* memory: no shared access moves across */
}

template <int HD, int DP>
__global__ __launch_bounds__(THREADS, 2) void attn_rope_split_kernel(const uint16_t *__restrict__ qkv,
                                                                     const float *__restrict__ cos_t,
                                                                     const float *__restrict__ sin_t,
                                                                     const int32_t *__restrict__ cu, int n_seg,
                                                                     int n_heads, float scale_log2,
                                                                     uint16_t *__restrict__ out) {
    constexpr int LDK = row_stride(DP), LDV = row_stride(HD), KS = DP / 16, NO = HD / 8;
    static_assert(2 * BN * LDK * 2 >= BM * (HD + 2) * 4, "the hand-over of O, m, l fits in the K tiles");
    __shared__ __align__(16) uint16_t Ks[2][BN * LDK]; /* one per half; Ks[0] first holds the Q tile */
    __shared__ __align__(16) uint16_t Vs[2][BN * LDV];
    __shared__ int info[3];

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, tq = lane & 3;
    const int half = warp >> 2, wq = warp & 3, htid = tid & 127, h = blockIdx.y;
    find_tile(cu, n_seg, BM, info);
    __syncthreads();
    if (info[0] < 0) return;
    const long long t0 = info[0];
    const int len = info[1], q0 = info[2];
    const long long ld = 3LL * n_heads * HD;
    const uint16_t *qbase = qkv + (long long)h * HD, *kbase = qbase + (long long)n_heads * HD,
                   *vbase = kbase + (long long)n_heads * HD;

    load_rotated<HD, LDK>(qbase, ld, cos_t, sin_t, t0, q0, BM, len, tid, THREADS, Ks[0]);
    zero_pad_lanes<HD, DP, LDK>(Ks[0], Ks[1], BN, tid, THREADS); /* of Q and K */
    __syncthreads();
    uint32_t qf[KS][4];
    load_q_frags<KS, LDK>(Ks[0] + (wq * 16 + g) * LDK + 2 * tq, qf);
    __syncthreads(); /* the Q tile is read: Ks[0] becomes the first half's K tile */

    float o[NO][4];
#pragma unroll
    for (int n = 0; n < NO; n++) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.f, l1 = 0.f;
    const uint32_t ks = (uint32_t)__cvta_generic_to_shared(Ks[half]) + k_lane_offset<LDK>(lane);
    const uint32_t vs = (uint32_t)__cvta_generic_to_shared(Vs[half]) + v_lane_offset<LDV>(lane);
    const int n_blk = (len + BN - 1) / BN, split = (n_blk + 1) / 2;
    const int kb0 = half ? split : 0, kb1 = half ? n_blk : split;
    for (int kb = kb0; kb < kb1; kb++) {
        const int k0 = kb * BN;
        if (kb > kb0) half_sync(1 + half, 128); /* the half's warps are done with its tiles */
        load_rotated<HD, LDK>(kbase, ld, cos_t, sin_t, t0, k0, BN, len, htid, 128, Ks[half]);
        for (int it = htid; it < BN * (HD / 2); it += 128) {
            const int r = it / (HD / 2), j = (it - r * (HD / 2)) * 2;
            *reinterpret_cast<uint32_t *>(&Vs[half][r * LDV + j]) =
                k0 + r < len ? *reinterpret_cast<const uint32_t *>(vbase + (t0 + k0 + r) * ld + j) : 0u;
        }
        half_sync(1 + half, 128);
        attend_block<BN, KS, NO, LDK, LDV>(qf, ks, vs, k0, len, tq, scale_log2, o, m0, m1, l0, l1);
    }
    l0 = quad_sum(l0);
    l1 = quad_sum(l1);

    /* hand-over: the second half's O [BM][HD] floats, then m and l per row, in the K tiles */
    __syncthreads();
    float *xo = reinterpret_cast<float *>(&Ks[0][0]), *xm = xo + BM * HD, *xl = xm + BM;
    const int ra = wq * 16 + g, rb = ra + 8;
    if (half) {
#pragma unroll
        for (int n = 0; n < NO; n++) {
            const int c = n * 8 + 2 * tq;
            *reinterpret_cast<float2 *>(&xo[ra * HD + c]) = make_float2(o[n][0], o[n][1]);
            *reinterpret_cast<float2 *>(&xo[rb * HD + c]) = make_float2(o[n][2], o[n][3]);
        }
        if (tq == 0) {
            xm[ra] = m0;
            xm[rb] = m1;
            xl[ra] = l0;
            xl[rb] = l1;
        }
    }
    __syncthreads();
    if (half) return;
    const float ma = fmaxf(m0, xm[ra]), mb = fmaxf(m1, xm[rb]);
    const float a0 = exp2f(m0 - ma), b0 = exp2f(xm[ra] - ma), a1 = exp2f(m1 - mb), b1 = exp2f(xm[rb] - mb);
#pragma unroll
    for (int n = 0; n < NO; n++) {
        const int c = n * 8 + 2 * tq;
        const float2 pa = *reinterpret_cast<const float2 *>(&xo[ra * HD + c]);
        const float2 pb = *reinterpret_cast<const float2 *>(&xo[rb * HD + c]);
        o[n][0] = o[n][0] * a0 + pa.x * b0;
        o[n][1] = o[n][1] * a0 + pa.y * b0;
        o[n][2] = o[n][2] * a1 + pb.x * b1;
        o[n][3] = o[n][3] * a1 + pb.y * b1;
    }
    store_rows<HD, DP, NO>(o, l0 * a0 + xl[ra] * b0, l1 * a1 + xl[rb] * b1, out, t0, q0 + ra, len, n_heads, h, tq);
}

template <int HD, int DP>
cudaError_t launch(const uint16_t *qkv, const float *cos_t, const float *sin_t, const int32_t *cu, int n_seg,
                   int n_tokens, int n_heads, uint16_t *o, cudaStream_t stream) {
    const float scale_log2 = 1.4426950408889634f / sqrtf((float)HD);
    const dim3 grid((unsigned)((n_tokens + BM - 1) / BM + n_seg), (unsigned)n_heads);
    attn_rope_split_kernel<HD, DP><<<grid, THREADS, 0, stream>>>(qkv, cos_t, sin_t, cu, n_seg, n_heads, scale_log2,
                                                                  o);
    return cudaGetLastError();
}

}  // namespace

/* Called by attn_rope_bf16_tiled (attn_rope.cu) once the arguments are checked. */
cudaError_t attn_rope_split_launch(const uint16_t *qkv, const float *cos_t, const float *sin_t, const int32_t *cu,
                                   int n_seg, int n_tokens, int n_heads, int head_dim, uint16_t *o,
                                   cudaStream_t stream) {
    if (head_dim == 72) return launch<72, 80>(qkv, cos_t, sin_t, cu, n_seg, n_tokens, n_heads, o, stream);
    return launch<64, 64>(qkv, cos_t, sin_t, cu, n_seg, n_tokens, n_heads, o, stream);
}
