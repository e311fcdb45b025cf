"""The host baselines a device's times are compared with: ONNX Runtime on the artifact's
model.onnx and PyTorch eager (on the checkpoint, else the same network with random weights),
on this machine, each in a fresh process of its own (evaluation/engine_timer.py): a live
thread pool of one runtime in the same process distorts the other's times.

A baseline that cannot be measured is that engine's {"error"} in the result, not a failed
command; `time_engine` itself raises ToolError (exit 3): it is this machine's tooling that
failed, not the device.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from edge_mnv1 import log
from edge_mnv1.artifact.artifact import Artifact
from edge_mnv1.errors import ToolError
from edge_mnv1.evaluation import fleet
from edge_mnv1.evaluation.measure import percentiles
from edge_mnv1.evaluation.references import (ONNXRUNTIME, PYTORCH, artifact_model,
                                             find_checkpoint, model_info)
from edge_mnv1.onnxio.model_file import load_onnx

TIMER_MODULE = "edge_mnv1.evaluation.engine_timer"


def torch_config(meta: dict, art: Artifact) -> dict | None:
    """The model config to build the PyTorch baseline from: the metadata's, or one read off
    the ONNX graph (stem width / 32, input side, output size) when the metadata has none.
    The child process checks the rebuilt network's multiply-adds against the manifest."""
    cfg = meta.get("config")
    if isinstance(cfg, dict) and "alpha" in cfg and "resolution" in cfg:
        return cfg
    from onnx import numpy_helper

    try:
        m = load_onnx(artifact_model(art))
        inits = {t.name: t for t in m.graph.initializer}
        conv = next(n for n in m.graph.node if n.op_type == "Conv")
        width = numpy_helper.to_array(inits[conv.input[1]]).shape[0]
        return {"alpha": width / 32, "resolution": int(art.manifest.input.shape[-1]),
                "classes": int(np.prod(art.manifest.output.shape[1:]))}
    except (StopIteration, KeyError, IndexError, ValueError):
        return None


def time_engine(engine: str, *, model: str | Path | None = None, checkpoint: str | None = None,
                config: dict | None = None, expect_macs: int | None = None,
                shape: list[int], runs: int, warmup: int, threads: int,
                timeout: float = 900.0) -> dict:
    """Time `engine` (onnxruntime | pytorch) in a child process of its own.

    Returns {"engine", "times_ms" (one per run), "version", "note"} or raises ToolError with
    the child's message."""
    spec = {"engine": engine, "model": str(model) if model else None, "checkpoint":
            str(checkpoint) if checkpoint else None, "config": config, "expect_macs": expect_macs,
            "shape": list(shape), "runs": runs, "warmup": warmup, "threads": threads}
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    try:
        proc = subprocess.run([sys.executable, "-m", TIMER_MODULE, "time", json.dumps(spec)],
                              capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ToolError(f"timing {engine} took longer than {timeout:.0f} s") from None
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise ToolError(f"timing {engine} failed: {' | '.join(tail) or proc.returncode}")
    return json.loads(lines[-1])


def host_stats(times_ms: list[float], note: str, version: str) -> dict:
    st = percentiles(times_ms)
    return {"median_ms": st["median"], "p10_ms": st["p10"], "p90_ms": st["p90"],
            "note": note, "version": version, "times_ms": list(times_ms)}


class HostBaselines:
    """This machine's engines for one artifact: what each needs is worked out once, then
    `measure` times them (once per bench round)."""

    def __init__(self, art: Artifact, threads: int, checkpoint=None,
                 engines=(ONNXRUNTIME, PYTORCH)):
        self.threads = threads
        self.shape = list(art.manifest.input.shape)
        self.engines: dict[str, dict] = {}  # engine -> time_engine's arguments
        self.missing: dict[str, dict] = {}  # engine -> {"error"}
        model = artifact_model(art)
        for engine in engines:
            if engine != PYTORCH:
                self.engines[engine] = {"model": model}
                continue
            meta = model_info(art)
            ck, _ = find_checkpoint(art, meta, checkpoint)
            cfg = None if ck else torch_config(meta, art)
            if ck is None and cfg is None:
                self.missing[engine] = {"error": "no checkpoint and no model config to build "
                                                 "the PyTorch network from"}
            else:
                self.engines[engine] = {"checkpoint": ck, "config": cfg,
                                        "expect_macs": art.manifest.total_macs or None}

    def measure(self, runs: int, warmup: int) -> dict:
        """{engine: {median_ms, p10_ms, p90_ms, note, version, times_ms} or {error}}, each
        engine in a child process of its own, one after the other."""
        out = {}
        with fleet.THIS_MACHINE:
            for engine in (*self.engines, *self.missing):
                if engine in self.missing:
                    out[engine] = dict(self.missing[engine])
                    continue
                log.info(f"bench: timing {engine} on this machine ({runs} runs, "
                         f"{self.threads} threads)")
                try:
                    t = time_engine(engine, shape=self.shape, runs=runs, warmup=warmup,
                                    threads=self.threads, **self.engines[engine])
                except ToolError as e:
                    out[engine] = {"error": str(e)}
                    continue
                out[engine] = host_stats(t["times_ms"], t["note"], t["version"])
        return out


def attach_baselines(r: dict, host: dict) -> dict:
    """The host's medians beside the device's, and the device's ratio to each."""
    ort, pt = host.get(ONNXRUNTIME) or {}, host.get(PYTORCH) or {}
    r["onnxruntime_ms"] = ort.get("median_ms")
    r["torch_ms"] = pt.get("median_ms")
    dev = r.get("device_median_ms")
    r["ratio_to_onnxruntime"] = dev / r["onnxruntime_ms"] if dev and r["onnxruntime_ms"] else None
    r["ratio_to_torch"] = dev / r["torch_ms"] if dev and r["torch_ms"] else None
    r["host"] = host
    return r
