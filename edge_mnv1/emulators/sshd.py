"""An emulated Raspberry Pi: a real OpenSSH server on 127.0.0.1, so that the ssh path (host
keys, user keys, multiplexing, uploads, the remote program) is the one a real board gets.

The server runs this machine's `/usr/sbin/sshd -D -e -f CONFIG` with its own host key, user
key, authorized_keys and known_hosts in a private state directory (mode 700), and gives each
login its own home directory inside it (SetEnv HOME, and a ForceCommand starts there), so the
default deploy directory ~/edge_mnv1/... never touches the real home. The remote machine is
this x86_64 machine: `uname -m` says so, honestly, and the ssh transport runs the aarch64
program under qemu-aarch64 there (edge_mnv1.device.ssh_upload `plan`), reporting the device as emulated.

Root or not: as root sshd needs /run/sshd (created here if missing) and the `sshd` user of
the openssh-server package, and logs in root with a key (PermitRootLogin prohibit-password);
as an ordinary user it needs neither, and only that user can log in. Either way the login
user is the current one.
"""

from __future__ import annotations

import ctypes
import os
import pwd
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from edge_mnv1.errors import DeviceError, ToolError, UsageError

SSHD = "/usr/sbin/sshd"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:  # preexec_fn: sshd gets SIGTERM if this process dies
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _state_root() -> str:
    run = os.environ.get("XDG_RUNTIME_DIR")
    if run and os.path.isdir(run) and os.access(run, os.W_OK) and len(run) < 40:
        return run
    return "/tmp"


def _keygen(path: Path, comment: str) -> None:
    r = subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment,
                        "-f", str(path)], capture_output=True, text=True, timeout=30)
    if r.returncode:
        raise ToolError(f"ssh-keygen failed: {r.stderr.strip()}; install openssh-client")


