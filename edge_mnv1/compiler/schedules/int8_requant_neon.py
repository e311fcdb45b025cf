"""The requantization epilogue of an integer kernel in 32-bit NEON instructions.

compiler/integer.py writes docs/int8.md's rule as int64 arithmetic, which every target can
run; on AArch64 that is 2-lane vectors and ~12 instructions an output. The same integers are
three NEON instructions on 4 lanes, so a scheduled kernel's epilogue is rewritten into them:

    sat_int32(a << left)          sqshl(a, left)
    (a * M + 2^30) >> 31          sqrdmulh(a, M) = (2*a*M + 2^31) >> 32, which saturates
                                  only for a = M = -2^31 (M is in [2^30, 2^31) or 0)
    ((t << 1 >> r) + 1) >> 1      srshl(t, -r): (t + 2^(r-1)) >> r rounded half up, t if r = 0
    clamp(u + z, lo, hi)          clamp(u, lo - z, hi - z) + z, all in int32 (no overflow)

LLVM cannot split these intrinsics across registers, so each vectorized loop holding one is
split into 4-lane vectors (one register), the outer part unrolled. The matching is shared
with x86 (int8_requant_x86), which spells the three steps in its own int32 instructions.
"""

from __future__ import annotations

from functools import cache
from typing import Callable, NamedTuple

import tvm.tirx as tirx
from tvm.ir.expr import Call
from tvm_ffi import structural_map, structural_walk

LANES = 4           # int32 lanes of a NEON register
_HIGH_MUL = "llvm.aarch64.neon.sqrdmulh"


def _intrin(name: str, *args) -> tirx.PrimExpr:
    return tirx.call_llvm_pure_intrin("int32", name, *args)


def _int32_of(e) -> tirx.PrimExpr | None:
    """x where e is cast(int64, x) of an int32 x."""
    if isinstance(e, tirx.Cast) and str(e.ty) == "int64" and str(e.value.ty) == "int32":
        return e.value
    return None


def _is(e, value: int) -> bool:
    return isinstance(e, tirx.IntImm) and e.value == value


class Steps(NamedTuple):
    """A target's int32 spelling of the rule's three steps (all operands int32)."""
    saturated_left: Callable    # (the int64 clamp, a, left) -> sat_int32(a << left)
    high: Callable              # (a, M) -> (a * M + 2^30) >> 31
    rounded: Callable           # (t, right) -> (t + 2^(right-1)) >> right, t if right = 0


NEON = Steps(
    lambda _, a, left: _intrin("llvm.aarch64.neon.sqshl", a, left),
    lambda a, mult: _intrin(_HIGH_MUL, a, mult),
    lambda t, right: _intrin("llvm.aarch64.neon.srshl", t, tirx.IntImm("int32", 0) - right))


def _saturated_left(e, steps: Steps) -> tirx.PrimExpr | None:
    """max(min(cast(a) << cast(left), 2^31 - 1), -2^31)  ->  sqshl(a, left)."""
    if not (isinstance(e, tirx.Max) and _is(e.b, -(1 << 31)) and isinstance(e.a, tirx.Min)
            and _is(e.a.b, (1 << 31) - 1) and isinstance(e.a.a, tirx.LShift)):
        return None
    a, left = _int32_of(e.a.a.a), _int32_of(e.a.a.b)
    return None if a is None or left is None else steps.saturated_left(e, a, left)


def _high(e, steps: Steps) -> tirx.PrimExpr | None:
    """(a * M + 2^30) >> 31  ->  sqrdmulh(a, M)."""
    if not (isinstance(e, tirx.RShift) and _is(e.b, 31) and isinstance(e.a, tirx.Add)
            and _is(e.a.b, 1 << 30) and isinstance(e.a.a, tirx.Mul)):
        return None
    product = e.a.a
    a = _int32_of(product.a)
    a = a if a is not None else _saturated_left(product.a, steps)
    mult = _int32_of(product.b)
    return None if a is None or mult is None else steps.high(a, mult)


def _rounded(e, steps: Steps) -> tirx.PrimExpr | None:
    """((t << 1 >> r) + 1) >> 1  ->  srshl(t, -r); a bare high multiply as itself."""
    if (isinstance(e, tirx.RShift) and _is(e.b, 1) and isinstance(e.a, tirx.Add)
            and _is(e.a.b, 1) and isinstance(e.a.a, tirx.RShift)
            and isinstance(e.a.a.a, tirx.LShift) and _is(e.a.a.a.b, 1)):
        t, right = _high(e.a.a.a.a, steps), _int32_of(e.a.a.b)
        if t is None or right is None:
            return None
        return steps.rounded(t, right)
    return _high(e, steps)


