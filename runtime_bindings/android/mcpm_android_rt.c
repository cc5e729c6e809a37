/* Compiler support routines that the NDK would link from compiler-rt (libclang_rt.builtins-aarch64-android.a),
 * for builds with Debian's clang and no NDK. Linked into libmcpm.so with hidden visibility.
 *
 * __emutls_get_address: clang emits emulated TLS for Android targets below API 29 (bionic's loader rejects ELF TLS
 * sections there), so every `_Thread_local` variable becomes a `__emutls_control` object and each access a call
 * __emutls_get_address(&control). Same ABI as compiler-rt's lib/builtins/emutls.c; this implementation gives every
 * variable its own pthread key (the runtime has a handful of them; bionic allows over 100 keys per process).
 * Each thread's copy is allocated on its first access, initialized from the template (or zeroed), and freed by the
 * key's destructor when the thread exits.
 */
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct mcpm_emutls_control {
    size_t size;   /* bytes of the variable */
    size_t align;  /* its alignment */
    union {
        uintptr_t index; /* 0 = no key yet, else pthread key + 1 */
        void* address;
    } object;
    void* value;   /* initial value (size bytes), or NULL for zero */
} mcpm_emutls_control;

__attribute__((visibility("hidden"))) void* __emutls_get_address(mcpm_emutls_control* control);

static pthread_mutex_t emutls_mutex = PTHREAD_MUTEX_INITIALIZER;

static void emutls_free(void* object) { free(object); }

__attribute__((visibility("hidden"))) void* __emutls_get_address(mcpm_emutls_control* control) {
    uintptr_t index = __atomic_load_n(&control->object.index, __ATOMIC_ACQUIRE);
    if (index == 0) {
        pthread_mutex_lock(&emutls_mutex);
        index = control->object.index;
        if (index == 0) {
            pthread_key_t key;
            if (pthread_key_create(&key, emutls_free) != 0) abort(); /* out of keys: nothing sane to return */
            index = (uintptr_t)key + 1;
            __atomic_store_n(&control->object.index, index, __ATOMIC_RELEASE);
        }
        pthread_mutex_unlock(&emutls_mutex);
    }
    pthread_key_t key = (pthread_key_t)(index - 1);
    void* object = pthread_getspecific(key);
    if (object) return object;
    size_t align = control->align < sizeof(void*) ? sizeof(void*) : control->align;
    size_t size = control->size ? control->size : 1;
    if (posix_memalign(&object, align, size) != 0) abort(); /* a TLS access cannot report failure */
    if (control->value) memcpy(object, control->value, control->size);
    else memset(object, 0, size);
    if (pthread_setspecific(key, object) != 0) abort();
    return object;
}
