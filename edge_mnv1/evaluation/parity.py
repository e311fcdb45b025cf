"""Parity: every input through the device and through the host references, compared.

One connection per device for the whole run. The references (PyTorch on the checkpoint when
it is known, ONNX Runtime on the artifact's model.onnx always) are computed once and shared
by every device of a fleet. The device is judged against the first reference with
thresholds that depend on the output dtype; the metrics against every reference, and
between the references, are in the result too.

Parity on outputs that hardly depend on the input proves nothing (an untrained network, a
collapsed one): `output_variation` measures that and the result warns.
"""

from __future__ import annotations

import threading
import time
import types
from pathlib import Path

import numpy as np

from edge_mnv1.model import data as data_mod
from edge_mnv1.evaluation import fleet, report
from edge_mnv1 import log
from edge_mnv1.artifact.artifact import load_manifest
from edge_mnv1.device.connect import open_device
from edge_mnv1.errors import DeviceError, UsageError

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
REFERENCES = ("pytorch", "onnxruntime", "integer")
# Below this, outputs barely depend on the input (std across inputs / RMS of the outputs).
MIN_RELATIVE_VARIATION = 1e-2
# With at least this many inputs, one and the same top-1 class for all of them is suspect.
SAME_TOP1_MIN_INPUTS = 20


class PartialRun(DeviceError):
    """The device failed midway; `result` holds what was measured on the inputs before."""

    def __init__(self, message: str, result: dict, outputs: np.ndarray):
        super().__init__(message)
        self.result = result
        self.outputs = outputs


def default_thresholds(dtype: str, reference: str | None = None, **overrides) -> dict:
    if reference == "integer":
        dtype = "integer"
    if dtype not in THRESHOLDS:
        raise UsageError(f"output dtype {dtype!r}: no parity thresholds for it (known: "
                         f"{', '.join(THRESHOLDS)})")
    t = dict(THRESHOLDS[dtype])
    t.update({k: float(v) for k, v in overrides.items() if v is not None})
    return t


# -- inputs ------------------------------------------------------------------------------
def load_inputs(artifact, manifest: dict, spec: str, limit: int | None = None):
    """(x float32 NCHW, labels or None, names, preprocessing note) at the artifact's input
    size, with the preprocessing recorded with the model (else the data set's default)."""
    from edge_mnv1.evaluation.reference import model_info

    shape = manifest["input"]["shape"]
    res = int(shape[-1])
    meta = model_info(artifact, manifest)
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
                         f"artifact takes {shape[1:]}")
    classes = int(np.prod(manifest["output"]["shape"][1:]))
    if y is not None and int(y.max()) >= classes:
        log.info(f"parity: {spec!r} has labels up to {int(y.max())} and the model "
                 f"{classes} outputs: accuracy is not reported")
        y = None
    return x, y, names, note


def device_input(x: np.ndarray, manifest: dict) -> np.ndarray:
    """One preprocessed input as the device takes it (quantized if the input is)."""
    spec = manifest["input"]
    dtype = np.dtype(spec["dtype"])
    x = x.reshape(spec["shape"])
    if dtype.kind == "f":
        return x.astype(dtype)
    q = spec.get("quantization") or {}
    if "scale" not in q:
        raise UsageError(f"the artifact's input is {dtype} without quantization parameters "
                         "in its manifest; recompile it")
    if dtype == np.uint8:  # the integer path's own rounding, shared with its reference
        from edge_mnv1.quant.quantize import quantize_input

        return quantize_input(x, q["scale"], q.get("zero_point", 0))
    info = np.iinfo(dtype)
    return np.clip(np.round(x / q["scale"]) + q.get("zero_point", 0), info.min, info.max) \
        .astype(dtype)


