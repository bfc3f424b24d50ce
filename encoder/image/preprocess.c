/* preprocess.c — the Qwen3-VL image processor (transformers 5.x Qwen2VLImageProcessor, torchvision backend),
 * bit for bit (MODEL.md section 2), and the default vision / processor configurations.
 *
 * It owns: smart_resize (preprocess_target_size, mirrors qwen2_vl's smart_resize), torch's CPU uint8 antialiased
 * bicubic (preprocess_resize_bicubic, mirrors aten UpSampleKernel.cpp's int16 path as called by torchvision's
 * resize(BICUBIC, antialias=True)), the fused rescale + normalise, the merge-order patchify (preprocess_run) and
 * the attention segments (preprocess_cu_seqlens). Everything is integer or single IEEE operations in a fixed
 * order, so results are exact, not approximate. This file relies on ISO C floating point: no -ffast-math, and no
 * FMA contraction (gcc's default in -std=c11 mode is -ffp-contract=off).
 */
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "preprocess.h"
#include "util.h"

/* ---- defaults ---- */

vitd_vision_config vitd_vision_config_default(void) {
    vitd_vision_config c;
    memset(&c, 0, sizeof c);
    c.depth = 27;
    c.hidden_size = 1152;
    c.intermediate_size = 4304;
    c.num_heads = 16;
    c.out_hidden_size = 3584;       /* transformers' placeholder; real checkpoints override it */
    c.patch_size = 16;
    c.temporal_patch_size = 2;
    c.spatial_merge_size = 2;
    c.in_channels = 3;
    c.num_position_embeddings = 2304;
    c.n_deepstack = 3;
    c.deepstack_indexes[0] = 8;
    c.deepstack_indexes[1] = 16;
    c.deepstack_indexes[2] = 24;
    c.rope_theta = 10000.0;
    c.ln_eps = 1e-6;
    return c;
}

vitd_preproc_config vitd_preproc_config_default(void) {
    vitd_preproc_config c;
    memset(&c, 0, sizeof c);
    c.min_pixels = 65536;           /* 256 x 256 */
    c.max_pixels = 16777216;        /* 4096 x 4096 */
    c.patch_size = 16;
    c.temporal_patch_size = 2;
    c.merge_size = 2;
    for (int i = 0; i < 3; i++) {
        c.image_mean[i] = 0.5f;
        c.image_std[i] = 0.5f;
    }
    c.rescale_factor = 1.0 / 255.0;
    return c;
}

/* ---- configuration checks ---- */

/* Fused normalisation constants of MODEL.md 2.6: transformers multiplies the float32 mean/std tensors by the
 * Python float 1/rescale_factor, which torch evaluates in float32: mean' = f32(mean) * f32(1/rescale). */
static void fused_mean_std(const vitd_preproc_config *cfg, float mean[3], float std[3]) {
    float inv = (float)(1.0 / cfg->rescale_factor);
    for (int c = 0; c < 3; c++) {
        mean[c] = cfg->image_mean[c] * inv;
        std[c] = cfg->image_std[c] * inv;
    }
}

/* Refuses settings that would make the arithmetic below meaningless or overflow. */
static vitd_status check_config(const vitd_preproc_config *cfg, vitd_err *err) {
    if (!cfg) return vitd_fail(err, VITD_E_INVALID_ARG, "preprocess: no configuration");
    if (cfg->patch_size < 1 || cfg->patch_size > 1024)
        return vitd_fail(err, VITD_E_INVALID_ARG, "preprocess: patch_size %d outside 1..1024", cfg->patch_size);
    if (cfg->merge_size < 1 || cfg->merge_size > 64)
        return vitd_fail(err, VITD_E_INVALID_ARG, "preprocess: merge_size %d outside 1..64", cfg->merge_size);
    if (cfg->temporal_patch_size < 1 || cfg->temporal_patch_size > 64)
        return vitd_fail(err, VITD_E_INVALID_ARG, "preprocess: temporal_patch_size %d outside 1..64",
                         cfg->temporal_patch_size);
    if (cfg->max_pixels < 1) return vitd_fail(err, VITD_E_INVALID_ARG, "preprocess: max_pixels is 0");
    if (!(isfinite(cfg->rescale_factor) && cfg->rescale_factor != 0.0))
        return vitd_fail(err, VITD_E_INVALID_ARG, "preprocess: rescale_factor %g is not a finite non-zero number",
                         cfg->rescale_factor);
    float mean[3], std[3];
    fused_mean_std(cfg, mean, std);
    for (int c = 0; c < 3; c++) {
        if (!isfinite(mean[c]))
            return vitd_fail(err, VITD_E_INVALID_ARG, "preprocess: image_mean[%d] = %g is not finite after rescale",
                             c, (double)cfg->image_mean[c]);
        if (!(isfinite(std[c]) && std[c] != 0.0f))
            return vitd_fail(err, VITD_E_INVALID_ARG,
                             "preprocess: image_std[%d] = %g must be finite and non-zero after rescale", c,
                             (double)cfg->image_std[c]);
    }
    return VITD_OK;
}

