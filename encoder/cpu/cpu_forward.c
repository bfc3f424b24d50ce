/* cpu_forward.c — the float32 reference forward pass of Qwen3VLVisionModel.forward (transformers 5.17), the
 * truth every GPU path is checked against.
 *
 * Owns: the config checks a forward pass relies on, the model's float32 weights (one arena, filled through a
 * cpu_weight_fn so tests can build models without a checkpoint), and the pass itself, which strings cpu_ops.h
 * together exactly as MODEL.md section 3 writes it: patch-embed GEMM + bias, + bilinear position embedding
 * (3.2), 2-D rotary tables (3.3), `depth` pre-LN blocks (3.4), deepstack mergers after the listed blocks (3.5)
 * and the final merger (3.6). Tokens stay in merge order, so the "view [N/4, 4d]" of the mergers is free:
 * 4 consecutive rows of a [N, d] buffer are one row of [N/4, 4d].
 */
#include "cpu_forward.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint.h"
#include "cpu_ops.h"
#include "util.h"

/* ---- model ---- */

/* Weights of one transformer block; pointers into cpu_model.arena. */
typedef struct {
    const float *norm1_w, *norm1_b; /* [d] */
    const float *qkv_w, *qkv_b;     /* [3d, d], [3d] */
    const float *proj_w, *proj_b;   /* [d, d], [d] */
    const float *norm2_w, *norm2_b; /* [d] */
    const float *fc1_w, *fc1_b;     /* [I, d], [I] */
    const float *fc2_w, *fc2_b;     /* [d, I], [d] */
} cpu_block;

/* A patch merger (final or deepstack); g = spatial_merge_size^2 (4). */
typedef struct {
    const float *norm_w, *norm_b; /* [d] pre-shuffle (final merger) or [g*d] post-shuffle (deepstack) */
    const float *fc1_w, *fc1_b;   /* [g*d, g*d], [g*d] */
    const float *fc2_w, *fc2_b;   /* [D_out, g*d], [D_out] */
} cpu_merger;

struct cpu_model {
    vitd_vision_config cfg;
    int threads;                  /* resolved worker count */
    float *arena;                 /* every weight, float32, in checkpoint order */
    const float *patch_w;         /* [d, C*T*P*P] */
    const float *patch_b;         /* [d] */
    const float *pos;             /* [Npos, d] */
    cpu_block *blocks;            /* [depth] */
    cpu_merger merger;
    cpu_merger deepstack[VITD_MAX_DEEPSTACK];
    cpu_fp8_linear_opts fp8;      /* cpu_model_set_fp8_linear; gemms 0 = float32 */
};

/* One entry of the weight table: the tensor's short name, its size, and the model field it fills. */
typedef struct {
    char name[80];
    size_t numel;
    const float **slot;
} weight_ref;

