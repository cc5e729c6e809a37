/* mcpm Metal dispatcher (Objective-C, ARC): runs a plan's entries on the Apple GPU from plan.json's "gpu" launch
 * records (docs/gpu-plan.md). It implements mcpm_opencl.h, the interface of the OpenCL dispatcher mcpm_opencl.c,
 * and mirrors that file section by section; iOS packages with GPU kernels build this file INSTEAD of mcpm_opencl.c
 * (export/ios/package.py), so every other runtime file is the same on every platform.
 *
 * Load: parse + validate the launch records (mcpm_gpu_plan.c, shared with OpenCL byte for byte), take the system
 * default MTLDevice, compile the bundle's kernels.metal with newLibraryWithSource (the OS caches compiled shaders),
 * make one MTLComputePipelineState per device kernel, allocate every storage / cache as a shared MTLBuffer and wrap
 * the weights.bin mapping without a copy (newBufferWithBytesNoCopy, page-aligned; else one copy per weight), and
 * resolve every launch's buffer params to (buffer, offset).
 * Run: write the tokens, encode every launch of every call into ONE command buffer (buffers at [[buffer(0..nb-1)]]
 * in record order, all scalars in record order as 8-byte slots in one setBytes struct at buffer(nb), grid x block
 * from the records with dispatchThreadgroups), commit, wait, then read back the last position's logits only.
 * Profiling: one command buffer per call, timed with GPUStartTime/GPUEndTime (per plan kernel, like OpenCL's events).
 *
 * Not compiled here (no Apple SDK): tests/test_metal_dispatcher.py checks it with clang -fsyntax-only against stub
 * headers with Apple's signatures, and that it reads the records only through mcpm_gpu_plan.h. */
#import <Foundation/Foundation.h>
#import <Metal/Metal.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mcpm_gpu_plan.h"
#include "mcpm_opencl.h"

#if !__has_feature(objc_arc)
#error "mcpm_metal.m needs ARC (-fobjc-arc; SwiftPM and Xcode enable it for packages)"
#endif

#define MAX_SCALAR_SLOTS 64 /* scalars of one launch: 8-byte slots of the <kernel>_args_t struct */

/* ================================================================ Metal errors */

/* The first lines of an NSError's description, joined with " | " (compile errors list one problem per line). */
static void first_lines(NSError* e, char* out, size_t len) {
    snprintf(out, len, "%s", e ? e.localizedDescription.UTF8String : "(no error)");
    int lines = 0;
    for (char* s = out; *s; s++)
        if (*s == '\n' || *s == '\r') {
            if (++lines >= 6) { *s = '\0'; break; }
            *s = ' ';
        }
}

static int is_oom(NSError* e) { return e && e.code == MTLCommandBufferErrorOutOfMemory; }

/* ================================================================ the dispatcher */

typedef struct {
    int buf;              /* into mcpm_gpu.bufs */
    NSUInteger offset;    /* bytes */
} bind;

typedef struct {
    int launch;           /* into recs.launches */
    int first_bind;       /* into gpu_entry.binds: one per buffer param, record order */
} inst;

typedef struct {
    int n_calls;
    int* call_kernel;     /* int[n_calls]: plan kernel of each call */
    int* first_inst;      /* int[n_calls + 1] into insts */
    inst* insts;
    int n_insts;
    bind* binds;
    int n_binds, cap_binds;
    int* storages;        /* [n_storages] into bufs */
    int n_storages;
    int tokens;           /* int32[n_max] */
    int n_max;
    int output_storage;
} gpu_entry;

struct mcpm_gpu {
    gpu_plan recs;
    __strong id<MTLDevice> dev;
    __strong id<MTLCommandQueue> q;
    __strong id<MTLLibrary> lib;
    __strong NSMutableArray<id<MTLBuffer>>* bufs;                 /* every buffer; C structs hold indexes */
    __strong NSMutableArray<id<MTLComputePipelineState>>* psos;   /* [n_launches] */
    int* weights;         /* [n_weights] into bufs, -1 for weights no call uses */
    NSUInteger* weight_off; /* [n_weights]: byte offset in that buffer (the no-copy mapping) */
    int n_weights;
    int* caches;          /* [2 * num_layers] into bufs */
    int n_caches;
    gpu_entry e[2];
    int profile;
    char name[256];
    const char* origin;
};

