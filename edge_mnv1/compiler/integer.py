"""The integer model (edge_mnv1.quant.integer_model) as integer Relax: the QDQ graph rewritten
into uint8 x int8 -> int32 convolutions with the requantization of docs/int8.md after each.

TVM 0.27's ONNX importer would compute a QDQ model in fp32 (fake quantization), so the
integer graph is built here from the same `IntegerModel` the reference runs: both perform
the identical integer operations, which is what makes devices bit-exact against it.
FuseOps folds each requantization chain into its convolution's kernel.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from edge_mnv1.quant.integer_model import IntegerModel, Layer


def _const(a: np.ndarray) -> relax.Constant:
    a = np.ascontiguousarray(a)
    return relax.const(a, str(a.dtype))  # without the dtype, int64 arrays become int32


def _per_channel(v: np.ndarray, ndim: int, dtype: str) -> relax.Constant:
    return _const(np.asarray(v).astype(dtype).reshape((1, -1) + (1,) * (ndim - 2)))


def _requantize(bb: relax.BlockBuilder, acc, layer: Layer, ndim: int, zero_point: int):
    """clamp(z + ((acc * M + 2^(S-1)) >> S), lo, hi), computed as
    (((acc * M) >> (S-1)) + 1) >> 1, which is the same integer for every acc and needs
    no rounding constant. M and S-1 are stored as int32 (8 bytes a channel) and widened
    to int64 inside the kernel."""
    wide = bb.emit(relax.op.astype(acc, "int64"))
    mult = bb.emit(relax.op.astype(_per_channel(layer.mult, ndim, "int32"), "int64"))
    shift = bb.emit(relax.op.astype(_per_channel(layer.shift - 1, ndim, "int32"), "int64"))
    prod = bb.emit(relax.op.multiply(wide, mult))
    half = bb.emit(relax.op.right_shift(prod, shift))
    half = bb.emit(relax.op.add(half, relax.const(1, "int64")))
    shifted = bb.emit(relax.op.right_shift(half, relax.const(1, "int64")))
    if zero_point:
        shifted = bb.emit(relax.op.add(shifted, relax.const(zero_point, "int64")))
    clamped = bb.emit(relax.op.maximum(shifted, relax.const(layer.lo, "int64")))
    clamped = bb.emit(relax.op.minimum(clamped, relax.const(layer.hi, "int64")))
    return bb.emit(relax.op.astype(clamped, "uint8"))


def _centered(bb, x, zero_point: int, dtype: str, always_widen: bool = False):
    """x - z_x in a signed type; a zero point of 0 (every ReLU output) costs nothing unless
    the consumer needs the wide type anyway (matmul, sum)."""
    if not zero_point and not always_widen:
        return x
    wide = bb.emit(relax.op.astype(x, dtype))
    if not zero_point:
        return wide
    return bb.emit(relax.op.subtract(wide, relax.const(zero_point, dtype)))


def to_relax(model: IntegerModel) -> tvm.IRModule:
    bb = relax.BlockBuilder()
    x = relax.Var(model.input_name, relax.TensorType(list(model.input_shape), "uint8"))
    with bb.function("main", [x]):
        with bb.dataflow():
            acts = {model.input: x}
            for layer in model.layers:
                src = acts[layer.x]
                zx = model.qparams[layer.x].zero_point
                zy = model.qparams[layer.y].zero_point
                if layer.op == "reshape":
                    acts[layer.y] = bb.emit(relax.op.reshape(src, list(layer.shape)))
                    continue
                if layer.op == "conv":
                    # Zero padding of x - z_x is the real value 0, as in the reference.
                    xin = _centered(bb, src, zx, "int16")
                    acc = bb.emit(relax.op.nn.conv2d(
                        xin, _const(layer.weight), strides=layer.strides,
                        padding=layer.pads, groups=layer.groups, out_dtype="int32"))
                    acc = bb.emit(relax.op.add(acc, _per_channel(layer.bias, 4, "int32")))
                    ndim = 4
                elif layer.op == "gemm":
                    xin = _centered(bb, src, zx, "int32", always_widen=True)
                    w = _const(np.ascontiguousarray(layer.weight.T))  # int8 [C, K]
                    acc = bb.emit(relax.op.matmul(xin, w, out_dtype="int32"))
                    acc = bb.emit(relax.op.add(acc, _const(layer.bias.astype(np.int32)[None])))
                    ndim = 2
                elif layer.op == "avgpool":
                    xin = _centered(bb, src, zx, "int32", always_widen=True)
                    acc = bb.emit(relax.op.sum(xin, axis=[2, 3], keepdims=True))
                    ndim = 4
                else:
                    raise AssertionError(layer.op)
                acts[layer.y] = _requantize(bb, acc, layer, ndim, zy)
            out = bb.emit_output(acts[model.output])
        bb.emit_func_output(out)
    return bb.get()
