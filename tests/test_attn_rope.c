/* labels: gpu */
/* test_attn_rope.c — vitd's own short-sequence attention with fused rotary (kernels/attn_rope.cu) against its CPU
 * twins (cpu_rope_apply, rounded to bf16 as the kernel rounds, then cpu_attention in float32), and against the
 * path it replaces (rope_pack_qkv_bf16 + cuDNN BF16 attention) measured on the same data.
 *
 * Data: seeded normal qkv with 20x outlier channels (gpu_check.h: some heads get large, peaked logits), rotary
 * tables of a 28-wide patch grid. Cases: one image of 784 tokens (448x448, the case the kernel is for), 1 token,
 * mixed segments around the 64-row tiles (1, 63, 64, 65, 200, 17), four images of 784, long ones (1024, 2048 and
 * 4100 tokens: any length is correct, only slower than cuDNN), and head_dim 64 (dp 64).
 * Checks per case: cosine >= 0.9999 and rel-L2 <= 0.01 against the twin (test_gpu_attn.s BF16 bounds); rel-L2 no
 * worse than 1.25x cuDNN's own error on the same inputs (+2e-4); pad lanes exactly +0; guard bands around the
 * output untouched; the 64- and 128-row tilings (attn_rope_bf16_tiled) give attn_rope_bf16's bits, the key-split
 * one meets the same bounds. Unsupported shapes, tilings and misaligned pointers are refused
 * (cudaErrorInvalidValue). Timings of the three tilings and of the replaced path are printed for information
 * (bench_encoder measures the engine; VITD_TEST_NO_TIMING skips them, for compute-sanitizer).
 * Without CUDA, a device, or compute capability >= 9.0 it exits 77.
 */
#ifndef VITD_HAVE_CUDA
#include <stdio.h>
int main(void) {
    printf("SKIP: vitd was built without CUDA (VITD_CUDA=OFF or no nvcc)\n");
    return 77;
}
#else

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "check.h"
#include "cpu_ops.h"
#include "engine_kernels.h"
#include "gpu_attn.h"
#include "util.h"

#include "gpu_check.h"

#define MAX_SEG 16

static unsigned long long g_seed = 0x5eed0a77ULL;
static cudaStream_t g_stream;

typedef struct {
    const char *name;
    int H, hd, dp;
    int n_seg;
    int lens[MAX_SEG];
} acase;

static const acase k_cases[] = {
    {"448x448", 16, 72, 80, 1, {784}},
    {"1 token", 16, 72, 80, 1, {1}},
    {"tile edges", 16, 72, 80, 6, {1, 63, 64, 65, 200, 17}},
    {"448x448 x4", 16, 72, 80, 4, {784, 784, 784, 784}},
    {"1024", 16, 72, 80, 1, {1024}},
    {"2048+300", 16, 72, 80, 2, {2048, 300}},
    {"4100", 16, 72, 80, 1, {4100}},
    {"hd64 mixed", 16, 64, 64, 3, {300, 17, 784}},
};

static void *upload(const void *h, size_t bytes) {
    void *d;
    CUDA_CHECK(cudaMalloc(&d, bytes));
    CUDA_CHECK(cudaMemcpy(d, h, bytes, cudaMemcpyHostToDevice));
    return d;
}

/* o [N, H, dp] bf16 on the device -> [N, H*hd] floats; *pad_zero = every lane >= hd is +0. */
static float *download_o(const uint16_t *d, int N, int H, int hd, int dp, int *pad_zero) {
    const size_t n = (size_t)N * H * dp;
    uint16_t *h = malloc(n * 2);
    float *f = malloc((size_t)N * H * hd * sizeof(float));
    CUDA_CHECK(cudaMemcpy(h, d, n * 2, cudaMemcpyDeviceToHost));
    *pad_zero = 1;
    for (size_t r = 0; r < (size_t)N * H; r++)
        for (int j = 0; j < dp; j++) {
            if (j < hd) f[r * hd + j] = bf16_to_f32(h[r * dp + j]);
            else *pad_zero &= h[r * dp + j] == 0;
        }
    free(h);
    return f;
}

/* Mean ms of `reps` runs of the own kernel in tiling `which` (ATTN_ROPE_*), or of rotary pack + cuDNN (which =
 * -1). */