const char* mcpm_gpu_device_name(const mcpm_gpu* g) { return g->name; }
const char* mcpm_gpu_program_origin(const mcpm_gpu* g) { return g->origin; }

void mcpm_gpu_free(mcpm_gpu* g) {
    if (!g) return;
    for (int ei = 0; ei < 2; ei++) {
        gpu_entry* e = &g->e[ei];
        free(e->insts);
        free(e->first_inst);
        free(e->call_kernel);
        free(e->binds);
        free(e->storages);
    }
    g->psos = nil; /* ARC releases the Metal objects; the struct itself is calloc'ed */
    g->bufs = nil;
    g->lib = nil;
    g->q = nil;
    g->dev = nil;
    free(g->weights);
    free(g->weight_off);
    free(g->caches);
    gpu_plan_free(&g->recs);
    free(g);
}

/* JSON-safe copy (device names are printed into the stats JSON) */
static void sanitize(char* s) {
    for (; *s; s++)
        if (*s == '"' || *s == '\\' || (unsigned char)*s < 0x20) *s = '\'';
}

static int pick_device(mcpm_gpu* g, char* err, size_t errlen) {
    g->dev = MTLCreateSystemDefaultDevice();
    if (!g->dev) return gpu_err(err, errlen, "no Metal device: use device \"cpu\"");
    snprintf(g->name, sizeof g->name, "Metal: %s", g->dev.name.UTF8String);
    sanitize(g->name);
    g->q = [g->dev newCommandQueue];
    if (!g->q) return gpu_err(err, errlen, "Metal: cannot create a command queue on %s", g->name);
    g->bufs = [NSMutableArray arrayWithCapacity:64];
    return 0;
}

static int build_program(mcpm_gpu* g, const mcpm_gpu_desc* d, char* err, size_t errlen) {
    const json_node* srcn = json_get(d->doc, d->gpu, "metal_source");
    if (!srcn || srcn->type != JSON_STRING || !srcn->str[0] || srcn->str[0] == '/' || strstr(srcn->str, ".."))
        return gpu_err(err, errlen, "%s: invalid plan: gpu: missing or malformed field 'metal_source'", d->plan_path);
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", d->bundle_dir, srcn->str);
    NSString* src = [NSString stringWithContentsOfFile:(NSString*)[NSString stringWithUTF8String:path]
                                              encoding:NSUTF8StringEncoding error:NULL];
    if (!src) return gpu_err(err, errlen, "%s is missing: re-export the bundle with --device gpu", path);
    MTLCompileOptions* options = [MTLCompileOptions new];
    options.fastMathEnabled = YES;                    /* as TVM's own Metal runtime compiles its kernels */
    options.languageVersion = MTLLanguageVersion2_3;  /* iOS 14, the package's minimum */
    NSError* e = nil;
    g->lib = [g->dev newLibraryWithSource:src options:options error:&e];
    if (!g->lib) {
        char lines[640];
        first_lines(e, lines, sizeof lines);
        return gpu_err(err, errlen, "Metal: %s failed to compile on %s: %s", path, g->name, lines);
    }
    g->origin = "built";
    return 0;
}

/* A zeroed (or copied from host) shared buffer; its index in g->bufs, or -1. */
static int new_buffer(mcpm_gpu* g, size_t bytes, const void* host, const char* what, char* err, size_t errlen) {
    size_t size = bytes < 64 ? 64 : (bytes + 63) / 64 * 64;
    if (host) size = bytes; /* copied from the mapping: exactly its bytes */
    if (size > g->dev.maxBufferLength) {
        gpu_err(err, errlen, "out of device memory: %s needs one buffer of %.1f MiB, %s allows at most %.1f MiB per "
                "buffer: use device \"cpu\" or a smaller model/context", what, size / 1048576.0, g->name,
                g->dev.maxBufferLength / 1048576.0);
        return -1;
    }
    id<MTLBuffer> m = host ? [g->dev newBufferWithBytes:host length:size options:MTLResourceStorageModeShared]
                           : [g->dev newBufferWithLength:size options:MTLResourceStorageModeShared];
    if (!m) {
        gpu_err(err, errlen, "out of device memory: allocating %s (%.1f MiB) on %s failed: use device \"cpu\" or a "
                "smaller model/context", what, size / 1048576.0, g->name);
        return -1;
    }
    if (!host) memset(m.contents, 0, size); /* zeroed like the CPU path's storages and caches */
    [g->bufs addObject:m];
    return (int)g->bufs.count - 1;
}

