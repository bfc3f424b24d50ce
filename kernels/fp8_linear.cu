/* fp8_linear.cu — the small kernels of the FP8 linear layers (issue 14; fp8_kernels.h "FP8 linear"): the amax and
 * E4M3 quantisation of a bf16 tensor (weights at load, the first batch's fc1 output), the weights' per-tensor
 * scales, and the dynamic-scale ring of the activations, updated once per batch for every layer.
 *
 * Math. Weights: descale = amax / 448 (1 when the tensor is all zeros), w8 = satfinite(w * (1/descale)), exactly
 * cpu_fp8_descale + cpu_fp8_fake_quant. Activations (dynamic): each layer keeps, per GEMM input (QKV, fc1, fc2),
 * the amax of the batch being run (folded in by its producer: ln_quant's atomic, cuBLASLt's AMAX_D for fc1's
 * output), and a ring of the last `hist` of them; after the batch the ring update pushes the amax, resets it and
 * sets the next batch's descale = max(ring) / 448 (1/448^2 when the ring holds only zeros) and scale =
 * 1 / descale (the quantiser's multiplier, what LayerNorm and cuBLASLt's D_SCALE read).
 * Launch. fp8_amax_bf16 / fp8_quant_bf16: grid-stride, 256 threads, 8 values per item with 16-byte loads when
 *   n % 8 == 0 and the pointers allow it; one atomic per block at most. The ring update: one warp per layer,
 *   lane t < 3 handling input t.
 * Twins: cpu_fp8_descale, cpu_e4m3_from_f32 (encoder/cpu/cpu_ops.c); the ring's twin is fp8_history
 * (encoder/gpu/fp8_scales.c). Tests: tests/test_kernels.c rows "fp8w", "lin8".
 */
#include "common.cuh"
#include "fp8_kernels.h"

static __device__ __forceinline__ void block_fold_max(float m, float *amax) {
    __shared__ float red[8];
    m = warp_max(m);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (lane == 0) red[warp] = m;
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 0; w < (int)(blockDim.x >> 5); w++) m = fmaxf(m, red[w]);
        if (m > __ldcg(amax)) atomic_max_nonneg(amax, m);
    }
}

template <bool VEC>
__global__ __launch_bounds__(256) void amax_kernel(const uint16_t *__restrict__ x, size_t n, float *amax) {
    float m = 0.f;
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    if (VEC) {
        for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n / 8; i += stride) {
            const uint4 u = reinterpret_cast<const uint4 *>(x)[i];
            const uint16_t *h = reinterpret_cast<const uint16_t *>(&u);
#pragma unroll
            for (int j = 0; j < 8; j++) m = fmaxf(m, fabsf(bf16_bits_to_f32(h[j])));
        }
    } else {
        for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
            m = fmaxf(m, fabsf(bf16_bits_to_f32(x[i])));
    }
    block_fold_max(m, amax);
}

template <bool VEC>
__global__ __launch_bounds__(256) void quant_kernel(const uint16_t *__restrict__ x, size_t n,
                                                    const float *__restrict__ descale, uint8_t *__restrict__ out) {
    const float inv = __fdiv_rn(1.0f, *descale);
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    if (VEC) {
        for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n / 8; i += stride) {
            const uint4 u = reinterpret_cast<const uint4 *>(x)[i];
            const uint16_t *h = reinterpret_cast<const uint16_t *>(&u);
            uint2 q;
            uint8_t *qb = reinterpret_cast<uint8_t *>(&q);
#pragma unroll
            for (int j = 0; j < 8; j++) qb[j] = f32_to_e4m3(bf16_bits_to_f32(h[j]) * inv);
            reinterpret_cast<uint2 *>(out)[i] = q;
        }
    } else {
        for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
            out[i] = f32_to_e4m3(bf16_bits_to_f32(x[i]) * inv);
    }
}

