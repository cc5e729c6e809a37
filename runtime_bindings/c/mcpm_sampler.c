/* mcpm sampler: repetition penalty, temperature, top-k, top-p, min-p, then a seeded draw (splitmix64).
 * Conventions follow llama.cpp: the penalty divides positive logits and multiplies negative ones, once per distinct
 * token of the window; top-p keeps the smallest prefix (by probability, ties by lower id) reaching top_p; min-p
 * keeps p >= min_p * p_max. Probabilities are computed in double. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mcpm_internal.h"

mcpm_sampling mcpm_default_sampling(void) {
    mcpm_sampling s = {0.0f, 0, 1.0f, 0.0f, 1.0f, 64, 0};
    return s;
}

static int serr(char* err, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
static int serr(char* err, const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, MCPM_ERR_LEN, fmt, ap);
    va_end(ap);
    return -1;
}

int mcpm_sampling_check(const mcpm_sampling* s, char* err) {
    if (!isfinite(s->temperature)) return serr(err, "sampling: temperature must be finite");
    if (s->top_k < 0) return serr(err, "sampling: top_k %d must be >= 0 (0 = off)", s->top_k);
    if (!(s->top_p > 0.0f && s->top_p <= 1.0f)) return serr(err, "sampling: top_p %g must be in (0, 1]", (double)s->top_p);
    if (!(s->min_p >= 0.0f && s->min_p <= 1.0f)) return serr(err, "sampling: min_p %g must be in [0, 1]", (double)s->min_p);
    if (!(s->repetition_penalty > 0.0f) || !isfinite(s->repetition_penalty))
        return serr(err, "sampling: repetition_penalty %g must be > 0 (1 = off)", (double)s->repetition_penalty);
    if (s->repeat_last_n < -1) return serr(err, "sampling: repeat_last_n %d must be >= -1 (-1 = all)", s->repeat_last_n);
    return 0;
}

int mcpm_sampler_init(mcpm_sampler* sp, int vocab) {
    memset(sp, 0, sizeof *sp);
    sp->cand = malloc(sizeof(mcpm_candidate) * (size_t)vocab); /* mcpm_candidate[vocab] */
    sp->seen = calloc((size_t)vocab, 1);                          /* uint8[vocab] */
    if (!sp->cand || !sp->seen) { mcpm_sampler_free(sp); return -1; }
    sp->vocab = vocab;
    return 0;
}

void mcpm_sampler_free(mcpm_sampler* sp) {
    free(sp->cand);
    free(sp->seen);
    sp->cand = NULL;
    sp->seen = NULL;
    sp->vocab = 0;
}

void mcpm_sampler_seed(mcpm_sampler* sp, uint64_t seed) { sp->rng = seed; }

