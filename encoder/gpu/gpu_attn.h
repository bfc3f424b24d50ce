/* gpu_attn.h — variable-length multi-head attention on the GPU through cuDNN's backend (graph) API, in BF16 and
 * FP8 E4M3, for the vision tower's block-diagonal attention: images are packed one after another and each image
 * attends only to itself (cu_seqlens), non-causal, scale head_dim^-0.5 (MODEL.md 3.4).
 *
 * Usage (one context per device and per stream of work; every buffer is allocated before the first call):
 *
 *     gpu_attn_opts o = gpu_attn_opts_default();      // 16 heads, head_dim 72 padded to 80
 *     o.max_batch = 64; o.max_seqlen = 16384;
 *     gpu_attn_ctx *a;
 *     if (gpu_attn_create(device, &o, &a, &err)) ...; // checks cuDNN and the GPU, builds the packed BF16 plan
 *
 *     // per batch of images (the same for every layer):
 *     gpu_attn_batch b = { .n_images = n, .lens = h_lens, .d_cu_seqlens = d_cu };
 *     gpu_attn_begin(a, &b, stream, &err);             // index tensors on `stream`, plan choice, no host sync
 *     // per layer:
 *     gpu_attn_bf16(a, d_q, d_k, d_v, d_o, stream, &err);           // [T, H, Dp] bf16 each
 *     gpu_attn_fp8(a, d_q8, d_k8, d_v8, d_o8, d_scalars, stream, &err);  // [T, H, Dp] E4M3, scalars: kernels.h
 *
 *     gpu_attn_free(a);
 *
 * Tensors. Q, K, V and O are packed token-major [T, H, Dp] (T = total tokens of the batch, head h of token t at
 * (t*H + h)*Dp), Dp = head_dim rounded up to a multiple of 16 with zero pad lanes in Q, K and V (then the pad
 * lanes of O come back exactly 0). Allocations must extend GPU_ATTN_SLACK_ROWS rows past the largest T, holding
 * finite values (the kernels work in 64/128-row tiles; cuDNN's own tests pad T the same way). Base pointers
 * 16-byte aligned. FP8: O is E4M3 scaled by SCALE_O (Hopper has no BF16 output for FP8 attention); the scalar
 * slots (kernels.h, ATTN_FP8_*) are device floats the caller owns, e.g. one 128-byte block per layer.
 *
 * Plans. cuDNN compiles a kernel per plan (the first plan in a process ~1 s, later ones 50-170 ms), so plans are
 * built ahead of use and kept:
 *  - BF16 "packed": ragged plans for (b entries, s_max) on a ladder b in {1, 4, 16, ..., max_batch} x
 *    s in {256, 1024, 4096, ..., max_seqlen}, all built at creation; a batch uses the smallest rung that holds it
 *    (unused entries get length 0, which BF16 accepts). One plan for (max_batch, max_seqlen) would do, but its
 *    launch pays ~10 us for the empty tiles of a 64 x 65536 grid (measured on the H100), so small batches would
 *    lose a third of their speed; opts.packed_ladder = 0 keeps the single plan.
 *  - BF16 "full": one plan per image length (one image, no mask), cached in an LRU by length. Faster than
 *    packed for one image (H100: -24% at 1K tokens, -12% at 4K, -7% at 16K-64K); AUTO gives each image of at
 *    least full_min_len tokens its own full launch (and a lone image too when its plan is cached) and packs the
 *    rest into one launch (rule and figures: gpu_attn.c, bench/RESULTS.md).
 *  - FP8: one ragged plan per (n_images, bucket(longest image)), LRU-cached; FP8 time grows with entries x s_max,
 *    so both are kept tight (n exact, s_max rounded up by at most 1/16) and no entry is ever empty (a zero-length
 *    entry crashes the FP8 kernel with an illegal instruction that kills the CUDA context). With fp8_split, an
 *    image of at least full_min_len tokens may run on its own FP8 plan (exact length, no mask) and stay in the
 *    packed launch as a 1-token dummy entry, so one large image no longer makes every entry pay its s_max; the
 *    split is taken when it cuts the kernel's work (tokens x plan s_max) by >= 10% (gpu_attn.c).
 * A missing full or FP8 plan is built inside gpu_attn_begin / gpu_attn_fp8 when opts.build_on_miss is set (a
 * host-side cost of 50-170 ms, logged); gpu_attn_prepare_full / gpu_attn_prepare_fp8 build them at start-up;
 * with gpu_attn_set_defer a server builds them between batches instead (below). A plan used by one of the last
 * VITD_ENCODER_PIPELINE batches is never evicted (its launches may still be queued on the GPU).
 * Host cost per launch is ~10-20 us (variant pack + execute): capture the layer loop in a CUDA graph (every
 * path captures) once the batch's plans exist, i.e. after the batch's first call.
 *
 * Features (runtime cuDNN, not the headers): FP8 needs cuDNN >= 9.17.1 (9.14 returns wrong FP8 output above
 * 1024 tokens) and compute capability >= 9.0; the native SDPA operation with sequence lengths needs >= 9.15,
 * below that BF16 uses the composite graph, which works from 9.14. Compute capability >= 9.0 is required.
 *
 * Thread safety: a context is used by one thread at a time and one batch at a time (gpu_attn_begin stores the
 * batch; the per-layer calls read it). Its index tensors are rewritten by gpu_attn_begin on the given stream, so
 * all calls of one context must be ordered on one stream (or streams ordered after it). Calls never allocate
 * device memory and never synchronise the host with the device (except the plan builds named above).
 * Errors: VITD_E_GPU with cuDNN's status and last error string; VITD_E_INVALID_ARG for shapes over the limits;
 * VITD_E_UNSUPPORTED when FP8 is not available or a plan is missing and building is off. Never prints: the cuDNN
 * version, features and every plan build go through vitd_log().
 */
