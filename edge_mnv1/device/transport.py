"""A transport is a byte pipe to a device program; the protocol runs on top of it."""

from __future__ import annotations

import os
import select
import subprocess

from edge_mnv1.errors import DeviceError, ToolError


class Transport:
    description = "device"

    def write(self, data: bytes) -> None:
        raise NotImplementedError

    def read(self, n: int, timeout: float) -> bytes:
        """Up to n bytes; b"" when nothing came within timeout. DeviceError when closed."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class ProcessTransport(Transport):
    """A child process speaking the protocol on its stdin/stdout (local program, ssh)."""

    def __init__(self, argv: list[str], description: str, env: dict | None = None,
                 cwd: str | None = None):
        self.argv = argv
        self.description = description
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, env=env, cwd=cwd, bufsize=0)
        except FileNotFoundError as e:
            raise ToolError(f"cannot start {argv[0]!r} ({e}); run ./scripts/setup.sh") from None
        os.set_blocking(self.proc.stdout.fileno(), False)
        os.set_blocking(self.proc.stderr.fileno(), False)
        self.stderr_tail = b""

    def _drain_stderr(self) -> None:
        try:
            chunk = self.proc.stderr.read(65536)
        except (BlockingIOError, ValueError):
            chunk = None
        if chunk:
            self.stderr_tail = (self.stderr_tail + chunk)[-4000:]

    def _died(self) -> DeviceError:
        self._drain_stderr()
        code = self.proc.poll()
        tail = self.stderr_tail.decode("utf-8", "replace").strip()
        return DeviceError(self.exit_message(code, tail))

    def exit_message(self, code, stderr_tail: str) -> str:
        how = f"exited with code {code}" if code is not None and code >= 0 else \
            f"was killed by signal {-code}" if code is not None else "closed its output"
        return (f"{self.description}: the device program {how}"
                + (f"; it said: {stderr_tail[-600:]}" if stderr_tail else ""))

    def write(self, data: bytes) -> None:
        try:
            self.proc.stdin.write(data)
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError, OSError):
            raise self._died() from None

    def read(self, n: int, timeout: float) -> bytes:
        fd = self.proc.stdout.fileno()
        ready, _, _ = select.select([fd, self.proc.stderr.fileno()], [], [], timeout)
        if self.proc.stderr.fileno() in ready:
            self._drain_stderr()
        if fd not in ready:
            return b""
        try:
            data = os.read(fd, n)
        except BlockingIOError:
            return b""
        if not data:
            self.proc.wait(timeout=5)
            raise self._died()
        return data

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for f in (self.proc.stdout, self.proc.stderr):
            try:
                f.close()
            except OSError:
                pass
