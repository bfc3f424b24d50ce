/* metrics.c — the Prometheus registry of metrics.h: families of counters, gauges and histograms, series created
 * on first use and found without a lock, values kept as atomic doubles (bit patterns updated by compare-and-swap)
 * and histogram buckets as atomic counts, rendered to the text exposition format 0.0.4. Also registers vitd's
 * own metrics (metrics_vitd_create) and the small helpers the server records them with. */
#include "metrics.h"

#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"
#include "vitd.h"

struct metrics_series {
    _Atomic uint64_t value;           /* counter/gauge: the double's bits */
    _Atomic uint64_t sum;             /* histogram: sum of observations, the double's bits */
    char *values[METRICS_MAX_LABELS]; /* label values, owned */
    const metrics_family *family;
    _Atomic uint64_t buckets[];       /* histogram: n_bounds + 1 counts, not cumulative; the last is above all */
};

struct metrics_family {
    char *name, *help;
    metrics_type type;
    int n_labels;
    char *labels[METRICS_MAX_LABELS];
    int n_bounds;
    double bounds[METRICS_MAX_BUCKETS];
    /* series[0..n_series) are published: written before n_series is released, read after it is acquired */
    metrics_series *series[METRICS_MAX_SERIES];
    _Atomic int n_series;
    metrics_series *overflow;         /* guarded by the registry lock until published in series[] */
    metrics_registry *reg;
    metrics_family *next;
};

struct metrics_registry {
    pthread_mutex_t lock;             /* guards the family list and series creation */
    metrics_family *first, *last;
};

/* ---- atomic doubles ---- */

static double bits_to_double(uint64_t u) {
    double d;
    memcpy(&d, &u, sizeof d);
    return d;
}

static uint64_t double_to_bits(double d) {
    uint64_t u;
    memcpy(&u, &d, sizeof u);
    return u;
}

static void atomic_add_double(_Atomic uint64_t *p, double v) {
    uint64_t old = atomic_load_explicit(p, memory_order_relaxed);
    while (!atomic_compare_exchange_weak_explicit(p, &old, double_to_bits(bits_to_double(old) + v),
                                                  memory_order_relaxed, memory_order_relaxed)) {
    }
}

/* ---- registry and families ---- */

metrics_registry *metrics_registry_create(void) {
    metrics_registry *r = xcalloc(1, sizeof *r);
    pthread_mutex_init(&r->lock, NULL);
    return r;
}

static void series_free(metrics_series *s) {
    if (!s) return;
    for (int i = 0; i < METRICS_MAX_LABELS; i++) free(s->values[i]);
    free(s);
}

void metrics_registry_free(metrics_registry *r) {
    if (!r) return;
    metrics_family *f = r->first;
    while (f) {
        metrics_family *next = f->next;
        int n = atomic_load(&f->n_series);
        for (int i = 0; i < n; i++) series_free(f->series[i]);
        for (int i = 0; i < f->n_labels; i++) free(f->labels[i]);
        free(f->name);
        free(f->help);
        free(f);
        f = next;
    }
    pthread_mutex_destroy(&r->lock);
    free(r);
}

/* [a-zA-Z_:][a-zA-Z0-9_:]* for metric names, no ':' for label names. */
static bool valid_name(const char *s, bool colon) {
    if (!s || !*s || (s[0] >= '0' && s[0] <= '9')) return false;
    for (; *s; s++) {
        char c = *s;
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
                  (colon && c == ':');
        if (!ok) return false;
    }
    return true;
}

/* Allocates a series of family f with the given label values (copied, cut to METRICS_MAX_VALUE_LEN). */
static metrics_series *series_new(const metrics_family *f, const char *const *values) {
    size_t nb = f->type == METRICS_HISTOGRAM ? (size_t)f->n_bounds + 1 : 0;
    metrics_series *s = xcalloc(1, sizeof *s + nb * sizeof s->buckets[0]);
    s->family = f;
    atomic_init(&s->value, double_to_bits(0.0));
    atomic_init(&s->sum, double_to_bits(0.0));
    for (size_t i = 0; i < nb; i++) atomic_init(&s->buckets[i], 0);
    for (int i = 0; i < f->n_labels; i++) {
        size_t len = strnlen(values[i], METRICS_MAX_VALUE_LEN);
        s->values[i] = xmalloc(len + 1);
        memcpy(s->values[i], values[i], len);
        s->values[i][len] = '\0';
    }
    return s;
}

