/* output_cache.c — encoder outputs by content, LRU by bytes, with single flight (output_cache.h).
 *
 * An entry is reference counted: the cache holds one reference while the entry is indexed, each requester one
 * more. Entries live in a chained hash table keyed by their 32-byte key (the first 8 bytes, a SHA-256 prefix,
 * are the hash) and, once ready, in a doubly linked LRU list whose tail is evicted first. Pending entries carry the
 * list of their waiters. One mutex guards it all; allocation of a new entry's buffers happens under it (one
 * malloc), the waiters' callbacks after it is released. */
#include "output_cache.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

typedef struct waiter {
    oc_settle_fn fn;
    void *arg;
    struct waiter *next;
} waiter;

struct oc_entry {
    uint8_t key[32];
    vitd_grid grid;
    size_t bytes;
    void *emb, *ds;            /* one allocation: embeddings, then DeepStack */
    int refs;                  /* the cache's (while indexed) and the requesters' */
    bool ready, indexed;
    waiter *waiters;           /* pending only */
    oc_entry *hnext;           /* hash chain */
    oc_entry *prev, *next;     /* LRU list, ready entries only; head = most recent */
};

struct output_cache {
    pthread_mutex_t mu;        /* guards everything */
    size_t max_bytes, bytes, n;
    oc_entry **buckets;
    size_t nb;                 /* a power of two */
    oc_entry *head, *tail;
    metrics_vitd *m;
};

static size_t bucket_of(const output_cache *c, const uint8_t *key) {
    uint64_t h;
    memcpy(&h, key, 8);
    return (size_t)h & (c->nb - 1);
}

static void publish(output_cache *c) {
    if (!c->m) return;
    metrics_set(c->m->oc_bytes_s, (double)c->bytes);
    metrics_set(c->m->oc_entries_s, (double)c->n);
}

output_cache *output_cache_create(size_t max_bytes, metrics_vitd *metrics) {
    if (!max_bytes) return NULL;
    output_cache *c = xcalloc(1, sizeof *c);
    pthread_mutex_init(&c->mu, NULL);
    c->max_bytes = max_bytes;
    c->nb = 1024;
    c->buckets = xcalloc(c->nb, sizeof *c->buckets);
    c->m = metrics;
    publish(c);
    return c;
}

static void entry_free(oc_entry *e) {
    free(e->emb);
    free(e);
}

/* ---- callers hold mu ---- */

static void lru_unlink(output_cache *c, oc_entry *e) {
    if (e->prev) e->prev->next = e->next;
    else c->head = e->next;
    if (e->next) e->next->prev = e->prev;
    else c->tail = e->prev;
    e->prev = e->next = NULL;
}

static void lru_push(output_cache *c, oc_entry *e) {
    e->prev = NULL;
    e->next = c->head;
    if (c->head) c->head->prev = e;
    c->head = e;
    if (!c->tail) c->tail = e;
}

/* Takes e out of the index (and the LRU list); drops the cache's reference. Returns true when e was freed. */
static bool unindex(output_cache *c, oc_entry *e) {
    oc_entry **p = &c->buckets[bucket_of(c, e->key)];
    while (*p != e) p = &(*p)->hnext;
    *p = e->hnext;
    if (e->ready) lru_unlink(c, e);
    e->indexed = false;
    c->bytes -= e->bytes;
    c->n--;
    if (--e->refs > 0) return false;
    entry_free(e);
    return true;
}

/* Evicts ready entries, least recently used first, until the bytes fit (pending ones are never evicted). */
static void evict(output_cache *c) {
    while (c->bytes > c->max_bytes && c->tail) {
        unindex(c, c->tail);
        if (c->m) metrics_inc(c->m->oc_evictions_s);
    }
}

static void grow(output_cache *c) {
    size_t nb = c->nb * 2;
    oc_entry **b = calloc(nb, sizeof *b);
    if (!b) return; /* longer chains, still correct */
    for (size_t i = 0; i < c->nb; i++)
        for (oc_entry *e = c->buckets[i], *nx; e; e = nx) {
            nx = e->hnext;
            uint64_t h;
            memcpy(&h, e->key, 8);
            size_t k = (size_t)h & (nb - 1);
            e->hnext = b[k];
            b[k] = e;
        }
    free(c->buckets);
    c->buckets = b;
    c->nb = nb;
}

/* ---- public ---- */

