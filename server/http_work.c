/* http_work.c — the work behind an image request once its images are planned (http_req.h): the output cache,
 * decoding and encoding, the cache files, and the request's completion.
 *
 * Each image of a request is one of:
 *   HIT    its outputs are in the output cache: read from the entry, nothing to decode or encode;
 *   LEAD   not in the cache: decoded and encoded into a new cache entry's buffers, which it then settles;
 *   WAIT   being encoded for another request right now: it waits for that entry to settle (single flight);
 *   SOLO   no cache (off, or outputs larger than the cache): decoded and encoded into the request's arena;
 * A WAIT whose leader failed (its client left, its deadline passed) is looked up again in a retry round, where it
 * may lead, wait for another leader or hit; in a third round it is encoded as SOLO, so every request ends.
 * The work images of a round (LEAD and SOLO) go to the prep pool and then, as one job, to the batcher.
 * The request completes when its parts are done: the setup (held while this file hands things out, so nothing
 * completes underneath it), the job of the round, and each waiting image. Then it fails with the first failure
 * recorded, starts the retry round, writes vLLM cache files (io pool), or finishes. Whoever completes the last part
 * owns the request until it hands it on, so the arena is touched by one thread at a time.
 * A request whose images are all hits and that writes no cache file is answered at once, without suspending. */
#include "http_req.h"

#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "content_id.h"
#include "handover.h"
#include "log.h"
#include "preprocess.h"
#include "util.h"

enum { IMG_SOLO, IMG_HIT, IMG_LEAD, IMG_WAIT };

#define LAST_ROUND 2 /* round 0, one retry round that looks the cache up again, then SOLO */

static void part_done(struct req *r);

/* ---- completion ---- */

/* Records the outcome and hands the connection back to MHD; drops the work reference. */
static void req_finish(struct req *r, vitd_status s, const vitd_err *err) {
    r->outcome = s;
    if (s != VITD_OK && err) r->outcome_err = *err;
    else if (s != VITD_OK) vitd_fail(&r->outcome_err, s, "%s", vitd_status_name(s));
    r->t_done = vitd_now();
    r->phase = PH_DONE;
    MHD_resume_connection(r->conn);
    http_req_unref(r);
}

static struct req *req_of_job(sched_job *j) { return (struct req *)((char *)j - offsetof(struct req, job)); }

/* Keeps the failure of the lowest image index among a request's tasks (prep or io): *index and *slot are the
 * request's record of it, guarded by prep_mu. */
static void note_failure(struct req *r, int *index, vitd_err *slot, int i, vitd_status s, const vitd_err *err) {
    pthread_mutex_lock(&r->prep_mu);
    if (*index < 0 || i < *index) {
        *index = i;
        if (!strncmp(err->msg, "image ", 6)) vitd_fail(slot, s, "%s", err->msg); /* it names the image already */
        else vitd_fail(slot, s, "image %d: %s", i, err->msg);
    }
    pthread_mutex_unlock(&r->prep_mu);
}

/* Records a failure of the whole round (booking, the job), the first one kept. */
static void note_job_failure(struct req *r, vitd_status s, const vitd_err *err) {
    pthread_mutex_lock(&r->prep_mu);
    if (!r->job_failed) {
        r->job_failed = true;
        if (err) r->job_err = *err;
        else vitd_fail(&r->job_err, s, "%s", vitd_status_name(s));
        r->job_err.code = s;
    }
    pthread_mutex_unlock(&r->prep_mu);
}

bool work_writes_cache(const struct req *r) {
    return r->route == RT_CHAT || (r->route == RT_VLLM_EMBEDS && r->vllm.transfer == VLLM_EC_CACHE);
}

/* The LEAD images of this round settle their cache entries: ok makes them hits for everyone, else they leave. */
static void settle_leads(struct req *r, bool ok) {
    for (int k = 0; k < r->n_work; k++) {
        int i = r->work[k];
        if (r->state[i] == IMG_LEAD) output_cache_settle(r->srv->o.cache, r->entries[i], ok);
    }
}

