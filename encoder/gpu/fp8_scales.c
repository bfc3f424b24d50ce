/* fp8_scales.c — static FP8 scale files (both JSON forms), their atomic save, and the host twin of the amax
 * history ring used by dynamic scaling (see fp8_scales.h). */
#include <cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fp8_scales.h"
#include "util.h"

/* ---- layer names ---- */

/* Maps "blocks.<i>.attn" (optionally prefixed "model.visual." or "visual.") or "<i>" to i, and with suffix
 * ".linear" instead of ".attn" (the linear layers' entries) too when *linear is not NULL (*linear set to 1 for
 * those); -1 if not a layer name. */
static int layer_index_of(const char *name, int *linear) {
    const char *p = name;
    if (!strncmp(p, "model.visual.", 13)) p += 13;
    else if (!strncmp(p, "visual.", 7)) p += 7;
    int bare = 1;
    if (!strncmp(p, "blocks.", 7)) {
        p += 7;
        bare = 0;
    } else if (p != name) {
        return -1;
    }
    if (*p < '0' || *p > '9') return -1;
    char *end;
    errno = 0;
    long i = strtol(p, &end, 10);
    if (errno || i < 0 || i > 100000 || (p[0] == '0' && end - p > 1)) return -1;
    if (linear) *linear = 0;
    if (bare) return *end == '\0' ? (int)i : -1;
    if (linear && strcmp(end, ".linear") == 0) {
        *linear = 1;
        return (int)i;
    }
    return strcmp(end, ".attn") == 0 ? (int)i : -1;
}


/* Reads one scale (key "<which>" or "<which>_scale") from a layer object. */
static vitd_status read_scale_named(const cJSON *obj, const char *layer, const char *which, float *out,
                                    vitd_err *err) {
    char k1[8], k2[16];
    snprintf(k1, sizeof k1, "%s", which);
    snprintf(k2, sizeof k2, "%s_scale", which);
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(obj, k1), *b = cJSON_GetObjectItemCaseSensitive(obj, k2);
    if (a && b) return vitd_fail(err, VITD_E_INVALID_ARG, "fp8 scales: layer %s has both %s and %s", layer, k1, k2);
    const cJSON *v = a ? a : b;
    if (!v) return vitd_fail(err, VITD_E_INVALID_ARG, "fp8 scales: layer %s has no %s (or %s)", layer, k1, k2);
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) || v->valuedouble <= 0 || (float)v->valuedouble <= 0)
        return vitd_fail(err, VITD_E_INVALID_ARG, "fp8 scales: layer %s: %s must be a positive number", layer,
                         v->string);
    *out = (float)v->valuedouble;
    return VITD_OK;
}

/* The checks every layer entry passes before its scales are read: an object, not seen before (seen[i] set). */
static vitd_status take_entry(const cJSON *item, int i, char *seen, const char *suffix, const char *keys,
                              vitd_err *err) {
    if (!cJSON_IsObject(item))
        return vitd_fail(err, VITD_E_INVALID_ARG, "fp8 scales: layer %s must be an object {%s}", item->string, keys);
    if (seen[i]) return vitd_fail(err, VITD_E_INVALID_ARG, "fp8 scales: layer blocks.%d.%s given twice", i, suffix);
    seen[i] = 1;
    return VITD_OK;
}

static vitd_status read_scale(const cJSON *obj, const char *layer, char which, float *out, vitd_err *err) {
    const char w[2] = {which, 0};
    return read_scale_named(obj, layer, w, out, err);
}

/* The object holding a scales file's layer entries: root's "layers" when present, else root itself; NULL with err
 * set when either is not an object (both parsers read the same two forms). */
static const cJSON *layer_table(const cJSON *root, vitd_err *err) {
    if (!root || !cJSON_IsObject(root)) {
        vitd_fail(err, VITD_E_INVALID_ARG, "fp8 scales: not a JSON object%s", root ? "" : " (parse error)");
        return NULL;
    }
    const cJSON *layers = cJSON_GetObjectItemCaseSensitive(root, "layers");
    if (layers && !cJSON_IsObject(layers)) {
        vitd_fail(err, VITD_E_INVALID_ARG, "fp8 scales: \"layers\" must be an object");
        return NULL;
    }
    return layers ? layers : root;
}

