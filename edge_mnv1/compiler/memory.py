"""The static memory plan: every activation gets a fixed offset in one arena.

Greedy by size (largest first, lowest offset that overlaps no tensor alive at the same
time), the offline planner TFLite Micro also uses. The liveness lower bound (the most bytes
alive at any one call) is reported beside it: no plan can use less.
"""

from __future__ import annotations

from .graph import Program, TensorInfo

ALIGN = 64


def _align(n: int, a: int = ALIGN) -> int:
    return (n + a - 1) // a * a


def _overlap_in_time(a: TensorInfo, b: TensorInfo) -> bool:
    return a.first <= b.last and b.first <= a.last


def plan_arena(prog: Program) -> int:
    """Assigns offsets to input, output and activations; returns the arena size in bytes."""
    live = [t for t in prog.tensors if t.kind != "weight"]
    placed: list[TensorInfo] = []
    for t in sorted(live, key=lambda t: (-t.nbytes, t.index)):
        size = _align(t.nbytes)
        conflicts = sorted((p.offset, p.offset + _align(p.nbytes))
                           for p in placed if _overlap_in_time(p, t))
        offset = 0
        for start, stop in conflicts:
            if offset + size <= start:
                break
            offset = max(offset, stop)
        t.offset = offset
        placed.append(t)
    return max((t.offset + _align(t.nbytes) for t in placed), default=0)


def liveness_lower_bound(prog: Program) -> int:
    live = [t for t in prog.tensors if t.kind != "weight"]
    steps = range(-1, len(prog.calls) + 1)
    return max(sum(_align(t.nbytes) for t in live if t.first <= s <= t.last) for s in steps)


def total_activation_bytes(prog: Program) -> int:
    return sum(_align(t.nbytes) for t in prog.tensors if t.kind != "weight")


def plan_weights(prog: Program) -> int:
    """Offsets of the weights in one blob, in call order; returns the blob size."""
    offset = 0
    for t in prog.of_kind("weight"):
        t.offset = offset
        offset += _align(t.nbytes)
    return offset
