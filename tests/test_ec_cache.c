/* test_ec_cache.c — vLLM's EC-transfer cache files (server/handover/ec_cache.h) and the registration with vLLM's
 * EPD proxy (epd_announce.c), in a temporary directory and against a fake proxy on 127.0.0.1:
 *   - a file read back with vitd's safetensors reader: one tensor ec_cache, BF16, [rows, D*(1+k)], the concat
 *     rows rounded as torch rounds; no temporary file left; a rewrite replaces it; a bad uuid writes nothing;
 *   - retention: the byte bound removes the oldest first (directories too) and counts evictions; the age bound at
 *     open, at a write and from the minute sweep; files found at start (by mtime) count, stale temporary files go;
 *   - the proxy: registration retried after a refusal, repeated at the interval, the body vLLM's proxy takes,
 *     a path prefix kept, DELETE on stop, an unreachable proxy harmless; URL checks. */
#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cJSON.h>

#include "check.h"
#include "ec_cache.h"
#include "epd.h"
#include "fake_proxy.h"
#include "loopback.h"
#include "metrics.h"
#include "safetensors.h"
#include "util.h"

enum { D = 8, K = 2, ROWS = 6 };

static float g_emb[ROWS * D], g_ds[K * ROWS * D];
static const vitd_grid g_grid = {1, 4, 6};

static handover_src src_of(float scale) {
    unsigned long long rng = 7;
    for (int i = 0; i < ROWS * D; i++) g_emb[i] = (float)check_rng_normal(&rng) * scale;
    for (int i = 0; i < K * ROWS * D; i++) g_ds[i] = (float)check_rng_normal(&rng) * scale;
    return (handover_src){.emb = g_emb, .ds = g_ds, .rows = ROWS, .D = D, .k = K};
}

static bool exists(const char *dir, const char *uuid) {
    char p[1024];
    snprintf(p, sizeof p, "%s/%s/" EC_CACHE_FILE, dir, uuid);
    return access(p, F_OK) == 0;
}

static bool dir_exists(const char *dir, const char *uuid) {
    char p[1024];
    snprintf(p, sizeof p, "%s/%s", dir, uuid);
    struct stat st;
    return stat(p, &st) == 0;
}

/* Sets a file's modification time to `ago` seconds in the past. */
static void age(const char *path, double ago) {
    struct timespec ts[2];
    clock_gettime(CLOCK_REALTIME, &ts[0]);
    ts[0].tv_sec -= (time_t)ago;
    ts[1] = ts[0];
    CHECK_MSG(utimensat(AT_FDCWD, path, ts, 0) == 0, "utimensat %s", path);
}

static void age_file(const char *dir, const char *uuid, double ago) {
    char p[1024];
    snprintf(p, sizeof p, "%s/%s/" EC_CACHE_FILE, dir, uuid);
    age(p, ago);
}

