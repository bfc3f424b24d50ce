/* serve.h — the `vitd serve` subcommand: configuration (file < VITD_* env < flags), model and encoder, prep pool,
 * batcher, HTTP daemon, warm-up, then wait for SIGTERM/SIGINT and drain (server/http.h). */
#ifndef VITD_SERVE_H
#define VITD_SERVE_H

/* argv holds the arguments after `serve` (no program name). Returns the process exit code: 0 after a clean
 * drain, 1 when start-up fails, 2 on a usage or configuration error. */
int serve_main(int argc, char **argv);

#endif
