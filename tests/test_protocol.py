"""The device protocol, end to end against the real Linux program, and the host decoder.

Each bad frame gets an error reply and the program keeps serving; the host decoder turns
any malformed reply into a ProtocolError and never trusts a length before its CRC."""

import json
import random
import shutil
import struct
import subprocess
import zlib

import numpy as np
import pytest

from edge_mnv1.device import protocol as P
from edge_mnv1.artifact.artifact import Artifact
from edge_mnv1.device.connect import open_device
from edge_mnv1.errors import UsageError

from compiled import cli, cli_json
from sanitizers import check_no_reports, no_sanitizer_reports, sanitized_artifact


# Every device test runs against the program as compiled and against its ASan + UBSan build.
@pytest.fixture(scope="module", params=["plain", "asan-ubsan"])
def host_artifact(request, digits_onnx, tmp_path_factory):
    if request.param == "asan-ubsan":
        return sanitized_artifact(digits_onnx, tmp_path_factory)
    out = tmp_path_factory.mktemp("proto") / "host"
    cli("compile", digits_onnx, "--target", "host", "-o", out)
    return out


@pytest.fixture
def device(host_artifact, monkeypatch, tmp_path):
    with no_sanitizer_reports(monkeypatch, tmp_path / "sanitizers"):
        with open_device("local", Artifact.load(host_artifact), timeout=20, retries=0) as dev:
            yield dev
            transport = dev.client.transport
        transport._drain_stderr()
        check_no_reports(tmp_path / "sanitizers", transport.stderr_tail.decode("utf-8", "replace"))
        assert transport.proc.returncode == 0, transport.stderr_tail[-2000:]


def raw_request(dev, frame: bytes):
    """Sends raw bytes and returns the next frame (type, seq, payload)."""
    import time

    dev.client.transport.write(frame)
    return dev.client._read_frame(time.monotonic() + 20)


def still_serving(dev):
    assert dev.client.hello()["protocol"] == P.VERSION


