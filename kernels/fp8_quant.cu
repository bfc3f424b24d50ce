/* fp8_quant.cu — the FP8 attention operands: rotary + quantise + pad + amax in one pass over the QKV GEMM output,
 * the amax-only pre-pass of a layer's first batch, the on-device dynamic-scale update, and the dequantisation of
 * the FP8 attention output (with the scale update folded into its last block).
 *
 * Math. hd = head_dim, half = hd/2, H heads, dp = hd rounded up to 16 (cuDNN's FP8 kernels on Hopper).
 *   q, k rotated as rope.cu / MODEL.md 3.3, in float32 with every product and sum rounded separately:
 *       lo[j] = a c - b s,  hi[j] = b c + a s     a = x[j], b = x[j+half], c = cos_t[j], s = sin_t[j], j < half
 *   and quantised straight from float32 (not from the bf16 value HF would round to: one rounding, not two):
 *       x8 = E4M3_satfinite_rne(x * inv),   inv = 1 / DESCALE_X rounded once to float32
 *   (x * inv rather than x / DESCALE: one multiply per element; it can differ from the quotient by one float
 *   ulp, which moves an E4M3 rounding only for a value within about 2^-23 relative of a rounding boundary.)
 *   v is quantised as it is. amax_q = max |lo|, |hi| over the batch (after rotary), likewise k; amax_v = max |v|;
 *   NaN never enters an amax (fmaxf). The pad lanes hd..dp-1 are written as 0.
 * Scales (dynamic): per layer a ring of the last `hist` amax values of Q, K, V; the next step's DESCALE_X =
 *   max(ring_x) / 448 (1/448^2 when 0), DESCALE_S = 1/448, SCALE_S = 448 (P <= 1), SCALE_O = 1 / DESCALE_V:
 *   |O| <= max |dequantised V| <= 448 DESCALE_V, so O * SCALE_O stays within E4M3 (each O row is a convex
 *   combination of V rows). A first batch, whose ring is empty, takes its scales from its own amax (pre-pass).
 * Dequantisation: out = bf16_rne(e4m3(o8) * inv_o), inv_o = 1 / SCALE_O rounded to float32.
 *
 * Layout. qkv [T, 3*H*hd] bf16; cos_t, sin_t [T, half] float32; q8, k8, v8 and o8 [T, H, dp] E4M3;
 * out [T, H*hd] bf16; per-layer state blocks as fp8_kernels.h (slots, amax, steps, arrival counter, ring).
 * Launch. fp8_quant_qkv_rope / _amax / _rope_bf16: one work item per (token, head, chunk of V lanes of the first
 *   half) covering q, k and v: V = 4 (8-byte bf16 loads at j and j+half of each of q, k, v; 16-byte cos/sin
 *   loads; 4-byte E4M3 stores from two cvt.rn.satfinite.e4m3x2, or 8-byte bf16 stores) when half % 4 == 0 and
 *   the pointers allow it, V = 1 otherwise; the item with the last chunk also writes the pad lanes. The chunk
 *   index is fastest, so a warp reads and writes contiguous bytes. 256 threads (40-48 registers), grid-stride:
 *   the writing passes one item per thread, the read-only pre-pass whole waves of up to 8 items per thread
 *   (fp8_grid). Each block folds its three maxima through warp shuffles and shared memory and issues an
 *   atomicMax (on the float bits) only where its maximum beats the value read from L2, so most blocks issue
 *   none. Per token: 2*3*H*hd + 4*hd bytes in, 3*H*dp out (E4M3) or 6*H*dp out (bf16).
 *   fp8_quant_dequant_o: one item per (token, head, chunk of 8 lanes): 8-byte E4M3 load, 16-byte bf16 store,
 *   whole waves of up to 4 items per thread. With a ring, each block bumps the state's arrival counter after a
 *   barrier (all its threads have used SCALE_O by then; no fence is needed, the ring update reads nothing the
 *   block wrote) and the block that arrives last runs the ring update and resets the counter.
 *   fp8_quant_ring_update / _first_scales: one thread (16-entry rings; launch latency dominates).
 * Twins: cpu_fp8_quant_qkv_rope, cpu_e4m3_from_f32, cpu_fp8_slots_fill, cpu_fp8_dequant (encoder/cpu/cpu_ops.c);
 * the ring's host twin is fp8_history (encoder/gpu/fp8_scales.c). Test: tests/test_fp8_quant.c.
 */
