/* gpu_attn.c — cuDNN graph-API attention (BF16, FP8), variable length, plans cached by shape.
 *
 * Owns: the cuDNN handle of one device, the workspace, the ragged index tensors (element offsets and sequence
 * lengths, rewritten per batch by a kernel from cu_seqlens), and three sets of execution plans: the ladder of
 * packed BF16 plans built at creation, an LRU of BF16 "full" plans keyed by image length, and an LRU of FP8
 * plans keyed by (images, bucketed longest image) or (0, length) for a large image's own plan. The graphs
 * follow the recipes verified on the H100 from C (shared/CUDNN.md):
 *
 *  unified   one CUDNN_BACKEND_OPERATION_SDPA_FWD_DESCRIPTOR (BF16 only); with SEQ_LEN_Q/KV and ragged offsets
 *            it is the packed plan (cuDNN >= 9.15), without them the per-image full plan.
 *  composite matmul(Q, K^T) -> *scale [-> *descale_q *descale_k] [-> padding mask] -> softmax with its stats
 *            branch (LOG and ADD must be present or the backend refuses the pattern) -> matmul(P, V), and for FP8
 *            amax(P), P*scale_s in E4M3, O*descale_s*descale_v, amax(O), O*scale_o in E4M3. K is given to the
 *            graph transposed ([b,h,d,s]).
 *
 * All tensors are 4-D with token-major strides {s*h*d, d, h*d, 1}: the packed [T, H, Dp] buffer is the b = 1
 * case, and with ragged offsets (in elements: cu_seqlens * H * Dp) any batch. Every plan keeps the descriptors
 * of its graph alive until it is freed.
 */
#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gpu_attn.h"
#include "gpu_common.h"
#include "util.h"

/* Propagates a vitd_status from a helper. */
#define TRY(call)                        \
    do {                                 \
        st = (call);                     \
        if (st != VITD_OK) goto fail;    \
    } while (0)

/* Tensor unique ids of the graphs (non-virtual ones are the variant pack's keys). */
enum {
    UID_Q = 1, UID_K = 2, UID_V = 3, UID_O = 4,
    UID_OFF_Q = 11, UID_OFF_K = 12, UID_OFF_V = 13, UID_OFF_O = 14,
    UID_SEQ_Q = 20, UID_SEQ_KV = 21,
    UID_SCALE = 30, UID_NEG = 31,
    UID_DESCALE_Q = 40, UID_DESCALE_K = 41, UID_DESCALE_V = 42, UID_DESCALE_S = 43,
    UID_SCALE_S = 44, UID_SCALE_O = 45,
    UID_AMAX_S = 50, UID_AMAX_O = 51,
    UID_VIRTUAL0 = 1000,
};

typedef enum { PLAN_UNIFIED = 0, PLAN_COMPOSITE = 1, PLAN_FP8 = 2 } plan_kind;
static const char *const plan_kind_name[] = {"bf16-unified", "bf16-composite", "fp8-composite"};

#define PLAN_MAX_DESCS 192
#define PLAN_MAX_OPS 48

typedef struct {
    cudnnBackendDescriptor_t plan;                    /* the execution plan (also in descs) */
    cudnnBackendDescriptor_t descs[PLAN_MAX_DESCS];   /* everything the graph was made of, freed with the plan */
    int n_descs;
    plan_kind kind;
    int ragged;                                       /* 1: offsets + seq lens (packed); 0: one image, no mask */
    int b, s;                                         /* entries and s_max the plan was built for */
    int64_t workspace;
    int engine, n_engines;                            /* config used, of those heuristics offered */
} attn_plan;

/* One LRU slot: key (a, b) -> plan. FP8: a = images, b = bucketed s_max. Full: a = length, b = 0. */
typedef struct {
    int a, b;
    attn_plan *plan;
    uint64_t last_use;
    uint64_t batch_epoch;  /* == ctx epoch: used by the current batch, not evictable */
} plan_slot;

typedef struct {
    plan_slot *slots;
    int cap, n;
} plan_lru;

#define LADDER_MAX 16
#define PENDING_MAX 64

/* A plan wanted by a batch while builds were deferred (gpu_attn_set_defer), built by gpu_attn_build_pending. */
typedef struct {
    int fp8;               /* 0: the full LRU, 1: the FP8 LRU */
    int a, b;              /* LRU key */
    plan_kind kind;
    int ragged, pb, ps;    /* what build_plan gets */
} pending_plan;

struct gpu_attn_ctx {
    gpu_attn_opts opts;
    gpu_attn_features feat;
    int device;
    cudnnHandle_t handle;
    void *d_workspace;
    int32_t *d_offsets;        /* [max_batch + 1] element offsets of each entry */
    int32_t *d_seqlen_all;     /* [max_batch] tokens per entry (0 past n) */
    int32_t *d_seqlen_packed;  /* [max_batch] as above, 0 for images on a BF16 full plan */
    int32_t *d_seqlen_fp8;     /* [max_batch] as above, 1 (dummy) for images on their own FP8 plan */
    float *d_amax_part;        /* [2 * (max_batch + 1)] slots: amax of each launch of a split FP8 call */
    float attn_scale;          /* head_dim^-0.5, passed by value */
    float neg_fill;            /* masked score value (lowest float, as cudnn-frontend uses) */
    plan_kind bf16_kind;       /* recipe of the packed plans */
    plan_kind full_kind;       /* recipe of full plans */
    int lb[LADDER_MAX], ls[LADDER_MAX], n_lb, n_ls; /* packed ladder rungs: entries, s_max */
    attn_plan **ladder;        /* [n_lb * n_ls], ladder[ib * n_ls + is] */
    plan_lru full, fp8;
    uint64_t clock, epoch;
    gpu_attn_stats stats;
    /* the current batch (gpu_attn_begin) */
    int have_batch;
    int n;
    int *lens;                 /* [max_batch] */
    int64_t *cu;               /* [max_batch + 1] host prefix sums */
    attn_plan **full_of;       /* [max_batch] BF16 full plan of image i, or NULL (packed) */
    attn_plan *packed_cur;     /* packed plan of this batch, NULL if every image runs full */
    int s_max;
    int fp8_thr;               /* images with at least this many tokens get their own FP8 launch */
    int fp8_resolved;          /* FP8 plans looked up for this batch */
    int fp8_single;            /* 1: one launch over all images (seqlen_all) */
    attn_plan *fp8_packed;     /* the packed FP8 launch (NULL if every image is large) */
    attn_plan **fp8_big;       /* [max_batch] own FP8 plan of image i, or NULL */
    char desc[96], desc_fp8[96];
    /* deferred builds */
    int defer;                 /* gpu_attn_set_defer */
    int deferring;             /* inside a lookup that must not build (lru_get records the key instead) */
    pending_plan pend[PENDING_MAX];
    int n_pend;
};

/* ---- graph building ---- */

typedef struct {
    attn_plan *p;
    cudnnBackendDescriptor_t ops[PLAN_MAX_OPS];
    int n_ops;
    int64_t next_uid;
} gbuild;

/* Creates a descriptor owned by the plan under construction. */
static vitd_status gb_new(gbuild *g, cudnnBackendDescriptorType_t type, cudnnBackendDescriptor_t *out,
                          vitd_err *err) {
    vitd_status st = VITD_OK;
    *out = NULL;
    if (g->p->n_descs >= PLAN_MAX_DESCS)
        return vitd_fail(err, VITD_E_INTERNAL, "attn graph: more than %d descriptors", PLAN_MAX_DESCS);
    CUDNN_TRY(cudnnBackendCreateDescriptor(type, out));
    g->p->descs[g->p->n_descs++] = *out;
    return VITD_OK;
fail:
    return st;
}

enum { T_VIRTUAL = 1, T_BY_VALUE = 2 };

/* A finalized tensor descriptor. uid < 0: next virtual uid. ragged: offset tensor or NULL. */
static vitd_status gb_tensor(gbuild *g, int64_t uid, cudnnDataType_t dt, const int64_t dims[4],
                             const int64_t strides[4], int flags, cudnnBackendDescriptor_t ragged,
                             cudnnBackendDescriptor_t *out, vitd_err *err) {
    vitd_status st = VITD_OK;
    cudnnBackendDescriptor_t t;
    int64_t align = 16;
    bool yes = true;
    if (uid < 0) uid = g->next_uid++;
    TRY(gb_new(g, CUDNN_BACKEND_TENSOR_DESCRIPTOR, &t, err));
    CUDNN_TRY(cudnnBackendSetAttribute(t, CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &dt));
    CUDNN_TRY(cudnnBackendSetAttribute(t, CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, 4, dims));
    CUDNN_TRY(cudnnBackendSetAttribute(t, CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, 4, strides));
    CUDNN_TRY(cudnnBackendSetAttribute(t, CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid));
    CUDNN_TRY(cudnnBackendSetAttribute(t, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &align));
    if (flags & T_VIRTUAL)
        CUDNN_TRY(cudnnBackendSetAttribute(t, CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, 1, &yes));
    if (flags & T_BY_VALUE)
        CUDNN_TRY(cudnnBackendSetAttribute(t, CUDNN_ATTR_TENSOR_IS_BY_VALUE, CUDNN_TYPE_BOOLEAN, 1, &yes));
    if (ragged)
        CUDNN_TRY(cudnnBackendSetAttribute(t, CUDNN_ATTR_TENSOR_RAGGED_OFFSET_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR,
                                           1, &ragged));
    CUDNN_TRY(cudnnBackendFinalize(t));
    *out = t;
    return VITD_OK;
fail:
    return st;
}

