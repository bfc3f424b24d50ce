/* fp8_kernels.h — C declarations of the FP8 attention-operand launchers in kernels/fp8_quant.cu: the fused
 * rotary + quantise + pad + amax pass after the QKV GEMM, its amax-only pre-pass, the on-device dynamic-scale
 * update (amax history ring -> cuDNN scalar slots) and the dequantisation of the FP8 attention output.
 *
 * Conventions (as kernels.h): a launcher takes device pointers, sizes and a stream, enqueues its work and returns
 * cudaGetLastError(); it never synchronises, allocates or logs, so every call can be captured in a CUDA graph.
 * bf16 tensors are uint16_t bit patterns, E4M3 tensors uint8_t. Scales follow fp8_scales.h: a scale s is the
 * dequantisation factor (x ~ s * x8, s = amax / 448); the cuDNN slots (kernels.h ATTN_FP8_*) hold DESCALE_X = s.
 * Twins (encoder/cpu/cpu_ops.h, section "fp8"): cpu_e4m3_from_f32, cpu_fp8_quant_qkv_rope, cpu_fp8_slots_fill,
 * cpu_fp8_dequant; the ring's host twin is fp8_history (encoder/gpu/fp8_scales.h). Test: tests/test_fp8_quant.c.
 *
 * Per layer and step, in stream order (dynamic scales; L = the layer's state block, see below):
 *
 *     if this layer has never run FP8 (host-side counter; state zeroed once at start-up):
 *         fp8_quant_qkv_amax(qkv, cos_t, sin_t, T, H, hd, L + FP8_STATE_AMAX, s);   // amax of this batch
 *         fp8_quant_first_scales(L, s);                                              // slots from it
 *     fp8_quant_qkv_rope(qkv, cos_t, sin_t, T, H, hd, dp, L, L + FP8_STATE_AMAX, q8, k8, v8, s);
 *     gpu_attn_fp8(ctx, q8, k8, v8, o8, L, s, &err);                                 // scalars = L
 *     fp8_quant_dequant_o(o8, T, H, hd, dp, L, hist, out, s);                        // + ring update
 *     proj GEMM reads out [T, H*hd] bf16
 *
 * cos_t/sin_t are the batch's rotary tables [T, hd/2] (engine_kernels.h rope_tables, shared with the BF16 path).
 * The first-step branch is a host decision (the engine counts the FP8 steps it ran), so a CUDA graph captured
 * after a layer's first FP8 step holds the steady sequence. fp8_quant_ring_update(L, hist, s) after a plain
 * fp8_quant_dequant_o(..., 0, ...) does the same as the folded update (bench: equal within 3%).
 * Auto-save: after `hist` FP8 steps the DESCALE_Q/K/V slots of each layer hold max(ring)/448, i.e. what
 * fp8_history_scales gives: copy them back once (one sync) and pass them to fp8_scales_save.
 * Static scales: fill each layer's 32 slot floats once on the host with cpu_fp8_slots_fill() and copy them up;
 * pass amax3 = NULL to fp8_quant_qkv_rope and history_len = 0 to fp8_quant_dequant_o.
 */
#ifndef VITD_FP8_KERNELS_H
#define VITD_FP8_KERNELS_H

#include <cuda_runtime_api.h>
#include <stddef.h>
#include <stdint.h>

#include "kernels.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Device state of dynamic FP8 scaling for one layer: one float block of fp8_state_floats(history_len) floats,
 * zero-filled once (cudaMemset 0 = no step, no amax). Blocks of consecutive layers are laid out back to back;
 * with a 128-byte aligned base every block and every slot is 16-byte aligned as cuDNN wants.
 *   [0, 32)                  the attention scalar slots (kernels.h ATTN_FP8_*); the block pointer is `scalars`
 *   [32, 35)                 amax of the step being run: Q (after rotary), K (after rotary), V; folded with an
 *                            integer atomicMax on the float bits, reset to 0 by the ring update
 *   [36]                     steps recorded (uint32 bits)
 *   [37]                     block-arrival counter of fp8_quant_dequant_o (uint32 bits, 0 between calls)
 *   [40, 40 + 3*hist)        ring: Q[hist], K[hist], V[hist] amax of the last hist steps (0 = empty)
 * The ring update writes step n's amax at index n % hist and sets the next step's scales from the whole ring:
 * s_x = max(ring_x) / 448 (1/448^2 when that max is 0), exactly fp8_history_push + fp8_history_scales. */
