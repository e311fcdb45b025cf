"""Default schedules: the kernels no tuning record covers, scheduled by construction.

`apply` recognizes a kernel's class from its blocks (anatomy), sizes a register tile for the
target's vector unit (tiling) and builds the register-blocked loop nest (blocked), asking
for prepacked weights where the target allows it (prepack). Kernels of no known class
(transposes, reshapes) return None: the caller keeps its plain default. Integer kernels
(uint8 x int8 -> int32 reduction + requantization epilogue) get the target's dot-product
micro-kernel where they are pointwise (int8_kernels), the register-blocked one otherwise,
on targets with an integer kind (tvm_target.VectorUnit.int8).
"""

from __future__ import annotations

from typing import NamedTuple

import tvm
import tvm.s_tir as s_tir
import tvm.tirx as tirx

from edge_mnv1 import log
from edge_mnv1.compiler.schedules import blocked, dw_pw, int8_kernels, prepack, tiling
from edge_mnv1.compiler.schedules.anatomy import analyse, inline_all
from edge_mnv1.compiler.tvm_target import VectorUnit


class Scheduled(NamedTuple):
    func: tirx.PrimFunc
    kind: str           # pointwise | depthwise | conv | dense | pool
    prepacked: bool     # asks for its weights in panels (lowering.prepack_weights)


def apply(func: tirx.PrimFunc, unit: VectorUnit,
          new_schedule=s_tir.Schedule) -> Scheduled | None:
    """The scheduled kernel, or None for a kernel of no known class. (`new_schedule`: the
    tuner's seeds pass a traced schedule of their own, compiler/tuning/seed.py.)"""
    made = int8_kernels.apply(func, unit)   # an integer kernel on the CPU's own instructions
    if made is not None:
        return Scheduled(made[0], f"{made[1]}-int8", True)
    fused = dw_pw.apply(func, unit, new_schedule)  # depthwise + pointwise, tile by tile
    if fused is not None:
        return Scheduled(fused[0], dw_pw.KIND, fused[1])
    sch = new_schedule(func)
    inline_all(sch)
    anatomy = analyse(sch, func)
    unit = int8_kernels.unit_for(sch, anatomy, unit) if anatomy is not None else None
    tile = tiling.choose(anatomy, unit) if unit is not None else None
    if tile is None:
        return None
    try:
        packed = blocked.apply(sch, anatomy, tile, prepack.layout_free(func, anatomy.weight))
    except (s_tir.ScheduleError, tvm.error.InternalError) as err:
        # A shape the loop nest does not fit: the plain default is slower but correct.
        log.info(f"default schedule: a {anatomy.kind} kernel kept plain: "
                 f"{str(err).strip().splitlines()[-1][:200]}")
        return None
    return Scheduled(int8_kernels.finish_integer(sch.mod["main"], unit), anatomy.kind, packed)
