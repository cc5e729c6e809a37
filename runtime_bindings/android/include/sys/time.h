/* mcpm's minimal bionic headers (arm64-v8a, LP64): struct timeval, gettimeofday. */
#ifndef _MCPM_BIONIC_SYS_TIME_H
#define _MCPM_BIONIC_SYS_TIME_H

#include <sys/cdefs.h>
#include <sys/types.h>
#include <time.h>

#ifndef _MCPM_STRUCT_TIMEVAL
#define _MCPM_STRUCT_TIMEVAL
struct timeval {
    time_t tv_sec;       /* long */
    suseconds_t tv_usec; /* long */
};
#endif

struct timezone;

__BEGIN_DECLS
int gettimeofday(struct timeval* tv, struct timezone* tz);
__END_DECLS

#endif
