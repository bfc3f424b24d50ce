/* attn_pack.cu — the small kernels around cuDNN attention: operand packing, FP8 quantisation for tests and
 * benchmarks, output unpacking, and the per-batch ragged index tensors.
 *
 * Math. The QKV projection gives qkv [N, 3*H*hd] (q | k | v, head h in columns h*hd..h*hd+hd-1 of its third).
 * cuDNN's attention wants each of q, k, v as [N, H, Dp] with Dp = hd rounded up to 16 (FP8 kernels on Hopper
 * need a multiple of 16; BF16 runs as fast at 80 as at 72), the pad lanes zero so that q.k and p.v are unchanged
 * and the output's pad lanes come back exactly 0. FP8 (E4M3, largest finite 448) uses one scale per tensor:
 * x8 = sat(x / descale), descale = amax / 448; the output is o8 = sat(o * scale_o), dequantised as o8 / scale_o.
 * These are the simple, separate-pass versions; the engine's final design fuses rotary + quantise + amax into one
 * pass after the QKV GEMM (kernels/fp8_quant.cu).
 *
 * Layout and launch. Element-wise kernels walk the output in chunks of V lanes (V = 8: one 16-byte bf16 load,
 * taken when head_dim and Dp are multiples of 8 and the pointers are 16-byte aligned; V = 1 otherwise) with a
 * grid-stride loop, the lane chunk fastest so that warps write contiguous bytes. The amax kernel reduces per
 * block (warp shuffles, then shared memory) and folds blocks with an integer atomicMax on the float bits.
 * attn_seqlen_setup is one block: b_plan is a few hundred entries at most; attn_fp8_amax_fold one thread.
 *
 * Twins and tests: tests/test_gpu_attn.c checks packing, quantisation and unpacking against host loops
 * (bit-exact for bf16, E4M3 rounding for FP8) and the attention built on them against a float64 reference.
 */
#include "common.cuh"
#include "kernels.h"

static int grid_for(long long work, int threads) {
    long long b = (work + threads - 1) / threads;
    if (b > 65535LL * 16) b = 65535LL * 16;
    if (b < 1) b = 1;
    return (int)b;
}

static bool aligned16(const void *p) { return ((uintptr_t)p & 15u) == 0; }

/* ---- pack: qkv [N, 3*H*hd] bf16 -> q, k, v [N, H, Dp] (bf16 or E4M3), pad lanes 0 ---- */

template <int V, bool FP8>
__global__ void pack_qkv_kernel(const uint16_t *__restrict__ qkv, int n_tokens, int n_heads, int head_dim,
                                int dp, const float *__restrict__ scalars, void *__restrict__ q,
                                void *__restrict__ k, void *__restrict__ v) {
    const int cpr = dp / V;  /* chunks per head row */
    const long long total = (long long)n_tokens * 3 * n_heads * cpr;
    float inv_q = 1.f, inv_k = 1.f, inv_v = 1.f;
    if (FP8) {
        inv_q = 1.0f / scalars[ATTN_FP8_DESCALE_Q * ATTN_FP8_SLOT_FLOATS];
        inv_k = 1.0f / scalars[ATTN_FP8_DESCALE_K * ATTN_FP8_SLOT_FLOATS];
        inv_v = 1.0f / scalars[ATTN_FP8_DESCALE_V * ATTN_FP8_SLOT_FLOATS];
    }
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += (long long)gridDim.x * blockDim.x) {
        int c = (int)(idx % cpr);
        long long rest = idx / cpr;
        int h = (int)(rest % n_heads);
        rest /= n_heads;
        int which = (int)(rest % 3);
        long long t = rest / 3;
        int lane0 = c * V;
        float x[V];
        if (lane0 < head_dim) {
            const uint16_t *src =
                qkv + t * 3 * n_heads * head_dim + (long long)(which * n_heads + h) * head_dim + lane0;
            if (V == 8) {
                uint4 u = *reinterpret_cast<const uint4 *>(src);
                const uint16_t *s16 = reinterpret_cast<const uint16_t *>(&u);
#pragma unroll
                for (int j = 0; j < V; j++) x[j] = bf16_bits_to_f32(s16[j]);
            } else {
#pragma unroll
                for (int j = 0; j < V; j++) x[j] = bf16_bits_to_f32(src[j]);
            }
        } else {
#pragma unroll
            for (int j = 0; j < V; j++) x[j] = 0.f;
        }
        long long dst = (t * n_heads + h) * dp + lane0;
        void *base = which == 0 ? q : which == 1 ? k : v;
        if (FP8) {
            uint8_t b[V];
            float inv = which == 0 ? inv_q : which == 1 ? inv_k : inv_v;
#pragma unroll
            for (int j = 0; j < V; j++) b[j] = f32_to_e4m3(x[j] * inv);
            uint8_t *d8 = static_cast<uint8_t *>(base) + dst;
            if (V == 8) {
                *reinterpret_cast<uint2 *>(d8) = *reinterpret_cast<const uint2 *>(b);
            } else {
#pragma unroll
                for (int j = 0; j < V; j++) d8[j] = b[j];
            }
        } else {
            uint16_t b[V];
#pragma unroll
            for (int j = 0; j < V; j++) b[j] = f32_to_bf16_bits(x[j]);
            uint16_t *d16 = static_cast<uint16_t *>(base) + dst;
            if (V == 8) {
                *reinterpret_cast<uint4 *>(d16) = *reinterpret_cast<const uint4 *>(b);
            } else {
#pragma unroll
                for (int j = 0; j < V; j++) d16[j] = b[j];
            }
        }
    }
}

