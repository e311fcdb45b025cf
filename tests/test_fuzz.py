"""Device-side fuzzing (edge_mnv1/evaluation/fuzzing.py, edge_mnv1/runtime/fuzz/): the
libFuzzer target builds with a real compiled model; its seeds are the frames their names say
(checked against the Linux program); every stored crash (tests/fuzz_regressions/) replays
clean through the target and through the ASan + UBSan Linux program; a short fuzz run finds
no crash."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from edge_mnv1.device import protocol as P
from edge_mnv1.artifact.artifact import Artifact

from compiled import cli_json
from sanitizers import SANITIZE, check_no_reports, no_sanitizer_reports

REGRESSIONS = Path(__file__).resolve().parent / "fuzz_regressions"

# What the device answers to each seed: a reply type, or an error code (None: no reply, the
# stream ends inside the frame). Sessions answer with several replies: checked apart.
SEED_REPLIES = {
    "hello": P.HELLO | P.REPLY, "infer": P.INFER | P.REPLY, "bench": P.BENCH | P.REPLY,
    "profile": P.PROFILE | P.REPLY, "selftest": P.SELFTEST | P.REPLY,
    "error-payload-crc": 1, "error-header-crc": 1, "error-version": 3, "error-too-large": 2,
    "error-unknown-type": 4, "error-infer-short": 5, "error-infer-frame-buffer": 5,
    "error-bench-zero": 7, "error-bench-huge": 7, "error-bench-short": 7,
    "error-profile-zero": 7, "error-profile-huge": 7,
    "error-noise-then-hello": P.HELLO | P.REPLY, "error-cut-frame": None,
}


@pytest.fixture(scope="module")
def fuzz_work(tmp_path_factory) -> Path:
    """A work directory with the model, the target and seeds, made by a first short run."""
    work = tmp_path_factory.mktemp("fuzz")
    r = cli_json("fuzz", "--runs", 500, "--work", work)
    assert r["passed"] and r["crashes"] == [] and r["executions"] >= 500, r
    return work


@pytest.fixture(scope="module")
def sanitized_program(fuzz_work, tmp_path_factory) -> Path:
    """The Linux program of the fuzz target's model, built with ASan + UBSan."""
    from edge_mnv1.artifact.build import build_program
    from edge_mnv1.artifact.target import load_target

    art = tmp_path_factory.mktemp("fuzz-linux") / "artifact"
    shutil.copytree(fuzz_work / "artifact", art)
    return build_program(load_target("host"), art, sanitize=SANITIZE)


def serve(program: Path, stream: bytes, log_dir: Path) -> list[tuple[int, int, bytes]]:
    """Feeds `stream` to `program --serve`; the replies, after checking the program ended
    cleanly at the end of its input, without a sanitizer report, and wrote nothing but whole
    frames."""
    r = subprocess.run([str(program), "--serve"], input=stream, capture_output=True, timeout=120)
    stderr = r.stderr.decode("utf-8", "replace")
    check_no_reports(log_dir, stderr)
    assert r.returncode == 0, stderr[-2000:]
    d = P.FrameDecoder()
    d.feed(r.stdout)
    frames = []
    while (f := d.next_frame()) is not None:
        frames.append(f)
    assert d.bad_frames == 0 and not d.take_skipped() and not d.buf, "malformed reply bytes"
    return frames


def test_seeds_are_the_frames_they_are_named(fuzz_work, sanitized_program, tmp_path,
                                             monkeypatch):
    seeds = {p.name: p.read_bytes() for p in (fuzz_work / "seeds").iterdir()}
    assert set(SEED_REPLIES) | {"session"} == set(seeds)
    manifest = Artifact.load(fuzz_work / "artifact").manifest
    with no_sanitizer_reports(monkeypatch, tmp_path / "sanitizers"):
        for name, want in SEED_REPLIES.items():
            replies = serve(sanitized_program, seeds[name], tmp_path / "sanitizers")
            if want is None:
                assert replies == [], name
                continue
            assert len(replies) == 1, (name, replies)
            mtype, _, body = replies[0]
            if want < 8:
                assert mtype == P.ERROR and struct.unpack_from("<H", body)[0] == want, (name, body)
            else:
                assert mtype == want, (name, body[:200])
        # The session seed: every type answered in order, then the CRC error, then hello.
        got = [m for m, _, _ in serve(sanitized_program, seeds["session"], tmp_path / "sanitizers")]
        assert got == [t | P.REPLY for t in (P.HELLO, P.INFER, P.BENCH, P.PROFILE, P.SELFTEST)] \
            + [P.ERROR, P.HELLO | P.REPLY]
    assert len(seeds["infer"]) == 20 + manifest.input.nbytes


