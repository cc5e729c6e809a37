/* plan.json -> the plain structs of mcpm_model.h, validated like export/compiler/plan.py (docs/bundle-format.md):
 * sizes, the KV cache layout, the kernels (resolved by mcpm_cpu.c), the weights (pointers into weights.bin), and
 * the entries with their calls and args. Nothing here allocates a buffer a kernel runs on (mcpm_runtime.c does). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mcpm_model.h"

const mcpm_dtype_info MCPM_DTYPES[MCPM_N_DTYPES] = {
    {"float32", {2, 32, 1}, 4, 0}, {"float16", {2, 16, 1}, 2, 1}, {"bfloat16", {4, 16, 1}, 2, -1},
    {"int64", {0, 64, 1}, 8, -1},  {"int32", {0, 32, 1}, 4, 4},   {"uint32", {1, 32, 1}, 4, 2},
    {"int8", {0, 8, 1}, 1, 3},     {"uint8", {1, 8, 1}, 1, 5},
};
const char* const MCPM_INPUT_NAMES[N_INPUTS] = {"tokens", "embeds", "patches", "pos_interp", "key_pos"};
const char* const MCPM_ENTRY_NAMES[N_ENTRIES] = {"prefill", "decode", "embed", "prefill_embeds", "vision"};
_Static_assert((int)ARG_INPUT == (int)MCPM_GPU_ARG_INPUT && (int)ARG_SCALAR == (int)MCPM_GPU_ARG_SCALAR &&
                   (int)ARG_WEIGHT == (int)MCPM_GPU_ARG_WEIGHT && (int)ARG_CACHE == (int)MCPM_GPU_ARG_CACHE &&
                   (int)ARG_TENSOR == (int)MCPM_GPU_ARG_TENSOR,
               "arg kinds shared with the GPU dispatcher");

#define MAX_DIM_VALUE ((int64_t)1 << 40)
#define ARG_BYTES_HUGE ((int64_t)1 << 62) /* "too large": above every storage, weight and input size */

int mcpm_dtype_by_name(const char* s) {
    for (int i = 0; s && i < MCPM_N_DTYPES; i++)
        if (!strcmp(MCPM_DTYPES[i].name, s)) return i;
    return -1;
}

/* ---------------------------------------------------------------- field access with errors */

int mcpm_plan_err(plan_ctx* pc, const char* fmt, ...) {
    char* err = pc->m->err; /* char[MCPM_ERR_LEN] */
    int used = snprintf(err, MCPM_ERR_LEN, "%s: invalid plan: ", pc->path);
    if (used < 0 || used >= MCPM_ERR_LEN) return -1;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err + used, MCPM_ERR_LEN - (size_t)used, fmt, ap);
    va_end(ap);
    return -1;
}

int mcpm_plan_int(plan_ctx* pc, const json_node* obj, const char* key, int64_t lo, int64_t hi, int64_t* out,
                  const char* where) {
    *out = 0; /* defined on failure too (gcc -O3 cannot see that callers stop there) */
    const json_node* v = json_get(pc->doc, obj, key);
    if (!v || v->type != JSON_NUMBER || !v->is_int)
        return mcpm_plan_err(pc, "%s: missing or malformed field '%s'", where, key);
    if (v->i < lo || v->i > hi)
        return mcpm_plan_err(pc, "%s: field '%s' = %lld out of range %lld..%lld", where, key, (long long)v->i,
                             (long long)lo, (long long)hi);
    *out = v->i;
    return 0;
}

const char* mcpm_plan_str(plan_ctx* pc, const json_node* obj, const char* key, const char* where) {
    const json_node* v = json_get(pc->doc, obj, key);
    if (!v || v->type != JSON_STRING) {
        mcpm_plan_err(pc, "%s: missing or malformed field '%s'", where, key);
        return NULL;
    }
    return v->str;
}

const json_node* mcpm_plan_typed(plan_ctx* pc, const json_node* obj, const char* key, json_type t, const char* where) {
    const json_node* v = json_get(pc->doc, obj, key);
    if (!v || v->type != t) {
        mcpm_plan_err(pc, "%s: missing or malformed field '%s'", where, key);
        return NULL;
    }
    return v;
}

/* ---------------------------------------------------------------- sizes of args and inputs */