#include "common.cuh"
#include "fp8_kernels.h"

#define SLOT(i) ((i) * ATTN_FP8_SLOT_FLOATS)

/* Blocks of 256 threads for `items` work items of `kernel`: whole waves of co-resident blocks (the kernel's
 * occupancy times the SM count), as few waves as keep every thread at <= max_per_thread items, never more blocks
 * than one item per thread needs. Few, long blocks matter because each block ends with atomics on one L2 address
 * (amax, arrival counter) that the L2 serialises (~0.4 ns each: 110K of them cost 20% of the 64K-token pass with
 * one item per thread); whole waves avoid a partial last wave. */
template <typename K>
static unsigned fp8_grid(K kernel, long long items, int max_per_thread) {
    long long need = (items + 255) / 256;
    if (need < 1) need = 1;
    int dev = 0, sms = 0, per_sm = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) !=
                                                  cudaSuccess ||
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, 256, 0) != cudaSuccess || sms < 1 ||
        per_sm < 1)
        return (unsigned)(need < 65535LL * 32 ? need : 65535LL * 32);
    const long long wave = (long long)sms * per_sm, per_wave = wave * max_per_thread;
    long long b = (need + per_wave - 1) / per_wave * wave;
    return (unsigned)(b < need ? b : need);
}

static bool aligned(const void *p, unsigned a) { return ((uintptr_t)p & (a - 1)) == 0; }

/* ---- block reduction of three maxima into amax3 ---- */

static __device__ __forceinline__ void block_amax3(float mq, float mk, float mv, float *amax3) {
    __shared__ float red[3][32];
    mq = warp_max(mq);
    mk = warp_max(mk);
    mv = warp_max(mv);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) {
        red[0][warp] = mq;
        red[1][warp] = mk;
        red[2][warp] = mv;
    }
    __syncthreads();
    if (warp == 0) {
        const int nw = (blockDim.x + 31) >> 5;
        mq = lane < nw ? red[0][lane] : 0.f;
        mk = lane < nw ? red[1][lane] : 0.f;
        mv = lane < nw ? red[2][lane] : 0.f;
        mq = warp_max(mq);
        mk = warp_max(mk);
        mv = warp_max(mv);
        /* skip the atomic when the running maximum (read from L2; never larger than the true one) is
         * already as large: most blocks then issue none */
        if (lane == 0) {
            if (mq > __ldcg(&amax3[0])) atomic_max_nonneg(&amax3[0], mq);
            if (mk > __ldcg(&amax3[1])) atomic_max_nonneg(&amax3[1], mk);
            if (mv > __ldcg(&amax3[2])) atomic_max_nonneg(&amax3[2], mv);
        }
    }
}

/* ---- rotary + quantise + pad + amax ---- */

template <int V>
static __device__ __forceinline__ void load_bf16(const uint16_t *p, float *f) {
    if (V == 4) {
        const uint2 u = *reinterpret_cast<const uint2 *>(p);
        f[0] = __uint_as_float(u.x << 16);
        f[1] = __uint_as_float(u.x & 0xffff0000u);
        f[2] = __uint_as_float(u.y << 16);
        f[3] = __uint_as_float(u.y & 0xffff0000u);
    } else {
#pragma unroll
        for (int j = 0; j < V; j++) f[j] = bf16_bits_to_f32(p[j]);
    }
}

template <int V>
static __device__ __forceinline__ void load_f32(const float *p, float *f) {
    if (V == 4) {
        const float4 u = *reinterpret_cast<const float4 *>(p);
        f[0] = u.x;
        f[1] = u.y;
        f[2] = u.z;
        f[3] = u.w;
    } else {
#pragma unroll
        for (int j = 0; j < V; j++) f[j] = p[j];
    }
}

