/* Cortex-M start-up shared by every board: the vector table, the reset handler (FPU on
 * first, then .data/.bss, then the board and main) and fault handlers that say what
 * happened on the UART. Symbols come from the generated linker script (edge_mnv1/artifact/firmware.py). */
#include <stdint.h>
#include <string.h>

#include "em_board.h"

extern uint32_t __stack_top[];
extern uint8_t __data_start[], __data_end[], __data_load[], __bss_start[], __bss_end[];
extern int main(void);

void Reset_Handler(void);
void em_reset_c(void);
void SysTick_Handler(void);
void em_fault(const char* what, const uint32_t* frame);

#define SCB_VTOR (*(volatile uint32_t*)0xE000ED08u)
#define SCB_CFSR (*(volatile uint32_t*)0xE000ED28u)
#define SCB_HFSR (*(volatile uint32_t*)0xE000ED2Cu)
#define SCB_BFAR (*(volatile uint32_t*)0xE000ED38u)

/* The FPU (and Helium on the M55: the same CP10/CP11 enable) must be on before the first
 * floating-point instruction, which gcc may hoist anywhere in a C function: so this part is
 * assembly, and C starts only after the dsb/isb. */
__attribute__((naked, noreturn, used)) void Reset_Handler(void) {
  __asm volatile(
      "ldr r0, =0xE000ED88      \n" /* CPACR */
      "ldr r1, [r0]             \n"
      "orr r1, r1, #(0xF << 20) \n" /* CP10, CP11: full access */
      "str r1, [r0]             \n"
      "dsb                      \n"
      "isb                      \n"
      "ldr r0, =__stack_top     \n" /* a debugger may enter here with another SP */
      "msr msp, r0              \n"
      "b em_reset_c             \n");
}

/* Fault handlers pass the stacked frame (r0-r3, r12, lr, pc, xpsr) to em_fault. */
#define EM_FAULT_HANDLER(name, text)                                      \
  __attribute__((naked, used)) void name(void) {                          \
    __asm volatile("tst lr, #4 \n ite eq \n mrseq r1, msp \n mrsne r1, psp \n" \
                   "ldr r0, =1f \n b em_fault \n .pushsection .rodata \n" \
                   "1: .asciz \"" text "\" \n .popsection");             \
  }
EM_FAULT_HANDLER(HardFault_Handler, "HardFault")
EM_FAULT_HANDLER(MemManage_Handler, "MemManage")
EM_FAULT_HANDLER(BusFault_Handler, "BusFault")
EM_FAULT_HANDLER(UsageFault_Handler, "UsageFault")
EM_FAULT_HANDLER(NMI_Handler, "NMI")
EM_FAULT_HANDLER(Default_Handler, "unexpected interrupt")

static void put_hex(char* p, uint32_t v) {
  for (int i = 7; i >= 0; --i, v >>= 4) p[i] = "0123456789abcdef"[v & 15u];
}

__attribute__((noreturn, used)) void em_fault(const char* what, const uint32_t* frame) {
  char line[96] = "\r\nedge_mnv1 FAULT ";
  size_t n = strlen(line), k = strlen(what);
  memcpy(line + n, what, k);
  n += k;
  static const char* const names[] = {" pc=", " lr=", " cfsr=", " hfsr=", " bfar="};
  uint32_t vals[5] = {frame[6], frame[5], SCB_CFSR, SCB_HFSR, SCB_BFAR};
  for (int i = 0; i < 5; ++i) {
    k = strlen(names[i]);
    memcpy(line + n, names[i], k);
    n += k;
    put_hex(line + n, vals[i]);
    n += 8;
  }
  memcpy(line + n, "\r\n", 3);
  em_board_uart_init();
  em_board_puts(line);
  for (;;) {
  }
}

__attribute__((section(".vectors"), used)) void (*const em_vectors[16 + 64])(void) = {
    (void (*)(void))(uintptr_t)__stack_top,
    Reset_Handler,
    NMI_Handler,
    HardFault_Handler,
    MemManage_Handler,
    BusFault_Handler,
    UsageFault_Handler,
    Default_Handler, /* SecureFault (v8-M) */
    0, 0, 0,
    Default_Handler, /* SVCall */
    Default_Handler, /* DebugMonitor */
    0,
    Default_Handler, /* PendSV */
    SysTick_Handler,
    [16 ... 16 + 63] = Default_Handler,
};

__attribute__((noreturn, noinline, used)) void em_reset_c(void) {
  memcpy(__data_start, __data_load, (size_t)(__data_end - __data_start));
  memset(__bss_start, 0, (size_t)(__bss_end - __bss_start));
  /* The arena (.em_arena) is not zeroed: the kernels write every byte before reading it. */
  SCB_VTOR = (uint32_t)(uintptr_t)em_vectors;
  __asm volatile("dsb \n isb");
  em_board_init();
  em_board_uart_init();
  em_board_ticks_init();
  main();
  for (;;) {
  }
}

/* LLVM-built kernels carry unwind tables that name the EHABI personality routine; nothing
 * unwinds on this firmware, so a stub keeps libgcc's unwinder (and abort) out. */
__attribute__((weak)) void __aeabi_unwind_cpp_pr0(void) {}
