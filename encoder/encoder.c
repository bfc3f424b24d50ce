/* encoder.c — the encoder object of vitd.h: picks a backend (cpu | gpu | auto) and dispatches every batch through
 * one backend table, so the server never knows which backend runs; counts the batches per attention path.
 *
 * Backends: "cpu" is the float32 reference (cpu_forward.c). "gpu" is the CUDA engine (gpu_engine.c), present only
 * in builds with VITD_HAVE_CUDA. "auto" takes the GPU when one is usable and says why not otherwise.
 * attn_dtype: checked here (auto | fp8 | bf16); "fp8" where only the CPU backend can run is a start-up error, as
 * the engine makes it where FP8 attention cannot run on the GPU (attn_route.h); auto falls back to BF16 inside
 * the engine with one warning. */
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "attn_route.h"
#include "cpu_forward.h"
#include "fp8_scales.h"
#include "util.h"
#include "vitd.h"
#ifdef VITD_HAVE_CUDA
#include "gpu_engine.h"
#endif

typedef struct {
    const char *name;
    int per_image;                                 /* 1: takes vitd_batch's per-image form itself */
    /* a synchronous backend has run (called inside vitd_encoder_submit, its outcome handed back by the wait);
     * a pipelined one submit and wait (finishes the oldest submitted batch) */
    vitd_status (*run)(void *impl, const vitd_batch *b, vitd_err *err);
    vitd_status (*submit)(void *impl, const vitd_batch *b, vitd_err *err);
    vitd_status (*wait)(void *impl, vitd_err *err);
    void (*free)(void *impl);
    const char *(*attn_dtype)(const void *impl);
    const char *(*last_attn)(const void *impl);   /* path of the batch just finished */
    const char *(*fallback)(const void *impl);
    int (*idle)(void *impl);                       /* deferred work; NULL = none */
    /* after a failed batch: whether the device itself is gone (a sticky CUDA error); NULL = never */
    int (*device_lost)(void *impl, vitd_err *why);
    void (*inject_fault)(void *impl);              /* makes the device fail for real (fault injection) */
} backend_ops;

enum { PATH_NONE = -1, PATH_FP32 = 0, PATH_BF16 = 1, PATH_FP8 = 2, N_PATHS = 3 };
static const char *const path_names[N_PATHS] = {"fp32", "bf16", "fp8"};

/* A batch in flight. A batch in the per-image form is gathered into contiguous buffers for a backend that takes
 * only that form (the CPU reference, whose own work dwarfs the copies), and scattered back after it ran. */
typedef struct {
    vitd_batch flat;     /* the contiguous batch handed to the backend */
    vitd_batch orig;     /* the caller's, for the scatter */
    float *pv, *emb, *ds;
    vitd_status st;      /* a synchronous backend's outcome, for the wait */
    vitd_err err;
} flat_batch;

struct vitd_encoder {
    const backend_ops *ops;
    void *impl;
    const vitd_model *model;
    int n_flight, head;                 /* batches in flight; index of the oldest in flat[] */
    flat_batch flat[VITD_ENCODER_PIPELINE];
    _Atomic uint64_t batches[N_PATHS];  /* written by the running thread, read by any */
    _Atomic int last;                   /* PATH_*, likewise */
    _Atomic bool failed;                /* the device is unusable: set once, after `failure` is written */
    vitd_err failure;
    long fault_after;                   /* VITD_FAULT_INJECT: batches to run before the fault, -1 = none */
    long n_submitted;
};

vitd_encoder_opts vitd_encoder_opts_default(void) {
    vitd_encoder_opts o = {.backend = "auto", .attn_dtype = "auto", .device = 0, .threads = 0,
                           .max_batch_tokens = 16384, .max_batch_images = 0, .fp8_scales = NULL,
                           .fp8_save_scales = NULL, .fp8_save_margin = 1.5, .fp8_history = 16,
                           .fp8_calibrate = 0};
    return o;
}

