/* fuzz_body.c — libFuzzer target: the request-body parsers that need no connection (server/body.c and the
 * route parsers). The first byte picks the form, the second where the body is split into two feeds:
 *   0 raw image body, 1 JSON body (base64 strings, data: URLs, options, duplicate keys, the memory budget),
 *   2 vLLM EPD chat completions JSON (epd_parse), 3 KServe v2 infer (kserve_parse, all JSON),
 *   4 KServe v2 with a binary part (the third byte is the JSON header's length),
 *   5 the multipart delimiter scanner without libmicrohttpd's post processor (fuzz_multipart runs with it).
 * Seeds: tests/fuzz/seeds/body. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "arena.h"
#include "body.h"
#include "epd.h"
#include "kserve.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 3) return 0;
    int mode = data[0] % 6;
    size_t split = data[1];
    uint8_t hl = data[2];
    data += 3;
    size -= 3;
    arena *a = arena_create(0);
    vitd_err err;
    encode_options opts = {.encoding = ENC_FLOAT, .deepstack = true, .dtype = ST_F32, .layout = LAYOUT_SEPARATE};
    body_limits lim = {.max_body_bytes = (size_t)1 << 20, .max_images = 8};
    if (mode == 2) {
        epd_request q;
        (void)epd_parse(data, size, a, &q, &err);
    } else if (mode == 3 || mode == 4) {
        kserve_model km = {.model = "m", .n_deepstack = 3, .max_images = 8, .default_dtype = ST_F32};
        kserve_request q;
        memset(&q, 0, sizeof q);
        (void)kserve_parse(data, size, mode == 4 ? (long long)(hl <= size ? hl : size) : -1, &km, a, &q, &err);
    } else {
        static const char *const ctypes[] = {"image/png", "application/json", "", "", "",
                                             "multipart/form-data; boundary=fuzzB"};
        body_state *s = NULL;
        if (body_begin(NULL, ctypes[mode], &lim, &opts, a, &s, &err) == VITD_OK) {
            size_t cut = split < size ? split : size;
            vitd_status st = body_feed(s, (const char *)data, cut, &err);
            if (st == VITD_OK) st = body_feed(s, (const char *)data + cut, size - cut, &err);
            body_result r;
            if (st == VITD_OK) (void)body_finish(s, &r, &err);
            body_end(s);
        }
    }
    arena_free(a);
    return 0;
}
