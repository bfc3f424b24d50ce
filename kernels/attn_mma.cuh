/* attn_mma.cuh — device helpers of vitd's own attention kernels (attn_rope.cu, attn_rope_split.cu): the mma.sync
 * m16n8k16 bf16 tensor-core product, ldmatrix fragment loads, bf16 packing, the rotary of two lane pairs as
 * rope.cu computes it, and the shared-memory row stride rule. Device code only. */
#ifndef VITD_ATTN_MMA_CUH
#define VITD_ATTN_MMA_CUH

#include "common.cuh"

namespace attn_mma {

__device__ __forceinline__ void mma16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
    return (uint32_t)f32_to_bf16_bits(lo) | ((uint32_t)f32_to_bf16_bits(hi) << 16);
}
__device__ __forceinline__ float lo16(uint32_t u) { return __uint_as_float(u << 16); }
__device__ __forceinline__ float hi16(uint32_t u) { return __uint_as_float(u & 0xffff0000u); }

/* Rotates lanes j, j+1 with their partners j+half, j+half+1 (rope.cu's arithmetic): *lo gets out[j..j+1], *hi
 * out[j+half..]. a, b: the raw bf16 pairs; c, s: cos and sin of the two angles. */
__device__ __forceinline__ void rotate2(uint32_t a, uint32_t b, float2 c, float2 s, uint32_t *lo, uint32_t *hi) {
    const float a0 = lo16(a), a1 = hi16(a), b0 = lo16(b), b1 = hi16(b);
    *lo = pack2(__fsub_rn(__fmul_rn(a0, c.x), __fmul_rn(b0, s.x)), __fsub_rn(__fmul_rn(a1, c.y), __fmul_rn(b1, s.y)));
    *hi = pack2(__fadd_rn(__fmul_rn(b0, c.x), __fmul_rn(a0, s.x)), __fadd_rn(__fmul_rn(b1, c.y), __fmul_rn(a1, s.y)));
}

/* ldmatrix: four 8x8 b16 matrices (lanes 8i..8i+7 give the row addresses of matrix i); .trans transposes each. */
__device__ __forceinline__ void ldsm_x4(uint32_t addr, uint32_t &r0, uint32_t &r1, uint32_t &r2, uint32_t &r3) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3) : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t addr, uint32_t &r0, uint32_t &r1, uint32_t &r2, uint32_t &r3) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3) : "r"(addr));
}
__device__ __forceinline__ void ldsm_x2_t(uint32_t addr, uint32_t &r0, uint32_t &r1) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n" : "=r"(r0), "=r"(r1) : "r"(addr));
}

/* Row strides (elements) of the shared tiles: a multiple of 8 (16-byte rows for ldmatrix) with an odd count of
 * 16-byte units, so the 8 rows one ldmatrix phase reads fall in distinct banks. */
__host__ __device__ constexpr int row_stride(int w) {
    return ((w + 7) / 8 % 2) ? (w + 7) / 8 * 8 : (w + 7) / 8 * 8 + 8;
}

/* Finds the tile of bm query rows that block blockIdx.x owns, walking the segments' tiles in order: info[0] = the
 * segment's first token (-1: a spare block), info[1] = its length, info[2] = the tile's first row in it. Thread 0
 * fills info; the caller synchronises. */
__device__ __forceinline__ void find_tile(const int32_t *__restrict__ cu, int n_seg, int bm, int *info) {
    if (threadIdx.x != 0) return;
    int tile = blockIdx.x, seg = -1;
    for (int s = 0; s < n_seg; s++) {
        const int nt = (cu[s + 1] - cu[s] + bm - 1) / bm;
        if (tile < nt) {
            seg = s;
            break;
        }
        tile -= nt;
    }
    info[0] = seg < 0 ? -1 : cu[seg];
    info[1] = seg < 0 ? 0 : cu[seg + 1] - cu[seg];
    info[2] = tile * bm;
}

/* Zeroes lanes HD..DP-1 of the first `rows` rows of two [rows][LDK] K tiles (the loads write lanes < HD only, so
 * once per block suffices). */
template <int HD, int DP, int LDK>
__device__ __forceinline__ void zero_pad_lanes(uint16_t *a, uint16_t *b, int rows, int tid, int nthreads) {
    constexpr int PADW = DP > HD ? DP - HD : 1; /* the loop runs only when DP > HD */
    for (int it = tid; DP > HD && it < rows * PADW; it += nthreads) {
        const int r = it / PADW, c = HD + it % PADW;
        a[r * LDK + c] = 0;
        b[r * LDK + c] = 0;
    }
}

