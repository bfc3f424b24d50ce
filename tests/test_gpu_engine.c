/* labels: gpu */
/* test_gpu_engine.c — the whole vision tower on the GPU (encoder/gpu/gpu_engine.c, BF16) against the float32 CPU
 * reference (encoder/cpu/cpu_forward.c), on real photographs of several sizes and aspect ratios decoded and
 * preprocessed by vitd (tests/fixtures/images/).
 *
 * Checks, per image and per output (embeddings and every deepstack feature): cosine >= 0.999 against the CPU
 * reference and no NaN/Inf (max abs and max rel reported); the same images encoded in one batch and each alone
 * agree within bf16 noise (cosine >= 0.9995); two batches in flight through submit/wait in the per-image form
 * (check_pipeline); vitd's own small-batch attention forced on and off (attn_short_max) against the reference,
 * plain, captured and replayed runs bit-identical; the public API (vitd_encoder_create with backend "gpu") gives the
 * engine's result; and the clear errors: a batch over max_batch_tokens (VITD_E_TOO_LARGE), a plan larger than the
 * free device memory (VITD_E_NOMEM naming both numbers), a device that does not exist.
 * Models: the "tiny" preset (fast) and the "8b" preset (the real Qwen3-VL-8B tower shapes, random weights,
 * ~1.2 GB bf16), written with demo_model_write into /tmp, or read from $VITD_TEST_MODEL_8B when set (the device
 * script writes it once for the benchmark too). VITD_TEST_SKIP_8B=1 runs the tiny preset only.
 * Every engine here runs attn_dtype bf16 (the FP8 path and auto routing: tests/test_fp8_engine.c).
 * Without CUDA, a device, or compute capability >= 9.0 it exits 77.
 */
#ifndef VITD_HAVE_CUDA
#include <stdio.h>
int main(void) {
    printf("SKIP: vitd was built without CUDA (VITD_CUDA=OFF or no nvcc)\n");
    return 77;
}
#else

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cuda_runtime_api.h>

#include "check.h"
#include "cpu_forward.h"
#include "demo_model.h"
#include "gpu_engine.h"
#include "image.h"
#include "preprocess.h"
#include "util.h"

#include "engine_check.h"
#include "gpu_check.h"

static vitd_status cpu_run(void *impl, const vitd_batch *b, vitd_err *err) { return cpu_forward(impl, b, NULL, err); }
static vitd_status gpu_run(void *impl, const vitd_batch *b, vitd_err *err) { return gpu_engine_run(impl, b, err); }
static vitd_status enc_run(void *impl, const vitd_batch *b, vitd_err *err) { return vitd_encoder_run(impl, b, err); }


/* Pipelined submit/wait in the per-image batch form (vitd.h), two batches in flight: A = every image in order,
 * B = the images in reverse order with image 0's deepstack not wanted. A must equal the contiguous batch `bat`
 * bit for bit (same batch, another form); B each image within bf16 noise of it (another batch composition); the
 * deepstack buffer not wanted stays untouched; a third submit is VITD_E_BUSY; wait with nothing in flight fails. */