static int64_t dim_at(const plan_arg* a, int d, int64_t n) { return a->a[d] * n + a->b[d]; }

/* Saturated at ARG_BYTES_HUGE (dims come from plan.json: up to 2^40 each, and a negative dim counts as huge), so
 * every size check against it fails instead of overflowing. */
int64_t mcpm_arg_bytes(const plan_arg* a, int64_t n) {
    int64_t size = MCPM_DTYPES[a->dtype].bytes;
    for (int d = 0; d < a->ndim; d++) {
        int64_t dim = a->a[d] * n + a->b[d]; /* |a|, |b| <= 2^40 and 0 <= n <= 2^31: no overflow */
        if (dim < 0 || (dim > 0 && size > ARG_BYTES_HUGE / dim)) return ARG_BYTES_HUGE;
        size *= dim;
    }
    return size;
}

int mcpm_input_allowed(int type, int in) {
    switch (type) {
    case E_PREFILL_EMBEDS: return in == IN_EMBEDS;
    case E_VISION: return in == IN_PATCHES || in == IN_POS_INTERP || in == IN_KEY_POS;
    default: return in == IN_TOKENS;
    }
}

int64_t mcpm_input_width(const mcpm_model* m, int in) {
    const mcpm_vision_info* v = &m->vinfo;
    switch (in) {
    case IN_EMBEDS: case IN_KEY_POS: return v->hidden;
    case IN_PATCHES: return 3 * (int64_t)v->patch * v->patch;
    case IN_POS_INTERP: return (int64_t)v->pos_grid * v->pos_grid;
    default: return 1;
    }
}

plan_entry* mcpm_entry_at(mcpm_model* m, int type) {
    plan_entry* es[N_ENTRIES] = {&m->prefill, &m->decode, &m->embed, &m->prefill_embeds, &m->vision};
    return es[type];
}

/* ---------------------------------------------------------------- args */

/* "shape": [[a, b], ...] (dim = a * n + b), non-negative for every n in 1..n_max. */
static int parse_shape(plan_ctx* pc, const json_node* j, plan_arg* a, const plan_entry* e, const char* where) {
    const json_node* shape = mcpm_plan_typed(pc, j, "shape", JSON_ARRAY, where);
    if (!shape) return -1;
    if (shape->count > MCPM_MAX_NDIM)
        return mcpm_plan_err(pc, "%s: %d dims (at most %d)", where, shape->count, MCPM_MAX_NDIM);
    a->ndim = shape->count;
    int d = 0;
    for (const json_node* dim = json_child(pc->doc, shape); dim; dim = json_next(pc->doc, dim), d++) {
        const json_node* x = json_at(pc->doc, dim, 0);
        const json_node* y = json_at(pc->doc, dim, 1);
        if (dim->type != JSON_ARRAY || dim->count != 2 || x->type != JSON_NUMBER || !x->is_int ||
            y->type != JSON_NUMBER || !y->is_int || x->i < -MAX_DIM_VALUE || x->i > MAX_DIM_VALUE ||
            y->i < -MAX_DIM_VALUE || y->i > MAX_DIM_VALUE)
            return mcpm_plan_err(pc, "%s: bad shape", where);
        a->a[d] = x->i;
        a->b[d] = y->i;
    }
    int64_t ns[2] = {1, e->n_max};
    for (int k = 0; k < 2; k++) /* dims are linear in n: checking both ends covers 1..n_max */
        for (d = 0; d < a->ndim; d++)
            if (dim_at(a, d, ns[k]) < 0)
                return mcpm_plan_err(pc, "%s: negative dim at n=%lld", where, (long long)ns[k]);
    return 0;
}

