/* mcpm C runtime, the executor: load a bundle (weights.bin by mcpm_weights.c, plan.json by mcpm_plan.c), allocate
 * the buffers the kernels run on (KV caches, storages, inputs), bind the kernel arguments once, and run the plan's
 * entries: prefill and decode, and the MiniCPM-V entries embed, prefill_embeds and vision. Does what
 * export/compiler/plan_runner.py (PlanModel) does. Generation and stats: mcpm_generate.c. */
#define _GNU_SOURCE /* MAP_ANONYMOUS, clock_gettime under -std=c11 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "mcpm_model.h"
#include "mcpm_vision.h"

int mcpm_seterr(char* err, const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, MCPM_ERR_LEN, fmt, ap);
    va_end(ap);
    return -1;
}

const char* mcpm_model_bundle_dir(const struct mcpm_model* model) { return model->bundle_dir; }

char* mcpm_model_error_buffer(struct mcpm_model* model) { return model->err; }

double mcpm_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

/* ---------------------------------------------------------------- buffers */

static void* aligned_zeroed(size_t bytes) {
    size_t size = (bytes + MCPM_ALIGN - 1) / MCPM_ALIGN * MCPM_ALIGN;
    void* p = mcpm_aligned_alloc(size ? size : MCPM_ALIGN);
    if (p) memset(p, 0, size ? size : MCPM_ALIGN);
    return p;
}

/* The KV caches: one anonymous mapping (zero pages that cost no memory until a row is written), each cache
 * MCPM_ALIGN-aligned inside it. None on the GPU (the device holds them). */
static int alloc_caches(mcpm_model* m) {
    size_t stride = (m->cache_bytes + MCPM_ALIGN - 1) / MCPM_ALIGN * MCPM_ALIGN, n = 2 * (size_t)m->num_layers;
    if (!(m->caches = calloc(n + 1, sizeof(unsigned char*)))) return mcpm_seterr(m->err, "out of memory");
    if (m->gpu) return 0;
    if (stride && n > SIZE_MAX / stride) return mcpm_seterr(m->err, "KV cache size overflows");
    m->cache_map_size = stride * n > 0 ? stride * n : MCPM_ALIGN;
    void* p = mmap(NULL, m->cache_map_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        m->cache_map_size = 0;
        return mcpm_seterr(m->err, "out of memory: the KV cache needs %zu bytes (export with a shorter "
                           "--context-length)", stride * n);
    }
    m->cache_map = p;
    for (size_t i = 0; i < n; i++) m->caches[i] = (unsigned char*)p + i * stride;
    return 0;
}

/* Entry e's storages uint8[storage_size[i]] and inputs float32/int32 [n_max, width], zeroed and 64-byte aligned. */
static int alloc_entry(mcpm_model* m, plan_entry* e) {
    if (!(e->storage = calloc((size_t)e->n_storages + 1, sizeof(unsigned char*)))) return mcpm_seterr(m->err, "out of memory");
    for (int i = 0; i < e->n_storages; i++)
        if (!(e->storage[i] = aligned_zeroed((size_t)e->storage_size[i]))) return mcpm_seterr(m->err, "out of memory");
    for (int k = 0; k < N_INPUTS; k++)
        if (mcpm_input_allowed(e->type, k) &&
            !(e->input[k] = aligned_zeroed(4 * (size_t)e->n_max * (size_t)mcpm_input_width(m, k))))
            return mcpm_seterr(m->err, "out of memory");
    return 0;
}

