"""Parity's numbers: how close device outputs are to a reference's, what is judged against
which thresholds (per output dtype), and whether the reference outputs depend on the input
enough for parity on them to prove anything."""

from __future__ import annotations

import numpy as np

from edge_mnv1.errors import UsageError

# Per output dtype. fp32: the compiled kernels reorder sums, nothing more. int8 against a
# float reference (PyTorch, ONNX Runtime's fake-quantized QDQ): that is the quantization
# error, reported in output steps (LSB) and judged by top-1 and cosine only. int8 against
# the integer reference: the device must compute the same integers, so exactly.
THRESHOLDS = {
    "float32": {"max_abs_error": 1e-4, "min_top1": 1.0, "min_cosine": 0.9999},
    "int8": {"max_abs_error": None, "min_top1": 0.95, "min_cosine": 0.95},
    "uint8": {"max_abs_error": None, "min_top1": 0.95, "min_cosine": 0.95},
    "integer": {"max_abs_error": 0.0, "min_top1": 1.0, "min_cosine": 0.999999},
}
# Below this, outputs barely depend on the input (std across inputs / RMS of the outputs).
MIN_RELATIVE_VARIATION = 1e-2
# With at least this many inputs, one and the same top-1 class for all of them is suspect.
SAME_TOP1_MIN_INPUTS = 20


def default_thresholds(dtype: str, reference: str | None = None, **overrides) -> dict:
    if reference == "integer":
        dtype = "integer"
    if dtype not in THRESHOLDS:
        raise UsageError(f"output dtype {dtype!r}: no parity thresholds for it (known: "
                         f"{', '.join(THRESHOLDS)})")
    t = dict(THRESHOLDS[dtype])
    t.update({k: float(v) for k, v in overrides.items() if v is not None})
    return t


def compare(dev: np.ndarray, ref: np.ndarray) -> dict:
    """Metrics of outputs `dev` against `ref`, both (N, K). Cosine is the lowest per input."""
    dev = np.asarray(dev, np.float64).reshape(len(dev), -1)
    ref = np.asarray(ref, np.float64).reshape(len(ref), -1)
    n = len(dev)
    if n == 0:
        return {"n": 0, "top1_agreement": None, "max_abs_error": None, "mean_abs_error": None,
                "max_rel_error": None, "cosine": None, "cosine_mean": None, "rmse": None,
                "disagreements": []}
    err = np.abs(dev - ref)
    dn, rn = np.linalg.norm(dev, axis=1), np.linalg.norm(ref, axis=1)
    cos = np.where((dn > 0) & (rn > 0), (dev * ref).sum(1) / np.maximum(dn * rn, 1e-300),
                   np.where((dn == 0) & (rn == 0), 1.0, 0.0)).clip(-1.0, 1.0)
    dtop, rtop = dev.argmax(1), ref.argmax(1)
    ref_abs_max = float(np.abs(ref).max())
    disagree = np.flatnonzero(dtop != rtop)
    srt = np.sort(ref, axis=1)
    margins = srt[:, -1] - srt[:, -2] if ref.shape[1] > 1 else np.full(n, np.inf)
    return {
        "n": n,
        "top1_agreement": float((dtop == rtop).mean()),
        "max_abs_error": float(err.max()),
        "mean_abs_error": float(err.mean()),
        "max_rel_error": float(err.max() / ref_abs_max) if ref_abs_max > 0 else
        (0.0 if err.max() == 0 else float("inf")),
        "cosine": float(cos.min()),
        "cosine_mean": float(cos.mean()),
        "rmse": float(np.sqrt((err ** 2).mean())),
        # Where top-1 differs, and how close the reference's top two were there (a tie
        # within the error flips top-1 without anything being wrong).
        "disagreements": [{"index": int(i), "device_top1": int(dtop[i]),
                           "reference_top1": int(rtop[i]),
                           "reference_margin": float(margins[i])} for i in disagree[:20]],
    }


def accuracy(out: np.ndarray, labels: np.ndarray | None) -> float | None:
    if labels is None or len(out) == 0:
        return None
    return float((np.asarray(out).reshape(len(out), -1).argmax(1) == labels[:len(out)]).mean())


def output_variation(ref: np.ndarray, max_abs_error: float | None = None) -> tuple[dict, list]:
    """How much the reference outputs depend on the input, and warnings when too little.

    relative_std: mean over outputs of the std across inputs, over the RMS of all outputs.
    distinct_top1: how many different top-1 classes the inputs get."""
    ref = np.asarray(ref, np.float64).reshape(len(ref), -1)
    n = len(ref)
    rms = float(np.sqrt((ref ** 2).mean())) if n else 0.0
    std = ref.std(axis=0) if n else np.zeros(1)
    rel = float(std.mean() / rms) if rms > 0 else 0.0
    distinct = int(len(np.unique(ref.argmax(1)))) if n else 0
    info = {"relative_std": rel, "max_std": float(std.max()), "rms": rms,
            "distinct_top1": distinct, "n": n}
    warnings = []
    if n >= 2 and rel < MIN_RELATIVE_VARIATION:
        warnings.append(
            f"the reference outputs barely vary across the {n} inputs (std across inputs is "
            f"{rel:.2g} of their magnitude): parity on nearly constant outputs proves little. "
            "Is the model trained? Check with a trained model or other data.")
    elif n >= 2 and max_abs_error is not None and info["max_std"] <= 10 * max_abs_error:
        warnings.append(
            f"the reference outputs vary by at most {info['max_std']:.2g} across inputs, within "
            f"10x the error threshold {max_abs_error:g}: the threshold cannot tell input-"
            "dependent outputs from constant ones")
    if n >= SAME_TOP1_MIN_INPUTS and distinct == 1:
        warnings.append(
            f"all {n} inputs get the same top-1 class from the reference: top-1 agreement "
            "proves little here")
    return info, warnings


def judge(metrics: dict, thresholds: dict) -> list[str]:
    """The thresholds the metrics miss, as sentences (empty: passed)."""
    fails = []
    if not metrics.get("n"):
        return ["no input completed on the device"]
    if thresholds["max_abs_error"] is not None and \
            metrics["max_abs_error"] > thresholds["max_abs_error"]:
        fails.append(f"max abs error {metrics['max_abs_error']:.3g} > "
                     f"{thresholds['max_abs_error']:g}")
    if metrics["top1_agreement"] < thresholds["min_top1"]:
        fails.append(f"top-1 agreement {metrics['top1_agreement']:.4f} < "
                     f"{thresholds['min_top1']:g}")
    if metrics["cosine"] < thresholds["min_cosine"]:
        fails.append(f"cosine {metrics['cosine']:.6f} < {thresholds['min_cosine']:g}")
    return fails
