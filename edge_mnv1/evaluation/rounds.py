"""bench --rounds: rounds of (devices, then this machine's engines), one after the other,
merged into one result per device. Runs are pooled, and each round's own ratio is kept: the
load of a shared machine drifts between rounds but hits both sides of one round alike."""

from __future__ import annotations

import statistics

from edge_mnv1.artifact.artifact import Manifest
from edge_mnv1.evaluation.baselines import host_stats
from edge_mnv1.evaluation.fleet import Outcome
from edge_mnv1.evaluation.measure import device_stats


def _median_roundtrip(per: list[dict]) -> float | None:
    rts = [p["roundtrip_ms"] for p in per if p.get("roundtrip_ms") is not None]
    return statistics.median(rts) if rts else None


def _versus_over_rounds(per: list[dict]) -> dict:
    ratios = [p["versus"]["ratio"] for p in per if p["versus"].get("ratio")]
    return dict(per[-1]["versus"], ratio=statistics.median(ratios) if ratios else None,
                ratio_rounds=ratios)


def _round_rows(per: list[dict], hosts: list[dict]) -> list[dict]:
    """Per round: the device's median, the engines' medians, and the ratio of that round."""
    rows = []
    for p, h in zip(per, hosts):
        row = {"device_median_ms": p.get("device_median_ms"),
               "onnxruntime_ms": (h.get("onnxruntime") or {}).get("median_ms"),
               "torch_ms": (h.get("pytorch") or {}).get("median_ms")}
        row["ratio_to_onnxruntime"] = row["device_median_ms"] / row["onnxruntime_ms"] \
            if row["device_median_ms"] and row["onnxruntime_ms"] else None
        rows.append(row)
    return rows


def merge_device(per: list[dict], hosts: list[dict], manifest: Manifest) -> dict:
    """One device's successful rounds as one result."""
    r = device_stats(dict(per[0]), [t for p in per for t in p["ticks"]], manifest)
    r["roundtrip_ms"] = _median_roundtrip(per)
    if per[0].get("versus"):
        r["versus"] = _versus_over_rounds(per)
    r["rounds"] = _round_rows(per, hosts)
    return r


def merge_devices(rounds: list[list[Outcome]], hosts: list[dict],
                  manifest: Manifest) -> list[Outcome]:
    """Per device, its rounds as one outcome; a round that failed stands for them all."""
    merged = []
    for i, first in enumerate(rounds[0]):
        per = [r[i] for r in rounds]
        failed = next((o for o in per if o.exception is not None), None)
        merged.append(failed or Outcome(first.url, merge_device([o.result for o in per], hosts,
                                                                manifest)))
    return merged


def merge_hosts(hosts: list[dict]) -> dict:
    """Each engine's times pooled over the rounds; an engine that failed in a round is its
    error."""
    merged = {}
    for engine in hosts[0]:
        parts = [h[engine] for h in hosts if engine in h]
        if all("times_ms" in p for p in parts):
            merged[engine] = host_stats([t for p in parts for t in p["times_ms"]],
                                        parts[0]["note"], parts[0]["version"])
        else:
            merged[engine] = next(p for p in parts if "times_ms" not in p)
    return merged


def ratio_from_rounds(r: dict) -> None:
    """With rounds, the ratio is the median of the rounds' own ratios: a round whose load
    spiked on one side moves it less than it moves the pooled medians."""
    for key, base in (("ratio_to_onnxruntime", "onnxruntime_ms"), ("ratio_to_torch", "torch_ms")):
        ratios = [x["device_median_ms"] / x[base] for x in r.get("rounds") or []
                  if x.get("device_median_ms") and x.get(base)]
        if ratios:
            r[key] = statistics.median(ratios)
