"""Export to ONNX: BN folded, metadata, checked against PyTorch; and the demo's stages."""

import hashlib
import json
import shutil

import numpy as np
import onnx
import pytest

from edge_mnv1.model import checkpoint, data
from edge_mnv1 import cli
from edge_mnv1.errors import UsageError
from edge_mnv1.onnxio.export import CHECKPOINT, CONFIG, PREPROCESSING, export, read_model_config
from edge_mnv1.onnxio.model_file import model_metadata, ort_session, write_metadata
from edge_mnv1.model.network import ModelConfig, cost_summary
from edge_mnv1.onnxio.cost import graph_costs
from edge_mnv1.model.train import predict


def test_digits_onnx_is_folded_and_carries_its_config(digits_onnx, digits_ckpt):
    proto = onnx.load(str(digits_onnx))
    onnx.checker.check_model(proto, full_check=True)
    ops = {n.op_type for n in proto.graph.node}
    assert "BatchNormalization" not in ops and {"Conv", "Gemm", "Relu"} <= ops
    assert proto.opset_import[0].version == 17
    assert {p.key for p in proto.metadata_props} == {
        "edge_mnv1.config", "edge_mnv1.preprocessing", "edge_mnv1.format_version",
        "edge_mnv1.checkpoint"}
    meta = model_metadata(proto)
    assert meta[CONFIG]["alpha"] == 0.25
    assert meta[PREPROCESSING]["mean"] == [0.5, 0.5, 0.5]
    ck = meta[CHECKPOINT]
    assert (digits_onnx.parent / ck["path"]).resolve() == digits_ckpt.resolve()
    assert ck["sha256"] == hashlib.sha256(digits_ckpt.read_bytes()).hexdigest()
    config, pp = read_model_config(digits_onnx)
    assert config == ModelConfig(0.25, 64, classes=10) and pp == data.Preprocessing.digits(64)
    assert [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim] == \
        [1, 3, 64, 64]


@pytest.mark.slow
def test_onnx_matches_torch_on_all_test_digits(digits_onnx, digits_ckpt):
    model, config, pp, _ = checkpoint.load_model(digits_ckpt)
    x, y, _ = data.load_dataset("digits", config, pp, split="test")
    sess = ort_session(digits_onnx)
    got = np.concatenate([sess.run(None, {"input": x[i:i + 1]})[0] for i in range(len(x))])
    ref = predict(model, x)
    assert np.allclose(got, ref, atol=1e-5, rtol=1e-5)
    assert np.array_equal(got.argmax(1), ref.argmax(1))
    assert float((got.argmax(1) == y).mean()) >= 0.96


@pytest.mark.parametrize("batch", ["dynamic", 3])
def test_export_batches_and_report(untrained_ckpt_factory, tmp_path, batch):
    ckpt = untrained_ckpt_factory(0.5, 97, classes=10, data="digits")
    r = export(ckpt, tmp_path / "m.onnx", batch=batch)
    assert r["passed"] and r["within_tolerance"]
    assert r["max_abs_error_vs_torch"] <= r["tolerance"] == max(1e-5, 3 * r[
        "torch_fp32_error_vs_fp64"])
    # a real comparison: folded fp32 is not bit-equal, and the logits do not vanish
    assert r["max_abs_error_vs_torch"] > 0 and r["torch_fp32_error_vs_fp64"] > 0
    assert 0.5 < r["reference_logit_absmax"] < 50
    assert r["opset"] == 17 and r["file_bytes"] > r["weight_bytes"] > 0
    assert r["batch_sizes_checked"] == ([1, 8] if batch == "dynamic" else [3])
    assert graph_costs(tmp_path / "m.onnx")["macs"] == \
        cost_summary(ModelConfig(0.5, 97, classes=10))["macs"]


def test_trained_export_is_within_1e_5(digits_ckpt, tmp_path):
    r = export(digits_ckpt, tmp_path / "d.onnx", batch=1)
    assert r["max_abs_error_vs_torch"] <= 1e-5 and r["tolerance"] >= 1e-5
    assert r["checked_inputs"] == 8 and r["reference_logit_absmax"] > 1


def test_read_model_config_refuses_other_files(tmp_path, digits_onnx):
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(digits_onnx.read_bytes()[:5000])
    with pytest.raises(UsageError, match="cut.onnx: not a valid ONNX model"):
        read_model_config(cut)
    proto = onnx.load(str(digits_onnx))
    del proto.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(proto, str(bare))
    with pytest.raises(UsageError, match="bare.onnx: no edge_mnv1.config metadata"):
        read_model_config(bare)


def test_metadata_is_prefixed_json_and_reads_back(digits_onnx):
    proto = onnx.load(str(digits_onnx))
    write_metadata(proto, {"config": {"alpha": 0.5}, "note": "not JSON {", "format_version": "1"})
    assert [p.key for p in proto.metadata_props] == [
        "edge_mnv1.config", "edge_mnv1.note", "edge_mnv1.format_version"]
    proto.metadata_props.add(key="producer.other", value="ignored")
    assert model_metadata(proto) == {"config": {"alpha": 0.5}, "note": "not JSON {",
                                     "format_version": 1}


def test_export_refuses_bad_options(digits_ckpt, tmp_path):
    with pytest.raises(UsageError, match="--batch 0"):
        export(digits_ckpt, tmp_path / "m.onnx", batch=0)
    with pytest.raises(UsageError, match="--batch many"):
        export(digits_ckpt, tmp_path / "m.onnx", batch="many")
    with pytest.raises(UsageError, match="--opset 9"):
        export(digits_ckpt, tmp_path / "m.onnx", opset=9)


@pytest.mark.slow
@pytest.mark.emulator
@pytest.mark.ssh  # the whole demo: sshd, an emulated Pi and QEMU's Cortex-M7
def test_demo_reuses_a_matching_checkpoint(digits_ckpt, tmp_path, capsys):
    out = tmp_path / "demo"
    out.mkdir()
    shutil.copy(digits_ckpt, out / "model.safetensors")
    assert cli.main(["demo", "--out", str(out), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["passed"] and r["stages"]["train"]["reused"]
    assert list(r["stages"]) == ["train", "export", "check", "compile", "parity", "bench", "mcu"]
    parity = r["stages"]["parity"]  # over ssh to the emulated Pi
    assert parity["passed"] and parity["top1_agreement"] == 1.0 and parity["n"] == 100
    assert parity["max_abs_error"] <= 1e-4 and parity["photos"]["passed"]
    mcu = r["stages"]["mcu"]  # Cortex-M7 firmware over serial
    assert mcu["passed"] and mcu["top1_agreement"] == 1.0
    check = r["stages"]["check"]
    assert check["onnx_accuracy"] == check["torch_accuracy"] >= 0.96
    assert check["graph_macs"] == check["cost_model_macs"] == 3_331_072
    assert json.loads((out / "report.json").read_text())["passed"] is True
    assert "PASSED" in (out / "report.txt").read_text()
