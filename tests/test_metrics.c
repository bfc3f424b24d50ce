/* labels: unit */
/* test_metrics.c — the Prometheus registry: exact exposition lines for recorded values, a parser that reads the
 * text back (HELP/TYPE before samples, label unescaping, cumulative buckets ending in +Inf equal to _count and to
 * the number of observations, _sum equal to their sum), label and help escaping, the bounded-series overflow,
 * vitd's predefined metrics, and threads recording (and creating series) concurrently while another renders. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "metrics.h"

/* ---- a small parser of the text format ---- */

typedef struct {
    char name[128];
    int n_labels;
    char label[6][32];
    char value_text[6][160]; /* unescaped */
    double value;
} sample;

typedef struct {
    sample *s;
    int n;
    int errors;
} parsed;

/* Parses the exposition text; counts malformed lines and samples whose family has no # TYPE line before them. */
static parsed parse(const char *text) {
    parsed p = {calloc(20000, sizeof(sample)), 0, 0};
    char typed[64][128];
    int n_typed = 0;
    const char *line = text;
    while (*line) {
        const char *end = strchr(line, '\n');
        if (!end) { p.errors++; break; }
        char buf[2048];
        size_t len = (size_t)(end - line);
        if (len >= sizeof buf) { p.errors++; line = end + 1; continue; }
        memcpy(buf, line, len);
        buf[len] = '\0';
        line = end + 1;
        if (strncmp(buf, "# TYPE ", 7) == 0) {
            if (n_typed < 64) sscanf(buf + 7, "%127s", typed[n_typed++]);
            continue;
        }
        if (buf[0] == '#') continue;
        sample *s = &p.s[p.n];
        memset(s, 0, sizeof *s);
        char *q = buf;
        size_t nl = strcspn(q, "{ ");
        if (nl == 0 || nl >= sizeof s->name) { p.errors++; continue; }
        memcpy(s->name, q, nl);
        q += nl;
        if (*q == '{') {
            q++;
            while (*q && *q != '}') {
                size_t ln = strcspn(q, "=");
                if (q[ln] != '=' || q[ln + 1] != '"' || s->n_labels >= 6 || ln >= 32) { p.errors++; goto next; }
                memcpy(s->label[s->n_labels], q, ln);
                q += ln + 2;
                char *o = s->value_text[s->n_labels];
                while (*q && *q != '"') {
                    if (*q == '\\') {
                        q++;
                        *o++ = *q == 'n' ? '\n' : *q;
                    } else {
                        *o++ = *q;
                    }
                    q++;
                }
                if (*q != '"') { p.errors++; goto next; }
                q++;
                s->n_labels++;
                if (*q == ',') q++;
            }
            if (*q != '}') { p.errors++; continue; }
            q++;
        }
        if (*q != ' ') { p.errors++; continue; }
        char *vend;
        s->value = strcmp(q + 1, "+Inf") == 0 ? INFINITY : strtod(q + 1, &vend);
        if (strcmp(q + 1, "+Inf") != 0 && *vend) { p.errors++; continue; }
        /* the family (name without _bucket/_sum/_count) must have been typed already */
        bool ok = false;
        for (int i = 0; i < n_typed; i++) {
            size_t tl = strlen(typed[i]);
            if (strncmp(s->name, typed[i], tl) == 0 &&
                (s->name[tl] == '\0' || strcmp(s->name + tl, "_bucket") == 0 || strcmp(s->name + tl, "_sum") == 0 ||
                 strcmp(s->name + tl, "_count") == 0))
                ok = true;
        }
        if (!ok) p.errors++;
        p.n++;
    next:;
    }
    return p;
}

static const char *label_of(const sample *s, const char *name) {
    for (int i = 0; i < s->n_labels; i++)
        if (strcmp(s->label[i], name) == 0) return s->value_text[i];
    return NULL;
}

/* Finds the sample with this name whose label `key` (if not NULL) has value `val`. */
static const sample *find(const parsed *p, const char *name, const char *key, const char *val) {
    for (int i = 0; i < p->n; i++) {
        if (strcmp(p->s[i].name, name) != 0) continue;
        if (!key) return &p->s[i];
        const char *v = label_of(&p->s[i], key);
        if (v && strcmp(v, val) == 0) return &p->s[i];
    }
    return NULL;
}

