/* serve.c — `vitd serve`: builds the service in dependency order, runs it, and takes it down in reverse.
 *
 *   config (file < env < flags) -> log -> metrics -> model -> encoder -> prep pool -> [ec cache + io pool] ->
 *   batcher -> HTTP daemon -> warm-up batch through the batcher -> /ready 200 -> [EPD proxy registration] ->
 *   wait for SIGTERM/SIGINT -> drain (the proxy registration is withdrawn first) -> free everything.
 *
 * Signals: the SIGTERM/SIGINT handler only writes the signal number into a self-pipe (libraries such as OpenBLAS
 * start threads before main, so the signals cannot be blocked everywhere for a signalfd); the main thread reads
 * the pipe, so no work happens in the handler. The first signal starts the drain:
 * /ready turns 503, new encode requests get 503 + Retry-After, requests already started are answered; after
 * drain_timeout_ms (or a second signal) whatever is still queued is cancelled (503) and the process exits 0.
 */
#include "serve.h"

#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "ec_cache.h"
#include "epd.h"
#include "http.h"
#include "log.h"
#include "metrics.h"
#include "output_cache.h"
#include "prep_pool.h"
#include "preprocess.h"
#include "scheduler.h"
#include "util.h"
#include "vitd.h"

#ifndef VITD_VERSION
#define VITD_VERSION "0.1.0"
#endif

/* The byte the batcher writes into the signal pipe when the device failed (not a signal number). */
#define SERVE_DEVICE_FAILED 255
/* The exit status after a device failure: the orchestrator restarts the process. */
#define SERVE_EXIT_DEVICE 3

/* What the batcher's callbacks need. */
typedef struct {
    vitd_encoder *enc;
    metrics_vitd *metrics;
    const char *attn;
    _Atomic(http_server *) http; /* set once serving starts; /ready reports a failed device through it */
    atomic_bool failed;          /* the device failure was reported (once) */
} serve_ctx;

static int g_sig_pipe[2] = {-1, -1}; /* [0] read by the main thread, [1] written by the handler (and by the
                                        batcher for a device failure) */

static vitd_status serve_submit(void *user, const vitd_batch *b, vitd_err *err) {
    serve_ctx *c = user;
    return vitd_encoder_submit(c->enc, b, err);
}

static vitd_status serve_wait(void *user, vitd_err *err) {
    serve_ctx *c = user;
    return vitd_encoder_wait(c->enc, err);
}

static int serve_idle(void *user) {
    serve_ctx *c = user;
    return vitd_encoder_idle(c->enc);
}

static void serve_on_batch(void *user, int n_images, size_t n_patches, double encode_s, vitd_status s) {
    serve_ctx *c = user;
    vitd_err why;
    if (s != VITD_OK && vitd_encoder_failed(c->enc, &why) && !atomic_exchange(&c->failed, true)) {
        /* nothing more can be encoded here: /ready says so at once, and the main thread winds the process down */
        log_msg(VITD_LOG_ERROR, "device failed: %s; answering what can still be answered, then exiting with "
                "status %d to be restarted", why.msg, SERVE_EXIT_DEVICE);
        http_server *h = atomic_load(&c->http);
        if (h) http_set_failed(h);
        unsigned char b = SERVE_DEVICE_FAILED;
        if (g_sig_pipe[1] >= 0) (void)!write(g_sig_pipe[1], &b, 1);
    }
    /* the path this batch took (auto routes per batch), so vitd_batches_total{attn} counts each path */
    const char *attn = vitd_encoder_last_attn(c->enc);
    if (s == VITD_OK && c->metrics) metrics_vitd_batch(c->metrics, *attn ? attn : c->attn, n_images, n_patches);
    log_msg(s == VITD_OK ? VITD_LOG_DEBUG : VITD_LOG_ERROR, "batch images=%d patches=%zu encode_ms=%.2f status=%s",
            n_images, n_patches, encode_s * 1e3, vitd_status_name(s));
}

/* ---- warm-up: one tiny synthetic job through the batcher (so it never races a real request) ---- */

typedef struct {
    sched_job job;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool done;
    vitd_status status;
    vitd_err err;
} warmup_job;

