/* config.h — every option of vitd, in one table, and how they are set. This header is the manual of the
 * configuration: the README links here.
 *
 * Layers, each overriding the one before:
 *
 *   1. built-in defaults (below, and config/vitd.json, which holds them all as `vitd config --defaults` prints)
 *   2. a JSON file: `--config FILE` (or VITD_CONFIG=FILE), one flat object {"port": 8080, "log_level": "debug"}.
 *      An unknown key, a duplicate key, a wrong JSON type or a bad value is an error naming the key.
 *   3. environment variables: VITD_<NAME in upper case>, e.g. VITD_PORT=9000, VITD_ATTN_DTYPE=bf16.
 *      A bad value is an error naming the variable. Unknown VITD_* variables are reported back to the caller
 *      (config_args.unknown_env) so the program can warn about typos; they are not errors.
 *   4. command-line flags: `--port 8080` or `--port=8080`; dashes and underscores are interchangeable
 *      (`--max-body-bytes` = `--max_body_bytes`). Booleans: `--warmup` / `--no-warmup` / `--warmup=false`
 *      (a boolean flag never takes the next argument as its value). `--` ends the flags. A flag whose value would
 *      start with "--" counts as missing its value (write `--model=--odd` if you mean it).
 *
 * Value syntax (the same in every layer; in the JSON file int and double options are JSON numbers, size options
 * JSON numbers or strings with a suffix, bool options true/false, string and enum options JSON strings):
 *   int     decimal integer, e.g. 8080
 *   size    non-negative integer with an optional binary suffix: k/KiB = 1024, m/MiB = 1024^2, g/GiB = 1024^3
 *           (case-insensitive, e.g. "64m", "64MiB", "1g"). Used for bytes and for pixel/patch counts.
 *   double  decimal number, e.g. 1.5
 *   bool    true/false, 1/0, yes/no, on/off
 *   string  any text up to VITD_CONFIG_STR_MAX - 1 bytes
 *   enum    one of the listed words
 * Every value is checked against its bounds; the error names the key, the value and the allowed range.
 * After all layers, cross-checks run (see config_validate()).
 *
 * ---- the options (name, type, default, bounds: meaning) ----
 *
 * Model and backend
 *   model                   string  "models/tiny"   checkpoint directory (Hugging Face Qwen3-VL layout).
 *   model_name              string  ""              name the model is served under (/v1/model, KServe v2
 *                                                   /v2/models/<name>, answers' model field); "" = the model
 *                                                   directory's last component.
 *   backend                 enum    auto            cpu | gpu | auto (gpu when a usable GPU exists, else cpu).
 *   attn_dtype              enum    auto            auto | fp8 | bf16: attention precision on the GPU; auto
 *                                                   picks fp8 where cuDNN supports it, else bf16.
 *   linear_dtype            enum    bf16            bf16 | fp8 | auto: the blocks' GEMMs on the GPU; fp8 runs the
 *                                                   GEMMs named by linear_fp8_gemms in E4M3 (dynamic scales),
 *                                                   auto only where measured faster at start-up (README "FP8
 *                                                   linear layers" has the accuracy measured).
 *   linear_fp8_gemms        string  "qkv,fc1"       comma list of qkv, proj, fc1, fc2 (fc2 needs fc1), or all.
 *   linear_fp8_fast_accum   bool    true            FP8 GEMMs without cuBLASLt's periodic float32 promotion
 *                                                   (faster; same measured accuracy); false: with it.
 *   cuda_graphs             bool    true            GPU: capture a batch shape seen twice in CUDA graphs (block
 *                                                   segments) and replay them.
 *   graph_max_tokens        int     16384 [1,2^24]  GPU: largest batch (patches) captured.
 *   attn_short_max          int     -1 [-1,65536]   GPU: BF16 attention of a batch of at most this many patches
 *                                                   (all images) runs vitd's own rotary + attention kernel
 *                                                   (kernels/attn_rope.cu) instead of rotary pack + cuDNN;
 *                                                   -1 = measured at start-up, 0 = always cuDNN.
 *   gemm_tune               bool    true            GPU: time cuBLASLt's first 8 candidate algorithms per GEMM
 *                                                   shape bucket once and keep the fastest.
 *   device                  int     0      [0,63]   CUDA device ordinal.
 *   encoder_threads         int     0      [0,1024] CPU backend threads; 0 = one per core.
 *   warmup                  bool    true            run one batch of each shape bucket at start-up before
 *                                                   /ready says 200 (first requests then pay no plan/JIT cost).
 *
 * HTTP
 *   host                    string  "127.0.0.1"     address to bind; the Docker image sets 0.0.0.0.
 *   port                    int     8080   [0,65535] TCP port; 0 picks a free port (the chosen one is logged).
 *   api_key                 string  ""              when non-empty, every route but /health and /ready (so
 *                                                   /v1/ and /metrics) needs `Authorization: Bearer <key>`.
 *                                                   Redacted in dumps and logs.
 *   api_key_file            string  ""              read the API key from this file (first line, surrounding
 *                                                   whitespace stripped) so it stays out of argv and the
 *                                                   environment (Docker/Kubernetes secrets). Setting both
 *                                                   api_key and api_key_file is an error.
 *   http_threads            int     4      [1,256]  libmicrohttpd worker threads.
 *   max_connections         int     256    [1,65536] concurrent connections. At the limit a new connection
 *                                                   closes the one that has waited longest for its request
 *                                                   headers (idle or trickling, at least 1 s), or when there
 *                                                   is none it gets 503 and is closed at once.
 *   connection_timeout_s    int     30     [1,3600] idle timeout: no request line this long after the connection
 *                                                   opened or after its last answer closes it (not applied while
 *                                                   a request is queued or encoding: request_timeout_ms).
 *   max_connections_per_ip  int     0      [0,65536] connections from one address, more refused; 0 = no limit.
 *   header_timeout_s        int     10     [1,3600] headers must follow the request line within this time.
 *   body_timeout_s          int     60     [1,86400] the body must follow the headers within this time.
 *   send_timeout_s          int     60     [1,86400] a ready answer must be taken within this time.
 *                                                   Each bound is per request, not per byte: a client trickling
 *                                                   one byte a second is closed when it runs out.
 *   max_uri_bytes           int     8192   [256,65536] request target length; longer gets 414.
 *   max_query_params        int     64     [1,4096] query parameters; more get 431.
 *   discard_body_bytes      size    1 MiB  [0,64 MiB] an error answered before the body (401, 404, 405, 415,
 *                                                   a bad option) reads and drops a body up to this long and
 *                                                   keeps the connection; a longer one closes it.
 *   access_log              bool    true            one access line per request; false keeps only the lines of
 *                                                   failed requests (status >= 400).
 *
 * Request limits
 *   max_body_bytes          size    64 MiB [1 KiB,16 GiB] request body limit; larger bodies get 413 early.
 *   max_images_per_request  int     64     [1,4096] images in one request.
 *   max_image_pixels        size    67108864 [1,4 Gi] width*height of one image, checked from its header before
 *                                                   decoding (decompression-bomb guard). The default, 8192^2,
 *                                                   is 4x the largest resize target (4096^2), admits every
 *                                                   phone and most DSLR photos, and bounds one decode to
 *                                                   192 MiB of RGB per preprocessing thread.
 *   min_pixels              size    0      [0,4 Gi] smart_resize lower bound; 0 = the model's
 *                                                   preprocessor_config (65536 for Qwen3-VL).
 *   max_pixels              size    0      [0,4 Gi] smart_resize upper bound; 0 = the model's (16777216).
 *                                                   When both are set, min_pixels <= max_pixels.
 *   request_timeout_ms      int     60000  [1,86400000] deadline from arrival to answer; a request still
 *                                                   queued past it fails with 504 timeout.
 *
 * Scheduling
 *   queue_max_tokens        size    256 Ki [1,1 Gi] patches waiting in the queue (all requests; a patch holds 6 KiB
 *                                                   of preprocessed pixels, so 256 Ki = 1.5 GiB); beyond it new
 *                                                   requests get 503 busy. Must be >= batch_max_tokens and >= the
 *                                                   largest image (serve checks at start-up).
 *   batch_max_tokens        size    16384  [64,16 Mi] patches per encoder batch: images from many requests are
 *                                                   packed up to it. An image has pixels/(patch_size^2) patches
 *                                                   (16384 = a 2048x2048 image at patch 16); an image with more
 *                                                   runs alone in its own batch. The encoder's activation plan is
 *                                                   sized at start-up for max(batch_max_tokens, the largest image
 *                                                   max_pixels allows: 65536 patches for 4096x4096).
 *   batch_max_images        int     64     [1,4096] images per encoder batch.
 *   batch_delay_ms          int     2      [0,1000] how long the batcher waits for more work before running a
 *                                                   batch that is not full (latency vs throughput).
 *   prep_threads            int     0      [0,1024] decode/preprocess threads; 0 = one per core.
 *   malloc_arenas           int     2      [0,256]  glibc malloc arenas (M_ARENA_MAX); 0 = glibc's default (8 per
 *                                                   core). Few arenas keep the resident memory flat under many
 *                                                   threads (bench_soak, bench/RESULTS.md).
 *   drain_timeout_ms        int     30000  [0,3600000] on SIGTERM: stop accepting, finish queued work for at
 *                                                   most this long, then exit.
 *
 * Outputs
 *   output_dtype            enum    auto            auto | float32 | bfloat16 | float16: default dtype of
 *                                                   returned embeddings (a request may ask for another). auto:
 *                                                   binary answers (safetensors, base64) in the engine's own
 *                                                   dtype (bfloat16 on the GPU, float32 on the CPU: lossless
 *                                                   either way), JSON numbers in float32.
 *   output_cache_bytes      size    1 GiB  [0,1 TiB] encoder outputs kept by image content (SHA-256 of the bytes,
 *                                                   the model and the resize bounds), shared by every route: an
 *                                                   image sent again is answered without decoding or encoding, and
 *                                                   concurrent requests for an image being encoded wait for that
 *                                                   encode; LRU by bytes; 0 = off (server/output_cache.h).
 *   deepstack_default       bool    true            return the deepstack features unless the request says not.
 *
 * FP8 attention scales (GPU, attn_dtype fp8)
 *   fp8_scales              string  ""              static scales JSON to load; "" = dynamic (amax history).
 *   fp8_save_scales         string  ""              write the observed scales to this JSON file (atomically,
 *                                                   once, after warm-up traffic) for later use as fp8_scales.
 *   fp8_save_margin         double  1.5    [1,100]  headroom multiplied into saved scales.
 *   fp8_history             int     16     [1,1024] length of the amax history of dynamic scaling.
 *   attn_route_file         string  ""              attn_dtype auto: the start-up timing table of both attention
 *                                                   paths is read from this file when it was measured on the same
 *                                                   GPU, cuDNN and model shape (else measured and written there,
 *                                                   atomically); "" = measure at every start (~1.5-2.6 s, 8B).
 *
 * Hand-over to vLLM's disaggregated encoder (README "vLLM"; server/handover/)
 *   ec_cache_dir            string  ""              shared storage of vLLM's EC transfer (ECExampleConnector's
 *                                                   shared_storage_path): /v1/chat/completions and
 *                                                   /v1/vllm/image_embeds?transfer=ec_cache write
 *                                                   <dir>/<uuid>/encoder_cache.safetensors (tensor ec_cache, bf16,
 *                                                   [tokens, out_hidden*(1+deepstack)]), through a temporary
 *                                                   name and rename(); "" = those requests are refused.
 *   ec_cache_max_bytes      size    8 GiB  [0,16 TiB] retention: files this process knows of (found at start or
 *                                                   written since) stay under this total, oldest removed first
 *                                                   (vLLM never removes them); 0 = no byte bound.
 *   ec_cache_max_age_s      int     3600   [0,1 year] retention: files older than this are removed (at every
 *                                                   write and once a minute); 0 = no age bound.
 *   ec_proxy_url            string  ""              vLLM EPD proxy to register with once ready: POST
 *                                                   <url>/instances {"role": "encode", "url": ...}, repeated every
 *                                                   ec_announce_interval_s (every 5 s until one succeeds), DELETE
 *                                                   when draining; "" = no registration.
 *   ec_advertise_url        string  ""              URL the proxy reaches this instance at; "" = http://host:port
 *                                                   (an error when host is a wildcard such as 0.0.0.0).
 *   ec_announce_interval_s  int     30     [1,3600] seconds between registrations.
 *   ec_transfer_format      enum    items           items | keyed: the form of ec_transfer_params in chat answers
 *                                                   (vLLM's registry proxy reads ec_items; the example proxy that
 *                                                   groups items reads a map keyed by mm_hash).
 *
 * Logging
 *   log_level               enum    info            debug | info | warn | error: lowest level written.
 *   log_format              enum    text            text (`ts level msg key=value`) | json (one object a line).
 *
 * Thread safety: config_defaults(), config_load() and friends touch only what they are given (plus the process
 * environment when envp is NULL); a loaded vitd_config is plain data, read-only afterwards, safe to share.
 */
