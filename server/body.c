/* body.c — turns a POST /v1/encode body into image byte spans and encode options (server/body.h).
 *
 * Three parsers share one streaming front end (body_feed counts bytes and refuses the chunk that passes
 * max_body_bytes before buffering it):
 *   raw        the chunks append to one arena buffer (grown with arena_realloc, which remaps instead of copying
 *              for big blocks); the buffer is the image.
 *   json       the chunks append to a malloc'd text buffer owned by the state; body_finish parses it with cJSON,
 *              frees the text at once, then decodes each base64 string straight into arena memory and frees that
 *              string inside the DOM, so the peak stays near twice the body size.
 *   multipart  libmicrohttpd's post processor parses the parts; its iterator lands in body_multipart_piece(),
 *              which appends file parts to arena buffers (one per image) and collects small option fields.
 *
 * Multipart part boundaries. The post processor calls its iterator with (off, size) pieces of a part but never
 * says when a part ends, and its first call for a part can be an empty (off 0, size 0) piece either because the
 * part is empty or because the chunk ended right after the part's headers — in which case the data follows as
 * another off 0 piece. To know exactly where parts end, body_feed looks for the boundary delimiters itself
 * ("--B" for the first, then "\r\nB-delimiter" = "\r\n--B", as the post processor matches them) and ends each
 * MHD_post_process() call right after a delimiter: the post processor then has consumed it and closed the part,
 * and body_multipart_delimiter() closes it here too. Within one part, an (off 0, size 0) piece followed by an
 * (off 0, size > 0) piece is therefore one part.
 */
#include "body.h"

#include "json_strict.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <cJSON.h>
#include <microhttpd.h>

#define BOUNDARY_MAX 70          /* RFC 2046 */
#define FIELD_MAX 256            /* longest option field value kept */
#define MP_BUFFER ((size_t)64 << 10)
#define RAW_FIRST_CAP ((size_t)64 << 10)
#define NAME_MAX_KEPT 64

typedef enum { KIND_RAW, KIND_JSON, KIND_MULTIPART } body_kind;

struct body_state {
    body_kind kind;
    arena *a;
    body_limits lim;
    encode_options opts;
    size_t total;                /* bytes fed so far */
    vitd_status failed;          /* sticky error (also what the multipart iterator hit) */
    vitd_err ferr;

    /* raw (arena) and json (malloc) */
    uint8_t *buf;
    size_t len, cap;

    /* multipart */
    struct MHD_PostProcessor *pp;
    size_t blen;
    uint8_t delim[BOUNDARY_MAX + 4]; /* "\r\n--" + boundary; the first delimiter is delim + 2 */
    uint8_t tail[BOUNDARY_MAX + 4];  /* last bytes of the stream, for delimiters split between chunks */
    size_t tail_len;
    uint64_t next_start;         /* stream offset where the next delimiter may start */
    int n_delims;
    int dashes;                  /* '-' bytes seen right after the last delimiter (2: it was the closing one) */
    bool after_delim;            /* the bytes being fed follow a delimiter directly */
    bool closed;                 /* the closing delimiter was fed: the rest is the epilogue, ignored */
    bool part_open;              /* a part has started and no delimiter closed it yet */
    bool part_is_file;
    bool last_zero;              /* the last piece was (off 0, size 0) */
    char part_name[NAME_MAX_KEPT + 1];
    uint8_t *part_data;          /* file part bytes (arena) */
    size_t part_len, part_cap;
    char field[FIELD_MAX + 1];   /* option field value */
    size_t field_len;
    bool field_long;

    /* route options (body_set_extra_options) */
    body_option_fn extra;
    void *extra_user;

    /* images (arena), for every kind */
    body_span *images;
    int n_images, cap_images;
};

const char body_value_too_long[] = "(a value longer than 256 bytes)";

/* ---- small helpers ---- */

/* Copies s into dst (cap bytes) for an error message: at most cap-1 bytes, non-printable bytes as '?', an ellipsis
 * when cut. */
static const char *printable(const char *s, size_t n, char *dst, size_t cap) {
    size_t j = 0;
    for (size_t i = 0; i < n && j + 1 < cap; i++) {
        unsigned char c = (unsigned char)s[i];
        dst[j++] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
    }
    if (j + 1 == cap && n > j && cap > 4) memcpy(dst + cap - 4, "...", 3);
    dst[j] = '\0';
    return dst;
}

