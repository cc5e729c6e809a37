/* mcpm's minimal bionic headers (arm64-v8a): the arm64 kernel's AT_HWCAP / AT_HWCAP2 bits (uapi asm/hwcap.h). */
#ifndef _MCPM_BIONIC_ASM_HWCAP_H
#define _MCPM_BIONIC_ASM_HWCAP_H

/* AT_HWCAP */
#define HWCAP_FP (1 << 0)
#define HWCAP_ASIMD (1 << 1)
#define HWCAP_AES (1 << 3)
#define HWCAP_CRC32 (1 << 7)
#define HWCAP_ATOMICS (1 << 8)
#define HWCAP_FPHP (1 << 9)
#define HWCAP_ASIMDHP (1 << 10) /* fp16 arithmetic in Advanced SIMD */
#define HWCAP_ASIMDRDM (1 << 12)
#define HWCAP_ASIMDDP (1 << 20) /* SDOT/UDOT (dotprod) */
#define HWCAP_SVE (1 << 22)

/* AT_HWCAP2 */
#define HWCAP2_SVE2 (1 << 1)
#define HWCAP2_I8MM (1 << 13) /* SMMLA/UMMLA (i8mm) */
#define HWCAP2_BF16 (1 << 14)

#endif
