"""`tune --minutes M` stops within seconds of its budget, whatever a search round costs, keeps
every trial it measured, and leaves no worker process behind."""

import json
import os
import subprocess
import time

import psutil
import pytest

from compiled import CLI, REPO

pytestmark = pytest.mark.slow


def test_time_budget_is_kept_and_nothing_is_left_running(tmp_path):
    from edge_mnv1.compiler.tuning import records
    from edge_mnv1.onnxio.export import export_random

    onnx = export_random(tmp_path / "m.onnx", 32, alpha=0.25, classes=10)
    root = tmp_path / "tuning"
    env = dict(os.environ, EDGE_MNV1_TUNING_ROOT=str(root))
    budget_s = 30
    started = time.time()
    out = subprocess.run([*CLI, "tune", str(onnx), "--target", "host", "--trials", "100000",
                          "--minutes", str(budget_s / 60), "--json"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=600)
    wall = time.time() - started
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout)
    assert result["stopped_by"] == "time"
    # The budget counts from the start of the work; Python's own start-up comes before it.
    assert result["seconds"] <= budget_s + 5, result
    assert wall <= budget_s + 60, wall
    # Every trial that reached the database is a whole record that the next run counts.
    rec = records.records_dir(result["cpu_key"], result["model_key"], root)
    assert result["trials_after"] == records.repair_database(rec)
    time.sleep(2)
    leftovers = [p for p in psutil.process_iter(["cmdline", "create_time"])
                 if p.info["create_time"] >= started
                 and any("popen_worker" in c or "edge-mnv1" in c or "edge_mnv1.cli" in c
                         for c in (p.info["cmdline"] or []))]
    assert not leftovers, [p.info["cmdline"] for p in leftovers]
