"""Relax from the importer -> fused kernels with a schedule each.

legalize + fuse (what `tune` extracts its tasks from, and what `compile` applies records to),
then every kernel that no tuning record covers gets a default schedule: a register-blocked,
vectorized one sized for the target (compiler/schedules/) for MobileNetV1's kernel classes,
a plain one that inlines padding and epilogue for the rest.
"""

from __future__ import annotations

import tvm
from tvm import relax
import tvm.tirx as tirx
import tvm.s_tir as s_tir

from edge_mnv1 import log
from edge_mnv1.compiler import cpu_intrinsics, dw_pw_fusion, input_transpose, schedules
from edge_mnv1.compiler.integer import options_for as integer_options
from edge_mnv1.compiler.integer_arm_m import EXTERN_ATTR
from edge_mnv1.compiler.schedules.anatomy import inline_all
from edge_mnv1.compiler.tvm_target import vector_unit


_FOLD_INPUT_TRANSPOSE = tvm.ir.transform.module_pass(
    lambda mod, _ctx: input_transpose.fold(mod), opt_level=0, name="FoldInputTranspose")


_FUSE_DW_PW = tvm.ir.transform.module_pass(
    lambda mod, _ctx: dw_pw_fusion.fuse(mod), opt_level=0, name="FuseDepthwisePointwise")


def layout_for(target, integer: bool) -> tuple[str, bool]:
    """(activation layout, prepack weights) for a compile: the target file's choice; an
    integer model is built in that layout by compiler/integer.py (ConvertLayout then finds
    nothing left to convert) and keeps its weights as built."""
    if integer:
        # Prepacked where the target prepacks: the int8 dot-product kernels read panels.
        return integer_options(target)[0], target.prepack_weights
    return target.layout, target.prepack_weights


def fuse(mod: tvm.IRModule, target: tvm.target.Target, fold_constants: bool = True,
         layout: str = "NCHW", prepack: bool = False, fuse_depthwise: bool = False
         ) -> tvm.IRModule:
    """fold_constants=False keeps casts of constants (the integer path's int32 multipliers
    widened to int64) inside the kernels instead of storing the widened constants.

    layout="NHWC" converts the convolutions to channels-last activations and OHWI weights
    (the channels a pointwise conv reduces over and a depthwise conv vectorizes over become
    contiguous). prepack=True marks every kernel's constant arguments layout-free, so that a
    tuned schedule may ask for its weights in a blocked layout of its own (`prepack_weights`
    then rewrites the constants at compile time). fuse_depthwise (fp32, channels-last): each
    large stride-1 depthwise conv in one kernel with the pointwise one after it
    (dw_pw_fusion)."""
    passes = [
        *([relax.transform.ConvertLayout({"relax.nn.conv2d": ["NHWC", "OHWI"]})]
          if layout == "NHWC" else []),
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        *([relax.transform.FoldConstant()] if fold_constants else []),
        relax.transform.FuseOps(),
        # fp32, channels-last: the image's transpose inside the first conv (input_transpose).
        *([_FOLD_INPUT_TRANSPOSE] if layout == "NHWC" and fold_constants else []),
        *([_FUSE_DW_PW] if layout == "NHWC" and fold_constants and fuse_depthwise else []),
        relax.transform.FuseTIR(),
        # Kernels of constants alone (an integer graph's unfused casts of requantization
        # constants) run now: prepack_weights folds constants later, and the calls must not
        # change between the graph MACs are read from and the compiled one.
        *([relax.transform.FoldConstant()] if prepack and not fold_constants else []),
        relax.transform.DeadCodeElimination(),
        *([relax.transform.AttachAttrLayoutFreeBuffers()] if prepack else []),
    ]
    with target:
        return tvm.ir.transform.Sequential(passes)(mod)


