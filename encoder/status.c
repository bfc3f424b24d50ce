/* status.c — vitd_status names, the vitd_err filler, the library's log hook, and util.h's helpers: the vitd_util
 * library under both config/ and encoder/. */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "util.h"
#include "vitd.h"

vitd_status vitd_fail(vitd_err *err, vitd_status code, const char *fmt, ...) {
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
        err->code = code;
    }
    return code;
}

const char *vitd_status_name(vitd_status s) {
    switch (s) {
    case VITD_OK: return "ok";
    case VITD_E_INVALID_ARG: return "invalid_argument";
    case VITD_E_BAD_IMAGE: return "bad_image";
    case VITD_E_UNSUPPORTED: return "unsupported";
    case VITD_E_TOO_LARGE: return "too_large";
    case VITD_E_IO: return "io_error";
    case VITD_E_MODEL: return "model_error";
    case VITD_E_NOMEM: return "out_of_memory";
    case VITD_E_GPU: return "gpu_error";
    case VITD_E_BUSY: return "busy";
    case VITD_E_TIMEOUT: return "timeout";
    case VITD_E_CANCELLED: return "cancelled";
    case VITD_E_INTERNAL: return "internal";
    }
    return "unknown";
}

/* ---- log hook ---- */

static vitd_log_fn g_log_fn;  /* set once at start-up, before any thread logs */
static void *g_log_user;

void vitd_log_set(vitd_log_fn fn, void *user) {
    g_log_fn = fn;
    g_log_user = user;
}

void vitd_log(vitd_log_level level, const char *fmt, ...) {
    if (!g_log_fn) return;
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    g_log_fn(level, buf, g_log_user);
}

/* ---- util.h ---- */

void vitd_assert_fail(const char *expr, const char *file, int line) {
    fprintf(stderr, "vitd: assertion failed: %s at %s:%d\n", expr, file, line);
    abort();
}

void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "vitd: out of memory allocating %zu bytes\n", n);
        abort();
    }
    return p;
}

void *xrealloc(void *p, size_t n) {
    void *q = realloc(p, n ? n : 1);
    if (!q) {
        fprintf(stderr, "vitd: out of memory reallocating to %zu bytes\n", n);
        abort();
    }
    return q;
}

void *xcalloc(size_t n, size_t size) {
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p) {
        fprintf(stderr, "vitd: out of memory allocating %zu x %zu bytes\n", n, size);
        abort();
    }
    return p;
}

char *xstrdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *p = xmalloc(n);
    memcpy(p, s, n);
    return p;
}

double vitd_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

vitd_status vitd_write_file_atomic(const char *path, const char *label, const void *data, size_t len,
                                   vitd_err *err) {
    size_t plen = strlen(path);
    char *tmp = xmalloc(plen + 16);
    snprintf(tmp, plen + 16, "%s.tmpXXXXXX", path);
    vitd_status st = VITD_OK;
    int fd = mkstemp(tmp);
    if (fd < 0) {
        st = vitd_fail(err, VITD_E_IO, "%s: cannot create a temporary file beside %s: %s", label, path,
                       strerror(errno));
        goto done;
    }
    size_t off = 0;
    while (off < len) {
        ssize_t w = write(fd, (const char *)data + off, len - off);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) break;
        off += (size_t)w;
    }
    if (off < len || fsync(fd) != 0) {
        st = vitd_fail(err, VITD_E_IO, "%s: cannot write %s: %s", label, tmp, strerror(errno));
        close(fd);
        unlink(tmp);
        goto done;
    }
    close(fd);
    if (chmod(tmp, 0644) != 0 || rename(tmp, path) != 0) {
        st = vitd_fail(err, VITD_E_IO, "%s: cannot rename to %s: %s", label, path, strerror(errno));
        unlink(tmp);
    }
done:
    free(tmp);
    return st;
}

