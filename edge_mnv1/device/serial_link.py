"""Serial devices through pyserial: a board's UART on a USB adapter or a pty, or a UART
exposed on TCP (QEMU, ser2net) raw or with RFC 2217.

    serial:///dev/ttyACM0?baud=115200     a local port (also serial:///dev/pts/N, a pty)
    socket://host:port                    raw TCP
    rfc2217://host:port[?baud=N]          Telnet COM port control (ser2net and friends)

Query options: baud (default: the target's board.baud, else 115200), rtscts=1, xonxoff=1;
on socket:// and rfc2217:// pyserial's own (e.g. ?timeout=10, ?logging=debug) pass through.
rfc2217:// goes through _rfc2217_class(), pyserial's client fixed for this use (tested
against Debian's ser2net: tests/test_serial_servers.py). The protocol client
(device/protocol.py) owns timeouts and retries; this is the byte pipe.
"""

from __future__ import annotations

import contextlib
import functools
import time
from urllib.parse import parse_qs, urlencode, urlsplit

from edge_mnv1.errors import DeviceError, UsageError
from edge_mnv1.artifact.artifact import Artifact
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


def _open_port(port: str, kwargs: dict):
    """The open pyserial port for what parse_url gave; RFC 2217 through _rfc2217_class()."""
    import serial

    if not port.startswith("rfc2217://"):
        return serial.serial_for_url(port, timeout=1.0, write_timeout=10.0,
                                     exclusive=True if port.startswith("/") else None, **kwargs)
    ser = _rfc2217_class()(None, timeout=1.0, write_timeout=10.0, **kwargs)
    ser.port = port
    ser.open()
    return ser


@functools.cache
def _rfc2217_class():
    """pyserial's RFC 2217 client, fit for a byte pipe whose timeouts change on every read.

    pyserial 3.5 re-sends the whole line configuration (baud, size, parity, stop bits, flow
    control) and waits for the server's acknowledgements whenever any setting changes, a
    read timeout included, and refuses a write timeout outright. Here the line is negotiated
    when it changes only, and the write timeout bounds the socket's sends (its reader thread
    merely wakes up less often). DTR and RTS are set but not waited for: the protocol uses no
    modem lines, and a server whose port has none (ser2net on a pty, an adapter wired
    RX/TX/GND) never acknowledges them."""
    import serial.rfc2217 as rfc

    modem_lines = {rfc.SET_CONTROL_DTR_ON, rfc.SET_CONTROL_DTR_OFF, rfc.SET_CONTROL_RTS_ON,
                   rfc.SET_CONTROL_RTS_OFF}

    class Rfc2217Port(rfc.Serial):
        def open(self):
            self._line = None
            super().open()

        def rfc2217_set_control(self, value):
            if value in modem_lines:
                self._rfc2217_options["control"].set(value)
            else:
                super().rfc2217_set_control(value)

        def _reconfigure_port(self):
            if self._socket is not None and self._write_timeout is not None:
                self._socket.settimeout(max(5.0, self._write_timeout))
            line = (self._baudrate, self._bytesize, self._parity, self._stopbits,
                    self._rtscts, self._xonxoff)
            if line == self._line:
                return
            write_timeout, self._write_timeout = self._write_timeout, None
            try:
                super()._reconfigure_port()
            finally:
                self._write_timeout = write_timeout
            self._line = line

    return Rfc2217Port


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
                self.ser = _open_port(port, kwargs)
                break
            except (serial.SerialException, OSError, ValueError) as e:
                if time.monotonic() > deadline or isinstance(e, ValueError):
                    raise DeviceError(f"{url}: cannot open the serial port ({e}); check the "
                                      "cable, the port name and that no other program holds it "
                                      "(a board may take a few seconds to appear after "
                                      "flashing)") from None
                time.sleep(0.2)
        # A tty (FIONREAD) and the RFC 2217 client (its byte queue) count waiting bytes exactly.
        self._exact_waiting = type(self.ser).__module__ == "serial.serialposix" or \
            isinstance(self.ser, _rfc2217_class())
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
            if self._exact_waiting:
                waiting = self.ser.in_waiting
                return first + (self.ser.read(min(waiting, n - 1)) if waiting else b"")
            self._set_timeout(0)  # socket: take what is buffered, do not wait
            return first + self.ser.read(n - 1)
        except (serial.SerialException, OSError) as e:
            raise DeviceError(f"{self.description}: the link failed while reading ({e}); the "
                              "device or the emulator went away") from None

    def close(self) -> None:
        try:
            self.ser.close()
        except Exception:  # closing a dead link must not hide the real error
            pass


def open(url: str, art: Artifact, stack: contextlib.ExitStack) -> Transport:  # noqa: A001
    """The byte pipe of serial://, socket:// and rfc2217:// devices, at the target's baud."""
    return SerialTransport(url, baud=int((art.target.board or {}).get("baud", DEFAULT_BAUD)))
