"""`--device local`: the artifact's program as a child process of this machine, under the
target's emulator when the program is for another architecture (qemu-aarch64 for rpi4)."""

from __future__ import annotations

import os
import platform
from pathlib import Path

from edge_mnv1.errors import UsageError
from edge_mnv1.device.transport import ProcessTransport


def program_argv(artifact: Path, manifest: dict, emulator: list[str] | None) -> list[str]:
    program = artifact / "program"
    if manifest.get("target_kind") == "mcu":
        raise UsageError(f"{artifact} is firmware for the MCU target {manifest['target']}; "
                         "use --device emulated (QEMU) or a serial:// device")
    if not program.is_file():
        raise UsageError(f"{artifact}: no device program; run `edge-mnv1 compile` without "
                         "--no-build")
    argv = [str(program), "--serve"]
    if manifest.get("target_arch") != platform.machine():
        if not emulator:
            raise UsageError(f"{artifact} is for {manifest.get('target_arch')} and this machine is "
                             f"{platform.machine()}, and the target names no emulator")
        argv = list(emulator) + argv
    return argv


def open_local(artifact: Path, manifest: dict, emulator: list[str] | None,
               env_extra: dict | None = None) -> ProcessTransport:
    env = dict(os.environ, **(env_extra or {}))
    argv = program_argv(artifact, manifest, emulator)
    return ProcessTransport(argv, description=f"local {manifest['target']} program", env=env)
