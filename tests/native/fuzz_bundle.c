/* fuzz_bundle: a libFuzzer target over the C runtime's bundle loader (plan.json parser, weights table,
 * mcpm-config.json parser of the session, tokenizer load), under ASan/UBSan.
 *
 * Each input is a bundle's two JSON files:  [u32 little-endian n][n bytes: plan.json][rest: mcpm-config.json]
 * (n is clamped to what the input holds). They are written into a scratch bundle folder whose weights.bin and
 * tokenizer.model link to the seed bundle named by $MCPM_FUZZ_BUNDLE (the default model exported for the host:
 * its kernels are linked into this binary). A load either fails with a message or loads, opens a session and
 * generates two tokens; a crash, a sanitizer report or an empty error message is a finding.
 *
 * Built and run by `make fuzz` (tests/fuzz.py); the seed corpus is tests/fuzz_corpus/.
 */
#define _GNU_SOURCE
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mcpm.h"

static char scratch[PATH_MAX]; /* the scratch bundle folder, made once */

static void die(const char* what) {
    fprintf(stderr, "fuzz_bundle: %s\n", what);
    abort();
}

static void link_seed_file(const char* seed, const char* name) {
    char from[PATH_MAX * 2], to[PATH_MAX * 2];
    snprintf(from, sizeof from, "%s/%s", seed, name);
    snprintf(to, sizeof to, "%s/%s", scratch, name);
    if (symlink(from, to) != 0) die("cannot link the seed bundle's files (is $MCPM_FUZZ_BUNDLE a bundle?)");
}

int LLVMFuzzerInitialize(int* argc, char*** argv) {
    (void)argc;
    (void)argv;
    const char* seed = getenv("MCPM_FUZZ_BUNDLE");
    if (!seed) die("set MCPM_FUZZ_BUNDLE to the seed bundle folder");
    snprintf(scratch, sizeof scratch, "%s/mcpm-fuzz-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(scratch)) die("cannot make the scratch folder");
    link_seed_file(seed, "weights.bin");
    link_seed_file(seed, "tokenizer.model");
    return 0;
}

static void write_file(const char* name, const uint8_t* data, size_t len) {
    char path[PATH_MAX * 2];
    snprintf(path, sizeof path, "%s/%s", scratch, name);
    FILE* f = fopen(path, "wb");
    if (!f || fwrite(data, 1, len, f) != len || fclose(f) != 0) die("cannot write the scratch bundle");
}

static void require_message(const char* message) {
    if (!message || !*message) die("a failure without an error message");
}

static int on_text(const char* text, size_t len, void* user) {
    (void)text;
    (void)len;
    (void)user;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size < 4) return 0;
    uint32_t n = (uint32_t)data[0] | (uint32_t)data[1] << 8 | (uint32_t)data[2] << 16 | (uint32_t)data[3] << 24;
    size_t plan_len = n < size - 4 ? n : size - 4;
    write_file("plan.json", data + 4, plan_len);
    write_file("mcpm-config.json", data + 4 + plan_len, size - 4 - plan_len);

    mcpm_params params = mcpm_default_params();
    params.threads = 1;
    mcpm_model* model = mcpm_model_load(scratch, &params);
    if (!model) {
        require_message(mcpm_last_error(NULL));
        return 0;
    }
    mcpm_session* session = mcpm_session_new(model);
    if (!session) {
        require_message(mcpm_last_error(model));
    } else {
        mcpm_sampling greedy = mcpm_default_sampling();
        if (mcpm_session_complete(session, "The people", 2, &greedy, on_text, NULL) < 0)
            require_message(mcpm_session_last_error(session));
        mcpm_session_free(session);
    }
    mcpm_model_free(model);
    return 0;
}
