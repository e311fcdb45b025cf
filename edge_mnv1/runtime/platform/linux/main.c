/* The Linux device program: `--serve` speaks docs/protocol.md on stdin/stdout,
 * `--selftest` runs the golden data, `--info` prints the hello JSON, `--count` runs the model
 * (or one kernel call) N times for an instruction counter (edge_mnv1/emulators/). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "em_linux.h"
#include "em_model.h"
#include "em_protocol.h"
#include "em_runtime.h"

static int threads_from_env(void) {
  const char* s = getenv("EM_NUM_THREADS");
  if (s && atoi(s) > 0) return atoi(s);
  return EM_THREADS > 0 ? EM_THREADS : (int)sysconf(_SC_NPROCESSORS_ONLN);
}

/* `--count N [CALL]`: N inferences (or N runs of kernel call CALL) on one thread, nothing
 * printed, for an emulator's instruction counter: the difference between the counts of two
 * runs with N of the same width (e.g. 0001 and 0000) is exactly N's work, start-up cancels.
 * One thread, since a pool's spinning workers would be counted too. */
static int count_mode(int argc, char** argv) {
  char* end;
  unsigned long runs = argc > 2 ? strtoul(argv[2], &end, 10) : 0;
  if (argc < 3 || *end || argc > 4) {
    fprintf(stderr, "usage: %s --count N [CALL]\n", argv[0]);
    return 2;
  }
  long call = -1;
  if (argc == 4) {
    call = strtol(argv[3], &end, 10);
    if (*end || call < 0 || call >= (long)em_model.num_calls) {
      fprintf(stderr, "--count: CALL must be 0 to %lu\n", (unsigned long)em_model.num_calls - 1);
      return 2;
    }
  }
  em_pool_start(1);
  if (em_model.golden_cases) /* a real input; the kernels' instruction counts do not depend on it */
    memcpy(em_model.input->data, em_model.golden_inputs, em_model.input_bytes);
  for (unsigned long i = 0; i < runs; ++i) {
    if ((call < 0 ? em_run() : em_run_call((uint32_t)call)) != 0) {
      fprintf(stderr, "edge_mnv1: kernel failed: %s\n", em_last_error());
      return 1;
    }
  }
  return 0;
}

int main(int argc, char** argv) {
  const char* mode = argc > 1 ? argv[1] : "--help";
  if (!em_cpu_features_ok()) return 4;
  em_runtime_init();
  if (!strcmp(mode, "--info")) {
    printf("%s\n", em_model.hello_json);
    return 0;
  }
  if (!strcmp(mode, "--count")) return count_mode(argc, argv);
  em_pool_start(threads_from_env());
  if (!strcmp(mode, "--selftest")) {
    em_selftest_result_t r = em_selftest();
    printf("edge_mnv1 selftest %s max_abs_error=%.9g cases=%lu nonfinite=%lu%s%s\n",
           r.passed ? "PASS" : "FAIL", r.max_abs_error, (unsigned long)r.cases,
           (unsigned long)r.nonfinite, r.passed ? "" : " error=",
           r.passed ? "" : em_last_error());
    return r.passed ? 0 : 1;
  }
  if (!strcmp(mode, "--serve")) {
    em_serve();
    return 0;
  }
  fprintf(stderr, "usage: %s --serve | --selftest | --info | --count N [CALL]\n"
                  "  --serve     speak the edge_mnv1 protocol (docs/protocol.md) on stdin/stdout\n"
                  "  --selftest  run the golden inputs, print PASS/FAIL and the largest error\n"
                  "  --info      print the model description (the hello JSON)\n"
                  "  --count     run N inferences (or N runs of kernel call CALL) on one thread\n"
                  "              and exit, for an emulator's instruction counter\n"
                  "  EM_NUM_THREADS overrides the number of worker threads\n", argv[0]);
  return 2;
}
