/* Device "gpu" / "auto": hands the parsed plan to the OpenCL dispatcher (mcpm_opencl.c), which reads the plan's
 * "gpu" launch records (docs/gpu-plan.md). "gpu" fails the load when that is impossible; "auto" keeps the CPU path
 * and says why in m->notice. */
#define _GNU_SOURCE /* madvise under -std=c11 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "mcpm_model.h"

/* The prefill and decode calls and args of m as the dispatcher reads them: calls mcpm_gpu_call[prefill + decode
 * calls], args mcpm_gpu_arg[n_args] (both the caller's), d->entries[0..1]. */
static void describe_entries(const mcpm_model* m, mcpm_gpu_desc* d, mcpm_gpu_call* calls, mcpm_gpu_arg* args) {
    const plan_entry* es[2] = {&m->prefill, &m->decode};
    int nc = 0;
    for (int k = 0; k < 2; k++) {
        const plan_entry* e = es[k];
        for (int c = 0; c < e->n_calls; c++) {
            calls[nc + c].kernel = e->calls[c].kernel;
            calls[nc + c].first_arg = e->calls[c].first_arg;
            calls[nc + c].nargs = e->calls[c].nargs;
            for (int i = e->calls[c].first_arg; i < e->calls[c].first_arg + e->calls[c].nargs; i++) {
                const plan_arg* a = &m->args[i];
                int64_t b1 = mcpm_arg_bytes(a, 1), b2 = mcpm_arg_bytes(a, e->n_max);
                args[i].kind = a->kind;
                args[i].index = a->index;
                args[i].which_v = a->which_v;
                args[i].offset = a->offset;
                args[i].bytes = a->kind == ARG_SCALAR ? 0 : b1 > b2 ? b1 : b2;
            }
        }
        d->entries[k].name = e->name;
        d->entries[k].n_max = e->n_max;
        d->entries[k].n_storages = e->n_storages;
        d->entries[k].storage_size = e->storage_size;
        d->entries[k].n_calls = e->n_calls;
        d->entries[k].calls = calls + nc;
        d->entries[k].output_storage = e->output.index;
        nc += e->n_calls;
    }
}

/* Opens the dispatcher over plan section gpu; NULL with the reason in err char[errlen]. */
static mcpm_gpu* open_gpu(mcpm_model* m, plan_ctx* pc, const json_node* gpu, const char* dir, char* err,
                          size_t errlen) {
    if (gpu->type != JSON_OBJECT) {
        snprintf(err, errlen, "%.900s: invalid plan: gpu: not an object", pc->path);
        return NULL;
    }
    mcpm_gpu_arg* args = calloc((size_t)m->n_args + 1, sizeof(mcpm_gpu_arg)); /* [n_args] */
    mcpm_gpu_call* calls = calloc((size_t)m->prefill.n_calls + (size_t)m->decode.n_calls + 1, sizeof(mcpm_gpu_call));
    mcpm_gpu* g = NULL;
    if (!args || !calls) {
        snprintf(err, errlen, "out of memory");
    } else {
        mcpm_gpu_desc d;
        memset(&d, 0, sizeof d);
        describe_entries(m, &d, calls, args);
        d.bundle_dir = dir;
        d.plan_path = pc->path;
        d.doc = pc->doc;
        d.gpu = gpu;
        d.max_ctx = m->max_ctx;
        d.n_kernels = m->n_kernels;
        d.kernel_names = m->kernel_names;
        d.n_weights = m->n_weights;
        d.weight_data = m->weight_data;
        d.num_layers = m->num_layers;
        d.cache_bytes = m->cache_bytes;
        d.n_args = m->n_args;
        d.args = args;
        d.profile = m->want_profile;
        d.cache_dir = m->want_cache_dir;
        g = mcpm_gpu_open(&d, err, errlen);
    }
    free(args);
    free(calls);
    return g;
}

int mcpm_gpu_setup(mcpm_model* m, plan_ctx* pc, const json_node* root, const char* dir) {
    int want_gpu = !strcmp(m->want_device, "gpu");
    if (m->vision.present) { /* the GPU dispatchers run prefill/decode only */
        if (want_gpu)
            return mcpm_seterr(m->err, "%s is a MiniCPM-V bundle (vision encoder): it runs on the CPU only, use "
                               "device \"cpu\"", dir);
        snprintf(m->notice, sizeof m->notice, "device auto: MiniCPM-V bundles (vision encoder) run on the CPU only");
        return 0;
    }
    const json_node* gpu = json_get(pc->doc, root, "gpu");
    if (!gpu) {
        if (want_gpu)
            return mcpm_seterr(m->err, "%s has no GPU kernels (plan.json has no \"gpu\" section): re-export it with "
                               "--device gpu, or use device \"cpu\"", dir);
        snprintf(m->notice, sizeof m->notice,
                 "device auto: the bundle has no GPU kernels (export it with --device gpu): running on the CPU");
        return 0;
    }
    char err[MCPM_ERR_LEN] = "";
    m->gpu = open_gpu(m, pc, gpu, dir, err, sizeof err);
    if (!m->gpu) {
        if (want_gpu) return mcpm_seterr(m->err, "%s", err);
        snprintf(m->notice, sizeof m->notice, "device auto: running on the CPU: %.960s", err);
        return 0;
    }
    /* the device holds the KV caches and the weights now: the executor allocates no CPU caches (mcpm_runtime.c),
     * and the weight pages read for the upload are dropped */
    if (m->map) madvise(m->map, m->map_size, MADV_DONTNEED);
    return 0;
}