static unsigned grid_of(size_t items) {
    size_t b = (items + 255) / 256;
    if (b < 1) b = 1;
    return (unsigned)(b < 4096 ? b : 4096); /* grid-stride beyond: one atomic per block */
}

static bool vec_ok(const void *a, const void *b, size_t n) {
    return n % 8 == 0 && (((uintptr_t)a | (uintptr_t)b) & 15u) == 0;
}

extern "C" cudaError_t fp8_amax_bf16(const uint16_t *x, size_t n, float *amax, cudaStream_t stream) {
    if (!amax) return cudaErrorInvalidValue;
    if (n == 0) return cudaSuccess;
    if (vec_ok(x, x, n)) amax_kernel<true><<<grid_of(n / 8), 256, 0, stream>>>(x, n, amax);
    else amax_kernel<false><<<grid_of(n), 256, 0, stream>>>(x, n, amax);
    return cudaGetLastError();
}

extern "C" cudaError_t fp8_quant_bf16(const uint16_t *x, size_t n, const float *descale, uint8_t *out,
                                      cudaStream_t stream) {
    if (!descale || !out) return cudaErrorInvalidValue;
    if (n == 0) return cudaSuccess;
    if (vec_ok(x, x, n) && ((uintptr_t)out & 7u) == 0)
        quant_kernel<true><<<grid_of(n / 8), 256, 0, stream>>>(x, n, descale, out);
    else quant_kernel<false><<<grid_of(n), 256, 0, stream>>>(x, n, descale, out);
    return cudaGetLastError();
}

__global__ void weight_descale_kernel(float *v, int n, int stride) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) v[(size_t)i * stride] = v[(size_t)i * stride] > 0.0f ? __fdiv_rn(v[(size_t)i * stride], VITD_E4M3_MAX)
                                                                     : 1.0f;
}

extern "C" cudaError_t fp8_weight_descale(float *amax_to_descale, int n, int stride, cudaStream_t stream) {
    if (n <= 0) return cudaSuccess;
    if (stride < 1) return cudaErrorInvalidValue;
    weight_descale_kernel<<<(n + 127) / 128, 128, 0, stream>>>(amax_to_descale, n, stride);
    return cudaGetLastError();
}

/* One warp per layer; lane t < LIN8_INPUTS updates input t (rings of at most a few dozen entries). */
__global__ void lin8_ring_kernel(float *state, size_t stride, int hist) {
    float *st = state + (size_t)blockIdx.x * stride;
    const int t = threadIdx.x;
    if (t < LIN8_INPUTS) {
        const unsigned steps = __float_as_uint(st[LIN8_STEPS]);
        float *ring = st + LIN8_RING + t * hist;
        const float a = st[LIN8_AT(LIN8_AMAX, t)];
        ring[steps % (unsigned)hist] = isfinite(a) ? a : 0.0f; /* a NaN or inf batch does not poison the ring */
        st[LIN8_AT(LIN8_AMAX, t)] = 0.0f;
        float m = 0.0f;
        for (int i = 0; i < hist; i++) m = fmaxf(m, ring[i]);
        const float d = m > 0.0f ? __fdiv_rn(m, VITD_E4M3_MAX) : __fdiv_rn(1.0f, VITD_E4M3_MAX * VITD_E4M3_MAX);
        st[LIN8_AT(LIN8_DESCALE, t)] = d;
        st[LIN8_AT(LIN8_SCALE, t)] = __fdiv_rn(1.0f, d);
    }
    __syncwarp();
    if (t == 0) st[LIN8_STEPS] = __uint_as_float(__float_as_uint(st[LIN8_STEPS]) + 1u);
}

extern "C" cudaError_t lin8_ring_update(float *state, int layers, size_t stride, int history_len,
                                        cudaStream_t stream) {
    if (!state || layers <= 0 || history_len <= 0) return cudaErrorInvalidValue;
    lin8_ring_kernel<<<layers, 32, 0, stream>>>(state, stride, history_len);
    return cudaGetLastError();
}
