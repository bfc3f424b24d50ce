/* labels: unit */
/* test_cpu_forward.c — the CPU reference forward pass (encoder/cpu/cpu_forward.c) against an independent, naive
 * double-precision implementation of MODEL.md section 3 written here (plain loops, no cpu_ops.h), on models built
 * from random weights through cpu_model_create_from():
 *   - the config the shared reference checked against HF (d 64, 4 heads of 16, depth 3, I 96, D_out 48, Npos 64,
 *     deepstack [0, 2]; grids [1,6,10], [2,4,4], [1,12,8]): embeddings, each deepstack, last_hidden;
 *   - the real head_dim 72 (hidden 144, 2 heads) with the real 48x48 position table;
 *   - batching: the mixed batch equals each image run alone;
 *   - the checkpoint wrapper cpu_model_create() on a small safetensors checkpoint equals the callback model;
 *   - errors: bad grids, bad configs, a failing weight source.
 * `test_cpu_forward --bench` also times a 448x448 image on the tiny preset and on the 8B shape. */
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "check.h"
#include "checkpoint.h"
#include "cpu_forward.h"
#include "cpu_ops.h"
#include "safetensors.h"
#include "util.h"

/* ---- random weights, kept by name so the naive model reads the same values ---- */

typedef struct {
    char name[80];
    size_t numel;
    float *data;
} stored_tensor;

typedef struct {
    stored_tensor t[512];
    int n;
    unsigned long long rng;
    const char *refuse; /* a name the source fails on, or NULL */
} weight_store;

/* cpu_weight_fn: norm weights ~ 1 + 0.3 N(0,1), other norm params 0.3 N, the position table 0.5 N (so it matters
 * against the patch embedding), everything else 0.05 N (the recipe of the shared reference's HF check). */
static vitd_status store_get(void *ctx, const char *name, float *out, size_t numel, vitd_err *err) {
    weight_store *s = ctx;
    if (s->refuse && strcmp(name, s->refuse) == 0)
        return vitd_fail(err, VITD_E_MODEL, "tensor %s: refused by the test source", name);
    VITD_ASSERT(s->n < 512);
    stored_tensor *t = &s->t[s->n++];
    snprintf(t->name, sizeof t->name, "%s", name);
    t->numel = numel;
    t->data = malloc(numel * sizeof(float));
    size_t len = strlen(name);
    int is_norm = strstr(name, "norm") != NULL;
    int norm_weight = is_norm && len > 7 && strcmp(name + len - 7, ".weight") == 0;
    double scale = is_norm ? 0.3 : strcmp(name, "pos_embed.weight") == 0 ? 0.5 : 0.05;
    for (size_t i = 0; i < numel; i++)
        t->data[i] = (float)((norm_weight ? 1.0 : 0.0) + scale * check_rng_normal(&s->rng));
    memcpy(out, t->data, numel * sizeof(float));
    return VITD_OK;
}

static void store_release(weight_store *s) {
    for (int i = 0; i < s->n; i++) free(s->t[i].data);
    s->n = 0;
}

/* The stored tensor of a printf-formed name; aborts the test when the model never asked for it. */
static const stored_tensor *store_find(const weight_store *s, const char *fmt, ...) {
    char name[80];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    for (int i = 0; i < s->n; i++)
        if (strcmp(s->t[i].name, name) == 0) return &s->t[i];
    fprintf(stderr, "FAIL: the model never loaded %s\n", name);
    exit(1);
}
#define W(...) (store_find(ws, __VA_ARGS__)->data)

/* ---- naive double implementation of MODEL.md section 3 ---- */

static void nv_linear(const double *x, size_t n, size_t k, const float *w, const float *b, size_t m, double *y) {
    for (size_t i = 0; i < n; i++)
        for (size_t o = 0; o < m; o++) {
            double acc = b[o];
            for (size_t j = 0; j < k; j++) acc += x[i * k + j] * (double)w[o * k + j];
            y[i * m + o] = acc;
        }
}

static void nv_layernorm(const double *x, size_t n, size_t dim, const float *g, const float *b, double eps,
                         double *y) {
    for (size_t i = 0; i < n; i++) {
        const double *r = x + i * dim;
        double mean = 0, var = 0;
        for (size_t j = 0; j < dim; j++) mean += r[j];
        mean /= (double)dim;
        for (size_t j = 0; j < dim; j++) var += (r[j] - mean) * (r[j] - mean);
        var /= (double)dim;
        for (size_t j = 0; j < dim; j++) y[i * dim + j] = (r[j] - mean) / sqrt(var + eps) * g[j] + b[j];
    }
}

static double nv_gelu_tanh(double y) { return 0.5 * y * (1 + tanh(sqrt(2 / M_PI) * (y + 0.044715 * y * y * y))); }
static double nv_gelu_erf(double y) { return 0.5 * y * (1 + erf(y / sqrt(2.0))); }

/* Merger: post-shuffle (LN over 4d of the grouped rows) or pre-shuffle (LN over d per token), fc1, erf-GELU,
 * fc2. x [N, d] -> out [N/4, Dout]. */