static uint64_t splitmix64(uint64_t* state) {
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static double uniform01(uint64_t* state) { return (double)(splitmix64(state) >> 11) * 0x1.0p-53; } /* [0, 1) */

static int by_logit_desc(const void* a, const void* b) {
    const mcpm_candidate *x = a, *y = b;
    if (x->logit != y->logit) return x->logit > y->logit ? -1 : 1;
    return (x->id > y->id) - (x->id < y->id);
}

/* softmax over cand[0..n) into .p (double) */
static void softmax(mcpm_candidate* c, int n) {
    float mx = c[0].logit;
    for (int i = 1; i < n; i++) if (c[i].logit > mx) mx = c[i].logit;
    double sum = 0.0;
    for (int i = 0; i < n; i++) sum += (c[i].p = exp((double)c[i].logit - (double)mx));
    for (int i = 0; i < n; i++) c[i].p /= sum;
}

/* Leaves the surviving candidates with their probabilities in sp->cand[0..n); returns n >= 1. */
static int filter(mcpm_sampler* sp, const float* logits, const int32_t* hist, int n_hist, const mcpm_sampling* s) {
    mcpm_candidate* c = sp->cand; /* [vocab] */
    int n = sp->vocab;
    for (int i = 0; i < n; i++) { c[i].logit = logits[i]; c[i].id = i; c[i].p = 0.0; }
    if (s->repetition_penalty != 1.0f && s->repeat_last_n != 0 && hist && n_hist > 0) {
        int start = s->repeat_last_n < 0 || s->repeat_last_n >= n_hist ? 0 : n_hist - s->repeat_last_n;
        for (int i = start; i < n_hist; i++) {
            int32_t t = hist[i];
            if (t < 0 || t >= n || sp->seen[t]) continue;
            sp->seen[t] = 1;
            c[t].logit = c[t].logit > 0.0f ? c[t].logit / s->repetition_penalty : c[t].logit * s->repetition_penalty;
        }
        for (int i = start; i < n_hist; i++) if (hist[i] >= 0 && hist[i] < n) sp->seen[hist[i]] = 0;
    }
    if (sp->allowed) { /* ids the tokenizer cannot decode never compete (ascending ids kept: same tie rules) */
        int k = 0;
        for (int i = 0; i < n; i++) if (sp->allowed[i]) c[k++] = c[i];
        n = k; /* >= 1: mcpm_set_sampleable refuses an empty set */
    }
    if (!(s->temperature > 0.0f)) { /* greedy: the first maximum */
        int best = 0;
        for (int i = 1; i < n; i++) if (c[i].logit > c[best].logit) best = i;
        c[0] = c[best];
        c[0].p = 1.0;
        return 1;
    }
    if (s->temperature != 1.0f)
        for (int i = 0; i < n; i++) c[i].logit /= s->temperature;
    int sorted = 0;
    if (s->top_k > 0 && s->top_k < n) {
        qsort(c, (size_t)n, sizeof *c, by_logit_desc);
        sorted = 1;
        n = s->top_k;
    }
    if (s->top_p < 1.0f) {
        if (!sorted) { qsort(c, (size_t)n, sizeof *c, by_logit_desc); sorted = 1; }
        softmax(c, n);
        double cum = 0.0;
        int keep = n;
        for (int i = 0; i < n; i++) {
            cum += c[i].p;
            if (cum >= (double)s->top_p) { keep = i + 1; break; }
        }
        n = keep;
    }
    if (s->min_p > 0.0f) {
        float mx = c[0].logit;
        for (int i = 1; i < n; i++) if (c[i].logit > mx) mx = c[i].logit;
        int keep = 0;
        for (int i = 0; i < n; i++)
            if (exp((double)c[i].logit - (double)mx) >= (double)s->min_p) c[keep++] = c[i];
        n = keep; /* the maximum always stays */
    }
    softmax(c, n);
    return n;
}

int32_t mcpm_sampler_sample(mcpm_sampler* sp, const float* logits, const int32_t* history, int n_history,
                            const mcpm_sampling* s) {
    int n = filter(sp, logits, history, n_history, s);
    if (n == 1) return sp->cand[0].id;
    double u = uniform01(&sp->rng), cum = 0.0;
    for (int i = 0; i < n; i++) {
        cum += sp->cand[i].p;
        if (u < cum) return sp->cand[i].id;
    }
    return sp->cand[n - 1].id;
}

int mcpm_sampler_probs(const float* logits, int n_vocab, const int32_t* history, int n_history,
                       const mcpm_sampling* s, float* probs_out) {
    mcpm_backend_leave(); /* errors go to this thread's buffer: mcpm_last_error(NULL) */
    char* err = mcpm_thread_error_buffer();
    err[0] = '\0';
    mcpm_sampling d = mcpm_default_sampling();
    if (!s) s = &d;
    if (!logits || !probs_out || n_vocab < 1 || n_history < 0 || (n_history > 0 && !history))
        return serr(err, "mcpm_sampler_probs: bad arguments");
    if (mcpm_sampling_check(s, err)) return -1;
    mcpm_sampler sp;
    if (mcpm_sampler_init(&sp, n_vocab)) return serr(err, "out of memory");
    int n = filter(&sp, logits, history, n_history, s);
    memset(probs_out, 0, sizeof(float) * (size_t)n_vocab);
    for (int i = 0; i < n; i++) probs_out[sp.cand[i].id] = (float)sp.cand[i].p;
    mcpm_sampler_free(&sp);
    return 0;
}