/* One io task: image i's vLLM cache file. The last task answers, with the failure of the lowest image index. */
static void io_task(void *arg, int i) {
    struct req *r = arg;
    http_server *h = r->srv;
    const vitd_vision_config *vc = vitd_model_config(h->o.model);
    vitd_err err = {0};
    int64_t rows = 0;
    vitd_status s = handover_rows(&r->grids[i], vc->spatial_merge_size, i, &rows, &err);
    if (s == VITD_OK) {
        handover_src src = {.emb = r->emb[i], .ds = r->want_ds ? r->ds[i] : NULL, .bf16 = r->out_bf16, .rows = rows,
                            .D = vc->out_hidden_size, .k = r->want_ds && r->ds[i] ? vc->n_deepstack : 0, .image = i};
        log_request_begin(r->id);
        s = ec_cache_put(h->o.ec, r->uuids[i], &src, &r->grids[i], &err);
        log_request_end();
    }
    if (s != VITD_OK) note_failure(r, &r->io_err_index, &r->io_err, i, s, &err);
    if (atomic_fetch_sub(&r->io_left, 1) != 1) return;
    /* last task: the others' writes happened before (acq_rel on io_left) */
    atomic_fetch_sub(&h->io_patches, r->n_patches);
    if (r->io_err_index >= 0) req_finish(r, r->io_err.code, &r->io_err);
    else req_finish(r, VITD_OK, NULL);
}

static vitd_status start_round(struct req *r, vitd_err *err);
static void retry_round(struct req *r);

/* Every part is done (the caller owns the request now): fail, retry, write the cache files, or finish. */
static void after_parts(struct req *r) {
    if (r->prep_err_index >= 0) {
        req_finish(r, r->prep_err.code, &r->prep_err);
        return;
    }
    if (r->job_failed) {
        req_finish(r, r->job_err.code, &r->job_err);
        return;
    }
    for (int i = 0; i < r->n_images; i++)
        if (r->wait_failed[i]) {
            retry_round(r);
            return;
        }
    if (work_writes_cache(r)) {
        atomic_store(&r->io_left, r->n_images);
        atomic_fetch_add(&r->srv->io_patches, r->n_patches);
        if (!prep_pool_submit(r->srv->o.io, io_task, r, r->n_images)) {
            atomic_fetch_sub(&r->srv->io_patches, r->n_patches);
            vitd_err err;
            vitd_fail(&err, VITD_E_CANCELLED, "the server is shutting down; retry on another replica");
            req_finish(r, VITD_E_CANCELLED, &err);
        }
        return;
    }
    req_finish(r, VITD_OK, NULL);
}

/* One part of the request is done; the last one moves it on. */
static void part_done(struct req *r) {
    pthread_mutex_lock(&r->prep_mu);
    bool last = --r->parts == 0;
    pthread_mutex_unlock(&r->prep_mu);
    if (last) after_parts(r);
}

/* A waited-on entry settled (on any thread, possibly before output_cache_get has returned to lookup()): a
 * failure is noted for the thread that completes the last part, which starts the retry round. */
static void on_settle(void *arg, bool ok) {
    wait_arg *w = arg;
    if (!ok) {
        pthread_mutex_lock(&w->r->prep_mu);
        w->r->wait_failed[w->image] = true;
        pthread_mutex_unlock(&w->r->prep_mu);
        if (w->r->srv->o.metrics) metrics_inc(w->r->srv->o.metrics->oc_retry_s);
    }
    part_done(w->r);
}

/* ---- the round's job ---- */

static void job_done(sched_job *j, vitd_status s, const vitd_err *err) {
    struct req *r = req_of_job(j);
    vitd_err why, e503;
    if (s == VITD_E_GPU && r->srv->o.encoder && vitd_encoder_failed(r->srv->o.encoder, &why)) {
        /* not this request's fault, and not this replica's to retry: 503, so the client goes elsewhere */
        vitd_fail(&e503, VITD_E_CANCELLED, "the GPU of this replica failed (%.160s); retry on another replica",
                  why.msg);
        s = VITD_E_CANCELLED;
        err = &e503;
    }
    settle_leads(r, s == VITD_OK);
    if (s != VITD_OK) note_job_failure(r, s, err);
    part_done(r);
}

