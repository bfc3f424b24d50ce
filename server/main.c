/* main.c — the vitd program: dispatches subcommands. */
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv) {
    (void)argc; (void)argv;
    fprintf(stderr, "usage: vitd <command>\n");
    return 2;
}