/* Registers a family; label names come from the NULL-terminated va_list. */
static metrics_family *family_add(metrics_registry *r, metrics_type type, const char *name, const char *help,
                                  const double *bounds, int n_bounds, va_list ap) {
    VITD_ASSERT(valid_name(name, true));
    metrics_family *f = xcalloc(1, sizeof *f);
    f->name = xstrdup(name);
    f->help = xstrdup(help ? help : "");
    f->type = type;
    f->reg = r;
    for (const char *l; (l = va_arg(ap, const char *)) != NULL;) {
        VITD_ASSERT(f->n_labels < METRICS_MAX_LABELS);
        VITD_ASSERT(valid_name(l, false) && strncmp(l, "__", 2) != 0);
        VITD_ASSERT(type != METRICS_HISTOGRAM || strcmp(l, "le") != 0);
        f->labels[f->n_labels++] = xstrdup(l);
    }
    if (type == METRICS_HISTOGRAM) {
        VITD_ASSERT(n_bounds >= 1 && n_bounds <= METRICS_MAX_BUCKETS);
        for (int i = 0; i < n_bounds; i++) {
            VITD_ASSERT(isfinite(bounds[i]) && (i == 0 || bounds[i] > bounds[i - 1]));
            f->bounds[i] = bounds[i];
        }
        f->n_bounds = n_bounds;
    }
    atomic_init(&f->n_series, 0);
    pthread_mutex_lock(&r->lock);
    for (metrics_family *g = r->first; g; g = g->next) VITD_ASSERT(strcmp(g->name, name) != 0);
    if (r->last) r->last->next = f;
    else r->first = f;
    r->last = f;
    if (f->n_labels == 0) {
        f->series[0] = series_new(f, NULL);
        atomic_store_explicit(&f->n_series, 1, memory_order_release);
    }
    pthread_mutex_unlock(&r->lock);
    return f;
}

metrics_family *metrics_counter(metrics_registry *r, const char *name, const char *help, ...) {
    va_list ap;
    va_start(ap, help);
    metrics_family *f = family_add(r, METRICS_COUNTER, name, help, NULL, 0, ap);
    va_end(ap);
    return f;
}

metrics_family *metrics_gauge(metrics_registry *r, const char *name, const char *help, ...) {
    va_list ap;
    va_start(ap, help);
    metrics_family *f = family_add(r, METRICS_GAUGE, name, help, NULL, 0, ap);
    va_end(ap);
    return f;
}

metrics_family *metrics_histogram(metrics_registry *r, const char *name, const char *help, const double *bounds,
                                  int n_bounds, ...) {
    va_list ap;
    va_start(ap, n_bounds);
    metrics_family *f = family_add(r, METRICS_HISTOGRAM, name, help, bounds, n_bounds, ap);
    va_end(ap);
    return f;
}

/* ---- series lookup ---- */

static bool values_match(const metrics_series *s, int n, const char *const *values) {
    for (int i = 0; i < n; i++) {
        size_t len = strnlen(values[i], METRICS_MAX_VALUE_LEN);
        if (strlen(s->values[i]) != len || memcmp(s->values[i], values[i], len) != 0) return false;
    }
    return true;
}

static metrics_series *find_published(metrics_family *f, const char *const *values) {
    int n = atomic_load_explicit(&f->n_series, memory_order_acquire);
    for (int i = 0; i < n; i++)
        if (values_match(f->series[i], f->n_labels, values)) return f->series[i];
    return NULL;
}

metrics_series *metrics_series_getv(metrics_family *f, const char *const *values) {
    metrics_series *s = find_published(f, values);
    if (s) return s;
    pthread_mutex_lock(&f->reg->lock);
    s = find_published(f, values); /* another thread may have created it meanwhile */
    if (!s) {
        int n = atomic_load_explicit(&f->n_series, memory_order_relaxed);
        if (n < METRICS_MAX_SERIES - 1) {
            s = series_new(f, values);
            f->series[n] = s;
            atomic_store_explicit(&f->n_series, n + 1, memory_order_release);
        } else {
            /* Unbounded label values (a bug upstream) must not grow memory: fold them into one series, which
             * takes the last slot. */
            if (!f->overflow) {
                const char *ov[METRICS_MAX_LABELS] = {"_overflow", "_overflow", "_overflow", "_overflow"};
                f->overflow = series_new(f, ov);
                f->series[n] = f->overflow;
                atomic_store_explicit(&f->n_series, n + 1, memory_order_release);
            }
            s = f->overflow;
        }
    }
    pthread_mutex_unlock(&f->reg->lock);
    return s;
}