/* An input arg: a name the entry reads, int32 tokens [n_max] or float32 [n, width]. */
static int parse_input(plan_ctx* pc, const json_node* j, plan_arg* a, const plan_entry* e, int64_t bytes,
                       const char* where) {
    const char* name = mcpm_plan_str(pc, j, "name", where);
    if (!name) return -1;
    a->index = -1;
    for (int k = 0; k < N_INPUTS; k++)
        if (!strcmp(name, MCPM_INPUT_NAMES[k]) && mcpm_input_allowed(e->type, k)) a->index = k;
    if (a->index < 0) return mcpm_plan_err(pc, "%s: unknown input '%s'", where, name);
    if (a->index == IN_TOKENS) {
        if (strcmp(MCPM_DTYPES[a->dtype].name, "int32") || bytes > 4 * (int64_t)e->n_max)
            return mcpm_plan_err(pc, "%s: tokens must be int32 within [n_max]", where);
        return 0;
    }
    int64_t width = mcpm_input_width(pc->m, a->index);
    int n_dep = 0; /* dims depending on n: at most one, so that the size is linear in n */
    for (int d = 0; d < a->ndim; d++) n_dep += a->a[d] != 0;
    if (strcmp(MCPM_DTYPES[a->dtype].name, "float32") || n_dep > 1 || mcpm_arg_bytes(a, 1) > 4 * width ||
        mcpm_arg_bytes(a, e->n_max) > 4 * width * e->n_max)
        return mcpm_plan_err(pc, "%s: %s must be float32 within [n, %lld]", where, name, (long long)width);
    return 0;
}

/* A cache arg: layer and "k"/"v", the cache's dtype, within one layer's cache. */
static int parse_cache_ref(plan_ctx* pc, const json_node* j, plan_arg* a, int64_t bytes, const char* where) {
    mcpm_model* m = pc->m;
    int64_t v;
    if (mcpm_plan_int(pc, j, "layer", 0, m->num_layers - 1, &v, where)) return -1;
    a->index = (int)v;
    const char* which = mcpm_plan_str(pc, j, "which", where);
    if (!which) return -1;
    if (strcmp(which, "k") && strcmp(which, "v")) return mcpm_plan_err(pc, "%s: bad cache ref '%s'", where, which);
    a->which_v = !strcmp(which, "v");
    if (a->dtype != m->cache_dtype || bytes > (int64_t)m->cache_bytes)
        return mcpm_plan_err(pc, "%s: cache arg larger than the cache or of another dtype", where);
    return 0;
}

/* A planned tensor: storage id and a 64-byte aligned offset, within the storage. */
static int parse_tensor(plan_ctx* pc, const json_node* j, plan_arg* a, const plan_entry* e, int64_t bytes,
                        const char* where) {
    int64_t v;
    if (mcpm_plan_int(pc, j, "storage", INT32_MIN, INT32_MAX, &v, where)) return -1;
    if (v < 0 || v >= e->n_storages)
        return mcpm_plan_err(pc, "%s: storage id %lld out of range 0..%d", where, (long long)v, e->n_storages - 1);
    a->index = (int)v;
    if (mcpm_plan_int(pc, j, "offset", INT64_MIN / 4, INT64_MAX / 4, &a->offset, where)) return -1;
    int64_t size = e->storage_size[a->index];
    if (a->offset < 0 || a->offset % MCPM_ALIGN || a->offset + bytes > size)
        return mcpm_plan_err(pc, "%s: bytes %lld..%lld outside storage %d of %lld bytes", where, (long long)a->offset,
                             (long long)(a->offset + bytes), a->index, (long long)size);
    return 0;
}

static int parse_arg(plan_ctx* pc, const json_node* j, plan_arg* a, const plan_entry* e, const char* where) {
    memset(a, 0, sizeof(*a));
    const char* kind = j && j->type == JSON_OBJECT ? mcpm_plan_str(pc, j, "kind", where) : NULL;
    if (!kind) return mcpm_plan_err(pc, "%s: unknown arg", where);
    static const char* kinds[] = {"input", "scalar", "weight", "cache", "tensor"};
    a->kind = -1;
    for (int k = 0; k < 5; k++)
        if (!strcmp(kind, kinds[k])) a->kind = k;
    if (a->kind < 0) return mcpm_plan_err(pc, "%s: unknown arg kind '%s'", where, kind);
    const char* dt = json_get(pc->doc, j, "dtype") ? mcpm_plan_str(pc, j, "dtype", where) : "int64";
    if (!dt) return -1;
    if ((a->dtype = mcpm_dtype_by_name(dt)) < 0) return mcpm_plan_err(pc, "%s: unknown dtype '%s'", where, dt);
    if (a->kind == ARG_SCALAR) {
        const char* name = mcpm_plan_str(pc, j, "name", where);
        if (!name) return -1;
        if (strcmp(name, "pos") && strcmp(name, "n")) return mcpm_plan_err(pc, "%s: unknown scalar '%s'", where, name);
        a->scalar_pos = !strcmp(name, "pos");
        return 0;
    }
    if (parse_shape(pc, j, a, e, where)) return -1;
    int64_t b1 = mcpm_arg_bytes(a, 1), b2 = mcpm_arg_bytes(a, e->n_max), bytes = b1 > b2 ? b1 : b2, v;
    switch (a->kind) {
    case ARG_INPUT: return parse_input(pc, j, a, e, bytes, where);
    case ARG_WEIGHT: /* dtype/shape checked against the plan's weights list by plan_entries */
        if (mcpm_plan_int(pc, j, "index", 0, pc->m->n_weights - 1, &v, where)) return -1;
        a->index = (int)v;
        return 0;
    case ARG_CACHE: return parse_cache_ref(pc, j, a, bytes, where);
    default: return parse_tensor(pc, j, a, e, bytes, where);
    }
}

