"""A QDQ ONNX graph (as `edge-mnv1 quantize` writes it) read into the integer model: each
layer's int8 weights, int32 bias and the fixed-point multipliers derived once from its scales."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from edge_mnv1.errors import UsageError
from edge_mnv1.quant.fixedpoint import fixed_point
from edge_mnv1.quant.integer_model import IntegerModel, Layer, QParams


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
        """The DequantizeLinear feeding `name`: (its quantized input, scale, zero point)."""
        node = self.producer.get(name)
        if node is None or node.op_type != "DequantizeLinear":
            raise UsageError(f"{what} {name!r} is not produced by DequantizeLinear: the model is "
                             "not a QDQ model (quantize it with `edge-mnv1 quantize`)")
        scale = self.inits.get(node.input[1])
        zp = self.inits.get(node.input[2]) if len(node.input) > 2 else None
        return node.input[0], scale, zp

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
        x_q = g.dq_source(node.input[0], f"{node.op_type} input")[0]
        if x_q not in qparams:
            raise UsageError(f"{node.op_type} {node.name!r} reads {x_q!r}, which no earlier "
                             "layer produced; the graph is not in topological order")
        qnode = g.only_q_consumer(node.output[0], f"{node.op_type} {node.name!r}")
        y_q = add_q(qnode)
        sx, sy = qparams[x_q].scale, qparams[y_q].scale
        if node.op_type in ("Conv", "Gemm"):
            layers.append(_weighted_layer(g, node, x_q, y_q, sx, sy))
        elif node.op_type == "GlobalAveragePool":
            shape = _shape_of(model, node.input[0], g)
            m, s = fixed_point(sx / (sy * shape[2] * shape[3]))
            layers.append(Layer("avgpool", x_q, y_q, np.array([m], np.int64),
                                np.array([s], np.int64), 0, 255))
        elif node.op_type in ("Flatten", "Reshape"):
            if (sx, qparams[x_q].zero_point) != (sy, qparams[y_q].zero_point):
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


def _weighted_layer(g: _Graph, node, x_q, y_q, sx, sy) -> Layer:
    w_q, w_scale, w_zp = g.dq_source(node.input[1], f"{node.op_type} weight")
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
        b_q, b_scale, _ = g.dq_source(node.input[2], f"{node.op_type} bias")
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
