/* gpu_engine.c — the GPU engine (gpu_engine.h): the Qwen3-VL vision tower in BF16 on one Hopper GPU, with FP8
 * attention where it is asked for or (auto) measured faster.
 *
 * Owns: the device choice and checks, the BF16 weight arena (uploaded once), the activation plan (one device
 * allocation sized for max_batch_tokens at creation), pinned host staging per batch in flight, three streams, the
 * cuBLASLt context (gpu_gemm.c) and the cuDNN attention context (gpu_attn.c), and the forward pass, which mirrors
 * cpu_forward.c (MODEL.md 3) step by step:
 *
 *   pixels f32 -> bf16 (host, into pinned staging) -> H2D per chunk       [copy stream]
 *   patch-embed GEMM + bias per chunk (weight [d, C*T*P*P])                [compute stream, waits per chunk]
 *   + interpolated position embedding (kernels/pos_embed.cu); rotary tables (kernels/rope.cu)
 *   per block: LN1 -> QKV GEMM + bias -> rotary + split + pad (rope.cu) -> cuDNN BF16 attention ->
 *              proj GEMM + bias accumulated into the residual -> LN2 -> fc1 GEMM + bias + tanh-GELU epilogue ->
 *              fc2 GEMM + bias accumulated into the residual
 *   FP8 batches replace the attention step only (attention_fp8): rotary + E4M3 quantise + pad + amax
 *   (fp8_quant.cu) -> cuDNN FP8 attention -> dequantise into the same padded [N, H*dp] bf16 layout, with the
 *   per-layer scale state (dynamic amax ring or static slots) in one device block per layer. Which path a batch
 *   takes: attn_dtype and, for auto, the table measured at creation (fp8_setup, attn_route.h).
 *   deepstack mergers after their blocks (LN over the [N/4, 4d] view, fc1 + bias, erf-GELU, fc2 + bias),
 *   final merger (LN over d, fc1 + bias, erf-GELU, fc2 + bias); each merger output D2H as soon as it is made.
 *
 * Two fusions are free by layout: the attention output's pad lanes (head_dim 72 padded to 80) are exactly zero,
 * so the output projection reads the padded [N, H*80] tensor through a weight with zero columns at the pad
 * positions (no unpack pass); and the residual adds are the GEMM epilogue (beta = 1, C = D = residual).
 * Numerics vs HF bf16: cuBLASLt may round the branch (x W^T + b) to bf16 before adding the residual, as HF does
 * (bf16 Linear output, then a bf16 add); tests/test_kernels.c allows for it.
 *
 * Pipelining (gpu_engine_submit / gpu_engine_wait, vitd.h): up to ENGINE_SLOTS batches are in flight, each with
 * its own pinned staging (eng_slot), on three streams: compute, upload and download. Submit converts the pixels
 * (host threads) and enqueues the whole forward pass; wait converts the outputs. So in a stream of batches the
 * host work of batch k+1 (pixels in) and of batch k-1 (outputs out) runs while the GPU computes batch k, and the
 * GPU goes from batch to batch without a gap. Device buffers are shared between batches; two events order them:
 * the next batch's pixel upload waits until this batch's patch embedding has read the pixel buffer (ev_embed),
 * and a merger writes its output buffer only after the previous batch's download of it (ev_out_free).
 * What overlaps inside one batch:
 *   - host conversion of pixel chunk c+1 with the H2D copy of chunk c and the patch-embed GEMM of chunk c-1;
 *   - the D2H copy of each deepstack output (download stream) and its host conversion to float32 (host threads)
 *     with the blocks after its tap on the compute stream; only the final merger's copy and conversion follow
 *     the last kernel.
 * Inputs and outputs are either contiguous or each image's own buffers (vitd_batch's two forms): the conversions
 * read and write them in place, so the server never copies an image into or out of a batch buffer.
 * The host waits only on the D2H completion events of the outputs (and, in profiling mode, reads timings).
 */
#include "gpu_engine.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "checkpoint.h"
#include "engine_kernels.h"
#include "engine_priv.h"
#include "fp8_kernels.h"
#include "fp8_scales.h"
#include "util.h"

static const char *const stage_names[ST_COUNT] = {
    "h2d_wait+patch_embed", "pos_embed+rope_tables", "layernorm", "qkv_gemm", "rope_pack", "attention",
    "proj_gemm+residual", "fc1_gemm+gelu", "fc2_gemm+residual", "deepstack_mergers", "final_merger",
    "fp8_rope_quant(+amax)", "fp8_dequant+ring", "fp8_linear_scales", "d2h_tail(final)", "host_pixels_to_bf16", "host_outputs_to_f32",
    "host_wait", "wall_total"};

/* ---- host worker pool ----
 * The pixel and output conversions run on host threads that live as long as the engine, not on threads started per
 * call (cpu_parallel_for): with 15 threads started per 6 MB chunk, 77 MB of pixels took 7 ms on the GPU machine
 * (11 GB/s read), most of it suspected to be thread start-up. pool_run splits [0, n) into contiguous parts, one per
 * worker plus the caller, and returns when all are done. Used by the engine's one calling thread only. */

static void *pool_worker(void *arg) {
    pool_arg *a = arg;
    host_pool *p = a->p;
    unsigned long seen = 0;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (p->gen == seen && !p->stop) pthread_cond_wait(&p->cv_work, &p->mu);
        if (p->stop) break;
        seen = p->gen;
        const int part = a->index + 1, parts = p->parts;
        if (part < parts) {
            cpu_range_fn fn = p->fn;
            void *ctx = p->ctx;
            const size_t n = p->n;
            pthread_mutex_unlock(&p->mu);
            fn(ctx, n * (size_t)part / (size_t)parts, n * (size_t)(part + 1) / (size_t)parts);
            pthread_mutex_lock(&p->mu);
        }
        if (--p->pending == 0) pthread_cond_signal(&p->cv_done);
    }
    pthread_mutex_unlock(&p->mu);
    free(a);
    return NULL;
}

/* Starts up to n_workers threads (fewer if creation fails; the caller still does its part). */
static void pool_start(host_pool *p, int n_workers) {
    memset(p, 0, sizeof *p);
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv_work, NULL);
    pthread_cond_init(&p->cv_done, NULL);
    p->tid = xcalloc((size_t)(n_workers > 0 ? n_workers : 1), sizeof *p->tid);
    for (int i = 0; i < n_workers; i++) {
        pool_arg *a = xmalloc(sizeof *a);
        *a = (pool_arg){p, i};
        if (pthread_create(&p->tid[i], NULL, pool_worker, a) != 0) {
            free(a);
            break;
        }
        p->n_started++;
    }
    p->n_workers = p->n_started;
}

static void pool_stop(host_pool *p) {
    if (!p->tid) return;
    pthread_mutex_lock(&p->mu);
    p->stop = 1;
    pthread_cond_broadcast(&p->cv_work);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < p->n_started; i++) pthread_join(p->tid[i], NULL);
    free(p->tid);
    p->tid = NULL;
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv_work);
    pthread_cond_destroy(&p->cv_done);
}

/* Runs fn over [0, n) on the workers and the calling thread; parts of at least min_items. */
static void pool_run(host_pool *p, size_t n, size_t min_items, cpu_range_fn fn, void *ctx) {
    size_t parts = n / (min_items ? min_items : 1);
    if (parts > (size_t)p->n_workers + 1) parts = (size_t)p->n_workers + 1;
    if (parts <= 1) {
        if (n) fn(ctx, 0, n);
        return;
    }
    pthread_mutex_lock(&p->mu);
    p->fn = fn;
    p->ctx = ctx;
    p->n = n;
    p->parts = (int)parts;
    p->pending = p->n_workers;
    p->gen++;
    pthread_cond_broadcast(&p->cv_work);
    pthread_mutex_unlock(&p->mu);
    fn(ctx, 0, n / parts);
    pthread_mutex_lock(&p->mu);
    while (p->pending) pthread_cond_wait(&p->cv_done, &p->mu);
    pthread_mutex_unlock(&p->mu);
}


