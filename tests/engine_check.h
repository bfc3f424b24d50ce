/* engine_check.h — helpers shared by the whole-encoder GPU tests (test_gpu_engine.c, test_fp8_engine.c): fixture
 * images preprocessed into one batch, poisoned output buffers, running a subset of a batch through any backend,
 * the per-image comparison (max abs, rel L2, cosine, NaN) with a cosine floor, and the demo checkpoints they
 * run on. Include after check.h and the encoder headers, in a test built with CUDA. */
#ifndef VITD_ENGINE_CHECK_H
#define VITD_ENGINE_CHECK_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "cpu_forward.h"
#include "demo_model.h"
#include "image.h"
#include "preprocess.h"
#include "util.h"
#include "vitd.h"

/* Writes the `preset` demo checkpoint (seed 7) to parent/preset, or with outliers > 1 (demo_model_opts.outliers)
 * to parent/preset_outliers; the path in buf[len]; returns buf, or NULL after printing why. */
static inline const char *write_demo_outliers(const char *parent, const char *preset, float outliers, char *buf,
                                              size_t len) {
    vitd_err err = {0};
    snprintf(buf, len, "%s/%s%s", parent, preset, outliers > 1 ? "_outliers" : "");
    demo_model_opts o = demo_model_opts_default();
    o.preset = preset;
    o.out_dir = buf;
    o.seed = 7;
    o.outliers = outliers;
    double t = vitd_now();
    if (demo_model_write(&o, &err) != VITD_OK) {
        fprintf(stderr, "FAIL: demo_model_write %s: %s\n", preset, err.msg);
        return NULL;
    }
    printf("wrote the %s demo model in %.1f s\n", preset, vitd_now() - t);
    return buf;
}

static void log_hook(vitd_log_level level, const char *msg, void *user) {
    (void)user;
    if (level >= VITD_LOG_INFO) printf("  [log] %s\n", msg);
}

/* A preprocessed batch of fixture images. */
typedef struct {
    int n;
    const char *names[8];
    vitd_grid grids[8];
    size_t off[9]; /* patch offsets */
    float *pv;     /* [off[n], 1536] */
} images;

static int load_images(images *im, const char *const *files, int n, const vitd_preproc_config *pc) {
    memset(im, 0, sizeof *im);
    float *parts[8] = {0};
    for (int i = 0; i < n; i++) {
        char path[512];
        vitd_err err = {0};
        uint8_t *data = NULL;
        size_t len = 0;
        vitd_image img = {0};
        snprintf(path, sizeof path, "%s/tests/fixtures/images/%s", VITD_SOURCE_DIR, files[i]);
        if (image_read_file(path, &data, &len, &err) != VITD_OK || image_decode(data, len, 0, &img, &err) ||
            preprocess_plan(img.height, img.width, pc, &im->grids[i], &err)) {
            fprintf(stderr, "FAIL: %s: %s\n", files[i], err.msg);
            return -1;
        }
        size_t rows = (size_t)im->grids[i].h * im->grids[i].w;
        parts[i] = malloc(rows * 1536 * sizeof(float));
        if (preprocess_run(&img, pc, &im->grids[i], parts[i], &err) != VITD_OK) {
            fprintf(stderr, "FAIL: preprocess %s: %s\n", files[i], err.msg);
            return -1;
        }
        im->names[i] = files[i];
        im->off[i + 1] = im->off[i] + rows;
        image_release(&img);
        free(data);
    }
    im->n = n;
    im->pv = malloc(im->off[n] * 1536 * sizeof(float));
    for (int i = 0; i < n; i++) {
        memcpy(im->pv + im->off[i] * 1536, parts[i], (im->off[i + 1] - im->off[i]) * 1536 * sizeof(float));
        free(parts[i]);
    }
    return 0;
}

static const char *write_demo(const char *parent, const char *preset, char *buf, size_t len) {
    return write_demo_outliers(parent, preset, 0, buf, len);
}

/* Loads the checkpoint in dir and preprocesses files into *im; NULL (a failed check, printed) if either fails. */
static inline vitd_model *load_model_images(const char *dir, const char *const *files, int n_files, images *im) {
    vitd_err err = {0};
    vitd_model *model = NULL;
    CHECK_OK(vitd_model_load(dir, &model, &err), &err);
    if (!model) return NULL;
    if (load_images(im, files, n_files, vitd_model_preproc(model))) {
        CHECK(0);
        vitd_model_free(model);
        return NULL;
    }
    return model;
}

