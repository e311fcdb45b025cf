"""Report files: report.json (the --json object), summary.txt (the text), PNG plots.

matplotlib is imported only when a plot is drawn, with the Agg backend (no display).
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import numpy as np

from edge_mnv1.errors import UsageError


def _jsonable(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)


def _clean(o):
    """NaN and infinity are not JSON: they become null."""
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    return o


def _mkdir(d: Path) -> Path:
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--report {d}: cannot create the directory ({e})") from None
    return d


def write(report_dir, body: dict, text: str) -> Path:
    """report.json and summary.txt in `report_dir` (created)."""
    d = _mkdir(Path(report_dir))
    body = {k: v for k, v in body.items() if k != "text"}
    _replace(d / "report.json", json.dumps(_clean(body), indent=2, default=_jsonable) + "\n")
    _replace(d / "summary.txt", text.rstrip() + "\n")
    return d / "report.json"


def _replace(path: Path, text: str) -> None:
    """Whole or not at all: a run killed while writing leaves the previous file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def device_dirname(index: int, url: str) -> str:
    return f"{index:02d}-" + (re.sub(r"[^A-Za-z0-9._-]+", "_", url).strip("_")[:60] or "device")


def save_outputs(d, device_out, ref_outs: dict, labels, names) -> Path:
    d = _mkdir(Path(d))
    arrays = {"device": np.asarray(device_out)}
    arrays.update({f"reference_{k}": np.asarray(v) for k, v in ref_outs.items()})
    if labels is not None:
        arrays["labels"] = np.asarray(labels)[:len(device_out)]
    arrays["names"] = np.asarray(names, dtype=str)
    np.savez_compressed(d / "outputs.npz", **arrays)
    return d / "outputs.npz"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def parity_plots(d, dev, ref, ref_name: str, title: str) -> list[Path]:
    """scatter.png (device vs reference outputs) and error_hist.png (|device - reference|)."""
    plt = _pyplot()
    d = _mkdir(Path(d))
    dev = np.asarray(dev, np.float64).ravel()
    ref = np.asarray(ref, np.float64).ravel()
    err = np.abs(dev - ref)
    paths = []

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4.6), dpi=110)
    ax.scatter(ref, dev, s=6, alpha=0.5, edgecolors="none")
    lo, hi = float(min(ref.min(), dev.min())), float(max(ref.max(), dev.max()))
    pad = (hi - lo) * 0.05 or 1e-6
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "k--", lw=0.8, label="y = x")
    ax.set_xlabel(f"reference ({ref_name}) output")
    ax.set_ylabel("device output")
    ax.set_title(f"device vs reference ({len(dev)} output values)", fontsize=9)
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    ax2.scatter(ref, dev - ref, s=6, alpha=0.5, edgecolors="none", color="tab:red")
    ax2.axhline(0, color="k", lw=0.8)
    ax2.set_xlabel(f"reference ({ref_name}) output")
    ax2.set_ylabel("device - reference")
    ax2.set_title(f"error vs value: max |error| {err.max():.3g}, RMSE "
                  f"{np.sqrt((err ** 2).mean()):.3g}", fontsize=9, pad=14)
    ax2.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    ax2.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    paths.append(d / "scatter.png")
    fig.savefig(paths[-1])
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.5, 4), dpi=110)
    pos = err[err > 0]
    zeros = int((err == 0).sum())
    if len(pos):
        bins = np.logspace(np.log10(pos.min()), np.log10(pos.max()) + 1e-9, 40)
        ax.hist(pos, bins=bins, color="tab:blue")
        ax.set_xscale("log")
    ax.set_xlabel(f"|device - {ref_name}| per output value (log scale)")
    ax.set_ylabel("count")
    ax.set_title(f"{title}: absolute error, mean {err.mean():.3g}, max {err.max():.3g}"
                 + (f", {zeros} exactly 0 (not shown)" if zeros else ""), fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    paths.append(d / "error_hist.png")
    fig.savefig(paths[-1])
    plt.close(fig)
    return paths


def latency_plot(d, bars: list[tuple[str, float, float, float]], title: str,
                 unit: str = "ms", devices: int = 1, what: str = "latency per inference",
                 name: str = "latency.png") -> Path:
    """Bars (label, median, p10, p90) with p10-p90 whiskers; the first `devices` bars are
    devices (orange), the rest host baselines (blue). Log scale when they differ > 20x."""
    plt = _pyplot()
    d = _mkdir(Path(d))
    fig, ax = plt.subplots(figsize=(7.5, 0.6 * len(bars) + 1.9), dpi=110)
    labels = [b[0] for b in bars]
    med = np.array([b[1] for b in bars], float)
    p10 = np.minimum(np.array([b[2] for b in bars], float), med)
    p90 = np.maximum(np.array([b[3] for b in bars], float), med)
    y = np.arange(len(bars))[::-1]
    log_scale = len(med) > 1 and med.min() > 0 and med.max() / med.min() > 20
    ax.barh(y, med, xerr=[med - p10, p90 - med], capsize=3,
            color=["tab:orange" if i < devices else "tab:blue" for i in range(len(bars))])
    for yi, m, hi in zip(y, med, p90):
        ax.text(hi * (1.15 if log_scale else 1.0) + (0 if log_scale else 0.01 * p90.max()), yi,
                f"{m:.3g} {unit}", va="center", fontsize=8)
    ax.set_yticks(y, labels, fontsize=8)
    if log_scale:
        ax.set_xscale("log")
        ax.set_xlim(med.min() / 3, p90.max() * 8)
    else:
        ax.set_xlim(0, float(p90.max()) * 1.3 or 1)
    ax.set_xlabel(f"{what} ({unit}{', log scale' if log_scale else ''}): bar "
                  "median, whiskers p10-p90")
    ax.set_title(title, fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    path = d / name
    fig.savefig(path)
    plt.close(fig)
    return path


def profile_plot(d, rows: list[dict], value_key: str, unit: str, title: str) -> Path:
    """Horizontal bars, one per kernel call in call order, labelled with share and MACs."""
    plt = _pyplot()
    d = _mkdir(Path(d))
    fig, ax = plt.subplots(figsize=(9, 0.24 * len(rows) + 1.6), dpi=110)
    vals = np.array([r[value_key] for r in rows], float)
    y = np.arange(len(rows))[::-1]
    colors = ["tab:gray" if not r["macs"] else "tab:blue" for r in rows]
    ax.barh(y, vals, color=colors)
    ax.set_yticks(y, [f"{r['call']:>2} {r['kernel']}" for r in rows], fontsize=6.5)
    for yi, r, v in zip(y, rows, vals):
        ax.text(v, yi, f" {100 * r['share']:.1f}%  {r['macs'] / 1e3:.0f}k MAC", va="center",
                fontsize=6)
    ax.set_xlim(0, float(vals.max()) * 1.35 if len(vals) and vals.max() > 0 else 1)
    ax.set_xlabel(f"{unit} per inference")
    ax.set_title(title, fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    path = d / "profile.png"
    fig.savefig(path)
    plt.close(fig)
    return path
