"""What an int8 depthwise 3x3 kernel computes, read off its fused function: the shapes,
stride and padding of a channels-last `conv2d(uint8 x, int8 w) -> int32`, and which
parameters hold the bias, the multiplier and the right shift of docs/int8.md's
requantization (int8_requant_neon's matcher), with its clamp. int8_depthwise_x86 builds
the kernel from it; anything else (a left shift, a zero point that is not the padding)
is None and keeps the default schedule."""

from __future__ import annotations

from dataclasses import dataclass

import tvm.s_tir as s_tir
import tvm.tirx as tirx
from tvm.ir.expr import Call, TensorLoad
from tvm.sym.analyzer import Analyzer
from tvm_ffi import structural_map, structural_walk

from edge_mnv1.compiler.schedules import prepack
from edge_mnv1.compiler.schedules.anatomy import analyse, inline_all
from edge_mnv1.compiler.schedules.int8_requant_neon import Steps, requantized


@dataclass(frozen=True)
class Depthwise:
    h: int
    w: int
    c: int
    oh: int
    ow: int
    stride: int
    pad: int
    params: tuple       # positions: data, weight, bias | None, mult, right | None, out
    lo: int             # the clamp of the uint8 output, and its zero point
    hi: int
    zero: int


def recognize(func: tirx.PrimFunc) -> Depthwise | None:
    """The kernel's depthwise 3x3 description, or None."""
    sch = s_tir.Schedule(func)
    inline_all(sch)
    a = analyse(sch, func)
    if a is None or a.kind != "depthwise" or a.vector != a.channel or a.epilogue is None:
        return None
    if not prepack.layout_free(func, a.weight) or len(func.params) not in (5, 6):
        return None
    buffers = list(func.params)
    data, weight, out = buffers[0], buffers[1], buffers[-1]
    if (data.dtype, weight.dtype, out.dtype) != ("uint8", "int8", "uint8") or \
            not weight.same_as(a.weight) or len(data.shape) != 4 or len(out.shape) != 4:
        return None
    h, w, c = (int(v) for v in data.shape[1:])
    oh, ow, oc = (int(v) for v in out.shape[1:])
    if [int(v) for v in weight.shape] != [c, 3, 3, 1] or oc != c or int(data.shape[0]) != 1:
        return None
    window = _window(sch.get(a.block), data, a)
    rule = _rule(sch.get(a.epilogue), buffers)
    if window is None or rule is None:
        return None
    (stride, pad), (params, clamp) = window, rule
    per_channel = [buffers[i] for i in params[2:5] if i is not None]
    if any([int(v) for v in b.shape] != [1, 1, 1, c] or b.dtype != "int32"
           for b in per_channel):
        return None
    if not all(prepack.layout_free(func, b) for b in per_channel):
        return None     # the kernel prepacks its constants at compile time
    if (oh - 1) * stride + 3 > h + 2 * pad or (ow - 1) * stride + 3 > w + 2 * pad:
        return None
    return Depthwise(h, w, c, oh, ow, stride, pad, params, *clamp)


def _window(block, data, a) -> tuple[int, int] | None:
    """(stride, pad) of the data read `x[n, y*s + ry - pad, x*s + rx - pad, c]`, padded
    with 0 (a ReLU output's zero point: docs/int8.md)."""
    found = []

    def on_call(call):
        if call.op.name in ("tirx.if_then_else", "prim.if_then_else"):
            found.append(call)
    structural_walk(block.body, [(Call, on_call)])
    if len(found) != 1 or not isinstance(found[0].args[2], tirx.IntImm) \
            or found[0].args[2].value != 0 or not isinstance(found[0].args[1], TensorLoad) \
            or not found[0].args[1].source.same_as(data):
        return None
    load = found[0].args[1]
    ivars = [iv.var for iv in block.iter_vars]
    y, x, ch = a.spatial[1], a.spatial[2], a.channel
    windows = [i for i in a.reduce if a.extents[i] == 3]
    if len(windows) != 2 or any(a.extents[i] != 1 for i in a.reduce if i not in windows):
        return None
    ana = Analyzer()

    def at(dim, values):
        def value(v):
            i = next((i for i, iv in enumerate(ivars) if iv.same_as(v)), None)
            return v if i is None else tirx.IntImm(str(v.ty), values.get(i, 0))
        return ana.simplify(structural_map(load.indices[dim], [(tirx.Var, value)]))

    try:
        pad = -int(at(1, {}))
        stride = int(at(1, {y: 1})) + pad
        checks = [int(at(1, {windows[0]: 1})) + pad, int(at(2, {windows[1]: 1})) + pad,
                  int(at(2, {x: 1})) + pad, int(at(2, {})) + pad, int(at(3, {ch: 5}))]
    except TypeError:       # an index that is not affine in the iterators
        return None
    if checks != [1, 1, stride, 0, 5] or stride not in (1, 2) or pad not in (0, 1):
        return None
    return stride, pad


def _rule(epilogue, buffers) -> tuple[tuple, tuple] | None:
    """The rule's buffers (bias, multiplier, right shift positions) and its clamp."""
    store = epilogue.body
    if not isinstance(store, tirx.BufferStore) or not isinstance(store.value, tirx.Cast):
        return None
    seen = {}

    def high(a, mult):
        seen["a"], seen["mult"] = a, mult
        return tirx.IntImm("int32", 0)

    def rounded(t, right):
        seen["right"] = right
        return t

    def left(*_):
        seen["left"] = True
        return tirx.IntImm("int32", 0)

    new = requantized(store.value, Steps(left, high, rounded))
    if new is None or "left" in seen:
        return None
    value, zero = new.value, 0
    if isinstance(value, tirx.Add):
        value, zero = value.a, value.b.value
    lo, hi = value.b.value + zero, value.a.b.value + zero
    if lo < 0 or hi > 255:
        return None
    def param(e):
        if isinstance(e, TensorLoad):
            for i, b in enumerate(buffers):
                if b.same_as(e.source) and 1 < i < len(buffers) - 1:
                    return i
        return None

    a = seen["a"]
    bias = None
    if isinstance(a, tirx.Add):
        bias = param(a.b) if param(a.b) is not None else param(a.a)
        if bias is None:
            return None
    mult, right = param(seen["mult"]), param(seen.get("right"))
    if mult is None or ("right" in seen and right is None):
        return None
    return (0, 1, bias, mult, right, len(buffers) - 1), (lo, hi, zero)
