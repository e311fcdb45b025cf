"""The int8 depthwise 3x3 kernels on x86, built by hand, without widening a byte.

A depthwise convolution multiplies each channel by its own weight, so the instructions that
sum neighbouring bytes (`vpdpbusd`: 4 uint8 x 4 int8 into each int32 lane) seem not to fit.
They do with masked weights: for k = 0..3, a vector holding channel 4j + k's weight in
byte k of lane j (its other bytes 0) makes `vpdpbusd(acc_k, x, w_k)` add x[4j+k] * w[4j+k]
to lane j, exactly, from the raw activation bytes. Two taps share an instruction when
their data is interleaved by shifts and a byte blend (no shuffle): lane j of `even` holds
(x[4j], y[4j], x[4j+2], y[4j+2]), of `odd` the channels 4j+1 and 4j+3, and a weight vector
holds the pair's two weights in bytes k & ~1 and (k & ~1) + 1. Rows 0 and 1 of a column
pair up (the tile's pixels that read the column share the interleaving), then the first
two taps of row 2; the last tap stays single: 20 `vpdpbusd` per pixel and 64 channels.

    per tile of R pixels along the output row x 4L channels (L = 16: zmm; 8: ymm)
      acc[p][k] = bias; for each slot (pair or single tap): acc[p][k] += dot(data, w[slot][k])
      requantization on each acc[p][k] (channels 4j + k) in int32 lanes
      vpackssdw, vpackuswb, vpshufb: the 4L bytes in channel order, one store

Weights, bias, multiplier and shift are prepacked at compile time in this order
(layout-rewrite blocks, as prepack.py; masked weights: 5 or 9 x 4 x C bytes). The
requantization is docs/int8.md's rule, bit-exact, without widening: the high multiply
`(a * M + 2^30) >> 31` runs `vpmuldq` on the even lanes and on the odd ones shifted down
(their multipliers prepacked there), merged by a mask; the rounding shift is
`((t >> max(r - 1, 0)) + min(r, 1)) >> min(r, 1)` (both prepacked), which cannot overflow
as |t| <= 2^31 - 2; the saturating packs are the clamp to [0, 255] (a narrower clamp or a
zero point is applied before). AVX2 has no `vpdpbusd`: `vpmaddubsw` (one non-zero product
per int16 pair, so it never saturates) then `vpmaddwd` by ones gives the same lanes, one
tap at a time (a pair's sum would saturate). Each border row and column of tiles gets its
own copy of the code without the taps in the padding, so no tap is tested at run time.
"""

from __future__ import annotations

import tvm
import tvm.s_tir as s_tir
import tvm.tirx as tirx

from edge_mnv1.compiler.schedules.int8_depthwise_match import Depthwise, recognize
from edge_mnv1.compiler.schedules.int8_requant_x86 import high_even_odd, imm, rounded
from edge_mnv1.compiler.tvm_target import VectorUnit

_VNNI = {16: "llvm.x86.avx512.vpdpbusd.512", 8: "llvm.x86.avx512.vpdpbusd.256"}
_AVX2_UBSW, _AVX2_WD = "llvm.x86.avx2.pmadd.ub.sw", "llvm.x86.avx2.pmadd.wd"
_NARROW = {16: ("llvm.x86.avx512.packssdw.512", "llvm.x86.avx512.packuswb.512",
                "llvm.x86.avx512.pshuf.b.512"),
           8: ("llvm.x86.avx2.packssdw", "llvm.x86.avx2.packuswb", "llvm.x86.avx2.pshuf.b")}


def apply(func: tirx.PrimFunc, unit: VectorUnit) -> tirx.PrimFunc | None:
    """The kernel built by hand if it is a 3x3 depthwise uint8 x int8 convolution with the
    rule's requantization, channels-last, on an x86 integer kind; else None."""
    if unit.int8 not in ("vnni", "avx2"):
        return None
    shape = recognize(func)
    if shape is None:
        return None
    lanes = 16 if unit.int8 == "vnni" and shape.c % 64 == 0 else 8
    if shape.c % (4 * lanes):
        return None
    rows = _rows(shape.ow, unit.int8)
    return _build(func, shape, lanes, rows, unit)