static double time_path(int which, int reps, const uint16_t *dqkv, const float *dc, const float *ds,
                        const int32_t *dcu, const acase *c, int N, uint16_t *o_own, uint16_t *q, uint16_t *k,
                        uint16_t *v, uint16_t *o_cd, gpu_attn_ctx *A) {
    cudaEvent_t e0, e1;
    vitd_err err = {0};
    CUDA_CHECK(cudaEventCreate(&e0));
    CUDA_CHECK(cudaEventCreate(&e1));
    float ms = 0;
    for (int r = -2; r < reps; r++) {
        if (r == 0) CUDA_CHECK(cudaEventRecord(e0, g_stream));
        if (which >= 0) {
            CUDA_CHECK(attn_rope_bf16_tiled(dqkv, dc, ds, dcu, c->n_seg, N, c->H, c->hd, c->dp, o_own, which,
                                            g_stream));
        } else {
            CUDA_CHECK(rope_pack_qkv_bf16(dqkv, dc, ds, N, c->H, c->hd, c->dp, q, k, v, g_stream));
            if (gpu_attn_bf16(A, q, k, v, o_cd, g_stream, &err) != VITD_OK) break;
        }
    }
    CUDA_CHECK(cudaEventRecord(e1, g_stream));
    CUDA_CHECK(cudaEventSynchronize(e1));
    CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    return ms / reps;
}