/* Quantises V floats (times inv) and stores V bytes (one 4-byte store for V = 4). */
template <int V>
static __device__ __forceinline__ void store_e4m3(uint8_t *p, const float *x, float inv) {
    if (V == 4) {
        const __nv_fp8x2_storage_t lo =
            __nv_cvt_float2_to_fp8x2(make_float2(__fmul_rn(x[0], inv), __fmul_rn(x[1], inv)), __NV_SATFINITE,
                                     __NV_E4M3);
        const __nv_fp8x2_storage_t hi =
            __nv_cvt_float2_to_fp8x2(make_float2(__fmul_rn(x[2], inv), __fmul_rn(x[3], inv)), __NV_SATFINITE,
                                     __NV_E4M3);
        *reinterpret_cast<uint32_t *>(p) = (uint32_t)lo | ((uint32_t)hi << 16);
    } else {
#pragma unroll
        for (int j = 0; j < V; j++) p[j] = f32_to_e4m3(__fmul_rn(x[j], inv));
    }
}

/* Rotates (a, b) = (x[j], x[j+half]) in place: a' = a c - b s, b' = b c + a s, no fused multiply-add. */
template <int V>
static __device__ __forceinline__ void rotate(float *a, float *b, const float *c, const float *s) {
#pragma unroll
    for (int j = 0; j < V; j++) {
        const float lo = __fsub_rn(__fmul_rn(a[j], c[j]), __fmul_rn(b[j], s[j]));
        const float hi = __fadd_rn(__fmul_rn(b[j], c[j]), __fmul_rn(a[j], s[j]));
        a[j] = lo;
        b[j] = hi;
    }
}

template <int V>
static __device__ __forceinline__ float max_abs(float m, const float *a, const float *b) {
#pragma unroll
    for (int j = 0; j < V; j++) m = fmaxf(m, fmaxf(fabsf(a[j]), fabsf(b[j])));
    return m;
}

/* Stores V floats rounded to bf16 (one 8-byte store for V = 4). */
template <int V>
static __device__ __forceinline__ void store_bf16(uint16_t *p, const float *x) {
    if (V == 4) {
        uint2 u;
        u.x = (uint32_t)f32_to_bf16_bits(x[0]) | ((uint32_t)f32_to_bf16_bits(x[1]) << 16);
        u.y = (uint32_t)f32_to_bf16_bits(x[2]) | ((uint32_t)f32_to_bf16_bits(x[3]) << 16);
        *reinterpret_cast<uint2 *>(p) = u;
    } else {
#pragma unroll
        for (int j = 0; j < V; j++) p[j] = f32_to_bf16_bits(x[j]);
    }
}

/* What the rotary pass writes: E4M3 q8/k8/v8 (scaled), nothing (amax pre-pass), or bf16 q/k/v (the BF16 path). */
enum { OUT_FP8 = 0, OUT_NONE = 1, OUT_BF16 = 2 };

/* Element type of the outputs per mode. */
template <int OUT> struct out_elem { typedef uint8_t type; };
template <> struct out_elem<OUT_BF16> { typedef uint16_t type; };

/* Writes the lanes hd..dp-1 of one head row as zeros (4-lane stores when V = 4: dp - hd is a multiple of 4). */
template <int V, typename T>
static __device__ __forceinline__ void zero_pad(T *row, int hd, int dp) {
    if (V == 4) {
        for (int j = hd; j < dp; j += 4) {
            if (sizeof(T) == 1) *reinterpret_cast<uint32_t *>(row + j) = 0u;
            else *reinterpret_cast<uint2 *>(row + j) = make_uint2(0u, 0u);
        }
    } else {
        for (int j = hd; j < dp; j++) row[j] = 0;
    }
}

