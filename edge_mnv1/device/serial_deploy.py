"""Putting an artifact's firmware on the board behind a serial device URL.

A board started by `edge-mnv1 emulate` on this machine (socket://127.0.0.1:P) is restarted
with the new image, like flashing a board. A real board is flashed with the target's
board.flash_command: `deploy` prints that command, `flash` (deploy --flash) runs it. Either
way the board's hello is then checked against the artifact.
"""

from __future__ import annotations

import shlex
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

from edge_mnv1.errors import DeviceError, ToolError, UsageError
from edge_mnv1.artifact.artifact import Artifact
from edge_mnv1.device import serial_link
from edge_mnv1.device.session import open_session
from edge_mnv1.emulators import mcu_server


def _emulator_port(url: str) -> int | None:
    """The port of the `edge-mnv1 emulate` behind a local socket:// URL, if one runs."""
    parts = urlsplit(url)
    if parts.scheme == "socket" and parts.hostname in ("127.0.0.1", "localhost") and parts.port:
        return parts.port if mcu_server.is_running(parts.port) else None
    return None


def _firmware(url: str, art: Artifact) -> Path:
    if not art.manifest.is_mcu:
        raise UsageError(f"{art.path} is a Linux program for {art.manifest.target_name}; a "
                         "serial device runs MCU firmware (compile for an MCU target)")
    return art.firmware


def _flash_command(url: str, art: Artifact, elf: Path) -> list[str]:
    command = [str(a).replace("{image}", str(elf.resolve()))
               for a in (art.target.board or {}).get("flash_command", [])]
    if not command:
        raise UsageError(f"target {art.target.name} names no board.flash_command; flash "
                         f"{elf} with your board's tool, then use --device {url}")
    return command


def _hello(url: str, art: Artifact) -> dict:
    with open_session(url, art, url, serial_link.open, timeout=60.0, retries=1) as dev:
        return dev.hello


def _restart_emulator(url: str, art: Artifact, port: int, elf: Path) -> dict:
    mcu_server.request_restart(port, elf, art.manifest.target_name)
    return {"device": url, "image": str(elf), "flashed": True, "emulated": True,
            "hello": _hello(url, art), "uploaded": ["firmware.elf"],
            "bytes": elf.stat().st_size, "dir": str(art.path),
            "note": f"QEMU {art.manifest.target_name} restarted with {elf}"}


def deploy(url: str, art: Artifact) -> dict:
    """Restarts a local emulator with the image, or says how to flash a real board."""
    elf = _firmware(url, art)
    port = _emulator_port(url)
    if port is not None:
        return _restart_emulator(url, art, port, elf)
    command = _flash_command(url, art, elf)
    return {"device": url, "image": str(elf), "command": command, "flashed": False,
            "verified": False,
            "text": f"flash the board with:\n  {shlex.join(command)}\n(or run this command again "
                    f"with --flash), then talk to it with --device {url}"}


def flash(url: str, art: Artifact) -> dict:
    """Restarts a local emulator with the image, or runs the board's flash command; then
    checks the board's hello."""
    elf = _firmware(url, art)
    port = _emulator_port(url)
    if port is not None:
        return _restart_emulator(url, art, port, elf)
    command = _flash_command(url, art, elf)
    shown = shlex.join(command)
    try:
        r = subprocess.run(command, capture_output=True, text=True, timeout=600)
    except FileNotFoundError:
        raise ToolError(f"{command[0]} is not installed; install it or flash {elf} another "
                        "way") from None
    if r.returncode != 0:
        raise DeviceError(f"flashing failed ({shown} exited {r.returncode}):\n"
                          f"{(r.stdout + r.stderr)[-2000:]}")
    time.sleep(1.0)  # the board resets and runs its self-test
    hello = _hello(url, art)
    return {"device": url, "image": str(elf), "command": command, "flashed": True,
            "verified": True, "hello": hello,
            "text": f"flashed {elf} with: {shown}\n{url}: runs {hello.get('model')} for "
                    f"{hello.get('target')}"}
