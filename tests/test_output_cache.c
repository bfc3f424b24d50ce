/* test_output_cache.c — the output cache (server/output_cache.h) on its own: a miss leads and its settled entry is
 * a hit with the same buffers; a second request for an entry in flight waits and is told how it settled; a failed
 * leader's entry leaves the cache (the next request leads again); entries larger than the cache stay out; the
 * byte bound evicts least recently used first while references keep evicted buffers alive; the metrics; and a
 * stress of threads getting, settling and releasing the same few keys (run under ASan/TSan for races). */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "metrics.h"
#include "output_cache.h"
#include "util.h"

static void key_of(int k, uint8_t key[32]) {
    memset(key, 0, 32);
    key[0] = (uint8_t)k;
    key[31] = (uint8_t)(k * 7 + 1);
}

typedef struct {
    int calls;
    bool ok;
} settled;

static void on_settle(void *arg, bool ok) {
    settled *s = arg;
    s->calls++;
    s->ok = ok;
}

static void test_basics(void) {
    printf("lead, hit, wait, failure, size\n");
    metrics_vitd *m = metrics_vitd_create();
    const vitd_grid g = {1, 4, 4}; /* 4 tokens */
    const int D = 8, k = 2;
    const size_t one = 4 * D * (1 + k) * 2; /* bytes of one entry, bfloat16 */
    output_cache *c = output_cache_create(10 * one, m);
    CHECK(output_cache_create(0, m) == NULL);
    uint8_t key[32];
    key_of(1, key);
    oc_entry *a = NULL, *b = NULL, *w = NULL;
    settled s = {0};
    CHECK_EQ_INT(OC_LEAD, output_cache_get(c, key, &g, D, k, 2, on_settle, &s, &a));
    CHECK(a && oc_entry_embeddings(a) && oc_entry_deepstack(a));
    CHECK_EQ_INT(OC_WAIT, output_cache_get(c, key, &g, D, k, 2, on_settle, &s, &w));
    CHECK(w == a && s.calls == 0);
    memset(oc_entry_embeddings(a), 0x5a, 4 * D * 2);
    output_cache_settle(c, a, true);
    CHECK(s.calls == 1 && s.ok);
    CHECK_EQ_INT(OC_HIT, output_cache_get(c, key, &g, D, k, 2, on_settle, &s, &b));
    CHECK(b == a && ((uint8_t *)oc_entry_embeddings(b))[3] == 0x5a && oc_entry_grid(b)->h == 4);
    output_cache_release(c, a);
    output_cache_release(c, w);
    output_cache_release(c, b);
    /* a leader that fails: its waiter is told, and the next request leads again */
    key_of(2, key);
    settled s2 = {0};
    CHECK_EQ_INT(OC_LEAD, output_cache_get(c, key, &g, D, k, 2, on_settle, &s2, &a));
    CHECK_EQ_INT(OC_WAIT, output_cache_get(c, key, &g, D, k, 2, on_settle, &s2, &w));
    output_cache_settle(c, a, false);
    CHECK(s2.calls == 1 && !s2.ok);
    CHECK_EQ_INT(OC_LEAD, output_cache_get(c, key, &g, D, k, 2, on_settle, &s2, &b));
    CHECK(b != a);
    output_cache_settle(c, b, true);
    output_cache_release(c, a);
    output_cache_release(c, w);
    output_cache_release(c, b);
    /* larger than the whole cache: solo */
    vitd_grid big = {1, 64, 64};
    key_of(3, key);
    CHECK_EQ_INT(OC_SOLO, output_cache_get(c, key, &big, D, k, 2, on_settle, &s, &a));
    CHECK(a == NULL);
    size_t entries = 0, bytes = 0;
    output_cache_stats(c, &entries, &bytes);
    CHECK(entries == 2 && bytes == 2 * one);
    CHECK(metrics_value(m->oc_hit_s) == 1 && metrics_value(m->oc_wait_s) == 2 && metrics_value(m->oc_miss_s) == 4);
    output_cache_free(c);
    metrics_vitd_free(m);
}

