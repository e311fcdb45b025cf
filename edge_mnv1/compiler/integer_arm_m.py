"""Integer layers on Cortex-M as calls into the runtime's int8 kernels
(edge_mnv1/runtime/kernels/em_s8_arm_m.c): TVM 0.27 has no tensor intrinsic for M-profile,
so a target whose file names `features = ["dsp"]` (Armv7E-M: SMLAD) or `["mve"]` (Helium:
VMLADAVA) gets, for its first conv, pointwise and depthwise layers, a kernel whose body is one
`T.call_extern` to the matching C kernel with the layer's shape as arguments. Each kernel
computes the convolution and the requantization of docs/int8.md; the output is the layer's
uint8 NHWC activation. Other layers (pool, classifier) stay TVM's.

Constants are the layer's: int8 OHWI weights (their shape gives the MAC count), int32 bias
with the input zero point folded in, and int32 M, left and right shifts per channel. The MVE
pointwise kernel multiplies int8 `x - 128` (VMLADAV is signed by signed), so its bias folds
in `z_x - 128` instead of `z_x`.
"""

from __future__ import annotations

import numpy as np
from tvm import relax, te, tirx

from edge_mnv1.quant.fixedpoint import split_shift
from edge_mnv1.quant.integer_model import Layer, folded_bias

FEATURES = ("dsp", "mve")
EXTERN_ATTR = "edge_mnv1.extern_kernel"    # marks the kernels that only call the runtime
_INPUT_OFFSET = {"dsp": 0, "mve": 128}   # what the kernel subtracts from a uint8 input


def _const(a: np.ndarray) -> relax.Constant:
    a = np.ascontiguousarray(a)
    return relax.const(a, str(a.dtype))


def kind_of(layer: Layer, zx: int) -> str | None:
    """Which C kernel computes this layer, or None (TVM's generic integer kernel)."""
    if layer.op != "conv":
        return None
    o, cg, kh, kw = layer.weight.shape
    if layer.groups == 1 and (kh, kw) == (1, 1) and layer.strides == (1, 1) \
            and not any(layer.pads):
        return "pointwise"
    if layer.groups == o and cg == 1 and zx == 0:
        return "depthwise"      # padded with 0: the input is a ReLU output (z_x = 0)
    if layer.groups == 1:
        return "conv"
    return None


def extern_call(bb: relax.BlockBuilder, name: str, kernel: str, inputs: list,
                out_shape: list, scalars: list, dtype: str = "uint8"):
    """A kernel named `kernel` (not `name`: the symbols would clash) whose body calls
    `name`(input pointers..., output pointer, scalars...); its output is `dtype`."""
    def compute(*tensors):
        return te.extern([out_shape], list(tensors), lambda ins, outs: tirx.call_extern(
            "int32", name, *[b.data for b in ins], outs[0].data,
            *[tirx.IntImm("int32", int(v)) for v in scalars]),
            dtype=dtype, name=name)
    return bb.emit_te(compute, *inputs, primfunc_name_hint=kernel)


def layer_call(bb: relax.BlockBuilder, feature: str, layer: Layer, src, in_shape: list,
               nchw_input: bool, zx: int, zy: int, consts: list | None = None):
    """The layer as a call of the runtime's kernel, or None when no C kernel fits it.
    `in_shape` is the input's NHWC shape (its NCHW one when `nchw_input`); `consts` the
    constants of an earlier call of this layer (a tile's call shares its weights)."""
    kind = kind_of(layer, zx)
    if kind is None or (nchw_input and kind != "conv"):
        return None
    o, cg, kh, kw = layer.weight.shape
    n, c, h, w = (in_shape if nchw_input else [in_shape[0], in_shape[3], in_shape[1],
                                                in_shape[2]])
    top, left_pad, bottom, right_pad = layer.pads
    sh, sw = layer.strides
    ho, wo = (h + top + bottom - kh) // sh + 1, (w + left_pad + right_pad - kw) // sw + 1
    offset = _INPUT_OFFSET[feature] if kind == "pointwise" else 0
    left, right = split_shift(layer.shift)
    consts = consts or [_const(layer.weight.transpose(0, 2, 3, 1)),           # OHWI
                        _const(folded_bias(layer, zx - offset)),
                        *[_const(np.asarray(v).astype(np.int32)) for v in (layer.mult, left,
                                                                           right)]]
    clamp = [zy, layer.lo, layer.hi]
    if kind == "pointwise":
        scalars = [h * w, c, o, *clamp]
    elif kind == "depthwise":
        scalars = [h, w, c, kh, kw, sh, sw, top, left_pad, ho, wo, *clamp]
    else:
        strides = [h * w, w, 1] if nchw_input else [1, w * c, c]   # channel, row, column
        scalars = [c, h, w, *strides, o, kh, kw, sh, sw, top, left_pad, ho, wo, zx, *clamp]
    return extern_call(bb, f"em_s8_{kind}_{feature}", f"s8_{kind}_{feature}", [src, *consts],
                   [n, ho, wo, o], scalars)


def reads_input_in_place(target, is_integer: bool) -> bool:
    """An int8 program with these kernels reads its uint8 input where the protocol received
    it (the frame buffer): the arena then holds the activations only, within the uint8
    layer-by-layer bound (55,296 B at 0.25/96 instead of 82,944 B with an arena copy)."""
    return is_integer and target.is_mcu and bool(target.tvm.get("features"))


def mark_extern_kernels(mod):
    """Tags the kernels `layer_call` made, so no schedule or tuning touches them."""
    for gv, func in list(mod.functions.items()):
        if isinstance(func, tirx.PrimFunc) and gv.name_hint.startswith("s8_"):
            mod.update_func(gv, func.with_attr(EXTERN_ATTR, True))
    return mod
