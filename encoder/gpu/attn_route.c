/* attn_route.c — the attention path choice of attn_route.h: parsing attn_dtype, the FP8 support rule and the
 * "auto" routing table (decide from timings, pick per batch, format for the log). Pure functions. */
#include "attn_route.h"

#include <cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

int attn_mode_parse(const char *s, attn_mode *out) {
    if (!s || !*s || !strcmp(s, "auto")) *out = ATTN_MODE_AUTO;
    else if (!strcmp(s, "fp8")) *out = ATTN_MODE_FP8;
    else if (!strcmp(s, "bf16")) *out = ATTN_MODE_BF16;
    else return -1;
    return 0;
}

const char *attn_mode_name(attn_mode m) {
    return m == ATTN_MODE_FP8 ? "fp8" : m == ATTN_MODE_BF16 ? "bf16" : "auto";
}

int attn_fp8_supported(int cudnn_version, int cc_major, int cc_minor, char *why, size_t why_len) {
    if (cc_major < 9) {
        if (why && why_len) snprintf(why, why_len, "compute capability %d.%d < 9.0", cc_major, cc_minor);
        return 0;
    }
    if (cudnn_version < ATTN_FP8_MIN_CUDNN) {
        if (why && why_len)
            snprintf(why, why_len, "cuDNN %d.%d.%d < 9.17.1 (earlier versions give wrong FP8 output above 1024 "
                     "tokens)", cudnn_version / 10000, cudnn_version / 100 % 100, cudnn_version % 100);
        return 0;
    }
    if (why && why_len) why[0] = '\0';
    return 1;
}

int attn_route_shapes(size_t max_tokens, int max_images, int max_seqlen, attn_route_entry *out, int max) {
    int n = 0;
    size_t top = max_tokens;
    if (max_seqlen > 0 && (size_t)max_seqlen < top) top = (size_t)max_seqlen;
    if (top > 65536) top = 65536;
    for (size_t len = 256; len <= top && n < max; len *= 2)
        out[n++] = (attn_route_entry){1, (int)len, -1, -1, 0};
    static const int counts[2] = {4, 16}, lens[4] = {256, 512, 1024, 4096};
    for (int c = 0; c < 2; c++)
        for (int l = 0; l < 4 && n < max; l++)
            if (counts[c] <= max_images && lens[l] <= max_seqlen && (size_t)counts[c] * lens[l] <= max_tokens)
                out[n++] = (attn_route_entry){counts[c], lens[l], -1, -1, 0};
    return n;
}

void attn_route_decide(attn_route_entry *t, int n, double margin) {
    for (int i = 0; i < n; i++)
        t[i].fp8 = t[i].ms_bf16 > 0 && t[i].ms_fp8 > 0 && t[i].ms_fp8 < (1.0 - margin) * t[i].ms_bf16;
    /* monotone in length: a shorter entry keeps FP8 only if every longer one of its count does */
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n && t[i].fp8; j++)
            if (t[j].n_images == t[i].n_images && t[j].max_len > t[i].max_len && !t[j].fp8) t[i].fp8 = 0;
}

int attn_short_decide(const attn_short_entry *t, int n, int cap, double margin, int *tiling) {
    int reach = 0, winning = 1;
    for (int i = 0; i < n; i++) {
        const attn_short_entry *e = &t[i];
        int best = 0;
        for (int k = 1; k < ATTN_SHORT_TILINGS; k++)
            if (e->ms_own[k] < e->ms_own[best]) best = k;
        const int measured = e->ms_cudnn > 0 && e->ms_own[best] > 0;
        tiling[i] = measured ? best : 0;
        const int len = ATTN_SHORT_LEN0 << i;
        winning = winning && len <= cap && measured && e->ms_own[best] < (1.0 - margin) * e->ms_cudnn;
        if (winning) reach = len;
    }
    return reach;
}

int attn_short_tiling(const int *tiling, int n, int n_tokens) {
    for (int i = 0; i < n; i++)
        if ((ATTN_SHORT_LEN0 << i) >= n_tokens) return tiling[i];
    return n > 0 ? tiling[n - 1] : 0;
}

