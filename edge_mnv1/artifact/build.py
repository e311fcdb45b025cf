"""Artifact -> device program: runs CMake with the target's toolchain (no TVM here)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from edge_mnv1.errors import ToolError, UsageError
from edge_mnv1.artifact.target import Target

from edge_mnv1.paths import REPO, RUNTIME_DIR


def cmake_args(target: Target, artifact: Path, sanitize: str = "") -> list[str]:
    args = [f"-DEM_ARTIFACT={artifact}", f"-DEM_RUNTIME_DIR={RUNTIME_DIR}",
            f"-DEM_PLATFORM={'mcu' if target.is_mcu else 'linux'}",
            f"-DEM_STATIC={'ON' if target.build.get('static') else 'OFF'}",
            f"-DEM_THREADS={target.threads}", "-DCMAKE_BUILD_TYPE=Release"]
    tc = target.toolchain_file()
    if tc:
        args.append(f"-DCMAKE_TOOLCHAIN_FILE={tc}")
    if target.build.get("cflags"):
        args.append(f"-DEM_EXTRA_CFLAGS={';'.join(target.build['cflags'])}")
    if sanitize:
        args.append(f"-DEM_SANITIZE={sanitize}")
    return args


SANITIZERS = ("address", "undefined", "leak")


def check_sanitize(target: Target, sanitize: str) -> str:
    """`--sanitize address,undefined` -> the CMake value; refused where it cannot work."""
    names = [s.strip() for s in sanitize.split(",") if s.strip()]
    bad = [s for s in names if s not in SANITIZERS]
    if not names or bad:
        raise UsageError(f"--sanitize {sanitize!r}: use a comma-separated list of "
                         f"{', '.join(SANITIZERS)} (e.g. address,undefined)")
    if target.is_mcu:
        raise UsageError(f"--sanitize: {target.name} is an MCU target; sanitizers need the "
                         "Linux program (e.g. --target host)")
    if target.build.get("static"):
        raise UsageError(f"--sanitize: {target.name} links its program statically, which the "
                         "sanitizer runtimes do not support; use --target host")
    return ",".join(names)


def build_program(target: Target, artifact: Path, build_dir: Path | None = None,
                  sanitize: str = "") -> Path:
    """Configures and builds; returns the program (Linux) or firmware image (MCU). With
    `sanitize` (e.g. "address,undefined") the program is a sanitizer build."""
    if sanitize:
        sanitize = check_sanitize(target, sanitize)
    if not shutil.which("cmake"):
        raise ToolError("cmake is not installed; run ./scripts/setup.sh")
    artifact = Path(artifact).resolve()
    build_dir = Path(build_dir or artifact / "build").resolve()
    if build_dir.exists():
        shutil.rmtree(build_dir)  # a build dir from another toolchain would poison the cache
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    out_dir = artifact
    configure = ["cmake", "-S", str(REPO), "-B", str(build_dir), *gen,
                 *cmake_args(target, artifact, sanitize), f"-DEM_OUTPUT_DIR={out_dir}"]
    for cmd in (configure, ["cmake", "--build", str(build_dir), "-j", str(os.cpu_count() or 2)]):
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise ToolError(f"building the device program failed ({' '.join(cmd[:2])} ...):\n"
                            f"{(r.stdout + r.stderr)[-3000:]}")
    return out_dir / ("firmware.elf" if target.is_mcu else "program")