/* Fills the packed argument arrays once: data pointers never change, only n-dependent dims and scalars do. */
static void bind_args(mcpm_model* m, plan_entry* e) {
    for (int c = 0; c < e->n_calls; c++) {
        const plan_call* call = &e->calls[c];
        for (int i = call->first_arg; i < call->first_arg + call->nargs; i++) {
            const plan_arg* a = &m->args[i];
            mcpm_ffi_any* any = &m->any[i];
            if (a->kind == ARG_SCALAR) { any->type_index = MCPM_FFI_INT; continue; }
            mcpm_dltensor* t = &m->dl[i];
            memset(t, 0, sizeof *t);
            switch (a->kind) {
            case ARG_INPUT: t->data = e->input[a->index]; break;
            case ARG_WEIGHT: t->data = m->weight_data[a->index]; break;
            case ARG_CACHE: t->data = m->caches[2 * a->index + a->which_v]; break;
            default: t->data = e->storage[a->index] + a->offset; break;
            }
            t->device.device_type = 1; /* kDLCPU */
            t->ndim = a->ndim;
            t->dtype = MCPM_DTYPES[a->dtype].dl;
            t->shape = &m->shapes[(size_t)i * MCPM_MAX_NDIM];
            for (int d = 0; d < a->ndim; d++) t->shape[d] = a->b[d];
            any->type_index = MCPM_FFI_DLTENSOR_PTR;
            any->u.v_ptr = t;
        }
    }
}

/* ---------------------------------------------------------------- load and free */

mcpm_params mcpm_default_params(void) {
    mcpm_params p = {0, 1 << 20, 0, NULL, NULL, 0, NULL};
    return p;
}

void mcpm_model_free(mcpm_model* m) {
    if (!m) return;
    mcpm_gpu_free(m->gpu);
    if (m->pool_ready) mcpm_pool_destroy(&m->pool);
    for (int k = 0; k < N_ENTRIES; k++) {
        plan_entry* e = mcpm_entry_at(m, k);
        for (int i = 0; e->storage && i < e->n_storages; i++) free(e->storage[i]);
        free(e->storage);
        free(e->storage_size);
        free(e->calls);
        for (int i = 0; i < N_INPUTS; i++) free(e->input[i]);
    }
    if (m->cache_map) munmap(m->cache_map, m->cache_map_size);
    free(m->caches);
    for (int i = 0; m->kernel_names && i < m->n_kernels; i++) free(m->kernel_names[i]);
    free(m->kernel_names);
    free(m->kernel_fns);
    free(m->weight_data);
    free(m->args);
    free(m->any);
    free(m->dl);
    free(m->shapes);
    if (m->map) munmap(m->map, m->map_size);
    mcpm_sampler_free(&m->sampler);
    free(m->sampleable);
    free(m->history);
    free(m->logits);
    free(m->bundle_dir);
    free(m);
}

/* The params a load keeps while it runs (m->want_*), checked. */
static int take_params(mcpm_model* m, const mcpm_params* p, const char* bundle_dir) {
    size_t dir_len = strlen(bundle_dir);
    if (!(m->bundle_dir = malloc(dir_len + 1))) return mcpm_seterr(m->err, "out of memory");
    memcpy(m->bundle_dir, bundle_dir, dir_len + 1);
    m->want_variant = p->kernel_variant && p->kernel_variant[0] ? p->kernel_variant : NULL;
    m->want_device = p->device && p->device[0] ? p->device : "cpu";
    m->want_profile = p->profile;
    m->want_cache_dir = p->cache_dir;
    if (strcmp(m->want_device, "cpu") && strcmp(m->want_device, "gpu") && strcmp(m->want_device, "auto"))
        return mcpm_seterr(m->err, "unknown device '%.64s' (cpu, gpu or auto)", m->want_device);
    if (p->threads > MCPM_MAX_THREADS || p->threads < 0)
        return mcpm_seterr(m->err, "threads %d is out of range (0 = automatic, at most %d: use the number of cores)",
                           p->threads, MCPM_MAX_THREADS);
    return 0;
}