size_t vitd_grids_patches(const vitd_grid *grids, int n) {
    size_t total = 0;
    for (int i = 0; i < n; i++) total += (size_t)grids[i].t * (size_t)grids[i].h * (size_t)grids[i].w;
    return total;
}

/* ---- cpu backend (synchronous) ---- */

static vitd_status cpu_run(void *impl, const vitd_batch *b, vitd_err *err) {
    return cpu_forward(impl, b, NULL, err);
}
static void cpu_free(void *impl) { cpu_model_free(impl); }
static const char *cpu_attn(const void *impl) {
    (void)impl;
    return "fp32";
}
static const char *cpu_fallback(const void *impl) {
    (void)impl;
    return "";
}
static const backend_ops cpu_backend = {"cpu",    0,        cpu_run,      NULL, NULL, cpu_free,
                                        cpu_attn, cpu_attn, cpu_fallback, NULL, NULL, NULL};

/* ---- gpu backend ---- */
#ifdef VITD_HAVE_CUDA
static vitd_status gpu_submit(void *impl, const vitd_batch *b, vitd_err *err) {
    return gpu_engine_submit(impl, b, err);
}
static vitd_status gpu_wait(void *impl, vitd_err *err) { return gpu_engine_wait(impl, err); }
static void gpu_free(void *impl) { gpu_engine_free(impl); }
static const char *gpu_attn(const void *impl) { return gpu_engine_attn_dtype(impl); }
static const char *gpu_last(const void *impl) { return gpu_engine_last_attn(impl); }
static const char *gpu_fallback(const void *impl) { return gpu_engine_fp8_fallback(impl); }
static int gpu_idle(void *impl) { return gpu_engine_idle(impl); }
static int gpu_lost(void *impl, vitd_err *why) { return gpu_engine_device_lost(impl, why); }
static void gpu_inject(void *impl) { gpu_engine_inject_fault(impl); }
static const backend_ops gpu_backend = {"gpu",    1,        NULL,         gpu_submit, gpu_wait, gpu_free,
                                        gpu_attn, gpu_last, gpu_fallback, gpu_idle,   gpu_lost, gpu_inject};
#endif

static long fault_injection_setting(void);

