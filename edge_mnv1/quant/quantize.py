"""int8: post-training quantization (ONNX Runtime's QDQ quantizer) and the exact integer
reference every device must reproduce bit for bit (docs/int8.md).

The scheme: int8 symmetric per-channel weights, uint8 asymmetric per-tensor activations
(ReLU folded into the clamp: a ReLU output has zero point 0), int32 bias at scale
s_x * s_w[c]. The reference computes in integers only:

    acc[c]  = bias[c] + sum (x - z_x) * w[c]                       int32 (held in int64 here)
    y[c]    = clamp(z_y + ((acc[c] * M[c] + 2^(S[c]-1)) >> S[c]), lo, 255)   (int64, arithmetic >>)

where M[c] in [2^30, 2^31) and S[c] encode the real multiplier s_x * s_w[c] / s_y to 31
bits; rounding is half up (toward +infinity). Average pooling sums (x - z_x) and
requantizes by s_x / (s_y * H * W). No float enters this arithmetic: the floats are read
once, when the multipliers are derived from the model's scales.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from edge_mnv1.errors import UsageError

SCHEME = {
    "weights": "int8, symmetric, per output channel",
    "activations": "uint8, asymmetric, per tensor",
    "bias": "int32 at scale s_x * s_w[c]",
    "requantize": "int64 (acc * M + 2^(S-1)) >> S, M in [2^30, 2^31): round half up",
    "calibration": "min-max over the calibration images (ONNX Runtime quantize_static)",
}
MULTIPLIER_BITS = 31


# -- arithmetic --------------------------------------------------------------------------
def fixed_point(real: float) -> tuple[int, int]:
    """(M, S) with real ~= M * 2^-S, M in [2^30, 2^31): 31 significant bits."""
    if not (real > 0 and math.isfinite(real)):
        raise UsageError(f"requantization multiplier {real!r} is not a positive number; "
                         "the model's scales are damaged: quantize it again")
    frac, exp = math.frexp(real)                      # real = frac * 2^exp, frac in [0.5, 1)
    m = round(frac * (1 << MULTIPLIER_BITS))
    if m == 1 << MULTIPLIER_BITS:
        m //= 2
        exp += 1
    shift = MULTIPLIER_BITS - exp
    if not 1 <= shift <= 62:
        raise UsageError(f"requantization multiplier {real:g} is out of the supported range "
                         "(2^-31 .. 2^30): a layer's scales are degenerate; calibrate with "
                         "more varied images")
    return m, shift


def requantize(acc: np.ndarray, mult: np.ndarray, shift: np.ndarray, zero_point: int,
               lo: int, hi: int) -> np.ndarray:
    """The one rounding rule of the integer path (channel axis already broadcast)."""
    acc = acc.astype(np.int64)
    rounded = (acc * mult + (np.int64(1) << (shift - 1))) >> shift
    return np.clip(rounded + zero_point, lo, hi)


def quantize_input(x: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """Float preprocessing output -> the uint8 the device takes (QuantizeLinear: round half
    to even, saturate). This is the host's last float step; the device never sees floats."""
    q = np.rint(np.asarray(x, dtype=np.float32) / np.float32(scale)) + zero_point
    return np.clip(q, 0, 255).astype(np.uint8)


def dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    return ((q.astype(np.int32) - zero_point) * np.float32(scale)).astype(np.float32)


# -- the integer model -------------------------------------------------------------------
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


