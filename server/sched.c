/* sched.c — the bounded token queue and the batcher thread (see scheduler.h for the contract).
 *
 * One mutex guards the queue (a singly linked FIFO of jobs), its counters, the bookings and each job's count of
 * batches in flight. The batcher takes the lock to wait and to pack a batch, releases it around the encoder calls,
 * and takes it again to retire a batch. Packing is strictly in arrival order: images are taken from the head job
 * until the next image would break the token or image budget, so the only job that can be split across batches is
 * the last one of a batch, and it stays at the head of the queue. Each batch in flight (a `flight`) owns its
 * per-image pointer arrays, which point into the jobs' own buffers.
 *
 * A second thread, the watcher, keeps deadlines while the batcher is busy: a long batch (a large image on the CPU
 * backend takes seconds) would otherwise leave queued jobs past their deadline, or whose client went away, until
 * the batcher next packs. It fails the jobs that no batch has taken yet, at their deadline (and polls for
 * hang-ups every SCHED_WATCH_MS while any job waits); the batcher's own checks at packing stay.
 */
#include "scheduler.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "util.h"

#define SCHED_WATCH_MS 200 /* the watcher's longest sleep while jobs wait: the lateness of a 504 or a hang-up */

/* One image of a batch. */
typedef struct {
    sched_job *job;
    int image;            /* index in job */
    size_t n_patches;
} slot;

/* A batch packed and (with submit/wait) in flight. Arrays sized batch_max_images. */
typedef struct {
    int n;                      /* images */
    slot *slots;
    sched_job **jobs;           /* distinct jobs, in order */
    int n_jobs;
    vitd_grid *grids;
    const float **pix;
    float **emb, **ds;
    unsigned char *bf16;        /* per image: its job takes bfloat16 outputs */
    vitd_batch b;
    size_t patches;
    double t_start;
} flight;

