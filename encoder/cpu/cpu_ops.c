/* cpu_ops.c — the float32 CPU twins of vitd's kernels (see cpu_ops.h for the contract of each function).
 *
 * Owns: the per-call pthread parallel-for, activations, Linear (OpenBLAS sgemm + bias/GELU epilogue), residual
 * add, LayerNorm and residual+LayerNorm, merge-order token geometry and cu_seqlens, the bilinear position
 * embedding of transformers 5.17 (vision_utils.get_vision_interpolation_indices_and_weights), the 2-D rotary of
 * Qwen3VLVisionRotaryEmbedding / apply_rotary_pos_emb_vision, and per-segment attention (sdpa per cu_seqlens
 * segment, as Qwen3VLVisionAttention does). Math mirrors MODEL.md section 3 line by line.
 */
#include "cpu_ops.h"

#include <cblas.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "util.h"

/* ---- threads ---- */

int cpu_threads_resolve(int threads) {
    if (threads > 0) return threads;
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

typedef struct {
    cpu_range_fn fn;
    void *ctx;
    size_t begin, end;
} range_job;

static void *range_job_run(void *arg) {
    range_job *j = arg;
    j->fn(j->ctx, j->begin, j->end);
    return NULL;
}

/* Static split into nw contiguous chunks; chunk 0 runs in the calling thread. A worker that cannot be started
 * runs its chunk inline instead, so the loop always completes. */
void cpu_parallel_for(int threads, size_t n, size_t min_items_per_worker, cpu_range_fn fn, void *ctx) {
    enum { MAX_WORKERS = 256 };
    if (n == 0) return;
    size_t nw = (size_t)cpu_threads_resolve(threads);
    if (min_items_per_worker < 1) min_items_per_worker = 1;
    if (nw > n / min_items_per_worker) nw = n / min_items_per_worker;
    if (nw > MAX_WORKERS) nw = MAX_WORKERS;
    if (nw <= 1) {
        fn(ctx, 0, n);
        return;
    }
    range_job jobs[MAX_WORKERS];
    pthread_t tid[MAX_WORKERS];
    int started[MAX_WORKERS];
    for (size_t i = 0; i < nw; i++) {
        jobs[i] = (range_job){fn, ctx, n * i / nw, n * (i + 1) / nw};
        started[i] = 0;
    }
    for (size_t i = 1; i < nw; i++) started[i] = pthread_create(&tid[i], NULL, range_job_run, &jobs[i]) == 0;
    range_job_run(&jobs[0]);
    for (size_t i = 1; i < nw; i++) {
        if (started[i]) pthread_join(tid[i], NULL);
        else range_job_run(&jobs[i]);
    }
}

/* Items per worker below which starting a thread costs more than the work (elementwise floats). */
#define CPU_MIN_ELEMS 16384

/* ---- activations ---- */

float cpu_act_value(cpu_act act, float y) {
    double x = y;
    switch (act) {
    case CPU_ACT_GELU_TANH:
        return (float)(0.5 * x * (1.0 + tanh(0.79788456080286535588 * (x + 0.044715 * x * x * x))));
    case CPU_ACT_GELU_ERF:
        return (float)(0.5 * x * (1.0 + erf(x * 0.70710678118654752440)));
    case CPU_ACT_NONE:
        break;
    }
    return y;
}

typedef struct {
    float *x;
    cpu_act act;
} act_ctx;

static void activate_range(void *arg, size_t begin, size_t end) {
    act_ctx *c = arg;
    for (size_t i = begin; i < end; i++) c->x[i] = cpu_act_value(c->act, c->x[i]);
}

void cpu_activate(float *x, size_t n, cpu_act act, int threads) {
    if (act == CPU_ACT_NONE) return;
    act_ctx c = {x, act};
    cpu_parallel_for(threads, n, CPU_MIN_ELEMS, activate_range, &c);
}

/* ---- linear layers ---- */

typedef struct {
    float *y;
    const float *b;
    size_t m;
    cpu_act act;
} bias_act_ctx;

/* Rows [begin, end) of y: y = act(y + b). */
static void bias_act_rows(void *arg, size_t begin, size_t end) {
    bias_act_ctx *c = arg;
    for (size_t i = begin; i < end; i++) {
        float *row = c->y + i * c->m;
        for (size_t j = 0; j < c->m; j++) {
            float v = c->b ? row[j] + c->b[j] : row[j];
            row[j] = cpu_act_value(c->act, v);
        }
    }
}

void cpu_linear(const float *x, const float *w, const float *b, float *y, size_t n, size_t k, size_t m,
                cpu_act act, int threads) {
    VITD_ASSERT(k <= INT_MAX && m <= INT_MAX);
    /* sgemm takes int sizes: run very tall inputs in row chunks (rows are independent). */
    const size_t chunk = (size_t)1 << 30;
    for (size_t r0 = 0; r0 < n; r0 += chunk) {
        size_t rows = n - r0 < chunk ? n - r0 : chunk;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)rows, (int)m, (int)k, 1.0f, x + r0 * k, (int)k,
                    w, (int)k, 0.0f, y + r0 * m, (int)m);
    }
    if (!b && act == CPU_ACT_NONE) return;
    bias_act_ctx c = {y, b, m, act};
    cpu_parallel_for(threads, n, CPU_MIN_ELEMS / m + 1, bias_act_rows, &c);
}

