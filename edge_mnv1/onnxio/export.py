"""PyTorch checkpoint -> ONNX, then checked: ONNX checker, no BatchNormalization left, and
ONNX Runtime against PyTorch on real inputs. Config and preprocessing ride in metadata_props.
"""

from __future__ import annotations

import copy
import hashlib
import io
import os
import warnings
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from edge_mnv1.model import checkpoint, data
from edge_mnv1.model.data import Preprocessing
from edge_mnv1.errors import CheckFailed, UsageError
from edge_mnv1.model.network import ConvBNReLU, ModelConfig
from edge_mnv1.onnxio.model_file import (METADATA_PREFIX, load_onnx, model_metadata,
                                         ort_session, save_onnx, write_metadata)

# What export records in the model's metadata (model_file adds the `edge_mnv1.` prefix).
CONFIG, PREPROCESSING = "config", "preprocessing"
CHECKPOINT = "checkpoint"  # {"path" (relative to the ONNX file), "sha256"}
FORMAT = "format_version"
FORMAT_VERSION = 1
INPUT_NAME, OUTPUT_NAME = "input", "logits"
DEFAULT_OPSET = 17
# ONNX Runtime must match PyTorch (fp32) within ATOL, or, for a model whose fp32 rounding is
# amplified layer by layer (untrained random networks: ~3e-5 on logits of ~2), within
# FLOOR_FACTOR times PyTorch's own fp32 error against the same model in float64. A wrong export
# (BN fold, padding, layout) is off by 1e-2 or more either way.
ATOL = 1e-5
FLOOR_FACTOR = 3
CHECK_INPUTS = 8


def parse_batch(value) -> int | str:
    """--batch: a positive integer or "dynamic"."""
    if str(value) == "dynamic":
        return "dynamic"
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = 0
    if n < 1:
        raise UsageError(f"--batch {value}: use a positive integer or `dynamic`")
    return n


def fold_batchnorm(model):
    """A copy of `model` (eval) whose BNs are folded into conv weights and biases, so the
    graph has no BatchNormalization whatever the exporter does."""
    import torch
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    # Folding in float64 keeps the folded weights within one fp32 rounding of exact.
    fused = copy.deepcopy(model).eval().double()
    for m in fused.modules():
        if isinstance(m, ConvBNReLU):
            m.conv = fuse_conv_bn_eval(m.conv, m.bn)
            m.bn = torch.nn.Identity()
    return fused.float()


def to_onnx(model, config: ModelConfig, pp: Preprocessing, out, batch=1,
            opset: int = DEFAULT_OPSET, source=None) -> Path:
    """Write `model` as ONNX with config and preprocessing in its metadata_props, and the
    `source` checkpoint's path and sha256 so later stages can find the PyTorch model."""
    import torch

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    n = 1 if batch == "dynamic" else batch
    example = torch.zeros(n, 3, config.resolution, config.resolution)
    dynamic = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if batch == "dynamic" \
        else None
    buf = io.BytesIO()
    # The TorchScript exporter (dynamo=False) is deprecated but works (see the TVM notes);
    # its warnings and prints are silenced because stdout carries the --json object.
    with warnings.catch_warnings(), redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(fold_batchnorm(model), (example,), buf, dynamo=False,
                              opset_version=opset, input_names=[INPUT_NAME],
                              output_names=[OUTPUT_NAME], dynamic_axes=dynamic,
                              do_constant_folding=True)
        except Exception as e:  # the exporter refuses some opsets with its own error types
            raise UsageError(f"--opset {opset}: the exporter failed ({e}); use --opset "
                             f"{DEFAULT_OPSET}") from None
    proto = onnx.load_from_string(buf.getvalue())
    meta = {CONFIG: config.to_json(), PREPROCESSING: pp.to_json(), FORMAT: str(FORMAT_VERSION)}
    if source is not None:
        rel = os.path.relpath(Path(source).resolve(), out.resolve().parent)
        sha = hashlib.sha256(Path(source).read_bytes()).hexdigest()
        meta[CHECKPOINT] = {"path": rel, "sha256": sha}
    write_metadata(proto, meta)
    proto.producer_name = "edge_mnv1"
    return save_onnx(proto, out)


def read_model_config(onnx_path) -> tuple[ModelConfig, Preprocessing]:
    """The model config and preprocessing `edge-mnv1 export` recorded in an ONNX file."""
    meta = model_metadata(load_onnx(onnx_path))
    if CONFIG not in meta or PREPROCESSING not in meta:
        raise UsageError(f"{onnx_path}: no {METADATA_PREFIX}{CONFIG} metadata (not written by "
                         "`edge-mnv1 export`); export the checkpoint with "
                         "`edge-mnv1 export CKPT -o MODEL.onnx`")
    try:
        return (ModelConfig.from_dict(meta[CONFIG]), Preprocessing.from_dict(meta[PREPROCESSING]))
    except UsageError as e:
        raise UsageError(f"{onnx_path}: bad edge_mnv1 metadata ({e}); re-export it") from None


