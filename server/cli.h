/* cli.h — the offline subcommands of the vitd program (demo-model, preprocess, encode, calibrate). Each takes the arguments
 * after the subcommand name and returns the process exit code (0 ok, 1 failure, 2 usage error). */
#ifndef VITD_CLI_H
#define VITD_CLI_H
int cli_demo_model(int argc, char **argv);
int cli_preprocess(int argc, char **argv);
int cli_encode(int argc, char **argv);
int cli_calibrate(int argc, char **argv);
#endif
