/* labels: unit */
/* test_cli.c — the offline subcommands as a user runs them (the real `vitd` program in a child process):
 * demo-model, preprocess and encode. Their safetensors outputs are read back and compared with the library called
 * directly: preprocess equals preprocess_run bit for bit; encode equals cpu_forward; a batch equals --one-by-one;
 * --format json carries the same numbers; concat layout, bf16 output and --no-deepstack have the right shapes; bad
 * arguments and bad files fail with a message and a non-zero exit code. */
#include <cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "cpu_forward.h"
#include "image.h"
#include "preprocess.h"
#include "safetensors.h"
#include "util.h"
#include "vitd.h"

#define IMG VITD_SOURCE_DIR "/tests/fixtures/images/"

static char tmpdir[] = "/tmp/vitd_test_cli_XXXXXX";

static float *to_f32(const st_tensor *t) {
    float *out = xmalloc((size_t)st_numel(t) * sizeof(float));
    vitd_err err = {0};
    if (st_to_f32(t, out, &err) != VITD_OK) {
        fprintf(stderr, "st_to_f32: %s\n", err.msg);
        free(out);
        return NULL;
    }
    return out;
}

int main(void) {
    VITD_ASSERT(mkdtemp(tmpdir));
    char args[4096], path[600], model[600], errtext[2048];
    const char *images[3] = {IMG "chelsea.png", IMG "rocket.jpg", IMG "rgb8_4x600.png"};
    vitd_err err = {0};

    /* demo-model */
    snprintf(model, sizeof model, "%s/tiny", tmpdir);
    snprintf(args, sizeof args, "demo-model --preset tiny --seed 7 --out %s", model);
    CHECK_EQ_INT(0, check_run_vitd(tmpdir, args, NULL, errtext, sizeof errtext));
    snprintf(args, sizeof args, "demo-model --preset nosuch --out %s/x", tmpdir);
    CHECK(check_run_vitd(tmpdir, args, NULL, errtext, sizeof errtext) != 0);
    CHECK_STR_CONTAINS(errtext, "tiny");  /* the message lists the presets */

    vitd_model *m = NULL;
    CHECK_OK(vitd_model_load(model, &m, &err), &err);
    if (!m) return check_done("test_cli");
    const vitd_vision_config *vc = vitd_model_config(m);
    const vitd_preproc_config *pc = vitd_model_preproc(m);

    /* preprocess: bit-identical to the library */
    snprintf(path, sizeof path, "%s/pre.safetensors", tmpdir);
    snprintf(args, sizeof args, "preprocess %s %s %s --model %s --out %s", images[0], images[1], images[2], model,
             path);
    CHECK_EQ_INT(0, check_run_vitd(tmpdir, args, NULL, errtext, sizeof errtext));
    st_file *pre = NULL;
    CHECK_OK(st_open(path, &pre, &err), &err);
    vitd_grid grids[3];
    float *pv[3] = {0};
    size_t total_patches = 0;
    for (int i = 0; i < 3 && pre; i++) {
        uint8_t *data;
        size_t len;
        vitd_image img = {0};
        CHECK_OK(image_read_file(images[i], &data, &len, &err), &err);
        CHECK_OK(image_decode(data, len, 0, &img, &err), &err);
        CHECK_OK(preprocess_plan(img.height, img.width, pc, &grids[i], &err), &err);
        size_t n = (size_t)grids[i].t * grids[i].h * grids[i].w;
        total_patches += n;
        pv[i] = xmalloc(n * 1536 * sizeof(float));
        CHECK_OK(preprocess_run(&img, pc, &grids[i], pv[i], &err), &err);
        char name[64];
        snprintf(name, sizeof name, "image.%d.pixel_values", i);
        const st_tensor *t = st_find(pre, name);
        CHECK_MSG(t && t->dtype == ST_F32 && t->ndim == 2 && t->shape[0] == (int64_t)n && t->shape[1] == 1536,
                  "%s shape", name);
        if (t && st_numel(t) == (int64_t)(n * 1536))
            CHECK_MSG(memcmp(t->data, pv[i], n * 1536 * sizeof(float)) == 0, "%s differs from the library", name);
        snprintf(name, sizeof name, "image.%d.grid_thw", i);
        t = st_find(pre, name);
        CHECK_MSG(t && t->dtype == ST_I64 && st_numel(t) == 3, "%s", name);
        if (t && st_numel(t) == 3) {
            const int64_t *g = t->data;
            CHECK(g[0] == grids[i].t && g[1] == grids[i].h && g[2] == grids[i].w);
        }
        image_release(&img);
        free(data);
    }
    st_close(pre);

    /* encode (batch) vs cpu_forward on the same pixels */
    const int D = vc->out_hidden_size, nds = vc->n_deepstack;
    size_t tokens = total_patches / 4;
    float *all_pv = xmalloc(total_patches * 1536 * sizeof(float));
    size_t off = 0;
    for (int i = 0; i < 3; i++) {
        size_t n = (size_t)grids[i].t * grids[i].h * grids[i].w;
        memcpy(all_pv + off * 1536, pv[i], n * 1536 * sizeof(float));
        off += n;
    }
    float *emb = xmalloc(tokens * D * sizeof(float)), *ds = xmalloc((size_t)nds * tokens * D * sizeof(float));
    cpu_model *cm = NULL;
    CHECK_OK(cpu_model_create(m, 0, &cm, &err), &err);
    vitd_batch b = {.n_images = 3, .grids = grids, .pixel_values = all_pv, .embeddings = emb, .deepstack = ds};
    CHECK_OK(cpu_forward(cm, &b, NULL, &err), &err);

    char batch_path[600], alone_path[600];
    snprintf(batch_path, sizeof batch_path, "%s/enc.safetensors", tmpdir);
    snprintf(args, sizeof args, "encode --model %s --backend cpu %s %s %s --out %s", model, images[0], images[1],
             images[2], batch_path);
    CHECK_EQ_INT(0, check_run_vitd(tmpdir, args, NULL, errtext, sizeof errtext));
    snprintf(alone_path, sizeof alone_path, "%s/alone.safetensors", tmpdir);
    snprintf(args, sizeof args, "encode --model %s --backend cpu --one-by-one %s %s %s --out %s", model, images[0],
             images[1], images[2], alone_path);
    CHECK_EQ_INT(0, check_run_vitd(tmpdir, args, NULL, errtext, sizeof errtext));
    st_file *enc = NULL, *alone = NULL;
    CHECK_OK(st_open(batch_path, &enc, &err), &err);
    CHECK_OK(st_open(alone_path, &alone, &err), &err);
    size_t tok_off = 0;
    for (int i = 0; i < 3 && enc && alone; i++) {
        size_t nt = (size_t)grids[i].t * grids[i].h * grids[i].w / 4;
        char name[64], what[96];
        snprintf(name, sizeof name, "image.%d.embeddings", i);
        const st_tensor *t = st_find(enc, name), *ta = st_find(alone, name);
        CHECK_MSG(t && t->ndim == 2 && t->shape[0] == (int64_t)nt && t->shape[1] == D, "%s shape", name);
        if (t && st_numel(t) == (int64_t)(nt * D)) {
            snprintf(what, sizeof what, "encode image %d vs library", i);
            cmp_stats s = cmp_f32(t->data, emb + tok_off * D, nt * D, 0, 0);
            cmp_print(what, s);
            CHECK_MSG(s.max_abs == 0, "%s: the CLI's batch differs from cpu_forward", what);
        }
        if (t && ta && st_numel(ta) == st_numel(t)) {
            cmp_stats s = cmp_f32(ta->data, t->data, nt * D, 0, 0);
            snprintf(what, sizeof what, "one-by-one image %d vs batch", i);
            cmp_print(what, s);
            CHECK_MSG(s.max_rel <= 1e-5, "%s", what);
        }
        for (int j = 0; j < nds; j++) {
            snprintf(name, sizeof name, "image.%d.deepstack.%d", i, vc->deepstack_indexes[j]);
            t = st_find(enc, name);
            CHECK_MSG(t && st_numel(t) == (int64_t)(nt * D), "%s", name);
            if (t && st_numel(t) == (int64_t)(nt * D))
                CHECK_MSG(memcmp(t->data, ds + ((size_t)j * tokens + tok_off) * D, nt * D * 4) == 0, "%s values",
                          name);
        }
        snprintf(name, sizeof name, "image.%d.grid_thw", i);
        CHECK_MSG(st_find(enc, name) != NULL, "%s", name);
        tok_off += nt;
    }

    /* --format json: same numbers as the safetensors answer (float32 printed round-trip exactly). */
    snprintf(path, sizeof path, "%s/enc.json", tmpdir);
    snprintf(args, sizeof args, "encode --model %s --backend cpu %s --format json", model, images[0]);
    CHECK_EQ_INT(0, check_run_vitd(tmpdir, args, path, errtext, sizeof errtext));
    size_t jlen = 0;
    char *js = (char *)check_read_file(path, &jlen);
    cJSON *root = js ? cJSON_ParseWithLength(js, jlen) : NULL;
    CHECK_MSG(root != NULL, "encode --format json output parses");
    cJSON *data0 = cJSON_GetArrayItem(cJSON_GetObjectItem(root, "data"), 0);
    cJSON *rows = cJSON_GetObjectItem(data0, "embedding");
    /* against image 0 encoded alone (--one-by-one): the same computation. A batch may differ in the last bits on
     * the CPU: OpenBLAS picks its SGEMM kernel by matrix size on some CPUs (e.g. small-matrix kernels with
     * AVX-512), so a row's sums can depend on how many rows the batch has. */
    const st_tensor *e0 = alone ? st_find(alone, "image.0.embeddings") : NULL;
    CHECK(cJSON_IsArray(rows) && e0 && cJSON_GetArraySize(rows) == e0->shape[0]);
    if (cJSON_IsArray(rows) && e0 && cJSON_GetArraySize(rows) == e0->shape[0]) {
        size_t mismatch = 0;
        const float *ev = e0->data;
        for (int r = 0; r < cJSON_GetArraySize(rows); r++) {
            cJSON *row = cJSON_GetArrayItem(rows, r);
            for (int c = 0; c < D; c++)
                if ((float)cJSON_GetArrayItem(row, c)->valuedouble != ev[(size_t)r * D + c]) mismatch++;
        }
        CHECK_EQ_INT(0, mismatch);
    }
    cJSON *ds_list = cJSON_GetObjectItem(data0, "deepstack");
    CHECK(cJSON_GetArraySize(ds_list) == nds);
    cJSON_Delete(root);
    free(js);

    /* concat layout, bf16 output, no deepstack */
    snprintf(path, sizeof path, "%s/concat.safetensors", tmpdir);
    snprintf(args, sizeof args, "encode --model %s --backend cpu %s --layout concat --dtype bfloat16 --out %s", model,
             images[0], path);
    CHECK_EQ_INT(0, check_run_vitd(tmpdir, args, NULL, errtext, sizeof errtext));
    st_file *cc = NULL;
    CHECK_OK(st_open(path, &cc, &err), &err);
    const st_tensor *ct = cc ? st_find(cc, "image.0.embeddings") : NULL;
    CHECK_MSG(ct && ct->dtype == ST_BF16 && ct->ndim == 2 && ct->shape[1] == (int64_t)D * (1 + nds),
              "concat tensor is [tokens, D*(1+deepstack)] bf16");
    if (ct && e0 && ct->shape[0] == e0->shape[0] && ct->shape[1] == (int64_t)D * (1 + nds)) {
        float *cf = to_f32(ct);
        const float *ev = e0->data;
        double worst = 0;
        for (int64_t r = 0; r < ct->shape[0] && cf; r++)
            for (int c = 0; c < D; c++) {
                double want = bf16_to_f32(f32_to_bf16(ev[r * D + c]));
                worst = fmax(worst, fabs(cf[r * ct->shape[1] + c] - want));
            }
        CHECK_MSG(worst == 0, "concat's first D columns are the bf16-rounded embeddings (worst %g)", worst);
        free(cf);
    }
    st_close(cc);
    snprintf(path, sizeof path, "%s/nods.safetensors", tmpdir);
    snprintf(args, sizeof args, "encode --model %s --backend cpu %s --no-deepstack --out %s", model, images[0], path);
    CHECK_EQ_INT(0, check_run_vitd(tmpdir, args, NULL, errtext, sizeof errtext));
    st_file *nd = NULL;
    CHECK_OK(st_open(path, &nd, &err), &err);
    CHECK(nd && st_find(nd, "image.0.embeddings") && !st_find(nd, "image.0.deepstack.1"));
    st_close(nd);
    st_close(enc);
    st_close(alone);

    /* Failures: a message and a non-zero exit, never a crash. */
    snprintf(args, sizeof args, "encode --model %s %s --out %s/x.st", model, IMG "truncated.png", tmpdir);
    CHECK_EQ_INT(1, check_run_vitd(tmpdir, args, NULL, errtext, sizeof errtext));
    CHECK_STR_CONTAINS(errtext, "truncated.png");
    snprintf(args, sizeof args, "encode --model %s/missing %s --out %s/x.st", tmpdir, images[0], tmpdir);
    CHECK_EQ_INT(1, check_run_vitd(tmpdir, args, NULL, errtext, sizeof errtext));
    CHECK_STR_CONTAINS(errtext, "missing");
    CHECK_EQ_INT(2, check_run_vitd(tmpdir, "encode --bogus", NULL, errtext, sizeof errtext));
    CHECK_STR_CONTAINS(errtext, "--bogus");
    CHECK_EQ_INT(2, check_run_vitd(tmpdir, "nosuchcommand", NULL, errtext, sizeof errtext));
    CHECK_EQ_INT(2, check_run_vitd(tmpdir, "preprocess --out", NULL, errtext, sizeof errtext));

    for (int i = 0; i < 3; i++) free(pv[i]);
    free(all_pv);
    free(emb);
    free(ds);
    cpu_model_free(cm);
    vitd_model_free(m);
    if (check_rm_tree(tmpdir) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
    return check_done("test_cli");
}