static vitd_status gb_add_op(gbuild *g, cudnnBackendDescriptor_t op, vitd_err *err) {
    if (g->n_ops >= PLAN_MAX_OPS)
        return vitd_fail(err, VITD_E_INTERNAL, "attn graph: more than %d operations", PLAN_MAX_OPS);
    g->ops[g->n_ops++] = op;
    return VITD_OK;
}

/* y = mode(x [, b] [, t]) computed in `prec`; axis >= 0 for GEN_INDEX. */
static vitd_status gb_pointwise(gbuild *g, cudnnPointwiseMode_t mode, cudnnDataType_t prec, int64_t axis,
                                cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t b, cudnnBackendDescriptor_t t,
                                cudnnBackendDescriptor_t y, vitd_err *err) {
    vitd_status st = VITD_OK;
    cudnnBackendDescriptor_t pw, op;
    TRY(gb_new(g, CUDNN_BACKEND_POINTWISE_DESCRIPTOR, &pw, err));
    CUDNN_TRY(cudnnBackendSetAttribute(pw, CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, 1, &mode));
    CUDNN_TRY(cudnnBackendSetAttribute(pw, CUDNN_ATTR_POINTWISE_MATH_PREC, CUDNN_TYPE_DATA_TYPE, 1, &prec));
    if (axis >= 0) CUDNN_TRY(cudnnBackendSetAttribute(pw, CUDNN_ATTR_POINTWISE_AXIS, CUDNN_TYPE_INT64, 1, &axis));
    CUDNN_TRY(cudnnBackendFinalize(pw));
    TRY(gb_new(g, CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR, &op, err));
    CUDNN_TRY(cudnnBackendSetAttribute(op, CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR,
                                       CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &pw));
    CUDNN_TRY(cudnnBackendSetAttribute(op, CUDNN_ATTR_OPERATION_POINTWISE_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
                                       &x));
    if (b)
        CUDNN_TRY(cudnnBackendSetAttribute(op, CUDNN_ATTR_OPERATION_POINTWISE_BDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR,
                                           1, &b));
    if (t)
        CUDNN_TRY(cudnnBackendSetAttribute(op, CUDNN_ATTR_OPERATION_POINTWISE_TDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR,
                                           1, &t));
    CUDNN_TRY(cudnnBackendSetAttribute(op, CUDNN_ATTR_OPERATION_POINTWISE_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
                                       &y));
    CUDNN_TRY(cudnnBackendFinalize(op));
    TRY(gb_add_op(g, op, err));
    return VITD_OK;
fail:
    return st;
}

/* c = a @ b in float; m_ovr / n_ovr / k_ovr: per-batch GEMM sizes (seq len tensors) or NULL. */
static vitd_status gb_matmul(gbuild *g, cudnnBackendDescriptor_t a, cudnnBackendDescriptor_t b,
                             cudnnBackendDescriptor_t c, cudnnBackendDescriptor_t m_ovr,
                             cudnnBackendDescriptor_t n_ovr, cudnnBackendDescriptor_t k_ovr, vitd_err *err) {
    vitd_status st = VITD_OK;
    cudnnBackendDescriptor_t mm, op;
    cudnnDataType_t comp = CUDNN_DATA_FLOAT;
    TRY(gb_new(g, CUDNN_BACKEND_MATMUL_DESCRIPTOR, &mm, err));
    CUDNN_TRY(cudnnBackendSetAttribute(mm, CUDNN_ATTR_MATMUL_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &comp));
    CUDNN_TRY(cudnnBackendFinalize(mm));
    TRY(gb_new(g, CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR, &op, err));
    CUDNN_TRY(cudnnBackendSetAttribute(op, CUDNN_ATTR_OPERATION_MATMUL_ADESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &a));
    CUDNN_TRY(cudnnBackendSetAttribute(op, CUDNN_ATTR_OPERATION_MATMUL_BDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &b));
    CUDNN_TRY(cudnnBackendSetAttribute(op, CUDNN_ATTR_OPERATION_MATMUL_CDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &c));
    CUDNN_TRY(cudnnBackendSetAttribute(op, CUDNN_ATTR_OPERATION_MATMUL_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &mm));
    if (m_ovr)
        CUDNN_TRY(cudnnBackendSetAttribute(op, CUDNN_ATTR_OPERATION_MATMUL_GEMM_M_OVERRIDE_DESC,
                                           CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &m_ovr));
    if (n_ovr)
        CUDNN_TRY(cudnnBackendSetAttribute(op, CUDNN_ATTR_OPERATION_MATMUL_GEMM_N_OVERRIDE_DESC,
                                           CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &n_ovr));
    if (k_ovr)
        CUDNN_TRY(cudnnBackendSetAttribute(op, CUDNN_ATTR_OPERATION_MATMUL_GEMM_K_OVERRIDE_DESC,
                                           CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &k_ovr));
    CUDNN_TRY(cudnnBackendFinalize(op));
    TRY(gb_add_op(g, op, err));
    return VITD_OK;
fail:
    return st;
}

/* y = reduce_op(x) over the axes where y has extent 1, in float. */
static vitd_status gb_reduction(gbuild *g, cudnnReduceTensorOp_t rop, cudnnBackendDescriptor_t x,
                                cudnnBackendDescriptor_t y, vitd_err *err) {
    vitd_status st = VITD_OK;
    cudnnBackendDescriptor_t rd, op;
    cudnnDataType_t comp = CUDNN_DATA_FLOAT;
    TRY(gb_new(g, CUDNN_BACKEND_REDUCTION_DESCRIPTOR, &rd, err));
    CUDNN_TRY(cudnnBackendSetAttribute(rd, CUDNN_ATTR_REDUCTION_OPERATOR, CUDNN_TYPE_REDUCTION_OPERATOR_TYPE, 1,
                                       &rop));
    CUDNN_TRY(cudnnBackendSetAttribute(rd, CUDNN_ATTR_REDUCTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &comp));
    CUDNN_TRY(cudnnBackendFinalize(rd));
    TRY(gb_new(g, CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR, &op, err));
    CUDNN_TRY(cudnnBackendSetAttribute(op, CUDNN_ATTR_OPERATION_REDUCTION_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
                                       &x));
    CUDNN_TRY(cudnnBackendSetAttribute(op, CUDNN_ATTR_OPERATION_REDUCTION_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
                                       &y));
    CUDNN_TRY(cudnnBackendSetAttribute(op, CUDNN_ATTR_OPERATION_REDUCTION_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
                                       &rd));
    CUDNN_TRY(cudnnBackendFinalize(op));
    TRY(gb_add_op(g, op, err));
    return VITD_OK;
fail:
    return st;
}

/* Operation graph -> heuristics (mode A, then FALLBACK) -> the first engine config whose execution plan
 * finalizes and fits the workspace. Sets g->p->plan and workspace. Diagnostics: VITD_ATTN_ENGINE=k in the
 * environment takes the k-th config that finalizes instead (or the last one if fewer), to time alternatives
 * (bench_attn); the plan log line names the config and how many heuristics offered. */
