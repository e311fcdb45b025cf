"""The host side of docs/protocol.md: the request/response client over any transport.

A transport is a byte pipe (local subprocess, ssh, serial). The frame codec is frames.py,
the hello check hello.py, the chunked transfer of large payloads chunks.py; every malformed
reply becomes a ProtocolError, never another exception.
"""

from __future__ import annotations

import struct
import time
import zlib

import numpy as np

from edge_mnv1 import log
from edge_mnv1.errors import DeviceError, UsageError
from edge_mnv1.device import chunks
from edge_mnv1.device.frames import (  # noqa: F401  (the protocol's names, in one place)
    BAD_CRC, BENCH, CHUNK, CUT_OFF, DEFAULT_MAX_REPLY, DTYPES, ERROR, ERROR_NAMES, HEADER, HELD,
    HELLO, INCOMPLETE, INFER, INFER_STAGED, MAGIC, MAX_DEVICE_PAYLOAD, MAX_TEXT_LINE,
    MAX_TEXT_LINES, PROFILE, READ, REPLY, RESEND_CODES, SELFTEST, VERSION, FrameDecoder,
    ProtocolError, RemoteError, encode_frame, parse_error, version_message)
from edge_mnv1.device.hello import check_hello_reply, json_reply


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
        self.lost_frames = 0        # chunk frames never answered while later ones were
        self.cut_off = 0            # frames the device dropped after its idle gap (CUT_OFF)
        # Chunk replies need no inference: their own time-out (None: `timeout`), and the
        # longest wait for one seen so far, from which a soak sets it.
        self.chunk_timeout: float | None = None
        self.slowest_chunk_reply = 0.0
        self.verbose = True         # log each retry and each piece of line noise

    # -- plumbing --------------------------------------------------------------------
    def next_seq(self) -> int:
        self.seq = (self.seq + 1) & 0xFFFF
        self.decoder.corrupt_seqs.discard(self.seq)  # a stale mark from 65536 requests ago
        return self.seq

    def read_frame(self, deadline: float, watch=()):
        """The next whole frame; None at the deadline, or at once when a reply to one of the
        requests in `watch` came with a bad payload CRC (no other reply to it is on the way)."""
        while True:
            frame = self.decoder.next_frame()
            skipped = self.decoder.take_skipped()
            if skipped:
                self._note_text(skipped)
            if frame is not None:
                self._flush_text()
                return frame
            if any(seq in self.decoder.corrupt_seqs for seq in watch):
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
        """Sends one request and returns its reply's payload, re-sending the same frame (same
        sequence number) when no intact reply comes; a reply the device holds because it is
        larger than a chunk is read in chunks (chunks.py)."""
        seq = self.next_seq()
        frame = encode_frame(msg_type, seq, payload)
        timeout = timeout or self.timeout
        for attempt in range(self.retries + 1):
            if attempt:
                self.retried += 1
                if self.verbose:
                    log.info(f"protocol: no valid reply to request {seq} (type {msg_type:#x}); "
                             f"retry {attempt} of {self.retries}")
            self.decoder.corrupt_seqs.discard(seq)
            self.transport.write(frame)
            got = self._reply_to(seq, time.monotonic() + timeout, resend_ok=attempt < self.retries)
            if got is None:
                continue  # timed out, the reply came corrupt, or the device saw a damaged frame
            mtype, body = got
            if mtype == HELD:
                return chunks.read_held(self, seq, body, msg_type | REPLY)
            if mtype != (msg_type | REPLY):
                raise ProtocolError(f"reply type {mtype:#x} to a request of type {msg_type:#x}")
            return body
        raise DeviceError(f"no valid reply from {self.transport.description} after "
                          f"{self.retries + 1} attempts of {timeout:g} s; check that the device "
                          "runs this artifact's program and that the link is up")

    def _reply_to(self, seq: int, deadline: float, resend_ok: bool):
        """(type, payload) of the reply to request `seq`, or None when it should be sent
        again; RemoteError for an error reply that resending cannot mend."""
        while True:
            got = self.read_frame(deadline, watch=(seq,))
            if got is None:
                if seq in self.decoder.corrupt_seqs:
                    self.corrupt_replies += 1
                else:
                    self.timeouts += 1
                return None
            mtype, rseq, body = got
            if rseq != seq:
                continue  # a late reply to an earlier request: never accept it for this one
            if mtype == ERROR:
                code, message = parse_error(body)
                if code != BAD_CRC:  # the device counted the request (a bad header is not)
                    self.replies += 1
                if code in RESEND_CODES:
                    self.rejected_requests += 1
                    self.cut_off += code == CUT_OFF
                    if resend_ok:  # the device saw a damaged or cut-off request
                        return None
                raise RemoteError(code, message)
            self.replies += 1
            return mtype, body

    # -- messages --------------------------------------------------------------------
    def hello(self) -> dict:
        info = check_hello_reply(json_reply(self.request(HELLO), "hello"))
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
        body = self._infer_bytes(np.ascontiguousarray(x).tobytes(), info["chunk_bytes"])
        out = info["output"]
        if len(body) != int(out["bytes"]):
            raise ProtocolError(f"output has {len(body)} bytes, expected {out['bytes']}")
        return np.frombuffer(body, dtype=out["dtype"]).reshape(out["shape"]).copy()

    def _infer_bytes(self, payload: bytes, chunk: int) -> bytes:
        """An input up to a chunk goes in one INFER frame; a larger one in chunks (each
        acknowledged, only the damaged ones sent again), then INFER_STAGED with the CRC of
        the whole, which the device checks before it runs."""
        if len(payload) <= chunk:
            return self.request(INFER, payload)
        whole = struct.pack("<I", zlib.crc32(payload))
        for attempt in range(self.retries + 1):
            chunks.send_input(self, payload, chunk)
            try:
                return self.request(INFER_STAGED, whole)
            except RemoteError as e:  # the staged input was overwritten: send it again
                if e.code != INCOMPLETE or attempt == self.retries:
                    raise
                self.retried += 1
        raise AssertionError("unreachable")

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
        result = json_reply(self.request(SELFTEST), "selftest")
        if not isinstance(result, dict) or not isinstance(result.get("passed"), bool):
            raise ProtocolError(f"selftest reply has no true/false 'passed': {str(result)[:200]}")
        return result


