"""x86 integer dot products for the int8 pointwise kernels, chosen by the CPU's features.

- AVX-512 VNNI: `vpdpbusd` multiplies 4 uint8 activations by 4 int8 weights and adds the
  4 products into an int32, 16 output channels at once (TVM's `dot_16x4_vnni`): exactly
  the project's uint8 x int8 -> int32 scheme, 64 multiply-adds an instruction.
- AVX2 (and AVX-512 without VNNI): `vpmaddubsw` would add two uint8 x int8 products into a
  *saturating* int16 (255 x 127 x 2 > 32767), which is not the reference's arithmetic. So
  the weights are sign-extended to int16 (`vpmovsxbw`, once per panel and step, shared by
  the tile's pixels) and `vpmaddwd` adds pairs of exact int16 products into int32: 16
  multiply-adds an instruction, never saturating.
"""

from __future__ import annotations

import tvm.tirx as tirx

from edge_mnv1.compiler.schedules.int8_blocked import Int8Dot
from edge_mnv1.compiler.schedules.int8_intrin import (dot_desc, implementation, llvm,
                                                      registrar, store, word_broadcast)

# TVM's own `dot_16x4_vnni` reads and writes its accumulators in memory; these use the
# micro-kernel's accumulators (int8_blocked.ACC_SCOPE), which LLVM keeps in registers.
VNNI_DOT_16x4_INTRIN = "edge_mnv1_dot_16x4_u8i8i32_vnni"
VNNI_DOT_8x4_INTRIN = "edge_mnv1_dot_8x4_u8i8i32_vnni256"     # AVX512-VL, on a ymm
AVX2_DOT_8x2_INTRIN = "edge_mnv1_dot_8x2_u8i8i32_avx2"


def _vnni(desc: tirx.PrimFunc, lanes: int) -> tirx.PrimFunc:
    """One vpdpbusd on `lanes` int32 (16: a zmm; 8: a ymm)."""
    a, b, c = desc.params
    # LLVM 17+ declares the operands as bytes (older LLVMs: i32 lanes).
    return implementation(desc, store(c, llvm(
        f"int32x{lanes}", f"llvm.x86.avx512.vpdpbusd.{32 * lanes}",
        c.vload([0], f"int32x{lanes}"), word_broadcast(a, lanes),
        b.vload([0, 0], f"int8x{4 * lanes}")), lanes))


def _avx2(desc: tirx.PrimFunc) -> tirx.PrimFunc:
    """vpmaddwd: the two activations as an int16 pair, repeated for the 8 channels, against
    the panel's weights widened to int16."""
    a, b, c = desc.params
    pair = tirx.reinterpret("int32", tirx.Cast("int16x2", a.vload([0], "uint8x2")))
    x = tirx.reinterpret("int16x16", tirx.Broadcast(pair, 8))
    w = tirx.Cast("int16x16", b.vload([0, 0], "int8x16"))
    return implementation(desc, store(c, c.vload([0], "int32x8") + llvm(
        "int32x8", "llvm.x86.avx2.pmadd.wd", x, w), 8))


def _intrinsics() -> dict:
    made = {}
    for name, lanes in ((VNNI_DOT_16x4_INTRIN, 16), (VNNI_DOT_8x4_INTRIN, 8)):
        desc = dot_desc(lanes, 4)
        made[name] = (desc, _vnni(desc, lanes))
    avx2 = dot_desc(8, 2)
    made[AVX2_DOT_8x2_INTRIN] = (avx2, _avx2(avx2))
    return made


register = registrar(_intrinsics)


def dots_for(int8: str) -> list[Int8Dot]:
    """The micro-kernels for the vector unit's integer kind, accumulators within half the
    registers (as the fp32 tiles, docs/performance.md). Per step a panel is one load, a
    pixel one broadcast; `fit` takes the cheaper tile that divides the row: 4 pixels x 4
    panels, or 7 x 2 where a row has 7 or 14 pixels (4 would leave 1 or 2)."""
    if int8 == "vnni":          # 32 zmm
        return [Int8Dot(VNNI_DOT_16x4_INTRIN, lanes=16, depth=4, k_major=False, rows=r,
                        vectors=v, panel_cost=1, pixel_cost=1, dot_cost=1)
                for r, v in ((4, 4), (7, 2))]
    if int8 == "avx2":          # 16 ymm: 4 pixels x 2 panels of 8 channels
        return [Int8Dot(AVX2_DOT_8x2_INTRIN, lanes=8, depth=2, k_major=False, rows=4,
                        vectors=2, panel_cost=1, pixel_cost=2, dot_cost=2)]
    return []
