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

/* Converts the model's tensors to float32 once. threads: worker count for attention and elementwise loops
 * (0 = number of cores); BLAS uses its own pool. On success *out is owned by the caller; cpu_model_free(). */
vitd_status cpu_model_create(const vitd_model *m, int threads, cpu_model **out, vitd_err *err);
void cpu_model_free(cpu_model *cm);

/* Runs one batch (vitd.h's vitd_batch). If last_hidden is not NULL it receives the residual stream after the last
 * block, [N, hidden] float32 (HF's last_hidden_state). Scratch is allocated per call (VITD_E_NOMEM on failure). */
vitd_status cpu_forward(const cpu_model *cm, const vitd_batch *b, float *last_hidden, vitd_err *err);

#endif