static void check_pipeline(gpu_engine *ge, const images *im, const outputs *bat, int D, int nds) {
    vitd_err err = {0};
    const int n = im->n;
    const size_t nm_all = im->off[n] / 4;
    const float *pix[8], *pix_r[8];
    float *emb[2][8], *ds[2][8], *ds_r[8];
    vitd_grid grids_r[8];
    for (int i = 0; i < n; i++) {
        const size_t nt = (im->off[i + 1] - im->off[i]) / 4;
        pix[i] = im->pv + im->off[i] * 1536;
        for (int k = 0; k < 2; k++) {
            emb[k][i] = malloc(nt * D * sizeof(float));
            ds[k][i] = malloc((size_t)(nds ? nds : 1) * nt * D * sizeof(float));
            for (size_t e = 0; e < (size_t)(nds ? nds : 1) * nt * D; e++) ds[k][i][e] = 12345.0f;
        }
    }
    for (int r = 0; r < n; r++) {
        const int i = n - 1 - r;
        grids_r[r] = im->grids[i];
        pix_r[r] = pix[i];
        ds_r[r] = i == 0 ? NULL : ds[1][i];
    }
    float *emb_r[8];
    for (int r = 0; r < n; r++) emb_r[r] = emb[1][n - 1 - r];
    vitd_batch a = {.n_images = n, .grids = im->grids, .image_pixels = pix, .image_embeddings = emb[0],
                    .image_deepstack = nds ? ds[0] : NULL};
    vitd_batch b = {.n_images = n, .grids = grids_r, .image_pixels = pix_r, .image_embeddings = emb_r,
                    .image_deepstack = nds ? ds_r : NULL};
    CHECK_EQ_INT(VITD_E_INVALID_ARG, gpu_engine_wait(ge, &err));
    CHECK_OK(gpu_engine_submit(ge, &a, &err), &err);
    CHECK_OK(gpu_engine_submit(ge, &b, &err), &err);
    CHECK_EQ_INT(2, gpu_engine_in_flight(ge));
    CHECK_EQ_INT(VITD_E_BUSY, gpu_engine_submit(ge, &a, &err));
    CHECK_STR_CONTAINS(err.msg, "in flight");
    CHECK_OK(gpu_engine_wait(ge, &err), &err);
    CHECK_OK(gpu_engine_wait(ge, &err), &err);
    CHECK_EQ_INT(0, gpu_engine_in_flight(ge));
    double worst = 1;
    for (int i = 0; i < n; i++) {
        const size_t nt = (im->off[i + 1] - im->off[i]) / 4, t0 = im->off[i] / 4;
        const float *want = bat->emb + t0 * D;
        CHECK_MSG(!memcmp(emb[0][i], want, nt * D * sizeof(float)), "pipelined per-image A: image %d embeddings "
                  "differ from the contiguous batch", i);
        worst = fmin(worst, cmp_f32(emb[1][i], want, nt * D, 0, 0).cosine);
        for (int j = 0; j < nds; j++) {
            const float *wd = bat->ds + ((size_t)j * nm_all + t0) * D;
            CHECK_MSG(!memcmp(ds[0][i] + (size_t)j * nt * D, wd, nt * D * sizeof(float)),
                      "pipelined per-image A: image %d deepstack %d differs from the contiguous batch", i, j);
            if (i != 0) worst = fmin(worst, cmp_f32(ds[1][i] + (size_t)j * nt * D, wd, nt * D, 0, 0).cosine);
        }
        if (i == 0 && nds) {
            size_t touched = 0;
            for (size_t e = 0; e < (size_t)nds * nt * D; e++) touched += ds[1][0][e] != 12345.0f;
            CHECK_MSG(touched == 0, "deepstack of an image that did not ask for it was written (%zu values)",
                      touched);
        }
    }
    printf("  pipelined per-image: A == contiguous batch; B (reversed, %d in flight) worst cosine %.7f\n", 2, worst);
    CHECK_MSG(worst >= 0.9995, "reversed batch vs batch: worst cosine %.7f", worst);
    /* C: A again with bfloat16 outputs (image_bf16): the engine's own values, which the float32 outputs of the
     * contiguous batch hold widened, so rounding those back gives them bit for bit */
    unsigned char bf[8];
    uint16_t *hemb[8], *hds[8];
    float *pe[8], *pd[8];
    for (int i = 0; i < n; i++) {
        const size_t nt = (im->off[i + 1] - im->off[i]) / 4;
        bf[i] = 1;
        hemb[i] = malloc(nt * D * 2);
        hds[i] = malloc((size_t)(nds ? nds : 1) * nt * D * 2);
        pe[i] = (float *)(void *)hemb[i];
        pd[i] = (float *)(void *)hds[i];
    }
    vitd_batch c = {.n_images = n, .grids = im->grids, .image_pixels = pix, .image_embeddings = pe,
                    .image_deepstack = nds ? pd : NULL, .image_bf16 = bf};
    CHECK_OK(gpu_engine_submit(ge, &c, &err), &err);
    CHECK_OK(gpu_engine_wait(ge, &err), &err);
    size_t bad = 0;
    for (int i = 0; i < n; i++) {
        const size_t nt = (im->off[i + 1] - im->off[i]) / 4, t0 = im->off[i] / 4;
        for (size_t e = 0; e < nt * D; e++) bad += hemb[i][e] != f32_to_bf16(bat->emb[t0 * D + e]);
        for (int j = 0; j < nds; j++)
            for (size_t e = 0; e < nt * D; e++)
                bad += hds[i][(size_t)j * nt * D + e] != f32_to_bf16(bat->ds[((size_t)j * nm_all + t0) * D + e]);
        free(hemb[i]);
        free(hds[i]);
    }
    printf("  bfloat16 outputs (image_bf16): %zu values differ from the float32 outputs' bfloat16\n", bad);
    CHECK_MSG(bad == 0, "bfloat16 outputs differ in %zu values", bad);
    for (int i = 0; i < n; i++)
        for (int k = 0; k < 2; k++) {
            free(emb[k][i]);
            free(ds[k][i]);
        }
}

