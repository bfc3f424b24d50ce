/* labels: unit */
/* test_config.c — the option table and its layers: defaults, config/vitd.json kept equal to the defaults dump,
 * each layer overriding the one before (file < env < flags), flag spellings, size suffixes, every kind of error
 * (message names the key / flag / variable, the value and the range), cross-option checks, api_key_file,
 * help text covering every option, dump/line rendering and their round trip. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cJSON.h>

#include "check.h"
#include "config.h"

static char g_dir[] = "/tmp/vitd_test_config_XXXXXX";

/* Writes text to g_dir/name; returns the path in a static buffer rotated over 4 slots. */
static const char *write_tmp(const char *name, const char *text) {
    static char paths[4][512];
    static int slot;
    char *p = paths[slot++ % 4];
    snprintf(p, 512, "%s/%s", g_dir, name);
    FILE *f = fopen(p, "wb");
    if (!f) { perror(p); exit(1); }
    fputs(text, f);
    fclose(f);
    return p;
}

/* Loads with argv given as a NULL-terminated list and envp as a NULL-terminated list. */
static int load(vitd_config *c, char **argv, char **envp, vitd_err *err) {
    int argc = 0;
    while (argv && argv[argc]) argc++;
    static char *empty_env[] = {NULL};
    memset(err, 0, sizeof *err);
    return config_load(c, argc, argv, envp ? envp : empty_env, err);
}

/* Expects loading to fail with code, with every needle in the message. */
#define EXPECT_FAIL(code, argv, envp, ...) \
    do { \
        vitd_config cf_; vitd_err ef_; \
        int s_ = load(&cf_, argv, envp, &ef_); \
        CHECK_EQ_INT(code, s_); \
        const char *needles_[] = {__VA_ARGS__, NULL}; \
        for (int k_ = 0; needles_[k_]; k_++) CHECK_STR_CONTAINS(ef_.msg, needles_[k_]); \
        printf("  error ok: %s\n", ef_.msg); \
    } while (0)

static void test_defaults(void) {
    vitd_config d = config_defaults();
    vitd_err err;
    CHECK_OK(config_validate(&d, &err), &err);
    CHECK(strcmp(d.model, "models/tiny") == 0);
    CHECK(strcmp(d.host, "127.0.0.1") == 0);
    CHECK_EQ_INT(8080, d.port);
    CHECK(strcmp(d.backend, "auto") == 0 && strcmp(d.attn_dtype, "auto") == 0);
    CHECK_EQ_INT(64 << 20, d.max_body_bytes);
    CHECK_EQ_INT(8192ll * 8192, d.max_image_pixels);
    CHECK_EQ_INT(64, d.max_images_per_request);
    CHECK_EQ_INT(0, d.min_pixels);
    CHECK_EQ_INT(0, d.max_pixels);
    CHECK_EQ_INT(256 << 10, d.queue_max_tokens);
    CHECK_EQ_INT(16384, d.batch_max_tokens);
    CHECK_EQ_INT(64, d.batch_max_images);
    CHECK_EQ_INT(2, d.batch_delay_ms);
    CHECK_EQ_INT(60000, d.request_timeout_ms);
    CHECK_EQ_INT(256, d.max_connections);
    CHECK_EQ_INT(30, d.connection_timeout_s);
    CHECK_EQ_INT(4, d.http_threads);
    CHECK_EQ_INT(30000, d.drain_timeout_ms);
    CHECK(strcmp(d.log_level, "info") == 0 && strcmp(d.log_format, "text") == 0);
    CHECK(d.fp8_save_margin == 1.5);
    CHECK_EQ_INT(16, d.fp8_history);
    CHECK(d.warmup && d.deepstack_default && d.access_log);
    CHECK(strcmp(d.output_dtype, "auto") == 0);
    CHECK(d.api_key[0] == '\0');

    /* Every table entry: env name is VITD_<NAME>, its default text parses, and lookup by dashed name works. */
    int n;
    const config_option *opts = config_options(&n);
    CHECK(n >= 33);
    for (int i = 0; i < n; i++) {
        char env[96] = "VITD_", dashed[96];
        for (size_t j = 0; opts[i].name[j]; j++) {
            env[5 + j] = (char)toupper((unsigned char)opts[i].name[j]);
            env[6 + j] = '\0';
            dashed[j] = opts[i].name[j] == '_' ? '-' : opts[i].name[j];
            dashed[j + 1] = '\0';
        }
        CHECK_MSG(strcmp(env, opts[i].env) == 0, "%s has env %s", opts[i].name, opts[i].env);
        vitd_config c = config_defaults();
        CHECK_OK(config_set(&c, opts[i].name, opts[i].def, "test", &err), &err);
        CHECK_MSG(config_find(dashed) == &opts[i], "dashed lookup of %s", dashed);
        CHECK_MSG(opts[i].help && strlen(opts[i].help) > 10, "%s has help", opts[i].name);
    }
}