/* pool_run over [begin, end) instead of [0, n). */
typedef struct {
    cpu_range_fn fn;
    void *ctx;
    size_t base;
} shifted_job;

static void shifted_range(void *arg, size_t begin, size_t end) {
    shifted_job *j = arg;
    j->fn(j->ctx, j->base + begin, j->base + end);
}

static void pool_run_range(host_pool *p, size_t begin, size_t end, size_t min_items, cpu_range_fn fn, void *ctx) {
    shifted_job j = {fn, ctx, begin};
    pool_run(p, end - begin, min_items, shifted_range, &j);
}


/* ---- host conversions ---- */

void gpu_engine_host_to_bf16(const float *in, uint16_t *out, size_t n) {
    size_t i = 0;
#if defined(__SSE2__)
    const __m128i one = _mm_set1_epi32(1), round = _mm_set1_epi32(0x7fff), absmask = _mm_set1_epi32(0x7fffffff);
    const __m128i inf = _mm_set1_epi32(0x7f800000), quiet = _mm_set1_epi32(0x40);
    for (; i + 8 <= n; i += 8) {
        __m128i r[2];
        for (int half = 0; half < 2; half++) {
            __m128i u = _mm_castps_si128(_mm_loadu_ps(in + i + 4 * half));
            /* round to nearest even: u + 0x7fff + ((u >> 16) & 1), then the high half */
            __m128i rn = _mm_add_epi32(u, _mm_add_epi32(round, _mm_and_si128(_mm_srli_epi32(u, 16), one)));
            rn = _mm_srli_epi32(rn, 16);
            __m128i nan = _mm_cmpgt_epi32(_mm_and_si128(u, absmask), inf);
            __m128i qn = _mm_or_si128(_mm_srli_epi32(u, 16), quiet);
            __m128i v = _mm_or_si128(_mm_and_si128(nan, qn), _mm_andnot_si128(nan, rn));
            /* 16-bit values in 32-bit lanes: sign-extend so the signed saturating pack keeps the bits */
            r[half] = _mm_srai_epi32(_mm_slli_epi32(v, 16), 16);
        }
        _mm_storeu_si128((__m128i *)(out + i), _mm_packs_epi32(r[0], r[1]));
    }
#endif
    for (; i < n; i++) out[i] = f32_to_bf16(in[i]);
}

void gpu_engine_host_to_f32(const uint16_t *in, float *out, size_t n) {
    size_t i = 0;
#if defined(__SSE2__)
    const __m128i zero = _mm_setzero_si128();
    for (; i + 8 <= n; i += 8) {
        __m128i h = _mm_loadu_si128((const __m128i *)(in + i));
        _mm_storeu_si128((__m128i *)(out + i), _mm_unpacklo_epi16(zero, h));
        _mm_storeu_si128((__m128i *)(out + i + 4), _mm_unpackhi_epi16(zero, h));
    }
#endif
    for (; i < n; i++) out[i] = bf16_to_f32(in[i]);
}

typedef struct {
    const float *in;
    uint16_t *out;
} to_bf16_job;

static void to_bf16_range(void *arg, size_t begin, size_t end) {
    to_bf16_job *j = arg;
    gpu_engine_host_to_bf16(j->in + begin, j->out + begin, end - begin);
}

typedef struct {
    const uint16_t *in;
    float *out;
} to_f32_job;

static void to_f32_range(void *arg, size_t begin, size_t end) {
    to_f32_job *j = arg;
    gpu_engine_host_to_f32(j->in + begin, j->out + begin, end - begin);
}

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
    pool_stop(&g->pool);
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

