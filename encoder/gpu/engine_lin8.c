/* engine_lin8.c — the GPU engine's FP8 linear layers (issue 14; README "FP8 linear layers").
 *
 * What runs in FP8: the GEMMs of every block named by linear_fp8_gemms (qkv, proj, fc1, fc2), E4M3 x E4M3 in
 * cuBLASLt with float32 accumulation and bf16 output (fc1 writes E4M3 when fc2 is FP8 too). The mergers stay BF16
 * (5 GEMMs per batch against 108 in the blocks). A batch runs FP8 linear as a whole or not at all
 * (linear_dtype fp8: always; auto: where the table measured at creation says FP8 is faster; bf16: never).
 *
 * Weights: quantised once at creation on the GPU from the uploaded bf16 weights, one scale per tensor
 * (descale = amax / 448): cuBLASLt on Hopper takes scalar scales, and the CPU twin measured per-channel scales
 * no more accurate than per-tensor ones on these GEMMs (bench/RESULTS.md, "FP8 linear layers, accuracy on the
 * CPU twin": the loss is E4M3's 3 mantissa bits, not its range).
 * Activations: quantised by the kernel that makes them (engine_priv.h / gpu_engine.c run_block): LayerNorm writes
 * E4M3 for QKV and fc1 (ln_quant), fc1's epilogue writes E4M3 for fc2 (cuBLASLt D scale, amax), and proj reads the
 * FP8 attention's own E4M3 output (so proj is FP8 only in batches whose attention is FP8). Their scales are
 * dynamic, delayed as the attention's: the amax of each batch goes into a ring of fp8_history batches and the
 * next batch is scaled by max(ring) / 448 (fp8_kernels.h LIN8_*; one ring-update launch per batch for the whole
 * tower). The engine's first FP8-linear batch runs BF16 GEMMs while recording the amax (no scale exists yet).
 *
 * auto's table: at creation, block 0's four GEMMs timed in both precisions at 1K, 4K, 16K and 64K tokens (up to
 * max_batch_tokens); a batch takes FP8 when its nearest measured size (the largest <= N, else the smallest) ran
 * FP8 at least 2% faster. Logged at start-up; gpu_engine_linear_table() returns it.
 */
#include <stdlib.h>
#include <string.h>

#include "engine_kernels.h"
#include "engine_priv.h"
#include "fp8_kernels.h"
#include "fp8_scales.h"
#include "util.h"

#define LIN8_DEFAULT_GEMMS "qkv,fc1"
#define LIN8_AUTO_GAIN 0.98 /* auto takes FP8 where it ran in <= 98% of the BF16 time */

static size_t r256(size_t n) { return (n + 255) & ~(size_t)255; }

/* "qkv,proj,fc1,fc2" (any subset, any order, or "all") -> LIN8_* bits; 0 with *bad naming the problem. */
static unsigned parse_gemms(const char *s, char *bad, size_t n_bad) {
    static const char *const names[4] = {"qkv", "proj", "fc1", "fc2"};
    unsigned mask = 0;
    const char *p = s;
    while (*p) {
        const char *e = strchr(p, ',');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        int hit = -1;
        if (len == 3 && !strncmp(p, "all", 3)) {
            mask |= LIN8_ALL;
            hit = 4;
        }
        for (int k = 0; k < 4 && hit < 0; k++)
            if (strlen(names[k]) == len && !strncmp(p, names[k], len)) hit = k;
        if (hit < 0) {
            snprintf(bad, n_bad, "'%.*s' is not one of qkv, proj, fc1, fc2, all", (int)(len < 40 ? len : 40), p);
            return 0;
        }
        if (hit < 4) mask |= 1u << hit;
        p += len;
        if (*p == ',') p++;
    }
    if (!mask) snprintf(bad, n_bad, "no GEMM named");
    else if ((mask & LIN8_FC2) && !(mask & LIN8_FC1)) {
        snprintf(bad, n_bad, "fc2 needs fc1 (fc2 reads fc1's E4M3 output)");
        return 0;
    }
    return mask;
}

