/* mcpm's minimal bionic headers (arm64-v8a, LP64): <time.h>. Every function here is in libc.symbols. */
#ifndef _MCPM_BIONIC_TIME_H
#define _MCPM_BIONIC_TIME_H

#include <sys/cdefs.h>
#include <sys/types.h>

#ifndef _MCPM_STRUCT_TIMESPEC
#define _MCPM_STRUCT_TIMESPEC
struct timespec {
    time_t tv_sec; /* long */
    long tv_nsec;
};
#endif

/* Linux clock ids (uapi linux/time.h). */
#define CLOCK_REALTIME 0
#define CLOCK_MONOTONIC 1
#define CLOCK_PROCESS_CPUTIME_ID 2
#define CLOCK_THREAD_CPUTIME_ID 3
#define CLOCK_MONOTONIC_RAW 4
#define CLOCK_REALTIME_COARSE 5
#define CLOCK_MONOTONIC_COARSE 6
#define CLOCK_BOOTTIME 7

#define CLOCKS_PER_SEC 1000000

__BEGIN_DECLS
int clock_gettime(clockid_t clock, struct timespec* ts);
int nanosleep(const struct timespec* request, struct timespec* remain);
time_t time(time_t* t);
clock_t clock(void);
__END_DECLS

#endif
