/* vllm.h — POST /v1/vllm/image_embeds: per image, the OpenAI chat content part a stock vLLM started with
 * --enable-mm-embeds takes as it is (../shared/INTEGRATION.md, "vLLM, surface 1"), so vLLM skips its own
 * vision tower:
 *
 *   {"type": "image_embeds", "image_embeds": {"image_embeds": "<base64>", "image_grid_thw": "<base64>"},
 *    "uuid": "<id>"}
 *
 * image_embeds is a torch.save archive (torch_archive.h) of the concat tensor [T, out_hidden x (1 + k)] (the
 * final merger's output, then the k DeepStack features; T = t*h*w/4), in bfloat16 (the tower's dtype) unless the
 * request asks dtype=float16 or float32; image_grid_thw an int64 archive of [1, 3] or (3,) (grid_layout). Both are
 * strict base64 (standard alphabet, padded, one line), as vLLM decodes them.
 *
 * With transfer=ec_cache (and ec_cache_dir set) the embeddings go to vLLM's EC-transfer cache file instead
 * (ec_cache.h) and each part carries only the grid: {"type": "image_embeds", "image_embeds": {"image_grid_thw":
 * "<base64>"}, "uuid": "<id>"}, which an EC consumer resolves through the file, as vLLM's EPD proxy rewrites it.
 *
 * Options, in the query, as JSON fields or as multipart text fields (the body is any /v1/encode body):
 *   dtype        bfloat16 (default) | float16 | float32
 *   uuid, uuids  one per image, in order (a JSON array, repeated multipart fields or query parameters); none =
 *                derived (content_id.h). A uuid names a cache directory, so 1..128 of [A-Za-z0-9._:+=-].
 *   grid_layout  auto (default: [1, 3] when the request has one image, (3,) per part when it has several, as vLLM
 *                stacks equal-shaped parts of one chat request) | 2d ([1, 3] always) | 1d ((3,) always)
 *   transfer     inline (default) | ec_cache
 * deepstack=false is refused: vLLM's Qwen3-VL splits the DeepStack features off the concat tensor.
 *
 * Thread safety: pure functions over the caller's data. */
#ifndef VITD_VLLM_H
#define VITD_VLLM_H

#include <stdbool.h>

#include "arena.h"
#include "reply.h"
#include "vitd.h"

typedef enum { VLLM_GRID_AUTO, VLLM_GRID_2D, VLLM_GRID_1D } vllm_grid_layout;
typedef enum { VLLM_INLINE, VLLM_EC_CACHE } vllm_transfer;

typedef struct {
    vllm_grid_layout grid;
    vllm_transfer transfer;
    int n_uuids;
    char **uuids;          /* [n_uuids] client uuids, in the arena */
    int cap_uuids;
    int max_uuids;         /* max_images_per_request */
    arena *a;
} vllm_options;

/* Defaults for a request whose per-request memory is a. */
void vllm_options_init(vllm_options *o, arena *a, int max_images);
/* body_option_fn (body.h) for user = vllm_options*: uuid, uuids, grid_layout, transfer; 1 for other keys. */
int vllm_apply_option(void *user, const char *key, const char *value, vitd_err *err);

/* Whether the grid of image i of n is written as [1, 3] (else (3,)). */
bool vllm_grid_2d(const vllm_options *o, int n_images);

/* The answer: {"id", "object": "vllm.image_embeds", "model", "dtype", "transfer", "grid_layout",
 * "content": [part per image], "data": [{"index", "uuid", "uuid_source": "client"|"derived", "grid_thw",
 * "shape", "archive_bytes"}], "usage": {"images", "patches", "tokens"}} + "\n". re->opts.dtype is the tensors'
 * dtype; uuids[i] each image's id; merge the spatial merge size. Returns a malloc'd text (*len its length), or
 * NULL with err set (VITD_E_INVALID_ARG: a value beyond float16; VITD_E_INTERNAL: a grid that is not whole merge
 * windows; VITD_E_NOMEM). */
char *vllm_render(const reply_encode *re, const vllm_options *o, char *const *uuids, const bool *derived,
                  int merge, size_t *len, vitd_err *err);

/* The base64 of a torch.save int64 archive of grid g, [1, 3] when two_d else (3,), into a malloc'd string. */
char *vllm_grid_b64(const vitd_grid *g, bool two_d, vitd_err *err);

#endif
