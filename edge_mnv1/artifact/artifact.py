"""An artifact on the host side: its directory, its typed manifest and its target, each read once.

`Artifact.load(dir)` reads manifest.json, checks its format version and (by default) the
sha256 of every file it lists, once. The target file the manifest names is parsed on first
use and kept, so a command that loads an artifact parses the target once and hashes each file
once, however many stages look at it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from edge_mnv1.errors import UsageError
from edge_mnv1.hashing import sha256_file
from edge_mnv1.versions import ARTIFACT_FORMAT_VERSION
from edge_mnv1.artifact.target import Target, load_target


@dataclass(frozen=True)
class TensorSpec:
    """The model's input or output as the manifest describes it."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    quantization: dict | None = None  # {"scale", "zero_point"} of an integer model's tensor

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * np.dtype(self.dtype).itemsize

    @classmethod
    def from_dict(cls, d: dict) -> "TensorSpec":
        return cls(d.get("name", ""), tuple(d["shape"]), d["dtype"], d.get("quantization"))


class Manifest:
    """manifest.json with typed accessors; `data` is the JSON as written (the file format)."""

    def __init__(self, data: dict):
        self.data = data

    # identity
    @property
    def format_version(self) -> int:
        return self.data.get("format_version")

    @property
    def target_name(self) -> str:
        return self.data["target"]

    @property
    def target_arch(self) -> str:
        return self.data.get("target_arch", "")

    @property
    def target_kind(self) -> str:
        return self.data.get("target_kind", "linux")

    @property
    def is_mcu(self) -> bool:
        return self.target_kind == "mcu"

    @property
    def cpu_key(self) -> str:
        return self.data.get("cpu_key", "")

    @property
    def model(self) -> dict:
        return self.data.get("model") or {}

    @property
    def model_key(self) -> str:
        return self.model.get("key", "")

    # tensors and cost
    @property
    def input(self) -> TensorSpec:
        return TensorSpec.from_dict(self.data["input"])

    @property
    def output(self) -> TensorSpec:
        return TensorSpec.from_dict(self.data["output"])

    @property
    def is_integer(self) -> bool:
        return self.data.get("quantization") is not None

    @property
    def quantization(self) -> dict | None:
        return self.data.get("quantization")

    @property
    def kernels(self) -> list[dict]:
        return list(self.data.get("kernels") or [])

    @property
    def total_macs(self) -> int:
        return int(self.data.get("total_macs") or 0)

    @property
    def memory(self) -> dict:
        return self.data.get("memory") or {}

    @property
    def tuning(self) -> dict:
        return self.data.get("tuning") or {}

    @property
    def golden(self) -> dict:
        return self.data.get("golden") or {}

    @property
    def files(self) -> dict[str, str]:
        return dict(self.data.get("files") or {})

    def get(self, key: str, default=None):
        return self.data.get(key, default)

    def __getitem__(self, key: str):
        return self.data[key]

    def write(self, directory: Path) -> None:
        (Path(directory) / "manifest.json").write_text(json.dumps(self.data, indent=2))


class Artifact:
    """A compiled artifact directory. Load it with `Artifact.load`."""

    def __init__(self, path: Path, manifest: Manifest, target: Target | None = None):
        self.path = Path(path)
        self.manifest = manifest
        if target is not None:
            self.__dict__["target"] = target  # already parsed by the caller (compile)

    @classmethod
    def load(cls, path: str | Path, verify: bool = True, target: Target | None = None) -> "Artifact":
        path = Path(path)
        mpath = path / "manifest.json"
        if not mpath.is_file():
            raise UsageError(f"{path}: not an artifact (no manifest.json); write one with "
                             "`edge-mnv1 compile MODEL.onnx --target T -o DIR`")
        try:
            data = json.loads(mpath.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UsageError(f"{mpath}: not valid JSON ({e}); recompile the artifact") from None
        if not isinstance(data, dict) or data.get("format_version") != ARTIFACT_FORMAT_VERSION:
            got = data.get("format_version") if isinstance(data, dict) else None
            raise UsageError(f"{mpath}: artifact format {got}, this edge_mnv1 reads "
                             f"{ARTIFACT_FORMAT_VERSION}; recompile the artifact")
        art = cls(path, Manifest(data), target)
        if verify:
            art.verify_files()
        return art

    def verify_files(self) -> None:
        """Every file the manifest lists is there with its sha256 (each hashed once here)."""
        files = self.manifest.files
        if not files:
            raise UsageError(f"{self.path}: the manifest lists no files (an interrupted "
                             "compile?); recompile the artifact")
        for rel, want in files.items():
            p = self.path / rel
            if not p.is_file():
                raise UsageError(f"{self.path}: {rel} is missing; recompile the artifact")
            got = sha256_file(p)
            if got != want:
                raise UsageError(f"{self.path}: {rel} does not match the manifest (sha256 "
                                 f"{got[:12]}... != {want[:12]}...): the artifact was changed "
                                 "after compiling; recompile it")

    @cached_property
    def target(self) -> Target:
        """The target file the artifact was compiled for, parsed on first use."""
        return load_target(self.manifest.target_name)

    @property
    def firmware(self) -> Path:
        """firmware.elf of an MCU artifact; a clear error when it was compiled with --no-build."""
        elf = self.path / "firmware.elf"
        if not elf.is_file():
            raise UsageError(f"{self.path}: no firmware.elf; run `edge-mnv1 compile` without "
                             "--no-build")
        return elf

    @property
    def program(self) -> Path:
        """The Linux program of a Linux artifact (absent when compiled with --no-build)."""
        prog = self.path / "program"
        if not prog.is_file():
            raise UsageError(f"{self.path}: no program; run `edge-mnv1 compile` without "
                             "--no-build")
        return prog

    @property
    def onnx(self) -> Path:
        """The model the artifact was compiled from (it travels with the artifact)."""
        return self.path / "model.onnx"

    def __repr__(self) -> str:
        return f"Artifact({str(self.path)!r}, target={self.manifest.target_name!r})"
