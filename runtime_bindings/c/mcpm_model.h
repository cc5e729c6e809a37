/* The loaded model as the runtime's files share it (internal; not part of the public API).
 *
 * Who does what (one concept per file):
 *   mcpm_weights.c     weights.bin: map, check header, tensor table and checksums; bundle file helpers
 *   mcpm_plan.c        plan.json -> the plain structs below (validated like export/compiler/plan.py)
 *   mcpm_cpu.c         CPU features, the choice of kernel set (variant), kernel symbols -> functions
 *   mcpm_gpu_setup.c   device "gpu"/"auto": hands the parsed plan to the OpenCL dispatcher (mcpm_opencl.c)
 *   mcpm_runtime.c     model load/free, buffers, the executor (prefill, decode, MiniCPM-V entries)
 *   mcpm_generate.c    mcpm_generate (prefill + sampling loop), stats JSON
 * Formats: docs/bundle-format.md. */
#ifndef MCPM_MODEL_H
#define MCPM_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "mcpm_internal.h"
#include "mcpm_json.h"
#include "mcpm_opencl.h"

/* ---------------------------------------------------------------- dtypes, arg kinds, inputs, entries */

typedef struct {
    const char* name;
    mcpm_dl_dtype dl;
    int bytes;
    int wcode; /* weights.bin dtype code, -1 if not storable there */
} mcpm_dtype_info;

#define MCPM_N_DTYPES 8
extern const mcpm_dtype_info MCPM_DTYPES[MCPM_N_DTYPES];
/* Index into MCPM_DTYPES of a dtype name ("float32", ...), -1 if unknown. */
MCPM_HIDDEN int mcpm_dtype_by_name(const char* name);

enum { ARG_INPUT, ARG_SCALAR, ARG_WEIGHT, ARG_CACHE, ARG_TENSOR };

/* Named inputs of the plan entries (docs/minicpmv.md); "tokens" is int32, the others float32 [n, width]. */
enum { IN_TOKENS, IN_EMBEDS, IN_PATCHES, IN_POS_INTERP, IN_KEY_POS, N_INPUTS };
/* The plan entries: prefill/decode of every bundle, embed/prefill_embeds/vision of MiniCPM-V bundles. */
enum { E_PREFILL, E_DECODE, E_EMBED, E_PREFILL_EMBEDS, E_VISION, N_ENTRIES };
extern const char* const MCPM_INPUT_NAMES[N_INPUTS]; /* "tokens", "embeds", "patches", "pos_interp", "key_pos" */
extern const char* const MCPM_ENTRY_NAMES[N_ENTRIES]; /* "prefill", "decode", "embed", "prefill_embeds", "vision" */

typedef struct {
    int kind;
    int dtype;          /* index into MCPM_DTYPES */
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
    const char* name;   /* MCPM_ENTRY_NAMES[type] */
    int type;           /* E_* */
    int present;
    int n_max;
    int n_storages;
    int64_t* storage_size;   /* int64[n_storages], bytes (from the plan) */
    unsigned char** storage; /* n_storages pointers to uint8[storage_size[i]], 64-byte aligned (the executor's) */
    unsigned char* input[N_INPUTS]; /* the inputs this entry reads (NULL otherwise), 64-byte aligned:
                                       tokens int32[n_max], embeds float32[n_max, D], patches float32[n_max, 3*p*p],
                                       pos_interp float32[n_max, G*G], key_pos float32[n_max, D] */
    int n_calls;
    plan_call* calls;        /* plan_call[n_calls] */
    plan_arg output;         /* prefill/decode/prefill_embeds: logits [1 or n, vocab] float32; embed: [n, D] float32;
                                vision: features [Q, D] float32 */
} plan_entry;

/* ---------------------------------------------------------------- the model */

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
    plan_arg* args;             /* plan_arg[n_args]: every call's args, all entries */
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
    mcpm_abort_callback abort_cb; /* mcpm_set_abort_callback (NULL = never stop) */
    void* abort_user;
};