/* A warp's 16 query rows as mma A fragments, one per 16 lanes of DP: q points at row g, lane 2 tq of the tile. */
template <int KS, int LDK>
__device__ __forceinline__ void load_q_frags(const uint16_t *q, uint32_t (&qf)[KS][4]) {
#pragma unroll
    for (int kk = 0; kk < KS; kk++) {
        qf[kk][0] = *reinterpret_cast<const uint32_t *>(q + kk * 16);
        qf[kk][1] = *reinterpret_cast<const uint32_t *>(q + 8 * LDK + kk * 16);
        qf[kk][2] = *reinterpret_cast<const uint32_t *>(q + kk * 16 + 8);
        qf[kk][3] = *reinterpret_cast<const uint32_t *>(q + 8 * LDK + kk * 16 + 8);
    }
}

/* This lane's byte offsets into a K tile ([.][LDK], ldmatrix.x4: matrices (n, d lo/hi), (n+1, d lo/hi)) and a V
 * tile ([.][LDV], ldmatrix.x4.trans: matrices (keys lo/hi, d n), (keys lo/hi, d n+1)): matrix lane / 8, row
 * lane % 8. */
template <int LDK>
__device__ __forceinline__ uint32_t k_lane_offset(int lane) {
    return (uint32_t)(((((lane >> 3) >> 1) * 8 + (lane & 7)) * LDK + ((lane >> 3) & 1) * 8) * 2);
}
template <int LDV>
__device__ __forceinline__ uint32_t v_lane_offset(int lane) {
    return (uint32_t)(((((lane >> 3) & 1) * 8 + (lane & 7)) * LDV + ((lane >> 3) >> 1) * 8) * 2);
}

/* Rows r0 .. r0+rows-1 of a segment (first token t0, len tokens) of one head's q or k (base: that third at the
 * head's column; ld: the QKV row length) rotated into dst [rows][LDK]; rows at or past len as 0, lanes >= HD not
 * written. Thread tid of nthreads. */
template <int HD, int LDK>
__device__ __forceinline__ void load_rotated(const uint16_t *__restrict__ base, long long ld,
                                             const float *__restrict__ cos_t, const float *__restrict__ sin_t,
                                             long long t0, int r0, int rows, int len, int tid, int nthreads,
                                             uint16_t *dst) {
    constexpr int HALF = HD / 2, PAIRS = HALF / 2;
    for (int it = tid; it < rows * PAIRS; it += nthreads) {
        const int r = it / PAIRS, j = (it - r * PAIRS) * 2;
        uint32_t lo = 0, hi = 0;
        if (r0 + r < len) {
            const long long t = t0 + r0 + r;
            const uint16_t *src = base + t * ld;
            rotate2(*reinterpret_cast<const uint32_t *>(src + j), *reinterpret_cast<const uint32_t *>(src + j + HALF),
                    *reinterpret_cast<const float2 *>(cos_t + t * HALF + j),
                    *reinterpret_cast<const float2 *>(sin_t + t * HALF + j), &lo, &hi);
        }
        *reinterpret_cast<uint32_t *>(&dst[r * LDK + j]) = lo;
        *reinterpret_cast<uint32_t *>(&dst[r * LDK + j + HALF]) = hi;
    }
}

/* The sum over the 4 lanes of a quad (the lanes that share a row of an mma C fragment). */
__device__ __forceinline__ float quad_sum(float x) {
    x += __shfl_xor_sync(0xffffffffu, x, 1);
    return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

/* One block of BN keys for a warp's 16 query rows (flash recurrence): S = Q K^T from the rotated K tile at
 * shared address ks (this lane's ldmatrix row included), keys >= len masked, running max m and sum l of rows g and
 * g+8 updated (l per lane: summed over the quad at the end), O rescaled and O += P V from the V tile at vs. */
template <int BN, int KS, int NO, int LDK, int LDV>
__device__ __forceinline__ void attend_block(const uint32_t (&qf)[KS][4], uint32_t ks, uint32_t vs, int k0, int len,
                                             int tq, float scale_log2, float (&o)[NO][4], float &m0, float &m1,
                                             float &l0, float &l1) {
    float s[BN / 8][4];
#pragma unroll
    for (int n = 0; n < BN / 8; n++) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
#pragma unroll
    for (int n = 0; n < BN / 8; n += 2)
#pragma unroll
        for (int kk = 0; kk < KS; kk++) {
            uint32_t b0, b1, b2, b3;
            ldsm_x4(ks + (uint32_t)((n * 8 * LDK + kk * 16) * 2), b0, b1, b2, b3);
            mma16816(s[n], qf[kk], b0, b1);
            mma16816(s[n + 1], qf[kk], b2, b3);
        }
    if (k0 + BN > len) {
#pragma unroll
        for (int n = 0; n < BN / 8; n++)
#pragma unroll
            for (int e = 0; e < 4; e++)
                if (k0 + n * 8 + 2 * tq + (e & 1) >= len) s[n][e] = -INFINITY;
    }
    float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
    for (int n = 0; n < BN / 8; n++) {
        mx0 = fmaxf(mx0, fmaxf(s[n][0], s[n][1]));
        mx1 = fmaxf(mx1, fmaxf(s[n][2], s[n][3]));
    }
#pragma unroll
    for (int off = 1; off < 4; off <<= 1) {
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, off));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, off));
    }
    const float n0 = fmaxf(m0, mx0 * scale_log2), n1 = fmaxf(m1, mx1 * scale_log2);
    const float al0 = exp2f(m0 - n0), al1 = exp2f(m1 - n1);
    m0 = n0;
    m1 = n1;
    float r0 = 0.f, r1 = 0.f;