static bool is_space(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\f' || c == '\v'; }

static bool starts_with_ci(const char *s, size_t n, const char *prefix) {
    size_t k = strlen(prefix);
    return n >= k && strncasecmp(s, prefix, k) == 0;
}

/* Appends one span to the image list (arena, doubling). */
static vitd_status add_image(body_state *s, const uint8_t *data, size_t len, vitd_err *err) {
    if (s->n_images == s->cap_images) {
        int nc = s->cap_images ? 2 * s->cap_images : 8;
        body_span *ni = arena_realloc(s->a, s->images, (size_t)s->cap_images * sizeof *ni, (size_t)nc * sizeof *ni);
        if (!ni) return vitd_fail(err, VITD_E_NOMEM, "out of request memory for %d images", nc);
        s->images = ni;
        s->cap_images = nc;
    }
    s->images[s->n_images++] = (body_span){data, len};
    return VITD_OK;
}

/* Grows an arena buffer *p of capacity *cap to hold need bytes (doubling). */
static vitd_status grow_arena_buf(arena *a, uint8_t **p, size_t *cap, size_t need, size_t first_cap,
                                  vitd_err *err) {
    if (need <= *cap) return VITD_OK;
    size_t nc = *cap ? *cap : first_cap;
    while (nc < need) nc = nc > SIZE_MAX / 2 ? need : nc * 2;
    uint8_t *np = arena_realloc(a, *p, *cap, nc);
    if (!np) return vitd_fail(err, VITD_E_NOMEM, "out of request memory buffering %zu body bytes", need);
    *p = np;
    *cap = nc;
    return VITD_OK;
}

/* ---- base64 ---- */

enum { B64_BAD = 0x80, B64_SPACE = 0x81, B64_PAD = 0x82 };

/* Value of each byte: 0..63 for both alphabets (standard "+/" and URL-safe "-_"), else B64_BAD, B64_SPACE
 * (space, \t, \r, \n, \f, \v) or B64_PAD ('='). */
static const uint8_t b64_table[256] = {
    0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x81, 0x81, 0x81, 0x81, 0x81, 0x80, 0x80,
    0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80,
    0x81, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x3e, 0x80, 0x3e, 0x80, 0x3f,
    0x34, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3a, 0x3b, 0x3c, 0x3d, 0x80, 0x80, 0x80, 0x82, 0x80, 0x80,
    0x80, 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e,
    0x0f, 0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x80, 0x80, 0x80, 0x80, 0x3f,
    0x80, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f, 0x20, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27, 0x28,
    0x29, 0x2a, 0x2b, 0x2c, 0x2d, 0x2e, 0x2f, 0x30, 0x31, 0x32, 0x33, 0x80, 0x80, 0x80, 0x80, 0x80,
    0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80,
    0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80,
    0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80,
    0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80,
    0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80,
    0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80,
    0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80,
    0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80,
};
static const char b64_alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* Decodes base64 (see body.h) into dst; returns the decoded length, or -1 with *bad at the offending character
 * (len when the input ends in the middle of a group). */
static long b64_decode(const char *src, size_t len, uint8_t *dst, size_t *bad) {
    const unsigned char *s = (const unsigned char *)src;
    size_t i = 0, o = 0;
    uint32_t acc = 0;
    int q = 0;                                   /* sextets in acc */
    while (i < len) {
        if (q == 0) {                            /* fast path: whole groups of four plain characters */
            while (i + 4 <= len) {
                uint8_t a = b64_table[s[i]], b = b64_table[s[i + 1]];
                uint8_t c = b64_table[s[i + 2]], d = b64_table[s[i + 3]];
                if ((a | b | c | d) & 0x80) break;
                uint32_t v = (uint32_t)a << 18 | (uint32_t)b << 12 | (uint32_t)c << 6 | d;
                dst[o] = (uint8_t)(v >> 16);
                dst[o + 1] = (uint8_t)(v >> 8);
                dst[o + 2] = (uint8_t)v;
                o += 3;
                i += 4;
            }
            if (i >= len) break;
        }
        uint8_t v = b64_table[s[i]];
        if (v < 64) {
            acc = acc << 6 | v;
            if (++q == 4) {
                dst[o] = (uint8_t)(acc >> 16);
                dst[o + 1] = (uint8_t)(acc >> 8);
                dst[o + 2] = (uint8_t)acc;
                o += 3;
                acc = 0;
                q = 0;
            }
            i++;
        } else if (v == B64_SPACE) {
            i++;
        } else if (v == B64_PAD) {
            /* padding completes the group exactly; then only whitespace may follow */
            if (q < 2) { *bad = i; return -1; }
            int need = 4 - q, got = 0;
            size_t j = i;
            for (; j < len; j++) {
                uint8_t w = b64_table[s[j]];
                if (w == B64_PAD && got < need) got++;
                else if (w != B64_SPACE) { *bad = j; return -1; }
            }
            if (got != need) { *bad = len; return -1; }
            i = len;
            break;
        } else {
            *bad = i;
            return -1;
        }
    }
    if (q == 1) { *bad = len; return -1; }
    if (q == 2) {
        dst[o++] = (uint8_t)(acc >> 4);
    } else if (q == 3) {
        dst[o] = (uint8_t)(acc >> 10);
        dst[o + 1] = (uint8_t)(acc >> 2);
        o += 2;
    }
    return (long)o;
}

long body_base64_decode(const char *src, size_t len, uint8_t *dst) {
    size_t bad;
    return b64_decode(src, len, dst, &bad);
}

size_t body_base64_encode(const uint8_t *src, size_t n, char *dst) {
    size_t o = 0, i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)src[i] << 16 | (uint32_t)src[i + 1] << 8 | src[i + 2];
        dst[o] = b64_alphabet[v >> 18];
        dst[o + 1] = b64_alphabet[(v >> 12) & 63];
        dst[o + 2] = b64_alphabet[(v >> 6) & 63];
        dst[o + 3] = b64_alphabet[v & 63];
        o += 4;
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)src[i] << 16;
        dst[o] = b64_alphabet[v >> 18];
        dst[o + 1] = b64_alphabet[(v >> 12) & 63];
        dst[o + 2] = dst[o + 3] = '=';
        o += 4;
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)src[i] << 16 | (uint32_t)src[i + 1] << 8;
        dst[o] = b64_alphabet[v >> 18];
        dst[o + 1] = b64_alphabet[(v >> 12) & 63];
        dst[o + 2] = b64_alphabet[(v >> 6) & 63];
        dst[o + 3] = '=';
        o += 4;
    }
    dst[o] = '\0';
    return o;
}

/* ---- options ---- */

