/* http_frame.c — request framing checks (http_frame.h). */
#include "http_frame.h"

#include <ctype.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

void http_frame_init(http_frame *f) { memset(f, 0, sizeof *f); }

/* The next comma-separated element of *p (optional whitespace trimmed) into [*b, *e); false at the end. */
static bool next_element(const char **p, const char **b, const char **e) {
    const char *s = *p;
    while (*s == ' ' || *s == '\t' || *s == ',') s++;
    if (!*s) return false;
    const char *t = s;
    while (*t && *t != ',') t++;
    const char *end = t;
    while (end > s && (end[-1] == ' ' || end[-1] == '\t')) end--;
    *b = s;
    *e = end;
    *p = t;
    return true;
}

/* RFC 9110 5.1 / 5.6.2: a field name is a token. */
static bool is_token(const char *s) {
    if (!*s) return false;
    for (; *s; s++) {
        const unsigned char c = (unsigned char)*s;
        if (!isalnum(c) && !strchr("!#$%&'*+-.^_`|~", c)) return false;
    }
    return true;
}

void http_frame_add(http_frame *f, const char *name, const char *value) {
    if (!name) return;
    if (!value) value = "";
    if (!is_token(name)) {
        if (!f->bad_name) {
            size_t k = 0;
            for (const char *p = name; *p && k + 1 < sizeof f->bad_name_text; p++)
                f->bad_name_text[k++] = *p >= 0x20 && *p < 0x7f ? *p : '?';
            f->bad_name_text[k] = 0;
        }
        f->bad_name = true;
        return;
    }
    if (!strcasecmp(name, "Content-Length")) {
        const char *p = value, *b, *e;
        bool any = false;
        while (next_element(&p, &b, &e)) {
            any = true;
            unsigned long long v = 0;
            bool ok = e > b && e - b <= 19;
            for (const char *q = b; ok && q < e; q++) {
                if (!isdigit((unsigned char)*q)) ok = false;
                else v = v * 10 + (unsigned long long)(*q - '0');
            }
            if (!ok) {
                f->content_length_bad = true;
                continue;
            }
            if (f->n_content_length++ == 0) f->content_length = v;
            else if (v != f->content_length) f->content_length_conflict = true;
        }
        if (!any) f->content_length_bad = true;
        return;
    }
    if (!strcasecmp(name, "Transfer-Encoding")) {
        if (f->n_transfer_encoding++ == 0) {
            snprintf(f->te_value, sizeof f->te_value, "%s", value);
            /* libmicrohttpd reads a chunked body only when the first Transfer-Encoding is this very word */
            f->te_exact = !strcasecmp(value, "chunked");
        }
        const char *p = value, *b, *e;
        while (next_element(&p, &b, &e)) {
            /* a coding may carry parameters after ';' */
            const char *semi = memchr(b, ';', (size_t)(e - b));
            const char *te = semi ? semi : e;
            while (te > b && (te[-1] == ' ' || te[-1] == '\t')) te--;
            bool chunked = te - b == 7 && !strncasecmp(b, "chunked", 7) && !semi;
            if (!chunked) f->te_other = true;
            f->te_chunked_last = chunked;
        }
        return;
    }
    if (!strcasecmp(name, "Host")) f->n_host++;
}

static int verdict(http_frame_verdict *v, int status, const char *code, const char *fmt, const char *arg) {
    v->status = status;
    v->code = code;
    snprintf(v->msg, sizeof v->msg, fmt, arg);
    return status;
}

int http_frame_check(const http_frame *f, const char *version, http_frame_verdict *v) {
    memset(v, 0, sizeof *v);
    bool http11 = version && !strcmp(version, "HTTP/1.1");
    if (f->bad_name)
        return verdict(v, 400, "bad_request", "header name \"%s\" is not a token (whitespace before the colon?): "
                       "the request's framing is ambiguous", f->bad_name_text);
    if (f->content_length_bad)
        return verdict(v, 400, "bad_request", "%s", "Content-Length is not a decimal number of bytes");
    if (f->content_length_conflict)
        return verdict(v, 400, "bad_request", "%s", "Content-Length is given twice with different values: the body's "
                       "length is ambiguous");
    if (f->n_transfer_encoding) {
        if (f->n_content_length)
            return verdict(v, 400, "bad_request", "%s", "both Content-Length and Transfer-Encoding are given: the "
                           "body's length is ambiguous");
        if (!http11)
            return verdict(v, 400, "bad_request", "%s", "Transfer-Encoding in an HTTP/1.0 request");
        if (!f->te_chunked_last)
            return verdict(v, 400, "bad_request", "Transfer-Encoding \"%.60s\" does not end with chunked: the body's "
                           "length cannot be known", f->te_value);
        if (f->te_other)
            return verdict(v, 501, "not_implemented", "Transfer-Encoding \"%.60s\" is not supported (only chunked)",
                           f->te_value);
        /* "chunked, chunked", ",chunked", "chunked\t", two headers: chunked only, but not read as chunked */
        if (f->n_transfer_encoding > 1 || !f->te_exact)
            return verdict(v, 400, "bad_request", "Transfer-Encoding \"%.60s\" must be exactly \"chunked\", once",
                           f->te_value);
    }
    if (http11 && f->n_host == 0)
        return verdict(v, 400, "bad_request", "%s", "HTTP/1.1 request without a Host header");
    if (f->n_host > 1) return verdict(v, 400, "bad_request", "%s", "more than one Host header");
    return 0;
}