static vitd_status fp8_setup(gpu_engine *g, int *dead, vitd_err *err);

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
    pool_start(&g->pool, g->host_threads - 1);
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
        vitd_log(VITD_LOG_INFO, "gpu engine: fp8_scales %s not used: attention runs bf16", opts->fp8_scales);
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
    for (int i = 0; i < ENGINE_MAX_CHUNKS; i++)
        CUDA_TRY(cudaEventCreateWithFlags(&g->ev_chunk[i], cudaEventDisableTiming));
    CUDA_TRY(cudaEventCreateWithFlags(&g->ev_embed, cudaEventDisableTiming));
    for (int i = 0; i < g->n_out; i++) {
        CUDA_TRY(cudaEventCreate(&g->ev_out[i]));
        CUDA_TRY(cudaEventCreateWithFlags(&g->ev_out_free[i], cudaEventDisableTiming));
    }
    if ((st = gpu_gemm_create(ENGINE_GEMM_WORKSPACE, &g->gemm, err)) != VITD_OK) goto fail;

    gpu_attn_opts ao = gpu_attn_opts_default();
    ao.n_heads = g->H;
    ao.head_dim = g->hd;
    ao.head_dim_padded = g->dp;
    ao.max_batch = g->max_images;
    ao.max_seqlen = (int)N;
    ao.fp8 = want_fp8;
    if ((st = gpu_attn_create(g->device, &ao, &g->attn, err)) != VITD_OK) goto fail;
    int dead = 0;
    if (want_fp8 && (st = fp8_setup(g, &dead, err)) != VITD_OK) {
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

const char *gpu_engine_attn_dtype(const gpu_engine *g) {
    if (!g->fp8_ok) return "bf16";
    if (g->attn_setting == ATTN_MODE_FP8) return "fp8";
    return g->route_any_fp8 ? "auto" : "bf16";
}
const char *gpu_engine_last_attn(const gpu_engine *g) {
    return g->last_path < 0 ? "" : g->last_path ? "fp8" : "bf16";
}
const char *gpu_engine_fp8_fallback(const gpu_engine *g) { return g->fp8_fallback; }
long gpu_engine_fp8_steps(const gpu_engine *g) { return g->fp8_steps ? g->fp8_steps[0] : 0; }
int gpu_engine_fp8_saved(const gpu_engine *g) { return g->fp8_saved; }

int gpu_engine_route_table(const gpu_engine *g, const attn_route_entry **entries) {
    *entries = g->route;
    return g->n_route;
}

vitd_status gpu_engine_set_attn(gpu_engine *g, const char *path, vitd_err *err) {
    if (!path || !strcmp(path, "auto")) g->force = -1;
    else if (!strcmp(path, "bf16")) g->force = 0;
    else if (!strcmp(path, "fp8") && g->fp8_ok) g->force = 1;
    else if (!strcmp(path, "fp8"))
        return vitd_fail(err, VITD_E_UNSUPPORTED, "gpu engine: no FP8 path (%s)",
                         g->fp8_fallback[0] ? g->fp8_fallback : "attn_dtype bf16");
    else return vitd_fail(err, VITD_E_INVALID_ARG, "gpu engine: attention path '%s' is not bf16, fp8 or auto", path);
    return VITD_OK;
}

vitd_status gpu_engine_fp8_amax(gpu_engine *g, float *amax, vitd_err *err) {
    vitd_status st = VITD_OK;
    if (!g->d_calib)
        return vitd_fail(err, VITD_E_UNSUPPORTED, "gpu engine: created without fp8_calibrate, no amax recorded");
    const int L = g->cfg.depth;
    float *h = xmalloc((size_t)L * 4 * sizeof *h);
    CUDA_TRY(cudaSetDevice(g->device));
    CUDA_TRY(cudaStreamSynchronize(g->s_main));
    CUDA_TRY(cudaMemcpy(h, g->d_calib, (size_t)L * 4 * sizeof *h, cudaMemcpyDeviceToHost));
    for (int i = 0; i < L; i++)
        for (int t = 0; t < 3; t++) amax[i * 3 + t] = h[i * 4 + t];
fail:
    free(h);
    return st;
}
int gpu_engine_max_images(const gpu_engine *g) { return g->max_images; }
size_t gpu_engine_max_tokens(const gpu_engine *g) { return g->max_tokens; }

/* ---- profiling ---- */

void gpu_engine_set_profile(gpu_engine *g, int on) {
    if (on && !g->prof_ev) {
        g->prof_ev = xcalloc(ENGINE_PROF_MARKS, sizeof *g->prof_ev);
        for (int i = 0; i < ENGINE_PROF_MARKS; i++)
            if (cudaEventCreate(&g->prof_ev[i]) != cudaSuccess) {
                g->prof_ev[i] = NULL;
                on = 0;
            }
    }
    g->prof_on = on;
}

int gpu_engine_profile(const gpu_engine *g, gpu_engine_stage *out, int max) {
    if (!g->prof_valid) return 0;
    for (int i = 0; i < ST_COUNT && i < max; i++) out[i] = (gpu_engine_stage){stage_names[i], g->prof_ms[i],
                                                                              g->prof_calls[i]};
    return ST_COUNT;
}

/* Records a mark on the compute stream: the time since the previous mark belongs to `stage`. */
void engine_prof_mark(gpu_engine *g, int stage) {
    if (!g->prof_on || g->prof_n >= ENGINE_PROF_MARKS) return;
    if (cudaEventRecord(g->prof_ev[g->prof_n], g->s_main) == cudaSuccess) g->prof_stage[g->prof_n++] = stage;
}

/* ---- forward ---- */

#define KTRY(call) CUDA_TRY(call) /* a launcher's cudaError_t */

/* y[n, out] = x W^T + b (+ y), see gpu_gemm.h. */
static vitd_status gemm(gpu_engine *g, const void *x, const void *w, const void *bias, void *y, int n, int in, int out,
                        gemm_epilogue epi, int acc, vitd_err *err) {
    return gpu_gemm_bf16(g->gemm, x, w, bias, y, n, in, out, epi, acc, g->s_main, err);
}

/* The BF16 attention step: rotary + split + pad of the QKV output, then cuDNN BF16 attention into o [N, H, dp]
 * (pad lanes 0). calib: float[4] where the amax of Q, K (rotated) and V is folded in (vitd calibrate), or NULL. */
static vitd_status attention_bf16(gpu_engine *g, int n_tokens, float *calib, vitd_err *err) {
    vitd_status st = VITD_OK;
    KTRY(rope_pack_qkv_bf16(g->qkv, g->cos_t, g->sin_t, n_tokens, g->H, g->hd, g->dp, g->q, g->k, g->v, g->s_main));
    if (calib) KTRY(fp8_quant_qkv_amax(g->qkv, g->cos_t, g->sin_t, n_tokens, g->H, g->hd, calib, g->s_main));
    engine_prof_mark(g, ST_ROPE_PACK);
    st = gpu_attn_bf16(g->attn, g->q, g->k, g->v, g->o, g->s_main, err);
    engine_prof_mark(g, ST_ATTN);
fail:
    return st;
}

/* The FP8 attention step on state block L, in fp8_kernels.h's order: (first: amax pre-pass of this batch and
 * its scales) -> rotary + quantise + pad (+ amax) -> cuDNN FP8 attention -> dequantise (+ ring update). The result
 * lands in o [N, H, dp] like the BF16 step's: the dequantisation runs with head_dim = dp, and o8's pad lanes are
 * exactly 0 (V's are), so the output projection reads the same padded layout through its zero weight columns.
 * keep_o8: the output projection runs in FP8 and reads o8 itself (with DESCALE_V = 1 / SCALE_O): no
 * dequantisation here, and the caller runs the ring update after the projection.
 * Dynamic scales: the first batch of a layer has an empty ring, so its scales come from its own amax (the
 * pre-pass reads the same values the quantiser will, so nothing saturates); every later batch uses the maximum
 * over the last fp8_hist batches, updated on the GPU after the attention (no host sync). Static: the slots were
 * filled at creation; no amax, no ring. */
static vitd_status attention_fp8(gpu_engine *g, float *L, int n_tokens, int first, int keep_o8, vitd_err *err) {
    vitd_status st = VITD_OK;
    float *amax = g->fp8_static ? NULL : L + FP8_STATE_AMAX;
    if (first && amax) {
        KTRY(fp8_quant_qkv_amax(g->qkv, g->cos_t, g->sin_t, n_tokens, g->H, g->hd, amax, g->s_main));
        KTRY(fp8_quant_first_scales(L, g->s_main));
    }
    KTRY(fp8_quant_qkv_rope(g->qkv, g->cos_t, g->sin_t, n_tokens, g->H, g->hd, g->dp, L, amax, g->q8, g->k8, g->v8,
                            g->s_main));
    engine_prof_mark(g, ST_FP8_QUANT);
    if ((st = gpu_attn_fp8(g->attn, g->q8, g->k8, g->v8, g->o8, L, g->s_main, err)) != VITD_OK) goto fail;
    engine_prof_mark(g, ST_ATTN);
    if (!keep_o8) {
        KTRY(fp8_quant_dequant_o(g->o8, n_tokens, g->H, g->dp, g->dp, L, g->fp8_hist, g->o, g->s_main));
        engine_prof_mark(g, ST_FP8_DEQUANT);
    }
fail:
    return st;
}

/* The attention step of block `layer` on the path chosen for the batch (fp8 = 1: FP8; keep_o8 as above). */
static vitd_status attention_step(gpu_engine *g, int layer, int n_tokens, int fp8, int keep_o8, vitd_err *err) {
    if (!fp8) return attention_bf16(g, n_tokens, g->d_calib ? g->d_calib + (size_t)layer * 4 : NULL, err);
    float *L = g->d_fp8 + (size_t)layer * g->fp8_stride;
    vitd_status st = attention_fp8(g, L, n_tokens, g->fp8_steps[layer] == 0, keep_o8, err);
    if (st == VITD_OK) g->fp8_steps[layer]++;
    return st;
}

/* LayerNorm feeding GEMM input t (0: QKV, 1: fc1) of layer S's state: E4M3 with its amax when the GEMM runs FP8,
 * bf16 with the amax in a calibrating pass, plain bf16 otherwise. */
static cudaError_t block_ln(gpu_engine *g, const eng_pass *p, unsigned bit, float *S, int t, const uint16_t *w,
                            const uint16_t *b) {
    const float eps = (float)g->cfg.ln_eps;
    float *amax = S && !g->lin_static ? S + LIN8_AT(LIN8_AMAX, t) : NULL;
    if (p->lin & bit)
        return ln_quant(g->x, w, b, p->N, g->d, eps, NULL, g->h8, S + LIN8_AT(LIN8_SCALE, t), amax, g->s_main);
    if (p->lin_calib) return ln_quant(g->x, w, b, p->N, g->d, eps, g->h, NULL, NULL, amax, g->s_main);
    return ln_bf16(g->x, w, b, g->h, p->N, g->d, eps, g->s_main);
}

/* One transformer block (MODEL.md 3.4) of pass p. FP8 GEMMs (p->lin) read E4M3 operands made by their producers:
 * QKV and fc1 the LayerNorm's, proj the FP8 attention's o8, fc2 fc1's E4M3 output (cuBLASLt's D scale and amax). */
static vitd_status run_block(gpu_engine *g, const eng_pass *p, int i, vitd_err *err) {
    vitd_status st = VITD_OK;
    const eng_block *bl = &g->blocks[i];
    const int N = p->N, d = g->d;
    float *S = g->d_lin ? g->d_lin + (size_t)i * g->lin_stride : NULL;
    const float *W = g->d_wscale ? g->d_wscale + (size_t)i * 16 : NULL; /* 16-byte slot per GEMM */
    const int proj8 = (p->lin & LIN8_PROJ) && p->fp8;
    gemm_args a;

    KTRY(block_ln(g, p, LIN8_QKV, S, 0, bl->n1w, bl->n1b));
    engine_prof_mark(g, ST_LN);
    a = (gemm_args){.x = g->h, .w = bl->qkv_w, .bias = bl->qkv_b, .y = g->qkv, .n = N, .in = d, .out = 3 * d,
                    .epi = GEMM_EPI_BIAS};
    if (p->lin & LIN8_QKV) {
        a.x = g->h8, a.w = bl->qkv_w8, a.fp8 = 1;
        a.x_descale = S + LIN8_AT(LIN8_DESCALE, 0), a.w_descale = W + 0;
    }
    if ((st = gpu_gemm_run(g->gemm, &a, g->s_main, err)) != VITD_OK) goto fail;
    engine_prof_mark(g, ST_QKV);

    if ((st = attention_step(g, i, N, p->fp8, proj8, err)) != VITD_OK) goto fail;
    a = (gemm_args){.x = g->o, .w = bl->proj_w, .bias = bl->proj_b, .y = g->x, .n = N, .in = g->H * g->dp,
                    .out = d, .epi = GEMM_EPI_BIAS, .accumulate = 1};
    if (proj8) {
        float *L = g->d_fp8 + (size_t)i * g->fp8_stride;
        a.x = g->o8, a.w = bl->proj_w8, a.fp8 = 1;
        a.x_descale = L + ATTN_FP8_DESCALE_V * ATTN_FP8_SLOT_FLOATS, a.w_descale = W + 4;
        if ((st = gpu_gemm_run(g->gemm, &a, g->s_main, err)) != VITD_OK) goto fail;
        if (!g->fp8_static) KTRY(fp8_quant_ring_update(L, g->fp8_hist, g->s_main));
    } else if ((st = gpu_gemm_run(g->gemm, &a, g->s_main, err)) != VITD_OK) {
        goto fail;
    }
    engine_prof_mark(g, ST_PROJ);

    KTRY(block_ln(g, p, LIN8_FC1, S, 1, bl->n2w, bl->n2b));
    engine_prof_mark(g, ST_LN);
    a = (gemm_args){.x = g->h, .w = bl->fc1_w, .bias = bl->fc1_b, .y = g->mlp, .n = N, .in = d, .out = g->I,
                    .epi = GEMM_EPI_BIAS_GELU_TANH};
    if (p->lin & LIN8_FC1) {
        a.x = g->h8, a.w = bl->fc1_w8, a.fp8 = 1;
        a.x_descale = S + LIN8_AT(LIN8_DESCALE, 1), a.w_descale = W + 8;
        if (p->lin & LIN8_FC2) {
            a.y = g->mlp8, a.y_scale = S + LIN8_AT(LIN8_SCALE, 2);
            a.y_amax = g->lin_static ? NULL : S + LIN8_AT(LIN8_AMAX, 2);
        }
    }
    if ((st = gpu_gemm_run(g->gemm, &a, g->s_main, err)) != VITD_OK) goto fail;
    if (p->lin_calib && !g->lin_static) KTRY(fp8_amax_bf16(g->mlp, (size_t)N * g->I, S + LIN8_AT(LIN8_AMAX, 2), g->s_main));
    engine_prof_mark(g, ST_FC1);
    a = (gemm_args){.x = g->mlp, .w = bl->fc2_w, .bias = bl->fc2_b, .y = g->x, .n = N, .in = g->I, .out = d,
                    .epi = GEMM_EPI_BIAS, .accumulate = 1};
    if (p->lin & LIN8_FC2) {
        a.x = g->mlp8, a.w = bl->fc2_w8, a.fp8 = 1;
        a.x_descale = S + LIN8_AT(LIN8_DESCALE, 2), a.w_descale = W + 12;
    }
    if ((st = gpu_gemm_run(g->gemm, &a, g->s_main, err)) != VITD_OK) goto fail;
    engine_prof_mark(g, ST_FC2);
fail:
    return st;
}

vitd_status engine_blocks(gpu_engine *g, const eng_pass *p, int i0, int i1, vitd_err *err) {
    for (int i = i0; i < i1; i++) {
        vitd_status st = run_block(g, p, i, err);
        if (st != VITD_OK) return st;
    }
    return VITD_OK;
}

/* The path of a batch of n_seg segments whose longest has max_len tokens: 1 = FP8. */
static int choose_fp8(const gpu_engine *g, int n_seg, int max_len) {
    if (!g->fp8_ok) return 0;
    if (g->force >= 0) return g->force;
    if (g->attn_setting == ATTN_MODE_FP8) return 1;
    if (g->attn_setting == ATTN_MODE_AUTO) return attn_route_fp8(g->route, g->n_route, n_seg, max_len);
    return 0;
}

/* ---- FP8 set-up: plans and the auto routing table ---- */

/* Uploads a batch of n images of len tokens each (h_lens, cu) and starts it in the attention context. */
static vitd_status probe_batch(gpu_engine *g, int n, int len, vitd_err *err) {
    vitd_status st = VITD_OK;
    eng_slot *sl = &g->slot[0]; /* at creation: nothing in flight */
    sl->h_cu[0] = 0;
    for (int i = 0; i < n; i++) {
        sl->h_lens[i] = len;
        sl->h_cu[i + 1] = (int32_t)((i + 1) * len);
    }
    CUDA_TRY(cudaMemcpyAsync(g->cu, sl->h_cu, ((size_t)n + 1) * 4, cudaMemcpyHostToDevice, g->s_main));
    CUDA_TRY(cudaStreamSynchronize(g->s_main)); /* the staging is rewritten by the next probe */
    gpu_attn_batch ab = {.n_images = n, .lens = sl->h_lens, .d_cu_seqlens = g->cu};
    st = gpu_attn_begin(g->attn, &ab, g->s_main, err);
fail:
    return st;
}

/* One attention step of the current probe batch for timing: BF16, or FP8 on the probe state block in its steady
 * form (quantise with amax, attention, dequantise + ring update; static: neither amax nor ring). The inputs are
 * the zeroed activations: attention time does not depend on the values. */
static vitd_status probe_step(gpu_engine *g, int n_tokens, int fp8, vitd_err *err) {
    if (!fp8) return attention_bf16(g, n_tokens, NULL, err);
    return attention_fp8(g, g->d_fp8 + (size_t)g->cfg.depth * g->fp8_stride, n_tokens, 0, 0, err);
}

/* Times both paths on shape e (min over 2 rounds of the mean of `reps` steps, CUDA events on the compute stream).
 * fp8_failed is set when only the FP8 path failed (its message in err). */
static vitd_status time_shape(gpu_engine *g, attn_route_entry *e, cudaEvent_t ev[2], int *fp8_failed,
                              vitd_err *err) {
    vitd_status st = VITD_OK;
    const int T = e->n_images * e->max_len, reps = T >= 16384 ? 3 : T >= 4096 ? 5 : 10;
    double best[2] = {1e30, 1e30};
    if ((st = probe_batch(g, e->n_images, e->max_len, err)) != VITD_OK) goto fail;
    if ((st = probe_step(g, T, 0, err)) != VITD_OK) goto fail;
    if ((st = probe_step(g, T, 1, err)) != VITD_OK) {
        *fp8_failed = 1;
        goto fail;
    }
    for (int round = 0; round < 2; round++)
        for (int fp8 = 0; fp8 < 2; fp8++) {
            float ms = 0;
            CUDA_TRY(cudaEventRecord(ev[0], g->s_main));
            for (int r = 0; r < reps; r++)
                if ((st = probe_step(g, T, fp8, err)) != VITD_OK) {
                    *fp8_failed = fp8;
                    goto fail;
                }
            CUDA_TRY(cudaEventRecord(ev[1], g->s_main));
            CUDA_TRY(cudaEventSynchronize(ev[1]));
            CUDA_TRY(cudaEventElapsedTime(&ms, ev[0], ev[1]));
            if (ms / reps < best[fp8]) best[fp8] = ms / reps;
        }
    e->ms_bf16 = best[0];
    e->ms_fp8 = best[1];
fail:
    return st;
}

/* Gets the FP8 path ready. fp8: builds the FP8 plans of one image of each ladder length (a plan cuDNN cannot
 * build is the start-up error). auto: times both paths per shape (attn_route_shapes) and sets the routing table
 * (attn_route_decide), logged. On failure *dead says whether the device is unusable afterwards (sticky error). */
static vitd_status fp8_setup(gpu_engine *g, int *dead, vitd_err *err) {
    vitd_status st = VITD_OK;
    cudaEvent_t ev[2] = {NULL, NULL};
    int fp8_failed = 0;
    const double t0 = vitd_now();
    *dead = 0;
    g->n_route = attn_route_shapes(g->max_tokens, g->max_images, (int)g->max_tokens, g->route, ATTN_ROUTE_MAX);
    if (g->attn_setting == ATTN_MODE_FP8) {
        for (int i = 0; i < g->n_route; i++)
            if (g->route[i].n_images == 1 && (st = gpu_attn_prepare_fp8(g->attn, 1, g->route[i].max_len, err)))
                goto fail;
        if (g->n_route == 0 && (st = gpu_attn_prepare_fp8(g->attn, 1, (int)g->max_tokens, err))) goto fail;
        g->n_route = 0;
        vitd_log(VITD_LOG_INFO, "gpu engine: FP8 attention plans ready in %.0f ms", 1e3 * (vitd_now() - t0));
        return VITD_OK;
    }
    CUDA_TRY(cudaEventCreate(&ev[0]));
    CUDA_TRY(cudaEventCreate(&ev[1]));
    const gpu_attn_features *ft = gpu_attn_features_of(g->attn);
    attn_route_key key = {.cc_major = ft->cc_major, .cc_minor = ft->cc_minor, .cudnn_version = ft->cudnn_version,
                          .n_heads = g->H, .head_dim = g->hd, .head_dim_padded = g->dp, .fp8_static = g->fp8_static,
                          .fp8_history = g->fp8_hist, .max_tokens = (int)g->max_tokens, .max_images = g->max_images};
    snprintf(key.device, sizeof key.device, "%s", g->device_name);
    int loaded = 0;
    if (g->route_file) {
        attn_route_entry saved[ATTN_ROUTE_MAX];
        int n_saved = 0;
        vitd_err le = {0};
        vitd_status ls = attn_route_load(g->route_file, &key, saved, ATTN_ROUTE_MAX, &n_saved, &le);
        if (ls == VITD_OK) {
            /* FP8 must still run here: one probe step (builds one small plan) before trusting the table */
            attn_route_entry probe = {1, g->max_tokens < 256 ? (int)g->max_tokens : 256, -1, -1, 0};
            if ((st = time_shape(g, &probe, ev, &fp8_failed, err)) != VITD_OK) goto fail;
            memcpy(g->route, saved, sizeof saved[0] * (size_t)n_saved);
            g->n_route = n_saved;
            loaded = 1;
        } else {
            vitd_log(ls == VITD_E_IO ? VITD_LOG_INFO : VITD_LOG_WARN, "gpu engine: attn_route_file not used, "
                     "measuring: %s", le.msg);
        }
    }
    for (int i = 0; !loaded && i < g->n_route; i++)
        if ((st = time_shape(g, &g->route[i], ev, &fp8_failed, err)) != VITD_OK) goto fail;
    attn_route_decide(g->route, g->n_route, ATTN_ROUTE_MARGIN);
    if (g->route_file && !loaded) {
        vitd_err se = {0};
        if (attn_route_save(g->route_file, &key, g->route, g->n_route, &se) != VITD_OK)
            vitd_log(VITD_LOG_WARN, "gpu engine: attn_route_file: %s", se.msg);
        else
            vitd_log(VITD_LOG_INFO, "gpu engine: attention routing table written to %s", g->route_file);
    }
    g->route_any_fp8 = 0;
    for (int i = 0; i < g->n_route; i++) g->route_any_fp8 |= g->route[i].fp8;
    char table[2048];
    attn_route_format(g->route, g->n_route, table, sizeof table);
    vitd_log(VITD_LOG_INFO, "gpu engine: attn_dtype auto: attention step per layer %s %s in %.0f ms (a batch "
             "takes the decision of the longest measured length <= its longest image, then the most images <= its "
             "count; below all: bf16): %s", loaded ? "read from" : "measured", loaded ? g->route_file : "",
             1e3 * (vitd_now() - t0), table);
    if (!g->route_any_fp8)
        vitd_log(VITD_LOG_INFO, "gpu engine: attn_dtype auto: FP8 measured faster on no shape; every batch runs "
                 "BF16 attention");
fail:
    if (ev[0]) cudaEventDestroy(ev[0]);
    if (ev[1]) cudaEventDestroy(ev[1]);
    if (st != VITD_OK) {
        /* a sticky error leaves the context unusable: then the engine cannot be created at all */
        cudaError_t ce = cudaStreamSynchronize(g->s_main);
        if (ce == cudaSuccess) ce = cudaGetLastError();
        if (ce != cudaSuccess) *dead = 1;
        if (!fp8_failed && g->attn_setting == ATTN_MODE_AUTO) *dead = 1; /* the BF16 path failed */
        g->n_route = 0;
        g->route_any_fp8 = 0;
    }
    return st;
}

/* Writes the dynamic scales once, when the amax ring first holds fp8_hist steps: the DESCALE_Q/K/V slots then
 * hold max(ring) / 448 (fp8_kernels.h), copied back with one sync; times the margin, atomically
 * (fp8_scales_save). Only this engine's own state is read, so engines on several GPUs never race (each has its
 * own file). A failure is logged: the batch itself succeeded. */
static void fp8_autosave(gpu_engine *g) {
    const int L = g->cfg.depth;
    const size_t w = ATTN_FP8_SLOT_FLOATS;
    float *h = xmalloc((size_t)L * g->fp8_stride * sizeof *h);
    fp8_qkv *sc = xcalloc((size_t)L, sizeof *sc);
    vitd_err e = {0};
    char source[400];
    g->fp8_saved = 1;
    cudaError_t ce = cudaMemcpy(h, g->d_fp8, (size_t)L * g->fp8_stride * sizeof *h, cudaMemcpyDeviceToHost);
    if (ce != cudaSuccess) {
        vitd_log(VITD_LOG_ERROR, "gpu engine: fp8_save_scales %s: reading the scales: %s", g->fp8_save_path,
                 cudaGetErrorString(ce));
        goto done;
    }
    for (int i = 0; i < L; i++) {
        const float *b = h + (size_t)i * g->fp8_stride;
        sc[i] = (fp8_qkv){b[ATTN_FP8_DESCALE_Q * w], b[ATTN_FP8_DESCALE_K * w], b[ATTN_FP8_DESCALE_V * w]};
    }
    snprintf(source, sizeof source, "vitd dynamic scaling: max amax of %d batches / 448 on GPU %d (%s)", g->fp8_hist,
             g->device, g->device_name);
    if (fp8_scales_save(g->fp8_save_path, sc, L, g->fp8_save_margin, source, &e) != VITD_OK)
        vitd_log(VITD_LOG_ERROR, "gpu engine: fp8_save_scales: %s", e.msg);
    else
        vitd_log(VITD_LOG_INFO, "gpu engine: wrote the FP8 scales of %d layers (history %d, margin %.2f) to %s", L,
                 g->fp8_hist, g->fp8_save_margin, g->fp8_save_path);
done:
    free(h);
    free(sc);
}

/* Merger j (-1 = final) on the residual stream, result in out slot (0 final, 1+j deepstack), then its D2H copy on
 * the download stream into the batch slot's pinned staging. The output buffer is written only after the previous
 * batch's copy of it has finished (ev_out_free). */
static vitd_status run_merger(gpu_engine *g, eng_slot *sl, int j, int n_tokens, vitd_err *err) {
    vitd_status st = VITD_OK;
    const eng_merger *mg = j < 0 ? &g->merger : &g->ds[j];
    const int slot = j + 1, gd = g->g * g->d, nm = n_tokens / g->g;
    if (j < 0) KTRY(ln_bf16(g->x, mg->nw, mg->nb, g->h, n_tokens, g->d, (float)g->cfg.ln_eps, g->s_main));
    else KTRY(ln_bf16(g->x, mg->nw, mg->nb, g->h, nm, gd, (float)g->cfg.ln_eps, g->s_main));
    if ((st = gemm(g, g->h, mg->fc1_w, mg->fc1_b, g->qkv, nm, gd, gd, GEMM_EPI_BIAS, 0, err)) != VITD_OK) goto fail;
    KTRY(gelu_erf_bf16(g->qkv, (size_t)nm * gd, g->s_main));
    CUDA_TRY(cudaStreamWaitEvent(g->s_main, g->ev_out_free[slot], 0));
    if ((st = gemm(g, g->qkv, mg->fc2_w, mg->fc2_b, g->out[slot], nm, gd, g->Dout, GEMM_EPI_BIAS, 0, err)) != VITD_OK)
        goto fail;
    engine_prof_mark(g, j < 0 ? ST_MERGER : ST_DEEPSTACK);
    const size_t n_el = (size_t)nm * g->Dout;
    CUDA_TRY(cudaEventRecord(g->ev_out[slot], g->s_main));
    CUDA_TRY(cudaStreamWaitEvent(g->s_down, g->ev_out[slot], 0));
    CUDA_TRY(cudaMemcpyAsync(sl->h_out + (size_t)slot * (g->max_tokens / g->g) * g->Dout, g->out[slot], n_el * 2,
                             cudaMemcpyDeviceToHost, g->s_down));
    CUDA_TRY(cudaEventRecord(sl->ev_d2h[slot], g->s_down));
    CUDA_TRY(cudaEventRecord(g->ev_out_free[slot], g->s_down));
fail:
    return st;
}

/* Image i of a batch holding rows [row0[i], row0[i+1]) (n images): the largest i with row0[i] <= row. */
static int image_of(const size_t *row0, int n, size_t row) {
    int lo = 0, hi = n - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (row0[mid] <= row) lo = mid;
        else hi = mid - 1;
    }
    return lo;
}

