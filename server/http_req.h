/* http_req.h — internal to the HTTP layer (http.c: the daemon, routes, GET handlers and request lifetime;
 * http_images.c: the pipeline every image route shares): the route table, the server and request objects, and
 * the answer helpers. Nothing outside server/http*.c includes it.
 *
 * A request (`struct req`) is created at the first access-handler call and stored in MHD's req_cls. It owns an
 * arena holding everything the request needs (body, image spans, pixel_values, outputs). It is reference
 * counted: one reference for the connection (dropped by the completion callback, whatever the outcome) and, for
 * an image request that went asynchronous, one for the work (prep pool -> scheduler -> io pool), dropped by
 * whoever records the outcome and resumes the connection. Whoever drops the last reference frees the arena.
 *
 * Answers and keep-alive (http_early.c): libmicrohttpd 0.9 closes the connection after any answer queued in the
 * first handler call, so nothing is answered there. GET routes answer at the final call; an error decided at the
 * first call (401, 404, 405, 415, a bad option) waits in PH_DISCARD while a body of up to discard_body_bytes is
 * dropped, and a larger one is answered at once (the connection then closes). Framing errors close it always.
 *
 * Image-route phases (r->phase, touched only by the connection's MHD thread, except PH_ASYNC -> PH_DONE which
 * the work side sets before MHD_resume_connection, whose locking orders it before the next handler call):
 *   PH_BODY   upload streaming into body_feed(); an error is remembered and answered when the upload ends
 *   PH_ASYNC  suspended: prep pool, scheduler, then (cache files) the io pool
 *   PH_DONE   resumed: render the answer
 * Other routes answer at the first call.
 */
#ifndef VITD_HTTP_REQ_H
#define VITD_HTTP_REQ_H

#include <microhttpd.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>

#include "arena.h"
#include "body.h"
#include "epd.h"
#include "http.h"
#include "kserve.h"
#include "output_cache.h"
#include "vllm.h"

/* The first four are the image routes: they run the encode pipeline (http_images.c). */
typedef enum {
    RT_ENCODE,        /* POST /v1/encode */
    RT_VLLM_EMBEDS,   /* POST /v1/vllm/image_embeds */
    RT_CHAT,          /* POST /v1/chat/completions (vLLM EPD encoder instance) */
    RT_V2_INFER,      /* POST /v2/models/{model}[/versions/{v}]/infer */
    RT_HEALTH,
    RT_READY,
    RT_METRICS,
    RT_MODEL,
    RT_V2_SERVER,     /* GET /v2 */
    RT_V2_LIVE,
    RT_V2_READY,
    RT_V2_MODEL,      /* GET /v2/models/{model}[/versions/{v}] */
    RT_V2_MODEL_READY,
    RT_NOT_FOUND,
} route_id;

#define RT_IMAGE_ROUTES 4 /* route ids below this run the encode pipeline */

typedef struct {
    const char *path;     /* the route's template, also its metrics label */
    const char *method;   /* the one method it serves (GET routes also take HEAD) */
    const char *allow;
    bool open;            /* reachable without the API key (probes) */
    bool v2;              /* a KServe v2 route */
} http_route;

extern const http_route http_routes[RT_NOT_FOUND + 1];

typedef enum {
    PH_NEW,
    PH_GET,       /* a GET route: answered at the final call, any body dropped (http_early.c) */
    PH_DISCARD,   /* an error decided at the first call waits in r->early while the body is dropped */
    PH_LINGER,    /* answered straight on the socket (http_early.c); what still arrives is dropped */
    PH_BODY,
    PH_ASYNC,
    PH_DONE,
    PH_ANSWERED
} req_phase;

/* An image waiting for another request's encode of the same bytes (http_work.c). */
typedef struct {
    struct req *r;
    int image;
} wait_arg;

struct http_server {
    http_opts o;
    struct MHD_Daemon *daemon;
    struct conn_guard *guard;  /* connection phases and deadlines (conn_guard.h) */
    int port;
    atomic_bool ready;
    atomic_bool draining;
    atomic_bool failed;       /* the device failed (http_set_failed) */
    atomic_ullong next_id;
    unsigned long long id_seed;
    char model_name[256];
    uint8_t model_fp[32];     /* content_id_model(): part of every derived uuid */
    atomic_size_t io_patches; /* patches of requests waiting for their cache files (http_images.c) */
    pthread_rwlock_t work_lock; /* guards work_closed; held (read) while a request hands work to the pools */
    bool work_closed;         /* http_close_work(): the pools and the batcher take no more work */
    pthread_mutex_t mu;       /* guards live */
    pthread_cond_t idle_cv;   /* live reached 0 */
    int live;                 /* requests created and not freed */
};

