/* labels: unit */
/* test_cpu_ops.c — every op of encoder/cpu/cpu_ops.c against a straightforward double-precision implementation
 * written here with naive loops (MODEL.md section 3), on seeded normal data with a few 20x outlier channels and
 * odd sizes: 1 token, 7 tokens, segments of different lengths, 2-frame grids. Prints max abs / max rel / cosine
 * for every comparison. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "cpu_ops.h"

static unsigned long long g_rng = 0x5eed1234ULL;

/* [rows, cols] normal * scale, with columns 1 and cols/2+1 (when they exist) multiplied by 20. */
static float *rand_outliers(size_t rows, size_t cols, double scale) {
    float *a = malloc(rows * cols * sizeof(float) + 1);
    for (size_t i = 0; i < rows; i++)
        for (size_t j = 0; j < cols; j++) {
            double v = check_rng_normal(&g_rng) * scale;
            if (cols > 2 && (j == 1 || j == cols / 2 + 1)) v *= 20.0;
            a[i * cols + j] = (float)v;
        }
    return a;
}

static float *rand_normal(size_t n, double mean, double scale) {
    float *a = malloc(n * sizeof(float) + 1);
    for (size_t i = 0; i < n; i++) a[i] = (float)(mean + scale * check_rng_normal(&g_rng));
    return a;
}

/* Compares got with a double reference: every element within tol * (|ref| + max|ref|), max_rel <= tol,
 * cosine >= 1 - 1e-6 (or exact zeros), no NaN. */
static void expect_close(const char *what, const float *got, const double *ref, size_t n, double tol) {
    float *rf = malloc(n * sizeof(float) + 1);
    double mx = 0;
    for (size_t i = 0; i < n; i++) {
        rf[i] = (float)ref[i];
        if (fabs(ref[i]) > mx) mx = fabs(ref[i]);
    }
    cmp_stats s = cmp_f32(got, rf, n, tol * mx, tol);
    /* cmp_f32 measures against the float-rounded reference; re-measure the max error against the double one */
    double max_abs = 0;
    for (size_t i = 0; i < n; i++) max_abs = fmax(max_abs, fabs((double)got[i] - ref[i]));
    s.max_abs = max_abs;
    s.max_rel = mx > 0 ? max_abs / mx : max_abs;
    cmp_print(what, s);
    CHECK_MSG(s.n_nan == 0, "%s: %zu NaN/Inf", what, s.n_nan);
    CHECK_MSG(s.n_bad == 0, "%s: %zu elements out of tolerance, first at %zu (got %g, ref %g)", what, s.n_bad,
              s.first_bad, s.first_bad < n ? got[s.first_bad] : 0.0, s.first_bad < n ? ref[s.first_bad] : 0.0);
    CHECK_MSG(s.max_rel <= tol, "%s: max_rel %.3e > %.1e", what, s.max_rel, tol);
    CHECK_MSG(s.cosine >= 1 - 1e-6, "%s: cosine %.9f", what, s.cosine);
    free(rf);
}

static double act_ref(cpu_act act, double y) {
    if (act == CPU_ACT_GELU_TANH) return 0.5 * y * (1 + tanh(sqrt(2 / M_PI) * (y + 0.044715 * y * y * y)));
    if (act == CPU_ACT_GELU_ERF) return 0.5 * y * (1 + erf(y / sqrt(2.0)));
    return y;
}

/* ---- parallel_for ---- */

typedef struct {
    int *hits;
} hit_ctx;

static void count_hits(void *arg, size_t begin, size_t end) {
    hit_ctx *c = arg;
    for (size_t i = begin; i < end; i++) c->hits[i]++;
}