/* Pixels f32 -> bf16 into pinned staging over elements [begin, end) of the batch's [N, K] rows, read from the
 * contiguous pixel_values or from each image's own buffer (vitd_batch's two forms). */
typedef struct {
    const vitd_batch *b;
    const size_t *row0;
    size_t K;
    uint16_t *out; /* batch row 0 */
} pix_job;

static void pix_range(void *arg, size_t begin, size_t end) {
    const pix_job *j = arg;
    if (j->b->pixel_values) {
        gpu_engine_host_to_bf16(j->b->pixel_values + begin, j->out + begin, end - begin);
        return;
    }
    for (int i = image_of(j->row0, j->b->n_images, begin / j->K); begin < end; i++) {
        const size_t first = j->row0[i] * j->K, last = j->row0[i + 1] * j->K, stop = end < last ? end : last;
        gpu_engine_host_to_bf16(j->b->image_pixels[i] + (begin - first), j->out + begin, stop - begin);
        begin = stop;
    }
}

/* Output slot (0 final, 1+j deepstack j) over elements [begin, end) of its [N/g, Dout] bf16 rows, into the
 * contiguous outputs (as f32) or each image's own buffers (f32, or bf16 copied as it is where image_bf16 says;
 * skipping images that want no deepstack). */
typedef struct {
    const vitd_batch *b;
    const size_t *row0; /* in patches; tokens are row0 / g */
    size_t g, D, Nm;
    int slot;
    const uint16_t *in;
} out_job;

