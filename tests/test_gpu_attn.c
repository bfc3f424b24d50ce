/* labels: gpu */
/* test_gpu_attn.c — cuDNN attention (encoder/gpu/gpu_attn.c) and its packing kernels (kernels/attn_pack.cu) against
 * host twins: a float64 attention reference, bit-exact bf16 packing/unpacking and E4M3 quantisation.
 *
 * Data: seeded normal q, k, v, fresh per case, in two kinds. "qkv20": 20x outlier channels in q (channel 5),
 * k (61) and v (11) of every head, which makes the attention logits large (std ~3.5) and peaked. "v20": the
 * 20x outlier channel in v only (logit std ~1). Cases: single images of 16, 1024 and 4096 tokens, mixed batches
 * 1024+4096+16, 257+1000+63, 1+33 and 4100+300.
 * BF16 runs through the AUTO, PACKED and FULL paths: cos >= 0.9999 and rel-L2 <= 0.01 against the reference.
 * FP8 is checked twice: against an "FP8-input" reference (float64 attention over the E4M3-rounded q, k, v that
 * the kernel was given; this isolates cuDNN's own error: P and O in E4M3) with cos >= 0.998, and against the
 * exact reference with cos >= 0.995 on v20 data. On qkv20 data the exact-reference cosine is ~0.985 and that is
 * the input rounding itself (E4M3 keeps 3 mantissa bits; logit errors grow with |q||k|): a numpy emulation of
 * the same rounding gives the same figure, so there it is reported and held to >= 0.97 only.
 * Every run checks that pad lanes of O are exactly 0 and that O's rows past the batch (slack and guard band,
 * filled with a canary) are untouched; input slack rows hold a finite canary, so a read past an image that
 * leaked into results would show as error. Plan reuse: one 8 x 8192 packed plan vs the ladder's tight plan;
 * the bucketed FP8 plan vs an exact-s_max one; a second batch in the same bucket must not build a plan; the
 * split FP8 call (large image alone) vs one launch. The composite BF16 recipe is checked too. An informational
 * probe reports whether NaN in input slack rows leaks into outputs (not asserted).
 * Without CUDA, a device, or a GPU of compute capability >= 9.0 it exits 77.
 */
#ifndef VITD_HAVE_CUDA
#include <stdio.h>
#include <stdlib.h>
int main(void) {
    printf("SKIP: vitd was built without CUDA (VITD_CUDA=OFF or no nvcc)\n");
    return 77;
}
#else

#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "check.h"
#include "gpu_attn.h"
#include "kernels.h"
#include "util.h"

#define H 16
#define HD 72
#define DP 80
#define GUARD_ROWS 64
#define MAXN 8

#include "gpu_check.h"

static void log_hook(vitd_log_level level, const char *msg, void *user) {
    (void)user;
    printf("  [log %d] %s\n", (int)level, msg);
}

/* ---- host E4M3 (round to nearest even, saturate to 448) ---- */

static double e4m3_decode(uint8_t b) {
    int s = b >> 7, e = (b >> 3) & 15, m = b & 7;
    if ((b & 0x7f) == 0x7f) return NAN;
    double v = e == 0 ? ldexp(m, -9) : ldexp(8 + m, e - 10);
    return s ? -v : v;
}

static uint8_t e4m3_encode(float x) {
    static double tab[0x7f]; /* values of the positive finite codes 0x00..0x7e, increasing */
    if (tab[1] == 0)
        for (int i = 0; i < 0x7f; i++) tab[i] = e4m3_decode((uint8_t)i);
    if (isnan(x)) return 0x7f;
    uint8_t sign = signbit(x) ? 0x80 : 0;
    double a = fabs((double)x);
    if (a >= 448.0) return sign | 0x7e;
    int lo = 0, hi = 0x7e; /* largest code with tab[code] <= a */
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (tab[mid] <= a) lo = mid;
        else hi = mid - 1;
    }
    double vlo = tab[lo];
    if (vlo == a) return sign | (uint8_t)lo;
    double vhi = tab[lo + 1];
    int pick = (a - vlo < vhi - a) ? lo : (a - vlo > vhi - a) ? lo + 1 : ((lo & 1) ? lo + 1 : lo);
    return sign | (uint8_t)pick;
}

/* ---- float64 reference: o = softmax(q k^T / sqrt(hd)) v per image and head ---- */

typedef struct {
    const float *qkv;   /* [T, 3*H*HD] */
    const int *lens;
    const int64_t *cu;
    int n;
    float *ref;         /* [T, H, HD] */
    int next;           /* task counter (image * H + head) */
} ref_job;

static void *ref_worker(void *arg) {
    ref_job *j = arg;
    const int row = 3 * H * HD;
    for (;;) {
        int task = __atomic_fetch_add(&j->next, 1, __ATOMIC_RELAXED);
        if (task >= j->n * H) break;
        int img = task / H, h = task % H, s = j->lens[img];
        int64_t t0 = j->cu[img];
        double *q = malloc(sizeof(double) * s * HD), *k = malloc(sizeof(double) * s * HD);
        double *v = malloc(sizeof(double) * s * HD), *p = malloc(sizeof(double) * s);
        for (int a = 0; a < s; a++)
            for (int c = 0; c < HD; c++) {
                const float *r = j->qkv + (t0 + a) * row;
                q[a * HD + c] = r[h * HD + c];
                k[a * HD + c] = r[H * HD + h * HD + c];
                v[a * HD + c] = r[2 * H * HD + h * HD + c];
            }
        const double scale = 1.0 / sqrt((double)HD);
        for (int a = 0; a < s; a++) {
            double m = -INFINITY, z = 0, o[HD];
            for (int b = 0; b < s; b++) {
                double d = 0;
                for (int c = 0; c < HD; c++) d += q[a * HD + c] * k[b * HD + c];
                p[b] = d * scale;
                if (p[b] > m) m = p[b];
            }
            for (int b = 0; b < s; b++) z += (p[b] = exp(p[b] - m));
            for (int c = 0; c < HD; c++) o[c] = 0;
            for (int b = 0; b < s; b++) {
                double w = p[b] / z;
                for (int c = 0; c < HD; c++) o[c] += w * v[b * HD + c];
            }
            for (int c = 0; c < HD; c++) j->ref[((t0 + a) * H + h) * HD + c] = (float)o[c];
        }
        free(q);
        free(k);
        free(v);
        free(p);
    }
    return NULL;
}