static void nv_merger(const weight_store *ws, const vitd_vision_config *c, const char *base, int post,
                      const double *x, size_t N, double *out) {
    size_t d = (size_t)c->hidden_size, g = (size_t)c->spatial_merge_size * c->spatial_merge_size, Nm = N / g;
    double *y = malloc(N * d * sizeof(double)), *z = malloc(N * d * sizeof(double));
    if (post) nv_layernorm(x, Nm, g * d, W("%s.norm.weight", base), W("%s.norm.bias", base), c->ln_eps, y);
    else nv_layernorm(x, N, d, W("%s.norm.weight", base), W("%s.norm.bias", base), c->ln_eps, y);
    nv_linear(y, Nm, g * d, W("%s.linear_fc1.weight", base), W("%s.linear_fc1.bias", base), g * d, z);
    for (size_t i = 0; i < Nm * g * d; i++) z[i] = nv_gelu_erf(z[i]);
    nv_linear(z, Nm, g * d, W("%s.linear_fc2.weight", base), W("%s.linear_fc2.bias", base),
              (size_t)c->out_hidden_size, out);
    free(y), free(z);
}

/* The whole tower in double. pv [N, C*T*P*P]; emb [N/4, Dout]; ds [n_ds][N/4][Dout]; last [N, d]. */
static void nv_forward(const weight_store *ws, const vitd_vision_config *c, const vitd_grid *grids, int n_img,
                       const float *pv, double *emb, double *ds, double *last) {
    const size_t d = (size_t)c->hidden_size, H = (size_t)c->num_heads, hd = d / H, I = (size_t)c->intermediate_size;
    const int m = c->spatial_merge_size, S = (int)lround(sqrt((double)c->num_position_embeddings));
    const size_t K = (size_t)c->in_channels * c->temporal_patch_size * c->patch_size * c->patch_size;
    size_t N = 0;
    for (int i = 0; i < n_img; i++) N += (size_t)grids[i].t * grids[i].h * grids[i].w;
    const size_t Nm = N / (size_t)(m * m), Dout = (size_t)c->out_hidden_size;
    double *x = malloc(N * d * sizeof(double)), *hbuf = malloc(N * d * sizeof(double));
    double *qkv = malloc(N * 3 * d * sizeof(double)), *o = malloc(N * d * sizeof(double));
    double *mlp = malloc(N * I * sizeof(double)), *tmp = malloc(N * d * sizeof(double));
    double *cs = malloc(N * hd * sizeof(double)), *sn = malloc(N * hd * sizeof(double));
    int *seg_start = malloc((N + 1) * sizeof(int)), *seg_len = malloc((N + 1) * sizeof(int));
    double *xin = malloc(N * K * sizeof(double));
    for (size_t i = 0; i < N * K; i++) xin[i] = pv[i];

    /* 3.1 patch embedding */
    nv_linear(xin, N, K, W("patch_embed.proj.weight"), W("patch_embed.proj.bias"), d, x);
    /* 3.2 position embedding and 3.3 rotary, token by token in merge order (the loops of 2.7) */
    const float *E = W("pos_embed.weight");
    float inv[512];
    for (size_t i = 0; i < hd / 4; i++) /* float32 as torch: arange(0, hd/2, 2) / (hd/2), theta ** e, 1 / p */
        inv[i] = 1.0f / (float)pow(c->rope_theta, (double)((float)(2 * i) / (float)(hd / 2)));
    size_t n = 0;
    for (int im = 0; im < n_img; im++) {
        const vitd_grid g = grids[im];
        for (int f = 0; f < g.t; f++) {
            size_t start = n;
            for (int bh = 0; bh < g.h / m; bh++)
                for (int bw = 0; bw < g.w / m; bw++)
                    for (int mh = 0; mh < m; mh++)
                        for (int mw = 0; mw < m; mw++, n++) {
                            int row = bh * m + mh, col = bw * m + mw;
                            /* align_corners source coordinates: float32, one rounded division (MODEL.md 3.2) */
                            float sr = (float)(row * (S - 1)) / (float)(g.h > 1 ? g.h - 1 : 1);
                            float sc = (float)(col * (S - 1)) / (float)(g.w > 1 ? g.w - 1 : 1);
                            int r0 = (int)floorf(sr), c0 = (int)floorf(sc);
                            int r1 = r0 + 1 < S ? r0 + 1 : S - 1, c1 = c0 + 1 < S ? c0 + 1 : S - 1;
                            double fr = sr - r0, fc = sc - c0;
                            for (size_t j = 0; j < d; j++)
                                x[n * d + j] += (1 - fr) * (1 - fc) * E[(r0 * S + c0) * d + j] +
                                                (1 - fr) * fc * E[(r0 * S + c1) * d + j] +
                                                fr * (1 - fc) * E[(r1 * S + c0) * d + j] +
                                                fr * fc * E[(r1 * S + c1) * d + j];
                            for (size_t j = 0; j < hd; j++) {
                                size_t jj = j % (hd / 2), fi = jj % (hd / 4);
                                float ang = (float)(jj < hd / 4 ? row : col) * inv[fi];
                                cs[n * hd + j] = cos((double)ang);
                                sn[n * hd + j] = sin((double)ang);
                            }
                            seg_start[n] = (int)start;
                            seg_len[n] = g.h * g.w;
                        }
        }
    }
    /* 3.4 blocks */
    const double scale = 1.0 / sqrt((double)hd);
    double *p = malloc(N * sizeof(double));
    int ds_done = 0;
    for (int b = 0; b < c->depth; b++) {
        nv_layernorm(x, N, d, W("blocks.%d.norm1.weight", b), W("blocks.%d.norm1.bias", b), c->ln_eps, hbuf);
        nv_linear(hbuf, N, d, W("blocks.%d.attn.qkv.weight", b), W("blocks.%d.attn.qkv.bias", b), 3 * d, qkv);
        for (size_t t = 0; t < N; t++) /* rotate_half on q (part 0) and k (part 1) */
            for (int part = 0; part < 2; part++)
                for (size_t h = 0; h < H; h++) {
                    double *v = qkv + t * 3 * d + (size_t)part * d + h * hd, r[2048];
                    for (size_t j = 0; j < hd; j++) {
                        double rot = j < hd / 2 ? -v[j + hd / 2] : v[j - hd / 2];
                        r[j] = v[j] * cs[t * hd + j] + rot * sn[t * hd + j];
                    }
                    memcpy(v, r, hd * sizeof(double));
                }
        for (size_t a = 0; a < N; a++) /* attention within the token's frame */
            for (size_t h = 0; h < H; h++) {
                size_t s0 = (size_t)seg_start[a], L = (size_t)seg_len[a];
                const double *q = qkv + a * 3 * d + h * hd;
                double mx = -INFINITY, sum = 0;
                for (size_t bb = 0; bb < L; bb++) {
                    const double *k = qkv + (s0 + bb) * 3 * d + d + h * hd;
                    double acc = 0;
                    for (size_t j = 0; j < hd; j++) acc += q[j] * k[j];
                    p[bb] = acc * scale;
                    mx = fmax(mx, p[bb]);
                }
                for (size_t bb = 0; bb < L; bb++) sum += (p[bb] = exp(p[bb] - mx));
                for (size_t j = 0; j < hd; j++) {
                    double acc = 0;
                    for (size_t bb = 0; bb < L; bb++) acc += p[bb] / sum * qkv[(s0 + bb) * 3 * d + 2 * d + h * hd + j];
                    o[a * d + h * hd + j] = acc;
                }
            }
        nv_linear(o, N, d, W("blocks.%d.attn.proj.weight", b), W("blocks.%d.attn.proj.bias", b), d, tmp);
        for (size_t i = 0; i < N * d; i++) x[i] += tmp[i];
        nv_layernorm(x, N, d, W("blocks.%d.norm2.weight", b), W("blocks.%d.norm2.bias", b), c->ln_eps, hbuf);
        nv_linear(hbuf, N, d, W("blocks.%d.mlp.linear_fc1.weight", b), W("blocks.%d.mlp.linear_fc1.bias", b), I, mlp);
        for (size_t i = 0; i < N * I; i++) mlp[i] = nv_gelu_tanh(mlp[i]);
        nv_linear(mlp, N, I, W("blocks.%d.mlp.linear_fc2.weight", b), W("blocks.%d.mlp.linear_fc2.bias", b), d, tmp);
        for (size_t i = 0; i < N * d; i++) x[i] += tmp[i];
        /* 3.5: the j-th listed block feeds deepstack merger j */
        for (int j = 0; j < c->n_deepstack; j++)
            if (c->deepstack_indexes[j] == b) {
                char base[64];
                snprintf(base, sizeof base, "deepstack_merger_list.%d", j);
                nv_merger(ws, c, base, 1, x, N, ds + (size_t)j * Nm * Dout);
                ds_done++;
            }
    }
    VITD_ASSERT(ds_done == c->n_deepstack);
    memcpy(last, x, N * d * sizeof(double));
    nv_merger(ws, c, "merger", 0, x, N, emb); /* 3.6 */
    free(x), free(hbuf), free(qkv), free(o), free(mlp), free(tmp), free(cs), free(sn), free(seg_start);
    free(seg_len), free(xin), free(p);
}

