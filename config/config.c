/* config.c — the option table of vitd and the layers that fill a vitd_config: built-in defaults, a flat JSON file,
 * VITD_* environment variables and command-line flags (config.h is the manual). One parser per value type turns
 * text (or a JSON value) into a typed field after checking it against the option's bounds, so every layer gives
 * the same errors. Also renders the options as help text, as pretty JSON (config/vitd.json) and as one log line.
 * Library code: never prints except where the caller hands a FILE, never exits. */
#include "config.h"
#include "json_strict.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <cJSON.h>

#include "util.h"

#define KIB 1024.0
#define MIB (1024.0 * 1024.0)
#define GIB (1024.0 * 1024.0 * 1024.0)
#define STR_LIMIT ((double)(VITD_CONFIG_STR_MAX - 1))
#define CONFIG_FILE_MAX (1 << 20) /* a config file larger than this is surely not one */

static const char *const k_backend[] = {"cpu", "gpu", "auto", NULL};
static const char *const k_attn[] = {"auto", "fp8", "bf16", NULL};
static const char *const k_linear[] = {"bf16", "fp8", "auto", NULL};
static const char *const k_dtype[] = {"auto", "float32", "bfloat16", "float16", NULL};
static const char *const k_level[] = {"debug", "info", "warn", "error", NULL};
static const char *const k_format[] = {"text", "json", NULL};
static const char *const k_ec_format[] = {"items", "keyed", NULL};

extern char **environ;

#define OFF(field) offsetof(vitd_config, field)

/* ---- the table: name, env, type, default, min, max, choices, unit, secret, help, field ---- */

