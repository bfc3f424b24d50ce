/* conn_guard.h — every open HTTP connection, the phase it is in and the deadline of that phase: the bounds that
 * libmicrohttpd 0.9's idle timeout cannot give, since every trickled byte counts as activity for it.
 *
 * Phases and their deadlines (each per request, not per byte):
 *   IDLE     open, no request line yet (new, or kept alive after an answer)   connection_timeout_s
 *   HEADERS  the request line arrived, the headers have not all               header_timeout_s
 *   BODY     headers done, the body is arriving                               body_timeout_s
 *   WORK     the request is complete and being worked on                      none (request_timeout_ms)
 *   SENDING  the answer is queued and being sent                              send_timeout_s
 *   LINGER   an answer was written directly and the write side shut; what     CONN_LINGER_S
 *            still arrives is read and dropped
 * A janitor thread closes a connection whose deadline passed by shutting its socket down (libmicrohttpd then
 * sees the end of the stream and cleans up); the socket stays valid meanwhile, since libmicrohttpd closes it only
 * after telling us (the CLOSED notification, under the same lock).
 *
 * At max_connections a new connection makes room by closing the one that has waited longest (at least
 * CONN_EVICT_MIN_S) in IDLE or HEADERS: a kept-alive idle connection may be closed at any time in HTTP, and a
 * trickling one is the slow client the limit protects against. When none can go, the new connection gets a 503
 * and is closed at once: a client fails fast instead of hanging in the listen backlog.
 *
 * Thread safety: every function may be called from any thread; conn_guard_notify and the phase calls come from
 * libmicrohttpd's threads.
 */
#ifndef VITD_CONN_GUARD_H
#define VITD_CONN_GUARD_H

#include <microhttpd.h>
#include <stdbool.h>
#include <stddef.h>

#include "metrics.h"

#define CONN_EVICT_MIN_S 1.0 /* a pending connection younger than this is never closed to make room */
#define CONN_LINGER_S 2.0    /* after a direct answer, how long the rest of a request is read and dropped */

typedef enum { CONN_IDLE, CONN_HEADERS, CONN_BODY, CONN_WORK, CONN_SENDING, CONN_LINGER } conn_phase;

typedef struct {
    int max_connections;
    double idle_s, header_s, body_s, send_s;
} conn_limits;

typedef struct conn_guard conn_guard;

/* Starts the janitor. metrics may be NULL. Free with conn_guard_free (after the daemon is stopped). */
conn_guard *conn_guard_create(const conn_limits *lim, metrics_vitd *metrics);
void conn_guard_free(conn_guard *g);

/* libmicrohttpd's MHD_OPTION_NOTIFY_CONNECTION callback (cls = the guard). */
void conn_guard_notify(void *cls, struct MHD_Connection *c, void **socket_ctx,
                       enum MHD_ConnectionNotificationCode code);

/* The connection's request moved to phase ph now. */
void conn_guard_phase(struct MHD_Connection *c, conn_phase ph);

/* Writes bytes (a whole HTTP answer) straight to the connection's socket, for answers libmicrohttpd cannot
 * queue (mid-body, or before it parsed the request), then shuts the write side and lingers: the connection
 * closes after CONN_LINGER_S or when the request ends. Returns whether every byte was written. */
bool conn_guard_answer_close(struct MHD_Connection *c, const char *bytes, size_t n);

/* Whether the connection was answered directly or is being closed: its request must not be served. */
bool conn_guard_lingering(struct MHD_Connection *c);

/* Connections open and not being closed. */
int conn_guard_open(conn_guard *g);

#endif
