/* Cortex-M7 L1 caches on (ARMv7-M ARM B3.5, the M7 TRM): invalidate the instruction cache,
 * invalidate the data cache by set/way, then enable both. Shared by the M7 boards. */
#ifndef CORTEX_M7_CACHES_H_
#define CORTEX_M7_CACHES_H_

#include <stdint.h>

#define CM7_REG(addr) (*(volatile uint32_t*)(uintptr_t)(addr))
#define SCB_CCR CM7_REG(0xE000ED14u)
#define SCB_CCSIDR CM7_REG(0xE000ED80u)
#define SCB_CSSELR CM7_REG(0xE000ED84u)
#define SCB_ICIALLU CM7_REG(0xE000EF50u)
#define SCB_DCISW CM7_REG(0xE000EF60u)

static inline void barrier(void) { __asm volatile("dsb \n isb" ::: "memory"); }

static inline void cortex_m7_caches_on(void) {
  barrier();
  SCB_ICIALLU = 0u;
  barrier();
  SCB_CCR |= 1u << 17; /* IC */
  barrier();
  SCB_CSSELR = 0u; /* level 1 data cache */
  barrier();
  uint32_t ccsidr = SCB_CCSIDR;
  uint32_t sets = (ccsidr >> 13) & 0x7FFFu;
  do {
    uint32_t ways = (ccsidr >> 3) & 0x3FFu;
    do {
      SCB_DCISW = ((sets << 5) & 0x3FE0u) | ((ways << 30) & 0xC0000000u);
    } while (ways-- != 0u);
  } while (sets-- != 0u);
  barrier();
  SCB_CCR |= 1u << 16; /* DC (no DMA here, so no coherence to keep) */
  barrier();
}

#endif /* CORTEX_M7_CACHES_H_ */
