"""Targets are data: one TOML file per board under targets/, validated on load.

A target says what the compiler needs (the TVM/LLVM target), what the build needs (CMake
toolchain file, static linking, threads, memory regions for an MCU) and what the host
runner needs (architecture, emulator, how to start an emulated board). Adding a board is
adding a file; nothing here knows any board by name.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from edge_mnv1.errors import UsageError

from edge_mnv1.paths import TARGETS_DIR

# key -> (expected python type(s), required?, description for the error message)
_TOP = {
    "name": (str, True, "a string, the file's stem"),
    "description": (str, True, "a string"),
    "kind": (str, True, '"linux" or "mcu"'),
    "arch": (str, True, 'what `uname -m` prints on the board, e.g. "aarch64"'),
    "tvm": (dict, True, "a table with the TVM target"),
    "build": (dict, True, "a table with the build settings"),
    "emulator": (dict, False, "a table describing the emulator"),
    "memory": (dict, False, "a table of memory regions (MCU targets)"),
    "board": (dict, False, "a table with board facts (clock, UART, flashing)"),
    "compile": (dict, False, "a table with compile defaults (patches)"),
}
_COMPILE = {
    "patches": (str, False, '"auto", "off" or "PxP@K" (the early layers run in P x P tiles; '
                "docs/mcu.md, \"Patch-based execution\")"),
}
_TVM = {
    "target": (dict, True, 'a TVM target dict, e.g. {kind = "llvm", mtriple = "..."}'),
    "emit": (str, False, '"llvm" (object file) or "c" (C source for the toolchain)'),
    "layout": (str, False, '"NCHW" (as imported, the default) or "NHWC" (channels last)'),
    "prepack_weights": (bool, False, "true or false: tuned kernels may store their weights "
                        "in a blocked layout of their own"),
    "features": (list, False, 'a list naming the CPU\'s integer kernels: ["dsp"] (Armv7E-M '
                 'SMLAD) or ["mve"] (Helium); docs/int8.md'),
    "fuse_depthwise": (bool, False, "true or false: fp32 channels-last depthwise convs fused "
                       "with the pointwise conv after them (docs/performance.md)"),
}
_BUILD = {
    "toolchain": (str, False, "a CMake toolchain file relative to targets/"),
    "static": (bool, False, "true or false"),
    "threads": (int, False, "an integer >= 1"),
    "cflags": (list, False, "a list of strings"),
    "board_support": (str, False, "a C file relative to targets/ (MCU startup, UART, timer)"),
    "stack_bytes": (int, False, "an integer"),
    "frame_buffer_bytes": (int, False, "an integer"),
}
_EMULATOR = {
    "command": (list, True, "a list of strings, the emulator's argv before the program"),
    "env": (dict, False, "a table of environment variables"),
    "counts": (str, False, "what the emulator's counter measures"),
}
_REGION = {
    "origin": (int, True, "an address, e.g. 0x20000000"),
    "length": (int, True, "a size in bytes"),
    "use": (list, True, 'a list of "code", "weights", "arena", "stack"'),
}
_BOARD = {
    "clock_hz": (int, False, "an integer"),
    "uart_base": (int, False, "an address"),
    "baud": (int, False, "an integer"),
    "flash_command": (list, False, "a list of strings; {image} is replaced by the firmware"),
    "counter": (str, False, '"systick" or "cmsdk_timer"'),
}


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    kind: str
    arch: str
    tvm: dict
    build: dict
    emulator: dict | None
    memory: dict = field(default_factory=dict)
    board: dict = field(default_factory=dict)
    path: Path | None = None
    compile: dict = field(default_factory=dict)

    @property
    def patches(self) -> str:
        return self.compile.get("patches", "off")

    @property
    def is_mcu(self) -> bool:
        return self.kind == "mcu"

    @property
    def threads(self) -> int:
        return int(self.build.get("threads", 1))

    @property
    def layout(self) -> str:
        return self.tvm.get("layout", "NCHW")

    @property
    def prepack_weights(self) -> bool:
        return bool(self.tvm.get("prepack_weights", False))

    @property
    def fuse_depthwise(self) -> bool:
        return bool(self.tvm.get("fuse_depthwise", False))

    def toolchain_file(self) -> Path | None:
        tc = self.build.get("toolchain")
        return (TARGETS_DIR / tc) if tc else None


def _check(table: dict, schema: dict, where: str, path: Path) -> None:
    for key in table:
        if key not in schema:
            raise UsageError(f"{path}: unknown key '{where}{key}'; allowed keys there: "
                             f"{', '.join(sorted(schema))}")
    for key, (typ, required, desc) in schema.items():
        if key not in table:
            if required:
                raise UsageError(f"{path}: missing key '{where}{key}' (expected {desc})")
            continue
        value = table[key]
        if typ is int and isinstance(value, bool) or not isinstance(value, typ):
            raise UsageError(f"{path}: key '{where}{key}' is {type(value).__name__} "
                             f"{value!r}; expected {desc}")


def load_target_file(path: Path) -> Target:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"{path}: no such target file") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{path}: not valid TOML ({e}); fix the file") from None
    _check(data, _TOP, "", path)
    if data["name"] != path.stem:
        raise UsageError(f"{path}: key 'name' is {data['name']!r} but the file is "
                         f"{path.stem}.toml; they must agree")
    if data["kind"] not in ("linux", "mcu"):
        raise UsageError(f"{path}: key 'kind' is {data['kind']!r}; expected \"linux\" or \"mcu\"")
    _check(data["tvm"], _TVM, "tvm.", path)
    _check(data["build"], _BUILD, "build.", path)
    if data["tvm"].get("layout", "NCHW") not in ("NCHW", "NHWC"):
        raise UsageError(f"{path}: tvm.layout = {data['tvm']['layout']!r}: give \"NCHW\" or "
                         "\"NHWC\"")
    if "emulator" in data:
        _check(data["emulator"], _EMULATOR, "emulator.", path)
    for name, region in data.get("memory", {}).items():
        if not isinstance(region, dict):
            raise UsageError(f"{path}: key 'memory.{name}' must be a table with origin, "
                             "length and use")
        _check(region, _REGION, f"memory.{name}.", path)
    if "board" in data:
        _check(data["board"], _BOARD, "board.", path)
    if "compile" in data:
        _check(data["compile"], _COMPILE, "compile.", path)
    if data["kind"] == "mcu":
        uses = {u for r in data.get("memory", {}).values() for u in r["use"]}
        for need in ("code", "weights", "arena", "stack"):
            if need not in uses:
                raise UsageError(f"{path}: an MCU target needs a memory region whose 'use' "
                                 f"includes {need!r}")
    return Target(name=data["name"], description=data["description"], kind=data["kind"],
                  arch=data["arch"], tvm=data["tvm"], build=data["build"],
                  emulator=data.get("emulator"), memory=data.get("memory", {}),
                  board=data.get("board", {}), path=path, compile=data.get("compile", {}))


def available() -> list[str]:
    return sorted(p.stem for p in TARGETS_DIR.glob("*.toml"))


def load_target(name_or_path: str) -> Target:
    """A target by name (targets/<name>.toml) or by the path of a TOML file."""
    p = Path(name_or_path)
    if p.suffix == ".toml" or p.exists():
        return load_target_file(p)
    path = TARGETS_DIR / f"{name_or_path}.toml"
    if not path.exists():
        raise UsageError(f"unknown target {name_or_path!r}; available: {', '.join(available())} "
                         f"(or give the path of a .toml file)")
    return load_target_file(path)
