/* mcpm's minimal bionic headers (arm64-v8a, LP64): common macros. Not bionic's file; same ABI. */
#ifndef _MCPM_BIONIC_SYS_CDEFS_H
#define _MCPM_BIONIC_SYS_CDEFS_H

#if !defined(__aarch64__) || !defined(__LP64__) || !defined(__ANDROID__)
#error "runtime_bindings/android/include is for --target=aarch64-linux-android<api> only"
#endif

#ifdef __cplusplus
#define __BEGIN_DECLS extern "C" {
#define __END_DECLS }
#else
#define __BEGIN_DECLS
#define __END_DECLS
#endif

#define __mcpm_printflike(fmt, args) __attribute__((__format__(__printf__, fmt, args)))
#define __mcpm_noreturn __attribute__((__noreturn__))

#endif
