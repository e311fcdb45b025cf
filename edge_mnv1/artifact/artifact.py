"""Reading an artifact on the host side: its manifest, checked against its files."""

from __future__ import annotations

import json
from pathlib import Path

from edge_mnv1.errors import UsageError
from edge_mnv1.hashing import sha256_file
from edge_mnv1.versions import ARTIFACT_FORMAT_VERSION



def load_manifest(artifact: str | Path, verify: bool = True) -> dict:
    artifact = Path(artifact)
    path = artifact / "manifest.json"
    if not path.is_file():
        raise UsageError(f"{artifact}: not an artifact (no manifest.json); write one with "
                         "`edge-mnv1 compile MODEL.onnx --target T -o DIR`")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: not valid JSON ({e}); recompile the artifact") from None
    if manifest.get("format_version") != ARTIFACT_FORMAT_VERSION:
        raise UsageError(f"{path}: artifact format {manifest.get('format_version')}, this "
                         f"edge_mnv1 reads {ARTIFACT_FORMAT_VERSION}; recompile the artifact")
    if verify:
        verify_files(artifact, manifest)
    return manifest


def verify_files(artifact: Path, manifest: dict) -> None:
    files = manifest.get("files") or {}
    if not files:
        raise UsageError(f"{artifact}: the manifest lists no files (an interrupted compile?); "
                         "recompile the artifact")
    for rel, want in files.items():
        p = artifact / rel
        if not p.is_file():
            raise UsageError(f"{artifact}: {rel} is missing; recompile the artifact")
        got = sha256_file(p)
        if got != want:
            raise UsageError(f"{artifact}: {rel} does not match the manifest (sha256 {got[:12]}... "
                             f"!= {want[:12]}...): the artifact was changed after compiling; "
                             "recompile it")