metrics_series *metrics_series_get(metrics_family *f, ...) {
    const char *values[METRICS_MAX_LABELS];
    int n = 0;
    va_list ap;
    va_start(ap, f);
    for (const char *v; (v = va_arg(ap, const char *)) != NULL;) {
        VITD_ASSERT(n < f->n_labels);
        values[n++] = v;
    }
    va_end(ap);
    VITD_ASSERT(n == f->n_labels);
    return metrics_series_getv(f, values);
}

/* ---- recording ---- */

void metrics_add(metrics_series *s, double v) {
    VITD_ASSERT(s->family->type != METRICS_HISTOGRAM);
    VITD_ASSERT(s->family->type != METRICS_COUNTER || v >= 0);
    atomic_add_double(&s->value, v);
}

void metrics_inc(metrics_series *s) { metrics_add(s, 1.0); }

void metrics_set(metrics_series *s, double v) {
    VITD_ASSERT(s->family->type == METRICS_GAUGE);
    atomic_store_explicit(&s->value, double_to_bits(v), memory_order_relaxed);
}

void metrics_observe(metrics_series *s, double v) {
    const metrics_family *f = s->family;
    VITD_ASSERT(f->type == METRICS_HISTOGRAM);
    if (isnan(v)) return;
    int b = 0;
    while (b < f->n_bounds && v > f->bounds[b]) b++;
    atomic_fetch_add_explicit(&s->buckets[b], 1, memory_order_relaxed);
    atomic_add_double(&s->sum, v);
}

double metrics_value(const metrics_series *s) {
    if (s->family->type != METRICS_HISTOGRAM)
        return bits_to_double(atomic_load_explicit(&s->value, memory_order_relaxed));
    uint64_t n = 0;
    for (int i = 0; i <= s->family->n_bounds; i++) n += atomic_load_explicit(&s->buckets[i], memory_order_relaxed);
    return (double)n;
}

/* ---- rendering ---- */

/* Escapes for HELP text (\\ and \n) or, with quote, for label values (also \"). */
static void out_escaped(strbuf *b, const char *s, bool quote) {
    for (; *s; s++) {
        if (*s == '\\') strbuf_puts(b, "\\\\");
        else if (*s == '\n') strbuf_puts(b, "\\n");
        else if (quote && *s == '"') strbuf_puts(b, "\\\"");
        else strbuf_append(b, s, 1);
    }
}

/* A sample value: integers exactly, other doubles in the shortest form that reads back, +Inf/-Inf/NaN. */
static void format_value(char *buf, size_t n, double v) {
    if (isnan(v)) snprintf(buf, n, "NaN");
    else if (isinf(v)) snprintf(buf, n, v > 0 ? "+Inf" : "-Inf");
    else if (v == floor(v) && fabs(v) < 9007199254740992.0) snprintf(buf, n, "%.0f", v);
    else {
        for (int prec = 15; prec <= 17; prec++) {
            snprintf(buf, n, "%.*g", prec, v);
            if (strtod(buf, NULL) == v) break;
        }
    }
}

/* Writes `{a="x",b="y"` plus an optional extra label (le) and the closing brace; nothing when there are no
 * labels at all. */
static void out_labels(strbuf *b, const metrics_series *s, const char *extra_name, const char *extra_value) {
    const metrics_family *f = s->family;
    if (f->n_labels == 0 && !extra_name) return;
    strbuf_puts(b, "{");
    for (int i = 0; i < f->n_labels; i++) {
        if (i) strbuf_puts(b, ",");
        strbuf_puts(b, f->labels[i]);
        strbuf_puts(b, "=\"");
        out_escaped(b, s->values[i], true);
        strbuf_puts(b, "\"");
    }
    if (extra_name) {
        if (f->n_labels) strbuf_puts(b, ",");
        strbuf_puts(b, extra_name);
        strbuf_puts(b, "=\"");
        strbuf_puts(b, extra_value);
        strbuf_puts(b, "\"");
    }
    strbuf_puts(b, "}");
}

