/* Runs a compiled model: the call sequence from model.c, once set up by em_runtime_init. */
#include "em_runtime.h"

#include <string.h>

#include "em_backend.h"
#include "em_platform.h"

static int g_ready;

void em_runtime_init(void) {
  em_backend_init();
  g_ready = 1;
}

/* Clears the last error; refuses when em_runtime_init has not run. */
static int start(void) {
  em_set_error("");
  if (!g_ready) {
    em_set_error("em_runtime_init was not called");
    return -1;
  }
  return 0;
}

static int run_call(const em_call_t* c) {
  em_workspace_reset();
  TVMFFIAny result;
  memset(&result, 0, sizeof(result));
  if (c->fn(NULL, c->args, c->num_args, &result) != 0) {
    if (!em_last_error()[0]) em_set_error(c->name);
    return -1;
  }
  return 0;
}

int em_run(void) {
  if (start() != 0) return -1;
  for (uint32_t i = 0; i < em_model.num_calls; ++i)
    if (run_call(&em_model.calls[i]) != 0) return -1;
  return 0;
}

int em_run_call(uint32_t index) {
  if (start() != 0) return -1;
  if (index >= em_model.num_calls) {
    em_set_error("no such kernel call");
    return -1;
  }
  return run_call(&em_model.calls[index]);
}

int em_run_profiled(uint64_t* per_call) {
  if (start() != 0) return -1;
  for (uint32_t i = 0; i < em_model.num_calls; ++i) {
    uint64_t t0 = em_platform_ticks();
    if (run_call(&em_model.calls[i]) != 0) return -1;
    per_call[i] += em_platform_ticks() - t0;
  }
  return 0;
}
