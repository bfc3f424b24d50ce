/* checkpoint.c — loading a Hugging Face Qwen3-VL checkpoint directory into a vitd_model (vitd.h, checkpoint.h).
 *
 * Owns: parsing config.json (full Qwen3VLForConditionalGeneration config or a bare vision config, MODEL.md 8.1)
 * and preprocessor_config.json (MODEL.md 8.2) with every value range-checked; finding the weight files
 * (model.safetensors, the shards of model.safetensors.index.json, or every *.safetensors); mapping them with the
 * safetensors reader; and checking each vision tensor of MODEL.md section 4 for presence, dtype and exact shape.
 * Nothing but headers is read at load: tensor pages are touched only when a backend converts or uploads them, and
 * language-model tensors never are. Names handed out are short (no "model.visual." / "visual." prefix).
 */
#include <cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "checkpoint.h"
#include "json_strict.h"
#include "util.h"

#define CONFIG_MAX_BYTES (64u << 20) /* config.json, preprocessor config and index are small text files */

typedef struct {
    char *short_name;    /* owned */
    const st_tensor *t;  /* into files[file] */
    int file;
} ck_entry;

struct vitd_model {
    char *path;
    vitd_vision_config cfg;
    vitd_preproc_config pp;
    const char *prefix;  /* "model.visual." or "visual." */
    int n_files;
    st_file **files;
    char **file_names;   /* base names */
    int n;
    ck_entry *entries;   /* sorted by short_name */
    size_t vision_bytes;
};

static const char *const PREFIXES[2] = {"model.visual.", "visual."};

/* Which vision prefix name carries: 0 or 1 (index into PREFIXES), -1 for a non-vision tensor. */
static int vision_prefix(const char *name) {
    for (int i = 0; i < 2; i++)
        if (strncmp(name, PREFIXES[i], strlen(PREFIXES[i])) == 0) return i;
    return -1;
}

/* ---- small files ---- */

/* Re-labels a failure of a lower layer (I/O, safetensors parse) as a model error, keeping its message. */
static vitd_status as_model_error(vitd_status st, vitd_err *err) {
    if (st == VITD_E_NOMEM) return st;
    if (err) err->code = VITD_E_MODEL;
    return VITD_E_MODEL;
}

static char *path_join(const char *dir, const char *name) {
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = xmalloc(n);
    snprintf(p, n, "%s/%s", dir, name);
    return p;
}

static int file_exists(const char *dir, const char *name) {
    char *p = path_join(dir, name);
    struct stat sb;
    int ok = stat(p, &sb) == 0;
    free(p);
    return ok;
}

/* ---- config.json ---- */

/* Parses a NUL-terminated JSON text: one value, nothing after it but whitespace, no key twice (Python's json
 * module, which transformers reads config.json with, keeps the last of two; cJSON the first). */
static cJSON *parse_json_text(const char *text, vitd_err *err) {
    return json_parse_strict(text, strlen(text), NULL, NULL, err);
}

/* Reads obj[key] as an integer in [lo, hi] into *v; an absent key leaves *v (the default). */
static vitd_status json_int(const cJSON *obj, const char *key, const char *where, long lo, long hi, int *v,
                            vitd_err *err) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!it) return VITD_OK;
    if (!cJSON_IsNumber(it) || it->valuedouble != floor(it->valuedouble))
        return vitd_fail(err, VITD_E_MODEL, "%s%s must be an integer", where, key);
    if (it->valuedouble < (double)lo || it->valuedouble > (double)hi)
        return vitd_fail(err, VITD_E_MODEL, "%s%s = %.0f is outside [%ld, %ld]", where, key, it->valuedouble, lo, hi);
    *v = (int)it->valuedouble;
    return VITD_OK;
}

/* Reads a positive finite number; absent leaves *v. */
static vitd_status json_pos(const cJSON *obj, const char *key, const char *where, double *v, vitd_err *err) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!it) return VITD_OK;
    if (!cJSON_IsNumber(it) || !isfinite(it->valuedouble) || it->valuedouble <= 0)
        return vitd_fail(err, VITD_E_MODEL, "%s%s must be a positive number", where, key);
    *v = it->valuedouble;
    return VITD_OK;
}

