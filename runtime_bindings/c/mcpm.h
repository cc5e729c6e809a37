/* mcpm on-device runtime: plain C11 API over a bundle (plan.json + weights.bin + kernels linked in).
 * docs/c-api.md walks an app developer through it; examples/c/chat.c is a complete program.
 *
 * Build: the bundle's kernel objects (plan.json "object_file" and "kernel_variants") go INTO the library with this
 * runtime. With CMake (libmcpm.a and libmcpm.so, install rules, mcpm.pc, find_package(mcpm)):
 *   cmake -S runtime_bindings/c -B build -DMCPM_BUNDLE=<bundle> && cmake --build build
 * or by hand, e.g.
 *   gcc -std=c11 -O2 -fPIC -shared -fvisibility=hidden -o libmcpm_bundle.so \
 *       mcpm_json.c mcpm_weights.c mcpm_plan.c mcpm_cpu.c mcpm_gpu_setup.c mcpm_runtime.c mcpm_generate.c \
 *       mcpm_backend.c mcpm_kernel_abi.c mcpm_sampler.c mcpm_tokenizer.c mcpm_session.c mcpm_gpu_plan.c \
 *       mcpm_opencl.c mcpm_image.c mcpm_vision.c mcpm_selftest.c <bundle>/kernels.o -lm -lpthread -ldl
 * (the sources are listed once, in sources.txt, which CMake and mcpm's Python builds read)
 * mcpm_model_load() then finds every kernel of plan.json as the symbol <symbol_prefix><name> in that library; with
 * kernel variants (ARM64: one kernel object per CPU feature set, all linked in) it picks the variant first.
 *
 * Threading: one model must be used by one thread at a time; different models may run on different threads.
 * All functions returning int give 0 on success and -1 on failure; the message is then in mcpm_last_error(model).
 */
#ifndef MCPM_H
#define MCPM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define MCPM_API __attribute__((visibility("default")))
#else
#define MCPM_API
#endif

typedef struct mcpm_model mcpm_model; /* opaque */

typedef struct mcpm_params {
    int threads;            /* worker threads incl. the caller; 0 = number of online CPUs */
    size_t workspace_bytes; /* per-thread bump arena for kernel scratch; 0 = 1 MiB */
    int verify;             /* 1 = check weights.bin data CRC-32 on load (reads the whole file) */
    const char* kernel_variant; /* NULL = the plan's first kernel variant this CPU supports (e.g. "i8mm",
                                   "dotprod", "neon" on ARM64); a name forces it (an error if the CPU lacks a
                                   feature it requires) */
    const char* device;     /* NULL or "cpu": the CPU kernels; "gpu": the bundle's OpenCL kernels (plan.json "gpu"
                               launch records, docs/gpu-plan.md; libOpenCL is dlopen'ed): an error if the bundle
                               has none or OpenCL does not work; "auto": the GPU when that works, else the CPU with
                               the reason in mcpm_model_notice */
    int profile;            /* GPU: 1 = time every kernel launch (OpenCL profiling events) for mcpm_kernel_times_json */
    const char* cache_dir;  /* GPU: folder for the compiled OpenCL program (<cache_dir>/opencl/; Android: the app's
                               cache dir); NULL = $MCPM_CACHE_DIR/opencl, or no cache when that is unset */
} mcpm_params;

MCPM_API mcpm_params mcpm_default_params(void);

/* Opens <bundle_dir>/plan.json, weights.bin (mmap) and checks <bundle_dir>/<object_file> exists.
 * p may be NULL (defaults). Returns NULL on failure: mcpm_last_error(NULL) then gives the reason
 * (kept per calling thread). */
MCPM_API mcpm_model* mcpm_model_load(const char* bundle_dir, const mcpm_params* p);

/* Feeds n >= 1 tokens (chunked by the plan's prefill chunk). logits_out: float[vocab], the logits of the
 * last position; may be NULL. */
MCPM_API int mcpm_prefill(mcpm_model* model, const int32_t* tokens, int n, float* logits_out);

/* One token; logits_out: float[vocab] (may be NULL). */
MCPM_API int mcpm_decode(mcpm_model* model, int32_t token, float* logits_out);

