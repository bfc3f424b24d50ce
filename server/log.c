/* log.c — the process's one log sink (log.h): formats a line (text `ts level msg key=value` or one JSON object)
 * in a buffer on the caller's stack, escaping every string for its format, and writes it with one write() under
 * a mutex so concurrent lines never interleave. Also holds the threshold, the per-thread current request id, the
 * hook that receives the encoder library's lines, and the per-request access line. */
#include "log.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Bytes always kept free at the end of a line for what closes it: `..."` + `}` + '\n'. */
#define LOG_TAIL 8

static atomic_int g_threshold = VITD_LOG_INFO;
static atomic_int g_format = LOG_TEXT;
static atomic_int g_fd = STDERR_FILENO;
static atomic_bool g_access = true;
static pthread_mutex_t g_write_lock = PTHREAD_MUTEX_INITIALIZER; /* guards the write() of one line */

static _Thread_local char t_req[64]; /* the thread's current request id; "" = none */

static const char *const k_level_names[] = {"debug", "info", "warn", "error"};

/* ---- settings ---- */

void log_setup(vitd_log_level threshold, log_format format, int fd) {
    atomic_store(&g_threshold, (int)threshold);
    atomic_store(&g_format, (int)format);
    atomic_store(&g_fd, fd < 0 ? STDERR_FILENO : fd);
}

void log_set_level(vitd_log_level threshold) { atomic_store(&g_threshold, (int)threshold); }

void log_set_access(bool on) { atomic_store(&g_access, on); }

bool log_enabled(vitd_log_level level) {
    return (int)level >= atomic_load_explicit(&g_threshold, memory_order_relaxed);
}

bool log_level_parse(const char *s, vitd_log_level *out) {
    for (int i = 0; i < 4; i++) {
        if (s && strcmp(s, k_level_names[i]) == 0) {
            *out = (vitd_log_level)i;
            return true;
        }
    }
    return false;
}

bool log_format_parse(const char *s, log_format *out) {
    if (s && strcmp(s, "text") == 0) { *out = LOG_TEXT; return true; }
    if (s && strcmp(s, "json") == 0) { *out = LOG_JSON; return true; }
    return false;
}

const char *log_level_name(vitd_log_level level) {
    return (int)level >= 0 && (int)level < 4 ? k_level_names[level] : "error";
}

/* ---- request context ---- */

void log_request_begin(const char *req_id) {
    snprintf(t_req, sizeof t_req, "%s", req_id ? req_id : "");
}

void log_request_end(void) { t_req[0] = '\0'; }

const char *log_request_current(void) { return t_req[0] ? t_req : NULL; }

/* ---- escaping ---- */

