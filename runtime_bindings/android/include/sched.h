/* mcpm's minimal bionic headers (arm64-v8a, LP64): sched_yield. */
#ifndef _MCPM_BIONIC_SCHED_H
#define _MCPM_BIONIC_SCHED_H

#include <sys/cdefs.h>

__BEGIN_DECLS
int sched_yield(void);
__END_DECLS

#endif
