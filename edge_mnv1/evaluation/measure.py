"""What a device's timing means: its ticks as statistics (ms when ticks are ns, counts
otherwise), whether the program ran under an emulator, and instruction counts under the
target's qemu. Shared by bench and profile."""

from __future__ import annotations

import os
import platform

import numpy as np

from edge_mnv1 import log
from edge_mnv1.errors import EdgeError
from edge_mnv1.artifact.artifact import Artifact, Manifest
from edge_mnv1.evaluation import fleet

TICKS_PER_MS = {"ns": 1e6}


def percentiles(values) -> dict:
    v = np.asarray(values, float)
    return {"median": float(np.median(v)), "p10": float(np.percentile(v, 10)),
            "p90": float(np.percentile(v, 90)), "min": float(v.min()), "max": float(v.max())}


def emulation(url: str, manifest: Manifest, hello: dict, transport=None) -> tuple[bool, str]:
    """(emulated?, why): a local program for another architecture runs under the target's
    emulator; `emulated` devices are; a transport may know (`transport.emulated`, e.g. ssh to
    a machine that runs the program under qemu), a device may say so in hello (`emulated`),
    and an instruction count only comes from an emulator."""
    if url == "emulated":
        return True, "an emulated device (--device emulated)"
    if getattr(transport, "emulated", False) is True:
        return True, f"{getattr(transport, 'description', url)} runs the program under an emulator"
    if url == "local" and manifest.target_arch != platform.machine():
        return True, (f"the {manifest.target_arch} program runs under an emulator on this "
                      f"{platform.machine()} machine")
    if hello.get("emulated"):
        return True, f"the device says it is emulated ({hello.get('emulated')})"
    if hello.get("tick_unit") == "instructions":
        return True, "ticks are emulated instructions"
    return False, ""


def emulation_note(emulated: bool, why: str) -> str | None:
    return f"{why}: times under an emulator are not the board's" if emulated else None


def device_stats(r: dict, ticks: list, manifest: Manifest) -> dict:
    """The device_* figures of a bench result from its ticks (ms only when ticks are ns;
    multiply-adds per tick when they are counts)."""
    st = percentiles(ticks)
    scale = TICKS_PER_MS.get(r["tick_unit"])
    r.update({"device_median_ticks": st["median"], "device_p10_ticks": st["p10"],
              "device_p90_ticks": st["p90"], "device_min_ticks": st["min"],
              "device_median_ms": st["median"] / scale if scale else None,
              "device_p10_ms": st["p10"] / scale if scale else None,
              "device_p90_ms": st["p90"] / scale if scale else None,
              "runs": len(ticks), "ticks": list(ticks)})
    if scale is None:
        r["device_macs_per_tick"] = manifest.total_macs / st["median"] if st["median"] else None
    return r


def instruction_counts(art: Artifact, calls: bool = False) -> dict:
    """The artifact's program counted under the target's qemu (aarch64 targets; {} for
    others): instructions per inference and per multiply-add, single-threaded, and beside it
    ONNX Runtime's own aarch64 build counted the same way on the same model, what a Pi user
    already runs. A count, not a time: no caches, memory bandwidth, dual issue or NEON
    latency in it (docs/performance.md)."""
    from edge_mnv1.emulators.count_program import artifact_counts

    with fleet.THIS_MACHINE:  # not while another device's timed section runs here
        log.info("counting instructions under the target's emulator (qemu, TCG plugin)")
        counts = artifact_counts(art, calls=calls,
                                 workers=min(2, len(os.sched_getaffinity(0)))) or {}
        if counts.get("instructions_per_inference") and art.manifest.target_arch == "aarch64":
            counts.update(onnxruntime_counts(art, counts["instructions_per_inference"]))
    return counts


def onnxruntime_counts(art: Artifact, ours: int) -> dict:
    """ONNX Runtime 1.32's aarch64 wheel on the artifact's model, one thread, under the same
    qemu-aarch64 and plugin; the ratio is ours / ONNX Runtime's. A missing aarch64 root is
    reported, not fatal: the project's own count stands alone."""
    from edge_mnv1.emulators.ort_aarch64 import count_onnxruntime, cpu_of

    log.info("counting ONNX Runtime's aarch64 build on the same model (qemu, TCG plugin)")
    cpu = cpu_of((art.target.emulator or {}).get("command"))
    try:
        c = count_onnxruntime(art.onnx, art.manifest.input.shape, "float32", cpu=cpu)
    except EdgeError as e:
        return {"onnxruntime_instructions_error": str(e)}
    n = c["instructions_per_inference"]
    macs = art.manifest.total_macs
    return {"onnxruntime_instructions_per_inference": n,
            "onnxruntime_instructions_per_mac": round(n / macs, 4) if macs else None,
            "instructions_vs_onnxruntime": round(ours / n, 3) if n else None,
            "onnxruntime_engine": f'{c["engine"]} (-cpu {cpu})'}
