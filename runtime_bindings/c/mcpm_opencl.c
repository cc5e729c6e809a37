/* mcpm OpenCL dispatcher: runs a plan's entries on an OpenCL device from plan.json's "gpu" launch records
 * (docs/gpu-plan.md). libOpenCL is loaded with dlopen at run time (never linked), so a runtime built with this file
 * still loads and runs on the CPU where there is no OpenCL.
 *
 * Load: parse + validate the launch records (mcpm_gpu_plan.c, device-neutral: the Metal dispatcher
 * runtime_bindings/metal/mcpm_metal.m reads the same records through it), dlopen
 * libOpenCL, pick a device (the first GPU of any platform, else the first device), build the bundle's OpenCL source
 * (program binary cached under $MCPM_CACHE_DIR/opencl or mcpm_params.cache_dir, never in the bundle), allocate every
 * storage / cache / weight as one device buffer (weights copied once from the mmap), and create one cl_kernel per
 * (entry, call, launch) with its buffer arguments set once.
 * Run: write the tokens, per launch set the scalars that depend on n/pos, evaluate the grid, enqueue
 * (global = grid * block, local = block), then read back the last position's logits only. */
#define _POSIX_C_SOURCE 200809L
#include "mcpm_opencl.h"

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mcpm_cl.h"
#include "mcpm_internal.h"
#include "mcpm_gpu_plan.h"

/* ================================================================ OpenCL library (process-wide, loaded once) */

typedef struct {
    mcl_GetPlatformIDs_fn GetPlatformIDs;
    mcl_GetPlatformInfo_fn GetPlatformInfo;
    mcl_GetDeviceIDs_fn GetDeviceIDs;
    mcl_GetDeviceInfo_fn GetDeviceInfo;
    mcl_CreateContext_fn CreateContext;
    mcl_CreateCommandQueue_fn CreateCommandQueue;
    mcl_CreateBuffer_fn CreateBuffer;
    mcl_CreateSubBuffer_fn CreateSubBuffer;
    mcl_CreateProgramWithSource_fn CreateProgramWithSource;
    mcl_CreateProgramWithBinary_fn CreateProgramWithBinary;
    mcl_BuildProgram_fn BuildProgram;
    mcl_GetProgramInfo_fn GetProgramInfo;
    mcl_GetProgramBuildInfo_fn GetProgramBuildInfo;
    mcl_CreateKernel_fn CreateKernel;
    mcl_GetKernelWorkGroupInfo_fn GetKernelWorkGroupInfo;
    mcl_SetKernelArg_fn SetKernelArg;
    mcl_EnqueueWriteBuffer_fn EnqueueWriteBuffer;
    mcl_EnqueueReadBuffer_fn EnqueueReadBuffer;
    mcl_EnqueueFillBuffer_fn EnqueueFillBuffer;
    mcl_EnqueueNDRangeKernel_fn EnqueueNDRangeKernel;
    mcl_Finish_fn Finish;
    mcl_GetEventProfilingInfo_fn GetEventProfilingInfo;
    mcl_ReleaseEvent_fn ReleaseEvent;
    mcl_ReleaseKernel_fn ReleaseKernel;
    mcl_ReleaseProgram_fn ReleaseProgram;
    mcl_ReleaseMemObject_fn ReleaseMemObject;
    mcl_ReleaseCommandQueue_fn ReleaseCommandQueue;
    mcl_ReleaseContext_fn ReleaseContext;
} cl_api;

static cl_api CL;
static char cl_load_error[512];
static pthread_once_t cl_once = PTHREAD_ONCE_INIT;

static void cl_load(void) {
    /* Never dlclose'd: ICDs register exit handlers. Android: /system/vendor/lib64/libOpenCL.so is found by name
     * through the linker namespace of apps that declare it (uses-native-library). */
#if defined(__ANDROID__)
    const char* names[] = {"libOpenCL.so", "libOpenCL.so.1"}; /* the vendor's name on phones first */
#else
    const char* names[] = {"libOpenCL.so.1", "libOpenCL.so"};
#endif
    void* h = NULL;
    char why[2][200] = {"", ""}; /* each name's dlerror: the real reason may be the second one's */
    for (int i = 0; i < 2 && !h; i++) {
        h = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
        if (!h) {
            const char* e = dlerror();
            snprintf(why[i], sizeof why[i], "%s", e ? e : "not found");
        }
    }
    if (!h) {
        snprintf(cl_load_error, sizeof cl_load_error,
                 "no OpenCL library (%s: %s; %s: %s): install an OpenCL driver (ICD) or use device \"cpu\"", names[0],
                 why[0], names[1], why[1]);
        return;
    }
    struct {
        const char* name;
        void** slot;
    } syms[] = {
#define SYM(x) {"cl" #x, (void**)&CL.x}
        SYM(GetPlatformIDs), SYM(GetPlatformInfo), SYM(GetDeviceIDs), SYM(GetDeviceInfo), SYM(CreateContext),
        SYM(CreateCommandQueue), SYM(CreateBuffer), SYM(CreateSubBuffer), SYM(CreateProgramWithSource),
        SYM(CreateProgramWithBinary), SYM(BuildProgram), SYM(GetProgramInfo), SYM(GetProgramBuildInfo),
        SYM(CreateKernel), SYM(GetKernelWorkGroupInfo), SYM(SetKernelArg), SYM(EnqueueWriteBuffer),
        SYM(EnqueueReadBuffer), SYM(EnqueueFillBuffer), SYM(EnqueueNDRangeKernel), SYM(Finish),
        SYM(GetEventProfilingInfo), SYM(ReleaseEvent), SYM(ReleaseKernel), SYM(ReleaseProgram),
        SYM(ReleaseMemObject), SYM(ReleaseCommandQueue), SYM(ReleaseContext),
#undef SYM
    };
    for (size_t i = 0; i < sizeof syms / sizeof syms[0]; i++) {
        void* p = dlsym(h, syms[i].name);
        if (!p) {
            snprintf(cl_load_error, sizeof cl_load_error,
                     "the OpenCL library lacks %s (OpenCL 1.2 is needed): update the GPU driver or use device \"cpu\"",
                     syms[i].name);
            return;
        }
        memcpy(syms[i].slot, &p, sizeof p); /* object pointer -> function pointer without a cast warning */
    }
}