def reference_in_output_units(ref: np.ndarray, manifest: dict) -> np.ndarray:
    """Float reference outputs in the device's output units (quantized steps for int8)."""
    out = manifest["output"]
    dtype = np.dtype(out["dtype"])
    q = out.get("quantization") or {}
    if dtype.kind in "iu" and ref.dtype.kind == "f" and "scale" in q:
        info = np.iinfo(dtype)
        return np.clip(np.round(ref / q["scale"]) + q.get("zero_point", 0), info.min, info.max)
    return ref


# -- metrics -----------------------------------------------------------------------------
def compare(dev: np.ndarray, ref: np.ndarray, labels: np.ndarray | None = None) -> dict:
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


# -- running -----------------------------------------------------------------------------
class Prepared:
    """Inputs and reference outputs, computed once for every device of a run."""

    def __init__(self, artifact, manifest, data_spec, limit=None, checkpoint=None,
                 thresholds=None, threads: int = 2, reference: str | None = None):
        from edge_mnv1.evaluation.reference import references_for

        self.artifact, self.manifest, self.data = Path(artifact), manifest, str(data_spec)
        self.x, self.y, self.names, self.pp_note = load_inputs(artifact, manifest, data_spec,
                                                               limit)
        refs, self.notes = references_for(artifact, manifest, checkpoint, threads, reference)
        self.dtype = manifest["output"]["dtype"]
        self.thresholds = thresholds or default_thresholds(self.dtype)
        t0 = time.perf_counter()
        self.ref_out = {}
        for r in refs:
            self.ref_out[r.name] = reference_in_output_units(r.run(self.x), manifest)
        self.ref_seconds = round(time.perf_counter() - t0, 2)
        self.ref_names = [r.name for r in refs]
        self.ref_descriptions = {r.name: r.description for r in refs}
        self.primary = refs[0].name
        self.variation, self.warnings = output_variation(self.ref_out[self.primary],
                                                         self.thresholds["max_abs_error"])
        self.between = None
        if len(refs) > 1:  # the export itself: ONNX Runtime vs PyTorch
            between = compare(self.ref_out[refs[1].name], self.ref_out[refs[0].name])
            self.between = {"compared": f"{refs[1].name} vs {refs[0].name}",
                            **{k: v for k, v in between.items() if k != "disagreements"}}
        for w in self.warnings:
            log.info(f"parity: warning: {w}")
        self.on_progress = None  # (url, inputs done): the running report's update


def write_running_report(report_dir, artifact, urls: list[str], data: str,
                         requested: int | None, completed: dict) -> None:
    """The report while the run has not finished: partial, with the inputs done so far per
    device. A run killed midway leaves this, never a stale or half-written report."""
    done = ", ".join(f"{u}: {k}" for u, k in completed.items())
    body = {"partial": True, "finished": False, "passed": False, "artifact": str(artifact),
            "devices": urls, "data": data, "requested": requested,
            # as in the final report: a count for one device, a count per device for several
            "completed": next(iter(completed.values())) if len(completed) == 1 else dict(completed)}
    report.write(report_dir, body,
                 f"parity of {artifact} on {', '.join(urls)}: PARTIAL: the run has not finished "
                 f"(killed or still running); inputs done: {done or 'none yet'} of "
                 f"{requested if requested is not None else '?'}; rerun to complete")


