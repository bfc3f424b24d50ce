/* engine_host.c — the GPU engine's host side: a pool of worker threads that lives as long as the engine, and the
 * f32 <-> bf16 conversions of pixels and outputs (SSE2 where built for x86-64). See engine_priv.h. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "engine_priv.h"
#include "util.h"

/* ---- host worker pool ----
 * The pixel and output conversions run on host threads that live as long as the engine, not on threads started per
 * call (cpu_parallel_for): with 15 threads started per 6 MB chunk, 77 MB of pixels took 7 ms on the GPU machine
 * (11 GB/s read), most of it suspected to be thread start-up. pool_run splits [0, n) into contiguous parts, one per
 * worker plus the caller, and returns when all are done. Used by the engine's one calling thread only. */

static void *pool_worker(void *arg) {
    pool_arg *a = arg;
    host_pool *p = a->p;
    unsigned long seen = 0;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (p->gen == seen && !p->stop) pthread_cond_wait(&p->cv_work, &p->mu);
        if (p->stop) break;
        seen = p->gen;
        const int part = a->index + 1, parts = p->parts;
        if (part < parts) {
            cpu_range_fn fn = p->fn;
            void *ctx = p->ctx;
            const size_t n = p->n;
            pthread_mutex_unlock(&p->mu);
            fn(ctx, n * (size_t)part / (size_t)parts, n * (size_t)(part + 1) / (size_t)parts);
            pthread_mutex_lock(&p->mu);
        }
        if (--p->pending == 0) pthread_cond_signal(&p->cv_done);
    }
    pthread_mutex_unlock(&p->mu);
    free(a);
    return NULL;
}

/* Starts up to n_workers threads (fewer if creation fails; the caller still does its part). */
void engine_pool_start(host_pool *p, int n_workers) {
    memset(p, 0, sizeof *p);
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv_work, NULL);
    pthread_cond_init(&p->cv_done, NULL);
    p->tid = xcalloc((size_t)(n_workers > 0 ? n_workers : 1), sizeof *p->tid);
    for (int i = 0; i < n_workers; i++) {
        pool_arg *a = xmalloc(sizeof *a);
        *a = (pool_arg){p, i};
        if (pthread_create(&p->tid[i], NULL, pool_worker, a) != 0) {
            free(a);
            break;
        }
        p->n_started++;
    }
    p->n_workers = p->n_started;
}

void engine_pool_stop(host_pool *p) {
    if (!p->tid) return;
    pthread_mutex_lock(&p->mu);
    p->stop = 1;
    pthread_cond_broadcast(&p->cv_work);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < p->n_started; i++) pthread_join(p->tid[i], NULL);
    free(p->tid);
    p->tid = NULL;
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv_work);
    pthread_cond_destroy(&p->cv_done);
}

/* Runs fn over [0, n) on the workers and the calling thread; parts of at least min_items. */
void engine_pool_run(host_pool *p, size_t n, size_t min_items, cpu_range_fn fn, void *ctx) {
    size_t parts = n / (min_items ? min_items : 1);
    if (parts > (size_t)p->n_workers + 1) parts = (size_t)p->n_workers + 1;
    if (parts <= 1) {
        if (n) fn(ctx, 0, n);
        return;
    }
    pthread_mutex_lock(&p->mu);
    p->fn = fn;
    p->ctx = ctx;
    p->n = n;
    p->parts = (int)parts;
    p->pending = p->n_workers;
    p->gen++;
    pthread_cond_broadcast(&p->cv_work);
    pthread_mutex_unlock(&p->mu);
    fn(ctx, 0, n / parts);
    pthread_mutex_lock(&p->mu);
    while (p->pending) pthread_cond_wait(&p->cv_done, &p->mu);
    pthread_mutex_unlock(&p->mu);
}


/* pool_run over [begin, end) instead of [0, n). */
typedef struct {
    cpu_range_fn fn;
    void *ctx;
    size_t base;
} shifted_job;

static void shifted_range(void *arg, size_t begin, size_t end) {
    shifted_job *j = arg;
    j->fn(j->ctx, j->base + begin, j->base + end);
}

void engine_pool_run_range(host_pool *p, size_t begin, size_t end, size_t min_items, cpu_range_fn fn, void *ctx) {
    shifted_job j = {fn, ctx, begin};
    engine_pool_run(p, end - begin, min_items, shifted_range, &j);
}


/* ---- host conversions ---- */

void gpu_engine_host_to_bf16(const float *in, uint16_t *out, size_t n) {
    size_t i = 0;
#if defined(__SSE2__)
    const __m128i one = _mm_set1_epi32(1), round = _mm_set1_epi32(0x7fff), absmask = _mm_set1_epi32(0x7fffffff);
    const __m128i inf = _mm_set1_epi32(0x7f800000), quiet = _mm_set1_epi32(0x40);
    for (; i + 8 <= n; i += 8) {
        __m128i r[2];
        for (int half = 0; half < 2; half++) {
            __m128i u = _mm_castps_si128(_mm_loadu_ps(in + i + 4 * half));
            /* round to nearest even: u + 0x7fff + ((u >> 16) & 1), then the high half */
            __m128i rn = _mm_add_epi32(u, _mm_add_epi32(round, _mm_and_si128(_mm_srli_epi32(u, 16), one)));
            rn = _mm_srli_epi32(rn, 16);
            __m128i nan = _mm_cmpgt_epi32(_mm_and_si128(u, absmask), inf);
            __m128i qn = _mm_or_si128(_mm_srli_epi32(u, 16), quiet);
            __m128i v = _mm_or_si128(_mm_and_si128(nan, qn), _mm_andnot_si128(nan, rn));
            /* 16-bit values in 32-bit lanes: sign-extend so the signed saturating pack keeps the bits */
            r[half] = _mm_srai_epi32(_mm_slli_epi32(v, 16), 16);
        }
        _mm_storeu_si128((__m128i *)(out + i), _mm_packs_epi32(r[0], r[1]));
    }
#endif
    for (; i < n; i++) out[i] = f32_to_bf16(in[i]);
}

void gpu_engine_host_to_f32(const uint16_t *in, float *out, size_t n) {
    size_t i = 0;
#if defined(__SSE2__)
    const __m128i zero = _mm_setzero_si128();
    for (; i + 8 <= n; i += 8) {
        __m128i h = _mm_loadu_si128((const __m128i *)(in + i));
        _mm_storeu_si128((__m128i *)(out + i), _mm_unpacklo_epi16(zero, h));
        _mm_storeu_si128((__m128i *)(out + i + 4), _mm_unpackhi_epi16(zero, h));
    }
#endif
    for (; i < n; i++) out[i] = bf16_to_f32(in[i]);
}