/* Checks every histogram series in p named `name` (_bucket/_sum/_count) against want_count observations. Returns
 * the number of series checked. */
static int check_histogram(const parsed *p, const char *name, const char *key, const char *val, double want_count,
                           double want_sum) {
    char b[160], c[160], s[160];
    snprintf(b, sizeof b, "%s_bucket", name);
    snprintf(c, sizeof c, "%s_count", name);
    snprintf(s, sizeof s, "%s_sum", name);
    double prev = -1, prev_le = -INFINITY, last = -1;
    int buckets = 0;
    for (int i = 0; i < p->n; i++) {
        const sample *x = &p->s[i];
        if (strcmp(x->name, b) != 0) continue;
        if (key && (!label_of(x, key) || strcmp(label_of(x, key), val) != 0)) continue;
        const char *le = label_of(x, "le");
        CHECK(le != NULL);
        if (!le) continue;
        double lev = strcmp(le, "+Inf") == 0 ? INFINITY : strtod(le, NULL);
        CHECK_MSG(lev > prev_le, "%s: le %s out of order", name, le);
        CHECK_MSG(x->value >= prev, "%s: bucket le=%s = %g below the previous %g (not cumulative)", name, le,
                  x->value, prev);
        prev = x->value;
        prev_le = lev;
        last = x->value;
        buckets++;
    }
    CHECK_MSG(prev_le == INFINITY, "%s: last bucket is not +Inf", name);
    const sample *cs = find(p, c, key, val), *ss = find(p, s, key, val);
    CHECK(cs && ss);
    if (cs) {
        CHECK_MSG(cs->value == last, "%s: _count %g != +Inf bucket %g", name, cs->value, last);
        CHECK_MSG(cs->value == want_count, "%s: _count %g, want %g observations", name, cs->value, want_count);
    }
    if (ss) CHECK_MSG(ss->value == want_sum, "%s: _sum %.17g, want %.17g", name, ss->value, want_sum);
    return buckets;
}

