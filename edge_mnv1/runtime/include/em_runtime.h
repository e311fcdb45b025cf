/* Running the model: one-time set-up, the call sequence, errors and the self-test. */
#ifndef EM_RUNTIME_H_
#define EM_RUNTIME_H_

#include <stdint.h>

#include "em_model.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Connects the kernels to the backend hooks. Every platform calls it once at start, before
 * any em_run*; em_run* refuse to run without it (LLVM kernels would jump through null slots). */
void em_runtime_init(void);
/* Runs every call once; 0 on success, else -1 with em_last_error() set. */
int em_run(void);
/* Runs call `index` of the sequence alone (for per-call instruction counts); 0 or -1. */
int em_run_call(uint32_t index);
/* As em_run, adding each call's ticks to per_call (num_calls entries). */
int em_run_profiled(uint64_t* per_call);
const char* em_last_error(void);
void em_set_error(const char* msg);

typedef struct {
  int passed;
  double max_abs_error;
  uint32_t cases;
  uint32_t nonfinite;   /* outputs that were NaN or infinite where the golden data is finite */
} em_selftest_result_t;
/* Runs the golden inputs and compares the outputs element by element in the output's dtype. */
em_selftest_result_t em_selftest(void);

#ifdef __cplusplus
}
#endif
#endif /* EM_RUNTIME_H_ */
