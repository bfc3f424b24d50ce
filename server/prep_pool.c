/* prep_pool.c — a fixed pool of CPU threads with one FIFO of task groups (see prep_pool.h).
 *
 * A group is one prep_pool_submit(): fn, arg and a count. Workers take the next index of the head group under the
 * pool's mutex and run it unlocked, so a group's tasks spread over every worker; the group leaves the queue when
 * its last index has been handed out (its tasks may still be running). No per-task allocation.
 */
#include "prep_pool.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "image.h"
#include "util.h"

typedef struct group {
    prep_task_fn fn;
    void *arg;
    int n_tasks;
    int next;            /* next index to hand out */
    struct group *link;
} group;

struct prep_pool {
    pthread_mutex_t mu;
    pthread_cond_t cv;   /* work queued or stopping */
    group *head, *tail;  /* guarded by mu */
    int pending;         /* tasks not yet handed out, guarded by mu */
    int idle;            /* workers waiting for work, guarded by mu */
    bool stopping;       /* guarded by mu */
    bool joined;         /* prep_pool_stop has joined the workers (its caller's thread only) */
    int n_threads;       /* started workers */
    pthread_t *threads;
};

/* Worker loop: take one index at a time until stopping and the queue is empty. */
static void *worker(void *arg) {
    prep_pool *p = arg;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->head && !p->stopping) {
            p->idle++;
            pthread_cond_wait(&p->cv, &p->mu);
            p->idle--;
        }
        if (!p->head) break;
        group *g = p->head;
        int idx = g->next++;
        p->pending--;
        prep_task_fn fn = g->fn;
        void *a = g->arg;
        if (g->next == g->n_tasks) {
            p->head = g->link;
            if (!p->head) p->tail = NULL;
            free(g);
        }
        pthread_mutex_unlock(&p->mu);
        fn(a, idx);
        pthread_mutex_lock(&p->mu);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

vitd_status prep_pool_create(int n_threads, prep_pool **out, vitd_err *err) {
    *out = NULL;
    if (n_threads < 1 || n_threads > 1024)
        return vitd_fail(err, VITD_E_INVALID_ARG, "prep_threads %d is not in [1, 1024]", n_threads);
    prep_pool *p = xcalloc(1, sizeof *p);
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    p->threads = xcalloc((size_t)n_threads, sizeof *p->threads);
    for (int i = 0; i < n_threads; i++) {
        int rc = pthread_create(&p->threads[i], NULL, worker, p);
        if (rc != 0) {
            prep_pool_free(p);
            return vitd_fail(err, VITD_E_INTERNAL, "prep pool: cannot start thread %d of %d: %s", i, n_threads,
                             strerror(rc));
        }
        p->n_threads++;
    }
    *out = p;
    return VITD_OK;
}

bool prep_pool_submit(prep_pool *p, prep_task_fn fn, void *arg, int n_tasks) {
    if (n_tasks <= 0) return true;
    group *g = xmalloc(sizeof *g);
    *g = (group){.fn = fn, .arg = arg, .n_tasks = n_tasks, .next = 0, .link = NULL};
    pthread_mutex_lock(&p->mu);
    if (p->stopping) { /* a task still running at shutdown hands on more work: refused, the caller answers */
        pthread_mutex_unlock(&p->mu);
        free(g);
        return false;
    }
    if (p->tail) p->tail->link = g;
    else p->head = g;
    p->tail = g;
    p->pending += n_tasks;
    if (n_tasks == 1) pthread_cond_signal(&p->cv);
    else pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    return true;
}

int prep_pool_pending(prep_pool *p) {
    pthread_mutex_lock(&p->mu);
    int n = p->pending;
    pthread_mutex_unlock(&p->mu);
    return n;
}

/* ---- one task split over idle workers ---- */

typedef struct {
    prep_range_fn fn;
    void *arg;
    size_t n, grain, pieces;
    atomic_size_t next;        /* next piece to claim */
    atomic_size_t done;        /* pieces finished */
    atomic_int refs;           /* the caller and each helper task: the last frees */
    pthread_mutex_t mu;        /* with cv: the caller waits for done == pieces */
    pthread_cond_t cv;
} par_job;

