"""Any MobileNetV1 a user brings: models from plain `torch.onnx.export` (not `edge-mnv1
export`, so no metadata) with a non-square input, one channel, a dynamic batch axis or a
static batch of 2 compile, pass their self-test and pass parity against ONNX Runtime on the
host and on rpi4 (qemu-aarch64); what compile cannot take is refused with exit 2 and a
message naming the input and the unsupported thing.

The models are small MobileNetV1-style nets (conv, depthwise, pointwise, BN, ReLU, average
pool, linear) trained for a few seconds on the digits fitted to their input, so that their
outputs depend on the input and parity is evidence (no "nearly constant outputs" warning)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edge_mnv1.artifact.artifact import Artifact
from edge_mnv1.device.connect import open_device
from edge_mnv1.evaluation.references import OnnxRuntimeReference
from edge_mnv1.onnxio.model_inputs import fit_images, fitted_inputs

from compiled import cli, cli_json

# name -> (channels, height, width, batch exported, dynamic batch axis)
SHAPES = {
    "nonsquare": (3, 64, 48, 1, False),
    "gray": (1, 40, 40, 1, False),
    "dynamic": (3, 32, 32, 1, True),
    "batch2": (3, 32, 32, 2, False),
}
LIMIT = 24  # parity inputs: a multiple of every batch here, cheap under qemu


def _network(channels: int, view_flatten: bool):
    """MobileNetV1 in miniature: stem conv, two depthwise separable blocks, pool, linear.
    `view_flatten` flattens with x.view(x.size(0), -1), whose dynamic-batch export is
    Shape/Gather/Unsqueeze/Concat/Reshape instead of Flatten."""
    import torch
    from torch import nn

    def cbr(cin, cout, k, s, groups=1):
        return [nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False),
                nn.BatchNorm2d(cout), nn.ReLU()]

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(*cbr(channels, 8, 3, 2), *cbr(8, 8, 3, 1, 8),
                                          *cbr(8, 16, 1, 1), *cbr(16, 16, 3, 2, 16),
                                          *cbr(16, 32, 1, 1), nn.AdaptiveAvgPool2d(1))
            self.fc = nn.Linear(32, 10)

        def forward(self, x):
            x = self.features(x)
            return self.fc(x.view(x.size(0), -1) if view_flatten else torch.flatten(x, 1))

    torch.manual_seed(0)
    return Net()


def _train(net, chw, steps: int = 120):
    """A few seconds of Adam on the digits train split fitted to `chw`."""
    import torch

    torch.set_num_threads(1)
    x, y, _, _ = fitted_inputs("digits", chw, split="train")
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    net.train()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (64,), generator=gen)
        loss = torch.nn.functional.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def export_model(path: Path, name: str) -> Path:
    import torch

    c, h, w, n, dynamic = SHAPES[name]
    net = _train(_network(c, view_flatten=dynamic), (c, h, w))
    axes = {"image": {0: "N"}, "scores": {0: "N"}} if dynamic else None
    torch.onnx.export(net, (torch.zeros(n, c, h, w),), str(path), dynamo=False,
                      opset_version=17, input_names=["image"], output_names=["scores"],
                      dynamic_axes=axes)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("any_shape")
    return {name: export_model(root / f"{name}.onnx", name) for name in SHAPES}


def compiled(models: dict, name: str, target: str, root: Path) -> tuple[Path, str]:
    """(artifact, compile's stderr)."""
    art = root / f"{name}-{target}"
    r = cli("compile", models[name], "--target", target, "-o", art)
    return art, r.stderr


def golden_cases(art: Path) -> tuple[np.ndarray, np.ndarray]:
    """The artifact's golden inputs and outputs, one row per case, each of the model's
    full input (output) shape."""
    m = json.loads((art / "manifest.json").read_text())
    shape_in, shape_out = m["input"]["shape"], m["output"]["shape"]
    cases = m["golden"]["cases"]
    raw = np.frombuffer((art / "golden.bin").read_bytes(), np.float32)
    n_in = cases * int(np.prod(shape_in))
    assert raw.size == n_in + cases * int(np.prod(shape_out))
    return raw[:n_in].reshape(cases, *shape_in), raw[n_in:].reshape(cases, *shape_out)


def check_artifact(art: Path, model: Path, name: str, log: str) -> None:
    """Manifest shapes, golden data from ONNX Runtime on the real input shape, self-test."""
    import onnxruntime as ort

    c, h, w, n, dynamic = SHAPES[name]
    m = json.loads((art / "manifest.json").read_text())
    assert m["input"]["shape"] == [n, c, h, w] and m["output"]["shape"] == [n, 10]
    assert m["input"]["declared_shape"] == (["N", c, h, w] if dynamic else [n, c, h, w])
    assert m["input"]["dynamic_batch"] is dynamic
    assert ("dynamic batch axis ('N'): compiled for batch 1" in log) is dynamic
    x, y = golden_cases(art)
    assert len(x) == m["golden"]["cases"] >= 1
    assert len({xi.tobytes() for xi in x.reshape(-1, c, h, w)}) == len(x) * n  # real images
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    for xi, yi in zip(x, y):
        np.testing.assert_allclose(sess.run(None, {"image": xi})[0], yi, rtol=0, atol=1e-6)
    with open_device("local", Artifact.load(art), timeout=120) as dev:
        st = dev.client.selftest()
    assert st["passed"] is True and st["max_abs_error"] <= 1e-4


def check_parity(art: Path, name: str) -> dict:
    c, h, w, n, _ = SHAPES[name]
    r = cli_json("parity", art, "--device", "local", "--data", "digits", "--limit", LIMIT)
    assert r["passed"], r
    assert r["reference"] == "onnxruntime" and r["n"] == LIMIT
    assert r["top1_agreement"] == 1.0 and r["max_abs_error"] <= 1e-4 and r["cosine"] >= 0.9999
    assert r["warnings"] == []  # trained: the outputs depend on the input
    assert r["accuracy_reference"] >= 0.5  # the digits reached the model as digits
    if (h, w) != (max(h, w),) * 2:
        assert f"center-cropped from {max(h, w)}x{max(h, w)} to {h}x{w}" in r["preprocessing"]
    if c == 1:
        assert "made gray" in r["preprocessing"]
    return r


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SHAPES))
def test_compiles_and_passes_parity_on_host(models, name, tmp_path):
    art, log = compiled(models, name, "host", tmp_path)
    check_artifact(art, models[name], name, log)
    check_parity(art, name)


