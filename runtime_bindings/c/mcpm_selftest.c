/* Self-test: a loaded model against the golden results of its export (mcpm-config.json "golden", written by
 * export/golden.py from the PyTorch reference of the bundle's quantization; docs/self-test.md). Teacher-forced:
 * the golden prompt, then each golden id, so one near-tie does not derail the steps after it. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mcpm_internal.h"
#include "mcpm_json.h"
#include "mcpm_model.h"

/* The parsed "golden" record; arrays point into malloc'ed memory (golden_free). */
typedef struct {
    int n_prompt, steps;
    int32_t* prompt;    /* int32[n_prompt] */
    int32_t* ids;       /* int32[steps]: the reference's greedy ids */
    int32_t* top_id;    /* int32[steps * 5]: the reference's five largest logits' ids at each step */
    float* top_logit;   /* float[steps * 5]: and their values */
    float* scale;       /* float[steps]: max|logit| at each step */
    double tolerance;   /* fraction of scale */
    const char* text;   /* the prompt's text (into the config) */
    const char* reference;
} golden;

#define TOP 5

static void golden_free(golden* g) {
    free(g->prompt);
    free(g->ids);
    free(g->top_id);
    free(g->top_logit);
    free(g->scale);
}

static int is_id(const json_node* n, int vocab) {
    return n && n->type == JSON_NUMBER && n->is_int && n->i >= 0 && n->i < vocab;
}

/* ids int32[arr->count] from a JSON array of token ids; -1 when one is not an id. */
static int read_ids(const json_doc* d, const json_node* arr, int vocab, int32_t* out) {
    int k = 0;
    for (const json_node* v = json_child(d, arr); v; v = json_next(d, v)) {
        if (!is_id(v, vocab)) return -1;
        out[k++] = (int32_t)v->i;
    }
    return 0;
}

static const json_node* typed(const json_doc* d, const json_node* obj, const char* key, json_type t) {
    const json_node* n = json_get(d, obj, key);
    return n && n->type == t ? n : NULL;
}

static int parse_golden(mcpm_model* m, const json_doc* d, golden* g) {
    const char* fix = "re-export the bundle with this mcpm";
    const json_node* root = &d->nodes[0];
    const json_node* gold = typed(d, root, "golden", JSON_OBJECT);
    if (!gold)
        return mcpm_seterr(m->err, "this bundle has no golden results (mcpm-config.json \"golden\"): %s (without "
                           "--no-golden) to self-test it", fix);
    const json_node* prompt = typed(d, gold, "prompt_ids", JSON_ARRAY);
    const json_node* ids = typed(d, gold, "ids", JSON_ARRAY);
    const json_node* top = typed(d, gold, "top5", JSON_ARRAY);
    const json_node* scale = typed(d, gold, "scale", JSON_ARRAY);
    const json_node* tol = typed(d, gold, "tolerance", JSON_NUMBER);
    const json_node* text = typed(d, gold, "prompt", JSON_STRING);
    const json_node* ref = typed(d, gold, "reference", JSON_STRING);
    if (!prompt || !ids || !top || !scale || !tol || !text || prompt->count < 1 || ids->count < 1 ||
        top->count != ids->count || scale->count != ids->count || !(tol->d > 0 && tol->d < 1))
        return mcpm_seterr(m->err, "mcpm-config.json \"golden\" is damaged (prompt_ids, ids, top5, scale, tolerance, "
                           "prompt): %s", fix);
    if (prompt->count + ids->count > m->max_ctx)
        return mcpm_seterr(m->err, "mcpm-config.json \"golden\" needs %d tokens, more than the context of %d: %s",
                           prompt->count + ids->count, m->max_ctx, fix);
    g->n_prompt = prompt->count;
    g->steps = ids->count;
    g->tolerance = tol->d;
    g->text = text->str;
    g->reference = ref ? ref->str : "";
    g->prompt = malloc(sizeof(int32_t) * (size_t)g->n_prompt);
    g->ids = malloc(sizeof(int32_t) * (size_t)g->steps);
    g->top_id = malloc(sizeof(int32_t) * (size_t)g->steps * TOP);
    g->top_logit = malloc(sizeof(float) * (size_t)g->steps * TOP);
    g->scale = malloc(sizeof(float) * (size_t)g->steps);
    if (!g->prompt || !g->ids || !g->top_id || !g->top_logit || !g->scale) return mcpm_seterr(m->err, "out of memory");
    if (read_ids(d, prompt, m->vocab, g->prompt) || read_ids(d, ids, m->vocab, g->ids))
        return mcpm_seterr(m->err, "mcpm-config.json \"golden\" has a token id outside the vocabulary of %d: %s",
                           m->vocab, fix);
    int step = 0;
    for (const json_node* row = json_child(d, top); row; row = json_next(d, row), step++) {
        const json_node* sc = json_at(d, scale, step);
        if (row->type != JSON_ARRAY || row->count != TOP || !sc || sc->type != JSON_NUMBER || !(sc->d > 0))
            return mcpm_seterr(m->err, "mcpm-config.json \"golden\" top5/scale step %d is damaged: %s", step, fix);
        g->scale[step] = (float)sc->d;
        for (int r = 0; r < TOP; r++) {
            const json_node* pair = json_at(d, row, r);
            const json_node* id = pair && pair->type == JSON_ARRAY && pair->count == 2 ? json_at(d, pair, 0) : NULL;
            const json_node* v = id ? json_at(d, pair, 1) : NULL;
            if (!is_id(id, m->vocab) || !v || v->type != JSON_NUMBER)
                return mcpm_seterr(m->err, "mcpm-config.json \"golden\" top5 step %d is damaged: %s", step, fix);
            g->top_id[step * TOP + r] = (int32_t)id->i;
            g->top_logit[step * TOP + r] = (float)v->d;
        }
    }
    return 0;
}

