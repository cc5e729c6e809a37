/* mcpm_run: a command-line driver over the public C API (mcpm.h) only.
 *
 *   mcpm_run BUNDLE [--tokens 1,2,3 | -p TEXT | --self-test] [-n N] [--threads T] [--variant NAME] [--logits FILE]
 *
 * --tokens IDS  mcpm_prefill of the ids; the last position's logits (float32 little-endian, vocab values) go to
 *               FILE when --logits is given; then (from position 0 again) greedy mcpm_generate of N tokens.
 * -p TEXT       mcpm_session_complete (BOS + TEXT, no chat template), greedy, the text streamed to stdout.
 * -n N          tokens to generate (default 16).   --threads T  worker threads (default 0 = all CPUs).
 * --variant V   kernel variant of the bundle to use (mcpm_params.kernel_variant; default: the runtime picks).
 * --self-test   mcpm_self_test_json (the bundle's golden check, docs/self-test.md); the JSON line is then
 *               {"self_test": {...}, "kernel_variants": [...], "stats": ...} and the exit status 2 when it failed.
 *
 * Always ends with one JSON line on stdout:
 *   {"tokens": [generated ids; --tokens only], "text": "generated text; -p only", "n_generated": K,
 *    "stats": <mcpm_stats_json>}
 * Errors: one line "mcpm_run: ..." on stderr, exit status 1.
 *
 * Build (host): gcc -std=c11 -Wall -Wextra -Werror -O2 -I runtime_bindings/c -o mcpm_run mcpm_run.c \
 *               -L DIR -lmcpm -Wl,-rpath,'$ORIGIN'     (libmcpm.so = runtime sources + the bundle's kernel objects)
 */
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mcpm.h"

static const char* USAGE =
    "usage: mcpm_run BUNDLE [--tokens 1,2,3 | -p TEXT | --self-test] [-n N] [--threads T] [--variant NAME] "
    "[--logits FILE]";

static int fail(const char* fmt, ...) {
    va_list ap;
    fputs("mcpm_run: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    return 1;
}

/* ---------------------------------------------------------------- growable buffers */

typedef struct {
    char* data; /* char[cap]; data[len] == '\0' */
    size_t len, cap;
} strbuf;

static int sb_add(strbuf* b, const char* s, size_t n) {
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1) cap *= 2;
        char* d = realloc(b->data, cap);
        if (!d) return -1;
        b->data = d;
        b->cap = cap;
    }
    memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = '\0';
    return 0;
}

typedef struct {
    int32_t* ids; /* int32[cap] */
    int n, cap;
} idlist;

static int ids_add(idlist* l, int32_t v) {
    if (l->n == l->cap) {
        int cap = l->cap ? 2 * l->cap : 64;
        int32_t* d = realloc(l->ids, sizeof(int32_t) * (size_t)cap);
        if (!d) return -1;
        l->ids = d;
        l->cap = cap;
    }
    l->ids[l->n++] = v;
    return 0;
}

/* ---------------------------------------------------------------- parsing */

static int parse_int(const char* s, long lo, long hi, long* out) {
    char* end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) return -1;
    *out = v;
    return 0;
}

/* "1,2,3" -> ids; -1 on an empty list or a bad id */
static int parse_ids(const char* s, idlist* out) {
    const char* p = s;
    for (;;) {
        char* end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (errno || end == p || v < 0 || v > INT32_MAX) return -1;
        if (ids_add(out, (int32_t)v)) return -1;
        while (*end == ' ') end++;
        if (*end == '\0') return out->n > 0 ? 0 : -1;
        if (*end != ',') return -1;
        p = end + 1;
    }
}

/* ---------------------------------------------------------------- JSON output */

/* Length of the valid UTF-8 sequence at s[0..n) (1..4), or 0 if it is not one. */
static size_t utf8_len(const unsigned char* s, size_t n) {
    unsigned c = s[0];
    size_t k;
    unsigned min;
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) { k = 2; min = 0x80; }
    else if (c >= 0xE0 && c <= 0xEF) { k = 3; min = 0x800; }
    else if (c >= 0xF0 && c <= 0xF4) { k = 4; min = 0x10000; }
    else return 0;
    if (n < k) return 0;
    unsigned cp = c & (0x7Fu >> k);
    for (size_t i = 1; i < k; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
    return k;
}