/* ---- elementwise and normalisation ---- */

typedef struct {
    float *x;
    const float *y;
} add_ctx;

static void add_range(void *arg, size_t begin, size_t end) {
    add_ctx *c = arg;
    for (size_t i = begin; i < end; i++) c->x[i] += c->y[i];
}

void cpu_add(float *x, const float *y, size_t n, int threads) {
    add_ctx c = {x, y};
    cpu_parallel_for(threads, n, CPU_MIN_ELEMS, add_range, &c);
}

/* One LayerNorm row: two-pass mean and biased variance in double, output rounded once. y may equal x. */
static void layernorm_row(const float *x, const float *gamma, const float *beta, float *y, size_t dim,
                          double eps) {
    double sum = 0;
    for (size_t j = 0; j < dim; j++) sum += x[j];
    double mean = sum / (double)dim;
    double ss = 0;
    for (size_t j = 0; j < dim; j++) {
        double dv = x[j] - mean;
        ss += dv * dv;
    }
    double rstd = 1.0 / sqrt(ss / (double)dim + eps);
    for (size_t j = 0; j < dim; j++) y[j] = (float)((x[j] - mean) * rstd * gamma[j] + beta[j]);
}

typedef struct {
    const float *x;  /* input rows */
    float *x_add;    /* the same rows, writable, when r is set (residual stream updated in place) */
    const float *r;  /* branch to add first, or NULL */
    const float *gamma, *beta;
    float *y;
    size_t dim;
    double eps;
} ln_ctx;

static void layernorm_rows(void *arg, size_t begin, size_t end) {
    ln_ctx *c = arg;
    for (size_t i = begin; i < end; i++) {
        const float *xr = c->x + i * c->dim;
        if (c->r) {
            float *xw = c->x_add + i * c->dim;
            const float *rr = c->r + i * c->dim;
            for (size_t j = 0; j < c->dim; j++) xw[j] += rr[j];
        }
        layernorm_row(xr, c->gamma, c->beta, c->y + i * c->dim, c->dim, c->eps);
    }
}

void cpu_layernorm(const float *x, const float *gamma, const float *beta, float *y, size_t n, size_t dim,
                   double eps, int threads) {
    ln_ctx c = {x, NULL, NULL, gamma, beta, y, dim, eps};
    cpu_parallel_for(threads, n, CPU_MIN_ELEMS / (dim + 1) + 1, layernorm_rows, &c);
}

void cpu_add_layernorm(float *x, const float *r, const float *gamma, const float *beta, float *y, size_t n,
                       size_t dim, double eps, int threads) {
    ln_ctx c = {x, x, r, gamma, beta, y, dim, eps};
    cpu_parallel_for(threads, n, CPU_MIN_ELEMS / (dim + 1) + 1, layernorm_rows, &c);
}

/* ---- token geometry ---- */