/* config/vitd.json equals config_dump_json(config_defaults()) as JSON and as text. */
static void test_defaults_file(void) {
    size_t len;
    char *file = (char *)check_read_file(VITD_SOURCE_DIR "/config/vitd.json", &len);
    CHECK_MSG(file != NULL, "cannot read config/vitd.json");
    if (!file) return;
    char *text = realloc(file, len + 1);
    text[len] = '\0';
    vitd_config d = config_defaults();
    char *dump = config_dump_json(&d);
    cJSON *a = cJSON_Parse(text), *b = cJSON_Parse(dump);
    CHECK(a && b);
    CHECK_MSG(cJSON_Compare(a, b, 1), "config/vitd.json differs from the defaults; regenerate it with "
              "`vitd config --defaults > config/vitd.json`. Expected:\n%s", dump);
    CHECK_MSG(strcmp(text, dump) == 0, "config/vitd.json is not byte-equal to the defaults dump");
    int n;
    const config_option *opts = config_options(&n);
    CHECK_EQ_INT(n, cJSON_GetArraySize(a));
    for (int i = 0; i < n; i++) CHECK_MSG(cJSON_GetObjectItemCaseSensitive(a, opts[i].name), "%s", opts[i].name);

    /* Loading the file as a config file gives the defaults back. */
    vitd_config c;
    vitd_err err;
    char *argv[] = {"--config", VITD_SOURCE_DIR "/config/vitd.json", NULL};
    CHECK_OK(load(&c, argv, NULL, &err), &err);
    char *dump2 = config_dump_json(&c);
    CHECK(dump2 && strcmp(dump, dump2) == 0);
    free(dump2);
    cJSON_Delete(a);
    cJSON_Delete(b);
    free(dump);
    free(text);
}

