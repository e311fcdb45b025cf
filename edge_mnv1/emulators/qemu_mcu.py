"""Emulated Cortex-M boards: QEMU (qemu-system-arm) running an artifact's firmware.elf.

- `open(...)`: `--device emulated` for an MCU target (device/emulated.py delegates here). QEMU
  starts halted (-S) with the UART on a pty, pyserial opens the pty like a USB serial adapter,
  then the monitor says `cont`: nothing the firmware prints (its boot line) is lost.
- `emulate(...)`: `edge-mnv1 emulate T --artifact DIR [--port P]`. The UART is a TCP server
  (socket://127.0.0.1:P); serves until interrupted. `deploy` to that URL restarts QEMU with
  the new image, like flashing a board (a unix control socket per port tells it).
- `deploy(...)`: to `emulated`, boots the image once and checks its hello.
Instruction counts are exact and repeatable: the target's emulator command has -icount shift=0.
"""

from __future__ import annotations

import io
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

from edge_mnv1 import log
from edge_mnv1.errors import DeviceError, UsageError
from edge_mnv1.device.serial_link import SerialTransport

_PTY = re.compile(r"char device redirected to (/dev/pts/\d+)")


def _control_dir() -> Path:
    d = Path(tempfile.gettempdir()) / f"edge_mnv1-{os.getuid()}"
    d.mkdir(mode=0o700, exist_ok=True)
    return d


def control_path(port: int) -> Path:
    """The control socket of an `edge-mnv1 emulate` instance serving 127.0.0.1:port."""
    return _control_dir() / f"emulate-{port}.sock"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class QemuBoard:
    """One qemu-system-arm process running one firmware image. The UART (the first -serial)
    is a pty ("pty") or a TCP server on 127.0.0.1 (an int port); the HMP monitor listens on a
    unix socket in a private directory."""

    def __init__(self, target, elf: Path, serial="pty", halted: bool = True):
        if not target.emulator or not target.emulator.get("command"):
            raise UsageError(f"target {target.name} has no [emulator] command; it cannot run "
                             "under --device emulated")
        elf = Path(elf)
        if not elf.is_file():
            raise UsageError(f"{elf}: no firmware image; run `edge-mnv1 compile` without --no-build")
        self.target = target
        self.elf = elf.resolve()
        self.serial = serial
        self.halted = halted
        self.dir = Path(tempfile.mkdtemp(prefix="em-qemu-"))
        self.monitor_path = self.dir / "monitor.sock"
        self.proc: subprocess.Popen | None = None
        self.pty: str | None = None
        self.port: int | None = serial if isinstance(serial, int) else None
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
            raise UsageError(f"{argv[0]} is not installed; run ./scripts/setup.sh")
        self.log_path = self.dir / "qemu.log"
        with io.open(self.log_path, "wb") as logf:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            text = self.log_path.read_text(errors="replace")
            if self.proc.poll() is not None:
                raise DeviceError(f"QEMU for {self.target.name} exited with code "
                                  f"{self.proc.returncode}: {text.strip()[-800:]}\n"
                                  f"command: {' '.join(argv)}")
            if self.serial == "pty":
                m = _PTY.search(text)
                if m:
                    self.pty = m.group(1)
            if (self.serial != "pty" or self.pty) and self.monitor_path.exists():
                try:
                    self._connect_monitor()
                    break
                except OSError:
                    pass
            if time.monotonic() > deadline:
                self.stop()
                raise DeviceError(f"QEMU for {self.target.name} did not come up within "
                                  f"{timeout:.0f} s: {text.strip()[-800:]}")
            time.sleep(0.05)
        return self

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
        if self.proc is not None and self.proc.poll() is None:
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


def _firmware(artifact: Path, manifest: dict, target) -> Path:
    if manifest.get("target_kind") != "mcu":
        raise UsageError(f"{artifact} is not MCU firmware (target {manifest['target']})")
    if target.name != manifest["target"]:
        raise UsageError(f"{artifact} is firmware for {manifest['target']}, not {target.name}; "
                         f"compile it with --target {target.name}")
    return Path(artifact) / "firmware.elf"


