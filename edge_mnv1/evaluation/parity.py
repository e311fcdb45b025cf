"""Parity: every input through the device and through the host references, compared.

One connection per device for the whole run. The references (PyTorch on the checkpoint when
it is known, ONNX Runtime on the artifact's model.onnx always; evaluation/references.py) are
computed once and shared by every device of a fleet. The device is judged against the first
reference with thresholds that depend on the output dtype; the metrics against every
reference, and between the references, are in the result too (evaluation/metrics.py).

Parity on outputs that hardly depend on the input proves nothing (an untrained network, a
collapsed one): `output_variation` measures that and the result warns.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from edge_mnv1 import log
from edge_mnv1.artifact.artifact import Artifact
from edge_mnv1.device.connect import open_device
from edge_mnv1.errors import DeviceError
from edge_mnv1.evaluation import fleet
from edge_mnv1.evaluation.inputs import device_input, in_output_units, load_inputs
from edge_mnv1.evaluation.metrics import (accuracy, compare, default_thresholds, judge,
                                          output_variation)
from edge_mnv1.evaluation.parity_report import (summary_text, write_reports,
                                                write_running_report)
from edge_mnv1.evaluation.references import model_info, references_for

# The headline metrics of the judged reference, at the top of a device's result.
HEADLINE = ("top1_agreement", "max_abs_error", "mean_abs_error", "max_rel_error", "cosine",
            "cosine_mean", "rmse", "disagreements")


class PartialRun(DeviceError):
    """The device failed midway; `result` holds what was measured on the inputs before."""

    def __init__(self, message: str, result: dict, outputs: np.ndarray):
        super().__init__(message)
        self.result = result
        self.outputs = outputs


@dataclass
class Prepared:
    """Inputs and reference outputs, computed once for every device of a run."""

    art: Artifact
    data: str
    x: np.ndarray
    y: np.ndarray | None
    names: list
    pp_note: str
    thresholds: dict
    ref_out: dict              # reference name -> outputs in the device's output units
    ref_descriptions: dict     # reference name -> what it is, in words
    primary: str               # the reference the device is judged by
    notes: list[str]
    ref_seconds: float
    variation: dict
    warnings: list[str]
    between: dict | None       # the references against each other (the export itself)
    on_progress: Callable[[str, int], None] | None = None  # (url, inputs done)

    @property
    def ref_names(self) -> list[str]:
        return list(self.ref_out)


def prepare(art: Artifact, data_spec: str, limit: int | None, checkpoint, thresholds: dict,
            threads: int = 2, reference: str | None = None) -> Prepared:
    x, y, names, pp_note = load_inputs(art, model_info(art), data_spec, limit)
    refs, notes = references_for(art, checkpoint, threads, reference)
    t0 = time.perf_counter()
    ref_out = {r.name: in_output_units(r.run(x), art.manifest.output) for r in refs}
    ref_seconds = round(time.perf_counter() - t0, 2)
    primary = refs[0].name
    variation, warnings = output_variation(ref_out[primary], thresholds["max_abs_error"])
    between = None
    if len(refs) > 1:  # the export itself: ONNX Runtime vs PyTorch
        m = compare(ref_out[refs[1].name], ref_out[primary])
        between = {"compared": f"{refs[1].name} vs {primary}",
                   **{k: v for k, v in m.items() if k != "disagreements"}}
    for w in warnings:
        log.info(f"parity: warning: {w}")
    return Prepared(art, str(data_spec), x, y, names, pp_note, thresholds, ref_out,
                    {r.name: r.description for r in refs}, primary, notes, ref_seconds,
                    variation, warnings, between)


def run_inputs(dev, prep: Prepared, progress: str = "") -> tuple[np.ndarray, Exception | None]:
    """Device outputs for prep.x in order, one row per input (a batch-N device takes N
    inputs per request); stops at the first device error and returns it."""
    spec = prep.art.manifest.input
    batch = max(1, int(spec.shape[0]))
    outs = []
    n = len(prep.x)
    step = max(batch, n // 10 // batch * batch)
    t0 = last = time.perf_counter()
    for i in range(0, n, batch):
        try:
            y = dev.client.infer(device_input(prep.x[i:i + batch], spec))
        except DeviceError as e:  # (an empty array has no -1 to infer: the row size)
            per_input = int(np.prod(prep.art.manifest.output.shape)) // batch
            return np.asarray(outs).reshape(len(outs), per_input), e
        outs.extend(np.asarray(y).reshape(batch, -1))
        done = i + batch
        if prep.on_progress is not None and done % step == 0:
            prep.on_progress(dev.url, done)
        now = time.perf_counter()
        if done % step == 0 and now - last > 3:  # progress on slow devices only
            last = now
            log.info(f"parity{progress}: {done}/{n} inputs ({now - t0:.1f} s)")
    return np.asarray(outs).reshape(n, -1), None


def _device_outputs(dev, prep: Prepared) -> tuple[np.ndarray, Exception | None]:
    """The device's outputs, and the error that stopped it (a device that reset mid-run is
    reported, not trusted)."""
    dev_out, err = run_inputs(dev, prep, f" {dev.url}")
    if err is None:
        try:
            dev.client.check_not_reset()  # hello again: its request counter must have grown
        except DeviceError as e:
            err = e
    return dev_out, err


def _against_references(dev_out: np.ndarray, prep: Prepared) -> dict:
    """reference name -> metrics of the device's outputs against it (with its accuracy)."""
    k = len(dev_out)
    per_ref = {}
    for name, ref in prep.ref_out.items():
        m = compare(dev_out, ref[:k])
        m["accuracy"] = accuracy(ref[:k], prep.y)
        per_ref[name] = m
    return per_ref


