/* mcpm's minimal bionic headers (arm64-v8a, LP64): mmap (uapi asm-generic/mman-common.h values). */
#ifndef _MCPM_BIONIC_SYS_MMAN_H
#define _MCPM_BIONIC_SYS_MMAN_H

#include <sys/cdefs.h>
#include <sys/types.h>

#define PROT_NONE 0x0
#define PROT_READ 0x1
#define PROT_WRITE 0x2
#define PROT_EXEC 0x4

#define MAP_SHARED 0x01
#define MAP_PRIVATE 0x02
#define MAP_FIXED 0x10
#define MAP_ANONYMOUS 0x20
#define MAP_ANON MAP_ANONYMOUS
#define MAP_POPULATE 0x008000
#define MAP_FAILED ((void*)-1)

#define MADV_NORMAL 0
#define MADV_RANDOM 1
#define MADV_SEQUENTIAL 2
#define MADV_WILLNEED 3
#define MADV_DONTNEED 4

__BEGIN_DECLS
void* mmap(void* addr, size_t size, int prot, int flags, int fd, off_t offset);
int munmap(void* addr, size_t size);
int mprotect(void* addr, size_t size, int prot);
int madvise(void* addr, size_t size, int advice);
__END_DECLS

#endif