static void test_file(const char *dir) {
    printf("cache file\n");
    metrics_vitd *m = metrics_vitd_create();
    ec_cache *c = NULL;
    vitd_err err = {0};
    CHECK_OK(ec_cache_open(dir, 0, 0, m, &c, &err), &err);
    handover_src s = src_of(1.0f);
    CHECK_OK(ec_cache_put(c, "img-1", &s, &g_grid, &err), &err);
    char path[1024];
    st_file *f = NULL;
    CHECK_OK(st_open(ec_cache_path(c, "img-1", path, sizeof path), &f, &err), &err);
    if (f) {
        CHECK_EQ_INT(1, st_count(f));
        const st_tensor *t = st_find(f, EC_CACHE_TENSOR);
        CHECK_MSG(t && t->dtype == ST_BF16 && t->ndim == 2 && t->shape[0] == ROWS && t->shape[1] == D * (1 + K),
                  "tensor ec_cache BF16 [%d, %d]", ROWS, D * (1 + K));
        int bad = 0;
        for (int r = 0; t && r < ROWS; r++)
            for (int col = 0; col < D * (1 + K); col++) {
                int seg = col / D, j = col % D;
                float x = seg == 0 ? g_emb[r * D + j] : g_ds[((seg - 1) * ROWS + r) * D + j];
                uint16_t got;
                memcpy(&got, (const uint8_t *)t->data + 2 * ((size_t)r * D * (1 + K) + (size_t)col), 2);
                bad += got != f32_to_bf16(x);
            }
        CHECK_MSG(bad == 0, "%d values differ from the concat rows", bad);
        CHECK_MSG(st_metadata(f, "image_grid_thw") && !strcmp(st_metadata(f, "image_grid_thw"), "[1, 4, 6]"),
                  "metadata image_grid_thw");
        st_close(f);
    }
    /* nothing but the final file in the uuid's directory */
    char sub[1024];
    snprintf(sub, sizeof sub, "%s/img-1", dir);
    DIR *d = opendir(sub);
    int names = 0;
    for (struct dirent *e; d && (e = readdir(d));) names += e->d_name[0] != '.';
    if (d) closedir(d);
    CHECK_EQ_INT(1, names);
    /* a rewrite replaces the file; a bad uuid writes nothing */
    s = src_of(2.0f);
    CHECK_OK(ec_cache_put(c, "img-1", &s, &g_grid, &err), &err);
    size_t files = 0, bytes = 0;
    ec_cache_stats(c, &files, &bytes);
    CHECK(files == 1 && bytes > (size_t)ROWS * D * (1 + K) * 2);
    CHECK_EQ_INT(VITD_E_INVALID_ARG, ec_cache_put(c, "../escape", &s, &g_grid, &err));
    CHECK(!dir_exists(dir, "../escape"));
    CHECK(metrics_value(m->ec_write_ok_s) == 2 && metrics_value(m->ec_write_err_s) == 1 &&
          metrics_value(m->ec_files_s) == 1);
    ec_cache_free(c);
    metrics_vitd_free(m);
    /* a directory that cannot be made */
    CHECK_EQ_INT(VITD_E_IO, ec_cache_open("/proc/vitd-no/such", 0, 0, NULL, &c, &err));
    CHECK_STR_CONTAINS(err.msg, "/proc/vitd-no/such");
}

static void test_bytes_bound(const char *dir) {
    printf("retention by bytes\n");
    metrics_vitd *m = metrics_vitd_create();
    ec_cache *c = NULL;
    vitd_err err = {0};
    handover_src s = src_of(1.0f);
    /* learn one file's size, then bound the cache to two and a half of them */
    CHECK_OK(ec_cache_open(dir, 0, 0, NULL, &c, &err), &err);
    CHECK_OK(ec_cache_put(c, "probe", &s, &g_grid, &err), &err);
    size_t one = 0;
    ec_cache_stats(c, NULL, &one);
    ec_cache_free(c);
    CHECK_OK(ec_cache_open(dir, one * 5 / 2, 0, m, &c, &err), &err);
    const char *ids[] = {"b1", "b2", "b3", "b4", "b5"};
    for (int i = 0; i < 5; i++) CHECK_OK(ec_cache_put(c, ids[i], &s, &g_grid, &err), &err);
    size_t files = 0, bytes = 0;
    ec_cache_stats(c, &files, &bytes);
    CHECK_MSG(files == 2 && bytes <= one * 5 / 2, "%zu files, %zu bytes (bound %zu)", files, bytes, one * 5 / 2);
    CHECK(exists(dir, "b4") && exists(dir, "b5") && !exists(dir, "b3") && !dir_exists(dir, "b1"));
    CHECK(!exists(dir, "probe"));
    CHECK_MSG(metrics_value(m->ec_evict_bytes_s) == 4, "evictions %g", metrics_value(m->ec_evict_bytes_s));
    /* another writer (a second cache on the same directory: another replica) rewrites b4: the first cache's
     * eviction of its stale entry leaves the new file alone */
    ec_cache *other = NULL;
    CHECK_OK(ec_cache_open(dir, 0, 0, NULL, &other, &err), &err);
    usleep(20 * 1000);
    CHECK_OK(ec_cache_put(other, "b4", &s, &g_grid, &err), &err);
    ec_cache_free(other);
    CHECK_OK(ec_cache_put(c, "b6", &s, &g_grid, &err), &err); /* over the bound: b4's stale entry is the oldest */
    CHECK_MSG(exists(dir, "b4") && exists(dir, "b6"), "the rewritten b4 was removed");
    ec_cache_stats(c, &files, &bytes);
    CHECK_MSG(files == 2 && exists(dir, "b4") && !exists(dir, "b5"), "after the refresh: %zu files", files);
    ec_cache_free(c);
    metrics_vitd_free(m);
}

