"""The artifact's identity: a digest of its kernel code, weights and memory plan, recorded in
the manifest, baked into the program's hello; a device that runs another artifact is refused
by every verb that talks to it, with both identities named (docs/protocol.md, "Identity")."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from edge_mnv1.artifact.artifact import Artifact, Manifest
from edge_mnv1.device.session import check_hello
from edge_mnv1.errors import DeviceError

from compiled import CLI, REPO, cli, cli_json


@pytest.fixture(scope="module")
def other_weights_onnx(untrained_ckpt_factory, tmp_path_factory):
    """The digits model's configuration (0.25, 64x64, 10 classes) with other weights: the
    same structural key, another artifact."""
    from edge_mnv1.onnxio.export import export

    path = tmp_path_factory.mktemp("identity") / "other.onnx"
    export(untrained_ckpt_factory(0.25, 64, classes=10, data="digits"), path, batch=1)
    return path


def _hello_json(art) -> dict:
    """The hello the compiler baked into model.c (what the program prints with --info)."""
    r = subprocess.run([str(art / "program"), "--info"], capture_output=True, text=True,
                       timeout=60, check=True)
    return json.loads(r.stdout)


def test_a_device_with_another_identity_is_refused_naming_both():
    manifest = Manifest({"target": "host", "model": {"key": "k"}, "identity": "a" * 64,
                         "input": {"name": "x", "shape": [1, 4], "dtype": "float32"},
                         "output": {"name": "y", "shape": [1, 2], "dtype": "float32"}})
    hello = {"model": "k", "target": "host", "identity": "b" * 64,
             "input": {"shape": [1, 4]}, "output": {"shape": [1, 2]}}
    check_hello(dict(hello, identity="a" * 64), manifest, "local")  # the same: accepted
    with pytest.raises(DeviceError) as e:
        check_hello(hello, manifest, "local")
    assert "b" * 64 in str(e.value) and "a" * 64 in str(e.value) and "deploy" in str(e.value)


@pytest.mark.slow
def test_identity_follows_the_weights_and_is_baked_into_the_program(
        digits_onnx, digits_artifact, other_weights_onnx, tmp_path):
    (tmp_path / "a1").symlink_to(digits_artifact("host")[0])
    a1 = digits_artifact("host")[1]
    a2 = cli_json("compile", digits_onnx, "--target", "host", "-o", tmp_path / "a2")
    b = cli_json("compile", other_weights_onnx, "--target", "host", "-o", tmp_path / "b")
    ids = [Artifact.load(tmp_path / n).manifest["identity"] for n in ("a1", "a2", "b")]
    assert ids[0] == ids[1], "the same compile repeated is the same artifact"
    assert ids[0] != ids[2], "other weights are another artifact"
    assert len(ids[0]) == 64 and int(ids[0], 16) >= 0
    for name, ident in (("a1", ids[0]), ("b", ids[2])):
        hello = _hello_json(tmp_path / name)
        assert hello["identity"] == ident
    assert _hello_json(tmp_path / "a1")["model"] == _hello_json(tmp_path / "b")["model"]
    assert a1 and a2 and b


@pytest.fixture(scope="module")
def m7_pair(digits_artifact, other_weights_onnx, tmp_path_factory):
    """Artifacts A (the digits model) and B (other weights) for the emulated Cortex-M7."""
    root = tmp_path_factory.mktemp("m7-identity")
    cli("compile", other_weights_onnx, "--target", "mps2-an500", "-o", root / "b")
    return digits_artifact("mps2-an500")[0], root / "b"


@pytest.mark.slow
@pytest.mark.emulator
def test_the_firmware_counts_boots_and_drops_a_cut_off_frame(m7_pair):
    """boot_count survives a reset in RAM (1, then 2 after QEMU's system_reset), and the UART
    read's idle time-out drops a cut-off frame so that the next request is answered."""
    from edge_mnv1.device import protocol as P
    from edge_mnv1.device.connect import open_device

    with open_device("emulated", Artifact.load(m7_pair[0]), timeout=60, retries=0) as dev:
        assert dev.hello["boot_count"] == 1 and dev.hello["idle_gap_ms"] > 0
        dev.client.transport.write(P.encode_frame(P.INFER, 7, bytes(300))[:60])
        # The gap is counted in emulated time; the CUT_OFF reply says it has passed.
        mtype, seq, body = dev.client.read_frame(time.monotonic() + 60)
        assert (mtype, seq) == (P.ERROR, 7) and P.parse_error(body)[0] == P.CUT_OFF
        assert dev.client.selftest()["passed"] is True  # answered at the first attempt
        dev.client.transport.board.reset()
        dev.client.retries = 2
        assert dev.client.hello()["boot_count"] == 2


@pytest.mark.slow
@pytest.mark.emulator
def test_bench_and_parity_refuse_a_board_running_another_artifact(m7_pair):
    """Artifact A on an emulated M7 that stays up (emulate ... --artifact A, a socket:// URL);
    bench and parity of artifact B (same configuration, other weights) against it exit 1 and
    name both identities; deploying B first makes them work."""
    art_a, art_b = m7_pair
    id_a = Artifact.load(art_a).manifest["identity"]
    id_b = Artifact.load(art_b).manifest["identity"]
    assert id_a != id_b
    assert Artifact.load(art_a).manifest.model_key == Artifact.load(art_b).manifest.model_key
    proc = subprocess.Popen([*CLI, "emulate", "mps2-an500", "--artifact", str(art_a), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"), start_new_session=True)
    try:
        line = proc.stdout.readline()
        assert line, proc.stderr.read()
        url = json.loads(line)["url"]
        for verb in (["bench", art_b, "--device", url, "--runs", "2"],
                     ["parity", art_b, "--device", url, "--data", "digits", "--limit", "4"]):
            r = cli(*verb, check=False, timeout=600)
            assert r.returncode == 1, (verb[0], r.returncode, r.stderr[-2000:])
            assert id_a in r.stderr and id_b in r.stderr, r.stderr[-2000:]
            assert "deploy this artifact" in r.stderr and "Traceback" not in r.stderr
        # A verb that deploys first is not refused: deploy B, then bench B runs.
        assert cli_json("deploy", art_b, "--device", url, timeout=600)["hello"]["identity"] == id_b
        assert cli_json("bench", art_b, "--device", url, "--runs", "2", timeout=600)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
