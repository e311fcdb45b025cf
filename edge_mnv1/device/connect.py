"""A device URL -> a connected, checked protocol client.

`open_device(url, artifact)` opens the URL's link (device/registry.py), reads the device's
hello and checks it against the artifact (device/session.py). `faults:SPEC+URL`, or
`faults=`, puts a fault-injecting link (device/faults.py) between them from the start.
"""

from __future__ import annotations

from pathlib import Path

from edge_mnv1.errors import UsageError
from edge_mnv1.artifact.artifact import Artifact
from edge_mnv1.device.faults import FaultSpec, split_url
from edge_mnv1.device.registry import scheme_of
from edge_mnv1.device.session import Device, open_session


def open_device(url: str, artifact: Artifact | str | Path, *, timeout: float = 120.0,
                retries: int = 2, faults: FaultSpec | str | None = None) -> Device:
    """Connects, reads hello and checks it against the artifact. An artifact given as a
    directory is loaded (and its files checked) here."""
    prefixed, link_url = split_url(url)
    if isinstance(faults, str):
        faults = FaultSpec.parse(faults)
    if prefixed and faults:
        raise UsageError("give the faults either as a faults:SPEC+ device prefix or as an "
                         "option, not both")
    scheme = scheme_of(link_url)
    art = artifact if isinstance(artifact, Artifact) else Artifact.load(artifact)
    return open_session(url, art, link_url, scheme.open, timeout=timeout, retries=retries,
                        faults=faults or prefixed)
