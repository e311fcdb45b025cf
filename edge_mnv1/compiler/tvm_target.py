"""A target file's [tvm] table -> a tvm.target.Target, resolving the host CPU.

`mcpu = "host"` means this machine: LLVM's name for its CPU plus the features that matter
for code generation. The resulting `cpu_key` keys the tuning records (records tuned on a
Zen 4 with AVX-512 must not be applied on a Zen 3), and `required_features` is written into
the program, which refuses to run on a CPU that lacks one. `vector_unit` reads off a TVM
target what the default schedules are sized by (compiler/schedules/).
"""

from __future__ import annotations

from dataclasses import dataclass

import tvm
import tvm.target.codegen as llvm_codegen

from edge_mnv1.artifact.target import Target

# x86 features whose presence changes the code LLVM emits for our kernels.
_X86_FEATURES = ["avx2", "fma", "avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512vnni"]


@dataclass(frozen=True)
class ResolvedTarget:
    target: Target
    tvm_target: tvm.target.Target
    cpu_key: str                 # names the tuning records directory
    required_features: tuple     # checked by the program at start-up (x86 only)
    triple: str

    @property
    def runs_here(self) -> bool:
        """Kernels built for this target can be timed on this machine (the host target)."""
        return self.target.tvm["target"].get("mcpu") == "host"


@dataclass(frozen=True)
class VectorUnit:
    """What a default schedule is sized by: fp32 lanes per vector register, how many such
    registers (accumulators + operands of a micro-kernel), and whether loops may run on a
    thread pool (a Linux program has one; bare-metal firmware runs on one core)."""
    lanes: int
    registers: int
    parallel: bool
    int8: str = ""      # integer dot product: vnni | avx2 | neon | dotprod ("": none)


def vector_unit(tvm_target: tvm.target.Target) -> VectorUnit:
    """Derived from the TVM target's triple, CPU and features (LLVM knows what an mcpu
    implies, so `mcpu = "skylake-avx512"` counts as AVX-512 without an mattr)."""
    triple = str(tvm_target.attrs.get("mtriple", ""))
    parallel = "-none" not in triple                    # bare metal: no threads

    def has(feature: str) -> bool:
        return bool(llvm_codegen.target_has_features(feature, tvm_target))

    if triple.startswith(("x86_64", "i686", "i386")):
        int8 = "vnni" if has("avx512vnni") else ("avx2" if has("avx2") else "")
        if has("avx512f"):
            return VectorUnit(16, 32, parallel, int8)
        return VectorUnit(8, 16, parallel, int8) if has("avx2") else VectorUnit(4, 16, parallel)
    if triple.startswith(("aarch64", "arm64")):         # NEON: 32 x 128-bit
        return VectorUnit(4, 32, parallel, "dotprod" if has("dotprod") else "neon")
    if triple.startswith(("thumb", "arm")):
        if has("mve.fp"):
            return VectorUnit(4, 8, parallel)          # Helium: 8 x 128-bit Q registers
        if has("neon"):
            return VectorUnit(4, 16, parallel)         # Armv7-A NEON: 16 Q registers
        if has("fp-armv8d16sp") or has("vfp2sp") or has("vfp4d16sp"):
            return VectorUnit(1, 32, parallel)         # scalar FPU: s0-s31
    return VectorUnit(1, 16, parallel)


def host_features() -> list[str]:
    flags = set()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    alias = {"avx512vnni": "avx512_vnni"}
    return [f for f in _X86_FEATURES if f in flags or alias.get(f) in flags]


def resolve(target: Target) -> ResolvedTarget:
    spec = dict(target.tvm["target"])
    required: tuple = ()
    if spec.get("mcpu") == "host":
        cpu = llvm_codegen.llvm_get_system_cpu()
        feats = host_features()
        spec["mcpu"] = cpu
        # Say exactly which vector extensions the code may use: a VM can hide some.
        spec["mattr"] = [f"+{f}" for f in feats]
        spec.setdefault("num-cores", _online_cores())
        required = tuple(feats)
        vec = "avx512" if "avx512f" in feats else ("avx2" if "avx2" in feats else "sse")
        cpu_key = f"{target.name}-{cpu}-{vec}"
    else:
        cpu_key = f"{target.name}-{spec.get('mcpu', 'generic')}"
    return ResolvedTarget(target=target, tvm_target=tvm.target.Target(spec), cpu_key=cpu_key,
                          required_features=required, triple=spec.get("mtriple", ""))


def _online_cores() -> int:
    import os

    return len(os.sched_getaffinity(0))