vitd_status vitd_encoder_create(const vitd_model *m, const vitd_encoder_opts *opts, vitd_encoder **out,
                                vitd_err *err) {
    *out = NULL;
    vitd_encoder_opts o = opts ? *opts : vitd_encoder_opts_default();
    const char *want = o.backend ? o.backend : "auto";
    if (strcmp(want, "cpu") && strcmp(want, "gpu") && strcmp(want, "auto"))
        return vitd_fail(err, VITD_E_INVALID_ARG, "backend '%s' is not one of cpu, gpu, auto", want);

    attn_mode am;
    if (attn_mode_parse(o.attn_dtype, &am) != 0)
        return vitd_fail(err, VITD_E_INVALID_ARG, "attn_dtype '%s' is not one of auto, fp8, bf16", o.attn_dtype);
    if (o.fp8_save_margin < 1.0 || o.fp8_save_margin > 100.0)
        return vitd_fail(err, VITD_E_INVALID_ARG, "fp8_save_margin %g outside [1, 100]", o.fp8_save_margin);
    if (o.fp8_history < 1 || o.fp8_history > 1024)
        return vitd_fail(err, VITD_E_INVALID_ARG, "fp8_history %d outside [1, 1024]", o.fp8_history);
    if (am == ATTN_MODE_FP8 && !strcmp(want, "cpu"))
        return vitd_fail(err, VITD_E_UNSUPPORTED, "attn_dtype fp8 needs the GPU backend (backend is cpu); use "
                         "attn_dtype auto or bf16");
    const char *lin = o.linear_dtype && *o.linear_dtype ? o.linear_dtype : "bf16";
    if (strcmp(lin, "bf16") && strcmp(lin, "fp8") && strcmp(lin, "auto"))
        return vitd_fail(err, VITD_E_INVALID_ARG, "linear_dtype '%s' is not one of bf16, fp8, auto", lin);
    const int lin_fp8 = !strcmp(lin, "fp8");
    if (lin_fp8 && !strcmp(want, "cpu"))
        return vitd_fail(err, VITD_E_UNSUPPORTED, "linear_dtype fp8 needs the GPU backend (backend is cpu); use "
                         "linear_dtype auto or bf16");

    /* a static scales file is configuration: wrong is a start-up error on every backend (naming the layer) */
    if (am != ATTN_MODE_BF16 && o.fp8_scales && *o.fp8_scales) {
        const vitd_vision_config *vc = vitd_model_config(m);
        fp8_qkv *sc = xcalloc((size_t)vc->depth, sizeof *sc);
        vitd_status ls = fp8_scales_load(o.fp8_scales, vc->depth, sc, err);
        free(sc);
        if (ls != VITD_OK) return ls;
    }

    vitd_encoder *e = xcalloc(1, sizeof *e);
    e->model = m;
    atomic_store(&e->last, PATH_NONE);
    e->fault_after = fault_injection_setting();
    vitd_status s;
    if (strcmp(want, "cpu") != 0) {
#ifdef VITD_HAVE_CUDA
        vitd_err gerr = {0};
        s = gpu_engine_create(m, &o, (gpu_engine **)&e->impl, &gerr);
        if (s == VITD_OK) {
            e->ops = &gpu_backend;
            *out = e;
            return VITD_OK;
        }
        if (strcmp(want, "gpu") == 0) {
            free(e);
            return vitd_fail(err, s, "backend gpu: %s", gerr.msg);
        }
        /* asking for FP8 explicitly is an error wherever it cannot run, the CPU included */
        if (am == ATTN_MODE_FP8 || lin_fp8) {
            free(e);
            return vitd_fail(err, s, "backend auto: %s", gerr.msg);
        }
        vitd_log(VITD_LOG_WARN, "backend auto: GPU unusable, using the CPU backend: %s", gerr.msg);
#else
        if (am == ATTN_MODE_FP8 || lin_fp8) {
            free(e);
            return vitd_fail(err, VITD_E_UNSUPPORTED, "%s fp8 needs the GPU backend: this vitd was built "
                             "without CUDA; use auto or bf16", lin_fp8 ? "linear_dtype" : "attn_dtype");
        }
        if (strcmp(want, "gpu") == 0) {
            free(e);
            return vitd_fail(err, VITD_E_GPU, "backend gpu: this vitd was built without CUDA (-DVITD_CUDA=OFF or "
                                              "no nvcc at build time)");
        }
        vitd_log(VITD_LOG_WARN, "backend auto: built without CUDA, using the CPU backend");
#endif
    }
    s = cpu_model_create(m, o.threads, (cpu_model **)&e->impl, err);
    if (s != VITD_OK) {
        free(e);
        return s;
    }
    e->ops = &cpu_backend;
    *out = e;
    return VITD_OK;
}

/* ---- device failure ---- */

/* VITD_FAULT_INJECT=batch:N (builds with VITD_FAULT_INJECTION only): the device fails at the batch after N good
 * ones: for real on the GPU (a kernel writes to an invalid address: a sticky CUDA error), simulated on the CPU.
 * For testing the server's handling of a dead device; production images are built without it. */
static long fault_injection_setting(void) {
#ifdef VITD_FAULT_INJECTION
    const char *v = getenv("VITD_FAULT_INJECT");
    if (!v || strncmp(v, "batch:", 6) != 0) return -1;
    char *end = NULL;
    long n = strtol(v + 6, &end, 10);
    if (end == v + 6 || *end || n < 0) return -1;
    vitd_log(VITD_LOG_WARN, "VITD_FAULT_INJECT: the device will fail after %ld batches (a test build)", n);
    return n;
#else
    return -1;
#endif
}