static const config_option k_options[] = {
    /* model and backend */
    {"model", "VITD_MODEL", CONFIG_STRING, "models/tiny", 1, STR_LIMIT, NULL, NULL, false,
     "Checkpoint directory (Hugging Face Qwen3-VL layout: config.json, safetensors, preprocessor_config.json).",
     OFF(model)},
    {"backend", "VITD_BACKEND", CONFIG_ENUM, "auto", 0, 0, k_backend, NULL, false,
     "Encoder backend: cpu, gpu, or auto (gpu when a usable GPU exists, else cpu).", OFF(backend)},
    {"attn_dtype", "VITD_ATTN_DTYPE", CONFIG_ENUM, "auto", 0, 0, k_attn, NULL, false,
     "GPU attention precision: fp8, bf16, or auto (fp8 where cuDNN supports it, else bf16).", OFF(attn_dtype)},
    {"linear_dtype", "VITD_LINEAR_DTYPE", CONFIG_ENUM, "bf16", 0, 0, k_linear, NULL, false,
     "GPU linear layers (the blocks' GEMMs): bf16, fp8 (E4M3 with dynamic scales), or auto (fp8 where measured "
     "faster at start-up).", OFF(linear_dtype)},
    {"linear_fp8_gemms", "VITD_LINEAR_FP8_GEMMS", CONFIG_STRING, "qkv,fc1", 1, 63, NULL, NULL, false,
     "The block GEMMs FP8 linear runs in E4M3: comma list of qkv, proj, fc1, fc2 (fc2 needs fc1), or all.",
     OFF(linear_fp8_gemms)},
    {"linear_fp8_fast_accum", "VITD_LINEAR_FP8_FAST_ACCUM", CONFIG_BOOL, "true", 0, 1, NULL, NULL, false,
     "FP8 linear layers: sum the E4M3 products without cuBLASLt's periodic float32 promotion (faster, the same "
     "accuracy measured); false: with it.", OFF(linear_fp8_fast_accum)},
    {"cuda_graphs", "VITD_CUDA_GRAPHS", CONFIG_BOOL, "true", 0, 1, NULL, NULL, false,
     "GPU: capture a batch shape seen twice in CUDA graphs and replay them (removes launch overhead).",
     OFF(cuda_graphs)},
    {"graph_max_tokens", "VITD_GRAPH_MAX_TOKENS", CONFIG_INT, "16384", 1, 16777216, NULL, NULL, false,
     "GPU: largest batch (patches) captured in CUDA graphs.", OFF(graph_max_tokens)},
    {"attn_short_max", "VITD_ATTN_SHORT_MAX", CONFIG_INT, "-1", -1, 65536, NULL, "patches", false,
     "GPU: BF16 attention of a batch of at most this many patches (all its images) runs vitd's own fused rotary + "
     "attention kernel instead of rotary pack + cuDNN; -1 = measured at start-up (the longest single image the "
     "own kernel ran faster), 0 = always cuDNN.", OFF(attn_short_max)},
    {"gemm_tune", "VITD_GEMM_TUNE", CONFIG_BOOL, "true", 0, 1, NULL, NULL, false,
     "GPU: time cuBLASLt's first 8 candidate algorithms once per GEMM shape bucket and keep the fastest (off: "
     "its heuristic's first).", OFF(gemm_tune)},
    {"model_name", "VITD_MODEL_NAME", CONFIG_STRING, "", 0, 255, NULL, NULL, false,
     "Name the model is served under (/v1/model, KServe v2's /v2/models/<name>, the answers' model field); "
     "empty = the model directory's last component.",
     OFF(model_name)},
    {"device", "VITD_DEVICE", CONFIG_INT, "0", 0, 63, NULL, NULL, false, "CUDA device ordinal.", OFF(device)},
    {"encoder_threads", "VITD_ENCODER_THREADS", CONFIG_INT, "0", 0, 1024, NULL, NULL, false,
     "Threads of the CPU backend; 0 = one per core.", OFF(encoder_threads)},
    {"warmup", "VITD_WARMUP", CONFIG_BOOL, "true", 0, 1, NULL, NULL, false,
     "Encode one batch per shape bucket at start-up, before /ready says 200.", OFF(warmup)},
    /* HTTP */
    {"host", "VITD_HOST", CONFIG_STRING, "127.0.0.1", 1, STR_LIMIT, NULL, NULL, false,
     "Address to bind (the Docker image sets 0.0.0.0).", OFF(host)},
    {"port", "VITD_PORT", CONFIG_INT, "8080", 0, 65535, NULL, NULL, false,
     "TCP port to listen on; 0 picks a free port (the chosen port is logged).", OFF(port)},
    {"api_key", "VITD_API_KEY", CONFIG_STRING, "", 0, STR_LIMIT, NULL, NULL, true,
     "When set, every route but /health and /ready needs 'Authorization: Bearer <key>'. Empty = no "
     "authentication. Redacted in dumps.",
     OFF(api_key)},
    {"api_key_file", "VITD_API_KEY_FILE", CONFIG_STRING, "", 0, STR_LIMIT, NULL, NULL, false,
     "Read the API key from this file's first line (keeps it out of argv and the environment). "
     "Exclusive with api_key.",
     OFF(api_key_file)},
    {"http_threads", "VITD_HTTP_THREADS", CONFIG_INT, "4", 1, 256, NULL, NULL, false,
     "HTTP worker threads.", OFF(http_threads)},
    {"max_connections", "VITD_MAX_CONNECTIONS", CONFIG_INT, "256", 1, 65536, NULL, NULL, false,
     "Concurrent connections accepted; more are refused.", OFF(max_connections)},
    {"connection_timeout_s", "VITD_CONNECTION_TIMEOUT_S", CONFIG_INT, "30", 1, 3600, NULL, "s", false,
     "Idle connection timeout: a connection with no request line this long after it opened or after its last "
     "answer is closed (a queued or encoding request is bounded by request_timeout_ms instead).",
     OFF(connection_timeout_s)},
    {"max_connections_per_ip", "VITD_MAX_CONNECTIONS_PER_IP", CONFIG_INT, "0", 0, 65536, NULL, NULL, false,
     "Connections from one client address; more are refused at once. 0 = no limit (behind a load balancer "
     "every connection comes from it).",
     OFF(max_connections_per_ip)},
    {"header_timeout_s", "VITD_HEADER_TIMEOUT_S", CONFIG_INT, "10", 1, 3600, NULL, "s", false,
     "A request's headers must arrive within this time of its request line, however slowly they trickle; "
     "then the connection is closed.",
     OFF(header_timeout_s)},
    {"body_timeout_s", "VITD_BODY_TIMEOUT_S", CONFIG_INT, "60", 1, 86400, NULL, "s", false,
     "A request's body must arrive within this time of its headers (64 MiB at about 1 MiB/s by default); "
     "then the connection is closed.",
     OFF(body_timeout_s)},
    {"send_timeout_s", "VITD_SEND_TIMEOUT_S", CONFIG_INT, "60", 1, 86400, NULL, "s", false,
     "An answer must be taken by the client within this time of being ready; then the connection is closed.",
     OFF(send_timeout_s)},
    {"max_uri_bytes", "VITD_MAX_URI_BYTES", CONFIG_INT, "8192", 256, 65536, NULL, "bytes", false,
     "Longest request target (path and query); longer ones get 414.", OFF(max_uri_bytes)},
    {"max_query_params", "VITD_MAX_QUERY_PARAMS", CONFIG_INT, "64", 1, 4096, NULL, NULL, false,
     "Query parameters in one request; more get 431.", OFF(max_query_params)},
    {"discard_body_bytes", "VITD_DISCARD_BODY_BYTES", CONFIG_SIZE, "1MiB", 0, 64 * MIB, NULL, "bytes", false,
     "An error answered before the body is read (401, 404, 405, 415, a bad option) keeps the connection when "
     "the body is at most this long: it is read and dropped. Longer bodies close the connection.",
     OFF(discard_body_bytes)},
    {"access_log", "VITD_ACCESS_LOG", CONFIG_BOOL, "true", 0, 1, NULL, NULL, false,
     "One access line per request; false keeps only the lines of failed requests (status >= 400).",
     OFF(access_log)},
    /* request limits */
    {"max_body_bytes", "VITD_MAX_BODY_BYTES", CONFIG_SIZE, "64MiB", KIB, 16 * GIB, NULL, "bytes", false,
     "Largest request body; larger bodies get 413 before they are read.", OFF(max_body_bytes)},
    {"max_images_per_request", "VITD_MAX_IMAGES_PER_REQUEST", CONFIG_INT, "64", 1, 4096, NULL, NULL, false,
     "Images in one request.", OFF(max_images_per_request)},
    {"max_image_pixels", "VITD_MAX_IMAGE_PIXELS", CONFIG_SIZE, "64Mi", 1, 4 * GIB, NULL, "pixels", false,
     "Width*height of one image, checked from its header before decoding (8192^2 by default: 4x the largest "
     "resize target, one decode stays under 192 MiB of RGB).",
     OFF(max_image_pixels)},
    {"min_pixels", "VITD_MIN_PIXELS", CONFIG_SIZE, "0", 0, 4 * GIB, NULL, "pixels", false,
     "Lower bound of the resize (smart_resize); 0 = the model's preprocessor_config (65536 for Qwen3-VL).",
     OFF(min_pixels)},
    {"max_pixels", "VITD_MAX_PIXELS", CONFIG_SIZE, "0", 0, 4 * GIB, NULL, "pixels", false,
     "Upper bound of the resize (smart_resize); 0 = the model's preprocessor_config (16777216 for Qwen3-VL).",
     OFF(max_pixels)},
    {"request_timeout_ms", "VITD_REQUEST_TIMEOUT_MS", CONFIG_INT, "60000", 1, 86400000, NULL, "ms", false,
     "Deadline from arrival to answer, kept while a request waits in the queue (also while a batch runs): past "
     "it, it fails with 504 within 0.2 s (a batch already encoding it finishes; one waiting for an identical image "
     "that another request is encoding waits for that one, whose own deadline came first).",
     OFF(request_timeout_ms)},
    /* scheduling */
    {"queue_max_tokens", "VITD_QUEUE_MAX_TOKENS", CONFIG_SIZE, "256Ki", 1, GIB, NULL, "patches", false,
     "Patches waiting in the queue over all requests (6 KiB of pixels each); beyond it new requests get 503. "
     ">= batch_max_tokens and >= the largest image (max_pixels/256).",
     OFF(queue_max_tokens)},
    {"batch_max_tokens", "VITD_BATCH_MAX_TOKENS", CONFIG_SIZE, "16384", 64, 16 * MIB, NULL, "patches", false,
     "Patches per encoder batch (images from many requests are packed up to it). An image with more patches "
     "runs alone in its own batch; the encoder is sized for max(this, max_pixels/256).",
     OFF(batch_max_tokens)},
    {"batch_max_images", "VITD_BATCH_MAX_IMAGES", CONFIG_INT, "64", 1, 4096, NULL, NULL, false,
     "Images per encoder batch.", OFF(batch_max_images)},
    {"batch_delay_ms", "VITD_BATCH_DELAY_MS", CONFIG_INT, "2", 0, 1000, NULL, "ms", false,
     "How long the batcher waits for more work before running a batch that is not full.", OFF(batch_delay_ms)},
    {"prep_threads", "VITD_PREP_THREADS", CONFIG_INT, "0", 0, 1024, NULL, NULL, false,
     "Image decode and preprocessing threads; 0 = one per core.", OFF(prep_threads)},
    {"malloc_arenas", "VITD_MALLOC_ARENAS", CONFIG_INT, "2", 0, 256, NULL, NULL, false,
     "glibc malloc arenas (M_ARENA_MAX); 0 = glibc's default (8 per core). Few arenas keep the resident memory "
     "flat under many threads (bench_soak: flat within 2% with 2, still growing after a minute with the "
     "default).",
     OFF(malloc_arenas)},
    {"drain_timeout_ms", "VITD_DRAIN_TIMEOUT_MS", CONFIG_INT, "30000", 0, 3600000, NULL, "ms", false,
     "On SIGTERM: stop accepting, finish queued work for at most this long, then exit.", OFF(drain_timeout_ms)},
    /* outputs */
    {"output_dtype", "VITD_OUTPUT_DTYPE", CONFIG_ENUM, "auto", 0, 0, k_dtype, NULL, false,
     "Default dtype of returned embeddings (a request may ask for another): auto = binary answers (safetensors, "
     "base64) in the engine's own dtype (bfloat16 on the GPU, float32 on the CPU: lossless either way), JSON "
     "numbers in float32; or float32, bfloat16, float16 for every answer.",
     OFF(output_dtype)},
    {"output_cache_bytes", "VITD_OUTPUT_CACHE_BYTES", CONFIG_SIZE, "1GiB", 0, 1024 * GIB, NULL, "bytes", false,
     "Encoder outputs kept by image content (every route shares them): an image sent again is answered without "
     "decoding or encoding, and concurrent requests for one image share its encode; least recently used evicted "
     "first; 0 = off.",
     OFF(output_cache_bytes)},
    {"deepstack_default", "VITD_DEEPSTACK_DEFAULT", CONFIG_BOOL, "true", 0, 1, NULL, NULL, false,
     "Return the deepstack features unless the request says not to.", OFF(deepstack_default)},
    /* FP8 */
    {"fp8_scales", "VITD_FP8_SCALES", CONFIG_STRING, "", 0, STR_LIMIT, NULL, NULL, false,
     "Static FP8 attention scales (JSON) to load; empty = dynamic scaling from the amax history.",
     OFF(fp8_scales)},
    {"fp8_save_scales", "VITD_FP8_SAVE_SCALES", CONFIG_STRING, "", 0, STR_LIMIT, NULL, NULL, false,
     "Write the observed FP8 scales to this JSON file (atomically, once) for later use as fp8_scales.",
     OFF(fp8_save_scales)},
    {"fp8_save_margin", "VITD_FP8_SAVE_MARGIN", CONFIG_DOUBLE, "1.5", 1, 100, NULL, NULL, false,
     "Headroom multiplied into saved FP8 scales.", OFF(fp8_save_margin)},
    {"fp8_history", "VITD_FP8_HISTORY", CONFIG_INT, "16", 1, 1024, NULL, NULL, false,
     "Length of the amax history of dynamic FP8 scaling.", OFF(fp8_history)},
    {"attn_route_file", "VITD_ATTN_ROUTE_FILE", CONFIG_STRING, "", 0, STR_LIMIT, NULL, NULL, false,
     "attn_dtype auto: read the start-up attention timings from this file when they were measured on the same "
     "GPU, cuDNN and model shape, else measure and write them there; empty = measure at every start.",
     OFF(attn_route_file)},
    /* hand-over to vLLM's disaggregated encoder */
    {"ec_cache_dir", "VITD_EC_CACHE_DIR", CONFIG_STRING, "", 0, STR_LIMIT, NULL, NULL, false,
     "vLLM EC transfer (shared storage): write <dir>/<uuid>/encoder_cache.safetensors for /v1/chat/completions "
     "and /v1/vllm/image_embeds?transfer=ec_cache; empty = those are refused.",
     OFF(ec_cache_dir)},
    {"ec_cache_max_bytes", "VITD_EC_CACHE_MAX_BYTES", CONFIG_SIZE, "8GiB", 0, 16384 * GIB, NULL, "bytes", false,
     "Retention: the cache files this process knows of (found at start or written) stay under this many bytes, "
     "oldest removed first (vLLM never removes them); 0 = no byte bound.",
     OFF(ec_cache_max_bytes)},
    {"ec_cache_max_age_s", "VITD_EC_CACHE_MAX_AGE_S", CONFIG_INT, "3600", 0, 31536000, NULL, "s", false,
     "Retention: cache files older than this are removed (checked at every write and every minute); 0 = no age "
     "bound.",
     OFF(ec_cache_max_age_s)},
    {"ec_proxy_url", "VITD_EC_PROXY_URL", CONFIG_STRING, "", 0, STR_LIMIT, NULL, NULL, false,
     "vLLM EPD proxy (http://host:port) to register with as an encode instance once ready (POST /instances, "
     "repeated every ec_announce_interval_s; DELETE when draining); empty = no registration.",
     OFF(ec_proxy_url)},
    {"ec_advertise_url", "VITD_EC_ADVERTISE_URL", CONFIG_STRING, "", 0, STR_LIMIT, NULL, NULL, false,
     "URL the proxy reaches this instance at; empty = http://<host>:<port> (required when host is a wildcard "
     "address such as 0.0.0.0).",
     OFF(ec_advertise_url)},
    {"ec_announce_interval_s", "VITD_EC_ANNOUNCE_INTERVAL_S", CONFIG_INT, "30", 1, 3600, NULL, "s", false,
     "Seconds between registrations with ec_proxy_url (5 s until the first one succeeds), so a restarted proxy "
     "learns of this instance again.",
     OFF(ec_announce_interval_s)},
    {"ec_transfer_format", "VITD_EC_TRANSFER_FORMAT", CONFIG_ENUM, "items", 0, 0, k_ec_format, NULL, false,
     "Form of ec_transfer_params in /v1/chat/completions answers: items ({\"ec_items\": [{mm_hash, "
     "image_grid_thw}]}, vLLM's registry proxy) or keyed ({<mm_hash>: {\"metadata\": {image_grid_thw}}}, the "
     "example proxy that groups items).",
     OFF(ec_transfer_format)},
    /* logging */
    {"log_level", "VITD_LOG_LEVEL", CONFIG_ENUM, "info", 0, 0, k_level, NULL, false,
     "Lowest level written: debug, info, warn or error.", OFF(log_level)},
    {"log_format", "VITD_LOG_FORMAT", CONFIG_ENUM, "text", 0, 0, k_format, NULL, false,
     "text ('ts level msg key=value') or json (one object per line).", OFF(log_format)},
};

