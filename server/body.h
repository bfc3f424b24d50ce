/* body.h — turns a POST /v1/encode body into image byte spans and encode options.
 *
 * Three body kinds, chosen by Content-Type:
 *   raw        image/png, image/jpeg, image/<other>, application/octet-stream: the body is one image
 *   multipart  multipart/form-data: every file part (a part with a filename, or any part whose content type is not
 *              text/plain) is one image, in order; non-file fields named like options (deepstack, dtype, ...) set
 *              options. Parsed incrementally with libmicrohttpd's post processor as chunks arrive; it reads the
 *              boundary from the connection's own Content-Type header (the same string as content_type) and only
 *              as the last parameter, spelled "boundary=" (anything else is a 400 saying so).
 *   json       application/json: {"images": ["<base64>" | "data:image/...;base64,...", ...],
 *              "encoding_format": "float"|"base64", "deepstack": bool, "dtype": "float32"|"bfloat16"|"float16",
 *              "layout": "separate"|"concat"}; also {"image": "..."} for one. Remote URLs (http://, https://,
 *              file://...) are refused: the service never fetches anything.
 * Options also come from query parameters (for every kind); JSON fields and multipart option fields win over them.
 *
 * Images are spans into buffers owned by the request's arena (raw: the body itself; multipart: each part's bytes;
 * json: decoded base64), never copied again. Limits: max_body_bytes (413 as soon as it is exceeded, while the body
 * streams in) and max_images (413). Errors return vitd_status with a message naming the problem and, where it
 * applies, the image index: VITD_E_UNSUPPORTED (415: unknown content type), VITD_E_TOO_LARGE (413),
 * VITD_E_INVALID_ARG (400: bad JSON, bad base64, no image, remote URL, bad option value).
 * A body_state is used by one connection thread at a time. */
#ifndef VITD_BODY_H
#define VITD_BODY_H

#include <stdbool.h>

#include "arena.h"
#include "safetensors.h"
#include "vitd.h"

struct MHD_Connection;

typedef struct {
    const uint8_t *data;
    size_t len;
} body_span;

typedef enum { ENC_FLOAT = 0, ENC_BASE64 = 1 } body_encoding;
typedef enum { LAYOUT_SEPARATE = 0, LAYOUT_CONCAT = 1 } body_layout;

typedef struct {
    body_encoding encoding;   /* JSON answers: nested float arrays or base64 of little-endian values */
    bool deepstack;           /* include deepstack features (default from config, normally true) */
    st_dtype dtype;           /* ST_F32, ST_BF16 or ST_F16 */
    body_layout layout;       /* separate tensors, or one [tokens, D_out*(1+n_deepstack)] per image */
    bool dtype_auto;          /* no dtype asked (output_dtype auto): binary answers take the engine's own dtype,
                                 JSON numbers float32 (resolved when the answer is rendered); a dtype option clears it */
} encode_options;

typedef struct {
    size_t max_body_bytes;    /* 413 as soon as more arrive; 0 = no limit */
    int max_images;           /* 413 beyond; 0 = no limit */
} body_limits;

typedef struct {
    int n_images;
    body_span *images;        /* [n_images], in the arena */
    encode_options opts;
} body_result;

typedef struct body_state body_state;

/* Starts parsing a body. conn is needed for multipart (MHD's post processor); may be NULL for raw/json (tests).
 * content_type may be NULL (-> 415). opts holds the defaults, already overridden by query parameters. */
vitd_status body_begin(struct MHD_Connection *conn, const char *content_type, const body_limits *lim,
                       const encode_options *opts, arena *a, body_state **out, vitd_err *err);
/* Starts a body that is taken whole, whatever its Content-Type: body_finish gives one span holding every byte
 * (the routes whose bodies are parsed by their own module: chat completions, KServe v2 infer). Same limits;
 * body_finish hands opts back as they are. */
vitd_status body_begin_whole(const body_limits *lim, const encode_options *opts, arena *a, body_state **out,
                             vitd_err *err);

