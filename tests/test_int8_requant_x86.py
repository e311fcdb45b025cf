"""The x86 requantization in int32 lanes (compiler/schedules/int8_requant_x86.py): the
same integers as the one reference (quant.fixedpoint.requantize), including the extremes
of the accumulator, the multiplier and both shifts, and a high multiply of vpmuldq."""

import numpy as np
import pytest
import tvm
import tvm.s_tir as s_tir
from tvm import te

from edge_mnv1.compiler.schedules import int8_requant_x86
from edge_mnv1.quant.fixedpoint import INT32_MAX, INT32_MIN, requantize, split_shift

LANES = 64
ZERO, LO, HI = 7, 0, 255


def _epilogue(lanes: int, left_shift: bool) -> tvm.tirx.PrimFunc:
    """integer.py's int64 rule after an int32 bias add, vectorized over `lanes` lanes
    (1: a scalar loop), with or without the left shift (a layer with a multiplier >= 1)."""
    tirx = tvm.tirx
    i64 = lambda v: tirx.IntImm("int64", v)  # noqa: E731
    acc, bias, m, left, right = (te.placeholder((LANES,), "int32", name=n)
                                 for n in ("acc", "bias", "m", "left", "right"))

    total = te.compute((LANES,), lambda i: acc[i] + bias[i], name="total")

    def rule(i):
        wide = lambda e: tirx.Cast("int64", e)  # noqa: E731
        a = tirx.max(tirx.min(wide(total[i]) << wide(left[i]), i64(INT32_MAX)),
                     i64(INT32_MIN)) if left_shift else wide(total[i])
        t = (a * wide(m[i]) + i64(1 << 30)) >> i64(31)
        u = (((t << i64(1)) >> wide(right[i])) + i64(1)) >> i64(1)
        return tirx.Cast("uint8", tirx.max(tirx.min(u + i64(ZERO), i64(HI)), i64(LO)))
    y = te.compute((LANES,), rule, name="y")
    sch = s_tir.Schedule(te.create_prim_func([acc, bias, m, left, right, y]))
    sch.compute_inline(sch.get_sblock("total"))
    if lanes > 1:
        _, lane = sch.split(sch.get_loops(sch.get_sblock("y"))[0], [None, lanes])
        sch.vectorize(lane)
    return sch.mod["main"]


def _extremes(left_shift: bool):
    """Accumulators, biases, multipliers and total shifts at the rule's ends: right shifts
    0, 1, 30, 31, left shifts 30 and 1 (multipliers >= 1), saturating left shifts."""
    rng = np.random.default_rng(0)
    shift = rng.integers(1 if left_shift else 31, 63, LANES)
    shift[:8] = (1, 30, 31, 62, 32, 61, 31, 62) if left_shift else (31, 62, 32, 61) * 2
    left, right = (s.astype(np.int32) for s in split_shift(shift))
    m = rng.integers(1 << 30, 1 << 31, LANES, dtype=np.int64).astype(np.int32)
    m[:2], m[8:10] = ((1 << 30), INT32_MAX), (INT32_MAX, 0)
    acc = rng.integers(-(1 << 26), 1 << 26, LANES, dtype=np.int64)
    acc[4:12] = (INT32_MAX, INT32_MIN, 1 << 30, -(1 << 30) - 1,     # saturating left shifts
                 INT32_MAX, INT32_MIN, INT32_MIN, INT32_MAX)
    acc = acc.astype(np.int32)
    bias = rng.integers(-(1 << 20), 1 << 20, LANES, dtype=np.int64).astype(np.int32)
    bias[4:12] = 0
    return acc, bias, m, left, right, shift


@pytest.mark.parametrize("kind,lanes,left_shift", [
    ("vnni", 16, False), ("vnni", 16, True), ("avx2", 8, False), ("avx2", 8, True),
    ("vnni", 1, True)])
