/* bench_http.c — loopback load on `vitd serve` beside the encoder alone, so the server's overhead shows as a ratio.
 *
 * 1. Encoder only (in this process, before any server runs): the image set is decoded and preprocessed on one
 *    thread (`prep mode=serial ...`, the CPU work the server adds), then vitd_encoder_run encodes the whole set as
 *    one batch, and each image alone; median of --reps runs after one warm-up.
 *    Lines: `encoder mode=batch images=8 patches=... ms=... img_s=...`.
 * 2. Server: starts `vitd serve` (or uses --port of a running one) and, for each concurrency (default 1,4,16,64),
 *    runs that many client threads, each on one keep-alive connection, sending the images of the set in turn as
 *    raw bodies (safetensors answers) for --seconds or --requests per thread, whichever ends first, after a
 *    warm-up request per thread. Lines: `http conc=4 requests=... images=... seconds=... req_s=... img_s=...
 *    p50_ms=... p99_ms=... errors=0 vs_encoder=0.93 vs_single=1.1` where vs_encoder = img_s / encoder batch img_s
 *    and vs_single = img_s / encoder one-image-at-a-time img_s; then `stages conc=4 receive_ms=... total_ms=...`,
 *    the server's mean time per request in each stage over that load (vitd_request_duration_seconds).
 *    The server's output cache answers repeated images without encoding them: pass `-- --output-cache-bytes=0`
 *    to measure the encoder path, leave it on to measure cached answers.
 *
 * Usage: bench_http [--model DIR] [--vitd PATH] [--port N] [--backend cpu|gpu|auto] [--images a.png,b.jpg,...]
 *                   [--conc 1,4,16,64] [--seconds 5] [--requests 1000] [--reps 5] [--target PATH?QUERY]
 *                   [-- extra serve flags...]
 * --target: the request's path and query (default /v1/encode), e.g. "/v1/encode?dtype=bfloat16".
 * Without --model a tiny demo model is written to a temporary directory with `vitd demo-model`.
 * Only 127.0.0.1 is used; every loop is bounded in count and time.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "loopback.h"
#include "image.h"
#include "prep_pool.h"
#include "preprocess.h"
#include "util.h"
#include "vitd.h"

#ifndef VITD_EXE
#define VITD_EXE "vitd"
#endif
#ifndef VITD_SOURCE_DIR
#define VITD_SOURCE_DIR "."
#endif

#define MAX_IMAGES 64

static const char *g_target = "/v1/encode"; /* --target: the request line's path and query */

typedef struct {
    char path[1024];
    const char *ctype;
    uint8_t *data;
    size_t len;
} bench_image;

static bench_image g_img[MAX_IMAGES];
static int g_n_img;

