"""`--device ssh://user@host[:port][/dir][?identity=KEY&known_hosts=FILE&accept_new=1]`

The device program runs on a remote Linux machine (a Raspberry Pi, or the emulated one of
device/sshd.py) through the system's OpenSSH client, so ~/.ssh/config, ssh-agent, ProxyJump
and known_hosts work as they do for `ssh` itself. One multiplexed connection (ControlMaster,
socket in a private temporary directory) carries everything a command does: the probe, the
uploads and the protocol session; it is closed when the command ends.

Policy (docs/ssh.md):
- Host keys are checked (StrictHostKeyChecking=yes); an unknown key is refused with its
  fingerprint and how to trust it. New keys are accepted only when asked: `?accept_new=1`
  in the URL or EDGE_MNV1_SSH_ACCEPT_NEW=1 (a changed key is refused either way).
- BatchMode=yes: nothing ever prompts.
- Every remote path is shlex-quoted; the URL's path is the remote directory itself (absolute,
  or `/~/rel` relative to the remote home); the default is ~/edge_mnv1/<model key>-<target>.
- `uname -m` on the device must be the artifact's architecture; when it is not, and the target
  names an emulator (qemu-aarch64 for rpi4) that the remote machine has, the program runs
  under it and the device is reported as emulated; otherwise the deploy is refused.
- Uploads are atomic: a temporary name, the sha256 checked on the device, then `mv`. Files
  whose remote sha256 already matches are skipped (one round trip checks them all).
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, unquote

from edge_mnv1 import log
from edge_mnv1.errors import DeviceError, UsageError
from edge_mnv1.device.transport import ProcessTransport

ACCEPT_NEW_ENV = "EDGE_MNV1_SSH_ACCEPT_NEW"
DEPLOY_FILES = ("program", "manifest.json")  # what the device needs; build/ and sources stay
QUERY_KEYS = {"identity", "known_hosts", "accept_new"}
ARCH_ALIASES = {"arm64": "aarch64", "amd64": "x86_64"}
_TRUE = {"1", "yes", "true", "on"}


# -- the URL ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class SshUrl:
    url: str
    host: str
    user: str | None = None
    port: int | None = None
    dir: str | None = None          # as given: absolute, or relative to the remote home
    identity: str | None = None
    known_hosts: str | None = None
    accept_new: bool = False

    @property
    def where(self) -> str:
        """user@host:port as a person would write it (no query: keys are not news)."""
        who = f"{self.user}@" if self.user else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{who}{host}" + (f":{self.port}" if self.port else "")


def parse_url(url: str) -> SshUrl:
    """ssh://[user@]host[:port][/dir][?identity=PATH&known_hosts=PATH&accept_new=1]. The path
    may be percent-encoded (%20 for a space, %3F for ?, %23 for #)."""
    if not url.startswith("ssh://"):
        raise UsageError(f"device {url!r}: not an ssh:// URL")
    rest = url[len("ssh://"):]
    rest, _, query = rest.partition("?")
    netloc, slash, path = rest.partition("/")
    user = None
    if "@" in netloc:
        user, _, netloc = netloc.rpartition("@")
        user = unquote(user)
        if not user:
            raise UsageError(f"device {url!r}: empty user name before '@'")
    port = None
    if netloc.startswith("["):
        host, _, after = netloc[1:].partition("]")
        portpart = after[1:] if after.startswith(":") else None
        if after and portpart is None:
            raise UsageError(f"device {url!r}: cannot read the host {netloc!r}")
    else:
        host, colon, portpart = netloc.partition(":")
        if not colon:
            portpart = None
    if portpart is not None:
        if not portpart.isdigit() or not 0 < int(portpart) < 65536:
            raise UsageError(f"device {url!r}: port {portpart!r} is not a number from 1 to 65535")
        port = int(portpart)
    if not host:
        raise UsageError(f"device {url!r}: no host; write ssh://user@host[:port][/dir]")
    if host.startswith("-") or (user or "").startswith("-") or any(c.isspace() for c in host):
        raise UsageError(f"device {url!r}: a host or user may not start with '-' or hold spaces")
    rdir = None
    if slash and path:
        p = unquote(path)
        if p == "~" or p == "~/":
            raise UsageError(f"device {url!r}: the home directory itself is not a deploy "
                             "directory; name one, e.g. ssh://host/~/edge_mnv1")
        rdir = p[2:] if p.startswith("~/") else "/" + p
        rdir = rdir.rstrip("/") or "/"
        if "\0" in rdir or "\n" in rdir:
            raise UsageError(f"device {url!r}: the directory holds a NUL or newline")
    params = {}
    for key, values in parse_qs(query, keep_blank_values=True).items():
        if key not in QUERY_KEYS:
            raise UsageError(f"device {url!r}: unknown parameter {key!r}; allowed: "
                             f"{', '.join(sorted(QUERY_KEYS))}")
        params[key] = values[-1]
    for key in ("identity", "known_hosts"):
        if key in params:
            if not params[key]:
                raise UsageError(f"device {url!r}: {key}= needs a file name")
            params[key] = str(Path(params[key]).expanduser())
    for key in ("identity", "known_hosts"):
        if any(c in params.get(key, "") for c in "\"'\n"):
            raise UsageError(f"device {url!r}: the {key} file name may not hold quotes or "
                             "newlines (ssh cannot read it); move the file")
    if "identity" in params and not Path(params["identity"]).is_file():
        raise UsageError(f"device {url!r}: identity file {params['identity']} does not exist")
    accept_new = (params.get("accept_new", "").lower() in _TRUE
                  or os.environ.get(ACCEPT_NEW_ENV, "").lower() in _TRUE)
    return SshUrl(url=url, host=host, user=user, port=port, dir=rdir,
                  identity=params.get("identity"), known_hosts=params.get("known_hosts"),
                  accept_new=accept_new)


def default_dir(manifest: dict) -> str:
    """Relative to the remote home (an ssh command starts there)."""
    return f"edge_mnv1/{manifest['model']['key']}-{manifest['target']}"


def shown_dir(rdir: str) -> str:
    return rdir if rdir.startswith("/") else f"~/{rdir}"


# -- the connection ----------------------------------------------------------------------------
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
            raise DeviceError("no `ssh` client on this machine; install openssh-client "
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


# -- what went wrong, in words ---------------------------------------------------------------
def _resolved(u: SshUrl) -> dict:
    """The host, port and proxy ssh will really use (after ~/.ssh/config), via `ssh -G`."""
    argv = ["ssh", "-G"] + (["-p", str(u.port)] if u.port else []) + \
        (["-l", u.user] if u.user else []) + [u.host]
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout
    except (subprocess.TimeoutExpired, OSError):
        return {}
    conf = {}
    for line in out.splitlines():
        key, _, value = line.partition(" ")
        conf.setdefault(key, value)
    return conf


def host_key_fingerprints(host: str, port: int) -> tuple[list[str], list[str]]:
    """(fingerprint lines, known_hosts lines) of the keys a server offers, by ssh-keyscan."""
    try:
        scan = subprocess.run(["ssh-keyscan", "-T", "5", "-p", str(port), host],
                              capture_output=True, text=True, timeout=15)
        lines = [ln for ln in scan.stdout.splitlines() if ln and not ln.startswith("#")]
        if not lines:
            return [], []
        fp = subprocess.run(["ssh-keygen", "-lf", "-"], input="\n".join(lines) + "\n",
                            capture_output=True, text=True, timeout=15)
        return [ln for ln in fp.stdout.splitlines() if ln.strip()], lines
    except (subprocess.TimeoutExpired, OSError):
        return [], []


def connection_error(u: SshUrl, stderr: str) -> DeviceError:
    s = stderr.strip()
    said = " ".join(ln for ln in s.splitlines() if not ln.startswith("@"))[-500:]
    kh = u.known_hosts or "~/.ssh/known_hosts"
    if "REMOTE HOST IDENTIFICATION HAS CHANGED" in s or "has changed and you have requested" in s:
        fp = re.search(r"(SHA256:[A-Za-z0-9+/=]+)", s)
        conf = _resolved(u)
        name = conf.get("hostname", u.host)
        port = conf.get("port", "22")
        key = name if port == "22" else f"[{name}]:{port}"
        return DeviceError(
            f"{u.where}: the device's host key has CHANGED since it was trusted (now "
            f"{fp.group(1) if fp else 'unknown'}); ssh refuses it. This is either a reinstalled "
            f"device or someone in the middle. Check the key on the device (ssh-keygen -lf "
            f"/etc/ssh/ssh_host_ed25519_key.pub); if it is the device's, remove the old one with "
            f"`ssh-keygen -f {shlex.quote(os.path.expanduser(kh))} -R {shlex.quote(key)}` and "
            f"connect again")
    if "Host key verification failed" in s or "host key is known" in s:
        conf = _resolved(u)
        name = conf.get("hostname", u.host)
        port = int(conf.get("port", u.port or 22))
        proxied = any(conf.get(k, "none") != "none" for k in ("proxyjump", "proxycommand"))
        fps, _ = ([], []) if proxied else host_key_fingerprints(name, port)
        scan = f"ssh-keyscan -p {port} {shlex.quote(name)} >> {shlex.quote(kh) if u.known_hosts else kh}"
        return DeviceError(
            f"{u.where}: the device's host key is not known, and edge_mnv1 checks host keys "
            f"(StrictHostKeyChecking=yes). The device offers: "
            + ("; ".join(fps) if fps else "(fingerprint not available here: "
               + ("the connection goes through a proxy" if proxied else "ssh-keyscan got none")
               + "; connect once with plain `ssh` to see it)")
            + f". Compare with the device's own (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub "
            f"on it); to trust it, run `{scan}` (or `ssh` to it once and answer yes), or let "
            f"edge_mnv1 accept a new key on first use: add ?accept_new=1 to the URL or set "
            f"{ACCEPT_NEW_ENV}=1")
    if "Permission denied" in s:
        return DeviceError(
            f"{u.where}: the device refused the login ({said}). Give the right key with "
            f"?identity=PATH in the URL (or add it to ssh-agent or ~/.ssh/config), check the user "
            f"name, and put its public key in the device's ~/.ssh/authorized_keys "
            f"(ssh-copy-id)")
    if "Connection refused" in s:
        return DeviceError(
            f"{u.where}: connection refused: nothing listens for ssh there. Is the device "
            f"on, is sshd running, is the port right? (for an emulated Pi: "
            f"`edge-mnv1 emulate rpi4` prints its URL)")
    if "Could not resolve hostname" in s:
        return DeviceError(f"{u.where}: {said}; check the host name (or its Host entry in "
                           "~/.ssh/config)")
    if any(m in s for m in ("timed out", "No route to host", "Network is unreachable")):
        return DeviceError(f"{u.where}: {said}; the device does not answer: check that it is "
                           "on and on the network")
    if any(m in s for m in ("closed by remote host", "Connection closed", "Broken pipe",
                            "Connection reset", "Timeout, server", "lost connection",
                            "mux_client", "Control socket")) or not s:
        return DeviceError(f"{u.where}: the ssh connection dropped"
                           + (f" ({said})" if said else "")
                           + "; check the device and the network, then rerun the command "
                             "(it resumes: files already on the device are not sent again)")
    return DeviceError(f"{u.where}: ssh failed: {said}; try `ssh "
                       + (f"-p {u.port} " if u.port else "") + f"{u.where.split(':')[0]} true` "
                       "to see why")


# -- the transport -----------------------------------------------------------------------------
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

    def close(self) -> None:
        super().close()


# -- probe, plan, upload ----------------------------------------------------------------------
def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def probe(conn: SshConnection, rdir: str, emulator: str | None) -> dict:
    """One round trip: the device's architecture, its emulator (if the target names one) and
    the sha256 of the deploy files already there."""
    q = shlex.quote(rdir)
    names = " ".join(shlex.quote(n) for n in DEPLOY_FILES)
    cmd = ("printf 'arch=%s\\n' \"$(uname -m)\"; "
           + (f"printf 'emulator=%s\\n' \"$(command -v {shlex.quote(emulator)} 2>/dev/null)\"; "
              if emulator else "")
           + f"if cd -- {q} 2>/dev/null; then echo dir=1; sha256sum -- {names} 2>/dev/null; fi; "
           "exit 0")
    r = conn.run(cmd, what="the probe (uname, sha256sum)")
    out = r.stdout.decode("utf-8", "replace")
    info = {"arch": "", "emulator": "", "dir_exists": False, "sha256": {}}
    for line in out.splitlines():
        if line.startswith("arch="):
            info["arch"] = line[5:].strip()
        elif line.startswith("emulator="):
            info["emulator"] = line[9:].strip()
        elif line == "dir=1":
            info["dir_exists"] = True
        else:
            m = re.match(r"^\\?([0-9a-f]{64}) [ *](.+)$", line)
            if m:
                info["sha256"][m.group(2)] = m.group(1)
    if not info["arch"]:
        raise DeviceError(f"{conn.u.where}: `uname -m` printed nothing "
                          f"({r.stderr.decode('utf-8', 'replace').strip()[-300:]}); the device "
                          "needs a POSIX shell with uname and sha256sum")
    return info


def plan(u: SshUrl, remote: dict, manifest: dict, target, artifact: Path) -> list[str]:
    """The remote argv prefix for the program: [] native, or the target's emulator command.
    Refuses (UsageError) a device of another architecture that cannot emulate this one."""
    want = manifest.get("target_arch") or target.arch
    arch = ARCH_ALIASES.get(remote["arch"], remote["arch"])
    if arch == want:
        return []
    emu = (target.emulator or {}).get("command") or []
    if emu and remote.get("emulator"):
        log.info(f"ssh: {u.where} is {arch}, the program is {want}: it runs under "
                 f"{' '.join(emu)} there (an emulated device; timings are not a real board's)")
        env = (target.emulator or {}).get("env") or {}
        return (["env"] + [f"{k}={v}" for k, v in env.items()] if env else []) + list(emu)
    raise UsageError(
        f"{u.where}: the device is {arch} (uname -m) but {artifact} is built for {want} "
        f"(target {manifest.get('target')})"
        + (f", and the device has no {emu[0]} to emulate it" if emu else "")
        + f"; compile for a target whose arch is {arch}, or point --device at a device that is {want}"
        + (f" (or install {emu[0]} on it: Debian package qemu-user)" if emu else ""))


def upload(conn: SshConnection, rdir: str, name: str, data: bytes, mode: int) -> None:
    """Atomic: into a temporary name, sha256 checked on the device, then `mv` onto the final
    name, so an interrupted upload never leaves a half-written program that could run."""
    q, qn = shlex.quote(rdir), shlex.quote(name)
    want = _sha256_bytes(data)
    cmd = (f"mkdir -p -- {q} || exit 90; cd -- {q} || exit 90; "
           f"t=.{name}.part.$$; "
           "trap 'rm -f -- \"$t\"' EXIT; "
           "cat > \"$t\" || exit 91; "
           "got=$(sha256sum < \"$t\") || exit 91; got=${got%% *}; "
           f"if [ \"$got\" != {want} ]; then echo \"edge_mnv1: {name} arrived with sha256 "
           f"$got, expected {want}\" >&2; exit 94; fi; "
           f"chmod {mode:o} \"$t\" && mv -f -- \"$t\" {qn} || exit 92; trap - EXIT; exit 0")
    r = conn.run(cmd, input=data, timeout=max(120.0, len(data) / 100e3),
                 what=f"the upload of {name}")
    if r.returncode != 0:
        said = r.stderr.decode("utf-8", "replace").strip()[-400:]
        if r.returncode == 94:
            raise DeviceError(f"{conn.u.where}: {name} arrived corrupted ({said}); the "
                              "temporary file was removed and nothing was replaced: rerun")
        raise DeviceError(
            f"{conn.u.where}: cannot write {name} into {shown_dir(rdir)} on the device"
            + (f" ({said})" if said else f" (exit {r.returncode})")
            + "; choose a directory the login user can write (e.g. ssh://user@host/~/edge_mnv1)"
              " or fix its permissions on the device")


def _local_files(artifact: Path, manifest: dict) -> dict[str, bytes]:
    files = {}
    for name in DEPLOY_FILES:
        p = artifact / name
        if not p.is_file():
            raise UsageError(f"{artifact}: no {name}; run `edge-mnv1 compile` (without "
                             "--no-build) to make the device program")
        files[name] = p.read_bytes()
    want = (manifest.get("files") or {}).get("program")
    if want and _sha256_bytes(files["program"]) != want:
        raise UsageError(f"{artifact}: program does not match the manifest's sha256: the "
                         "artifact was changed after compiling; recompile it")
    return files


def ensure_deployed(url: str, artifact, manifest: dict, target,
                    conn: SshConnection | None = None) -> dict:
    """Makes the device hold this artifact's program and manifest; cheap when it already does
    (one round trip). Returns what was done: device, dir, remote_arch, emulated, uploaded,
    skipped, bytes, seconds."""
    artifact = Path(artifact)
    u = parse_url(url)
    own = conn is None
    conn = conn or SshConnection(u)
    try:
        t0 = time.monotonic()
        rdir = u.dir or default_dir(manifest)
        if manifest.get("target_kind") == "mcu" or getattr(target, "is_mcu", False):
            raise UsageError(f"{artifact} is firmware for the MCU target {manifest['target']}; "
                             "an ssh device runs Linux programs: use serial:// or emulated")
        files = _local_files(artifact, manifest)
        emu = (target.emulator or {}).get("command") or []
        remote = probe(conn, rdir, emu[0] if emu else None)
        prefix = plan(u, remote, manifest, target, artifact)
        uploaded, skipped, nbytes = [], [], 0
        for name in DEPLOY_FILES:  # manifest.json last: a complete deploy ends with it
            data = files[name]
            if remote["sha256"].get(name) == _sha256_bytes(data):
                skipped.append(name)
                continue
            log.info(f"deploy: {u.where}: uploading {name} ({len(data) / 1e6:.2f} MB) to "
                     f"{shown_dir(rdir)}")
            upload(conn, rdir, name, data, 0o755 if name == "program" else 0o644)
            uploaded.append(name)
            nbytes += len(data)
        return {"device": url, "host": u.where, "dir": shown_dir(rdir), "_rdir": rdir,
                "remote_arch": remote["arch"], "emulated": bool(prefix),
                "_prefix": prefix, "uploaded": uploaded, "skipped": skipped, "bytes": nbytes,
                "seconds": round(time.monotonic() - t0, 3)}
    finally:
        if own:
            conn.close()


def serve_command(rdir: str, prefix: list[str]) -> str:
    """The remote shell command that runs the program on stdin/stdout. Not `exec`: the shell
    stays, so a program killed by a signal shows as exit 128+N (ssh reports 255 otherwise)."""
    q = shlex.quote(rdir)
    run = " ".join(shlex.quote(a) for a in [*prefix, "./program", "--serve"])
    return (f"cd -- {q} || exit 96; "
            f"[ -f ./program ] || {{ echo \"edge_mnv1: no program in {shown_dir(rdir)}: run "
            "edge-mnv1 deploy\" >&2; exit 127; }; "
            f"{run}; s=$?; exit $s")


def start(conn: SshConnection, info: dict, manifest: dict) -> SshTransport:
    how = (f" (emulated: the {info['remote_arch']} machine runs the {manifest.get('target_arch')} "
           f"program under {' '.join(info['_prefix'])})") if info["emulated"] else ""
    desc = f"ssh {conn.u.where}:{info['dir']}{how}"
    remote = {k: v for k, v in info.items() if not k.startswith("_")}
    return SshTransport(conn, serve_command(info["_rdir"], info["_prefix"]), desc, remote)


def open(url, artifact, manifest, target, stack):
    """connect.open_device's entry: deploy if needed, then the program's stdin/stdout."""
    u = parse_url(url)
    conn = SshConnection(u)
    stack.callback(conn.close)
    info = ensure_deployed(url, artifact, manifest, target, conn=conn)
    if info["uploaded"]:
        log.info(f"deploy: {u.where}: uploaded {', '.join(info['uploaded'])} "
                 f"({info['bytes']} bytes) in {info['seconds']:.2f} s")
    return start(conn, info, manifest)


def deploy(url, artifact, manifest, target) -> dict:
    """`edge-mnv1 deploy` for one ssh device: upload what changed, start the program, check
    its hello against the manifest (model, target, shapes, protocol version)."""
    import contextlib

    from edge_mnv1.device.connect import check_hello
    from edge_mnv1.device.protocol import Client

    t0 = time.monotonic()
    u = parse_url(url)
    with contextlib.ExitStack() as stack:
        conn = SshConnection(u)
        stack.callback(conn.close)
        info = ensure_deployed(url, artifact, manifest, target, conn=conn)
        transport = start(conn, info, manifest)
        stack.callback(transport.close)
        hello = Client(transport, timeout=60, retries=1).hello()
        check_hello(hello, manifest, url)
    out = {k: v for k, v in info.items() if not k.startswith("_")}
    out["hello"] = hello
    out["seconds"] = round(time.monotonic() - t0, 3)
    return out