static void test_parallel_for(void) {
    size_t sizes[] = {1, 2, 3, 7, 100, 1001};
    int threads[] = {0, 1, 2, 3, 8};
    int bad = 0;
    for (size_t a = 0; a < sizeof sizes / sizeof *sizes; a++)
        for (size_t b = 0; b < sizeof threads / sizeof *threads; b++)
            for (size_t minw = 1; minw <= 50; minw += 49) {
                int *hits = calloc(sizes[a], sizeof(int));
                hit_ctx c = {hits};
                cpu_parallel_for(threads[b], sizes[a], minw, count_hits, &c);
                for (size_t i = 0; i < sizes[a]; i++) bad += hits[i] != 1;
                free(hits);
            }
    CHECK_EQ_INT(0, bad);
    CHECK(cpu_threads_resolve(0) >= 1);
    CHECK_EQ_INT(3, cpu_threads_resolve(3));
}

/* ---- activations and linear ---- */

static void test_activations(void) {
    const size_t n = 4001;
    float *x = malloc(n * sizeof(float));
    double *ref = malloc(n * sizeof(double));
    for (int a = 1; a <= 2; a++) {
        cpu_act act = (cpu_act)a;
        for (size_t i = 0; i < n; i++) x[i] = (float)(-12.0 + 24.0 * (double)i / (double)(n - 1));
        x[7] = 80.0f;
        x[8] = -80.0f;
        for (size_t i = 0; i < n; i++) ref[i] = act_ref(act, x[i]);
        cpu_activate(x, n, act, 3);
        expect_close(act == CPU_ACT_GELU_TANH ? "gelu_tanh [-12,12] + +-80" : "gelu_erf [-12,12] + +-80", x, ref,
                     n, 1e-6);
        CHECK(x[8] == 0.0f || fabsf(x[8]) < 1e-30f); /* GELU(-80) underflows to (minus) zero, never NaN */
    }
    free(x);
    free(ref);
}

static void test_linear(void) {
    struct { size_t n, k, m; int bias; cpu_act act; } cases[] = {
        {1, 1, 1, 1, CPU_ACT_NONE},   {1, 5, 3, 0, CPU_ACT_NONE},      {7, 33, 19, 1, CPU_ACT_GELU_TANH},
        {64, 70, 45, 1, CPU_ACT_GELU_ERF}, {13, 1536, 72, 1, CPU_ACT_NONE}, {5, 144, 288, 0, CPU_ACT_GELU_TANH},
    };
    for (size_t ci = 0; ci < sizeof cases / sizeof *cases; ci++) {
        size_t n = cases[ci].n, k = cases[ci].k, m = cases[ci].m;
        float *x = rand_outliers(n, k, 1.0), *w = rand_normal(m * k, 0, 0.05), *b = rand_normal(m, 0, 0.3);
        float *y = malloc(n * m * sizeof(float));
        double *ref = malloc(n * m * sizeof(double));
        for (size_t i = 0; i < n; i++)
            for (size_t j = 0; j < m; j++) {
                double acc = cases[ci].bias ? b[j] : 0.0;
                for (size_t l = 0; l < k; l++) acc += (double)x[i * k + l] * w[j * k + l];
                ref[i * m + j] = act_ref(cases[ci].act, acc);
            }
        cpu_linear(x, w, cases[ci].bias ? b : NULL, y, n, k, m, cases[ci].act, 2);
        char what[96];
        snprintf(what, sizeof what, "linear n%zu k%zu m%zu bias%d act%d", n, k, m, cases[ci].bias, cases[ci].act);
        expect_close(what, y, ref, n * m, 1e-5);
        free(x), free(w), free(b), free(y), free(ref);
    }
}

/* ---- LayerNorm ---- */

static void ln_ref(const float *x, const float *g, const float *b, double *y, size_t n, size_t dim, double eps) {
    for (size_t i = 0; i < n; i++) {
        double mean = 0, var = 0;
        for (size_t j = 0; j < dim; j++) mean += x[i * dim + j];
        mean /= (double)dim;
        for (size_t j = 0; j < dim; j++) var += (x[i * dim + j] - mean) * (x[i * dim + j] - mean);
        var /= (double)dim;
        for (size_t j = 0; j < dim; j++) y[i * dim + j] = (x[i * dim + j] - mean) / sqrt(var + eps) * g[j] + b[j];
    }
}

