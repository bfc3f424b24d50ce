/* reply.c — what the service sends back (server/reply.h): the one status -> HTTP code table, JSON error bodies,
 * and the JSON (float or base64) and safetensors encodings of an /v1/encode answer.
 *
 * JSON answers are written straight into one growing malloc'd buffer (realloc remaps big blocks instead of
 * copying); cJSON is not used because a DOM of millions of numbers would cost many times the text. Floats are
 * printed by fmt_f32(): the shortest decimal that reads back to the same float32 both through strtof and through
 * strtod + cast, proven with exact double arithmetic (10^0..10^22 are exact doubles). That proof covers values in
 * about [1e-15, 1e22); outside it a value keeps up to 9 significant digits, which always read back. About 12 bytes
 * and 15 ns per float. JSON has no NaN or Infinity: they are written as null.
 * With encoding_format=base64 each tensor is one string: base64 of its little-endian values in the answer's dtype
 * (float32, or bfloat16 / float16 as uint16). With dtype bfloat16 or float16 and float encoding, the numbers are the
 * float32 values of the rounded bfloat16 / float16 values, so both encodings carry the same numbers.
 */
#include "reply.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "safetensors.h"
#include "util.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "reply.c writes float bytes as they lie in memory: a little-endian host is assumed"
#endif

int reply_http_status(vitd_status s) {
    switch (s) {
    case VITD_OK: return 200;
    case VITD_E_INVALID_ARG: return 400;
    case VITD_E_BAD_IMAGE: return 422;
    case VITD_E_UNSUPPORTED: return 415;
    case VITD_E_TOO_LARGE: return 413;
    case VITD_E_BUSY: return 503;
    case VITD_E_TIMEOUT: return 504;
    case VITD_E_CANCELLED: return 503;
    case VITD_E_NOMEM: return 503;
    case VITD_E_IO:
    case VITD_E_MODEL:
    case VITD_E_GPU:
    case VITD_E_INTERNAL: return 500;
    }
    return 500;
}

/* ---- growing text buffer ---- */

typedef struct {
    char *p;
    size_t len, cap;
    bool oom;
} jbuf;

/* Makes room for n more bytes; returns the write position or NULL (and sets oom). */
static char *jb_reserve(jbuf *b, size_t n) {
    if (b->oom) return NULL;
    if (b->len + n > b->cap) {
        size_t nc = b->cap ? b->cap : 4096;
        while (nc < b->len + n) nc += nc / 2;
        char *np = realloc(b->p, nc);
        if (!np) {
            b->oom = true;
            return NULL;
        }
        b->p = np;
        b->cap = nc;
    }
    return b->p + b->len;
}

static void jb_put(jbuf *b, const char *s, size_t n) {
    char *w = jb_reserve(b, n);
    if (!w) return;
    memcpy(w, s, n);
    b->len += n;
}

static void jb_puts(jbuf *b, const char *s) { jb_put(b, s, strlen(s)); }

static void jb_long(jbuf *b, long long v) {
    char tmp[32];
    int n = snprintf(tmp, sizeof tmp, "%lld", v);
    jb_put(b, tmp, (size_t)n);
}

