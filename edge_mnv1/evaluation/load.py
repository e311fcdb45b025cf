"""How busy this machine is before anything is timed: other users' work distorts every time
measured here (the host baselines, and local or emulated devices)."""

from __future__ import annotations

import os

BUSY_PERCENT = 20  # above this, the result warns that its times are disturbed


def machine_load(sample_s: float = 0.5) -> dict:
    """Cores, load average and how busy the CPUs were over `sample_s`, with a warning when
    they were busy."""
    import psutil

    cores = len(os.sched_getaffinity(0))
    busy = psutil.cpu_percent(interval=sample_s)
    r = {"cores": cores, "load_average_1m": round(os.getloadavg()[0], 2),
         "cpu_busy_percent": busy, "warnings": []}
    if busy > BUSY_PERCENT:
        r["warnings"].append(
            f"this machine was {busy:.0f}% busy with other work before the run ({cores} cores, "
            f"load average {r['load_average_1m']}): times measured here (host baselines, local "
            "and emulated devices) are disturbed, multi-threaded ones most; rerun on an idle "
            "machine for numbers to quote")
    return r
