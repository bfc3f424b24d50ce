/* sched.c — the bounded token queue and the batcher thread (see scheduler.h for the contract).
 *
 * One mutex guards the queue (a singly linked FIFO of jobs), its counters and the bookings. The batcher takes the
 * lock to wait and to pack a batch, releases it around the encoder run and the copies, and takes it again to
 * retire the batch. Packing is strictly in arrival order: images are taken from the head job until the next image
 * would break the token or image budget, so the only job that can be split across batches is the last one of a
 * batch, and it stays at the head of the queue. The staging buffers (contiguous pixel_values, outputs) belong to
 * the batcher, grow to the largest batch seen and live until sched_free().
 */
#include "scheduler.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "util.h"

/* One image of the running batch. */
typedef struct {
    sched_job *job;
    int image;            /* index in job */
    size_t patch_off;     /* first row in the batch's pixel_values */
    size_t n_patches;
} slot;

struct sched {
    sched_config cfg;
    pthread_mutex_t mu;
    pthread_cond_t cv;          /* signalled on submit and stop */
    pthread_t thread;
    bool thread_started;
    /* guarded by mu */
    bool stopping, cancel;
    sched_job *head, *tail;
    int q_jobs;                 /* jobs in the queue */
    int q_images;               /* images not yet taken into a batch */
    size_t q_patches;           /* their patches */
    size_t booked;              /* patches booked by sched_reserve and not yet returned */
    /* batcher thread only */
    slot *slots;                /* [batch_max_images] */
    sched_job **batch_jobs;     /* [batch_max_images] distinct jobs of the running batch, in order */
    vitd_grid *grids;           /* [batch_max_images] */
    float *pv;                  /* [pv_rows, row_width] */
    size_t pv_rows;
    float *emb;                 /* [emb_tokens, out_hidden] */
    size_t emb_tokens;
    float *ds;                  /* [n_deepstack][ds_tokens][out_hidden] */
    size_t ds_tokens;
};

static size_t grid_patches(const vitd_grid *g) { return (size_t)g->t * (size_t)g->h * (size_t)g->w; }

/* Absolute CLOCK_MONOTONIC time seconds from now, for pthread_cond_timedwait on a monotonic condvar. */
static struct timespec abs_after(double seconds) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    if (seconds < 0) seconds = 0;
    long long ns = (long long)ts.tv_nsec + (long long)(seconds * 1e9);
    ts.tv_sec += (time_t)(ns / 1000000000LL);
    ts.tv_nsec = (long)(ns % 1000000000LL);
    return ts;
}

/* Unlinks the head job (caller holds mu) and subtracts its untaken images from the queue counters. */
static sched_job *pop_head(sched *s) {
    sched_job *j = s->head;
    s->head = j->next;
    if (!s->head) s->tail = NULL;
    j->next = NULL;
    j->in_queue = false;
    s->q_jobs--;
    for (int i = j->next_image; i < j->n_images; i++) {
        s->q_images--;
        s->q_patches -= grid_patches(&j->grids[i]);
    }
    return j;
}

/* Unlinks any job from the queue (caller holds mu); used for the partial head job and on cancel. */
static void unlink_job(sched *s, sched_job *j) {
    if (s->head == j) {
        pop_head(s);
        return;
    }
    for (sched_job *p = s->head; p; p = p->next) {
        if (p->next == j) {
            if (s->tail == j) s->tail = p;
            p->next = j->next;
            j->next = NULL;
            j->in_queue = false;
            s->q_jobs--;
            for (int i = j->next_image; i < j->n_images; i++) {
                s->q_images--;
                s->q_patches -= grid_patches(&j->grids[i]);
            }
            return;
        }
    }
    VITD_ASSERT(!"job not in queue");
}

/* A job taken off the queue without being encoded, with why; completed after mu is released. */
typedef struct dropped {
    sched_job *job;
    vitd_status status;
    vitd_err err;
} dropped;

/* Packs the next batch from the head of the queue (caller holds mu). Jobs found gone, past their deadline or
 * cancelled are unlinked, unbooked and appended to drop[] (at most one per call frame: the caller completes them
 * and calls again). Returns the number of images placed in s->slots, 0 if none. */
