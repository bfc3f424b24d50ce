/* act.cu — element-wise kernels of the engine: the mergers' exact GELU and dtype casts.
 *
 * Math.
 *   gelu_erf_bf16:       x = bf16( 0.5 x (1 + erf(x / sqrt 2)) ), float32 inside (nn.GELU() on a bf16 tensor; the
 *                        mergers' activation after fc1, which cuBLASLt's epilogues cannot do: they have only the
 *                        tanh approximation). erff is the full-precision CUDA erf (max 2 ulp).
 *   convert_f32_to_bf16: round to nearest even (NaN stays NaN), as torch's .to(bfloat16).
 *   convert_bf16_to_f32: exact widening.
 * Layout: flat arrays of n elements. Launch: 256 threads per block, grid-stride; each thread handles 8 elements
 * with 16-byte (bf16) / 2x16-byte (f32) accesses when n % 8 == 0 and the pointers are 16-byte aligned, else one
 * element. No shared memory.
 * Twins: cpu_act_value(CPU_ACT_GELU_ERF), util.h's f32_to_bf16 / bf16_to_f32. Tests: tests/test_kernels.c rows
 * "gelu_erf", "f32_to_bf16", "bf16_to_f32".
 */
#include "common.cuh"
#include "engine_kernels.h"

static unsigned grid_blocks(long long work, int threads) {
    long long b = (work + threads - 1) / threads;
    if (b > 65535LL * 32) b = 65535LL * 32;
    if (b < 1) b = 1;
    return (unsigned)b;
}

static __device__ __forceinline__ float gelu_erf(float x) { return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f)); }

template <int V>
__global__ __launch_bounds__(256) void gelu_erf_kernel(uint16_t *__restrict__ x, long long n_vec) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n_vec;
         i += (long long)gridDim.x * blockDim.x) {
        if (V == 8) {
            uint4 u = reinterpret_cast<uint4 *>(x)[i];
            uint16_t *h = reinterpret_cast<uint16_t *>(&u);
#pragma unroll
            for (int j = 0; j < 8; j++) h[j] = f32_to_bf16_bits(gelu_erf(bf16_bits_to_f32(h[j])));
            reinterpret_cast<uint4 *>(x)[i] = u;
        } else {
            x[i] = f32_to_bf16_bits(gelu_erf(bf16_bits_to_f32(x[i])));
        }
    }
}

extern "C" cudaError_t gelu_erf_bf16(uint16_t *x, size_t n, cudaStream_t stream) {
    if (n == 0) return cudaSuccess;
    if (n % 8 == 0 && ((uintptr_t)x & 15u) == 0) {
        const long long nv = (long long)(n / 8);
        gelu_erf_kernel<8><<<grid_blocks(nv, 256), 256, 0, stream>>>(x, nv);
    } else {
        gelu_erf_kernel<1><<<grid_blocks((long long)n, 256), 256, 0, stream>>>(x, (long long)n);
    }
    return cudaGetLastError();
}

template <int V>
__global__ __launch_bounds__(256) void f32_to_bf16_kernel(const float *__restrict__ in, uint16_t *__restrict__ out,
                                                          long long n_vec) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n_vec;
         i += (long long)gridDim.x * blockDim.x) {
        if (V == 8) {
            const float4 a = reinterpret_cast<const float4 *>(in)[2 * i];
            const float4 b = reinterpret_cast<const float4 *>(in)[2 * i + 1];
            uint4 u;
            uint16_t *h = reinterpret_cast<uint16_t *>(&u);
            h[0] = f32_to_bf16_bits(a.x); h[1] = f32_to_bf16_bits(a.y);
            h[2] = f32_to_bf16_bits(a.z); h[3] = f32_to_bf16_bits(a.w);
            h[4] = f32_to_bf16_bits(b.x); h[5] = f32_to_bf16_bits(b.y);
            h[6] = f32_to_bf16_bits(b.z); h[7] = f32_to_bf16_bits(b.w);
            reinterpret_cast<uint4 *>(out)[i] = u;
        } else {
            out[i] = f32_to_bf16_bits(in[i]);
        }
    }
}

template <int V>
__global__ __launch_bounds__(256) void bf16_to_f32_kernel(const uint16_t *__restrict__ in, float *__restrict__ out,
                                                          long long n_vec) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n_vec;
         i += (long long)gridDim.x * blockDim.x) {
        if (V == 8) {
            const uint4 u = reinterpret_cast<const uint4 *>(in)[i];
            const uint16_t *h = reinterpret_cast<const uint16_t *>(&u);
            reinterpret_cast<float4 *>(out)[2 * i] =
                make_float4(bf16_bits_to_f32(h[0]), bf16_bits_to_f32(h[1]), bf16_bits_to_f32(h[2]),
                            bf16_bits_to_f32(h[3]));
            reinterpret_cast<float4 *>(out)[2 * i + 1] =
                make_float4(bf16_bits_to_f32(h[4]), bf16_bits_to_f32(h[5]), bf16_bits_to_f32(h[6]),
                            bf16_bits_to_f32(h[7]));
        } else {
            out[i] = bf16_bits_to_f32(in[i]);
        }
    }
}

extern "C" cudaError_t convert_f32_to_bf16(const float *in, uint16_t *out, size_t n, cudaStream_t stream) {
    if (n == 0) return cudaSuccess;
    if (n % 8 == 0 && (((uintptr_t)in | (uintptr_t)out) & 15u) == 0) {
        const long long nv = (long long)(n / 8);
        f32_to_bf16_kernel<8><<<grid_blocks(nv, 256), 256, 0, stream>>>(in, out, nv);
    } else {
        f32_to_bf16_kernel<1><<<grid_blocks((long long)n, 256), 256, 0, stream>>>(in, out, (long long)n);
    }
    return cudaGetLastError();
}

extern "C" cudaError_t convert_bf16_to_f32(const uint16_t *in, float *out, size_t n, cudaStream_t stream) {
    if (n == 0) return cudaSuccess;
    if (n % 8 == 0 && (((uintptr_t)in | (uintptr_t)out) & 15u) == 0) {
        const long long nv = (long long)(n / 8);
        bf16_to_f32_kernel<8><<<grid_blocks(nv, 256), 256, 0, stream>>>(in, out, nv);
    } else {
        bf16_to_f32_kernel<1><<<grid_blocks((long long)n, 256), 256, 0, stream>>>(in, out, (long long)n);
    }
    return cudaGetLastError();
}
