/* handover.h — what every hand-over form shares: the shape check (an image's rows follow from its grid and the
 * model config, and nothing is handed over otherwise) and the writer of an image's rows in a dtype.
 *
 * The tensors an LLM engine takes are row-major [rows, width] with rows = t*h*w / merge^2 (the merged tokens, in
 * the merger's order) and width = out_hidden x segments, where segment 0 is the final merger's output and
 * segments 1..k the DeepStack mergers' outputs in deepstack_visual_indexes order (vLLM's concat layout is all
 * 1 + k of them). vitd's outputs per image are float32 [rows, out_hidden] embeddings and [k][rows][out_hidden]
 * DeepStack features (the batcher's buffers); these functions read them as they are.
 *
 * Thread safety: pure functions. */
#ifndef VITD_HANDOVER_H
#define VITD_HANDOVER_H

#include <stdbool.h>
#include <stdint.h>

#include "reply.h"
#include "safetensors.h"
#include "vitd.h"

/* The rows (merged tokens) of an image with grid g: t*h*w / merge^2. VITD_E_INTERNAL (naming the image) when the
 * grid is not made of whole merge windows or is empty: such a tensor would corrupt the language model. */
vitd_status handover_rows(const vitd_grid *g, int merge, int image, int64_t *rows, vitd_err *err);

/* One image's output as consumed by the hand-over writers. */
typedef struct {
    const void *emb;      /* [rows, D] */
    const void *ds;       /* [k][rows][D], or NULL when k == 0 */
    bool bf16;            /* emb and ds hold bfloat16 (uint16_t) values, else float32 */
    int64_t rows;
    int D, k;
    int image;            /* index in the request, for messages */
} handover_src;

/* Writes segments [seg0, seg1) of every row (see above), concatenated per row, into dst as dtype (ST_F32, ST_BF16
 * or ST_F16, little-endian, round-to-nearest-even; a bfloat16 source asked as bfloat16 is copied as it is):
 * rows x D x (seg1 - seg0) elements. Float16 refuses a value
 * beyond its range (|x| >= 65520 rounds to infinity) with VITD_E_INVALID_ARG naming the image, row and value,
 * never writing an infinity; dst is then partly written. */
vitd_status handover_write(const handover_src *s, int seg0, int seg1, st_dtype dtype, void *dst, vitd_err *err);

/* VITD_E_INVALID_ARG (the message of handover_write) when a value of src would overflow float16; else VITD_OK. */
vitd_status handover_check_f16(const handover_src *s, vitd_err *err);

/* Bytes handover_write produces. */
static inline size_t handover_bytes(const handover_src *s, int seg0, int seg1, st_dtype dtype) {
    return (size_t)s->rows * (size_t)s->D * (size_t)(seg1 - seg0) * st_dtype_size(dtype);
}

/* The source view of image i of an /v1/encode-style result (its grid checked with handover_rows). */
vitd_status handover_src_of(const reply_encode *re, int i, int merge, handover_src *out, vitd_err *err);

#endif
