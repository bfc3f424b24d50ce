/* labels: unit */
/* test_checkpoint.c — config parsing, checkpoint loading and the demo model writer.
 *
 * The tiny demo model is written to a temporary directory in bf16, f16, f32, as 3 shards with an index (and
 * language-model tensors beside the vision ones), with the old "visual." prefix, and without its index: all load,
 * with the values the writer's recipe gives, identical across layouts and as close across dtypes as the dtype
 * allows. Then each kind of broken checkpoint (missing / misshapen / extra tensor, bad config keys, missing shard,
 * mixed prefixes, unsupported dtype, processor disagreeing) must fail with VITD_E_MODEL and a message naming the
 * culprit. Finally: determinism of the writer, and the time to write and load the real-size 8B preset. */
#include <cJSON.h>
#include <dirent.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "checkpoint.h"
#include "demo_model.h"
#include "util.h"

static char g_root[64];

/* ---- helpers ---- */

static char *sub(const char *name) {
    static char buf[8][256];
    static int k;
    char *p = buf[k++ % 8];
    snprintf(p, 256, "%s/%s", g_root, name);
    return p;
}

static char *in(const char *dir, const char *file) {
    static char buf[8][512];
    static int k;
    char *p = buf[k++ % 8];
    snprintf(p, 512, "%s/%s", dir, file);
    return p;
}

/* Writes the tiny demo model into dir with the given variations. */
static int write_tiny(const char *dir, st_dtype dtype, int shards, const char *prefix, int text_stub, uint64_t seed) {
    vitd_err err = {0};
    demo_model_opts o = demo_model_opts_default();
    o.out_dir = dir;
    o.dtype = dtype;
    o.shards = shards;
    o.prefix = prefix;
    o.text_stub = text_stub;
    o.seed = seed;
    int st = demo_model_write(&o, &err);
    CHECK_OK(st, &err);
    return st == 0;
}

/* How rewrite() changes a weight file. */
typedef struct {
    const char *drop;           /* tensor to leave out */
    const char *reshape;        /* tensor whose shape becomes new_shape (data truncated or zero-padded) */
    int new_ndim;
    int64_t new_shape[4];
    const char *extra;          /* extra tensor (F32, [extra_len]) to add */
    int64_t extra_len;
    st_dtype extra_dtype;
    const char *retype;         /* tensor rewritten as I8 of the same shape */
} rewrite_opts;

/* Rewrites dir/file, copying every tensor except as r says. */
static void rewrite(const char *dir, const char *file, const rewrite_opts *r) {
    vitd_err err = {0};
    st_file *f;
    CHECK_OK(st_open(in(dir, file), &f, &err), &err);
    if (!f) return;
    st_writer *w = st_writer_create();
    for (int i = 0; i < st_count(f); i++) {
        const st_tensor *t = st_at(f, i);
        const char *nm = t->name;
        const char *shortn = strstr(nm, "visual.") ? strstr(nm, "visual.") + 7 : nm;
        if (r->drop && strcmp(shortn, r->drop) == 0) continue;
        if (r->reshape && strcmp(shortn, r->reshape) == 0) {
            size_t n = st_dtype_size(t->dtype);
            for (int k = 0; k < r->new_ndim; k++) n *= (size_t)r->new_shape[k];
            uint8_t *buf = calloc(1, n + 1);
            memcpy(buf, t->data, n < t->nbytes ? n : t->nbytes);
            CHECK_OK(st_writer_add(w, nm, t->dtype, r->new_ndim, r->new_shape, buf, &err), &err);
            free(buf);
            continue;
        }
        if (r->retype && strcmp(shortn, r->retype) == 0) {
            uint8_t *buf = calloc(1, (size_t)st_numel(t) + 1);
            CHECK_OK(st_writer_add(w, nm, ST_I8, t->ndim, t->shape, buf, &err), &err);
            free(buf);
            continue;
        }
        CHECK_OK(st_writer_add(w, nm, t->dtype, t->ndim, t->shape, t->data, &err), &err);
    }
    if (r->extra) {
        size_t n = (size_t)r->extra_len * st_dtype_size(r->extra_dtype);
        uint8_t *buf = calloc(1, n + 1);
        CHECK_OK(st_writer_add(w, r->extra, r->extra_dtype, 1, &r->extra_len, buf, &err), &err);
        free(buf);
    }
    st_close(f);
    CHECK_OK(st_writer_save(w, in(dir, file), &err), &err);
    st_writer_free(w);
}

/* Reads dir/file as JSON, lets edit change it, writes it back. */
static void edit_json(const char *dir, const char *file, void (*edit)(cJSON *root)) {
    size_t len;
    char *text = (char *)check_read_file(in(dir, file), &len);
    CHECK(text != NULL);
    if (!text) return;
    char *t0 = realloc(text, len + 1);
    t0[len] = 0;
    cJSON *root = cJSON_Parse(t0);
    free(t0);
    edit(root);
    char *out = cJSON_Print(root);
    FILE *f = fopen(in(dir, file), "wb");
    fputs(out, f);
    fclose(f);
    cJSON_free(out);
    cJSON_Delete(root);
}

static cJSON *vc_of(cJSON *root) {
    return cJSON_GetObjectItemCaseSensitive(root, "vision_config");
}

/* Loads dir expecting VITD_E_MODEL with a message containing each of the needles. */
static void expect_model_error(const char *what, const char *dir, const char *needle1, const char *needle2) {
    vitd_err err = {0};
    vitd_model *m = (vitd_model *)1;
    vitd_status st = vitd_model_load(dir, &m, &err);
    CHECK_MSG(st == VITD_E_MODEL, "%s: status %d (%s)", what, st, err.msg);
    CHECK(m == NULL);
    CHECK_STR_CONTAINS(err.msg, needle1);
    if (needle2) CHECK_STR_CONTAINS(err.msg, needle2);
    printf("  %-28s -> %s\n", what, err.msg);
}

