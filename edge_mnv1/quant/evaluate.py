"""How much a quantized model loses: fp32 (ONNX Runtime) against the integer reference on
held-out images."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_mnv1.onnxio.model_file import ort_session
from edge_mnv1.quant.fixedpoint import quantize_input
from edge_mnv1.quant.integer_model import IntegerModel


def evaluate(float_path: str | Path, int_model: IntegerModel, meta: dict,
             spec: str = "digits") -> dict:
    """fp32 (ONNX Runtime) vs the integer reference on held-out images (digits' test split)."""
    import types

    from edge_mnv1.model import data

    pp = data.Preprocessing.from_dict(meta["preprocessing"]) if "preprocessing" in meta \
        else data.default_preprocessing(spec, int_model.input_shape[-1])
    cfg = types.SimpleNamespace(resolution=int_model.input_shape[-1])
    x, y, _ = data.load_dataset(spec, cfg, pp, split="test")
    sess = ort_session(float_path)
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