/* Length of the valid UTF-8 sequence at p (n bytes left), or 0 if the bytes there are not valid UTF-8. */
static size_t utf8_len(const unsigned char *p, size_t n) {
    unsigned c = p[0];
    size_t len;
    unsigned min;
    if (c < 0x80) return 1;
    if (c >= 0xc2 && c <= 0xdf) { len = 2; min = 0x80; }
    else if (c >= 0xe0 && c <= 0xef) { len = 3; min = 0x800; }
    else if (c >= 0xf0 && c <= 0xf4) { len = 4; min = 0x10000; }
    else return 0;
    if (n < len) return 0;
    unsigned cp = c & (0xff >> (len + 1));
    for (size_t i = 1; i < len; i++) {
        if ((p[i] & 0xc0) != 0x80) return 0;
        cp = (cp << 6) | (p[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
    return len;
}

/* Whether a text-mode value must be quoted: empty, or any byte that is a space, control, quote, '=', backslash
 * or not valid UTF-8. */
static bool text_needs_quotes(const char *s) {
    const unsigned char *p = (const unsigned char *)s;
    size_t n = strlen(s);
    if (n == 0) return true;
    for (size_t i = 0; i < n;) {
        if (p[i] <= ' ' || p[i] == '"' || p[i] == '=' || p[i] == '\\' || p[i] == 0x7f) return true;
        size_t k = utf8_len(p + i, n - i);
        if (k == 0) return true;
        i += k;
    }
    return false;
}

/* Appends raw bytes if they fit before the tail reserve; false (and nothing written) if not. */
static bool put(log_line *l, const char *s, size_t n) {
    if (l->len + n > LOG_LINE_MAX - LOG_TAIL) return false;
    memcpy(l->buf + l->len, s, n);
    l->len += n;
    return true;
}

/* Appends s escaped for the line's format, inside double quotes when `quoted`. Text mode escapes \" \\ \n \r \t
 * and other control or invalid bytes as \xHH; JSON mode uses \uXXXX and replaces invalid UTF-8 with U+FFFD.
 * When the line is full the value ends in "..." (still closed) and the line is marked cut. */
static void put_escaped(log_line *l, const char *s, bool quoted) {
    const unsigned char *p = (const unsigned char *)s;
    size_t n = strlen(s);
    if (quoted) put(l, "\"", 1);
    for (size_t i = 0; i < n;) {
        char esc[8];
        const char *out = (const char *)p + i;
        size_t out_n, step = 1;
        unsigned c = p[i];
        if (c == '"' || c == '\\') { esc[0] = '\\'; esc[1] = (char)c; out = esc; out_n = 2; }
        else if (c == '\n') { out = "\\n"; out_n = 2; }
        else if (c == '\r') { out = "\\r"; out_n = 2; }
        else if (c == '\t') { out = "\\t"; out_n = 2; }
        else if (c < 0x20 || c == 0x7f) {
            out_n = (size_t)snprintf(esc, sizeof esc, l->json ? "\\u%04x" : "\\x%02x", c);
            out = esc;
        } else if (c < 0x80) {
            out_n = 1;
        } else {
            step = utf8_len(p + i, n - i);
            if (step) {
                out_n = step;
            } else {
                step = 1;
                out_n = (size_t)snprintf(esc, sizeof esc, l->json ? "\\ufffd" : "\\x%02x", c);
                out = esc;
            }
        }
        if (!put(l, out, out_n)) {
            /* The tail reserve always has room for this. */
            memcpy(l->buf + l->len, "...", 3);
            l->len += 3;
            l->cut = true;
            break;
        }
        i += step;
    }
    if (quoted) {
        if (!put(l, "\"", 1)) l->buf[l->len++] = '"'; /* from the reserve */
    }
}

/* Starts a field: ` key=` (text) or `,"key":` (json). False when the line is cut or has no room for the key and
 * a few bytes of value. */
static bool put_key(log_line *l, const char *key) {
    if (l->skip || l->cut) return false;
    size_t k = strlen(key);
    if (l->len + k + 16 > LOG_LINE_MAX - LOG_TAIL) {
        l->cut = true;
        return false;
    }
    if (l->json) {
        put(l, ",", 1);
        put_escaped(l, key, true);
        put(l, ":", 1);
    } else {
        put(l, " ", 1);
        put(l, key, k);
        put(l, "=", 1);
    }
    return true;
}

/* A numeric field written as given (text) or as a JSON number. */
static void put_number(log_line *l, const char *key, const char *num) {
    if (put_key(l, key)) put(l, num, strlen(num));
}

/* ---- structured lines ---- */

void log_begin_req(log_line *l, vitd_log_level level, const char *req_id, const char *msg) {
    l->len = 0;
    l->level = (int)level < 0 ? 0 : (int)level > 3 ? 3 : (int)level;
    l->skip = !log_enabled((vitd_log_level)l->level);
    l->cut = false;
    l->json = atomic_load_explicit(&g_format, memory_order_relaxed) == LOG_JSON;
    if (l->skip) return;

    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    char stamp[96];
    snprintf(stamp, sizeof stamp, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(ts.tv_nsec / 1000000));
    const char *lvl = k_level_names[l->level];
    if (!msg) msg = "";
    if (l->json) {
        put(l, "{\"ts\":\"", 7);
        put(l, stamp, strlen(stamp));
        put(l, "\",\"level\":\"", 11);
        put(l, lvl, strlen(lvl));
        put(l, "\",\"msg\":", 8);
        put_escaped(l, msg, true);
    } else {
        put(l, stamp, strlen(stamp));
        put(l, " ", 1);
        put(l, lvl, strlen(lvl));
        put(l, " ", 1);
        put_escaped(l, msg, text_needs_quotes(msg));
    }
    if (req_id && *req_id) log_str(l, "req", req_id);
}

void log_begin(log_line *l, vitd_log_level level, const char *msg) {
    log_begin_req(l, level, log_request_current(), msg);
}

void log_str(log_line *l, const char *key, const char *value) {
    if (!value) value = "";
    if (put_key(l, key)) put_escaped(l, value, l->json || text_needs_quotes(value));
}

void log_int(log_line *l, const char *key, long long value) {
    char num[32];
    snprintf(num, sizeof num, "%lld", value);
    put_number(l, key, num);
}

void log_uint(log_line *l, const char *key, unsigned long long value) {
    char num[32];
    snprintf(num, sizeof num, "%llu", value);
    put_number(l, key, num);
}

/* Writes a double with printf format fmt; non-finite values are null in JSON and nan/inf in text. */
static void put_double(log_line *l, const char *key, double value, const char *fmt) {
    char num[48];
    if (!isfinite(value) && l->json) snprintf(num, sizeof num, "null");
    else snprintf(num, sizeof num, fmt, value);
    put_number(l, key, num);
}

void log_double(log_line *l, const char *key, double value) { put_double(l, key, value, "%.6g"); }

void log_bool(log_line *l, const char *key, bool value) { put_number(l, key, value ? "true" : "false"); }

/* Writes the whole line with write(), retrying partial writes, under the lock so lines never interleave. Errors
 * are dropped: a logger has nowhere to report its own failure. */
static void emit(const char *buf, size_t len) {
    int fd = atomic_load_explicit(&g_fd, memory_order_relaxed);
    pthread_mutex_lock(&g_write_lock);
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n < 0) {
            if (errno == EINTR) continue;
            break;
        }
        buf += n;
        len -= (size_t)n;
    }
    pthread_mutex_unlock(&g_write_lock);
}

void log_end(log_line *l) {
    if (l->skip) return;
    if (l->json) l->buf[l->len++] = '}'; /* the tail reserve has room for the closer and newline */
    l->buf[l->len++] = '\n';
    emit(l->buf, l->len);
    l->skip = true; /* a second log_end() writes nothing */
}

/* ---- free-form lines ---- */

static void vlog_req(vitd_log_level level, const char *req_id, const char *fmt, va_list ap) {
    if (!log_enabled(level)) return;
    char msg[LOG_LINE_MAX];
    vsnprintf(msg, sizeof msg, fmt, ap);
    log_line l;
    log_begin_req(&l, level, req_id, msg);
    log_end(&l);
}

void log_msg(vitd_log_level level, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vlog_req(level, log_request_current(), fmt, ap);
    va_end(ap);
}

void log_req(vitd_log_level level, const char *req_id, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vlog_req(level, req_id, fmt, ap);
    va_end(ap);
}

/* The encoder library's hook: its lines carry the thread's current request, like log_msg(). */
static void log_hook(vitd_log_level level, const char *msg, void *user) {
    (void)user;
    log_line l;
    log_begin(&l, level, msg);
    log_end(&l);
}

void log_install(void) { vitd_log_set(log_hook, NULL); }

/* ---- the access line ---- */

void log_request_line(const log_access_rec *a) {
    if (a->status < 400 && !atomic_load_explicit(&g_access, memory_order_relaxed)) return;
    log_line l;
    log_begin_req(&l, a->status >= 500 ? VITD_LOG_WARN : VITD_LOG_INFO, a->req_id, "access");
    log_str(&l, "method", a->method);
    log_str(&l, "route", a->route);
    log_int(&l, "status", a->status);
    log_int(&l, "images", a->images);
    log_uint(&l, "tokens", a->tokens);
    log_uint(&l, "bytes_in", a->bytes_in);
    log_uint(&l, "bytes_out", a->bytes_out);
    put_double(&l, "queue_ms", a->queue_ms, "%.3f");
    put_double(&l, "prep_ms", a->prep_ms, "%.3f");
    put_double(&l, "encode_ms", a->encode_ms, "%.3f");
    put_double(&l, "total_ms", a->total_ms, "%.3f");
    if (a->error) log_str(&l, "error", a->error);
    if (a->remote) log_str(&l, "remote", a->remote);
    log_end(&l);
}
