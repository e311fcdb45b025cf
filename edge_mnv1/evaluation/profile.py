"""profile: per kernel call, the device's ticks per inference, its share of the total and
multiply-adds per tick (GMAC/s when ticks are ns); with the instructions each call takes
alone under the target's qemu for aarch64 artifacts."""

from __future__ import annotations

from edge_mnv1.artifact.artifact import Artifact, Manifest
from edge_mnv1.device.connect import open_device
from edge_mnv1.errors import DeviceError, UsageError
from edge_mnv1.evaluation import fleet, report
from edge_mnv1.evaluation.measure import (TICKS_PER_MS, emulation, emulation_note,
                                          instruction_counts)


def _call_rows(calls: list[dict], ticks: list[int], runs: int, unit: str) -> list[dict]:
    total = sum(ticks)
    rows = []
    for c, t in zip(calls, ticks):
        per = t / runs
        rows.append({"call": c["call"], "kernel": c["kernel"], "macs": c["macs"],
                     "ticks": per, "share": t / total if total else 0.0,
                     "macs_per_tick": c["macs"] / per if per else None,
                     "gmac_per_s": c["macs"] / per if per and unit == "ns" else None,
                     "ms": per / TICKS_PER_MS[unit] if unit in TICKS_PER_MS else None})
    return rows


def profile_device(dev, manifest: Manifest, runs: int) -> dict:
    """Per kernel call: ticks per inference (the device's PROFILE sums them over `runs`),
    its share of the total, and multiply-adds per tick (GMAC/s when ticks are ns)."""
    hello = dict(dev.hello or {})
    unit = hello.get("tick_unit", "ns")
    calls = manifest.kernels
    with fleet.timed_section(dev.url):
        dev.client.profile(1)  # warm-up
        ticks = dev.client.profile(runs)
    if len(ticks) != len(calls):
        raise DeviceError(f"{dev.url}: the device profiled {len(ticks)} kernel calls, the "
                          f"artifact's manifest lists {len(calls)}; deploy this artifact")
    emulated, why = emulation(dev.url, manifest, hello, dev.transport)
    total_macs = sum(c["macs"] for c in calls)
    per_total = sum(ticks) / runs
    return {"passed": True, "device": dev.url, "target": manifest.target_name, "runs": runs,
            "tick_unit": unit, "emulated": emulated,
            "emulated_note": emulation_note(emulated, why),
            "calls": _call_rows(calls, ticks, runs, unit), "total_ticks": per_total,
            "total_ms": per_total / TICKS_PER_MS[unit] if unit in TICKS_PER_MS else None,
            "total_macs": total_macs, "manifest_total_macs": manifest.get("total_macs"),
            "macs_per_tick": total_macs / per_total if per_total else None,
            "gmac_per_s": total_macs / per_total if per_total and unit == "ns" else None}


def _call_line(c: dict, ms: bool, counted: bool) -> str:
    v = c["ms"] if ms else c["ticks"]
    rate = c["gmac_per_s"] if ms else c["macs_per_tick"]
    ipm = c.get("instructions_per_mac")
    return (f"  {c['call']:>4}  {c['kernel'][:32]:<32} {c['macs']:>10,} "
            + (f"{v:>12.4f}" if ms else f"{v:>12,.0f}")
            + f" {100 * c['share']:>6.1f}% " + (f"{rate:>9.2f}" if rate else f"{'-':>9}")
            + (f" {c.get('instructions', 0):>13,} " + (f"{ipm:>7.3f}" if ipm else f"{'-':>7}")
               if counted else ""))


def profile_text(r: dict) -> str:
    unit = r["tick_unit"]
    ms = r["total_ms"] is not None
    head = (f"profile on {r['device']} ({r['target']}): {len(r['calls'])} kernel calls, "
            f"{r['runs']} runs, per inference "
            + (f"{r['total_ms']:.3f} ms, {r['gmac_per_s']:.2f} GMAC/s" if ms else
               f"{r['total_ticks']:,.0f} {unit}, {r['macs_per_tick']:.3f} MAC per {unit[:-1]}"))
    counted = any("instructions" in c for c in r["calls"])
    lines = [head, f"  {'call':>4}  {'kernel':<32} {'MACs':>10} "
                   f"{'ms' if ms else unit:>12} {'share':>7} {'GMAC/s' if ms else 'MAC/tick':>9}"
                   + (f" {'instructions':>13} {'per MAC':>7}" if counted else "")]
    lines += [_call_line(c, ms, counted) for c in r["calls"]]
    if r.get("instructions_per_inference"):
        lines.append(f"  instructions: {r['instructions_per_inference']:,} per inference, "
                     f"{r['instructions_per_mac']:.3f} per multiply-add; per call = the call "
                     f"run alone ({r['instructions_note']}); a count, not a time")
    elif r.get("instructions_error"):
        lines.append(f"  instructions not counted: {r['instructions_error']}")
    if r.get("emulated"):
        lines.append(f"  NOTE: {r['emulated_note']}.")
    return "\n".join(lines)


def attach_call_counts(r: dict, counts: dict) -> dict:
    """Per call: `instructions` (the call run alone, counted under qemu) and per MAC."""
    per_call = counts.pop("instructions_per_call", None)
    r.update(counts)
    if per_call and len(per_call) == len(r["calls"]):
        for c, n in zip(r["calls"], per_call):
            c["instructions"] = n
            c["instructions_per_mac"] = n / c["macs"] if c["macs"] else None
    return r


def _write_report(report_dir, r: dict, manifest: Manifest, url: str) -> None:
    ms = r["total_ms"] is not None
    title = (f"{manifest.model_key} on {url} ({r['target']}): per kernel call, "
             f"{r['runs']} runs"
             + ("\nemulated: times under an emulator are not the board's" if r["emulated"]
                else ""))
    plot = report.profile_plot(report_dir, r["calls"], "ms" if ms else "ticks",
                               "ms" if ms else r["tick_unit"], title)
    report.write(report_dir, dict(r, plots=[plot.name]), r["text"])


def profile(artifact, url: str, runs: int = 10, report_dir=None, count: bool = True) -> dict:
    if runs < 1 or runs > 1000:
        raise UsageError(f"--runs {runs}: give 1 to 1000 runs")
    art = Artifact.load(artifact)
    with open_device(url, art) as dev:
        r = profile_device(dev, art.manifest, runs)
    if count:
        attach_call_counts(r, instruction_counts(art, calls=True))
    r["text"] = profile_text(r)
    if report_dir:
        _write_report(report_dir, r, art.manifest, url)
    return r
