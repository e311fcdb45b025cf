"""`--device local`: the artifact's program as a child process of this machine, under the
target's emulator when the program is for another architecture (qemu-aarch64 for rpi4)."""

from __future__ import annotations

import contextlib
import os
import platform
import time

from edge_mnv1.errors import UsageError
from edge_mnv1.artifact.artifact import Artifact
from edge_mnv1.device.session import open_session
from edge_mnv1.device.transport import ProcessTransport


def program_argv(art: Artifact) -> list[str]:
    m = art.manifest
    if m.is_mcu:
        raise UsageError(f"{art.path} is firmware for the MCU target {m.target_name}; "
                         "use --device emulated (QEMU) or a serial:// device")
    argv = [str(art.program), "--serve"]
    if m.target_arch != platform.machine():
        emulator = (art.target.emulator or {}).get("command")
        if not emulator:
            raise UsageError(f"{art.path} is for {m.target_arch} and this machine is "
                             f"{platform.machine()}, and the target names no emulator")
        argv = list(emulator) + argv
    return argv


def open(url: str, art: Artifact, stack: contextlib.ExitStack) -> ProcessTransport:  # noqa: A001
    env = dict(os.environ, **((art.target.emulator or {}).get("env") or {}))
    return ProcessTransport(program_argv(art), description=f"local {art.manifest.target_name} "
                            "program", env=env)


def deploy(url: str, art: Artifact) -> dict:
    """Nothing to upload: `local` runs the program where it is; only its hello is checked."""
    t0 = time.monotonic()
    with open_session(url, art, url, open, timeout=60, retries=1) as dev:
        hello = dev.hello
    return {"device": url, "dir": str(art.path), "uploaded": [], "skipped": [], "bytes": 0,
            "hello": hello, "seconds": round(time.monotonic() - t0, 3),
            "note": "local runs the program where it is; nothing to upload"}
