"""After `tune`: each record against its default schedule, timed in the whole program.

The program is built twice in a scratch directory (records as measured alone, and defaults
only) and both are profiled on this machine in turns, so that a slow spell of the shared
machine falls on both. Per kernel a record covers, the median over the rounds of its time per
inference (every call of it summed) is written beside the records
(compiler/tuning/settled.py), and compile keeps the default where the record lost.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

from edge_mnv1 import log
from edge_mnv1.artifact.build import build_program
from edge_mnv1.artifact.target import Target
from edge_mnv1.compiler.driver import compile_artifact, finish_manifest
from edge_mnv1.compiler.tuning import settled
from edge_mnv1.device.connect import open_device
from edge_mnv1.evaluation.profile import profile_device

ROUNDS = 5      # profiles of each program, alternating
RUNS = 5        # inferences per profile


MIN_SECONDS = 30  # not started with less left: the two builds alone take 10-40 s


def reserve_seconds(minutes: float) -> float:
    """What a tuning budget keeps back for this: 10 % of it, at most 90 s (the two builds of
    1.0/224 and its profiles take ~50 s here); nothing from a budget under 5 minutes, where
    it runs only if the search ends early."""
    return min(90.0, 0.1 * minutes * 60) if minutes >= 5 else 0.0


def settle(model: Path, target: Target, rec_dir: Path, on_file: int, deadline: float) -> dict:
    """Measures the records on file (`on_file` of them, as `tune` left the database) and
    writes the verdicts; returns what was done (and why not, if the budget ran out first)."""
    t0 = time.time()
    if deadline - t0 < MIN_SECONDS:
        return _skipped(t0, f"{max(deadline - t0, 0):.0f} s of the budget left")
    with tempfile.TemporaryDirectory(prefix="edge-mnv1-settle-") as tmp:
        arts = {}
        for label, use_records in (("records", True), ("defaults", False)):
            if time.time() >= deadline:
                return _skipped(t0, f"the budget ran out before the {label} build")
            log.info(f"tune: building the program with {label} to time it whole")
            art = compile_artifact(model, target, Path(tmp) / label, use_records=use_records,
                                   settled=False)
            build_program(target, art.path)
            arts[label] = finish_manifest(art)
        covered = arts["records"].manifest["tuning"]["applied"]
        if not covered:
            return _skipped(t0, "no record applies to the program")
        times = {label: [] for label in arts}
        rounds = 0
        while rounds < ROUNDS and (rounds == 0 or time.time() < deadline):
            for label, art in arts.items():
                with open_device("local", art) as dev:
                    times[label].append(_per_kernel(profile_device(dev, art.manifest, RUNS)))
            rounds += 1
    kernels = {k: {"record_ms": _median(times["records"], k),
                   "default_ms": _median(times["defaults"], k)} for k in covered}
    data = {"cpu_key": rec_dir.parent.name, "model_key": rec_dir.name, "records": on_file,
            "threads": target.threads or len(os.sched_getaffinity(0)), "rounds": rounds,
            "runs": RUNS,
            "kernels": kernels}
    path = settled.write(rec_dir, data)
    lost = settled.losers(settled.verdicts(kernels))
    log.info(f"tune: in the whole program ({rounds} rounds), {len(lost)} of {len(kernels)} "
             f"records lost to their default and compile will use the default there"
             + (": " + ", ".join(lost) if lost else "") + f" ({path})")
    return {"settled": True, "rounds": rounds, "defaults_kept": lost,
            "seconds": round(time.time() - t0, 1), "file": str(path)}


def _per_kernel(profile: dict) -> dict[str, float]:
    """ms per inference per kernel name (a kernel called several times: its calls summed), by
    the name records are applied under (before the weights were split off: `_prepacked`)."""
    out: dict[str, float] = {}
    for c in profile["calls"]:
        name = c["kernel"].removesuffix("_prepacked")
        out[name] = out.get(name, 0.0) + c["ms"]
    return out


def _median(rounds: list[dict[str, float]], kernel: str) -> float:
    return round(statistics.median(r.get(kernel, 0.0) for r in rounds), 5)


def _skipped(t0: float, why: str) -> dict:
    log.info(f"tune: records not timed in the whole program ({why}); compile uses them as "
             "measured alone until a `tune` run gets to it")
    return {"settled": False, "why": why, "seconds": round(time.time() - t0, 1)}