def requantized(e: tirx.Cast, steps: Steps = NEON) -> tirx.PrimExpr | None:
    """cast(uint8, max(min(u [+ z], hi), lo)) of the int64 rule, in int32 `steps` (or
    cast(int8, ...): an activation stored as x - 128, compiler/integer.py)."""
    if not (str(e.ty) in ("uint8", "int8") and isinstance(e.value, tirx.Max)
            and isinstance(e.value.b, tirx.IntImm) and isinstance(e.value.a, tirx.Min)
            and isinstance(e.value.a.b, tirx.IntImm)):
        return None
    lo, hi, core = e.value.b.value, e.value.a.b.value, e.value.a.a
    zero = 0
    if isinstance(core, tirx.Add) and isinstance(core.b, tirx.IntImm):
        zero, core = core.b.value, core.a
    elif isinstance(core, tirx.Sub) and isinstance(core.b, tirx.IntImm):
        zero, core = -core.b.value, core.a
    u = _rounded(core, steps)
    if u is None:
        return None
    i32 = lambda v: tirx.IntImm("int32", v)  # noqa: E731
    clamped = tirx.Max(tirx.Min(u, i32(hi - zero)), i32(lo - zero))
    return tirx.Cast(str(e.ty), clamped + i32(zero) if zero else clamped)


def _high_muls(node) -> int:
    """How many sqrdmulh calls `node` holds."""
    found = []

    def visit(call):
        if call.op.name == "tirx.call_llvm_pure_intrin" and _is(call.args[0], _high_mul_id()):
            found.append(call)
    structural_walk(node, [(Call, visit)])
    return len(found)


@cache
def _high_mul_id() -> int:
    from tvm.target import codegen       # LLVM's intrinsic table, looked up once
    return codegen.llvm_lookup_intrinsic_id(_HIGH_MUL)


def _split(loop: tirx.For) -> tirx.For:
    """for v in vectorized(n)  ->  for o in unroll(n / 4): for i in vectorized(4)."""
    extent = loop.extent
    if (loop.kind != tirx.ForKind.VECTORIZED or not isinstance(extent, tirx.IntImm)
            or extent.value % LANES or extent.value == LANES or not _high_muls(loop.body)):
        return loop
    v = loop.loop_var
    outer, inner = tirx.Var(v.name + "_o", v.ty), tirx.Var(v.name + "_i", v.ty)
    index = outer * tirx.IntImm(str(v.ty), LANES) + inner
    body = structural_map(loop.body, [(tirx.Var, lambda x: index if x.same_as(v) else x)])
    zero = tirx.IntImm(str(v.ty), 0)
    return tirx.For(outer, zero, tirx.IntImm(str(v.ty), extent.value // LANES),
                    tirx.ForKind.UNROLLED,
                    tirx.For(inner, zero, tirx.IntImm(str(v.ty), LANES),
                             tirx.ForKind.VECTORIZED, body))


def rewrite(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """The scheduled kernel with its int64 requantization in NEON intrinsics, where it has
    the rule's exact form and runs in a vectorized loop of a multiple of 4 lanes (a scalar
    epilogue keeps the int64 form: AArch64 has no 32-bit scalar srshl)."""
    def on_cast(e):
        new = requantized(e)
        return e if new is None else new
    rewritten = structural_map(func, [(tirx.Cast, on_cast)])
    if rewritten.same_as(func):
        return func
    split = structural_map(rewritten, [(tirx.For, _split)])
    return split if _all_vectorized(split) else func


def _all_vectorized(func: tirx.PrimFunc) -> bool:
    """Every intrinsic call sits in a 4-lane vectorized loop (or a 2-lane one, a d register:
    the 2-channel tiles of int8_neon_s8)."""
    inside = []

    def on_for(loop):
        if loop.kind == tirx.ForKind.VECTORIZED and (_is(loop.extent, LANES)
                                                      or _is(loop.extent, 2)):
            inside.append(_high_muls(loop.body))
    structural_walk(func, [(tirx.For, on_for)])
    return sum(inside) == _high_muls(func)