vitd_status lin8_parse(gpu_engine *g, const vitd_encoder_opts *opts, vitd_err *err) {
    const char *v = opts->linear_dtype && *opts->linear_dtype ? opts->linear_dtype : "bf16";
    const char *gs = opts->linear_fp8_gemms && *opts->linear_fp8_gemms ? opts->linear_fp8_gemms : LIN8_DEFAULT_GEMMS;
    char bad[96] = "";
    if (!strcmp(v, "bf16")) g->lin_setting = LIN8_MODE_BF16;
    else if (!strcmp(v, "fp8")) g->lin_setting = LIN8_MODE_FP8;
    else if (!strcmp(v, "auto")) g->lin_setting = LIN8_MODE_AUTO;
    else return vitd_fail(err, VITD_E_INVALID_ARG, "linear_dtype '%s' is not one of bf16, fp8, auto", v);
    g->lin_mask = parse_gemms(gs, bad, sizeof bad);
    if (!g->lin_mask) return vitd_fail(err, VITD_E_INVALID_ARG, "linear_fp8_gemms '%s': %s", gs, bad);
    const int d = g->d, ok = gpu_gemm_fp8_shape_ok(d, 3 * d) && gpu_gemm_fp8_shape_ok(d, g->I) &&
                             gpu_gemm_fp8_shape_ok(g->H * g->dp, d);
    if (opts->fp8_calibrate) {
        /* calibration runs the BF16 path and records the amax of the three inputs (no E4M3 weights) */
        g->lin_setting = LIN8_MODE_BF16;
        g->lin_record = ok;
        g->lin_stride = lin8_state_floats(1);
        return VITD_OK;
    }
    if (g->lin_setting == LIN8_MODE_BF16) return VITD_OK;
    if (!ok) {
        snprintf(g->lin_fallback, sizeof g->lin_fallback, "hidden_size %d and intermediate_size %d must be "
                 "multiples of 16 for cuBLASLt's FP8 GEMMs", d, g->I);
        if (g->lin_setting == LIN8_MODE_FP8)
            return vitd_fail(err, VITD_E_UNSUPPORTED, "linear_dtype fp8: %s", g->lin_fallback);
        vitd_log(VITD_LOG_WARN, "gpu engine: linear_dtype auto: FP8 linear unavailable: %s; linear layers run BF16",
                 g->lin_fallback);
        g->lin_setting = LIN8_MODE_BF16;
        return VITD_OK;
    }
    g->lin_hist = opts->fp8_history > 0 ? opts->fp8_history : 16;
    g->lin_stride = lin8_state_floats(g->lin_hist);
    return VITD_OK;
}

/* Per block: the four E4M3 weights (proj's padded to [d, H*dp] like its bf16 copy). */
static size_t block_w8_bytes(const gpu_engine *g) {
    const size_t d = g->d, I = g->I;
    return r256(3 * d * d) + r256(d * (size_t)g->H * g->dp) + r256(I * d) + r256(d * I);
}

size_t lin8_bytes(const gpu_engine *g) {
    if (g->lin_record) return r256((size_t)g->cfg.depth * g->lin_stride * sizeof(float));
    if (g->lin_setting == LIN8_MODE_BF16) return 0;
    const size_t L = (size_t)g->cfg.depth;
    return L * block_w8_bytes(g) + r256(L * 16 * sizeof(float)) + r256(L * g->lin_stride * sizeof(float));
}

void lin8_free(gpu_engine *g) {
    if (g->d_lin8) cudaFree(g->d_lin8);
    g->d_lin8 = NULL;
}

