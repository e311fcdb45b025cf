"""Timing: the device's own ticks beside ONNX Runtime and PyTorch on this machine, one run.

The device times its inferences itself (BENCH: one tick count per run, no transport in
them). `tick_unit` in hello says what a tick is: ns (converted to ms here), or cycles /
instructions (reported as counts: they are not time, and no ratio to a host time is made).
The host baselines (evaluation/baselines.py) run each in a child process of their own, after
the devices, with the same thread count; with --rounds (evaluation/rounds.py) devices and
host alternate. Programs under an emulator are flagged: their times are not the board's.
"""

from __future__ import annotations

import os
import statistics
import time

import numpy as np

from edge_mnv1 import log
from edge_mnv1.artifact.artifact import Artifact, Manifest
from edge_mnv1.device.connect import open_device
from edge_mnv1.errors import UsageError
from edge_mnv1.evaluation import fleet, rounds as rounds_mod
from edge_mnv1.evaluation.baselines import HostBaselines, attach_baselines
from edge_mnv1.evaluation.bench_report import summary_text, write_reports
from edge_mnv1.evaluation.load import machine_load
from edge_mnv1.evaluation.measure import (device_stats, emulation, emulation_note,
                                          instruction_counts)

ROUNDTRIP_BUDGET_MS = 2000  # a few round trips, fewer over a slow link (a UART: ~30 KB/s)


def bench_device(dev, manifest: Manifest, runs: int, warmup: int, roundtrips: int = 5) -> dict:
    """Warm-up, then `runs` timed inferences on a connected device; a few host-side round
    trips (infer through the transport) for the link's share."""
    hello = dict(dev.hello or {})
    unit = hello.get("tick_unit", "ns")
    emulated, why = emulation(dev.url, manifest, hello, dev.transport)
    x = np.random.default_rng(0).standard_normal(manifest.input.shape) \
        .astype(manifest.input.dtype)
    with fleet.timed_section(dev.url):
        if warmup:
            dev.client.bench(warmup)
        ticks = dev.client.bench(runs)
        rts = []
        while len(rts) < roundtrips and sum(rts) < ROUNDTRIP_BUDGET_MS:
            t0 = time.perf_counter_ns()
            dev.client.infer(x)
            rts.append((time.perf_counter_ns() - t0) / 1e6)
    r = {"passed": True, "device": dev.url, "target": manifest.target_name, "runs": runs,
         "warmup": warmup, "tick_unit": unit, "emulated": emulated,
         "emulated_note": emulation_note(emulated, why),
         "roundtrip_ms": statistics.median(rts) if rts else None}
    return device_stats(r, ticks, manifest)


def _versus(o: dict, r: dict, other: Artifact, label: str) -> dict:
    """The other artifact's figures and this one's ratio to it (time or counted ticks)."""
    out = {"artifact": label, "model": other.manifest.model_key,
           "input_dtype": other.manifest.input.dtype,
           "device_median_ms": o.get("device_median_ms"),
           "device_median_ticks": o.get("device_median_ticks"), "tick_unit": o.get("tick_unit")}
    if r.get("device_median_ms") and o.get("device_median_ms"):
        out["ratio"] = r["device_median_ms"] / o["device_median_ms"]
    elif r.get("device_median_ticks") and o.get("device_median_ticks"):
        out["ratio"] = r["device_median_ticks"] / o["device_median_ticks"]
    else:
        out["ratio"] = None
    return out


def _check_arguments(runs: int, rounds: int, warmup: int, threads: int) -> None:
    if runs < 1 or runs > 10000:
        raise UsageError(f"--runs {runs}: give 1 to 10000 runs")
    if rounds < 1 or rounds > runs:
        raise UsageError(f"--rounds {rounds}: give 1 to --runs ({runs}) rounds")
    if warmup < 0 or warmup > 10000:
        raise UsageError(f"--warmup {warmup}: give 0 to 10000 runs")
    if threads < 1:
        raise UsageError(f"--threads {threads}: give at least 1")