int body_apply_option(encode_options *o, const char *key, const char *value, vitd_err *err) {
    char shown[48];
    const char *v = value ? value : "";
    printable(v, strlen(v), shown, sizeof shown);
    if (!strcmp(key, "deepstack")) {
        if (!strcasecmp(v, "true") || !strcmp(v, "1")) o->deepstack = true;
        else if (!strcasecmp(v, "false") || !strcmp(v, "0")) o->deepstack = false;
        else return vitd_fail(err, VITD_E_INVALID_ARG, "deepstack: \"%s\" is not one of true, false, 1, 0", shown);
        return 0;
    }
    if (!strcmp(key, "dtype")) {
        o->dtype_auto = false;
        if (!strcasecmp(v, "float32") || !strcasecmp(v, "fp32")) o->dtype = ST_F32;
        else if (!strcasecmp(v, "bfloat16") || !strcasecmp(v, "bf16")) o->dtype = ST_BF16;
        else if (!strcasecmp(v, "float16") || !strcasecmp(v, "fp16")) o->dtype = ST_F16;
        else
            return vitd_fail(err, VITD_E_INVALID_ARG,
                             "dtype: \"%s\" is not one of float32, bfloat16, float16 (or fp32, bf16, fp16)", shown);
        return 0;
    }
    if (!strcmp(key, "encoding_format")) {
        if (!strcasecmp(v, "float")) o->encoding = ENC_FLOAT;
        else if (!strcasecmp(v, "base64")) o->encoding = ENC_BASE64;
        else return vitd_fail(err, VITD_E_INVALID_ARG, "encoding_format: \"%s\" is not one of float, base64", shown);
        return 0;
    }
    if (!strcmp(key, "layout")) {
        if (!strcasecmp(v, "separate")) o->layout = LAYOUT_SEPARATE;
        else if (!strcasecmp(v, "concat")) o->layout = LAYOUT_CONCAT;
        else return vitd_fail(err, VITD_E_INVALID_ARG, "layout: \"%s\" is not one of separate, concat", shown);
        return 0;
    }
    return 1;
}

static bool is_option_key(const char *k) {
    return !strcmp(k, "deepstack") || !strcmp(k, "dtype") || !strcmp(k, "encoding_format") || !strcmp(k, "layout");
}

/* ---- Content-Type ---- */

#define ACCEPTED_TYPES \
    "image/png, image/jpeg (or another image/*), application/octet-stream, multipart/form-data or application/json"

/* Splits a Content-Type into its lower-case media type and, when present, the boundary parameter (unquoted).
 * Returns false when the media type does not fit mtype. */
static bool parse_content_type(const char *ct, char *mtype, size_t mcap, char *boundary, size_t bcap,
                               bool *has_boundary, bool *boundary_long) {
    *has_boundary = *boundary_long = false;
    while (is_space(*ct)) ct++;
    size_t n = 0;
    while (ct[n] && ct[n] != ';' && !is_space(ct[n])) n++;
    if (n + 1 > mcap) return false;
    for (size_t i = 0; i < n; i++) mtype[i] = (char)((ct[i] >= 'A' && ct[i] <= 'Z') ? ct[i] + 32 : ct[i]);
    mtype[n] = '\0';
    const char *p = strchr(ct + n, ';');
    while (p) {
        p++;
        while (is_space(*p)) p++;
        const char *key = p;
        while (*p && *p != '=' && *p != ';' && !is_space(*p)) p++;
        size_t klen = (size_t)(p - key);
        while (is_space(*p)) p++;
        if (*p != '=') { p = strchr(p, ';'); continue; }
        p++;
        while (is_space(*p)) p++;
        char val[BOUNDARY_MAX + 2];
        size_t vlen = 0;
        bool too_long = false;
        if (*p == '"') {
            p++;
            while (*p && *p != '"') {
                if (*p == '\\' && p[1]) p++;
                if (vlen + 1 < sizeof val) val[vlen++] = *p; else too_long = true;
                p++;
            }
            if (*p == '"') p++;
        } else {
            while (*p && *p != ';' && !is_space(*p)) {
                if (vlen + 1 < sizeof val) val[vlen++] = *p; else too_long = true;
                p++;
            }
        }
        val[vlen] = '\0';
        if (klen == 8 && !strncasecmp(key, "boundary", 8) && !*has_boundary) {
            *has_boundary = true;
            *boundary_long = too_long || vlen + 1 > bcap;
            if (!*boundary_long) memcpy(boundary, val, vlen + 1);
        }
        p = strchr(p, ';');
    }
    return true;
}

/* RFC 2046 boundary: 1..70 of DIGIT ALPHA '()+_,-./:=? and space, not ending in space. */
static bool boundary_ok(const char *b) {
    size_t n = strlen(b);
    if (n == 0 || n > BOUNDARY_MAX || b[n - 1] == ' ') return false;
    for (size_t i = 0; i < n; i++) {
        char c = b[i];
        bool ok = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                  (c && strchr("'()+_,-./:=? ", c));
        if (!ok) return false;
    }
    return true;
}

/* The boundary as libmicrohttpd's post processor reads it from the same header: everything after the first
 * "boundary=" (case-sensitive), with enclosing quotes removed. */
static bool mhd_boundary_equals(const char *ct, const char *boundary) {
    const char *b = strstr(ct, "boundary=");
    if (!b) return false;
    b += strlen("boundary=");
    size_t n = strlen(b);
    if (n >= 2 && b[0] == '"' && b[n - 1] == '"') {
        b++;
        n -= 2;
    }
    return n == strlen(boundary) && !memcmp(b, boundary, n);
}