/* Quantises every block weight: amax per tensor -> descale -> E4M3, all on the compute stream, one sync. */
static vitd_status quantise_weights(gpu_engine *g, vitd_err *err) {
    vitd_status st = VITD_OK;
    const size_t d = g->d, I = g->I, dpad = (size_t)g->H * g->dp;
    const int L = g->cfg.depth;
    for (int pass = 0; pass < 2; pass++) {
        for (int i = 0; i < L; i++) {
            eng_block *bl = &g->blocks[i];
            const uint16_t *w[4] = {bl->qkv_w, bl->proj_w, bl->fc1_w, bl->fc2_w};
            uint8_t *w8[4] = {bl->qkv_w8, bl->proj_w8, bl->fc1_w8, bl->fc2_w8};
            const size_t n[4] = {3 * d * d, d * dpad, I * d, d * I};
            for (int k = 0; k < 4; k++) {
                float *sc = g->d_wscale + (size_t)i * 16 + (size_t)k * 4;
                if (pass == 0) CUDA_TRY(fp8_amax_bf16(w[k], n[k], sc, g->s_main));
                else CUDA_TRY(fp8_quant_bf16(w[k], n[k], sc, w8[k], g->s_main));
            }
        }
        if (pass == 0) CUDA_TRY(fp8_weight_descale(g->d_wscale, L * 4, 4, g->s_main));
    }
    CUDA_TRY(cudaStreamSynchronize(g->s_main));
    return VITD_OK;
fail:
    return st;
}

/* The time of block 0's four GEMMs at n tokens (min over 2 rounds of the mean of reps calls each), FP8 or BF16,
 * on the zeroed activations (GEMM time does not depend on the values). */
static vitd_status time_gemms(gpu_engine *g, int n, int fp8, cudaEvent_t ev[2], double *ms_out, vitd_err *err) {
    vitd_status st = VITD_OK;
    const eng_block *bl = &g->blocks[0];
    const float *S = g->d_lin, *W = g->d_wscale;
    const int d = g->d, reps = n >= 16384 ? 5 : 20;
    gemm_args a[4] = {
        {.x = g->h, .w = bl->qkv_w, .bias = bl->qkv_b, .y = g->qkv, .n = n, .in = d, .out = 3 * d,
         .epi = GEMM_EPI_BIAS},
        {.x = g->o, .w = bl->proj_w, .bias = bl->proj_b, .y = g->x, .n = n, .in = g->H * g->dp, .out = d,
         .epi = GEMM_EPI_BIAS, .accumulate = 1},
        {.x = g->h, .w = bl->fc1_w, .bias = bl->fc1_b, .y = g->mlp, .n = n, .in = d, .out = g->I,
         .epi = GEMM_EPI_BIAS_GELU_TANH},
        {.x = g->mlp, .w = bl->fc2_w, .bias = bl->fc2_b, .y = g->x, .n = n, .in = g->I, .out = d,
         .epi = GEMM_EPI_BIAS, .accumulate = 1},
    };
    if (fp8) {
        const void *x8[4] = {g->h8, g->o8 ? (const void *)g->o8 : g->h8, g->h8, g->mlp8};
        const void *w8[4] = {bl->qkv_w8, bl->proj_w8, bl->fc1_w8, bl->fc2_w8};
        for (int k = 0; k < 4; k++) {
            if (!(g->lin_mask & (1u << k)) || (k == 1 && !g->fp8_ok)) continue;
            a[k].x = x8[k], a[k].w = w8[k], a[k].fp8 = 1;
            a[k].x_descale = S + LIN8_DESCALE, a[k].w_descale = W + 4 * k;
        }
        if (g->lin_mask & LIN8_FC2) a[2].y = g->mlp8, a[2].y_scale = S + LIN8_SCALE, a[2].y_amax = g->d_lin + LIN8_AMAX;
    }
    double best = 1e30;
    for (int r = -1; r < 2; r++) { /* r = -1 warms up (algorithm choice) */
        float ms = 0;
        CUDA_TRY(cudaEventRecord(ev[0], g->s_main));
        for (int k = 0; k < (r < 0 ? 1 : reps); k++)
            for (int j = 0; j < 4; j++)
                if ((st = gpu_gemm_run(g->gemm, &a[j], g->s_main, err)) != VITD_OK) goto fail;
        CUDA_TRY(cudaEventRecord(ev[1], g->s_main));
        CUDA_TRY(cudaEventSynchronize(ev[1]));
        CUDA_TRY(cudaEventElapsedTime(&ms, ev[0], ev[1]));
        if (r >= 0 && ms / reps < best) best = ms / reps;
    }
    *ms_out = best;
fail:
    return st;
}