vitd_status vitd_read_file(const char *path, const char *label, size_t max_bytes, char **out, size_t *len,
                           vitd_err *err) {
    *out = NULL;
    if (len) *len = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return vitd_fail(err, VITD_E_IO, "cannot read %s: %s", label, strerror(errno));
    vitd_status st = VITD_OK;
    char *buf = NULL;
    struct stat sb;
    if (fstat(fileno(f), &sb) != 0 || !S_ISREG(sb.st_mode)) {
        st = vitd_fail(err, VITD_E_IO, "%s is not a regular file", label);
        goto fail;
    }
    if ((unsigned long long)sb.st_size > max_bytes) {
        st = vitd_fail(err, VITD_E_TOO_LARGE, "%s: %lld bytes exceeds the limit of %zu", label,
                       (long long)sb.st_size, max_bytes);
        goto fail;
    }
    size_t n = (size_t)sb.st_size;
    buf = malloc(n + 1);
    if (!buf) {
        st = vitd_fail(err, VITD_E_NOMEM, "%s: cannot allocate %zu bytes", label, n + 1);
        goto fail;
    }
    if (fread(buf, 1, n, f) != n) {
        st = vitd_fail(err, VITD_E_IO, "%s: short read (%zu bytes expected)", label, n);
        goto fail;
    }
    buf[n] = 0;
    fclose(f);
    *out = buf;
    if (len) *len = n;
    return VITD_OK;
fail:
    free(buf);
    fclose(f);
    return st;
}

/* ---- strbuf ---- */

void strbuf_append(strbuf *b, const char *s, size_t n) {
    if (b->failed) return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->failed = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

char *strbuf_reserve(strbuf *b, size_t n) {
    size_t len = b->len;
    strbuf_append(b, "", 0);     /* allocates on first use */
    if (b->failed) return NULL;
    if (len + n + 1 > b->cap) {
        size_t cap = b->cap;
        while (cap < len + n + 1) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->failed = true;
            return NULL;
        }
        b->p = p;
        b->cap = cap;
    }
    return b->p + len;
}

void strbuf_commit(strbuf *b, size_t n) {
    if (b->failed) return;
    b->len += n;
    b->p[b->len] = '\0';
}

void strbuf_puts(strbuf *b, const char *s) { strbuf_append(b, s, strlen(s)); }

void strbuf_printf(strbuf *b, const char *fmt, ...) {
    char tmp[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if ((size_t)n < sizeof tmp) {
        strbuf_append(b, tmp, (size_t)n);
        return;
    }
    char *big = malloc((size_t)n + 1);
    if (!big) {
        b->failed = true;
        return;
    }
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    strbuf_append(b, big, (size_t)n);
    free(big);
}

void strbuf_json_string(strbuf *b, const char *s) {
    strbuf_puts(b, "\"");
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\') {
            char e[2] = {'\\', (char)*p};
            strbuf_append(b, e, 2);
        } else if (*p == '\n') {
            strbuf_puts(b, "\\n");
        } else if (*p == '\t') {
            strbuf_puts(b, "\\t");
        } else if (*p < 0x20) {
            strbuf_printf(b, "\\u%04x", *p);
        } else {
            strbuf_append(b, (const char *)p, 1);
        }
    }
    strbuf_puts(b, "\"");
}

char *strbuf_finish(strbuf *b) {
    if (!b->p && !b->failed) strbuf_append(b, "", 0);
    if (b->failed) {
        free(b->p);
        b->p = NULL;
        return NULL;
    }
    return b->p;
}

/* IEEE half <-> float, round-to-nearest-even, with subnormals, infinities and NaN. */
float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
    uint32_t u;
    if (exp == 0) {
        float f = ldexpf((float)man, -24);
        return sign ? -f : f;
    } else if (exp == 31) {
        u = sign | 0x7f800000u | (man << 13);
    } else {
        u = sign | ((exp + 112) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t f32_to_f16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    uint32_t sign = (u >> 16) & 0x8000u;
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u);           /* NaN */
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);          /* overflow (>= 65520) -> inf */
    if (a < 0x38800000u) {                                            /* below 2^-14: subnormal or zero */
        float af;
        memcpy(&af, &a, 4);
        float r = nearbyintf(af * 16777216.0f);                       /* units of 2^-24, ties to even */
        return (uint16_t)(sign | (uint32_t)r);
    }
    uint32_t mant_odd = (a >> 13) & 1u;
    a += 0xfffu + mant_odd;                                           /* round to nearest even at bit 13 */
    return (uint16_t)(sign | (((a >> 23) - 112) << 10) | ((a >> 13) & 0x3ffu));
}
