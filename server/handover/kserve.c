/* kserve.c — KServe v2 / Open Inference Protocol infer requests and answers (kserve.h).
 *
 * Parsing works on the whole body: the JSON header (the first Inference-Header-Content-Length bytes, or all of
 * it) through cJSON, then the binary region after it, walked input by input. Rendering writes the JSON text
 * first (every output's size is known from the grids), then, when some output is binary, one buffer holding that
 * text and each binary output's bytes, written in place by handover_write image after image: the row axis of
 * EMBEDS / DEEPSTACK / CONCAT is the images' rows one after another. */
#include "kserve.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <cJSON.h>

#include "handover.h"
#include "util.h"

static const char *const k_out_names[KS_N_OUTPUTS] = {"EMBEDS", "DEEPSTACK", "CONCAT", "GRID_THW", "NUM_TOKENS"};
#define INPUT_NAME "IMAGE"

static bool is_float_output(kserve_output o) { return o == KS_EMBEDS || o == KS_DEEPSTACK || o == KS_CONCAT; }

/* "FP32" | "BF16" | "FP16" or vitd's words; -1 when it is none of them. */
static int parse_dtype(const char *s, st_dtype *out) {
    if (!strcasecmp(s, "FP32") || !strcasecmp(s, "float32")) *out = ST_F32;
    else if (!strcasecmp(s, "BF16") || !strcasecmp(s, "bfloat16")) *out = ST_BF16;
    else if (!strcasecmp(s, "FP16") || !strcasecmp(s, "float16")) *out = ST_F16;
    else return -1;
    return 0;
}

static const char *v2_dtype(st_dtype d) { return d == ST_BF16 ? "BF16" : d == ST_F16 ? "FP16" : "FP32"; }

/* ---- parsing ---- */

/* Reads parameters.datatype (or dtype) of obj into *d when present. */
static vitd_status param_dtype(const cJSON *params, const char *where, st_dtype *d, vitd_err *err) {
    if (!cJSON_IsObject(params)) return VITD_OK;
    const char *keys[2] = {"datatype", "dtype"};
    for (int i = 0; i < 2; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(params, keys[i]);
        if (!v) continue;
        if (!cJSON_IsString(v) || parse_dtype(v->valuestring, d) != 0)
            return vitd_fail(err, VITD_E_INVALID_ARG, "%s: parameters.%s must be one of FP32, BF16, FP16", where,
                             keys[i]);
    }
    return VITD_OK;
}

static bool param_bool(const cJSON *params, const char *key) {
    return cJSON_IsObject(params) && cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(params, key));
}

/* Collects the strings of a (possibly nested) data array into out[0..max); returns the count, -1 for a
 * non-string element, or max + 1 when there are more. */
static int collect_strings(const cJSON *a, const char **out, int n, int max) {
    if (cJSON_IsString(a)) {
        if (n < max) out[n] = a->valuestring;
        return n + 1;
    }
    if (!cJSON_IsArray(a)) return -1;
    for (const cJSON *e = a->child; e; e = e->next) {
        n = collect_strings(e, out, n, max);
        if (n < 0 || n > max) return n;
    }
    return n;
}

/* Splits count BYTES elements (u32 little-endian length + bytes each) from p[0..n) into spans; all n bytes must
 * be used. count < 0: as many as there are (a raw binary request). Returns the element count or -1 (err). */
static int split_bytes(const uint8_t *p, size_t n, int count, int max, body_span *spans, vitd_err *err) {
    size_t off = 0;
    int i = 0;
    while (off < n && (count < 0 || i < count)) {
        if (n - off < 4) {
            vitd_fail(err, VITD_E_INVALID_ARG, "IMAGE: element %d: a BYTES element needs a 4-byte length", i);
            return -1;
        }
        uint32_t l = (uint32_t)p[off] | (uint32_t)p[off + 1] << 8 | (uint32_t)p[off + 2] << 16 |
                     (uint32_t)p[off + 3] << 24;
        off += 4;
        if (l > n - off) {
            vitd_fail(err, VITD_E_INVALID_ARG, "IMAGE: element %d declares %u bytes, %zu remain", i, l, n - off);
            return -1;
        }
        if (i >= max) {
            vitd_fail(err, VITD_E_TOO_LARGE, "IMAGE: more than max_images %d images", max);
            return -1;
        }
        spans[i++] = (body_span){p + off, l};
        off += l;
    }
    if (off != n || (count >= 0 && i != count)) {
        vitd_fail(err, VITD_E_INVALID_ARG, "IMAGE: binary data holds %d elements in %zu of %zu bytes, shape says %d",
                  i, off, n, count);
        return -1;
    }
    return i;
}