static const char *ctype_of(const char *path) {
    const char *dot = strrchr(path, '.');
    if (!dot) return "application/octet-stream";
    if (!strcasecmp(dot, ".png")) return "image/png";
    if (!strcasecmp(dot, ".jpg") || !strcasecmp(dot, ".jpeg")) return "image/jpeg";
    if (!strcasecmp(dot, ".bmp")) return "image/bmp";
    if (!strcasecmp(dot, ".gif")) return "image/gif";
    return "application/octet-stream";
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double percentile(double *v, size_t n, double p) {
    if (n == 0) return 0;
    qsort(v, n, sizeof *v, cmp_double);
    size_t i = (size_t)(p * (double)(n - 1) + 0.5);
    return v[i < n ? i : n - 1];
}

/* ---- encoder only ---- */

/* Encodes the whole set as one batch and each image alone; prints one line per mode. Returns the batch img/s. */
static double bench_encoder(const char *model_dir, const char *backend, int reps, double *single_ips) {
    vitd_err err = {0};
    vitd_model *m = NULL;
    vitd_encoder *enc = NULL;
    if (vitd_model_load(model_dir, &m, &err) != VITD_OK) {
        fprintf(stderr, "bench_http: model %s: %s\n", model_dir, err.msg);
        return 0;
    }
    const vitd_vision_config *vc = vitd_model_config(m);
    const vitd_preproc_config *pp = vitd_model_preproc(m);
    size_t row = preprocess_row_width(pp), merge = (size_t)vc->spatial_merge_size * vc->spatial_merge_size;
    vitd_grid grids[MAX_IMAGES];
    size_t off[MAX_IMAGES + 1];
    off[0] = 0;
    for (int i = 0; i < g_n_img; i++) {
        image_format fmt;
        uint32_t w, h;
        if (image_probe(g_img[i].data, g_img[i].len, &fmt, &w, &h, &err) != VITD_OK ||
            preprocess_plan(h, w, pp, &grids[i], &err) != VITD_OK) {
            fprintf(stderr, "bench_http: %s: %s\n", g_img[i].path, err.msg);
            vitd_model_free(m);
            return 0;
        }
        off[i + 1] = off[i] + (size_t)grids[i].t * grids[i].h * grids[i].w;
    }
    size_t N = off[g_n_img], D = (size_t)vc->out_hidden_size, nds = (size_t)(vc->n_deepstack ? vc->n_deepstack : 1);
    float *pv = malloc(N * row * sizeof(float)), *emb = malloc(N / merge * D * sizeof(float));
    float *ds = malloc(N / merge * D * nds * sizeof(float));
    double ips = 0;
    vitd_encoder_opts eo = vitd_encoder_opts_default();
    eo.backend = backend;
    eo.max_batch_tokens = N;
    if (!pv || !emb || !ds) {
        fprintf(stderr, "bench_http: out of memory for %zu patches\n", N);
        goto done;
    }
    /* decode + preprocess the set on one thread: the CPU work the server adds per image */
    double tp[64];
    int prep_reps = reps > 64 ? 64 : reps;
    for (int r = -1; r < prep_reps; r++) {
        double t0 = vitd_now();
        for (int i = 0; i < g_n_img; i++)
            if (prep_image(g_img[i].data, g_img[i].len, 0, pp, &grids[i], pv + off[i] * row, NULL, &err) != VITD_OK) {
                fprintf(stderr, "bench_http: %s: %s\n", g_img[i].path, err.msg);
                goto done;
            }
        if (r >= 0) tp[r] = vitd_now() - t0;
    }
    double prep_med = percentile(tp, (size_t)prep_reps, 0.5);
    printf("prep mode=serial images=%d patches=%zu ms=%.3f img_s=%.2f\n", g_n_img, N, prep_med * 1e3,
           g_n_img / prep_med);
    if (vitd_encoder_create(m, &eo, &enc, &err) != VITD_OK) {
        fprintf(stderr, "bench_http: encoder: %s\n", err.msg);
        goto done;
    }
    double t[64];
    if (reps > 64) reps = 64;
    /* the whole set in one batch */
    vitd_batch b = {.n_images = g_n_img, .grids = grids, .pixel_values = pv, .embeddings = emb, .deepstack = ds};
    for (int r = -1; r < reps; r++) {
        double t0 = vitd_now();
        if (vitd_encoder_run(enc, &b, &err) != VITD_OK) {
            fprintf(stderr, "bench_http: encode: %s\n", err.msg);
            goto done;
        }
        if (r >= 0) t[r] = vitd_now() - t0;
    }
    double med = percentile(t, (size_t)reps, 0.5);
    ips = g_n_img / med;
    printf("encoder mode=batch backend=%s attn=%s images=%d patches=%zu ms=%.3f img_s=%.2f\n",
           vitd_encoder_backend(enc), vitd_encoder_attn_dtype(enc), g_n_img, N, med * 1e3, ips);
    /* each image alone, the set once per rep */
    for (int r = -1; r < reps; r++) {
        double t0 = vitd_now();
        for (int i = 0; i < g_n_img; i++) {
            vitd_batch one = {.n_images = 1, .grids = &grids[i], .pixel_values = pv + off[i] * row,
                              .embeddings = emb, .deepstack = ds};
            if (vitd_encoder_run(enc, &one, &err) != VITD_OK) {
                fprintf(stderr, "bench_http: encode: %s\n", err.msg);
                goto done;
            }
        }
        if (r >= 0) t[r] = vitd_now() - t0;
    }
    med = percentile(t, (size_t)reps, 0.5);
    *single_ips = g_n_img / med;
    printf("encoder mode=single backend=%s attn=%s images=%d patches=%zu ms=%.3f img_s=%.2f\n",
           vitd_encoder_backend(enc), vitd_encoder_attn_dtype(enc), g_n_img, N, med * 1e3, g_n_img / med);
done:
    vitd_encoder_free(enc);
    vitd_model_free(m);
    free(pv);
    free(emb);
    free(ds);
    return ips;
}

/* ---- HTTP client ---- */

/* Reads one response on a keep-alive connection; returns the status (0 on failure). *closing: the server said
 * Connection: close. The body is read into a reused buffer and dropped. */
static int read_response(int fd, char **buf, size_t *cap, bool *closing) {
    char head[8192];
    size_t hl = 0;
    char *end = NULL;
    while (!end) {
        if (hl >= sizeof head - 1) return 0;
        ssize_t k = recv(fd, head + hl, 1, 0); /* headers byte by byte: small, and never reads past them */
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return 0;
        hl += (size_t)k;
        head[hl] = 0;
        if (hl >= 4 && !memcmp(head + hl - 4, "\r\n\r\n", 4)) end = head + hl;
    }
    int status = 0;
    if (sscanf(head, "HTTP/1.%*d %d", &status) != 1) return 0;
    const char *cl = strcasestr(head, "\r\nContent-Length:");
    size_t n = cl ? strtoull(cl + 17, NULL, 10) : 0;
    *closing = strcasestr(head, "\r\nConnection: close") != NULL;
    if (n > *cap) {
        free(*buf);
        *buf = malloc(n);
        *cap = *buf ? n : 0;
        if (!*buf) return 0;
    }
    size_t got = 0;
    while (got < n) {
        ssize_t k = recv(fd, *buf + got, n - got, 0);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return 0;
        got += (size_t)k;
    }
    return status;
}

/* ---- load ---- */

typedef struct {
    int port, index;
    double seconds;             /* sending time after the start barrier */
    pthread_barrier_t *start;   /* every worker has done its warm-up request: the clock starts */
    int max_requests;
    double *lat;                /* [max_requests] seconds */
    int n, errors, images;
} worker;

/* One request on *fd (reconnecting when needed); returns the HTTP status, 0 on failure. */
static int one_request(worker *w, int *fd, int k, char **buf, size_t *cap, double *dt) {
    if (*fd < 0 && (*fd = loopback_connect(w->port, 120)) < 0) return 0;
    const bench_image *im = &g_img[(w->index + k) % g_n_img];
    char head[512];
    int hn = snprintf(head, sizeof head, "POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: %s\r\n"
                      "Accept: application/vnd.safetensors\r\nContent-Length: %zu\r\n\r\n", g_target, im->ctype,
                      im->len);
    double t0 = vitd_now();
    bool closing = false;
    int status = loopback_send_all(*fd, head, (size_t)hn) && loopback_send_all(*fd, im->data, im->len)
                     ? read_response(*fd, buf, cap, &closing) : 0;
    *dt = vitd_now() - t0;
    if (status == 0 || closing) {
        close(*fd);
        *fd = -1;
    }
    return status;
}

/* A client: one warm-up request (not counted), the start barrier, then requests until its time or count ends. */
static void *worker_main(void *arg) {
    worker *w = arg;
    int fd = -1;
    char *buf = NULL;
    size_t cap = 0;
    double dt;
    one_request(w, &fd, 0, &buf, &cap, &dt);
    pthread_barrier_wait(w->start);
    double until = vitd_now() + w->seconds;
    for (int k = 0; k < w->max_requests && vitd_now() < until; k++) {
        int status = one_request(w, &fd, k, &buf, &cap, &dt);
        if (status != 200) {
            w->errors++;
            if (status == 0 && fd < 0 && (fd = loopback_connect(w->port, 120)) < 0) break;
            continue;
        }
        w->lat[w->n++] = dt;
        w->images++;
    }
    if (fd >= 0) close(fd);
    free(buf);
    return NULL;
}

/* ---- the server's own account of where the time goes ---- */

static const char *const k_stages[] = {"receive", "decode", "preprocess", "queue", "encode", "resume", "answer",
                                       "send", "total"};
enum { N_STAGES = sizeof k_stages / sizeof k_stages[0] };

/* Sums and counts of vitd_request_duration_seconds{stage} from /metrics; false when they cannot be had. */
static bool fetch_stages(int port, double *sum, double *cnt) {
    int fd = loopback_connect(port, 30);
    if (fd < 0) return false;
    const char *req = "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    char *buf = NULL;
    size_t cap = 0;
    bool closing = false;
    int status = loopback_send_all(fd, req, strlen(req)) ? read_response(fd, &buf, &cap, &closing) : 0;
    close(fd);
    bool ok = status == 200 && buf;
    for (int i = 0; ok && i < N_STAGES; i++) {
        char key[96];
        snprintf(key, sizeof key, "vitd_request_duration_seconds_sum{stage=\"%s\"} ", k_stages[i]);
        const char *p = strstr(buf, key);
        sum[i] = p ? strtod(p + strlen(key), NULL) : 0;
        snprintf(key, sizeof key, "vitd_request_duration_seconds_count{stage=\"%s\"} ", k_stages[i]);
        p = strstr(buf, key);
        cnt[i] = p ? strtod(p + strlen(key), NULL) : 0;
    }
    free(buf);
    return ok;
}

/* Runs conc clients and prints one `http conc=...` line. The clock starts once every client has warmed up, so
 * the warm-up requests (conc of them, queued together) are not counted in the elapsed time. */
static void bench_load(int port, int conc, double seconds, int max_requests, double encoder_ips,
                       double single_ips) {
    worker *w = calloc((size_t)conc, sizeof *w);
    pthread_t *th = calloc((size_t)conc, sizeof *th);
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, (unsigned)conc + 1);
    for (int i = 0; i < conc; i++) {
        w[i] = (worker){.port = port, .index = i, .seconds = seconds, .start = &start, .max_requests = max_requests};
        w[i].lat = malloc((size_t)max_requests * sizeof(double));
        pthread_create(&th[i], NULL, worker_main, &w[i]);
    }
    pthread_barrier_wait(&start);
    double s0[N_STAGES], c0[N_STAGES], s1[N_STAGES], c1[N_STAGES];
    bool stages = fetch_stages(port, s0, c0);
    double t0 = vitd_now();
    int n = 0, errors = 0, images = 0;
    for (int i = 0; i < conc; i++) {
        pthread_join(th[i], NULL);
        n += w[i].n;
        errors += w[i].errors;
        images += w[i].images;
    }
    double elapsed = vitd_now() - t0;
    pthread_barrier_destroy(&start);
    double *all = malloc((size_t)(n > 0 ? n : 1) * sizeof(double));
    int k = 0;
    for (int i = 0; i < conc; i++)
        for (int j = 0; j < w[i].n; j++) all[k++] = w[i].lat[j];
    double p50 = percentile(all, (size_t)n, 0.5), p99 = percentile(all, (size_t)n, 0.99);
    double ips = images / elapsed;
    printf("http conc=%d requests=%d images=%d seconds=%.2f req_s=%.2f img_s=%.2f p50_ms=%.2f p99_ms=%.2f "
           "errors=%d vs_encoder=%.3f vs_single=%.3f\n", conc, n, images, elapsed, n / elapsed, ips, p50 * 1e3,
           p99 * 1e3, errors, encoder_ips > 0 ? ips / encoder_ips : 0, single_ips > 0 ? ips / single_ips : 0);
    /* mean ms per request of each stage over this load (requests that reached it), from the server's histograms */
    if (stages && fetch_stages(port, s1, c1)) {
        printf("stages conc=%d", conc);
        for (int i = 0; i < N_STAGES; i++) {
            double dc = c1[i] - c0[i];
            printf(" %s_ms=%.3f", k_stages[i], dc > 0 ? (s1[i] - s0[i]) / dc * 1e3 : 0.0);
        }
        printf("\n");
    }
    fflush(stdout);
    for (int i = 0; i < conc; i++) free(w[i].lat);
    free(all);
    free(w);
    free(th);
}

