/* cli.c — the offline subcommands: `vitd demo-model` writes a random checkpoint, `vitd preprocess` runs the image
 * processor, `vitd encode` runs the encoder on image files, `vitd calibrate` measures static FP8 attention scales.
 * Outputs are safetensors (the binary format everywhere in vitd) with the same tensor names as the HTTP service's
 * safetensors answers (reply.c renders both), and for calibrate a scales JSON (fp8_scales.h). */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"
#include "demo_model.h"
#include "fp8_scales.h"
#include "image.h"
#include "prep_pool.h"
#include "preprocess.h"
#include "reply.h"
#include "safetensors.h"
#include "util.h"
#include "vitd.h"

/* ---- argument helpers ---- */

/* Returns the value of `--name VALUE` or `--name=VALUE` at argv[*i] (advancing *i), or NULL if argv[*i] is not
 * that flag. Exits the command with a usage error when the value is missing. */
static const char *flag_value(int argc, char **argv, int *i, const char *name, int *usage_error) {
    size_t n = strlen(name);
    const char *a = argv[*i];
    if (strncmp(a, name, n) != 0) return NULL;
    if (a[n] == '=') return a + n + 1;
    if (a[n] != '\0') return NULL;
    if (*i + 1 >= argc) {
        fprintf(stderr, "vitd: %s needs a value\n", name);
        *usage_error = 1;
        return NULL;
    }
    return argv[++*i];
}

static int parse_long(const char *s, const char *flag, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || end == s || v < lo || v > hi) {
        fprintf(stderr, "vitd: %s must be an integer in [%ld, %ld], got '%s'\n", flag, lo, hi, s);
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_double(const char *s, const char *flag, double lo, double hi, double *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || *end || end == s || !(v >= lo && v <= hi)) {
        fprintf(stderr, "vitd: %s must be a number in [%g, %g], got '%s'\n", flag, lo, hi, s);
        return -1;
    }
    *out = v;
    return 0;
}

/* The encoder flags shared by encode and calibrate: --backend, --attn-dtype, --linear-dtype, --linear-fp8-gemms,
 * --no-cuda-graphs, --no-gemm-tune, --attn-short-max, --linear-precise-accum, --device, --fp8-*. Returns 1 if
 * argv[*i] was one of them (value stored), 0 if not, -1 on a usage error (printed). */
static int encoder_flag(int argc, char **argv, int *i, vitd_encoder_opts *eo, int *bad) {
    const char *v;
    long n;
    if ((v = flag_value(argc, argv, i, "--backend", bad))) eo->backend = v;
    else if ((v = flag_value(argc, argv, i, "--attn-dtype", bad))) {
        if (strcmp(v, "auto") && strcmp(v, "fp8") && strcmp(v, "bf16")) {
            fprintf(stderr, "vitd: --attn-dtype must be auto, fp8 or bf16, got '%s'\n", v);
            return -1;
        }
        eo->attn_dtype = v;
    } else if ((v = flag_value(argc, argv, i, "--linear-dtype", bad))) {
        if (strcmp(v, "auto") && strcmp(v, "fp8") && strcmp(v, "bf16")) {
            fprintf(stderr, "vitd: --linear-dtype must be bf16, fp8 or auto, got '%s'\n", v);
            return -1;
        }
        eo->linear_dtype = v;
    } else if ((v = flag_value(argc, argv, i, "--linear-fp8-gemms", bad))) {
        eo->linear_fp8_gemms = v;
    } else if (!strcmp(argv[*i], "--no-cuda-graphs")) {
        eo->no_cuda_graphs = 1;
    } else if (!strcmp(argv[*i], "--no-gemm-tune")) {
        eo->no_gemm_tune = 1;
    } else if ((v = flag_value(argc, argv, i, "--attn-short-max", bad))) {
        if (parse_long(v, "--attn-short-max", -1, 65536, &n)) return -1;
        eo->attn_short_max = n < 0 ? 0 : n ? (int)n : -1; /* -1 measured, 0 never (the config's meanings) */
    } else if (!strcmp(argv[*i], "--linear-precise-accum")) {
        eo->fp8_precise_accum = 1;
    } else if ((v = flag_value(argc, argv, i, "--device", bad))) {
        if (parse_long(v, "--device", 0, 1023, &n)) return -1;
        eo->device = (int)n;
    } else if ((v = flag_value(argc, argv, i, "--fp8-scales", bad))) eo->fp8_scales = v;
    else if ((v = flag_value(argc, argv, i, "--fp8-save-scales", bad))) eo->fp8_save_scales = v;
    else if ((v = flag_value(argc, argv, i, "--attn-route-file", bad))) eo->attn_route_file = v;
    else if ((v = flag_value(argc, argv, i, "--fp8-save-margin", bad))) {
        if (parse_double(v, "--fp8-save-margin", 1, 100, &eo->fp8_save_margin)) return -1;
    } else if ((v = flag_value(argc, argv, i, "--fp8-history", bad))) {
        if (parse_long(v, "--fp8-history", 1, 1024, &n)) return -1;
        eo->fp8_history = (int)n;
    } else return *bad ? -1 : 0;
    return *bad ? -1 : 1;
}