typedef struct {
    int argmax_equal, near_ties, failed;
    double max_diff;   /* the largest |logit - reference| / max|logit| seen */
    char reason[512];  /* the first failure */
} verdict;

/* Compares logits float[vocab] of step s with the reference's. */
static void check_step(const mcpm_model* m, const golden* g, int s, const float* logits, verdict* v) {
    double scale = g->scale[s], tol = g->tolerance;
    for (int r = 0; r < TOP; r++) {
        int32_t id = g->top_id[s * TOP + r];
        double diff = fabs((double)logits[id] - g->top_logit[s * TOP + r]) / scale;
        if (!(diff <= v->max_diff)) v->max_diff = isnan(diff) ? INFINITY : diff;
        if (!(diff <= tol) && !v->failed++)
            snprintf(v->reason, sizeof v->reason, "step %d: the logit of token %d is %.5g, the reference's %.5g (%.3g "
                     "of max|logit|, tolerance %.3g)", s, id, (double)logits[id], (double)g->top_logit[s * TOP + r],
                     diff, tol);
    }
    int best = 0;
    for (int i = 1; i < m->vocab; i++)
        if (logits[i] > logits[best]) best = i;
    if (best == g->ids[s]) {
        v->argmax_equal++;
        return;
    }
    double gap = ((double)logits[best] - logits[g->ids[s]]) / scale;
    if (gap <= tol) {
        v->near_ties++; /* the reference's token is within the tolerance of this argmax: rounding, not a bug */
        return;
    }
    if (!v->failed++)
        snprintf(v->reason, sizeof v->reason, "step %d: predicts token %d where the reference predicts %d (logit gap "
                 "%.3g of max|logit|, tolerance %.3g)", s, best, g->ids[s], gap, tol);
}

/* "pass", or "fail: ..." into out char[cap]: the session's tokenizer on the golden prompt's text. */
static void check_tokenizer(mcpm_session* s, const golden* g, char* out, size_t cap) {
    int32_t* ids = NULL;
    int n = mcpm_session_encode_bos(s, g->text, strlen(g->text), &ids);
    if (n < 0) {
        snprintf(out, cap, "fail: cannot encode the golden prompt");
    } else if (n < g->n_prompt) {
        snprintf(out, cap, "fail: %d ids for the golden prompt, the reference has at least %d", n, g->n_prompt);
    } else {
        int k = 0;
        while (k < g->n_prompt && ids[k] == g->prompt[k]) k++;
        if (k < g->n_prompt)
            snprintf(out, cap, "fail: id %d of the golden prompt is %d, the reference's %d", k, ids[k], g->prompt[k]);
        else
            snprintf(out, cap, "pass");
    }
    free(ids);
}

