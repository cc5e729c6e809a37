/* pool_balance: the runtime's thread pool (mcpm_backend.c) with one artificially slowed worker. Tasks are claimed
 * from a shared counter, so the fast caller should take most of them; a static split would give each thread the
 * same number. Prints one JSON line per launch: {"tasks": N, "caller": tasks the caller ran}.
 *   pool_balance THREADS LAUNCHES SLOW_US FAST_US */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "mcpm_internal.h"

/* the model hooks mcpm_backend.c links against (no model here) */
char* mcpm_model_error_buffer(struct mcpm_model* model) { (void)model; return NULL; }

typedef int (*launch_fn)(mcpm_parallel_lambda, void*, int);
extern launch_fn __TVMBackendParallelLaunch;

typedef struct {
    pthread_t caller;
    long slow_us, fast_us;
    _Atomic int caller_tasks, tasks;
} job;

static void pause_us(long us) {
    struct timespec ts = {us / 1000000, (us % 1000000) * 1000};
    nanosleep(&ts, NULL);
}

static int task(int id, mcpm_parallel_env* env, void* cdata) {
    (void)id; (void)env;
    job* j = cdata;
    int on_caller = pthread_equal(pthread_self(), j->caller);
    atomic_fetch_add(&j->tasks, 1);
    if (on_caller) atomic_fetch_add(&j->caller_tasks, 1);
    pause_us(on_caller ? j->fast_us : j->slow_us); /* every worker is the slow core */
    return 0;
}

int main(int argc, char** argv) {
    if (argc != 5) { fprintf(stderr, "usage: pool_balance THREADS LAUNCHES SLOW_US FAST_US\n"); return 1; }
    int threads = atoi(argv[1]), launches = atoi(argv[2]);
    mcpm_pool pool;
    char err[256];
    if (mcpm_pool_init(&pool, NULL, threads, 1 << 16, err, sizeof err)) { fprintf(stderr, "%s\n", err); return 1; }
    mcpm_backend_enter(NULL, &pool);
    for (int l = 0; l < launches; l++) {
        job j = {pthread_self(), atol(argv[3]), atol(argv[4]), 0, 0};
        if (__TVMBackendParallelLaunch(task, &j, 0)) { fprintf(stderr, "launch failed\n"); return 1; }
        printf("{\"tasks\": %d, \"caller\": %d}\n", atomic_load(&j.tasks), atomic_load(&j.caller_tasks));
    }
    mcpm_backend_leave();
    mcpm_pool_destroy(&pool);
    return 0;
}
