"""Where tuning records live: compile/tuning/<cpu key>/<model key>/, committed to git.

The CPU key names the exact CPU the records were measured on (compiler/tvm_target.py); the
model key names the model's structure (alpha, resolution, classes, dtype), not its weights,
since a record is a schedule for a kernel's shapes and holds for any trained weights.

Records travel: a record is a schedule, correct on any CPU with the vector features it was
compiled for. `find` looks for the exact CPU first, then for any CPU of the same ISA class
(the same target and vector extension, e.g. `host-*-avx512`); how fast a transferred record
is on this CPU is a separate question (compiler/tuning/transfer.py measures it).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from edge_mnv1 import log

from edge_mnv1.paths import TUNING_DIR as TUNING_ROOT
WORKLOADS = "database_workload.json"
RECORDS = "database_tuning_record.json"


def model_key(meta: dict, input_shape: list[int], dtype: str, onnx_bytes: bytes,
              layout: str = "NCHW") -> str:
    """A channels-last compile has other kernels than the imported layout: its own records."""
    suffix = "" if layout == "NCHW" else f"-{layout.lower()}"
    cfg = meta.get("config") if isinstance(meta.get("config"), dict) else None
    if cfg and {"alpha", "resolution", "classes"} <= set(cfg):
        return f"mnv1-a{cfg['alpha']:g}-r{cfg['resolution']}-c{cfg['classes']}-{dtype}{suffix}"
    digest = hashlib.sha256(onnx_bytes).hexdigest()[:12]
    return f"onnx-{'x'.join(map(str, input_shape))}-{dtype}-{digest}{suffix}"


def records_dir(cpu_key: str, key: str, root: Path | None = None) -> Path:
    # EDGE_MNV1_TUNING_ROOT points tests (and experiments) away from the committed records.
    root = root or os.environ.get("EDGE_MNV1_TUNING_ROOT") or TUNING_ROOT
    return Path(root) / cpu_key / key


def has_records(path: Path) -> bool:
    return (path / RECORDS).is_file() and (path / RECORDS).stat().st_size > 0


@dataclass(frozen=True)
class Found:
    """Which records a compile uses: `dir` holds them (for match "none", where this CPU's
    would go), `cpu_key` is the CPU they were measured on."""

    dir: Path
    cpu_key: str
    match: str  # "exact", "isa-class" or "none"


def isa_class(cpu_key: str) -> str:
    """`host-znver4-avx512` -> `host-*-avx512`: the target and the vector extension, not the
    CPU model. Keys of fixed-CPU boards (`rpi4-cortex-a72`) are their own class."""
    parts = cpu_key.split("-")
    if len(parts) >= 3 and parts[0] == "host":
        return f"{parts[0]}-*-{parts[-1]}"
    return cpu_key


def find(cpu_key: str, key: str, root: Path | None = None) -> Found:
    """This CPU's records for the model, else those of another CPU of its ISA class (the one
    with the most trials on record), else none."""
    exact = records_dir(cpu_key, key, root)
    if has_records(exact):
        return Found(exact, cpu_key, "exact")
    cls = isa_class(cpu_key)
    base = exact.parent.parent
    others = [d for d in sorted(base.iterdir()) if d.is_dir() and d.name != cpu_key
              and isa_class(d.name) == cls and has_records(d / key)] if base.is_dir() else []
    if cls != cpu_key and others:
        best = max(others, key=lambda d: (d / key / RECORDS).read_bytes().count(b"\n"))
        return Found(best / key, best.name, "isa-class")
    return Found(exact, cpu_key, "none")


def whole_lines(data: bytes) -> tuple[bytes, int]:
    """(the lines of a JSON-lines file that parse, newline-ended; how many did not).
    MetaSchedule appends one line per workload and per trial: a kill -9 can cut the last."""
    good, bad = [], 0
    for line in data.split(b"\n"):
        if not line.strip():
            continue
        try:
            json.loads(line)
            good.append(line)
        except ValueError:
            bad += 1
    return b"\n".join(good) + (b"\n" if good else b""), bad


def repair_database(path: Path) -> int:
    """Drops an incomplete last line (a write cut by kill -9). Returns records kept.
    Only the owner of the database (tune) calls this: it rewrites the files."""
    kept = 0
    for name in (WORKLOADS, RECORDS):
        f = path / name
        if not f.exists():
            continue
        data = f.read_bytes()
        clean, bad = whole_lines(data)
        if bad:
            log.info(f"tune: dropping {bad} damaged line(s) of {f.name} (an interrupted write)")
        if clean != data:
            tmp = f.with_suffix(".tmp")
            tmp.write_bytes(clean)
            os.replace(tmp, f)  # atomic: a kill now leaves the old or the new file
        if name == RECORDS:
            kept = clean.count(b"\n")
    return kept


def open_database(path: Path):
    """MetaSchedule's JSON database at `path`. A damaged last line (a tune killed mid-write)
    is left in place for the next tune to repair; the database is read from a cleaned copy,
    so that a compile never fails on it and never rewrites a file a tune may be appending to."""
    import tvm.s_tir.meta_schedule as ms

    path.mkdir(parents=True, exist_ok=True)
    files = {name: path / name for name in (WORKLOADS, RECORDS)}
    copy = None
    for name, f in files.items():
        if f.exists():
            clean, bad = whole_lines(f.read_bytes())
            if bad:
                copy = copy or Path(tempfile.mkdtemp(prefix="em-records-"))
                (copy / name).write_bytes(clean)
                log.info(f"records: {f} has {bad} damaged line(s) (an interrupted tune); reading "
                         "the whole ones (the next tune run repairs the file)")
    if copy is None:
        return ms.database.JSONDatabase(path_workload=str(files[WORKLOADS]),
                                        path_tuning_record=str(files[RECORDS]))
    try:
        for name, f in files.items():
            if not (copy / name).exists() and f.exists():
                shutil.copyfile(f, copy / name)
        # JSONDatabase reads both files when it is made; the copy is not needed after.
        return ms.database.JSONDatabase(path_workload=str(copy / WORKLOADS),
                                        path_tuning_record=str(copy / RECORDS))
    finally:
        shutil.rmtree(copy, ignore_errors=True)
