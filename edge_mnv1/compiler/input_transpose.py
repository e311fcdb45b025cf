"""The input's NCHW -> NHWC transpose folded into the first convolution.

A channels-last compile (lowering.fuse, layout "NHWC") starts with a transpose of the image,
a kernel of its own: 0.04-0.06 ms of the 1.0/224 inference on 2 threads (Zen 4), as much
as four 14x14 depthwise layers. FuseOps keeps it apart, as it fuses no producer into a
convolution. This pass, run between FuseOps and FuseTIR, moves the transpose's call into the
first convolution's fused function (merge_calls), so FuseTIR makes one kernel of both and
the default schedule inlines the transpose into the convolution's reads (each input value
is a scalar broadcast there, so reading it channels-first costs nothing).

Only the shape the importer makes is rewritten: the entry function's first binding is a
transpose of its float image, used only by the next fused call. Anything else is left as it
is.
"""

from __future__ import annotations

import tvm
from tvm import relax

from edge_mnv1.compiler import merge_calls


def fold(mod: tvm.IRModule) -> tvm.IRModule:
    bindings = merge_calls.main_bindings(mod)
    if not bindings or len(bindings) < 2:
        return mod
    first, second, *rest = bindings
    if not (_is_input_transpose(first, mod["main"])
            and merge_calls.mergeable(mod, first, second, rest)):
        return mod
    name = "fused_transpose_" + second.value.op.name_hint.removeprefix("fused_")
    out, merged = merge_calls.merge(mod, name, first, second)
    return merge_calls.with_main_bindings(out, [merged, *rest])


def _is_input_transpose(binding, main: relax.Function) -> bool:
    call = binding.value
    if not (merge_calls.is_call_tir(call) and call.args[0].name_hint.startswith("transpose")):
        return False
    fields = call.args[1].fields
    image = main.params[0]
    return len(fields) == 1 and fields[0].same_as(image) and isinstance(
        image.ty, relax.TensorType) and image.ty.dtype == "float32" and image.ty.ndim == 4