static const char* cl_code(mcl_int rc) {
    switch (rc) {
    case MCL_DEVICE_NOT_FOUND: return "CL_DEVICE_NOT_FOUND";
    case MCL_DEVICE_NOT_AVAILABLE: return "CL_DEVICE_NOT_AVAILABLE";
    case MCL_COMPILER_NOT_AVAILABLE: return "CL_COMPILER_NOT_AVAILABLE";
    case MCL_MEM_OBJECT_ALLOCATION_FAILURE: return "CL_MEM_OBJECT_ALLOCATION_FAILURE";
    case MCL_OUT_OF_RESOURCES: return "CL_OUT_OF_RESOURCES";
    case MCL_OUT_OF_HOST_MEMORY: return "CL_OUT_OF_HOST_MEMORY";
    case MCL_BUILD_PROGRAM_FAILURE: return "CL_BUILD_PROGRAM_FAILURE";
    case MCL_MISALIGNED_SUB_BUFFER_OFFSET: return "CL_MISALIGNED_SUB_BUFFER_OFFSET";
    case MCL_INVALID_VALUE: return "CL_INVALID_VALUE";
    case MCL_INVALID_BINARY: return "CL_INVALID_BINARY";
    case MCL_INVALID_KERNEL_NAME: return "CL_INVALID_KERNEL_NAME";
    case MCL_INVALID_ARG_SIZE: return "CL_INVALID_ARG_SIZE";
    case MCL_INVALID_WORK_GROUP_SIZE: return "CL_INVALID_WORK_GROUP_SIZE";
    case MCL_INVALID_GLOBAL_WORK_SIZE: return "CL_INVALID_GLOBAL_WORK_SIZE";
    case MCL_INVALID_BUFFER_SIZE: return "CL_INVALID_BUFFER_SIZE";
    case MCL_PLATFORM_NOT_FOUND_KHR: return "CL_PLATFORM_NOT_FOUND_KHR";
    default: return "OpenCL error";
    }
}

static int is_oom(mcl_int rc) {
    return rc == MCL_MEM_OBJECT_ALLOCATION_FAILURE || rc == MCL_OUT_OF_RESOURCES || rc == MCL_OUT_OF_HOST_MEMORY ||
           rc == MCL_INVALID_BUFFER_SIZE;
}

/* ================================================================ the dispatcher */

typedef struct {
    mcl_kernel k;
    int launch;           /* into recs.launches */
    int scalars_fixed;    /* 1: every scalar param is constant (set once at load) */
} inst;

typedef struct {
    int n_calls;
    int* call_kernel;     /* int[n_calls]: plan kernel of each call */
    int* first_inst;      /* int[n_calls + 1] into insts */
    inst* insts;
    int n_insts;
    mcl_mem* storages;    /* [n_storages] */
    int n_storages;
    mcl_mem tokens;       /* int32[n_max] */
    int n_max;
    int output_storage;
} gpu_entry;

struct mcpm_gpu {
    gpu_plan recs;
    mcl_context ctx;
    mcl_command_queue q;
    mcl_device_id dev;
    mcl_program prog;
    mcl_mem* weights;     /* [n_weights], NULL for weights no call uses */
    int n_weights;
    mcl_mem* caches;      /* [2 * num_layers] */
    int n_caches;
    mcl_mem* subs;        /* sub-buffers for tensor args at an offset */
    int n_subs, cap_subs;
    gpu_entry e[2];
    int profile;
    mcl_event* events;    /* [max insts of an entry] when profiling */
    size_t base_align;    /* bytes: sub-buffer origin alignment */
    char name[256];
    const char* origin;
};

const char* mcpm_gpu_device_name(const mcpm_gpu* g) { return g->name; }
const char* mcpm_gpu_program_origin(const mcpm_gpu* g) { return g->origin; }

