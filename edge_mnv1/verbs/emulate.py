"""edge-mnv1 emulate TARGET [--port P] [--artifact DIR]

Starts the target's emulated device and serves until interrupted (Ctrl-C, SIGTERM):
- a Linux board (rpi4): a real OpenSSH sshd on 127.0.0.1 with its own host key and user key;
  prints its ssh:// URL, the known_hosts line, the identity file and an ssh_config snippet.
- an MCU board: QEMU with its UART on socket://127.0.0.1:P (edge_mnv1.emulators.mcu_server),
  booting --artifact DIR's firmware; `edge-mnv1 deploy DIR --device socket://...` restarts it
  with another image.
"""

from __future__ import annotations

import signal
import time

from edge_mnv1 import log
from edge_mnv1.errors import UsageError

HELP = ("start an emulated device of a target (rpi4: a real sshd on 127.0.0.1; MCU boards: "
        "QEMU) and print how to reach it; runs until Ctrl-C")


def add_arguments(p):
    p.add_argument("target", metavar="TARGET", help="a target name (rpi4, ...) or .toml file")
    p.add_argument("--port", type=int, default=0, metavar="P",
                   help="TCP port on 127.0.0.1 (default: a free one)")
    p.add_argument("--artifact", metavar="DIR",
                   help="the firmware to boot (MCU boards only; a Linux board takes uploads "
                        "with `edge-mnv1 deploy`)")


def _serve_until_interrupted(server) -> None:
    def stop(signum, _frame):
        raise KeyboardInterrupt
    # SIGINT too: started from a script's background job it arrives ignored, and Python
    # keeps an inherited SIG_IGN, so Ctrl-C (or a test's SIGINT) would never stop it.
    old = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        while server.proc is not None and server.proc.poll() is None:
            time.sleep(0.5)
        if server.proc is not None:
            log.info(f"emulate: sshd exited with code {server.proc.returncode}")
    except KeyboardInterrupt:
        log.info("emulate: stopping")
    finally:
        server.stop()
        for s, h in old.items():
            signal.signal(s, h)


def _firmware(target, artifact: str | None):
    """The firmware.elf of --artifact DIR, compiled for this MCU target (None without one)."""
    from edge_mnv1.artifact.artifact import Artifact

    if artifact is None:
        return None
    art = Artifact.load(artifact)
    if art.manifest.target_name != target.name:
        raise UsageError(f"{artifact} is firmware for {art.manifest.target_name}, not "
                         f"{target.name}; compile it with --target {target.name}")
    return art.firmware


def run(args) -> dict:
    from edge_mnv1.artifact.target import load_target

    target = load_target(args.target)
    if not 0 <= args.port < 65536:
        raise UsageError(f"--port {args.port}: give a TCP port from 1 to 65535 (or 0 for any)")
    if target.is_mcu:
        from edge_mnv1.emulators import mcu_server
        return mcu_server.emulate(target, args.port or None, _firmware(target, args.artifact))
    if args.artifact:
        log.info("emulate: --artifact is for MCU boards; deploy to this one with "
                 "`edge-mnv1 deploy DIR --device URL`")
    from edge_mnv1.emulators.sshd import start_emulated

    server = start_emulated(target, port=args.port)
    url = server.url()
    arch_note = (f"`uname -m` there says x86_64: {target.arch} programs run under "
                 f"{' '.join((target.emulator or {}).get('command', []))}, and edge_mnv1 "
                 "reports the device as emulated") if target.emulator else ""
    text = "\n".join([
        f"emulated {target.name} ({target.description}) on 127.0.0.1:{server.port}",
        f"device URL:     {url}",
        f"identity file:  {server.identity}",
        f"known_hosts:    {server.known_hosts_line()}",
        f"host key:       {server.host_key_fingerprint()}",
        *([f"note:           {arch_note}"] if arch_note else []),
        "ssh_config snippet (then --device ssh://edge-mnv1-" + target.name + "):",
        *("    " + ln for ln in server.ssh_config(f"edge-mnv1-{target.name}").splitlines()),
        f"try:            edge-mnv1 deploy ARTIFACT_DIR --device '{url}'",
        "Ctrl-C stops it and removes its state directory.",
    ])
    log.info(f"emulate: sshd pid {server.proc.pid}, state in {server.state_dir}")
    return {"target": target.name, "url": url, "host": "127.0.0.1", "port": server.port,
            "user": server.user, "identity": str(server.identity),
            "known_hosts": str(server.known_hosts), "known_hosts_line": server.known_hosts_line(),
            "host_key_fingerprint": server.host_key_fingerprint(),
            "ssh_config": server.ssh_config(f"edge-mnv1-{target.name}"),
            "state_dir": str(server.state_dir), "home": str(server.home),
            "pid": server.proc.pid, "emulated_arch": bool(target.emulator),
            "text": text, "_after": lambda: _serve_until_interrupted(server)}