static vitd_status gb_finish(gbuild *g, cudnnHandle_t handle, int64_t ws_limit, vitd_err *err) {
    vitd_status st = VITD_OK;
    cudnnBackendDescriptor_t graph, cfgs[16];
    int n_cfgs = 0;
    char why[160] = "";
    TRY(gb_new(g, CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR, &graph, err));
    CUDNN_TRY(cudnnBackendSetAttribute(graph, CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle));
    CUDNN_TRY(cudnnBackendSetAttribute(graph, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR,
                                       g->n_ops, g->ops));
    CUDNN_TRY(cudnnBackendFinalize(graph));

    const cudnnBackendHeurMode_t modes[2] = {CUDNN_HEUR_MODE_A, CUDNN_HEUR_MODE_FALLBACK};
    const char *pick_env = getenv("VITD_ATTN_ENGINE");
    int skip = pick_env ? atoi(pick_env) : 0;
    for (int mi = 0; mi < 2 && !g->p->plan; mi++) {
        cudnnBackendDescriptor_t heur;
        int64_t count = 0, got = 0;
        TRY(gb_new(g, CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR, &heur, err));
        CUDNN_TRY(cudnnBackendSetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH,
                                           CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &graph));
        CUDNN_TRY(cudnnBackendSetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &modes[mi]));
        if (cudnnBackendFinalize(heur) != CUDNN_STATUS_SUCCESS) {
            cudnnGetLastErrorString(why, sizeof why);
            continue;
        }
        CUDNN_TRY(cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 0,
                                           &count, NULL));
        if (count <= 0) {
            cudnnGetLastErrorString(why, sizeof why);
            continue;
        }
        if (count > 16) count = 16;
        for (n_cfgs = 0; n_cfgs < count; n_cfgs++)
            CUDNN_TRY(cudnnBackendCreateDescriptor(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR, &cfgs[n_cfgs]));
        CUDNN_TRY(cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR,
                                           count, &got, cfgs));
        g->p->n_engines = (int)got;
        for (int i = 0; i < got && !g->p->plan; i++) {
            cudnnBackendDescriptor_t plan = NULL;
            int64_t ws = 0, n_ws = 0;
            if (cudnnBackendCreateDescriptor(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR, &plan) != CUDNN_STATUS_SUCCESS)
                continue;
            if (cudnnBackendSetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle) ||
                cudnnBackendSetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG,
                                         CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &cfgs[i]) ||
                cudnnBackendFinalize(plan) ||
                cudnnBackendGetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1, &n_ws,
                                         &ws)) {
                cudnnGetLastErrorString(why, sizeof why);
                cudnnBackendDestroyDescriptor(plan);
                continue;
            }
            if (ws > ws_limit) {
                snprintf(why, sizeof why, "engine config %d needs %lld B of workspace, context has %lld", i,
                         (long long)ws, (long long)ws_limit);
                cudnnBackendDestroyDescriptor(plan);
                continue;
            }
            if (skip > 0 && i + 1 < got) { /* diagnostics: a later config that also works */
                skip--;
                cudnnBackendDestroyDescriptor(plan);
                continue;
            }
            g->p->engine = i;
            /* keep the plan and its engine config with the graph's descriptors */
            if (g->p->n_descs + 2 > PLAN_MAX_DESCS) {
                cudnnBackendDestroyDescriptor(plan);
                st = vitd_fail(err, VITD_E_INTERNAL, "attn graph: more than %d descriptors", PLAN_MAX_DESCS);
                goto fail;
            }
            g->p->descs[g->p->n_descs++] = cfgs[i];
            cfgs[i] = NULL;
            g->p->descs[g->p->n_descs++] = plan;
            g->p->plan = plan;
            g->p->workspace = ws;
        }
        for (int i = 0; i < n_cfgs; i++)
            if (cfgs[i]) cudnnBackendDestroyDescriptor(cfgs[i]);
        n_cfgs = 0;
    }
    if (!g->p->plan)
        return vitd_fail(err, VITD_E_GPU, "cuDNN: no engine for the attention graph (%s)", why[0] ? why : "none");
    return VITD_OK;
fail:
    for (int i = 0; i < n_cfgs; i++)
        if (cfgs[i]) cudnnBackendDestroyDescriptor(cfgs[i]);
    return st;
}

static void plan_free(attn_plan *p) {
    if (!p) return;
    for (int i = p->n_descs - 1; i >= 0; i--) cudnnBackendDestroyDescriptor(p->descs[i]);
    free(p);
}

/* Builds an attention plan for b entries of up to s tokens (ragged) or one image of exactly s tokens (full).
 * On success *out is owned by the caller (plan_free). */
