/* mcpm's minimal bionic headers (arm64-v8a, LP64): open. Flag values are arm64's (uapi asm/fcntl.h:
 * O_DIRECTORY/O_NOFOLLOW differ from asm-generic on arm/arm64). */
#ifndef _MCPM_BIONIC_FCNTL_H
#define _MCPM_BIONIC_FCNTL_H

#include <sys/cdefs.h>
#include <sys/types.h>

#define O_RDONLY 00
#define O_WRONLY 01
#define O_RDWR 02
#define O_ACCMODE 03
#define O_CREAT 0100
#define O_EXCL 0200
#define O_NOCTTY 0400
#define O_TRUNC 01000
#define O_APPEND 02000
#define O_NONBLOCK 04000
#define O_DIRECTORY 040000  /* arm64 value */
#define O_NOFOLLOW 0100000  /* arm64 value */
#define O_LARGEFILE 0400000 /* arm64 value (no effect on LP64) */
#define O_CLOEXEC 02000000

#define F_GETFD 1
#define F_SETFD 2
#define F_GETFL 3
#define F_SETFL 4
#define FD_CLOEXEC 1

__BEGIN_DECLS
int open(const char* path, int flags, ...);
int fcntl(int fd, int cmd, ...);
__END_DECLS

#endif
