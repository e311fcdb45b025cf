"""Putting an artifact's Linux program on an ssh device: one probe round trip (architecture,
emulator, the sha256 of what is already there), the plan (native, or under the target's
emulator when the device is another architecture that has it), and atomic uploads of what
changed: a temporary name, the sha256 checked on the device, then `mv`, so an interrupted
upload never leaves a half-written program that could run.
"""

from __future__ import annotations

import hashlib
import re
import shlex
import time
from dataclasses import dataclass

from edge_mnv1 import log
from edge_mnv1.errors import DeviceError, UsageError
from edge_mnv1.artifact.artifact import Artifact
from edge_mnv1.device.ssh_connection import SshConnection
from edge_mnv1.device.ssh_url import SshUrl, default_dir, shown_dir

DEPLOY_FILES = ("program", "manifest.json")  # what the device needs; build/ and sources stay
ARCH_ALIASES = {"arm64": "aarch64", "amd64": "x86_64"}


@dataclass(frozen=True)
class DeployFile:
    name: str
    data: bytes
    sha256: str
    mode: int


def local_files(art: Artifact) -> list[DeployFile]:
    """The deploy files in upload order (manifest.json last: a complete deploy ends with it).
    The program's sha256 is the manifest's (Artifact.load checked it); the manifest's own is
    computed here, the one file it cannot list."""
    program = art.program.read_bytes()
    manifest = (art.path / "manifest.json").read_bytes()
    return [DeployFile("program", program, art.manifest.files["program"], 0o755),
            DeployFile("manifest.json", manifest, hashlib.sha256(manifest).hexdigest(), 0o644)]


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


def plan(u: SshUrl, remote: dict, art: Artifact) -> list[str]:
    """The remote argv prefix for the program: [] native, or the target's emulator command.
    Refuses (UsageError) a device of another architecture that cannot emulate this one."""
    target = art.target
    want = art.manifest.target_arch or target.arch
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
        f"{u.where}: the device is {arch} (uname -m) but {art.path} is built for {want} "
        f"(target {art.manifest.target_name})"
        + (f", and the device has no {emu[0]} to emulate it" if emu else "")
        + f"; compile for a target whose arch is {arch}, or point --device at a device that is {want}"
        + (f" (or install {emu[0]} on it: Debian package qemu-user)" if emu else ""))


def upload(conn: SshConnection, rdir: str, f: DeployFile) -> None:
    """Atomic: into a temporary name, sha256 checked on the device, then `mv` onto the final
    name."""
    q, qn, name, want = shlex.quote(rdir), shlex.quote(f.name), f.name, f.sha256
    cmd = (f"mkdir -p -- {q} || exit 90; cd -- {q} || exit 90; "
           f"t=.{name}.part.$$; "
           "trap 'rm -f -- \"$t\"' EXIT; "
           "cat > \"$t\" || exit 91; "
           "got=$(sha256sum < \"$t\") || exit 91; got=${got%% *}; "
           f"if [ \"$got\" != {want} ]; then echo \"edge_mnv1: {name} arrived with sha256 "
           f"$got, expected {want}\" >&2; exit 94; fi; "
           f"chmod {f.mode:o} \"$t\" && mv -f -- \"$t\" {qn} || exit 92; trap - EXIT; exit 0")
    r = conn.run(cmd, input=f.data, timeout=max(120.0, len(f.data) / 100e3),
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


def ensure_deployed(conn: SshConnection, art: Artifact) -> dict:
    """Makes the device hold this artifact's program and manifest; cheap when it already does
    (one round trip). Returns what was done: device, host, dir, remote_arch, emulated,
    uploaded, skipped, bytes, seconds (and, for starting the program, _rdir and _prefix)."""
    u = conn.u
    t0 = time.monotonic()
    if art.manifest.is_mcu:
        raise UsageError(f"{art.path} is firmware for the MCU target {art.manifest.target_name}; "
                         "an ssh device runs Linux programs: use serial:// or emulated")
    rdir = u.dir or default_dir(art.manifest)
    files = local_files(art)
    emu = (art.target.emulator or {}).get("command") or []
    remote = probe(conn, rdir, emu[0] if emu else None)
    prefix = plan(u, remote, art)
    uploaded, skipped, nbytes = [], [], 0
    for f in files:
        if remote["sha256"].get(f.name) == f.sha256:
            skipped.append(f.name)
            continue
        log.info(f"deploy: {u.where}: uploading {f.name} ({len(f.data) / 1e6:.2f} MB) to "
                 f"{shown_dir(rdir)}")
        upload(conn, rdir, f)
        uploaded.append(f.name)
        nbytes += len(f.data)
    return {"device": u.url, "host": u.where, "dir": shown_dir(rdir), "_rdir": rdir,
            "remote_arch": remote["arch"], "emulated": bool(prefix),
            "_prefix": prefix, "uploaded": uploaded, "skipped": skipped, "bytes": nbytes,
            "seconds": round(time.monotonic() - t0, 3)}
