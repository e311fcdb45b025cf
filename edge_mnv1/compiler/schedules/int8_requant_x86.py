"""The requantization epilogue of an integer kernel in 32-bit x86 lanes.

compiler/integer.py writes docs/int8.md's rule as int64 arithmetic: on x86 that is 8 lanes
a zmm, the bias added and the multiplier widened in int64 and multiplied by `vpmullq`. Only
the high multiply needs 64 bits, so a scheduled kernel's epilogue is rewritten into int32
steps on 16 lanes (the matching is int8_requant_neon's), which LLVM lowers as:

    sat_int32(a << left)        the int64 clamp, narrowed (a layer with a multiplier >= 1)
    (a * M + 2^30) >> 31        sext(a) * sext(M) in int64: `vpmuldq` (32 x 32 -> 64 bits)
                                on two halves, the add and shift, narrowed by `vpmovqd`
    (t + 2^(r-1)) >> r          (t >> r) + (((t << 1) >>> r) & 1): the dropped bit r - 1
                                rounds half up; for r = 0 the added bit is 0; no overflow
    clamp(u + z, lo, hi)        clamp(u, lo - z, hi - z) + z, all in int32

x86 has no 32-bit rounding high multiply (`sqrdmulh`), so the product stays 64 bits wide,
but the bias add, the rounding shift and the clamp run on 16 lanes. The accumulator plus bias
is added without LLVM's no-overflow flag (in uint32, the same bits): with the flag LLVM
widens both operands before the add and then cannot prove the sum fits in 32 bits, and
multiplies with `vpmullq` again.
"""

from __future__ import annotations

import tvm.tirx as tirx
from tvm_ffi import structural_map

from edge_mnv1.compiler.schedules.int8_requant_neon import Steps, requantized


def _as(dtype: str, e: tirx.PrimExpr) -> tirx.PrimExpr:
    return tirx.reinterpret(dtype, e)


def _wrapping(a: tirx.PrimExpr) -> tirx.PrimExpr:
    """An int32 sum x + y as the same bits added in uint32 (no nsw flag)."""
    if isinstance(a, tirx.Add) and str(a.ty) == "int32":
        return _as("int32", _as("uint32", a.a) + _as("uint32", a.b))
    return a


def _high(a: tirx.PrimExpr, mult: tirx.PrimExpr) -> tirx.PrimExpr:
    i64 = lambda v: tirx.IntImm("int64", v)  # noqa: E731
    product = tirx.Cast("int64", _wrapping(a)) * tirx.Cast("int64", mult)
    return tirx.Cast("int32", (product + i64(1 << 30)) >> i64(31))


def _rounded(t: tirx.PrimExpr, right: tirx.PrimExpr) -> tirx.PrimExpr:
    """right in [0, 31] (quant.fixedpoint: a shift of at most 62), so no shift is out of
    range; t << 1 may wrap, which keeps bit r - 1 at bit r."""
    u32 = lambda v: tirx.IntImm("uint32", v)  # noqa: E731
    dropped = ((_as("uint32", t) << u32(1)) >> _as("uint32", right)) & u32(1)
    return (t >> right) + _as("int32", dropped)


X86 = Steps(lambda clamp, _a, _left: tirx.Cast("int32", clamp), _high, _rounded)


def rewrite(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """The scheduled kernel with its int64 requantization in int32 steps where it has the
    rule's exact form (any other form keeps its int64 arithmetic)."""
    def on_cast(e):
        new = requantized(e, X86)
        return e if new is None else new
    return structural_map(func, [(tirx.Cast, on_cast)])
