/* mcpm OpenCL dispatcher: runs a plan's entries on an OpenCL device from plan.json's "gpu" launch records
 * (docs/gpu-plan.md). libOpenCL is loaded with dlopen at run time (never linked), so a runtime built with this file
 * still loads and runs on the CPU where there is no OpenCL.
 *
 * Load: parse + validate the launch records (device-neutral; the Metal dispatcher reads the same records), dlopen
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
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mcpm_cl.h"

#define RPN_MAX_LEN 64
#define RPN_MAX_DEPTH 32
#define MAX_BLOCK_THREADS 1024

static int gerr(char* err, size_t len, const char* fmt, ...) __attribute__((format(printf, 3, 4)));
static int gerr(char* err, size_t len, const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, len, fmt, ap);
    va_end(ap);
    return -1;
}

/* ================================================================ launch records (device-neutral) */

enum { RPN_NUM, RPN_N, RPN_POS, RPN_ADD, RPN_SUB, RPN_MUL, RPN_FLOORDIV, RPN_MOD, RPN_MIN, RPN_MAX };
static const char* const RPN_OPS[] = {"+", "-", "*", "//", "%", "min", "max"};

typedef struct {
    int op;
    int64_t v;
} rpn_tok;

typedef struct {
    int first; /* into rec_set.toks */
    int len;
} rpn_expr;

enum { SCALAR_INT32, SCALAR_INT64, SCALAR_FLOAT32 };

typedef struct {
    int is_scalar;
    int arg;        /* buffer: the call's arg index */
    int dtype;      /* scalar: SCALAR_* */
    rpn_expr expr;  /* scalar value */
} param_rec;

typedef struct {
    char* kernel;        /* device kernel name */
    int first_param;     /* into rec_set.params */
    int n_params;
    rpn_expr grid[3];
    size_t block[3];
} launch_rec;

typedef struct {
    rpn_tok* toks;
    int n_toks, cap_toks;
    param_rec* params;
    int n_params, cap_params;
    launch_rec* launches;
    int n_launches, cap_launches;
    int* first_launch;   /* int[n_kernels]: per plan kernel */
    int* n_kernel_launches;
} rec_set;

static int grow(void** p, int* cap, int need, size_t elem) {
    if (need <= *cap) return 0;
    int c = *cap ? *cap : 16;
    while (c < need) c *= 2;
    void* q = realloc(*p, (size_t)c * elem);
    if (!q) return -1;
    *p = q;
    *cap = c;
    return 0;
}

static void rec_free(rec_set* rs) {
    for (int i = 0; i < rs->n_launches; i++) free(rs->launches[i].kernel);
    free(rs->toks);
    free(rs->params);
    free(rs->launches);
    free(rs->first_launch);
    free(rs->n_kernel_launches);
    memset(rs, 0, sizeof *rs);
}

typedef struct {
    const mcpm_gpu_desc* d;
    rec_set* rs;
    char* err;
    size_t errlen;
} rec_ctx;

