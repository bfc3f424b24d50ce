/* fuzz_image.c — libFuzzer target: image decoding and preprocessing (encoder/image/). Any bytes: sniffed, probed,
 * decoded under a 4 Mpx limit, and, when they decode, planned and preprocessed as the server would (at a smaller
 * resize bound, to stay fast). Seeds: tests/fixtures/images. Must never crash, leak or read out of bounds. */
#include <stdint.h>
#include <stdlib.h>

#include "image.h"
#include "preprocess.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    vitd_image im;
    vitd_err err;
    if (image_decode(data, size, (size_t)4 << 20, &im, &err) != VITD_OK) return 0;
    vitd_preproc_config cfg = vitd_preproc_config_default();
    cfg.max_pixels = 256 * 256;
    cfg.min_pixels = 32 * 32;
    vitd_grid g;
    if (preprocess_plan(im.height, im.width, &cfg, &g, &err) == VITD_OK) {
        size_t rows = (size_t)g.t * g.h * g.w;
        float *pv = malloc(rows * preprocess_row_width(&cfg) * sizeof(float));
        if (pv) (void)preprocess_run(&im, &cfg, &g, pv, &err);
        free(pv);
    }
    image_release(&im);
    return 0;
}
