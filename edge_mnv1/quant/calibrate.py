"""Post-training quantization of a float model: ONNX Runtime's static QDQ quantizer with this
project's scheme, calibrated on real images."""

from __future__ import annotations

import copy
import logging
import tempfile
from pathlib import Path

import numpy as np
import onnx

from edge_mnv1.errors import UsageError
from edge_mnv1.onnxio.model_file import load_onnx, model_metadata, save_onnx, write_metadata
from edge_mnv1.quant.fixedpoint import SCHEME


def quantize_model(src: str | Path, calib_x: np.ndarray, out: str | Path,
                   calibration: str) -> onnx.ModelProto:
    """ONNX Runtime's static QDQ quantizer with this project's scheme; edge_mnv1 metadata
    (config, preprocessing) is carried over and the scheme is added to it."""
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)

    src, out = Path(src), Path(out)
    model = load_onnx(src, one_input_output=True)
    name = model.graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(range(len(calib_x)))

        def get_next(self):
            i = next(self.items, None)
            return None if i is None else {name: calib_x[i:i + 1].astype(np.float32)}

    class _NoPreprocessAdvice(logging.Filter):  # the model is already BN-folded and shaped
        def filter(self, record):
            return "pre-processing" not in record.getMessage()

    advice = _NoPreprocessAdvice()
    logging.getLogger().addFilter(advice)
    try:
        with tempfile.TemporaryDirectory(dir=out.parent, prefix=out.name + ".") as work:
            quantized, source = Path(work) / "quantized.onnx", Path(work) / "source.onnx"
            onnx.save(_inline_constant_identities(model), str(source))
            quantize_static(str(source), str(quantized), Reader(),
                            quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8,
                            extra_options={"WeightSymmetric": True,
                                           "ActivationSymmetric": False})
            q = onnx.load(str(quantized))
    finally:
        logging.getLogger().removeFilter(advice)
    write_metadata(q, {**model_metadata(model),
                       "quantization": {**SCHEME, "calibration_set": calibration,
                                        "calibration_images": int(len(calib_x))}})
    onnx.checker.check_model(q)
    save_onnx(q, out)
    return q


def _inline_constant_identities(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` whose Identity nodes of initializers are initializers themselves:
    torch.onnx.export shares equal constants (e.g. the zero biases of untrained BNs folded
    into convs) through Identity nodes, and the quantizer needs each layer's weight and bias
    as an initializer of its own."""
    model = copy.deepcopy(model)
    inits = {t.name: t for t in model.graph.initializer}
    kept = []
    for node in model.graph.node:
        if node.op_type == "Identity" and node.input[0] in inits:
            t = onnx.TensorProto()
            t.CopyFrom(inits[node.input[0]])
            t.name = node.output[0]
            model.graph.initializer.append(t)
            inits[t.name] = t
        else:
            kept.append(node)
    del model.graph.node[:]
    model.graph.node.extend(kept)
    return model


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