/* Stop (the apps' Stop button): long work asks abort(user) at its cancel points, on the thread that runs the model:
 * before every prefill chunk (mcpm_prefill, mcpm_generate, mcpm_session_chat/complete), before every vision-encoder
 * run of an image (mcpm_encode_image: overview and each slice) and before every generated token after the first.
 * Nonzero stops: a prompt that was being fed is forgotten (the position goes back to where the call started) and
 * the call returns -1 with an error starting "cancelled"; an image being encoded is not attached (-1,
 * "cancelled"); generation stops after the tokens already made (their count is returned, no error). abort
 * typically reads a flag the UI thread sets; NULL (the default) never stops. */
typedef int (*mcpm_abort_callback)(void* user);
MCPM_API void mcpm_set_abort_callback(mcpm_model* model, mcpm_abort_callback abort, void* user);

/* Forget the context (position 0). The KV cache rows are overwritten by later calls. */
MCPM_API void mcpm_reset(mcpm_model* model);

MCPM_API int mcpm_vocab_size(const mcpm_model* model);
MCPM_API int mcpm_context_length(const mcpm_model* model);
MCPM_API int mcpm_position(const mcpm_model* model);

/* Last error of this model ("" if none); with model == NULL the calling thread's last load error. */
MCPM_API const char* mcpm_last_error(const mcpm_model* model);

MCPM_API void mcpm_model_free(mcpm_model* model);

/* ---- sampling and generation (token ids only) */

/* Sampler settings; mcpm_default_sampling() = greedy (argmax), no penalty, seed 0.
 * Order per token: repetition penalty, temperature, top-k, top-p, min-p, then a draw from the rest. */
typedef struct mcpm_sampling {
    float temperature;        /* <= 0: greedy (argmax after the penalty); else logits / temperature */
    int top_k;                /* keep the k most likely (0 = off) */
    float top_p;              /* keep the smallest most-likely set with probability >= top_p (1 = off) */
    float min_p;              /* keep tokens with p >= min_p * p_max (0 = off) */
    float repetition_penalty; /* > 0; tokens among the last repeat_last_n: logit > 0 divided, < 0 multiplied (1 = off) */
    int repeat_last_n;        /* window of the penalty over prompt + generated tokens; 0 = off, -1 = all */
    uint64_t seed;            /* the model's RNG is seeded with it at every mcpm_generate: same seed, same tokens */
} mcpm_sampling;

MCPM_API mcpm_sampling mcpm_default_sampling(void);

/* Which ids the sampler may draw: allowed uint8[n] with n = mcpm_vocab_size (nonzero = may be drawn), or NULL for
 * every id (the default). Checkpoints often pad the vocabulary past the tokenizer: those ids have logits but no
 * text, so a front end masks them (mcpm_session_new does it from the bundle's tokenizer). Greedy decoding takes the
 * first maximum among the allowed ids. Returns -1 if n is not the vocabulary size or no id is allowed. */
MCPM_API int mcpm_set_sampleable(mcpm_model* model, const uint8_t* allowed, int n);

/* Called with each generated token (stop tokens included); return nonzero to cancel (that token still counts). */
typedef int (*mcpm_token_callback)(int32_t token, void* user);

/* Feeds prompt int32[n_prompt] at the current position, then samples up to max_new_tokens (fewer when the context
 * fills up), stopping after a token of stop_ids int32[n_stop] or a cancel. s may be NULL (greedy); cb may be NULL.
 * Returns the number of generated tokens, or -1 (mcpm_last_error). The prompt must leave room in the context:
 * checked before any work. Timing of this call goes to mcpm_stats_json. */
MCPM_API int mcpm_generate(mcpm_model* model, const int32_t* prompt, int n_prompt, int max_new_tokens,
                           const mcpm_sampling* s, const int32_t* stop_ids, int n_stop, mcpm_token_callback cb,
                           void* user);

