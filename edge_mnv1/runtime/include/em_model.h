/* The contract between a generated model.c (written by edge_mnv1.compiler.emit) and the
 * runtime. The runtime knows nothing of Python or of any particular model: everything
 * model-specific, including every buffer, is a static object defined in model.c. */
#ifndef EM_MODEL_H_
#define EM_MODEL_H_

#include <stddef.h>
#include <stdint.h>

#include "dlpack/dlpack.h"
#include "tvm/ffi/c_api.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A TVM kernel as the compiler emits it: a tvm-ffi packed function. */
typedef int32_t (*em_packed_fn)(void* self, const TVMFFIAny* args, int32_t num_args,
                                TVMFFIAny* result);

typedef struct {
  const char* name;
  em_packed_fn fn;
  const TVMFFIAny* args; /* DLTensor pointers, prepared at compile time */
  int32_t num_args;
  uint64_t macs; /* multiply-adds of this call, for the profile */
} em_call_t;

typedef struct {
  const char* hello_json;     /* the static part of the hello reply */
  DLTensor* input;            /* lives in the arena */
  DLTensor* output;           /* lives in the arena */
  uint32_t input_bytes;
  uint32_t output_bytes;
  const em_call_t* calls;
  uint32_t num_calls;
  uint8_t* workspace;         /* per-thread slices of workspace_bytes each */
  uint32_t workspace_bytes;   /* one thread's slice */
  uint32_t workspace_threads; /* slices available */
  uint8_t* frame_buffer;      /* receives one request payload */
  uint32_t max_payload;
  /* golden data for the self-test: cases x (input, expected output), in the tensors' dtypes */
  const uint8_t* golden_inputs;
  const uint8_t* golden_outputs;
  uint32_t golden_cases;
  double golden_tolerance;
  const char* required_cpu_features; /* comma separated, checked by the Linux program */
} em_model_t;

extern const em_model_t em_model;

#ifdef __cplusplus
}
#endif
#endif /* EM_MODEL_H_ */
