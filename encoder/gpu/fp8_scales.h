/* fp8_scales.h — per-layer FP8 scales of the attention's Q, K and V: static scales read from a JSON file, the amax
 * history behind dynamic scaling (this is the CPU twin of the on-device update in kernels/fp8_quant.cu), and the
 * one-shot save of scales to JSON.
 *
 * Convention: a scale s is the dequantisation factor, x ≈ s * x_fp8, so s = amax / 448 (448 = largest finite E4M3)
 * and quantising computes x / s. Layers are named "blocks.<i>.attn" (i = block index, 0-based); files may also use
 * the checkpoint prefixes "model.visual." or "visual.", or the bare index "<i>".
 *
 * Static file, either form:
 *     {"blocks.0.attn": {"q": 0.011, "k": 0.012, "v": 0.004}, ...}
 *     {"layers": {"blocks.0.attn": {"q_scale": 0.011, "k_scale": 0.012, "v_scale": 0.004}, ...}, "margin": 1.5}
 * Every layer of the model must be present with three positive finite scales; an unknown layer, a missing or
 * non-positive scale, or a duplicate is an error naming the layer and key. Other top-level keys next to "layers"
 * are ignored (they document where the file came from).
 * The FP8 linear layers' input scales (issue 14) may sit in the same file, for every layer or for none:
 *     "blocks.<i>.linear": {"qkv": s, "fc1": s, "fc2": s}   (QKV's input, fc1's input, fc2's input = fc1's output)
 * fp8_scales_parse skips them; fp8_scales_parse_linear reads them (and nothing else).
 *
 * Dynamic scaling: per layer and per tensor a ring of the last `history_len` amax values (16 by default); the scale
 * for the next step is max(ring) / 448. A ring that has seen no step yet has no scale: the engine measures the first
 * batch's amax before quantising it (see gpu_engine.c), so the first batch is scaled correctly too.
 *
 * All functions are pure or touch only their arguments: no global state, so two engines never race.
 */
#ifndef VITD_FP8_SCALES_H
#define VITD_FP8_SCALES_H

#include "vitd.h"

#define FP8_E4M3_MAX 448.0f

typedef struct {
    float q, k, v;
} fp8_qkv;

/* One block's linear-layer input scales (same convention: x ~ s * x_fp8). */
typedef struct {
    float qkv, fc1, fc2;
} fp8_lin;

/* Parses a static scales JSON text for a model of n_layers blocks into out[n_layers]. */
vitd_status fp8_scales_parse(const char *json, int n_layers, fp8_qkv *out, vitd_err *err);
/* Reads and parses a file (the message names the file). */
vitd_status fp8_scales_load(const char *path, int n_layers, fp8_qkv *out, vitd_err *err);
/* Writes {"layers": {"blocks.<i>.attn": {"q", "k", "v"}}, "margin": m, "source": source} with each scale times
 * margin, atomically (temporary file in the same folder, fsync, rename). The output parses with fp8_scales_parse. */
vitd_status fp8_scales_save(const char *path, const fp8_qkv *scales, int n_layers, double margin, const char *source,
                            vitd_err *err);
/* The same with the linear entries too ("blocks.<i>.linear", each scale times margin); lin NULL = none. */
vitd_status fp8_scales_save_all(const char *path, const fp8_qkv *scales, const fp8_lin *lin, int n_layers,
                                double margin, const char *source, vitd_err *err);
/* The linear entries of a scales text or file into out[n_layers]: *found 0 when the file has none, 1 when every
 * layer has all three positive scales; a partial set, a missing or non-positive scale or a duplicate is an error
 * naming the layer. */
vitd_status fp8_scales_parse_linear(const char *json, int n_layers, fp8_lin *out, int *found, vitd_err *err);
vitd_status fp8_scales_load_linear(const char *path, int n_layers, fp8_lin *out, int *found, vitd_err *err);

/* ---- amax history (host twin of the device ring) ---- */

typedef struct {
    int n_layers;
    int history_len;
    float *amax;    /* [n_layers][3][history_len], 0 where no step has been recorded */
    long *steps;    /* [n_layers] steps recorded per layer */
} fp8_history;

vitd_status fp8_history_init(fp8_history *h, int n_layers, int history_len, vitd_err *err);
void fp8_history_release(fp8_history *h);
/* Records one step's amax of Q, K, V for a layer (slot steps % history_len). */
void fp8_history_push(fp8_history *h, int layer, const float amax3[3]);
/* The scales for the next step: max over the ring / 448 for Q, K, V (a zero amax gives the smallest positive
 * scale, 1/448^2, so quantising never divides by zero). Returns 0 if the layer has no step yet, else 1. */
int fp8_history_scales(const fp8_history *h, int layer, fp8_qkv *out);
/* True exactly once per layer: on the push that fills its ring for the first time (steps == history_len). */
int fp8_history_just_wrapped(const fp8_history *h, int layer);

#endif
