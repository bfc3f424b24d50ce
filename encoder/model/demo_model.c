/* demo_model.c — deterministic random Qwen3-VL checkpoints (demo_model.h): the preset table, the files' JSON in
 * Hugging Face's layout, and the weight generator, streamed through the safetensors writer.
 *
 * Random numbers: each tensor has a key = splitmix64(seed) ^ FNV-1a(short name), so a tensor's values depend on
 * the seed and its name only (not on order, prefix, dtype or sharding). Element i takes 16-bit lane i%4 of the
 * 64-bit output number i/4 of a splitmix64 stream started at key, and maps it through a table of the standard
 * normal's quantiles at (k + 0.5) / 65536 (inverse-CDF sampling: a true normal shape, quantised to 65536 levels
 * reaching +-4.3 sigma, finer than bf16); value = mean + std * z. That costs about 1 ns an element, where
 * Box-Muller's log/sin/cos cost 10-16 ns and made writing the 8B preset take 12 s instead of seconds.
 *
 * Initialisation recipe (d hidden, I intermediate, L depth, K = C*T*P*P = 1536, m4 = d * merge^2):
 *   patch_embed.proj.weight   N(0, 1/K)            pixel rows in [-1, 1] give embeddings of std ~0.6
 *   patch_embed.proj.bias     N(0, 0.02^2)         (every bias below is N(0, 0.02^2) too)
 *   pos_embed.weight          N(0, 0.5^2)          of the order of the patch embedding, so interpolation matters
 *   LayerNorm weight / bias   1 + N(0, 0.1^2) / N(0, 0.05^2)   (norm1, norm2, merger and deepstack norms)
 *   attn.qkv.weight           q and k rows N(0, (1.5^2)/d), v rows N(0, 1/d): attention logits have std ~2.25,
 *                             so softmax is peaked rather than uniform
 *   attn.proj.weight          N(0, 1/(d * 2L))     each residual branch adds a modest amount, so the stream stays
 *   mlp.linear_fc1.weight     N(0, 1/d)            O(1) through the whole depth (variance grows by ~0.3 in all)
 *   mlp.linear_fc2.weight     N(0, 1/(I * 2L))     without vanishing: every block still changes it by ~10-30 %
 *   merger / deepstack fc1    N(0, 1/m4)           merger outputs O(1) (std ~0.6)
 *   merger / deepstack fc2    N(0, 1/m4)
 * Real trained towers have a few large-magnitude channels; these do not, which is fine for shapes, speed and
 * numerics tests but makes the outputs meaningless.
 */
#include <cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "demo_model.h"
#include "util.h"

/* ---- presets (MODEL.md 8.1) ---- */

typedef struct {
    const char *name;
    int depth, hidden, intermediate, heads, out_hidden, n_ds, ds[3];
} demo_preset;

static const demo_preset PRESETS[] = {
    {"tiny", 4, 144, 576, 2, 64, 2, {1, 2, 0}},
    {"2b", 24, 1024, 4096, 16, 2048, 3, {5, 11, 17}},
    {"4b", 24, 1024, 4096, 16, 2560, 3, {5, 11, 17}},
    {"8b", 27, 1152, 4304, 16, 4096, 3, {8, 16, 24}},
    {"32b", 27, 1152, 4304, 16, 5120, 3, {8, 16, 24}},
};
#define N_PRESETS ((int)(sizeof PRESETS / sizeof PRESETS[0]))

demo_model_opts demo_model_opts_default(void) {
    demo_model_opts o = {.preset = "tiny", .out_dir = NULL, .seed = 0, .dtype = ST_BF16, .shards = 1,
                         .prefix = "model.visual.", .text_stub = 0};
    return o;
}