static void ref_attention(const float *qkv, const int *lens, const int64_t *cu, int n, float *ref) {
    ref_job j = {qkv, lens, cu, n, ref, 0};
    pthread_t th[64];
    int nt = 16;
    for (int i = 0; i < nt; i++) pthread_create(&th[i], NULL, ref_worker, &j);
    for (int i = 0; i < nt; i++) pthread_join(th[i], NULL);
}

/* ---- one case's buffers ---- */

typedef struct {
    int n, lens[MAXN];
    int64_t cu[MAXN + 1];
    int T, rows;                   /* rows = T + slack + guard */
    uint16_t *h_qkv;               /* [T, 3*H*HD] bf16 */
    float *h_qkv_f, *ref;          /* float copy; reference [T, H, HD] */
    float *ref8;                   /* reference over the E4M3-rounded inputs (pack_fp8 computes it) */
    int qk_outliers;               /* data kind: 1 = qkv20, 0 = v20 */
    uint16_t *d_qkv, *d_q, *d_k, *d_v, *d_o;
    uint8_t *d_q8, *d_k8, *d_v8, *d_o8;
    int32_t *d_cu;
    float *d_amax, *d_scalars;
    float amax[3];
} tcase;

static unsigned long long g_seed = 0x5eed0001ULL;

static void case_setup(tcase *c, int n, const int *lens, int qk_outliers) {
    memset(c, 0, sizeof *c);
    c->n = n;
    c->qk_outliers = qk_outliers;
    for (int i = 0; i < n; i++) {
        c->lens[i] = lens[i];
        c->cu[i + 1] = c->cu[i] + lens[i];
    }
    c->T = (int)c->cu[n];
    c->rows = c->T + GPU_ATTN_SLACK_ROWS + GUARD_ROWS;
    const size_t row = 3 * H * HD;
    c->h_qkv = malloc(sizeof(uint16_t) * c->T * row);
    c->h_qkv_f = malloc(sizeof(float) * c->T * row);
    c->ref = malloc(sizeof(float) * (size_t)c->T * H * HD);
    unsigned long long rng = g_seed++;
    for (int t = 0; t < c->T; t++)
        for (size_t col = 0; col < row; col++) {
            int which = (int)(col / (H * HD)), ch = (int)(col % HD);
            double x = check_rng_normal(&rng);
            if ((qk_outliers && ((which == 0 && ch == 5) || (which == 1 && ch == 61))) || (which == 2 && ch == 11))
                x *= 20.0;
            uint16_t b = f32_to_bf16((float)x);
            c->h_qkv[t * row + col] = b;
            c->h_qkv_f[t * row + col] = bf16_to_f32(b);
        }
    ref_attention(c->h_qkv_f, c->lens, c->cu, n, c->ref);
    const size_t pe = (size_t)c->rows * H * DP;
    CUDA_CHECK(cudaMalloc((void **)&c->d_qkv, sizeof(uint16_t) * (c->T * row + 8)));
    CUDA_CHECK(cudaMalloc((void **)&c->d_q, 2 * pe));
    CUDA_CHECK(cudaMalloc((void **)&c->d_k, 2 * pe));
    CUDA_CHECK(cudaMalloc((void **)&c->d_v, 2 * pe));
    CUDA_CHECK(cudaMalloc((void **)&c->d_o, 2 * pe));
    CUDA_CHECK(cudaMalloc((void **)&c->d_q8, pe));
    CUDA_CHECK(cudaMalloc((void **)&c->d_k8, pe));
    CUDA_CHECK(cudaMalloc((void **)&c->d_v8, pe));
    CUDA_CHECK(cudaMalloc((void **)&c->d_o8, pe));
    CUDA_CHECK(cudaMalloc((void **)&c->d_cu, sizeof(int32_t) * (MAXN + 1)));
    CUDA_CHECK(cudaMalloc((void **)&c->d_amax, 4 * sizeof(float)));
    CUDA_CHECK(cudaMalloc((void **)&c->d_scalars, ATTN_FP8_N_SLOTS * ATTN_FP8_SLOT_FLOATS * sizeof(float)));
    int32_t cu32[MAXN + 1];
    for (int i = 0; i <= n; i++) cu32[i] = (int32_t)c->cu[i];
    CUDA_CHECK(cudaMemcpy(c->d_cu, cu32, sizeof(int32_t) * (n + 1), cudaMemcpyHostToDevice));
    CUDA_CHECK(cudaMemcpy(c->d_qkv, c->h_qkv, sizeof(uint16_t) * c->T * row, cudaMemcpyHostToDevice));
}

