/* fuzz_config.c — libFuzzer target: the configuration file parser (config/config.c, config_apply_json) over the
 * defaults, then the dump of what it applied. Seeds: config/vitd.json and tests/fuzz/seeds/config. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *text = malloc(size + 1);
    if (!text) return 0;
    memcpy(text, data, size);
    text[size] = 0;
    vitd_config cfg = config_defaults();
    vitd_err err;
    if (config_apply_json(&cfg, text, "fuzz", &err) == VITD_OK) free(config_format_line(&cfg));
    free(text);
    return 0;
}
