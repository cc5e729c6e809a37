/* mcpm's minimal bionic headers (arm64-v8a, LP64): assert() calls bionic's __assert2 (in libc.symbols).
 * Not include-guarded: NDEBUG may change between inclusions, as the C standard requires. */
#include <sys/cdefs.h>

#undef assert
#ifdef NDEBUG
#define assert(e) ((void)0)
#else
#define assert(e) ((e) ? (void)0 : __assert2(__FILE__, __LINE__, __func__, #e))
#endif

#ifndef _MCPM_BIONIC_ASSERT_DECL
#define _MCPM_BIONIC_ASSERT_DECL
__BEGIN_DECLS
void __assert2(const char* file, int line, const char* function, const char* expr) __mcpm_noreturn;
__END_DECLS
#endif

#if !defined(__cplusplus) && !defined(static_assert)
#define static_assert _Static_assert
#endif