/* Weights: one no-copy buffer over the used part of the weights.bin mapping (page-aligned: mmap maps whole pages),
 * bound at each weight's offset; where Metal refuses it (or an offset is misaligned), one copy per weight. */
static int alloc_weights(mcpm_gpu* g, const mcpm_gpu_desc* d, const int64_t* wbytes, char* err, size_t errlen) {
    uintptr_t lo = UINTPTR_MAX, hi = 0, page = (uintptr_t)getpagesize();
    for (int w = 0; w < d->n_weights; w++) {
        uintptr_t p = (uintptr_t)d->weight_data[w];
        if (!wbytes[w]) continue;
        if (p < lo) lo = p;
        if (p + (uintptr_t)wbytes[w] > hi) hi = p + (uintptr_t)wbytes[w];
    }
    if (hi == 0) return 0;
    uintptr_t base = lo / page * page, len = (hi - base + page - 1) / page * page;
    int aligned = 1;
    for (int w = 0; w < d->n_weights; w++)
        if (wbytes[w] && ((uintptr_t)d->weight_data[w] - base) % 16) aligned = 0;
    id<MTLBuffer> m = nil;
    if (aligned && len <= g->dev.maxBufferLength)
        m = [g->dev newBufferWithBytesNoCopy:(void*)base length:len options:MTLResourceStorageModeShared
                                 deallocator:nil]; /* the runtime unmaps weights.bin after mcpm_gpu_free */
    if (m) {
        [g->bufs addObject:m];
        for (int w = 0; w < d->n_weights; w++)
            if (wbytes[w]) {
                g->weights[w] = (int)g->bufs.count - 1;
                g->weight_off[w] = (NSUInteger)((uintptr_t)d->weight_data[w] - base);
            }
        return 0;
    }
    char what[96];
    for (int w = 0; w < d->n_weights; w++) {
        if (!wbytes[w]) continue;
        snprintf(what, sizeof what, "weight %d", w);
        if ((g->weights[w] = new_buffer(g, (size_t)wbytes[w], d->weight_data[w], what, err, errlen)) < 0) return -1;
    }
    return 0;
}

static int alloc_buffers(mcpm_gpu* g, const mcpm_gpu_desc* d, char* err, size_t errlen) {
    char what[96];
    /* weights: the bytes of the args that use them (checked against weights.bin by the runtime) */
    int64_t* wbytes = calloc((size_t)d->n_weights + 1, sizeof(int64_t));
    g->weights = calloc((size_t)d->n_weights + 1, sizeof(int));
    g->weight_off = calloc((size_t)d->n_weights + 1, sizeof(NSUInteger));
    g->n_weights = d->n_weights;
    if (!wbytes || !g->weights || !g->weight_off) { free(wbytes); return gpu_err(err, errlen, "out of memory"); }
    for (int i = 0; i < d->n_args; i++)
        if (d->args[i].kind == MCPM_GPU_ARG_WEIGHT && d->args[i].bytes > wbytes[d->args[i].index])
            wbytes[d->args[i].index] = d->args[i].bytes;
    for (int w = 0; w < d->n_weights; w++) g->weights[w] = -1;
    int rc = alloc_weights(g, d, wbytes, err, errlen);
    free(wbytes);
    if (rc) return -1;
    g->n_caches = 2 * d->num_layers;
    if (!(g->caches = calloc((size_t)g->n_caches + 1, sizeof(int)))) return gpu_err(err, errlen, "out of memory");
    for (int i = 0; i < g->n_caches; i++) {
        snprintf(what, sizeof what, "the %s cache of layer %d", i % 2 ? "V" : "K", i / 2);
        if ((g->caches[i] = new_buffer(g, d->cache_bytes, NULL, what, err, errlen)) < 0) return -1;
    }
    for (int ei = 0; ei < 2; ei++) {
        const mcpm_gpu_entry* de = &d->entries[ei];
        gpu_entry* e = &g->e[ei];
        e->n_storages = de->n_storages;
        e->n_max = de->n_max;
        e->output_storage = de->output_storage;
        if (!(e->storages = calloc((size_t)de->n_storages + 1, sizeof(int)))) return gpu_err(err, errlen, "out of memory");
        for (int s = 0; s < de->n_storages; s++) {
            snprintf(what, sizeof what, "%s storage %d", de->name, s);
            if ((e->storages[s] = new_buffer(g, (size_t)de->storage_size[s], NULL, what, err, errlen)) < 0) return -1;
        }
        snprintf(what, sizeof what, "%s tokens", de->name);
        if ((e->tokens = new_buffer(g, 4 * (size_t)de->n_max, NULL, what, err, errlen)) < 0) return -1;
    }
    return 0;
}

