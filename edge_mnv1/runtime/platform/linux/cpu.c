/* A program built for CPU features this CPU lacks would die of SIGILL somewhere inside a
 * kernel; the program refuses up front with the reason instead. */
#include <stdio.h>
#include <string.h>

#include "em_linux.h"
#include "em_model.h"

int em_cpu_features_ok(void) {
#if defined(__x86_64__)
  const char* req = em_model.required_cpu_features;
  __builtin_cpu_init();
  char buf[256];
  if (!req || !*req) return 1;
  snprintf(buf, sizeof buf, "%s", req);
  for (char* tok = strtok(buf, ","); tok; tok = strtok(NULL, ",")) {
    int ok = 1;
    if (!strcmp(tok, "avx2")) ok = __builtin_cpu_supports("avx2");
    else if (!strcmp(tok, "fma")) ok = __builtin_cpu_supports("fma");
    else if (!strcmp(tok, "avx512f")) ok = __builtin_cpu_supports("avx512f");
    else if (!strcmp(tok, "avx512bw")) ok = __builtin_cpu_supports("avx512bw");
    else if (!strcmp(tok, "avx512vl")) ok = __builtin_cpu_supports("avx512vl");
    else if (!strcmp(tok, "avx512dq")) ok = __builtin_cpu_supports("avx512dq");
    else if (!strcmp(tok, "avx512vnni")) ok = __builtin_cpu_supports("avx512vnni");
    if (!ok) {
      fprintf(stderr,
              "edge_mnv1: this program was compiled for a CPU with %s and this CPU lacks it; "
              "recompile for this machine (edge-mnv1 compile ... --target host)\n", tok);
      return 0;
    }
  }
#endif
  return 1;
}