size_t preprocess_row_width(const vitd_preproc_config *cfg) {
    size_t p = (size_t)cfg->patch_size;
    return 3 * (size_t)cfg->temporal_patch_size * p * p;
}

/* ---- smart_resize (MODEL.md 2.2) ---- */

/* transformers' smart_resize with factor = patch_size * merge_size, in IEEE double like Python. Python's int
 * products and int/int divisions are exact or correctly rounded; here the products are uint64 (exact) and the
 * quotients are of exact doubles (inputs below 2^53), so every step rounds the same way. Python's round() is
 * round-half-even: rint() in the default rounding mode. */
vitd_status preprocess_target_size(uint32_t height, uint32_t width, const vitd_preproc_config *cfg,
                                   uint32_t *h_out, uint32_t *w_out, vitd_err *err) {
    vitd_status st = check_config(cfg, err);
    if (st != VITD_OK) return st;
    if (height == 0 || width == 0)
        return vitd_fail(err, VITD_E_BAD_IMAGE, "image is %ux%u (width x height): a side is zero", width, height);
    const uint64_t factor = (uint64_t)cfg->patch_size * (uint64_t)cfg->merge_size;
    const double f = (double)factor, h = (double)height, w = (double)width;
    const uint32_t lo = height < width ? height : width, hi = height < width ? width : height;
    if ((double)hi / (double)lo > 200.0)
        return vitd_fail(err, VITD_E_TOO_LARGE, "image %ux%u (width x height): aspect ratio %.1f exceeds 200",
                         width, height, (double)hi / (double)lo);

    double hb = rint(h / f) * f, wb = rint(w / f) * f;             /* exact: integers below 2^38 */
    const uint64_t pixels = (uint64_t)height * width;
    uint64_t area;
    const int overflow = __builtin_mul_overflow((uint64_t)hb, (uint64_t)wb, &area);
    if (overflow || area > (uint64_t)cfg->max_pixels) {            /* an overflowing area exceeds any limit */
        double beta = sqrt((double)pixels / (double)cfg->max_pixels);
        hb = fmax(f, floor(h / beta / f) * f);
        wb = fmax(f, floor(w / beta / f) * f);
    } else if (area < (uint64_t)cfg->min_pixels) {
        double beta = sqrt((double)cfg->min_pixels / (double)pixels);
        hb = ceil(h * beta / f) * f;
        wb = ceil(w * beta / f) * f;
    }
    /* Only min_pixels = 0 lets a side round to 0 (Python would return it and fail later). */
    if (hb == 0.0 || wb == 0.0)
        return vitd_fail(err, VITD_E_BAD_IMAGE, "image %ux%u (width x height) is too small: it resizes to %.0fx%.0f "
                         "with min_pixels %zu", width, height, wb, hb, cfg->min_pixels);
    if (hb > (double)UINT32_MAX || wb > (double)UINT32_MAX)
        return vitd_fail(err, VITD_E_TOO_LARGE, "image %ux%u (width x height) resizes to %.0fx%.0f, over 2^32 a side "
                         "(min_pixels %zu)", width, height, wb, hb, cfg->min_pixels);
    *h_out = (uint32_t)hb;
    *w_out = (uint32_t)wb;
    return VITD_OK;
}

vitd_status preprocess_plan(uint32_t height, uint32_t width, const vitd_preproc_config *cfg, vitd_grid *grid,
                            vitd_err *err) {
    uint32_t hb, wb;
    vitd_status st = preprocess_target_size(height, width, cfg, &hb, &wb, err);
    if (st != VITD_OK) return st;
    uint64_t gh = hb / (uint32_t)cfg->patch_size, gw = wb / (uint32_t)cfg->patch_size;
    if (gh * gw > (uint64_t)INT32_MAX)
        return vitd_fail(err, VITD_E_TOO_LARGE, "image %ux%u (width x height) gives %llux%llu patches, over the "
                         "int32 limit %d", width, height, (unsigned long long)gw, (unsigned long long)gh, INT32_MAX);
    grid->t = 1;
    grid->h = (int)gh;
    grid->w = (int)gw;
    return VITD_OK;
}

