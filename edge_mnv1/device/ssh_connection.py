"""One multiplexed OpenSSH connection to a device for the length of one command, and the
remote program's stdin/stdout on it as the protocol's byte pipe.

The system's ssh client is used, so ~/.ssh/config, ssh-agent, ProxyJump and known_hosts work
as they do for `ssh` itself. Host keys are checked (StrictHostKeyChecking=yes, or
accept-new when asked); BatchMode=yes: nothing ever prompts. The ControlMaster socket lives
in a private temporary directory and the master is stopped when the command ends.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from edge_mnv1 import log
from edge_mnv1.errors import DeviceError, ToolError
from edge_mnv1.device.ssh_diagnose import connection_error
from edge_mnv1.device.ssh_url import SshUrl
from edge_mnv1.device.transport import ProcessTransport


def _control_root() -> str:
    """A directory for the ControlMaster socket: private (0700), and short, because a unix
    socket path is limited to ~100 bytes."""
    base = tempfile.gettempdir()
    if len(base) > 40:
        base = "/tmp"
    return tempfile.mkdtemp(prefix="em-ssh-", dir=base)


class SshConnection:
    """One multiplexed OpenSSH connection to a device, for the length of one command."""

    def __init__(self, u: SshUrl, persist_seconds: int = 120):
        if shutil.which("ssh") is None:
            raise ToolError("no `ssh` client on this machine; install openssh-client "
                              "(./scripts/setup.sh does)")
        self.u = u
        self.control_dir = _control_root()
        self.persist = persist_seconds
        self.connected = False

    def options(self) -> list[str]:
        u = self.u
        opts = ["-T", "-o", "BatchMode=yes",
                "-o", f"StrictHostKeyChecking={'accept-new' if u.accept_new else 'yes'}",
                "-o", "ControlMaster=auto", "-o", f"ControlPath={self.control_dir}/%C",
                "-o", f"ControlPersist={self.persist}",
                "-o", "ConnectTimeout=15", "-o", "ServerAliveInterval=10",
                "-o", "ServerAliveCountMax=3"]
        if u.port:
            opts += ["-p", str(u.port)]
        if u.user:
            opts += ["-l", u.user]
        if u.identity:  # ssh expands %-tokens in these file names: escape a literal %
            opts += ["-i", u.identity.replace("%", "%%"), "-o", "IdentitiesOnly=yes"]
        if u.known_hosts:
            opts += ["-o", f'UserKnownHostsFile="{u.known_hosts.replace("%", "%%")}"']
        return opts

    def argv(self, command: str) -> list[str]:
        return ["ssh", *self.options(), self.u.host, command]

    def run(self, command: str, input: bytes | None = None, timeout: float = 120.0,
            what: str = "a command") -> subprocess.CompletedProcess:
        """Runs a remote shell command; ssh's own failures (exit 255) become DeviceError with
        what happened and what to do. The command's exit code is the caller's to judge."""
        t0 = time.monotonic()
        try:
            kw = {"input": input} if input is not None else {"stdin": subprocess.DEVNULL}
            r = subprocess.run(self.argv(command), capture_output=True, timeout=timeout, **kw)
        except subprocess.TimeoutExpired:
            raise DeviceError(f"{self.u.where}: {what} got no answer within {timeout:.0f} s; "
                              "check that the device is up and the network reaches it") from None
        if r.returncode == 255:
            raise connection_error(self.u, r.stderr.decode("utf-8", "replace"))
        for line in r.stderr.decode("utf-8", "replace").splitlines():
            if "Permanently added" in line:  # accept_new took a new host key: say so
                log.info(f"ssh: {line.strip()}")
        if not self.connected:
            self.connected = True
            log.info(f"ssh: connected to {self.u.where} in {time.monotonic() - t0:.2f} s")
        return r

    def close(self) -> None:
        """Stops the master (if one started, even by a command that then timed out) and
        removes the socket directory."""
        if self.connected or any(Path(self.control_dir).glob("*")):
            try:
                subprocess.run(["ssh", *self.options(), "-O", "exit", self.u.host],
                               capture_output=True, timeout=10, stdin=subprocess.DEVNULL)
            except (subprocess.TimeoutExpired, OSError):
                pass
        shutil.rmtree(self.control_dir, ignore_errors=True)


class SshTransport(ProcessTransport):
    """`ssh host 'cd DIR && ./program --serve'` as the byte pipe; exits explained."""

    def __init__(self, conn: SshConnection, command: str, description: str, remote: dict):
        self.conn = conn
        self.remote = remote  # what the probe learnt: arch, emulated, dir
        self.emulated = bool(remote.get("emulated"))
        super().__init__(conn.argv(command), description)

    def _died(self) -> DeviceError:
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        return super()._died()

    def exit_message(self, code, stderr_tail: str) -> str:
        u = self.conn.u
        if code == 255:
            return str(connection_error(u, stderr_tail))
        said = f"; it said: {stderr_tail[-600:]}" if stderr_tail else ""
        if code is not None and code > 128:
            sig = code - 128
            return (f"{self.description}: the device program was killed by signal {sig}"
                    + (" (SIGKILL: killed by someone, or the device ran out of memory)"
                       if sig == 9 else "") + f"{said}; rerun the command to start it again")
        if code in (126, 127):
            return (f"{self.description}: the device could not start the program (exit "
                    f"{code}){said}; redeploy it with `edge-mnv1 deploy`")
        return super().exit_message(code, stderr_tail) + \
            "; rerun the command (`edge-mnv1 deploy` first if the program changed)"
