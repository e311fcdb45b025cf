"""Checkpoints: a safetensors file whose metadata carries the model config and preprocessing.

Tensors are stored and returned as numpy arrays (state_dict names), so readers that never
touch torch (quantization, the compiler) can use them; `model.load_model` builds the module.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from edge_mnv1.model.data import Preprocessing
from edge_mnv1.errors import UsageError
from edge_mnv1.model.network import ModelConfig

FORMAT = "edge_mnv1.checkpoint"
FORMAT_VERSION = 1


def save(path, tensors: dict, config: ModelConfig, preprocessing: Preprocessing,
         info: dict | None = None) -> Path:
    """Write `tensors` (name -> numpy array) with config, preprocessing and `info` (any JSON:
    training data, seed, accuracy) in the metadata. Written to a temporary name first so a
    crash never leaves a half file under `path`."""
    from safetensors.numpy import save_file

    path = Path(path)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"format": FORMAT, "format_version": str(FORMAT_VERSION),
                "config": config.to_json(), "preprocessing": preprocessing.to_json(),
                "info": json.dumps(info or {}, sort_keys=True)}
    arrays = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(arrays, str(tmp), metadata=metadata)
    os.replace(tmp, path)
    return path


def read_metadata(path) -> tuple[ModelConfig, Preprocessing, dict]:
    """(config, preprocessing, info) without loading the tensors."""
    return _open(path, tensors=False)[1:]


def load(path) -> tuple[dict, ModelConfig, Preprocessing, dict]:
    """(tensors as numpy arrays, config, preprocessing, info)."""
    return _open(path, tensors=True)


def _open(path, tensors: bool):
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"checkpoint {path}: no such file; create one with "
                         "`edge-mnv1 train --data digits -o CKPT`")
    try:
        with safe_open(str(path), framework="np") as f:
            meta = f.metadata() or {}
            arrays = {k: f.get_tensor(k) for k in f.keys()} if tensors else {}
    except Exception as e:  # safetensors raises its own error types for every corruption
        raise UsageError(f"checkpoint {path}: not a readable safetensors file ({e}); "
                         "re-create it with `edge-mnv1 train`") from None
    if meta.get("format") != FORMAT or "config" not in meta or "preprocessing" not in meta:
        raise UsageError(f"checkpoint {path}: no edge_mnv1 model config in its metadata "
                         "(not written by `edge-mnv1 train`); re-create it with "
                         "`edge-mnv1 train`")
    version = meta.get("format_version", "")
    if version != str(FORMAT_VERSION):
        raise UsageError(f"checkpoint {path}: format version {version!r}, this edge_mnv1 "
                         f"reads version {FORMAT_VERSION}; re-create it with `edge-mnv1 train`")
    try:
        config = ModelConfig.from_json(meta["config"])
        pp = Preprocessing.from_json(meta["preprocessing"])
        info = json.loads(meta.get("info", "{}"))
    except (UsageError, ValueError) as e:
        raise UsageError(f"checkpoint {path}: bad metadata ({e}); re-create it with "
                         "`edge-mnv1 train`") from None
    return arrays, config, pp, info


def state_arrays(model) -> dict:
    """A torch module's state_dict as numpy arrays (what `save` stores)."""
    return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}


def load_model(path):
    """(MobileNetV1 in eval mode, config, preprocessing, info) from a checkpoint."""
    import torch

    from edge_mnv1.model.network import MobileNetV1

    arrays, config, pp, info = load(path)
    model = MobileNetV1(config)
    try:
        model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in arrays.items()},
                              strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise UsageError(f"checkpoint {path}: its tensors do not match its config "
                         f"{config.to_json()} ({first}); re-create it with `edge-mnv1 train`") \
            from None
    return model.eval(), config, pp, info
