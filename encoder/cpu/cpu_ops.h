/* cpu_ops.h — the float32 CPU twin of every vitd kernel: one small, documented function per operation of the
 * Qwen3-VL vision tower (MODEL.md section 3), one truth for the math.
 *
 * Each GPU kernel (kernels/NAME.cu) is checked against the function here that bears its name in its header comment;
 * cpu_forward.c strings these functions together into the reference forward pass. The functions are pure: they
 * read their inputs, write their outputs, keep no state, and (except cpu_attention) allocate nothing. Every
 * pointer's layout is written beside it: `[rows, cols]` is row-major float32, contiguous unless a leading
 * dimension (`ld`, in floats) is given.
 *
 * Precision: matrix products are OpenBLAS sgemm (float32 accumulation, as cuBLAS in float32); reductions that
 * decide accuracy (LayerNorm statistics, the softmax denominator) are accumulated in double; transcendental
 * activations are evaluated in double and rounded once to float32.
 *
 * Threads: `threads` is the worker count for this call's own loops (0 = number of online cores, 1 = run in the
 * calling thread). Workers are started per call and joined before return. OpenBLAS runs its own pool inside sgemm,
 * which is why sgemm is only ever called from the calling thread. All functions are thread-safe (no globals).
 */
#ifndef VITD_CPU_OPS_H
#define VITD_CPU_OPS_H

#include <stddef.h>
#include <stdint.h>

#include "vitd.h"

/* ---- threads ---- */

/* Resolves a thread count: 0 -> online cores (at least 1); otherwise the value, at least 1. */
int cpu_threads_resolve(int threads);

/* Body of a parallel loop: handles items [begin, end). */
typedef void (*cpu_range_fn)(void *ctx, size_t begin, size_t end);

/* Runs fn over items [0, n) split into contiguous chunks on up to `threads` workers (the calling thread is one of
 * them). Fewer workers are used when n / min_items_per_worker is small; tiny loops run inline. Never fails: if a
 * worker cannot be started its share runs in the calling thread. Each item is handled exactly once, so results
 * never depend on the thread count. */
void cpu_parallel_for(int threads, size_t n, size_t min_items_per_worker, cpu_range_fn fn, void *ctx);

/* ---- activations ---- */

typedef enum {
    CPU_ACT_NONE = 0,
    CPU_ACT_GELU_TANH = 1, /* 0.5 y (1 + tanh(sqrt(2/pi) (y + 0.044715 y^3))): blocks' MLP, "gelu_pytorch_tanh" */
    CPU_ACT_GELU_ERF = 2,  /* 0.5 y (1 + erf(y / sqrt(2))): mergers, nn.GELU() */
} cpu_act;

/* One activation value, evaluated in double and rounded to float32. */
float cpu_act_value(cpu_act act, float y);

/* x[i] = act(x[i]) for i < n, in place. */
void cpu_activate(float *x, size_t n, cpu_act act, int threads);

/* ---- linear layers ---- */

/* y = act(x W^T + b), torch's nn.Linear with an optional fused activation (the twin of a cuBLASLt GEMM with a
 * bias/GELU epilogue). Bias is added to the float32 product, then the activation is applied.
 *   x [n, k]   activations
 *   w [m, k]   PyTorch Linear weight ([out, in])
 *   b [m]      bias, or NULL for none
 *   y [n, m]   output; must not overlap x or w
 * n, k, m >= 1. */
void cpu_linear(const float *x, const float *w, const float *b, float *y, size_t n, size_t k, size_t m,
                cpu_act act, int threads);

/* ---- elementwise and normalisation ---- */

/* x[i] += y[i] for i < n (residual add). x and y may not overlap unless equal. */
void cpu_add(float *x, const float *y, size_t n, int threads);

/* LayerNorm over the last dimension, torch's nn.LayerNorm: biased variance, statistics accumulated in double,
 *   y = (x - mean) / sqrt(var + eps) * gamma + beta,   computed in double and rounded once.
 *   x [n, dim]   input
 *   gamma, beta [dim]
 *   y [n, dim]   output; may equal x (in place) */
void cpu_layernorm(const float *x, const float *gamma, const float *beta, float *y, size_t n, size_t dim,
                   double eps, int threads);

/* Residual add fused with the next LayerNorm (the twin of the residual+LayerNorm kernel):
 *   x = x + r;  y = LayerNorm(x)   over rows of dim.
 *   x [n, dim]   residual stream, updated in place
 *   r [n, dim]   branch output to add
 *   y [n, dim]   normalised output; must not overlap x or r
 * Bitwise equal to cpu_add() followed by cpu_layernorm(). */