void cpu_token_pos(int q, int w, int m, int *row, int *col) {
    int bw = w / m;                       /* merge blocks per row */
    int in_col = q % m;
    int in_row = (q / m) % m;
    int block_col = (q / (m * m)) % bw;
    int block_row = q / (m * m * bw);
    *row = block_row * m + in_row;
    *col = block_col * m + in_col;
}

size_t cpu_grid_tokens(const vitd_grid *grids, int n_images) {
    size_t n = 0;
    for (int i = 0; i < n_images; i++) n += (size_t)grids[i].t * (size_t)grids[i].h * (size_t)grids[i].w;
    return n;
}

int cpu_cu_seqlens(const vitd_grid *grids, int n_images, int32_t *cu) {
    int s = 0;
    cu[0] = 0;
    for (int i = 0; i < n_images; i++) {
        for (int f = 0; f < grids[i].t; f++) {
            cu[s + 1] = cu[s] + grids[i].h * grids[i].w;
            s++;
        }
    }
    return s;
}

/* ---- position embedding ---- */

/* One axis of align_corners=True bilinear sampling, float32 as transformers 5.17 computes it. */
static void interp_axis(int pos, int len, int side, int *i0, int *i1, float *w0, float *w1) {
    float src = (float)(pos * (side - 1)) / (float)(len > 1 ? len - 1 : 1);
    float fl = floorf(src);
    float fr = src - fl;
    int a = (int)fl;
    if (a > side - 1) a = side - 1; /* src <= side-1 exactly; kept as the clamp HF applies */
    *i0 = a;
    *i1 = a + 1 < side - 1 ? a + 1 : side - 1;
    *w0 = 1.0f - fr;
    *w1 = 1.0f - fabsf(fr - 1.0f);
}

typedef struct {
    const float *table;
    int side, d, h, w, m;
    float *out; /* this image's first frame */
} pos_ctx;

static void pos_embed_tokens(void *arg, size_t begin, size_t end) {
    pos_ctx *c = arg;
    for (size_t q = begin; q < end; q++) {
        int row, col, r0, r1, c0, c1;
        float wr0, wr1, wc0, wc1;
        cpu_token_pos((int)q, c->w, c->m, &row, &col);
        interp_axis(row, c->h, c->side, &r0, &r1, &wr0, &wr1);
        interp_axis(col, c->w, c->side, &c0, &c1, &wc0, &wc1);
        const float w00 = wr0 * wc0, w01 = wr0 * wc1, w10 = wr1 * wc0, w11 = wr1 * wc1;
        const float *e00 = c->table + ((size_t)r0 * c->side + c0) * c->d;
        const float *e01 = c->table + ((size_t)r0 * c->side + c1) * c->d;
        const float *e10 = c->table + ((size_t)r1 * c->side + c0) * c->d;
        const float *e11 = c->table + ((size_t)r1 * c->side + c1) * c->d;
        float *o = c->out + q * c->d;
        for (int j = 0; j < c->d; j++) {
            float acc = e00[j] * w00;
            acc += e01[j] * w01;
            acc += e10[j] * w10;
            acc += e11[j] * w11;
            o[j] = acc;
        }
    }
}

void cpu_pos_embed(const float *table, int side, int d, const vitd_grid *grids, int n_images, int m, float *out,
                   int threads) {
    float *dst = out;
    for (int i = 0; i < n_images; i++) {
        size_t hw = (size_t)grids[i].h * grids[i].w;
        pos_ctx c = {table, side, d, grids[i].h, grids[i].w, m, dst};
        cpu_parallel_for(threads, hw, CPU_MIN_ELEMS / (size_t)(d + 1) + 1, pos_embed_tokens, &c);
        for (int f = 1; f < grids[i].t; f++) memcpy(dst + (size_t)f * hw * d, dst, hw * d * sizeof(float));
        dst += (size_t)grids[i].t * hw * d;
    }
}

/* ---- 2-D rotary ---- */

void cpu_rope_inv_freq(int head_dim, double theta, float *inv_freq) {
    int half = head_dim / 2;
    for (int i = 0; i < head_dim / 4; i++) {
        float e = (float)(2 * i) / (float)half;
        /* theta ** e in float32, correctly rounded (pow in double, rounded once), then a float reciprocal */
        float p = (float)pow((double)(float)theta, (double)e);
        inv_freq[i] = 1.0f / p;
    }
}

