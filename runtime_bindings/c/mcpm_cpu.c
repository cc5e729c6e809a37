/* CPU features and the kernel set: which of a bundle's kernel variants this CPU runs (ARM64: i8mm, dotprod, neon),
 * and the kernel functions of that set, by symbol. */
#define _GNU_SOURCE /* dladdr, RTLD_NOLOAD */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#if defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#elif defined(__APPLE__) && defined(__aarch64__)
#include <sys/sysctl.h>
#endif

#include "mcpm_model.h"

/* ARM64 Linux/Android: getauxval HWCAP; Apple arm64: sysctlbyname("hw.optional.arm.FEAT_*"); else nothing. */
int mcpm_cpu_has(const char* feature) {
#if defined(__aarch64__) && defined(__linux__)
    unsigned long hw = getauxval(AT_HWCAP), hw2 = getauxval(AT_HWCAP2);
    if (!strcmp(feature, "dotprod")) return (hw & (1UL << 20)) != 0; /* HWCAP_ASIMDDP */
    if (!strcmp(feature, "fp16")) return (hw & (1UL << 10)) != 0;    /* HWCAP_ASIMDHP */
    if (!strcmp(feature, "i8mm")) return (hw2 & (1UL << 13)) != 0;   /* HWCAP2_I8MM */
#elif defined(__APPLE__) && defined(__aarch64__)
    /* iOS / macOS on Apple silicon (and the arm64 simulator): sysctl reports 1 for a present feature; an unknown
     * name (older OS) fails and counts as absent. */
    const char* key = !strcmp(feature, "dotprod") ? "hw.optional.arm.FEAT_DotProd"
                      : !strcmp(feature, "fp16")  ? "hw.optional.arm.FEAT_FP16"
                      : !strcmp(feature, "i8mm")  ? "hw.optional.arm.FEAT_I8MM"
                                                  : NULL;
    int value = 0;
    size_t size = sizeof value;
    if (key && sysctlbyname(key, &value, &size, NULL, 0) == 0) return value != 0;
#endif
    (void)feature;
    return 0;
}

int mcpm_pick_variant(plan_ctx* pc, const json_node* root, const char** obj, const char** prefix) {
    mcpm_model* m = pc->m;
    const json_node* vs = mcpm_plan_typed(pc, root, "kernel_variants", JSON_ARRAY, "top level");
    if (!vs) return -1;
    if (vs->count < 1) return mcpm_plan_err(pc, "kernel_variants is empty");
    char names[256] = "";
    for (const json_node* v = json_child(pc->doc, vs); v; v = json_next(pc->doc, v)) {
        const char* name = mcpm_plan_str(pc, v, "name", "kernel_variants");
        const char* vobj = name ? mcpm_plan_str(pc, v, "object_file", "kernel_variants") : NULL;
        const char* vpre = vobj ? mcpm_plan_str(pc, v, "symbol_prefix", "kernel_variants") : NULL;
        const json_node* req = vpre ? mcpm_plan_typed(pc, v, "requires", JSON_ARRAY, "kernel_variants") : NULL;
        if (!req) return -1;
        if (strlen(name) >= sizeof m->variant) return mcpm_plan_err(pc, "kernel variant name too long");
        const char* lacking = NULL;
        for (const json_node* r = json_child(pc->doc, req); r; r = json_next(pc->doc, r)) {
            if (r->type != JSON_STRING) return mcpm_plan_err(pc, "kernel variant %s: requires must be strings", name);
            if (!lacking && !mcpm_cpu_has(r->str)) lacking = r->str;
        }
        if (m->want_variant && strcmp(m->want_variant, name)) {
            size_t used = strlen(names);
            snprintf(names + used, sizeof names - used, "%s%s", used ? ", " : "", name);
            continue;
        }
        if (lacking && m->want_variant)
            return mcpm_seterr(m->err, "kernel variant '%s' needs the CPU feature '%s', which this CPU lacks: "
                               "leave the kernel variant unset to pick one automatically", name, lacking);
        if (lacking) continue;
        *obj = vobj;
        *prefix = vpre;
        snprintf(m->variant, sizeof m->variant, "%s", name);
        return 0;
    }
    if (m->want_variant)
        return mcpm_seterr(m->err, "unknown kernel variant '%s' (this bundle has: %s)", m->want_variant, names);
    return mcpm_plan_err(pc, "no kernel variant runs on this CPU (the last one must require nothing)");
}

/* Static kernel table: where the kernels come from a static library linked into an app (iOS, the CMake libmcpm.a),
 * dlsym of the app's own image is fragile and the linker drops archive members nothing references. There a
 * generated C file (mcpm_kernel_table.c of `mcpm-export --target ios`, or of runtime_bindings/c/CMakeLists.txt)
 * defines mcpm_static_kernels() returning an array of {symbol, function} ending with {NULL, NULL}; it references
 * every kernel, so the linker keeps them, and the runtime then resolves kernels in it instead of with
 * dladdr/dlopen/dlsym. The weak default (no table) keeps the dlsym path for every other build. */
typedef struct mcpm_static_kernel {
    const char* symbol; /* e.g. "__tvm_ffi_dotprod_rms_norm" (the C name: symbol_prefix + kernel name) */
    void* fn;           /* its address */
} mcpm_static_kernel;