/* After a failed batch: a sticky device error makes the encoder unusable for good (vitd_encoder_failed). */
static void note_batch_failure(vitd_encoder *e, vitd_status s) {
    if (s != VITD_E_GPU || atomic_load(&e->failed) || !e->ops->device_lost) return;
    vitd_err why = {0};
    if (!e->ops->device_lost(e->impl, &why)) return;
    e->failure = why;
    atomic_store(&e->failed, true);
    vitd_log(VITD_LOG_ERROR, "encoder: the device failed and cannot recover: %s", why.msg);
}

/* Fault injection at submit: returns the simulated failure on a backend without a real one. */
static vitd_status maybe_inject(vitd_encoder *e, vitd_err *err) {
    if (e->fault_after < 0 || e->n_submitted++ != e->fault_after) return VITD_OK;
    if (e->ops->inject_fault) {
        e->ops->inject_fault(e->impl); /* the batch now fails for real */
        return VITD_OK;
    }
    vitd_fail(&e->failure, VITD_E_GPU, "injected device fault (VITD_FAULT_INJECT) after %ld batches",
              e->fault_after);
    atomic_store(&e->failed, true);
    vitd_log(VITD_LOG_ERROR, "encoder: the device failed and cannot recover: %s", e->failure.msg);
    return vitd_fail(err, VITD_E_GPU, "%s", e->failure.msg);
}

int vitd_encoder_failed(const vitd_encoder *e, vitd_err *why) {
    if (!atomic_load(&((vitd_encoder *)e)->failed)) return 0;
    if (why) *why = e->failure;
    return 1;
}

/* Checks the parts every backend needs: images, grids, and the pointers of one of the two forms. */
static vitd_status batch_check(const vitd_batch *b, vitd_err *err) {
    if (!b || b->n_images <= 0 || !b->grids)
        return vitd_fail(err, VITD_E_INVALID_ARG, "encoder: empty batch (no images or no grids)");
    if (b->pixel_values) {
        if (!b->embeddings) return vitd_fail(err, VITD_E_INVALID_ARG, "encoder: batch without embeddings buffer");
        return VITD_OK;
    }
    if (!b->image_pixels || !b->image_embeddings)
        return vitd_fail(err, VITD_E_INVALID_ARG, "encoder: batch has neither pixel_values nor image_pixels and "
                         "image_embeddings");
    for (int i = 0; i < b->n_images; i++)
        if (!b->image_pixels[i] || !b->image_embeddings[i])
            return vitd_fail(err, VITD_E_INVALID_ARG, "encoder: image %d has no pixel or embeddings buffer", i);
    return VITD_OK;
}

/* Gathers a per-image batch into f's contiguous buffers (outputs allocated, deepstack if any image wants it). */
static vitd_status flat_gather(vitd_encoder *e, flat_batch *f, const vitd_batch *b, vitd_err *err) {
    const vitd_vision_config *c = vitd_model_config(e->model);
    const size_t K = (size_t)c->in_channels * c->temporal_patch_size * c->patch_size * c->patch_size;
    const size_t D = (size_t)c->out_hidden_size, g = (size_t)c->spatial_merge_size * c->spatial_merge_size;
    const size_t N = vitd_grids_patches(b->grids, b->n_images), Nm = N / g, nd = (size_t)c->n_deepstack;
    int want_ds = 0;
    for (int i = 0; b->image_deepstack && i < b->n_images; i++) want_ds |= b->image_deepstack[i] != NULL;
    f->orig = *b;
    f->pv = malloc(N * K * sizeof(float));
    f->emb = malloc(Nm * D * sizeof(float));
    f->ds = want_ds && nd ? malloc(nd * Nm * D * sizeof(float)) : NULL;
    if (!f->pv || !f->emb || (want_ds && nd && !f->ds)) {
        free(f->pv);
        free(f->emb);
        free(f->ds);
        *f = (flat_batch){0};
        return vitd_fail(err, VITD_E_NOMEM, "encoder: %zu patches: staging allocation failed", N);
    }
    size_t row = 0;
    for (int i = 0; i < b->n_images; i++) {
        size_t p = vitd_grids_patches(&b->grids[i], 1);
        memcpy(f->pv + row * K, b->image_pixels[i], p * K * sizeof(float));
        row += p;
    }
    f->flat = (vitd_batch){.n_images = b->n_images, .grids = b->grids, .pixel_values = f->pv, .embeddings = f->emb,
                           .deepstack = f->ds};
    return VITD_OK;
}