static int pack(sched *s, dropped *drop, int *n_drop, int max_drop) {
    const sched_config *c = &s->cfg;
    int n = 0;
    size_t patches = 0;
    double now = vitd_now();
    *n_drop = 0;
    while (s->head && n < c->batch_max_images) {
        sched_job *j = s->head;
        vitd_status why = VITD_OK;
        vitd_err err = {0};
        if (s->cancel) {
            why = vitd_fail(&err, VITD_E_CANCELLED, "the server is shutting down");
        } else if (j->deadline > 0 && now > j->deadline) {
            why = vitd_fail(&err, VITD_E_TIMEOUT, "request timed out (request_timeout_ms) after %.0f ms in the queue",
                            (now - j->t_submitted) * 1e3);
        } else if (j->gone && j->gone(j)) {
            why = vitd_fail(&err, VITD_E_CANCELLED, "the client went away");
        }
        if (why != VITD_OK) {
            if (*n_drop == max_drop) break;
            pop_head(s);
            s->booked -= j->n_patches;
            drop[*n_drop].job = j;
            drop[*n_drop].status = why;
            drop[*n_drop].err = err;
            (*n_drop)++;
            continue;
        }
        while (j->next_image < j->n_images && n < c->batch_max_images) {
            size_t p = grid_patches(&j->grids[j->next_image]);
            /* the first image always goes in, even above the budget: it then runs alone */
            if (n > 0 && patches + p > c->batch_max_tokens) goto full;
            s->slots[n] = (slot){.job = j, .image = j->next_image, .patch_off = patches, .n_patches = p};
            n++;
            patches += p;
            j->next_image++;
            s->q_images--;
            s->q_patches -= p;
            if (patches >= c->batch_max_tokens) break;
        }
        if (j->next_image == j->n_images) {
            pop_head(s);
        } else {
            break; /* budget reached inside this job: its rest waits at the head */
        }
        if (patches >= c->batch_max_tokens) break;
    }
full:
    return n;
}

/* Grows a float buffer to hold at least n floats; returns false on allocation failure (buffer unchanged). */
static bool grow(float **buf, size_t *cap_rows, size_t rows, size_t row_floats) {
    if (rows <= *cap_rows) return true;
    float *p = malloc(rows * row_floats * sizeof(float));
    if (!p) return false;
    free(*buf);
    *buf = p;
    *cap_rows = rows;
    return true;
}

/* Encodes the n images in s->slots and copies each image's outputs into its job. Returns the encoder's status
 * (err filled on failure). *encode_s gets the encoder's seconds. */
static vitd_status run_batch(sched *s, int n, double *encode_s, vitd_err *err) {
    const sched_config *c = &s->cfg;
    size_t D = (size_t)c->out_hidden, merge = (size_t)c->merge_patches;
    vitd_batch b = {.n_images = n, .grids = s->grids};
    bool want_ds = false;
    size_t total_patches = 0;
    for (int i = 0; i < n; i++) {
        slot *sl = &s->slots[i];
        s->grids[i] = sl->job->grids[sl->image];
        total_patches += sl->n_patches;
        if (sl->job->deepstack && c->n_deepstack > 0) want_ds = true;
    }
    size_t total_tokens = total_patches / merge;
    vitd_status st;
    double t0;
    if (n == 1) {
        /* one image: encode straight from and into the job's buffers */
        sched_job *j = s->slots[0].job;
        int i = s->slots[0].image;
        b.pixel_values = j->pixel_values[i];
        b.embeddings = j->embeddings[i];
        b.deepstack = want_ds ? j->deepstack[i] : NULL;
        t0 = vitd_now();
        st = c->encode(c->encode_user, &b, err);
        *encode_s = vitd_now() - t0;
        return st;
    }
    if (!grow(&s->pv, &s->pv_rows, total_patches, c->row_width) ||
        !grow(&s->emb, &s->emb_tokens, total_tokens, D) ||
        (want_ds && !grow(&s->ds, &s->ds_tokens, total_tokens, D * (size_t)c->n_deepstack))) {
        *encode_s = 0;
        return vitd_fail(err, VITD_E_NOMEM, "batch of %d images, %zu patches: staging allocation failed", n,
                         total_patches);
    }
    for (int i = 0; i < n; i++) {
        slot *sl = &s->slots[i];
        memcpy(s->pv + sl->patch_off * c->row_width, sl->job->pixel_values[sl->image],
               sl->n_patches * c->row_width * sizeof(float));
    }
    b.pixel_values = s->pv;
    b.embeddings = s->emb;
    b.deepstack = want_ds ? s->ds : NULL;
    t0 = vitd_now();
    st = c->encode(c->encode_user, &b, err);
    *encode_s = vitd_now() - t0;
    if (st != VITD_OK) return st;
    for (int i = 0; i < n; i++) {
        slot *sl = &s->slots[i];
        size_t tok_off = sl->patch_off / merge, tokens = sl->n_patches / merge;
        memcpy(sl->job->embeddings[sl->image], s->emb + tok_off * D, tokens * D * sizeof(float));
        if (!sl->job->deepstack) continue;
        /* batch layout [layer][all tokens][D] -> image layout [layer][its tokens][D] */
        for (int k = 0; k < c->n_deepstack; k++)
            memcpy(sl->job->deepstack[sl->image] + (size_t)k * tokens * D,
                   s->ds + ((size_t)k * total_tokens + tok_off) * D, tokens * D * sizeof(float));
    }
    return VITD_OK;
}

