"""Every kind of device, by URL scheme: how to open its link and how to deploy to it.

    local                         this machine (under the target's emulator if needed)
    emulated                      start the target's emulated device for this command
    ssh://user@host[:port][/dir]  the system OpenSSH client (ssh.py)
    serial:///dev/ttyACM0?baud=N, socket://host:port, rfc2217://host:port   pyserial

A scheme's `open(url, artifact, stack) -> Transport` starts what the link needs (stopped
when `stack` closes); `deploy(url, artifact) -> dict` puts the artifact on the device and
checks its hello; `flash`, when a scheme has one, is `deploy --flash`; `check(url)` reads the
URL, so that a malformed one is bad usage before any device is touched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable
from urllib.parse import urlsplit

from edge_mnv1.errors import UsageError
from edge_mnv1.artifact.artifact import Artifact
from edge_mnv1.device import emulated, local, serial_deploy, serial_link, ssh, ssh_url
from edge_mnv1.device.faults import split_url
from edge_mnv1.device.session import Opener

Deployer = Callable[[str, Artifact], dict]


@dataclass(frozen=True)
class Scheme:
    name: str
    open: Opener
    deploy: Deployer
    flash: Deployer | None = None          # deploy --flash: run the board's flash tool
    check: Callable[[str], object] | None = None

    def deployer(self, flash: bool) -> Deployer:
        return self.flash if flash and self.flash is not None else self.deploy


_SERIAL = dict(open=serial_link.open, deploy=serial_deploy.deploy, flash=serial_deploy.flash,
               check=serial_link.parse_url)
SCHEMES = {
    "local": Scheme("local", local.open, local.deploy),
    "emulated": Scheme("emulated", emulated.open, emulated.deploy),
    "ssh": Scheme("ssh", ssh.open, ssh.deploy, check=ssh_url.parse_url),
    "serial": Scheme("serial", **_SERIAL),
    "socket": Scheme("socket", **_SERIAL),
    "rfc2217": Scheme("rfc2217", **_SERIAL),
}


def scheme_of(url: str) -> Scheme:
    """The scheme of a device URL (a faults:SPEC+ prefix looks through to the link's URL),
    its URL checked; UsageError naming the kinds there are for an unknown one."""
    url = split_url(url)[1]
    name = url if url in ("local", "emulated") else urlsplit(url).scheme
    if name not in SCHEMES:
        raise UsageError(f"device {url!r}: unknown kind of device; use local, emulated, "
                         "ssh://user@host[:port][/dir], serial:///dev/ttyX?baud=N, "
                         "socket://host:port or rfc2217://host:port")
    scheme = SCHEMES[name]
    if scheme.check is not None:
        scheme.check(url)
    return scheme