/* n floats into dst as they are, or rounded to bfloat16 (dst then holds uint16_t). */
static void put_out(float *dst, const float *src, size_t n, int bf16) {
    if (!bf16) {
        memcpy(dst, src, n * sizeof(float));
        return;
    }
    uint16_t *h = (uint16_t *)(void *)dst;
    for (size_t i = 0; i < n; i++) h[i] = f32_to_bf16(src[i]);
}

/* Copies f's outputs into the caller's per-image buffers (float32, or bfloat16 where image_bf16 says) and frees
 * the staging. */
static void flat_scatter(vitd_encoder *e, flat_batch *f, int ok) {
    const vitd_vision_config *c = vitd_model_config(e->model);
    const size_t D = (size_t)c->out_hidden_size, g = (size_t)c->spatial_merge_size * c->spatial_merge_size;
    const vitd_batch *b = &f->orig;
    const size_t Nm = vitd_grids_patches(b->grids, b->n_images) / g;
    size_t tok = 0;
    for (int i = 0; ok && i < b->n_images; i++) {
        size_t n = vitd_grids_patches(&b->grids[i], 1) / g;
        int bf16 = b->image_bf16 && b->image_bf16[i];
        size_t es = bf16 ? 2 : 4;
        put_out(b->image_embeddings[i], f->emb + tok * D, n * D, bf16);
        float *ds = f->ds && b->image_deepstack ? b->image_deepstack[i] : NULL;
        for (int k = 0; ds && k < c->n_deepstack; k++)
            put_out((float *)(void *)((char *)ds + (size_t)k * n * D * es), f->ds + ((size_t)k * Nm + tok) * D,
                    n * D, bf16);
        tok += n;
    }
    free(f->pv);
    free(f->emb);
    free(f->ds);
    *f = (flat_batch){0};
}

vitd_status vitd_encoder_submit(vitd_encoder *e, const vitd_batch *b, vitd_err *err) {
    vitd_status s = batch_check(b, err);
    if (s != VITD_OK) return s;
    if (atomic_load(&e->failed))
        return vitd_fail(err, VITD_E_GPU, "the device failed earlier (%s); the process must restart",
                         e->failure.msg);
    if ((s = maybe_inject(e, err)) != VITD_OK) return s;
    if (e->n_flight == VITD_ENCODER_PIPELINE)
        return vitd_fail(err, VITD_E_BUSY, "encoder: %d batches already in flight; wait for one first",
                         VITD_ENCODER_PIPELINE);
    flat_batch *f = &e->flat[(e->head + e->n_flight) % VITD_ENCODER_PIPELINE];
    const vitd_batch *run = b;
    if (!b->pixel_values && !e->ops->per_image) {
        if ((s = flat_gather(e, f, b, err)) != VITD_OK) return s;
        run = &f->flat;
    }
    if (e->ops->run) {
        f->err = (vitd_err){0};
        f->st = e->ops->run(e->impl, run, &f->err);
        e->n_flight++;
        return VITD_OK;
    }
    s = e->ops->submit(e->impl, run, err);
    if (s != VITD_OK) {
        if (f->pv) flat_scatter(e, f, 0);
        note_batch_failure(e, s);
        return s;
    }
    e->n_flight++;
    return VITD_OK;
}

