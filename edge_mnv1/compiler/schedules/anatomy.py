"""What a kernel is, read off its blocks rather than its name.

After inlining, a MobileNetV1 kernel is one reduction block (conv, depthwise conv, matmul,
mean) and at most one consumer (bias + ReLU, the mean's division). Which iterators index
which buffer tells the class apart: a weight indexed by an output channel that the data is
indexed by too is a depthwise conv; a weight reduced over one channel axis only is a
pointwise conv; one reduced over a window as well is a full conv; a single input is a pool.
"""

from __future__ import annotations

from dataclasses import dataclass

import tvm.s_tir as s_tir
import tvm.tirx as tirx

SPATIAL, REDUCE = 0, 2          # tirx.IterVar kinds: kDataPar, kCommReduce


@dataclass
class Anatomy:
    kind: str                   # pointwise | depthwise | conv | dense | pool
    block: object               # the reduction's SBlockRV
    epilogue: object | None     # its consumer, if any
    extents: list[int]          # per iterator, in the block's (= its loops') order
    spatial: list[int]          # iterator positions, in the output's dimension order
    reduce: list[int]
    vector: int                 # iterator of the output's contiguous dimension
    row: int | None             # iterator a micro-kernel blocks in registers besides `vector`
    channel: int | None         # the output channel (indexes the weight)
    weight: tirx.Buffer | None
    weight_dims: list[int | None]   # iterator indexing each weight dimension (None: constant)


def inline_all(sch: s_tir.Schedule, keep: frozenset[str] = frozenset()) -> None:
    """Inline every producer (padding) and consumer (bias, ReLU) that can be, except the
    blocks named in `keep`."""
    root = sch.get_sblock("root")
    changed = True
    while changed:
        changed = False
        for block in sch.get_child_blocks(root):
            if sch.get(block).name_hint in keep:
                continue
            for inline in (sch.compute_inline, sch.reverse_compute_inline):
                try:
                    inline(block)
                    changed = True
                    break
                except Exception:  # not inlinable this way (e.g. the reduction itself)
                    continue
            if changed:
                break


def _vars(expr) -> set:
    return set(tirx.analysis.undefined_vars(expr, []))


def reductions(sch: s_tir.Schedule, blocks=None) -> list:
    blocks = sch.get_child_blocks(sch.get_sblock("root")) if blocks is None else blocks
    return [b for b in blocks if any(iv.iter_type == REDUCE for iv in sch.get(b).iter_vars)]


def analyse(sch: s_tir.Schedule, func: tirx.PrimFunc, part=None) -> Anatomy | None:
    """None when the kernel is not one of the classes the default schedules know. `part`:
    (reduction, its epilogue) of a kernel of several (schedules/dw_pw.py), whose data may
    be an intermediate buffer of the kernel rather than a parameter."""
    if part is None:
        blocks = sch.get_child_blocks(sch.get_sblock("root"))
        found = reductions(sch, blocks)     # (no schedule call of its own: seeds' traces)
        if len(found) != 1 or len(blocks) > 2 or blocks[0] != found[0]:
            return None
        part = (found[0], blocks[1] if len(blocks) == 2 else None)
    block, epilogue = part
    node = sch.get(block)
    ivars = list(node.iter_vars)
    if len(sch.get_loops(block)) != len(ivars):
        return None
    if not all(isinstance(iv.dom.extent, tirx.IntImm) for iv in ivars):
        return None
    pos = {iv.var: i for i, iv in enumerate(ivars)}
    out = node.writes[0]
    if out.source.dtype not in ("float32", "int32") or len(node.writes) != 1:
        return None     # float, or an integer reduction into int32 accumulators
    spatial = [pos.get(r.min) for r in out.region]      # in the output's dimension order
    data_parallel = [i for i, iv in enumerate(ivars) if iv.iter_type == SPATIAL]
    if None in spatial or sorted(spatial) != data_parallel:
        return None
    reduce = [i for i, iv in enumerate(ivars) if iv.iter_type == REDUCE]
    if len(reduce) + len(spatial) != len(ivars):
        return None
    extents = [int(iv.dom.extent) for iv in ivars]
    inputs = [r for r in node.reads if not r.source.same_as(out.source)]
    common = dict(block=block, epilogue=epilogue,
                  extents=extents, spatial=spatial, reduce=reduce, vector=spatial[-1])
    if len(inputs) == 1:
        return Anatomy(kind="pool", row=None, channel=None, weight=None, weight_dims=[],
                       **common)
    if len(inputs) != 2:
        return None
    return _contraction(func, inputs, pos, common)


def _contraction(func, inputs, pos, common) -> Anatomy | None:
    """Data and weight: the data is the earlier parameter (Relax passes an operator's
    activation first); the weight is indexed by plain iterators only."""
    params = list(func.params)          # the kernel's argument buffers
    # An intermediate buffer (a fused kernel's) counts as the earliest: it is the data.
    order = [next((i for i, b in enumerate(params) if b.same_as(r.source)), -1) for r in inputs]
    if order.count(-1) > 1:
        return None
    data, weight = (inputs[0], inputs[1]) if order[0] < order[1] else (inputs[1], inputs[0])
    weight_dims = []
    for r in weight.region:
        if isinstance(r.min, tirx.IntImm):
            weight_dims.append(None)
        elif r.min in pos:
            weight_dims.append(pos[r.min])
        else:
            return None
    data_vars = {pos[v] for r in data.region for v in _vars(r.min) if v in pos}
    spatial, extents = common["spatial"], common["extents"]
    channels = [i for i in spatial if i in weight_dims]
    if len(channels) != 1:
        return None
    channel = channels[0]
    windows = [i for i in common["reduce"] if extents[i] > 1]
    if len(spatial) == 2:
        kind, row = "dense", spatial[0]
    elif len(spatial) != 4:
        return None
    elif channel in data_vars:
        kind = "depthwise"
    else:
        kind = "pointwise" if len(windows) == 1 else "conv"
    if len(spatial) == 4:
        # Channels-last: the micro-kernel's rows are pixels along the output's width;
        # channels-first: they are output channels (the vector runs along the width).
        row = spatial[-2] if common["vector"] == channel else channel
    return Anatomy(kind=kind, row=row, channel=channel, weight=weight.source,
                   weight_dims=weight_dims, **common)
