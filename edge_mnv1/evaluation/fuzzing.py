"""Fuzzing the device side: the C runtime's frame parser and request handler
(runtime/core/em_protocol.c) as a libFuzzer target (runtime/fuzz/), linked with a real compiled
model so that INFER, BENCH, PROFILE and SELFTEST run real kernels; its seed corpus of valid and
error-provoking frames; a run for a given time or number of inputs, and what libFuzzer saw.

Work directory layout (kept between runs, so the corpus grows):
    model.onnx, artifact/   MobileNetV1 0.25 fed 8x8 images, untrained, untuned, for host
    build/fuzz_protocol     the target (clang, -fsanitize=fuzzer,address,undefined,...)
    seeds/                  written by seed_frames() on every run
    corpus/                 what libFuzzer found interesting
    crashes/                inputs that crashed (crash-*, timeout-*, oom-*, leak-*)
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import zlib
import subprocess
from pathlib import Path

import numpy as np

from edge_mnv1 import log
from edge_mnv1.artifact.artifact import Artifact, Manifest
from edge_mnv1.device import protocol as P
from edge_mnv1.errors import ToolError, UsageError
from edge_mnv1.paths import REPO, RUNTIME_DIR

CLANG = "clang-14"
# The network is fully convolutional: 8x8 inputs keep an inference at ~0.2 ms (its 768-byte
# input is below the 2052-byte frame buffer, so frames of every length up to it are accepted
# and refused by the handler, not only by the length check).
FUZZ_SIDE = 8
TIMEOUT_S = 10       # one input slower than this is a finding (libFuzzer -timeout)
RSS_LIMIT_MB = 2048  # the device allocates nothing: growth is a finding (-rss_limit_mb)
CRASH_PREFIXES = ("crash-", "timeout-", "oom-", "leak-", "slow-unit-")


def env() -> dict:
    """Sanitizer options for the target: every report fatal, symbolized."""
    sym = shutil.which("llvm-symbolizer-14") or shutil.which("llvm-symbolizer")
    e = dict(os.environ,
             ASAN_OPTIONS="abort_on_error=1:halt_on_error=1:detect_leaks=1",
             UBSAN_OPTIONS="halt_on_error=1:abort_on_error=1:print_stacktrace=1")
    if sym:
        e["ASAN_SYMBOLIZER_PATH"] = e["UBSAN_SYMBOLIZER_PATH"] = sym
    return e


# ---- the model and the target ----------------------------------------------------------

def ensure_artifact(work: Path) -> Artifact:
    """The work directory's artifact, compiled (untuned, for host) unless it is there intact."""
    art = work / "artifact"
    try:
        return Artifact.load(art)
    except UsageError:
        pass
    from edge_mnv1.artifact.target import load_target
    from edge_mnv1.compiler.driver import compile_artifact, finish_manifest
    from edge_mnv1.onnxio.export import export_random

    log.info(f"fuzz: compiling MobileNetV1 0.25 at {FUZZ_SIDE}x{FUZZ_SIDE} for host into {art}")
    onnx_path = export_random(work / "model.onnx", FUZZ_SIDE)
    if art.exists():
        shutil.rmtree(art)
    finish_manifest(compile_artifact(onnx_path, load_target("host"), art, use_records=False))
    return Artifact.load(art)


def build_target(artifact: Path, build_dir: Path) -> Path:
    """Configures (once) and builds the libFuzzer target; returns its path."""
    if not shutil.which(CLANG):
        raise ToolError(f"{CLANG} is not installed (libFuzzer needs clang and its runtime "
                        "libraries); run ./scripts/setup.sh")
    if not shutil.which("cmake"):
        raise ToolError("cmake is not installed; run ./scripts/setup.sh")
    build_dir = Path(build_dir).resolve()
    artifact = Path(artifact).resolve()
    cache = build_dir / "CMakeCache.txt"
    if cache.is_file() and f"CMAKE_HOME_DIRECTORY:INTERNAL={REPO}\n" not in cache.read_text():
        shutil.rmtree(build_dir)  # configured from another checkout: start afresh
    cmds = []
    if not cache.is_file():
        gen = ["-G", "Ninja"] if shutil.which("ninja") else []
        cmds.append(["cmake", "-S", str(REPO), "-B", str(build_dir), *gen,
                     f"-DCMAKE_C_COMPILER={CLANG}", "-DEM_PLATFORM=fuzz",
                     f"-DEM_ARTIFACT={artifact}", f"-DEM_RUNTIME_DIR={RUNTIME_DIR}",
                     f"-DEM_OUTPUT_DIR={build_dir}"])
    cmds.append(["cmake", "--build", str(build_dir), "-j", str(os.cpu_count() or 2)])
    for cmd in cmds:
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise ToolError(f"building the fuzz target failed ({' '.join(cmd[:2])} ...):\n"
                            f"{(r.stdout + r.stderr)[-3000:]}")
    return build_dir / "fuzz_protocol"


# ---- the seed corpus -------------------------------------------------------------------

