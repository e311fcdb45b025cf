# The libFuzzer target of the protocol (fuzz_protocol.c): included by CMakeLists.txt when
# EM_PLATFORM is fuzz. Needs clang with its runtime libraries (Debian: clang-14,
# libclang-rt-14-dev): cmake -DEM_PLATFORM=fuzz -DCMAKE_C_COMPILER=clang-14 ...
# Output: fuzz_protocol in EM_OUTPUT_DIR. `edge-mnv1 fuzz` builds and runs it.
if(NOT CMAKE_C_COMPILER_ID MATCHES "Clang")
  message(FATAL_ERROR "EM_PLATFORM=fuzz needs clang for libFuzzer, not ${CMAKE_C_COMPILER_ID}: "
                      "-DCMAKE_C_COMPILER=clang-14 (apt-get install clang-14 libclang-rt-14-dev)")
endif()

# Bench and profile run counts come from the fuzz input; the device's own limits (10000 and
# 1000 runs, core/em_protocol.c) bound an execution, but at ~0.2 ms an inference a fuzzer
# that keeps finding 10000 would crawl. The same code with smaller limits covers the same paths.
set(EM_FUZZ_MAX_BENCH_RUNS 2 CACHE STRING "bench run limit of the fuzz build")
set(EM_FUZZ_MAX_PROFILE_RUNS 2 CACHE STRING "profile run limit of the fuzz build")
set(EM_FUZZ_SANITIZE "fuzzer,address,undefined,unsigned-integer-overflow")

add_executable(fuzz_protocol ${EM_RUNTIME_SOURCES} ${EM_ARTIFACT_SOURCES} ${EM_KERNEL_OBJECTS}
               "${EM_RUNTIME_DIR}/fuzz/fuzz_protocol.c")
target_include_directories(fuzz_protocol PRIVATE "${EM_RUNTIME_DIR}/include" "${EM_ARTIFACT}/include")
# Chunks of 64 bytes (the device's are 512): the fuzz model's hello, profile and 768-byte input
# are then larger than a chunk, so held replies, READ and CHUNK are reached with small inputs.
target_compile_definitions(fuzz_protocol PRIVATE EM_SINGLE_THREAD=1 EM_CHUNK_BYTES=64u
                           EM_MAX_BENCH_RUNS=${EM_FUZZ_MAX_BENCH_RUNS}u
                           EM_MAX_PROFILE_RUNS=${EM_FUZZ_MAX_PROFILE_RUNS}u)
# Every check is fatal: a sanitizer report is a crash libFuzzer keeps as a finding.
target_compile_options(fuzz_protocol PRIVATE
    $<$<COMPILE_LANGUAGE:C>:-O1 -g -fno-omit-frame-pointer -fsanitize=${EM_FUZZ_SANITIZE}
    -fno-sanitize-recover=all -Wall -Wextra -Wno-unused-parameter
    -fsanitize-coverage-ignorelist=${EM_RUNTIME_DIR}/fuzz/coverage-ignore.txt>)
target_link_options(fuzz_protocol PRIVATE -fsanitize=${EM_FUZZ_SANITIZE})
target_link_libraries(fuzz_protocol PRIVATE m)
set_target_properties(fuzz_protocol PROPERTIES RUNTIME_OUTPUT_DIRECTORY "${EM_OUTPUT_DIR}")
