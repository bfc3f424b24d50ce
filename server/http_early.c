/* http_early.c — answers given before a request's body is read, and keeping connections alive across them.
 *
 * libmicrohttpd 0.9 closes a connection after any answer queued in the first access-handler call, and cannot
 * queue one while a body is arriving. So:
 *   - GET routes answer at the final call (PH_GET), which for a request without a body follows the first at once;
 *   - an error decided at the first call waits (PH_DISCARD) while the body is read and dropped, then goes out at
 *     the final call on a connection that stays open; a body announced longer than discard_body_bytes is not
 *     worth reading: that answer goes at once and the connection closes;
 *   - a chunked body that grows past discard_body_bytes (while dropped) or past max_body_bytes (while read) gets
 *     its answer written straight on the socket (early_write), whose write side is then shut; the rest of the
 *     request is dropped for a moment (conn_guard's linger) so the client reads the answer, not a reset;
 *   - a request target too long or with too many parameters is answered from the URI callback, the same way.
 * Every such answer is logged and counted like any other. */
#include "http_req.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conn_guard.h"
#include "log.h"
#include "metrics.h"
#include "reply.h"
#include "util.h"

bool early_defer(struct req *r, int status, const char *ctype, char *buf, size_t len, const char *xname,
                 const char *xvalue) {
    if (r->must_close) return false;
    size_t limit = r->srv->o.cfg->discard_body_bytes;
    if (r->body_pending > 0 && (unsigned long long)r->body_pending > limit) return false;
    r->early.status = status;
    r->early.ctype = ctype ? arena_strdup(r->arena, ctype) : NULL;
    r->early.xname = xname ? arena_strdup(r->arena, xname) : NULL;
    r->early.xvalue = xvalue ? arena_strdup(r->arena, xvalue) : NULL;
    if ((ctype && !r->early.ctype) || (xname && !r->early.xname) || (xvalue && !r->early.xvalue)) return false;
    free(r->early.buf);
    r->early.buf = buf;
    r->early.len = len;
    r->phase = PH_DISCARD;
    return true;
}

/* The whole HTTP answer as bytes, "Connection: close" included. NULL when out of memory. */
static char *serialize(struct req *r, int status, const char *ctype, const char *body, size_t len,
                       const char *xname, const char *xvalue, size_t *out_len) {
    strbuf b = {0};
    const char *reason = MHD_get_reason_phrase_for((unsigned)status);
    strbuf_printf(&b, "HTTP/1.1 %d %s\r\n", status, reason && *reason ? reason : "Error");
    if (ctype) strbuf_printf(&b, "Content-Type: %s\r\n", ctype);
    strbuf_printf(&b, "X-Request-Id: %s\r\n", r->id);
    if (xname && xvalue) strbuf_printf(&b, "%s: %s\r\n", xname, xvalue);
    strbuf_printf(&b, "Connection: close\r\nContent-Length: %zu\r\n\r\n", len);
    strbuf_append(&b, body, len);
    size_t n = b.len;
    char *s = strbuf_finish(&b);
    *out_len = s ? n : 0;
    return s;
}

void early_write(struct req *r, int status, const char *ctype, char *buf, size_t len, const char *xname,
                 const char *xvalue) {
    size_t n = 0;
    char *bytes = serialize(r, status, ctype, buf, len, xname, xvalue, &n);
    free(buf);
    r->status = status;
    r->bytes_out = n;
    r->phase = PH_LINGER;
    if (bytes) conn_guard_answer_close(r->conn, bytes, n);
    free(bytes);
}

/* The body is larger than we drop: the answer can only go straight on the socket. */
static void too_long_to_drop(struct req *r) {
    const vitd_config *c = r->srv->o.cfg;
    if (r->phase == PH_DISCARD) {
        char *buf = r->early.buf;
        r->early.buf = NULL;
        early_write(r, r->early.status, r->early.ctype, buf, r->early.len, r->early.xname, r->early.xvalue);
        return;
    }
    /* a GET route with a body longer than we drop */
    char msg[200];
    snprintf(msg, sizeof msg, "a %s request's body is dropped up to discard_body_bytes %zu; this one is longer",
             r->method, c->discard_body_bytes);
    size_t len = 0;
    char *body = reply_error_json("too_large", msg, r->id, &len);
    r->error_code = "too_large";
    early_write(r, 413, "application/json", body, len, NULL, NULL);
}

enum MHD_Result early_upload(struct req *r, const char *data, size_t *size) {
    (void)data;
    if (*size > 0) {
        r->discarded += *size;
        r->bytes_in += *size;
        *size = 0;
        if (r->phase != PH_LINGER && r->discarded > r->srv->o.cfg->discard_body_bytes) too_long_to_drop(r);
        return MHD_YES;
    }
    switch (r->phase) {
    case PH_LINGER: return MHD_NO; /* answered already: libmicrohttpd closes the connection */
    case PH_GET: return http_get_answer(r);
    case PH_DISCARD: {
        char *buf = r->early.buf;
        r->early.buf = NULL;
        return http_respond(r, r->early.status, r->early.ctype, buf, r->early.len, r->early.xname, r->early.xvalue);
    }
    default: break;
    }
    return MHD_NO;
}

void *early_on_uri(void *cls, const char *uri, struct MHD_Connection *c) {
    http_server *h = cls;
    const vitd_config *cfg = h->o.cfg;
    conn_guard_phase(c, CONN_HEADERS);
    if (!uri) return NULL;
    size_t n = strlen(uri);
    int params = 0;
    const char *q = strchr(uri, '?');
    if (q) {
        params = 1;
        for (const char *p = q + 1; *p; p++) params += *p == '&';
    }
    int status = 0;
    const char *code = NULL;
    char msg[200];
    if (n > (size_t)cfg->max_uri_bytes) {
        status = 414;
        code = "uri_too_long";
        snprintf(msg, sizeof msg, "the request target is %zu bytes, over max_uri_bytes %d", n, cfg->max_uri_bytes);
    } else if (params > cfg->max_query_params) {
        status = 431;
        code = "too_many_parameters";
        snprintf(msg, sizeof msg, "%d query parameters, over max_query_params %d", params, cfg->max_query_params);
    }
    if (!status) return NULL;
    char id[72];
    http_new_id(h, id);
    size_t len = 0;
    char *body = reply_error_json(code, msg, id, &len);
    strbuf b = {0};
    strbuf_printf(&b, "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nX-Request-Id: %s\r\nConnection: close\r\n"
                  "Content-Length: %zu\r\n\r\n", status, MHD_get_reason_phrase_for((unsigned)status), id, len);
    if (body) strbuf_append(&b, body, len);
    free(body);
    size_t total = b.len;
    char *bytes = strbuf_finish(&b);
    if (bytes) conn_guard_answer_close(c, bytes, total);
    free(bytes);
    if (h->o.metrics) {
        double st[METRICS_N_STAGES];
        for (int i = 0; i < METRICS_N_STAGES; i++) st[i] = -1;
        st[METRICS_STAGE_TOTAL] = 0;
        metrics_vitd_request(h->o.metrics, "other", status, st);
        metrics_vitd_error(h->o.metrics, code);
    }
    log_access_rec a = {.req_id = id, .method = "?", .route = "other", .status = status, .error = code,
                        .bytes_out = total};
    log_request_line(&a);
    return NULL;
}
