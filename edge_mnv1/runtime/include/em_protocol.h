/* The device side of docs/protocol.md: read frames, answer them, never trust a length. */
#ifndef EM_PROTOCOL_H_
#define EM_PROTOCOL_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define EM_PROTOCOL_VERSION 2
#define EM_MAGIC0 0xED
#define EM_MAGIC1 0x4E
#define EM_HEADER_BYTES 16

/* Large payloads move in chunks of this many bytes, each its own frame with its own CRC and
 * reply (docs/protocol.md, "Chunks"); announced in hello as chunk_bytes. */
#ifndef EM_CHUNK_BYTES
#define EM_CHUNK_BYTES 512u
#endif
/* A frame whose bytes stop for this long is dropped (announced as idle_gap_ms). */
#ifndef EM_IDLE_GAP_MS
#define EM_IDLE_GAP_MS 50u
#endif

enum {
  EM_MSG_HELLO = 0x01,
  EM_MSG_INFER = 0x02,
  EM_MSG_BENCH = 0x03,
  EM_MSG_PROFILE = 0x04,
  EM_MSG_SELFTEST = 0x05,
  EM_MSG_CHUNK = 0x06,        /* one chunk of the input, into the frame buffer */
  EM_MSG_INFER_STAGED = 0x07, /* run the input the chunks put together */
  EM_MSG_READ = 0x08,         /* one chunk of a held reply */
  EM_MSG_REPLY = 0x80, /* reply type = request type | EM_MSG_REPLY */
  EM_MSG_HELD = 0x7E,  /* the reply is larger than a chunk: fetch it with READ */
  EM_MSG_ERROR = 0x7F,
};

enum {
  EM_ERR_BAD_CRC = 1,
  EM_ERR_TOO_LARGE = 2,
  EM_ERR_BAD_VERSION = 3,
  EM_ERR_UNKNOWN_TYPE = 4,
  EM_ERR_BAD_LENGTH = 5,
  EM_ERR_KERNEL_FAILED = 6,
  EM_ERR_BAD_ARGUMENT = 7,
  EM_ERR_INCOMPLETE = 8, /* the staged input's CRC is not the one the host sent */
  EM_ERR_CUT_OFF = 9,    /* a frame stopped mid-way for EM_IDLE_GAP_MS: dropped */
  EM_ERR_LAST = EM_ERR_CUT_OFF,
};

uint32_t em_crc32(uint32_t crc, const uint8_t* data, size_t len);

/* Serves requests until the link reaches end of stream. */
void em_serve(void);
/* Reads and answers one frame; returns 0 at end of stream, 1 otherwise. */
int em_serve_one(void);

/* Forgets any bytes the parser holds back for rescanning (a new stream; the fuzzer's
 * executions each start one). */
void em_protocol_reset(void);

#ifdef __cplusplus
}
#endif
#endif /* EM_PROTOCOL_H_ */
