"""`edge-mnv1 emulate T --artifact DIR [--port P]` for an MCU target: a QEMU board whose UART
is a TCP server (socket://127.0.0.1:P), serving until interrupted, and restarted with a new
image whenever `edge-mnv1 deploy DIR --device socket://127.0.0.1:P` asks, like flashing a
board. The ask travels over a unix control socket per port (`request_restart`).

Protocol on the control socket: one JSON line {"deploy": ELF, "target": NAME} answered by
{"ok": true} or {"ok": false, "error": ...}; a connection that sends nothing is a probe.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import tempfile
from pathlib import Path

from edge_mnv1 import log
from edge_mnv1.errors import DeviceError, UsageError
from edge_mnv1.emulators.qemu_mcu import QemuBoard


def control_path(port: int) -> Path:
    """The control socket of an `edge-mnv1 emulate` instance serving 127.0.0.1:port."""
    d = Path(tempfile.gettempdir()) / f"edge_mnv1-{os.getuid()}"
    d.mkdir(mode=0o700, exist_ok=True)
    return d / f"emulate-{port}.sock"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def is_running(port: int) -> bool:
    """Whether an `edge-mnv1 emulate` on this machine serves 127.0.0.1:port."""
    path = control_path(port)
    if not path.exists():
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(2.0)
            s.connect(str(path))
    except OSError:
        return False  # a stale socket from an emulator that was killed
    return True


def request_restart(port: int, elf: Path, target_name: str) -> None:
    """Asks the `edge-mnv1 emulate` serving `port` to restart its board with `elf`."""
    where = f"socket://127.0.0.1:{port}"
    if not is_running(port):
        raise DeviceError(f"{where}: no `edge-mnv1 emulate` serves this port on this machine")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(60.0)
        s.connect(str(control_path(port)))
        s.sendall(json.dumps({"deploy": str(Path(elf).resolve()),
                              "target": target_name}).encode() + b"\n")
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            reply += chunk
    try:
        answer = json.loads(reply.decode())
    except json.JSONDecodeError:
        raise DeviceError(f"{where}: the emulator gave no answer to the deploy") from None
    if not answer.get("ok"):
        raise DeviceError(f"{where}: the emulator refused the image: {answer.get('error')}")


class BoardServer:
    """One target's board on 127.0.0.1:port and the control socket that restarts it."""

    def __init__(self, target, port: int):
        self.target = target
        self.port = port
        self.url = f"socket://127.0.0.1:{port}"
        self.ctl_path = control_path(port)
        self.board: QemuBoard | None = None
        self.boots = 0
        self.ctl: socket.socket | None = None

    def listen(self) -> None:
        if is_running(self.port):
            raise UsageError(f"an edge-mnv1 emulate already serves {self.url}")
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", self.port))
            except OSError:
                raise UsageError(f"--port {self.port}: 127.0.0.1:{self.port} is in use; choose "
                                 "another port (or 0 for a free one)") from None
        self.ctl_path.unlink(missing_ok=True)
        self.ctl = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.ctl.bind(str(self.ctl_path))
        self.ctl.listen(4)

    def boot(self, elf: Path) -> None:
        """(Re)starts the board with `elf`, running at once (a board that was powered on)."""
        if self.board is not None:
            self.board.stop()
            self.board = None
        self.board = QemuBoard(self.target, elf, serial=self.port, halted=False).start()
        self.boots += 1

    def serve(self) -> None:
        """Serves restart requests until SIGINT/SIGTERM/SIGHUP, then stops everything."""
        stop = {"now": False}

        def on_signal(*_):
            stop["now"] = True
        # SIGINT as well: an inherited SIG_IGN (a script's background job) would outlive Ctrl-C.
        old = {sig: signal.signal(sig, on_signal)
               for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        try:
            while not stop["now"]:
                if self.board is not None and not self.board.alive:
                    raise DeviceError(f"emulate: QEMU for {self.target.name} exited: "
                                      f"{self.board.log_text()[-600:]}")
                if select.select([self.ctl], [], [], 0.5)[0]:
                    self._answer_one()
        except KeyboardInterrupt:
            pass
        finally:
            for sig, h in old.items():
                signal.signal(sig, h)
            self.close()
            log.info(f"emulate: {self.target.name} on {self.url} stopped after "
                     f"{self.boots} boot(s)")

    def _answer_one(self) -> None:
        conn, _ = self.ctl.accept()
        with conn:
            conn.settimeout(10.0)
            try:
                req = json.loads(conn.makefile().readline() or "{}")
            except (json.JSONDecodeError, OSError, UnicodeDecodeError):
                return
            if "deploy" not in req:
                return  # a probe from is_running
            try:
                if req.get("target") != self.target.name:
                    raise UsageError(f"the image is firmware for {req.get('target')}, this "
                                     f"emulator runs {self.target.name}")
                self.boot(Path(req["deploy"]))
                log.info(f"emulate: restarted {self.target.name} with {req['deploy']}")
                conn.sendall(json.dumps({"ok": True}).encode() + b"\n")
            except Exception as e:  # the emulator keeps serving; the deployer is told why
                conn.sendall(json.dumps({"ok": False, "error": str(e)}).encode() + b"\n")

    def close(self) -> None:
        if self.board is not None:
            self.board.stop()
            self.board = None
        if self.ctl is not None:
            self.ctl.close()
            self.ctl = None
            self.ctl_path.unlink(missing_ok=True)


def emulate(target, port: int | None = None, firmware: Path | None = None) -> dict:
    """Boots the board (when given its firmware) and returns at once with the URL; the
    result's "_after" serves until interrupted (the CLI runs it after printing)."""
    server = BoardServer(target, port or free_port())
    server.listen()
    try:
        if firmware is not None:
            server.boot(firmware)
    except BaseException:
        server.close()
        raise
    board = server.board
    text = "\n".join([
        f"emulated {target.name} ({target.description})",
        f"device URL:  {server.url}",
        f"firmware:    {board.elf if board else 'none yet: edge-mnv1 deploy DIR --device ' + server.url}",
        f"monitor:     {board.monitor_path if board else '-'} (QEMU HMP, unix socket)",
        f"try:         edge-mnv1 run ARTIFACT_DIR --device {server.url} --input X.npy -o Y.npy",
        "Ctrl-C stops it."])
    return {"target": target.name, "url": server.url, "port": server.port,
            "firmware": str(board.elf) if board else None,
            "monitor": str(board.monitor_path) if board else None,
            "pid": board.proc.pid if board else None, "control": str(server.ctl_path),
            "text": text, "_after": server.serve}