typedef struct {
    const float *inv_freq;
    int w, m, hd;
    float *cos_out, *sin_out; /* this image's first frame */
} rope_ctx;

static void rope_tokens(void *arg, size_t begin, size_t end) {
    rope_ctx *c = arg;
    int q4 = c->hd / 4, half = c->hd / 2;
    for (size_t q = begin; q < end; q++) {
        int row, col;
        cpu_token_pos((int)q, c->w, c->m, &row, &col);
        float *co = c->cos_out + q * c->hd, *si = c->sin_out + q * c->hd;
        for (int i = 0; i < q4; i++) {
            float ah = (float)row * c->inv_freq[i];
            float aw = (float)col * c->inv_freq[i];
            co[i] = co[half + i] = (float)cos((double)ah);
            si[i] = si[half + i] = (float)sin((double)ah);
            co[q4 + i] = co[half + q4 + i] = (float)cos((double)aw);
            si[q4 + i] = si[half + q4 + i] = (float)sin((double)aw);
        }
    }
}

void cpu_rope_cos_sin(const vitd_grid *grids, int n_images, int m, int head_dim, double theta, float *cos_out,
                      float *sin_out, int threads) {
    float inv_freq[512];
    VITD_ASSERT(head_dim % 4 == 0 && head_dim / 4 <= 512);
    cpu_rope_inv_freq(head_dim, theta, inv_freq);
    size_t off = 0;
    for (int i = 0; i < n_images; i++) {
        size_t hw = (size_t)grids[i].h * grids[i].w;
        rope_ctx c = {inv_freq, grids[i].w, m, head_dim, cos_out + off * head_dim, sin_out + off * head_dim};
        cpu_parallel_for(threads, hw, CPU_MIN_ELEMS / (size_t)head_dim + 1, rope_tokens, &c);
        for (int f = 1; f < grids[i].t; f++) {
            memcpy(c.cos_out + (size_t)f * hw * head_dim, c.cos_out, hw * head_dim * sizeof(float));
            memcpy(c.sin_out + (size_t)f * hw * head_dim, c.sin_out, hw * head_dim * sizeof(float));
        }
        off += (size_t)grids[i].t * hw;
    }
}

typedef struct {
    float *x;
    size_t ld;
    int heads, hd;
    const float *cos_in, *sin_in;
} rope_apply_ctx;

static void rope_apply_tokens(void *arg, size_t begin, size_t end) {
    rope_apply_ctx *c = arg;
    int half = c->hd / 2;
    for (size_t t = begin; t < end; t++) {
        const float *co = c->cos_in + t * c->hd, *si = c->sin_in + t * c->hd;
        for (int h = 0; h < c->heads; h++) {
            float *v = c->x + t * c->ld + (size_t)h * c->hd;
            for (int j = 0; j < half; j++) {
                float a = v[j], b = v[j + half];
                v[j] = a * co[j] - b * si[j];
                v[j + half] = b * co[j + half] + a * si[j + half];
            }
        }
    }
}

void cpu_rope_apply(float *x, size_t ld, size_t n, int heads, int head_dim, const float *cos_in,
                    const float *sin_in, int threads) {
    rope_apply_ctx c = {x, ld, heads, head_dim, cos_in, sin_in};
    cpu_parallel_for(threads, n, CPU_MIN_ELEMS / ((size_t)heads * head_dim + 1) + 1, rope_apply_tokens, &c);
}

/* ---- attention ---- */

typedef struct {
    float *s;   /* [rows, L] scores in, probabilities out */
    size_t L;
} softmax_ctx;

/* Rows [begin, end): p = exp(s - max) / sum, exp in float, the sum and the division in double. */
static void softmax_rows(void *arg, size_t begin, size_t end) {
    softmax_ctx *c = arg;
    for (size_t i = begin; i < end; i++) {
        float *r = c->s + i * c->L;
        float mx = r[0];
        for (size_t j = 1; j < c->L; j++) mx = r[j] > mx ? r[j] : mx;
        double sum = 0;
        for (size_t j = 0; j < c->L; j++) {
            r[j] = expf(r[j] - mx);
            sum += r[j];
        }
        double inv = 1.0 / sum;
        for (size_t j = 0; j < c->L; j++) r[j] = (float)(r[j] * inv);
    }
}