/* One JSON object into out char[len] (NUL-terminated): load_ms, prefill_tokens, prefill_tok_s, decode_tokens,
 * decode_tok_s, ttft_ms (of the last mcpm_generate), peak_rss_kb (getrusage, now), threads, kernel_variant,
 * device ("cpu"/"gpu"), gpu_device (e.g. "OpenCL: <device> (<platform>)", "" on the CPU), gpu_program ("built" from
 * source or "cached"), notice (mcpm_model_notice), image_encode_ms / image_slices / image_patches (wall time,
 * vision-encoder runs and patches of the last mcpm_encode_image; 0 before one), kv_dtype ("float16"/"float32"),
 * kv_bytes (every layer's K and V cache at full context; pages cost memory once written) and kv_bytes_per_token.
 * -1 if len is too small (the message says how many bytes it needs). The object is bounded: a buffer of
 * MCPM_STATS_JSON_MAX bytes always suffices (the one rule for every binding). */
#define MCPM_STATS_JSON_MAX 16384
MCPM_API int mcpm_stats_json(mcpm_model* model, char* out, size_t len);

/* Where prefill/decode run: "cpu" or "gpu". */
MCPM_API const char* mcpm_model_device(const mcpm_model* model);

/* Why a model loaded with device "auto" runs on the CPU (e.g. "device auto: running on the CPU: no OpenCL
 * platform: ..."); "" when it runs where asked. */
MCPM_API const char* mcpm_model_notice(const mcpm_model* model);

/* GPU kernel times (mcpm_params.profile = 1) since the load or the start of the last mcpm_generate, as a JSON array,
 * slowest first: [{"kernel": plan kernel, "count": calls, "launches": device launches, "ms": total}, ...].
 * "[]" on the CPU or without profiling. -1 if len is too small. */
MCPM_API int mcpm_kernel_times_json(mcpm_model* model, char* out, size_t len);

/* Test hook: the distribution the sampler draws from. logits float[n_vocab], history int32[n_history] (prompt +
 * generated so far, for the penalty), probs_out float[n_vocab] (0 for filtered tokens). Errors: mcpm_last_error(NULL). */
MCPM_API int mcpm_sampler_probs(const float* logits, int n_vocab, const int32_t* history, int n_history,
                                const mcpm_sampling* s, float* probs_out);

/* ---- text sessions (chat and completion over the bundle's tokenizer and chat template; no Python needed) */

typedef struct mcpm_session mcpm_session; /* opaque */

/* Called with each piece of generated text: text char[len] (UTF-8, never a split character; also NUL-terminated).
 * Return nonzero to cancel the generation. */
typedef int (*mcpm_text_callback)(const char* text, size_t len, void* user);

/* Reads <bundle_dir>/mcpm-config.json (chat_template, bos_token_id, stop_token_ids, tokenizer) and the tokenizer
 * of the bundle the model was loaded from. The session uses the model (its context) until mcpm_session_free; the
 * model must outlive it. Returns NULL on failure: the reason is in mcpm_last_error(model). */
MCPM_API mcpm_session* mcpm_session_new(mcpm_model* model);

/* One chat turn: renders user_message with the chat template's "user" format plus its generation_prompt (BOS
 * first when the conversation is new and the template has add_bos), feeds it after the last token of the previous
 * reply (kept in the KV cache), then generates up to max_new_tokens until a stop id, streaming the reply's text
 * (stop tokens excluded) to cb (may be NULL). s may be NULL (greedy). Returns the number of generated tokens (stop
 * token included), or -1 (mcpm_last_error(model)), e.g. "the conversation is full (...)" with nothing fed. */
MCPM_API int mcpm_session_chat(mcpm_session* session, const char* user_message, int max_new_tokens,
                               const mcpm_sampling* s, mcpm_text_callback cb, void* user);

/* Plain continuation: starts a new conversation (mcpm_session_reset), feeds BOS + prompt (no template) and
 * generates like mcpm_session_chat. Returns the number of generated tokens, or -1. */
MCPM_API int mcpm_session_complete(mcpm_session* session, const char* prompt, int max_new_tokens,
                                   const mcpm_sampling* s, mcpm_text_callback cb, void* user);