static void test_layers(void) {
    vitd_config c;
    vitd_err err;
    const char *file = write_tmp("layers.json",
                                 "{\"port\": 1000, \"log_level\": \"debug\", \"model\": \"/m/from-file\",\n"
                                 " \"max_body_bytes\": \"1MiB\", \"backend\": \"gpu\", \"warmup\": false,\n"
                                 " \"fp8_save_margin\": 2.5, \"min_pixels\": 1024}\n");
    char cfgflag[600];
    snprintf(cfgflag, sizeof cfgflag, "--config=%s", file);

    /* file only */
    char *a1[] = {cfgflag, NULL};
    CHECK_OK(load(&c, a1, NULL, &err), &err);
    CHECK_EQ_INT(1000, c.port);
    CHECK(strcmp(c.log_level, "debug") == 0);
    CHECK(strcmp(c.model, "/m/from-file") == 0);
    CHECK_EQ_INT(1 << 20, c.max_body_bytes);
    CHECK(strcmp(c.backend, "gpu") == 0);
    CHECK(!c.warmup);
    CHECK(c.fp8_save_margin == 2.5);
    CHECK_EQ_INT(1024, c.min_pixels);
    CHECK_EQ_INT(4, c.http_threads); /* untouched: default */

    /* env over file */
    char *env[] = {"PATH=/usr/bin", "VITD_PORT=2000", "VITD_BACKEND=cpu", "VITD_WARMUP=yes", NULL};
    CHECK_OK(load(&c, a1, env, &err), &err);
    CHECK_EQ_INT(2000, c.port);
    CHECK(strcmp(c.backend, "cpu") == 0);
    CHECK(c.warmup);
    CHECK(strcmp(c.log_level, "debug") == 0); /* from the file still */

    /* flags over env */
    char *a2[] = {"--port", "3000", cfgflag, "--no-warmup", NULL};
    CHECK_OK(load(&c, a2, env, &err), &err);
    CHECK_EQ_INT(3000, c.port);
    CHECK(!c.warmup);
    CHECK(strcmp(c.backend, "cpu") == 0);
    CHECK(strcmp(c.model, "/m/from-file") == 0);

    /* VITD_CONFIG names the file when no --config is given; --config wins over it. */
    char envcfg[600];
    snprintf(envcfg, sizeof envcfg, "VITD_CONFIG=%s", file);
    char *env2[] = {envcfg, NULL};
    char *none[] = {NULL};
    CHECK_OK(load(&c, none, env2, &err), &err);
    CHECK_EQ_INT(1000, c.port);
    const char *other = write_tmp("other.json", "{\"port\": 1111}");
    char *a3[] = {"--config", (char *)other, NULL};
    CHECK_OK(load(&c, a3, env2, &err), &err);
    CHECK_EQ_INT(1111, c.port);
    CHECK(strcmp(c.log_level, "info") == 0);

    /* Unknown VITD_* variables are reported, not fatal. */
    char *env3[] = {"VITD_PROT=1", "VITD_PORT=4000", NULL};
    config_args args;
    CHECK_OK(config_load_args(&c, 0, none, env3, &args, &err), &err);
    CHECK_EQ_INT(4000, c.port);
    CHECK_EQ_INT(1, args.n_unknown_env);
    CHECK(args.n_unknown_env == 1 && strcmp(args.unknown_env[0], "VITD_PROT=1") == 0);
    config_args_release(&args);
}

static void test_flag_forms(void) {
    vitd_config c;
    vitd_err err;
    char *a[] = {"--port=8082", "--max-body-bytes", "2m", "--no-deepstack-default", "--warmup=false",
                 "--access_log=off", "--log-format", "JSON", "--fp8_save_margin=3", "--host", "0.0.0.0",
                 "--api-key", "s3cret", NULL};
    CHECK_OK(load(&c, a, NULL, &err), &err);
    CHECK_EQ_INT(8082, c.port);
    CHECK_EQ_INT(2 << 20, c.max_body_bytes);
    CHECK(!c.deepstack_default && !c.warmup && !c.access_log);
    CHECK(strcmp(c.log_format, "json") == 0); /* enum words are case-insensitive, stored canonical */
    CHECK(c.fp8_save_margin == 3.0);
    CHECK(strcmp(c.host, "0.0.0.0") == 0);
    CHECK(strcmp(c.api_key, "s3cret") == 0);

    char *b[] = {"--no-warmup", "--warmup", "--deepstack-default=0", "--access-log", NULL};
    CHECK_OK(load(&c, b, NULL, &err), &err);
    CHECK(c.warmup && !c.deepstack_default && c.access_log);

    /* positional arguments and -- with config_load_args */
    char *p[] = {"a.png", "--port", "9", "b.jpg", "-", "--", "--port", NULL};
    config_args args;
    CHECK_OK(config_load_args(&c, 7, p, (char *[]){NULL}, &args, &err), &err);
    CHECK_EQ_INT(9, c.port);
    CHECK_EQ_INT(4, args.n_positional);
    if (args.n_positional == 4) {
        CHECK(strcmp(args.positional[0], "a.png") == 0);
        CHECK(strcmp(args.positional[1], "b.jpg") == 0);
        CHECK(strcmp(args.positional[2], "-") == 0);
        CHECK(strcmp(args.positional[3], "--port") == 0); /* after --, flags are positional */
    }
    CHECK(!args.help);
    config_args_release(&args);

    char *h[] = {"--help", NULL};
    CHECK_OK(config_load_args(&c, 1, h, (char *[]){NULL}, &args, &err), &err);
    CHECK(args.help);
    CHECK(args.config_file == NULL);
    config_args_release(&args);
    config_args_release(NULL);
}

