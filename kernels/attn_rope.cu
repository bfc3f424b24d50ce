/* attn_rope.cu — vitd's own BF16 attention for short images, with the 2-D rotary of q and k done while loading
 * (issue 14: one 448x448 image, 784 tokens, spent ~36 us per block in rotary + pack (10 us) and cuDNN's attention
 * (26 us), which at that length fills under one wave of the GPU).
 *
 * Math, per cu_seqlens segment and head (non-causal, as cuDNN's BF16 path and HF's sdpa):
 *   q, k = rotate_half rotary of the QKV output's q and k thirds in float32, rounded to bf16 (exactly
 *          rope_pack_qkv_bf16's arithmetic, so the operands are bit-identical to the cuDNN path's);
 *   s = q k^T (bf16 products, float32 sums on the tensor cores), p = softmax(s * hd^-0.5) by the online
 *   (flash) recurrence in float32 with exp2, p rounded to bf16 for p v, o = (p v) / rowsum(p) rounded to bf16.
 * Output o [N, H, dp] bf16 with lanes hd..dp-1 = 0: the layout the output projection reads (engine_forward.c).
 *
 * Work split (the single-pass tilings; attn_rope_split.cu has the key-split one). One CTA of W warps (4 or 8)
 * owns 16 W query rows of one (segment, head): blockIdx.x walks the segments' tiles in order (the CTA finds its
 * segment from cu_seqlens; the grid has N/(16 W) + n_seg tiles, the spare ones return), blockIdx.y is the head.
 * Each warp keeps its 16 query rows as mma A fragments in registers and runs mma.sync m16n8k16 (bf16 in, float32
 * accumulate): S = Q K^T over dp (pad lanes 0), then O += P V over hd with the score accumulators reused as P's A
 * fragments (the C layout of two n8 tiles is the A layout of one k16 step; attn_mma.cuh's attend_block). Keys
 * arrive in blocks of 64, double-buffered in shared memory: K rotated into [64][dp+8], V row-major [64][hd(+8)]
 * read transposed by ldmatrix (row strides with an odd count of 16-byte units: conflict-free ldmatrix phases);
 * the next block's global loads are issued into registers before the current block's math and stored after it.
 * Rows past a segment's end load as 0 and their scores as -inf.
 * Limits: head_dim 64 (dp 64) or 72 (dp 80); any segment length. Faster than cuDNN only for small batches (the
 * engine measures where, attn_short_max); long ones want cuDNN's Hopper kernels.
 * Twins: cpu_rope_apply (then bf16 rounding) and cpu_attention. Tests: tests/test_attn_rope.c.
 */
#include "attn_mma.cuh"
#include "engine_kernels.h"

using namespace attn_mma;