/* Options a route knows beyond encode_options (a uuid per image, a vLLM grid layout...). fn gets every multipart
 * text field and every JSON member that is neither an image nor an encode option: a string as it is, true/false,
 * a number as printf("%.17g"), an array element by element (in order), null or an object as value NULL.
 * It returns 0 (applied), 1 (not its key: ignored) or a negative vitd_status (err names the key), which fails
 * the body. Query parameters do not pass through here: the caller applies them. Set before the first body_feed. */
typedef int (*body_option_fn)(void *user, const char *key, const char *value, vitd_err *err);
/* The value a multipart field longer than the 256 bytes kept reaches the hook as: compare the pointer. */
extern const char body_value_too_long[];
void body_set_extra_options(body_state *s, body_option_fn fn, void *user);

/* Feeds the next chunk of the upload. */
vitd_status body_feed(body_state *s, const char *data, size_t size, vitd_err *err);
/* The body is complete: parse what remains and fill *out (spans and arrays live in the arena). After a failure in
 * body_feed it returns that failure again. A JSON body's text is held in malloc'd memory by the state until here
 * (or body_end); everything else is in the arena. */
vitd_status body_finish(body_state *s, body_result *out, vitd_err *err);
/* Releases parser state (the MHD post processor); the arena keeps the spans. Accepts NULL. */
void body_end(body_state *s);

/* ---- multipart internals, exposed for tests ----
 * What libmicrohttpd's post-processor iterator delivers, one piece (off, size) of a part at a time: body_begin with
 * conn == NULL and a multipart Content-Type makes a state without a post processor (body_feed then only counts
 * bytes), and a test calls these two as body_feed would. A part is a file part (one image) when it has a filename
 * or a content type other than text/plain; else it is a field, applied with body_apply_option when its name is an
 * option. body_multipart_delimiter says that a boundary delimiter passed: the open part is complete (an empty file
 * part is an error naming the image index). */
vitd_status body_multipart_piece(body_state *s, const char *name, const char *filename, const char *content_type,
                                 const char *data, uint64_t off, size_t size, vitd_err *err);
vitd_status body_multipart_delimiter(body_state *s, vitd_err *err);

/* Applies one option given as text (query parameter or multipart field). Keys are exact; values are
 * case-insensitive: deepstack true|false|1|0, dtype float32|bfloat16|float16 (or fp32|bf16|fp16), encoding_format
 * float|base64, layout separate|concat. Returns VITD_E_INVALID_ARG naming the key, the value and the allowed values
 * (value NULL counts as ""); unknown keys are ignored (returns 1) so callers may pass every query parameter.
 * 0 = applied. */
int body_apply_option(encode_options *o, const char *key, const char *value, vitd_err *err);

/* One image given as text, as in a JSON body's "images": base64 (either alphabet, whitespace ignored) or a
 * data:image/...;base64, URL, decoded into arena memory (*out). A remote URL (http:, https:, file:, ...) is
 * refused, vitd never fetches anything. Errors are VITD_E_INVALID_ARG naming image idx and the problem. */
vitd_status body_image_string(arena *a, int idx, const char *str, body_span *out, vitd_err *err);

/* "a string", "a number", "a boolean", "null", "an array", "an object": a cJSON value's kind, for messages. */
struct cJSON;
const char *body_json_type(const struct cJSON *j);

/* Parses a request's JSON text strictly (config/json_strict.h: one value, no key twice) into the request's arena,
 * with a budget of twice the text plus 1 MiB, so any body's tree costs a small multiple of its size and dies with
 * the request. Never cJSON_Delete the result. NULL with err filled (400, or 413 past the budget). */
struct cJSON *body_json_parse(arena *a, const void *text, size_t len, vitd_err *err);

/* Base64 (RFC 4648) into dst (>= 3*len/4+3 bytes); returns the decoded length or -1 on invalid input. Accepts the
 * standard alphabet and the URL-safe one ('-' '_', RFC 4648 section 5), even mixed; ignores whitespace anywhere;
 * padding is optional, but when present it must complete the last group ("QQ==" or "QQ", not "QQ="), and only
 * whitespace may follow it; bits left over in a final partial group are ignored. body_base64_encode writes the
 * standard alphabet with padding: 4*ceil(n/3) chars + NUL; returns the number of chars. */
long body_base64_decode(const char *src, size_t len, uint8_t *dst);
size_t body_base64_encode(const uint8_t *src, size_t n, char *dst);

#endif
