"""What `compile` takes: a MobileNetV1-family ONNX model with one float32 NCHW input whose
channels, height and width are fixed (any H x W, any C; the batch axis fixed or dynamic),
built from the operators listed here. Anything else is refused before TVM sees it, with a
message naming the input and the unsupported thing: TVM would otherwise fail deep inside,
or compile an operator the project's schedules and parity checks were never made for."""

from __future__ import annotations

from pathlib import Path

import onnx

from edge_mnv1.errors import UsageError

# The family: conv (full, depthwise, pointwise) with BN and ReLU/ReLU6, average pooling, the
# classifier, and the shape plumbing exporters put around them (a dynamic batch's flatten is
# Shape/Gather/Unsqueeze/Concat/Reshape); QDQ pairs for int8 models (`edge-mnv1 quantize`).
SUPPORTED_OPS = frozenset((
    "Conv", "BatchNormalization", "Relu", "Clip", "Add", "Mul",
    "GlobalAveragePool", "AveragePool", "Flatten", "Reshape", "Squeeze", "Unsqueeze",
    "Gemm", "MatMul", "Softmax", "Dropout", "Identity", "Constant",
    "Shape", "Gather", "Concat", "QuantizeLinear", "DequantizeLinear"))
RANK = 4  # N, C, H, W


def _dtype_name(elem_type: int) -> str:
    try:
        return onnx.helper.tensor_dtype_to_np_dtype(elem_type).name
    except (KeyError, TypeError, ValueError):
        return f"ONNX element type {elem_type}"


def declared_shape(model: onnx.ModelProto) -> list:
    """The input's dimensions as the file declares them: ints, and the names (or "?") of
    symbolic ones."""
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return [int(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?") for d in dims]


def input_shape(model: onnx.ModelProto, batch: int = 1) -> list[int]:
    """The input's static shape; a symbolic (dynamic) batch becomes `batch`."""
    name = model.graph.input[0].name
    shape = []
    for i, d in enumerate(declared_shape(model)):
        if isinstance(d, int) and d > 0:
            shape.append(d)
        elif i == 0:
            shape.append(batch)
        else:
            raise UsageError(f"input {name!r}: dimension {i} ({d!r}) is not static; export "
                             "with a fixed number of channels and a fixed height and width")
    return shape


def check_compilable(model: onnx.ModelProto, path: str | Path) -> None:
    """UsageError naming `path`, the input or node, and what is not supported."""
    inp, out = model.graph.input[0], model.graph.output[0]
    for role, v in (("input", inp), ("output", out)):
        t = v.type.tensor_type
        if not v.type.HasField("tensor_type"):
            raise UsageError(f"{path}: {role} {v.name!r} is not a tensor; compile takes one "
                             "float32 NCHW image tensor in and one tensor out")
        if t.elem_type != onnx.TensorProto.FLOAT:
            raise UsageError(f"{path}: {role} {v.name!r} has dtype {_dtype_name(t.elem_type)}; "
                             "compile takes float32 models: export the model in float32 (an "
                             "int8 model is a float32 model with QDQ pairs: `edge-mnv1 "
                             "quantize`)")
    rank = len(inp.type.tensor_type.shape.dim)
    if rank != RANK:
        raise UsageError(f"{path}: input {inp.name!r} has rank {rank} (shape "
                         f"{declared_shape(model)}); compile takes an image batch of rank 4, "
                         "N x C x H x W")
    try:
        input_shape(model)  # C, H, W static
    except UsageError as e:
        raise UsageError(f"{path}: {e}") from None
    unsupported = {}
    for node in model.graph.node:
        if node.op_type not in SUPPORTED_OPS or node.domain not in ("", "ai.onnx"):
            unsupported.setdefault(node.op_type, node.name or "(unnamed)")
    if unsupported:
        ops = ", ".join(f"{op} (node {name!r})" for op, name in sorted(unsupported.items()))
        raise UsageError(f"{path}: operator {ops} is outside the MobileNetV1 family compile "
                         f"supports ({', '.join(sorted(SUPPORTED_OPS))}); remove it from the "
                         "model or run that part on the host")
