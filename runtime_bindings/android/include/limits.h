/* mcpm's minimal bionic headers (arm64-v8a, LP64): the POSIX part of <limits.h>.
 * clang's own <limits.h> (resource folder, searched first) defines INT_MAX, LONG_MAX, CHAR_BIT, ... and
 * #include_next's this file first (the -isystem order puts the resource folder before this one). */
#ifndef _MCPM_BIONIC_LIMITS_H
#define _MCPM_BIONIC_LIMITS_H

#ifndef PATH_MAX
#define PATH_MAX 4096 /* linux/limits.h */
#endif
#ifndef NAME_MAX
#define NAME_MAX 255
#endif
#ifndef SSIZE_MAX
#define SSIZE_MAX LONG_MAX
#endif
#ifndef PAGE_SIZE
/* bionic defines PAGE_SIZE 4096 on arm64 only for API < 35; devices may use 16 KiB pages:
 * use sysconf(_SC_PAGESIZE) at run time. Not defined here on purpose. */
#endif

#endif