/* OUT: what to write (see above). AMAX: reduce max |q_rot|, |k_rot|, |v| into amax3. */
template <int V, int OUT, bool AMAX>
__global__ __launch_bounds__(256) void qkv_rope_kernel(const uint16_t *__restrict__ qkv,
                                                       const float *__restrict__ cos_t,
                                                       const float *__restrict__ sin_t, unsigned n_items,
                                                       int n_heads, int hd, int dp,
                                                       const float *__restrict__ scalars, float *amax3,
                                                       typename out_elem<OUT>::type *__restrict__ qo,
                                                       typename out_elem<OUT>::type *__restrict__ ko,
                                                       typename out_elem<OUT>::type *__restrict__ vo) {
    const int half = hd >> 1;
    const unsigned nch = (unsigned)(half / V);
    float inv_q = 1.f, inv_k = 1.f, inv_v = 1.f;
    if (OUT == OUT_FP8) {
        inv_q = __frcp_rn(scalars[SLOT(ATTN_FP8_DESCALE_Q)]);
        inv_k = __frcp_rn(scalars[SLOT(ATTN_FP8_DESCALE_K)]);
        inv_v = __frcp_rn(scalars[SLOT(ATTN_FP8_DESCALE_V)]);
    }
    float mq = 0.f, mk = 0.f, mv = 0.f;
    for (unsigned idx = blockIdx.x * blockDim.x + threadIdx.x; idx < n_items; idx += gridDim.x * blockDim.x) {
        const unsigned c = idx % nch, th = idx / nch; /* th = t * H + h */
        const unsigned t = th / (unsigned)n_heads, h = th - t * (unsigned)n_heads;
        const int j0 = (int)c * V;
        const uint16_t *row = qkv + (size_t)t * 3 * n_heads * hd;
        const uint16_t *pq = row + (size_t)h * hd + j0;
        const uint16_t *pk = pq + (size_t)n_heads * hd;
        const uint16_t *pv = pk + (size_t)n_heads * hd;
        float qa[V], qb[V], ka[V], kb[V], va[V], vb[V], cs[V], sn[V];
        load_bf16<V>(pq, qa);
        load_bf16<V>(pq + half, qb);
        load_bf16<V>(pk, ka);
        load_bf16<V>(pk + half, kb);
        load_bf16<V>(pv, va);
        load_bf16<V>(pv + half, vb);
        load_f32<V>(cos_t + (size_t)t * half + j0, cs);
        load_f32<V>(sin_t + (size_t)t * half + j0, sn);
        rotate<V>(qa, qb, cs, sn);
        rotate<V>(ka, kb, cs, sn);
        if (AMAX) {
            mq = max_abs<V>(mq, qa, qb);
            mk = max_abs<V>(mk, ka, kb);
            mv = max_abs<V>(mv, va, vb);
        }
        if (OUT != OUT_NONE) {
            const size_t o = (size_t)th * dp + j0;
            if (OUT == OUT_FP8) {
                store_e4m3<V>((uint8_t *)qo + o, qa, inv_q);
                store_e4m3<V>((uint8_t *)qo + o + half, qb, inv_q);
                store_e4m3<V>((uint8_t *)ko + o, ka, inv_k);
                store_e4m3<V>((uint8_t *)ko + o + half, kb, inv_k);
                store_e4m3<V>((uint8_t *)vo + o, va, inv_v);
                store_e4m3<V>((uint8_t *)vo + o + half, vb, inv_v);
            } else {
                store_bf16<V>((uint16_t *)qo + o, qa);
                store_bf16<V>((uint16_t *)qo + o + half, qb);
                store_bf16<V>((uint16_t *)ko + o, ka);
                store_bf16<V>((uint16_t *)ko + o + half, kb);
                store_bf16<V>((uint16_t *)vo + o, va);
                store_bf16<V>((uint16_t *)vo + o + half, vb);
            }
            if (c == nch - 1) {
                const size_t p = (size_t)th * dp;
                zero_pad<V>(qo + p, hd, dp);
                zero_pad<V>(ko + p, hd, dp);
                zero_pad<V>(vo + p, hd, dp);
            }
        }
    }
    if (AMAX) block_amax3(mq, mk, mv, amax3);
}

