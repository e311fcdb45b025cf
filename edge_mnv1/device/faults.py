"""A fault-injecting link: a Transport wrapper that damages bytes in both directions.

    ber=R      each bit flipped with probability R
    drop=R     each byte lost with probability R
    dup=R      each byte sent twice with probability R
    trunc=R    each message (one write to the device, one chunk read from it) cut at a
               random point with probability R, the rest lost (a link that goes down mid-frame)
    delay=R    each message held back with probability R ...
    delay_s=S  ... for S seconds (default 0.05)
    seed=N     the random stream (default 0): the same spec over the same bytes gives the
               same faults

A spec is written `ber=1e-4,drop=1e-5,dup=1e-5,trunc=1e-4,delay=1e-3,delay_s=0.2,seed=7`.
Every fault injected is counted per direction and kind. Each kind is a Bernoulli process
over its direction's stream with its own random stream (the gap to the next event is
geometric): a clean byte costs nothing, and the same seed puts bit flips, drops and
duplicates on the same stream positions however the bytes are split into messages.
Use it from the command line as a device URL prefix, `faults:SPEC+URL` (connect.py), or
in code: `FaultyTransport(inner, FaultSpec.parse("ber=1e-4"))`.
"""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np

from edge_mnv1.errors import UsageError
from edge_mnv1.device.transport import Transport

KINDS = ("ber", "drop", "dup", "trunc", "delay")
DIRECTIONS = ("to_device", "from_device")


@dataclasses.dataclass(frozen=True)
class FaultSpec:
    ber: float = 0.0
    drop: float = 0.0
    dup: float = 0.0
    trunc: float = 0.0
    delay: float = 0.0
    delay_s: float = 0.05
    seed: int = 0

    @classmethod
    def parse(cls, text: str) -> "FaultSpec":
        """`ber=1e-4,drop=1e-5,seed=3` (any subset, any order)."""
        known = {f.name for f in dataclasses.fields(cls)}
        values: dict = {}
        for item in filter(None, (part.strip() for part in str(text).split(","))):
            key, eq, value = item.partition("=")
            key = key.strip()
            if not eq or key not in known:
                raise UsageError(f"faults {text!r}: {item!r} is not KEY=VALUE with KEY one of "
                                 f"{', '.join(sorted(known))}; e.g. ber=1e-4,drop=1e-5,seed=1")
            try:
                values[key] = int(value) if key == "seed" else float(value)
            except ValueError:
                raise UsageError(f"faults {text!r}: {key} needs a number, got {value!r}") from None
        spec = cls(**values)
        for kind in KINDS:
            rate = getattr(spec, kind)
            if not 0.0 <= rate <= 1.0:
                raise UsageError(f"faults {text!r}: {kind}={rate:g} is a probability; give a "
                                 "value from 0 to 1")
        if not 0.0 <= spec.delay_s <= 600 or math.isnan(spec.delay_s):
            raise UsageError(f"faults {text!r}: delay_s={spec.delay_s:g} must be 0-600 seconds")
        return spec

    def __str__(self) -> str:
        parts = [f"{k}={getattr(self, k):g}" for k in KINDS if getattr(self, k)]
        if self.delay:
            parts.append(f"delay_s={self.delay_s:g}")
        return ",".join(parts + [f"seed={self.seed}"])

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def intact_probability(self, nbytes: int) -> float:
        """The chance that a message of nbytes crosses the link undamaged (one direction)."""
        return ((1 - self.ber) ** (8 * nbytes) * (1 - self.drop) ** nbytes
                * (1 - self.dup) ** nbytes * (1 - self.trunc))


class _Events:
    """Where the events of a Bernoulli(p) process fall on a stream of units (bits, bytes,
    messages), fed in pieces: the gap to the next event is geometric."""

    def __init__(self, p: float, rng: np.random.Generator):
        self.p, self.rng = p, rng
        self.next = self._gap() - 1 if p > 0 else math.inf

    def _gap(self) -> int:
        return int(self.rng.geometric(self.p))

    def take(self, n: int) -> list[int]:
        """The positions in [0, n) of this piece's events; the stream moves on by n."""
        out = []
        while self.next < n:
            out.append(int(self.next))
            self.next += self._gap()
        self.next -= n
        return out