vitd_status demo_model_config(const char *preset, vitd_vision_config *cfg, vitd_err *err) {
    for (int i = 0; preset && i < N_PRESETS; i++) {
        const demo_preset *p = &PRESETS[i];
        if (strcmp(preset, p->name) != 0) continue;
        vitd_vision_config c = {
            .depth = p->depth, .hidden_size = p->hidden, .intermediate_size = p->intermediate,
            .num_heads = p->heads, .out_hidden_size = p->out_hidden, .patch_size = 16, .temporal_patch_size = 2,
            .spatial_merge_size = 2, .in_channels = 3, .num_position_embeddings = 2304, .n_deepstack = p->n_ds,
            .rope_theta = 10000.0, .ln_eps = 1e-6,
        };
        for (int j = 0; j < p->n_ds; j++) c.deepstack_indexes[j] = p->ds[j];
        *cfg = c;
        return VITD_OK;
    }
    return vitd_fail(err, VITD_E_INVALID_ARG, "unknown demo model preset \"%.40s\" (presets: tiny, 2b, 4b, 8b, 32b)",
                     preset ? preset : "(null)");
}

/* ---- the generator ---- */

static inline uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

#define GOLDEN 0x9e3779b97f4a7c15ULL

static uint64_t tensor_key(uint64_t seed, const char *short_name) {
    uint64_t h = 0xcbf29ce484222325ULL; /* FNV-1a 64 */
    for (const unsigned char *c = (const unsigned char *)short_name; *c; c++) h = (h ^ *c) * 0x100000001b3ULL;
    return mix64(seed + GOLDEN) ^ h;
}

/* One tensor to generate: name, shape, and its distribution (elements >= split use std2, e.g. v rows of qkv). */
typedef struct {
    char short_name[80];
    int ndim;
    int64_t shape[5];
    uint64_t key;
    float mean, std, std2;
    int64_t split;
    int outlier;      /* 0 none; 1 a LayerNorm vector whose outlier channels are x factor; 2 a weight [rows, d]
                         whose outlier columns are / factor (demo_model_opts.outliers) */
    float factor;
    int64_t d;
} demo_tensor;

#define DEMO_OUTLIER_CH 4

/* Outlier channel c of a width-d input: d/4 * k + 7 for k < 4 (spread over the width, off the heads' starts). */
static int is_outlier_channel(int64_t c, int64_t d) {
    for (int k = 0; k < DEMO_OUTLIER_CH; k++)
        if (c == d / DEMO_OUTLIER_CH * k + 7) return 1;
    return 0;
}

/* Standard normal quantiles at (k + 0.5) / 65536: a 16-bit uniform indexes it to give a normal sample. */
static float g_normal_table[65536];
static pthread_once_t g_normal_once = PTHREAD_ONCE_INIT;

/* Inverse of the standard normal CDF: Acklam's rational approximation (relative error 1.2e-9) polished by one
 * Halley step on erfc, which brings it to double precision. */
