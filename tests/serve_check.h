/* serve_check.h — the client side of the tests that run the real `vitd serve` (VITD_EXE): a child process
 * whose stderr a reader thread copies to a log while watching for the "listening" and "ready" lines, a one-shot
 * HTTP/1.1 client on 127.0.0.1, base64, fixture images and multipart bodies, the error-body check, and
 * Prometheus text helpers. Header-only (static functions); include once per test program, after check.h and
 * loopback.h. Every wait is bounded in time; only 127.0.0.1 is used. */
#ifndef VITD_SERVE_CHECK_H
#define VITD_SERVE_CHECK_H

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cJSON.h>

#include "check.h"
#include "loopback.h"
#include "util.h"

#ifndef IMG_DIR
#define IMG_DIR VITD_SOURCE_DIR "/tests/fixtures/images/"
#endif
#ifndef IO_TIMEOUT_S
#define IO_TIMEOUT_S 120
#endif

/* ---- child processes ---- */

/* A `vitd` child whose stderr a reader thread copies to a log file while watching for the listening and ready
 * lines and for the end of the output (the process exited). */
typedef struct {
    pid_t pid;
    int port;
    bool ready, eof;
    char log_path[1024];
    int pipe_fd;
    pthread_t reader;
    pthread_mutex_t mu;
    pthread_cond_t cv;
} server;

static inline void *server_reader(void *arg) {
    server *s = arg;
    FILE *log = fopen(s->log_path, "w");
    char buf[8192], line[8192];
    size_t ll = 0;
    for (;;) {
        ssize_t n = read(s->pipe_fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        if (log) {
            fwrite(buf, 1, (size_t)n, log);
            fflush(log);
        }
        for (ssize_t i = 0; i < n; i++) {
            if (buf[i] != '\n') {
                if (ll < sizeof line - 1) line[ll++] = buf[i];
                continue;
            }
            line[ll] = 0;
            ll = 0;
            pthread_mutex_lock(&s->mu);
            const char *p;
            if (strstr(line, " listening ") && (p = strstr(line, " port=")) != NULL) s->port = atoi(p + 6);
            if (strstr(line, " info ready")) s->ready = true;
            pthread_cond_broadcast(&s->cv);
            pthread_mutex_unlock(&s->mu);
        }
    }
    if (log) fclose(log);
    pthread_mutex_lock(&s->mu);
    s->eof = true;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* Starts `VITD_EXE argv...` with stderr captured. */
static inline bool server_spawn(server *s, const char *log_path, char *const argv[]) {
    memset(s, 0, sizeof *s);
    snprintf(s->log_path, sizeof s->log_path, "%s", log_path);
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    int p[2];
    if (pipe(p) != 0) return false;
    s->pid = fork();
    if (s->pid < 0) return false;
    if (s->pid == 0) {
        dup2(p[1], 2);
        int devnull = open("/dev/null", O_RDWR);
        if (devnull >= 0) dup2(devnull, 1);
        close(p[0]);
        close(p[1]);
        execv(VITD_EXE, argv);
        _exit(127);
    }
    close(p[1]);
    s->pipe_fd = p[0];
    pthread_create(&s->reader, NULL, server_reader, s);
    return true;
}

/* Waits (bounded) until the server logged "ready" (or exited). */
static inline bool server_wait_ready(server *s, double timeout_s) {
    double until = vitd_now() + timeout_s;
    pthread_mutex_lock(&s->mu);
    while (!(s->ready && s->port > 0) && !s->eof && vitd_now() < until) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += 1;
        pthread_cond_timedwait(&s->cv, &s->mu, &ts);
    }
    bool ok = s->ready && s->port > 0;
    pthread_mutex_unlock(&s->mu);
    return ok;
}

/* Waits (bounded) for the process to exit; returns its exit code, or -1 (killed with SIGKILL after the bound). */
static inline int server_wait_exit(server *s, double timeout_s) {
    double until = vitd_now() + timeout_s;
    pthread_mutex_lock(&s->mu);
    while (!s->eof && vitd_now() < until) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += 1;
        pthread_cond_timedwait(&s->cv, &s->mu, &ts);
    }
    bool eof = s->eof;
    pthread_mutex_unlock(&s->mu);
    if (!eof) kill(s->pid, SIGKILL);
    int st = 0;
    waitpid(s->pid, &st, 0);
    pthread_join(s->reader, NULL);
    close(s->pipe_fd);
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->mu);
    /* a sanitizer build reports through stderr: any report fails the test */
    size_t n = 0;
    char *log = (char *)check_read_file(s->log_path, &n);
    if (log) {
        char *text = xmalloc(n + 1);
        memcpy(text, log, n);
        text[n] = 0;
        CHECK_MSG(!strstr(text, "runtime error:") && !strstr(text, "Sanitizer"), "sanitizer report in %s",
                  s->log_path);
        free(text);
        free(log);
    }
    if (!eof) return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
}