/* Checks everything about a config the pass relies on; VITD_E_MODEL names the key and the limit. */
static vitd_status config_check(const vitd_vision_config *c, vitd_err *err) {
    const int lim = 1 << 20;
    struct { const char *key; int v; } pos[] = {
        {"depth", c->depth}, {"hidden_size", c->hidden_size}, {"intermediate_size", c->intermediate_size},
        {"num_heads", c->num_heads}, {"out_hidden_size", c->out_hidden_size}, {"patch_size", c->patch_size},
        {"temporal_patch_size", c->temporal_patch_size}, {"spatial_merge_size", c->spatial_merge_size},
        {"in_channels", c->in_channels}, {"num_position_embeddings", c->num_position_embeddings},
    };
    for (size_t i = 0; i < sizeof pos / sizeof pos[0]; i++)
        if (pos[i].v < 1 || pos[i].v > lim)
            return vitd_fail(err, VITD_E_MODEL, "vision config: %s = %d, must be in [1, %d]", pos[i].key, pos[i].v,
                             lim);
    if (c->hidden_size % c->num_heads)
        return vitd_fail(err, VITD_E_MODEL, "vision config: num_heads %d does not divide hidden_size %d",
                         c->num_heads, c->hidden_size);
    int hd = c->hidden_size / c->num_heads;
    if (hd % 4 || hd > 2048)
        return vitd_fail(err, VITD_E_MODEL, "vision config: head_dim %d (hidden_size / num_heads) must be a multiple "
                         "of 4 and at most 2048 for the 2-D rotary", hd);
    int side = (int)sqrt((double)c->num_position_embeddings);
    while (side * side > c->num_position_embeddings) side--;
    while ((side + 1) * (side + 1) <= c->num_position_embeddings) side++;
    if (side * side != c->num_position_embeddings)
        return vitd_fail(err, VITD_E_MODEL, "vision config: num_position_embeddings %d is not a square",
                         c->num_position_embeddings);
    if ((long long)c->patch_size * c->patch_size * c->temporal_patch_size * c->in_channels > lim)
        return vitd_fail(err, VITD_E_MODEL, "vision config: patch vector in_channels*T*P*P exceeds %d", lim);
    if (c->n_deepstack < 0 || c->n_deepstack > VITD_MAX_DEEPSTACK)
        return vitd_fail(err, VITD_E_MODEL, "vision config: %d deepstack_visual_indexes, at most %d allowed",
                         c->n_deepstack, VITD_MAX_DEEPSTACK);
    for (int j = 0; j < c->n_deepstack; j++) {
        int ix = c->deepstack_indexes[j];
        if (ix < 0 || ix >= c->depth)
            return vitd_fail(err, VITD_E_MODEL,
                             "vision config: deepstack_visual_indexes[%d] = %d outside [0, depth %d)", j, ix, c->depth);
        for (int i = 0; i < j; i++)
            if (c->deepstack_indexes[i] == ix)
                return vitd_fail(err, VITD_E_MODEL, "vision config: deepstack_visual_indexes lists block %d twice",
                                 ix);
    }
    if (!(c->ln_eps > 0) || !(c->rope_theta > 0))
        return vitd_fail(err, VITD_E_MODEL, "vision config: ln_eps (%g) and rope_theta (%g) must be positive",
                         c->ln_eps, c->rope_theta);
    return VITD_OK;
}

/* Appends one table entry. */
static void ref_add(weight_ref *refs, int *n, const float **slot, size_t numel, const char *fmt, int index,
                    const char *suffix) {
    weight_ref *r = &refs[(*n)++];
    if (index >= 0) snprintf(r->name, sizeof r->name, fmt, index, suffix);
    else snprintf(r->name, sizeof r->name, fmt, suffix);
    r->numel = numel;
    r->slot = slot;
}

/* Fills refs with every tensor of MODEL.md section 4, in checkpoint order, pointing at cm's fields. refs holds
 * weight_table_size() entries; returns the count. */
static int weight_table_size(const vitd_vision_config *c) { return 3 + 12 * c->depth + 6 * (1 + c->n_deepstack); }