/* Outputs of one run over a batch of images (embeddings [Nm, D], deepstack [nds][Nm][D]). */
typedef struct {
    float *emb, *ds;
} outputs;

static void outputs_alloc(outputs *o, size_t nm, int D, int nds) {
    o->emb = malloc(nm * D * sizeof(float));
    o->ds = malloc((size_t)(nds ? nds : 1) * nm * D * sizeof(float));
    for (size_t i = 0; i < nm * D; i++) o->emb[i] = NAN; /* poison: every element must be written */
    for (size_t i = 0; i < (size_t)(nds ? nds : 1) * nm * D; i++) o->ds[i] = NAN;
}

static void outputs_free(outputs *o) {
    free(o->emb);
    free(o->ds);
}

/* Runs images [first, first + count) of im as one batch, writing into o at the batch's merged-token offsets of
 * the whole set (so that alone and batched runs land in the same layout). */
typedef vitd_status (*run_fn)(void *impl, const vitd_batch *b, vitd_err *err);

/* run_fn of the CPU reference (cpu_forward without a per-stage profile). */
static inline vitd_status cpu_forward_run(void *impl, const vitd_batch *b, vitd_err *err) {
    return cpu_forward(impl, b, NULL, err);
}

static vitd_status run_subset(run_fn fn, void *impl, const images *im, int first, int count, int D, int nds,
                              outputs *o, vitd_err *err) {
    const size_t nm_all = im->off[im->n] / 4, t0 = im->off[first], nm = (im->off[first + count] - t0) / 4;
    float *emb = malloc(nm * D * sizeof(float)), *ds = malloc((size_t)(nds ? nds : 1) * nm * D * sizeof(float));
    vitd_batch b = {.n_images = count, .grids = im->grids + first, .pixel_values = im->pv + t0 * 1536,
                    .embeddings = emb, .deepstack = nds ? ds : NULL};
    vitd_status st = fn(impl, &b, err);
    if (st == VITD_OK) {
        memcpy(o->emb + t0 / 4 * D, emb, nm * D * sizeof(float));
        for (int j = 0; j < nds; j++)
            memcpy(o->ds + ((size_t)j * nm_all + t0 / 4) * D, ds + (size_t)j * nm * D, nm * D * sizeof(float));
    }
    free(emb);
    free(ds);
    return st;
}


/* The CPU float32 reference of every image of im, as one batch, into ref (a failed check if it cannot run). */
static inline void cpu_reference(const vitd_model *model, const images *im, int D, int nds, outputs *ref) {
    vitd_err err = {0};
    cpu_model *cm = NULL;
    CHECK_OK(cpu_model_create(model, 0, &cm, &err), &err);
    if (cm) CHECK_OK(run_subset(cpu_forward_run, cm, im, 0, im->n, D, nds, ref, &err), &err);
    cpu_model_free(cm);
}

/* Per image and output: cosine of got vs ref >= min_cos, no NaN. Returns the worst cosine. */
static double compare(const char *label, const images *im, const outputs *got, const outputs *ref, int D, int nds,
                      double min_cos) {
    const size_t nm_all = im->off[im->n] / 4;
    double worst = 1;
    for (int i = 0; i < im->n; i++) {
        const size_t a = im->off[i] / 4, nm = (im->off[i + 1] - im->off[i]) / 4;
        for (int j = -1; j < nds; j++) {
            const float *g = j < 0 ? got->emb + a * D : got->ds + ((size_t)j * nm_all + a) * D;
            const float *r = j < 0 ? ref->emb + a * D : ref->ds + ((size_t)j * nm_all + a) * D;
            cmp_stats s = cmp_f32(g, r, nm * D, 0, 0);
            char what[160];
            if (j < 0)
                snprintf(what, sizeof what, "%s %s [%dx%d] embeddings", label, im->names[i], im->grids[i].h,
                         im->grids[i].w);
            else
                snprintf(what, sizeof what, "%s %s [%dx%d] deepstack.%d", label, im->names[i], im->grids[i].h,
                         im->grids[i].w, j);
            printf("  %-62s max_abs %.3e max_rel %.3e rel_l2 %.3e cos %.7f nan %zu\n", what, s.max_abs, s.max_rel,
                   s.rel_l2, s.cosine, s.n_nan);
            CHECK_MSG(s.n_nan == 0, "%s: %zu NaN/Inf", what, s.n_nan);
            CHECK_MSG(s.cosine >= min_cos, "%s: cosine %.7f < %.4f", what, s.cosine, min_cos);
            if (s.cosine < worst) worst = s.cosine;
        }
    }
    return worst;
}

#endif
