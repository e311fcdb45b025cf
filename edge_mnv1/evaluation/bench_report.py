"""bench's words and files: the summary text of one device's result, and the report
directory (report.json, summary.txt, latency.png, instructions.png)."""

from __future__ import annotations

from pathlib import Path

from edge_mnv1.artifact.artifact import Manifest
from edge_mnv1.evaluation import fleet, report

HOST_ENGINES = (("onnxruntime", "ONNX Runtime"), ("pytorch", "PyTorch eager"))


def _fmt(v, unit="ms"):
    return "n/a" if v is None else f"{v:.3f} {unit}"


def _device_line(r: dict, macs: int) -> str:
    if r["device_median_ms"] is not None:
        gmacs = macs / (r["device_median_ms"] * 1e6) if r["device_median_ms"] else 0
        return (f"  device        median {r['device_median_ms']:.3f} ms  (p10 "
                f"{r['device_p10_ms']:.3f}, p90 {r['device_p90_ms']:.3f})  "
                f"{gmacs:.2f} GMAC/s; round trip through the link {_fmt(r['roundtrip_ms'])}")
    per_mac = r["device_median_ticks"] / macs if macs else float("nan")
    return (f"  device        median {r['device_median_ticks']:,.0f} {r['tick_unit']} "
            f"(p10 {r['device_p10_ticks']:,.0f}, p90 {r['device_p90_ticks']:,.0f}), "
            f"{per_mac:.2f} {r['tick_unit']} per multiply-add; not a time, so no "
            "ratio to the host's times")


def _count_lines(r: dict, prefix: str, label: str, how) -> list[str]:
    """One counted program's line: `{prefix}instructions_per_inference` and its per-MAC figure,
    `how(r)` saying how it was counted; or why it was not counted."""
    n = r.get(f"{prefix}instructions_per_inference")
    if n:
        per_mac = r.get(f"{prefix}instructions_per_mac")
        return [f"  {label:<13} {n:,} per inference"
                + (f", {per_mac:.3f} per multiply-add" if per_mac else "") + f" ({how(r)})"]
    if r.get(f"{prefix}instructions_error"):
        return [f"  {label:<13} not counted: {r[f'{prefix}instructions_error']}"]
    return []


def _instruction_lines(r: dict) -> list[str]:
    ours = _count_lines(r, "", "instructions", lambda r: (
        f"{r['instructions_note']}; a count, not a time: no caches, memory bandwidth, dual "
        "issue or NEON latency in it"))
    if not r.get("instructions_per_inference"):
        return ours
    return ours + _count_lines(r, "onnxruntime_", "onnxruntime", lambda r: (
        f"{r['onnxruntime_engine']}, same emulator and plugin, one thread; edge_mnv1 / "
        f"ONNX Runtime = {r['instructions_vs_onnxruntime']:.3f}"))


def _host_lines(r: dict) -> list[str]:
    lines = []
    host = r.get("host") or {}
    for name, label in HOST_ENGINES:
        h = host.get(name)
        if not h:
            continue
        if "error" in h:
            lines.append(f"  {label:<13} not measured: {h['error']}")
            continue
        ratio = r.get("ratio_to_onnxruntime" if name == "onnxruntime" else "ratio_to_torch")
        lines.append(f"  {label:<13} median {h['median_ms']:.3f} ms  (p10 {h['p10_ms']:.3f}, "
                     f"p90 {h['p90_ms']:.3f}) on this machine"
                     + (f"; device / {label} = {ratio:.2f}x" if ratio else ""))
    return lines


def _rounds_and_versus_lines(r: dict) -> list[str]:
    lines = []
    ratios = [x["ratio_to_onnxruntime"] for x in r.get("rounds") or []
              if x["ratio_to_onnxruntime"]]
    if ratios:
        lines.append(f"  rounds        {len(r['rounds'])} (device, then ONNX Runtime and "
                     "PyTorch, repeated); device / ONNX Runtime per round: "
                     + ", ".join(f"{x:.2f}" for x in ratios)
                     + "; the ratios above are the rounds' medians")
    v = r.get("versus")
    if v:
        fig = _fmt(v["device_median_ms"]) if v["device_median_ms"] is not None else \
            f"{v['device_median_ticks']:,.0f} {v['tick_unit']}"
        lines.append(f"  versus        {v['model']} ({v['artifact']}) on the same device: median "
                     f"{fig}" + (f"; this / that = {v['ratio']:.3f}x" if v["ratio"] else ""))
        if v.get("instructions_per_inference"):
            lines.append(f"  versus        {v['instructions_per_inference']:,} instructions per "
                         f"inference, {v['instructions_per_mac']:.3f} per multiply-add; this / "
                         f"that = {v['instructions_ratio']:.3f} (counted the same way)")
    return lines


