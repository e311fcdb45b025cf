"""The foundation's verbs through the CLI: bad input exits 2 with a message that names the
input and says what to do (never a traceback); good input gives the documented JSON."""

import json
import re

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import save_file

from edge_mnv1 import cli


@pytest.fixture
def run(capsys):
    def go(*argv):
        code = cli.main([str(a) for a in argv])
        out, err = capsys.readouterr()
        assert "Traceback" not in err
        return code, out, err
    return go


@pytest.fixture
def files(tmp_path):
    f = {"missing": tmp_path / "missing.safetensors", "corrupt": tmp_path / "corrupt.safetensors",
         "plain": tmp_path / "plain.safetensors", "text": tmp_path / "notes.onnx",
         "empty": tmp_path / "empty", "badimg": tmp_path / "badimg"}
    f["corrupt"].write_bytes(b"\x00\x01garbage" * 10)
    save_file({"w": np.zeros(2, np.float32)}, str(f["plain"]))
    f["text"].write_text("hello\n")
    f["empty"].mkdir()
    (f["badimg"] / "cat").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(f["badimg"] / "cat" / "ok.png")
    (f["badimg"] / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    return f


CASES = [  # argv (with {placeholders} from `files`), message pattern
    (["export", "{missing}", "-o", "m.onnx"],
     r"missing.safetensors: no such file.*edge-mnv1 train"),
    (["export", "{corrupt}", "-o", "m.onnx"], r"corrupt.safetensors: not a readable safetensors"),
    (["export", "{plain}", "-o", "m.onnx"], r"plain.safetensors: no edge_mnv1 model config"),
    (["info", "{text}"], r"notes.onnx: not a valid ONNX model.*re-export"),
    (["info", "{missing}"], r"missing.safetensors: no such file"),
    (["info", "--alpha", "0"], r"--alpha 0.0: the width multiplier must be in \(0, 1\]"),
    (["info", "--alpha", "1.5"], r"--alpha 1.5"),
    (["info", "--resolution", "31"], r"--resolution 31: the input must be at least 32x32"),
    (["info", "--classes", "0"], r"--classes 0"),
    (["train", "--data", "digits", "--alpha", "-1", "-o", "x.safetensors"], r"--alpha -1.0"),
    (["train", "--data", "digits", "--resolution", "16", "-o", "x.safetensors"],
     r"--resolution 16"),
    (["train", "--data", "mnist", "-o", "x.safetensors"],
     r"'mnist': not a known data set.*digits, digits:N, photos, a directory of images"),
    (["train", "--data", "{empty}", "-o", "x.safetensors"], r"empty: no images"),
    (["train", "--data", "{badimg}", "--epochs", "1", "-o", "x.safetensors"],
     r"badimg/cat/broken.jpg: cannot read this image.*remove or replace"),
    (["train", "--data", "photos", "--epochs", "1", "-o", "x.safetensors"],
     r"unlabeled inputs cannot train"),
]


@pytest.mark.parametrize("argv,pattern", CASES, ids=[" ".join(c[0][:2]) + f" #{i}"
                                                     for i, c in enumerate(CASES)])
def test_bad_input_exits_2_with_a_message(run, files, tmp_path, monkeypatch, argv, pattern):
    monkeypatch.chdir(tmp_path)
    argv = [a.format(**files) for a in argv]
    code, out, err = run(*argv)
    assert code == 2
    assert err.startswith(f"edge-mnv1 {argv[0]}: error: ")
    assert __import__("re").search(pattern, err), err
    assert out == ""
    code, out, _ = run(*argv, "--json")  # with --json, stdout is one JSON object
    assert code == 2 and json.loads(out)["exit_code"] == 2
    assert not (tmp_path / "x.safetensors").exists() and not (tmp_path / "m.onnx").exists()


def test_truncated_onnx_exits_2(run, digits_onnx, tmp_path):
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(digits_onnx.read_bytes()[: digits_onnx.stat().st_size // 2])
    code, _, err = run("info", cut)
    assert code == 2 and "cut.onnx: not a valid ONNX model" in err


def test_info_flags_conflict_with_a_model(run, digits_onnx):
    code, _, err = run("info", digits_onnx, "--alpha", "0.5")
    assert code == 2 and "--alpha with" in err and "give one or the other" in err


def test_info_json(run):
    code, out, _ = run("info", "--alpha", "0.75", "--json")
    r = json.loads(out)
    assert code == 0 and (r["alpha"], r["resolution"], r["classes"]) == (0.75, 224, 1000)
    assert (r["macs"], r["params"]) == (325_400_448, 2_585_560) and len(r["layers"]) == 29
    code, out, _ = run("info", "--standard-conv")
    assert code == 0 and "4,867,293,184 MACs" in out and "block13 " in out


def test_info_on_onnx_compares_with_cost_model(run, digits_onnx):
    code, out, _ = run("info", digits_onnx, "--json")
    r = json.loads(out)
    assert code == 0 and r["agree"] is True and r["passed"] is True
    assert r["graph_macs"] == r["macs"] == r["cost_model"]["macs"] == 3_331_072
    assert r["graph_params"] == r["cost_model"]["params_folded"] == 212_906
    assert (r["alpha"], r["resolution"], r["classes"], r["params"]) == (0.25, 64, 10, 215_642)
    code, out, _ = run("info", digits_onnx)
    assert code == 0 and "agree layer by layer" in out


def test_train_and_export_verbs(run, tmp_path):
    ckpt, model = tmp_path / "u.safetensors", tmp_path / "u.onnx"
    code, out, err = run("train", "--data", "digits", "--alpha", "0.25", "--resolution", "40",
                         "--epochs", "0", "-o", ckpt, "--json")
    r = json.loads(out)
    assert code == 0 and r["config"]["classes"] == 10 and r["epochs"] == 0
    assert r["calibration_inputs"] == 64 and r["checkpoint"] == str(ckpt)
    code, out, err = run("export", ckpt, "-o", model, "--batch", "dynamic", "--json")
    r = json.loads(out)
    assert code == 0 and r["path"] == str(model) and r["opset"] == 17
    assert r["max_abs_error_vs_torch"] <= r["tolerance"] and r["batch"] == "dynamic"
    code, out, _ = run("export", ckpt, "-o", model)
    assert code == 0 and "max abs error" in out


def _onnx_model(path, kind: str):
    """A tiny conv model written with onnx.helper: with a Resize, a float16 input, or an
    unnamed dynamic width."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    elem = TensorProto.FLOAT16 if kind == "float16" else TensorProto.FLOAT
    dims = [1, 3, 16, "w" if kind == "dynamic_width" else 16]
    w = numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float16 if kind == "float16"
                                        else np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv")]
    inits = [w]
    if kind == "resize":
        inits.append(numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"))
        nodes.append(helper.make_node("Resize", ["c", "", "scales"], ["y"], name="upsample"))
    else:
        nodes.append(helper.make_node("Relu", ["c"], ["y"], name="relu"))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", elem, dims)],
                              [helper.make_tensor_value_info("y", elem, [1, 4, None, None])],
                              inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.mark.parametrize("kind,pattern", [
    ("resize", r"operator Resize \(node 'upsample'\) is outside the MobileNetV1 family"),
    ("float16", r"input 'x' has dtype float16; compile takes float32"),
    ("dynamic_width", r"input 'x': dimension 3 \('w'\) is not static"),
])
def test_compile_refuses_what_it_cannot_take(run, tmp_path, kind, pattern):
    model = _onnx_model(tmp_path / f"{kind}.onnx", kind)
    code, out, err = run("compile", model, "--target", "host", "-o", tmp_path / "art")
    assert code == 2 and out == ""
    assert re.search(re.escape(str(model)) + ": " + pattern, err), err
    assert not (tmp_path / "art").exists()