#ifndef VITD_GPU_ATTN_H
#define VITD_GPU_ATTN_H

#include <stddef.h>
#include <stdint.h>

#include <cuda_runtime_api.h>

#include "kernels.h"
#include "vitd.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Rows past the last token that Q, K, V and O allocations must have (finite contents). */
#define GPU_ATTN_SLACK_ROWS 128

typedef struct gpu_attn_ctx gpu_attn_ctx;

typedef enum {
    GPU_ATTN_BF16_AUTO = 0,   /* per image: own full plan if long enough (rule in gpu_attn.c), else packed */
    GPU_ATTN_BF16_PACKED = 1, /* always the one packed plan, one launch per call */
    GPU_ATTN_BF16_FULL = 2,   /* always one full plan per image, one launch per image */
} gpu_attn_bf16_path;

typedef enum {
    GPU_ATTN_RECIPE_AUTO = 0,      /* unified where the runtime cuDNN supports it, else composite */
    GPU_ATTN_RECIPE_UNIFIED = 1,   /* native CUDNN_BACKEND_OPERATION_SDPA_FWD_DESCRIPTOR */
    GPU_ATTN_RECIPE_COMPOSITE = 2, /* matmul / pointwise / reduction graph fused by the backend */
} gpu_attn_recipe;

typedef struct {
    int n_heads;             /* H (16 for Qwen3-VL 8B) */
    int head_dim;            /* real head dim, sets the softmax scale head_dim^-0.5 (72) */
    int head_dim_padded;     /* Dp: the tensors' last dimension, multiple of 16, >= head_dim (80) */
    int max_batch;           /* most images per call (entries of the packed BF16 plan) */
    int max_seqlen;          /* most tokens of one image */
    size_t workspace_bytes;  /* cuDNN workspace owned by the context; plans needing more are skipped */
    gpu_attn_bf16_path bf16_path;
    gpu_attn_recipe bf16_recipe;
    int full_min_len;        /* AUTO: an image with at least this many tokens runs on its own full plan */
    int full_cache;          /* LRU capacity of BF16 full plans */
    int fp8;                 /* 1: prepare for FP8 calls (ignored when the features do not allow FP8) */
    int fp8_cache;           /* LRU capacity of FP8 plans */
    int fp8_exact_smax;      /* 1: FP8 plans keyed by the exact longest image (no bucketing; for tests) */
    int fp8_split;           /* 1: FP8 images of >= full_min_len tokens get their own launch (see Plans) */
    int packed_ladder;       /* 1: a ladder of packed BF16 plans; 0: one (max_batch, max_seqlen) plan */
    int build_on_miss;       /* 1: build a missing full/FP8 plan when first needed; 0: full -> packed,
                                FP8 -> VITD_E_UNSUPPORTED */
} gpu_attn_opts;