/* Concurrent writers with a bound of about one file: puts never fail and the uuid written by one thread again and
 * again is never removed by its own write. */
typedef struct {
    ec_cache *c;
    int id, fails;
    char dir[600];
} writer;

static void *writer_main(void *arg) {
    writer *w = arg;
    handover_src s = {.emb = g_emb, .ds = g_ds, .rows = ROWS, .D = D, .k = K};
    for (int i = 0; i < 150; i++) {
        char uuid[32];
        if (w->id == 0) snprintf(uuid, sizeof uuid, "same");
        else snprintf(uuid, sizeof uuid, "w%d-%d", w->id, i);
        vitd_err err = {0};
        if (ec_cache_put(w->c, uuid, &s, &g_grid, &err) != VITD_OK) {
            if (!w->fails) printf("  writer %d: %s\n", w->id, err.msg);
            w->fails++;
        }
    }
    return NULL;
}

static void test_concurrent(const char *dir) {
    printf("concurrent writers\n");
    ec_cache *c = NULL;
    vitd_err err = {0};
    src_of(1.0f);
    CHECK_OK(ec_cache_open(dir, 1, 0, NULL, &c, &err), &err); /* one byte: every write evicts the others */
    writer w[3];
    pthread_t t[3];
    for (int i = 0; i < 3; i++) {
        w[i] = (writer){.c = c, .id = i};
        pthread_create(&t[i], NULL, writer_main, &w[i]);
    }
    for (int i = 0; i < 3; i++) pthread_join(t[i], NULL);
    CHECK_MSG(w[0].fails + w[1].fails + w[2].fails == 0, "%d failed puts", w[0].fails + w[1].fails + w[2].fails);
    ec_cache_free(c);
}