#define N_OPTIONS ((int)(sizeof k_options / sizeof k_options[0]))

#define FIELD(cfg, opt, T) ((T *)((char *)(cfg) + (opt)->offset))
#define CFIELD(cfg, opt, T) ((const T *)((const char *)(cfg) + (opt)->offset))

/* ---- lookup ---- */

const config_option *config_options(int *n) {
    if (n) *n = N_OPTIONS;
    return k_options;
}

/* Compares an option name with user text in which '-' stands for '_'; len is the text's length. */
static bool name_eq(const char *name, const char *text, size_t len) {
    if (strlen(name) != len) return false;
    for (size_t i = 0; i < len; i++) {
        char c = text[i] == '-' ? '_' : text[i];
        if (c != name[i]) return false;
    }
    return true;
}

static const config_option *find_n(const char *text, size_t len) {
    for (int i = 0; i < N_OPTIONS; i++)
        if (name_eq(k_options[i].name, text, len)) return &k_options[i];
    return NULL;
}

const config_option *config_find(const char *name) {
    return name ? find_n(name, strlen(name)) : NULL;
}

/* Levenshtein distance between a and b[0..bn) ('-' read as '_'), capped for long inputs. */
static size_t edit_distance(const char *a, const char *b, size_t bn) {
    size_t an = strlen(a);
    if (an > 63 || bn > 63) return 99;
    size_t row[64];
    for (size_t j = 0; j <= bn; j++) row[j] = j;
    for (size_t i = 1; i <= an; i++) {
        size_t diag = row[0];
        row[0] = i;
        for (size_t j = 1; j <= bn; j++) {
            char bc = b[j - 1] == '-' ? '_' : b[j - 1];
            size_t sub = diag + (a[i - 1] != bc);
            size_t del = row[j] + 1, ins = row[j - 1] + 1;
            diag = row[j];
            row[j] = sub < del ? (sub < ins ? sub : ins) : (del < ins ? del : ins);
        }
    }
    return row[bn];
}