static vitd_status time_table(gpu_engine *g, vitd_err *err) {
    vitd_status st = VITD_OK;
    cudaEvent_t ev[2] = {NULL, NULL};
    static const int sizes[] = {1024, 4096, 16384, 65536};
    char line[512];
    int off = 0;
    CUDA_TRY(cudaEventCreate(&ev[0]));
    CUDA_TRY(cudaEventCreate(&ev[1]));
    g->n_lin_route = 0;
    for (int k = 0; k < 4 && g->n_lin_route < LIN8_ROUTE_MAX; k++) {
        int n = sizes[k];
        if ((size_t)n > g->max_tokens) {
            if (k > 0) break;
            n = (int)g->max_tokens;
        }
        gpu_engine_lin_entry *e = &g->lin_route[g->n_lin_route];
        e->tokens = n;
        if ((st = time_gemms(g, n, 0, ev, &e->ms_bf16, err)) != VITD_OK) goto fail;
        if ((st = time_gemms(g, n, 1, ev, &e->ms_fp8, err)) != VITD_OK) goto fail;
        g->n_lin_route++;
        if (off < (int)sizeof line)
            off += snprintf(line + off, sizeof line - (size_t)off, "%s%d tokens %.3f / %.3f ms (%s)",
                            k ? ", " : "", n, e->ms_fp8, e->ms_bf16,
                            e->ms_fp8 <= LIN8_AUTO_GAIN * e->ms_bf16 ? "fp8" : "bf16");
    }
    /* the timing left garbage in the scale state (amax of zero GEMMs): start clean */
    CUDA_TRY(cudaMemsetAsync(g->d_lin, 0, (size_t)g->cfg.depth * g->lin_stride * sizeof(float), g->s_main));
    CUDA_TRY(cudaStreamSynchronize(g->s_main));
    vitd_log(VITD_LOG_INFO, "gpu engine: linear_dtype auto: block GEMMs FP8 / BF16: %s", line);
fail:
    if (ev[0]) cudaEventDestroy(ev[0]);
    if (ev[1]) cudaEventDestroy(ev[1]);
    return st;
}

/* Static scales: the linear entries of opts->fp8_scales, when the file has them, into every layer's DESCALE and
 * SCALE slots (no amax, no ring). */
static vitd_status load_static(gpu_engine *g, const char *path, vitd_err *err) {
    vitd_status st = VITD_OK;
    const int L = g->cfg.depth;
    fp8_lin *sc = xcalloc((size_t)L, sizeof *sc);
    float *h = xcalloc((size_t)L * g->lin_stride, sizeof *h);
    int found = 0;
    if ((st = fp8_scales_load_linear(path, L, sc, &found, err)) != VITD_OK) goto fail;
    if (!found) {
        vitd_log(VITD_LOG_INFO, "gpu engine: %s has no linear entries: FP8 linear layers scale dynamically", path);
        goto fail;
    }
    for (int i = 0; i < L; i++) {
        const float s3[3] = {sc[i].qkv, sc[i].fc1, sc[i].fc2};
        for (int t = 0; t < LIN8_INPUTS; t++) {
            h[(size_t)i * g->lin_stride + LIN8_AT(LIN8_DESCALE, t)] = s3[t];
            h[(size_t)i * g->lin_stride + LIN8_AT(LIN8_SCALE, t)] = 1.0f / s3[t];
        }
    }
    CUDA_TRY(cudaMemcpyAsync(g->d_lin, h, (size_t)L * g->lin_stride * sizeof *h, cudaMemcpyHostToDevice,
                             g->s_main));
    CUDA_TRY(cudaStreamSynchronize(g->s_main)); /* h is freed below */
    g->lin_static = 1;
fail:
    free(sc);
    free(h);
    return st;
}

