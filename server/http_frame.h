/* http_frame.h — the message-framing checks libmicrohttpd 0.9 does not make (RFC 9112 sections 3.2, 6.1-6.3),
 * run on every request's headers before anything else, so a request whose body length two parsers could read
 * differently (request smuggling) is refused, never executed:
 *   - Content-Length given twice (or as a list) with different values                          400
 *   - Content-Length and Transfer-Encoding together                                             400
 *   - Transfer-Encoding in an HTTP/1.0 request, or whose last coding is not chunked             400
 *   - Transfer-Encoding other than one header reading exactly "chunked" ("chunked, chunked")    400
 *   - a transfer coding other than chunked (gzip, deflate, ...)                                 501
 *   - HTTP/1.1 without a Host header, or more than one Host header                              400
 *   - a header name that is not a token: "Content-Length : 5" (whitespace before the colon, which
 *     libmicrohttpd keeps in the name, so it reads no body where a lenient proxy reads one)      400
 * libmicrohttpd reads the first Content-Length and lets Transfer-Encoding win, which is why the answer to any of
 * these closes the connection: what follows on it cannot be trusted to be a request.
 *
 * Pure functions over header pairs; no I/O. Feed every header with http_frame_add, then http_frame_check. */
#ifndef VITD_HTTP_FRAME_H
#define VITD_HTTP_FRAME_H

#include <stdbool.h>

typedef struct {
    int n_content_length;
    unsigned long long content_length; /* the (first) value */
    bool content_length_conflict, content_length_bad;
    int n_transfer_encoding;
    bool te_chunked_last;              /* the last coding seen is chunked */
    bool te_other;                     /* a coding other than chunked */
    bool te_exact;                     /* the first Transfer-Encoding value is exactly "chunked" */
    char te_value[64];                 /* the first Transfer-Encoding value, for the message */
    int n_host;
    bool bad_name;                     /* a header name that is not a token (space before the colon, ...) */
    char bad_name_text[40];            /* the first such name, printable, for the message */
} http_frame;

typedef struct {
    int status;          /* 0 = fine; else 400 or 501 */
    const char *code;    /* error.code */
    char msg[200];
} http_frame_verdict;

void http_frame_init(http_frame *f);
/* One header line (name case-insensitive, value as received). */
void http_frame_add(http_frame *f, const char *name, const char *value);
/* version: the request's HTTP version string ("HTTP/1.1"). Returns v->status (0 when the framing is sound). */
int http_frame_check(const http_frame *f, const char *version, http_frame_verdict *v);

#endif