void mcpm_gpu_free(mcpm_gpu* g) {
    if (!g) return;
    if (g->q) CL.Finish(g->q);
    for (int ei = 0; ei < 2; ei++) {
        gpu_entry* e = &g->e[ei];
        for (int i = 0; e->insts && i < e->n_insts; i++)
            if (e->insts[i].k) CL.ReleaseKernel(e->insts[i].k);
        for (int i = 0; e->storages && i < e->n_storages; i++)
            if (e->storages[i]) CL.ReleaseMemObject(e->storages[i]);
        if (e->tokens) CL.ReleaseMemObject(e->tokens);
        free(e->insts);
        free(e->first_inst);
        free(e->call_kernel);
        free(e->storages);
    }
    for (int i = 0; i < g->n_subs; i++) CL.ReleaseMemObject(g->subs[i]);
    for (int i = 0; g->weights && i < g->n_weights; i++)
        if (g->weights[i]) CL.ReleaseMemObject(g->weights[i]);
    for (int i = 0; g->caches && i < g->n_caches; i++)
        if (g->caches[i]) CL.ReleaseMemObject(g->caches[i]);
    if (g->prog) CL.ReleaseProgram(g->prog);
    if (g->q) CL.ReleaseCommandQueue(g->q);
    if (g->ctx) CL.ReleaseContext(g->ctx);
    free(g->subs);
    free(g->weights);
    free(g->caches);
    free(g->events);
    gpu_plan_free(&g->recs);
    free(g);
}

static void info_str(mcl_device_id d, mcl_device_info what, char* out, size_t len) {
    out[0] = '\0';
    if (CL.GetDeviceInfo(d, what, len - 1, out, NULL) != MCL_SUCCESS) out[0] = '\0';
    out[len - 1] = '\0';
}

static void platform_str(mcl_platform_id p, mcl_platform_info what, char* out, size_t len) {
    out[0] = '\0';
    if (CL.GetPlatformInfo(p, what, len - 1, out, NULL) != MCL_SUCCESS) out[0] = '\0';
    out[len - 1] = '\0';
}

/* JSON-safe copy (device names are printed into the stats JSON) */
static void sanitize(char* s) {
    for (; *s; s++)
        if (*s == '"' || *s == '\\' || (unsigned char)*s < 0x20) *s = '\'';
}

static int pick_device(mcpm_gpu* g, char* err, size_t errlen) {
    mcl_uint np = 0;
    mcl_int rc = CL.GetPlatformIDs(0, NULL, &np);
    if (rc == MCL_PLATFORM_NOT_FOUND_KHR || (rc == MCL_SUCCESS && np == 0))
        return gpu_err(err, errlen, "no OpenCL platform: the OpenCL loader found no driver (check /etc/OpenCL/vendors "
                       "or OCL_ICD_VENDORS), or use device \"cpu\"");
    if (rc != MCL_SUCCESS) return gpu_err(err, errlen, "OpenCL: clGetPlatformIDs failed: %s (%d)", cl_code(rc), rc);
    if (np > 16) np = 16;
    mcl_platform_id ps[16];
    if ((rc = CL.GetPlatformIDs(np, ps, NULL)) != MCL_SUCCESS)
        return gpu_err(err, errlen, "OpenCL: clGetPlatformIDs failed: %s (%d)", cl_code(rc), rc);
    /* the first GPU of any platform, else the first device of any type */
    for (int pass = 0; pass < 2 && !g->dev; pass++)
        for (mcl_uint i = 0; i < np && !g->dev; i++) {
            mcl_device_id d = NULL;
            mcl_uint nd = 0;
            if (CL.GetDeviceIDs(ps[i], pass ? MCL_DEVICE_TYPE_ALL : MCL_DEVICE_TYPE_GPU, 1, &d, &nd) == MCL_SUCCESS &&
                nd > 0 && d) {
                g->dev = d;
                char dn[128], pn[96];
                info_str(d, MCL_DEVICE_NAME, dn, sizeof dn);
                platform_str(ps[i], MCL_PLATFORM_NAME, pn, sizeof pn);
                snprintf(g->name, sizeof g->name, "OpenCL: %s (%s)", dn, pn);
                sanitize(g->name);
            }
        }
    if (!g->dev) return gpu_err(err, errlen, "no OpenCL device on %u OpenCL platform(s): use device \"cpu\"", np);
    g->ctx = CL.CreateContext(NULL, 1, &g->dev, NULL, NULL, &rc);
    if (!g->ctx || rc != MCL_SUCCESS)
        return gpu_err(err, errlen, "OpenCL: cannot create a context on %s: %s (%d)", g->name, cl_code(rc), rc);
    g->q = CL.CreateCommandQueue(g->ctx, g->dev, g->profile ? MCL_QUEUE_PROFILING_ENABLE : 0, &rc);
    if (!g->q || rc != MCL_SUCCESS)
        return gpu_err(err, errlen, "OpenCL: cannot create a command queue on %s: %s (%d)", g->name, cl_code(rc), rc);
    mcl_uint align_bits = 0;
    if (CL.GetDeviceInfo(g->dev, MCL_DEVICE_MEM_BASE_ADDR_ALIGN, sizeof align_bits, &align_bits, NULL) != MCL_SUCCESS ||
        align_bits < 8)
        align_bits = 4096;
    g->base_align = align_bits / 8;
    return 0;
}