/* The images of the one input from its JSON object; *bin_off advances over its binary bytes. */
static vitd_status parse_input(const cJSON *in, const uint8_t *bin, size_t bin_len, size_t *bin_off,
                               bool has_header, const kserve_model *m, arena *a, kserve_request *q, vitd_err *err) {
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(in, "name");
    if (!cJSON_IsString(name))
        return vitd_fail(err, VITD_E_INVALID_ARG, "an input needs a \"name\" (this model takes " INPUT_NAME ")");
    if (strcmp(name->valuestring, INPUT_NAME) != 0)
        return vitd_fail(err, VITD_E_INVALID_ARG, "unexpected inference input '%.64s' for model '%s' (it takes "
                         INPUT_NAME ")", name->valuestring, m->model);
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(in, "datatype");
    if (!cJSON_IsString(dt) || strcmp(dt->valuestring, "BYTES") != 0)
        return vitd_fail(err, VITD_E_INVALID_ARG, INPUT_NAME ": datatype must be BYTES (the encoded image files)");
    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(in, "shape");
    int dims = cJSON_GetArraySize(shape);
    double n = 1;
    for (const cJSON *d = cJSON_IsArray(shape) ? shape->child : NULL; d; d = d->next) {
        if (!cJSON_IsNumber(d) || !(d->valuedouble >= 0 && d->valuedouble <= 1e15) ||
            d->valuedouble != (double)(long long)d->valuedouble)
            return vitd_fail(err, VITD_E_INVALID_ARG, INPUT_NAME ": shape must hold non-negative integers");
        n *= d->valuedouble;
    }
    if (!cJSON_IsArray(shape) || dims < 1 || dims > 2 ||
        (dims == 2 && cJSON_GetArrayItem(shape, 1)->valuedouble != 1))
        return vitd_fail(err, VITD_E_INVALID_ARG, INPUT_NAME ": shape must be [N] or [N, 1]");
    if (n < 1) return vitd_fail(err, VITD_E_INVALID_ARG, INPUT_NAME ": no image (shape has 0 elements)");
    if (n > m->max_images)
        return vitd_fail(err, VITD_E_TOO_LARGE, INPUT_NAME ": %.0f images exceed max_images %d", n, m->max_images);
    int count = (int)n;
    const cJSON *params = cJSON_GetObjectItemCaseSensitive(in, "parameters");
    const cJSON *bsize = cJSON_IsObject(params) ? cJSON_GetObjectItemCaseSensitive(params, "binary_data_size") : NULL;
    const cJSON *data = cJSON_GetObjectItemCaseSensitive(in, "data");
    if (!!bsize == !!data)
        return vitd_fail(err, VITD_E_INVALID_ARG, INPUT_NAME ": set exactly one of \"data\" and "
                         "parameters.binary_data_size");
    q->images = arena_calloc(a, (size_t)count, sizeof *q->images);
    if (!q->images) return vitd_fail(err, VITD_E_NOMEM, "out of request memory for %d images", count);
    if (bsize) {
        if (!has_header)
            return vitd_fail(err, VITD_E_INVALID_ARG, INPUT_NAME ": binary data needs the "
                             "Inference-Header-Content-Length header");
        if (!cJSON_IsNumber(bsize) || !(bsize->valuedouble >= 0) || bsize->valuedouble > (double)(bin_len - *bin_off) ||
            bsize->valuedouble != (double)(size_t)bsize->valuedouble)
            return vitd_fail(err, VITD_E_INVALID_ARG, INPUT_NAME ": binary_data_size %.0f, but %zu bytes follow "
                             "the JSON", cJSON_IsNumber(bsize) ? bsize->valuedouble : -1.0, bin_len - *bin_off);
        size_t sz = (size_t)bsize->valuedouble;
        if (split_bytes(bin + *bin_off, sz, count, m->max_images, q->images, err) < 0) return err->code;
        *bin_off += sz;
        q->n_images = count;
        return VITD_OK;
    }
    const cJSON *ct = cJSON_IsObject(params) ? cJSON_GetObjectItemCaseSensitive(params, "content_type") : NULL;
    if (cJSON_IsString(ct) && strcmp(ct->valuestring, "base64") != 0)
        return vitd_fail(err, VITD_E_INVALID_ARG, INPUT_NAME ": content_type \"%.32s\" cannot carry image bytes in "
                         "JSON; send base64 strings or the binary extension", ct->valuestring);
    const char **strs = arena_calloc(a, (size_t)count + 1, sizeof *strs);
    if (!strs) return vitd_fail(err, VITD_E_NOMEM, "out of request memory");
    int got = collect_strings(data, strs, 0, count);
    if (got != count)
        return vitd_fail(err, VITD_E_INVALID_ARG, INPUT_NAME ": data must hold %d base64 strings (shape), %s", count,
                         got < 0 ? "found another kind of element" : "found another number");
    for (int i = 0; i < count; i++) {
        vitd_status st = body_image_string(a, i, strs[i], &q->images[i], err);
        if (st) return st;
    }
    q->n_images = count;
    return VITD_OK;
}

