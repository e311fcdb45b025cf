"""AArch64 `sdot` pointwise kernel for targets with the ARMv8.2 dot product (`+dotprod`,
e.g. the Cortex-A76 of a Raspberry Pi 5).

`sdot v.4s, w.16b, x.16b` adds, into each of 4 int32 lanes, the 4 products of the lane's 4
bytes of both operands: 16 multiply-adds an instruction, summed exactly in int32 (no int16
intermediate, so unlike int8_neon_s8 a weight of -128 is as exact as any other). Per step
of 4 input channels a pixel's 4 activations (int8 x - 128, compiler/integer.py:
`signed_inputs`) are broadcast to the 4 lanes (`ld1r`) and every 4-channel panel is one
16-byte load, (O/4, K/4, 4, 4) prepacked at compile time, shared by the tile's pixels.

TVM ships that instruction as a tensor intrinsic, `dot_4x4_i8i8s32_sdot` (C[4] += A[4] .
B[4, 4], the same description as below), but not usable here: its implementation binds each
operand to a one-element "local" buffer, which lowers to workspace allocations in every
pointwise kernel (0.25/64: 456 bytes a thread, alloc/free calls in each), and importing it
runs `tvm.s_tir.tensor_intrin`'s package, which registers every backend's intrinsics
(~40 s of CPU in every compile). So it is written here as one expression, in the kernel's
accumulator scope. The kernel is int8_blocked's loop nest on it; the requantization is
int8_requant_neon's.
"""

from __future__ import annotations

import tvm.tirx as tirx

from edge_mnv1.compiler.schedules.int8_blocked import Int8Dot
from edge_mnv1.compiler.schedules.int8_intrin import (dot_desc, implementation, llvm,
                                                      registrar, store, word_broadcast)

NEON_SDOT_4x4_INTRIN = "edge_mnv1_dot_4x4_s8s8i32_neon_sdot"


def _sdot(desc: tirx.PrimFunc) -> tirx.PrimFunc:
    """One expression (a name would be a "local" buffer): the pixel's 4 activations
    repeated in the 4 lanes (ld1r), against the panel's 16 bytes."""
    a, b, c = desc.params
    return implementation(desc, store(c, llvm(
        "int32x4", "llvm.aarch64.neon.sdot.v4i32.v16i8", c.vload([0], "int32x4"),
        word_broadcast(a, 4), b.vload([0, 0], "int8x16")), 4))


def _intrinsics() -> dict:
    desc = dot_desc(4, 4, a_dtype="int8")
    return {NEON_SDOT_4x4_INTRIN: (desc, _sdot(desc))}


register = registrar(_intrinsics)


def dots_for(int8: str) -> list[Int8Dot]:
    """Per step, each panel costs a load, each pixel a broadcast and each (pixel, panel) one
    sdot. 32 registers: 4 pixels x 4 panels (16 accumulators + 4 panels + broadcasts), or 7
    x 2 where a row has 7 or 14 pixels (4 would leave 1 or 2; 7 x 4 would spill)."""
    if int8 != "dotprod":
        return []
    return [Int8Dot(NEON_SDOT_4x4_INTRIN, lanes=4, depth=4, k_major=False, rows=r,
                    vectors=v, panel_cost=1, pixel_cost=1, dot_cost=1, signed=True)
            for r, v in ((4, 4), (7, 2))]
