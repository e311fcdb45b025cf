"""Instructions per inference of ONNX Runtime's own aarch64 build on an emulated Cortex-A72:
what a Raspberry Pi 4 user who runs the model with `pip install onnxruntime` executes.

    count_onnxruntime("m.onnx", (1, 3, 224, 224), "float32")
    # {"instructions_per_inference": 246088000, "runs": [...],
    #  "engine": "onnxruntime 1.32.0 aarch64", "note": ...}

`scripts/setup_ort_aarch64.sh` unpacks Debian's arm64 Python 3.11 with the aarch64 wheels of
onnxruntime and numpy into `.venv/aarch64-root`. `ort_aarch64_run.py` runs in that Python
under `qemu-aarch64 -cpu cortex-a72 -L ROOT` with the icount plugin, for 1 and 2 inferences
on one thread; the difference is one inference (start-up, imports and session creation
cancel). ONNX Runtime's CPU detection reads /proc/cpuinfo and /sys/devices/system/cpu and
crashes on the host's x86 ones; QEMU's `-L` looks a guest's absolute path up under ROOT
first, so a Cortex-A72 description written there (four cores, 1 MB L2, like the Pi 4) is
what the guest reads, without a mount namespace or privileges. Counts are cached by the
model's sha256 under ~/.cache/edge_mnv1/ort-aarch64 (the artifact's directory is
sha256-checked and stays untouched). Imports neither TVM nor torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from edge_mnv1.errors import DeviceError, ToolError, UsageError
from edge_mnv1.emulators import icount

ORT_VERSION = "1.32.0"
ENGINE = f"onnxruntime {ORT_VERSION} aarch64"
RUNNER = Path(__file__).resolve().parent / "ort_aarch64_run.py"
SETUP = "scripts/setup_ort_aarch64.sh"
# The CPU QEMU emulates is the board's (the target file's emulator command): on a
# Cortex-A76 the guest's hardware capabilities name the dot product and ONNX Runtime uses
# its own sdot kernels, as it would on a Raspberry Pi 5.
DEFAULT_CPU = "cortex-a72"
NOTE = ("ONNX Runtime {v}'s aarch64 wheel in Debian's arm64 Python 3.11, counted under "
        "qemu-aarch64 -cpu {cpu} with a TCG plugin, one intra-op thread, "
        "ORT_ENABLE_ALL, by difference of 2 and 1 inferences")
# What makes a count repeatable: numpy's OpenBLAS starts a pool of spinning threads unless
# told one; Python's string hashes are seeded at random; with telemetry on, ONNX Runtime
# keeps a database under $HOME whose state can differ between a first run and the next.
GUEST_ENV = {"OPENBLAS_NUM_THREADS": "1", "PYTHONHASHSEED": "0", "ORT_DISABLE_TELEMETRY": "1"}


def cpu_of(qemu_command: list[str]) -> str:
    """The CPU a target's qemu-aarch64 command emulates (its `-cpu`), else DEFAULT_CPU."""
    command = list(qemu_command or [])
    return command[command.index("-cpu") + 1] if "-cpu" in command[:-1] else DEFAULT_CPU


def default_root() -> Path:
    """Where the setup script puts the arm64 Python: inside the venv running this code."""
    return Path(sys.prefix) / "aarch64-root"


def _cpu_files() -> dict[str, str]:
    """A Raspberry Pi 4's /proc/cpuinfo and the /sys/devices/system/cpu files ONNX Runtime's
    CPU detection reads: four Cortex-A72 r0p3 cores, 32 KB L1d, 48 KB L1i, a shared 1 MB L2."""
    files = {}
    cpuinfo = []
    for i in range(4):
        cpuinfo += [f"processor\t: {i}", "BogoMIPS\t: 108.00",
                    "Features\t: fp asimd evtstrm crc32 cpuid", "CPU implementer\t: 0x41",
                    "CPU architecture: 8", "CPU variant\t: 0x0", "CPU part\t: 0xd08",
                    "CPU revision\t: 3", ""]
        cpu = f"sys/devices/system/cpu/cpu{i}"
        for index, (level, kind, size, shared) in enumerate(
                [(1, "Data", "32K", str(i)), (1, "Instruction", "48K", str(i)),
                 (2, "Unified", "1024K", "0-3")]):
            for name, value in (("level", level), ("type", kind), ("size", size),
                                ("shared_cpu_list", shared)):
                files[f"{cpu}/cache/index{index}/{name}"] = f"{value}\n"
        for name, value in (("physical_package_id", 0), ("core_id", i),
                            ("cluster_cpus_list", "0-3"), ("core_siblings_list", "0-3"),
                            ("thread_siblings_list", i)):
            files[f"{cpu}/topology/{name}"] = f"{value}\n"
        files[f"{cpu}/cpufreq/cpuinfo_min_freq"] = "600000\n"
        files[f"{cpu}/cpufreq/cpuinfo_max_freq"] = "1500000\n"
    files["proc/cpuinfo"] = "\n".join(cpuinfo)
    for name in ("possible", "present", "online"):
        files[f"sys/devices/system/cpu/{name}"] = "0-3\n"
    files["sys/devices/system/cpu/kernel_max"] = "3\n"
    return files


