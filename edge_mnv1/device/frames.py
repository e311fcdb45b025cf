"""The frames of docs/protocol.md on the host: message types, error codes, the encoder and
the incremental decoder. Nothing here trusts a length before the header's own CRC has
matched and the length is within the limit; a malformed frame is skipped, and a frame of
another protocol version is a ProtocolError that says what to do.
"""

from __future__ import annotations

import struct
import zlib

from edge_mnv1.errors import DeviceError
from edge_mnv1.versions import PROTOCOL_VERSION

VERSION = PROTOCOL_VERSION
MAGIC = b"\xedN"
HEADER = struct.Struct("<2sBBHHII")   # magic, version, type, seq, chunk index, length, header crc
HELLO, INFER, BENCH, PROFILE, SELFTEST, ERROR, REPLY = 0x01, 0x02, 0x03, 0x04, 0x05, 0x7F, 0x80
CHUNK, INFER_STAGED, READ, HELD = 0x06, 0x07, 0x08, 0x7E  # protocol 2: chunked transfer
ERROR_NAMES = {1: "BAD_CRC", 2: "TOO_LARGE", 3: "BAD_VERSION", 4: "UNKNOWN_TYPE",
               5: "BAD_LENGTH", 6: "KERNEL_FAILED", 7: "BAD_ARGUMENT", 8: "INCOMPLETE",
               9: "CUT_OFF"}
BAD_CRC, INCOMPLETE, CUT_OFF = 1, 8, 9
RESEND_CODES = (BAD_CRC, CUT_OFF)  # the request did not reach the device whole: send it again
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


def encode_frame(msg_type: int, seq: int, payload: bytes = b"", version: int = VERSION,
                 index: int = 0) -> bytes:
    head = struct.pack("<2sBBHHI", MAGIC, version, msg_type, seq & 0xFFFF, index & 0xFFFF,
                       len(payload))
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
        self.last_index = 0

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
                raise ProtocolError(version_message(version))
            self.last_index = _res  # the chunk index of the frame returned
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


def version_message(version) -> str:
    """What to do about a device that speaks another protocol version."""
    if isinstance(version, int) and not isinstance(version, bool) and 0 < version < VERSION:
        return (f"the device runs protocol v{version} (a program built by an older edge_mnv1); "
                f"this host speaks v{VERSION}, which moves large inputs and replies in "
                "checked chunks: rebuild the artifact with this edge_mnv1 (edge-mnv1 compile) "
                "and deploy it to the device (edge-mnv1 deploy, or --flash for a board)")
    return (f"the device speaks protocol {str(version)[:40]}, this host speaks v{VERSION}: "
            "install the edge_mnv1 that built the device's program, or rebuild the artifact "
            "with this one and deploy it")


def parse_error(body: bytes) -> tuple[int, str]:
    if len(body) < 2:
        raise ProtocolError("error reply without a code")
    (code,) = struct.unpack_from("<H", body)
    return code, body[2:].decode("utf-8", "replace")
