/* mcpm C runtime: load a bundle (weights.bin mmap + plan.json), resolve kernels, run prefill/decode.
 * Does what export/compiler/plan_runner.py (PlanModel) does, validating like export/compiler/plan.py and
 * export/bundle/weights_file.py. Formats: docs/bundle-format.md. */
#define _GNU_SOURCE /* dladdr, RTLD_NOLOAD */
#include <dlfcn.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#if defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#elif defined(__APPLE__) && defined(__aarch64__)
#include <sys/sysctl.h>
#endif

#include "mcpm_internal.h"
#include "mcpm_json.h"
#include "mcpm_opencl.h"
#include "mcpm_vision.h"

/* ---------------------------------------------------------------- types */

typedef struct {
    const char* name;
    mcpm_dl_dtype dl;
    int bytes;
    int wcode; /* weights.bin dtype code, -1 if not storable there */
} dtype_info;

static const dtype_info DTYPES[] = {
    {"float32", {2, 32, 1}, 4, 0}, {"float16", {2, 16, 1}, 2, 1}, {"bfloat16", {4, 16, 1}, 2, -1},
    {"int64", {0, 64, 1}, 8, -1},  {"int32", {0, 32, 1}, 4, 4},   {"uint32", {1, 32, 1}, 4, 2},
    {"int8", {0, 8, 1}, 1, 3},     {"uint8", {1, 8, 1}, 1, 5},
};
#define N_DTYPES ((int)(sizeof(DTYPES) / sizeof(DTYPES[0])))

enum { ARG_INPUT, ARG_SCALAR, ARG_WEIGHT, ARG_CACHE, ARG_TENSOR };

/* Named inputs of the plan entries (docs/minicpmv.md); "tokens" is int32, the others float32 [n, width]. */
enum { IN_TOKENS, IN_EMBEDS, IN_PATCHES, IN_POS_INTERP, IN_KEY_POS, N_INPUTS };
static const char* const INPUT_NAMES[N_INPUTS] = {"tokens", "embeds", "patches", "pos_interp", "key_pos"};

/* The plan entries: prefill/decode of every bundle, embed/prefill_embeds/vision of MiniCPM-V bundles. */
enum { E_PREFILL, E_DECODE, E_EMBED, E_PREFILL_EMBEDS, E_VISION, N_ENTRIES };
static const char* const ENTRY_NAMES[N_ENTRIES] = {"prefill", "decode", "embed", "prefill_embeds", "vision"};
_Static_assert((int)ARG_INPUT == (int)MCPM_GPU_ARG_INPUT && (int)ARG_SCALAR == (int)MCPM_GPU_ARG_SCALAR &&
                   (int)ARG_WEIGHT == (int)MCPM_GPU_ARG_WEIGHT && (int)ARG_CACHE == (int)MCPM_GPU_ARG_CACHE &&
                   (int)ARG_TENSOR == (int)MCPM_GPU_ARG_TENSOR,
               "arg kinds shared with the GPU dispatcher");

typedef struct {
    int kind;
    int dtype;          /* index into DTYPES */
    int scalar_pos;     /* ARG_SCALAR: 1 = "pos", 0 = "n" */
    int index;          /* ARG_WEIGHT: weight index; ARG_CACHE: layer; ARG_TENSOR: storage id; ARG_INPUT: IN_* */
    int which_v;        /* ARG_CACHE: 0 = k, 1 = v */
    int64_t offset;     /* ARG_TENSOR: bytes into the storage */
    int ndim;
    int64_t a[MCPM_MAX_NDIM], b[MCPM_MAX_NDIM]; /* dim i = a[i] * n + b[i] */
} plan_arg;

typedef struct {
    int kernel;         /* index into model->kernel_names / kernel_fns */
    int first_arg;      /* into model->args (and the parallel any/dl/shape arrays) */
    int nargs;
} plan_call;

typedef struct {
    const char* name;   /* ENTRY_NAMES[type] */
    int type;           /* E_* */
    int present;
    int n_max;
    int n_storages;
    int64_t* storage_size;   /* int64[n_storages], bytes */
    unsigned char** storage; /* n_storages pointers to uint8[storage_size[i]], 64-byte aligned */
    unsigned char* input[N_INPUTS]; /* the inputs this entry reads (NULL otherwise), 64-byte aligned:
                                       tokens int32[n_max], embeds float32[n_max, D], patches float32[n_max, 3*p*p],
                                       pos_interp float32[n_max, G*G], key_pos float32[n_max, D] */
    int n_calls;
    plan_call* calls;        /* plan_call[n_calls] */
    plan_arg output;         /* prefill/decode/prefill_embeds: logits [1 or n, vocab] float32; embed: [n, D] float32;
                                vision: features [Q, D] float32 */
} plan_entry;

struct mcpm_model {
    char err[MCPM_ERR_LEN];
    int max_ctx, chunk, vocab, num_layers;
    int pos;                    /* tokens in the context */
    int cache_dtype;
    int64_t cache_shape[3];     /* [max_ctx, kv_heads, head_dim] */
    size_t cache_bytes;
    unsigned char** caches;     /* 2*num_layers pointers to uint8[cache_bytes]: k0, v0, k1, v1, ... (into cache_map) */
    void* cache_map;            /* uint8[cache_map_size]: anonymous mapping of every cache, page by page on first
                                   write (rows past the position are never touched: no dirty memory for them) */
    size_t cache_map_size;
    int n_weights;
    unsigned char** weight_data;/* n_weights pointers into the weights.bin mapping */
    int n_kernels;
    mcpm_kernel_fn* kernel_fns; /* [n_kernels] */
    char** kernel_names;        /* [n_kernels] */
    int n_args;
    plan_arg* args;             /* plan_arg[n_args]: every call's args, both entries */
    mcpm_ffi_any* any;          /* mcpm_ffi_any[n_args]: packed args, data pointers filled at load */
    mcpm_dltensor* dl;          /* mcpm_dltensor[n_args] */
    int64_t* shapes;            /* int64[n_args * MCPM_MAX_NDIM] */
    plan_entry prefill, decode;
    plan_entry embed, prefill_embeds, vision; /* MiniCPM-V bundles only (present = 0 otherwise) */
    mcpm_vision_info vinfo;     /* plan.json "vision" (all 0 without a vision entry) */
    double image_encode_ms;     /* stats of the last mcpm_encode_image (mcpm_model_set_image_stats) */
    int image_slices, image_patches;
    void* map;                  /* weights.bin mapping, uint8[map_size] */
    size_t map_size;
    int pool_ready;
    mcpm_pool pool;
    mcpm_sampler sampler;       /* scratch + RNG of mcpm_generate, allocated on its first call */
    int32_t* history;           /* int32[max_ctx + 1]: prompt + generated tokens of the current mcpm_generate */
    float* logits;              /* float[vocab] */
    unsigned char* sampleable;  /* uint8[vocab]: ids mcpm_generate may draw (mcpm_set_sampleable); NULL = all */
    double load_ms;             /* stats of mcpm_model_load and of the last mcpm_generate */
    int prefill_tokens, decode_tokens;
    double prefill_ms, decode_ms, ttft_ms;
    char* bundle_dir;           /* char[strlen + 1]: the bundle_dir of mcpm_model_load (for mcpm_session_new) */
    const char* want_variant;   /* mcpm_params.kernel_variant during mcpm_model_load only */
    char variant[32];           /* the kernel variant in use ("" = the plan has none) */
    mcpm_gpu* gpu;              /* non-NULL: prefill/decode run on the GPU (mcpm_opencl.c) */
    const char* want_device;    /* mcpm_params.device during mcpm_model_load only: "cpu", "gpu", "auto" */
    int want_profile;           /* mcpm_params.profile during mcpm_model_load only */
    const char* want_cache_dir; /* mcpm_params.cache_dir during mcpm_model_load only */
    char notice[MCPM_ERR_LEN];  /* why device "auto" runs on the CPU ("" if it does not) */
};

const char* mcpm_model_bundle_dir(const struct mcpm_model* model) { return model->bundle_dir; }

char* mcpm_model_error_buffer(struct mcpm_model* model) { return model->err; }

static int seterr(char* err, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
static int seterr(char* err, const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, MCPM_ERR_LEN, fmt, ap);
    va_end(ap);
    return -1;
}

static int dtype_by_name(const char* s) {
    for (int i = 0; s && i < N_DTYPES; i++)
        if (!strcmp(DTYPES[i].name, s)) return i;
    return -1;
}

static void* aligned_zeroed(size_t bytes) {
    size_t size = (bytes + MCPM_ALIGN - 1) / MCPM_ALIGN * MCPM_ALIGN;
    void* p = mcpm_aligned_alloc(size ? size : MCPM_ALIGN);
    if (p) memset(p, 0, size ? size : MCPM_ALIGN);
    return p;
}

/* The KV caches: one anonymous mapping (zero pages that cost no memory until a row is written), each cache
 * MCPM_ALIGN-aligned inside it. */