vitd_status vitd_encoder_wait(vitd_encoder *e, vitd_err *err) {
    if (e->n_flight == 0) return vitd_fail(err, VITD_E_INVALID_ARG, "encoder: no batch in flight");
    flat_batch *f = &e->flat[e->head];
    vitd_status s = f->st;
    if (!e->ops->run) s = e->ops->wait(e->impl, err);
    else if (s != VITD_OK && err) *err = f->err;
    if (s != VITD_OK) note_batch_failure(e, s);
    if (f->pv) flat_scatter(e, f, s == VITD_OK);
    e->head = (e->head + 1) % VITD_ENCODER_PIPELINE;
    e->n_flight--;
    if (s == VITD_OK) {
        const char *p = e->ops->last_attn(e->impl);
        for (int i = 0; i < N_PATHS; i++)
            if (p && !strcmp(p, path_names[i])) {
                atomic_fetch_add(&e->batches[i], 1);
                atomic_store(&e->last, i);
            }
    }
    return s;
}

int vitd_encoder_in_flight(const vitd_encoder *e) { return e->n_flight; }

int vitd_encoder_idle(vitd_encoder *e) {
    if (e->n_flight || !e->ops->idle) return 0;
    return e->ops->idle(e->impl);
}

vitd_status vitd_encoder_run(vitd_encoder *e, const vitd_batch *b, vitd_err *err) {
    if (e->n_flight)
        return vitd_fail(err, VITD_E_BUSY, "encoder: vitd_encoder_run with %d batches in flight", e->n_flight);
    vitd_status s = vitd_encoder_submit(e, b, err);
    if (s != VITD_OK) return s;
    return vitd_encoder_wait(e, err);
}

void vitd_encoder_free(vitd_encoder *e) {
    if (!e) return;
    while (e->n_flight) vitd_encoder_wait(e, NULL);
    if (e->ops) e->ops->free(e->impl);
    free(e);
}

const char *vitd_encoder_backend(const vitd_encoder *e) { return e->ops->name; }
int vitd_encoder_native_bf16(const vitd_encoder *e) { return strcmp(e->ops->name, "gpu") == 0; }
const char *vitd_encoder_attn_dtype(const vitd_encoder *e) { return e->ops->attn_dtype(e->impl); }

const char *vitd_encoder_linear_dtype(const vitd_encoder *e) {
#ifdef VITD_HAVE_CUDA
    if (e->ops == &gpu_backend) return gpu_engine_linear_dtype(e->impl);
#endif
    return e->ops->name && !strcmp(e->ops->name, "cpu") ? "fp32" : "bf16";
}

const char *vitd_encoder_last_attn(const vitd_encoder *e) {
    int i = atomic_load(&((vitd_encoder *)e)->last);
    return i >= 0 && i < N_PATHS ? path_names[i] : "";
}

void vitd_encoder_attn_info(const vitd_encoder *e, vitd_attn_info *out) {
    vitd_encoder *m = (vitd_encoder *)e; /* atomics are read, not changed */
    out->mode = vitd_encoder_attn_dtype(e);
    out->last = vitd_encoder_last_attn(e);
    out->fallback = e->ops->fallback(e->impl);
    out->batches_fp32 = atomic_load(&m->batches[PATH_FP32]);
    out->batches_bf16 = atomic_load(&m->batches[PATH_BF16]);
    out->batches_fp8 = atomic_load(&m->batches[PATH_FP8]);
}

vitd_status vitd_encoder_linear_amax(vitd_encoder *e, float *amax, vitd_err *err) {
#ifdef VITD_HAVE_CUDA
    if (e->ops == &gpu_backend) return gpu_engine_lin8_amax(e->impl, amax, err);
#endif
    (void)amax;
    return vitd_fail(err, VITD_E_UNSUPPORTED, "FP8 calibration needs the GPU backend (backend is %s)", e->ops->name);
}

vitd_status vitd_encoder_fp8_amax(vitd_encoder *e, float *amax, vitd_err *err) {
#ifdef VITD_HAVE_CUDA
    if (e->ops == &gpu_backend) return gpu_engine_fp8_amax(e->impl, amax, err);
#endif
    (void)amax;
    return vitd_fail(err, VITD_E_UNSUPPORTED, "FP8 calibration needs the GPU backend (backend is %s; the CPU "
                     "reference records no amax)", e->ops->name);
}
