/* Board support for ST NUCLEO-F722ZE (STM32F722ZE, Cortex-M7, 512 KB flash, 256 KB SRAM),
 * named by targets/nucleo-f722ze.toml. Overrides the weak defaults of
 * edge_mnv1/runtime/platform/mcu/board_default.c:
 * - em_board_init: PLL from HSI (16 MHz / M 8 * N 216 / P 2 = 216 MHz, Q 9 = 48 MHz),
 *   voltage scale 1 with over-drive (needed above 180 MHz), 7 flash wait states with ART
 *   accelerator and prefetch, AHB 216 / APB1 54 / APB2 108 MHz, I- and D-cache on;
 * - the protocol UART: USART3 on PD8 (TX) / PD9 (RX), the ST-LINK virtual COM port.
 * SysTick (the default tick counter) runs at the CPU clock: ticks are cycles.
 * Register addresses and sequences from RM0431 (STM32F72xxx/F73xxx reference manual).
 * Built by the tests, not run here: there is no STM32F7 in QEMU 7.2. */
#include <stdint.h>

#include "cortex_m7_caches.h"
#include "em_board.h"
#include "stm32_usart.h"

#define REG(addr) (*(volatile uint32_t*)(uintptr_t)(addr))

#define RCC 0x40023800u
#define RCC_CR REG(RCC + 0x00u)
#define RCC_PLLCFGR REG(RCC + 0x04u)
#define RCC_CFGR REG(RCC + 0x08u)
#define RCC_AHB1ENR REG(RCC + 0x30u)
#define RCC_APB1ENR REG(RCC + 0x40u)

#define PWR_CR1 REG(0x40007000u)
#define PWR_CSR1 REG(0x40007004u)
#define FLASH_ACR REG(0x40023C00u)

#define GPIOD 0x40020C00u
#define GPIOD_MODER REG(GPIOD + 0x00u)
#define GPIOD_OSPEEDR REG(GPIOD + 0x08u)
#define GPIOD_AFRH REG(GPIOD + 0x24u)


#define APB1_HZ (EM_CPU_HZ / 4u)

static void clocks_216mhz(void) {
  RCC_APB1ENR |= 1u << 28; /* PWR clock */
  (void)RCC_APB1ENR;
  PWR_CR1 = (PWR_CR1 & ~(3u << 14)) | (3u << 14); /* VOS scale 1 */
  /* PLL: HSI (PLLSRC 0) / M 8 = 2 MHz, x N 216 = 432 MHz VCO, / P 2 = 216 MHz, / Q 9. */
  RCC_PLLCFGR = 8u | (216u << 6) | (0u << 16) | (0u << 22) | (9u << 24);
  RCC_CR |= 1u << 24; /* PLLON */
  while (!(RCC_CR & (1u << 25))) {
  }
  PWR_CR1 |= 1u << 16; /* ODEN */
  while (!(PWR_CSR1 & (1u << 16))) {
  }
  PWR_CR1 |= 1u << 17; /* ODSWEN */
  while (!(PWR_CSR1 & (1u << 17))) {
  }
  FLASH_ACR = 7u | (1u << 8) | (1u << 9); /* 7 wait states, prefetch, ART */
  while ((FLASH_ACR & 0xFu) != 7u) {
  }
  RCC_CFGR = (RCC_CFGR & ~((0x7u << 10) | (0x7u << 13) | 0xF0u)) | (0x5u << 10) | (0x4u << 13);
  RCC_CFGR = (RCC_CFGR & ~0x3u) | 0x2u; /* system clock = PLL */
  while (((RCC_CFGR >> 2) & 0x3u) != 0x2u) {
  }
}

void em_board_init(void) {
  clocks_216mhz();
  cortex_m7_caches_on();
}

void em_board_uart_init(void) {
  RCC_AHB1ENR |= 1u << 3;  /* GPIOD */
  RCC_APB1ENR |= 1u << 18; /* USART3 */
  (void)RCC_APB1ENR;
  GPIOD_MODER = (GPIOD_MODER & ~(0xFu << 16)) | (0xAu << 16);     /* PD8, PD9: alternate */
  GPIOD_OSPEEDR = (GPIOD_OSPEEDR & ~(0xFu << 16)) | (0x5u << 16); /* medium speed */
  GPIOD_AFRH = (GPIOD_AFRH & ~0xFFu) | 0x77u;                     /* AF7: USART3 */
  stm32_usart_enable(APB1_HZ);
}
