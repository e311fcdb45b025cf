/* The platform hooks of em_platform.h for the Linux program: the protocol on stdin/stdout
 * (a pipe, an ssh channel, a pty or a socket: poll gives each the idle time-out), ticks from
 * the monotonic clock in nanoseconds. */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "em_platform.h"

size_t em_platform_read(uint8_t* buf, size_t len, uint32_t idle_ms) {
  if (idle_ms) {
    struct pollfd p = {.fd = 0, .events = POLLIN};
    int r;
    while ((r = poll(&p, 1, (int)idle_ms)) < 0 && errno == EINTR) {
    }
    if (r == 0) return EM_READ_IDLE;
    /* r < 0 or ready (data, end of stream, an error): read says which. */
  }
  for (;;) {
    ssize_t n = read(0, buf, len);
    if (n >= 0) return (size_t)n;
    if (errno != EINTR) return 0;
  }
}

void em_platform_write(const uint8_t* buf, size_t len) {
  while (len) {
    ssize_t n = write(1, buf, len);
    if (n < 0) {
      if (errno == EINTR) continue;
      exit(3); /* the host went away: nothing left to serve */
    }
    buf += n;
    len -= (size_t)n;
  }
}

void em_platform_flush(void) {}

uint64_t em_platform_ticks(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

const char* em_platform_tick_unit(void) { return "ns"; }

/* A restarted Linux program is a new process on a new link (the host sees the old one
 * close), so it has booted once as far as its link can tell. */
uint32_t em_platform_boot_count(void) { return 1u; }