namespace {

constexpr int BN = 64;  /* keys per step; a CTA of W warps owns 16 W query rows */
/* The tiling of attn_rope_bf16 (engine_kernels.h; bench/RESULTS.md has the three measured). */
#define ATTN_ROPE_DEFAULT ATTN_ROPE_ROWS128

template <int HD, int THREADS>
struct kv_regs {
    static constexpr int HALF = HD / 2, PAIRS = HALF / 2;
    static constexpr int KI = (BN * PAIRS + THREADS - 1) / THREADS, VI = (BN * HALF + THREADS - 1) / THREADS;
    uint32_t ka[KI], kb[KI], v[VI];
    float2 c[KI], s[KI];
};

template <int HD, int DP, int W>
__global__ __launch_bounds__(32 * W) void attn_rope_kernel(const uint16_t *__restrict__ qkv,
                                                            const float *__restrict__ cos_t,
                                                            const float *__restrict__ sin_t,
                                                            const int32_t *__restrict__ cu, int n_seg, int n_heads,
                                                            float scale_log2, uint16_t *__restrict__ out) {
    constexpr int THREADS = 32 * W, BM = 16 * W;
    using R = kv_regs<HD, THREADS>;
    constexpr int HALF = R::HALF, PAIRS = R::PAIRS, LDK = row_stride(DP), LDV = row_stride(HD), KS = DP / 16,
                  NO = HD / 8;
    static_assert(BM <= 2 * BN, "the Q tile is staged in the two K buffers");
    /* two stages of K (rotated, [BN][LDK], lanes >= hd zero) and V ([BN][LDV]); the Q tile passes through Ks (from
     * its second buffer when it fits there, else from the first row of both) */
    __shared__ __align__(16) uint16_t Ks[2][BN * LDK];
    __shared__ __align__(16) uint16_t Vs[2][BN * LDV];
    __shared__ int info[3];

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, tq = lane & 3;
    const int h = blockIdx.y;
    find_tile(cu, n_seg, BM, info);
    __syncthreads();
    if (info[0] < 0) return;
    const long long t0 = info[0];
    const int len = info[1], q0 = info[2];
    const long long ld = 3LL * n_heads * HD;
    const uint16_t *qbase = qkv + (long long)h * HD, *kbase = qbase + (long long)n_heads * HD,
                   *vbase = kbase + (long long)n_heads * HD;

    /* Q tile, rotated, into the K buffers; the pad lanes of both K stages are zeroed once (stores write lanes < hd) */
    uint16_t *const qs = BM <= BN ? Ks[1] : &Ks[0][0]; /* 128 rows: both buffers, as one flat array */
    load_rotated<HD, LDK>(qbase, ld, cos_t, sin_t, t0, q0, BM, len, tid, THREADS, qs);
    zero_pad_lanes<HD, DP, LDK>(Ks[0], Ks[1], BN, tid, THREADS);

    R pre;
    auto load_kv = [&](int k0) {
#pragma unroll
        for (int i = 0; i < R::KI; i++) {
            const int it = tid + i * THREADS, r = it / PAIRS, j = (it - r * PAIRS) * 2;
            pre.ka[i] = pre.kb[i] = 0;
            pre.c[i] = pre.s[i] = make_float2(0.f, 0.f);
            if (it < BN * PAIRS && k0 + r < len) {
                const long long t = t0 + k0 + r;
                const uint16_t *src = kbase + t * ld;
                pre.ka[i] = *reinterpret_cast<const uint32_t *>(src + j);
                pre.kb[i] = *reinterpret_cast<const uint32_t *>(src + j + HALF);
                pre.c[i] = *reinterpret_cast<const float2 *>(cos_t + t * HALF + j);
                pre.s[i] = *reinterpret_cast<const float2 *>(sin_t + t * HALF + j);
            }
        }
#pragma unroll
        for (int i = 0; i < R::VI; i++) {
            const int it = tid + i * THREADS, r = it / HALF, j = (it - r * HALF) * 2;
            pre.v[i] = 0;
            if (it < BN * HALF && k0 + r < len)
                pre.v[i] = *reinterpret_cast<const uint32_t *>(vbase + (t0 + k0 + r) * ld + j);
        }
    };
    auto store_kv = [&](int buf) {
#pragma unroll
        for (int i = 0; i < R::KI; i++) {
            const int it = tid + i * THREADS, r = it / PAIRS, j = (it - r * PAIRS) * 2;
            if (it < BN * PAIRS) {
                uint32_t lo, hi;
                rotate2(pre.ka[i], pre.kb[i], pre.c[i], pre.s[i], &lo, &hi);
                *reinterpret_cast<uint32_t *>(&Ks[buf][r * LDK + j]) = lo;
                *reinterpret_cast<uint32_t *>(&Ks[buf][r * LDK + j + HALF]) = hi;
            }
        }
#pragma unroll
        for (int i = 0; i < R::VI; i++) {
            const int it = tid + i * THREADS, r = it / HALF, j = (it - r * HALF) * 2;
            if (it < BN * HALF) *reinterpret_cast<uint32_t *>(&Vs[buf][r * LDV + j]) = pre.v[i];
        }
    };

    load_kv(0);
    __syncthreads();
    uint32_t qf[KS][4];
    load_q_frags<KS, LDK>(qs + (warp * 16 + g) * LDK + 2 * tq, qf);
    if (BM > BN) __syncthreads(); /* the Q tile overlaps Ks[0] */
    store_kv(0);
    __syncthreads();
    float o[NO][4];
#pragma unroll
    for (int n = 0; n < NO; n++) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.f, l1 = 0.f;
    const uint32_t k_lane = k_lane_offset<LDK>(lane), v_lane = v_lane_offset<LDV>(lane);

    const int n_blk = (len + BN - 1) / BN;
    for (int kb = 0; kb < n_blk; kb++) {
        const int k0 = kb * BN, buf = kb & 1;
        if (kb + 1 < n_blk) load_kv(k0 + BN);
        const uint32_t ks = (uint32_t)__cvta_generic_to_shared(Ks[buf]) + k_lane;
        const uint32_t vs = (uint32_t)__cvta_generic_to_shared(Vs[buf]) + v_lane;

        attend_block<BN, KS, NO, LDK, LDV>(qf, ks, vs, k0, len, tq, scale_log2, o, m0, m1, l0, l1);
        /* the other stage was last read in the previous step, which the barrier below that step closed */
        if (kb + 1 < n_blk) store_kv(buf ^ 1);
        __syncthreads();
    }

    store_rows<HD, DP, NO>(o, quad_sum(l0), quad_sum(l1), out, t0, q0 + warp * 16 + g, len, n_heads, h, tq);
}

template <int HD, int DP, int W>
cudaError_t launch(const uint16_t *qkv, const float *cos_t, const float *sin_t, const int32_t *cu, int n_seg,
                   int n_tokens, int n_heads, uint16_t *o, cudaStream_t stream) {
    const float scale_log2 = 1.4426950408889634f / sqrtf((float)HD);
    const dim3 grid((unsigned)((n_tokens + 16 * W - 1) / (16 * W) + n_seg), (unsigned)n_heads);
    attn_rope_kernel<HD, DP, W><<<grid, 32 * W, 0, stream>>>(qkv, cos_t, sin_t, cu, n_seg, n_heads, scale_log2, o);
    return cudaGetLastError();
}

}  // namespace