static void test_layernorm(void) {
    struct { size_t n, dim; } cases[] = {{1, 1}, {1, 7}, {7, 144}, {5, 576}, {33, 1152}};
    for (size_t ci = 0; ci < sizeof cases / sizeof *cases; ci++) {
        size_t n = cases[ci].n, dim = cases[ci].dim, nd = n * dim;
        float *x = rand_outliers(n, dim, 1.0), *r = rand_outliers(n, dim, 0.5);
        float *g = rand_normal(dim, 1.0, 0.3), *b = rand_normal(dim, 0.0, 0.3);
        for (size_t i = 0; i < nd; i++) x[i] += 3.0f; /* a mean far from zero tests the two-pass variance */
        float *y = malloc(nd * sizeof(float)), *y2 = malloc(nd * sizeof(float)), *x2 = malloc(nd * sizeof(float));
        double *ref = malloc(nd * sizeof(double));
        char what[96];

        ln_ref(x, g, b, ref, n, dim, 1e-6);
        cpu_layernorm(x, g, b, y, n, dim, 1e-6, 2);
        snprintf(what, sizeof what, "layernorm n%zu dim%zu", n, dim);
        expect_close(what, y, ref, nd, 1e-5);
        if (dim == 1) for (size_t i = 0; i < n; i++) CHECK(y[i] == b[0]); /* zero variance: y = beta exactly */

        memcpy(x2, x, nd * sizeof(float));
        cpu_layernorm(x2, g, b, x2, n, dim, 1e-6, 3); /* in place */
        CHECK_MSG(memcmp(x2, y, nd * sizeof(float)) == 0, "%s: in-place result differs", what);

        /* residual + LayerNorm: x2 = x + r, y2 = LN(x2); bitwise equal to the two separate ops */
        memcpy(x2, x, nd * sizeof(float));
        cpu_add_layernorm(x2, r, g, b, y2, n, dim, 1e-6, 2);
        float *x3 = malloc(nd * sizeof(float));
        memcpy(x3, x, nd * sizeof(float));
        cpu_add(x3, r, nd, 1);
        cpu_layernorm(x3, g, b, y, n, dim, 1e-6, 1);
        CHECK_MSG(memcmp(x2, x3, nd * sizeof(float)) == 0 && memcmp(y2, y, nd * sizeof(float)) == 0,
                  "%s: add_layernorm differs from add + layernorm", what);
        double *xr = malloc(nd * sizeof(double));
        for (size_t i = 0; i < nd; i++) xr[i] = (double)x[i] + r[i];
        snprintf(what, sizeof what, "add (residual) n%zu dim%zu", n, dim);
        expect_close(what, x2, xr, nd, 1e-6);
        ln_ref(x2, g, b, ref, n, dim, 1e-6);
        snprintf(what, sizeof what, "add_layernorm n%zu dim%zu", n, dim);
        expect_close(what, y2, ref, nd, 1e-5);
        free(x), free(r), free(g), free(b), free(y), free(y2), free(x2), free(x3), free(ref), free(xr);
    }
}

/* ---- geometry ---- */

static void test_geometry(void) {
    /* merge order built from MODEL.md 2.7's loops, compared with cpu_token_pos's index arithmetic */
    int bad = 0;
    int dims[][2] = {{2, 2}, {6, 10}, {12, 8}, {4, 4}, {28, 28}};
    for (size_t di = 0; di < sizeof dims / sizeof *dims; di++) {
        int h = dims[di][0], w = dims[di][1], m = 2, q = 0;
        for (int bh = 0; bh < h / m; bh++)
            for (int bw = 0; bw < w / m; bw++)
                for (int mh = 0; mh < m; mh++)
                    for (int mw = 0; mw < m; mw++, q++) {
                        int row, col;
                        cpu_token_pos(q, w, m, &row, &col);
                        bad += row != bh * m + mh || col != bw * m + mw;
                    }
    }
    CHECK_EQ_INT(0, bad);
    vitd_grid grids[] = {{1, 6, 10}, {2, 4, 4}, {1, 12, 8}};
    int32_t cu[5];
    CHECK_EQ_INT(4, cpu_cu_seqlens(grids, 3, cu));
    int32_t want[5] = {0, 60, 76, 92, 188};
    CHECK(memcmp(cu, want, sizeof want) == 0);
    CHECK_EQ_INT(188, cpu_grid_tokens(grids, 3));
}

