"""The default schedule of a depthwise + pointwise kernel (compiler/dw_pw_fusion.py).

    parallel for each output row:
      D[W x C] = relu(depthwise(x) + b1) for this row    (W x C x 4 bytes: 14 KB at 112 x 32)
        per tile of R pixels and channel vector: the 3x3 taps unrolled over R accumulators
        in registers, then bias and ReLU on them, stored to D once
      for each tile of R pixels of the row, each weight panel:
        the pointwise micro-kernel of blocked.py on D, its epilogue

The row of D is made just before the pointwise tiles read it, from L1, instead of going out
to L2 or L3 between two kernels. Measured against the two kernels unfused (1.0/224, Zen 4,
`profile`, median of 7): 0.93-0.96x on 2 threads, on par on one.
"""

from __future__ import annotations

import dataclasses

import tvm
import tvm.s_tir as s_tir
import tvm.tirx as tirx

from edge_mnv1 import log
from edge_mnv1.compiler.schedules import blocked, prepack, tiling
from edge_mnv1.compiler.schedules.anatomy import analyse, inline_all, reductions
from edge_mnv1.compiler.tvm_target import VectorUnit

KIND = "depthwise+pointwise"


def apply(func: tirx.PrimFunc, unit: VectorUnit, new_schedule=s_tir.Schedule):
    """(scheduled function, prepacked) for a depthwise + pointwise kernel, else None."""
    sch = new_schedule(func)
    found = reductions(sch)
    if len(found) != 2:
        return None
    dw, pw = found
    middle = _chain(sch, dw, pw)
    if middle is None:
        return None
    for block in middle[:-1]:           # bias and ReLU into the one block that writes D
        sch.compute_inline(block)
    d_block = middle[-1]
    inline_all(sch, keep=frozenset({sch.get(d_block).name_hint}))
    consumers = sch.get_consumers(pw)
    a = analyse(sch, func, (pw, consumers[0] if len(consumers) == 1 else None))
    tile = tiling.choose(a, unit) if a is not None and a.kind == "pointwise" else None
    if tile is None or a.row is None:
        return None
    # Parallel over output rows; each row's pixel tiles and weight panels inside it.
    tile = dataclasses.replace(tile, channels_outer=False)
    packed = blocked.apply(sch, a, tile, prepack.layout_free(func, a.weight), inside=2)
    row = sch.get_loops(pw)[0]
    sch.compute_at(d_block, row, preserve_unit_loops=False)
    sch.compute_at(dw, row, preserve_unit_loops=False)
    try:
        _depthwise_row(sch, dw, d_block, tile.rows, unit, func)
    except (ValueError, s_tir.ScheduleError, tvm.error.InternalError) as err:
        log.info(f"default schedule: a {KIND} kernel kept plain: "
                 f"{str(err).strip().splitlines()[-1][:200]}")
        return None
    return sch.mod["main"], packed


def _chain(sch, dw, pw) -> list | None:
    """The elementwise blocks from the depthwise reduction to the pointwise one (bias, ReLU,
    the pointwise conv's padding copy), if each has that one consumer."""
    chain, block = [], dw
    for _ in range(8):
        consumers = sch.get_consumers(block)
        if len(consumers) != 1:
            return None
        if sch.get(consumers[0]).same_as(sch.get(pw)):
            return chain or None
        block = consumers[0]
        chain.append(block)
    return None


def _depthwise_row(sch, dw, d_block, rows: int, unit: VectorUnit, func) -> None:
    """Under the row loop the depthwise loops are (pixels, channels, 3, 3), unit loops
    dropped; they become blocked.py's micro-kernel with one channel vector of `lanes`."""
    loops = sch.get_loops(dw)[1:]
    if len(loops) != 4 or [_extent(sch, lp) for lp in loops[2:]] != [3, 3] \
            or _extent(sch, loops[0]) % rows:
        raise ValueError("not a row of a 3x3 depthwise conv in whole tiles")
    pixels, channels, ry, rx = loops
    lanes = tiling.lanes_for(unit, _extent(sch, channels))
    p_out, p_in = sch.split(pixels, [None, rows])
    c_out, c_lane = sch.split(channels, [None, lanes])
    sch.reorder(p_out, c_out, ry, rx, p_in, c_lane)
    # Accumulators: a stack array of R vectors (registers); bias and ReLU read them there.
    sch.cache_write(dw, 0, blocked.ACC_SCOPE)
    sch.compute_inline(sch.get_producers(d_block)[0])     # the copy cache_write added
    sch.reverse_compute_at(d_block, c_out, preserve_unit_loops=False)
    for lp in (ry, rx, p_in):
        sch.unroll(lp)
    sch.vectorize(c_lane)
    init = sch.decompose_reduction(dw, ry)
    for block in (init, d_block):
        blocked.vectorize_tail(sch, block, lanes, outer=len(sch.get_loops(block)) - 2)
    free = [b for b in func.params if prepack.layout_free(func, b)]
    weight = next((r.source for r in sch.get(dw).reads
                   if any(r.source.same_as(b) for b in free)), None)
    if weight is not None:      # channels contiguous for the vector (OHWI's O is not)
        prepack.request(sch, dw, weight, 0, lanes)


def _extent(sch, loop) -> int:
    ext = sch.get(loop).extent
    return int(ext) if isinstance(ext, tirx.IntImm) else 0
