/* labels: unit hf */
/* test_hf.c — vitd against Hugging Face transformers, from fixtures made by tests/fixtures/gen_fixtures.py on the
 * GPU machine (transformers 5.x, torch, Pillow; see the script's header to regenerate them).
 *
 * 1. Preprocessing: for every test image and two processor settings, our decode + preprocess gives the same
 *    grid_thw and bit-identical pixel_values (a 64-bit hash of every float) as transformers' default image
 *    processor; for the images whose values the fixture stores, also max abs difference and the share equal
 *    within 1e-6 (the bar: within two 8-bit levels everywhere and >= 99% equal).
 * 2. Forward: the float32 CPU reference on the tiny demo checkpoint (re-created here from its deterministic seed and
 *    checked against the fixture's hash) vs Qwen3VLVisionModel in float32, fed HF's own pixel_values: per image
 *    cosine >= 0.99999 and max relative error <= 1e-4 for the merged embeddings, every deepstack feature and
 *    last_hidden_state; the same for all images in one batch; batched == alone. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "checkpoint.h"
#include "cpu_forward.h"
#include "demo_model.h"
#include "image.h"
#include "preprocess.h"
#include "safetensors.h"
#include "util.h"
#include "vitd.h"

#define FIX VITD_SOURCE_DIR "/tests/fixtures"

static uint64_t fnv1a64_file(const char *path) {
    size_t n = 0;
    unsigned char *b = check_read_file(path, &n);
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; b && i < n; i++) h = (h ^ b[i]) * 0x100000001b3ULL;
    free(b);
    return h;
}

/* Rebuilds HF's float pixel_values [N, 1536] from the stored uint8 levels of the t=0 half. */
static float *levels_to_pixels(const st_tensor *lv, size_t *n_rows) {
    size_t n = (size_t)lv->shape[0];
    const uint8_t *u = lv->data;
    float *pv = xmalloc(n * 1536 * sizeof(float));
    for (size_t r = 0; r < n; r++)
        for (int c = 0; c < 3; c++)
            for (int t = 0; t < 2; t++)
                for (int k = 0; k < 256; k++)
                    pv[r * 1536 + (c * 2 + t) * 256 + k] = ((float)u[r * 768 + c * 256 + k] - 127.5f) / 127.5f;
    *n_rows = n;
    return pv;
}

/* Splits a comma-separated metadata list in place. */
static int split_list(char *s, char **out, int max) {
    int n = 0;
    for (char *tok = strtok(s, ","); tok && n < max; tok = strtok(NULL, ",")) out[n++] = tok;
    return n;
}

/* The fixture's order-sensitive hash of float32 values (gen_fixtures.py pv_hash): sum over i of
 * (bits_i ^ (i * 0x9E3779B1 mod 2^32)) * (2i + 1) mod 2^64. */
static uint64_t pv_hash(const float *v, size_t n) {
    uint64_t h = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t bits;
        memcpy(&bits, &v[i], 4);
        uint64_t mix = (uint64_t)bits ^ (((uint64_t)i * 0x9E3779B1ULL) & 0xFFFFFFFFULL);
        h += mix * (2 * (uint64_t)i + 1);
    }
    return h;
}

/* Every image, both settings: same grid and the same float32 pixel_values as HF (hash); where the fixture holds the
 * values themselves, the statistics the issue asks for (max abs, share equal within 1e-6). */