/* The (buffer, offset) of a call's buffer arg. */
static int arg_buffer(mcpm_gpu* g, int ei, const mcpm_gpu_arg* a, bind* b, const char* where, char* err,
                      size_t errlen) {
    gpu_entry* e = &g->e[ei];
    b->offset = 0;
    switch (a->kind) {
    case MCPM_GPU_ARG_INPUT: b->buf = e->tokens; return 0;
    case MCPM_GPU_ARG_WEIGHT: b->buf = g->weights[a->index]; b->offset = g->weight_off[a->index]; return 0;
    case MCPM_GPU_ARG_CACHE: b->buf = g->caches[2 * a->index + a->which_v]; return 0;
    default: break;
    }
    b->buf = e->storages[a->index];
    if (a->offset % 16)
        return gpu_err(err, errlen, "%s: tensor at byte offset %lld of storage %d, but Metal binds device buffers "
                       "only at multiples of 16 bytes: re-export (the exporter must emit offset-0 tensors)", where,
                       (long long)a->offset, a->index);
    b->offset = (NSUInteger)a->offset;
    return 0;
}

/* Packs scalar param p (the slot-th scalar of its launch) into its 8-byte slot: int32/float32 in the low 4 bytes
 * (Metal `int x[2]` / `float x[2]` fields read [0]), int64 whole (`long x`). */
static int set_scalar(mcpm_gpu* g, uint64_t* slots, int slot, int idx, const gpu_param* pr, int64_t n, int64_t pos,
                      const char* where, char* err, size_t errlen) {
    int64_t v = 0;
    if (gpu_plan_scalar(&g->recs, pr, idx, n, pos, &v, where, err, errlen)) return -1;
    slots[slot] = 0;
    if (pr->dtype == GPU_SCALAR_INT32) {
        int32_t x = (int32_t)v;
        memcpy(&slots[slot], &x, sizeof x);
    } else if (pr->dtype == GPU_SCALAR_INT64) {
        memcpy(&slots[slot], &v, sizeof v);
    } else {
        float x = (float)v;
        memcpy(&slots[slot], &x, sizeof x);
    }
    return 0;
}

