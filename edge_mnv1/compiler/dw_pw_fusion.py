"""A depthwise convolution fused with the pointwise one that reads its output.

Between FuseOps and FuseTIR, each depthwise fused call whose output is read only by a
pointwise fused call is merged with it (merge_calls), where that output is large enough to
leave the cache between the two kernels; FuseTIR then makes one kernel of both, which the
default schedule runs row by row (schedules/dw_pw.py): a row of the depthwise output is
made just before the pointwise micro-kernel reads it, from L1. Stride-2 depthwise layers
stay apart: fused, the 112x112 -> 56x56 one ran 1.2x slower (its pixels are read at a
stride of 2, so a row tile reuses less). Turned on per target file (`fuse_depthwise`).
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.ir.expr import Constant

from edge_mnv1.compiler import merge_calls

# Depthwise outputs smaller than this stay in the L2 between the two kernels anyway.
MIN_BYTES = 512 * 1024


def fuse(mod: tvm.IRModule) -> tvm.IRModule:
    bindings = merge_calls.main_bindings(mod)
    if not bindings:
        return mod
    out, kept, i = mod, [], 0
    while i < len(bindings):
        b = bindings[i]
        if i + 1 < len(bindings) and _is_pair(out, b, bindings[i + 1], bindings[i + 2:]):
            name = "fused_dw_pw_" + bindings[i + 1].value.op.name_hint.removeprefix("fused_")
            out, merged = merge_calls.merge(out, name, b, bindings[i + 1])
            kept.append(merged)
            i += 2
        else:
            kept.append(b)
            i += 1
    return merge_calls.with_main_bindings(out, kept) if len(kept) < len(bindings) else mod


def _weight_shape(call) -> list[int] | None:
    if not (isinstance(call, relax.Call) and len(call.args) >= 2
            and isinstance(call.args[1], Constant)):
        return None
    return [int(d) for d in call.args[1].value.shape]


def _is_pair(mod, first, second, later) -> bool:
    dw, pw = _weight_shape(first.value), _weight_shape(second.value)
    out = first.var.ty
    if dw is None or pw is None or not isinstance(out, relax.TensorType) or out.ndim != 4:
        return False
    if out.dtype != "float32" or not all(isinstance(d, tvm.tirx.IntImm) for d in out.shape):
        return False
    data = first.value.args[0].ty
    if not isinstance(data, relax.TensorType) or data.ndim != 4 or \
            [int(data.shape[i]) for i in (1, 2)] != [int(out.shape[i]) for i in (1, 2)]:
        return False    # stride 2: measured slower fused (1.2x, 112x112 -> 56x56)
    channels = int(out.shape[3])
    size = 4
    for d in out.shape:
        size *= int(d)
    return (dw == [channels, 3, 3, 1] and len(pw) == 4 and pw[1:] == [1, 1, channels]
            and size >= MIN_BYTES and merge_calls.mergeable(mod, first, second, later))
