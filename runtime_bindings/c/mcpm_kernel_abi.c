/* What TVM-generated kernels link against in the runtime: the error hook and the three backend slots, with the
 * visibility mcpm_kernel_abi.h explains (default on Apple, hidden on ELF). Freestanding: no system headers. */
#include "mcpm_kernel_abi.h"

MCPM_KERNEL_ABI void TVMFFIErrorSetRaisedFromCStrParts(const char* kind, const char** parts, int32_t num_parts);

void TVMFFIErrorSetRaisedFromCStrParts(const char* kind, const char** parts, int32_t num_parts) {
    mcpm_backend_set_error(kind, parts, num_parts);
}

/* The kernels' weak function-pointer slots, overridden here. */
typedef int (*mcpm_launch_fn)(mcpm_parallel_lambda, void*, int);
typedef void* (*mcpm_alloc_fn)(int, int, uint64_t, int, int);
typedef int (*mcpm_free_fn)(int, int, void*);
MCPM_KERNEL_ABI mcpm_launch_fn __TVMBackendParallelLaunch = mcpm_backend_parallel_launch;
MCPM_KERNEL_ABI mcpm_alloc_fn __TVMBackendAllocWorkspace = mcpm_backend_alloc_workspace;
MCPM_KERNEL_ABI mcpm_free_fn __TVMBackendFreeWorkspace = mcpm_backend_free_workspace;
