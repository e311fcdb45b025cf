"""Inputs for any model's input shape, for compile's golden data and parity's inputs.

A data set's images (`edge_mnv1.model.data`) are square and RGB; a model may take H x W
(not square) and 1 or any other number of channels. The images are made at the larger side
with the model's recorded preprocessing (else the data set's default), center-cropped to
H x W, and for C != 3 turned gray (the mean of R, G, B) and repeated C times. The project's
own square 3-channel models get exactly the data set's images. `random` / `random:N` are
seeded standard-normal inputs instead, for a model whose inputs are not images at all.
"""

from __future__ import annotations

import types

import numpy as np

from edge_mnv1.errors import UsageError
from edge_mnv1.model import data as data_mod

RANDOM = "random"
RANDOM_DEFAULT = 64  # inputs of `random` without :N
RANDOM_SEED = 0


def _random(spec: str, chw, limit: int | None):
    _, _, n = spec.partition(":")
    if n and (not n.isdigit() or int(n) < 1):
        raise UsageError(f"data set {spec!r}: N in random:N must be a positive integer")
    count = min(v for v in (int(n) if n else RANDOM_DEFAULT, limit) if v is not None)
    x = np.random.default_rng(RANDOM_SEED).standard_normal((count, *chw)).astype(np.float32)
    note = f"seeded random inputs (standard normal, seed {RANDOM_SEED}), {'x'.join(map(str, chw))}"
    return x, None, [f"random/{i}" for i in range(count)], note


def _preprocessing(spec: str, side: int, recorded) -> tuple[data_mod.Preprocessing, str]:
    if isinstance(recorded, dict):
        pp = data_mod.Preprocessing.from_dict(recorded)
        if pp.crop == side:
            return pp, "preprocessing recorded with the model"
    return (data_mod.default_preprocessing(spec, side),
            f"no preprocessing recorded with the model for {side}x{side}: the default for "
            f"{spec!r}")


def fit_images(x: np.ndarray, chw) -> tuple[np.ndarray, list[str]]:
    """Square RGB NCHW images -> N x C x H x W (center crop, gray for C != 3), and what was
    done, in words."""
    c, h, w = (int(v) for v in chw)
    side = x.shape[-1]
    done = []
    if (h, w) != (side, side):
        top, left = (side - h) // 2, (side - w) // 2
        x = x[:, :, top:top + h, left:left + w]
        done.append(f"center-cropped from {side}x{side} to {h}x{w} (H x W)")
    if c != 3:
        x = np.repeat(x.mean(axis=1, keepdims=True), c, axis=1)
        done.append(f"made gray (mean of R, G, B) for {c} channel{'s' if c > 1 else ''}")
    return np.ascontiguousarray(x, dtype=np.float32), done


def fitted_inputs(spec: str, chw, recorded_preprocessing=None, split: str = "test",
                  limit: int | None = None):
    """(x float32 N x C x H x W, labels or None, names, a note saying how they were made) for
    a model whose input is C x H x W (`chw`)."""
    spec = str(spec)
    if spec == RANDOM or spec.startswith(RANDOM + ":"):
        return _random(spec, chw, limit)
    side = max(int(chw[1]), int(chw[2]))
    pp, note = _preprocessing(spec, side, recorded_preprocessing)
    x, y, names = data_mod.load_dataset(spec, types.SimpleNamespace(resolution=side), pp,
                                        split=split, limit=limit)
    x, done = fit_images(x, chw)
    return x, y, names, "; ".join([note, *done])