/* ---- torch's uint8 antialiased bicubic (MODEL.md 2.4) ---- */

/* One axis' fixed-point resampling table: output i reads in[xmin[i] .. xmin[i]+xsize[i]-1] with int16 weights
 * w[i*ksize + j] scaled by 2^prec. */
typedef struct {
    int64_t *xmin;   /* [out] */
    int64_t *xsize;  /* [out] */
    int16_t *w;      /* [out][ksize] */
    int64_t ksize;
    int prec;
} axis_table;

static void axis_table_release(axis_table *t) {
    free(t->xmin);
    free(t->xsize);
    free(t->w);
    memset(t, 0, sizeof *t);
}

/* Keys cubic with a = -0.5, written as torch writes it (the far branch differs from Pillow's in rounding). */
static double cubic_torch(double x) {
    const double a = -0.5;
    x = fabs(x);
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
    if (x < 2.0) return ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a;
    return 0.0;
}

/* Builds the table for in_size -> out_size the way aten's _compute_index_ranges_int16_weights does: double
 * weights per output, normalised by their in-order sum; then one precision for the whole axis, the first p whose
 * largest normalised weight reaches 2^15 at 2^(p+1) (22 if none); then int16 weights rounded half away from 0.
 * On success *t owns its arrays (axis_table_release). Fails only with VITD_E_NOMEM. */
static vitd_status axis_table_build(uint32_t in_size, uint32_t out_size, axis_table *t, vitd_err *err) {
    memset(t, 0, sizeof *t);
    double *wd = NULL;
    const double scale = (double)in_size / (double)out_size;
    const double support = scale >= 1.0 ? 2.0 * scale : 2.0;
    const double invscale = scale >= 1.0 ? 1.0 / scale : 1.0;
    t->ksize = (int64_t)ceil(support) * 2 + 1;
    /* ksize ~ 4*in/out + 5, so out*ksize stays ~ 4*in + 5*out entries. */
    const size_t n_w = (size_t)out_size * (size_t)t->ksize;
    t->xmin = malloc((size_t)out_size * sizeof *t->xmin);
    t->xsize = malloc((size_t)out_size * sizeof *t->xsize);
    t->w = calloc(n_w, sizeof *t->w);
    wd = calloc(n_w, sizeof *wd);
    if (!t->xmin || !t->xsize || !t->w || !wd) {
        vitd_fail(err, VITD_E_NOMEM, "preprocess: no memory for %u -> %u resize weights (%zu taps)", in_size,
                  out_size, n_w);
        goto fail;
    }

    double wt_max = 0.0;
    for (uint32_t i = 0; i < out_size; i++) {
        const double center = scale * ((double)i + 0.5);
        int64_t xmin = (int64_t)(center - support + 0.5);      /* C truncation toward zero, as in aten */
        if (xmin < 0) xmin = 0;
        int64_t xend = (int64_t)(center + support + 0.5);
        if (xend > (int64_t)in_size) xend = in_size;
        int64_t xsize = xend - xmin;
        if (xsize < 0) xsize = 0;
        if (xsize > t->ksize) xsize = t->ksize;
        double *w = wd + (size_t)i * (size_t)t->ksize;
        double total = 0.0;
        for (int64_t j = 0; j < xsize; j++) {
            w[j] = cubic_torch(((double)(j + xmin) - center + 0.5) * invscale);
            total += w[j];
        }
        for (int64_t j = 0; j < xsize; j++) {
            if (total != 0.0) w[j] /= total;
            if (w[j] > wt_max) wt_max = w[j];
        }
        t->xmin[i] = xmin;
        t->xsize[i] = xsize;
    }

    t->prec = 22;
    for (int p = 0; p < 22; p++) {
        if ((int64_t)(0.5 + wt_max * (double)(1 << (p + 1))) >= (1 << 15)) {
            t->prec = p;
            break;
        }
    }
    const double one = (double)(1 << t->prec);
    for (size_t k = 0; k < n_w; k++) {
        double v = wd[k] * one;
        t->w[k] = (int16_t)(v < 0.0 ? (int)(v - 0.5) : (int)(v + 0.5));
    }
    free(wd);
    return VITD_OK;
fail:
    free(wd);
    axis_table_release(t);
    return err ? err->code : VITD_E_NOMEM;
}