def summary_text(r: dict, manifest: Manifest) -> str:
    if "device_median_ticks" not in r:
        return f"bench on {r['device']}: FAILED: {r.get('error')}"
    macs = manifest.total_macs
    lines = [f"bench on {r['device']} ({r['target']}): {r['runs']} runs after {r['warmup']} "
             f"warm-up, {macs / 1e6:.2f}M multiply-adds per inference", _device_line(r, macs)]
    lines += _instruction_lines(r) + _host_lines(r) + _rounds_and_versus_lines(r)
    if r.get("emulated"):
        lines.append(f"  NOTE: {r['emulated_note']}.")
    for w in (r.get("machine") or {}).get("warnings", []):
        lines.append(f"  WARNING: {w}")
    host = r.get("host") or {}
    for name, _ in HOST_ENGINES:
        if host.get(name, {}).get("note"):
            lines.append(f"  {name}: {host[name]['note']}")
    return "\n".join(lines)


def _latency_bars(results: list[dict]) -> tuple[list[tuple], int, str]:
    """(bars, how many of them are devices, a note on the devices whose ticks are no time)."""
    bars, unit_note = [], ""
    for r in results:
        if r.get("device_median_ms") is not None:
            label = f"{r['device']} ({r['target']}{', emulated' if r.get('emulated') else ''})"
            bars.append((label, r["device_median_ms"], r["device_p10_ms"], r["device_p90_ms"]))
        elif "device_median_ticks" in r:
            unit_note += f"; {r['device']}: {r['device_median_ticks']:,.0f} {r['tick_unit']}" \
                         " (not a time, not drawn)"
    n_dev = len(bars)
    host = results[0].get("host") or {}
    for name, label in HOST_ENGINES:
        h = host.get(name) or {}
        if "median_ms" in h:
            bars.append((f"{label} (this machine)", h["median_ms"], h["p10_ms"], h["p90_ms"]))
    return bars, n_dev, unit_note


def _count_bars(results: list[dict], model: str) -> list[tuple]:
    """(label, millions, p10, p90) for every instruction count in the results: a device whose
    ticks are instructions (an emulated MCU), the count under qemu-user (aarch64), and the
    --versus artifact's, so a count gets a chart as a time does."""
    bars = []
    for r in results:
        if r.get("tick_unit") == "instructions" and r.get("device_median_ticks"):
            bars.append((f"{r['device']}: {model}", r["device_median_ticks"] / 1e6,
                         r["device_p10_ticks"] / 1e6, r["device_p90_ticks"] / 1e6))
            v = r.get("versus") or {}
            if v.get("device_median_ticks"):
                m = v["device_median_ticks"] / 1e6
                bars.append((f"{r['device']}: {v['model']}", m, m, m))
        if r.get("instructions_per_inference"):
            m = r["instructions_per_inference"] / 1e6
            bars.append((f"{model} ({r['target']}, qemu-user plugin)", m, m, m))
            v = r.get("versus") or {}
            if v.get("instructions_per_inference"):
                m = v["instructions_per_inference"] / 1e6
                bars.append((f"{v['model']} ({r['target']}, qemu-user plugin)", m, m, m))
        if r.get("onnxruntime_instructions_per_inference"):
            m = r["onnxruntime_instructions_per_inference"] / 1e6
            bars.append((f"ONNX Runtime aarch64 ({r['target']}, same plugin)", m, m, m))
    return bars


def write_reports(report_dir, outcomes: list[fleet.Outcome], manifest: Manifest) -> None:
    root = Path(report_dir)
    results = [o.result for o in outcomes]
    body = results[0] if len(results) == 1 else fleet.combine(outcomes)
    model = manifest.model_key
    bars, n_dev, unit_note = _latency_bars(results)
    plots = []
    if bars:
        emu = any(r.get("emulated") for r in results)
        title = (f"{model}: {results[0]['runs']} runs"
                 + ("\nemulated: times under an emulator are not the board's" if emu else "")
                 + unit_note)
        plots.append(report.latency_plot(root, bars, title, devices=n_dev))
    counts = _count_bars(results, model)
    if counts:
        plots.append(report.latency_plot(
            root, counts, f"{model}: instructions per inference,\ncounted "
            "under the target's emulator (a count, not a time)", unit="M", devices=len(counts),
            what="instructions per inference", name="instructions.png"))
    body = dict(body, plots=[p.name for p in plots])
    report.write(root, body, "\n\n".join(r.get("text", "") for r in results))
