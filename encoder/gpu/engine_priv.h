/* engine_priv.h — the GPU engine's private types, shared by its files: gpu_engine.c (creation, the forward pass,
 * pipelining), engine_lin8.c (FP8 linear layers: E4M3 weights, activation scales, the auto table) and
 * engine_graph.c (CUDA graphs of the block segments). Nothing outside encoder/gpu includes it. */
#ifndef VITD_ENGINE_PRIV_H
#define VITD_ENGINE_PRIV_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "attn_route.h"
#include "cpu_ops.h"
#include "gpu_attn.h"
#include "gpu_common.h"
#include "gpu_engine.h"
#include "gpu_gemm.h"

#define ENGINE_GEMM_WORKSPACE ((size_t)32 << 20)
#define ENGINE_CHUNK_ROWS 4096    /* pixel rows per upload chunk (a multiple of 64 keeps GEMM pointers aligned) */
#define ENGINE_MAX_CHUNKS 64
#define ENGINE_PROF_MARKS 1024
#define ENGINE_MEM_MARGIN ((size_t)512 << 20) /* cuDNN/cuBLAS handles, kernels' code, plan workspaces */
#define ENGINE_GRAPHS 64          /* captured block segments kept (LRU) */

/* ---- weights ---- */

typedef struct {
    uint16_t *n1w, *n1b;     /* [d] */
    uint16_t *qkv_w, *qkv_b; /* [3d, d], [3d] */
    uint16_t *proj_w;        /* [d, H*dp]: proj weight with zero columns at the pad lanes */
    uint16_t *proj_b;        /* [d] */
    uint16_t *n2w, *n2b;     /* [d] */
    uint16_t *fc1_w, *fc1_b; /* [I, d], [I] */
    uint16_t *fc2_w, *fc2_b; /* [d, I], [d] */
    /* FP8 linear layers (engine_lin8.c): the same four weights in E4M3, per-tensor descales in d_wscale */
    uint8_t *qkv_w8, *proj_w8, *fc1_w8, *fc2_w8;
} eng_block;

typedef struct {
    uint16_t *nw, *nb;       /* [d] (final, pre-shuffle) or [g*d] (deepstack, post-shuffle) */
    uint16_t *fc1_w, *fc1_b; /* [g*d, g*d], [g*d] */
    uint16_t *fc2_w, *fc2_b; /* [Dout, g*d], [Dout] */
} eng_merger;

/* Profiling stages (device stages first). */
enum {
    ST_EMBED, ST_POS_ROPE, ST_LN, ST_QKV, ST_ROPE_PACK, ST_ATTN, ST_PROJ, ST_FC1, ST_FC2, ST_DEEPSTACK, ST_MERGER,
    ST_FP8_QUANT, ST_FP8_DEQUANT, ST_LIN8_SCALES, ST_D2H_TAIL, ST_HOST_IN, ST_HOST_OUT, ST_HOST_WAIT, ST_WALL,
    ST_COUNT
};

/* ---- FP8 linear layers ---- */

enum { LIN8_QKV = 1, LIN8_PROJ = 2, LIN8_FC1 = 4, LIN8_FC2 = 8, LIN8_ALL = 15 };
enum { LIN8_MODE_BF16 = 0, LIN8_MODE_FP8, LIN8_MODE_AUTO };
#define LIN8_ROUTE_MAX 8


/* ---- host worker pool (gpu_engine.c) ---- */

typedef struct {
    pthread_t *tid;
    int n_workers;         /* threads besides the caller */
    int n_started;
    pthread_mutex_t mu;
    pthread_cond_t cv_work, cv_done;
    unsigned long gen;     /* job number, guarded by mu */
    int pending;           /* workers still on the current job, guarded by mu */
    int stop;              /* guarded by mu */
    int parts;             /* parts of the current job (<= n_workers + 1) */
    cpu_range_fn fn;
    void *ctx;
    size_t n;
} host_pool;

typedef struct {
    host_pool *p;
    int index;             /* this worker's part is index + 1 */
} pool_arg;

