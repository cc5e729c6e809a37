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

/* One turn of the golden results: the text prompt, or the image turn; arrays malloc'ed (record_free). */
typedef struct {
    int n_prompt, steps;
    int32_t* prompt;    /* int32[n_prompt] */
    int32_t* ids;       /* int32[steps]: the reference's greedy ids */
    int32_t* top_id;    /* int32[steps * 5]: the reference's five largest logits' ids at each step */
    float* top_logit;   /* float[steps * 5]: and their values */
    float* scale;       /* float[steps]: max|logit| at each step */
    double tolerance;   /* fraction of scale */
} record;

/* The parsed "golden" section; strings point into the config. */
typedef struct {
    record text;        /* the golden prompt */
    const char* prompt; /* its text */
    const char* reference;
    int has_image;      /* MiniCPM-V: golden.image */
    record image;       /* the chat turn with the golden image */
    int width, height;  /* of the golden image */
    const char* message; /* the image turn's question */
} golden;

#define TOP 5
#define FIX "re-export the bundle with this mcpm"

static void record_free(record* r) {
    free(r->prompt);
    free(r->ids);
    free(r->top_id);
    free(r->top_logit);
    free(r->scale);
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

/* A record from the JSON object obj (mcpm-config.json `what`: "golden" or "golden.image"). */
static int parse_record(mcpm_model* m, const json_doc* d, const json_node* obj, const char* what, record* g) {
    const json_node* prompt = typed(d, obj, "prompt_ids", JSON_ARRAY);
    const json_node* ids = typed(d, obj, "ids", JSON_ARRAY);
    const json_node* top = typed(d, obj, "top5", JSON_ARRAY);
    const json_node* scale = typed(d, obj, "scale", JSON_ARRAY);
    const json_node* tol = typed(d, obj, "tolerance", JSON_NUMBER);
    if (!prompt || !ids || !top || !scale || !tol || prompt->count < 1 || ids->count < 1 ||
        top->count != ids->count || scale->count != ids->count || !(tol->d > 0 && tol->d < 1))
        return mcpm_seterr(m->err, "mcpm-config.json \"%s\" is damaged (prompt_ids, ids, top5, scale, tolerance): %s",
                           what, FIX);
    if (prompt->count + ids->count > m->max_ctx)
        return mcpm_seterr(m->err, "mcpm-config.json \"%s\" needs %d tokens, more than the context of %d: %s", what,
                           prompt->count + ids->count, m->max_ctx, FIX);
    g->n_prompt = prompt->count;
    g->steps = ids->count;
    g->tolerance = tol->d;
    g->prompt = malloc(sizeof(int32_t) * (size_t)g->n_prompt);
    g->ids = malloc(sizeof(int32_t) * (size_t)g->steps);
    g->top_id = malloc(sizeof(int32_t) * (size_t)g->steps * TOP);
    g->top_logit = malloc(sizeof(float) * (size_t)g->steps * TOP);
    g->scale = malloc(sizeof(float) * (size_t)g->steps);
    if (!g->prompt || !g->ids || !g->top_id || !g->top_logit || !g->scale) return mcpm_seterr(m->err, "out of memory");
    if (read_ids(d, prompt, m->vocab, g->prompt) || read_ids(d, ids, m->vocab, g->ids))
        return mcpm_seterr(m->err, "mcpm-config.json \"%s\" has a token id outside the vocabulary of %d: %s", what,
                           m->vocab, FIX);
    int step = 0;
    for (const json_node* row = json_child(d, top); row; row = json_next(d, row), step++) {
        const json_node* sc = json_at(d, scale, step);
        if (row->type != JSON_ARRAY || row->count != TOP || !sc || sc->type != JSON_NUMBER || !(sc->d > 0))
            return mcpm_seterr(m->err, "mcpm-config.json \"%s\" top5/scale step %d is damaged: %s", what, step, FIX);
        g->scale[step] = (float)sc->d;
        for (int r = 0; r < TOP; r++) {
            const json_node* pair = json_at(d, row, r);
            const json_node* id = pair && pair->type == JSON_ARRAY && pair->count == 2 ? json_at(d, pair, 0) : NULL;
            const json_node* v = id ? json_at(d, pair, 1) : NULL;
            if (!is_id(id, m->vocab) || !v || v->type != JSON_NUMBER)
                return mcpm_seterr(m->err, "mcpm-config.json \"%s\" top5 step %d is damaged: %s", what, step, FIX);
            g->top_id[step * TOP + r] = (int32_t)id->i;
            g->top_logit[step * TOP + r] = (float)v->d;
        }
    }
    return 0;
}

static int parse_golden(mcpm_model* m, const json_doc* d, golden* g) {
    const json_node* root = &d->nodes[0];
    const json_node* gold = typed(d, root, "golden", JSON_OBJECT);
    if (!gold)
        return mcpm_seterr(m->err, "this bundle has no golden results (mcpm-config.json \"golden\"): %s (without "
                           "--no-golden) to self-test it", FIX);
    const json_node* text = typed(d, gold, "prompt", JSON_STRING);
    const json_node* ref = typed(d, gold, "reference", JSON_STRING);
    if (!text) return mcpm_seterr(m->err, "mcpm-config.json \"golden\" is damaged (prompt): %s", FIX);
    g->prompt = text->str;
    g->reference = ref ? ref->str : "";
    if (parse_record(m, d, gold, "golden", &g->text)) return -1;
    const json_node* image = json_get(d, gold, "image");
    if (!image) return 0;
    const json_node* w = image->type == JSON_OBJECT ? typed(d, image, "width", JSON_NUMBER) : NULL;
    const json_node* h = image->type == JSON_OBJECT ? typed(d, image, "height", JSON_NUMBER) : NULL;
    const json_node* msg = image->type == JSON_OBJECT ? typed(d, image, "message", JSON_STRING) : NULL;
    if (!w || !h || !msg || !w->is_int || !h->is_int || w->i < 1 || h->i < 1 || w->i * h->i > (1 << 24))
        return mcpm_seterr(m->err, "mcpm-config.json \"golden.image\" is damaged (width, height, message): %s", FIX);
    g->has_image = 1;
    g->width = (int)w->i;
    g->height = (int)h->i;
    g->message = msg->str;
    return parse_record(m, d, image, "golden.image", &g->image);
}

typedef struct {
    int argmax_equal, near_ties, failed;
    double max_diff;   /* the largest |logit - reference| / max|logit| seen */
    char reason[512];  /* the first failure */
} verdict;

/* Compares logits float[vocab] of step s with the reference's. */
static void check_step(const mcpm_model* m, const record* g, int s, const float* logits, verdict* v) {
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

/* "pass", or "fail: ..." into out char[cap]: ids int32[n] (-1: could not be made) against the reference's `what`. */
static void check_ids(const int32_t* ids, int n, const record* g, const char* what, char* out, size_t cap) {
    if (n < 0) {
        snprintf(out, cap, "fail: cannot encode %s", what);
    } else if (n < g->n_prompt) {
        snprintf(out, cap, "fail: %d ids for %s, the reference has at least %d", n, what, g->n_prompt);
    } else {
        int k = 0;
        while (k < g->n_prompt && ids[k] == g->prompt[k]) k++;
        if (k < g->n_prompt)
            snprintf(out, cap, "fail: id %d of %s is %d, the reference's %d", k, what, ids[k], g->prompt[k]);
        else
            snprintf(out, cap, "pass");
    }
}

/* The teacher-forced steps after the first logits (already in logits float[vocab]). */
static int run_steps(mcpm_model* m, const record* g, float* logits, verdict* v) {
    for (int s = 0; s < g->steps; s++) {
        if (s && mcpm_decode(m, g->ids[s - 1], logits)) return -1;
        check_step(m, g, s, logits, v);
    }
    return 0;
}

/* The golden image, rgb uint8[h][w][3] (export/golden.py golden_image): red rises left to right, green top to bottom,
 * blue a 32-pixel checkerboard. */
static void golden_image(int w, int h, uint8_t* rgb) {
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            uint8_t* px = rgb + 3 * ((size_t)y * (size_t)w + (size_t)x);
            px[0] = (uint8_t)(x * 255 / (w > 1 ? w - 1 : 1));
            px[1] = (uint8_t)(y * 255 / (h > 1 ? h - 1 : 1));
            px[2] = (uint8_t)(((x / 32 + y / 32) % 2) * 200 + 30);
        }
}

typedef struct {
    verdict v;
    char prompt[160];  /* "pass" or "fail: ..." (the turn's ids against the reference's) */
    double encode_ms, ms;
    int slices;
} image_result;

/* The image turn: encode the golden image on this device, build the chat turn's ids as a chat does, compare them,
 * then feed them with the image features and check every step. -1: a runtime error or cancel (m->err). */
static int run_image(mcpm_session* s, const golden* g, float* logits, image_result* r) {
    mcpm_model* m = mcpm_session_model(s);
    uint8_t* rgb = malloc((size_t)g->width * (size_t)g->height * 3); /* uint8[height][width][3] */
    int32_t* ids = NULL;
    uint8_t* image = NULL;
    mcpm_image_prompt img;
    int rc = -1;
    if (!rgb) { mcpm_seterr(m->err, "out of memory"); goto done; }
    if (mcpm_need_vision(m, "the golden image")) goto done;
    golden_image(g->width, g->height, rgb);
    double t0 = mcpm_now_ms();
    r->slices = mcpm_encode_image(s, rgb, g->width, g->height);
    if (r->slices < 0) goto done;
    r->encode_ms = mcpm_now_ms() - t0;
    int n = mcpm_session_image_prompt(s, g->message, &ids, &image, &img);
    if (n < 0) goto done;
    check_ids(ids, n, &g->image, "the image turn", r->prompt, sizeof r->prompt);
    rc = 0;
    if (strcmp(r->prompt, "pass")) goto done; /* other ids: their logits are not comparable */
    t0 = mcpm_now_ms();
    rc = mcpm_prefill_image(m, ids, n, &img, logits) || run_steps(m, &g->image, logits, &r->v) ? -1 : 0;
    r->ms = mcpm_now_ms() - t0;
done:
    free(rgb);
    free(ids);
    free(image);
    return rc;
}

/* The image part of the JSON into out char[cap]: null without a golden image. */
static void image_json(const golden* g, const image_result* r, char* out, size_t cap) {
    if (!g->has_image) {
        snprintf(out, cap, "null");
        return;
    }
    char prompt[2 * sizeof r->prompt];
    mcpm_json_escape(r->prompt, prompt, sizeof prompt);
    snprintf(out, cap,
             "{\"pass\": %s, \"width\": %d, \"height\": %d, \"slices\": %d, \"prompt_tokens\": %d, \"prompt\": \"%s\", "
             "\"steps\": %d, \"argmax_equal\": %d, \"near_ties\": %d, \"max_logit_diff\": %.6g, \"tolerance\": %.6g, "
             "\"encode_ms\": %.3f, \"ms\": %.3f}",
             !r->v.failed && !strcmp(r->prompt, "pass") ? "true" : "false", g->width, g->height, r->slices,
             g->image.n_prompt, prompt, g->image.steps, r->v.argmax_equal, r->v.near_ties,
             isinf(r->v.max_diff) ? 1e30 : r->v.max_diff, g->image.tolerance, r->encode_ms, r->ms);
}

/* What image_json writes at most: keys and numbers (< 512 bytes) and the escaped prompt verdict. */
#define IMAGE_JSON_MAX (512 + 2 * 160)

int mcpm_self_test_json(mcpm_session* session, char* out, size_t len) {
    if (!session) return -1;
    mcpm_model* m = mcpm_session_model(session);
    if (!out || len == 0) return mcpm_seterr(m->err, "mcpm_self_test_json: no output buffer");
    golden g = {0};
    verdict v = {0};
    image_result ir = {0};
    float* logits = malloc(sizeof(float) * (size_t)m->vocab); /* float[vocab] */
    int32_t* ids = NULL;
    int rc = -1;
    if (!logits) { mcpm_seterr(m->err, "out of memory"); goto done; }
    if (parse_golden(m, mcpm_session_config(session), &g)) goto done;
    char tokenizer[160];
    int n = mcpm_session_encode_bos(session, g.prompt, strlen(g.prompt), &ids);
    check_ids(ids, n, &g.text, "the golden prompt", tokenizer, sizeof tokenizer);
    mcpm_session_reset(session);
    double t0 = mcpm_now_ms();
    int ran = mcpm_prefill(m, g.text.prompt, g.text.n_prompt, logits) || run_steps(m, &g.text, logits, &v) ? -1 : 0;
    double ms = mcpm_now_ms() - t0;
    mcpm_session_reset(session);
    if (!ran && g.has_image) {
        ran = run_image(session, &g, logits, &ir);
        mcpm_session_reset(session);
    }
    if (ran) goto done; /* a cancel or a runtime error: m->err says which */
    const char* where = m->variant[0] ? m->variant : "default";
    const char* device = mcpm_model_device(m);
    char reason[1024], escaped[2 * sizeof reason], tok_escaped[2 * sizeof tokenizer], ref[512], image[IMAGE_JSON_MAX];
    if (v.failed)
        snprintf(reason, sizeof reason, "kernel set %s on the %s: %s (%d of %d steps off)", where, device, v.reason,
                 v.failed, g.text.steps);
    else if (strcmp(tokenizer, "pass"))
        snprintf(reason, sizeof reason, "tokenizer: %s", tokenizer + 6);
    else if (g.has_image && strcmp(ir.prompt, "pass"))
        snprintf(reason, sizeof reason, "image turn: %s", ir.prompt + 6);
    else if (ir.v.failed)
        snprintf(reason, sizeof reason, "kernel set %s on the %s, image turn (%d slices): %s (%d of %d steps off)",
                 where, device, ir.slices, ir.v.reason, ir.v.failed, g.image.steps);
    else
        reason[0] = '\0';
    mcpm_json_escape(reason, escaped, sizeof escaped);
    mcpm_json_escape(tokenizer, tok_escaped, sizeof tok_escaped);
    mcpm_json_escape(g.reference, ref, sizeof ref);
    image_json(&g, &ir, image, sizeof image);
    n = snprintf(out, len,
                 "{\"pass\": %s, \"reason\": \"%s\", \"kernel_variant\": \"%s\", \"device\": \"%s\", "
                 "\"prompt_tokens\": %d, \"steps\": %d, \"argmax_equal\": %d, \"near_ties\": %d, "
                 "\"max_logit_diff\": %.6g, \"tolerance\": %.6g, \"tokenizer\": \"%s\", \"ms\": %.3f, "
                 "\"reference\": \"%s\", \"image\": %s}",
                 reason[0] ? "false" : "true", escaped, where, device, g.text.n_prompt, g.text.steps, v.argmax_equal,
                 v.near_ties, isinf(v.max_diff) ? 1e30 : v.max_diff, g.text.tolerance, tok_escaped, ms, ref, image);
    if (n < 0 || (size_t)n >= len) {
        mcpm_seterr(m->err, "mcpm_self_test_json: buffer of %zu bytes too small, need %d", len, n + 1);
        goto done;
    }
    rc = 0;
done:
    record_free(&g.text);
    record_free(&g.image);
    free(ids);
    free(logits);
    return rc;
}

/* What mcpm_self_test_json writes at most: keys and numbers (< 512 bytes), the escaped reason, tokenizer verdict and
 * reference, the kernel variant, the device and the image part. */
_Static_assert(512 + 2 * 1024 + 2 * 160 + 512 + 32 + 8 + IMAGE_JSON_MAX < MCPM_SELF_TEST_JSON_MAX,
               "MCPM_SELF_TEST_JSON_MAX too small");