/* ---------------------------------------------------------------- entries */

/* "storages": [{"id": i, "size": bytes, "align": a}, ...] -> e->storage_size. */
static int parse_storages(plan_ctx* pc, const json_node* st, plan_entry* e) {
    char where[160];
    e->n_storages = st->count;
    if (!(e->storage_size = calloc((size_t)st->count + 1, sizeof(int64_t)))) return mcpm_seterr(pc->m->err, "out of memory");
    int i = 0;
    for (const json_node* s = json_child(pc->doc, st); s; s = json_next(pc->doc, s), i++) {
        int64_t id, size, align = MCPM_ALIGN;
        snprintf(where, sizeof where, "%s storage #%d", e->name, i);
        if (mcpm_plan_int(pc, s, "id", INT32_MIN, INT32_MAX, &id, where) ||
            mcpm_plan_int(pc, s, "size", INT64_MIN, (int64_t)1 << 40, &size, where))
            return -1;
        if (json_get(pc->doc, s, "align") && mcpm_plan_int(pc, s, "align", INT32_MIN, INT32_MAX, &align, where))
            return -1;
        if (id != i || size < 0 || align < 1)
            return mcpm_plan_err(pc, "%s: storage #%d has id %lld, size %lld, align %lld", e->name, i, (long long)id,
                                 (long long)size, (long long)align);
        e->storage_size[i] = size;
    }
    return 0;
}

/* "calls": [{"kernel": name, "args": [...]}, ...] -> e->calls, their args appended at m->args[*n_args]. */
static int parse_calls(plan_ctx* pc, const json_node* calls, plan_entry* e, int* n_args) {
    mcpm_model* m = pc->m;
    char where[160];
    if (!(e->calls = calloc((size_t)calls->count + 1, sizeof(plan_call)))) return mcpm_seterr(m->err, "out of memory");
    int i = 0;
    for (const json_node* c = json_child(pc->doc, calls); c; c = json_next(pc->doc, c), i++) {
        const char* kname = mcpm_plan_str(pc, c, "kernel", e->name);
        if (!kname) return -1;
        snprintf(where, sizeof where, "%s call %d (%.100s)", e->name, i, kname);
        plan_call* call = &e->calls[i];
        call->kernel = -1;
        for (int k = 0; k < m->n_kernels; k++)
            if (!strcmp(m->kernel_names[k], kname)) call->kernel = k;
        if (call->kernel < 0) return mcpm_plan_err(pc, "%s: unknown kernel '%s'", where, kname);
        const json_node* args = json_get(pc->doc, c, "args"); /* an array: checked by count_args */
        call->first_arg = *n_args;
        call->nargs = args->count;
        for (const json_node* a = json_child(pc->doc, args); a; a = json_next(pc->doc, a)) {
            plan_arg* pa = &m->args[(*n_args)++];
            if (parse_arg(pc, a, pa, e, where)) return -1;
            /* a weight arg's "name" is informational; the index is authoritative (as in plan.py) */
            if (pa->kind == ARG_WEIGHT && !mcpm_plan_str(pc, a, "name", where)) return -1;
        }
    }
    e->n_calls = calls->count;
    return 0;
}