template <bool FP8>
static cudaError_t launch_pack(const uint16_t *qkv, int n_tokens, int n_heads, int head_dim, int dp,
                               const float *scalars, void *q, void *k, void *v, cudaStream_t stream) {
    if (n_tokens < 0 || n_heads <= 0 || head_dim <= 0 || dp < head_dim) return cudaErrorInvalidValue;
    if (n_tokens == 0) return cudaSuccess;
    const int threads = 256;
    bool vec = head_dim % 8 == 0 && dp % 8 == 0 && aligned16(qkv) && aligned16(q) && aligned16(k) && aligned16(v);
    if (vec) {
        long long work = (long long)n_tokens * 3 * n_heads * (dp / 8);
        pack_qkv_kernel<8, FP8><<<grid_for(work, threads), threads, 0, stream>>>(qkv, n_tokens, n_heads,
                                                                                head_dim, dp, scalars, q, k, v);
    } else {
        long long work = (long long)n_tokens * 3 * n_heads * dp;
        pack_qkv_kernel<1, FP8><<<grid_for(work, threads), threads, 0, stream>>>(qkv, n_tokens, n_heads,
                                                                                head_dim, dp, scalars, q, k, v);
    }
    return cudaGetLastError();
}

extern "C" cudaError_t attn_pack_qkv_bf16(const uint16_t *qkv, int n_tokens, int n_heads, int head_dim,
                                          int head_dim_padded, uint16_t *q, uint16_t *k, uint16_t *v,
                                          cudaStream_t stream) {
    return launch_pack<false>(qkv, n_tokens, n_heads, head_dim, head_dim_padded, nullptr, q, k, v, stream);
}

extern "C" cudaError_t attn_pack_qkv_fp8(const uint16_t *qkv, int n_tokens, int n_heads, int head_dim,
                                         int head_dim_padded, const float *scalars, uint8_t *q8, uint8_t *k8,
                                         uint8_t *v8, cudaStream_t stream) {
    return launch_pack<true>(qkv, n_tokens, n_heads, head_dim, head_dim_padded, scalars, q8, k8, v8, stream);
}

/* ---- unpack: o [N, H, Dp] (bf16 or E4M3) -> out [N, H*hd] bf16 ---- */

template <int V, bool FP8>
__global__ void unpack_kernel(const void *__restrict__ o, int n_tokens, int n_heads, int head_dim, int dp,
                              const float *__restrict__ scalars, uint16_t *__restrict__ out) {
    const int cpr = head_dim / V;
    const long long total = (long long)n_tokens * n_heads * cpr;
    float descale_o = 1.f;
    if (FP8) descale_o = 1.0f / scalars[ATTN_FP8_SCALE_O * ATTN_FP8_SLOT_FLOATS];
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += (long long)gridDim.x * blockDim.x) {
        int c = (int)(idx % cpr);
        long long th = idx / cpr; /* t * n_heads + h */
        int lane0 = c * V;
        long long src = th * dp + lane0;
        float x[V];
        if (FP8) {
            const uint8_t *s8 = static_cast<const uint8_t *>(o) + src;
            uint8_t b[V];
            if (V == 8) {
                *reinterpret_cast<uint2 *>(b) = *reinterpret_cast<const uint2 *>(s8);
            } else {
#pragma unroll
                for (int j = 0; j < V; j++) b[j] = s8[j];
            }
#pragma unroll
            for (int j = 0; j < V; j++) x[j] = e4m3_to_f32(b[j]) * descale_o;
        } else {
            const uint16_t *s16 = static_cast<const uint16_t *>(o) + src;
            uint16_t b[V];
            if (V == 8) {
                *reinterpret_cast<uint4 *>(b) = *reinterpret_cast<const uint4 *>(s16);
            } else {
#pragma unroll
                for (int j = 0; j < V; j++) b[j] = s16[j];
            }
#pragma unroll
            for (int j = 0; j < V; j++) x[j] = bf16_bits_to_f32(b[j]);
        }
        uint16_t r[V];
#pragma unroll
        for (int j = 0; j < V; j++) r[j] = f32_to_bf16_bits(x[j]);
        uint16_t *d = out + th * head_dim + lane0; /* (t*H + h)*hd == t*H*hd + h*hd */
        if (V == 8) {
            *reinterpret_cast<uint4 *>(d) = *reinterpret_cast<const uint4 *>(r);
        } else {
#pragma unroll
            for (int j = 0; j < V; j++) d[j] = r[j];
        }
    }
}