# -- reading a QDQ ONNX model ------------------------------------------------------------
class _Graph:
    def __init__(self, model: onnx.ModelProto):
        self.inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        self.producer = {o: n for n in model.graph.node for o in n.output}
        self.consumers: dict = {}
        for n in model.graph.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)

    def scalar(self, name: str) -> float | int:
        v = self.inits.get(name)
        if v is None or v.size != 1:
            raise UsageError(f"quantization parameter {name!r} is not a constant scalar; "
                             "per-tensor activation quantization is required")
        return v.reshape(()).item()

    def dq_source(self, name: str, what: str):
        """The DequantizeLinear feeding `name`: (its quantized input, scale, zero point, axis)."""
        node = self.producer.get(name)
        if node is None or node.op_type != "DequantizeLinear":
            raise UsageError(f"{what} {name!r} is not produced by DequantizeLinear: the model is "
                             "not a QDQ model (quantize it with `edge-mnv1 quantize`)")
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        scale = self.inits.get(node.input[1])
        zp = self.inits.get(node.input[2]) if len(node.input) > 2 else None
        return node.input[0], scale, zp, axis

    def only_q_consumer(self, name: str, what: str) -> onnx.NodeProto:
        users = self.consumers.get(name, [])
        if len(users) != 1 or users[0].op_type != "QuantizeLinear":
            raise UsageError(f"the output of {what} ({name!r}) does not go to exactly one "
                             "QuantizeLinear; the integer path needs every layer's output "
                             "quantized (fold ReLU into it, as ONNX Runtime's quantizer does)")
        return users[0]


def _attr(node, name, default):
    for a in node.attribute:
        if a.name == name:
            return list(a.ints) if a.ints else (a.i if a.type == onnx.AttributeProto.INT else a.f)
    return default


def is_quantized(model: onnx.ModelProto) -> bool:
    return any(n.op_type == "QuantizeLinear" for n in model.graph.node)


def from_onnx(model: onnx.ModelProto) -> IntegerModel:
    """The integer model of a QDQ ONNX graph (conv, global average pool, flatten, gemm)."""
    g = _Graph(model)
    inp = model.graph.input[0]
    dims = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    users = g.consumers.get(inp.name, [])
    if len(users) != 1 or users[0].op_type != "QuantizeLinear":
        raise UsageError(f"the model's input {inp.name!r} is not quantized by one "
                         "QuantizeLinear; quantize the model with `edge-mnv1 quantize`")
    qparams: dict = {}

    def add_q(qnode) -> str:
        zp = g.inits.get(qnode.input[2]) if len(qnode.input) > 2 else None
        if zp is not None and zp.dtype != np.uint8:
            raise UsageError(f"activation {qnode.output[0]!r} is {zp.dtype}; the integer path "
                             "takes uint8 activations (quantize with activation type QUInt8)")
        qparams[qnode.output[0]] = QParams(float(g.scalar(qnode.input[1])),
                                           int(g.scalar(qnode.input[2])) if zp is not None else 0)
        return qnode.output[0]

    first = add_q(users[0])
    layers = []
    out_float = model.graph.output[0].name
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        x_q, x_scale, x_zp, _ = g.dq_source(node.input[0], f"{node.op_type} input")
        if x_q not in qparams:
            raise UsageError(f"{node.op_type} {node.name!r} reads {x_q!r}, which no earlier "
                             "layer produced; the graph is not in topological order")
        qnode = g.only_q_consumer(node.output[0], f"{node.op_type} {node.name!r}")
        y_q = add_q(qnode)
        sx, sy = qparams[x_q].scale, qparams[y_q].scale
        zy = qparams[y_q].zero_point
        if node.op_type in ("Conv", "Gemm"):
            layers.append(_weighted_layer(g, node, x_q, y_q, sx, sy, zy))
        elif node.op_type == "GlobalAveragePool":
            shape = _shape_of(model, node.input[0], g)
            m, s = fixed_point(sx / (sy * shape[2] * shape[3]))
            layers.append(Layer("avgpool", x_q, y_q, np.array([m], np.int64),
                                np.array([s], np.int64), 0, 255))
        elif node.op_type in ("Flatten", "Reshape"):
            if (sx, qparams[x_q].zero_point) != (sy, zy):
                raise UsageError(f"{node.op_type} {node.name!r} changes the quantization "
                                 "parameters; a reshape must keep them")
            layers.append(Layer("reshape", x_q, y_q, np.zeros(1, np.int64),
                                np.zeros(1, np.int64), 0, 255,
                                shape=tuple(_shape_of(model, node.output[0], g))))
        else:
            raise UsageError(f"operator {node.op_type} ({node.name!r}) has no integer kernel "
                             "here; MobileNetV1 needs Conv, GlobalAveragePool, Flatten, Gemm")
    last = layers[-1].y if layers else first
    dq = g.consumers.get(last, [])
    if not dq or dq[0].output[0] != out_float:
        raise UsageError("the model's output is not the dequantized output of its last layer")
    out_shape = tuple(_shape_of(model, out_float, g))
    return IntegerModel(inp.name, tuple(dims), out_shape, qparams, layers, first, last)