/* What the runtime allows (filled by gpu_attn_query and gpu_attn_create). */
typedef struct {
    int cudnn_version;        /* cudnnGetVersion() of the loaded library, e.g. 91900 for 9.19.0 */
    int cudnn_header_version; /* CUDNN_VERSION vitd was compiled against */
    int cc_major, cc_minor;   /* compute capability of the device */
    int sm_count;
    int unified_seqlen;       /* native SDPA op with sequence lengths (ragged packed): cuDNN >= 9.15 */
    int unified_full;         /* native SDPA op without sequence lengths: cuDNN >= 9.13.1 */
    int fp8;                  /* FP8 attention usable: cuDNN >= 9.17.1 and cc >= 9.0 */
    char fp8_reason[96];      /* why not, when fp8 == 0 */
    char device_name[64];
} gpu_attn_features;

/* One batch of packed images. lens and d_cu_seqlens must agree (d_cu_seqlens = [0, prefix sums of lens]). */
typedef struct {
    int n_images;
    const int *lens;              /* host [n_images], tokens per image, each >= 1 */
    const int32_t *d_cu_seqlens;  /* device [n_images + 1] int32 */
} gpu_attn_batch;

typedef struct {
    int plans_built;          /* all kinds, creation included */
    double build_ms_total;
    int full_hits, full_misses, fp8_hits, fp8_misses;
    int full_evictions, fp8_evictions;
} gpu_attn_stats;

/* Defaults: 16 heads, head_dim 72 in 80, max_batch 64, max_seqlen 16384, 64 MiB workspace, AUTO path and
 * recipe, full_min_len 4096, 32 full plans, FP8 on, 32 FP8 plans, bucketing, split and ladder on, build on
 * miss. */
gpu_attn_opts gpu_attn_opts_default(void);

/* Reads the features of `device` and the loaded cuDNN without creating a context (for the encoder's choice of
 * attention dtype). VITD_E_GPU if no device or cuDNN cannot be queried. */
vitd_status gpu_attn_query(int device, gpu_attn_features *out, vitd_err *err);

/* Makes `device` current, creates the cuDNN handle, checks the features (cc >= 9.0 required), allocates the
 * workspace and the index tensors, and builds the packed BF16 plan. On success *out is owned by the caller;
 * free with gpu_attn_free(). */
vitd_status gpu_attn_create(int device, const gpu_attn_opts *opts, gpu_attn_ctx **out, vitd_err *err);
void gpu_attn_free(gpu_attn_ctx *c);

const gpu_attn_features *gpu_attn_features_of(const gpu_attn_ctx *c);
const gpu_attn_opts *gpu_attn_opts_of(const gpu_attn_ctx *c);
void gpu_attn_get_stats(const gpu_attn_ctx *c, gpu_attn_stats *out);

/* Changes the BF16 path for the next gpu_attn_begin (benchmarks and tests compare paths on one context). */
void gpu_attn_set_bf16_path(gpu_attn_ctx *c, gpu_attn_bf16_path path);

/* Starts a batch: validates it (1 <= n_images <= max_batch, 1 <= lens[i] <= max_seqlen, T*H*Dp < 2^31), picks
 * the BF16 plan per image (building full plans on a miss if allowed), and enqueues on `stream` one kernel that
 * writes the ragged offsets and sequence lengths from d_cu_seqlens. The batch stays current until the next
 * gpu_attn_begin. */
vitd_status gpu_attn_begin(gpu_attn_ctx *c, const gpu_attn_batch *b, cudaStream_t stream, vitd_err *err);

