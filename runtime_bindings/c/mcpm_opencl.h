/* GPU dispatcher of the mcpm C runtime (private; mcpm_opencl.c): runs a plan's entries on an OpenCL device from the
 * launch records of plan.json's "gpu" section (docs/gpu-plan.md). mcpm_plan.c parses and validates the CPU plan
 * as always and hands this module a flat description of it (mcpm_gpu_desc); this module parses the "gpu" section,
 * loads libOpenCL with dlopen, builds the program from the bundle's OpenCL source, allocates every storage, cache
 * and weight as a device buffer and replays the calls. */
#ifndef MCPM_OPENCL_H
#define MCPM_OPENCL_H

#include <stddef.h>
#include <stdint.h>

#include "mcpm_json.h"

/* arg kinds: the values of mcpm_model.h's ARG_* (checked in mcpm_plan.c) */
enum { MCPM_GPU_ARG_INPUT, MCPM_GPU_ARG_SCALAR, MCPM_GPU_ARG_WEIGHT, MCPM_GPU_ARG_CACHE, MCPM_GPU_ARG_TENSOR };

typedef struct {
    int kind;        /* MCPM_GPU_ARG_* */
    int index;       /* weight: weight index; cache: layer; tensor: storage id */
    int which_v;     /* cache: 0 = k, 1 = v */
    int64_t offset;  /* tensor: bytes into the storage */
    int64_t bytes;   /* buffers: the largest size over n = 1..n_max of its entry */
} mcpm_gpu_arg;

typedef struct {
    int kernel;      /* index into kernel_names */
    int first_arg;   /* into mcpm_gpu_desc.args */
    int nargs;
} mcpm_gpu_call;

typedef struct {
    const char* name;             /* "prefill" / "decode" */
    int n_max;
    int n_storages;
    const int64_t* storage_size;  /* int64[n_storages], bytes */
    int n_calls;
    const mcpm_gpu_call* calls;   /* mcpm_gpu_call[n_calls] */
    int output_storage;           /* the logits tensor's storage */
} mcpm_gpu_entry;

typedef struct {
    const char* bundle_dir;
    const char* plan_path;        /* for messages */
    const json_doc* doc;
    const json_node* gpu;         /* plan.json's "gpu" object */
    int max_ctx;
    int n_kernels;
    char* const* kernel_names;    /* [n_kernels] */
    int n_weights;
    unsigned char* const* weight_data; /* [n_weights]: the weights.bin mapping */
    int num_layers;
    size_t cache_bytes;           /* each of the 2 * num_layers caches (k0, v0, k1, ...) */
    int n_args;
    const mcpm_gpu_arg* args;     /* [n_args], both entries */
    mcpm_gpu_entry entries[2];    /* prefill, decode */
    int profile;                  /* 1 = time every launch (OpenCL profiling events) */
    const char* cache_dir;        /* program binary cache folder; NULL/"" = $MCPM_CACHE_DIR/opencl, else no cache */
} mcpm_gpu_desc;

typedef struct mcpm_gpu mcpm_gpu;

/* Opens the device and uploads everything; NULL with a one-line reason in err char[errlen] on failure. Nothing of
 * desc is kept (the json doc may be freed afterwards). */
mcpm_gpu* mcpm_gpu_open(const mcpm_gpu_desc* desc, char* err, size_t errlen);

/* Runs entry 0 (prefill) or 1 (decode) for tokens int32[n] at position pos; if out != NULL, reads float[vocab] of the
 * output storage at byte out_offset into it. 0, or -1 with the reason in err. */
int mcpm_gpu_run(mcpm_gpu* g, int entry, const int32_t* tokens, int n, int pos, float* out, int64_t out_offset,
                 int vocab, char* err, size_t errlen);

/* "OpenCL: <device name> (<platform>)" */
const char* mcpm_gpu_device_name(const mcpm_gpu* g);
/* "built" (from source) or "cached" (program binary from the cache folder) */
const char* mcpm_gpu_program_origin(const mcpm_gpu* g);

/* Per plan kernel: [{"kernel", "count" (calls), "launches", "ms"}], slowest first; only kernels that ran. "[]" when
 * profiling is off. -1 if out char[len] is too small. */
int mcpm_gpu_times_json(const mcpm_gpu* g, char* out, size_t len);
void mcpm_gpu_reset_times(mcpm_gpu* g);

void mcpm_gpu_free(mcpm_gpu* g);

#endif