def test_run_counts_are_bounded_by_the_device(fuzz_work, sanitized_program, tmp_path,
                                              monkeypatch):
    """The limits that bound one request's cost (docs/protocol.md), at their edges, on the
    real program: bench up to min(10000, (max_payload - 4) / 8) runs, profile up to 1000."""
    max_payload = Artifact.load(fuzz_work / "artifact").manifest.memory["frame_buffer_bytes"]
    bench_cap = min(10000, (max_payload - 4) // 8)
    runs = lambda n: struct.pack("<I", n)  # noqa: E731
    stream = b"".join([P.encode_frame(P.BENCH, 1, runs(bench_cap)),
                       P.encode_frame(P.READ, 5, struct.pack("<H", 1)),  # held: its 1st chunk
                       P.encode_frame(P.BENCH, 2, runs(bench_cap + 1)),
                       P.encode_frame(P.PROFILE, 3, runs(1000)),
                       P.encode_frame(P.PROFILE, 4, runs(1001))])
    with no_sanitizer_reports(monkeypatch, tmp_path / "sanitizers"):
        replies = serve(sanitized_program, stream, tmp_path / "sanitizers")
    assert [(m, s) for m, s, _ in replies] == [(P.HELD, 1), (P.READ | P.REPLY, 5), (P.ERROR, 2),
                                               (P.PROFILE | P.REPLY, 3), (P.ERROR, 4)]
    assert struct.unpack_from("<BBHI", replies[0][2])[3] == 4 + 8 * bench_cap
    assert struct.unpack_from("<I", replies[1][2])[0] == bench_cap
    for (_, _, body), cap in ((replies[2], bench_cap), (replies[4], 1000)):
        assert struct.unpack_from("<H", body)[0] == 7 and f"from 1 to {cap}".encode() in body


def test_regressions_replay_clean_through_the_target(fuzz_work):
    files = sorted(p for p in REGRESSIONS.iterdir() if p.is_file())
    assert files, "tests/fuzz_regressions/ holds every crash the fuzzer found"
    r = cli_json("fuzz", "--replay", REGRESSIONS, "--work", fuzz_work)
    assert r["passed"] and r["replayed"] == len(files), r["text"]


def test_regressions_against_the_sanitized_linux_program(sanitized_program, tmp_path,
                                                         monkeypatch):
    """Each stored crash through the real program and the protocol: it ends cleanly at the
    end of its input, writes only whole, valid replies, and no sanitizer reports."""
    with no_sanitizer_reports(monkeypatch, tmp_path / "sanitizers"):
        for f in sorted(REGRESSIONS.iterdir()):
            for mtype, _, body in serve(sanitized_program, f.read_bytes(), tmp_path / "sanitizers"):
                assert mtype in (P.ERROR, P.HELD) or mtype & P.REPLY, (f.name, mtype)


@pytest.mark.slow
def test_half_a_minute_of_fuzzing_finds_no_crash(fuzz_work):
    r = cli_json("fuzz", "--seconds", 30, "--work", fuzz_work)
    assert r["passed"] and r["exit_code"] == 0 and r["crashes"] == [], r.get("text")
    # A meaningful run even on a busy 2-core machine (~5,000-17,000 executions a second here).
    assert r["executions"] >= 25_000, r
    assert r["cov"] > 0 and r["ft"] > 0 and r["corpus"] >= len(SEED_REPLIES)