static int alloc_caches(mcpm_model* m) {
    size_t stride = (m->cache_bytes + MCPM_ALIGN - 1) / MCPM_ALIGN * MCPM_ALIGN, n = 2 * (size_t)m->num_layers;
    if (stride && n > SIZE_MAX / stride) return seterr(m->err, "KV cache size overflows");
    m->cache_map_size = stride * n > 0 ? stride * n : MCPM_ALIGN;
    void* p = mmap(NULL, m->cache_map_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        m->cache_map_size = 0;
        return seterr(m->err, "out of memory: the KV cache needs %zu bytes (export with a shorter --context-length)",
                      stride * n);
    }
    m->cache_map = p;
    for (size_t i = 0; i < n; i++) m->caches[i] = (unsigned char*)p + i * stride;
    return 0;
}

static void free_caches(mcpm_model* m) {
    if (m->cache_map) munmap(m->cache_map, m->cache_map_size);
    m->cache_map = NULL;
    m->cache_map_size = 0;
    for (int i = 0; m->caches && i < 2 * m->num_layers; i++) m->caches[i] = NULL;
}

static uint32_t crc32_update(uint32_t crc, const unsigned char* p, size_t n) {
    uint32_t table[256]; /* CRC-32 (zlib polynomial), built per call: used only at load */
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        table[i] = c;
    }
    crc = ~crc;
    for (size_t i = 0; i < n; i++) crc = table[(crc ^ p[i]) & 0xFF] ^ (crc >> 8);
    return ~crc;
}