oc_result output_cache_get(output_cache *c, const uint8_t key[32], const vitd_grid *grid, int D, int k, size_t es,
                           oc_settle_fn on_settle, void *arg, oc_entry **out) {
    *out = NULL;
    if (!c) return OC_SOLO;
    size_t tokens = (size_t)grid->t * (size_t)grid->h * (size_t)grid->w / 4;
    size_t emb_bytes = tokens * (size_t)D * es, bytes = emb_bytes * (size_t)(1 + k);
    pthread_mutex_lock(&c->mu);
    oc_entry *e = c->buckets[bucket_of(c, key)];
    while (e && memcmp(e->key, key, 32)) e = e->hnext;
    if (e && e->ready) {
        e->refs++;
        lru_unlink(c, e);
        lru_push(c, e);
        pthread_mutex_unlock(&c->mu);
        if (c->m) metrics_inc(c->m->oc_hit_s);
        *out = e;
        return OC_HIT;
    }
    if (e) {
        waiter *w = malloc(sizeof *w);
        if (!w) {
            pthread_mutex_unlock(&c->mu);
            return OC_SOLO;
        }
        *w = (waiter){on_settle, arg, e->waiters};
        e->waiters = w;
        e->refs++;
        pthread_mutex_unlock(&c->mu);
        if (c->m) metrics_inc(c->m->oc_wait_s);
        *out = e;
        return OC_WAIT;
    }
    if (c->m) metrics_inc(c->m->oc_miss_s);
    if (bytes > c->max_bytes) {
        pthread_mutex_unlock(&c->mu);
        return OC_SOLO;
    }
    e = calloc(1, sizeof *e);
    void *buf = e ? malloc(bytes ? bytes : 1) : NULL;
    if (!buf) {
        free(e);
        pthread_mutex_unlock(&c->mu);
        return OC_SOLO;
    }
    memcpy(e->key, key, 32);
    e->grid = *grid;
    e->bytes = bytes;
    e->emb = buf;
    e->ds = k > 0 ? (uint8_t *)buf + emb_bytes : NULL;
    e->refs = 2; /* the cache's and the leader's */
    e->indexed = true;
    size_t b = bucket_of(c, key);
    e->hnext = c->buckets[b];
    c->buckets[b] = e;
    c->bytes += bytes;
    c->n++;
    evict(c);
    if (c->n > c->nb) grow(c);
    publish(c);
    pthread_mutex_unlock(&c->mu);
    *out = e;
    return OC_LEAD;
}

const vitd_grid *oc_entry_grid(const oc_entry *e) { return &e->grid; }
void *oc_entry_embeddings(oc_entry *e) { return e->emb; }
void *oc_entry_deepstack(oc_entry *e) { return e->ds; }

void output_cache_settle(output_cache *c, oc_entry *e, bool ok) {
    pthread_mutex_lock(&c->mu);
    waiter *w = e->waiters;
    e->waiters = NULL;
    if (e->indexed) {
        if (ok) {
            e->ready = true;
            lru_push(c, e);
            evict(c);
        } else {
            unindex(c, e); /* the leader's reference keeps it */
        }
    }
    publish(c);
    pthread_mutex_unlock(&c->mu);
    while (w) {
        waiter *next = w->next;
        w->fn(w->arg, ok);
        free(w);
        w = next;
    }
}

void output_cache_release(output_cache *c, oc_entry *e) {
    if (!e) return;
    pthread_mutex_lock(&c->mu);
    bool last = --e->refs == 0;
    pthread_mutex_unlock(&c->mu);
    if (last) entry_free(e);
}

void output_cache_stats(output_cache *c, size_t *entries, size_t *bytes) {
    if (!c) {
        if (entries) *entries = 0;
        if (bytes) *bytes = 0;
        return;
    }
    pthread_mutex_lock(&c->mu);
    if (entries) *entries = c->n;
    if (bytes) *bytes = c->bytes;
    pthread_mutex_unlock(&c->mu);
}

void output_cache_free(output_cache *c) {
    if (!c) return;
    for (size_t i = 0; i < c->nb; i++)
        for (oc_entry *e = c->buckets[i], *nx; e; e = nx) {
            nx = e->hnext;
            if (--e->refs == 0) entry_free(e); /* every request has let go by now */
        }
    free(c->buckets);
    pthread_mutex_destroy(&c->mu);
    free(c);
}
