"""The hello reply: everything the client will size or shape by, checked before it is used.
A version-1 device (no chunk size, identity or boot count) is told apart with a message that
says what to do."""

from __future__ import annotations

import json

import numpy as np

from edge_mnv1.device.frames import DTYPES, MAX_DEVICE_PAYLOAD, VERSION, ProtocolError, \
    version_message

MIN_CHUNK = 64  # a chunk smaller than this would cost more in headers than it carries


def _is_count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def json_reply(body: bytes, what: str):
    """A JSON reply, or ProtocolError (not a ValueError, RecursionError, ...)."""
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ProtocolError(f"{what} reply is not JSON ({type(e).__name__}: {str(e)[:120]})") from None


def check_hello_reply(info) -> dict:
    """A hello the client can act on: everything it will size or shape by is checked here,
    so that a malformed hello is a ProtocolError now, not a TypeError in infer later."""
    if not isinstance(info, dict):
        raise ProtocolError(f"hello reply is not a JSON object: {str(info)[:80]}")
    if info.get("protocol") != VERSION or not _is_count(info.get("protocol")):
        raise ProtocolError(version_message(info.get("protocol")))
    if not all(k in info for k in ("chunk_bytes", "identity", "boot_count")):
        # A version-2 header around a version-1 hello: an old program, whatever it claims.
        raise ProtocolError(version_message(1))
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
    chunk = info["chunk_bytes"]
    if not _is_count(chunk) or not MIN_CHUNK <= chunk <= min(limit, 1 << 16):
        raise ProtocolError(f"hello reply: chunk_bytes {str(chunk)[:40]} is not a chunk size "
                            f"from {MIN_CHUNK} to min(max_payload, 65536)")
    if not isinstance(info["identity"], str) or not 0 < len(info["identity"]) <= 128:
        raise ProtocolError(f"hello reply: identity {str(info['identity'])[:80]} is not a "
                            "digest string")
    return info