/* Score floats a block holds when block_rows is 0 (16 MB). */
#define CPU_ATTN_BLOCK_FLOATS ((size_t)1 << 22)

vitd_status cpu_attention(const float *q, const float *k, const float *v, size_t ld_in, float *out, size_t ld_out,
                          const int32_t *cu, int n_seg, int heads, int head_dim, float scale, int block_rows,
                          int threads, vitd_err *err) {
    size_t max_len = 0;
    for (int s = 0; s < n_seg; s++) {
        if (cu[s + 1] < cu[s])
            return vitd_fail(err, VITD_E_INVALID_ARG, "attention: cu_seqlens decreases at segment %d (%d -> %d)", s,
                             (int)cu[s], (int)cu[s + 1]);
        size_t L = (size_t)(cu[s + 1] - cu[s]);
        if (L > max_len) max_len = L;
    }
    if (max_len == 0) return VITD_OK;
    if (ld_in > INT_MAX || ld_out > INT_MAX)
        return vitd_fail(err, VITD_E_INVALID_ARG, "attention: leading dimension %zu exceeds INT_MAX",
                         ld_in > ld_out ? ld_in : ld_out);
    size_t rows = block_rows > 0 ? (size_t)block_rows : CPU_ATTN_BLOCK_FLOATS / max_len;
    if (rows < 1) rows = 1;
    if (rows > max_len) rows = max_len;
    float *scores = malloc(rows * max_len * sizeof(float));
    if (!scores)
        return vitd_fail(err, VITD_E_NOMEM, "attention: cannot allocate %zu x %zu scores for a segment of %zu tokens",
                         rows, max_len, max_len);
    const size_t hd = (size_t)head_dim;
    for (int s = 0; s < n_seg; s++) {
        size_t s0 = (size_t)cu[s], L = (size_t)(cu[s + 1] - cu[s]);
        for (size_t h = 0; h < (size_t)heads; h++) {
            const float *kh = k + s0 * ld_in + h * hd, *vh = v + s0 * ld_in + h * hd;
            for (size_t a0 = 0; a0 < L; a0 += rows) {
                size_t nr = L - a0 < rows ? L - a0 : rows;
                /* scores[nr, L] = scale * Q_block K^T */
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)nr, (int)L, head_dim, scale,
                            q + (s0 + a0) * ld_in + h * hd, (int)ld_in, kh, (int)ld_in, 0.0f, scores, (int)L);
                softmax_ctx sc = {scores, L};
                cpu_parallel_for(threads, nr, CPU_MIN_ELEMS / L + 1, softmax_rows, &sc);
                /* out block [nr, hd] = P V */
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)nr, head_dim, (int)L, 1.0f, scores,
                            (int)L, vh, (int)ld_in, 0.0f, out + (s0 + a0) * ld_out + h * hd, (int)ld_out);
            }
        }
    }
    free(scores);
    return VITD_OK;
}

/* ---- fp8 ---- */

/* The twins of kernels/fp8_quant.cu. The quantiser follows the semantics of the GPU's
 * cvt.rn.satfinite.e4m3x2.f32 (CUDA's __nv_cvt_float_to_fp8 with __NV_SATFINITE): one round-to-nearest-even
 * from the float value. Scaling by powers of two (frexpf, ldexpf, * 512) is exact, so rintf sees the exact
 * quotient by the target grid's step and does the one rounding. */

