"""Fast int8 kernels on Linux targets: the integer dot-product micro-kernel each CPU's
features select (x86 AVX-512 VNNI `vpdpbusd`, AVX2 `vpmaddwd`, AArch64 NEON `smull` +
`sadalp` on signed inputs, `sdot` where the target names +dotprod), bit-exact against the
integer reference, and bench's counts beside ONNX Runtime and the fp32 program."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import onnx
import pytest
from onnx import numpy_helper
import tvm
import tvm.s_tir as s_tir
from tvm import te

from edge_mnv1.artifact.target import load_target
from edge_mnv1.compiler import integer
from edge_mnv1.compiler.schedules import int8_requant_neon
from edge_mnv1.compiler.tvm_target import host_features, vector_unit
from edge_mnv1.quant import qdq

from compiled import REPO, cli_json

X86_TARGETS = {
    # A Xeon with VNNI and one with AVX2 only: compiled here whatever this CPU is.
    "vnni": '{ kind = "llvm", mtriple = "x86_64-linux-gnu", mcpu = "icelake-server", '
            'mattr = ["+avx2", "+fma", "+avx512f", "+avx512bw", "+avx512vl", "+avx512vnni"] }',
    "avx2": '{ kind = "llvm", mtriple = "x86_64-linux-gnu", mcpu = "haswell", '
            'mattr = ["+avx2", "+fma"] }',
}


@pytest.fixture(scope="module")
def int8_model(digits_onnx, tmp_path_factory):
    out = tmp_path_factory.mktemp("int8fast") / "digits-int8.onnx"
    cli_json("quantize", digits_onnx, "--calib", "digits:200", "-o", out)
    return out


def _x86_target(root: Path, kind: str, name: str = "host") -> Path:
    """A copy of targets/host.toml for another x86 CPU, in a directory of its own (a
    target file's name is its `name`)."""
    text = (REPO / "targets" / "host.toml").read_text()
    text = text.replace('{ kind = "llvm", mtriple = "x86_64-linux-gnu", mcpu = "host" }',
                        X86_TARGETS[kind])
    assert X86_TARGETS[kind] in text, "targets/host.toml's [tvm] target changed"
    path = root / f"target-{kind}" / f"{name}.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _disassembly(art: Path, tool: str = "objdump") -> str:
    exe = shutil.which(tool)
    assert exe, f"{tool} not found (binutils; scripts/setup.sh installs it)"
    return subprocess.run([exe, "-d", str(art / "kernels.o")], capture_output=True, text=True,
                          check=True).stdout


def test_vector_unit_names_the_integer_kind_from_the_features():
    def kind(spec: dict) -> str:
        return vector_unit(tvm.target.Target(spec)).int8

    x86 = {"kind": "llvm", "mtriple": "x86_64-linux-gnu"}
    assert kind(dict(x86, mcpu="icelake-server")) == "vnni"      # implied by the CPU
    assert kind(dict(x86, mcpu="skylake-avx512")) == "avx2"      # AVX-512 without VNNI
    assert kind(dict(x86, mcpu="haswell")) == "avx2"
    assert kind(dict(x86, mcpu="x86-64")) == ""
    arm = {"kind": "llvm", "mtriple": "aarch64-linux-gnu"}
    assert kind(dict(arm, mcpu="cortex-a72", mattr=["+neon"])) == "neon"
    assert kind(dict(arm, mcpu="cortex-a76", mattr=["+neon", "+dotprod"])) == "dotprod"
    mcu = {"kind": "llvm", "mtriple": "thumbv7em-none-eabihf", "mcpu": "cortex-m7"}
    assert kind(mcu) == ""                      # firmware keeps its integer kernels plain


def test_signed_pointwise_inputs_skip_weights_of_minus_128(int8_model):
    """Every depthwise output read by a pointwise convolution is stored as int8 x - 128 on
    an AArch64 target, except where that convolution has a weight of -128 (two products of
    -128 x -128 overflow the kernel's int16 lanes): it keeps uint8 and the smlal kernel."""
    model = qdq.from_onnx(onnx.load(int8_model))
    pointwise = [la for la in model.layers if la.op == "conv" and la.groups == 1
                 and la.weight.shape[2:] == (1, 1)]
    shifted = integer.signed_inputs(model)
    assert shifted == {la.x for la in pointwise} and len(shifted) == 13
    assert integer.options_for(load_target("rpi4"))[2]
    assert not integer.options_for(load_target("host"))[2]

    layer = pointwise[3]
    layer.weight = layer.weight.copy()
    layer.weight.flat[0] = -128
    assert integer.signed_inputs(model) == shifted - {layer.x}


def _requant_kernel(rounding: int, lanes: int = 8) -> tvm.tirx.PrimFunc:
    """compiler/integer.py's int64 requantization (left shift, high multiply, rounding
    right shift, zero point, clamp) over a vectorized loop, as FuseOps leaves it."""
    tirx = tvm.tirx
    i64 = lambda v: tirx.IntImm("int64", v)  # noqa: E731
    acc, m, left, right = (te.placeholder((lanes,), "int32", name=n)
                           for n in ("acc", "m", "left", "right"))

    def rule(i):
        wide = lambda b: tirx.Cast("int64", b[i])  # noqa: E731
        a = tirx.max(tirx.min(wide(acc) << wide(left), i64((1 << 31) - 1)), i64(-(1 << 31)))
        t = (a * wide(m) + i64(rounding)) >> i64(31)
        u = (((t << i64(1)) >> wide(right)) + i64(1)) >> i64(1)
        return tirx.Cast("uint8", tirx.max(tirx.min(u + i64(3), i64(255)), i64(0)))
    y = te.compute((lanes,), rule, name="y")
    sch = s_tir.Schedule(te.create_prim_func([acc, m, left, right, y]))
    sch.vectorize(sch.get_loops(sch.get_sblock("y"))[0])
    return sch.mod["main"]


def test_neon_requantization_is_sqshl_sqrdmulh_srshl_on_4_lanes():
    """The rule's exact form becomes the three NEON instructions, its 8-lane loop two
    unrolled 4-lane vectors (LLVM cannot split the intrinsics); any other form (here a
    rounding constant of 2^29) is left as it is."""
    rewritten = int8_requant_neon.rewrite(_requant_kernel(1 << 30))
    text = rewritten.script()
    assert "T.unroll(2)" in text and "T.vectorized(4)" in text and "int64" not in text
    arm = tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu",
                             "mcpu": "cortex-a72"})
    asm = tvm.compile(tvm.IRModule({"main": rewritten}), target=arm).mod.inspect_source("asm")
    for op in ("sqshl", "sqrdmulh", "srshl"):
        assert f"\t{op}\tv" in asm, op
    other = _requant_kernel(1 << 29)
    assert int8_requant_neon.rewrite(other).same_as(other)


