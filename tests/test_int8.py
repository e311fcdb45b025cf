"""int8: the quantize verb, the integer reference against an independent float computation,
and compiled integer kernels bit-identical to the reference on the host, the emulated Pi
(over ssh) and both emulated Cortex-M boards; the 256 KB / 512 KB board budget."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from edge_mnv1.onnxio.model_file import model_metadata, ort_session
from edge_mnv1.quant.fixedpoint import dequantize, fixed_point, quantize_input, requantize
from edge_mnv1.quant.qdq import from_onnx

from compiled import cli, cli_json


@pytest.fixture(scope="module")
def int8_model(digits_onnx, tmp_path_factory):
    """The trained digits model (0.25/64) quantized on 200 training images."""
    out = tmp_path_factory.mktemp("int8") / "digits-int8.onnx"
    r = cli_json("quantize", digits_onnx, "--calib", "digits:200", "-o", out)
    return out, r


# ---- the arithmetic ------------------------------------------------------------------------

def test_fixed_point_multiplier_is_31_bits_and_requantize_rounds_half_up():
    rng = np.random.default_rng(0)
    for real in np.concatenate([rng.uniform(1e-6, 1.0, 200), [2.0 ** -20, 0.5, 0.999999]]):
        m, s = fixed_point(float(real))
        assert 2 ** 30 <= m < 2 ** 31
        assert abs(m * 2.0 ** -s - real) <= real * 2.0 ** -30
    # Exact ties go up (toward +infinity), negative ones too: -2.5 -> -2, 2.5 -> 3.
    half = np.array([[5, -5, 7, -7]], np.int64)   # x / 2 with M = 2^30, S = 31
    got = requantize(half, np.int64(2 ** 30), np.int64(31), 0, -128, 127)
    assert got.tolist() == [[3, -2, 4, -3]]


def test_requantize_is_the_32_bit_rule_of_sqrdmulh_and_srshr():
    """The reference's steps are the instructions' definitions, checked with Python's
    unbounded integers: SQRDMULH's doubled product's high half with rounding (saturating
    only at -2^31 * -2^31, which a positive M excludes), then a rounding shift right; a
    multiplier >= 1 (S < 31) shifts the accumulator left with saturation instead."""
    rng = np.random.default_rng(1)
    acc = np.concatenate([rng.integers(-2 ** 25, 2 ** 25, 3000, dtype=np.int64),
                          np.arange(-70, 70, dtype=np.int64), [2 ** 31 - 1, -2 ** 31]])
    for real in (0.7, 2.0 ** -9 * 1.37, 2.0 ** -20 * 1.9, 1.5, 3.9e3):
        m, s = fixed_point(real)
        got = requantize(acc, np.int64(m), np.int64(s), 3, -(2 ** 40), 2 ** 40)
        left, right = max(0, 31 - s), max(0, s - 31)
        want = []
        for v in acc.tolist():
            a = min(max(v << left, -2 ** 31), 2 ** 31 - 1)
            t = (2 * a * m + 2 ** 31) >> 32                         # SQRDMULH
            u = (t + (1 << right - 1)) >> right if right else t     # SRSHR
            want.append(u + 3)
        assert got.tolist() == want, real
        small = acc[3000:3140]                      # small enough not to saturate
        assert np.all(np.abs(got[3000:3140] - 3 - small * real) <= 0.5 + 1e-9 * real)


def test_integer_reference_layers_match_an_independent_float_computation(int8_model):
    """Each layer recomputed in float64 by PyTorch from the same integer input, dequantized
    weights and bias, then rounded half up: the integer result is within one step and
    almost always exact (it rounds twice, at the high multiply and at the shift, which only
    matters within 2^-right of a tie: right is 4-11 here)."""
    import torch
    import torch.nn.functional as F

    from edge_mnv1.model import data
    import types

    model = from_onnx(onnx.load(str(int8_model[0])))
    x, _, _ = data.load_dataset("digits", types.SimpleNamespace(resolution=64),
                                data.Preprocessing.digits(64), split="test", limit=3)
    checked = exact = worst = 0
    for xi in x:
        q = quantize_input(xi[None], model.input_q.scale, model.input_q.zero_point)
        acts = model.activations(q)
        for layer in model.layers:
            if layer.op == "reshape":
                continue
            qx, qy = model.qparams[layer.x], model.qparams[layer.y]
            xr = torch.from_numpy((acts[layer.x] - qx.zero_point).astype(np.float64) * qx.scale)
            if layer.op == "avgpool":
                yr = xr.mean(dim=(2, 3), keepdim=True)
            else:
                sw = (layer.mult * 2.0 ** -layer.shift) * qy.scale / qx.scale  # s_w from M, S
                w = torch.from_numpy(layer.weight.astype(np.float64))
                sw_t = torch.from_numpy(_weight_scales(int8_model[0], layer))
                w = w * sw_t.reshape((-1,) + (1,) * (w.ndim - 1))
                b = torch.from_numpy(layer.bias.astype(np.float64)) * qx.scale * sw_t
                assert np.allclose(sw, sw_t.numpy(), rtol=1e-8)
                if layer.op == "conv":
                    p = layer.pads
                    yr = F.conv2d(F.pad(xr, (p[1], p[3], p[0], p[2])), w, b,
                                  stride=layer.strides, groups=layer.groups)
                else:
                    yr = F.linear(xr, w, b)
            want = np.clip(np.floor(yr.numpy() / qy.scale + 0.5) + qy.zero_point,
                           layer.lo, layer.hi)
            diff = np.abs(acts[layer.y] - want)
            worst = max(worst, int(diff.max()))
            checked += diff.size
            exact += int((diff == 0).sum())
    assert worst <= 1
    assert exact / checked > 0.995, (exact, checked)


def _weight_scales(model_path, layer) -> np.ndarray:
    """The weight scales as written in the QDQ file (found by the weight tensor's values)."""
    from onnx import numpy_helper

    m = onnx.load(str(model_path))
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    for n in m.graph.node:
        if n.op_type == "DequantizeLinear" and n.input[0] in inits and \
                inits[n.input[0]].shape == layer.weight.shape and \
                np.array_equal(inits[n.input[0]], layer.weight):
            return np.broadcast_to(inits[n.input[1]].astype(np.float64).reshape(-1),
                                   (layer.weight.shape[0],)).copy()
    raise AssertionError("weight not found")


def test_integer_reference_agrees_with_onnxruntime_qdq(int8_model):
    """ONNX Runtime runs the same QDQ file in float (no optimizations), rounding once per
    layer; the integer reference rounds twice (high multiply, then shift), and the one-step
    differences that makes in a few values of a layer carry through the 27 layers. The logits
    stay within a few output steps (about one on average) and agree on top-1."""
    from edge_mnv1.model import data
    import types

    path = int8_model[0]
    model = from_onnx(onnx.load(str(path)))
    sess = ort_session(path, optimize=False)
    x, _, _ = data.load_dataset("digits", types.SimpleNamespace(resolution=64),
                                data.Preprocessing.digits(64), split="test", limit=60)
    o = model.output_q
    steps, agree = [], 0
    for xi in x:
        q = quantize_input(xi[None], model.input_q.scale, model.input_q.zero_point)
        mine = dequantize(model.run(q), o.scale, o.zero_point)
        theirs = sess.run(None, {sess.get_inputs()[0].name: xi[None]})[0]
        steps.append(float(np.abs(mine - theirs).max() / o.scale))
        agree += int(mine.argmax() == theirs.argmax())
    assert max(steps) <= 4.0 + 1e-4 and np.mean(steps) <= 1.5, steps
    assert agree == len(x)


# ---- the quantize verb -----------------------------------------------------------------------

def test_quantize_keeps_accuracy_within_one_point(int8_model):
    path, r = int8_model
    assert r["eval_images"] == 450 and r["calibration_images"] == 200
    assert r["accuracy_int8"] >= r["accuracy_fp32"] - 0.01, r
    assert r["top1_agreement"] >= 0.97
    m = onnx.load(str(path))
    onnx.checker.check_model(m)
    ops = {n.op_type for n in m.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops   # standard QDQ
    keys = {p.key for p in m.metadata_props}   # the file format: prefixed keys
    assert {"edge_mnv1.quantization", "edge_mnv1.config", "edge_mnv1.preprocessing"} <= keys
    scheme = model_metadata(m)["quantization"]
    assert scheme["weights"].startswith("int8") and scheme["calibration_images"] == 200


@pytest.mark.parametrize("calib,message", [
    ("digits:0", "positive integer"),
    ("EMPTY.npy", "holds no images"),
    ("WRONG.npy", "the model takes N x [3, 64, 64]"),
    ("EMPTYDIR", "no images"),
])
def test_bad_calibration_sets_are_refused(digits_onnx, tmp_path, calib, message):
    np.save(tmp_path / "EMPTY.npy", np.zeros((0, 3, 64, 64), np.float32))
    np.save(tmp_path / "WRONG.npy", np.zeros((4, 3, 32, 32), np.float32))
    (tmp_path / "EMPTYDIR").mkdir()
    if calib != "digits:0":
        calib = str(tmp_path / calib)
    r = cli("quantize", digits_onnx, "--calib", calib, "-o", tmp_path / "q.onnx", check=False)
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert not (tmp_path / "q.onnx").exists()


def test_a_float_model_is_not_an_integer_model(digits_onnx):
    from edge_mnv1.errors import UsageError

    with pytest.raises(UsageError, match="not quantized|QuantizeLinear"):
        from_onnx(onnx.load(str(digits_onnx)))


# ---- compiled: bit-exact on every target -----------------------------------------------------

def _compile(model, target, out):
    return cli_json("compile", model, "--target", target, "-o", out)


def test_host_kernels_are_integer_and_bit_exact_on_all_digits(int8_model, tmp_path):
    art = tmp_path / "host"
    r = _compile(int8_model[0], "host", art)
    manifest = json.loads((art / "manifest.json").read_text())
    assert manifest["input"]["dtype"] == "uint8" and manifest["output"]["dtype"] == "uint8"
    assert manifest["golden"]["reference"] == "integer"
    # The default schedules' accumulators (compiler/schedules/) may take a small workspace.
    assert r["workspace_bytes"] <= 4096 and r["arena_bytes"] == r["liveness_lower_bound"]
    assert manifest["quantization"]["input"]["zero_point"] == 128
    # Channels-last, and no widened copy of the input: every tensor in the arena is uint8.
    assert manifest["layout"]["activations"] == "NHWC"
    p = cli_json("parity", art, "--data", "digits", "--reference", "integer")
    assert p["passed"] and p["n"] == 450 and p["max_abs_error"] == 0.0
    assert p["top1_agreement"] == 1.0
    # Against the float references it reports the quantization error, in output steps.
    f = cli_json("parity", art, "--data", "digits:100")
    assert f["reference"] in ("pytorch", "onnxruntime") and f["passed"]
    assert f["thresholds"]["max_abs_error"] is None and f["max_abs_error"] > 0


def test_integer_reference_refused_for_a_float_artifact(digits_onnx, tmp_path):
    art = tmp_path / "f"
    _compile(digits_onnx, "host", art)
    r = cli("parity", art, "--data", "digits:2", "--reference", "integer", check=False)
    assert r.returncode == 2 and "int8 models" in r.stderr


@pytest.mark.slow
@pytest.mark.ssh
def test_rpi4_over_ssh_is_bit_exact_on_all_digits(int8_model, tmp_path):
    art = tmp_path / "rpi4"
    _compile(int8_model[0], "rpi4", art)
    p = cli_json("parity", art, "--device", "emulated", "--data", "digits",
                 "--reference", "integer")
    assert p["passed"] and p["n"] == 450 and p["max_abs_error"] == 0.0


@pytest.mark.slow
@pytest.mark.emulator
@pytest.mark.parametrize("board", ["mps2-an500", "mps3-an547"])
def test_cortex_m_is_bit_exact(int8_model, tmp_path, board):
    """30 digits per board here (the emulated serial link moves ~20 KB/s: 0.6 s a digit);
    docs/int8.md reports more.
    The convolutions run the runtime's DSP (M7) or Helium (M55) kernels; the trained model
    has a channel whose multiplier is >= 1 and one with no right shift, so both
    requantization paths of the kernels are exercised."""
    art = tmp_path / board
    _compile(int8_model[0], board, art)
    manifest = json.loads((art / "manifest.json").read_text())
    feature = {"mps2-an500": "dsp", "mps3-an547": "mve"}[board]
    calls = [k["kernel"] for k in manifest["kernels"]]
    # first conv, 13 depthwise, 13 pointwise, and once more per extra tile for each layer
    # the target's patch plan tiles (docs/mcu.md, "Patch-based execution")
    plan = manifest.get("patches") or {}
    tiled = sum(s["kind"] == "conv" for s in plan.get("steps", [])[:plan.get("stage", 0)])
    assert sum(c.startswith("s8_") and f"_{feature}" in c for c in calls) == \
        27 + (plan.get("tiles", 1) ** 2 - 1) * tiled
    assert not [c for c in calls if "conv2d" in c], calls   # no TVM convolution left
    assert (art / "kernels_s8_arm_m.c").is_file()
    p = cli_json("parity", art, "--device", "emulated", "--data", "digits:30",
                 "--reference", "integer")
    assert p["passed"] and p["n"] == 30 and p["max_abs_error"] == 0.0


@pytest.fixture(scope="module")
def int8_model_96(untrained_ckpt_factory, tmp_path_factory):
    """An untrained 0.25/96 10-class model quantized on 50 digits (shared by both boards)."""
    ckpt = untrained_ckpt_factory(0.25, 96, classes=10)
    work = tmp_path_factory.mktemp("int8-96")
    cli_json("export", ckpt, "-o", work / "m.onnx")
    cli_json("quantize", work / "m.onnx", "--calib", "digits:50", "-o", work / "m-int8.onnx")
    return work / "m-int8.onnx"


@pytest.mark.slow
@pytest.mark.emulator
@pytest.mark.parametrize("board,bound", [
    ("mps2-an500", 24_500_000),   # CMSIS-NN's count on the Cortex-M7 (docs/int8.md)
    ("mps3-an547", 6_400_000),    # CMSIS-NN's count on the Cortex-M55
])
def test_alpha_0_25_at_96_int8_counts_and_arena(int8_model_96, tmp_path, board, bound):
    """0.25/96 int8 (7.49M MACs): exact on 10 digits, instructions per inference within the
    bound, and the arena at the uint8 layer-by-layer bound: the largest pair of consecutive
    activations, 48 x 48 x 8 + 48 x 48 x 16 = 55,296 B (the input is read in place)."""
    q = int8_model_96
    art = tmp_path / board
    r = cli_json("compile", q, "--target", board, "-o", art, "--patches", "off")  # layer by layer
    assert r["arena_bytes"] == r["liveness_lower_bound"] == 48 * 48 * (8 + 16)
    p = cli_json("parity", art, "--device", "emulated", "--data", "digits:10",
                 "--reference", "integer")
    assert p["passed"] and p["max_abs_error"] == 0.0
    b = cli_json("bench", art, "--device", "emulated", "--no-host", "--runs", "3",
                 "--warmup", "1")
    assert b["tick_unit"] == "instructions"
    assert b["device_median_ticks"] <= bound, b["device_median_ticks"]


@pytest.mark.slow
def test_alpha_0_25_at_96_fits_a_256k_ram_512k_flash_board(untrained_ckpt_factory, tmp_path):
    ckpt = untrained_ckpt_factory(0.25, 96, classes=10)
    fp32 = tmp_path / "m.onnx"
    cli_json("export", ckpt, "-o", fp32)
    q = tmp_path / "m-int8.onnx"
    cli_json("quantize", fp32, "--calib", "photos", "-o", q, "--eval", "photos")
    r = cli_json("compile", q, "--target", "nucleo-f722ze", "-o", tmp_path / "f7", "--patches",
                 "off")   # layer by layer; tests/test_patches.py has the patched builds
    b = r["budget"]
    assert b["stage"] == "linked"
    assert b["flash_bytes"] <= 512 * 1024 and b["ram_bytes"] <= 256 * 1024, b
    assert r["arena_bytes"] == r["liveness_lower_bound"] and r["workspace_bytes"] == 0


def test_bench_times_int8_and_fp32_side_by_side(int8_model, digits_onnx, tmp_path):
    q, f = tmp_path / "q", tmp_path / "f"
    rq, rf = _compile(int8_model[0], "host", q), _compile(digits_onnx, "host", f)
    assert rq["macs"] == rf["macs"]   # same network: requantization constants are not MACs
    r = cli_json("bench", q, "--versus", f, "--runs", "5", "--warmup", "1", "--no-host")
    v = r["versus"]
    assert "-float32" in v["model"] and v["input_dtype"] == "float32"
    assert v["ratio"] == pytest.approx(r["device_median_ms"] / v["device_median_ms"])
    bad = cli("bench", q, "--versus", tmp_path / "nothing", check=False)
    assert bad.returncode == 2


@pytest.mark.slow
def test_tuned_integer_kernels_stay_bit_exact(int8_model, tmp_path):
    """MetaSchedule schedules the integer kernels like the fp32 ones; a schedule reorders
    loops, never the integers, so the tuned program still matches the reference exactly."""
    import os
    import subprocess
    import sys

    from compiled import CLI, REPO

    env = dict(os.environ, EDGE_MNV1_TUNING_ROOT=str(tmp_path / "records"))
    run = lambda *a: json.loads(subprocess.run(  # noqa: E731
        [*CLI, *map(str, a), "--json"], env=env, cwd=REPO, capture_output=True, text=True,
        check=True, timeout=1200).stdout)
    # --no-settle: every record stays applied, whichever is faster in the whole program.
    t = run("tune", int8_model[0], "--target", "host", "--trials", "8", "--minutes", "10",
            "--no-settle")
    assert "-int8" in t["model_key"] and t["trials_after"] >= 8
    run("compile", int8_model[0], "--target", "host", "-o", tmp_path / "tuned")
    manifest = json.loads((tmp_path / "tuned" / "manifest.json").read_text())
    assert manifest["tuning"]["applied"], "no record applied"
    p = cli_json("parity", tmp_path / "tuned", "--data", "digits:150", "--reference", "integer")
    assert p["passed"] and p["max_abs_error"] == 0.0
