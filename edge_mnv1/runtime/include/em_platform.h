/* What a platform (the Linux program or an MCU board) gives the runtime. */
#ifndef EM_PLATFORM_H_
#define EM_PLATFORM_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Blocking byte I/O on the protocol link. read returns bytes read (0 = end of stream). */
size_t em_platform_read(uint8_t* buf, size_t len);
void em_platform_write(const uint8_t* buf, size_t len);
void em_platform_flush(void);
/* A monotonic tick counter and what one tick is ("ns", "cycles" or "instructions"). */
uint64_t em_platform_ticks(void);
const char* em_platform_tick_unit(void);

#ifdef __cplusplus
}
#endif
#endif /* EM_PLATFORM_H_ */