/* BF16 attention of the current batch: o = softmax(q k^T / sqrt(head_dim)) v per image and head.
 * q, k, v, o: device [T, H, Dp] bf16 (see the top of this header). Enqueues one launch per full-plan image plus
 * one packed launch if any image is left; never allocates or synchronises. */
vitd_status gpu_attn_bf16(gpu_attn_ctx *c, const void *q, const void *k, const void *v, void *o,
                          cudaStream_t stream, vitd_err *err);

/* FP8 attention of the current batch. q8, k8, v8: device [T, H, Dp] E4M3; o8: device [T, H, Dp] E4M3 =
 * sat(O * SCALE_O); scalars: device slots (kernels.h): DESCALE_Q/K/V/S, SCALE_S, SCALE_O read, AMAX_S, AMAX_O
 * written. One launch, or with fp8_split one packed launch plus one per large image and a one-thread fold of
 * the amax values; AMAX_O then also covers the dummy rows (one V row per large image), an upper bound.
 * AMAX_S is cuDNN's max over its probability tiles (seen up to 1.75 for short images, not only <= 1). Looks up
 * (or builds) the plans on the first call after gpu_attn_begin. VITD_E_UNSUPPORTED if the context has no FP8. */
vitd_status gpu_attn_fp8(gpu_attn_ctx *c, const void *q8, const void *k8, const void *v8, void *o8,
                         float *scalars, cudaStream_t stream, vitd_err *err);

/* Builds (or touches) the full BF16 plan for one image of `len` tokens / the packed FP8 plan that a batch of
 * `n_images` with longest (packed) image `max_len` uses / the FP8 plan of one large image of `len` tokens
 * (fp8_split). For start-up warming; host only. */
vitd_status gpu_attn_prepare_full(gpu_attn_ctx *c, int len, vitd_err *err);
vitd_status gpu_attn_prepare_fp8(gpu_attn_ctx *c, int n_images, int max_len, vitd_err *err);
vitd_status gpu_attn_prepare_fp8_full(gpu_attn_ctx *c, int len, vitd_err *err);

/* The s_max an FP8 plan for a batch whose longest image is max_len is built for: max_len rounded up to a
 * multiple of max(64, 2^floor(log2(max_len)) / 16) (at most +6.25%, +63 tokens for short ones). */
int gpu_attn_fp8_bucket(const gpu_attn_ctx *c, int max_len);

/* Deferred plan builds, for a server (no batch ever waits 50-170 ms for a plan build): with defer on, a missing
 * full plan leaves its image in the packed launch, and gpu_attn_fp8_ready reports a missing FP8 plan instead of
 * building it; the keys are remembered (up to 64, deduplicated) and gpu_attn_build_pending builds up to max_plans
 * of them, leaving the count still pending in *left. Call it only with no batch in flight (it may evict any plan). gpu_attn_fp8 itself still builds
 * on miss (an explicit FP8 request). Off by default; switch it on after start-up warming. */
void gpu_attn_set_defer(gpu_attn_ctx *c, int on);
int gpu_attn_pending(const gpu_attn_ctx *c);
vitd_status gpu_attn_build_pending(gpu_attn_ctx *c, int max_plans, int *left, vitd_err *err);
/* After gpu_attn_begin: *ready = 1 when the batch's FP8 plans are at hand (looked up and pinned, as gpu_attn_fp8
 * would), 0 when one is missing and building is deferred (it is then pending). Errors as gpu_attn_fp8's. */
vitd_status gpu_attn_fp8_ready(gpu_attn_ctx *c, int *ready, vitd_err *err);

/* Short descriptions of the current batch's plan choice, BF16 ("packed b=4 s=1024", "full x1 + packed b=4
 * s=1024") and FP8 ("fp8 b=3 s=1024", "fp8 own x1 + b=3 s=1024"; empty before the batch's first gpu_attn_fp8),
 * for logs and benchmarks. Valid until the next gpu_attn_begin. */
const char *gpu_attn_batch_desc(const gpu_attn_ctx *c);
const char *gpu_attn_fp8_desc(const gpu_attn_ctx *c);

#ifdef __cplusplus
}
#endif
#endif
