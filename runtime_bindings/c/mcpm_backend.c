/* Backend symbols that TVM-generated kernels call: parallel launch, workspace, error reporting.
 *
 * The kernels reference __TVMBackendParallelLaunch / __TVMBackendAllocWorkspace / __TVMBackendFreeWorkspace as
 * WEAK data symbols (function pointers); the strong initialized definitions below override them at link time.
 * These hooks receive no model argument, so they find the model's pool, arena and error buffer through
 * THREAD-LOCAL state: mcpm_backend_enter() sets it on the calling thread for the duration of a prefill/decode,
 * and each pool worker sets it once for its own model at start. This thread-local state (plus the per-thread
 * load-error buffer for mcpm_last_error(NULL)) is the only state outside the model handle. All of it is
 * hidden (-fvisibility) so another library in the process (e.g. libtvm_ffi) cannot interpose on it.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mcpm_internal.h"

#define MCPM_DEFAULT_SPIN_US 2000 /* workers spin this long after a launch before sleeping */

static _Thread_local struct mcpm_model* tls_model; /* whose error buffer the hooks write to */
static _Thread_local mcpm_pool* tls_pool;          /* pool for parallel launches (caller thread only) */
static _Thread_local mcpm_arena* tls_arena;        /* this thread's workspace arena */
static _Thread_local int tls_in_parallel;          /* nested launches run serially */
static _Thread_local char tls_load_error[MCPM_ERR_LEN]; /* errors with no model (load failures) */

char* mcpm_thread_error_buffer(void) {
    return tls_model ? mcpm_model_error_buffer(tls_model) : tls_load_error;
}

void mcpm_backend_enter(struct mcpm_model* model, mcpm_pool* pool) {
    tls_model = model;
    tls_pool = pool;
    tls_arena = pool ? &pool->arena0 : NULL;
    tls_in_parallel = 0;
}

void mcpm_backend_leave(void) {
    tls_model = NULL;
    tls_pool = NULL;
    tls_arena = NULL;
}

/* ---------------------------------------------------------------- error hook */

MCPM_HIDDEN void TVMFFIErrorSetRaisedFromCStrParts(const char* kind, const char** parts, int32_t num_parts);

void TVMFFIErrorSetRaisedFromCStrParts(const char* kind, const char** parts, int32_t num_parts) {
    char* buf = mcpm_thread_error_buffer(); /* char[MCPM_ERR_LEN] */
    size_t used = (size_t)snprintf(buf, MCPM_ERR_LEN, "%s: ", kind ? kind : "Error");
    for (int32_t i = 0; i < num_parts && used < MCPM_ERR_LEN - 1; i++) {
        if (!parts[i]) continue;
        int w = snprintf(buf + used, MCPM_ERR_LEN - used, "%s", parts[i]);
        if (w < 0) break;
        used += (size_t)w;
    }
    /* one line: TVM's messages put the kernel signature on an indented second line */
    size_t k = 0;
    for (size_t i = 0; buf[i]; i++) {
        if (buf[i] == '\n' || buf[i] == '\r') {
            while (buf[i + 1] == ' ' || buf[i + 1] == '\n') i++;
            buf[k++] = ' ';
        } else {
            buf[k++] = buf[i];
        }
    }
    buf[k] = '\0';
}

/* ---------------------------------------------------------------- workspace: per-thread LIFO bump arena */

static size_t round_up(size_t x) { return (x + MCPM_ALIGN - 1) / MCPM_ALIGN * MCPM_ALIGN; }

static void* alloc_workspace(int device_type, int device_id, uint64_t nbytes, int dtype_code, int dtype_bits) {
    (void)device_type; (void)device_id; (void)dtype_code; (void)dtype_bits;
    size_t size = round_up(nbytes ? (size_t)nbytes : 1);
    mcpm_arena* a = tls_arena;
    if (a && a->base && a->cap - a->top >= size) {
        void* p = a->base + a->top;
        a->top += size;
        return p;
    }
    return mcpm_aligned_alloc(size); /* overflow (or no arena): rare, freed below */
}

static int free_workspace(int device_type, int device_id, void* ptr) {
    (void)device_type; (void)device_id;
    mcpm_arena* a = tls_arena;
    unsigned char* p = ptr;
    if (a && a->base && p >= a->base && p < a->base + a->cap) {
        a->top = (size_t)(p - a->base); /* LIFO: TVM frees in reverse allocation order */
        return 0;
    }
    free(ptr);
    return 0;
}