/* The outputs asked for (or the default set) with their binary flag and dtype. */
static vitd_status parse_outputs(const cJSON *root, const kserve_model *m, kserve_request *q, vitd_err *err) {
    const cJSON *params = cJSON_GetObjectItemCaseSensitive(root, "parameters");
    bool bin_default = param_bool(params, "binary_data_output");
    st_dtype dt = m->default_dtype;
    vitd_status st = param_dtype(params, "request", &dt, err);
    if (st) return st;
    const cJSON *outs = cJSON_GetObjectItemCaseSensitive(root, "outputs");
    if (outs && !cJSON_IsArray(outs)) return vitd_fail(err, VITD_E_INVALID_ARG, "\"outputs\" must be an array");
    if (!outs || cJSON_GetArraySize(outs) == 0) {
        const kserve_output def[] = {KS_EMBEDS, KS_DEEPSTACK, KS_GRID_THW, KS_NUM_TOKENS};
        for (int i = 0; i < 4; i++) {
            if (def[i] == KS_DEEPSTACK && m->n_deepstack == 0) continue;
            q->out[q->n_out] = def[i];
            q->binary[def[i]] = bin_default;
            q->dtype[def[i]] = dt;
            q->n_out++;
        }
    } else {
        bool seen[KS_N_OUTPUTS] = {0};
        for (const cJSON *o = outs->child; o; o = o->next) {
            const cJSON *name = cJSON_GetObjectItemCaseSensitive(o, "name");
            if (!cJSON_IsString(name)) return vitd_fail(err, VITD_E_INVALID_ARG, "an output needs a \"name\"");
            int k = 0;
            while (k < KS_N_OUTPUTS && strcmp(name->valuestring, k_out_names[k])) k++;
            if (k == KS_N_OUTPUTS || (k == KS_DEEPSTACK && m->n_deepstack == 0))
                return vitd_fail(err, VITD_E_INVALID_ARG, "unexpected inference output '%.64s' for model '%s' "
                                 "(outputs: EMBEDS, %sCONCAT, GRID_THW, NUM_TOKENS)", name->valuestring, m->model,
                                 m->n_deepstack ? "DEEPSTACK, " : "");
            if (seen[k]) return vitd_fail(err, VITD_E_INVALID_ARG, "output %s is asked for twice", k_out_names[k]);
            seen[k] = true;
            const cJSON *op = cJSON_GetObjectItemCaseSensitive(o, "parameters");
            q->out[q->n_out++] = (kserve_output)k;
            /* Triton: binary_data_output makes every output binary unless its own binary_data says otherwise */
            const cJSON *bd = cJSON_IsObject(op) ? cJSON_GetObjectItemCaseSensitive(op, "binary_data") : NULL;
            q->binary[k] = cJSON_IsBool(bd) ? cJSON_IsTrue(bd) : bin_default;
            q->dtype[k] = dt;
            if ((st = param_dtype(op, k_out_names[k], &q->dtype[k], err))) return st;
        }
    }
    for (int i = 0; i < q->n_out; i++) {
        kserve_output o = q->out[i];
        if (!is_float_output(o)) q->dtype[o] = ST_I64;
        else if (!q->binary[o] && q->dtype[o] != ST_F32)
            return vitd_fail(err, VITD_E_INVALID_ARG, "sending %s data via JSON is not supported: ask for output %s "
                             "with parameters.binary_data (the binary tensor extension)", v2_dtype(q->dtype[o]),
                             k_out_names[o]);
        q->any_binary |= q->binary[o];
    }
    return VITD_OK;
}