/* ---- comparisons ---- */

/* got vs the double reference: max_rel (max|diff| / max|ref|) <= 1e-5, cosine >= 0.999999, no NaN. */
static void expect_ref(const char *what, const float *got, const double *ref, size_t n) {
    float *rf = malloc(n * sizeof(float));
    double mx = 0, max_abs = 0;
    for (size_t i = 0; i < n; i++) {
        rf[i] = (float)ref[i];
        mx = fmax(mx, fabs(ref[i]));
        max_abs = fmax(max_abs, fabs((double)got[i] - ref[i]));
    }
    cmp_stats s = cmp_f32(got, rf, n, 1e-5 * mx, 1e-5);
    s.max_abs = max_abs;
    s.max_rel = max_abs / mx;
    cmp_print(what, s);
    CHECK_MSG(mx > 0, "%s: reference is all zeros", what);
    CHECK_MSG(s.n_nan == 0, "%s: %zu NaN/Inf", what, s.n_nan);
    CHECK_MSG(s.max_rel <= 1e-5, "%s: max_rel %.3e > 1e-5", what, s.max_rel);
    CHECK_MSG(s.cosine >= 0.999999, "%s: cosine %.9f < 0.999999", what, s.cosine);
    free(rf);
}

static float *rand_pixels(size_t n, unsigned long long seed) {
    float *a = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) a[i] = (float)check_rng_normal(&seed);
    return a;
}

