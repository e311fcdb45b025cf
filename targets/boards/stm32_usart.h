/* The USART of STM32F7 and STM32H7 parts (same register layout: RM0431, RM0433): the
 * protocol UART's polled byte I/O at EM_UART_BASE, shared by those boards' support files. */
#ifndef STM32_USART_H_
#define STM32_USART_H_

#include <stdint.h>

#include "em_board.h"

#define USART_REG(off) (*(volatile uint32_t*)(uintptr_t)(EM_UART_BASE + (off)))
#define USART_CR1 USART_REG(0x00u)
#define USART_BRR USART_REG(0x0Cu)
#define USART_ISR USART_REG(0x1Cu)
#define USART_ICR USART_REG(0x20u)
#define USART_RDR USART_REG(0x24u)
#define USART_TDR USART_REG(0x28u)

/* 8N1 at EM_BAUD from a peripheral clock of apb_hz: transmitter, receiver, enable. */
static inline void stm32_usart_enable(uint32_t apb_hz) {
  USART_CR1 = 0u;
  USART_BRR = (apb_hz + EM_BAUD / 2u) / EM_BAUD;
  USART_CR1 = (1u << 3) | (1u << 2) | 1u; /* TE, RE, UE */
}

int em_board_uart_getc(void) {
  uint32_t isr = USART_ISR;
  if (isr & 0xFu) USART_ICR = 0xFu; /* overrun, noise, framing, parity: clear, keep going */
  if (isr & (1u << 5)) return (int)(USART_RDR & 0xFFu);
  return -1;
}

void em_board_uart_putc(uint8_t c) {
  while (!(USART_ISR & (1u << 7))) { /* TXE */
  }
  USART_TDR = c;
}

#endif /* STM32_USART_H_ */
