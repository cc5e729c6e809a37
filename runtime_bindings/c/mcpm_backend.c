/* Backend symbols that TVM-generated kernels call: parallel launch, workspace, error reporting.
 *
 * The kernels reference __TVMBackendParallelLaunch / __TVMBackendAllocWorkspace / __TVMBackendFreeWorkspace as
 * WEAK data symbols (function pointers); the strong initialized definitions below override them at link time.
 * These hooks receive no model argument, so they find the model's pool, arena and error buffer through
 * THREAD-LOCAL state: mcpm_backend_enter() sets it on the calling thread for the duration of a prefill/decode,
 * and each pool worker sets it once for its own model at start. This thread-local state (plus the per-thread
 * load-error buffer for mcpm_last_error(NULL)) is the only state outside the model handle. The symbols the
 * kernels link against are defined in mcpm_kernel_abi.c (their visibility: mcpm_kernel_abi.h); they call the
 * functions here.
 */
#define _GNU_SOURCE /* sched_getaffinity, CPU_SET */
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mcpm_internal.h"
#if defined(__APPLE__)
#include <sys/sysctl.h>
#include <sys/types.h>
#endif
#include <unistd.h>

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

void mcpm_backend_set_error(const char* kind, const char** parts, int32_t num_parts) {
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

void* mcpm_backend_alloc_workspace(int device_type, int device_id, uint64_t nbytes, int dtype_code, int dtype_bits) {
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

int mcpm_backend_free_workspace(int device_type, int device_id, void* ptr) {
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
 * A launch publishes fn / cdata, sets `pending` = num_task and `ticket` (generation, num_task, next task 0), then
 * bumps `generation`. The caller and every awake worker claim task indices from `ticket` by compare-and-swap
 * until none is left, so tasks go to whichever core is free: a big.LITTLE phone's fast cores take more of them,
 * and a worker that another process keeps off its core takes none instead of holding the launch up. A claim is
 * valid only for its generation, and fn / cdata stay fixed until the claimed task's `pending` decrement, so a
 * worker waking late never runs a task of another launch. Workers spin on the generation for pool->spin_ns (a
 * decode step is hundreds of short launches: a futex wake-up per launch costs tens of microseconds on a VM or a
 * phone), then sleep on `wake`; a worker whose spin was preempted sleeps at once for the next WORKER_QUIET
 * launches. The caller waits for `pending` the same way (yielding its core now and then), then sleeps on `done`. Lost wake-ups are excluded by the seq_cst order of (launcher: bump generation, then read
 * sleepers) and (worker: sleepers++ under mu, then re-read generation), and mirrored for the caller. */

#define TASKS_PER_THREAD 4 /* tasks per launch and thread: small enough chunks to balance unequal cores */
#define LATE_MIN_NS 20000L         /* a wait for workers shorter than this is never "late" */
#define WINDOW_NS 20000000L        /* the caller judges contention once per 20 ms of launches */
#define LATE_SHARE 8               /* contention: over 1/8 of a window spent waiting for late workers */
#define SERIAL_MIN_NS 100000000L   /* the first serial stretch: 0.1 s */
#define SERIAL_MAX_NS 3200000000L  /* the longest: 3.2 s */

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

#define WORKER_QUIET 1024 /* launches a preempted worker waits for asleep before it spins again */
#define PREEMPTED_NS 1000000L /* a gap this long between two looks at the clock: the spinner lost its core */

/* Spins until *gen != seen (gen given) or *count == 0 (gen NULL), at most about spin_ns; 1 if that happened,
 * 0 after spin_ns, -1 when the spinner was preempted meanwhile (another process wants this core: spinning on only
 * takes its timeslice, and a worker that spent it spinning is preempted again inside its next task). The caller
 * (gen NULL) yields its core every 256 rounds: a worker it waits for may be queued behind it. */
static int spin_until(_Atomic uint64_t* gen, uint64_t seen, _Atomic int* count, long spin_ns) {
    if (spin_ns <= 0) return 0;
    long deadline = 0, last = 0;
    for (unsigned i = 1;; i++) {
        if (gen ? atomic_load(gen) != seen : atomic_load(count) == 0) return 1;
        cpu_relax();
        if ((i & 255) == 0) {
            long t = now_ns();
            if (!deadline) deadline = t + spin_ns;
            else if (t >= deadline) return 0;
            if (last && t - last > PREEMPTED_NS) return -1;
            last = t;
            if (!gen) sched_yield();
        }
    }
}

/* One task covering the whole loop: a single-thread pool, or a nested launch inside a task. */
static int run_tasks_serial(mcpm_parallel_lambda fn, void* cdata) {
    mcpm_parallel_env env = {NULL, 1};
    return fn(0, &env, cdata) ? -1 : 0;
}

/* Claims and runs tasks of launch `gen` until none is left (or another launch has started). */
static void run_launch(mcpm_pool* pool, uint32_t gen) {
    uint64_t v = atomic_load(&pool->ticket);
    for (;;) {
        uint32_t num_task = (uint32_t)(v >> 16) & 0xFFFF, task = (uint32_t)v & 0xFFFF;
        if ((uint32_t)(v >> 32) != gen || task >= num_task) return;
        if (!atomic_compare_exchange_weak(&pool->ticket, &v, v + 1)) continue;
        mcpm_parallel_env env = {NULL, (int32_t)num_task};
        if (pool->fn((int)task, &env, pool->cdata)) atomic_store(&pool->failed, 1);
        if (atomic_fetch_sub(&pool->pending, 1) == 1 && atomic_load(&pool->caller_sleeping)) {
            pthread_mutex_lock(&pool->mu);
            pthread_cond_signal(&pool->done);
            pthread_mutex_unlock(&pool->mu);
        }
        v = atomic_load(&pool->ticket);
    }
}

static void* worker_main(void* arg) {
    mcpm_worker* w = arg;
    mcpm_pool* pool = w->pool;
    tls_model = pool->model;
    tls_arena = &w->arena;
    tls_in_parallel = 1;
    uint64_t seen = 0;
    int quiet = 0; /* launches to sleep through without spinning, after the spin found itself preempted */
    for (;;) {
        int spun = spin_until(&pool->generation, seen, NULL, quiet > 0 ? 0 : pool->spin_ns);
        if (spun < 0) quiet = WORKER_QUIET;
        else if (quiet > 0) quiet--;
        if (spun <= 0) {
            pthread_mutex_lock(&pool->mu);
            atomic_fetch_add(&pool->sleepers, 1);
            while (atomic_load(&pool->generation) == seen && !atomic_load(&pool->stop))
                pthread_cond_wait(&pool->wake, &pool->mu);
            atomic_fetch_sub(&pool->sleepers, 1);
            pthread_mutex_unlock(&pool->mu);
        }
        if (atomic_load(&pool->stop)) break;
        seen = atomic_load(&pool->generation);
        run_launch(pool, (uint32_t)seen);
    }
    return NULL;
}

int mcpm_backend_parallel_launch(mcpm_parallel_lambda fn, void* cdata, int num_task) {
    mcpm_pool* pool = tls_pool;
    int threads = pool ? pool->threads : 1;
    (void)num_task; /* a hint: the lambdas split their loops by env->num_task, which is ours to choose */
    if (!pool || threads == 1 || tls_in_parallel) return run_tasks_serial(fn, cdata);
    if (pool->serial_until_ns) { /* workers kept off their cores lately: run alone for a while */
        if (now_ns() < pool->serial_until_ns) {
            tls_in_parallel = 1;
            int rc = run_tasks_serial(fn, cdata);
            tls_in_parallel = 0;
            return rc;
        }
        pool->serial_until_ns = 0; /* try the workers again, in a fresh window */
        pool->window_start_ns = now_ns();
        pool->window_late_ns = 0;
    }
    int tasks = threads * TASKS_PER_THREAD;
    long t0 = now_ns();
    uint64_t gen = atomic_load(&pool->generation) + 1;
    pool->fn = fn;
    pool->cdata = cdata;
    atomic_store(&pool->failed, 0);
    atomic_store(&pool->pending, tasks);
    atomic_store(&pool->ticket, (gen & 0xFFFFFFFFu) << 32 | (uint64_t)tasks << 16);
    atomic_store(&pool->generation, gen);
    if (atomic_load(&pool->sleepers) > 0) {
        pthread_mutex_lock(&pool->mu);
        pthread_cond_broadcast(&pool->wake);
        pthread_mutex_unlock(&pool->mu);
    }
    tls_in_parallel = 1;
    run_launch(pool, (uint32_t)gen); /* the caller works too */
    tls_in_parallel = 0;
    long t1 = now_ns();
    if (spin_until(NULL, 0, &pool->pending, pool->spin_ns) <= 0) {
        pthread_mutex_lock(&pool->mu);
        atomic_store(&pool->caller_sleeping, 1);
        while (atomic_load(&pool->pending) > 0) pthread_cond_wait(&pool->done, &pool->mu);
        atomic_store(&pool->caller_sleeping, 0);
        pthread_mutex_unlock(&pool->mu);
    }
    /* Another process keeping a worker off its core shows as the caller waiting for a task that worker claimed
     * longer than its own share took ("late": a timeslice, milliseconds, where a launch takes microseconds). Such
     * waits come once per timeslice of the other process, so they are judged by the time they take: when over
     * 1/LATE_SHARE of a WINDOW_NS window went to them, the caller runs the launches of the next serial_ns alone (as
     * fast as one thread, not a timeslice per launch; the idle workers sleep, so the scheduler gives the caller a
     * core of its own). Found again in the first window after, serial_ns doubles (up to SERIAL_MAX_NS); a quiet
     * window resets it. Quiet or unequal cores never wait that long, so they keep every worker. */
    long t2 = now_ns(), waited = t2 - t1;
    if (waited > t1 - t0 && waited > LATE_MIN_NS) pool->window_late_ns += waited;
    long span = t2 - pool->window_start_ns;
    if (span >= WINDOW_NS) {
        if (pool->window_late_ns * LATE_SHARE > span) {
            pool->serial_until_ns = t2 + pool->serial_ns;
            if (pool->serial_ns < SERIAL_MAX_NS) pool->serial_ns *= 2;
        } else {
            pool->serial_ns = SERIAL_MIN_NS;
        }
        pool->window_start_ns = t2;
        pool->window_late_ns = 0;
    }
    return atomic_load(&pool->failed) ? -1 : 0;
}


/* ---------------------------------------------------------------- default thread count */

#if defined(__linux__)
static long cpu_max_khz(int cpu) {
    char path[96];
    snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu%d/cpufreq/cpuinfo_max_freq", cpu);
    FILE* f = fopen(path, "r");
    if (!f) return 0;
    char line[32] = "";
    long khz = fgets(line, sizeof line, f) ? strtol(line, NULL, 10) : 0;
    fclose(f);
    return khz > 0 ? khz : 0;
}
#endif

int mcpm_default_threads(void) {
#if defined(__linux__)
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof set, &set) != 0) return (int)sysconf(_SC_NPROCESSORS_ONLN);
    int allowed = 0, fast = 0;
    long lo = 0, hi = 0;
    for (int c = 0; c < CPU_SETSIZE; c++) {
        if (!CPU_ISSET(c, &set)) continue;
        allowed++;
        long khz = cpu_max_khz(c);
        if (khz > 0 && (lo == 0 || khz < lo)) lo = khz;
        if (khz > hi) hi = khz;
    }
    if (lo == 0 || lo == hi) return allowed > 0 ? allowed : 1; /* equal cores, or no cpufreq (VMs) */
    for (int c = 0; c < CPU_SETSIZE; c++) /* big.LITTLE: every core faster than the slowest cluster */
        if (CPU_ISSET(c, &set) && cpu_max_khz(c) > lo) fast++;
    return fast > 0 ? fast : allowed;
#elif defined(__APPLE__)
    int n = 0;
    size_t len = sizeof n;
    if (sysctlbyname("hw.perflevel0.logicalcpu", &n, &len, NULL, 0) == 0 && n > 0) return n; /* P-cores */
    long online = sysconf(_SC_NPROCESSORS_ONLN);
    return online > 0 ? (int)online : 1;
#else
    long online = sysconf(_SC_NPROCESSORS_ONLN);
    return online > 0 ? (int)online : 1;
#endif
}

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
    pool->serial_ns = SERIAL_MIN_NS;
    pool->window_start_ns = now_ns();
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
