/* The device side of docs/protocol.md. Every length is checked against the static frame
 * buffer before a byte of payload is stored; a bad frame gets an error reply and the loop
 * keeps serving. */
#include "em_protocol.h"

#include <stdio.h>
#include <string.h>

#include "em_model.h"
#include "em_platform.h"
#include "em_runtime.h"

/* Run counts are bounded so that one request has a bounded cost (docs/protocol.md). The fuzz
 * build (fuzz/fuzz.cmake) lowers them to keep each execution short. */
#ifndef EM_MAX_BENCH_RUNS
#define EM_MAX_BENCH_RUNS 10000u
#endif
#ifndef EM_MAX_PROFILE_RUNS
#define EM_MAX_PROFILE_RUNS 1000u
#endif

static uint32_t g_requests;
uint32_t em_crc32(uint32_t crc, const uint8_t* data, size_t len) {
  /* Bitwise IEEE CRC-32 (zlib's): no table, so it costs no flash on an MCU. No unsigned
   * wrap-around (the fuzz build checks for it: a wrapped length is a bug elsewhere). */
  crc = ~crc;
  for (size_t i = 0; i < len; ++i) {
    crc ^= data[i];
    for (int k = 0; k < 8; ++k) crc = (crc >> 1) ^ ((crc & 1u) ? 0xEDB88320u : 0u);
  }
  return ~crc;
}