/* ---- multipart ---- */

static enum MHD_Result mp_iterator(void *cls, enum MHD_ValueKind kind, const char *key, const char *filename,
                                   const char *content_type, const char *transfer_encoding, const char *data,
                                   uint64_t off, size_t size) {
    (void)kind;
    (void)transfer_encoding;
    body_state *s = cls;
    if (body_multipart_piece(s, key, filename, content_type, data, off, size, &s->ferr) != VITD_OK) {
        s->failed = s->ferr.code;
        return MHD_NO;
    }
    return MHD_YES;
}

/* Closes the open part: a file part becomes the next image (an empty one is an error naming it), an option
 * field is applied (unknown fields are ignored). */
static vitd_status mp_close_part(body_state *s, vitd_err *err) {
    if (!s->part_open) return VITD_OK;
    s->part_open = false;
    if (s->part_is_file) {
        int idx = s->n_images;
        if (s->part_len == 0)
            return vitd_fail(err, VITD_E_INVALID_ARG, "image %d: multipart file part \"%s\" is empty", idx,
                             s->part_name);
        uint8_t *d = arena_realloc(s->a, s->part_data, s->part_cap, s->part_len); /* give back the slack */
        if (d) s->part_data = d;
        vitd_status st = add_image(s, s->part_data, s->part_len, err);
        s->part_data = NULL;
        s->part_len = s->part_cap = 0;
        return st;
    }
    if (!s->part_name[0] || (!is_option_key(s->part_name) && !s->extra)) return VITD_OK;
    if (s->field_long && is_option_key(s->part_name))
        return vitd_fail(err, VITD_E_INVALID_ARG, "%s: multipart field value longer than %d bytes", s->part_name,
                         FIELD_MAX);
    if (memchr(s->field, 0, s->field_len)) /* it would cut the value short, as %00 in a query would */
        return vitd_fail(err, VITD_E_INVALID_ARG, "%s: multipart field value holds a NUL byte", s->part_name);
    s->field[s->field_len] = '\0';
    int r = is_option_key(s->part_name) ? body_apply_option(&s->opts, s->part_name, s->field, err)
                                        : s->extra(s->extra_user, s->part_name,
                                                   s->field_long ? body_value_too_long : s->field, err);
    return r < 0 ? (vitd_status)r : VITD_OK;
}

vitd_status body_multipart_delimiter(body_state *s, vitd_err *err) {
    if (s->failed) return vitd_fail(err, s->failed, "%s", s->ferr.msg);
    vitd_status st = mp_close_part(s, err);
    if (st) {
        s->failed = st;
        s->ferr = *err;
    }
    return st;
}

vitd_status body_multipart_piece(body_state *s, const char *name, const char *filename, const char *content_type,
                                 const char *data, uint64_t off, size_t size, vitd_err *err) {
    if (s->failed) return vitd_fail(err, s->failed, "%s", s->ferr.msg);
    vitd_status st = VITD_OK;
    bool new_part = !s->part_open || (off == 0 && !(s->last_zero && size > 0));
    s->last_zero = off == 0 && size == 0;
    if (new_part) {
        if ((st = mp_close_part(s, err))) goto fail;
        s->part_open = true;
        s->part_is_file = filename != NULL ||
                          (content_type != NULL && strncasecmp(content_type, "text/plain", 10) != 0);
        const char *shown = filename ? filename : name ? name : "";
        printable(shown, strlen(shown), s->part_name, sizeof s->part_name);
        if (!s->part_is_file) {
            /* option fields are matched by their exact name */
            if (name && strlen(name) <= NAME_MAX_KEPT) strcpy(s->part_name, name);
            else s->part_name[0] = '\0';
        }
        s->part_data = NULL;
        s->part_len = s->part_cap = 0;
        s->field_len = 0;
        s->field_long = false;
        if (s->part_is_file && s->lim.max_images > 0 && s->n_images >= s->lim.max_images) {
            st = vitd_fail(err, VITD_E_TOO_LARGE, "multipart body has more than max_images %d images",
                           s->lim.max_images);
            goto fail;
        }
    }
    if (size == 0) return VITD_OK;
    if (s->part_is_file) {
        if (s->part_len + size < s->part_len) {
            st = vitd_fail(err, VITD_E_TOO_LARGE, "image %d: part too large", s->n_images);
            goto fail;
        }
        if ((st = grow_arena_buf(s->a, &s->part_data, &s->part_cap, s->part_len + size, RAW_FIRST_CAP, err)))
            goto fail;
        memcpy(s->part_data + s->part_len, data, size);
        s->part_len += size;
    } else {
        size_t room = FIELD_MAX - s->field_len, n = size < room ? size : room;
        memcpy(s->field + s->field_len, data, n);
        s->field_len += n;
        if (n < size) s->field_long = true;
    }
    return VITD_OK;
fail:
    s->failed = st;
    s->ferr = *err;
    return st;
}

/* Finds the end of the next boundary delimiter within d[0, n), continuing the stream (delimiters may straddle
 * chunks). Returns the number of bytes up to and including that end, or 0 when none ends within d. Keeps the last
 * blen+3 stream bytes in s->tail. */
