/* attn_route.h — which attention path a GPU batch takes: the attn_dtype setting, whether FP8 attention can run at
 * all (runtime cuDNN version and compute capability), and the "auto" routing table that sends each batch to the
 * path measured faster for its shape. Pure functions, no CUDA: tested on any machine (tests/test_attn_route.c);
 * the GPU engine (gpu_engine.c) measures the timings and calls these.
 *
 * auto, how it works: at start-up the engine times the attention step of both paths (BF16: rotary + split + pad,
 * cuDNN BF16; FP8: rotary + quantise + pad + amax, cuDNN FP8, dequantise + scale update) on the shapes of
 * attn_route_shapes (one image of 256, 512, ... tokens; 4 and 16 images of 256, 512, 1024, 4096), and
 * attn_route_decide marks a shape FP8 only where FP8 measured at least `margin` faster and at every longer
 * measured length of the same image count too. A batch (n segments, longest max_len tokens) then takes the
 * decision of the shape it dominates (attn_route_pick): the longest measured length <= max_len, among those the
 * largest measured image count <= n; a batch below every shape (e.g. one image of 100 tokens) runs BF16. FP8's
 * advantage grows with length and with image count (bench/RESULTS.md), so a batch that dominates an FP8-faster
 * shape is at least as favourable to FP8: auto never routes to FP8 where it measured slower.
 */
#ifndef VITD_ATTN_ROUTE_H
#define VITD_ATTN_ROUTE_H

#include <stddef.h>

#include "vitd.h"

typedef enum { ATTN_MODE_AUTO = 0, ATTN_MODE_FP8 = 1, ATTN_MODE_BF16 = 2 } attn_mode;

/* Lowest runtime cuDNN (cudnnGetVersion()) with correct FP8 attention: 9.17.1 (9.14 is wrong above 1024 tokens). */
#define ATTN_FP8_MIN_CUDNN 91701
/* Most shapes attn_route_shapes makes. */
#define ATTN_ROUTE_MAX 32
/* Default: FP8 must be at least 2% faster to be chosen. */
#define ATTN_ROUTE_MARGIN 0.02

/* "auto", "fp8" or "bf16" (NULL or "" = auto) into *out. Returns 0, or -1 for anything else. */
int attn_mode_parse(const char *s, attn_mode *out);
const char *attn_mode_name(attn_mode m);

/* 1 when FP8 attention can run with this runtime cuDNN version and compute capability; otherwise 0 and a
 * sentence saying why in why[why_len] (e.g. "cuDNN 91400 < 9.17.1 (...)", "compute capability 8.9 < 9.0"). */
int attn_fp8_supported(int cudnn_version, int cc_major, int cc_minor, char *why, size_t why_len);

/* One measured shape: n_images segments, the longest (all, as measured) max_len tokens. */
typedef struct {
    int n_images;
    int max_len;
    double ms_bf16, ms_fp8; /* attention step per layer, ms; < 0 = not measured (that path failed) */
    int fp8;                /* decision: 1 = FP8 */
} attn_route_entry;

/* The shapes to measure for an engine of these limits: one image of 256, 512, ... up to
 * min(max_tokens, max_seqlen, 65536) tokens, then 4 and 16 images of 256, 512, 1024 and 4096 tokens where they fit
 * (n <= max_images, n * len <= max_tokens). Timings set to -1, fp8 to 0. Returns the count (<= max). */
int attn_route_shapes(size_t max_tokens, int max_images, int max_seqlen, attn_route_entry *out, int max);

/* Sets every entry's decision: fp8 = 1 iff both timings are measured and ms_fp8 < (1 - margin) * ms_bf16, and
 * the same holds for every longer entry with the same image count. */
void attn_route_decide(attn_route_entry *t, int n, double margin);

/* The entry that routes a batch of n_images segments whose longest has max_len tokens (the rule above), or -1
 * when the batch is below every entry (then BF16). */
int attn_route_pick(const attn_route_entry *t, int n, int n_images, int max_len);

/* 1 if a batch should run FP8 by the table (attn_route_pick's entry decides FP8), else 0. */
int attn_route_fp8(const attn_route_entry *t, int n, int n_images, int max_len);