static inline uint8_t clamp_u8(int32_t v) {
    return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
}

/* Width pass: rows x in_w RGB -> rows x out_w RGB, each output pixel a weighted sum over its taps (int32 with the
 * 2^(prec-1) rounding bias, arithmetic shift, clamp). */
static void resize_horizontal(const uint8_t *src, uint32_t rows, uint32_t in_w, uint8_t *dst, uint32_t out_w,
                              const axis_table *t) {
    const int32_t bias = t->prec > 0 ? (int32_t)1 << (t->prec - 1) : 0;
    const int prec = t->prec;
    for (uint32_t y = 0; y < rows; y++) {
        const uint8_t *row = src + (size_t)y * in_w * 3;
        uint8_t *out = dst + (size_t)y * out_w * 3;
        for (uint32_t x = 0; x < out_w; x++) {
            const int16_t *w = t->w + (size_t)x * (size_t)t->ksize;
            const uint8_t *p = row + (size_t)t->xmin[x] * 3;
            const int64_t n = t->xsize[x];
            int32_t r = bias, g = bias, b = bias;
            for (int64_t j = 0; j < n; j++) {
                const int32_t wj = w[j];
                r += p[3 * j] * wj;
                g += p[3 * j + 1] * wj;
                b += p[3 * j + 2] * wj;
            }
            out[3 * x] = clamp_u8(r >> prec);
            out[3 * x + 1] = clamp_u8(g >> prec);
            out[3 * x + 2] = clamp_u8(b >> prec);
        }
    }
}

/* Height pass: in_h x cols RGB -> out_h x cols RGB, output rows [y0, y1). Output row y sums whole input rows; the row is cut into
 * VCHUNK-byte pieces accumulated in a local int32 array, so the inner loops have a fixed trip count (the compiler
 * vectorises them at -O2) and stay in L1. Integer sums are exact, so the order of the taps does not matter. */
#define VCHUNK 256
static void resize_vertical(const uint8_t *src, uint32_t cols, uint8_t *dst, uint32_t y0, uint32_t y1,
                            const axis_table *t) {
    const int32_t bias = t->prec > 0 ? (int32_t)1 << (t->prec - 1) : 0;
    const int prec = t->prec;
    const size_t n = (size_t)cols * 3;
    int32_t acc[VCHUNK];
    for (uint32_t y = y0; y < y1; y++) {
        const int16_t *w = t->w + (size_t)y * (size_t)t->ksize;
        const uint8_t *first = src + (size_t)t->xmin[y] * n;
        const int64_t taps = t->xsize[y];
        uint8_t *out = dst + (size_t)y * n;
        size_t k0 = 0;
        for (; k0 + VCHUNK <= n; k0 += VCHUNK) {
            for (int k = 0; k < VCHUNK; k++) acc[k] = bias;
            for (int64_t j = 0; j < taps; j++) {
                const uint8_t *row = first + (size_t)j * n + k0;
                const int32_t wj = w[j];
                for (int k = 0; k < VCHUNK; k++) acc[k] += row[k] * wj;
            }
            for (int k = 0; k < VCHUNK; k++) out[k0 + k] = clamp_u8(acc[k] >> prec);
        }
        for (size_t k = k0; k < n; k++) {      /* the last partial piece */
            int32_t a = bias;
            for (int64_t j = 0; j < taps; j++) a += first[(size_t)j * n + k] * (int32_t)w[j];
            out[k] = clamp_u8(a >> prec);
        }
    }
}

/* What the ranged passes share: the tables, the buffers, the sizes. */
typedef struct {
    const uint8_t *src;
    uint8_t *mid, *dst;        /* mid: the width pass's output (dst when there is no height pass) */
    uint32_t in_h, in_w, out_h, out_w;
    axis_table th, tv;
} resize_job;

static void h_range(void *arg, size_t y0, size_t y1) {
    const resize_job *j = arg;
    resize_horizontal(j->src + y0 * j->in_w * 3, (uint32_t)(y1 - y0), j->in_w, j->mid + y0 * j->out_w * 3, j->out_w,
                      &j->th);
}

static void v_range(void *arg, size_t y0, size_t y1) {
    const resize_job *j = arg;
    resize_vertical(j->mid, j->out_w, j->dst, (uint32_t)y0, (uint32_t)y1, &j->tv);
}