static void test_lru(void) {
    printf("byte bound, least recently used first\n");
    metrics_vitd *m = metrics_vitd_create();
    const vitd_grid g = {1, 4, 4};
    const int D = 8, k = 0;
    const size_t one = 4 * D * 4; /* float32, no DeepStack */
    output_cache *c = output_cache_create(3 * one, m);
    uint8_t key[32];
    oc_entry *e[5] = {0}, *h = NULL;
    settled s = {0};
    for (int i = 0; i < 3; i++) {
        key_of(10 + i, key);
        CHECK_EQ_INT(OC_LEAD, output_cache_get(c, key, &g, D, k, 4, on_settle, &s, &e[i]));
        CHECK(oc_entry_deepstack(e[i]) == NULL);
        output_cache_settle(c, e[i], true);
    }
    key_of(10, key); /* touch the oldest: it becomes the most recent */
    CHECK_EQ_INT(OC_HIT, output_cache_get(c, key, &g, D, k, 4, on_settle, &s, &h));
    output_cache_release(c, h);
    key_of(13, key);
    CHECK_EQ_INT(OC_LEAD, output_cache_get(c, key, &g, D, k, 4, on_settle, &s, &e[3]));
    output_cache_settle(c, e[3], true);
    /* 11 was the least recently used: evicted; its buffer stays usable while referenced */
    key_of(11, key);
    oc_entry *again = NULL;
    CHECK_EQ_INT(OC_LEAD, output_cache_get(c, key, &g, D, k, 4, on_settle, &s, &again));
    memset(oc_entry_embeddings(e[1]), 1, one); /* still ours: no use after free (ASan) */
    output_cache_settle(c, again, false);
    output_cache_release(c, again);
    key_of(10, key);
    CHECK_EQ_INT(OC_HIT, output_cache_get(c, key, &g, D, k, 4, on_settle, &s, &h));
    output_cache_release(c, h);
    CHECK(metrics_value(m->oc_evictions_s) >= 1);
    size_t bytes = 0;
    output_cache_stats(c, NULL, &bytes);
    CHECK_MSG(bytes <= 3 * one, "%zu bytes over the bound %zu", bytes, 3 * one);
    for (int i = 0; i < 4; i++) output_cache_release(c, e[i]);
    output_cache_free(c);
    metrics_vitd_free(m);
}

/* ---- stress ---- */

typedef struct {
    output_cache *c;
    int seed, leads, hits, waits;
} worker;

static void count_settle(void *arg, bool ok) {
    (void)arg;
    (void)ok;
}

static void *stress_main(void *arg) {
    worker *w = arg;
    unsigned long long rng = (unsigned long long)w->seed * 977 + 1;
    const vitd_grid g = {1, 2, 2};
    for (int n = 0; n < 20000; n++) {
        uint8_t key[32];
        key_of((int)(check_rng_next(&rng) % 12), key);
        oc_entry *e = NULL;
        oc_result r = output_cache_get(w->c, key, &g, 4, 1, 2, count_settle, NULL, &e);
        if (r == OC_LEAD) {
            memset(oc_entry_embeddings(e), (int)n, 4 * 2);
            output_cache_settle(w->c, e, check_rng_next(&rng) % 5 != 0);
            w->leads++;
        } else if (r == OC_HIT) {
            volatile uint8_t x = ((uint8_t *)oc_entry_embeddings(e))[0];
            (void)x;
            w->hits++;
        } else if (r == OC_WAIT) {
            w->waits++;
        }
        output_cache_release(w->c, e);
    }
    return NULL;
}

static void test_stress(void) {
    printf("stress: 4 threads x 20000 lookups of 12 keys, a cache of 5\n");
    output_cache *c = output_cache_create(5 * 16, NULL); /* 16 bytes per entry */
    worker w[4];
    pthread_t t[4];
    for (int i = 0; i < 4; i++) {
        w[i] = (worker){.c = c, .seed = i + 1};
        pthread_create(&t[i], NULL, stress_main, &w[i]);
    }
    int leads = 0, hits = 0, waits = 0;
    for (int i = 0; i < 4; i++) {
        pthread_join(t[i], NULL);
        leads += w[i].leads, hits += w[i].hits, waits += w[i].waits;
    }
    printf("  %d leads, %d hits, %d waits\n", leads, hits, waits);
    CHECK(leads > 0 && hits > 0 && leads + hits + waits == 80000);
    size_t bytes = 0;
    output_cache_stats(c, NULL, &bytes);
    CHECK(bytes <= 5 * 16);
    output_cache_free(c);
}

int main(void) {
    test_basics();
    test_lru();
    test_stress();
    return check_done("test_output_cache");
}
