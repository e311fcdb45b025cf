"""Patch-based execution of the early layers (compiler/patches.py, patch_plan.py): the plan's
arena and multiply-adds against numbers computed here from the network's shapes, int8
bit-exact and fp32 within 1e-4 of their references, the budget refusal with both plans, and
`info`'s plan."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from compiled import cli, cli_json

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def models(untrained_ckpt_factory, tmp_path_factory):
    """MobileNetV1 0.25/96 (10 classes): fp32 and int8 (calibrated on photos)."""
    d = tmp_path_factory.mktemp("patches")
    fp32, q = d / "m.onnx", d / "q.onnx"
    cli_json("export", untrained_ckpt_factory(0.25, 96, classes=10), "-o", fp32)
    cli_json("quantize", fp32, "--calib", "photos", "-o", q)
    return fp32, q


def _mnv1_shapes(alpha: float, res: int):
    """(kernel, stride, groups, cin, cout) per conv of MobileNetV1, from the paper's table."""
    c = lambda n: int(n * alpha)  # noqa: E731
    layers = [(3, 2, 1, 3, c(32))]
    spec = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + \
        [(1024, 2), (1024, 1)]
    cin = c(32)
    for cout, s in spec:
        layers += [(3, s, cin, cin, cin), (1, 1, 1, cin, c(cout))]
        cin = c(cout)
    return layers


