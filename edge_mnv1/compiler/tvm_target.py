"""A target file's [tvm] table -> a tvm.target.Target, resolving the host CPU.

`mcpu = "host"` means this machine: LLVM's name for its CPU plus the features that matter
for code generation. The resulting `cpu_key` keys the tuning records (records tuned on a
Zen 4 with AVX-512 must not be applied on a Zen 3), and `required_features` is written into
the program, which refuses to run on a CPU that lacks one.
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