static int make_kernels(mcpm_gpu* g, const mcpm_gpu_desc* d, char* err, size_t errlen) {
    const gpu_plan* rs = &g->recs;
    char where[400];
    /* one pipeline per device kernel, shared by the launch records that name it */
    NSMutableDictionary<NSString*, id<MTLComputePipelineState>>* by_name = [NSMutableDictionary dictionary];
    g->psos = [NSMutableArray arrayWithCapacity:(NSUInteger)rs->n_launches];
    for (int li = 0; li < rs->n_launches; li++) {
        const gpu_launch* L = &rs->launches[li];
        snprintf(where, sizeof where, "device kernel '%.100s'", L->kernel);
        NSString* name = (NSString*)[NSString stringWithUTF8String:L->kernel];
        id<MTLComputePipelineState> pso = by_name[name];
        if (!pso) {
            id<MTLFunction> fn = [g->lib newFunctionWithName:name];
            if (!fn)
                return gpu_err(err, errlen, "%s is not in the bundle's Metal library: the plan and kernels.metal do "
                               "not match, re-export the bundle", where);
            NSError* e = nil;
            pso = [g->dev newComputePipelineStateWithFunction:fn error:&e];
            if (!pso) {
                char lines[640];
                first_lines(e, lines, sizeof lines);
                return gpu_err(err, errlen, "%s: Metal: no compute pipeline on %s: %s", where, g->name, lines);
            }
            by_name[name] = pso;
        }
        size_t threads = L->block[0] * L->block[1] * L->block[2];
        if (threads > pso.maxTotalThreadsPerThreadgroup)
            return gpu_err(err, errlen, "%s: work-groups of %zu threads, but %s allows at most %zu for it", where,
                           threads, g->name, (size_t)pso.maxTotalThreadsPerThreadgroup);
        int n_scalars = 0;
        for (int p = 0; p < L->n_params; p++) n_scalars += rs->params[L->first_param + p].is_scalar;
        if (n_scalars > MAX_SCALAR_SLOTS)
            return gpu_err(err, errlen, "%s: %d scalar params (at most %d)", where, n_scalars, MAX_SCALAR_SLOTS);
        [g->psos addObject:pso];
    }
    for (int ei = 0; ei < 2; ei++) {
        const mcpm_gpu_entry* de = &d->entries[ei];
        gpu_entry* e = &g->e[ei];
        e->n_calls = de->n_calls;
        e->call_kernel = calloc((size_t)de->n_calls + 1, sizeof(int));
        e->first_inst = calloc((size_t)de->n_calls + 1, sizeof(int));
        int total = 0;
        for (int c = 0; c < de->n_calls; c++) total += rs->n_kernel_launches[de->calls[c].kernel];
        e->insts = calloc((size_t)total + 1, sizeof(inst));
        if (!e->call_kernel || !e->first_inst || !e->insts) return gpu_err(err, errlen, "out of memory");
        for (int c = 0; c < de->n_calls; c++) {
            const mcpm_gpu_call* call = &de->calls[c];
            e->call_kernel[c] = call->kernel;
            e->first_inst[c] = e->n_insts;
            for (int li = 0; li < rs->n_kernel_launches[call->kernel]; li++) {
                int lidx = rs->first_launch[call->kernel] + li;
                const gpu_launch* L = &rs->launches[lidx];
                snprintf(where, sizeof where, "device kernel '%.100s' (launch %d of plan kernel '%.100s', %s call %d)",
                         L->kernel, li, d->kernel_names[call->kernel], de->name, c);
                inst* in = &e->insts[e->n_insts++];
                in->launch = lidx;
                in->first_bind = e->n_binds;
                for (int p = 0; p < L->n_params; p++) {
                    const gpu_param* pr = &rs->params[L->first_param + p];
                    if (pr->is_scalar) continue;
                    if (gpu_grow((void**)&e->binds, &e->cap_binds, e->n_binds + 1, sizeof(bind)))
                        return gpu_err(err, errlen, "out of memory");
                    if (arg_buffer(g, ei, &d->args[call->first_arg + pr->arg], &e->binds[e->n_binds++], where, err,
                                   errlen))
                        return -1;
                }
            }
        }
        e->first_inst[de->n_calls] = e->n_insts;
    }
    return 0;
}

mcpm_gpu* mcpm_gpu_open(const mcpm_gpu_desc* d, char* err, size_t errlen) {
    err[0] = '\0';
    mcpm_gpu* g = calloc(1, sizeof *g);
    if (!g) { gpu_err(err, errlen, "out of memory"); return NULL; }
    g->profile = d->profile;
    g->origin = "built";
    @autoreleasepool {
        if (gpu_plan_parse(&g->recs, d, err, errlen) || pick_device(g, err, errlen) ||
            build_program(g, d, err, errlen) || alloc_buffers(g, d, err, errlen) || make_kernels(g, d, err, errlen)) {
            mcpm_gpu_free(g);
            return NULL;
        }
    }
    return g;
}

