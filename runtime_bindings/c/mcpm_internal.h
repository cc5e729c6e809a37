/* Internal structures of the mcpm C runtime (not part of the public API). */
#ifndef MCPM_INTERNAL_H
#define MCPM_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "mcpm.h"
#include "mcpm_kernel_abi.h"

#define MCPM_HIDDEN __attribute__((visibility("hidden")))
#define MCPM_ALIGN 64

/* size bytes aligned to MCPM_ALIGN, freed with free(); NULL when out of memory. posix_memalign, not C11's
 * aligned_alloc: Android's libc has aligned_alloc only from API 28 and the app supports API 24. */
void* mcpm_aligned_alloc(size_t size);

/* The whole file at path as malloc'ed bytes char[*len + 1] (NUL-terminated, freed with free()); NULL when it cannot
 * be opened or read, or on out of memory. */
char* mcpm_read_file(const char* path, size_t* len);
/* 1 if name is a plain file name inside the bundle folder: not empty, no '/' or '\\', not "." or "..", no control
 * characters (file names from mcpm-config.json / plan.json never leave the bundle). */
int mcpm_plain_file_name(const char* name);
#define MCPM_MAX_NDIM 8
#define MCPM_ERR_LEN 1024

/* ---- our own definitions with the layout of dlpack.h / tvm_ffi c_api.h (not copied from them) */

typedef struct {
    int32_t device_type; /* 1 = kDLCPU */
    int32_t device_id;
} mcpm_dl_device;

typedef struct {
    uint8_t code;  /* 0 int, 1 uint, 2 float, 4 bfloat */
    uint8_t bits;
    uint16_t lanes;
} mcpm_dl_dtype;

typedef struct {
    void* data;             /* 64-byte aligned */
    mcpm_dl_device device;
    int32_t ndim;
    mcpm_dl_dtype dtype;
    int64_t* shape;         /* int64[ndim] */
    int64_t* strides;       /* NULL: compact row-major */
    uint64_t byte_offset;   /* always 0 */
} mcpm_dltensor;

typedef struct {
    int32_t type_index;     /* 1 = int (v_int64), 7 = DLTensor* (v_ptr) */
    uint32_t zero_padding;
    union {
        int64_t v_int64;
        double v_float64;
        void* v_ptr;
    } u;
} mcpm_ffi_any;

_Static_assert(sizeof(mcpm_dl_dtype) == 4, "DLDataType is 4 bytes");
_Static_assert(sizeof(mcpm_dltensor) == 48, "DLTensor is 48 bytes on LP64");
_Static_assert(sizeof(mcpm_ffi_any) == 16, "TVMFFIAny is 16 bytes");
_Static_assert(offsetof(mcpm_ffi_any, u) == 8, "TVMFFIAny payload at byte 8");

#define MCPM_FFI_INT 1
#define MCPM_FFI_DLTENSOR_PTR 7

typedef int (*mcpm_kernel_fn)(void* self, const mcpm_ffi_any* args, int32_t nargs, mcpm_ffi_any* ret);

/* mcpm_parallel_env (TVMParallelGroupEnv) and mcpm_parallel_lambda: mcpm_kernel_abi.h */

/* ---- backend: thread pool + per-thread workspace arenas */

typedef struct {
    unsigned char* base; /* uint8[cap], 64-byte aligned */
    size_t cap;
    size_t top;          /* bytes in use (LIFO) */
} mcpm_arena;

struct mcpm_pool;

typedef struct {
    struct mcpm_pool* pool;
    int index;           /* 1..threads-1 (0 is the calling thread) */
    pthread_t thread;
    mcpm_arena arena;
} mcpm_worker;

