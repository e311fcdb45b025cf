"""A MetaSchedule runner that measures aarch64 candidates by counting instructions under
qemu-aarch64 instead of timing them on a board (`edge-mnv1 tune --measure icount`).

For each candidate the builder writes the kernel as an aarch64 object (`export_object`); the
runner links it statically with a small C harness that calls the kernel's tvm-ffi packed
function on zero-filled tensors of the task's shapes and dtypes (static buffers, as in the
device program), runs it under the target's qemu with the icount plugin for 2 calls and for
1, and reports the difference, one call's instructions, as a "time" at a nominal clock of
NOMINAL_HZ instructions per second. Parallel loops run on one thread, so the count is the
kernel's whole work; it says nothing of caches, memory bandwidth, dual issue, NEON latency or
how well the work splits over the Pi's four cores (docs/performance.md).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import tvm_ffi
from tvm.ir.utils import derived_object
from tvm.s_tir.meta_schedule.runner import PyRunner, PyRunnerFuture, RunnerResult

from edge_mnv1.emulators import icount
from edge_mnv1.errors import UsageError
from edge_mnv1.artifact.target import Target

# The Pi 4's Cortex-A72 clock, counted as one instruction per cycle: only a unit, so that
# MetaSchedule's logs read in plausible seconds. Ranking candidates needs no clock at all.
NOMINAL_HZ = 1.5e9
WORKSPACE_BYTES = 256 << 20  # bss: only the pages a kernel touches cost anything
_DL_CODES = {"int": "kDLInt", "uint": "kDLUInt", "float": "kDLFloat", "bfloat": "kDLBfloat"}


def export_object(rt_mod) -> str:
    """The builder's export for this runner: the candidate as an object file."""
    path = os.path.join(tempfile.mkdtemp(prefix="em-icount-cand-"), "candidate.o")
    rt_mod.write_to_file(path)
    return path


def c_compiler(target: Target) -> str:
    """CMAKE_C_COMPILER of the target's CMake toolchain file (what builds its programs)."""
    tc = target.toolchain_file()
    if tc and tc.is_file():
        m = re.search(r"set\(\s*CMAKE_C_COMPILER\s+(\S+?)\s*\)", tc.read_text())
        if m:
            return m.group(1)
    raise UsageError(f"{target.name}: its toolchain file names no C compiler (CMAKE_C_COMPILER)")


def _dl_dtype(dtype: str) -> str:
    m = re.fullmatch(r"([a-z]+?)(\d+)(?:x(\d+))?", dtype)
    if not m or m.group(1) not in _DL_CODES:
        raise ValueError(f"no DLPack type for {dtype}")
    return f"{{{_DL_CODES[m.group(1)]}, {m.group(2)}, {m.group(3) or 1}}}"