static vitd_status build_plan(gpu_attn_ctx *c, plan_kind kind, int ragged, int b, int s, attn_plan **out,
                              vitd_err *err) {
    vitd_status st = VITD_OK;
    double t0 = vitd_now();
    const int64_t h = c->opts.n_heads, d = c->opts.head_dim_padded, B = b, S = s;
    const bool fp8 = kind == PLAN_FP8;
    const cudnnDataType_t io_t = fp8 ? CUDNN_DATA_FP8_E4M3 : CUDNN_DATA_BFLOAT16;
    const cudnnDataType_t f32 = CUDNN_DATA_FLOAT, i32 = CUDNN_DATA_INT32, bln = CUDNN_DATA_BOOLEAN;
    attn_plan *p = xcalloc(1, sizeof *p);
    gbuild g = {.p = p, .n_ops = 0, .next_uid = UID_VIRTUAL0};
    p->kind = kind;
    p->ragged = ragged;
    p->b = b;
    p->s = s;

    const int64_t qd[4] = {B, h, S, d}, qs[4] = {S * h * d, d, h * d, 1};
    const int64_t ktd[4] = {B, h, d, S}, kts[4] = {S * h * d, d, 1, h * d};
    const int64_t one[4] = {1, 1, 1, 1};
    const int64_t offd[4] = {B + 1, 1, 1, 1}, seqd[4] = {B, 1, 1, 1};
    const int64_t sd[4] = {B, h, S, S}, ss[4] = {h * S * S, S * S, S, 1};
    const int64_t rd[4] = {B, h, S, 1}, rs[4] = {h * S, S, 1, 1};
    const int64_t od[4] = {B, h, S, d}, os[4] = {h * S * d, S * d, d, 1};

    cudnnBackendDescriptor_t off[4] = {NULL, NULL, NULL, NULL}, seq_q = NULL, seq_kv = NULL;
    cudnnBackendDescriptor_t Q, K, V, O, scale;
    if (ragged) {
        for (int i = 0; i < 4; i++) TRY(gb_tensor(&g, UID_OFF_Q + i, i32, offd, one, 0, NULL, &off[i], err));
        TRY(gb_tensor(&g, UID_SEQ_Q, i32, seqd, one, 0, NULL, &seq_q, err));
        TRY(gb_tensor(&g, UID_SEQ_KV, i32, seqd, one, 0, NULL, &seq_kv, err));
    }
    TRY(gb_tensor(&g, UID_Q, io_t, qd, qs, 0, off[0], &Q, err));
    if (kind == PLAN_UNIFIED)
        TRY(gb_tensor(&g, UID_K, io_t, qd, qs, 0, off[1], &K, err));
    else
        TRY(gb_tensor(&g, UID_K, io_t, ktd, kts, 0, off[1], &K, err));
    TRY(gb_tensor(&g, UID_V, io_t, qd, qs, 0, off[2], &V, err));
    TRY(gb_tensor(&g, UID_O, io_t, qd, qs, 0, off[3], &O, err));
    TRY(gb_tensor(&g, UID_SCALE, f32, one, one, T_BY_VALUE, NULL, &scale, err));

    if (kind == PLAN_UNIFIED) {
        cudnnBackendDescriptor_t op;
        TRY(gb_new(&g, CUDNN_BACKEND_OPERATION_SDPA_FWD_DESCRIPTOR, &op, err));
        CUDNN_TRY(cudnnBackendSetAttribute(op, CUDNN_ATTR_OPERATION_SDPA_FWD_QDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR,
                                           1, &Q));
        CUDNN_TRY(cudnnBackendSetAttribute(op, CUDNN_ATTR_OPERATION_SDPA_FWD_KDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR,
                                           1, &K));
        CUDNN_TRY(cudnnBackendSetAttribute(op, CUDNN_ATTR_OPERATION_SDPA_FWD_VDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR,
                                           1, &V));
        CUDNN_TRY(cudnnBackendSetAttribute(op, CUDNN_ATTR_OPERATION_SDPA_FWD_ODESC, CUDNN_TYPE_BACKEND_DESCRIPTOR,
                                           1, &O));
        CUDNN_TRY(cudnnBackendSetAttribute(op, CUDNN_ATTR_OPERATION_SDPA_FWD_SCALEDESC,
                                           CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &scale));
        if (ragged) {
            CUDNN_TRY(cudnnBackendSetAttribute(op, CUDNN_ATTR_OPERATION_SDPA_FWD_SEQ_LEN_QDESC,
                                               CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &seq_q));
            CUDNN_TRY(cudnnBackendSetAttribute(op, CUDNN_ATTR_OPERATION_SDPA_FWD_SEQ_LEN_KVDESC,
                                               CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &seq_kv));
        }
        CUDNN_TRY(cudnnBackendFinalize(op));
        TRY(gb_add_op(&g, op, err));
    } else {
        cudnnBackendDescriptor_t Sx, Sy, M, Sub, E, Z, logZ, Stats, P;
        /* scores = (Q K^T) * scale [* descale_q * descale_k] */
        TRY(gb_tensor(&g, -1, f32, sd, ss, T_VIRTUAL, NULL, &Sx, err));
        TRY(gb_matmul(&g, Q, K, Sx, seq_q, seq_kv, NULL, err));
        TRY(gb_tensor(&g, -1, f32, sd, ss, T_VIRTUAL, NULL, &Sy, err));
        TRY(gb_pointwise(&g, CUDNN_POINTWISE_MUL, f32, -1, Sx, scale, NULL, Sy, err));
        Sx = Sy;
        if (fp8) {
            cudnnBackendDescriptor_t dq, dk;
            TRY(gb_tensor(&g, UID_DESCALE_Q, f32, one, one, 0, NULL, &dq, err));
            TRY(gb_tensor(&g, UID_DESCALE_K, f32, one, one, 0, NULL, &dk, err));
            TRY(gb_tensor(&g, -1, f32, sd, ss, T_VIRTUAL, NULL, &Sy, err));
            TRY(gb_pointwise(&g, CUDNN_POINTWISE_MUL, f32, -1, Sx, dq, NULL, Sy, err));
            Sx = Sy;
            TRY(gb_tensor(&g, -1, f32, sd, ss, T_VIRTUAL, NULL, &Sy, err));
            TRY(gb_pointwise(&g, CUDNN_POINTWISE_MUL, f32, -1, Sx, dk, NULL, Sy, err));
            Sx = Sy;
        }
        if (ragged) {
            /* padding mask: keep (row < seq_q) && (col < seq_kv), else the lowest float */
            cudnnBackendDescriptor_t row, col, rm, cm, mask, neg;
            TRY(gb_tensor(&g, UID_NEG, f32, one, one, T_BY_VALUE, NULL, &neg, err));
            TRY(gb_tensor(&g, -1, i32, sd, ss, T_VIRTUAL, NULL, &row, err));
            TRY(gb_pointwise(&g, CUDNN_POINTWISE_GEN_INDEX, i32, 2, Sx, NULL, NULL, row, err));
            TRY(gb_tensor(&g, -1, i32, sd, ss, T_VIRTUAL, NULL, &col, err));
            TRY(gb_pointwise(&g, CUDNN_POINTWISE_GEN_INDEX, i32, 3, Sx, NULL, NULL, col, err));
            TRY(gb_tensor(&g, -1, bln, sd, ss, T_VIRTUAL, NULL, &rm, err));
            TRY(gb_pointwise(&g, CUDNN_POINTWISE_CMP_LT, bln, -1, row, seq_q, NULL, rm, err));
            TRY(gb_tensor(&g, -1, bln, sd, ss, T_VIRTUAL, NULL, &cm, err));
            TRY(gb_pointwise(&g, CUDNN_POINTWISE_CMP_LT, bln, -1, col, seq_kv, NULL, cm, err));
            TRY(gb_tensor(&g, -1, bln, sd, ss, T_VIRTUAL, NULL, &mask, err));
            TRY(gb_pointwise(&g, CUDNN_POINTWISE_LOGICAL_AND, bln, -1, rm, cm, NULL, mask, err));
            TRY(gb_tensor(&g, -1, f32, sd, ss, T_VIRTUAL, NULL, &Sy, err));
            TRY(gb_pointwise(&g, CUDNN_POINTWISE_BINARY_SELECT, f32, -1, Sx, neg, mask, Sy, err));
            Sx = Sy;
        }
        /* softmax with its statistics branch: M = max, E = exp(S - M), Z = sum E, Stats = M + log Z, P = E / Z */
        TRY(gb_tensor(&g, -1, f32, rd, rs, T_VIRTUAL, NULL, &M, err));
        TRY(gb_reduction(&g, CUDNN_REDUCE_TENSOR_MAX, Sx, M, err));
        TRY(gb_tensor(&g, -1, f32, sd, ss, T_VIRTUAL, NULL, &Sub, err));
        TRY(gb_pointwise(&g, CUDNN_POINTWISE_SUB, f32, -1, Sx, M, NULL, Sub, err));
        TRY(gb_tensor(&g, -1, f32, sd, ss, T_VIRTUAL, NULL, &E, err));
        TRY(gb_pointwise(&g, CUDNN_POINTWISE_EXP, f32, -1, Sub, NULL, NULL, E, err));
        TRY(gb_tensor(&g, -1, f32, rd, rs, T_VIRTUAL, NULL, &Z, err));
        TRY(gb_reduction(&g, CUDNN_REDUCE_TENSOR_ADD, E, Z, err));
        TRY(gb_tensor(&g, -1, f32, rd, rs, T_VIRTUAL, NULL, &logZ, err));
        TRY(gb_pointwise(&g, CUDNN_POINTWISE_LOG, f32, -1, Z, NULL, NULL, logZ, err));
        TRY(gb_tensor(&g, -1, f32, rd, rs, T_VIRTUAL, NULL, &Stats, err));
        TRY(gb_pointwise(&g, CUDNN_POINTWISE_ADD, f32, -1, M, logZ, NULL, Stats, err));
        TRY(gb_tensor(&g, -1, fp8 ? f32 : CUDNN_DATA_BFLOAT16, sd, ss, T_VIRTUAL, NULL, &P, err));
        TRY(gb_pointwise(&g, CUDNN_POINTWISE_DIV, f32, -1, E, Z, NULL, P, err));
        if (!fp8) {
            TRY(gb_matmul(&g, P, V, O, seq_q, NULL, seq_kv, err));
        } else {
            cudnnBackendDescriptor_t ds, ss_, dv, so, amax_s, amax_o, P8, O1, O2, O3;
            TRY(gb_tensor(&g, UID_DESCALE_V, f32, one, one, 0, NULL, &dv, err));
            TRY(gb_tensor(&g, UID_DESCALE_S, f32, one, one, 0, NULL, &ds, err));
            TRY(gb_tensor(&g, UID_SCALE_S, f32, one, one, 0, NULL, &ss_, err));
            TRY(gb_tensor(&g, UID_SCALE_O, f32, one, one, 0, NULL, &so, err));
            TRY(gb_tensor(&g, UID_AMAX_S, f32, one, one, 0, NULL, &amax_s, err));
            TRY(gb_tensor(&g, UID_AMAX_O, f32, one, one, 0, NULL, &amax_o, err));
            TRY(gb_reduction(&g, CUDNN_REDUCE_TENSOR_AMAX, P, amax_s, err));
            TRY(gb_tensor(&g, -1, CUDNN_DATA_FP8_E4M3, sd, ss, T_VIRTUAL, NULL, &P8, err));
            TRY(gb_pointwise(&g, CUDNN_POINTWISE_MUL, f32, -1, P, ss_, NULL, P8, err));
            TRY(gb_tensor(&g, -1, f32, od, os, T_VIRTUAL, NULL, &O1, err));
            TRY(gb_matmul(&g, P8, V, O1, seq_q, NULL, seq_kv, err));
            TRY(gb_tensor(&g, -1, f32, od, os, T_VIRTUAL, NULL, &O2, err));
            TRY(gb_pointwise(&g, CUDNN_POINTWISE_MUL, f32, -1, O1, ds, NULL, O2, err));
            TRY(gb_tensor(&g, -1, f32, od, os, T_VIRTUAL, NULL, &O3, err));
            TRY(gb_pointwise(&g, CUDNN_POINTWISE_MUL, f32, -1, O2, dv, NULL, O3, err));
            TRY(gb_pointwise(&g, CUDNN_POINTWISE_MUL, f32, -1, O3, so, NULL, O, err));
            TRY(gb_reduction(&g, CUDNN_REDUCE_TENSOR_AMAX, O3, amax_o, err));
        }
    }
    TRY(gb_finish(&g, c->handle, (int64_t)c->opts.workspace_bytes, err));

    double ms = 1e3 * (vitd_now() - t0);
    c->stats.plans_built++;
    c->stats.build_ms_total += ms;
    vitd_log(VITD_LOG_INFO, "attn: built %s %s plan b=%d s=%d in %.0f ms (workspace %lld B, %d descriptors, "
             "engine config %d of %d)", plan_kind_name[kind], ragged ? "ragged" : "full", b, s, ms,
             (long long)p->workspace, p->n_descs, p->engine, p->n_engines);
    *out = p;
    return VITD_OK;
fail:
    plan_free(p);
    return st;
}

/* ---- plan execution ---- */

/* Enqueues plan p on `stream` with the given (uid, pointer) pairs and the context's workspace. */
static vitd_status run_plan(gpu_attn_ctx *c, const attn_plan *p, const int64_t *uids, void *const *ptrs, int n,
                            cudaStream_t stream, vitd_err *err) {
    vitd_status st = VITD_OK;
    cudnnBackendDescriptor_t vp = NULL;
    CUDNN_TRY(cudnnSetStream(c->handle, stream));
    CUDNN_TRY(cudnnBackendCreateDescriptor(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR, &vp));
    CUDNN_TRY(cudnnBackendSetAttribute(vp, CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, n, ptrs));
    CUDNN_TRY(cudnnBackendSetAttribute(vp, CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, n, uids));
    CUDNN_TRY(cudnnBackendSetAttribute(vp, CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1,
                                       &c->d_workspace));
    CUDNN_TRY(cudnnBackendFinalize(vp));
    CUDNN_TRY(cudnnBackendExecute(c->handle, p->plan, vp));
    cudnnBackendDestroyDescriptor(vp);
    return VITD_OK;
fail:
    if (vp) cudnnBackendDestroyDescriptor(vp);
    return st;
}