def test_x86_requantization_is_int32_and_bit_exact(kind, lanes, left_shift):
    """The rewritten rule equals the reference; vectorized, its high multiply is vpmuldq on
    even and odd lanes: without a left shift no lane is widened to int64 or narrowed back."""
    from edge_mnv1.compiler.tvm_target import host_features
    need = {"vnni": ["avx512f"], "avx2": ["avx2"]}[kind]
    if not all(f in host_features() for f in need):
        pytest.skip(f"this CPU cannot run {kind} code")
    func = int8_requant_x86.rewrite(_epilogue(lanes, left_shift), kind)
    assert (int8_requant_x86.ROUNDED_OP if kind == "vnni" else int8_requant_x86.HIGH_OP) \
        in func.script()
    target = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu",
                                "mcpu": "znver4" if kind == "vnni" else "haswell"})
    ex = tvm.compile(tvm.IRModule({"main": func}), target=target)
    asm = ex.mod.inspect_source("asm")
    if lanes > 1:
        assert "vpmuldq" in asm and "vpmullq" not in asm
    if lanes > 1 and not left_shift:
        assert not any(op in asm for op in ("vpmovqd", "vpmovzxdq", "vpmovsxdq", "vinserti"))
    acc, bias, m, left, right, shift = _extremes(left_shift)
    out = tvm.runtime.tensor(np.zeros(LANES, np.uint8))
    ex["main"](*(tvm.runtime.tensor(v) for v in (acc, bias, m, left, right)), out)
    want = requantize(acc.astype(np.int64) + bias, m, shift, ZERO, LO, HI)
    np.testing.assert_array_equal(out.numpy(), want)


@pytest.mark.parametrize("kind", ["vnni", "avx2"])
def test_depthwise_requantization_and_narrowing_are_the_rule(kind):
    """The depthwise kernels' own epilogue (int8_depthwise_x86: even/odd vpmuldq, the
    rounding shift without overflow, the packs' clamp and order) at the extremes: the
    accumulator k's lane j is channel 4j + k of the stored bytes."""
    from edge_mnv1.compiler.schedules.int8_depthwise_x86 import _Vec
    from edge_mnv1.compiler.tvm_target import host_features
    need = {"vnni": ["avx512vnni", "avx512vl"], "avx2": ["avx2"]}[kind]
    if not all(f in host_features() for f in need):
        pytest.skip(f"this CPU cannot run the {kind} kernels")
    tirx = tvm.tirx
    lanes = 16 if kind == "vnni" else 8
    vec = _Vec(lanes, kind)
    names = ("acc", "m", "m_odd", "shift", "bit")
    bufs = [tirx.decl_buffer((4, lanes), "int32", n) for n in names]
    out = tirx.decl_buffer((4 * lanes,), "uint8", "out")
    ramp = tirx.Ramp(tirx.IntImm("int32", 0), tirx.IntImm("int32", 1), lanes)
    at = lambda b, k: tirx.BufferLoad(b, [tirx.IntImm("int32", k), ramp])  # noqa: E731
    acc, m, m_odd, shift, bit = bufs
    values = [vec.rounded(vec.high(at(acc, k), at(m, k), at(m_odd, k)), at(shift, k),
                          at(bit, k)) for k in range(4)]
    func = tirx.PrimFunc([*bufs, out], out.vstore([tirx.IntImm("int32", 0)],
                                                  vec.narrowed(values)))
    ex = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}),
                     target=tvm.target.Target({"kind": "llvm", "mcpu": "znver4"
                                               if kind == "vnni" else "haswell"}))
    rng = np.random.default_rng(1)
    n = 4 * lanes
    a = rng.integers(-(1 << 24), 1 << 24, n, dtype=np.int64)
    a[:6] = (INT32_MAX, INT32_MIN, 1 << 30, -(1 << 30), 255 * 128 * 9, -255 * 128 * 9)
    mult = rng.integers(1 << 30, 1 << 31, n, dtype=np.int64)
    mult[:3] = (1 << 30, INT32_MAX, INT32_MAX)
    right = rng.integers(0, 32, n)
    right[:8] = (0, 31, 0, 1, 0, 31, 1, 30)
    grid = lambda v: v.reshape(lanes, 4).T.astype(np.int32)  # noqa: E731  (channel 4j + k)
    odd = grid(mult)[:, np.arange(lanes) | 1]           # the odd lanes' multipliers
    args = [grid(a), grid(mult), odd, grid(np.maximum(right - 1, 0)),
            grid(np.minimum(right, 1))]
    got = tvm.runtime.tensor(np.zeros(n, np.uint8))
    ex["main"](*(tvm.runtime.tensor(np.ascontiguousarray(v)) for v in args), got)
    want = requantize(a, mult, right + 31, 0, 0, 255)
    np.testing.assert_array_equal(got.numpy(), want)