static int weight_table(cpu_model *cm, weight_ref *refs) {
    const vitd_vision_config *c = &cm->cfg;
    const size_t d = (size_t)c->hidden_size, I = (size_t)c->intermediate_size, Dout = (size_t)c->out_hidden_size;
    const size_t K = (size_t)c->in_channels * c->temporal_patch_size * c->patch_size * c->patch_size;
    const size_t g = (size_t)c->spatial_merge_size * c->spatial_merge_size;
    int n = 0;
    ref_add(refs, &n, &cm->patch_w, d * K, "patch_embed.proj.%s", -1, "weight");
    ref_add(refs, &n, &cm->patch_b, d, "patch_embed.proj.%s", -1, "bias");
    ref_add(refs, &n, &cm->pos, (size_t)c->num_position_embeddings * d, "pos_embed.%s", -1, "weight");
    for (int i = 0; i < c->depth; i++) {
        cpu_block *b = &cm->blocks[i];
        ref_add(refs, &n, &b->norm1_w, d, "blocks.%d.%s", i, "norm1.weight");
        ref_add(refs, &n, &b->norm1_b, d, "blocks.%d.%s", i, "norm1.bias");
        ref_add(refs, &n, &b->qkv_w, 3 * d * d, "blocks.%d.%s", i, "attn.qkv.weight");
        ref_add(refs, &n, &b->qkv_b, 3 * d, "blocks.%d.%s", i, "attn.qkv.bias");
        ref_add(refs, &n, &b->proj_w, d * d, "blocks.%d.%s", i, "attn.proj.weight");
        ref_add(refs, &n, &b->proj_b, d, "blocks.%d.%s", i, "attn.proj.bias");
        ref_add(refs, &n, &b->norm2_w, d, "blocks.%d.%s", i, "norm2.weight");
        ref_add(refs, &n, &b->norm2_b, d, "blocks.%d.%s", i, "norm2.bias");
        ref_add(refs, &n, &b->fc1_w, I * d, "blocks.%d.%s", i, "mlp.linear_fc1.weight");
        ref_add(refs, &n, &b->fc1_b, I, "blocks.%d.%s", i, "mlp.linear_fc1.bias");
        ref_add(refs, &n, &b->fc2_w, d * I, "blocks.%d.%s", i, "mlp.linear_fc2.weight");
        ref_add(refs, &n, &b->fc2_b, d, "blocks.%d.%s", i, "mlp.linear_fc2.bias");
    }
    for (int j = -1; j < c->n_deepstack; j++) {
        cpu_merger *mg = j < 0 ? &cm->merger : &cm->deepstack[j];
        const size_t nd = j < 0 ? d : g * d; /* pre-shuffle norm over d, post-shuffle over g*d */
        const char *fmt = j < 0 ? "merger.%s" : "deepstack_merger_list.%d.%s";
        ref_add(refs, &n, &mg->norm_w, nd, fmt, j, "norm.weight");
        ref_add(refs, &n, &mg->norm_b, nd, fmt, j, "norm.bias");
        ref_add(refs, &n, &mg->fc1_w, g * d * g * d, fmt, j, "linear_fc1.weight");
        ref_add(refs, &n, &mg->fc1_b, g * d, fmt, j, "linear_fc1.bias");
        ref_add(refs, &n, &mg->fc2_w, Dout * g * d, fmt, j, "linear_fc2.weight");
        ref_add(refs, &n, &mg->fc2_b, Dout, fmt, j, "linear_fc2.bias");
    }
    return n;
}

vitd_status cpu_model_create_from(const vitd_vision_config *cfg, cpu_weight_fn get, void *ctx, int threads,
                                  cpu_model **out, vitd_err *err) {
    vitd_status st;
    cpu_model *cm = NULL;
    weight_ref *refs = NULL;
    *out = NULL;
    if ((st = config_check(cfg, err)) != VITD_OK) return st;
    cm = xcalloc(1, sizeof *cm);
    cm->cfg = *cfg;
    cm->threads = cpu_threads_resolve(threads);
    cm->blocks = xcalloc((size_t)cfg->depth, sizeof *cm->blocks);
    refs = xcalloc((size_t)weight_table_size(cfg), sizeof *refs);
    int n = weight_table(cm, refs);
    VITD_ASSERT(n == weight_table_size(cfg));
    size_t total = 0;
    for (int i = 0; i < n; i++) total += refs[i].numel;
    cm->arena = malloc(total * sizeof(float));
    if (!cm->arena) {
        st = vitd_fail(err, VITD_E_NOMEM, "cpu model: cannot allocate %zu MB of float32 weights",
                       total * sizeof(float) >> 20);
        goto fail;
    }
    float *p = cm->arena;
    for (int i = 0; i < n; i++) {
        if ((st = get(ctx, refs[i].name, p, refs[i].numel, err)) != VITD_OK) goto fail;
        *refs[i].slot = p;
        p += refs[i].numel;
    }
    free(refs);
    *out = cm;
    return VITD_OK;
fail:
    free(refs);
    cpu_model_free(cm);
    return st;
}

