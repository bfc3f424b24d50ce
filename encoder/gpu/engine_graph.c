/* engine_graph.c — CUDA graphs of the GPU engine's block segments (issue 14).
 *
 * Why: a small batch is launch-bound. One 448x448 image (784 patches) enqueues about 300 operations (per block two
 * LayerNorms, four cuBLASLt GEMMs, the rotary pass and cuDNN's attention) whose host cost (descriptors,
 * algorithm checks, launches) exceeds the GPU's work; a replayed graph launches them all at once.
 *
 * What is captured: the blocks between two deepstack taps (engine_blocks on the compute stream; no event, copy or
 * host sync inside). The mergers, their copies to the host and the events that order batches stay outside, so
 * pipelining is unchanged. A graph is keyed by the segment, the exact batch shape (every segment length, hence
 * the token count and the attention plans) and the paths (FP8 attention, FP8 linear GEMMs); the pointers it bakes
 * in are the engine's fixed buffers, so a replay computes exactly what a plain launch would (bit-identical, tested).
 *
 * Policy: a shape seen once runs plainly (and builds whatever cuDNN plans and cuBLASLt choices it needs); seen a
 * second time it is captured and replayed from then on. Kept: ENGINE_GRAPHS segments, least recently used out. The
 * FP8 attention plans a replay runs are pinned by gpu_engine_submit (gpu_attn_fp8_ready) as a plain batch's are.
 * Not captured: profiling runs, batches over graph_max_tokens, a layer's first FP8 step (a host-side branch), the
 * first FP8-linear batch (amax recording). Any attention plan built or evicted since a capture (gpu_attn's
 * counters) drops that graph (it may hold a plan's kernels); a capture that fails (a library refusing stream
 * capture) is counted (gpu_engine_graph_stats) and retried on later sightings, GRAPH_MAX_FAILS times at most.
 */
#include <stdlib.h>
#include <string.h>

#include "engine_priv.h"
#include "util.h"

enum { G_FREE = 0, G_SEEN, G_READY, G_FAILED };
#define GRAPH_MAX_FAILS 3 /* a shape whose capture failed this often runs plainly for good */

struct eng_graph {
    int state;
    int fails;                /* captures that failed; G_FAILED at GRAPH_MAX_FAILS */
    int i0, i1, N, n_seg, fp8;
    unsigned lin;
    int *lens;                /* [n_seg] */
    long gen;                 /* attention plan generation when captured */
    unsigned long last_use;
    cudaGraphExec_t exec;
};

static long attn_generation(const gpu_engine *g) {
    gpu_attn_stats s;
    gpu_attn_get_stats(g->attn, &s);
    return (long)s.plans_built + s.full_evictions + s.fp8_evictions;
}

static void drop_exec(gpu_engine *g, eng_graph *e) {
    if (e->exec) {
        cudaStreamSynchronize(g->s_main); /* a launch of it may still run */
        cudaGraphExecDestroy(e->exec);
        e->exec = NULL;
    }
}

static void release(gpu_engine *g, eng_graph *e) {
    drop_exec(g, e);
    free(e->lens);
    memset(e, 0, sizeof *e);
}

void graph_free_all(gpu_engine *g) {
    if (!g->graphs) return;
    for (int k = 0; k < ENGINE_GRAPHS; k++) release(g, &g->graphs[k]);
    free(g->graphs);
    g->graphs = NULL;
}

void gpu_engine_set_graphs(gpu_engine *g, int on) {
    if (!on) graph_free_all(g);
    g->graphs_on = on != 0;
}

void gpu_engine_graph_stats(const gpu_engine *g, long *captured, long *replayed, long *failed) {
    if (captured) *captured = g->graph_captures;
    if (replayed) *replayed = g->graph_replays;
    if (failed) *failed = g->graph_failures;
}

static int same_key(const eng_graph *e, const eng_pass *p, const eng_slot *sl, int i0, int i1) {
    return e->state != G_FREE && e->i0 == i0 && e->i1 == i1 && e->N == p->N && e->n_seg == sl->n_seg &&
           e->fp8 == p->fp8 && e->lin == p->lin && !memcmp(e->lens, sl->h_lens, (size_t)sl->n_seg * sizeof(int));
}