vitd_status lin8_setup(gpu_engine *g, const vitd_encoder_opts *opts, vitd_err *err) {
    vitd_status st = VITD_OK;
    const size_t L = (size_t)g->cfg.depth, d = g->d, I = g->I, dpad = (size_t)g->H * g->dp;
    const size_t bytes = lin8_bytes(g);
    /* zero fills on the compute stream: the kernels that follow run there (a cudaMemset would run on the legacy
     * stream, which the non-blocking compute stream does not wait for) */
    if (g->lin_record) { /* calibration: the amax slots only */
        CUDA_TRY(cudaMalloc(&g->d_lin8, bytes));
        CUDA_TRY(cudaMemsetAsync(g->d_lin8, 0, bytes, g->s_main));
        CUDA_TRY(cudaStreamSynchronize(g->s_main));
        g->d_lin = g->d_lin8;
        return VITD_OK;
    }
    if (g->lin_setting == LIN8_MODE_BF16) return VITD_OK;
    CUDA_TRY(cudaMalloc(&g->d_lin8, bytes));
    CUDA_TRY(cudaMemsetAsync(g->d_lin8, 0, bytes, g->s_main));
    char *p = g->d_lin8;
    for (size_t i = 0; i < L; i++) {
        eng_block *bl = &g->blocks[i];
        bl->qkv_w8 = (uint8_t *)p, p += r256(3 * d * d);
        bl->proj_w8 = (uint8_t *)p, p += r256(d * dpad);
        bl->fc1_w8 = (uint8_t *)p, p += r256(I * d);
        bl->fc2_w8 = (uint8_t *)p, p += r256(d * I);
    }
    g->d_wscale = (float *)p, p += r256(L * 16 * sizeof(float));
    g->d_lin = (float *)p, p += r256(L * g->lin_stride * sizeof(float));
    VITD_ASSERT((size_t)(p - (char *)g->d_lin8) == bytes);
    if ((st = quantise_weights(g, err)) != VITD_OK) goto fail;
    g->lin_ok = 1;
    if (g->lin_setting == LIN8_MODE_AUTO && (st = time_table(g, err)) != VITD_OK) goto fail;
    if (opts->fp8_scales && *opts->fp8_scales && (st = load_static(g, opts->fp8_scales, err)) != VITD_OK) goto fail;
    vitd_log(VITD_LOG_INFO, "gpu engine: FP8 linear layers (linear_dtype %s): %s%s%s%s in E4M3, per-tensor weight "
             "scales, %s activation scales (history %d); %zu MiB of E4M3 weights",
             g->lin_setting == LIN8_MODE_FP8 ? "fp8" : "auto", g->lin_mask & LIN8_QKV ? "qkv " : "",
             g->lin_mask & LIN8_PROJ ? "proj(with FP8 attention) " : "", g->lin_mask & LIN8_FC1 ? "fc1 " : "",
             g->lin_mask & LIN8_FC2 ? "fc2 " : "", g->lin_static ? "static" : "dynamic", g->lin_hist,
             (L * block_w8_bytes(g)) >> 20);
    return VITD_OK;
fail:
    g->lin_ok = 0;
    return st;
}

