"""The host side of docs/protocol.md: frame codec and the request/response client.

A transport is a byte pipe (local subprocess, ssh, serial). Nothing here trusts a length
before the header's own CRC has matched and the length is within the limit, and every
malformed reply becomes a ProtocolError, never another exception.
"""

from __future__ import annotations

import json
import struct
import time
import zlib

import numpy as np

from edge_mnv1 import log
from edge_mnv1.errors import DeviceError, UsageError
from edge_mnv1.versions import PROTOCOL_VERSION

VERSION = PROTOCOL_VERSION
MAGIC = b"\xedN"
HEADER = struct.Struct("<2sBBHHII")   # magic, version, type, seq, reserved, length, header crc
HELLO, INFER, BENCH, PROFILE, SELFTEST, ERROR, REPLY = 0x01, 0x02, 0x03, 0x04, 0x05, 0x7F, 0x80
ERROR_NAMES = {1: "BAD_CRC", 2: "TOO_LARGE", 3: "BAD_VERSION", 4: "UNKNOWN_TYPE",
               5: "BAD_LENGTH", 6: "KERNEL_FAILED", 7: "BAD_ARGUMENT"}
DEFAULT_MAX_REPLY = 1 << 24  # until hello has told us the device's frame size
MAX_DEVICE_PAYLOAD = 1 << 26  # the largest frame buffer a device may announce in hello
MAX_TEXT_LINE = 4096          # device text (boot line, noise) kept per line ...
MAX_TEXT_LINES = 200          # ... and lines kept: line noise never grows memory without bound
DTYPES = ("float32", "float16", "float64", "int8", "uint8", "int16", "uint16", "int32",
          "uint32", "int64")


class ProtocolError(DeviceError):
    """A reply that is not a well-formed frame of this protocol."""


class RemoteError(DeviceError):
    """The device answered with an error frame."""

    def __init__(self, code: int, message: str):
        self.code, self.message = code, message
        super().__init__(f"device error {ERROR_NAMES.get(code, code)}: {message}")


def encode_frame(msg_type: int, seq: int, payload: bytes = b"", version: int = VERSION) -> bytes:
    head = struct.pack("<2sBBHHI", MAGIC, version, msg_type, seq & 0xFFFF, 0, len(payload))
    return (head + struct.pack("<I", zlib.crc32(head)) + payload
            + struct.pack("<I", zlib.crc32(payload)))


class FrameDecoder:
    """Incremental decoder: feed bytes, take whole frames. Bytes that are not a frame (a
    boot line, line noise) are skipped and kept in `skipped` for the log."""

    def __init__(self, max_payload: int = DEFAULT_MAX_REPLY):
        self.buf = bytearray()
        self.max_payload = max_payload
        self.skipped = bytearray()
        self.bad_frames = 0
        self.corrupt_seqs: set[int] = set()  # checked headers whose payload CRC failed

    def feed(self, data: bytes) -> None:
        self.buf.extend(data)

    def next_frame(self):
        """(type, seq, payload) or None if no whole frame is buffered yet."""
        while True:
            i = self.buf.find(MAGIC)
            if i < 0:
                keep = 1 if self.buf[-1:] == MAGIC[:1] else 0
                self._skip(len(self.buf) - keep)
                return None
            if i:
                self._skip(i)
            if len(self.buf) < HEADER.size:
                return None
            magic, version, mtype, seq, _res, length, hcrc = HEADER.unpack_from(self.buf)
            if zlib.crc32(bytes(self.buf[:12])) != hcrc or length > self.max_payload:
                # Not a trustworthy header: drop one byte and look for the next magic.
                self.bad_frames += 1
                self._skip(1)
                continue
            total = HEADER.size + length + 4
            if len(self.buf) < total:
                return None
            payload = bytes(self.buf[HEADER.size:HEADER.size + length])
            (pcrc,) = struct.unpack_from("<I", self.buf, HEADER.size + length)
            if zlib.crc32(payload) != pcrc:
                self.bad_frames += 1
                self.corrupt_seqs.add(seq)
                self._skip(1)
                continue
            del self.buf[:total]
            if version != VERSION:
                raise ProtocolError(f"the device speaks protocol version {version}; this host "
                                    f"speaks {VERSION}: rebuild the program with this edge_mnv1")
            return mtype, seq, payload

    def take_skipped(self) -> bytes:
        out = bytes(self.skipped)
        self.skipped.clear()
        return out

    def _skip(self, n: int) -> None:
        self.skipped.extend(self.buf[:n])
        if len(self.skipped) > 2 * MAX_TEXT_LINE:  # nobody collects them: keep the tail
            del self.skipped[:-MAX_TEXT_LINE]
        del self.buf[:n]


