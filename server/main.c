/* main.c — the vitd program: one binary, one subcommand per job.
 *
 *   vitd serve        the HTTP service (server/serve.c)
 *   vitd encode       encode image files offline (server/cli.c)
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
#if __has_include("config.h")
#include "config.h"
#endif

#ifndef VITD_VERSION
#define VITD_VERSION "0.1.0"
#endif

static void usage(FILE *f) {
    fprintf(f, "vitd %s — Qwen3-VL vision-encoder embeddings over HTTP\n\n"
               "usage: vitd <command> [options]\n\n"
               "commands:\n"
               "  serve        run the HTTP service (vitd serve --help lists every option)\n"
               "  encode       encode image files: vitd encode --model DIR IMAGE... --out FILE.safetensors\n"
               "  preprocess   run the image processor: vitd preprocess IMAGE... --out FILE.safetensors\n"
               "  demo-model   write a random checkpoint: vitd demo-model --preset tiny --out DIR\n"
               "  config       print configuration: vitd config --defaults\n"
               "  version      print the version\n",
            VITD_VERSION);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "demo-model")) return cli_demo_model(argc - 2, argv + 2);
    if (!strcmp(cmd, "preprocess")) return cli_preprocess(argc - 2, argv + 2);
    if (!strcmp(cmd, "encode")) return cli_encode(argc - 2, argv + 2);
#ifdef VITD_HAVE_SERVE
    if (!strcmp(cmd, "serve")) return serve_main(argc - 2, argv + 2);
#endif
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