static void check_preprocess(const st_file *pre, char **names, int n_names, const vitd_preproc_config *base) {
    const char *tags[2] = {"default", "small"};
    int n_full = 0;
    for (int v = 0; v < 2; v++) {
        vitd_preproc_config pc = *base;
        if (v == 1) pc.max_pixels = 131072;
        int n_same = 0;
        for (int i = 0; i < n_names; i++) {
            char key[512], path[512];
            snprintf(key, sizeof key, "%s.%s.grid_thw", tags[v], names[i]);
            const st_tensor *gt = st_find(pre, key);
            snprintf(key, sizeof key, "%s.%s.values_hash", tags[v], names[i]);
            const st_tensor *hs = st_find(pre, key);
            snprintf(key, sizeof key, "%s.%s.levels", tags[v], names[i]);
            const st_tensor *lv = st_find(pre, key);
            CHECK_MSG(gt && hs, "fixture entries for %s/%s", tags[v], names[i]);
            if (!gt || !hs) continue;
            const int64_t *g = gt->data;
            uint64_t want_hash;
            memcpy(&want_hash, hs->data, 8);
            snprintf(path, sizeof path, FIX "/images/%s", names[i]);
            vitd_err err = {0};
            uint8_t *data = NULL;
            size_t len = 0;
            vitd_image img = {0};
            vitd_grid grid = {0};
            CHECK_OK(image_read_file(path, &data, &len, &err), &err);
            CHECK_OK(image_decode(data, len, 0, &img, &err), &err);
            CHECK_OK(preprocess_plan(img.height, img.width, &pc, &grid, &err), &err);
            CHECK_MSG(grid.t == g[0] && grid.h == g[1] && grid.w == g[2],
                      "%s %s: grid [%d,%d,%d] vs HF [%lld,%lld,%lld]", tags[v], names[i], grid.t, grid.h, grid.w,
                      (long long)g[0], (long long)g[1], (long long)g[2]);
            size_t n_ours = (size_t)grid.t * grid.h * grid.w;
            if (grid.t != g[0] || grid.h != g[1] || grid.w != g[2] || !img.rgb) goto next;
            float *ours = xmalloc(n_ours * 1536 * sizeof(float));
            CHECK_OK(preprocess_run(&img, &pc, &grid, ours, &err), &err);
            uint64_t got_hash = pv_hash(ours, n_ours * 1536);
            CHECK_MSG(got_hash == want_hash, "%s %s: pixel_values differ from HF's (hash %016llx vs %016llx)",
                      tags[v], names[i], (unsigned long long)got_hash, (unsigned long long)want_hash);
            if (got_hash == want_hash) n_same++;
            if (lv) {
                size_t n_hf = 0;
                float *hf = levels_to_pixels(lv, &n_hf);
                CHECK_EQ_INT(n_ours, n_hf);
                if (n_hf == n_ours) {
                    size_t equal = 0, total = n_ours * 1536;
                    double max_abs = 0;
                    for (size_t k = 0; k < total; k++) {
                        double d = fabs((double)ours[k] - hf[k]);
                        if (d <= 1e-6) equal++;
                        if (d > max_abs) max_abs = d;
                    }
                    printf("  preprocess %-7s %-24s grid [1,%d,%d] max_abs %.3g equal %.4f%%\n", tags[v], names[i],
                           grid.h, grid.w, max_abs, 100.0 * (double)equal / (double)total);
                    CHECK_MSG(max_abs <= 4.0 / 255.0 + 1e-6, "%s %s: max abs %g over two levels", tags[v],
                              names[i], max_abs);
                    CHECK_MSG((double)equal >= 0.99 * (double)total, "%s %s: only %zu of %zu equal", tags[v],
                              names[i], equal, total);
                    n_full++;
                }
                free(hf);
            }
            free(ours);
        next:
            image_release(&img);
            free(data);
        }
        printf("  preprocess %-7s: %d of %d images bit-identical to HF\n", tags[v], n_same, n_names);
    }
    CHECK(n_full >= 8);
}

static void compare(const char *what, const float *got, const st_tensor *ref, size_t numel) {
    CHECK_MSG(ref != NULL, "missing fixture tensor for %s", what);
    if (!ref) return;
    CHECK_EQ_INT((long long)numel, (long long)st_numel(ref));
    if ((size_t)st_numel(ref) != numel) return;
    cmp_stats s = cmp_f32(got, ref->data, numel, 1e-5, 1e-4);
    cmp_print(what, s);
    CHECK_MSG(s.cosine >= 0.99999, "%s: cosine %.9f < 0.99999", what, s.cosine);
    CHECK_MSG(s.max_rel <= 1e-4, "%s: max relative error %.3e > 1e-4", what, s.max_rel);
    CHECK_EQ_INT(0, s.n_nan);
}