static void case_free(tcase *c) {
    free(c->ref8);
    free(c->h_qkv);
    free(c->h_qkv_f);
    free(c->ref);
    cudaFree(c->d_qkv);
    cudaFree(c->d_q);
    cudaFree(c->d_k);
    cudaFree(c->d_v);
    cudaFree(c->d_o);
    cudaFree(c->d_q8);
    cudaFree(c->d_k8);
    cudaFree(c->d_v8);
    cudaFree(c->d_o8);
    cudaFree(c->d_cu);
    cudaFree(c->d_amax);
    cudaFree(c->d_scalars);
}

static void case_name(const tcase *c, char *buf, size_t n) {
    size_t o = 0;
    buf[0] = 0;
    for (int i = 0; i < c->n && o < n; i++) o += snprintf(buf + o, n - o, "%s%d", i ? "+" : "", c->lens[i]);
}

/* Packs bf16 q/k/v (input slack rows = 3.0, the canary bytes 0x40) and checks the packing bit-exactly. */
static void pack_bf16(tcase *c, uint8_t slack_byte, int check) {
    const size_t pe = (size_t)c->rows * H * DP;
    CUDA_CHECK(cudaMemset(c->d_q, slack_byte, 2 * pe));
    CUDA_CHECK(cudaMemset(c->d_k, slack_byte, 2 * pe));
    CUDA_CHECK(cudaMemset(c->d_v, slack_byte, 2 * pe));
    CUDA_CHECK(attn_pack_qkv_bf16(c->d_qkv, c->T, H, HD, DP, c->d_q, c->d_k, c->d_v, 0));
    CUDA_CHECK(cudaDeviceSynchronize());
    if (!check) return;
    uint16_t *buf = malloc(2 * pe);
    uint16_t *dst[3] = {c->d_q, c->d_k, c->d_v};
    size_t bad = 0;
    for (int w = 0; w < 3; w++) {
        CUDA_CHECK(cudaMemcpy(buf, dst[w], 2 * pe, cudaMemcpyDeviceToHost));
        for (int t = 0; t < c->T; t++)
            for (int h = 0; h < H; h++)
                for (int l = 0; l < DP; l++) {
                    uint16_t want = l < HD ? c->h_qkv[(size_t)t * 3 * H * HD + (w * H + h) * HD + l] : 0;
                    bad += buf[((size_t)t * H + h) * DP + l] != want;
                }
    }
    CHECK_MSG(bad == 0, "attn_pack_qkv_bf16: %zu elements differ from the host twin", bad);
    free(buf);
}

/* amax -> scalars -> E4M3 packing, checked against the host twin (amax exact, bytes exact). */
static void pack_fp8(tcase *c, uint8_t slack_byte, int check) {
    const size_t pe = (size_t)c->rows * H * DP;
    CUDA_CHECK(cudaMemset(c->d_q8, slack_byte, pe));
    CUDA_CHECK(cudaMemset(c->d_k8, slack_byte, pe));
    CUDA_CHECK(cudaMemset(c->d_v8, slack_byte, pe));
    CUDA_CHECK(attn_qkv_amax_bf16(c->d_qkv, c->T, H, HD, c->d_amax, 0));
    CUDA_CHECK(attn_fp8_scales_from_amax(c->d_amax, c->d_scalars, 0));
    CUDA_CHECK(attn_pack_qkv_fp8(c->d_qkv, c->T, H, HD, DP, c->d_scalars, c->d_q8, c->d_k8, c->d_v8, 0));
    CUDA_CHECK(cudaDeviceSynchronize());
    CUDA_CHECK(cudaMemcpy(c->amax, c->d_amax, 3 * sizeof(float), cudaMemcpyDeviceToHost));
    if (!check) return;
    float want_amax[3] = {0, 0, 0};
    for (int t = 0; t < c->T; t++)
        for (int col = 0; col < 3 * H * HD; col++) {
            float a = fabsf(c->h_qkv_f[(size_t)t * 3 * H * HD + col]);
            if (a > want_amax[col / (H * HD)]) want_amax[col / (H * HD)] = a;
        }
    for (int w = 0; w < 3; w++)
        CHECK_MSG(c->amax[w] == want_amax[w], "amax[%d] = %g, host %g", w, c->amax[w], want_amax[w]);
    float sc[ATTN_FP8_N_SLOTS * ATTN_FP8_SLOT_FLOATS];
    CUDA_CHECK(cudaMemcpy(sc, c->d_scalars, sizeof sc, cudaMemcpyDeviceToHost));
    uint8_t *buf = malloc(pe);
    uint8_t *dst[3] = {c->d_q8, c->d_k8, c->d_v8};
    size_t bad = 0;
    for (int w = 0; w < 3; w++) {
        float descale = sc[(ATTN_FP8_DESCALE_Q + w) * ATTN_FP8_SLOT_FLOATS];
        CHECK_MSG(descale == want_amax[w] / 448.0f, "descale[%d] = %g, want %g", w, descale, want_amax[w] / 448.0f);
        float inv = 1.0f / descale;
        CUDA_CHECK(cudaMemcpy(buf, dst[w], pe, cudaMemcpyDeviceToHost));
        for (int t = 0; t < c->T; t++)
            for (int h = 0; h < H; h++)
                for (int l = 0; l < DP; l++) {
                    float x = l < HD ? c->h_qkv_f[(size_t)t * 3 * H * HD + (w * H + h) * HD + l] : 0.f;
                    uint8_t want = e4m3_encode(x * inv);
                    bad += buf[((size_t)t * H + h) * DP + l] != want;
                }
    }
    CHECK_MSG(bad == 0, "attn_pack_qkv_fp8: %zu bytes differ from the host E4M3 twin", bad);
    free(buf);
    /* the FP8-input reference: attention over the E4M3-rounded q, k, v (host twin values, dequantised) */
    const size_t row = 3 * H * HD;
    float *q8f = malloc(sizeof(float) * c->T * row);
    for (int t = 0; t < c->T; t++)
        for (size_t col = 0; col < row; col++) {
            int w = (int)(col / (H * HD));
            float descale = sc[(ATTN_FP8_DESCALE_Q + w) * ATTN_FP8_SLOT_FLOATS];
            float x = c->h_qkv_f[(size_t)t * row + col];
            q8f[(size_t)t * row + col] = (float)(e4m3_decode(e4m3_encode(x * (1.0f / descale))) * descale);
        }
    free(c->ref8);
    c->ref8 = malloc(sizeof(float) * (size_t)c->T * H * HD);
    ref_attention(q8f, c->lens, c->cu, c->n, c->ref8);
    free(q8f);
}

