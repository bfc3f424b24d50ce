/* engine_forward.c — the GPU engine's forward pass (gpu_engine.h): the Qwen3-VL vision tower in BF16 on one Hopper
 * GPU, with FP8 attention and FP8 linear layers where asked for or (auto) measured faster.
 *
 * The pass mirrors cpu_forward.c (MODEL.md 3) step by step, on the buffers gpu_engine.c planned:
 *
 *   pixels f32 -> bf16 (host, into pinned staging) -> H2D per chunk       [copy stream]
 *   patch-embed GEMM + bias per chunk (weight [d, C*T*P*P])                [compute stream, waits per chunk]
 *   + interpolated position embedding (kernels/pos_embed.cu); rotary tables (kernels/rope.cu)
 *   per block: LN1 -> QKV GEMM + bias -> rotary + split + pad (rope.cu) -> cuDNN BF16 attention ->
 *              proj GEMM + bias accumulated into the residual -> LN2 -> fc1 GEMM + bias + tanh-GELU epilogue ->
 *              fc2 GEMM + bias accumulated into the residual (run_block; engine_attn.c has the attention step)
 *   FP8 linear batches (engine_lin8.c) run the chosen GEMMs in E4M3 on operands their producers quantised: the
 *   LayerNorms write E4M3 (ln_quant), fc1 writes E4M3 for fc2, proj reads the FP8 attention's o8;
 *   the blocks between two deepstack taps run as one segment, replayed from a CUDA graph when the batch shape
 *   repeats (engine_graph.c)
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
#include <stdlib.h>
#include <string.h>

#include "engine_kernels.h"
#include "engine_priv.h"
#include "fp8_kernels.h"
#include "util.h"

static const char *const stage_names[ST_COUNT] = {
    "h2d_wait+patch_embed", "pos_embed+rope_tables", "layernorm", "qkv_gemm", "rope_pack", "attention",
    "proj_gemm+residual", "fc1_gemm+gelu", "fc2_gemm+residual", "deepstack_mergers", "final_merger",
    "fp8_rope_quant(+amax)", "fp8_dequant+ring", "fp8_linear_scales", "d2h_tail(final)", "host_pixels_to_bf16",
    "host_outputs_to_f32", "host_wait", "wall_total"};

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

/* y[n, out] = x W^T + b (+ y), see gpu_gemm.h. */
static vitd_status gemm(gpu_engine *g, const void *x, const void *w, const void *bias, void *y, int n, int in, int out,
                        gemm_epilogue epi, int acc, vitd_err *err) {
    return gpu_gemm_bf16(g->gemm, x, w, bias, y, n, in, out, epi, acc, g->s_main, err);
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

    if ((st = engine_attention(g, p, i, proj8, err)) != VITD_OK) goto fail;
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
    if (p->lin_calib && !g->lin_static)
        KTRY(fp8_amax_bf16(g->mlp, (size_t)N * g->I, S + LIN8_AT(LIN8_AMAX, 2), g->s_main));
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
    engine_pool_run(&g->pool, n_el, (size_t)1 << 17, out_range, &job);
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
    int fp8 = engine_choose_fp8(g, n_seg, max_len);
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
    if (fp8) {
        /* The batch's FP8 plans are looked up (and pinned against eviction while the batch may run) here, not only
         * inside the attention call: a segment replayed from a CUDA graph makes no attention call, and an unpinned
         * plan freed while the replay waits would unload its kernel. Auto never waits for an FP8 plan build (with
         * deferred builds): BF16 this time, the plan is built by gpu_engine_idle. */
        int ready = 0;
        if ((st = gpu_attn_fp8_ready(g->attn, &ready, err)) != VITD_OK) goto fail;
        if (!ready && g->defer && g->attn_setting == ATTN_MODE_AUTO && g->force < 0) {
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
        engine_pool_run_range(&g->pool, off, off + n_el, (size_t)1 << 17, pix_range, &job);
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
    eng_pass pass = {.N = N, .n_seg = n_seg, .fp8 = fp8, .lin = lin8_choose(g, N)};
    if (pass.lin && !g->lin_static && g->lin_steps == 0) {
        pass.lin = 0; /* the first FP8-linear batch records the amax its successors are scaled by */
        pass.lin_calib = 1;
    }
    if (g->lin_record) pass.lin_calib = 1; /* vitd calibrate: every batch */
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
        engine_fp8_autosave(g);
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
