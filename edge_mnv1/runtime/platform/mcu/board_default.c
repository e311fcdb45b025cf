/* The weak board defaults of em_board.h: the CMSDK APB UART (Arm MPS2/MPS3 boards and QEMU's
 * models of them) and the SysTick counter at the CPU clock extended to 64 bits by counting
 * its wraps. A board support file overrides what its board does differently. */
#include <stdint.h>

#include "em_board.h"

#define REG(addr) (*(volatile uint32_t*)(uintptr_t)(addr))

/* ---- CMSDK APB UART: DATA 0x0, STATE 0x4 (bit0 TX full, bit1 RX full), CTRL 0x8 ----
 * (docs/mcu.md, "The emulated boards") */
#define UART_DATA REG(EM_UART_BASE + 0x0u)
#define UART_STATE REG(EM_UART_BASE + 0x4u)
#define UART_CTRL REG(EM_UART_BASE + 0x8u)
#define UART_BAUDDIV REG(EM_UART_BASE + 0x10u)

__attribute__((weak)) void em_board_init(void) {}

__attribute__((weak)) void em_board_uart_init(void) {
  uint32_t div = EM_CPU_HZ / EM_BAUD;
  UART_BAUDDIV = div < 16u ? 16u : div;
  UART_CTRL = 0x3u; /* TX and RX enable: without TX enable the second byte never leaves */
}

__attribute__((weak)) int em_board_uart_getc(void) {
  if (UART_STATE & 0x2u) return (int)(UART_DATA & 0xFFu);
  return -1;
}

__attribute__((weak)) void em_board_uart_putc(uint8_t c) {
  while (UART_STATE & 0x1u) {
  }
  UART_DATA = c;
}

/* ---- SysTick: 24 bits at the CPU clock; the exception counts wraps ----------------- */
#define SYST_CSR REG(0xE000E010u)
#define SYST_RVR REG(0xE000E014u)
#define SYST_CVR REG(0xE000E018u)
#define SCB_ICSR REG(0xE000ED04u)
#define SYST_MAX 0xFFFFFFu

static volatile uint32_t g_wraps;

void SysTick_Handler(void) { g_wraps = g_wraps + 1u; }

__attribute__((weak)) void em_board_ticks_init(void) {
  SYST_RVR = SYST_MAX;
  SYST_CVR = 0u;
  SYST_CSR = 0x7u; /* enable, interrupt on wrap, processor clock */
  /* The counter holds 0 until its first tick reloads it; a reading then would be a whole
   * period ahead of the next one. */
  while (SYST_CVR == 0u) {
  }
}

__attribute__((weak)) uint64_t em_board_ticks(void) {
  uint32_t primask;
  __asm volatile("mrs %0, primask \n cpsid i" : "=r"(primask)::"memory");
  uint32_t wraps = g_wraps;
  uint32_t now = SYST_CVR;
  /* A wrap whose exception is still pending (interrupts are off here) is not counted yet:
   * count it when the value read is from after the wrap (high, counting down). */
  if ((SCB_ICSR & (1u << 26)) && now > SYST_MAX / 2u) wraps += 1u;
  __asm volatile("msr primask, %0" ::"r"(primask) : "memory");
  return ((uint64_t)wraps << 24) + (SYST_MAX - now);
}

void em_board_puts(const char* s) {
  while (*s) em_board_uart_putc((uint8_t)*s++);
}
