/* mcpm's minimal bionic headers (arm64-v8a, LP64): sched_yield, sched_getaffinity and the cpu_set_t macros
 * the runtime uses (bionic's LP64 layout: 1024 CPUs as unsigned long words). */
#ifndef _MCPM_BIONIC_SCHED_H
#define _MCPM_BIONIC_SCHED_H

#include <sys/cdefs.h>
#include <sys/types.h>

__BEGIN_DECLS
#define CPU_SETSIZE 1024
#define __CPU_BITTYPE unsigned long int
#define __CPU_BITS (8 * sizeof(__CPU_BITTYPE))
typedef struct {
    __CPU_BITTYPE __bits[CPU_SETSIZE / __CPU_BITS];
} cpu_set_t;
#define CPU_ZERO(set) __builtin_memset((set), 0, sizeof(cpu_set_t))
#define CPU_ISSET(cpu, set)                                                                                         \
    ((size_t)(cpu) < CPU_SETSIZE &&                                                                                \
     ((set)->__bits[(size_t)(cpu) / __CPU_BITS] & ((__CPU_BITTYPE)1 << ((size_t)(cpu) % __CPU_BITS))) != 0)

int sched_yield(void);
int sched_getaffinity(pid_t pid, size_t set_size, cpu_set_t* set);
__END_DECLS

#endif