vitd_status checkpoint_parse_config(const char *json, vitd_vision_config *cfg, vitd_err *err) {
    vitd_status st = VITD_OK;
    vitd_vision_config c = vitd_vision_config_default();
    vitd_err jerr = {0};
    cJSON *root = parse_json_text(json, &jerr);
    if (!root || !cJSON_IsObject(root)) {
        st = root ? vitd_fail(err, VITD_E_MODEL, "config.json is not a JSON object")
                  : vitd_fail(err, VITD_E_MODEL, "config.json is not valid JSON: %s", jerr.msg);
        goto fail;
    }
    const cJSON *vc = cJSON_GetObjectItemCaseSensitive(root, "vision_config");
    const char *where = "config.json: vision_config.";
    if (!vc) {
        vc = root; /* a bare Qwen3VLVisionConfig */
        where = "config.json: ";
    } else if (!cJSON_IsObject(vc)) {
        st = vitd_fail(err, VITD_E_MODEL, "config.json: vision_config is not an object");
        goto fail;
    }
    if (!cJSON_GetObjectItemCaseSensitive(vc, "out_hidden_size")) {
        st = vitd_fail(err, VITD_E_MODEL, "%sout_hidden_size is missing (it must equal the LLM's hidden_size)", where);
        goto fail;
    }
    if ((st = json_int(vc, "depth", where, 1, 1024, &c.depth, err)) ||
        (st = json_int(vc, "hidden_size", where, 1, 65536, &c.hidden_size, err)) ||
        (st = json_int(vc, "intermediate_size", where, 1, 1 << 20, &c.intermediate_size, err)) ||
        (st = json_int(vc, "num_heads", where, 1, 4096, &c.num_heads, err)) ||
        (st = json_int(vc, "out_hidden_size", where, 1, 1 << 20, &c.out_hidden_size, err)) ||
        (st = json_int(vc, "patch_size", where, 1, 64, &c.patch_size, err)) ||
        (st = json_int(vc, "temporal_patch_size", where, 1, 16, &c.temporal_patch_size, err)) ||
        (st = json_int(vc, "spatial_merge_size", where, 1, 16, &c.spatial_merge_size, err)) ||
        (st = json_int(vc, "in_channels", where, 3, 3, &c.in_channels, err)) ||
        (st = json_int(vc, "num_position_embeddings", where, 1, 1 << 24, &c.num_position_embeddings, err)))
        goto fail;

    const cJSON *act = cJSON_GetObjectItemCaseSensitive(vc, "hidden_act");
    if (act && (!cJSON_IsString(act) || strcmp(act->valuestring, "gelu_pytorch_tanh") != 0)) {
        st = vitd_fail(err, VITD_E_MODEL, "%shidden_act \"%.40s\" is not supported: Qwen3-VL uses gelu_pytorch_tanh",
                       where, cJSON_IsString(act) ? act->valuestring : "(not a string)");
        goto fail;
    }
    /* the server's answers, its output cache and the CLI count one output token per 2x2 patches */
    if (c.spatial_merge_size != 2) {
        st = vitd_fail(err, VITD_E_MODEL, "%sspatial_merge_size %d is not supported: Qwen3-VL merges 2x2 patches "
                       "(spatial_merge_size 2), which vitd's answers and caches assume", where, c.spatial_merge_size);
        goto fail;
    }

    const cJSON *rp = cJSON_GetObjectItemCaseSensitive(vc, "rope_parameters");
    if (rp && cJSON_IsObject(rp)) {
        if ((st = json_pos(rp, "rope_theta", "config.json: rope_parameters.", &c.rope_theta, err))) goto fail;
    } else if ((st = json_pos(vc, "rope_theta", where, &c.rope_theta, err))) {
        goto fail;
    }

    const cJSON *ds = cJSON_GetObjectItemCaseSensitive(vc, "deepstack_visual_indexes");
    if (ds) {
        if (!cJSON_IsArray(ds)) {
            st = vitd_fail(err, VITD_E_MODEL, "%sdeepstack_visual_indexes must be an array", where);
            goto fail;
        }
        int n = cJSON_GetArraySize(ds);
        if (n > VITD_MAX_DEEPSTACK) {
            st = vitd_fail(err, VITD_E_MODEL, "%sdeepstack_visual_indexes has %d entries, limit %d", where, n,
                           VITD_MAX_DEEPSTACK);
            goto fail;
        }
        c.n_deepstack = 0;
        for (const cJSON *e = ds->child; e; e = e->next) {
            double v = cJSON_IsNumber(e) ? e->valuedouble : -1;
            if (v != floor(v) || v < 0 || v >= c.depth) {
                st = vitd_fail(err, VITD_E_MODEL, "%sdeepstack_visual_indexes[%d] is not a block index in [0, %d)",
                               where, c.n_deepstack, c.depth);
                goto fail;
            }
            if (c.n_deepstack && (int)v <= c.deepstack_indexes[c.n_deepstack - 1]) {
                st = vitd_fail(err, VITD_E_MODEL, "%sdeepstack_visual_indexes must be strictly increasing", where);
                goto fail;
            }
            c.deepstack_indexes[c.n_deepstack++] = (int)v;
        }
    } else {
        /* the default list must still fit the (possibly smaller) depth */
        for (int j = 0; j < c.n_deepstack; j++) {
            if (c.deepstack_indexes[j] >= c.depth) {
                st = vitd_fail(err, VITD_E_MODEL, "%sdeepstack_visual_indexes missing and the default index %d "
                               "is not below depth %d", where, c.deepstack_indexes[j], c.depth);
                goto fail;
            }
        }
    }

    if (c.hidden_size % c.num_heads) {
        st = vitd_fail(err, VITD_E_MODEL, "%shidden_size %d is not divisible by num_heads %d", where, c.hidden_size,
                       c.num_heads);
        goto fail;
    }
    int hd = c.hidden_size / c.num_heads;
    if (hd % 4) {
        st = vitd_fail(err, VITD_E_MODEL, "%shead_dim %d (hidden_size / num_heads) must be divisible by 4 for the "
                       "2-D rotary embedding", where, hd);
        goto fail;
    }
    int side = (int)lround(sqrt((double)c.num_position_embeddings));
    if (side * side != c.num_position_embeddings) {
        st = vitd_fail(err, VITD_E_MODEL, "%snum_position_embeddings %d is not a perfect square", where,
                       c.num_position_embeddings);
        goto fail;
    }

    /* out_hidden_size feeds the LLM: a disagreeing text_config is suspicious but not ours to refuse */
    const cJSON *tc = cJSON_GetObjectItemCaseSensitive(root, "text_config");
    const cJSON *th = tc ? cJSON_GetObjectItemCaseSensitive(tc, "hidden_size") : NULL;
    if (cJSON_IsNumber(th) && th->valuedouble != (double)c.out_hidden_size)
        vitd_log(VITD_LOG_WARN, "config.json: vision_config.out_hidden_size %d differs from text_config.hidden_size %.0f",
                 c.out_hidden_size, th->valuedouble);

    *cfg = c;
fail:
    cJSON_Delete(root);
    return st;
}