static uint64_t fnv1a(uint64_t h, const void* p, size_t n) {
    const unsigned char* b = p;
    for (size_t i = 0; i < n; i++) { h ^= b[i]; h *= 1099511628211ULL; }
    return h;
}

/* <cache>/opencl/<128-bit hash of source + device + driver + options>.bin, or "" when there is no cache folder. */
static void cache_path(const mcpm_gpu* g, const char* cache_dir, const char* src, size_t len, const char* options,
                       char* out, size_t outlen) {
    out[0] = '\0';
    const char* base = cache_dir && cache_dir[0] ? cache_dir : getenv("MCPM_CACHE_DIR");
    if (!base || !base[0]) return;
    char dn[256], dv[128], drv[128];
    info_str(g->dev, MCL_DEVICE_NAME, dn, sizeof dn);
    info_str(g->dev, MCL_DEVICE_VERSION, dv, sizeof dv);
    info_str(g->dev, MCL_DRIVER_VERSION, drv, sizeof drv);
    const char* parts[] = {"mcpm-opencl-1", dn, dv, drv, options};
    uint64_t h1 = 14695981039346656037ULL, h2 = 0x9E3779B97F4A7C15ULL;
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
        h1 = fnv1a(h1, parts[i], strlen(parts[i]) + 1);
        h2 = fnv1a(h2, parts[i], strlen(parts[i]) + 1);
    }
    h1 = fnv1a(h1, src, len);
    h2 = fnv1a(h2 ^ 0x5bd1e995ULL, src, len);
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/opencl", base);
    if (mkdir(base, 0755) && errno != EEXIST) return;
    if (mkdir(dir, 0755) && errno != EEXIST) return;
    snprintf(out, outlen, "%s/%016llx%016llx.bin", dir, (unsigned long long)h1, (unsigned long long)h2);
}

static mcl_program build_from_binary(mcpm_gpu* g, const char* path, const char* options) {
    size_t len = 0;
    char* bin = path[0] ? mcpm_read_file(path, &len) : NULL;
    if (!bin) return NULL;
    mcl_int rc = 0, status = 0;
    const unsigned char* b = (const unsigned char*)bin;
    mcl_program p = len ? CL.CreateProgramWithBinary(g->ctx, 1, &g->dev, &len, &b, &status, &rc) : NULL;
    free(bin);
    if (p && (rc != MCL_SUCCESS || status != MCL_SUCCESS || CL.BuildProgram(p, 1, &g->dev, options, NULL, NULL))) {
        CL.ReleaseProgram(p);
        p = NULL;
    }
    return p;
}

static void save_binary(mcpm_gpu* g, const char* path) {
    size_t size = 0;
    if (!path[0] || CL.GetProgramInfo(g->prog, MCL_PROGRAM_BINARY_SIZES, sizeof size, &size, NULL) || !size) return;
    unsigned char* bin = malloc(size);
    if (!bin) return;
    if (!CL.GetProgramInfo(g->prog, MCL_PROGRAM_BINARIES, sizeof bin, &bin, NULL)) {
        char tmp[4480];
        snprintf(tmp, sizeof tmp, "%s.tmp%ld", path, (long)getpid());
        FILE* f = fopen(tmp, "wb");
        if (f) {
            int ok = fwrite(bin, 1, size, f) == size;
            ok = !fclose(f) && ok;
            if (!ok || rename(tmp, path)) remove(tmp);
        }
    }
    free(bin);
}

