"""Records that lost to their default in the whole program (`tune` times both programs and
writes settled.json): compile keeps the default there, and only while the verdicts were
measured with the records now on file."""

import json
import os
import shutil
import subprocess

import pytest

from compiled import CLI, REPO
from edge_mnv1.compiler.tuning import records, settled

KEY = "mnv1-a0.25-r64-c10-float32-nhwc"
COMMITTED = REPO / "compile" / "tuning" / "host-znver4-avx512" / KEY


def _copy(dst):
    """The committed records without their own verdicts."""
    shutil.copytree(COMMITTED, dst)
    (dst / settled.FILE).unlink(missing_ok=True)
    return dst


def _verdicts(d, kernels: dict, on_file: int | None = None) -> None:
    n = on_file if on_file is not None else records.whole_lines(
        (d / records.RECORDS).read_bytes())[0].count(b"\n")
    settled.write(d, {"cpu_key": d.parent.name, "model_key": d.name, "records": n,
                      "threads": 2, "rounds": 5, "runs": 5,
                      "kernels": {k: {"record_ms": r, "default_ms": dflt}
                                  for k, (r, dflt) in kernels.items()}})


def test_a_record_loses_only_beyond_the_margin(tmp_path):
    d = _copy(tmp_path / KEY)
    _verdicts(d, {"slower": (0.2, 0.1), "within_noise": (0.102, 0.1), "faster": (0.1, 0.2)})
    assert settled.losers(settled.read(d)) == ["slower"]


def test_verdicts_measured_with_other_records_are_ignored(tmp_path, capfd):
    d = _copy(tmp_path / KEY)
    _verdicts(d, {"slower": (0.2, 0.1)}, on_file=1)
    assert settled.read(d) is None
    assert "measured with 1 records" in capfd.readouterr().err


def test_a_damaged_verdicts_file_is_ignored_with_a_reason(tmp_path, capfd):
    d = _copy(tmp_path / KEY)
    (d / settled.FILE).write_text('{"kernels": [1, 2]')
    assert settled.read(d) is None
    assert "edge-mnv1 tune` writes it again" in capfd.readouterr().err


@pytest.mark.slow
def test_compile_keeps_the_default_where_the_record_lost(digits_onnx, tmp_path):
    """This CPU's records (the committed ones filed under its key) with a verdict against one
    kernel: compile applies the others and names that one in tuning.source.fell_back."""
    from edge_mnv1.artifact.target import load_target
    from edge_mnv1.compiler.tvm_target import resolve

    key = resolve(load_target("host")).cpu_key
    root = tmp_path / "tuning"
    d = _copy(root / key / KEY)
    env = dict(os.environ, EDGE_MNV1_TUNING_ROOT=str(root))

    def compile_(out):
        r = subprocess.run([*CLI, "compile", str(digits_onnx), "--target", "host", "-o",
                            str(out), "--no-build", "--json"], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, r.stderr[-2000:]
        return json.loads((out / "manifest.json").read_text())["tuning"], r.stderr

    before, _ = compile_(tmp_path / "all")
    assert before["source"] == {"cpu_key": key, "match": "exact", "fell_back": []}
    loser, winner = sorted(before["applied"])[:2]
    _verdicts(d, {loser: (0.3, 0.1), winner: (0.1, 0.3)})
    after, err = compile_(tmp_path / "settled")
    assert after["source"]["fell_back"] == [loser]
    assert loser not in after["applied"] and loser in after["untuned"]
    assert set(after["applied"]) == set(before["applied"]) - {loser}
    assert f"{loser}: record 0.3000 ms, default 0.1000 ms in the whole program" in err
