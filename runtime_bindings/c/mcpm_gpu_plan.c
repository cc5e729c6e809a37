/* Launch records of plan.json's "gpu" section, device-neutral: parsing, validation against the plan, RPN
 * evaluation, per-kernel times. Shared by the OpenCL (mcpm_opencl.c) and Metal (mcpm_metal.m) dispatchers: see
 * mcpm_gpu_plan.h and docs/gpu-plan.md. */
#define _POSIX_C_SOURCE 200809L
#include "mcpm_gpu_plan.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define RPN_MAX_LEN 64
#define RPN_MAX_DEPTH 32

int gpu_err(char* err, size_t len, const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, len, fmt, ap);
    va_end(ap);
    return -1;
}

/* ================================================================ launch records */

enum { RPN_NUM, RPN_N, RPN_POS, RPN_ADD, RPN_SUB, RPN_MUL, RPN_FLOORDIV, RPN_MOD, RPN_MIN, RPN_MAX };
static const char* const RPN_OPS[] = {"+", "-", "*", "//", "%", "min", "max"};

int gpu_grow(void** p, int* cap, int need, size_t elem) {
    if (need <= *cap) return 0;
    int c = *cap ? *cap : 16;
    while (c < need) c *= 2;
    void* q = realloc(*p, (size_t)c * elem);
    if (!q) return -1;
    *p = q;
    *cap = c;
    return 0;
}

