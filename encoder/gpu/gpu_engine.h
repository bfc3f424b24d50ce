/* gpu_engine.h — one GPU engine per device: BF16 weights uploaded once, every activation buffer planned once for
 * the configured maximum batch tokens, its own streams and pinned staging; runs the whole vision tower on Hopper
 * (cuBLASLt GEMMs, kernels/ for the rest, cuDNN attention). Used through encoder.c's backend table.
 *
 * Limits of one engine (fixed at creation): at most opts->max_batch_tokens patches per batch (the server's largest
 * image runs alone, so this is also the largest image), and at most gpu_engine_max_images() attention segments
 * (images x frames) per batch: the largest of GPU_ENGINE_MAX_IMAGES, max_batch_tokens / 256 (an image has at least
 * 256 patches with Qwen3-VL's min_pixels) and opts->max_batch_images, capped at 4096. Batches over a limit fail with VITD_E_TOO_LARGE naming it.
 *
 * Numerics follow Hugging Face's BF16 inference (MODEL.md 5): pixel values rounded to bf16, bf16 activations,
 * float32 accumulation and LayerNorm statistics, position embedding summed in float32 then added in bf16, rotary
 * in float32, attention in cuDNN (float32 softmax); outputs are bf16 values returned as float32. FP8 batches
 * quantise the rotated Q, K and V to E4M3 per layer (scales: dynamic amax history or a static file) and run
 * cuDNN's FP8 attention; the rest stays BF16 (whole encoder vs BF16: cosine >= 0.999 on the 8B preset).
 *
 * Threads: one thread at a time drives an engine (run, submit, wait are not reentrant); the host helpers at the
 * end are pure and thread-safe.
 */
#ifndef VITD_GPU_ENGINE_H
#define VITD_GPU_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include "attn_route.h"
#include "vitd.h"

#define GPU_ENGINE_MAX_IMAGES 64

typedef struct gpu_engine gpu_engine;

/* Creates the engine on opts->device: checks the device (compute capability >= 9.0), the cuDNN library (logged
 * with what it allows), the free device memory against the plan (VITD_E_NOMEM names both numbers), uploads the
 * weights and allocates everything a forward pass uses. The model must outlive the engine.
 * Attention (opts->attn_dtype, attn_route.h): "bf16" always BF16; "fp8" always FP8, and VITD_E_UNSUPPORTED naming
 * the cuDNN version / compute capability where FP8 cannot run, or the error of an FP8 plan that cuDNN cannot
 * build; "auto" times both paths on a set of shapes, logs the table and routes each batch to the faster path, or
 * runs BF16 after one warning where FP8 cannot run. FP8 scales: dynamic (opts->fp8_history steps of amax) or
 * static from opts->fp8_scales (errors name the layer); opts->fp8_save_scales is written once when the history
 * first fills. opts->fp8_calibrate: BF16 attention recording per-layer amax (gpu_engine_fp8_amax).
 * On success *out is owned by the caller; free with gpu_engine_free(). */
vitd_status gpu_engine_create(const vitd_model *m, const vitd_encoder_opts *opts, gpu_engine **out, vitd_err *err);

/* Pipelined batches (vitd.h's vitd_encoder_submit / vitd_encoder_wait, either vitd_batch form: float32 host memory
 * in and out): submit checks the batch, converts its pixels into pinned staging and enqueues the forward pass;
 * wait finishes the oldest batch in flight (outputs converted into the caller's buffers). At most
 * VITD_ENCODER_PIPELINE in flight (VITD_E_BUSY). No device allocation and no host/device synchronisation other
 * than waiting for the outputs (and, once, the copy of the scales for fp8_save_scales); see gpu_engine.c for
 * what overlaps. run = submit + wait, with nothing in flight. */
vitd_status gpu_engine_submit(gpu_engine *g, const vitd_batch *b, vitd_err *err);
vitd_status gpu_engine_wait(gpu_engine *g, vitd_err *err);
int gpu_engine_in_flight(const gpu_engine *g);
/* opts->defer_plan_builds: with nothing in flight, builds one attention plan a batch wanted; returns how many are
 * still wanted (0: none). Build errors are logged, not returned (the batches ran on other plans). */
int gpu_engine_idle(gpu_engine *g);
/* After a failed batch: 1 (and *why) when the CUDA context holds a sticky error (illegal address, launch
 * failure, a lost device): nothing on this GPU can run again in this process. */
int gpu_engine_device_lost(gpu_engine *g, vitd_err *why);
/* Fault injection (VITD_FAULT_INJECT): enqueues an illegal-address kernel on the compute stream. */
void gpu_engine_inject_fault(gpu_engine *g);
vitd_status gpu_engine_run(gpu_engine *g, const vitd_batch *b, vitd_err *err);
void gpu_engine_free(gpu_engine *g); /* accepts NULL */

/* ---- attention path ---- */

