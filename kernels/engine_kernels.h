/* engine_kernels.h — C declarations of the GPU engine's own kernel launchers (kernels/layernorm.cu, pos_embed.cu,
 * rope.cu, act.cu). The attention operand kernels live in kernels.h (kernels/attn_pack.cu, owned by gpu_attn).
 *
 * Conventions (as kernels.h): a launcher takes device pointers, sizes and a stream, enqueues its work and returns
 * cudaGetLastError(); it never synchronises, allocates or logs. bf16 tensors are uint16_t bit patterns so this
 * header is plain C. Shapes are `[rows, cols]` row-major. Every kernel has a float32 CPU twin in
 * encoder/cpu/cpu_ops.c, named in its comment, and a row in tests/test_kernels.c.
 *
 * Token geometry. Kernels that need a token's place in its image read `tok` [n_tokens, 4] int32 =
 * {row, col, h, w}: the token's grid row and column inside its frame (merge order, cpu_token_pos()) and the
 * frame's grid height and width in patches. The engine fills it on the host per batch (engine_token_geometry()).
 */
#ifndef VITD_ENGINE_KERNELS_H
#define VITD_ENGINE_KERNELS_H

#include <cuda_runtime_api.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- kernels/layernorm.cu ---- */

/* LayerNorm over the last dimension (torch nn.LayerNorm on bf16: statistics and affine in float32, output
 * rounded once to bf16). Twin: cpu_layernorm.
 *   x [rows, dim] bf16, gamma, beta [dim] bf16, y [rows, dim] bf16 (may equal x). */
cudaError_t ln_bf16(const uint16_t *x, const uint16_t *gamma, const uint16_t *beta, uint16_t *y, int rows, int dim,
                    float eps, cudaStream_t stream);

/* LayerNorm feeding an FP8 GEMM (issue 14): exactly one of y (bf16, as ln_bf16) and y8 (E4M3 [rows, dim] =
 * satfinite(y_f32 * *scale), quantised from the float32 value, scale a device float); amax (or NULL) gets
 * max |y_f32| folded in with atomicMax (not reset). dim % 8 == 0, dim <= 8192, 16-byte aligned pointers
 * (cudaErrorInvalidValue otherwise). Twin: cpu_layernorm, then cpu_e4m3_from_f32(y * scale). */
cudaError_t ln_quant(const uint16_t *x, const uint16_t *gamma, const uint16_t *beta, int rows, int dim, float eps,
                     uint16_t *y, uint8_t *y8, const float *scale, float *amax, cudaStream_t stream);

/* ---- kernels/pos_embed.cu ---- */

/* Adds the bilinearly interpolated learned position embedding (MODEL.md 3.2, transformers 5.17) to the patch
 * embeddings: pe = 4-tap float32 sum over table, x = bf16(float(x) + float(bf16(pe))) as HF does in bf16.
 * Twin: cpu_pos_embed (then the bf16 cast and add).
 *   x [n_tokens, d] bf16 in place; table [side*side, d] float32; tok [n_tokens, 4] (header comment). */
cudaError_t pos_embed_add_bf16(uint16_t *x, const float *table, int side, int d, const int32_t *tok, int n_tokens,
                               cudaStream_t stream);

/* ---- kernels/rope.cu ---- */

/* Rotary angle tables of a batch (MODEL.md 3.3): for i < hd/4 the row angle, for hd/4 <= i < hd/2 the column
 * angle (the second half of HF's cos_n repeats these): ang = float(row or col) * inv_freq[i mod hd/4].
 * Twin: cpu_rope_cos_sin (its first hd/2 columns).
 *   tok [n_tokens, 4]; inv_freq [hd/4] float32 (cpu_rope_inv_freq); cos_t, sin_t [n_tokens, hd/2] float32. */
cudaError_t rope_tables(const int32_t *tok, int n_tokens, const float *inv_freq, int head_dim, float *cos_t,
                        float *sin_t, cudaStream_t stream);

