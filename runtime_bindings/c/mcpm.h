/* mcpm on-device runtime: plain C11 API over a bundle (plan.json + weights.bin + kernels linked in).
 *
 * The bundle's kernels.o is linked INTO the same shared library as this runtime, e.g.
 *   gcc -std=c11 -O2 -fPIC -shared -fvisibility=hidden -o libmcpm_bundle.so \
 *       mcpm_json.c mcpm_runtime.c mcpm_backend.c <bundle>/kernels.o -lm -lpthread -ldl
 * mcpm_model_load() then finds every kernel of plan.json as the symbol __tvm_ffi_<name> in that library.
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

/* Forget the context (position 0). The KV cache rows are overwritten by later calls. */
MCPM_API void mcpm_reset(mcpm_model* model);

MCPM_API int mcpm_vocab_size(const mcpm_model* model);
MCPM_API int mcpm_context_length(const mcpm_model* model);
MCPM_API int mcpm_position(const mcpm_model* model);

/* Last error of this model ("" if none); with model == NULL the calling thread's last load error. */
MCPM_API const char* mcpm_last_error(const mcpm_model* model);

MCPM_API void mcpm_model_free(mcpm_model* model);

#ifdef __cplusplus
}
#endif
#endif /* MCPM_H */
