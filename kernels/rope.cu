/* rope.cu — 2-D rotary position embedding (MODEL.md 3.3), fused with the QKV split and the head_dim pad that
 * cuDNN's attention wants (CUDNN.md: 72 -> 80).
 *
 * Math. hd = head_dim, half = hd/2, q4 = hd/4. Per token at grid (row, col):
 *   ang[i] = float(row) * inv_freq[i]        i < q4          (the row frequencies)
 *   ang[i] = float(col) * inv_freq[i - q4]   q4 <= i < half   (the column frequencies)
 *   HF's cos_n, sin_n of length hd are [cos ang, cos ang]: dims j and j+half share ang[j], so the tables keep half.
 * rotate_half on each head of q and k, in float32 then rounded to bf16 (apply_rotary_pos_emb_vision):
 *   out[j]      = v[j] cos[j] - v[j+half] sin[j]
 *   out[j+half] = v[j+half] cos[j] + v[j] sin[j]          j < half
 * HF evaluates q*cos + rotate_half(q)*sin as separate tensor ops, so the products and the sum are rounded
 * separately (the _rn intrinsics stop nvcc from fusing them into FMAs). v is copied unchanged.
 *
 * Layout. tok [N, 4] int32 {row, col, h, w}; inv_freq [q4] float32; cos_t, sin_t [N, half] float32.
 * qkv [N, 3*H*hd] bf16 (q | k | v; head h at h*hd of its third). q, k, v [N, H, dp] bf16, lanes hd..dp-1 = 0.
 * Launch. rope_tables: one thread per (token, i < half), 256 per block, grid-stride; cosf/sinf in full precision.
 * rope_pack_qkv_bf16: one thread per (token, which of q/k/v, head, chunk): chunks 0..half/V-1 handle V lanes at j
 * and the V partner lanes at j+half (8-byte loads and stores for V = 4); chunk half/V writes the pad lanes. The
 * chunk index is fastest, so a warp touches contiguous bytes of a head. 256 threads per block, grid-stride, no
 * shared memory. The QKV buffer is read once, q/k/v written once (~1.8 TB/s on the H100: 100 us per layer at
 * 12544 tokens; 32-bit index arithmetic was tried and measured 15% slower).
 * Twins: cpu_rope_cos_sin, cpu_rope_apply. Tests: tests/test_kernels.c rows "rope_tables", "rope_pack".
 */
#include "common.cuh"
#include "engine_kernels.h"

static unsigned grid_blocks(long long work, int threads) {
    long long b = (work + threads - 1) / threads;
    if (b > 65535LL * 32) b = 65535LL * 32;
    if (b < 1) b = 1;
    return (unsigned)b;
}

__global__ __launch_bounds__(256) void rope_tables_kernel(const int4 *__restrict__ tok, int n_tokens,
                                                          const float *__restrict__ inv_freq, int q4,
                                                          float *__restrict__ cos_t, float *__restrict__ sin_t) {
    const int half = 2 * q4;
    const long long total = (long long)n_tokens * half;
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += (long long)gridDim.x * blockDim.x) {
        const long long t = idx / half;
        const int i = (int)(idx - t * half);
        const int4 g = tok[t];
        const float ang = i < q4 ? __fmul_rn((float)g.x, inv_freq[i]) : __fmul_rn((float)g.y, inv_freq[i - q4]);
        float s, c;
        sincosf(ang, &s, &c);
        cos_t[idx] = c;
        sin_t[idx] = s;
    }
}

extern "C" cudaError_t rope_tables(const int32_t *tok, int n_tokens, const float *inv_freq, int head_dim,
                                   float *cos_t, float *sin_t, cudaStream_t stream) {
    if (n_tokens <= 0) return cudaSuccess;
    if (head_dim <= 0 || head_dim % 4) return cudaErrorInvalidValue;
    const long long work = (long long)n_tokens * (head_dim / 2);
    rope_tables_kernel<<<grid_blocks(work, 256), 256, 0, stream>>>(reinterpret_cast<const int4 *>(tok), n_tokens,
                                                                   inv_freq, head_dim / 4, cos_t, sin_t);
    return cudaGetLastError();
}