int main(void) {
    vitd_err err = {0};
    st_file *pre = NULL, *fwd = NULL;
    if (st_open(FIX "/hf/preprocess.safetensors", &pre, &err) != VITD_OK ||
        st_open(FIX "/hf/forward.safetensors", &fwd, &err) != VITD_OK) {
        fprintf(stderr, "HF fixtures missing or unreadable: %s (regenerate with tests/fixtures/gen_fixtures.py)\n",
                err.msg);
        return 1;
    }
    printf("fixtures from transformers %s, torch %s, Pillow %s, processor %s\n", st_metadata(pre, "transformers"),
           st_metadata(pre, "torch"), st_metadata(pre, "pillow"), st_metadata(pre, "processor"));

    /* The demo model the fixtures were made with: tiny, seed 0, re-created here. */
    char dir[] = "/tmp/vitd_test_hf_XXXXXX";
    VITD_ASSERT(mkdtemp(dir));
    demo_model_opts o = demo_model_opts_default();
    o.preset = "tiny";
    o.seed = 0;
    o.out_dir = dir;
    CHECK_OK(demo_model_write(&o, &err), &err);
    char path[600];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    char hash[32];
    snprintf(hash, sizeof hash, "%016llx", (unsigned long long)fnv1a64_file(path));
    const char *want = st_metadata(fwd, "model_fnv1a64");
    CHECK_MSG(want && !strcmp(want, hash), "demo model hash %s != fixture's %s: the tiny preset changed, regenerate "
              "the fixtures", hash, want ? want : "(none)");

    vitd_model *model = NULL;
    CHECK_OK(vitd_model_load(dir, &model, &err), &err);
    if (!model) return check_done("test_hf");

    char *names_buf = xstrdup(st_metadata(pre, "images") ? st_metadata(pre, "images") : "");
    char *names[256];
    int n_names = split_list(names_buf, names, 256);
    CHECK(n_names >= 8);
    check_preprocess(pre, names, n_names, vitd_model_preproc(model));

    const vitd_vision_config *vc = vitd_model_config(model);
    cpu_model *cm = NULL;
    CHECK_OK(cpu_model_create(model, 0, &cm, &err), &err);
    char *fw_buf = xstrdup(st_metadata(fwd, "forward_images") ? st_metadata(fwd, "forward_images") : "");
    char *fw[256];
    int n_fw = split_list(fw_buf, fw, 256);
    CHECK(n_fw >= 4);
    const int D = vc->out_hidden_size, d = vc->hidden_size, nds = vc->n_deepstack;

    /* Alone: each image with HF's own pixel_values. Keep the results for the batch comparison. */
    float *pv_all = NULL, *alone_emb = NULL, *alone_ds = NULL;
    vitd_grid grids[256];
    size_t rows_total = 0;
    size_t *rows = xcalloc((size_t)n_fw, sizeof *rows);
    for (int i = 0; i < n_fw; i++) {
        char key[512];
        snprintf(key, sizeof key, "default.%s.levels", fw[i]);
        const st_tensor *lv = st_find(pre, key);
        snprintf(key, sizeof key, "default.%s.grid_thw", fw[i]);
        const st_tensor *gt = st_find(pre, key);
        VITD_ASSERT(lv && gt);
        const int64_t *g = gt->data;
        grids[i] = (vitd_grid){(int)g[0], (int)g[1], (int)g[2]};
        size_t n = 0;
        float *pv = levels_to_pixels(lv, &n);
        rows[i] = n;
        pv_all = realloc(pv_all, (rows_total + n) * 1536 * sizeof(float));
        memcpy(pv_all + rows_total * 1536, pv, n * 1536 * sizeof(float));
        rows_total += n;

        size_t tok = n / 4;
        float *emb = xmalloc(tok * D * sizeof(float)), *ds = xmalloc((nds ? nds : 1) * tok * D * sizeof(float));
        float *last = xmalloc(n * d * sizeof(float));
        vitd_batch b = {.n_images = 1, .grids = &grids[i], .pixel_values = pv, .embeddings = emb, .deepstack = ds};
        double t0 = vitd_now();
        CHECK_OK(cpu_forward(cm, &b, last, &err), &err);
        printf("forward %s: grid [1,%d,%d] %.1f ms\n", fw[i], grids[i].h, grids[i].w, 1e3 * (vitd_now() - t0));
        char what[600];
        snprintf(key, sizeof key, "%s.pooler", fw[i]);
        snprintf(what, sizeof what, "%s embeddings", fw[i]);
        compare(what, emb, st_find(fwd, key), tok * D);
        for (int j = 0; j < nds; j++) {
            snprintf(key, sizeof key, "%s.deepstack.%d", fw[i], j);
            snprintf(what, sizeof what, "%s deepstack %d", fw[i], j);
            compare(what, ds + (size_t)j * tok * D, st_find(fwd, key), tok * D);
        }
        snprintf(key, sizeof key, "%s.last_hidden", fw[i]);
        if (st_find(fwd, key)) {
            snprintf(what, sizeof what, "%s last_hidden", fw[i]);
            compare(what, last, st_find(fwd, key), n * d);
        }
        /* Keep alone results in batch layout: embeddings concatenated, deepstack [j][all tokens][D] later. */
        size_t prev_tok = (rows_total - n) / 4;
        alone_emb = realloc(alone_emb, (prev_tok + tok) * D * sizeof(float));
        memcpy(alone_emb + prev_tok * D, emb, tok * D * sizeof(float));
        alone_ds = realloc(alone_ds, (size_t)(nds ? nds : 1) * (prev_tok + tok) * D * sizeof(float));
        for (int j = 0; j < nds; j++)  /* stash per image: [image][j][tok][D] */
            memcpy(alone_ds + (prev_tok * nds + (size_t)j * tok) * D, ds + (size_t)j * tok * D,
                   tok * D * sizeof(float));
        free(pv);
        free(emb);
        free(ds);
        free(last);
    }

    /* All images in one batch: vs HF's batch and vs our alone results. */
    size_t tok_all = rows_total / 4;
    float *emb = xmalloc(tok_all * D * sizeof(float)), *ds = xmalloc((nds ? nds : 1) * tok_all * D * sizeof(float));
    vitd_batch b = {.n_images = n_fw, .grids = grids, .pixel_values = pv_all, .embeddings = emb, .deepstack = ds};
    CHECK_OK(cpu_forward(cm, &b, NULL, &err), &err);
    compare("batch embeddings", emb, st_find(fwd, "batch.pooler"), tok_all * D);
    for (int j = 0; j < nds; j++) {
        char key[64], what[64];
        snprintf(key, sizeof key, "batch.deepstack.%d", j);
        snprintf(what, sizeof what, "batch deepstack %d", j);
        compare(what, ds + (size_t)j * tok_all * D, st_find(fwd, key), tok_all * D);
    }
    cmp_stats s = cmp_f32(emb, alone_emb, tok_all * D, 0, 0);
    cmp_print("batched vs alone embeddings", s);
    CHECK_MSG(s.max_rel <= 1e-6, "batched differs from alone: max rel %.3e", s.max_rel);
    size_t off = 0;
    double worst = 0;
    for (int i = 0; i < n_fw; i++) {
        size_t tok = rows[i] / 4;
        for (int j = 0; j < nds; j++) {
            cmp_stats sj = cmp_f32(ds + ((size_t)j * tok_all + off) * D, alone_ds + (off * nds + (size_t)j * tok) * D,
                                   tok * D, 0, 0);
            if (sj.max_rel > worst) worst = sj.max_rel;
        }
        off += tok;
    }
    printf("  batched vs alone deepstack: worst max_rel %.3e\n", worst);
    CHECK_MSG(worst <= 1e-6, "batched deepstack differs from alone: %.3e", worst);

    free(emb);
    free(ds);
    free(pv_all);
    free(alone_emb);
    free(alone_ds);
    free(rows);
    free(names_buf);
    free(fw_buf);
    cpu_model_free(cm);
    vitd_model_free(model);
    st_close(pre);
    st_close(fwd);
    if (check_rm_tree(dir) != 0) fprintf(stderr, "could not remove %s\n", dir);
    return check_done("test_hf");
}