struct req {
    atomic_int refs;
    http_server *srv;
    arena *arena;
    struct MHD_Connection *conn;
    route_id route;
    const char *method;       /* arena copy, for the access line */
    req_phase phase;
    char id[72];
    char remote[64];
    double t_start, t_body, t_prep_done, t_done;
    double t_answer, t_answered; /* the resumed handler starts rendering, and has queued the answer */
    atomic_llong decode_us;   /* microseconds the prep tasks spent decoding (summed over images) */
    uint64_t bytes_in, bytes_out;
    int status;               /* HTTP status queued (0 = none yet) */
    const char *error_code;   /* error.code of a failed answer, or NULL */
    /* ---- early answers (http_early.c) ---- */
    bool first_call;          /* inside the first access-handler call: answers wait for the final one */
    bool must_close;          /* the answer closes the connection (framing errors) */
    long long body_pending;   /* from the headers at the first call: Content-Length, -1 chunked, 0 none */
    uint64_t discarded;       /* body bytes read and dropped */
    const char *v2_version;   /* the version segment of a v2 path (arena), or NULL */
    struct {
        int status;
        const char *ctype, *xname, *xvalue; /* arena copies */
        char *buf;            /* malloc'd body, owned until it is queued or written */
        size_t len;
    } early;                  /* the answer of PH_DISCARD */
    /* ---- image routes ---- */
    body_state *body;
    bool body_failed;         /* answer `pending` when the upload ends */
    vitd_status pending;
    char pending_msg[sizeof(((vitd_err *)0)->msg)];
    body_result br;
    int n_images;
    vitd_grid *grids;         /* [n_images], arena */
    float **pv, **emb, **ds;  /* [n_images] each, arena; ds NULL when deepstack is not returned; emb and ds hold
                                 bfloat16 (uint16_t) values when out_bf16 */
    bool out_bf16;            /* outputs in the engine's bfloat16 (http_opts.out_bf16) */
    char **uuids;             /* [n_images] hand-over ids (vLLM routes), arena; NULL elsewhere */
    bool *uuid_derived;       /* [n_images] the id is vitd's, not the client's */
    bool *uuid_derive;        /* [n_images] prep task i fills uuids[i] (content_id_image); NULL = none */
    size_t n_patches;
    int fd;                   /* the connection's socket, for the hang-up check while suspended */
    atomic_int prep_left;     /* prep tasks not finished */
    atomic_bool prep_failed;
    pthread_mutex_t prep_mu;  /* guards prep_err, prep_err_index (and io_err, io_err_index) */
    int prep_err_index;
    vitd_err prep_err;
    sched_job job;            /* the round's job, over the work images (jgrids, jpv, jemb, jds) */
    /* ---- the work (http_work.c) ---- */
    unsigned char *state;     /* [n_images] hit, lead, wait or solo (http_work.c); set by the owning thread only */
    oc_entry **entries;       /* [n_images] the output-cache entry an image reads or fills, or NULL */
    int *work;                /* [n_images] the images decoded and encoded in this round */
    int n_work;
    int round;                /* 0; then the retry rounds of images whose leader failed (http_work.c) */
    wait_arg *waits;          /* [n_images] the output cache's callback argument of each waiting image */
    bool *wait_failed;        /* [n_images] guarded by prep_mu: the leader this image waited for failed */
    uint8_t *keys;            /* [n_images][32] output-cache keys */
    size_t work_patches;      /* booked for this round */
    bool want_ds;             /* the request's own images keep DeepStack outputs */
    vitd_grid *jgrids;        /* [n_images] the job's arrays, over the work images */
    float **jpv, **jemb, **jds;
    int parts;                /* guarded by prep_mu: the setup, the round's job, each waiting image */
    bool job_failed;          /* guarded by prep_mu: a booking or the job failed (job_err) */
    vitd_err job_err;
    atomic_int io_left;       /* cache-file tasks not finished */
    int io_err_index;
    vitd_err io_err;
    /* route state */
    vllm_options vllm;        /* RT_VLLM_EMBEDS */
    epd_request chat;         /* RT_CHAT */
    kserve_request *v2;       /* RT_V2_INFER (arena) */
    const char *v2_model;     /* the model segment of a v2 path (arena) */
    bool v2_errors;           /* a /v2 path: errors in KServe's form, {"error": "..."} */
    /* outcome, written by the work side before MHD_resume_connection */
    vitd_status outcome;
    vitd_err outcome_err;
};