vitd_status fp8_scales_parse(const char *json, int n_layers, fp8_qkv *out, vitd_err *err) {
    vitd_status st = VITD_OK;
    cJSON *root = cJSON_Parse(json);
    char *seen = NULL;
    const cJSON *table = layer_table(root, err), *item;
    if (!table) {
        st = VITD_E_INVALID_ARG;
        goto done;
    }
    seen = xcalloc((size_t)n_layers, 1);
    cJSON_ArrayForEach(item, table) {
        int linear = 0, i = layer_index_of(item->string, &linear);
        if (linear && i >= 0 && i < n_layers) continue; /* the linear layers' entries: fp8_scales_parse_linear */
        if (i < 0 || i >= n_layers) {
            st = vitd_fail(err, VITD_E_INVALID_ARG,
                           "fp8 scales: unknown layer \"%s\" (expected blocks.0.attn .. blocks.%d.attn)",
                           item->string, n_layers - 1);
            goto done;
        }
        if ((st = take_entry(item, i, seen, "attn", "q, k, v", err)) != VITD_OK) goto done;
        if ((st = read_scale(item, item->string, 'q', &out[i].q, err)) != VITD_OK ||
            (st = read_scale(item, item->string, 'k', &out[i].k, err)) != VITD_OK ||
            (st = read_scale(item, item->string, 'v', &out[i].v, err)) != VITD_OK)
            goto done;
    }
    for (int i = 0; i < n_layers; i++) {
        if (!seen[i]) {
            st = vitd_fail(err, VITD_E_INVALID_ARG, "fp8 scales: layer blocks.%d.attn is missing", i);
            goto done;
        }
    }
done:
    free(seen);
    cJSON_Delete(root);
    return st;
}

/* Reads the file into *text (the caller frees it). */
static vitd_status read_text(const char *path, char **text, vitd_err *err) {
    *text = NULL;
    return vitd_read_file(path, path, 64u << 20, text, NULL, err);
}

/* A parse error of the file at path, with the path put in front of its message. */
static vitd_status name_file(const char *path, vitd_status st, vitd_err *err) {
    if (st != VITD_OK) {
        char msg[sizeof err->msg];
        snprintf(msg, sizeof msg, "%s", err->msg);
        vitd_fail(err, st, "%s: %s", path, msg);
    }
    return st;
}

vitd_status fp8_scales_load(const char *path, int n_layers, fp8_qkv *out, vitd_err *err) {
    char *text;
    vitd_status st = read_text(path, &text, err);
    if (st != VITD_OK) return st;
    st = fp8_scales_parse(text, n_layers, out, err);
    free(text);
    return name_file(path, st, err);
}

vitd_status fp8_scales_parse_linear(const char *json, int n_layers, fp8_lin *out, int *found, vitd_err *err) {
    vitd_status st = VITD_OK;
    cJSON *root = cJSON_Parse(json);
    char *seen = NULL;
    int n_seen = 0;
    *found = 0;
    const cJSON *table = layer_table(root, err), *item;
    if (!table) {
        st = VITD_E_INVALID_ARG;
        goto done;
    }
    seen = xcalloc((size_t)n_layers, 1);
    cJSON_ArrayForEach(item, table) {
        int linear = 0, i = layer_index_of(item->string, &linear);
        if (!linear) continue; /* attention entries (and other names): fp8_scales_parse's */
        if (i < 0 || i >= n_layers) {
            st = vitd_fail(err, VITD_E_INVALID_ARG,
                           "fp8 scales: unknown layer \"%s\" (expected blocks.0.linear .. blocks.%d.linear)",
                           item->string, n_layers - 1);
            goto done;
        }
        if ((st = take_entry(item, i, seen, "linear", "qkv, fc1, fc2", err)) != VITD_OK) goto done;
        n_seen++;
        if ((st = read_scale_named(item, item->string, "qkv", &out[i].qkv, err)) != VITD_OK ||
            (st = read_scale_named(item, item->string, "fc1", &out[i].fc1, err)) != VITD_OK ||
            (st = read_scale_named(item, item->string, "fc2", &out[i].fc2, err)) != VITD_OK)
            goto done;
    }
    for (int i = 0; n_seen && i < n_layers; i++) {
        if (!seen[i]) {
            st = vitd_fail(err, VITD_E_INVALID_ARG, "fp8 scales: layer blocks.%d.linear is missing (the linear "
                           "entries come for every layer or none)", i);
            goto done;
        }
    }
    *found = n_seen > 0;
done:
    free(seen);
    cJSON_Delete(root);
    return st;
}

vitd_status fp8_scales_load_linear(const char *path, int n_layers, fp8_lin *out, int *found, vitd_err *err) {
    char *text;
    *found = 0;
    vitd_status st = read_text(path, &text, err);
    if (st != VITD_OK) return st;
    st = fp8_scales_parse_linear(text, n_layers, out, found, err);
    free(text);
    return name_file(path, st, err);
}

