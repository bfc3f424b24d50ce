/* fuzz_checkpoint_config.c — libFuzzer target: a checkpoint's config.json and preprocessor_config.json parsers
 * (encoder/model/checkpoint.c): text, nesting, numbers out of range, missing and duplicate keys. Seeds:
 * tests/fuzz/seeds/checkpoint_config (the demo presets' files). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *text = malloc(size + 1);
    if (!text) return 0;
    memcpy(text, data, size);
    text[size] = 0;
    vitd_vision_config vc;
    vitd_preproc_config pc;
    vitd_err err;
    (void)checkpoint_parse_config(text, &vc, &err);
    (void)checkpoint_parse_preproc(text, &pc, &err);
    free(text);
    return 0;
}