/* ---- answers (http.c) ----
 * Each queues one answer and marks the request answered; buf passes to MHD (freed after sending). */
enum MHD_Result http_respond(struct req *r, int status, const char *ctype, char *buf, size_t len,
                             const char *extra_name, const char *extra_value);
/* A vectored answer of n pieces (total bytes), sent from memory the caller keeps: free_cb(cls) runs once MHD is
 * done with it (or at once when the answer cannot be made), so cls typically holds a request reference. */
enum MHD_Result http_respond_iov(struct req *r, int status, const char *ctype, const struct MHD_IoVec *iov,
                                 unsigned n, size_t total, MHD_ContentReaderFreeCallback free_cb, void *cls);
/* Error answer: {"error": {code, message, request_id}}, or on KServe v2 routes {"error": message}. */
enum MHD_Result http_respond_error(struct req *r, int status, const char *code, const char *extra_name,
                                   const char *extra_value, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));
/* Error answer for a vitd_status: HTTP code from reply's table, Retry-After on 503. */
enum MHD_Result http_respond_status(struct req *r, vitd_status s, const char *msg);
enum MHD_Result http_respond_text(struct req *r, int status, const char *ctype, const char *text);

/* Drops one reference; the last one frees the arena and the request. */
void http_req_unref(struct req *r);
/* A fresh request id (16 hex digits) into out[72]. */
void http_new_id(http_server *h, char *out);
/* The GET routes' answers (PH_GET, at the final call). */
enum MHD_Result http_get_answer(struct req *r);

/* ---- early answers and keep-alive (http_early.c) ---- */

/* Called by http_respond inside the first call: keeps the answer for the final call (true) when no body or one
 * of at most discard_body_bytes follows, taking buf; false when it must go now (the connection then closes). */
bool early_defer(struct req *r, int status, const char *ctype, char *buf, size_t len, const char *xname,
                 const char *xvalue);
/* The later calls of PH_GET, PH_DISCARD and PH_LINGER: drop the body, answer at the final call. */
enum MHD_Result early_upload(struct req *r, const char *data, size_t *size);
/* Writes an answer straight on the socket (mid-body, where libmicrohttpd cannot queue one) and lingers: the
 * request is then PH_LINGER. Takes buf. */
void early_write(struct req *r, int status, const char *ctype, char *buf, size_t len, const char *xname,
                 const char *xvalue);
/* libmicrohttpd's MHD_OPTION_URI_LOG_CALLBACK: the request line arrived; a target over max_uri_bytes or with
 * more than max_query_params parameters is answered 414 / 431 on the spot (libmicrohttpd 0.9 runs out of its
 * connection pool parsing thousands of parameters and then answers nothing). */
void *early_on_uri(void *cls, const char *uri, struct MHD_Connection *c);

/* ---- the work behind an image request (http_work.c) ---- */

/* The images are planned (grids, n_patches): looks them up in the output cache, hands the rest to the prep pool
 * and the batcher (suspending the connection), or answers at once when every image is a hit. */
enum MHD_Result work_begin(struct req *r);
/* Whether the request's embeddings go to vLLM cache files before it is answered. */
bool work_writes_cache(const struct req *r);
/* Lets go of the request's output-cache entries (http_req_unref, before the arena goes). */
void work_release(struct req *r);

/* ---- the image pipeline (http_images.c) ---- */

/* First call of an image route: drain check, Content-Length limit, options from the query, body parser. */
enum MHD_Result images_begin(struct req *r);
/* Later calls while the body streams in (and the final call when *size is 0). */
enum MHD_Result images_upload(struct req *r, const char *data, size_t *size);
/* The resumed handler: renders the outcome. */
enum MHD_Result images_answer(struct req *r);

#endif