def _weighted_layer(g: _Graph, node, x_q, y_q, sx, sy, zy) -> Layer:
    w_q, w_scale, w_zp, axis = g.dq_source(node.input[1], f"{node.op_type} weight")
    w = g.inits.get(w_q)
    if w is None or w.dtype != np.int8:
        raise UsageError(f"weight of {node.name!r} is not a constant int8 tensor")
    if w_zp is not None and np.any(w_zp != 0):
        raise UsageError(f"weight of {node.name!r} has a nonzero zero point; the scheme is "
                         "symmetric weights")
    if node.op_type == "Gemm":
        if _attr(node, "transB", 0) != 1 or _attr(node, "transA", 0) != 0:
            raise UsageError(f"Gemm {node.name!r}: only y = x W^T + b is supported")
    channels = w.shape[0]
    w_scale = np.broadcast_to(np.asarray(w_scale, np.float64).reshape(-1), (channels,))
    if len(node.input) > 2 and node.input[2]:
        b_q, b_scale, _, _ = g.dq_source(node.input[2], f"{node.op_type} bias")
        bias = g.inits[b_q].astype(np.int64).reshape(-1)
        b_scale = np.broadcast_to(np.asarray(b_scale, np.float64).reshape(-1), (channels,))
        if not np.allclose(b_scale, sx * w_scale, rtol=1e-5, atol=0):
            raise UsageError(f"bias of {node.name!r} is not at scale s_x * s_w")
    else:
        bias = np.zeros(channels, np.int64)
    if np.any(np.abs(bias) >= 2**31):
        raise UsageError(f"bias of {node.name!r} overflows int32")
    mults, shifts = zip(*(fixed_point(sx * float(ws) / sy) for ws in w_scale))
    common = dict(mult=np.array(mults, np.int64), shift=np.array(shifts, np.int64),
                  lo=0, hi=255, weight=w, bias=bias.astype(np.int32))
    if node.op_type == "Gemm":
        return Layer("gemm", x_q, y_q, **common)
    pads = tuple(_attr(node, "pads", [0, 0, 0, 0]))
    if _attr(node, "dilations", [1, 1]) != [1, 1]:
        raise UsageError(f"Conv {node.name!r}: dilation is not supported")
    return Layer("conv", x_q, y_q, strides=tuple(_attr(node, "strides", [1, 1])),
                 pads=(pads[0], pads[1], pads[2], pads[3]), groups=int(_attr(node, "group", 1)),
                 **common)


def _shape_of(model: onnx.ModelProto, name: str, g: _Graph) -> list[int]:
    if not hasattr(g, "shapes"):
        inferred = onnx.shape_inference.infer_shapes(model)
        g.shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
                    for v in list(inferred.graph.value_info) + list(inferred.graph.output)
                    + list(inferred.graph.input)}
    if name not in g.shapes or not all(g.shapes[name]):
        raise UsageError(f"cannot infer the static shape of {name!r}")
    return g.shapes[name]