/* Writes s[0..n) as a JSON string: quotes, backslashes and control bytes escaped, invalid UTF-8 as U+FFFD. */
static void json_string(FILE* f, const char* s, size_t n) {
    const unsigned char* u = (const unsigned char*)s;
    fputc('"', f);
    for (size_t i = 0; i < n;) {
        unsigned c = u[i];
        if (c == '"' || c == '\\') { fputc('\\', f); fputc((int)c, f); i++; }
        else if (c == '\n') { fputs("\\n", f); i++; }
        else if (c == '\r') { fputs("\\r", f); i++; }
        else if (c == '\t') { fputs("\\t", f); i++; }
        else if (c < 0x20 || c == 0x7F) { fprintf(f, "\\u%04x", c); i++; }
        else {
            size_t k = utf8_len(u + i, n - i);
            if (k == 0) { fputs("\\ufffd", f); i++; }
            else { fwrite(u + i, 1, k, f); i += k; }
        }
    }
    fputc('"', f);
}

/* ---------------------------------------------------------------- callbacks */

static int on_token(int32_t token, void* user) { return ids_add((idlist*)user, token) ? 1 : 0; }

typedef struct {
    strbuf text;
    int oom;
} text_sink;

static int on_text(const char* text, size_t len, void* user) {
    text_sink* t = user;
    fwrite(text, 1, len, stdout);
    fflush(stdout);
    if (sb_add(&t->text, text, len)) { t->oom = 1; return 1; }
    return 0;
}

/* ---------------------------------------------------------------- --self-test */

/* Prints {"self_test": ..., "kernel_variants": ..., "stats": ...}; 0 when it passed, 2 when it failed, 1 on error. */
static int run_self_test(mcpm_model* model) {
    char* buf = malloc(MCPM_SELF_TEST_JSON_MAX + 4096 + MCPM_STATS_JSON_MAX); /* char[...]: the three JSON texts */
    if (!buf) return fail("out of memory");
    char *result = buf, *variants = buf + MCPM_SELF_TEST_JSON_MAX, *stats = variants + 4096;
    mcpm_session* session = mcpm_session_new(model);
    int rc = 1;
    if (!session) fail("%s", mcpm_last_error(model));
    else if (mcpm_self_test_json(session, result, MCPM_SELF_TEST_JSON_MAX))
        fail("%s", mcpm_session_last_error(session));
    else if (mcpm_kernel_variants_json(model, variants, 4096) || mcpm_stats_json(model, stats, MCPM_STATS_JSON_MAX))
        fail("%s", mcpm_last_error(model));
    else {
        printf("{\"self_test\": %s, \"kernel_variants\": %s, \"stats\": %s}\n", result, variants, stats);
        int passed = strstr(result, "\"pass\": true") != NULL;
        rc = fflush(stdout) || ferror(stdout) ? fail("cannot write to stdout") : passed ? 0 : 2;
    }
    mcpm_session_free(session);
    free(buf);
    return rc;
}

/* ---------------------------------------------------------------- main */