/* Length of the valid UTF-8 sequence at s (n bytes left), or 0 when it is not one. */
static size_t utf8_len(const unsigned char *s, size_t n) {
    unsigned c = s[0];
    size_t k;
    unsigned min;
    if (c < 0x80) return 1;
    if (c >= 0xc2 && c <= 0xdf) k = 2, min = 0x80;
    else if (c >= 0xe0 && c <= 0xef) k = 3, min = 0x800;
    else if (c >= 0xf0 && c <= 0xf4) k = 4, min = 0x10000;
    else return 0;
    if (k > n) return 0;
    unsigned cp = c & (0xff >> (k + 1));
    for (size_t i = 1; i < k; i++) {
        if ((s[i] & 0xc0) != 0x80) return 0;
        cp = cp << 6 | (s[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
    return k;
}

/* Writes s as a JSON string: quotes, backslash and control characters escaped; bytes that are not valid UTF-8
 * become U+FFFD, so the answer is always valid JSON. NULL is written as null. */
static void jb_str(jbuf *b, const char *s) {
    if (!s) {
        jb_puts(b, "null");
        return;
    }
    size_t n = strlen(s);
    const unsigned char *u = (const unsigned char *)s;
    jb_put(b, "\"", 1);
    size_t i = 0;
    while (i < n) {
        size_t run = i;
        while (run < n && u[run] >= 0x20 && u[run] < 0x80 && u[run] != '"' && u[run] != '\\') run++;
        if (run > i) {
            jb_put(b, s + i, run - i);
            i = run;
            continue;
        }
        unsigned c = u[i];
        char esc[8];
        if (c == '"') jb_put(b, "\\\"", 2);
        else if (c == '\\') jb_put(b, "\\\\", 2);
        else if (c == '\n') jb_put(b, "\\n", 2);
        else if (c == '\r') jb_put(b, "\\r", 2);
        else if (c == '\t') jb_put(b, "\\t", 2);
        else if (c == '\b') jb_put(b, "\\b", 2);
        else if (c == '\f') jb_put(b, "\\f", 2);
        else if (c < 0x20) {
            snprintf(esc, sizeof esc, "\\u%04x", c);
            jb_put(b, esc, 6);
        } else {
            size_t k = utf8_len(u + i, n - i);
            if (k) {
                jb_put(b, s + i, k);
                i += k;
                continue;
            }
            jb_put(b, "\\ufffd", 6);
        }
        i++;
    }
    jb_put(b, "\"", 1);
}

/* Ends the buffer with a NUL (not counted) and hands it over; NULL after any allocation failure. */
static char *jb_take(jbuf *b, size_t *len) {
    if (!jb_reserve(b, 1)) {
        free(b->p);
        return NULL;
    }
    b->p[b->len] = '\0';
    char *shrunk = realloc(b->p, b->len + 1);
    if (len) *len = b->len;
    return shrunk ? shrunk : b->p;
}

/* ---- errors ---- */

char *reply_error_json(const char *code, const char *message, const char *request_id, size_t *len) {
    jbuf b = {0};
    jb_puts(&b, "{\"error\":{\"code\":");
    jb_str(&b, code ? code : "internal");
    jb_puts(&b, ",\"message\":");
    jb_str(&b, message ? message : "");
    jb_puts(&b, ",\"request_id\":");
    jb_str(&b, request_id);
    jb_puts(&b, "}}\n");
    return jb_take(&b, len);
}

/* ---- float formatting ---- */

/* 10^0 .. 10^22: exactly representable in double, so one multiplication or division by them rounds once. */
static const double pow10_exact[23] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,  1e8,  1e9,  1e10, 1e11,
                                       1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

/* v * 10^e for e in [-60, 60]: a few roundings beyond +-22, used only where 1e-15 relative error is harmless. */
static double scale10(double v, int e) {
    while (e > 22) {
        v *= 1e22;
        e -= 22;
    }
    while (e < -22) {
        v /= 1e22;
        e += 22;
    }
    return e >= 0 ? v * pow10_exact[e] : v / pow10_exact[-e];
}

/* True when the double r lies exactly halfway between two adjacent float32 values. */
static bool is_f32_midpoint(double r) {
    uint64_t b;
    memcpy(&b, &r, 8);
    int e = (int)((b >> 52) & 0x7ff) - 1023;
    uint64_t m = (b & ((1ull << 52) - 1)) | (1ull << 52);
    int sh = e >= -126 ? 28 : -98 - e; /* bits of m below the float's half-ulp */
    if (sh < 0 || sh > 52) return false;
    return (m & ((2ull << sh) - 1)) == (1ull << sh);
}

/* True when the decimal c * 10^e reads back as the float a (a > 0), both through a correct decimal -> float32
 * conversion (strtof) and through decimal -> double -> float32 (a JSON parser, then a cast). c < 2^53 and 10^|e|
 * are exact doubles, so r below is the correctly rounded double of the decimal, exactly what strtod gives; casting
 * r to float is the second path. The first path agrees with it unless r was rounded onto a float midpoint (then
 * the exact decimal lies on one side of it, which the cast cannot see): such candidates are refused. */
static bool reads_back(uint64_t c, int e, float a) {
    if (e > 22 || e < -22) return false;
    double p = pow10_exact[e >= 0 ? e : -e], x = (double)c;
    double r = e >= 0 ? x * p : x / p;
    if ((float)r != a) return false;
    if (!is_f32_midpoint(r)) return true;
    return e >= 0 ? fma(x, p, -r) == 0 : fma(r, p, -x) == 0; /* r exact: a true tie, rounded to even by both */
}

static const char digits2[201] = "00010203040506070809101112131415161718192021222324252627282930313233343536373839"
                                 "40414243444546474849505152535455565758596061626364656667686970717273747576777879"
                                 "8081828384858687888990919293949596979899";

/* Writes the n decimal digits of c (c < 10^n). */
static void put_digits(char *dst, uint64_t c, int n) {
    while (n >= 2) {
        memcpy(dst + n - 2, digits2 + 2 * (c % 100), 2);
        c /= 100;
        n -= 2;
    }
    if (n == 1) dst[0] = (char)('0' + c);
}

/* Writes the float as the shortest JSON number that reads back to it (see the file comment); NaN and
 * infinities as null. dst needs 16 bytes. Returns the length. */
static int fmt_f32(char *dst, float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    char *p = dst;
    if ((u & 0x7f800000u) == 0x7f800000u) {
        memcpy(p, "null", 4);
        return 4;
    }
    if (u >> 31) *p++ = '-';
    u &= 0x7fffffffu;
    if (u == 0) {
        *p++ = '0';
        return (int)(p - dst);
    }
    float a;
    memcpy(&a, &u, 4);
    double v = a;
    /* k = floor(log10 v): estimate from the binary exponent, then correct against the 9-digit integer */
    uint64_t vb;
    memcpy(&vb, &v, 8);
    int e2 = (int)((vb >> 52) & 0x7ff) - 1023;
    /* floor(e2 * log10(2)); >> of a negative value is an arithmetic shift in GCC and Clang */
    int k = (int)(((int64_t)e2 * 78913) >> 18);
    uint64_t d;
    for (;;) {
        d = (uint64_t)(scale10(v, 8 - k) + 0.5);
        if (d >= 1000000000u) k++;
        else if (d < 100000000u) k--;
        else break;
    }
    /* d * 10^(k-8) is within 0.5 units of the 9th digit of v: relative error < 1e-8 < half a float ulp
     * (>= 2^-25), so 9 digits always read back. Now drop digits while a shorter decimal still reads back. */
    int n = 9;
    int e = k - 8; /* value = d * 10^e */
    while (n > 1) {
        uint64_t lo = d / 10, r = d % 10;
        if (r == 0) {
            d = lo;
        } else {
            uint64_t first = r < 5 ? lo : lo + 1, second = r < 5 ? lo + 1 : lo;
            if (reads_back(first, e + 1, a)) d = first;
            else if (reads_back(second, e + 1, a)) d = second;
            else break;
        }
        n--;
        e++;
        if (d == (uint64_t)pow10_exact[n]) { /* 99..9 + 1 carried into a new digit */
            d /= 10;
            e++;
        }
    }
    while (n > 1 && d % 10 == 0) {
        d /= 10;
        n--;
        e++;
    }
    int K = e + n - 1; /* exponent of the leading digit */
    char dig[10];
    put_digits(dig, d, n);
    int absK = K < 0 ? -K : K;
    int len_exp = n + (n > 1) + 1 + (K < 0) + (absK >= 10 ? 2 : 1);
    int len_fix = K >= n - 1 ? K + 1 : K >= 0 ? n + 1 : n + 1 - K;
    if (len_fix <= len_exp) {
        if (K >= n - 1) {
            memcpy(p, dig, (size_t)n);
            p += n;
            for (int i = 0; i < K - n + 1; i++) *p++ = '0';
        } else if (K >= 0) {
            memcpy(p, dig, (size_t)K + 1);
            p += K + 1;
            *p++ = '.';
            memcpy(p, dig + K + 1, (size_t)(n - K - 1));
            p += n - K - 1;
        } else {
            *p++ = '0';
            *p++ = '.';
            for (int i = 0; i < -K - 1; i++) *p++ = '0';
            memcpy(p, dig, (size_t)n);
            p += n;
        }
    } else {
        *p++ = dig[0];
        if (n > 1) {
            *p++ = '.';
            memcpy(p, dig + 1, (size_t)n - 1);
            p += n - 1;
        }
        *p++ = 'e';
        if (K < 0) *p++ = '-';
        if (absK >= 10) {
            memcpy(p, digits2 + 2 * absK, 2);
            p += 2;
        } else {
            *p++ = (char)('0' + absK);
        }
    }
    return (int)(p - dst);
}

/* Exposed for tests through reply_format_f32 (reply.h). */
int reply_format_f32(char *dst, float f) { return fmt_f32(dst, f); }

/* ---- encode answers ---- */

/* The value the answer carries for x in dtype: x itself, or x rounded to bfloat16 / float16. */
static inline float round_to(float x, st_dtype dt) {
    if (dt == ST_BF16) return bf16_to_f32(f32_to_bf16(x));
    if (dt == ST_F16) return f16_to_f32(f32_to_f16(x));
    return x;
}

const float *reply_row_f32(const void *base, bool bf16, size_t off, size_t n, float *scratch) {
    if (!bf16) return (const float *)base + off;
    const uint16_t *h = (const uint16_t *)base + off;
    for (size_t j = 0; j < n; j++) scratch[j] = bf16_to_f32(h[j]);
    return scratch;
}

/* One image's tensors as the answer lays them out. */
typedef struct {
    int64_t tokens;
    int D;            /* out_hidden */
    int nd;           /* deepstack layers included (0 when dropped) */
    const void *emb;  /* [tokens, D] */
    const void *ds;   /* [nd][tokens][D] */
    bool bf16;        /* emb and ds hold bfloat16 values */
} img_view;

static img_view view_of(const reply_encode *r, int i) {
    const reply_image *im = &r->images[i];
    img_view v = {(int64_t)im->grid.t * im->grid.h * im->grid.w / 4, r->out_hidden, 0, im->embeddings,
                  im->deepstack, im->bf16};
    if (r->opts.deepstack && im->deepstack && r->n_deepstack > 0) v.nd = r->n_deepstack;
    return v;
}

/* Element offset of row t of tensor seg (0 = embeddings, 1.. = deepstack layer seg-1) in its buffer. */
static inline size_t row_off(const img_view *v, int seg, int64_t t) {
    return (size_t)((seg == 0 ? t : (int64_t)(seg - 1) * v->tokens + t) * v->D);
}

/* Row t of tensor seg as float32 (scratch: D floats, used for bfloat16 sources). */
static inline const float *row_of(const img_view *v, int seg, int64_t t, float *scratch) {
    return reply_row_f32(seg == 0 ? v->emb : v->ds, v->bf16, row_off(v, seg, t), (size_t)v->D, scratch);
}

/* Row t of tensor seg as its stored bytes (bfloat16 or float32). */
static inline const uint8_t *row_raw(const img_view *v, int seg, int64_t t) {
    return (const uint8_t *)(seg == 0 ? v->emb : v->ds) + row_off(v, seg, t) * (v->bf16 ? 2 : 4);
}

/* Streaming base64 into a jbuf (carry of up to two bytes between calls). */
typedef struct {
    jbuf *b;
    uint8_t carry[2];
    int nc;
} b64w;

static void b64w_put(b64w *w, const uint8_t *src, size_t n) {
    if (!n) return;
    if (w->nc) {
        uint8_t tri[3];
        memcpy(tri, w->carry, (size_t)w->nc);
        size_t take = (size_t)(3 - w->nc) < n ? (size_t)(3 - w->nc) : n;
        memcpy(tri + w->nc, src, take);
        if (w->nc + (int)take < 3) {
            memcpy(w->carry, tri, (size_t)w->nc + take);
            w->nc += (int)take;
            return;
        }
        char *o = jb_reserve(w->b, 5);
        if (!o) return;
        body_base64_encode(tri, 3, o);
        w->b->len += 4;
        src += take;
        n -= take;
        w->nc = 0;
    }
    size_t whole = n / 3 * 3;
    char *o = jb_reserve(w->b, whole / 3 * 4 + 1);
    if (!o) return;
    w->b->len += body_base64_encode(src, whole, o);
    memcpy(w->carry, src + whole, n - whole);
    w->nc = (int)(n - whole);
}

static void b64w_end(b64w *w) {
    if (!w->nc) return;
    char *o = jb_reserve(w->b, 5);
    if (!o) return;
    w->b->len += body_base64_encode(w->carry, (size_t)w->nc, o);
    w->nc = 0;
}

/* Writes segments [seg0, seg1) of every row, concatenated per row, as nested arrays or one base64 string.
 * scratch holds D floats and D uint16 values. */
static void put_tensor(jbuf *b, const img_view *v, int seg0, int seg1, const encode_options *o, void *scratch) {
    int64_t width = (int64_t)v->D * (seg1 - seg0);
    float *fs = scratch;
    uint16_t *hs = (uint16_t *)(fs + v->D);
    if (o->encoding == ENC_BASE64) {
        b64w w = {b, {0, 0}, 0};
        size_t es = o->dtype == ST_F32 ? 4 : 2;
        jb_put(b, "\"", 1);
        for (int64_t t = 0; t < v->tokens; t++) {
            for (int s = seg0; s < seg1; s++) {
                if ((o->dtype == ST_BF16) == v->bf16 && o->dtype != ST_F16) { /* stored as asked: as it is */
                    b64w_put(&w, row_raw(v, s, t), (size_t)v->D * es);
                    continue;
                }
                const float *x = row_of(v, s, t, fs);
                if (o->dtype == ST_F32) {
                    b64w_put(&w, (const uint8_t *)x, (size_t)v->D * es);
                    continue;
                }
                for (int j = 0; j < v->D; j++) hs[j] = o->dtype == ST_BF16 ? f32_to_bf16(x[j]) : f32_to_f16(x[j]);
                b64w_put(&w, (const uint8_t *)hs, (size_t)v->D * es);
            }
        }
        b64w_end(&w);
        jb_put(b, "\"", 1);
        return;
    }
    jb_put(b, "[", 1);
    for (int64_t t = 0; t < v->tokens; t++) {
        char *p = jb_reserve(b, (size_t)width * 16 + 4);
        if (!p) return;
        char *p0 = p;
        *p++ = '[';
        for (int s = seg0; s < seg1; s++) {
            const float *x = row_of(v, s, t, fs);
            if (o->dtype == ST_F32) {
                for (int j = 0; j < v->D; j++) {
                    p += fmt_f32(p, x[j]);
                    *p++ = ',';
                }
            } else {
                for (int j = 0; j < v->D; j++) {
                    p += fmt_f32(p, round_to(x[j], o->dtype));
                    *p++ = ',';
                }
            }
        }
        if (width > 0) p--;
        *p++ = ']';
        if (t + 1 < v->tokens) *p++ = ',';
        b->len += (size_t)(p - p0);
    }
    jb_put(b, "]", 1);
}

static const char *dtype_name(st_dtype d) {
    return d == ST_BF16 ? "bfloat16" : d == ST_F16 ? "float16" : "float32";
}

char *reply_encode_json(const reply_encode *r, size_t *len) {
    jbuf b = {0};
    const encode_options *o = &r->opts;
    void *scratch = malloc((size_t)(r->out_hidden > 0 ? r->out_hidden : 1) * 6);
    if (!scratch) return NULL;
    jb_puts(&b, "{\"id\":");
    jb_str(&b, r->id);
    jb_puts(&b, ",\"model\":");
    jb_str(&b, r->model);
    jb_puts(&b, ",\"encoding_format\":");
    jb_puts(&b, o->encoding == ENC_BASE64 ? "\"base64\"" : "\"float\"");
    jb_puts(&b, ",\"dtype\":\"");
    jb_puts(&b, dtype_name(o->dtype));
    jb_puts(&b, "\",\"layout\":");
    jb_puts(&b, o->layout == LAYOUT_CONCAT ? "\"concat\"" : "\"separate\"");
    jb_puts(&b, ",\"data\":[");
    long long patches = 0;
    for (int i = 0; i < r->n_images; i++) {
        const reply_image *im = &r->images[i];
        img_view v = view_of(r, i);
        patches += (long long)im->grid.t * im->grid.h * im->grid.w;
        if (i) jb_put(&b, ",", 1);
        jb_puts(&b, "{\"index\":");
        jb_long(&b, i);
        jb_puts(&b, ",\"grid_thw\":[");
        jb_long(&b, im->grid.t);
        jb_put(&b, ",", 1);
        jb_long(&b, im->grid.h);
        jb_put(&b, ",", 1);
        jb_long(&b, im->grid.w);
        jb_puts(&b, "],\"shape\":[");
        jb_long(&b, v.tokens);
        jb_put(&b, ",", 1);
        bool concat = o->layout == LAYOUT_CONCAT;
        jb_long(&b, (long long)v.D * (concat ? 1 + v.nd : 1));
        jb_puts(&b, "],\"embedding\":");
        put_tensor(&b, &v, 0, concat ? 1 + v.nd : 1, o, scratch);
        if (!concat && v.nd > 0) {
            jb_puts(&b, ",\"deepstack\":[");
            for (int l = 0; l < v.nd; l++) {
                if (l) jb_put(&b, ",", 1);
                jb_puts(&b, "{\"layer\":");
                jb_long(&b, r->deepstack_layers ? r->deepstack_layers[l] : l);
                jb_puts(&b, ",\"shape\":[");
                jb_long(&b, v.tokens);
                jb_put(&b, ",", 1);
                jb_long(&b, v.D);
                jb_puts(&b, "],\"embedding\":");
                put_tensor(&b, &v, 1 + l, 2 + l, o, scratch);
                jb_put(&b, "}", 1);
            }
            jb_put(&b, "]", 1);
        }
        jb_put(&b, "}", 1);
    }
    jb_puts(&b, "],\"usage\":{\"images\":");
    jb_long(&b, r->n_images);
    jb_puts(&b, ",\"patches\":");
    jb_long(&b, patches);
    jb_puts(&b, ",\"tokens\":");
    jb_long(&b, patches / 4);
    jb_puts(&b, "}}\n");
    free(scratch);
    return jb_take(&b, len);
}

/* ---- safetensors ---- */

/* Produces a tensor for the writer chunk by chunk: segments [seg0, seg1) of each row, concatenated per row. */
typedef struct {
    img_view v;
    int seg0, seg1;
} st_src;

static vitd_status st_fill_rows(void *user, int64_t first, int64_t count, float *out, vitd_err *err) {
    (void)err;
    const st_src *s = user;
    int64_t D = s->v.D, width = D * (s->seg1 - s->seg0);
    while (count > 0) {
        int64_t t = first / width, c = first % width;
        int seg = s->seg0 + (int)(c / D);
        int64_t j = c % D, run = D - j < count ? D - j : count;
        const size_t off = row_off(&s->v, seg, t) + (size_t)j;
        if (s->v.bf16) {
            const uint16_t *h = (const uint16_t *)(seg == 0 ? s->v.emb : s->v.ds) + off;
            for (int64_t q = 0; q < run; q++) out[q] = bf16_to_f32(h[q]);
        } else {
            memcpy(out, (const float *)(seg == 0 ? s->v.emb : s->v.ds) + off, (size_t)run * sizeof(float));
        }
        out += run;
        first += run;
        count -= run;
    }
    return VITD_OK;
}

int reply_encode_safetensors_segments(const reply_encode *r, reply_segments *out) {
    memset(out, 0, sizeof *out);
    if (r->opts.layout != LAYOUT_SEPARATE) return 1;
    for (int i = 0; i < r->n_images; i++)
        if ((r->images[i].bf16 ? ST_BF16 : ST_F32) != r->opts.dtype) return 1;
    vitd_err err;
    st_writer *w = st_writer_create();
    int max_seg = r->n_images * (2 + (r->n_deepstack > 0 ? r->n_deepstack : 0));
    out->seg = calloc((size_t)(max_seg > 0 ? max_seg : 1), sizeof *out->seg);
    if (!out->seg) goto fail;
    if (st_writer_set_metadata(w, "id", r->id ? r->id : "", &err)) goto fail;
    if (st_writer_set_metadata(w, "model", r->model ? r->model : "", &err)) goto fail;
    if (st_writer_set_metadata(w, "dtype", dtype_name(r->opts.dtype), &err)) goto fail;
    if (st_writer_set_metadata(w, "layout", "separate", &err)) goto fail;
    size_t es = st_dtype_size(r->opts.dtype);
    for (int i = 0; i < r->n_images; i++) {
        img_view v = view_of(r, i);
        char name[96];
        int64_t shape[2] = {v.tokens, v.D}, three = 3;
        snprintf(name, sizeof name, "image.%d.embeddings", i);
        if (st_writer_add_ref(w, name, r->opts.dtype, 2, shape, v.emb, &err)) goto fail;
        for (int l = 0; l < v.nd; l++) {
            int layer = r->deepstack_layers ? r->deepstack_layers[l] : l;
            snprintf(name, sizeof name, "image.%d.deepstack.%d", i, layer);
            const uint8_t *d = (const uint8_t *)v.ds + (size_t)l * (size_t)v.tokens * (size_t)v.D * es;
            if (st_writer_add_ref(w, name, r->opts.dtype, 2, shape, d, &err)) goto fail;
        }
        const vitd_grid *g = &r->images[i].grid;
        int64_t thw[3] = {g->t, g->h, g->w};
        snprintf(name, sizeof name, "image.%d.grid_thw", i);
        if (st_writer_add(w, name, ST_I64, 1, &three, thw, &err)) goto fail;
    }
    if (st_writer_to_segments(w, &out->header, &out->header_len, out->seg, &err)) goto fail;
    out->w = w;
    out->n_seg = st_writer_count(w);
    out->total = out->header_len + st_writer_data_bytes(w);
    return 0;
fail:
    free(out->seg);
    st_writer_free(w);
    memset(out, 0, sizeof *out);
    return -1;
}

void reply_segments_release(reply_segments *s) {
    if (!s) return;
    free(s->header);
    free(s->seg);
    st_writer_free(s->w);
    memset(s, 0, sizeof *s);
}

uint8_t *reply_encode_safetensors(const reply_encode *r, size_t *len) {
    vitd_err err;
    uint8_t *buf = NULL;
    size_t n = 0;
    st_writer *w = st_writer_create();
    int max_src = r->n_images * (1 + (r->n_deepstack > 0 ? r->n_deepstack : 0));
    st_src *src = calloc((size_t)(max_src > 0 ? max_src : 1), sizeof *src);
    if (!src) goto fail;
    if (st_writer_set_metadata(w, "id", r->id ? r->id : "", &err)) goto fail;
    if (st_writer_set_metadata(w, "model", r->model ? r->model : "", &err)) goto fail;
    if (st_writer_set_metadata(w, "dtype", dtype_name(r->opts.dtype), &err)) goto fail;
    if (st_writer_set_metadata(w, "layout", r->opts.layout == LAYOUT_CONCAT ? "concat" : "separate", &err))
        goto fail;
    int k = 0;
    for (int i = 0; i < r->n_images; i++) {
        img_view v = view_of(r, i);
        char name[96];
        bool concat = r->opts.layout == LAYOUT_CONCAT;
        src[k] = (st_src){v, 0, concat ? 1 + v.nd : 1};
        int64_t shape[2] = {v.tokens, (int64_t)v.D * (src[k].seg1 - src[k].seg0)};
        snprintf(name, sizeof name, "image.%d.embeddings", i);
        if (st_writer_add_fill(w, name, r->opts.dtype, 2, shape, st_fill_rows, &src[k], &err)) goto fail;
        k++;
        for (int l = 0; !concat && l < v.nd; l++, k++) {
            src[k] = (st_src){v, 1 + l, 2 + l};
            int64_t ds_shape[2] = {v.tokens, v.D};
            int layer = r->deepstack_layers ? r->deepstack_layers[l] : l;
            snprintf(name, sizeof name, "image.%d.deepstack.%d", i, layer);
            if (st_writer_add_fill(w, name, r->opts.dtype, 2, ds_shape, st_fill_rows, &src[k], &err)) goto fail;
        }
        const vitd_grid *g = &r->images[i].grid;
        int64_t thw[3] = {g->t, g->h, g->w}, three = 3;
        snprintf(name, sizeof name, "image.%d.grid_thw", i);
        if (st_writer_add(w, name, ST_I64, 1, &three, thw, &err)) goto fail;
    }
    if (st_writer_to_memory(w, &buf, &n, &err)) buf = NULL;
fail:
    free(src);
    st_writer_free(w);
    if (buf && len) *len = n;
    return buf;
}