uint8_t cpu_e4m3_from_f32(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    const uint8_t sign = (uint8_t)((u >> 24) & 0x80u);
    const float a = fabsf(x);
    if (a != a) return 0x7f;               /* NaN: the canonical 0x7f, whatever its sign */
    if (a > 464.0f) return sign | 0x7e;    /* past 448 + half an ulp, and inf: saturate */
    if (a < 0.015625f) {                   /* below 2^-6: subnormal grid of step 2^-9 */
        int m = (int)rintf(a * 512.0f);    /* 0..8; 8 is 2^-6, whose code 0x08 is the first normal */
        return sign | (uint8_t)m;
    }
    int e;
    (void)frexpf(a, &e);
    e -= 1;                                /* a = 1.f * 2^e, -6 <= e <= 8 */
    int m = (int)rintf(ldexpf(a, 3 - e));  /* 8..16: the significand in eighths */
    if (m == 16) {
        m = 8;
        e++;
    }
    return sign | (uint8_t)(((e + 7) << 3) | (m - 8));
}

float cpu_e4m3_to_f32(uint8_t b) {
    if ((b & 0x7f) == 0x7f) return NAN;
    const int e = (b >> 3) & 15, m = b & 7;
    const float v = e == 0 ? ldexpf((float)m, -9) : ldexpf((float)(8 + m), e - 10);
    return (b & 0x80) ? -v : v;
}

#define FP8_AMAX_PARTS 64

typedef struct {
    const float *qkv, *cos_t, *sin_t;
    size_t n;
    int heads, hd, dp;
    const float *descale3;
    uint8_t *q8, *k8, *v8;
    float part[FP8_AMAX_PARTS][3]; /* amax of each part of the tokens */
} fp8_quant_ctx;

/* Rotates the two halves of one head in place: lo = a*c - b*s, hi = b*c + a*s, every operation rounded. */
static void fp8_rotate(float *x, int half, const float *co, const float *si) {
    for (int j = 0; j < half; j++) {
        const float a = x[j], b = x[j + half];
        const float ac = a * co[j], bs = b * si[j], bc = b * co[j], as = a * si[j];
        x[j] = ac - bs;
        x[j + half] = bc + as;
    }
}

static float fp8_amax_of(float m, const float *x, int n) {
    for (int j = 0; j < n; j++) m = fmaxf(m, fabsf(x[j]));
    return m;
}

static void fp8_store(uint8_t *dst, const float *x, int hd, int dp, float inv) {
    for (int j = 0; j < hd; j++) {
        const float y = x[j] * inv;
        dst[j] = cpu_e4m3_from_f32(y);
    }
    for (int j = hd; j < dp; j++) dst[j] = 0;
}

/* Items are parts of the token range; part p handles tokens [p*n/parts, (p+1)*n/parts). */
static void fp8_quant_parts(void *arg, size_t begin, size_t end) {
    fp8_quant_ctx *c = arg;
    const int hd = c->hd, half = hd / 2, H = c->heads;
    float buf[2][1024];
    float inv[3] = {1.0f, 1.0f, 1.0f};
    if (c->descale3)
        for (int w = 0; w < 3; w++) inv[w] = 1.0f / c->descale3[w];
    for (size_t p = begin; p < end; p++) {
        const size_t t0 = p * c->n / FP8_AMAX_PARTS, t1 = (p + 1) * c->n / FP8_AMAX_PARTS;
        float m[3] = {0.0f, 0.0f, 0.0f};
        for (size_t t = t0; t < t1; t++) {
            const float *row = c->qkv + t * 3 * (size_t)H * hd;
            const float *co = c->cos_t + t * (size_t)half, *si = c->sin_t + t * (size_t)half;
            for (int h = 0; h < H; h++) {
                for (int w = 0; w < 3; w++) {
                    float *x = buf[w == 2];
                    memcpy(x, row + ((size_t)w * H + h) * hd, (size_t)hd * sizeof(float));
                    if (w < 2) fp8_rotate(x, half, co, si);
                    m[w] = fp8_amax_of(m[w], x, hd);
                    if (c->descale3) {
                        uint8_t *dst = (w == 0 ? c->q8 : w == 1 ? c->k8 : c->v8) + (t * H + h) * (size_t)c->dp;
                        fp8_store(dst, x, hd, c->dp, inv[w]);
                    }
                }
            }
        }
        for (int w = 0; w < 3; w++) c->part[p][w] = m[w];
    }
}

