"""Parity on local devices (host program, rpi4 program under qemu-aarch64) against the host
references; a wrong device fails; nearly constant outputs are flagged; a dropped link keeps a
partial report; a fleet with one bad device reports the others.

Artifacts are compiled once per session (`parity_artifacts`, cached under the session's base
temp directory so that test_bench.py reuses them)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edge_mnv1 import cli
from edge_mnv1.artifact.artifact import Artifact, Manifest
from edge_mnv1.errors import DeviceError
from edge_mnv1.evaluation import metrics, parity

from compiled import cli_json
from compiled import untrained_onnx
from sanitizers import no_sanitizer_reports, sanitized_artifact

LIMIT = 120  # digits test inputs per parity run: enough for 10 classes, cheap under qemu


# -- models and artifacts, once per session ------------------------------------------------


def build_artifacts(digits_artifact, onnx_path: Path, ckpt: Path, tmp_path_factory) -> dict:
    """{"host", "rpi4", "untrained", "onnx", "ckpt"}: the digits model (conftest's session
    fixtures) compiled for host and rpi4, and an untrained one for host, once per session."""
    root = tmp_path_factory.getbasetemp() / "parity_artifacts"
    root.mkdir(exist_ok=True)
    out = {"onnx": onnx_path, "ckpt": ckpt, "host": digits_artifact("host")[0],
           "rpi4": digits_artifact("rpi4")[0], "untrained": root / "untrained"}
    if not (out["untrained"] / "manifest.json").is_file():
        cli_json("compile", untrained_onnx(root), "--target", "host", "-o", out["untrained"])
    return out


@pytest.fixture(scope="session")
def parity_artifacts(digits_artifact, digits_onnx, digits_ckpt, tmp_path_factory):
    return build_artifacts(digits_artifact, Path(digits_onnx), Path(digits_ckpt),
                           tmp_path_factory)


def run_cli(capsys, *argv) -> tuple[int, dict, str]:
    code = cli.main([str(a) for a in argv] + ["--json"])
    out = capsys.readouterr()
    return code, json.loads(out.out), out.err


# -- pure metrics -------------------------------------------------------------------------
def test_metrics_are_what_they_say():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((50, 10)) * 3
    m = metrics.compare(ref.copy(), ref)
    assert m["max_abs_error"] == 0 and m["top1_agreement"] == 1.0
    assert m["cosine"] == pytest.approx(1.0)
    dev = ref.copy()
    dev[7, 3] += 0.5
    m = metrics.compare(dev, ref)
    assert m["max_abs_error"] == pytest.approx(0.5)
    assert m["max_rel_error"] == pytest.approx(0.5 / np.abs(ref).max())
    assert m["rmse"] == pytest.approx(np.sqrt(0.25 / ref.size))
    assert m["cosine"] < 1.0 and m["cosine_mean"] > m["cosine"]
    flipped = ref.copy()
    flipped[4] = -flipped[4]
    m = metrics.compare(flipped, ref)
    assert m["top1_agreement"] == pytest.approx(49 / 50)
    assert m["disagreements"][0]["index"] == 4
    assert m["cosine"] == pytest.approx(-1.0)
    assert metrics.judge(m, metrics.default_thresholds("float32"))  # fails
    assert metrics.accuracy(ref, ref.argmax(1)) == 1.0


def test_variation_warning_depends_on_the_outputs_not_on_a_flag():
    rng = np.random.default_rng(1)
    varied = rng.standard_normal((40, 10))
    assert metrics.output_variation(varied, 1e-4)[1] == []
    constant = np.tile(rng.standard_normal(10), (40, 1)) + 1e-7 * rng.standard_normal((40, 10))
    info, warnings = metrics.output_variation(constant, 1e-4)
    assert info["relative_std"] < metrics.MIN_RELATIVE_VARIATION
    assert info["distinct_top1"] == 1 and len(warnings) == 2


def test_thresholds_per_dtype_and_overrides():
    assert metrics.default_thresholds("float32")["max_abs_error"] == 1e-4
    # int8 against a float reference: the quantization error is reported, not judged;
    # against the integer reference: exact.
    assert metrics.default_thresholds("int8")["max_abs_error"] is None
    assert metrics.default_thresholds("uint8", "integer")["max_abs_error"] == 0.0
    assert metrics.default_thresholds("float32", min_top1=0.9)["min_top1"] == 0.9


# -- on devices -----------------------------------------------------------------------------
@pytest.mark.parametrize("build", ["plain", "asan-ubsan"])
def test_host_parity_passes_against_pytorch_with_report(parity_artifacts, build, tmp_path,
                                                        tmp_path_factory, monkeypatch):
    a = parity_artifacts
    art = a["host"] if build == "plain" else sanitized_artifact(a["onnx"], tmp_path_factory)
    with no_sanitizer_reports(monkeypatch, tmp_path / "sanitizers"):
        r = parity.parity(art, ["local"], "digits", limit=LIMIT, report_dir=tmp_path,
                          checkpoint=a["ckpt"])
    assert r["passed"], r["text"]
    assert r["reference"] == "pytorch" and set(r["references"]) == {"pytorch", "onnxruntime"}
    assert r["n"] == LIMIT and not r["partial"]
    assert r["top1_agreement"] == 1.0 and r["max_abs_error"] <= 1e-4 and r["cosine"] >= 0.9999
    assert r["accuracy_device"] is not None and r["accuracy_device"] == r["accuracy_reference"]
    assert r["vs_references"]["onnxruntime"]["max_abs_error"] <= 1e-4
    assert r["warnings"] == []  # a trained model's outputs vary with the input
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["passed"] and saved["n"] == LIMIT
    for png in ("scatter.png", "error_hist.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    npz = np.load(tmp_path / "outputs.npz")
    assert npz["device"].shape == (LIMIT, 10)
    assert "PASSED" in (tmp_path / "summary.txt").read_text()


@pytest.mark.emulator
def test_rpi4_parity_under_qemu_cli(parity_artifacts, capsys):
    code, r, _ = run_cli(capsys, "parity", parity_artifacts["rpi4"], "--device", "local",
                         "--data", "digits", "--limit", LIMIT)
    assert code == 0, r
    for key in ("passed", "n", "top1_agreement", "max_abs_error", "max_rel_error", "cosine",
                "rmse", "accuracy_reference", "accuracy_device", "reference", "device", "data",
                "warnings"):
        assert key in r
    assert r["target"] == "rpi4" and r["top1_agreement"] == 1.0 and r["max_abs_error"] <= 1e-4


class _Perturbing:
    """A client that forwards to the real one and changes one logit a little."""

    def __init__(self, client, delta):
        self._client, self.delta = client, delta

    def __getattr__(self, name):
        return getattr(self._client, name)

    def infer(self, x):
        y = self._client.infer(x).copy()
        y.reshape(-1)[3] += self.delta
        return y


def test_wrong_device_fails_with_exit_1(parity_artifacts, monkeypatch, capsys):
    real = parity.open_device

    def opener(url, artifact, **kw):
        dev = real(url, artifact, **kw)
        dev.client = _Perturbing(dev.client, 1e-3)  # 10x the fp32 threshold, no top-1 change
        return dev

    monkeypatch.setattr(parity, "open_device", opener)
    code, r, _ = run_cli(capsys, "parity", parity_artifacts["host"], "--data", "digits",
                         "--limit", 30)
    assert code == 1 and r["passed"] is False
    assert r["max_abs_error"] == pytest.approx(1e-3, rel=0.05)
    assert any("max abs error" in f for f in r["failures"])
    # The same device passes once the threshold allows its error: the flags are honoured.
    code, r, _ = run_cli(capsys, "parity", parity_artifacts["host"], "--data", "digits",
                         "--limit", 30, "--max-abs-error", 2e-3, "--min-cosine", 0.999)
    assert code == 0 and r["passed"]


def test_near_constant_outputs_are_flagged(parity_artifacts, capsys):
    code, r, err = run_cli(capsys, "parity", parity_artifacts["untrained"], "--data", "digits",
                           "--limit", 40)
    assert r["warnings"], r
    assert any("barely vary" in w for w in r["warnings"])
    assert "warning" in err.lower()
    assert r["output_variation"]["relative_std"] < metrics.MIN_RELATIVE_VARIATION


def test_dropped_link_keeps_a_partial_report_and_a_rerun_completes(parity_artifacts,
                                                                    monkeypatch, capsys,
                                                                    tmp_path):
    real = parity.open_device
    kill_after = 7

    def opener(url, artifact, **kw):
        dev = real(url, artifact, **kw)
        client, done = dev.client, [0]
        orig = client.infer

        def infer(x):
            if done[0] == kill_after:  # the program dies under the host runner
                client.transport.proc.kill()
                client.transport.proc.wait()
            done[0] += 1
            return orig(x)

        client.infer = infer
        return dev

    monkeypatch.setattr(parity, "open_device", opener)
    code = cli.main(["parity", str(parity_artifacts["host"]), "--data", "digits", "--limit",
                     "30", "--report", str(tmp_path / "rep")])
    err = capsys.readouterr().err
    assert code == 1 and "error" in err
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert rep["partial"] is True and rep["completed"] == kill_after and rep["n"] == kill_after
    assert rep["requested"] == 30 and rep["passed"] is False and "error" in rep
    assert rep["max_abs_error"] <= 1e-4  # what did complete is measured and kept
    assert np.load(tmp_path / "rep" / "outputs.npz")["device"].shape == (kill_after, 10)
    with pytest.raises(DeviceError):
        parity.parity(parity_artifacts["host"], ["local"], "digits", limit=30)
    monkeypatch.setattr(parity, "open_device", real)
    r = parity.parity(parity_artifacts["host"], ["local"], "digits", limit=30,
                      report_dir=tmp_path / "rep")
    assert r["passed"] and not r["partial"] and r["completed"] == 30


def test_fleet_with_one_bad_device(parity_artifacts, capsys, tmp_path):
    devices = tmp_path / "devices.txt"
    devices.write_text("# two boards\nlocal   # this machine\n\nbogus://nowhere\n")
    code, r, _ = run_cli(capsys, "parity", parity_artifacts["host"], "--device", "local",
                         "--devices", devices, "--data", "digits", "--limit", 20,
                         "--report", tmp_path / "rep")
    assert code == 1 and r["passed"] is False
    assert [d["url"] for d in r["devices"]] == ["local", "local", "bogus://nowhere"]
    good, bad = r["devices"][:2], r["devices"][2]
    assert all(d["passed"] and d["n"] == 20 for d in good)
    assert bad["passed"] is False and "bogus" in bad["error"]
    assert r["failed_devices"] == ["bogus://nowhere"]
    combined = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert [d["passed"] for d in combined["devices"]] == [True, True, False]
    assert len(list((tmp_path / "rep").glob("0*-local/scatter.png"))) == 2


def test_checkpoint_named_in_the_model_is_found_and_verified(parity_artifacts, tmp_path):
    import hashlib

    import onnx

    from edge_mnv1.evaluation import references
    from edge_mnv1.onnxio.model_file import model_metadata, write_metadata

    ck = parity_artifacts["ckpt"]
    model = onnx.load(str(parity_artifacts["onnx"]))
    meta = model_metadata(model)
    meta["checkpoint"] = {"path": ck.name, "sha256": hashlib.sha256(ck.read_bytes()).hexdigest()}
    write_metadata(model, meta)
    art = tmp_path / "art"
    art.mkdir()
    onnx.save(model, str(art / "model.onnx"))

    def named_from(source):  # an artifact whose manifest names only its source model
        return Artifact(art, Manifest({"model": {"source": str(source)}}))

    found, note = references.find_checkpoint(named_from(ck.parent / "m.onnx"))
    assert found == ck.parent / ck.name and "sha256 verified" in note
    copy = tmp_path / ck.name
    copy.write_bytes(ck.read_bytes() + b"changed")
    found, note = references.find_checkpoint(named_from(copy))
    assert found is None and "changed" in note and "ONNX Runtime" in note
    found, note = references.find_checkpoint(named_from("/nowhere/m.onnx"))
    assert found is None and "not on this machine" in note