/* Loads V bf16 lanes as floats (8-byte load for V = 4). */
template <int V>
static __device__ __forceinline__ void load_lanes(const uint16_t *p, float *f) {
    if (V == 4) {
        const uint2 u = *reinterpret_cast<const uint2 *>(p);
        const uint16_t *h = reinterpret_cast<const uint16_t *>(&u);
#pragma unroll
        for (int j = 0; j < 4; j++) f[j] = bf16_bits_to_f32(h[j]);
    } else {
#pragma unroll
        for (int j = 0; j < V; j++) f[j] = bf16_bits_to_f32(p[j]);
    }
}

template <int V>
static __device__ __forceinline__ void store_lanes(uint16_t *p, const float *f) {
    if (V == 4) {
        uint2 u;
        uint16_t *h = reinterpret_cast<uint16_t *>(&u);
#pragma unroll
        for (int j = 0; j < 4; j++) h[j] = f32_to_bf16_bits(f[j]);
        *reinterpret_cast<uint2 *>(p) = u;
    } else {
#pragma unroll
        for (int j = 0; j < V; j++) p[j] = f32_to_bf16_bits(f[j]);
    }
}

template <int V>
__global__ __launch_bounds__(256) void rope_pack_kernel(const uint16_t *__restrict__ qkv,
                                                        const float *__restrict__ cos_t,
                                                        const float *__restrict__ sin_t, int n_tokens, int n_heads,
                                                        int hd, int dp, uint16_t *__restrict__ q,
                                                        uint16_t *__restrict__ k, uint16_t *__restrict__ v) {
    const int half = hd / 2;
    const int nch = half / V + 1; /* rotation chunks + one pad item */
    const long long total = (long long)n_tokens * 3 * n_heads * nch;
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += (long long)gridDim.x * blockDim.x) {
        const int c = (int)(idx % nch);
        long long rest = idx / nch;
        const int h = (int)(rest % n_heads);
        rest /= n_heads;
        const int which = (int)(rest % 3);
        const long long t = rest / 3;
        uint16_t *dst = (which == 0 ? q : which == 1 ? k : v) + (t * n_heads + h) * dp;
        if (c == nch - 1) {
            for (int j = hd; j < dp; j++) dst[j] = 0;
            continue;
        }
        const int j0 = c * V;
        const uint16_t *src = qkv + t * 3 * n_heads * hd + (long long)(which * n_heads + h) * hd;
        float a[V], b[V];
        load_lanes<V>(src + j0, a);
        load_lanes<V>(src + j0 + half, b);
        if (which < 2) {
            const float *co = cos_t + t * half + j0, *si = sin_t + t * half + j0;
            float oa[V], ob[V];
#pragma unroll
            for (int j = 0; j < V; j++) {
                const float cj = co[j], sj = si[j];
                oa[j] = __fsub_rn(__fmul_rn(a[j], cj), __fmul_rn(b[j], sj));
                ob[j] = __fadd_rn(__fmul_rn(b[j], cj), __fmul_rn(a[j], sj));
            }
            store_lanes<V>(dst + j0, oa);
            store_lanes<V>(dst + j0 + half, ob);
        } else {
            store_lanes<V>(dst + j0, a);
            store_lanes<V>(dst + j0 + half, b);
        }
    }
}

extern "C" cudaError_t rope_pack_qkv_bf16(const uint16_t *qkv, const float *cos_t, const float *sin_t,
                                          int n_tokens, int n_heads, int head_dim, int dp, uint16_t *q,
                                          uint16_t *k, uint16_t *v, cudaStream_t stream) {
    if (n_tokens <= 0) return cudaSuccess;
    if (n_heads <= 0 || head_dim <= 0 || head_dim % 2 || dp < head_dim) return cudaErrorInvalidValue;
    const int half = head_dim / 2;
    /* 8-byte accesses need every lane offset (j, j+half, h*hd, h*dp, t*3*H*hd) to be a multiple of 4 elements. */
    const bool vec = half % 4 == 0 && dp % 4 == 0 &&
                     (((uintptr_t)qkv | (uintptr_t)q | (uintptr_t)k | (uintptr_t)v) & 7u) == 0;
    const int V = vec ? 4 : 1;
    const long long work = (long long)n_tokens * 3 * n_heads * (half / V + 1);
    const unsigned blocks = grid_blocks(work, 256);
    if (vec)
        rope_pack_kernel<4><<<blocks, 256, 0, stream>>>(qkv, cos_t, sin_t, n_tokens, n_heads, head_dim, dp, q, k, v);
    else
        rope_pack_kernel<1><<<blocks, 256, 0, stream>>>(qkv, cos_t, sin_t, n_tokens, n_heads, head_dim, dp, q, k, v);
    return cudaGetLastError();
}
