"""ONNX files in and out, for every stage: loading with one set of checks, the `edge_mnv1.*`
metadata `export` and `quantize` write, ONNX Runtime sessions, and telling a QDQ model apart.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import onnx

from edge_mnv1.errors import UsageError

METADATA_PREFIX = "edge_mnv1."


def load_onnx(path: str | Path, *, one_input_output: bool = False) -> onnx.ModelProto:
    """Load and check an ONNX file; UsageError naming the file and what to do when it is
    missing or not a model. `one_input_output` is for the stages that feed the model's
    one input and read its one output (compile, quantize)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such file; create one with `edge-mnv1 export CKPT -o "
                         f"{path.name if path.suffix == '.onnx' else 'MODEL.onnx'}`")
    try:
        model = onnx.load(str(path))
        # Arbitrary bytes can parse as a protobuf with unknown fields; the checker refuses it.
        if not model.graph.node:
            raise ValueError("the graph has no nodes")
        onnx.checker.check_model(model)
    except Exception as e:  # protobuf DecodeError, onnx ValidationError, OSError, ...
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UsageError(f"{path}: not a valid ONNX model ({first[:200]}); the file may be "
                         "truncated or of another kind: re-export it with `edge-mnv1 export`") \
            from None
    if one_input_output and (len(model.graph.input) != 1 or len(model.graph.output) != 1):
        raise UsageError(f"{path}: expected one input and one output, found "
                         f"{len(model.graph.input)} and {len(model.graph.output)}")
    return model


def save_onnx(model: onnx.ModelProto, out: str | Path) -> Path:
    """Write `model` under a temporary name first: a killed run never leaves a half-written
    model under the final name."""
    out = Path(out)
    tmp = out.with_name(out.name + ".partial")
    onnx.save(model, str(tmp))
    os.replace(tmp, out)
    return out


def model_metadata(model: onnx.ModelProto) -> dict:
    """The model's `edge_mnv1.*` metadata, prefix removed, JSON values decoded (a value that
    is not JSON stays a string)."""
    meta = {}
    for prop in model.metadata_props:
        if prop.key.startswith(METADATA_PREFIX):
            key = prop.key[len(METADATA_PREFIX):]
            try:
                meta[key] = json.loads(prop.value)
            except json.JSONDecodeError:
                meta[key] = prop.value
    return meta


def write_metadata(model: onnx.ModelProto, meta: dict) -> None:
    """Replace the model's metadata with `meta` (keys without the prefix; a string is stored
    as written, anything else as JSON), the inverse of `model_metadata`."""
    del model.metadata_props[:]
    for key, value in meta.items():
        model.metadata_props.add(key=METADATA_PREFIX + key,
                                 value=value if isinstance(value, str) else json.dumps(value))


def is_qdq(model: onnx.ModelProto) -> bool:
    """A quantized (QDQ) model: `edge-mnv1 quantize` wrote it, the integer path computes it."""
    return any(n.op_type == "QuantizeLinear" for n in model.graph.node)


def ort_session(path: str | Path, threads: int = 2, optimize: bool = True):
    """An ONNX Runtime session on the CPU with `threads` intra-op threads; `optimize=False`
    runs the graph as written (ORT_DISABLE_ALL), which a QDQ model needs to keep its own
    arithmetic instead of ORT's fused integer kernels."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize \
        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
