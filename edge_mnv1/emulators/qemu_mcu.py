"""An emulated Cortex-M board: one qemu-system-arm process running one firmware image.

The UART (the first -serial) is a pty or a TCP server on 127.0.0.1; the HMP monitor listens
on a unix socket in a private directory. Started halted (-S), the board runs nothing until
`cont`, so a client can open the UART first and miss nothing the firmware prints (its boot
line). Instruction counts are exact and repeatable: the target's emulator command has
-icount shift=0. This module only runs boards; the protocol is spoken by edge_mnv1.device.
"""

from __future__ import annotations

import io
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from edge_mnv1.errors import DeviceError, ToolError, UsageError

_PTY = re.compile(r"char device redirected to (/dev/pts/\d+)")


class QemuBoard:
    """`serial` is "pty" or a TCP port on 127.0.0.1 (an int)."""

    def __init__(self, target, elf: Path, serial="pty", halted: bool = True):
        if not target.emulator or not target.emulator.get("command"):
            raise UsageError(f"target {target.name} has no [emulator] command; it cannot run "
                             "under --device emulated")
        self.target = target
        self.elf = Path(elf).resolve()
        self.serial = serial
        self.halted = halted
        self.dir = Path(tempfile.mkdtemp(prefix="em-qemu-"))
        self.monitor_path = self.dir / "monitor.sock"
        self.log_path = self.dir / "qemu.log"
        self.proc: subprocess.Popen | None = None
        self.pty: str | None = None
        self._mon: socket.socket | None = None

    def argv(self) -> list[str]:
        serial = "pty" if self.serial == "pty" else \
            f"tcp:127.0.0.1:{self.serial},server=on,wait=off,nodelay=on"
        argv = list(self.target.emulator["command"]) + [
            "-kernel", str(self.elf), "-serial", serial,
            "-monitor", f"unix:{self.monitor_path},server=on,wait=off"]
        return argv + (["-S"] if self.halted else [])

    def start(self, timeout: float = 20.0) -> "QemuBoard":
        argv = self.argv()
        if not shutil.which(argv[0]):
            raise ToolError(f"{argv[0]} is not installed; run ./scripts/setup.sh")
        with io.open(self.log_path, "wb") as logf:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while not self._up(argv):
            if time.monotonic() > deadline:
                self.stop()
                raise DeviceError(f"QEMU for {self.target.name} did not come up within "
                                  f"{timeout:.0f} s: {self.log_text()[-800:]}")
            time.sleep(0.05)
        return self

    def _up(self, argv: list[str]) -> bool:
        """True once the UART is there and the monitor answers; DeviceError if QEMU exited."""
        text = self.log_text()
        if self.proc.poll() is not None:
            raise DeviceError(f"QEMU for {self.target.name} exited with code "
                              f"{self.proc.returncode}: {text[-800:]}\ncommand: {' '.join(argv)}")
        if self.serial == "pty" and self.pty is None:
            m = _PTY.search(text)
            if not m:
                return False
            self.pty = m.group(1)
        if not self.monitor_path.exists():
            return False
        try:
            self._connect_monitor()
        except OSError:
            return False
        return True

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace").strip()

    # -- the HMP monitor -------------------------------------------------------------------
    def _connect_monitor(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10.0)
        s.connect(str(self.monitor_path))
        self._mon = s
        self._read_prompt()

    def _read_prompt(self) -> str:
        buf = b""
        deadline = time.monotonic() + 10.0
        while not buf.endswith(b"(qemu) "):
            if time.monotonic() > deadline:
                raise DeviceError(f"QEMU's monitor did not answer: {buf[-200:]!r}")
            chunk = self._mon.recv(4096)
            if not chunk:
                raise DeviceError("QEMU's monitor closed")
            buf += chunk
        return buf.decode(errors="replace")

    def monitor(self, command: str) -> str:
        """Runs one HMP command (e.g. "system_reset", "info registers"); returns its output."""
        if self._mon is None:
            raise DeviceError("QEMU is not running")
        self._mon.sendall(command.encode() + b"\n")
        out = self._read_prompt()
        return out.rsplit("(qemu) ", 1)[0].split("\n", 1)[-1].strip()

    def cont(self) -> None:
        self.monitor("cont")

    def reset(self) -> None:
        """Presses the reset button: the image is reloaded and the firmware boots again."""
        self.monitor("system_reset")

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.alive:
            try:
                if self._mon is not None:
                    self._mon.sendall(b"quit\n")
                self.proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        if self._mon is not None:
            try:
                self._mon.close()
            except OSError:
                pass
            self._mon = None
        shutil.rmtree(self.dir, ignore_errors=True)