/* Runs fn over [0, n): through par in pieces of grain, or in one call. */
static void run_range(const preprocess_parallel *par, size_t n, size_t grain, preprocess_range_fn fn, void *arg) {
    if (par && par->run && n > grain) par->run(par->ctx, n, grain, fn, arg);
    else fn(arg, 0, n);
}

/* The resize of preprocess_resize_bicubic, its row passes split through par (NULL: one thread). Each output byte
 * is computed alone from the same inputs either way, so the result does not depend on the split. */
static vitd_status resize_par(const uint8_t *src, uint32_t in_h, uint32_t in_w, uint8_t *dst, uint32_t out_h,
                              uint32_t out_w, const preprocess_parallel *par, vitd_err *err) {
    vitd_status st = VITD_OK;
    resize_job j = {.src = src, .dst = dst, .in_h = in_h, .in_w = in_w, .out_h = out_h, .out_w = out_w};
    uint8_t *mid = NULL;
    if (!src || !dst || in_h == 0 || in_w == 0 || out_h == 0 || out_w == 0)
        return vitd_fail(err, VITD_E_INVALID_ARG, "preprocess: resize %ux%u -> %ux%u (width x height) needs "
                         "non-empty images", in_w, in_h, out_w, out_h);
    const int do_w = out_w != in_w, do_h = out_h != in_h;
    if (!do_w && !do_h) {
        memcpy(dst, src, (size_t)in_h * in_w * 3);
        return VITD_OK;
    }
    j.mid = (uint8_t *)src; /* the height pass reads the input itself when the width does not change */
    if (do_w) {
        if ((st = axis_table_build(in_w, out_w, &j.th, err)) != VITD_OK) goto fail;
        j.mid = dst;
        if (do_h) {
            mid = malloc((size_t)in_h * out_w * 3);
            if (!mid) {
                st = vitd_fail(err, VITD_E_NOMEM, "preprocess: no memory for a %ux%u resize intermediate", out_w,
                               in_h);
                goto fail;
            }
            j.mid = mid;
        }
        run_range(par, in_h, 64, h_range, &j);
    }
    if (do_h) {
        if ((st = axis_table_build(in_h, out_h, &j.tv, err)) != VITD_OK) goto fail;
        run_range(par, out_h, 64, v_range, &j);
    }
fail:
    free(mid);
    axis_table_release(&j.tv);
    axis_table_release(&j.th);
    return st;
}

vitd_status preprocess_resize_bicubic(const uint8_t *src, uint32_t in_h, uint32_t in_w, uint8_t *dst,
                                      uint32_t out_h, uint32_t out_w, vitd_err *err) {
    return resize_par(src, in_h, in_w, dst, out_h, out_w, NULL, err);
}

/* ---- normalise + patchify (MODEL.md 2.6, 2.7) ---- */

/* Writes pixel_values for the uint8 RGB image img (hb x wb, already at the target size), merge-block rows
 * [bh0, bh1): row r = ((bh*(gw/m) + bw)*m + mh)*m + mw holds patch (bh*m+mh, bw*m+mw); within a row, column
 * ((c*T + t)*P + py)*P + px holds lut[c][pixel], the same for every t. */
static void patchify(const uint8_t *img, uint32_t hb, uint32_t wb, const vitd_preproc_config *cfg,
                     const float lut[3][256], float *out, size_t bh0, size_t bh1) {
    const size_t P = (size_t)cfg->patch_size, T = (size_t)cfg->temporal_patch_size, m = (size_t)cfg->merge_size;
    const size_t gw = wb / P, pp = P * P, row_w = 3 * T * pp;
    (void)hb;
    out += bh0 * (gw / m) * m * m * row_w;
    for (size_t bh = bh0; bh < bh1; bh++) {
        for (size_t bw = 0; bw < gw / m; bw++) {
            for (size_t mh = 0; mh < m; mh++) {
                for (size_t mw = 0; mw < m; mw++) {
                    const size_t y0 = (bh * m + mh) * P, x0 = (bw * m + mw) * P;
                    for (size_t py = 0; py < P; py++) {
                        const uint8_t *s = img + ((y0 + py) * (size_t)wb + x0) * 3;
                        float *d0 = out + py * P, *d1 = d0 + T * pp, *d2 = d1 + T * pp;  /* c = 0, 1, 2; t = 0 */
                        for (size_t px = 0; px < P; px++) {
                            d0[px] = lut[0][s[3 * px]];
                            d1[px] = lut[1][s[3 * px + 1]];
                            d2[px] = lut[2][s[3 * px + 2]];
                        }
                    }
                    for (size_t c = 0; c < 3; c++)
                        for (size_t t = 1; t < T; t++)
                            memcpy(out + (c * T + t) * pp, out + c * T * pp, pp * sizeof *out);
                    out += row_w;
                }
            }
        }
    }
}

