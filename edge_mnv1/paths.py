"""Where the repository's data lives: target files, the C runtime, committed tuning records."""

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
REPO = PACKAGE.parent
TARGETS_DIR = REPO / "targets"
RUNTIME_DIR = PACKAGE / "runtime"
TUNING_DIR = REPO / "compile" / "tuning"