/* The output: a planned float32 tensor; embed [n, D], vision [Q, D], the others [..., vocab]. */
static int check_output(plan_ctx* pc, plan_entry* e) {
    const mcpm_model* m = pc->m;
    const plan_arg* o = &e->output;
    if (o->kind != ARG_TENSOR) return mcpm_plan_err(pc, "%s: output must be a planned tensor", e->name);
    int is_f32 = !strcmp(MCPM_DTYPES[o->dtype].name, "float32");
    if (e->type == E_EMBED || e->type == E_VISION) {
        int64_t rows1 = e->type == E_EMBED ? 1 : m->vinfo.query_num, rows2 = e->type == E_EMBED ? e->n_max : rows1;
        int64_t width = m->vinfo.hidden;
        if (!is_f32 || o->ndim < 1 || o->a[o->ndim - 1] || o->b[o->ndim - 1] != width ||
            mcpm_arg_bytes(o, 1) != 4 * rows1 * width || mcpm_arg_bytes(o, e->n_max) != 4 * rows2 * width)
            return mcpm_plan_err(pc, "%s: output must be float32 [%s, hidden %lld]", e->name,
                                 e->type == E_EMBED ? "n" : "query_num", (long long)width);
        return 0;
    }
    if (!is_f32 || o->ndim < 1 || dim_at(o, o->ndim - 1, 1) != m->vocab || dim_at(o, o->ndim - 1, e->n_max) != m->vocab ||
        mcpm_arg_bytes(o, 1) < 4 * (int64_t)m->vocab)
        return mcpm_plan_err(pc, "%s: output must be float32 [..., vocab_size %d]", e->name, m->vocab);
    return 0;
}

/* The entry object of type (E_*) in "entries", NULL with the error set. */
static const json_node* entry_json(plan_ctx* pc, const json_node* entries, int type) {
    const char* name = MCPM_ENTRY_NAMES[type];
    const json_node* j = json_get(pc->doc, entries, name);
    if (!j) mcpm_plan_err(pc, "missing entry '%s'", name);
    else if (j->type != JSON_OBJECT) mcpm_plan_err(pc, "entry '%s' is not an object", name);
    else return j;
    return NULL;
}

/* Adds the number of args of entry type's calls to *n_args (the first pass, before m->args exists). */
static int count_args(plan_ctx* pc, const json_node* entries, int type, int* n_args) {
    const json_node* j = entry_json(pc, entries, type);
    const json_node* calls = j ? mcpm_plan_typed(pc, j, "calls", JSON_ARRAY, MCPM_ENTRY_NAMES[type]) : NULL;
    if (!calls) return -1;
    for (const json_node* c = json_child(pc->doc, calls); c; c = json_next(pc->doc, c)) {
        const json_node* args = json_get(pc->doc, c, "args");
        if (!args || args->type != JSON_ARRAY) return mcpm_plan_err(pc, "%s: call without args", MCPM_ENTRY_NAMES[type]);
        *n_args += args->count;
    }
    return 0;
}

static int parse_entry(plan_ctx* pc, const json_node* entries, plan_entry* e, int type, int* n_args) {
    const char* name = MCPM_ENTRY_NAMES[type];
    const json_node* j = entry_json(pc, entries, type);
    if (!j) return -1;
    int64_t v;
    if (mcpm_plan_int(pc, j, "n_max", 1, 1 << 20, &v, name)) return -1;
    e->name = name;
    e->type = type;
    e->n_max = (int)v;
    const json_node* st = mcpm_plan_typed(pc, j, "storages", JSON_ARRAY, name);
    const json_node* calls = st ? mcpm_plan_typed(pc, j, "calls", JSON_ARRAY, name) : NULL;
    const json_node* out = calls ? mcpm_plan_typed(pc, j, "output", JSON_OBJECT, name) : NULL;
    if (!out || parse_storages(pc, st, e) || parse_calls(pc, calls, e, n_args)) return -1;
    char where[160];
    snprintf(where, sizeof where, "%s output", name);
    if (parse_arg(pc, out, &e->output, e, where) || check_output(pc, e)) return -1;
    e->present = 1;
    return 0;
}

/* ---------------------------------------------------------------- the whole plan */

