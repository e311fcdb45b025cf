"""The loop nest of the integer pointwise kernels that run on a dot-product instruction.

A channels-last 1x1 convolution of uint8 activations by int8 weights into int32 is a GEMM
whose reduction runs over contiguous input channels. Its micro-kernel keeps `rows` pixels x
`vectors` panels of `lanes` output channels in registers and, per step of `depth` input
channels, calls the target's instruction (an `Int8Dot`: VNNI `vpdpbusd`, AVX2 `vpmaddwd`,
NEON `smlal` by element) once per pixel and panel:

    parallel over (pixel tiles, channel panels)
      accumulators = 0
      for each input channel step of `depth`
        for each pixel, panel: acc[pixel, panel] = dot(x[pixel, step], w[panel, step])
      requantization epilogue on the accumulators, stored once as uint8

The weights are prepacked at compile time into the instruction's panel, (O/lanes, ...,
K/depth, lanes, depth), or (..., depth, lanes) for an instruction that multiplies by one
input channel at a time (`k_major`), so each call reads one contiguous block.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import tvm.s_tir as s_tir
import tvm.tirx as tirx

from edge_mnv1.compiler.schedules import blocked
from edge_mnv1.compiler.schedules.anatomy import Anatomy
from edge_mnv1.compiler.schedules.blocked import ACC_SCOPE    # accumulators on the stack
from edge_mnv1.compiler.schedules.tiling import ACC_BYTES, STACK_BYTES


@dataclass(frozen=True)
class Int8Dot:
    intrin: str         # a registered TensorIntrin: C[lanes] += A[depth] . B[panel]
    lanes: int          # int32 output channels per call
    depth: int          # input channels reduced per call
    k_major: bool       # the panel is B[depth, lanes] (else B[lanes, depth])
    rows: int           # pixels per micro-kernel (at most)
    vectors: int        # panels per micro-kernel (at most)
    panel_cost: int     # instructions per step to load a panel, shared by the pixels
    pixel_cost: int     # instructions per step to load a pixel's data, shared by the panels
    dot_cost: int       # instructions per step, pixel and panel: the products
    signed: bool = False  # multiplies int8 activations (else uint8)

    def cost(self) -> float:
        """Instructions per multiply-add of the micro-kernel (the estimate `fit` ranks by)."""
        r, v = self.rows, self.vectors
        return (v * self.panel_cost + r * self.pixel_cost + r * v * self.dot_cost) / \
            (r * v * self.lanes * self.depth)


def fit(sch: s_tir.Schedule, a: Anatomy, dots: list[Int8Dot]) -> Int8Dot | None:
    """The cheapest of `dots` with its tile shrunk to divide the kernel's pixels and
    channels, if the kernel is a channels-last pointwise one of uint8 (or, for a `signed`
    dot, int8) data and int8 weights whose channel counts the instruction divides; else
    None."""
    if a.kind != "pointwise" or a.vector != a.channel or a.weight is None or a.row is None:
        return None
    node = sch.get(a.block)
    if node.writes[0].source.dtype != "int32" or len(a.spatial) != 4:
        return None
    dtypes = sorted(r.source.dtype for r in node.reads
                    if not r.source.same_as(node.writes[0].source))
    depth = [i for i in a.reduce if a.extents[i] > 1]
    if dtypes not in (["int8", "int8"], ["int8", "uint8"]) or len(depth) != 1:
        return None
    return shape(dots, a.extents[a.row], a.extents[a.channel], a.extents[depth[0]],
                 signed=dtypes == ["int8", "int8"])


def shape(dots: list[Int8Dot], row: int, channels: int, depth: int,
          signed: bool) -> Int8Dot | None:
    """The cheapest of `dots` for a kernel of `row` pixels per output row, `channels`
    output channels and `depth` input channels per window position, its tile shrunk to
    divide them; None if no instruction divides the channels."""
    # Pixels along the output's row (fusing rows and columns defeats tensorize's blockize).
    shaped = [replace(d, rows=_divisor(row, d.rows),
                      vectors=_divisor(channels // d.lanes, d.vectors))
              for d in dots if d.signed == signed and not depth % d.depth
              and not channels % d.lanes]
    # A tile of STACK_BYTES or more is a workspace allocation per tile (tiling.STACK_BYTES):
    # take it only when no smaller one fits.
    small = [d for d in shaped if d.rows * d.vectors * d.lanes * ACC_BYTES < STACK_BYTES]
    return min(small or shaped, key=Int8Dot.cost, default=None)


def _divisor(n: int, limit: int) -> int:
    return max(d for d in range(1, limit + 1) if n % d == 0)


def apply(sch: s_tir.Schedule, a: Anatomy, dot: Int8Dot, parallel: bool) -> None:
    """Schedules the kernel in place (`dot` as `fit` returned it)."""
    k_axis = next(i for i in a.reduce if a.extents[i] > 1)
    prepack(sch, a, dot, k_axis)
    if a.epilogue is None:
        a.epilogue = sch.cache_write(a.block, 0, ACC_SCOPE)
    else:
        sch.set_scope(a.block, 0, ACC_SCOPE)
    loops = sch.get_loops(a.block)
    o_out, o_reg, o_lane = sch.split(loops[a.channel], [None, dot.vectors, dot.lanes])
    x_out, x_reg = sch.split(loops[a.row], [None, dot.rows])
    k_out, k_in = sch.split(loops[k_axis], [None, dot.depth])
    piece = {a.channel: o_out, a.row: x_out}
    outer = [piece.get(i, loops[i]) for i in a.spatial]
    units = [loops[i] for i in a.reduce if i != k_axis]        # the 1x1 window
    sch.reorder(*outer, *units, k_out, x_reg, o_reg, o_lane, k_in)
    sch.reverse_compute_at(a.epilogue, outer[-1], preserve_unit_loops=False)
    fused = sch.fuse(*outer)
    if parallel:
        sch.parallel(fused)
    init = sch.decompose_reduction(a.block, units[0] if units else k_out)
    sch.tensorize(o_lane, dot.intrin)
    sch.unroll(x_reg)
    sch.unroll(o_reg)
    for block in (init, a.epilogue):
        blocked.vectorize_tail(sch, block, dot.lanes)


def prepack(sch: s_tir.Schedule, a: Anatomy, dot: Int8Dot, k_axis: int) -> None:
    """The weight (O, 1, 1, K) read through a copy in the instruction's panel layout, which
    lowering.prepack_weights computes at compile time (the layout-rewrite block)."""
    reads = sch.get(a.block).reads
    index = next(i for i, r in enumerate(reads) if r.source.same_as(a.weight))
    copy = sch.cache_read(a.block, index, "global")
    sch.annotate(copy, "meta_schedule.layout_rewrite_preproc", 1)
    o_dim = a.weight_dims.index(a.channel)
    k_dim = a.weight_dims.index(k_axis)
    lanes, depth = dot.lanes, dot.depth

    def panels(*i):
        rest = [v for d, v in enumerate(i) if d not in (o_dim, k_dim)]
        o, k = i[o_dim], i[k_dim]
        inner = [k % depth, o % lanes] if dot.k_major else [o % lanes, k % depth]
        return [o // lanes, *rest, k // depth, *inner]

    sch.transform_layout(a.block, ("read", index),
                         tirx.IndexMap.from_func(panels, ndim=len(a.weight.shape)))

