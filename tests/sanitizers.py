"""Sanitizer builds of the Linux program (`compile --sanitize address,undefined`) for the
protocol and parity tests, and the check that a run left no sanitizer report.

Every report ends the program (built with -fno-sanitize-recover=all; halt_on_error and
abort_on_error besides), so a test talking to it sees the device die with the report in its
error. ASan and LeakSanitizer also write their reports to files under the test's directory
(log_path): reports from any program a test starts, directly or through a verb, and those
written at exit are seen too, not only what happened to be read from a pipe. (gcc's UBSan
writes to stderr whatever log_path says: check_no_reports also scans a stderr given to it.)"""

from __future__ import annotations

import contextlib
from pathlib import Path

from compiled import cli_json

SANITIZE = "address,undefined"
REPORT_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                  "SUMMARY: UndefinedBehaviorSanitizer")


def sanitized_artifact(onnx_path: Path, tmp_path_factory, target: str = "host") -> Path:
    """`onnx_path` compiled with --sanitize address,undefined, once per session."""
    root = tmp_path_factory.getbasetemp() / "sanitized_artifacts"
    art = root / f"{Path(onnx_path).stem}-{target}"
    if not (art / "manifest.json").is_file() or not (art / "program").is_file():
        art.parent.mkdir(parents=True, exist_ok=True)
        r = cli_json("compile", onnx_path, "--target", target, "--sanitize", SANITIZE, "-o", art)
        assert r["sanitize"] == SANITIZE
    return art


def reports_in(text: str) -> list[str]:
    return [line for line in text.splitlines() if any(m in line for m in REPORT_MARKERS)]


@contextlib.contextmanager
def no_sanitizer_reports(monkeypatch, log_dir: Path):
    """Runs the block with every sanitizer report fatal and logged under `log_dir`; fails
    if any report was written. Usable around plain programs too (the options go unread)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    common = "halt_on_error=1:abort_on_error=1:print_stacktrace=1"
    monkeypatch.setenv("ASAN_OPTIONS", f"{common}:detect_leaks=1:log_path={log_dir}/asan")
    monkeypatch.setenv("UBSAN_OPTIONS", f"{common}:log_path={log_dir}/ubsan")
    yield
    check_no_reports(log_dir)


def check_no_reports(log_dir: Path, stderr: str = "") -> None:
    logs = sorted(p for p in log_dir.glob("*san.*") if p.is_file())
    found = [f"{p.name}: {p.read_text(errors='replace')[:3000]}" for p in logs]
    found += reports_in(stderr)
    assert not found, "sanitizer reports:\n" + "\n".join(found)