class SshServer:
    """A real sshd on 127.0.0.1. `port=0` picks a free port. `env` is exported in every
    session (e.g. a PATH without qemu, to play a board that cannot emulate); `launcher` is
    an argv prefix that must end by exec'ing sshd (tests: a private mount namespace)."""

    def __init__(self, port: int = 0, env: dict | None = None, name: str = "emulated",
                 extra_config: list[str] | None = None, launcher: list[str] | None = None):
        self.requested_port = int(port)
        self.port = int(port)
        self.env = dict(env or {})
        self.name = name
        self.extra_config = list(extra_config or [])
        self.launcher = list(launcher or [])  # argv that execs sshd (e.g. unshare), for tests
        self.user = pwd.getpwuid(os.getuid()).pw_name
        self.proc: subprocess.Popen | None = None
        self.state_dir: Path | None = None

    # -- files -------------------------------------------------------------------------------
    @property
    def identity(self) -> Path:
        return self.state_dir / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.state_dir / "known_hosts"

    @property
    def home(self) -> Path:
        return self.state_dir / "home"

    @property
    def log_path(self) -> Path:
        return self.state_dir / "sshd.log"

    def known_hosts_line(self) -> str:
        return f"[127.0.0.1]:{self.port} " + \
            " ".join((self.state_dir / "ssh_host_ed25519_key.pub").read_text().split()[:2])

    def host_key_fingerprint(self) -> str:
        r = subprocess.run(["ssh-keygen", "-lf", str(self.state_dir / "ssh_host_ed25519_key.pub")],
                           capture_output=True, text=True, timeout=10)
        return r.stdout.split()[1] if r.stdout else ""

    def url(self, path: str | None = None, identity: bool = True, known_hosts: bool = True) -> str:
        """ssh://user@127.0.0.1:PORT[/path]?identity=...&known_hosts=..."""
        from urllib.parse import quote

        u = f"ssh://{self.user}@127.0.0.1:{self.port}"
        if path:
            u += quote(path if path.startswith("/") else "/~/" + path, safe="/~")
        q = []
        if identity:
            q.append(f"identity={quote(str(self.identity), safe='/')}")
        if known_hosts:
            q.append(f"known_hosts={quote(str(self.known_hosts), safe='/')}")
        return u + ("?" + "&".join(q) if q else "")

    def ssh_config(self, alias: str = "edge-mnv1-pi") -> str:
        return (f"Host {alias}\n  HostName 127.0.0.1\n  Port {self.port}\n  User {self.user}\n"
                f"  IdentityFile {self.identity}\n  IdentitiesOnly yes\n"
                f"  UserKnownHostsFile {self.known_hosts}\n  StrictHostKeyChecking yes\n")

    # -- life ----------------------------------------------------------------------------------
    def _write_config(self) -> Path:
        sd = self.state_dir
        setup = [f"HOME={shlex.quote(str(self.home))}", "export HOME"]
        for k, v in self.env.items():
            setup += [f"{k}={shlex.quote(v)}", f"export {k}"]
        force = ("; ".join(setup) + '; cd "$HOME" || exit 1; '
                 'if [ -n "$SSH_ORIGINAL_COMMAND" ]; then eval "$SSH_ORIGINAL_COMMAND"; '
                 'else exec "${SHELL:-/bin/sh}" -l; fi')
        lines = [
            "ListenAddress 127.0.0.1", f"Port {self.port}",
            f"HostKey {sd / 'ssh_host_ed25519_key'}",
            f"AuthorizedKeysFile {sd / 'authorized_keys'}",
            f"AllowUsers {self.user}",
            "PubkeyAuthentication yes", "PasswordAuthentication no",
            "KbdInteractiveAuthentication no", "UsePAM no",
            "StrictModes no",                        # keys under /tmp
            "PermitRootLogin prohibit-password",     # as root, log in root with the key
            "PidFile none", "PrintMotd no", "PrintLastLog no", "X11Forwarding no",
            "MaxSessions 64", "MaxStartups 64", "LoginGraceTime 30",
            "LogLevel INFO",
            # HOME before the shell starts: bash run by sshd reads $HOME/.bashrc, and the
            # emulated board's home is its own (not this machine user's).
            f"SetEnv HOME={self.home}",
            f"ForceCommand {force}",
            *self.extra_config,
        ]
        cfg = sd / "sshd_config"
        cfg.write_text("\n".join(lines) + "\n")
        return cfg

    def start(self, timeout: float = 15.0) -> "SshServer":
        if not os.path.exists(SSHD):
            raise ToolError(f"no {SSHD}; install openssh-server (./scripts/setup.sh does)")
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("sshd")
            except KeyError:
                raise ToolError("sshd as root needs the 'sshd' privilege separation user; "
                                  "reinstall openssh-server") from None
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        self.state_dir = Path(tempfile.mkdtemp(prefix=f"edge_mnv1-{self.name}-",
                                               dir=_state_root()))
        try:
            os.chmod(self.state_dir, 0o700)
            self.home.mkdir(mode=0o700)
            _keygen(self.state_dir / "ssh_host_ed25519_key", f"edge_mnv1 {self.name} host")
            _keygen(self.identity, f"edge_mnv1 {self.name} user")
            shutil.copy(self.identity.with_suffix(".pub"), self.state_dir / "authorized_keys")
            for attempt in range(5):
                if not self.requested_port:
                    self.port = _free_port()
                if self._launch(timeout):
                    break
                if self.requested_port or attempt == 4:
                    raise UsageError(f"127.0.0.1:{self.port} is in use; choose another --port")
            self.known_hosts.write_text(self.known_hosts_line() + "\n")
            return self
        except BaseException:
            self.stop()
            raise

    def _launch(self, timeout: float) -> bool:
        """True when sshd listens; False when the port was taken; DeviceError otherwise."""
        cfg = self._write_config()
        log_f = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen([*self.launcher, SSHD, "-D", "-e", "-f", str(cfg)],
                                         stdin=subprocess.DEVNULL, stdout=log_f, stderr=log_f,
                                         start_new_session=True, preexec_fn=_die_with_parent)
        finally:
            log_f.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_path.read_text(errors="replace")
            if f"Server listening on 127.0.0.1 port {self.port}" in text:
                return True
            if self.proc.poll() is not None:
                self.proc = None
                if "Address already in use" in text:
                    self.log_path.write_text("")
                    return False
                raise DeviceError(f"sshd did not start: {text.strip()[-800:]}")
            time.sleep(0.05)
        self._kill_all()
        raise DeviceError(f"sshd did not listen on 127.0.0.1:{self.port} within {timeout:.0f} "
                          f"s: {self.log_path.read_text(errors='replace').strip()[-800:]}")

    def sessions(self) -> list:
        """The per-connection sshd processes (and what they run), for tests that drop links."""
        import psutil

        if not self.proc:
            return []
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def drop_connections(self) -> int:
        """Kills every connection (the per-connection sshd processes): a network drop."""
        import psutil

        n = 0
        for p in self.sessions():
            try:
                if p.name() == "sshd":
                    p.kill()
                    n += 1
            except psutil.NoSuchProcess:
                pass
        return n

    def _kill_all(self) -> None:
        import psutil

        procs = self.sessions()
        if self.proc:
            procs = [psutil.Process(self.proc.pid), *procs] if self.proc.poll() is None else procs
        for p in procs:
            try:
                p.terminate()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(procs, timeout=3)
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=3)
        if self.proc:
            try:
                self.proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                pass
        self.proc = None

    def stop(self) -> None:
        """Stops sshd and everything it runs, and removes the state directory."""
        self._kill_all()
        if self.state_dir is not None:
            shutil.rmtree(self.state_dir, ignore_errors=True)
            self.state_dir = None

    def __enter__(self):
        return self.start() if self.proc is None else self

    def __exit__(self, *exc):
        self.stop()


def start_emulated(target, port: int = 0, env: dict | None = None) -> SshServer:
    """The emulated board of a Linux target: an sshd whose sessions run on this machine."""
    if target.is_mcu:
        raise UsageError(f"{target.name} is an MCU; its emulated board is QEMU, not ssh")
    return SshServer(port=port, env=env, name=target.name).start()
