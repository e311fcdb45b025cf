/* The backend ABI the compiled kernels call into (TVM's c_backend_api.h, restated so the
 * runtime needs no TVM header): the parallel-loop types, the hooks, and the runtime's limits.
 * core/em_backend.c implements every hook; a platform may replace the parallel pair
 * (platform/linux/pool.c does). */
#ifndef EM_BACKEND_H_
#define EM_BACKEND_H_

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Threads a program may run kernels on: the Linux pool's cap and the number of workspace
 * bump pointers the runtime keeps. */
#define EM_MAX_THREADS 64

/* TVMParallelGroupEnv and FTVMParallelLambda, member for member. */
typedef struct {
  void* sync_handle;
  int32_t num_task;
} em_parallel_env_t;
typedef int (*em_parallel_lambda)(int task_id, em_parallel_env_t* penv, void* cdata);

void* TVMBackendAllocWorkspace(int device_type, int device_id, uint64_t nbytes, int dtype_code,
                               int dtype_bits);
int TVMBackendFreeWorkspace(int device_type, int device_id, void* ptr);
int TVMBackendParallelLaunch(em_parallel_lambda flambda, void* cdata, int num_task);
int TVMBackendParallelBarrier(int task_id, em_parallel_env_t* penv);
void TVMFFIErrorSetRaisedFromCStrParts(const char* kind, const char** parts, int32_t num_parts);

/* Points LLVM-built kernels' backend slots at the hooks above; em_runtime_init calls it. */
void em_backend_init(void);
/* Which thread slice of the workspace the calling thread uses (the Linux pool sets it). */
void em_workspace_set_thread(uint32_t index);
/* Empties every thread's workspace: each kernel call starts with all of it. */
void em_workspace_reset(void);

#ifdef __cplusplus
}
#endif
#endif /* EM_BACKEND_H_ */
