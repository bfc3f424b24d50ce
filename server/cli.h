/* cli.h — the offline subcommands of the vitd program. Each returns the process exit code. */
#ifndef VITD_CLI_H
#define VITD_CLI_H
int cli_demo_model(int argc, char **argv);
int cli_preprocess(int argc, char **argv);
int cli_encode(int argc, char **argv);
#endif