#ifndef VITD_CONFIG_H
#define VITD_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include "vitd.h"

#ifdef __cplusplus
extern "C" {
#endif

#define VITD_CONFIG_STR_MAX 1024 /* string options hold at most this many bytes, NUL included */

/* The effective configuration. Enum fields point at static strings (one of the allowed words), so they can be
 * compared with strcmp() and handed to vitd_encoder_opts as they are; the struct owns nothing and can be
 * copied. */
typedef struct vitd_config {
    /* model and backend */
    char model[VITD_CONFIG_STR_MAX];
    char model_name[VITD_CONFIG_STR_MAX]; /* "" = the model directory's last component (at most 255 bytes) */
    const char *backend;            /* "cpu" | "gpu" | "auto" */
    const char *attn_dtype;         /* "auto" | "fp8" | "bf16" */
    const char *linear_dtype;       /* "bf16" | "fp8" | "auto" */
    char linear_fp8_gemms[VITD_CONFIG_STR_MAX];
    bool linear_fp8_fast_accum;
    bool cuda_graphs;
    int graph_max_tokens;
    int attn_short_max;
    bool gemm_tune;
    int device;
    int encoder_threads;            /* 0 = cores */
    bool warmup;
    /* HTTP */
    char host[VITD_CONFIG_STR_MAX];
    int port;                       /* 0 = pick a free port */
    char api_key[VITD_CONFIG_STR_MAX];      /* "" = no authentication */
    char api_key_file[VITD_CONFIG_STR_MAX]; /* when set, config_load() reads the key from it into api_key */
    int http_threads;
    int max_connections;
    int connection_timeout_s;
    int max_connections_per_ip;     /* 0 = no limit */
    int header_timeout_s;
    int body_timeout_s;
    int send_timeout_s;
    int max_uri_bytes;
    int max_query_params;
    size_t discard_body_bytes;
    bool access_log;
    /* request limits */
    size_t max_body_bytes;
    int max_images_per_request;
    size_t max_image_pixels;
    size_t min_pixels;              /* 0 = from the model */
    size_t max_pixels;              /* 0 = from the model */
    int request_timeout_ms;
    /* scheduling */
    size_t queue_max_tokens;        /* patches */
    size_t batch_max_tokens;        /* patches */
    int batch_max_images;
    int batch_delay_ms;
    int prep_threads;               /* 0 = cores */
    int malloc_arenas;              /* 0 = glibc's default */
    int drain_timeout_ms;
    /* outputs */
    const char *output_dtype;       /* "auto" | "float32" | "bfloat16" | "float16" */
    size_t output_cache_bytes;      /* 0 = no output cache */
    bool deepstack_default;
    /* FP8 */
    char fp8_scales[VITD_CONFIG_STR_MAX];
    char fp8_save_scales[VITD_CONFIG_STR_MAX];
    double fp8_save_margin;
    int fp8_history;
    char attn_route_file[VITD_CONFIG_STR_MAX];
    /* hand-over to vLLM's disaggregated encoder */
    char ec_cache_dir[VITD_CONFIG_STR_MAX];   /* "" = no cache files (those routes refuse) */
    size_t ec_cache_max_bytes;                /* 0 = no byte bound */
    int ec_cache_max_age_s;                   /* 0 = no age bound */
    char ec_proxy_url[VITD_CONFIG_STR_MAX];   /* "" = no registration */
    char ec_advertise_url[VITD_CONFIG_STR_MAX];
    int ec_announce_interval_s;
    const char *ec_transfer_format;           /* "items" | "keyed" */
    /* logging */
    const char *log_level;          /* "debug" | "info" | "warn" | "error" */
    const char *log_format;         /* "text" | "json" */
} vitd_config;

/* ---- the option table (read-only; for help, dumps and tests) ---- */

typedef enum {
    CONFIG_INT,
    CONFIG_SIZE,
    CONFIG_DOUBLE,
    CONFIG_BOOL,
    CONFIG_STRING,
    CONFIG_ENUM,
} config_type;

typedef struct {
    const char *name;        /* key in the JSON file and flag name: "max_body_bytes" */
    const char *env;         /* "VITD_MAX_BODY_BYTES" */
    config_type type;
    const char *def;         /* default, in the value syntax above ("64MiB", "auto", "true") */
    double min, max;         /* numeric bounds (inclusive); for strings, length bounds */
    const char *const *choices; /* enums: NULL-terminated allowed words */
    const char *unit;        /* "bytes", "pixels", "patches", "ms", "s" or NULL (help only) */
    bool secret;             /* redacted by config_dump_json() and config_format_line() */
    const char *help;
    size_t offset;           /* of the field in vitd_config */
} config_option;

/* The table, in manual order; *n gets its length. */
const config_option *config_options(int *n);
/* The option named `name` (underscores or dashes), or NULL. */
const config_option *config_find(const char *name);

/* ---- loading ---- */

/* The built-in defaults. */
vitd_config config_defaults(void);

/* What config_load_args() found besides options. Pointers point into argv/envp (not copied): they live as long as
 * those do. Release with config_args_release(). */
typedef struct {
    char **positional;          /* the non-flag arguments, in order (e.g. image paths for `vitd encode`) */
    int n_positional;
    bool help;                  /* -h or --help was given (loading still completes) */
    const char *config_file;    /* the file loaded (from --config or VITD_CONFIG), or NULL */
    const char *unknown_env[16];/* "VITD_X=..." entries of envp that name no option (first 16), to warn about */
    int n_unknown_env;
} config_args;

/* Resets *cfg to the defaults and applies, in order, the JSON file (--config FILE, else VITD_CONFIG), the VITD_*
 * variables of envp (NULL = the process environment) and the flags in argv[0..argc) (argv holds only the
 * arguments, no program name). Then reads api_key_file if set and runs config_validate().
 * With args == NULL a positional argument or -h/--help is an error; with args, they are returned there.
 * Returns VITD_OK, or VITD_E_INVALID_ARG (bad flag, key, type or value) / VITD_E_IO (config or key file
 * unreadable) with err naming the flag, key or variable. On failure *cfg holds defaults plus whatever applied
 * before the error; args must still be released. */
vitd_status config_load_args(vitd_config *cfg, int argc, char **argv, char **envp, config_args *args,
                             vitd_err *err);
/* config_load_args() with args = NULL: every argument must be an option. */
vitd_status config_load(vitd_config *cfg, int argc, char **argv, char **envp, vitd_err *err);
/* Frees args->positional and zeroes *args; accepts NULL. */
void config_args_release(config_args *args);

/* Sets one option from text in the value syntax; `source` ("flag --port", "VITD_PORT", "config.json") starts
 * the error message. Returns VITD_E_INVALID_ARG for an unknown key or a value out of its bounds. */
vitd_status config_set(vitd_config *cfg, const char *name, const char *value, const char *source, vitd_err *err);
/* Applies a JSON text (one flat object) as the file layer would; `source` names it in errors. */
vitd_status config_apply_json(vitd_config *cfg, const char *json, const char *source, vitd_err *err);

/* Checks every field against its bounds and the cross-option rules: min_pixels <= max_pixels when both are set,
 * queue_max_tokens >= batch_max_tokens. config_load() calls it (and, before reading api_key_file, refuses a
 * configuration that sets both api_key and api_key_file). */
vitd_status config_validate(const vitd_config *cfg, vitd_err *err);

/* ---- rendering ---- */

/* Writes the options manual (flag, env name, type, default, bounds, help) to f, for `vitd serve --help`. */
void config_help(FILE *f);
/* Every option as a pretty-printed JSON object, in table order, ending in a newline; secret values that are set
 * are rendered as "<redacted>". config/vitd.json is this text for config_defaults(). Returns a malloc'd string
 * (free with free()), or NULL if out of memory. */
char *config_dump_json(const vitd_config *cfg);
/* The value of option o in cfg as text (numbers in decimal, sizes in bytes/units, bools true/false; a set secret
 * is "<redacted>"), for logging options one field at a time. Returns buf or a static string. */
const char *config_value_text(const vitd_config *cfg, const config_option *o, char *buf, size_t n);
/* One line `model=models/tiny host=127.0.0.1 port=8080 ...` (values with spaces or quotes quoted, secrets
 * redacted) for the start-up log. Malloc'd; free with free(); NULL if out of memory. */
char *config_format_line(const vitd_config *cfg);

#ifdef __cplusplus
}
#endif
#endif /* VITD_CONFIG_H */