template <int OUT, bool AMAX>
static cudaError_t launch_qkv_rope(const uint16_t *qkv, const float *cos_t, const float *sin_t, int n_tokens,
                                   int n_heads, int hd, int dp, const float *scalars, float *amax3,
                                   typename out_elem<OUT>::type *q, typename out_elem<OUT>::type *k,
                                   typename out_elem<OUT>::type *v, cudaStream_t stream) {
    if (n_tokens < 0 || n_heads <= 0 || hd <= 0 || hd % 2 || dp < hd) return cudaErrorInvalidValue;
    if (n_tokens == 0) return cudaSuccess;
    const int half = hd / 2;
    /* V = 4 needs every lane offset (j, j+half, h*hd, t*3*H*hd; h*dp; t*half) a multiple of 4 elements, so the
     * pad is a multiple of 4 lanes too, and the bases aligned for 8-byte bf16 / 16-byte table accesses and
     * 4-byte E4M3 / 8-byte bf16 stores */
    bool vec = half % 4 == 0 && dp % 4 == 0 && aligned(qkv, 8) && aligned(cos_t, 16) && aligned(sin_t, 16);
    const unsigned out_align = OUT == OUT_BF16 ? 8 : 4;
    if (OUT != OUT_NONE) vec = vec && aligned(q, out_align) && aligned(k, out_align) && aligned(v, out_align);
    const long long items = (long long)n_tokens * n_heads * (half / (vec ? 4 : 1));
    if (items >= (1LL << 31)) return cudaErrorInvalidValue;
    /* the writing passes run one item per thread: long grid-stride blocks (8 items per thread) made them 37%
     * slower at 64K tokens on the H100 (bursty reads and writes in lockstep); the read-only pre-pass gains from
     * them (fewer blocks, fewer reductions) */
    const int per_thread = OUT == OUT_NONE ? 8 : 1;
    if (vec) {
        const unsigned blocks = fp8_grid(qkv_rope_kernel<4, OUT, AMAX>, items, per_thread);
        qkv_rope_kernel<4, OUT, AMAX><<<blocks, 256, 0, stream>>>(qkv, cos_t, sin_t, (unsigned)items, n_heads, hd,
                                                                  dp, scalars, amax3, q, k, v);
    } else {
        const unsigned blocks = fp8_grid(qkv_rope_kernel<1, OUT, AMAX>, items, per_thread);
        qkv_rope_kernel<1, OUT, AMAX><<<blocks, 256, 0, stream>>>(qkv, cos_t, sin_t, (unsigned)items, n_heads, hd,
                                                                  dp, scalars, amax3, q, k, v);
    }
    return cudaGetLastError();
}

extern "C" cudaError_t fp8_quant_qkv_rope(const uint16_t *qkv, const float *cos_t, const float *sin_t,
                                          int n_tokens, int n_heads, int head_dim, int dp, const float *scalars,
                                          float *amax3, uint8_t *q8, uint8_t *k8, uint8_t *v8,
                                          cudaStream_t stream) {
    if (amax3)
        return launch_qkv_rope<OUT_FP8, true>(qkv, cos_t, sin_t, n_tokens, n_heads, head_dim, dp, scalars, amax3,
                                              q8, k8, v8, stream);
    return launch_qkv_rope<OUT_FP8, false>(qkv, cos_t, sin_t, n_tokens, n_heads, head_dim, dp, scalars, nullptr,
                                           q8, k8, v8, stream);
}

extern "C" cudaError_t fp8_quant_qkv_amax(const uint16_t *qkv, const float *cos_t, const float *sin_t,
                                          int n_tokens, int n_heads, int head_dim, float *amax3,
                                          cudaStream_t stream) {
    if (!amax3) return cudaErrorInvalidValue;
    return launch_qkv_rope<OUT_NONE, true>(qkv, cos_t, sin_t, n_tokens, n_heads, head_dim, head_dim, nullptr,
                                           amax3, nullptr, nullptr, nullptr, stream);
}