/* ---- server process ---- */

typedef struct {
    pid_t pid;
    int port;
    FILE *log;
    FILE *in;            /* the server's stderr */
    pthread_t reader;    /* copies it to log until EOF, so the server never blocks on a full pipe */
    bool reading;
} child;

static void *log_reader(void *arg) {
    child *c = arg;
    char line[8192];
    while (fgets(line, sizeof line, c->in))
        if (c->log) fputs(line, c->log);
    return NULL;
}

/* Starts `vitd serve` with --port 0 and waits (bounded) for its ready line; stderr goes to log_path. */
static bool serve_start(child *c, const char *vitd, const char *model, const char *backend, char **extra,
                        int n_extra, const char *log_path) {
    int p[2];
    if (pipe(p) != 0) return false;
    char a_model[1100], a_backend[64];
    snprintf(a_model, sizeof a_model, "--model=%.1000s", model);
    snprintf(a_backend, sizeof a_backend, "--backend=%s", backend);
    char *argv[64] = {(char *)vitd, "serve", a_model, a_backend, "--host=127.0.0.1", "--port=0",
                      "--access-log=false", "--max-connections=1024"};
    int n = 8;
    for (int i = 0; i < n_extra && n < 62; i++) argv[n++] = extra[i];
    argv[n] = NULL;
    c->pid = fork();
    if (c->pid < 0) return false;
    if (c->pid == 0) {
        dup2(p[1], 2);
        close(p[0]);
        close(p[1]);
        execv(vitd, argv);
        _exit(127);
    }
    close(p[1]);
    c->log = fopen(log_path, "w");
    FILE *in = fdopen(p[0], "r");
    char line[8192];
    bool ready = false;
    double until = vitd_now() + 300;
    while (!ready && vitd_now() < until && fgets(line, sizeof line, in)) {
        if (c->log) fputs(line, c->log);
        const char *q;
        if (strstr(line, " listening ") && (q = strstr(line, " port="))) c->port = atoi(q + 6);
        if (strstr(line, " info ready")) ready = true;
    }
    c->in = in;
    c->reading = pthread_create(&c->reader, NULL, log_reader, c) == 0;
    return ready && c->port > 0;
}

