/* attn_route.c — the attention path choice of attn_route.h: parsing attn_dtype, the FP8 support rule and the
 * "auto" routing table (decide from timings, pick per batch, format for the log). Pure functions. */
#include "attn_route.h"

#include <stdio.h>
#include <string.h>

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
