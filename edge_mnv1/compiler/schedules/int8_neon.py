"""AArch64 NEON integer dot products for the int8 pointwise kernels.

The Cortex-A72 (ARMv8.0) has no dot-product instruction. Its widening multiply-accumulate
by element, `smlal v.4s, w.4h, x.h[k]`, adds 4 exact int16 x int16 products into int32:
per step of 8 input channels a pixel's activations are widened once (`uxtl`, uint8 ->
int16, exact) and each of the 8 weight rows of a 16-channel panel once (`sxtl`, shared by
the tile's pixels); then every (pixel, channel, step) is one lane of an `smlal`. The panel
is prepacked [8 input channels][16 output channels] so a row is one 16-byte load.

`sdot`/`udot` (ARMv8.2 dotprod, e.g. Cortex-A76) multiply int8 by int8 or uint8 by uint8,
not uint8 activations by int8 weights; until the integer graph carries signed activations
a dotprod target uses the same `smlal` kernel (it is ARMv8.0 code, valid there too).
"""

from __future__ import annotations

from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

from edge_mnv1.compiler.schedules.int8_blocked import Int8Dot

NEON_DOT_16x8_INTRIN = "edge_mnv1_dot_16x8_u8i8i32_neon_smlal"
NEON_DOT_8x8_INTRIN = "edge_mnv1_dot_8x8_u8i8i32_neon_smlal"


@T.prim_func(s_tir=True)
def _dot_16x8_desc(
    A: T.Buffer((8,), "uint8", offset_factor=1),
    B: T.Buffer((8, 16), "int8", offset_factor=1),
    C: T.Buffer((16,), "int32", offset_factor=1, scope="local"),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:16], A[0:8], B[0:8, 0:16])
        T.writes(C[0:16])
        for i in T.serial(0, 16):
            for k in T.serial(0, 8):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vk, vi], "int32")


@T.prim_func(s_tir=True)
def _dot_16x8_smlal(
    A: T.Buffer((8,), "uint8", offset_factor=1),
    B: T.Buffer((8, 16), "int8", offset_factor=1),
    C: T.Buffer((16,), "int32", offset_factor=1, scope="local"),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:16], A[0:8], B[0:8, 0:16])
        T.writes(C[0:16])
        # int16 x int16 products widened to int32: LLVM selects smlal/smlal2 by element.
        a16 = T.alloc_local((1,), "int16x8")
        a16[0] = T.Cast("int16x8", A.vload([0], dtype="uint8x8"))
        C[T.ramp(T.int32(0), 1, 8)] = C.vload([0], dtype="int32x8") + T.Cast(
            "int32x8", T.Cast("int16x8", B.vload([0, 0], dtype="int8x8"))) * T.Cast(
            "int32x8", T.Shuffle([a16[0]], [0] * 8))
        C[T.ramp(T.int32(8), 1, 8)] = C.vload([8], dtype="int32x8") + T.Cast(
            "int32x8", T.Cast("int16x8", B.vload([0, 8], dtype="int8x8"))) * T.Cast(
            "int32x8", T.Shuffle([a16[0]], [0] * 8))
        C[T.ramp(T.int32(0), 1, 8)] = C.vload([0], dtype="int32x8") + T.Cast(
            "int32x8", T.Cast("int16x8", B.vload([1, 0], dtype="int8x8"))) * T.Cast(
            "int32x8", T.Shuffle([a16[0]], [1] * 8))
        C[T.ramp(T.int32(8), 1, 8)] = C.vload([8], dtype="int32x8") + T.Cast(
            "int32x8", T.Cast("int16x8", B.vload([1, 8], dtype="int8x8"))) * T.Cast(
            "int32x8", T.Shuffle([a16[0]], [1] * 8))
        C[T.ramp(T.int32(0), 1, 8)] = C.vload([0], dtype="int32x8") + T.Cast(
            "int32x8", T.Cast("int16x8", B.vload([2, 0], dtype="int8x8"))) * T.Cast(
            "int32x8", T.Shuffle([a16[0]], [2] * 8))
        C[T.ramp(T.int32(8), 1, 8)] = C.vload([8], dtype="int32x8") + T.Cast(
            "int32x8", T.Cast("int16x8", B.vload([2, 8], dtype="int8x8"))) * T.Cast(
            "int32x8", T.Shuffle([a16[0]], [2] * 8))
        C[T.ramp(T.int32(0), 1, 8)] = C.vload([0], dtype="int32x8") + T.Cast(
            "int32x8", T.Cast("int16x8", B.vload([3, 0], dtype="int8x8"))) * T.Cast(
            "int32x8", T.Shuffle([a16[0]], [3] * 8))
        C[T.ramp(T.int32(8), 1, 8)] = C.vload([8], dtype="int32x8") + T.Cast(
            "int32x8", T.Cast("int16x8", B.vload([3, 8], dtype="int8x8"))) * T.Cast(
            "int32x8", T.Shuffle([a16[0]], [3] * 8))
        C[T.ramp(T.int32(0), 1, 8)] = C.vload([0], dtype="int32x8") + T.Cast(
            "int32x8", T.Cast("int16x8", B.vload([4, 0], dtype="int8x8"))) * T.Cast(
            "int32x8", T.Shuffle([a16[0]], [4] * 8))
        C[T.ramp(T.int32(8), 1, 8)] = C.vload([8], dtype="int32x8") + T.Cast(
            "int32x8", T.Cast("int16x8", B.vload([4, 8], dtype="int8x8"))) * T.Cast(
            "int32x8", T.Shuffle([a16[0]], [4] * 8))
        C[T.ramp(T.int32(0), 1, 8)] = C.vload([0], dtype="int32x8") + T.Cast(
            "int32x8", T.Cast("int16x8", B.vload([5, 0], dtype="int8x8"))) * T.Cast(
            "int32x8", T.Shuffle([a16[0]], [5] * 8))
        C[T.ramp(T.int32(8), 1, 8)] = C.vload([8], dtype="int32x8") + T.Cast(
            "int32x8", T.Cast("int16x8", B.vload([5, 8], dtype="int8x8"))) * T.Cast(
            "int32x8", T.Shuffle([a16[0]], [5] * 8))
        C[T.ramp(T.int32(0), 1, 8)] = C.vload([0], dtype="int32x8") + T.Cast(
            "int32x8", T.Cast("int16x8", B.vload([6, 0], dtype="int8x8"))) * T.Cast(
            "int32x8", T.Shuffle([a16[0]], [6] * 8))
        C[T.ramp(T.int32(8), 1, 8)] = C.vload([8], dtype="int32x8") + T.Cast(
            "int32x8", T.Cast("int16x8", B.vload([6, 8], dtype="int8x8"))) * T.Cast(
            "int32x8", T.Shuffle([a16[0]], [6] * 8))
        C[T.ramp(T.int32(0), 1, 8)] = C.vload([0], dtype="int32x8") + T.Cast(
            "int32x8", T.Cast("int16x8", B.vload([7, 0], dtype="int8x8"))) * T.Cast(
            "int32x8", T.Shuffle([a16[0]], [7] * 8))
        C[T.ramp(T.int32(8), 1, 8)] = C.vload([8], dtype="int32x8") + T.Cast(
            "int32x8", T.Cast("int16x8", B.vload([7, 8], dtype="int8x8"))) * T.Cast(
            "int32x8", T.Shuffle([a16[0]], [7] * 8))