/* ---- position embedding ---- */

/* Double bilinear of one table channel at (src_r, src_c), align_corners taps clamped to the table. */
static double bilinear(const float *table, int side, int d, int j, double sr, double sc) {
    int r0 = (int)floor(sr), c0 = (int)floor(sc);
    int r1 = r0 + 1 < side ? r0 + 1 : side - 1, c1 = c0 + 1 < side ? c0 + 1 : side - 1;
    double fr = sr - r0, fc = sc - c0;
    return (1 - fr) * (1 - fc) * table[(r0 * side + c0) * d + j] + (1 - fr) * fc * table[(r0 * side + c1) * d + j] +
           fr * (1 - fc) * table[(r1 * side + c0) * d + j] + fr * fc * table[(r1 * side + c1) * d + j];
}

static void test_pos_embed(void) {
    struct { int side, d, m; vitd_grid g[3]; int n; } cases[] = {
        {8, 5, 2, {{1, 6, 10}, {2, 4, 4}, {1, 12, 8}}, 3},
        {48, 144, 2, {{1, 28, 28}, {2, 2, 2}, {1, 96, 64}}, 3},
        {48, 7, 1, {{1, 1, 5}, {1, 3, 1}}, 2},          /* h or w = 1: src = 0 (denominator clamped to 1) */
    };
    for (size_t ci = 0; ci < sizeof cases / sizeof *cases; ci++) {
        int side = cases[ci].side, d = cases[ci].d, m = cases[ci].m;
        size_t N = cpu_grid_tokens(cases[ci].g, cases[ci].n);
        float *table = rand_outliers((size_t)side * side, (size_t)d, 1.0);
        float *out = malloc(N * d * sizeof(float));
        double *ref = malloc(N * d * sizeof(double)), *ref64 = malloc(N * d * sizeof(double));
        size_t n = 0;
        for (int i = 0; i < cases[ci].n; i++) {
            vitd_grid g = cases[ci].g[i];
            for (int f = 0; f < g.t; f++)
                for (int bh = 0; bh < g.h / m; bh++)
                    for (int bw = 0; bw < g.w / m; bw++)
                        for (int mh = 0; mh < m; mh++)
                            for (int mw = 0; mw < m; mw++, n++) {
                                int row = bh * m + mh, col = bw * m + mw;
                                /* coordinates as MODEL.md 3.2 defines them: float32, one rounded division */
                                float sr = (float)(row * (side - 1)) / (float)(g.h > 1 ? g.h - 1 : 1);
                                float sc = (float)(col * (side - 1)) / (float)(g.w > 1 ? g.w - 1 : 1);
                                double dr = (double)row * (side - 1) / (g.h > 1 ? g.h - 1 : 1);
                                double dc = (double)col * (side - 1) / (g.w > 1 ? g.w - 1 : 1);
                                for (int j = 0; j < d; j++) {
                                    ref[n * d + j] = bilinear(table, side, d, j, sr, sc);
                                    ref64[n * d + j] = bilinear(table, side, d, j, dr, dc);
                                }
                            }
        }
        cpu_pos_embed(table, side, d, cases[ci].g, cases[ci].n, m, out, 2);
        char what[96];
        snprintf(what, sizeof what, "pos_embed side%d d%d case%zu", side, d, ci);
        expect_close(what, out, ref, N * d, 1e-6);
        /* against exact (double) coordinates only the float32 rounding of src differs: ~ulp(47) x |table step| */
        snprintf(what, sizeof what, "pos_embed vs double coords case%zu", ci);
        expect_close(what, out, ref64, N * d, 2e-5);
        free(table), free(out), free(ref), free(ref64);
    }
    /* a grid of the table's own size samples the table exactly: out = table rows in merge order, bit for bit */
    {
        int side = 8, d = 9;
        vitd_grid g = {1, 8, 8};
        float *table = rand_outliers(64, (size_t)d, 1.0), *out = malloc(64 * d * sizeof(float));
        cpu_pos_embed(table, side, d, &g, 1, 2, out, 1);
        int bad = 0;
        for (int q = 0; q < 64; q++) {
            int row, col;
            cpu_token_pos(q, 8, 2, &row, &col);
            bad += memcmp(out + q * d, table + (row * side + col) * d, d * sizeof(float)) != 0;
        }
        CHECK_EQ_INT(0, bad);
        free(table), free(out);
    }
}

