/* handover.c — the shape check and the row writer every hand-over form uses (handover.h). */
#include "handover.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

vitd_status handover_rows(const vitd_grid *g, int merge, int image, int64_t *rows, vitd_err *err) {
    int64_t patches = (int64_t)g->t * g->h * g->w, window = (int64_t)merge * merge;
    if (g->t < 1 || g->h < 1 || g->w < 1 || merge < 1 || g->h % merge || g->w % merge)
        return vitd_fail(err, VITD_E_INTERNAL, "image %d: grid_thw [%d, %d, %d] is not whole %dx%d merge windows: "
                         "nothing handed over", image, g->t, g->h, g->w, merge, merge);
    *rows = patches / window;
    return VITD_OK;
}

vitd_status handover_src_of(const reply_encode *re, int i, int merge, handover_src *out, vitd_err *err) {
    const reply_image *im = &re->images[i];
    bool ds = im->deepstack && re->opts.deepstack; /* never DeepStack the answer leaves out */
    int k = ds ? re->n_deepstack : 0;
    *out = (handover_src){.emb = im->embeddings, .ds = ds ? im->deepstack : NULL, .bf16 = im->bf16, .D = re->out_hidden, .k = k,
                          .image = i};
    return handover_rows(&im->grid, merge, i, &out->rows, err);
}

/* Row t of segment seg (the embeddings, or DeepStack layer seg - 1) as float32; scratch holds D floats. */
static const float *seg_row(const handover_src *s, int seg, int64_t t, float *scratch) {
    size_t off = (seg == 0 ? (size_t)t : (size_t)(seg - 1) * (size_t)s->rows + (size_t)t) * (size_t)s->D;
    return reply_row_f32(seg == 0 ? s->emb : s->ds, s->bf16, off, (size_t)s->D, scratch);
}

/* Row t of segment seg as its stored bfloat16 values (s->bf16 only). */
static const uint16_t *seg_row_bf16(const handover_src *s, int seg, int64_t t) {
    size_t off = (seg == 0 ? (size_t)t : (size_t)(seg - 1) * (size_t)s->rows + (size_t)t) * (size_t)s->D;
    return (const uint16_t *)(seg == 0 ? s->emb : s->ds) + off;
}

/* The float16 overflow message, shared by the writer and the check. */
static vitd_status f16_overflow(const handover_src *s, float x, int64_t t, vitd_err *err) {
    return vitd_fail(err, VITD_E_INVALID_ARG, "image %d: value %g (row %lld) is beyond float16's range (largest "
                     "65504): ask for dtype bfloat16 or float32", s->image, (double)x, (long long)t);
}

vitd_status handover_check_f16(const handover_src *s, vitd_err *err) {
    float *scratch = malloc((size_t)s->D * sizeof(float));
    if (!scratch) return vitd_fail(err, VITD_E_NOMEM, "out of memory checking float16 range");
    vitd_status st = VITD_OK;
    for (int seg = 0; seg <= s->k && !st; seg++)
        for (int64_t t = 0; t < s->rows && !st; t++) {
            const float *x = seg_row(s, seg, t, scratch);
            for (int j = 0; j < s->D; j++)
                if (fabsf(x[j]) >= 65520.0f && isfinite(x[j])) {
                    st = f16_overflow(s, x[j], t, err);
                    break;
                }
        }
    free(scratch);
    return st;
}

vitd_status handover_write(const handover_src *s, int seg0, int seg1, st_dtype dtype, void *dst, vitd_err *err) {
    if (seg0 < 0 || seg1 > 1 + s->k || seg0 >= seg1)
        return vitd_fail(err, VITD_E_INTERNAL, "image %d: segments [%d, %d) of %d", s->image, seg0, seg1, 1 + s->k);
    if (dtype != ST_F32 && dtype != ST_BF16 && dtype != ST_F16)
        return vitd_fail(err, VITD_E_INTERNAL, "image %d: dtype %s is not a hand-over dtype", s->image,
                         st_dtype_name(dtype));
    size_t D = (size_t)s->D;
    uint8_t *o = dst;
    float *scratch = malloc(D * sizeof(float));
    if (!scratch) return vitd_fail(err, VITD_E_NOMEM, "out of memory writing image %d", s->image);
    vitd_status st = VITD_OK;
    for (int64_t t = 0; t < s->rows && !st; t++) {
        for (int seg = seg0; seg < seg1 && !st; seg++) {
            if (dtype == ST_BF16 && s->bf16) { /* the engine's own values, as they are */
                memcpy(o, seg_row_bf16(s, seg, t), D * 2);
                o += D * 2;
                continue;
            }
            const float *x = seg_row(s, seg, t, scratch);
            if (dtype == ST_F32) {
                memcpy(o, x, D * 4);
                o += D * 4;
                continue;
            }
            if (dtype == ST_BF16) {
                for (size_t j = 0; j < D; j++) {
                    uint16_t h = f32_to_bf16(x[j]);
                    memcpy(o + 2 * j, &h, 2); /* little-endian host (reply.c checks) */
                }
            } else {
                for (size_t j = 0; j < D && !st; j++) {
                    uint16_t h = f32_to_f16(x[j]);
                    memcpy(o + 2 * j, &h, 2);
                    if ((h & 0x7c00u) == 0x7c00u && (h & 0x3ffu) == 0 && isfinite(x[j]))
                        st = f16_overflow(s, x[j], t, err);
                }
            }
            o += D * 2;
        }
    }
    free(scratch);
    return st;
}
