"""A device URL -> a connected protocol client.

    local                         this machine (under the target's emulator if needed)
    ssh://user@host[:port][/dir]  the system OpenSSH client (device/ssh.py)
    serial:///dev/ttyACM0?baud=N, socket://host:port, rfc2217://host:port   pyserial
    emulated                      start the target's emulated device for this command
    faults:SPEC+URL               any of these through a fault-injecting link (device/faults.py)

Each scheme's module has `open(url, artifact, manifest, target) -> (transport, cleanup)`.
"""

from __future__ import annotations

import contextlib
import importlib
from pathlib import Path
from urllib.parse import urlsplit

from edge_mnv1.errors import DeviceError, UsageError
from edge_mnv1.artifact.target import load_target
from edge_mnv1.artifact.artifact import load_manifest
from edge_mnv1.device.faults import FaultSpec, FaultyTransport, split_url
from edge_mnv1.device.protocol import Client

SCHEMES = {"local": "local", "ssh": "ssh", "serial": "serial_link", "socket": "serial_link",
           "rfc2217": "serial_link", "emulated": "emulated"}


def scheme_of(url: str) -> str:
    if url.startswith("faults:"):
        url = split_url(url)[1]
    if url in ("local", "emulated"):
        return url
    scheme = urlsplit(url).scheme
    if scheme not in SCHEMES:
        raise UsageError(f"device {url!r}: unknown kind of device; use local, emulated, "
                         "ssh://user@host[:port][/dir], serial:///dev/ttyX?baud=N, "
                         "socket://host:port or rfc2217://host:port")
    return scheme


class Device:
    """A connected device: its URL, its protocol client, and what to stop afterwards."""

    def __init__(self, url: str, client: Client, stack: contextlib.ExitStack):
        self.url = url
        self.client = client
        self._stack = stack
        self.hello = None
        self.faults: FaultyTransport | None = None  # the fault-injecting link, if any

    def close(self) -> None:
        self._stack.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def check_hello(hello: dict, manifest: dict, url: str) -> None:
    """The device must run this artifact's model, with the shapes the manifest promises."""
    want = {"model": manifest["model"]["key"], "target": manifest["target"],
            "input": manifest["input"]["shape"], "output": manifest["output"]["shape"]}
    got = {"model": hello.get("model"), "target": hello.get("target"),
           "input": hello.get("input", {}).get("shape"), "output": hello.get("output", {}).get("shape")}
    if want != got:
        raise DeviceError(f"{url}: the device runs {got}, the artifact is {want}; "
                          "deploy this artifact to it (edge-mnv1 deploy)")


def open_device(url: str, artifact: str | Path, manifest: dict | None = None,
                timeout: float = 120.0, retries: int = 2,
                faults: FaultSpec | str | None = None) -> Device:
    """Connects, reads hello and checks it against the artifact. `faults` (or a
    `faults:SPEC+` prefix on the URL) puts a fault-injecting link in between, from the start."""
    prefixed, link_url = split_url(url)
    if isinstance(faults, str):
        faults = FaultSpec.parse(faults)
    if prefixed and faults:
        raise UsageError("give the faults either as a faults:SPEC+ device prefix or as an "
                         "option, not both")
    faults = faults or prefixed
    artifact = Path(artifact)
    manifest = manifest or load_manifest(artifact)
    target = load_target(manifest["target"])
    scheme = scheme_of(link_url)
    stack = contextlib.ExitStack()
    try:
        if scheme == "local":
            from edge_mnv1.device.local import open_local
            transport = open_local(artifact, manifest,
                                   (target.emulator or {}).get("command"),
                                   (target.emulator or {}).get("env"))
        else:
            mod = importlib.import_module(f"edge_mnv1.device.{SCHEMES[scheme]}")
            transport = mod.open(link_url, artifact, manifest, target, stack)
        stack.callback(transport.close)
        if faults is not None:
            transport = FaultyTransport(transport, faults)
        client = Client(transport, timeout=timeout, retries=retries)
        dev = Device(url, client, stack)
        dev.faults = transport if faults is not None else None
        dev.hello = client.hello()
        check_hello(dev.hello, manifest, url)
        return dev
    except BaseException:
        stack.close()
        raise
