"""Parity's inputs: a data set fitted to the artifact's input shape with the model's
preprocessing, each input as the device takes it, and reference outputs in the device's
output units."""

from __future__ import annotations

import numpy as np

from edge_mnv1 import log
from edge_mnv1.artifact.artifact import Artifact, TensorSpec
from edge_mnv1.errors import UsageError
from edge_mnv1.onnxio.model_inputs import fitted_inputs


def load_inputs(art: Artifact, meta: dict, spec: str, limit: int | None = None):
    """(x float32 K x C x H x W, labels or None, names, a note on how the inputs were made)
    for the artifact's input C x H x W (onnxio/model_inputs.py: the data set's images with
    the preprocessing recorded with the model, else the data set's default, fitted to H x W
    and C; or seeded random inputs). For a batch-N artifact K is a multiple of N: the
    device takes N of them per request."""
    shape = art.manifest.input.shape
    x, y, names, note = fitted_inputs(spec, shape[1:], meta.get("preprocessing"),
                                      split="test", limit=limit)
    x, y, names, batched = _whole_batches(x, y, names, int(shape[0]))
    if batched:
        note = f"{note}; {batched}"
    classes = int(np.prod(art.manifest.output.shape[1:]))
    if y is not None and int(y.max()) >= classes:
        log.info(f"parity: {spec!r} has labels up to {int(y.max())} and the model "
                 f"{classes} outputs: accuracy is not reported")
        y = None
    return x, y, names, note


def _whole_batches(x, y, names, batch: int):
    """Inputs cut (or, fewer than one batch, repeated) to whole batches of the device's
    input, and what was done, in words ("" when nothing)."""
    k = len(x)
    if batch <= 1 or k % batch == 0:
        return x, y, names, ""
    n = max(batch, k - k % batch)
    idx = np.arange(n) % k
    what = (f"{k} inputs {'cut' if n < k else 'repeated'} to {n}: the model takes "
            f"{batch} per request")
    log.info(f"parity: {what}")
    return x[idx], None if y is None else y[idx], [names[i] for i in idx], what


def device_input(x: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """One preprocessed input as the device takes it (quantized if the input is)."""
    dtype = np.dtype(spec.dtype)
    x = x.reshape(spec.shape)
    if dtype.kind == "f":
        return x.astype(dtype)
    q = spec.quantization or {}
    if "scale" not in q:
        raise UsageError(f"the artifact's input is {dtype} without quantization parameters "
                         "in its manifest; recompile it")
    if dtype == np.uint8:  # the integer path's own rounding, shared with its reference
        from edge_mnv1.quant.fixedpoint import quantize_input

        return quantize_input(x, q["scale"], q.get("zero_point", 0))
    info = np.iinfo(dtype)
    return np.clip(np.round(x / q["scale"]) + q.get("zero_point", 0), info.min, info.max) \
        .astype(dtype)


def in_output_units(ref: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """Float reference outputs in the device's output units (quantized steps for int8)."""
    dtype = np.dtype(spec.dtype)
    q = spec.quantization or {}
    if dtype.kind in "iu" and ref.dtype.kind == "f" and "scale" in q:
        info = np.iinfo(dtype)
        return np.clip(np.round(ref / q["scale"]) + q.get("zero_point", 0), info.min, info.max)
    return ref
