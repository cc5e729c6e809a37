/* mcpm's minimal bionic headers (arm64-v8a, LP64): <unistd.h>. Every function here is in libc.symbols. */
#ifndef _MCPM_BIONIC_UNISTD_H
#define _MCPM_BIONIC_UNISTD_H

#include <sys/cdefs.h>
#include <stddef.h>
#include <sys/types.h>

#define STDIN_FILENO 0
#define STDOUT_FILENO 1
#define STDERR_FILENO 2

#define F_OK 0
#define X_OK 1
#define W_OK 2
#define R_OK 4

/* sysconf names: bionic's own numbering (bits/sysconf.h), not glibc's (_SC_NPROCESSORS_ONLN is 84 there). */
#define _SC_CLK_TCK 0x0006
#define _SC_PAGESIZE 0x0027
#define _SC_PAGE_SIZE 0x0028
#define _SC_NPROCESSORS_CONF 0x0060
#define _SC_NPROCESSORS_ONLN 0x0061
#define _SC_PHYS_PAGES 0x0062

__BEGIN_DECLS
long sysconf(int name);
int close(int fd);
ssize_t read(int fd, void* buf, size_t n);
ssize_t write(int fd, const void* buf, size_t n);
ssize_t pread(int fd, void* buf, size_t n, off_t offset);
off_t lseek(int fd, off_t offset, int whence);
int access(const char* path, int mode);
int unlink(const char* path);
int rmdir(const char* path);
pid_t getpid(void);
pid_t gettid(void) __attribute__((__const__));
int usleep(useconds_t usec);
unsigned int sleep(unsigned int seconds);
__END_DECLS

#endif
