/* log.h — the only log sink of vitd: one line per event on stderr (or a given fd), in one of two formats:
 *
 *   text:  2026-11-25T10:00:00.123Z info listening host=127.0.0.1 port=8080
 *          2026-11-25T10:00:01.456Z warn "fp8 unavailable" req=7f3a reason="cuDNN 9.1 lacks fp8 sdpa"
 *   json:  {"ts":"2026-11-25T10:00:00.123Z","level":"info","msg":"listening","host":"127.0.0.1","port":8080}
 *
 * Timestamps are UTC with milliseconds. In text mode the message and every value are written bare when they are
 * one plain token, else in double quotes with \" \\ \n \r \t and \xHH escapes, so a line is always one line and
 * splits unambiguously on spaces; keys are code-chosen identifiers. In JSON mode strings are JSON-escaped and
 * numbers are numbers (NaN/Inf become null).
 *
 * Usage:
 *
 *     log_setup(VITD_LOG_INFO, LOG_TEXT, -1);        // threshold, format, fd (-1 = stderr)
 *     log_install();                                 // library (encoder) lines flow through here too
 *     log_msg(VITD_LOG_INFO, "model loaded from %s", path);
 *
 *     log_line l;                                    // structured line, key by key
 *     log_begin(&l, VITD_LOG_INFO, "listening");
 *     log_str(&l, "host", cfg->host);
 *     log_int(&l, "port", port);
 *     log_end(&l);
 *
 *     log_request_begin("7f3a");                     // lines logged by this thread now carry req=7f3a
 *     ...                                            // (including encoder lines through the hook)
 *     log_request_end();
 *     log_request_line(&(log_access_rec){.req_id = "7f3a", .method = "POST", .route = "/v1/embeddings", ...});
 *
 * Lines about a request carry req=<id> right after the message: explicitly (log_req(), log_begin_req(), the
 * access line) or through the calling thread's current request (log_request_begin()).
 *
 * Thread safety: every logging call is thread-safe. A line is formatted in a per-call buffer and written with one
 * write() under a mutex, so lines never interleave. log_setup() and log_install() are start-up calls: make them
 * before other threads log. Lines longer than LOG_LINE_MAX are cut (values end in "...") but stay well-formed.
 */
#ifndef VITD_LOG_H
#define VITD_LOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vitd.h"

#ifdef __cplusplus
extern "C" {
#endif

#define LOG_LINE_MAX 4096 /* bytes of one line, newline included */

typedef enum { LOG_TEXT = 0, LOG_JSON = 1 } log_format;

/* Sets the threshold (lines below it are dropped), the format and the output fd (-1 = stderr). The fd is not
 * owned: the caller keeps it open while logging goes on. Defaults before any call: info, text, stderr. */
void log_setup(vitd_log_level threshold, log_format format, int fd);
/* Changes only the threshold (atomically; safe while other threads log). */
void log_set_level(vitd_log_level threshold);
/* Whether access lines of successful requests (status < 400) are written; true by default (config access_log). */
void log_set_access(bool on);
/* Whether a line of this level would be written (to skip costly argument preparation). */
bool log_enabled(vitd_log_level level);

/* Parses "debug" | "info" | "warn" | "error" and "text" | "json" (the words of config.h); false if unknown. */
bool log_level_parse(const char *s, vitd_log_level *out);
bool log_format_parse(const char *s, log_format *out);
const char *log_level_name(vitd_log_level level);

/* Routes the encoder library's vitd_log() lines here (vitd_log_set()). Call once at start-up. */
void log_install(void);

/* ---- free-form lines ---- */

/* One line whose message is printf-formatted; carries the thread's current request id, if any. */
void log_msg(vitd_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Same, about request req_id (NULL = none). */
void log_req(vitd_log_level level, const char *req_id, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* ---- structured lines ---- */

/* A line under construction; lives on the caller's stack. All fields are private. */
typedef struct {
    char buf[LOG_LINE_MAX];
    size_t len;
    int level;
    bool json, skip, cut;
} log_line;

/* Starts a line (msg is its message). If the level is below the threshold every later call on l is a no-op.
 * The thread's current request id, if any, is added as req=. */
void log_begin(log_line *l, vitd_log_level level, const char *msg);
/* Starts a line about request req_id (NULL = none; overrides the thread's current request). */
void log_begin_req(log_line *l, vitd_log_level level, const char *req_id, const char *msg);
void log_str(log_line *l, const char *key, const char *value); /* NULL value is written as "" */
void log_int(log_line *l, const char *key, long long value);
void log_uint(log_line *l, const char *key, unsigned long long value);
void log_double(log_line *l, const char *key, double value);   /* %.6g */
void log_bool(log_line *l, const char *key, bool value);
/* Finishes the line and writes it. */
void log_end(log_line *l);

/* ---- request context ---- */

/* Sets / clears the calling thread's current request id (copied; at most 63 bytes kept). Lines this thread logs
 * without an explicit id (log_msg, log_begin, encoder lines) carry it. */
void log_request_begin(const char *req_id);
void log_request_end(void);
/* The calling thread's current request id, or NULL. */
const char *log_request_current(void);

/* ---- the access line: one per request, written by the HTTP server when the request ends ---- */

typedef struct {
    const char *req_id;
    const char *method;      /* "POST" */
    const char *route;       /* the route template ("/v1/embeddings"), never the raw URL */
    int status;              /* HTTP status sent */
    const char *error;       /* vitd_status_name() of the failure, or NULL on success */
    const char *remote;      /* client address, or NULL */
    int images;
    uint64_t tokens;         /* patches of all images (encoder input tokens, the unit of batch_max_tokens) */
    uint64_t bytes_in, bytes_out;
    double queue_ms, prep_ms, encode_ms, total_ms;
} log_access_rec;

/* Writes `ts level access req=.. method=.. route=.. status=.. images=.. tokens=.. bytes_in=.. bytes_out=..
 * queue_ms=.. prep_ms=.. encode_ms=.. total_ms=..` (then error=, remote= when set). Level info, warn for status
 * >= 500. With log_set_access(false) only requests with status >= 400 are written. */
void log_request_line(const log_access_rec *a);

#ifdef __cplusplus
}
#endif
#endif /* VITD_LOG_H */