/* The whole comparison on one model directory. */
static void check_model(const char *dir, const char *label, const char *const *files, int n_files, int gpu_alone) {
    vitd_err err = {0};
    vitd_model *model = NULL;
    cpu_model *cm = NULL;
    gpu_engine *ge = NULL;
    images im;
    printf("%s: %s\n", label, dir);
    CHECK_OK(vitd_model_load(dir, &model, &err), &err);
    if (!model) return;
    const vitd_vision_config *vc = vitd_model_config(model);
    const int D = vc->out_hidden_size, nds = vc->n_deepstack;
    if (load_images(&im, files, n_files, vitd_model_preproc(model))) {
        CHECK(0);
        vitd_model_free(model);
        return;
    }
    const size_t N = im.off[im.n], nm = N / 4;
    printf("  %d images, %zu patches\n", im.n, N);

    outputs ref, bat, alone;
    outputs_alloc(&ref, nm, D, nds);
    outputs_alloc(&bat, nm, D, nds);
    outputs_alloc(&alone, nm, D, nds);

    double t0 = vitd_now();
    CHECK_OK(cpu_model_create(model, 0, &cm, &err), &err);
    if (cm) CHECK_OK(run_subset(cpu_run, cm, &im, 0, im.n, D, nds, &ref, &err), &err);
    double t1 = vitd_now();
    vitd_encoder_opts eo = vitd_encoder_opts_default();
    eo.attn_dtype = "bf16"; /* the BF16 path (FP8: test_fp8_engine.c) */
    eo.max_batch_tokens = N;
    CHECK_OK(gpu_engine_create(model, &eo, &ge, &err), &err);
    double t2 = vitd_now();
    printf("  cpu reference %.1f s, gpu engine create %.1f s\n", t1 - t0, t2 - t1);
    if (ge && cm) {
        CHECK_OK(run_subset(gpu_run, ge, &im, 0, im.n, D, nds, &bat, &err), &err);
        for (int i = 0; i < im.n; i++) CHECK_OK(run_subset(gpu_run, ge, &im, i, 1, D, nds, &alone, &err), &err);
        /* the rows must be informative: not constant, not equal across images */
        double r0 = 0;
        for (size_t k = 0; k < (size_t)D; k++) r0 += fabs(bat.emb[k] - bat.emb[(nm - 1) * D + k]);
        CHECK_MSG(r0 > 1e-3, "first and last merged token identical (%g)", r0);
        double w1 = compare("gpu batch vs cpu", &im, &bat, &ref, D, nds, 0.999);
        double w2 = gpu_alone ? compare("gpu alone vs cpu", &im, &alone, &ref, D, nds, 0.999) : 1;
        double w3 = compare("gpu alone vs gpu batch", &im, &alone, &bat, D, nds, 0.9995);
        printf("  worst cosine: batch vs cpu %.7f, alone vs cpu %.7f, alone vs batch %.7f\n", w1, w2, w3);

        /* Repeat the batch: the engine keeps no state between batches. */
        outputs again;
        outputs_alloc(&again, nm, D, nds);
        CHECK_OK(run_subset(gpu_run, ge, &im, 0, im.n, D, nds, &again, &err), &err);
        CHECK_MSG(!memcmp(again.emb, bat.emb, nm * D * sizeof(float)), "second run of the same batch differs");
        outputs_free(&again);
        check_pipeline(ge, &im, &bat, D, nds);

        /* vitd's own small-batch attention (kernels/attn_rope.cu) forced for the whole batch (attn_short_max = N)
         * and never (< 0): each against the CPU reference and the batch above; three runs of each engine (plain,
         * captured, replayed from the CUDA graph) agree bit for bit */
        for (int own = 1; own >= 0; own--) {
            gpu_engine_free(ge);
            ge = NULL;
            eo.attn_short_max = own ? (int)N : -1;
            CHECK_OK(gpu_engine_create(model, &eo, &ge, &err), &err);
            if (!ge) break;
            outputs o3[3];
            for (int r = 0; r < 3; r++) {
                outputs_alloc(&o3[r], nm, D, nds);
                CHECK_OK(run_subset(gpu_run, ge, &im, 0, im.n, D, nds, &o3[r], &err), &err);
            }
            const char *what = own ? "own attention vs cpu" : "cuDNN attention vs cpu";
            const double wc = compare(what, &im, &o3[2], &ref, D, nds, 0.999);
            const double wb = compare(own ? "own attention vs batch" : "cuDNN attention vs batch", &im, &o3[2], &bat,
                                      D, nds, 0.9995);
            printf("  %s: worst cosine %.7f (vs the batch above %.7f)\n", what, wc, wb);
            for (int r = 1; r < 3; r++)
                CHECK_MSG(!memcmp(o3[0].emb, o3[r].emb, nm * D * sizeof(float)) &&
                              (nds == 0 || !memcmp(o3[0].ds, o3[r].ds, (size_t)nds * nm * D * sizeof(float))),
                          "%s: run %d differs from run 0 (embeddings or deepstack)", what, r);
            for (int r = 0; r < 3; r++) outputs_free(&o3[r]);
        }
        eo.attn_short_max = 0;

        /* Over the batch budget. */
        gpu_engine_free(ge);
        ge = NULL;
        eo.max_batch_tokens = im.off[1]; /* only the first image fits */
        CHECK_OK(gpu_engine_create(model, &eo, &ge, &err), &err);
        if (ge) {
            vitd_batch b = {.n_images = im.n, .grids = im.grids, .pixel_values = im.pv, .embeddings = ref.emb,
                            .deepstack = NULL};
            vitd_status s = gpu_engine_run(ge, &b, &err);
            CHECK_EQ_INT(VITD_E_TOO_LARGE, s);
            CHECK_STR_CONTAINS(err.msg, "max_batch_tokens");
            printf("  over budget: %s\n", err.msg);
        }
    }
    gpu_engine_free(ge);
    cpu_model_free(cm);
    outputs_free(&ref);
    outputs_free(&bat);
    outputs_free(&alone);
    free(im.pv);
    vitd_model_free(model);
}

