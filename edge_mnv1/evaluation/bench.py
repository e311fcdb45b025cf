"""Timing: the device's own ticks beside ONNX Runtime and PyTorch on this machine, one run.

The device times its inferences itself (BENCH: one tick count per run, no transport in
them). `tick_unit` in hello says what a tick is: ns (converted to ms here), or cycles /
instructions (reported as counts: they are not time, and no ratio to a host time is made).
The host baselines run each in a child process of their own, after the devices, with the same
thread count. Programs under an emulator are flagged: their times are not the board's.
"""

from __future__ import annotations

import platform
import statistics
import time
from pathlib import Path

import numpy as np

from edge_mnv1.evaluation import fleet, report
from edge_mnv1 import log
from edge_mnv1.artifact.artifact import load_manifest
from edge_mnv1.device.connect import open_device
from edge_mnv1.errors import DeviceError, UsageError

TICKS_PER_MS = {"ns": 1e6}


def percentiles(values) -> dict:
    v = np.asarray(values, float)
    return {"median": float(np.median(v)), "p10": float(np.percentile(v, 10)),
            "p90": float(np.percentile(v, 90)), "min": float(v.min()), "max": float(v.max())}


def emulation(url: str, manifest: dict, hello: dict, transport=None) -> tuple[bool, str]:
    """(emulated?, why): a local program for another architecture runs under the target's
    emulator; `emulated` devices are; a transport may know (`transport.emulated`, e.g. ssh to
    a machine that runs the program under qemu), a device may say so in hello (`emulated`),
    and an instruction count only comes from an emulator."""
    if url == "emulated":
        return True, "an emulated device (--device emulated)"
    if getattr(transport, "emulated", False) is True:
        return True, f"{getattr(transport, 'description', url)} runs the program under an emulator"
    if url == "local" and manifest.get("target_arch") != platform.machine():
        return True, (f"the {manifest.get('target_arch')} program runs under an emulator on this "
                      f"{platform.machine()} machine")
    if hello.get("emulated"):
        return True, f"the device says it is emulated ({hello.get('emulated')})"
    if hello.get("tick_unit") == "instructions":
        return True, "ticks are emulated instructions"
    return False, ""


def bench_device(dev, manifest: dict, runs: int, warmup: int, roundtrips: int = 5) -> dict:
    """Warm-up, then `runs` timed inferences on a connected device; a few host-side round
    trips (infer through the transport) for the link's share."""
    hello = dict(dev.hello or {})
    unit = hello.get("tick_unit", "ns")
    emulated, why = emulation(dev.url, manifest, hello, getattr(dev.client, "transport", None))
    x = np.random.default_rng(0).standard_normal(manifest["input"]["shape"]) \
        .astype(manifest["input"]["dtype"])
    lock = fleet.THIS_MACHINE if fleet.on_this_machine(dev.url) else _NoLock()
    with lock:
        if warmup:
            dev.client.bench(warmup)
        ticks = dev.client.bench(runs)
        rts = []  # a few, fewer over a slow link (a UART moves ~30 KB/s)
        while len(rts) < roundtrips and sum(rts) < 2000:
            t0 = time.perf_counter_ns()
            dev.client.infer(x)
            rts.append((time.perf_counter_ns() - t0) / 1e6)
    r = {"passed": True, "device": dev.url, "target": manifest["target"], "runs": runs,
         "warmup": warmup, "tick_unit": unit, "emulated": emulated,
         "emulated_note": (f"{why}: times under an emulator are not the board's" if emulated
                           else None),
         "roundtrip_ms": statistics.median(rts) if rts else None}
    return _device_stats(r, ticks, manifest)


def _device_stats(r: dict, ticks: list, manifest: dict) -> dict:
    st = percentiles(ticks)
    scale = TICKS_PER_MS.get(r["tick_unit"])
    r.update({"device_median_ticks": st["median"], "device_p10_ticks": st["p10"],
              "device_p90_ticks": st["p90"], "device_min_ticks": st["min"],
              "device_median_ms": st["median"] / scale if scale else None,
              "device_p10_ms": st["p10"] / scale if scale else None,
              "device_p90_ms": st["p90"] / scale if scale else None,
              "runs": len(ticks), "ticks": list(ticks)})
    if scale is None:
        r["device_macs_per_tick"] = manifest.get("total_macs", 0) / st["median"] \
            if st["median"] else None
    return r


