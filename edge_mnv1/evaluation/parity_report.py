"""parity's words and files: the summary text of one device's result, the report while the
run goes on (partial), and the final report (per device: report.json, summary.txt,
outputs.npz, scatter.png, error_hist.png; for a fleet one subdirectory per device and the
combined report above them)."""

from __future__ import annotations

from pathlib import Path

from edge_mnv1.evaluation import fleet, report


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


def _limit(v) -> str:
    return "reported, not judged" if v is None else f"<= {v:g}"


def _metric_lines(r: dict) -> list[str]:
    t = r["thresholds"]
    lines = [
        f"  top-1 agreement {r['top1_agreement']:.4f} (>= {t['min_top1']:g})   "
        f"max abs error {r['max_abs_error']:.3g} ({_limit(t['max_abs_error'])})   "
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
    return lines


def summary_text(r: dict) -> str:
    if "n" not in r:  # the device never connected
        return f"parity on {r.get('device')}: FAILED before any input: {r.get('error')}"
    status = "PASSED" if r["passed"] else "FAILED"
    lines = [f"parity on {r['device']} ({r['target']}): {status}"
             + (f" (PARTIAL: {r['completed']} of {r['requested']} inputs)" if r.get("partial")
                else ""),
             f"  {r['n']} inputs from {r['data']}; reference {r['reference_description']}"]
    if r.get("preprocessing"):  # how the inputs were made for the model's input shape
        lines.append(f"  inputs: {r['preprocessing']}")
    if r["n"]:
        lines += _metric_lines(r)
    for note in r.get("reference_notes", []):
        lines.append(f"  note: {note}")
    for f in r.get("failures", []):
        lines.append(f"  FAIL: {f}")
    for w in r.get("warnings", []):
        lines.append(f"  WARNING: {w}")
    return "\n".join(lines)


def _write_device(d: Path, r: dict, outputs, prep) -> None:
    """One device's report directory; plots and outputs.npz for the inputs it completed."""
    body = {k: v for k, v in r.items() if k != "text"}
    plots = []
    if outputs is not None and len(outputs):
        k = len(outputs)
        plots = report.parity_plots(d, outputs, prep.ref_out[prep.primary][:k], prep.primary,
                                    f"{r['device']} ({r['target']})")
        report.save_outputs(d, outputs, {n: v[:k] for n, v in prep.ref_out.items()},
                            prep.y, prep.names[:k])
    body["plots"] = [p.name for p in plots]
    report.write(d, body, r.get("text") or summary_text(r))


def write_reports(report_dir, outcomes: list[fleet.Outcome], prep, outputs: dict) -> None:
    """The final report; `outputs` holds each device's outputs by URL (`prep`: the run's
    parity.Prepared inputs and reference outputs)."""
    root = Path(report_dir)
    single = len(outcomes) == 1
    for i, o in enumerate(outcomes):
        d = root if single else root / report.device_dirname(i, o.result["device"])
        _write_device(d, o.result, outputs.get(o.result["device"]), prep)
    if not single:
        combined = fleet.combine(outcomes)
        combined["partial"] = any(o.result.get("partial", "n" not in o.result) for o in outcomes)
        report.write(root, combined, "\n\n".join(o.result.get("text", "") for o in outcomes)
                     + "\n\n" + fleet.summary_line(outcomes))