int attn_route_pick(const attn_route_entry *t, int n, int n_images, int max_len) {
    int best = -1;
    for (int i = 0; i < n; i++) {
        if (t[i].max_len > max_len || t[i].n_images > n_images) continue;
        if (best < 0 || t[i].max_len > t[best].max_len ||
            (t[i].max_len == t[best].max_len && t[i].n_images > t[best].n_images))
            best = i;
    }
    return best;
}

int attn_route_fp8(const attn_route_entry *t, int n, int n_images, int max_len) {
    int i = attn_route_pick(t, n, n_images, max_len);
    return i >= 0 && t[i].fp8;
}

void attn_route_format(const attn_route_entry *t, int n, char *buf, size_t len) {
    size_t used = 0;
    if (len) buf[0] = '\0';
    for (int i = 0; i < n && used < len; i++) {
        const double r = t[i].ms_bf16 > 0 && t[i].ms_fp8 > 0 ? t[i].ms_bf16 / t[i].ms_fp8 : 0;
        int k = snprintf(buf + used, len - used, "%s%dx%d bf16 %.4f ms fp8 %.4f ms (%.2fx) -> %s", i ? "; " : "",
                         t[i].n_images, t[i].max_len, t[i].ms_bf16, t[i].ms_fp8, r, t[i].fp8 ? "fp8" : "bf16");
        if (k < 0) break;
        used += (size_t)k;
    }
}

/* ---- a saved table ---- */

vitd_status attn_route_save(const char *path, const attn_route_key *key, const attn_route_entry *t, int n,
                            vitd_err *err) {
    cJSON *root = cJSON_CreateObject();
    cJSON_AddNumberToObject(root, "vitd_attn_route", 1);
    cJSON *on = cJSON_AddObjectToObject(root, "measured_on");
    char cc[16];
    snprintf(cc, sizeof cc, "%d.%d", key->cc_major, key->cc_minor);
    cJSON_AddStringToObject(on, "device", key->device);
    cJSON_AddStringToObject(on, "cc", cc);
    cJSON_AddNumberToObject(on, "cudnn", key->cudnn_version);
    cJSON_AddNumberToObject(on, "heads", key->n_heads);
    cJSON_AddNumberToObject(on, "head_dim", key->head_dim);
    cJSON_AddNumberToObject(on, "head_dim_padded", key->head_dim_padded);
    cJSON_AddStringToObject(on, "fp8_scaling", key->fp8_static ? "static" : "dynamic");
    cJSON_AddNumberToObject(on, "fp8_history", key->fp8_history);
    cJSON_AddNumberToObject(on, "max_tokens", key->max_tokens);
    cJSON_AddNumberToObject(on, "max_images", key->max_images);
    cJSON_AddNumberToObject(on, "attn_short_max", key->attn_short_max);
    cJSON *shapes = cJSON_AddArrayToObject(root, "shapes");
    for (int i = 0; i < n; i++) {
        cJSON *e = cJSON_CreateObject();
        cJSON_AddNumberToObject(e, "images", t[i].n_images);
        cJSON_AddNumberToObject(e, "max_len", t[i].max_len);
        cJSON_AddNumberToObject(e, "bf16_ms", t[i].ms_bf16);
        cJSON_AddNumberToObject(e, "fp8_ms", t[i].ms_fp8);
        cJSON_AddItemToArray(shapes, e);
    }
    char *text = cJSON_Print(root);
    cJSON_Delete(root);
    if (!text) return vitd_fail(err, VITD_E_NOMEM, "attn_route_file %s: out of memory", path);
    vitd_status st = vitd_write_file_atomic(path, "attn_route_file", text, strlen(text), err);
    free(text);
    return st;
}

/* A number field of obj, or NAN when missing or not a number. */
static double num_of(const cJSON *obj, const char *key) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, key);
    return cJSON_IsNumber(it) ? it->valuedouble : NAN;
}

static const char *str_of(const cJSON *obj, const char *key) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, key);
    return cJSON_IsString(it) ? it->valuestring : NULL;
}

