/* mcpm's minimal bionic headers (arm64-v8a, LP64): getrusage. struct rusage is the kernel's (uapi
 * linux/resource.h): two timevals then 14 longs (__kernel_long_t), 144 bytes on LP64. */
#ifndef _MCPM_BIONIC_SYS_RESOURCE_H
#define _MCPM_BIONIC_SYS_RESOURCE_H

#include <sys/cdefs.h>
#include <sys/time.h>

#define RUSAGE_SELF 0
#define RUSAGE_CHILDREN (-1)
#define RUSAGE_THREAD 1

struct rusage {
    struct timeval ru_utime;
    struct timeval ru_stime;
    long ru_maxrss; /* kilobytes on Linux */
    long ru_ixrss;
    long ru_idrss;
    long ru_isrss;
    long ru_minflt;
    long ru_majflt;
    long ru_nswap;
    long ru_inblock;
    long ru_oublock;
    long ru_msgsnd;
    long ru_msgrcv;
    long ru_nsignals;
    long ru_nvcsw;
    long ru_nivcsw;
};

__BEGIN_DECLS
int getrusage(int who, struct rusage* usage);
__END_DECLS

#endif
