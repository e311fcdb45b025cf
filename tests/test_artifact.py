"""The typed artifact: `compile` and `info ARTIFACT` parse the target file once and hash
every artifact file once per command; a missing build tool exits 3."""

import json
import sys
from collections import Counter
from pathlib import Path

import pytest

from edge_mnv1 import cli, hashing
from edge_mnv1.artifact import target as target_module
from edge_mnv1.onnxio.export import export_random


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> Path:
    """MobileNetV1 0.25 at 32x32, 10 classes, random weights: small enough for an AN500."""
    return export_random(tmp_path_factory.mktemp("tiny") / "tiny.onnx", 32)


def _count_calls(monkeypatch, module, name: str, key) -> Counter:
    """Counts calls of module.<name> by `key(args)`, patched wherever it was imported."""
    original = getattr(module, name)
    seen = Counter()

    def counting(*args, **kwargs):
        seen[key(args)] += 1
        return original(*args, **kwargs)

    for mod in list(sys.modules.values()):
        if getattr(mod, "__name__", "").startswith("edge_mnv1") and \
                getattr(mod, name, None) is original:
            monkeypatch.setattr(mod, name, counting)
    return seen


def test_compile_parses_the_target_once_and_hashes_each_file_once(tiny_onnx, tmp_path,
                                                                  monkeypatch, capsys):
    import edge_mnv1.compiler.driver  # noqa: F401  (imported before patching its names)
    import edge_mnv1.verbs.compile  # noqa: F401

    parsed = _count_calls(monkeypatch, target_module, "load_target_file",
                          lambda a: Path(a[0]).name)
    hashed = _count_calls(monkeypatch, hashing, "sha256_file", lambda a: Path(a[0]).resolve())
    art_dir = tmp_path / "art"
    code = cli.main(["compile", str(tiny_onnx), "--target", "mps2-an500", "-o", str(art_dir),
                     "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0, out
    assert parsed == {"mps2-an500.toml": 1}
    manifest = json.loads((art_dir / "manifest.json").read_text())
    files = {(art_dir / rel).resolve() for rel in manifest["files"]}
    assert "firmware.elf" in manifest["files"] and files <= set(hashed)
    assert all(n == 1 for n in hashed.values()), {p: n for p, n in hashed.items() if n > 1}
    assert out["budget"] == manifest["budget"] and out["budget"]["stage"] == "linked"
    # The plan counts model.c's writable tables (descriptors, shapes) exactly: they are the
    # firmware's whole .data, so the check before the build sees them.
    data = sum(r["parts"].get(".data", 0) for r in manifest["budget"]["regions"])
    assert manifest["memory"]["tensor_table_bytes"] == data > 0
    # `info ARTIFACT` reads the same budget, with one parse and one hash of each file too.
    parsed.clear()
    hashed.clear()
    code = cli.main(["info", str(art_dir), "--json"])
    info = json.loads(capsys.readouterr().out)
    assert code == 0 and info["fits"] and info["budget"] == manifest["budget"]
    assert parsed == {"mps2-an500.toml": 1} and set(hashed) == files
    assert all(n == 1 for n in hashed.values())


def test_missing_cmake_exits_3(tiny_onnx, tmp_path, monkeypatch, capsys):
    """A tool this machine lacks is not the user's input: exit 3, not 2."""
    import shutil

    which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None if name == "cmake"
                        else which(name, *a, **k))
    code = cli.main(["compile", str(tiny_onnx), "--target", "host", "-o", str(tmp_path / "a"),
                     "--untuned", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 3 and out["exit_code"] == 3 and "cmake is not installed" in out["error"]
