"""ONNX in, Relax out: a float model through TVM's ONNX frontend, a QDQ model through the
integer model (compiler/integer.py). The file itself is loaded by onnxio.model_file."""

from __future__ import annotations

import onnx

from edge_mnv1.errors import UsageError
from edge_mnv1.onnxio import support
from edge_mnv1.onnxio.model_file import is_qdq
from edge_mnv1.quant import qdq


def input_shape(model: onnx.ModelProto, batch: int = 1) -> list[int]:
    """The input's static shape; a symbolic (dynamic) batch becomes `batch`."""
    return support.input_shape(model, batch)


def to_relax(model: onnx.ModelProto, batch: int = 1):
    import tvm.relax.frontend.onnx as relax_onnx

    name = model.graph.input[0].name
    shape = input_shape(model, batch)
    try:
        return relax_onnx.from_onnx(model, shape_dict={name: shape}, keep_params_in_input=False)
    except Exception as e:
        raise UsageError(f"TVM's ONNX importer refused the model ({type(e).__name__}: "
                         f"{str(e)[:300]})") from None


def import_model(model: onnx.ModelProto, path: str = "the model", target=None):
    """(Relax module, element type, integer model or None). A QDQ model becomes integer
    Relax (compiler/integer.py); anything else goes through TVM's ONNX importer. What is not
    a MobileNetV1-family model (onnxio/support.py) is refused first, naming `path`."""
    support.check_compilable(model, path)
    if is_qdq(model):
        from edge_mnv1.compiler import integer

        int_model = qdq.from_onnx(model)
        return integer.to_relax(int_model, *integer.options_for(target)), "int8", int_model
    return to_relax(model), "float32", None