/* The batcher: wait for work, honour the delay, pack, encode, retire; until stopped and empty. */
static void *sched_thread(void *arg) {
    sched *s = arg;
    const sched_config *c = &s->cfg;
    enum { MAX_DROP = 16 };
    dropped drop[MAX_DROP];
    pthread_mutex_lock(&s->mu);
    for (;;) {
        while (!s->head && !s->stopping) pthread_cond_wait(&s->cv, &s->mu);
        if (!s->head) break; /* stopping and nothing left */
        /* batch_delay_ms counts from the arrival of the oldest waiting job: work that queued while the previous
         * batch ran does not wait again */
        double until = s->head->t_submitted + c->batch_delay_ms * 1e-3;
        while (s->head && !s->stopping && s->q_patches < c->batch_max_tokens &&
               s->q_images < c->batch_max_images) {
            double left = until - vitd_now();
            if (left <= 0) break;
            struct timespec ts = abs_after(left);
            pthread_cond_timedwait(&s->cv, &s->mu, &ts);
        }
        if (!s->head) continue;
        int n_drop = 0;
        int n = pack(s, drop, &n_drop, MAX_DROP);
        int n_jobs = 0;
        for (int i = 0; i < n; i++) {
            sched_job *j = s->slots[i].job;
            if (n_jobs == 0 || s->batch_jobs[n_jobs - 1] != j) s->batch_jobs[n_jobs++] = j;
        }
        pthread_mutex_unlock(&s->mu);

        for (int i = 0; i < n_drop; i++) drop[i].job->done(drop[i].job, drop[i].status, &drop[i].err);
        if (n > 0) {
            vitd_err err = {0};
            double t_start = vitd_now(), encode_s = 0;
            vitd_status st = run_batch(s, n, &encode_s, &err);
            size_t patches = 0;
            for (int i = 0; i < n; i++) patches += s->slots[i].n_patches;
            if (c->on_batch) c->on_batch(c->batch_user, n, patches, encode_s, st);
            /* retire: a job completes when its last image was in this batch, or at once on failure */
            pthread_mutex_lock(&s->mu);
            int n_done = 0;
            for (int k = 0; k < n_jobs; k++) {
                sched_job *j = s->batch_jobs[k];
                if (j->t_first_batch == 0) j->t_first_batch = t_start;
                j->encode_s += encode_s;
                j->n_batches++;
                if (st != VITD_OK && j->in_queue) unlink_job(s, j);
                if (!j->in_queue) {
                    s->booked -= j->n_patches;
                    s->batch_jobs[n_done++] = j;
                }
            }
            pthread_mutex_unlock(&s->mu);
            for (int k = 0; k < n_done; k++) {
                sched_job *j = s->batch_jobs[k];
                if (st == VITD_OK) {
                    j->done(j, VITD_OK, NULL);
                } else {
                    vitd_err jerr = err;
                    j->done(j, st, &jerr);
                }
            }
        }
        pthread_mutex_lock(&s->mu);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* ---- public API ---- */

vitd_status sched_create(const sched_config *cfg, sched **out, vitd_err *err) {
    *out = NULL;
    if (!cfg->encode)
        return vitd_fail(err, VITD_E_INVALID_ARG, "sched: no encoder callback");
    if (cfg->batch_max_tokens == 0 || cfg->batch_max_images <= 0 || cfg->batch_delay_ms < 0 ||
        cfg->queue_max_tokens == 0 || cfg->row_width == 0 || cfg->out_hidden <= 0 || cfg->n_deepstack < 0 ||
        cfg->merge_patches <= 0)
        return vitd_fail(
            err, VITD_E_INVALID_ARG,
            "sched: batch_max_tokens %zu, batch_max_images %d, batch_delay_ms %d, queue_max_tokens %zu "
            "must be positive",
            cfg->batch_max_tokens, cfg->batch_max_images, cfg->batch_delay_ms, cfg->queue_max_tokens);
    sched *s = xcalloc(1, sizeof *s);
    s->cfg = *cfg;
    pthread_mutex_init(&s->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&s->cv, &ca);
    pthread_condattr_destroy(&ca);
    s->slots = xcalloc((size_t)cfg->batch_max_images, sizeof *s->slots);
    s->batch_jobs = xcalloc((size_t)cfg->batch_max_images, sizeof *s->batch_jobs);
    s->grids = xcalloc((size_t)cfg->batch_max_images, sizeof *s->grids);
    int rc = pthread_create(&s->thread, NULL, sched_thread, s);
    if (rc != 0) {
        sched_free(s);
        return vitd_fail(err, VITD_E_INTERNAL, "sched: cannot start the batcher thread: %s", strerror(rc));
    }
    s->thread_started = true;
    *out = s;
    return VITD_OK;
}

vitd_status sched_reserve(sched *s, size_t n_patches, vitd_err *err) {
    vitd_status st = VITD_OK;
    pthread_mutex_lock(&s->mu);
    if (s->stopping) {
        st = vitd_fail(err, VITD_E_CANCELLED, "the server is shutting down");
    } else if (n_patches > s->cfg.queue_max_tokens) {
        st = vitd_fail(err, VITD_E_TOO_LARGE, "request needs %zu patches, more than queue_max_tokens %zu",
                       n_patches, s->cfg.queue_max_tokens);
    } else if (s->booked + n_patches > s->cfg.queue_max_tokens) {
        st = vitd_fail(err, VITD_E_BUSY, "queue full: %zu of %zu patches booked, request needs %zu", s->booked,
                       s->cfg.queue_max_tokens, n_patches);
    } else {
        s->booked += n_patches;
    }
    pthread_mutex_unlock(&s->mu);
    return st;
}

void sched_unreserve(sched *s, size_t n_patches) {
    pthread_mutex_lock(&s->mu);
    VITD_ASSERT(s->booked >= n_patches);
    s->booked -= n_patches;
    pthread_mutex_unlock(&s->mu);
}

vitd_status sched_submit(sched *s, sched_job *job, vitd_err *err) {
    if (job->n_images <= 0 || !job->grids || !job->pixel_values || !job->embeddings || !job->done)
        return vitd_fail(err, VITD_E_INVALID_ARG, "sched: empty or incomplete job");
    size_t total = 0;
    for (int i = 0; i < job->n_images; i++) {
        size_t p = grid_patches(&job->grids[i]);
        if (p == 0 || p % (size_t)s->cfg.merge_patches != 0)
            return vitd_fail(err, VITD_E_INVALID_ARG, "image %d: %zu patches is not a positive multiple of %d", i,
                             p, s->cfg.merge_patches);
        total += p;
    }
    if (total != job->n_patches)
        return vitd_fail(err, VITD_E_INVALID_ARG, "sched: job books %zu patches but its grids hold %zu",
                         job->n_patches, total);
    job->next_image = 0;
    job->next = NULL;
    job->t_first_batch = 0;
    job->encode_s = 0;
    job->n_batches = 0;
    pthread_mutex_lock(&s->mu);
    if (s->stopping) {
        VITD_ASSERT(s->booked >= job->n_patches);
        s->booked -= job->n_patches;
        pthread_mutex_unlock(&s->mu);
        return vitd_fail(err, VITD_E_CANCELLED, "the server is shutting down");
    }
    job->t_submitted = vitd_now();
    job->in_queue = true;
    if (s->tail) s->tail->next = job;
    else s->head = job;
    s->tail = job;
    s->q_jobs++;
    s->q_images += job->n_images;
    s->q_patches += total;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
    return VITD_OK;
}

void sched_stop(sched *s, bool cancel) {
    sched_job *victims = NULL, **vt = &victims;
    pthread_mutex_lock(&s->mu);
    s->stopping = true;
    if (cancel) {
        s->cancel = true;
        /* every queued job except one whose first images are in the running batch (the batcher fails that one
         * when it retires the batch or packs again) */
        sched_job *j = s->head;
        while (j) {
            sched_job *nx = j->next;
            if (j->next_image == 0) {
                unlink_job(s, j);
                s->booked -= j->n_patches;
                *vt = j;
                vt = &j->next;
            }
            j = nx;
        }
    }
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    vitd_err err;
    while (victims) {
        sched_job *j = victims;
        victims = j->next;
        j->next = NULL;
        vitd_fail(&err, VITD_E_CANCELLED, "the server is shutting down");
        j->done(j, VITD_E_CANCELLED, &err);
    }
}

void sched_free(sched *s) {
    if (!s) return;
    if (s->thread_started) {
        pthread_mutex_lock(&s->mu);
        bool stopped = s->stopping;
        pthread_mutex_unlock(&s->mu);
        if (!stopped) sched_stop(s, true);
        pthread_join(s->thread, NULL);
    }
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->mu);
    free(s->slots);
    free(s->batch_jobs);
    free(s->grids);
    free(s->pv);
    free(s->emb);
    free(s->ds);
    free(s);
}

void sched_depth(sched *s, int *jobs, size_t *queued_patches, size_t *booked_patches) {
    pthread_mutex_lock(&s->mu);
    if (jobs) *jobs = s->q_jobs;
    if (queued_patches) *queued_patches = s->q_patches;
    if (booked_patches) *booked_patches = s->booked;
    pthread_mutex_unlock(&s->mu);
}
