"""What the integer dot-product intrinsics share: their description, how an implementation is
made from one, and registration on first use.

Every micro-kernel instruction of the int8 pointwise kernels (int8_x86, int8_neon,
int8_neon_sdot) is described the same way, `lanes` int32 accumulators each adding `depth`
products of activations by a weight panel:

    C[i] += A[k] * B[i, k]          (B[k, i] for a `k_major` panel)

and implemented by one statement of LLVM intrinsics on the description's own buffers.

Registration is deferred to first use, and the descriptions are parsed on a thread of their
own: TVMScript's decorator walks its caller's whole stack with source lookups
(`inspect.stack()`), ~0.2 s a description at import time under a deep stack; a fresh
thread's stack is a few frames. Every `compile` and `tune` is a new process, and one that
builds for one CPU family, or no integer kernel, parses none of the others.
"""

from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import tvm.s_tir as s_tir
import tvm.tirx as tirx
from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

from edge_mnv1.compiler.schedules.blocked import ACC_SCOPE   # accumulators on the stack


def dot_desc(lanes: int, depth: int, a_dtype: str = "uint8",
             k_major: bool = False) -> tirx.PrimFunc:
    """C[lanes] (int32) += A[depth] (`a_dtype`) . B (int8: [lanes, depth], or [depth, lanes]
    when `k_major`)."""
    rows, cols = (depth, lanes) if k_major else (lanes, depth)

    @T.prim_func(s_tir=True)
    def desc(
        A: T.Buffer((depth,), a_dtype, offset_factor=1),
        B: T.Buffer((rows, cols), "int8", offset_factor=1),
        C: T.Buffer((lanes,), "int32", offset_factor=1, scope=ACC_SCOPE),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:depth], B[0:rows, 0:cols])
            T.writes(C[0:lanes])
            for i in T.serial(0, lanes):
                for k in T.serial(0, depth):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        if k_major:     # a Python constant: the parser keeps one branch
                            C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vk, vi], "int32")
                        else:
                            C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")
    return desc


def implementation(desc: tirx.PrimFunc, stmt: tirx.Stmt) -> tirx.PrimFunc:
    """A tensor intrinsic's implementation: `desc` with `stmt` as its root block's body."""
    root = desc.body.block
    body = s_tir.SBlock([], root.reads, root.writes, root.name_hint, stmt)
    return desc.with_body(s_tir.SBlockRealize([], True, body))


def store(buffer: tirx.Buffer, value: tirx.PrimExpr, lanes: int) -> tirx.Stmt:
    """buffer[0:lanes] = value (a vector)."""
    return tirx.BufferStore(buffer, value, [tirx.Ramp(0, 1, lanes)])


def word_broadcast(a: tirx.Buffer, lanes: int) -> tirx.PrimExpr:
    """A pixel's 4 activations A[0:4] as one 32-bit word repeated in `lanes` lanes, the
    operand of a 4-deep byte dot product (vpdpbusd, sdot), as 4 * lanes bytes."""
    word = tirx.reinterpret("int32", a.vload([0], f"{a.dtype}x4"))
    return tirx.reinterpret(f"int8x{4 * lanes}", tirx.Broadcast(word, lanes))


def llvm(dtype: str, name: str, *args: tirx.PrimExpr) -> tirx.PrimExpr:
    return tirx.call_llvm_pure_intrin(dtype, name, *args)


def registrar(intrinsics: Callable[[], dict[str, tuple[tirx.PrimFunc, tirx.PrimFunc]]]):
    """A function that registers `intrinsics()` ({name: (description, implementation)})
    the first time it is called, and does nothing after."""
    @functools.cache
    def register() -> None:
        with ThreadPoolExecutor(1) as shallow_stack:
            made = shallow_stack.submit(intrinsics).result()
        for name, (desc, impl) in made.items():
            TensorIntrin.register(name, desc, impl)
    return register