/* Collects the variant pack of a plan: q..o are the tensors' base pointers; offsets/seqlen the ragged index
 * tensors (ragged plans); scalars the FP8 slots (FP8 plans), amax_s a replacement for the AMAX_S slot or NULL.
 * AMAX_O is the last pair, so a caller can redirect it too. Returns the number of pairs. */
static int pack_args(gpu_attn_ctx *c, const attn_plan *p, const void *q, const void *k, const void *v, void *o,
                     int32_t *offsets, int32_t *seqlen, float *scalars, float *amax_s, int64_t uids[24],
                     void *ptrs[24]) {
    int n = 0;
#define ARG(u, ptr) (uids[n] = (u), ptrs[n] = (void *)(ptr), n++)
    ARG(UID_Q, q);
    ARG(UID_K, k);
    ARG(UID_V, v);
    ARG(UID_O, o);
    ARG(UID_SCALE, &c->attn_scale);
    if (p->ragged) {
        ARG(UID_OFF_Q, offsets);
        ARG(UID_OFF_K, offsets);
        ARG(UID_OFF_V, offsets);
        ARG(UID_OFF_O, offsets);
        ARG(UID_SEQ_Q, seqlen);
        ARG(UID_SEQ_KV, seqlen);
        if (p->kind != PLAN_UNIFIED) ARG(UID_NEG, &c->neg_fill);
    }
    if (p->kind == PLAN_FP8) {
        const int w = ATTN_FP8_SLOT_FLOATS;
        ARG(UID_DESCALE_Q, scalars + ATTN_FP8_DESCALE_Q * w);
        ARG(UID_DESCALE_K, scalars + ATTN_FP8_DESCALE_K * w);
        ARG(UID_DESCALE_V, scalars + ATTN_FP8_DESCALE_V * w);
        ARG(UID_DESCALE_S, scalars + ATTN_FP8_DESCALE_S * w);
        ARG(UID_SCALE_S, scalars + ATTN_FP8_SCALE_S * w);
        ARG(UID_SCALE_O, scalars + ATTN_FP8_SCALE_O * w);
        ARG(UID_AMAX_S, amax_s ? amax_s : scalars + ATTN_FP8_AMAX_S * w);
        ARG(UID_AMAX_O, scalars + ATTN_FP8_AMAX_O * w); /* last: callers may redirect it */
    }
#undef ARG
    return n;
}

/* ---- LRU plan caches ---- */

static void lru_init(plan_lru *l, int cap) {
    l->cap = cap > 0 ? cap : 1;
    l->n = 0;
    l->slots = xcalloc((size_t)l->cap, sizeof *l->slots);
}

static void lru_release(plan_lru *l) {
    for (int i = 0; i < l->n; i++) plan_free(l->slots[i].plan);
    free(l->slots);
    l->slots = NULL;
    l->n = 0;
}

static plan_slot *lru_find(plan_lru *l, int a, int b) {
    for (int i = 0; i < l->n; i++)
        if (l->slots[i].a == a && l->slots[i].b == b) return &l->slots[i];
    return NULL;
}

/* A free slot for a new plan: an empty one, or the least recently used one not pinned by a batch that may still
 * run on the GPU: the current one and the VITD_ENCODER_PIPELINE - 1 before it (their launches may not have
 * executed yet, and freeing a plan can unload its runtime-compiled kernel). The evicted plan is freed;
 * *evicted counts it. NULL if every slot is pinned. */
static plan_slot *lru_take(plan_lru *l, uint64_t epoch, int *evicted) {
    if (l->n < l->cap) {
        plan_slot *s = &l->slots[l->n++];
        memset(s, 0, sizeof *s);
        return s;
    }
    plan_slot *best = NULL;
    for (int i = 0; i < l->n; i++)
        if ((l->slots[i].batch_epoch == 0 || l->slots[i].batch_epoch + VITD_ENCODER_PIPELINE <= epoch) &&
            (!best || l->slots[i].last_use < best->last_use))
            best = &l->slots[i];
    if (!best) return NULL;
    vitd_log(VITD_LOG_INFO, "attn: evicting plan (%d, %d) from the LRU", best->a, best->b);
    plan_free(best->plan);
    memset(best, 0, sizeof *best);
    (*evicted)++;
    return best;
}

/* Remembers a plan to build later (deduplicated; dropped when the list is full: the next miss asks again). */
static void pend_add(gpu_attn_ctx *c, int fp8, int a, int b, plan_kind kind, int ragged, int pb, int ps) {
    for (int i = 0; i < c->n_pend; i++)
        if (c->pend[i].fp8 == fp8 && c->pend[i].a == a && c->pend[i].b == b) return;
    if (c->n_pend < PENDING_MAX) c->pend[c->n_pend++] = (pending_plan){fp8, a, b, kind, ragged, pb, ps};
}

/* Finds or builds the plan for key (a, b) in cache l; pin: the current batch uses it (not evictable until
 * VITD_ENCODER_PIPELINE more gpu_attn_begin calls). Build failures are errors; a full cache with every slot
 * pinned, or build_on_miss off, gives VITD_E_UNSUPPORTED; so does a miss while deferring, which records the key
 * for gpu_attn_build_pending. */
static vitd_status lru_get(gpu_attn_ctx *c, plan_lru *l, int a, int b, plan_kind kind, int ragged, int pb, int ps,
                           int pin, int *hits, int *misses, int *evictions, attn_plan **out, vitd_err *err) {
    plan_slot *s = lru_find(l, a, b);
    if (s) {
        (*hits)++;
    } else {
        (*misses)++;
        if (c->deferring) {
            pend_add(c, l == &c->fp8, a, b, kind, ragged, pb, ps);
            return vitd_fail(err, VITD_E_UNSUPPORTED, "attn: %s plan for (%d, %d) deferred", plan_kind_name[kind],
                             a, b);
        }
        if (!c->opts.build_on_miss)
            return vitd_fail(err, VITD_E_UNSUPPORTED, "attn: no %s plan for (%d, %d) and building is off",
                             plan_kind_name[kind], a, b);
        s = lru_take(l, c->epoch, evictions);
        if (!s)
            return vitd_fail(err, VITD_E_UNSUPPORTED, "attn: %s plan cache (%d) is full with plans of this batch",
                             plan_kind_name[kind], l->cap);
        attn_plan *p = NULL;
        vitd_status st = build_plan(c, kind, ragged, pb, ps, &p, err);
        if (st != VITD_OK) {
            /* give the slot back: move the last slot here */
            *s = l->slots[--l->n];
            return st;
        }
        s->a = a;
        s->b = b;
        s->plan = p;
    }
    s->last_use = ++c->clock;
    if (pin) s->batch_epoch = c->epoch;
    *out = s->plan;
    return VITD_OK;
}

/* ---- public API ---- */

gpu_attn_opts gpu_attn_opts_default(void) {
    gpu_attn_opts o;
    memset(&o, 0, sizeof o);
    o.n_heads = 16;
    o.head_dim = 72;
    o.head_dim_padded = 80;
    o.max_batch = 64;
    o.max_seqlen = 16384;
    o.workspace_bytes = (size_t)64 << 20;
    o.bf16_path = GPU_ATTN_BF16_AUTO;
    o.bf16_recipe = GPU_ATTN_RECIPE_AUTO;
    o.full_min_len = 4096;
    o.full_cache = 32;
    o.fp8 = 1;
    o.fp8_cache = 32;
    o.fp8_exact_smax = 0;
    o.fp8_split = 1;
    o.packed_ladder = 1;
    o.build_on_miss = 1;
    return o;
}

vitd_status gpu_attn_query(int device, gpu_attn_features *f, vitd_err *err) {
    vitd_status st = VITD_OK;
    int n_dev = 0;
    struct cudaDeviceProp prop;
    memset(f, 0, sizeof *f);
    CUDA_TRY(cudaGetDeviceCount(&n_dev));
    if (device < 0 || device >= n_dev)
        return vitd_fail(err, VITD_E_GPU, "attn: device %d does not exist (%d CUDA devices)", device, n_dev);
    CUDA_TRY(cudaGetDeviceProperties(&prop, device));
    f->cudnn_version = (int)cudnnGetVersion();
    f->cudnn_header_version = CUDNN_VERSION;
    f->cc_major = prop.major;
    f->cc_minor = prop.minor;
    f->sm_count = prop.multiProcessorCount;
    snprintf(f->device_name, sizeof f->device_name, "%.63s", prop.name);
    f->unified_seqlen = f->cudnn_version >= 91500;
    f->unified_full = f->cudnn_version >= 91301;
    f->fp8 = 0;
    if (prop.major < 9)
        snprintf(f->fp8_reason, sizeof f->fp8_reason, "compute capability %d.%d < 9.0", prop.major, prop.minor);
    else if (f->cudnn_version < 91701)
        snprintf(f->fp8_reason, sizeof f->fp8_reason,
                 "cuDNN %d < 9.17.1 (9.14 gives wrong FP8 output above 1024 tokens)", f->cudnn_version);
    else
        f->fp8 = 1;
    return VITD_OK;
fail:
    return st;
}