static void test_sizes(void) {
    static const struct { const char *text; unsigned long long want; } ok[] = {
        {"1234", 1234}, {"512k", 512ull << 10}, {"512KiB", 512ull << 10}, {"512K", 512ull << 10},
        {"64m", 64ull << 20}, {"64MiB", 64ull << 20}, {"64mib", 64ull << 20}, {"64Mi", 64ull << 20},
        {"1g", 1ull << 30}, {"1GiB", 1ull << 30}, {" 3m ", 3ull << 20}, {"16G", 16ull << 30},
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        vitd_config c = config_defaults();
        vitd_err err;
        CHECK_OK(config_set(&c, "max_body_bytes", ok[i].text, "test", &err), &err);
        CHECK_MSG(c.max_body_bytes == ok[i].want, "%s -> %zu, want %llu", ok[i].text, c.max_body_bytes,
                  ok[i].want);
    }
    static const char *bad[] = {"64MB", "64q", "k", "1.5m", "", "0x10", "64 m", "99999999999999999999g",
                                "17g", "-1", "1023"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        vitd_config c = config_defaults();
        vitd_err err = {0};
        int s = config_set(&c, "max_body_bytes", bad[i], "test", &err);
        CHECK_MSG(s == VITD_E_INVALID_ARG, "\"%s\" accepted as a size", bad[i]);
        CHECK_STR_CONTAINS(err.msg, "max_body_bytes");
        CHECK_EQ_INT(64 << 20, c.max_body_bytes); /* unchanged on error */
    }
    /* the range message shows binary bounds */
    vitd_config c = config_defaults();
    vitd_err err;
    config_set(&c, "max_body_bytes", "17g", "test", &err);
    CHECK_STR_CONTAINS(err.msg, "[1Ki, 16Gi]");
    /* pixel counts take suffixes too */
    CHECK_OK(config_set(&c, "max_pixels", "16m", "test", &err), &err);
    CHECK_EQ_INT(16777216, c.max_pixels);
}

