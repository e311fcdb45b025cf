/* Runs a compiled model: the call sequence from model.c, the backend hooks TVM kernels
 * call (workspace, errors, parallel loops), and the self-test against golden data.
 * Nothing here allocates: every buffer is a static object of model.c. */
#include "em_runtime.h"

#include <string.h>

#include "em_platform.h"

/* ---- errors ---------------------------------------------------------------------- */

static char g_error[160];

const char* em_last_error(void) { return g_error; }

void em_set_error(const char* msg) {
  size_t n = strlen(msg);
  if (n >= sizeof(g_error)) n = sizeof(g_error) - 1;
  memcpy(g_error, msg, n);
  g_error[n] = '\0';
}

/* Kernels report a failed check (shape, dtype, alignment) through this tvm-ffi call. */
void TVMFFIErrorSetRaisedFromCStrParts(const char* kind, const char** parts, int32_t num_parts) {
  size_t at = 0;
  const char* first = kind ? kind : "Error";
  for (int32_t i = -1; i < num_parts; ++i) {
    const char* s = i < 0 ? first : parts[i];
    if (!s) continue;
    while (*s && at + 1 < sizeof(g_error)) g_error[at++] = *s++;
    if (i < 0 && at + 2 < sizeof(g_error)) { g_error[at++] = ':'; g_error[at++] = ' '; }
  }
  g_error[at] = '\0';
}

/* ---- workspace: a bump allocator per thread over model.c's static region ------------- */

static uint32_t g_ws_top[64];
#if defined(__STDC_NO_THREADS__) || defined(EM_SINGLE_THREAD)
static uint32_t g_ws_thread;
#else
static _Thread_local uint32_t g_ws_thread;
#endif

void em_workspace_set_thread(uint32_t index) { g_ws_thread = index; }

void* TVMBackendAllocWorkspace(int device_type, int device_id, uint64_t nbytes, int dtype_code,
                               int dtype_bits) {
  (void)device_type; (void)device_id; (void)dtype_code; (void)dtype_bits;
  uint32_t t = g_ws_thread;
  uint64_t start = (g_ws_top[t] + 63u) & ~(uint64_t)63u;
  if (t >= em_model.workspace_threads || start + nbytes > em_model.workspace_bytes) {
    em_set_error("workspace exhausted: the compiler's workspace bound is too small");
    return NULL;
  }
  g_ws_top[t] = (uint32_t)(start + nbytes);
  return em_model.workspace + (size_t)t * em_model.workspace_bytes + start;
}

int TVMBackendFreeWorkspace(int device_type, int device_id, void* ptr) {
  (void)device_type; (void)device_id;
  uint32_t t = g_ws_thread;
  uint8_t* base = em_model.workspace + (size_t)t * em_model.workspace_bytes;
  /* TVM frees in reverse order of allocation: popping to ptr is exact. */
  if ((uint8_t*)ptr >= base && (uint8_t*)ptr < base + em_model.workspace_bytes)
    g_ws_top[t] = (uint32_t)((uint8_t*)ptr - base);
  return 0;
}

/* ---- parallel loops: serial unless the platform provides a pool ------------------------ */

typedef struct {
  void* sync_handle;
  int32_t num_task;
} em_parallel_env_t;
typedef int (*em_parallel_lambda)(int task_id, em_parallel_env_t* penv, void* cdata);

__attribute__((weak)) int TVMBackendParallelLaunch(em_parallel_lambda flambda, void* cdata,
                                                   int num_task) {
  (void)num_task;
  em_parallel_env_t env = {NULL, 1};
  return flambda(0, &env, cdata);
}

__attribute__((weak)) int TVMBackendParallelBarrier(int task_id, em_parallel_env_t* penv) {
  (void)task_id; (void)penv;
  return 0;
}

/* LLVM-built kernels call the backend through these pointer slots, which a loader fills.
 * They are weak in the kernel object; em_runtime_init() fills them. */
