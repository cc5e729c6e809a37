/* mcpm's minimal bionic headers (arm64-v8a, LP64): struct stat with bionic's arm64 layout (the kernel's
 * asm-generic stat, 128 bytes), stat/fstat. */
#ifndef _MCPM_BIONIC_SYS_STAT_H
#define _MCPM_BIONIC_SYS_STAT_H

#include <sys/cdefs.h>
#include <sys/types.h>
#include <time.h>

struct stat {
    dev_t st_dev;
    ino_t st_ino;
    mode_t st_mode;
    nlink_t st_nlink;
    uid_t st_uid;
    gid_t st_gid;
    dev_t st_rdev;
    unsigned long __pad1;
    off_t st_size;
    int st_blksize;
    int __pad2;
    long st_blocks;
    struct timespec st_atim;
    struct timespec st_mtim;
    struct timespec st_ctim;
    unsigned int __unused4;
    unsigned int __unused5;
};
#define st_atime st_atim.tv_sec
#define st_mtime st_mtim.tv_sec
#define st_ctime st_ctim.tv_sec

_Static_assert(sizeof(struct stat) == 128, "bionic arm64 struct stat");
_Static_assert(__builtin_offsetof(struct stat, st_size) == 48, "bionic arm64 struct stat");

#define S_IFMT 00170000
#define S_IFSOCK 0140000
#define S_IFLNK 0120000
#define S_IFREG 0100000
#define S_IFBLK 0060000
#define S_IFDIR 0040000
#define S_IFCHR 0020000
#define S_IFIFO 0010000
#define S_ISLNK(m) (((m) & S_IFMT) == S_IFLNK)
#define S_ISREG(m) (((m) & S_IFMT) == S_IFREG)
#define S_ISDIR(m) (((m) & S_IFMT) == S_IFDIR)
#define S_ISCHR(m) (((m) & S_IFMT) == S_IFCHR)
#define S_ISBLK(m) (((m) & S_IFMT) == S_IFBLK)
#define S_ISFIFO(m) (((m) & S_IFMT) == S_IFIFO)
#define S_ISSOCK(m) (((m) & S_IFMT) == S_IFSOCK)

__BEGIN_DECLS
int stat(const char* path, struct stat* st);
int fstat(int fd, struct stat* st);
int lstat(const char* path, struct stat* st);
int mkdir(const char* path, mode_t mode);
__END_DECLS

#endif
