/* mcpm's minimal bionic headers (arm64-v8a, LP64): <string.h>. Every function here is in libc.symbols. */
#ifndef _MCPM_BIONIC_STRING_H
#define _MCPM_BIONIC_STRING_H

#include <sys/cdefs.h>
#include <stddef.h>

__BEGIN_DECLS
void* memcpy(void* dst, const void* src, size_t n);
void* memmove(void* dst, const void* src, size_t n);
void* memset(void* dst, int c, size_t n);
int memcmp(const void* a, const void* b, size_t n);
void* memchr(const void* s, int c, size_t n);

size_t strlen(const char* s);
size_t strnlen(const char* s, size_t max);
int strcmp(const char* a, const char* b);
int strncmp(const char* a, const char* b, size_t n);
char* strchr(const char* s, int c);
char* strrchr(const char* s, int c);
char* strstr(const char* haystack, const char* needle);
char* strpbrk(const char* s, const char* accept);
char* strtok_r(char* s, const char* delim, char** save);
size_t strspn(const char* s, const char* accept);
size_t strcspn(const char* s, const char* reject);
char* strcpy(char* dst, const char* src);
char* strncpy(char* dst, const char* src, size_t n);
char* strcat(char* dst, const char* src);
char* strncat(char* dst, const char* src, size_t n);
char* strdup(const char* s);
char* strndup(const char* s, size_t n);
char* strerror(int err);
__END_DECLS

#endif