/* weights.bin, plan.json, buffers, bound args, the thread pool. */
static int load(mcpm_model* m, const char* bundle_dir, const mcpm_params* p) {
    char wpath[4096], ppath[4096];
    snprintf(wpath, sizeof wpath, "%s/weights.bin", bundle_dir);
    snprintf(ppath, sizeof ppath, "%s/plan.json", bundle_dir);
    mcpm_wentry* wes = NULL;
    uint32_t wcount = 0;
    const unsigned char* wdata = NULL;
    int rc = mcpm_weights_open(m, wpath, p->verify, &wes, &wcount, &wdata);
    if (!rc) rc = mcpm_plan_load(m, bundle_dir, ppath, wes, wcount, wdata);
    free(wes);
    if (!rc) rc = alloc_caches(m);
    for (int k = 0; k < N_ENTRIES && !rc; k++)
        if (mcpm_entry_at(m, k)->present) rc = alloc_entry(m, mcpm_entry_at(m, k));
    if (rc) return -1;
    for (int k = 0; k < N_ENTRIES; k++)
        if (mcpm_entry_at(m, k)->present) bind_args(m, mcpm_entry_at(m, k));
    int threads = p->threads > 0 ? p->threads : mcpm_default_threads();
    size_t ws = p->workspace_bytes ? p->workspace_bytes : (size_t)1 << 20;
    if (mcpm_pool_init(&m->pool, m, threads < 1 ? 1 : threads, ws, m->err, MCPM_ERR_LEN)) return -1;
    m->pool_ready = 1;
    return 0;
}

mcpm_model* mcpm_model_load(const char* bundle_dir, const mcpm_params* p) {
    double t_load = mcpm_now_ms();
    mcpm_params params = p ? *p : mcpm_default_params();
    char* load_err = mcpm_thread_error_buffer();
    load_err[0] = '\0';
    if (!bundle_dir) { mcpm_seterr(load_err, "mcpm_model_load: bundle_dir is NULL"); return NULL; }
    mcpm_model* m = calloc(1, sizeof *m);
    if (!m) { mcpm_seterr(load_err, "out of memory"); return NULL; }
    if (take_params(m, &params, bundle_dir) || load(m, bundle_dir, &params)) {
        memcpy(load_err, m->err, MCPM_ERR_LEN);
        mcpm_model_free(m);
        return NULL;
    }
    m->want_variant = NULL;
    m->want_device = NULL;
    m->want_cache_dir = NULL;
    m->load_ms = mcpm_now_ms() - t_load;
    return m;
}

/* ---------------------------------------------------------------- running entries */

/* Runs the calls of entry e for n (validated, inputs already in e->input); does not move the position. */
static int run_calls(mcpm_model* m, plan_entry* e, int n) {
    mcpm_backend_enter(m, &m->pool);
    int rc = 0;
    for (int c = 0; c < e->n_calls && !rc; c++) {
        const plan_call* call = &e->calls[c];
        for (int i = call->first_arg; i < call->first_arg + call->nargs; i++) {
            const plan_arg* a = &m->args[i];
            if (a->kind == ARG_SCALAR) m->any[i].u.v_int64 = a->scalar_pos ? m->pos : n;
            else
                for (int d = 0; d < a->ndim; d++)
                    if (a->a[d]) m->dl[i].shape[d] = a->a[d] * n + a->b[d];
        }
        mcpm_ffi_any ret;
        memset(&ret, 0, sizeof ret);
        if (m->kernel_fns[call->kernel](NULL, &m->any[call->first_arg], call->nargs, &ret)) {
            char msg[MCPM_ERR_LEN];
            memcpy(msg, m->err, MCPM_ERR_LEN);
            msg[MCPM_ERR_LEN - 1] = '\0';
            mcpm_seterr(m->err, "kernel %s (%s call %d) failed: %s", m->kernel_names[call->kernel], e->name, c,
                        msg[0] ? msg : "no message");
            rc = -1;
        }
    }
    mcpm_backend_leave();
    return rc;
}

