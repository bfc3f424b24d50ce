/* engine_attn.c — the GPU engine's attention step and its FP8 set-up: BF16 (rotary + split + pad, cuDNN BF16) or
 * FP8 (rotary + quantise + pad + amax, cuDNN FP8, dequantise or the FP8 projection's own read), the per-layer scale
 * state, the start-up plans and timing table of attn_dtype auto (attn_route.h), the one-shot save of the dynamic
 * scales, and the attention part of gpu_engine.h's API. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "engine_kernels.h"
#include "engine_priv.h"
#include "fp8_kernels.h"
#include "fp8_scales.h"
#include "util.h"

/* The BF16 attention step of a batch of n_tokens in n_seg segments (cu_seqlens in g->cu) into o [N, H, dp] (pad
 * lanes 0): vitd's own rotary + attention kernel when n_tokens <= attn_short_max (one launch; small batches,
 * where the separate rotary pass costs as much as the attention and cuDNN's kernels fill little of the GPU), else
 * rotary + split + pad of the QKV output and cuDNN BF16 attention. calib: float[4] where the amax of Q, K
 * (rotated) and V is folded in (vitd calibrate), or NULL. */
static vitd_status attention_bf16(gpu_engine *g, int n_tokens, int n_seg, float *calib, vitd_err *err) {
    vitd_status st = VITD_OK;
    if (calib) KTRY(fp8_quant_qkv_amax(g->qkv, g->cos_t, g->sin_t, n_tokens, g->H, g->hd, calib, g->s_main));
    if (n_tokens <= g->attn_short_max) {
        const int tiling = g->short_force >= 0 ? g->short_force
                                               : attn_short_tiling(g->short_tiling, ATTN_SHORT_LENS, n_tokens);
        KTRY(attn_rope_bf16_tiled(g->qkv, g->cos_t, g->sin_t, g->cu, n_seg, n_tokens, g->H, g->hd, g->dp, g->o,
                                  tiling, g->s_main));
        engine_prof_mark(g, ST_ATTN);
        return VITD_OK;
    }
    KTRY(rope_pack_qkv_bf16(g->qkv, g->cos_t, g->sin_t, n_tokens, g->H, g->hd, g->dp, g->q, g->k, g->v, g->s_main));
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
vitd_status engine_attention(gpu_engine *g, const eng_pass *p, int layer, int keep_o8, vitd_err *err) {
    if (!p->fp8)
        return attention_bf16(g, p->N, p->n_seg, g->d_calib ? g->d_calib + (size_t)layer * 4 : NULL, err);
    float *L = g->d_fp8 + (size_t)layer * g->fp8_stride;
    vitd_status st = attention_fp8(g, L, p->N, g->fp8_steps[layer] == 0, keep_o8, err);
    if (st == VITD_OK) g->fp8_steps[layer]++;
    return st;
}

/* The path of a batch of n_seg segments whose longest has max_len tokens: 1 = FP8. */
int engine_choose_fp8(const gpu_engine *g, int n_seg, int max_len) {
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
static vitd_status probe_step(gpu_engine *g, int n_images, int len, int fp8, vitd_err *err) {
    const int n_tokens = n_images * len;
    if (!fp8) return attention_bf16(g, n_tokens, n_images, NULL, err);
    return attention_fp8(g, g->d_fp8 + (size_t)g->cfg.depth * g->fp8_stride, n_tokens, 0, 0, err);
}

/* Mean ms of `reps` probe steps of the current probe batch (CUDA events on the compute stream) into *ms;
 * *step_failed is set when a step failed (its message in err), not the timing calls. */
static vitd_status time_steps(gpu_engine *g, int n_images, int len, int fp8, int reps, cudaEvent_t ev[2],
                              double *ms, int *step_failed, vitd_err *err) {
    vitd_status st = VITD_OK;
    float elapsed = 0;
    *step_failed = 0;
    CUDA_TRY(cudaEventRecord(ev[0], g->s_main));
    for (int r = 0; r < reps; r++)
        if ((st = probe_step(g, n_images, len, fp8, err)) != VITD_OK) {
            *step_failed = 1;
            goto fail;
        }
    CUDA_TRY(cudaEventRecord(ev[1], g->s_main));
    CUDA_TRY(cudaEventSynchronize(ev[1]));
    CUDA_TRY(cudaEventElapsedTime(&elapsed, ev[0], ev[1]));
    *ms = elapsed / reps;
fail:
    return st;
}

/* Times both paths on shape e (min over 2 rounds of the mean of `reps` steps, CUDA events on the compute stream).
 * fp8_failed is set when only the FP8 path failed (its message in err). */
static vitd_status time_shape(gpu_engine *g, attn_route_entry *e, cudaEvent_t ev[2], int *fp8_failed,
                              vitd_err *err) {
    vitd_status st = VITD_OK;
    const int T = e->n_images * e->max_len, reps = T >= 16384 ? 3 : T >= 4096 ? 5 : 10;
    double best[2] = {1e30, 1e30};
    if ((st = probe_batch(g, e->n_images, e->max_len, err)) != VITD_OK) goto fail;
    if ((st = probe_step(g, e->n_images, e->max_len, 0, err)) != VITD_OK) goto fail;
    if ((st = probe_step(g, e->n_images, e->max_len, 1, err)) != VITD_OK) {
        *fp8_failed = 1;
        goto fail;
    }
    for (int round = 0; round < 2; round++)
        for (int fp8 = 0; fp8 < 2; fp8++) {
            double ms = 0;
            int step_failed = 0;
            if ((st = time_steps(g, e->n_images, e->max_len, fp8, reps, ev, &ms, &step_failed, err)) != VITD_OK) {
                if (step_failed) *fp8_failed = fp8;
                goto fail;
            }
            if (ms < best[fp8]) best[fp8] = ms;
        }
    e->ms_bf16 = best[0];
    e->ms_fp8 = best[1];
fail:
    return st;
}

/* The start-up measurements of the own kernel, shared by the engines of the process (attn_route.h): one per GPU and
 * attention shape, each length measured by the first engine that can run it. */
#define SHORT_CACHE 16
static struct {
    int device, n_heads, head_dim, head_dim_padded;
    attn_short_entry e[ATTN_SHORT_LENS];
} short_cache[SHORT_CACHE];
static int short_cache_n;
static pthread_mutex_t short_lock = PTHREAD_MUTEX_INITIALIZER;

/* Times the BF16 step on one image of len tokens: t->ms_cudnn and t->ms_own[] (min over 2 rounds of the mean of 10
 * steps after a warm-up round, CUDA events on the compute stream). */
static vitd_status time_short(gpu_engine *g, int len, attn_short_entry *t, cudaEvent_t ev[2], vitd_err *err) {
    vitd_status st = VITD_OK;
    double best[1 + ATTN_SHORT_TILINGS]; /* [0]: cuDNN, [1 + k]: tiling k */
    for (int p = 0; p <= ATTN_SHORT_TILINGS; p++) best[p] = 1e30;
    if ((st = probe_batch(g, 1, len, err)) != VITD_OK) goto fail;
    for (int round = 0; round < 3; round++)
        for (int p = 0; p <= ATTN_SHORT_TILINGS; p++) {
            double ms = 0;
            int step_failed = 0;
            g->attn_short_max = p ? len : 0;
            g->short_force = p - 1;
            if ((st = time_steps(g, 1, len, 0, 10, ev, &ms, &step_failed, err)) != VITD_OK) goto fail;
            if (round > 0 && ms < best[p]) best[p] = ms;
        }
    t->ms_cudnn = best[0];
    for (int k = 0; k < ATTN_SHORT_TILINGS; k++) t->ms_own[k] = best[1 + k];
fail:
    g->attn_short_max = 0;
    g->short_force = -1;
    return st;
}

/* attn_short_max: setting > 0 is taken as given (every batch up to it in the 128-row tiling), < 0 means never; 0
 * measures: one image of 64, 128, ..., 2048 tokens (up to max_tokens), the BF16 attention step timed on the cuDNN
 * path and on the own kernel in each tiling; the reach and the per-length tilings follow (attn_short_decide, a 2%
 * margin). A batch then takes the own kernel when all its images together have at most that many tokens (batches
 * of several images favour cuDNN more than one image of the same total: measured, bench/RESULTS.md). */
vitd_status engine_short_setup(gpu_engine *g, int setting, vitd_err *err) {
    _Static_assert(ATTN_SHORT_TILINGS == ATTN_ROPE_TILINGS, "attn_route.h and engine_kernels.h agree");
    vitd_status st = VITD_OK;
    cudaEvent_t ev[2] = {NULL, NULL};
    const double t0 = vitd_now();
    char table[600] = "";
    size_t used = 0;
    int measured = 0;
    g->attn_short_max = setting < 0 ? 0 : setting;
    g->short_force = -1;
    for (int i = 0; i < ATTN_SHORT_LENS; i++) g->short_tiling[i] = ATTN_ROPE_ROWS128;
    if (setting != 0 || !attn_rope_supported(g->hd, g->dp)) {
        if (g->attn_short_max && !attn_rope_supported(g->hd, g->dp)) {
            vitd_log(VITD_LOG_INFO, "gpu engine: attn_short_max %d not used: vitd's own attention kernel runs "
                     "head_dim 64 or 72, this model has %d; every BF16 batch runs cuDNN", setting, g->hd);
            g->attn_short_max = 0;
        }
        return VITD_OK;
    }
    pthread_mutex_lock(&short_lock);
    int c = 0;
    while (c < short_cache_n && !(short_cache[c].device == g->device && short_cache[c].n_heads == g->H &&
                                  short_cache[c].head_dim == g->hd && short_cache[c].head_dim_padded == g->dp))
        c++;
    if (c == short_cache_n && c < SHORT_CACHE) {
        memset(&short_cache[c], 0, sizeof short_cache[c]);
        short_cache[c].device = g->device;
        short_cache[c].n_heads = g->H;
        short_cache[c].head_dim = g->hd;
        short_cache[c].head_dim_padded = g->dp;
        short_cache_n++;
    }
    attn_short_entry local[ATTN_SHORT_LENS] = {{0}};
    attn_short_entry *e = c < SHORT_CACHE ? short_cache[c].e : local;
    CUDA_TRY(cudaEventCreate(&ev[0]));
    CUDA_TRY(cudaEventCreate(&ev[1]));
    for (int i = 0; i < ATTN_SHORT_LENS; i++) {
        const int len = ATTN_SHORT_LEN0 << i;
        if ((size_t)len > g->max_tokens) break;
        if (e[i].ms_cudnn <= 0) {
            if ((st = time_short(g, len, &e[i], ev, err)) != VITD_OK) goto fail;
            measured++;
        }
        if (used < sizeof table)
            used += (size_t)snprintf(table + used, sizeof table - used, "%s%d tokens own %.1f/%.1f/%.1f us, cuDNN "
                                     "%.1f us", used ? "; " : "", len, 1e3 * e[i].ms_own[0], 1e3 * e[i].ms_own[1],
                                     1e3 * e[i].ms_own[2], 1e3 * e[i].ms_cudnn);
    }
    g->attn_short_max = attn_short_decide(e, ATTN_SHORT_LENS, (int)(g->max_tokens < 65536 ? g->max_tokens : 65536),
                                          ATTN_ROUTE_MARGIN, g->short_tiling);
    vitd_log(VITD_LOG_INFO, "gpu engine: attn_short_max %d, tiling per length %d/%d/%d/%d/%d/%d (%s in %.0f ms; BF16 "
             "attention of batches up to this many tokens runs vitd's own kernel; per layer, own tilings "
             "64-row/128-row/key-split: %s)", g->attn_short_max, g->short_tiling[0], g->short_tiling[1],
             g->short_tiling[2], g->short_tiling[3], g->short_tiling[4], g->short_tiling[5],
             measured ? "measured" : "this process's measurement", 1e3 * (vitd_now() - t0), table);
fail:
    pthread_mutex_unlock(&short_lock);
    if (ev[0]) cudaEventDestroy(ev[0]);
    if (ev[1]) cudaEventDestroy(ev[1]);
    if (st != VITD_OK) {
        g->attn_short_max = 0;
        /* an optional speed-up: only a lost device (a sticky error) fails the engine. A runtime call that failed
         * (an event, a copy, cuDNN's allocation) leaves its error pending: cleared first, a sticky one stays */
        (void)cudaGetLastError();
        cudaError_t ce = cudaStreamSynchronize(g->s_main);
        if (ce == cudaSuccess) ce = cudaGetLastError();
        if (ce == cudaSuccess) {
            vitd_log(VITD_LOG_WARN, "gpu engine: attn_short_max not measured (%s); every BF16 batch runs cuDNN",
                     err ? err->msg : "error");
            st = VITD_OK;
        }
    }
    return st;
}

/* Gets the FP8 path ready. fp8: builds the FP8 plans of one image of each ladder length (a plan cuDNN cannot
 * build is the start-up error). auto: times both paths per shape (attn_route_shapes) and sets the routing table
 * (attn_route_decide), logged. On failure *dead says whether the device is unusable afterwards (sticky error). */
vitd_status engine_fp8_setup(gpu_engine *g, int *dead, vitd_err *err) {
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
                          .fp8_history = g->fp8_hist, .max_tokens = (int)g->max_tokens, .max_images = g->max_images,
                          .attn_short_max = g->attn_short_max};
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
        /* a sticky error leaves the context unusable: then the engine cannot be created at all (a pending error
         * of a failed runtime call is cleared first; a sticky one stays) */
        (void)cudaGetLastError();
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
void engine_fp8_autosave(gpu_engine *g) {
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