/* ---- config parsing ---- */

static void test_parse_config(void) {
    vitd_err err = {0};
    vitd_vision_config c;
    /* the 8B config.json as released (abridged text_config) */
    const char *full =
        "{\"architectures\": [\"Qwen3VLForConditionalGeneration\"], \"model_type\": \"qwen3_vl\","
        " \"text_config\": {\"hidden_size\": 4096, \"num_hidden_layers\": 36, \"rope_theta\": 5000000},"
        " \"vision_config\": {\"deepstack_visual_indexes\": [8, 16, 24], \"depth\": 27, \"hidden_act\": "
        "\"gelu_pytorch_tanh\", \"hidden_size\": 1152, \"in_channels\": 3, \"initializer_range\": 0.02, "
        "\"intermediate_size\": 4304, \"model_type\": \"qwen3_vl\", \"num_heads\": 16, \"num_position_embeddings\": "
        "2304, \"out_hidden_size\": 4096, \"patch_size\": 16, \"spatial_merge_size\": 2, \"temporal_patch_size\": 2}}";
    CHECK_OK(checkpoint_parse_config(full, &c, &err), &err);
    CHECK_EQ_INT(27, c.depth);
    CHECK_EQ_INT(1152, c.hidden_size);
    CHECK_EQ_INT(4304, c.intermediate_size);
    CHECK_EQ_INT(16, c.num_heads);
    CHECK_EQ_INT(4096, c.out_hidden_size);
    CHECK_EQ_INT(3, c.n_deepstack);
    CHECK(c.deepstack_indexes[0] == 8 && c.deepstack_indexes[1] == 16 && c.deepstack_indexes[2] == 24);
    CHECK(c.rope_theta == 10000.0); /* text_config's rope_theta is the LLM's, not the tower's */
    CHECK(c.ln_eps == 1e-6);

    /* a bare vision config with few keys takes the defaults; rope theta from rope_parameters or rope_theta */
    CHECK_OK(checkpoint_parse_config("{\"out_hidden_size\": 2048, \"depth\": 24, \"hidden_size\": 1024, "
                                     "\"intermediate_size\": 4096, \"deepstack_visual_indexes\": [5, 11, 17], "
                                     "\"rope_parameters\": {\"rope_theta\": 20000.0, \"rope_type\": \"axial\"}}",
                                     &c, &err), &err);
    CHECK(c.depth == 24 && c.hidden_size == 1024 && c.num_heads == 16 && c.out_hidden_size == 2048);
    CHECK(c.patch_size == 16 && c.temporal_patch_size == 2 && c.spatial_merge_size == 2 && c.in_channels == 3);
    CHECK(c.num_position_embeddings == 2304 && c.deepstack_indexes[1] == 11);
    CHECK(c.rope_theta == 20000.0);
    CHECK_OK(checkpoint_parse_config("{\"out_hidden_size\": 64, \"rope_theta\": 5000}", &c, &err), &err);
    CHECK(c.rope_theta == 5000.0 && c.depth == 27 && c.n_deepstack == 3);

    static const struct {
        const char *json, *needle;
    } bad[] = {
        {"{\"vision_config\": {\"depth\": 4}}", "out_hidden_size is missing"},
        {"{\"out_hidden_size\": 64, \"num_heads\": 5}", "not divisible by num_heads 5"},
        {"{\"out_hidden_size\": 64, \"hidden_size\": 120, \"num_heads\": 4}", "head_dim 30"},
        {"{\"out_hidden_size\": 64, \"hidden_act\": \"silu\"}", "hidden_act \"silu\""},
        {"{\"out_hidden_size\": 64, \"hidden_act\": \"gelu\"}", "gelu_pytorch_tanh"},
        {"{\"out_hidden_size\": 64, \"deepstack_visual_indexes\": [8, 27]}", "deepstack_visual_indexes[1]"},
        {"{\"out_hidden_size\": 64, \"deepstack_visual_indexes\": [-1]}", "deepstack_visual_indexes[0]"},
        {"{\"out_hidden_size\": 64, \"deepstack_visual_indexes\": [16, 8]}", "strictly increasing"},
        {"{\"out_hidden_size\": 64, \"deepstack_visual_indexes\": [0,1,2,3,4,5,6,7,8]}", "limit 8"},
        {"{\"out_hidden_size\": 64, \"deepstack_visual_indexes\": 3}", "must be an array"},
        {"{\"out_hidden_size\": 64, \"depth\": 4}", "default index 8"},
        {"{\"out_hidden_size\": 64, \"num_position_embeddings\": 2300}", "not a perfect square"},
        {"{\"out_hidden_size\": 64, \"depth\": 0}", "depth = 0 is outside"},
        {"{\"out_hidden_size\": 64, \"depth\": 2.5}", "depth must be an integer"},
        {"{\"out_hidden_size\": \"64\"}", "out_hidden_size must be an integer"},
        {"{\"out_hidden_size\": 64, \"hidden_size\": 1e12}", "hidden_size"},
        {"{\"out_hidden_size\": 64, \"in_channels\": 4}", "in_channels"},
        {"{\"out_hidden_size\": 64, \"patch_size\": 0}", "patch_size"},
        {"{\"out_hidden_size\": 64, \"spatial_merge_size\": 100}", "spatial_merge_size"},
        {"{\"out_hidden_size\": 64, \"spatial_merge_size\": 1}", "spatial_merge_size 1 is not supported"},
        {"{\"out_hidden_size\": 64, \"spatial_merge_size\": 4}", "spatial_merge_size 4 is not supported"},
        {"{\"out_hidden_size\": 64, \"rope_theta\": -1}", "rope_theta"},
        {"{\"vision_config\": 3}", "vision_config is not an object"},
        {"[1]", "not a JSON object"},
        {"{\"out_hidden_size\": 64,", "not valid JSON"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        vitd_status st = checkpoint_parse_config(bad[i].json, &c, &err);
        CHECK_MSG(st == VITD_E_MODEL, "%s: status %d", bad[i].json, st);
        CHECK_STR_CONTAINS(err.msg, bad[i].needle);
    }
    CHECK_EQ_INT(VITD_E_MODEL, checkpoint_parse_config("{\"out_hidden_size\": 64} {}", &c, &err));

    /* fuzz: byte mutations of the real config either parse into a config that passes every check, or fail
     * with VITD_E_MODEL and a message; never anything else */
    size_t len = strlen(full);
    char *buf = malloc(len + 1);
    unsigned long long rng = 11;
    int ok = 0, failed = 0, other = 0;
    for (int it = 0; it < 3000; it++) {
        memcpy(buf, full, len + 1);
        int k = 1 + (int)(check_rng_next(&rng) % 4);
        for (int j = 0; j < k; j++) buf[check_rng_next(&rng) % len] = "0123456789-.e,:[]{}\" x"[check_rng_next(&rng) % 22];
        memset(&err, 0, sizeof err);
        vitd_status st = checkpoint_parse_config(buf, &c, &err);
        if (st == VITD_OK) {
            ok++;
            other += c.hidden_size % c.num_heads != 0 || (c.hidden_size / c.num_heads) % 4 != 0 || c.depth < 1 ||
                     c.n_deepstack > VITD_MAX_DEEPSTACK || c.out_hidden_size < 1;
            for (int j = 0; j < c.n_deepstack; j++) other += c.deepstack_indexes[j] >= c.depth;
        } else {
            failed++;
            other += st != VITD_E_MODEL || err.msg[0] == 0;
        }
    }
    printf("  config fuzz: 3000 mutations, %d accepted, %d refused, %d bad outcomes\n", ok, failed, other);
    CHECK_EQ_INT(0, other);
    free(buf);
}

static void test_parse_preproc(void) {
    vitd_err err = {0};
    vitd_preproc_config p;
    CHECK_OK(checkpoint_parse_preproc("{}", &p, &err), &err);
    CHECK(p.min_pixels == 65536 && p.max_pixels == 16777216 && p.patch_size == 16 && p.merge_size == 2);
    CHECK(p.image_mean[2] == 0.5f && p.image_std[0] == 0.5f && fabs(p.rescale_factor - 1.0 / 255) < 1e-15);
    CHECK_OK(checkpoint_parse_preproc("{\"size\": {\"shortest_edge\": 3136, \"longest_edge\": 12845056}, "
                                      "\"patch_size\": 14, \"merge_size\": 2, \"temporal_patch_size\": 2, "
                                      "\"image_mean\": [0.48145466, 0.4578275, 0.40821073], \"image_std\": 0.25, "
                                      "\"rescale_factor\": 0.00392156862745098, \"do_resize\": true, "
                                      "\"resample\": 3, \"image_processor_type\": \"Qwen2VLImageProcessorFast\"}",
                                      &p, &err), &err);
    CHECK(p.min_pixels == 3136 && p.max_pixels == 12845056 && p.patch_size == 14);
    CHECK(p.image_mean[0] == 0.48145466f && p.image_mean[2] == 0.40821073f && p.image_std[1] == 0.25f);
    /* top-level min_pixels / max_pixels override size */
    CHECK_OK(checkpoint_parse_preproc("{\"size\": {\"shortest_edge\": 3136, \"longest_edge\": 12845056}, "
                                      "\"min_pixels\": 1000, \"max_pixels\": 2000000}", &p, &err), &err);
    CHECK(p.min_pixels == 1000 && p.max_pixels == 2000000);
    static const struct {
        const char *json, *needle;
    } bad[] = {
        {"{\"min_pixels\": 5000, \"max_pixels\": 4000}", "min_pixels 5000 exceeds max_pixels 4000"},
        {"{\"size\": {\"shortest_edge\": -1}}", "size.shortest_edge"},
        {"{\"size\": 7}", "size must be an object"},
        {"{\"image_std\": [0.5, 0, 0.5]}", "image_std"},
        {"{\"image_mean\": [0.5, 0.5]}", "image_mean"},
        {"{\"rescale_factor\": 0}", "rescale_factor"},
        {"{\"patch_size\": 1.5}", "patch_size"},
        {"{\"resample\": 2}", "resample"},
        {"{\"do_resize\": false}", "do_resize"},
        {"{\"do_normalize\": false}", "do_normalize"},
        {"nonsense", "not valid JSON"},
        {"[]", "not a JSON object"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        vitd_status st = checkpoint_parse_preproc(bad[i].json, &p, &err);
        CHECK_MSG(st == VITD_E_MODEL, "%s: status %d", bad[i].json, st);
        CHECK_STR_CONTAINS(err.msg, bad[i].needle);
    }
}

/* ---- loading the demo model ---- */

/* All vision tensors of m as float32, in checkpoint order (short names sorted). Caller frees. */
static float **load_all(const vitd_model *m, int *n) {
    vitd_err err = {0};
    *n = checkpoint_count(m);
    float **v = calloc((size_t)*n, sizeof *v);
    for (int i = 0; i < *n; i++) {
        const char *nm;
        const st_tensor *t = checkpoint_tensor_at(m, i, &nm);
        v[i] = malloc((size_t)st_numel(t) * 4 + 4);
        CHECK_OK(checkpoint_tensor_f32(m, nm, v[i], &err), &err);
    }
    return v;
}

static void free_all(float **v, int n) {
    for (int i = 0; i < n; i++) free(v[i]);
    free(v);
}

/* Compares every tensor of a against b: exactly (bits) or within tol relative to each tensor's scale. */
static void compare_models(const char *what, const vitd_model *a, float **va, const vitd_model *b, float **vb,
                           int exact, double rtol) {
    CHECK_EQ_INT(checkpoint_count(a), checkpoint_count(b));
    double worst_rel = 0, worst_cos = 1;
    int mismatched = 0;
    for (int i = 0; i < checkpoint_count(a) && i < checkpoint_count(b); i++) {
        const char *na, *nb;
        const st_tensor *ta = checkpoint_tensor_at(a, i, &na), *tb = checkpoint_tensor_at(b, i, &nb);
        CHECK(strcmp(na, nb) == 0 && st_numel(ta) == st_numel(tb));
        size_t n = (size_t)st_numel(ta);
        if (exact) {
            mismatched += memcmp(va[i], vb[i], n * 4) != 0;
        } else {
            /* half the spacing of f16 subnormals as atol, rtol for normal numbers */
            cmp_stats s = cmp_f32(va[i], vb[i], n, rtol > 0 ? ldexp(1.0, -25) : 0, rtol);
            if (s.max_rel > worst_rel) worst_rel = s.max_rel;
            if (s.cosine < worst_cos) worst_cos = s.cosine;
            mismatched += s.n_bad > 0;
        }
    }
    if (exact) printf("  %-40s bit-identical in %d/%d tensors\n", what, checkpoint_count(a) - mismatched,
                      checkpoint_count(a));
    else printf("  %-40s worst max_rel %.3e, worst cosine %.9f, %d tensors outside rtol %.1e\n", what, worst_rel,
                worst_cos, mismatched, rtol);
    CHECK_MSG(mismatched == 0, "%s: %d tensors differ", what, mismatched);
}

/* Loads the bf16 tiny model and checks config, names, shapes and values against the writer's recipe. */
static void test_load_tiny(vitd_model **out) {
    vitd_err err = {0};
    const char *dir = sub("bf16");
    *out = NULL;
    if (!write_tiny(dir, ST_BF16, 1, "model.visual.", 0, 0)) return;
    vitd_model *m;
    CHECK_OK(vitd_model_load(dir, &m, &err), &err);
    if (!m) return;
    vitd_vision_config want;
    CHECK_OK(demo_model_config("tiny", &want, &err), &err);
    const vitd_vision_config *c = vitd_model_config(m);
    CHECK(c->depth == want.depth && c->hidden_size == want.hidden_size &&
          c->intermediate_size == want.intermediate_size && c->num_heads == want.num_heads &&
          c->out_hidden_size == want.out_hidden_size && c->patch_size == want.patch_size &&
          c->temporal_patch_size == want.temporal_patch_size && c->spatial_merge_size == want.spatial_merge_size &&
          c->in_channels == want.in_channels && c->num_position_embeddings == want.num_position_embeddings &&
          c->n_deepstack == want.n_deepstack && c->rope_theta == want.rope_theta && c->ln_eps == want.ln_eps);
    CHECK(c->intermediate_size == 576 && c->num_position_embeddings == 2304);
    CHECK(c->depth == 4 && c->hidden_size == 144 && c->num_heads == 2 && c->out_hidden_size == 64);
    CHECK(c->n_deepstack == 2 && c->deepstack_indexes[0] == 1 && c->deepstack_indexes[1] == 2);
    const vitd_preproc_config *p = vitd_model_preproc(m);
    CHECK(p->min_pixels == 65536 && p->max_pixels == 16777216 && p->patch_size == 16 && p->merge_size == 2);
    CHECK(strcmp(vitd_model_path(m), dir) == 0);
    CHECK(strcmp(checkpoint_prefix(m), "model.visual.") == 0);
    CHECK_EQ_INT(1, checkpoint_file_count(m));
    CHECK_STR_CONTAINS(checkpoint_file_name(m, 0), "model.safetensors");
    CHECK_EQ_INT(3 + 12 * 4 + 6 * 3, checkpoint_count(m));

    /* shapes of MODEL.md section 4 for d = 144, I = 576, 4d = 576, D_out = 64 */
    static const struct {
        const char *name;
        int ndim;
        int64_t shape[5];
    } shapes[] = {
        {"patch_embed.proj.weight", 5, {144, 3, 2, 16, 16}}, {"pos_embed.weight", 2, {2304, 144}},
        {"blocks.3.attn.qkv.weight", 2, {432, 144}},         {"blocks.0.attn.qkv.bias", 1, {432}},
        {"blocks.2.mlp.linear_fc1.weight", 2, {576, 144}},   {"blocks.2.mlp.linear_fc2.weight", 2, {144, 576}},
        {"merger.norm.weight", 1, {144}},                    {"merger.linear_fc1.weight", 2, {576, 576}},
        {"merger.linear_fc2.weight", 2, {64, 576}},          {"deepstack_merger_list.1.norm.bias", 1, {576}},
        {"deepstack_merger_list.0.linear_fc2.bias", 1, {64}},
    };
    size_t bytes = 0;
    for (int i = 0; i < checkpoint_count(m); i++) bytes += checkpoint_tensor_at(m, i, NULL)->nbytes;
    CHECK_EQ_INT(bytes, checkpoint_vision_bytes(m));
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        const st_tensor *t = checkpoint_tensor(m, shapes[i].name);
        CHECK_MSG(t != NULL, "%s missing", shapes[i].name);
        if (!t) continue;
        CHECK_EQ_INT(ST_BF16, t->dtype);
        CHECK_EQ_INT(shapes[i].ndim, t->ndim);
        for (int k = 0; k < shapes[i].ndim; k++) CHECK_EQ_INT(shapes[i].shape[k], t->shape[k]);
    }
    CHECK(checkpoint_tensor(m, "blocks.4.norm1.weight") == NULL);
    CHECK_EQ_INT(VITD_E_MODEL, checkpoint_tensor_f32(m, "nope", NULL, &err));
    CHECK_STR_CONTAINS(err.msg, "nope");

    /* values: sampled elements equal the recipe rounded to bf16, and the statistics follow the recipe */
    demo_model_opts o = demo_model_opts_default();
    unsigned long long rng = 5;
    int bad = 0, checked = 0;
    for (int i = 0; i < checkpoint_count(m); i++) {
        const char *nm;
        const st_tensor *t = checkpoint_tensor_at(m, i, &nm);
        int64_t n = st_numel(t);
        float *x = malloc((size_t)n * 4);
        CHECK_OK(checkpoint_tensor_f32(m, nm, x, &err), &err);
        for (int k = 0; k < 40; k++) {
            int64_t j = k == 0 ? 0 : k == 1 ? n - 1 : (int64_t)(check_rng_next(&rng) % (uint64_t)n);
            bad += x[j] != bf16_to_f32(f32_to_bf16(demo_model_value(&o, nm, j)));
            checked++;
        }
        free(x);
    }
    CHECK_MSG(bad == 0, "%d of %d sampled values differ from demo_model_value", bad, checked);
    CHECK(isnan(demo_model_value(&o, "no.such.tensor", 0)));

    static const struct {
        const char *name;
        int64_t first, count;
        double mean, std;
    } stats[] = {
        {"blocks.1.attn.qkv.weight", 0, 2 * 144 * 144, 0, 1.5 / 12},      /* q and k rows */
        {"blocks.1.attn.qkv.weight", 2 * 144 * 144, 144 * 144, 0, 1.0 / 12}, /* v rows */
        {"blocks.1.norm1.weight", 0, 144, 1, 0.1},
        {"pos_embed.weight", 0, 2304 * 144, 0, 0.5},
        {"patch_embed.proj.weight", 0, 144 * 1536, 0, 1 / sqrt(1536.0)},
        {"blocks.0.mlp.linear_fc2.weight", 0, 144 * 576, 0, 1 / sqrt(576.0) / sqrt(8.0)},
    };
    for (size_t i = 0; i < sizeof stats / sizeof stats[0]; i++) {
        const st_tensor *t = checkpoint_tensor(m, stats[i].name);
        float *x = malloc((size_t)st_numel(t) * 4);
        CHECK_OK(checkpoint_tensor_f32(m, stats[i].name, x, &err), &err);
        double s = 0, s2 = 0;
        for (int64_t j = stats[i].first; j < stats[i].first + stats[i].count; j++) s += x[j];
        double mean = s / (double)stats[i].count;
        for (int64_t j = stats[i].first; j < stats[i].first + stats[i].count; j++) s2 += (x[j] - mean) * (x[j] - mean);
        double sd = sqrt(s2 / (double)stats[i].count);
        printf("  %-32s [%lld, +%lld): mean %+.4f std %.4f (recipe %.4f)\n", stats[i].name,
               (long long)stats[i].first, (long long)stats[i].count, mean, sd, stats[i].std);
        CHECK(fabs(mean - stats[i].mean) < 4 * stats[i].std / sqrt((double)stats[i].count) + 1e-3);
        CHECK(fabs(sd / stats[i].std - 1) < 0.15);
        free(x);
    }
    *out = m;
}

/* Makes a config.json hold only its vision_config's members. */
static void to_bare(cJSON *r) {
    cJSON *vc = cJSON_DetachItemFromObject(r, "vision_config");
    while (r->child) cJSON_Delete(cJSON_DetachItemViaPointer(r, r->child));
    while (vc->child) {
        cJSON *e = cJSON_DetachItemViaPointer(vc, vc->child);
        cJSON_AddItemToObject(r, e->string, e);
    }
    cJSON_Delete(vc);
}

static void test_layouts(const vitd_model *ref) {
    vitd_err err = {0};
    int n_ref;
    float **vref = load_all(ref, &n_ref);

    struct {
        const char *name;
        st_dtype dtype;
        int shards, stub;
        const char *prefix;
    } v[] = {
        {"f32", ST_F32, 1, 0, "model.visual."},
        {"f16", ST_F16, 1, 0, "model.visual."},
        {"sharded", ST_BF16, 3, 1, "model.visual."},
        {"visual", ST_BF16, 1, 1, "visual."},
    };
    float **vf32 = NULL;
    int n32 = 0;
    for (size_t k = 0; k < sizeof v / sizeof v[0]; k++) {
        const char *dir = sub(v[k].name);
        if (!write_tiny(dir, v[k].dtype, v[k].shards, v[k].prefix, v[k].stub, 0)) continue;
        vitd_model *m;
        CHECK_OK(vitd_model_load(dir, &m, &err), &err);
        if (!m) continue;
        CHECK_STR_CONTAINS(checkpoint_prefix(m), v[k].prefix);
        CHECK_EQ_INT(v[k].shards, checkpoint_file_count(m));
        CHECK(checkpoint_tensor(m, "model.language_model.embed_tokens.weight") == NULL);
        CHECK(checkpoint_tensor(m, "lm_head.weight") == NULL);
        int n;
        float **vals = load_all(m, &n);
        char what[64];
        if (v[k].dtype == ST_F32) {
            /* f32 holds the recipe exactly: rounding it to bf16 gives the bf16 model bit for bit */
            for (int i = 0; i < n; i++) {
                size_t ne = (size_t)st_numel(checkpoint_tensor_at(m, i, NULL));
                float *r = malloc(ne * 4);
                for (size_t j = 0; j < ne; j++) r[j] = bf16_to_f32(f32_to_bf16(vals[i][j]));
                free(vals[i]);
                vals[i] = r;
            }
            compare_models("f32 rounded to bf16 vs bf16", m, vals, ref, vref, 1, 0);
            free_all(vals, n);
            /* keep the exact values for the f16 comparison */
            vf32 = load_all(m, &n32);
        } else if (v[k].dtype == ST_F16) {
            /* f16 keeps 11 significant bits where bf16 keeps 8: compare with the exact f32 values */
            if (vf32) compare_models("f16 vs f32", m, vals, m, vf32, 0, 1.0 / 2048);
            free_all(vals, n);
        } else {
            snprintf(what, sizeof what, "%s vs single-file bf16", v[k].name);
            compare_models(what, m, vals, ref, vref, 1, 0);
            free_all(vals, n);
        }
        vitd_model_free(m);
    }
    if (vf32) free_all(vf32, n32);

    /* the sharded files really hold language-model tensors next to vision ones */
    st_file *f;
    CHECK_OK(st_open(in(sub("sharded"), "model-00001-of-00003.safetensors"), &f, &err), &err);
    if (f) {
        CHECK(st_find(f, "model.language_model.embed_tokens.weight") != NULL);
        CHECK(st_find(f, "model.visual.patch_embed.proj.weight") != NULL);
        st_close(f);
    }

    /* an index entry for a language-model shard that does not exist: never opened, so the load succeeds */
    const char *sh = sub("sharded");
    vitd_model *m;
    size_t len;
    char *idx = (char *)check_read_file(in(sh, "model.safetensors.index.json"), &len);
    CHECK(idx != NULL);
    if (idx) {
        cJSON *root = cJSON_ParseWithLength(idx, len);
        cJSON_AddStringToObject(cJSON_GetObjectItemCaseSensitive(root, "weight_map"),
                                "model.language_model.layers.0.mlp.up_proj.weight", "model-text-only.safetensors");
        char *o = cJSON_Print(root);
        FILE *fp = fopen(in(sh, "model.safetensors.index.json"), "wb");
        fputs(o, fp);
        fclose(fp);
        cJSON_free(o);
        cJSON_Delete(root);
        CHECK_OK(vitd_model_load(sh, &m, &err), &err);
        vitd_model_free(m);
        fp = fopen(in(sh, "model.safetensors.index.json"), "wb");
        fwrite(idx, 1, len, fp);
        fclose(fp);
        free(idx);
    }

    /* a bare vision config (no vision_config wrapper) */
    const char *bare = sub("bare");
    if (write_tiny(bare, ST_BF16, 1, "model.visual.", 0, 0)) {
        edit_json(bare, "config.json", to_bare);
        CHECK_OK(vitd_model_load(bare, &m, &err), &err);
        if (m) CHECK(vitd_model_config(m)->hidden_size == 144 && vitd_model_config(m)->n_deepstack == 2);
        vitd_model_free(m);
    }

    /* without the index every *.safetensors is opened; a language-only file is closed again */
    const char *gl = sub("glob");
    if (write_tiny(gl, ST_BF16, 3, "model.visual.", 1, 0)) {
        unlink(in(gl, "model.safetensors.index.json"));
        st_writer *w = st_writer_create();
        int64_t shape[2] = {4, 4};
        float z[16] = {0};
        CHECK_OK(st_writer_add_f32(w, "model.language_model.norm.weight", ST_BF16, 2, shape, z, &err), &err);
        CHECK_OK(st_writer_save(w, in(gl, "text-extra.safetensors"), &err), &err);
        st_writer_free(w);
        CHECK_OK(vitd_model_load(gl, &m, &err), &err);
        if (m) {
            CHECK_EQ_INT(3, checkpoint_file_count(m));
            int n;
            float **vals = load_all(m, &n);
            compare_models("glob of 3 shards vs bf16", m, vals, ref, vref, 1, 0);
            free_all(vals, n);
            vitd_model_free(m);
        }
    }
    free_all(vref, n_ref);
}

/* ---- broken checkpoints ---- */

static void cfg_heads(cJSON *r) { cJSON_ReplaceItemInObject(vc_of(r), "num_heads", cJSON_CreateNumber(5)); }
static void cfg_no_out(cJSON *r) { cJSON_DeleteItemFromObject(vc_of(r), "out_hidden_size"); }
static void cfg_act(cJSON *r) { cJSON_ReplaceItemInObject(vc_of(r), "hidden_act", cJSON_CreateString("quick_gelu")); }
static void cfg_ds(cJSON *r) {
    int ds[2] = {1, 4};
    cJSON_ReplaceItemInObject(vc_of(r), "deepstack_visual_indexes", cJSON_CreateIntArray(ds, 2));
}
static void cfg_depth3(cJSON *r) { cJSON_ReplaceItemInObject(vc_of(r), "depth", cJSON_CreateNumber(3)); }
static void pp_patch14(cJSON *r) { cJSON_ReplaceItemInObject(r, "patch_size", cJSON_CreateNumber(14)); }
static void idx_wrong_shard(cJSON *r) {
    cJSON_ReplaceItemInObject(cJSON_GetObjectItemCaseSensitive(r, "weight_map"), "model.visual.pos_embed.weight",
                              cJSON_CreateString("model-00003-of-00003.safetensors"));
}

static void test_broken(void) {
    char *d;
    rewrite_opts r;

    d = sub("missing_tensor");
    if (write_tiny(d, ST_BF16, 1, "model.visual.", 0, 0)) {
        r = (rewrite_opts){.drop = "blocks.2.attn.proj.bias"};
        rewrite(d, "model.safetensors", &r);
        expect_model_error("missing tensor", d, "missing tensor model.visual.blocks.2.attn.proj.bias", "[144]");
    }
    d = sub("wrong_shape");
    if (write_tiny(d, ST_BF16, 1, "model.visual.", 0, 0)) {
        r = (rewrite_opts){.reshape = "merger.linear_fc2.weight", .new_ndim = 2, .new_shape = {65, 576}};
        rewrite(d, "model.safetensors", &r);
        expect_model_error("wrong shape", d, "merger.linear_fc2.weight in model.safetensors has shape [65, 576]",
                           "expected [64, 576]");
    }
    d = sub("wrong_rank");
    if (write_tiny(d, ST_BF16, 1, "model.visual.", 0, 0)) {
        r = (rewrite_opts){.reshape = "patch_embed.proj.weight", .new_ndim = 2, .new_shape = {144, 1536}};
        rewrite(d, "model.safetensors", &r);
        expect_model_error("flattened conv weight", d, "patch_embed.proj.weight", "expected [144, 3, 2, 16, 16]");
    }
    d = sub("extra_block");
    if (write_tiny(d, ST_BF16, 1, "model.visual.", 0, 0)) {
        r = (rewrite_opts){.extra = "model.visual.blocks.4.norm1.weight", .extra_len = 144, .extra_dtype = ST_BF16};
        rewrite(d, "model.safetensors", &r);
        expect_model_error("extra block", d, "unexpected vision tensor model.visual.blocks.4.norm1.weight", NULL);
    }
    d = sub("config_depth3"); /* the config says 3 blocks, the file holds 4 */
    if (write_tiny(d, ST_BF16, 1, "model.visual.", 0, 0)) {
        edit_json(d, "config.json", cfg_depth3);
        expect_model_error("depth below the file's", d, "unexpected vision tensor model.visual.blocks.3.", NULL);
    }
    d = sub("extra_deepstack");
    if (write_tiny(d, ST_BF16, 1, "model.visual.", 0, 0)) {
        r = (rewrite_opts){.extra = "model.visual.deepstack_merger_list.2.norm.bias", .extra_len = 576,
                           .extra_dtype = ST_BF16};
        rewrite(d, "model.safetensors", &r);
        expect_model_error("extra deepstack merger", d, "deepstack_merger_list.2.norm.bias", "2 deepstack");
    }
    d = sub("both_prefixes");
    if (write_tiny(d, ST_BF16, 1, "model.visual.", 0, 0)) {
        r = (rewrite_opts){.extra = "visual.blocks.0.norm1.weight", .extra_len = 144, .extra_dtype = ST_BF16};
        rewrite(d, "model.safetensors", &r);
        expect_model_error("both prefixes", d, "mixes prefixes", "visual.blocks.0.norm1.weight");
    }
    d = sub("int_dtype");
    if (write_tiny(d, ST_BF16, 1, "model.visual.", 0, 0)) {
        r = (rewrite_opts){.retype = "blocks.1.norm2.bias"};
        rewrite(d, "model.safetensors", &r);
        expect_model_error("I8 vision tensor", d, "blocks.1.norm2.bias", "dtype I8");
    }
    d = sub("bad_heads");
    if (write_tiny(d, ST_BF16, 1, "model.visual.", 0, 0)) {
        edit_json(d, "config.json", cfg_heads);
        expect_model_error("heads not dividing hidden", d, "vision_config.hidden_size 144", "num_heads 5");
        edit_json(d, "config.json", cfg_no_out);
        expect_model_error("no out_hidden_size", d, "out_hidden_size", NULL);
    }
    d = sub("bad_act");
    if (write_tiny(d, ST_BF16, 1, "model.visual.", 0, 0)) {
        edit_json(d, "config.json", cfg_act);
        expect_model_error("hidden_act", d, "hidden_act \"quick_gelu\"", NULL);
    }
    d = sub("bad_ds");
    if (write_tiny(d, ST_BF16, 1, "model.visual.", 0, 0)) {
        edit_json(d, "config.json", cfg_ds);
        expect_model_error("deepstack index 4 of depth 4", d, "deepstack_visual_indexes[1]", "[0, 4)");
    }
    d = sub("bad_pp");
    if (write_tiny(d, ST_BF16, 1, "model.visual.", 0, 0)) {
        edit_json(d, "preprocessor_config.json", pp_patch14);
        expect_model_error("processor patch 14", d, "preprocessor_config.json: patch_size 14", "patch_size 16");
        FILE *fp = fopen(in(d, "preprocessor_config.json"), "wb");
        fputs("{\"size\": {\"shortest_edge\": ", fp);
        fclose(fp);
        expect_model_error("truncated processor config", d, "preprocessor_config.json is not valid JSON", NULL);
        unlink(in(d, "preprocessor_config.json"));
        vitd_err err = {0};
        vitd_model *m;
        CHECK_OK(vitd_model_load(d, &m, &err), &err); /* optional: defaults without it */
        if (m) CHECK(vitd_model_preproc(m)->max_pixels == 16777216 && vitd_model_preproc(m)->patch_size == 16);
        vitd_model_free(m);
        unlink(in(d, "config.json"));
        expect_model_error("no config.json", d, "config.json", d);
    }
    d = sub("missing_shard");
    if (write_tiny(d, ST_BF16, 3, "model.visual.", 0, 0)) {
        unlink(in(d, "model-00002-of-00003.safetensors"));
        expect_model_error("missing shard", d, "model-00002-of-00003.safetensors", NULL);
    }
    d = sub("truncated_shard");
    if (write_tiny(d, ST_BF16, 3, "model.visual.", 0, 0)) {
        truncate(in(d, "model-00003-of-00003.safetensors"), 1000);
        expect_model_error("truncated shard", d, "model-00003-of-00003.safetensors", NULL);
    }
    d = sub("wrong_index");
    if (write_tiny(d, ST_BF16, 3, "model.visual.", 0, 0)) {
        edit_json(d, "model.safetensors.index.json", idx_wrong_shard);
        expect_model_error("index names the wrong shard", d, "model.visual.pos_embed.weight",
                           "model-00003-of-00003.safetensors");
    }
    d = sub("empty_dir");
    mkdir(d, 0755);
    expect_model_error("empty directory", d, "config.json", NULL);
    d = sub("no_weights");
    if (write_tiny(d, ST_BF16, 1, "model.visual.", 0, 0)) {
        unlink(in(d, "model.safetensors"));
        expect_model_error("no weight files", d, "no model.safetensors", NULL);
    }
}

/* ---- determinism and the real-size preset ---- */

static int same_file(const char *a, const char *b) {
    size_t la = 0, lb = 0;
    unsigned char *x = check_read_file(a, &la), *y = check_read_file(b, &lb);
    int same = x && y && la == lb && memcmp(x, y, la) == 0;
    free(x);
    free(y);
    return same;
}

static void test_determinism(void) {
    const char *a = sub("det_a"), *b = sub("det_b"), *c = sub("det_c");
    if (!write_tiny(a, ST_BF16, 3, "model.visual.", 0, 7) || !write_tiny(b, ST_BF16, 3, "model.visual.", 0, 7) ||
        !write_tiny(c, ST_BF16, 3, "model.visual.", 0, 8))
        return;
    static const char *files[] = {"model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
                                  "model-00003-of-00003.safetensors", "model.safetensors.index.json", "config.json",
                                  "preprocessor_config.json", "README.md"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        CHECK_MSG(same_file(in(a, files[i]), in(b, files[i])), "%s differs between two writes of seed 7", files[i]);
        if (i < 3) CHECK_MSG(!same_file(in(a, files[i]), in(c, files[i])), "%s same for seeds 7 and 8", files[i]);
    }
    CHECK(same_file(in(a, "config.json"), in(c, "config.json")));
    /* rewriting a directory in another layout leaves no stale weight files behind */
    if (write_tiny(a, ST_BF16, 1, "model.visual.", 0, 7)) {
        struct stat sb;
        CHECK(stat(in(a, "model-00001-of-00003.safetensors"), &sb) != 0);
        CHECK(stat(in(a, "model.safetensors.index.json"), &sb) != 0);
        CHECK(same_file(in(a, "model.safetensors"), in(sub("bf16"), "model.safetensors")) == 0); /* seed 7 vs 0 */
    }
    vitd_err err = {0};
    demo_model_opts o = demo_model_opts_default();
    o.preset = "70b";
    CHECK_EQ_INT(VITD_E_INVALID_ARG, demo_model_write(&o, &err));
    CHECK_STR_CONTAINS(err.msg, "tiny, 2b, 4b, 8b, 32b");
    o = demo_model_opts_default();
    o.out_dir = sub("bad_shards");
    o.shards = 1000;
    CHECK_EQ_INT(VITD_E_INVALID_ARG, demo_model_write(&o, &err));
    CHECK_STR_CONTAINS(err.msg, "1000 shards");
    struct stat sb;
    CHECK(stat(o.out_dir, &sb) != 0); /* refused before creating anything */
    vitd_vision_config cfg;
    static const struct {
        const char *p;
        int depth, d, I, D, ds0;
    } real[] = {{"2b", 24, 1024, 4096, 2048, 5}, {"4b", 24, 1024, 4096, 2560, 5}, {"8b", 27, 1152, 4304, 4096, 8},
                {"32b", 27, 1152, 4304, 5120, 8}};
    for (size_t i = 0; i < sizeof real / sizeof real[0]; i++) {
        CHECK_OK(demo_model_config(real[i].p, &cfg, &err), &err);
        CHECK(cfg.depth == real[i].depth && cfg.hidden_size == real[i].d && cfg.intermediate_size == real[i].I &&
              cfg.out_hidden_size == real[i].D && cfg.num_heads == 16 && cfg.n_deepstack == 3 &&
              cfg.deepstack_indexes[0] == real[i].ds0 && cfg.deepstack_indexes[2] == real[i].ds0 + 2 * (real[i].ds0 == 5 ? 6 : 8));
    }
}

static void test_8b(void) {
    vitd_err err = {0};
    const char *dir = sub("8b");
    demo_model_opts o = demo_model_opts_default();
    o.preset = "8b";
    o.out_dir = dir;
    double t0 = vitd_now();
    CHECK_OK(demo_model_write(&o, &err), &err);
    double t1 = vitd_now();
    vitd_model *m;
    CHECK_OK(vitd_model_load(dir, &m, &err), &err);
    double t2 = vitd_now();
    if (!m) return;
    printf("  8b preset: wrote %.2f GB in %.2f s, loaded (headers and shape checks) in %.1f ms\n",
           (double)checkpoint_vision_bytes(m) / 1e9, t1 - t0, 1e3 * (t2 - t1));
    CHECK_EQ_INT(3 + 12 * 27 + 6 * 4, checkpoint_count(m));
    const st_tensor *t = checkpoint_tensor(m, "deepstack_merger_list.2.linear_fc2.weight");
    CHECK(t && t->shape[0] == 4096 && t->shape[1] == 4608);
    float v[3];
    st_tensor head = *checkpoint_tensor(m, "blocks.26.mlp.linear_fc1.bias");
    head.shape[0] = 3;
    CHECK_OK(st_to_f32(&head, v, &err), &err);
    for (int i = 0; i < 3; i++)
        CHECK(v[i] == bf16_to_f32(f32_to_bf16(demo_model_value(&o, "blocks.26.mlp.linear_fc1.bias", i))));
    vitd_model_free(m);
    check_rm_tree(dir);
}

int main(void) {
    snprintf(g_root, sizeof g_root, "/tmp/vitd_ckpt_XXXXXX");
    if (!mkdtemp(g_root)) SKIP("cannot create a temporary directory");
    test_parse_config();
    test_parse_preproc();
    vitd_model *ref;
    test_load_tiny(&ref);
    if (ref) {
        test_layouts(ref);
        vitd_model_free(ref);
    }
    test_broken();
    test_determinism();
    test_8b();
    check_rm_tree(g_root);
    return check_done("test_checkpoint");
}