/* The output of entry e for n: float32, mcpm_arg_bytes(output, n) bytes. */
static const float* entry_output(const plan_entry* e, int n, int64_t* bytes) {
    const plan_arg* o = &e->output;
    *bytes = mcpm_arg_bytes(o, n);
    return (const float*)(const void*)(e->storage[o->index] + o->offset);
}

/* Copies the last position's logits of a logits entry run for n to out (float[vocab]; may be NULL). */
static void copy_logits(const mcpm_model* m, const plan_entry* e, int n, float* out) {
    if (!out) return;
    int64_t bytes;
    const float* o = entry_output(e, n, &bytes); /* float32[..., vocab]: the last vocab floats are the last position */
    memcpy(out, (const unsigned char*)o + bytes - 4 * (int64_t)m->vocab, 4 * (size_t)m->vocab);
}

/* Runs prefill or decode for n tokens already validated; copies the last position's logits to out (float[vocab]). */
static int run_entry(mcpm_model* m, plan_entry* e, const int32_t* tokens, int n, float* out) {
    m->err[0] = '\0';
    if (m->gpu) { /* float32[..., vocab]: the last vocab floats are the last position */
        const plan_arg* o = &e->output;
        int64_t last = o->offset + mcpm_arg_bytes(o, n) - 4 * (int64_t)m->vocab;
        if (mcpm_gpu_run(m->gpu, e == &m->decode, tokens, n, m->pos, out, last, m->vocab, m->err, MCPM_ERR_LEN))
            return -1;
        m->pos += n;
        return 0;
    }
    memcpy(e->input[IN_TOKENS], tokens, sizeof(int32_t) * (size_t)n);
    if (run_calls(m, e, n)) return -1;
    copy_logits(m, e, n, out);
    m->pos += n;
    return 0;
}

int mcpm_check_tokens(mcpm_model* m, const int32_t* tokens, int n) {
    if (m->pos + (int64_t)n > m->max_ctx)
        return mcpm_seterr(m->err, "context full: %d + %d tokens > max_ctx %d", m->pos, n, m->max_ctx);
    for (int i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= m->vocab)
            return mcpm_seterr(m->err, "token id %d at %d out of range 0..%d", tokens[i], i, m->vocab - 1);
    return 0;
}

void mcpm_set_abort_callback(mcpm_model* m, mcpm_abort_callback abort, void* user) {
    if (!m) return;
    m->abort_cb = abort;
    m->abort_user = user;
}

int mcpm_model_aborted(mcpm_model* m) { return m->abort_cb && m->abort_cb(m->abort_user) ? 1 : 0; }

/* The cancel point before a prefill chunk: on a stop, the prompt fed since position pos0 is forgotten. */
static int prefill_cancelled(mcpm_model* m, int pos0) {
    if (!mcpm_model_aborted(m)) return 0;
    m->pos = pos0;
    mcpm_seterr(m->err, "cancelled: the prompt was not fed (stopped during the prefill)");
    return 1;
}

int mcpm_prefill(mcpm_model* m, const int32_t* tokens, int n, float* logits_out) {
    if (!m) return -1;
    if (n < 1 || !tokens) return mcpm_seterr(m->err, "prefill needs at least one token");
    if (mcpm_check_tokens(m, tokens, n)) return -1;
    int pos0 = m->pos;
    for (int start = 0; start < n; start += m->chunk) {
        int len = n - start < m->chunk ? n - start : m->chunk;
        if (prefill_cancelled(m, pos0)) return -1;
        if (run_entry(m, &m->prefill, tokens + start, len, start + len == n ? logits_out : NULL)) return -1;
    }
    return 0;
}

int mcpm_decode(mcpm_model* m, int32_t token, float* logits_out) {
    if (!m) return -1;
    if (mcpm_check_tokens(m, &token, 1)) return -1;
    return run_entry(m, &m->decode, &token, 1, logits_out);
}

/* ---------------------------------------------------------------- MiniCPM-V entries (CPU only) */

