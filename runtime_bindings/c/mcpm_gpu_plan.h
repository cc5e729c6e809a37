/* Launch records of plan.json's "gpu" section (docs/gpu-plan.md), device-neutral (private; mcpm_gpu_plan.c).
 *
 * Both GPU dispatchers, OpenCL (mcpm_opencl.c) and Metal (runtime_bindings/metal/mcpm_metal.m), read the records
 * only through this module: it parses and validates them against the plan (mcpm_gpu_desc of mcpm_opencl.h),
 * evaluates their RPN expressions (scalars, grids) for a call's n/pos, and keeps the per-plan-kernel times of the
 * profiling mode. A dispatcher only maps records to its device: buffer params (gpu_param.arg: the call's arg index)
 * to device buffers, scalar params (gpu_plan_scalar) to kernel arguments, grid (gpu_plan_grid) x block to a launch. */
#ifndef MCPM_GPU_PLAN_H
#define MCPM_GPU_PLAN_H

#include <stddef.h>
#include <stdint.h>

#include "mcpm_opencl.h"

#define GPU_MAX_BLOCK_THREADS 1024

enum { GPU_SCALAR_INT32, GPU_SCALAR_INT64, GPU_SCALAR_FLOAT32 };

typedef struct {
    int op;
    int64_t v;
} gpu_rpn_tok;

typedef struct {
    int first; /* into gpu_plan.toks */
    int len;
} gpu_expr;

typedef struct {
    int is_scalar;
    int arg;        /* buffer: the call's arg index */
    int dtype;      /* scalar: GPU_SCALAR_* */
    gpu_expr expr;  /* scalar value */
} gpu_param;

typedef struct {
    char* kernel;        /* device kernel name */
    int first_param;     /* into gpu_plan.params */
    int n_params;
    gpu_expr grid[3];
    size_t block[3];
} gpu_launch;

typedef struct {
    double ns;
    long count, launches;
} gpu_ktime;

typedef struct {
    gpu_rpn_tok* toks;
    int n_toks, cap_toks;
    gpu_param* params;
    int n_params, cap_params;
    gpu_launch* launches;
    int n_launches, cap_launches;
    int* first_launch;       /* int[n_kernels]: per plan kernel */
    int* n_kernel_launches;
    int n_kernels;
    char** kernel_names;     /* [n_kernels] (copies) */
    gpu_ktime* times;        /* [n_kernels] */
} gpu_plan;

/* printf into err char[len]; returns -1 */
int gpu_err(char* err, size_t len, const char* fmt, ...) __attribute__((format(printf, 3, 4)));

/* Grows *p (elements of elem bytes, capacity *cap) to hold need elements; 0, or -1 out of memory. */
int gpu_grow(void** p, int* cap, int need, size_t elem);

/* Parses and validates desc->gpu ("version", "launches") against the plan in desc; copies the kernel names and
 * allocates the times. 0, or -1 with the one-line reason in err (p is then to be freed with gpu_plan_free). */
int gpu_plan_parse(gpu_plan* p, const mcpm_gpu_desc* desc, char* err, size_t errlen);
void gpu_plan_free(gpu_plan* p);

/* 0 and *out, or -1 (division by zero, overflow) with a short reason in why. */
int gpu_plan_eval(const gpu_plan* p, const gpu_expr* e, int64_t n, int64_t pos, int64_t* out, const char** why);

/* 1 when the scalar's expression uses neither n nor pos (set once at load). */
int gpu_plan_scalar_is_fixed(const gpu_plan* p, const gpu_param* pr);

/* The value of scalar param idx (where: the launch, for messages) at n/pos, checked to fit its dtype (float32
 * scalars are returned as integers too; the dispatcher converts). 0, or -1 with the reason in err. */
int gpu_plan_scalar(const gpu_plan* p, const gpu_param* pr, int idx, int64_t n, int64_t pos, int64_t* out,
                    const char* where, char* err, size_t errlen);

/* Work-groups per dimension of launch L at n/pos (kernel: its plan kernel, entry/call: for messages). */
int gpu_plan_grid(const gpu_plan* p, const gpu_launch* L, int kernel, const char* entry, int call, int n, int pos,
                  size_t grid[3], char* err, size_t errlen);

/* Per plan kernel: [{"kernel", "count", "launches", "ms"}], slowest first, only kernels that ran (mcpm_opencl.h's
 * mcpm_gpu_times_json). -1 if out char[len] is too small. */
int gpu_plan_times_json(const gpu_plan* p, char* out, size_t len);
void gpu_plan_reset_times(gpu_plan* p);

#endif