def _versus_artifact(art: Artifact, versus) -> Artifact | None:
    if not versus:
        return None
    other = Artifact.load(versus)
    if other.manifest.target_name != art.manifest.target_name:
        raise UsageError(f"--versus {versus} is for {other.manifest.target_name}, {art.path} "
                         f"for {art.manifest.target_name}: compare artifacts of one target")
    return other


def _measure(art: Artifact, urls: list[str], runs: int, warmup: int, rounds: int,
             host: HostBaselines | None, versus=None) -> tuple[list[fleet.Outcome], dict]:
    """Every device, then this machine's engines, `rounds` times: (one outcome per device,
    the engines' times)."""
    other = _versus_artifact(art, versus)
    per_round = -(-runs // rounds)

    def one(url: str) -> dict:
        with open_device(url, art) as dev:
            r = bench_device(dev, art.manifest, per_round, warmup)
        if other:  # the same device, right after: side by side in one run
            with open_device(url, other) as dev:
                r["versus"] = _versus(bench_device(dev, other.manifest, per_round, warmup), r,
                                      other, str(versus))
        return r

    dev_rounds, host_rounds = [], []
    for k in range(rounds):
        if rounds > 1:
            log.info(f"bench: round {k + 1} of {rounds}")
        dev_rounds.append(fleet.run_fleet(urls, one))
        host_rounds.append(host.measure(per_round, warmup) if host else {})
    if rounds == 1:
        return dev_rounds[0], host_rounds[0]
    return (rounds_mod.merge_devices(dev_rounds, host_rounds, art.manifest),
            rounds_mod.merge_hosts(host_rounds))


def _versus_counts(versus, counts: dict) -> dict:
    """The --versus artifact's program counted the same way (e.g. the fp32 program beside
    an int8 one on the emulated Pi): its instructions and this one's ratio to them."""
    if not counts.get("instructions_per_inference"):
        return {}
    from edge_mnv1.emulators.count_program import artifact_counts

    with fleet.THIS_MACHINE:
        log.info("counting the --versus artifact's instructions under the same emulator")
        c = artifact_counts(Artifact.load(versus),
                            workers=min(2, len(os.sched_getaffinity(0)))) or {}
    n = c.get("instructions_per_inference")
    if not n:
        return {"instructions_error": c.get("instructions_error", "not counted")}
    return {"instructions_per_inference": n, "instructions_per_mac": c["instructions_per_mac"],
            "instructions_ratio": round(counts["instructions_per_inference"] / n, 3)}


def bench(artifact, urls: list[str], runs: int = 50, warmup: int = 5, threads: int = 2,
          report_dir=None, checkpoint=None, host: bool = True, count: bool = True,
          versus=None, rounds: int = 1) -> dict:
    """bench on every device of `urls`: one device's result, or the fleet's."""
    _check_arguments(runs, rounds, warmup, threads)
    art = Artifact.load(artifact)
    load = machine_load()
    engines = HostBaselines(art, threads, checkpoint) if host else None
    outcomes, baselines = _measure(art, urls, runs, warmup, rounds, engines, versus)
    counts = instruction_counts(art) if count else {}
    other_counts = _versus_counts(versus, counts) if count and versus else {}
    for o in outcomes:
        r = o.result
        attach_baselines(r, baselines)
        rounds_mod.ratio_from_rounds(r)
        r.update(counts)
        if other_counts and r.get("versus"):
            r["versus"].update(other_counts)
        r["threads"] = threads
        r["machine"] = load
        r["warnings"] = list(load["warnings"]) + ([r["emulated_note"]] if r.get("emulated")
                                                   else [])
        r["text"] = summary_text(r, art.manifest)
    if report_dir:
        write_reports(report_dir, outcomes, art.manifest)
    out = fleet.command_result(outcomes)
    if len(outcomes) > 1:
        out.update(counts)
        out.update({"onnxruntime_ms": baselines.get("onnxruntime", {}).get("median_ms"),
                    "torch_ms": baselines.get("pytorch", {}).get("median_ms"),
                    "host": baselines, "runs": runs})
    return out
