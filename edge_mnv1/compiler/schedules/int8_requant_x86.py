"""The requantization epilogue of an integer kernel in 32-bit x86 lanes.

compiler/integer.py writes docs/int8.md's rule as int64 arithmetic: on x86 that is 8 lanes
a zmm, the bias added and the multiplier widened in int64 and multiplied by `vpmullq`. Only
the high multiply needs 64 bits, so a scheduled kernel's epilogue is rewritten into int32
steps on 16 lanes (the matching is int8_requant_neon's):

    sat_int32(a << left)        the int64 clamp, narrowed (a layer with a multiplier >= 1)
    (a * M + 2^30) >> 31        `high_even_odd`: `vpmuldq` (32 x 32 -> 64 bits) on the even
                                lanes and on the odd ones shifted down, each rounded in
                                int64 and merged back by a mask: no lane is widened
    (t + 2^(r-1)) >> r          ((t >> max(r-1, 0)) + min(r, 1)) >> min(r, 1): no overflow
                                (|t| <= 2^31 - 2), t for r = 0
    clamp(u + z, lo, hi)        clamp(u, lo - z, hi - z) + z, all in int32

With AVX-512 (integer kind `vnni`) the two middle steps are one rounding in int64 lanes,
`(a * M + (2^30 | 2^(30+r))) >> (31 + r)` (`_product_rounded`: the same integers), on the
even lanes and the odd ones shifted down (`vpmuldq`, `vpaddq`, `vpsravq` each), the two
halves' low words interleaved by one `vpermt2d`: 8 instructions per 16 outputs where the
even/odd product and the int32 rounding shift take 11 (AVX2 has no `vpsravq`).

The even/odd form moves int32 lanes into int64 ones, which a scheduled kernel's lane-wise
epilogue (a vectorized loop of scalar statements) cannot say: the high multiply is written
as a call of this module's own op (`HIGH_OP`, or `ROUNDED_OP` for both steps; lane-wise,
so TVM vectorizes them), which TVM's LowerIntrin, after vectorization, replaces by the
even/odd form on the vector (an odd or single lane: the int64 product). The hand-built depthwise kernels
(int8_depthwise_x86) call `high_even_odd` and `rounded` directly. The accumulator plus bias
is added without LLVM's no-overflow flag (in uint32, the same bits): with the flag LLVM
widens both operands before the add.
"""

from __future__ import annotations

import tvm
import tvm.tirx as tirx
from tvm.ir import register_op_attr
from tvm.tirx.op import register_intrin_lowering
from tvm_ffi import structural_map

from edge_mnv1.compiler.schedules.int8_requant_neon import Steps, requantized

HIGH_OP = "edge_mnv1.x86_high_multiply"   # (a, M) -> (a * M + 2^30) >> 31, int32 lanes
ROUNDED_OP = "edge_mnv1.x86_high_multiply_rounded"   # (a, M, r) -> both steps, AVX-512


def _as(dtype: str, e: tirx.PrimExpr) -> tirx.PrimExpr:
    return tirx.reinterpret(dtype, e)


def imm(value: int, dtype: str = "int32", lanes: int = 1) -> tirx.PrimExpr:
    """An integer constant, broadcast to `lanes` lanes if more than one."""
    scalar = tirx.IntImm(dtype, value)
    return scalar if lanes == 1 else tirx.Broadcast(scalar, lanes)


