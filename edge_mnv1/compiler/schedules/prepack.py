"""A default schedule asks for its weights in the micro-kernel's panel layout the way
MetaSchedule's RewriteLayout postproc does: the kernel reads a copy of the weights made by
a block annotated `meta_schedule.layout_rewrite_preproc`, in a layout of its own.
`lowering.prepack_weights` then splits that block off and runs it on the constants at
compile time, so `weights.bin` holds the panels and nothing is copied at run time."""

from __future__ import annotations

import tvm.s_tir as s_tir
import tvm.tirx as tirx


def layout_free(func: tirx.PrimFunc, weight: tirx.Buffer | None) -> bool:
    """Whether Relax marked the weight rewritable (`prepack_weights = true` targets)."""
    if weight is None:
        return False
    free = (func.attrs or {}).get("layout_free_buffers", [])
    return any(func.params[int(i)].same_as(weight) for i in free)


def request(sch: s_tir.Schedule, block, weight: tirx.Buffer, dim: int, panel: int) -> None:
    """Weight dimension `dim` (the one the vectorized loop runs along) becomes
    (dim // panel, ..., dim % panel): each reduction step reads `panel` contiguous values."""
    reads = sch.get(block).reads
    index = next(i for i, r in enumerate(reads) if r.source.same_as(weight))
    copy = sch.cache_read(block, index, "global")
    sch.annotate(copy, "meta_schedule.layout_rewrite_preproc", 1)

    def panels(*i):
        return [*i[:dim], i[dim] // panel, *i[dim + 1:], i[dim] % panel]

    sch.transform_layout(block, ("read", index),
                         tirx.IndexMap.from_func(panels, ndim=len(weight.shape)))