/* One batch in flight (ENGINE_SLOTS of them: vitd.h's pipeline): its pinned staging, its geometry, its output
 * copies' completion events and the caller's batch (output pointers). A slot is written by submit and is free
 * again after the wait that finishes its batch, by which time every copy that read or wrote its staging is done. */
typedef struct {
    uint16_t *h_pix;   /* [N, K] */
    uint16_t *h_out;   /* [n_out][N/g, Dout] */
    int32_t *h_tok;    /* [N, 4] */
    int32_t *h_cu;     /* [max_images + 1] */
    int *h_lens;       /* [max_images] (plain heap) */
    size_t *row0;      /* [max_images + 1] first batch row (patch) of each image */
    cudaEvent_t ev_d2h[1 + VITD_MAX_DEEPSTACK];
    vitd_batch b;
    int n_tokens, n_seg, fp8, lin, want_ds;
    double t_submit, host_in;
} eng_slot;

#define ENGINE_SLOTS VITD_ENCODER_PIPELINE

/* What one batch runs: its tokens and paths (decided at submit). */
typedef struct {
    int N;
    int n_seg;         /* segments (images) */
    int fp8;           /* FP8 attention */
    unsigned lin;      /* GEMMs in FP8 (LIN8_* bits); 0 = all BF16 */
    int lin_calib;     /* dynamic FP8 linear's first batch: BF16 GEMMs recording the inputs' amax */
} eng_pass;

typedef struct eng_graph eng_graph;

struct gpu_engine {
    vitd_vision_config cfg;
    int device;
    char device_name[256];
    int d, I, H, hd, dp, Dout, K, side, m, g, n_out; /* n_out = 1 + n_deepstack output slots */
    size_t max_tokens;
    int max_images;
    int host_threads;
    host_pool pool;          /* host_threads - 1 workers for the host conversions */

    /* weights: one device allocation */
    void *d_weights;
    size_t weight_bytes;
    uint16_t *patch_w, *patch_b; /* [d, K], [d] */
    float *pos_table;            /* [side*side, d] float32 */
    float *inv_freq;             /* [hd/4] */
    eng_block *blocks;
    eng_merger merger, ds[VITD_MAX_DEEPSTACK];

    /* activations: one device allocation, sized for max_tokens (+ attention slack rows) */
    void *d_act;
    size_t act_bytes;
    uint16_t *pix;           /* [N, K] */
    uint16_t *x, *h;         /* [N, d] residual stream; LayerNorm output */
    uint16_t *qkv;           /* [N, 3d]; also the mergers' fc1 output [N/g, g*d] */
    uint16_t *q, *k, *v, *o; /* [N + slack, H, dp] */
    uint16_t *mlp;           /* [N, I] */
    uint16_t *out[1 + VITD_MAX_DEEPSTACK]; /* [N/g, Dout]: slot 0 final merger, slot 1+j deepstack j */
    float *cos_t, *sin_t;    /* [N, hd/2] */
    int32_t *tok;            /* [N, 4] {row, col, h, w} */
    int32_t *cu;             /* [max_images + 1] */

    /* batches in flight, oldest at slot[head] */
    eng_slot slot[ENGINE_SLOTS];
    int head, n_flight;

    /* streams: compute, uploads (pixels), downloads (outputs); the two copy directions never queue behind each
     * other, so the next batch's pixels go up while this batch's outputs wait for their kernels */
    cudaStream_t s_main, s_up, s_down;
    cudaEvent_t ev_chunk[ENGINE_MAX_CHUNKS];
    cudaEvent_t ev_embed;                         /* patch embedding done: the device pixel buffer is free */
    cudaEvent_t ev_out[1 + VITD_MAX_DEEPSTACK];   /* output slot written (compute stream) */
    cudaEvent_t ev_out_free[1 + VITD_MAX_DEEPSTACK]; /* output slot's last D2H copy done: may be written again */
    gpu_gemm *gemm;
    gpu_attn_ctx *attn;