/* ---- preprocessor_config.json ---- */

/* Reads a pixel count (non-negative integer) from obj[key]; absent leaves *v. */
static vitd_status json_pixels(const cJSON *obj, const char *key, const char *where, size_t *v, vitd_err *err) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!it) return VITD_OK;
    if (!cJSON_IsNumber(it) || it->valuedouble != floor(it->valuedouble) || it->valuedouble < 1 ||
        it->valuedouble > 1e15)
        return vitd_fail(err, VITD_E_MODEL, "%s%s must be a positive pixel count", where, key);
    *v = (size_t)it->valuedouble;
    return VITD_OK;
}

/* Reads image_mean / image_std: three numbers, or one number for all channels; absent leaves v. */
static vitd_status json_rgb(const cJSON *obj, const char *key, int positive, float v[3], vitd_err *err) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!it) return VITD_OK;
    double x[3];
    if (cJSON_IsNumber(it)) {
        x[0] = x[1] = x[2] = it->valuedouble;
    } else if (cJSON_IsArray(it) && cJSON_GetArraySize(it) == 3) {
        int i = 0;
        for (const cJSON *e = it->child; e; e = e->next, i++) {
            if (!cJSON_IsNumber(e)) goto bad;
            x[i] = e->valuedouble;
        }
    } else {
        goto bad;
    }
    for (int i = 0; i < 3; i++) {
        if (!isfinite(x[i]) || (positive && x[i] <= 0)) goto bad;
        v[i] = (float)x[i];
    }
    return VITD_OK;
bad:
    return vitd_fail(err, VITD_E_MODEL, "preprocessor_config.json: %s must be 3 %snumbers", key,
                     positive ? "positive " : "");
}

static vitd_status json_bool_true(const cJSON *obj, const char *key, vitd_err *err) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (it && !cJSON_IsTrue(it))
        return vitd_fail(err, VITD_E_MODEL, "preprocessor_config.json: %s other than true is not supported", key);
    return VITD_OK;
}