class Client:
    """Requests with sequence numbers, timeouts and retries over any transport."""

    def __init__(self, transport, timeout: float = 60.0, retries: int = 2):
        self.transport = transport
        self.timeout = timeout
        self.retries = retries
        self.decoder = FrameDecoder()
        self.seq = 0
        self.info: dict | None = None
        self.retried = 0
        self.text_lines: list[str] = []
        self._partial = ""          # text not yet ended by a newline (a UART delivers in pieces)
        self.replies = 0            # replies the device must have counted (see check_not_reset)
        self._hello_mark: tuple[int, int] | None = None
        # What went wrong on the link and was caught: replies that never came (timeouts),
        # replies whose payload CRC failed, requests the device refused as corrupt (BAD_CRC).
        self.timeouts = 0
        self.corrupt_replies = 0
        self.rejected_requests = 0
        self.verbose = True         # log each retry and each piece of line noise

    # -- plumbing --------------------------------------------------------------------
    def _read_frame(self, deadline: float, corrupt_seq: int | None = None):
        """The next whole frame; None at the deadline, or at once when a reply to request
        `corrupt_seq` came with a bad payload CRC (no other reply to it is on the way)."""
        while True:
            frame = self.decoder.next_frame()
            skipped = self.decoder.take_skipped()
            if skipped:
                self._note_text(skipped)
            if frame is not None:
                self._flush_text()
                return frame
            if corrupt_seq is not None and corrupt_seq in self.decoder.corrupt_seqs:
                self.corrupt_replies += 1
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.decoder.feed(self.transport.read(65536, min(left, 1.0)))

    def _note_text(self, data: bytes) -> None:
        text = self._partial + data.decode("utf-8", "replace")
        lines = text.split("\n")
        self._partial = lines.pop()  # whole lines only; the rest waits for its newline
        if len(self._partial) > MAX_TEXT_LINE:  # no newline in sight: noise, not a line
            lines.append(self._partial)
            self._partial = ""
        for line in lines:
            self._add_line(line)

    def _flush_text(self) -> None:
        if self._partial:
            self._add_line(self._partial)
            self._partial = ""

    def _add_line(self, line: str) -> None:
        line = line.strip()[:MAX_TEXT_LINE]
        if not line:
            return
        self.text_lines.append(line)
        if len(self.text_lines) > MAX_TEXT_LINES:
            del self.text_lines[:-MAX_TEXT_LINES]
        if self.verbose:
            log.info(f"device: {line[:200]}")

    def request(self, msg_type: int, payload: bytes = b"", timeout: float | None = None) -> bytes:
        self.seq = (self.seq + 1) & 0xFFFF
        seq = self.seq
        frame = encode_frame(msg_type, seq, payload)
        timeout = timeout or self.timeout
        for attempt in range(self.retries + 1):
            if attempt:
                self.retried += 1
                if self.verbose:
                    log.info(f"protocol: no valid reply to request {seq} (type {msg_type:#x}); "
                             f"retry {attempt} of {self.retries}")
            self.decoder.corrupt_seqs.clear()
            self.transport.write(frame)
            deadline = time.monotonic() + timeout
            while True:
                got = self._read_frame(deadline, corrupt_seq=seq)
                if got is None:
                    if seq not in self.decoder.corrupt_seqs:
                        self.timeouts += 1
                    break  # timed out or the reply came corrupt: resend the same request
                mtype, rseq, body = got
                if rseq != seq:
                    continue  # a late reply to an earlier request: never accept it for this one
                if mtype == ERROR:
                    code, message = _parse_error(body)
                    if code != 1:  # the device counted the request (a bad header is not)
                        self.replies += 1
                    if code == 1:
                        self.rejected_requests += 1
                        if attempt < self.retries:  # the device saw a corrupt request
                            break
                    raise RemoteError(code, message)
                if mtype != (msg_type | REPLY):
                    raise ProtocolError(f"reply type {mtype:#x} to a request of type {msg_type:#x}")
                self.replies += 1
                return body
        raise DeviceError(f"no valid reply from {self.transport.description} after "
                          f"{self.retries + 1} attempts of {timeout:g} s; check that the device "
                          "runs this artifact's program and that the link is up")

    # -- messages --------------------------------------------------------------------
    def hello(self) -> dict:
        info = check_hello_reply(_json_reply(self.request(HELLO), "hello"))
        self.decoder.max_payload = max(info["max_payload"], 4096) + 64
        self.info = info
        if isinstance(info.get("requests"), int):
            self._hello_mark = (info["requests"], self.replies)
        return info

    def check_not_reset(self) -> dict:
        """Reads hello again and raises DeviceError if the device restarted since the last
        hello: its request counter must have grown by at least the replies received since
        (a restarted device counts from zero). Call it after a run whose results matter."""
        mark = self._hello_mark
        before = self.info
        info = self.hello()
        if mark is None or not isinstance(info.get("requests"), int):
            return info
        requests0, replies0 = mark
        answered = self.replies - replies0
        reset = info["requests"] < requests0 + answered
        if before and "boot_count" in before and info.get("boot_count") != before["boot_count"]:
            reset = True
        if reset:
            raise DeviceError(
                f"{self.transport.description}: the device reset during the run (its request "
                f"counter went from {requests0} to {info['requests']} while {answered} requests "
                "were answered); results since the previous hello are not trusted: check its "
                "power, watchdog and fault output, then run again")
        return info

    def _require_info(self) -> dict:
        return self.info or self.hello()

    def infer(self, x: np.ndarray) -> np.ndarray:
        info = self._require_info()
        want_shape = tuple(info["input"]["shape"])
        want_dtype = np.dtype(info["input"]["dtype"])
        x = np.asarray(x)
        if x.shape != want_shape:
            if x.shape == want_shape[1:]:
                x = x[None]
            else:
                raise UsageError(f"input shape {x.shape} does not match the model's "
                                 f"{want_shape}; resize or reshape the input")
        if x.dtype != want_dtype:
            raise UsageError(f"input dtype {x.dtype} does not match the model's {want_dtype}; "
                             f"convert it (e.g. x.astype('{want_dtype}'))")
        body = self.request(INFER, np.ascontiguousarray(x).tobytes())
        out = info["output"]
        if len(body) != int(out["bytes"]):
            raise ProtocolError(f"output has {len(body)} bytes, expected {out['bytes']}")
        return np.frombuffer(body, dtype=out["dtype"]).reshape(out["shape"]).copy()

    def bench(self, runs: int) -> list[int]:
        body = self.request(BENCH, struct.pack("<I", runs), timeout=self.timeout * max(1, runs / 10))
        if len(body) < 4:
            raise ProtocolError("bench reply too short")
        (n,) = struct.unpack_from("<I", body)
        if n != runs or len(body) != 4 + 8 * n:
            raise ProtocolError(f"bench reply holds {n} runs in {len(body)} bytes; asked {runs}")
        return list(struct.unpack_from(f"<{n}Q", body, 4))

    def profile(self, runs: int = 1) -> list[int]:
        body = self.request(PROFILE, struct.pack("<I", runs), timeout=self.timeout * max(1, runs))
        if len(body) < 4:
            raise ProtocolError("profile reply too short")
        (n,) = struct.unpack_from("<I", body)
        if len(body) != 4 + 8 * n:
            raise ProtocolError(f"profile reply holds {n} kernels in {len(body)} bytes")
        return list(struct.unpack_from(f"<{n}Q", body, 4))

    def selftest(self) -> dict:
        result = _json_reply(self.request(SELFTEST), "selftest")
        if not isinstance(result, dict) or not isinstance(result.get("passed"), bool):
            raise ProtocolError(f"selftest reply has no true/false 'passed': {str(result)[:200]}")
        return result