def check(onnx_path, model, config: ModelConfig, pp: Preprocessing, batch) -> dict:
    """Checker (full), no BatchNormalization, metadata round trip, and ONNX Runtime vs the
    (unfolded) PyTorch model on real digits inputs."""
    import torch

    proto = load_onnx(onnx_path)
    onnx.checker.check_model(proto, full_check=True)  # shape inference too
    bn = [n.name for n in proto.graph.node if n.op_type == "BatchNormalization"]
    if bn:
        raise CheckFailed(f"{onnx_path}: BatchNormalization left in the graph ({bn[:3]})")
    if read_model_config(onnx_path) != (config, pp):
        raise CheckFailed(f"{onnx_path}: the metadata does not read back as the model config")
    x, _, _ = data.load_dataset("digits", config, pp, split="test", limit=CHECK_INPUTS)
    sizes = [len(x), 1] if batch == "dynamic" else [batch] * -(-len(x) // batch)
    sess = ort_session(onnx_path)
    err, floor, checked, absmax = 0.0, 0.0, 0, 0.0
    for n in sizes:
        xb = np.resize(x, (n,) + x.shape[1:])  # repeat the inputs to fill a static batch
        with torch.no_grad():
            ref = model.eval()(torch.from_numpy(xb)).numpy()
            exact = copy.deepcopy(model).double()(torch.from_numpy(xb).double()).numpy()
        err = max(err, float(np.abs(sess.run([OUTPUT_NAME], {INPUT_NAME: xb})[0] - ref).max()))
        floor = max(floor, float(np.abs(ref - exact).max()))
        absmax = max(absmax, float(np.abs(ref).max()))
        checked += n
    tolerance = max(ATOL, FLOOR_FACTOR * floor)
    return dict(max_abs_error_vs_torch=err, torch_fp32_error_vs_fp64=floor,
                tolerance=tolerance, within_tolerance=err <= tolerance,
                checked_inputs=checked, batch_sizes_checked=sorted(set(sizes)),
                reference_logit_absmax=absmax)


def export(ckpt, out, batch=1, opset: int = DEFAULT_OPSET) -> dict:
    """Checkpoint -> checked ONNX file. CheckFailed when ORT and PyTorch disagree."""
    batch = parse_batch(batch)
    if not 13 <= opset <= 21:
        raise UsageError(f"--opset {opset}: use an opset from 13 to 21 (17 is tested)")
    model, config, pp, _ = checkpoint.load_model(ckpt)
    path = to_onnx(model, config, pp, out, batch=batch, opset=opset, source=ckpt)
    result = dict(path=str(path), checkpoint=str(ckpt), opset=opset, batch=batch,
                  config=config.to_dict(), preprocessing=pp.to_dict(),
                  file_bytes=path.stat().st_size)
    proto = load_onnx(path)
    result["weight_bytes"] = sum(numpy_helper.to_array(t).nbytes
                                 for t in proto.graph.initializer)
    result.update(check(path, model, config, pp, batch))
    if not result["within_tolerance"]:
        raise CheckFailed(f"{path}: ONNX Runtime differs from PyTorch by up to "
                          f"{result['max_abs_error_vs_torch']:.3g} on logits up to "
                          f"{result['reference_logit_absmax']:.3g} (allowed "
                          f"{result['tolerance']:.3g}: {ATOL:g}, or {FLOOR_FACTOR}x PyTorch's "
                          "own fp32 error vs float64); the export is wrong")
    result["passed"] = True
    return result


def export_random(path: str | Path, side: int, alpha: float = 0.25, classes: int = 10,
                  seed: int = 0) -> Path:
    """MobileNetV1 with seeded random weights exported for side x side inputs (the network
    is fully convolutional, so sides below the config's minimum of 32 work): a cheap model
    for fuzzing and soaks, where the numbers do not matter and the frame size does."""
    import torch

    from edge_mnv1.model.network import MobileNetV1

    path = Path(path)
    torch.manual_seed(seed)
    net = MobileNetV1(ModelConfig(alpha=alpha, resolution=32, classes=classes)).eval()
    tmp = path.with_name(path.name + ".tmp")
    torch.onnx.export(net, torch.zeros(1, 3, side, side), str(tmp), dynamo=False,
                      opset_version=17, input_names=["input"], output_names=["logits"])
    os.replace(tmp, path)
    return path