def _rows(width: int, kind: str) -> int:
    """Output pixels per tile: 4 x R accumulators within half the registers (16 zmm or
    8 ymm), the largest that divides the row."""
    limit = 4 if kind == "vnni" else 2
    return max(r for r in range(1, limit + 1) if width % r == 0)


def _pack(name: str, dst: tirx.Buffer, value) -> tirx.Stmt:
    """A layout-rewrite block `dst[i...] = value(i...)` over all of dst, which
    lowering.prepack_weights runs on the constants at compile time."""
    loops = [tirx.Var(f"{name}_l{d}", "int32") for d in range(len(dst.shape))]
    ivars = [tirx.IterVar(tvm.ir.Range(0, n), tirx.Var(f"{name}_v{d}", "int32"), 0)
             for d, n in enumerate(dst.shape)]
    index = [iv.var for iv in ivars]
    expr, src, region = value(*index)
    block = s_tir.SBlock(ivars, [tirx.BufferRegion(src, region)],
                         [tirx.BufferRegion(dst, [tvm.ir.Range.from_min_extent(v, 1)
                                                  for v in index])],
                         name, tirx.BufferStore(dst, expr, index),
                         annotations={"meta_schedule.layout_rewrite_preproc": 1})
    stmt = s_tir.SBlockRealize(loops, True, block)
    for var, n in reversed(list(zip(loops, dst.shape))):
        stmt = tirx.For(var, imm(0), n, tirx.ForKind.SERIAL, stmt)
    return stmt


def _whole(buf: tirx.Buffer) -> list:
    return [tvm.ir.Range(0, n) for n in buf.shape]