/* The closest option name to a misspelt one, or NULL when nothing is close. */
static const char *suggest(const char *text, size_t len) {
    const char *best = NULL;
    size_t best_d = 4;
    for (int i = 0; i < N_OPTIONS; i++) {
        size_t d = edit_distance(k_options[i].name, text, len);
        size_t len_name = strlen(k_options[i].name), limit = len_name / 3 > 2 ? len_name / 3 : 2;
        if (d < best_d && d <= limit) {
            best_d = d;
            best = k_options[i].name;
        }
    }
    return best;
}

/* ---- value parsing: text -> typed value, with bounds ---- */

static const char *type_word(config_type t) {
    switch (t) {
    case CONFIG_INT: return "an integer";
    case CONFIG_SIZE: return "a size (integer with optional k/m/g or KiB/MiB/GiB suffix)";
    case CONFIG_DOUBLE: return "a number";
    case CONFIG_BOOL: return "a boolean (true/false)";
    case CONFIG_STRING: return "a string";
    case CONFIG_ENUM: return "one of the listed words";
    }
    return "?";
}

/* Renders a bound for messages: integers exactly, sizes with a binary suffix when they are round. */
static void fmt_bound(char *buf, size_t n, const config_option *o, double v) {
    if (o->type == CONFIG_DOUBLE) {
        snprintf(buf, n, "%g", v);
    } else if (o->type == CONFIG_SIZE && v >= KIB) {
        unsigned long long u = (unsigned long long)v;
        if (u % (1ull << 30) == 0) snprintf(buf, n, "%lluGi", u >> 30);
        else if (u % (1ull << 20) == 0) snprintf(buf, n, "%lluMi", u >> 20);
        else if (u % (1ull << 10) == 0) snprintf(buf, n, "%lluKi", u >> 10);
        else snprintf(buf, n, "%llu", u);
    } else {
        snprintf(buf, n, "%.0f", v);
    }
}

static vitd_status out_of_range(const config_option *o, const char *value, const char *source, vitd_err *err) {
    char lo[32], hi[32];
    fmt_bound(lo, sizeof lo, o, o->min);
    fmt_bound(hi, sizeof hi, o, o->max);
    return vitd_fail(err, VITD_E_INVALID_ARG, "%s: %s = %.64s is out of range [%s, %s]", source, o->name, value,
                    lo, hi);
}

static vitd_status bad_syntax(const config_option *o, const char *value, const char *source, vitd_err *err) {
    return vitd_fail(err, VITD_E_INVALID_ARG, "%s: %s expects %s, got \"%.64s\"", source, o->name,
                    type_word(o->type), value);
}

/* Copies text without surrounding whitespace into buf (n bytes); false if it does not fit. */
static bool trim_copy(char *buf, size_t n, const char *text) {
    while (isspace((unsigned char)*text)) text++;
    size_t len = strlen(text);
    while (len > 0 && isspace((unsigned char)text[len - 1])) len--;
    if (len >= n) return false;
    memcpy(buf, text, len);
    buf[len] = '\0';
    return true;
}

/* Parses a size: digits, then an optional suffix k|m|g|kib|mib|gib (any case). Returns false on bad syntax or
 * overflow of 2^63. */
static bool parse_size(const char *t, unsigned long long *out) {
    if (!isdigit((unsigned char)*t)) return false;
    errno = 0;
    char *end;
    unsigned long long v = strtoull(t, &end, 10);
    if (errno == ERANGE) return false;
    unsigned shift = 0;
    if (*end) {
        char s = (char)tolower((unsigned char)*end);
        shift = s == 'k' ? 10 : s == 'm' ? 20 : s == 'g' ? 30 : 0;
        if (!shift) return false;
        end++;
        if (*end && !(strcasecmp(end, "ib") == 0 || strcasecmp(end, "i") == 0)) return false;
    }
    if (v > (UINT64_C(1) << 63) >> shift) return false;
    *out = v << shift;
    return true;
}

static bool parse_bool(const char *t, bool *out) {
    static const char *const yes[] = {"true", "1", "yes", "on"}, *const no[] = {"false", "0", "no", "off"};
    for (int i = 0; i < 4; i++) {
        if (strcasecmp(t, yes[i]) == 0) { *out = true; return true; }
        if (strcasecmp(t, no[i]) == 0) { *out = false; return true; }
    }
    return false;
}

