"""The register-blocked loop nest every default schedule shares.

    parallel over the output's tiles (weight panels first or last)   (Linux targets only)
      accumulators = 0                                  (rows x vectors, in registers)
      for each reduction step (channels, window taps)   (taps unrolled)
        for each row, vector: acc += data * weight      (unrolled; lanes vectorized)
      epilogue (bias, ReLU, division) on the accumulators, stored once

The reduction is the outermost loop of the micro-kernel, so each weight panel and data value
is loaded once per step and every accumulator stays in a register for the whole reduction.
For a channels-last output the vector runs along output channels and the rows are pixels
(data broadcast, weights prepacked into panels); channels-first, the vector runs along the
output row and the rows are output channels (weights broadcast).
"""

from __future__ import annotations

import tvm.s_tir as s_tir

from edge_mnv1.compiler.schedules import prepack
from edge_mnv1.compiler.schedules.anatomy import Anatomy
from edge_mnv1.compiler.schedules.tiling import Tile

# The tile's accumulators: a "global" allocation under 1 KB inside a kernel is a stack array
# (TVM's LowerTVMBuiltin), which LLVM promotes to registers; a "local" one is a workspace
# allocation and release per tile (two calls into the runtime; 0.02 instructions per int8
# multiply-add at rpi4 1.0/224) and a round trip through memory before the epilogue.
# (Tiles are kept under 1 KB: tiling.STACK_BYTES.)
ACC_SCOPE = "global"


def apply(sch: s_tir.Schedule, a: Anatomy, tile: Tile, layout_free: bool,
          inside: int = 0) -> bool:
    """Returns whether it asked for the weights in panels. inside: how many of the innermost
    tile loops (pixel tiles along the row, then weight panels) stay loops of their own
    under the parallel one instead of being fused into it; with panels innermost, a
    producer computed at the parallel loop then serves all of them (dw_pw.py)."""
    if a.epilogue is None:
        a.epilogue = sch.cache_write(a.block, 0, ACC_SCOPE)
    else:
        sch.set_scope(a.block, 0, ACC_SCOPE)
    loops = sch.get_loops(a.block)
    v_out, v_reg, v_lane = sch.split(loops[a.vector], [None, tile.vectors, tile.lanes])
    x_out, x_reg = sch.split(loops[a.row], [None, tile.rows]) if a.row is not None \
        else (None, None)
    piece = {a.vector: v_out, a.row: x_out}
    outer = [piece.get(i, loops[i]) for i in a.spatial]
    if a.channel is not None:
        # Weight panels outermost: one stays in cache while all pixels stream by; else
        # innermost: a pixel tile stays in cache while the panels stream by.
        panel = piece.get(a.channel, loops[a.channel])
        rest = [lp for lp in outer if not lp.same_as(panel)]
        outer = [panel] + rest if tile.channels_outer else rest + [panel]
    reduction = [loops[i] for i in a.reduce]
    inner = [lp for lp in (x_reg, v_reg) if lp is not None]
    sch.reorder(*outer, *reduction, *inner, v_lane)
    sch.reverse_compute_at(a.epilogue, outer[-1], preserve_unit_loops=False)
    lead = 1 + inside           # loops above the epilogue's and the init's own
    outer = outer[:len(outer) - inside]
    fused = sch.fuse(*outer) if len(outer) > 1 else outer[0]
    if tile.parallel:
        sch.parallel(fused)
    for lp in inner + (reduction if tile.unroll_reduction else []):
        sch.unroll(lp)
    sch.vectorize(v_lane)
    vectorize_tail(sch, a.epilogue, tile.lanes, lead)
    # After the loops are annotated (an update block alone is not a reduction to vectorize).
    vectorize_tail(sch, sch.decompose_reduction(a.block, reduction[0]), tile.lanes, lead)

    dim = _weight_dim(a)
    packed = layout_free and dim is not None
    if packed:
        prepack.request(sch, a.block, a.weight, dim, tile.vectors * tile.lanes)
    return packed


def _weight_dim(a: Anatomy) -> int | None:
    """The weight dimension the vectorized loop runs along, if it is not already the
    contiguous one (OHWI weights of a channels-last conv: O)."""
    if a.weight is None or a.vector not in a.weight_dims:
        return None
    dim = a.weight_dims.index(a.vector)
    return None if dim == len(a.weight_dims) - 1 else dim


def vectorize_tail(sch: s_tir.Schedule, block, lanes: int, outer: int = 1) -> None:
    """The loops of `block` below the `outer` outer ones: one loop, split into vectors of
    `lanes` (vectorized) and the rest (unrolled)."""
    loops = sch.get_loops(block)[outer:]
    if not loops:
        return
    tail = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    rest, lane = sch.split(tail, [None, lanes])
    sch.vectorize(lane)
    sch.unroll(rest)
