/* A QEMU TCG plugin that counts the guest instructions executed and writes the total to a
 * file when the guest exits:  qemu-aarch64 -plugin ./icount.so,out=/tmp/n.txt ./prog
 *
 * Each translated block adds its instruction count to a counter inline (no callback per
 * block), so the count is exact and costs a few percent of run time. A block
 * left early by an exception would be over-counted; ordinary programs leave blocks only at
 * their ends.
 *
 * Debian ships QEMU 7.2 without qemu-plugin.h: the few declarations used here are written
 * out below, as the plugin API version 1 of QEMU 7.x defines them. */
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef uint64_t qemu_plugin_id_t;
struct qemu_plugin_tb;
typedef struct {
  char* target_name;
  struct { int min; int cur; } version;
  int system_emulation;
  union {
    struct { int smp_vcpus; int max_vcpus; } system;
  };
} qemu_info_t;
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 = 0 };
typedef void (*qemu_plugin_vcpu_tb_trans_cb_t)(qemu_plugin_id_t id, struct qemu_plugin_tb* tb);
typedef void (*qemu_plugin_udata_cb_t)(qemu_plugin_id_t id, void* userdata);

void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_tb_trans_cb_t cb);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb* tb);
void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb* tb, enum qemu_plugin_op op,
                                              void* ptr, uint64_t imm);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, qemu_plugin_udata_cb_t cb, void* userdata);
void qemu_plugin_outs(const char* string);

__attribute__((visibility("default"))) int qemu_plugin_version = 1;

/* One counter for the whole process: API v1's inline add has no per-vCPU form, and the
 * blocks of user-mode QEMU are shared by all guest threads, whose additions to one counter
 * are not atomic and may be lost. Count single-threaded programs (the device program's
 * --count mode runs on one thread). */
static uint64_t g_count;
static char g_out[4096];

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb* tb) {
  (void)id;
  qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &g_count,
                                           qemu_plugin_tb_n_insns(tb));
}

static void write_count(qemu_plugin_id_t id, void* userdata) {
  (void)id; (void)userdata;
  char line[64];
  snprintf(line, sizeof line, "%" PRIu64 "\n", g_count);
  if (!g_out[0]) {
    qemu_plugin_outs(line);
    return;
  }
  FILE* f = fopen(g_out, "w");
  if (!f) {
    qemu_plugin_outs("icount plugin: cannot write the out= file\n");
    return;
  }
  fputs(line, f);
  fclose(f);
}

__attribute__((visibility("default"))) int qemu_plugin_install(qemu_plugin_id_t id,
                                                              const qemu_info_t* info, int argc,
                                                              char** argv) {
  (void)info;
  for (int i = 0; i < argc; ++i) {
    if (!strncmp(argv[i], "out=", 4) && strlen(argv[i] + 4) < sizeof g_out) {
      strcpy(g_out, argv[i] + 4);
    } else {
      fprintf(stderr, "icount plugin: unknown argument %s (expected out=FILE)\n", argv[i]);
      return -1;
    }
  }
  qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
  qemu_plugin_register_atexit_cb(id, write_count, NULL);
  return 0;
}