static uint32_t rd32(const unsigned char* p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint64_t rd64(const unsigned char* p) { uint64_t v; memcpy(&v, p, 8); return v; }

/* ---------------------------------------------------------------- weights.bin */

typedef struct {
    char name[65];
    int dtype;        /* index into DTYPES */
    int ndim;
    int64_t shape[4];
    uint64_t offset;  /* from data_offset */
    uint64_t bytes;
} wentry;

/* Maps and validates weights.bin; *entries = wentry[*count] (caller frees), *data = start of the data section. */
static int load_weights(mcpm_model* m, const char* path, int verify, wentry** entries, uint32_t* count,
                        const unsigned char** data) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return seterr(m->err, "%s is missing: re-export the bundle", path);
    struct stat st;
    if (fstat(fd, &st) || st.st_size < 64) {
        close(fd);
        return seterr(m->err, "%s is truncated (%lld bytes): re-export or re-copy the bundle", path,
                      (long long)st.st_size);
    }
    m->map_size = (size_t)st.st_size;
    m->map = mmap(NULL, m->map_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (m->map == MAP_FAILED) { m->map = NULL; return seterr(m->err, "%s: mmap failed", path); }
    const unsigned char* b = m->map; /* uint8[map_size] */
    if (memcmp(b, "MCPMWGT1", 8)) return seterr(m->err, "%s is not an mcpm weights file (bad magic): re-export the bundle", path);
    uint32_t version = rd32(b + 8), n = rd32(b + 12);
    uint64_t table_offset = rd64(b + 16), data_offset = rd64(b + 24), data_bytes = rd64(b + 32);
    uint32_t table_crc = rd32(b + 40), data_crc = rd32(b + 44);
    if (version != 1)
        return seterr(m->err, "%s has weights format version %u, this mcpm reads 1: re-export the bundle", path, version);
    if (table_offset != 64 || data_offset < 64 + (uint64_t)n * 128 || data_offset % MCPM_ALIGN)
        return seterr(m->err, "%s has a corrupted header: re-export the bundle", path);
    if (data_offset > m->map_size || data_bytes > m->map_size - data_offset)
        return seterr(m->err, "%s is truncated (%zu of %llu bytes): re-copy it", path, m->map_size,
                      (unsigned long long)(data_offset + data_bytes));
    if (crc32_update(0, b + 64, (size_t)n * 128) != table_crc)
        return seterr(m->err, "%s: tensor table checksum mismatch: the file is corrupted, re-copy it", path);
    if (verify && crc32_update(0, b + data_offset, data_bytes) != data_crc)
        return seterr(m->err, "%s: data checksum mismatch: the file is corrupted, re-copy it", path);
    static const int code_to_dtype[6] = {0, 1, 5, 6, 4, 7}; /* weights.bin code -> DTYPES index */
    wentry* es = calloc(n ? n : 1, sizeof(wentry)); /* wentry[n] */
    if (!es) return seterr(m->err, "out of memory");
    for (uint32_t i = 0; i < n; i++) {
        const unsigned char* r = b + 64 + (size_t)i * 128;
        wentry* e = &es[i];
        memcpy(e->name, r, 64);
        e->name[64] = '\0';
        uint32_t code = rd32(r + 64), ndim = rd32(r + 68);
        int bad = code > 5 || ndim > 4;
        uint64_t expected = 1;
        for (uint32_t d = 0; !bad && d < ndim; d++) {
            e->shape[d] = (int64_t)rd64(r + 72 + 8 * d);
            if (e->shape[d] < 0 || (e->shape[d] && expected > UINT64_MAX / (uint64_t)e->shape[d])) bad = 1;
            else expected *= (uint64_t)e->shape[d];
        }
        if (bad) { /* the message uses e->name: set it before freeing es */
            seterr(m->err, "%s: tensor '%s' has a corrupted entry: re-export the bundle", path, e->name);
            free(es);
            return -1;
        }
        e->dtype = code_to_dtype[code];
        e->ndim = (int)ndim;
        e->offset = rd64(r + 104);
        e->bytes = rd64(r + 112);
        if (e->offset % MCPM_ALIGN || e->bytes != expected * (uint64_t)DTYPES[e->dtype].bytes ||
            e->offset > data_bytes || e->bytes > data_bytes - e->offset) {
            seterr(m->err, "%s: tensor '%s' lies outside the file or is misaligned: re-export", path, e->name);
            free(es);
            return -1;
        }
    }
    *entries = es;
    *count = n;
    *data = b + data_offset;
    return 0;
}

/* ---------------------------------------------------------------- plan.json */

typedef struct {
    mcpm_model* m;
    const json_doc* doc;
    const char* path;
} plan_ctx;

static int plan_err(plan_ctx* pc, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
static int plan_err(plan_ctx* pc, const char* fmt, ...) {
    char* err = pc->m->err; /* char[MCPM_ERR_LEN] */
    int used = snprintf(err, MCPM_ERR_LEN, "%s: invalid plan: ", pc->path);
    if (used < 0 || used >= MCPM_ERR_LEN) return -1;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err + used, MCPM_ERR_LEN - (size_t)used, fmt, ap);
    va_end(ap);
    return -1;
}
#define PLAN_ERR plan_err

static int get_int(plan_ctx* pc, const json_node* obj, const char* key, int64_t lo, int64_t hi, int64_t* out,
                   const char* where) {
    *out = 0; /* defined on failure too (gcc -O3 cannot see that callers stop there) */
    const json_node* v = json_get(pc->doc, obj, key);
    if (!v || v->type != JSON_NUMBER || !v->is_int) return PLAN_ERR(pc, "%s: missing or malformed field '%s'", where, key);
    if (v->i < lo || v->i > hi) return PLAN_ERR(pc, "%s: field '%s' = %lld out of range %lld..%lld", where, key,
                                                (long long)v->i, (long long)lo, (long long)hi);
    *out = v->i;
    return 0;
}

static const char* get_str(plan_ctx* pc, const json_node* obj, const char* key, const char* where) {
    const json_node* v = json_get(pc->doc, obj, key);
    if (!v || v->type != JSON_STRING) { PLAN_ERR(pc, "%s: missing or malformed field '%s'", where, key); return NULL; }
    return v->str;
}

static const json_node* get_typed(plan_ctx* pc, const json_node* obj, const char* key, json_type t, const char* where) {
    const json_node* v = json_get(pc->doc, obj, key);
    if (!v || v->type != t) { PLAN_ERR(pc, "%s: missing or malformed field '%s'", where, key); return NULL; }
    return v;
}

static int64_t dim_at(const plan_arg* a, int d, int64_t n) { return a->a[d] * n + a->b[d]; }

#define MAX_DIM_VALUE ((int64_t)1 << 40)
#define ARG_BYTES_HUGE ((int64_t)1 << 62) /* "too large": above every storage, weight and input size */

/* Bytes of arg a for n tokens, saturated at ARG_BYTES_HUGE (dims come from plan.json: up to 2^40 each, and a
 * negative dim counts as huge), so every size check against it fails instead of overflowing. */
static int64_t arg_bytes(const plan_arg* a, int64_t n) {
    int64_t size = DTYPES[a->dtype].bytes;
    for (int d = 0; d < a->ndim; d++) {
        int64_t dim = a->a[d] * n + a->b[d]; /* |a|, |b| <= 2^40 and 0 <= n <= 2^31: no overflow */
        if (dim < 0 || (dim > 0 && size > ARG_BYTES_HUGE / dim)) return ARG_BYTES_HUGE;
        size *= dim;
    }
    return size;
}

/* 1 if entry type reads input in (IN_*). */
static int input_allowed(int type, int in) {
    switch (type) {
    case E_PREFILL_EMBEDS: return in == IN_EMBEDS;
    case E_VISION: return in == IN_PATCHES || in == IN_POS_INTERP || in == IN_KEY_POS;
    default: return in == IN_TOKENS;
    }
}

/* Elements per row of input in (IN_*): tokens 1, embeds D, patches 3*p*p, pos_interp G*G, key_pos D. */
static int64_t input_width(const mcpm_model* m, int in) {
    const mcpm_vision_info* v = &m->vinfo;
    switch (in) {
    case IN_EMBEDS: case IN_KEY_POS: return v->hidden;
    case IN_PATCHES: return 3 * (int64_t)v->patch * v->patch;
    case IN_POS_INTERP: return (int64_t)v->pos_grid * v->pos_grid;
    default: return 1;
    }
}

static int parse_arg(plan_ctx* pc, const json_node* j, plan_arg* a, const plan_entry* e, const char* where) {
    mcpm_model* m = pc->m;
    memset(a, 0, sizeof(*a));
    const char* kind = j && j->type == JSON_OBJECT ? get_str(pc, j, "kind", where) : NULL;
    if (!kind) return PLAN_ERR(pc, "%s: unknown arg", where);
    static const char* kinds[] = {"input", "scalar", "weight", "cache", "tensor"};
    a->kind = -1;
    for (int k = 0; k < 5; k++)
        if (!strcmp(kind, kinds[k])) a->kind = k;
    if (a->kind < 0) return PLAN_ERR(pc, "%s: unknown arg kind '%s'", where, kind);
    const char* dt = json_get(pc->doc, j, "dtype") ? get_str(pc, j, "dtype", where) : "int64";
    if (!dt) return -1;
    if ((a->dtype = dtype_by_name(dt)) < 0) return PLAN_ERR(pc, "%s: unknown dtype '%s'", where, dt);
    if (a->kind == ARG_SCALAR) {
        const char* name = get_str(pc, j, "name", where);
        if (!name) return -1;
        if (strcmp(name, "pos") && strcmp(name, "n")) return PLAN_ERR(pc, "%s: unknown scalar '%s'", where, name);
        a->scalar_pos = !strcmp(name, "pos");
        return 0;
    }
    const json_node* shape = get_typed(pc, j, "shape", JSON_ARRAY, where);
    if (!shape) return -1;
    if (shape->count > MCPM_MAX_NDIM) return PLAN_ERR(pc, "%s: %d dims (at most %d)", where, shape->count, MCPM_MAX_NDIM);
    a->ndim = shape->count;
    int d = 0;
    for (const json_node* dim = json_child(pc->doc, shape); dim; dim = json_next(pc->doc, dim), d++) {
        const json_node* x = json_at(pc->doc, dim, 0);
        const json_node* y = json_at(pc->doc, dim, 1);
        if (dim->type != JSON_ARRAY || dim->count != 2 || x->type != JSON_NUMBER || !x->is_int ||
            y->type != JSON_NUMBER || !y->is_int || x->i < -MAX_DIM_VALUE || x->i > MAX_DIM_VALUE ||
            y->i < -MAX_DIM_VALUE || y->i > MAX_DIM_VALUE)
            return PLAN_ERR(pc, "%s: bad shape", where);
        a->a[d] = x->i;
        a->b[d] = y->i;
    }
    int64_t ns[2] = {1, e->n_max};
    for (int k = 0; k < 2; k++) /* dims are linear in n: checking both ends covers 1..n_max */
        for (d = 0; d < a->ndim; d++)
            if (dim_at(a, d, ns[k]) < 0) return PLAN_ERR(pc, "%s: negative dim at n=%lld", where, (long long)ns[k]);
    int64_t bytes = arg_bytes(a, 1) > arg_bytes(a, e->n_max) ? arg_bytes(a, 1) : arg_bytes(a, e->n_max);
    int64_t v;
    switch (a->kind) {
    case ARG_INPUT: {
        const char* name = get_str(pc, j, "name", where);
        if (!name) return -1;
        a->index = -1;
        for (int k = 0; k < N_INPUTS; k++)
            if (!strcmp(name, INPUT_NAMES[k]) && input_allowed(e->type, k)) a->index = k;
        if (a->index < 0) return PLAN_ERR(pc, "%s: unknown input '%s'", where, name);
        if (a->index == IN_TOKENS) {
            if (strcmp(DTYPES[a->dtype].name, "int32") || bytes > 4 * (int64_t)e->n_max)
                return PLAN_ERR(pc, "%s: tokens must be int32 within [n_max]", where);
            return 0;
        }
        int64_t width = input_width(m, a->index);
        int n_dep = 0; /* dims depending on n: at most one, so that the size is linear in n */
        for (d = 0; d < a->ndim; d++) n_dep += a->a[d] != 0;
        if (strcmp(DTYPES[a->dtype].name, "float32") || n_dep > 1 || arg_bytes(a, 1) > 4 * width ||
            arg_bytes(a, e->n_max) > 4 * width * e->n_max)
            return PLAN_ERR(pc, "%s: %s must be float32 within [n, %lld]", where, name, (long long)width);
        return 0;
    }
    case ARG_WEIGHT: {
        if (get_int(pc, j, "index", 0, m->n_weights - 1, &v, where)) return -1;
        a->index = (int)v;
        return 0; /* dtype/shape checked against the plan's weights list by the caller */
    }
    case ARG_CACHE: {
        if (get_int(pc, j, "layer", 0, m->num_layers - 1, &v, where)) return -1;
        a->index = (int)v;
        const char* which = get_str(pc, j, "which", where);
        if (!which) return -1;
        if (strcmp(which, "k") && strcmp(which, "v")) return PLAN_ERR(pc, "%s: bad cache ref '%s'", where, which);
        a->which_v = !strcmp(which, "v");
        if (a->dtype != m->cache_dtype || bytes > (int64_t)m->cache_bytes)
            return PLAN_ERR(pc, "%s: cache arg larger than the cache or of another dtype", where);
        return 0;
    }
    case ARG_TENSOR: {
        if (get_int(pc, j, "storage", INT32_MIN, INT32_MAX, &v, where)) return -1;
        if (v < 0 || v >= e->n_storages)
            return PLAN_ERR(pc, "%s: storage id %lld out of range 0..%d", where, (long long)v, e->n_storages - 1);
        a->index = (int)v;
        if (get_int(pc, j, "offset", INT64_MIN / 4, INT64_MAX / 4, &a->offset, where)) return -1;
        int64_t size = e->storage_size[a->index];
        if (a->offset < 0 || a->offset % MCPM_ALIGN || a->offset + bytes > size)
            return PLAN_ERR(pc, "%s: bytes %lld..%lld outside storage %d of %lld bytes", where, (long long)a->offset,
                            (long long)(a->offset + bytes), a->index, (long long)size);
        return 0;
    }
    }
    return 0;
}

/* First pass counts args; second (args != NULL) fills them. */
static int parse_entry(plan_ctx* pc, const json_node* entries, plan_entry* e, int type, int* n_args, int fill) {
    mcpm_model* m = pc->m;
    const char* name = ENTRY_NAMES[type];
    const json_node* j = json_get(pc->doc, entries, name);
    char where[160];
    if (!j) return PLAN_ERR(pc, "missing entry '%s'", name);
    if (j->type != JSON_OBJECT) return PLAN_ERR(pc, "entry '%s' is not an object", name);
    int64_t v;
    if (get_int(pc, j, "n_max", 1, 1 << 20, &v, name)) return -1;
    e->name = name;
    e->type = type;
    e->n_max = (int)v;
    const json_node* st = get_typed(pc, j, "storages", JSON_ARRAY, name);
    const json_node* calls = st ? get_typed(pc, j, "calls", JSON_ARRAY, name) : NULL;
    const json_node* out = calls ? get_typed(pc, j, "output", JSON_OBJECT, name) : NULL;
    if (!out) return -1;
    if (!fill) {
        for (const json_node* c = json_child(pc->doc, calls); c; c = json_next(pc->doc, c)) {
            const json_node* args = json_get(pc->doc, c, "args");
            if (!args || args->type != JSON_ARRAY) return PLAN_ERR(pc, "%s: call without args", name);
            *n_args += args->count;
        }
        return 0;
    }
    e->n_storages = st->count;
    e->storage_size = calloc((size_t)st->count + 1, sizeof(int64_t));
    e->storage = calloc((size_t)st->count + 1, sizeof(unsigned char*));
    e->calls = calloc((size_t)calls->count + 1, sizeof(plan_call));
    if (!e->storage_size || !e->storage || !e->calls) return seterr(m->err, "out of memory");
    for (int k = 0; k < N_INPUTS; k++) /* float32 or int32 [n_max, width] */
        if (input_allowed(type, k) && !(e->input[k] = aligned_zeroed(4 * (size_t)e->n_max * (size_t)input_width(m, k))))
            return seterr(m->err, "out of memory");
    int i = 0;
    for (const json_node* s = json_child(pc->doc, st); s; s = json_next(pc->doc, s), i++) {
        int64_t id, size, align = MCPM_ALIGN;
        snprintf(where, sizeof where, "%s storage #%d", name, i);
        if (get_int(pc, s, "id", INT32_MIN, INT32_MAX, &id, where) ||
            get_int(pc, s, "size", INT64_MIN, (int64_t)1 << 40, &size, where))
            return -1;
        if (json_get(pc->doc, s, "align") && get_int(pc, s, "align", INT32_MIN, INT32_MAX, &align, where)) return -1;
        if (id != i || size < 0 || align < 1)
            return PLAN_ERR(pc, "%s: storage #%d has id %lld, size %lld, align %lld", name, i, (long long)id,
                            (long long)size, (long long)align);
        e->storage_size[i] = size;
        if (!(e->storage[i] = aligned_zeroed((size_t)size))) return seterr(m->err, "out of memory");
    }
    i = 0;
    for (const json_node* c = json_child(pc->doc, calls); c; c = json_next(pc->doc, c), i++) {
        const char* kname = get_str(pc, c, "kernel", name);
        if (!kname) return -1;
        snprintf(where, sizeof where, "%s call %d (%.100s)", name, i, kname);
        plan_call* call = &e->calls[i];
        call->kernel = -1;
        for (int k = 0; k < m->n_kernels; k++)
            if (!strcmp(m->kernel_names[k], kname)) call->kernel = k;
        if (call->kernel < 0) return PLAN_ERR(pc, "%s: unknown kernel '%s'", where, kname);
        const json_node* args = json_get(pc->doc, c, "args");
        call->first_arg = *n_args;
        call->nargs = args->count;
        for (const json_node* a = json_child(pc->doc, args); a; a = json_next(pc->doc, a)) {
            plan_arg* pa = &m->args[(*n_args)++];
            if (parse_arg(pc, a, pa, e, where)) return -1;
            if (pa->kind == ARG_WEIGHT) {
                const char* wname = get_str(pc, a, "name", where);
                if (!wname) return -1;
                (void)wname; /* informational; the index is authoritative (as in plan.py) */
            }
        }
    }
    e->n_calls = calls->count;
    snprintf(where, sizeof where, "%s output", name);
    if (parse_arg(pc, out, &e->output, e, where)) return -1;
    if (e->output.kind != ARG_TENSOR) return PLAN_ERR(pc, "%s: output must be a planned tensor", name);
    const plan_arg* o = &e->output;
    if (type == E_EMBED || type == E_VISION) { /* embed [n, D], vision [Q, D] */
        int64_t rows1 = type == E_EMBED ? 1 : m->vinfo.query_num, rows2 = type == E_EMBED ? e->n_max : rows1;
        int64_t width = m->vinfo.hidden;
        if (strcmp(DTYPES[o->dtype].name, "float32") || o->ndim < 1 || o->a[o->ndim - 1] || o->b[o->ndim - 1] != width ||
            arg_bytes(o, 1) != 4 * rows1 * width || arg_bytes(o, e->n_max) != 4 * rows2 * width)
            return PLAN_ERR(pc, "%s: output must be float32 [%s, hidden %lld]", name, type == E_EMBED ? "n" : "query_num",
                            (long long)width);
        e->present = 1;
        return 0;
    }
    if (strcmp(DTYPES[o->dtype].name, "float32") || o->ndim < 1 || dim_at(o, o->ndim - 1, 1) != m->vocab ||
        dim_at(o, o->ndim - 1, e->n_max) != m->vocab || arg_bytes(o, 1) < 4 * (int64_t)m->vocab)
        return PLAN_ERR(pc, "%s: output must be float32 [..., vocab_size %d]", name, m->vocab);
    e->present = 1;
    return 0;
}

int mcpm_plain_file_name(const char* name) {
    if (!name || !name[0] || !strcmp(name, ".") || !strcmp(name, "..")) return 0;
    for (const char* c = name; *c; c++)
        if (*c == '/' || *c == '\\' || (unsigned char)*c < 0x20) return 0;
    return 1;
}

char* mcpm_read_file(const char* path, size_t* len) {
    FILE* f = fopen(path, "rb");
    if (!f) return NULL;
    char* buf = NULL;
    if (!fseek(f, 0, SEEK_END)) {
        long size = ftell(f);
        if (size >= 0 && !fseek(f, 0, SEEK_SET) && (buf = malloc((size_t)size + 1))) {
            if (fread(buf, 1, (size_t)size, f) != (size_t)size) { free(buf); buf = NULL; }
            else { buf[size] = '\0'; *len = (size_t)size; }
        }
    }
    fclose(f);
    return buf;
}

/* Checks a weight arg against the plan's weights list (dtype and shape [[0, x], ...]). */
static int check_weight_arg(plan_ctx* pc, const plan_arg* a, const json_node* winfo, const char* where) {
    const char* dt = get_str(pc, winfo, "dtype", "weights");
    const json_node* shape = get_typed(pc, winfo, "shape", JSON_ARRAY, "weights");
    if (!dt || !shape) return -1;
    int ok = !strcmp(dt, DTYPES[a->dtype].name) && shape->count == a->ndim;
    int d = 0;
    for (const json_node* x = json_child(pc->doc, shape); ok && x; x = json_next(pc->doc, x), d++)
        ok = x->type == JSON_NUMBER && x->is_int && a->a[d] == 0 && a->b[d] == x->i;
    if (!ok) return PLAN_ERR(pc, "%s: weight %d does not match the arg's dtype/shape", where, a->index);
    return 0;
}

/* Device "gpu" / "auto": hands the parsed plan to the OpenCL dispatcher (mcpm_opencl.c), which reads the plan's
 * "gpu" launch records (docs/gpu-plan.md). "gpu" fails the load when that is impossible; "auto" keeps the CPU path
 * and says why in m->notice. */
static int setup_gpu(mcpm_model* m, plan_ctx* pc, const json_node* root, const char* dir) {
    int want_gpu = !strcmp(m->want_device, "gpu");
    if (m->vision.present) { /* the GPU dispatchers run prefill/decode only */
        if (want_gpu)
            return seterr(m->err, "%s is a MiniCPM-V bundle (vision encoder): it runs on the CPU only, use device "
                          "\"cpu\"", dir);
        snprintf(m->notice, sizeof m->notice, "device auto: MiniCPM-V bundles (vision encoder) run on the CPU only");
        return 0;
    }
    const json_node* gpu = json_get(pc->doc, root, "gpu");
    if (!gpu) {
        if (want_gpu)
            return seterr(m->err, "%s has no GPU kernels (plan.json has no \"gpu\" section): re-export it with "
                          "--device gpu, or use device \"cpu\"", dir);
        snprintf(m->notice, sizeof m->notice,
                 "device auto: the bundle has no GPU kernels (export it with --device gpu): running on the CPU");
        return 0;
    }
    char err[MCPM_ERR_LEN] = "";
    mcpm_gpu_desc d;
    memset(&d, 0, sizeof d);
    mcpm_gpu_arg* args = calloc((size_t)m->n_args + 1, sizeof(mcpm_gpu_arg));       /* [n_args] */
    mcpm_gpu_call* calls = calloc((size_t)m->prefill.n_calls + (size_t)m->decode.n_calls + 1, sizeof(mcpm_gpu_call));
    if (!args || !calls) {
        snprintf(err, sizeof err, "out of memory");
    } else if (gpu->type != JSON_OBJECT) {
        snprintf(err, sizeof err, "%.900s: invalid plan: gpu: not an object", pc->path);
    } else {
        const plan_entry* es[2] = {&m->prefill, &m->decode};
        int nc = 0;
        for (int k = 0; k < 2; k++) {
            const plan_entry* e = es[k];
            for (int c = 0; c < e->n_calls; c++) {
                calls[nc + c].kernel = e->calls[c].kernel;
                calls[nc + c].first_arg = e->calls[c].first_arg;
                calls[nc + c].nargs = e->calls[c].nargs;
                for (int i = e->calls[c].first_arg; i < e->calls[c].first_arg + e->calls[c].nargs; i++) {
                    const plan_arg* a = &m->args[i];
                    int64_t b1 = arg_bytes(a, 1), b2 = arg_bytes(a, e->n_max);
                    args[i].kind = a->kind;
                    args[i].index = a->index;
                    args[i].which_v = a->which_v;
                    args[i].offset = a->offset;
                    args[i].bytes = a->kind == ARG_SCALAR ? 0 : b1 > b2 ? b1 : b2;
                }
            }
            d.entries[k].name = e->name;
            d.entries[k].n_max = e->n_max;
            d.entries[k].n_storages = e->n_storages;
            d.entries[k].storage_size = e->storage_size;
            d.entries[k].n_calls = e->n_calls;
            d.entries[k].calls = calls + nc;
            d.entries[k].output_storage = e->output.index;
            nc += e->n_calls;
        }
        d.bundle_dir = dir;
        d.plan_path = pc->path;
        d.doc = pc->doc;
        d.gpu = gpu;
        d.max_ctx = m->max_ctx;
        d.n_kernels = m->n_kernels;
        d.kernel_names = m->kernel_names;
        d.n_weights = m->n_weights;
        d.weight_data = m->weight_data;
        d.num_layers = m->num_layers;
        d.cache_bytes = m->cache_bytes;
        d.n_args = m->n_args;
        d.args = args;
        d.profile = m->want_profile;
        d.cache_dir = m->want_cache_dir;
        m->gpu = mcpm_gpu_open(&d, err, sizeof err);
    }
    free(args);
    free(calls);
    if (!m->gpu) {
        if (want_gpu) return seterr(m->err, "%s", err);
        snprintf(m->notice, sizeof m->notice, "device auto: running on the CPU: %.960s", err);
        return 0;
    }
    /* the device holds the KV caches now: drop the CPU copies (the largest; the small storages stay, as CPU args are
     * bound to them), and the weight pages read for the upload */
    free_caches(m);
    if (m->map) madvise(m->map, m->map_size, MADV_DONTNEED);
    return 0;
}

/* 1 if this CPU has the named feature of a kernel variant's "requires" (ARM64 Linux/Android: getauxval HWCAP;
 * Apple arm64: sysctlbyname("hw.optional.arm.FEAT_*")). */
static int cpu_has(const char* feature) {
#if defined(__aarch64__) && defined(__linux__)
    unsigned long hw = getauxval(AT_HWCAP), hw2 = getauxval(AT_HWCAP2);
    if (!strcmp(feature, "dotprod")) return (hw & (1UL << 20)) != 0; /* HWCAP_ASIMDDP */
    if (!strcmp(feature, "fp16")) return (hw & (1UL << 10)) != 0;    /* HWCAP_ASIMDHP */
    if (!strcmp(feature, "i8mm")) return (hw2 & (1UL << 13)) != 0;   /* HWCAP2_I8MM */
#elif defined(__APPLE__) && defined(__aarch64__)
    /* iOS / macOS on Apple silicon (and the arm64 simulator): sysctl reports 1 for a present feature; an unknown
     * name (older OS) fails and counts as absent. */
    const char* key = !strcmp(feature, "dotprod") ? "hw.optional.arm.FEAT_DotProd"
                      : !strcmp(feature, "fp16")  ? "hw.optional.arm.FEAT_FP16"
                      : !strcmp(feature, "i8mm")  ? "hw.optional.arm.FEAT_I8MM"
                                                  : NULL;
    int value = 0;
    size_t size = sizeof value;
    if (key && sysctlbyname(key, &value, &size, NULL, 0) == 0) return value != 0;
#endif
    (void)feature;
    return 0;
}

/* Chooses the kernel variant: the forced one (m->want_variant) or the first whose requires this CPU has; sets
 * *obj / *prefix to its object file and symbol prefix and m->variant to its name. */
static int pick_variant(plan_ctx* pc, const json_node* root, const char** obj, const char** prefix) {
    mcpm_model* m = pc->m;
    const json_node* vs = get_typed(pc, root, "kernel_variants", JSON_ARRAY, "top level");
    if (!vs) return -1;
    if (vs->count < 1) return PLAN_ERR(pc, "kernel_variants is empty");
    char names[256] = "";
    for (const json_node* v = json_child(pc->doc, vs); v; v = json_next(pc->doc, v)) {
        const char* name = get_str(pc, v, "name", "kernel_variants");
        const char* vobj = name ? get_str(pc, v, "object_file", "kernel_variants") : NULL;
        const char* vpre = vobj ? get_str(pc, v, "symbol_prefix", "kernel_variants") : NULL;
        const json_node* req = vpre ? get_typed(pc, v, "requires", JSON_ARRAY, "kernel_variants") : NULL;
        if (!req) return -1;
        if (strlen(name) >= sizeof m->variant) return PLAN_ERR(pc, "kernel variant name too long");
        const char* lacking = NULL;
        for (const json_node* r = json_child(pc->doc, req); r; r = json_next(pc->doc, r)) {
            if (r->type != JSON_STRING) return PLAN_ERR(pc, "kernel variant %s: requires must be strings", name);
            if (!lacking && !cpu_has(r->str)) lacking = r->str;
        }
        if (m->want_variant && strcmp(m->want_variant, name)) {
            size_t used = strlen(names);
            snprintf(names + used, sizeof names - used, "%s%s", used ? ", " : "", name);
            continue;
        }
        if (lacking && m->want_variant)
            return seterr(m->err, "kernel variant '%s' needs the CPU feature '%s', which this CPU lacks: "
                          "leave the kernel variant unset to pick one automatically", name, lacking);
        if (lacking) continue;
        *obj = vobj;
        *prefix = vpre;
        snprintf(m->variant, sizeof m->variant, "%s", name);
        return 0;
    }
    if (m->want_variant)
        return seterr(m->err, "unknown kernel variant '%s' (this bundle has: %s)", m->want_variant, names);
    return PLAN_ERR(pc, "no kernel variant runs on this CPU (the last one must require nothing)");
}

/* plan.json "vision" (top level, or under "extra"): the sizes of the MiniCPM-V entries' inputs and outputs. */
static int parse_vision(plan_ctx* pc, const json_node* root) {
    mcpm_vision_info* v = &pc->m->vinfo;
    const json_node* j = json_get(pc->doc, root, "vision");
    const json_node* extra = json_get(pc->doc, root, "extra");
    if (!j && extra && extra->type == JSON_OBJECT) j = json_get(pc->doc, extra, "vision");
    if (!j || j->type != JSON_OBJECT) return PLAN_ERR(pc, "the vision entries need a \"vision\" section");
    static const char* keys[6] = {"patch", "pos_grid", "max_patches", "query_num", "hidden", "vision_hidden"};
    int* fields[6] = {&v->patch, &v->pos_grid, &v->max_patches, &v->query_num, &v->hidden, &v->vision_hidden};
    for (int k = 0; k < 6; k++) {
        int64_t x;
        if (get_int(pc, j, keys[k], 1, 1 << 20, &x, "vision")) return -1;
        *fields[k] = (int)x;
    }
    if (v->hidden % 4) return PLAN_ERR(pc, "vision: hidden %d is not a multiple of 4", v->hidden);
    if (v->patch > 1024 || v->pos_grid > 4096)
        return PLAN_ERR(pc, "vision: patch %d or pos_grid %d too large", v->patch, v->pos_grid);
    return 0;
}

static plan_entry* entry_at(mcpm_model* m, int type) {
    plan_entry* es[N_ENTRIES] = {&m->prefill, &m->decode, &m->embed, &m->prefill_embeds, &m->vision};
    return es[type];
}

/* Static kernel table: where the kernels come from a static library linked into an app (iOS), dlsym of the app's
 * own image is fragile and the linker drops archive members nothing references. There a generated C file
 * (mcpm_kernel_table.c of `mcpm-export --target ios`) defines mcpm_static_kernels() returning an array of
 * {symbol, function} ending with {NULL, NULL}; it references every kernel, so the linker keeps them, and the
 * runtime then resolves kernels in it instead of with dladdr/dlopen/dlsym. This weak default (no table) keeps the
 * dlsym path for every other build. */
typedef struct mcpm_static_kernel {
    const char* symbol; /* e.g. "__tvm_ffi_dotprod_rms_norm" (the C name: symbol_prefix + kernel name) */
    void* fn;           /* its address */
} mcpm_static_kernel;

MCPM_HIDDEN const mcpm_static_kernel* mcpm_static_kernels(void);
#ifndef MCPM_KERNEL_TABLE /* defined by builds that always link a table (the CMake static library): a weak default
                             in the same archive member would stop the linker from fetching the table from it */
__attribute__((weak)) const mcpm_static_kernel* mcpm_static_kernels(void) { return NULL; }
#endif

static int load_plan(mcpm_model* m, const char* dir, const char* path, const wentry* wes, uint32_t wcount,
                     const unsigned char* wdata) {
    size_t len = 0;
    char* text = mcpm_read_file(path, &len);
    if (!text) return seterr(m->err, "%s is missing: re-export the bundle", path);
    json_doc doc;
    char jerr[256];
    int rc = json_parse(&doc, text, len, jerr, sizeof jerr);
    free(text);
    if (rc) return seterr(m->err, "%s: invalid plan: not JSON (%s)", path, jerr);
    plan_ctx pcv = {m, &doc, path}, *pc = &pcv;
    const json_node* root = &doc.nodes[0];
    rc = -1;
    const char* magic = root->type == JSON_OBJECT ? get_str(pc, root, "magic", "top level") : NULL;
    int64_t v;
    const json_node *kernels, *cache, *weights, *entries, *cshape;
    const char *obj, *prefix, *cdt;
    if (!magic || strcmp(magic, "MCPMPLAN")) { PLAN_ERR(pc, "bad magic (not an mcpm plan)"); goto done; }
    if (get_int(pc, root, "version", 1, 1, &v, "top level")) goto done;
    if (get_int(pc, root, "max_ctx", 1, 1 << 24, &v, "top level")) goto done;
    m->max_ctx = (int)v;
    if (get_int(pc, root, "chunk", 1, m->max_ctx, &v, "top level")) goto done;
    m->chunk = (int)v;
    if (get_int(pc, root, "vocab_size", 1, INT32_MAX, &v, "top level")) goto done;
    m->vocab = (int)v;
    if (get_int(pc, root, "num_layers", 0, 1 << 16, &v, "top level")) goto done;
    m->num_layers = (int)v;
    obj = json_get(&doc, root, "object_file") ? get_str(pc, root, "object_file", "top level") : "kernels.o";
    prefix = json_get(&doc, root, "symbol_prefix") ? get_str(pc, root, "symbol_prefix", "top level") : "__tvm_ffi_";
    if (!obj || !prefix) goto done;
    if (json_get(&doc, root, "kernel_variants") && pick_variant(pc, root, &obj, &prefix)) goto done;
    if (!(kernels = get_typed(pc, root, "kernels", JSON_ARRAY, "top level")) ||
        !(cache = get_typed(pc, root, "cache", JSON_OBJECT, "top level")) ||
        !(weights = get_typed(pc, root, "weights", JSON_ARRAY, "top level")) ||
        !(entries = get_typed(pc, root, "entries", JSON_OBJECT, "top level")) ||
        !(cshape = get_typed(pc, cache, "shape", JSON_ARRAY, "cache")) || !(cdt = get_str(pc, cache, "dtype", "cache")))
        goto done;
    /* cache */
    if ((m->cache_dtype = dtype_by_name(cdt)) < 0) { PLAN_ERR(pc, "cache: unknown dtype '%s'", cdt); goto done; }
    if (cshape->count != 3) { PLAN_ERR(pc, "cache shape must be [max_ctx, kv_heads, head_dim]"); goto done; }
    m->cache_bytes = (size_t)DTYPES[m->cache_dtype].bytes;
    for (int d = 0; d < 3; d++) {
        const json_node* x = json_at(&doc, cshape, d);
        if (x->type != JSON_NUMBER || !x->is_int || x->i < 1 || x->i > (1 << 24)) { PLAN_ERR(pc, "bad cache shape"); goto done; }
        m->cache_shape[d] = x->i;
        m->cache_bytes *= (size_t)x->i;
    }
    if (m->cache_shape[0] != m->max_ctx) { PLAN_ERR(pc, "cache rows %lld != max_ctx %d", (long long)m->cache_shape[0], m->max_ctx); goto done; }
    if (!(m->caches = calloc(2 * (size_t)m->num_layers + 1, sizeof(unsigned char*)))) { seterr(m->err, "out of memory"); goto done; }
    if (alloc_caches(m)) goto done;
    /* kernels: resolve __tvm_ffi_<name> in this very library */
    {
        m->n_kernels = kernels->count;
        m->kernel_fns = calloc((size_t)m->n_kernels + 1, sizeof(mcpm_kernel_fn));
        m->kernel_names = calloc((size_t)m->n_kernels + 1, sizeof(char*));
        if (!m->kernel_fns || !m->kernel_names) { seterr(m->err, "out of memory"); goto done; }
        static const char anchor = 0;
        const mcpm_static_kernel* table = mcpm_static_kernels();
        Dl_info info;
        void* self = NULL;
        if (table) info.dli_fname = "the static kernel table";
        else if (dladdr(&anchor, &info) && info.dli_fname) self = dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD);
        if (!table && !self) { seterr(m->err, "cannot find the runtime library itself (dladdr/dlopen failed)"); goto done; }
        int k = 0;
        for (const json_node* kn = json_child(&doc, kernels); kn; kn = json_next(&doc, kn), k++) {
            if (kn->type != JSON_STRING) { if (self) dlclose(self); PLAN_ERR(pc, "kernel names must be strings"); goto done; }
            for (int j = 0; j < k; j++)
                if (!strcmp(m->kernel_names[j], kn->str)) { if (self) dlclose(self); PLAN_ERR(pc, "duplicate kernel names"); goto done; }
            if (!(m->kernel_names[k] = strdup(kn->str))) { if (self) dlclose(self); seterr(m->err, "out of memory"); goto done; }
            char sym[512];
            snprintf(sym, sizeof sym, "%s%s", prefix, kn->str);
            void* p = NULL;
            for (const mcpm_static_kernel* t = table; t && t->symbol && !p; t++)
                if (!strcmp(t->symbol, sym)) p = t->fn;
            if (self) p = dlsym(self, sym);
            if (!p) {
                if (self) dlclose(self);
                seterr(m->err, "kernel symbol %s not found in %s: this library was not built with the kernels of %s (%s)",
                       sym, info.dli_fname, dir, obj);
                goto done;
            }
            memcpy(&m->kernel_fns[k], &p, sizeof p);
        }
        if (self) dlclose(self);
    }
    /* weights: every plan weight must be a tensor of weights.bin with the same dtype and shape */
    m->n_weights = weights->count;
    if (!(m->weight_data = calloc((size_t)m->n_weights + 1, sizeof(unsigned char*)))) { seterr(m->err, "out of memory"); goto done; }
    {
        int i = 0;
        for (const json_node* w = json_child(&doc, weights); w; w = json_next(&doc, w), i++) {
            const char* wname = get_str(pc, w, "name", "weights");
            const char* wdt = wname ? get_str(pc, w, "dtype", "weights") : NULL;
            const json_node* wsh = wdt ? get_typed(pc, w, "shape", JSON_ARRAY, "weights") : NULL;
            if (!wsh) goto done;
            int dti = dtype_by_name(wdt);
            if (dti < 0) { PLAN_ERR(pc, "weight %s: unknown dtype '%s'", wname, wdt); goto done; }
            const wentry* we = NULL;
            for (uint32_t t = 0; t < wcount && !we; t++)
                if (!strcmp(wes[t].name, wname)) we = &wes[t];
            if (!we) { seterr(m->err, "%s/weights.bin has no tensor '%s': the bundle and its plan do not match", dir, wname); goto done; }
            int ok = we->dtype == dti && we->ndim == wsh->count;
            int d = 0;
            for (const json_node* x = json_child(&doc, wsh); ok && x; x = json_next(&doc, x), d++)
                ok = x->type == JSON_NUMBER && x->is_int && x->i == we->shape[d];
            if (!ok) { seterr(m->err, "weights.bin tensor '%s' does not match the plan's dtype/shape: re-export", wname); goto done; }
            m->weight_data[i] = (unsigned char*)(uintptr_t)(wdata + we->offset); /* read-only mapping */
        }
    }
    /* entries: count args, then fill */
    {
        int n_args = 0, has[N_ENTRIES] = {1, 1, 0, 0, 0};
        for (int k = E_EMBED; k < N_ENTRIES; k++) has[k] = json_get(&doc, entries, ENTRY_NAMES[k]) != NULL;
        if (!has[E_VISION]) has[E_EMBED] = has[E_PREFILL_EMBEDS] = 0; /* without a vision encoder: text only */
        if (has[E_VISION]) {
            if (!has[E_EMBED] || !has[E_PREFILL_EMBEDS]) {
                PLAN_ERR(pc, "a MiniCPM-V plan needs all of the entries embed, prefill_embeds and vision");
                goto done;
            }
            if (parse_vision(pc, root)) goto done;
        }
        for (int k = 0; k < N_ENTRIES; k++) {
            plan_entry scratch;
            memset(&scratch, 0, sizeof scratch);
            if (has[k] && parse_entry(pc, entries, &scratch, k, &n_args, 0)) goto done;
        }
        m->args = calloc((size_t)n_args + 1, sizeof(plan_arg));
        m->any = calloc((size_t)n_args + 1, sizeof(mcpm_ffi_any));
        m->dl = calloc((size_t)n_args + 1, sizeof(mcpm_dltensor));
        m->shapes = calloc(((size_t)n_args + 1) * MCPM_MAX_NDIM, sizeof(int64_t));
        if (!m->args || !m->any || !m->dl || !m->shapes) { seterr(m->err, "out of memory"); goto done; }
        n_args = 0;
        for (int k = 0; k < N_ENTRIES; k++)
            if (has[k] && parse_entry(pc, entries, entry_at(m, k), k, &n_args, 1)) goto done;
        if (m->decode.n_max != 1 || m->prefill.n_max != m->chunk) {
            PLAN_ERR(pc, "prefill n_max %d != chunk %d or decode n_max %d != 1", m->prefill.n_max, m->chunk, m->decode.n_max);
            goto done;
        }
        if (m->vision.present && (m->embed.n_max != m->chunk || m->prefill_embeds.n_max != m->chunk ||
                                  m->vision.n_max != m->vinfo.max_patches)) {
            PLAN_ERR(pc, "embed n_max %d / prefill_embeds n_max %d != chunk %d or vision n_max %d != max_patches %d",
                     m->embed.n_max, m->prefill_embeds.n_max, m->chunk, m->vision.n_max, m->vinfo.max_patches);
            goto done;
        }
        m->n_args = n_args;
        for (int i = 0; i < n_args; i++) {
            const plan_arg* a = &m->args[i];
            if (a->kind != ARG_WEIGHT) continue;
            if (check_weight_arg(pc, a, json_at(&doc, weights, a->index), "weight arg")) goto done;
        }
    }
    if (strcmp(m->want_device, "cpu") && setup_gpu(m, pc, root, dir)) goto done;
    rc = 0;
done:
    json_free(&doc);
    return rc;
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
            t->dtype = DTYPES[a->dtype].dl;
            t->shape = &m->shapes[(size_t)i * MCPM_MAX_NDIM];
            for (int d = 0; d < a->ndim; d++) t->shape[d] = a->b[d];
            any->type_index = MCPM_FFI_DLTENSOR_PTR;
            any->u.v_ptr = t;
        }
    }
}