/* plan.json "vision" (top level, or under "extra"): the sizes of the MiniCPM-V entries' inputs and outputs. */
static int parse_vision(plan_ctx* pc, const json_node* root) {
    mcpm_vision_info* v = &pc->m->vinfo;
    const json_node* j = json_get(pc->doc, root, "vision");
    const json_node* extra = json_get(pc->doc, root, "extra");
    if (!j && extra && extra->type == JSON_OBJECT) j = json_get(pc->doc, extra, "vision");
    if (!j || j->type != JSON_OBJECT) return mcpm_plan_err(pc, "the vision entries need a \"vision\" section");
    static const char* keys[6] = {"patch", "pos_grid", "max_patches", "query_num", "hidden", "vision_hidden"};
    int* fields[6] = {&v->patch, &v->pos_grid, &v->max_patches, &v->query_num, &v->hidden, &v->vision_hidden};
    for (int k = 0; k < 6; k++) {
        int64_t x;
        if (mcpm_plan_int(pc, j, keys[k], 1, 1 << 20, &x, "vision")) return -1;
        *fields[k] = (int)x;
    }
    if (v->hidden % 4) return mcpm_plan_err(pc, "vision: hidden %d is not a multiple of 4", v->hidden);
    if (v->patch > 1024 || v->pos_grid > 4096)
        return mcpm_plan_err(pc, "vision: patch %d or pos_grid %d too large", v->patch, v->pos_grid);
    return 0;
}

/* magic, version, max_ctx, chunk, vocab_size, num_layers. */
static int parse_sizes(plan_ctx* pc, const json_node* root) {
    mcpm_model* m = pc->m;
    const char* magic = root->type == JSON_OBJECT ? mcpm_plan_str(pc, root, "magic", "top level") : NULL;
    if (!magic || strcmp(magic, "MCPMPLAN")) return mcpm_plan_err(pc, "bad magic (not an mcpm plan)");
    int64_t v;
    if (mcpm_plan_int(pc, root, "version", 1, 1, &v, "top level")) return -1;
    if (mcpm_plan_int(pc, root, "max_ctx", 1, 1 << 24, &v, "top level")) return -1;
    m->max_ctx = (int)v;
    if (mcpm_plan_int(pc, root, "chunk", 1, m->max_ctx, &v, "top level")) return -1;
    m->chunk = (int)v;
    if (mcpm_plan_int(pc, root, "vocab_size", 1, INT32_MAX, &v, "top level")) return -1;
    m->vocab = (int)v;
    if (mcpm_plan_int(pc, root, "num_layers", 0, 1 << 16, &v, "top level")) return -1;
    m->num_layers = (int)v;
    return 0;
}

/* "cache": {"shape": [max_ctx, kv_heads, head_dim], "dtype": ...} -> m->cache_dtype, cache_shape, cache_bytes. */
static int parse_cache(plan_ctx* pc, const json_node* cache) {
    mcpm_model* m = pc->m;
    const json_node* cshape = mcpm_plan_typed(pc, cache, "shape", JSON_ARRAY, "cache");
    const char* cdt = cshape ? mcpm_plan_str(pc, cache, "dtype", "cache") : NULL;
    if (!cdt) return -1;
    if ((m->cache_dtype = mcpm_dtype_by_name(cdt)) < 0) return mcpm_plan_err(pc, "cache: unknown dtype '%s'", cdt);
    if (cshape->count != 3) return mcpm_plan_err(pc, "cache shape must be [max_ctx, kv_heads, head_dim]");
    m->cache_bytes = (size_t)MCPM_DTYPES[m->cache_dtype].bytes;
    for (int d = 0; d < 3; d++) {
        const json_node* x = json_at(pc->doc, cshape, d);
        if (x->type != JSON_NUMBER || !x->is_int || x->i < 1 || x->i > (1 << 24))
            return mcpm_plan_err(pc, "bad cache shape");
        m->cache_shape[d] = x->i;
        m->cache_bytes *= (size_t)x->i;
    }
    if (m->cache_shape[0] != m->max_ctx)
        return mcpm_plan_err(pc, "cache rows %lld != max_ctx %d", (long long)m->cache_shape[0], m->max_ctx);
    return 0;
}

