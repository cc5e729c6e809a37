/* Generation over the executor: mcpm_generate (prefill the prompt, then sample and decode token by token, with the
 * sampler of mcpm_sampler.c), the ids the sampler may draw, and the runtime's stats as JSON. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "mcpm_model.h"

int mcpm_set_sampleable(mcpm_model* m, const uint8_t* allowed, int n) {
    if (!m) return -1;
    m->err[0] = '\0';
    if (!allowed) {
        free(m->sampleable);
        m->sampleable = NULL;
        return 0;
    }
    if (n != m->vocab) return mcpm_seterr(m->err, "mcpm_set_sampleable: %d flags for a vocabulary of %d", n, m->vocab);
    int any = 0;
    for (int i = 0; i < n && !any; i++) any = allowed[i] != 0;
    if (!any) return mcpm_seterr(m->err, "mcpm_set_sampleable: no id is allowed");
    if (!m->sampleable && !(m->sampleable = malloc((size_t)n))) return mcpm_seterr(m->err, "out of memory");
    for (int i = 0; i < n; i++) m->sampleable[i] = allowed[i] != 0;
    return 0;
}

int mcpm_generate(mcpm_model* m, const int32_t* prompt, int n_prompt, int max_new_tokens, const mcpm_sampling* s,
                  const int32_t* stop_ids, int n_stop, mcpm_token_callback cb, void* user) {
    return mcpm_generate_image(m, prompt, n_prompt, NULL, max_new_tokens, s, stop_ids, n_stop, cb, user);
}

/* Everything mcpm_generate_image checks before any work (one-line reason in m->err). */
static int check_request(mcpm_model* m, const int32_t* prompt, int n_prompt, const mcpm_image_prompt* img,
                         int max_new_tokens, const mcpm_sampling* s, const int32_t* stop_ids, int n_stop) {
    if (n_prompt < 1 || !prompt) return mcpm_seterr(m->err, "generate needs a prompt of at least one token");
    if (m->pos + (int64_t)n_prompt >= m->max_ctx) {
        if (m->pos)
            return mcpm_seterr(m->err, "prompt of %d tokens does not fit the context of %d tokens (%d already in use)",
                               n_prompt, m->max_ctx, m->pos);
        return mcpm_seterr(m->err, "prompt of %d tokens does not fit the context of %d tokens", n_prompt, m->max_ctx);
    }
    if (max_new_tokens < 0) return mcpm_seterr(m->err, "max_new_tokens %d must be >= 0", max_new_tokens);
    if (n_stop < 0 || (n_stop > 0 && !stop_ids)) return mcpm_seterr(m->err, "generate: bad stop list (%d ids)", n_stop);
    if (mcpm_sampling_check(s, m->err) || mcpm_check_tokens(m, prompt, n_prompt)) return -1;
    if (!img) return 0;
    if (mcpm_need_vision(m, "generate with images")) return -1;
    int marked = 0;
    for (int i = 0; img->image && i < n_prompt; i++) marked += img->image[i] != 0;
    if (!img->image || !img->feats || marked != img->n_rows)
        return mcpm_seterr(m->err, "generate: %d image positions in the prompt for %d image feature rows", marked,
                           img->n_rows);
    return 0;
}

/* The sampler's scratch, the history int32[max_ctx + 1] and the logits float[vocab], on the first generation. */
static int ensure_scratch(mcpm_model* m) {
    if (m->sampler.cand) return 0;
    m->history = malloc(sizeof(int32_t) * ((size_t)m->max_ctx + 1));
    m->logits = malloc(sizeof(float) * (size_t)m->vocab);
    if (m->history && m->logits && !mcpm_sampler_init(&m->sampler, m->vocab)) return 0;
    free(m->history);
    free(m->logits);
    m->history = NULL;
    m->logits = NULL;
    return mcpm_seterr(m->err, "out of memory");
}

int mcpm_generate_image(mcpm_model* m, const int32_t* prompt, int n_prompt, const mcpm_image_prompt* img,
                        int max_new_tokens, const mcpm_sampling* s, const int32_t* stop_ids, int n_stop,
                        mcpm_token_callback cb, void* user) {
    if (!m) return -1;
    m->err[0] = '\0';
    mcpm_sampling greedy = mcpm_default_sampling();
    if (!s) s = &greedy;
    if (check_request(m, prompt, n_prompt, img, max_new_tokens, s, stop_ids, n_stop) || ensure_scratch(m)) return -1;
    mcpm_sampler_seed(&m->sampler, s->seed);
    m->sampler.allowed = m->sampleable;
    m->prefill_tokens = m->decode_tokens = 0;
    m->prefill_ms = m->decode_ms = m->ttft_ms = 0.0;
    if (m->gpu) mcpm_gpu_reset_times(m->gpu);
    int room = m->max_ctx - m->pos - n_prompt; /* >= 1 */
    if (max_new_tokens > room) max_new_tokens = room;
    memcpy(m->history, prompt, sizeof(int32_t) * (size_t)n_prompt);
    int n_hist = n_prompt;

    double t0 = mcpm_now_ms();
    if (img ? mcpm_prefill_image(m, prompt, n_prompt, img, m->logits) : mcpm_prefill(m, prompt, n_prompt, m->logits))
        return -1;
    m->prefill_ms = mcpm_now_ms() - t0;
    m->prefill_tokens = n_prompt;
    int n_gen = 0;
    while (n_gen < max_new_tokens) {
        double t1 = mcpm_now_ms();
        if (n_gen > 0 && mcpm_model_aborted(m)) break; /* Stop: the tokens made so far are the reply */
        if (n_gen > 0 && mcpm_decode(m, m->history[n_hist - 1], m->logits)) return -1;
        int32_t tok = mcpm_sampler_sample(&m->sampler, m->logits, m->history, n_hist, s);
        double t2 = mcpm_now_ms();
        if (n_gen == 0) m->ttft_ms = t2 - t0;
        else { m->decode_ms += t2 - t1; m->decode_tokens++; }
        m->history[n_hist++] = tok;
        n_gen++;
        if (cb && cb(tok, user)) break;
        int stop = 0;
        for (int i = 0; i < n_stop && !stop; i++) stop = stop_ids[i] == tok;
        if (stop) break;
    }
    return n_gen;
}