enum {
    FP8_STATE_SLOTS = 0,
    FP8_STATE_AMAX = ATTN_FP8_N_SLOTS * ATTN_FP8_SLOT_FLOATS, /* 32 */
    FP8_STATE_STEPS = FP8_STATE_AMAX + 4,                     /* 36 */
    FP8_STATE_ARRIVE = FP8_STATE_AMAX + 5,                    /* 37 */
    FP8_STATE_RING = FP8_STATE_AMAX + 8,                      /* 40 */
};

/* Floats of one layer's state block, a multiple of 32 (128 bytes). */
static inline size_t fp8_state_floats(int history_len) {
    size_t n = (size_t)FP8_STATE_RING + 3 * (size_t)(history_len > 0 ? history_len : 0);
    return (n + 31) / 32 * 32;
}

/* Fused rotary + quantise + pad + amax over the QKV GEMM output (MODEL.md 3.3/3.4, one read of qkv):
 *   qkv      [n_tokens, 3*H*hd] bf16 (q | k | v; head h at columns h*hd.. of its third)
 *   cos_t, sin_t [n_tokens, hd/2] float32 rotary tables (engine_kernels.h rope_tables: row angles for
 *            i < hd/4, column angles after)
 *   scalars  the layer's slots: DESCALE_Q/K/V read on the device (x8 = E4M3_satfinite(x * (1/DESCALE)))
 *   amax3    [3] float, max |q_rot|, |k_rot|, |v| of this call folded in with atomicMax (not reset here);
 *            NULL skips the reduction (static scales)
 *   q8, k8, v8 [n_tokens, H, dp] E4M3; lanes hd..dp-1 written as 0
 * q and k are rotated in float32 (q cos + rotate_half(q) sin, products and sum rounded separately) and the
 * float32 result is quantised directly (no bf16 rounding in between: one rounding instead of two). hd % 2 == 0,
 * dp >= hd, dp % 16 == 0 for cuDNN. NaN inputs give NaN bytes (0x7f) and are ignored by the amax. */
cudaError_t fp8_quant_qkv_rope(const uint16_t *qkv, const float *cos_t, const float *sin_t, int n_tokens,
                               int n_heads, int head_dim, int dp, const float *scalars, float *amax3,
                               uint8_t *q8, uint8_t *k8, uint8_t *v8, cudaStream_t stream);

/* The BF16 sibling of the same pass, for the BF16 attention path: q, k, v [n_tokens, H, dp] bf16 with q and k
 * rotated in float32 and rounded once to bf16 (HF's apply_rotary_pos_emb_vision), v copied, pad lanes 0; no scale,
 * no amax. Bit-identical to rope_pack_qkv_bf16 (kernels/rope.cu; twin cpu_rope_apply + bf16 rounding) and about
 * as fast on the H100 (bench/RESULTS.md: equal at 4K, 2.5-3% slower at 16K-64K); the benchmark's BF16 baseline
 * takes the faster of the two. Alignment as fp8_quant_qkv_rope (8-byte stores when hd % 8 == 0, dp % 4 == 0). */
cudaError_t fp8_quant_qkv_rope_bf16(const uint16_t *qkv, const float *cos_t, const float *sin_t, int n_tokens,
                                    int n_heads, int head_dim, int dp, uint16_t *q, uint16_t *k, uint16_t *v,
                                    cudaStream_t stream);

/* The amax pre-pass of a layer's first FP8 batch: the same rotary and reduction as fp8_quant_qkv_rope (so the
 * same values), no stores. amax3 [3] folded with atomicMax (zero it first, or use a fresh state block). */
cudaError_t fp8_quant_qkv_amax(const uint16_t *qkv, const float *cos_t, const float *sin_t, int n_tokens,
                               int n_heads, int head_dim, float *amax3, cudaStream_t stream);

/* First batch: the slots of state block `state` from its current amax alone (as a ring holding one step):
 * s_x = amax_x / 448 (1/448^2 for 0). Leaves the amax, ring and step counter alone: the step is recorded by
 * the ring update after the attention. One thread. */
cudaError_t fp8_quant_first_scales(float *state, cudaStream_t stream);

/* Ring update of one layer after its attention: pushes the step's amax into the ring (NaN recorded as 0), resets
 * the amax to 0, counts the step and writes the next step's slots (cpu_fp8_slots_fill of max(ring)/448).
 * One warp. Runs after everything that reads this step's slots (the attention and the dequantisation). */
cudaError_t fp8_quant_ring_update(float *state, int history_len, cudaStream_t stream);