static vitd_vision_config small_config(void) {
    vitd_vision_config c;
    memset(&c, 0, sizeof c);
    c.depth = 3, c.hidden_size = 64, c.intermediate_size = 96, c.num_heads = 4, c.out_hidden_size = 48;
    c.patch_size = 16, c.temporal_patch_size = 2, c.spatial_merge_size = 2, c.in_channels = 3;
    c.num_position_embeddings = 64, c.n_deepstack = 2, c.deepstack_indexes[0] = 0, c.deepstack_indexes[1] = 2;
    c.rope_theta = 10000.0, c.ln_eps = 1e-6;
    return c;
}

static size_t grid_tokens(const vitd_grid *g, int n) {
    size_t N = 0;
    for (int i = 0; i < n; i++) N += (size_t)g[i].t * g[i].h * g[i].w;
    return N;
}

typedef struct {
    float *emb, *ds, *last;
} outputs;

static void outputs_free(outputs *o) { free(o->emb), free(o->ds), free(o->last); }

/* Runs cpu_forward on grids, allocating the outputs. */
static vitd_status run(const cpu_model *cm, const vitd_grid *grids, int n, const float *pv, int with_ds, outputs *o,
                       vitd_err *err) {
    const vitd_vision_config *c = cpu_model_config(cm);
    size_t N = grid_tokens(grids, n), Nm = N / 4;
    o->emb = malloc(Nm * c->out_hidden_size * sizeof(float));
    o->ds = malloc((c->n_deepstack ? c->n_deepstack : 1) * Nm * c->out_hidden_size * sizeof(float));
    o->last = malloc(N * c->hidden_size * sizeof(float));
    vitd_batch b = {.n_images = n, .grids = grids, .pixel_values = pv, .embeddings = o->emb,
                    .deepstack = with_ds ? o->ds : NULL};
    return cpu_forward(cm, &b, o->last, err);
}

/* ---- tests ---- */

/* The same output of one image, run alone and inside a batch. */
typedef struct {
    const float *alone, *batch;
    size_t n;
} span;