typedef struct mcpm_pool {
    struct mcpm_model* model;
    int threads;          /* including the caller */
    mcpm_worker* workers; /* mcpm_worker[threads - 1] */
    mcpm_arena arena0;    /* the calling thread's arena */
    pthread_mutex_t mu;   /* guards the sleeps below (the launch itself is lock-free) */
    pthread_cond_t wake;  /* a launch for sleeping workers */
    pthread_cond_t done;  /* the last worker finished, for a sleeping caller */
    long spin_ns;         /* how long workers / the caller spin before sleeping (MCPM_SPIN_US; 0 = never) */
    _Atomic uint64_t generation; /* bumped per launch (publishes fn / cdata / num_task) */
    _Atomic uint64_t ticket;     /* [generation (low 32 bits) : num_task (16) : next task (16)]: tasks are claimed
                                    from it by any thread (caller or worker), so a slow or descheduled core takes
                                    fewer of them */
    _Atomic int pending;         /* tasks of the current launch not yet finished */
    long window_start_ns;        /* caller only: start of the current contention window (mcpm_backend.c) */
    long window_late_ns;         /* caller only: time waited for late workers in that window */
    long serial_until_ns;        /* caller only: launches run without the workers until then (0: none) */
    long serial_ns;              /* caller only: length of the next serial stretch (doubles, resets) */
    _Atomic int sleepers;        /* workers blocked on `wake` */
    _Atomic int caller_sleeping; /* the caller blocked on `done` */
    _Atomic int stop;
    _Atomic int failed;
    /* current launch (written before the generation bump, read after seeing it) */
    mcpm_parallel_lambda fn;
    void* cdata;
    int num_task;
} mcpm_pool;

/* Threads for mcpm_params.threads = 0: the CPUs this process may run on, leaving out the slowest cluster of a
 * big.LITTLE CPU (cpufreq cpuinfo_max_freq; Linux/Android) or taking the performance cores (Apple). */
MCPM_HIDDEN int mcpm_default_threads(void);
#define MCPM_MAX_THREADS 256

MCPM_HIDDEN int mcpm_pool_init(mcpm_pool* pool, struct mcpm_model* model, int threads, size_t workspace_bytes,
                               char* err, size_t errlen);
MCPM_HIDDEN void mcpm_pool_destroy(mcpm_pool* pool);
/* Makes the calling thread use `model` (error buffer) and the pool's caller arena for the hooks. */
MCPM_HIDDEN void mcpm_backend_enter(struct mcpm_model* model, mcpm_pool* pool);
MCPM_HIDDEN void mcpm_backend_leave(void);
/* Error buffer of the model the calling thread works for (or the thread's load-error buffer). */
MCPM_HIDDEN char* mcpm_thread_error_buffer(void);
MCPM_HIDDEN char* mcpm_model_error_buffer(struct mcpm_model* model);
/* The bundle_dir the model was loaded from (owned by the model). */
MCPM_HIDDEN const char* mcpm_model_bundle_dir(const struct mcpm_model* model);

/* ---- MiniCPM-V entries (docs/minicpmv.md; CPU only) */

/* plan.json "vision" of a bundle with the entries embed, prefill_embeds and vision. */
typedef struct {
    int patch;       /* p: patch side in pixels (14) */
    int pos_grid;    /* G: side of the vision tower's position table */
    int max_patches; /* n_max of the vision entry */
    int query_num;   /* Q: features per vision run */
    int hidden;      /* D: LM hidden size (rows of embed / prefill_embeds, features) */
    int vision_hidden;
} mcpm_vision_info;

/* The bundle's vision info, or NULL when it has no vision entry. */
MCPM_HIDDEN const mcpm_vision_info* mcpm_model_vision_info(const struct mcpm_model* model);
/* embed: tokens int32[n] (1 <= n <= chunk) -> out float32[n, D] (embedding * scale_emb). Does not move the position. */
MCPM_HIDDEN int mcpm_model_embed(struct mcpm_model* model, const int32_t* tokens, int n, float* out);
/* prefill_embeds: embeds float32[n, D] (n >= 1, chunked by the plan's chunk) at the current position; logits_out
 * float[vocab] (may be NULL) gets the last position's logits. */
MCPM_HIDDEN int mcpm_model_prefill_embeds(struct mcpm_model* model, const float* embeds, int n, float* logits_out);
/* vision, one slice of n patches (1 <= n <= max_patches): patches float32[n, 3*p*p], pos_interp float32[n, G*G],
 * key_pos float32[n, D] -> out float32[Q, D]. */
MCPM_HIDDEN int mcpm_model_vision_run(struct mcpm_model* model, const float* patches, const float* pos_interp,
                                      const float* key_pos, int n, float* out);
/* The image part of a prompt for mcpm_generate_image: image[i] = 1 marks prompt position i as an image position,
 * whose embedding is replaced by the next row of feats float32[n_image_rows, D] (rows in prompt order). */