/* The public API on the tiny model: backend gpu, its names, same result as the engine; and the clear errors. */
static void check_api_and_errors(const char *dir) {
    vitd_err err = {0};
    vitd_model *model = NULL;
    CHECK_OK(vitd_model_load(dir, &model, &err), &err);
    if (!model) return;
    const vitd_vision_config *vc = vitd_model_config(model);
    const int D = vc->out_hidden_size, nds = vc->n_deepstack;
    const char *files[] = {"photo_q90_420.jpg"};
    images im;
    if (load_images(&im, files, 1, vitd_model_preproc(model))) {
        CHECK(0);
        vitd_model_free(model);
        return;
    }
    const size_t nm = im.off[1] / 4;
    vitd_encoder_opts eo = vitd_encoder_opts_default();
    eo.backend = "gpu";
    eo.attn_dtype = "bf16";
    eo.max_batch_tokens = im.off[1];
    vitd_encoder *enc = NULL;
    gpu_engine *ge = NULL;
    CHECK_OK(vitd_encoder_create(model, &eo, &enc, &err), &err);
    CHECK_OK(gpu_engine_create(model, &eo, &ge, &err), &err);
    if (enc && ge) {
        CHECK(!strcmp(vitd_encoder_backend(enc), "gpu"));
        CHECK(!strcmp(vitd_encoder_attn_dtype(enc), "bf16"));
        outputs a, b;
        outputs_alloc(&a, nm, D, nds);
        outputs_alloc(&b, nm, D, nds);
        CHECK_OK(run_subset(enc_run, enc, &im, 0, 1, D, nds, &a, &err), &err);
        CHECK_OK(run_subset(gpu_run, ge, &im, 0, 1, D, nds, &b, &err), &err);
        CHECK_MSG(!memcmp(a.emb, b.emb, nm * D * sizeof(float)) &&
                      !memcmp(a.ds, b.ds, (size_t)nds * nm * D * sizeof(float)),
                  "vitd_encoder_run (backend gpu) differs from gpu_engine_run");
        outputs_free(&a);
        outputs_free(&b);
        /* no deepstack requested: embeddings only, identical */
        float *emb = malloc(nm * D * sizeof(float));
        vitd_batch bb = {.n_images = 1, .grids = im.grids, .pixel_values = im.pv, .embeddings = emb,
                         .deepstack = NULL};
        outputs c;
        outputs_alloc(&c, nm, D, nds);
        CHECK_OK(run_subset(gpu_run, ge, &im, 0, 1, D, nds, &c, &err), &err);
        CHECK_OK(gpu_engine_run(ge, &bb, &err), &err);
        CHECK_MSG(!memcmp(emb, c.emb, nm * D * sizeof(float)), "embeddings differ without deepstack outputs");
        /* a grid that is not a multiple of the merge size */
        vitd_grid bad = {1, 3, 4};
        vitd_batch b2 = {.n_images = 1, .grids = &bad, .pixel_values = im.pv, .embeddings = emb};
        CHECK_EQ_INT(VITD_E_INVALID_ARG, gpu_engine_run(ge, &b2, &err));
        CHECK_STR_CONTAINS(err.msg, "image 0");
        outputs_free(&c);
        free(emb);
    }
    vitd_encoder_free(enc);
    gpu_engine_free(ge);

    /* a plan beyond the device's free memory: the largest max_batch_tokens, with all but 4 GiB of the device taken
     * first (an H200's 141 GB would hold the plan itself) */
    eo.max_batch_tokens = (size_t)1 << 24;
    ge = NULL;
    size_t mem_free = 0, mem_total = 0;
    void *hog = NULL;
    CUDA_CHECK(cudaMemGetInfo(&mem_free, &mem_total));
    if (mem_free > ((size_t)8 << 30)) CUDA_CHECK(cudaMalloc(&hog, mem_free - ((size_t)4 << 30)));
    vitd_status s = gpu_engine_create(model, &eo, &ge, &err);
    CHECK_EQ_INT(VITD_E_NOMEM, s);
    CHECK_STR_CONTAINS(err.msg, "free");
    printf("  too little memory: %s\n", err.msg);
    gpu_engine_free(ge);
    if (hog) CUDA_CHECK(cudaFree(hog));
    /* a device that does not exist */
    eo.max_batch_tokens = 4096;
    eo.device = 99;
    s = gpu_engine_create(model, &eo, &ge, &err);
    CHECK_EQ_INT(VITD_E_INVALID_ARG, s);
    printf("  no such device: %s\n", err.msg);
    free(im.pv);
    vitd_model_free(model);
}

