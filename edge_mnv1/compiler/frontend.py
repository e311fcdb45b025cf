"""ONNX in, Relax out: load and check the file, import it with TVM's ONNX frontend."""

from __future__ import annotations

import json
from pathlib import Path

import onnx

from edge_mnv1.errors import UsageError


def load_onnx(path: str | Path) -> onnx.ModelProto:
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such ONNX file; write one with `edge-mnv1 export CKPT -o {path}`")
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as e:  # protobuf raises several types for a damaged file
        raise UsageError(f"{path}: not a valid ONNX model ({type(e).__name__}: {str(e)[:200]}); "
                         "re-export it with `edge-mnv1 export`") from None
    if len(model.graph.input) != 1 or len(model.graph.output) != 1:
        raise UsageError(f"{path}: expected one input and one output, found "
                         f"{len(model.graph.input)} and {len(model.graph.output)}")
    return model


def model_metadata(model: onnx.ModelProto) -> dict:
    """The edge_mnv1 metadata written by `export` (config, preprocessing), if present."""
    meta = {}
    for prop in model.metadata_props:
        if prop.key.startswith("edge_mnv1."):
            try:
                meta[prop.key.split(".", 1)[1]] = json.loads(prop.value)
            except json.JSONDecodeError:
                meta[prop.key.split(".", 1)[1]] = prop.value
    return meta


def input_shape(model: onnx.ModelProto, batch: int = 1) -> list[int]:
    """The input's static shape; a symbolic (dynamic) batch becomes `batch`."""
    dims = model.graph.input[0].type.tensor_type.shape.dim
    shape = []
    for i, d in enumerate(dims):
        if d.HasField("dim_value"):
            shape.append(int(d.dim_value))
        elif i == 0:
            shape.append(batch)
        else:
            raise UsageError(f"the model's input dimension {i} ({d.dim_param!r}) is not static; "
                             "export with a fixed resolution")
    return shape


def to_relax(model: onnx.ModelProto, batch: int = 1):
    import tvm.relax.frontend.onnx as relax_onnx

    name = model.graph.input[0].name
    shape = input_shape(model, batch)
    try:
        return relax_onnx.from_onnx(model, shape_dict={name: shape}, keep_params_in_input=False)
    except Exception as e:
        raise UsageError(f"TVM's ONNX importer refused the model ({type(e).__name__}: "
                         f"{str(e)[:300]})") from None


def import_model(model: onnx.ModelProto):
    """(Relax module, element type, integer model or None). A QDQ model becomes integer
    Relax (compiler/integer.py); anything else goes through TVM's ONNX importer."""
    from edge_mnv1.quant import quantize

    if quantize.is_quantized(model):
        from edge_mnv1.compiler import integer

        int_model = quantize.from_onnx(model)
        return integer.to_relax(int_model), "int8", int_model
    return to_relax(model), "float32", None