int mcpm_model_has_vision(const mcpm_model* m) { return m && m->vision.present ? 1 : 0; }

const mcpm_vision_info* mcpm_model_vision_info(const mcpm_model* m) { return m && m->vision.present ? &m->vinfo : NULL; }

int mcpm_need_vision(mcpm_model* m, const char* what) {
    if (!m->vision.present)
        return mcpm_seterr(m->err, "%s: this bundle has no vision encoder (plan entries embed, prefill_embeds, "
                           "vision): export a MiniCPM-V model", what);
    return 0;
}

int mcpm_model_embed(mcpm_model* m, const int32_t* tokens, int n, float* out) {
    if (!m) return -1;
    m->err[0] = '\0';
    if (mcpm_need_vision(m, "embed")) return -1;
    if (!tokens || !out || n < 1 || n > m->embed.n_max)
        return mcpm_seterr(m->err, "embed: %d tokens (1..%d)", n, m->embed.n_max);
    for (int i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= m->vocab)
            return mcpm_seterr(m->err, "token id %d at %d out of range 0..%d", tokens[i], i, m->vocab - 1);
    memcpy(m->embed.input[IN_TOKENS], tokens, sizeof(int32_t) * (size_t)n);
    if (run_calls(m, &m->embed, n)) return -1;
    int64_t bytes;
    const float* o = entry_output(&m->embed, n, &bytes); /* float32[n, D] */
    memcpy(out, o, (size_t)bytes);
    return 0;
}

/* prefill_embeds of n <= chunk rows already in m->prefill_embeds.input[IN_EMBEDS]. */
static int run_prefill_embeds(mcpm_model* m, int n, float* logits_out) {
    if (run_calls(m, &m->prefill_embeds, n)) return -1;
    copy_logits(m, &m->prefill_embeds, n, logits_out);
    m->pos += n;
    return 0;
}

int mcpm_model_prefill_embeds(mcpm_model* m, const float* embeds, int n, float* logits_out) {
    if (!m) return -1;
    m->err[0] = '\0';
    if (mcpm_need_vision(m, "prefill_embeds")) return -1;
    if (!embeds || n < 1) return mcpm_seterr(m->err, "prefill_embeds needs at least one row");
    if (m->pos + (int64_t)n > m->max_ctx)
        return mcpm_seterr(m->err, "context full: %d + %d tokens > max_ctx %d", m->pos, n, m->max_ctx);
    size_t d = (size_t)m->vinfo.hidden;
    int pos0 = m->pos;
    for (int start = 0; start < n; start += m->chunk) {
        int len = n - start < m->chunk ? n - start : m->chunk;
        if (prefill_cancelled(m, pos0)) return -1;
        memcpy(m->prefill_embeds.input[IN_EMBEDS], embeds + (size_t)start * d, sizeof(float) * (size_t)len * d);
        if (run_prefill_embeds(m, len, start + len == n ? logits_out : NULL)) return -1;
    }
    return 0;
}

int mcpm_model_vision_run(mcpm_model* m, const float* patches, const float* pos_interp, const float* key_pos, int n,
                          float* out) {
    if (!m) return -1;
    m->err[0] = '\0';
    if (mcpm_need_vision(m, "vision")) return -1;
    if (!patches || !pos_interp || !key_pos || !out) return mcpm_seterr(m->err, "vision: NULL buffer");
    if (n < 1 || n > m->vision.n_max)
        return mcpm_seterr(m->err, "an image slice of %d patches exceeds the vision encoder's max_patches %d", n,
                           m->vision.n_max);
    const float* src[3] = {patches, pos_interp, key_pos};
    static const int ins[3] = {IN_PATCHES, IN_POS_INTERP, IN_KEY_POS};
    for (int k = 0; k < 3; k++)
        memcpy(m->vision.input[ins[k]], src[k], sizeof(float) * (size_t)n * (size_t)mcpm_input_width(m, ins[k]));
    if (run_calls(m, &m->vision, n)) return -1;
    int64_t bytes;
    const float* o = entry_output(&m->vision, n, &bytes); /* float32[Q, D] */
    memcpy(out, o, (size_t)bytes);
    return 0;
}