static int serve_stop(child *c) {
    kill(c->pid, SIGTERM);
    int st = 0;
    waitpid(c->pid, &st, 0);
    if (c->reading) pthread_join(c->reader, NULL);
    if (c->in) fclose(c->in);
    if (c->log) fclose(c->log);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static bool load_images(const char *list) {
    static const char *defaults[] = {"chelsea.png", "rocket.jpg", "photo_q90_420.jpg", "photo_crop.png",
                                     "rgb8.png", "gray8.png", "pal8.png", "bmp24.bmp"};
    char names[MAX_IMAGES][1024];
    int n = 0;
    if (list) {
        const char *p = list;
        while (*p && n < MAX_IMAGES) {
            const char *e = strchr(p, ',');
            size_t l = e ? (size_t)(e - p) : strlen(p);
            snprintf(names[n++], sizeof names[0], "%.*s", (int)l, p);
            p = e ? e + 1 : p + l;
        }
    } else {
        for (size_t i = 0; i < sizeof defaults / sizeof *defaults; i++)
            snprintf(names[n++], sizeof names[0], "%s/tests/fixtures/images/%s", VITD_SOURCE_DIR, defaults[i]);
    }
    vitd_err err;
    for (int i = 0; i < n; i++) {
        bench_image *im = &g_img[g_n_img];
        snprintf(im->path, sizeof im->path, "%.1000s", names[i]);
        im->ctype = ctype_of(names[i]);
        if (image_read_file(names[i], &im->data, &im->len, &err) != VITD_OK) {
            fprintf(stderr, "bench_http: %s: %s\n", names[i], err.msg);
            return false;
        }
        g_n_img++;
    }
    return g_n_img > 0;
}

int main(int argc, char **argv) {
    const char *model = NULL, *vitd = VITD_EXE, *backend = "cpu", *images = NULL, *conc_list = "1,4,16,64";
    double seconds = 5;
    int max_requests = 1000, port = 0, reps = 5, n_extra = 0;
    char **extra = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        bool has = i + 1 < argc;
        if (!strcmp(a, "--") ) {
            extra = argv + i + 1;
            n_extra = argc - i - 1;
            break;
        } else if (!strcmp(a, "--model") && has) model = argv[++i];
        else if (!strcmp(a, "--vitd") && has) vitd = argv[++i];
        else if (!strcmp(a, "--backend") && has) backend = argv[++i];
        else if (!strcmp(a, "--images") && has) images = argv[++i];
        else if (!strcmp(a, "--conc") && has) conc_list = argv[++i];
        else if (!strcmp(a, "--seconds") && has) seconds = atof(argv[++i]);
        else if (!strcmp(a, "--target") && has) g_target = argv[++i];
        else if (!strcmp(a, "--requests") && has) max_requests = atoi(argv[++i]);
        else if (!strcmp(a, "--reps") && has) reps = atoi(argv[++i]);
        else if (!strcmp(a, "--port") && has) port = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: bench_http [--model DIR] [--vitd PATH] [--port N] [--backend cpu|gpu|auto] "
                            "[--images a,b,...] [--conc 1,4,16,64] [--seconds S] [--requests N] [--reps N] "
                            "[--target PATH] [-- serve flags...]\n");
            return 2;
        }
    }
    if (seconds <= 0 || seconds > 600 || max_requests < 1 || max_requests > 1000000 || reps < 1) {
        fprintf(stderr, "bench_http: --seconds in (0, 600], --requests in [1, 1e6], --reps >= 1\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (!load_images(images)) return 1;
    char tmp[] = "/tmp/vitd_bench_http_XXXXXX", model_buf[1100];
    if (!model) {
        if (!mkdtemp(tmp)) return 1;
        snprintf(model_buf, sizeof model_buf, "%s/tiny", tmp);
        pid_t pid = fork();
        if (pid == 0) {
            int devnull = open("/dev/null", O_WRONLY);
            dup2(devnull, 1);
            execl(vitd, vitd, "demo-model", "--preset", "tiny", "--out", model_buf, (char *)NULL);
            _exit(127);
        }
        int st = 0;
        waitpid(pid, &st, 0);
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            fprintf(stderr, "bench_http: %s demo-model failed\n", vitd);
            return 1;
        }
        model = model_buf;
    }
    struct utsname u;
    uname(&u);
    printf("# bench_http model=%s backend=%s images=%d host=%s cpus=%ld seconds=%.1f requests_per_thread<=%d\n",
           model, backend, g_n_img, u.nodename, sysconf(_SC_NPROCESSORS_ONLN), seconds, max_requests);

    double single_ips = 0, ips = bench_encoder(model, backend, reps, &single_ips);
    child c = {0};
    if (!port) {
        char log_path[1200];
        snprintf(log_path, sizeof log_path, "/tmp/vitd_bench_http_serve_%d.log", (int)getpid());
        if (!serve_start(&c, vitd, model, backend, extra, n_extra, log_path)) {
            fprintf(stderr, "bench_http: vitd serve did not become ready (log %s)\n", log_path);
            if (c.pid > 0) serve_stop(&c);
            return 1;
        }
        port = c.port;
        printf("# server pid=%d port=%d log=%s\n", (int)c.pid, port, log_path);
    }
    for (const char *p = conc_list; *p;) {
        int conc = atoi(p);
        if (conc >= 1 && conc <= 1024) bench_load(port, conc, seconds, max_requests, ips, single_ips);
        const char *e = strchr(p, ',');
        if (!e) break;
        p = e + 1;
    }
    int rc = 0;
    if (c.pid > 0) {
        rc = serve_stop(&c);
        printf("# server exit=%d\n", rc);
    }
    for (int i = 0; i < g_n_img; i++) free(g_img[i].data);
    if (model == model_buf) {
        if (check_rm_tree(tmp) != 0) fprintf(stderr, "bench_http: could not remove %s\n", tmp);
    }
    return rc;
}