#pragma unroll
    for (int n = 0; n < BN / 8; n++) {
        s[n][0] = exp2f(fmaf(s[n][0], scale_log2, -n0));
        s[n][1] = exp2f(fmaf(s[n][1], scale_log2, -n0));
        s[n][2] = exp2f(fmaf(s[n][2], scale_log2, -n1));
        s[n][3] = exp2f(fmaf(s[n][3], scale_log2, -n1));
        r0 += s[n][0] + s[n][1];
        r1 += s[n][2] + s[n][3];
    }
    l0 = l0 * al0 + r0;
    l1 = l1 * al1 + r1;
#pragma unroll
    for (int n = 0; n < NO; n++) {
        o[n][0] *= al0;
        o[n][1] *= al0;
        o[n][2] *= al1;
        o[n][3] *= al1;
    }
#pragma unroll
    for (int kk = 0; kk < BN / 16; kk++) {
        const uint32_t a[4] = {pack2(s[2 * kk][0], s[2 * kk][1]), pack2(s[2 * kk][2], s[2 * kk][3]),
                               pack2(s[2 * kk + 1][0], s[2 * kk + 1][1]), pack2(s[2 * kk + 1][2], s[2 * kk + 1][3])};
        const uint32_t v = vs + (uint32_t)(kk * 16 * LDV * 2);
#pragma unroll
        for (int n = 0; n + 1 < NO; n += 2) {
            uint32_t b0, b1, b2, b3;
            ldsm_x4_t(v + (uint32_t)(n * 8 * 2), b0, b1, b2, b3);
            mma16816(o[n], a, b0, b1);
            mma16816(o[n + 1], a, b2, b3);
        }
        if (NO % 2) {
            uint32_t b0, b1;
            ldsm_x2_t(v + (uint32_t)((NO - 1) * 8 * 2), b0, b1);
            mma16816(o[NO - 1], a, b0, b1);
        }
    }
}

/* Normalises a warp's O rows (ra = its first row in the segment, rb = ra + 8) and writes them, lanes hd..dp-1 as
 * 0, to out [N, H, DP] at segment start t0; rows >= len are not written. l0, l1: the rows' sums (quad_sum). */
template <int HD, int DP, int NO>
__device__ __forceinline__ void store_rows(const float (&o)[NO][4], float l0, float l1, uint16_t *out, long long t0,
                                           int ra, int len, int n_heads, int h, int tq) {
    const float i0 = 1.f / l0, i1 = 1.f / l1;
    const int rb = ra + 8;
    uint16_t *oa = out + ((t0 + ra) * n_heads + h) * DP, *ob = out + ((t0 + rb) * n_heads + h) * DP;
#pragma unroll
    for (int n = 0; n < NO; n++) {
        const int c = n * 8 + 2 * tq;
        if (ra < len) *reinterpret_cast<uint32_t *>(oa + c) = pack2(o[n][0] * i0, o[n][1] * i0);
        if (rb < len) *reinterpret_cast<uint32_t *>(ob + c) = pack2(o[n][2] * i1, o[n][3] * i1);
    }
    for (int c = HD + 2 * tq; c < DP; c += 8) {
        if (ra < len) *reinterpret_cast<uint32_t *>(oa + c) = 0u;
        if (rb < len) *reinterpret_cast<uint32_t *>(ob + c) = 0u;
    }
}

}  // namespace attn_mma

#endif
