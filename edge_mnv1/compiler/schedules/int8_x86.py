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

from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

from edge_mnv1.compiler.schedules.int8_blocked import ACC_SCOPE, Int8Dot

# TVM's own `dot_16x4_vnni` reads and writes its accumulators in memory; these use the
# micro-kernel's accumulators (int8_blocked.ACC_SCOPE), which LLVM keeps in registers.
VNNI_DOT_16x4_INTRIN = "edge_mnv1_dot_16x4_u8i8i32_vnni"
AVX2_DOT_8x2_INTRIN = "edge_mnv1_dot_8x2_u8i8i32_avx2"


@T.prim_func(s_tir=True)
def _dot_16x4_desc(
    A: T.Buffer((4,), "uint8", offset_factor=1),
    B: T.Buffer((16, 4), "int8", offset_factor=1),
    C: T.Buffer((16,), "int32", offset_factor=1, scope=ACC_SCOPE),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:16], A[0:4], B[0:16, 0:4])
        T.writes(C[0:16])
        for i in T.serial(0, 16):
            for k in T.serial(0, 4):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")


@T.prim_func(s_tir=True)
def _dot_16x4_vnni(
    A: T.Buffer((4,), "uint8", offset_factor=1),
    B: T.Buffer((16, 4), "int8", offset_factor=1),
    C: T.Buffer((16,), "int32", offset_factor=1, scope=ACC_SCOPE),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:16], A[0:4], B[0:16, 0:4])
        T.writes(C[0:16])
        # LLVM 17+ declares the operands as 64 bytes (older LLVMs: 16 x i32).
        a = T.reinterpret(A.vload([0], "uint8x4"), dtype="int32")
        a64 = T.reinterpret(T.broadcast(a, 16), dtype="int8x64")
        C[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"),
            C.vload([0], dtype="int32x16"), a64, B.vload([0, 0], dtype="int8x64"),
            dtype="int32x16")


@T.prim_func(s_tir=True)
def _dot_8x2_desc(
    A: T.Buffer((2,), "uint8", offset_factor=1),
    B: T.Buffer((8, 2), "int8", offset_factor=1),
    C: T.Buffer((8,), "int32", offset_factor=1, scope=ACC_SCOPE),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:8], A[0:2], B[0:8, 0:2])
        T.writes(C[0:8])
        for i in T.serial(0, 8):
            for k in T.serial(0, 2):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")


@T.prim_func(s_tir=True)
def _dot_8x2_avx2(
    A: T.Buffer((2,), "uint8", offset_factor=1),
    B: T.Buffer((8, 2), "int8", offset_factor=1),
    C: T.Buffer((8,), "int32", offset_factor=1, scope=ACC_SCOPE),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:8], A[0:2], B[0:8, 0:2])
        T.writes(C[0:8])
        # The two activations as an int16 pair, repeated for the 8 channels.
        a_pair = T.reinterpret(T.Cast("int16x2", A.vload([0], "uint8x2")), dtype="int32")
        a16 = T.reinterpret(T.broadcast(a_pair, 8), dtype="int16x16")
        b16 = T.Cast("int16x16", B.vload([0, 0], dtype="int8x16"))
        C[T.ramp(T.int32(0), 1, 8)] = C.vload([0], dtype="int32x8") + T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"), a16, b16, dtype="int32x8")


TensorIntrin.register(VNNI_DOT_16x4_INTRIN, _dot_16x4_desc, _dot_16x4_vnni)
TensorIntrin.register(AVX2_DOT_8x2_INTRIN, _dot_8x2_desc, _dot_8x2_avx2)


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