static void run_case(const acase *c) {
    const int H = c->H, hd = c->hd, dp = c->dp, half = hd / 2, q4 = hd / 4, ld = 3 * H * hd;
    int32_t cu[MAX_SEG + 1] = {0};
    for (int s = 0; s < c->n_seg; s++) cu[s + 1] = cu[s] + c->lens[s];
    const int N = cu[c->n_seg];

    /* inputs: bf16 qkv, rotary tables of a 28-wide grid (rows and columns per segment) */
    float *qkv = gpu_rand_bf16(&g_seed, (size_t)N, (size_t)ld, 1.0);
    uint16_t *hqkv = gpu_to_bf16(qkv, (size_t)N * ld);
    float inv[64], *tc = malloc((size_t)N * half * 4), *ts = malloc((size_t)N * half * 4);
    float *fc = malloc((size_t)N * hd * 4), *fs = malloc((size_t)N * hd * 4);
    cpu_rope_inv_freq(hd, 10000.0, inv);
    for (int s = 0; s < c->n_seg; s++)
        for (int t = cu[s]; t < cu[s + 1]; t++)
            for (int i = 0; i < half; i++) {
                const int p = t - cu[s], pos = i < q4 ? p / 28 : p % 28;
                const float ang = (float)pos * inv[i % q4];
                tc[(size_t)t * half + i] = fc[(size_t)t * hd + i] = fc[(size_t)t * hd + half + i] = (float)cos(ang);
                ts[(size_t)t * half + i] = fs[(size_t)t * hd + i] = fs[(size_t)t * hd + half + i] = (float)sin(ang);
            }

    /* twin: rotate q and k, round to bf16, float32 attention per segment */
    cpu_rope_apply(qkv, (size_t)ld, (size_t)N, H, hd, fc, fs, 1);
    cpu_rope_apply(qkv + (size_t)H * hd, (size_t)ld, (size_t)N, H, hd, fc, fs, 1);
    for (size_t i = 0; i < (size_t)N * ld; i++) qkv[i] = bf16_to_f32(f32_to_bf16(qkv[i]));
    float *ref = malloc((size_t)N * H * hd * sizeof(float));
    vitd_err err = {0};
    CHECK_OK(cpu_attention(qkv, qkv + (size_t)H * hd, qkv + 2 * (size_t)H * hd, (size_t)ld, ref, (size_t)H * hd, cu,
                           c->n_seg, H, hd, 1.0f / sqrtf((float)hd), 0, 0, &err), &err);

    /* the kernel */
    uint16_t *dqkv = upload(hqkv, (size_t)N * ld * 2);
    float *dc = upload(tc, (size_t)N * half * 4), *ds = upload(ts, (size_t)N * half * 4);
    int32_t *dcu = upload(cu, (size_t)(c->n_seg + 1) * 4);
    const size_t on = (size_t)N * H * dp;
    uint16_t *o_own = gpu_guarded(on * 2);
    CUDA_CHECK(attn_rope_bf16(dqkv, dc, ds, dcu, c->n_seg, N, H, hd, dp, o_own, g_stream));
    CUDA_CHECK(cudaStreamSynchronize(g_stream));
    int pad0 = 0;
    float *got = download_o(o_own, N, H, hd, dp, &pad0);
    const size_t n = (size_t)N * H * hd;
    cmp_stats s = cmp_f32(got, ref, n, 0, 0);
    char what[96];
    snprintf(what, sizeof what, "%s own (N=%d H=%d hd=%d)", c->name, N, H, hd);
    cmp_print(what, s);
    CHECK_MSG(s.n_nan == 0 && s.cosine >= 0.9999 && s.rel_l2 <= 0.01, "%s: cos %.6f rel_l2 %.3e", what, s.cosine,
              s.rel_l2);
    CHECK_MSG(pad0, "%s: pad lanes not exactly +0", what);
    /* the single-pass tilings compute the same bits (a row's arithmetic does not depend on which block owns it);
     * the key-split one sums in another order: held to the same bounds against the twin */
    cmp_stats s_split = s;
    for (int t = 0; t < ATTN_ROPE_TILINGS; t++) {
        CUDA_CHECK(cudaMemset(o_own, 0xff, on * 2));
        CUDA_CHECK(attn_rope_bf16_tiled(dqkv, dc, ds, dcu, c->n_seg, N, H, hd, dp, o_own, t, g_stream));
        CUDA_CHECK(cudaStreamSynchronize(g_stream));
        float *other = download_o(o_own, N, H, hd, dp, &pad0);
        if (t == ATTN_ROPE_SPLIT64) {
            s_split = cmp_f32(other, ref, n, 0, 0);
            snprintf(what, sizeof what, "%s own key-split", c->name);
            cmp_print(what, s_split);
            CHECK_MSG(s_split.n_nan == 0 && s_split.cosine >= 0.9999 && s_split.rel_l2 <= 0.01 && pad0,
                      "%s: cos %.6f rel_l2 %.3e pad %d", what, s_split.cosine, s_split.rel_l2, pad0);
        } else {
            cmp_stats so = cmp_f32(other, got, n, 0, 0);
            CHECK_MSG(so.n_bad == 0 && pad0, "%s: tiling %d differs from attn_rope_bf16's in %zu values", c->name, t,
                      so.n_bad);
        }
        free(other);
    }

    /* the path it replaces: rotary pack + cuDNN BF16 on the same inputs */
    gpu_attn_opts ao = gpu_attn_opts_default();
    ao.n_heads = H;
    ao.head_dim = hd;
    ao.head_dim_padded = dp;
    ao.max_batch = MAX_SEG;
    ao.max_seqlen = 8192;
    ao.fp8 = 0;
    gpu_attn_ctx *A = NULL;
    CHECK_OK(gpu_attn_create(0, &ao, &A, &err), &err);
    const size_t cn = ((size_t)N + GPU_ATTN_SLACK_ROWS) * H * dp;
    uint16_t *q = NULL, *k = NULL, *v = NULL, *o_cd = NULL;
    CUDA_CHECK(cudaMalloc((void **)&q, cn * 2));
    CUDA_CHECK(cudaMalloc((void **)&k, cn * 2));
    CUDA_CHECK(cudaMalloc((void **)&v, cn * 2));
    CUDA_CHECK(cudaMalloc((void **)&o_cd, cn * 2));
    CUDA_CHECK(cudaMemset(q, 0, cn * 2));
    CUDA_CHECK(cudaMemset(k, 0, cn * 2));
    CUDA_CHECK(cudaMemset(v, 0, cn * 2));
    gpu_attn_batch b = {.n_images = c->n_seg, .lens = c->lens, .d_cu_seqlens = dcu};
    if (A && gpu_attn_begin(A, &b, g_stream, &err) == VITD_OK) {
        CUDA_CHECK(rope_pack_qkv_bf16(dqkv, dc, ds, N, H, hd, dp, q, k, v, g_stream));
        CHECK_OK(gpu_attn_bf16(A, q, k, v, o_cd, g_stream, &err), &err);
        CUDA_CHECK(cudaStreamSynchronize(g_stream));
        float *cd = download_o(o_cd, N, H, hd, dp, &pad0);
        cmp_stats sc = cmp_f32(cd, ref, n, 0, 0);
        snprintf(what, sizeof what, "%s cuDNN", c->name);
        cmp_print(what, sc);
        CHECK_MSG(s.rel_l2 <= 1.25 * sc.rel_l2 + 2e-4, "%s: own rel_l2 %.3e vs cuDNN's %.3e", c->name, s.rel_l2,
                  sc.rel_l2);
        CHECK_MSG(s_split.rel_l2 <= 1.25 * sc.rel_l2 + 2e-4, "%s: key-split rel_l2 %.3e vs cuDNN's %.3e", c->name,
                  s_split.rel_l2, sc.rel_l2);
        const int reps = N <= 4096 ? 50 : 20;
        if (getenv("VITD_TEST_NO_TIMING")) goto done; /* under compute-sanitizer */
        double t[ATTN_ROPE_TILINGS];
        for (int w = 0; w < ATTN_ROPE_TILINGS; w++)
            t[w] = time_path(w, reps, dqkv, dc, ds, dcu, c, N, o_own, q, k, v, o_cd, A);
        const double t_cd = time_path(-1, reps, dqkv, dc, ds, dcu, c, N, o_own, q, k, v, o_cd, A);
        printf("  timing %-12s own: 64 rows %.2f us, 128 rows %.2f us, key-split %.2f us; rope_pack + cuDNN %.2f us "
               "(%.2fx %.2fx %.2fx)\n", c->name, 1e3 * t[0], 1e3 * t[1], 1e3 * t[2], 1e3 * t_cd, t_cd / t[0],
               t_cd / t[1], t_cd / t[2]);
    done:
        free(cd);
    } else if (A) {
        CHECK_MSG(0, "%s: gpu_attn_begin: %s", c->name, err.msg);
    }
    CHECK_MSG(gpu_guard_ok_free(o_own, on * 2), "%s: guard band around o overwritten", c->name);
    gpu_attn_free(A);
    cudaFree(q);
    cudaFree(k);
    cudaFree(v);
    cudaFree(o_cd);
    cudaFree(dqkv);
    cudaFree(dc);
    cudaFree(ds);
    cudaFree(dcu);
    free(qkv); free(hqkv); free(tc); free(ts); free(fc); free(fs); free(ref); free(got);
}