static void test_errors(void) {
    char buf[600];
    /* unknown key in the file, with a suggestion */
    const char *f1 = write_tmp("unknown.json", "{\"port\": 1, \"prot\": 2}");
    char *a1[] = {"--config", (char *)f1, NULL};
    EXPECT_FAIL(VITD_E_INVALID_ARG, a1, NULL, "unknown key \"prot\"", "did you mean \"port\"", "unknown.json");

    /* wrong JSON types name the key */
    const char *f2 = write_tmp("type.json", "{\"port\": \"8080\"}");
    char *a2[] = {"--config", (char *)f2, NULL};
    EXPECT_FAIL(VITD_E_INVALID_ARG, a2, NULL, "\"port\"", "must be an integer", "got a string");
    const char *f3 = write_tmp("type2.json", "{\"warmup\": 1}");
    char *a3[] = {"--config", (char *)f3, NULL};
    EXPECT_FAIL(VITD_E_INVALID_ARG, a3, NULL, "\"warmup\"", "boolean", "got a number");
    const char *f4 = write_tmp("type3.json", "{\"model\": {\"path\": \"x\"}}");
    char *a4[] = {"--config", (char *)f4, NULL};
    EXPECT_FAIL(VITD_E_INVALID_ARG, a4, NULL, "\"model\"", "must be a string", "got an object");
    const char *f5 = write_tmp("frac.json", "{\"batch_max_images\": 1.5}");
    char *a5[] = {"--config", (char *)f5, NULL};
    EXPECT_FAIL(VITD_E_INVALID_ARG, a5, NULL, "batch_max_images", "1.5");
    const char *f6 = write_tmp("range.json", "{\"http_threads\": 0}");
    char *a6[] = {"--config", (char *)f6, NULL};
    EXPECT_FAIL(VITD_E_INVALID_ARG, a6, NULL, "http_threads = 0 is out of range [1, 256]");
    const char *f7 = write_tmp("dup.json", "{\"port\": 1, \"port\": 2}");
    char *a7[] = {"--config", (char *)f7, NULL};
    EXPECT_FAIL(VITD_E_INVALID_ARG, a7, NULL, "\"port\" appears twice");
    const char *f8 = write_tmp("syntax.json", "{\n\"port\": 1,\n\"host\" \"x\"\n}");
    char *a8[] = {"--config", (char *)f8, NULL};
    EXPECT_FAIL(VITD_E_INVALID_ARG, a8, NULL, "syntax error near line 3");
    const char *f9 = write_tmp("array.json", "[1, 2]");
    char *a9[] = {"--config", (char *)f9, NULL};
    EXPECT_FAIL(VITD_E_INVALID_ARG, a9, NULL, "expected one JSON object");
    snprintf(buf, sizeof buf, "%s/missing.json", g_dir);
    char *a10[] = {"--config", buf, NULL};
    EXPECT_FAIL(VITD_E_IO, a10, NULL, "missing.json");
    const char *f11 = write_tmp("enum.json", "{\"attn_dtype\": \"fp4\"}");
    char *a11[] = {"--config", (char *)f11, NULL};
    EXPECT_FAIL(VITD_E_INVALID_ARG, a11, NULL, "attn_dtype = \"fp4\" is not one of auto|fp8|bf16");

    /* flags: out of range, bad enum, unknown, missing value, bad syntax */
    char *b1[] = {"--port", "70000", NULL};
    EXPECT_FAIL(VITD_E_INVALID_ARG, b1, NULL, "flag --port", "port = 70000 is out of range [0, 65535]");
    char *b2[] = {"--backend=tpu", NULL};
    EXPECT_FAIL(VITD_E_INVALID_ARG, b2, NULL, "backend = \"tpu\" is not one of cpu|gpu|auto");
    char *b3[] = {"--prot", "1", NULL};
    EXPECT_FAIL(VITD_E_INVALID_ARG, b3, NULL, "unknown flag --prot", "did you mean --port");
    char *b4[] = {"--frobnicate", NULL};
    EXPECT_FAIL(VITD_E_INVALID_ARG, b4, NULL, "unknown flag --frobnicate");
    char *b5[] = {"--port", NULL};
    EXPECT_FAIL(VITD_E_INVALID_ARG, b5, NULL, "flag --port needs a value");
    char *b6[] = {"--model", "--port", "1", NULL};
    EXPECT_FAIL(VITD_E_INVALID_ARG, b6, NULL, "flag --model needs a value");
    char *b7[] = {"--port", "80x", NULL};
    EXPECT_FAIL(VITD_E_INVALID_ARG, b7, NULL, "port expects an integer", "80x");
    char *b8[] = {"--warmup=maybe", NULL};
    EXPECT_FAIL(VITD_E_INVALID_ARG, b8, NULL, "warmup expects a boolean", "maybe");
    char *b9[] = {"-p", "80", NULL};
    EXPECT_FAIL(VITD_E_INVALID_ARG, b9, NULL, "unknown flag -p");
    char *b10[] = {"--no-port", NULL};
    EXPECT_FAIL(VITD_E_INVALID_ARG, b10, NULL, "unknown flag --no-port");
    char *b11[] = {"image.png", NULL};
    EXPECT_FAIL(VITD_E_INVALID_ARG, b11, NULL, "unexpected argument \"image.png\"");
    char *b12[] = {"--config", NULL};
    EXPECT_FAIL(VITD_E_INVALID_ARG, b12, NULL, "--config needs a value");
    char *b13[] = {"--fp8-save-margin", "0.5", NULL};
    EXPECT_FAIL(VITD_E_INVALID_ARG, b13, NULL, "fp8_save_margin = 0.5 is out of range [1, 100]");
    char *b14[] = {"--fp8-save-margin", "nan", NULL};
    EXPECT_FAIL(VITD_E_INVALID_ARG, b14, NULL, "fp8_save_margin expects a number");
    char *b15[] = {"--host=", NULL};
    EXPECT_FAIL(VITD_E_INVALID_ARG, b15, NULL, "host must not be empty");
    char *b16[] = {"--help", NULL};
    EXPECT_FAIL(VITD_E_INVALID_ARG, b16, NULL, "--help");

    /* environment: the message names the variable */
    char *none[] = {NULL};
    char *e1[] = {"VITD_PORT=abc", NULL};
    EXPECT_FAIL(VITD_E_INVALID_ARG, none, e1, "environment VITD_PORT", "port expects an integer", "abc");
    char *e2[] = {"VITD_BATCH_DELAY_MS=5000", NULL};
    EXPECT_FAIL(VITD_E_INVALID_ARG, none, e2, "VITD_BATCH_DELAY_MS", "5000", "[0, 1000]");
    char *e3[] = {"VITD_LOG_LEVEL=verbose", NULL};
    EXPECT_FAIL(VITD_E_INVALID_ARG, none, e3, "VITD_LOG_LEVEL", "debug|info|warn|error");
    /* a bad env value is an error even when a flag would override it later (each layer is checked) */
    char *fl[] = {"--port", "5", NULL};
    EXPECT_FAIL(VITD_E_INVALID_ARG, fl, e1, "VITD_PORT");

    /* cross-option rules */
    char *x1[] = {"--min-pixels", "2m", "--max-pixels", "1m", NULL};
    EXPECT_FAIL(VITD_E_INVALID_ARG, x1, NULL, "min_pixels", "max_pixels");
    char *x2[] = {"--queue-max-tokens", "1000", NULL};
    EXPECT_FAIL(VITD_E_INVALID_ARG, x2, NULL, "queue_max_tokens = 1000", "batch_max_tokens = 16384");
    char *x3[] = {"--min-pixels", "2m", NULL}; /* max_pixels 0 = from the model: no cross-check */
    vitd_config c;
    vitd_err err;
    CHECK_OK(load(&c, x3, NULL, &err), &err);

    /* config_validate catches fields written by code */
    c = config_defaults();
    c.port = -1;
    CHECK_EQ_INT(VITD_E_INVALID_ARG, config_validate(&c, &err));
    CHECK_STR_CONTAINS(err.msg, "port = -1");
    c = config_defaults();
    c.backend = "tpu";
    CHECK_EQ_INT(VITD_E_INVALID_ARG, config_validate(&c, &err));
    CHECK_STR_CONTAINS(err.msg, "backend");
    CHECK_EQ_INT(VITD_E_INVALID_ARG, config_set(&c, "nope", "1", "test", &err));
    CHECK_STR_CONTAINS(err.msg, "unknown option \"nope\"");
}