/* Stores an already-parsed number in the option's field after the bounds check. shown is the value as the user
 * wrote it, for the message. */
static vitd_status store_number(vitd_config *cfg, const config_option *o, double v, const char *shown,
                                const char *source, vitd_err *err) {
    if (!(v >= o->min && v <= o->max)) return out_of_range(o, shown, source, err);
    switch (o->type) {
    case CONFIG_INT: *FIELD(cfg, o, int) = (int)v; break;
    case CONFIG_SIZE: *FIELD(cfg, o, size_t) = (size_t)v; break;
    case CONFIG_DOUBLE: *FIELD(cfg, o, double) = v; break;
    default: return vitd_fail(err, VITD_E_INTERNAL, "%s: %s is not numeric", source, o->name);
    }
    return VITD_OK;
}

static vitd_status store_string(vitd_config *cfg, const config_option *o, const char *s, const char *source,
                                vitd_err *err) {
    size_t len = strlen(s);
    if ((double)len < o->min || (double)len > o->max) {
        if (len == 0) return vitd_fail(err, VITD_E_INVALID_ARG, "%s: %s must not be empty", source, o->name);
        return vitd_fail(err, VITD_E_INVALID_ARG, "%s: %s is %zu bytes long, more than the %.0f allowed", source,
                        o->name, len, o->max);
    }
    memcpy(FIELD(cfg, o, char), s, len + 1);
    return VITD_OK;
}

static vitd_status store_enum(vitd_config *cfg, const config_option *o, const char *s, const char *source,
                              vitd_err *err) {
    for (int i = 0; o->choices[i]; i++) {
        if (strcasecmp(o->choices[i], s) == 0) {
            *FIELD(cfg, o, const char *) = o->choices[i];
            return VITD_OK;
        }
    }
    char allowed[128] = "";
    for (int i = 0; o->choices[i]; i++) {
        if (i) strncat(allowed, "|", sizeof allowed - strlen(allowed) - 1);
        strncat(allowed, o->choices[i], sizeof allowed - strlen(allowed) - 1);
    }
    return vitd_fail(err, VITD_E_INVALID_ARG, "%s: %s = \"%.64s\" is not one of %s", source, o->name, s, allowed);
}

/* Parses text for option o and stores it. Numbers and words are trimmed of surrounding whitespace; strings are
 * kept as given. */
static vitd_status set_text(vitd_config *cfg, const config_option *o, const char *value, const char *source,
                            vitd_err *err) {
    if (o->type == CONFIG_STRING) return store_string(cfg, o, value, source, err);
    char t[96];
    if (!trim_copy(t, sizeof t, value)) return bad_syntax(o, value, source, err);
    switch (o->type) {
    case CONFIG_INT: {
        errno = 0;
        char *end;
        long long v = strtoll(t, &end, 10);
        if (!*t || *end || errno == ERANGE) return bad_syntax(o, value, source, err);
        return store_number(cfg, o, (double)v, t, source, err);
    }
    case CONFIG_SIZE: {
        unsigned long long v;
        if (t[0] == '-' && isdigit((unsigned char)t[1])) return out_of_range(o, t, source, err);
        if (!parse_size(t, &v)) return bad_syntax(o, value, source, err);
        return store_number(cfg, o, (double)v, t, source, err);
    }
    case CONFIG_DOUBLE: {
        errno = 0;
        char *end;
        double v = strtod(t, &end);
        if (!*t || *end || errno == ERANGE || !isfinite(v)) return bad_syntax(o, value, source, err);
        return store_number(cfg, o, v, t, source, err);
    }
    case CONFIG_BOOL: {
        bool b;
        if (!parse_bool(t, &b)) return bad_syntax(o, value, source, err);
        *FIELD(cfg, o, bool) = b;
        return VITD_OK;
    }
    case CONFIG_ENUM: return store_enum(cfg, o, t, source, err);
    case CONFIG_STRING: break;
    }
    return vitd_fail(err, VITD_E_INTERNAL, "%s: %s has an unknown type", source, o->name);
}

vitd_status config_set(vitd_config *cfg, const char *name, const char *value, const char *source, vitd_err *err) {
    const config_option *o = config_find(name);
    if (!source) source = "config";
    if (!o) {
        const char *s = name ? suggest(name, strlen(name)) : NULL;
        return vitd_fail(err, VITD_E_INVALID_ARG, "%s: unknown option \"%.64s\"%s%s%s", source, name ? name : "",
                        s ? " (did you mean " : "", s ? s : "", s ? "?)" : "");
    }
    if (!value) return vitd_fail(err, VITD_E_INVALID_ARG, "%s: %s needs a value", source, o->name);
    return set_text(cfg, o, value, source, err);
}

vitd_config config_defaults(void) {
    vitd_config cfg;
    memset(&cfg, 0, sizeof cfg);
    for (int i = 0; i < N_OPTIONS; i++) {
        /* Cannot fail: test_config checks that every default parses and validates. */
        (void)set_text(&cfg, &k_options[i], k_options[i].def, "default", NULL);
    }
    return cfg;
}

/* ---- the JSON file layer ---- */

static const char *json_type_name(const cJSON *v) {
    if (cJSON_IsBool(v)) return "a boolean";
    if (cJSON_IsNumber(v)) return "a number";
    if (cJSON_IsString(v)) return "a string";
    if (cJSON_IsNull(v)) return "null";
    if (cJSON_IsArray(v)) return "an array";
    if (cJSON_IsObject(v)) return "an object";
    return "an unknown value";
}

/* Applies one key of the file. */
static vitd_status apply_json_value(vitd_config *cfg, const config_option *o, const cJSON *v, const char *source,
                                    vitd_err *err) {
    char shown[64];
    switch (o->type) {
    case CONFIG_INT:
    case CONFIG_SIZE:
        if (o->type == CONFIG_SIZE && cJSON_IsString(v)) return set_text(cfg, o, v->valuestring, source, err);
        if (!cJSON_IsNumber(v)) break;
        snprintf(shown, sizeof shown, "%.17g", v->valuedouble);
        if (v->valuedouble != floor(v->valuedouble)) return bad_syntax(o, shown, source, err);
        return store_number(cfg, o, v->valuedouble, shown, source, err);
    case CONFIG_DOUBLE:
        if (!cJSON_IsNumber(v)) break;
        snprintf(shown, sizeof shown, "%.17g", v->valuedouble);
        return store_number(cfg, o, v->valuedouble, shown, source, err);
    case CONFIG_BOOL:
        if (!cJSON_IsBool(v)) break;
        *FIELD(cfg, o, bool) = cJSON_IsTrue(v);
        return VITD_OK;
    case CONFIG_STRING:
        if (!cJSON_IsString(v)) break;
        return store_string(cfg, o, v->valuestring, source, err);
    case CONFIG_ENUM:
        if (!cJSON_IsString(v)) break;
        return store_enum(cfg, o, v->valuestring, source, err);
    }
    return vitd_fail(err, VITD_E_INVALID_ARG, "%s: key \"%s\" must be %s, got %s", source, o->name,
                    o->type == CONFIG_SIZE ? "a number or a size string"
                    : o->type == CONFIG_ENUM || o->type == CONFIG_STRING ? "a string"
                                                                        : type_word(o->type),
                    json_type_name(v));
}

