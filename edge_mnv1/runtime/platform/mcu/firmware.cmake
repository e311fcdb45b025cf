# MCU firmware: included by CMakeLists.txt when EM_PLATFORM is mcu, with the toolchain file
# targets/toolchains/arm-none-eabi.cmake and the CPU flags of the target file in
# EM_EXTRA_CFLAGS. The artifact's mcu/ directory (written by edge_mnv1/artifact/firmware.py)
# holds the linker script made from the target's memory regions, the board configuration
# header and, if the target names one, the board support file. Output: firmware.elf (and firmware.map) in EM_OUTPUT_DIR.
set(EM_MCU_DIR "${EM_RUNTIME_DIR}/platform/mcu")
set(EM_MCU_GEN "${EM_ARTIFACT}/mcu")
if(NOT EXISTS "${EM_MCU_GEN}/firmware.ld" OR NOT EXISTS "${EM_MCU_GEN}/em_board_config.h")
  message(FATAL_ERROR "${EM_ARTIFACT} has no mcu/firmware.ld: it was not compiled for an MCU "
                      "target (edge-mnv1 compile MODEL.onnx --target mps2-an500 -o DIR)")
endif()

set(EM_MCU_SOURCES "${EM_MCU_DIR}/startup.c" "${EM_MCU_DIR}/board_default.c"
                   "${EM_MCU_DIR}/platform.c" "${EM_MCU_DIR}/main.c" "${EM_MCU_DIR}/printf.c")
if(EXISTS "${EM_MCU_GEN}/board.c")
  list(APPEND EM_MCU_SOURCES "${EM_MCU_GEN}/board.c")
endif()

add_executable(firmware ${EM_RUNTIME_SOURCES} ${EM_ARTIFACT_SOURCES} ${EM_KERNEL_OBJECTS}
               ${EM_MCU_SOURCES})
target_include_directories(firmware PRIVATE "${EM_RUNTIME_DIR}/include" "${EM_MCU_DIR}"
                           "${EM_ARTIFACT}/include" "${EM_MCU_GEN}")
# One thread, no TLS; no heap anywhere (see printf.c).
target_compile_definitions(firmware PRIVATE EM_SINGLE_THREAD=1)
target_compile_options(firmware PRIVATE ${EM_EXTRA_CFLAGS} -O2 -g -ffunction-sections
                       -fdata-sections -fno-common -Wall -Wextra -Wno-unused-parameter)
# TVM's C kernels (emit "c"): -O3, as measured in docs/mcu.md; their unused-variable noise
# is TVM's, not ours.
if(EM_KERNEL_SOURCES)
  set_source_files_properties(${EM_KERNEL_SOURCES} PROPERTIES COMPILE_OPTIONS
                              "-O3;-Wno-unused-variable;-Wno-unused-but-set-variable;-Wno-unused-function")
endif()
target_link_options(firmware PRIVATE ${EM_EXTRA_CFLAGS} "-T${EM_MCU_GEN}/firmware.ld"
                    -nostartfiles --specs=nano.specs -Wl,--gc-sections
                    "-Wl,-Map=${EM_OUTPUT_DIR}/firmware.map" -Wl,--no-warn-rwx-segments)
target_link_libraries(firmware PRIVATE m)
set_target_properties(firmware PROPERTIES OUTPUT_NAME "firmware" SUFFIX ".elf"
                      RUNTIME_OUTPUT_DIRECTORY "${EM_OUTPUT_DIR}"
                      LINK_DEPENDS "${EM_MCU_GEN}/firmware.ld")
