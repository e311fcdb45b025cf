"""Kernels -> code for the target: an object file from LLVM, or C source for the target's
own compiler. Also reads back how much workspace the kernels can ask for."""

from __future__ import annotations

import re
from pathlib import Path

import tvm
from tvm import tirx

from edge_mnv1.errors import ToolError

_WS_LLVM = re.compile(r"call ptr %\w+\(i32 \d+, i32 %?\w+, i64 (\d+), i32 \d+, i32 \d+\)")
_WS_C = re.compile(r"TVMBackendAllocWorkspace\(\s*\d+,\s*[\w()]+,\s*\(uint64_t\)\s*(\d+)")
_DEFINE = re.compile(r"^define .*@(\S+?)\(", re.M)
_LAMBDA_REF = re.compile(r"@(__tvm_parallel_lambda(?:\.\d+)?)\b")
_WS_ALIGN = 64


def kernel_module(mod: tvm.IRModule) -> tvm.IRModule:
    """The PrimFuncs alone, each exported under its own name."""
    funcs = {}
    for gv, f in mod.functions.items():
        if isinstance(f, tirx.PrimFunc):
            funcs[gv.name_hint] = f.with_attr("global_symbol", gv.name_hint)
    return tvm.IRModule(funcs)


def build(kmod: tvm.IRModule, tvm_target, emit: str, out_dir: Path, disable_asserts: bool):
    """Writes kernels.o (emit="llvm") or kernels.c (emit="c"); returns (path, workspace bytes)."""
    config = {"tirx.disable_assert": bool(disable_asserts)}
    try:
        with tvm.transform.PassContext(opt_level=3, config=config):
            if emit == "c":
                ex = tvm.compile(kmod, target=tvm.target.Target({"kind": "c"}))
            else:
                ex = tvm.compile(kmod, target=tvm_target)
    except Exception as e:
        raise ToolError(f"TVM could not build the kernels for {tvm_target}: "
                         f"{type(e).__name__}: {str(e)[:300]}") from None
    rt = ex.mod
    if emit == "c":
        src = rt.inspect_source()
        path = out_dir / "kernels.c"
        path.write_text(src)
        ws = _workspace_c(src)
    else:
        path = out_dir / "kernels.o"
        rt.write_to_file(str(path))
        ws = _workspace_llvm(rt.inspect_source("ll"))
    return path, ws


def _workspace_llvm(ll: str) -> int:
    """Upper bound of workspace one thread may hold at once: the largest sum of the
    allocations of one kernel (<kernel>, <kernel>_compute_) and of the parallel bodies it
    launches (`__tvm_parallel_lambda.N`, named after no kernel: attributed to the function
    that refers to them). The calling thread runs task 0 of a parallel loop while the
    kernel's own allocations are held, so the two add up."""
    per_fn: dict[str, int] = {}
    refers: dict[str, str] = {}  # lambda -> the function whose body names it
    current = None
    for line in ll.splitlines():
        m = _DEFINE.match(line)
        if m:
            current = m.group(1).strip('"')
            continue
        if current is None:
            continue
        m = _WS_LLVM.search(line)
        if m:
            per_fn[current] = per_fn.get(current, 0) + int(m.group(1)) + _WS_ALIGN
        for lam in _LAMBDA_REF.findall(line):
            if lam != current:
                refers.setdefault(lam, current)

    def owner(name: str) -> str:
        seen = set()
        while name in refers and name not in seen:  # a lambda launched from a lambda
            seen.add(name)
            name = refers[name]
        return name

    return _group_max({f"{owner(n)}#{n}": size for n, size in per_fn.items()})


def _workspace_c(src: str) -> int:
    per_fn: dict[str, int] = {}
    current = None
    for line in src.splitlines():
        m = re.match(r"^\S.*?\b(\w+)\(void\* self", line) or re.match(r"^\S.*?\b(\w+_compute_\w*)\(", line)
        if m:
            current = m.group(1)
        m = _WS_C.search(line)
        if m and current:
            per_fn[current] = per_fn.get(current, 0) + int(m.group(1)) + _WS_ALIGN
    return _group_max(per_fn)


def _group_max(per_fn: dict[str, int]) -> int:
    groups: dict[str, int] = {}
    for name, size in per_fn.items():
        base = re.sub(r"^__tvm_ffi_", "", name.split("#")[0]).split("_compute_")[0]
        groups[base] = groups.get(base, 0) + size
    return max(groups.values(), default=0)