vitd_status attn_route_load(const char *path, const attn_route_key *key, attn_route_entry *t, int max, int *n,
                            vitd_err *err) {
    char *text = NULL;
    *n = 0;
    vitd_status st = vitd_read_file(path, "attn_route_file", (size_t)1 << 20, &text, NULL, err);
    if (st != VITD_OK) return st;
    cJSON *root = cJSON_ParseWithOpts(text, NULL, 1);
    free(text);
    const cJSON *on = root ? cJSON_GetObjectItemCaseSensitive(root, "measured_on") : NULL;
    const cJSON *shapes = root ? cJSON_GetObjectItemCaseSensitive(root, "shapes") : NULL;
    if (!root || num_of(root, "vitd_attn_route") != 1 || !cJSON_IsObject(on) || !cJSON_IsArray(shapes)) {
        st = vitd_fail(err, VITD_E_INVALID_ARG, "attn_route_file %s: not a vitd attention routing table (JSON with "
                       "vitd_attn_route 1, measured_on and shapes)", path);
        goto done;
    }
    /* what it was measured on, field by field */
    char cc[16];
    snprintf(cc, sizeof cc, "%d.%d", key->cc_major, key->cc_minor);
    const char *dev = str_of(on, "device"), *occ = str_of(on, "cc"), *scal = str_of(on, "fp8_scaling");
    const char *want_scal = key->fp8_static ? "static" : "dynamic";
    struct {
        const char *name;
        double got, want;
    } nums[] = {{"cudnn", num_of(on, "cudnn"), key->cudnn_version}, {"heads", num_of(on, "heads"), key->n_heads},
                {"head_dim", num_of(on, "head_dim"), key->head_dim},
                {"head_dim_padded", num_of(on, "head_dim_padded"), key->head_dim_padded},
                {"fp8_history", num_of(on, "fp8_history"), key->fp8_history},
                {"max_tokens", num_of(on, "max_tokens"), key->max_tokens},
                {"max_images", num_of(on, "max_images"), key->max_images},
                {"attn_short_max", num_of(on, "attn_short_max"), key->attn_short_max}};
    if (!dev || strcmp(dev, key->device)) {
        st = vitd_fail(err, VITD_E_UNSUPPORTED, "attn_route_file %s: measured on device \"%s\", this is \"%s\"",
                       path, dev ? dev : "?", key->device);
        goto done;
    }
    if (!occ || strcmp(occ, cc)) {
        st = vitd_fail(err, VITD_E_UNSUPPORTED, "attn_route_file %s: measured with compute capability %s, this is %s",
                       path, occ ? occ : "?", cc);
        goto done;
    }
    if (!scal || strcmp(scal, want_scal)) {
        st = vitd_fail(err, VITD_E_UNSUPPORTED, "attn_route_file %s: measured with %s FP8 scaling, this engine uses "
                       "%s", path, scal ? scal : "?", want_scal);
        goto done;
    }
    for (size_t i = 0; i < sizeof nums / sizeof nums[0]; i++)
        if (!(nums[i].got == nums[i].want)) {
            st = vitd_fail(err, VITD_E_UNSUPPORTED, "attn_route_file %s: measured with %s %g, this engine has %g",
                           path, nums[i].name, nums[i].got, nums[i].want);
            goto done;
        }
    const int count = cJSON_GetArraySize(shapes);
    if (count < 1 || count > max) {
        st = vitd_fail(err, VITD_E_INVALID_ARG, "attn_route_file %s: %d shapes, expected 1..%d", path, count, max);
        goto done;
    }
    for (int i = 0; i < count; i++) {
        const cJSON *e = cJSON_GetArrayItem(shapes, i);
        const double im = num_of(e, "images"), len = num_of(e, "max_len"), b = num_of(e, "bf16_ms"),
                     f = num_of(e, "fp8_ms");
        if (!(im >= 1 && im <= 65536 && len >= 1 && len <= (1 << 24) && im == (int)im && len == (int)len &&
              isfinite(b) && isfinite(f))) {
            st = vitd_fail(err, VITD_E_INVALID_ARG, "attn_route_file %s: shape %d needs integer images, max_len >= 1 "
                           "and numeric bf16_ms, fp8_ms", path, i);
            goto done;
        }
        t[i] = (attn_route_entry){(int)im, (int)len, b, f, 0};
    }
    *n = count;
done:
    cJSON_Delete(root);
    return st;
}
