"""Cortex-M firmware: builds for the emulated boards and the Nucleo and fits their memory,
links without a heap, boots with a passing self-test on QEMU, speaks the protocol over a
serial link (pty) like a USB adapter, matches ONNX Runtime on real digits, survives bad
frames and lost replies, and a reset board is detected. Over-budget models are refused at
compile time with the numbers."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import struct
import subprocess
import sys
import time
import types

import numpy as np
import pytest

from edge_mnv1.model import data
from edge_mnv1.artifact import firmware as linker
from edge_mnv1.artifact.artifact import Artifact
from edge_mnv1.artifact.budget import artifact_budget
from edge_mnv1.device import protocol as P
from edge_mnv1.device.connect import open_device
from edge_mnv1.device.protocol import Client, FrameDecoder
from edge_mnv1.errors import DeviceError
from edge_mnv1.artifact.target import load_target

from compiled import CLI, REPO, cli, cli_json, ort_outputs

EMULATED = ["mps2-an500", "mps3-an547"]
BOARDS = EMULATED + ["nucleo-h743zi"]


@pytest.fixture(scope="module")
def firmware(digits_artifact):
    """0.25/64 fp32 (the digits model) compiled and linked for each board."""
    return {b: digits_artifact(b) for b in BOARDS}


def digits(n, resolution=64):
    x, _, _ = data.load_dataset("digits", types.SimpleNamespace(resolution=resolution),
                                split="test", limit=n)
    return x.astype(np.float32)


@contextlib.contextmanager
def board(art, timeout=60.0, retries=2):
    with open_device("emulated", Artifact.load(art), timeout=timeout, retries=retries) as dev:
        yield dev


# ---- build, memory, no heap ----------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("name", BOARDS)
def test_firmware_builds_and_fits(firmware, name):
    art, r = firmware[name]
    assert (art / "firmware.elf").is_file() and r["program"].endswith("firmware.elf")
    budget = r["budget"]
    assert budget["stage"] == "linked"
    target = load_target(name)
    regions = {g["name"]: g for g in budget["regions"]}
    for g in regions.values():
        assert 0 < g["used"] <= g["size"], g
    # Weights (and golden data) sit whole in the weights region, the arena in the arena's.
    where = linker.placement(target)
    assert regions[where["weights"]]["parts"][".em_weights"] >= r["weight_bytes"]
    assert regions[where["arena"]]["parts"][".em_arena"] >= r["arena_bytes"] + r["workspace_bytes"]
    assert budget["flash_bytes"] > r["weight_bytes"] and budget["ram_bytes"] > r["arena_bytes"]
    # The arena is the liveness optimum for this network.
    assert r["arena_bytes"] == r["liveness_lower_bound"]
    # `edge-mnv1 info`'s view of the same artifact.
    info = artifact_budget(Artifact.load(art))
    assert info["fits"] and info["budget"]["regions"] == budget["regions"]


@pytest.mark.slow
@pytest.mark.parametrize("name", BOARDS)
def test_firmware_has_no_heap(firmware, name):
    art, _ = firmware[name]
    syms = subprocess.run(["arm-none-eabi-nm", str(art / "firmware.elf")], capture_output=True,
                          text=True, check=True).stdout
    names = {line.split()[-1] for line in syms.splitlines() if line.strip()}
    for bad in ("malloc", "free", "calloc", "realloc", "_sbrk", "_sbrk_r", "_malloc_r",
                "_free_r", "abort"):
        assert bad not in names, f"{bad} is linked into the {name} firmware"
    assert "em_arena" in syms and "em_weights" in names


@pytest.mark.slow
def test_over_budget_model_is_refused_at_compile_time(tmp_path):
    """MobileNetV1 1.0/224 fp32 needs ~17 MB of weights and ~9 MB of RAM: not on an AN500.
    (Random weights: only the sizes matter, and the plain exporter takes seconds.)"""
    import torch

    from edge_mnv1.model.network import MobileNetV1, ModelConfig

    onnx = tmp_path / "m-1.0-224.onnx"
    torch.manual_seed(0)
    net = MobileNetV1(ModelConfig(alpha=1.0, resolution=224, classes=1000)).eval()
    torch.onnx.export(net, torch.randn(1, 3, 224, 224), str(onnx), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["logits"])
    r = cli("compile", onnx, "--target", "mps2-an500", "-o", tmp_path / "big", check=False)
    assert r.returncode == 1, r.stderr[-2000:]
    msg = r.stderr
    assert "does not fit mps2-an500" in msg and "the memory plan" in msg
    assert "ssram1" in msg and "4,194,304" in msg and "weights" in msg
    assert not (tmp_path / "big" / "firmware.elf").exists()


def test_linker_script_follows_the_memory_regions():
    t = load_target("mps3-an547")
    assert linker.placement(t) == {"code": "itcm", "stack": "dtcm", "data": "isram",
                                   "arena": "dtcm", "weights": "isram"}
    ld = linker.linker_script(t)
    assert "ITCM (rx) : ORIGIN = 0x00000000, LENGTH = 0x80000" in ld
    assert ".em_weights : {" in ld and "} > ISRAM" in ld
    assert "AT > ITCM" in ld  # .data's initial values live with the code
    assert linker.tick_scale(t) == ("instructions", 125, 4)  # 31.25 instructions per tick
    assert linker.tick_scale(load_target("mps2-an500")) == ("instructions", 40, 1)
    assert linker.tick_scale(load_target("nucleo-h743zi")) == ("cycles", 1, 1)


def test_serial_urls():
    from edge_mnv1.device.serial_link import parse_url
    from edge_mnv1.errors import UsageError

    assert parse_url("serial:///dev/ttyACM0?baud=921600") == ("/dev/ttyACM0", {"baudrate": 921600})
    assert parse_url("serial:///dev/pts/7") == ("/dev/pts/7", {"baudrate": 115200})
    assert parse_url("socket://127.0.0.1:5555") == ("socket://127.0.0.1:5555", {"baudrate": 115200})
    assert parse_url("rfc2217://board:2217?baud=57600&rtscts=1") == \
        ("rfc2217://board:2217", {"baudrate": 57600, "rtscts": True})
    for bad in ("serial://", "serial:///dev/ttyS0?speed=9600", "socket://host",
                "serial:///dev/ttyS0?baud=fast"):
        with pytest.raises(UsageError):
            parse_url(bad)


def test_a_missing_qemu_is_a_tool_error(tmp_path):
    import dataclasses

    from edge_mnv1.emulators.qemu_mcu import QemuBoard
    from edge_mnv1.errors import ToolError

    t = load_target("mps2-an500")
    t = dataclasses.replace(t, emulator={**t.emulator, "command": ["qemu-system-nosuch"]})
    board = QemuBoard(t, tmp_path / "firmware.elf")
    with pytest.raises(ToolError, match="qemu-system-nosuch is not installed") as e:
        board.start()
    assert e.value.exit_code == 3
    board.stop()


def test_firmware_formatter_matches_printf(tmp_path):
    """The firmware's snprintf (no heap) prints what glibc prints, %.9g included."""
    src = REPO / "edge_mnv1" / "runtime" / "platform" / "mcu" / "printf.c"
    test = tmp_path / "t.c"
    test.write_text(r'''
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
int em_snprintf(char*, size_t, const char*, ...);
int main(void) {
  int bad = 0; char a[96], b[96];
  srand(7);
  for (int i = 0; i < 200000; ++i) {
    double v = ldexp((double)rand() / RAND_MAX, rand() % 90 - 70);
    if (i & 1) v = (float)v;
    if (i % 7 == 0) v = -v;
    snprintf(a, sizeof a, "%.9g|%g|%.3f", v, v, v); em_snprintf(b, sizeof b, "%.9g|%g|%.3f", v, v, v);
    if (strcmp(a, b)) { if (bad++ < 5) printf("%s != %s\n", a, b); }
  }
  const char* f = "x%02x|%lu|%u|%-5s|%5s|%d|%08lu|%c|%s|%.9g|%.9g";
  snprintf(a, sizeof a, f, 7, 123456789ul, 42u, "ab", "cd", -17, 12ul, 'Z', "hi", 0.0, 1e-7);
  em_snprintf(b, sizeof b, f, 7, 123456789ul, 42u, "ab", "cd", -17, 12ul, 'Z', "hi", 0.0, 1e-7);
  if (strcmp(a, b)) { bad++; printf("%s != %s\n", a, b); }
  if (em_snprintf(b, 5, "%s", "abcdefgh") != 8 || strcmp(b, "abcd")) { bad++; printf("trunc\n"); }
  printf("bad=%d\n", bad);
  return bad != 0;
}''')
    exe = tmp_path / "t"
    subprocess.run(["gcc", "-O1", "-fno-builtin", "-Dvsnprintf=em_vsnprintf",
                    "-Dsnprintf=em_snprintf", str(test), str(src), "-o", str(exe), "-lm"],
                   check=True, capture_output=True)
    r = subprocess.run([str(exe)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout


# ---- on the emulated boards ----------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.emulator
@pytest.mark.parametrize("name,cases", [("mps2-an500", 3), ("mps3-an547", 2)])
def test_boots_and_matches_onnxruntime_over_serial(firmware, digits_onnx, name, cases):
    art, r = firmware[name]
    x = digits(cases)
    ref = ort_outputs(digits_onnx, x)
    with board(art) as dev:
        boot = [ln for ln in dev.client.text_lines if "edge_mnv1 selftest" in ln]
        assert boot and "selftest PASS" in boot[0] and "cases=" in boot[0], dev.client.text_lines
        assert dev.hello["tick_unit"] == "instructions"
        assert dev.hello["arena_bytes"] == r["arena_bytes"]
        got = np.concatenate([dev.client.infer(x[i:i + 1]) for i in range(cases)])
        assert np.max(np.abs(got - ref)) <= 1e-4
        assert (got.argmax(1) == ref.argmax(1)).all()
        runs = dev.client.bench(2)
        # -icount shift=0: the count is a property of the code, not of the host's load.
        assert runs[0] > 1e6 and abs(runs[0] - runs[1]) <= 64, runs
        per_kernel = dev.client.profile(1)
        assert len(per_kernel) == r["kernels"]
        assert abs(sum(per_kernel) - runs[0]) < 0.01 * runs[0]
        assert dev.client.selftest()["passed"] is True
        dev.client.check_not_reset()


@pytest.mark.slow
@pytest.mark.parametrize("name", EMULATED)
def test_fp32_convolutions_are_the_runtime_c_kernels(firmware, name):
    """The digits fp32 firmware's convolutions call em_f32_arm_m.c (compiler/float_arm_m.py)
    with no TVM convolution left; the test above checks that firmware's outputs against ONNX
    Runtime (<= 1e-4), so it is the C kernels' parity on both boards (MVE and FPv5)."""
    art, _ = firmware[name]
    kernels = [k["kernel"] for k in Artifact.load(art).manifest.kernels]
    kinds = {k.rstrip("0123456789") for k in kernels if k.startswith("f32_")}
    assert kinds == {"f32_conv", "f32_depthwise", "f32_pointwise"}, kernels
    assert not [k for k in kernels if "conv2d" in k], kernels
    assert (art / "kernels_f32_arm_m.c").read_bytes() == linker.F32_KERNELS.read_bytes()


def _raw(dev, frame: bytes):
    dev.client.transport.write(frame)
    return dev.client.read_frame(time.monotonic() + 30)


@pytest.mark.slow
@pytest.mark.emulator
def test_bad_frames_get_errors_and_the_firmware_keeps_serving(firmware):
    art, r = firmware["mps2-an500"]
    with board(art, timeout=30, retries=0) as dev:
        max_payload = dev.hello["max_payload"]
        # Line noise, then a frame whose payload CRC is wrong.
        frame = bytearray(P.encode_frame(P.BENCH, 101, struct.pack("<I", 1)))
        frame[-1] ^= 0x5A
        mtype, seq, body = _raw(dev, b"\x00\xff\xedjunk" + bytes(frame))
        assert (mtype, seq) == (P.ERROR, 101) and P.parse_error(body)[0] == 1
        # A header whose own CRC is wrong: a length in it is never trusted.
        frame = bytearray(P.encode_frame(P.HELLO, 102))
        frame[8] ^= 0x40  # length field corrupted
        mtype, seq, body = _raw(dev, bytes(frame))
        assert mtype == P.ERROR and P.parse_error(body)[0] == 1
        # A payload longer than the frame buffer: refused (TOO_LARGE), read past, in step.
        big = P.encode_frame(P.INFER, 103, bytes(max_payload + 100))
        mtype, seq, body = _raw(dev, big)
        assert (mtype, seq) == (P.ERROR, 103) and P.parse_error(body)[0] == 2
        assert str(max_payload) in P.parse_error(body)[1]
        # An input of the wrong size, an unknown type, a bad run count.
        for msg_type, payload, code in [(P.INFER, b"\0" * 12, 5), (0x33, b"", 4),
                                        (P.BENCH, struct.pack("<I", 0), 7)]:
            mtype, seq, body = _raw(dev, P.encode_frame(msg_type, 104, payload))
            assert (mtype, seq) == (P.ERROR, 104) and P.parse_error(body)[0] == code
        # A reply to someone else's request (seq 0x7777) is never taken for ours.
        dev.client.transport.write(P.encode_frame(P.HELLO, 0x7777))
        assert len(dev.client.bench(1)) == 1
        x = digits(1)
        np.testing.assert_allclose(dev.client.infer(x), ort_outputs(art / "model.onnx", x),
                                   atol=1e-4)
        dev.client.check_not_reset()


class DropReplies:
    """A transport that loses the next `frames` whole reply frames, like a noisy cable."""

    def __init__(self, inner, frames=1):
        self.inner, self.frames = inner, frames
        self.description = inner.description
        self.decoder = FrameDecoder()
        self.lost = 0

    def write(self, data):
        self.inner.write(data)

    def read(self, n, timeout):
        got = self.inner.read(n, timeout)
        if self.lost >= self.frames or not got:
            return got
        self.decoder.feed(got)
        while self.decoder.next_frame() is not None:
            self.lost += 1
        return b""  # swallowed (bytes past the lost frame are rare here: one request at a time)


@pytest.mark.slow
@pytest.mark.emulator
def test_lost_reply_is_recovered_by_resending_the_same_request(firmware):
    art, _ = firmware["mps2-an500"]
    with board(art) as dev:
        lossy = DropReplies(dev.client.transport, frames=1)
        client = Client(lossy, timeout=3.0, retries=2)
        client.hello()
        assert lossy.lost == 1 and client.retried == 1
        runs = client.bench(2)
        assert len(runs) == 2 and client.retried == 1
        # The device answered both copies of the hello: its counter says so.
        assert client.check_not_reset()["requests"] >= 4


@pytest.mark.slow
@pytest.mark.emulator
def test_a_board_that_resets_mid_session_is_detected(firmware):
    art, _ = firmware["mps3-an547"]
    with board(art, timeout=10) as dev:
        dev.client.bench(1)
        dev.client.check_not_reset()  # no reset yet
        dev.client.bench(1)
        dev.client.transport.board.reset()  # the reset button, through QEMU's monitor
        with pytest.raises(DeviceError, match="reset during the run"):
            dev.client.check_not_reset()
        # The board came back: it booted again (boot line) and serves.
        assert sum("selftest PASS" in ln for ln in dev.client.text_lines) == 2
        assert len(dev.client.bench(1)) == 1


@pytest.mark.slow
@pytest.mark.emulator
def test_emulate_serves_a_socket_url_and_deploy_restarts_it(firmware, tmp_path):
    art, _ = firmware["mps2-an500"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([*CLI, "emulate", "mps2-an500", "--artifact", str(art), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            env=env, start_new_session=True)
    try:
        line = proc.stdout.readline()
        assert line, proc.stderr.read()
        url = json.loads(line)["url"]
        assert url.startswith("socket://127.0.0.1:")
        with open_device(url, Artifact.load(art), timeout=30) as dev:
            assert dev.client.bench(1)[0] > 1e6
        r = cli_json("deploy", art, "--device", url)
        assert r["passed"] and r["hello"]["target"] == "mps2-an500"
        with open_device(url, Artifact.load(art), timeout=30) as dev:  # the restarted board
            assert dev.hello["requests"] == 2  # deploy's hello, then ours: a new boot
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)  # a loaded CI machine once needed over 20 s
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # its QEMU too, not left running
            proc.wait()
    assert proc.returncode in (0, 130), proc.stderr.read()[-2000:]