/* Runs VITD_EXE argv... to completion (stdout and stderr to log_path); returns its exit code or -1. */
static inline int run_tool(char *const argv[], const char *log_path) {
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        int fd = open(log_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        execv(VITD_EXE, argv);
        _exit(127);
    }
    int st = 0;
    if (waitpid(pid, &st, 0) != pid) return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* ---- a tiny HTTP/1.1 client ---- */

typedef struct {
    int status;           /* 0 = no response (connection closed or timed out) */
    char head[16384];     /* status line and headers */
    char *body;           /* malloc'd, NUL-terminated */
    size_t len;
} resp;

static inline void resp_free(resp *r) {
    free(r->body);
    r->body = NULL;
}

/* Value of header `name` in r->head (case-insensitive), copied into out; NULL if absent. */
static inline const char *resp_header(const resp *r, const char *name, char *out, size_t cap) {
    size_t nl = strlen(name);
    const char *p = strstr(r->head, "\r\n");
    while (p && p[2]) {
        p += 2;
        if (strncasecmp(p, name, nl) == 0 && p[nl] == ':') {
            const char *v = p + nl + 1;
            while (*v == ' ') v++;
            const char *e = strstr(v, "\r\n");
            size_t n = e ? (size_t)(e - v) : strlen(v);
            if (n >= cap) n = cap - 1;
            memcpy(out, v, n);
            out[n] = 0;
            return out;
        }
        p = strstr(p, "\r\n");
    }
    return NULL;
}

/* Reads one response (status line, headers, Content-Length body). head_only: no body (HEAD). */
static inline bool read_response(int fd, resp *r, bool head_only) {
    memset(r, 0, sizeof *r);
    size_t hl = 0;
    char *end = NULL;
    while (!end) {
        if (hl >= sizeof r->head - 1) return false;
        ssize_t k = recv(fd, r->head + hl, sizeof r->head - 1 - hl, MSG_PEEK);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return false;
        r->head[hl + (size_t)k] = 0;
        end = strstr(r->head, "\r\n\r\n");
        size_t take = end ? (size_t)(end + 4 - r->head) - hl : (size_t)k;
        ssize_t got = recv(fd, r->head + hl, take, 0);
        if (got != (ssize_t)take) return false;
        hl += take;
        r->head[hl] = 0;
        end = strstr(r->head, "\r\n\r\n");
    }
    end[2] = 0; /* keep the last header's CRLF for resp_header */
    if (sscanf(r->head, "HTTP/1.%*d %d", &r->status) != 1) return false;
    char v[64];
    size_t cl = resp_header(r, "Content-Length", v, sizeof v) ? strtoull(v, NULL, 10) : 0;
    if (head_only) cl = 0;
    r->body = malloc(cl + 1);
    if (!r->body) return false;
    size_t got = 0;
    while (got < cl) {
        ssize_t k = recv(fd, r->body + got, cl - got, 0);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return false;
        got += (size_t)k;
    }
    r->body[cl] = 0;
    r->len = cl;
    return true;
}

/* One request on an open connection fd. headers: extra header lines, each ending in \r\n (a "Connection: close"
 * among them ends the connection after the answer). */
static inline bool http_do_on(int fd, const char *method, const char *path, const char *headers, const void *body,
                              size_t len, resp *r) {
    memset(r, 0, sizeof *r);
    char head[4096];
    int hn = snprintf(head, sizeof head, "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\n%s", method, path,
                      headers ? headers : "");
    if (body || !strcmp(method, "POST"))
        hn += snprintf(head + hn, sizeof head - (size_t)hn, "Content-Length: %zu\r\n", len);
    hn += snprintf(head + hn, sizeof head - (size_t)hn, "\r\n");
    bool ok = loopback_send_all(fd, head, (size_t)hn) && (!len || loopback_send_all(fd, body, len));
    return ok && read_response(fd, r, !strcmp(method, "HEAD"));
}

/* One request on a fresh connection (Connection: close). headers: extra header lines, each ending in \r\n. */
static inline bool http_do(int port, const char *method, const char *path, const char *headers, const void *body,
                    size_t len, resp *r) {
    memset(r, 0, sizeof *r);
    int fd = loopback_connect(port, IO_TIMEOUT_S);
    if (fd < 0) return false;
    char all[4096];
    snprintf(all, sizeof all, "Connection: close\r\n%s", headers ? headers : "");
    bool ok = http_do_on(fd, method, path, all, body, len, r);
    close(fd);
    return ok;
}

/* ---- inputs ---- */

static const char b64chars[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static inline char *b64_encode(const uint8_t *p, size_t n) {
    char *o = xmalloc(4 * ((n + 2) / 3) + 1), *q = o;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (i + 1 < n ? (uint32_t)p[i + 1] << 8 : 0) | (i + 2 < n ? p[i + 2] : 0);
        *q++ = b64chars[v >> 18 & 63];
        *q++ = b64chars[v >> 12 & 63];
        *q++ = i + 1 < n ? b64chars[v >> 6 & 63] : '=';
        *q++ = i + 2 < n ? b64chars[v & 63] : '=';
    }
    *q = 0;
    return o;
}

static inline size_t b64_decode(const char *s, uint8_t *out) {
    uint32_t acc = 0;
    int bits = 0;
    size_t n = 0;
    for (; *s; s++) {
        const char *c = strchr(b64chars, *s);
        if (!c || *s == '=') continue;
        acc = acc << 6 | (uint32_t)(c - b64chars);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[n++] = (uint8_t)(acc >> bits);
        }
    }
    return n;
}