/* The client hung up (MHD does not watch suspended connections): peer closed or reset the socket. */
static bool job_gone(sched_job *j) {
    struct req *r = req_of_job(j);
    if (r->fd < 0) return false;
    struct pollfd p = {.fd = r->fd, .events = POLLIN | POLLRDHUP};
    if (poll(&p, 1, 0) <= 0) return false;
    return (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) != 0;
}

/* One prep task: decode and preprocess work image k into its pixel buffer (and derive its content id when the
 * route needs one and no cache did). Once an image has failed, the tasks not yet started skip their work. The
 * last task to finish submits the round's job, or gives up the round with the failure of the lowest index. */
static void prep_task(void *arg, int k) {
    struct req *r = arg;
    http_server *h = r->srv;
    int i = r->work[k];
    if (!atomic_load(&r->prep_failed)) {
        vitd_err err = {0};
        body_span sp = r->br.images[i];
        log_request_begin(r->id);
        prep_ctx pc = {.pool = h->o.prep}; /* idle workers (none when other images are queued) split the passes */
        vitd_status s = prep_image(sp.data, sp.len, h->o.cfg->max_image_pixels, &h->o.preproc, &r->grids[i],
                                   r->pv[i], &pc, &err);
        atomic_fetch_add(&r->decode_us, (long long)(pc.decode_s * 1e6));
        log_request_end();
        if (s == VITD_OK && r->uuid_derive && r->uuid_derive[i])
            content_id_image(h->model_fp, h->o.preproc.min_pixels, h->o.preproc.max_pixels, sp.data, sp.len,
                             r->uuids[i]);
        if (s != VITD_OK) {
            note_failure(r, &r->prep_err_index, &r->prep_err, i, s, &err);
            atomic_store(&r->prep_failed, true);
        }
    }
    if (atomic_fetch_sub(&r->prep_left, 1) != 1) return;
    /* last task: every write above happened before this point (acq_rel on prep_left) */
    r->t_prep_done = vitd_now();
    if (atomic_load(&r->prep_failed)) {
        sched_unreserve(h->o.sched, r->work_patches);
        settle_leads(r, false);
        part_done(r);
        return;
    }
    vitd_err err = {0};
    vitd_status s = sched_submit(h->o.sched, &r->job, &err);
    if (s != VITD_OK) {
        if (s != VITD_E_CANCELLED) sched_unreserve(h->o.sched, r->work_patches); /* cancelled returns it itself */
        settle_leads(r, false);
        note_job_failure(r, s, &err);
        part_done(r);
    }
}

/* Gives the round's work images their missing buffers (pixels; outputs of solo and retry images), books their
 * patches and hands them to the prep pool as one job. The caller owns the request and holds a part for the job. */