    /* FP8 attention (fp8_kernels.h has the per-layer call order and the state block layout) */
    attn_mode attn_setting;      /* what the options asked for */
    int fp8_ok;                  /* the FP8 path is ready: buffers, state, plans */
    int fp8_static;              /* static scales from a file: no amax, no ring */
    int fp8_hist;                /* amax ring length (0 with static scales) */
    size_t fp8_stride;           /* floats per state block (fp8_state_floats) */
    float *d_fp8;                /* [depth + 1][fp8_stride]: one state block per layer, then the timing probe's */
    void *d_fp8_buf;             /* one allocation for q8, k8, v8, o8 */
    uint8_t *q8, *k8, *v8, *o8;  /* [N + slack, H, dp] E4M3 */
    long *fp8_steps;             /* [depth] FP8 steps run per layer (host count: first-batch pre-pass) */
    char *fp8_save_path;         /* auto-save target or NULL */
    double fp8_save_margin;
    int fp8_saved;               /* the auto-save has been attempted */
    float *d_calib;              /* [depth][4] amax of Q, K, V over all batches (fp8_calibrate), or NULL */
    attn_route_entry route[ATTN_ROUTE_MAX]; /* auto: measured shapes and decisions */
    int n_route;
    int route_any_fp8;           /* some shape routes to FP8 */
    int force;                   /* -1: by setting; 0: bf16; 1: fp8 (gpu_engine_set_attn) */
    int defer;                   /* opts->defer_plan_builds (set after start-up warming) */
    char *route_file;            /* opts->attn_route_file or NULL */
    long deferred_fp8;           /* batches auto ran BF16 because their FP8 plan was still being deferred */
    int last_path;               /* -1 none, 0 bf16, 1 fp8 */
    char fp8_fallback[300];      /* why FP8 does not run though allowed ("" otherwise) */

    /* FP8 linear layers (engine_lin8.c) */
    int lin_setting;             /* LIN8_MODE_*: what the options asked for */
    unsigned lin_mask;           /* the GEMMs an FP8-linear batch runs in FP8 (LIN8_QKV | ...) */
    int lin_ok;                  /* E4M3 weights and scale state ready */
    int lin_static;              /* activation scales from a file: no amax, no ring */
    int lin_record;              /* calibration (fp8_calibrate): BF16 GEMMs recording the inputs' amax in d_lin */
    int lin_hist;                /* ring length (0 static) */
    size_t lin_stride;           /* floats per layer state block (lin8_state_floats) */
    void *d_lin8;                /* one allocation: E4M3 weights, weight descales, state blocks */
    float *d_wscale;             /* [depth][4] weight descales: qkv, proj, fc1, fc2 */
    float *d_lin;                /* [depth][lin_stride] activation scale state (fp8_kernels.h LIN8_*) */
    uint8_t *h8, *mlp8;          /* E4M3 activations (in d_act when lin_setting != bf16): [N, d], [N, I] */
    long lin_steps;              /* batches that ran FP8 linear or recorded the first amax */
    gpu_engine_lin_entry lin_route[LIN8_ROUTE_MAX]; /* auto: GEMM times per token count */
    int n_lin_route;
    int lin_force;               /* -1: by setting; 0: bf16; 1: fp8 (gpu_engine_set_linear) */
    int last_lin;                /* -1 none, 0 bf16, 1 fp8 */
    char lin_fallback[200];      /* why FP8 linear does not run though allowed ("" otherwise) */

    /* BF16 attention of a batch of at most attn_short_max tokens: vitd's own rotary + attention kernel
     * (kernels/attn_rope.cu) instead of rotary pack + cuDNN; 0 = never (engine_short_setup measures it) */
    int attn_short_max;
    int short_tiling[ATTN_SHORT_LENS]; /* its tiling (ATTN_ROPE_*) per length bucket (attn_short_tiling) */
    int short_force;             /* >= 0: the start-up measurement forces this tiling */

    /* CUDA graphs of the block segments (engine_graph.c) */
    int graphs_on;
    size_t graph_max_tokens;
    eng_graph *graphs;           /* [ENGINE_GRAPHS] */
    long graph_replays, graph_captures, graph_failures;

