/* conn_guard.c — connection phases, deadlines, room at max_connections and direct answers (conn_guard.h).
 *
 * One list of entries under one mutex. An entry is created by the STARTED notification (libmicrohttpd's socket
 * context), found again through MHD_CONNECTION_INFO_SOCKET_CONTEXT, and freed by the CLOSED notification, which
 * libmicrohttpd sends before it closes the socket: while an entry is on the list under the mutex its fd is the
 * connection's, so shutdown() from the janitor never hits a reused descriptor. */
#include "conn_guard.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "util.h"

typedef struct conn_entry {
    struct conn_entry *prev, *next;
    struct conn_guard *g;
    int fd;
    conn_phase phase;
    double since;  /* when the phase began */
    bool closing;  /* shut down by the guard: no longer counted as open */
} conn_entry;

struct conn_guard {
    conn_limits lim;
    metrics_vitd *m;
    pthread_mutex_t mu;
    pthread_cond_t cv;   /* the janitor's sleep; signalled by conn_guard_free */
    conn_entry head;     /* sentinel of the circular list */
    int open;            /* entries not closing */
    bool stop;
    pthread_t janitor;
    char over_limit[512]; /* the 503 of a connection refused at max_connections */
    size_t over_limit_len;
};

static double now_s(void) { return vitd_now(); }

/* Shuts the connection down for reason (METRICS_CONN_*); the caller holds mu. */
static void shut_locked(conn_guard *g, conn_entry *e, int reason) {
    if (e->closing) return;
    e->closing = true;
    g->open--;
    shutdown(e->fd, SHUT_RDWR);
    if (g->m) {
        metrics_inc(g->m->conn_closed_s[reason]);
        metrics_set(g->m->conn_open_s, g->open);
    }
}

/* The deadline of e's phase, or 0 for none. */
static double deadline_of(const conn_guard *g, const conn_entry *e) {
    switch (e->phase) {
    case CONN_IDLE: return e->since + g->lim.idle_s;
    case CONN_HEADERS: return e->since + g->lim.header_s;
    case CONN_BODY: return e->since + g->lim.body_s;
    case CONN_SENDING: return e->since + g->lim.send_s;
    case CONN_LINGER: return e->since + CONN_LINGER_S;
    case CONN_WORK: break;
    }
    return 0;
}

static int reason_of(conn_phase ph) {
    switch (ph) {
    case CONN_IDLE: return METRICS_CONN_IDLE;
    case CONN_HEADERS: return METRICS_CONN_HEADER;
    case CONN_BODY: return METRICS_CONN_BODY;
    case CONN_SENDING: return METRICS_CONN_SEND;
    default: return METRICS_CONN_LINGER;
    }
}

static void *janitor_main(void *arg) {
    conn_guard *g = arg;
    pthread_mutex_lock(&g->mu);
    while (!g->stop) {
        double now = now_s();
        for (conn_entry *e = g->head.next; e != &g->head; e = e->next) {
            if (e->closing) continue;
            double d = deadline_of(g, e);
            if (d > 0 && now >= d) shut_locked(g, e, reason_of(e->phase));
        }
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts); /* the cv waits on this clock: a wall-clock step cannot stall it */
        ts.tv_nsec += 200 * 1000 * 1000;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&g->cv, &g->mu, &ts);
    }
    pthread_mutex_unlock(&g->mu);
    return NULL;
}

conn_guard *conn_guard_create(const conn_limits *lim, metrics_vitd *metrics) {
    conn_guard *g = xcalloc(1, sizeof *g);
    g->lim = *lim;
    g->m = metrics;
    g->head.next = g->head.prev = &g->head;
    pthread_mutex_init(&g->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&g->cv, &ca);
    pthread_condattr_destroy(&ca);
    if (pthread_create(&g->janitor, NULL, janitor_main, g) != 0) {
        pthread_cond_destroy(&g->cv);
        pthread_mutex_destroy(&g->mu);
        free(g);
        return NULL;
    }
    static const char body[] = "{\"error\":{\"code\":\"busy\",\"message\":\"too many open connections "
                               "(max_connections); retry shortly or on another replica\"}}\n";
    int n = snprintf(g->over_limit, sizeof g->over_limit,
                     "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
                     "Connection: close\r\nContent-Length: %zu\r\n\r\n%s", sizeof body - 1, body);
    g->over_limit_len = (size_t)n;
    return g;
}

