/* gpu_engine.c — the GPU engine (gpu_engine.h): creation and teardown. Checks the device and options, plans and
 * uploads the BF16 weights (one device allocation), plans the activations for max_batch_tokens (one allocation),
 * sets up the FP8 attention state and (engine_lin8.c) the FP8 linear layers, pinned staging per batch in flight,
 * three streams, the cuBLASLt and cuDNN contexts.
 *
 * The engine's other files (types in engine_priv.h):
 *   engine_forward.c  the forward pass, pipelining (submit / wait), profiling
 *   engine_attn.c     the attention step (BF16, FP8) and the FP8 attention set-up (plans, the auto table, scales)
 *   engine_lin8.c     FP8 linear layers (E4M3 weights, activation scales, the auto table)
 *   engine_graph.c    CUDA graphs of the block segments
 *   engine_host.c     the host worker pool and the f32 <-> bf16 conversions
 */
#include "gpu_engine.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "checkpoint.h"
#include "engine_priv.h"
#include "fp8_kernels.h"
#include "fp8_scales.h"
#include "util.h"

/* ---- weight upload ---- */

/* Bump allocator over one device region; sizes rounded to 256 bytes (cuBLASLt's preferred alignment). */
typedef struct {
    char *base;
    size_t used, cap;
} bump;

static void *bump_take(bump *b, size_t bytes) {
    size_t n = (bytes + 255) & ~(size_t)255;
    VITD_ASSERT(b->used + n <= b->cap);
    void *p = b->base + b->used;
    b->used += n;
    return p;
}

static size_t round256(size_t n) { return (n + 255) & ~(size_t)255; }

/* Host scratch for one tensor's conversion (grown as needed). */
typedef struct {
    float *f32;
    uint16_t *bf16;
    size_t cap; /* elements */
} up_scratch;

static vitd_status scratch_reserve(up_scratch *s, size_t n, vitd_err *err) {
    if (n <= s->cap) return VITD_OK;
    free(s->f32);
    free(s->bf16);
    s->f32 = malloc(n * sizeof(float));
    s->bf16 = malloc(n * sizeof(uint16_t));
    s->cap = s->f32 && s->bf16 ? n : 0;
    if (!s->cap) return vitd_fail(err, VITD_E_NOMEM, "gpu engine: cannot allocate %zu MB to convert weights", n >> 18);
    return VITD_OK;
}

/* Looks a tensor up and checks its element count. */
static vitd_status tensor_check(const vitd_model *m, const char *name, size_t numel, const st_tensor **out,
                                vitd_err *err) {
    const st_tensor *t = checkpoint_tensor(m, name);
    if (!t) return vitd_fail(err, VITD_E_MODEL, "tensor %s: missing from the checkpoint", name);
    if ((size_t)st_numel(t) != numel)
        return vitd_fail(err, VITD_E_MODEL, "tensor %s: %lld elements, the config needs %zu", name,
                         (long long)st_numel(t), numel);
    *out = t;
    return VITD_OK;
}

/* Uploads a tensor as bf16 into dst (numel elements). BF16 tensors are copied as stored; F16/F32 go through
 * float32 and round to nearest even. */
static vitd_status upload_bf16(const vitd_model *m, const char *name, size_t numel, uint16_t *dst, up_scratch *s,
                               vitd_err *err) {
    vitd_status st;
    const st_tensor *t = NULL;
    if ((st = tensor_check(m, name, numel, &t, err)) != VITD_OK) return st;
    if (t->dtype == ST_BF16) {
        CUDA_TRY(cudaMemcpy(dst, t->data, numel * 2, cudaMemcpyHostToDevice));
        return VITD_OK;
    }
    if ((st = scratch_reserve(s, numel, err)) != VITD_OK) return st;
    if ((st = checkpoint_tensor_f32(m, name, s->f32, err)) != VITD_OK) return st;
    gpu_engine_host_to_bf16(s->f32, s->bf16, numel);
    CUDA_TRY(cudaMemcpy(dst, s->bf16, numel * 2, cudaMemcpyHostToDevice));
    return VITD_OK;
fail:
    return st;
}

