"""Which integer micro-kernel a kernel gets on this target (compiler/tvm_target.py:
`VectorUnit.int8`): on x86 the depthwise 3x3 and the first conv have kernels of their own
(int8_depthwise_x86, int8_first_conv_x86); a channels-last pointwise convolution of uint8 by
int8 whose weights may be prepacked runs on the CPU's dot-product instruction; None for every
other kernel, which then gets the register-blocked default (blocked.py, int32 lanes)."""

from __future__ import annotations

from dataclasses import replace

import tvm
import tvm.s_tir as s_tir
import tvm.tirx as tirx

from edge_mnv1 import log
from edge_mnv1.compiler.schedules import (int8_blocked, int8_depthwise_x86,
                                          int8_first_conv_x86, int8_neon, int8_neon_s8,
                                          int8_neon_sdot, int8_requant_neon,
                                          int8_requant_x86, int8_x86, prepack)
from edge_mnv1.compiler.schedules.anatomy import analyse, inline_all
from edge_mnv1.compiler.tvm_target import VectorUnit


def dots_for(unit: VectorUnit) -> list[int8_blocked.Int8Dot]:
    return (int8_x86.dots_for(unit.int8) + int8_neon.dots_for(unit.int8)
            + int8_neon_s8.dots_for(unit.int8) + int8_neon_sdot.dots_for(unit.int8))


def register_intrinsics(unit: VectorUnit) -> None:
    """Registers the project's tensor intrinsics of the unit's integer kind, on first use:
    before a default schedule or a tuning record's trace names them (int8_intrin)."""
    for module in (int8_x86, int8_neon, int8_neon_s8, int8_neon_sdot):
        if module.dots_for(unit.int8):
            module.register()


def apply(func: tirx.PrimFunc, unit: VectorUnit) -> tuple[tirx.PrimFunc, str] | None:
    """(the scheduled kernel, its class) for an integer kernel with a kernel of its own on
    this target's instructions, else None."""
    register_intrinsics(unit)
    made = int8_depthwise_x86.apply(func, unit)    # x86 depthwise 3x3: a kernel of its own
    if made is not None:
        return made, "depthwise"
    first = int8_first_conv_x86.apply(func, unit)  # x86 3-channel conv: channels padded to 4
    if first is not None:
        return finish_integer(first, unit), "conv"
    pointwise = _pointwise(func, unit)
    return (pointwise, "pointwise") if pointwise is not None else None


def _pointwise(func: tirx.PrimFunc, unit: VectorUnit) -> tirx.PrimFunc | None:
    dots = dots_for(unit)
    if not dots:
        return None
    sch = s_tir.Schedule(func)
    inline_all(sch)
    anatomy = analyse(sch, func)
    if anatomy is None or not prepack.layout_free(func, anatomy.weight):
        return None
    shaped = int8_blocked.fit(sch, anatomy, dots)
    if shaped is None:
        return None
    try:
        # sdot (int8_neon_sdot) runs int8_blocked's nest; only smull + sadalp has its own.
        schedule = (int8_neon_s8.apply if shaped.intrin == int8_neon_s8.NEON_S8_DOT_INTRIN
                    else int8_blocked.apply)
        schedule(sch, anatomy, shaped, unit.parallel)
    except (s_tir.ScheduleError, tvm.error.InternalError, ValueError) as err:
        log.info(f"default schedule: an int8 pointwise kernel kept the generic one: "
                 f"{str(err).strip().splitlines()[-1][:200]}")
        return None
    return finish_integer(sch.mod["main"], unit)


def finish_integer(func: tirx.PrimFunc, unit: VectorUnit) -> tirx.PrimFunc:
    """A scheduled kernel of a target with an integer kind: the requantization in the
    target's 32-bit instructions (NEON: int8_requant_neon, x86: int8_requant_x86); any
    other kernel as it is. (Its accumulators are on the stack already: blocked.ACC_SCOPE.)"""
    if not unit.int8:
        return func
    if unit.int8 in ("neon", "dotprod"):
        return int8_requant_neon.rewrite(func)
    if unit.int8 in ("vnni", "avx2"):
        return int8_requant_x86.rewrite(func, unit.int8)
    return func


def unit_for(sch: s_tir.Schedule, a, unit: VectorUnit) -> VectorUnit | None:
    """The vector unit a kernel on the register-blocked default is sized by; None keeps an
    integer kernel plain on a target without an integer kind (firmware: no workspace). On
    NEON an integer vector is 8 int32 (two registers): LLVM then multiplies int16 halves
    with smlal/smlal2 instead of widening every operand to int32 (rpi4, 0.25/64: depthwise
    2.37 -> 1.67 instructions per multiply-add, first conv 1.91 -> 1.29)."""
    if sch.get(a.block).writes[0].source.dtype != "int32":
        return unit
    if not unit.int8:
        return None
    if unit.int8 in ("neon", "dotprod"):
        return replace(unit, lanes=unit.lanes * 2, registers=unit.registers // 2)
    return unit
