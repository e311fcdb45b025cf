"""Serial servers users already run, in front of the emulated Cortex-M7 (mps2-an500): Debian's
ser2net serving its UART over RFC 2217, and socat joining it to a pty. `parity` and `bench`
run through them from the command line; the servers (and QEMU) are started and stopped by
the tests, and a missing tool or a server that cannot start is a clear error."""

from __future__ import annotations

import os
import socket
import subprocess
import time

import psutil
import pytest

from edge_mnv1.artifact.artifact import Artifact
from edge_mnv1.device.serial_link import SerialTransport, _rfc2217_class
from edge_mnv1.emulators.mcu_server import free_port
from edge_mnv1.emulators.serial_servers import (Ser2net, SocatPty, board_behind_ser2net,
                                                board_behind_socat)
from edge_mnv1.errors import DeviceError, ToolError

from compiled import cli_json

# 4 real digits (48 KB fp32 inputs each): 2-3 s each through QEMU's UART.
PARITY_INPUTS = 4


@pytest.fixture(scope="module")
def firmware(digits_artifact):
    """The digits model 0.25/64 fp32 compiled and linked for mps2-an500."""
    return digits_artifact("mps2-an500")[0]


def _alive(proc) -> bool:
    return proc is not None and proc.poll() is None


@pytest.fixture
def pty_pair(tmp_path):
    """Two ptys joined by socat: what goes into one comes out of the other, like the two
    ends of a null-modem cable. Yields (a, b) as /dev/pts/N paths."""
    a, b = tmp_path / "a", tmp_path / "b"
    proc = subprocess.Popen(["socat", f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}"],
                            stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while not (a.exists() and b.exists()):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.05)
        yield os.path.realpath(a), os.path.realpath(b)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# ---- the servers themselves (no board) ------------------------------------------------------

def test_a_missing_server_tool_says_run_setup(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # neither ser2net nor socat on it
    for server in (Ser2net("/dev/pts/999"), SocatPty(free_port())):
        with server, pytest.raises(ToolError, match=r"is not installed; run ./scripts/setup.sh"):
            server.start()
        assert server.proc is None and not server.dir.exists()


def test_socat_that_cannot_connect_is_a_device_error_and_leaves_nothing():
    port = free_port()  # nothing listens there
    server = SocatPty(port)
    with pytest.raises(DeviceError, match=rf"socat exited with code 1 .*127.0.0.1:{port}"):
        with server:
            server.start()
    assert not _alive(server.proc) and not server.dir.exists()


def test_ser2net_config_and_a_port_in_use():
    server = Ser2net("/dev/ttyACM0", 57600, port=4321)
    assert server.url == "rfc2217://127.0.0.1:4321"
    assert "accepter: telnet(rfc2217),tcp,127.0.0.1,4321\n" in server.config()
    assert "connector: serialdev,/dev/ttyACM0,57600n81,local\n" in server.config()
    server.stop()
    with socket.socket() as busy:  # ser2net cannot listen on a port that is taken
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        server = Ser2net("/dev/pts/999", port=busy.getsockname()[1])
        with pytest.raises(DeviceError, match=r"(?s)ser2net cannot listen on 127.0.0.1:\d+: "
                           r".*Address already in use"):
            with server:
                server.start(timeout=5)
    assert not _alive(server.proc) and not server.dir.exists()


def test_rfc2217_carries_every_byte_value_and_negotiates_once(pty_pair):
    """pyserial's RFC 2217 client through a real ser2net to a pty: all 256 byte values
    (0xFF is Telnet's IAC, doubled on the wire) arrive intact both ways, and changing the
    read timeout (the transport does it on almost every read) does not renegotiate the line
    (pyserial alone re-sends baud, size, parity and stop bits and waits for each answer)."""
    import serial

    near, far = pty_pair
    payload = bytes(range(256)) * 64 + b"\xff\xff\xfe"
    with Ser2net(near, 115200) as server, \
            serial.Serial(far, 115200, timeout=0.2) as other_end:
        server.start()
        link = SerialTransport(server.url, baud=115200)
        try:
            assert isinstance(link.ser, _rfc2217_class())
            sent = []
            link.ser.rfc2217_send_subnegotiation = \
                lambda option, value=b"", send=link.ser.rfc2217_send_subnegotiation: \
                (sent.append(option), send(option, value))
            for t in (0.5, 0.01, 2.0, 0.3):
                link.read(1, t)  # nothing to read yet: returns b"" at the timeout
            assert sent == []
            link.write(payload)
            assert _read_exactly(other_end.read, len(payload)) == payload
            other_end.write(payload)
            assert _read_exactly(lambda n: link.read(n, 2.0), len(payload)) == payload
        finally:
            link.close()
        assert _alive(server.proc)
    assert not _alive(server.proc)


def _read_exactly(read, n: int, seconds: float = 30.0) -> bytes:
    got = b""
    deadline = time.monotonic() + seconds
    while len(got) < n and time.monotonic() < deadline:
        got += read(n - len(got))
    return got


# ---- parity and bench of the emulated M7 through the servers -------------------------------

def _servers_left(before: set[int]) -> list[str]:
    now = psutil.Process().children(recursive=True)
    return [" ".join(p.cmdline()[:2]) for p in now if p.pid not in before
            and p.name() in ("ser2net", "socat", "qemu-system-arm")]


def _children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def _check_parity(p: dict, url: str) -> None:
    assert p["passed"], p["failures"]
    assert p["device"] == url and p["n"] == PARITY_INPUTS and p["completed"] == PARITY_INPUTS
    assert p["top1_agreement"] == 1.0 and p["max_abs_error"] <= 1e-4
    assert p["device_info"]["target"] == "mps2-an500"


@pytest.mark.slow
@pytest.mark.emulator
@pytest.mark.parametrize("server, scheme", [(board_behind_ser2net, "rfc2217://127.0.0.1:"),
                                            (board_behind_socat, "serial:///dev/pts/")],
                         ids=["rfc2217-through-ser2net", "pty-joined-by-socat"])
def test_parity_and_bench_through_a_serial_server(firmware, server, scheme):
    before = _children()
    art = Artifact.load(firmware)
    with server(art.target, art.firmware) as url:
        assert url.startswith(scheme)
        p = cli_json("parity", firmware, "--device", url, "--data", "digits",
                     "--limit", PARITY_INPUTS, timeout=300)
        _check_parity(p, url)
        b = cli_json("bench", firmware, "--device", url, "--runs", 3, "--warmup", 1,
                     "--no-host", timeout=300)
        assert b["device"] == url and b["tick_unit"] == "instructions" and b["runs"] == 3
        # -icount shift=0: instructions per inference, the same on every run (+- one tick
        # of 40 instructions), whatever the link.
        assert b["device_median_ticks"] > 1e6 and max(b["ticks"]) - min(b["ticks"]) <= 40
    assert _servers_left(before) == []


@pytest.mark.slow
@pytest.mark.emulator
def test_servers_and_board_stop_when_the_test_fails(firmware):
    """An exception inside the `with` (a failing assertion) still stops ser2net and QEMU."""
    before = _children()
    art = Artifact.load(firmware)
    with pytest.raises(RuntimeError, match="failed inside"):
        with board_behind_ser2net(art.target, art.firmware):
            assert len(_servers_left(before)) == 2  # qemu-system-arm and ser2net
            raise RuntimeError("failed inside")
    assert _servers_left(before) == []