/* The entry of this key, or a new G_SEEN one in the least recently used slot. */
static eng_graph *lookup(gpu_engine *g, const eng_pass *p, const eng_slot *sl, int i0, int i1, unsigned long now) {
    eng_graph *victim = NULL; /* the first free slot, else the least recently used */
    for (int k = 0; k < ENGINE_GRAPHS; k++) {
        eng_graph *e = &g->graphs[k];
        if (same_key(e, p, sl, i0, i1)) {
            e->last_use = now;
            return e;
        }
        if (!victim || (victim->state != G_FREE && (e->state == G_FREE || e->last_use < victim->last_use)))
            victim = e;
    }
    release(g, victim);
    *victim = (eng_graph){.state = G_SEEN, .i0 = i0, .i1 = i1, .N = p->N, .n_seg = sl->n_seg, .fp8 = p->fp8,
                          .lin = p->lin, .last_use = now};
    victim->lens = xmalloc((size_t)sl->n_seg * sizeof(int));
    memcpy(victim->lens, sl->h_lens, (size_t)sl->n_seg * sizeof(int));
    return NULL; /* first sighting: run plainly */
}

/* Captures blocks [i0, i1) into e->exec. On failure (the capture refused or the blocks failed inside it) the
 * FP8 step counters the capture advanced are put back and the caller runs the segment plainly. */
static int capture(gpu_engine *g, eng_graph *e, const eng_pass *p, int i0, int i1) {
    long saved[64];
    const int n_layers = i1 - i0, keep = p->fp8 && n_layers <= 64;
    if (keep) memcpy(saved, g->fp8_steps + i0, (size_t)n_layers * sizeof(long));
    cudaGraph_t graph = NULL;
    vitd_err e2 = {0};
    if (cudaStreamBeginCapture(g->s_main, cudaStreamCaptureModeThreadLocal) != cudaSuccess) goto failed;
    vitd_status st = engine_blocks(g, p, i0, i1, &e2);
    cudaError_t ce = cudaStreamEndCapture(g->s_main, &graph);
    if (st != VITD_OK || ce != cudaSuccess || !graph) goto failed;
    ce = cudaGraphInstantiateWithFlags(&e->exec, graph, 0);
    cudaGraphDestroy(graph);
    graph = NULL;
    if (ce != cudaSuccess) goto failed;
    e->state = G_READY;
    e->gen = attn_generation(g);
    g->graph_captures++;
    return 1;
failed:
    if (graph) cudaGraphDestroy(graph);
    cudaGetLastError(); /* capture errors are not sticky */
    if (keep) memcpy(g->fp8_steps + i0, saved, (size_t)n_layers * sizeof(long));
    e->exec = NULL;
    e->fails++;
    /* a failure can be transient (a plan evicted since the first sighting is rebuilt inside the capture, which
     * refuses it): the next sighting tries again, up to GRAPH_MAX_FAILS */
    e->state = e->fails >= GRAPH_MAX_FAILS ? G_FAILED : G_SEEN;
    g->graph_failures++;
    vitd_log(VITD_LOG_WARN, "gpu engine: CUDA graph capture of blocks %d-%d (%d tokens) failed: %s%s", i0, i1 - 1,
             p->N, e2.msg[0] ? e2.msg : "the stream capture was refused",
             e->state == G_FAILED ? "; that shape runs without graphs" : "; it is tried again on a later batch");
    return 0;
}

vitd_status graph_segment(gpu_engine *g, const eng_pass *p, const eng_slot *sl, int i0, int i1, vitd_err *err) {
    vitd_status st = VITD_OK;
    int usable = g->graphs_on && !g->prof_on && (size_t)p->N <= g->graph_max_tokens && !p->lin_calib &&
                 !g->d_calib && i1 - i0 <= 64;
    for (int i = i0; usable && p->fp8 && i < i1; i++)
        if (g->fp8_steps[i] == 0) usable = 0;
    if (!usable) return engine_blocks(g, p, i0, i1, err);
    if (!g->graphs) g->graphs = xcalloc(ENGINE_GRAPHS, sizeof *g->graphs);
    const unsigned long now = (unsigned long)(g->graph_captures + g->graph_replays + g->graph_failures) + 1 +
                              (unsigned long)g->lin_steps;
    eng_graph *e = lookup(g, p, sl, i0, i1, now);
    if (!e || e->state == G_FAILED) return engine_blocks(g, p, i0, i1, err);
    if (e->state == G_READY && e->gen != attn_generation(g)) {
        drop_exec(g, e); /* an attention plan was built or evicted since: capture again */
        e->state = G_SEEN;
        return engine_blocks(g, p, i0, i1, err);
    }
    if (e->state == G_SEEN) {
        if (!capture(g, e, p, i0, i1)) return engine_blocks(g, p, i0, i1, err);
    } else {
        for (int i = i0; p->fp8 && i < i1; i++) g->fp8_steps[i]++; /* what attention_step counts when it runs */
        g->graph_replays++;
    }
    CUDA_TRY(cudaGraphLaunch(e->exec, g->s_main));
    return VITD_OK;
fail:
    return st;
}