def harness_source(args_json: list) -> str:
    """C that calls `__tvm_ffi_main` argv[1] times on static tensors of these shapes."""
    L = ["#include <stdint.h>", "#include <stdio.h>", "#include <stdlib.h>",
         '#include "dlpack/dlpack.h"', '#include "tvm/ffi/c_api.h"', ""]
    tensors, anys = [], []
    for i, (kind, dtype, shape) in enumerate(args_json):
        if kind != "TENSOR":
            raise ValueError(f"argument {i} is {kind}, not a tensor")
        bits = int(re.search(r"(\d+)", dtype).group(1))
        lanes = int(dtype.split("x")[1]) if "x" in dtype else 1
        n = 1
        for d in shape:
            n *= int(d)
        nbytes = max(1, (n * bits * lanes + 7) // 8)
        L.append(f"static uint8_t b{i}[{nbytes}] __attribute__((aligned(64)));")
        L.append(f"static int64_t s{i}[] = {{{', '.join(map(str, shape)) or '1'}}};")
        tensors.append(f"  {{b{i}, {{kDLCPU, 0}}, {len(shape)}, {_dl_dtype(dtype)}, s{i}, NULL, 0}},")
        anys.append(f"{{.type_index = kTVMFFIDLTensorPtr, .v_ptr = &t[{i}]}}")
    L += ["static DLTensor t[] = {", *tensors, "};",
          f"static const TVMFFIAny args[] = {{{', '.join(anys)}}};", "", _HARNESS_BODY,
          f"int main(int argc, char** argv) {{\n  int n = argc > 1 ? atoi(argv[1]) : 1;\n"
          f"  fill_slots();\n  for (int i = 0; i < n; ++i) {{\n    TVMFFIAny r = {{0}};\n"
          f"    em_ws_top = 0;\n"
          f"    if (__tvm_ffi_main(NULL, args, {len(args_json)}, &r) != 0) return 1;\n  }}\n"
          f"  return 0;\n}}"]
    return "\n".join(L) + "\n"


_HARNESS_BODY = f"""
int32_t __tvm_ffi_main(void*, const TVMFFIAny*, int32_t, TVMFFIAny*);

/* Workspace as the device runtime hands it out: a stack in one static region. */
static uint8_t em_ws[{WORKSPACE_BYTES}] __attribute__((aligned(64)));
static uint64_t em_ws_top;
static void* alloc_ws(int dt, int di, uint64_t nbytes, int code, int bits) {{
  uint64_t start = (em_ws_top + 63) & ~(uint64_t)63;
  if (start + nbytes > sizeof em_ws) return NULL;
  em_ws_top = start + nbytes;
  return em_ws + start;
}}
static int free_ws(int dt, int di, void* p) {{
  em_ws_top = (uint64_t)((uint8_t*)p - em_ws);
  return 0;
}}
typedef struct {{ void* sync_handle; int32_t num_task; }} penv_t;
typedef int (*lambda_t)(int, penv_t*, void*);
/* One thread: task 0 of 1 does every iteration, so the count is the kernel's whole work. */
static int launch(lambda_t f, void* cdata, int num_task) {{
  penv_t env = {{NULL, 1}};
  return f(0, &env, cdata);
}}
static int barrier(int task_id, penv_t* env) {{ return 0; }}
void TVMFFIErrorSetRaisedFromCStrParts(const char* kind, const char** parts, int32_t n) {{
  fprintf(stderr, "%s:", kind);
  for (int32_t i = 0; i < n; ++i) if (parts[i]) fprintf(stderr, " %s", parts[i]);
  fprintf(stderr, "\\n");
}}
/* Slots an LLVM-built kernel calls through; defined in the object when it uses them. */
__attribute__((weak)) void* (*__TVMBackendAllocWorkspace)(int, int, uint64_t, int, int);
__attribute__((weak)) int (*__TVMBackendFreeWorkspace)(int, int, void*);
__attribute__((weak)) int (*__TVMBackendParallelLaunch)(lambda_t, void*, int);
__attribute__((weak)) int (*__TVMBackendParallelBarrier)(int, penv_t*);
__attribute__((weak)) void (*__TVMFFIErrorSetRaisedFromCStrParts)(const char*, const char**, int32_t);
static void fill_slots(void) {{
  __TVMBackendAllocWorkspace = alloc_ws;
  __TVMBackendFreeWorkspace = free_ws;
  __TVMBackendParallelLaunch = launch;
  __TVMBackendParallelBarrier = barrier;
  __TVMFFIErrorSetRaisedFromCStrParts = TVMFFIErrorSetRaisedFromCStrParts;
}}
"""


class KernelCounter:
    """Links a candidate object with the harness and counts one call's instructions."""

    def __init__(self, target: Target, timeout_sec: float = 120.0):
        self.cc = c_compiler(target)
        self.qemu = list((target.emulator or {}).get("command") or [])
        if not self.qemu or not os.path.basename(self.qemu[0]).startswith("qemu-"):
            raise UsageError(f"{target.name}: no user-mode QEMU in its [emulator] to count "
                             "instructions with; measure on the board (--rpc HOST:PORT)")
        for tool in (self.cc, self.qemu[0]):
            if not shutil.which(tool):
                raise UsageError(f"{tool} is not installed; run ./scripts/setup.sh")
        self.timeout = timeout_sec
        self.work = Path(tempfile.mkdtemp(prefix="em-icount-runner-"))
        self.include = Path(tvm_ffi.__file__).parent / "include"
        icount.plugin_path()  # build it now, once, not in every worker at the same time

    def _harness_object(self, args_json: list) -> Path:
        src = harness_source(args_json)
        obj = self.work / f"harness-{hashlib.sha256(src.encode()).hexdigest()[:16]}.o"
        if not obj.is_file():  # two workers may both build it: each in files of its own
            tag = f"{os.getpid()}-{threading.get_ident()}"
            c, tmp = obj.with_suffix(f".{tag}.c"), obj.with_suffix(f".{tag}.o")
            c.write_text(src)
            self._run([self.cc, "-O2", "-c", f"-I{self.include}", str(c), "-o", str(tmp)],
                      "compiling the harness")
            os.replace(tmp, obj)
        return obj

    def _run(self, cmd: list[str], what: str) -> None:
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"{what} failed: {(r.stdout + r.stderr)[-1500:]}")

    def count(self, candidate_object: str, args_json: list) -> int:
        """Instructions of one call: count(2 calls) - count(1 call)."""
        obj = Path(candidate_object)
        fd, prog = tempfile.mkstemp(suffix=".elf", dir=self.work)  # one per measurement
        os.close(fd)
        try:
            self._run([self.cc, "-static", "-o", prog, str(self._harness_object(args_json)),
                       str(obj), "-lm"], "linking the candidate")
            two, one = (icount.count([prog, n], qemu=self.qemu, timeout=self.timeout)
                        for n in ("2", "1"))
        finally:
            os.unlink(prog)
        return two - one

    def close(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)


@derived_object
class _Future(PyRunnerFuture):
    def __init__(self, future):
        super().__init__()
        self.future = future

    def done(self) -> bool:
        return self.future.done()

    def result(self) -> RunnerResult:
        try:
            return RunnerResult([self.future.result()], None)
        except Exception as e:  # a candidate that fails to link or run is a failed trial
            return RunnerResult(None, f"IcountRunner: {type(e).__name__}: {str(e)[:800]}")


@derived_object
class IcountRunner(PyRunner):
    """MetaSchedule runner: "seconds" = instructions per call / NOMINAL_HZ."""

    def __init__(self, target: Target, max_workers: int = 2, timeout_sec: float = 120.0):
        super().__init__()
        self.counter = KernelCounter(target, timeout_sec)
        self.pool = ThreadPoolExecutor(max(1, max_workers))

    def _measure(self, artifact_path: str, args_json: list) -> float:
        # MetaSchedule's remove_build_dir callback deletes the candidate's directory.
        return self.counter.count(artifact_path, args_json) / NOMINAL_HZ

    def run(self, runner_inputs):
        return [_Future(self.pool.submit(self._measure, str(ri.artifact_path),
                                         [a.as_json() for a in ri.args_info]))
                for ri in runner_inputs]

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self.counter.close()
