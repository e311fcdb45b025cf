"""Serial servers users already run, in front of an emulated board's UART:

    with board_behind_ser2net(target, elf) as url: ...   # rfc2217://127.0.0.1:P
    with board_behind_socat(target, elf) as url: ...     # serial:///dev/pts/N

ser2net (version 4) serves the board's UART over RFC 2217 (Telnet COM port control): it runs
in the foreground (`ser2net -n -d -u -c ser2net.yaml -P ser2net.pid`, no system service)
with its YAML configuration in a private directory, and opens QEMU's pty (`-serial pty`) as
its serial device, as it would open /dev/ttyACM0. socat (`socat -d -d
pty,raw,echo=0,link=DIR/tty tcp:127.0.0.1:P`) makes a new pty pair and joins it to the
board's UART served on TCP, as it would bring a remote port to this machine. Each server,
and the board, is stopped when its `with` ends, however it ends.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

from edge_mnv1.errors import DeviceError, ToolError
from edge_mnv1.emulators.mcu_server import free_port
from edge_mnv1.emulators.qemu_mcu import QemuBoard

DEFAULT_BAUD = 115200


class ServerProcess:
    """One foreground server process with its log and files in a private directory."""

    tool = ""

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix=f"em-{self.tool}-"))
        self.log_path = self.dir / f"{self.tool}.log"
        self.proc: subprocess.Popen | None = None
        self.argv: list[str] = []

    def start(self, timeout: float = 20.0):
        """Starts the server and returns once it serves; stopped again if it cannot."""
        if not shutil.which(self.tool):
            raise ToolError(f"{self.tool} is not installed; run ./scripts/setup.sh (it installs "
                            f"Debian's {self.tool} package)")
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, timeout: float) -> None:
        raise NotImplementedError

    def _spawn(self, argv: list[str]) -> None:
        self.argv = argv
        # stdbuf: the server's messages reach the log as they are written, not at its exit.
        if shutil.which("stdbuf"):
            argv = ["stdbuf", "-oL", "-eL", *argv]
        with io.open(self.log_path, "wb") as logf:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf,
                                         stderr=logf, start_new_session=True)

    def _wait(self, ready, what: str, timeout: float):
        """Polls `ready()` until it gives a value; DeviceError if the process exits first or
        the time runs out, with the end of its log."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise DeviceError(f"{self.tool} exited with code {self.proc.returncode} before "
                                  f"{what}: {self.log_text()[-800:]}\ncommand: "
                                  f"{' '.join(self.argv)}")
            got = ready()
            if got:
                return got
            if time.monotonic() > deadline:
                raise DeviceError(f"{self.tool} did not get to {what} within {timeout:.0f} s: "
                                  f"{self.log_text()[-800:]}")
            time.sleep(0.05)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace").strip()
        except OSError:
            return ""

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.alive:
            self.proc.terminate()
            try:  # ser2net that failed to listen ignores SIGTERM
                self.proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class Ser2net(ServerProcess):
    """ser2net serving the tty `device` over RFC 2217 on 127.0.0.1:port."""

    tool = "ser2net"

    def __init__(self, device: str, baud: int = DEFAULT_BAUD, port: int | None = None):
        super().__init__()
        self.device = device
        self.baud = baud
        self.port = port or free_port()
        self.config_path = self.dir / "ser2net.yaml"
        self.url = f"rfc2217://127.0.0.1:{self.port}"

    def config(self) -> str:
        # `local`: no modem control lines (a pty, or a board wired with RX/TX/GND only);
        # kickolduser: a client that died without closing does not lock the next one out.
        return (f"%YAML 1.1\n---\nconnection: &board\n"
                f"  accepter: telnet(rfc2217),tcp,127.0.0.1,{self.port}\n"
                f"  connector: serialdev,{self.device},{self.baud}n81,local\n"
                f"  options:\n    kickolduser: true\n")

    def _start(self, timeout: float) -> None:
        self.config_path.write_text(self.config())
        self._spawn(["ser2net", "-n", "-d", "-u", "-c", str(self.config_path),
                     "-P", str(self.dir / "ser2net.pid")])
        self._wait(self._listening, f"listening on 127.0.0.1:{self.port}", timeout)

    def _listening(self) -> bool:
        import psutil

        log = self.log_text()
        if "Unable to startup network port" in log:  # it stays up, serving nothing
            raise DeviceError(f"ser2net cannot listen on 127.0.0.1:{self.port}: {log[-400:]}")
        try:
            conns = psutil.Process(self.proc.pid).net_connections(kind="tcp")
        except psutil.Error:
            return False
        return any(c.status == psutil.CONN_LISTEN and c.laddr.port == self.port for c in conns)


class SocatPty(ServerProcess):
    """socat joining a new pty pair to the TCP server on 127.0.0.1:tcp_port; `pty` is the
    /dev/pts/N a serial client opens (also reachable as `link`)."""

    tool = "socat"

    def __init__(self, tcp_port: int):
        super().__init__()
        self.tcp_port = tcp_port
        self.link = self.dir / "tty"
        self.pty: str | None = None

    def _start(self, timeout: float) -> None:
        self._spawn(["socat", "-d", "-d", f"pty,raw,echo=0,link={self.link}",
                     f"tcp:127.0.0.1:{self.tcp_port}"])
        # The link appears with the pty; the data loop starts once the TCP side connected.
        self._wait(lambda: "starting data transfer loop" in self.log_text(),
                   f"joining a pty to 127.0.0.1:{self.tcp_port}", timeout)
        self.pty = os.path.realpath(self.link)

    @property
    def url(self) -> str:
        return f"serial://{self.pty}"


def _board_baud(target) -> int:
    return int((target.board or {}).get("baud", DEFAULT_BAUD))


@contextlib.contextmanager
def board_behind_ser2net(target, elf: Path) -> Iterator[str]:
    """The board running `elf`, its UART a pty served by ser2net; yields the rfc2217:// URL."""
    with contextlib.ExitStack() as stack:
        board = QemuBoard(target, elf, serial="pty", halted=False)
        stack.callback(board.stop)
        board.start()
        server = stack.enter_context(Ser2net(board.pty, _board_baud(target)))
        server.start()
        yield server.url


@contextlib.contextmanager
def board_behind_socat(target, elf: Path) -> Iterator[str]:
    """The board running `elf`, its UART on TCP joined to a pty by socat; yields the
    serial:///dev/pts/N URL."""
    with contextlib.ExitStack() as stack:
        board = QemuBoard(target, elf, serial=free_port(), halted=False)
        stack.callback(board.stop)
        board.start()
        server = stack.enter_context(SocatPty(board.serial))
        server.start()
        yield server.url