static void test_basic(void) {
    metrics_registry *r = metrics_registry_create();
    metrics_family *req = metrics_counter(r, "t_requests_total", "Requests.", "route", "status", NULL);
    metrics_family *g = metrics_gauge(r, "t_queue", "Queue depth.", NULL);
    static const double bounds[] = {0.25, 1, 10};
    metrics_family *h = metrics_histogram(r, "t_seconds", "Stage time.", bounds, 3, "stage", NULL);
    metrics_family *plain = metrics_histogram(r, "t_plain", "No labels.", bounds, 3, NULL);
    metrics_family *odd = metrics_counter(r, "t_odd_total", "Help with \\ backslash\nand newline.", "v", NULL);
    metrics_family *unused = metrics_counter(r, "t_unused_total", "Never touched.", NULL);
    (void)unused;

    metrics_series *ok = metrics_series_get(req, "/v1/embeddings", "200", NULL);
    metrics_inc(ok);
    metrics_inc(metrics_series_get(req, "/v1/embeddings", "200", NULL));
    metrics_add(ok, 1);
    CHECK(metrics_series_get(req, "/v1/embeddings", "200", NULL) == ok);
    metrics_inc(metrics_series_get(req, "/v1/embeddings", "413", NULL));
    CHECK(metrics_value(ok) == 3);
    metrics_series *q = metrics_series_get(g, NULL);
    metrics_set(q, 10);
    metrics_add(q, -2.5);
    CHECK(metrics_value(q) == 7.5);
    static const double obs[] = {0.125, 0.25, 0.5, 2, 20, 1}; /* 0.25 and 1 sit exactly on bounds */
    metrics_series *enc = metrics_series_get(h, "encode", NULL);
    double sum = 0;
    for (int i = 0; i < 6; i++) {
        metrics_observe(enc, obs[i]);
        sum += obs[i];
    }
    metrics_observe(enc, NAN); /* ignored */
    metrics_series_get(h, "queue", NULL);
    metrics_observe(metrics_series_get(plain, NULL), 0.1);
    const char *weird = "a\"b\\c\nd";
    metrics_inc(metrics_series_get(odd, weird, NULL));

    size_t len = 0;
    char *text = metrics_render(r, &len);
    CHECK(text && len == strlen(text));
    printf("%s", text);
    const char *want[] = {
        "# HELP t_requests_total Requests.\n# TYPE t_requests_total counter\n"
        "t_requests_total{route=\"/v1/embeddings\",status=\"200\"} 3\n"
        "t_requests_total{route=\"/v1/embeddings\",status=\"413\"} 1\n",
        "# TYPE t_queue gauge\nt_queue 7.5\n",
        "# TYPE t_seconds histogram\n"
        "t_seconds_bucket{stage=\"encode\",le=\"0.25\"} 2\n"
        "t_seconds_bucket{stage=\"encode\",le=\"1\"} 4\n"
        "t_seconds_bucket{stage=\"encode\",le=\"10\"} 5\n"
        "t_seconds_bucket{stage=\"encode\",le=\"+Inf\"} 6\n"
        "t_seconds_sum{stage=\"encode\"} 23.875\n"
        "t_seconds_count{stage=\"encode\"} 6\n"
        "t_seconds_bucket{stage=\"queue\",le=\"0.25\"} 0\n",
        "t_seconds_count{stage=\"queue\"} 0\n",
        "t_plain_bucket{le=\"0.25\"} 1\nt_plain_bucket{le=\"1\"} 1\nt_plain_bucket{le=\"10\"} 1\n"
        "t_plain_bucket{le=\"+Inf\"} 1\nt_plain_sum 0.1\nt_plain_count 1\n",
        "# HELP t_odd_total Help with \\\\ backslash\\nand newline.\n",
        "t_odd_total{v=\"a\\\"b\\\\c\\nd\"} 1\n",
        "# TYPE t_unused_total counter\nt_unused_total 0\n",
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) CHECK_STR_CONTAINS(text, want[i]);

    parsed p = parse(text);
    CHECK_EQ_INT(0, p.errors);
    check_histogram(&p, "t_seconds", "stage", "encode", 6, sum);
    check_histogram(&p, "t_seconds", "stage", "queue", 0, 0);
    check_histogram(&p, "t_plain", NULL, NULL, 1, 0.1);
    const sample *o = find(&p, "t_odd_total", NULL, NULL);
    CHECK(o && strcmp(label_of(o, "v"), weird) == 0); /* escaping round-trips */
    free(p.s);
    free(text);
    metrics_registry_free(r);
    metrics_registry_free(NULL);
}

/* More label tuples than METRICS_MAX_SERIES fold into one "_overflow" series. */
static void test_overflow(void) {
    metrics_registry *r = metrics_registry_create();
    metrics_family *f = metrics_counter(r, "t_many_total", "Many.", "id", NULL);
    int n = METRICS_MAX_SERIES + 44;
    for (int i = 0; i < n; i++) {
        char id[16];
        snprintf(id, sizeof id, "%d", i);
        metrics_inc(metrics_series_get(f, id, NULL));
    }
    char *text = metrics_render(r, NULL);
    parsed p = parse(text);
    CHECK_EQ_INT(0, p.errors);
    CHECK_EQ_INT(METRICS_MAX_SERIES, p.n);
    const sample *ov = find(&p, "t_many_total", "id", "_overflow");
    CHECK(ov && ov->value == n - (METRICS_MAX_SERIES - 1));
    double total = 0;
    for (int i = 0; i < p.n; i++) total += p.s[i].value;
    CHECK_EQ_INT(n, (long long)total);
    printf("  overflow: %d label values -> %d series, _overflow = %g\n", n, p.n, ov ? ov->value : -1);
    free(p.s);
    free(text);
    metrics_registry_free(r);
}

/* ---- concurrency ---- */

enum { N_THREADS = 8, N_ITERS = 100000 };

typedef struct {
    metrics_family *c, *h, *g;
    int t;
} worker_arg;