static double inv_norm_cdf(double p) {
    static const double a[6] = {-3.969683028665376e+01, 2.209460984245205e+02, -2.759285104469687e+02,
                                1.383577518672690e+02, -3.066479806614716e+01, 2.506628277459239e+00};
    static const double b[5] = {-5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02,
                                6.680131188771972e+01, -1.328068155288572e+01};
    static const double c[6] = {-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00,
                                -2.549732539343734e+00, 4.374664141464968e+00, 2.938163982698783e+00};
    static const double d[4] = {7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00,
                                3.754408661907416e+00};
    double x, q, r;
    if (p < 0.02425) {
        q = sqrt(-2 * log(p));
        x = (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) /
            ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1);
    } else if (p > 1 - 0.02425) {
        q = sqrt(-2 * log(1 - p));
        x = -(((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) /
            ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1);
    } else {
        q = p - 0.5;
        r = q * q;
        x = (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q /
            (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1);
    }
    double e = 0.5 * erfc(-x / sqrt(2.0)) - p;
    double u = e * sqrt(2 * M_PI) * exp(x * x / 2);
    return x - u / (1 + x * u / 2);
}

static void normal_table_init(void) {
    for (int k = 0; k < 32768; k++) { /* symmetric by construction */
        float v = (float)inv_norm_cdf((k + 0.5) / 65536.0);
        g_normal_table[k] = v;
        g_normal_table[65535 - k] = -v;
    }
}

/* Element i of t (before dtype rounding): lane i%4 of splitmix64 output number i/4 picks a normal quantile. */
static float demo_element(const demo_tensor *t, int64_t i) {
    uint64_t z = mix64(t->key + ((uint64_t)(i >> 2) + 1) * GOLDEN);
    float n = g_normal_table[(z >> (16 * (i & 3))) & 0xffff];
    float x = t->mean + (i >= t->split ? t->std2 : t->std) * n;
    if (t->outlier == 1 && is_outlier_channel(i, t->d)) x *= t->factor;
    if (t->outlier == 2 && is_outlier_channel(i % t->d, t->d)) x /= t->factor;
    return x;
}

/* st_fill_fn: generates a chunk of a demo tensor, four elements per 64-bit draw. */
static vitd_status demo_fill(void *user, int64_t first, int64_t count, float *out, vitd_err *err) {
    (void)err;
    const demo_tensor *t = user;
    int64_t i = first, end = first + count;
    if (t->outlier) {
        for (; i < end; i++) *out++ = demo_element(t, i);
        return VITD_OK;
    }
    for (; i < end && (i & 3); i++) *out++ = demo_element(t, i);
    for (; i + 3 < end; i += 4) {
        uint64_t z = mix64(t->key + ((uint64_t)(i >> 2) + 1) * GOLDEN);
        float sd = i >= t->split ? t->std2 : t->std; /* split is a multiple of 4 (2*d*d) */
        out[0] = t->mean + sd * g_normal_table[z & 0xffff];
        out[1] = t->mean + sd * g_normal_table[(z >> 16) & 0xffff];
        out[2] = t->mean + sd * g_normal_table[(z >> 32) & 0xffff];
        out[3] = t->mean + sd * g_normal_table[z >> 48];
        out += 4;
    }
    for (; i < end; i++) *out++ = demo_element(t, i);
    return VITD_OK;
}

static void add_tensor(demo_tensor *v, int *n, uint64_t seed, const char *name, int ndim, const int64_t *shape,
                       float mean, float std) {
    demo_tensor *t = &v[(*n)++];
    memset(t, 0, sizeof *t);
    snprintf(t->short_name, sizeof t->short_name, "%s", name);
    t->ndim = ndim;
    memcpy(t->shape, shape, (size_t)ndim * sizeof(int64_t));
    t->key = tensor_key(seed, name);
    t->mean = mean;
    t->std = t->std2 = std;
    t->split = INT64_MAX;
}

/* The full tensor list of a config, in the model's module order, with the recipe above. *out is the caller's. */
static int demo_tensors(const vitd_vision_config *c, uint64_t seed, float outliers, demo_tensor **out) {
    pthread_once(&g_normal_once, normal_table_init);
    int64_t d = c->hidden_size, I = c->intermediate_size, D = c->out_hidden_size, L = c->depth;
    int64_t m4 = d * c->spatial_merge_size * c->spatial_merge_size;
    int64_t K = (int64_t)c->in_channels * c->temporal_patch_size * c->patch_size * c->patch_size;
    int cap = 3 + 12 * c->depth + 6 * (1 + c->n_deepstack), n = 0;
    demo_tensor *v = xcalloc((size_t)cap, sizeof *v);
    const float bias = 0.02f, lnw = 0.1f, lnb = 0.05f;
    char nm[80];
    int64_t s5[5] = {d, c->in_channels, c->temporal_patch_size, c->patch_size, c->patch_size};
    add_tensor(v, &n, seed, "patch_embed.proj.weight", 5, s5, 0, (float)(1.0 / sqrt((double)K)));
    add_tensor(v, &n, seed, "patch_embed.proj.bias", 1, &d, 0, bias);
    int64_t sp[2] = {c->num_position_embeddings, d};
    add_tensor(v, &n, seed, "pos_embed.weight", 2, sp, 0, 0.5f);
    float in_d = (float)(1.0 / sqrt((double)d)), branch = (float)(1.0 / sqrt(2.0 * (double)L));
    for (int b = 0; b < c->depth; b++) {
#define BLK(suffix, ndim, shape, mean, std) \
    (snprintf(nm, sizeof nm, "blocks.%d.%s", b, suffix), add_tensor(v, &n, seed, nm, ndim, shape, mean, std))
        int64_t qkv[2] = {3 * d, d}, proj[2] = {d, d}, fc1[2] = {I, d}, fc2[2] = {d, I}, d3 = 3 * d;
        BLK("norm1.weight", 1, &d, 1, lnw);
        BLK("norm1.bias", 1, &d, 0, lnb);
        BLK("attn.qkv.weight", 2, qkv, 0, 1.5f * in_d);
        v[n - 1].std2 = in_d;          /* v rows */
        v[n - 1].split = 2 * d * d;
        BLK("attn.qkv.bias", 1, &d3, 0, bias);
        BLK("attn.proj.weight", 2, proj, 0, in_d * branch);
        BLK("attn.proj.bias", 1, &d, 0, bias);
        BLK("norm2.weight", 1, &d, 1, lnw);
        BLK("norm2.bias", 1, &d, 0, lnb);
        BLK("mlp.linear_fc1.weight", 2, fc1, 0, in_d);
        BLK("mlp.linear_fc1.bias", 1, &I, 0, bias);
        BLK("mlp.linear_fc2.weight", 2, fc2, 0, (float)(1.0 / sqrt((double)I)) * branch);
        BLK("mlp.linear_fc2.bias", 1, &d, 0, bias);
#undef BLK
        for (int k = n - 12; outliers > 1.0f && k < n; k++) {
            const char *sn = strchr(strchr(v[k].short_name, '.') + 1, '.') + 1; /* after "blocks.<b>." */
            if (!strncmp(sn, "norm1.", 6) || !strncmp(sn, "norm2.", 6)) v[k].outlier = 1;
            if (!strcmp(sn, "attn.qkv.weight") || !strcmp(sn, "mlp.linear_fc1.weight")) v[k].outlier = 2;
            v[k].factor = outliers;
            v[k].d = d;
        }
    }
    float in_m4 = (float)(1.0 / sqrt((double)m4));
    for (int j = -1; j < c->n_deepstack; j++) {
        char base[48];
        int64_t norm = j < 0 ? d : m4, fc1[2] = {m4, m4}, fc2[2] = {D, m4};
        if (j < 0) snprintf(base, sizeof base, "merger");
        else snprintf(base, sizeof base, "deepstack_merger_list.%d", j);
#define MRG(suffix, ndim, shape, mean, std) \
    (snprintf(nm, sizeof nm, "%s.%s", base, suffix), add_tensor(v, &n, seed, nm, ndim, shape, mean, std))
        MRG("norm.weight", 1, &norm, 1, lnw);
        MRG("norm.bias", 1, &norm, 0, lnb);
        MRG("linear_fc1.weight", 2, fc1, 0, in_m4);
        MRG("linear_fc1.bias", 1, &m4, 0, bias);
        MRG("linear_fc2.weight", 2, fc2, 0, in_m4);
        MRG("linear_fc2.bias", 1, &D, 0, bias);
#undef MRG
    }
    VITD_ASSERT(n == cap);
    *out = v;
    return n;
}

static int64_t demo_numel(const demo_tensor *t) {
    int64_t k = 1;
    for (int i = 0; i < t->ndim; i++) k *= t->shape[i];
    return k;
}

float demo_model_value(const demo_model_opts *opts, const char *short_name, int64_t i) {
    vitd_vision_config c;
    demo_tensor *v;
    if (demo_model_config(opts->preset, &c, NULL) != VITD_OK) return NAN;
    int n = demo_tensors(&c, opts->seed, opts->outliers, &v);
    float r = NAN;
    for (int k = 0; k < n; k++)
        if (strcmp(v[k].short_name, short_name) == 0 && i >= 0 && i < demo_numel(&v[k])) r = demo_element(&v[k], i);
    free(v);
    return r;
}

/* ---- files ---- */

/* mkdir -p. */
static vitd_status make_dirs(const char *dir, vitd_err *err) {
    char *p = xstrdup(dir);
    vitd_status st = VITD_OK;
    for (char *s = p + 1;; s++) {
        if (*s != '/' && *s) continue;
        char c = *s;
        *s = 0;
        if (mkdir(p, 0755) != 0 && errno != EEXIST) {
            st = vitd_fail(err, VITD_E_IO, "cannot create directory %.200s: %s", p, strerror(errno));
            break;
        }
        *s = c;
        if (!c) break;
    }
    struct stat sb;
    if (st == VITD_OK && (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode)))
        st = vitd_fail(err, VITD_E_IO, "%.200s is not a directory", dir);
    free(p);
    return st;
}