vitd_status kserve_parse(const uint8_t *body, size_t len, long long header_len, const kserve_model *m, arena *a,
                         kserve_request *q, vitd_err *err) {
    memset(q, 0, sizeof *q);
    if (header_len > (long long)len)
        return vitd_fail(err, VITD_E_INVALID_ARG, "Inference-Header-Content-Length %lld exceeds the body's %zu bytes",
                         header_len, len);
    if (header_len == 0) {
        /* a raw binary request: the body is the one input's data; every output binary */
        q->images = arena_calloc(a, (size_t)m->max_images, sizeof *q->images);
        if (!q->images) return vitd_fail(err, VITD_E_NOMEM, "out of request memory");
        int n = split_bytes(body, len, -1, m->max_images, q->images, err);
        if (n < 0) return err->code;
        if (n == 0) return vitd_fail(err, VITD_E_INVALID_ARG, INPUT_NAME ": no image in the raw binary body");
        q->n_images = n;
        cJSON *bin = cJSON_Parse("{\"parameters\": {\"binary_data_output\": true}}");
        vitd_status st = parse_outputs(bin, m, q, err);
        cJSON_Delete(bin);
        return st;
    }
    size_t jl = header_len < 0 ? len : (size_t)header_len;
    if (jl == 0) return vitd_fail(err, VITD_E_INVALID_ARG, "empty body");
    vitd_err jerr = {0};
    cJSON *root = body_json_parse(a, body, jl, &jerr); /* in the arena: never deleted here */
    vitd_status st = VITD_OK;
    if (!root) return vitd_fail(err, jerr.code, "failed to parse the request JSON: %s", jerr.msg);
    if (!cJSON_IsObject(root)) {
        st = vitd_fail(err, VITD_E_INVALID_ARG, "the request must be a JSON object");
        goto done;
    }
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(root, "id");
    if (id && !cJSON_IsString(id)) {
        st = vitd_fail(err, VITD_E_INVALID_ARG, "unable to parse 'id': it must be a string");
        goto done;
    }
    /* echoed whole: clients match answers by it (the body's size bounds it; a cut could split a UTF-8 character) */
    if (id && id->valuestring[0] && !(q->id = arena_strdup(a, id->valuestring))) {
        st = vitd_fail(err, VITD_E_NOMEM, "out of request memory");
        goto done;
    }
    const cJSON *inputs = cJSON_GetObjectItemCaseSensitive(root, "inputs");
    if (!cJSON_IsArray(inputs) || cJSON_GetArraySize(inputs) != 1) {
        st = vitd_fail(err, VITD_E_INVALID_ARG, "\"inputs\" must hold exactly one input, " INPUT_NAME);
        goto done;
    }
    size_t bin_off = 0;
    const uint8_t *bin = body + jl;
    size_t bin_len = len - jl;
    if ((st = parse_input(inputs->child, bin, bin_len, &bin_off, header_len >= 0, m, a, q, err))) goto done;
    if (bin_off != bin_len) {
        st = vitd_fail(err, VITD_E_INVALID_ARG, "unexpected additional input data for model '%s' (%zu bytes)",
                       m->model, bin_len - bin_off);
        goto done;
    }
    st = parse_outputs(root, m, q, err);
done:
    return st; /* the tree is the request arena's */
}

/* ---- rendering ---- */

/* Width (columns) of a float output. */
static int64_t out_width(kserve_output o, int D, int k) {
    return o == KS_EMBEDS ? D : o == KS_DEEPSTACK ? (int64_t)D * k : (int64_t)D * (1 + k);
}

static void seg_range(kserve_output o, int k, int *s0, int *s1) {
    *s0 = o == KS_DEEPSTACK ? 1 : 0;
    *s1 = o == KS_EMBEDS ? 1 : 1 + k;
}

static vitd_status put_json_values(strbuf *b, kserve_output o, const handover_src *src, int n, const reply_encode *re,
                                   float *scratch);

/* Writes output o's values as a flat JSON array into b (float outputs are F32 here). */
static vitd_status put_json_data(strbuf *b, kserve_output o, const handover_src *src, int n, const reply_encode *re,
                                 vitd_err *err) {
    float *scratch = malloc((size_t)(re->out_hidden > 0 ? re->out_hidden : 1) * sizeof(float));
    if (!scratch) return vitd_fail(err, VITD_E_NOMEM, "out of memory rendering the answer");
    vitd_status st = put_json_values(b, o, src, n, re, scratch);
    free(scratch);
    return st;
}