/* Rungs first, first*4, first*16, ... below maxv, then maxv itself. Returns the count. */
static int ladder_rungs(int maxv, int first, int *out) {
    int n = 0;
    for (int64_t v = first; v < maxv && n < LADDER_MAX - 1; v *= 4) out[n++] = (int)v;
    out[n++] = maxv;
    return n;
}

vitd_status gpu_attn_create(int device, const gpu_attn_opts *opts, gpu_attn_ctx **out, vitd_err *err) {
    vitd_status st = VITD_OK;
    gpu_attn_ctx *c = NULL;
    *out = NULL;
    const gpu_attn_opts *o = opts;
    if (o->n_heads < 1 || o->head_dim < 1 || o->head_dim_padded < o->head_dim || o->head_dim_padded % 16 ||
        o->head_dim_padded > 256)
        return vitd_fail(err, VITD_E_INVALID_ARG,
                         "attn: heads %d, head_dim %d, padded %d: need padded >= head_dim, multiple of 16, <= 256",
                         o->n_heads, o->head_dim, o->head_dim_padded);
    if (o->max_batch < 1 || o->max_seqlen < 1 || o->max_batch > 4096)
        return vitd_fail(err, VITD_E_INVALID_ARG, "attn: max_batch %d (1..4096), max_seqlen %d must be >= 1",
                         o->max_batch, o->max_seqlen);

    c = xcalloc(1, sizeof *c);
    c->opts = *o;
    c->device = device;
    if (c->opts.full_min_len < 1) c->opts.full_min_len = 1;
    TRY(gpu_attn_query(device, &c->feat, err));
    if (c->feat.cc_major < 9) {
        st = vitd_fail(err, VITD_E_UNSUPPORTED,
                       "attn: device %d (%s) has compute capability %d.%d; cuDNN ragged attention needs >= 9.0",
                       device, c->feat.device_name, c->feat.cc_major, c->feat.cc_minor);
        goto fail;
    }
    CUDA_TRY(cudaSetDevice(device));
    CUDNN_TRY(cudnnCreate(&c->handle));
    const size_t nb = (size_t)o->max_batch;
    CUDA_TRY(cudaMalloc(&c->d_workspace, c->opts.workspace_bytes ? c->opts.workspace_bytes : 256));
    CUDA_TRY(cudaMalloc((void **)&c->d_offsets, sizeof(int32_t) * (nb + 1)));
    CUDA_TRY(cudaMalloc((void **)&c->d_seqlen_all, sizeof(int32_t) * nb));
    CUDA_TRY(cudaMalloc((void **)&c->d_seqlen_packed, sizeof(int32_t) * nb));
    CUDA_TRY(cudaMalloc((void **)&c->d_seqlen_fp8, sizeof(int32_t) * nb));
    CUDA_TRY(cudaMalloc((void **)&c->d_amax_part, sizeof(float) * ATTN_FP8_SLOT_FLOATS * 2 * (nb + 1)));
    c->lens = xcalloc(nb, sizeof *c->lens);
    c->cu = xcalloc(nb + 1, sizeof *c->cu);
    c->full_of = xcalloc(nb, sizeof *c->full_of);
    c->fp8_big = xcalloc(nb, sizeof *c->fp8_big);
    c->attn_scale = (float)(1.0 / sqrt((double)o->head_dim));
    c->neg_fill = -FLT_MAX;
    lru_init(&c->full, o->full_cache);
    lru_init(&c->fp8, o->fp8_cache);

    bool unified_ok = c->feat.unified_seqlen;
    if (o->bf16_recipe == GPU_ATTN_RECIPE_UNIFIED && !unified_ok) {
        st = vitd_fail(err, VITD_E_UNSUPPORTED, "attn: unified SDPA with sequence lengths needs cuDNN >= 9.15, "
                       "loaded %d", c->feat.cudnn_version);
        goto fail;
    }
    c->bf16_kind = (o->bf16_recipe == GPU_ATTN_RECIPE_COMPOSITE || !unified_ok) ? PLAN_COMPOSITE : PLAN_UNIFIED;
    c->full_kind = (o->bf16_recipe == GPU_ATTN_RECIPE_COMPOSITE || !c->feat.unified_full) ? PLAN_COMPOSITE
                                                                                            : PLAN_UNIFIED;
    if (!c->feat.fp8) c->opts.fp8 = 0;

    vitd_log(VITD_LOG_INFO,
             "attn: device %d %s cc %d.%d, cuDNN %d (built against %d); unified+seqlen %s, FP8 %s%s%s; "
             "bf16 packed %s, full %s",
             device, c->feat.device_name, c->feat.cc_major, c->feat.cc_minor, c->feat.cudnn_version,
             c->feat.cudnn_header_version, c->feat.unified_seqlen ? "yes" : "no", c->feat.fp8 ? "yes" : "no",
             c->feat.fp8 ? "" : ": ", c->feat.fp8 ? "" : c->feat.fp8_reason, plan_kind_name[c->bf16_kind],
             plan_kind_name[c->full_kind]);

    if (o->packed_ladder) {
        c->n_lb = ladder_rungs(o->max_batch, 1, c->lb);
        c->n_ls = ladder_rungs(o->max_seqlen, 256, c->ls);
    } else {
        c->n_lb = c->n_ls = 1;
        c->lb[0] = o->max_batch;
        c->ls[0] = o->max_seqlen;
    }
    c->ladder = xcalloc((size_t)(c->n_lb * c->n_ls), sizeof *c->ladder);
    for (int ib = 0; ib < c->n_lb; ib++)
        for (int is = 0; is < c->n_ls; is++)
            TRY(build_plan(c, c->bf16_kind, 1, c->lb[ib], c->ls[is], &c->ladder[ib * c->n_ls + is], err));
    *out = c;
    return VITD_OK;
fail:
    gpu_attn_free(c);
    return st;
}

void gpu_attn_free(gpu_attn_ctx *c) {
    if (!c) return;
    if (c->ladder)
        for (int i = 0; i < c->n_lb * c->n_ls; i++) plan_free(c->ladder[i]);
    free(c->ladder);
    lru_release(&c->full);
    lru_release(&c->fp8);
    if (c->handle) cudnnDestroy(c->handle);
    cudaFree(c->d_workspace);
    cudaFree(c->d_offsets);
    cudaFree(c->d_seqlen_all);
    cudaFree(c->d_seqlen_packed);
    cudaFree(c->d_seqlen_fp8);
    cudaFree(c->d_amax_part);
    free(c->lens);
    free(c->cu);
    free(c->full_of);
    free(c->fp8_big);
    free(c);
}

const gpu_attn_features *gpu_attn_features_of(const gpu_attn_ctx *c) { return &c->feat; }
const gpu_attn_opts *gpu_attn_opts_of(const gpu_attn_ctx *c) { return &c->opts; }
void gpu_attn_get_stats(const gpu_attn_ctx *c, gpu_attn_stats *out) { *out = c->stats; }
void gpu_attn_set_bf16_path(gpu_attn_ctx *c, gpu_attn_bf16_path path) { c->opts.bf16_path = path; }
const char *gpu_attn_batch_desc(const gpu_attn_ctx *c) { return c->desc; }
const char *gpu_attn_fp8_desc(const gpu_attn_ctx *c) { return c->fp8_resolved ? c->desc_fp8 : ""; }

int gpu_attn_fp8_bucket(const gpu_attn_ctx *c, int max_len) {
    if (c->opts.fp8_exact_smax || max_len < 1) return max_len;
    int p2 = 1;
    while (p2 * 2 <= max_len) p2 *= 2;
    int gran = p2 / 16 > 64 ? p2 / 16 : 64;
    int64_t s = ((int64_t)max_len + gran - 1) / gran * gran;
    if (s > c->opts.max_seqlen && max_len <= c->opts.max_seqlen) s = c->opts.max_seqlen;
    return (int)s;
}

/* FP8 LRU keys: (n_images, bucketed s_max) for packed plans, (0, length) for one large image's own plan. */
static vitd_status fp8_plan(gpu_attn_ctx *c, int n_images, int max_len, int pin, attn_plan **p, vitd_err *err) {
    int s = gpu_attn_fp8_bucket(c, max_len);
    return lru_get(c, &c->fp8, n_images, s, PLAN_FP8, 1, n_images, s, pin, &c->stats.fp8_hits,
                   &c->stats.fp8_misses, &c->stats.fp8_evictions, p, err);
}

static vitd_status fp8_full_plan(gpu_attn_ctx *c, int len, int pin, attn_plan **p, vitd_err *err) {
    return lru_get(c, &c->fp8, 0, len, PLAN_FP8, 0, 1, len, pin, &c->stats.fp8_hits, &c->stats.fp8_misses,
                   &c->stats.fp8_evictions, p, err);
}