def _merge_rounds(rounds: list[list[dict]], hosts: list[dict], manifest: dict) -> tuple:
    """Rounds of (devices, then this machine's engines), one after the other, as one result
    per device: runs pooled, and each round's own ratio kept, since the load of a shared
    machine drifts between rounds but hits both sides of one round alike."""
    merged = []
    for i, first in enumerate(rounds[0]):
        per = [rr[i] for rr in rounds]
        if not all("ticks" in r for r in per):
            merged.append(next(r for r in per if "ticks" not in r))  # a failed round
            continue
        r = _device_stats(dict(first), [t for p in per for t in p["ticks"]], manifest)
        r["roundtrip_ms"] = statistics.median(p["roundtrip_ms"] for p in per
                                              if p.get("roundtrip_ms") is not None) \
            if any(p.get("roundtrip_ms") is not None for p in per) else None
        if first.get("versus"):
            ratios = [p["versus"]["ratio"] for p in per if p["versus"].get("ratio")]
            r["versus"] = dict(per[-1]["versus"], ratio=statistics.median(ratios) if ratios
                               else None, ratio_rounds=ratios)
        r["rounds"] = [{"device_median_ms": p.get("device_median_ms"),
                        "onnxruntime_ms": (h.get("onnxruntime") or {}).get("median_ms"),
                        "torch_ms": (h.get("pytorch") or {}).get("median_ms")} for p, h in
                       zip(per, hosts)]
        for x in r["rounds"]:
            x["ratio_to_onnxruntime"] = x["device_median_ms"] / x["onnxruntime_ms"] \
                if x["device_median_ms"] and x["onnxruntime_ms"] else None
        merged.append(r)
    host = {}
    for engine in hosts[0]:
        parts = [h[engine] for h in hosts if engine in h]
        if all("times_ms" in p for p in parts):
            host[engine] = _host_stats([t for p in parts for t in p["times_ms"]],
                                       parts[0]["note"], parts[0]["version"])
        else:
            host[engine] = next(p for p in parts if "times_ms" not in p)
    return merged, host


def machine_load(sample_s: float = 0.5) -> dict:
    """How busy this machine is before anything is timed (other users' work distorts every
    time measured here: the host baselines, and local or emulated devices)."""
    import os

    import psutil

    cores = len(os.sched_getaffinity(0))
    busy = psutil.cpu_percent(interval=sample_s)
    r = {"cores": cores, "load_average_1m": round(os.getloadavg()[0], 2),
         "cpu_busy_percent": busy, "warnings": []}
    if busy > 20:
        r["warnings"].append(
            f"this machine was {busy:.0f}% busy with other work before the run ({cores} cores, "
            f"load average {r['load_average_1m']}): times measured here (host baselines, local "
            "and emulated devices) are disturbed, multi-threaded ones most; rerun on an idle "
            "machine for numbers to quote")
    return r


class _NoLock:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def host_baselines(artifact, manifest: dict, runs: int, warmup: int, threads: int,
                   checkpoint=None, engines=("onnxruntime", "pytorch")) -> dict:
    """{engine: {median_ms, p10_ms, p90_ms, note} or {error}} for this machine, each engine in
    a child process of its own, one after the other."""
    from edge_mnv1.evaluation.reference import artifact_model, find_checkpoint, model_info, time_engine, torch_config

    model = artifact_model(artifact, manifest)
    shape = manifest["input"]["shape"]
    out = {}
    with fleet.THIS_MACHINE:
        for engine in engines:
            kw = {"model": model}
            if engine == "pytorch":
                meta = model_info(artifact, manifest)
                ck, _ = find_checkpoint(artifact, manifest, meta, checkpoint)
                cfg = None if ck else torch_config(meta, model, manifest)
                if ck is None and cfg is None:
                    out[engine] = {"error": "no checkpoint and no model config to build the "
                                            "PyTorch network from"}
                    continue
                kw = {"checkpoint": ck, "config": cfg, "expect_macs": manifest.get("total_macs")}
            log.info(f"bench: timing {engine} on this machine ({runs} runs, {threads} threads)")
            try:
                t = time_engine(engine, shape=shape, runs=runs, warmup=warmup, threads=threads,
                                **kw)
            except DeviceError as e:
                out[engine] = {"error": str(e)}
                continue
            out[engine] = _host_stats(t["times_ms"], t["note"], t["version"])
    return out


def _host_stats(times_ms: list[float], note: str, version: str) -> dict:
    st = percentiles(times_ms)
    return {"median_ms": st["median"], "p10_ms": st["p10"], "p90_ms": st["p90"],
            "note": note, "version": version, "times_ms": list(times_ms)}