static vitd_status put_json_values(strbuf *b, kserve_output o, const handover_src *src, int n, const reply_encode *re,
                                   float *scratch) {
    strbuf_puts(b, "[");
    bool first = true;
    for (int i = 0; i < n; i++) {
        const vitd_grid *g = &re->images[i].grid;
        if (o == KS_GRID_THW) {
            strbuf_printf(b, "%s%d,%d,%d", first ? "" : ",", g->t, g->h, g->w);
            first = false;
            continue;
        }
        if (o == KS_NUM_TOKENS) {
            strbuf_printf(b, "%s%lld", first ? "" : ",", (long long)src[i].rows);
            first = false;
            continue;
        }
        int s0, s1;
        seg_range(o, src[i].k, &s0, &s1);
        size_t D = (size_t)src[i].D;
        for (int64_t t = 0; t < src[i].rows; t++) {
            char *w = strbuf_reserve(b, (size_t)(s1 - s0) * D * 16 + 2);
            if (!w) return VITD_OK; /* strbuf_finish reports it */
            char *p = w;
            for (int s = s0; s < s1; s++) {
                size_t off = (s == 0 ? (size_t)t : (size_t)(s - 1) * (size_t)src[i].rows + (size_t)t) * D;
                const float *x = reply_row_f32(s == 0 ? src[i].emb : src[i].ds, src[i].bf16, off, D, scratch);
                for (size_t j = 0; j < D; j++) {
                    if (!first) *p++ = ',';
                    first = false;
                    p += reply_format_f32(p, x[j]);
                }
            }
            strbuf_commit(b, (size_t)(p - w));
        }
    }
    strbuf_puts(b, "]");
    return VITD_OK;
}

uint8_t *kserve_render(const kserve_request *q, const reply_encode *re, int merge, size_t *len, size_t *json_len,
                       vitd_err *err) {
    int n = re->n_images;
    handover_src *src = calloc((size_t)n, sizeof *src);
    if (!src) {
        vitd_fail(err, VITD_E_NOMEM, "out of memory rendering the answer");
        return NULL;
    }
    int64_t rows = 0;
    size_t bytes[KS_N_OUTPUTS] = {0};
    vitd_status st = VITD_OK;
    for (int i = 0; i < n && !st; i++) {
        st = handover_src_of(re, i, merge, &src[i], err);
        rows += src[i].rows;
    }
    strbuf b = {0};
    uint8_t *out = NULL;
    if (st) goto done;
    strbuf_puts(&b, "{");
    if (q->id) {
        strbuf_puts(&b, "\"id\":");
        strbuf_json_string(&b, q->id);
        strbuf_puts(&b, ",");
    }
    strbuf_puts(&b, "\"model_name\":");
    strbuf_json_string(&b, re->model ? re->model : "");
    strbuf_puts(&b, ",\"model_version\":\"1\",\"outputs\":[");
    for (int oi = 0; oi < q->n_out && !st; oi++) {
        kserve_output o = q->out[oi]; /* DEEPSTACK only when k > 0: kserve_parse saw to it */
        strbuf_printf(&b, "%s{\"name\":\"%s\",\"datatype\":\"%s\",\"shape\":", oi ? "," : "", k_out_names[o],
                      is_float_output(o) ? v2_dtype(q->dtype[o]) : "INT64");
        if (o == KS_GRID_THW) strbuf_printf(&b, "[%d,3]", n);
        else if (o == KS_NUM_TOKENS) strbuf_printf(&b, "[%d]", n);
        else strbuf_printf(&b, "[%lld,%lld]", (long long)rows, (long long)out_width(o, re->out_hidden,
                                                                                        re->n_deepstack));
        if (q->binary[o]) {
            bytes[o] = is_float_output(o) ? (size_t)rows * (size_t)out_width(o, re->out_hidden, re->n_deepstack) *
                                                st_dtype_size(q->dtype[o])
                                          : (size_t)n * (o == KS_GRID_THW ? 3 : 1) * 8;
            strbuf_printf(&b, ",\"parameters\":{\"binary_data_size\":%zu}}", bytes[o]);
            continue;
        }
        strbuf_puts(&b, ",\"data\":");
        st = put_json_data(&b, o, src, n, re, err);
        strbuf_puts(&b, "}");
    }
    strbuf_puts(&b, "]}");
    if (st) goto done;
    char *text = strbuf_finish(&b);
    b = (strbuf){0};
    if (!text) {
        vitd_fail(err, VITD_E_NOMEM, "out of memory rendering the answer");
        goto done;
    }
    size_t jl = strlen(text), total = jl;
    for (int o = 0; o < KS_N_OUTPUTS; o++) total += bytes[o];
    if (!q->any_binary || total == jl) {
        out = (uint8_t *)text;
        *len = jl;
        *json_len = 0;
        goto done;
    }
    out = malloc(total);
    if (!out) {
        free(text);
        vitd_fail(err, VITD_E_NOMEM, "out of memory for a %zu-byte answer", total);
        goto done;
    }
    memcpy(out, text, jl);
    free(text);
    uint8_t *w = out + jl;
    for (int oi = 0; oi < q->n_out && !st; oi++) {
        kserve_output o = q->out[oi];
        if (!q->binary[o] || !bytes[o]) continue;
        for (int i = 0; i < n && !st; i++) {
            if (o == KS_GRID_THW || o == KS_NUM_TOKENS) {
                const vitd_grid *g = &re->images[i].grid;
                int64_t v[3] = {g->t, g->h, g->w};
                if (o == KS_NUM_TOKENS) v[0] = src[i].rows;
                size_t nb = o == KS_GRID_THW ? 24 : 8;
                memcpy(w, v, nb); /* little-endian host */
                w += nb;
                continue;
            }
            int s0, s1;
            seg_range(o, src[i].k, &s0, &s1);
            st = handover_write(&src[i], s0, s1, q->dtype[o], w, err);
            w += handover_bytes(&src[i], s0, s1, q->dtype[o]);
        }
    }
    VITD_ASSERT(st || (size_t)(w - out) == total);
    if (st) {
        free(out);
        out = NULL;
        goto done;
    }
    *len = total;
    *json_len = jl;
done:
    free(strbuf_finish(&b));
    free(src);
    return out;
}