typedef struct {
    const char *name;
    const char *ctype;
    uint8_t *data;
    size_t len;
} image_file;

static inline bool load_image(image_file *f, const char *name, const char *ctype) {
    char path[1024];
    snprintf(path, sizeof path, IMG_DIR "%s", name);
    f->name = name;
    f->ctype = ctype;
    f->data = check_read_file(path, &f->len);
    return f->data != NULL;
}

/* A multipart/form-data body of n images (and optional text fields); *len gets its size. */
static inline char *multipart(const image_file *const *imgs, int n, const char *field, const char *field_value,
                       const char *boundary, size_t *len) {
    size_t cap = 4096;
    for (int i = 0; i < n; i++) cap += imgs[i]->len + 512;
    char *b = xmalloc(cap);
    size_t o = 0;
    if (field)
        o += (size_t)snprintf(b + o, cap - o, "--%s\r\nContent-Disposition: form-data; name=\"%s\"\r\n\r\n%s\r\n",
                              boundary, field, field_value);
    for (int i = 0; i < n; i++) {
        o += (size_t)snprintf(b + o, cap - o,
                              "--%s\r\nContent-Disposition: form-data; name=\"image\"; filename=\"%s\"\r\n"
                              "Content-Type: %s\r\n\r\n",
                              boundary, imgs[i]->name, imgs[i]->ctype);
        memcpy(b + o, imgs[i]->data, imgs[i]->len);
        o += imgs[i]->len;
        o += (size_t)snprintf(b + o, cap - o, "\r\n");
    }
    o += (size_t)snprintf(b + o, cap - o, "--%s--\r\n", boundary);
    *len = o;
    return b;
}

/* ---- error bodies ---- */

/* Checks a vitd error answer: status, JSON {"error": {code, message, request_id}}, the message containing
 * needle (when not NULL), request_id equal to X-Request-Id; prints it. */
static inline void check_error(const resp *r, int status, const char *code, const char *needle, const char *what) {
    CHECK_MSG(r->status == status, "%s: status %d, expected %d; body %.300s", what, r->status, status,
              r->body ? r->body : "");
    char ctype[128], rid[128];
    CHECK_MSG(resp_header(r, "Content-Type", ctype, sizeof ctype) && strstr(ctype, "application/json"),
              "%s: error body not JSON", what);
    cJSON *root = r->body ? cJSON_ParseWithLength(r->body, r->len) : NULL;
    const cJSON *e = root ? cJSON_GetObjectItem(root, "error") : NULL;
    const cJSON *c = e ? cJSON_GetObjectItem(e, "code") : NULL, *m = e ? cJSON_GetObjectItem(e, "message") : NULL;
    const cJSON *id = e ? cJSON_GetObjectItem(e, "request_id") : NULL;
    CHECK_MSG(c && cJSON_IsString(c) && !strcmp(c->valuestring, code), "%s: error.code %s, expected %s", what,
              c && cJSON_IsString(c) ? c->valuestring : "(none)", code);
    if (needle)
        CHECK_MSG(m && cJSON_IsString(m) && strstr(m->valuestring, needle), "%s: message \"%s\" lacks \"%s\"", what,
                  m && cJSON_IsString(m) ? m->valuestring : "(none)", needle);
    CHECK_MSG(id && cJSON_IsString(id) && resp_header(r, "X-Request-Id", rid, sizeof rid) &&
                  !strcmp(rid, id->valuestring),
              "%s: request_id does not match X-Request-Id", what);
    if (m && cJSON_IsString(m)) printf("  %-34s %d %-18s %s\n", what, r->status, code, m->valuestring);
    cJSON_Delete(root);
}

