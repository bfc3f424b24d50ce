/* cpu_forward.h — the float32 reference forward pass of the Qwen3-VL vision tower on the CPU (OpenBLAS + threads).
 *
 * This is the truth the GPU paths are checked against (MODEL.md section 3): patch embedding as a GEMM,
 * bilinear-interpolated position embedding in merge order, 2-D rotary, `depth` pre-LN blocks with block-diagonal
 * attention over cu_seqlens, deepstack mergers after the listed blocks, the final 2x2 merger. Clarity beats speed;
 * every step is a function of cpu_ops.h, the CPU twin of a GPU kernel.
 */
#ifndef VITD_CPU_FORWARD_H
#define VITD_CPU_FORWARD_H

#include "vitd.h"

typedef struct cpu_model cpu_model;

/* Supplies one vision tensor as float32: short_name is the MODEL.md section 4 name without the `model.visual.`
 * prefix ("patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "deepstack_merger_list.1.norm.bias", ...), out
 * receives numel values in the checkpoint's row-major layout (patch_embed.proj.weight [d, 3, T, P, P] is read as
 * [d, 3*T*P*P]). Returns VITD_OK, or a failure with err filled, naming the tensor. */
typedef vitd_status (*cpu_weight_fn)(void *ctx, const char *short_name, float *out, size_t numel, vitd_err *err);

/* Builds a model from any weight source (a checkpoint, random weights in a test). The config is checked first
 * (VITD_E_MODEL names the key: heads must divide hidden_size, head_dim a multiple of 4, num_position_embeddings
 * a square, deepstack indexes distinct and < depth, ...); then get is called once per tensor, in checkpoint
 * order; its failure is returned as is. threads: worker count for attention and elementwise loops (0 = number of
 * online cores); BLAS uses its own pool. On success *out is owned by the caller; free with cpu_model_free(). */
vitd_status cpu_model_create_from(const vitd_vision_config *cfg, cpu_weight_fn get, void *ctx, int threads,
                                  cpu_model **out, vitd_err *err);

/* Converts the model's tensors to float32 once (cpu_model_create_from() over checkpoint_tensor_f32()).
 * threads as above. On success *out is owned by the caller; cpu_model_free(). */
vitd_status cpu_model_create(const vitd_model *m, int threads, cpu_model **out, vitd_err *err);
void cpu_model_free(cpu_model *cm); /* accepts NULL */

/* The config the model was built with. */
const vitd_vision_config *cpu_model_config(const cpu_model *cm);

/* Turns the model into the twin of an FP8 linear path (issue 14): the chosen GEMMs of every block multiply E4M3
 * values with float32 accumulation. Weights are quantised in place now, one scale per tensor or per output
 * channel; inputs in cpu_forward, one scale per tensor or per token (row) from the batch's own amax, times margin
 * (>= 1: what delayed scaling with a safety margin does). Patch embedding, attention and the mergers stay float32.
 * One way: build another model for the float32 reference. A second call, or gemms 0, does nothing. */
enum { CPU_FP8_QKV = 1, CPU_FP8_PROJ = 2, CPU_FP8_FC1 = 4, CPU_FP8_FC2 = 8, CPU_FP8_ALL = 15 };
typedef struct {
    unsigned gemms;        /* CPU_FP8_QKV | CPU_FP8_PROJ | CPU_FP8_FC1 | CPU_FP8_FC2, or CPU_FP8_ALL */
    int weights_per_channel;
    int inputs_per_token;
    float margin;          /* the input scale's multiple of amax / 448; 0 = 1 */
} cpu_fp8_linear_opts;
void cpu_model_set_fp8_linear(cpu_model *cm, const cpu_fp8_linear_opts *o);

/* Runs one batch (vitd.h's vitd_batch). If last_hidden is not NULL it receives the residual stream after the last
 * block, [N, hidden] float32 (HF's last_hidden_state). b->deepstack NULL skips the deepstack mergers. Every grid
 * needs t, h, w >= 1 with h and w multiples of spatial_merge_size (VITD_E_INVALID_ARG names the image); the batch
 * must stay under 2^31 patches (VITD_E_TOO_LARGE). Scratch is allocated per call (VITD_E_NOMEM on failure) and
 * freed before return. Safe to call from several threads on one model (the model is read-only). */
vitd_status cpu_forward(const cpu_model *cm, const vitd_batch *b, float *last_hidden, vitd_err *err);

#endif
