"""Fuzzing the host side of the protocol (edge_mnv1/device/protocol.py) with hypothesis.

Replies come from a scripted fake device: arbitrary bytes, arbitrary payloads in well-formed
frames, and correct replies mutated (bit flips, deletions, insertions, duplicated and cut
ranges, junk in front), delivered in arbitrary pieces. Whatever arrives, the decoder and the
client raise DeviceError (ProtocolError, RemoteError, no reply) and nothing else, never accept
a corrupted reply, recover for the next request, and never allocate by an unchecked length.

Examples are derandomized so CI is reproducible; EDGE_MNV1_FUZZ_EXAMPLES=N runs longer.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import time
import tracemalloc
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_mnv1.device import protocol as P
from edge_mnv1.device.transport import Transport
from edge_mnv1.errors import DeviceError

EXAMPLES = int(os.environ.get("EDGE_MNV1_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

HELLO = {"protocol": P.VERSION, "model": "m", "target": "host",
         "input": {"shape": [1, 3, 2, 2], "dtype": "float32", "bytes": 48},
         "output": {"shape": [1, 4], "dtype": "float32", "bytes": 16},
         "arena_bytes": 64, "weight_bytes": 16, "workspace_bytes": 0, "max_payload": 2052,
         "kernels": 3, "tick_unit": "ns", "requests": 0, "boot_count": 1, "chunk_bytes": 512,
         "idle_gap_ms": 50, "identity": "0123abcd" * 8}
OUTPUT = np.arange(4, dtype=np.float32).reshape(1, 4) - 1.5
SELFTEST = {"passed": True, "max_abs_error": 0.0, "cases": 3}


def good_payload(mtype: int, payload: bytes) -> bytes:
    """What a correct device answers to a request."""
    if mtype == P.HELLO:
        return json.dumps(HELLO).encode()
    if mtype == P.INFER:
        return OUTPUT.tobytes()
    if mtype == P.BENCH:
        (runs,) = struct.unpack("<I", payload)
        return struct.pack(f"<I{runs}Q", runs, *range(1000, 1000 + runs))
    if mtype == P.PROFILE:
        return struct.pack("<I3Q", 3, 10, 20, 30)
    if mtype == P.SELFTEST:
        return json.dumps(SELFTEST).encode()
    raise AssertionError(mtype)


class FakeDevice(Transport):
    """Answers each request frame with `answer(type, seq, payload, attempt) -> bytes` and
    hands the bytes out in pieces of the given sizes; silent (a timeout) when it has none."""

    description = "fake device"

    def __init__(self, answer, pieces=(65536,)):
        self.answer = answer
        self.pieces = list(pieces) or [65536]
        self.pending = bytearray()
        self.requests = P.FrameDecoder(max_payload=1 << 16)
        self.attempts = 0
        self.reads = 0

    def write(self, data: bytes) -> None:
        self.requests.feed(data)
        while (frame := self.requests.next_frame()) is not None:
            self.pending += self.answer(*frame, self.attempts)
            self.attempts += 1

    def read(self, n: int, timeout: float) -> bytes:
        if not self.pending:
            time.sleep(timeout)
            return b""
        k = max(1, min(n, self.pieces[self.reads % len(self.pieces)]))
        self.reads += 1
        out = bytes(self.pending[:k])
        del self.pending[:k]
        return out


def client_for(answer, pieces=(65536,), retries=1) -> P.Client:
    return P.Client(FakeDevice(answer, pieces), timeout=0.004, retries=retries)


def clean(mtype, seq, payload, attempt):
    return P.encode_frame(mtype | P.REPLY, seq, good_payload(mtype, payload))


CALLS = {  # name -> (call on a client, check of a correct result)
    "hello": (lambda c: c.hello(), lambda r: r == HELLO),
    "infer": (lambda c: c.infer(np.zeros((1, 3, 2, 2), np.float32)),
              lambda r: r.dtype == np.float32 and np.array_equal(r, OUTPUT)),
    "bench": (lambda c: c.bench(3), lambda r: r == [1000, 1001, 1002]),
    "profile": (lambda c: c.profile(1), lambda r: r == [10, 20, 30]),
    "selftest": (lambda c: c.selftest(), lambda r: r == SELFTEST),
}


def prepared(client: P.Client, name: str) -> P.Client:
    """Requests other than hello need the device's hello first (over a clean link)."""
    if name != "hello":
        answer = client.transport.answer
        client.transport.answer = clean
        with patient(client):
            client.hello()
        client.transport.answer = answer
    return client