/* Dequantises the FP8 attention output for the output projection, dropping the pad lanes:
 *   o8 [n_tokens, H, dp] E4M3 (o8 = O * SCALE_O) -> out [n_tokens, H*hd] bf16 = bf16(e4m3(o8) * (1/SCALE_O))
 * scalars: the layer's slots (SCALE_O read). history_len > 0: `scalars` is the layer's state block and the
 * last block to finish runs fp8_quant_ring_update's work (one launch less per layer); 0: dequantise only. */
cudaError_t fp8_quant_dequant_o(const uint8_t *o8, int n_tokens, int n_heads, int head_dim, int dp,
                                float *scalars, int history_len, uint16_t *out, cudaStream_t stream);

/* ---- FP8 linear layers (kernels/fp8_linear.cu; issue 14) ----
 * Per layer one float block of lin8_state_floats(hist) floats (zeroed once; static scales: DESCALE and SCALE
 * filled on the host, no ring), for the three GEMM inputs quantised by vitd's own producers: t = 0 the QKV
 * GEMM's (LayerNorm 1), 1 fc1's (LayerNorm 2), 2 fc2's (fc1's E4M3 output). The output projection reads the FP8
 * attention's o8 with the attention state's DESCALE_V (SCALE_O = 1 / DESCALE_V).
 * Every value cuBLASLt reads or writes sits in its own 16-byte slot (LIN8_AT(field, t) = field + 4t): cuBLASLt
 * refuses scale pointers that are only 4-byte aligned (CUBLAS_STATUS_NOT_SUPPORTED, seen on the H100).
 *   DESCALE_t at 4t:       x ~ DESCALE_t * x8 (cuBLASLt's B scale)
 *   SCALE_t at 12 + 4t:    1 / DESCALE_t: x8 = satfinite(x * SCALE_t) (ln_quant's scale, cuBLASLt's D scale)
 *   AMAX_t at 24 + 4t:     amax of the batch being run (ln_quant folds with atomicMax; cuBLASLt's AMAX_D sets)
 *   [36]                   batches recorded (uint32 bits)
 *   [40, 40 + 3*hist)      ring: input t's amax of the last hist batches at 40 + t*hist (0 = empty) */
enum { LIN8_INPUTS = 3, LIN8_DESCALE = 0, LIN8_SCALE = 12, LIN8_AMAX = 24, LIN8_STEPS = 36, LIN8_RING = 40 };
#define LIN8_AT(field, t) ((field) + 4 * (t))

static inline size_t lin8_state_floats(int history_len) {
    size_t n = (size_t)LIN8_RING + LIN8_INPUTS * (size_t)(history_len > 0 ? history_len : 0);
    return (n + 31) / 32 * 32;
}

/* *amax = max(*amax, max |x[i]|) over x [n] bf16 (NaN ignored): a weight's amax at load, fc1's output in a
 * layer's first batch (cuBLASLt's AMAX_D exists for FP8 GEMMs only). */
cudaError_t fp8_amax_bf16(const uint16_t *x, size_t n, float *amax, cudaStream_t stream);
/* out[i] = E4M3_satfinite(x[i] * (1 / *descale)) (cpu_fp8_fake_quant's quantiser). */
cudaError_t fp8_quant_bf16(const uint16_t *x, size_t n, const float *descale, uint8_t *out, cudaStream_t stream);
/* In place over v[0], v[stride], ... v[(n-1)*stride]: amax -> descale = amax / 448, or 1 for 0 (cpu_fp8_descale).
 * The engine keeps each weight's scale in its own 16-byte slot (stride 4): cuBLASLt's alignment. */
cudaError_t fp8_weight_descale(float *amax_to_descale, int n, int stride, cudaStream_t stream);
/* After a batch: for each of `layers` state blocks (stride floats apart) and input t, push AMAX_t into the ring at
 * steps % hist (NaN and inf recorded as 0: one overflowing batch must not scale the next hist batches to zero;
 * the host twin fp8_history drops NaN only, the tests feed it finite values and NaN), reset it, count the batch,
 * set DESCALE_t = max(ring) / 448 (1/448^2 for 0) and SCALE_t = 1 / DESCALE_t. One launch for the whole tower. */
cudaError_t lin8_ring_update(float *state, int layers, size_t stride, int history_len, cudaStream_t stream);

/* out[i] = E4M3_satfinite(x[i]), round to nearest even: the hardware conversion the kernels use, exposed so
 * tests can hold the CPU quantiser to it over many bit patterns. */
cudaError_t fp8_quant_f32(const float *x, size_t n, uint8_t *out, cudaStream_t stream);

#ifdef __cplusplus
}
#endif
#endif