def run_inputs(dev, prep: Prepared, progress: str = "") -> tuple[np.ndarray, Exception | None]:
    """Device outputs for prep.x in order; stops at the first device error and returns it."""
    outs = []
    n = len(prep.x)
    step = max(1, n // 10)
    t0 = last = time.perf_counter()
    for i in range(n):
        try:
            y = dev.client.infer(device_input(prep.x[i], prep.manifest))
        except DeviceError as e:
            return np.asarray(outs).reshape(len(outs), -1), e
        outs.append(np.asarray(y).reshape(-1))
        if prep.on_progress is not None and (i + 1) % step == 0:
            prep.on_progress(dev.url, i + 1)
        now = time.perf_counter()
        if (i + 1) % step == 0 and now - last > 3:  # progress on slow devices only
            last = now
            log.info(f"parity{progress}: {i + 1}/{n} inputs ({now - t0:.1f} s)")
    return np.asarray(outs).reshape(n, -1), None


def check_device(dev, prep: Prepared) -> tuple[dict, np.ndarray]:
    """Parity of one connected device: (result, device outputs). Raises PartialRun (with the
    result of the inputs done) when the device fails midway."""
    t0 = time.perf_counter()
    hello = dict(dev.hello or {})
    dev_out, err = run_inputs(dev, prep, f" {dev.url}")
    k = len(dev_out)
    warnings = list(prep.warnings)
    if err is None:  # a device that reset mid-run is reported, not trusted
        try:
            dev.client.check_not_reset()  # hello again: its request counter must have grown
        except DeviceError as e:
            err = e
    per_ref = {}
    for name in prep.ref_names:
        m = compare(dev_out, prep.ref_out[name][:k])
        m["accuracy"] = accuracy(prep.ref_out[name][:k], prep.y)
        per_ref[name] = m
    main = per_ref[prep.primary]
    failures = judge(main, prep.thresholds)
    if err is not None:
        failures.append(f"device error after {k} of {len(prep.x)} inputs: {err}")
    result = {
        "passed": not failures,
        "failures": failures,
        "device": dev.url,
        "artifact": str(prep.artifact),
        "target": prep.manifest["target"],
        "data": prep.data,
        "n": k,
        "requested": len(prep.x),
        "partial": err is not None,
        "completed": k,
        "reference": prep.primary,
        "reference_description": prep.ref_descriptions[prep.primary],
        "references": prep.ref_names,
        "reference_notes": prep.notes,
        "output_dtype": prep.dtype,
        "thresholds": prep.thresholds,
        **{key: main[key] for key in ("top1_agreement", "max_abs_error", "mean_abs_error",
                                      "max_rel_error", "cosine", "cosine_mean", "rmse",
                                      "disagreements")},
        "accuracy_reference": main["accuracy"],
        "accuracy_device": accuracy(dev_out, prep.y),
        "labels": prep.y is not None,
        "vs_references": {n: {k2: v for k2, v in m.items() if k2 != "disagreements"}
                          for n, m in per_ref.items()},
        "references_agreement": prep.between,
        "output_variation": prep.variation,
        "warnings": warnings,
        "preprocessing": prep.pp_note,
        "device_info": {k2: hello.get(k2) for k2 in ("target", "model", "tick_unit",
                                                     "boot_count") if k2 in hello},
        "seconds": round(time.perf_counter() - t0, 2),
        "reference_seconds": prep.ref_seconds,
    }
    if err is not None:
        result["error"] = str(err)
    result["text"] = summary_text(result)
    if err is not None:
        raise PartialRun(f"{dev.url}: {err} (after {k} of {len(prep.x)} inputs; the results "
                         "so far are kept, rerun to complete)", result, dev_out)
    return result, dev_out


def _device_task(url: str, prep: Prepared, outputs: dict, lock: threading.Lock) -> dict:
    with open_device(url, prep.artifact, prep.manifest) as dev:
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
    manifest = load_manifest(artifact)
    thresholds = default_thresholds(manifest["output"]["dtype"], reference,
                                    max_abs_error=max_abs_error, min_top1=min_top1,
                                    min_cosine=min_cosine)
    completed = {url: 0 for url in urls}
    if report_dir:  # first of all: an old report in the directory no longer stands
        write_running_report(report_dir, artifact, urls, data, limit, completed)
    prep = Prepared(artifact, manifest, data, limit, checkpoint, thresholds, reference=reference)
    outputs: dict = {}
    lock = threading.Lock()
    if report_dir:
        def on_progress(url: str, k: int) -> None:
            with lock:
                completed[url] = k
                write_running_report(report_dir, artifact, urls, data, len(prep.x), completed)
        prep.on_progress = on_progress
    results = fleet.run_fleet(urls, lambda url: _device_task(url, prep, outputs, lock))
    for r in results:
        if "text" not in r:
            r["text"] = summary_text(r)
    if report_dir:
        write_reports(report_dir, results, prep, outputs)
    if len(results) == 1:
        if report_dir and "error" in results[0]:
            log.info(f"parity: report (partial: {results[0].get('partial', False)}, "
                     f"{results[0].get('completed', 0)} inputs) written to {report_dir}")
        return fleet.pop_single(results)
    combined = fleet.combine(results)
    combined["text"] = "\n\n".join(r["text"] for r in results) + "\n\n" + \
        fleet.summary_line(results)
    return combined


def _limit(v) -> str:
    return "reported, not judged" if v is None else f"<= {v:g}"


def summary_text(r: dict) -> str:
    if "n" not in r:  # the device never connected
        return f"parity on {r.get('device')}: FAILED before any input: {r.get('error')}"
    status = "PASSED" if r["passed"] else "FAILED"
    lines = [f"parity on {r['device']} ({r['target']}): {status}"
             + (f" (PARTIAL: {r['completed']} of {r['requested']} inputs)" if r.get("partial")
                else ""),
             f"  {r['n']} inputs from {r['data']}; reference {r['reference_description']}"]
    if r["n"]:
        t = r["thresholds"]
        lines += [
            f"  top-1 agreement {r['top1_agreement']:.4f} (>= {t['min_top1']:g})   "
            f"max abs error {r['max_abs_error']:.3g} "
            f"({_limit(t['max_abs_error'])})   "
            f"cosine {r['cosine']:.7f} (>= {t['min_cosine']:g})",
            f"  mean abs error {r['mean_abs_error']:.3g}   RMSE {r['rmse']:.3g}   "
            f"max rel error {r['max_rel_error']:.3g}"]
        if r.get("accuracy_device") is not None:
            accs = "   ".join(f"{name} {m['accuracy']:.4f}" for name, m in
                              r["vs_references"].items() if m.get("accuracy") is not None)
            lines.append(f"  accuracy: device {r['accuracy_device']:.4f}   {accs}")
        for name, m in r["vs_references"].items():
            if name != r["reference"] and m["n"]:
                lines.append(f"  vs {name}: top-1 {m['top1_agreement']:.4f}, max abs error "
                             f"{m['max_abs_error']:.3g}, cosine {m['cosine']:.7f}")
        if r.get("references_agreement"):
            b = r["references_agreement"]
            lines.append(f"  references ({b['compared']}): top-1 {b['top1_agreement']:.4f}, "
                         f"max abs error {b['max_abs_error']:.3g}")
    for note in r.get("reference_notes", []):
        lines.append(f"  note: {note}")
    for f in r.get("failures", []):
        lines.append(f"  FAIL: {f}")
    for w in r.get("warnings", []):
        lines.append(f"  WARNING: {w}")
    return "\n".join(lines)


def write_reports(report_dir, results: list[dict], prep: Prepared, outputs: dict) -> None:
    root = Path(report_dir)
    single = len(results) == 1
    for i, r in enumerate(results):
        d = root if single else root / report.device_dirname(i, r["device"])
        body = {k: v for k, v in r.items() if k not in ("text", "_exception")}
        out = outputs.get(r["device"])
        plots = []
        if out is not None and len(out):
            ref = prep.ref_out[prep.primary][:len(out)]
            plots = report.parity_plots(d, out, ref, prep.primary,
                                        f"{r['device']} ({r['target']})")
            report.save_outputs(d, out, {n: v[:len(out)] for n, v in prep.ref_out.items()},
                                prep.y, prep.names[:len(out)])
        body["plots"] = [p.name for p in plots]
        report.write(d, body, r.get("text") or summary_text(r))
    if not single:
        combined = fleet.combine([{k: v for k, v in r.items() if k not in ("text", "_exception")}
                                  for r in results])
        combined["partial"] = any(r.get("partial", "n" not in r) for r in results)
        report.write(root, combined, "\n\n".join(r.get("text", "") for r in results)
                     + "\n\n" + fleet.summary_line(results))
