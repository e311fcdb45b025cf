/* Board support for ST NUCLEO-H743ZI(2) (STM32H743ZI, Cortex-M7), named by
 * targets/nucleo-h743zi.toml. Overrides the weak defaults of
 * edge_mnv1/runtime/platform/mcu/board_default.c:
 * - em_board_init: LDO supply, voltage scale 0, PLL1 from HSI (64 MHz / 4 * 60 / 2 = 480 MHz;
 *   HSI needs no crystal or ST-LINK clock), flash wait states, bus prescalers (AHB 240 MHz,
 *   APB 120 MHz), I- and D-cache on;
 * - the protocol UART: USART3 on PD8 (TX) / PD9 (RX), the ST-LINK virtual COM port.
 * SysTick (the default tick counter) runs at the CPU clock: ticks are cycles.
 * Register addresses and sequences from RM0433 (STM32H742/743/750/753 reference manual).
 * Built by the tests, not run here: there is no STM32H7 in QEMU 7.2. */
#include <stdint.h>

#include "cortex_m7_caches.h"
#include "em_board.h"
#include "stm32_usart.h"

#define REG(addr) (*(volatile uint32_t*)(uintptr_t)(addr))

#define RCC 0x58024400u
#define RCC_CR REG(RCC + 0x000u)
#define RCC_CFGR REG(RCC + 0x010u)
#define RCC_D1CFGR REG(RCC + 0x018u)
#define RCC_D2CFGR REG(RCC + 0x01Cu)
#define RCC_D3CFGR REG(RCC + 0x020u)
#define RCC_PLLCKSELR REG(RCC + 0x028u)
#define RCC_PLLCFGR REG(RCC + 0x02Cu)
#define RCC_PLL1DIVR REG(RCC + 0x030u)
#define RCC_AHB4ENR REG(RCC + 0x0E0u)
#define RCC_APB1LENR REG(RCC + 0x0E8u)
#define RCC_APB4ENR REG(RCC + 0x0F4u)

#define PWR 0x58024800u
#define PWR_CSR1 REG(PWR + 0x004u)
#define PWR_CR3 REG(PWR + 0x00Cu)
#define PWR_D3CR REG(PWR + 0x018u)
#define SYSCFG_PWRCR REG(0x58000400u + 0x02Cu)
#define FLASH_ACR REG(0x52002000u)

#define GPIOD 0x58020C00u
#define GPIOD_MODER REG(GPIOD + 0x00u)
#define GPIOD_OSPEEDR REG(GPIOD + 0x08u)
#define GPIOD_AFRH REG(GPIOD + 0x24u)


#define APB1_HZ (EM_CPU_HZ / 4u) /* sysclk / HPRE 2 / D2PPRE1 2 */

static void clocks_480mhz(void) {
  /* Supply from the LDO (the Nucleo's configuration); written once after reset. */
  PWR_CR3 = (PWR_CR3 & ~0x7u) | 0x2u; /* LDOEN; BYPASS and SCUEN off */
  while (!(PWR_CSR1 & (1u << 13))) {  /* ACTVOSRDY */
  }
  PWR_D3CR = (PWR_D3CR & ~(3u << 14)) | (3u << 14); /* VOS1 */
  while (!(PWR_D3CR & (1u << 13))) {
  }
  RCC_APB4ENR |= 1u << 1; /* SYSCFG clock */
  (void)RCC_APB4ENR;
  SYSCFG_PWRCR |= 1u; /* ODEN: VOS0, needed above 400 MHz (silicon revision V) */
  while (!(PWR_D3CR & (1u << 13))) {
  }
  /* PLL1: HSI 64 MHz / M 4 = 16 MHz (range 8-16), x N 60 = 960 MHz VCO, / P 2 = 480 MHz. */
  RCC_PLLCKSELR = (RCC_PLLCKSELR & ~((0x3Fu << 4) | 0x3u)) | (4u << 4) | 0u;
  RCC_PLLCFGR = (RCC_PLLCFGR & ~0xFu) | (3u << 2) | (7u << 16); /* RGE 8-16 MHz, wide VCO, P/Q/R on */
  RCC_PLL1DIVR = (60u - 1u) | ((2u - 1u) << 9) | ((4u - 1u) << 16) | ((2u - 1u) << 24);
  RCC_CR |= 1u << 24; /* PLL1ON */
  while (!(RCC_CR & (1u << 25))) {
  }
  /* Flash: 4 wait states, programming delay 2 for a 240 MHz AXI clock at VOS0. */
  FLASH_ACR = (FLASH_ACR & ~0x3Fu) | 0x24u;
  while ((FLASH_ACR & 0x3Fu) != 0x24u) {
  }
  RCC_D1CFGR = (0x8u << 0) | (0x4u << 4);  /* AHB /2 = 240 MHz, APB3 /2 */
  RCC_D2CFGR = (0x4u << 4) | (0x4u << 8);  /* APB1, APB2 /2 = 120 MHz */
  RCC_D3CFGR = (0x4u << 4);                /* APB4 /2 */
  RCC_CFGR = (RCC_CFGR & ~0x7u) | 0x3u;    /* system clock = PLL1 P */
  while (((RCC_CFGR >> 3) & 0x7u) != 0x3u) {
  }
}

void em_board_init(void) {
  clocks_480mhz();
  cortex_m7_caches_on();
}

void em_board_uart_init(void) {
  RCC_AHB4ENR |= 1u << 3;   /* GPIOD */
  RCC_APB1LENR |= 1u << 18; /* USART3 */
  (void)RCC_APB1LENR;
  GPIOD_MODER = (GPIOD_MODER & ~(0xFu << 16)) | (0xAu << 16);     /* PD8, PD9: alternate */
  GPIOD_OSPEEDR = (GPIOD_OSPEEDR & ~(0xFu << 16)) | (0x5u << 16); /* medium speed */
  GPIOD_AFRH = (GPIOD_AFRH & ~0xFFu) | 0x77u;                     /* AF7: USART3 */
  stm32_usart_enable(APB1_HZ);
}
