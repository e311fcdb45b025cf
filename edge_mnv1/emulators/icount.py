"""Counting the instructions a program executes under QEMU user-mode emulation.

    n = count(["./prog", "--count", "1"])         # qemu-aarch64 by default

`icount_plugin.c` (a TCG plugin) is compiled with the host's gcc on first use and cached by
the hash of its source under the user's cache directory. Counts are exact and repeatable,
but they include the program's start-up, which depends on its environment and its argv (glibc
start-up reads both): compare two runs that differ only in the work done, e.g. an argument of
the same width (see count_program.py). The plugin's counter is one for the whole process, so
count single-threaded programs only. Imports neither TVM nor torch.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from edge_mnv1.errors import DeviceError, ToolError

PLUGIN_SOURCE = Path(__file__).resolve().parent / "icount_plugin.c"
DEFAULT_QEMU = ["qemu-aarch64", "-cpu", "cortex-a72"]


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "edge_mnv1" / "qemu-plugins"


def plugin_path() -> Path:
    """The built plugin (built now if this source has not been built before)."""
    src = PLUGIN_SOURCE.read_bytes()
    digest = hashlib.sha256(src).hexdigest()[:16]
    out = cache_dir() / f"icount-{digest}.so"
    if out.is_file():
        return out
    gcc = shutil.which("gcc")
    if not gcc:
        raise ToolError("gcc is not installed (it builds the QEMU instruction-count plugin); "
                         "run ./scripts/setup.sh")
    out.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the final name and rename: a concurrent build never sees half a file.
    fd, tmp = tempfile.mkstemp(prefix=out.stem, suffix=".so.tmp", dir=out.parent)
    os.close(fd)
    try:
        r = subprocess.run([gcc, "-shared", "-fPIC", "-O2", "-o", tmp, str(PLUGIN_SOURCE)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise ToolError(f"building the QEMU plugin {PLUGIN_SOURCE.name} failed:\n"
                             f"{r.stderr[-2000:]}")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def count(argv: list[str], *, qemu: list[str] | None = None, env: dict | None = None,
          cwd: str | Path | None = None, timeout: float | None = None) -> int:
    """Instructions the guest program `argv` executed, start to exit, under `qemu` (default
    qemu-aarch64 as a Cortex-A72). `env` is the guest's whole environment (default empty,
    like `env -i`, so that counts do not depend on the caller's). A program that fails
    (non-zero exit) raises DeviceError with its output."""
    qemu = list(qemu or DEFAULT_QEMU)
    if not shutil.which(qemu[0]):
        raise ToolError(f"{qemu[0]} is not installed; run ./scripts/setup.sh")
    plugin = plugin_path()
    with tempfile.TemporaryDirectory(prefix="em-icount-") as tmp:
        out = Path(tmp) / "count"
        cmd = [*qemu, "-plugin", f"{plugin},out={out}", *map(str, argv)]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, env=dict(env or {}),
                               cwd=cwd, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise DeviceError(f"{argv[0]} under {qemu[0]} did not finish within {timeout:g} s")
        if r.returncode != 0:
            raise DeviceError(f"{' '.join(map(str, argv))} under {qemu[0]} exited with code "
                              f"{r.returncode}: {(r.stdout + r.stderr).strip()[-800:]}")
        try:
            return int(out.read_text().strip())
        except (OSError, ValueError):
            raise DeviceError(f"the instruction-count plugin wrote no count for {argv[0]} "
                              f"(qemu said: {r.stderr.strip()[-400:]})") from None
