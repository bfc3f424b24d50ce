/* labels: unit */
/* test_sched.c — the batcher's packing logic with a fake encoder: token and image budgets respected, an image
 * above the budget alone, the delay honoured (batches wait for more work), arrival order preserved, a job split
 * over several batches completed once after its last image, gone and timed-out jobs skipped without being
 * encoded, results routed to the right job (equal to the same image encoded alone), encoder failures, capacity
 * bookings, stop with and without cancel.
 *
 * The fake encoder computes every output token from its own image's pixel rows only (as the real one does:
 * images never attend to each other), records each batch (images, patches, the tag in each image's first pixel)
 * and can be held at a gate so that the queue fills deterministically while a batch "runs". Every case runs twice:
 * with a synchronous encoder (encode) and with a pipelined one (submit records the batch, wait computes it, up to
 * two in flight), where a job split over two batches in flight must still complete once, after both. */
#include <pthread.h>
#include <stdbool.h>
#include <time.h>

#include "check.h"
#include "scheduler.h"
#include "util.h"

#define ROW 8        /* floats per patch row (the real one is 1536) */
#define D 6          /* out_hidden */
#define NDS 2        /* deepstack layers */
#define MERGE 4

/* ---- fake encoder ---- */

#define MAX_BATCHES 512
#define MAX_TAGS 64
typedef struct {
    int n_images;
    size_t patches;
    int tags[MAX_TAGS];
    double t_start;
    bool ds;
} batch_rec;

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_cv = PTHREAD_COND_INITIALIZER;
static batch_rec g_batches[MAX_BATCHES];
static int g_n_batches;
static bool g_gate_closed;   /* the encoder waits while true */
static bool g_in_encoder;    /* a batch is inside the fake encoder */
static int g_fail_tag = -1;  /* a batch holding this tag fails */

/* One image's outputs from its own pixel rows: what "the image alone" gives. */
static void fake_image(const float *pv, size_t patches, float *emb, float *ds, size_t ds_stride_tokens) {
    size_t tokens = patches / MERGE;
    for (size_t t = 0; t < tokens; t++) {
        for (int d = 0; d < D; d++) {
            float v =
                pv[(MERGE * t + (size_t)(d % MERGE)) * ROW + (size_t)((d * 3) % ROW)] * (1.0f + 0.5f * (d % 3)) +
                0.25f * (float)t;
            emb[t * D + (size_t)d] = v;
            if (ds)
                for (int k = 0; k < NDS; k++)
                    ds[((size_t)k * ds_stride_tokens + t) * D + (size_t)d] = v + (float)k + 1;
        }
    }
}

static bool g_pipe;          /* the cases run with the pipelined fake (submit/wait) */

/* The first half of a batch: gate, record, decide failure. Returns true when the batch fails. */
static bool fake_start(const vitd_batch *b) {
    pthread_mutex_lock(&g_mu);
    g_in_encoder = true;
    pthread_cond_broadcast(&g_cv);
    while (g_gate_closed) pthread_cond_wait(&g_cv, &g_mu);
    batch_rec *r = g_n_batches < MAX_BATCHES ? &g_batches[g_n_batches++] : NULL;
    bool fail = false;
    if (r) {
        r->n_images = b->n_images;
        r->patches = vitd_grids_patches(b->grids, b->n_images);
        r->t_start = vitd_now();
        r->ds = b->image_deepstack != NULL;
    }
    for (int i = 0; i < b->n_images; i++) {
        int tag = (int)b->image_pixels[i][0];
        if (r && i < MAX_TAGS) r->tags[i] = tag;
        if (tag == g_fail_tag) fail = true;
    }
    g_in_encoder = false;
    pthread_mutex_unlock(&g_mu);
    return fail;
}

/* The second half: each image's outputs from its own pixels, into its own buffers (the per-image form). */
static vitd_status fake_finish(const vitd_batch *b, bool fail, vitd_err *err) {
    if (fail) return vitd_fail(err, VITD_E_GPU, "fake encoder failure");
    for (int i = 0; i < b->n_images; i++) {
        size_t p = vitd_grids_patches(&b->grids[i], 1);
        fake_image(b->image_pixels[i], p, b->image_embeddings[i], b->image_deepstack ? b->image_deepstack[i] : NULL,
                   p / MERGE);
    }
    return VITD_OK;
}

static vitd_status fake_encode(void *user, const vitd_batch *b, vitd_err *err) {
    (void)user;
    bool fail = fake_start(b);
    return fake_finish(b, fail, err);
}

/* Pipelined fake: submit records, wait computes (the batch's arrays must still be valid then). */
static struct {
    vitd_batch b;
    bool fail;
} g_flight[2];
static int g_flight_head, g_flight_n, g_flight_max;