static char *join(const char *dir, const char *name) {
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = xmalloc(n);
    snprintf(p, n, "%s/%s", dir, name);
    return p;
}

/* Writes text to dir/name atomically (temporary file, fsync, rename). */
static vitd_status write_text(const char *dir, const char *name, const char *text, vitd_err *err) {
    char *path = join(dir, name);
    size_t n = strlen(path) + 16;
    char *tmp = xmalloc(n);
    snprintf(tmp, n, "%s.tmp.XXXXXX", path);
    vitd_status st = VITD_OK;
    int fd = mkstemp(tmp);
    if (fd < 0) {
        st = vitd_fail(err, VITD_E_IO, "cannot create %.200s: %s", tmp, strerror(errno));
        goto out;
    }
    size_t len = strlen(text), off = 0;
    while (off < len) {
        ssize_t k = write(fd, text + off, len - off);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) break;
        off += (size_t)k;
    }
    if (off != len || fchmod(fd, 0644) != 0 || fsync(fd) != 0) {
        st = vitd_fail(err, VITD_E_IO, "writing %.200s: %s", tmp, strerror(errno));
        close(fd);
        unlink(tmp);
        goto out;
    }
    close(fd);
    if (rename(tmp, path) != 0) {
        st = vitd_fail(err, VITD_E_IO, "renaming to %.200s: %s", path, strerror(errno));
        unlink(tmp);
    }
