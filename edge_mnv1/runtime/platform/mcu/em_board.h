/* What a board gives the MCU firmware. Every hook has a weak default in board_default.c (the
 * CMSDK APB UART at EM_UART_BASE and the Cortex-M SysTick) that a board support file
 * (targets/boards/<board>.c, named by the target file's build.board_support) overrides. */
#ifndef EM_BOARD_H_
#define EM_BOARD_H_

#include <stdint.h>

#include "em_board_config.h" /* generated per target into ARTIFACT/mcu/ */

#ifdef __cplusplus
extern "C" {
#endif

/* Clocks, caches, pins: runs first after the C run-time is set up. Default: nothing. */
void em_board_init(void);
/* The protocol UART, polled: init, a byte or -1 when none is waiting, blocking put. */
void em_board_uart_init(void);
int em_board_uart_getc(void);
void em_board_uart_putc(uint8_t c);
/* A free-running tick counter (SysTick at the CPU clock, extended to 64 bits). */
void em_board_ticks_init(void);
uint64_t em_board_ticks(void);
/* Prints a line on the UART without the protocol (boot line, faults). */
void em_board_puts(const char* s);

#ifdef __cplusplus
}
#endif
#endif /* EM_BOARD_H_ */