/* The table as one line per entry for the log: "1x4096 bf16 0.252 ms fp8 0.217 ms (1.16x) -> fp8". */
void attn_route_format(const attn_route_entry *t, int n, char *buf, size_t len);

/* ---- vitd's own BF16 attention for small batches (kernels/attn_rope.cu; the engine's attn_short_max) ----
 * At start-up the engine times, for one image of ATTN_SHORT_LEN0 << i tokens (i < ATTN_SHORT_LENS, up to its
 * max_batch_tokens), the BF16 attention step on the cuDNN path and on its own kernel in each tiling. The
 * measurements are shared by every engine of the process on that GPU and model shape (the first one measures), so
 * engines with the same max_batch_tokens agree on the path, hence on the bits, for every batch. An engine with a
 * smaller max_batch_tokens measures fewer lengths and may stop its reach lower (one of 200 tokens reaches at most
 * 128 where one of 16384 reaches 256): a batch between the two reaches then runs cuDNN on the one and the own
 * kernel on the other. */
#define ATTN_SHORT_LEN0 64
#define ATTN_SHORT_LENS 6 /* 64 ... 2048 */
#define ATTN_SHORT_TILINGS 3

typedef struct {
    double ms_cudnn;                     /* <= 0: not measured */
    double ms_own[ATTN_SHORT_TILINGS];   /* per tiling */
} attn_short_entry;

/* From entries t[i] (length ATTN_SHORT_LEN0 << i, i < n): the own kernel's reach, the longest length <= cap up to
 * which at every length the fastest tiling was at least `margin` faster than cuDNN (0: none, also where an entry
 * in that range is not measured), and each entry's fastest tiling in tiling[i] (0 where not measured). */
int attn_short_decide(const attn_short_entry *t, int n, int cap, double margin, int *tiling);

/* The tiling for a batch of n_tokens (<= the reach): that of the shortest measured length >= n_tokens. */
int attn_short_tiling(const int *tiling, int n, int n_tokens);

/* ---- a saved table (attn_route_file) ----
 * The timings depend on the GPU, the cuDNN build, the attention shape and the FP8 scaling, so a saved table names
 * them and is reused only where every one matches; a restart then skips the start-up timing (~1.5-2.6 s on the 8B
 * tower). JSON: {"vitd_attn_route": 1, "measured_on": {"device", "cc", "cudnn", "heads", "head_dim",
 * "head_dim_padded", "fp8_scaling", "fp8_history", "max_tokens", "max_images", "attn_short_max"}, "shapes":
 * [{"images", "max_len",
 * "bf16_ms", "fp8_ms"}, ...]}.
 * Decisions are not stored: the loader's caller recomputes them (attn_route_decide). */
typedef struct {
    char device[256];         /* GPU name */
    int cc_major, cc_minor;
    int cudnn_version;        /* runtime cudnnGetVersion() */
    int n_heads, head_dim, head_dim_padded;
    int fp8_static;           /* 1: static scales (no amax, no ring update) */
    int fp8_history;          /* ring length of dynamic scaling (0 with static scales) */
    int max_tokens, max_images; /* the engine's limits, which decide the measured shapes (attn_route_shapes) */
    int attn_short_max;       /* the BF16 step's own-kernel reach (attn_short_max) its BF16 timings ran with */
} attn_route_key;

/* Writes the table atomically (a reader sees the old file or the new one). VITD_E_IO on failure. */
vitd_status attn_route_save(const char *path, const attn_route_key *key, const attn_route_entry *t, int n,
                            vitd_err *err);
/* Reads a table written by attn_route_save into t[max] (*n entries, decisions cleared). Errors: VITD_E_IO (no
 * file, unreadable), VITD_E_INVALID_ARG (not such a table, naming what is wrong), VITD_E_UNSUPPORTED (measured on
 * something else: the message names the field and both values). */
vitd_status attn_route_load(const char *path, const attn_route_key *key, attn_route_entry *t, int max, int *n,
                            vitd_err *err);

#endif
