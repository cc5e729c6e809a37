/* mcpm's minimal bionic headers (arm64-v8a, LP64): <stdio.h>. Every function here is in libc.symbols. */
#ifndef _MCPM_BIONIC_STDIO_H
#define _MCPM_BIONIC_STDIO_H

#include <sys/cdefs.h>
#include <stdarg.h>
#include <stddef.h>
#include <sys/types.h>

typedef struct __sFILE FILE; /* opaque, as in bionic */

__BEGIN_DECLS
/* bionic exports stdin/stdout/stderr as FILE* variables from API 23 (before: &__sF[n]). */
extern FILE* stdin;
extern FILE* stdout;
extern FILE* stderr;
__END_DECLS
#define stdin stdin
#define stdout stdout
#define stderr stderr

#define EOF (-1)
#define BUFSIZ 1024 /* bionic's value */
#define FILENAME_MAX 4096 /* bionic's value */
#define SEEK_SET 0
#define SEEK_CUR 1
#define SEEK_END 2

__BEGIN_DECLS
FILE* fopen(const char* path, const char* mode);
int fclose(FILE* f);
int rename(const char* from, const char* to);
int remove(const char* path);
size_t fread(void* buf, size_t size, size_t n, FILE* f);
size_t fwrite(const void* buf, size_t size, size_t n, FILE* f);
int fseek(FILE* f, long offset, int whence);
long ftell(FILE* f);
int ferror(FILE* f);
int feof(FILE* f);
int fflush(FILE* f);
int fputs(const char* s, FILE* f);
int fputc(int c, FILE* f);
int fgetc(FILE* f);
char* fgets(char* buf, int n, FILE* f);
int puts(const char* s);

int printf(const char* fmt, ...) __mcpm_printflike(1, 2);
int fprintf(FILE* f, const char* fmt, ...) __mcpm_printflike(2, 3);
int snprintf(char* buf, size_t n, const char* fmt, ...) __mcpm_printflike(3, 4);
int vfprintf(FILE* f, const char* fmt, va_list ap) __mcpm_printflike(2, 0);
int vsnprintf(char* buf, size_t n, const char* fmt, va_list ap) __mcpm_printflike(3, 0);
int sscanf(const char* s, const char* fmt, ...) __attribute__((__format__(__scanf__, 2, 3)));
__END_DECLS

#endif
