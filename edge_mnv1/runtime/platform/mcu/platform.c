/* The platform hooks of em_platform.h for an MCU, on top of em_board.h: the protocol on the
 * board's UART, ticks from the board's counter. */
#include <stddef.h>
#include <stdint.h>

#include "em_board.h"
#include "em_platform.h"

_Static_assert(EM_CPU_HZ >= 1000u, "the board's clock_hz times the idle gap of the protocol");

size_t em_platform_read(uint8_t* buf, size_t len, uint32_t idle_ms) {
  if (!len) return 0;
  int c;
  /* Polled UART: the idle time-out is counted in board ticks (the CPU clock). */
  uint64_t limit = (uint64_t)EM_CPU_HZ / 1000u * idle_ms;
  uint64_t t0 = idle_ms ? em_board_ticks() : 0;
  while ((c = em_board_uart_getc()) < 0) {
    if (idle_ms && em_board_ticks() - t0 >= limit) return EM_READ_IDLE;
  }
  size_t n = 0;
  buf[n++] = (uint8_t)c;
  while (n < len && (c = em_board_uart_getc()) >= 0) buf[n++] = (uint8_t)c;
  return n; /* never 0: a UART has no end of stream */
}

void em_platform_write(const uint8_t* buf, size_t len) {
  for (size_t i = 0; i < len; ++i) em_board_uart_putc(buf[i]);
}

void em_platform_flush(void) {}

uint64_t em_platform_ticks(void) {
  /* Under QEMU -icount a SysTick tick is a fixed number of instructions (the target's
   * EM_TICK_NUM / EM_TICK_DEN); on a board it is a cycle. */
  return em_board_ticks() * EM_TICK_NUM / EM_TICK_DEN;
}

const char* em_platform_tick_unit(void) { return EM_TICK_UNIT; }

/* Boots counted in RAM that a reset leaves alone: the arena's section, which the start-up
 * code does not zero (startup.c). A magic word tells a warm reset from power-on, when RAM
 * holds whatever it holds (QEMU: zeros), and the count starts again at 1. */
#define BOOT_MAGIC 0xB007C0DEu
static volatile uint32_t g_boot[2] __attribute__((section(".bss.em_arena")));
static uint32_t g_boot_count;

uint32_t em_platform_boot_count(void) {
  if (!g_boot_count) {
    if (g_boot[0] != BOOT_MAGIC || g_boot[1] == 0u || g_boot[1] == 0xFFFFFFFFu) {
      g_boot[0] = BOOT_MAGIC;
      g_boot[1] = 0u;
    }
    g_boot[1] = g_boot[1] + 1u;
    g_boot_count = g_boot[1];
  }
  return g_boot_count;
}