static void out_range(void *arg, size_t begin, size_t end) {
    const out_job *j = arg;
    const vitd_batch *b = j->b;
    const int layer = j->slot - 1;
    if (b->pixel_values) {
        float *dst = layer < 0 ? b->embeddings : b->deepstack + (size_t)layer * j->Nm * j->D;
        gpu_engine_host_to_f32(j->in + begin, dst + begin, end - begin);
        return;
    }
    for (int i = image_of(j->row0, b->n_images, begin / j->D * j->g); begin < end; i++) {
        const size_t t0 = j->row0[i] / j->g, t1 = j->row0[i + 1] / j->g;
        const size_t first = t0 * j->D, last = t1 * j->D, stop = end < last ? end : last;
        float *dst = layer < 0 ? b->image_embeddings[i] : b->image_deepstack[i];
        if (dst && b->image_bf16 && b->image_bf16[i]) {
            /* the caller takes bfloat16: the engine's own values, copied as they are */
            uint16_t *h = (uint16_t *)(void *)dst;
            if (layer >= 0) h += (size_t)layer * (t1 - t0) * j->D;
            memcpy(h + (begin - first), j->in + begin, (stop - begin) * sizeof(uint16_t));
        } else if (dst) {
            if (layer >= 0) dst += (size_t)layer * (t1 - t0) * j->D;
            gpu_engine_host_to_f32(j->in + begin, dst + (begin - first), stop - begin);
        }
        begin = stop;
    }
}