typedef struct {
    cmp_stats s;
    size_t pad_nonzero, canary_slack, canary_guard;
} eval_res;

/* Compares an output [rows, H, DP] (as float, real lanes) with the reference and checks pad lanes and rows past
 * T. `raw_canary(i)`: whether raw element i still holds the canary. */
static eval_res eval_ref(const tcase *c, const float *o_full, const unsigned char *is_canary, const float *ref) {
    eval_res r = {{0}, 0, 0, 0};
    float *got = malloc(sizeof(float) * (size_t)c->T * H * HD);
    for (int t = 0; t < c->T; t++)
        for (int h = 0; h < H; h++)
            for (int l = 0; l < DP; l++) {
                size_t i = ((size_t)t * H + h) * DP + l;
                if (l < HD) got[((size_t)t * H + h) * HD + l] = o_full[i];
                else r.pad_nonzero += o_full[i] != 0.0f;
            }
    for (int t = c->T; t < c->rows; t++)
        for (int e = 0; e < H * DP; e++) {
            size_t i = (size_t)t * H * DP + e;
            if (!is_canary[i]) {
                if (t < c->T + GPU_ATTN_SLACK_ROWS) r.canary_slack++;
                else r.canary_guard++;
            }
        }
    r.s = cmp_f32(got, ref, (size_t)c->T * H * HD, 1e30, 0);
    free(got);
    return r;
}

static eval_res eval_out(const tcase *c, const float *o_full, const unsigned char *is_canary) {
    return eval_ref(c, o_full, is_canary, c->ref);
}

static void report(const char *cname, const char *path, eval_res r, double min_cos, double max_rel_l2) {
    printf("  case %-16s %-16s rel_l2 %.3e cos %.7f max_abs %.3e pad!=0 %zu slack_changed %zu guard_changed %zu\n",
           cname, path, r.s.rel_l2, r.s.cosine, r.s.max_abs, r.pad_nonzero, r.canary_slack, r.canary_guard);
    CHECK_MSG(r.s.n_nan == 0, "%s %s: %zu NaN/inf outputs", cname, path, r.s.n_nan);
    CHECK_MSG(r.s.cosine >= min_cos, "%s %s: cos %.7f < %.5f", cname, path, r.s.cosine, min_cos);
    CHECK_MSG(r.s.rel_l2 <= max_rel_l2, "%s %s: rel_l2 %.3e > %.3e", cname, path, r.s.rel_l2, max_rel_l2);
    CHECK_MSG(r.pad_nonzero == 0, "%s %s: %zu pad lanes of O are not 0", cname, path, r.pad_nonzero);
    CHECK_MSG(r.canary_slack == 0, "%s %s: %zu slack-row elements of O written", cname, path, r.canary_slack);
    CHECK_MSG(r.canary_guard == 0, "%s %s: %zu guard-band elements of O written", cname, path, r.canary_guard);
}

#define CANARY_BYTE 0x5a

/* Runs BF16 attention on ctx with the given path; returns the raw output (caller frees) and fills the float
 * copy and canary map. */
static uint16_t *run_bf16(gpu_attn_ctx *ctx, tcase *c, gpu_attn_bf16_path path, float **o_f, unsigned char **can,
                          int *ok) {
    vitd_err err = {0, ""};
    const size_t pe = (size_t)c->rows * H * DP;
    gpu_attn_batch b = {c->n, c->lens, c->d_cu};
    CUDA_CHECK(cudaMemset(c->d_o, CANARY_BYTE, 2 * pe));
    gpu_attn_set_bf16_path(ctx, path);
    *ok = 0;
    int s1 = gpu_attn_begin(ctx, &b, 0, &err);
    CHECK_MSG(s1 == 0, "gpu_attn_begin: %s", err.msg);
    if (s1) return NULL;
    int s2 = gpu_attn_bf16(ctx, c->d_q, c->d_k, c->d_v, c->d_o, 0, &err);
    CHECK_MSG(s2 == 0, "gpu_attn_bf16: %s", err.msg);
    if (s2) return NULL;
    CUDA_CHECK(cudaDeviceSynchronize());
    uint16_t *o = malloc(2 * pe);
    CUDA_CHECK(cudaMemcpy(o, c->d_o, 2 * pe, cudaMemcpyDeviceToHost));
    *o_f = malloc(sizeof(float) * pe);
    *can = malloc(pe);
    for (size_t i = 0; i < pe; i++) {
        (*o_f)[i] = bf16_to_f32(o[i]);
        (*can)[i] = o[i] == (CANARY_BYTE << 8 | CANARY_BYTE);
    }
    *ok = 1;
    return o;
}

