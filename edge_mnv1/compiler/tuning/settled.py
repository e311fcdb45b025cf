"""Records that lost to their default schedule in the whole program: written by `tune`,
read by compile.

MetaSchedule times a kernel alone, with its weights and output flushed from the caches and
its input left warm by the previous repeat. In the program, a kernel's input was written
just before by another kernel, in that kernel's order and, with two threads, on the cores
that kernel gave each part to. The two disagree most on the memory-bound kernels: at 1.0/224
on Zen 4, the record of the 112x112 stride-2 depthwise conv measured faster than its default
alone, yet took 0.13 ms in the program where the default took 0.045.

So `tune`, on the machine that runs the program, builds the program with the records and
with the defaults, profiles both in turns (evaluation/settle.py) and writes, per kernel a
record covers, both times measured in the program. Compile keeps the default for a kernel
whose record was slower by more than transfer's margin.

<records dir>/settled.json:
  {"cpu_key", "model_key", "records": trials on file when measured, "threads", "rounds",
   "runs", "kernels": {kernel: {"record_ms": float, "default_ms": float}}}

The verdicts hold for the records they were measured with: once more records are on file
than `records` says, compile ignores them until the next `tune` measures again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import tvm

from edge_mnv1 import log
from edge_mnv1.compiler.tuning import records, transfer

FILE = "settled.json"


def write(rec_dir: Path, data: dict) -> Path:
    path = Path(rec_dir) / FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)   # atomic: a kill leaves the old verdicts or the new ones
    return path


def verdicts(kernels: dict) -> list[transfer.Verdict]:
    """The file's `kernels` table as transfer's verdicts (same margin)."""
    return [transfer.Verdict(k, float(v["record_ms"]), float(v["default_ms"]))
            for k, v in kernels.items()]


def read(rec_dir: Path) -> list[transfer.Verdict] | None:
    """The verdicts if they are on file and hold for the records on file, else None."""
    path = Path(rec_dir) / FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        found = verdicts(data["kernels"])
        measured_with = int(data["records"])
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        log.info(f"compile: ignoring {path}: not a verdicts file this version wrote ({err}); "
                 "`edge-mnv1 tune` writes it again")
        return None
    on_file = records.whole_lines((Path(rec_dir) / records.RECORDS).read_bytes())[0].count(b"\n")
    if on_file != measured_with:
        log.info(f"compile: {path} was measured with {measured_with} records, {on_file} are on "
                 "file now: every record is used as measured alone until `edge-mnv1 tune` "
                 "measures the program again")
        return None
    return found


def losers(found: list[transfer.Verdict]) -> list[str]:
    return sorted(v.kernel for v in found if not v.keep_record)


def fall_back(tuned: tvm.IRModule, fused: tvm.IRModule, rec_dir: Path, applied: list[str]
              ) -> tuple[tvm.IRModule, list[str], list[str]]:
    """(module, kernels a record still covers, kernels put back on their default because their
    record lost in the program)."""
    lost = [v for v in read(rec_dir) or [] if not v.keep_record and v.kernel in applied]
    for v in lost:
        log.info(f"compile: {v.kernel}: record {v.record_ms:.4f} ms, default {v.default_ms:.4f}"
                 f" ms in the whole program ({FILE}) -> default")
    names = sorted(v.kernel for v in lost)
    return transfer.fall_back(tuned, fused, lost), sorted(set(applied) - set(names)), names
