"""Session fixtures shared by the test suite.

Models are built in a fresh temporary directory, or, when EDGE_MNV1_TEST_CACHE names a
directory, kept there between runs and reused only when their metadata matches what the
fixture would build (so a stale or foreign file is rebuilt, never trusted).

Processes the tests leave behind are ended when the session ends (see the hooks below).
"""

import ctypes
import os
from pathlib import Path

import psutil
import pytest

from edge_mnv1.model import checkpoint
from edge_mnv1.errors import EdgeError

DIGITS_CONFIG = dict(alpha=0.25, resolution=64, classes=10)
DIGITS_SEED = 0


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    env = os.environ.get("EDGE_MNV1_TEST_CACHE")
    if env:
        path = Path(env)
        path.mkdir(parents=True, exist_ok=True)
        return path
    return tmp_path_factory.mktemp("edge_mnv1-models")


def _cached(path: Path, want: dict) -> bool:
    """True when `path` is a readable checkpoint whose metadata has all of `want`."""
    if not path.is_file():
        return False
    try:
        _, _, meta = checkpoint.read_metadata(path)
    except EdgeError:
        return False
    return all(meta.get(k) == v for k, v in want.items())


@pytest.fixture(scope="session")
def digits_ckpt(cache_dir) -> Path:
    """MobileNetV1 alpha 0.25 at 64x64 trained on digits with the default recipe."""
    from edge_mnv1.model.network import ModelConfig
    from edge_mnv1.model.train import DEFAULT_EPOCHS, RECIPE, train

    config = ModelConfig(**DIGITS_CONFIG)
    path = cache_dir / "digits-a0.25-r64.safetensors"
    want = dict(config=config.to_dict(), data="digits", epochs=DEFAULT_EPOCHS, seed=DIGITS_SEED,
                recipe=RECIPE)
    if not _cached(path, want):
        train(config, "digits", path, epochs=DEFAULT_EPOCHS, seed=DIGITS_SEED, progress=False)
    return path


@pytest.fixture(scope="session")
def digits_onnx(digits_ckpt, cache_dir) -> Path:
    """`digits_ckpt` exported (batch 1, opset 17) and checked against PyTorch."""
    from edge_mnv1.onnxio.export import export

    path = cache_dir / "digits-a0.25-r64.onnx"
    export(digits_ckpt, path, batch=1)
    return path


@pytest.fixture(scope="session")
def digits_artifact(digits_onnx, tmp_path_factory):
    """digits_artifact(target) -> (artifact dir, compile's --json): `digits_onnx` compiled
    for `target` once per session. Verbs only read an artifact, so tests share it; a test
    that changes one compiles its own."""
    import json

    from compiled import cli_json

    root = tmp_path_factory.getbasetemp() / "digits-artifacts"
    root.mkdir(exist_ok=True)

    def get(target: str) -> tuple[Path, dict]:
        art, log = root / target, root / f"{target}.compile.json"
        if not (art / "manifest.json").is_file() or not log.is_file():
            r = cli_json("compile", digits_onnx, "--target", target, "-o", art)
            log.write_text(json.dumps(r))
        return art, json.loads(log.read_text())
    return get


@pytest.fixture(scope="session")
def untrained_ckpt_factory(cache_dir):
    """factory(alpha, resolution, classes=1000, data="photos") -> a seeded untrained
    checkpoint whose batch norms are calibrated on real images of that resolution."""
    from edge_mnv1.model.network import ModelConfig
    from edge_mnv1.model.train import RECIPE, train

    made = {}

    def make(alpha: float, resolution: int, classes: int = 1000, data: str = "photos") -> Path:
        key = (alpha, resolution, classes, data)
        if key not in made:
            config = ModelConfig(alpha=alpha, resolution=resolution, classes=classes)
            path = cache_dir / f"untrained-a{alpha:g}-r{resolution}-c{classes}-{data}.safetensors"
            want = dict(config=config.to_dict(), data=data, epochs=0, seed=0, recipe=RECIPE)
            if not _cached(path, want):
                train(config, data, path, epochs=0, seed=0, progress=False)
            made[key] = path
        return made[key]

    return make


# ---- leftover processes ----------------------------------------------------------------------
# Tests SIGKILL commands on purpose (tune, deploy, parity); what those commands had started
# outlives them. TVM's popen workers (~0.5 GB each) under a killed `tune` were found running
# after a whole suite. As a child subreaper this process adopts such orphans instead of init,
# so the session's end finds them among its descendants and ends them.

PR_SET_CHILD_SUBREAPER = 36


def pytest_sessionstart(session):
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: orphans go to init as before
        pass


def pytest_sessionfinish(session, exitstatus):
    left = psutil.Process().children(recursive=True)
    if not left:
        return
    names = []
    for p in left:
        try:
            names.append(f"{p.pid} {' '.join(p.cmdline())[:100] or p.name()}")
            p.kill()
        except psutil.Error:  # ended meanwhile
            pass
    psutil.wait_procs(left, timeout=10)
    # Adopted orphans that had already exited are zombies of this process: reap them.
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG) == (0, 0):
                break
        except ChildProcessError:
            break
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter and names:
        reporter.write_line("")
        reporter.write_sep("-", f"ended {len(names)} processes the tests left behind")
        for n in names:
            reporter.write_line(f"  {n}")