/* Uploads the attention output projection [d, H*hd] as [d, H*dp] with zero columns at each head's pad lanes. */
static vitd_status upload_proj_padded(const gpu_engine *g, const vitd_model *m, const char *name, uint16_t *dst,
                                      up_scratch *s, vitd_err *err) {
    vitd_status st;
    const size_t d = (size_t)g->d, rowp = (size_t)g->H * g->dp;
    if ((st = scratch_reserve(s, d * rowp, err)) != VITD_OK) return st;
    const st_tensor *t;
    if ((st = tensor_check(m, name, d * d, &t, err)) != VITD_OK) return st;
    if ((st = checkpoint_tensor_f32(m, name, s->f32, err)) != VITD_OK) return st;
    memset(s->bf16, 0, d * rowp * sizeof(uint16_t));
    for (size_t r = 0; r < d; r++)
        for (int hh = 0; hh < g->H; hh++)
            gpu_engine_host_to_bf16(s->f32 + r * d + (size_t)hh * g->hd, s->bf16 + r * rowp + (size_t)hh * g->dp,
                                    (size_t)g->hd);
    CUDA_TRY(cudaMemcpy(dst, s->bf16, d * rowp * 2, cudaMemcpyHostToDevice));
    return VITD_OK;
fail:
    return st;
}

/* Bytes of the weight arena (must match upload_weights' takes). */
static size_t weights_size(const gpu_engine *g) {
    const size_t d = g->d, I = g->I, gd = (size_t)g->g * d, Dout = g->Dout;
    size_t n = round256(d * g->K * 2) + round256(d * 2) + round256((size_t)g->side * g->side * d * 4) +
               round256((size_t)g->hd / 4 * 4);
    size_t blk = 4 * round256(d * 2) + round256(3 * d * d * 2) + round256(3 * d * 2) +
                 round256(d * (size_t)g->H * g->dp * 2) + round256(d * 2) + round256(I * d * 2) + round256(I * 2) +
                 round256(d * I * 2) + round256(d * 2);
    n += blk * (size_t)g->cfg.depth;
    for (int j = -1; j < g->cfg.n_deepstack; j++) {
        size_t nd = j < 0 ? d : gd;
        n += 2 * round256(nd * 2) + round256(gd * gd * 2) + round256(gd * 2) + round256(Dout * gd * 2) +
             round256(Dout * 2);
    }
    return n;
}