def high_even_odd(a, mult, mult_odd, lanes: int) -> tirx.PrimExpr:
    """(a * M + 2^30) >> 31 on `lanes` int32 lanes (an even number): vpmuldq (the low
    32 bits of each int64 lane, sign-extended) on the even lanes and on the odd ones
    shifted down (`mult_odd`: the odd lanes' multipliers in the even ones), each rounded in
    int64 and merged back by a mask."""
    i64 = f"int64x{lanes // 2}"
    wide = lambda v: _as(i64, v)  # noqa: E731
    s32, half = imm(32, "int64", lanes // 2), imm(1 << 30, "int64", lanes // 2)
    low32 = lambda v: (wide(v) << s32) >> s32  # noqa: E731  (sign-extended low half)
    even = low32(a) * low32(mult)
    odd = (wide(a) >> s32) * low32(mult_odd)
    low = imm(0xFFFFFFFF, "int64", lanes // 2)
    merged = (((even + half) >> imm(31, "int64", lanes // 2)) & low) | \
        (((odd + half) << imm(1, "int64", lanes // 2)) & ~low)
    return _as(f"int32x{lanes}", merged)


def rounded(t, shift, bit) -> tirx.PrimExpr:
    """(t + 2^(r-1)) >> r, t for r = 0, as ((t >> shift) + bit) >> bit with shift =
    max(r - 1, 0) and bit = min(r, 1): no overflow, as |t| <= 2^31 - 2."""
    return ((t >> shift) + bit) >> bit


def _lowered_high(call) -> tirx.PrimExpr:
    """HIGH_OP after vectorization: the even/odd form on an even number of lanes, the
    int64 product otherwise."""
    a, mult = call.args
    lanes = tvm.DataType(str(a.ty)).lanes
    if lanes % 2 == 0:
        mult_odd = _as(f"int32x{lanes}", _as(f"int64x{lanes // 2}", mult)
                       >> imm(32, "int64", lanes // 2))
        return high_even_odd(a, mult, mult_odd, lanes)
    wide = f"int64x{lanes}" if lanes > 1 else "int64"
    product = tirx.Cast(wide, a) * tirx.Cast(wide, mult)
    return tirx.Cast(str(a.ty), (product + imm(1 << 30, "int64", lanes))
                     >> imm(31, "int64", lanes))


def _product_rounded(a, mult, right, dtype: str) -> tirx.PrimExpr:
    """((a * M + 2^30) >> 31 + 2^(r-1)) >> r in one rounding: (a * M + R) >> (31 + r) with
    R = 2^30 | 2^(30 + r) (2^30 for r = 0), int64 lanes holding int32 values. The same
    floor: floor((floor(x / 2^31) + k) / 2^r) = floor((x + k 2^31) / 2^(31 + r)); no
    overflow: |a * M| < 2^62 and R <= 2^30 + 2^61."""
    lanes = tvm.DataType(dtype).lanes
    one, r30 = imm(1, "int64", lanes), right + imm(30, "int64", lanes)
    rounding = imm(1 << 30, "int64", lanes) | (one << r30)
    return (a * mult + rounding) >> (r30 + one)


def _lowered_rounded(call) -> tirx.PrimExpr:
    """ROUNDED_OP after vectorization: on an even number of lanes, vpmuldq on the even
    lanes and on the odd ones shifted down, each rounded and shifted in int64 (vpsravq,
    AVX-512), their low halves interleaved back (vpermt2d); the int64 product otherwise."""
    a, mult, right = call.args
    lanes = tvm.DataType(str(a.ty)).lanes
    if lanes % 2:
        wide = f"int64x{lanes}" if lanes > 1 else "int64"
        as64 = lambda v: tirx.Cast(wide, v)  # noqa: E731
        return tirx.Cast(str(a.ty), _product_rounded(as64(a), as64(mult), as64(right), wide))
    i64, half = f"int64x{lanes // 2}", lanes // 2
    s32 = imm(32, "int64", half)
    low = lambda v: (_as(i64, v) << s32) >> s32  # noqa: E731  (sign-extended low half)
    high = lambda v: _as(i64, v) >> s32  # noqa: E731
    even = _product_rounded(low(a), low(mult), low(right), i64)
    odd = _product_rounded(high(a), high(mult), high(right), i64)
    i32 = f"int32x{lanes}"
    order = [imm(j if j % 2 == 0 else lanes + j - 1) for j in range(lanes)]
    return tirx.Shuffle([_as(i32, even), _as(i32, odd)], order)


def _register() -> None:
    for name, lowered in ((HIGH_OP, _lowered_high), (ROUNDED_OP, _lowered_rounded)):
        register_op_attr(name, "TCallEffectKind", 1)      # pure
        register_op_attr(name, "TVectorizable", True)
        register_op_attr(name, "TScriptPrinterName", name)
        for target in ("llvm", "default"):
            register_intrin_lowering(name, target, f=lowered, level=10)


_register()


def _wrapping(a: tirx.PrimExpr) -> tirx.PrimExpr:
    """An int32 sum x + y as the same bits added in uint32 (no nsw flag)."""
    if isinstance(a, tirx.Add) and str(a.ty) == "int32":
        return _as("int32", _as("uint32", a.a) + _as("uint32", a.b))
    return a


def _call(name: str, *args) -> tirx.PrimExpr:
    return tvm.ir.expr.Call(tvm.ir.Op.get(name), list(args), ret_ty="int32")


def _high(a: tirx.PrimExpr, mult: tirx.PrimExpr) -> tirx.PrimExpr:
    return _call(HIGH_OP, _wrapping(a), mult)


def _rounded(t: tirx.PrimExpr, right: tirx.PrimExpr) -> tirx.PrimExpr:
    """right in [0, 31] (quant.fixedpoint: a shift of at most 62)."""
    return rounded(t, tirx.Max(right - imm(1), imm(0)), tirx.Min(right, imm(1)))


def _rounded_avx512(t: tirx.PrimExpr, right: tirx.PrimExpr) -> tirx.PrimExpr:
    """Both steps in one op where t is the high multiply (AVX-512 shifts int64 lanes by a
    vector: vpsravq; AVX2 cannot)."""
    if isinstance(t, tvm.ir.expr.Call) and t.op.same_as(tvm.ir.Op.get(HIGH_OP)):
        return _call(ROUNDED_OP, *t.args, right)
    return _rounded(t, right)


_SATURATED_LEFT = lambda clamp, _a, _left: tirx.Cast("int32", clamp)  # noqa: E731
X86 = {"avx2": Steps(_SATURATED_LEFT, _high, _rounded),
       "vnni": Steps(_SATURATED_LEFT, _high, _rounded_avx512)}


def rewrite(func: tirx.PrimFunc, kind: str = "avx2") -> tirx.PrimFunc:
    """The scheduled kernel with its int64 requantization in int32 steps where it has the
    rule's exact form (any other form keeps its int64 arithmetic); `kind` the target's
    integer kind (vnni: AVX-512)."""
    def on_cast(e):
        new = requantized(e, X86[kind])
        return e if new is None else new
    return structural_map(func, [(tirx.Cast, on_cast)])