/* Waits for output slot's D2H copy and converts it to float32 into the caller's buffers (host threads). */
static vitd_status collect_output(gpu_engine *g, eng_slot *sl, int slot, double *wait_s, double *conv_s,
                                  vitd_err *err) {
    vitd_status st = VITD_OK;
    double t0 = vitd_now();
    CUDA_TRY(cudaEventSynchronize(sl->ev_d2h[slot]));
    double t1 = vitd_now();
    const size_t Nm = (size_t)sl->n_tokens / g->g, n_el = Nm * g->Dout;
    out_job job = {&sl->b, sl->row0, (size_t)g->g, (size_t)g->Dout, Nm, slot,
                   sl->h_out + (size_t)slot * (g->max_tokens / g->g) * g->Dout};
    pool_run(&g->pool, n_el, (size_t)1 << 17, out_range, &job);
    *wait_s += t1 - t0;
    *conv_s += vitd_now() - t1;
fail:
    return st;
}

/* Checks a batch against the engine's limits; fills the slot's per-token geometry, cu_seqlens, segment lengths
 * and image row offsets. */
static vitd_status batch_setup(gpu_engine *g, eng_slot *sl, const vitd_batch *b, vitd_err *err) {
    if (!b || b->n_images < 1 || !b->grids ||
        (b->pixel_values ? !b->embeddings : !b->image_pixels || !b->image_embeddings))
        return vitd_fail(err, VITD_E_INVALID_ARG, "gpu engine: batch needs n_images >= 1, grids, and pixel_values "
                         "with embeddings or image_pixels with image_embeddings");
    if (b->n_images > g->max_images)
        return vitd_fail(err, VITD_E_TOO_LARGE, "batch has %d images, more than the engine's limit %d", b->n_images,
                         g->max_images);
    size_t n = 0;
    int segs = 0, want_ds = 0;
    for (int i = 0; i < b->n_images; i++) {
        const vitd_grid *gr = &b->grids[i];
        if (gr->t < 1 || gr->h < 1 || gr->w < 1 || gr->h % g->m || gr->w % g->m)
            return vitd_fail(err, VITD_E_INVALID_ARG, "image %d: grid_thw [%d, %d, %d] needs t, h, w >= 1 with h and "
                             "w multiples of spatial_merge_size %d", i, gr->t, gr->h, gr->w, g->m);
        if (!b->pixel_values && (!b->image_pixels[i] || !b->image_embeddings[i]))
            return vitd_fail(err, VITD_E_INVALID_ARG, "image %d: no pixel or embeddings buffer", i);
        const size_t hw = (size_t)gr->h * (size_t)gr->w, ti = (size_t)gr->t * hw;
        if (hw > g->max_tokens || ti > g->max_tokens || n + ti > g->max_tokens)
            return vitd_fail(err, VITD_E_TOO_LARGE, "image %d: batch reaches %zu patches, over max_batch_tokens %zu",
                             i, n + ti, g->max_tokens);
        if (segs + gr->t > g->max_images)
            return vitd_fail(err, VITD_E_TOO_LARGE, "image %d: batch has more than %d images (frames), the engine's "
                             "limit", i, g->max_images);
        sl->row0[i] = n;
        for (int f = 0; f < gr->t; f++) {
            sl->h_lens[segs] = (int)hw;
            sl->h_cu[segs + 1] = (int32_t)(n + (size_t)(f + 1) * hw);
            segs++;
        }
        for (size_t q = 0; q < hw; q++) {
            int row, col;
            cpu_token_pos((int)q, gr->w, g->m, &row, &col);
            int32_t *t = sl->h_tok + (n + q) * 4;
            t[0] = row;
            t[1] = col;
            t[2] = gr->h;
            t[3] = gr->w;
        }
        for (int f = 1; f < gr->t; f++) memcpy(sl->h_tok + (n + f * hw) * 4, sl->h_tok + n * 4, hw * 16);
        n += ti;
        want_ds |= b->pixel_values ? b->deepstack != NULL : b->image_deepstack && b->image_deepstack[i];
    }
    sl->row0[b->n_images] = n;
    sl->h_cu[0] = 0;
    sl->b = *b;
    sl->n_tokens = (int)n;
    sl->n_seg = segs;
    sl->want_ds = want_ds && g->cfg.n_deepstack > 0;
    return VITD_OK;
}

