"""The device protocol, end to end against the real Linux program, and the host decoder.

Each bad frame gets an error reply and the program keeps serving; the host decoder turns
any malformed reply into a ProtocolError and never trusts a length before its CRC."""

import json
import random
import shutil
import struct
import subprocess
import time
import zlib

import numpy as np
import pytest

from edge_mnv1.device import protocol as P
from edge_mnv1.artifact.artifact import Artifact
from edge_mnv1.device.connect import open_device
from edge_mnv1.device.transport import Transport
from edge_mnv1.errors import UsageError

from compiled import cli, cli_json
from sanitizers import check_no_reports, no_sanitizer_reports, sanitized_artifact


# Every device test runs against the program as compiled and against its ASan + UBSan build.
@pytest.fixture(scope="module", params=["plain", "asan-ubsan"])
def host_artifact(request, digits_onnx, digits_artifact, tmp_path_factory):
    if request.param == "asan-ubsan":
        return sanitized_artifact(digits_onnx, tmp_path_factory)
    return digits_artifact("host")[0]


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
    return dev.client.read_frame(time.monotonic() + 20)


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
    mtype, seq, body = device.client.read_frame(__import__("time").monotonic() + 20)
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


# ---- protocol 2: chunks, held replies, the idle gap --------------------------------------

class DamageOneChunk(Transport):
    """Passes every frame on, records the index of every CHUNK frame written, and flips one
    payload bit in the first sending of chunk `index` (each frame is one write)."""

    def __init__(self, inner, index: int):
        self.inner, self.index, self.sent, self.damaged = inner, index, [], False
        self.description = inner.description

    def write(self, data: bytes) -> None:
        _, _, mtype, _, index, _, _ = P.HEADER.unpack_from(data)
        if mtype == P.CHUNK:
            self.sent.append(index)
            if index == self.index and not self.damaged:
                data = data[:20] + bytes([data[20] ^ 0x10]) + data[21:]
                self.damaged = True
        self.inner.write(data)

    def read(self, n: int, timeout: float) -> bytes:
        return self.inner.read(n, timeout)


def test_an_input_moves_in_chunks_and_only_a_damaged_chunk_is_sent_again(device):
    c = device.client
    c.retries = 2
    x = np.random.default_rng(1).standard_normal(device.hello["input"]["shape"]).astype(np.float32)
    count = -(-x.nbytes // device.hello["chunk_bytes"])
    assert count > 1, "the digits model's input is larger than a chunk"
    clean = c.infer(x)
    link = DamageOneChunk(c.transport, index=5)
    c.transport = link
    rejected = c.rejected_requests
    try:
        y = c.infer(x)
    finally:
        c.transport = link.inner
    assert y.tobytes() == clean.tobytes()
    assert sorted(link.sent) == sorted(list(range(count)) + [5]), "chunk 5 twice, others once"
    assert c.rejected_requests - rejected == 1


def test_a_reply_larger_than_a_chunk_is_held_and_read_in_chunks(device):
    runs = 200  # 4 + 8 * 200 bytes of ticks: four chunks of 512
    mtype, seq, body = raw_request(device, P.encode_frame(P.BENCH, 84, struct.pack("<I", runs)))
    assert (mtype, seq) == (P.HELD, 84)
    rtype, _, chunk, total, crc = struct.unpack("<BBHII", body)
    assert (rtype, chunk, total) == (P.BENCH | P.REPLY, 512, 4 + 8 * runs)
    parts = []
    for i in reversed(range(-(-total // chunk))):  # any order, each on its own
        mtype, _, part = raw_request(device, P.encode_frame(P.READ, 200 + i, struct.pack("<H", 84),
                                                             index=i))
        assert mtype == P.READ | P.REPLY and len(part) == min(chunk, total - i * chunk)
        parts.insert(0, part)
    whole = b"".join(parts)
    assert zlib.crc32(whole) == crc and struct.unpack_from("<I", whole)[0] == runs
    # Another request releases it: a READ is then refused with what to do.
    still_serving(device)
    mtype, _, body = raw_request(device, P.encode_frame(P.READ, 90, struct.pack("<H", 84)))
    assert mtype == P.ERROR and P.parse_error(body)[0] == 7 and b"send the request again" in body
    assert len(device.client.bench(runs)) == runs


def test_a_chunk_outside_the_input_is_refused_before_it_is_stored(device):
    chunk, nbytes = device.hello["chunk_bytes"], device.hello["input"]["bytes"]
    last = nbytes // chunk  # the last chunk is nbytes % chunk long (0: past the end)
    frame = P.encode_frame(P.CHUNK, 85, bytes(chunk), index=last + 1)
    mtype, _, body = raw_request(device, frame)
    assert mtype == P.ERROR and P.parse_error(body)[0] == 7 and b"not within the input" in body
    still_serving(device)


def test_a_cut_off_frame_is_dropped_after_the_idle_gap(device):
    """v1 took the next request's bytes as the rest of a cut frame; now the device drops it
    after idle_gap_ms without a byte (an error reply when its header was checked), and the
    next request is answered at its first attempt (the fixture allows no retry)."""
    gap = device.hello["idle_gap_ms"] / 1000
    frame = P.encode_frame(P.INFER, 86, bytes(300))
    device.client.transport.write(frame[:100])  # the link went down mid-payload
    time.sleep(gap + 0.25)
    mtype, seq, body = device.client.read_frame(time.monotonic() + 20)
    assert (mtype, seq) == (P.ERROR, 86) and P.parse_error(body)[0] == P.CUT_OFF
    device.client.transport.write(frame[:9])  # mid-header: dropped without a reply
    time.sleep(gap + 0.25)
    assert device.client.selftest()["passed"] is True
    still_serving(device)


class Version1Device(Transport):
    """Answers as a version-1 program does: a frame of another version gets BAD_VERSION, in a
    version-1 frame; with `hello` set, a v1 hello in a frame of this version instead."""

    description = "old device"

    def __init__(self, hello: dict | None = None):
        self.out, self.hello = bytearray(), hello

    def write(self, data: bytes) -> None:
        seq = struct.unpack_from("<H", data, 4)[0]
        if self.hello is not None:
            self.out += P.encode_frame(P.HELLO | P.REPLY, seq, json.dumps(self.hello).encode())
        else:
            self.out += P.encode_frame(P.ERROR, seq, struct.pack("<H", 3) + b"protocol version "
                                       b"2 not spoken; this device speaks 1", version=1)

    def read(self, n: int, timeout: float) -> bytes:
        out = bytes(self.out[:n])
        del self.out[:n]
        return out


def test_a_version_1_device_is_named_with_what_to_do():
    v1_hello = {"protocol": 1, "model": "m", "target": "host", "max_payload": 2052,
                "input": {"shape": [1, 4], "dtype": "float32", "bytes": 16},
                "output": {"shape": [1, 4], "dtype": "float32", "bytes": 16},
                "tick_unit": "ns", "requests": 1}
    for transport in (Version1Device(), Version1Device(v1_hello),
                      Version1Device(dict(v1_hello, protocol=P.VERSION))):
        client = P.Client(transport, timeout=1, retries=0)
        with pytest.raises(P.ProtocolError, match=r"the device runs protocol v1 .*rebuild the "
                                                  r"artifact .*deploy it"):
            client.hello()


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