void cpu_fp8_quant_qkv_rope(const float *qkv, const float *cos_t, const float *sin_t, size_t n, int heads,
                            int head_dim, int dp, const float *descale3, uint8_t *q8, uint8_t *k8, uint8_t *v8,
                            float *amax3, int threads) {
    VITD_ASSERT(head_dim % 2 == 0 && head_dim <= 1024 && dp >= head_dim && heads > 0);
    fp8_quant_ctx c = {qkv, cos_t, sin_t, n, heads, head_dim, dp, descale3, q8, k8, v8, {{0}}};
    size_t per_part = (n * (size_t)heads * head_dim * 3) / FP8_AMAX_PARTS + 1;
    cpu_parallel_for(threads, FP8_AMAX_PARTS, CPU_MIN_ELEMS / per_part + 1, fp8_quant_parts, &c);
    for (int p = 0; p < FP8_AMAX_PARTS; p++)
        for (int w = 0; w < 3; w++) amax3[w] = fmaxf(amax3[w], c.part[p][w]);
}

void cpu_fp8_slots_fill(const float *scale3, float *slots) {
    const int w = 4; /* ATTN_FP8_SLOT_FLOATS (kernels.h) */
    slots[0 * w] = scale3[0];        /* DESCALE_Q */
    slots[1 * w] = scale3[1];        /* DESCALE_K */
    slots[2 * w] = scale3[2];        /* DESCALE_V */
    slots[3 * w] = 1.0f / 448.0f;    /* DESCALE_S */
    slots[4 * w] = 448.0f;           /* SCALE_S (P <= 1) */
    slots[5 * w] = 1.0f / scale3[2]; /* SCALE_O: |O| <= 448 * DESCALE_V */
}

void cpu_fp8_dequant(const uint8_t *o8, size_t n, int heads, int head_dim, int dp, float scale_o, float *out) {
    const float inv = 1.0f / scale_o;
    for (size_t th = 0; th < n * (size_t)heads; th++)
        for (int j = 0; j < head_dim; j++) {
            const float y = cpu_e4m3_to_f32(o8[th * (size_t)dp + j]) * inv;
            out[th * (size_t)head_dim + j] = y;
        }
}

/* ---- fp8 linear ---- */

float cpu_fp8_descale(const float *x, size_t n) {
    float amax = 0.0f;
    for (size_t i = 0; i < n; i++) {
        const float a = fabsf(x[i]);
        if (a > amax) amax = a; /* NaN compares false: ignored */
    }
    return amax > 0.0f ? amax / 448.0f : 1.0f;
}

typedef struct {
    float *x;
    float descale, inv;
} fake_quant_ctx;

static void fake_quant_range(void *arg, size_t begin, size_t end) {
    const fake_quant_ctx *c = arg;
    for (size_t i = begin; i < end; i++) c->x[i] = cpu_e4m3_to_f32(cpu_e4m3_from_f32(c->x[i] * c->inv)) * c->descale;
}

void cpu_fp8_fake_quant(float *x, size_t n, float descale, int threads) {
    fake_quant_ctx c = {x, descale, 1.0f / descale};
    cpu_parallel_for(threads, n, CPU_MIN_ELEMS, fake_quant_range, &c);
}

typedef struct {
    float *w;
    size_t cols;
} fake_quant_rows_ctx;

static void fake_quant_rows(void *arg, size_t begin, size_t end) {
    const fake_quant_rows_ctx *c = arg;
    for (size_t r = begin; r < end; r++) {
        float *row = c->w + r * c->cols;
        fake_quant_ctx one = {row, cpu_fp8_descale(row, c->cols), 0.0f};
        one.inv = 1.0f / one.descale;
        fake_quant_range(&one, 0, c->cols);
    }
}

void cpu_fp8_fake_quant_weight(float *w, size_t rows, size_t cols, int per_row, int threads) {
    if (!per_row) {
        cpu_fp8_fake_quant(w, rows * cols, cpu_fp8_descale(w, rows * cols), threads);
        return;
    }
    fake_quant_rows_ctx c = {w, cols};
    cpu_parallel_for(threads, rows, CPU_MIN_ELEMS / (cols + 1) + 1, fake_quant_rows, &c);
}
