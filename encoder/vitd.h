/* vitd.h — the public API of the vitd encoder library.
 *
 * vitd turns images into Qwen3-VL vision-encoder embeddings. This header is the narrow surface the server and
 * the CLI use: load a checkpoint, create an encoder on a backend, run batches of preprocessed images.
 *
 * Usage:
 *
 *     vitd_err err;
 *     vitd_model *model;
 *     if (vitd_model_load("models/tiny", &model, &err) != VITD_OK) die(err.msg);
 *     vitd_encoder_opts opts = vitd_encoder_opts_default();          // backend "auto"
 *     vitd_encoder *enc;
 *     if (vitd_encoder_create(model, &opts, &enc, &err) != VITD_OK) die(err.msg);
 *
 *     // decode + preprocess (encoder/image/image.h, encoder/image/preprocess.h) gives pixel_values and grid_thw
 *     vitd_batch b = { .n_images = 1, .grids = &grid, .pixel_values = pv,
 *                      .embeddings = emb, .deepstack = ds };        // outputs [N/4, out_hidden] floats
 *     if (vitd_encoder_run(enc, &b, &err) != VITD_OK) die(err.msg);
 *
 *     vitd_encoder_free(enc);
 *     vitd_model_free(model);
 *
 * A stream of batches: vitd_encoder_submit(enc, &b1) ... submit(enc, &b2), wait(enc) (b1 done), submit(&b3),
 * wait (b2 done), ...: up to VITD_ENCODER_PIPELINE in flight, so one batch's host work overlaps another's GPU work.
 *
 * Errors: every call returns a vitd_status (0 = ok, negative = failure) and fills the caller's vitd_err with a
 * message that names the thing and the limit. Library code never exits and never prints; it logs through the
 * hook installed with vitd_log_set().
 *
 * Thread safety: a vitd_model is read-only after load and may be shared. A vitd_encoder is driven by one thread
 * at a time (vitd_encoder_run, or vitd_encoder_submit / vitd_encoder_wait with two batches in flight); the
 * server's batcher is its only caller.
 */
#ifndef VITD_H
#define VITD_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- status and errors ---- */

typedef enum {
    VITD_OK = 0,
    VITD_E_INVALID_ARG = -1,  /* a parameter or option is wrong (caller or configuration) */
    VITD_E_BAD_IMAGE = -2,    /* corrupt, truncated or undecodable image data */
    VITD_E_UNSUPPORTED = -3,  /* a format or mode vitd refuses rather than decode wrongly (e.g. CMYK JPEG) */
    VITD_E_TOO_LARGE = -4,    /* over a configured limit (pixels, aspect ratio, body size, tokens) */
    VITD_E_IO = -5,           /* a file could not be read or written */
    VITD_E_MODEL = -6,        /* checkpoint: missing file, missing tensor, wrong shape or dtype, bad config */
    VITD_E_NOMEM = -7,        /* an allocation sized by input failed */
    VITD_E_GPU = -8,          /* CUDA, cuBLASLt or cuDNN failure, or no usable GPU */
    VITD_E_BUSY = -9,         /* queue full: retry later */
    VITD_E_TIMEOUT = -10,     /* the request's deadline passed */
    VITD_E_CANCELLED = -11,   /* the client went away or the server is draining */
    VITD_E_INTERNAL = -12,    /* a bug: an invariant did not hold */
} vitd_status;

typedef struct {
    vitd_status code;
    char msg[256];
} vitd_err;

/* Fills *err (if not NULL) with code and a printf-style message; returns code. Use as
 * `return vitd_fail(err, VITD_E_TOO_LARGE, "image %d: %ux%u exceeds max_pixels %zu", i, w, h, lim);` */
