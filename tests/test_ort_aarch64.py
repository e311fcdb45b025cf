"""ONNX Runtime's own aarch64 build counted on an emulated Cortex-A72: a count is positive,
repeatable and grows with the model; a missing aarch64 root says which script to run.
Needs scripts/setup_ort_aarch64.sh to have run."""

from __future__ import annotations

import pytest

from edge_mnv1.emulators import ort_aarch64
from edge_mnv1.errors import ToolError
from edge_mnv1.onnxio.export import export_random


def _model(tmp_path_factory, side: int):
    """MobileNetV1 0.25 with random weights for side x side inputs, 10 classes."""
    return export_random(tmp_path_factory.mktemp("ort-aarch64") / f"m{side}.onnx", side,
                         alpha=0.25, classes=10)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return _model(tmp_path_factory, 32)


@pytest.mark.emulator
@pytest.mark.slow
def test_count_is_positive_repeatable_and_grows_with_the_model(tiny, tmp_path_factory):
    first, second = (ort_aarch64.count_onnxruntime(tiny, (1, 3, 32, 32), cache=False)
                     for _ in range(2))
    n = first["instructions_per_inference"]
    assert first["engine"] == "onnxruntime 1.32.0 aarch64"
    # 0.25/32 has 0.83M multiply-adds; even scalar code would stay under 20 per one.
    assert 200_000 < n < 20 * 834_688
    assert abs(second["instructions_per_inference"] - n) <= 0.01 * n
    larger = ort_aarch64.count_onnxruntime(_model(tmp_path_factory, 64), (1, 3, 64, 64),
                                           cache=False)
    assert larger["instructions_per_inference"] > 2 * n
    # The board's CPU is emulated as the target file names it (rpi5: a Cortex-A76).
    a76 = ort_aarch64.count_onnxruntime(tiny, (1, 3, 32, 32), cache=False, cpu="cortex-a76")
    assert a76["cpu"] == "cortex-a76" and "-cpu cortex-a76" in a76["note"]
    assert 200_000 < a76["instructions_per_inference"] < 20 * 834_688


def test_the_emulated_cpu_is_the_one_the_target_file_names():
    from edge_mnv1.artifact.target import load_target

    def cpu(name):
        return ort_aarch64.cpu_of((load_target(name).emulator or {}).get("command"))

    assert (cpu("rpi4"), cpu("rpi5")) == ("cortex-a72", "cortex-a76")
    assert ort_aarch64.cpu_of([]) == ort_aarch64.DEFAULT_CPU


def test_missing_root_names_the_setup_script(tiny, tmp_path):
    with pytest.raises(ToolError, match="run scripts/setup_ort_aarch64.sh") as e:
        ort_aarch64.count_onnxruntime(tiny, (1, 3, 32, 32), root=tmp_path / "none")
    assert e.value.exit_code == 3
