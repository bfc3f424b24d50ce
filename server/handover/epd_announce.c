/* epd_announce.c — registration with vLLM's EPD proxy (epd.h): a thread that POSTs <proxy>/instances and, on
 * when told to leave, DELETEs it, over a minimal HTTP/1.1 client (one request per connection, JSON body, status
 * line read; connect, send and receive bounded by a deadline, name resolution by the resolver's own timeouts). Written here rather than taken from libcurl: it sends one small request
 * every half minute to a plain-http proxy, and libcurl would bring about twenty shared libraries into the image
 * for that. */
#include "epd.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "util.h"

#define ATTEMPT_MS 5000      /* one registration: connect, send, read the status line */
#define RETRY_S 5            /* until the proxy first accepts */
#define URL_MAX 1024

/* http://host[:port][/base]: the parts a request needs. */
typedef struct {
    char host[256];          /* without brackets for IPv6 literals */
    char port[8];
    char base[URL_MAX];      /* path prefix without a trailing '/', may be "" */
    char host_header[300];   /* host[:port] as written in the URL */
} http_url;

static vitd_status parse_url(const char *url, http_url *u, const char *what, vitd_err *err) {
    memset(u, 0, sizeof *u);
    if (strncmp(url, "http://", 7) != 0)
        return vitd_fail(err, VITD_E_INVALID_ARG, "%s \"%.100s\": only http://host[:port][/path] is spoken", what,
                         url);
    const char *h = url + 7, *slash = strchr(h, '/');
    size_t auth = slash ? (size_t)(slash - h) : strlen(h);
    if (auth == 0 || auth >= sizeof u->host_header)
        return vitd_fail(err, VITD_E_INVALID_ARG, "%s \"%.100s\": no host, or a host too long", what, url);
    memcpy(u->host_header, h, auth);
    const char *port = NULL;
    if (h[0] == '[') {
        const char *close = memchr(h, ']', auth);
        if (!close) return vitd_fail(err, VITD_E_INVALID_ARG, "%s \"%.100s\": unclosed '['", what, url);
        if ((size_t)(close - h - 1) >= sizeof u->host)
            return vitd_fail(err, VITD_E_INVALID_ARG, "%s \"%.100s\": host too long", what, url);
        memcpy(u->host, h + 1, (size_t)(close - h - 1));
        if (close + 1 < h + auth) port = close[1] == ':' ? close + 2 : NULL;
        if (close + 1 < h + auth && !port)
            return vitd_fail(err, VITD_E_INVALID_ARG, "%s \"%.100s\": junk after ']'", what, url);
    } else {
        const char *colon = memchr(h, ':', auth);
        size_t hl = colon ? (size_t)(colon - h) : auth;
        memcpy(u->host, h, hl < sizeof u->host ? hl : sizeof u->host - 1);
        if (colon) port = colon + 1;
    }
    size_t pl = port ? (size_t)(h + auth - port) : 0;
    if (port && (pl == 0 || pl > 5 || strspn(port, "0123456789") < pl))
        return vitd_fail(err, VITD_E_INVALID_ARG, "%s \"%.100s\": bad port", what, url);
    if (port) memcpy(u->port, port, pl);
    else strcpy(u->port, "80");
    if (!u->host[0]) return vitd_fail(err, VITD_E_INVALID_ARG, "%s \"%.100s\": no host", what, url);
    if (slash) snprintf(u->base, sizeof u->base, "%s", slash);
    size_t bl = strlen(u->base);
    while (bl > 0 && u->base[bl - 1] == '/') u->base[--bl] = '\0';
    return VITD_OK;
}

vitd_status epd_check_url(const char *url, const char *what, vitd_err *err) {
    http_url u;
    return parse_url(url, &u, what, err);
}

static int ms_left(double deadline) {
    double left = (deadline - vitd_now()) * 1e3;
    return left > 0 ? (int)left + 1 : 0;
}