static int parse_dtype(const char *s, st_dtype *out) {
    if (!strcmp(s, "float32") || !strcmp(s, "f32") || !strcmp(s, "fp32")) *out = ST_F32;
    else if (!strcmp(s, "bfloat16") || !strcmp(s, "bf16")) *out = ST_BF16;
    else if (!strcmp(s, "float16") || !strcmp(s, "f16") || !strcmp(s, "fp16")) *out = ST_F16;
    else {
        fprintf(stderr, "vitd: dtype must be float32, bfloat16 or float16, got '%s'\n", s);
        return -1;
    }
    return 0;
}

/* ---- demo-model ---- */

static void demo_usage(FILE *f) {
    fprintf(f, "usage: vitd demo-model --out DIR [--preset tiny|2b|4b|8b|32b] [--seed N] [--dtype bf16|f16|f32]\n"
               "                       [--shards N] [--prefix model.visual.|visual.] [--outliers F]\n"
               "Writes a deterministic random Qwen3-VL checkpoint (config.json, preprocessor_config.json,\n"
               "safetensors) in the real Hugging Face layout. Default preset: tiny. --outliers F plants 4 channels\n"
               "F times larger in every block's QKV and fc1 inputs without changing the function (FP8 tests).\n");
}

int cli_demo_model(int argc, char **argv) {
    demo_model_opts o = demo_model_opts_default();
    int bad = 0;
    for (int i = 0; i < argc; i++) {
        const char *v;
        long n;
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            demo_usage(stdout);
            return 0;
        } else if ((v = flag_value(argc, argv, &i, "--preset", &bad))) {
            o.preset = v;
        } else if ((v = flag_value(argc, argv, &i, "--out", &bad))) {
            o.out_dir = v;
        } else if ((v = flag_value(argc, argv, &i, "--seed", &bad))) {
            char *end;
            errno = 0;
            unsigned long long s = strtoull(v, &end, 10);
            if (errno || *end || end == v) {
                fprintf(stderr, "vitd: --seed must be a non-negative integer, got '%s'\n", v);
                return 2;
            }
            o.seed = s;
        } else if ((v = flag_value(argc, argv, &i, "--dtype", &bad))) {
            if (parse_dtype(v, &o.dtype)) return 2;
        } else if ((v = flag_value(argc, argv, &i, "--shards", &bad))) {
            if (parse_long(v, "--shards", 1, 64, &n)) return 2;
            o.shards = (int)n;
        } else if ((v = flag_value(argc, argv, &i, "--prefix", &bad))) {
            o.prefix = v;
        } else if ((v = flag_value(argc, argv, &i, "--outliers", &bad))) {
            double f;
            if (parse_double(v, "--outliers", 1, 1e6, &f)) return 2;
            o.outliers = (float)f;
        } else {
            if (!bad) fprintf(stderr, "vitd demo-model: unknown argument '%s'\n", argv[i]);
            demo_usage(stderr);
            return 2;
        }
        if (bad) return 2;
    }
    if (!o.out_dir) {
        demo_usage(stderr);
        return 2;
    }
    vitd_err err = {0};
    double t0 = vitd_now();
    if (demo_model_write(&o, &err) != VITD_OK) {
        fprintf(stderr, "vitd demo-model: %s\n", err.msg);
        return 1;
    }
    fprintf(stderr, "vitd demo-model: wrote preset %s (seed %llu) to %s in %.2f s\n", o.preset,
            (unsigned long long)o.seed, o.out_dir, vitd_now() - t0);
    return 0;
}

/* ---- shared by preprocess and encode ---- */

typedef struct {
    int n;
    vitd_grid *grids;
    float *pixel_values; /* all images concatenated */
    size_t n_patches;
} prepped;

static void prepped_release(prepped *p) {
    free(p->grids);
    free(p->pixel_values);
    memset(p, 0, sizeof *p);
}

/* Reads every file, plans its grid from the header (image_probe + preprocess_plan), then decodes and preprocesses
 * it with prep_image(), the same step the server's prep pool runs. On failure prints which file and why. */
