/* What a platform (the Linux program or an MCU board) gives the runtime. */
#ifndef EM_PLATFORM_H_
#define EM_PLATFORM_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Byte I/O on the protocol link. read returns the bytes read (at least 1), 0 at end of
 * stream, or EM_READ_IDLE when idle_ms > 0 and no byte came within idle_ms milliseconds
 * (the device then drops a partial frame). idle_ms == 0 waits for as long as it takes. */
#define EM_READ_IDLE ((size_t)-1)
size_t em_platform_read(uint8_t* buf, size_t len, uint32_t idle_ms);
void em_platform_write(const uint8_t* buf, size_t len);
void em_platform_flush(void);
/* A monotonic tick counter and what one tick is ("ns", "cycles" or "instructions"). */
uint64_t em_platform_ticks(void);
const char* em_platform_tick_unit(void);
/* Boots counted by the platform (docs/protocol.md, "boot_count"): an MCU counts in RAM that
 * survives a reset; the Linux program reports 1 (each start is a new process and link). */
uint32_t em_platform_boot_count(void);

#ifdef __cplusplus
}
#endif
#endif /* EM_PLATFORM_H_ */