class _Direction:
    """The fault processes of one direction, with their counts."""

    def __init__(self, spec: FaultSpec, seed: np.random.SeedSequence):
        # One random stream per kind: where a byte-level fault falls does not depend on how
        # the bytes were split into messages.
        self.spec = spec
        self.events = {k: _Events(getattr(spec, k), np.random.default_rng(s))
                       for k, s in zip(KINDS, seed.spawn(len(KINDS)))}
        self.counts = {"ber": 0, "drop": 0, "dup": 0, "trunc": 0, "trunc_bytes": 0,
                       "delay": 0, "messages": 0, "bytes": 0, "damaged_messages": 0}

    def apply(self, data: bytes) -> tuple[bytes, float]:
        """(the bytes as they arrive, seconds to hold them back)."""
        c = self.counts
        c["messages"] += 1
        c["bytes"] += len(data)
        damaged = False
        if self.events["trunc"].take(1) and data:
            cut = int(self.events["trunc"].rng.integers(0, len(data)))
            c["trunc"] += 1
            c["trunc_bytes"] += len(data) - cut
            data, damaged = data[:cut], True
        dropped = set(self.events["drop"].take(len(data)))
        if dropped:
            c["drop"] += len(dropped)
            data, damaged = bytes(b for i, b in enumerate(data) if i not in dropped), True
        doubled = self.events["dup"].take(len(data))
        if doubled:
            c["dup"] += len(doubled)
            out, start = bytearray(), 0
            for i in doubled:
                out += data[start:i + 1] + data[i:i + 1]
                start = i + 1
            data, damaged = bytes(out + data[start:]), True
        flips = self.events["ber"].take(8 * len(data))
        if flips:
            c["ber"] += len(flips)
            buf = bytearray(data)
            for bit in flips:
                buf[bit >> 3] ^= 1 << (bit & 7)
            data, damaged = bytes(buf), True
        c["damaged_messages"] += damaged
        hold = 0.0
        if self.events["delay"].take(1):
            c["delay"] += 1
            hold = self.spec.delay_s
        return data, hold


class FaultyTransport(Transport):
    """Wraps a transport; while `enabled`, damages what is written to the device and what
    is read from it as the spec says, and counts every fault it injects."""

    def __init__(self, inner: Transport, spec: FaultSpec, enabled: bool = True):
        self.inner = inner
        self.spec = spec
        self.enabled = enabled
        self.description = f"{inner.description} (faults {spec})"
        seeds = np.random.SeedSequence(spec.seed).spawn(len(DIRECTIONS))
        self.directions = {name: _Direction(spec, s) for name, s in zip(DIRECTIONS, seeds)}
        self.intact_writes = 0  # writes whose bytes all arrived, in order, with no gap

    def __getattr__(self, name):  # e.g. a QEMU transport's `board`
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def write(self, data: bytes) -> None:
        if not self.enabled:
            self.inner.write(data)
            self.intact_writes += 1
            return
        out, hold = self.directions["to_device"].apply(data)
        if data in out:  # a byte doubled at either end leaves the frame whole
            self.intact_writes += 1
        if hold:
            time.sleep(hold)
        if out:
            self.inner.write(out)

    def read(self, n: int, timeout: float) -> bytes:
        data = self.inner.read(n, timeout)
        if not self.enabled or not data:
            return data
        out, hold = self.directions["from_device"].apply(data)
        if hold:
            time.sleep(hold)
        return out

    def close(self) -> None:
        self.inner.close()

    def counts(self) -> dict:
        """Faults injected so far: per direction, and their sum per kind."""
        per = {name: dict(d.counts) for name, d in self.directions.items()}
        total = {k: sum(per[d][k] for d in DIRECTIONS) for k in per[DIRECTIONS[0]]}
        return {"total": total, **per}


def split_url(url: str) -> tuple[FaultSpec | None, str]:
    """`faults:SPEC+URL` -> (spec, URL); any other URL -> (None, URL)."""
    if not url.startswith("faults:"):
        return None, url
    spec, plus, rest = url[len("faults:"):].partition("+")
    if not plus or not rest:
        raise UsageError(f"device {url!r}: write faults:SPEC+URL, e.g. "
                         "'faults:ber=1e-4,seed=1+local'")
    return FaultSpec.parse(spec), rest