static void out_sample(strbuf *b, const char *name, const char *suffix, const metrics_series *s,
                       const char *extra_name, const char *extra_value, double v) {
    char num[64];
    strbuf_puts(b, name);
    strbuf_puts(b, suffix);
    out_labels(b, s, extra_name, extra_value);
    format_value(num, sizeof num, v);
    strbuf_puts(b, " ");
    strbuf_puts(b, num);
    strbuf_puts(b, "\n");
}

static void render_series(strbuf *b, const metrics_family *f, const metrics_series *s) {
    if (f->type != METRICS_HISTOGRAM) {
        out_sample(b, f->name, "", s, NULL, NULL, bits_to_double(atomic_load(&s->value)));
        return;
    }
    uint64_t cum = 0;
    char le[64];
    for (int i = 0; i <= f->n_bounds; i++) {
        cum += atomic_load_explicit(&s->buckets[i], memory_order_relaxed);
        if (i < f->n_bounds) format_value(le, sizeof le, f->bounds[i]);
        else snprintf(le, sizeof le, "+Inf");
        out_sample(b, f->name, "_bucket", s, "le", le, (double)cum);
    }
    out_sample(b, f->name, "_sum", s, NULL, NULL, bits_to_double(atomic_load(&s->sum)));
    out_sample(b, f->name, "_count", s, NULL, NULL, (double)cum);
}

char *metrics_render(metrics_registry *r, size_t *len) {
    static const char *const type_names[] = {"counter", "gauge", "histogram"};
    strbuf b = {0};
    pthread_mutex_lock(&r->lock);
    for (const metrics_family *f = r->first; f; f = f->next) {
        strbuf_puts(&b, "# HELP ");
        strbuf_puts(&b, f->name);
        strbuf_puts(&b, " ");
        out_escaped(&b, f->help, false);
        strbuf_puts(&b, "\n# TYPE ");
        strbuf_puts(&b, f->name);
        strbuf_puts(&b, " ");
        strbuf_puts(&b, type_names[f->type]);
        strbuf_puts(&b, "\n");
        int n = atomic_load_explicit(&f->n_series, memory_order_acquire);
        for (int i = 0; i < n; i++) render_series(&b, f, f->series[i]);
    }
    pthread_mutex_unlock(&r->lock);
    char *text = strbuf_finish(&b);
    if (text && len) *len = b.len;
    return text;
}

/* ---- vitd's metrics ---- */

static const char *const k_stage_names[METRICS_N_STAGES] = {"receive", "decode", "preprocess", "queue", "encode",
                                                             "resume", "answer", "send", "total"};
static const char *const k_attn_names[METRICS_N_ATTN] = {"fp32", "bf16", "fp8"};