/* One chunk of len tokens at prompt position start with image rows: embed -> overwrite the image positions with
 * rows *row.. of the features -> prefill_embeds. */
static int prefill_image_chunk(mcpm_model* m, const int32_t* tokens, int start, int len, const mcpm_image_prompt* img,
                               int* row, float* logits_out) {
    size_t d = (size_t)m->vinfo.hidden;
    memcpy(m->embed.input[IN_TOKENS], tokens + start, sizeof(int32_t) * (size_t)len);
    if (run_calls(m, &m->embed, len)) return -1;
    int64_t bytes;
    const float* e = entry_output(&m->embed, len, &bytes);          /* float32[len, D] */
    float* x = (float*)(void*)m->prefill_embeds.input[IN_EMBEDS]; /* float32[chunk, D] */
    memcpy(x, e, (size_t)bytes);
    for (int i = 0; i < len; i++) {
        if (!img->image[start + i]) continue;
        if (*row >= img->n_rows)
            return mcpm_seterr(m->err, "more image positions in the prompt than image features (%d)", img->n_rows);
        memcpy(x + (size_t)i * d, img->feats + (size_t)*row * d, sizeof(float) * d);
        (*row)++;
    }
    return run_prefill_embeds(m, len, logits_out);
}

int mcpm_prefill_image(mcpm_model* m, const int32_t* tokens, int n, const mcpm_image_prompt* img, float* logits_out) {
    int row = 0, pos0 = m->pos; /* next feature row; the position before the prompt */
    for (int start = 0; start < n; start += m->chunk) {
        int len = n - start < m->chunk ? n - start : m->chunk;
        float* lo = start + len == n ? logits_out : NULL;
        if (prefill_cancelled(m, pos0)) return -1;
        int any = 0;
        for (int i = start; i < start + len && !any; i++) any = img->image[i] != 0;
        if (any ? prefill_image_chunk(m, tokens, start, len, img, &row, lo)
                : run_entry(m, &m->prefill, tokens + start, len, lo))
            return -1;
    }
    if (row != img->n_rows)
        return mcpm_seterr(m->err, "%d image positions in the prompt for %d image feature rows", row, img->n_rows);
    return 0;
}

int mcpm_vision_model_logits(const mcpm_model* m, float* out) {
    if (!m || !out || !m->logits || m->prefill_tokens == 0) return -1;
    memcpy(out, m->logits, sizeof(float) * (size_t)m->vocab);
    return 0;
}

/* ---------------------------------------------------------------- small accessors */

void mcpm_model_set_image_stats(mcpm_model* m, double ms, int slices, int patches) {
    m->image_encode_ms = ms;
    m->image_slices = slices;
    m->image_patches = patches;
}

void mcpm_model_set_notice(mcpm_model* m, const char* notice) { snprintf(m->notice, sizeof m->notice, "%s", notice); }

void mcpm_reset(mcpm_model* m) {
    if (m) { m->pos = 0; m->err[0] = '\0'; }
}

int mcpm_vocab_size(const mcpm_model* m) { return m ? m->vocab : 0; }
int mcpm_context_length(const mcpm_model* m) { return m ? m->max_ctx : 0; }
int mcpm_position(const mcpm_model* m) { return m ? m->pos : 0; }

const char* mcpm_last_error(const mcpm_model* m) {
    if (m) return m->err;
    mcpm_backend_leave(); /* no model: the thread's load-error buffer */
    return mcpm_thread_error_buffer();
}

const char* mcpm_model_notice(const mcpm_model* m) { return m ? m->notice : ""; }

const char* mcpm_model_device(const mcpm_model* m) { return m && m->gpu ? "gpu" : "cpu"; }