static void put_u16(uint8_t* p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }
static void put_u32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = (uint8_t)(v >> (8 * i));
}
static void put_u64(uint8_t* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = (uint8_t)(v >> (8 * i));
}
static uint16_t get_u16(const uint8_t* p) { return (uint16_t)(p[0] | p[1] << 8); }
static uint32_t get_u32(const uint8_t* p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* A frame is written in pieces (header, up to two payload parts, CRC) so that no second
 * buffer is needed: an output tensor goes out straight from the arena. */
static void send_frame(uint8_t type, uint16_t seq, uint16_t index, const uint8_t* a,
                       uint32_t alen, const uint8_t* b, uint32_t blen) {
  uint8_t h[EM_HEADER_BYTES];
  h[0] = EM_MAGIC0; h[1] = EM_MAGIC1; h[2] = EM_PROTOCOL_VERSION; h[3] = type;
  put_u16(h + 4, seq);
  put_u16(h + 6, index);
  put_u32(h + 8, alen + blen);
  put_u32(h + 12, em_crc32(0, h, 12));
  em_platform_write(h, sizeof h);
  uint32_t crc = 0;
  if (alen) { em_platform_write(a, alen); crc = em_crc32(crc, a, alen); }
  if (blen) { em_platform_write(b, blen); crc = em_crc32(crc, b, blen); }
  uint8_t c[4];
  put_u32(c, crc);
  em_platform_write(c, 4);
  em_platform_flush();
}

/* A reply larger than a chunk stays where it is (static memory: the arena, the frame buffer,
 * the hello strings) and is announced with HELD; the host fetches its chunks with READ. It
 * stays valid until the next request other than READ (docs/protocol.md, "Chunks"). */
static struct {
  const uint8_t *a, *b;
  uint32_t alen, blen;
  uint16_t seq;
  uint8_t valid;
} g_held;

static void send_reply2(uint8_t type, uint16_t seq, const uint8_t* a, uint32_t alen,
                        const uint8_t* b, uint32_t blen) {
  if ((uint64_t)alen + blen <= EM_CHUNK_BYTES) {
    send_frame(type, seq, 0, a, alen, b, blen);
    return;
  }
  g_held.a = a; g_held.alen = alen; g_held.b = b; g_held.blen = blen;
  g_held.seq = seq; g_held.valid = 1;
  uint8_t d[12] = {type, 0};
  put_u16(d + 2, (uint16_t)EM_CHUNK_BYTES);
  put_u32(d + 4, alen + blen);
  put_u32(d + 8, em_crc32(em_crc32(0, a, alen), b, blen));
  send_frame(EM_MSG_HELD, seq, 0, d, sizeof d, NULL, 0);
}

static void send_reply(uint8_t type, uint16_t seq, const uint8_t* p, uint32_t len) {
  send_reply2(type, seq, p, len, NULL, 0);
}

static void send_error(uint16_t seq, uint16_t code, const char* msg) {
  /* Messages are short: an error always fits one frame (never held). */
  uint8_t c[2];
  put_u16(c, code);
  send_frame(EM_MSG_ERROR, seq, 0, c, 2, (const uint8_t*)msg, (uint32_t)strlen(msg));
}

/* Bytes given back to the stream: after a header whose CRC fails, all but its first byte
 * are scanned again, since a real frame may begin inside a damaged one. */
static uint8_t g_back[EM_HEADER_BYTES];
static uint32_t g_back_pos, g_back_len;

static void give_back(const uint8_t* bytes, uint32_t len) {
  /* Only ever called with the header just read whole, so nothing is left unread in g_back. */
  memcpy(g_back, bytes, len);
  g_back_pos = 0;
  g_back_len = len;
}

void em_protocol_reset(void) {
  g_back_pos = g_back_len = 0;
  g_held.valid = 0;
}

/* 1 = read, 0 = end of stream, -1 = no byte for idle_ms (0: wait as long as it takes). */
static int read_exact(uint8_t* buf, size_t len, uint32_t idle_ms) {
  while (len && g_back_pos < g_back_len) {
    *buf++ = g_back[g_back_pos++];
    --len;
  }
  while (len) {
    size_t n = em_platform_read(buf, len, idle_ms);
    if (n == EM_READ_IDLE) return -1;
    if (n == 0) return 0;
    buf += n;
    len -= n;
  }
  return 1;
}

/* Inside a frame every read may time out: a frame cut off never swallows the next one. */
static int read_in_frame(uint8_t* buf, size_t len) { return read_exact(buf, len, EM_IDLE_GAP_MS); }

/* Reads and throws away n bytes so that the stream stays in step after a refused frame
 * (results as read_exact). 64-bit: a refused payload of up to 2^32-1 bytes plus its CRC does
 * not wrap to a few bytes (it did, and a frame hidden in it was answered: the fuzzer found it,
 * tests/fuzz_regressions/). */
static int drain(uint64_t n) {
  uint8_t sink[64];
  while (n) {
    uint32_t k = n < sizeof sink ? (uint32_t)n : (uint32_t)sizeof sink;
    int r = read_in_frame(sink, k);
    if (r != 1) return r;
    n -= k;
  }
  return 1;
}

static void handle_hello(uint16_t seq) {
  /* The static JSON from the compiler ends in "}"; the runtime appends its live fields. The
   * tail is static: a hello larger than a chunk is held and read from here. */
  static char tail[192];
  const char* j = em_model.hello_json;
  size_t n = strlen(j);
  int k = snprintf(tail, sizeof tail,
                   ",\"tick_unit\":\"%s\",\"requests\":%lu,\"boot_count\":%lu,"
                   "\"chunk_bytes\":%lu,\"idle_gap_ms\":%lu}",
                   em_platform_tick_unit(), (unsigned long)g_requests,
                   (unsigned long)em_platform_boot_count(), (unsigned long)EM_CHUNK_BYTES,
                   (unsigned long)EM_IDLE_GAP_MS);
  if (k < 0 || k >= (int)sizeof tail) k = (int)sizeof tail - 1;
  send_reply2(EM_MSG_HELLO | EM_MSG_REPLY, seq, (const uint8_t*)j, (uint32_t)(n - 1),
              (const uint8_t*)tail, (uint32_t)k);
}

/* Copies the input in, runs the model, replies with the output (held when large). */
static void run_and_reply(uint8_t reply_type, uint16_t seq, const uint8_t* input) {
  /* A patched model reads its input in the frame buffer, where it was received. */
  if (em_model.input->data != (const void*)input)
    memcpy(em_model.input->data, input, em_model.input_bytes);
  if (em_run() != 0) {
    send_error(seq, EM_ERR_KERNEL_FAILED, em_last_error());
    return;
  }
  send_reply(reply_type, seq, (const uint8_t*)em_model.output->data, em_model.output_bytes);
}

static void handle_infer(uint16_t seq, const uint8_t* payload, uint32_t len) {
  if (len != em_model.input_bytes) {
    char msg[96];
    snprintf(msg, sizeof msg, "input has %lu bytes; the model takes %lu",
             (unsigned long)len, (unsigned long)em_model.input_bytes);
    send_error(seq, EM_ERR_BAD_LENGTH, msg);
    return;
  }
  run_and_reply(EM_MSG_INFER | EM_MSG_REPLY, seq, payload);
}

/* The chunks have put the input together in the frame buffer; its CRC says it is whole. */
static void handle_infer_staged(uint16_t seq, const uint8_t* payload, uint32_t len) {
  if (len != 4) {
    send_error(seq, EM_ERR_BAD_ARGUMENT, "expected the u32 CRC-32 of the whole input");
    return;
  }
  if (em_crc32(0, em_model.frame_buffer, em_model.input_bytes) != get_u32(payload)) {
    send_error(seq, EM_ERR_INCOMPLETE, "the staged input's CRC does not match: send its "
               "chunks again");
    return;
  }
  run_and_reply(EM_MSG_INFER_STAGED | EM_MSG_REPLY, seq, em_model.frame_buffer);
}

/* Chunk `index` of the held reply of request `held seq` (the payload, u16). */
static void handle_read(uint16_t seq, uint16_t index, const uint8_t* payload, uint32_t len) {
  uint32_t total = g_held.alen + g_held.blen;
  uint64_t off = (uint64_t)index * EM_CHUNK_BYTES;
  if (len != 2 || !g_held.valid || get_u16(payload) != g_held.seq || off >= total) {
    char msg[112];
    snprintf(msg, sizeof msg, "no chunk %u of a held reply to request %u here; send the "
             "request again", (unsigned)index, len == 2 ? (unsigned)get_u16(payload) : 0u);
    send_error(seq, EM_ERR_BAD_ARGUMENT, msg);
    return;
  }
  uint32_t o = (uint32_t)off;
  uint32_t n = total - o < EM_CHUNK_BYTES ? total - o : EM_CHUNK_BYTES;
  /* The chunk may straddle the two parts of the reply. */
  uint32_t in_a = o < g_held.alen ? g_held.alen - o : 0;
  if (in_a > n) in_a = n;
  const uint8_t* a = in_a ? g_held.a + o : NULL;
  const uint8_t* b = n > in_a ? g_held.b + (o + in_a - g_held.alen) : NULL;
  send_frame(EM_MSG_READ | EM_MSG_REPLY, seq, index, a, in_a, b, n - in_a);
}

static uint32_t runs_argument(uint16_t seq, const uint8_t* payload, uint32_t len, uint32_t max) {
  uint32_t runs = len == 4 ? get_u32(payload) : 0;
  if (runs == 0 || runs > max) {
    char msg[80];
    snprintf(msg, sizeof msg, "expected a u32 run count from 1 to %lu", (unsigned long)max);
    send_error(seq, EM_ERR_BAD_ARGUMENT, msg);
    return 0;
  }
  return runs;
}

static void handle_bench(uint16_t seq, const uint8_t* payload, uint32_t len) {
  uint32_t cap = (em_model.max_payload - 4) / 8;
  uint32_t runs = runs_argument(seq, payload, len, cap < EM_MAX_BENCH_RUNS ? cap : EM_MAX_BENCH_RUNS);
  if (!runs) return;
  /* The timings go into the frame buffer: the request payload has been read already. */
  uint8_t* out = em_model.frame_buffer;
  put_u32(out, runs);
  for (uint32_t i = 0; i < runs; ++i) {
    uint64_t t0 = em_platform_ticks();
    if (em_run() != 0) {
      send_error(seq, EM_ERR_KERNEL_FAILED, em_last_error());
      return;
    }
    put_u64(out + 4 + 8 * i, em_platform_ticks() - t0);
  }
  send_reply(EM_MSG_BENCH | EM_MSG_REPLY, seq, out, 4 + 8 * runs);
}

static void handle_profile(uint16_t seq, const uint8_t* payload, uint32_t len) {
  uint32_t runs = runs_argument(seq, payload, len, EM_MAX_PROFILE_RUNS);
  if (!runs) return;
  uint32_t n = em_model.num_calls;
  if (8 + 8 * (uint64_t)n > em_model.max_payload) { /* the sums sit at +8, see below */
    send_error(seq, EM_ERR_TOO_LARGE, "too many kernels for the frame buffer");
    return;
  }
  /* Sum per call in place, in the frame buffer, as u64 little-endian after 4 bytes. */
  uint64_t* acc = (uint64_t*)(void*)(em_model.frame_buffer + 8);
  memset(acc, 0, 8 * (size_t)n);
  for (uint32_t r = 0; r < runs; ++r) {
    if (em_run_profiled(acc) != 0) {
      send_error(seq, EM_ERR_KERNEL_FAILED, em_last_error());
      return;
    }
  }
  uint8_t* out = em_model.frame_buffer + 4;
  put_u32(out, n);
  for (uint32_t i = 0; i < n; ++i) {
    uint64_t v = acc[i];
    put_u64(out + 4 + 8 * i, v);
  }
  send_reply(EM_MSG_PROFILE | EM_MSG_REPLY, seq, out, 4 + 8 * n);
}

static void handle_selftest(uint16_t seq) {
  em_selftest_result_t r = em_selftest();
  char msg[128];
  int k = snprintf(msg, sizeof msg, "{\"passed\":%s,\"max_abs_error\":%.9g,\"cases\":%lu,"
                   "\"nonfinite\":%lu}", r.passed ? "true" : "false", r.max_abs_error,
                   (unsigned long)r.cases, (unsigned long)r.nonfinite);
  send_reply(EM_MSG_SELFTEST | EM_MSG_REPLY, seq, (const uint8_t*)msg, (uint32_t)k);
}

/* Where a request's payload goes, checked before a byte of it is stored: a chunk straight
 * into its place in the frame buffer, a small payload aside (so that the requests between
 * chunks do not overwrite them), anything else at the start of the frame buffer. NULL with
 * an error message in msg when the frame is refused. */
static uint8_t* payload_place(uint8_t type, uint16_t index, uint32_t len, uint16_t* code,
                              char* msg, size_t msg_size) {
  static uint8_t small[16];
  if (len > em_model.max_payload) {
    *code = EM_ERR_TOO_LARGE;
    snprintf(msg, msg_size, "payload of %lu bytes exceeds the frame buffer of %lu",
             (unsigned long)len, (unsigned long)em_model.max_payload);
    return NULL;
  }
  if (type == EM_MSG_CHUNK) {
    uint64_t off = (uint64_t)index * EM_CHUNK_BYTES;
    if (len == 0 || len > EM_CHUNK_BYTES || off + len > em_model.input_bytes) {
      *code = EM_ERR_BAD_ARGUMENT;
      snprintf(msg, msg_size, "chunk %u of %lu bytes is not within the input of %lu bytes "
               "(chunks of %lu)", (unsigned)index, (unsigned long)len,
               (unsigned long)em_model.input_bytes, (unsigned long)EM_CHUNK_BYTES);
      return NULL;
    }
    return em_model.frame_buffer + off;
  }
  return len <= sizeof small ? small : em_model.frame_buffer;
}

static void dispatch(uint8_t type, uint16_t seq, uint16_t index, const uint8_t* payload,
                     uint32_t len) {
  if (type != EM_MSG_READ) g_held.valid = 0; /* its memory may be reused from here on */
  switch (type) {
    case EM_MSG_HELLO: handle_hello(seq); break;
    case EM_MSG_INFER: handle_infer(seq, payload, len); break;
    case EM_MSG_BENCH: handle_bench(seq, payload, len); break;
    case EM_MSG_PROFILE: handle_profile(seq, payload, len); break;
    case EM_MSG_SELFTEST: handle_selftest(seq); break;
    case EM_MSG_CHUNK: send_frame(EM_MSG_CHUNK | EM_MSG_REPLY, seq, index, NULL, 0, NULL, 0); break;
    case EM_MSG_INFER_STAGED: handle_infer_staged(seq, payload, len); break;
    case EM_MSG_READ: handle_read(seq, index, payload, len); break;
    default: {
      char msg[48];
      snprintf(msg, sizeof msg, "unknown message type 0x%02x", type);
      send_error(seq, EM_ERR_UNKNOWN_TYPE, msg);
    }
  }
}

/* The rest of a frame stopped for EM_IDLE_GAP_MS (r == -1): dropped, and said so when its
 * header was checked (the host resends at once); 0 at end of stream, else 1. */
static int cut_off(int r, int header_checked, uint16_t seq) {
  if (r == 0) return 0;
  if (header_checked) { /* the host knows which request it was: it resends at once */
    char msg[80];
    snprintf(msg, sizeof msg, "frame cut off: no byte for %lu ms; dropped",
             (unsigned long)EM_IDLE_GAP_MS);
    send_error(seq, EM_ERR_CUT_OFF, msg);
  }
  return 1;
}

int em_serve_one(void) {
  uint8_t h[EM_HEADER_BYTES];
  int r;
  /* 1. Find the magic; anything before it is not ours. Only the first byte waits forever. */
  if ((r = read_exact(h, 1, 0)) != 1) return r == 0 ? 0 : 1;
  if (h[0] != EM_MAGIC0) return 1;
  for (;;) { /* a run of 0xED may precede the real magic */
    if ((r = read_in_frame(h + 1, 1)) != 1) return cut_off(r, 0, 0);
    if (h[1] == EM_MAGIC1) break;
    if (h[1] != EM_MAGIC0) return 1;
  }
  if ((r = read_in_frame(h + 2, EM_HEADER_BYTES - 2)) != 1) return cut_off(r, 0, 0);
  uint16_t seq = get_u16(h + 4), index = get_u16(h + 6);
  /* 2. Trust nothing in the header until its own CRC matches. */
  if (get_u32(h + 12) != em_crc32(0, h, 12)) {
    send_error(seq, EM_ERR_BAD_CRC, "header CRC mismatch; scanning on from the next byte");
    give_back(h + 1, EM_HEADER_BYTES - 1);
    return 1;
  }
  uint32_t len = get_u32(h + 8);
  uint8_t type = h[3];
  ++g_requests;
  char msg[112];
  uint16_t code = EM_ERR_BAD_VERSION;
  uint8_t* payload = NULL;
  /* 3. A version and a length are checked before anything is stored. */
  if (h[2] != EM_PROTOCOL_VERSION)
    snprintf(msg, sizeof msg, "protocol version %u not spoken; this device speaks %u",
             h[2], EM_PROTOCOL_VERSION);
  else
    payload = payload_place(type, index, len, &code, msg, sizeof msg);
  if (!payload) {  /* refused: drained however long, nothing in it is a request */
    if ((r = drain((uint64_t)len + 4)) != 1) return cut_off(r, 1, seq);
    send_error(seq, code, msg);
    return 1;
  }
  uint8_t c[4];
  if ((r = read_in_frame(payload, len)) != 1 || (r = read_in_frame(c, 4)) != 1)
    return cut_off(r, 1, seq);
  if (get_u32(c) != em_crc32(0, payload, len)) {
    send_error(seq, EM_ERR_BAD_CRC, "payload CRC mismatch; request not run");
    return 1;
  }
  dispatch(type, seq, index, payload, len);
  return 1;
}

void em_serve(void) {
  while (em_serve_one()) {
  }
}