out:
    free(tmp);
    free(path);
    return st;
}

/* Prints a cJSON tree to dir/name (with a final newline) and frees the tree. */
static vitd_status write_json(const char *dir, const char *name, cJSON *root, vitd_err *err) {
    char *s = cJSON_Print(root);
    cJSON_Delete(root);
    VITD_ASSERT(s);
    size_t n = strlen(s);
    char *t = xmalloc(n + 2);
    memcpy(t, s, n);
    t[n] = '\n';
    t[n + 1] = 0;
    cJSON_free(s);
    vitd_status st = write_text(dir, name, t, err);
    free(t);
    return st;
}

static const char *dtype_json(st_dtype t) {
    return t == ST_F32 ? "float32" : t == ST_F16 ? "float16" : "bfloat16";
}

/* config.json in the layout of a released Qwen3VLForConditionalGeneration checkpoint (keys sorted as HF does). */
static cJSON *config_json(const vitd_vision_config *c, st_dtype dtype) {
    cJSON *root = cJSON_CreateObject();
    const char *arch = "Qwen3VLForConditionalGeneration";
    cJSON_AddItemToObject(root, "architectures", cJSON_CreateStringArray(&arch, 1));
    cJSON_AddStringToObject(root, "dtype", dtype_json(dtype));
    cJSON_AddNumberToObject(root, "image_token_id", 151655);
    cJSON_AddStringToObject(root, "model_type", "qwen3_vl");
    cJSON *tc = cJSON_AddObjectToObject(root, "text_config");
    cJSON_AddStringToObject(tc, "dtype", dtype_json(dtype));
    cJSON_AddNumberToObject(tc, "hidden_size", c->out_hidden_size);
    cJSON_AddStringToObject(tc, "model_type", "qwen3_vl_text");
    cJSON_AddBoolToObject(root, "tie_word_embeddings", 0);
    cJSON_AddStringToObject(root, "transformers_version", "4.57.0.dev0");
    cJSON_AddNumberToObject(root, "video_token_id", 151656);
    cJSON *vc = cJSON_AddObjectToObject(root, "vision_config");
    cJSON_AddItemToObject(vc, "deepstack_visual_indexes", cJSON_CreateIntArray(c->deepstack_indexes, c->n_deepstack));
    cJSON_AddNumberToObject(vc, "depth", c->depth);
    cJSON_AddStringToObject(vc, "hidden_act", "gelu_pytorch_tanh");
    cJSON_AddNumberToObject(vc, "hidden_size", c->hidden_size);
    cJSON_AddNumberToObject(vc, "in_channels", c->in_channels);
    cJSON_AddNumberToObject(vc, "initializer_range", 0.02);
    cJSON_AddNumberToObject(vc, "intermediate_size", c->intermediate_size);
    cJSON_AddStringToObject(vc, "model_type", "qwen3_vl");
    cJSON_AddNumberToObject(vc, "num_heads", c->num_heads);
    cJSON_AddNumberToObject(vc, "num_position_embeddings", c->num_position_embeddings);
    cJSON_AddNumberToObject(vc, "out_hidden_size", c->out_hidden_size);
    cJSON_AddNumberToObject(vc, "patch_size", c->patch_size);
    cJSON_AddNumberToObject(vc, "spatial_merge_size", c->spatial_merge_size);
    cJSON_AddNumberToObject(vc, "temporal_patch_size", c->temporal_patch_size);
    cJSON_AddNumberToObject(root, "vision_end_token_id", 151653);
    cJSON_AddNumberToObject(root, "vision_start_token_id", 151652);
    return root;
}