void cpu_add_layernorm(float *x, const float *r, const float *gamma, const float *beta, float *y, size_t n,
                       size_t dim, double eps, int threads);

/* ---- token geometry ---- */

/* Grid position of the q-th token of one frame in 2x2-merge-block order (MODEL.md 2.7, 3.2):
 * frame of grid width w (in patches), merge size m; row = block_row*m + in_row, col = block_col*m + in_col. */
void cpu_token_pos(int q, int w, int m, int *row, int *col);

/* Total tokens t*h*w over the grids. */
size_t cpu_grid_tokens(const vitd_grid *grids, int n_images);

/* Attention segments: one per frame, cu[0] = 0, cu[s+1] = cu[s] + h*w (t entries per image). cu holds
 * 1 + sum(t) entries. Returns the number of segments. */
int cpu_cu_seqlens(const vitd_grid *grids, int n_images, int32_t *cu);

/* ---- position embedding (MODEL.md 3.2, transformers 5.17 code path) ---- */

/* Bilinear, align_corners=True resample of the learned side x side position table for each image, in merge
 * order, repeated for each of its t frames. Float32 throughout, exactly as 5.17 computes it:
 *   src_r = float(row*(side-1)) / float(max(h-1, 1))     (one rounded division; same for columns with w)
 *   r0 = floor(src_r), fr = src_r - r0, r1 = min(r0+1, side-1);  wr0 = 1 - fr, wr1 = 1 - |fr - 1|
 *   pe = ((e(r0,c0) wr0 wc0 + e(r0,c1) wr0 wc1) + e(r1,c0) wr1 wc0) + e(r1,c1) wr1 wc1   (weights: float products)
 *   table [side*side, d]   pos_embed.weight, entry (r, c) at row r*side + c
 *   grids [n_images]       h, w multiples of m
 *   out   [N, d]           N = cpu_grid_tokens(grids); images and frames concatenated in order
 * The caller adds out to the patch embeddings (the fp32 reference skips HF's bf16 cast of pe). */
void cpu_pos_embed(const float *table, int side, int d, const vitd_grid *grids, int n_images, int m, float *out,
                   int threads);

/* ---- 2-D rotary (MODEL.md 3.3) ---- */

/* inv_freq[i] = 1 / theta^(float(2i) / float(hd/2)) in float32, i < hd/4. */
void cpu_rope_inv_freq(int head_dim, double theta, float *inv_freq);

/* cos/sin tables for every token of the batch (float32 angles, cos/sin evaluated in double and rounded):
 *   ang_h[i] = float(row) * inv_freq[i], ang_w[i] = float(col) * inv_freq[i], i < q4 = hd/4
 *   cos[n] = [cos ang_h, cos ang_w, cos ang_h, cos ang_w]   (length hd; sin likewise)
 *   cos, sin [N, hd]   N = cpu_grid_tokens(grids); rows repeat for each frame
 * head_dim must be a multiple of 4. */
void cpu_rope_cos_sin(const vitd_grid *grids, int n_images, int m, int head_dim, double theta, float *cos_out,
                      float *sin_out, int threads);

/* rotate_half rotary on q or k in place, float32 (half = hd/2; dimension j < half pairs with j + half):
 *   out[j]      = v[j] cos[j] - v[j+half] sin[j]
 *   out[j+half] = v[j+half] cos[j+half] + v[j] sin[j+half]
 *   x [n, ld]        token t, head h starts at x[t*ld + h*hd] (e.g. ld = 3d inside a qkv buffer, or H*hd)
 *   cos, sin [n, hd] from cpu_rope_cos_sin() */
void cpu_rope_apply(float *x, size_t ld, size_t n, int heads, int head_dim, const float *cos_in,
                    const float *sin_in, int threads);

/* ---- attention ---- */

/* Block-diagonal (per segment), non-causal scaled dot-product attention, as sdpa per cu_seqlens segment:
 *   s[a][b] = (q_a . k_b) * scale,  p = softmax_b(s) (max subtracted, exp in float, sum in double),
 *   o_a = sum_b p[a][b] v_b                       for a, b in the same segment, per head
 *   q, k, v [N, ld_in]    token t, head h at q[t*ld_in + h*hd] (e.g. three thirds of a [N, 3d] qkv buffer)
 *   out     [N, ld_out]   token t, head h at out[t*ld_out + h*hd]; must not overlap q, k, v
 *   cu      [n_seg + 1]   int32 segment bounds, cu[0] = 0, increasing
 * Work runs per (segment, head, block of query rows): scores for at most block_rows x L are held at once
 * (block_rows = 0 picks rows so that a block holds about 4M floats), so a 16K-token image needs bounded memory.
 * sgemm runs in the calling thread; the softmax rows run on `threads` workers.
 * Returns VITD_E_NOMEM (message names the segment length) if the score block cannot be allocated. */
