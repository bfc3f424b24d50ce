/* fuzz_multipart.c — libFuzzer target: multipart/form-data bodies through libmicrohttpd's post processor and
 * body.c's parts, delimiters, option fields and limits, as the server runs them: a daemon on 127.0.0.1 (started
 * once) receives each input as one POST body with boundary "fuzzB", in pieces whose size the first byte picks.
 * Seeds: tests/fuzz/seeds/multipart. Loopback only. */
#include <arpa/inet.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "arena.h"
#include "body.h"

typedef struct {
    arena *a;
    body_state *s;
    vitd_status st;
    vitd_err err;
    size_t split;
} conn_ctx;

static enum MHD_Result handler(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                               const char *version, const char *upload, size_t *upload_size, void **req_cls) {
    (void)cls, (void)url, (void)method, (void)version;
    conn_ctx *x = *req_cls;
    if (!x) {
        x = calloc(1, sizeof *x);
        if (!x) return MHD_NO;
        *req_cls = x;
        x->a = arena_create(0);
        const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-Split");
        x->split = h ? strtoul(h, NULL, 10) : 0;
        encode_options opts = {.encoding = ENC_FLOAT, .deepstack = true, .dtype = ST_F32, .layout = LAYOUT_SEPARATE};
        body_limits lim = {(size_t)1 << 20, 8};
        const char *ct = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE);
        x->st = body_begin(c, ct, &lim, &opts, x->a, &x->s, &x->err);
        return MHD_YES;
    }
    if (*upload_size) {
        size_t step = x->split ? x->split : *upload_size;
        for (size_t off = 0; !x->st && off < *upload_size; off += step)
            x->st = body_feed(x->s, upload + off, *upload_size - off < step ? *upload_size - off : step, &x->err);
        *upload_size = 0;
        return MHD_YES;
    }
    body_result r;
    if (!x->st) x->st = body_finish(x->s, &r, &x->err);
    static const char ok[] = "done";
    struct MHD_Response *resp = MHD_create_response_from_buffer(4, (void *)ok, MHD_RESPMEM_PERSISTENT);
    enum MHD_Result q = MHD_queue_response(c, 200, resp);
    MHD_destroy_response(resp);
    return q;
}

static void completed(void *cls, struct MHD_Connection *c, void **req_cls, enum MHD_RequestTerminationCode toe) {
    (void)cls, (void)c, (void)toe;
    conn_ctx *x = *req_cls;
    if (!x) return;
    body_end(x->s);
    arena_free(x->a);
    free(x);
    *req_cls = NULL;
}

static int g_port;

static void start_daemon(void) {
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = 0};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct MHD_Daemon *d = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD, 0, NULL, NULL, handler, NULL,
                                            MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa, MHD_OPTION_NOTIFY_COMPLETED,
                                            completed, NULL, MHD_OPTION_END);
    if (!d) abort();
    g_port = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT)->port; /* the daemon lives as long as the process */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!g_port) start_daemon();
    if (size < 1) return 0;
    unsigned split = data[0] % 8 == 0 ? 0 : 1u << (data[0] % 8);
    data++;
    size--;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)g_port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int fd = -1;
    for (int tries = 0; fd < 0 && tries < 50; tries++) { /* the harness's own sockets, not the code under test */
        fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
            close(fd);
            fd = -1;
            usleep(10000);
        }
    }
    if (fd < 0) return 0;
    char head[256];
    int hl = snprintf(head, sizeof head, "POST /x HTTP/1.1\r\nHost: f\r\nConnection: close\r\nContent-Type: "
                      "multipart/form-data; boundary=fuzzB\r\nX-Split: %u\r\nContent-Length: %zu\r\n\r\n", split,
                      size);
    const void *parts[2] = {head, data};
    size_t lens[2] = {(size_t)hl, size};
    for (int k = 0; k < 2; k++)
        for (size_t off = 0; off < lens[k];) {
            ssize_t n = send(fd, (const char *)parts[k] + off, lens[k] - off, MSG_NOSIGNAL);
            if (n <= 0) break;
            off += (size_t)n;
        }
    char buf[4096];
    while (recv(fd, buf, sizeof buf, 0) > 0) {
    }
    struct linger lg = {1, 0}; /* reset, no TIME_WAIT: a minute of fuzzing opens hundreds of thousands */
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(fd);
    return 0;
}