/* ---------------------------------------------------------------- public API */

double mcpm_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

mcpm_params mcpm_default_params(void) {
    mcpm_params p = {0, 1 << 20, 0, NULL, NULL, 0, NULL};
    return p;
}

void mcpm_model_free(mcpm_model* m) {
    if (!m) return;
    mcpm_gpu_free(m->gpu);
    if (m->pool_ready) mcpm_pool_destroy(&m->pool);
    for (int k = 0; k < N_ENTRIES; k++) {
        plan_entry* e = entry_at(m, k);
        for (int i = 0; e->storage && i < e->n_storages; i++) free(e->storage[i]);
        free(e->storage);
        free(e->storage_size);
        free(e->calls);
        for (int i = 0; i < N_INPUTS; i++) free(e->input[i]);
    }
    free_caches(m);
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

mcpm_model* mcpm_model_load(const char* bundle_dir, const mcpm_params* p) {
    double t_load = mcpm_now_ms();
    mcpm_params params = p ? *p : mcpm_default_params();
    char* load_err = mcpm_thread_error_buffer();
    load_err[0] = '\0';
    if (!bundle_dir) { seterr(load_err, "mcpm_model_load: bundle_dir is NULL"); return NULL; }
    mcpm_model* m = calloc(1, sizeof *m);
    if (!m) { seterr(load_err, "out of memory"); return NULL; }
    size_t dir_len = strlen(bundle_dir);
    m->bundle_dir = malloc(dir_len + 1);
    if (!m->bundle_dir) { free(m); seterr(load_err, "out of memory"); return NULL; }
    memcpy(m->bundle_dir, bundle_dir, dir_len + 1);
    char wpath[4096], ppath[4096];
    snprintf(wpath, sizeof wpath, "%s/weights.bin", bundle_dir);
    snprintf(ppath, sizeof ppath, "%s/plan.json", bundle_dir);
    wentry* wes = NULL;
    uint32_t wcount = 0;
    const unsigned char* wdata = NULL;
    m->want_variant = params.kernel_variant && params.kernel_variant[0] ? params.kernel_variant : NULL;
    m->want_device = params.device && params.device[0] ? params.device : "cpu";
    m->want_profile = params.profile;
    m->want_cache_dir = params.cache_dir;
    if (strcmp(m->want_device, "cpu") && strcmp(m->want_device, "gpu") && strcmp(m->want_device, "auto")) {
        seterr(load_err, "unknown device '%.64s' (cpu, gpu or auto)", m->want_device);
        mcpm_model_free(m);
        return NULL;
    }
    int rc = load_weights(m, wpath, params.verify, &wes, &wcount, &wdata);
    if (!rc) rc = load_plan(m, bundle_dir, ppath, wes, wcount, wdata);
    free(wes);
    if (!rc) {
        for (int k = 0; k < N_ENTRIES; k++)
            if (entry_at(m, k)->present) bind_args(m, entry_at(m, k));
        int threads = params.threads > 0 ? params.threads : mcpm_default_threads();
        if (threads < 1) threads = 1;
        if (params.threads > MCPM_MAX_THREADS || params.threads < 0)
            rc = seterr(m->err, "threads %d is out of range (0 = automatic, at most %d: use the number of cores)",
                        params.threads, MCPM_MAX_THREADS);
        size_t ws = params.workspace_bytes ? params.workspace_bytes : (size_t)1 << 20;
        if (!rc) rc = mcpm_pool_init(&m->pool, m, threads, ws, m->err, MCPM_ERR_LEN);
        m->pool_ready = !rc;
    }
    if (rc) {
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
            seterr(m->err, "kernel %s (%s call %d) failed: %s", m->kernel_names[call->kernel], e->name, c,
                   msg[0] ? msg : "no message");
            rc = -1;
        }
    }
    mcpm_backend_leave();
    return rc;
}

