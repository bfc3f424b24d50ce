/* bench_fp8_linear.c — what FP8 E4M3 linear layers cost in accuracy (issue 14), measured on the CPU twin before
 * any GPU kernel exists: the float32 reference encoder against the same encoder whose block GEMMs (QKV, projection,
 * fc1, fc2) multiply E4M3 values (cpu_model_set_fp8_linear: inputs with one scale per tensor from their own amax,
 * weights with one scale per tensor or per output channel; float32 accumulation, as cuBLASLt's FP8 GEMMs do).
 *
 * Random weights have no outlier channels; trained vision transformers have a few channels far larger than the
 * rest. --outliers F plants them without changing the float32 function (outlier_get): in every block 4 channels
 * of the QKV and fc1 inputs become F times larger and the weight columns that read them F times smaller. The
 * reference gets the same model, so only the quantisation differs; its distance from the unplanted model is
 * printed too (float32 rounding only). Each F is its own set of models (1 = none).
 *
 * Output, one line per image, model, GEMM set and weight scaling:
 *   fp8_linear outliers=F gemms=all|qkv+fc1|... weights=per-tensor|per-channel image=NAME tokens=T
 *              emb_cos=... emb_rel=... ds_cos_min=... ds_rel_max=...   (cosine and ||fp8 - ref|| / ||ref|| over the image's tensors)
 * then a summary per (F, weights) with the lowest cosine.
 *
 * Usage: bench_fp8_linear --model DIR [--max-pixels N (200704 = 448x448)] [--outliers F]...
 *                         [--gemms qkv,proj,fc1,fc2|all]... [--weights tensor|channel|both] [--per-token]
 *                         [--margin M] [IMAGE...]
 *        (default images: rocket.jpg, chelsea.png, photo_q90_420.jpg from tests/fixtures/images; default F: 1 and
 *        1000; default GEMMs: all four; default weights: both; inputs per tensor, margin 1). Each --gemms set is
 *        its own model. --per-token: one input scale per token (row); --margin: input scales times M.
 * Exit 0 when everything ran; the accuracy gate itself is the README's and the issue's, not this program's. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "checkpoint.h"
#include "cpu_forward.h"
#include "image.h"
#include "preprocess.h"
#include "util.h"
#include "vitd.h"

#define MAX_IMAGES 8
#define MAX_F 4
#define MAX_SETS 8
#define N_OUTLIER_CH 4

typedef struct {
    const vitd_model *m;
    float factor;
    int d;
} outlier_src;

/* The checkpoint's tensor with the outlier channels planted, leaving the float32 function as it was: channel c of
 * LayerNorm norm1's and norm2's output (weight and bias) times F, column c of the weights that read it (attn.qkv,
 * mlp.linear_fc1) divided by F. The GEMM inputs then carry 4 channels F times larger than the rest (trained ViTs'
 * outliers), and their weights 4 columns F times smaller, the two sides a per-tensor scale must cover. */
static vitd_status outlier_get(void *ctx, const char *name, float *out, size_t numel, vitd_err *err) {
    const outlier_src *o = ctx;
    vitd_status st = checkpoint_tensor_f32(o->m, name, out, err);
    if (st != VITD_OK || o->factor == 1.0f || strncmp(name, "blocks.", 7) != 0) return st;
    const int ln = strstr(name, ".norm1.") || strstr(name, ".norm2.");
    const int reader = strstr(name, ".attn.qkv.weight") || strstr(name, ".mlp.linear_fc1.weight");
    const size_t d = (size_t)o->d;
    for (int k = 0; k < N_OUTLIER_CH; k++) {
        const size_t c = d / N_OUTLIER_CH * (size_t)k + 7; /* spread over the width, off the heads' starts */
        if (ln && c < numel) out[c] *= o->factor;
        for (size_t r = 0; reader && r < numel / d; r++) out[r * d + c] /= o->factor;
    }
    return st;
}

/* "qkv,fc2" -> CPU_FP8_QKV | CPU_FP8_FC2; "all"; 0 for anything else */
static unsigned parse_gemms(const char *s) {
    static const struct { const char *name; unsigned bit; } k[] = {
        {"qkv", CPU_FP8_QKV}, {"proj", CPU_FP8_PROJ}, {"fc1", CPU_FP8_FC1}, {"fc2", CPU_FP8_FC2}, {"all", CPU_FP8_ALL}};
    unsigned m = 0;
    char buf[64];
    snprintf(buf, sizeof buf, "%s", s);
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        unsigned bit = 0;
        for (size_t i = 0; i < sizeof k / sizeof k[0]; i++)
            if (!strcmp(t, k[i].name)) bit = k[i].bit;
        if (!bit) return 0;
        m |= bit;
    }
    return m;
}

static const char *gemms_name(unsigned m, char *buf, size_t n) {
    if (m == CPU_FP8_ALL) return "all";
    snprintf(buf, n, "%s%s%s%s", m & CPU_FP8_QKV ? "qkv+" : "", m & CPU_FP8_PROJ ? "proj+" : "",
             m & CPU_FP8_FC1 ? "fc1+" : "", m & CPU_FP8_FC2 ? "fc2+" : "");
    size_t len = strlen(buf);
    if (len) buf[len - 1] = 0;
    return buf;
}

