"""Shared helpers for tests that compile artifacts and talk to device programs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "edge_mnv1.cli"]


def cli(*args, check=True, timeout=1800) -> subprocess.CompletedProcess:
    r = subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                       cwd=REPO)
    if check and r.returncode != 0:
        raise AssertionError(f"edge-mnv1 {' '.join(map(str, args))} exited {r.returncode}:\n"
                             f"{r.stderr[-3000:]}")
    return r


def cli_json(*args, **kw) -> dict:
    r = cli(*args, "--json", **kw)
    return json.loads(r.stdout)


def ort_outputs(model_path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i:i + 1]})[0] for i in range(len(x))])


def untrained_onnx(root: Path) -> Path:
    """A freshly initialised MobileNetV1 0.25/64 (BN not calibrated): its outputs hardly
    depend on the input, the case parity must warn about."""
    import torch

    from edge_mnv1.model.network import MobileNetV1, ModelConfig

    path = root / "untrained.onnx"
    if not path.is_file():
        torch.manual_seed(0)
        model = MobileNetV1(ModelConfig(alpha=0.25, resolution=64, classes=10)).eval()
        torch.onnx.export(model, torch.zeros(1, 3, 64, 64), str(path), dynamo=False,
                          opset_version=17, input_names=["input"], output_names=["logits"])
    return path