@contextlib.contextmanager
def patient(client: P.Client):
    """A clean device never keeps the client waiting: a long timeout costs nothing, and a
    busy machine cannot turn a correct reply into a timeout."""
    short = client.timeout
    client.timeout = 30.0
    try:
        yield client
    finally:
        client.timeout = short


# ---- mutations of a byte string ---------------------------------------------------------

@st.composite
def mutated(draw, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 6))):
        if not out:
            break
        op = draw(st.sampled_from(["flip", "set", "delete", "insert", "duplicate", "truncate"]))
        i = draw(st.integers(0, len(out) - 1))
        if op == "flip":
            out[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            out[i] = draw(st.integers(0, 255))
        elif op == "delete":
            del out[i:i + draw(st.integers(1, 16))]
        elif op == "insert":
            out[i:i] = draw(st.binary(min_size=1, max_size=24))
        elif op == "duplicate":
            k = draw(st.integers(1, 24))
            out[i:i] = out[i:i + k]
        else:
            del out[i:]
    return bytes(out)


reply_types = st.sampled_from([P.HELLO | P.REPLY, P.INFER | P.REPLY, P.BENCH | P.REPLY,
                               P.PROFILE | P.REPLY, P.SELFTEST | P.REPLY, P.ERROR, 0x00, 0xFF])
pieces = st.lists(st.integers(1, 64), min_size=1, max_size=4)


# ---- the decoder alone ------------------------------------------------------------------

@FUZZ
@given(chunks=st.lists(st.binary(max_size=300), max_size=12),
       max_payload=st.integers(0, 4096))
def test_decoder_takes_arbitrary_bytes(chunks, max_payload):
    d = P.FrameDecoder(max_payload=max_payload)
    fed = 0
    for chunk in chunks:
        d.feed(chunk)
        fed += len(chunk)
        try:
            while (frame := d.next_frame()) is not None:
                mtype, seq, payload = frame
                assert len(payload) <= max_payload
        except P.ProtocolError:
            pass
        assert len(d.buf) <= fed and len(d.skipped) <= fed


@st.composite
def frame_streams(draw):
    frames = [P.encode_frame(draw(reply_types), draw(st.integers(0, 0xFFFF)),
                             draw(st.binary(max_size=80)))
              for _ in range(draw(st.integers(1, 4)))]
    return frames, draw(mutated(b"".join(frames))), draw(pieces)


@FUZZ
@given(frame_streams())
def test_decoder_never_returns_a_corrupted_frame(case):
    frames, stream, sizes = case
    sent = {P.encode_frame(*_split(f)) for f in frames}
    d = P.FrameDecoder(max_payload=4096)
    i = k = 0
    while i < len(stream):
        step = sizes[k % len(sizes)]
        d.feed(stream[i:i + step])
        i, k = i + step, k + 1
        while (frame := d.next_frame()) is not None:
            assert P.encode_frame(*frame) in sent  # only whole frames that were sent


def _split(frame: bytes):
    _, _, mtype, seq, _, length, _ = P.HEADER.unpack_from(frame)
    return mtype, seq, frame[16:16 + length]


def test_a_huge_announced_length_is_refused_at_once_without_allocating():
    for length in (P.DEFAULT_MAX_REPLY + 1, 1 << 31, 0xFFFFFFFF):
        head = struct.pack("<2sBBHHI", P.MAGIC, P.VERSION, P.INFER | P.REPLY, 1, 0, length)
        d = P.FrameDecoder()
        tracemalloc.start()
        d.feed(head + struct.pack("<I", zlib.crc32(head)))
        assert d.next_frame() is None
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert d.bad_frames == 1 and len(d.buf) < 16, "refused at once, not waited for"
        assert peak < 64 * 1024, f"{peak} bytes allocated for an announced {length}"


def test_a_length_within_the_limit_is_waited_for_without_allocating_it():
    """A checked header may announce up to max_payload: the decoder waits for the bytes as
    they come and never reserves the announced size in advance."""
    length = P.DEFAULT_MAX_REPLY
    head = struct.pack("<2sBBHHI", P.MAGIC, P.VERSION, P.INFER | P.REPLY, 1, 0, length)
    d = P.FrameDecoder()
    tracemalloc.start()
    d.feed(head + struct.pack("<I", zlib.crc32(head)) + b"x" * 100)
    assert d.next_frame() is None
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert d.bad_frames == 0 and peak < 64 * 1024


def test_the_client_takes_the_device_frame_size_only_within_bounds():
    """hello's max_payload becomes the decoder's limit: a device may not announce 1 TB."""
    for bad in (1 << 40, -1, 0, "4096", 4096.5, True, None, [4096]):
        info = dict(HELLO, max_payload=bad)
        c = client_for(lambda m, s, p, a: P.encode_frame(m | P.REPLY, s, json.dumps(info).encode()))
        with pytest.raises(P.ProtocolError, match="max_payload"):
            c.hello()
        assert c.decoder.max_payload == P.DEFAULT_MAX_REPLY


def test_endless_text_without_a_newline_is_bounded():
    """A device (or line noise) that sends megabytes of text and no frame costs bounded memory."""
    c = client_for(lambda m, s, p, a: b"A" * (1 << 20) + b"\n" * 3000 + b"B" * (1 << 20),
                   pieces=(65536,), retries=0)
    c.timeout = 0.5
    with pytest.raises(DeviceError, match="no valid reply"):
        c.hello()
    assert len(c._partial) <= P.MAX_TEXT_LINE and len(c.text_lines) <= P.MAX_TEXT_LINES
    assert all(len(line) <= P.MAX_TEXT_LINE for line in c.text_lines)


# ---- the client: every request against arbitrary and mutated replies --------------------

@FUZZ
@given(name=st.sampled_from(sorted(CALLS)), mtype=reply_types, seq_offset=st.sampled_from([0, 0, 0, 1, -1]),
       payload=st.binary(max_size=200), sizes=pieces)
def test_client_only_raises_device_errors_on_arbitrary_payloads(name, mtype, seq_offset, payload,
                                                                 sizes):
    def answer(m, seq, p, attempt):
        return P.encode_frame(mtype, seq + seq_offset, payload)

    call, _ = CALLS[name]
    c = prepared(client_for(answer, sizes), name)
    try:
        result = call(c)
    except DeviceError:
        return
    # Accepted: then it is well formed for its request.
    if name == "hello":
        assert isinstance(result, dict) and result["protocol"] == P.VERSION
    elif name == "infer":
        assert result.shape == OUTPUT.shape and result.dtype == OUTPUT.dtype
    elif name in ("bench", "profile"):
        assert all(isinstance(t, int) and t >= 0 for t in result)
        assert name == "profile" or len(result) == 3
    else:
        assert isinstance(result, dict) and isinstance(result["passed"], bool)


REQUESTS = {"hello": (P.HELLO, b""), "infer": (P.INFER, bytes(48)),
            "bench": (P.BENCH, struct.pack("<I", 3)), "profile": (P.PROFILE, struct.pack("<I", 1)),
            "selftest": (P.SELFTEST, b"")}


@FUZZ
@given(name=st.sampled_from(sorted(CALLS)), steps=st.lists(
           st.sampled_from(["mutate", "mutate", "clean", "silent", "junk"]), min_size=1, max_size=3),
       sizes=pieces, data=st.data())
def test_client_never_accepts_a_corrupted_reply_and_recovers(name, steps, sizes, data):
    """Each attempt is answered by the correct reply mutated, or whole, or not at all, or by
    junk (the last choice repeats). Everything is drawn before the request is made, so the
    examples do not depend on how many attempts the machine's speed allows."""
    call, correct = CALLS[name]
    c = prepared(client_for(clean, sizes, retries=2), name)
    mtype, request_payload = REQUESTS[name]
    good = P.encode_frame(mtype | P.REPLY, (c.seq + 1) & 0xFFFF, good_payload(mtype, request_payload))
    replies = [good if step == "clean" else b"" if step == "silent"
               else data.draw(st.binary(max_size=120)) if step == "junk" else data.draw(mutated(good))
               for step in steps]
    stale = data.draw(st.binary(max_size=40))
    first_attempt = c.transport.attempts
    c.transport.answer = lambda m, seq, p, attempt: replies[min(attempt - first_attempt,
                                                                len(replies) - 1)]
    try:
        result = call(c)
    except DeviceError:
        pass
    else:
        assert correct(result), f"accepted a wrong {name} reply: {result!r}"
    # The next request over a clean link succeeds, whatever the last one left behind.
    c.transport.answer = clean
    c.transport.pending += stale  # bytes still in flight
    with patient(c):
        assert correct(call(c))


# ---- hello, error and JSON replies -------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)


@st.composite
def hello_variants(draw):
    info = json.loads(json.dumps(HELLO))
    for _ in range(draw(st.integers(1, 4))):
        where = info
        path = draw(st.sampled_from([("protocol",), ("max_payload",), ("requests",),
                                     ("chunk_bytes",), ("identity",), ("boot_count",),
                                     ("input",), ("output",),
                                     ("input", "shape"), ("input", "dtype"), ("input", "bytes"),
                                     ("output", "shape"), ("output", "dtype"), ("output", "bytes")]))
        for key in path[:-1]:
            where = where.get(key) if isinstance(where.get(key), dict) else {}
        if draw(st.booleans()):
            where.pop(path[-1], None)
        else:
            where[path[-1]] = draw(json_values | st.sampled_from(
                ["int8", "object", "O", "V8", "<f4", "float64", [1, 4], [1, -4], [2**40], []]))
    return json.dumps(info).encode()


@FUZZ
@given(body=hello_variants() | json_values.map(lambda v: json.dumps(v).encode())
       | st.binary(max_size=64))
def test_an_accepted_hello_makes_every_request_usable(body):
    c = client_for(lambda m, s, p, a: P.encode_frame(P.HELLO | P.REPLY, s, body))
    try:
        info = c.hello()
    except DeviceError:
        return
    assert 0 < c.decoder.max_payload <= P.MAX_DEVICE_PAYLOAD + 64
    # An accepted hello describes tensors the client can build and read back.
    shape, dtype = tuple(info["input"]["shape"]), np.dtype(info["input"]["dtype"])
    out = info["output"]
    reply = np.zeros(out["shape"], out["dtype"]).tobytes()
    # A larger input goes in chunks (each acknowledged), then INFER_STAGED.
    c.transport.answer = lambda m, s, p, a: P.encode_frame(m | P.REPLY, s,
                                                           b"" if m == P.CHUNK else reply)
    with patient(c):
        y = c.infer(np.zeros(shape, dtype))
    assert list(y.shape) == list(out["shape"]) and y.nbytes == out["bytes"]


@pytest.mark.parametrize("body", [b"[" * 100000, b'{"a":' * 50000, b"1" * 5000,
                                  b'{"protocol": 1e999}', b"\xff\xfe"])
def test_pathological_json_is_a_protocol_error(body):
    """Deep nesting (RecursionError), an over-long integer (ValueError), infinity, bad UTF-8."""
    for call in (lambda c: c.hello(), lambda c: c.selftest()):
        c = client_for(lambda m, s, p, a: P.encode_frame(m | P.REPLY, s, body))
        with pytest.raises(P.ProtocolError):
            call(c)


@FUZZ
@given(body=st.binary(max_size=64))
def test_error_replies_parse_or_raise_protocol_error(body):
    try:
        code, message = P.parse_error(body)
    except P.ProtocolError:
        assert len(body) < 2
        return
    assert 0 <= code <= 0xFFFF and isinstance(message, str)
    c = client_for(lambda m, s, p, a: P.encode_frame(P.ERROR, s, body), retries=0)
    with pytest.raises(DeviceError):
        c.hello()


# ---- protocol 2: chunked input and held replies through a noisy link ----------------------

class ChunkingDevice(Transport):
    """A version-2 device in Python with chunks of 64 bytes: stages CHUNK frames at their
    index, runs INFER_STAGED when the whole input's CRC matches, holds its 160-byte output and
    answers READ. Frames that do not decode are skipped without a reply (lost)."""

    description = "chunking device"
    CHUNK = 64
    SHAPE_IN, SHAPE_OUT = [1, 3, 4, 4], [1, 40]

    def __init__(self):
        self.requests = P.FrameDecoder(max_payload=1 << 16)
        self.out = bytearray()
        self.stage = bytearray(48 * 4)
        self.held: tuple[int, bytes] | None = None

    @staticmethod
    def model(x: bytes) -> bytes:
        v = np.frombuffer(x, np.float32)
        return (np.arange(40, dtype=np.float32) * v.sum() + v[:40 % len(v)].sum()).tobytes()

    def hello(self) -> dict:
        return dict(HELLO, chunk_bytes=self.CHUNK, max_payload=2052,
                    input={"shape": self.SHAPE_IN, "dtype": "float32", "bytes": 192},
                    output={"shape": self.SHAPE_OUT, "dtype": "float32", "bytes": 160})

    def reply(self, mtype: int, seq: int, body: bytes, index: int = 0) -> None:
        if len(body) > self.CHUNK:  # held, read in chunks
            self.held = (seq, body)
            body = struct.pack("<BBHII", mtype, 0, self.CHUNK, len(body), zlib.crc32(body))
            mtype = P.HELD
        self.out += P.encode_frame(mtype, seq, body, index=index)

    def write(self, data: bytes) -> None:
        self.requests.feed(data)
        while (frame := self.requests.next_frame()) is not None:
            mtype, seq, payload = frame
            index = self.requests.last_index
            if mtype == P.HELLO:
                self.reply(P.HELLO | P.REPLY, seq, json.dumps(self.hello()).encode())
            elif mtype == P.CHUNK:
                self.stage[index * self.CHUNK:index * self.CHUNK + len(payload)] = payload
                self.out += P.encode_frame(P.CHUNK | P.REPLY, seq, b"", index=index)
            elif mtype == P.INFER_STAGED:
                if struct.unpack("<I", payload)[0] != zlib.crc32(bytes(self.stage)):
                    self.out += P.encode_frame(P.ERROR, seq, struct.pack("<H", P.INCOMPLETE))
                else:
                    self.reply(P.INFER_STAGED | P.REPLY, seq, self.model(bytes(self.stage)))
            elif mtype == P.READ and self.held and struct.unpack("<H", payload)[0] == self.held[0]:
                part = self.held[1][index * self.CHUNK:(index + 1) * self.CHUNK]
                self.out += P.encode_frame(P.READ | P.REPLY, seq, part, index=index)

    def read(self, n: int, timeout: float) -> bytes:
        out = bytes(self.out[:n])
        del self.out[:n]
        return out


@FUZZ
@given(seed=st.integers(0, 2**32 - 1), ber=st.sampled_from([1e-3, 3e-3, 1e-2]),
       drop=st.sampled_from([0.0, 1e-3]), dup=st.sampled_from([0.0, 1e-3]))
def test_chunked_infer_through_noise_is_right_or_refused(seed, ber, drop, dup):
    """Only damaged chunks are re-sent, and whatever the link does to chunks, acknowledgements,
    HELD and READ replies, an accepted output is the device's output for the input sent."""
    from edge_mnv1.device.faults import FaultSpec, FaultyTransport

    device = ChunkingDevice()
    link = FaultyTransport(device, FaultSpec(ber=ber, drop=drop, dup=dup, seed=seed), enabled=False)
    c = P.Client(link, timeout=0.004, retries=8)
    with patient(c):
        c.hello()
    x = np.random.default_rng(seed).standard_normal(device.SHAPE_IN).astype(np.float32)
    want = np.frombuffer(device.model(x.tobytes()), np.float32).reshape(device.SHAPE_OUT)
    link.enabled = True
    try:
        y = c.infer(x)
    except DeviceError:
        pass
    else:
        assert y.tobytes() == want.tobytes()
    link.enabled = False
    device.out.clear()
    with patient(c):
        assert c.infer(x).tobytes() == want.tobytes()