/* ---- metadata and errors ---- */

char *kserve_server_metadata(const char *version, size_t *len) {
    strbuf b = {0};
    strbuf_puts(&b, "{\"name\":\"vitd\",\"version\":");
    strbuf_json_string(&b, version ? version : "");
    strbuf_puts(&b, ",\"extensions\":[\"binary_tensor_data\"]}\n");
    char *s = strbuf_finish(&b);
    if (s) *len = b.len;
    return s;
}

char *kserve_model_metadata(const char *model, int out_hidden, int n_deepstack, size_t *len) {
    strbuf b = {0};
    strbuf_puts(&b, "{\"name\":");
    strbuf_json_string(&b, model);
    strbuf_puts(&b, ",\"versions\":[\"1\"],\"platform\":\"vitd\",\"inputs\":[{\"name\":\"" INPUT_NAME
                    "\",\"datatype\":\"BYTES\",\"shape\":[-1]}],\"outputs\":[");
    strbuf_printf(&b, "{\"name\":\"EMBEDS\",\"datatype\":\"FP32\",\"shape\":[-1,%d]},", out_hidden);
    if (n_deepstack > 0)
        strbuf_printf(&b, "{\"name\":\"DEEPSTACK\",\"datatype\":\"FP32\",\"shape\":[-1,%d]},",
                      out_hidden * n_deepstack);
    strbuf_printf(&b, "{\"name\":\"CONCAT\",\"datatype\":\"FP32\",\"shape\":[-1,%d]},", out_hidden * (1 + n_deepstack));
    strbuf_puts(&b, "{\"name\":\"GRID_THW\",\"datatype\":\"INT64\",\"shape\":[-1,3]},"
                    "{\"name\":\"NUM_TOKENS\",\"datatype\":\"INT64\",\"shape\":[-1]}]}\n");
    char *s = strbuf_finish(&b);
    if (s) *len = b.len;
    return s;
}

char *kserve_error(const char *message, size_t *len) {
    strbuf b = {0};
    strbuf_puts(&b, "{\"error\":");
    strbuf_json_string(&b, message ? message : "");
    strbuf_puts(&b, "}\n");
    char *s = strbuf_finish(&b);
    if (s) *len = b.len;
    return s;
}