static int run_steps(mcpm_model* m, const golden* g, float* logits, verdict* v) {
    if (mcpm_prefill(m, g->prompt, g->n_prompt, logits)) return -1;
    for (int s = 0; s < g->steps; s++) {
        if (s && mcpm_decode(m, g->ids[s - 1], logits)) return -1;
        check_step(m, g, s, logits, v);
    }
    return 0;
}

int mcpm_self_test_json(mcpm_session* session, char* out, size_t len) {
    if (!session) return -1;
    mcpm_model* m = mcpm_session_model(session);
    if (!out || len == 0) return mcpm_seterr(m->err, "mcpm_self_test_json: no output buffer");
    golden g = {0};
    verdict v = {0};
    float* logits = malloc(sizeof(float) * (size_t)m->vocab); /* float[vocab] */
    int rc = -1;
    if (!logits) { mcpm_seterr(m->err, "out of memory"); goto done; }
    if (parse_golden(m, mcpm_session_config(session), &g)) goto done;
    char tokenizer[160];
    check_tokenizer(session, &g, tokenizer, sizeof tokenizer);
    mcpm_session_reset(session);
    double t0 = mcpm_now_ms();
    int ran = run_steps(m, &g, logits, &v);
    double ms = mcpm_now_ms() - t0;
    mcpm_session_reset(session);
    if (ran) goto done; /* a cancel or a runtime error: m->err says which */
    const char* where = m->variant[0] ? m->variant : "default";
    const char* device = mcpm_model_device(m);
    char reason[1024], escaped[2 * sizeof reason], tok_escaped[2 * sizeof tokenizer], ref[512];
    if (v.failed)
        snprintf(reason, sizeof reason, "kernel set %s on the %s: %s (%d of %d steps off)", where, device, v.reason,
                 v.failed, g.steps);
    else if (strcmp(tokenizer, "pass"))
        snprintf(reason, sizeof reason, "tokenizer: %s", tokenizer + 6);
    else
        reason[0] = '\0';
    mcpm_json_escape(reason, escaped, sizeof escaped);
    mcpm_json_escape(tokenizer, tok_escaped, sizeof tok_escaped);
    mcpm_json_escape(g.reference, ref, sizeof ref);
    int n = snprintf(out, len,
                     "{\"pass\": %s, \"reason\": \"%s\", \"kernel_variant\": \"%s\", \"device\": \"%s\", "
                     "\"prompt_tokens\": %d, \"steps\": %d, \"argmax_equal\": %d, \"near_ties\": %d, "
                     "\"max_logit_diff\": %.6g, \"tolerance\": %.6g, \"tokenizer\": \"%s\", \"ms\": %.3f, "
                     "\"reference\": \"%s\"}",
                     reason[0] ? "false" : "true", escaped, where, device, g.n_prompt, g.steps, v.argmax_equal,
                     v.near_ties, isinf(v.max_diff) ? 1e30 : v.max_diff, g.tolerance, tok_escaped, ms, ref);
    if (n < 0 || (size_t)n >= len) {
        mcpm_seterr(m->err, "mcpm_self_test_json: buffer of %zu bytes too small, need %d", len, n + 1);
        goto done;
    }
    rc = 0;
done:
    golden_free(&g);
    free(logits);
    return rc;
}

/* What mcpm_self_test_json writes at most: keys and numbers (< 512 bytes), the escaped reason, tokenizer verdict and
 * reference, the kernel variant and the device. */
_Static_assert(512 + 2 * 1024 + 2 * 160 + 512 + 32 + 8 < MCPM_SELF_TEST_JSON_MAX, "MCPM_SELF_TEST_JSON_MAX too small");
