/* cli.c — the offline subcommands (demo-model, preprocess, encode). */
#include "cli.h"