static void test_age_and_scan(const char *dir) {
    printf("retention by age, files found at start\n");
    metrics_vitd *m = metrics_vitd_create();
    ec_cache *c = NULL;
    vitd_err err = {0};
    handover_src s = src_of(1.0f);
    /* files left by an earlier process: one old, two recent; temporary files, one stale */
    CHECK_OK(ec_cache_open(dir, 0, 0, NULL, &c, &err), &err);
    const char *ids[] = {"old", "mid", "new"};
    for (int i = 0; i < 3; i++) CHECK_OK(ec_cache_put(c, ids[i], &s, &g_grid, &err), &err);
    ec_cache_free(c);
    age_file(dir, "old", 5000);
    age_file(dir, "mid", 30);
    age_file(dir, "new", 20);
    char tmp_old[1024], tmp_new[1024];
    snprintf(tmp_old, sizeof tmp_old, "%s/mid/" EC_CACHE_FILE ".tmp.crash1", dir);
    snprintf(tmp_new, sizeof tmp_new, "%s/mid/" EC_CACHE_FILE ".tmp.writing", dir);
    for (int i = 0; i < 2; i++) {
        int fd = open(i ? tmp_new : tmp_old, O_CREAT | O_WRONLY, 0644);
        CHECK(fd >= 0);
        if (fd >= 0) close(fd);
    }
    age(tmp_old, 3600);
    size_t files = 0, bytes = 0, one = 0;
    /* the age bound at open: "old" goes, the other two are learned */
    CHECK_OK(ec_cache_open(dir, 0, 600, m, &c, &err), &err);
    ec_cache_stats(c, &files, &bytes);
    CHECK_MSG(files == 2 && !exists(dir, "old") && exists(dir, "mid"), "found %zu files", files);
    CHECK_MSG(access(tmp_old, F_OK) != 0 && access(tmp_new, F_OK) == 0, "stale temporary file handling");
    CHECK_EQ_INT(1, (int)metrics_value(m->ec_evict_age_s));
    one = bytes / 2;
    CHECK_OK(ec_cache_put(c, "w1", &s, &g_grid, &err), &err);
    ec_cache_free(c);
    /* found files count against the byte bound, oldest (by mtime) first */
    age_file(dir, "mid", 60);
    age_file(dir, "new", 50);
    age_file(dir, "w1", 40);
    CHECK_OK(ec_cache_open(dir, one + one / 2, 0, m, &c, &err), &err);
    ec_cache_stats(c, &files, NULL);
    CHECK_MSG(files == 1 && exists(dir, "w1") && !exists(dir, "new") && !exists(dir, "mid"),
              "byte bound at open: %zu files", files);
    ec_cache_free(c);
    /* the age bound holds when a write returns */
    CHECK_OK(ec_cache_open(dir, 0, 2, m, &c, &err), &err);
    CHECK_OK(ec_cache_put(c, "a1", &s, &g_grid, &err), &err);
    usleep(2500 * 1000);
    CHECK_OK(ec_cache_put(c, "a2", &s, &g_grid, &err), &err);
    CHECK_MSG(!exists(dir, "a1") && !exists(dir, "w1") && exists(dir, "a2"), "files older than 2 s stayed");
    ec_cache_free(c);
    /* the sweep: with no writes, a file older than the bound goes within a sweep period */
    age_file(dir, "a2", 0);
    CHECK_OK(ec_cache_open(dir, 0, 1, m, &c, &err), &err);
    double t0 = vitd_now();
    while (vitd_now() - t0 < 6) {
        ec_cache_stats(c, &files, NULL);
        if (files == 0) break;
        usleep(100 * 1000);
    }
    CHECK_MSG(files == 0 && !exists(dir, "a2"), "the sweep left %zu files", files);
    ec_cache_free(c);
    metrics_vitd_free(m);
}