typedef struct {
    const char *name;
    vitd_grid grid;
    float *pv;
    size_t tokens;
    float *emb_ref, *ds_ref; /* the float32 model's outputs */
} image_case;

static vitd_status run(const cpu_model *cm, image_case *im, int nds, float *emb, float *ds, vitd_err *err) {
    vitd_batch b = {.n_images = 1, .grids = &im->grid, .pixel_values = im->pv, .embeddings = emb,
                    .deepstack = nds ? ds : NULL};
    return cpu_forward(cm, &b, NULL, err);
}

int main(int argc, char **argv) {
    const char *model_dir = NULL, *paths[MAX_IMAGES];
    size_t max_pixels = 448 * 448;
    float factors[MAX_F];
    unsigned sets[MAX_SETS];
    int n_img = 0, n_f = 0, n_sets = 0, w_first = 0, w_last = 1, per_token = 0;
    float margin = 1.0f;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--model") && i + 1 < argc) model_dir = argv[++i];
        else if (!strcmp(argv[i], "--max-pixels") && i + 1 < argc) max_pixels = strtoull(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--outliers") && i + 1 < argc && n_f < MAX_F) factors[n_f++] = strtof(argv[++i], 0);
        else if (!strcmp(argv[i], "--gemms") && i + 1 < argc && n_sets < MAX_SETS && parse_gemms(argv[i + 1]))
            sets[n_sets++] = parse_gemms(argv[++i]);
        else if (!strcmp(argv[i], "--weights") && i + 1 < argc && strchr("tcb", argv[i + 1][0])) {
            w_first = argv[i + 1][0] == 'c';
            w_last = argv[++i][0] != 't';
        } else if (!strcmp(argv[i], "--per-token")) per_token = 1;
        else if (!strcmp(argv[i], "--margin") && i + 1 < argc) margin = strtof(argv[++i], NULL);
        else if (argv[i][0] != '-' && n_img < MAX_IMAGES) paths[n_img++] = argv[i];
        else {
            fprintf(stderr, "usage: bench_fp8_linear --model DIR [--max-pixels N] [--outliers F]... "
                            "[--gemms qkv,proj,fc1,fc2|all]... [--weights tensor|channel|both] [--per-token] "
                            "[--margin M] [IMAGE...]\n");
            return 2;
        }
    }
    if (!model_dir) {
        fprintf(stderr, "bench_fp8_linear: --model DIR is required (vitd demo-model --preset 8b --out DIR)\n");
        return 2;
    }
    static char defaults[3][600];
    if (!n_img) {
        const char *names[3] = {"rocket.jpg", "chelsea.png", "photo_q90_420.jpg"};
        for (int i = 0; i < 3; i++) {
            snprintf(defaults[i], sizeof defaults[i], "%s/tests/fixtures/images/%s", VITD_SOURCE_DIR, names[i]);
            paths[n_img++] = defaults[i];
        }
    }
    if (!n_f) {
        factors[n_f++] = 1.0f;
        factors[n_f++] = 1000.0f;
    }
    if (!n_sets) sets[n_sets++] = CPU_FP8_ALL;
    vitd_err err = {0};
    vitd_model *m = NULL;
    if (vitd_model_load(model_dir, &m, &err) != VITD_OK) {
        fprintf(stderr, "bench_fp8_linear: %s\n", err.msg);
        return 1;
    }
    const vitd_vision_config *vc = vitd_model_config(m);
    vitd_preproc_config pc = *vitd_model_preproc(m);
    if (max_pixels) pc.max_pixels = max_pixels;
    if (pc.min_pixels > pc.max_pixels) pc.min_pixels = pc.max_pixels;
    const int D = vc->out_hidden_size, nds = vc->n_deepstack;
    image_case im[MAX_IMAGES];
    size_t max_tok = 0;
    for (int i = 0; i < n_img; i++) {
        uint8_t *data = NULL;
        size_t len = 0;
        vitd_image img = {0};
        im[i].name = strrchr(paths[i], '/') ? strrchr(paths[i], '/') + 1 : paths[i];
        if (image_read_file(paths[i], &data, &len, &err) != VITD_OK ||
            image_decode(data, len, 0, &img, &err) != VITD_OK ||
            preprocess_plan(img.height, img.width, &pc, &im[i].grid, &err) != VITD_OK) {
            fprintf(stderr, "bench_fp8_linear: %s: %s\n", paths[i], err.msg);
            return 1;
        }
        size_t n = (size_t)im[i].grid.t * im[i].grid.h * im[i].grid.w;
        im[i].pv = xmalloc(n * 1536 * sizeof(float));
        if (preprocess_run(&img, &pc, &im[i].grid, im[i].pv, &err) != VITD_OK) {
            fprintf(stderr, "bench_fp8_linear: %s: %s\n", paths[i], err.msg);
            return 1;
        }
        im[i].tokens = n / 4;
        if (im[i].tokens > max_tok) max_tok = im[i].tokens;
        im[i].emb_ref = xmalloc(im[i].tokens * D * sizeof(float));
        im[i].ds_ref = xmalloc((size_t)(nds ? nds : 1) * im[i].tokens * D * sizeof(float));
        image_release(&img);
        free(data);
    }
    printf("# bench_fp8_linear model=%s depth=%d hidden=%d intermediate=%d images=%d max_pixels=%zu\n", model_dir,
           vc->depth, vc->hidden_size, vc->intermediate_size, n_img, pc.max_pixels);
    float *emb = xmalloc(max_tok * D * sizeof(float));
    float *ds = xmalloc((size_t)(nds ? nds : 1) * max_tok * D * sizeof(float));
    for (int f = 0; f < n_f; f++) {
        outlier_src src = {m, factors[f], vc->hidden_size};
        cpu_model *ref = NULL;
        if (cpu_model_create_from(vc, outlier_get, &src, 0, &ref, &err) != VITD_OK) {
            fprintf(stderr, "bench_fp8_linear: %s\n", err.msg);
            return 1;
        }
        for (int i = 0; i < n_img; i++)
            if (run(ref, &im[i], nds, im[i].emb_ref, im[i].ds_ref, &err) != VITD_OK) {
                fprintf(stderr, "bench_fp8_linear: %s\n", err.msg);
                return 1;
            }
        cpu_model_free(ref);
        if (factors[f] != 1.0f) { /* the planted float32 model computes what the plain one does */
            outlier_src plain = {m, 1.0f, vc->hidden_size};
            cpu_model *p = NULL;
            if (cpu_model_create_from(vc, outlier_get, &plain, 0, &p, &err) != VITD_OK ||
                run(p, &im[0], nds, emb, ds, &err) != VITD_OK) {
                fprintf(stderr, "bench_fp8_linear: %s\n", err.msg);
                return 1;
            }
            cmp_stats e = cmp_f32(emb, im[0].emb_ref, im[0].tokens * (size_t)D, 0, 0);
            printf("planted outliers=%g float32 vs plain float32: image=%s emb_cos=%.8f emb_rel=%.2e\n", factors[f],
                   im[0].name, e.cosine, e.rel_l2);
            cpu_model_free(p);
        }
        for (int si = 0; si < n_sets; si++)
            for (int per_channel = w_first; per_channel <= w_last; per_channel++) {
                cpu_model *q = NULL;
                if (cpu_model_create_from(vc, outlier_get, &src, 0, &q, &err) != VITD_OK) {
                    fprintf(stderr, "bench_fp8_linear: %s\n", err.msg);
                    return 1;
                }
                cpu_fp8_linear_opts fo = {sets[si], per_channel, per_token, margin};
                cpu_model_set_fp8_linear(q, &fo);
                const char *wname = per_channel ? "per-channel" : "per-tensor";
                char gbuf[32];
                const char *gname = gemms_name(sets[si], gbuf, sizeof gbuf);
                double worst = 1.0;
                for (int i = 0; i < n_img; i++) {
                    double t0 = vitd_now();
                    if (run(q, &im[i], nds, emb, ds, &err) != VITD_OK) {
                        fprintf(stderr, "bench_fp8_linear: %s\n", err.msg);
                        return 1;
                    }
                    const size_t n = im[i].tokens * (size_t)D;
                    cmp_stats e = cmp_f32(emb, im[i].emb_ref, n, 0, 0);
                    double ds_cos = 1.0, ds_rel = 0.0;
                    for (int j = 0; j < nds; j++) {
                        cmp_stats dj = cmp_f32(ds + (size_t)j * n, im[i].ds_ref + (size_t)j * n, n, 0, 0);
                        if (dj.cosine < ds_cos) ds_cos = dj.cosine;
                        if (dj.rel_l2 > ds_rel) ds_rel = dj.rel_l2;
                    }
                    if (e.cosine < worst) worst = e.cosine;
                    if (ds_cos < worst) worst = ds_cos;
                    printf("fp8_linear outliers=%g gemms=%s weights=%s inputs=%s margin=%g image=%s tokens=%zu "
                           "emb_cos=%.6f emb_rel=%.4f ds_cos_min=%.6f ds_rel_max=%.4f (%.1f s)\n",
                           factors[f], gname, wname, per_token ? "per-token" : "per-tensor", margin, im[i].name,
                           im[i].tokens, e.cosine, e.rel_l2, ds_cos, ds_rel, vitd_now() - t0);
                    fflush(stdout);
                }
                printf("summary outliers=%g gemms=%s weights=%s inputs=%s margin=%g lowest_cos=%.6f\n", factors[f],
                       gname, wname, per_token ? "per-token" : "per-tensor", margin, worst);
                cpu_model_free(q);
            }
    }
    free(emb);
    free(ds);
    for (int i = 0; i < n_img; i++) {
        free(im[i].pv);
        free(im[i].emb_ref);
        free(im[i].ds_ref);
    }
    vitd_model_free(m);
    return 0;
}