static vitd_status upload_weights(gpu_engine *g, const vitd_model *m, vitd_err *err) {
    vitd_status st = VITD_OK;
    const size_t d = g->d, I = g->I, gd = (size_t)g->g * d, Dout = g->Dout;
    up_scratch s = {0};
    char name[96];
    bump b = {g->d_weights, 0, g->weight_bytes};
#define UP(ptr, count, ...)                                                         \
    do {                                                                            \
        snprintf(name, sizeof name, __VA_ARGS__);                                   \
        (ptr) = bump_take(&b, (count) * 2);                                         \
        if ((st = upload_bf16(m, name, (count), (ptr), &s, err)) != VITD_OK) goto fail; \
    } while (0)

    UP(g->patch_w, d * g->K, "patch_embed.proj.weight"); /* [d, 3, T, P, P] read as [d, K] */
    UP(g->patch_b, d, "patch_embed.proj.bias");
    {
        const size_t np = (size_t)g->side * g->side * d;
        const st_tensor *t;
        g->pos_table = bump_take(&b, np * 4);
        if ((st = tensor_check(m, "pos_embed.weight", np, &t, err)) != VITD_OK) goto fail;
        if ((st = scratch_reserve(&s, np, err)) != VITD_OK) goto fail;
        if ((st = checkpoint_tensor_f32(m, "pos_embed.weight", s.f32, err)) != VITD_OK) goto fail;
        CUDA_TRY(cudaMemcpy(g->pos_table, s.f32, np * 4, cudaMemcpyHostToDevice));
        float inv[512];
        cpu_rope_inv_freq(g->hd, g->cfg.rope_theta, inv);
        g->inv_freq = bump_take(&b, (size_t)g->hd / 4 * 4);
        CUDA_TRY(cudaMemcpy(g->inv_freq, inv, (size_t)g->hd / 4 * 4, cudaMemcpyHostToDevice));
    }
    for (int i = 0; i < g->cfg.depth; i++) {
        eng_block *bl = &g->blocks[i];
        UP(bl->n1w, d, "blocks.%d.norm1.weight", i);
        UP(bl->n1b, d, "blocks.%d.norm1.bias", i);
        UP(bl->qkv_w, 3 * d * d, "blocks.%d.attn.qkv.weight", i);
        UP(bl->qkv_b, 3 * d, "blocks.%d.attn.qkv.bias", i);
        snprintf(name, sizeof name, "blocks.%d.attn.proj.weight", i);
        bl->proj_w = bump_take(&b, d * (size_t)g->H * g->dp * 2);
        if ((st = upload_proj_padded(g, m, name, bl->proj_w, &s, err)) != VITD_OK) goto fail;
        UP(bl->proj_b, d, "blocks.%d.attn.proj.bias", i);
        UP(bl->n2w, d, "blocks.%d.norm2.weight", i);
        UP(bl->n2b, d, "blocks.%d.norm2.bias", i);
        UP(bl->fc1_w, I * d, "blocks.%d.mlp.linear_fc1.weight", i);
        UP(bl->fc1_b, I, "blocks.%d.mlp.linear_fc1.bias", i);
        UP(bl->fc2_w, d * I, "blocks.%d.mlp.linear_fc2.weight", i);
        UP(bl->fc2_b, d, "blocks.%d.mlp.linear_fc2.bias", i);
    }
    for (int j = -1; j < g->cfg.n_deepstack; j++) {
        eng_merger *mg = j < 0 ? &g->merger : &g->ds[j];
        const size_t nd = j < 0 ? d : gd;
        char pre[48];
        if (j < 0) snprintf(pre, sizeof pre, "merger");
        else snprintf(pre, sizeof pre, "deepstack_merger_list.%d", j);
        UP(mg->nw, nd, "%s.norm.weight", pre);
        UP(mg->nb, nd, "%s.norm.bias", pre);
        UP(mg->fc1_w, gd * gd, "%s.linear_fc1.weight", pre);
        UP(mg->fc1_b, gd, "%s.linear_fc1.bias", pre);
        UP(mg->fc2_w, Dout * gd, "%s.linear_fc2.weight", pre);
        UP(mg->fc2_b, Dout, "%s.linear_fc2.bias", pre);
    }
#undef UP
    VITD_ASSERT(b.used == g->weight_bytes);
fail:
    free(s.f32);
    free(s.bf16);
    return st;
}

/* ---- activation plan ---- */

/* Carves the activation buffers out of one region; with base NULL only counts. Returns the bytes used. */
static size_t plan_activations(gpu_engine *g, char *base) {
    const size_t N = g->max_tokens, d = g->d, Nm = N / g->g;
    const size_t rows_attn = N + GPU_ATTN_SLACK_ROWS, row_attn = (size_t)g->H * g->dp;
    bump b = {base, 0, (size_t)-1};
    uint16_t **attn_bufs[4] = {&g->q, &g->k, &g->v, &g->o};
#define TAKE(ptr, bytes)                                  \
    do {                                                  \
        void *p_ = base ? bump_take(&b, (bytes)) : NULL;  \
        if (!base) b.used += round256(bytes);             \
        (ptr) = p_;                                       \
    } while (0)
    TAKE(g->pix, N * g->K * 2);
    TAKE(g->x, N * d * 2);
    TAKE(g->h, N * d * 2);
    TAKE(g->qkv, N * 3 * d * 2);
    for (int i = 0; i < 4; i++) TAKE(*attn_bufs[i], rows_attn * row_attn * 2);
    TAKE(g->mlp, N * (size_t)g->I * 2);
    if (g->lin_setting != LIN8_MODE_BF16) {
        TAKE(g->h8, N * d);
        TAKE(g->mlp8, N * (size_t)g->I);
    }
    for (int j = 0; j < g->n_out; j++) TAKE(g->out[j], Nm * g->Dout * 2);
    TAKE(g->cos_t, N * (size_t)g->hd / 2 * 4);
    TAKE(g->sin_t, N * (size_t)g->hd / 2 * 4);
    TAKE(g->tok, N * 4 * 4);
    TAKE(g->cu, ((size_t)g->max_images + 1) * 4);
#undef TAKE
    return b.used;
}

