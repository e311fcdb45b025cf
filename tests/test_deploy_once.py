"""A deploy reads the artifact once: `edge-mnv1 deploy` to an MCU board parses the target file
once and hashes each artifact file once, whether the board is an `edge-mnv1 emulate` behind a
socket:// URL (restarted with the image) or `--device emulated` (booted for the command)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from edge_mnv1 import cli as edge_cli
from edge_mnv1.artifact import target as target_module
from edge_mnv1.device import registry  # noqa: F401 (every module a deploy uses, loaded to patch)
from edge_mnv1.hashing import sha256_file

from compiled import CLI, REPO, cli_json, untrained_onnx

pytestmark = [pytest.mark.emulator, pytest.mark.slow]


@pytest.fixture(scope="module")
def firmware(tmp_path_factory) -> Path:
    """An untrained 0.25/64 model as mps2-an500 firmware: the hello check needs no training."""
    root = tmp_path_factory.mktemp("deploy_once")
    art = root / "mps2-an500"
    cli_json("compile", untrained_onnx(root), "--target", "mps2-an500", "-o", art)
    return art


def _patch_everywhere(monkeypatch, real, counting) -> None:
    """Replaces `real` in every loaded edge_mnv1 module that looks it up by name."""
    for name, module in list(sys.modules.items()):
        if name.startswith("edge_mnv1") and getattr(module, real.__name__, None) is real:
            monkeypatch.setattr(module, real.__name__, counting)


@pytest.fixture
def counts(monkeypatch):
    """Counters of target files parsed and artifact files hashed while the test runs."""
    parsed, hashed = Counter(), Counter()
    real_parse = target_module.load_target_file

    def parse(path):
        parsed[Path(path).name] += 1
        return real_parse(path)

    def hash_file(path):
        hashed[str(path)] += 1
        return sha256_file(path)

    _patch_everywhere(monkeypatch, real_parse, parse)
    _patch_everywhere(monkeypatch, sha256_file, hash_file)
    return parsed, hashed


def _deploy(url: str, art: Path, capfd) -> dict:
    capfd.readouterr()
    code = edge_cli.main(["deploy", str(art), "--device", url, "--json"])
    out, err = capfd.readouterr()
    assert code == 0, err[-2000:]
    return json.loads(out)


def _assert_read_once(counts, art: Path) -> None:
    parsed, hashed = counts
    listed = json.loads((art / "manifest.json").read_text())["files"]
    assert parsed == Counter({"mps2-an500.toml": 1})
    assert hashed == Counter({str(art / rel): 1 for rel in listed})


def test_deploy_to_an_emulate_socket_reads_the_artifact_once(firmware, counts, capfd):
    proc = subprocess.Popen([*CLI, "emulate", "mps2-an500", "--artifact", str(firmware),
                             "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=REPO, env=dict(os.environ, PYTHONUNBUFFERED="1"),
                            start_new_session=True)
    try:
        line = proc.stdout.readline()
        assert line, proc.stderr.read()
        url = json.loads(line)["url"]
        r = _deploy(url, firmware, capfd)
        assert r["passed"] and r["emulated"] and r["hello"]["target"] == "mps2-an500"
        _assert_read_once(counts, firmware)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # its QEMU too, not left running
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def test_deploy_to_emulated_reads_the_artifact_once(firmware, counts, capfd):
    r = _deploy("emulated", firmware, capfd)
    assert r["passed"] and r["hello"]["target"] == "mps2-an500" and r["boot_line"]
    _assert_read_once(counts, firmware)
