/* libFuzzer target for the device side of docs/protocol.md: the fuzz input is the byte
 * stream the host sends, em_serve_one() reads it through em_platform_read frame by frame, and
 * the request handler runs every message type (chunks and held replies included) against a real compiled model.
 *
 * Beyond the sanitizers' checks, every reply the device writes must be a frame the host
 * accepts: magic, version, a reply type, both CRCs right, a payload of at most a chunk (a
 * larger reply is held), a known error code. Anything else aborts (a finding).
 *
 * A custom mutator repairs the CRCs of the frames it finds in half of the mutants, so that the
 * fuzzer reaches the handlers with arbitrary payloads instead of stopping at the CRC checks;
 * the other half keeps the raw mutations that exercise the refusal paths.
 *
 * Each input is served as em_serve() would, up to MAX_REPLIES replies.
 *
 * Built by fuzz.cmake (EM_PLATFORM=fuzz) with -fsanitize=fuzzer,address,undefined and
 * unsigned-integer-overflow, every report fatal. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "em_model.h"
#include "em_platform.h"
#include "em_protocol.h"
#include "em_runtime.h"

size_t LLVMFuzzerMutate(uint8_t* data, size_t size, size_t max_size);

/* ---- the platform: input from the fuzz data, output into a checked sink ----------------- */

static const uint8_t* g_in;
static size_t g_in_size, g_in_pos;
static uint64_t g_ticks;

#define SINK_BYTES (1u << 21)
static uint8_t g_sink[SINK_BYTES];
static size_t g_sink_len;
/* Requests answered per input: a 4 KB input holds ~200 tiny SELFTEST frames of 3 inferences
 * each, and such inputs would take most of the fuzzer's time in kernels. Four replies keep
 * sequences of requests (state carried from one to the next) at a bounded cost. */
#define MAX_REPLIES 4
static unsigned g_replies;

static void fail(const char* what) {
  fprintf(stderr, "fuzz_protocol: %s\n", what);
  abort();
}

size_t em_platform_read(uint8_t* buf, size_t len, uint32_t idle_ms) {
  /* Short reads of varying size, as a pipe or a UART gives them, so read_exact loops. The
   * link goes idle (a frame cut off) where the input has the bytes "IDLE" at a read inside
   * a frame: they are consumed and the read times out. */
  size_t left = g_in_size - g_in_pos;
  if (idle_ms && left >= 4 && !memcmp(g_in + g_in_pos, "IDLE", 4)) {
    g_in_pos += 4;
    return EM_READ_IDLE;
  }
  size_t piece = 1 + (g_in_pos * 7 + 3) % 61;
  size_t n = len < left ? len : left;
  if (n > piece) n = piece;
  memcpy(buf, g_in + g_in_pos, n);
  g_in_pos += n;
  return n;
}

void em_platform_write(const uint8_t* buf, size_t len) {
  if (len > SINK_BYTES - g_sink_len) fail("a reply larger than the sink (2 MB)");
  memcpy(g_sink + g_sink_len, buf, len);
  g_sink_len += len;
}

uint64_t em_platform_ticks(void) { return g_ticks += 1000; }
const char* em_platform_tick_unit(void) { return "ns"; }
uint32_t em_platform_boot_count(void) { return 1u; }

static uint32_t u32_at(const uint8_t* p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* One reply is complete at each flush: check it as the host decoder would. */
void em_platform_flush(void) {
  const uint8_t* f = g_sink;
  if (g_sink_len < EM_HEADER_BYTES + 4) fail("a reply shorter than a header and a CRC");
  if (f[0] != EM_MAGIC0 || f[1] != EM_MAGIC1 || f[2] != EM_PROTOCOL_VERSION)
    fail("a reply header without the magic and this protocol version");
  uint8_t type = f[3];
  int known = type == EM_MSG_ERROR || type == EM_MSG_HELD ||
              (type > EM_MSG_REPLY && type <= (EM_MSG_REPLY | EM_MSG_READ));
  if (!known) fail("a reply of a type that is not a reply");
  if (u32_at(f + 12) != em_crc32(0, f, 12)) fail("a reply whose header CRC is wrong");
  uint32_t len = u32_at(f + 8);
  if ((size_t)len + EM_HEADER_BYTES + 4 != g_sink_len)
    fail("a reply whose length field is not the bytes written");
  /* Protocol 2: no reply is larger than a chunk (a larger one is held and read in chunks),
   * but an error, always one frame, whose message must stay within the host's smallest
   * limit (4096 + 64 bytes, device/frames.py). */
  if (type != EM_MSG_ERROR && len > EM_CHUNK_BYTES) fail("a reply payload larger than a chunk");
  if (len > 4096u) fail("an error reply above the host's smallest limit");
  if (u32_at(f + EM_HEADER_BYTES + len) != em_crc32(0, f + EM_HEADER_BYTES, len))
    fail("a reply whose payload CRC is wrong");
  if (type == EM_MSG_ERROR) {
    if (len < 2) fail("an error reply without a code");
    unsigned code = f[EM_HEADER_BYTES] | f[EM_HEADER_BYTES + 1] << 8;
    if (code < EM_ERR_BAD_CRC || code > EM_ERR_LAST)
      fail("an error reply with an unknown code");
  }
  g_sink_len = 0;
  ++g_replies;
}

/* ---- the target ---------------------------------------------------------------------- */

/* libFuzzer calls this once before the first input: the runtime's one-time set-up. */
int LLVMFuzzerInitialize(int* argc, char*** argv) {
  (void)argc; (void)argv;
  em_runtime_init();
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  g_in = data;
  g_in_size = size;
  g_in_pos = 0;
  g_sink_len = 0;
  g_replies = 0;
  em_protocol_reset();
  int more = 1;
  while (more && g_replies < MAX_REPLIES) more = em_serve_one();
  if (g_sink_len) fail("bytes written but never flushed");
  if (!more && g_in_pos != g_in_size) fail("end of stream before the end of the input");
  return 0;
}

/* ---- the mutator: make the CRCs of mutated frames right, half of the time --------------- */

static void put_u32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = (uint8_t)(v >> (8 * i));
}

static void repair_crcs(uint8_t* d, size_t size) {
  size_t i = 0;
  while (i + EM_HEADER_BYTES <= size) {
    if (d[i] != EM_MAGIC0 || d[i + 1] != EM_MAGIC1) { ++i; continue; }
    put_u32(d + i + 12, em_crc32(0, d + i, 12));
    uint32_t len = u32_at(d + i + 8);
    size_t body = i + EM_HEADER_BYTES;
    if (len <= size - body && size - body - len >= 4) {
      put_u32(d + body + len, em_crc32(0, d + body, len));
      i = body + len + 4;
    } else {
      i = body;
    }
  }
}

size_t LLVMFuzzerCustomMutator(uint8_t* data, size_t size, size_t max_size, unsigned int seed) {
  size = LLVMFuzzerMutate(data, size, max_size);
  if (seed & 1u) repair_crcs(data, size);
  return size;
}