/* cpu_weight_fn over a loaded checkpoint: checks the element count, then converts to float32. */
static vitd_status checkpoint_get(void *ctx, const char *short_name, float *out, size_t numel, vitd_err *err) {
    const vitd_model *m = ctx;
    const st_tensor *t = checkpoint_tensor(m, short_name);
    if (!t) return vitd_fail(err, VITD_E_MODEL, "tensor %s: missing from the checkpoint", short_name);
    if ((size_t)st_numel(t) != numel)
        return vitd_fail(err, VITD_E_MODEL, "tensor %s: %lld elements, the config needs %zu", short_name,
                         (long long)st_numel(t), numel);
    return checkpoint_tensor_f32(m, short_name, out, err);
}

vitd_status cpu_model_create(const vitd_model *m, int threads, cpu_model **out, vitd_err *err) {
    return cpu_model_create_from(vitd_model_config(m), checkpoint_get, (void *)m, threads, out, err);
}

void cpu_model_free(cpu_model *cm) {
    if (!cm) return;
    free(cm->arena);
    free(cm->blocks);
    free(cm);
}

const vitd_vision_config *cpu_model_config(const cpu_model *cm) { return &cm->cfg; }

void cpu_model_set_fp8_linear(cpu_model *cm, const cpu_fp8_linear_opts *o) {
    if (cm->fp8.gemms || !o->gemms) return;
    const size_t d = (size_t)cm->cfg.hidden_size, I = (size_t)cm->cfg.intermediate_size;
    const int pc = o->weights_per_channel, nt = cm->threads;
    for (int i = 0; i < cm->cfg.depth; i++) {
        /* the weights live in cm->arena, which the model owns */
        cpu_block *b = &cm->blocks[i];
        if (o->gemms & CPU_FP8_QKV) cpu_fp8_fake_quant_weight((float *)b->qkv_w, 3 * d, d, pc, nt);
        if (o->gemms & CPU_FP8_PROJ) cpu_fp8_fake_quant_weight((float *)b->proj_w, d, d, pc, nt);
        if (o->gemms & CPU_FP8_FC1) cpu_fp8_fake_quant_weight((float *)b->fc1_w, I, d, pc, nt);
        if (o->gemms & CPU_FP8_FC2) cpu_fp8_fake_quant_weight((float *)b->fc2_w, d, I, pc, nt);
    }
    cm->fp8 = *o;
    if (!(cm->fp8.margin >= 1.0f)) cm->fp8.margin = 1.0f;
}

/* A block GEMM's input [rows, cols] as the FP8 path would feed it: quantised with its own amax (current scaling,
 * what delayed scaling converges to on a steady stream) times the margin, per tensor or per row. Nothing when
 * the GEMM stays float32. */
static void fp8_input(const cpu_model *cm, unsigned gemm, float *x, size_t rows, size_t cols) {
    if (!(cm->fp8.gemms & gemm)) return;
    if (!cm->fp8.inputs_per_token) {
        cpu_fp8_fake_quant(x, rows * cols, cpu_fp8_descale(x, rows * cols) * cm->fp8.margin, cm->threads);
        return;
    }
    for (size_t r = 0; r < rows; r++)
        cpu_fp8_fake_quant(x + r * cols, cols, cpu_fp8_descale(x + r * cols, cols) * cm->fp8.margin, 1);
}

/* ---- forward ---- */

/* Merger (3.5 post-shuffle for deepstack, 3.6 pre-shuffle for the final one) on the residual stream x [N, d]:
 * LayerNorm (over g*d rows of the [N/g, g*d] view, or over d per token), fc1 + erf-GELU, fc2 into out [N/g, D_out].
 * ln [N, d] and mid [N, d] are scratch. */