/* preprocessor_config.json as released (MODEL.md 8.2). */
static cJSON *preproc_json(const vitd_vision_config *c) {
    cJSON *root = cJSON_CreateObject();
    cJSON *size = cJSON_AddObjectToObject(root, "size");
    cJSON_AddNumberToObject(size, "longest_edge", 16777216);
    cJSON_AddNumberToObject(size, "shortest_edge", 65536);
    cJSON_AddNumberToObject(root, "patch_size", c->patch_size);
    cJSON_AddNumberToObject(root, "temporal_patch_size", c->temporal_patch_size);
    cJSON_AddNumberToObject(root, "merge_size", c->spatial_merge_size);
    const float half[3] = {0.5f, 0.5f, 0.5f};
    cJSON_AddItemToObject(root, "image_mean", cJSON_CreateFloatArray(half, 3));
    cJSON_AddItemToObject(root, "image_std", cJSON_CreateFloatArray(half, 3));
    cJSON_AddStringToObject(root, "processor_class", "Qwen3VLProcessor");
    cJSON_AddStringToObject(root, "image_processor_type", "Qwen2VLImageProcessorFast");
    return root;
}

/* Removes weight files of an earlier write that the new layout does not use. */
static void remove_stale(const char *dir, int shards) {
    char keep[64];
    DIR *dh = opendir(dir);
    if (!dh) return;
    for (struct dirent *de; (de = readdir(dh));) {
        unsigned a, b;
        char tail[32];
        const char *nm = de->d_name;
        int is_shard = strlen(nm) == 32 && sscanf(nm, "model-%5u-of-%5u.%31s", &a, &b, tail) == 3 &&
                       strcmp(tail, "safetensors") == 0;
        int stale = 0;
        if (is_shard) {
            snprintf(keep, sizeof keep, "model-%05u-of-%05d.safetensors", a, shards);
            stale = shards == 1 || strcmp(nm, keep) != 0 || (int)a > shards || a == 0;
        } else if (strcmp(nm, "model.safetensors") == 0) {
            stale = shards > 1;
        } else if (strcmp(nm, "model.safetensors.index.json") == 0) {
            stale = shards == 1;
        }
        if (stale) {
            char *p = join(dir, nm);
            unlink(p);
            free(p);
        }
    }
    closedir(dh);
}