static uint8_t *run_fp8(gpu_attn_ctx *ctx, tcase *c, float **o_f, unsigned char **can, float *scale_o,
                        float *amax_s, float *amax_o, int *ok) {
    vitd_err err = {0, ""};
    const size_t pe = (size_t)c->rows * H * DP;
    gpu_attn_batch b = {c->n, c->lens, c->d_cu};
    CUDA_CHECK(cudaMemset(c->d_o8, CANARY_BYTE, pe));
    *ok = 0;
    int s1 = gpu_attn_begin(ctx, &b, 0, &err);
    CHECK_MSG(s1 == 0, "gpu_attn_begin: %s", err.msg);
    if (s1) return NULL;
    int s2 = gpu_attn_fp8(ctx, c->d_q8, c->d_k8, c->d_v8, c->d_o8, c->d_scalars, 0, &err);
    CHECK_MSG(s2 == 0, "gpu_attn_fp8: %s", err.msg);
    if (s2) return NULL;
    CUDA_CHECK(cudaDeviceSynchronize());
    float sc[ATTN_FP8_N_SLOTS * ATTN_FP8_SLOT_FLOATS];
    CUDA_CHECK(cudaMemcpy(sc, c->d_scalars, sizeof sc, cudaMemcpyDeviceToHost));
    *scale_o = sc[ATTN_FP8_SCALE_O * ATTN_FP8_SLOT_FLOATS];
    *amax_s = sc[ATTN_FP8_AMAX_S * ATTN_FP8_SLOT_FLOATS];
    *amax_o = sc[ATTN_FP8_AMAX_O * ATTN_FP8_SLOT_FLOATS];
    uint8_t *o = malloc(pe);
    CUDA_CHECK(cudaMemcpy(o, c->d_o8, pe, cudaMemcpyDeviceToHost));
    *o_f = malloc(sizeof(float) * pe);
    *can = malloc(pe);
    for (size_t i = 0; i < pe; i++) {
        (*o_f)[i] = (float)(e4m3_decode(o[i]) / *scale_o);
        (*can)[i] = o[i] == CANARY_BYTE;
    }
    *ok = 1;
    return o;
}

/* GPU unpack kernels vs host: bf16 bit-exact; FP8 dequantisation bit-exact in bf16. */
static void check_unpack(tcase *c, const uint16_t *o_bf16, const uint8_t *o8, float scale_o) {
    uint16_t *d_out, *h = malloc(sizeof(uint16_t) * (size_t)c->T * H * HD);
    size_t bad = 0;
    CUDA_CHECK(cudaMalloc((void **)&d_out, sizeof(uint16_t) * (size_t)c->T * H * HD));
    if (o_bf16) {
        CUDA_CHECK(attn_unpack_bf16(c->d_o, c->T, H, HD, DP, d_out, 0));
        CUDA_CHECK(cudaMemcpy(h, d_out, sizeof(uint16_t) * (size_t)c->T * H * HD, cudaMemcpyDeviceToHost));
        for (size_t th = 0; th < (size_t)c->T * H; th++)
            for (int l = 0; l < HD; l++) bad += h[th * HD + l] != o_bf16[th * DP + l];
        CHECK_MSG(bad == 0, "attn_unpack_bf16: %zu elements differ", bad);
    }
    if (o8) {
        bad = 0;
        float inv = 1.0f / scale_o;
        CUDA_CHECK(attn_unpack_fp8(c->d_o8, c->T, H, HD, DP, c->d_scalars, d_out, 0));
        CUDA_CHECK(cudaMemcpy(h, d_out, sizeof(uint16_t) * (size_t)c->T * H * HD, cudaMemcpyDeviceToHost));
        for (size_t th = 0; th < (size_t)c->T * H; th++)
            for (int l = 0; l < HD; l++)
                bad += h[th * HD + l] != f32_to_bf16((float)e4m3_decode(o8[th * DP + l]) * inv);
        CHECK_MSG(bad == 0, "attn_unpack_fp8: %zu elements differ", bad);
    }
    cudaFree(d_out);
    free(h);
}

static int count_nan_f(const float *x, size_t n) {
    int k = 0;
    for (size_t i = 0; i < n; i++) k += isnan(x[i]) != 0;
    return k;
}