/* ---------------------------------------------------------------- stats */

void mcpm_json_escape(const char* s, char* out, size_t cap) {
    size_t k = 0;
    for (const char* c = s; *c && k + 7 < cap; c++) {
        if (*c == '"' || *c == '\\') { out[k++] = '\\'; out[k++] = *c; }
        else if ((unsigned char)*c < 0x20) k += (size_t)snprintf(out + k, cap - k, "\\u%04x", (unsigned)*c);
        else out[k++] = *c;
    }
    out[k] = '\0';
}

/* What mcpm_stats_json writes at most: the keys and numbers (< 1024 bytes), the notice and the GPU device name as
 * escaped JSON string bodies, the program origin and the kernel variant. */
_Static_assert(1024 + 2 * MCPM_ERR_LEN + 2 * 256 + 16 + 32 < MCPM_STATS_JSON_MAX, "MCPM_STATS_JSON_MAX too small");

int mcpm_stats_json(mcpm_model* m, char* out, size_t len) {
    if (!m) return -1;
    if (!out || len == 0) return mcpm_seterr(m->err, "mcpm_stats_json: no output buffer");
    char notice[2 * MCPM_ERR_LEN]; /* m->notice as a JSON string body */
    mcpm_json_escape(m->notice, notice, sizeof notice);
    char gpu_name[2 * 256]; /* the OpenCL device name (char[256]) as a JSON string body */
    mcpm_json_escape(m->gpu ? mcpm_gpu_device_name(m->gpu) : "", gpu_name, sizeof gpu_name);
    struct rusage ru;
    long peak_kb = getrusage(RUSAGE_SELF, &ru) == 0 ? ru.ru_maxrss : 0; /* Linux/Android: kilobytes */
#if defined(__APPLE__)
    peak_kb /= 1024; /* Darwin reports ru_maxrss in bytes */
#endif
    double pre = m->prefill_ms > 0 ? m->prefill_tokens / (m->prefill_ms * 1e-3) : 0.0;
    double dec = m->decode_ms > 0 ? m->decode_tokens / (m->decode_ms * 1e-3) : 0.0;
    int n = snprintf(out, len,
                     "{\"load_ms\": %.3f, \"prefill_tokens\": %d, \"prefill_tok_s\": %.3f, \"decode_tokens\": %d, "
                     "\"decode_tok_s\": %.3f, \"ttft_ms\": %.3f, \"peak_rss_kb\": %ld, \"threads\": %d, "
                     "\"kernel_variant\": \"%s\", \"device\": \"%s\", \"gpu_device\": \"%s\", \"gpu_program\": \"%s\", "
                     "\"notice\": \"%s\", \"image_encode_ms\": %.3f, \"image_slices\": %d, \"image_patches\": %d, "
                     "\"kv_dtype\": \"%s\", \"kv_bytes\": %lld, \"kv_bytes_per_token\": %lld}",
                     m->load_ms, m->prefill_tokens, pre, m->decode_tokens, dec, m->ttft_ms, peak_kb,
                     m->pool_ready ? m->pool.threads : 0, m->variant[0] ? m->variant : "default",
                     m->gpu ? "gpu" : "cpu", gpu_name,
                     m->gpu ? mcpm_gpu_program_origin(m->gpu) : "", notice, m->image_encode_ms,
                     m->image_slices, m->image_patches, MCPM_DTYPES[m->cache_dtype].name,
                     (long long)(2 * (size_t)m->num_layers * m->cache_bytes),
                     (long long)(2 * (size_t)m->num_layers * (m->cache_bytes / (size_t)m->max_ctx)));
    if (n < 0 || (size_t)n >= len)
        return mcpm_seterr(m->err, "mcpm_stats_json: buffer of %zu bytes too small, need %d", len, n + 1);
    return 0;
}

int mcpm_kernel_times_json(mcpm_model* m, char* out, size_t len) {
    if (!m) return -1;
    if (!out || len < 3) return mcpm_seterr(m->err, "mcpm_kernel_times_json: no output buffer");
    if (!m->gpu) { snprintf(out, len, "[]"); return 0; }
    if (mcpm_gpu_times_json(m->gpu, out, len))
        return mcpm_seterr(m->err, "mcpm_kernel_times_json: buffer of %zu bytes too small", len);
    return 0;
}