/* Whole model vs the naive double implementation. */
static void check_against_naive(const char *label, const vitd_vision_config *c, const vitd_grid *grids, int n_img,
                                unsigned long long seed) {
    weight_store *ws = calloc(1, sizeof *ws);
    ws->rng = seed;
    cpu_model *cm = NULL;
    vitd_err err = {0};
    CHECK_OK(cpu_model_create_from(c, store_get, ws, 0, &cm, &err), &err);
    if (!cm) { free(ws); return; }
    CHECK_EQ_INT(3 + 12 * c->depth + 6 * (1 + c->n_deepstack), ws->n); /* every MODEL.md section 4 tensor, once */
    const size_t d = (size_t)c->hidden_size, Dout = (size_t)c->out_hidden_size;
    const size_t K = (size_t)c->in_channels * c->temporal_patch_size * c->patch_size * c->patch_size;
    CHECK_EQ_INT(d * K, store_find(ws, "patch_embed.proj.weight")->numel);
    CHECK_EQ_INT(Dout * 4 * d,
                 store_find(ws, "deepstack_merger_list.%d.linear_fc2.weight", c->n_deepstack - 1)->numel);
    CHECK_EQ_INT(4 * d, store_find(ws, "deepstack_merger_list.0.norm.weight")->numel);
    CHECK_EQ_INT(d, store_find(ws, "merger.norm.weight")->numel);

    size_t N = grid_tokens(grids, n_img), Nm = N / 4;
    float *pv = rand_pixels(N * K, seed + 1);
    outputs o;
    double t0 = vitd_now();
    CHECK_OK(run(cm, grids, n_img, pv, 1, &o, &err), &err);
    printf("%s: %zu patches, cpu_forward %.1f ms\n", label, N, (vitd_now() - t0) * 1e3);
    double *emb = malloc(Nm * Dout * sizeof(double)), *last = malloc(N * d * sizeof(double));
    double *ds = malloc((size_t)c->n_deepstack * Nm * Dout * sizeof(double));
    nv_forward(ws, c, grids, n_img, pv, emb, ds, last);
    char what[96];
    snprintf(what, sizeof what, "%s embeddings", label);
    expect_ref(what, o.emb, emb, Nm * Dout);
    for (int j = 0; j < c->n_deepstack; j++) {
        snprintf(what, sizeof what, "%s deepstack %d (block %d)", label, j, c->deepstack_indexes[j]);
        expect_ref(what, o.ds + (size_t)j * Nm * Dout, ds + (size_t)j * Nm * Dout, Nm * Dout);
    }
    snprintf(what, sizeof what, "%s last_hidden", label);
    expect_ref(what, o.last, last, N * d);

    /* deepstack NULL skips the mergers and leaves the rest bit for bit */
    outputs o2;
    CHECK_OK(run(cm, grids, n_img, pv, 0, &o2, &err), &err);
    CHECK_MSG(memcmp(o.emb, o2.emb, Nm * Dout * sizeof(float)) == 0 &&
              memcmp(o.last, o2.last, N * d * sizeof(float)) == 0, "%s: deepstack=NULL changes the outputs", label);
    outputs_free(&o2);

    /* batching: each image alone equals its slice of the mixed batch */
    if (n_img > 1) {
        size_t off = 0, offm = 0;
        int bitwise = 1;
        double worst = 0;
        for (int i = 0; i < n_img; i++) {
            size_t Ni = grid_tokens(&grids[i], 1), Nmi = Ni / 4;
            outputs oi;
            CHECK_OK(run(cm, &grids[i], 1, pv + off * K, 1, &oi, &err), &err);
            span parts[2 + VITD_MAX_DEEPSTACK] = {
                {oi.emb, o.emb + offm * Dout, Nmi * Dout}, {oi.last, o.last + off * d, Ni * d}};
            for (int j = 0; j < c->n_deepstack; j++)
                parts[2 + j] = (span){oi.ds + (size_t)j * Nmi * Dout, o.ds + (size_t)j * Nm * Dout + offm * Dout,
                                      Nmi * Dout};
            for (int pi = 0; pi < 2 + c->n_deepstack; pi++) {
                bitwise &= memcmp(parts[pi].alone, parts[pi].batch, parts[pi].n * sizeof(float)) == 0;
                cmp_stats s = cmp_f32(parts[pi].alone, parts[pi].batch, parts[pi].n, 0, 0);
                worst = fmax(worst, s.max_rel);
            }
            outputs_free(&oi);
            off += Ni, offm += Nmi;
        }
        printf("  %s batch of %d vs each image alone: %s, max_rel %.3e\n", label, n_img,
               bitwise ? "bitwise equal" : "not bitwise", worst);
        CHECK_MSG(worst <= 1e-6, "%s: batched vs alone max_rel %.3e > 1e-6", label, worst);
    }
    outputs_free(&o);
    free(pv), free(emb), free(last), free(ds);
    cpu_model_free(cm);
    store_release(ws);
    free(ws);
}

/* The checkpoint wrapper: the store's tensors written as a small F32 checkpoint, loaded with vitd_model_load(),
 * built with cpu_model_create(); the outputs must equal the callback model's bit for bit. */
