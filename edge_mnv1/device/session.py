"""A connected device: a transport, the protocol client on it, and the hello check that
proves the device runs the artifact (its identity, model and shapes). Every way of reaching a device (open_device,
and each scheme's deploy) ends here, so the check exists once."""

from __future__ import annotations

import contextlib
from typing import Callable

from edge_mnv1.errors import DeviceError
from edge_mnv1.artifact.artifact import Artifact, Manifest
from edge_mnv1.device.faults import FaultSpec, FaultyTransport
from edge_mnv1.device.protocol import Client
from edge_mnv1.device.transport import Transport

# How a scheme opens its link: (url, artifact, stack for what to stop afterwards) -> Transport.
Opener = Callable[[str, Artifact, contextlib.ExitStack], Transport]


class Device:
    """A connected device: its URL, its protocol client, and what to stop afterwards."""

    def __init__(self, url: str, transport: Transport, stack: contextlib.ExitStack,
                 timeout: float, retries: int):
        self.url = url
        self.transport = transport  # the link as opened (a fault-injecting one goes on top)
        self.client = Client(transport, timeout=timeout, retries=retries)
        self._stack = stack
        self.hello: dict | None = None
        self.faults: FaultyTransport | None = None  # the fault-injecting link, if any

    def inject_faults(self, spec: FaultSpec) -> FaultyTransport:
        """From now on every byte between the client and the device goes through a
        fault-injecting link (its `enabled` switches it off again); returns that link."""
        self.faults = FaultyTransport(self.client.transport, spec)
        self.client.transport = self.faults
        return self.faults

    def close(self) -> None:
        self._stack.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def check_hello(hello: dict, manifest: Manifest, url: str) -> None:
    """The device must run this artifact: its identity (a digest of kernel code, weights and
    memory plan, manifest "identity") and the model and shapes the manifest promises. Another
    build of the same configuration (other weights, other schedules) differs in identity."""
    want = {"model": manifest.model_key, "target": manifest.target_name,
            "input": list(manifest.input.shape), "output": list(manifest.output.shape)}
    got = {"model": hello.get("model"), "target": hello.get("target"),
           "input": hello.get("input", {}).get("shape"), "output": hello.get("output", {}).get("shape")}
    want_id, got_id = manifest.get("identity"), hello.get("identity")
    if want != got or (want_id is not None and got_id != want_id):
        shape = "" if want == got else f" (the device runs {got}, the artifact is {want})"
        raise DeviceError(f"{url}: the device runs another artifact: identity {got_id} on the "
                          f"device, {want_id} in this artifact's manifest{shape}; deploy this "
                          "artifact to it first (edge-mnv1 deploy ARTIFACT --device URL)")


def open_session(url: str, art: Artifact, link_url: str, opener: Opener, *,
                 timeout: float = 120.0, retries: int = 2,
                 faults: FaultSpec | None = None) -> Device:
    """Opens `link_url` with `opener`, puts the fault-injecting link on it when asked (from
    the start: the hello goes through it too), reads hello and checks it. On any failure
    everything opened so far is stopped."""
    stack = contextlib.ExitStack()
    try:
        transport = opener(link_url, art, stack)
        stack.callback(transport.close)
        dev = Device(url, transport, stack, timeout, retries)
        if faults is not None:
            dev.inject_faults(faults)
        dev.hello = dev.client.hello()
        check_hello(dev.hello, art.manifest, url)
        return dev
    except BaseException:
        stack.close()
        raise