    /* profiling */
    int prof_on;
    cudaEvent_t *prof_ev; /* [ENGINE_PROF_MARKS] */
    int prof_stage[ENGINE_PROF_MARKS];
    int prof_n;
    double prof_ms[ST_COUNT];
    int prof_calls[ST_COUNT];
    int prof_valid;
};

#define KTRY(call) CUDA_TRY(call) /* a kernel launcher's cudaError_t */

/* engine_host.c: the worker pool (fn over contiguous parts of [0, n) or [begin, end), one per worker plus the
 * caller, parts of at least min_items; returns when all are done) and nothing else of the host side */
void engine_pool_start(host_pool *p, int n_workers);
void engine_pool_stop(host_pool *p);
void engine_pool_run(host_pool *p, size_t n, size_t min_items, cpu_range_fn fn, void *ctx);
void engine_pool_run_range(host_pool *p, size_t begin, size_t end, size_t min_items, cpu_range_fn fn, void *ctx);

/* engine_attn.c */
/* The attention step of block `layer` on pass p's path (p->fp8: FP8; keep_o8: the projection reads o8 itself, no
 * dequantisation, and the caller runs the ring update after it). */
vitd_status engine_attention(gpu_engine *g, const eng_pass *p, int layer, int keep_o8, vitd_err *err);
/* Sets attn_short_max and the tilings from the options, measuring them (one image of 64 ... 2048 tokens, the cuDNN
 * path and each own tiling timed; shared per process, attn_route.h) when they leave it to the engine; logged. A
 * failed measurement leaves the own kernel off (error only when the device is lost). */
vitd_status engine_short_setup(gpu_engine *g, int setting, vitd_err *err);
/* The attention path of a batch of n_seg segments whose longest has max_len tokens: 1 = FP8. */
int engine_choose_fp8(const gpu_engine *g, int n_seg, int max_len);
/* Gets the FP8 path ready (plans; auto: the timing table). On failure *dead says whether the device is lost. */
vitd_status engine_fp8_setup(gpu_engine *g, int *dead, vitd_err *err);
/* Writes the dynamic scales once to fp8_save_scales (one device sync). */
void engine_fp8_autosave(gpu_engine *g);

/* engine_forward.c */
void engine_prof_mark(gpu_engine *g, int stage);
/* Enqueues blocks [i0, i1) of pass p on the compute stream (no host sync, no event: graph-capturable when every
 * FP8 layer in it has run before). */
vitd_status engine_blocks(gpu_engine *g, const eng_pass *p, int i0, int i1, vitd_err *err);

/* engine_lin8.c */
/* Reads linear_dtype and linear_fp8_gemms (before the memory plan: FP8 activations are planned when not bf16). */
vitd_status lin8_parse(gpu_engine *g, const vitd_encoder_opts *opts, vitd_err *err);
/* Device bytes of the FP8 linear weights and state (0 for bf16). */
size_t lin8_bytes(const gpu_engine *g);
/* After the BF16 weights are up and the GEMM context and streams exist: E4M3 weights, the scale state, and for
 * auto the timing table. */
vitd_status lin8_setup(gpu_engine *g, const vitd_encoder_opts *opts, vitd_err *err);
void lin8_free(gpu_engine *g);
/* The FP8 GEMMs of a batch of N tokens whose attention path is fp8 (LIN8_* bits, 0 = BF16). */
unsigned lin8_choose(const gpu_engine *g, int N);
/* After the last block of a pass that ran FP8 linear or recorded amax: the ring update (dynamic scales). */
vitd_status lin8_end_pass(gpu_engine *g, const eng_pass *p, vitd_err *err);

/* engine_graph.c */
/* Runs blocks [i0, i1) of the batch in slot sl: replays its CUDA graph when one was captured for this exact
 * batch shape and path, captures one on the second sighting of the shape, else launches plainly
 * (engine_blocks). Graphs are off with graphs_on 0, while profiling, above graph_max_tokens, and for a pass whose
 * FP8 layers have a first step in it. */
vitd_status graph_segment(gpu_engine *g, const eng_pass *p, const eng_slot *sl, int i0, int i1, vitd_err *err);
void graph_free_all(gpu_engine *g);

#endif
