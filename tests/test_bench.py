"""bench and profile: the keys a user scripts against, ratios made from numbers measured in the
same run, emulated devices flagged, counts that are not time never turned into ms, profile
shares and multiply-adds that add up. No absolute time is asserted anywhere."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_mnv1 import cli
from edge_mnv1.artifact.artifact import Artifact
from edge_mnv1.evaluation import bench

from test_parity import build_artifacts, run_cli


@pytest.fixture(scope="session")
def arts(digits_artifact, digits_onnx, digits_ckpt, tmp_path_factory):
    return build_artifacts(digits_artifact, Path(digits_onnx), Path(digits_ckpt),
                           tmp_path_factory)


def manifest_of(art):
    return Artifact.load(art).manifest


def test_bench_host_beside_onnxruntime_and_torch(arts, capsys, tmp_path):
    code, r, _ = run_cli(capsys, "bench", arts["host"], "--runs", 20, "--warmup", 2,
                         "--report", tmp_path)
    assert code == 0, r
    for key in ("device_median_ms", "device_p10_ms", "device_p90_ms", "onnxruntime_ms",
                "torch_ms", "ratio_to_onnxruntime", "runs", "tick_unit", "emulated"):
        assert key in r
    assert r["tick_unit"] == "ns" and r["emulated"] is False and r["runs"] == 20
    assert len(r["ticks"]) == 20
    assert r["device_p10_ms"] <= r["device_median_ms"] <= r["device_p90_ms"]
    assert r["device_median_ms"] == pytest.approx(r["device_median_ticks"] / 1e6)
    # Ratios come from the numbers of this run, not from anywhere else.
    assert r["onnxruntime_ms"] == r["host"]["onnxruntime"]["median_ms"] > 0
    assert r["ratio_to_onnxruntime"] == pytest.approx(r["device_median_ms"] / r["onnxruntime_ms"])
    assert r["torch_ms"] > 0
    assert r["ratio_to_torch"] == pytest.approx(r["device_median_ms"] / r["torch_ms"])
    assert (tmp_path / "latency.png").read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["ratio_to_onnxruntime"] == pytest.approx(r["ratio_to_onnxruntime"])


def test_bench_in_rounds_reports_each_rounds_ratio(arts, capsys):
    """--rounds: device and host engines alternate; the ratio is the median of the rounds'
    own ratios, each made from numbers of that round."""
    code, r, _ = run_cli(capsys, "bench", arts["host"], "--runs", 9, "--warmup", 1,
                         "--rounds", 3)
    assert code == 0, r
    assert r["runs"] == 9 and len(r["ticks"]) == 9 and len(r["rounds"]) == 3
    assert len(r["host"]["onnxruntime"]["times_ms"]) == 9
    per_round = [x["device_median_ms"] / x["onnxruntime_ms"] for x in r["rounds"]]
    assert [x["ratio_to_onnxruntime"] for x in r["rounds"]] == pytest.approx(per_round)
    assert r["ratio_to_onnxruntime"] == pytest.approx(sorted(per_round)[1])
    code, r, err = run_cli(capsys, "bench", arts["host"], "--runs", 2, "--rounds", 3)
    assert code == 2 and "--rounds 3" in err


@pytest.mark.emulator
def test_bench_under_qemu_is_flagged_emulated(arts, capsys):
    code = cli.main(["bench", str(arts["rpi4"]), "--runs", "3", "--warmup", "1", "--no-host"])
    text = capsys.readouterr().out
    assert code == 0
    assert "emulator" in text and "not the board's" in text
    code, r, _ = run_cli(capsys, "bench", arts["rpi4"], "--runs", 3, "--warmup", 1, "--no-host")
    assert r["emulated"] is True and r["onnxruntime_ms"] is None
    assert r["ratio_to_onnxruntime"] is None
    assert any("not the board's" in w for w in r["warnings"])


class _CountingDevice:
    """A device whose ticks are instructions (QEMU -icount, an MCU counter): no ms."""

    url = "serial:///dev/fake"
    transport = None

    def __init__(self, manifest):
        self.hello = {"tick_unit": "instructions", "target": manifest.target_name}
        self.client = self
        self.manifest = manifest

    def bench(self, runs):
        return [9_000_000 + 1000 * i for i in range(runs)]

    def infer(self, x):
        import numpy as np

        return np.zeros(self.manifest.output.shape, np.float32)


def test_counts_are_not_converted_to_ms(arts):
    m = manifest_of(arts["host"])
    r = bench.bench_device(_CountingDevice(m), m, runs=11, warmup=0)
    assert r["tick_unit"] == "instructions" and r["emulated"] is True
    assert r["device_median_ms"] is None and r["device_median_ticks"] == 9_005_000
    bench.attach_baselines(r, {"onnxruntime": {"median_ms": 0.5, "p10_ms": 0.4, "p90_ms": 0.6}})
    assert r["ratio_to_onnxruntime"] is None and r["onnxruntime_ms"] == 0.5
    text = bench.summary_text(r, m)
    assert "instructions" in text and "not a time" in text


def test_profile_shares_and_macs_add_up(arts, capsys, tmp_path):
    code, r, _ = run_cli(capsys, "profile", arts["host"], "--runs", 3, "--report", tmp_path)
    assert code == 0, r
    m = manifest_of(arts["host"])
    calls = r["calls"]
    assert [(c["call"], c["kernel"], c["macs"]) for c in calls] == \
        [(k["call"], k["kernel"], k["macs"]) for k in m.kernels]
    assert sum(c["share"] for c in calls) == pytest.approx(1.0, abs=1e-9)
    assert sum(c["macs"] for c in calls) == m.total_macs == r["total_macs"]
    assert sum(c["ticks"] for c in calls) == pytest.approx(r["total_ticks"])
    for c in calls:
        if c["macs"] and c["ticks"]:
            assert c["gmac_per_s"] == pytest.approx(c["macs"] / c["ticks"])
    assert r["gmac_per_s"] == pytest.approx(m.total_macs / r["total_ticks"])
    assert (tmp_path / "profile.png").read_bytes()[:4] == b"\x89PNG"
    assert "share" in (tmp_path / "summary.txt").read_text()


def test_bench_fleet_with_one_bad_device(arts, capsys):
    code, r, _ = run_cli(capsys, "bench", arts["host"], "--device", "local", "--device",
                         "bogus://nowhere", "--runs", 5, "--warmup", 1, "--no-host")
    assert code == 1 and r["passed"] is False
    ok, bad = r["devices"]
    assert ok["url"] == "local" and ok["passed"] and ok["device_median_ms"] > 0
    assert bad["url"] == "bogus://nowhere" and not bad["passed"] and "error" in bad