vitd_status checkpoint_parse_preproc(const char *json, vitd_preproc_config *cfg, vitd_err *err) {
    vitd_status st = VITD_OK;
    vitd_preproc_config p = vitd_preproc_config_default();
    const char *where = "preprocessor_config.json: ";
    vitd_err jerr = {0};
    cJSON *root = parse_json_text(json, &jerr);
    if (!root || !cJSON_IsObject(root)) {
        st = root ? vitd_fail(err, VITD_E_MODEL, "preprocessor_config.json is not a JSON object")
                  : vitd_fail(err, VITD_E_MODEL, "preprocessor_config.json is not valid JSON: %s", jerr.msg);
        goto fail;
    }
    const cJSON *size = cJSON_GetObjectItemCaseSensitive(root, "size");
    if (size && !cJSON_IsObject(size)) {
        st = vitd_fail(err, VITD_E_MODEL, "%ssize must be an object", where);
        goto fail;
    }
    if (size && ((st = json_pixels(size, "shortest_edge", "preprocessor_config.json: size.", &p.min_pixels, err)) ||
                 (st = json_pixels(size, "longest_edge", "preprocessor_config.json: size.", &p.max_pixels, err)) ||
                 (st = json_pixels(size, "min_pixels", "preprocessor_config.json: size.", &p.min_pixels, err)) ||
                 (st = json_pixels(size, "max_pixels", "preprocessor_config.json: size.", &p.max_pixels, err))))
        goto fail;
    /* top-level min_pixels / max_pixels override size, as in the HF processor */
    if ((st = json_pixels(root, "min_pixels", where, &p.min_pixels, err)) ||
        (st = json_pixels(root, "max_pixels", where, &p.max_pixels, err)) ||
        (st = json_int(root, "patch_size", where, 1, 64, &p.patch_size, err)) ||
        (st = json_int(root, "temporal_patch_size", where, 1, 16, &p.temporal_patch_size, err)) ||
        (st = json_int(root, "merge_size", where, 1, 16, &p.merge_size, err)) ||
        (st = json_rgb(root, "image_mean", 0, p.image_mean, err)) ||
        (st = json_rgb(root, "image_std", 1, p.image_std, err)) ||
        (st = json_pos(root, "rescale_factor", where, &p.rescale_factor, err)) ||
        (st = json_bool_true(root, "do_resize", err)) || (st = json_bool_true(root, "do_rescale", err)) ||
        (st = json_bool_true(root, "do_normalize", err)) || (st = json_bool_true(root, "do_convert_rgb", err)))
        goto fail;
    const cJSON *rs = cJSON_GetObjectItemCaseSensitive(root, "resample");
    if (rs && !(cJSON_IsNumber(rs) && rs->valuedouble == 3)) {
        st = vitd_fail(err, VITD_E_MODEL, "%sresample other than 3 (bicubic) is not supported", where);
        goto fail;
    }
    if (p.min_pixels > p.max_pixels) {
        st = vitd_fail(err, VITD_E_MODEL, "%smin_pixels %zu exceeds max_pixels %zu", where, p.min_pixels,
                       p.max_pixels);
        goto fail;
    }
    *cfg = p;
fail:
    cJSON_Delete(root);
    return st;
}

/* ---- the expected tensors (MODEL.md section 4) ---- */

typedef struct {
    char name[80];
    int ndim;
    int64_t shape[5];
} ck_expect;

static void expect_add(ck_expect *e, int *n, const char *name, int ndim, int64_t a, int64_t b, int64_t c, int64_t d,
                       int64_t f) {
    ck_expect *x = &e[(*n)++];
    snprintf(x->name, sizeof x->name, "%s", name);
    x->ndim = ndim;
    int64_t s[5] = {a, b, c, d, f};
    memcpy(x->shape, s, sizeof s);
}

/* Builds the list of every vision tensor the config implies; returns the count, *out owned by the caller. */
static int expected_tensors(const vitd_vision_config *c, ck_expect **out) {
    int64_t d = c->hidden_size, I = c->intermediate_size, D = c->out_hidden_size;
    int64_t m4 = d * c->spatial_merge_size * c->spatial_merge_size; /* "4d" */
    int cap = 3 + 12 * c->depth + 6 + 6 * c->n_deepstack, n = 0;
    ck_expect *e = xcalloc((size_t)cap, sizeof *e);
    char nm[80];
    expect_add(e, &n, "patch_embed.proj.weight", 5, d, c->in_channels, c->temporal_patch_size, c->patch_size,
               c->patch_size);
    expect_add(e, &n, "patch_embed.proj.bias", 1, d, 0, 0, 0, 0);
    expect_add(e, &n, "pos_embed.weight", 2, c->num_position_embeddings, d, 0, 0, 0);
    for (int i = 0; i < c->depth; i++) {
        static const struct {
            const char *suffix;
            int ndim, rows, cols; /* symbolic: 1 = d, 2 = 3d, 3 = I */
        } blk[] = {
            {"norm1.weight", 1, 1, 0},         {"norm1.bias", 1, 1, 0},
            {"attn.qkv.weight", 2, 2, 1},      {"attn.qkv.bias", 1, 2, 0},
            {"attn.proj.weight", 2, 1, 1},     {"attn.proj.bias", 1, 1, 0},
            {"norm2.weight", 1, 1, 0},         {"norm2.bias", 1, 1, 0},
            {"mlp.linear_fc1.weight", 2, 3, 1}, {"mlp.linear_fc1.bias", 1, 3, 0},
            {"mlp.linear_fc2.weight", 2, 1, 3}, {"mlp.linear_fc2.bias", 1, 1, 0},
        };
        for (size_t k = 0; k < sizeof blk / sizeof blk[0]; k++) {
            int64_t dims[4] = {0, d, 3 * d, I};
            snprintf(nm, sizeof nm, "blocks.%d.%s", i, blk[k].suffix);
            expect_add(e, &n, nm, blk[k].ndim, dims[blk[k].rows], dims[blk[k].cols], 0, 0, 0);
        }
    }
    for (int j = -1; j < c->n_deepstack; j++) {
        char base[48];
        int64_t norm = j < 0 ? d : m4; /* the final merger normalises before the shuffle, deepstack after */
        if (j < 0) snprintf(base, sizeof base, "merger");
        else snprintf(base, sizeof base, "deepstack_merger_list.%d", j);
        snprintf(nm, sizeof nm, "%s.norm.weight", base);
        expect_add(e, &n, nm, 1, norm, 0, 0, 0, 0);
        snprintf(nm, sizeof nm, "%s.norm.bias", base);
        expect_add(e, &n, nm, 1, norm, 0, 0, 0, 0);
        snprintf(nm, sizeof nm, "%s.linear_fc1.weight", base);
        expect_add(e, &n, nm, 2, m4, m4, 0, 0, 0);
        snprintf(nm, sizeof nm, "%s.linear_fc1.bias", base);
        expect_add(e, &n, nm, 1, m4, 0, 0, 0, 0);
        snprintf(nm, sizeof nm, "%s.linear_fc2.weight", base);
        expect_add(e, &n, nm, 2, D, m4, 0, 0, 0);
        snprintf(nm, sizeof nm, "%s.linear_fc2.bias", base);
        expect_add(e, &n, nm, 1, D, 0, 0, 0, 0);
    }
    VITD_ASSERT(n == cap);
    *out = e;
    return n;
}

