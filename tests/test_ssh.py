"""The ssh device path against real OpenSSH servers started here on 127.0.0.1 (emulated Pis):
deploy (atomic, skips what is there, fleets), run over ssh bit for bit against local, and
each way it fails: unknown or changed host key, wrong user key, connection refused, a link
dropped mid-session, the remote program killed, the wrong remote architecture, a remote
directory that is not writable, a tampered artifact. Every sshd, ssh master and program
started by a test is stopped when it ends (checked)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import numpy as np
import psutil
import pytest

from edge_mnv1.artifact.artifact import Artifact, Manifest
from edge_mnv1.device.connect import open_device
from edge_mnv1.device.ssh_connection import SshConnection
from edge_mnv1.device.ssh_upload import DEPLOY_FILES, DeployFile, upload
from edge_mnv1.device.ssh_url import ACCEPT_NEW_ENV, default_dir, parse_url
from edge_mnv1.emulators.sshd import SshServer
from edge_mnv1.errors import DeviceError, UsageError

from compiled import CLI, REPO, cli, cli_json
from compiled import untrained_onnx

pytestmark = [pytest.mark.ssh]

WEIRD_DIR = "deploy dir/it's a \"$HOME\" `x` ; #?"  # spaces, quotes, $, backquotes, ; # ?


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def rpi4_artifact(request, tmp_path_factory) -> Path:
    """An rpi4 artifact (static aarch64 program) of the digits model (or, before conftest
    provides it, an untrained MobileNetV1 0.25/64), compiled once per session."""
    root = tmp_path_factory.getbasetemp() / "ssh_artifact"
    root.mkdir(exist_ok=True)
    try:
        model = Path(request.getfixturevalue("digits_onnx"))
    except pytest.FixtureLookupError:
        model = untrained_onnx(root)
    art = root / "rpi4"
    if not (art / "program").is_file():
        cli_json("compile", model, "--target", "rpi4", "-o", art)
    return art


def _ours(since: float) -> list:
    """Processes started since `since` that belong to the ssh path: sshd, ssh (masters
    included: they detach from us), qemu-aarch64."""
    found = []
    for p in psutil.process_iter(["name", "cmdline", "create_time"]):
        try:
            if p.info["create_time"] < since - 0.5 or p.pid == os.getpid():
                continue
            cmd = " ".join(p.info["cmdline"] or [])
            if p.info["name"] in ("sshd", "ssh", "qemu-aarch64") and (
                    "em-ssh-" in cmd or "edge_mnv1-" in cmd or p.info["name"] != "ssh") \
                    and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except psutil.NoSuchProcess:
            pass
    return found


@pytest.fixture(autouse=True)
def nothing_left_running():
    since = time.time()
    yield
    deadline = time.monotonic() + 10
    while (left := _ours(since)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, f"left running: {[(p.pid, p.info['cmdline']) for p in left]}"


@pytest.fixture
def pi():
    with SshServer(name="test") as server:
        yield server


def deploy_cli(artifact, *urls, check=False):
    args = ["deploy", artifact]
    for u in urls:
        args += ["--device", u]
    return cli(*args, "--json", check=check, timeout=300)


def remote_dir(pi: SshServer, path: str) -> Path:
    return Path(path) if path.startswith("/") else pi.home / path


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


# -- URLs (no server) ---------------------------------------------------------------------------
def test_url_parsing(tmp_path, monkeypatch):
    monkeypatch.delenv(ACCEPT_NEW_ENV, raising=False)
    key = tmp_path / "k"
    key.write_text("x")
    u = parse_url(f"ssh://pi@Board.local:2222/opt/a%20b'c$d%23?identity={key}&accept_new=1")
    assert (u.user, u.host, u.port, u.dir, u.identity, u.accept_new) == \
        ("pi", "Board.local", 2222, "/opt/a b'c$d#", str(key), True)
    assert parse_url("ssh://h/~/models/x").dir == "models/x"   # relative to the home
    assert parse_url("ssh://h").dir is None and parse_url("ssh://h").port is None
    assert parse_url("ssh://u@[::1]:22/x").host == "::1"
    assert not parse_url("ssh://h").accept_new
    monkeypatch.setenv(ACCEPT_NEW_ENV, "1")
    assert parse_url("ssh://h").accept_new
    for bad in ("ssh://", "ssh://h:99999", "ssh://h:x", "ssh://-oProxyCommand=x/d",
                "ssh://h?password=1", "ssh://h?identity=/no/such/key", "ssh://h/~"):
        with pytest.raises(UsageError):
            parse_url(bad)
    m = Manifest({"model": {"key": "k1"}, "target": "rpi4"})
    assert default_dir(m) == "edge_mnv1/k1-rpi4"


def test_bad_url_is_usage_error(rpi4_artifact):
    r = deploy_cli(rpi4_artifact, "ssh://h?colour=blue")
    assert r.returncode == 2 and "unknown parameter 'colour'" in r.stderr


# -- deploy -------------------------------------------------------------------------------------
def test_deploy_then_redeploy_skips_and_paths_are_quoted(pi, rpi4_artifact):
    url = pi.url(WEIRD_DIR)
    first = json.loads(deploy_cli(rpi4_artifact, url, check=True).stdout)
    size = sum((rpi4_artifact / f).stat().st_size for f in DEPLOY_FILES)
    assert first["uploaded"] == ["program", "manifest.json"] and first["skipped"] == []
    assert first["bytes"] == size and first["emulated"] and first["remote_arch"] == "x86_64"
    manifest = json.loads((rpi4_artifact / "manifest.json").read_text())
    assert first["hello"]["model"] == manifest["model"]["key"]
    assert first["hello"]["input"]["shape"] == manifest["input"]["shape"]
    d = remote_dir(pi, WEIRD_DIR)
    assert sorted(p.name for p in d.iterdir()) == ["manifest.json", "program"]  # no .part left
    assert _sha(d / "program") == manifest["files"]["program"]
    assert os.access(d / "program", os.X_OK)

    second = json.loads(deploy_cli(rpi4_artifact, url, check=True).stdout)
    assert second["uploaded"] == [] and second["skipped"] == ["program", "manifest.json"]
    assert second["bytes"] == 0


def test_default_dir_is_in_the_emulated_home(pi, rpi4_artifact):
    r = json.loads(deploy_cli(rpi4_artifact, pi.url(), check=True).stdout)
    manifest = json.loads((rpi4_artifact / "manifest.json").read_text())
    want = f"edge_mnv1/{manifest['model']['key']}-rpi4"
    assert r["dir"] == f"~/{want}" and (pi.home / want / "program").is_file()


def test_interrupted_upload_never_replaces_the_program(pi, rpi4_artifact, monkeypatch):
    url = pi.url("atomic")
    deploy_cli(rpi4_artifact, url, check=True)
    program = pi.home / "atomic" / "program"
    before = _sha(program)
    conn = SshConnection(parse_url(url))
    try:
        real_run = conn.run

        def cut_short(command, input=None, **kw):  # the link dies half way through the bytes
            return real_run(command, input=input[:len(input) // 2] if input else input, **kw)
        monkeypatch.setattr(conn, "run", cut_short)
        new = b"\x7fELF" + os.urandom(200_000)
        with pytest.raises(DeviceError, match="arrived corrupted"):
            upload(conn, "atomic",
                   DeployFile("program", new, hashlib.sha256(new).hexdigest(), 0o755))
    finally:
        conn.close()
    assert _sha(program) == before
    assert sorted(p.name for p in program.parent.iterdir()) == ["manifest.json", "program"]


def test_tampered_artifact_is_refused(pi, rpi4_artifact, tmp_path):
    art = tmp_path / "art"
    shutil.copytree(rpi4_artifact, art, ignore=shutil.ignore_patterns("build"))
    data = bytearray((art / "program").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (art / "program").write_bytes(bytes(data))
    r = deploy_cli(art, pi.url("tampered"))
    assert r.returncode == 2 and "does not match the manifest" in r.stderr
    assert not (pi.home / "tampered").exists()


def test_fleet_of_three_in_one_command(rpi4_artifact, tmp_path):
    with SshServer(name="a") as a, SshServer(name="b") as b, SshServer(name="c") as c:
        urls = [s.url("fleet") for s in (a, b, c)]
        t0 = time.monotonic()
        r = json.loads(deploy_cli(rpi4_artifact, *urls, check=True).stdout)
        took = time.monotonic() - t0
        assert r["passed"] and r["passed_devices"] == urls and r["failed_devices"] == []
        assert all(d["uploaded"] == ["program", "manifest.json"] for d in r["devices"])
        assert all((s.home / "fleet" / "program").is_file() for s in (a, b, c))
        print(f"fleet of 3: {took:.1f} s")

        # One device down: the others still deploy (skipping), the command says which failed.
        dead = f"ssh://{a.user}@127.0.0.1:{_free_port()}/x?identity={quote(str(a.identity))}"
        r2 = deploy_cli(rpi4_artifact, *urls, dead)
        out = json.loads(r2.stdout)
        assert r2.returncode == 1 and not out["passed"]
        assert out["passed_devices"] == urls and out["failed_devices"] == [dead]
        bad = out["devices"][-1]
        assert "connection refused" in bad["error"] and bad["exit_code"] == 1
        assert all(d["skipped"] == ["program", "manifest.json"] for d in out["devices"][:3])


# -- run over ssh ------------------------------------------------------------------------------
def test_run_over_ssh_matches_local_bit_for_bit(pi, rpi4_artifact, tmp_path):
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    cli("run", rpi4_artifact, "--device", "local", "-i", tmp_path / "x.npy",
        "-o", tmp_path / "local.npy")
    # `run` deploys by itself when the device lacks the program.
    r = cli("run", rpi4_artifact, "--device", pi.url(WEIRD_DIR), "-i", tmp_path / "x.npy",
            "-o", tmp_path / "ssh.npy")
    assert "uploaded program" in r.stderr
    a, b = np.load(tmp_path / "local.npy"), np.load(tmp_path / "ssh.npy")
    assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def test_device_emulated_starts_and_stops_its_own_pi(rpi4_artifact, tmp_path):
    x = np.zeros((1, 3, 64, 64), np.float32)
    np.save(tmp_path / "x.npy", x)
    before = set(Path("/tmp").glob("edge_mnv1-rpi4-*"))
    r = cli("run", rpi4_artifact, "--device", "emulated", "-i", tmp_path / "x.npy",
            "-o", tmp_path / "y.npy")
    assert "emulated" in r.stderr and np.load(tmp_path / "y.npy").shape[0] == 1
    assert set(Path("/tmp").glob("edge_mnv1-rpi4-*")) <= before   # state dir removed


def test_emulate_verb_prints_how_to_reach_it_and_stops_on_ctrl_c():
    proc = subprocess.Popen([*CLI, "emulate", "rpi4", "--json"], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        info = json.loads(proc.stdout.readline())
        assert info["url"].startswith(f"ssh://{info['user']}@127.0.0.1:{info['port']}")
        assert Path(info["known_hosts"]).read_text().strip() == info["known_hosts_line"]
        assert f"Port {info['port']}" in info["ssh_config"]
        conn = SshConnection(parse_url(info["url"]))
        try:
            out = conn.run("uname -m; pwd").stdout.decode().split()
        finally:
            conn.close()
        assert out == ["x86_64", info["home"]]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0  # a loaded CI machine once needed over 20 s
        assert not Path(info["state_dir"]).exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


# -- failures -----------------------------------------------------------------------------------
def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unknown_host_key_is_refused_with_its_fingerprint(pi, rpi4_artifact, tmp_path):
    kh = tmp_path / "known_hosts"
    kh.write_text("")
    base = f"ssh://{pi.user}@127.0.0.1:{pi.port}/~/hk?identity={quote(str(pi.identity))}" \
           f"&known_hosts={quote(str(kh))}"
    r = deploy_cli(rpi4_artifact, base)
    assert r.returncode == 1
    assert pi.host_key_fingerprint() in r.stderr          # what the device offers
    assert "ssh-keyscan -p" in r.stderr and "accept_new=1" in r.stderr  # how to trust it
    assert kh.read_text() == "" and not (pi.home / "hk").exists()

    ok = deploy_cli(rpi4_artifact, base + "&accept_new=1", check=True)  # explicit opt-in
    assert json.loads(ok.stdout)["passed"]
    found = subprocess.run(["ssh-keygen", "-F", f"[127.0.0.1]:{pi.port}", "-f", kh],
                           capture_output=True, text=True)  # known_hosts may be hashed
    assert found.returncode == 0 and "ssh-ed25519" in found.stdout

    # A changed key is refused even with accept_new.
    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", other], check=True)
    kh.write_text(f"[127.0.0.1]:{pi.port} {other.with_suffix('.pub').read_text()}")
    r = deploy_cli(rpi4_artifact, base + "&accept_new=1")
    assert r.returncode == 1 and "CHANGED" in r.stderr and "ssh-keygen -f" in r.stderr


def test_wrong_user_key_is_refused(pi, rpi4_artifact, tmp_path):
    key = tmp_path / "not_authorized"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)
    url = f"ssh://{pi.user}@127.0.0.1:{pi.port}/~/k?identity={quote(str(key))}" \
          f"&known_hosts={quote(str(pi.known_hosts))}"
    r = deploy_cli(rpi4_artifact, url)
    assert r.returncode == 1 and "refused the login" in r.stderr and "identity=" in r.stderr


def test_connection_refused(rpi4_artifact, pi):
    url = f"ssh://{pi.user}@127.0.0.1:{_free_port()}/x?identity={quote(str(pi.identity))}"
    r = deploy_cli(rpi4_artifact, url)
    assert r.returncode == 1 and "connection refused" in r.stderr
    assert "edge-mnv1 emulate" in r.stderr


def test_dropped_connection_mid_session_then_a_rerun_completes(pi, rpi4_artifact):
    url = pi.url("drop")
    x = np.zeros((1, 3, 64, 64), np.float32)
    with open_device(url, Artifact.load(rpi4_artifact), timeout=30, retries=0) as dev:
        y = dev.client.infer(x)
        assert pi.drop_connections() >= 1
        with pytest.raises(DeviceError, match="ssh connection dropped.*rerun"):
            dev.client.infer(x)
    with open_device(url, Artifact.load(rpi4_artifact), timeout=30, retries=0) as dev:
        assert dev.client.infer(x).tobytes() == y.tobytes()


def test_remote_program_killed(pi, rpi4_artifact):
    url = pi.url("killed")
    x = np.zeros((1, 3, 64, 64), np.float32)
    with open_device(url, Artifact.load(rpi4_artifact), timeout=30, retries=0) as dev:
        dev.client.infer(x)
        victims = [p for p in pi.sessions() if "./program" in p.cmdline()]
        assert len(victims) == 1
        victims[0].kill()
        with pytest.raises(DeviceError, match="killed by signal 9"):
            dev.client.infer(x)


def test_remote_without_the_emulator_is_the_wrong_architecture(rpi4_artifact, tmp_path):
    """A machine that is x86_64 (uname -m) and cannot run aarch64 programs: the emulated Pi's
    sessions get a PATH holding the usual tools but no qemu-aarch64."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    for tool in ("sh", "uname", "sha256sum", "cat", "mkdir", "mv", "chmod", "rm", "env"):
        os.symlink(shutil.which(tool), fake_bin / tool)
    with SshServer(name="x86", env={"PATH": str(fake_bin)}) as box:
        r = deploy_cli(rpi4_artifact, box.url("wrong"))
        assert r.returncode == 2
        assert "the device is x86_64" in r.stderr and "no qemu-aarch64" in r.stderr
        assert not (box.home / "wrong").exists()  # refused before anything was sent


def test_remote_dir_not_writable(rpi4_artifact, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    launcher = None
    if os.geteuid() == 0:  # root writes anywhere: make it a read-only mount in sshd's namespace
        launcher = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                    'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" "$0" && exec "$@"',
                    str(ro)]
    target = ro / "sub"
    try:
        try:
            box = SshServer(name="ro", launcher=launcher).start()
        except DeviceError:  # root without CAP_SYS_ADMIN: sysfs refuses even root
            box, target = SshServer(name="ro").start(), Path("/sys/kernel/edge_mnv1_test")
        with box:
            r = deploy_cli(rpi4_artifact, box.url(str(target)))
            assert r.returncode == 1
            assert "cannot write program into" in r.stderr and "writable" in r.stderr
            assert not target.exists()
    finally:
        ro.chmod(0o755)