vitd_status config_apply_json(vitd_config *cfg, const char *json, const char *source, vitd_err *err) {
    vitd_status st = VITD_OK;
    bool seen[N_OPTIONS] = {false};
    size_t at = 0;
    vitd_err jerr = {0};
    cJSON *root = json_parse_strict(json, strlen(json), NULL, &at, &jerr);
    if (!root) {
        int line = 1;
        for (size_t i = 0; i < at && json[i]; i++) line += json[i] == '\n';
        if (strstr(jerr.msg, "twice")) return vitd_fail(err, VITD_E_INVALID_ARG, "%s: %s", source, jerr.msg);
        return vitd_fail(err, VITD_E_INVALID_ARG, "%s: JSON syntax error near line %d", source, line);
    }
    if (!cJSON_IsObject(root)) {
        st = vitd_fail(err, VITD_E_INVALID_ARG, "%s: expected one JSON object {\"key\": value, ...}, got %s",
                      source, json_type_name(root));
        goto fail;
    }
    for (const cJSON *v = root->child; v; v = v->next) {
        const config_option *o = NULL;
        for (int i = 0; i < N_OPTIONS; i++)
            if (strcmp(k_options[i].name, v->string) == 0) o = &k_options[i];
        if (!o) {
            const char *s = suggest(v->string, strlen(v->string));
            st = vitd_fail(err, VITD_E_INVALID_ARG, "%s: unknown key \"%.64s\"%s%s%s", source, v->string,
                          s ? " (did you mean \"" : "", s ? s : "", s ? "\"?)" : "");
            goto fail;
        }
        if (seen[o - k_options]) {
            st = vitd_fail(err, VITD_E_INVALID_ARG, "%s: key \"%s\" appears twice", source, o->name);
            goto fail;
        }
        seen[o - k_options] = true;
        st = apply_json_value(cfg, o, v, source, err);
        if (st != VITD_OK) goto fail;
    }
fail:
    cJSON_Delete(root);
    return st;
}

static vitd_status load_file(vitd_config *cfg, const char *path, vitd_err *err) {
    char *text = NULL;
    char source[160];
    snprintf(source, sizeof source, "config file %s", path);
    vitd_status st = vitd_read_file(path, source, CONFIG_FILE_MAX, &text, NULL, err);
    if (st != VITD_OK) return st;
    st = config_apply_json(cfg, text, source, err);
    free(text);
    return st;
}

/* Reads api_key_file's first line, trimmed, into cfg->api_key. */
static vitd_status load_key_file(vitd_config *cfg, vitd_err *err) {
    char *text = NULL;
    char label[VITD_CONFIG_STR_MAX + 16];
    snprintf(label, sizeof label, "api_key_file %s", cfg->api_key_file);
    vitd_status st = vitd_read_file(cfg->api_key_file, label, 64 * 1024, &text, NULL, err);
    if (st != VITD_OK) return st;
    char *p = text;
    while (isspace((unsigned char)*p)) p++;
    size_t len = strcspn(p, "\r\n");
    while (len > 0 && isspace((unsigned char)p[len - 1])) len--;
    if (len == 0) {
        st = vitd_fail(err, VITD_E_INVALID_ARG, "api_key_file %s: no key in the file", cfg->api_key_file);
    } else if (len >= sizeof cfg->api_key) {
        st = vitd_fail(err, VITD_E_INVALID_ARG, "api_key_file %s: key longer than %zu bytes", cfg->api_key_file,
                      sizeof cfg->api_key - 1);
    } else {
        memcpy(cfg->api_key, p, len);
        cfg->api_key[len] = '\0';
    }
    free(text);
    return st;
}

/* ---- the environment layer ---- */

static vitd_status apply_env(vitd_config *cfg, char **envp, config_args *args, vitd_err *err) {
    for (char **e = envp; e && *e; e++) {
        if (strncmp(*e, "VITD_", 5) != 0) continue;
        const char *eq = strchr(*e, '=');
        if (!eq) continue;
        size_t nlen = (size_t)(eq - *e);
        if (nlen == strlen("VITD_CONFIG") && strncmp(*e, "VITD_CONFIG", nlen) == 0) continue;
        const config_option *o = NULL;
        for (int i = 0; i < N_OPTIONS; i++)
            if (strlen(k_options[i].env) == nlen && strncmp(k_options[i].env, *e, nlen) == 0) o = &k_options[i];
        if (!o) {
            if (args && args->n_unknown_env < (int)(sizeof args->unknown_env / sizeof args->unknown_env[0]))
                args->unknown_env[args->n_unknown_env++] = *e;
            continue;
        }
        char source[64];
        snprintf(source, sizeof source, "environment %s", o->env);
        vitd_status st = set_text(cfg, o, eq + 1, source, err);
        if (st != VITD_OK) return st;
    }
    return VITD_OK;
}

/* The value of VITD_CONFIG in envp, or NULL. */
static const char *env_config_path(char **envp) {
    for (char **e = envp; e && *e; e++)
        if (strncmp(*e, "VITD_CONFIG=", 12) == 0) return *e + 12;
    return NULL;
}

/* ---- the flag layer ---- */

/* True when arg is "--config" or "--config=..."; *value gets the value (NULL when it is the next argument). */
static bool is_config_flag(const char *arg, const char **value) {
    if (strcmp(arg, "--config") == 0) { *value = NULL; return true; }
    if (strncmp(arg, "--config=", 9) == 0) { *value = arg + 9; return true; }
    return false;
}