@pytest.mark.slow
@pytest.mark.emulator
@pytest.mark.parametrize("name", list(SHAPES))
def test_compiles_and_passes_parity_on_rpi4_under_qemu(models, name, tmp_path):
    art, log = compiled(models, name, "rpi4", tmp_path)
    check_artifact(art, models[name], name, log)
    r = check_parity(art, name)
    assert r["target"] == "rpi4"


@pytest.mark.slow
def test_batch2_bench_and_random_inputs(models, tmp_path):
    art, _ = compiled(models, "batch2", "host", tmp_path)
    r = cli_json("parity", art, "--device", "local", "--data", "random:7")
    # 7 seeded random inputs, cut to 6 for a model that takes 2 per request
    assert r["passed"] and r["n"] == 6, r
    assert r["preprocessing"].startswith("seeded random inputs") and "cut to 6" in \
        r["preprocessing"]
    b = cli_json("bench", art, "--device", "local", "--runs", 5, "--warmup", 1)
    assert b["passed"] and len(b["ticks"]) == 5 and all(t > 0 for t in b["ticks"])
    assert b["host"]["onnxruntime"]["median_ms"] > 0  # ONNX Runtime took the batch of 2


def _family_model(path: Path) -> Path:
    """The family's other operators: BN left unfolded, ReLU6 (Clip), AveragePool, Dropout,
    Mul, Squeeze, MatMul + Add (a linear layer written out), Softmax."""
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU6(),
                nn.Conv2d(8, 8, 3, 1, 1, groups=8), nn.BatchNorm2d(8), nn.ReLU6(),
                nn.Conv2d(8, 16, 1), nn.ReLU(), nn.AvgPool2d(2), nn.AdaptiveAvgPool2d(1),
                nn.Dropout(0.1))
            self.w = nn.Parameter(torch.randn(16, 10) * 0.3)
            self.b = nn.Parameter(torch.randn(10) * 0.1)

        def forward(self, x):
            x = self.features(x).squeeze(-1).squeeze(-1) * 2.0
            return torch.softmax(x @ self.w + self.b, dim=1)

    torch.manual_seed(0)
    net = _train(Net(), (3, 48, 40), steps=60)
    torch.onnx.export(net, (torch.zeros(1, 3, 48, 40),), str(path), dynamo=False,
                      opset_version=13, do_constant_folding=False, input_names=["image"],
                      output_names=["scores"])
    return path


@pytest.mark.slow
def test_the_family_s_other_operators_compile_and_pass_parity(tmp_path):
    import onnx

    model = _family_model(tmp_path / "family.onnx")
    ops = {n.op_type for n in onnx.load(str(model)).graph.node}
    assert {"BatchNormalization", "Clip", "AveragePool", "Mul", "Squeeze", "MatMul", "Add",
            "Softmax"} <= ops, ops
    art = tmp_path / "art"
    cli("compile", model, "--target", "host", "-o", art)
    with open_device("local", Artifact.load(art), timeout=120) as dev:
        assert dev.client.selftest()["passed"] is True
    r = cli_json("parity", art, "--device", "local", "--data", "digits", "--limit", LIMIT)
    assert r["passed"] and r["n"] == LIMIT and r["max_abs_error"] <= 1e-4, r