def _header(mtype: int, seq: int, length: int, version: int = P.VERSION) -> bytes:
    """A header with a right CRC announcing `length` bytes (none of them attached)."""
    head = struct.pack("<2sBBHHI", P.MAGIC, version, mtype, seq, 0, length)
    return head + struct.pack("<I", zlib.crc32(head))


def seed_frames(input_bytes: int, max_payload: int) -> dict[str, bytes]:
    """name -> a byte stream the host could send: every message type, valid, and the frames
    each error path answers."""
    enc = P.encode_frame
    x = np.random.default_rng(0).standard_normal(input_bytes // 4).astype("<f4").tobytes()
    runs = lambda n: struct.pack("<I", n)  # noqa: E731
    valid = {
        "hello": enc(P.HELLO, 1),
        "infer": enc(P.INFER, 2, x),
        "bench": enc(P.BENCH, 3, runs(3)),
        "profile": enc(P.PROFILE, 4, runs(2)),
        "selftest": enc(P.SELFTEST, 5),
    }
    bad_crc = bytearray(enc(P.INFER, 6, x))
    bad_crc[-1] ^= 0xFF
    bad_header = bytearray(enc(P.HELLO, 7))
    bad_header[9] ^= 0x40
    errors = {
        "error-payload-crc": bytes(bad_crc),
        "error-header-crc": bytes(bad_header),
        "error-version": enc(P.HELLO, 8, b"\1\2\3", version=9),
        "error-too-large": _header(P.INFER, 9, max_payload + 1) + b"\1" * (max_payload + 5),
        "error-unknown-type": enc(0x42, 10, b"?"),
        "error-infer-short": enc(P.INFER, 11, x[:12]),
        "error-infer-frame-buffer": enc(P.INFER, 12, b"\0" * max_payload),
        "error-bench-zero": enc(P.BENCH, 13, runs(0)),
        "error-bench-huge": enc(P.BENCH, 14, runs(0xFFFFFFFF)),
        "error-bench-short": enc(P.BENCH, 15, b"\3\0"),
        "error-profile-zero": enc(P.PROFILE, 16, runs(0)),
        "error-profile-huge": enc(P.PROFILE, 17, runs(1 << 20)),
        "error-noise-then-hello": b"boot line\n\xed\xed\xed" + enc(P.HELLO, 18),
        "error-cut-frame": enc(P.INFER, 19, x)[:100],
    }
    session = b"".join(valid.values()) + errors["error-payload-crc"] + enc(P.HELLO, 20)
    return {**valid, **errors, "session": session}


def write_seeds(seeds_dir: Path, manifest: Manifest) -> int:
    seeds_dir.mkdir(parents=True, exist_ok=True)
    frames = seed_frames(manifest.input.nbytes, manifest.memory["frame_buffer_bytes"])
    for name, data in frames.items():
        (seeds_dir / name).write_bytes(data)
    return len(frames)


# ---- running libFuzzer -----------------------------------------------------------------

_STATUS = re.compile(r"^#(\d+)\s+(\w+)\s+cov: (\d+) ft: (\d+)(?: corp: (\d+)/)?", re.M)
_STAT = re.compile(r"^stat::(\w+):\s+(\d+)", re.M)


def parse_output(text: str) -> dict:
    """libFuzzer's stderr -> executions, exec/s, coverage (edges), features, corpus size."""
    out = {}
    status = _STATUS.findall(text)
    if status:
        n, _, cov, ft, corp = status[-1]
        out.update(cov=int(cov), ft=int(ft), corpus=int(corp) if corp else None,
                   status_executions=int(n))
    stats = dict((k, int(v)) for k, v in _STAT.findall(text))
    out["executions"] = stats.get("number_of_executed_units", out.get("status_executions"))
    out["exec_per_s"] = stats.get("average_exec_per_sec")
    out["new_units"] = stats.get("new_units_added")
    out["slowest_unit_s"] = stats.get("slowest_unit_time_sec")
    out["peak_rss_mb"] = stats.get("peak_rss_mb")
    return out


def combine(parts: list[dict]) -> dict:
    """Jobs side by side on one corpus: executions and exec/s add up; coverage, features
    and corpus are the best job's (they share what they find)."""
    if len(parts) == 1:
        return parts[0]
    total = lambda k: sum(p.get(k) or 0 for p in parts)  # noqa: E731
    best = lambda k: max((p.get(k) or 0 for p in parts), default=0)  # noqa: E731
    return {"executions": total("executions"), "exec_per_s": total("exec_per_s"),
            "new_units": total("new_units"), "cov": best("cov"), "ft": best("ft"),
            "corpus": best("corpus"), "slowest_unit_s": best("slowest_unit_s"),
            "peak_rss_mb": best("peak_rss_mb"), "per_job": parts}


def crash_files(crash_dir: Path) -> list[Path]:
    if not crash_dir.is_dir():
        return []
    return sorted(p for p in crash_dir.iterdir() if p.name.startswith(CRASH_PREFIXES))


def prepare(work: Path) -> tuple[Path, Path, Manifest]:
    """Artifact, target and seeds in `work`: (target, seeds_dir, the artifact's manifest)."""
    work.mkdir(parents=True, exist_ok=True)
    art = ensure_artifact(work)
    target = build_target(art.path, work / "build")
    seeds = work / "seeds"
    write_seeds(seeds, art.manifest)
    return target, seeds, art.manifest


def fuzz(work: Path, seconds: float | None = None, runs: int | None = None,
         seed: int = 0, jobs: int = 1) -> dict:
    """Runs libFuzzer until `seconds` or `runs` (whichever comes first) or the first crash;
    `jobs` > 1 runs that many fuzzers side by side on one corpus (runs split between them)."""
    work = Path(work).resolve()
    if seconds is None and runs is None:
        seconds = 60
    target, seeds, manifest = prepare(work)
    corpus, crash_dir = work / "corpus", work / "crashes"
    corpus.mkdir(exist_ok=True)
    crash_dir.mkdir(exist_ok=True)
    before = set(crash_files(crash_dir))
    max_len = 2 * (manifest.memory["frame_buffer_bytes"] + 20) + 64
    argv = [str(target), f"-timeout={TIMEOUT_S}", f"-rss_limit_mb={RSS_LIMIT_MB}",
            f"-max_len={max_len}", f"-seed={seed}", "-print_final_stats=1",
            f"-artifact_prefix={crash_dir}/", "-use_value_profile=1"]
    if seconds is not None:
        argv.append(f"-max_total_time={max(1, int(seconds))}")
    if runs is not None:
        argv.append(f"-runs={-(-runs // jobs)}")
    if jobs > 1:  # libFuzzer's own parallel mode: job J logs to fuzz-J.log in the cwd
        argv += [f"-jobs={jobs}", f"-workers={jobs}"]
        for old in work.glob("fuzz-*.log"):
            old.unlink()
    argv += [str(corpus), str(seeds)]
    log.info(f"fuzz: {' '.join(argv)}")
    log_path = work / "fuzz.log"
    with open(log_path, "w") as f:
        r = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT, env=env(), cwd=work)
    logs = sorted(work.glob("fuzz-*.log")) if jobs > 1 else [log_path]
    stats = combine([parse_output(p.read_text(errors="replace")) for p in logs])
    if jobs > 1 and len(logs) != jobs:
        r.returncode = r.returncode or 1  # a job that never ran is no clean run
    new = [str(p) for p in crash_files(crash_dir) if p not in before]
    passed = r.returncode == 0 and not new
    report = {"passed": passed, "exit_code": r.returncode, **stats, "crashes": new,
              "model": manifest.model_key, "input_bytes": manifest.input.nbytes,
              "max_payload": manifest.memory["frame_buffer_bytes"], "target": str(target),
              "corpus_dir": str(corpus), "jobs": jobs,
              "log": [str(p) for p in logs] if jobs > 1 else str(log_path)}
    eps = stats.get("exec_per_s")
    report["text"] = (
        f"fuzz: {stats.get('executions') or 0:,} executions"
        + (f", {eps:,} exec/s" if eps is not None else "")
        + f", coverage {stats.get('cov')} edges, {stats.get('ft')} features, corpus "
          f"{stats.get('corpus')} inputs\n"
        + (f"  {len(new)} crash(es): {', '.join(new)}\n  replay: edge-mnv1 fuzz --replay FILE"
           if new else "  no crash" if r.returncode == 0 else
           f"  libFuzzer exited {r.returncode}; see {log_path}"))
    return report


