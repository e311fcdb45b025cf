"""Where tuning records live: compile/tuning/<cpu key>/<model key>/, committed to git.

The CPU key names the exact CPU the records were measured on (see target.py); the model
key names the model's structure (alpha, resolution, classes, dtype), not its weights, since
a record is a schedule for a kernel's shapes and holds for any trained weights.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
TUNING_ROOT = REPO / "compile" / "tuning"
WORKLOADS = "database_workload.json"
RECORDS = "database_tuning_record.json"


def model_key(meta: dict, input_shape: list[int], dtype: str, onnx_bytes: bytes) -> str:
    cfg = meta.get("config") if isinstance(meta.get("config"), dict) else None
    if cfg and {"alpha", "resolution", "classes"} <= set(cfg):
        return f"mnv1-a{cfg['alpha']:g}-r{cfg['resolution']}-c{cfg['classes']}-{dtype}"
    digest = hashlib.sha256(onnx_bytes).hexdigest()[:12]
    return f"onnx-{'x'.join(map(str, input_shape))}-{dtype}-{digest}"


def records_dir(cpu_key: str, key: str, root: Path | None = None) -> Path:
    # EDGE_MNV1_TUNING_ROOT points tests (and experiments) away from the committed records.
    root = root or os.environ.get("EDGE_MNV1_TUNING_ROOT") or TUNING_ROOT
    return Path(root) / cpu_key / key


def has_records(path: Path) -> bool:
    return (path / RECORDS).is_file() and (path / RECORDS).stat().st_size > 0


def open_database(path: Path):
    import tvm.s_tir.meta_schedule as ms

    path.mkdir(parents=True, exist_ok=True)
    return ms.database.JSONDatabase(path_workload=str(path / WORKLOADS),
                                    path_tuning_record=str(path / RECORDS))