static int build_program(mcpm_gpu* g, const mcpm_gpu_desc* d, char* err, size_t errlen) {
    const json_node* srcn = json_get(d->doc, d->gpu, "opencl_source");
    if (!srcn || srcn->type != JSON_STRING || !mcpm_plain_file_name(srcn->str))
        return gpu_err(err, errlen, "%s: invalid plan: gpu: missing or malformed field 'opencl_source'", d->plan_path);
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", d->bundle_dir, srcn->str);
    size_t len = 0;
    char* src = mcpm_read_file(path, &len);
    if (!src) return gpu_err(err, errlen, "%s is missing: re-export the bundle with --device gpu", path);
    const char* options = "";
    char cpath[4400];
    cache_path(g, d->cache_dir, src, len, options, cpath, sizeof cpath);
    if ((g->prog = build_from_binary(g, cpath, options))) {
        g->origin = "cached";
        free(src);
        return 0;
    }
    mcl_int rc = 0;
    const char* srcs[1] = {src};
    g->prog = CL.CreateProgramWithSource(g->ctx, 1, srcs, &len, &rc);
    free(src);
    if (!g->prog || rc != MCL_SUCCESS)
        return gpu_err(err, errlen, "OpenCL: cannot create the program from %s: %s (%d)", path, cl_code(rc), rc);
    rc = CL.BuildProgram(g->prog, 1, &g->dev, options, NULL, NULL);
    if (rc != MCL_SUCCESS) {
        char log[2048] = "";
        size_t got = 0;
        if (CL.GetProgramBuildInfo(g->prog, g->dev, MCL_PROGRAM_BUILD_LOG, sizeof log - 1, log, &got) != MCL_SUCCESS) {
            /* log longer than the buffer: fetch it whole, keep the start */
            char* big = got ? malloc(got + 1) : NULL;
            if (big && CL.GetProgramBuildInfo(g->prog, g->dev, MCL_PROGRAM_BUILD_LOG, got, big, NULL) == MCL_SUCCESS)
                snprintf(log, sizeof log, "%s", big);
            free(big);
        }
        log[sizeof log - 1] = '\0';
        /* the first lines, joined with " | " */
        char lines[640] = "";
        size_t used = 0;
        int n_lines = 0;
        char* save = NULL;
        for (char* s = strtok_r(log, "\r\n", &save); s && n_lines < 6; s = strtok_r(NULL, "\r\n", &save)) {
            while (*s == ' ' || *s == '\t') s++;
            if (!*s) continue;
            int w = snprintf(lines + used, sizeof lines - used, "%s%s", n_lines ? " | " : "", s);
            if (w < 0 || (size_t)w >= sizeof lines - used) { used = sizeof lines - 1; break; }
            used += (size_t)w;
            n_lines++;
        }
        return gpu_err(err, errlen, "OpenCL: %s failed to build on %s: %s (%d); build log: %s", path, g->name,
                       cl_code(rc), rc, lines[0] ? lines : "(empty)");
    }
    g->origin = "built";
    save_binary(g, cpath);
    return 0;
}

static mcl_mem new_buffer(mcpm_gpu* g, size_t bytes, const void* host, const char* what, char* err, size_t errlen) {
    mcl_int rc = 0;
    size_t size = bytes < 64 ? 64 : (bytes + 63) / 64 * 64;
    if (host) size = bytes; /* copied from the mapping: exactly its bytes */
    mcl_ulong max_alloc = 0;
    if (!CL.GetDeviceInfo(g->dev, MCL_DEVICE_MAX_MEM_ALLOC_SIZE, sizeof max_alloc, &max_alloc, NULL) && max_alloc &&
        size > max_alloc) {
        gpu_err(err, errlen, "out of device memory: %s needs one buffer of %.1f MiB, %s allows at most %.1f MiB per "
                "buffer: use device \"cpu\" or a smaller model/context", what, size / 1048576.0, g->name,
                max_alloc / 1048576.0);
        return NULL;
    }
    mcl_mem m = CL.CreateBuffer(g->ctx, host ? MCL_MEM_READ_ONLY | MCL_MEM_COPY_HOST_PTR : MCL_MEM_READ_WRITE, size,
                                (void*)(uintptr_t)host, &rc);
    if (m && rc == MCL_SUCCESS && !host) {
        float zero = 0.0f; /* zeroed like the CPU path's storages and caches */
        rc = CL.EnqueueFillBuffer(g->q, m, &zero, sizeof zero, 0, size, 0, NULL, NULL);
    }
    if (!m || rc != MCL_SUCCESS) {
        if (m) CL.ReleaseMemObject(m);
        if (is_oom(rc))
            gpu_err(err, errlen, "out of device memory: allocating %s (%.1f MiB) on %s failed: %s (%d): use device "
                    "\"cpu\" or a smaller model/context", what, size / 1048576.0, g->name, cl_code(rc), rc);
        else
            gpu_err(err, errlen, "OpenCL: allocating %s (%.1f MiB) failed: %s (%d)", what, size / 1048576.0,
                    cl_code(rc), rc);
        return NULL;
    }
    return m;
}

static int alloc_buffers(mcpm_gpu* g, const mcpm_gpu_desc* d, char* err, size_t errlen) {
    char what[96];
    /* weights: the bytes of the args that use them (checked against weights.bin by the runtime) */
    int64_t* wbytes = calloc((size_t)d->n_weights + 1, sizeof(int64_t));
    g->weights = calloc((size_t)d->n_weights + 1, sizeof(mcl_mem));
    g->n_weights = d->n_weights;
    if (!wbytes || !g->weights) { free(wbytes); return gpu_err(err, errlen, "out of memory"); }
    for (int i = 0; i < d->n_args; i++)
        if (d->args[i].kind == MCPM_GPU_ARG_WEIGHT && d->args[i].bytes > wbytes[d->args[i].index])
            wbytes[d->args[i].index] = d->args[i].bytes;
    for (int w = 0; w < d->n_weights; w++) {
        if (!wbytes[w]) continue;
        snprintf(what, sizeof what, "weight %d", w);
        if (!(g->weights[w] = new_buffer(g, (size_t)wbytes[w], d->weight_data[w], what, err, errlen))) {
            free(wbytes);
            return -1;
        }
    }
    free(wbytes);
    g->n_caches = 2 * d->num_layers;
    if (!(g->caches = calloc((size_t)g->n_caches + 1, sizeof(mcl_mem)))) return gpu_err(err, errlen, "out of memory");
    for (int i = 0; i < g->n_caches; i++) {
        snprintf(what, sizeof what, "the %s cache of layer %d", i % 2 ? "V" : "K", i / 2);
        if (!(g->caches[i] = new_buffer(g, d->cache_bytes, NULL, what, err, errlen))) return -1;
    }
    for (int ei = 0; ei < 2; ei++) {
        const mcpm_gpu_entry* de = &d->entries[ei];
        gpu_entry* e = &g->e[ei];
        e->n_storages = de->n_storages;
        e->n_max = de->n_max;
        e->output_storage = de->output_storage;
        if (!(e->storages = calloc((size_t)de->n_storages + 1, sizeof(mcl_mem)))) return gpu_err(err, errlen, "out of memory");
        for (int s = 0; s < de->n_storages; s++) {
            snprintf(what, sizeof what, "%s storage %d", de->name, s);
            if (!(e->storages[s] = new_buffer(g, (size_t)de->storage_size[s], NULL, what, err, errlen))) return -1;
        }
        snprintf(what, sizeof what, "%s tokens", de->name);
        if (!(e->tokens = new_buffer(g, 4 * (size_t)de->n_max, NULL, what, err, errlen))) return -1;
    }
    return 0;
}