static void test_announce(void) {
    printf("EPD proxy registration\n");
    vitd_err err = {0};
    const char *good[] = {"http://127.0.0.1:9000", "http://[::1]:80/base/", "http://proxy.local"};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++)
        CHECK_MSG(epd_check_url(good[i], "ec_proxy_url", &err) == VITD_OK, "%s: %s", good[i], err.msg);
    char long6[400];
    snprintf(long6, sizeof long6, "http://[%0300d]:80", 1);
    const char *bad[] = {"https://proxy:443", "http://", "http://h:99x", "ftp://h", "proxy:8000", "http://[::1", long6};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        CHECK_MSG(epd_check_url(bad[i], "ec_proxy_url", &err) == VITD_E_INVALID_ARG &&
                      strstr(err.msg, "ec_proxy_url"), "%s accepted", bad[i]);

    proxy p;
    if (!proxy_start(&p, 1)) SKIP("cannot listen on 127.0.0.1");
    metrics_vitd *m = metrics_vitd_create();
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/epd", p.port);
    epd_announcer *a = NULL;
    double t0 = vitd_now();
    CHECK_OK(epd_announcer_start(url, "http://127.0.0.1:8123", 1, m, &a, &err), &err);
    /* refused once: retried after 5 s; then every second */
    CHECK_MSG(proxy_wait(&p, 3, 12), "%d registrations seen", proxy_calls(&p));
    double retry = p.at[1] - p.at[0], again = p.at[2] - p.at[1];
    printf("  first at %.2f s, retry after %.2f s, again after %.2f s\n", p.at[0] - t0, retry, again);
    CHECK_MSG(retry > 4.5 && retry < 7 && again > 0.8 && again < 2.5, "timing %.2f / %.2f", retry, again);
    CHECK(metrics_value(m->ec_registered_s) == 1 && metrics_value(m->ec_announce_err_s) == 1);
    epd_announcer_stop(a);
    int n = proxy_calls(&p);
    CHECK_MSG(n >= 4 && !strcmp(p.method[proxy_slot(n - 1)], "DELETE"), "the last call is %s", p.method[proxy_slot(n - 1)]);
    for (int i = 0; i < n && i < PROXY_MAX_CALLS; i++) {
        CHECK_MSG(!strcmp(p.path[i], "/epd/instances"), "call %d to %s", i, p.path[i]);
        cJSON *b = cJSON_Parse(p.body[i]);
        const cJSON *z = cJSON_GetObjectItem(b, "ec_zmq_addrs");
        CHECK_MSG(b && !strcmp(cJSON_GetObjectItem(b, "role")->valuestring, "encode") &&
                      !strcmp(cJSON_GetObjectItem(b, "url")->valuestring, "http://127.0.0.1:8123") &&
                      cJSON_IsArray(z) && cJSON_GetArraySize(z) == 0 &&
                      cJSON_GetObjectItem(b, "dp_size")->valueint == 1,
                  "call %d body %s", i, p.body[i]);
        cJSON_Delete(b);
    }
    CHECK(metrics_value(m->ec_registered_s) == 0);
    proxy_stop(&p);
    /* a proxy that answers 204: registered too (only 200 counted before a review: it retried forever) */
    proxy p204;
    if (proxy_start(&p204, 0)) {
        pthread_mutex_lock(&p204.mu);
        p204.no_content = true;
        pthread_mutex_unlock(&p204.mu);
        const double ok0 = metrics_value(m->ec_announce_ok_s), err0 = metrics_value(m->ec_announce_err_s);
        snprintf(url, sizeof url, "http://127.0.0.1:%d", p204.port);
        CHECK_OK(epd_announcer_start(url, "http://127.0.0.1:8123", 1, m, &a, &err), &err);
        CHECK_MSG(proxy_wait(&p204, 2, 6), "%d registrations seen", proxy_calls(&p204));
        CHECK(metrics_value(m->ec_registered_s) == 1);
        CHECK(metrics_value(m->ec_announce_ok_s) >= ok0 + 1 && metrics_value(m->ec_announce_err_s) == err0);
        epd_announcer_stop(a);
        proxy_stop(&p204);
    } else {
        CHECK_MSG(0, "cannot listen on 127.0.0.1 a second time");
    }
    /* an unreachable proxy: nothing breaks, and stopping stays bounded */
    snprintf(url, sizeof url, "http://127.0.0.1:%d", p.port);
    CHECK_OK(epd_announcer_start(url, "http://127.0.0.1:8123", 1, m, &a, &err), &err);
    usleep(300 * 1000);
    t0 = vitd_now();
    epd_announcer_stop(a);
    CHECK_MSG(vitd_now() - t0 < 6, "stop took %.1f s", vitd_now() - t0);
    CHECK(metrics_value(m->ec_announce_err_s) >= 2);
    metrics_vitd_free(m);
}

int main(void) {
    char dir[] = "/tmp/vitd_test_ec_XXXXXX";
    if (!mkdtemp(dir)) SKIP("cannot create a temporary directory");
    char d1[600], d2[600], d3[600];
    snprintf(d1, sizeof d1, "%s/file", dir);
    snprintf(d2, sizeof d2, "%s/bytes", dir);
    snprintf(d3, sizeof d3, "%s/age", dir);
    test_file(d1);
    test_bytes_bound(d2);
    test_age_and_scan(d3);
    char d4[600];
    snprintf(d4, sizeof d4, "%s/conc", dir);
    test_concurrent(d4);
    test_announce();
    int rc = check_done("test_ec_cache");
    if (rc == 0) check_rm_tree(dir);
    else fprintf(stderr, "files kept in %s\n", dir);
    return rc;
}
