"""ONNX in, Relax out: a float model through TVM's ONNX frontend, a QDQ model through the
integer model (compiler/integer.py). The file itself is loaded by onnxio.model_file."""

from __future__ import annotations

import onnx

from edge_mnv1.errors import UsageError
from edge_mnv1.onnxio.model_file import is_qdq
from edge_mnv1.quant import qdq


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
    if is_qdq(model):
        from edge_mnv1.compiler import integer

        int_model = qdq.from_onnx(model)
        return integer.to_relax(int_model), "int8", int_model
    return to_relax(model), "float32", None
