"""Sanitizer builds (`compile --sanitize`) and the check the protocol and parity tests run
them under (tests/sanitizers.py): the program really carries the sanitizers, a report really
fails the check, and targets where sanitizers cannot work are refused with the reason."""

from __future__ import annotations

import json
import subprocess

import pytest

from compiled import cli
from sanitizers import SANITIZE, check_no_reports, no_sanitizer_reports, sanitized_artifact

# A heap overflow (ASan) when called with "heap", a signed overflow (UBSan) with "int".
BUGGY_C = r"""
#include <stdlib.h>
#include <string.h>
int main(int argc, char** argv) {
  if (argv[1][0] == 'i') { int x = 0x7fffffff; x += argc; return x & 1; }
  char* volatile p = malloc(8);
  memset(p, 0, 8 + (size_t)argc);
  free(p);
  return 0;
}
"""


@pytest.mark.parametrize("bug", ["heap", "int"])
def test_a_sanitizer_report_fails_the_check(bug, tmp_path, monkeypatch):
    (tmp_path / "buggy.c").write_text(BUGGY_C)
    exe = tmp_path / "buggy"
    subprocess.run(["gcc", f"-fsanitize={SANITIZE}", "-fno-sanitize-recover=all", "-g", "-w",
                    str(tmp_path / "buggy.c"), "-o", str(exe)], check=True)
    with pytest.raises(AssertionError, match="sanitizer reports"):
        with no_sanitizer_reports(monkeypatch, tmp_path / "logs"):
            r = subprocess.run([str(exe), bug], capture_output=True, text=True)
            assert r.returncode != 0  # the report ended the program
            check_no_reports(tmp_path / "logs", r.stderr)


def test_the_sanitized_program_carries_the_sanitizers(digits_onnx, tmp_path_factory):
    art = sanitized_artifact(digits_onnx, tmp_path_factory)
    manifest = json.loads((art / "manifest.json").read_text())
    assert manifest["sanitize"] == SANITIZE and "program" in manifest["files"]
    libs = subprocess.run(["ldd", str(art / "program")], capture_output=True, text=True).stdout
    assert "libasan" in libs and "libubsan" in libs, libs


@pytest.mark.parametrize("target, sanitize, why", [
    ("rpi4", SANITIZE, "links its program statically"),
    ("mps2-an500", SANITIZE, "MCU target"),
    ("host", "adress", "comma-separated list of address, undefined, leak"),
])
def test_sanitize_refused_where_it_cannot_work(target, sanitize, why, tmp_path):
    r = cli("compile", tmp_path / "none.onnx", "--target", target, "--sanitize", sanitize,
            "-o", tmp_path / "art", check=False)
    assert r.returncode == 2 and why in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "art").exists()  # refused before compiling anything