/* The output of entry e for n: float32, arg_bytes(output, n) bytes. */
static const float* entry_output(const plan_entry* e, int n, int64_t* bytes) {
    const plan_arg* o = &e->output;
    *bytes = arg_bytes(o, n);
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
        int64_t last = o->offset + arg_bytes(o, n) - 4 * (int64_t)m->vocab;
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

static int check_tokens(mcpm_model* m, const int32_t* tokens, int n) {
    if (m->pos + (int64_t)n > m->max_ctx)
        return seterr(m->err, "context full: %d + %d tokens > max_ctx %d", m->pos, n, m->max_ctx);
    for (int i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= m->vocab)
            return seterr(m->err, "token id %d at %d out of range 0..%d", tokens[i], i, m->vocab - 1);
    return 0;
}

int mcpm_prefill(mcpm_model* m, const int32_t* tokens, int n, float* logits_out) {
    if (!m) return -1;
    if (n < 1 || !tokens) return seterr(m->err, "prefill needs at least one token");
    if (check_tokens(m, tokens, n)) return -1;
    for (int start = 0; start < n; start += m->chunk) {
        int len = n - start < m->chunk ? n - start : m->chunk;
        if (run_entry(m, &m->prefill, tokens + start, len, start + len == n ? logits_out : NULL)) return -1;
    }
    return 0;
}

int mcpm_decode(mcpm_model* m, int32_t token, float* logits_out) {
    if (!m) return -1;
    if (check_tokens(m, &token, 1)) return -1;
    return run_entry(m, &m->decode, &token, 1, logits_out);
}

/* ---------------------------------------------------------------- MiniCPM-V entries (CPU only) */

int mcpm_model_has_vision(const mcpm_model* m) { return m && m->vision.present ? 1 : 0; }

const mcpm_vision_info* mcpm_model_vision_info(const mcpm_model* m) { return m && m->vision.present ? &m->vinfo : NULL; }

static int need_vision(mcpm_model* m, const char* what) {
    if (!m->vision.present)
        return seterr(m->err, "%s: this bundle has no vision encoder (plan entries embed, prefill_embeds, vision): "
                      "export a MiniCPM-V model", what);
    return 0;
}

int mcpm_model_embed(mcpm_model* m, const int32_t* tokens, int n, float* out) {
    if (!m) return -1;
    m->err[0] = '\0';
    if (need_vision(m, "embed")) return -1;
    if (!tokens || !out || n < 1 || n > m->embed.n_max)
        return seterr(m->err, "embed: %d tokens (1..%d)", n, m->embed.n_max);
    for (int i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= m->vocab)
            return seterr(m->err, "token id %d at %d out of range 0..%d", tokens[i], i, m->vocab - 1);
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
    if (need_vision(m, "prefill_embeds")) return -1;
    if (!embeds || n < 1) return seterr(m->err, "prefill_embeds needs at least one row");
    if (m->pos + (int64_t)n > m->max_ctx)
        return seterr(m->err, "context full: %d + %d tokens > max_ctx %d", m->pos, n, m->max_ctx);
    size_t d = (size_t)m->vinfo.hidden;
    for (int start = 0; start < n; start += m->chunk) {
        int len = n - start < m->chunk ? n - start : m->chunk;
        memcpy(m->prefill_embeds.input[IN_EMBEDS], embeds + (size_t)start * d, sizeof(float) * (size_t)len * d);
        if (run_prefill_embeds(m, len, start + len == n ? logits_out : NULL)) return -1;
    }
    return 0;
}

int mcpm_model_vision_run(mcpm_model* m, const float* patches, const float* pos_interp, const float* key_pos, int n,
                          float* out) {
    if (!m) return -1;
    m->err[0] = '\0';
    if (need_vision(m, "vision")) return -1;
    if (!patches || !pos_interp || !key_pos || !out) return seterr(m->err, "vision: NULL buffer");
    if (n < 1 || n > m->vision.n_max)
        return seterr(m->err, "an image slice of %d patches exceeds the vision encoder's max_patches %d", n,
                      m->vision.n_max);
    const float* src[3] = {patches, pos_interp, key_pos};
    static const int ins[3] = {IN_PATCHES, IN_POS_INTERP, IN_KEY_POS};
    for (int k = 0; k < 3; k++)
        memcpy(m->vision.input[ins[k]], src[k], sizeof(float) * (size_t)n * (size_t)input_width(m, ins[k]));
    if (run_calls(m, &m->vision, n)) return -1;
    int64_t bytes;
    const float* o = entry_output(&m->vision, n, &bytes); /* float32[Q, D] */
    memcpy(out, o, (size_t)bytes);
    return 0;
}

/* Prefill of prompt tokens int32[n] with image rows (img): chunks with an image position run embed -> overwrite ->
 * prefill_embeds, the others prefill. Validated by the caller. */
static int prefill_image(mcpm_model* m, const int32_t* tokens, int n, const mcpm_image_prompt* img, float* logits_out) {
    size_t d = (size_t)m->vinfo.hidden;
    int row = 0; /* next feature row */
    for (int start = 0; start < n; start += m->chunk) {
        int len = n - start < m->chunk ? n - start : m->chunk;
        float* lo = start + len == n ? logits_out : NULL;
        int any = 0;
        for (int i = start; i < start + len && !any; i++) any = img->image[i] != 0;
        if (!any) {
            if (run_entry(m, &m->prefill, tokens + start, len, lo)) return -1;
            continue;
        }
        memcpy(m->embed.input[IN_TOKENS], tokens + start, sizeof(int32_t) * (size_t)len);
        if (run_calls(m, &m->embed, len)) return -1;
        int64_t bytes;
        const float* e = entry_output(&m->embed, len, &bytes); /* float32[len, D] */
        float* x = (float*)(void*)m->prefill_embeds.input[IN_EMBEDS]; /* float32[chunk, D] */
        memcpy(x, e, (size_t)bytes);
        for (int i = 0; i < len; i++) {
            if (!img->image[start + i]) continue;
            if (row >= img->n_rows) return seterr(m->err, "more image positions in the prompt than image features (%d)", img->n_rows);
            memcpy(x + (size_t)i * d, img->feats + (size_t)row * d, sizeof(float) * d);
            row++;
        }
        if (run_prefill_embeds(m, len, lo)) return -1;
    }
    if (row != img->n_rows)
        return seterr(m->err, "%d image positions in the prompt for %d image feature rows", row, img->n_rows);
    return 0;
}

int mcpm_vision_model_logits(const mcpm_model* m, float* out) {
    if (!m || !out || !m->logits || m->prefill_tokens == 0) return -1;
    memcpy(out, m->logits, sizeof(float) * (size_t)m->vocab);
    return 0;
}

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

int mcpm_set_sampleable(mcpm_model* m, const uint8_t* allowed, int n) {
    if (!m) return -1;
    m->err[0] = '\0';
    if (!allowed) {
        free(m->sampleable);
        m->sampleable = NULL;
        return 0;
    }
    if (n != m->vocab) return seterr(m->err, "mcpm_set_sampleable: %d flags for a vocabulary of %d", n, m->vocab);
    int any = 0;
    for (int i = 0; i < n && !any; i++) any = allowed[i] != 0;
    if (!any) return seterr(m->err, "mcpm_set_sampleable: no id is allowed");
    if (!m->sampleable && !(m->sampleable = malloc((size_t)n))) return seterr(m->err, "out of memory");
    for (int i = 0; i < n; i++) m->sampleable[i] = allowed[i] != 0;
    return 0;
}
int mcpm_context_length(const mcpm_model* m) { return m ? m->max_ctx : 0; }
int mcpm_position(const mcpm_model* m) { return m ? m->pos : 0; }

const char* mcpm_last_error(const mcpm_model* m) {
    if (m) return m->err;
    mcpm_backend_leave(); /* no model: the thread's load-error buffer */
    return mcpm_thread_error_buffer();
}

/* ---------------------------------------------------------------- generation */

int mcpm_generate(mcpm_model* m, const int32_t* prompt, int n_prompt, int max_new_tokens, const mcpm_sampling* s,
                  const int32_t* stop_ids, int n_stop, mcpm_token_callback cb, void* user) {
    return mcpm_generate_image(m, prompt, n_prompt, NULL, max_new_tokens, s, stop_ids, n_stop, cb, user);
}

int mcpm_generate_image(mcpm_model* m, const int32_t* prompt, int n_prompt, const mcpm_image_prompt* img,
                        int max_new_tokens, const mcpm_sampling* s, const int32_t* stop_ids, int n_stop,
                        mcpm_token_callback cb, void* user) {
    if (!m) return -1;
    m->err[0] = '\0';
    mcpm_sampling greedy = mcpm_default_sampling();
    if (!s) s = &greedy;
    if (n_prompt < 1 || !prompt) return seterr(m->err, "generate needs a prompt of at least one token");
    if (m->pos + (int64_t)n_prompt >= m->max_ctx) {
        if (m->pos)
            return seterr(m->err, "prompt of %d tokens does not fit the context of %d tokens (%d already in use)",
                          n_prompt, m->max_ctx, m->pos);
        return seterr(m->err, "prompt of %d tokens does not fit the context of %d tokens", n_prompt, m->max_ctx);
    }
    if (max_new_tokens < 0) return seterr(m->err, "max_new_tokens %d must be >= 0", max_new_tokens);
    if (n_stop < 0 || (n_stop > 0 && !stop_ids)) return seterr(m->err, "generate: bad stop list (%d ids)", n_stop);
    if (mcpm_sampling_check(s, m->err)) return -1;
    if (check_tokens(m, prompt, n_prompt)) return -1;
    if (img) {
        if (need_vision(m, "generate with images")) return -1;
        int marked = 0;
        for (int i = 0; img->image && i < n_prompt; i++) marked += img->image[i] != 0;
        if (!img->image || !img->feats || marked != img->n_rows)
            return seterr(m->err, "generate: %d image positions in the prompt for %d image feature rows", marked,
                          img->n_rows);
    }
    if (!m->sampler.cand) {
        m->history = malloc(sizeof(int32_t) * ((size_t)m->max_ctx + 1)); /* int32[max_ctx + 1] */
        m->logits = malloc(sizeof(float) * (size_t)m->vocab);             /* float[vocab] */
        if (!m->history || !m->logits || mcpm_sampler_init(&m->sampler, m->vocab)) {
            free(m->history);
            free(m->logits);
            m->history = NULL;
            m->logits = NULL;
            return seterr(m->err, "out of memory");
        }
    }
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
    if (img ? prefill_image(m, prompt, n_prompt, img, m->logits) : mcpm_prefill(m, prompt, n_prompt, m->logits))
        return -1;
    m->prefill_ms = mcpm_now_ms() - t0;
    m->prefill_tokens = n_prompt;
    int n_gen = 0;
    while (n_gen < max_new_tokens) {
        double t1 = mcpm_now_ms();
        if (n_gen > 0) {
            if (mcpm_decode(m, m->history[n_hist - 1], m->logits)) return -1;
        }
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

int mcpm_stats_json(mcpm_model* m, char* out, size_t len) {
    if (!m) return -1;
    if (!out || len == 0) return seterr(m->err, "mcpm_stats_json: no output buffer");
    char notice[2 * MCPM_ERR_LEN]; /* m->notice as a JSON string body */
    size_t k = 0;
    for (const char* c = m->notice; *c && k + 7 < sizeof notice; c++) {
        if (*c == '"' || *c == '\\') { notice[k++] = '\\'; notice[k++] = *c; }
        else if ((unsigned char)*c < 0x20) k += (size_t)snprintf(notice + k, sizeof notice - k, "\\u%04x", (unsigned)*c);
        else notice[k++] = *c;
    }
    notice[k] = '\0';
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
                     m->gpu ? "gpu" : "cpu", m->gpu ? mcpm_gpu_device_name(m->gpu) : "",
                     m->gpu ? mcpm_gpu_program_origin(m->gpu) : "", notice, m->image_encode_ms,
                     m->image_slices, m->image_patches, DTYPES[m->cache_dtype].name,
                     (long long)(2 * (size_t)m->num_layers * m->cache_bytes),
                     (long long)(2 * (size_t)m->num_layers * (m->cache_bytes / (size_t)m->max_ctx)));
    if (n < 0 || (size_t)n >= len) return seterr(m->err, "mcpm_stats_json: buffer of %zu bytes too small, need %d", len, n + 1);
    return 0;
}

const char* mcpm_model_notice(const mcpm_model* m) { return m ? m->notice : ""; }

const char* mcpm_model_device(const mcpm_model* m) { return m && m->gpu ? "gpu" : "cpu"; }

int mcpm_kernel_times_json(mcpm_model* m, char* out, size_t len) {
    if (!m) return -1;
    if (!out || len < 3) return seterr(m->err, "mcpm_kernel_times_json: no output buffer");
    if (!m->gpu) { snprintf(out, len, "[]"); return 0; }
    if (mcpm_gpu_times_json(m->gpu, out, len))
        return seterr(m->err, "mcpm_kernel_times_json: buffer of %zu bytes too small", len);
    return 0;
}