/* Formats a shape as "[a, b, c]" into buf. */
static const char *shape_str(char *buf, size_t cap, int ndim, const int64_t *shape) {
    size_t k = (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < ndim && k < cap; i++) k += (size_t)snprintf(buf + k, cap - k, "%s%lld", i ? ", " : "",
                                                                   (long long)shape[i]);
    if (k < cap) snprintf(buf + k, cap - k, "]");
    return buf;
}

/* ---- the model ---- */

void vitd_model_free(vitd_model *m) {
    if (!m) return;
    for (int i = 0; i < m->n; i++) free(m->entries[i].short_name);
    free(m->entries);
    for (int i = 0; i < m->n_files; i++) {
        st_close(m->files[i]);
        free(m->file_names[i]);
    }
    free(m->files);
    free(m->file_names);
    free(m->path);
    free(m);
}

const vitd_vision_config *vitd_model_config(const vitd_model *m) {
    return &m->cfg;
}

const vitd_preproc_config *vitd_model_preproc(const vitd_model *m) {
    return &m->pp;
}

const char *vitd_model_path(const vitd_model *m) {
    return m->path;
}

size_t checkpoint_vision_bytes(const vitd_model *m) {
    return m->vision_bytes;
}

int checkpoint_count(const vitd_model *m) {
    return m->n;
}

const st_tensor *checkpoint_tensor_at(const vitd_model *m, int i, const char **short_name) {
    if (i < 0 || i >= m->n) return NULL;
    if (short_name) *short_name = m->entries[i].short_name;
    return m->entries[i].t;
}

const char *checkpoint_prefix(const vitd_model *m) {
    return m->prefix;
}

int checkpoint_file_count(const vitd_model *m) {
    return m->n_files;
}

const char *checkpoint_file_name(const vitd_model *m, int i) {
    return i >= 0 && i < m->n_files ? m->file_names[i] : NULL;
}

static int entry_cmp(const void *a, const void *b) {
    return strcmp(((const ck_entry *)a)->short_name, ((const ck_entry *)b)->short_name);
}

static const ck_entry *find_entry(const vitd_model *m, const char *short_name) {
    ck_entry key = {.short_name = (char *)short_name};
    return bsearch(&key, m->entries, (size_t)m->n, sizeof key, entry_cmp);
}

const st_tensor *checkpoint_tensor(const vitd_model *m, const char *short_name) {
    const ck_entry *e = find_entry(m, short_name);
    return e ? e->t : NULL;
}

vitd_status checkpoint_tensor_f32(const vitd_model *m, const char *short_name, float *out, vitd_err *err) {
    const st_tensor *t = checkpoint_tensor(m, short_name);
    if (!t) return vitd_fail(err, VITD_E_MODEL, "model %.120s has no vision tensor %.100s", m->path, short_name);
    return st_to_f32(t, out, err);
}

