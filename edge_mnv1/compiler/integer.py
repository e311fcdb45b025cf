"""The integer model (edge_mnv1.quant.integer_model) as integer Relax: the QDQ graph rewritten
into uint8 x int8 -> int32 convolutions with the requantization of docs/int8.md after each.

TVM 0.27's ONNX importer would compute a QDQ model in fp32 (fake quantization), so the
integer graph is built here from the same `IntegerModel` the reference runs: both perform
the identical integer operations, which is what makes devices bit-exact against it.
FuseOps folds each requantization chain into its convolution's kernel.

No activation is ever widened: a layer multiplies the raw uint8 input and adds the bias
with the input's zero point folded in (`folded_bias`); where that zero point is not 0 (the
first conv) the input is padded with it inside the conv's own kernel. On AArch64 the
inputs of pointwise convolutions are stored centred instead, as int8 x - 128
(`signed_inputs`: the requantization writes them for the same cost), for NEON's 8-bit
products; every other activation is uint8. With layout="NHWC" every activation is
channels-last (NHWC, weights OHWI) and the first conv also reads the NCHW input through a
transpose inlined into its kernel.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, topi

from edge_mnv1.compiler import integer_arm_m
from edge_mnv1.errors import UsageError
from edge_mnv1.quant.fixedpoint import split_shift
from edge_mnv1.quant.integer_model import IntegerModel, Layer, folded_bias


def _const(a: np.ndarray) -> relax.Constant:
    a = np.ascontiguousarray(a)
    return relax.const(a, str(a.dtype))  # without the dtype, int64 arrays become int32


class _Graph:
    """Emits one layer kind at a time in the chosen activation layout."""

    def __init__(self, bb: relax.BlockBuilder, nhwc: bool):
        self.bb, self.nhwc = bb, nhwc

    def emit(self, expr):
        return self.bb.emit(expr)

    def per_channel(self, v: np.ndarray, ndim: int, dtype: str) -> relax.Constant:
        """A [C] constant broadcast along the channel axis of an ndim-D activation."""
        v = np.asarray(v).astype(dtype)
        if ndim == 2:
            return _const(v.reshape(1, -1))
        return _const(v.reshape((1, 1, 1, -1) if self.nhwc else (1, -1, 1, 1)))

    def weight(self, w: np.ndarray) -> relax.Constant:
        return _const(w.transpose(0, 2, 3, 1) if self.nhwc else w)   # OHWI or OIHW

    def conv(self, src, layer: Layer, zx: int, from_nchw: bool):
        """int32 acc = folded bias + conv(uint8 x, int8 w): padded with 0 by conv2d when
        z_x = 0, otherwise with z_x inside one TE kernel (pad + conv, and the transpose of a
        channels-first input when the graph is channels-last)."""
        if (zx == 0 or not any(layer.pads)) and not from_nchw:
            layouts = ("NHWC", "OHWI") if self.nhwc else ("NCHW", "OIHW")
            acc = self.emit(relax.op.nn.conv2d(
                src, self.weight(layer.weight), strides=layer.strides, padding=layer.pads,
                groups=layer.groups, data_layout=layouts[0], kernel_layout=layouts[1],
                out_dtype="int32"))
        else:
            acc = self.bb.emit_te(_padded_conv(layer, zx, self.nhwc, from_nchw), src,
                                  self.weight(layer.weight), primfunc_name_hint="conv2d_pad")
        return self.emit(relax.op.add(acc, self.per_channel(folded_bias(layer, zx), 4, "int32")))

    def gemm(self, src, layer: Layer, zx: int):
        w = _const(np.ascontiguousarray(layer.weight.T))  # int8 [C, K]
        acc = self.emit(relax.op.matmul(src, w, out_dtype="int32"))
        return self.emit(relax.op.add(acc, self.per_channel(folded_bias(layer, zx), 2, "int32")))

    def avgpool(self, src, zx: int, hw: int):
        wide = self.emit(relax.op.astype(src, "int32"))
        acc = self.emit(relax.op.sum(wide, axis=[1, 2] if self.nhwc else [2, 3], keepdims=True))
        if zx:
            acc = self.emit(relax.op.subtract(acc, relax.const(zx * hw, "int32")))
        return acc

    def requantize(self, acc, layer: Layer, ndim: int, zero_point: int, signed: bool = False):
        """docs/int8.md's rule, elementwise after the accumulator (FuseOps puts it in the
        accumulator's kernel): int32 M and right shift per channel, widened to int64 in the
        kernel for the products; the left shift only where some multiplier is >= 1.
        `signed`: the result minus 128 as int8 (`signed_inputs`), for the same cost."""
        left, right = split_shift(layer.shift)
        i64 = lambda v: relax.const(v, "int64")  # noqa: E731
        a = self.emit(relax.op.astype(acc, "int64"))
        if left.any():
            left_c = self.emit(relax.op.astype(self.per_channel(left, ndim, "int32"), "int64"))
            a = self.emit(relax.op.left_shift(a, left_c))
            a = self.emit(relax.op.clip(a, -(1 << 31), (1 << 31) - 1))
        mult = self.emit(relax.op.astype(self.per_channel(layer.mult, ndim, "int32"), "int64"))
        t = self.emit(relax.op.multiply(a, mult))
        t = self.emit(relax.op.right_shift(self.emit(relax.op.add(t, i64(1 << 30))), i64(31)))
        if right.any():
            # ((2t >> right) + 1) >> 1 == (t + 2^(right-1)) >> right, and t when right = 0:
            # one use of the constant, no rounding constant to derive from it.
            rs = self.emit(relax.op.astype(self.per_channel(right, ndim, "int32"), "int64"))
            t = self.emit(relax.op.right_shift(self.emit(relax.op.left_shift(t, i64(1))), rs))
            t = self.emit(relax.op.right_shift(self.emit(relax.op.add(t, i64(1))), i64(1)))
        shift = SIGNED_OFFSET if signed else 0
        if zero_point != shift:
            t = self.emit(relax.op.add(t, i64(zero_point - shift)))
        t = self.emit(relax.op.clip(t, layer.lo - shift, layer.hi - shift))
        return self.emit(relax.op.astype(t, "int8" if signed else "uint8"))


SIGNED_OFFSET = 128


def signed_inputs(model: IntegerModel) -> set[str]:
    """The activations stored as x - 128 in int8 for an 8-bit-product kernel
    (schedules/int8_neon_s8.py): those every reader of is a pointwise convolution whose
    weights avoid -128 (two products of -128 x -128 would overflow its int16 lanes), written
    by a requantized layer. Such a reader adds 128 * sum(w) to its bias (its input's zero
    point, as seen by folded_bias, is z_x - 128), so its accumulator is unchanged."""
    readers: dict[str, list[Layer]] = {}
    for layer in model.layers:
        readers.setdefault(layer.x, []).append(layer)
    written = {layer.y for layer in model.layers if layer.op in ("conv", "gemm")}

    def pointwise(layer: Layer) -> bool:
        return (layer.op == "conv" and layer.groups == 1 and layer.weight.shape[2:] == (1, 1)
                and not any(layer.pads) and int(layer.weight.min()) > -128)
    return {name for name, users in readers.items()
            if name in written and name != model.output and all(map(pointwise, users))}


def _padded_conv(layer: Layer, zx: int, nhwc: bool, from_nchw: bool):
    """TE: (transpose,) pad with z_x, conv -> int32; every stage inlines into the conv."""
    top, left, bottom, right = layer.pads

    def compute(data, weight):
        if nhwc:
            if from_nchw:
                data = topi.transpose(data, [0, 2, 3, 1])
            padded = topi.nn.pad(data, [0, top, left, 0], [0, bottom, right, 0],
                                 pad_value=zx, name="pad_zero_point")
        else:
            padded = topi.nn.pad(data, [0, 0, top, left], [0, 0, bottom, right],
                                 pad_value=zx, name="pad_zero_point")
        if layer.groups != 1:
            raise UsageError(f"layer {layer.y}: a grouped conv whose input has zero point "
                             f"{zx} (not a ReLU output) is not supported by the integer path; "
                             "compile the float model instead")
        return topi.nn.conv2d(padded, weight, list(layer.strides), 0, 1,
                              data_layout="NHWC" if nhwc else "NCHW",
                              kernel_layout="OHWI" if nhwc else "OIHW", out_dtype="int32")
    return compute


def options_for(target) -> tuple[str, tuple, bool]:
    """(activation layout, kernel features, signed pointwise inputs) of the integer graph
    for a target: its file's `features` (the runtime's int8 kernels, which are
    channels-last) or its layout; signed inputs for a channels-last AArch64 Linux target
    with prepacked weights (its NEON 8-bit-product pointwise kernel)."""
    if target is None:
        return "NCHW", (), False
    features = tuple(target.tvm.get("features", ()))
    unknown = [f for f in features if f not in integer_arm_m.FEATURES]
    if unknown or len(features) > 1:
        raise UsageError(f"{target.path}: tvm.features = {list(features)!r}: give at most one "
                         f"of {', '.join(map(repr, integer_arm_m.FEATURES))}")
    layout = "NHWC" if features else target.layout
    spec = target.tvm.get("target", {})
    triple = str(spec.get("mtriple", "") if isinstance(spec, dict) else spec)
    signed = (not features and layout == "NHWC" and target.prepack_weights
              and triple.startswith(("aarch64", "arm64")))
    return layout, features, signed


def to_relax(model: IntegerModel, layout: str = "NCHW", features: tuple = (),
             signed: bool = False) -> tvm.IRModule:
    """The integer graph with activations in `layout` ("NCHW" or "NHWC"); the input stays
    the model's NCHW uint8 tensor and the output the uint8 logits. With a feature ("dsp",
    "mve"; layout NHWC) the convolutions call the runtime's Cortex-M kernels. `signed`:
    the activations of `signed_inputs` are int8 x - 128."""
    bb = relax.BlockBuilder()
    nhwc = layout == "NHWC"
    g = _Graph(bb, nhwc)
    shifted = signed_inputs(model) if signed else set()
    x = relax.Var(model.input_name, relax.TensorType(list(model.input_shape), "uint8"))
    with bb.function("main", [x]):
        with bb.dataflow():
            acts = {model.input: x}
            for layer in model.layers:
                src = acts[layer.x]
                zx = model.qparams[layer.x].zero_point - (SIGNED_OFFSET if layer.x in shifted
                                                           else 0)
                zy = model.qparams[layer.y].zero_point
                from_nchw = nhwc and layer.x == model.input
                if from_nchw and layer.op != "conv":
                    src, from_nchw = g.emit(relax.op.permute_dims(src, [0, 2, 3, 1])), False
                if layer.op == "reshape":
                    acts[layer.y] = g.emit(relax.op.reshape(_channels_first(g, src),
                                                            list(layer.shape)))
                    continue
                call = integer_arm_m.layer_call(
                    bb, features[0], layer, src, [int(d) for d in src.ty.shape], from_nchw,
                    zx, zy) if features else None
                if call is not None:
                    acts[layer.y] = call
                    continue
                if layer.op == "conv":
                    acc, ndim = g.conv(src, layer, zx, from_nchw), 4
                elif layer.op == "gemm":
                    acc, ndim = g.gemm(src, layer, zx), 2
                elif layer.op == "avgpool":
                    shape = src.ty.shape
                    hw = int(shape[1] * shape[2]) if nhwc else int(shape[2] * shape[3])
                    acc, ndim = g.avgpool(src, zx, hw), 4
                else:
                    raise AssertionError(layer.op)
                acts[layer.y] = g.requantize(acc, layer, ndim, zy, layer.y in shifted)
            y = acts[model.output]
            out = bb.emit_output(_channels_first(g, y) if model.output != model.input else y)
        bb.emit_func_output(out)
    return integer_arm_m.mark_extern_kernels(bb.get()) if features else bb.get()


def _channels_first(g: _Graph, v):
    """A channels-last 4-D activation in the model's own NCHW order, for a reshape or the
    output (free when its spatial size is 1x1: the same bytes)."""
    shape = v.ty.shape
    if not g.nhwc or len(shape) != 4:
        return v
    if int(shape[1]) == 1 and int(shape[2]) == 1:
        return g.emit(relax.op.reshape(v, [shape[0], shape[3], 1, 1]))
    return g.emit(relax.op.permute_dims(v, [0, 3, 1, 2]))