static size_t mp_scan(body_state *s, const uint8_t *d, size_t n) {
    const uint8_t *pat = s->n_delims ? s->delim : s->delim + 2;
    size_t plen = s->n_delims ? s->blen + 4 : s->blen + 2;
    uint64_t t0 = s->total;                       /* stream offset of d[0] */
    size_t end = 0;
    if (s->tail_len) {                            /* delimiters that start in the tail */
        uint8_t tmp[2 * (BOUNDARY_MAX + 4)];
        size_t take = n < plen - 1 ? n : plen - 1;
        memcpy(tmp, s->tail, s->tail_len);
        memcpy(tmp + s->tail_len, d, take);
        uint64_t base = t0 - s->tail_len;
        size_t from = s->next_start > base ? (size_t)(s->next_start - base) : 0;
        for (size_t i = from; i < s->tail_len && !end; i++)
            if (i + plen <= s->tail_len + take && !memcmp(tmp + i, pat, plen)) end = i + plen - s->tail_len;
    }
    if (!end) {
        size_t from = s->next_start > t0 ? (size_t)(s->next_start - t0) : 0;
        if (from < n) {
            const uint8_t *p = memmem(d + from, n - from, pat, plen);
            if (p) end = (size_t)(p - d) + plen;
        }
    }
    size_t used = end ? end : n;
    if (end) {
        s->n_delims++;
        s->next_start = t0 + end;
    } else if (t0 + n >= plen - 1 && t0 + n - (plen - 1) > s->next_start) {
        s->next_start = t0 + n - (plen - 1);
    }
    size_t keep = s->blen + 3;
    if (used >= keep) {
        memcpy(s->tail, d + used - keep, keep);
        s->tail_len = keep;
    } else {
        size_t old = s->tail_len + used > keep ? keep - used : s->tail_len;
        memmove(s->tail, s->tail + s->tail_len - old, old);
        memcpy(s->tail + old, d, used);
        s->tail_len = old + used;
    }
    return end;
}

static vitd_status mp_feed_bytes(body_state *s, const uint8_t *data, size_t n, vitd_err *err) {
    if (s->pp && MHD_post_process(s->pp, (const char *)data, n) != MHD_YES) {
        if (s->failed) return vitd_fail(err, s->failed, "%s", s->ferr.msg);
        s->failed = vitd_fail(&s->ferr, VITD_E_INVALID_ARG,
                              "malformed multipart body (near byte %zu); expected parts delimited by "
                              "\"--%.*s\" lines", s->total + n, (int)s->blen, (const char *)s->delim + 4);
        return vitd_fail(err, s->failed, "%s", s->ferr.msg);
    }
    return VITD_OK;
}

/* Feeds the post processor delimiter by delimiter (body_multipart_delimiter closes each part). After the closing
 * delimiter ("--B--") the rest is the epilogue, which RFC 2046 says to ignore and the post processor would
 * refuse: it is counted, not fed. A preamble before the first delimiter the post processor skips itself. */
static vitd_status mp_feed(body_state *s, const uint8_t *data, size_t size, vitd_err *err) {
    size_t done = 0;
    while (done < size) {
        if (s->closed) {
            s->total += size - done;
            return VITD_OK;
        }
        if (s->after_delim) { /* a part's headers follow, or "--" closes the body */
            if (data[done] == '-') {
                vitd_status st = mp_feed_bytes(s, data + done, 1, err);
                if (st) return st;
                mp_scan(s, data + done, 1);
                s->total++;
                done++;
                if (++s->dashes == 2) s->closed = true;
                continue;
            }
            s->after_delim = false;
        }
        size_t end = mp_scan(s, data + done, size - done);
        size_t n = end ? end : size - done;
        vitd_status st = mp_feed_bytes(s, data + done, n, err);
        if (st) return st;
        s->total += n;
        done += n;
        if (end) {
            if (body_multipart_delimiter(s, err)) return s->failed;
            s->after_delim = true;
            s->dashes = 0;
        }
    }
    return VITD_OK;
}

static vitd_status mp_finish(body_state *s, vitd_err *err) {
    if (s->pp && s->total == 0) return vitd_fail(err, VITD_E_INVALID_ARG, "empty body");
    if (s->pp) {
        enum MHD_Result r = MHD_destroy_post_processor(s->pp);
        s->pp = NULL;
        if (s->n_delims == 0)
            return vitd_fail(err, VITD_E_INVALID_ARG,
                             "multipart body does not contain the boundary \"%.*s\" given in Content-Type",
                             (int)s->blen, (const char *)s->delim + 4);
        if (r != MHD_YES)
            return vitd_fail(err, VITD_E_INVALID_ARG, "multipart body is truncated or malformed: it does not end "
                             "with the closing boundary \"--%.*s--\"", (int)s->blen, (const char *)s->delim + 4);
    }
    vitd_status st = mp_close_part(s, err);
    if (st) return st;
    if (s->n_images == 0) return vitd_fail(err, VITD_E_INVALID_ARG, "no image in multipart body");
    return VITD_OK;
}

/* ---- JSON ---- */

/* Decodes one "images" entry (base64 or a data: URL) into arena memory and adds it as image idx. */
static vitd_status json_image(body_state *s, int idx, const char *str, vitd_err *err) {
    body_span sp;
    vitd_status st = body_image_string(s->a, idx, str, &sp, err);
    return st ? st : add_image(s, sp.data, sp.len, err);
}

