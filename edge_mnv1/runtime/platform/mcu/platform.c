/* The platform hooks of em_platform.h for an MCU, on top of em_board.h: the protocol on the
 * board's UART, ticks from the board's counter. */
#include <stddef.h>
#include <stdint.h>

#include "em_board.h"
#include "em_platform.h"

size_t em_platform_read(uint8_t* buf, size_t len) {
  if (!len) return 0;
  int c;
  while ((c = em_board_uart_getc()) < 0) {
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