unsigned lin8_choose(const gpu_engine *g, int N) {
    if (!g->lin_ok) return 0;
    if (g->lin_force >= 0) return g->lin_force ? g->lin_mask : 0;
    if (g->lin_setting == LIN8_MODE_FP8) return g->lin_mask;
    if (g->lin_setting != LIN8_MODE_AUTO || g->n_lin_route == 0) return 0;
    const gpu_engine_lin_entry *e = &g->lin_route[0];
    for (int k = 1; k < g->n_lin_route; k++)
        if (g->lin_route[k].tokens <= N) e = &g->lin_route[k];
    return e->ms_fp8 <= LIN8_AUTO_GAIN * e->ms_bf16 ? g->lin_mask : 0;
}

vitd_status lin8_end_pass(gpu_engine *g, const eng_pass *p, vitd_err *err) {
    vitd_status st = VITD_OK;
    /* calibration keeps folding every batch's amax into the slots (no ring) */
    if ((!p->lin && !p->lin_calib) || g->lin_static || g->lin_record) return VITD_OK;
    CUDA_TRY(lin8_ring_update(g->d_lin, g->cfg.depth, g->lin_stride, g->lin_hist, g->s_main));
    engine_prof_mark(g, ST_LIN8_SCALES);
    g->lin_steps++;
    return VITD_OK;
fail:
    return st;
}

/* ---- public ---- */

const char *gpu_engine_linear_dtype(const gpu_engine *g) {
    if (!g->lin_ok) return "bf16";
    if (g->lin_setting == LIN8_MODE_FP8) return "fp8";
    for (int k = 0; k < g->n_lin_route; k++)
        if (g->lin_route[k].ms_fp8 <= LIN8_AUTO_GAIN * g->lin_route[k].ms_bf16) return "auto";
    return "bf16";
}

const char *gpu_engine_last_linear(const gpu_engine *g) {
    return g->last_lin < 0 ? "" : g->last_lin ? "fp8" : "bf16";
}

vitd_status gpu_engine_set_linear(gpu_engine *g, const char *path, vitd_err *err) {
    if (!path || !strcmp(path, "auto")) g->lin_force = -1;
    else if (!strcmp(path, "bf16")) g->lin_force = 0;
    else if (!strcmp(path, "fp8")) {
        if (!g->lin_ok)
            return vitd_fail(err, VITD_E_UNSUPPORTED, "gpu engine: no FP8 linear path (linear_dtype bf16%s%s)",
                             g->lin_fallback[0] ? ": " : "", g->lin_fallback);
        g->lin_force = 1;
    } else {
        return vitd_fail(err, VITD_E_INVALID_ARG, "gpu engine: linear path '%s' is not bf16, fp8 or auto", path);
    }
    return VITD_OK;
}

vitd_status gpu_engine_lin8_amax(gpu_engine *g, float *amax, vitd_err *err) {
    vitd_status st = VITD_OK;
    if (!g->lin_record)
        return vitd_fail(err, VITD_E_UNSUPPORTED, "gpu engine: linear amax is recorded by calibration engines "
                         "(fp8_calibrate) of models whose widths suit FP8 GEMMs only%s%s",
                         g->lin_fallback[0] ? ": " : "", g->lin_fallback);
    const int L = g->cfg.depth;
    float *h = xmalloc((size_t)L * g->lin_stride * sizeof *h);
    CUDA_TRY(cudaSetDevice(g->device));
    CUDA_TRY(cudaStreamSynchronize(g->s_main));
    CUDA_TRY(cudaMemcpy(h, g->d_lin, (size_t)L * g->lin_stride * sizeof *h, cudaMemcpyDeviceToHost));
    for (int i = 0; i < L; i++)
        for (int t = 0; t < LIN8_INPUTS; t++) amax[i * 3 + t] = h[(size_t)i * g->lin_stride + LIN8_AT(LIN8_AMAX, t)];
fail:
    free(h);
    return st;
}

int gpu_engine_linear_table(const gpu_engine *g, const gpu_engine_lin_entry **entries) {
    *entries = g->lin_route;
    return g->n_lin_route;
}