typedef struct {
    char name[128];
    int shard;
} map_entry;

static int map_cmp(const void *a, const void *b) {
    return strcmp(((const map_entry *)a)->name, ((const map_entry *)b)->name);
}

vitd_status demo_model_write(const demo_model_opts *opts, vitd_err *err) {
    vitd_status st;
    vitd_vision_config c;
    demo_tensor *v = NULL, stubs[2];
    st_writer **w = NULL;
    char *dir = NULL, name[64], text[1024];
    int n = 0, shards = opts->shards < 1 ? 1 : opts->shards;
    const char *prefix = opts->prefix ? opts->prefix : "model.visual.";
    cJSON *index = NULL;
    map_entry *map = NULL;

    if ((st = demo_model_config(opts->preset, &c, err)) != VITD_OK) return st;
    if (opts->dtype != ST_BF16 && opts->dtype != ST_F16 && opts->dtype != ST_F32)
        return vitd_fail(err, VITD_E_INVALID_ARG, "demo model dtype %s: use BF16, F16 or F32",
                         st_dtype_name(opts->dtype));
    if (strcmp(prefix, "model.visual.") != 0 && strcmp(prefix, "visual.") != 0)
        return vitd_fail(err, VITD_E_INVALID_ARG, "demo model prefix \"%.40s\": use model.visual. or visual.", prefix);
    if (opts->out_dir) {
        dir = xstrdup(opts->out_dir);
    } else {
        snprintf(name, sizeof name, "models/%s", opts->preset);
        dir = xstrdup(name);
    }
    n = demo_tensors(&c, opts->seed, opts->outliers, &v);
    if (shards > n || shards > 99999) {
        st = vitd_fail(err, VITD_E_INVALID_ARG, "demo model: %d shards for %d tensors", shards, n);
        goto fail;
    }
    if ((st = make_dirs(dir, err)) != VITD_OK) goto fail;

    /* split the tensors, in order, into shards of about equal bytes */
    size_t esize = st_dtype_size(opts->dtype), total = 0, done = 0;
    for (int i = 0; i < n; i++) total += (size_t)demo_numel(&v[i]) * esize;
    w = xcalloc((size_t)shards, sizeof *w);
    for (int s = 0; s < shards; s++) {
        w[s] = st_writer_create();
        if ((st = st_writer_set_metadata(w[s], "format", "pt", err)) != VITD_OK) goto fail;
    }
    char full[128];
    index = cJSON_CreateObject();
    cJSON *imeta = cJSON_AddObjectToObject(index, "metadata");
    cJSON *wmap = cJSON_AddObjectToObject(index, "weight_map");
    map = xcalloc((size_t)n + 2, sizeof *map);
    int n_map = 0;
    for (int i = 0, s = 0; i < n; i++) {
        /* move on once this shard has its share, keeping one tensor for each shard still to come */
        while (s < shards - 1 && st_writer_count(w[s]) > 0 &&
               (done >= total / (size_t)shards * (size_t)(s + 1) || n - i <= shards - 1 - s))
            s++;
        snprintf(full, sizeof full, "%s%s", prefix, v[i].short_name);
        if ((st = st_writer_add_fill(w[s], full, opts->dtype, v[i].ndim, v[i].shape, demo_fill, &v[i], err)))
            goto fail;
        done += (size_t)demo_numel(&v[i]) * esize;
        snprintf(map[n_map].name, sizeof map[n_map].name, "%s", full);
        map[n_map++].shard = s;
    }
    if (opts->text_stub) { /* language-model tensors the loader must skip */
        int64_t shape[2] = {16, c.out_hidden_size};
        add_tensor(stubs, &(int){0}, opts->seed, "model.language_model.embed_tokens.weight", 2, shape, 0, 0.02f);
        add_tensor(stubs + 1, &(int){0}, opts->seed, "lm_head.weight", 2, shape, 0, 0.02f);
        if ((st = st_writer_add_fill(w[0], stubs[0].short_name, opts->dtype, 2, shape, demo_fill, &stubs[0], err)) ||
            (st = st_writer_add_fill(w[shards - 1], stubs[1].short_name, opts->dtype, 2, shape, demo_fill, &stubs[1],
                                     err)))
            goto fail;
        snprintf(map[n_map].name, sizeof map[n_map].name, "%s", stubs[0].short_name);
        map[n_map++].shard = 0;
        snprintf(map[n_map].name, sizeof map[n_map].name, "%s", stubs[1].short_name);
        map[n_map++].shard = shards - 1;
    }

    remove_stale(dir, shards);
    size_t total_size = 0;
    for (int s = 0; s < shards; s++) {
        if (shards == 1) snprintf(name, sizeof name, "model.safetensors");
        else snprintf(name, sizeof name, "model-%05d-of-%05d.safetensors", s + 1, shards);
        char *path = join(dir, name);
        st = st_writer_save(w[s], path, err);
        free(path);
        if (st != VITD_OK) goto fail;
        total_size += st_writer_data_bytes(w[s]);
    }
    cJSON_AddNumberToObject(imeta, "total_size", (double)total_size);
    qsort(map, (size_t)n_map, sizeof *map, map_cmp); /* weight_map sorted by name, as transformers writes it */
    for (int i = 0; i < n_map; i++) {
        snprintf(name, sizeof name, "model-%05d-of-%05d.safetensors", map[i].shard + 1, shards);
        cJSON_AddStringToObject(wmap, map[i].name, name);
    }
    if ((st = write_json(dir, "config.json", config_json(&c, opts->dtype), err)) ||
        (st = write_json(dir, "preprocessor_config.json", preproc_json(&c), err)))
        goto fail;
    snprintf(text, sizeof text,
             "# vitd demo model: %s (random weights)\n\n"
             "Written by `vitd demo-model` (encoder/model/demo_model.c): preset `%s`, seed %llu, dtype %s, %d weight "
             "file(s), tensor prefix `%s`.\n\n"
             "The files have the exact layout and tensor shapes of a Hugging Face Qwen3-VL checkpoint's vision "
             "tower, but every weight is RANDOM (a fixed, seeded recipe described in demo_model.c). The embeddings "
             "it produces are meaningless; use it to test and benchmark vitd, never to serve.\n",
             opts->preset, opts->preset, (unsigned long long)opts->seed, st_dtype_name(opts->dtype), shards, prefix);
    if ((st = write_text(dir, "README.md", text, err))) goto fail;
    if (shards > 1) {
        st = write_json(dir, "model.safetensors.index.json", index, err);
        index = NULL;
        if (st) goto fail;
    }
    st = VITD_OK;
fail:
    cJSON_Delete(index);
    free(map);
    for (int s = 0; w && s < shards; s++) st_writer_free(w[s]);
    free(w);
    free(v);
    free(dir);
    return st;
}