/* ---------------------------------------------------------------- parallel launch: persistent pthread pool
 * A launch publishes fn / cdata / num_task, sets `remaining` and bumps `generation`; workers spin on the
 * generation for pool->spin_ns (a decode step is hundreds of short launches: a futex wake-up per launch costs
 * tens of microseconds on a VM or a phone), then sleep on `wake`. Lost wake-ups are excluded by the seq_cst order
 * of (launcher: bump generation, then read sleepers) and (worker: sleepers++ under mu, then re-read generation).
 * The caller spins on `remaining` the same way, then sleeps on `done` (caller_sleeping / remaining, mirrored). */

static void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__) || defined(__arm__)
    __asm__ __volatile__("yield");
#endif
}

static long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long)ts.tv_sec * 1000000000L + ts.tv_nsec;
}

/* Spins until *gen != seen (gen given) or *count == 0 (gen NULL), at most about spin_ns; 1 if that happened. */
static int spin_until(_Atomic uint64_t* gen, uint64_t seen, _Atomic int* count, long spin_ns) {
    if (spin_ns <= 0) return 0;
    long deadline = 0;
    for (unsigned i = 1;; i++) {
        if (gen ? atomic_load(gen) != seen : atomic_load(count) == 0) return 1;
        cpu_relax();
        if ((i & 255) == 0) {
            long t = now_ns();
            if (!deadline) deadline = t + spin_ns;
            else if (t >= deadline) return 0;
        }
    }
}

static int run_tasks(mcpm_parallel_lambda fn, void* cdata, int num_task, int first, int stride) {
    mcpm_parallel_env env = {NULL, num_task};
    int rc = 0;
    for (int t = first; t < num_task; t += stride)
        if (fn(t, &env, cdata)) rc = -1;
    return rc;
}

static void* worker_main(void* arg) {
    mcpm_worker* w = arg;
    mcpm_pool* pool = w->pool;
    tls_model = pool->model;
    tls_arena = &w->arena;
    tls_in_parallel = 1;
    uint64_t seen = 0;
    for (;;) {
        if (!spin_until(&pool->generation, seen, NULL, pool->spin_ns)) {
            pthread_mutex_lock(&pool->mu);
            atomic_fetch_add(&pool->sleepers, 1);
            while (atomic_load(&pool->generation) == seen && !atomic_load(&pool->stop))
                pthread_cond_wait(&pool->wake, &pool->mu);
            atomic_fetch_sub(&pool->sleepers, 1);
            pthread_mutex_unlock(&pool->mu);
        }
        if (atomic_load(&pool->stop)) break;
        seen = atomic_load(&pool->generation);
        if (run_tasks(pool->fn, pool->cdata, pool->num_task, w->index, pool->threads)) atomic_store(&pool->failed, 1);
        if (atomic_fetch_sub(&pool->remaining, 1) == 1 && atomic_load(&pool->caller_sleeping)) {
            pthread_mutex_lock(&pool->mu);
            pthread_cond_signal(&pool->done);
            pthread_mutex_unlock(&pool->mu);
        }
    }
    return NULL;
}

static int parallel_launch(mcpm_parallel_lambda fn, void* cdata, int num_task) {
    mcpm_pool* pool = tls_pool;
    int threads = pool ? pool->threads : 1;
    if (num_task <= 0) num_task = threads;
    if (!pool || threads == 1 || tls_in_parallel) return run_tasks(fn, cdata, num_task, 0, 1);
    pool->fn = fn;
    pool->cdata = cdata;
    pool->num_task = num_task;
    atomic_store(&pool->failed, 0);
    atomic_store(&pool->remaining, threads - 1);
    atomic_fetch_add(&pool->generation, 1);
    if (atomic_load(&pool->sleepers) > 0) {
        pthread_mutex_lock(&pool->mu);
        pthread_cond_broadcast(&pool->wake);
        pthread_mutex_unlock(&pool->mu);
    }
    tls_in_parallel = 1;
    int rc = run_tasks(fn, cdata, num_task, 0, threads); /* the caller is worker 0 */
    tls_in_parallel = 0;
    if (!spin_until(NULL, 0, &pool->remaining, pool->spin_ns)) {
        pthread_mutex_lock(&pool->mu);
        atomic_store(&pool->caller_sleeping, 1);
        while (atomic_load(&pool->remaining) > 0) pthread_cond_wait(&pool->done, &pool->mu);
        atomic_store(&pool->caller_sleeping, 0);
        pthread_mutex_unlock(&pool->mu);
    }
    if (atomic_load(&pool->failed)) rc = -1;
    return rc;
}