@pytest.mark.parametrize("kind", ["vnni", "avx2"])
def test_x86_pointwise_kernels_use_the_cpu_dot_product(int8_model, tmp_path, kind):
    """The kernel class follows the target's features: vpdpbusd with VNNI; without it
    vpmaddwd on int16 (exact) and no 512-bit register at all for an AVX2 CPU."""
    art = tmp_path / "art"
    cli_json("compile", int8_model, "--target", _x86_target(tmp_path, kind), "-o", art,
             "--no-build", "--untuned")
    manifest = json.loads((art / "manifest.json").read_text())
    assert manifest["layout"]["activations"] == "NHWC"
    assert manifest["layout"]["prepacked_weights"] >= 9     # every pointwise panel
    asm = _disassembly(art)
    if kind == "vnni":
        assert asm.count("vpdpbusd") >= 9
    else:
        assert "vpdpbusd" not in asm and "zmm" not in asm
        assert asm.count("vpmaddwd") >= 9
    # The depthwise 3x3 kernels (calls 1, 3, ..., 25) of 32 channels or more with a
    # multiplier < 1 multiply raw bytes by masked weights (int8_depthwise_x86): vpdpbusd,
    # or vpmaddubsw without VNNI; the generic kernel widened every byte to int32 first.
    depthwise = {k["kernel"] for k in manifest["kernels"][1:26:2]}
    op = "vpdpbusd" if kind == "vnni" else "vpmaddubsw"
    assert len([f for f in _functions_with(asm, op) if f.startswith(tuple(depthwise))]) >= 6
    # The first conv's 3 input channels padded to 4 (int8_first_conv_x86): a ymm vpdpbusd
    # per tap for its 8 output channels (the generic kernel: vpmaddwd on widened bytes,
    # which LLVM also picks for the AVX2 kernel, so only VNNI tells them apart).
    first = manifest["kernels"][0]["kernel"]
    assert kind == "avx2" or any(f.startswith(first) for f in _functions_with(asm, "vpdpbusd"))


def test_host_int8_is_bit_exact_on_all_digits(int8_model, tmp_path):
    """This machine's own kernels, then, where it has AVX2, the AVX2-only kernels run here."""
    runs = [("host", "host")] + ([("avx2", _x86_target(tmp_path, "avx2"))]
                                 if "avx2" in host_features() else [])
    for label, target in runs:
        art = tmp_path / label
        cli_json("compile", int8_model, "--target", target, "-o", art, "--untuned")
        p = cli_json("parity", art, "--data", "digits", "--reference", "integer")
        assert p["passed"] and p["n"] == 450 and p["max_abs_error"] == 0.0, (label, p)
    if "avx512vnni" in host_features():
        assert "vpdpbusd" in _disassembly(tmp_path / "host")


def _with_weight_of_minus_128(src: Path, dst: Path) -> Path:
    """A copy of the QDQ model whose second pointwise convolution has one weight of -128."""
    m = onnx.load(src)
    pointwise = [i for i in m.graph.initializer if i.data_type == onnx.TensorProto.INT8
                 and len(i.dims) == 4 and i.dims[1] > 1 and list(i.dims[2:]) == [1, 1]]
    w = numpy_helper.to_array(pointwise[1]).copy()
    w.flat[w.argmin()] = -128
    pointwise[1].CopyFrom(numpy_helper.from_array(w, pointwise[1].name))
    onnx.save(m, dst)
    return dst


