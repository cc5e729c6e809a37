/* mcpm's minimal bionic headers (arm64-v8a, LP64): the POSIX types, with bionic's LP64 definitions. */
#ifndef _MCPM_BIONIC_SYS_TYPES_H
#define _MCPM_BIONIC_SYS_TYPES_H

#include <sys/cdefs.h>
#include <stddef.h>
#include <stdint.h>

typedef long ssize_t;             /* __kernel_ssize_t */
typedef int64_t off_t;            /* LP64: 64 bits */
typedef off_t loff_t;
typedef off_t off64_t;
typedef int pid_t;
typedef unsigned int uid_t;       /* __kernel_uid32_t */
typedef unsigned int gid_t;
typedef uint32_t id_t;
typedef unsigned int mode_t;      /* __kernel_mode_t on arm64 */
typedef uint64_t dev_t;           /* bionic: 64-bit dev_t on LP64 only */
typedef unsigned long ino_t;      /* __kernel_ino_t */
typedef uint64_t ino64_t;
typedef uint32_t nlink_t;
typedef unsigned long blkcnt_t;   /* bionic */
typedef unsigned long blksize_t;  /* bionic (struct stat nevertheless has an int st_blksize on arm64) */
typedef long time_t;              /* __kernel_time_t */
typedef long suseconds_t;         /* __kernel_suseconds_t */
typedef uint32_t useconds_t;
typedef long clock_t;             /* __kernel_clock_t */
typedef int clockid_t;            /* __kernel_clockid_t */
typedef void* timer_t;
typedef int32_t socklen_t;        /* bionic: int32_t on LP64 */

#endif
