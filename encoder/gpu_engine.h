/* gpu_engine.h — one GPU engine per device: BF16 weights uploaded once, every activation buffer planned once for
 * the configured maximum batch tokens, its own streams and pinned staging; runs the whole vision tower on Hopper
 * (cuBLASLt GEMMs, kernels/ for the rest, cuDNN attention in BF16 or FP8). Used through encoder.c's backend table.
 * One engine runs one batch at a time. */
#ifndef VITD_GPU_ENGINE_H
#define VITD_GPU_ENGINE_H

#include "vitd.h"

typedef struct gpu_engine gpu_engine;

vitd_status gpu_engine_create(const vitd_model *m, const vitd_encoder_opts *opts, gpu_engine **out, vitd_err *err);
vitd_status gpu_engine_run(gpu_engine *g, const vitd_batch *b, vitd_err *err);
void gpu_engine_free(gpu_engine *g);
const char *gpu_engine_attn_dtype(const gpu_engine *g);

#endif
