/* mcpm's minimal bionic headers (arm64-v8a, LP64): <dlfcn.h> (functions in libdl.symbols).
 * The RTLD_ values are bionic's LP64 ones; 32-bit arm bionic differs (RTLD_NOW 0, RTLD_GLOBAL 2). */
#ifndef _MCPM_BIONIC_DLFCN_H
#define _MCPM_BIONIC_DLFCN_H

#include <sys/cdefs.h>

typedef struct {
    const char* dli_fname; /* pathname of the shared object that contains the address */
    void* dli_fbase;       /* its load address */
    const char* dli_sname; /* nearest symbol, or NULL */
    void* dli_saddr;       /* its exact address */
} Dl_info;

#define RTLD_LOCAL 0
#define RTLD_LAZY 0x00001    /* bionic LP64 value */
#define RTLD_NOW 0x00002     /* bionic LP64 value */
#define RTLD_NOLOAD 0x00004  /* bionic LP64 value */
#define RTLD_GLOBAL 0x00100  /* bionic LP64 value */
#define RTLD_NODELETE 0x01000 /* bionic LP64 value */
#define RTLD_DEFAULT ((void*)0)
#define RTLD_NEXT ((void*)-1L)

__BEGIN_DECLS
void* dlopen(const char* filename, int flags);
int dlclose(void* handle);
char* dlerror(void);
void* dlsym(void* handle, const char* symbol);
int dladdr(const void* addr, Dl_info* info);
__END_DECLS

#endif