/* The device buffer of a call's buffer arg (a sub-buffer for a tensor at a nonzero offset). */
static mcl_mem arg_buffer(mcpm_gpu* g, int ei, const mcpm_gpu_arg* a, const char* where, char* err, size_t errlen) {
    gpu_entry* e = &g->e[ei];
    switch (a->kind) {
    case MCPM_GPU_ARG_INPUT: return e->tokens;
    case MCPM_GPU_ARG_WEIGHT: return g->weights[a->index];
    case MCPM_GPU_ARG_CACHE: return g->caches[2 * a->index + a->which_v];
    default: break;
    }
    mcl_mem base = e->storages[a->index];
    if (a->offset == 0) return base;
    if ((size_t)a->offset % g->base_align) {
        gpu_err(err, errlen, "%s: tensor at byte offset %lld of storage %d, but %s binds buffers only at multiples of "
                "%zu bytes: re-export (the exporter must emit offset-0 tensors)", where, (long long)a->offset, a->index,
                g->name, g->base_align);
        return NULL;
    }
    mcl_buffer_region r = {(size_t)a->offset, (size_t)(a->bytes > 0 ? a->bytes : 4)};
    mcl_int rc = 0;
    mcl_mem sub = CL.CreateSubBuffer(base, MCL_MEM_READ_WRITE, MCL_BUFFER_CREATE_TYPE_REGION, &r, &rc);
    if (!sub || rc != MCL_SUCCESS ||
        gpu_grow((void**)&g->subs, &g->cap_subs, g->n_subs + 1, sizeof(mcl_mem))) {
        if (sub) CL.ReleaseMemObject(sub);
        gpu_err(err, errlen, "%s: OpenCL: sub-buffer at offset %lld failed: %s (%d)", where, (long long)a->offset,
                cl_code(rc), rc);
        return NULL;
    }
    g->subs[g->n_subs++] = sub;
    return sub;
}

static int set_scalar(mcpm_gpu* g, mcl_kernel k, int idx, const gpu_param* pr, int64_t n, int64_t pos,
                      const char* where, char* err, size_t errlen) {
    int64_t v = 0;
    if (gpu_plan_scalar(&g->recs, pr, idx, n, pos, &v, where, err, errlen)) return -1;
    mcl_int rc;
    if (pr->dtype == GPU_SCALAR_INT32) {
        int32_t x = (int32_t)v;
        rc = CL.SetKernelArg(k, (mcl_uint)idx, sizeof x, &x);
    } else if (pr->dtype == GPU_SCALAR_INT64) {
        rc = CL.SetKernelArg(k, (mcl_uint)idx, sizeof v, &v);
    } else {
        float x = (float)v;
        rc = CL.SetKernelArg(k, (mcl_uint)idx, sizeof x, &x);
    }
    if (rc != MCL_SUCCESS)
        return gpu_err(err, errlen, "%s: OpenCL: clSetKernelArg(%d) failed: %s (%d): the launch record's params do not "
                       "match the kernel's parameters", where, idx, cl_code(rc), rc);
    return 0;
}

