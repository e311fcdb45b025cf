"""AArch64 NEON pointwise kernel on 8-bit products, for signed (x - 128) activations.

Where a pointwise convolution reads int8 activations (compiler/integer.py stores a
depthwise output as x - 128 for it, with 128 * sum(w) folded into its bias, when every
weight is in [-127, 127]), the Cortex-A72 multiplies bytes without widening them, the way
gemmlowp's and ONNX Runtime's ARMv8.0 kernels do: per pixel, output channel and step of 16
input channels (contiguous in both the pixel and the OHWI weight row)

    p = smull(x[0:8], w[0:8]) + smull2(x[8:16], w[8:16])   # 8 int16 lanes (smlal2)
    acc += sadalp(p)                                        # adjacent pairs into 4 int32

16 multiply-adds in 3 instructions, no broadcast, no widening. An int16 lane sums two
products of [-128, 127] x [-127, 127], at most 2 x 16256 < 32767: exact (a weight of -128
could reach 32768, hence the weight check). The accumulator of a (pixel, channel) holds 4
partial sums (lane j: input channels 2j, 2j+1, 2j+8, 2j+9 of each step), which the schedule
expresses as an rfactor of the reduction and adds up once per tile before the epilogue.
"""

from __future__ import annotations

import tvm.s_tir as s_tir
import tvm.tirx as tirx
from tvm.script import tirx as T

from edge_mnv1.compiler.schedules import blocked, int8_blocked
from edge_mnv1.compiler.schedules.anatomy import Anatomy
from edge_mnv1.compiler.schedules.blocked import ACC_SCOPE
from edge_mnv1.compiler.schedules.int8_blocked import Int8Dot
from edge_mnv1.compiler.schedules.int8_intrin import implementation, llvm, registrar, store

NEON_S8_DOT_INTRIN = "edge_mnv1_dot_4x16_s8s8i32_neon_smull_sadalp"
PARTIALS = 4        # int32 partial sums per (pixel, channel): one q register


def _dot_s8_desc() -> tirx.PrimFunc:
    @T.prim_func(s_tir=True)
    def desc(
        A: T.Buffer((16,), "int8", offset_factor=1),
        B: T.Buffer((16,), "int8", offset_factor=1),
        C: T.Buffer((4,), "int32", offset_factor=1, scope=ACC_SCOPE),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:4], A[0:16], B[0:16])
            T.writes(C[0:4])
            for j, h, e in T.grid(4, 2, 2):
                with T.sblock("update"):
                    vj, vh, ve = T.axis.remap("SRR", [j, h, e])
                    C[vj] = C[vj] + T.cast(A[vh * 8 + vj * 2 + ve], "int32") * \
                        T.cast(B[vh * 8 + vj * 2 + ve], "int32")
    return desc


def _smull_sadalp(desc: tirx.PrimFunc) -> tirx.PrimFunc:
    """`desc` as smull, smlal2 (int16 lanes: lane l sums products l and l + 8) and sadalp
    (lane j of C adds int16 lanes 2j and 2j + 1): the reduction `desc` states, reordered."""
    a, b, c = desc.params

    def half(buf, h):            # one 16-byte load, its halves for smull and smull2
        return tirx.Shuffle([buf.vload([0], "int8x16")], list(range(h * 8, h * 8 + 8)))

    def smull(h):
        return llvm("int16x8", "llvm.aarch64.neon.smull", half(a, h), half(b, h))
    pairs = smull(0) + smull(1)             # LLVM: smull + smlal2 (wrapping int16 add)
    total = c.vload([0], "int32x4") + llvm(
        "int32x4", "llvm.aarch64.neon.saddlp", pairs)   # add + saddlp -> sadalp
    return implementation(desc, store(c, total, 4))


def _sum_desc(lanes: int) -> tirx.PrimFunc:
    @T.prim_func(s_tir=True)
    def desc(P: T.Buffer((lanes, PARTIALS), "int32", offset_factor=1, scope=ACC_SCOPE),
             C: T.Buffer((lanes,), "int32", offset_factor=1, scope=ACC_SCOPE)) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], P[0:lanes, 0:PARTIALS])
            T.writes(C[0:lanes])
            for i, j in T.grid(lanes, PARTIALS):
                with T.sblock("update"):      # rfactor's order: the partial first
                    vj, vi = T.axis.remap("RS", [j, i])
                    C[vi] = C[vi] + P[vi, vj]
    return desc