extern "C" cudaError_t fp8_quant_qkv_rope_bf16(const uint16_t *qkv, const float *cos_t, const float *sin_t,
                                               int n_tokens, int n_heads, int head_dim, int dp, uint16_t *q,
                                               uint16_t *k, uint16_t *v, cudaStream_t stream) {
    return launch_qkv_rope<OUT_BF16, false>(qkv, cos_t, sin_t, n_tokens, n_heads, head_dim, dp, nullptr, nullptr,
                                            q, k, v, stream);
}

/* ---- scales: slots from scales, first batch, ring update ---- */

/* The twin of cpu_fp8_slots_fill: the six input slots of a layer from its Q, K, V dequantisation scales. */
static __device__ void fill_slots(float *st, const float s[3]) {
    st[SLOT(ATTN_FP8_DESCALE_Q)] = s[0];
    st[SLOT(ATTN_FP8_DESCALE_K)] = s[1];
    st[SLOT(ATTN_FP8_DESCALE_V)] = s[2];
    st[SLOT(ATTN_FP8_DESCALE_S)] = __fdiv_rn(1.0f, VITD_E4M3_MAX);
    st[SLOT(ATTN_FP8_SCALE_S)] = VITD_E4M3_MAX;
    st[SLOT(ATTN_FP8_SCALE_O)] = __fdiv_rn(1.0f, s[2]);
}

/* max over a ring (or one value) -> scale: m / 448, or 1/448^2 when m is 0 (fp8_history_scales). */
static __device__ float scale_of(float m) {
    return m > 0.0f ? __fdiv_rn(m, VITD_E4M3_MAX) : __fdiv_rn(1.0f, VITD_E4M3_MAX * VITD_E4M3_MAX);
}

static __device__ void first_scales(float *st) {
    float s[3];
    for (int t = 0; t < 3; t++) {
        const float a = st[FP8_STATE_AMAX + t];
        s[t] = scale_of(fmaxf(0.0f, a == a ? a : 0.0f));
    }
    fill_slots(st, s);
}

/* One thread: push the step's amax, reset it, count the step, next slots from the ring. */
static __device__ void ring_update(float *st, int hist) {
    unsigned *steps = reinterpret_cast<unsigned *>(st + FP8_STATE_STEPS);
    const unsigned slot = *steps % (unsigned)hist;
    float *ring = st + FP8_STATE_RING;
    float s[3];
    for (int t = 0; t < 3; t++) {
        const float a = st[FP8_STATE_AMAX + t];
        ring[t * hist + slot] = a == a ? a : 0.0f;
        st[FP8_STATE_AMAX + t] = 0.0f;
        float m = 0.0f;
        for (int i = 0; i < hist; i++) m = fmaxf(m, ring[t * hist + i]);
        s[t] = scale_of(m);
    }
    *steps += 1u;
    fill_slots(st, s);
}

__global__ void first_scales_kernel(float *st) { first_scales(st); }
__global__ void ring_update_kernel(float *st, int hist) { ring_update(st, hist); }

extern "C" cudaError_t fp8_quant_first_scales(float *state, cudaStream_t stream) {
    if (!state) return cudaErrorInvalidValue;
    first_scales_kernel<<<1, 1, 0, stream>>>(state);
    return cudaGetLastError();
}

extern "C" cudaError_t fp8_quant_ring_update(float *state, int history_len, cudaStream_t stream) {
    if (!state || history_len <= 0) return cudaErrorInvalidValue;
    ring_update_kernel<<<1, 1, 0, stream>>>(state, history_len);
    return cudaGetLastError();
}

/* ---- dequantise o8 [T, H, dp] -> out [T, H*hd] bf16 (+ ring update in the last block) ---- */