int main(void) {
    struct cudaDeviceProp prop;
    gpu_require_sm90(&prop);
    vitd_log_set(log_hook, NULL);
    printf("device: %s\n", prop.name);
    char tmpdir[] = "/tmp/vitd_test_gpu_engine_XXXXXX";
    if (!mkdtemp(tmpdir)) SKIP("mkdtemp failed");

    const char *const photos[] = {"chelsea.png", "rocket.jpg", "photo_q90_420.jpg", "rgb8_4x600.png",
                                  "photo_gray.jpg"};
    char tiny_buf[256];
    const char *tiny = write_demo(tmpdir, "tiny", tiny_buf, sizeof tiny_buf);
    CHECK(tiny != NULL);
    if (tiny) {
        check_model(tiny, "tiny", photos, 5, 1);
        check_api_and_errors(tiny);
    }

    const char *skip8 = getenv("VITD_TEST_SKIP_8B");
    if (!skip8 || strcmp(skip8, "1")) {
        const char *dir8 = getenv("VITD_TEST_MODEL_8B");
        char buf8[256];
        if (!dir8 || !*dir8) dir8 = write_demo(tmpdir, "8b", buf8, sizeof buf8);
        CHECK(dir8 != NULL);
        /* 504, 1040, 280 and 392 patches: 3:2, 3:2 (downscaled grid), 7:10 upscaled, 1:98 */
        if (dir8) check_model(dir8, "8b", photos, 4, 1);
    }
    if (check_rm_tree(tmpdir) != 0) printf("(could not remove %s)\n", tmpdir);
    return check_done("test_gpu_engine");
}
#endif