static vitd_status start_round(struct req *r, vitd_err *err) {
    http_server *h = r->srv;
    const vitd_config *c = h->o.cfg;
    const vitd_vision_config *vc = vitd_model_config(h->o.model);
    size_t row = preprocess_row_width(&h->o.preproc), D = (size_t)vc->out_hidden_size, es = r->out_bf16 ? 2 : 4;
    size_t merge = (size_t)vc->spatial_merge_size * (size_t)vc->spatial_merge_size, total = 0;
    bool want_ds = false;
    for (int k = 0; k < r->n_work; k++) {
        int i = r->work[k];
        size_t p = (size_t)r->grids[i].t * r->grids[i].h * r->grids[i].w, tokens = p / merge;
        r->pv[i] = arena_alloc(r->arena, p * row * sizeof(float));
        if (r->state[i] != IMG_LEAD) { /* a solo or retry image keeps its outputs in the arena */
            r->emb[i] = arena_alloc(r->arena, tokens * D * es);
            r->ds[i] = r->want_ds ? arena_alloc(r->arena, tokens * D * (size_t)vc->n_deepstack * es) : NULL;
            if (!r->emb[i] || (r->want_ds && !r->ds[i]))
                return vitd_fail(err, VITD_E_NOMEM, "out of memory for the request's output buffers");
        }
        if (!r->pv[i]) return vitd_fail(err, VITD_E_NOMEM, "out of memory for the request's pixel buffers");
        r->jgrids[k] = r->grids[i];
        r->jpv[k] = r->pv[i];
        r->jemb[k] = r->emb[i];
        r->jds[k] = r->ds[i];
        want_ds |= r->ds[i] != NULL;
        total += p;
    }
    vitd_status s = sched_reserve(h->o.sched, total, err);
    if (s != VITD_OK) return s;
    r->work_patches = total;
    sched_job *j = &r->job;
    *j = (sched_job){.n_images = r->n_work, .grids = r->jgrids, .pixel_values = r->jpv, .embeddings = r->jemb,
                     .deepstack = want_ds ? r->jds : NULL, .out_bf16 = r->out_bf16, .n_patches = total,
                     .deadline = r->t_start + c->request_timeout_ms * 1e-3, .gone = job_gone, .done = job_done};
    atomic_store(&r->prep_left, r->n_work);
    atomic_store(&r->prep_failed, false);
    pthread_mutex_lock(&r->prep_mu);
    r->parts++; /* the job: before the tasks exist, since the last of them may finish it at once */
    pthread_mutex_unlock(&r->prep_mu);
    if (!prep_pool_submit(h->o.prep, prep_task, r, r->n_work)) { /* shutting down (a retry round) */
        pthread_mutex_lock(&r->prep_mu);
        r->parts--; /* the caller still holds its own part: this cannot reach 0 */
        pthread_mutex_unlock(&r->prep_mu);
        sched_unreserve(h->o.sched, total);
        return vitd_fail(err, VITD_E_CANCELLED, "the server is shutting down; retry on another replica");
    }
    return VITD_OK;
}

/* ---- the start, on the MHD thread ---- */

void work_release(struct req *r) {
    for (int i = 0; r->entries && i < r->n_images; i++) output_cache_release(r->srv->o.cache, r->entries[i]);
}

/* Looks image i up in the output cache and points its outputs at the entry; SOLO when there is none. The
 * caller owns the request and holds a part, so a callback cannot complete it underneath. */
static void lookup(struct req *r, int i) {
    http_server *h = r->srv;
    const vitd_vision_config *vc = vitd_model_config(h->o.model);
    r->state[i] = IMG_SOLO;
    if (!h->o.cache) return;
    uint8_t *key = r->keys + 32 * (size_t)i;
    if (r->round == 0) {
        body_span sp = r->br.images[i];
        content_id_key(h->model_fp, h->o.preproc.min_pixels, h->o.preproc.max_pixels, sp.data, sp.len, key);
        if (r->uuid_derive && r->uuid_derive[i]) { /* the derived id is this same digest */
            content_id_hex(key, r->uuids[i]);
            r->uuid_derive[i] = false;
        }
    }
    wait_arg *w = &r->waits[i];
    *w = (wait_arg){r, i};
    pthread_mutex_lock(&r->prep_mu);
    r->parts++; /* in case it waits: the callback may come before output_cache_get returns */
    pthread_mutex_unlock(&r->prep_mu);
    oc_entry *e = NULL;
    oc_result res = output_cache_get(h->o.cache, key, &r->grids[i], vc->out_hidden_size, vc->n_deepstack,
                                     r->out_bf16 ? 2 : 4, on_settle, w, &e);
    if (res != OC_WAIT) {
        pthread_mutex_lock(&r->prep_mu);
        r->parts--;
        pthread_mutex_unlock(&r->prep_mu);
    }
    if (res == OC_SOLO) return;
    const vitd_grid *g = oc_entry_grid(e);
    VITD_ASSERT(g->t == r->grids[i].t && g->h == r->grids[i].h && g->w == r->grids[i].w); /* same bytes, bounds */
    r->entries[i] = e;
    r->emb[i] = oc_entry_embeddings(e);
    r->ds[i] = oc_entry_deepstack(e);
    r->state[i] = res == OC_HIT ? IMG_HIT : res == OC_LEAD ? IMG_LEAD : IMG_WAIT;
}

/* Images whose leader failed: each is looked up again (it may lead now, wait for another leader, or hit), or in
 * the last round encoded here as SOLO. The caller owns the request; the round runs like work_begin's. */
