/* mcpm's minimal bionic headers (arm64-v8a, LP64): <pthread.h>. The opaque types have bionic's LP64 sizes
 * (bits/pthread_types.h): pthread_mutex_t 40 bytes, pthread_cond_t 48, pthread_attr_t 56, pthread_t long.
 * Every function here is in libc.symbols (bionic has no separate libpthread). */
#ifndef _MCPM_BIONIC_PTHREAD_H
#define _MCPM_BIONIC_PTHREAD_H

#include <sys/cdefs.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

typedef long pthread_t;

typedef struct {
    uint32_t flags;
    void* stack_base;
    size_t stack_size;
    size_t guard_size;
    int32_t sched_policy;
    int32_t sched_priority;
    char __reserved[16]; /* LP64 only */
} pthread_attr_t;

typedef struct {
    int32_t __private[10]; /* LP64 */
} pthread_mutex_t;
typedef long pthread_mutexattr_t;

typedef struct {
    int32_t __private[12]; /* LP64 */
} pthread_cond_t;
typedef long pthread_condattr_t;

typedef struct {
    int32_t __private[14]; /* LP64 */
} pthread_rwlock_t;
typedef long pthread_rwlockattr_t;

typedef int pthread_key_t;
typedef int pthread_once_t;

/* bionic: a zeroed mutex is a PTHREAD_MUTEX_NORMAL one; zeroed cond/rwlock are initialized. */
#define PTHREAD_MUTEX_INITIALIZER { { 0 } }
#define PTHREAD_COND_INITIALIZER { { 0 } }
#define PTHREAD_RWLOCK_INITIALIZER { { 0 } }
#define PTHREAD_ONCE_INIT 0

#define PTHREAD_MUTEX_NORMAL 0     /* bionic's values */
#define PTHREAD_MUTEX_RECURSIVE 1
#define PTHREAD_MUTEX_ERRORCHECK 2
#define PTHREAD_MUTEX_DEFAULT PTHREAD_MUTEX_NORMAL

#define PTHREAD_CREATE_JOINABLE 0 /* bionic's values */
#define PTHREAD_CREATE_DETACHED 1

_Static_assert(sizeof(pthread_mutex_t) == 40, "bionic LP64 pthread_mutex_t");
_Static_assert(sizeof(pthread_cond_t) == 48, "bionic LP64 pthread_cond_t");
_Static_assert(sizeof(pthread_attr_t) == 56, "bionic LP64 pthread_attr_t");

__BEGIN_DECLS
int pthread_create(pthread_t* thread, const pthread_attr_t* attr, void* (*start)(void*), void* arg);
int pthread_join(pthread_t thread, void** result);
int pthread_detach(pthread_t thread);
pthread_t pthread_self(void) __attribute__((__const__));
int pthread_equal(pthread_t a, pthread_t b);

int pthread_attr_init(pthread_attr_t* attr);
int pthread_attr_destroy(pthread_attr_t* attr);
int pthread_attr_setstacksize(pthread_attr_t* attr, size_t size);
int pthread_attr_setdetachstate(pthread_attr_t* attr, int state);

int pthread_mutex_init(pthread_mutex_t* mutex, const pthread_mutexattr_t* attr);
int pthread_mutex_destroy(pthread_mutex_t* mutex);
int pthread_mutex_lock(pthread_mutex_t* mutex);
int pthread_mutex_trylock(pthread_mutex_t* mutex);
int pthread_mutex_unlock(pthread_mutex_t* mutex);

int pthread_cond_init(pthread_cond_t* cond, const pthread_condattr_t* attr);
int pthread_cond_destroy(pthread_cond_t* cond);
int pthread_cond_wait(pthread_cond_t* cond, pthread_mutex_t* mutex);
int pthread_cond_timedwait(pthread_cond_t* cond, pthread_mutex_t* mutex, const struct timespec* abstime);
int pthread_cond_signal(pthread_cond_t* cond);
int pthread_cond_broadcast(pthread_cond_t* cond);

int pthread_key_create(pthread_key_t* key, void (*destructor)(void*));
int pthread_key_delete(pthread_key_t key);
void* pthread_getspecific(pthread_key_t key);
int pthread_setspecific(pthread_key_t key, const void* value);

int pthread_once(pthread_once_t* once, void (*init)(void));
__END_DECLS

#endif