vitd_status cpu_attention(const float *q, const float *k, const float *v, size_t ld_in, float *out, size_t ld_out,
                          const int32_t *cu, int n_seg, int heads, int head_dim, float scale, int block_rows,
                          int threads, vitd_err *err);

/* ---- fp8 ---- */

/* The twins of kernels/fp8_quant.cu (FP8 E4M3 attention operands; fp8_kernels.h has the layouts). E4M3: 1 sign,
 * 4 exponent bits (bias 7), 3 mantissa bits; largest finite 448, smallest normal 2^-6, subnormals m * 2^-9;
 * 0x7f / 0xff are NaN, there is no infinity. */

/* float -> E4M3 byte exactly as the GPU's cvt.rn.satfinite.e4m3x2.f32 (__nv_cvt_float_to_fp8 with
 * __NV_SATFINITE): round to nearest even from the float value (one rounding), subnormals on the 2^-9 grid
 * (|x| <= 2^-10 -> signed zero), |x| > 464 (448 + half an ulp) and +-inf -> +-448, NaN -> 0x7f. */
uint8_t cpu_e4m3_from_f32(float x);
/* E4M3 byte -> float (exact; NaN for 0x7f / 0xff). */
float cpu_e4m3_to_f32(uint8_t b);

/* Rotary + quantise + pad + amax of the fused kernel fp8_quant_qkv_rope, in the same float32 operations:
 *   qkv [n, 3*heads*hd]  values of the bf16 QKV GEMM output (q | k | v, head h at h*hd of its third)
 *   cos_t, sin_t [n, hd/2]  rotary tables (the first hd/2 columns of cpu_rope_cos_sin, or rope_tables)
 *   q, k: lo = a*c - b*s, hi = b*c + a*s (a = x[j], b = x[j+hd/2]; each product and sum rounded to float32);
 *   x8 = cpu_e4m3_from_f32(x * inv), inv = 1.0f / descale3[0|1|2] (float32 division) for q, k, v
 *   q8, k8, v8 [n, heads, dp] E4M3, lanes hd..dp-1 = 0; descale3 == NULL computes the amax only (q8.. unused)
 *   amax3 [3]: max |q rotated|, |k rotated|, |v| over the batch folded into the values it holds (NaN ignored).
 * hd even, dp >= hd. Result independent of `threads`. */
void cpu_fp8_quant_qkv_rope(const float *qkv, const float *cos_t, const float *sin_t, size_t n, int heads,
                            int head_dim, int dp, const float *descale3, uint8_t *q8, uint8_t *k8, uint8_t *v8,
                            float *amax3, int threads);

/* The six input slots of one attention call (kernels.h ATTN_FP8_*: first float of each 4-float slot) from the
 * Q, K, V dequantisation scales: DESCALE_Q/K/V = scale3, DESCALE_S = 1.0f/448, SCALE_S = 448,
 * SCALE_O = 1.0f / scale3[2]. The AMAX slots and the other floats are left as they are. slots: 32 floats. */
void cpu_fp8_slots_fill(const float *scale3, float *slots);

/* Dequantisation of the FP8 attention output (fp8_quant_dequant_o before its bf16 rounding):
 *   o8 [n, heads, dp] E4M3 -> out [n, heads*hd] float = cpu_e4m3_to_f32(o8) * (1.0f / scale_o), pad dropped.
 * The kernel's output is f32_to_bf16(out[i]). */
void cpu_fp8_dequant(const uint8_t *o8, size_t n, int heads, int head_dim, int dp, float scale_o, float *out);

/* ---- fp8 linear (issue 14: the CPU twin of FP8 E4M3 GEMMs with per-tensor or per-channel scales) ---- */

/* The dequantisation scale that maps a tensor's largest magnitude onto E4M3's largest finite value:
 * amax / 448 over x[0..n) (NaN ignored), 1 when the tensor is all zeros. */
float cpu_fp8_descale(const float *x, size_t n);

/* Quantise in place and back: x[i] = cpu_e4m3_to_f32(cpu_e4m3_from_f32(x[i] * (1.0f / descale))) * descale, the
 * values an FP8 GEMM multiplies (its products are exact in float32 and accumulated in float32). Threads split n. */
void cpu_fp8_fake_quant(float *x, size_t n, float descale, int threads);

/* A weight [rows, cols] (row = output channel) quantised in place and back: per_row 0 with one scale for the
 * tensor (cpu_fp8_descale of all of it), 1 with one per output channel (each row's own). */
void cpu_fp8_fake_quant_weight(float *w, size_t rows, size_t cols, int per_row, int threads);

#endif
