"""Parity's inputs: a data set at the artifact's input size with the model's preprocessing,
each input as the device takes it, and reference outputs in the device's output units."""

from __future__ import annotations

import types

import numpy as np

from edge_mnv1 import log
from edge_mnv1.artifact.artifact import Artifact, TensorSpec
from edge_mnv1.errors import UsageError
from edge_mnv1.model import data as data_mod


def load_inputs(art: Artifact, meta: dict, spec: str, limit: int | None = None):
    """(x float32 NCHW, labels or None, names, preprocessing note) at the artifact's input
    size, with the preprocessing recorded with the model (`meta`, references.model_info),
    else the data set's default."""
    shape = art.manifest.input.shape
    res = int(shape[-1])
    if isinstance(meta.get("preprocessing"), dict):
        pp = data_mod.Preprocessing.from_dict(meta["preprocessing"])
        note = "preprocessing recorded with the model"
    else:
        pp = data_mod.default_preprocessing(spec, res)
        note = f"no preprocessing recorded with the model: the default for {spec!r}"
    x, y, names = data_mod.load_dataset(spec, types.SimpleNamespace(resolution=res), pp,
                                        split="test", limit=limit)
    if list(x.shape[1:]) != list(shape[1:]):
        raise UsageError(f"data {spec!r} gives inputs of shape {list(x.shape[1:])}, the "
                         f"artifact takes {list(shape[1:])}")
    classes = int(np.prod(art.manifest.output.shape[1:]))
    if y is not None and int(y.max()) >= classes:
        log.info(f"parity: {spec!r} has labels up to {int(y.max())} and the model "
                 f"{classes} outputs: accuracy is not reported")
        y = None
    return x, y, names, note


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