typedef struct {
    const uint8_t *img;
    uint32_t hb, wb;
    const vitd_preproc_config *cfg;
    float (*lut)[256];
    float *out;
} patch_job;

static void patch_range(void *arg, size_t b0, size_t b1) {
    const patch_job *j = arg;
    patchify(j->img, j->hb, j->wb, j->cfg, (const float(*)[256])j->lut, j->out, b0, b1);
}

vitd_status preprocess_run_par(const vitd_image *img, const vitd_preproc_config *cfg, const vitd_grid *grid,
                               float *pixel_values, const preprocess_parallel *par, vitd_err *err) {
    vitd_status st;
    uint8_t *resized = NULL;
    if (!img || !img->rgb || !grid || !pixel_values)
        return vitd_fail(err, VITD_E_INVALID_ARG, "preprocess: missing image, grid or output buffer");
    vitd_grid plan = {0, 0, 0};
    if ((st = preprocess_plan(img->height, img->width, cfg, &plan, err)) != VITD_OK) return st;
    if (grid->t != plan.t || grid->h != plan.h || grid->w != plan.w)
        return vitd_fail(err, VITD_E_INVALID_ARG, "preprocess: grid [%d,%d,%d] does not match the plan [%d,%d,%d] "
                         "of a %ux%u (width x height) image", grid->t, grid->h, grid->w, plan.t, plan.h, plan.w,
                         img->width, img->height);
    const uint32_t hb = (uint32_t)plan.h * (uint32_t)cfg->patch_size;
    const uint32_t wb = (uint32_t)plan.w * (uint32_t)cfg->patch_size;

    const uint8_t *u = img->rgb;
    if (hb != img->height || wb != img->width) {
        resized = malloc((size_t)hb * wb * 3);
        if (!resized) {
            st = vitd_fail(err, VITD_E_NOMEM, "preprocess: no memory for the %ux%u resized image", wb, hb);
            goto fail;
        }
        if ((st = resize_par(img->rgb, img->height, img->width, resized, hb, wb, par, err)) != VITD_OK) goto fail;
        u = resized;
    }

    /* The fused normalisation takes one of 256 values per channel, so a table is exact. */
    float mean[3], std[3], lut[3][256];
    fused_mean_std(cfg, mean, std);
    for (int c = 0; c < 3; c++)
        for (int v = 0; v < 256; v++) lut[c][v] = ((float)v - mean[c]) / std[c];

    patch_job pj = {u, hb, wb, cfg, lut, pixel_values};
    run_range(par, (size_t)plan.h / (size_t)cfg->merge_size, 4, patch_range, &pj);
    st = VITD_OK;
fail:
    free(resized);
    return st;
}

vitd_status preprocess_run(const vitd_image *img, const vitd_preproc_config *cfg, const vitd_grid *grid,
                           float *pixel_values, vitd_err *err) {
    return preprocess_run_par(img, cfg, grid, pixel_values, NULL, err);
}

/* ---- attention segments (MODEL.md 6.2) ---- */

int preprocess_cu_seqlens(const vitd_grid *grids, int n_images, int32_t *cu, int *max_seqlen) {
    if (n_images < 0 || (n_images > 0 && !grids) || !cu) return VITD_E_INVALID_ARG;
    int64_t total = 0, longest = 0;
    int n = 0;
    cu[0] = 0;
    for (int i = 0; i < n_images; i++) {
        const vitd_grid *g = &grids[i];
        if (g->t < 1 || g->h < 1 || g->w < 1) return VITD_E_INVALID_ARG;
        const int64_t seg = (int64_t)g->h * g->w;
        for (int f = 0; f < g->t; f++) {
            total += seg;
            if (total > INT32_MAX) return VITD_E_TOO_LARGE;
            cu[++n] = (int32_t)total;
        }
        if (seg > longest) longest = seg;
    }
    if (max_seqlen) *max_seqlen = (int)longest;
    return n;
}