def _result(dev, prep: Prepared, dev_out: np.ndarray, err, per_ref: dict, seconds: float) -> dict:
    k = len(dev_out)
    main = per_ref[prep.primary]
    failures = judge(main, prep.thresholds)
    if err is not None:
        failures.append(f"device error after {k} of {len(prep.x)} inputs: {err}")
    hello = dict(dev.hello or {})
    result = {
        "passed": not failures, "failures": failures, "device": dev.url,
        "artifact": str(prep.art.path), "target": prep.art.manifest.target_name,
        "data": prep.data, "n": k, "requested": len(prep.x), "partial": err is not None,
        "completed": k, "reference": prep.primary,
        "reference_description": prep.ref_descriptions[prep.primary],
        "references": prep.ref_names, "reference_notes": prep.notes,
        "output_dtype": prep.art.manifest.output.dtype, "thresholds": prep.thresholds,
        **{key: main[key] for key in HEADLINE},
        "accuracy_reference": main["accuracy"], "accuracy_device": accuracy(dev_out, prep.y),
        "labels": prep.y is not None,
        "vs_references": {n: {k2: v for k2, v in m.items() if k2 != "disagreements"}
                          for n, m in per_ref.items()},
        "references_agreement": prep.between, "output_variation": prep.variation,
        "warnings": list(prep.warnings), "preprocessing": prep.pp_note,
        "device_info": {k2: hello.get(k2) for k2 in ("target", "model", "tick_unit",
                                                     "boot_count") if k2 in hello},
        "seconds": seconds, "reference_seconds": prep.ref_seconds,
    }
    if err is not None:
        result["error"] = str(err)
    result["text"] = summary_text(result)
    return result


def check_device(dev, prep: Prepared) -> tuple[dict, np.ndarray]:
    """Parity of one connected device: (result, device outputs). Raises PartialRun (with the
    result of the inputs done) when the device fails midway."""
    t0 = time.perf_counter()
    dev_out, err = _device_outputs(dev, prep)
    result = _result(dev, prep, dev_out, err, _against_references(dev_out, prep),
                     round(time.perf_counter() - t0, 2))
    if err is not None:
        raise PartialRun(f"{dev.url}: {err} (after {len(dev_out)} of {len(prep.x)} inputs; "
                         "the results so far are kept, rerun to complete)", result, dev_out)
    return result, dev_out


def _device_task(url: str, prep: Prepared, outputs: dict, lock: threading.Lock) -> dict:
    with open_device(url, prep.art) as dev:
        try:
            result, out = check_device(dev, prep)
        except PartialRun as e:
            with lock:
                outputs[url] = e.outputs
            raise
    with lock:
        outputs[url] = out
    return result


def parity(artifact, urls: list[str], data: str, limit: int | None = None,
           report_dir=None, checkpoint=None, max_abs_error=None, min_top1=None,
           min_cosine=None, reference: str | None = None) -> dict:
    """Parity of the artifact on every device in `urls` (in parallel, one connection each).

    One device: its result (with "passed"). Several: {"devices": [...], "passed": all}.
    With one device a device failure raises after the report is written; with several it
    is that device's entry (passed False, error, partial results) and the others go on."""
    art = Artifact.load(artifact)
    thresholds = default_thresholds(art.manifest.output.dtype, reference,
                                    max_abs_error=max_abs_error, min_top1=min_top1,
                                    min_cosine=min_cosine)
    completed = {url: 0 for url in urls}
    if report_dir:  # first of all: an old report in the directory no longer stands
        write_running_report(report_dir, artifact, urls, data, limit, completed)
    prep = prepare(art, data, limit, checkpoint, thresholds, reference=reference)
    outputs: dict = {}
    lock = threading.Lock()
    if report_dir:
        def on_progress(url: str, k: int) -> None:
            with lock:
                completed[url] = k
                write_running_report(report_dir, artifact, urls, data, len(prep.x), completed)
        prep.on_progress = on_progress
    outcomes = fleet.run_fleet(urls, lambda url: _device_task(url, prep, outputs, lock))
    for o in outcomes:
        if "text" not in o.result:  # a device that failed: its text from its partial result
            o.result["text"] = summary_text(o.result)
    if report_dir:
        write_reports(report_dir, outcomes, prep, outputs)
        if len(outcomes) == 1 and "error" in outcomes[0].result:
            r = outcomes[0].result
            log.info(f"parity: report (partial: {r.get('partial', False)}, "
                     f"{r.get('completed', 0)} inputs) written to {report_dir}")
    return fleet.command_result(outcomes)