vitd_status fp8_scales_save(const char *path, const fp8_qkv *scales, int n_layers, double margin, const char *source,
                            vitd_err *err) {
    return fp8_scales_save_all(path, scales, NULL, n_layers, margin, source, err);
}

vitd_status fp8_scales_save_all(const char *path, const fp8_qkv *scales, const fp8_lin *lin, int n_layers,
                                double margin, const char *source, vitd_err *err) {
    if (!(margin > 0) || !isfinite(margin))
        return vitd_fail(err, VITD_E_INVALID_ARG, "fp8 scales: margin must be positive, got %g", margin);
    cJSON *root = cJSON_CreateObject(), *layers = cJSON_AddObjectToObject(root, "layers");
    for (int i = 0; i < n_layers; i++) {
        char name[32];
        snprintf(name, sizeof name, "blocks.%d.attn", i);
        cJSON *l = cJSON_AddObjectToObject(layers, name);
        cJSON_AddNumberToObject(l, "q", (double)scales[i].q * margin);
        cJSON_AddNumberToObject(l, "k", (double)scales[i].k * margin);
        cJSON_AddNumberToObject(l, "v", (double)scales[i].v * margin);
        if (!lin) continue;
        snprintf(name, sizeof name, "blocks.%d.linear", i);
        l = cJSON_AddObjectToObject(layers, name);
        cJSON_AddNumberToObject(l, "qkv", (double)lin[i].qkv * margin);
        cJSON_AddNumberToObject(l, "fc1", (double)lin[i].fc1 * margin);
        cJSON_AddNumberToObject(l, "fc2", (double)lin[i].fc2 * margin);
    }
    cJSON_AddNumberToObject(root, "margin", margin);
    if (source) cJSON_AddStringToObject(root, "source", source);
    char *text = cJSON_Print(root);
    cJSON_Delete(root);
    if (!text) return vitd_fail(err, VITD_E_NOMEM, "fp8 scales: out of memory rendering %s", path);

    /* atomic (a reader sees the old file or the new one), with a final newline */
    size_t len = strlen(text);
    char *body = xmalloc(len + 2);
    memcpy(body, text, len);
    body[len] = '\n';
    vitd_status st = vitd_write_file_atomic(path, "fp8 scales", body, len + 1, err);
    free(body);
    free(text);
    return st;
}

/* ---- amax history ---- */

vitd_status fp8_history_init(fp8_history *h, int n_layers, int history_len, vitd_err *err) {
    memset(h, 0, sizeof *h);
    if (n_layers <= 0 || history_len <= 0 || history_len > 4096)
        return vitd_fail(err, VITD_E_INVALID_ARG, "fp8 history: %d layers x %d steps is not a valid ring", n_layers,
                         history_len);
    h->n_layers = n_layers;
    h->history_len = history_len;
    h->amax = xcalloc((size_t)n_layers * 3 * (size_t)history_len, sizeof(float));
    h->steps = xcalloc((size_t)n_layers, sizeof(long));
    return VITD_OK;
}

void fp8_history_release(fp8_history *h) {
    if (!h) return;
    free(h->amax);
    free(h->steps);
    memset(h, 0, sizeof *h);
}

void fp8_history_push(fp8_history *h, int layer, const float amax3[3]) {
    VITD_ASSERT(layer >= 0 && layer < h->n_layers);
    int slot = (int)(h->steps[layer] % h->history_len);
    for (int t = 0; t < 3; t++) {
        float a = amax3[t];
        h->amax[((size_t)layer * 3 + t) * h->history_len + slot] = (a == a) ? a : 0.0f; /* NaN never sticks */
    }
    h->steps[layer]++;
}

int fp8_history_scales(const fp8_history *h, int layer, fp8_qkv *out) {
    VITD_ASSERT(layer >= 0 && layer < h->n_layers);
    if (h->steps[layer] == 0) return 0;
    float s[3];
    for (int t = 0; t < 3; t++) {
        const float *ring = h->amax + ((size_t)layer * 3 + t) * h->history_len;
        float m = 0.0f;
        for (int i = 0; i < h->history_len; i++) m = fmaxf(m, ring[i]);
        s[t] = m > 0.0f ? m / FP8_E4M3_MAX : 1.0f / (FP8_E4M3_MAX * FP8_E4M3_MAX);
    }
    out->q = s[0];
    out->k = s[1];
    out->v = s[2];
    return 1;
}

int fp8_history_just_wrapped(const fp8_history *h, int layer) {
    VITD_ASSERT(layer >= 0 && layer < h->n_layers);
    return h->steps[layer] == h->history_len;
}