static void run_merger(const cpu_model *cm, const cpu_merger *mg, int post_shuffle, const float *x, size_t N,
                       float *ln, float *mid, float *out) {
    const vitd_vision_config *c = &cm->cfg;
    const size_t d = (size_t)c->hidden_size, g = (size_t)c->spatial_merge_size * c->spatial_merge_size;
    const size_t Nm = N / g, gd = g * d;
    if (post_shuffle) cpu_layernorm(x, mg->norm_w, mg->norm_b, ln, Nm, gd, c->ln_eps, cm->threads);
    else cpu_layernorm(x, mg->norm_w, mg->norm_b, ln, N, d, c->ln_eps, cm->threads);
    cpu_linear(ln, mg->fc1_w, mg->fc1_b, mid, Nm, gd, gd, CPU_ACT_GELU_ERF, cm->threads);
    cpu_linear(mid, mg->fc2_w, mg->fc2_b, out, Nm, gd, (size_t)c->out_hidden_size, CPU_ACT_NONE, cm->threads);
}

/* Validates the batch's grids; returns the patch count in *n_tokens and the segment count in *n_seg. */
static vitd_status batch_check(const cpu_model *cm, const vitd_batch *b, size_t *n_tokens, int *n_seg,
                               vitd_err *err) {
    const int m = cm->cfg.spatial_merge_size;
    if (!b || b->n_images < 1 || !b->grids || !b->pixel_values || !b->embeddings)
        return vitd_fail(err, VITD_E_INVALID_ARG, "cpu forward: batch needs n_images >= 1, grids, pixel_values and "
                         "embeddings");
    size_t n = 0;
    long long segs = 0;
    for (int i = 0; i < b->n_images; i++) {
        const vitd_grid *g = &b->grids[i];
        if (g->t < 1 || g->h < 1 || g->w < 1 || g->h % m || g->w % m)
            return vitd_fail(err, VITD_E_INVALID_ARG, "image %d: grid_thw [%d, %d, %d] needs t, h, w >= 1 with h and "
                             "w multiples of spatial_merge_size %d", i, g->t, g->h, g->w, m);
        if ((size_t)g->h * (size_t)g->w > (size_t)INT32_MAX / (size_t)g->t ||
            n + (size_t)g->t * g->h * g->w > (size_t)INT32_MAX)
            return vitd_fail(err, VITD_E_TOO_LARGE, "image %d: batch exceeds %d patches", i, INT32_MAX);
        n += (size_t)g->t * g->h * g->w;
        segs += g->t;
    }
    *n_tokens = n;
    *n_seg = (int)segs;
    return VITD_OK;
}

