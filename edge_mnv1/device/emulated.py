"""`--device emulated`: the target's emulated device, started for the length of one command.

A Linux target (rpi4) gets a real sshd on loopback (device/sshd.py) and is reached through
the ssh transport with that server's identity and known_hosts, so the whole ssh path runs.
An MCU target's board is QEMU (device/qemu_mcu.py).
"""

from __future__ import annotations

import contextlib

from edge_mnv1.errors import UsageError


def _server(target, stack):
    from edge_mnv1.emulators.sshd import start_emulated

    server = start_emulated(target)
    stack.callback(server.stop)
    return server


def open(url, artifact, manifest, target, stack):
    if target.is_mcu:
        from edge_mnv1.emulators.qemu_mcu import open as open_mcu
        return open_mcu(url, artifact, manifest, target, stack)
    if url not in ("emulated", "emulated://"):
        raise UsageError(f"device {url!r}: write just `emulated`")
    from edge_mnv1.device import ssh

    server = _server(target, stack)
    return ssh.open(server.url(), artifact, manifest, target, stack)


def deploy(url, artifact, manifest, target) -> dict:
    """Deploying to a device that lives for one command only checks that the full path works
    (start, upload, hello); it is there so that a fleet may mix emulated and real devices."""
    if target.is_mcu:
        from edge_mnv1.emulators import qemu_mcu
        if not hasattr(qemu_mcu, "deploy"):
            raise UsageError(f"{target.name}: the emulated MCU board loads the firmware when it "
                             "starts; there is nothing to deploy (use run/parity --device emulated)")
        return qemu_mcu.deploy(url, artifact, manifest, target)
    from edge_mnv1.device import ssh

    with contextlib.ExitStack() as stack:
        server = _server(target, stack)
        out = ssh.deploy(server.url(), artifact, manifest, target)
    out["device"] = url
    return out