/* ---- rotary ---- */

static void test_rope(void) {
    /* inv_freq within one float32 ulp of 1 / 10000^e, e = float32(2i) / float32(hd/2) rounded to float32 as torch
     * does (that rounding alone moves hd 72's values by up to ~5e-7 from the real-exponent ones) */
    for (int hd = 16; hd <= 128; hd += 56) {
        float inv[32];
        cpu_rope_inv_freq(hd, 10000.0, inv);
        int bad = 0;
        for (int i = 0; i < hd / 4; i++) {
            float e = (float)(2 * i) / (float)(hd / 2);
            double exact = 1.0 / pow(10000.0, (double)e);
            bad += fabs(inv[i] - exact) > exact * 1.2e-7;
        }
        CHECK_MSG(bad == 0, "inv_freq hd %d: %d values off by more than 1 ulp", hd, bad);
    }
    vitd_grid grids[] = {{1, 6, 10}, {2, 4, 4}, {1, 96, 64}};
    const int ng = 3, m = 2;
    size_t N = cpu_grid_tokens(grids, ng);
    int hds[] = {16, 72};
    for (int hi = 0; hi < 2; hi++) {
        int hd = hds[hi], q4 = hd / 4, half = hd / 2, H = 3;
        size_t d = (size_t)H * hd;
        float *co = malloc(N * hd * sizeof(float)), *si = malloc(N * hd * sizeof(float)), inv[32];
        double *rc = malloc(N * hd * sizeof(double)), *rs = malloc(N * hd * sizeof(double));
        double *ec = malloc(N * hd * sizeof(double)), *es = malloc(N * hd * sizeof(double));
        cpu_rope_inv_freq(hd, 10000.0, inv);
        size_t n = 0;
        for (int i = 0; i < ng; i++)
            for (int f = 0; f < grids[i].t; f++)
                for (int bh = 0; bh < grids[i].h / m; bh++)
                    for (int bw = 0; bw < grids[i].w / m; bw++)
                        for (int mh = 0; mh < m; mh++)
                            for (int mw = 0; mw < m; mw++, n++) {
                                int row = bh * m + mh, col = bw * m + mw;
                                for (int j = 0; j < hd; j++) {
                                    int jj = j % half, fi = jj % q4, pos = jj < q4 ? row : col;
                                    float ang = (float)pos * inv[fi];  /* MODEL.md 3.3: float32 angle */
                                    double exact = pos / pow(10000.0, (2.0 * fi) / half);
                                    rc[n * hd + j] = cos((double)ang), rs[n * hd + j] = sin((double)ang);
                                    ec[n * hd + j] = cos(exact), es[n * hd + j] = sin(exact);
                                }
                            }
        cpu_rope_cos_sin(grids, ng, m, hd, 10000.0, co, si, 2);
        char what[96];
        snprintf(what, sizeof what, "rope cos hd%d", hd);
        expect_close(what, co, rc, N * hd, 1e-7);
        snprintf(what, sizeof what, "rope sin hd%d", hd);
        expect_close(what, si, rs, N * hd, 1e-7);
        /* against exact angles: float32 inv_freq and angle rounding, |err| <= ~pos * 1e-7 for rows up to 95 */
        snprintf(what, sizeof what, "rope cos hd%d vs exact angles", hd);
        expect_close(what, co, ec, N * hd, 2e-5);

        /* apply to the q third of a [N, 3d] qkv buffer; k and v thirds must stay untouched */
        float *qkv = rand_outliers(N, 3 * d, 1.0), *orig = malloc(N * 3 * d * sizeof(float));
        memcpy(orig, qkv, N * 3 * d * sizeof(float));
        double *ref = malloc(N * d * sizeof(double));
        for (size_t t = 0; t < N; t++)
            for (int h = 0; h < H; h++)
                for (int j = 0; j < hd; j++) {
                    const float *v = orig + t * 3 * d + (size_t)h * hd;
                    double rot = j < half ? -(double)v[j + half] : (double)v[j - half];
                    ref[t * d + (size_t)h * hd + j] = v[j] * rc[t * hd + j] + rot * rs[t * hd + j];
                }
        cpu_rope_apply(qkv, 3 * d, N, H, hd, co, si, 3);
        float *qo = malloc(N * d * sizeof(float));
        int untouched = 1;
        for (size_t t = 0; t < N; t++) {
            memcpy(qo + t * d, qkv + t * 3 * d, d * sizeof(float));
            untouched &= memcmp(qkv + t * 3 * d + d, orig + t * 3 * d + d, 2 * d * sizeof(float)) == 0;
        }
        snprintf(what, sizeof what, "rope apply hd%d (q in qkv)", hd);
        expect_close(what, qo, ref, N * d, 1e-6);
        CHECK_MSG(untouched, "rope apply hd%d wrote outside q", hd);
        free(co), free(si), free(rc), free(rs), free(ec), free(es), free(qkv), free(orig), free(ref), free(qo);
    }
}