/* QKV split + 2-D rotary on q and k + head_dim pad, in one pass over the QKV GEMM output:
 *   qkv [n_tokens, 3*H*hd] bf16 (q | k | v, head h at h*hd of its third)
 *   q, k, v [n_tokens, H, dp] bf16; q and k rotated in float32 (rotate_half, as HF: q*cos + rotate_half(q)*sin,
 *   no fused multiply-add) then rounded to bf16; v copied; lanes hd..dp-1 written as 0.
 *   cos_t, sin_t [n_tokens, hd/2] from rope_tables. hd even, dp >= hd. Twin: cpu_rope_apply. */
cudaError_t rope_pack_qkv_bf16(const uint16_t *qkv, const float *cos_t, const float *sin_t, int n_tokens,
                               int n_heads, int head_dim, int dp, uint16_t *q, uint16_t *k, uint16_t *v,
                               cudaStream_t stream);

/* ---- kernels/attn_rope.cu ---- */

/* 1 when attn_rope_bf16 runs this head shape: head_dim 72 padded to 80, or 64 (padded 64). */
int attn_rope_supported(int head_dim, int head_dim_padded);

/* vitd's own short-sequence BF16 attention with the rotary fused into its loads, replacing rope_pack_qkv_bf16 +
 * cuDNN's BF16 attention: per cu_seqlens segment and head, o = softmax(rot(q) rot(k)^T hd^-0.5) v, q and k rotated
 * and rounded to bf16 exactly as rope_pack_qkv_bf16 does, P rounded to bf16 for P V, float32 softmax and sums.
 *   qkv [n_tokens, 3*H*hd] bf16, cos_t / sin_t [n_tokens, hd/2] (rope_tables), cu_seqlens [n_seg + 1] device int32
 *   (cu[0] = 0, cu[n_seg] = n_tokens), o [n_tokens, H, dp] bf16 with lanes hd..dp-1 written 0.
 * 8-byte aligned pointers, attn_rope_supported shapes (cudaErrorInvalidValue otherwise).
 * Twins: cpu_rope_apply (rounded to bf16) then cpu_attention. */
cudaError_t attn_rope_bf16(const uint16_t *qkv, const float *cos_t, const float *sin_t, const int32_t *cu_seqlens,
                           int n_seg, int n_tokens, int n_heads, int head_dim, int head_dim_padded, uint16_t *o,
                           cudaStream_t stream);
/* The same in a chosen tiling: 64 or 128 query rows per thread block in one pass over the keys (the same bits), or
 * 64 rows with the keys split over two warp groups (attn_rope_split.cu). The engine picks per batch size what it
 * measured fastest; attn_rope_bf16 runs the 128-row one. */
enum { ATTN_ROPE_ROWS64 = 0, ATTN_ROPE_ROWS128 = 1, ATTN_ROPE_SPLIT64 = 2, ATTN_ROPE_TILINGS = 3 };
cudaError_t attn_rope_bf16_tiled(const uint16_t *qkv, const float *cos_t, const float *sin_t,
                                 const int32_t *cu_seqlens, int n_seg, int n_tokens, int n_heads, int head_dim,
                                 int head_dim_padded, uint16_t *o, int tiling, cudaStream_t stream);

/* ---- kernels/act.cu ---- */

/* Exact (erf) GELU in place, x = bf16(0.5 x (1 + erf(x / sqrt 2))) evaluated in float32 (nn.GELU() on bf16, the
 * mergers' activation; cuBLASLt has no erf epilogue). Twin: cpu_act_value(CPU_ACT_GELU_ERF). x [n] bf16. */
cudaError_t gelu_erf_bf16(uint16_t *x, size_t n, cudaStream_t stream);

/* dtype casts: f32 -> bf16 (round to nearest even, NaN kept) and bf16 -> f32 (exact). [n] each. */
cudaError_t convert_f32_to_bf16(const float *in, uint16_t *out, size_t n, cudaStream_t stream);
cudaError_t convert_bf16_to_f32(const uint16_t *in, float *out, size_t n, cudaStream_t stream);

/* A deliberate illegal-address fault (kernels/fault.cu): fault injection only. */
cudaError_t fault_illegal_write(cudaStream_t stream);

#ifdef __cplusplus
}
#endif
#endif
