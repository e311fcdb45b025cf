"""Chunked transfer (docs/protocol.md, "Chunks"): many small requests in flight at once, each
its own frame with its own sequence number, CRC and reply, and only those whose reply did not
come back intact sent again. Used for an input larger than a chunk (CHUNK frames, then
INFER_STAGED) and for a reply the device holds because it is larger than a chunk (READ).

A request is re-sent when the device refused it as damaged (BAD_CRC) or cut off (CUT_OFF),
when its reply came with a bad payload CRC, when a reply to a request sent after it came
first (the device answers in order, so this one was lost: a damaged header, a dropped byte),
or when nothing arrived for client.chunk_timeout (else client.timeout; then every request in
flight is re-sent). A
chunk is a small part of a request's bytes, so each may be re-sent up to
CHUNK_RETRY_FACTOR x client.retries times.
"""

from __future__ import annotations

import struct
import time
import zlib
from collections import deque

from edge_mnv1.errors import DeviceError
from edge_mnv1.device.frames import (CHUNK, CUT_OFF, ERROR, READ, REPLY, RESEND_CODES, ProtocolError,
                                     RemoteError, encode_frame, parse_error)

# Requests in flight at once: enough to keep a serial link busy, few enough that the device's
# replies (about 20 bytes each) never fill a pipe or pty while the host is still writing.
WINDOW = 16
CHUNK_RETRY_FACTOR = 2


def exchange(client, requests: list[tuple[int, int, bytes]]) -> list[bytes]:
    """Sends each (type, chunk index, payload) request and returns the reply payloads in
    order. RemoteError for a refusal that resending cannot mend, DeviceError when a request
    still has no intact reply after its retries."""
    results: list[bytes | None] = [None] * len(requests)
    sends = [0] * len(requests)
    pending = deque(range(len(requests)))
    in_flight: dict[int, int] = {}  # sequence number -> request position
    timeout = client.chunk_timeout or client.timeout
    last = time.monotonic()  # the last progress: frames sent or a reply taken
    while pending or in_flight:
        while pending and len(in_flight) < WINDOW:
            k = pending.popleft()
            if sends[k] > CHUNK_RETRY_FACTOR * client.retries:
                raise DeviceError(f"no intact reply from {client.transport.description} to "
                                  f"chunk {requests[k][1]} after {sends[k]} attempts of "
                                  f"{client.timeout:g} s; check the link")
            client.retried += sends[k] > 0
            sends[k] += 1
            seq = client.next_seq()
            in_flight[seq] = k
            mtype, index, payload = requests[k]
            client.transport.write(encode_frame(mtype, seq, payload, index=index))
            last = time.monotonic()
        got = client.read_frame(time.monotonic() + timeout, watch=in_flight)
        if got is None:
            _resend_lost(client, in_flight, pending)
            continue
        mtype, seq, body = got
        if seq not in in_flight:
            continue  # a late reply to an attempt already re-sent, or to another request
        for earlier in list(in_flight):  # sent before this one and never answered: lost
            if earlier == seq:
                break
            client.lost_frames += 1
            pending.append(in_flight.pop(earlier))
        k = in_flight.pop(seq)
        if mtype == ERROR:
            code, message = parse_error(body)
            if code not in RESEND_CODES:
                client.replies += 1
                raise RemoteError(code, message)
            client.rejected_requests += 1
            client.cut_off += code == CUT_OFF
            client.replies += code == CUT_OFF  # the device counted it (not a bad header)
            pending.append(k)
            continue
        if mtype != requests[k][0] | REPLY:
            raise ProtocolError(f"reply type {mtype:#x} to a chunk request of type "
                                f"{requests[k][0]:#x}")
        client.replies += 1
        results[k] = body
        now = time.monotonic()
        client.slowest_chunk_reply = max(client.slowest_chunk_reply, now - last)
        last = now
    return results  # type: ignore[return-value]


def _resend_lost(client, in_flight: dict[int, int], pending: deque) -> None:
    """The replies whose payload CRC failed are lost: re-send those at once. Nothing at all
    for a timeout: every request in flight is re-sent."""
    corrupt = [seq for seq in in_flight if seq in client.decoder.corrupt_seqs]
    if corrupt:
        client.corrupt_replies += len(corrupt)
    else:
        client.timeouts += 1
        corrupt = list(in_flight)
    for seq in corrupt:
        client.decoder.corrupt_seqs.discard(seq)
        pending.append(in_flight.pop(seq))


def read_held(client, seq: int, descriptor: bytes, want_type: int) -> bytes:
    """The reply to request `seq` that the device holds (a HELD reply's descriptor: reply
    type, chunk size, length, CRC-32), read in chunks and checked whole."""
    if len(descriptor) != 12:
        raise ProtocolError(f"held-reply descriptor of {len(descriptor)} bytes, expected 12")
    rtype, _zero, chunk, total, crc = struct.unpack("<BBHII", descriptor)
    if rtype != want_type:
        raise ProtocolError(f"held reply of type {rtype:#x} to a request answered by "
                            f"{want_type:#x}")
    if not chunk or total > client.decoder.max_payload or -(-total // chunk) > 1 << 16:
        raise ProtocolError(f"held reply of {total} bytes in chunks of {chunk}: not a size "
                            "this client reads")
    count = -(-total // chunk)
    parts = exchange(client, [(READ, i, struct.pack("<H", seq)) for i in range(count)])
    body = b"".join(parts)
    if len(body) != total or zlib.crc32(body) != crc:
        raise ProtocolError(f"held reply of {len(body)} bytes does not match its descriptor "
                            f"({total} bytes, CRC {crc:#010x})")
    return body


def send_input(client, payload: bytes, chunk: int) -> None:
    """The input in chunks of `chunk` bytes into the device's frame buffer."""
    count = -(-len(payload) // chunk)
    if count > 1 << 16:
        raise ProtocolError(f"an input of {len(payload)} bytes needs {count} chunks of {chunk}; "
                            "the protocol numbers at most 65536")
    exchange(client, [(CHUNK, i, payload[i * chunk:(i + 1) * chunk]) for i in range(count)])