static void retry_round(struct req *r) {
    r->round++;
    r->n_work = 0;
    pthread_mutex_lock(&r->prep_mu);
    r->parts = 1; /* the setup */
    pthread_mutex_unlock(&r->prep_mu);
    for (int i = 0; i < r->n_images; i++) {
        if (!r->wait_failed[i]) continue;
        r->wait_failed[i] = false;
        output_cache_release(r->srv->o.cache, r->entries[i]);
        r->entries[i] = NULL;
        r->emb[i] = r->ds[i] = NULL;
        if (r->round < LAST_ROUND) lookup(r, i);
        else r->state[i] = IMG_SOLO;
        if (r->state[i] == IMG_LEAD || r->state[i] == IMG_SOLO) r->work[r->n_work++] = i;
    }
    if (r->n_work > 0) {
        vitd_err err = {0};
        vitd_status s = start_round(r, &err);
        if (s != VITD_OK) {
            settle_leads(r, false);
            note_job_failure(r, s, &err);
        }
    }
    part_done(r);
}

enum MHD_Result work_begin(struct req *r) {
    http_server *h = r->srv;
    const vitd_vision_config *vc = vitd_model_config(h->o.model);
    const int n = r->n_images;
    r->out_bf16 = h->o.out_bf16; /* the engine's own outputs, never widened on the way */
    r->want_ds = r->br.opts.deepstack && vc->n_deepstack > 0;
    r->state = arena_calloc(r->arena, (size_t)n, 1);
    r->entries = arena_calloc(r->arena, (size_t)n, sizeof *r->entries);
    r->work = arena_calloc(r->arena, (size_t)n, sizeof *r->work);
    r->pv = arena_calloc(r->arena, (size_t)n, sizeof *r->pv);
    r->emb = arena_calloc(r->arena, (size_t)n, sizeof *r->emb);
    r->ds = arena_calloc(r->arena, (size_t)n, sizeof *r->ds);
    r->jgrids = arena_calloc(r->arena, (size_t)n, sizeof *r->jgrids);
    r->jpv = arena_calloc(r->arena, (size_t)n, sizeof *r->jpv);
    r->jemb = arena_calloc(r->arena, (size_t)n, sizeof *r->jemb);
    r->jds = arena_calloc(r->arena, (size_t)n, sizeof *r->jds);
    r->waits = arena_calloc(r->arena, (size_t)n, sizeof *r->waits);
    r->wait_failed = arena_calloc(r->arena, (size_t)n, sizeof *r->wait_failed);
    r->keys = arena_alloc(r->arena, (size_t)n * 32);
    if (!r->state || !r->entries || !r->work || !r->pv || !r->emb || !r->ds || !r->jgrids || !r->jpv || !r->jemb ||
        !r->jds || !r->waits || !r->wait_failed || !r->keys)
        return http_respond_status(r, VITD_E_NOMEM, "out of memory for the request's image table");
    r->parts = 1; /* the setup, until the end of this function */
    int n_wait = 0;
    for (int i = 0; i < n; i++) {
        lookup(r, i);
        if (r->state[i] == IMG_LEAD || r->state[i] == IMG_SOLO) r->work[r->n_work++] = i;
        n_wait += r->state[i] == IMG_WAIT;
    }
    /* all answered from the cache, nothing to write: answer now, never suspended */
    if (r->n_work == 0 && n_wait == 0 && !work_writes_cache(r)) {
        r->t_prep_done = r->t_done = vitd_now();
        r->outcome = VITD_OK;
        return images_answer(r);
    }
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    r->fd = ci ? ci->connect_fd : -1;
    atomic_fetch_add(&r->refs, 1); /* the work reference */
    r->phase = PH_ASYNC;
    MHD_suspend_connection(r->conn);
    if (r->n_work > 0) {
        vitd_err err = {0};
        vitd_status s = start_round(r, &err);
        if (s != VITD_OK) {
            settle_leads(r, false);
            note_job_failure(r, s, &err);
        }
    }
    part_done(r); /* the setup: from here on, whoever completes the last part moves the request on */
    return MHD_YES;
}