static void *worker(void *p) {
    worker_arg *a = p;
    char mine[16];
    snprintf(mine, sizeof mine, "t%d", a->t);
    metrics_series *gs = metrics_series_get(a->g, NULL);
    for (int i = 0; i < N_ITERS; i++) {
        /* the shared series, a per-thread series and a set of 16 created concurrently by every thread */
        metrics_inc(metrics_series_get(a->c, "shared", NULL));
        metrics_add(metrics_series_get(a->c, mine, NULL), 2);
        char k[16];
        snprintf(k, sizeof k, "k%d", i % 16);
        metrics_inc(metrics_series_get(a->c, k, NULL));
        metrics_observe(metrics_series_get(a->h, NULL), (double)(i % 4) * 0.5); /* 0, 0.5, 1, 1.5 */
        metrics_add(gs, 1);
        metrics_add(gs, -1);
    }
    return NULL;
}

static atomic_int g_stop;

static void *renderer(void *p) {
    metrics_registry *r = p;
    int renders = 0, errors = 0;
    while (!atomic_load(&g_stop)) {
        char *text = metrics_render(r, NULL);
        parsed q = parse(text);
        errors += q.errors;
        free(q.s);
        free(text);
        renders++;
    }
    return (void *)(long)(errors * 1000000L + renders);
}

static void test_concurrency(void) {
    metrics_registry *r = metrics_registry_create();
    static const double bounds[] = {0.5, 1};
    worker_arg args[N_THREADS];
    metrics_family *c = metrics_counter(r, "t_conc_total", "Concurrent.", "k", NULL);
    metrics_family *h = metrics_histogram(r, "t_conc_hist", "Concurrent.", bounds, 2, NULL);
    metrics_family *g = metrics_gauge(r, "t_conc_gauge", "Concurrent.", NULL);
    pthread_t th[N_THREADS], rt;
    atomic_store(&g_stop, 0);
    pthread_create(&rt, NULL, renderer, r);
    for (int t = 0; t < N_THREADS; t++) {
        args[t] = (worker_arg){c, h, g, t};
        pthread_create(&th[t], NULL, worker, &args[t]);
    }
    for (int t = 0; t < N_THREADS; t++) pthread_join(th[t], NULL);
    atomic_store(&g_stop, 1);
    void *rv;
    pthread_join(rt, &rv);
    long rl = (long)rv;
    CHECK_EQ_INT(0, rl / 1000000L); /* every concurrent render parsed cleanly */

    char *text = metrics_render(r, NULL);
    parsed p = parse(text);
    CHECK_EQ_INT(0, p.errors);
    const sample *s = find(&p, "t_conc_total", "k", "shared");
    CHECK(s && s->value == (double)N_THREADS * N_ITERS);
    for (int t = 0; t < N_THREADS; t++) {
        char mine[16];
        snprintf(mine, sizeof mine, "t%d", t);
        s = find(&p, "t_conc_total", "k", mine);
        CHECK_MSG(s && s->value == 2.0 * N_ITERS, "series %s = %g", mine, s ? s->value : -1);
    }
    int ks = 0;
    double ksum = 0;
    for (int i = 0; i < p.n; i++) {
        const char *k = label_of(&p.s[i], "k");
        if (k && k[0] == 'k') { ks++; ksum += p.s[i].value; }
    }
    CHECK_EQ_INT(16, ks); /* created concurrently, but exactly once each */
    CHECK(ksum == (double)N_THREADS * N_ITERS);
    double n_obs = (double)N_THREADS * N_ITERS;
    check_histogram(&p, "t_conc_hist", NULL, NULL, n_obs, n_obs / 4 * (0 + 0.5 + 1 + 1.5));
    const sample *b05 = find(&p, "t_conc_hist_bucket", "le", "0.5");
    CHECK(b05 && b05->value == n_obs / 2);
    s = find(&p, "t_conc_gauge", NULL, NULL);
    CHECK(s && s->value == 0);
    printf("  concurrency: %d threads x %d, shared counter %g, histogram count %g, %ld renders meanwhile\n",
           N_THREADS, N_ITERS, find(&p, "t_conc_total", "k", "shared")->value, n_obs, rl % 1000000L);
    free(p.s);
    free(text);
    metrics_registry_free(r);
}

/* ---- vitd's metrics ---- */