/* Finds the last --config among the flags (before "--"). */
static vitd_status scan_config_flag(int argc, char **argv, const char **path, vitd_err *err) {
    for (int i = 0; i < argc; i++) {
        const char *v;
        if (strcmp(argv[i], "--") == 0) break;
        if (!is_config_flag(argv[i], &v)) continue;
        if (!v) {
            if (i + 1 >= argc || strncmp(argv[i + 1], "--", 2) == 0)
                return vitd_fail(err, VITD_E_INVALID_ARG, "flag --config needs a value (a JSON file)");
            v = argv[++i];
        }
        if (!*v) return vitd_fail(err, VITD_E_INVALID_ARG, "flag --config needs a value (a JSON file)");
        *path = v;
    }
    return VITD_OK;
}

static vitd_status add_positional(config_args *args, char *arg, vitd_err *err) {
    if (!args)
        return vitd_fail(err, VITD_E_INVALID_ARG, "unexpected argument \"%.64s\" (options are flags: --name value)",
                        arg);
    args->positional[args->n_positional++] = arg;
    return VITD_OK;
}

static vitd_status apply_flags(vitd_config *cfg, int argc, char **argv, config_args *args, vitd_err *err) {
    for (int i = 0; i < argc; i++) {
        char *arg = argv[i];
        const char *v;
        vitd_status st;
        if (strcmp(arg, "--") == 0) {
            for (i++; i < argc; i++)
                if ((st = add_positional(args, argv[i], err)) != VITD_OK) return st;
            break;
        }
        if (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0) {
            if (!args) return vitd_fail(err, VITD_E_INVALID_ARG, "%s is not accepted here", arg);
            args->help = true;
            continue;
        }
        if (is_config_flag(arg, &v)) { /* applied first, as the file layer */
            if (!v) i++;
            continue;
        }
        if (arg[0] != '-' || arg[1] == '\0') {
            if ((st = add_positional(args, arg, err)) != VITD_OK) return st;
            continue;
        }
        if (arg[1] != '-')
            return vitd_fail(err, VITD_E_INVALID_ARG, "unknown flag %.64s (flags are long: --name value)", arg);
        const char *name = arg + 2;
        const char *eq = strchr(name, '=');
        size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
        const config_option *o = find_n(name, nlen);
        char source[96];
        snprintf(source, sizeof source, "flag --%.*s", (int)(nlen > 64 ? 64 : nlen), name);
        if (!o && !eq && nlen > 3 && (strncmp(name, "no-", 3) == 0 || strncmp(name, "no_", 3) == 0)) {
            const config_option *b = find_n(name + 3, nlen - 3);
            if (b && b->type == CONFIG_BOOL) {
                *FIELD(cfg, b, bool) = false;
                continue;
            }
        }
        if (!o) {
            const char *s = suggest(name, nlen);
            return vitd_fail(err, VITD_E_INVALID_ARG, "unknown flag --%.*s%s%s%s", (int)(nlen > 64 ? 64 : nlen),
                            name, s ? " (did you mean --" : "", s ? s : "", s ? "?)" : "");
        }
        if (eq) {
            v = eq + 1;
        } else if (o->type == CONFIG_BOOL) {
            v = "true";
        } else {
            if (i + 1 >= argc || strncmp(argv[i + 1], "--", 2) == 0)
                return vitd_fail(err, VITD_E_INVALID_ARG, "%s needs a value (%s)", source, type_word(o->type));
            v = argv[++i];
        }
        if ((st = set_text(cfg, o, v, source, err)) != VITD_OK) return st;
    }
    return VITD_OK;
}

/* ---- loading ---- */

vitd_status config_validate(const vitd_config *cfg, vitd_err *err) {
    for (int i = 0; i < N_OPTIONS; i++) {
        const config_option *o = &k_options[i];
        char shown[64];
        double v = 0;
        switch (o->type) {
        case CONFIG_INT: v = *CFIELD(cfg, o, int); break;
        case CONFIG_SIZE: v = (double)*CFIELD(cfg, o, size_t); break;
        case CONFIG_DOUBLE: v = *CFIELD(cfg, o, double); break;
        case CONFIG_BOOL: continue;
        case CONFIG_STRING: {
            const char *s = CFIELD(cfg, o, char);
            size_t len = strnlen(s, VITD_CONFIG_STR_MAX);
            if ((double)len < o->min || (double)len > o->max)
                return vitd_fail(err, VITD_E_INVALID_ARG, "config: %s must be %.0f to %.0f bytes long", o->name,
                                o->min, o->max);
            continue;
        }
        case CONFIG_ENUM: {
            const char *s = *CFIELD(cfg, o, char *);
            bool ok = false;
            for (int c = 0; s && o->choices[c]; c++) ok |= strcmp(s, o->choices[c]) == 0;
            if (!ok)
                return vitd_fail(err, VITD_E_INVALID_ARG, "config: %s = \"%.64s\" is not an allowed word", o->name,
                                s ? s : "(null)");
            continue;
        }
        }
        if (!(v >= o->min && v <= o->max)) {
            snprintf(shown, sizeof shown, "%.17g", v);
            return out_of_range(o, shown, "config", err);
        }
    }
    if (cfg->min_pixels && cfg->max_pixels && cfg->min_pixels > cfg->max_pixels)
        return vitd_fail(err, VITD_E_INVALID_ARG, "config: min_pixels = %zu is larger than max_pixels = %zu",
                        cfg->min_pixels, cfg->max_pixels);
    if (cfg->queue_max_tokens < cfg->batch_max_tokens)
        return vitd_fail(err, VITD_E_INVALID_ARG,
                        "config: queue_max_tokens = %zu is smaller than batch_max_tokens = %zu (a full batch "
                        "could never be queued)",
                        cfg->queue_max_tokens, cfg->batch_max_tokens);
    return VITD_OK;
}

vitd_status config_load_args(vitd_config *cfg, int argc, char **argv, char **envp, config_args *args,
                             vitd_err *err) {
    vitd_status st;
    const char *path = NULL;
    *cfg = config_defaults();
    if (args) {
        memset(args, 0, sizeof *args);
        args->positional = calloc((size_t)(argc > 0 ? argc : 1), sizeof *args->positional);
        if (!args->positional) return vitd_fail(err, VITD_E_NOMEM, "config: out of memory");
    }
    if (!envp) envp = environ;
    if ((st = scan_config_flag(argc, argv, &path, err)) != VITD_OK) return st;
    if (!path) {
        path = env_config_path(envp);
        if (path && !*path) path = NULL;
    }
    if (path) {
        if (args) args->config_file = path;
        if ((st = load_file(cfg, path, err)) != VITD_OK) return st;
    }
    if ((st = apply_env(cfg, envp, args, err)) != VITD_OK) return st;
    if ((st = apply_flags(cfg, argc, argv, args, err)) != VITD_OK) return st;
    if (cfg->api_key[0] && cfg->api_key_file[0])
        return vitd_fail(err, VITD_E_INVALID_ARG, "config: api_key and api_key_file are both set; use one");
    if ((st = config_validate(cfg, err)) != VITD_OK) return st;
    if (cfg->api_key_file[0] && (st = load_key_file(cfg, err)) != VITD_OK) return st;
    return VITD_OK;
}