/* "weights": every plan weight must be a tensor of weights.bin (wes[wcount]) with the same dtype and shape. */
static int parse_weights(plan_ctx* pc, const json_node* weights, const char* dir, const mcpm_wentry* wes,
                         uint32_t wcount, const unsigned char* wdata) {
    mcpm_model* m = pc->m;
    m->n_weights = weights->count;
    if (!(m->weight_data = calloc((size_t)m->n_weights + 1, sizeof(unsigned char*))))
        return mcpm_seterr(m->err, "out of memory");
    int i = 0;
    for (const json_node* w = json_child(pc->doc, weights); w; w = json_next(pc->doc, w), i++) {
        const char* wname = mcpm_plan_str(pc, w, "name", "weights");
        const char* wdt = wname ? mcpm_plan_str(pc, w, "dtype", "weights") : NULL;
        const json_node* wsh = wdt ? mcpm_plan_typed(pc, w, "shape", JSON_ARRAY, "weights") : NULL;
        if (!wsh) return -1;
        int dti = mcpm_dtype_by_name(wdt);
        if (dti < 0) return mcpm_plan_err(pc, "weight %s: unknown dtype '%s'", wname, wdt);
        const mcpm_wentry* we = NULL;
        for (uint32_t t = 0; t < wcount && !we; t++)
            if (!strcmp(wes[t].name, wname)) we = &wes[t];
        if (!we)
            return mcpm_seterr(m->err, "%s/weights.bin has no tensor '%s': the bundle and its plan do not match", dir,
                               wname);
        int ok = we->dtype == dti && we->ndim == wsh->count, d = 0;
        for (const json_node* x = json_child(pc->doc, wsh); ok && x; x = json_next(pc->doc, x), d++)
            ok = x->type == JSON_NUMBER && x->is_int && x->i == we->shape[d];
        if (!ok) return mcpm_seterr(m->err, "weights.bin tensor '%s' does not match the plan's dtype/shape: re-export", wname);
        m->weight_data[i] = (unsigned char*)(uintptr_t)(wdata + we->offset); /* read-only mapping */
    }
    return 0;
}

/* A weight arg against the plan's weights list entry winfo (dtype and shape [[0, x], ...]). */
static int check_weight_arg(plan_ctx* pc, const plan_arg* a, const json_node* winfo) {
    const char* dt = mcpm_plan_str(pc, winfo, "dtype", "weights");
    const json_node* shape = mcpm_plan_typed(pc, winfo, "shape", JSON_ARRAY, "weights");
    if (!dt || !shape) return -1;
    int ok = !strcmp(dt, MCPM_DTYPES[a->dtype].name) && shape->count == a->ndim;
    int d = 0;
    for (const json_node* x = json_child(pc->doc, shape); ok && x; x = json_next(pc->doc, x), d++)
        ok = x->type == JSON_NUMBER && x->is_int && a->a[d] == 0 && a->b[d] == x->i;
    if (!ok) return mcpm_plan_err(pc, "weight arg: weight %d does not match the arg's dtype/shape", a->index);
    return 0;
}

/* n_max agreements between the entries, the chunk and the vision encoder. */
static int check_entry_sizes(plan_ctx* pc) {
    const mcpm_model* m = pc->m;
    if (m->decode.n_max != 1 || m->prefill.n_max != m->chunk)
        return mcpm_plan_err(pc, "prefill n_max %d != chunk %d or decode n_max %d != 1", m->prefill.n_max, m->chunk,
                             m->decode.n_max);
    if (m->vision.present && (m->embed.n_max != m->chunk || m->prefill_embeds.n_max != m->chunk ||
                              m->vision.n_max != m->vinfo.max_patches))
        return mcpm_plan_err(pc, "embed n_max %d / prefill_embeds n_max %d != chunk %d or vision n_max %d != "
                             "max_patches %d", m->embed.n_max, m->prefill_embeds.n_max, m->chunk, m->vision.n_max,
                             m->vinfo.max_patches);
    return 0;
}

/* "entries": prefill and decode, and embed / prefill_embeds / vision together (MiniCPM-V); two passes: count the
 * args, then fill m->args. */