extern "C" int attn_rope_supported(int head_dim, int head_dim_padded) {
    return (head_dim == 72 && head_dim_padded == 80) || (head_dim == 64 && head_dim_padded == 64);
}

cudaError_t attn_rope_split_launch(const uint16_t *qkv, const float *cos_t, const float *sin_t, const int32_t *cu,
                                   int n_seg, int n_tokens, int n_heads, int head_dim, uint16_t *o,
                                   cudaStream_t stream);

extern "C" cudaError_t attn_rope_bf16_tiled(const uint16_t *qkv, const float *cos_t, const float *sin_t,
                                            const int32_t *cu_seqlens, int n_seg, int n_tokens, int n_heads,
                                            int head_dim, int head_dim_padded, uint16_t *o, int tiling,
                                            cudaStream_t stream) {
    if (n_tokens <= 0 || n_seg <= 0) return cudaSuccess;
    if (n_heads <= 0 || n_heads > 65535 || !attn_rope_supported(head_dim, head_dim_padded) || tiling < 0 ||
        tiling >= ATTN_ROPE_TILINGS || (((uintptr_t)qkv | (uintptr_t)cos_t | (uintptr_t)sin_t | (uintptr_t)o) & 7u))
        return cudaErrorInvalidValue;
    if (tiling == ATTN_ROPE_SPLIT64)
        return attn_rope_split_launch(qkv, cos_t, sin_t, cu_seqlens, n_seg, n_tokens, n_heads, head_dim, o, stream);
    const int rows = tiling == ATTN_ROPE_ROWS64 ? 64 : 128;
    if (head_dim == 72)
        return rows == 64 ? launch<72, 80, 4>(qkv, cos_t, sin_t, cu_seqlens, n_seg, n_tokens, n_heads, o, stream)
                          : launch<72, 80, 8>(qkv, cos_t, sin_t, cu_seqlens, n_seg, n_tokens, n_heads, o, stream);
    return rows == 64 ? launch<64, 64, 4>(qkv, cos_t, sin_t, cu_seqlens, n_seg, n_tokens, n_heads, o, stream)
                      : launch<64, 64, 8>(qkv, cos_t, sin_t, cu_seqlens, n_seg, n_tokens, n_heads, o, stream);
}

extern "C" cudaError_t attn_rope_bf16(const uint16_t *qkv, const float *cos_t, const float *sin_t,
                                      const int32_t *cu_seqlens, int n_seg, int n_tokens, int n_heads, int head_dim,
                                      int head_dim_padded, uint16_t *o, cudaStream_t stream) {
    return attn_rope_bf16_tiled(qkv, cos_t, sin_t, cu_seqlens, n_seg, n_tokens, n_heads, head_dim, head_dim_padded,
                                o, ATTN_ROPE_DEFAULT, stream);
}