/* MiniCPM-V bundles: 1 when the bundle has a vision encoder (plan entries embed, prefill_embeds, vision). */
MCPM_API int mcpm_model_has_vision(const mcpm_model* model);
/* Encodes an image for the next mcpm_session_chat turn: rgb uint8[h][w][3]. Slices it as MiniCPM-V 2.0 does
 * (overview + up to max_slices slices), runs the vision encoder on each now and keeps the features; the next
 * chat turn puts the image's placeholders before the message (docs/minicpmv.md). Several calls attach several
 * images to that turn, in order. Images over max_pixels are downscaled first (mcpm_model_notice / stats
 * "notice"). Returns the number of vision-encoder runs (overview + slices), or -1 (mcpm_session_last_error):
 * no vision encoder in the bundle, empty image, NULL rgb, a slice needing more than max_patches patches. */
MCPM_API int mcpm_encode_image(mcpm_session* session, const uint8_t* rgb, int w, int h);
/* The most pixels (w * h) mcpm_encode_image takes as they are: larger images are downscaled first. It is the
 * bundle's mcpm-config.json vision.max_pixels; apps decode pictures to at most this size (a phone need not hold a
 * full-size photo). 0 when the bundle has no vision encoder. */
MCPM_API int64_t mcpm_session_max_pixels(const mcpm_session* session);
/* Drops the images attached with mcpm_encode_image that no chat turn has used yet. */
MCPM_API void mcpm_session_clear_images(mcpm_session* session);

/* Forgets the conversation (mcpm_reset of the model, the pending token and the pending images). */
MCPM_API void mcpm_session_reset(mcpm_session* session);

/* Last error of the session's model ("" if none). */
MCPM_API const char* mcpm_session_last_error(const mcpm_session* session);

MCPM_API void mcpm_session_free(mcpm_session* session);

/* ---- self-test (docs/self-test.md): does this phone compute what the export's reference computed? */

/* Checks the session's model against the golden results its export recorded (mcpm-config.json "golden": the
 * PyTorch reference's greedy continuation of a fixed prompt and its five largest logits at every step). Encodes the
 * golden prompt with the bundle's tokenizer (it must give the recorded ids), feeds the recorded ids, then each
 * golden id in turn (teacher-forced: a near-tie does not derail the steps after it), and at every step compares the
 * logits of the reference's top-5 ids (each within tolerance x max|logit|) and the argmax (the reference's token, or
 * one whose logit is within that tolerance of it: a near-tie, counted). MiniCPM-V bundles also record a chat turn
 * with a generated image ("golden.image"): the image is encoded here (slicing, vision tower, resampler), the turn's
 * ids must equal the recorded ones, and its steps are checked the same way. Forgets the conversation before and after.
 * Writes one JSON object into out char[len] (MCPM_SELF_TEST_JSON_MAX bytes always suffice): pass (true/false),
 * reason ("" or one line naming the kernel set, the device and the first failing step), kernel_variant, device,
 * prompt_tokens, steps, argmax_equal, near_ties, max_logit_diff (a fraction of max|logit|), tolerance, tokenizer
 * ("pass" or "fail: ..."), ms, reference, image (null, or: pass, width, height, slices, prompt_tokens, prompt ("pass"
 * or "fail: ..."), steps, argmax_equal, near_ties, max_logit_diff, tolerance, encode_ms, ms). Returns 0 when the test
 * ran (passed or failed); -1 when it could not (mcpm_session_last_error): the bundle has no golden results, a
 * damaged record, a cancel (mcpm_set_abort_callback). */
#define MCPM_SELF_TEST_JSON_MAX 8192
MCPM_API int mcpm_self_test_json(mcpm_session* session, char* out, size_t len);

/* The bundle's CPU kernel sets (plan.json "kernel_variants", in preference order) and whether this CPU runs each, as
 * a JSON array into out char[len]: [{"name": "i8mm", "supported": false}, {"name": "dotprod", "supported": true},
 * ...]; "[]" when the bundle has a single kernel set (host bundles). Load the model once per supported set with
 * mcpm_params.kernel_variant to self-test or benchmark each. Returns 0, or -1 (mcpm_last_error(model)). */
MCPM_API int mcpm_kernel_variants_json(mcpm_model* model, char* out, size_t len);

#ifdef __cplusplus
}
#endif
#endif /* MCPM_H */