template <bool FP8>
static cudaError_t launch_unpack(const void *o, int n_tokens, int n_heads, int head_dim, int dp,
                                 const float *scalars, uint16_t *out, cudaStream_t stream) {
    if (n_tokens < 0 || n_heads <= 0 || head_dim <= 0 || dp < head_dim) return cudaErrorInvalidValue;
    if (n_tokens == 0) return cudaSuccess;
    const int threads = 256;
    bool vec = head_dim % 8 == 0 && dp % 8 == 0 && aligned16(o) && aligned16(out);
    if (vec) {
        long long work = (long long)n_tokens * n_heads * (head_dim / 8);
        unpack_kernel<8, FP8><<<grid_for(work, threads), threads, 0, stream>>>(o, n_tokens, n_heads, head_dim,
                                                                              dp, scalars, out);
    } else {
        long long work = (long long)n_tokens * n_heads * head_dim;
        unpack_kernel<1, FP8><<<grid_for(work, threads), threads, 0, stream>>>(o, n_tokens, n_heads, head_dim,
                                                                              dp, scalars, out);
    }
    return cudaGetLastError();
}

extern "C" cudaError_t attn_unpack_bf16(const uint16_t *o, int n_tokens, int n_heads, int head_dim,
                                        int head_dim_padded, uint16_t *out, cudaStream_t stream) {
    return launch_unpack<false>(o, n_tokens, n_heads, head_dim, head_dim_padded, nullptr, out, stream);
}

extern "C" cudaError_t attn_unpack_fp8(const uint8_t *o8, int n_tokens, int n_heads, int head_dim,
                                       int head_dim_padded, const float *scalars, uint16_t *out,
                                       cudaStream_t stream) {
    return launch_unpack<true>(o8, n_tokens, n_heads, head_dim, head_dim_padded, scalars, out, stream);
}

/* ---- amax of q, k, v and the FP8 scalars derived from it ---- */

/* blockIdx.y selects q (0), k (1) or v (2); blocks stride over that third's n_tokens * H*hd elements. */
__global__ void qkv_amax_kernel(const uint16_t *__restrict__ qkv, int n_tokens, int hdim_all,
                                float *__restrict__ amax3) {
    const int which = blockIdx.y;
    const long long total = (long long)n_tokens * hdim_all;
    float m = 0.f;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (long long)gridDim.x * blockDim.x) {
        long long t = e / hdim_all;
        int col = (int)(e % hdim_all);
        m = fmaxf(m, fabsf(bf16_bits_to_f32(qkv[t * 3 * hdim_all + (long long)which * hdim_all + col])));
    }
    __shared__ float warp_m[32];
    m = warp_max(m);
    if ((threadIdx.x & 31) == 0) warp_m[threadIdx.x >> 5] = m;
    __syncthreads();
    if (threadIdx.x < 32) {
        int nw = (blockDim.x + 31) >> 5;
        float w = threadIdx.x < nw ? warp_m[threadIdx.x] : 0.f;
        w = warp_max(w);
        if (threadIdx.x == 0) atomic_max_nonneg(&amax3[which], w);
    }
}

