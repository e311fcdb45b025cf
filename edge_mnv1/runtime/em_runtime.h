/* Running the model: the call sequence, the TVM backend hooks, self-test, bench, profile. */
#ifndef EM_RUNTIME_H_
#define EM_RUNTIME_H_

#include <stdint.h>

#include "em_model.h"

#ifdef __cplusplus
extern "C" {
#endif

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
em_selftest_result_t em_selftest(void);

/* Which thread slice of the workspace the calling thread uses (Linux pool sets it). */
void em_workspace_set_thread(uint32_t index);

#ifdef __cplusplus
}
#endif
#endif /* EM_RUNTIME_H_ */
