/* preprocess.h — the Qwen3-VL image processor of Hugging Face transformers 5.x (Qwen2VLImageProcessor on its
 * default torchvision backend, patch 16, merge 2, temporal 2), reproduced bit for bit (MODEL.md section 2):
 *
 *   smart_resize to multiples of 32 within [min_pixels, max_pixels] (round-half-even)
 *   -> torch's uint8 antialiased bicubic (a = -0.5), width pass then height pass, int16 fixed-point weights with
 *      per-axis precision, uint8 intermediate (skipped per axis when the size does not change)
 *   -> x = (u - mean*255) / (std*255) in float32 (fused rescale + normalise)
 *   -> 16x16 patches in 2x2-merge-block order, each row (c, t, py, px) with the image duplicated for t = 0..T-1
 *   giving pixel_values [h*w, 3*T*16*16] and grid_thw [1, h, w] (h, w in patches).
 *
 * All functions are pure and thread-safe. Buffers are the caller's so the server can place them in a request
 * arena.
 */
#ifndef VITD_PREPROCESS_H
#define VITD_PREPROCESS_H

#include "image.h"
#include "vitd.h"

/* smart_resize (MODEL.md 2.2): target size in pixels for an input of height x width, factor patch_size *
 * merge_size. Fails with VITD_E_TOO_LARGE when the aspect ratio exceeds 200 (or a side would exceed 2^32),
 * VITD_E_BAD_IMAGE for a zero side or a target side of 0 (possible only with min_pixels 0), and
 * VITD_E_INVALID_ARG for an unusable cfg (patch/merge/temporal size, max_pixels 0, zero or non-finite
 * rescale_factor or std). */
vitd_status preprocess_target_size(uint32_t height, uint32_t width, const vitd_preproc_config *cfg,
                                   uint32_t *h_out, uint32_t *w_out, vitd_err *err);

/* The grid an image of this size will have: t = 1, h x w patches; and the row width of pixel_values (C*T*P*P).
 * Fails as preprocess_target_size, and with VITD_E_TOO_LARGE when h*w does not fit int32. */
vitd_status preprocess_plan(uint32_t height, uint32_t width, const vitd_preproc_config *cfg, vitd_grid *grid,
                            vitd_err *err);
size_t preprocess_row_width(const vitd_preproc_config *cfg); /* 3 * T * P * P = 1536 */

/* Runs the whole processor on one decoded image. pixel_values must hold grid.t*grid.h*grid.w rows of
 * preprocess_row_width() floats, where grid came from preprocess_plan() for this image (another grid is refused
 * with VITD_E_INVALID_ARG). Allocates a temporary resized copy only when the size changes (VITD_E_NOMEM if that
 * fails). Single-threaded; about 65 ms for a 4096x4096 image without resize on the development machine. */
vitd_status preprocess_run(const vitd_image *img, const vitd_preproc_config *cfg, const vitd_grid *grid,
                           float *pixel_values, vitd_err *err);

/* preprocess_run with its passes (the width and height resize passes by rows, the patch layout by merge-block
 * rows) split into pieces that par->run hands to other threads: run(ctx, n, grain, fn, arg) calls fn(arg, begin,
 * end) over [0, n) and returns when every piece is done. Every output value is computed alone from the same
 * inputs, so the result is bit-identical to preprocess_run's whatever the split. par NULL = preprocess_run. */
typedef void (*preprocess_range_fn)(void *arg, size_t begin, size_t end);
typedef struct {
    void (*run)(void *ctx, size_t n, size_t grain, preprocess_range_fn fn, void *arg);
    void *ctx;
} preprocess_parallel;
vitd_status preprocess_run_par(const vitd_image *img, const vitd_preproc_config *cfg, const vitd_grid *grid,
                               float *pixel_values, const preprocess_parallel *par, vitd_err *err);

/* torch's uint8 antialiased bicubic resize of an interleaved RGB image (exposed for tests).
 * dst holds out_h*out_w*3 bytes (a plain copy when the size is unchanged). Returns VITD_E_INVALID_ARG for an
 * empty size and VITD_E_NOMEM if the weight tables or the intermediate cannot be allocated. */
vitd_status preprocess_resize_bicubic(const uint8_t *src, uint32_t in_h, uint32_t in_w, uint8_t *dst,
                                      uint32_t out_h, uint32_t out_w, vitd_err *err);

/* cu_seqlens for a batch: one attention segment per frame (t entries per image), int32 prefix sums of h*w.
 * cu must hold 1 + sum of t entries. Returns the number of segments; *max_seqlen (may be NULL) gets the longest.
 * Returns a negative vitd_status instead when a grid has a dimension < 1 (VITD_E_INVALID_ARG) or the total
 * exceeds INT32_MAX patches (VITD_E_TOO_LARGE); cu is then partly written. */
int preprocess_cu_seqlens(const vitd_grid *grids, int n_images, int32_t *cu, int *max_seqlen);

#endif