vitd_status body_image_string(arena *a, int idx, const char *str, body_span *out, vitd_err *err) {
    size_t len = strlen(str), off = 0;
    while (off < len && is_space(str[off])) off++;
    char shown[64];
    if (starts_with_ci(str + off, len - off, "data:")) {
        const char *hdr = str + off + 5, *comma = memchr(hdr, ',', len - off - 5);
        if (!comma) return vitd_fail(err, VITD_E_INVALID_ARG, "image %d: malformed data: URL (no comma)", idx);
        size_t hlen = (size_t)(comma - hdr), tl = 0;
        while (tl < hlen && hdr[tl] != ';') tl++;
        bool b64 = false;
        for (const char *p = hdr + tl; p < comma;) {     /* parameters ";k=v" ... and the final ";base64" */
            const char *q = p + 1;
            while (q < comma && *q != ';') q++;
            if (q - p - 1 == 6 && !strncasecmp(p + 1, "base64", 6)) b64 = true;
            p = q;
        }
        if (!b64)
            return vitd_fail(err, VITD_E_INVALID_ARG, "image %d: data: URL is not base64-encoded "
                             "(expected data:image/...;base64,...)", idx);
        if (tl < 7 || strncasecmp(hdr, "image/", 6))
            return vitd_fail(err, VITD_E_INVALID_ARG, "image %d: data: URL type \"%s\" is not an image type", idx,
                             printable(hdr, tl, shown, 40));
        off = (size_t)(comma + 1 - str);
    } else {
        /* a URL scheme ("http:", "file:", ...): base64 never contains ':' */
        size_t k = off;
        if (k < len && ((str[k] | 32) >= 'a' && (str[k] | 32) <= 'z')) {
            while (k < len && (((str[k] | 32) >= 'a' && (str[k] | 32) <= 'z') || (str[k] >= '0' && str[k] <= '9') ||
                               str[k] == '+' || str[k] == '.' || str[k] == '-'))
                k++;
            if (k < len && str[k] == ':')
                return vitd_fail(err, VITD_E_INVALID_ARG, "image %d: remote URLs are not fetched (\"%s\"): send "
                                 "the image bytes as base64 or a data: URL", idx,
                                 printable(str + off, len - off, shown, 48));
        }
    }
    size_t n = len - off, cap = n / 4 * 3 + 3;
    uint8_t *dst = arena_alloc(a, cap);
    if (!dst) return vitd_fail(err, VITD_E_NOMEM, "image %d: out of request memory for %zu decoded bytes", idx, cap);
    size_t bad = 0;
    long got = b64_decode(str + off, n, dst, &bad);
    if (got < 0) {
        if (bad >= n)
            return vitd_fail(err, VITD_E_INVALID_ARG, "image %d: invalid base64: input ends in the middle of a "
                             "4-character group (truncated or wrongly padded)", idx);
        unsigned char c = (unsigned char)str[off + bad];
        return vitd_fail(err, VITD_E_INVALID_ARG, "image %d: invalid base64 character %s%c%s(0x%02x) at offset %zu",
                         idx, c >= 0x20 && c < 0x7f ? "'" : "", c >= 0x20 && c < 0x7f ? c : ' ',
                         c >= 0x20 && c < 0x7f ? "' " : "", c, off + bad);
    }
    if (got == 0) return vitd_fail(err, VITD_E_INVALID_ARG, "image %d: empty image data", idx);
    uint8_t *fit = arena_realloc(a, dst, cap, (size_t)got);
    *out = (body_span){fit ? fit : dst, (size_t)got};
    return VITD_OK;
}

const char *body_json_type(const cJSON *j) {
    if (cJSON_IsString(j)) return "a string";
    if (cJSON_IsNumber(j)) return "a number";
    if (cJSON_IsBool(j)) return "a boolean";
    if (cJSON_IsNull(j)) return "null";
    if (cJSON_IsArray(j)) return "an array";
    if (cJSON_IsObject(j)) return "an object";
    return "invalid";
}

/* Applies the option fields of the JSON object (over the defaults and query parameters). */
static vitd_status json_options(body_state *s, const cJSON *root, vitd_err *err) {
    static const char *const keys[] = {"encoding_format", "deepstack", "dtype", "layout"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        const cJSON *j = cJSON_GetObjectItemCaseSensitive(root, keys[i]);
        if (!j || cJSON_IsNull(j)) continue;
        const char *v;
        char num[8];
        if (cJSON_IsString(j)) {
            v = j->valuestring;
        } else if (!strcmp(keys[i], "deepstack") && cJSON_IsBool(j)) {
            v = cJSON_IsTrue(j) ? "true" : "false";
        } else if (!strcmp(keys[i], "deepstack") && cJSON_IsNumber(j) &&
                   (j->valuedouble == 0 || j->valuedouble == 1)) {
            snprintf(num, sizeof num, "%d", (int)j->valuedouble);
            v = num;
        } else {
            return vitd_fail(err, VITD_E_INVALID_ARG, "\"%s\" must be %s, not %s", keys[i],
                             !strcmp(keys[i], "deepstack") ? "true or false" : "a string", body_json_type(j));
        }
        int r = body_apply_option(&s->opts, keys[i], v, err);
        if (r < 0) return (vitd_status)r;
    }
    return VITD_OK;
}

/* Hands the members that are neither images nor encode options to the route's option hook (body.h). */
static vitd_status json_extra(body_state *s, const cJSON *root, vitd_err *err) {
    if (!s->extra) return VITD_OK;
    for (const cJSON *m = root->child; m; m = m->next) {
        const char *k = m->string;
        if (!k || !strcmp(k, "images") || !strcmp(k, "image") || is_option_key(k)) continue;
        const cJSON *first = cJSON_IsArray(m) ? m->child : m, *only = cJSON_IsArray(m) ? NULL : m;
        for (const cJSON *e = first; e; e = only ? NULL : e->next) {
            char num[32];
            const char *v = NULL;
            if (cJSON_IsString(e)) v = e->valuestring;
            else if (cJSON_IsBool(e)) v = cJSON_IsTrue(e) ? "true" : "false";
            else if (cJSON_IsNumber(e)) snprintf(num, sizeof num, "%.17g", e->valuedouble), v = num;
            int r = s->extra(s->extra_user, k, v, err);
            if (r < 0) return (vitd_status)r;
            if (r == 1) break; /* not the route's key: the rest of the array is not either */
        }
    }
    return VITD_OK;
}

