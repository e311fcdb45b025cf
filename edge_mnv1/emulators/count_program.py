"""Instructions per inference (and per kernel call) of an artifact's Linux device program,
counted under the target's user-mode QEMU with the icount plugin.

The program's `--count N [CALL]` mode runs N inferences (or N runs of one kernel call) on one
thread and exits. Per inference = count(N=2) - count(N=1): start-up, argv and environment are
equal in both and cancel, and so does the loop's first-iteration set-up, so the difference is
exactly one steady-state inference. One thread, because a pool's spinning workers would be
counted too and the plugin's counter is per process. Imports neither TVM nor torch.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from edge_mnv1.errors import DeviceError, ToolError
from edge_mnv1.artifact.artifact import Artifact
from edge_mnv1.artifact.target import Target
from edge_mnv1.emulators import icount

# The guest's whole environment: fixed, so that a count does not depend on the caller's.
GUEST_ENV = {"EM_NUM_THREADS": "1"}
HOW = ("counted under {qemu} with a TCG plugin, one thread (all threads' work in sequence), "
       "by difference of 2 and 1 runs; exact and repeatable")


def counting_emulator(target: Target) -> list[str] | None:
    """The target's user-mode QEMU command when its programs can be counted, else None."""
    cmd = (target.emulator or {}).get("command") or []
    if target.is_mcu or not cmd or not os.path.basename(cmd[0]).startswith("qemu-") \
            or os.path.basename(cmd[0]).startswith("qemu-system"):
        return None
    return list(cmd)


def _count(program: Path, args: list[str], qemu: list[str], timeout: float | None) -> int:
    try:
        return icount.count([str(program), "--count", *args], qemu=qemu, env=GUEST_ENV,
                            timeout=timeout)
    except DeviceError as e:
        if "usage:" in str(e) and "--count" not in str(e).split("usage:")[1]:
            raise DeviceError(f"{program} has no --count mode (built by an older edge_mnv1); "
                              "recompile the artifact") from None
        raise


def per_inference(program: str | Path, qemu: list[str], timeout: float | None = None,
                  parallel: bool = False) -> int:
    """Instructions of one inference: count(2 runs) - count(1 run)."""
    program = Path(program).resolve()
    args = [["2"], ["1"]]
    if parallel:
        with ThreadPoolExecutor(2) as ex:
            two, one = ex.map(lambda a: _count(program, a, qemu, timeout), args)
    else:
        two, one = (_count(program, a, qemu, timeout) for a in args)
    n = two - one
    if n <= 0:
        raise DeviceError(f"{program}: counted {two} instructions for two inferences and {one} "
                          "for one; the program did no work per inference")
    return n


def per_call(program: str | Path, num_calls: int, qemu: list[str], workers: int = 1,
             timeout: float | None = None) -> list[int]:
    """Instructions of each kernel call run alone: count(call twice) - count(call once).
    The call index is zero-padded so that every run's argv has the same length."""
    program = Path(program).resolve()
    width = len(str(max(num_calls - 1, 0)))
    jobs = [(k, n) for k in range(num_calls) for n in ("2", "1")]

    def one(job):
        k, n = job
        return _count(program, [n, f"{k:0{width}d}"], qemu, timeout)

    if workers > 1:
        with ThreadPoolExecutor(workers) as ex:
            counts = list(ex.map(one, jobs))
    else:
        counts = [one(j) for j in jobs]
    return [counts[2 * k] - counts[2 * k + 1] for k in range(num_calls)]


def note(qemu: list[str]) -> str:
    return HOW.format(qemu=" ".join(qemu))


def artifact_counts(art: Artifact, calls: bool = False, workers: int = 1) -> dict | None:
    """bench/profile keys for an artifact whose program runs under a user-mode QEMU:
    `instructions_per_inference`, `instructions_per_mac`, `instructions_note` (and with
    calls=True `instructions_per_call`, one count per kernel call); `instructions_error`
    when counting failed; None for targets that cannot be counted (host, MCU)."""
    if art.manifest.is_mcu:
        return None
    qemu = counting_emulator(art.target)
    program = art.path / "program"
    if qemu is None or not program.is_file():
        return None
    macs = art.manifest.total_macs
    try:
        n = per_inference(program, qemu, parallel=workers > 1)
        out = {"instructions_per_inference": n,
               "instructions_per_mac": n / macs if macs else None,
               "instructions_note": note(qemu)}
        if calls:
            out["instructions_per_call"] = per_call(program, len(art.manifest.kernels), qemu,
                                                    workers=workers)
        return out
    except (DeviceError, ToolError) as e:
        return {"instructions_error": str(e)}
