"""The chain of spatial steps a patched program runs per tile, read off the Relax graph's
`main` from the input on (compiler/patches.py rewrites it, compiler/patch_plan.py plans it).

`nn.conv2d` (any groups and strides) and `nn.pad` are spatial ops; elementwise ops, casts and
`permute_dims` pass through (their per-channel constants broadcast over a tile as over the
whole map). Two kinds of integer kernels are recognised by the integer model's layer they
compute, which gives their geometry: the first conv of compiler/integer.py (a TE kernel that
pads with the input's zero point) and, on Cortex-M, the kernels of compiler/integer_arm_m.py
that call the runtime's C int8 kernels (their layer's shape is in scalar arguments, not in
the graph). The chain's ops follow the integer model's layers from its input in order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax

from edge_mnv1.compiler.integer_arm_m import EXTERN_ATTR
from edge_mnv1.compiler.patch_plan import Step

_ELEMENTWISE = {f"relax.{n}" for n in (
    "add", "subtract", "multiply", "divide", "floor_divide", "maximum", "minimum", "clip",
    "astype", "right_shift", "left_shift", "nn.relu", "nn.relu6", "nn.leakyrelu", "sigmoid",
    "round", "floor", "negative", "bitwise_and", "bitwise_or")}
_EXTERN_NAME = re.compile(r"s8_(conv|pointwise|depthwise)_([a-z]+?)\d*")


@dataclass
class Op:
    binding: object
    kind: str            # "conv" | "pad" | "te_conv" | "extern" | "pass"
    layout: str          # of its output
    in_layout: str
    layer: object = None     # the integer model's layer ("te_conv", "extern")
    feature: str = ""        # "extern": the C kernels' feature ("dsp", "mve")


@dataclass
class Chain:
    """The ops from the input on that a tile can run, and their steps."""

    ops: list
    steps: list
    step_end: list       # per step: index in `ops` of its last op (before the next step)
    input_bytes: int


def bindings(mod: tvm.IRModule) -> list | None:
    blocks = mod["main"].body.blocks
    if len(blocks) != 1 or not isinstance(blocks[0], relax.DataflowBlock):
        return None
    return list(blocks[0].bindings)


def shape_of(expr) -> tuple:
    try:
        return tuple(int(d) for d in expr.ty.shape.values)
    except (AttributeError, TypeError):
        return ()


def _hw(shape: tuple, layout: str) -> tuple:
    return shape[layout.index("H")], shape[layout.index("W")]


def _layers_from_input(int_model) -> list:
    """The integer model's layers from its input on, each reading the one before."""
    if int_model is None:
        return []
    chain, cur = [], int_model.input
    for layer in int_model.layers:
        if layer.x != cur:
            break
        chain.append(layer)
        cur = layer.y
    return chain


def _kernel_layer(mod, value, cur, layers: list, done: int):
    """(kind, layer, feature) when `value` is an integer kernel computing the next layer of
    the chain (`layers[done]`) from `cur`, else None."""
    if not (isinstance(value.args[0], relax.GlobalVar) and isinstance(value.args[1], relax.Tuple)
            and value.args[1].fields and value.args[1].fields[0].same_as(cur)
            and done < len(layers) and layers[done].op == "conv"):
        return None
    layer, name = layers[done], value.args[0].name_hint
    weight = shape_of(value.args[1].fields[1]) if len(value.args[1].fields) > 1 else ()
    func = mod.functions.get(value.args[0])
    m = _EXTERN_NAME.fullmatch(name)
    if m and func is not None and (func.attrs or {}).get(EXTERN_ATTR) \
            and weight == layer.weight.transpose(0, 2, 3, 1).shape:
        return "extern", layer, m[2]
    if name.startswith("conv2d_pad") and done == 0 and weight in (
            layer.weight.shape, layer.weight.transpose(0, 2, 3, 1).shape):
        return "te_conv", layer, ""
    return None


def _kernel_layout(kind: str, value, layer, in_hw: tuple) -> str:
    """The layout of an integer kernel's output. A C kernel's is NHWC (integer_arm_m's
    `layer_call`); the TE conv's the graph's: told by where the output channels are, not by
    `shape[1] == channels` alone (an NHWC map whose height equals its channels, e.g.
    16x16x16, would pass for NCHW), else by its weight's layout (OIHW or OHWI)."""
    if kind == "extern":
        return "NHWC"
    (kh, kw), (sh, sw) = layer.weight.shape[2:], layer.strides
    top, left, bottom, right = layer.pads
    ho, wo = (in_hw[0] + top + bottom - kh) // sh + 1, (in_hw[1] + left + right - kw) // sw + 1
    o, shape = layer.weight.shape[0], shape_of(value)
    if shape != (1, ho, wo, o) or shape != (1, o, ho, wo):
        return "NHWC" if shape == (1, ho, wo, o) else "NCHW"
    return "NCHW" if shape_of(value.args[1].fields[1]) == layer.weight.shape else "NHWC"


