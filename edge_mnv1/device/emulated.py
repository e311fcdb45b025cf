"""`--device emulated`: the target's emulated device, started for the length of one command.

A Linux target (rpi4) gets a real sshd on loopback (emulators/sshd.py) and is reached through
the ssh transport with that server's identity and known_hosts, so the whole ssh path runs.
An MCU target's board is QEMU (emulators/qemu_mcu.py), started halted with its UART on a pty;
pyserial opens the pty like a USB serial adapter, then the board runs: nothing the firmware
prints (its boot line) is lost.
"""

from __future__ import annotations

import contextlib
import time

from edge_mnv1.errors import UsageError
from edge_mnv1.artifact.artifact import Artifact
from edge_mnv1.device import ssh
from edge_mnv1.device.serial_link import DEFAULT_BAUD, SerialTransport
from edge_mnv1.device.session import open_session
from edge_mnv1.emulators.qemu_mcu import QemuBoard
from edge_mnv1.emulators.sshd import start_emulated


def _check_url(url: str) -> None:
    if url not in ("emulated", "emulated://"):
        raise UsageError(f"device {url!r}: write just `emulated`")


def _pi(art: Artifact, stack: contextlib.ExitStack):
    server = start_emulated(art.target)
    stack.callback(server.stop)
    return server


def _open_board(art: Artifact, stack: contextlib.ExitStack) -> SerialTransport:
    """QEMU halted, its UART's pty opened, then `cont`. The transport's `board` is the
    QemuBoard (monitor, reset); QEMU stops when `stack` closes."""
    target = art.target
    board = QemuBoard(target, art.firmware, serial="pty", halted=True)
    stack.callback(board.stop)
    board.start()
    transport = SerialTransport(f"serial://{board.pty}",
                                baud=int((target.board or {}).get("baud", DEFAULT_BAUD)),
                                description=f"QEMU {target.name} (UART on {board.pty})")
    transport.board = board
    try:
        board.cont()
    except BaseException:
        transport.close()
        raise
    return transport


def open(url: str, art: Artifact, stack: contextlib.ExitStack):  # noqa: A001
    _check_url(url)
    if art.manifest.is_mcu:
        return _open_board(art, stack)
    return ssh.open(_pi(art, stack).url(), art, stack)


def deploy(url: str, art: Artifact) -> dict:
    """A device that lives for one command: deploying only proves the whole path works
    (start, upload or boot, hello), so that a fleet may mix emulated and real devices."""
    _check_url(url)
    if art.manifest.is_mcu:
        return _deploy_board(url, art)
    with contextlib.ExitStack() as stack:
        out = ssh.deploy(_pi(art, stack).url(), art)
    out["device"] = url
    return out


def _deploy_board(url: str, art: Artifact) -> dict:
    t0 = time.monotonic()
    elf = art.firmware
    with open_session(url, art, url, open, timeout=60.0, retries=1) as dev:
        hello = dev.hello
        boot = [ln for ln in dev.client.text_lines if "selftest" in ln]
    name = art.manifest.target_name
    return {"device": url, "image": str(elf), "flashed": False, "emulated": True, "hello": hello,
            "boot_line": boot[-1] if boot else None, "uploaded": [], "bytes": 0,
            "dir": str(art.path), "seconds": round(time.monotonic() - t0, 3),
            "note": f"--device emulated boots {elf.name} in QEMU {name} for each command; for "
                    f"a board that stays up run `edge-mnv1 emulate {name} --artifact {art.path}` "
                    "and deploy to its socket:// URL"}