/* ---- create / free ---- */

void gpu_engine_free(gpu_engine *g) {
    if (!g) return;
    if (g->s_main) cudaStreamSynchronize(g->s_main);
    if (g->s_up) cudaStreamSynchronize(g->s_up);
    if (g->s_down) cudaStreamSynchronize(g->s_down);
    graph_free_all(g);
    lin8_free(g);
    gpu_attn_free(g->attn);
    gpu_gemm_free(g->gemm);
    engine_pool_stop(&g->pool);
    for (int i = 0; i < ENGINE_MAX_CHUNKS; i++)
        if (g->ev_chunk[i]) cudaEventDestroy(g->ev_chunk[i]);
    for (int i = 0; i < 1 + VITD_MAX_DEEPSTACK; i++) {
        if (g->ev_out[i]) cudaEventDestroy(g->ev_out[i]);
        if (g->ev_out_free[i]) cudaEventDestroy(g->ev_out_free[i]);
    }
    if (g->ev_embed) cudaEventDestroy(g->ev_embed);
    for (int k = 0; k < ENGINE_SLOTS; k++) {
        eng_slot *sl = &g->slot[k];
        for (int i = 0; i < 1 + VITD_MAX_DEEPSTACK; i++)
            if (sl->ev_d2h[i]) cudaEventDestroy(sl->ev_d2h[i]);
        if (sl->h_pix) cudaFreeHost(sl->h_pix);
        if (sl->h_out) cudaFreeHost(sl->h_out);
        if (sl->h_tok) cudaFreeHost(sl->h_tok);
        if (sl->h_cu) cudaFreeHost(sl->h_cu);
        free(sl->h_lens);
        free(sl->row0);
    }
    if (g->prof_ev) {
        for (int i = 0; i < ENGINE_PROF_MARKS; i++)
            if (g->prof_ev[i]) cudaEventDestroy(g->prof_ev[i]);
        free(g->prof_ev);
    }
    if (g->s_main) cudaStreamDestroy(g->s_main);
    if (g->s_up) cudaStreamDestroy(g->s_up);
    if (g->s_down) cudaStreamDestroy(g->s_down);
    if (g->d_act) cudaFree(g->d_act);
    if (g->d_weights) cudaFree(g->d_weights);
    if (g->d_fp8) cudaFree(g->d_fp8);
    if (g->d_fp8_buf) cudaFree(g->d_fp8_buf);
    if (g->d_calib) cudaFree(g->d_calib);
    free(g->fp8_steps);
    free(g->fp8_save_path);
    free(g->route_file);
    free(g->blocks);
    free(g);
}