/* ---- metrics ---- */

/* Value of the series `series` (name{labels} exactly as rendered) in a Prometheus text; -1 if absent. */
static inline double metric_value(const char *text, const char *series) {
    size_t n = strlen(series);
    for (const char *p = text; p && *p;) {
        if (strncmp(p, series, n) == 0 && p[n] == ' ') return strtod(p + n + 1, NULL);
        p = strchr(p, '\n');
        if (p) p++;
    }
    return -1;
}

/* Value of one series in the server's /metrics (headers: extra request headers such as an API key, or NULL);
 * -1 when the server does not answer 200 or the series is absent. */
static inline double metric_at(int port, const char *headers, const char *series) {
    resp r;
    double v = -1;
    if (http_do(port, "GET", "/metrics", headers, NULL, 0, &r) && r.status == 200) v = metric_value(r.body, series);
    resp_free(&r);
    return v;
}

/* Polls /metrics until vitd_inflight_requests reaches want or limit_s passes; returns the last value (-1 without a
 * connection). headers: as for metric_at. The polls share one kept-alive connection: the server completes each
 * request on a connection before it reads the next, so no earlier poll still counts among those in flight (with a
 * fresh connection per poll, a finished poll could stand in for a request not yet read, which then met a drain). */
static inline double wait_inflight(int port, const char *headers, double want, double limit_s) {
    int fd = loopback_connect(port, IO_TIMEOUT_S);
    if (fd < 0) return -1;
    double v = 0, t0 = vitd_now();
    while (v < want && vitd_now() - t0 < limit_s) {
        resp r;
        if (!http_do_on(fd, "GET", "/metrics", headers, NULL, 0, &r)) break;
        v = metric_value(r.body, "vitd_inflight_requests");
        resp_free(&r);
    }
    close(fd);
    return v;
}

/* Every non-comment line is `name{labels} value` with a parseable number. */
static inline bool metrics_parse_ok(const char *text, int *n_lines) {
    *n_lines = 0;
    for (const char *p = text; p && *p;) {
        const char *e = strchr(p, '\n');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (len > 0 && p[0] != '#') {
            const char *sp = memrchr(p, ' ', len);
            if (!sp) return false;
            char *end;
            char num[64];
            size_t nl = len - (size_t)(sp + 1 - p);
            if (nl >= sizeof num) return false;
            memcpy(num, sp + 1, nl);
            num[nl] = 0;
            strtod(num, &end);
            if (end == num || *end) return false;
            (*n_lines)++;
        }
        p = e ? e + 1 : NULL;
    }
    return true;
}

/* ---- starting servers ---- */

static inline char *arg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static inline char *arg(const char *fmt, ...) {
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return xstrdup(buf);
}

static inline void free_args(char **a) {
    for (int i = 0; a[i]; i++) free(a[i]);
}

/* Starts a server on the model with the common flags plus extra (NULL-terminated). */
static inline bool start_server(server *s, const char *dir, const char *model, const char *name,
                         const char *const *extra) {
    char *argv[64];
    int n = 0;
    argv[n++] = arg("%s", VITD_EXE);
    argv[n++] = arg("serve");
    argv[n++] = arg("--model=%s", model);
    argv[n++] = arg("--host=127.0.0.1");
    argv[n++] = arg("--port=0");
    argv[n++] = arg("--backend=cpu");
    argv[n++] = arg("--encoder-threads=2");
    argv[n++] = arg("--prep-threads=2");
    for (int i = 0; extra && extra[i]; i++) argv[n++] = arg("%s", extra[i]);
    argv[n] = NULL;
    char log[600];
    snprintf(log, sizeof log, "%s/%s.log", dir, name);
    bool ok = server_spawn(s, log, argv) && server_wait_ready(s, 120);
    free_args(argv);
    if (!ok) fprintf(stderr, "server %s did not become ready; log: %s\n", name, log);
    return ok;
}

#endif