struct sched {
    sched_config cfg;
    pthread_mutex_t mu;
    pthread_cond_t cv;          /* signalled on submit, unreserve and stop */
    pthread_cond_t watch_cv;    /* the watcher's: broadcast on submit and stop */
    pthread_t thread, watcher;
    bool thread_started, watcher_started;
    /* guarded by mu */
    bool stopping, cancel;
    sched_job *head, *tail;
    int q_jobs;                 /* jobs in the queue */
    int q_images;               /* images not yet taken into a batch */
    size_t q_patches;           /* their patches */
    size_t booked;              /* patches booked by sched_reserve and not yet returned */
    /* batcher thread only */
    int pipeline;               /* most batches in flight (1 with a synchronous encoder) */
    flight fl[SCHED_MAX_PIPELINE];
    int fl_head, n_flight;      /* oldest batch in flight; how many */
    bool idle_more;             /* cfg.idle may have work (guarded by mu) */
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

/* Marks a job unlinked from the queue (caller holds mu) and subtracts its untaken images from the counters. */
static void left_queue(sched *s, sched_job *j) {
    j->next = NULL;
    j->in_queue = false;
    s->q_jobs--;
    for (int i = j->next_image; i < j->n_images; i++) {
        s->q_images--;
        s->q_patches -= grid_patches(&j->grids[i]);
    }
}

/* Unlinks the head job (caller holds mu). */
static sched_job *pop_head(sched *s) {
    sched_job *j = s->head;
    s->head = j->next;
    if (!s->head) s->tail = NULL;
    left_queue(s, j);
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
            left_queue(s, j);
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

/* Why job j, waiting at time now, must leave the queue unencoded: past its deadline, or its client went away
 * (VITD_OK: neither). */
static vitd_status job_expired(sched_job *j, double now, vitd_err *err) {
    if (j->deadline > 0 && now > j->deadline)
        return vitd_fail(err, VITD_E_TIMEOUT, "request timed out (request_timeout_ms) after %.0f ms in the queue",
                         (now - j->t_submitted) * 1e3);
    if (j->gone && j->gone(j)) return vitd_fail(err, VITD_E_CANCELLED, "the client went away");
    return VITD_OK;
}

/* Packs the next batch from the head of the queue into f (caller holds mu). Jobs found gone, past their deadline
 * or cancelled are unlinked; one that no batch in flight holds is unbooked and appended to drop[] (at most
 * max_drop per call: the caller completes them and calls again), one that a batch in flight still holds keeps the
 * failure and settles when that batch retires. Returns the number of images placed in f, 0 if none. */
static int pack(sched *s, flight *f, dropped *drop, int *n_drop, int max_drop) {
    const sched_config *c = &s->cfg;
    int n = 0;
    size_t patches = 0;
    double now = vitd_now();
    *n_drop = 0;
    while (s->head && n < c->batch_max_images) {
        sched_job *j = s->head;
        vitd_status why = VITD_OK;
        vitd_err err = {0};
        if (s->cancel) why = vitd_fail(&err, VITD_E_CANCELLED, "the server is shutting down");
        else why = job_expired(j, now, &err);
        if (why != VITD_OK) {
            if (j->in_batches > 0) {
                pop_head(s);
                if (j->fail == VITD_OK) {
                    j->fail = why;
                    j->fail_err = err;
                }
                continue;
            }
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
            f->slots[n] = (slot){.job = j, .image = j->next_image, .n_patches = p};
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
    f->n = n;
    f->n_jobs = 0;
    f->patches = patches;
    for (int i = 0; i < n; i++) {
        sched_job *j = f->slots[i].job;
        if (f->n_jobs == 0 || f->jobs[f->n_jobs - 1] != j) {
            f->jobs[f->n_jobs++] = j;
            j->in_batches++;
        }
    }
    return n;
}

/* Fills f's batch in the per-image form: each image's pixels and outputs are its job's own buffers. */
static void flight_batch(sched *s, flight *f) {
    bool want_ds = false;
    for (int i = 0; i < f->n; i++) {
        slot *sl = &f->slots[i];
        f->grids[i] = sl->job->grids[sl->image];
        f->pix[i] = sl->job->pixel_values[sl->image];
        f->emb[i] = sl->job->embeddings[sl->image];
        f->ds[i] = sl->job->deepstack && s->cfg.n_deepstack > 0 ? sl->job->deepstack[sl->image] : NULL;
        f->bf16[i] = sl->job->out_bf16;
        want_ds |= f->ds[i] != NULL;
    }
    f->b = (vitd_batch){.n_images = f->n, .grids = f->grids, .image_pixels = f->pix, .image_embeddings = f->emb,
                        .image_deepstack = want_ds ? f->ds : NULL, .image_bf16 = f->bf16};
}

/* Retires a finished batch (status st, err on failure): counts it, and completes every job of it that no queue
 * and no other batch in flight holds any more. Called without mu. */
static void retire(sched *s, flight *f, vitd_status st, const vitd_err *err) {
    const sched_config *c = &s->cfg;
    double encode_s = vitd_now() - f->t_start;
    if (c->on_batch) c->on_batch(c->batch_user, f->n, f->patches, encode_s, st);
    int n_done = 0;
    pthread_mutex_lock(&s->mu);
    for (int k = 0; k < f->n_jobs; k++) {
        sched_job *j = f->jobs[k];
        if (j->t_first_batch == 0) j->t_first_batch = f->t_start;
        j->encode_s += encode_s;
        j->n_batches++;
        j->in_batches--;
        if (st != VITD_OK) {
            if (j->in_queue) unlink_job(s, j);
            if (j->fail == VITD_OK) {
                j->fail = st;
                j->fail_err = *err;
            }
        }
        if (!j->in_queue && j->in_batches == 0) {
            s->booked -= j->n_patches;
            f->jobs[n_done++] = j;
        }
    }
    pthread_mutex_unlock(&s->mu);
    for (int k = 0; k < n_done; k++) {
        sched_job *j = f->jobs[k];
        if (j->fail == VITD_OK) {
            j->done(j, VITD_OK, NULL);
        } else {
            vitd_err jerr = j->fail_err;
            j->done(j, j->fail, &jerr);
        }
    }
    f->n = 0;
}

/* Starts the packed batch f: submitted (in flight afterwards), or run at once with a synchronous encoder or when
 * the submit fails (retired here). */
static void start_batch(sched *s, flight *f) {
    const sched_config *c = &s->cfg;
    vitd_err err = {0};
    vitd_status st;
    flight_batch(s, f);
    f->t_start = vitd_now();
    if (c->submit) {
        st = c->submit(c->encode_user, &f->b, &err);
        if (st == VITD_OK) {
            s->n_flight++;
            return;
        }
    } else {
        st = c->encode(c->encode_user, &f->b, &err);
    }
    retire(s, f, st, &err);
}

/* Waits for the oldest batch in flight and retires it. */
static void finish_oldest(sched *s) {
    flight *f = &s->fl[s->fl_head];
    vitd_err err = {0};
    vitd_status st = s->cfg.wait(s->cfg.encode_user, &err);
    s->fl_head = (s->fl_head + 1) % s->pipeline;
    s->n_flight--;
    retire(s, f, st, &err);
}

/* Patches booked (sched_reserve) and not yet queued nor in a batch in flight: images being preprocessed. Called
 * with mu held. */
static size_t on_the_way(const sched *s) {
    size_t inflight = 0;
    for (int k = 0; k < s->n_flight; k++) inflight += s->fl[(s->fl_head + k) % s->pipeline].patches;
    size_t known = s->q_patches + inflight;
    return s->booked > known ? s->booked - known : 0;
}

/* The batcher: wait for work, honour the delay, pack, start; with batches in flight, pack the next one while the
 * GPU runs, and finish the oldest when the pipeline is full or nothing else can be packed now; until stopped,
 * empty and idle. */
static void *sched_thread(void *arg) {
    sched *s = arg;
    const sched_config *c = &s->cfg;
    enum { MAX_DROP = 16 };
    dropped drop[MAX_DROP];
    pthread_mutex_lock(&s->mu);
    for (;;) {
        if (s->n_flight == 0) {
            const double quiet_since = vitd_now();
            while (!s->head && !s->stopping) {
                if (c->idle && s->idle_more) {
                    /* deferred work in bounded pieces, once the batcher has been idle for idle_quiet_ms, looking
                     * at the queue between pieces */
                    double left = quiet_since + c->idle_quiet_ms * 1e-3 - vitd_now();
                    if (left > 0) {
                        struct timespec ts = abs_after(left);
                        pthread_cond_timedwait(&s->cv, &s->mu, &ts);
                        continue;
                    }
                    pthread_mutex_unlock(&s->mu);
                    int more = c->idle(c->encode_user);
                    pthread_mutex_lock(&s->mu);
                    s->idle_more = more > 0;
                    continue;
                }
                pthread_cond_wait(&s->cv, &s->mu);
            }
            if (!s->head) break; /* stopping and nothing left */
        }
        /* batch_delay_ms counts from the arrival of the oldest waiting job: work that queued while the previous
         * batch ran does not wait again; and the batcher waits only while booked work is still being preprocessed
         * (it will join soon): with nothing on its way, a lone request starts at once */
        if (s->head && s->n_flight < s->pipeline) {
            double until = s->head->t_submitted + c->batch_delay_ms * 1e-3;
            while (s->head && !s->stopping && s->q_patches < c->batch_max_tokens &&
                   s->q_images < c->batch_max_images && on_the_way(s) > 0) {
                double left = until - vitd_now();
                if (left <= 0) break;
                struct timespec ts = abs_after(left);
                pthread_cond_timedwait(&s->cv, &s->mu, &ts);
            }
        }
        int n_drop = 0, n = 0;
        flight *f = &s->fl[(s->fl_head + s->n_flight) % s->pipeline];
        if (s->head && s->n_flight < s->pipeline) n = pack(s, f, drop, &n_drop, MAX_DROP);
        pthread_mutex_unlock(&s->mu);

        for (int i = 0; i < n_drop; i++) drop[i].job->done(drop[i].job, drop[i].status, &drop[i].err);
        if (n > 0) {
            start_batch(s, f);
            s->idle_more = true; /* the batch may have left work for cfg.idle */
        }
        if (s->n_flight > 0 && (s->n_flight == s->pipeline || (n == 0 && n_drop == 0))) finish_oldest(s);
        pthread_mutex_lock(&s->mu);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* The watcher (see the header): fails queued jobs that no batch has taken once their deadline passes or their
 * client goes away, at most MAX_DROP per round, completing them without mu; sleeps until the earliest deadline of
 * the jobs it saw, at most SCHED_WATCH_MS while any waits, and until a submit when none does. Ends at stop. */
static void *watch_thread(void *arg) {
    sched *s = arg;
    enum { MAX_DROP = 16 };
    dropped drop[MAX_DROP];
    pthread_mutex_lock(&s->mu);
    while (!s->stopping) {
        const double now = vitd_now();
        double next = now + SCHED_WATCH_MS * 1e-3;
        int n_drop = 0;
        for (sched_job *j = s->head, *nx; j; j = nx) {
            nx = j->next;
            if (j->next_image > 0 || j->in_batches > 0) continue; /* partly taken: the batcher settles it */
            vitd_err err = {0};
            vitd_status why = job_expired(j, now, &err);
            if (why == VITD_OK) {
                if (j->deadline > 0 && j->deadline < next) next = j->deadline;
                continue;
            }
            if (n_drop == MAX_DROP) {
                next = now; /* more to drop: another round at once */
                break;
            }
            unlink_job(s, j);
            s->booked -= j->n_patches;
            drop[n_drop++] = (dropped){.job = j, .status = why, .err = err};
        }
        if (n_drop > 0) {
            pthread_cond_broadcast(&s->cv); /* the queue changed under a waiting batcher (batch_delay_ms) */
            pthread_mutex_unlock(&s->mu);
            for (int i = 0; i < n_drop; i++) drop[i].job->done(drop[i].job, drop[i].status, &drop[i].err);
            pthread_mutex_lock(&s->mu);
            continue;
        }
        if (!s->head) {
            pthread_cond_wait(&s->watch_cv, &s->mu);
        } else {
            struct timespec ts = abs_after(next - vitd_now() + 1e-3);
            pthread_cond_timedwait(&s->watch_cv, &s->mu, &ts);
        }
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* ---- public API ---- */

vitd_status sched_create(const sched_config *cfg, sched **out, vitd_err *err) {
    *out = NULL;
    if (!cfg->encode && !(cfg->submit && cfg->wait))
        return vitd_fail(err, VITD_E_INVALID_ARG, "sched: no encoder callback (encode, or submit and wait)");
    if (!cfg->submit != !cfg->wait)
        return vitd_fail(err, VITD_E_INVALID_ARG, "sched: submit and wait come together");
    if (cfg->pipeline < 0 || cfg->pipeline > SCHED_MAX_PIPELINE)
        return vitd_fail(err, VITD_E_INVALID_ARG, "sched: pipeline %d outside 0..%d", cfg->pipeline,
                         SCHED_MAX_PIPELINE);
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
    pthread_cond_init(&s->watch_cv, &ca);
    pthread_condattr_destroy(&ca);
    s->pipeline = !cfg->submit ? 1 : cfg->pipeline ? cfg->pipeline : 2;
    s->idle_more = true;
    const size_t mi = (size_t)cfg->batch_max_images;
    for (int k = 0; k < s->pipeline; k++) {
        flight *f = &s->fl[k];
        f->slots = xcalloc(mi, sizeof *f->slots);
        f->jobs = xcalloc(mi, sizeof *f->jobs);
        f->grids = xcalloc(mi, sizeof *f->grids);
        f->pix = xcalloc(mi, sizeof *f->pix);
        f->emb = xcalloc(mi, sizeof *f->emb);
        f->ds = xcalloc(mi, sizeof *f->ds);
        f->bf16 = xcalloc(mi, sizeof *f->bf16);
    }
    int rc = pthread_create(&s->thread, NULL, sched_thread, s);
    if (rc != 0) {
        sched_free(s);
        return vitd_fail(err, VITD_E_INTERNAL, "sched: cannot start the batcher thread: %s", strerror(rc));
    }
    s->thread_started = true;
    rc = pthread_create(&s->watcher, NULL, watch_thread, s);
    if (rc != 0) {
        sched_free(s);
        return vitd_fail(err, VITD_E_INTERNAL, "sched: cannot start the deadline watcher: %s", strerror(rc));
    }
    s->watcher_started = true;
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
    pthread_cond_broadcast(&s->cv); /* a batch waiting for this booked work need not wait any longer */
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
    job->in_batches = 0;
    job->fail = VITD_OK;
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
    if (s->q_jobs == 1) pthread_cond_signal(&s->watch_cv); /* it sleeps until a job waits */
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
    pthread_cond_broadcast(&s->watch_cv);
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
    if (s->watcher_started) pthread_join(s->watcher, NULL); /* stopped by sched_stop, above or earlier */
    pthread_cond_destroy(&s->watch_cv);
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->mu);
    for (int k = 0; k < SCHED_MAX_PIPELINE; k++) {
        flight *f = &s->fl[k];
        free(f->slots);
        free(f->jobs);
        free(f->grids);
        free(f->pix);
        free(f->emb);
        free(f->ds);
        free(f->bf16);
    }
    free(s);
}

void sched_depth(sched *s, int *jobs, size_t *queued_patches, size_t *booked_patches) {
    pthread_mutex_lock(&s->mu);
    if (jobs) *jobs = s->q_jobs;
    if (queued_patches) *queued_patches = s->q_patches;
    if (booked_patches) *booked_patches = s->booked;
    pthread_mutex_unlock(&s->mu);
}
