/* mcpm's minimal bionic headers (arm64-v8a, LP64): <stdlib.h>. Every function here is in libc.symbols. */
#ifndef _MCPM_BIONIC_STDLIB_H
#define _MCPM_BIONIC_STDLIB_H

#include <sys/cdefs.h>
#include <stddef.h>

#define EXIT_SUCCESS 0
#define EXIT_FAILURE 1
#define RAND_MAX 0x7fffffff /* bionic */

__BEGIN_DECLS
void* malloc(size_t size);
void* calloc(size_t n, size_t size);
void* realloc(void* p, size_t size);
void free(void* p);
int posix_memalign(void** out, size_t alignment, size_t size);

/* no aligned_alloc: bionic has it only from API 28 (the runtime uses posix_memalign) */

void abort(void) __mcpm_noreturn;
void exit(int status) __mcpm_noreturn;
char* getenv(const char* name);

int atoi(const char* s);
long strtol(const char* s, char** end, int base);
long long strtoll(const char* s, char** end, int base);
unsigned long strtoul(const char* s, char** end, int base);
unsigned long long strtoull(const char* s, char** end, int base);
double strtod(const char* s, char** end);
float strtof(const char* s, char** end);

void qsort(void* base, size_t n, size_t size, int (*cmp)(const void*, const void*));
void* bsearch(const void* key, const void* base, size_t n, size_t size, int (*cmp)(const void*, const void*));

int abs(int x) __attribute__((__const__));
long labs(long x) __attribute__((__const__));
long long llabs(long long x) __attribute__((__const__));
__END_DECLS

#endif