vitd_status gpu_attn_prepare_full(gpu_attn_ctx *c, int len, vitd_err *err) {
    attn_plan *p;
    if (len < 1 || len > c->opts.max_seqlen)
        return vitd_fail(err, VITD_E_INVALID_ARG, "attn: full plan length %d outside 1..%d", len,
                         c->opts.max_seqlen);
    return lru_get(c, &c->full, len, 0, c->full_kind, 0, 1, len, 0, &c->stats.full_hits, &c->stats.full_misses,
                   &c->stats.full_evictions, &p, err);
}

vitd_status gpu_attn_prepare_fp8(gpu_attn_ctx *c, int n_images, int max_len, vitd_err *err) {
    attn_plan *p;
    if (!c->opts.fp8)
        return vitd_fail(err, VITD_E_UNSUPPORTED, "attn: FP8 unavailable (%s)",
                         c->feat.fp8 ? "disabled in options" : c->feat.fp8_reason);
    if (n_images < 1 || n_images > c->opts.max_batch || max_len < 1 || max_len > c->opts.max_seqlen)
        return vitd_fail(err, VITD_E_INVALID_ARG, "attn: FP8 plan for %d images of up to %d tokens outside "
                         "1..%d images, 1..%d tokens", n_images, max_len, c->opts.max_batch, c->opts.max_seqlen);
    return fp8_plan(c, n_images, max_len, 0, &p, err);
}

vitd_status gpu_attn_prepare_fp8_full(gpu_attn_ctx *c, int len, vitd_err *err) {
    attn_plan *p;
    if (!c->opts.fp8)
        return vitd_fail(err, VITD_E_UNSUPPORTED, "attn: FP8 unavailable (%s)",
                         c->feat.fp8 ? "disabled in options" : c->feat.fp8_reason);
    if (len < 1 || len > c->opts.max_seqlen)
        return vitd_fail(err, VITD_E_INVALID_ARG, "attn: FP8 plan length %d outside 1..%d", len,
                         c->opts.max_seqlen);
    return fp8_full_plan(c, len, 0, &p, err);
}

/* The BF16 rule (bf16_path AUTO), from bench/bench_attn.c on the H100 (bench/RESULTS.md): an image of at least
 * full_min_len (4096) tokens runs on its own full plan (7-12% faster than inside a packed launch at 4K-64K),
 * built on a miss; a batch of one image also runs full when the plan for its length is cached (1x1024: 0.018
 * vs 0.024 ms), without building one for every new small size (50-80 ms each). Shorter images share one packed
 * launch on the smallest ladder rung that holds the batch: a full launch per image loses for many small images
 * (16x1024: 0.32 ms full vs 0.25 ms packed; 64x256: 0.61 vs 0.10). Images whose full plan cannot be had fall
 * back to the packed launch with the rest: then the whole batch goes packed, so that the threshold passed to
 * the index kernel stays one number. */
vitd_status gpu_attn_begin(gpu_attn_ctx *c, const gpu_attn_batch *b, cudaStream_t stream, vitd_err *err) {
    vitd_status st = VITD_OK;
    const int n = b->n_images;
    c->have_batch = 0;
    c->fp8_resolved = 0;
    c->epoch++;
    if (n < 1 || n > c->opts.max_batch)
        return vitd_fail(err, VITD_E_INVALID_ARG, "attn: batch of %d images outside 1..%d (max_batch)", n,
                         c->opts.max_batch);
    if (!b->lens || !b->d_cu_seqlens) return vitd_fail(err, VITD_E_INVALID_ARG, "attn: batch without lengths");
    const int64_t per_tok = (int64_t)c->opts.n_heads * c->opts.head_dim_padded;
    int s_max = 0;
    c->cu[0] = 0;
    for (int i = 0; i < n; i++) {
        int len = b->lens[i];
        if (len < 1 || len > c->opts.max_seqlen)
            return vitd_fail(err, VITD_E_INVALID_ARG, "attn: image %d has %d tokens, outside 1..%d (max_seqlen)", i,
                             len, c->opts.max_seqlen);
        c->lens[i] = len;
        c->cu[i + 1] = c->cu[i] + len;
        if (len > s_max) s_max = len;
    }
    if ((c->cu[n] + GPU_ATTN_SLACK_ROWS) * per_tok > INT32_MAX)
        return vitd_fail(err, VITD_E_TOO_LARGE, "attn: %lld tokens x %lld elements overflow int32 offsets",
                         (long long)c->cu[n], (long long)per_tok);
    c->n = n;
    c->s_max = s_max;

    int thr = INT_MAX;
    if (c->opts.bf16_path == GPU_ATTN_BF16_FULL) thr = 1;
    else if (c->opts.bf16_path == GPU_ATTN_BF16_AUTO) thr = c->opts.full_min_len;
    /* a lone image also takes a full plan that is already cached, whatever its length */
    if (n == 1 && c->opts.bf16_path == GPU_ATTN_BF16_AUTO && c->lens[0] < thr && lru_find(&c->full, c->lens[0], 0))
        thr = c->lens[0];
    int n_full = 0;
    for (int i = 0; i < n; i++) {
        c->full_of[i] = NULL;
        if (c->lens[i] < thr) continue;
        vitd_err e2;
        attn_plan *p = NULL;
        c->deferring = c->defer;
        vitd_status s2 = lru_get(c, &c->full, c->lens[i], 0, c->full_kind, 0, 1, c->lens[i], 1,
                                 &c->stats.full_hits, &c->stats.full_misses, &c->stats.full_evictions, &p, &e2);
        c->deferring = 0;
        if (s2 == VITD_E_UNSUPPORTED) {
            vitd_log(VITD_LOG_DEBUG, "attn: image %d (%d tokens) stays packed: %s", i, c->lens[i], e2.msg);
            thr = INT_MAX;
            n_full = 0;
            for (int j = 0; j < i; j++) c->full_of[j] = NULL;
            break;
        }
        if (s2 != VITD_OK) {
            if (err) *err = e2;
            return s2;
        }
        c->full_of[i] = p;
        n_full++;
    }
    /* the packed launch: smallest rung with >= n entries and s >= the longest image it carries */
    int s_need = 0;
    for (int i = 0; i < n; i++)
        if (!c->full_of[i] && c->lens[i] > s_need) s_need = c->lens[i];
    c->packed_cur = NULL;
    if (n_full < n) {
        int ib = 0, is = 0;
        while (c->lb[ib] < n) ib++;
        while (c->ls[is] < s_need) is++;
        c->packed_cur = c->ladder[ib * c->n_ls + is];
    }
    c->fp8_thr = c->opts.fp8 && c->opts.fp8_split ? c->opts.full_min_len : INT_MAX;
    CUDA_TRY(attn_seqlen_setup(b->d_cu_seqlens, n, c->opts.max_batch, (int)per_tok, thr, c->fp8_thr, c->d_offsets,
                               c->d_seqlen_all, c->d_seqlen_packed, c->d_seqlen_fp8, stream));
    if (n_full == 0)
        snprintf(c->desc, sizeof c->desc, "packed b=%d s=%d", c->packed_cur->b, c->packed_cur->s);
    else if (c->packed_cur)
        snprintf(c->desc, sizeof c->desc, "full x%d + packed b=%d s=%d", n_full, c->packed_cur->b,
                 c->packed_cur->s);
    else
        snprintf(c->desc, sizeof c->desc, "full x%d", n_full);
    c->have_batch = 1;
    return VITD_OK;
fail:
    return st;
}

vitd_status gpu_attn_bf16(gpu_attn_ctx *c, const void *q, const void *k, const void *v, void *o,
                          cudaStream_t stream, vitd_err *err) {
    int64_t uids[24];
    void *ptrs[24];
    if (!c->have_batch) return vitd_fail(err, VITD_E_INVALID_ARG, "attn: gpu_attn_bf16 before gpu_attn_begin");
    const size_t row_bytes = (size_t)c->opts.n_heads * c->opts.head_dim_padded * 2;
    for (int i = 0; i < c->n; i++) {
        const attn_plan *p = c->full_of[i];
        if (!p) continue;
        size_t off = (size_t)c->cu[i] * row_bytes;
        int n = pack_args(c, p, (const char *)q + off, (const char *)k + off, (const char *)v + off,
                          (char *)o + off, NULL, NULL, NULL, NULL, uids, ptrs);
        vitd_status st = run_plan(c, p, uids, ptrs, n, stream, err);
        if (st != VITD_OK) return st;
    }
    if (c->packed_cur) {
        int n = pack_args(c, c->packed_cur, q, k, v, o, c->d_offsets, c->d_seqlen_packed, NULL, NULL, uids, ptrs);
        return run_plan(c, c->packed_cur, uids, ptrs, n, stream, err);
    }
    return VITD_OK;
}

