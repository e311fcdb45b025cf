"""Serial devices through pyserial: a board's UART on a USB adapter or a pty, or a UART
exposed on TCP (QEMU, ser2net) raw or with RFC 2217.

    serial:///dev/ttyACM0?baud=115200     a local port (also serial:///dev/pts/N, a pty)
    socket://host:port                    raw TCP
    rfc2217://host:port[?baud=N]          Telnet COM port control (ser2net and friends)

Query options: baud (default: the target's board.baud, else 115200), rtscts=1, xonxoff=1.
The protocol client (device/protocol.py) owns timeouts and retries; this is the byte pipe.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

from edge_mnv1.errors import DeviceError, UsageError
from edge_mnv1.device.transport import Transport

DEFAULT_BAUD = 115200
_OPTIONS = {"baud", "rtscts", "xonxoff"}


def parse_url(url: str, default_baud: int = DEFAULT_BAUD) -> tuple[str, dict]:
    """(what pyserial opens, its keyword arguments) for one of our device URLs."""
    parts = urlsplit(url)
    query = parse_qs(parts.query, keep_blank_values=True)
    opts = {k: v[-1] for k, v in query.items()}
    try:
        kwargs = {"baudrate": int(opts.pop("baud", default_baud))}
    except ValueError:
        raise UsageError(f"device {url!r}: baud must be an integer, e.g. ?baud=115200") from None
    for flag in ("rtscts", "xonxoff"):
        if flag in opts:
            kwargs[flag] = opts.pop(flag) in ("1", "true", "yes", "")
    if parts.scheme == "serial":
        port = parts.netloc + parts.path  # serial:///dev/ttyACM0 or serial://COM3
        if not port:
            raise UsageError(f"device {url!r}: name the port, e.g. serial:///dev/ttyACM0?baud=115200")
        if opts:
            raise UsageError(f"device {url!r}: unknown option(s) {', '.join(sorted(opts))}; "
                             f"allowed: {', '.join(sorted(_OPTIONS))}")
        return port, kwargs
    if parts.scheme in ("socket", "rfc2217"):
        if not parts.hostname or not parts.port:
            raise UsageError(f"device {url!r}: expected {parts.scheme}://host:port")
        # pyserial's own URL options (e.g. ?logging=debug) pass through.
        rest = f"?{urlencode(opts)}" if opts else ""
        return f"{parts.scheme}://{parts.netloc}{rest}", kwargs
    raise UsageError(f"device {url!r}: not a serial URL (serial://, socket://, rfc2217://)")


class SerialTransport(Transport):
    """A pyserial port as the protocol's byte pipe. read() returns what arrived within the
    timeout (at least one byte, or b"" on timeout); write() blocks until sent or times out."""

    def __init__(self, url: str, baud: int = DEFAULT_BAUD, open_timeout: float = 10.0,
                 description: str | None = None):
        import serial

        self.url = url
        self.description = description or url
        port, kwargs = parse_url(url, baud)
        self.baud = kwargs["baudrate"]
        deadline = time.monotonic() + open_timeout
        while True:
            try:
                self.ser = serial.serial_for_url(port, timeout=1.0, write_timeout=10.0,
                                                 exclusive=True if port.startswith("/") else None,
                                                 **kwargs)
                break
            except (serial.SerialException, OSError, ValueError) as e:
                if time.monotonic() > deadline or isinstance(e, ValueError):
                    raise DeviceError(f"{url}: cannot open the serial port ({e}); check the "
                                      "cable, the port name and that no other program holds it "
                                      "(a board may take a few seconds to appear after "
                                      "flashing)") from None
                time.sleep(0.2)
        self._posix = type(self.ser).__module__ == "serial.serialposix"
        self._timeout = 1.0

    def _set_timeout(self, t: float) -> None:
        if t != self._timeout:
            self.ser.timeout = t
            self._timeout = t

    def write(self, data: bytes) -> None:
        import serial

        # Time for the bytes at the line rate, twice over, plus slack (a real UART at
        # 115200 baud moves ~11.5 KB/s; QEMU's ~22-64 KB/s).
        self.ser.write_timeout = 10.0 + 2.0 * len(data) * 10 / max(self.baud, 1200)
        try:
            self.ser.write(data)
            self.ser.flush()
        except serial.SerialTimeoutException:
            raise DeviceError(f"{self.description}: writing {len(data)} bytes timed out; the "
                              "device does not read its UART (crashed or not running)") from None
        except (serial.SerialException, OSError) as e:
            raise DeviceError(f"{self.description}: the link failed while writing ({e})") from None

    def read(self, n: int, timeout: float) -> bytes:
        import serial

        try:
            self._set_timeout(max(timeout, 0.001))
            first = self.ser.read(1)
            if not first or n <= 1:
                return first
            if self._posix:  # FIONREAD is exact for a tty
                waiting = self.ser.in_waiting
                return first + (self.ser.read(min(waiting, n - 1)) if waiting else b"")
            self._set_timeout(0)  # socket/rfc2217: take what is buffered, do not wait
            return first + self.ser.read(n - 1)
        except (serial.SerialException, OSError) as e:
            raise DeviceError(f"{self.description}: the link failed while reading ({e}); the "
                              "device or the emulator went away") from None

    def close(self) -> None:
        try:
            self.ser.close()
        except Exception:  # closing a dead link must not hide the real error
            pass


def open(url: str, artifact, manifest: dict, target, stack) -> Transport:  # noqa: A001
    """connect.open_device's hook for serial://, socket:// and rfc2217:// devices."""
    baud = int((target.board or {}).get("baud", DEFAULT_BAUD)) if target is not None else DEFAULT_BAUD
    return SerialTransport(url, baud=baud)