static void test_vitd(void) {
    metrics_vitd *m = metrics_vitd_create();
    metrics_vitd_set_build(m, "0.1.0", "cpu", "fp32");
    metrics_vitd_set_build(m, "0.1.0", "gpu", "fp8");
    metrics_set(m->ready_s, 1);
    metrics_add(m->inflight_s, 3);
    metrics_add(m->inflight_s, -1);
    metrics_set(m->queue_tokens_s, 4096);
    metrics_set(m->queue_requests_s, 2);
    const double ok_s[METRICS_N_STAGES] = {0.0001, 0.01, 0.02, 0.001, 0.5, 0.0002, 0.003, 0.004, 0.53};
    const double busy_s[METRICS_N_STAGES] = {0.0001, -1, -1, 0.002, -1, -1, -1, -1, 0.002};
    metrics_vitd_request(m, "/v1/embeddings", 200, ok_s);
    metrics_vitd_request(m, "/v1/embeddings", 503, busy_s);
    metrics_vitd_error(m, "busy");
    metrics_vitd_batch(m, "fp8", 3, 3000);
    metrics_vitd_batch(m, "bf16", 1, 256);
    char *text = metrics_render(m->reg, NULL);
    parsed p = parse(text);
    CHECK_EQ_INT(0, p.errors);
    static const char *const families[] = {
        "vitd_requests_total counter", "vitd_request_duration_seconds histogram", "vitd_batch_images histogram",
        "vitd_batch_tokens histogram", "vitd_queue_tokens gauge", "vitd_queue_requests gauge",
        "vitd_images_total counter", "vitd_tokens_total counter", "vitd_errors_total counter",
        "vitd_batches_total counter", "vitd_inflight_requests gauge", "vitd_ready gauge", "vitd_build_info gauge"};
    for (size_t i = 0; i < sizeof families / sizeof families[0]; i++) {
        char t[128];
        snprintf(t, sizeof t, "# TYPE %s\n", families[i]);
        CHECK_STR_CONTAINS(text, t);
    }
    const char *want[] = {
        "vitd_requests_total{route=\"/v1/embeddings\",status=\"200\"} 1\n",
        "vitd_requests_total{route=\"/v1/embeddings\",status=\"503\"} 1\n",
        "vitd_errors_total{code=\"busy\"} 1\n",
        "vitd_errors_total{code=\"timeout\"} 0\n",
        "vitd_errors_total{code=\"bad_image\"} 0\n",
        "vitd_batches_total{attn=\"fp32\"} 0\n",
        "vitd_batches_total{attn=\"bf16\"} 1\n",
        "vitd_batches_total{attn=\"fp8\"} 1\n",
        "vitd_build_info{version=\"0.1.0\",backend=\"cpu\",attn_dtype=\"fp32\"} 0\n",
        "vitd_build_info{version=\"0.1.0\",backend=\"gpu\",attn_dtype=\"fp8\"} 1\n",
        "vitd_ready 1\n", "vitd_inflight_requests 2\n", "vitd_queue_tokens 4096\n", "vitd_queue_requests 2\n",
        "vitd_images_total 4\n", "vitd_tokens_total 3256\n",
        "vitd_batch_images_bucket{le=\"2\"} 1\n", "vitd_batch_images_bucket{le=\"4\"} 2\n",
        "vitd_batch_tokens_bucket{le=\"256\"} 1\n", "vitd_batch_tokens_bucket{le=\"2048\"} 1\n",
        "vitd_batch_tokens_bucket{le=\"4096\"} 2\n",
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) CHECK_STR_CONTAINS(text, want[i]);
    check_histogram(&p, "vitd_request_duration_seconds", "stage", "total", 2, 0.53 + 0.002);
    check_histogram(&p, "vitd_request_duration_seconds", "stage", "queue", 2, 0.001 + 0.002);
    check_histogram(&p, "vitd_request_duration_seconds", "stage", "encode", 1, 0.5);
    check_histogram(&p, "vitd_request_duration_seconds", "stage", "preprocess", 1, 0.02);
    check_histogram(&p, "vitd_batch_images", NULL, NULL, 2, 4);
    check_histogram(&p, "vitd_batch_tokens", NULL, NULL, 2, 3256);
    free(p.s);
    free(text);
    metrics_vitd_free(m);
    metrics_vitd_free(NULL);
}

int main(void) {
    test_basic();
    test_overflow();
    test_concurrency();
    test_vitd();
    return check_done("test_metrics");
}