/* Claims and runs pieces until none is left. */
static void par_pieces(par_job *j) {
    for (;;) {
        size_t k = atomic_fetch_add(&j->next, 1);
        if (k >= j->pieces) return;
        size_t b = k * j->grain, e = b + j->grain < j->n ? b + j->grain : j->n;
        j->fn(j->arg, b, e);
        if (atomic_fetch_add(&j->done, 1) + 1 == j->pieces) {
            pthread_mutex_lock(&j->mu);
            pthread_cond_signal(&j->cv);
            pthread_mutex_unlock(&j->mu);
        }
    }
}

static void par_drop(par_job *j) {
    if (atomic_fetch_sub(&j->refs, 1) != 1) return;
    pthread_cond_destroy(&j->cv);
    pthread_mutex_destroy(&j->mu);
    free(j);
}

static void par_task(void *arg, int i) {
    (void)i;
    par_job *j = arg;
    par_pieces(j); /* touches fn's arg only while pieces remain, i.e. while the caller waits */
    par_drop(j);
}

void prep_pool_parallel(prep_pool *p, size_t n, size_t grain, prep_range_fn fn, void *arg) {
    size_t pieces = grain ? (n + grain - 1) / grain : 1;
    int helpers = 0;
    if (p && pieces > 1) {
        pthread_mutex_lock(&p->mu);
        helpers = p->pending == 0 && !p->stopping ? p->idle : 0; /* only workers with nothing else to do */
        pthread_mutex_unlock(&p->mu);
        if ((size_t)helpers > pieces - 1) helpers = (int)(pieces - 1);
    }
    par_job *j = helpers > 0 ? malloc(sizeof *j) : NULL;
    if (!j) {
        fn(arg, 0, n);
        return;
    }
    j->fn = fn;
    j->arg = arg;
    j->n = n;
    j->grain = grain;
    j->pieces = pieces;
    atomic_init(&j->next, 0);
    atomic_init(&j->done, 0);
    atomic_init(&j->refs, 1 + helpers);
    pthread_mutex_init(&j->mu, NULL);
    pthread_cond_init(&j->cv, NULL);
    if (!prep_pool_submit(p, par_task, j, helpers)) atomic_fetch_sub(&j->refs, helpers); /* stopping: alone */
    par_pieces(j);
    pthread_mutex_lock(&j->mu);
    while (atomic_load(&j->done) < pieces) pthread_cond_wait(&j->cv, &j->mu);
    pthread_mutex_unlock(&j->mu);
    par_drop(j);
}

void prep_pool_stop(prep_pool *p) {
    if (!p || p->joined) return;
    pthread_mutex_lock(&p->mu);
    p->stopping = true;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < p->n_threads; i++) pthread_join(p->threads[i], NULL);
    p->joined = true;
    VITD_ASSERT(p->head == NULL); /* the workers ran the queue dry and every later submission was refused */
}

void prep_pool_free(prep_pool *p) {
    if (!p) return;
    prep_pool_stop(p);
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->mu);
    free(p->threads);
    free(p);
}

/* preprocess_parallel's runner over the pool. */
static void pool_run(void *ctx, size_t n, size_t grain, preprocess_range_fn fn, void *arg) {
    prep_pool_parallel(ctx, n, grain, fn, arg);
}

vitd_status prep_image(const uint8_t *data, size_t len, size_t max_pixels, const vitd_preproc_config *cfg,
                       const vitd_grid *grid, float *pixel_values, prep_ctx *ctx, vitd_err *err) {
    vitd_image img = {0};
    vitd_grid g;
    double t0 = vitd_now();
    vitd_status s = image_decode(data, len, max_pixels, &img, err);
    if (ctx) ctx->decode_s = vitd_now() - t0;
    if (s != VITD_OK) return s;
    s = preprocess_plan(img.height, img.width, cfg, &g, err);
    if (s != VITD_OK) goto fail;
    if (g.t != grid->t || g.h != grid->h || g.w != grid->w) {
        s = vitd_fail(err, VITD_E_BAD_IMAGE, "decoded %ux%u image does not match its header (grid %dx%d, planned "
                      "%dx%d)", img.width, img.height, g.h, g.w, grid->h, grid->w);
        goto fail;
    }
    preprocess_parallel par = {pool_run, ctx ? ctx->pool : NULL};
    s = preprocess_run_par(&img, cfg, grid, pixel_values, ctx && ctx->pool ? &par : NULL, err);
fail:
    image_release(&img);
    return s;
}