/* Sums the profiling marks of the batch just finished (the engine is idle: profiling runs one batch at a time). */
static void prof_collect(gpu_engine *g, eng_slot *sl) {
    for (int i = 1; i < g->prof_n; i++) {
        float ms = 0;
        if (cudaEventElapsedTime(&ms, g->prof_ev[i - 1], g->prof_ev[i]) == cudaSuccess) {
            g->prof_ms[g->prof_stage[i]] += ms;
            g->prof_calls[g->prof_stage[i]]++;
        }
    }
    float tail = 0;
    if (cudaEventElapsedTime(&tail, g->ev_out[0], sl->ev_d2h[0]) == cudaSuccess) {
        g->prof_ms[ST_D2H_TAIL] += tail;
        g->prof_calls[ST_D2H_TAIL]++;
    }
    g->prof_valid = 1;
}

/* Leaves the engine idle after a failure: drains the three streams (errors already reported). */
static void drain(gpu_engine *g) {
    cudaStreamSynchronize(g->s_main);
    cudaStreamSynchronize(g->s_up);
    cudaStreamSynchronize(g->s_down);
    cudaGetLastError();
}

vitd_status gpu_engine_submit(gpu_engine *g, const vitd_batch *b, vitd_err *err) {
    vitd_status st = VITD_OK;
    if (g->n_flight == ENGINE_SLOTS)
        return vitd_fail(err, VITD_E_BUSY, "gpu engine: %d batches in flight; wait for one first", ENGINE_SLOTS);
    if (g->prof_on && g->n_flight)
        return vitd_fail(err, VITD_E_BUSY, "gpu engine: profiling runs one batch at a time; wait first");
    eng_slot *sl = &g->slot[(g->head + g->n_flight) % ENGINE_SLOTS];
    sl->t_submit = vitd_now();
    sl->host_in = 0;
    CUDA_TRY(cudaSetDevice(g->device));
    if ((st = batch_setup(g, sl, b, err)) != VITD_OK) return st;
    const int N = sl->n_tokens, n_seg = sl->n_seg, d = g->d;
    int max_len = 0;
    for (int i = 0; i < n_seg; i++)
        if (sl->h_lens[i] > max_len) max_len = sl->h_lens[i];
    int fp8 = choose_fp8(g, n_seg, max_len);
    if (g->prof_on) {
        memset(g->prof_ms, 0, sizeof g->prof_ms);
        memset(g->prof_calls, 0, sizeof g->prof_calls);
        g->prof_n = 0;
        g->prof_valid = 0;
    }
    engine_prof_mark(g, ST_EMBED);

    /* Geometry and segments (small) on the compute stream, then the attention batch and rotary tables. */
    CUDA_TRY(cudaMemcpyAsync(g->tok, sl->h_tok, (size_t)N * 16, cudaMemcpyHostToDevice, g->s_main));
    CUDA_TRY(cudaMemcpyAsync(g->cu, sl->h_cu, ((size_t)n_seg + 1) * 4, cudaMemcpyHostToDevice, g->s_main));
    gpu_attn_batch ab = {.n_images = n_seg, .lens = sl->h_lens, .d_cu_seqlens = g->cu};
    if ((st = gpu_attn_begin(g->attn, &ab, g->s_main, err)) != VITD_OK) goto fail;
    if (fp8 && g->defer && g->attn_setting == ATTN_MODE_AUTO && g->force < 0) {
        /* auto never waits for an FP8 plan build: BF16 this time, the plan is built by gpu_engine_idle */
        int ready = 0;
        if ((st = gpu_attn_fp8_ready(g->attn, &ready, err)) != VITD_OK) goto fail;
        if (!ready) {
            fp8 = 0;
            g->deferred_fp8++;
        }
    }
    sl->fp8 = fp8;
    KTRY(rope_tables(g->tok, N, g->inv_freq, g->hd, g->cos_t, g->sin_t, g->s_main));
    engine_prof_mark(g, ST_POS_ROPE);

    /* Pixels: host f32 -> bf16 into the slot's pinned staging a chunk at a time; each chunk's upload (after the
     * previous batch's patch embedding has read the device buffer) and patch-embed GEMM are enqueued before the
     * next chunk is converted. */
    CUDA_TRY(cudaStreamWaitEvent(g->s_up, g->ev_embed, 0));
    int chunk = ENGINE_CHUNK_ROWS;
    while ((N + chunk - 1) / chunk > ENGINE_MAX_CHUNKS) chunk *= 2;
    for (int r0 = 0, ci = 0; r0 < N; r0 += chunk, ci++) {
        const int rows = N - r0 < chunk ? N - r0 : chunk;
        const size_t off = (size_t)r0 * g->K, n_el = (size_t)rows * g->K;
        double t0 = vitd_now();
        pix_job job = {&sl->b, sl->row0, (size_t)g->K, sl->h_pix};
        pool_run_range(&g->pool, off, off + n_el, (size_t)1 << 17, pix_range, &job);
        sl->host_in += vitd_now() - t0;
        CUDA_TRY(cudaMemcpyAsync(g->pix + off, sl->h_pix + off, n_el * 2, cudaMemcpyHostToDevice, g->s_up));
        CUDA_TRY(cudaEventRecord(g->ev_chunk[ci], g->s_up));
        CUDA_TRY(cudaStreamWaitEvent(g->s_main, g->ev_chunk[ci], 0));
        if ((st = gemm(g, g->pix + off, g->patch_w, g->patch_b, g->x + (size_t)r0 * d, rows, g->K, d, GEMM_EPI_BIAS,
                       0, err)) != VITD_OK)
            goto fail;
    }
    CUDA_TRY(cudaEventRecord(g->ev_embed, g->s_main));
    engine_prof_mark(g, ST_EMBED);
    KTRY(pos_embed_add_bf16(g->x, g->pos_table, g->side, d, g->tok, N, g->s_main));
    engine_prof_mark(g, ST_POS_ROPE);

    /* The blocks, in segments that end at a deepstack tap (the merger runs between them, outside any graph). */
    eng_pass pass = {.N = N, .fp8 = fp8, .lin = lin8_choose(g, N)};
    if (pass.lin && !g->lin_static && g->lin_steps == 0) {
        pass.lin = 0; /* the first FP8-linear batch records the amax its successors are scaled by */
        pass.lin_calib = 1;
    }
    sl->lin = pass.lin != 0;
    for (int i0 = 0; i0 < g->cfg.depth;) {
        int i1 = i0 + 1, tap = -1;
        for (; i1 <= g->cfg.depth; i1++) {
            for (int j = 0; sl->want_ds && j < g->cfg.n_deepstack; j++)
                if (g->cfg.deepstack_indexes[j] == i1 - 1) tap = j;
            if (tap >= 0 || i1 == g->cfg.depth) break;
        }
        if ((st = graph_segment(g, &pass, sl, i0, i1, err)) != VITD_OK) goto fail;
        if (tap >= 0 && (st = run_merger(g, sl, tap, N, err)) != VITD_OK) goto fail;
        i0 = i1;
    }
    if ((st = lin8_end_pass(g, &pass, err)) != VITD_OK) goto fail;
    if ((st = run_merger(g, sl, -1, N, err)) != VITD_OK) goto fail;
    g->n_flight++;
    return VITD_OK;
fail:
    drain(g);
    return st;
}