# -- quantizing a float model --------------------------------------------------------------
def quantize_model(src: str | Path, calib_x: np.ndarray, out: str | Path,
                   calibration: str) -> onnx.ModelProto:
    """ONNX Runtime's static QDQ quantizer with this project's scheme; edge_mnv1 metadata
    (config, preprocessing) is carried over and the scheme is added to it."""
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)

    src, out = Path(src), Path(out)
    model = onnx.load(str(src))
    name = model.graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(range(len(calib_x)))

        def get_next(self):
            i = next(self.items, None)
            return None if i is None else {name: calib_x[i:i + 1].astype(np.float32)}

    tmp = out.with_name(out.name + ".partial")

    class _NoPreprocessAdvice(logging.Filter):  # the model is already BN-folded and shaped
        def filter(self, record):
            return "pre-processing" not in record.getMessage()

    advice = _NoPreprocessAdvice()
    logging.getLogger().addFilter(advice)
    try:
        quantize_static(str(src), str(tmp), Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8,
                        extra_options={"WeightSymmetric": True, "ActivationSymmetric": False})
    finally:
        logging.getLogger().removeFilter(advice)
    q = onnx.load(str(tmp))
    keep = {p.key: p.value for p in model.metadata_props if p.key.startswith("edge_mnv1.")}
    keep["edge_mnv1.quantization"] = json.dumps({**SCHEME, "calibration_set": calibration,
                                                 "calibration_images": int(len(calib_x))})
    del q.metadata_props[:]
    for k, v in keep.items():
        q.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(q)
    onnx.save(q, str(tmp))
    tmp.replace(out)  # a killed run never leaves a half-written model under the final name
    return q


# -- the `quantize` verb's work ------------------------------------------------------------
def calibration_inputs(spec: str, model: onnx.ModelProto, meta: dict,
                       limit: int | None = None) -> np.ndarray:
    """Calibration images: digits[:N] (the training split: never the held-out images),
    a folder of images, or a .npy array of preprocessed NCHW inputs."""
    import types

    from edge_mnv1.model import data

    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    if str(spec).endswith(".npy"):
        try:
            x = np.load(spec, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise UsageError(f"--calib {spec}: cannot read it as a numpy array ({e})") from None
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or list(x.shape[1:]) != shape[1:]:
            raise UsageError(f"--calib {spec}: arrays of shape {list(x.shape)}; the model takes "
                             f"N x {shape[1:]} (preprocessed, NCHW)")
        if len(x) == 0:
            raise UsageError(f"--calib {spec}: holds no images; calibration needs at least one")
        if not np.all(np.isfinite(x)):
            raise UsageError(f"--calib {spec}: holds NaN or infinite values")
        return x[:limit].astype(np.float32) if limit else x.astype(np.float32)
    pp = data.Preprocessing.from_dict(meta["preprocessing"]) if "preprocessing" in meta \
        else data.default_preprocessing(spec, shape[-1])
    cfg = types.SimpleNamespace(resolution=shape[-1])
    split = "train" if str(spec).split(":")[0] == "digits" else "all"
    x, _, _ = data.load_dataset(spec, cfg, pp, split=split, limit=limit)
    return x.astype(np.float32)


def evaluate(float_path: str | Path, int_model: IntegerModel, meta: dict,
             spec: str = "digits") -> dict:
    """fp32 (ONNX Runtime) vs the integer reference on held-out images (digits' test split)."""
    import types

    import onnxruntime as ort

    from edge_mnv1.model import data

    pp = data.Preprocessing.from_dict(meta["preprocessing"]) if "preprocessing" in meta \
        else data.default_preprocessing(spec, int_model.input_shape[-1])
    cfg = types.SimpleNamespace(resolution=int_model.input_shape[-1])
    x, y, _ = data.load_dataset(spec, cfg, pp, split="test")
    sess = ort.InferenceSession(str(float_path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    qi = int_model.input_q
    fp32 = np.array([sess.run(None, {name: x[i:i + 1]})[0][0].argmax() for i in range(len(x))])
    int8 = np.array([int_model.run(quantize_input(x[i:i + 1], qi.scale, qi.zero_point))[0]
                     .argmax() for i in range(len(x))])
    labeled = y is not None and int_model.output_shape[-1] == data.num_classes(spec)
    return {"eval_images": int(len(x)), "eval_set": f"{spec} (test split)",
            "accuracy_fp32": float((fp32 == y).mean()) if labeled else None,
            "accuracy_int8": float((int8 == y).mean()) if labeled else None,
            "top1_agreement": float((fp32 == int8).mean())}