/* Opens dir/name (a plain file name) as the model's next weight file. */
static vitd_status open_weight_file(vitd_model *m, const char *dir, const char *name, vitd_err *err) {
    if (strchr(name, '/') || strcmp(name, "..") == 0 || strcmp(name, ".") == 0 || !*name)
        return vitd_fail(err, VITD_E_MODEL, "weight file name \"%.80s\" must be a plain file name in the model "
                         "directory", name);
    char *p = path_join(dir, name);
    st_file *f;
    vitd_status st = st_open(p, &f, err);
    free(p);
    if (st != VITD_OK) return as_model_error(st, err); /* the message already names the file */
    m->files = realloc(m->files, (size_t)(m->n_files + 1) * sizeof *m->files);
    m->file_names = realloc(m->file_names, (size_t)(m->n_files + 1) * sizeof *m->file_names);
    VITD_ASSERT(m->files && m->file_names);
    m->files[m->n_files] = f;
    m->file_names[m->n_files] = xstrdup(name);
    m->n_files++;
    return VITD_OK;
}

static int str_cmp(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Collects the weight-file names to open, in HF's order of preference (see checkpoint.h). *names is a malloc'd
 * array of *n malloc'd strings; *index_json gets the parsed index (or NULL) for the later cross-check. */
static vitd_status find_weight_files(const char *dir, char ***names, int *n, cJSON **index_json, vitd_err *err) {
    vitd_status st = VITD_OK;
    char *text = NULL, *ipath = NULL;
    DIR *dh = NULL;
    *names = NULL;
    *n = 0;
    *index_json = NULL;
    int cap = 0;
    if (file_exists(dir, "model.safetensors")) {
        *names = xmalloc(sizeof(char *));
        (*names)[(*n)++] = xstrdup("model.safetensors");
        return VITD_OK;
    }
    if (file_exists(dir, "model.safetensors.index.json")) {
        ipath = path_join(dir, "model.safetensors.index.json");
        if ((st = vitd_read_file(ipath, "model.safetensors.index.json", CONFIG_MAX_BYTES, &text, NULL, err)) != VITD_OK) {
            st = as_model_error(st, err);
            goto fail;
        }
        vitd_err jerr = {0};
        cJSON *idx = parse_json_text(text, &jerr);
        const cJSON *wm = idx ? cJSON_GetObjectItemCaseSensitive(idx, "weight_map") : NULL;
        if (!cJSON_IsObject(wm)) {
            cJSON_Delete(idx);
            st = vitd_fail(err, VITD_E_MODEL, "model.safetensors.index.json: %s", idx ? "no weight_map object" : jerr.msg);
            goto fail;
        }
        *index_json = idx;
        for (const cJSON *e = wm->child; e; e = e->next) {
            if (!cJSON_IsString(e)) {
                st = vitd_fail(err, VITD_E_MODEL, "model.safetensors.index.json: weight_map entry %.100s is not a "
                               "file name", e->string);
                goto fail;
            }
            if (vision_prefix(e->string) < 0) continue;
            int seen = 0;
            for (int i = 0; i < *n && !seen; i++) seen = strcmp((*names)[i], e->valuestring) == 0;
            if (seen) continue;
            if (*n == cap) {
                cap = cap ? 2 * cap : 8;
                *names = realloc(*names, (size_t)cap * sizeof(char *));
                VITD_ASSERT(*names);
            }
            (*names)[(*n)++] = xstrdup(e->valuestring);
        }
        if (*n == 0) {
            st = vitd_fail(err, VITD_E_MODEL, "model.safetensors.index.json maps no vision tensors (model.visual.* "
                           "or visual.*)");
            goto fail;
        }
        goto done;
    }
    dh = opendir(dir);
    if (!dh) {
        st = vitd_fail(err, VITD_E_MODEL, "cannot read model directory %.200s: %s", dir, strerror(errno));
        goto fail;
    }
    for (struct dirent *de; (de = readdir(dh));) {
        size_t len = strlen(de->d_name);
        if (len <= 12 || strcmp(de->d_name + len - 12, ".safetensors") != 0) continue;
        if (*n == cap) {
            cap = cap ? 2 * cap : 8;
            *names = realloc(*names, (size_t)cap * sizeof(char *));
            VITD_ASSERT(*names);
        }
        (*names)[(*n)++] = xstrdup(de->d_name);
    }
    if (*n == 0) {
        st = vitd_fail(err, VITD_E_MODEL, "no model.safetensors, model.safetensors.index.json or *.safetensors in "
                       "%.160s", dir);
        goto fail;
    }
    qsort(*names, (size_t)*n, sizeof(char *), str_cmp);
done:
    if (dh) closedir(dh);
    free(text);
    free(ipath);
    return VITD_OK;
fail:
    if (dh) closedir(dh);
    for (int i = 0; i < *n; i++) free((*names)[i]);
    free(*names);
    *names = NULL;
    *n = 0;
    cJSON_Delete(*index_json);
    *index_json = NULL;
    free(text);
    free(ipath);
    return st;
}

/* Gathers the vision tensors of every opened file into m->entries (dropping files without any when glob is
 * set), checks prefixes, duplicates and dtypes, and cross-checks the index's weight_map when there is one. */
static vitd_status collect_vision(vitd_model *m, const cJSON *index_json, int glob, vitd_err *err) {
    int cap = 0;
    const char *seen_name[2] = {NULL, NULL};
    for (int fi = 0; fi < m->n_files; fi++) {
        const st_file *f = m->files[fi];
        int found = 0;
        for (int i = 0; i < st_count(f); i++) {
            const st_tensor *t = st_at(f, i);
            int p = vision_prefix(t->name);
            if (p < 0) continue; /* language model, lm_head: never read */
            if (!seen_name[p]) seen_name[p] = t->name;
            if (seen_name[0] && seen_name[1])
                return vitd_fail(err, VITD_E_MODEL, "checkpoint mixes prefixes: %.90s and %.90s", seen_name[0],
                                 seen_name[1]);
            if (t->dtype != ST_BF16 && t->dtype != ST_F16 && t->dtype != ST_F32)
                return vitd_fail(err, VITD_E_MODEL, "tensor %.100s in %.80s has dtype %s; vitd reads BF16, F16 or F32",
                                 t->name, m->file_names[fi], st_dtype_name(t->dtype));
            if (m->n == cap) {
                cap = cap ? 2 * cap : 256;
                m->entries = realloc(m->entries, (size_t)cap * sizeof *m->entries);
                VITD_ASSERT(m->entries);
            }
            /* fi stays this file's index: only files before it were dropped, and only files without entries */
            m->entries[m->n++] = (ck_entry){xstrdup(t->name + strlen(PREFIXES[p])), t, fi};
            found++;
        }
        if (!found && glob) { /* a file of language-model tensors: close it again */
            st_close(m->files[fi]);
            free(m->file_names[fi]);
            memmove(m->files + fi, m->files + fi + 1, (size_t)(m->n_files - fi - 1) * sizeof *m->files);
            memmove(m->file_names + fi, m->file_names + fi + 1, (size_t)(m->n_files - fi - 1) * sizeof(char *));
            m->n_files--;
            fi--;
        }
    }
    if (m->n == 0)
        return vitd_fail(err, VITD_E_MODEL, "no vision tensors (model.visual.* or visual.*) in %.180s", m->path);
    m->prefix = seen_name[0] ? PREFIXES[0] : PREFIXES[1];
    qsort(m->entries, (size_t)m->n, sizeof *m->entries, entry_cmp);
    for (int i = 1; i < m->n; i++)
        if (strcmp(m->entries[i - 1].short_name, m->entries[i].short_name) == 0)
            return vitd_fail(err, VITD_E_MODEL, "tensor %s%.80s appears in both %.60s and %.60s", m->prefix,
                             m->entries[i].short_name, m->file_names[m->entries[i - 1].file],
                             m->file_names[m->entries[i].file]);
    if (index_json) {
        const cJSON *wm = cJSON_GetObjectItemCaseSensitive(index_json, "weight_map");
        for (const cJSON *e = wm->child; e; e = e->next) {
            int p = vision_prefix(e->string);
            if (p < 0) continue;
            const ck_entry *ce = find_entry(m, e->string + strlen(PREFIXES[p]));
            if (!ce || strcmp(m->file_names[ce->file], e->valuestring) != 0)
                return vitd_fail(err, VITD_E_MODEL, "model.safetensors.index.json maps %.100s to %.60s, which does "
                                 "not hold it", e->string, e->valuestring);
        }
    }
    return VITD_OK;
}

/* Checks presence and shape of every expected tensor, then that no other vision tensor exists. */
static vitd_status check_shapes(vitd_model *m, vitd_err *err) {
    vitd_status st = VITD_OK;
    ck_expect *ex;
    int n_ex = expected_tensors(&m->cfg, &ex);
    char want[96], got[96];
    for (int i = 0; i < n_ex; i++) {
        const ck_entry *e = find_entry(m, ex[i].name);
        if (!e) {
            st = vitd_fail(err, VITD_E_MODEL, "missing tensor %s%s %s (in %d weight file%s of %.80s)", m->prefix,
                           ex[i].name, shape_str(want, sizeof want, ex[i].ndim, ex[i].shape), m->n_files,
                           m->n_files == 1 ? "" : "s", m->path);
            goto fail;
        }
        int same = e->t->ndim == ex[i].ndim;
        for (int k = 0; same && k < ex[i].ndim; k++) same = e->t->shape[k] == ex[i].shape[k];
        if (!same) {
            st = vitd_fail(err, VITD_E_MODEL, "tensor %s%s in %.60s has shape %s, expected %s", m->prefix, ex[i].name,
                           m->file_names[e->file], shape_str(got, sizeof got, e->t->ndim, e->t->shape),
                           shape_str(want, sizeof want, ex[i].ndim, ex[i].shape));
            goto fail;
        }
    }
    if (m->n != n_ex) { /* every expected one is present and names are unique, so there are extras */
        for (int i = 0; i < m->n; i++) {
            int known = 0;
            for (int k = 0; k < n_ex && !known; k++) known = strcmp(m->entries[i].short_name, ex[k].name) == 0;
            if (!known) {
                st = vitd_fail(err, VITD_E_MODEL, "unexpected vision tensor %s%s in %.60s (config: depth %d, %d "
                               "deepstack mergers)", m->prefix, m->entries[i].short_name,
                               m->file_names[m->entries[i].file], m->cfg.depth, m->cfg.n_deepstack);
                goto fail;
            }
        }
        VITD_ASSERT(0);
    }
    for (int i = 0; i < m->n; i++) m->vision_bytes += m->entries[i].t->nbytes;
fail:
    free(ex);
    return st;
}

vitd_status vitd_model_load(const char *dir, vitd_model **out, vitd_err *err) {
    vitd_status st;
    char *text = NULL, *p = NULL, **names = NULL;
    int n_names = 0;
    cJSON *index_json = NULL;
    vitd_model *m = xcalloc(1, sizeof *m);
    *out = NULL;
    m->path = xstrdup(dir);

    p = path_join(dir, "config.json");
    if ((st = vitd_read_file(p, "config.json", CONFIG_MAX_BYTES, &text, NULL, err)) != VITD_OK) {
        st = vitd_fail(err, VITD_E_MODEL, "no readable config.json in %.200s", dir);
        goto fail;
    }
    if ((st = checkpoint_parse_config(text, &m->cfg, err)) != VITD_OK) goto fail;
    free(text);
    free(p);
    text = NULL;

    /* the processor: without a file, defaults sized by the vision config; with one, it must agree with it */
    m->pp = vitd_preproc_config_default();
    m->pp.patch_size = m->cfg.patch_size;
    m->pp.temporal_patch_size = m->cfg.temporal_patch_size;
    m->pp.merge_size = m->cfg.spatial_merge_size;
    p = path_join(dir, "preprocessor_config.json");
    if (file_exists(dir, "preprocessor_config.json")) {
        if ((st = vitd_read_file(p, "preprocessor_config.json", CONFIG_MAX_BYTES, &text, NULL, err)) != VITD_OK) {
            st = as_model_error(st, err);
            goto fail;
        }
        if ((st = checkpoint_parse_preproc(text, &m->pp, err)) != VITD_OK) goto fail;
        const struct {
            const char *pp_key, *cfg_key;
            int pp, cfg;
        } agree[3] = {
            {"patch_size", "patch_size", m->pp.patch_size, m->cfg.patch_size},
            {"temporal_patch_size", "temporal_patch_size", m->pp.temporal_patch_size, m->cfg.temporal_patch_size},
            {"merge_size", "spatial_merge_size", m->pp.merge_size, m->cfg.spatial_merge_size},
        };
        for (int i = 0; i < 3; i++) {
            if (agree[i].pp != agree[i].cfg) {
                st = vitd_fail(err, VITD_E_MODEL, "preprocessor_config.json: %s %d disagrees with config.json's "
                               "vision %s %d", agree[i].pp_key, agree[i].pp, agree[i].cfg_key, agree[i].cfg);
                goto fail;
            }
        }
    }

    if ((st = find_weight_files(dir, &names, &n_names, &index_json, err)) != VITD_OK) goto fail;
    for (int i = 0; i < n_names; i++)
        if ((st = open_weight_file(m, dir, names[i], err)) != VITD_OK) goto fail;
    int glob = !index_json && !(n_names == 1 && strcmp(names[0], "model.safetensors") == 0);
    if ((st = collect_vision(m, index_json, glob, err)) != VITD_OK) goto fail;
    if ((st = check_shapes(m, err)) != VITD_OK) goto fail;
    vitd_log(VITD_LOG_INFO, "model %s: %d vision tensors, %.1f MB in %d file(s), depth %d, hidden %d, out %d",
             dir, m->n, (double)m->vision_bytes / 1e6, m->n_files, m->cfg.depth, m->cfg.hidden_size,
             m->cfg.out_hidden_size);
    st = VITD_OK;
    *out = m;
    m = NULL;
fail:
    for (int i = 0; i < n_names; i++) free(names[i]);
    free(names);
    cJSON_Delete(index_json);
    free(text);
    free(p);
    vitd_model_free(m);
    return st;
}