/* ---- attention ---- */

static void attention_ref(const float *qkv, size_t d, const int32_t *cu, int n_seg, int H, int hd, double *out) {
    double scale = 1.0 / sqrt((double)hd);
    for (int s = 0; s < n_seg; s++) {
        int s0 = cu[s], L = cu[s + 1] - cu[s];
        double *p = malloc((size_t)L * sizeof(double) + 8);
        for (int h = 0; h < H; h++)
            for (int a = 0; a < L; a++) {
                const float *q = qkv + (size_t)(s0 + a) * 3 * d + (size_t)h * hd;
                double mx = -INFINITY, sum = 0;
                for (int b = 0; b < L; b++) {
                    const float *k = qkv + (size_t)(s0 + b) * 3 * d + d + (size_t)h * hd;
                    double acc = 0;
                    for (int j = 0; j < hd; j++) acc += (double)q[j] * k[j];
                    p[b] = acc * scale;
                    mx = fmax(mx, p[b]);
                }
                for (int b = 0; b < L; b++) sum += (p[b] = exp(p[b] - mx));
                for (int j = 0; j < hd; j++) {
                    double acc = 0;
                    for (int b = 0; b < L; b++)
                        acc += p[b] * qkv[(size_t)(s0 + b) * 3 * d + 2 * d + (size_t)h * hd + j];
                    out[(size_t)(s0 + a) * d + (size_t)h * hd + j] = acc / sum;
                }
            }
        free(p);
    }
}