static void warmup_done(sched_job *j, vitd_status s, const vitd_err *err) {
    warmup_job *w = (warmup_job *)j;
    pthread_mutex_lock(&w->mu);
    w->status = s;
    if (err) w->err = *err;
    w->done = true;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

/* Runs a 2m x 2m-patch image of seeded values (deepstack included) and waits for it. Returns its status. */
static vitd_status warmup(sched *s, const vitd_model *m, const vitd_preproc_config *pp, vitd_err *err) {
    const vitd_vision_config *vc = vitd_model_config(m);
    int side = 2 * vc->spatial_merge_size;
    vitd_grid grid = {1, side, side};
    size_t patches = (size_t)side * side, row = preprocess_row_width(pp);
    size_t tokens = patches / ((size_t)vc->spatial_merge_size * vc->spatial_merge_size);
    float *pv = xmalloc(patches * row * sizeof(float));
    float *emb = xmalloc(tokens * (size_t)vc->out_hidden_size * sizeof(float));
    float *ds = xmalloc(tokens * (size_t)vc->out_hidden_size * (size_t)(vc->n_deepstack > 0 ? vc->n_deepstack : 1) *
                        sizeof(float));
    unsigned long long x = 0x9e3779b97f4a7c15ULL;
    for (size_t i = 0; i < patches * row; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        pv[i] = (float)((double)(x >> 11) / 9007199254740992.0 * 2.0 - 1.0);
    }
    warmup_job w = {0};
    pthread_mutex_init(&w.mu, NULL);
    pthread_cond_init(&w.cv, NULL);
    w.job.n_images = 1;
    w.job.grids = &grid;
    w.job.pixel_values = &pv;
    w.job.embeddings = &emb;
    w.job.deepstack = vc->n_deepstack > 0 ? &ds : NULL;
    w.job.n_patches = patches;
    w.job.done = warmup_done;
    double t0 = vitd_now();
    vitd_status st = sched_reserve(s, patches, err);
    if (st == VITD_OK) st = sched_submit(s, &w.job, err);
    if (st == VITD_OK) {
        pthread_mutex_lock(&w.mu);
        while (!w.done) pthread_cond_wait(&w.cv, &w.mu);
        pthread_mutex_unlock(&w.mu);
        st = w.status;
        if (st != VITD_OK) *err = w.err;
    }
    if (st == VITD_OK)
        log_msg(VITD_LOG_INFO, "warm-up batch done patches=%zu ms=%.1f", patches, (vitd_now() - t0) * 1e3);
    pthread_cond_destroy(&w.cv);
    pthread_mutex_destroy(&w.mu);
    free(pv);
    free(emb);
    free(ds);
    return st;
}

/* ---- signals ---- */


/* Async-signal-safe: one byte into the pipe (dropped if the pipe is full: one pending signal is enough). */
static void on_signal(int signo) {
    int saved = errno;
    unsigned char b = (unsigned char)signo;
    ssize_t n = write(g_sig_pipe[1], &b, 1);
    (void)n;
    errno = saved;
}

/* Creates the pipe and installs the handler for SIGTERM and SIGINT; SIGPIPE is ignored. Returns the read end. */
static int signals_install(void) {
    if (pipe2(g_sig_pipe, O_CLOEXEC | O_NONBLOCK) != 0) return -1;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    return g_sig_pipe[0];
}

/* Restores the default actions and closes the pipe. */
static void signals_remove(void) {
    signal(SIGTERM, SIG_DFL);
    signal(SIGINT, SIG_DFL);
    for (int i = 0; i < 2; i++) {
        if (g_sig_pipe[i] >= 0) close(g_sig_pipe[i]);
        g_sig_pipe[i] = -1;
    }
}

/* Reads one pending signal number from the pipe (waiting at most timeout_ms, -1 = forever); 0 if none. */
static int next_signal(int sfd, int timeout_ms) {
    struct pollfd p = {.fd = sfd, .events = POLLIN};
    int rc = poll(&p, 1, timeout_ms);
    if (rc <= 0) return 0;
    unsigned char b = 0;
    return read(sfd, &b, 1) == 1 ? (int)b : 0;
}

/* Waits until no request is live, up to timeout_ms; a second signal cuts it short. Returns true when idle. */
static bool drain_wait(http_server *h, int sfd, int timeout_ms) {
    double until = vitd_now() + timeout_ms * 1e-3;
    for (;;) {
        double left_ms = (until - vitd_now()) * 1e3;
        int slice = left_ms > 100 ? 100 : (int)(left_ms > 0 ? left_ms : 0);
        if (http_wait_idle(h, slice)) return true;
        if (vitd_now() >= until) return false;
        int sig = next_signal(sfd, 0);
        if (sig == SERVE_DEVICE_FAILED) {
            /* the device failed during the drain: serve_on_batch marked it (exit status 3); the batches still
             * queued fail fast and are answered 503, so the drain goes on */
            log_msg(VITD_LOG_WARN, "device failed during the drain: queued images are answered 503");
        } else if (sig) {
            log_msg(VITD_LOG_WARN, "second signal (%s): cancelling what is still queued", strsignal(sig));
            return false;
        }
    }
}

/* Logs the effective configuration as one structured line, `config version=... model=... port=...`, from
 * config_format_line()'s `key=value` tokens (values with spaces or quotes come quoted with \" and \\ escapes). */
static void log_config(const vitd_config *cfg) {
    char *line = config_format_line(cfg);
    log_line l;
    log_begin(&l, VITD_LOG_INFO, "config");
    log_str(&l, "version", VITD_VERSION);
    for (char *p = line; p && *p;) {
        while (*p == ' ') p++;
        char *eq = strchr(p, '=');
        if (!eq) break;
        *eq = 0;
        char *key = p, *v = eq + 1, *w = v;
        if (*v == '"') {
            for (v++; *v && *v != '"'; v++) {
                if (*v == '\\' && v[1]) v++;
                *w++ = *v;
            }
            if (*v == '"') v++;
        } else {
            while (*v && *v != ' ') *w++ = *v++;
        }
        char *next = *v ? v + 1 : v;
        *w = 0;
        log_str(&l, key, eq + 1);
        p = next;
    }
    log_end(&l);
    free(line);
}

/* The URL the EPD proxy reaches this instance at: ec_advertise_url, else http://host:port (IPv6 in brackets).
 * false (logged) when host is a wildcard address and nothing else says where this instance is. */
static bool advertise_url(const vitd_config *cfg, int port, char *out, size_t n) {
    if (cfg->ec_advertise_url[0]) {
        snprintf(out, n, "%s", cfg->ec_advertise_url);
        return true;
    }
    const char *h = cfg->host;
    if (!strcmp(h, "0.0.0.0") || !strcmp(h, "::") || !strcmp(h, "[::]")) {
        log_msg(VITD_LOG_ERROR, "ec_proxy_url is set and host is the wildcard %s: set ec_advertise_url to the URL "
                "the proxy reaches this instance at", h);
        return false;
    }
    if (strchr(h, ':')) snprintf(out, n, "http://[%s]:%d", h, port);
    else snprintf(out, n, "http://%s:%d", h, port);
    return true;
}

static int cpu_count(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

int serve_main(int argc, char **argv) {
    vitd_config cfg;
    config_args args = {0};
    vitd_err err = {0};
    int rc = 1, sfd = -1;
    metrics_vitd *metrics = NULL;
    vitd_model *model = NULL;
    vitd_encoder *enc = NULL;
    prep_pool *prep = NULL, *io = NULL;
    ec_cache *ec = NULL;
    output_cache *oc = NULL;
    epd_announcer *announcer = NULL;
    sched *sc = NULL;
    http_server *http = NULL;
    serve_ctx ctx = {0};

    if (config_load_args(&cfg, argc, argv, NULL, &args, &err) != VITD_OK) {
        log_msg(VITD_LOG_ERROR, "configuration: %s (vitd serve --help lists the options)", err.msg);
        config_args_release(&args);
        return 2;
    }
    if (args.help) {
        printf("usage: vitd serve [--config FILE] [--option value ...]\n\n"
               "Runs the HTTP service; SIGTERM or SIGINT drains it (in-flight requests are answered) and exits 0.\n\n");
        config_help(stdout);
        config_args_release(&args);
        return 0;
    }
    if (args.n_positional > 0) {
        log_msg(VITD_LOG_ERROR, "vitd serve takes no positional arguments (got '%s')", args.positional[0]);
        config_args_release(&args);
        return 2;
    }
    vitd_log_level level = VITD_LOG_INFO;
    log_format fmt = LOG_TEXT;
    log_level_parse(cfg.log_level, &level);
    log_format_parse(cfg.log_format, &fmt);
    log_setup(level, fmt, -1);
    log_set_access(cfg.access_log);
    log_install();
    for (int i = 0; i < args.n_unknown_env; i++)
        log_msg(VITD_LOG_WARN, "unknown environment variable %s (not a vitd option)", args.unknown_env[i]);
    log_config(&cfg);

    /* before any thread starts: threads beyond the arena count share arenas instead of each growing its own */
    if (cfg.malloc_arenas > 0) mallopt(M_ARENA_MAX, cfg.malloc_arenas);
    sfd = signals_install();
    if (sfd < 0) {
        log_msg(VITD_LOG_ERROR, "signal pipe: %s", strerror(errno));
        goto done;
    }

    if (cfg.ec_proxy_url[0] && (epd_check_url(cfg.ec_proxy_url, "ec_proxy_url", &err) != VITD_OK ||
                                (cfg.ec_advertise_url[0] &&
                                 epd_check_url(cfg.ec_advertise_url, "ec_advertise_url", &err) != VITD_OK))) {
        log_msg(VITD_LOG_ERROR, "configuration: %s", err.msg);
        rc = 2;
        goto done;
    }
    if (cfg.ec_proxy_url[0] && !cfg.ec_cache_dir[0]) {
        log_msg(VITD_LOG_ERROR, "configuration: ec_proxy_url needs ec_cache_dir (an encoder instance hands its "
                "embeddings over through the cache files; without them every request of the proxy would get 404)");
        rc = 2;
        goto done;
    }

    metrics = metrics_vitd_create();
    double t0 = vitd_now();
    if (vitd_model_load(cfg.model, &model, &err) != VITD_OK) {
        log_msg(VITD_LOG_ERROR, "model %s: %s", cfg.model, err.msg);
        goto done;
    }
    const vitd_vision_config *vc = vitd_model_config(model);
    vitd_preproc_config pp = *vitd_model_preproc(model);
    if (cfg.min_pixels) pp.min_pixels = cfg.min_pixels;
    if (cfg.max_pixels) pp.max_pixels = cfg.max_pixels;
    if (pp.min_pixels > pp.max_pixels) {
        log_msg(VITD_LOG_ERROR, "min_pixels %zu > max_pixels %zu (after applying the model's preprocessor config)",
                pp.min_pixels, pp.max_pixels);
        rc = 2;
        goto done;
    }
    /* The largest image the resize bounds allow (smart_resize keeps h*w <= max_pixels except for a few patches of
     * overshoot at extreme aspect ratios, which http.c refuses with 413). Such an image runs alone in its own
     * batch, so the encoder is sized for whichever is larger, it or a full batch. */
    size_t patch_px = (size_t)pp.patch_size * (size_t)pp.patch_size;
    size_t max_image_patches = pp.max_pixels / patch_px;
    size_t encoder_tokens = max_image_patches > cfg.batch_max_tokens ? max_image_patches : cfg.batch_max_tokens;
    if (cfg.queue_max_tokens < max_image_patches) {
        log_msg(VITD_LOG_ERROR, "queue_max_tokens %zu is smaller than the largest image (%zu patches at max_pixels "
                "%zu): such an image could never be queued", cfg.queue_max_tokens, max_image_patches, pp.max_pixels);
        rc = 2;
        goto done;
    }
    const vitd_preproc_config *mpp = vitd_model_preproc(model);
    if (pp.min_pixels != mpp->min_pixels || pp.max_pixels != mpp->max_pixels)
        log_msg(VITD_LOG_WARN, "min_pixels/max_pixels (%zu/%zu) differ from the model's preprocessor_config "
                "(%zu/%zu): an LLM engine taking vitd's embeddings must resize with the same bounds, or its "
                "placeholder count will not match the rows handed over", pp.min_pixels, pp.max_pixels,
                mpp->min_pixels, mpp->max_pixels);
    vitd_encoder_opts eo = vitd_encoder_opts_default();
    eo.backend = cfg.backend;
    eo.attn_dtype = cfg.attn_dtype;
    eo.linear_dtype = cfg.linear_dtype;
    eo.linear_fp8_gemms = cfg.linear_fp8_gemms;
    eo.no_cuda_graphs = !cfg.cuda_graphs;
    eo.no_gemm_tune = !cfg.gemm_tune;
    eo.fp8_precise_accum = !cfg.linear_fp8_fast_accum;
    eo.graph_max_tokens = (size_t)cfg.graph_max_tokens;
    eo.attn_short_max = cfg.attn_short_max < 0 ? 0 : cfg.attn_short_max ? cfg.attn_short_max : -1;
    eo.device = cfg.device;
    eo.threads = cfg.encoder_threads;
    eo.max_batch_tokens = encoder_tokens;
    eo.max_batch_images = cfg.batch_max_images;
    eo.defer_plan_builds = 1; /* no request waits for a cuDNN plan build: the batcher builds them when idle */
    eo.fp8_scales = cfg.fp8_scales[0] ? cfg.fp8_scales : NULL;
    eo.fp8_save_scales = cfg.fp8_save_scales[0] ? cfg.fp8_save_scales : NULL;
    eo.attn_route_file = cfg.attn_route_file[0] ? cfg.attn_route_file : NULL;
    eo.fp8_save_margin = cfg.fp8_save_margin;
    eo.fp8_history = cfg.fp8_history;
    if (vitd_encoder_create(model, &eo, &enc, &err) != VITD_OK) {
        log_msg(VITD_LOG_ERROR, "encoder (backend %s): %s", cfg.backend, err.msg);
        goto done;
    }
    ctx.enc = enc;
    ctx.metrics = metrics;
    ctx.attn = vitd_encoder_attn_dtype(enc);
    metrics_vitd_set_build(metrics, VITD_VERSION, vitd_encoder_backend(enc), ctx.attn);
    {
        log_line l;
        log_begin(&l, VITD_LOG_INFO, "model loaded");
        log_str(&l, "path", vitd_model_path(model));
        log_int(&l, "depth", vc->depth);
        log_int(&l, "hidden", vc->hidden_size);
        log_int(&l, "out_hidden", vc->out_hidden_size);
        log_int(&l, "deepstack", vc->n_deepstack);
        log_str(&l, "backend", vitd_encoder_backend(enc));
        log_str(&l, "attn_dtype", ctx.attn);
        log_str(&l, "attn_setting", cfg.attn_dtype);
        log_str(&l, "linear_dtype", vitd_encoder_linear_dtype(enc));
        log_double(&l, "ms", (vitd_now() - t0) * 1e3);
        log_end(&l);
    }

    int n_prep = cfg.prep_threads > 0 ? cfg.prep_threads : cpu_count();
    if (prep_pool_create(n_prep, &prep, &err) != VITD_OK) {
        log_msg(VITD_LOG_ERROR, "prep pool: %s", err.msg);
        goto done;
    }
    if (cfg.ec_cache_dir[0]) {
        if (ec_cache_open(cfg.ec_cache_dir, cfg.ec_cache_max_bytes, cfg.ec_cache_max_age_s, metrics, &ec, &err) !=
                VITD_OK ||
            prep_pool_create(n_prep < 4 ? n_prep : 4, &io, &err) != VITD_OK) {
            log_msg(VITD_LOG_ERROR, "ec cache: %s", err.msg);
            goto done;
        }
    }
    oc = output_cache_create(cfg.output_cache_bytes, metrics);
    sched_config sc_cfg = {.batch_max_tokens = cfg.batch_max_tokens, .batch_max_images = cfg.batch_max_images,
                           .batch_delay_ms = cfg.batch_delay_ms, .queue_max_tokens = cfg.queue_max_tokens,
                           .row_width = preprocess_row_width(&pp), .out_hidden = vc->out_hidden_size,
                           .n_deepstack = vc->n_deepstack,
                           .merge_patches = vc->spatial_merge_size * vc->spatial_merge_size,
                           .submit = serve_submit, .wait = serve_wait,
                           /* the CPU backend encodes inside submit: a second batch in flight would only hold the
                            * first one's answers back */
                           .pipeline = strcmp(vitd_encoder_backend(enc), "gpu") == 0 ? VITD_ENCODER_PIPELINE : 1,
                           .idle = serve_idle, .idle_quiet_ms = 200,
                           .encode_user = &ctx, .on_batch = serve_on_batch,
                           .batch_user = &ctx};
    if (sched_create(&sc_cfg, &sc, &err) != VITD_OK) {
        log_msg(VITD_LOG_ERROR, "scheduler: %s", err.msg);
        goto done;
    }
    http_opts ho = {.cfg = &cfg, .model = model, .backend = vitd_encoder_backend(enc), .attn_dtype = ctx.attn,
                    .encoder = enc,
                    .version = VITD_VERSION, .preproc = pp, .max_image_patches = max_image_patches,
                    .out_bf16 = vitd_encoder_native_bf16(enc) != 0,
                    .sched = sc, .prep = prep, .io = io, .ec = ec, .cache = oc, .metrics = metrics};
    if (http_start(&ho, &http, &err) != VITD_OK) {
        log_msg(VITD_LOG_ERROR, "http: %s", err.msg);
        goto done;
    }
    atomic_store(&ctx.http, http);
    {
        log_line l;
        log_begin(&l, VITD_LOG_INFO, "listening");
        log_str(&l, "host", cfg.host);
        log_int(&l, "port", http_port(http));
        log_int(&l, "http_threads", cfg.http_threads);
        log_int(&l, "prep_threads", n_prep);
        log_end(&l);
    }
    if (cfg.warmup && warmup(sc, model, &pp, &err) != VITD_OK) {
        log_msg(VITD_LOG_ERROR, "warm-up batch failed: %s", err.msg);
        goto done;
    }
    http_set_ready(http, true);
    log_msg(VITD_LOG_INFO, "ready");
    if (cfg.ec_proxy_url[0]) {
        char self[VITD_CONFIG_STR_MAX + 64];
        if (!advertise_url(&cfg, http_port(http), self, sizeof self)) goto done;
        if (epd_announcer_start(cfg.ec_proxy_url, self, cfg.ec_announce_interval_s, metrics, &announcer, &err) !=
            VITD_OK) {
            log_msg(VITD_LOG_ERROR, "EPD registration: %s", err.msg);
            goto done;
        }
    }

    int sig = 0;
    while (!sig) sig = next_signal(sfd, -1);
    bool device_failed = sig == SERVE_DEVICE_FAILED;
    if (device_failed) {
        /* queued work cannot be encoded any more: answered 503 (retry elsewhere) now, the rest as it ends */
        log_msg(VITD_LOG_ERROR, "device failed: draining live=%d, then exiting with status %d",
                http_live_requests(http), SERVE_EXIT_DEVICE);
        http_drain_begin(http);
        sched_stop(sc, true);
    } else {
        log_msg(VITD_LOG_INFO, "%s: draining live=%d timeout_ms=%d", strsignal(sig), http_live_requests(http),
                cfg.drain_timeout_ms);
        http_drain_begin(http);
    }
    epd_announcer_leave(announcer); /* the proxy stops routing here while the drain goes on */
    bool idle = drain_wait(http, sfd, cfg.drain_timeout_ms);
    if (!idle) {
        log_msg(VITD_LOG_WARN, "drain incomplete: cancelling %d live requests", http_live_requests(http));
        http_close_work(http);    /* uploads still arriving get 503, never a freed pool */
        sched_stop(sc, true);     /* queued jobs answer 503 now */
        prep_pool_stop(prep);     /* running prep tasks finish; their submissions are refused and answered */
        sched_free(sc);           /* the running batch finishes and is answered (a retry round that its failure
                                   * starts is refused by the stopped, still allocated prep pool: 503) */
        sc = NULL;
        prep_pool_free(prep);
        prep = NULL;
        prep_pool_free(io);       /* cache files of that batch are written and answered */
        io = NULL;
        http_wait_idle(http, 2000); /* give MHD a moment to send those answers */
    }
    rc = 0;

done:
    /* a device that failed at any time (warm-up, serving, the drain) exits 3, so the orchestrator restarts it */
    if (atomic_load(&ctx.failed)) rc = SERVE_EXIT_DEVICE;
    /* reverse order; every suspended connection is resumed before MHD stops (prep and batcher first) */
    epd_announcer_stop(announcer);
    if (http) http_close_work(http);
    if (sc) sched_stop(sc, true);
    prep_pool_stop(prep); /* stopped, not freed, until the batcher (which may start a retry round) is joined */
    sched_free(sc);
    prep_pool_free(prep);
    prep_pool_free(io);
    http_free(http);
    output_cache_free(oc);
    ec_cache_free(ec);
    vitd_encoder_free(enc);
    vitd_model_free(model);
    metrics_vitd_free(metrics);
    if (sfd >= 0) signals_remove();
    config_args_release(&args);
    if (rc == 0) log_msg(VITD_LOG_INFO, "stopped");
    else if (rc == SERVE_EXIT_DEVICE) log_msg(VITD_LOG_ERROR, "stopped after a device failure (exit %d)", rc);
    return rc;
}