static int parse_entries(plan_ctx* pc, const json_node* root, const json_node* entries, const json_node* weights) {
    mcpm_model* m = pc->m;
    int n_args = 0, has[N_ENTRIES] = {1, 1, 0, 0, 0};
    for (int k = E_EMBED; k < N_ENTRIES; k++) has[k] = json_get(pc->doc, entries, MCPM_ENTRY_NAMES[k]) != NULL;
    if (!has[E_VISION]) has[E_EMBED] = has[E_PREFILL_EMBEDS] = 0; /* without a vision encoder: text only */
    if (has[E_VISION]) {
        if (!has[E_EMBED] || !has[E_PREFILL_EMBEDS])
            return mcpm_plan_err(pc, "a MiniCPM-V plan needs all of the entries embed, prefill_embeds and vision");
        if (parse_vision(pc, root)) return -1;
    }
    for (int k = 0; k < N_ENTRIES; k++)
        if (has[k] && count_args(pc, entries, k, &n_args)) return -1;
    m->args = calloc((size_t)n_args + 1, sizeof(plan_arg));
    m->any = calloc((size_t)n_args + 1, sizeof(mcpm_ffi_any));
    m->dl = calloc((size_t)n_args + 1, sizeof(mcpm_dltensor));
    m->shapes = calloc(((size_t)n_args + 1) * MCPM_MAX_NDIM, sizeof(int64_t));
    if (!m->args || !m->any || !m->dl || !m->shapes) return mcpm_seterr(m->err, "out of memory");
    n_args = 0;
    for (int k = 0; k < N_ENTRIES; k++)
        if (has[k] && parse_entry(pc, entries, mcpm_entry_at(m, k), k, &n_args)) return -1;
    if (check_entry_sizes(pc)) return -1;
    m->n_args = n_args;
    for (int i = 0; i < n_args; i++)
        if (m->args[i].kind == ARG_WEIGHT && check_weight_arg(pc, &m->args[i], json_at(pc->doc, weights, m->args[i].index)))
            return -1;
    return 0;
}

/* The plan's sections in order: sizes, kernel set, cache, kernels, weights, entries, the GPU. */
static int parse_plan(plan_ctx* pc, const char* dir, const mcpm_wentry* wes, uint32_t wcount,
                      const unsigned char* wdata) {
    mcpm_model* m = pc->m;
    const json_node* root = &pc->doc->nodes[0];
    if (parse_sizes(pc, root)) return -1;
    const char* obj = json_get(pc->doc, root, "object_file") ? mcpm_plan_str(pc, root, "object_file", "top level")
                                                             : "kernels.o";
    const char* prefix = json_get(pc->doc, root, "symbol_prefix")
                             ? mcpm_plan_str(pc, root, "symbol_prefix", "top level") : "__tvm_ffi_";
    if (!obj || !prefix) return -1;
    if (json_get(pc->doc, root, "kernel_variants") && mcpm_pick_variant(pc, root, &obj, &prefix)) return -1;
    const json_node *kernels, *cache, *weights, *entries;
    if (!(kernels = mcpm_plan_typed(pc, root, "kernels", JSON_ARRAY, "top level")) ||
        !(cache = mcpm_plan_typed(pc, root, "cache", JSON_OBJECT, "top level")) ||
        !(weights = mcpm_plan_typed(pc, root, "weights", JSON_ARRAY, "top level")) ||
        !(entries = mcpm_plan_typed(pc, root, "entries", JSON_OBJECT, "top level")))
        return -1;
    if (parse_cache(pc, cache) || mcpm_resolve_kernels(pc, kernels, prefix, dir, obj) ||
        parse_weights(pc, weights, dir, wes, wcount, wdata) || parse_entries(pc, root, entries, weights))
        return -1;
    if (strcmp(m->want_device, "cpu") && mcpm_gpu_setup(m, pc, root, dir)) return -1;
    return 0;
}

int mcpm_plan_load(mcpm_model* m, const char* dir, const char* path, const mcpm_wentry* wes, uint32_t wcount,
                   const unsigned char* wdata) {
    size_t len = 0;
    char* text = mcpm_read_file(path, &len);
    if (!text) return mcpm_seterr(m->err, "%s is missing: re-export the bundle", path);
    json_doc doc;
    char jerr[256];
    int rc = json_parse(&doc, text, len, jerr, sizeof jerr);
    free(text);
    if (rc) return mcpm_seterr(m->err, "%s: invalid plan: not JSON (%s)", path, jerr);
    plan_ctx pc = {m, &doc, path};
    rc = parse_plan(&pc, dir, wes, wcount, wdata);
    json_free(&doc);
    return rc;
}