static void test_attention(void) {
    struct { int H, hd; int n_seg; int32_t cu[6]; } cases[] = {
        {3, 16, 4, {0, 1, 8, 72, 202}},      /* segments of 1, 7, 64, 130 tokens */
        {2, 72, 3, {0, 60, 76, 188}},        /* the real head_dim; a batch of grids [1,6,10], [1,4,4], [1,12,8] */
        {1, 16, 2, {0, 3, 2103}},            /* 2100 tokens: the automatic block (4M floats) splits query rows */
    };
    for (size_t ci = 0; ci < sizeof cases / sizeof *cases; ci++) {
        int H = cases[ci].H, hd = cases[ci].hd, ns = cases[ci].n_seg;
        size_t d = (size_t)H * hd, N = (size_t)cases[ci].cu[ns];
        float *qkv = rand_outliers(N, 3 * d, 0.5);
        float *out = malloc(N * d * sizeof(float)), *out2 = malloc(N * d * sizeof(float));
        double *ref = malloc(N * d * sizeof(double));
        attention_ref(qkv, d, cases[ci].cu, ns, H, hd, ref);
        vitd_err err = {0};
        float scale = (float)(1.0 / sqrt((double)hd));
        char what[96];
        int blocks[] = {0, 5, 64};
        for (int bi = 0; bi < 3; bi++) {
            memset(out, 0xff, N * d * sizeof(float)); /* NaN canary: every output must be written */
            CHECK_OK(cpu_attention(qkv, qkv + d, qkv + 2 * d, 3 * d, out, d, cases[ci].cu, ns, H, hd, scale,
                                   blocks[bi], 2, &err), &err);
            snprintf(what, sizeof what, "attention H%d hd%d N%zu block_rows %d", H, hd, N, blocks[bi]);
            expect_close(what, out, ref, N * d, 1e-5);
        }
        /* the thread count only splits softmax rows: results are bitwise independent of it */
        CHECK_OK(cpu_attention(qkv, qkv + d, qkv + 2 * d, 3 * d, out, d, cases[ci].cu, ns, H, hd, scale, 0, 1, &err),
                 &err);
        CHECK_OK(cpu_attention(qkv, qkv + d, qkv + 2 * d, 3 * d, out2, d, cases[ci].cu, ns, H, hd, scale, 0, 4, &err),
                 &err);
        CHECK_MSG(memcmp(out, out2, N * d * sizeof(float)) == 0, "attention case %zu depends on threads", ci);
        free(qkv), free(out), free(out2), free(ref);
    }
    /* a decreasing cu_seqlens is refused, not read out of bounds */
    int32_t cu[3] = {0, 5, 3};
    float buf[5 * 3 * 4] = {0}, o[5 * 4];
    vitd_err err = {0};
    CHECK_EQ_INT(VITD_E_INVALID_ARG, cpu_attention(buf, buf + 4, buf + 8, 12, o, 4, cu, 2, 1, 4, 0.5f, 0, 1, &err));
    CHECK_STR_CONTAINS(err.msg, "segment 1");
}