static int prep_files(int n, char **paths, const vitd_preproc_config *pc, size_t max_image_pixels, prepped *out) {
    memset(out, 0, sizeof *out);
    out->n = n;
    out->grids = xcalloc((size_t)n, sizeof *out->grids);
    size_t row = preprocess_row_width(pc);
    uint8_t **data = xcalloc((size_t)n, sizeof *data);
    size_t *len = xcalloc((size_t)n, sizeof *len);
    int rc = 1, i = 0;
    vitd_err err = {0};
    for (; i < n; i++) {
        image_format fmt;
        uint32_t w, h;
        if (image_read_file(paths[i], &data[i], &len[i], &err) != VITD_OK ||
            image_probe(data[i], len[i], &fmt, &w, &h, &err) != VITD_OK ||
            preprocess_plan(h, w, pc, &out->grids[i], &err) != VITD_OK)
            goto fail;
        out->n_patches += (size_t)out->grids[i].t * out->grids[i].h * out->grids[i].w;
    }
    out->pixel_values = malloc(out->n_patches * row * sizeof(float));
    if (!out->pixel_values) {
        fprintf(stderr, "vitd: out of memory for %zu patches\n", out->n_patches);
        goto done;
    }
    size_t off = 0;
    for (i = 0; i < n; i++) {
        if (prep_image(data[i], len[i], max_image_pixels, pc, &out->grids[i], out->pixel_values + off * row, NULL,
                       &err) != VITD_OK)
            goto fail;
        off += (size_t)out->grids[i].t * out->grids[i].h * out->grids[i].w;
    }
    rc = 0;
    goto done;
fail:
    fprintf(stderr, "vitd: image %d (%s): %s\n", i, paths[i], err.msg);
done:
    for (int k = 0; k < n; k++) free(data[k]);
    free(data);
    free(len);
    if (rc) prepped_release(out);
    return rc;
}

/* ---- preprocess ---- */

static void prep_usage(FILE *f) {
    fprintf(f, "usage: vitd preprocess IMAGE... --out FILE.safetensors [--model DIR] [--min-pixels N]\n"
               "                       [--max-pixels N]\n"
               "Runs the Qwen3-VL image processor (transformers' default torchvision backend, bit-exact) and writes\n"
               "image.<i>.pixel_values [patches, 1536] float32 and image.<i>.grid_thw [3] int64 per image.\n"
               "--model takes the processor settings from DIR/preprocessor_config.json.\n");
}

int cli_preprocess(int argc, char **argv) {
    const char *out_path = NULL, *model_dir = NULL;
    long min_px = -1, max_px = -1;
    char **files = xcalloc((size_t)argc + 1, sizeof *files);
    int n_files = 0, bad = 0, rc = 2;
    for (int i = 0; i < argc; i++) {
        const char *v;
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            prep_usage(stdout);
            rc = 0;
            goto done;
        } else if ((v = flag_value(argc, argv, &i, "--out", &bad))) {
            out_path = v;
        } else if ((v = flag_value(argc, argv, &i, "--model", &bad))) {
            model_dir = v;
        } else if ((v = flag_value(argc, argv, &i, "--min-pixels", &bad))) {
            if (parse_long(v, "--min-pixels", 1, 1L << 40, &min_px)) goto done;
        } else if ((v = flag_value(argc, argv, &i, "--max-pixels", &bad))) {
            if (parse_long(v, "--max-pixels", 1, 1L << 40, &max_px)) goto done;
        } else if (argv[i][0] == '-' && argv[i][1] == '-') {
            if (!bad) fprintf(stderr, "vitd preprocess: unknown flag '%s'\n", argv[i]);
            goto done;
        } else {
            files[n_files++] = argv[i];
        }
        if (bad) goto done;
    }
    if (!out_path || n_files == 0) {
        prep_usage(stderr);
        goto done;
    }
    vitd_preproc_config pc = vitd_preproc_config_default();
    vitd_err err = {0};
    vitd_model *model = NULL;
    if (model_dir) {
        if (vitd_model_load(model_dir, &model, &err) != VITD_OK) {
            fprintf(stderr, "vitd preprocess: %s\n", err.msg);
            rc = 1;
            goto done;
        }
        pc = *vitd_model_preproc(model);
        vitd_model_free(model);
    }
    if (min_px > 0) pc.min_pixels = (size_t)min_px;
    if (max_px > 0) pc.max_pixels = (size_t)max_px;
    prepped p;
    rc = 1;
    if (prep_files(n_files, files, &pc, 0, &p)) goto done;
    st_writer *w = st_writer_create();
    size_t row = preprocess_row_width(&pc), off = 0;
    for (int i = 0; i < p.n; i++) {
        char name[64];
        size_t np = (size_t)p.grids[i].t * p.grids[i].h * p.grids[i].w;
        int64_t shape[2] = {(int64_t)np, (int64_t)row};
        int64_t g[3] = {p.grids[i].t, p.grids[i].h, p.grids[i].w}, gshape[1] = {3};
        snprintf(name, sizeof name, "image.%d.pixel_values", i);
        if (st_writer_add(w, name, ST_F32, 2, shape, p.pixel_values + off * row, &err) != VITD_OK) break;
        snprintf(name, sizeof name, "image.%d.grid_thw", i);
        if (st_writer_add(w, name, ST_I64, 1, gshape, g, &err) != VITD_OK) break;
        off += np;
    }
    if (!err.msg[0] && st_writer_save(w, out_path, &err) == VITD_OK) rc = 0;
    else fprintf(stderr, "vitd preprocess: %s\n", err.msg);
    st_writer_free(w);
    prepped_release(&p);