def replay(work: Path, inputs: list[Path]) -> dict:
    """Runs each input once through the target (a regression check); passed if none crashes."""
    work = Path(work).resolve()
    files = []
    for p in map(Path, inputs):
        if p.is_dir():
            files += sorted(q for q in p.iterdir() if q.is_file())
        elif p.is_file():
            files.append(p)
        else:
            raise UsageError(f"--replay {p}: no such file or directory")
    if not files:
        raise UsageError("--replay: no input files")
    target, _, _ = prepare(work)
    results = []
    for f in files:
        r = subprocess.run([str(target), str(f)], capture_output=True, text=True, env=env(),
                           timeout=TIMEOUT_S * 6)
        results.append({"input": str(f), "exit_code": r.returncode,
                        "report": _first_report(r.stderr) if r.returncode else None})
    failed = [x for x in results if x["exit_code"] != 0]
    text = (f"fuzz replay: {len(files)} input(s), {len(failed)} crashed"
            + "".join(f"\n  {x['input']}: {x['report']}" for x in failed))
    return {"passed": not failed, "replayed": len(files), "failed": failed,
            "results": results, "text": text}


def _first_report(stderr: str) -> str:
    for line in stderr.splitlines():
        if "ERROR:" in line or "runtime error" in line or "fuzz_protocol:" in line:
            return line.strip()[:300]
    return stderr.strip().splitlines()[-1][:300] if stderr.strip() else "(no output)"
