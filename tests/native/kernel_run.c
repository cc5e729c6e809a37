/* kernel_run: calls one TVM-generated kernel (symbol __tvm_ffi_f, linked in) on tensors read from files, for
 * kernel tests under qemu-user (tests/test_arm_kernels.py). Parallel launches run their tasks one after another
 * (num_task = 3, so the split of parallel loops is exercised); workspace comes from posix_memalign.
 *
 *   kernel_run DTYPE:SHAPE:FILE ... out:DTYPE:SHAPE:FILE
 *   DTYPE f32 | f16 | u32 | i32 | i8; SHAPE d0,d1,...; the last argument is the output, written to FILE.
 * Exit status 0 on success, 1 with one line on stderr otherwise. */
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mcpm_internal.h"

typedef int (*launch_fn)(mcpm_parallel_lambda, void*, int);
typedef void* (*alloc_fn)(int, int, uint64_t, int, int);
typedef int (*free_fn)(int, int, void*);

static int serial_launch(mcpm_parallel_lambda fn, void* cdata, int num_task) {
    (void)num_task;
    mcpm_parallel_env env = {NULL, 3};
    for (int t = 0; t < env.num_task; t++)
        if (fn(t, &env, cdata)) return -1;
    return 0;
}
static void* ws_alloc(int dt, int di, uint64_t nbytes, int code, int bits) {
    (void)dt; (void)di; (void)code; (void)bits;
    void* p = NULL;
    return posix_memalign(&p, 64, nbytes ? (size_t)nbytes : 64) == 0 ? p : NULL;
}
static int ws_free(int dt, int di, void* p) {
    (void)dt; (void)di;
    free(p);
    return 0;
}
launch_fn __TVMBackendParallelLaunch = serial_launch;
alloc_fn __TVMBackendAllocWorkspace = ws_alloc;
free_fn __TVMBackendFreeWorkspace = ws_free;

static char error_text[1024];
void TVMFFIErrorSetRaisedFromCStrParts(const char* kind, const char** parts, int32_t num_parts);
void TVMFFIErrorSetRaisedFromCStrParts(const char* kind, const char** parts, int32_t num_parts) {
    size_t used = (size_t)snprintf(error_text, sizeof error_text, "%s: ", kind ? kind : "Error");
    for (int32_t i = 0; i < num_parts && used < sizeof error_text - 1; i++)
        if (parts[i]) used += (size_t)snprintf(error_text + used, sizeof error_text - used, "%s", parts[i]);
}

int __tvm_ffi_f(void* self, const mcpm_ffi_any* args, int32_t nargs, mcpm_ffi_any* ret);

#define MAX_ARGS 8

static int fail(const char* what, const char* arg) {
    fprintf(stderr, "kernel_run: %s: %s\n", what, arg);
    return 1;
}

int main(int argc, char** argv) {
    static mcpm_dltensor dl[MAX_ARGS];
    static int64_t shapes[MAX_ARGS][MCPM_MAX_NDIM];
    static mcpm_ffi_any any[MAX_ARGS];
    size_t bytes[MAX_ARGS];
    const char* files[MAX_ARGS];
    int nargs = argc - 1;
    if (nargs < 1 || nargs > MAX_ARGS) return fail("usage", "kernel_run DTYPE:SHAPE:FILE ... out:DTYPE:SHAPE:FILE");
    for (int a = 0; a < nargs; a++) {
        char* spec = argv[a + 1];
        if (a == nargs - 1) {
            if (strncmp(spec, "out:", 4)) return fail("the last argument must start with out:", spec);
            spec += 4;
        }
        char* dtype = strtok(spec, ":");
        char* shape = strtok(NULL, ":");
        files[a] = strtok(NULL, ":");
        if (!dtype || !shape || !files[a]) return fail("bad argument", argv[a + 1]);
        mcpm_dl_dtype t;
        if (!strcmp(dtype, "f32")) t = (mcpm_dl_dtype){2, 32, 1};
        else if (!strcmp(dtype, "f16")) t = (mcpm_dl_dtype){2, 16, 1};
        else if (!strcmp(dtype, "u32")) t = (mcpm_dl_dtype){1, 32, 1};
        else if (!strcmp(dtype, "i32")) t = (mcpm_dl_dtype){0, 32, 1};
        else if (!strcmp(dtype, "i8")) t = (mcpm_dl_dtype){0, 8, 1};
        else return fail("unknown dtype", dtype);
        int nd = 0;
        bytes[a] = t.bits / 8;
        for (char* d = strtok(shape, ","); d; d = strtok(NULL, ",")) {
            if (nd == MCPM_MAX_NDIM) return fail("too many dims", argv[a + 1]);
            shapes[a][nd] = strtoll(d, NULL, 10);
            bytes[a] *= (size_t)shapes[a][nd++];
        }
        void* data = ws_alloc(0, 0, bytes[a], 0, 0); /* uint8[bytes[a]] */
        if (!data) return fail("out of memory", argv[a + 1]);
        if (a < nargs - 1) {
            FILE* f = fopen(files[a], "rb");
            if (!f) return fail("cannot open", files[a]);
            size_t got = fread(data, 1, bytes[a], f);
            fclose(f);
            if (got != bytes[a]) return fail("short file", files[a]);
        } else {
            memset(data, 0, bytes[a]);
        }
        dl[a] = (mcpm_dltensor){data, {1, 0}, nd, t, shapes[a], NULL, 0};
        any[a].type_index = MCPM_FFI_DLTENSOR_PTR;
        any[a].zero_padding = 0;
        any[a].u.v_ptr = &dl[a];
    }
    mcpm_ffi_any ret;
    memset(&ret, 0, sizeof ret);
    if (__tvm_ffi_f(NULL, any, nargs, &ret)) return fail("kernel failed", error_text);
    FILE* f = fopen(files[nargs - 1], "wb");
    if (!f || fwrite(dl[nargs - 1].data, 1, bytes[nargs - 1], f) != bytes[nargs - 1]) return fail("cannot write", files[nargs - 1]);
    fclose(f);
    return 0;
}
