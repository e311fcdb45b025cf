/* The firmware: one self-test line at boot, then docs/protocol.md on the UART forever. */
#include <stdint.h>
#include <stdio.h>

#include "em_board.h"
#include "em_model.h"
#include "em_platform.h"
#include "em_protocol.h"
#include "em_runtime.h"

int main(void) {
  em_runtime_init();
  (void)em_platform_boot_count(); /* counted at boot, not at the first hello */
  uint64_t t0 = em_platform_ticks();
  em_selftest_result_t r = em_selftest();
  uint64_t t1 = em_platform_ticks();
  char line[224];
  unsigned long per_case = r.cases ? (unsigned long)((t1 - t0) / r.cases) : 0ul;
  int n = snprintf(line, sizeof line,
                   "\r\nedge_mnv1 selftest %s max_abs_error=%.9g cases=%lu nonfinite=%lu "
                   "target=%s %s_per_inference=%lu%s%s\r\n",
                   r.passed ? "PASS" : "FAIL", r.max_abs_error, (unsigned long)r.cases,
                   (unsigned long)r.nonfinite,
                   EM_TARGET_NAME, em_platform_tick_unit(), per_case,
                   r.passed ? "" : " error=", r.passed ? "" : em_last_error());
  if (n > (int)sizeof line - 1) n = (int)sizeof line - 1;
  em_platform_write((const uint8_t*)line, (size_t)n);
  em_serve();
  for (;;) {
  }
}