/* Encodes the launches of calls [c0, c1) into one command buffer, commits it and waits. */
static int encode_calls(mcpm_gpu* g, int entry, int c0, int c1, int n, int pos, double* ns, char* err,
                        size_t errlen) {
    gpu_entry* e = &g->e[entry];
    const gpu_plan* rs = &g->recs;
    const char* ename = entry ? "decode" : "prefill";
    id<MTLCommandBuffer> cb = [g->q commandBuffer];
    id<MTLComputeCommandEncoder> enc = [cb computeCommandEncoder];
    if (!cb || !enc) return gpu_err(err, errlen, "Metal: cannot create a command buffer on %s", g->name);
    char where[400];
    uint64_t slots[MAX_SCALAR_SLOTS];
    int fail = 0;
    for (int c = c0; c < c1 && !fail; c++) {
        for (int i = e->first_inst[c]; i < e->first_inst[c + 1] && !fail; i++) {
            const inst* in = &e->insts[i];
            const gpu_launch* L = &rs->launches[in->launch];
            size_t grid[3];
            snprintf(where, sizeof where, "device kernel '%.100s' (plan kernel '%.100s', %s call %d)", L->kernel,
                     rs->kernel_names[e->call_kernel[c]], ename, c);
            [enc setComputePipelineState:g->psos[(NSUInteger)in->launch]];
            int nb = 0, nscalar = 0;
            for (int p = 0; p < L->n_params && !fail; p++) {
                const gpu_param* pr = &rs->params[L->first_param + p];
                if (pr->is_scalar) {
                    fail = set_scalar(g, slots, nscalar++, p, pr, n, pos, where, err, errlen);
                    continue;
                }
                const bind* b = &e->binds[in->first_bind + nb];
                [enc setBuffer:g->bufs[(NSUInteger)b->buf] offset:b->offset atIndex:(NSUInteger)nb];
                nb++;
            }
            if (!fail && nscalar) [enc setBytes:slots length:sizeof(uint64_t) * (size_t)nscalar atIndex:(NSUInteger)nb];
            if (!fail) fail = gpu_plan_grid(rs, L, e->call_kernel[c], ename, c, n, pos, grid, err, errlen);
            if (fail) break;
            [enc dispatchThreadgroups:MTLSizeMake(grid[0], grid[1], grid[2])
                threadsPerThreadgroup:MTLSizeMake(L->block[0], L->block[1], L->block[2])];
        }
    }
    [enc endEncoding];
    [cb commit]; /* also on failure: an encoder must not be dropped half-way; nothing after the bad launch runs */
    [cb waitUntilCompleted];
    if (fail) return -1;
    if (cb.status != MTLCommandBufferStatusCompleted) {
        char lines[640];
        first_lines(cb.error, lines, sizeof lines);
        return gpu_err(err, errlen, "%sMetal: the %s launches failed: %s", is_oom(cb.error) ? "out of device memory: " : "",
                       ename, lines);
    }
    if (ns) *ns = (cb.GPUEndTime - cb.GPUStartTime) * 1e9;
    return 0;
}

static void collect_times(mcpm_gpu* g, gpu_entry* e, int c, double ns) {
    gpu_ktime* t = &g->recs.times[e->call_kernel[c]];
    t->count++;
    t->ns += ns > 0 ? ns : 0;
    t->launches += e->first_inst[c + 1] - e->first_inst[c];
}

int mcpm_gpu_run(mcpm_gpu* g, int entry, const int32_t* tokens, int n, int pos, float* out, int64_t out_offset,
                 int vocab, char* err, size_t errlen) {
    gpu_entry* e = &g->e[entry];
    int fail = 0;
    @autoreleasepool {
        memcpy(g->bufs[(NSUInteger)e->tokens].contents, tokens, 4 * (size_t)n); /* shared memory: no upload */
        if (!g->profile) {
            fail = encode_calls(g, entry, 0, e->n_calls, n, pos, NULL, err, errlen);
        } else {
            for (int c = 0; c < e->n_calls && !fail; c++) {
                double ns = 0;
                if (!(fail = encode_calls(g, entry, c, c + 1, n, pos, &ns, err, errlen))) collect_times(g, e, c, ns);
            }
        }
        if (!fail && out)
            memcpy(out, (const char*)g->bufs[(NSUInteger)e->storages[e->output_storage]].contents + out_offset,
                   sizeof(float) * (size_t)vocab);
    }
    return fail ? -1 : 0;
}

void mcpm_gpu_reset_times(mcpm_gpu* g) {
    if (g) gpu_plan_reset_times(&g->recs);
}

int mcpm_gpu_times_json(const mcpm_gpu* g, char* out, size_t len) { return gpu_plan_times_json(&g->recs, out, len); }