static void check_checkpoint_wrapper(void) {
    vitd_vision_config c = small_config();
    weight_store *ws = calloc(1, sizeof *ws);
    ws->rng = 77;
    cpu_model *cm = NULL, *cm2 = NULL;
    vitd_model *model = NULL;
    vitd_err err = {0};
    CHECK_OK(cpu_model_create_from(&c, store_get, ws, 2, &cm, &err), &err);
    const char *dir = VITD_BINARY_DIR "/test_cpu_forward_ckpt";
    mkdir(dir, 0755);
    char path[512];
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "w");
    CHECK(f != NULL);
    if (!f || !cm) goto done;
    fprintf(f, "{\"model_type\": \"qwen3_vl\", \"vision_config\": {\"depth\": 3, \"hidden_size\": 64, "
               "\"intermediate_size\": 96, \"num_heads\": 4, \"out_hidden_size\": 48, \"patch_size\": 16, "
               "\"temporal_patch_size\": 2, \"spatial_merge_size\": 2, \"in_channels\": 3, "
               "\"num_position_embeddings\": 64, \"deepstack_visual_indexes\": [0, 2], "
               "\"hidden_act\": \"gelu_pytorch_tanh\"}}\n");
    fclose(f);
    st_writer *w = st_writer_create();
    const int64_t d = 64, I = 96;
    for (int i = 0; i < ws->n; i++) {
        const stored_tensor *t = &ws->t[i];
        int64_t shape[5];
        int ndim;
        char name[128];
        snprintf(name, sizeof name, "model.visual.%s", t->name);
        size_t len = strlen(t->name);
        if (strcmp(t->name, "patch_embed.proj.weight") == 0) {
            ndim = 5, shape[0] = d, shape[1] = 3, shape[2] = 2, shape[3] = 16, shape[4] = 16;
        } else if (strstr(t->name, "norm") || strcmp(t->name + len - 5, ".bias") == 0) {
            ndim = 1, shape[0] = (int64_t)t->numel;
        } else { /* [out, in] */
            int64_t in = strncmp(t->name, "blocks.", 7) == 0 ? (strstr(t->name, "linear_fc2") ? I : d)
                         : strcmp(t->name, "pos_embed.weight") == 0 ? d : 4 * d;
            ndim = 2, shape[0] = (int64_t)t->numel / in, shape[1] = in;
        }
        CHECK_OK(st_writer_add_f32(w, name, ST_F32, ndim, shape, t->data, &err), &err);
    }
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    CHECK_OK(st_writer_save(w, path, &err), &err);
    st_writer_free(w);
    CHECK_OK(vitd_model_load(dir, &model, &err), &err);
    if (!model) goto done;
    CHECK_OK(cpu_model_create(model, 2, &cm2, &err), &err);
    if (!cm2) goto done;
    vitd_grid grids[] = {{1, 6, 10}, {2, 4, 4}};
    size_t N = grid_tokens(grids, 2), Nm = N / 4;
    float *pv = rand_pixels(N * 1536, 5);
    outputs a, b;
    CHECK_OK(run(cm, grids, 2, pv, 1, &a, &err), &err);
    CHECK_OK(run(cm2, grids, 2, pv, 1, &b, &err), &err);
    CHECK_MSG(memcmp(a.emb, b.emb, Nm * 48 * sizeof(float)) == 0 &&
              memcmp(a.ds, b.ds, 2 * Nm * 48 * sizeof(float)) == 0 &&
              memcmp(a.last, b.last, N * 64 * sizeof(float)) == 0,
              "cpu_model_create (checkpoint) differs from cpu_model_create_from (same weights)");
    printf("  checkpoint wrapper: %zu patches, outputs equal to the callback model\n", N);
    /* the encoder's per-image form with bfloat16 outputs for image 0 (vitd_batch.image_bf16): the float32
     * outputs rounded to nearest-even; image 1 stays float32, equal to the contiguous run */
    vitd_encoder_opts eo = vitd_encoder_opts_default();
    eo.backend = "cpu";
    eo.threads = 2;
    eo.max_batch_tokens = N;
    vitd_encoder *enc = NULL;
    CHECK_OK(vitd_encoder_create(model, &eo, &enc, &err), &err);
    size_t n0 = grid_tokens(grids, 1) / 4, n1 = Nm - n0;
    uint16_t *e0 = calloc(n0 * 48, 2), *d0 = calloc(2 * n0 * 48, 2);
    float *e1 = calloc(n1 * 48, 4), *d1 = calloc(2 * n1 * 48, 4);
    const float *pix[2] = {pv, pv + grid_tokens(grids, 1) * 1536};
    float *embs[2] = {(float *)(void *)e0, e1}, *dss[2] = {(float *)(void *)d0, d1};
    const unsigned char bf16[2] = {1, 0};
    vitd_batch pb = {.n_images = 2, .grids = grids, .image_pixels = pix, .image_embeddings = embs,
                     .image_deepstack = dss, .image_bf16 = bf16};
    if (enc) CHECK_OK(vitd_encoder_run(enc, &pb, &err), &err);
    int bad = 0;
    for (size_t k = 0; k < n0 * 48; k++) bad += e0[k] != f32_to_bf16(b.emb[k]);
    for (int l = 0; l < 2; l++)
        for (size_t k = 0; k < n0 * 48; k++) bad += d0[l * n0 * 48 + k] != f32_to_bf16(b.ds[(l * Nm) * 48 + k]);
    bad += memcmp(e1, b.emb + n0 * 48, n1 * 48 * sizeof(float)) != 0;
    for (int l = 0; l < 2; l++) bad += memcmp(d1 + l * n1 * 48, b.ds + (l * Nm + n0) * 48, n1 * 48 * 4) != 0;
    CHECK_MSG(bad == 0, "per-image outputs with image_bf16: %d differ from the contiguous run", bad);
    printf("  per-image form, bfloat16 outputs for one image: rounded float32 outputs, the other image equal\n");
    vitd_encoder_free(enc);
    free(e0), free(d0), free(e1), free(d1);
    outputs_free(&a), outputs_free(&b);
    free(pv);
done:
    cpu_model_free(cm2);
    vitd_model_free(model);
    cpu_model_free(cm);
    store_release(ws);
    free(ws);
}