static int rerr(rec_ctx* rc, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
static int rerr(rec_ctx* rc, const char* fmt, ...) {
    int used = snprintf(rc->err, rc->errlen, "%s: invalid plan: gpu: ", rc->d->plan_path);
    if (used < 0 || (size_t)used >= rc->errlen) return -1;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(rc->err + used, rc->errlen - (size_t)used, fmt, ap);
    va_end(ap);
    return -1;
}

/* An RPN expression: a JSON array (or a bare integer) of integers, "n", "pos" and binary operators. */
static int parse_rpn(rec_ctx* rc, const json_node* j, rpn_expr* e, const char* where) {
    const json_doc* doc = rc->d->doc;
    rec_set* rs = rc->rs;
    e->first = rs->n_toks;
    e->len = 0;
    int single = j && j->type == JSON_NUMBER;
    if (!j || (!single && (j->type != JSON_ARRAY || j->count < 1 || j->count > RPN_MAX_LEN)))
        return rerr(rc, "%s: an expression must be a non-empty array of at most %d items", where, RPN_MAX_LEN);
    int depth = 0;
    const json_node* t = single ? j : json_child(doc, j);
    for (; t; t = single ? NULL : json_next(doc, t)) {
        rpn_tok tok = {RPN_NUM, 0};
        if (t->type == JSON_NUMBER) {
            if (!t->is_int) return rerr(rc, "%s: %g is not an integer", where, t->d);
            tok.v = t->i;
        } else if (t->type == JSON_STRING) {
            if (!strcmp(t->str, "n")) tok.op = RPN_N;
            else if (!strcmp(t->str, "pos")) tok.op = RPN_POS;
            else {
                tok.op = -1;
                for (int k = 0; k < 7; k++)
                    if (!strcmp(t->str, RPN_OPS[k])) tok.op = RPN_ADD + k;
                if (tok.op < 0) return rerr(rc, "%s: unknown token '%.40s' in an expression", where, t->str);
            }
        } else {
            return rerr(rc, "%s: expression items must be integers or strings", where);
        }
        depth += tok.op >= RPN_ADD ? -1 : 1;
        if (depth < 1) return rerr(rc, "%s: operator '%s' lacks an operand", where, RPN_OPS[tok.op - RPN_ADD]);
        if (depth > RPN_MAX_DEPTH) return rerr(rc, "%s: expression too deep", where);
        if (grow((void**)&rs->toks, &rs->cap_toks, rs->n_toks + 1, sizeof(rpn_tok)))
            return gerr(rc->err, rc->errlen, "out of memory");
        rs->toks[rs->n_toks++] = tok;
        e->len++;
    }
    if (depth != 1) return rerr(rc, "%s: expression leaves %d values (must leave 1)", where, depth);
    return 0;
}

static int64_t floordiv64(int64_t a, int64_t b) {
    int64_t q = a / b;
    if ((a % b != 0) && ((a < 0) != (b < 0))) q--;
    return q;
}

static int64_t floormod64(int64_t a, int64_t b) {
    int64_t r = a % b;
    if (r != 0 && ((r < 0) != (b < 0))) r += b;
    return r;
}

/* 0 and *out, or -1 (division by zero, overflow) with a short reason in why. */
static int eval_rpn(const rec_set* rs, const rpn_expr* e, int64_t n, int64_t pos, int64_t* out, const char** why) {
    int64_t st[RPN_MAX_DEPTH];
    int sp = 0;
    for (int i = 0; i < e->len; i++) {
        const rpn_tok* t = &rs->toks[e->first + i];
        if (t->op == RPN_NUM) { st[sp++] = t->v; continue; }
        if (t->op == RPN_N) { st[sp++] = n; continue; }
        if (t->op == RPN_POS) { st[sp++] = pos; continue; }
        int64_t b = st[--sp], a = st[--sp], r = 0;
        int bad = 0;
        switch (t->op) {
        case RPN_ADD: bad = __builtin_add_overflow(a, b, &r); break;
        case RPN_SUB: bad = __builtin_sub_overflow(a, b, &r); break;
        case RPN_MUL: bad = __builtin_mul_overflow(a, b, &r); break;
        case RPN_FLOORDIV:
        case RPN_MOD:
            if (b == 0) { *why = "division by zero"; return -1; }
            if (a == INT64_MIN && b == -1) { bad = 1; break; }
            r = t->op == RPN_FLOORDIV ? floordiv64(a, b) : floormod64(a, b);
            break;
        case RPN_MIN: r = a < b ? a : b; break;
        default: r = a > b ? a : b; break;
        }
        if (bad) { *why = "integer overflow"; return -1; }
        st[sp++] = r;
    }
    *out = st[0];
    return 0;
}

static const json_node* rec_get(rec_ctx* rc, const json_node* obj, const char* key, json_type t, const char* where) {
    const json_node* v = json_get(rc->d->doc, obj, key);
    if (!v || v->type != t) { rerr(rc, "%s: missing or malformed field '%s'", where, key); return NULL; }
    return v;
}

/* Validates one launch against every call of plan kernel k in both entries. */
static int check_launch(rec_ctx* rc, int k, const launch_rec* L, const char* where) {
    const mcpm_gpu_desc* d = rc->d;
    const rec_set* rs = rc->rs;
    for (int ei = 0; ei < 2; ei++) {
        const mcpm_gpu_entry* e = &d->entries[ei];
        int used = 0;
        for (int c = 0; c < e->n_calls; c++) {
            const mcpm_gpu_call* call = &e->calls[c];
            if (call->kernel != k) continue;
            used = 1;
            for (int p = 0; p < L->n_params; p++) {
                const param_rec* pr = &rs->params[L->first_param + p];
                if (pr->is_scalar) continue;
                if (pr->arg >= call->nargs)
                    return rerr(rc, "%s: param %d binds arg %d, but %s call %d has %d args", where, p, pr->arg, e->name,
                                c, call->nargs);
                if (d->args[call->first_arg + pr->arg].kind == MCPM_GPU_ARG_SCALAR)
                    return rerr(rc, "%s: param %d binds arg %d, a scalar of %s call %d (buffers only)", where, p,
                                pr->arg, e->name, c);
            }
        }
        if (!used) continue;
        int64_t ns[2] = {1, e->n_max};
        for (int a = 0; a < 2; a++)
            for (int b = 0; b < 2; b++) {
                int64_t n = ns[a], pos = b ? d->max_ctx - ns[a] : 0, v = 0;
                const char* why = "";
                for (int g = 0; g < 3; g++) {
                    if (eval_rpn(rs, &L->grid[g], n, pos, &v, &why))
                        return rerr(rc, "%s: grid[%d] fails at n=%lld pos=%lld: %s", where, g, (long long)n,
                                    (long long)pos, why);
                    if (v < 1 || v > ((int64_t)1 << 31))
                        return rerr(rc, "%s: grid[%d] = %lld at n=%lld pos=%lld (%s entry; must be 1..2^31)", where, g,
                                    (long long)v, (long long)n, (long long)pos, e->name);
                }
                for (int p = 0; p < L->n_params; p++) {
                    const param_rec* pr = &rs->params[L->first_param + p];
                    if (pr->is_scalar && eval_rpn(rs, &pr->expr, n, pos, &v, &why))
                        return rerr(rc, "%s: param %d fails at n=%lld pos=%lld: %s", where, p, (long long)n,
                                    (long long)pos, why);
                }
            }
    }
    return 0;
}

static int parse_launches(rec_ctx* rc) {
    const mcpm_gpu_desc* d = rc->d;
    const json_doc* doc = d->doc;
    rec_set* rs = rc->rs;
    char where[320];
    const json_node* launches = rec_get(rc, d->gpu, "launches", JSON_OBJECT, "gpu");
    if (!launches) return -1;
    rs->first_launch = calloc((size_t)d->n_kernels + 1, sizeof(int));
    rs->n_kernel_launches = calloc((size_t)d->n_kernels + 1, sizeof(int));
    if (!rs->first_launch || !rs->n_kernel_launches) return gerr(rc->err, rc->errlen, "out of memory");
    for (const json_node* kl = json_child(doc, launches); kl; kl = json_next(doc, kl)) {
        int known = 0;
        for (int k = 0; k < d->n_kernels && !known; k++) known = !strcmp(d->kernel_names[k], kl->key);
        if (!known) return rerr(rc, "launches for '%.100s', which is not a kernel of the plan", kl->key);
    }
    for (int k = 0; k < d->n_kernels; k++) {
        const char* kname = d->kernel_names[k];
        const json_node* list = json_get(doc, launches, kname);
        if (!list || list->type != JSON_ARRAY || list->count < 1)
            return rerr(rc, "kernel '%.100s' has no launch list (every plan kernel needs one)", kname);
        rs->first_launch[k] = rs->n_launches;
        rs->n_kernel_launches[k] = list->count;
        int li = 0;
        for (const json_node* lj = json_child(doc, list); lj; lj = json_next(doc, lj), li++) {
            snprintf(where, sizeof where, "kernel '%.100s' launch %d", kname, li);
            if (lj->type != JSON_OBJECT) return rerr(rc, "%s: not an object", where);
            const json_node* kn = rec_get(rc, lj, "kernel", JSON_STRING, where);
            const json_node* params = kn ? rec_get(rc, lj, "params", JSON_ARRAY, where) : NULL;
            const json_node* grid = params ? rec_get(rc, lj, "grid", JSON_ARRAY, where) : NULL;
            const json_node* block = grid ? rec_get(rc, lj, "block", JSON_ARRAY, where) : NULL;
            if (!block) return -1;
            if (!kn->str[0] || strlen(kn->str) > 200) return rerr(rc, "%s: bad device kernel name", where);
            snprintf(where, sizeof where, "kernel '%.100s' launch %d (%.100s)", kname, li, kn->str);
            if (grow((void**)&rs->launches, &rs->cap_launches, rs->n_launches + 1, sizeof(launch_rec)))
                return gerr(rc->err, rc->errlen, "out of memory");
            launch_rec* L = &rs->launches[rs->n_launches];
            memset(L, 0, sizeof *L);
            if (!(L->kernel = strdup(kn->str))) return gerr(rc->err, rc->errlen, "out of memory");
            rs->n_launches++;
            if (grid->count != 3 || block->count != 3)
                return rerr(rc, "%s: grid and block must have 3 values (x, y, z)", where);
            int g = 0;
            for (const json_node* x = json_child(doc, grid); x; x = json_next(doc, x), g++) {
                char w2[360];
                snprintf(w2, sizeof w2, "%s grid[%d]", where, g);
                if (parse_rpn(rc, x, &L->grid[g], w2)) return -1;
            }
            int64_t threads = 1;
            g = 0;
            for (const json_node* x = json_child(doc, block); x; x = json_next(doc, x), g++) {
                if (x->type != JSON_NUMBER || !x->is_int || x->i < 1 || x->i > MAX_BLOCK_THREADS)
                    return rerr(rc, "%s: block values must be integers >= 1", where);
                L->block[g] = (size_t)x->i;
                threads *= x->i;
            }
            if (threads > MAX_BLOCK_THREADS)
                return rerr(rc, "%s: block of %lld threads (at most %d)", where, (long long)threads, MAX_BLOCK_THREADS);
            L->first_param = rs->n_params;
            L->n_params = params->count;
            int p = 0;
            for (const json_node* pj = json_child(doc, params); pj; pj = json_next(doc, pj), p++) {
                if (grow((void**)&rs->params, &rs->cap_params, rs->n_params + 1, sizeof(param_rec)))
                    return gerr(rc->err, rc->errlen, "out of memory");
                param_rec* pr = &rs->params[rs->n_params++];
                memset(pr, 0, sizeof *pr);
                const json_node* arg = json_get(doc, pj, "arg");
                const json_node* sc = json_get(doc, pj, "scalar");
                if (pj->type != JSON_OBJECT || (!arg == !sc))
                    return rerr(rc, "%s: param %d must be {\"arg\": i} or {\"scalar\": dtype, \"expr\": [...]}", where, p);
                if (arg) {
                    if (arg->type != JSON_NUMBER || !arg->is_int || arg->i < 0 || arg->i > 1 << 20)
                        return rerr(rc, "%s: param %d: bad arg index", where, p);
                    pr->arg = (int)arg->i;
                    continue;
                }
                pr->is_scalar = 1;
                if (sc->type != JSON_STRING) return rerr(rc, "%s: param %d: scalar must name a dtype", where, p);
                if (!strcmp(sc->str, "int32")) pr->dtype = SCALAR_INT32;
                else if (!strcmp(sc->str, "int64")) pr->dtype = SCALAR_INT64;
                else if (!strcmp(sc->str, "float32")) pr->dtype = SCALAR_FLOAT32;
                else return rerr(rc, "%s: param %d: scalar dtype '%.20s' (int32, int64, float32)", where, p, sc->str);
                char w2[360];
                snprintf(w2, sizeof w2, "%s param %d", where, p);
                if (parse_rpn(rc, json_get(doc, pj, "expr"), &pr->expr, w2)) return -1;
            }
            if (check_launch(rc, k, L, where)) return -1;
        }
    }
    return 0;
}

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
    const char* names[] = {"libOpenCL.so.1", "libOpenCL.so"};
    void* h = NULL;
    char first[256] = "";
    for (int i = 0; i < 2 && !h; i++) {
        h = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
        if (!h && !first[0]) {
            const char* e = dlerror();
            snprintf(first, sizeof first, "%s", e ? e : "not found");
        }
    }
    if (!h) {
        snprintf(cl_load_error, sizeof cl_load_error,
                 "no OpenCL library (libOpenCL.so.1 / libOpenCL.so: %s): install an OpenCL driver (ICD) or use "
                 "device \"cpu\"", first);
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

typedef struct {
    double ns;
    long count, launches;
} ktime;

struct mcpm_gpu {
    rec_set recs;
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
    ktime* times;         /* [n_kernels] */
    char** kernel_names;  /* [n_kernels] (copies) */
    int n_kernels;
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
    for (int i = 0; g->kernel_names && i < g->n_kernels; i++) free(g->kernel_names[i]);
    free(g->kernel_names);
    free(g->subs);
    free(g->weights);
    free(g->caches);
    free(g->events);
    free(g->times);
    rec_free(&g->recs);
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
        return gerr(err, errlen, "no OpenCL platform: the OpenCL loader found no driver (check /etc/OpenCL/vendors "
                    "or OCL_ICD_VENDORS), or use device \"cpu\"");
    if (rc != MCL_SUCCESS) return gerr(err, errlen, "OpenCL: clGetPlatformIDs failed: %s (%d)", cl_code(rc), rc);
    if (np > 16) np = 16;
    mcl_platform_id ps[16];
    if ((rc = CL.GetPlatformIDs(np, ps, NULL)) != MCL_SUCCESS)
        return gerr(err, errlen, "OpenCL: clGetPlatformIDs failed: %s (%d)", cl_code(rc), rc);
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
    if (!g->dev) return gerr(err, errlen, "no OpenCL device on %u OpenCL platform(s): use device \"cpu\"", np);
    g->ctx = CL.CreateContext(NULL, 1, &g->dev, NULL, NULL, &rc);
    if (!g->ctx || rc != MCL_SUCCESS)
        return gerr(err, errlen, "OpenCL: cannot create a context on %s: %s (%d)", g->name, cl_code(rc), rc);
    g->q = CL.CreateCommandQueue(g->ctx, g->dev, g->profile ? MCL_QUEUE_PROFILING_ENABLE : 0, &rc);
    if (!g->q || rc != MCL_SUCCESS)
        return gerr(err, errlen, "OpenCL: cannot create a command queue on %s: %s (%d)", g->name, cl_code(rc), rc);
    mcl_uint align_bits = 0;
    if (CL.GetDeviceInfo(g->dev, MCL_DEVICE_MEM_BASE_ADDR_ALIGN, sizeof align_bits, &align_bits, NULL) != MCL_SUCCESS ||
        align_bits < 8)
        align_bits = 4096;
    g->base_align = align_bits / 8;
    return 0;
}

static char* read_text(const char* path, size_t* len) {
    FILE* f = fopen(path, "rb");
    if (!f) return NULL;
    char* buf = NULL;
    if (!fseek(f, 0, SEEK_END)) {
        long size = ftell(f);
        if (size >= 0 && !fseek(f, 0, SEEK_SET) && (buf = malloc((size_t)size + 1))) {
            if (fread(buf, 1, (size_t)size, f) != (size_t)size) { free(buf); buf = NULL; }
            else { buf[size] = '\0'; *len = (size_t)size; }
        }
    }
    fclose(f);
    return buf;
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
    char* bin = path[0] ? read_text(path, &len) : NULL;
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
    if (!srcn || srcn->type != JSON_STRING || !srcn->str[0] || srcn->str[0] == '/' || strstr(srcn->str, ".."))
        return gerr(err, errlen, "%s: invalid plan: gpu: missing or malformed field 'opencl_source'", d->plan_path);
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", d->bundle_dir, srcn->str);
    size_t len = 0;
    char* src = read_text(path, &len);
    if (!src) return gerr(err, errlen, "%s is missing: re-export the bundle with --device gpu", path);
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
        return gerr(err, errlen, "OpenCL: cannot create the program from %s: %s (%d)", path, cl_code(rc), rc);
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
        return gerr(err, errlen, "OpenCL: %s failed to build on %s: %s (%d); build log: %s", path, g->name,
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
        gerr(err, errlen, "out of device memory: %s needs one buffer of %.1f MiB, %s allows at most %.1f MiB per "
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
            gerr(err, errlen, "out of device memory: allocating %s (%.1f MiB) on %s failed: %s (%d): use device "
                 "\"cpu\" or a smaller model/context", what, size / 1048576.0, g->name, cl_code(rc), rc);
        else
            gerr(err, errlen, "OpenCL: allocating %s (%.1f MiB) failed: %s (%d)", what, size / 1048576.0,
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
    if (!wbytes || !g->weights) { free(wbytes); return gerr(err, errlen, "out of memory"); }
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
    if (!(g->caches = calloc((size_t)g->n_caches + 1, sizeof(mcl_mem)))) return gerr(err, errlen, "out of memory");
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
        if (!(e->storages = calloc((size_t)de->n_storages + 1, sizeof(mcl_mem)))) return gerr(err, errlen, "out of memory");
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
        gerr(err, errlen, "%s: tensor at byte offset %lld of storage %d, but %s binds buffers only at multiples of "
             "%zu bytes: re-export (the exporter must emit offset-0 tensors)", where, (long long)a->offset, a->index,
             g->name, g->base_align);
        return NULL;
    }
    mcl_buffer_region r = {(size_t)a->offset, (size_t)(a->bytes > 0 ? a->bytes : 4)};
    mcl_int rc = 0;
    mcl_mem sub = CL.CreateSubBuffer(base, MCL_MEM_READ_WRITE, MCL_BUFFER_CREATE_TYPE_REGION, &r, &rc);
    if (!sub || rc != MCL_SUCCESS ||
        grow((void**)&g->subs, &g->cap_subs, g->n_subs + 1, sizeof(mcl_mem))) {
        if (sub) CL.ReleaseMemObject(sub);
        gerr(err, errlen, "%s: OpenCL: sub-buffer at offset %lld failed: %s (%d)", where, (long long)a->offset,
             cl_code(rc), rc);
        return NULL;
    }
    g->subs[g->n_subs++] = sub;
    return sub;
}

static int set_scalar(mcpm_gpu* g, mcl_kernel k, int idx, const param_rec* pr, int64_t n, int64_t pos,
                      const char* where, char* err, size_t errlen) {
    int64_t v = 0;
    const char* why = "";
    if (eval_rpn(&g->recs, &pr->expr, n, pos, &v, &why))
        return gerr(err, errlen, "%s: param %d at n=%lld pos=%lld: %s", where, idx, (long long)n, (long long)pos, why);
    mcl_int rc;
    if (pr->dtype == SCALAR_INT32) {
        if (v < INT32_MIN || v > INT32_MAX)
            return gerr(err, errlen, "%s: param %d = %lld does not fit int32", where, idx, (long long)v);
        int32_t x = (int32_t)v;
        rc = CL.SetKernelArg(k, (mcl_uint)idx, sizeof x, &x);
    } else if (pr->dtype == SCALAR_INT64) {
        rc = CL.SetKernelArg(k, (mcl_uint)idx, sizeof v, &v);
    } else {
        float x = (float)v;
        rc = CL.SetKernelArg(k, (mcl_uint)idx, sizeof x, &x);
    }
    if (rc != MCL_SUCCESS)
        return gerr(err, errlen, "%s: OpenCL: clSetKernelArg(%d) failed: %s (%d): the launch record's params do not "
                    "match the kernel's parameters", where, idx, cl_code(rc), rc);
    return 0;
}

static int scalar_is_fixed(const rec_set* rs, const param_rec* pr) {
    for (int i = 0; i < pr->expr.len; i++) {
        int op = rs->toks[pr->expr.first + i].op;
        if (op == RPN_N || op == RPN_POS) return 0;
    }
    return 1;
}

static int make_kernels(mcpm_gpu* g, const mcpm_gpu_desc* d, char* err, size_t errlen) {
    const rec_set* rs = &g->recs;
    size_t dev_max_wg = 0;
    if (CL.GetDeviceInfo(g->dev, MCL_DEVICE_MAX_WORK_GROUP_SIZE, sizeof dev_max_wg, &dev_max_wg, NULL)) dev_max_wg = 0;
    char* checked = calloc((size_t)rs->n_launches + 1, 1); /* launch records whose work-group size was checked */
    if (!checked) return gerr(err, errlen, "out of memory");
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
        if (!e->call_kernel || !e->first_inst || !e->insts) { rc = gerr(err, errlen, "out of memory"); break; }
        if (total > max_insts) max_insts = total;
        for (int c = 0; c < de->n_calls && !rc; c++) {
            const mcpm_gpu_call* call = &de->calls[c];
            e->call_kernel[c] = call->kernel;
            e->first_inst[c] = e->n_insts;
            for (int li = 0; li < rs->n_kernel_launches[call->kernel] && !rc; li++) {
                int lidx = rs->first_launch[call->kernel] + li;
                const launch_rec* L = &rs->launches[lidx];
                snprintf(where, sizeof where, "device kernel '%.100s' (launch %d of plan kernel '%.100s', %s call %d)",
                         L->kernel, li, d->kernel_names[call->kernel], de->name, c);
                inst* in = &e->insts[e->n_insts++];
                in->launch = lidx;
                mcl_int crc = 0;
                in->k = CL.CreateKernel(g->prog, L->kernel, &crc);
                if (!in->k || crc != MCL_SUCCESS) {
                    in->k = NULL;
                    if (crc == MCL_INVALID_KERNEL_NAME)
                        rc = gerr(err, errlen, "%s is not in the bundle's OpenCL program: the plan and kernels.cl do "
                                  "not match, re-export the bundle", where);
                    else
                        rc = gerr(err, errlen, "%s: OpenCL: clCreateKernel failed: %s (%d)", where, cl_code(crc), crc);
                    break;
                }
                if (!checked[lidx]) {
                    checked[lidx] = 1;
                    size_t threads = L->block[0] * L->block[1] * L->block[2], kmax = 0;
                    if (CL.GetKernelWorkGroupInfo(in->k, g->dev, MCL_KERNEL_WORK_GROUP_SIZE, sizeof kmax, &kmax, NULL))
                        kmax = 0;
                    if ((kmax && threads > kmax) || (dev_max_wg && threads > dev_max_wg)) {
                        rc = gerr(err, errlen, "%s: work-groups of %zu threads, but %s allows at most %zu for it",
                                  where, threads, g->name, kmax && kmax < dev_max_wg ? kmax : dev_max_wg);
                        break;
                    }
                }
                in->scalars_fixed = 1;
                for (int p = 0; p < L->n_params && !rc; p++) {
                    const param_rec* pr = &rs->params[L->first_param + p];
                    if (pr->is_scalar) {
                        if (!scalar_is_fixed(rs, pr)) in->scalars_fixed = 0;
                        else rc = set_scalar(g, in->k, p, pr, 1, 0, where, err, errlen);
                        continue;
                    }
                    mcl_mem buf = arg_buffer(g, ei, &d->args[call->first_arg + pr->arg], where, err, errlen);
                    if (!buf) { rc = -1; break; }
                    mcl_int src = CL.SetKernelArg(in->k, (mcl_uint)p, sizeof buf, &buf);
                    if (src != MCL_SUCCESS)
                        rc = gerr(err, errlen, "%s: OpenCL: clSetKernelArg(%d) failed: %s (%d): the launch record's "
                                  "params do not match the kernel's parameters", where, p, cl_code(src), src);
                }
            }
        }
        e->first_inst[de->n_calls] = e->n_insts;
    }
    free(checked);
    if (!rc && g->profile && !(g->events = calloc((size_t)max_insts + 1, sizeof(mcl_event))))
        rc = gerr(err, errlen, "out of memory");
    return rc;
}

mcpm_gpu* mcpm_gpu_open(const mcpm_gpu_desc* d, char* err, size_t errlen) {
    err[0] = '\0';
    mcpm_gpu* g = calloc(1, sizeof *g);
    if (!g) { gerr(err, errlen, "out of memory"); return NULL; }
    g->profile = d->profile;
    g->origin = "built";
    const json_node* ver = json_get(d->doc, d->gpu, "version");
    rec_ctx rc = {d, &g->recs, err, errlen};
    if (!ver || ver->type != JSON_NUMBER || !ver->is_int || ver->i != 1) {
        rerr(&rc, "field 'version' must be 1 (this runtime reads launch records version 1): re-export the bundle");
        goto fail;
    }
    if (parse_launches(&rc)) goto fail;
    g->n_kernels = d->n_kernels;
    g->times = calloc((size_t)d->n_kernels + 1, sizeof(ktime));
    g->kernel_names = calloc((size_t)d->n_kernels + 1, sizeof(char*));
    if (!g->times || !g->kernel_names) { gerr(err, errlen, "out of memory"); goto fail; }
    for (int k = 0; k < d->n_kernels; k++)
        if (!(g->kernel_names[k] = strdup(d->kernel_names[k]))) { gerr(err, errlen, "out of memory"); goto fail; }
    pthread_once(&cl_once, cl_load);
    if (cl_load_error[0]) { gerr(err, errlen, "%s", cl_load_error); goto fail; }
    if (pick_device(g, err, errlen) || build_program(g, d, err, errlen) || alloc_buffers(g, d, err, errlen) ||
        make_kernels(g, d, err, errlen))
        goto fail;
    mcl_int frc = CL.Finish(g->q);
    if (frc != MCL_SUCCESS) {
        gerr(err, errlen, "%sOpenCL: uploading the weights to %s failed: %s (%d)", is_oom(frc) ? "out of device memory: " : "",
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
        ktime* t = &g->times[e->call_kernel[c]];
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
    const rec_set* rs = &g->recs;
    const char* ename = entry ? "decode" : "prefill";
    mcl_int rc = CL.EnqueueWriteBuffer(g->q, e->tokens, MCL_TRUE, 0, 4 * (size_t)n, tokens, 0, NULL, NULL);
    if (rc != MCL_SUCCESS)
        return gerr(err, errlen, "%sOpenCL: writing the tokens failed: %s (%d)", is_oom(rc) ? "out of device memory: " : "",
                    cl_code(rc), rc);
    int n_events = 0, fail = 0;
    char where[400];
    for (int c = 0; c < e->n_calls && !fail; c++) {
        for (int i = e->first_inst[c]; i < e->first_inst[c + 1] && !fail; i++) {
            const inst* in = &e->insts[i];
            const launch_rec* L = &rs->launches[in->launch];
            size_t global[3];
            where[0] = '\0';
            for (int p = 0; !in->scalars_fixed && p < L->n_params && !fail; p++) {
                const param_rec* pr = &rs->params[L->first_param + p];
                if (!pr->is_scalar || scalar_is_fixed(rs, pr)) continue;
                if (!where[0])
                    snprintf(where, sizeof where, "device kernel '%.100s' (plan kernel '%.100s', %s call %d)", L->kernel,
                             g->kernel_names[e->call_kernel[c]], ename, c);
                fail = set_scalar(g, in->k, p, pr, n, pos, where, err, errlen);
            }
            for (int d = 0; d < 3 && !fail; d++) {
                int64_t v = 0;
                const char* why = "bad value";
                if (eval_rpn(rs, &L->grid[d], n, pos, &v, &why) || v < 1 || v > ((int64_t)1 << 31)) {
                    fail = gerr(err, errlen, "device kernel '%.100s' (plan kernel '%.100s', %s call %d): grid[%d] at "
                                "n=%d pos=%d: %s (%lld)", L->kernel, g->kernel_names[e->call_kernel[c]], ename, c, d,
                                n, pos, why, (long long)v);
                    break;
                }
                global[d] = (size_t)v * L->block[d];
            }
            if (fail) break;
            mcl_event* ev = g->profile ? &g->events[n_events++] : NULL;
            rc = CL.EnqueueNDRangeKernel(g->q, in->k, 3, NULL, global, L->block, 0, NULL, ev);
            if (rc != MCL_SUCCESS) {
                if (ev) { *ev = NULL; }
                fail = gerr(err, errlen, "%sOpenCL: launching device kernel '%.100s' (plan kernel '%.100s', %s call %d) "
                            "failed: %s (%d)", is_oom(rc) ? "out of device memory: " : "", L->kernel,
                            g->kernel_names[e->call_kernel[c]], ename, c, cl_code(rc), rc);
            }
        }
    }
    if (!fail && out) {
        rc = CL.EnqueueReadBuffer(g->q, e->storages[e->output_storage], MCL_TRUE, (size_t)out_offset,
                                  sizeof(float) * (size_t)vocab, out, 0, NULL, NULL);
        if (rc != MCL_SUCCESS)
            fail = gerr(err, errlen, "%sOpenCL: reading the logits failed: %s (%d)",
                        is_oom(rc) ? "out of device memory: " : "", cl_code(rc), rc);
    }
    if (fail || g->profile) {
        rc = CL.Finish(g->q);
        if (!fail && rc != MCL_SUCCESS)
            fail = gerr(err, errlen, "%sOpenCL: the %s launches failed: %s (%d)", is_oom(rc) ? "out of device memory: " : "",
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
    if (g && g->times) memset(g->times, 0, sizeof(ktime) * (size_t)g->n_kernels);
}

int mcpm_gpu_times_json(const mcpm_gpu* g, char* out, size_t len) {
    if (!out || len < 3) return -1;
    size_t used = (size_t)snprintf(out, len, "[");
    int first = 1;
    /* slowest first: repeated selection (kernels are few) */
    char* done = calloc((size_t)g->n_kernels + 1, 1);
    if (!done) return -1;
    for (;;) {
        int best = -1;
        for (int k = 0; k < g->n_kernels; k++)
            if (!done[k] && g->times[k].count > 0 && (best < 0 || g->times[k].ns > g->times[best].ns)) best = k;
        if (best < 0) break;
        done[best] = 1;
        const ktime* t = &g->times[best];
        int w = snprintf(out + used, len - used, "%s{\"kernel\": \"%s\", \"count\": %ld, \"launches\": %ld, \"ms\": %.6f}",
                         first ? "" : ", ", g->kernel_names[best], t->count, t->launches, t->ns * 1e-6);
        if (w < 0 || (size_t)w >= len - used) { free(done); return -1; }
        used += (size_t)w;
        first = 0;
    }
    free(done);
    if (used + 2 > len) return -1;
    out[used] = ']';
    out[used + 1] = '\0';
    return 0;
}
