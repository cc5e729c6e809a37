/* The symbols that TVM-generated kernels reference in the runtime, and their visibility (internal header).
 *
 * The kernels live in another object or archive than the runtime (kernels.o, libmcpm_kernels.a of the iOS
 * xcframework). They call TVMFFIErrorSetRaisedFromCStrParts and read three function-pointer slots
 * (__TVMBackendParallelLaunch / AllocWorkspace / FreeWorkspace) that they define WEAK; the runtime's strong
 * definitions must reach them at the final link. Visibility:
 *  - ELF (host, Linux, Android .so): hidden, so that nothing else in the process (e.g. libtvm_ffi in a Python
 *    process) can interpose on them;
 *  - Apple: default. Xcode prelinks a Swift package's C target into one object with `ld -r`, which turns hidden
 *    ("private extern") symbols into local ones, and the kernels, linked later from the xcframework, would then
 *    not find them (an undefined TVMFFIErrorSetRaisedFromCStrParts, and NULL backend slots). Mach-O's two-level
 *    namespace keeps them from being interposed anyway.
 * Freestanding (stdint.h only), so mcpm_kernel_abi.c compiles for any target without its SDK: the tests check
 * the Mach-O visibility with clang alone. */
#ifndef MCPM_KERNEL_ABI_H
#define MCPM_KERNEL_ABI_H

#include <stdint.h>

#if defined(__APPLE__)
#define MCPM_KERNEL_ABI __attribute__((visibility("default")))
#else
#define MCPM_KERNEL_ABI __attribute__((visibility("hidden")))
#endif

/* TVMParallelGroupEnv */
typedef struct {
    void* sync_handle;
    int32_t num_task;
} mcpm_parallel_env;

typedef int (*mcpm_parallel_lambda)(int task_id, mcpm_parallel_env* penv, void* cdata);

/* The runtime's implementations (mcpm_backend.c; hidden everywhere: only mcpm_kernel_abi.c calls them). */
__attribute__((visibility("hidden"))) int mcpm_backend_parallel_launch(mcpm_parallel_lambda fn, void* cdata,
                                                                        int num_task);
__attribute__((visibility("hidden"))) void* mcpm_backend_alloc_workspace(int device_type, int device_id,
                                                                         uint64_t nbytes, int dtype_code,
                                                                         int dtype_bits);
__attribute__((visibility("hidden"))) int mcpm_backend_free_workspace(int device_type, int device_id, void* ptr);
/* kind: "ValueError" etc.; parts: const char*[num_parts] joined into the calling thread's error buffer. */
__attribute__((visibility("hidden"))) void mcpm_backend_set_error(const char* kind, const char** parts,
                                                                  int32_t num_parts);

#endif