static void *arena_json_alloc(void *ctx, size_t n) { return arena_alloc(ctx, n); }

cJSON *body_json_parse(arena *a, const void *text, size_t len, vitd_err *err) {
    json_alloc al = {.alloc = arena_json_alloc, .ctx = a, .budget = json_body_budget(len)};
    vitd_err jerr = {0};
    cJSON *root = json_parse_strict(text, len, &al, NULL, &jerr);
    if (!root && jerr.code == VITD_E_TOO_LARGE)
        vitd_fail(err, VITD_E_TOO_LARGE, "%s; send images as base64 strings", jerr.msg);
    else if (!root)
        *err = jerr;
    return root;
}

static vitd_status json_finish(body_state *s, vitd_err *err) {
    vitd_status st = VITD_OK;
    if (s->len == 0) return vitd_fail(err, VITD_E_INVALID_ARG, "empty body");
    cJSON *root = body_json_parse(s->a, s->buf, s->len, err);
    free(s->buf); /* the text is no longer needed: keep the peak near one copy */
    s->buf = NULL;
    s->len = s->cap = 0;
    if (!root) return err->code;
    if (!cJSON_IsObject(root)) {
        st = vitd_fail(err, VITD_E_INVALID_ARG, "JSON body must be an object like {\"images\": [\"<base64>\"]}, "
                       "not %s", body_json_type(root));
        goto fail;
    }
    if ((st = json_options(s, root, err))) goto fail;
    if ((st = json_extra(s, root, err))) goto fail;
    cJSON *images = cJSON_GetObjectItemCaseSensitive(root, "images");
    cJSON *one = cJSON_GetObjectItemCaseSensitive(root, "image");
    if (images && one) {
        st = vitd_fail(err, VITD_E_INVALID_ARG, "JSON body has both \"images\" and \"image\": give one");
        goto fail;
    }
    if (!images && !one) {
        st = vitd_fail(err, VITD_E_INVALID_ARG, "JSON body has no \"images\" array");
        goto fail;
    }
    if (one) {
        if (!cJSON_IsString(one)) {
            st = vitd_fail(err, VITD_E_INVALID_ARG, "\"image\" must be a string (base64 or a data: URL), not %s",
                           body_json_type(one));
            goto fail;
        }
        st = json_image(s, 0, one->valuestring, err);
        goto fail;
    }
    if (!cJSON_IsArray(images)) {
        st = vitd_fail(err, VITD_E_INVALID_ARG, "\"images\" must be an array of base64 strings, not %s",
                       body_json_type(images));
        goto fail;
    }
    int n = cJSON_GetArraySize(images);
    if (n == 0) {
        st = vitd_fail(err, VITD_E_INVALID_ARG, "\"images\" is empty");
        goto fail;
    }
    if (s->lim.max_images > 0 && n > s->lim.max_images) {
        st = vitd_fail(err, VITD_E_TOO_LARGE, "%d images exceed max_images %d", n, s->lim.max_images);
        goto fail;
    }
    int i = 0;
    for (cJSON *e = images->child; e; e = e->next, i++) {
        if (!cJSON_IsString(e) || !e->valuestring) {
            st = vitd_fail(err, VITD_E_INVALID_ARG, "image %d: must be a string (base64 or a data: URL), not %s", i,
                           body_json_type(e));
            goto fail;
        }
        if ((st = json_image(s, i, e->valuestring, err))) goto fail;
        if (arena_release(s->a, e->valuestring)) e->valuestring = NULL; /* the text is decoded: give it back */
    }
fail:
    return st; /* the tree is the request arena's */
}

/* ---- public ---- */