__attribute__((weak)) void* (*__TVMBackendAllocWorkspace)(int, int, uint64_t, int, int);
__attribute__((weak)) int (*__TVMBackendFreeWorkspace)(int, int, void*);
__attribute__((weak)) int (*__TVMBackendParallelLaunch)(em_parallel_lambda, void*, int);
__attribute__((weak)) int (*__TVMBackendParallelBarrier)(int, em_parallel_env_t*);
__attribute__((weak)) void (*__TVMFFIErrorSetRaisedFromCStrParts)(const char*, const char**,
                                                                   int32_t);

static void em_runtime_init(void) {
  __TVMBackendAllocWorkspace = TVMBackendAllocWorkspace;
  __TVMBackendFreeWorkspace = TVMBackendFreeWorkspace;
  __TVMBackendParallelLaunch = TVMBackendParallelLaunch;
  __TVMBackendParallelBarrier = TVMBackendParallelBarrier;
  __TVMFFIErrorSetRaisedFromCStrParts = TVMFFIErrorSetRaisedFromCStrParts;
}

/* ---- the call sequence ------------------------------------------------------------- */

static int run_call(const em_call_t* c) {
  for (uint32_t t = 0; t < em_model.workspace_threads && t < 64; ++t) g_ws_top[t] = 0;
  TVMFFIAny result;
  memset(&result, 0, sizeof(result));
  if (c->fn(NULL, c->args, c->num_args, &result) != 0) {
    if (!g_error[0]) em_set_error(c->name);
    return -1;
  }
  return 0;
}

int em_run(void) {
  em_runtime_init();
  g_error[0] = '\0';
  for (uint32_t i = 0; i < em_model.num_calls; ++i)
    if (run_call(&em_model.calls[i]) != 0) return -1;
  return 0;
}

int em_run_call(uint32_t index) {
  em_runtime_init();
  g_error[0] = '\0';
  if (index >= em_model.num_calls) {
    em_set_error("no such kernel call");
    return -1;
  }
  return run_call(&em_model.calls[index]);
}

int em_run_profiled(uint64_t* per_call) {
  em_runtime_init();
  g_error[0] = '\0';
  for (uint32_t i = 0; i < em_model.num_calls; ++i) {
    uint64_t t0 = em_platform_ticks();
    if (run_call(&em_model.calls[i]) != 0) return -1;
    per_call[i] += em_platform_ticks() - t0;
  }
  return 0;
}

/* ---- self-test against the golden data the compiler computed with the reference ----- */

em_selftest_result_t em_selftest(void) {
  em_selftest_result_t r = {1, 0.0, em_model.golden_cases, 0};
  for (uint32_t k = 0; k < em_model.golden_cases; ++k) {
    memcpy(em_model.input->data, em_model.golden_inputs + (size_t)k * em_model.input_bytes,
           em_model.input_bytes);
    if (em_run() != 0) {
      r.passed = 0;
      r.max_abs_error = -1.0;
      return r;
    }
    const uint8_t* want = em_model.golden_outputs + (size_t)k * em_model.output_bytes;
    if (em_model.output_is_float) {
      const float* got = (const float*)em_model.output->data;
      for (uint32_t i = 0; i < em_model.output_bytes / 4; ++i) {
        float w;
        memcpy(&w, want + 4 * i, 4);
        double d = (double)got[i] - (double)w;
        if (d < 0) d = -d;
        /* NaN or infinity: counted apart, so the maximum stays a number (and valid JSON)
           and no later finite error can hide it. */
        if (!(d <= 1e300)) r.nonfinite += 1;
        else if (d > r.max_abs_error) r.max_abs_error = d;
      }
    } else {
      const int8_t* got = (const int8_t*)em_model.output->data;
      for (uint32_t i = 0; i < em_model.output_bytes; ++i) {
        int d = (int)got[i] - (int)(int8_t)want[i];
        if (d < 0) d = -d;
        if ((double)d > r.max_abs_error) r.max_abs_error = d;
      }
    }
  }
  if (r.nonfinite || !(r.max_abs_error <= em_model.golden_tolerance)) r.passed = 0;
  return r;
}