def _write_cpu_files(root: Path) -> None:
    """Writes the fake CPU description under `root` (atomically, only what differs)."""
    for rel, text in _cpu_files().items():
        path = root / rel
        try:
            if path.read_text() == text:
                continue
        except OSError:
            pass
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)


def check_root(root: Path) -> Path:
    """The arm64 Python of a complete setup under `root`, else ToolError saying what to run."""
    python = root / "usr" / "bin" / "python3.11"
    dist = root / "usr" / "lib" / "python3" / "dist-packages"
    if not python.is_file() or not (root / ".stamp").is_file():
        raise ToolError(f"no aarch64 Python with ONNX Runtime under {root}: "
                        f"run {SETUP}")
    if not (dist / f"onnxruntime-{ORT_VERSION}.dist-info").is_dir():
        raise ToolError(f"{root} does not hold onnxruntime {ORT_VERSION} for aarch64: "
                        f"run {SETUP} again")
    return python


def _cache_key(onnx_path: Path, shape: tuple, dtype: str, seed: int, root: Path,
               cpu: str) -> str:
    h = hashlib.sha256()
    with open(onnx_path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    # The runner, the CPU description and the installed versions change what is counted.
    h.update(RUNNER.read_bytes())
    h.update(json.dumps([_cpu_files(), list(shape), dtype, seed, ENGINE, cpu]).encode())
    h.update((root / ".stamp").read_bytes())
    return h.hexdigest()


def _cache_file(key: str) -> Path:
    return icount.cache_dir().parent / "ort-aarch64" / f"{key}.json"


def _count(python: Path, root: Path, args: list[str], home: Path, timeout: float | None,
           cpu: str) -> int:
    home.mkdir()
    # -B: the root's byte code was compiled by the setup script and must stay as it is.
    argv = [str(python), "-B", "-s", str(RUNNER), *args]
    try:
        return icount.count(argv, qemu=["qemu-aarch64", "-cpu", cpu, "-L", str(root)],
                            env={**GUEST_ENV, "HOME": str(home)}, timeout=timeout)
    except DeviceError as e:
        raise ToolError(f"ONNX Runtime for aarch64 failed under qemu-aarch64: {e}") from None


def count_onnxruntime(onnx_path: str | Path, input_shape, dtype: str = "float32", *,
                      seed: int = 0, root: str | Path | None = None, cache: bool = True,
                      timeout: float | None = None, cpu: str = DEFAULT_CPU) -> dict:
    """Instructions ONNX Runtime's aarch64 build executes for one inference of `onnx_path` on
    a seeded random input of `input_shape` and `dtype`, on one thread of an emulated `cpu`
    (QEMU's name): {"instructions_per_inference", "runs" (the two counts), "engine", "note"}."""
    onnx_path = Path(onnx_path).resolve()
    if not onnx_path.is_file():
        raise UsageError(f"{onnx_path}: no such ONNX file")
    shape = tuple(int(d) for d in input_shape)
    dtype = np.dtype(dtype).name
    root = Path(root or default_root()).resolve()
    python = check_root(root)
    key = _cache_key(onnx_path, shape, dtype, seed, root, cpu)
    cached = _cache_file(key)
    if cache and cached.is_file():
        return json.loads(cached.read_text())

    _write_cpu_files(root)
    args = [str(onnx_path), "x".join(map(str, shape)), dtype, str(seed)]
    with tempfile.TemporaryDirectory(prefix="em-ort-") as tmp:
        # Each run gets an empty HOME of the same length, so their start-ups are equal.
        with ThreadPoolExecutor(2) as ex:
            one, two = ex.map(lambda n: _count(python, root, [*args, str(n)],
                                               Path(tmp) / f"home{n}", timeout, cpu), (1, 2))
    if two <= one:
        raise ToolError(f"{onnx_path}: ONNX Runtime counted {two} instructions for two "
                        f"inferences and {one} for one; the runs did not differ by an inference")
    out = {"instructions_per_inference": two - one,
           "runs": [{"inferences": 1, "instructions": one},
                    {"inferences": 2, "instructions": two}],
           "engine": ENGINE, "cpu": cpu, "note": NOTE.format(v=ORT_VERSION, cpu=cpu)}
    if cache:
        cached.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cached.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(out, f)
        os.replace(tmp, cached)
    return out