vitd_status config_load(vitd_config *cfg, int argc, char **argv, char **envp, vitd_err *err) {
    return config_load_args(cfg, argc, argv, envp, NULL, err);
}

void config_args_release(config_args *args) {
    if (!args) return;
    free(args->positional);
    memset(args, 0, sizeof *args);
}

/* ---- rendering ---- */

/* Shortest %g rendering of a double that reads back to the same value. */
static void fmt_double(char *buf, size_t n, double v) {
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(buf, n, "%.*g", prec, v);
        if (strtod(buf, NULL) == v) return;
    }
}


/* The value of one option as text; strings are returned as they are (the caller quotes). */
const char *config_value_text(const vitd_config *cfg, const config_option *o, char *buf, size_t n) {
    switch (o->type) {
    case CONFIG_INT: snprintf(buf, n, "%d", *CFIELD(cfg, o, int)); return buf;
    case CONFIG_SIZE: snprintf(buf, n, "%zu", *CFIELD(cfg, o, size_t)); return buf;
    case CONFIG_DOUBLE: fmt_double(buf, n, *CFIELD(cfg, o, double)); return buf;
    case CONFIG_BOOL: return *CFIELD(cfg, o, bool) ? "true" : "false";
    case CONFIG_ENUM: {
        const char *s = *CFIELD(cfg, o, char *);
        return s ? s : "";
    }
    case CONFIG_STRING: {
        const char *s = CFIELD(cfg, o, char);
        return o->secret && s[0] ? "<redacted>" : s;
    }
    }
    return "";
}

char *config_dump_json(const vitd_config *cfg) {
    strbuf b = {0};
    strbuf_puts(&b, "{\n");
    for (int i = 0; i < N_OPTIONS; i++) {
        const config_option *o = &k_options[i];
        char buf[64];
        const char *v = config_value_text(cfg, o, buf, sizeof buf);
        strbuf_puts(&b, "  ");
        strbuf_json_string(&b, o->name);
        strbuf_puts(&b, ": ");
        if (o->type == CONFIG_STRING || o->type == CONFIG_ENUM) strbuf_json_string(&b, v);
        else strbuf_puts(&b, v);
        strbuf_puts(&b, i + 1 < N_OPTIONS ? ",\n" : "\n");
    }
    strbuf_puts(&b, "}\n");
    return strbuf_finish(&b);
}

/* A logfmt value needs quotes when it is empty or holds a space, quote, '=', backslash or control character. */
static bool needs_quotes(const char *v) {
    if (!*v) return true;
    for (const unsigned char *p = (const unsigned char *)v; *p; p++)
        if (*p <= ' ' || *p == '"' || *p == '=' || *p == '\\' || *p == 0x7f) return true;
    return false;
}

char *config_format_line(const vitd_config *cfg) {
    strbuf b = {0};
    for (int i = 0; i < N_OPTIONS; i++) {
        const config_option *o = &k_options[i];
        char buf[64];
        const char *v = config_value_text(cfg, o, buf, sizeof buf);
        if (i) strbuf_puts(&b, " ");
        strbuf_puts(&b, o->name);
        strbuf_puts(&b, "=");
        if (needs_quotes(v)) strbuf_json_string(&b, v);
        else strbuf_puts(&b, v);
    }
    return strbuf_finish(&b);
}

/* Writes text wrapped at `width` columns, each line indented by `indent` spaces. */
static void print_wrapped(FILE *f, const char *text, int indent, int width) {
    const char *p = text;
    while (*p) {
        int col = indent;
        fprintf(f, "%*s", indent, "");
        bool first = true;
        while (*p) {
            size_t w = strcspn(p, " ");
            if (!first && col + 1 + (int)w > width) break;
            fprintf(f, "%s%.*s", first ? "" : " ", (int)w, p);
            col += (first ? 0 : 1) + (int)w;
            first = false;
            p += w;
            while (*p == ' ') p++;
        }
        fputc('\n', f);
    }
}

void config_help(FILE *f) {
    fprintf(f, "Options (flag, environment variable, default; a later layer wins: defaults < --config FILE "
               "< VITD_* < flags):\n");
    fprintf(f, "  --config FILE  (VITD_CONFIG)\n      JSON file with any of the options below as one flat "
               "object, e.g. {\"port\": 9000}.\n");
    for (int i = 0; i < N_OPTIONS; i++) {
        const config_option *o = &k_options[i];
        char meta[160], lo[32], hi[32];
        const char *arg = o->type == CONFIG_INT ? "INT" : o->type == CONFIG_SIZE ? "SIZE"
                        : o->type == CONFIG_DOUBLE ? "NUM" : o->type == CONFIG_STRING ? "TEXT" : "WORD";
        if (o->type == CONFIG_BOOL)
            fprintf(f, "  --%s / --no-%s", o->name, o->name);
        else
            fprintf(f, "  --%s %s", o->name, arg);
        if (o->type == CONFIG_STRING) {
            snprintf(meta, sizeof meta, "default \"%s\"", o->def);
        } else if (o->type == CONFIG_ENUM) {
            int n = snprintf(meta, sizeof meta, "default %s, one of", o->def);
            for (int c = 0; o->choices[c] && n > 0 && (size_t)n < sizeof meta; c++)
                n += snprintf(meta + n, sizeof meta - (size_t)n, "%s%s", c ? "|" : " ", o->choices[c]);
        } else if (o->type == CONFIG_BOOL) {
            snprintf(meta, sizeof meta, "default %s", o->def);
        } else {
            fmt_bound(lo, sizeof lo, o, o->min);
            fmt_bound(hi, sizeof hi, o, o->max);
            snprintf(meta, sizeof meta, "default %s, range %s..%s%s%s", o->def, lo, hi, o->unit ? " " : "",
                     o->unit ? o->unit : "");
        }
        fprintf(f, "  (%s, %s)\n", o->env, meta);
        print_wrapped(f, o->help, 6, 110);
    }
    fprintf(f, "Sizes take k/m/g or KiB/MiB/GiB (binary). Booleans: true/false, 1/0, yes/no, on/off.\n");
}
