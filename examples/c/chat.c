/* chat.c: a chat with a bundle through libmcpm's public API (mcpm.h) alone.
 *
 *   cmake -S runtime_bindings/c -B build -DMCPM_BUNDLE=BUNDLE && cmake --build build -j
 *   printf 'Hello\nTell me more\n' | ./build/mcpm-chat BUNDLE [MAX_NEW_TOKENS]
 *
 * One user message per line of stdin; each reply streams to stdout after a "> message" line. At the end (EOF) one
 * line of JSON with the runtime's stats (tokens/s, time to first token, load time, peak memory). Greedy sampling,
 * threads = all CPUs. Exit status 1 with "error: ..." on stderr when the bundle or a turn fails. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mcpm.h"

/* Each piece of the reply as it is generated (UTF-8, never a split character). Nonzero would stop the reply. */
static int print_piece(const char* text, size_t len, void* user) {
    (void)user;
    fwrite(text, 1, len, stdout);
    fflush(stdout);
    return 0;
}

int main(int argc, char** argv) {
    if (argc < 2 || argc > 3) {
        fprintf(stderr, "usage: %s BUNDLE [MAX_NEW_TOKENS] < messages.txt\n", argv[0]);
        return 2;
    }
    int max_new = argc == 3 ? atoi(argv[2]) : 128;
    mcpm_params params = mcpm_default_params(); /* threads 0 = every CPU; the best kernel set this CPU has */
    mcpm_model* model = mcpm_model_load(argv[1], &params);
    if (!model) {
        fprintf(stderr, "error: %s\n", mcpm_last_error(NULL));
        return 1;
    }
    mcpm_session* chat = mcpm_session_new(model); /* the bundle's tokenizer and chat template */
    if (!chat) {
        fprintf(stderr, "error: %s\n", mcpm_last_error(model));
        mcpm_model_free(model);
        return 1;
    }
    mcpm_sampling sampling = mcpm_default_sampling(); /* greedy; set temperature, top_k, top_p, seed to sample */
    char line[4096];                                  /* one message: char[4096] */
    int rc = 0;
    while (rc == 0 && fgets(line, sizeof line, stdin)) {
        line[strcspn(line, "\r\n")] = '\0';
        if (!line[0]) continue;
        printf("> %s\n", line);
        if (mcpm_session_chat(chat, line, max_new, &sampling, print_piece, NULL) < 0) {
            fprintf(stderr, "error: %s\n", mcpm_session_last_error(chat));
            rc = 1;
        }
        printf("\n");
    }
    static char stats[MCPM_STATS_JSON_MAX]; /* JSON: always fits this (mcpm.h) */
    if (rc == 0 && mcpm_stats_json(model, stats, sizeof stats) == 0) printf("%s\n", stats);
    mcpm_session_free(chat);
    mcpm_model_free(model);
    return rc;
}
