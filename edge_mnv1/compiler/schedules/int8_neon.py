"""AArch64 NEON integer dot products for the int8 pointwise kernels.

The Cortex-A72 (ARMv8.0) has no dot-product instruction. Its widening multiply-accumulate
by element, `smlal v.4s, w.4h, x.h[k]`, adds 4 exact int16 x int16 products into int32:
per step of 8 input channels a pixel's activations are widened once (`uxtl`, uint8 ->
int16, exact) and each of the 8 weight rows of a 16-channel panel once (`sxtl`, shared by
the tile's pixels); then every (pixel, channel, step) is one lane of an `smlal`. The panel
is prepacked [8 input channels][16 output channels] so a row is one 16-byte load.

Where the integer graph gives a pointwise convolution signed inputs (compiler/integer.py:
every weight in [-127, 127]) int8_neon_s8 multiplies bytes instead; this kernel keeps the
uint8 ones. On a dotprod target (ARMv8.2, e.g. Cortex-A76) int8_neon_sdot's `sdot`
replaces the byte kernel; this one still takes the uint8 inputs.
"""

from __future__ import annotations

import tvm.tirx as tirx

from edge_mnv1.compiler.schedules.int8_blocked import Int8Dot
from edge_mnv1.compiler.schedules.int8_intrin import dot_desc, implementation, registrar

NEON_DOT_16x8_INTRIN = "edge_mnv1_dot_16x8_u8i8i32_neon_smlal"
NEON_DOT_8x8_INTRIN = "edge_mnv1_dot_8x8_u8i8i32_neon_smlal"


def _smlal(desc: tirx.PrimFunc, lanes: int) -> tirx.PrimFunc:
    """`desc` as smlal by element: per input channel k and 8 output channels, C += the
    widened weight row k times lane k of the widened activations (int16 x int16 products
    into int32, which LLVM selects as smlal/smlal2 by element), unrolled here."""
    a, b, c = desc.params
    x16 = tirx.Cast("int16x8", a.vload([0], "uint8x8"))     # a value: no buffer, no workspace
    stores = []
    for k in range(8):
        for h in range(0, lanes, 8):
            w = tirx.Cast("int32x8", tirx.Cast("int16x8", b.vload([k, h], "int8x8")))
            x = tirx.Cast("int32x8", tirx.Shuffle([x16], [k] * 8))
            stores.append(tirx.BufferStore(c, c.vload([h], "int32x8") + w * x,
                                           [tirx.Ramp(h, 1, 8)]))
    return implementation(desc, tirx.SeqStmt(stores))


def _intrinsics() -> dict:
    made = {}
    for name, lanes in ((NEON_DOT_16x8_INTRIN, 16), (NEON_DOT_8x8_INTRIN, 8)):
        desc = dot_desc(lanes, 8, k_major=True)
        made[name] = (desc, _smlal(desc, lanes))
    return made


register = registrar(_intrinsics)


def dots_for(int8: str) -> list[Int8Dot]:
    """Per step of 8 input channels, a panel's 8 weight rows are loaded and widened once
    (16 channels: 8 loads + 16 sxtl; 8 channels: 4 + 8) and each pixel costs a load, a uxtl
    and an smlal per 4 products. 32 registers: 16 channels x 4 pixels (16 accumulators,
    16 widened rows), or 8 channels x 7 pixels (14 + 8 + 7) where the pixel count is a
    multiple of 7 (a 7x7 or 14x14 layer), which shares each panel among more pixels."""
    if int8 not in ("neon", "dotprod"):
        return []
    return [Int8Dot(NEON_DOT_16x8_INTRIN, lanes=16, depth=8, k_major=True, rows=4, vectors=1,
                    panel_cost=24, pixel_cost=2, dot_cost=32),
            Int8Dot(NEON_DOT_8x8_INTRIN, lanes=8, depth=8, k_major=True, rows=7, vectors=1,
                    panel_cost=12, pixel_cost=2, dot_cost=16)]
