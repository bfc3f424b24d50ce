/* fuzz_safetensors.c — libFuzzer target: the safetensors reader (encoder/model/safetensors.c) on a buffer: the
 * header (length, JSON, dtypes, shapes, offsets, overlaps, duplicate names), then every tensor of under 1 MiB
 * widened to float32. Seeds: tests/fuzz/seeds/safetensors. */
#include <stdint.h>
#include <stdlib.h>

#include "safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    st_file *f = NULL;
    vitd_err err;
    if (st_open_memory(data, size, &f, &err) != VITD_OK) return 0;
    for (int i = 0; i < st_count(f); i++) {
        const st_tensor *t = st_at(f, i);
        if (!t || t->nbytes > ((size_t)1 << 20)) continue;
        int64_t n = st_numel(t);
        if (n < 0 || n > (1 << 20)) continue;
        float *out = malloc((size_t)(n ? n : 1) * sizeof(float));
        if (out) (void)st_to_f32(t, out, &err);
        free(out);
    }
    st_close(f);
    return 0;
}