def test_fixed_batch_reference_pads_a_partial_batch(models):
    """A batch-2 model's ONNX Runtime reference on 5 inputs: the last one alone, padded."""
    import onnxruntime as ort

    x = fitted_inputs("random:5", SHAPES["batch2"][:3])[0]
    got = OnnxRuntimeReference(models["batch2"]).run(x)
    sess = ort.InferenceSession(str(models["batch2"]), providers=["CPUExecutionProvider"])
    want = np.concatenate([sess.run(None, {"image": x[i:i + 2]})[0] for i in (0, 2)]
                          + [sess.run(None, {"image": x[[4, 4]]})[0][:1]])
    np.testing.assert_allclose(got, want, rtol=0, atol=0)


def test_fit_images_crops_the_center_and_makes_gray():
    x = np.arange(2 * 3 * 6 * 6, dtype=np.float32).reshape(2, 3, 6, 6)
    y, done = fit_images(x, (1, 6, 4))
    assert y.shape == (2, 1, 6, 4) and len(done) == 2
    np.testing.assert_array_equal(y[:, 0], x[:, :, :, 1:5].mean(axis=1))
    same, nothing = fit_images(x, (3, 6, 6))
    assert nothing == [] and np.array_equal(same, x)


# -- refused: exit 2 and a message naming the input and the unsupported thing ---------------

def _refused_model(path: Path, kind: str) -> Path:
    import torch
    from torch import nn

    torch.manual_seed(0)
    shape, dtype = (1, 3, 32, 32), torch.float32
    body = [nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU()]
    if kind == "sigmoid":
        body.append(nn.Sigmoid())
    elif kind == "layernorm":
        body.append(nn.LayerNorm([8, 16, 16]))
    elif kind == "float64":
        dtype = torch.float64
    net = nn.Sequential(*body, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    axes = None
    if kind == "rank3":
        net, shape = nn.Sequential(nn.Conv1d(3, 8, 3), nn.Flatten(), nn.Linear(8 * 30, 4)), \
            (1, 3, 32)
    elif kind == "dynamic_hw":
        axes = {"image": {0: "N", 2: "height", 3: "width"}}
    torch.onnx.export(net.to(dtype).eval(), (torch.zeros(*shape, dtype=dtype),), str(path),
                      dynamo=False, opset_version=17, input_names=["image"],
                      output_names=["scores"], dynamic_axes=axes)
    return path


REFUSED = {  # kind -> what the message must say
    "sigmoid": r"operator Sigmoid \(node '[^']*Sigmoid[^']*'\) is outside the MobileNetV1 family",
    "layernorm": r"operator LayerNormalization \(node .*\) is outside the MobileNetV1 family",
    "float64": r"input 'image' has dtype float64; compile takes float32",
    "rank3": r"input 'image' has rank 3 \(shape \[1, 3, 32\]\).*N x C x H x W",
    "dynamic_hw": r"input 'image': dimension 2 \('height'\) is not static",
}


@pytest.mark.parametrize("kind", list(REFUSED))
def test_unsupported_model_is_refused_with_exit_2(kind, tmp_path):
    import re

    model = _refused_model(tmp_path / f"{kind}.onnx", kind)
    art = tmp_path / "art"
    r = cli("compile", model, "--target", "host", "-o", art, "--json", check=False)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    assert re.search(re.escape(str(model)) + ": " + REFUSED[kind], r.stderr), r.stderr[-2000:]
    assert json.loads(r.stdout)["exit_code"] == 2
    assert not (art / "manifest.json").exists()


@pytest.mark.slow
def test_quantize_takes_constants_shared_through_identity(tmp_path):
    """torch.onnx.export of an untrained MobileNetV1 shares its equal BN-folded biases through
    Identity nodes; quantize makes each an initializer of its own, and the result reads into
    the integer model."""
    import onnx

    from edge_mnv1.onnxio.export import export_random
    from edge_mnv1.quant.qdq import from_onnx

    src = export_random(tmp_path / "random.onnx", 32)
    assert any(n.op_type == "Identity" for n in onnx.load(str(src)).graph.node)
    out = tmp_path / "random-int8.onnx"
    r = cli_json("quantize", src, "--calib", "digits:20", "-o", out)
    assert r["calibration_images"] == 20 and r["integer_layers"] == 27 + 3  # + pool, flatten, fc
    q = onnx.load(str(out))
    assert not any(n.op_type == "Identity" for n in q.graph.node)
    assert [la.op for la in from_onnx(q).layers].count("conv") == 27