vitd_status gpu_engine_wait(gpu_engine *g, vitd_err *err) {
    vitd_status st = VITD_OK;
    if (!g->n_flight) return vitd_fail(err, VITD_E_INVALID_ARG, "gpu engine: no batch in flight");
    eng_slot *sl = &g->slot[g->head];
    double host_out = 0, host_wait = 0;
    CUDA_TRY(cudaSetDevice(g->device));
    /* Outputs in the order they are made: deepstack (converted while later blocks run), then the final merger. */
    for (int j = 0; sl->want_ds && j < g->cfg.n_deepstack; j++)
        if ((st = collect_output(g, sl, 1 + j, &host_wait, &host_out, err)) != VITD_OK) goto fail;
    if ((st = collect_output(g, sl, 0, &host_wait, &host_out, err)) != VITD_OK) goto fail;
    CUDA_TRY(cudaGetLastError());
    g->last_path = sl->fp8;
    g->last_lin = sl->lin;
    if (sl->fp8 && g->fp8_save_path && !g->fp8_saved && g->fp8_steps[g->cfg.depth - 1] >= g->fp8_hist) {
        CUDA_TRY(cudaStreamSynchronize(g->s_main)); /* the scales as the batches submitted so far left them */
        fp8_autosave(g);
    }
    if (g->prof_on) {
        CUDA_TRY(cudaStreamSynchronize(g->s_main));
        prof_collect(g, sl);
        g->prof_ms[ST_HOST_IN] = sl->host_in * 1e3;
        g->prof_ms[ST_HOST_OUT] = host_out * 1e3;
        g->prof_ms[ST_HOST_WAIT] = host_wait * 1e3;
        g->prof_ms[ST_WALL] = (vitd_now() - sl->t_submit) * 1e3;
        g->prof_calls[ST_HOST_IN] = g->prof_calls[ST_HOST_OUT] = g->prof_calls[ST_HOST_WAIT] =
            g->prof_calls[ST_WALL] = 1;
    }
fail:
    g->head = (g->head + 1) % ENGINE_SLOTS;
    g->n_flight--;
    if (st != VITD_OK) drain(g); /* nothing of this batch may still run when its slot is reused */
    return st;
}

int gpu_engine_in_flight(const gpu_engine *g) { return g->n_flight; }

int gpu_engine_idle(gpu_engine *g) {
    if (g->n_flight || !g->defer || gpu_attn_pending(g->attn) == 0) return 0;
    vitd_err e = {0};
    int left = 0;
    const double t0 = vitd_now();
    if (cudaSetDevice(g->device) != cudaSuccess ||
        gpu_attn_build_pending(g->attn, 1, &left, &e) != VITD_OK) {
        vitd_log(VITD_LOG_WARN, "gpu engine: deferred attention plan build failed (batches keep other plans): %s",
                 e.msg[0] ? e.msg : "cudaSetDevice failed");
        return gpu_attn_pending(g->attn);
    }
    vitd_log(VITD_LOG_DEBUG, "gpu engine: deferred plan built in %.0f ms, %d pending, %ld batches so far ran BF16 "
             "while their FP8 plan was deferred", 1e3 * (vitd_now() - t0), left, g->deferred_fp8);
    return left;
}

vitd_status gpu_engine_run(gpu_engine *g, const vitd_batch *b, vitd_err *err) {
    if (g->n_flight)
        return vitd_fail(err, VITD_E_BUSY, "gpu engine: run with %d batches in flight", g->n_flight);
    vitd_status st = gpu_engine_submit(g, b, err);
    if (st != VITD_OK) return st;
    return gpu_engine_wait(g, err);
}

/* ---- device failure ---- */

int gpu_engine_device_lost(gpu_engine *g, vitd_err *why) {
    (void)g;
    cudaError_t e = cudaDeviceSynchronize(); /* a sticky error comes back from every call from now on */
    if (e == cudaSuccess) return 0;
    vitd_fail(why, VITD_E_GPU, "CUDA context lost: %s (%s)", cudaGetErrorString(e), cudaGetErrorName(e));
    return 1;
}

void gpu_engine_inject_fault(gpu_engine *g) { (void)fault_illegal_write(g->s_main); }