done:
    free(files);
    return rc;
}

/* ---- encode ---- */

static void encode_usage(FILE *f) {
    fprintf(f, "usage: vitd encode --model DIR IMAGE... [--out FILE.safetensors | --format json]\n"
               "                   [--backend cpu|gpu|auto] [--attn-dtype auto|fp8|bf16] [--dtype float32|bfloat16|float16]\n"
               "                   [--no-deepstack] [--layout separate|concat] [--one-by-one] [--threads N]\n"
               "                   [--device N] [--fp8-scales FILE] [--fp8-save-scales FILE] [--fp8-save-margin X]\n"
               "                   [--fp8-history N] [--attn-route-file FILE]\n"
               "                   [--linear-dtype bf16|fp8|auto] [--linear-fp8-gemms qkv,proj,fc1,fc2] "
               "[--no-cuda-graphs]\n"
               "                   [--no-gemm-tune] [--linear-precise-accum] [--attn-short-max N]\n"
               "Encodes the images in one batch (--one-by-one: each alone) and writes per image\n"
               "image.<i>.embeddings [tokens, out_hidden], image.<i>.deepstack.<layer> and image.<i>.grid_thw.\n"
               "--format json prints the same answer as the HTTP service's JSON instead.\n");
}

int cli_encode(int argc, char **argv) {
    const char *out_path = NULL, *model_dir = NULL, *format = "safetensors";
    vitd_encoder_opts eo = vitd_encoder_opts_default();
    encode_options opts = {.encoding = ENC_FLOAT, .deepstack = true, .dtype = ST_F32, .layout = LAYOUT_SEPARATE};
    int one_by_one = 0, n_files = 0, bad = 0, rc = 2;
    long n;
    char **files = xcalloc((size_t)argc + 1, sizeof *files);
    for (int i = 0; i < argc; i++) {
        const char *v;
        int ef;
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            encode_usage(stdout);
            rc = 0;
            goto done;
        } else if ((ef = encoder_flag(argc, argv, &i, &eo, &bad)) != 0) {
            if (ef < 0) goto done;
        } else if ((v = flag_value(argc, argv, &i, "--out", &bad))) {
            out_path = v;
        } else if ((v = flag_value(argc, argv, &i, "--model", &bad))) {
            model_dir = v;
        } else if ((v = flag_value(argc, argv, &i, "--format", &bad))) {
            if (strcmp(v, "json") && strcmp(v, "safetensors")) {
                fprintf(stderr, "vitd encode: --format must be safetensors or json\n");
                goto done;
            }
            format = v;
        } else if ((v = flag_value(argc, argv, &i, "--dtype", &bad))) {
            if (parse_dtype(v, &opts.dtype)) goto done;
        } else if ((v = flag_value(argc, argv, &i, "--layout", &bad))) {
            if (!strcmp(v, "concat")) opts.layout = LAYOUT_CONCAT;
            else if (!strcmp(v, "separate")) opts.layout = LAYOUT_SEPARATE;
            else {
                fprintf(stderr, "vitd encode: --layout must be separate or concat\n");
                goto done;
            }
        } else if ((v = flag_value(argc, argv, &i, "--threads", &bad))) {
            if (parse_long(v, "--threads", 0, 1024, &n)) goto done;
            eo.threads = (int)n;
        } else if (!strcmp(argv[i], "--no-deepstack")) {
            opts.deepstack = false;
        } else if (!strcmp(argv[i], "--one-by-one")) {
            one_by_one = 1;
        } else if (argv[i][0] == '-' && argv[i][1] == '-') {
            if (!bad) fprintf(stderr, "vitd encode: unknown flag '%s'\n", argv[i]);
            goto done;
        } else {
            files[n_files++] = argv[i];
        }
        if (bad) goto done;
    }
    if (!model_dir || n_files == 0 || (!out_path && strcmp(format, "json"))) {
        encode_usage(stderr);
        goto done;
    }
    rc = 1;
    vitd_err err = {0};
    vitd_model *model = NULL;
    vitd_encoder *enc = NULL;
    prepped p = {0};
    float *emb = NULL, *ds = NULL;
    reply_image *ri = NULL;
    uint8_t *body = NULL;
    size_t body_len = 0;
    if (vitd_model_load(model_dir, &model, &err) != VITD_OK) {
        fprintf(stderr, "vitd encode: %s\n", err.msg);
        goto out;
    }
    const vitd_vision_config *vc = vitd_model_config(model);
    if (prep_files(n_files, files, vitd_model_preproc(model), 0, &p)) goto out;
    eo.max_batch_tokens = p.n_patches;
    if (vitd_encoder_create(model, &eo, &enc, &err) != VITD_OK) {
        fprintf(stderr, "vitd encode: %s\n", err.msg);
        goto out;
    }
    size_t tokens = p.n_patches / 4, D = (size_t)vc->out_hidden_size, nds = (size_t)vc->n_deepstack;
    emb = malloc(tokens * D * sizeof(float));
    ds = malloc((nds ? nds : 1) * tokens * D * sizeof(float));
    ri = xcalloc((size_t)p.n, sizeof *ri);
    if (!emb || !ds) {
        fprintf(stderr, "vitd encode: out of memory for %zu tokens\n", tokens);
        goto out;
    }
    size_t row = preprocess_row_width(vitd_model_preproc(model));
    double t0 = vitd_now();
    if (one_by_one) {
        /* Each image alone; deepstack of image i lands in ds[layer][its tokens] as in a batch. */
        float *tmp_ds = malloc((nds ? nds : 1) * tokens * D * sizeof(float));
        size_t off_p = 0, off_t = 0;
        for (int i = 0; i < p.n && tmp_ds; i++) {
            size_t np = (size_t)p.grids[i].t * p.grids[i].h * p.grids[i].w, nt = np / 4;
            vitd_batch b = {.n_images = 1, .grids = &p.grids[i], .pixel_values = p.pixel_values + off_p * row,
                            .embeddings = emb + off_t * D, .deepstack = tmp_ds};
            if (vitd_encoder_run(enc, &b, &err) != VITD_OK) break;
            for (size_t l = 0; l < nds; l++)
                memcpy(ds + (l * tokens + off_t) * D, tmp_ds + l * nt * D, nt * D * sizeof(float));
            off_p += np;
            off_t += nt;
        }
        free(tmp_ds);
        if (err.msg[0] || !tmp_ds) {
            fprintf(stderr, "vitd encode: %s\n", tmp_ds ? err.msg : "out of memory");
            goto out;
        }
    } else {
        vitd_batch b = {.n_images = p.n, .grids = p.grids, .pixel_values = p.pixel_values, .embeddings = emb,
                        .deepstack = ds};
        if (vitd_encoder_run(enc, &b, &err) != VITD_OK) {
            fprintf(stderr, "vitd encode: %s\n", err.msg);
            goto out;
        }
    }
    double t1 = vitd_now();
    fprintf(stderr, "vitd encode: %d images, %zu patches, backend %s, attention %s, %.1f ms\n", p.n, p.n_patches,
            vitd_encoder_backend(enc), vitd_encoder_attn_dtype(enc), 1e3 * (t1 - t0));

    /* Per image views into the batch outputs; reply.c wants each image's deepstack contiguous
     * [n_deepstack][tokens_i][D], so regroup from the batch layout [n_deepstack][tokens][D]. */
    float *ds_img = nds ? malloc(nds * tokens * D * sizeof(float)) : NULL;
    if (nds && !ds_img) goto out;
    size_t off_t = 0;
    for (int i = 0; i < p.n; i++) {
        size_t nt = (size_t)p.grids[i].t * p.grids[i].h * p.grids[i].w / 4;
        for (size_t l = 0; l < nds; l++)
            memcpy(ds_img + (off_t * nds + l * nt) * D, ds + (l * tokens + off_t) * D, nt * D * sizeof(float));
        ri[i].grid = p.grids[i];
        ri[i].embeddings = emb + off_t * D;
        ri[i].deepstack = nds ? ds_img + off_t * nds * D : NULL;
        off_t += nt;
    }
    reply_encode r = {.id = "encode", .model = vitd_model_path(model), .out_hidden = (int)D,
                      .n_deepstack = (int)nds, .deepstack_layers = vc->deepstack_indexes, .n_images = p.n,
                      .images = ri, .opts = opts};
    if (!strcmp(format, "json")) {
        char *js = reply_encode_json(&r, &body_len);
        body = (uint8_t *)js;
        if (js) fwrite(js, 1, body_len, stdout);
        rc = js ? 0 : 1;
    } else {
        body = reply_encode_safetensors(&r, &body_len);
        FILE *f = body ? fopen(out_path, "wb") : NULL;
        if (!f || fwrite(body, 1, body_len, f) != body_len) {
            fprintf(stderr, "vitd encode: cannot write %s: %s\n", out_path, strerror(errno));
        } else {
            rc = 0;
        }
        if (f && fclose(f) != 0) rc = 1;
    }
    free(ds_img);
