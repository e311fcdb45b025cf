"""Only the CPU tensor intrinsics of TVM.

The first import of `tvm.s_tir.tensor_intrin` (MetaSchedule's tuning context does it, and so
does any `from tvm.s_tir.tensor_intrin.arm_cpu import ...`) runs a package `__init__` that
registers the intrinsics of every backend TVM ships: CUDA's alone are ~20 s of CPU parsing
TVMScript, ROCm's and Hexagon's another ~6 s, paid by every process that tunes or names one
intrinsic. The project builds for CPUs only, so `install` (run when edge_mnv1.compiler is
imported) makes that package import without its `__init__`: each submodule then imports when
something names it, and `load` imports the CPU ones where TVM looks intrinsics up by name
(MetaSchedule's rules for a CPU, a tuning record's trace).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys

PACKAGE = "tvm.s_tir.tensor_intrin"


class _EmptyPackage(importlib.abc.Loader):
    def create_module(self, spec):
        return None  # the default module object, with the package's search path

    def exec_module(self, module) -> None:
        pass  # TVM's __init__ would import every backend's intrinsics


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != PACKAGE:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.submodule_search_locations is not None:
            spec.loader = _EmptyPackage()
        return spec


def install() -> None:
    """Idempotent; nothing changes for a process that already imported the package."""
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())


def load(triple: str) -> None:
    """Registers the intrinsics of the CPU family of an LLVM target triple."""
    install()
    arm = triple.startswith(("aarch64", "arm", "thumb"))
    module = PACKAGE + (".arm_cpu" if arm else ".x86")
    importlib.import_module(module)