/* The kernels' weak function-pointer slots, overridden here (hidden: binds inside this library). */
typedef int (*mcpm_launch_fn)(mcpm_parallel_lambda, void*, int);
typedef void* (*mcpm_alloc_fn)(int, int, uint64_t, int, int);
typedef int (*mcpm_free_fn)(int, int, void*);
MCPM_HIDDEN mcpm_launch_fn __TVMBackendParallelLaunch = parallel_launch;
MCPM_HIDDEN mcpm_alloc_fn __TVMBackendAllocWorkspace = alloc_workspace;
MCPM_HIDDEN mcpm_free_fn __TVMBackendFreeWorkspace = free_workspace;

void* mcpm_aligned_alloc(size_t size) {
    void* p = NULL;
    return posix_memalign(&p, MCPM_ALIGN, size ? size : MCPM_ALIGN) == 0 ? p : NULL;
}

/* ---------------------------------------------------------------- pool lifetime */

static int arena_init(mcpm_arena* a, size_t bytes) {
    a->cap = round_up(bytes);
    a->top = 0;
    a->base = mcpm_aligned_alloc(a->cap);
    return a->base ? 0 : -1;
}

int mcpm_pool_init(mcpm_pool* pool, struct mcpm_model* model, int threads, size_t workspace_bytes, char* err,
                   size_t errlen) {
    memset(pool, 0, sizeof(*pool));
    pool->model = model;
    pool->threads = threads < 1 ? 1 : threads;
    pthread_mutex_init(&pool->mu, NULL);
    pthread_cond_init(&pool->wake, NULL);
    pthread_cond_init(&pool->done, NULL);
    const char* spin = getenv("MCPM_SPIN_US"); /* read once here; the value lives in the pool */
    pool->spin_ns = (spin && *spin ? strtol(spin, NULL, 10) : MCPM_DEFAULT_SPIN_US) * 1000L;
    if (arena_init(&pool->arena0, workspace_bytes)) goto oom;
    if (pool->threads > 1) {
        pool->workers = calloc((size_t)pool->threads - 1, sizeof(mcpm_worker)); /* mcpm_worker[threads-1] */
        if (!pool->workers) goto oom;
    }
    for (int i = 1; i < pool->threads; i++) {
        mcpm_worker* w = &pool->workers[i - 1];
        w->pool = pool;
        w->index = i;
        int no_mem = arena_init(&w->arena, workspace_bytes);
        if (no_mem || pthread_create(&w->thread, NULL, worker_main, w)) {
            snprintf(err, errlen, "cannot start worker thread %d of %d (%s)", i, pool->threads,
                     no_mem ? "out of memory" : "pthread_create failed");
            free(w->arena.base);
            w->arena.base = NULL;
            pool->threads = i; /* only workers 1..i-1 exist */
            mcpm_pool_destroy(pool);
            return -1;
        }
    }
    return 0;
oom:
    snprintf(err, errlen, "out of memory for %d thread workspaces of %zu bytes", threads, workspace_bytes);
    pool->threads = 1; /* no thread started yet */
    mcpm_pool_destroy(pool);
    return -1;
}

void mcpm_pool_destroy(mcpm_pool* pool) {
    if (pool->threads > 1) {
        pthread_mutex_lock(&pool->mu);
        atomic_store(&pool->stop, 1);
        atomic_fetch_add(&pool->generation, 1); /* releases spinning workers too */
        pthread_cond_broadcast(&pool->wake);
        pthread_mutex_unlock(&pool->mu);
        for (int i = 1; i < pool->threads; i++) pthread_join(pool->workers[i - 1].thread, NULL);
    }
    if (pool->workers) {
        for (int i = 0; i < pool->threads - 1; i++) free(pool->workers[i].arena.base);
    }
    free(pool->workers);
    free(pool->arena0.base);
    pthread_cond_destroy(&pool->done);
    pthread_cond_destroy(&pool->wake);
    pthread_mutex_destroy(&pool->mu);
    memset(pool, 0, sizeof(*pool));
}