def _packed(shape: Depthwise, buffers, lanes: int, vec_kind: str):
    """The prepacked buffers and the blocks that fill them: masked weights
    (blocks, slots, 4, 4L) int8 (`_slots`), and the per-channel parameters (and what the
    requantization derives from them) as (blocks, n, 4, L) int32 in the accumulators'
    channel order (lane j of accumulator k: channel 4j + k)."""
    width, blocks = 4 * lanes, shape.c // (4 * lanes)
    weight = buffers[shape.params[1]]
    slots = _slots(vec_kind)
    masked = tirx.decl_buffer((blocks, len(slots), 4, width), "int8", "weight_masked")

    def mask(cb, slot, k, b):
        """Lane j of accumulator k, channel c = 4j + k: a single tap's weight in byte k;
        a pair's two weights in bytes k & ~1 and (k & ~1) + 1 (its data interleaved so)."""
        c, pos, zero = cb * width + b - tirx.floormod(b, 4) + k, tirx.floormod(b, 4), \
            tirx.IntImm("int8", 0)

        def w(tap):
            return tirx.BufferLoad(weight, [c, imm(tap // 3), imm(tap % 3), imm(0)])
        value = zero
        for i, (a, b2) in enumerate(slots):
            if b2 is None:
                this = tirx.Select(pos == k, w(a), zero)
            else:
                base = k - tirx.floormod(k, 2)
                this = tirx.Select(pos == base, w(a), tirx.Select(pos == base + 1, w(b2), zero))
            value = this if i == 0 else tirx.Select(slot == i, this, value)
        return value, weight, _whole(weight)
    buffers_out, stmts = {1: masked}, [_pack("weight_masked", masked, mask)]
    lane = lambda cb, k, j: cb * width + j * 4 + k  # noqa: E731  (lane j of k)
    bias, mult, right = (buffers[i] if i is not None else None for i in shape.params[2:5])
    at = lambda src, c: tirx.BufferLoad(src, [imm(0), imm(0), imm(0), c])  # noqa: E731
    # One rewrite per constant (lowering's split wants that): the values derived from it
    # stacked, as (blocks, n, 4, L).
    derived = {
        "bias": (bias, [lambda cb, k, j: at(bias, lane(cb, k, j))]),
        # the odd lanes' multipliers in the even lanes too, where vpmuldq reads them
        "mult": (mult, [lambda cb, k, j: at(mult, lane(cb, k, j)),
                        lambda cb, k, j: at(mult, lane(cb, k, j - tirx.floormod(j, 2) + 1))]),
        "right": (right, [lambda cb, k, j: tirx.Max(at(right, lane(cb, k, j)) - 1, 0),
                          lambda cb, k, j: tirx.Min(at(right, lane(cb, k, j)), 1)]),
    }
    for name, (src, values) in derived.items():
        if src is None:
            continue
        dst = tirx.decl_buffer((blocks, len(values), 4, lanes), "int32", f"{name}_packed")

        def stacked(cb, n, k, j, values=values, src=src):
            value = values[0](cb, k, j)
            for i, v in enumerate(values[1:], 1):
                value = tirx.Select(n == i, v(cb, k, j), value)
            return value, src, _whole(src)
        stmts.append(_pack(f"{name}_packed", dst, stacked))
        buffers_out[name] = dst
    return buffers_out, stmts


class _Vec:
    """Vector spellings for L int32 lanes (4L bytes)."""

    def __init__(self, lanes: int, kind: str):
        self.lanes, self.kind = lanes, kind
        self.i32, self.u32 = f"int32x{lanes}", f"uint32x{lanes}"
        self.u8, self.i8 = f"uint8x{4 * lanes}", f"int8x{4 * lanes}"

    def splat(self, value: int, dtype: str = "int32") -> tirx.PrimExpr:
        lanes = self.lanes // 2 if dtype == "int64" else self.lanes
        return tirx.Broadcast(imm(value, dtype), lanes)

    def dot(self, acc, data, weight) -> tirx.PrimExpr:
        """acc + the masked products: lane j gains data[4j + k] * weight[4j + k]."""
        if self.kind == "vnni":
            return tirx.call_llvm_pure_intrin(self.i32, _VNNI[self.lanes], acc,
                                              tirx.reinterpret(self.i8, data), weight)
        pairs = tirx.call_llvm_pure_intrin("int16x16", _AVX2_UBSW, data, weight)
        ones = tirx.Broadcast(tirx.IntImm("int16", 1), 16)
        return acc + tirx.call_llvm_pure_intrin(self.i32, _AVX2_WD, pairs, ones)

    def interleave(self, x, y) -> tuple:
        """Two taps' data (None: padding) as (even, odd): lane j of even holds bytes
        (x[4j], y[4j], x[4j+2], y[4j+2]), of odd (x[4j+1], y[4j+1], x[4j+3], y[4j+3]):
        shifts and a bitwise select, no shuffle."""
        zero = tirx.Broadcast(tirx.IntImm("uint32", 0), self.lanes)
        x = tirx.reinterpret(self.u32, x) if x is not None else zero
        y = tirx.reinterpret(self.u32, y) if y is not None else zero
        low = tirx.Broadcast(tirx.IntImm("uint32", 0x00FF00FF), self.lanes)
        eight = tirx.Broadcast(tirx.IntImm("uint32", 8), self.lanes)
        even = (x & low) | ((y << eight) & ~low)
        odd = ((x >> eight) & low) | (y & ~low)
        return tirx.reinterpret(self.u8, even), tirx.reinterpret(self.u8, odd)

    def high(self, a, mult, mult_odd) -> tirx.PrimExpr:
        return high_even_odd(a, mult, mult_odd, self.lanes)

    def rounded(self, t, shift, bit) -> tirx.PrimExpr:
        return rounded(t, shift, bit)

    def narrowed(self, values) -> tirx.PrimExpr:
        """The 4 accumulators' int32 lanes (lane j of k: channel 4j + k) as 4L bytes in
        channel order, saturated to [0, 255]: vpackssdw, vpackuswb (in 128-bit lanes:
        byte 4k + i of a lane is channel 4i + k), then vpshufb transposes each 4 x 4."""
        ssdw, uswb, shuf = _NARROW[self.lanes]
        half = f"int16x{2 * self.lanes}"
        pairs = [tirx.call_llvm_pure_intrin(half, ssdw, values[k], values[k + 1])
                 for k in (0, 2)]
        packed = tirx.call_llvm_pure_intrin(self.i8, uswb, *pairs)
        q = tirx.floormod(tirx.Ramp(tirx.IntImm("int8", 0), tirx.IntImm("int8", 1),
                                    4 * self.lanes), tirx.Broadcast(tirx.IntImm("int8", 16),
                                                                     4 * self.lanes))
        four = tirx.Broadcast(tirx.IntImm("int8", 4), 4 * self.lanes)
        order = tirx.floormod(q, four) * four + tirx.floordiv(q, four)
        return tirx.reinterpret(self.u8, tirx.call_llvm_pure_intrin(self.i8, shuf, packed,
                                                                      order))


def _tile_outputs(shape: Depthwise, vec: _Vec, packed, buffers, at):
    """The R output pixels of the tile at (oy, ox0, cb): one store each. On a border row or
    column oy or ox0 is a constant, and the taps that fall in the padding are left out."""
    oy, ox0, cb, rows = at
    data, out = buffers[0], buffers[-1]
    width, s, pad = 4 * vec.lanes, shape.stride, shape.pad
    bias_i, right_i = shape.params[2], shape.params[4]

    def param(name, k, n=0):
        return tirx.BufferLoad(packed[name], [cb, imm(n), imm(k),
                                              tirx.Ramp(imm(0), imm(1), vec.lanes)])

    def outside(o, size):
        return isinstance(o, int) and not 0 <= o < size

    def tap(p, ry, rx):
        iy, ix = oy * s - pad + ry, (ox0 + p) * s - pad + rx
        if outside(iy, shape.h) or outside(ix, shape.w):
            return None
        return data.vload([imm(0), iy, ix, cb * width], vec.u8)

    lets = []

    def let(name, value):
        var = tirx.Var(name, value.ty)
        lets.append((var, value))
        return var

    acc = [[param("bias", k) if bias_i is not None else vec.splat(0) for k in range(4)]
           for _ in range(rows)]
    # Slot by slot: its 4 weight vectors are shared by the tile's pixels, and a pixel's
    # data by the slots that read the same column (LLVM merges the loads and the byte
    # interleaving), so 4R accumulators + 4 weights + a few data vectors stay in registers.
    for i, (a, b) in enumerate(_slots(vec.kind)):
        weights = [let(f"w{i}_{k}", packed[1].vload([cb, imm(i), imm(k), imm(0)], vec.i8))
                   for k in range(4)]
        for p in range(rows):
            x = tap(p, a // 3, a % 3)
            y = tap(p, b // 3, b % 3) if b is not None else None
            if x is None and y is None:
                continue        # in the padding
            pair = vec.interleave(x, y) if b is not None else (x, x)
            for k in range(4):
                acc[p][k] = let(f"acc{p}_{k}_{i}", vec.dot(acc[p][k], pair[k % 2], weights[k]))
    stores = []
    for p in range(rows):
        values = []
        for k in range(4):
            u = vec.high(acc[p][k], param("mult", k), param("mult", k, 1))
            if right_i is not None:
                u = vec.rounded(let(f"t{p}_{k}", u), param("right", k), param("right", k, 1))
            z = shape.zero         # clamp(u + z, lo, hi) = clamp(u, lo - z, hi - z) + z
            if z or shape.lo > 0 or shape.hi < 255:     # (the packs clamp to [0, 255])
                u = tirx.Max(tirx.Min(u, vec.splat(shape.hi - z)), vec.splat(shape.lo - z))
                u = u + vec.splat(z) if z else u
            values.append(u)
        stores.append(out.vstore([imm(0), oy, ox0 + p, cb * width], vec.narrowed(values)))
    return tirx.SeqStmt([tirx.Bind(var, value) for var, value in lets] + stores)


def _build(func: tirx.PrimFunc, shape: Depthwise, lanes: int, rows: int,
           unit: VectorUnit) -> tirx.PrimFunc:
    buffers = list(func.params)
    vec = _Vec(lanes, unit.int8)
    packed, packs = _packed(shape, buffers, lanes, unit.int8)
    blocks, tiles_x = shape.c // (4 * lanes), shape.ow // rows
    tile = tirx.Var("tile", "int32")
    cb = tirx.floormod(tile, blocks)
    ox0 = tirx.floormod(tirx.floordiv(tile, blocks), tiles_x) * rows
    oy = tirx.floordiv(tile, blocks * tiles_x)
    body = _by_border(shape, rows, oy, ox0, lambda y, x: _tile_outputs(
        shape, vec, packed, buffers, (y, x, cb, rows)))
    work = shape.oh * shape.ow * shape.c * 9
    kind = tirx.ForKind.PARALLEL if unit.parallel and work >= 4096 else tirx.ForKind.SERIAL
    # An opaque block: lowering.prepack_weights splits the rewrites off beside a block.
    reads = [tirx.BufferRegion(b, _whole(b)) for b in [buffers[0], *packed.values()]]
    body = s_tir.SBlockRealize([], True, s_tir.SBlock(
        [], reads, [tirx.BufferRegion(buffers[-1], _whole(buffers[-1]))], "depthwise", body))
    loop = tirx.For(tile, imm(0), imm(shape.oh * tiles_x * blocks), kind, body)
    root = s_tir.SBlock([], [], [], "root", tirx.SeqStmt([*packs, loop]),
                        alloc_buffers=list(dict.fromkeys(packed[i] for i in packed)))
    return func.with_body(s_tir.SBlockRealize([], True, root))


def _borders(count: int, step: int, stride: int, pad: int, size: int) -> list[int]:
    """The tile origins along one axis whose 3-tap window reaches into the padding."""
    return [o for o in range(0, count, step)
            if o * stride - pad < 0 or (o + step - 1) * stride - pad + 2 >= size]


def _by_border(shape: Depthwise, rows: int, oy, ox0, make) -> tirx.Stmt:
    """if oy == border row: (that row's code) ... else: (interior rows' code), each split
    the same way by border column: every version reads without a test."""
    def by_column(y):
        stmt = make(y, ox0)
        for x in reversed(_borders(shape.ow, rows, shape.stride, shape.pad, shape.w)):
            stmt = tirx.IfThenElse(ox0 == x, make(y, x), stmt)
        return stmt
    stmt = by_column(oy)
    for y in reversed(_borders(shape.oh, 1, shape.stride, shape.pad, shape.h)):
        stmt = tirx.IfThenElse(oy == y, by_column(y), stmt)
    return stmt


def _slots(kind: str) -> list[tuple[int, int | None]]:
    """The taps (ry * 3 + rx) each weight vector multiplies: with VNNI two taps share an
    instruction (a pair's products sum in one int32 lane: 20 vpdpbusd per pixel and 4L
    channels instead of 36), rows 0 and 1 of a column (shared by the pixels that read
    it) and the first two of row 2; AVX2's vpmaddubsw would saturate a pair's sum."""
    if kind == "vnni":
        return [(0, 3), (1, 4), (2, 5), (6, 7), (8, None)]
    return [(t, None) for t in range(9)]