static int make_kernels(mcpm_gpu* g, const mcpm_gpu_desc* d, char* err, size_t errlen) {
    const gpu_plan* rs = &g->recs;
    size_t dev_max_wg = 0;
    if (CL.GetDeviceInfo(g->dev, MCL_DEVICE_MAX_WORK_GROUP_SIZE, sizeof dev_max_wg, &dev_max_wg, NULL)) dev_max_wg = 0;
    char* checked = calloc((size_t)rs->n_launches + 1, 1); /* launch records whose work-group size was checked */
    if (!checked) return gpu_err(err, errlen, "out of memory");
    int rc = 0, max_insts = 0;
    char where[400];
    for (int ei = 0; ei < 2 && !rc; ei++) {
        const mcpm_gpu_entry* de = &d->entries[ei];
        gpu_entry* e = &g->e[ei];
        e->n_calls = de->n_calls;
        e->call_kernel = calloc((size_t)de->n_calls + 1, sizeof(int));
        e->first_inst = calloc((size_t)de->n_calls + 1, sizeof(int));
        int total = 0;
        for (int c = 0; c < de->n_calls; c++) total += rs->n_kernel_launches[de->calls[c].kernel];
        e->insts = calloc((size_t)total + 1, sizeof(inst));
        if (!e->call_kernel || !e->first_inst || !e->insts) { rc = gpu_err(err, errlen, "out of memory"); break; }
        if (total > max_insts) max_insts = total;
        for (int c = 0; c < de->n_calls && !rc; c++) {
            const mcpm_gpu_call* call = &de->calls[c];
            e->call_kernel[c] = call->kernel;
            e->first_inst[c] = e->n_insts;
            for (int li = 0; li < rs->n_kernel_launches[call->kernel] && !rc; li++) {
                int lidx = rs->first_launch[call->kernel] + li;
                const gpu_launch* L = &rs->launches[lidx];
                snprintf(where, sizeof where, "device kernel '%.100s' (launch %d of plan kernel '%.100s', %s call %d)",
                         L->kernel, li, d->kernel_names[call->kernel], de->name, c);
                inst* in = &e->insts[e->n_insts++];
                in->launch = lidx;
                mcl_int crc = 0;
                in->k = CL.CreateKernel(g->prog, L->kernel, &crc);
                if (!in->k || crc != MCL_SUCCESS) {
                    in->k = NULL;
                    if (crc == MCL_INVALID_KERNEL_NAME)
                        rc = gpu_err(err, errlen, "%s is not in the bundle's OpenCL program: the plan and kernels.cl do "
                                     "not match, re-export the bundle", where);
                    else
                        rc = gpu_err(err, errlen, "%s: OpenCL: clCreateKernel failed: %s (%d)", where, cl_code(crc), crc);
                    break;
                }
                if (!checked[lidx]) {
                    checked[lidx] = 1;
                    size_t threads = L->block[0] * L->block[1] * L->block[2], kmax = 0;
                    if (CL.GetKernelWorkGroupInfo(in->k, g->dev, MCL_KERNEL_WORK_GROUP_SIZE, sizeof kmax, &kmax, NULL))
                        kmax = 0;
                    if ((kmax && threads > kmax) || (dev_max_wg && threads > dev_max_wg)) {
                        rc = gpu_err(err, errlen, "%s: work-groups of %zu threads, but %s allows at most %zu for it",
                                     where, threads, g->name, kmax && kmax < dev_max_wg ? kmax : dev_max_wg);
                        break;
                    }
                }
                in->scalars_fixed = 1;
                for (int p = 0; p < L->n_params && !rc; p++) {
                    const gpu_param* pr = &rs->params[L->first_param + p];
                    if (pr->is_scalar) {
                        if (!gpu_plan_scalar_is_fixed(rs, pr)) in->scalars_fixed = 0;
                        else rc = set_scalar(g, in->k, p, pr, 1, 0, where, err, errlen);
                        continue;
                    }
                    mcl_mem buf = arg_buffer(g, ei, &d->args[call->first_arg + pr->arg], where, err, errlen);
                    if (!buf) { rc = -1; break; }
                    mcl_int src = CL.SetKernelArg(in->k, (mcl_uint)p, sizeof buf, &buf);
                    if (src != MCL_SUCCESS)
                        rc = gpu_err(err, errlen, "%s: OpenCL: clSetKernelArg(%d) failed: %s (%d): the launch record's "
                                     "params do not match the kernel's parameters", where, p, cl_code(src), src);
                }
            }
        }
        e->first_inst[de->n_calls] = e->n_insts;
    }
    free(checked);
    if (!rc && g->profile && !(g->events = calloc((size_t)max_insts + 1, sizeof(mcl_event))))
        rc = gpu_err(err, errlen, "out of memory");
    return rc;
}

mcpm_gpu* mcpm_gpu_open(const mcpm_gpu_desc* d, char* err, size_t errlen) {
    err[0] = '\0';
    mcpm_gpu* g = calloc(1, sizeof *g);
    if (!g) { gpu_err(err, errlen, "out of memory"); return NULL; }
    g->profile = d->profile;
    g->origin = "built";
    if (gpu_plan_parse(&g->recs, d, err, errlen)) goto fail;
    pthread_once(&cl_once, cl_load);
    if (cl_load_error[0]) { gpu_err(err, errlen, "%s", cl_load_error); goto fail; }
    if (pick_device(g, err, errlen) || build_program(g, d, err, errlen) || alloc_buffers(g, d, err, errlen) ||
        make_kernels(g, d, err, errlen))
        goto fail;
    mcl_int frc = CL.Finish(g->q);
    if (frc != MCL_SUCCESS) {
        gpu_err(err, errlen, "%sOpenCL: uploading the weights to %s failed: %s (%d)", is_oom(frc) ? "out of device memory: " : "",
                g->name, cl_code(frc), frc);
        goto fail;
    }
    return g;
fail:
    mcpm_gpu_free(g);
    return NULL;
}