vitd_status gpu_engine_create(const vitd_model *m, const vitd_encoder_opts *opts, gpu_engine **out, vitd_err *err) {
    vitd_status st = VITD_OK;
    gpu_engine *g = NULL;
    fp8_qkv *scales = NULL;
    const vitd_vision_config *c = vitd_model_config(m);
    *out = NULL;
    int n_dev = 0;
    cudaError_t ce = cudaGetDeviceCount(&n_dev);
    if (ce != cudaSuccess || n_dev == 0)
        return vitd_fail(err, VITD_E_GPU, "no usable CUDA GPU: %s",
                         ce != cudaSuccess ? cudaGetErrorString(ce) : "cudaGetDeviceCount found 0 devices");
    if (opts->device < 0 || opts->device >= n_dev)
        return vitd_fail(err, VITD_E_INVALID_ARG, "device %d does not exist (%d CUDA device%s)", opts->device, n_dev,
                         n_dev == 1 ? "" : "s");
    struct cudaDeviceProp prop;
    CUDA_TRY(cudaGetDeviceProperties(&prop, opts->device));
    if (prop.major < 9)
        return vitd_fail(err, VITD_E_UNSUPPORTED, "GPU %d (%s) has compute capability %d.%d; the engine needs >= 9.0 "
                         "(Hopper)", opts->device, prop.name, prop.major, prop.minor);
    const int hd = c->hidden_size / c->num_heads;
    if (c->hidden_size % c->num_heads || hd % 4 || hd > 240 || c->hidden_size % 8 || c->spatial_merge_size < 1)
        return vitd_fail(err, VITD_E_MODEL, "gpu engine: hidden_size %d / num_heads %d: needs head_dim a multiple of "
                         "4 up to 240 and hidden_size a multiple of 8", c->hidden_size, c->num_heads);
    if (opts->max_batch_tokens < 4 || opts->max_batch_tokens > ((size_t)1 << 24))
        return vitd_fail(err, VITD_E_INVALID_ARG, "max_batch_tokens %zu outside [4, %d]", opts->max_batch_tokens,
                         1 << 24);

    g = xcalloc(1, sizeof *g);
    g->cfg = *c;
    g->device = opts->device;
    snprintf(g->device_name, sizeof g->device_name, "%s", prop.name);
    g->d = c->hidden_size;
    g->I = c->intermediate_size;
    g->H = c->num_heads;
    g->hd = hd;
    g->dp = (hd + 15) / 16 * 16;
    g->Dout = c->out_hidden_size;
    g->K = c->in_channels * c->temporal_patch_size * c->patch_size * c->patch_size;
    g->side = (int)lround(sqrt((double)c->num_position_embeddings));
    g->m = c->spatial_merge_size;
    g->g = g->m * g->m;
    g->n_out = 1 + c->n_deepstack;
    g->max_tokens = (opts->max_batch_tokens + (size_t)g->g - 1) / g->g * g->g;
    g->max_images = GPU_ENGINE_MAX_IMAGES;
    if (g->max_tokens / 256 > (size_t)g->max_images) g->max_images = (int)(g->max_tokens / 256);
    if (opts->max_batch_images > g->max_images) g->max_images = opts->max_batch_images;
    if (g->max_images > 4096) g->max_images = 4096;
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    g->host_threads = opts->threads > 0 ? opts->threads : (cores > 16 ? 16 : cores > 0 ? (int)cores : 1);
    engine_pool_start(&g->pool, g->host_threads - 1);
    g->blocks = xcalloc((size_t)c->depth, sizeof *g->blocks);
    for (int k = 0; k < ENGINE_SLOTS; k++) {
        g->slot[k].h_lens = xcalloc((size_t)g->max_images, sizeof *g->slot[k].h_lens);
        g->slot[k].row0 = xcalloc((size_t)g->max_images + 1, sizeof *g->slot[k].row0);
    }

    CUDA_TRY(cudaSetDevice(g->device));
    g->force = -1;
    g->last_path = -1;

    /* Attention path: what is asked, what the runtime allows (attn_route.h). */
    if (attn_mode_parse(opts->attn_dtype, &g->attn_setting) != 0) {
        st = vitd_fail(err, VITD_E_INVALID_ARG, "attn_dtype '%s' is not one of auto, fp8, bf16", opts->attn_dtype);
        goto fail;
    }
    if (opts->fp8_calibrate) g->attn_setting = ATTN_MODE_BF16; /* calibration measures the BF16 path's operands */
    gpu_attn_features feat;
    if ((st = gpu_attn_query(g->device, &feat, err)) != VITD_OK) goto fail;
    char why[160];
    const int fp8_can = attn_fp8_supported(feat.cudnn_version, feat.cc_major, feat.cc_minor, why, sizeof why);
    if (g->attn_setting == ATTN_MODE_FP8 && !fp8_can) {
        st = vitd_fail(err, VITD_E_UNSUPPORTED, "attn_dtype fp8: FP8 attention cannot run on GPU %d (%s, cuDNN %d): "
                       "%s; use attn_dtype auto or bf16", g->device, g->device_name, feat.cudnn_version, why);
        goto fail;
    }
    if (g->attn_setting == ATTN_MODE_AUTO && !fp8_can)
        snprintf(g->fp8_fallback, sizeof g->fp8_fallback, "%s", why);
    int want_fp8 = g->attn_setting != ATTN_MODE_BF16 && fp8_can;
    const int has_scales = opts->fp8_scales && *opts->fp8_scales;
    if (want_fp8 && has_scales) {
        scales = xcalloc((size_t)c->depth, sizeof *scales);
        if ((st = fp8_scales_load(opts->fp8_scales, c->depth, scales, err)) != VITD_OK) goto fail;
        g->fp8_static = 1;
    } else if (has_scales) {
        vitd_log(VITD_LOG_INFO, "gpu engine: fp8_scales %s not used for attention: it runs bf16", opts->fp8_scales);
    }
    g->fp8_hist = g->fp8_static ? 0 : opts->fp8_history > 0 ? opts->fp8_history : 16;
    g->fp8_stride = fp8_state_floats(g->fp8_hist);
    if (opts->attn_route_file && *opts->attn_route_file) g->route_file = xstrdup(opts->attn_route_file);
    if (opts->fp8_save_scales && *opts->fp8_save_scales) {
        if (!want_fp8 || g->fp8_static)
            vitd_log(VITD_LOG_WARN, "gpu engine: fp8_save_scales %s not used: %s", opts->fp8_save_scales,
                     g->fp8_static ? "the scales are static (fp8_scales)" : "attention runs bf16");
        else
            g->fp8_save_path = xstrdup(opts->fp8_save_scales);
        g->fp8_save_margin = opts->fp8_save_margin > 0 ? opts->fp8_save_margin : 1.5;
    }

    if ((st = lin8_parse(g, opts, err)) != VITD_OK) goto fail;
    g->lin_force = -1;
    g->last_lin = -1;
    g->graphs_on = !opts->no_cuda_graphs;
    g->graph_max_tokens = opts->graph_max_tokens ? opts->graph_max_tokens : 16384;

    /* Memory plan vs what the device has free. */
    g->weight_bytes = weights_size(g);
    g->act_bytes = plan_activations(g, NULL);
    const size_t attn_ws = gpu_attn_opts_default().workspace_bytes;
    const size_t fp8_one = round256((g->max_tokens + GPU_ATTN_SLACK_ROWS) * (size_t)g->H * g->dp);
    const size_t fp8_bytes = want_fp8 ? 4 * fp8_one + ((size_t)c->depth + 1) * g->fp8_stride * 4 : 0;
    const size_t need = g->weight_bytes + g->act_bytes + fp8_bytes + lin8_bytes(g) + ENGINE_GEMM_WORKSPACE +
                        attn_ws + ENGINE_MEM_MARGIN;
    size_t mem_free = 0, mem_total = 0;
    CUDA_TRY(cudaMemGetInfo(&mem_free, &mem_total));
    if (need > mem_free) {
        st = vitd_fail(err, VITD_E_NOMEM, "GPU %d (%s): max_batch_tokens %zu needs %zu MiB (weights %zu, "
                       "activations %zu, workspaces+margin %zu) but only %zu MiB of %zu are free",
                       g->device, g->device_name, g->max_tokens, need >> 20, g->weight_bytes >> 20, g->act_bytes >> 20,
                       (ENGINE_GEMM_WORKSPACE + attn_ws + ENGINE_MEM_MARGIN) >> 20, mem_free >> 20, mem_total >> 20);
        goto fail;
    }

    CUDA_TRY(cudaMalloc(&g->d_weights, g->weight_bytes));
    if ((st = upload_weights(g, m, err)) != VITD_OK) goto fail;
    CUDA_TRY(cudaMalloc(&g->d_act, g->act_bytes));
    VITD_ASSERT(plan_activations(g, g->d_act) == g->act_bytes);
    /* Attention slack rows must hold finite values; zero everything once. */
    CUDA_TRY(cudaMemset(g->d_act, 0, g->act_bytes));
    if (want_fp8) {
        /* E4M3 operands (zeroed: finite slack rows) and the state blocks (zero = no step, no amax) */
        CUDA_TRY(cudaMalloc(&g->d_fp8_buf, 4 * fp8_one));
        CUDA_TRY(cudaMemset(g->d_fp8_buf, 0, 4 * fp8_one));
        g->q8 = g->d_fp8_buf;
        g->k8 = g->q8 + fp8_one;
        g->v8 = g->k8 + fp8_one;
        g->o8 = g->v8 + fp8_one;
        const size_t state_bytes = ((size_t)c->depth + 1) * g->fp8_stride * 4;
        CUDA_TRY(cudaMalloc((void **)&g->d_fp8, state_bytes));
        CUDA_TRY(cudaMemset(g->d_fp8, 0, state_bytes));
        g->fp8_steps = xcalloc((size_t)c->depth, sizeof *g->fp8_steps);
        /* static scales: each layer's slots once; the timing probe (block `depth`) gets 1/448 (|x| <= 1) */
        for (int i = 0; i <= c->depth; i++) {
            float slots[FP8_STATE_AMAX] = {0};
            const float unit[3] = {1.0f / FP8_E4M3_MAX, 1.0f / FP8_E4M3_MAX, 1.0f / FP8_E4M3_MAX};
            const float sc3[3] = {i < c->depth && scales ? scales[i].q : unit[0],
                                  i < c->depth && scales ? scales[i].k : unit[1],
                                  i < c->depth && scales ? scales[i].v : unit[2]};
            if (i < c->depth && !g->fp8_static) continue;
            cpu_fp8_slots_fill(sc3, slots);
            CUDA_TRY(cudaMemcpy(g->d_fp8 + (size_t)i * g->fp8_stride, slots, sizeof slots, cudaMemcpyHostToDevice));
        }
    }
    if (opts->fp8_calibrate) {
        CUDA_TRY(cudaMalloc((void **)&g->d_calib, (size_t)c->depth * 4 * sizeof(float)));
        CUDA_TRY(cudaMemset(g->d_calib, 0, (size_t)c->depth * 4 * sizeof(float)));
    }

    const size_t N = g->max_tokens, Nm = N / g->g;
    for (int k = 0; k < ENGINE_SLOTS; k++) {
        eng_slot *sl = &g->slot[k];
        CUDA_TRY(cudaMallocHost((void **)&sl->h_pix, N * g->K * 2));
        CUDA_TRY(cudaMallocHost((void **)&sl->h_out, (size_t)g->n_out * Nm * g->Dout * 2));
        CUDA_TRY(cudaMallocHost((void **)&sl->h_tok, N * 4 * 4));
        CUDA_TRY(cudaMallocHost((void **)&sl->h_cu, ((size_t)g->max_images + 1) * 4));
        for (int i = 0; i < g->n_out; i++) CUDA_TRY(cudaEventCreate(&sl->ev_d2h[i]));
    }
    CUDA_TRY(cudaStreamCreateWithFlags(&g->s_main, cudaStreamNonBlocking));
    CUDA_TRY(cudaStreamCreateWithFlags(&g->s_up, cudaStreamNonBlocking));
    CUDA_TRY(cudaStreamCreateWithFlags(&g->s_down, cudaStreamNonBlocking));
    /* the zero fills and copies above ran on the legacy stream, which the non-blocking streams do not wait for */
    CUDA_TRY(cudaDeviceSynchronize());
    for (int i = 0; i < ENGINE_MAX_CHUNKS; i++)
        CUDA_TRY(cudaEventCreateWithFlags(&g->ev_chunk[i], cudaEventDisableTiming));
    CUDA_TRY(cudaEventCreateWithFlags(&g->ev_embed, cudaEventDisableTiming));
    for (int i = 0; i < g->n_out; i++) {
        CUDA_TRY(cudaEventCreate(&g->ev_out[i]));
        CUDA_TRY(cudaEventCreateWithFlags(&g->ev_out_free[i], cudaEventDisableTiming));
    }
    if ((st = gpu_gemm_create(ENGINE_GEMM_WORKSPACE, &g->gemm, err)) != VITD_OK) goto fail;
    gpu_gemm_set_tune(g->gemm, !opts->no_gemm_tune);
    gpu_gemm_set_fast_accum(g->gemm, !opts->fp8_precise_accum);

    gpu_attn_opts ao = gpu_attn_opts_default();
    ao.n_heads = g->H;
    ao.head_dim = g->hd;
    ao.head_dim_padded = g->dp;
    ao.max_batch = g->max_images;
    ao.max_seqlen = (int)N;
    ao.fp8 = want_fp8;
    if ((st = gpu_attn_create(g->device, &ao, &g->attn, err)) != VITD_OK) goto fail;
    if ((st = engine_short_setup(g, opts->attn_short_max, err)) != VITD_OK) goto fail;
    int dead = 0;
    if (want_fp8 && (st = engine_fp8_setup(g, &dead, err)) != VITD_OK) {
        char msg[sizeof err->msg];
        snprintf(msg, sizeof msg, "%s", err ? err->msg : "FP8 set-up failed");
        if (dead) goto fail;
        if (g->attn_setting == ATTN_MODE_FP8) {
            vitd_fail(err, st, "attn_dtype fp8: the FP8 attention plan cannot be built on GPU %d: %s", g->device, msg);
            goto fail;
        }
        snprintf(g->fp8_fallback, sizeof g->fp8_fallback, "%s", msg);
        want_fp8 = 0;
        st = VITD_OK;
    }
    g->fp8_ok = want_fp8;
    if ((st = lin8_setup(g, opts, err)) != VITD_OK) goto fail;
    g->defer = opts->defer_plan_builds != 0; /* from here on: the warming above built what it wanted */
    gpu_attn_set_defer(g->attn, g->defer);
    if (g->fp8_fallback[0])
        vitd_log(VITD_LOG_WARN, "gpu engine: attn_dtype auto: FP8 attention unavailable on GPU %d (%s): %s; every "
                 "batch runs BF16 attention", g->device, g->device_name, g->fp8_fallback);
    const gpu_attn_features *f = gpu_attn_features_of(g->attn);
    vitd_log(VITD_LOG_INFO,
             "gpu engine: device %d %s cc %d.%d, %d SMs, %zu MiB free of %zu; cuDNN %d (headers %d): native SDPA "
             "with sequence lengths %s, FP8 attention %s%s%s; attention %s (attn_dtype %s%s%s)",
             g->device, g->device_name, prop.major, prop.minor, prop.multiProcessorCount, mem_free >> 20,
             mem_total >> 20, f->cudnn_version, f->cudnn_header_version, f->unified_seqlen ? "yes" : "no",
             f->fp8 ? "possible" : "no", f->fp8 ? "" : ": ", f->fp8 ? "" : f->fp8_reason, gpu_engine_attn_dtype(g),
             attn_mode_name(g->attn_setting), g->fp8_ok ? (g->fp8_static ? ", static scales " : ", dynamic scales")
                                                        : "",
             g->fp8_ok && g->fp8_static ? opts->fp8_scales : "");
    vitd_log(VITD_LOG_INFO,
             "gpu engine: weights %zu MiB bf16, activations %zu MiB for max_batch_tokens %zu and up to %d images per "
             "batch, pinned staging %zu MiB (%d batches in flight), %d host threads",
             g->weight_bytes >> 20, g->act_bytes >> 20, g->max_tokens, g->max_images,
             ENGINE_SLOTS * (N * g->K * 2 + (size_t)g->n_out * Nm * g->Dout * 2 + N * 16) >> 20, ENGINE_SLOTS,
             g->host_threads);
    free(scales);
    *out = g;
    return VITD_OK;
fail:
    free(scales);
    gpu_engine_free(g);
    return st;
}

int gpu_engine_max_images(const gpu_engine *g) { return g->max_images; }
size_t gpu_engine_max_tokens(const gpu_engine *g) { return g->max_tokens; }

void gpu_engine_gemm_tune_stats(const gpu_engine *g, long *shapes, long *changed, double *ms_first,
                                double *ms_chosen) {
    const gpu_gemm_tune_stats s = gpu_gemm_get_tune_stats(g->gemm);
    *shapes = s.shapes, *changed = s.changed, *ms_first = s.ms_first, *ms_chosen = s.ms_chosen;
}
