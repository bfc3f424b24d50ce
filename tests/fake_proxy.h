/* fake_proxy.h — a stand-in for vLLM's EPD proxy on 127.0.0.1 for the registration tests: it accepts one
 * request per connection, records its method, path, body and arrival time, and answers 200 {} (503 to the first
 * `refuse_first` POSTs; 204 without a body when `no_content` is set, under mu). Header-only; include once per
 * test program, after check.h and loopback.h. */
#ifndef VITD_FAKE_PROXY_H
#define VITD_FAKE_PROXY_H

#include <arpa/inet.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "loopback.h"
#include "util.h"

#define PROXY_MAX_CALLS 16
typedef struct {
    int lfd, port;
    int refuse_first;                 /* answer 503 to this many POSTs */
    bool no_content;                  /* answer 204 instead of 200 {} (guarded by mu) */
    pthread_t thread;
    pthread_mutex_t mu;
    int n;                            /* calls seen (all of them), guarded by mu */
    char method[PROXY_MAX_CALLS][8], path[PROXY_MAX_CALLS][64], body[PROXY_MAX_CALLS][512];
    double at[PROXY_MAX_CALLS];
    volatile bool stop;
} proxy;

static inline void *proxy_main(void *arg) {
    proxy *p = arg;
    while (!p->stop) {
        int fd = accept(p->lfd, NULL, NULL);
        if (fd < 0) continue;
        struct timeval tv = {5, 0};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        char buf[4096];
        size_t got = 0;
        char *end = NULL;
        long cl = -1;
        for (;;) {
            ssize_t k = recv(fd, buf + got, sizeof buf - 1 - got, 0);
            if (k <= 0) break;
            got += (size_t)k;
            buf[got] = 0;
            if (!end && (end = strstr(buf, "\r\n\r\n"))) {
                const char *h = strcasestr(buf, "Content-Length:");
                cl = h ? strtol(h + 15, NULL, 10) : 0;
            }
            if (end && (long)(got - (size_t)(end + 4 - buf)) >= cl) break;
        }
        pthread_mutex_lock(&p->mu);
        int i = p->n < PROXY_MAX_CALLS ? p->n : PROXY_MAX_CALLS - 1; /* the last slot keeps the latest */
        p->n++;
        sscanf(buf, "%7s %63s", p->method[i], p->path[i]);
        snprintf(p->body[i], sizeof p->body[i], "%s", end ? end + 4 : "");
        p->at[i] = vitd_now();
        bool refuse = !strcmp(p->method[i], "POST") && p->refuse_first-- > 0, no_content = p->no_content;
        pthread_mutex_unlock(&p->mu);
        const char *ans = refuse ? "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                          : no_content ? "HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n"
                                       : "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
                                         "Connection: close\r\n\r\n{}";
        loopback_send_all(fd, ans, strlen(ans));
        close(fd);
    }
    return NULL;
}

static inline bool proxy_start(proxy *p, int refuse_first) {
    memset(p, 0, sizeof *p);
    p->refuse_first = refuse_first;
    pthread_mutex_init(&p->mu, NULL);
    p->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    if (p->lfd < 0 || bind(p->lfd, (struct sockaddr *)&a, sizeof a) || listen(p->lfd, 16) ||
        getsockname(p->lfd, (struct sockaddr *)&a, &al))
        return false;
    p->port = ntohs(a.sin_port);
    return pthread_create(&p->thread, NULL, proxy_main, p) == 0;
}

static inline int proxy_calls(proxy *p) {
    pthread_mutex_lock(&p->mu);
    int n = p->n;
    pthread_mutex_unlock(&p->mu);
    return n;
}

/* The slot holding call i (0-based; calls past the table share its last slot, which holds the latest). */
static inline int proxy_slot(int i) { return i < PROXY_MAX_CALLS ? i : PROXY_MAX_CALLS - 1; }

/* Waits (bounded) until at least n calls were seen. */
static inline bool proxy_wait(proxy *p, int n, double timeout_s) {
    double t0 = vitd_now();
    while (proxy_calls(p) < n && vitd_now() - t0 < timeout_s) usleep(20 * 1000);
    return proxy_calls(p) >= n;
}

static inline void proxy_stop(proxy *p) {
    p->stop = true;
    shutdown(p->lfd, SHUT_RDWR);
    int fd = loopback_connect(p->port, 1); /* wakes accept() */
    if (fd >= 0) close(fd);
    pthread_join(p->thread, NULL);
    close(p->lfd);
    pthread_mutex_destroy(&p->mu);
}

#endif