/* Looks up the FP8 launches of the current batch. The FP8 kernel's time grows with (tokens x s_max of the
 * plan): it walks K/V up to the plan's s_max for every query tile (measured: s_max x2 -> time x1.9). So a split
 * is taken when it cuts that work by 10% or more (the margin pays the extra launches): images of >= fp8_thr
 * tokens on their own exact-length plan (work len^2), the rest in one packed plan of n entries (the large ones
 * as 1-token dummies, work tokens x bucket(longest small image)). Else, or if any plan cannot be had, one
 * packed launch over everything (work T x bucket(s_max)). */
static vitd_status fp8_resolve(gpu_attn_ctx *c, vitd_err *err) {
    vitd_status st = VITD_OK;
    int n_big = 0, s_small = 0;
    double w_small = 0, w_big = 0;
    for (int i = 0; i < c->n; i++) {
        c->fp8_big[i] = NULL;
        if (c->lens[i] >= c->fp8_thr) {
            n_big++;
            w_big += (double)c->lens[i] * c->lens[i];
        } else if (c->lens[i] > s_small) {
            s_small = c->lens[i];
        }
    }
    if (n_big > 0) {
        for (int i = 0; i < c->n; i++) w_small += c->lens[i] >= c->fp8_thr ? 1 : c->lens[i];
        double w_split = w_big + (n_big < c->n ? w_small * gpu_attn_fp8_bucket(c, s_small) : 0);
        double w_one = (double)c->cu[c->n] * gpu_attn_fp8_bucket(c, c->s_max);
        if (w_split > 0.9 * w_one) n_big = 0;
    }
    c->fp8_single = 1;
    c->fp8_packed = NULL;
    if (n_big > 0) {
        vitd_err e2;
        int missing = 0; /* deferring: a plan of the split is wanted (recorded), the batch is not ready */
        st = VITD_OK;
        for (int i = 0; i < c->n && st == VITD_OK; i++)
            if (c->lens[i] >= c->fp8_thr) {
                st = fp8_full_plan(c, c->lens[i], 1, &c->fp8_big[i], &e2);
                if (st == VITD_E_UNSUPPORTED && c->deferring) {
                    missing = 1;
                    st = VITD_OK;
                }
            }
        if (st == VITD_OK && n_big < c->n) {
            st = fp8_plan(c, c->n, s_small, 1, &c->fp8_packed, &e2);
            if (st == VITD_E_UNSUPPORTED && c->deferring) {
                missing = 1;
                st = VITD_OK;
            }
        }
        if (st == VITD_OK && missing)
            return vitd_fail(err, VITD_E_UNSUPPORTED, "attn: the batch's FP8 plans are deferred");
        if (st == VITD_OK) {
            c->fp8_single = 0;
        } else if (st == VITD_E_UNSUPPORTED) {
            vitd_log(VITD_LOG_DEBUG, "attn: FP8 batch runs as one launch: %s", e2.msg);
            for (int i = 0; i < c->n; i++) c->fp8_big[i] = NULL;
            c->fp8_packed = NULL;
        } else {
            if (err) *err = e2;
            return st;
        }
    }
    if (c->fp8_single) TRY(fp8_plan(c, c->n, c->s_max, 1, &c->fp8_packed, err));
    if (c->fp8_single) {
        snprintf(c->desc_fp8, sizeof c->desc_fp8, "fp8 b=%d s=%d", c->fp8_packed->b, c->fp8_packed->s);
    } else {
        int k = snprintf(c->desc_fp8, sizeof c->desc_fp8, "fp8 own x%d", n_big);
        if (c->fp8_packed && k > 0 && (size_t)k < sizeof c->desc_fp8)
            snprintf(c->desc_fp8 + k, sizeof c->desc_fp8 - (size_t)k, " + b=%d s=%d", c->fp8_packed->b,
                     c->fp8_packed->s);
    }
    c->fp8_resolved = 1;
    return VITD_OK;
fail:
    return st;
}

void gpu_attn_set_defer(gpu_attn_ctx *c, int on) { c->defer = on != 0; }
int gpu_attn_pending(const gpu_attn_ctx *c) { return c->n_pend; }

vitd_status gpu_attn_fp8_ready(gpu_attn_ctx *c, int *ready, vitd_err *err) {
    *ready = 0;
    if (!c->opts.fp8)
        return vitd_fail(err, VITD_E_UNSUPPORTED, "attn: FP8 unavailable (%s)",
                         c->feat.fp8 ? "disabled in options" : c->feat.fp8_reason);
    if (!c->have_batch) return vitd_fail(err, VITD_E_INVALID_ARG, "attn: gpu_attn_fp8_ready before gpu_attn_begin");
    if (c->fp8_resolved) {
        *ready = 1;
        return VITD_OK;
    }
    vitd_err e2;
    c->deferring = c->defer;
    vitd_status st = fp8_resolve(c, &e2);
    c->deferring = 0;
    if (st == VITD_OK) *ready = 1;
    else if (st == VITD_E_UNSUPPORTED) st = VITD_OK; /* missing: recorded for gpu_attn_build_pending */
    else if (err) *err = e2;
    return st;
}

vitd_status gpu_attn_build_pending(gpu_attn_ctx *c, int max_plans, int *left, vitd_err *err) {
    vitd_status st = VITD_OK;
    for (int k = 0; k < max_plans && c->n_pend > 0; k++) {
        pending_plan q = c->pend[0];
        plan_lru *l = q.fp8 ? &c->fp8 : &c->full;
        int *ev = q.fp8 ? &c->stats.fp8_evictions : &c->stats.full_evictions;
        /* nothing is in flight (the caller's contract): no plan needs protecting, any slot may be taken */
        plan_slot *s = lru_find(l, q.a, q.b) ? NULL : lru_take(l, c->epoch + VITD_ENCODER_PIPELINE, ev);
        memmove(c->pend, c->pend + 1, (size_t)(--c->n_pend) * sizeof *c->pend);
        if (!s) continue; /* built meanwhile */
        attn_plan *p = NULL;
        if ((st = build_plan(c, q.kind, q.ragged, q.pb, q.ps, &p, err)) != VITD_OK) {
            *s = l->slots[--l->n];
            break;
        }
        s->a = q.a;
        s->b = q.b;
        s->plan = p;
        s->last_use = ++c->clock;
    }
    *left = c->n_pend;
    return st;
}

vitd_status gpu_attn_fp8(gpu_attn_ctx *c, const void *q8, const void *k8, const void *v8, void *o8,
                         float *scalars, cudaStream_t stream, vitd_err *err) {
    vitd_status st = VITD_OK;
    int64_t uids[24];
    void *ptrs[24];
    const int w = ATTN_FP8_SLOT_FLOATS;
    if (!c->opts.fp8)
        return vitd_fail(err, VITD_E_UNSUPPORTED, "attn: FP8 unavailable (%s)",
                         c->feat.fp8 ? "disabled in options" : c->feat.fp8_reason);
    if (!c->have_batch) return vitd_fail(err, VITD_E_INVALID_ARG, "attn: gpu_attn_fp8 before gpu_attn_begin");
    if (!c->fp8_resolved) TRY(fp8_resolve(c, err));
    int n_launch = c->fp8_packed ? 1 : 0;
    for (int i = 0; i < c->n; i++) n_launch += c->fp8_big[i] != NULL;
    int li = 0;
    /* packed launch first: its dummy rows (first token of each large image) are rewritten by the large
     * images' own launches after it on the same stream */
    if (c->fp8_packed) {
        float *as = n_launch > 1 ? c->d_amax_part : NULL, *ao = n_launch > 1 ? c->d_amax_part + w : NULL;
        int n = pack_args(c, c->fp8_packed, q8, k8, v8, o8, c->d_offsets,
                          c->fp8_single ? c->d_seqlen_all : c->d_seqlen_fp8, scalars, as, uids, ptrs);
        if (ao) ptrs[n - 1] = ao;
        TRY(run_plan(c, c->fp8_packed, uids, ptrs, n, stream, err));
        li++;
    }
    const size_t row_bytes = (size_t)c->opts.n_heads * c->opts.head_dim_padded;
    for (int i = 0; i < c->n; i++) {
        const attn_plan *p = c->fp8_big[i];
        if (!p) continue;
        size_t off = (size_t)c->cu[i] * row_bytes;
        float *as = n_launch > 1 ? c->d_amax_part + 2 * li * w : NULL;
        int n = pack_args(c, p, (const char *)q8 + off, (const char *)k8 + off, (const char *)v8 + off,
                          (char *)o8 + off, NULL, NULL, scalars, as, uids, ptrs);
        if (as) ptrs[n - 1] = as + w;
        TRY(run_plan(c, p, uids, ptrs, n, stream, err));
        li++;
    }
    if (n_launch > 1) CUDA_TRY(attn_fp8_amax_fold(c->d_amax_part, n_launch, scalars, stream));
    return VITD_OK;
fail:
    return st;
}