def _is_count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _json_reply(body: bytes, what: str):
    """A JSON reply, or ProtocolError (not a ValueError, RecursionError, ...)."""
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ProtocolError(f"{what} reply is not JSON ({type(e).__name__}: {str(e)[:120]})") from None


def check_hello_reply(info) -> dict:
    """A hello the client can act on: everything it will size or shape by is checked here,
    so that a malformed hello is a ProtocolError now, not a TypeError in infer later."""
    if not isinstance(info, dict) or not _is_count(info.get("protocol")) \
            or info["protocol"] != VERSION:
        got = info.get("protocol") if isinstance(info, dict) else "?"
        raise ProtocolError(f"device speaks protocol {str(got)[:40]}, this host speaks {VERSION}; "
                            "rebuild the device program")
    limit = info.get("max_payload")
    if not _is_count(limit) or not 0 < limit <= MAX_DEVICE_PAYLOAD:
        raise ProtocolError(f"hello reply: max_payload {str(limit)[:40]} is not a frame size "
                            f"from 1 to {MAX_DEVICE_PAYLOAD}")
    for key in ("input", "output"):
        t = info.get(key)
        if not isinstance(t, dict):
            raise ProtocolError(f"hello reply lacks {key!r}")
        shape, dtype, nbytes = t.get("shape"), t.get("dtype"), t.get("bytes")
        if not isinstance(shape, list) or not 1 <= len(shape) <= 8 \
                or not all(_is_count(d) and d >= 1 for d in shape):
            raise ProtocolError(f"hello reply: {key} shape {str(shape)[:60]} is not a list of "
                                "positive integers")
        if dtype not in DTYPES:
            raise ProtocolError(f"hello reply: {key} dtype {str(dtype)[:40]} is not one of "
                                f"{', '.join(DTYPES)}")
        if not _is_count(nbytes) or nbytes != int(np.prod(shape, dtype=object)) * np.dtype(dtype).itemsize \
                or nbytes > limit:
            raise ProtocolError(f"hello reply: {key} bytes {str(nbytes)[:40]} does not match "
                                f"shape {shape} of {dtype} within max_payload {limit}")
    for key in ("requests", "boot_count"):
        if key in info and not _is_count(info[key]):
            raise ProtocolError(f"hello reply: {key} {str(info[key])[:40]} is not a count")
    return info


def _parse_error(body: bytes) -> tuple[int, str]:
    if len(body) < 2:
        raise ProtocolError("error reply without a code")
    (code,) = struct.unpack_from("<H", body)
    return code, body[2:].decode("utf-8", "replace")