@T.prim_func(s_tir=True)
def _dot_8x8_desc(
    A: T.Buffer((8,), "uint8", offset_factor=1),
    B: T.Buffer((8, 8), "int8", offset_factor=1),
    C: T.Buffer((8,), "int32", offset_factor=1, scope="local"),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:8], A[0:8], B[0:8, 0:8])
        T.writes(C[0:8])
        for i in T.serial(0, 8):
            for k in T.serial(0, 8):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vk, vi], "int32")


@T.prim_func(s_tir=True)
def _dot_8x8_smlal(
    A: T.Buffer((8,), "uint8", offset_factor=1),
    B: T.Buffer((8, 8), "int8", offset_factor=1),
    C: T.Buffer((8,), "int32", offset_factor=1, scope="local"),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:8], A[0:8], B[0:8, 0:8])
        T.writes(C[0:8])
        # int16 x int16 products widened to int32: LLVM selects smlal/smlal2 by element.
        a16 = T.alloc_local((1,), "int16x8")
        a16[0] = T.Cast("int16x8", A.vload([0], dtype="uint8x8"))
        C[T.ramp(T.int32(0), 1, 8)] = C.vload([0], dtype="int32x8") + T.Cast(
            "int32x8", T.Cast("int16x8", B.vload([0, 0], dtype="int8x8"))) * T.Cast(
            "int32x8", T.Shuffle([a16[0]], [0] * 8))
        C[T.ramp(T.int32(0), 1, 8)] = C.vload([0], dtype="int32x8") + T.Cast(
            "int32x8", T.Cast("int16x8", B.vload([1, 0], dtype="int8x8"))) * T.Cast(
            "int32x8", T.Shuffle([a16[0]], [1] * 8))
        C[T.ramp(T.int32(0), 1, 8)] = C.vload([0], dtype="int32x8") + T.Cast(
            "int32x8", T.Cast("int16x8", B.vload([2, 0], dtype="int8x8"))) * T.Cast(
            "int32x8", T.Shuffle([a16[0]], [2] * 8))
        C[T.ramp(T.int32(0), 1, 8)] = C.vload([0], dtype="int32x8") + T.Cast(
            "int32x8", T.Cast("int16x8", B.vload([3, 0], dtype="int8x8"))) * T.Cast(
            "int32x8", T.Shuffle([a16[0]], [3] * 8))
        C[T.ramp(T.int32(0), 1, 8)] = C.vload([0], dtype="int32x8") + T.Cast(
            "int32x8", T.Cast("int16x8", B.vload([4, 0], dtype="int8x8"))) * T.Cast(
            "int32x8", T.Shuffle([a16[0]], [4] * 8))
        C[T.ramp(T.int32(0), 1, 8)] = C.vload([0], dtype="int32x8") + T.Cast(
            "int32x8", T.Cast("int16x8", B.vload([5, 0], dtype="int8x8"))) * T.Cast(
            "int32x8", T.Shuffle([a16[0]], [5] * 8))
        C[T.ramp(T.int32(0), 1, 8)] = C.vload([0], dtype="int32x8") + T.Cast(
            "int32x8", T.Cast("int16x8", B.vload([6, 0], dtype="int8x8"))) * T.Cast(
            "int32x8", T.Shuffle([a16[0]], [6] * 8))
        C[T.ramp(T.int32(0), 1, 8)] = C.vload([0], dtype="int32x8") + T.Cast(
            "int32x8", T.Cast("int16x8", B.vload([7, 0], dtype="int8x8"))) * T.Cast(
            "int32x8", T.Shuffle([a16[0]], [7] * 8))


TensorIntrin.register(NEON_DOT_16x8_INTRIN, _dot_16x8_desc, _dot_16x8_smlal)
TensorIntrin.register(NEON_DOT_8x8_INTRIN, _dot_8x8_desc, _dot_8x8_smlal)


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
