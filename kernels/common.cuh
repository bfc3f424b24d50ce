/* common.cuh — device helpers shared by the kernel files: bf16 and FP8 E4M3 conversions, 16-byte vector
 * loads/stores, a float atomic max for non-negative values, and the launch-result idiom of the launchers.
 * Device code only; the C declarations of the launchers live in kernels.h. */
#ifndef VITD_COMMON_CUH
#define VITD_COMMON_CUH

#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>
#include <stdint.h>

/* Largest finite E4M3 value. */
#define VITD_E4M3_MAX 448.0f

static __device__ __forceinline__ float bf16_bits_to_f32(uint16_t h) {
    return __uint_as_float((uint32_t)h << 16);
}

/* Round-to-nearest-even float -> bf16 bits (the hardware conversion). */
static __device__ __forceinline__ uint16_t f32_to_bf16_bits(float f) {
    __nv_bfloat16 b = __float2bfloat16_rn(f);
    return *reinterpret_cast<uint16_t *>(&b);
}

/* float -> E4M3 byte, round to nearest even, saturating to +-448 (NaN stays NaN). */
static __device__ __forceinline__ uint8_t f32_to_e4m3(float f) {
    return (uint8_t)__nv_cvt_float_to_fp8(f, __NV_SATFINITE, __NV_E4M3);
}

static __device__ __forceinline__ float e4m3_to_f32(uint8_t b) {
    __half_raw hr = __nv_cvt_fp8_to_halfraw((__nv_fp8_storage_t)b, __NV_E4M3);
    return __half2float(__half(hr));
}

/* Atomic max for floats that are >= 0 (their bit patterns order like unsigned ints). NaN is ignored by the
 * callers' fmaxf before it gets here. */
static __device__ __forceinline__ void atomic_max_nonneg(float *addr, float v) {
    atomicMax(reinterpret_cast<unsigned int *>(addr), __float_as_uint(v));
}

static __device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Launchers end with `return cudaGetLastError();` so a bad launch configuration surfaces at the call. */

#endif
