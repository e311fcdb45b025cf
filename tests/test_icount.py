"""Instruction counting under qemu-aarch64: the plugin counts a known loop exactly, the device
program's per-inference count is positive, repeatable and adds up over its kernel calls, bench
and profile report it, and the MetaSchedule runner that tunes rpi4 without a board ranks a
strided scalar kernel above a vectorised one with repeatable costs."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest

from edge_mnv1.evaluation import bench
from edge_mnv1.emulators import count_program, icount
from edge_mnv1.artifact.artifact import Artifact
from edge_mnv1.artifact.target import load_target

from test_parity import run_cli

pytestmark = pytest.mark.emulator

# n x (subs; b.ne) after parsing argv[1] as a decimal number; exits with 0.
LOOP_S = r"""
  .global _start
_start:
  ldr x0, [sp, #16]
  mov x1, #0
1: ldrb w2, [x0], #1
  cbz w2, 2f
  sub w2, w2, #'0'
  mov x3, #10
  madd x1, x1, x3, x2
  b 1b
2: cbz x1, 4f
3: subs x1, x1, #1
  b.ne 3b
4: mov x0, #0
  mov x8, #93
  svc #0
"""


@pytest.fixture(scope="module")
def loop_program(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("loop")
    (d / "loop.S").write_text(LOOP_S)
    subprocess.run(["aarch64-linux-gnu-gcc", "-nostdlib", "-static", "-o", str(d / "loop"),
                    str(d / "loop.S")], check=True)
    return d / "loop"


@pytest.fixture(scope="module")
def rpi4_art(digits_artifact) -> Path:
    return digits_artifact("rpi4")[0]


def test_plugin_counts_a_loop_exactly(loop_program):
    # Arguments of equal width: the same start-up, so differences are the loop alone.
    c = {n: icount.count([loop_program, f"{n:05d}"]) for n in (1000, 2000, 4000, 50000)}
    assert c[2000] - c[1000] == 2 * 1000
    assert c[4000] - c[2000] == 2 * 2000
    assert c[50000] - c[1000] == 2 * 49000
    assert icount.count([loop_program, "01000"]) == c[1000]  # repeatable


def test_plugin_is_built_from_its_source_once_and_counts(loop_program, tmp_path, monkeypatch):
    """In an empty cache the plugin is built under its source's hash, counts as the cached one
    does, and the next call reuses that file instead of building again."""
    import hashlib

    want = icount.count([loop_program, "01000"])
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    digest = hashlib.sha256(icount.PLUGIN_SOURCE.read_bytes()).hexdigest()[:16]
    built = icount.plugin_path()
    assert built == tmp_path / "edge_mnv1" / "qemu-plugins" / f"icount-{digest}.so"
    assert [p.name for p in built.parent.iterdir()] == [built.name]  # no temporary file left
    stamp = built.stat().st_mtime_ns
    assert icount.count([loop_program, "01000"]) == want
    assert icount.plugin_path() == built and built.stat().st_mtime_ns == stamp


def test_a_failing_program_is_an_error_not_a_count(loop_program):
    from edge_mnv1.errors import DeviceError

    with pytest.raises(DeviceError, match="exited with code"):
        icount.count([loop_program])  # no argv[1]: it reads through a null pointer


def test_a_missing_qemu_is_a_tool_error(loop_program):
    from edge_mnv1.errors import ToolError

    with pytest.raises(ToolError, match="qemu-nosuch is not installed") as e:
        icount.count([loop_program, "1"], qemu=["qemu-nosuch"])
    assert e.value.exit_code == 3


def test_program_counts_are_repeatable_and_add_up(rpi4_art):
    manifest = json.loads((rpi4_art / "manifest.json").read_text())
    qemu = count_program.counting_emulator(load_target("rpi4"))
    program = rpi4_art / "program"
    n = count_program.per_inference(program, qemu)
    assert n > manifest["total_macs"] / 4  # a NEON FMA does 4 multiply-adds: no fewer
    assert count_program.per_inference(program, qemu, parallel=True) == n
    calls = count_program.per_call(program, len(manifest["kernels"]), qemu, workers=2)
    assert all(c > 0 for c in calls)
    # The calls alone add up to the inference, up to the runtime's few instructions per call.
    assert 0 <= sum(calls) - n <= 100 * len(calls)
    # Kernels that appear twice with the same shapes cost the same.
    by_kernel = {}
    for k, c in zip(manifest["kernels"], calls):
        by_kernel.setdefault(k["kernel"], set()).add(c)
    assert all(len(v) == 1 for v in by_kernel.values())


def test_host_and_mcu_targets_are_not_counted():
    assert count_program.counting_emulator(load_target("host")) is None
    assert count_program.counting_emulator(load_target("mps2-an500")) is None
    assert count_program.counting_emulator(load_target("rpi4"))[0] == "qemu-aarch64"


def test_bench_and_profile_report_instructions(rpi4_art, capsys):
    code, a, _ = run_cli(capsys, "bench", rpi4_art, "--runs", 2, "--warmup", 0, "--no-host")
    assert code == 0, a
    code, b, _ = run_cli(capsys, "bench", rpi4_art, "--runs", 2, "--warmup", 0, "--no-host")
    assert a["instructions_per_inference"] == b["instructions_per_inference"] > 0
    macs = json.loads((rpi4_art / "manifest.json").read_text())["total_macs"]
    assert a["instructions_per_mac"] == pytest.approx(a["instructions_per_inference"] / macs)
    text = bench.summary_text(a, Artifact.load(rpi4_art).manifest)
    assert "per multiply-add" in text and "not a time" in text
    # ONNX Runtime's own aarch64 build, counted the same way on the same model, beside it
    assert a["onnxruntime_instructions_per_inference"] > 0
    assert a["instructions_vs_onnxruntime"] == pytest.approx(
        a["instructions_per_inference"] / a["onnxruntime_instructions_per_inference"], abs=5e-4)  # rounded to 3 places
    assert "edge_mnv1 / ONNX Runtime" in text
    assert a["emulated"] is True  # the count does not make the timing the board's
    code, p, _ = run_cli(capsys, "profile", rpi4_art, "--runs", 1)
    assert code == 0, p
    assert p["instructions_per_inference"] == a["instructions_per_inference"]
    assert all(c["instructions"] > 0 for c in p["calls"])
    code, q, _ = run_cli(capsys, "bench", rpi4_art, "--runs", 1, "--no-host", "--no-count")
    assert "instructions_per_inference" not in q


# -- tuning without a board ------------------------------------------------------------
def _kernel_objects() -> dict:
    """C = A * B + A over 64x256 floats built for rpi4 twice: column by column (strided, so
    LLVM leaves it scalar) and row by row with 4-wide vectors (NEON)."""
    import tvm
    from tvm import te
    import tvm.s_tir as s_tir

    from edge_mnv1.compiler.tuning.icount_runner import export_object
    from edge_mnv1.compiler.tvm_target import resolve

    a = te.placeholder((64, 256), "float32", name="A")
    b = te.placeholder((64, 256), "float32", name="B")
    c = te.compute((64, 256), lambda i, j: a[i, j] * b[i, j] + a[i, j], name="C")
    func = te.create_prim_func([a, b, c]).with_attr("global_symbol", "main")
    bad = s_tir.Schedule(func)
    i, j = bad.get_loops(bad.get_sblock("C"))
    bad.reorder(j, i)
    good = s_tir.Schedule(func)
    i, j = good.get_loops(good.get_sblock("C"))
    _, ji = good.split(j, [None, 4])
    good.vectorize(ji)
    target = resolve(load_target("rpi4")).tvm_target
    return {name: export_object(tvm.compile(sch.mod, target=target).mod)
            for name, sch in (("bad", bad), ("good", good))}


@pytest.mark.slow
def test_icount_runner_ranks_schedules_with_repeatable_costs():
    from tvm.s_tir.meta_schedule.arg_info import TensorInfo
    from tvm.s_tir.meta_schedule.runner import RunnerInput

    from edge_mnv1.compiler.tuning.icount_runner import NOMINAL_HZ, IcountRunner

    objects = _kernel_objects()
    args = [TensorInfo("float32", [64, 256])] * 3
    runner = IcountRunner(load_target("rpi4"), max_workers=2)
    try:
        inputs = [RunnerInput(objects[n], "cpu", args) for n in ("bad", "good", "good")]
        results = [f.result() for f in runner.run(inputs)]
    finally:
        runner.close()
    assert all(r.error_msg is None for r in results), [r.error_msg for r in results]
    bad, good, again = (float(r.run_secs[0]) for r in results)
    assert all(math.isfinite(s) and s > 0 for s in (bad, good))
    assert good == again  # a count, not a timing: identical every time
    assert bad > 2 * good
    assert 64 * 256 / 4 <= good * NOMINAL_HZ  # no fewer instructions than 4-wide vectors need


def test_tune_measure_icount_needs_an_aarch64_target_and_no_board(digits_onnx):
    from compiled import cli

    r = cli("tune", digits_onnx, "--target", "host", "--measure", "icount", "--trials", 1,
            check=False)
    assert r.returncode == 2 and "aarch64" in r.stderr
    r = cli("tune", digits_onnx, "--target", "rpi4", "--measure", "icount", "--rpc",
            "127.0.0.1:9", "--trials", 1, check=False)
    assert r.returncode == 2 and "--rpc" in r.stderr
