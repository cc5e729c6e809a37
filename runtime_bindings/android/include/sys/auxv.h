/* mcpm's minimal bionic headers (arm64-v8a, LP64): getauxval (bionic, API 18+), the AT_ types (uapi
 * linux/auxvec.h) and, as glibc's <sys/auxv.h> does on arm64, the HWCAP bits of <asm/hwcap.h>. */
#ifndef _MCPM_BIONIC_SYS_AUXV_H
#define _MCPM_BIONIC_SYS_AUXV_H

#include <sys/cdefs.h>
#include <asm/hwcap.h>

#define AT_NULL 0
#define AT_PAGESZ 6
#define AT_HWCAP 16
#define AT_HWCAP2 26

__BEGIN_DECLS
unsigned long getauxval(unsigned long type);
__END_DECLS

#endif
