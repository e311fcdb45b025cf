"""Tuning records travel between CPUs of one ISA class; the exact CPU wins when it has its own."""

from pathlib import Path

import pytest

from edge_mnv1.compiler.tuning import records

KEY = "mnv1-a0.25-r64-c10-float32-nhwc"


def _records(root: Path, cpu_key: str, trials: int) -> Path:
    d = root / cpu_key / KEY
    d.mkdir(parents=True)
    (d / records.WORKLOADS).write_text('{"w": 1}\n')
    (d / records.RECORDS).write_text('{"r": 1}\n' * trials)
    return d


def test_isa_class_names_the_vector_extension_not_the_cpu():
    assert records.isa_class("host-znver4-avx512") == "host-*-avx512"
    assert records.isa_class("host-emeraldrapids-avx512") == "host-*-avx512"
    assert records.isa_class("host-znver3-avx2") == "host-*-avx2"
    assert records.isa_class("rpi4-cortex-a72") == "rpi4-cortex-a72"


def test_exact_cpu_first_then_its_isa_class_then_none(tmp_path):
    zen4 = _records(tmp_path, "host-znver4-avx512", 10)
    _records(tmp_path, "host-sapphirerapids-avx512", 30)
    _records(tmp_path, "host-znver3-avx2", 50)

    exact = records.find("host-znver4-avx512", KEY, tmp_path)
    assert (exact.match, exact.cpu_key, exact.dir) == ("exact", "host-znver4-avx512", zen4)

    moved = records.find("host-emeraldrapids-avx512", KEY, tmp_path)
    # the class member with the most trials on record; never the AVX2 one
    assert (moved.match, moved.cpu_key) == ("isa-class", "host-sapphirerapids-avx512")

    none = records.find("host-znver2-sse", KEY, tmp_path)
    assert none.match == "none" and none.dir == tmp_path / "host-znver2-sse" / KEY


def test_fixed_boards_do_not_borrow_from_other_boards(tmp_path):
    _records(tmp_path, "rpi3-cortex-a53", 10)
    assert records.find("rpi4-cortex-a72", KEY, tmp_path).match == "none"


def test_empty_records_do_not_count(tmp_path):
    d = _records(tmp_path, "host-znver4-avx512", 0)
    assert not records.has_records(d)
    assert records.find("host-emeraldrapids-avx512", KEY, tmp_path).match == "none"


@pytest.mark.slow
def test_records_of_another_cpu_of_the_class_apply_where_they_win(digits_onnx, tmp_path):
    """Zen 4 records filed under another CPU of this machine's ISA class: compile applies
    them, times each against the default here, keeps the faster, and says whose they were."""
    import json
    import os
    import shutil
    import subprocess

    from compiled import CLI, REPO
    from edge_mnv1.artifact.target import load_target
    from edge_mnv1.compiler.tvm_target import resolve

    key = resolve(load_target("host")).cpu_key
    other = f"host-othercpu-{key.split('-')[-1]}"
    committed = REPO / "compile" / "tuning" / "host-znver4-avx512" / KEY
    root = tmp_path / "tuning"
    shutil.copytree(committed, root / other / KEY)
    env = dict(os.environ, EDGE_MNV1_TUNING_ROOT=str(root))
    r = subprocess.run([*CLI, "compile", str(digits_onnx), "--target", "host", "-o",
                        str(tmp_path / "a"), "--no-build", "--json"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    tuning = json.loads((tmp_path / "a" / "manifest.json").read_text())["tuning"]
    source = tuning["source"]
    assert source["match"] == "isa-class" and source["cpu_key"] == other
    # every kernel a record covered was timed: kept, or fell back to its default
    assert len(tuning["applied"]) + len(source["fell_back"]) >= 20
    assert set(source["fell_back"]) <= set(tuning["untuned"])
    assert r.stderr.count("transferred record") == len(tuning["applied"]) + len(source["fell_back"])
