/* The self-test: the golden inputs the compiler ran through the reference, run here, the
 * outputs compared element by element in the output tensor's own dtype (int8 models may emit
 * uint8: read as int8, 127 against 128 would count as an error of 255). */
#include <string.h>

#include "em_runtime.h"

/* Element i of a tensor of this dtype as a double; 0 when the dtype is not one we compare. */
static int element(const uint8_t* p, DLDataType t, uint32_t i, double* v) {
  if (t.lanes != 1) return 0;
  if (t.code == kDLFloat && t.bits == 32) { float f; memcpy(&f, p + 4 * i, 4); *v = f; return 1; }
  if (t.code == kDLFloat && t.bits == 64) { memcpy(v, p + 8 * i, 8); return 1; }
  if (t.code == kDLInt && t.bits == 8) { *v = (int8_t)p[i]; return 1; }
  if (t.code == kDLUInt && t.bits == 8) { *v = p[i]; return 1; }
  if (t.code == kDLInt && t.bits == 32) { int32_t x; memcpy(&x, p + 4 * i, 4); *v = x; return 1; }
  return 0;
}

em_selftest_result_t em_selftest(void) {
  em_selftest_result_t r = {1, 0.0, em_model.golden_cases, 0};
  DLDataType dt = em_model.output->dtype;
  uint32_t n = em_model.output_bytes / (dt.bits / 8u ? dt.bits / 8u : 1u);
  double probe;
  if (!element(em_model.golden_outputs, dt, 0, &probe)) {
    em_set_error("self-test: the output dtype is not one it compares");
    r.passed = 0;
    r.max_abs_error = -1.0;
    return r;
  }
  for (uint32_t k = 0; k < em_model.golden_cases; ++k) {
    memcpy(em_model.input->data, em_model.golden_inputs + (size_t)k * em_model.input_bytes,
           em_model.input_bytes);
    if (em_run() != 0) {
      r.passed = 0;
      r.max_abs_error = -1.0;
      return r;
    }
    const uint8_t* want = em_model.golden_outputs + (size_t)k * em_model.output_bytes;
    const uint8_t* got = (const uint8_t*)em_model.output->data;
    for (uint32_t i = 0; i < n; ++i) {
      double g, w;
      element(got, dt, i, &g);
      element(want, dt, i, &w);
      double d = g - w;
      if (d < 0) d = -d;
      /* NaN or infinity: counted apart, so the maximum stays a number (and valid JSON)
         and no later finite error can hide it. */
      if (!(d <= 1e300)) r.nonfinite += 1;
      else if (d > r.max_abs_error) r.max_abs_error = d;
    }
  }
  if (r.nonfinite || !(r.max_abs_error <= em_model.golden_tolerance)) r.passed = 0;
  return r;
}