static vitd_status fake_submit(void *user, const vitd_batch *b, vitd_err *err) {
    (void)user;
    if (g_flight_n == 2) return vitd_fail(err, VITD_E_BUSY, "fake: two batches in flight");
    bool fail = fake_start(b);
    int k = (g_flight_head + g_flight_n) % 2;
    g_flight[k].b = *b;
    g_flight[k].fail = fail;
    g_flight_n++;
    if (g_flight_n > g_flight_max) g_flight_max = g_flight_n;
    return VITD_OK;
}

static vitd_status fake_wait(void *user, vitd_err *err) {
    (void)user;
    if (g_flight_n == 0) return vitd_fail(err, VITD_E_INVALID_ARG, "fake: nothing in flight");
    int k = g_flight_head;
    g_flight_head = (g_flight_head + 1) % 2;
    g_flight_n--;
    return fake_finish(&g_flight[k].b, g_flight[k].fail, err);
}

static void gate(bool closed) {
    pthread_mutex_lock(&g_mu);
    g_gate_closed = closed;
    pthread_cond_broadcast(&g_cv);
    pthread_mutex_unlock(&g_mu);
}

/* Polls every millisecond, for at most limit_s seconds, until cond(arg) holds (evaluated under g_mu). */
static bool poll_until(bool (*cond)(int), int arg, double limit_s) {
    const double until = vitd_now() + limit_s;
    for (;;) {
        pthread_mutex_lock(&g_mu);
        bool ok = cond(arg);
        pthread_mutex_unlock(&g_mu);
        if (ok) return true;
        if (vitd_now() > until) return false;
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
}

static bool in_encoder(int unused) {
    (void)unused;
    return g_in_encoder;
}

/* Waits (bounded) until a batch is inside the encoder. */
static bool wait_in_encoder(void) { return poll_until(in_encoder, 0, 10); }

static void reset_records(void) {
    pthread_mutex_lock(&g_mu);
    g_n_batches = 0;
    g_fail_tag = -1;
    pthread_mutex_unlock(&g_mu);
}

/* ---- jobs ---- */

#define MAX_IMG 8
typedef struct {
    sched_job job;
    int n;
    vitd_grid grids[MAX_IMG];
    float *pv[MAX_IMG], *emb[MAX_IMG], *ds[MAX_IMG];
    bool want_ds;
    _Atomic bool is_gone; /* set by the test while the watcher may read it */
    /* outcome, guarded by g_mu */
    int n_done;
    vitd_status status;
    char msg[256];
    double t_done;
} tjob;

static int g_jobs_done;

static bool tjob_gone(sched_job *j) { return ((tjob *)j)->is_gone; }

static void tjob_done(sched_job *j, vitd_status s, const vitd_err *err) {
    tjob *t = (tjob *)j;
    pthread_mutex_lock(&g_mu);
    t->n_done++;
    t->status = s;
    t->t_done = vitd_now();
    snprintf(t->msg, sizeof t->msg, "%s", err ? err->msg : "");
    g_jobs_done++;
    pthread_cond_broadcast(&g_cv);
    pthread_mutex_unlock(&g_mu);
}

/* Builds a job of n images with the given patch counts (multiples of 4); image i's first pixel holds tag+i, the
 * rest seeded random values. */
static void tjob_init(tjob *t, int n, const int *patches, int tag, bool want_ds, unsigned long long *rng) {
    memset(t, 0, sizeof *t);
    t->n = n;
    t->want_ds = want_ds;
    size_t total = 0;
    for (int i = 0; i < n; i++) {
        int p = patches[i];
        /* grid 1 x 2 x p/2: h and w even as the real merge needs (p a multiple of 4) */
        t->grids[i] = (vitd_grid){1, 2, p / 2};
        total += (size_t)p;
        t->pv[i] = xmalloc((size_t)p * ROW * sizeof(float));
        for (int k = 0; k < p * ROW; k++) t->pv[i][k] = (float)check_rng_normal(rng);
        t->pv[i][0] = (float)(tag + i);
        t->emb[i] = xcalloc((size_t)p / MERGE * D, sizeof(float));
        t->ds[i] = want_ds ? xcalloc((size_t)p / MERGE * D * NDS, sizeof(float)) : NULL;
    }
    t->job.n_images = n;
    t->job.grids = t->grids;
    t->job.pixel_values = t->pv;
    t->job.embeddings = t->emb;
    t->job.deepstack = want_ds ? t->ds : NULL;
    t->job.n_patches = total;
    t->job.gone = tjob_gone;
    t->job.done = tjob_done;
}

static void tjob_release(tjob *t) {
    for (int i = 0; i < t->n; i++) {
        free(t->pv[i]);
        free(t->emb[i]);
        free(t->ds[i]);
    }
}

/* Reserve + submit; returns the submit status. */
static vitd_status tjob_submit(sched *s, tjob *t) {
    vitd_err err = {0};
    vitd_status st = sched_reserve(s, t->job.n_patches, &err);
    if (st != VITD_OK) return st;
    return sched_submit(s, &t->job, &err);
}

static bool jobs_done(int n) { return g_jobs_done >= n; }

/* Waits (bounded, 20 s) until n jobs completed in all since the last reset. */
static bool wait_done(int n) { return poll_until(jobs_done, n, 20); }

/* Each output of a completed job equals the fake encoder on that image alone (bit for bit). */
static void check_results(tjob *t, const char *what) {
    for (int i = 0; i < t->n; i++) {
        size_t p = (size_t)t->grids[i].h * (size_t)t->grids[i].w, tokens = p / MERGE;
        float *emb = xmalloc(tokens * D * sizeof(float)), *ds = xmalloc(tokens * D * NDS * sizeof(float));
        fake_image(t->pv[i], p, emb, ds, tokens);
        cmp_stats s = cmp_f32(t->emb[i], emb, tokens * D, 0, 0);
        CHECK_MSG(s.n_bad == 0, "%s image %d embeddings: max_abs %g", what, i, s.max_abs);
        if (t->want_ds) {
            s = cmp_f32(t->ds[i], ds, tokens * D * NDS, 0, 0);
            CHECK_MSG(s.n_bad == 0, "%s image %d deepstack: max_abs %g", what, i, s.max_abs);
        }
        free(emb);
        free(ds);
    }
}

static sched_config base_config(void) {
    sched_config c = {.batch_max_tokens = 64, .batch_max_images = 4, .batch_delay_ms = 20,
                      .queue_max_tokens = 4096, .row_width = ROW, .out_hidden = D, .n_deepstack = NDS,
                      .merge_patches = MERGE, .encode = fake_encode};
    if (g_pipe) {
        c.encode = NULL;
        c.submit = fake_submit;
        c.wait = fake_wait;
        c.pipeline = 2;
    }
    return c;
}

/* A batcher on c, with the records and the done count reset. */
static sched *start_sched(const sched_config *c) {
    sched *s = NULL;
    vitd_err err;
    CHECK_OK(sched_create(c, &s, &err), &err);
    reset_records();
    g_jobs_done = 0;
    return s;
}

/* ---- cases ---- */

/* Many jobs of random sizes queued behind a held batch: every batch within budget (or one oversized image
 * alone), images in arrival order, split jobs completed once, results exact. */
static void test_packing(void) {
    printf("packing, budgets, order, routing\n");
    sched_config c = base_config();
    sched *s = start_sched(&c);
    unsigned long long rng = 42;
    enum { NJ = 24 };
    tjob *jobs = xcalloc(NJ, sizeof *jobs);
    gate(true);
    /* job 0 alone first so the batcher is held inside the encoder while the rest queue up */
    int p0[1] = {8};
    tjob_init(&jobs[0], 1, p0, 0, true, &rng);
    CHECK_EQ_INT(VITD_OK, tjob_submit(s, &jobs[0]));
    CHECK(wait_in_encoder());
    int oversized_job = 7;
    for (int j = 1; j < NJ; j++) {
        int n = 1 + (int)(check_rng_next(&rng) % 5), p[MAX_IMG];
        for (int i = 0; i < n; i++) p[i] = 4 * (1 + (int)(check_rng_next(&rng) % 10)); /* 4..40 patches */
        if (j == oversized_job) { n = 1; p[0] = 100; }                            /* above the 64 budget */
        tjob_init(&jobs[j], n, p, 100 * j, j % 3 != 0, &rng);
        CHECK_EQ_INT(VITD_OK, tjob_submit(s, &jobs[j]));
    }
    gate(false);
    CHECK(wait_done(NJ));
    int last_tag = -1, images = 0;
    bool saw_oversized = false;
    pthread_mutex_lock(&g_mu);
    for (int b = 0; b < g_n_batches; b++) {
        batch_rec *r = &g_batches[b];
        CHECK_MSG(r->n_images <= c.batch_max_images, "batch %d has %d images", b, r->n_images);
        CHECK_MSG(r->patches <= c.batch_max_tokens || r->n_images == 1, "batch %d: %zu patches in %d images", b,
                  r->patches, r->n_images);
        for (int i = 0; i < r->n_images; i++) {
            CHECK_MSG(r->tags[i] > last_tag, "batch %d image %d: tag %d after %d (order)", b, i, r->tags[i],
                      last_tag);
            last_tag = r->tags[i];
            if (r->tags[i] == 100 * oversized_job) {
                saw_oversized = true;
                CHECK_EQ_INT(1, r->n_images);
                CHECK_EQ_INT(100, r->patches);
            }
            images++;
        }
    }
    int want_images = 0;
    for (int j = 0; j < NJ; j++) want_images += jobs[j].n;
    CHECK_EQ_INT(want_images, images);
    CHECK(saw_oversized);
    printf("  %d jobs, %d images in %d batches\n", NJ, images, g_n_batches);
    CHECK_MSG(g_n_batches < images, "no packing happened: %d batches for %d images", g_n_batches, images);
    pthread_mutex_unlock(&g_mu);
    for (int j = 0; j < NJ; j++) {
        CHECK_EQ_INT(1, jobs[j].n_done);
        CHECK_EQ_INT(VITD_OK, jobs[j].status);
        CHECK(jobs[j].job.n_batches >= 1);
        char what[32];
        snprintf(what, sizeof what, "job %d", j);
        check_results(&jobs[j], what);
    }
    int qj;
    size_t qp, booked;
    sched_depth(s, &qj, &qp, &booked);
    CHECK_EQ_INT(0, qj);
    CHECK_EQ_INT(0, qp);
    CHECK_EQ_INT(0, booked);
    sched_free(s);
    for (int j = 0; j < NJ; j++) tjob_release(&jobs[j]);
    free(jobs);
}

/* A job of 7 images with batch_max_images 2 spans 4 batches and completes once, after the last. */
static void test_split(void) {
    printf("split job\n");
    sched_config c = base_config();
    c.batch_max_images = 2;
    c.batch_delay_ms = 0;
    sched *s = start_sched(&c);
    unsigned long long rng = 7;
    tjob t;
    int p[7] = {4, 8, 12, 16, 20, 4, 8};
    tjob_init(&t, 7, p, 1000, true, &rng);
    CHECK_EQ_INT(VITD_OK, tjob_submit(s, &t));
    CHECK(wait_done(1));
    CHECK_EQ_INT(1, t.n_done);
    CHECK_EQ_INT(VITD_OK, t.status);
    CHECK_EQ_INT(4, t.job.n_batches);
    pthread_mutex_lock(&g_mu);
    CHECK_EQ_INT(4, g_n_batches);
    pthread_mutex_unlock(&g_mu);
    check_results(&t, "split job");
    sched_free(s);
    tjob_release(&t);
}

/* With a long delay, a job whose patches are booked but not yet submitted (being preprocessed) is waited for: the
 * two land in one batch, which starts once the second has arrived (nothing else on its way), before the delay
 * ran out. With nothing on its way, a lone job starts at once. */
static void test_delay(void) {
    printf("delay\n");
    sched_config c = base_config();
    c.batch_delay_ms = 300;
    sched *s = start_sched(&c);
    unsigned long long rng = 9;
    tjob a, b;
    int pa[1] = {8}, pb[2] = {4, 12};
    tjob_init(&a, 1, pa, 10, false, &rng);
    tjob_init(&b, 2, pb, 20, false, &rng);
    vitd_err err = {0};
    CHECK_EQ_INT(VITD_OK, sched_reserve(s, b.job.n_patches, &err)); /* b is on its way */
    CHECK_EQ_INT(VITD_OK, tjob_submit(s, &a));
    usleep(50 * 1000);
    CHECK_EQ_INT(VITD_OK, sched_submit(s, &b.job, &err));
    CHECK(wait_done(2));
    pthread_mutex_lock(&g_mu);
    CHECK_EQ_INT(1, g_n_batches);
    CHECK_EQ_INT(3, g_batches[0].n_images);
    CHECK_EQ_INT(0, g_batches[0].ds); /* nobody asked for deepstack */
    double waited = g_batches[0].t_start - a.job.t_submitted;
    pthread_mutex_unlock(&g_mu);
    printf("  first batch started %.1f ms after the first job arrived (delay 300 ms; the second came at 50 ms)\n",
           waited * 1e3);
    CHECK_MSG(waited >= 0.05 - 1e-3 && waited < 0.3, "batch started %.4f s after arrival: it should wait for the "
              "booked job (50 ms), then go", waited);
    check_results(&a, "delay a");
    check_results(&b, "delay b");
    /* a lone job, nothing booked besides it: no wait */
    tjob l;
    int pl[1] = {8};
    tjob_init(&l, 1, pl, 30, false, &rng);
    CHECK_EQ_INT(VITD_OK, tjob_submit(s, &l));
    CHECK(wait_done(3));
    pthread_mutex_lock(&g_mu);
    double lone = g_batches[g_n_batches - 1].t_start - l.job.t_submitted;
    pthread_mutex_unlock(&g_mu);
    printf("  a lone job started %.2f ms after it arrived\n", lone * 1e3);
    CHECK_MSG(lone < 0.1, "a lone job waited %.3f s for company", lone);
    sched_free(s);
    tjob_release(&a);
    tjob_release(&b);
    tjob_release(&l);
}

/* Gone and timed-out jobs queued behind a held batch are completed with CANCELLED / TIMEOUT, never encoded, and
 * the jobs around them are served. */
/* No recorded batch held an image of the jobs tagged 100*a or 100*b (jobs left unencoded: `what` they were). */
static void check_not_encoded(int a, int b, const char *what) {
    pthread_mutex_lock(&g_mu);
    for (int k = 0; k < g_n_batches; k++)
        for (int i = 0; i < g_batches[k].n_images; i++) {
            int tag = g_batches[k].tags[i];
            CHECK_MSG(tag / 100 != a && tag / 100 != b, "%s job's image %d was encoded", what, tag);
        }
    pthread_mutex_unlock(&g_mu);
}

static void test_gone_and_timeout(void) {
    printf("gone and timeout\n");
    sched_config c = base_config();
    c.batch_delay_ms = 0;
    sched *s = start_sched(&c);
    unsigned long long rng = 11;
    tjob t[4];
    int p[2] = {8, 8};
    for (int i = 0; i < 4; i++) tjob_init(&t[i], 2, p, 100 * (i + 1), true, &rng);
    gate(true);
    CHECK_EQ_INT(VITD_OK, tjob_submit(s, &t[0]));
    CHECK(wait_in_encoder());
    t[1].is_gone = true;
    t[2].job.deadline = vitd_now() - 1; /* already past */
    for (int i = 1; i < 4; i++) CHECK_EQ_INT(VITD_OK, tjob_submit(s, &t[i]));
    gate(false);
    CHECK(wait_done(4));
    CHECK_EQ_INT(VITD_OK, t[0].status);
    CHECK_EQ_INT(VITD_E_CANCELLED, t[1].status);
    CHECK_STR_CONTAINS(t[1].msg, "client went away");
    CHECK_EQ_INT(VITD_E_TIMEOUT, t[2].status);
    CHECK_STR_CONTAINS(t[2].msg, "timed out");
    CHECK_EQ_INT(VITD_OK, t[3].status);
    for (int i = 0; i < 4; i++) CHECK_EQ_INT(1, t[i].n_done);
    CHECK_EQ_INT(0, t[1].job.n_batches);
    CHECK_EQ_INT(0, t[2].job.n_batches);
    check_not_encoded(2, 3, "skipped");
    check_results(&t[0], "before gone");
    check_results(&t[3], "after gone");
    sched_free(s);
    for (int i = 0; i < 4; i++) tjob_release(&t[i]);
}

/* While a batch runs (held at the gate), the watcher fails queued jobs at their deadline and when their client
 * goes away, without waiting for the batch (a black-box test saw 504s come only when a long CPU batch ended);
 * the job behind them is encoded once the batch is done. */
static void test_deadline_while_busy(void) {
    printf("deadlines while a batch runs\n");
    sched_config c = base_config();
    c.batch_delay_ms = 0;
    sched *s = start_sched(&c);
    unsigned long long rng = 13;
    tjob t[4];
    int p[1] = {8};
    for (int i = 0; i < 4; i++) tjob_init(&t[i], 1, p, 100 * (i + 1), false, &rng);
    gate(true);
    CHECK_EQ_INT(VITD_OK, tjob_submit(s, &t[0]));
    CHECK(wait_in_encoder());
    const double t_sub = vitd_now();
    t[1].job.deadline = t_sub + 0.15;
    for (int i = 1; i < 4; i++) CHECK_EQ_INT(VITD_OK, tjob_submit(s, &t[i]));
    CHECK(wait_done(1));
    pthread_mutex_lock(&g_mu);
    const double late = t[1].t_done - t[1].job.deadline;
    const vitd_status st1 = t[1].status;
    pthread_mutex_unlock(&g_mu);
    printf("  timed out %.0f ms after its deadline, the batch still running\n", late * 1e3);
    CHECK_EQ_INT(VITD_E_TIMEOUT, st1);
    CHECK_MSG(late >= 0 && late < 0.6, "answered %.3f s after its deadline", late);
    const double t_gone = vitd_now();
    t[2].is_gone = true;
    CHECK(wait_done(2));
    pthread_mutex_lock(&g_mu);
    const double after = t[2].t_done - t_gone;
    const vitd_status st2 = t[2].status;
    pthread_mutex_unlock(&g_mu);
    printf("  hung-up client noticed after %.0f ms\n", after * 1e3);
    CHECK_EQ_INT(VITD_E_CANCELLED, st2);
    CHECK_MSG(after < 0.6, "hang-up noticed after %.3f s", after);
    pthread_mutex_lock(&g_mu);
    CHECK(g_in_encoder); /* the first batch was held all along */
    pthread_mutex_unlock(&g_mu);
    gate(false);
    CHECK(wait_done(4));
    CHECK_EQ_INT(VITD_OK, t[0].status);
    CHECK_EQ_INT(VITD_OK, t[3].status);
    for (int i = 0; i < 4; i++) CHECK_EQ_INT(1, t[i].n_done);
    check_not_encoded(2, 3, "dropped");
    check_results(&t[3], "after the dropped jobs");
    int jobs = -1;
    size_t queued = 1, booked = 1;
    sched_depth(s, &jobs, &queued, &booked);
    CHECK_EQ_INT(0, jobs);
    CHECK_MSG(queued == 0 && booked == 0, "queue %zu, booked %zu after all jobs", queued, booked);
    sched_free(s);
    for (int i = 0; i < 4; i++) tjob_release(&t[i]);
}

/* An encoder failure fails every job of the batch once, including one split across batches, and the next job
 * is served. */
static void test_encoder_failure(void) {
    printf("encoder failure\n");
    sched_config c = base_config();
    c.batch_max_images = 2;
    c.batch_delay_ms = 0;
    sched *s = start_sched(&c);
    unsigned long long rng = 13;
    tjob a, b, d;
    int pa[1] = {4}, pb[3] = {4, 4, 4}, pd[1] = {8};
    tjob_init(&a, 1, pa, 100, false, &rng);
    tjob_init(&b, 3, pb, 200, false, &rng);
    tjob_init(&d, 1, pd, 300, false, &rng);
    pthread_mutex_lock(&g_mu);
    g_fail_tag = 200; /* b's first image: batch {a0, b0} fails, b's rest must not run */
    pthread_mutex_unlock(&g_mu);
    gate(true);
    CHECK_EQ_INT(VITD_OK, tjob_submit(s, &a));
    CHECK(wait_in_encoder());
    CHECK_EQ_INT(VITD_OK, tjob_submit(s, &b));
    CHECK_EQ_INT(VITD_OK, tjob_submit(s, &d));
    gate(false);
    CHECK(wait_done(3));
    /* a ran alone (it was submitted first and held); then {b0, b1} failed */
    CHECK_EQ_INT(VITD_OK, a.status);
    CHECK_EQ_INT(VITD_E_GPU, b.status);
    CHECK_STR_CONTAINS(b.msg, "fake encoder failure");
    CHECK_EQ_INT(1, b.n_done);
    CHECK_EQ_INT(VITD_OK, d.status);
    check_results(&d, "after failure");
    /* synchronous: the failure is known before b's last image is packed, so it never runs; pipelined: it may
     * already be in flight (wasted work), but b still completes once, with the failure, after that batch */
    pthread_mutex_lock(&g_mu);
    for (int k = 0; !g_pipe && k < g_n_batches; k++)
        for (int i = 0; i < g_batches[k].n_images; i++)
            CHECK_MSG(g_batches[k].tags[i] != 202, "image 2 of the failed job was encoded");
    pthread_mutex_unlock(&g_mu);
    int qj;
    size_t qp, booked;
    sched_depth(s, &qj, &qp, &booked);
    CHECK_EQ_INT(0, booked);
    sched_free(s);
    tjob_release(&a);
    tjob_release(&b);
    tjob_release(&d);
}

/* Bookings: too large alone, busy when full, released by unreserve and by completion; stop refuses work. */
static void test_capacity_and_stop(void) {
    printf("capacity and stop\n");
    sched_config c = base_config();
    c.queue_max_tokens = 100;
    c.batch_delay_ms = 0;
    sched *s;
    vitd_err err = {0};
    CHECK_OK(sched_create(&c, &s, &err), &err);
    CHECK_EQ_INT(VITD_E_TOO_LARGE, sched_reserve(s, 101, &err));
    CHECK_STR_CONTAINS(err.msg, "queue_max_tokens 100");
    CHECK_EQ_INT(VITD_OK, sched_reserve(s, 60, &err));
    CHECK_EQ_INT(VITD_E_BUSY, sched_reserve(s, 41, &err));
    CHECK_STR_CONTAINS(err.msg, "queue full");
    CHECK_EQ_INT(VITD_OK, sched_reserve(s, 40, &err));
    sched_unreserve(s, 100);
    size_t booked;
    sched_depth(s, NULL, NULL, &booked);
    CHECK_EQ_INT(0, booked);

    /* stop with cancel: a held batch finishes, queued jobs are cancelled, later submissions refused */
    reset_records();
    g_jobs_done = 0;
    unsigned long long rng = 17;
    tjob t[3];
    int p[1] = {16};
    for (int i = 0; i < 3; i++) tjob_init(&t[i], 1, p, 100 * (i + 1), false, &rng);
    gate(true);
    CHECK_EQ_INT(VITD_OK, tjob_submit(s, &t[0]));
    CHECK(wait_in_encoder());
    CHECK_EQ_INT(VITD_OK, tjob_submit(s, &t[1]));
    CHECK_EQ_INT(VITD_OK, sched_reserve(s, t[2].job.n_patches, &err));
    sched_stop(s, true);
    CHECK_EQ_INT(1, t[1].n_done);
    CHECK_EQ_INT(VITD_E_CANCELLED, t[1].status);
    CHECK_EQ_INT(VITD_E_CANCELLED, sched_reserve(s, 4, &err));
    /* a job booked before the stop and submitted after it is refused without done() */
    CHECK_EQ_INT(VITD_E_CANCELLED, sched_submit(s, &t[2].job, &err));
    CHECK_EQ_INT(0, t[2].n_done);
    gate(false);
    CHECK(wait_done(2));
    CHECK_EQ_INT(VITD_OK, t[0].status);
    check_results(&t[0], "running at stop");
    sched_free(s);
    for (int i = 0; i < 3; i++) tjob_release(&t[i]);

    /* stop without cancel: queued work is finished */
    s = start_sched(&c);
    for (int i = 0; i < 3; i++) tjob_init(&t[i], 1, p, 100 * (i + 1), true, &rng);
    gate(true);
    CHECK_EQ_INT(VITD_OK, tjob_submit(s, &t[0]));
    CHECK(wait_in_encoder());
    CHECK_EQ_INT(VITD_OK, tjob_submit(s, &t[1]));
    CHECK_EQ_INT(VITD_OK, tjob_submit(s, &t[2]));
    sched_stop(s, false);
    gate(false);
    sched_free(s); /* joins after the queue drained */
    for (int i = 0; i < 3; i++) {
        CHECK_EQ_INT(1, t[i].n_done);
        CHECK_EQ_INT(VITD_OK, t[i].status);
        check_results(&t[i], "drained");
        tjob_release(&t[i]);
    }
}

/* The idle callback: called while nothing is queued or in flight, one piece at a time until it reports no more
 * work (3 calls for 2, 1, 0 left), not again while nothing happens, once more after a batch; never while a
 * batch is in the encoder or in flight. */
static int g_idle_calls, g_idle_left, g_idle_busy;

static int fake_idle(void *user) {
    (void)user;
    pthread_mutex_lock(&g_mu);
    g_idle_calls++;
    if (g_in_encoder || g_flight_n > 0) g_idle_busy++;
    int left = g_idle_left > 0 ? --g_idle_left : 0;
    pthread_mutex_unlock(&g_mu);
    return left;
}

static bool idle_calls(int n) { return g_idle_calls >= n; }

static bool wait_idle_calls(int n) { return poll_until(idle_calls, n, 10); }

static void test_idle(void) {
    printf("idle work\n");
    sched_config c = base_config();
    c.batch_delay_ms = 0;
    c.idle = fake_idle;
    pthread_mutex_lock(&g_mu);
    g_idle_calls = 0;
    g_idle_left = 3;
    g_idle_busy = 0;
    pthread_mutex_unlock(&g_mu);
    sched *s = start_sched(&c);
    CHECK(wait_idle_calls(3));
    struct timespec ts = {0, 50000000};
    nanosleep(&ts, NULL);
    pthread_mutex_lock(&g_mu);
    CHECK_EQ_INT(3, g_idle_calls); /* 2, 1, 0 left: then quiet */
    pthread_mutex_unlock(&g_mu);
    unsigned long long rng = 21;
    tjob t;
    int p[2] = {8, 12};
    tjob_init(&t, 2, p, 500, true, &rng);
    CHECK_EQ_INT(VITD_OK, tjob_submit(s, &t));
    CHECK(wait_done(1));
    CHECK(wait_idle_calls(4)); /* asked again after the batch */
    nanosleep(&ts, NULL);
    pthread_mutex_lock(&g_mu);
    CHECK_EQ_INT(4, g_idle_calls);
    CHECK_EQ_INT(0, g_idle_busy);
    pthread_mutex_unlock(&g_mu);
    CHECK_EQ_INT(VITD_OK, t.status);
    check_results(&t, "after idle work");
    sched_free(s);
    tjob_release(&t);
}

/* With idle_quiet_ms, idle work waits until the batcher has been idle that long: a client that sends its next
 * request as soon as the last answer came (a closed loop) never waits behind it. */
static void test_idle_quiet(void) {
    printf("idle work waits for a quiet batcher\n");
    sched_config c = base_config();
    c.batch_delay_ms = 0;
    c.idle = fake_idle;
    c.idle_quiet_ms = 300;
    pthread_mutex_lock(&g_mu);
    g_idle_calls = g_idle_busy = 0;
    g_idle_left = 1000000; /* always more */
    pthread_mutex_unlock(&g_mu);
    const double t0 = vitd_now();
    sched *s = start_sched(&c);
    CHECK(wait_idle_calls(1));
    const double first = vitd_now() - t0;
    printf("  first idle work %.0f ms after start (quiet period 300 ms)\n", first * 1e3);
    CHECK_MSG(first >= 0.3 - 1e-3, "idle work after %.3f s, before the quiet period", first);
    /* a closed loop of 40 jobs: the batcher is idle only for moments between them */
    enum { NJ = 40 };
    tjob *jobs = xcalloc(NJ, sizeof *jobs);
    unsigned long long rng = 29;
    int p[1] = {8};
    /* stop the idle work first (the fake reports nothing left; the batcher asks again only after a batch) */
    pthread_mutex_lock(&g_mu);
    g_idle_left = 0;
    pthread_mutex_unlock(&g_mu);
    struct timespec settle = {0, 20000000};
    nanosleep(&settle, NULL);
    pthread_mutex_lock(&g_mu);
    g_idle_left = 1000000;
    const int before = g_idle_calls;
    pthread_mutex_unlock(&g_mu);
    for (int j = 0; j < NJ; j++) {
        tjob_init(&jobs[j], 1, p, 10 * j, false, &rng);
        CHECK_EQ_INT(VITD_OK, tjob_submit(s, &jobs[j]));
        CHECK(wait_done(j + 1));
    }
    pthread_mutex_lock(&g_mu);
    const int during = g_idle_calls - before;
    CHECK_EQ_INT(0, g_idle_busy);
    pthread_mutex_unlock(&g_mu);
    printf("  %d pieces of idle work during a closed loop of %d jobs\n", during, NJ);
    CHECK_MSG(during <= NJ / 4, "idle work ran %d times between %d back-to-back jobs", during, NJ);
    for (int j = 0; j < NJ; j++) CHECK_EQ_INT(VITD_OK, jobs[j].status);
    sched_free(s);
    for (int j = 0; j < NJ; j++) tjob_release(&jobs[j]);
    free(jobs);
}

/* submit/wait with pipeline 1 (the server's choice for the CPU backend, which encodes inside submit): a batch is
 * waited for before the next is submitted, so no answer waits behind another batch. */
static void test_pipeline_one(void) {
    printf("submit/wait with pipeline 1\n");
    g_pipe = 1;
    sched_config c = base_config();
    c.pipeline = 1;
    c.batch_max_images = 1;
    c.batch_delay_ms = 0;
    g_flight_max = 0;
    sched *s = start_sched(&c);
    tjob t[6];
    unsigned long long rng = 31;
    int p[1] = {8};
    for (int j = 0; j < 6; j++) {
        tjob_init(&t[j], 1, p, 10 * j, true, &rng);
        CHECK_EQ_INT(VITD_OK, tjob_submit(s, &t[j]));
    }
    CHECK(wait_done(6));
    CHECK_EQ_INT(1, g_flight_max);
    for (int j = 0; j < 6; j++) {
        CHECK_EQ_INT(VITD_OK, t[j].status);
        check_results(&t[j], "pipeline 1");
    }
    sched_free(s);
    for (int j = 0; j < 6; j++) tjob_release(&t[j]);
    g_flight_max = 0;
}

int main(void) {
    test_pipeline_one();
    for (int pipe = 0; pipe < 2; pipe++) {
        g_pipe = pipe;
        printf("== %s encoder\n", pipe ? "pipelined (submit/wait)" : "synchronous");
        test_packing();
        test_split();
        test_delay();
        test_gone_and_timeout();
        test_deadline_while_busy();
        test_encoder_failure();
        test_capacity_and_stop();
        test_idle();
        test_idle_quiet();
    }
    /* the pipeline was used: some batch was submitted while another was in flight */
    CHECK_MSG(g_flight_max == 2, "never two batches in flight (max %d)", g_flight_max);
    CHECK_EQ_INT(0, g_flight_n);
    return check_done("test_sched");
}
