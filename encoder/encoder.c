/* encoder.c — the encoder object of vitd.h: picks a backend (cpu | gpu | auto) and dispatches every batch through
 * one backend table, so the server never knows which backend runs.
 *
 * Backends: "cpu" is the float32 reference (cpu_forward.c). "gpu" is the CUDA engine (gpu_engine.c), present only
 * in builds with VITD_HAVE_CUDA. "auto" takes the GPU when one is usable and says why not otherwise. */
#include <stdlib.h>
#include <string.h>

#include "cpu_forward.h"
#include "util.h"
#include "vitd.h"
#ifdef VITD_HAVE_CUDA
#include "gpu_engine.h"
#endif

typedef struct {
    const char *name;
    vitd_status (*run)(void *impl, const vitd_batch *b, vitd_err *err);
    void (*free)(void *impl);
    const char *(*attn_dtype)(const void *impl);
} backend_ops;

struct vitd_encoder {
    const backend_ops *ops;
    void *impl;
    const vitd_model *model;
};

vitd_encoder_opts vitd_encoder_opts_default(void) {
    vitd_encoder_opts o = {.backend = "auto", .attn_dtype = "auto", .device = 0, .threads = 0,
                           .max_batch_tokens = 16384, .max_batch_images = 0};
    return o;
}

size_t vitd_grids_patches(const vitd_grid *grids, int n) {
    size_t total = 0;
    for (int i = 0; i < n; i++) total += (size_t)grids[i].t * (size_t)grids[i].h * (size_t)grids[i].w;
    return total;
}

/* ---- cpu backend ---- */

static vitd_status cpu_run(void *impl, const vitd_batch *b, vitd_err *err) {
    return cpu_forward(impl, b, NULL, err);
}
static void cpu_free(void *impl) { cpu_model_free(impl); }
static const char *cpu_attn(const void *impl) {
    (void)impl;
    return "fp32";
}
static const backend_ops cpu_backend = {"cpu", cpu_run, cpu_free, cpu_attn};

/* ---- gpu backend ---- */
#ifdef VITD_HAVE_CUDA
static vitd_status gpu_run(void *impl, const vitd_batch *b, vitd_err *err) { return gpu_engine_run(impl, b, err); }
static void gpu_free(void *impl) { gpu_engine_free(impl); }
static const char *gpu_attn(const void *impl) { return gpu_engine_attn_dtype(impl); }
static const backend_ops gpu_backend = {"gpu", gpu_run, gpu_free, gpu_attn};
#endif

vitd_status vitd_encoder_create(const vitd_model *m, const vitd_encoder_opts *opts, vitd_encoder **out,
                                vitd_err *err) {
    *out = NULL;
    vitd_encoder_opts o = opts ? *opts : vitd_encoder_opts_default();
    const char *want = o.backend ? o.backend : "auto";
    if (strcmp(want, "cpu") && strcmp(want, "gpu") && strcmp(want, "auto"))
        return vitd_fail(err, VITD_E_INVALID_ARG, "backend '%s' is not one of cpu, gpu, auto", want);

    vitd_encoder *e = xcalloc(1, sizeof *e);
    e->model = m;
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
        vitd_log(VITD_LOG_WARN, "backend auto: GPU unusable, using the CPU backend: %s", gerr.msg);
#else
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

vitd_status vitd_encoder_run(vitd_encoder *e, const vitd_batch *b, vitd_err *err) {
    if (!b || b->n_images <= 0 || !b->grids || !b->pixel_values || !b->embeddings)
        return vitd_fail(err, VITD_E_INVALID_ARG, "encoder: empty or incomplete batch");
    return e->ops->run(e->impl, b, err);
}

void vitd_encoder_free(vitd_encoder *e) {
    if (!e) return;
    if (e->ops) e->ops->free(e->impl);
    free(e);
}

const char *vitd_encoder_backend(const vitd_encoder *e) { return e->ops->name; }
const char *vitd_encoder_attn_dtype(const vitd_encoder *e) { return e->ops->attn_dtype(e->impl); }