vitd_status vitd_fail(vitd_err *err, vitd_status code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Stable lower_snake name of a status, used as the JSON error.code ("bad_image", "too_large", ...). */
const char *vitd_status_name(vitd_status s);

/* ---- logging hook ---- */

typedef enum { VITD_LOG_DEBUG = 0, VITD_LOG_INFO = 1, VITD_LOG_WARN = 2, VITD_LOG_ERROR = 3 } vitd_log_level;
typedef void (*vitd_log_fn)(vitd_log_level level, const char *msg, void *user);

/* Installs the sink for library log lines (default: none, the library is silent). Not thread-safe against
 * concurrent logging: call once at start-up. */
void vitd_log_set(vitd_log_fn fn, void *user);
/* Library-internal: format and send one line through the hook. */
void vitd_log(vitd_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---- model configuration ---- */

#define VITD_MAX_DEEPSTACK 8

/* The `vision_config` of a Qwen3-VL config.json (MODEL.md section 8.1). */
typedef struct {
    int depth;                    /* number of transformer blocks */
    int hidden_size;              /* d */
    int intermediate_size;        /* I, MLP width */
    int num_heads;                /* H; head_dim = d / H */
    int out_hidden_size;          /* D_out, width of merged embeddings (the LLM's hidden size) */
    int patch_size;               /* P = 16 */
    int temporal_patch_size;      /* T = 2 */
    int spatial_merge_size;       /* m = 2 */
    int in_channels;              /* 3 */
    int num_position_embeddings;  /* 2304 = 48 x 48 */
    int n_deepstack;              /* entries in deepstack_visual_indexes */
    int deepstack_indexes[VITD_MAX_DEEPSTACK]; /* block indices whose output feeds a deepstack merger */
    double rope_theta;            /* 10000 */
    double ln_eps;                /* 1e-6 */
} vitd_vision_config;

/* The image processor's settings (MODEL.md section 2 and 8.2; preprocessor_config.json when present). */
typedef struct {
    size_t min_pixels;            /* size.shortest_edge, 65536 */
    size_t max_pixels;            /* size.longest_edge, 16777216 */
    int patch_size;               /* 16 */
    int temporal_patch_size;      /* 2 */
    int merge_size;               /* 2 */
    float image_mean[3];          /* 0.5 */
    float image_std[3];           /* 0.5 */
    double rescale_factor;        /* 1/255 */
} vitd_preproc_config;

/* Defaults of a released Qwen3-VL checkpoint. */
vitd_vision_config vitd_vision_config_default(void);
vitd_preproc_config vitd_preproc_config_default(void);

/* grid_thw of one image: t temporal patches (1 for a still image), h x w patches. */
typedef struct {
    int t, h, w;
} vitd_grid;

/* ---- model ---- */

typedef struct vitd_model vitd_model;

/* Loads a Hugging Face Qwen3-VL checkpoint directory: config.json (its vision_config; a bare vision config is
 * accepted too), preprocessor_config.json if present, model.safetensors or the shards named by
 * model.safetensors.index.json. Files are memory-mapped and only vision tensors are touched. Every tensor's shape
 * is checked against the config; the message names the tensor that is missing or wrong.
 * On success *out owns the mappings; free with vitd_model_free(). */
vitd_status vitd_model_load(const char *dir, vitd_model **out, vitd_err *err);
void vitd_model_free(vitd_model *m);
const vitd_vision_config *vitd_model_config(const vitd_model *m);
const vitd_preproc_config *vitd_model_preproc(const vitd_model *m);
/* Directory name the model was loaded from (for /v1/model and logs). */
const char *vitd_model_path(const vitd_model *m);

/* ---- encoder ---- */

typedef struct vitd_encoder vitd_encoder;

typedef struct {
    const char *backend;          /* "cpu", "gpu" or "auto" (gpu when one is usable, else cpu) */
    const char *attn_dtype;       /* "auto", "fp8" or "bf16" (GPU only) */
    int device;                   /* CUDA device ordinal */
    int threads;                  /* CPU backend threads (0 = all cores) */
    size_t max_batch_tokens;      /* largest batch (in patches) the encoder must accept */
    int max_batch_images;         /* most images (x frames) per batch the encoder must accept; 0 = backend default */
    /* FP8 attention (GPU, attn_dtype auto or fp8; README "FP8 attention"): */
    const char *fp8_scales;       /* static scales JSON (fp8_scales.h); NULL or "" = dynamic scaling */
    const char *fp8_save_scales;  /* write the dynamic scales here once, when the amax history first fills */
    double fp8_save_margin;       /* factor multiplied into saved scales (1.5) */
    int fp8_history;              /* amax history length of dynamic scaling (16) */
    int fp8_calibrate;            /* 1: BF16 attention, recording per-layer amax of Q, K, V (vitd calibrate) */
    const char *attn_route_file;  /* GPU, attn_dtype auto: the routing table's timings are read from this file
                                     when it was measured on the same GPU, cuDNN and attention shape, else
                                     measured and written there (attn_route.h); NULL or "" = measure */
    /* FP8 linear layers (GPU; README "FP8 linear layers"): */
    const char *linear_dtype;     /* "bf16" (NULL or "": the default), "fp8", or "auto" (FP8 where measured faster) */
    const char *linear_fp8_gemms; /* the block GEMMs FP8 linear runs in E4M3: a comma list of qkv, proj, fc1, fc2
                                     (fc2 needs fc1: it reads fc1's E4M3 output); NULL or "" = "qkv,fc1" */
    int fp8_precise_accum;        /* 1: FP8 GEMMs promote their sums to float32 periodically (cuBLASLt's default,
                                     slower); 0 (the default): fast accumulation (measured: same accuracy) */
    /* CUDA graphs (GPU): a batch shape seen twice is captured (per block segment) and replayed after */
    int no_cuda_graphs;           /* 1: never capture (0, the default: graphs on) */
    size_t graph_max_tokens;      /* largest batch (patches) that is captured; 0 = 16384 */
    int attn_short_max;           /* GPU: BF16 attention of a batch of at most this many patches (all images)
                                     runs vitd's own fused rotary + attention kernel instead of rotary pack +
                                     cuDNN (faster for small batches); 0 (the default) = measured at start-up,
                                     < 0 = always cuDNN */
    int no_gemm_tune;             /* 1: cuBLASLt's first heuristic choice per GEMM shape; 0 (the default): the
                                     fastest of its first 8, timed once per shape bucket (gpu_gemm.h) */
    int defer_plan_builds;        /* GPU, for servers: 1 = no batch waits for a cuDNN plan build (50-170 ms): a
                                     batch whose plan is missing runs on a plan at hand (packed BF16, or BF16
                                     instead of auto's FP8) and vitd_encoder_idle() builds the plan later */
} vitd_encoder_opts;

vitd_encoder_opts vitd_encoder_opts_default(void);

/* One batch of images, in one of two forms.
 * Contiguous: pixel_values of all images concatenated in order ([N, C*T*P*P] float32, N = sum of t*h*w), their
 * grids. Outputs (caller-allocated, float32, row-major, images concatenated in order):
 *   embeddings  [N/4, out_hidden_size]
 *   deepstack   [n_deepstack][N/4][out_hidden_size] (one block per deepstack layer), or NULL to skip
 * Per image (pixel_values == NULL; the server's form, so no image is copied into or out of a batch buffer):
 *   image_pixels[i]      [t*h*w, C*T*P*P] image i's own pixel values
 *   image_embeddings[i]  [t*h*w/4, out_hidden_size]
 *   image_deepstack      NULL to skip for all, else [i] -> [n_deepstack][t*h*w/4][out_hidden_size] or NULL to
 *                        skip for image i
 *   image_bf16           NULL (every output float32), else [i] nonzero: image i's two output buffers hold
 *                        bfloat16 (uint16_t) values of the same shapes, cast to float * here. The GPU backend's
 *                        outputs are bfloat16, so it hands them over as they are (no float32 detour); the CPU
 *                        backend rounds its float32 outputs to nearest-even. */
typedef struct {
    int n_images;
    const vitd_grid *grids;
    const float *pixel_values;
    float *embeddings;
    float *deepstack;
    const float *const *image_pixels;
    float *const *image_embeddings;
    float *const *image_deepstack;
    const unsigned char *image_bf16;
} vitd_batch;

/* Total patches N and merged tokens N/4 of a set of grids. */
size_t vitd_grids_patches(const vitd_grid *grids, int n);

/* Creates an encoder for the model on the backend opts ask for. The model must outlive the encoder. */
vitd_status vitd_encoder_create(const vitd_model *m, const vitd_encoder_opts *opts, vitd_encoder **out,
                                vitd_err *err);
/* Runs one batch; images never attend to one another. Not reentrant on one encoder. */
vitd_status vitd_encoder_run(vitd_encoder *e, const vitd_batch *b, vitd_err *err);

/* Pipelined use: up to VITD_ENCODER_PIPELINE batches in flight, finished in submission order, so the host work
 * of one batch (pixels in, outputs out) overlaps the GPU work of another. vitd_encoder_submit checks the batch and
 * starts it (on the GPU it converts and enqueues the pixels and returns before the forward pass ends): the pixel
 * buffers may be reused when it returns; the vitd_batch, its arrays and the output buffers must stay valid until
 * the vitd_encoder_wait that finishes it. VITD_E_BUSY when VITD_ENCODER_PIPELINE batches are in flight (wait
 * first); a failed submit adds nothing in flight. vitd_encoder_wait finishes the oldest batch in flight (its
 * outputs written) and returns that batch's status; VITD_E_INVALID_ARG when none is in flight. The CPU backend
 * runs the batch inside submit. vitd_encoder_run is submit + wait and needs nothing in flight. One thread at a
 * time (submit and wait are not reentrant). */
#define VITD_ENCODER_PIPELINE 2
vitd_status vitd_encoder_submit(vitd_encoder *e, const vitd_batch *b, vitd_err *err);
vitd_status vitd_encoder_wait(vitd_encoder *e, vitd_err *err);
/* Whether the encoder's device failed for good (a sticky CUDA error: an illegal address, a lost or reset GPU);
 * *why (if not NULL) says what. Every later submit fails with VITD_E_GPU at once: the process must restart (the
 * server answers what it can and exits non-zero). Thread-safe. */
int vitd_encoder_failed(const vitd_encoder *e, vitd_err *why);
/* Batches submitted and not yet waited for. */
int vitd_encoder_in_flight(const vitd_encoder *e);

/* Deferred work (opts.defer_plan_builds): with no batch in flight, builds one attention plan that an earlier batch
 * wanted (50-170 ms) and returns how many are still wanted; 0 when there is nothing to do (and on the CPU
 * backend). For a server's batcher while its queue is empty. Same thread rule as submit. */
int vitd_encoder_idle(vitd_encoder *e);
void vitd_encoder_free(vitd_encoder *e);
/* Which backend runs ("cpu"/"gpu") and its attention mode: "fp32" (CPU), "bf16" (asked for, or FP8 unavailable
 * or never faster), "fp8" (asked for), "auto" (each batch routed to the faster of bf16 and fp8 by its shape). */
const char *vitd_encoder_backend(const vitd_encoder *e);
const char *vitd_encoder_attn_dtype(const vitd_encoder *e);
/* Its linear layers' mode: "fp32" (CPU), "bf16", "fp8" or "auto" (README "FP8 linear layers"). */
const char *vitd_encoder_linear_dtype(const vitd_encoder *e);

/* 1 when the backend's outputs are bfloat16 values (the GPU engine's), so asking for bfloat16 outputs
 * (vitd_batch.image_bf16) loses nothing and skips a conversion; 0 when they are float32 (the CPU reference). */
int vitd_encoder_native_bf16(const vitd_encoder *e);

/* The attention path of the last successful batch: "fp32", "bf16" or "fp8" ("" before the first). Written by
 * vitd_encoder_run; safe to read from another thread. */
const char *vitd_encoder_last_attn(const vitd_encoder *e);

/* Attention paths and per-path batch counts since creation (safe to read from another thread while batches run). */
typedef struct {
    const char *mode;       /* vitd_encoder_attn_dtype() */
    const char *last;       /* vitd_encoder_last_attn() */
    const char *fallback;   /* why FP8 does not run although the setting allows it ("" if it does or was not
                               asked for) */
    uint64_t batches_fp32, batches_bf16, batches_fp8;
} vitd_attn_info;
void vitd_encoder_attn_info(const vitd_encoder *e, vitd_attn_info *out);

/* Calibration (opts.fp8_calibrate, GPU backend): the largest |Q| (after rotary), |K| (after rotary) and |V| per
 * layer over every batch run so far, into amax[depth][3] (one device sync). VITD_E_UNSUPPORTED on the CPU backend
 * or without fp8_calibrate. */
vitd_status vitd_encoder_fp8_amax(vitd_encoder *e, float *amax, vitd_err *err);
/* The same for the FP8 linear layers' inputs: amax[depth][3] = largest |x| entering the QKV, fc1 and fc2 GEMMs per
 * layer. VITD_E_UNSUPPORTED on the CPU backend, without fp8_calibrate, or where the model's widths do not suit
 * FP8 GEMMs (multiples of 16). */
vitd_status vitd_encoder_linear_amax(vitd_encoder *e, float *amax, vitd_err *err);

#ifdef __cplusplus
}
#endif
#endif /* VITD_H */