@pytest.mark.slow
@pytest.mark.emulator
def test_rpi4_int8_multiplies_bytes_and_is_bit_exact_under_qemu(int8_model, tmp_path):
    """One compile covers both pointwise kernels: 8-bit products on signed inputs, and
    the smlal one where a weight of -128 keeps a layer's input uint8."""
    art = tmp_path / "rpi4"
    model = _with_weight_of_minus_128(int8_model, tmp_path / "minus128.onnx")
    c = cli_json("compile", model, "--target", "rpi4", "-o", art, "--untuned")
    assert c["workspace_bytes"] == 0        # every tile's accumulators on the stack
    asm = _disassembly(art, "aarch64-linux-gnu-objdump")
    # The pointwise kernels on signed inputs (int8_neon_s8): 8 int8 x int8 products per
    # smull, pairs of int16 sums into int32 by sadalp; 8 or 16 per tile, in 7 kernels (the
    # first has 8 input channels, under the 16 a step reduces).
    assert asm.count("smull\tv") >= 7 * 8 and asm.count("sadalp\tv") >= 7 * 8
    assert "\tsdot\t" not in asm              # ARMv8.0: no dot product (rpi5 has one)
    # smlal by element (int8_neon): a widened activation lane times 8 widened weights.
    assert ".h[7]" in asm
    # The requantization in 32-bit lanes (int8_requant_neon): every conv's epilogue.
    assert asm.count("sqrdmulh\tv") >= 27 and asm.count("srshl\tv") >= 27
    p = cli_json("parity", art, "--device", "local", "--data", "digits",
                 "--reference", "integer")
    assert p["passed"] and p["n"] == 450 and p["max_abs_error"] == 0.0


def _functions_with(asm: str, op: str) -> dict[str, int]:
    """How many times each function of an objdump listing holds instruction `op`."""
    counts, name = {}, ""
    for line in asm.splitlines():
        if line.endswith(">:"):
            name = line.split("<", 1)[1][:-2]
        elif f"\t{op}\t" in line or f"\t{op} " in line:     # aarch64 or x86 objdump
            counts[name] = counts.get(name, 0) + 1
    return counts


@pytest.mark.slow
@pytest.mark.emulator
def test_rpi5_int8_pointwise_kernels_use_sdot_and_are_bit_exact_under_qemu(int8_model,
                                                                          tmp_path):
    """rpi5.toml names +dotprod (Cortex-A76): every pointwise kernel on signed inputs runs
    on sdot (int8_neon_sdot), 4 activations x 4 weights into each int32 lane, no smull +
    sadalp left; bit-exact under qemu-aarch64 -cpu cortex-a76."""
    art = tmp_path / "rpi5"
    c = cli_json("compile", int8_model, "--target", "rpi5", "-o", art, "--untuned")
    assert c["workspace_bytes"] == 0        # no buffer of the intrinsic is a workspace
    asm = _disassembly(art, "aarch64-linux-gnu-objdump")
    # The model's 9 distinct pointwise kernels, each with a tile of >= 2 pixels x 4 panels
    # of 4 channels unrolled: >= 8 sdot per kernel.
    per_kernel = _functions_with(asm, "sdot")
    assert len(per_kernel) == 9 and min(per_kernel.values()) >= 8, per_kernel
    assert "\tsadalp\t" not in asm
    p = cli_json("parity", art, "--device", "local", "--data", "digits", "--limit", "100",
                 "--reference", "integer")
    assert p["passed"] and p["n"] == 100 and p["max_abs_error"] == 0.0


@pytest.mark.slow
@pytest.mark.emulator
def test_bench_counts_int8_beside_onnxruntime_and_the_fp32_program(int8_model, digits_onnx,
                                                                   tmp_path):
    q, f = tmp_path / "q", tmp_path / "f"
    cli_json("compile", int8_model, "--target", "rpi4", "-o", q, "--untuned")
    cli_json("compile", digits_onnx, "--target", "rpi4", "-o", f, "--untuned")
    r = cli_json("bench", q, "--device", "local", "--no-host", "--runs", "2", "--warmup", "0",
                 "--versus", f)
    ours, v = r["instructions_per_inference"], r["versus"]
    assert ours > 0 and r["instructions_per_mac"] == pytest.approx(ours / 3_331_072, rel=1e-6)
    assert v["instructions_per_inference"] > 0
    assert v["instructions_ratio"] == round(ours / v["instructions_per_inference"], 3)
    assert "onnxruntime_instructions_per_inference" in r, r.get("onnxruntime_instructions_error")
    assert r["instructions_vs_onnxruntime"] == \
        round(ours / r["onnxruntime_instructions_per_inference"], 3)
    # The pointwise kernels (95 % of the multiply-adds) run on smull: the program needs
    # fewer instructions per multiply-add than the old plain integer loops' 4.19.
    assert r["instructions_per_mac"] < 1.0