/* Connects to u within the deadline; returns the socket or -1 (err says why). */
static int connect_to(const http_url *u, double deadline, vitd_err *err) {
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res = NULL;
    int rc = getaddrinfo(u->host, u->port, &hints, &res);
    if (rc != 0) {
        vitd_fail(err, VITD_E_IO, "cannot resolve %s: %s", u->host, gai_strerror(rc));
        return -1;
    }
    int fd = -1;
    for (struct addrinfo *a = res; a && fd < 0; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, a->ai_protocol);
        if (fd < 0) continue;
        if (connect(fd, a->ai_addr, a->ai_addrlen) != 0 && errno != EINPROGRESS) {
            vitd_fail(err, VITD_E_IO, "connect to %s:%s: %s", u->host, u->port, strerror(errno));
            close(fd);
            fd = -1;
            continue;
        }
        struct pollfd p = {.fd = fd, .events = POLLOUT};
        int soerr = 0;
        socklen_t sl = sizeof soerr;
        if (poll(&p, 1, ms_left(deadline)) != 1 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) != 0 ||
            soerr != 0) {
            vitd_fail(err, VITD_E_IO, "connect to %s:%s: %s", u->host, u->port,
                      soerr ? strerror(soerr) : "timed out");
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(res);
    return fd;
}

/* One request (method, path = base + suffix, JSON body); returns the HTTP status, or 0 with err set. */
static int http_call(const http_url *u, const char *method, const char *suffix, const char *json, vitd_err *err) {
    double deadline = vitd_now() + ATTEMPT_MS * 1e-3;
    int fd = connect_to(u, deadline, err);
    if (fd < 0) return 0;
    char head[URL_MAX + 512];
    int hn = snprintf(head, sizeof head,
                      "%s %s%s HTTP/1.1\r\nHost: %s\r\nUser-Agent: vitd\r\nContent-Type: application/json\r\n"
                      "Content-Length: %zu\r\nConnection: close\r\n\r\n",
                      method, u->base, suffix, u->host_header, strlen(json));
    const char *parts[2] = {head, json};
    size_t lens[2] = {(size_t)hn, strlen(json)};
    int status = 0;
    for (int i = 0; i < 2; i++) {
        size_t off = 0;
        while (off < lens[i]) {
            struct pollfd p = {.fd = fd, .events = POLLOUT};
            if (poll(&p, 1, ms_left(deadline)) != 1) goto timeout;
            ssize_t w = send(fd, parts[i] + off, lens[i] - off, MSG_NOSIGNAL);
            if (w < 0 && (errno == EAGAIN || errno == EINTR)) continue;
            if (w <= 0) {
                vitd_fail(err, VITD_E_IO, "send to %s: %s", u->host_header, strerror(errno));
                goto out;
            }
            off += (size_t)w;
        }
    }
    char line[64];
    size_t got = 0;
    while (got < sizeof line - 1 && !memchr(line, '\n', got)) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, ms_left(deadline)) != 1) goto timeout;
        ssize_t r = recv(fd, line + got, sizeof line - 1 - got, 0);
        if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
        if (r <= 0) break;
        got += (size_t)r;
    }
    line[got] = '\0';
    if (sscanf(line, "HTTP/1.%*d %d", &status) != 1 || status < 100) {
        vitd_fail(err, VITD_E_IO, "%s: no HTTP status line in the answer", u->host_header);
        status = 0;
    }
    goto out;
timeout:
    vitd_fail(err, VITD_E_IO, "%s: no answer within %d ms", u->host_header, ATTEMPT_MS);
out:
    close(fd);
    return status;
}

/* ---- the announcer ---- */

struct epd_announcer {
    http_url proxy;
    char body[2 * URL_MAX];
    char proxy_text[URL_MAX];
    int interval_s;
    metrics_vitd *m;
    pthread_mutex_t mu;      /* guards stop */
    pthread_cond_t cv;
    bool stop;
    pthread_t thread;
};

/* One registration: true when the proxy answered 2xx (a proxy answering 201 or 204 has registered us too).
 * Logs when the outcome changes. */