int main(void) {
    struct cudaDeviceProp prop;
    gpu_require_sm90(&prop);
    printf("device %s, %d SMs\n", prop.name, prop.multiProcessorCount);
    CUDA_CHECK(cudaStreamCreate(&g_stream));

    /* refused shapes */
    CHECK_EQ_INT(1, attn_rope_supported(72, 80));
    CHECK_EQ_INT(1, attn_rope_supported(64, 64));
    CHECK_EQ_INT(0, attn_rope_supported(72, 72));
    CHECK_EQ_INT(0, attn_rope_supported(80, 80));
    CHECK_EQ_INT(cudaErrorInvalidValue,
                 attn_rope_bf16((const uint16_t *)8, (const float *)8, (const float *)8, (const int32_t *)8, 1, 4, 16,
                                80, 80, (uint16_t *)8, g_stream));
    /* tilings outside the three, and a misaligned pointer (refused before any launch: the pointers are not read) */
    const int bad_tiling[] = {-1, ATTN_ROPE_TILINGS};
    for (int i = 0; i < 2; i++)
        CHECK_EQ_INT(cudaErrorInvalidValue,
                     attn_rope_bf16_tiled((const uint16_t *)8, (const float *)8, (const float *)8,
                                          (const int32_t *)8, 1, 4, 16, 72, 80, (uint16_t *)8, bad_tiling[i],
                                          g_stream));
    CHECK_EQ_INT(cudaErrorInvalidValue,
                 attn_rope_bf16((const uint16_t *)8, (const float *)8, (const float *)8, (const int32_t *)8, 1, 4, 16,
                                72, 80, (uint16_t *)12, g_stream));
    (void)cudaGetLastError();

    for (size_t i = 0; i < sizeof k_cases / sizeof k_cases[0]; i++) run_case(&k_cases[i]);
    CUDA_CHECK(cudaStreamDestroy(g_stream));
    return check_done("test_attn_rope");
}

#endif