def prepack_weights(mod: tvm.IRModule) -> tvm.IRModule:
    """After records are applied: a kernel whose schedule rewrote its weights' layout gets
    that rewrite split off into a kernel of its own, which FoldConstant runs here, on the
    constants, so the program stores the weights already in the kernel's layout."""
    passes = [
        relax.transform.SplitLayoutRewritePreproc(),
        relax.transform.FoldConstant(),
        # The folded rewrites come back as a tuple of constants, read by TupleGetItem.
        relax.transform.CanonicalizeBindings(),
        relax.transform.DeadCodeElimination(),
    ]
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
    inline_all(sch)
    _epilogue_per_output(sch, sch.get_sblock("root"))
    return sch.mod["main"]


def default_schedule_for(func: tirx.PrimFunc, target: tvm.target.Target) -> tirx.PrimFunc:
    """The schedule a kernel gets on `target` when no record covers it (its weights, if it
    asks for panels, are still rewritten inside it: `prepack_weights` splits that off)."""
    made = schedules.apply(func, vector_unit(target))
    return made.func if made else default_schedule(func)


def _epilogue_per_output(sch: s_tir.Schedule, root) -> None:
    """A consumer cannot be inlined into a reduction, so the reduction's whole output would
    be a workspace buffer (the conv accumulator: 65 KB at 0.25/64, 3.2 MB at 1.0/224).
    Moving the epilogue under the reduction's innermost spatial loop shrinks it to one
    element, which lowers to a stack scalar instead of a workspace."""
    blocks = sch.get_child_blocks(root)
    for producer, consumer in zip(blocks, blocks[1:]):
        iters = sch.get(producer).iter_vars
        spatial = sum(1 for iv in iters if iv.iter_type == 0)   # kDataPar
        if spatial == len(iters) or spatial == 0:
            continue  # not a reduction, or a full reduction with no spatial loop
        loops = sch.get_loops(producer)
        if len(loops) != len(iters):
            continue  # loops already split or fused: not the shape this expects
        try:
            sch.reverse_compute_at(consumer, loops[spatial - 1], preserve_unit_loops=True)
        except Exception:  # e.g. the consumer reads more than one output element
            continue


def apply_default_schedules(mod: tvm.IRModule, target: tvm.target.Target | None = None
                            ) -> tuple[tvm.IRModule, list[str]]:
    """Schedules every kernel not already scheduled; returns the names it scheduled. With a
    target, MobileNetV1's kernel classes get schedules sized for its vector unit, and the
    weights those schedules ask for in panels are prepacked here."""
    unit = vector_unit(target) if target is not None else None
    out = tvm.IRModule(dict(mod.functions), attrs=mod.attrs)
    done, classes, packed = [], {}, False
    for gv, func in list(out.functions.items()):
        if isinstance(func, tirx.PrimFunc) and not is_scheduled(func) \
                and not (func.attrs or {}).get(EXTERN_ATTR):   # a call into the runtime
            made = schedules.apply(func, unit) if unit is not None else None
            out.update_func(gv, made.func if made else default_schedule(func))
            done.append(gv.name_hint)
            kind = made.kind if made else "plain"
            classes[kind] = classes.get(kind, 0) + 1
            packed = packed or bool(made and made.prepacked)
    if done:
        log.info("compile: default schedules: " +
                 ", ".join(f"{n} {k}" for k, n in sorted(classes.items())))
    return (prepack_weights(out) if packed else out), done


def load_intrinsics(target: tvm.target.Target) -> None:
    """A record's trace may tensorize with TVM's CPU intrinsics or the project's own, looked
    up by name: both registered for the target's CPU family."""
    cpu_intrinsics.load(str(target.attrs.get("mtriple", "")))
    schedules.int8_kernels.register_intrinsics(vector_unit(target))


def apply_database(mod: tvm.IRModule, target: tvm.target.Target, database) -> tuple[tvm.IRModule, list[str]]:
    """Applies tuning records; returns the module and the kernels that a record covered."""
    load_intrinsics(target)
    with target, database:
        tuned = relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(mod)
    applied = [name for name, f in kernels(tuned).items() if is_scheduled(f)]
    return tuned, applied