/* The FP8 linear twin (issue 14): scales, quantise-and-back in place, per-tensor and per-channel weights. */
static void test_fp8_linear(void) {
    const size_t rows = 37, cols = 300, n = rows * cols;
    float *x = rand_outliers(rows, cols, 3.0);
    for (size_t r = 0; r < rows; r++) /* output channels 1, 2^-4, 2^-8, 2^-12 apart (exact scalings) */
        for (size_t c = 0; c < cols; c++) x[r * cols + c] = ldexpf(x[r * cols + c], -4 * (int)(r % 4));
    float *y = malloc(n * sizeof(float)), *w = malloc(n * sizeof(float)), *w1 = malloc(n * sizeof(float));
    double amax = 0;
    for (size_t i = 0; i < n; i++)
        if (fabs(x[i]) > amax) amax = fabs(x[i]);
    const float ds = cpu_fp8_descale(x, n);
    CHECK_MSG(ds == (float)amax / 448.0f, "descale %g, amax %g", ds, amax);
    float zeros[4] = {0};
    CHECK(cpu_fp8_descale(zeros, 4) == 1.0f);
    memcpy(y, x, n * sizeof(float));
    cpu_fp8_fake_quant(y, n, ds, 4);
    /* every value is the E4M3 grid point nearest x/ds (ties to even), times ds: within half an ulp (1/16 relative
     * in the normal range), the amax exactly on 448 * ds, signs kept, and the grid's own points stay put */
    size_t changed = 0, off_grid = 0;
    for (size_t i = 0; i < n; i++) {
        if (y[i] != cpu_e4m3_to_f32(cpu_e4m3_from_f32(x[i] * (1.0f / ds))) * ds) off_grid++;
        if (y[i] != x[i]) changed++;
        const double err = fabs((double)y[i] - x[i]), a = fabs(x[i]) / ds;
        const double bound = a >= 0.015625 ? a / 16 * ds : 1.0 / 1024 * ds; /* normal: half of 1/8; else 2^-10 */
        if (err > bound * 1.0001 || (x[i] > 0 && y[i] < 0) || (x[i] < 0 && y[i] > 0)) {
            CHECK_MSG(0, "fake quant %zu: %g -> %g (error %g, bound %g)", i, x[i], y[i], err, bound);
            break;
        }
    }
    CHECK_MSG(off_grid == 0, "%zu values differ from the documented formula", off_grid);
    CHECK_MSG(changed > n / 2, "quantisation changed only %zu of %zu values", changed, n);
    float again[64];
    memcpy(again, y, sizeof again);
    cpu_fp8_fake_quant(again, 64, ds, 1);
    CHECK_MSG(memcmp(again, y, sizeof again) == 0, "quantising grid values again moved them");
    /* threads only split the work */
    memcpy(w, x, n * sizeof(float));
    cpu_fp8_fake_quant(w, n, ds, 1);
    CHECK(memcmp(w, y, n * sizeof(float)) == 0);
    /* per tensor = fake_quant with the tensor's descale; per channel: each row on its own scale (its amax kept) */
    memcpy(w, x, n * sizeof(float));
    cpu_fp8_fake_quant_weight(w, rows, cols, 0, 3);
    CHECK(memcmp(w, y, n * sizeof(float)) == 0);
    memcpy(w1, x, n * sizeof(float));
    cpu_fp8_fake_quant_weight(w1, rows, cols, 1, 3);
    double e_tensor = 0, e_row = 0; /* sums over rows of the row's relative squared error */
    for (size_t r = 0; r < rows; r++) {
        float ra = 0, qa = 0;
        double et = 0, er = 0, xx = 0;
        for (size_t c = 0; c < cols; c++) {
            const size_t i = r * cols + c;
            if (fabsf(x[i]) > ra) ra = fabsf(x[i]);
            if (fabsf(w1[i]) > qa) qa = fabsf(w1[i]);
            et += ((double)w[i] - x[i]) * ((double)w[i] - x[i]);
            er += ((double)w1[i] - x[i]) * ((double)w1[i] - x[i]);
            xx += (double)x[i] * x[i];
        }
        e_tensor += et / xx;
        e_row += er / xx;
        const float rd = ra / 448.0f;
        CHECK_MSG(qa == cpu_e4m3_to_f32(cpu_e4m3_from_f32(ra * (1.0f / rd))) * rd, "row %zu amax %g -> %g", r, ra, qa);
    }
    /* the rows 2^-12 down fall to E4M3's subnormals on the tensor's scale, not on their own */
    CHECK_MSG(e_row < e_tensor / 4, "per-channel error %g not well below per-tensor %g", e_row, e_tensor);
    printf("fp8 linear twin: summed relative squared error per row: per-tensor %.3e, per-channel %.3e (%zux%zu)\n",
           e_tensor, e_row, rows, cols);
    free(x), free(y), free(w), free(w1);
}

int main(void) {
    test_parallel_for();
    test_activations();
    test_linear();
    test_layernorm();
    test_geometry();
    test_pos_embed();
    test_rope();
    test_attention();
    test_fp8_linear();
    return check_done("test_cpu_ops");
}
