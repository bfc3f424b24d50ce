/* demo_model.h — deterministic random checkpoints in the exact Hugging Face Qwen3-VL layout, for the quick start,
 * tests and benchmarks (no real checkpoint can be downloaded here).
 *
 * Presets: "tiny" (depth 4, hidden 144 = 2 heads x 72, the real head_dim, deepstack after blocks 1 and 2; the
 * default), and the real vision-tower shapes "2b", "4b", "8b", "32b" (MODEL.md 8.1). The files written are
 * config.json (Qwen3VLForConditionalGeneration style, with vision_config), preprocessor_config.json, and
 * model.safetensors (or N shards + model.safetensors.index.json) holding model.visual.* tensors. The same preset,
 * seed and dtype always give the same bytes.
 *
 * Initialisation is scaled so activations stay O(1) through the whole depth like a trained model's: no NaN, no
 * vanishing or exploding residual stream (see demo_model.c for the recipe).
 */
#ifndef VITD_DEMO_MODEL_H
#define VITD_DEMO_MODEL_H

#include "safetensors.h"
#include "vitd.h"

typedef struct {
    const char *preset;  /* "tiny", "2b", "4b", "8b", "32b" */
    const char *out_dir; /* created if missing */
    uint64_t seed;
    st_dtype dtype;      /* ST_BF16 (default, as released), ST_F16 or ST_F32 */
    int shards;          /* 1 = model.safetensors; >1 = model-0000i-of-0000n.safetensors + index */
    const char *prefix;  /* "model.visual." (default) or "visual." */
    int text_stub;       /* 1: also write two small non-vision tensors (model.language_model.embed_tokens.weight in
                          * the first file, lm_head.weight in the last) as a real checkpoint's shards hold; 0 default */
    float outliers;      /* > 1: plant outlier channels as trained towers have them, without changing the function:
                          * in every block channels d/4*k + 7 (k < 4) of norm1's and norm2's weight and bias times
                          * outliers, the same columns of attn.qkv.weight and mlp.linear_fc1.weight divided by it,
                          * so the QKV and fc1 inputs carry 4 channels that much larger (FP8 tests); 0 or 1 none */
} demo_model_opts;

/* Defaults: preset "tiny", out_dir NULL (meaning "models/<preset>"), seed 0, ST_BF16, 1 shard, "model.visual.". */
demo_model_opts demo_model_opts_default(void);
/* The preset's vision config; VITD_E_INVALID_ARG for an unknown name (the message lists the presets). */
vitd_status demo_model_config(const char *preset, vitd_vision_config *cfg, vitd_err *err);
/* Writes the checkpoint into opts->out_dir (created with its parents if missing): config.json,
 * preprocessor_config.json, README.md (saying the weights are random), and the weights. Files of an earlier demo
 * write there (model.safetensors, model.safetensors.index.json, model-NNNNN-of-NNNNN.safetensors) are replaced or
 * removed so the directory holds one consistent checkpoint. Each file is written atomically. Tensor data is
 * generated while it is written, a chunk at a time (memory stays small even for "32b"). */
vitd_status demo_model_write(const demo_model_opts *opts, vitd_err *err);
/* The initial value of element i of the tensor named short_name (no prefix), before rounding to the file's
 * dtype: what demo_model_write() stores, exposed so tests can check a loaded tensor element by element. */
float demo_model_value(const demo_model_opts *opts, const char *short_name, int64_t i);

#endif
