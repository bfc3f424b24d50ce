/* reply.h — everything the service sends back: the one table from vitd_status to HTTP code, JSON error bodies,
 * and the three encodings of a successful /v1/encode answer (JSON with nested floats, JSON with base64 of
 * little-endian values, safetensors with the same tensor names as `vitd encode`).
 * Pure functions: they build one malloc'd buffer the caller hands to MHD (MHD frees it). */
#ifndef VITD_REPLY_H
#define VITD_REPLY_H

#include <stdbool.h>

#include "body.h"
#include "safetensors.h"
#include "vitd.h"

/* HTTP status of a failure: invalid_argument 400, too_large 413, unsupported 415, bad_image 422, busy 503,
 * timeout 504, cancelled 503, model/gpu/internal/nomem 500 (nomem: 503). */
int reply_http_status(vitd_status s);

/* {"error": {"code": "...", "message": "...", "request_id": "..."}} + "\n". code is vitd_status_name() or a
 * server code such as "unauthorized", "not_found", "method_not_allowed". */
char *reply_error_json(const char *code, const char *message, const char *request_id, size_t *len);

/* One image's results, as the batcher fills them: float32, or bfloat16 (uint16_t) values when bf16 is set (the
 * GPU engine's own outputs). */
typedef struct {
    vitd_grid grid;
    const void *embeddings;        /* [tokens, out_hidden] */
    const void *deepstack;         /* [n_deepstack][tokens][out_hidden] or NULL */
    bool bf16;
} reply_image;

/* n values of an output tensor starting at element off, as float32: base itself when it holds float32, else the
 * bfloat16 values widened into scratch (n floats), which is returned. */
const float *reply_row_f32(const void *base, bool bf16, size_t off, size_t n, float *scratch);

typedef struct {
    const char *id;                /* request id, also the JSON "id" */
    const char *model;             /* model name for the JSON "model" field */
    int out_hidden;
    int n_deepstack;
    const int *deepstack_layers;   /* [n_deepstack] block indices, for JSON "layer" and tensor names */
    int n_images;
    const reply_image *images;
    encode_options opts;           /* encoding, deepstack, dtype, layout */
} reply_encode;

/* JSON answer: {"id", "model", "encoding_format", "dtype", "layout", "data": [{"index", "grid_thw", "shape",
 * "embedding", "deepstack": [{"layer", "shape", "embedding"}]}], "usage": {"images", "patches", "tokens"}}.
 * "embedding" is nested arrays [tokens][width] of numbers (float32 values, or the float32 values of the bfloat16 /
 * float16 roundings when dtype asks for those; NaN and infinities as null, JSON having neither), or with
 * encoding_format base64 one string: base64 of the little-endian values in dtype (float32, or bfloat16 / float16
 * as uint16). With layout concat, "embedding" is the [tokens, out_hidden*(1+n_deepstack)] tensor (embeddings
 * first, then each deepstack layer, on the last axis) and there is no "deepstack" list. "deepstack" is also absent
 * when opts.deepstack is false or an image has no deepstack features. usage.tokens = patches/4. The text ends with
 * a newline; *len excludes the NUL after it. Returns NULL on allocation failure. */
char *reply_encode_json(const reply_encode *r, size_t *len);
/* Safetensors answer: image.<i>.embeddings, image.<i>.deepstack.<layer>, image.<i>.grid_thw (I64 [3]) — or, with
 * layout concat, image.<i>.embeddings holding the concatenated tensor — in opts.dtype; __metadata__ carries id,
 * model, dtype and layout. Returns NULL on allocation failure. */
uint8_t *reply_encode_safetensors(const reply_encode *r, size_t *len);

/* The same safetensors answer without assembling it, when its tensors can be sent from the images' own buffers
 * (layout separate, every image's storage dtype = opts.dtype): a header, then segments pointing at the buffers
 * (and at the writer's copies of the grids), to be sent as one vectored answer. Returns 0 with *out filled (the
 * buffers must stay valid until reply_segments_release), 1 when the answer needs converting (use
 * reply_encode_safetensors), -1 when out of memory. */
typedef struct {
    st_writer *w;                  /* owns the names and the grids' bytes */
    uint8_t *header;               /* the length and the padded JSON */
    size_t header_len;
    st_segment *seg;               /* [n_seg] each tensor's bytes, in file order */
    int n_seg;
    size_t total;                  /* header_len + every segment */
} reply_segments;
int reply_encode_safetensors_segments(const reply_encode *r, reply_segments *out);
void reply_segments_release(reply_segments *s);

/* The JSON number reply_encode_json writes for f: a decimal that reads back to f exactly as float32 (through
 * strtof, or strtod then a cast), the shortest one for |f| in [1e-15, 1e22), else at most 9 significant digits;
 * exponent form ("1e-7", "3.40282347e38") when shorter; "null" for NaN and infinities. dst needs 16 bytes;
 * returns the length (no NUL). Exposed for tests and for other JSON writers (metrics, /v1/model). */
int reply_format_f32(char *dst, float f);

#endif
