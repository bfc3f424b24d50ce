/* main.c — the vitd program: one binary, one subcommand per job.
 *
 *   vitd serve        the HTTP service (server/serve.c)
 *   vitd encode       encode image files offline (server/cli.c)
 *   vitd calibrate    measure static FP8 attention scales on images (server/cli.c)
 *   vitd preprocess   run the image processor only
 *   vitd demo-model   write a random checkpoint in the Hugging Face layout
 *   vitd config       print the configuration (--defaults: every option at its default, as config/vitd.json)
 */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#if __has_include("serve.h")
#include "serve.h"
#define VITD_HAVE_SERVE 1
#endif
#include <stdlib.h>

#include "config.h"
#include "json_strict.h"

#ifndef VITD_VERSION
#define VITD_VERSION "0.1.0"
#endif

static void usage(FILE *f) {
    fprintf(f, "vitd %s — Qwen3-VL vision-encoder embeddings over HTTP\n\n"
               "usage: vitd <command> [options]\n\n"
               "commands:\n"
               "  serve        run the HTTP service (vitd serve --help lists every option)\n"
               "  encode       encode image files: vitd encode --model DIR IMAGE... --out FILE.safetensors\n"
               "  calibrate    static FP8 scales: vitd calibrate --model DIR --out SCALES.json IMAGE_OR_DIR...\n"
               "  preprocess   run the image processor: vitd preprocess IMAGE... --out FILE.safetensors\n"
               "  demo-model   write a random checkpoint: vitd demo-model --preset tiny --out DIR\n"
               "  config       print the configuration (--defaults: all defaults, else file/env/flags applied)\n"
               "  version      print the version\n",
            VITD_VERSION);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    json_strict_init(); /* cJSON's counting hooks, before any thread (config/json_strict.h) */
    if (!strcmp(cmd, "demo-model")) return cli_demo_model(argc - 2, argv + 2);
    if (!strcmp(cmd, "preprocess")) return cli_preprocess(argc - 2, argv + 2);
    if (!strcmp(cmd, "encode")) return cli_encode(argc - 2, argv + 2);
    if (!strcmp(cmd, "calibrate")) return cli_calibrate(argc - 2, argv + 2);
#ifdef VITD_HAVE_SERVE
    if (!strcmp(cmd, "serve")) return serve_main(argc - 2, argv + 2);
#endif
    if (!strcmp(cmd, "config")) {
        /* --defaults: every option at its default (config/vitd.json is this output); otherwise the effective
         * configuration from a file, VITD_* variables and flags, as `vitd serve` would see it. */
        vitd_config cfg = config_defaults();
        vitd_err err = {0};
        int defaults = argc == 3 && !strcmp(argv[2], "--defaults");
        if (!defaults && config_load(&cfg, argc - 2, argv + 2, NULL, &err) != 0) {
            fprintf(stderr, "vitd config: %s\n", err.msg);
            return 2;
        }
        char *js = config_dump_json(&cfg);
        if (!js) return 1;
        fputs(js, stdout);
        free(js);
        return 0;
    }
    if (!strcmp(cmd, "version") || !strcmp(cmd, "--version")) {
        printf("vitd %s\n", VITD_VERSION);
        return 0;
    }
    if (!strcmp(cmd, "help") || !strcmp(cmd, "--help") || !strcmp(cmd, "-h")) {
        usage(stdout);
        return 0;
    }
    fprintf(stderr, "vitd: unknown command '%s'\n\n", cmd);
    usage(stderr);
    return 2;
}