typedef struct {
    const mcpm_gpu_desc* d;
    gpu_plan* rs;
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
static int parse_rpn(rec_ctx* rc, const json_node* j, gpu_expr* e, const char* where) {
    const json_doc* doc = rc->d->doc;
    gpu_plan* rs = rc->rs;
    e->first = rs->n_toks;
    e->len = 0;
    int single = j && j->type == JSON_NUMBER;
    if (!j || (!single && (j->type != JSON_ARRAY || j->count < 1 || j->count > RPN_MAX_LEN)))
        return rerr(rc, "%s: an expression must be a non-empty array of at most %d items", where, RPN_MAX_LEN);
    int depth = 0;
    const json_node* t = single ? j : json_child(doc, j);
    for (; t; t = single ? NULL : json_next(doc, t)) {
        gpu_rpn_tok tok = {RPN_NUM, 0};
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
        if (gpu_grow((void**)&rs->toks, &rs->cap_toks, rs->n_toks + 1, sizeof(gpu_rpn_tok)))
            return gpu_err(rc->err, rc->errlen, "out of memory");
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
int gpu_plan_eval(const gpu_plan* rs, const gpu_expr* e, int64_t n, int64_t pos, int64_t* out, const char** why) {
    int64_t st[RPN_MAX_DEPTH];
    int sp = 0;
    for (int i = 0; i < e->len; i++) {
        const gpu_rpn_tok* t = &rs->toks[e->first + i];
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
static int check_launch(rec_ctx* rc, int k, const gpu_launch* L, const char* where) {
    const mcpm_gpu_desc* d = rc->d;
    const gpu_plan* rs = rc->rs;
    for (int ei = 0; ei < 2; ei++) {
        const mcpm_gpu_entry* e = &d->entries[ei];
        int used = 0;
        for (int c = 0; c < e->n_calls; c++) {
            const mcpm_gpu_call* call = &e->calls[c];
            if (call->kernel != k) continue;
            used = 1;
            for (int p = 0; p < L->n_params; p++) {
                const gpu_param* pr = &rs->params[L->first_param + p];
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
                    if (gpu_plan_eval(rs, &L->grid[g], n, pos, &v, &why))
                        return rerr(rc, "%s: grid[%d] fails at n=%lld pos=%lld: %s", where, g, (long long)n,
                                    (long long)pos, why);
                    if (v < 1 || v > ((int64_t)1 << 31))
                        return rerr(rc, "%s: grid[%d] = %lld at n=%lld pos=%lld (%s entry; must be 1..2^31)", where, g,
                                    (long long)v, (long long)n, (long long)pos, e->name);
                }
                for (int p = 0; p < L->n_params; p++) {
                    const gpu_param* pr = &rs->params[L->first_param + p];
                    if (pr->is_scalar && gpu_plan_eval(rs, &pr->expr, n, pos, &v, &why))
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
    gpu_plan* rs = rc->rs;
    char where[320];
    const json_node* launches = rec_get(rc, d->gpu, "launches", JSON_OBJECT, "gpu");
    if (!launches) return -1;
    rs->first_launch = calloc((size_t)d->n_kernels + 1, sizeof(int));
    rs->n_kernel_launches = calloc((size_t)d->n_kernels + 1, sizeof(int));
    if (!rs->first_launch || !rs->n_kernel_launches) return gpu_err(rc->err, rc->errlen, "out of memory");
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
            if (gpu_grow((void**)&rs->launches, &rs->cap_launches, rs->n_launches + 1, sizeof(gpu_launch)))
                return gpu_err(rc->err, rc->errlen, "out of memory");
            gpu_launch* L = &rs->launches[rs->n_launches];
            memset(L, 0, sizeof *L);
            if (!(L->kernel = strdup(kn->str))) return gpu_err(rc->err, rc->errlen, "out of memory");
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
                if (x->type != JSON_NUMBER || !x->is_int || x->i < 1 || x->i > GPU_MAX_BLOCK_THREADS)
                    return rerr(rc, "%s: block values must be integers >= 1", where);
                L->block[g] = (size_t)x->i;
                threads *= x->i;
            }
            if (threads > GPU_MAX_BLOCK_THREADS)
                return rerr(rc, "%s: block of %lld threads (at most %d)", where, (long long)threads, GPU_MAX_BLOCK_THREADS);
            L->first_param = rs->n_params;
            L->n_params = params->count;
            int p = 0;
            for (const json_node* pj = json_child(doc, params); pj; pj = json_next(doc, pj), p++) {
                if (gpu_grow((void**)&rs->params, &rs->cap_params, rs->n_params + 1, sizeof(gpu_param)))
                    return gpu_err(rc->err, rc->errlen, "out of memory");
                gpu_param* pr = &rs->params[rs->n_params++];
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
                if (!strcmp(sc->str, "int32")) pr->dtype = GPU_SCALAR_INT32;
                else if (!strcmp(sc->str, "int64")) pr->dtype = GPU_SCALAR_INT64;
                else if (!strcmp(sc->str, "float32")) pr->dtype = GPU_SCALAR_FLOAT32;
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

void gpu_plan_free(gpu_plan* rs) {
    for (int i = 0; i < rs->n_launches; i++) free(rs->launches[i].kernel);
    for (int i = 0; rs->kernel_names && i < rs->n_kernels; i++) free(rs->kernel_names[i]);
    free(rs->toks);
    free(rs->params);
    free(rs->launches);
    free(rs->first_launch);
    free(rs->n_kernel_launches);
    free(rs->kernel_names);
    free(rs->times);
    memset(rs, 0, sizeof *rs);
}

int gpu_plan_parse(gpu_plan* rs, const mcpm_gpu_desc* d, char* err, size_t errlen) {
    const json_node* ver = json_get(d->doc, d->gpu, "version");
    rec_ctx rc = {d, rs, err, errlen};
    if (!ver || ver->type != JSON_NUMBER || !ver->is_int || ver->i != 1)
        return rerr(&rc, "field 'version' must be 1 (this runtime reads launch records version 1): re-export the bundle");
    if (parse_launches(&rc)) return -1;
    rs->n_kernels = d->n_kernels;
    rs->times = calloc((size_t)d->n_kernels + 1, sizeof(gpu_ktime));
    rs->kernel_names = calloc((size_t)d->n_kernels + 1, sizeof(char*));
    if (!rs->times || !rs->kernel_names) return gpu_err(err, errlen, "out of memory");
    for (int k = 0; k < d->n_kernels; k++)
        if (!(rs->kernel_names[k] = strdup(d->kernel_names[k]))) return gpu_err(err, errlen, "out of memory");
    return 0;
}

int gpu_plan_scalar_is_fixed(const gpu_plan* rs, const gpu_param* pr) {
    for (int i = 0; i < pr->expr.len; i++) {
        int op = rs->toks[pr->expr.first + i].op;
        if (op == RPN_N || op == RPN_POS) return 0;
    }
    return 1;
}

int gpu_plan_scalar(const gpu_plan* rs, const gpu_param* pr, int idx, int64_t n, int64_t pos, int64_t* out,
                    const char* where, char* err, size_t errlen) {
    int64_t v = 0;
    const char* why = "";
    if (gpu_plan_eval(rs, &pr->expr, n, pos, &v, &why))
        return gpu_err(err, errlen, "%s: param %d at n=%lld pos=%lld: %s", where, idx, (long long)n, (long long)pos, why);
    if (pr->dtype == GPU_SCALAR_INT32 && (v < INT32_MIN || v > INT32_MAX))
        return gpu_err(err, errlen, "%s: param %d = %lld does not fit int32", where, idx, (long long)v);
    *out = v;
    return 0;
}

int gpu_plan_grid(const gpu_plan* rs, const gpu_launch* L, int kernel, const char* entry, int call, int n, int pos,
                  size_t grid[3], char* err, size_t errlen) {
    for (int d = 0; d < 3; d++) {
        int64_t v = 0;
        const char* why = "bad value";
        if (gpu_plan_eval(rs, &L->grid[d], n, pos, &v, &why) || v < 1 || v > ((int64_t)1 << 31))
            return gpu_err(err, errlen, "device kernel '%.100s' (plan kernel '%.100s', %s call %d): grid[%d] at "
                           "n=%d pos=%d: %s (%lld)", L->kernel, rs->kernel_names[kernel], entry, call, d, n, pos, why,
                           (long long)v);
        grid[d] = (size_t)v;
    }
    return 0;
}

/* ================================================================ per-kernel times (profiling) */

void gpu_plan_reset_times(gpu_plan* rs) {
    if (rs->times) memset(rs->times, 0, sizeof(gpu_ktime) * (size_t)rs->n_kernels);
}

int gpu_plan_times_json(const gpu_plan* rs, char* out, size_t len) {
    if (!out || len < 3) return -1;
    size_t used = (size_t)snprintf(out, len, "[");
    int first = 1;
    /* slowest first: repeated selection (kernels are few) */
    char* done = calloc((size_t)rs->n_kernels + 1, 1);
    if (!done) return -1;
    for (;;) {
        int best = -1;
        for (int k = 0; k < rs->n_kernels; k++)
            if (!done[k] && rs->times[k].count > 0 && (best < 0 || rs->times[k].ns > rs->times[best].ns)) best = k;
        if (best < 0) break;
        done[best] = 1;
        const gpu_ktime* t = &rs->times[best];
        int w = snprintf(out + used, len - used, "%s{\"kernel\": \"%s\", \"count\": %ld, \"launches\": %ld, \"ms\": %.6f}",
                         first ? "" : ", ", rs->kernel_names[best], t->count, t->launches, t->ns * 1e-6);
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