def _addp(desc: tirx.PrimFunc, lanes: int) -> tirx.PrimFunc:
    """The partial sums of 4 (2) channels added up by a tree of addp (pairwise add of two
    registers): 3 instructions for 4 channels, 2 for 2."""
    p, c = desc.params

    def addp(x, y):
        return llvm("int32x4", "llvm.aarch64.neon.addp", x, y)
    rows = [p.vload([i, 0], "int32x4") for i in range(lanes)]
    pairs = [addp(rows[i], rows[i + 1]) for i in range(0, lanes, 2)]
    sums = addp(pairs[0], pairs[-1])
    if lanes == 2:
        sums = tirx.Shuffle([sums], [0, 1])
    return implementation(desc, store(c, c.vload([0], f"int32x{lanes}") + sums, lanes))


def _sum_intrin(lanes: int) -> str:
    return f"edge_mnv1_sum_{lanes}x4_i32_neon_addp"


def _intrinsics() -> dict:
    dot = _dot_s8_desc()
    made = {NEON_S8_DOT_INTRIN: (dot, _smull_sadalp(dot))}
    for lanes in (2, 4):
        made[_sum_intrin(lanes)] = (_sum_desc(lanes), _addp(_sum_desc(lanes), lanes))
    return made


register = registrar(_intrinsics)


def dots_for(int8: str) -> list[Int8Dot]:
    """Per step of 16 input channels a tile loads each pixel's and each channel's 16 bytes
    once and spends 3 instructions per (pixel, channel). 32 registers: 4 pixels x 4
    channels (16 accumulators + 8 operands + products) or 7 x 2 where a row has 7 or 14
    pixels."""
    if int8 not in ("neon", "dotprod"):
        return []
    return [Int8Dot(NEON_S8_DOT_INTRIN, lanes=4, depth=16, k_major=False, rows=4, vectors=1,
                    panel_cost=4, pixel_cost=1, dot_cost=12, signed=True),
            Int8Dot(NEON_S8_DOT_INTRIN, lanes=2, depth=16, k_major=False, rows=7, vectors=1,
                    panel_cost=2, pixel_cost=1, dot_cost=6, signed=True)]


def apply(sch: s_tir.Schedule, a: Anatomy, dot: Int8Dot, parallel: bool) -> None:
    """Schedules the kernel in place: `dot.rows` pixels x `dot.lanes` channels per tile, the
    weights prepacked (O/lanes, K/16, lanes, 16), the partial sums an rfactor block."""
    k_axis = next(i for i in a.reduce if a.extents[i] > 1)
    int8_blocked.prepack(sch, a, dot, k_axis)
    loops = sch.get_loops(a.block)
    o_out, o_lane = sch.split(loops[a.channel], [None, dot.lanes])
    x_out, x_reg = sch.split(loops[a.row], [None, dot.rows])
    k_out, k_half, k_pair, k_in = sch.split(loops[k_axis], [None, 2, PARTIALS, 2])
    piece = {a.channel: o_out, a.row: x_out}
    outer = [piece.get(i, loops[i]) for i in a.spatial]
    units = [loops[i] for i in a.reduce if i != k_axis]
    sch.reorder(*outer, *units, k_out, x_reg, o_lane, k_pair, k_half, k_in)
    partial = sch.rfactor(k_pair, factor_axis=len(a.spatial))
    sch.set_scope(partial, 0, ACC_SCOPE)
    total = a.block                            # now sums the partials
    if a.epilogue is not None:
        sch.set_scope(total, 0, ACC_SCOPE)
    outer = sch.get_loops(partial)[:len(a.spatial)]
    sch.reverse_compute_at(total, outer[-1], preserve_unit_loops=False)
    if a.epilogue is not None:
        sch.reverse_compute_at(a.epilogue, outer[-1], preserve_unit_loops=False)
    fused = sch.fuse(*outer)
    if parallel:
        sch.parallel(fused)
    rloops = sch.get_loops(partial)
    init = sch.decompose_reduction(partial, rloops[1])
    inner = sch.get_loops(partial)
    sch.tensorize(inner[-3], dot.intrin)
    sch.unroll(inner[-4])
    sch.unroll(inner[-5])
    blocked.vectorize_tail(sch, init, PARTIALS)
    pair, pixel, channel = sch.get_loops(total)[1:]
    blocked.vectorize_tail(sch, sch.decompose_reduction(total, pair), dot.lanes)
    sch.reorder(pixel, channel, pair)
    sch.tensorize(channel, _sum_intrin(dot.lanes))
    sch.unroll(pixel)
    if a.epilogue is not None:
        blocked.vectorize_tail(sch, a.epilogue, dot.lanes)
