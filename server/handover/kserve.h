/* kserve.h — the KServe v2 / Open Inference Protocol (Triton's HTTP API), so generic inference clients drive
 * vitd as they drive any model server (../shared/INTEGRATION.md, "Generic clients").
 *
 * Routes (http.c): GET /v2 (server metadata, extension binary_tensor_data), GET /v2/health/live and /ready
 * (200 {"live"|"ready": true}, else 400), GET /v2/models/<model>[/versions/1] (model metadata),
 * GET .../ready, POST .../infer. <model> is the served model name; another name is a 404, another version than
 * "1" too. Errors are {"error": "<message>"} with the HTTP status of vitd's status table.
 *
 * The model, as metadata declares it:
 *   input   IMAGE       BYTES [-1]          the encoded image files (PNG, JPEG, what /v1/encode takes)
 *   outputs EMBEDS      FP32  [-1, D]       the final merger's rows of every image, images one after another
 *           DEEPSTACK   FP32  [-1, k*D]     the k DeepStack features of the same rows, side by side
 *           CONCAT      FP32  [-1, (1+k)*D] EMBEDS and DEEPSTACK side by side: vLLM's layout
 *           GRID_THW    INT64 [-1, 3]       each image's grid_thw
 *           NUM_TOKENS  INT64 [-1]          each image's rows (t*h*w/4): the split points of the row axis
 * D = out_hidden_size, k = DeepStack layers. Float outputs are FP32 unless the request's parameters say
 * "datatype" (FP32 | BF16 | FP16, or float32 | bfloat16 | float16), or an output's own parameters do; BF16 and
 * FP16 only as binary data, as Triton (JSON has no such numbers). Without "outputs", the answer holds EMBEDS,
 * DEEPSTACK (when k > 0), GRID_THW and NUM_TOKENS; CONCAT only when asked (it repeats the others' bytes).
 *
 * Request: {"id"?, "parameters"?, "inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [N] or [N, 1],
 * "data": [...] | "parameters": {"binary_data_size": n}}], "outputs"?: [{"name", "parameters"?: {"binary_data",
 * "datatype"}}]}. In JSON, each IMAGE element is base64 (or a data: URL): image bytes are not text, so Triton's
 * raw strings cannot carry them (MLServer's content_type "base64"; "str" is refused). With the binary extension
 * (header Inference-Header-Content-Length: <JSON bytes>), the JSON is followed by each binary input's bytes in
 * input order, a BYTES element being a little-endian u32 length then the bytes; the image spans point into the
 * body, never copied. An output is binary when its own parameters say binary_data (true or false), else when
 * the request's parameters say binary_data_output (Triton's rule, listed outputs or not). Binary answers:
 * Content-Type application/octet-stream, Inference-Header-Content-Length, each binary output's
 * parameters.binary_data_size, its bytes after the JSON in output order, little-endian, row-major.
 *
 * Thread safety: pure functions. */
#ifndef VITD_KSERVE_H
#define VITD_KSERVE_H

#include <stdbool.h>

#include "arena.h"
#include "body.h"
#include "reply.h"
#include "vitd.h"

typedef enum { KS_EMBEDS, KS_DEEPSTACK, KS_CONCAT, KS_GRID_THW, KS_NUM_TOKENS, KS_N_OUTPUTS } kserve_output;

typedef struct {
    const char *id;                    /* the request's id (arena), echoed when non-empty; NULL = none */
    int n_images;
    body_span *images;                 /* [n_images] (arena, or spans into the body) */
    int n_out;                         /* outputs in answer order */
    kserve_output out[KS_N_OUTPUTS];
    bool binary[KS_N_OUTPUTS];         /* by output */
    st_dtype dtype[KS_N_OUTPUTS];      /* float outputs: F32, BF16 or F16 */
    bool any_binary;
} kserve_request;

typedef struct {
    const char *model;                 /* served name, for messages */
    int n_deepstack;                   /* k: DEEPSTACK exists only when > 0 */
    int max_images;                    /* images per request */
    st_dtype default_dtype;            /* of float outputs (output_dtype) */
} kserve_model;

/* Parses an infer body. header_len: the Inference-Header-Content-Length value, or -1 when absent (all JSON).
 * Decoded images (JSON base64) go into a; binary images are spans into body. Errors: VITD_E_INVALID_ARG (400)
 * naming the field, input or output; VITD_E_TOO_LARGE (413) past max_images. */
vitd_status kserve_parse(const uint8_t *body, size_t len, long long header_len, const kserve_model *m, arena *a,
                         kserve_request *out, vitd_err *err);

/* Renders the answer for re (its images' grids, float outputs; re->opts unused). *len is the whole body,
 * *json_len the JSON part when some output is binary (for Inference-Header-Content-Length; else 0). Returns a
 * malloc'd body or NULL with err (VITD_E_NOMEM, or VITD_E_INVALID_ARG for a value beyond FP16). */
uint8_t *kserve_render(const kserve_request *q, const reply_encode *re, int merge, size_t *len, size_t *json_len,
                       vitd_err *err);

/* GET /v2: {"name": "vitd", "version", "extensions": ["binary_tensor_data"]}. Malloc'd. */
char *kserve_server_metadata(const char *version, size_t *len);
/* GET /v2/models/<model>: {"name", "versions": ["1"], "platform": "vitd", "inputs", "outputs"}. Malloc'd. */
char *kserve_model_metadata(const char *model, int out_hidden, int n_deepstack, size_t *len);
/* {"error": "<message>"} + "\n". Malloc'd. */
char *kserve_error(const char *message, size_t *len);

#endif