vitd_status cpu_forward(const cpu_model *cm, const vitd_batch *b, float *last_hidden, vitd_err *err) {
    const vitd_vision_config *c = &cm->cfg;
    const int nt = cm->threads;
    const size_t d = (size_t)c->hidden_size, I = (size_t)c->intermediate_size, H = (size_t)c->num_heads;
    const size_t hd = d / H, m = (size_t)c->spatial_merge_size, g = m * m;
    const size_t K = (size_t)c->in_channels * c->temporal_patch_size * c->patch_size * c->patch_size;
    const size_t Dout = (size_t)c->out_hidden_size;
    const int side = (int)lround(sqrt((double)c->num_position_embeddings));
    float *scratch = NULL;
    int32_t *cu = NULL;
    size_t N = 0;
    int n_seg = 0;
    vitd_status st = batch_check(cm, b, &N, &n_seg, err);
    if (st != VITD_OK) return st;
    const size_t Nm = N / g;

    /* Scratch, one allocation sized by N:
     *   x [N, d] residual stream   h [N, d] normed input / pos table / merger LN   t [N, d] branch output
     *   o [N, d] attention output / merger fc1   qkv [N, 3d]   mlp [N, I]   cos, sin [N, hd] */
    const size_t per_token = 4 * d + 3 * d + I + 2 * hd;
    scratch = malloc(N * per_token * sizeof(float));
    cu = malloc(((size_t)n_seg + 1) * sizeof *cu);
    if (!scratch || !cu) {
        st = vitd_fail(err, VITD_E_NOMEM, "cpu forward: cannot allocate %zu MB of scratch for %zu patches",
                       N * per_token * sizeof(float) >> 20, N);
        goto fail;
    }
    float *x = scratch, *h = x + N * d, *t = h + N * d, *o = t + N * d, *qkv = o + N * d, *mlp = qkv + N * 3 * d;
    float *cosb = mlp + N * I, *sinb = cosb + N * hd;
    cpu_cu_seqlens(b->grids, b->n_images, cu);

    /* 3.1 patch embedding: one GEMM, weight [d, C*T*P*P] */
    cpu_linear(b->pixel_values, cm->patch_w, cm->patch_b, x, N, K, d, CPU_ACT_NONE, nt);
    /* 3.2 + bilinear position embedding (float32; HF's bf16 cast of pe is not part of the fp32 reference) */
    cpu_pos_embed(cm->pos, side, (int)d, b->grids, b->n_images, (int)m, h, nt);
    cpu_add(x, h, N * d, nt);
    /* 3.3 rotary tables, shared by all blocks */
    cpu_rope_cos_sin(b->grids, b->n_images, (int)m, (int)hd, c->rope_theta, cosb, sinb, nt);
    const float scale = (float)(1.0 / sqrt((double)hd));

    /* 3.4 blocks */
    for (int i = 0; i < c->depth; i++) {
        const cpu_block *bl = &cm->blocks[i];
        cpu_layernorm(x, bl->norm1_w, bl->norm1_b, h, N, d, c->ln_eps, nt);
        fp8_input(cm, CPU_FP8_QKV, h, N, d);
        cpu_linear(h, bl->qkv_w, bl->qkv_b, qkv, N, d, 3 * d, CPU_ACT_NONE, nt);
        cpu_rope_apply(qkv, 3 * d, N, (int)H, (int)hd, cosb, sinb, nt);         /* q: columns [0, d) */
        cpu_rope_apply(qkv + d, 3 * d, N, (int)H, (int)hd, cosb, sinb, nt);     /* k: columns [d, 2d) */
        st = cpu_attention(qkv, qkv + d, qkv + 2 * d, 3 * d, o, d, cu, n_seg, (int)H, (int)hd, scale, 0, nt, err);
        if (st != VITD_OK) goto fail;
        fp8_input(cm, CPU_FP8_PROJ, o, N, d);
        cpu_linear(o, bl->proj_w, bl->proj_b, t, N, d, d, CPU_ACT_NONE, nt);
        cpu_add_layernorm(x, t, bl->norm2_w, bl->norm2_b, h, N, d, c->ln_eps, nt); /* x += attn; h = LN2(x) */
        fp8_input(cm, CPU_FP8_FC1, h, N, d);
        cpu_linear(h, bl->fc1_w, bl->fc1_b, mlp, N, d, I, CPU_ACT_GELU_TANH, nt);
        fp8_input(cm, CPU_FP8_FC2, mlp, N, I);
        cpu_linear(mlp, bl->fc2_w, bl->fc2_b, t, N, I, d, CPU_ACT_NONE, nt);
        cpu_add(x, t, N * d, nt);
        /* 3.5 deepstack merger j reads the output of block deepstack_indexes[j] */
        for (int j = 0; b->deepstack && j < c->n_deepstack; j++)
            if (c->deepstack_indexes[j] == i)
                run_merger(cm, &cm->deepstack[j], 1, x, N, h, o, b->deepstack + (size_t)j * Nm * Dout);
    }
    /* 3.7 last_hidden_state: the residual stream, no final norm */
    if (last_hidden) memcpy(last_hidden, x, N * d * sizeof(float));
    /* 3.6 final merger */
    run_merger(cm, &cm->merger, 0, x, N, h, o, b->embeddings);
    st = VITD_OK;
fail:
    free(cu);
    free(scratch);
    return st;
}
