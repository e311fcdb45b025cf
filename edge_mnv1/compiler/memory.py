"""The static memory plan: every activation gets a fixed offset in one arena.

Greedy (each tensor at the lowest offset that overlaps no tensor alive at the same time),
tried in a few placement orders, keeping the smallest; largest-first alone is the offline
planner TFLite Micro uses. The liveness lower bound (the most bytes
alive at any one call) is reported beside it: no plan can use less.
"""

from __future__ import annotations

from edge_mnv1.compiler.graph import Program, TensorInfo

ALIGN = 64


# model.c's tables on a 32-bit MCU (compiler/emit.py): a DLTensor is 40 bytes (its uint64
# byte_offset aligned to 8) plus an int64 per dimension; a call entry 24 bytes plus a
# 16-byte TVMFFIAny per argument. A patched program has hundreds of tensors, so the budget
# counts them rather than leaving them to the runtime's small allowance.
_DLTENSOR_BYTES, _CALL_BYTES, _ARG_BYTES = 40, 24, 16


def table_bytes(prog: Program) -> dict:
    """{"tensor_table_bytes" (RAM: writable descriptors), "call_table_bytes" (flash)}."""
    return {"tensor_table_bytes": sum(_DLTENSOR_BYTES + 8 * max(len(t.shape), 1)
                                      for t in prog.tensors),
            "call_table_bytes": sum(_CALL_BYTES + _ARG_BYTES * len(c.args) + len(c.kernel) + 1
                                    for c in prog.calls)}


def _align(n: int, a: int = ALIGN) -> int:
    return (n + a - 1) // a * a


def _overlap_in_time(a: TensorInfo, b: TensorInfo) -> bool:
    return a.first <= b.last and b.first <= a.last


# Orders in which tensors are placed; the plan keeps the smallest arena any of them gives.
# Largest-first is TFLite Micro's; the others win on graphs where a short-lived large tensor
# (e.g. the input's channels-last copy) would otherwise push the long-lived ones upward.
_ORDERS = {
    "largest first": lambda t: (-t.nbytes, t.index),
    "longest-lived first": lambda t: (-(t.last - t.first), -t.nbytes, t.index),
    "first written first": lambda t: (t.first, -t.nbytes, t.index),
    "largest area first": lambda t: (-t.nbytes * (t.last - t.first + 1), t.index),
}


def _place(live: list[TensorInfo], order) -> tuple[int, dict[int, int]]:
    placed: list[tuple[TensorInfo, int]] = []
    for t in sorted(live, key=order):
        size = _align(t.nbytes)
        conflicts = sorted((off, off + _align(p.nbytes))
                           for p, off in placed if _overlap_in_time(p, t))
        offset = 0
        for start, stop in conflicts:
            if offset + size <= start:
                break
            offset = max(offset, stop)
        placed.append((t, offset))
    size = max((off + _align(t.nbytes) for t, off in placed), default=0)
    return size, {t.index: off for t, off in placed}


def _in_arena(prog: Program) -> list[TensorInfo]:
    return [t for t in prog.tensors if t.kind != "weight"
            and not (t.kind == "input" and prog.input_in_frame_buffer)]


def plan_arena(prog: Program) -> int:
    """Assigns offsets to input, output and activations; returns the arena size in bytes.
    An input read from the frame buffer gets offset 0 there."""
    live = _in_arena(prog)
    if prog.input_in_frame_buffer:
        prog.tensors[prog.input].offset = 0
    size, offsets = min((_place(live, order) for order in _ORDERS.values()),
                        key=lambda r: r[0])
    for t in live:
        t.offset = offsets[t.index]
    return size


def liveness_lower_bound(prog: Program) -> int:
    live = _in_arena(prog)
    steps = range(-1, len(prog.calls) + 1)
    return max(sum(_align(t.nbytes) for t in live if t.first <= s <= t.last) for s in steps)


def total_activation_bytes(prog: Program) -> int:
    return sum(_align(t.nbytes) for t in _in_arena(prog))


def plan_weights(prog: Program) -> int:
    """Offsets of the weights in one blob, in call order; returns the blob size."""
    offset = 0
    for t in prog.of_kind("weight"):
        t.offset = offset
        offset += _align(t.nbytes)
    return offset