def attach_baselines(r: dict, host: dict) -> dict:
    ort, pt = host.get("onnxruntime") or {}, host.get("pytorch") or {}
    r["onnxruntime_ms"] = ort.get("median_ms")
    r["torch_ms"] = pt.get("median_ms")
    dev = r.get("device_median_ms")
    r["ratio_to_onnxruntime"] = dev / r["onnxruntime_ms"] if dev and r["onnxruntime_ms"] else None
    r["ratio_to_torch"] = dev / r["torch_ms"] if dev and r["torch_ms"] else None
    r["host"] = host
    return r


def instruction_counts(artifact, manifest: dict, calls: bool = False) -> dict:
    """The artifact's program counted under the target's qemu (aarch64 targets; {} for
    others): instructions per inference and per multiply-add, single-threaded. A count, not a
    time: no caches, memory bandwidth, dual issue or NEON latency in it (docs/performance.md)."""
    from edge_mnv1.emulators.count_program import artifact_counts

    with fleet.THIS_MACHINE:  # not while another device's timed section runs here
        log.info("counting instructions under the target's emulator (qemu, TCG plugin)")
        return artifact_counts(artifact, manifest, calls=calls,
                               workers=min(2, len(__import__("os").sched_getaffinity(0)))) or {}


def bench(artifact, urls: list[str], runs: int = 50, warmup: int = 5, threads: int = 2,
          report_dir=None, checkpoint=None, host: bool = True, count: bool = True,
          versus=None, rounds: int = 1) -> dict:
    if runs < 1 or runs > 10000:
        raise UsageError(f"--runs {runs}: give 1 to 10000 runs")
    if rounds < 1 or rounds > runs:
        raise UsageError(f"--rounds {rounds}: give 1 to --runs ({runs}) rounds")
    if warmup < 0 or warmup > 10000:
        raise UsageError(f"--warmup {warmup}: give 0 to 10000 runs")
    if threads < 1:
        raise UsageError(f"--threads {threads}: give at least 1")
    manifest = load_manifest(artifact)
    other = load_manifest(versus) if versus else None
    if other and other["target"] != manifest["target"]:
        raise UsageError(f"--versus {versus} is for {other['target']}, {artifact} for "
                         f"{manifest['target']}: compare artifacts of one target")
    load = machine_load()

    per_round = -(-runs // rounds)

    def one(url):
        with open_device(url, artifact, manifest) as dev:
            r = bench_device(dev, manifest, per_round, warmup)
        if other:  # the same device, right after: side by side in one run
            with open_device(url, versus, other) as dev:
                r["versus"] = _versus(bench_device(dev, other, per_round, warmup), r, versus,
                                      other)
        return r

    dev_rounds, host_rounds = [], []
    for k in range(rounds):  # devices, then this machine's engines, again and again
        if rounds > 1:
            log.info(f"bench: round {k + 1} of {rounds}")
        dev_rounds.append(fleet.run_fleet(urls, one))
        host_rounds.append(host_baselines(artifact, manifest, per_round, warmup, threads,
                                          checkpoint) if host else {})
    if rounds == 1:
        results, baselines = dev_rounds[0], host_rounds[0]
    else:
        results, baselines = _merge_rounds(dev_rounds, host_rounds, manifest)
    counts = instruction_counts(artifact, manifest) if count else {}
    for r in results:
        attach_baselines(r, baselines)
        _ratio_from_rounds(r)
        r.update(counts)
        r["threads"] = threads
        r["machine"] = load
        r["warnings"] = list(load["warnings"]) + ([r["emulated_note"]] if r.get("emulated")
                                                   else [])
        r["text"] = summary_text(r, manifest)
    if report_dir:
        write_reports(report_dir, results, manifest)
    if len(results) == 1:
        return fleet.pop_single(results)
    combined = fleet.combine(results)
    combined.update(counts)
    combined.update({"onnxruntime_ms": baselines.get("onnxruntime", {}).get("median_ms"),
                     "torch_ms": baselines.get("pytorch", {}).get("median_ms"),
                     "host": baselines, "runs": runs})
    combined["text"] = "\n\n".join(r["text"] for r in results) + "\n\n" + \
        fleet.summary_line(results)
    return combined


def _ratio_from_rounds(r: dict) -> None:
    """With rounds, the ratio is the median of the rounds' own ratios: a round whose load
    spiked on one side moves it less than it moves the pooled medians."""
    for key, base in (("ratio_to_onnxruntime", "onnxruntime_ms"), ("ratio_to_torch", "torch_ms")):
        ratios = [x["device_median_ms"] / x[base] for x in r.get("rounds") or []
                  if x.get("device_median_ms") and x.get(base)]
        if ratios:
            r[key] = statistics.median(ratios)


def _versus(o: dict, r: dict, path, other: dict) -> dict:
    """The other artifact's figures and this one's ratio to it (time or counted ticks)."""
    out = {"artifact": str(path), "model": other["model"]["key"],
           "input_dtype": other["input"]["dtype"], "device_median_ms": o.get("device_median_ms"),
           "device_median_ticks": o.get("device_median_ticks"), "tick_unit": o.get("tick_unit")}
    if r.get("device_median_ms") and o.get("device_median_ms"):
        out["ratio"] = r["device_median_ms"] / o["device_median_ms"]
    elif r.get("device_median_ticks") and o.get("device_median_ticks"):
        out["ratio"] = r["device_median_ticks"] / o["device_median_ticks"]
    else:
        out["ratio"] = None
    return out


def _fmt(v, unit="ms"):
    return "n/a" if v is None else f"{v:.3f} {unit}"


def summary_text(r: dict, manifest: dict) -> str:
    if "device_median_ticks" not in r:
        return f"bench on {r['device']}: FAILED: {r.get('error')}"
    macs = manifest.get("total_macs") or 0
    lines = [f"bench on {r['device']} ({r['target']}): {r['runs']} runs after {r['warmup']} "
             f"warm-up, {macs / 1e6:.2f}M multiply-adds per inference"]
    if r["device_median_ms"] is not None:
        gmacs = macs / (r["device_median_ms"] * 1e6) if r["device_median_ms"] else 0
        lines.append(f"  device        median {r['device_median_ms']:.3f} ms  (p10 "
                     f"{r['device_p10_ms']:.3f}, p90 {r['device_p90_ms']:.3f})  "
                     f"{gmacs:.2f} GMAC/s; round trip through the link "
                     f"{_fmt(r['roundtrip_ms'])}")
    else:
        per_mac = r["device_median_ticks"] / macs if macs else float("nan")
        lines.append(f"  device        median {r['device_median_ticks']:,.0f} {r['tick_unit']} "
                     f"(p10 {r['device_p10_ticks']:,.0f}, p90 {r['device_p90_ticks']:,.0f}), "
                     f"{per_mac:.2f} {r['tick_unit']} per multiply-add; not a time, so no "
                     "ratio to the host's times")
    if r.get("instructions_per_inference"):
        per_mac = r["instructions_per_mac"]
        lines.append(f"  instructions  {r['instructions_per_inference']:,} per inference"
                     + (f", {per_mac:.3f} per multiply-add" if per_mac else "")
                     + f" ({r['instructions_note']}; a count, not a time: no caches, memory "
                       "bandwidth, dual issue or NEON latency in it)")
    elif r.get("instructions_error"):
        lines.append(f"  instructions  not counted: {r['instructions_error']}")
    host = r.get("host") or {}
    for name, label in (("onnxruntime", "ONNX Runtime"), ("pytorch", "PyTorch eager")):
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
    if r.get("rounds"):
        ratios = [x["ratio_to_onnxruntime"] for x in r["rounds"] if x["ratio_to_onnxruntime"]]
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
    if r.get("emulated"):
        lines.append(f"  NOTE: {r['emulated_note']}.")
    for w in (r.get("machine") or {}).get("warnings", []):
        lines.append(f"  WARNING: {w}")
    for name in ("onnxruntime", "pytorch"):
        if host.get(name, {}).get("note"):
            lines.append(f"  {name}: {host[name]['note']}")
    return "\n".join(lines)


def write_reports(report_dir, results: list[dict], manifest: dict) -> None:
    root = Path(report_dir)
    body = results[0] if len(results) == 1 else fleet.combine(results)
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
    for name, label in (("onnxruntime", "ONNX Runtime (this machine)"),
                        ("pytorch", "PyTorch eager (this machine)")):
        h = host.get(name) or {}
        if "median_ms" in h:
            bars.append((label, h["median_ms"], h["p10_ms"], h["p90_ms"]))
    plots = []
    if bars:
        emu = any(r.get("emulated") for r in results)
        title = (f"{manifest['model']['key']}: {results[0]['runs']} runs"
                 + ("\nemulated: times under an emulator are not the board's" if emu else "")
                 + unit_note)
        plots.append(report.latency_plot(root, bars, title, devices=n_dev))
    counts = _count_bars(results, manifest["model"]["key"])
    if counts:
        plots.append(report.latency_plot(
            root, counts, f"{manifest['model']['key']}: instructions per inference,\ncounted "
            "under the target's emulator (a count, not a time)", unit="M", devices=len(counts),
            what="instructions per inference", name="instructions.png"))
    body = dict(body, plots=[p.name for p in plots])
    report.write(root, body, "\n\n".join(r.get("text", "") for r in results))


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
    return bars


# -- profile -----------------------------------------------------------------------------
def profile_device(dev, manifest: dict, runs: int) -> dict:
    """Per kernel call: ticks per inference (the device's PROFILE sums them over `runs`),
    its share of the total, and multiply-adds per tick (GMAC/s when ticks are ns)."""
    hello = dict(dev.hello or {})
    unit = hello.get("tick_unit", "ns")
    calls = manifest.get("kernels") or []
    lock = fleet.THIS_MACHINE if fleet.on_this_machine(dev.url) else _NoLock()
    with lock:
        dev.client.profile(1)  # warm-up
        ticks = dev.client.profile(runs)
    if len(ticks) != len(calls):
        raise DeviceError(f"{dev.url}: the device profiled {len(ticks)} kernel calls, the "
                          f"artifact's manifest lists {len(calls)}; deploy this artifact")
    total = sum(ticks)
    rows = []
    for c, t in zip(calls, ticks):
        per = t / runs
        rows.append({"call": c["call"], "kernel": c["kernel"], "macs": c["macs"],
                     "ticks": per, "share": t / total if total else 0.0,
                     "macs_per_tick": c["macs"] / per if per else None,
                     "gmac_per_s": c["macs"] / per if per and unit == "ns" else None,
                     "ms": per / TICKS_PER_MS[unit] if unit in TICKS_PER_MS else None})
    emulated, why = emulation(dev.url, manifest, hello, getattr(dev.client, "transport", None))
    total_macs = sum(c["macs"] for c in calls)
    per_total = total / runs
    return {"passed": True, "device": dev.url, "target": manifest["target"], "runs": runs,
            "tick_unit": unit, "emulated": emulated,
            "emulated_note": (f"{why}: times under an emulator are not the board's" if emulated
                              else None),
            "calls": rows, "total_ticks": per_total,
            "total_ms": per_total / TICKS_PER_MS[unit] if unit in TICKS_PER_MS else None,
            "total_macs": total_macs, "manifest_total_macs": manifest.get("total_macs"),
            "macs_per_tick": total_macs / per_total if per_total else None,
            "gmac_per_s": total_macs / per_total if per_total and unit == "ns" else None}


def profile_text(r: dict, top: int | None = None) -> str:
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
    for c in r["calls"]:
        v = c["ms"] if ms else c["ticks"]
        rate = c["gmac_per_s"] if ms else c["macs_per_tick"]
        ipm = c.get("instructions_per_mac")
        lines.append(f"  {c['call']:>4}  {c['kernel'][:32]:<32} {c['macs']:>10,} "
                     + (f"{v:>12.4f}" if ms else f"{v:>12,.0f}")
                     + f" {100 * c['share']:>6.1f}% " + (f"{rate:>9.2f}" if rate else f"{'-':>9}")
                     + (f" {c.get('instructions', 0):>13,} " + (f"{ipm:>7.3f}" if ipm else
                                                               f"{'-':>7}") if counted else ""))
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


def profile(artifact, url: str, runs: int = 10, report_dir=None, count: bool = True) -> dict:
    if runs < 1 or runs > 1000:
        raise UsageError(f"--runs {runs}: give 1 to 1000 runs")
    manifest = load_manifest(artifact)
    with open_device(url, artifact, manifest) as dev:
        r = profile_device(dev, manifest, runs)
    if count:
        attach_call_counts(r, instruction_counts(artifact, manifest, calls=True))
    r["text"] = profile_text(r)
    if report_dir:
        ms = r["total_ms"] is not None
        title = (f"{manifest['model']['key']} on {url} ({r['target']}): per kernel call, "
                 f"{r['runs']} runs"
                 + ("\nemulated: times under an emulator are not the board's"
                    if r["emulated"] else ""))
        plot = report.profile_plot(report_dir, r["calls"], "ms" if ms else "ticks",
                                   "ms" if ms else r["tick_unit"], title)
        report.write(report_dir, dict(r, plots=[plot.name]), r["text"])
    return r