static void test_api_key_file(void) {
    vitd_config c;
    vitd_err err;
    const char *kf = write_tmp("key.txt", "  k3y-value \nsecond line\n");
    char *a[] = {"--api-key-file", (char *)kf, NULL};
    CHECK_OK(load(&c, a, NULL, &err), &err);
    CHECK(strcmp(c.api_key, "k3y-value") == 0);
    char *b[] = {"--api-key-file", (char *)kf, "--api-key", "x", NULL};
    EXPECT_FAIL(VITD_E_INVALID_ARG, b, NULL, "api_key and api_key_file");
    const char *ef = write_tmp("empty.txt", "\n  \n");
    char *d[] = {"--api-key-file", (char *)ef, NULL};
    EXPECT_FAIL(VITD_E_INVALID_ARG, d, NULL, "no key");
}

static void test_rendering(void) {
    /* help mentions every option, its env name and its default */
    char *help = NULL;
    size_t help_len = 0;
    FILE *f = open_memstream(&help, &help_len);
    config_help(f);
    fclose(f);
    int n;
    const config_option *opts = config_options(&n);
    for (int i = 0; i < n; i++) {
        char flag[96];
        snprintf(flag, sizeof flag, "--%s ", opts[i].name);
        CHECK_STR_CONTAINS(help, flag);
        CHECK_STR_CONTAINS(help, opts[i].env);
    }
    CHECK_STR_CONTAINS(help, "--config FILE");
    CHECK_STR_CONTAINS(help, "--no-warmup");
    CHECK_STR_CONTAINS(help, "default 64MiB, range 1Ki..16Gi bytes");
    CHECK_STR_CONTAINS(help, "cpu|gpu|auto");
    free(help);

    /* dump and one-line rendering: secrets redacted, odd strings quoted, and a dump reads back the same */
    vitd_config c = config_defaults();
    vitd_err err;
    CHECK_OK(config_set(&c, "api_key", "topsecret", "t", &err), &err);
    CHECK_OK(config_set(&c, "model", "/models/with space \"q\"\\", "t", &err), &err);
    CHECK_OK(config_set(&c, "fp8_save_margin", "2.25", "t", &err), &err);
    CHECK_OK(config_set(&c, "max_pixels", "1m", "t", &err), &err);
    char *dump = config_dump_json(&c);
    char *line = config_format_line(&c);
    CHECK(dump && line);
    CHECK(!strstr(dump, "topsecret") && !strstr(line, "topsecret"));
    CHECK_STR_CONTAINS(dump, "\"api_key\": \"<redacted>\"");
    CHECK_STR_CONTAINS(line, "api_key=<redacted>");
    CHECK_STR_CONTAINS(line, "model=\"/models/with space \\\"q\\\"\\\\\"");
    CHECK_STR_CONTAINS(line, " port=8080 ");
    CHECK_STR_CONTAINS(line, " fp8_scales=\"\" ");
    CHECK_STR_CONTAINS(line, "fp8_save_margin=2.25");
    CHECK(!strchr(line, '\n'));
    printf("  line: %.200s...\n", line);

    char vb[64];
    CHECK(strcmp(config_value_text(&c, config_find("max_pixels"), vb, sizeof vb), "1048576") == 0);
    CHECK(strcmp(config_value_text(&c, config_find("api_key"), vb, sizeof vb), "<redacted>") == 0);
    CHECK(strcmp(config_value_text(&c, config_find("warmup"), vb, sizeof vb), "true") == 0);
    CHECK(strcmp(config_value_text(&c, config_find("backend"), vb, sizeof vb), "auto") == 0);

    vitd_config back = config_defaults();
    CHECK_OK(config_apply_json(&back, dump, "dump", &err), &err);
    CHECK(strcmp(back.model, c.model) == 0);
    CHECK(back.fp8_save_margin == 2.25);
    CHECK_EQ_INT(1 << 20, back.max_pixels);
    CHECK(strcmp(back.api_key, "<redacted>") == 0);
    free(dump);
    free(line);
}

int main(void) {
    if (!mkdtemp(g_dir)) { perror("mkdtemp"); return 1; }
    test_defaults();
    test_defaults_file();
    test_layers();
    test_flag_forms();
    test_sizes();
    test_errors();
    test_api_key_file();
    test_rendering();
    if (check_rm_tree(g_dir) != 0) fprintf(stderr, "could not remove %s\n", g_dir);
    return check_done("test_config");
}