static void check_errors(void) {
    vitd_err err = {0};
    cpu_model *cm = NULL;
    weight_store *ws = calloc(1, sizeof *ws);
    vitd_vision_config c = small_config();

    c.num_heads = 5;
    CHECK_EQ_INT(VITD_E_MODEL, cpu_model_create_from(&c, store_get, ws, 1, &cm, &err));
    CHECK_STR_CONTAINS(err.msg, "num_heads");
    c = small_config(), c.num_heads = 32; /* head_dim 2: not a multiple of 4 */
    CHECK_EQ_INT(VITD_E_MODEL, cpu_model_create_from(&c, store_get, ws, 1, &cm, &err));
    CHECK_STR_CONTAINS(err.msg, "head_dim");
    c = small_config(), c.num_position_embeddings = 60;
    CHECK_EQ_INT(VITD_E_MODEL, cpu_model_create_from(&c, store_get, ws, 1, &cm, &err));
    CHECK_STR_CONTAINS(err.msg, "square");
    c = small_config(), c.deepstack_indexes[1] = 3;
    CHECK_EQ_INT(VITD_E_MODEL, cpu_model_create_from(&c, store_get, ws, 1, &cm, &err));
    CHECK_STR_CONTAINS(err.msg, "deepstack_visual_indexes[1] = 3");
    c = small_config(), c.deepstack_indexes[1] = 0;
    CHECK_EQ_INT(VITD_E_MODEL, cpu_model_create_from(&c, store_get, ws, 1, &cm, &err));
    CHECK_STR_CONTAINS(err.msg, "twice");
    CHECK(cm == NULL);
    CHECK_EQ_INT(0, ws->n); /* a bad config is refused before any weight is read */

    c = small_config();
    ws->refuse = "blocks.1.mlp.linear_fc2.bias";
    CHECK_EQ_INT(VITD_E_MODEL, cpu_model_create_from(&c, store_get, ws, 1, &cm, &err));
    CHECK_STR_CONTAINS(err.msg, "blocks.1.mlp.linear_fc2.bias");
    CHECK(cm == NULL);
    store_release(ws);
    ws->refuse = NULL;

    CHECK_OK(cpu_model_create_from(&c, store_get, ws, 1, &cm, &err), &err);
    if (cm) {
        vitd_grid grids[] = {{1, 4, 4}, {1, 5, 10}};
        float pv[16 * 1536] = {0}, emb[4 * 48];
        vitd_batch b = {.n_images = 2, .grids = grids, .pixel_values = pv, .embeddings = emb};
        CHECK_EQ_INT(VITD_E_INVALID_ARG, cpu_forward(cm, &b, NULL, &err));
        CHECK_STR_CONTAINS(err.msg, "image 1");
        grids[1] = (vitd_grid){0, 4, 4};
        CHECK_EQ_INT(VITD_E_INVALID_ARG, cpu_forward(cm, &b, NULL, &err));
        b.n_images = 0;
        CHECK_EQ_INT(VITD_E_INVALID_ARG, cpu_forward(cm, &b, NULL, &err));
        grids[1] = (vitd_grid){65536, 256, 256}; /* 2^32 patches */
        b.n_images = 2;
        CHECK_EQ_INT(VITD_E_TOO_LARGE, cpu_forward(cm, &b, NULL, &err));
        CHECK_STR_CONTAINS(err.msg, "image 1");
    }
    cpu_model_free(cm);
    store_release(ws);
    free(ws);
}

/* ---- timing (--bench) ---- */

/* cpu_weight_fn for timing only: cheap uniform values, norm weights 1, scaled so activations stay O(1). */
static vitd_status fast_get(void *ctx, const char *name, float *out, size_t numel, vitd_err *err) {
    (void)ctx, (void)err;
    size_t len = strlen(name);
    int norm_weight = strstr(name, "norm") && strcmp(name + len - 7, ".weight") == 0;
    uint32_t s = 2166136261u;
    for (const char *p = name; *p; p++) s = (s ^ (uint8_t)*p) * 16777619u;
    for (size_t i = 0; i < numel; i++) {
        s ^= s << 13, s ^= s >> 17, s ^= s << 5;
        out[i] = norm_weight ? 1.0f : ((float)(s >> 8) * (1.0f / 16777216.0f) - 0.5f) * 0.04f;
    }
    return VITD_OK;
}

static void bench_one(const char *label, const vitd_vision_config *c, vitd_grid g, int reps) {
    vitd_err err = {0};
    cpu_model *cm = NULL;
    double t0 = vitd_now();
    CHECK_OK(cpu_model_create_from(c, fast_get, NULL, 0, &cm, &err), &err);
    if (!cm) return;
    double t_load = vitd_now() - t0;
    size_t N = grid_tokens(&g, 1);
    float *pv = rand_pixels(N * 1536, 9);
    outputs o;
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        t0 = vitd_now();
        CHECK_OK(run(cm, &g, 1, pv, 1, &o, &err), &err);
        best = fmin(best, vitd_now() - t0);
        cmp_stats s = cmp_f32(o.emb, o.emb, N / 4 * c->out_hidden_size, 0, 0);
        CHECK_MSG(s.n_nan == 0, "%s: NaN in the embeddings", label);
        outputs_free(&o);
    }
    printf("bench %s: grid [%d,%d,%d] %zu patches, threads %d: forward %.1f ms (best of %d), weights %.1f s\n",
           label, g.t, g.h, g.w, N, cpu_threads_resolve(0), best * 1e3, reps, t_load);
    free(pv);
    cpu_model_free(cm);
}