def serve_stream(program, stream: bytes, tmp_path) -> list:
    """Feeds a whole byte stream to `program --serve`; returns every reply frame, in order."""
    r = subprocess.run([str(program), "--serve"], input=stream, capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    check_no_reports(tmp_path, r.stderr.decode("utf-8", "replace"))
    d = P.FrameDecoder()
    d.feed(r.stdout)
    frames = []
    while (f := d.next_frame()) is not None:
        frames.append(f)
    return frames


def test_hello_describes_the_model(device, host_artifact):
    m = Artifact.load(host_artifact).manifest
    h = device.hello
    assert h["input"]["shape"] == m["input"]["shape"] and h["input"]["dtype"] == "float32"
    assert h["arena_bytes"] == m["memory"]["arena_bytes"]
    assert h["weight_bytes"] == m["memory"]["weight_bytes"]
    assert h["tick_unit"] == "ns"


def test_wrong_payload_crc_gets_error_and_program_keeps_serving(device):
    frame = bytearray(P.encode_frame(P.INFER, 77, b"\0" * 16))
    frame[-1] ^= 0xFF
    mtype, seq, body = raw_request(device, bytes(frame))
    assert (mtype, seq) == (P.ERROR, 77)
    assert struct.unpack_from("<H", body)[0] == 1 and b"CRC" in body
    still_serving(device)


def test_length_beyond_the_frame_buffer_is_refused_before_reading(device):
    limit = device.hello["max_payload"]
    head = struct.pack("<2sBBHHI", P.MAGIC, P.VERSION, P.INFER, 78, 0, limit + 1)
    head += struct.pack("<I", zlib.crc32(head))
    # The payload is drained (the stream stays in step), then the error comes back.
    mtype, seq, body = raw_request(device, head + b"\1" * (limit + 1) + b"\0\0\0\0")
    assert (mtype, seq) == (P.ERROR, 78)
    assert struct.unpack_from("<H", body)[0] == 2 and str(limit).encode() in body
    still_serving(device)


def test_a_frame_hidden_in_a_refused_payload_is_not_answered(host_artifact, tmp_path):
    """A header announcing 0xFFFFFFFF bytes is refused and all of them drained: the frame that
    follows is payload, not a request (the drain once wrapped to 3 bytes and answered it;
    tests/fuzz_regressions/too-large-length-wraps-drain)."""
    huge = struct.pack("<2sBBHHI", P.MAGIC, P.VERSION, P.INFER, 90, 0, 0xFFFFFFFF)
    huge += struct.pack("<I", zlib.crc32(huge))
    stream = huge + b"xxx" + P.encode_frame(P.HELLO, 91)
    # the stream ended inside the refused payload: no reply
    assert serve_stream(host_artifact / "program", stream, tmp_path) == []


def test_protocol_version_mismatch_is_an_error_reply(device):
    mtype, seq, body = raw_request(device, P.encode_frame(P.HELLO, 79, b"", version=9))
    assert (mtype, seq) == (P.ERROR, 79)
    assert struct.unpack_from("<H", body)[0] == 3 and b"version 9" in body
    still_serving(device)


def test_corrupt_header_and_garbage_are_skipped(device):
    frame = bytearray(P.encode_frame(P.HELLO, 80))
    frame[9] ^= 0x40  # the length, under the header CRC
    mtype, seq, body = raw_request(device, b"line noise \xed\xed" + bytes(frame))
    assert mtype == P.ERROR and struct.unpack_from("<H", body)[0] == 1
    still_serving(device)


def test_a_frame_starting_inside_a_corrupt_header_is_answered(device):
    """A header whose CRC fails costs one byte, not sixteen: a frame that begins inside it
    (here two bytes in, after a stray magic) is still found and answered."""
    mtype, seq, body = raw_request(device, P.MAGIC + P.encode_frame(P.HELLO, 92))
    assert mtype == P.ERROR and struct.unpack_from("<H", body)[0] == 1
    mtype, seq, body = device.client._read_frame(__import__("time").monotonic() + 20)
    assert (mtype, seq) == (P.HELLO | 0x80, 92) and json.loads(body)["protocol"] == P.VERSION
    still_serving(device)


def test_unknown_version_with_a_long_payload_is_drained(host_artifact, tmp_path):
    """BAD_VERSION drains the announced payload however long: a frame inside it is payload."""
    limit = Artifact.load(host_artifact).manifest["memory"]["frame_buffer_bytes"]
    hidden = P.encode_frame(P.HELLO, 95)
    payload = hidden + b"z" * (limit + 100 - len(hidden))
    head = struct.pack("<2sBBHHI", P.MAGIC, 9, P.HELLO, 93, 0, len(payload))
    head += struct.pack("<I", zlib.crc32(head))
    stream = head + payload + b"\0\0\0\0" + P.encode_frame(P.HELLO, 94)
    replies = serve_stream(host_artifact / "program", stream, tmp_path)
    assert [f[:2] for f in replies] == [(P.ERROR, 93), (P.HELLO | 0x80, 94)]


def test_selftest_fails_on_a_nan_output_whatever_follows(host_artifact, tmp_path):
    """One NaN then finite errors must not pass (the maximum once lost the NaN), and the
    reply stays JSON."""
    art = tmp_path / "art"
    shutil.copytree(host_artifact, art, ignore=shutil.ignore_patterns("build", "program"))
    m = json.loads((host_artifact / "manifest.json").read_text())
    golden = bytearray((art / "golden.bin").read_bytes())
    cases, out_bytes = m["golden"]["cases"], 4 * int(np.prod(m["output"]["shape"]))
    first_out = len(golden) - cases * out_bytes
    golden[first_out:first_out + 4] = struct.pack("<f", float("nan"))  # first output: NaN
    (art / "golden.bin").write_bytes(bytes(golden))
    from edge_mnv1.artifact.build import build_program
    from edge_mnv1.artifact.target import load_target
    build_program(load_target("host"), art)
    r = subprocess.run([str(art / "program"), "--selftest"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 1 and "selftest FAIL" in r.stdout and "nonfinite=1" in r.stdout
    (mtype, seq, body), = [f[:3] for f in serve_stream(art / "program",
                                                      P.encode_frame(P.SELFTEST, 96), tmp_path)]
    reply = json.loads(body)
    assert (mtype, seq) == (P.SELFTEST | 0x80, 96)
    assert reply["passed"] is False and reply["nonfinite"] == 1
    assert 0 <= reply["max_abs_error"] <= 1e-4  # the finite outputs still match


def test_unknown_message_type(device):
    mtype, _, body = raw_request(device, P.encode_frame(0x42, 81))
    assert mtype == P.ERROR and struct.unpack_from("<H", body)[0] == 4
    still_serving(device)


def test_wrong_input_size_and_shape_and_dtype(device):
    mtype, _, body = raw_request(device, P.encode_frame(P.INFER, 82, b"\0" * 12))
    assert mtype == P.ERROR and struct.unpack_from("<H", body)[0] == 5 and b"12 bytes" in body
    shape = device.hello["input"]["shape"]
    with pytest.raises(UsageError, match="input shape"):
        device.client.infer(np.zeros([1, 3, 7, 7], np.float32))
    with pytest.raises(UsageError, match="dtype float64"):
        device.client.infer(np.zeros(shape, np.float64))
    still_serving(device)


def test_bench_argument_checked(device):
    mtype, _, body = raw_request(device, P.encode_frame(P.BENCH, 83, struct.pack("<I", 0)))
    assert mtype == P.ERROR and struct.unpack_from("<H", body)[0] == 7
    ticks = device.client.bench(3)
    assert len(ticks) == 3 and all(t > 0 for t in ticks)
    prof = device.client.profile(1)
    assert len(prof) == device.hello["kernels"] and all(t > 0 for t in prof)


def test_selftest_over_the_protocol(device):
    r = device.client.selftest()
    assert r["passed"] is True and r["cases"] >= 1 and r["max_abs_error"] <= 1e-4


def test_tampered_artifact_is_refused(host_artifact, tmp_path):
    copy = tmp_path / "art"
    shutil.copytree(host_artifact, copy)
    data = bytearray((copy / "weights.bin").read_bytes())
    data[100] ^= 1
    (copy / "weights.bin").write_bytes(bytes(data))
    with pytest.raises(UsageError, match="weights.bin does not match the manifest"):
        Artifact.load(copy)
    x = tmp_path / "x.npy"
    np.save(x, np.zeros(Artifact.load(host_artifact).manifest["input"]["shape"], np.float32))
    r = cli("run", copy, "--device", "local", "--input", x, "-o", tmp_path / "y.npy", check=False)
    assert r.returncode == 2 and "recompile" in r.stderr and "Traceback" not in r.stderr


def test_run_refuses_an_input_that_is_not_an_array(host_artifact, tmp_path):
    for name, data in (("empty.npy", b""), ("text.npy", b"not an array\n")):
        (tmp_path / name).write_bytes(data)
        r = cli("run", host_artifact, "--device", "local", "--input", tmp_path / name, "-o",
                tmp_path / "y.npy", check=False)
        assert r.returncode == 2 and "not a .npy array" in r.stderr and "numpy.save" in r.stderr
        assert "Traceback" not in r.stderr and not (tmp_path / "y.npy").exists()


# ---- the host decoder alone ------------------------------------------------------------

def test_decoder_round_trip_and_resync():
    frames = [P.encode_frame(P.INFER | P.REPLY, i, bytes([i]) * i) for i in range(1, 6)]
    stream = b"boot line\n" + b"".join(frames)
    d = P.FrameDecoder()
    got = []
    for i in range(0, len(stream), 3):  # arrives in small pieces
        d.feed(stream[i:i + 3])
        while (f := d.next_frame()) is not None:
            got.append(f)
    assert [(s, p) for _, s, p in got] == [(i, bytes([i]) * i) for i in range(1, 6)]
    assert b"boot line" in d.take_skipped()


def test_decoder_never_trusts_an_unchecked_length():
    head = struct.pack("<2sBBHHI", P.MAGIC, P.VERSION, P.HELLO | P.REPLY, 1, 0, 1 << 31)
    d = P.FrameDecoder(max_payload=1 << 20)
    d.feed(head + struct.pack("<I", zlib.crc32(head)))
    assert d.next_frame() is None and d.bad_frames == 1  # refused, not waited for


def test_decoder_fuzz_only_protocol_errors():
    rng = random.Random(0)
    good = P.encode_frame(P.HELLO | P.REPLY, 5, json.dumps({"protocol": 1}).encode())
    for _ in range(3000):
        data = bytearray(good * rng.randint(1, 3))
        for _ in range(rng.randint(1, 8)):
            op = rng.random()
            i = rng.randrange(len(data))
            if op < 0.5:
                data[i] = rng.randrange(256)
            elif op < 0.75:
                del data[i:i + rng.randint(1, 8)]
            else:
                data[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
            if not data:
                break
        d = P.FrameDecoder(max_payload=4096)
        d.feed(bytes(data))
        try:
            while d.next_frame() is not None:
                pass
        except P.ProtocolError:
            pass