extern "C" cudaError_t attn_qkv_amax_bf16(const uint16_t *qkv, int n_tokens, int n_heads, int head_dim,
                                          float *amax3, cudaStream_t stream) {
    if (n_tokens < 0 || n_heads <= 0 || head_dim <= 0) return cudaErrorInvalidValue;
    cudaError_t e = cudaMemsetAsync(amax3, 0, 3 * sizeof(float), stream);
    if (e != cudaSuccess || n_tokens == 0) return e;
    const int threads = 256;
    long long work = (long long)n_tokens * n_heads * head_dim;
    int bx = grid_for(work, threads);
    if (bx > 1024) bx = 1024;
    qkv_amax_kernel<<<dim3(bx, 3), threads, 0, stream>>>(qkv, n_tokens, n_heads * head_dim, amax3);
    return cudaGetLastError();
}

__global__ void fp8_scales_kernel(const float *__restrict__ amax3, float *__restrict__ s) {
    const float tiny = 1e-12f;
    for (int w = 0; w < 3; w++)
        s[(ATTN_FP8_DESCALE_Q + w) * ATTN_FP8_SLOT_FLOATS] = fmaxf(amax3[w], tiny) / VITD_E4M3_MAX;
    s[ATTN_FP8_SCALE_S * ATTN_FP8_SLOT_FLOATS] = VITD_E4M3_MAX;
    s[ATTN_FP8_DESCALE_S * ATTN_FP8_SLOT_FLOATS] = 1.0f / VITD_E4M3_MAX;
    s[ATTN_FP8_SCALE_O * ATTN_FP8_SLOT_FLOATS] = VITD_E4M3_MAX / fmaxf(amax3[2], tiny);
    s[ATTN_FP8_AMAX_S * ATTN_FP8_SLOT_FLOATS] = 0.f;
    s[ATTN_FP8_AMAX_O * ATTN_FP8_SLOT_FLOATS] = 0.f;
}

extern "C" cudaError_t attn_fp8_scales_from_amax(const float *amax3, float *scalars, cudaStream_t stream) {
    fp8_scales_kernel<<<1, 1, 0, stream>>>(amax3, scalars);
    return cudaGetLastError();
}

/* ---- ragged index tensors ---- */

__global__ void seqlen_setup_kernel(const int32_t *__restrict__ cu, int n, int b_plan, int elems_per_token,
                                    int bf16_min_len, int fp8_min_len, int32_t *__restrict__ offsets,
                                    int32_t *__restrict__ seqlen_all, int32_t *__restrict__ seqlen_packed,
                                    int32_t *__restrict__ seqlen_fp8) {
    for (int i = threadIdx.x; i <= b_plan; i += blockDim.x) {
        int j = i < n ? i : n;
        offsets[i] = cu[j] * elems_per_token;
        if (i < b_plan) {
            int len = i < n ? cu[i + 1] - cu[i] : 0;
            seqlen_all[i] = len;
            if (seqlen_packed) seqlen_packed[i] = len >= bf16_min_len ? 0 : len;
            if (seqlen_fp8) seqlen_fp8[i] = len >= fp8_min_len ? 1 : len;
        }
    }
}

extern "C" cudaError_t attn_seqlen_setup(const int32_t *cu_seqlens, int n, int b_plan, int elems_per_token,
                                         int bf16_min_len, int fp8_min_len, int32_t *offsets, int32_t *seqlen_all,
                                         int32_t *seqlen_packed, int32_t *seqlen_fp8, cudaStream_t stream) {
    if (n < 0 || b_plan < n || elems_per_token <= 0) return cudaErrorInvalidValue;
    seqlen_setup_kernel<<<1, 256, 0, stream>>>(cu_seqlens, n, b_plan, elems_per_token, bf16_min_len, fp8_min_len,
                                               offsets, seqlen_all, seqlen_packed, seqlen_fp8);
    return cudaGetLastError();
}

__global__ void amax_fold_kernel(const float *__restrict__ partial, int n, float *__restrict__ s) {
    float ms = 0.f, mo = 0.f;
    for (int i = 0; i < n; i++) {
        ms = fmaxf(ms, partial[(2 * i) * ATTN_FP8_SLOT_FLOATS]);
        mo = fmaxf(mo, partial[(2 * i + 1) * ATTN_FP8_SLOT_FLOATS]);
    }
    s[ATTN_FP8_AMAX_S * ATTN_FP8_SLOT_FLOATS] = ms;
    s[ATTN_FP8_AMAX_O * ATTN_FP8_SLOT_FLOATS] = mo;
}

extern "C" cudaError_t attn_fp8_amax_fold(const float *partial, int n_launches, float *scalars,
                                          cudaStream_t stream) {
    if (n_launches < 1) return cudaErrorInvalidValue;
    amax_fold_kernel<<<1, 1, 0, stream>>>(partial, n_launches, scalars);
    return cudaGetLastError();
}