/* The FP8 linear twin (cpu_model_set_fp8_linear): the same weights as the float32 model, the block GEMMs on E4M3
 * values. Close to float32 but not equal (the quantisation is applied), per channel at least as close here, and
 * a second call changes nothing. */

static void check_fp8_linear(void) {
    vitd_vision_config c = small_config();
    vitd_grid grids[] = {{1, 12, 16}, {1, 8, 8}};
    const size_t N = grid_tokens(grids, 2), Nm = N / 4, K = 1536, Dout = (size_t)c.out_hidden_size;
    float *pv = rand_pixels(N * K, 77);
    outputs ref = {0}, q[2] = {{0}}, again = {0};
    vitd_err err = {0};
    for (int mode = -1; mode < 2; mode++) {
        weight_store *ws = calloc(1, sizeof *ws);
        ws->rng = 4242;
        cpu_model *cm = NULL;
        CHECK_OK(cpu_model_create_from(&c, store_get, ws, 2, &cm, &err), &err);
        if (!cm) {
            free(ws);
            continue;
        }
        cpu_fp8_linear_opts fo = {.gemms = CPU_FP8_ALL, .weights_per_channel = mode};
        if (mode >= 0) cpu_model_set_fp8_linear(cm, &fo);
        CHECK_OK(run(cm, grids, 2, pv, 1, mode < 0 ? &ref : &q[mode], &err), &err);
        if (mode == 0) {
            fo.weights_per_channel = 1; /* ignored: the model is FP8 already */
            cpu_model_set_fp8_linear(cm, &fo);
            CHECK_OK(run(cm, grids, 2, pv, 1, &again, &err), &err);
            CHECK_MSG(memcmp(again.emb, q[0].emb, Nm * Dout * sizeof(float)) == 0, "a second call changed the model");
        }
        cpu_model_free(cm);
        store_release(ws);
        free(ws);
    }
    for (int mode = 0; mode < 2 && ref.emb && q[mode].emb; mode++) {
        const cmp_stats se = cmp_f32(q[mode].emb, ref.emb, Nm * Dout, 0, 0);
        const double ce = se.cosine, cd = cmp_f32(q[mode].ds, ref.ds, 2 * Nm * Dout, 0, 0).cosine;
        const double max_abs = se.max_abs;
        printf("fp8 linear twin (%s weights) vs float32: embeddings cos %.6f, deepstack cos %.6f, max abs %.3e\n",
               mode ? "per-channel" : "per-tensor", ce, cd, max_abs);
        CHECK_MSG(ce > 0.99 && cd > 0.99, "fp8 linear twin too far from float32: cos %.6f / %.6f", ce, cd);
        CHECK_MSG(ce < 0.999999 && max_abs > 0, "fp8 linear twin equals float32: the quantisation did not apply");
    }
    outputs_free(&ref), outputs_free(&q[0]), outputs_free(&q[1]), outputs_free(&again);
    free(pv);
}

int main(int argc, char **argv) {
    int bench = argc > 1 && strcmp(argv[1], "--bench") == 0;
    vitd_vision_config c = small_config();
    vitd_grid grids[] = {{1, 6, 10}, {2, 4, 4}, {1, 12, 8}};
    check_against_naive("d64 H4 hd16", &c, grids, 3, 1234);

    vitd_vision_config c72 = small_config();
    c72.depth = 2, c72.hidden_size = 144, c72.num_heads = 2, c72.intermediate_size = 288, c72.out_hidden_size = 64;
    c72.num_position_embeddings = 2304, c72.n_deepstack = 1, c72.deepstack_indexes[0] = 1;
    vitd_grid grids72[] = {{1, 8, 12}, {1, 16, 16}, {1, 2, 2}};
    check_against_naive("d144 H2 hd72", &c72, grids72, 3, 99);

    check_checkpoint_wrapper();
    check_errors();
    check_fp8_linear();

    /* tiny preset (demo_model.h), one 448x448 image: 28x28 patches */
    vitd_vision_config tiny = small_config();
    tiny.depth = 4, tiny.hidden_size = 144, tiny.num_heads = 2, tiny.intermediate_size = 288;
    tiny.out_hidden_size = 64, tiny.num_position_embeddings = 2304;
    tiny.n_deepstack = 2, tiny.deepstack_indexes[0] = 1, tiny.deepstack_indexes[1] = 2;
    bench_one("tiny", &tiny, (vitd_grid){1, 28, 28}, bench ? 5 : 1);
    if (bench) {
        vitd_vision_config b8 = tiny;
        b8.depth = 27, b8.hidden_size = 1152, b8.num_heads = 16, b8.intermediate_size = 4304;
        b8.out_hidden_size = 4096, b8.n_deepstack = 3;
        b8.deepstack_indexes[0] = 8, b8.deepstack_indexes[1] = 16, b8.deepstack_indexes[2] = 24;
        bench_one("8b", &b8, (vitd_grid){1, 28, 28}, 2);
    }
    return check_done("test_cpu_forward");
}
