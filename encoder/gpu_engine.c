/* gpu_engine.c — the GPU engine (see gpu_engine.h). Not built yet: creation fails with a clear message so that
 * backend auto falls back to the CPU and backend gpu refuses to start. */
#include "gpu_engine.h"

vitd_status gpu_engine_create(const vitd_model *m, const vitd_encoder_opts *opts, gpu_engine **out, vitd_err *err) {
    (void)m;
    (void)opts;
    *out = 0;
    return vitd_fail(err, VITD_E_GPU, "the GPU engine is not implemented in this build yet");
}
vitd_status gpu_engine_run(gpu_engine *g, const vitd_batch *b, vitd_err *err) {
    (void)g;
    (void)b;
    return vitd_fail(err, VITD_E_INTERNAL, "GPU engine missing");
}
void gpu_engine_free(gpu_engine *g) { (void)g; }
const char *gpu_engine_attn_dtype(const gpu_engine *g) {
    (void)g;
    return "none";
}