int main(int argc, char** argv) {
    const char *bundle = NULL, *tokens_arg = NULL, *prompt = NULL, *variant = NULL, *logits_path = NULL;
    long n_new = 16, threads = 0;
    int self_test = 0;
    for (int i = 1; i < argc; i++) {
        const char* a = argv[i];
        int has_val = i + 1 < argc;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { puts(USAGE); return 0; }
        if (!strcmp(a, "--self-test")) { self_test = 1; continue; }
        if (!strcmp(a, "--tokens") || !strcmp(a, "-p") || !strcmp(a, "-n") || !strcmp(a, "--threads") ||
            !strcmp(a, "--variant") || !strcmp(a, "--logits")) {
            if (!has_val) return fail("%s needs a value (%s)", a, USAGE);
            const char* v = argv[++i];
            if (!strcmp(a, "--tokens")) tokens_arg = v;
            else if (!strcmp(a, "-p")) prompt = v;
            else if (!strcmp(a, "--variant")) variant = v;
            else if (!strcmp(a, "--logits")) logits_path = v;
            else if (!strcmp(a, "-n")) { if (parse_int(v, 0, INT_MAX, &n_new)) return fail("-n: bad count '%s'", v); }
            else if (parse_int(v, 0, 4096, &threads)) return fail("--threads: bad count '%s'", v);
        } else if (a[0] == '-' && a[1] != '\0') {
            return fail("unknown option %s (%s)", a, USAGE);
        } else if (!bundle) {
            bundle = a;
        } else {
            return fail("more than one bundle given: %s and %s", bundle, a);
        }
    }
    if (!bundle) return fail("no bundle given (%s)", USAGE);
    if ((tokens_arg != NULL) + (prompt != NULL) + self_test != 1)
        return fail("give exactly one of --tokens, -p and --self-test (%s)", USAGE);
    if (logits_path && !tokens_arg) return fail("--logits needs --tokens");

    idlist prompt_ids = {0};
    if (tokens_arg && parse_ids(tokens_arg, &prompt_ids))
        return fail("--tokens: expected comma-separated non-negative ids, got '%s'", tokens_arg);

    mcpm_params params = mcpm_default_params();
    params.threads = (int)threads;
    params.kernel_variant = variant; /* NULL = the first variant this CPU supports */
    mcpm_model* model = mcpm_model_load(bundle, &params);
    if (!model) return fail("%s", mcpm_last_error(NULL));

    int rc = 1, n_gen = -1;
    idlist gen = {0};
    text_sink sink = {{0}, 0};
    mcpm_session* session = NULL;
    float* logits = NULL;
    char* stats = NULL;

    if (self_test) {
        rc = run_self_test(model);
        goto done;
    }
    if (tokens_arg) {
        if (logits_path) {
            int vocab = mcpm_vocab_size(model);
            logits = malloc(sizeof(float) * (size_t)vocab); /* float[vocab] */
            if (!logits) { fail("out of memory"); goto done; }
            if (mcpm_prefill(model, prompt_ids.ids, prompt_ids.n, logits)) { fail("%s", mcpm_last_error(model)); goto done; }
            FILE* f = fopen(logits_path, "wb");
            if (!f) { fail("cannot write %s: %s", logits_path, strerror(errno)); goto done; }
            /* float32 little-endian: the byte order of every target mcpm supports */
            size_t w = fwrite(logits, sizeof(float), (size_t)vocab, f);
            if (fclose(f) || w != (size_t)vocab) { fail("cannot write %s", logits_path); goto done; }
            mcpm_reset(model); /* generate below feeds the prompt again, timed */
        }
        n_gen = mcpm_generate(model, prompt_ids.ids, prompt_ids.n, (int)n_new, NULL, NULL, 0, on_token, &gen);
        if (n_gen < 0) { fail("%s", mcpm_last_error(model)); goto done; }
        if (gen.n != n_gen) { fail("out of memory"); goto done; }
    } else {
        if (!(session = mcpm_session_new(model))) { fail("%s", mcpm_last_error(model)); goto done; }
        n_gen = mcpm_session_complete(session, prompt, (int)n_new, NULL, on_text, &sink);
        if (sink.oom) { fail("out of memory"); goto done; }
        if (n_gen < 0) { fail("%s", mcpm_session_last_error(session)); goto done; }
        fputc('\n', stdout); /* ends the streamed text: the JSON line comes on its own line */
    }

    if (!(stats = malloc(MCPM_STATS_JSON_MAX))) { fail("out of memory"); goto done; } /* always enough (mcpm.h) */
    if (mcpm_stats_json(model, stats, MCPM_STATS_JSON_MAX)) { fail("%s", mcpm_last_error(model)); goto done; }

    fputs("{\"tokens\": [", stdout);
    for (int i = 0; i < gen.n; i++) printf(i ? ", %d" : "%d", (int)gen.ids[i]);
    fputs("], \"text\": ", stdout);
    json_string(stdout, sink.text.data ? sink.text.data : "", sink.text.len);
    printf(", \"n_generated\": %d, \"stats\": %s}\n", n_gen, stats);
    if (fflush(stdout) || ferror(stdout)) { fail("cannot write to stdout"); goto done; }
    rc = 0;

done:
    free(stats);
    free(logits);
    free(gen.ids);
    free(prompt_ids.ids);
    free(sink.text.data);
    mcpm_session_free(session);
    mcpm_model_free(model);
    return rc;
}