def open(url: str, artifact, manifest: dict, target, stack) -> SerialTransport:  # noqa: A001
    """`--device emulated` for an MCU target: QEMU halted, the pty opened, then `cont`.
    QEMU stops when `stack` closes. The transport's `board` is the QemuBoard (monitor, reset)."""
    board = QemuBoard(target, _firmware(Path(artifact), manifest, target), serial="pty",
                      halted=True)
    stack.callback(board.stop)
    board.start()
    transport = SerialTransport(f"serial://{board.pty}",
                                baud=int(target.board.get("baud", 115200)),
                                description=f"QEMU {target.name} (UART on {board.pty})")
    transport.board = board
    try:
        board.cont()
    except BaseException:
        transport.close()
        raise
    return transport


# ---- `edge-mnv1 emulate` and deploying to it --------------------------------------------

def _local_port(url: str) -> int | None:
    parts = urlsplit(url)
    if parts.scheme == "socket" and parts.hostname in ("127.0.0.1", "localhost") and parts.port:
        return parts.port
    return None


def running_emulator(url: str) -> Path | None:
    """The control socket of the `edge-mnv1 emulate` behind a socket:// URL, if any."""
    port = _local_port(url)
    if port is None:
        return None
    path = control_path(port)
    if not path.exists():
        return None
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(2.0)
            s.connect(str(path))
    except OSError:
        return None  # a stale socket from an emulator that was killed
    return path


def deploy_to_emulator(url: str, artifact, manifest: dict, target) -> dict:
    """Asks a running `edge-mnv1 emulate` to restart its board with this artifact's image."""
    path = running_emulator(url)
    if path is None:
        raise DeviceError(f"{url}: no `edge-mnv1 emulate` serves this port on this machine")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(60.0)
        s.connect(str(path))
        s.sendall(json.dumps({"deploy": str(Path(artifact).resolve()),
                              "target": manifest["target"]}).encode() + b"\n")
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            reply += chunk
    try:
        answer = json.loads(reply.decode())
    except json.JSONDecodeError:
        raise DeviceError(f"{url}: the emulator gave no answer to the deploy") from None
    if not answer.get("ok"):
        raise DeviceError(f"{url}: the emulator refused the image: {answer.get('error')}")
    from edge_mnv1.device.connect import open_device

    with open_device(url, artifact, manifest, timeout=60.0, retries=1) as dev:
        hello = dev.hello
    return {"device": url, "image": str(Path(artifact) / "firmware.elf"), "flashed": True,
            "emulated": True, "hello": hello, "uploaded": ["firmware.elf"],
            "bytes": (Path(artifact) / "firmware.elf").stat().st_size, "dir": str(artifact),
            "note": f"QEMU {manifest['target']} restarted with {artifact}/firmware.elf"}


def deploy(url: str, artifact, manifest: dict, target, flash: bool = False) -> dict:
    """Deploying to an emulated board. A socket:// URL of a running `edge-mnv1 emulate` gets
    its board restarted with the image. `emulated` boots the image afresh for every command,
    so deploying only proves the path: boot it, read its hello, check it, stop."""
    from edge_mnv1.device.connect import open_device

    if running_emulator(url) is not None:
        return deploy_to_emulator(url, artifact, manifest, target)
    elf = _firmware(Path(artifact), manifest, target)
    if not elf.is_file():
        raise UsageError(f"{artifact}: no firmware.elf; run `edge-mnv1 compile` without --no-build")
    t0 = time.monotonic()
    with open_device("emulated", artifact, manifest, timeout=60.0, retries=1) as dev:
        hello = dev.hello
        boot = [ln for ln in dev.client.text_lines if "selftest" in ln]
    return {"device": url, "image": str(elf), "flashed": False, "emulated": True, "hello": hello,
            "boot_line": boot[-1] if boot else None, "uploaded": [], "bytes": 0,
            "dir": str(artifact), "seconds": round(time.monotonic() - t0, 3),
            "note": f"--device emulated boots {elf.name} in QEMU {target.name} for each "
                    f"command; for a board that stays up run `edge-mnv1 emulate {target.name} "
                    f"--artifact {artifact}` and deploy to its socket:// URL"}