int main(void) {
    int n_dev = 0;
    cudaError_t ce = cudaGetDeviceCount(&n_dev);
    if (ce != cudaSuccess || n_dev == 0)
        SKIP("no CUDA device (%s)", ce != cudaSuccess ? cudaGetErrorString(ce) : "0 devices");
    vitd_log_set(log_hook, NULL);
    vitd_err err = {0, ""};
    gpu_attn_features f;
    if (gpu_attn_query(0, &f, &err)) SKIP("cannot query device 0: %s", err.msg);
    printf("device %s cc %d.%d, %d SMs; cuDNN runtime %d (headers %d); unified+seqlen %d; fp8 %d %s\n",
           f.device_name, f.cc_major, f.cc_minor, f.sm_count, f.cudnn_version, f.cudnn_header_version,
           f.unified_seqlen, f.fp8, f.fp8 ? "" : f.fp8_reason);
    if (f.cc_major < 9) SKIP("compute capability %d.%d < 9.0", f.cc_major, f.cc_minor);

    gpu_attn_opts o = gpu_attn_opts_default();
    o.max_batch = MAXN;
    o.max_seqlen = 8192;
    gpu_attn_ctx *A = NULL, *B = NULL, *C = NULL, *E = NULL;
    CHECK_OK(gpu_attn_create(0, &o, &A, &err), &err);
    if (!A) return check_done("test_gpu_attn");
    int have_fp8 = gpu_attn_opts_of(A)->fp8;
    if (!have_fp8) printf("  FP8 not available (%s): FP8 cases skipped\n", f.fp8_reason);

    /* one (8, 8192) packed plan for the reuse check, composite recipe, exact-s_max unsplit FP8 */
    gpu_attn_opts optb = o;
    optb.packed_ladder = 0;
    CHECK_OK(gpu_attn_create(0, &optb, &B, &err), &err);
    gpu_attn_opts oc = o;
    oc.bf16_recipe = GPU_ATTN_RECIPE_COMPOSITE;
    CHECK_OK(gpu_attn_create(0, &oc, &C, &err), &err);
    gpu_attn_opts oe = o;
    oe.fp8_exact_smax = 1;
    oe.fp8_split = 0;
    oe.packed_ladder = 0;
    CHECK_OK(gpu_attn_create(0, &oe, &E, &err), &err);

    /* argument checks (no attention runs) */
    {
        int zero_len[2] = {5, 0};
        gpu_attn_batch bad = {2, zero_len, NULL};
        int32_t *dcu;
        CUDA_CHECK(cudaMalloc((void **)&dcu, 16));
        bad.d_cu_seqlens = dcu;
        CHECK_EQ_INT(VITD_E_INVALID_ARG, gpu_attn_begin(A, &bad, 0, &err));
        CHECK_STR_CONTAINS(err.msg, "image 1 has 0 tokens");
        int too_long[1] = {8193};
        gpu_attn_batch bad2 = {1, too_long, dcu};
        CHECK_EQ_INT(VITD_E_INVALID_ARG, gpu_attn_begin(A, &bad2, 0, &err));
        CHECK_EQ_INT(VITD_E_INVALID_ARG, gpu_attn_bf16(A, dcu, dcu, dcu, dcu, 0, &err));
        cudaFree(dcu);
        gpu_attn_ctx *tmp = NULL;
        gpu_attn_opts obad = o;
        obad.head_dim_padded = 72;
        CHECK_EQ_INT(VITD_E_INVALID_ARG, gpu_attn_create(0, &obad, &tmp, &err));
        CHECK(tmp == NULL);
        CHECK_EQ_INT(1024, gpu_attn_fp8_bucket(A, 1000));
        CHECK_EQ_INT(64, gpu_attn_fp8_bucket(A, 16));
        CHECK_EQ_INT(4096, gpu_attn_fp8_bucket(A, 4096));
        CHECK_EQ_INT(4352, gpu_attn_fp8_bucket(A, 4097));
        CHECK_EQ_INT(1000, gpu_attn_fp8_bucket(E, 1000));
    }

    /* {qk_outliers, n, lens...} */
    static const int cases[][MAXN + 2] = {
        {1, 1, 16},   {1, 1, 1024},       {0, 1, 1024},           {0, 1, 4096},
        {0, 3, 1024, 4096, 16}, {1, 3, 257, 1000, 63}, {0, 2, 1, 33}, {1, 2, 4100, 300},
    };
    const int n_cases = (int)(sizeof cases / sizeof cases[0]);
    for (int ci = 0; ci < n_cases; ci++) {
        tcase c;
        char cname[64];
        double t0 = vitd_now();
        case_setup(&c, cases[ci][1], cases[ci] + 2, cases[ci][0]);
        case_name(&c, cname, sizeof cname);
        strcat(cname, c.qk_outliers ? " qkv20" : " v20");
        printf("case %s: T=%d (reference %.1f s)\n", cname, c.T, vitd_now() - t0);
        pack_bf16(&c, 0x40, 1);

        static const gpu_attn_bf16_path paths[3] = {GPU_ATTN_BF16_AUTO, GPU_ATTN_BF16_PACKED, GPU_ATTN_BF16_FULL};
        static const char *const pname[3] = {"bf16-auto", "bf16-packed", "bf16-full"};
        uint16_t *o_packed = NULL;
        for (int pi = 0; pi < 3; pi++) {
            float *of = NULL;
            unsigned char *can = NULL;
            int ok;
            uint16_t *ob16 = run_bf16(A, &c, paths[pi], &of, &can, &ok);
            if (!ok) continue;
            printf("    %s plan: %s\n", pname[pi], gpu_attn_batch_desc(A));
            report(cname, pname[pi], eval_out(&c, of, can), 0.9999, 0.01);
            if (pi == 0) check_unpack(&c, ob16, NULL, 0);
            if (pi == 1) o_packed = ob16;
            else free(ob16);
            free(of);
            free(can);
        }
        /* plan reuse: the single 8 x 8192 packed plan vs the ladder's tight plan, mixed batches */
        if (c.n >= 2 && o_packed) {
            float *of = NULL;
            unsigned char *can = NULL;
            int ok;
            uint16_t *ob = run_bf16(B, &c, GPU_ATTN_BF16_PACKED, &of, &can, &ok);
            if (ok) {
                size_t same = 0, n = (size_t)c.T * H * DP;
                float *fa = malloc(sizeof(float) * n), *fb = malloc(sizeof(float) * n);
                for (size_t i = 0; i < n; i++) {
                    same += ob[i] == o_packed[i];
                    fa[i] = bf16_to_f32(o_packed[i]);
                    fb[i] = bf16_to_f32(ob[i]);
                }
                cmp_stats s = cmp_f32(fa, fb, n, 1e30, 0);
                printf("  reuse %s: one 8x8192 plan vs ladder rung: %zu/%zu bit-identical, rel_l2 %.3e\n", cname,
                       same, n, s.rel_l2);
                CHECK_MSG(s.rel_l2 <= 1e-3, "plan reuse changes the output: rel_l2 %.3e", s.rel_l2);
                report(cname, "bf16-one-plan", eval_out(&c, of, can), 0.9999, 0.01);
                free(fa);
                free(fb);
                free(ob);
                free(of);
                free(can);
            }
        }
        free(o_packed);
        /* composite recipe (the cuDNN 9.14 route) on the mixed batches */
        if (c.n >= 2) {
            float *of = NULL;
            unsigned char *can = NULL;
            int ok;
            uint16_t *oc16 = run_bf16(C, &c, GPU_ATTN_BF16_AUTO, &of, &can, &ok);
            if (ok) {
                printf("    composite plan: %s\n", gpu_attn_batch_desc(C));
                report(cname, "bf16-composite", eval_out(&c, of, can), 0.9999, 0.01);
                free(oc16);
                free(of);
                free(can);
            }
        }

        if (have_fp8) {
            pack_fp8(&c, 0x40, 1);
            float *of = NULL, scale_o, amax_s, amax_o;
            unsigned char *can = NULL;
            int ok;
            uint8_t *o8 = run_fp8(A, &c, &of, &can, &scale_o, &amax_s, &amax_o, &ok);
            if (ok) {
                char pn[48];
                int smax = 0;
                for (int i = 0; i < c.n; i++) smax = c.lens[i] > smax ? c.lens[i] : smax;
                const char *fd = gpu_attn_fp8_desc(A);
                const char *own = strstr(fd, "own x");
                int multi = strchr(fd, '+') != NULL || (own && atoi(own + 5) > 1); /* several launches */
                snprintf(pn, sizeof pn, "%s", fd);
                printf("    fp8 plan: %s\n", fd);
                char pn8[64];
                snprintf(pn8, sizeof pn8, "%s vs fp8in", pn);
                report(cname, pn8, eval_ref(&c, of, can, c.ref8), 0.998, 0.06);
                report(cname, pn, eval_out(&c, of, can), c.qk_outliers ? 0.97 : 0.995, c.qk_outliers ? 0.25 : 0.1);
                double ref_max = 0;
                for (size_t i = 0; i < (size_t)c.T * H * HD; i++)
                    if (fabs(c.ref8[i]) > ref_max) ref_max = fabs(c.ref8[i]);
                printf("    amax_s %.4f amax_o %.4f (fp8-input reference max|O| %.4f; amax q/k/v %.2f %.2f %.2f)\n",
                       amax_s, amax_o, ref_max, c.amax[0], c.amax[1], c.amax[2]);
                CHECK_MSG(amax_s > 0 && isfinite(amax_s), "amax_s %g", amax_s);
                CHECK_MSG(amax_o >= 0.9 * ref_max && amax_o <= 1.1 * c.amax[2], "amax_o %g: reference max %g, "
                          "amax_v %g", amax_o, ref_max, c.amax[2]);
                if (!multi)
                    CHECK_MSG(fabs(amax_o - ref_max) <= 0.1 * ref_max, "amax_o %g vs reference max %g", amax_o,
                              ref_max);
                check_unpack(&c, NULL, o8, scale_o);
                /* bucketed / split plans vs one exact-s_max launch */
                if (c.n >= 2) {
                    float *of2 = NULL, so2, as2, ao2;
                    unsigned char *can2 = NULL;
                    int ok2;
                    uint8_t *o8e = run_fp8(E, &c, &of2, &can2, &so2, &as2, &ao2, &ok2);
                    if (ok2) {
                        size_t same = 0;
                        for (size_t i = 0; i < (size_t)c.T * H * DP; i++) same += o8e[i] == o8[i];
                        cmp_stats s = cmp_f32(of2, of, (size_t)c.T * H * DP, 1e30, 0);
                        printf("  reuse %s: %s vs one launch b=%d s=%d exact: %zu/%zu bytes identical, rel_l2 "
                               "%.3e\n", cname, pn, c.n, smax, same, (size_t)c.T * H * DP, s.rel_l2);
                        CHECK_MSG(s.rel_l2 <= 0.02, "FP8 plans disagree: rel_l2 %.3e", s.rel_l2);
                        report(cname, "fp8 one-exact vs fp8in", eval_ref(&c, of2, can2, c.ref8), 0.998, 0.06);
                        free(o8e);
                        free(of2);
                        free(can2);
                    }
                }
                free(o8);
                free(of);
                free(can);
            }
        }

        /* informational: does NaN in the input slack rows reach the outputs? */
        if (c.n == 3 && c.lens[0] == 257) {
            pack_bf16(&c, 0xff, 0);
            float *of = NULL;
            unsigned char *can = NULL;
            int ok;
            uint16_t *ob = run_bf16(A, &c, GPU_ATTN_BF16_PACKED, &of, &can, &ok);
            if (ok) {
                printf("  info: NaN in Q/K/V slack rows -> %d NaN outputs (bf16 packed)\n",
                       count_nan_f(of, (size_t)c.T * H * DP));
                free(ob);
                free(of);
                free(can);
            }
            if (have_fp8) {
                pack_fp8(&c, 0xff, 0);
                float so, as, ao;
                uint8_t *o8 = run_fp8(A, &c, &of, &can, &so, &as, &ao, &ok);
                if (ok) {
                    printf("  info: NaN in Q/K/V slack rows -> %d NaN outputs (fp8), amax_s %g amax_o %g\n",
                           count_nan_f(of, (size_t)c.T * H * DP), as, ao);
                    free(o8);
                    free(of);
                    free(can);
                }
            }
        }
        case_free(&c);
    }

    /* a second batch in the same FP8 bucket (b=3, s=1024) must reuse the plan */
    if (have_fp8) {
        gpu_attn_stats s0, s1;
        gpu_attn_get_stats(A, &s0);
        tcase c;
        const int lens[3] = {250, 1010, 60};
        case_setup(&c, 3, lens, 0);
        pack_fp8(&c, 0x40, 1);
        float *of = NULL, so, as, ao;
        unsigned char *can = NULL;
        int ok;
        uint8_t *o8 = run_fp8(A, &c, &of, &can, &so, &as, &ao, &ok);
        gpu_attn_get_stats(A, &s1);
        if (ok) {
            report("250+1010+60 v20", "fp8 reused b=3", eval_out(&c, of, can), 0.995, 0.1);
            printf("  fp8 plan cache: misses %d -> %d, hits %d -> %d\n", s0.fp8_misses, s1.fp8_misses, s0.fp8_hits,
                   s1.fp8_hits);
            CHECK_EQ_INT(s0.fp8_misses, s1.fp8_misses);
            CHECK_EQ_INT(s0.fp8_hits + 1, s1.fp8_hits);
            free(o8);
            free(of);
            free(can);
        }
        case_free(&c);
    }

    /* Deferred builds (a server's mode): a new large image runs packed and a new FP8 shape is "not ready" until
     * gpu_attn_build_pending has built the plans they wanted; then the same batch takes its full / FP8 plans and
     * gpu_attn_fp8 builds nothing. */
    {
        gpu_attn_ctx *D = NULL;
        CHECK_OK(gpu_attn_create(0, &o, &D, &err), &err);
        if (D) {
            gpu_attn_set_defer(D, 1);
            tcase c;
            const int lens[2] = {4100, 300};
            case_setup(&c, 2, lens, 0);
            pack_bf16(&c, 0x40, 1);
            float *of = NULL;
            unsigned char *can = NULL;
            int ok, ready = -1, left = -1;
            uint16_t *ob = run_bf16(D, &c, GPU_ATTN_BF16_AUTO, &of, &can, &ok);
            if (ok) {
                printf("  deferred: first batch %s, %d plan(s) pending\n", gpu_attn_batch_desc(D),
                       gpu_attn_pending(D));
                CHECK(strstr(gpu_attn_batch_desc(D), "full") == NULL);
                CHECK_EQ_INT(1, gpu_attn_pending(D));
                report("4100+300 v20", "bf16 deferred, packed", eval_out(&c, of, can), 0.9999, 0.01);
                free(ob);
                free(of);
                free(can);
            }
            if (have_fp8) {
                CHECK_OK(gpu_attn_fp8_ready(D, &ready, &err), &err);
                CHECK_EQ_INT(0, ready);
                CHECK_EQ_INT(3, gpu_attn_pending(D)); /* + the FP8 plan of the 4100 image + packed b=2 */
            }
            CHECK_OK(gpu_attn_build_pending(D, 100, &left, &err), &err);
            CHECK_EQ_INT(0, left);
            ob = run_bf16(D, &c, GPU_ATTN_BF16_AUTO, &of, &can, &ok);
            if (ok) {
                printf("  deferred: after the idle build %s\n", gpu_attn_batch_desc(D));
                CHECK(strstr(gpu_attn_batch_desc(D), "full x1") != NULL);
                report("4100+300 v20", "bf16 after idle build", eval_out(&c, of, can), 0.9999, 0.01);
                free(ob);
                free(of);
                free(can);
            }
            if (have_fp8) {
                pack_fp8(&c, 0x40, 1);
                gpu_attn_batch b = {c.n, c.lens, c.d_cu};
                CHECK_OK(gpu_attn_begin(D, &b, 0, &err), &err);
                CHECK_OK(gpu_attn_fp8_ready(D, &ready, &err), &err);
                CHECK_EQ_INT(1, ready);
                gpu_attn_stats s0, s1;
                gpu_attn_get_stats(D, &s0);
                float so, as, ao;
                uint8_t *o8 = run_fp8(D, &c, &of, &can, &so, &as, &ao, &ok);
                gpu_attn_get_stats(D, &s1);
                if (ok) {
                    printf("  deferred: fp8 %s\n", gpu_attn_fp8_desc(D));
                    CHECK_EQ_INT(s0.fp8_misses, s1.fp8_misses);
                    CHECK_EQ_INT(s0.plans_built, s1.plans_built);
                    report("4100+300 v20", "fp8 after idle build", eval_out(&c, of, can), 0.995, 0.1);
                    free(o8);
                    free(of);
                    free(can);
                }
            }
            case_free(&c);
        }
        gpu_attn_free(D);
    }

    gpu_attn_stats st;
    gpu_attn_get_stats(A, &st);
    printf("context A: %d plans built (%.0f ms), full hits/misses %d/%d, fp8 hits/misses %d/%d\n", st.plans_built,
           st.build_ms_total, st.full_hits, st.full_misses, st.fp8_hits, st.fp8_misses);
    CHECK(cudaGetLastError() == cudaSuccess);
    gpu_attn_free(A);
    gpu_attn_free(B);
    gpu_attn_free(C);
    gpu_attn_free(E);
    return check_done("test_gpu_attn");
}
#endif
