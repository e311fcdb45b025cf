"""Multiply-accumulates counted from an ONNX graph itself (no torch, no model config).

An independent check on the cost model: shapes come from ONNX shape inference, MACs from
each Conv (with its group), Gemm and MatMul. Counts are per input sample (the batch axis,
static or symbolic, is left out), with the cost model's convention: one MAC per weight use,
bias additions not counted.
"""

from __future__ import annotations

import math

import onnx

from edge_mnv1.errors import UsageError
from edge_mnv1.onnxio.model_file import load_onnx

COUNTED_OPS = ("Conv", "Gemm", "MatMul")


def _shapes(model: onnx.ModelProto) -> tuple[dict, dict]:
    """name -> list of dims (int, or None when symbolic); name -> element count of constants."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except Exception as e:
        raise UsageError(f"ONNX shape inference failed ({str(e).splitlines()[0]}); the model "
                         "must have static shapes apart from the batch axis") from None
    g = inferred.graph
    shapes = {}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
            shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None
                               for d in vi.type.tensor_type.shape.dim]
    constants = {}
    for init in g.initializer:
        shapes[init.name] = list(init.dims)
        constants[init.name] = math.prod(init.dims)
    for node in g.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    shapes[node.output[0]] = list(a.t.dims)
                    constants[node.output[0]] = math.prod(a.t.dims)
        elif node.op_type == "Identity" and node.input[0] in constants:
            # the TorchScript exporter shares equal initializers (e.g. zero biases) this way
            constants[node.output[0]] = constants[node.input[0]]
    return shapes, constants


def _known(shape, what, batch_axis=False) -> list:
    """`shape`, checked static (apart from axis 0 when `batch_axis`)."""
    if shape is None or any(d is None for d in shape[1 if batch_axis else 0:]):
        raise UsageError(f"{what}: shape {shape} is not static; MACs need static shapes "
                         "apart from the batch axis")
    return shape


def _node_macs(node, shapes) -> int:
    out = shapes.get(node.output[0])
    if node.op_type == "Conv":
        # weight (Cout, Cin/group, kh, kw): each output element uses Cin/group*kh*kw weights
        w = _known(shapes.get(node.input[1]), f"Conv {node.name} weight")
        return math.prod(_known(out, f"Conv {node.name} output", True)[1:]) * math.prod(w[1:])
    if node.op_type == "Gemm":
        attrs = {a.name: a.i for a in node.attribute if a.type == onnx.AttributeProto.INT}
        b = _known(shapes.get(node.input[1]), f"Gemm {node.name} B")
        k, n = (b[1], b[0]) if attrs.get("transB", 0) else (b[0], b[1])
        return k * n  # per row of A, i.e. per sample
    # MatMul: K = B's second-to-last axis; the output's leading axis is the batch
    b = _known(shapes.get(node.input[1]), f"MatMul {node.name} B")
    out = _known(out, f"MatMul {node.name} output", True)
    k = b[-2] if len(b) >= 2 else b[0]
    return k * math.prod(out[1:] if len(out) > 1 else out)


def graph_costs(model) -> dict:
    """{"layers": [{name, op, out_shape, macs, params}], "macs", "params", "batch"} for a
    ModelProto or a path. params counts the constant inputs (weights, biases) of the
    counted nodes, which for a BN-folded export is the cost model's `params_folded`."""
    if not isinstance(model, onnx.ModelProto):
        model = load_onnx(model)
    shapes, constants = _shapes(model)
    layers = []
    for node in model.graph.node:
        if node.op_type not in COUNTED_OPS:
            continue
        layers.append(dict(name=node.name or node.output[0], op=node.op_type,
                           out_shape=shapes.get(node.output[0]),
                           macs=int(_node_macs(node, shapes)),
                           params=int(sum(constants.get(i, 0) for i in node.input))))
    first_input = next((i for i in model.graph.input if i.name not in constants), None)
    batch = shapes.get(first_input.name, [None])[0] if first_input is not None else None
    return dict(layers=layers, macs=sum(r["macs"] for r in layers),
                params=sum(r["params"] for r in layers), batch=batch)