out:
    free(body);
    free(ri);
    free(emb);
    free(ds);
    prepped_release(&p);
    vitd_encoder_free(enc);
    vitd_model_free(model);
done:
    free(files);
    return rc;
}

/* ---- calibrate ---- */

static void calibrate_usage(FILE *f) {
    fprintf(f, "usage: vitd calibrate --model DIR --out SCALES.json [--margin X] [--backend gpu] [--device N]\n"
               "                      [--max-pixels N] IMAGE_OR_DIR...\n"
               "Runs the images (files, or every decodable image in a directory) one at a time through the BF16\n"
               "attention path of the GPU engine, records per layer the largest |Q| and |K| after the rotary and |V|,\n"
               "and the largest input of the QKV, fc1 and fc2 GEMMs, and writes static FP8 scales (amax / 448 x\n"
               "margin, default margin 1.5) for --fp8-scales / fp8_scales: blocks.<i>.attn for FP8 attention and\n"
               "blocks.<i>.linear for FP8 linear layers. Needs the GPU backend: the CPU reference records no amax.\n");
}

/* A growable list of input paths (owned strings); from_dir[i]: found in a directory (undecodable = skipped). */
typedef struct {
    char **v;
    int *from_dir;
    int n, cap;
} path_list;

static void path_list_add(path_list *l, const char *p, int from_dir) {
    if (l->n == l->cap) {
        int cap = l->cap ? 2 * l->cap : 16;
        char **v = xcalloc((size_t)cap, sizeof *v);
        int *fd = xcalloc((size_t)cap, sizeof *fd);
        if (l->n) {
            memcpy(v, l->v, (size_t)l->n * sizeof *v);
            memcpy(fd, l->from_dir, (size_t)l->n * sizeof *fd);
        }
        free(l->v);
        free(l->from_dir);
        l->v = v;
        l->from_dir = fd;
        l->cap = cap;
    }
    l->from_dir[l->n] = from_dir;
    l->v[l->n++] = xstrdup(p);
}

