"""Patch-based execution of the early stages (MCUNetV2-style), the arithmetic: which input
window each output tile needs, the multiply-adds the recomputed halos cost, the arena a split
needs, and the search over the split (P x P tiles of the output of stage k). A patched
program reads its input in the frame buffer, where the protocol received it, so its arena
holds activations only.

Pure shape arithmetic on a `Step` list (one step = one spatial operation and the elementwise
ops after it, in the order the network runs them); compiler/patches.py reads the steps off
the Relax graph and rewrites it. The arena estimate runs the real planner (compiler/memory.py)
on the tensors the patched program materializes: per tile its input window and each step's
output, the P x P tile outputs until their concatenation, then the rest layer by layer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from edge_mnv1.errors import UsageError
from edge_mnv1.compiler import memory
from edge_mnv1.compiler.graph import CallInfo, Program, TensorInfo

DEFAULT_MAC_BUDGET = 0.10   # at most 10 % more multiply-adds than layer by layer
MAX_TILES = 8               # P from 2 to this


@dataclass(frozen=True)
class Step:
    """One spatial operation (conv or pad) and the elementwise ops after it."""

    kind: str                  # "conv" | "pad"
    kernel: tuple              # (kh, kw); (1, 1) for a pad
    stride: tuple              # (sh, sw)
    pads: tuple                # (top, left, bottom, right)
    in_hw: tuple
    out_hw: tuple
    out_pixel_bytes: int       # bytes of one output pixel (all channels) as stored
    macs_per_pixel: int        # multiply-adds per output pixel (all channels); 0 for a pad

    @property
    def out_bytes(self) -> int:
        return self.out_hw[0] * self.out_hw[1] * self.out_pixel_bytes

    @property
    def macs(self) -> int:
        return self.out_hw[0] * self.out_hw[1] * self.macs_per_pixel


@dataclass(frozen=True)
class Split:
    """P x P tiles of the output of step `stage` (1-based: steps 1..stage run per tile)."""

    tiles: int
    stage: int

    def __str__(self) -> str:
        return f"{self.tiles}x{self.tiles}@{self.stage}"


@dataclass
class Plan:
    """The chosen split (None: layer by layer) and what it costs and saves."""

    split: Split | None
    arena_patched: int             # the estimate with this split
    arena_layer_by_layer: int      # the estimate without patches (input in the arena or not)
    layer_by_layer_bound: int      # the largest input + output of one layer
    macs: int                      # of the patched steps, layer by layer
    extra_macs: int                # recomputed halos
    windows: list = field(default_factory=list)   # per tile: per step ((h0, h1), (w0, w1)) in
    #                                                its input, and the pads of the tile

    @property
    def overhead(self) -> float:
        return self.extra_macs / self.macs if self.macs else 0.0


def parse(spec: str) -> str | Split:
    """"auto", "off" or "PxP@K" (K: the number of spatial steps run per tile)."""
    if spec in ("auto", "off"):
        return spec
    m = re.fullmatch(r"(\d+)x(\d+)@(\d+)", spec)
    if not m or m[1] != m[2] or int(m[1]) < 2 or int(m[3]) < 1:
        raise UsageError(f"--patches {spec!r}: give auto, off or PxP@K (P >= 2 tiles a side, "
                         "K >= 1 spatial layers run per tile), e.g. 3x3@6")
    return Split(int(m[1]), int(m[3]))


def ranges(n: int, parts: int) -> list[tuple[int, int]]:
    """`n` split into `parts` contiguous ranges, sizes differing by at most one."""
    edges = [n * i // parts for i in range(parts + 1)]
    return [(edges[i], edges[i + 1]) for i in range(parts)]


def _needed(step: Step, axis: int, lo: int, hi: int) -> tuple[int, int, int, int]:
    """(r0, r1, pad_before, pad_after): the input rows [r0, r1) of `step` that output rows
    [lo, hi) read, and the padding the tile adds where the window leaves the input."""
    s, k, before = step.stride[axis], step.kernel[axis], step.pads[axis]
    u0, u1 = lo * s - before, (hi - 1) * s - before + k
    r0, r1 = max(0, u0), min(step.in_hw[axis], u1)
    return r0, r1, r0 - u0, u1 - r1


def tile_windows(steps: list[Step], split: Split) -> list[list[tuple]]:
    """Per tile (row-major), per step: ((r0, r1), (c0, c1), pads) with pads = (top, left,
    bottom, right) for that step on the tile."""
    last = steps[split.stage - 1]
    tiles = []
    for rows in ranges(last.out_hw[0], split.tiles):
        for cols in ranges(last.out_hw[1], split.tiles):
            per_step, want = [], (rows, cols)
            for step in reversed(steps[:split.stage]):
                h = _needed(step, 0, *want[0])
                w = _needed(step, 1, *want[1])
                per_step.append(((h[0], h[1]), (w[0], w[1]), (h[2], w[2], h[3], w[3]), want))
                want = ((h[0], h[1]), (w[0], w[1]))
            tiles.append(per_step[::-1])
    return tiles


def area(r: tuple, c: tuple) -> int:
    return (r[1] - r[0]) * (c[1] - c[0])


def extra_macs(steps: list[Step], split: Split, windows=None) -> int:
    windows = windows or tile_windows(steps, split)
    done = sum(area(*t[i][3]) * steps[i].macs_per_pixel
               for t in windows for i in range(split.stage))
    return done - sum(s.macs for s in steps[:split.stage])


def layer_by_layer_bound(steps: list[Step], input_bytes: int) -> int:
    """The largest input + output of one step: no layer-by-layer plan goes below it."""
    ins = [input_bytes] + [s.out_bytes for s in steps[:-1]]
    return max(i + s.out_bytes for i, s in zip(ins, steps))


def _program(steps: list[Step], input_bytes: int, split: Split | None,
             in_place: bool = False) -> Program:
    """The tensors and calls the (patched) program materializes, for the planner;
    `in_place`: the program reads its input in the frame buffer even layer by layer."""
    prog = Program()

    def tensor(nbytes: int, kind: str = "activation") -> TensorInfo:
        t = TensorInfo(len(prog.tensors), f"t{len(prog.tensors)}", (nbytes,), "uint8", kind)
        prog.tensors.append(t)
        return t

    def call(args: list[TensorInfo], out: TensorInfo) -> None:
        i = len(prog.calls)
        for t in args:
            t.last = i
        out.first = out.last = i
        prog.calls.append(CallInfo("k", [t.index for t in args] + [out.index]))

    x = tensor(input_bytes, "input")
    prog.input, cur, first = x.index, x, 0
    if split is not None:
        outs = []
        in_pixel = input_bytes // (steps[0].in_hw[0] * steps[0].in_hw[1])
        for t in tile_windows(steps, split):
            win = tensor(area(t[0][0], t[0][1]) * in_pixel)
            call([x], win)
            prev = win
            for i in range(split.stage):
                out = tensor(area(*t[i][3]) * steps[i].out_pixel_bytes)
                call([prev], out)
                prev = out
            outs.append(prev)
        cur = tensor(steps[split.stage - 1].out_bytes)
        call(outs, cur)
        first = split.stage
    for step in steps[first:]:
        out = tensor(step.out_bytes)
        call([cur], out)
        cur = out
    prog.output = cur.index
    prog.tensors[prog.output].kind = "output"
    prog.tensors[prog.output].last = x.last = len(prog.calls)
    # Patched, the kernels read the input in the frame buffer: the arena holds activations
    # only. Layer by layer the arena keeps a copy of the input, except where the kernels
    # read it in place (compiler/integer_arm_m.py).
    prog.input_in_frame_buffer = split is not None or in_place
    return prog


def arena(steps: list[Step], input_bytes: int, split: Split | None,
          in_place: bool = False) -> int:
    return memory.plan_arena(_program(steps, input_bytes, split, in_place))


def plan(steps: list[Step], input_bytes: int, split: Split | None,
         in_place: bool = False) -> Plan:
    bound = layer_by_layer_bound(steps, input_bytes)
    plain = arena(steps, input_bytes, None, in_place)
    if split is None:
        return Plan(None, plain, plain, bound, 0, 0)
    if split.stage > len(steps) or split.tiles > steps[split.stage - 1].out_hw[0] \
            or split.tiles > steps[split.stage - 1].out_hw[1]:
        raise UsageError(f"--patches {split}: the network's first {len(steps)} spatial layers "
                         f"can run per tile, and layer {min(split.stage, len(steps))}'s output "
                         "must be at least P x P pixels; choose a smaller P or K")
    windows = tile_windows(steps, split)
    macs = sum(s.macs for s in steps[:split.stage])
    return Plan(split, arena(steps, input_bytes, split), plain, bound, macs,
                extra_macs(steps, split, windows), windows)


def search(steps: list[Step], input_bytes: int, mac_budget: float = DEFAULT_MAC_BUDGET,
           in_place: bool = False) -> Plan:
    """The split with the smallest arena whose recomputed halos stay within `mac_budget` of
    the whole network's multiply-adds (fewer extra MACs on a tie); layer by layer when no
    split beats it."""
    total = sum(s.macs for s in steps) or 1
    best = plan(steps, input_bytes, None, in_place)
    best_key = (best.arena_patched, 0)
    for stage in range(1, len(steps) + 1):
        hw = steps[stage - 1].out_hw
        for p in range(2, min(MAX_TILES, hw[0], hw[1]) + 1):
            split = Split(p, stage)
            extra = extra_macs(steps, split)
            if extra > mac_budget * total:
                continue
            key = (arena(steps, input_bytes, split), extra)
            if key < best_key:
                best_key, best = key, plan(steps, input_bytes, split, in_place)
    return best