/* printf into err char[MCPM_ERR_LEN]; returns -1 (for `return mcpm_seterr(...)`). */
MCPM_HIDDEN int mcpm_seterr(char* err, const char* fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---------------------------------------------------------------- weights.bin (mcpm_weights.c) */

typedef struct {
    char name[65];
    int dtype;        /* index into MCPM_DTYPES */
    int ndim;
    int64_t shape[4];
    uint64_t offset;  /* from the data section's start */
    uint64_t bytes;
} mcpm_wentry;

/* Maps and validates weights.bin into m->map; *entries = mcpm_wentry[*count] (caller frees), *data = the start of
 * the data section. verify = 1 also checks the data's CRC-32 (reads the whole file). */
MCPM_HIDDEN int mcpm_weights_open(mcpm_model* m, const char* path, int verify, mcpm_wentry** entries,
                                  uint32_t* count, const unsigned char** data);

/* ---------------------------------------------------------------- plan.json (mcpm_plan.c) */

/* What the parsing functions share: errors go to m->err prefixed with "<path>: invalid plan: ". */
typedef struct {
    mcpm_model* m;
    const json_doc* doc;
    const char* path;
} plan_ctx;

MCPM_HIDDEN int mcpm_plan_err(plan_ctx* pc, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
/* obj[key] as an integer in lo..hi into *out (0 on failure); the others NULL on failure. All report to m->err. */
MCPM_HIDDEN int mcpm_plan_int(plan_ctx* pc, const json_node* obj, const char* key, int64_t lo, int64_t hi,
                              int64_t* out, const char* where);
MCPM_HIDDEN const char* mcpm_plan_str(plan_ctx* pc, const json_node* obj, const char* key, const char* where);
MCPM_HIDDEN const json_node* mcpm_plan_typed(plan_ctx* pc, const json_node* obj, const char* key, json_type t,
                                             const char* where);

/* Parses <dir>/plan.json (path) into m: sizes, cache layout, kernels (resolved to functions), weights (pointers
 * into wdata, checked against wes[wcount]), entries with their calls and args; then the GPU setup when
 * m->want_device asks for it. Allocates the plan's own tables only; the buffers kernels run on (KV caches,
 * storages, inputs) are mcpm_runtime.c's. */
MCPM_HIDDEN int mcpm_plan_load(mcpm_model* m, const char* dir, const char* path, const mcpm_wentry* wes,
                               uint32_t wcount, const unsigned char* wdata);
/* Bytes of arg a for n tokens, saturated at a huge value (never overflows). */
MCPM_HIDDEN int64_t mcpm_arg_bytes(const plan_arg* a, int64_t n);
/* 1 if entry type (E_*) reads input in (IN_*). */
MCPM_HIDDEN int mcpm_input_allowed(int type, int in);
/* Elements per row of input in (IN_*): tokens 1, embeds D, patches 3*p*p, pos_interp G*G, key_pos D. */
MCPM_HIDDEN int64_t mcpm_input_width(const mcpm_model* m, int in);
/* The entry of type E_* (present or not). */
MCPM_HIDDEN plan_entry* mcpm_entry_at(mcpm_model* m, int type);

/* ---------------------------------------------------------------- CPU and kernels (mcpm_cpu.c) */

/* 1 if this CPU has the named feature of a kernel variant's "requires" ("dotprod", "fp16", "i8mm"). */
MCPM_HIDDEN int mcpm_cpu_has(const char* feature);
/* Chooses the kernel variant of plan.json "kernel_variants": m->want_variant, or the first this CPU runs; sets
 * *obj / *prefix to its object file and symbol prefix and m->variant to its name. */
MCPM_HIDDEN int mcpm_pick_variant(plan_ctx* pc, const json_node* root, const char** obj, const char** prefix);
/* m->kernel_names / kernel_fns from plan.json "kernels" (a JSON array of names): <prefix><name> in the static
 * kernel table when one is linked in, else with dlsym in the library holding this runtime. */
MCPM_HIDDEN int mcpm_resolve_kernels(plan_ctx* pc, const json_node* kernels, const char* prefix, const char* dir,
                                     const char* obj);

/* ---------------------------------------------------------------- GPU (mcpm_gpu_setup.c) */

/* Device "gpu" / "auto" over the parsed plan: m->gpu, or (auto) the CPU with the reason in m->notice. */
MCPM_HIDDEN int mcpm_gpu_setup(mcpm_model* m, plan_ctx* pc, const json_node* root, const char* dir);

/* ---------------------------------------------------------------- executor (mcpm_runtime.c) */

/* context room and token ids of tokens int32[n] (one-line reason in m->err). */
MCPM_HIDDEN int mcpm_check_tokens(mcpm_model* m, const int32_t* tokens, int n);
/* -1 with a reason naming `what` when the bundle has no vision encoder. */
MCPM_HIDDEN int mcpm_need_vision(mcpm_model* m, const char* what);
/* Prefill of prompt tokens int32[n] with image rows (img, validated by the caller): chunks with an image position
 * run embed -> overwrite those rows -> prefill_embeds, the others prefill. */
MCPM_HIDDEN int mcpm_prefill_image(mcpm_model* m, const int32_t* tokens, int n, const mcpm_image_prompt* img,
                                   float* logits_out);

#endif