vitd_status body_begin(struct MHD_Connection *conn, const char *content_type, const body_limits *lim,
                       const encode_options *opts, arena *a, body_state **out, vitd_err *err) {
    *out = NULL;
    if (!lim || !opts || !a) return vitd_fail(err, VITD_E_INTERNAL, "body_begin: missing limits, options or arena");
    char shown[64];
    if (!content_type || !*content_type)
        return vitd_fail(err, VITD_E_UNSUPPORTED, "missing Content-Type: send " ACCEPTED_TYPES);
    char mtype[128], boundary[BOUNDARY_MAX + 1];
    bool has_b, b_long;
    if (!parse_content_type(content_type, mtype, sizeof mtype, boundary, sizeof boundary, &has_b, &b_long))
        return vitd_fail(err, VITD_E_UNSUPPORTED, "unsupported Content-Type \"%s\": send " ACCEPTED_TYPES,
                         printable(content_type, strlen(content_type), shown, sizeof shown));
    body_kind kind;
    if (!strcmp(mtype, "application/octet-stream") || (!strncmp(mtype, "image/", 6) && mtype[6]))
        kind = KIND_RAW;
    else if (!strcmp(mtype, "application/json"))
        kind = KIND_JSON;
    else if (!strcmp(mtype, "multipart/form-data"))
        kind = KIND_MULTIPART;
    else
        return vitd_fail(err, VITD_E_UNSUPPORTED, "unsupported Content-Type \"%s\": send " ACCEPTED_TYPES,
                         printable(content_type, strlen(content_type), shown, sizeof shown));
    if (kind == KIND_MULTIPART) {
        if (!has_b) return vitd_fail(err, VITD_E_INVALID_ARG, "multipart/form-data without a boundary parameter");
        if (b_long)
            return vitd_fail(err, VITD_E_INVALID_ARG, "bad multipart boundary: longer than %d characters",
                             BOUNDARY_MAX);
        if (!boundary_ok(boundary))
            return vitd_fail(err, VITD_E_INVALID_ARG, "bad multipart boundary \"%s\": 1 to 70 letters, digits or "
                             "'()+_,-./:=? (RFC 2046)", printable(boundary, strlen(boundary), shown, 48));
        if (conn && !mhd_boundary_equals(content_type, boundary))
            return vitd_fail(err, VITD_E_INVALID_ARG, "multipart boundary must be the last Content-Type parameter, "
                             "written in lower case as boundary=...");
    }
    body_state *s = arena_calloc(a, 1, sizeof *s);
    if (!s) return vitd_fail(err, VITD_E_NOMEM, "out of request memory");
    s->kind = kind;
    s->a = a;
    s->lim = *lim;
    s->opts = *opts;
    if (kind == KIND_MULTIPART) {
        s->blen = strlen(boundary);
        memcpy(s->delim, "\r\n--", 4);
        memcpy(s->delim + 4, boundary, s->blen);
        if (conn) {
            s->pp = MHD_create_post_processor(conn, MP_BUFFER, mp_iterator, s);
            if (!s->pp)
                return vitd_fail(err, VITD_E_INVALID_ARG, "bad multipart Content-Type \"%s\" (boundary not usable)",
                                 printable(content_type, strlen(content_type), shown, sizeof shown));
        }
    }
    *out = s;
    return VITD_OK;
}

vitd_status body_begin_whole(const body_limits *lim, const encode_options *opts, arena *a, body_state **out,
                             vitd_err *err) {
    *out = NULL;
    body_state *s = arena_calloc(a, 1, sizeof *s);
    if (!s) return vitd_fail(err, VITD_E_NOMEM, "out of request memory");
    s->kind = KIND_RAW;
    s->a = a;
    s->lim = *lim;
    s->opts = *opts;
    *out = s;
    return VITD_OK;
}

void body_set_extra_options(body_state *s, body_option_fn fn, void *user) {
    s->extra = fn;
    s->extra_user = user;
}

vitd_status body_feed(body_state *s, const char *data, size_t size, vitd_err *err) {
    if (s->failed) return vitd_fail(err, s->failed, "%s", s->ferr.msg);
    if (size == 0) return VITD_OK;
    if (s->lim.max_body_bytes && (size > s->lim.max_body_bytes || s->total > s->lim.max_body_bytes - size)) {
        s->failed = vitd_fail(&s->ferr, VITD_E_TOO_LARGE, "body exceeds max_body_bytes %zu", s->lim.max_body_bytes);
        return vitd_fail(err, s->failed, "%s", s->ferr.msg);
    }
    vitd_status st = VITD_OK;
    switch (s->kind) {
    case KIND_RAW:
        st = grow_arena_buf(s->a, &s->buf, &s->cap, s->len + size, RAW_FIRST_CAP, err);
        if (st) break;
        memcpy(s->buf + s->len, data, size);
        s->len += size;
        s->total += size;
        break;
    case KIND_JSON:
        if (s->len + size > s->cap) {
            size_t nc = s->cap ? s->cap : RAW_FIRST_CAP;
            while (nc < s->len + size) nc *= 2;
            uint8_t *nb = realloc(s->buf, nc);
            if (!nb) {
                st = vitd_fail(err, VITD_E_NOMEM, "out of memory buffering a %zu-byte JSON body", s->len + size);
                break;
            }
            s->buf = nb;
            s->cap = nc;
        }
        memcpy(s->buf + s->len, data, size);
        s->len += size;
        s->total += size;
        break;
    case KIND_MULTIPART:
        return mp_feed(s, (const uint8_t *)data, size, err);
    }
    if (st) {
        s->failed = st;
        s->ferr = *err;
    }
    return st;
}

vitd_status body_finish(body_state *s, body_result *out, vitd_err *err) {
    memset(out, 0, sizeof *out);
    if (s->failed) return vitd_fail(err, s->failed, "%s", s->ferr.msg);
    vitd_status st = VITD_OK;
    switch (s->kind) {
    case KIND_RAW:
        if (s->len == 0) {
            st = vitd_fail(err, VITD_E_INVALID_ARG, "empty body");
            break;
        }
        uint8_t *fit = arena_realloc(s->a, s->buf, s->cap, s->len);
        if (fit) {
            s->buf = fit;
            s->cap = s->len;
        }
        st = add_image(s, s->buf, s->len, err);
        break;
    case KIND_JSON:
        st = json_finish(s, err);
        break;
    case KIND_MULTIPART:
        st = mp_finish(s, err);
        break;
    }
    if (st) {
        s->failed = st;
        s->ferr = *err;
        return st;
    }
    out->n_images = s->n_images;
    out->images = s->images;
    out->opts = s->opts;
    return VITD_OK;
}

void body_end(body_state *s) {
    if (!s) return;
    if (s->pp) MHD_destroy_post_processor(s->pp);
    s->pp = NULL;
    if (s->kind == KIND_JSON) free(s->buf);
    s->buf = NULL;
}