def _brute_extra_macs(layers, res: int, tiles: int, stage: int) -> int:
    """Recomputed MACs by marking, for each tile, every output pixel each layer must
    produce (a boolean mask propagated back through the kernels), independently of
    patch_plan's interval arithmetic."""
    sizes = [res]
    for k, s, *_ in layers:
        sizes.append((sizes[-1] + 2 * (k // 2) - k) // s + 1)
    macs_px = [cout * (cin // g) * k * k for k, s, g, cin, cout in layers]
    plain = sum(sizes[i + 1] ** 2 * macs_px[i] for i in range(stage))
    done = 0
    n = sizes[stage]
    edges = [n * i // tiles for i in range(tiles + 1)]
    for r in range(tiles):
        for q in range(tiles):
            need = np.zeros((n, n), bool)
            need[edges[r]:edges[r + 1], edges[q]:edges[q + 1]] = True
            for i in reversed(range(stage)):
                done += int(need.sum()) * macs_px[i]
                k, s = layers[i][0], layers[i][1]
                prev = np.zeros((sizes[i], sizes[i]), bool)
                for y, x in zip(*np.nonzero(need)):
                    y0, x0 = y * s - k // 2, x * s - k // 2
                    prev[max(0, y0):y0 + k, max(0, x0):x0 + k] = True
                need = prev
    return done - plain



def test_spec_is_checked(models):
    r = cli("compile", models[1], "--target", "host", "-o", "/tmp/never", "--patches", "3x2@4",
            check=False)
    assert r.returncode == 2 and "PxP@K" in r.stderr


def test_int8_patched_is_bit_exact_on_the_host(models, tmp_path):
    art = tmp_path / "host"
    r = cli_json("compile", models[1], "--target", "host", "-o", art, "--patches", "3x3@4")
    m = json.loads((art / "manifest.json").read_text())
    assert m["patches"]["split"] == "3x3@4" and r["kernels"] > 27
    p = cli_json("parity", art, "--data", "digits:20", "--reference", "integer")
    assert p["passed"] and p["n"] == 20 and p["max_abs_error"] == 0.0


def test_fp32_patched_within_1e_4(models, tmp_path):
    art = tmp_path / "f"
    cli_json("compile", models[0], "--target", "host", "-o", art, "--patches", "2x2@8")
    p = cli_json("parity", art, "--data", "digits:10")
    assert p["n"] == 10 and p["max_abs_error"] <= 1e-4, p["max_abs_error"]






@pytest.mark.slow
@pytest.mark.emulator
def test_int8_cortex_m_patched_is_bit_exact_over_serial(models, tmp_path):
    """The int8 Cortex-M path (each layer a call of the runtime's C kernel) with the target
    file's default: the calls re-made per tile with the tile's shape and border pads give
    the integer reference's outputs; the weights are stored once, not per tile."""
    art = tmp_path / "m7"
    r = cli_json("compile", models[1], "--target", "mps2-an500", "-o", art)
    m = json.loads((art / "manifest.json").read_text())
    assert m["patches"]["requested"] == "auto" and m["patches"]["split"] == "2x2@8"
    assert r["arena_bytes"] <= 0.5 * 55_296                   # uint8 layer-by-layer bound
    plain = cli_json("compile", models[1], "--target", "mps2-an500", "-o", tmp_path / "off",
                     "--patches", "off")
    assert plain["arena_bytes"] == 55_296 and plain["weight_bytes"] == r["weight_bytes"]
    text = cli("info", art).stdout      # the plan per layer, both arenas and the bound
    assert "patches: 2x2@8 (requested auto): arena 26,048 B planned" in text
    assert "layer by layer 55,296 B (input read in the frame buffer); layer-by-layer bound " \
        "55,296 B" in text and "tile in" in text
    p = cli_json("parity", art, "--device", "emulated", "--data", "digits:3",
                 "--reference", "integer")
    assert p["passed"] and p["n"] == 3 and p["max_abs_error"] == 0.0


@pytest.mark.slow
@pytest.mark.emulator
def test_int8_cortex_m_tiles_of_a_map_as_high_as_it_is_deep(digits_onnx, tmp_path):
    """At 0.25/64 step 4 (dw2) outputs 16x16x16, channels-last: its height equals its
    channels, and the tiles must still be joined along height and width (the C kernels'
    outputs are NHWC whatever their shape), bit-exact."""
    q, art = tmp_path / "q.onnx", tmp_path / "m"
    cli_json("quantize", digits_onnx, "--calib", "digits:32", "-o", q)
    cli_json("compile", q, "--target", "mps2-an500", "-o", art, "--patches", "2x2@4")
    assert json.loads((art / "manifest.json").read_text())["patches"]["split"] == "2x2@4"
    p = cli_json("parity", art, "--device", "emulated", "--data", "digits:3",
                 "--reference", "integer")
    assert p["passed"] and p["n"] == 3 and p["max_abs_error"] == 0.0


@pytest.mark.slow
def test_fits_only_with_patches(models, tmp_path):
    """A board whose RAM holds the patched plan but not the layer-by-layer one (the F722's
    file with 88 KB of SRAM, for the 0.25/96 int8 model): refused with both plans without
    patches, accepted and built with them."""
    text = (REPO / "targets" / "nucleo-f722ze.toml").read_text()
    old = "length = 0x00040000"
    assert old in text, "targets/nucleo-f722ze.toml's sram changed"
    target = tmp_path / "small" / "nucleo-f722ze.toml"
    target.parent.mkdir()
    target.write_text(text.replace(old, "length = 0x00016000"))
    r = cli("compile", models[1], "--target", target, "-o", tmp_path / "off", "--patches",
            "off", check=False)
    assert r.returncode == 1 and "does not fit" in r.stderr and "arena 55,296" in r.stderr
    built = cli_json("compile", models[1], "--target", target, "-o", tmp_path / "auto")
    assert built["budget"]["stage"] == "linked" and built["arena_bytes"] < 55_296 // 2
    assert built["budget"]["ram_bytes"] <= 0x16000


def test_plan_for_0_25_at_96_matches_the_shapes(models):
    """The fp32 graph on the Cortex-M7 target (NCHW, plain Relax convolutions): the plan's
    bound and extra multiply-adds against numbers computed here from the paper's shapes."""
    from edge_mnv1.artifact.target import load_target
    from edge_mnv1.compiler import frontend, patch_plan, patches
    from edge_mnv1.onnxio.model_file import load_onnx

    mod, _, int_model = frontend.import_model(load_onnx(models[0]),
                                              target=load_target("mps2-an500"))
    chain = patches.analyse(mod, int_model)
    layers = _mnv1_shapes(0.25, 96)
    assert len(chain.steps) == len(layers) == 27
    bound = 4 * (48 * 48 * 8 + 48 * 48 * 16)       # pw1 in + out, fp32
    plan = patch_plan.search(chain.steps, chain.input_bytes)
    assert plan.layer_by_layer_bound == bound
    assert str(plan.split) == "2x2@8"              # tiles of dw4's 12x12 output
    assert plan.extra_macs == _brute_extra_macs(layers, 96, 2, 8)
    assert plan.extra_macs <= 0.10 * sum(s.macs for s in chain.steps)
    assert plan.arena_patched <= 0.5 * bound
    assert plan.arena_layer_by_layer == 4 * 96 * 96 * 3 + bound