static void collect_times(mcpm_gpu* g, gpu_entry* e, int n_events) {
    int ev = 0;
    for (int c = 0; c < e->n_calls; c++) {
        gpu_ktime* t = &g->recs.times[e->call_kernel[c]];
        t->count++;
        for (int i = e->first_inst[c]; i < e->first_inst[c + 1] && ev < n_events; i++, ev++) {
            mcl_ulong a = 0, b = 0;
            if (!g->events[ev]) continue;
            if (!CL.GetEventProfilingInfo(g->events[ev], MCL_PROFILING_COMMAND_START, sizeof a, &a, NULL) &&
                !CL.GetEventProfilingInfo(g->events[ev], MCL_PROFILING_COMMAND_END, sizeof b, &b, NULL) && b >= a)
                t->ns += (double)(b - a);
            t->launches++;
        }
    }
    for (int i = 0; i < n_events; i++)
        if (g->events[i]) { CL.ReleaseEvent(g->events[i]); g->events[i] = NULL; }
}

int mcpm_gpu_run(mcpm_gpu* g, int entry, const int32_t* tokens, int n, int pos, float* out, int64_t out_offset,
                 int vocab, char* err, size_t errlen) {
    gpu_entry* e = &g->e[entry];
    const gpu_plan* rs = &g->recs;
    const char* ename = entry ? "decode" : "prefill";
    mcl_int rc = CL.EnqueueWriteBuffer(g->q, e->tokens, MCL_TRUE, 0, 4 * (size_t)n, tokens, 0, NULL, NULL);
    if (rc != MCL_SUCCESS)
        return gpu_err(err, errlen, "%sOpenCL: writing the tokens failed: %s (%d)", is_oom(rc) ? "out of device memory: " : "",
                       cl_code(rc), rc);
    int n_events = 0, fail = 0;
    char where[400];
    for (int c = 0; c < e->n_calls && !fail; c++) {
        for (int i = e->first_inst[c]; i < e->first_inst[c + 1] && !fail; i++) {
            const inst* in = &e->insts[i];
            const gpu_launch* L = &rs->launches[in->launch];
            size_t global[3];
            where[0] = '\0';
            for (int p = 0; !in->scalars_fixed && p < L->n_params && !fail; p++) {
                const gpu_param* pr = &rs->params[L->first_param + p];
                if (!pr->is_scalar || gpu_plan_scalar_is_fixed(rs, pr)) continue;
                if (!where[0])
                    snprintf(where, sizeof where, "device kernel '%.100s' (plan kernel '%.100s', %s call %d)", L->kernel,
                             g->recs.kernel_names[e->call_kernel[c]], ename, c);
                fail = set_scalar(g, in->k, p, pr, n, pos, where, err, errlen);
            }
            if (!fail) fail = gpu_plan_grid(rs, L, e->call_kernel[c], ename, c, n, pos, global, err, errlen);
            if (fail) break;
            for (int d = 0; d < 3; d++) global[d] *= L->block[d]; /* OpenCL: global size = grid * block */
            mcl_event* ev = g->profile ? &g->events[n_events++] : NULL;
            rc = CL.EnqueueNDRangeKernel(g->q, in->k, 3, NULL, global, L->block, 0, NULL, ev);
            if (rc != MCL_SUCCESS) {
                if (ev) { *ev = NULL; }
                fail = gpu_err(err, errlen, "%sOpenCL: launching device kernel '%.100s' (plan kernel '%.100s', %s call %d) "
                               "failed: %s (%d)", is_oom(rc) ? "out of device memory: " : "", L->kernel,
                               g->recs.kernel_names[e->call_kernel[c]], ename, c, cl_code(rc), rc);
            }
        }
    }
    if (!fail && out) {
        rc = CL.EnqueueReadBuffer(g->q, e->storages[e->output_storage], MCL_TRUE, (size_t)out_offset,
                                  sizeof(float) * (size_t)vocab, out, 0, NULL, NULL);
        if (rc != MCL_SUCCESS)
            fail = gpu_err(err, errlen, "%sOpenCL: reading the logits failed: %s (%d)",
                           is_oom(rc) ? "out of device memory: " : "", cl_code(rc), rc);
    }
    if (fail || g->profile) {
        rc = CL.Finish(g->q);
        if (!fail && rc != MCL_SUCCESS)
            fail = gpu_err(err, errlen, "%sOpenCL: the %s launches failed: %s (%d)", is_oom(rc) ? "out of device memory: " : "",
                           ename, cl_code(rc), rc);
    }
    if (g->profile) {
        if (!fail) collect_times(g, e, n_events);
        for (int i = 0; i < n_events; i++)
            if (g->events[i]) { CL.ReleaseEvent(g->events[i]); g->events[i] = NULL; }
    }
    return fail ? -1 : 0;
}

void mcpm_gpu_reset_times(mcpm_gpu* g) {
    if (g) gpu_plan_reset_times(&g->recs);
}

int mcpm_gpu_times_json(const mcpm_gpu* g, char* out, size_t len) { return gpu_plan_times_json(&g->recs, out, len); }
