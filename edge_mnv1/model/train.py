"""Seeded, reproducible training of the reference model, and calibrated untrained models."""

from __future__ import annotations

import time
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from edge_mnv1.model import checkpoint, data
from edge_mnv1.errors import UsageError
from edge_mnv1.log import info
from edge_mnv1.model.network import MobileNetV1, ModelConfig

THREADS = 2  # the machines this runs on have two cores shared with other work
CALIBRATION_IMAGES = 64
DEFAULT_EPOCHS = 20
RECIPE = 1  # bump when training or calibration changes: cached models get rebuilt


@contextmanager
def deterministic(seed: int):
    """Seeded and deterministic inside; the process-wide flag is restored on the way out."""
    before = torch.are_deterministic_algorithms_enabled()
    torch.manual_seed(seed)
    torch.set_num_threads(THREADS)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


def build_model(config: ModelConfig, seed: int) -> MobileNetV1:
    """The seeded initial model (same seed, same weights)."""
    torch.manual_seed(seed)
    return MobileNetV1(config)


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, x: np.ndarray, batch_size: int = 32) -> nn.Module:
    """Set every BN's running mean/var to the statistics of real inputs `x`.

    A freshly initialised network in eval mode divides by the default running var of 1 while
    its conv outputs are far smaller, so activations shrink layer by layer (to ~1e-10 at the
    classifier) and any two runtimes agree trivially. Forward passes in train mode with
    momentum None make the running stats the plain average of the batch statistics, which is
    what each layer sees, so in eval mode every layer again has unit-ish scale."""
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    for i in range(0, len(x), batch_size):
        model(torch.from_numpy(x[i:i + batch_size]))
    for m, momentum in zip(bns, saved):
        m.momentum = momentum
    return model.eval()


@torch.no_grad()
def scale_preserving_classifier(model: MobileNetV1) -> MobileNetV1:
    """Classifier weights N(0, 1/fan_in), bias 0: logits keep the scale of the pooled
    features (torch's default uniform init shrinks them ~1.7x). A data-dependent rescale
    that forces a spread of 1 across inputs is avoided on purpose: untrained pooled
    features differ little between inputs, so it would need huge weights whose products
    cancel, and fp32 rounding would then dominate any parity check."""
    fc = model.fc
    nn.init.normal_(fc.weight, std=fc.in_features ** -0.5)
    nn.init.zeros_(fc.bias)
    return model


@torch.no_grad()
def predict(model: nn.Module, x: np.ndarray, batch_size: int = 128) -> np.ndarray:
    model.eval()
    return np.concatenate([model(torch.from_numpy(x[i:i + batch_size])).numpy()
                           for i in range(0, len(x), batch_size)])


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    return float((predict(model, x).argmax(1) == y).mean())


def train(config: ModelConfig, data_spec: str, out, epochs: int = DEFAULT_EPOCHS,
          seed: int = 0, batch_size: int = 32, lr: float = 1e-2, progress: bool = True) -> dict:
    """Train on `data_spec` (or, with epochs 0, only calibrate BN on it) and save `out`."""
    if epochs < 0:
        raise UsageError(f"--epochs {epochs}: must be 0 (untrained, calibrated) or more")
    if batch_size < 2:
        raise UsageError(f"--batch-size {batch_size}: BN needs at least 2 inputs per batch")
    if not lr > 0:
        raise UsageError(f"--lr {lr}: must be positive")
    pp = data.default_preprocessing(data_spec, config.resolution)
    start = time.perf_counter()
    result = dict(config=config.to_dict(), preprocessing=pp.to_dict(), data=str(data_spec),
                  seed=seed, epochs=epochs, recipe=RECIPE)
    with deterministic(seed):
        model = build_model(config, seed)
        if epochs == 0:
            x, _, _ = data.load_dataset(data_spec, config, pp, split="train",
                                        limit=CALIBRATION_IMAGES)
            calibrate_batchnorm(scale_preserving_classifier(model), x)
            result.update(calibration_inputs=len(x), test_accuracy=None)
        else:
            result.update(_fit(model, config, data_spec, pp, epochs, seed, batch_size, lr,
                               progress))
    result["train_seconds"] = round(time.perf_counter() - start, 2)
    checkpoint.save(out, checkpoint.state_arrays(model), config, pp, info=result)
    result["checkpoint"] = str(out)
    return result


def random_shift(x: torch.Tensor, gen: torch.Generator, fraction: float = 0.0625):
    """Translate each image by up to `fraction` of its side, edges replicated: without it the
    model memorises the 1,347 digits (train 100%, test ~95%)."""
    n, _, h, w = x.shape
    p = max(1, int(h * fraction))
    padded = nn.functional.pad(x, (p, p, p, p), mode="replicate")
    dy, dx = torch.randint(0, 2 * p + 1, (2, n), generator=gen).tolist()
    return torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])


def _fit(model, config, data_spec, pp, epochs, seed, batch_size, lr, progress) -> dict:
    from tqdm import tqdm

    xtr, ytr, _ = data.load_dataset(data_spec, config, pp, split="train", seed=0)
    xte, yte, _ = data.load_dataset(data_spec, config, pp, split="test", seed=0)
    if ytr is None:
        raise UsageError(f"--data {data_spec}: unlabeled inputs cannot train a model; use "
                         "digits or a folder with one subfolder per class, or --epochs 0")
    if int(ytr.max()) >= config.classes:
        raise UsageError(f"--classes {config.classes}: the data has labels up to "
                         f"{int(ytr.max())}; use --classes {int(ytr.max()) + 1} or more")
    xtr_t, ytr_t = torch.from_numpy(xtr), torch.from_numpy(ytr)
    steps = (len(xtr) + batch_size - 1) // batch_size
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps)
    gen = torch.Generator().manual_seed(seed)
    loss_fn = nn.CrossEntropyLoss()
    bar = tqdm(total=epochs * steps, desc="train", unit="step", disable=not progress,
               dynamic_ncols=True)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(xtr), generator=gen)
        total = 0.0
        for i in range(steps):
            idx = order[i * batch_size:(i + 1) * batch_size]
            if len(idx) < 2:  # BN cannot normalise a batch of one
                continue
            loss = loss_fn(model(random_shift(xtr_t[idx], gen)), ytr_t[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            bar.update(1)
        bar.set_postfix(epoch=epoch + 1, loss=f"{total / len(xtr):.3f}")
    bar.close()
    model.eval()
    test_acc = accuracy(model, xte, yte) if yte is not None and len(yte) else None
    train_acc = accuracy(model, xtr, ytr)
    info(f"train: accuracy {train_acc:.4f} on {len(ytr)} training inputs, "
         f"{test_acc if test_acc is None else round(test_acc, 4)} on {len(xte)} test inputs")
    return dict(train_inputs=len(xtr), test_inputs=len(xte), train_accuracy=train_acc,
                test_accuracy=test_acc, final_loss=round(total / len(xtr), 5),
                batch_size=batch_size, lr=lr)
