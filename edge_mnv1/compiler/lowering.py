"""Relax from the importer -> fused kernels with a schedule each.

legalize + fuse (what `tune` extracts its tasks from, and what `compile` applies records to),
then every kernel that no tuning record covers gets a plain default schedule that inlines its
padding and epilogue, so that no untuned kernel needs a workspace buffer.
"""

from __future__ import annotations

import tvm
from tvm import relax
import tvm.tirx as tirx
import tvm.s_tir as s_tir


def fuse(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    passes = [
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
        relax.transform.DeadCodeElimination(),
    ]
    with target:
        return tvm.ir.transform.Sequential(passes)(mod)


def kernels(mod: tvm.IRModule) -> dict[str, tirx.PrimFunc]:
    return {gv.name_hint: f for gv, f in mod.functions.items() if isinstance(f, tirx.PrimFunc)}


def is_scheduled(func: tirx.PrimFunc) -> bool:
    """MetaSchedule marks the functions it scheduled from a record."""
    attrs = func.attrs or {}
    return "tirx.is_scheduled" in attrs or "tir.is_scheduled" in attrs


def default_schedule(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """Inline every producer (padding) and consumer (bias, ReLU) into the reduction block."""
    sch = s_tir.Schedule(func)
    root = sch.get_sblock("root")
    changed = True
    while changed:
        changed = False
        for block in sch.get_child_blocks(root):
            for inline in (sch.compute_inline, sch.reverse_compute_inline):
                try:
                    inline(block)
                    changed = True
                    break
                except Exception:  # not inlinable this way (e.g. the reduction itself)
                    continue
            if changed:
                break
    return sch.mod["main"]


def apply_default_schedules(mod: tvm.IRModule) -> tuple[tvm.IRModule, list[str]]:
    """Schedules every kernel not already scheduled; returns the names it scheduled."""
    out = tvm.IRModule(dict(mod.functions), attrs=mod.attrs)
    done = []
    for gv, func in list(out.functions.items()):
        if isinstance(func, tirx.PrimFunc) and not is_scheduled(func):
            out.update_func(gv, default_schedule(func))
            done.append(gv.name_hint)
    return out, done


def apply_database(mod: tvm.IRModule, target: tvm.target.Target, database) -> tuple[tvm.IRModule, list[str]]:
    """Applies tuning records; returns the module and the kernels that a record covered."""
    with target, database:
        tuned = relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(mod)
    applied = [name for name, f in kernels(tuned).items() if is_scheduled(f)]
    return tuned, applied
