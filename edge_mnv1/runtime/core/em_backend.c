/* The hooks TVM kernels call: errors, a workspace bump allocator per thread over model.c's
 * static region, and serial parallel loops for platforms without a thread pool.
 * Nothing here allocates. */
#include "em_backend.h"

#include <stddef.h>
#include <string.h>

#include "em_model.h"
#include "em_runtime.h"

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

/* ---- workspace ------------------------------------------------------------------------ */

/* One bump pointer per thread slice; each thread only moves its own. */
static uint32_t g_ws_top[EM_MAX_THREADS];
#if defined(__STDC_NO_THREADS__) || defined(EM_SINGLE_THREAD)
static uint32_t g_ws_thread;
#else
static _Thread_local uint32_t g_ws_thread;
#endif

void em_workspace_set_thread(uint32_t index) { g_ws_thread = index; }

void em_workspace_reset(void) {
  for (uint32_t t = 0; t < em_model.workspace_threads && t < EM_MAX_THREADS; ++t) g_ws_top[t] = 0;
}

void* TVMBackendAllocWorkspace(int device_type, int device_id, uint64_t nbytes, int dtype_code,
                               int dtype_bits) {
  (void)device_type; (void)device_id; (void)dtype_code; (void)dtype_bits;
  uint32_t t = g_ws_thread;
  if (t >= em_model.workspace_threads || t >= EM_MAX_THREADS) {
    em_set_error("workspace: more threads than the compiler planned slices for");
    return NULL;
  }
  uint64_t start = (g_ws_top[t] + 63u) & ~(uint64_t)63u;
  if (start + nbytes > em_model.workspace_bytes) {
    em_set_error("workspace exhausted: the compiler's workspace bound is too small");
    return NULL;
  }
  g_ws_top[t] = (uint32_t)(start + nbytes);
  return em_model.workspace + (size_t)t * em_model.workspace_bytes + start;
}

int TVMBackendFreeWorkspace(int device_type, int device_id, void* ptr) {
  (void)device_type; (void)device_id;
  uint32_t t = g_ws_thread;
  if (t >= EM_MAX_THREADS) return 0;
  uint8_t* base = em_model.workspace + (size_t)t * em_model.workspace_bytes;
  /* TVM frees in reverse order of allocation: popping to ptr is exact. */
  if ((uint8_t*)ptr >= base && (uint8_t*)ptr < base + em_model.workspace_bytes)
    g_ws_top[t] = (uint32_t)((uint8_t*)ptr - base);
  return 0;
}

/* ---- parallel loops: serial unless the platform links a pool ---------------------------- */

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

/* ---- the slots of LLVM-built kernels ------------------------------------------------- */

/* LLVM-built kernels call the backend through these pointer slots, which a loader fills.
 * They are weak in the kernel object (C kernels call the functions directly). */
__attribute__((weak)) void* (*__TVMBackendAllocWorkspace)(int, int, uint64_t, int, int);
__attribute__((weak)) int (*__TVMBackendFreeWorkspace)(int, int, void*);
__attribute__((weak)) int (*__TVMBackendParallelLaunch)(em_parallel_lambda, void*, int);
__attribute__((weak)) int (*__TVMBackendParallelBarrier)(int, em_parallel_env_t*);
__attribute__((weak)) void (*__TVMFFIErrorSetRaisedFromCStrParts)(const char*, const char**,
                                                                   int32_t);

void em_backend_init(void) {
  __TVMBackendAllocWorkspace = TVMBackendAllocWorkspace;
  __TVMBackendFreeWorkspace = TVMBackendFreeWorkspace;
  __TVMBackendParallelLaunch = TVMBackendParallelLaunch;
  __TVMBackendParallelBarrier = TVMBackendParallelBarrier;
  __TVMFFIErrorSetRaisedFromCStrParts = TVMFFIErrorSetRaisedFromCStrParts;
}