metrics_vitd *metrics_vitd_create(void) {
    static const double dur[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
    static const double imgs[] = {1, 2, 4, 8, 16, 32, 64, 128, 256};
    static const double toks[] = {256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072};
    metrics_vitd *m = xcalloc(1, sizeof *m);
    metrics_registry *r = m->reg = metrics_registry_create();
    m->requests_total = metrics_counter(r, "vitd_requests_total", "HTTP requests answered, by route and status.",
                                        "route", "status", NULL);
    m->request_duration = metrics_histogram(r, "vitd_request_duration_seconds",
                                            "Time per request stage (receive, decode, preprocess, queue, encode, "
                                            "resume, answer, send, total).", dur,
                                            (int)(sizeof dur / sizeof dur[0]), "stage", NULL);
    m->batch_images = metrics_histogram(r, "vitd_batch_images", "Images per encoder batch.", imgs,
                                        (int)(sizeof imgs / sizeof imgs[0]), NULL);
    m->batch_tokens = metrics_histogram(r, "vitd_batch_tokens", "Patches (tokens) per encoder batch.", toks,
                                        (int)(sizeof toks / sizeof toks[0]), NULL);
    m->queue_tokens = metrics_gauge(r, "vitd_queue_tokens", "Patches waiting in the queue.", NULL);
    m->queue_requests = metrics_gauge(r, "vitd_queue_requests", "Requests waiting in the queue.", NULL);
    m->images_total = metrics_counter(r, "vitd_images_total", "Images encoded.", NULL);
    m->tokens_total = metrics_counter(r, "vitd_tokens_total", "Patches (tokens) encoded.", NULL);
    m->errors_total = metrics_counter(r, "vitd_errors_total", "Failed requests by error code.", "code", NULL);
    m->batches_total = metrics_counter(r, "vitd_batches_total", "Encoder batches by attention path.", "attn",
                                       NULL);
    m->inflight_requests = metrics_gauge(r, "vitd_inflight_requests", "Requests received and not yet answered.",
                                         NULL);
    m->ready = metrics_gauge(r, "vitd_ready", "1 when the server is ready to encode.", NULL);
    m->build_info = metrics_gauge(r, "vitd_build_info", "Version, backend and attention dtype of this process.",
                                  "version", "backend", "attn_dtype", NULL);

    for (int i = 0; i < METRICS_N_STAGES; i++) m->stage[i] = metrics_series_get(m->request_duration,
                                                                                 k_stage_names[i], NULL);
    for (int i = 0; i < METRICS_N_ATTN; i++) m->batches[i] = metrics_series_get(m->batches_total,
                                                                                k_attn_names[i], NULL);
    for (int code = VITD_E_INVALID_ARG; code >= VITD_E_INTERNAL; code--)
        metrics_series_get(m->errors_total, vitd_status_name((vitd_status)code), NULL);
    m->batch_images_s = metrics_series_get(m->batch_images, NULL);
    m->batch_tokens_s = metrics_series_get(m->batch_tokens, NULL);
    m->queue_tokens_s = metrics_series_get(m->queue_tokens, NULL);
    m->queue_requests_s = metrics_series_get(m->queue_requests, NULL);
    m->images_s = metrics_series_get(m->images_total, NULL);
    m->tokens_s = metrics_series_get(m->tokens_total, NULL);
    m->inflight_s = metrics_series_get(m->inflight_requests, NULL);
    m->ready_s = metrics_series_get(m->ready, NULL);

    static const char *const kinds[METRICS_N_KINDS] = {"encode", "vllm_inline", "vllm_ec_cache", "epd",
                                                        "kserve_json", "kserve_binary"};
    static const double write_s[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5};
    m->handover_images = metrics_counter(r, "vitd_handover_images_total", "Images answered, by hand-over kind.",
                                         "kind", NULL);
    m->handover_bytes = metrics_counter(r, "vitd_handover_bytes_total", "Answer bytes, by hand-over kind.", "kind",
                                        NULL);
    for (int i = 0; i < METRICS_N_KINDS; i++) {
        m->kind_images[i] = metrics_series_get(m->handover_images, kinds[i], NULL);
        m->kind_bytes[i] = metrics_series_get(m->handover_bytes, kinds[i], NULL);
    }
    m->ec_bytes = metrics_gauge(r, "vitd_ec_cache_bytes", "Bytes of the EC cache files this process knows of.",
                                NULL);
    m->ec_files = metrics_gauge(r, "vitd_ec_cache_files", "EC cache files this process knows of.", NULL);
    m->ec_writes = metrics_counter(r, "vitd_ec_cache_writes_total", "EC cache files written, by result.", "result",
                                   NULL);
    m->ec_evictions = metrics_counter(r, "vitd_ec_cache_evictions_total",
                                      "EC cache files removed by retention, by bound.", "reason", NULL);
    m->ec_write_seconds = metrics_histogram(r, "vitd_ec_cache_write_seconds",
                                            "Time to write one EC cache file (sync and rename included).", write_s,
                                            (int)(sizeof write_s / sizeof write_s[0]), NULL);
    m->ec_registered = metrics_gauge(r, "vitd_ec_proxy_registered",
                                     "1 while the EPD proxy has accepted this encode instance.", NULL);
    m->ec_announces = metrics_counter(r, "vitd_ec_proxy_announces_total",
                                      "Registrations sent to the EPD proxy, by result.", "result", NULL);
    m->ec_bytes_s = metrics_series_get(m->ec_bytes, NULL);
    m->ec_files_s = metrics_series_get(m->ec_files, NULL);
    m->ec_write_ok_s = metrics_series_get(m->ec_writes, "ok", NULL);
    m->ec_write_err_s = metrics_series_get(m->ec_writes, "error", NULL);
    m->ec_evict_bytes_s = metrics_series_get(m->ec_evictions, "bytes", NULL);
    m->ec_evict_age_s = metrics_series_get(m->ec_evictions, "age", NULL);
    m->ec_write_seconds_s = metrics_series_get(m->ec_write_seconds, NULL);
    m->ec_registered_s = metrics_series_get(m->ec_registered, NULL);
    m->ec_announce_ok_s = metrics_series_get(m->ec_announces, "ok", NULL);
    m->ec_announce_err_s = metrics_series_get(m->ec_announces, "error", NULL);
    m->oc_requests = metrics_counter(r, "vitd_output_cache_requests_total",
                                     "Output cache lookups of images: hit, miss, wait (joined an encode in flight).",
                                     "result", NULL);
    m->oc_evictions = metrics_counter(r, "vitd_output_cache_evictions_total",
                                      "Output cache entries evicted for the byte bound.", NULL);
    m->oc_bytes = metrics_gauge(r, "vitd_output_cache_bytes", "Bytes of outputs the output cache holds.", NULL);
    m->oc_entries = metrics_gauge(r, "vitd_output_cache_entries", "Images the output cache holds.", NULL);
    m->oc_hit_s = metrics_series_get(m->oc_requests, "hit", NULL);
    m->oc_miss_s = metrics_series_get(m->oc_requests, "miss", NULL);
    m->oc_wait_s = metrics_series_get(m->oc_requests, "wait", NULL);
    m->oc_retry_s = metrics_series_get(m->oc_requests, "retry", NULL);
    m->oc_evictions_s = metrics_series_get(m->oc_evictions, NULL);
    m->oc_bytes_s = metrics_series_get(m->oc_bytes, NULL);
    m->oc_entries_s = metrics_series_get(m->oc_entries, NULL);
    m->conn_open = metrics_gauge(r, "vitd_connections_open", "HTTP connections open.", NULL);
    m->conn_closed = metrics_counter(r, "vitd_connections_closed_total",
                                     "HTTP connections vitd closed itself, by reason.", "reason", NULL);
    m->conn_open_s = metrics_series_get(m->conn_open, NULL);
    static const char *const reasons[METRICS_N_CONN] = {"idle_timeout", "header_timeout", "body_timeout",
                                                        "send_timeout", "evicted", "over_limit", "linger"};
    for (int i = 0; i < METRICS_N_CONN; i++) m->conn_closed_s[i] = metrics_series_get(m->conn_closed, reasons[i], NULL);
    m->heap = metrics_gauge(r, "vitd_heap_bytes",
                            "malloc's heap at the scrape: in_use = bytes allocated and not freed (a leak raises it), "
                            "held = bytes malloc keeps from the system (freed memory it has not returned counts "
                            "here and in the resident set).",
                            "kind", NULL);
    m->heap_in_use_s = metrics_series_get(m->heap, "in_use", NULL);
    m->heap_held_s = metrics_series_get(m->heap, "held", NULL);
    return m;
}

void metrics_vitd_handover(metrics_vitd *m, int kind, int images, uint64_t bytes) {
    if (kind < 0 || kind >= METRICS_N_KINDS) return;
    metrics_add(m->kind_images[kind], images);
    metrics_add(m->kind_bytes[kind], (double)bytes);
}

void metrics_vitd_free(metrics_vitd *m) {
    if (!m) return;
    metrics_registry_free(m->reg);
    free(m);
}

void metrics_vitd_request(metrics_vitd *m, const char *route, int status, const double *stage_s) {
    char code[16];
    snprintf(code, sizeof code, "%d", status);
    metrics_inc(metrics_series_get(m->requests_total, route, code, NULL));
    for (int i = 0; i < METRICS_N_STAGES; i++)
        if (stage_s[i] >= 0) metrics_observe(m->stage[i], stage_s[i]);
}

void metrics_vitd_error(metrics_vitd *m, const char *code) {
    metrics_inc(metrics_series_get(m->errors_total, code, NULL));
}

void metrics_vitd_batch(metrics_vitd *m, const char *attn, int images, uint64_t tokens) {
    metrics_series *s = NULL;
    for (int i = 0; i < METRICS_N_ATTN; i++)
        if (strcmp(attn, k_attn_names[i]) == 0) s = m->batches[i];
    metrics_inc(s ? s : metrics_series_get(m->batches_total, attn, NULL));
    metrics_observe(m->batch_images_s, images);
    metrics_observe(m->batch_tokens_s, (double)tokens);
    metrics_add(m->images_s, images);
    metrics_add(m->tokens_s, (double)tokens);
}

void metrics_vitd_set_build(metrics_vitd *m, const char *version, const char *backend, const char *attn_dtype) {
    metrics_series *s = metrics_series_get(m->build_info, version, backend, attn_dtype, NULL);
    if (m->build_s && m->build_s != s) metrics_set(m->build_s, 0);
    metrics_set(s, 1);
    m->build_s = s;
}
