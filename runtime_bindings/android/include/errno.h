/* mcpm's minimal bionic headers (arm64-v8a, LP64): errno. */
#ifndef _MCPM_BIONIC_ERRNO_H
#define _MCPM_BIONIC_ERRNO_H

#include <sys/cdefs.h>

__BEGIN_DECLS
/* bionic's errno is a per-thread int reached through __errno() (glibc's is __errno_location). */
int* __errno(void) __attribute__((__const__));
__END_DECLS
#define errno (*__errno())

/* Linux asm-generic/errno-base.h + errno.h values (arm64 uses the generic numbers). */
#define EPERM 1
#define ENOENT 2
#define ESRCH 3
#define EINTR 4
#define EIO 5
#define ENXIO 6
#define E2BIG 7
#define ENOEXEC 8
#define EBADF 9
#define ECHILD 10
#define EAGAIN 11
#define EWOULDBLOCK EAGAIN
#define ENOMEM 12
#define EACCES 13
#define EFAULT 14
#define EBUSY 16
#define EEXIST 17
#define ENODEV 19
#define ENOTDIR 20
#define EISDIR 21
#define EINVAL 22
#define ENFILE 23
#define EMFILE 24
#define EFBIG 27
#define ENOSPC 28
#define ESPIPE 29
#define EROFS 30
#define EPIPE 32
#define EDOM 33
#define ERANGE 34
#define EDEADLK 35
#define ENAMETOOLONG 36
#define ENOSYS 38
#define ENOTSUP 95 /* == EOPNOTSUPP on Linux */
#define EOPNOTSUPP 95
#define EOVERFLOW 75
#define ETIMEDOUT 110

#endif