template <int V>
__global__ __launch_bounds__(256) void dequant_kernel(const uint8_t *__restrict__ o8, unsigned n_items, int hd,
                                                      int dp, float *scalars, int hist,
                                                      uint16_t *__restrict__ out) {
    const unsigned cpr = (unsigned)(hd / V);
    const float inv_o = __frcp_rn(scalars[SLOT(ATTN_FP8_SCALE_O)]);
    for (unsigned idx = blockIdx.x * blockDim.x + threadIdx.x; idx < n_items; idx += gridDim.x * blockDim.x) {
        const unsigned c = idx % cpr, th = idx / cpr;
        const uint8_t *src = o8 + (size_t)th * dp + c * V;
        uint16_t *dst = out + (size_t)th * hd + c * V; /* (t*H + h)*hd = t*H*hd + h*hd */
        if (V == 8) {
            const uint2 u = *reinterpret_cast<const uint2 *>(src);
            const uint8_t *b = reinterpret_cast<const uint8_t *>(&u);
            uint4 r;
            uint32_t *rw = reinterpret_cast<uint32_t *>(&r);
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const float x0 = __fmul_rn(e4m3_to_f32(b[2 * j]), inv_o);
                const float x1 = __fmul_rn(e4m3_to_f32(b[2 * j + 1]), inv_o);
                rw[j] = (uint32_t)f32_to_bf16_bits(x0) | ((uint32_t)f32_to_bf16_bits(x1) << 16);
            }
            *reinterpret_cast<uint4 *>(dst) = r;
        } else {
#pragma unroll
            for (int j = 0; j < V; j++) dst[j] = f32_to_bf16_bits(__fmul_rn(e4m3_to_f32(src[j]), inv_o));
        }
    }
    if (hist > 0) {
        __shared__ bool last;
        /* Every thread of the block has read SCALE_O (and used it) before the barrier. No fence before the
         * arrival: the last block must only know that no block still has to read the slots; the outputs it
         * does not touch. */
        __syncthreads();
        if (threadIdx.x == 0) {
            const unsigned ticket = atomicAdd(reinterpret_cast<unsigned *>(scalars + FP8_STATE_ARRIVE), 1u);
            last = ticket == gridDim.x - 1;
        }
        __syncthreads();
        if (last && threadIdx.x == 0) {
            ring_update(scalars, hist);
            *reinterpret_cast<unsigned *>(scalars + FP8_STATE_ARRIVE) = 0u;
        }
    }
}

extern "C" cudaError_t fp8_quant_dequant_o(const uint8_t *o8, int n_tokens, int n_heads, int head_dim, int dp,
                                           float *scalars, int history_len, uint16_t *out,
                                           cudaStream_t stream) {
    if (n_tokens < 0 || n_heads <= 0 || head_dim <= 0 || dp < head_dim || history_len < 0 || !scalars)
        return cudaErrorInvalidValue;
    const bool vec = head_dim % 8 == 0 && dp % 8 == 0 && aligned(o8, 8) && aligned(out, 16);
    const int V = vec ? 8 : 1;
    const long long items = (long long)n_tokens * n_heads * (head_dim / V);
    if (items >= (1LL << 31)) return cudaErrorInvalidValue;
    /* with no tokens the launch still runs the ring update (one block, no items); at most 4 items per thread:
     * one 8-byte load in flight per thread needs the full occupancy to keep HBM busy */
    if (vec) {
        const unsigned blocks = fp8_grid(dequant_kernel<8>, items, 4);
        dequant_kernel<8><<<blocks, 256, 0, stream>>>(o8, (unsigned)items, head_dim, dp, scalars, history_len, out);
    } else {
        const unsigned blocks = fp8_grid(dequant_kernel<1>, items, 4);
        dequant_kernel<1><<<blocks, 256, 0, stream>>>(o8, (unsigned)items, head_dim, dp, scalars, history_len, out);
    }
    return cudaGetLastError();
}

/* ---- plain conversion (tests) ---- */

__global__ void f32_to_e4m3_kernel(const float *__restrict__ x, size_t n, uint8_t *__restrict__ out) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        out[i] = f32_to_e4m3(x[i]);
}

extern "C" cudaError_t fp8_quant_f32(const float *x, size_t n, uint8_t *out, cudaStream_t stream) {
    if (n == 0) return cudaSuccess;
    f32_to_e4m3_kernel<<<fp8_grid(f32_to_e4m3_kernel, (long long)n, 16), 256, 0, stream>>>(x, n, out);
    return cudaGetLastError();
}
