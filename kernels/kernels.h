/* kernels.h — C declarations of every CUDA kernel launcher in the kernels/ .cu files.
 *
 * Conventions: a launcher takes device pointers, sizes and a stream, enqueues its work and returns the launch's
 * cudaError_t (cudaGetLastError()); it never synchronises, allocates or logs. bf16 tensors are passed as
 * uint16_t bit patterns and FP8 E4M3 tensors as uint8_t, so this header is plain C. Shapes are written
 * `[rows, cols]` row-major; "Dp" is a head_dim padded to a multiple of 16 (72 -> 80), pad lanes hold zeros.
 * Each kernel has a CPU twin and a test case (the attention ones in tests/test_gpu_attn.c).
 */
#ifndef VITD_KERNELS_H
#define VITD_KERNELS_H

#include <cuda_runtime_api.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- attention operand packing (kernels/attn_pack.cu) ---- */

/* Per-tensor FP8 scalars of one attention call, as cuDNN reads them: a device float array of
 * ATTN_FP8_N_SLOTS slots, each slot ATTN_FP8_SLOT_FLOATS floats (16 bytes) wide, value in its first float.
 * Slot i lives at `scalars + i * ATTN_FP8_SLOT_FLOATS`. Meaning (x_fp8 = x * scale, x = x_fp8 * descale):
 *   DESCALE_Q/K/V  dequantisation factors of the FP8 Q, K, V (amax/448 for per-tensor amax scaling)
 *   DESCALE_S      1/SCALE_S
 *   SCALE_S        quantisation factor of the softmax probabilities P before the P.V product (448: P <= 1)
 *   SCALE_O        quantisation factor of the FP8 output O (448/amax(V) cannot overflow: each O row is a
 *                  convex combination of V rows)
 *   AMAX_S, AMAX_O outputs written by the attention: max|P| and max|O| before SCALE_O. */
enum {
    ATTN_FP8_DESCALE_Q = 0,
    ATTN_FP8_DESCALE_K,
    ATTN_FP8_DESCALE_V,
    ATTN_FP8_DESCALE_S,
    ATTN_FP8_SCALE_S,
    ATTN_FP8_SCALE_O,
    ATTN_FP8_AMAX_S,
    ATTN_FP8_AMAX_O,
    ATTN_FP8_N_SLOTS
};
#define ATTN_FP8_SLOT_FLOATS 4

/* Splits the fused QKV projection output into padded per-head tensors.
 *   qkv      [n_tokens, 3 * n_heads * head_dim] bf16 (q columns, then k, then v; head h at h*head_dim)
 *   q, k, v  [n_tokens, n_heads, head_dim_padded] bf16; lanes head_dim..head_dim_padded-1 are written as 0. */
cudaError_t attn_pack_qkv_bf16(const uint16_t *qkv, int n_tokens, int n_heads, int head_dim, int head_dim_padded,
                               uint16_t *q, uint16_t *k, uint16_t *v, cudaStream_t stream);

/* Drops the pad lanes of the attention output: o [n_tokens, n_heads, head_dim_padded] bf16 ->
 * out [n_tokens, n_heads * head_dim] bf16 (heads concatenated, as the output projection reads them). */
cudaError_t attn_unpack_bf16(const uint16_t *o, int n_tokens, int n_heads, int head_dim, int head_dim_padded,
                             uint16_t *out, cudaStream_t stream);

/* amax3[0..2] = max |q|, max |k|, max |v| over the qkv buffer (layout as attn_pack_qkv_bf16). Zeroes amax3 first
 * (cudaMemsetAsync on the stream). NaN elements are ignored. */
cudaError_t attn_qkv_amax_bf16(const uint16_t *qkv, int n_tokens, int n_heads, int head_dim, float *amax3,
                               cudaStream_t stream);

/* Fills the FP8 scalar slots from amax3 (one thread): DESCALE_X = max(amax_x, 1e-12) / 448 for Q, K, V;
 * SCALE_S = 448, DESCALE_S = 1/448; SCALE_O = 448 / max(amax_v, 1e-12); AMAX_S = AMAX_O = 0. */
cudaError_t attn_fp8_scales_from_amax(const float *amax3, float *scalars, cudaStream_t stream);

/* Like attn_pack_qkv_bf16 but quantises: x_fp8 = E4M3_satfinite(x * (1/DESCALE_X)) (float32 reciprocal, then
 * a float32 product, rounded to nearest even) with the scalar slots read on the device.
 * q8, k8, v8 [n_tokens, n_heads, head_dim_padded] E4M3, pad lanes 0. */
cudaError_t attn_pack_qkv_fp8(const uint16_t *qkv, int n_tokens, int n_heads, int head_dim, int head_dim_padded,
                              const float *scalars, uint8_t *q8, uint8_t *k8, uint8_t *v8, cudaStream_t stream);

/* Dequantises the FP8 attention output: out = bf16(o8 * (1/SCALE_O)), dropping pad lanes.
 *   o8 [n_tokens, n_heads, head_dim_padded] E4M3 -> out [n_tokens, n_heads * head_dim] bf16. */
cudaError_t attn_unpack_fp8(const uint8_t *o8, int n_tokens, int n_heads, int head_dim, int head_dim_padded,
                            const float *scalars, uint16_t *out, cudaStream_t stream);

/* The per-batch index tensors cuDNN's ragged attention reads, from cu_seqlens (one block, no host round trip).
 * n images, cu_seqlens [n + 1] (cu_seqlens[0] = 0); b_plan >= n entries written.
 *   offsets       [b_plan + 1]  offsets[i] = cu_seqlens[min(i, n)] * elems_per_token (element offsets of each
 *                               entry's first token; entries past n start at the end and are empty)
 *   seqlen_all    [b_plan]      tokens of entry i (0 for i >= n)
 *   seqlen_packed [b_plan]      as seqlen_all, but 0 for images with >= bf16_min_len tokens (they run on their
 *                               own BF16 plan; BF16 accepts empty entries)
 *   seqlen_fp8    [b_plan]      as seqlen_all, but 1 for images with >= fp8_min_len tokens (they run on their own
 *                               FP8 plan; an empty FP8 entry crashes the kernel, so they keep a 1-token dummy)
 * Pass INT_MAX as a threshold to keep every image. */
cudaError_t attn_seqlen_setup(const int32_t *cu_seqlens, int n, int b_plan, int elems_per_token, int bf16_min_len,
                              int fp8_min_len, int32_t *offsets, int32_t *seqlen_all, int32_t *seqlen_packed,
                              int32_t *seqlen_fp8, cudaStream_t stream);

/* When one FP8 attention call runs as several launches, each launch writes its AMAX_S / AMAX_O into its own
 * slot pair of `partial` (launch i: slots 2i and 2i+1, ATTN_FP8_SLOT_FLOATS floats apart); this folds them:
 * scalars[AMAX_S] = max_i partial[2i], scalars[AMAX_O] = max_i partial[2i + 1]. One thread. */
cudaError_t attn_fp8_amax_fold(const float *partial, int n_launches, float *scalars, cudaStream_t stream);

#ifdef __cplusplus
}
#endif
#endif