static bool announce(epd_announcer *a, bool *was_ok, bool first) {
    vitd_err err = {0};
    int status = http_call(&a->proxy, "POST", "/instances", a->body, &err);
    bool ok = status >= 200 && status < 300;
    if (a->m) {
        metrics_inc(ok ? a->m->ec_announce_ok_s : a->m->ec_announce_err_s);
        metrics_set(a->m->ec_registered_s, ok ? 1 : 0);
    }
    char why[300];
    if (status) snprintf(why, sizeof why, "HTTP %d", status);
    else snprintf(why, sizeof why, "%s", err.msg);
    if (ok && (!*was_ok || first))
        vitd_log(VITD_LOG_INFO, "registered with the EPD proxy %s as an encode instance", a->proxy_text);
    else if (!ok && (*was_ok || first))
        vitd_log(VITD_LOG_WARN, "EPD proxy %s: registration failed (%s); retrying every %d s", a->proxy_text, why,
                 RETRY_S);
    *was_ok = ok;
    return ok;
}

/* Withdraws the registration (one bounded attempt). */
static void withdraw(epd_announcer *a) {
    vitd_err err = {0};
    int status = http_call(&a->proxy, "DELETE", "/instances", a->body, &err);
    if (status == 200) vitd_log(VITD_LOG_INFO, "left the EPD proxy %s", a->proxy_text);
    else if (status) vitd_log(VITD_LOG_WARN, "EPD proxy %s answered %d to the DELETE", a->proxy_text, status);
    else vitd_log(VITD_LOG_WARN, "EPD proxy %s: DELETE failed: %s", a->proxy_text, err.msg);
    if (a->m) metrics_set(a->m->ec_registered_s, 0);
}

static void *announce_main(void *arg) {
    epd_announcer *a = arg;
    bool ok = false, first = true;
    pthread_mutex_lock(&a->mu);
    while (!a->stop) {
        pthread_mutex_unlock(&a->mu);
        announce(a, &ok, first);
        first = false;
        pthread_mutex_lock(&a->mu);
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += ok ? a->interval_s : RETRY_S;
        while (!a->stop && pthread_cond_timedwait(&a->cv, &a->mu, &ts) == 0) {
        }
    }
    pthread_mutex_unlock(&a->mu);
    withdraw(a);
    return NULL;
}

vitd_status epd_announcer_start(const char *proxy_url, const char *self_url, int interval_s, metrics_vitd *m,
                                epd_announcer **out, vitd_err *err) {
    *out = NULL;
    epd_announcer *a = xcalloc(1, sizeof *a);
    vitd_status st = parse_url(proxy_url, &a->proxy, "ec_proxy_url", err);
    if (!st) st = epd_check_url(self_url, "ec_advertise_url", err);
    if (st) {
        free(a);
        return st;
    }
    strbuf b = {0};
    strbuf_puts(&b, "{\"role\":\"encode\",\"url\":");
    strbuf_json_string(&b, self_url);
    strbuf_puts(&b, ",\"ec_zmq_addrs\":[],\"dp_size\":1,\"metadata\":{\"server\":\"vitd\"}}");
    char *body = strbuf_finish(&b);
    if (!body || strlen(body) >= sizeof a->body) {
        free(body);
        free(a);
        return vitd_fail(err, VITD_E_INVALID_ARG, "ec_advertise_url is too long");
    }
    strcpy(a->body, body);
    free(body);
    snprintf(a->proxy_text, sizeof a->proxy_text, "%s", proxy_url);
    a->interval_s = interval_s > 0 ? interval_s : 30;
    a->m = m;
    pthread_mutex_init(&a->mu, NULL);
    pthread_cond_init(&a->cv, NULL);
    if (pthread_create(&a->thread, NULL, announce_main, a) != 0) {
        pthread_cond_destroy(&a->cv);
        pthread_mutex_destroy(&a->mu);
        free(a);
        return vitd_fail(err, VITD_E_INTERNAL, "cannot start the EPD registration thread");
    }
    *out = a;
    return VITD_OK;
}

void epd_announcer_leave(epd_announcer *a) {
    if (!a) return;
    pthread_mutex_lock(&a->mu);
    a->stop = true;
    pthread_cond_broadcast(&a->cv);
    pthread_mutex_unlock(&a->mu);
}

void epd_announcer_stop(epd_announcer *a) {
    if (!a) return;
    epd_announcer_leave(a);
    pthread_join(a->thread, NULL);
    pthread_cond_destroy(&a->cv);
    pthread_mutex_destroy(&a->mu);
    free(a);
}