def _classify(mod, value, cur, layout: str, layers: list, done: int):
    """(kind, output layout, layer, feature) of an op on the chain's current tensor, or None:
    not per-tile."""
    if not isinstance(value, relax.Call) or len(shape_of(value)) != 4:
        return None
    op = value.op.name if isinstance(value.op, tvm.ir.Op) else ""
    if op == "relax.nn.conv2d" and value.args[0].same_as(cur):
        a = value.attrs
        if a.data_layout != layout or any(int(d) != 1 for d in a.dilation):
            return None
        return "conv", str(a.out_layout or a.data_layout), None, ""
    if op == "relax.nn.pad" and value.args[0].same_as(cur):
        widths = [int(v) for v in value.attrs.pad_width]
        spatial = {2 * layout.index("H"), 2 * layout.index("H") + 1,
                   2 * layout.index("W"), 2 * layout.index("W") + 1}
        if value.attrs.pad_mode != "constant" or any(w for i, w in enumerate(widths)
                                                     if i not in spatial):
            return None
        return "pad", layout, None, ""
    if op == "relax.permute_dims" and value.args[0].same_as(cur):
        axes = [int(a) for a in value.attrs.axes] if value.attrs.axes is not None else [3, 2, 1, 0]
        return "pass", "".join(layout[a] for a in axes), None, ""
    if op == "relax.call_tir":
        got = _kernel_layer(mod, value, cur, layers, done)
        if got is None:
            return None
        return got[0], _kernel_layout(got[0], value, got[1], _hw(shape_of(cur), layout)), \
            got[1], got[2]
    if op in _ELEMENTWISE and _hw(shape_of(value), layout) == _hw(shape_of(cur), layout):
        return "pass", layout, None, ""
    return None


def analyse(mod: tvm.IRModule, int_model=None) -> Chain | None:
    """The per-tile chain of `main`, or None when the graph is not one this can split."""
    found = bindings(mod)
    main = mod["main"]
    if found is None or len(main.params) != 1:
        return None
    param = main.params[0]
    shape = shape_of(param)
    if len(shape) != 4 or shape[0] != 1:
        return None
    layers = _layers_from_input(int_model)
    consts, ops, cur, layout = set(), [], param, "NCHW"
    for b in found:
        used = list(relax.analysis.free_vars(b.value))
        if all(u in consts for u in used):
            consts.add(b.var)
            continue
        if not any(u.same_as(cur) for u in used) or \
                any(u not in consts and not u.same_as(cur) for u in used):
            break
        done = sum(op.kind in ("conv", "te_conv", "extern") for op in ops)   # layers
        got = _classify(mod, b.value, cur, layout, layers, done)
        if got is None:
            break
        ops.append(Op(b, got[0], got[1], layout, got[2], got[3]))
        cur, layout = b.var, got[1]
    return _steps(ops, shape, param)


def _steps(ops: list, in_shape: tuple, param) -> Chain | None:
    spatial = [i for i, op in enumerate(ops) if op.kind != "pass"]
    if not spatial:
        return None
    ends = [i - 1 for i in spatial[1:]] + [len(ops) - 1]
    steps, in_hw = [], _hw(in_shape, "NCHW")
    for i, end in zip(spatial, ends):
        op, last = ops[i], ops[end]
        kernel, stride, pads, macs = _geometry(op)
        stored = shape_of(last.binding.var)
        itemsize = np.dtype(str(last.binding.var.ty.dtype)).itemsize
        out_hw = _hw(shape_of(op.binding.var), op.layout)
        steps.append(Step("pad" if op.kind == "pad" else "conv", kernel, stride, pads, in_hw,
                          out_hw, stored[last.layout.index("C")] * itemsize, macs))
        in_hw = out_hw
    in_bytes = int(np.prod(in_shape)) * np.dtype(str(param.ty.dtype)).itemsize
    return Chain(ops, steps, ends, in_bytes)


def _geometry(op: Op) -> tuple:
    """(kernel, stride, pads (top, left, bottom, right), MACs per output pixel)."""
    v = op.binding.value
    if op.kind == "pad":
        w = [int(x) for x in v.attrs.pad_width]
        h, wi = op.in_layout.index("H"), op.in_layout.index("W")
        return (1, 1), (1, 1), (w[2 * h], w[2 * wi], w[2 * h + 1], w[2 * wi + 1]), 0
    if op.layer is not None:
        o, cg, kh, kw = op.layer.weight.shape
        return (kh, kw), tuple(op.layer.strides), tuple(op.layer.pads), o * cg * kh * kw
    a, wshape = v.attrs, shape_of(v.args[1])
    kl = str(a.kernel_layout)
    kh, kw, o, i = (wshape[kl.index(c)] for c in "HWOI")
    return (kh, kw), tuple(int(s) for s in a.strides), \
        tuple(int(p) for p in a.padding), o * i * kh * kw