/* The attention mode: "bf16" (asked for, FP8 unavailable, or auto found FP8 faster nowhere), "fp8", "auto". */
const char *gpu_engine_attn_dtype(const gpu_engine *g);
/* The path the last batch took: "bf16" or "fp8" ("" before the first). */
const char *gpu_engine_last_attn(const gpu_engine *g);
/* Why FP8 does not run although the setting allowed it ("" when it does or was not asked for). */
const char *gpu_engine_fp8_fallback(const gpu_engine *g);
/* Forces the path of the following batches: "bf16", "fp8" (VITD_E_UNSUPPORTED if the engine has no FP8 path),
 * or "auto"/NULL back to the setting. For benchmarks and tests. */
vitd_status gpu_engine_set_attn(gpu_engine *g, const char *path, vitd_err *err);
/* The auto routing table measured at creation; *entries points into the engine. Returns the count (0 if none). */
int gpu_engine_route_table(const gpu_engine *g, const attn_route_entry **entries);
/* FP8 steps run so far by layer 0 (dynamic scaling: the history fills at fp8_history). */
long gpu_engine_fp8_steps(const gpu_engine *g);
/* 1 once the auto-save of the scales has been attempted (fp8_save_scales), else 0. */
int gpu_engine_fp8_saved(const gpu_engine *g);
/* Calibration (opts->fp8_calibrate): amax[depth][3] = max |Q|, |K| (after rotary), |V| per layer over every batch
 * so far. One device sync. VITD_E_UNSUPPORTED without fp8_calibrate. */
vitd_status gpu_engine_fp8_amax(gpu_engine *g, float *amax, vitd_err *err);

/* ---- FP8 linear layers (engine_lin8.c; opts->linear_dtype, linear_fp8_gemms) ---- */

/* The linear mode: "bf16" (asked for, FP8 linear unavailable, or auto found it faster nowhere), "fp8", "auto". */
const char *gpu_engine_linear_dtype(const gpu_engine *g);
/* The path the last batch's block GEMMs took: "bf16" or "fp8" ("" before the first). */
const char *gpu_engine_last_linear(const gpu_engine *g);
/* Forces the linear path of the following batches: "bf16", "fp8" (VITD_E_UNSUPPORTED without an FP8 linear path:
 * linear_dtype bf16), or "auto"/NULL back to the setting. For benchmarks and tests. */
vitd_status gpu_engine_set_linear(gpu_engine *g, const char *path, vitd_err *err);
/* auto's table: one block's GEMMs timed at creation in both precisions per token count. */
typedef struct {
    int tokens;
    double ms_bf16, ms_fp8;
} gpu_engine_lin_entry;
int gpu_engine_linear_table(const gpu_engine *g, const gpu_engine_lin_entry **entries);
/* Calibration (opts->fp8_calibrate): amax[depth][3] = max |x| of the QKV, fc1 and fc2 inputs per layer over every
 * batch so far (one device sync). VITD_E_UNSUPPORTED without fp8_calibrate or where FP8 GEMMs cannot run. */
vitd_status gpu_engine_lin8_amax(gpu_engine *g, float *amax, vitd_err *err);

/* ---- CUDA graphs (engine_graph.c) ---- */

/* On (the default unless opts->no_cuda_graphs) or off for the following batches. Off drops the captured graphs. */
void gpu_engine_set_graphs(gpu_engine *g, int on);
/* Counts so far: segments captured, segment replays, captures that failed (those shapes then run plainly). */
void gpu_engine_graph_stats(const gpu_engine *g, long *captured, long *replayed, long *failed);

/* cuBLASLt algorithm tuning (gpu_gemm.h; on unless opts->no_gemm_tune), so far: shapes timed, shapes where another
 * candidate than the heuristic's first won, and the summed time of one call of each with the heuristic's first
 * choice and with the chosen one (ms). */
void gpu_engine_gemm_tune_stats(const gpu_engine *g, long *shapes, long *changed, double *ms_first,
                                double *ms_chosen);

/* The limits described above. */
int gpu_engine_max_images(const gpu_engine *g);
size_t gpu_engine_max_tokens(const gpu_engine *g);

/* ---- profiling (benchmarks) ---- */

/* Time of one stage summed over a batch: device stages from CUDA event pairs around each operation on the compute
 * stream (the gap before an operation, e.g. waiting for uploaded patches, counts to it), host stages from the
 * wall clock. */
typedef struct {
    const char *name;
    double ms;
    int calls;
} gpu_engine_stage;

/* On: every following gpu_engine_run records events around each operation (a little launch overhead) and keeps
 * the per-stage sums of that batch. Off by default. */
void gpu_engine_set_profile(gpu_engine *g, int on);
/* Copies the last profiled batch's stages (at most max) into out; returns how many there are. */
int gpu_engine_profile(const gpu_engine *g, gpu_engine_stage *out, int max);

/* ---- host conversions (exposed for tests) ---- */

/* out[i] = bf16(in[i]) round to nearest even, NaN kept NaN (bit-equal to util.h f32_to_bf16), SSE2 when built
 * for x86-64. */
void gpu_engine_host_to_bf16(const float *in, uint16_t *out, size_t n);
/* out[i] = float(in[i]), exact. */
void gpu_engine_host_to_f32(const uint16_t *in, float *out, size_t n);

#endif
