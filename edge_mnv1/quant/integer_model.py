"""The integer model: uint8 activations between integer layers (conv, average pool,
reshape, gemm), run by numpy in int64 with the fixed-point requantization of fixedpoint.py.
This is the integer reference devices are judged against, and what the compiler lowers."""

from __future__ import annotations

import dataclasses

import numpy as np

from edge_mnv1.errors import UsageError
from edge_mnv1.quant.fixedpoint import SCHEME, requantize


@dataclasses.dataclass
class QParams:
    scale: float
    zero_point: int

    def to_dict(self) -> dict:
        return {"scale": self.scale, "zero_point": self.zero_point, "dtype": "uint8"}


@dataclasses.dataclass
class Layer:
    """One integer operation between two uint8 activations."""

    op: str                   # "conv" | "avgpool" | "reshape" | "gemm"
    x: str                    # input activation
    y: str                    # output activation
    mult: np.ndarray          # int64 [C]: requantization multipliers
    shift: np.ndarray         # int64 [C]
    lo: int                   # clamp bounds (lo = z_y after a folded ReLU)
    hi: int
    weight: np.ndarray | None = None   # int8, OIHW (conv) or [K, C] (gemm)
    bias: np.ndarray | None = None     # int32 [C]
    strides: tuple = (1, 1)
    pads: tuple = (0, 0, 0, 0)         # top, left, bottom, right
    groups: int = 1
    shape: tuple = ()                  # reshape: the output shape


@dataclasses.dataclass
class IntegerModel:
    input_name: str
    input_shape: tuple
    output_shape: tuple
    qparams: dict             # activation name -> QParams
    layers: list
    input: str                # the quantized input activation
    output: str               # the quantized output activation

    @property
    def input_q(self) -> QParams:
        return self.qparams[self.input]

    @property
    def output_q(self) -> QParams:
        return self.qparams[self.output]

    def run(self, q_input: np.ndarray) -> np.ndarray:
        """The reference: uint8 input -> uint8 output, integers only."""
        return self.activations(q_input)[self.output].astype(np.uint8)

    def activations(self, q_input: np.ndarray) -> dict:
        """Every activation (int64 arrays of uint8 values) by name, input included."""
        q_input = np.asarray(q_input)
        if q_input.dtype != np.uint8 or tuple(q_input.shape) != tuple(self.input_shape):
            raise UsageError(f"integer reference takes uint8 {tuple(self.input_shape)}, got "
                             f"{q_input.dtype} {tuple(q_input.shape)}")
        acts = {self.input: q_input.astype(np.int64)}
        for layer in self.layers:
            acts[layer.y] = _run_layer(layer, acts[layer.x], self.qparams[layer.x].zero_point,
                                       self.qparams[layer.y].zero_point)
        return acts

    def manifest(self) -> dict:
        return {"scheme": SCHEME, "input": self.input_q.to_dict(),
                "output": self.output_q.to_dict(), "layers": len(self.layers)}


def folded_bias(layer: Layer, zero_point: int) -> np.ndarray:
    """int32 bias - z_x * (sum of the weights each output channel reduces over): a kernel
    that multiplies the raw uint8 input (padded with z_x, the real value 0) adds this instead
    of subtracting z_x from every input, and gets the same accumulator exactly."""
    w = layer.weight.astype(np.int64)
    sums = w.reshape(w.shape[0], -1).sum(axis=1)
    folded = layer.bias.astype(np.int64) - zero_point * sums
    if np.any(np.abs(folded) >= 2 ** 31):
        raise UsageError(f"layer {layer.y}: its bias with the input zero point folded in "
                         "overflows int32; the model's bias scales are degenerate: quantize "
                         "it again")
    return folded.astype(np.int32)


def _channel(v: np.ndarray, ndim: int) -> np.ndarray:
    return v.reshape((1, -1) + (1,) * (ndim - 2))


def _conv(x: np.ndarray, w: np.ndarray, strides, pads, groups) -> np.ndarray:
    """int64 NCHW convolution, zero padding (x already has its zero point subtracted)."""
    n, c, _, _ = x.shape
    x = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    o, cg, kh, kw = w.shape
    win = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))
    win = win[:, :, ::strides[0], ::strides[1]]                 # n, c, ho, wo, kh, kw
    ho, wo = win.shape[2], win.shape[3]
    win = win.reshape(n, groups, cg, ho, wo, kh, kw)
    wg = w.astype(np.int64).reshape(groups, o // groups, cg, kh, kw)
    out = np.einsum("ngchwij,gocij->ngohw", win, wg, optimize=True)
    return out.reshape(n, o, ho, wo)


def _run_layer(layer: Layer, x: np.ndarray, zx: int, zy: int) -> np.ndarray:
    if layer.op == "reshape":
        return x.reshape(layer.shape)
    xc = x - zx
    if layer.op == "conv":
        acc = _conv(xc, layer.weight, layer.strides, layer.pads, layer.groups) \
            + _channel(layer.bias.astype(np.int64), 4)
    elif layer.op == "gemm":
        acc = xc @ layer.weight.astype(np.int64).T + layer.bias.astype(np.int64)[None]
    elif layer.op == "avgpool":
        acc = xc.sum(axis=(2, 3), keepdims=True)
    else:
        raise AssertionError(layer.op)
    return requantize(acc, _channel(layer.mult, acc.ndim), _channel(layer.shift, acc.ndim),
                      zy, layer.lo, layer.hi)