typedef struct {
    const uint8_t* image; /* uint8[n_prompt] */
    const float* feats;   /* float32[n_rows, D] */
    int n_rows;           /* = number of marked positions */
} mcpm_image_prompt;
/* mcpm_generate with images in the prompt: chunks containing image positions run embed -> overwrite those rows
 * -> prefill_embeds, the others prefill. img NULL = mcpm_generate. */
MCPM_HIDDEN int mcpm_generate_image(struct mcpm_model* model, const int32_t* prompt, int n_prompt,
                                    const mcpm_image_prompt* img, int max_new_tokens, const mcpm_sampling* s,
                                    const int32_t* stop_ids, int n_stop, mcpm_token_callback cb, void* user);
/* Stats of the last mcpm_encode_image (mcpm_stats_json image_encode_ms, image_slices, image_patches). */
MCPM_HIDDEN void mcpm_model_set_image_stats(struct mcpm_model* model, double ms, int slices, int patches);
/* Replaces mcpm_model_notice (e.g. an image was downscaled). */
MCPM_HIDDEN void mcpm_model_set_notice(struct mcpm_model* model, const char* notice);
/* 1 when the model's abort callback (mcpm_set_abort_callback) asks to stop now; sets no error. */
MCPM_HIDDEN int mcpm_model_aborted(struct mcpm_model* model);
/* Monotonic clock in milliseconds. */
MCPM_HIDDEN double mcpm_now_ms(void);

/* ---- sampler (mcpm_sampler.c) */

typedef struct {
    float logit;  /* after penalty and temperature */
    int32_t id;
    double p;     /* probability after the filters (valid for the first n candidates) */
} mcpm_candidate;

typedef struct {
    int vocab;
    mcpm_candidate* cand; /* mcpm_candidate[vocab] */
    unsigned char* seen;  /* uint8[vocab], all 0 between calls */
    const unsigned char* allowed; /* uint8[vocab]: ids that may be drawn (NULL = all); owned by the model */
    uint64_t rng;         /* splitmix64 state */
} mcpm_sampler;

MCPM_HIDDEN int mcpm_sampler_init(mcpm_sampler* sp, int vocab);
MCPM_HIDDEN void mcpm_sampler_free(mcpm_sampler* sp);
MCPM_HIDDEN void mcpm_sampler_seed(mcpm_sampler* sp, uint64_t seed);
/* One-line reason in err char[MCPM_ERR_LEN] and -1 if a field is out of range. */
MCPM_HIDDEN int mcpm_sampling_check(const mcpm_sampling* s, char* err);
/* Draws the next token from logits float[vocab] given history int32[n_history]. */
MCPM_HIDDEN int32_t mcpm_sampler_sample(mcpm_sampler* sp, const float* logits, const int32_t* history, int n_history,
                                        const mcpm_sampling* s);

/* ---- shared by the JSON writers (mcpm_generate.c) */

/* s as the body of a JSON string into out char[cap] (truncated to fit). */
MCPM_HIDDEN void mcpm_json_escape(const char* s, char* out, size_t cap);

/* ---- session internals the self-test reads (mcpm_session.c, for mcpm_selftest.c) */

struct json_doc;
MCPM_HIDDEN mcpm_model* mcpm_session_model(const mcpm_session* s);
/* The parsed mcpm-config.json of the session's bundle. */
MCPM_HIDDEN const struct json_doc* mcpm_session_config(const mcpm_session* s);
/* BOS (when the bundle has one) + text char[len] as the session encodes it, into *ids int32[return] (malloc'ed, the
 * caller frees); -1 on failure (mcpm_last_error of the model). */
MCPM_HIDDEN int mcpm_session_encode_bos(mcpm_session* s, const char* text, size_t len, int32_t** ids);
/* A new conversation's chat turn with the images attached (mcpm_encode_image) and the message msg, as
 * mcpm_session_chat builds it: ids into *ids int32[return], image positions into *image uint8[return] (both
 * malloc'ed, the caller frees), img pointing at them and at the session's features; -1 on failure. */
MCPM_HIDDEN int mcpm_session_image_prompt(mcpm_session* s, const char* msg, int32_t** ids, uint8_t** image,
                                          mcpm_image_prompt* img);

#endif