def deploy(url: str, artifact, manifest: dict, target, flash: bool = False,
           verify: bool = True) -> dict:
    """Puts the artifact's firmware on the board behind `url`.

    A board started by `edge-mnv1 emulate` on this machine is restarted with the new image.
    A real board is flashed with the target's board.flash_command (printed; run with
    flash=True), then its hello is checked against the artifact."""
    from edge_mnv1.emulators import qemu_mcu

    artifact = Path(artifact)
    if manifest.get("target_kind") != "mcu":
        raise UsageError(f"{artifact} is a Linux program for {manifest['target']}; a serial "
                         "device runs MCU firmware (compile for an MCU target)")
    elf = artifact / "firmware.elf"
    if not elf.is_file():
        raise UsageError(f"{artifact}: no firmware.elf; run `edge-mnv1 compile` without --no-build")
    emulated = qemu_mcu.running_emulator(url)
    if emulated is not None:
        return qemu_mcu.deploy_to_emulator(url, artifact, manifest, target)
    command = [str(a).replace("{image}", str(elf.resolve()))
               for a in (target.board or {}).get("flash_command", [])]
    if not command:
        raise UsageError(f"target {target.name} names no board.flash_command; flash "
                         f"{elf} with your board's tool, then use --device {url}")
    shown = " ".join(_quote(a) for a in command)
    result = {"device": url, "image": str(elf), "command": command, "flashed": False,
              "verified": False}
    if not flash:
        result["text"] = (f"flash the board with:\n  {shown}\n(or run this command again with "
                          "--flash), then talk to it with --device " + url)
        return result
    try:
        r = subprocess.run(command, capture_output=True, text=True, timeout=600)
    except FileNotFoundError:
        raise UsageError(f"{command[0]} is not installed; install it or flash {elf} another "
                         "way") from None
    if r.returncode != 0:
        raise DeviceError(f"flashing failed ({shown} exited {r.returncode}):\n"
                          f"{(r.stdout + r.stderr)[-2000:]}")
    result["flashed"] = True
    text = f"flashed {elf} with: {shown}"
    if verify:
        from edge_mnv1.device.connect import open_device

        time.sleep(1.0)  # the board resets and runs its self-test
        with open_device(url, artifact, manifest, timeout=60.0) as dev:
            result["hello"] = dev.hello
            result["verified"] = True
            text += f"\n{url}: runs {dev.hello.get('model')} for {dev.hello.get('target')}"
    result["text"] = text
    return result


def _quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)