def emulate(target, port: int | None = None, artifact=None) -> dict:
    """`edge-mnv1 emulate T --artifact DIR [--port P]`: boots the board with its UART on
    socket://127.0.0.1:P and returns at once with the URL; the result's "_after" serves until
    interrupted (the CLI runs it after printing), restarting QEMU with a new image on each
    `edge-mnv1 deploy DIR --device socket://127.0.0.1:P`."""
    from edge_mnv1.artifact.artifact import load_manifest

    port = port or free_port()
    url = f"socket://127.0.0.1:{port}"
    ctl_path = control_path(port)
    if running_emulator(url) is not None:
        raise UsageError(f"an edge-mnv1 emulate already serves {url}")
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            raise UsageError(f"--port {port}: 127.0.0.1:{port} is in use; choose another port "
                             "(or 0 for a free one)") from None

    def boot(art: Path) -> QemuBoard:
        manifest = load_manifest(art)
        return QemuBoard(target, _firmware(art, manifest, target), serial=port,
                         halted=False).start()

    state = {"board": boot(Path(artifact)) if artifact else None, "boots": 1 if artifact else 0}
    ctl_path.unlink(missing_ok=True)
    ctl = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    ctl.bind(str(ctl_path))
    ctl.listen(4)

    def serve() -> None:
        stop = {"now": False}

        def on_signal(*_):
            stop["now"] = True
        old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGHUP)}
        try:
            while not stop["now"]:
                board = state["board"]
                if board is not None and not board.alive:
                    text = board.log_path.read_text(errors="replace")[-600:]
                    raise DeviceError(f"emulate: QEMU for {target.name} exited: {text}")
                r, _, _ = select.select([ctl], [], [], 0.5)
                if r:
                    _serve_control(ctl, state, boot, target)
        except KeyboardInterrupt:
            pass
        finally:
            for sig, h in old.items():
                signal.signal(sig, h)
            if state["board"] is not None:
                state["board"].stop()
            ctl.close()
            ctl_path.unlink(missing_ok=True)
            log.info(f"emulate: {target.name} on {url} stopped after {state['boots']} boot(s)")

    board = state["board"]
    text = "\n".join([
        f"emulated {target.name} ({target.description})",
        f"device URL:  {url}",
        f"firmware:    {board.elf if board else 'none yet: edge-mnv1 deploy DIR --device ' + url}",
        f"monitor:     {board.monitor_path if board else '-'} (QEMU HMP, unix socket)",
        f"try:         edge-mnv1 run ARTIFACT_DIR --device {url} --input X.npy -o Y.npy",
        "Ctrl-C stops it."])
    return {"target": target.name, "url": url, "port": port,
            "firmware": str(board.elf) if board else None,
            "monitor": str(board.monitor_path) if board else None,
            "pid": board.proc.pid if board else None, "control": str(ctl_path),
            "text": text, "_after": serve}


def _serve_control(ctl: socket.socket, state: dict, boot, target) -> None:
    conn, _ = ctl.accept()
    with conn:
        conn.settimeout(10.0)
        try:
            req = json.loads(conn.makefile().readline() or "{}")
        except (json.JSONDecodeError, OSError, UnicodeDecodeError):
            return
        if "deploy" not in req:
            return  # a probe from running_emulator
        try:
            new = Path(req["deploy"])
            if state["board"] is not None:
                state["board"].stop()
                state["board"] = None
            state["board"] = boot(new)
            state["boots"] += 1
            log.info(f"emulate: restarted {target.name} with {new}/firmware.elf")
            conn.sendall(json.dumps({"ok": True}).encode() + b"\n")
        except Exception as e:  # the emulator keeps serving; the deployer is told why
            conn.sendall(json.dumps({"ok": False, "error": str(e)}).encode() + b"\n")
