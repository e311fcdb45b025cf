"""`--device ssh://user@host[:port][/dir][?identity=KEY&known_hosts=FILE&accept_new=1]`

The device program runs on a remote Linux machine (a Raspberry Pi, or the emulated one of
emulators/sshd.py) through one multiplexed OpenSSH connection per command, which carries
the probe, the uploads and the protocol session (docs/ssh.md):
- ssh_url: the URL; ssh_connection: the connection and the program's stdin/stdout as the
  byte pipe; ssh_diagnose: ssh's failures in words; ssh_upload: probe, plan, atomic uploads.
- `uname -m` on the device must be the artifact's architecture; when it is not, and the target
  names an emulator (qemu-aarch64 for rpi4) that the remote machine has, the program runs
  under it and the device is reported as emulated; otherwise the deploy is refused.
"""

from __future__ import annotations

import contextlib
import shlex
import time

from edge_mnv1 import log
from edge_mnv1.artifact.artifact import Artifact
from edge_mnv1.device.session import open_session
from edge_mnv1.device.ssh_connection import SshConnection, SshTransport
from edge_mnv1.device.ssh_upload import ensure_deployed
from edge_mnv1.device.ssh_url import parse_url, shown_dir


def serve_command(rdir: str, prefix: list[str]) -> str:
    """The remote shell command that runs the program on stdin/stdout. Not `exec`: the shell
    stays, so a program killed by a signal shows as exit 128+N (ssh reports 255 otherwise)."""
    q = shlex.quote(rdir)
    run = " ".join(shlex.quote(a) for a in [*prefix, "./program", "--serve"])
    return (f"cd -- {q} || exit 96; "
            f"[ -f ./program ] || {{ echo \"edge_mnv1: no program in {shown_dir(rdir)}: run "
            "edge-mnv1 deploy\" >&2; exit 127; }; "
            f"{run}; s=$?; exit $s")


def open(url: str, art: Artifact, stack: contextlib.ExitStack) -> SshTransport:  # noqa: A001
    """Deploys what changed, then the program's stdin/stdout on the same connection."""
    conn = SshConnection(parse_url(url))
    stack.callback(conn.close)
    info = ensure_deployed(conn, art)
    if info["uploaded"]:
        log.info(f"deploy: {conn.u.where}: uploaded {', '.join(info['uploaded'])} "
                 f"({info['bytes']} bytes) in {info['seconds']:.2f} s")
    how = (f" (emulated: the {info['remote_arch']} machine runs the "
           f"{art.manifest.target_arch} program under {' '.join(info['_prefix'])})"
           if info["emulated"] else "")
    remote = {k: v for k, v in info.items() if not k.startswith("_")}
    return SshTransport(conn, serve_command(info["_rdir"], info["_prefix"]),
                        f"ssh {conn.u.where}:{info['dir']}{how}", remote)


def deploy(url: str, art: Artifact) -> dict:
    """`edge-mnv1 deploy` for one ssh device: upload what changed, start the program, check
    its hello against the manifest (model, target, shapes, protocol version)."""
    t0 = time.monotonic()
    with open_session(url, art, url, open, timeout=60, retries=1) as dev:
        out = dict(dev.transport.remote)
        out["hello"] = dev.hello
    out["seconds"] = round(time.monotonic() - t0, 3)
    return out
