/* checkpoint.h — Hugging Face Qwen3-VL checkpoints: config.json, preprocessor_config.json, and the vision tower's
 * tensors from model.safetensors or sharded *.safetensors with model.safetensors.index.json.
 *
 * Implements vitd_model_load() (vitd.h). Tensors are memory-mapped; only shards that hold vision tensors are
 * opened. Vision tensors are found under `model.visual.` or `visual.`, stored as BF16, F16 or F32. Every expected
 * tensor (MODEL.md section 4) is checked for presence and shape against the config; unexpected extra vision tensors
 * are an error too. Names used by the rest of vitd are the short form without the prefix
 * ("blocks.3.attn.qkv.weight", "merger.linear_fc2.bias", "deepstack_merger_list.0.norm.weight").
 * A loaded model is read-only and may be shared by threads.
 *
 * Weight files, in Hugging Face's order of preference: model.safetensors; else model.safetensors.index.json, whose
 * weight_map names the shards (only shards holding vision tensors are opened, and each must hold what the map
 * says); else every *.safetensors in the directory. Without preprocessor_config.json the processor takes
 * vitd_preproc_config_default() with patch, temporal and merge sizes from the vision config; with one, those must
 * agree with the vision config. Every failure is VITD_E_MODEL (VITD_E_NOMEM for allocations) and names the file,
 * key or tensor at fault.
 */
#ifndef VITD_CHECKPOINT_H
#define VITD_CHECKPOINT_H

#include "safetensors.h"
#include "vitd.h"

/* Looks up a vision tensor by short name; NULL if the model has none of that name. */
const st_tensor *checkpoint_tensor(const vitd_model *m, const char *short_name);

/* Copies a vision tensor as float32 into out (st_numel floats). VITD_E_MODEL names it when absent. */
vitd_status checkpoint_tensor_f32(const vitd_model *m, const char *short_name, float *out, vitd_err *err);

/* Parses the vision part of a config.json text: {"vision_config": {...}} or a bare vision config; missing keys
 * take the transformers 5.17 defaults, out_hidden_size required. Exposed for tests. */
vitd_status checkpoint_parse_config(const char *json, vitd_vision_config *cfg, vitd_err *err);
/* Parses preprocessor_config.json text over the defaults. Exposed for tests. */
vitd_status checkpoint_parse_preproc(const char *json, vitd_preproc_config *cfg, vitd_err *err);

/* Total bytes of the vision tensors as stored. */
size_t checkpoint_vision_bytes(const vitd_model *m);

/* The vision tensors in order of short name: how many, and the i-th (NULL out of range; *short_name, if not
 * NULL, gets its short name). Pointers live as long as the model. */
int checkpoint_count(const vitd_model *m);
const st_tensor *checkpoint_tensor_at(const vitd_model *m, int i, const char **short_name);
/* The name prefix the checkpoint uses: "model.visual." or "visual.". */
const char *checkpoint_prefix(const vitd_model *m);
/* Base names of the weight files actually opened (those holding vision tensors), in the order opened. */
int checkpoint_file_count(const vitd_model *m);
const char *checkpoint_file_name(const vitd_model *m, int i);

#endif
