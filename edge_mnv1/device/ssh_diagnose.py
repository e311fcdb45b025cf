"""What went wrong on an ssh connection, in words: ssh's own failures (exit 255) turned into
a DeviceError that says what happened and what to do (unknown or changed host key with its
fingerprint, refused login, nothing listening, no route, a dropped link)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess

from edge_mnv1.errors import DeviceError
from edge_mnv1.device.ssh_url import ACCEPT_NEW_ENV, SshUrl


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