MCPM_HIDDEN const mcpm_static_kernel* mcpm_static_kernels(void);
#ifndef MCPM_KERNEL_TABLE /* defined by builds that always link a table (the CMake static library): a weak default
                             in the same archive member would stop the linker from fetching the table from it */
__attribute__((weak)) const mcpm_static_kernel* mcpm_static_kernels(void) { return NULL; }
#endif

/* The address of symbol sym: in the table, or with dlsym in self. */
static void* find_kernel(const mcpm_static_kernel* table, void* self, const char* sym) {
    for (const mcpm_static_kernel* t = table; t && t->symbol; t++)
        if (!strcmp(t->symbol, sym)) return t->fn;
    return self ? dlsym(self, sym) : NULL;
}

/* Fills kernel k's name and function; where: the library or table searched (for the error). */
static int resolve_one(plan_ctx* pc, const json_node* kn, int k, const char* prefix, const mcpm_static_kernel* table,
                       void* self, const char* where, const char* dir, const char* obj) {
    mcpm_model* m = pc->m;
    if (kn->type != JSON_STRING) return mcpm_plan_err(pc, "kernel names must be strings");
    for (int j = 0; j < k; j++)
        if (!strcmp(m->kernel_names[j], kn->str)) return mcpm_plan_err(pc, "duplicate kernel names");
    if (!(m->kernel_names[k] = strdup(kn->str))) return mcpm_seterr(m->err, "out of memory");
    char sym[512];
    snprintf(sym, sizeof sym, "%s%s", prefix, kn->str);
    void* p = find_kernel(table, self, sym);
    if (!p)
        return mcpm_seterr(m->err, "kernel symbol %s not found in %s: this library was not built with the kernels "
                           "of %s (%s)", sym, where, dir, obj);
    memcpy(&m->kernel_fns[k], &p, sizeof p);
    return 0;
}

int mcpm_resolve_kernels(plan_ctx* pc, const json_node* kernels, const char* prefix, const char* dir,
                         const char* obj) {
    mcpm_model* m = pc->m;
    m->n_kernels = kernels->count;
    m->kernel_fns = calloc((size_t)m->n_kernels + 1, sizeof(mcpm_kernel_fn));
    m->kernel_names = calloc((size_t)m->n_kernels + 1, sizeof(char*));
    if (!m->kernel_fns || !m->kernel_names) return mcpm_seterr(m->err, "out of memory");
    static const char anchor = 0;
    const mcpm_static_kernel* table = mcpm_static_kernels();
    Dl_info info;
    void* self = NULL;
    if (table) info.dli_fname = "the static kernel table";
    else if (dladdr(&anchor, &info) && info.dli_fname) self = dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD);
    if (!table && !self) return mcpm_seterr(m->err, "cannot find the runtime library itself (dladdr/dlopen failed)");
    int k = 0, rc = 0;
    for (const json_node* kn = json_child(pc->doc, kernels); kn && !rc; kn = json_next(pc->doc, kn), k++)
        rc = resolve_one(pc, kn, k, prefix, table, self, info.dli_fname, dir, obj);
    if (self) dlclose(self);
    return rc;
}

int mcpm_kernel_variants_json(mcpm_model* m, char* out, size_t len) {
    if (!m) return -1;
    if (!out || len < 3) return mcpm_seterr(m->err, "mcpm_kernel_variants_json: no output buffer");
    char path[4096], err[256];
    snprintf(path, sizeof path, "%s/plan.json", mcpm_model_bundle_dir(m));
    size_t n = 0;
    char* text = mcpm_read_file(path, &n);
    if (!text) return mcpm_seterr(m->err, "cannot read %s", path);
    json_doc doc = {0};
    int rc = json_parse(&doc, text, n, err, sizeof err);
    free(text);
    if (rc) return mcpm_seterr(m->err, "%s: invalid JSON: %s", path, err);
    const json_node* vs = doc.nodes[0].type == JSON_OBJECT ? json_get(&doc, &doc.nodes[0], "kernel_variants") : NULL;
    size_t used = (size_t)snprintf(out, len, "[");
    for (const json_node* v = vs && vs->type == JSON_ARRAY ? json_child(&doc, vs) : NULL; v; v = json_next(&doc, v)) {
        const json_node* name = json_get(&doc, v, "name");
        const json_node* req = json_get(&doc, v, "requires");
        if (!name || name->type != JSON_STRING || !req || req->type != JSON_ARRAY || strlen(name->str) > 31 ||
            strpbrk(name->str, "\"\\")) continue;
        int supported = 1;
        for (const json_node* r = json_child(&doc, req); r; r = json_next(&doc, r))
            supported &= r->type == JSON_STRING && mcpm_cpu_has(r->str);
        int w = snprintf(out + used, len - used, "%s{\"name\": \"%s\", \"supported\": %s}", used > 1 ? ", " : "",
                         name->str, supported ? "true" : "false");
        if (w < 0 || (size_t)w >= len - used) { rc = -1; break; }
        used += (size_t)w;
    }
    json_free(&doc);
    if (rc || used + 2 > len)
        return mcpm_seterr(m->err, "mcpm_kernel_variants_json: buffer of %zu bytes too small", len);
    snprintf(out + used, len - used, "]");
    return 0;
}