static void path_list_release(path_list *l) {
    for (int i = 0; i < l->n; i++) free(l->v[i]);
    free(l->v);
    free(l->from_dir);
    memset(l, 0, sizeof *l);
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* Expands the arguments: a directory gives its regular files (sorted, not recursive, hidden ones skipped; which
 * of them decode is decided later), a file itself. Returns 0, or 1 after printing why. */
static int collect_inputs(int n, char **args, path_list *out) {
    for (int i = 0; i < n; i++) {
        struct stat sb;
        if (stat(args[i], &sb) != 0) {
            fprintf(stderr, "vitd calibrate: %s: %s\n", args[i], strerror(errno));
            return 1;
        }
        if (!S_ISDIR(sb.st_mode)) {
            path_list_add(out, args[i], 0);
            continue;
        }
        DIR *d = opendir(args[i]);
        if (!d) {
            fprintf(stderr, "vitd calibrate: %s: %s\n", args[i], strerror(errno));
            return 1;
        }
        path_list dir = {0};
        struct dirent *de;
        while ((de = readdir(d))) {
            if (de->d_name[0] == '.') continue;
            char p[4096];
            snprintf(p, sizeof p, "%s/%s", args[i], de->d_name);
            if (stat(p, &sb) == 0 && S_ISREG(sb.st_mode)) path_list_add(&dir, p, 1);
        }
        closedir(d);
        if (dir.n) qsort(dir.v, (size_t)dir.n, sizeof *dir.v, cmp_str);
        for (int k = 0; k < dir.n; k++) path_list_add(out, dir.v[k], 1);
        path_list_release(&dir);
    }
    return 0;
}

/* Decodes and plans one file (*grid); with pv also preprocesses it into *pv (malloc'd [patches, row] float32, the
 * caller frees, NULL on failure). */
static vitd_status calib_prep(const char *path, const vitd_preproc_config *pc, vitd_grid *grid, float **pv,
                              vitd_err *err) {
    uint8_t *data = NULL;
    size_t len = 0;
    vitd_image img = {0};
    vitd_status st;
    if (pv) *pv = NULL;
    if ((st = image_read_file(path, &data, &len, err)) != VITD_OK) goto out;
    if ((st = image_decode(data, len, 0, &img, err)) != VITD_OK) goto out;
    if ((st = preprocess_plan(img.height, img.width, pc, grid, err)) != VITD_OK) goto out;
    if (pv == NULL) goto out;
    size_t np = (size_t)grid->t * grid->h * grid->w;
    *pv = malloc(np * preprocess_row_width(pc) * sizeof(float));
    if (!*pv) {
        st = vitd_fail(err, VITD_E_NOMEM, "out of memory for %zu patches", np);
        goto out;
    }
    st = preprocess_run(&img, pc, grid, *pv, err);
out:
    image_release(&img);
    free(data);
    return st;
}

int cli_calibrate(int argc, char **argv) {
    const char *out_path = NULL, *model_dir = NULL;
    double margin = 1.5;
    long max_px = -1;
    vitd_encoder_opts eo = vitd_encoder_opts_default();
    eo.backend = "gpu";
    int n_args = 0, bad = 0, rc = 2;
    char **args = xcalloc((size_t)argc + 1, sizeof *args);
    path_list files = {0};
    int *use = NULL;
    vitd_grid *grids = NULL;
    vitd_model *model = NULL;
    vitd_encoder *enc = NULL;
    float *amax = NULL, *emb = NULL, *lamax = NULL;
    fp8_qkv *sc = NULL;
    fp8_lin *lsc = NULL;
    for (int i = 0; i < argc; i++) {
        const char *v;
        int ef;
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            calibrate_usage(stdout);
            rc = 0;
            goto done;
        } else if ((v = flag_value(argc, argv, &i, "--out", &bad))) {
            out_path = v;
        } else if ((v = flag_value(argc, argv, &i, "--model", &bad))) {
            model_dir = v;
        } else if ((v = flag_value(argc, argv, &i, "--margin", &bad))) {
            if (parse_double(v, "--margin", 1, 100, &margin)) goto done;
        } else if ((v = flag_value(argc, argv, &i, "--max-pixels", &bad))) {
            if (parse_long(v, "--max-pixels", 1, 1L << 40, &max_px)) goto done;
        } else if ((ef = encoder_flag(argc, argv, &i, &eo, &bad)) != 0) {
            if (ef < 0) goto done;
        } else if (argv[i][0] == '-' && argv[i][1] == '-') {
            if (!bad) fprintf(stderr, "vitd calibrate: unknown flag '%s'\n", argv[i]);
            goto done;
        } else {
            args[n_args++] = argv[i];
        }
        if (bad) goto done;
    }
    if (!out_path || !model_dir || n_args == 0) {
        calibrate_usage(stderr);
        goto done;
    }
    rc = 1;
    if (strcmp(eo.backend, "gpu") && strcmp(eo.backend, "auto")) {
        fprintf(stderr, "vitd calibrate: backend %s cannot calibrate: the amax of Q, K and V is recorded by the "
                        "GPU engine only (use --backend gpu)\n", eo.backend);
        goto done;
    }
    eo.backend = "gpu";
    eo.attn_dtype = "bf16";
    eo.fp8_calibrate = 1;
    eo.fp8_scales = eo.fp8_save_scales = NULL;
    if (collect_inputs(n_args, args, &files)) goto done;

    vitd_err err = {0};
    if (vitd_model_load(model_dir, &model, &err) != VITD_OK) {
        fprintf(stderr, "vitd calibrate: %s\n", err.msg);
        goto done;
    }
    const vitd_vision_config *vc = vitd_model_config(model);
    vitd_preproc_config pc = *vitd_model_preproc(model);
    if (max_px > 0) pc.max_pixels = (size_t)max_px;
    /* pass 1: which files are images, and the largest one (sizes the engine) */
    grids = xcalloc((size_t)files.n + 1, sizeof *grids);
    use = xcalloc((size_t)files.n + 1, sizeof *use);
    size_t max_patches = 0;
    int n_img = 0;
    for (int i = 0; i < files.n; i++) {
        if (calib_prep(files.v[i], &pc, &grids[i], NULL, &err) != VITD_OK) {
            if (files.from_dir[i]) {
                fprintf(stderr, "vitd calibrate: skipping %s: %s\n", files.v[i], err.msg);
                continue;
            }
            fprintf(stderr, "vitd calibrate: %s: %s\n", files.v[i], err.msg);
            goto done;
        }
        use[i] = 1;
        n_img++;
        size_t np = (size_t)grids[i].t * grids[i].h * grids[i].w;
        if (np > max_patches) max_patches = np;
    }
    if (n_img == 0) {
        fprintf(stderr, "vitd calibrate: no decodable image among %d file%s\n", files.n, files.n == 1 ? "" : "s");
        goto done;
    }
    eo.max_batch_tokens = max_patches;
    if (vitd_encoder_create(model, &eo, &enc, &err) != VITD_OK) {
        fprintf(stderr, "vitd calibrate: %s\n", err.msg);
        goto done;
    }
    /* pass 2: each image alone through the BF16 path (amax folded on the GPU) */
    emb = malloc(max_patches / 4 * (size_t)vc->out_hidden_size * sizeof(float));
    if (!emb) {
        fprintf(stderr, "vitd calibrate: out of memory\n");
        goto done;
    }
    size_t total = 0;
    double t0 = vitd_now();
    for (int i = 0; i < files.n; i++) {
        if (!use[i]) continue;
        float *pv = NULL;
        vitd_grid g;
        if (calib_prep(files.v[i], &pc, &g, &pv, &err) != VITD_OK) {
            fprintf(stderr, "vitd calibrate: %s: %s\n", files.v[i], err.msg);
            free(pv);
            goto done;
        }
        vitd_batch b = {.n_images = 1, .grids = &g, .pixel_values = pv, .embeddings = emb, .deepstack = NULL};
        vitd_status s = vitd_encoder_run(enc, &b, &err);
        free(pv);
        if (s != VITD_OK) {
            fprintf(stderr, "vitd calibrate: %s: %s\n", files.v[i], err.msg);
            goto done;
        }
        total += (size_t)g.t * g.h * g.w;
    }
    amax = xcalloc((size_t)vc->depth * 3, sizeof *amax);
    if (vitd_encoder_fp8_amax(enc, amax, &err) != VITD_OK) {
        fprintf(stderr, "vitd calibrate: %s\n", err.msg);
        goto done;
    }
    /* scale = amax / 448 (an amax of 0 gives the smallest positive scale, as the dynamic ring does) */
    sc = xcalloc((size_t)vc->depth, sizeof *sc);
    float lo = 1e30f, hi = 0;
    for (int l = 0; l < vc->depth; l++) {
        float s3[3];
        for (int t = 0; t < 3; t++) {
            const float a = amax[l * 3 + t];
            s3[t] = a > 0 ? a / FP8_E4M3_MAX : 1.0f / (FP8_E4M3_MAX * FP8_E4M3_MAX);
            if (a < lo) lo = a;
            if (a > hi) hi = a;
        }
        sc[l] = (fp8_qkv){s3[0], s3[1], s3[2]};
    }
    /* the linear layers' inputs likewise, where the model's widths suit FP8 GEMMs */
    lamax = xcalloc((size_t)vc->depth * 3, sizeof *lamax);
    if (vitd_encoder_linear_amax(enc, lamax, &err) == VITD_OK) {
        lsc = xcalloc((size_t)vc->depth, sizeof *lsc);
        for (int l = 0; l < vc->depth; l++) {
            float s3[3];
            for (int t = 0; t < 3; t++) {
                const float a = lamax[l * 3 + t];
                s3[t] = a > 0 ? a / FP8_E4M3_MAX : 1.0f / (FP8_E4M3_MAX * FP8_E4M3_MAX);
            }
            lsc[l] = (fp8_lin){s3[0], s3[1], s3[2]};
        }
    } else {
        fprintf(stderr, "vitd calibrate: no linear-layer scales: %s\n", err.msg);
    }
    char source[512];
    snprintf(source, sizeof source, "vitd calibrate: %d images, %zu patches, model %s", n_img, total, model_dir);
    if (fp8_scales_save_all(out_path, sc, lsc, vc->depth, margin, source, &err) != VITD_OK) {
        fprintf(stderr, "vitd calibrate: %s\n", err.msg);
        goto done;
    }
    fprintf(stderr, "vitd calibrate: %d images (%zu patches) in %.1f s; amax %.3g..%.3g over %d layers; wrote %s "
                    "(margin %.2f%s)\n", n_img, total, vitd_now() - t0, lo, hi, vc->depth, out_path, margin,
            lsc ? ", with the linear layers' scales" : "");
    rc = 0;
done:
    free(lsc);
    free(lamax);
    free(sc);
    free(amax);
    free(emb);
    vitd_encoder_free(enc);
    vitd_model_free(model);
    free(grids);
    free(use);
    path_list_release(&files);
    free(args);
    return rc;
}
