"""Register tiles per kernel class, sized by the target's vector unit.

A micro-kernel keeps `rows x vectors` accumulators of `lanes` fp32 each in registers and,
per reduction step, loads `vectors` operands along the contiguous axis plus one value per
row (a broadcast, or the data vector of a depthwise tap). Accumulators take at most half
the registers (more, and LLVM's scheduling of the loads spills: measured on AVX-512, 28
accumulators ran 1.5x slower than 16) and less than 1 KB, so that they are a stack array
(blocked.ACC_SCOPE) and not a workspace allocation per tile (AVX-512: 16 x 16 fp32 lanes is
1 KB; tiles under it took 4-5 % less CPU time per inference at 1.0/224 than 16 x 16); among
tiles as large, the one with the fewest loads per multiply-add wins.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge_mnv1.compiler.schedules.anatomy import Anatomy
from edge_mnv1.compiler.tvm_target import VectorUnit

# TVM puts a kernel's buffer on the stack when it is smaller than this (kMaxStackAlloca).
STACK_BYTES = 1024
ACC_BYTES = 4       # an fp32 or int32 accumulator lane
# Weights (elements) up to which a threaded kernel keeps pixels outermost anyway: 512 x 1024
# (2 MB of fp32) measured as fast either way; 1024 x 1024 was 3 % slower with pixels outermost.
SHARED_PANEL_WEIGHTS = 512 * 1024


@dataclass(frozen=True)
class Tile:
    lanes: int              # fp32 lanes of the vectorized loop
    vectors: int            # vectors along the contiguous axis held by the micro-kernel
    rows: int               # rows (pixels or channels) held by the micro-kernel
    unroll_reduction: bool  # a window small enough to unroll (depthwise taps, first conv)
    channels_outer: bool    # weight panels outermost (weights larger than the data)
    parallel: bool


def _divisors(n: int, limit: int) -> list[int]:
    return [d for d in range(1, min(n, limit) + 1) if n % d == 0]


def lanes_for(unit: VectorUnit, extent: int) -> int:
    """The widest power-of-two vector not wider than the unit's that divides the axis."""
    lanes = unit.lanes
    while lanes > 1 and extent % lanes:
        lanes //= 2
    return lanes


def _best(unit: VectorUnit, lanes: int, vec_extent: int, row_extent: int, max_vectors: int,
          spare: int) -> tuple[int, int]:
    """(vectors, rows): most accumulators that fit beside `vectors` operands and `spare`
    other registers, then fewest loads per step."""
    best, best_key = (1, 1), None
    for nv in _divisors(vec_extent // lanes, max_vectors):
        for mr in _divisors(row_extent, unit.registers):
            if nv * mr + nv + spare > unit.registers or nv * mr > max(unit.registers // 2, 1):
                continue
            if nv * mr * lanes * ACC_BYTES >= STACK_BYTES:
                continue
            key = (nv * mr, -(nv + mr))
            if best_key is None or key > best_key:
                best, best_key = (nv, mr), key
    return best


def choose(a: Anatomy, unit: VectorUnit) -> Tile | None:
    vec_extent = a.extents[a.vector]
    row_extent = a.extents[a.row] if a.row is not None else 1
    window = 1
    for i in a.reduce:
        window *= a.extents[i]
    lanes = lanes_for(unit, vec_extent)
    if a.kind == "conv" and a.vector != a.channel:
        # Channels-first, the first conv's vector along the output row is a stride-2 gather
        # with a padding condition per lane, which LLVM scalarizes: register blocking alone
        # does better (rpi4, 0.25/64: 2.25 instructions per multiply-add instead of 3.85;
        # depthwise kernels measured the other way, 4.1 vectorized against 5.2).
        lanes = 1
    if vec_extent == 1:
        return None     # nothing contiguous to run along (a channels-first pool)
    if a.kind in ("pointwise", "conv"):
        nv, mr = _best(unit, lanes, vec_extent, row_extent, 4, spare=1)
    elif a.kind == "depthwise":
        # Each tap loads a data vector per accumulator: keep one spare per row in flight.
        nv, mr = _best(unit, lanes, vec_extent, row_extent, 2, spare=2)
    elif a.kind == "dense":
        # A matrix-vector product streams the weights once: several independent
        # accumulators hide the FMA latency, more buy nothing.
        nv, mr = _best(unit, lanes, vec_extent, 1, 8, spare=1)
    else:  # pool: one pass over the window per channel vector
        nv, mr = _best(unit, lanes, vec_extent, 1, 4, spare=1)
    work = 1
    for i in a.spatial:
        work *= a.extents[i]
    # Whichever of weights and data is larger is streamed once; the smaller one is reused
    # from cache across the other's tiles. A depthwise panel's weights serve only its own
    # channels, so nothing is reused across panels: pixels outermost, each pixel's channels
    # read in order (panels outermost read 128 bytes of each pixel per sweep: the 14x14x512
    # kernels ran 1.7x slower, Zen 4, EM_NUM_THREADS=1 profile).
    weights = a.extents[a.channel] * window if a.channel is not None else 0
    data = work // a.extents[a.channel] * window if a.channel is not None else work
    parallel = unit.parallel and work * window >= 4096
    # Split among threads, panels outermost give each core a share of every pixel's
    # channels, and the next kernel, split by pixels, reads half of its input from the other
    # core's cache (the 14x14 depthwise kernels after such pointwise ones: 0.024 -> 0.016 ms,
    # 2 threads, Zen 4). Threaded, pixels stay outermost unless the weights outgrow that.
    streamed = weights > data and not (parallel and weights <= SHARED_PANEL_WEIGHTS)
    return Tile(lanes=lanes, vectors=nv, rows=mr,
                unroll_reduction=a.kind in ("depthwise", "conv") and window <= 32,
                channels_outer=streamed and a.kind != "depthwise", parallel=parallel)