void conn_guard_free(conn_guard *g) {
    if (!g) return;
    pthread_mutex_lock(&g->mu);
    g->stop = true;
    pthread_cond_signal(&g->cv);
    pthread_mutex_unlock(&g->mu);
    pthread_join(g->janitor, NULL);
    /* the daemon is stopped: every connection was closed and notified */
    for (conn_entry *e = g->head.next, *n; e != &g->head; e = n) {
        n = e->next;
        free(e);
    }
    pthread_cond_destroy(&g->cv);
    pthread_mutex_destroy(&g->mu);
    free(g);
}

void conn_guard_notify(void *cls, struct MHD_Connection *c, void **socket_ctx,
                       enum MHD_ConnectionNotificationCode code) {
    conn_guard *g = cls;
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
        if (!ci) return; /* untracked (libmicrohttpd always knows the fd): its own idle timeout still applies */
        conn_entry *e = xcalloc(1, sizeof *e);
        e->g = g;
        e->fd = ci->connect_fd;
        e->phase = CONN_IDLE;
        e->since = now_s();
        pthread_mutex_lock(&g->mu);
        e->next = &g->head;
        e->prev = g->head.prev;
        g->head.prev->next = e;
        g->head.prev = e;
        g->open++;
        if (g->open > g->lim.max_connections) {
            conn_entry *victim = NULL;
            for (conn_entry *o = g->head.next; o != &g->head; o = o->next)
                if (o != e && !o->closing && (o->phase == CONN_IDLE || o->phase == CONN_HEADERS) &&
                    e->since - o->since >= CONN_EVICT_MIN_S && (!victim || o->since < victim->since))
                    victim = o;
            if (victim) {
                shut_locked(g, victim, METRICS_CONN_EVICTED);
            } else {
                /* the client may not have sent its request yet; it reads this answer first */
                (void)!send(e->fd, g->over_limit, g->over_limit_len, MSG_NOSIGNAL | MSG_DONTWAIT);
                shut_locked(g, e, METRICS_CONN_OVER_LIMIT);
            }
        }
        if (g->m) metrics_set(g->m->conn_open_s, g->open);
        pthread_mutex_unlock(&g->mu);
        *socket_ctx = e;
        return;
    }
    conn_entry *e = *socket_ctx;
    if (!e) return;
    *socket_ctx = NULL;
    pthread_mutex_lock(&g->mu);
    e->prev->next = e->next;
    e->next->prev = e->prev;
    if (!e->closing) g->open--;
    if (g->m) metrics_set(g->m->conn_open_s, g->open);
    pthread_mutex_unlock(&g->mu);
    free(e);
}

static conn_entry *entry_of(struct MHD_Connection *c) {
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return ci ? ci->socket_context : NULL;
}

void conn_guard_phase(struct MHD_Connection *c, conn_phase ph) {
    conn_entry *e = entry_of(c);
    if (!e) return;
    conn_guard *g = e->g;
    pthread_mutex_lock(&g->mu);
    if (e->phase != CONN_LINGER) { /* a lingering connection only ends */
        e->phase = ph;
        e->since = now_s();
    }
    pthread_mutex_unlock(&g->mu);
}

bool conn_guard_answer_close(struct MHD_Connection *c, const char *bytes, size_t n) {
    conn_entry *e = entry_of(c);
    if (!e) return false;
    conn_guard *g = e->g;
    bool all = false;
    pthread_mutex_lock(&g->mu);
    if (!e->closing) {
        size_t done = 0;
        while (done < n) {
            ssize_t k = send(e->fd, bytes + done, n - done, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (k < 0 && errno == EINTR) continue;
            if (k <= 0) break; /* a full socket buffer: the answer is cut, the connection closes anyway */
            done += (size_t)k;
        }
        all = done == n;
        shutdown(e->fd, SHUT_WR);
        e->phase = CONN_LINGER;
        e->since = now_s();
    }
    pthread_mutex_unlock(&g->mu);
    return all;
}

bool conn_guard_lingering(struct MHD_Connection *c) {
    conn_entry *e = entry_of(c);
    if (!e) return false;
    pthread_mutex_lock(&e->g->mu);
    bool l = e->phase == CONN_LINGER || e->closing;
    pthread_mutex_unlock(&e->g->mu);
    return l;
}

int conn_guard_open(conn_guard *g) {
    pthread_mutex_lock(&g->mu);
    int n = g->open;
    pthread_mutex_unlock(&g->mu);
    return n;
}
