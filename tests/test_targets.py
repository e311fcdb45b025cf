"""Targets are data: every file loads, and a bad file names the file, the key and the form."""

import pytest

from edge_mnv1.errors import UsageError
from edge_mnv1.artifact.target import available, load_target, load_target_file


def test_every_target_file_loads():
    names = available()
    assert {"host", "rpi4", "rpi3"} <= set(names)
    for name in names:
        t = load_target(name)
        assert t.name == name and t.kind in ("linux", "mcu")


def test_rpi4_is_a72_neon_static_under_qemu():
    t = load_target("rpi4")
    assert t.tvm["target"]["mcpu"] == "cortex-a72" and "+neon" in t.tvm["target"]["mattr"]
    assert t.arch == "aarch64" and t.build["static"] is True and t.threads == 4
    assert t.emulator["command"][0] == "qemu-aarch64"
    assert t.toolchain_file().is_file()


GOOD = '''name = "{name}"
description = "a board"
kind = "linux"
arch = "aarch64"
[tvm]
target = {{ kind = "llvm", mtriple = "aarch64-linux-gnu" }}
[build]
threads = 4
'''


def test_a_new_board_is_a_file(tmp_path):
    p = tmp_path / "myboard.toml"
    p.write_text(GOOD.format(name="myboard"))
    assert load_target(str(p)).tvm["target"]["mtriple"] == "aarch64-linux-gnu"


@pytest.mark.parametrize("mutate, words", [
    (lambda s: "colour = 'red'\n" + s, ["unknown key 'colour'", "allowed keys"]),
    (lambda s: s.replace('arch = "aarch64"\n', ""), ["missing key 'arch'"]),
    (lambda s: s.replace("threads = 4", 'threads = "four"'), ["build.threads", "expected an integer"]),
    (lambda s: s.replace('kind = "linux"', 'kind = "fpga"'), ["'kind'", '"linux" or "mcu"']),
    (lambda s: s.replace("[build]", "[build\n"), ["not valid TOML"]),
])
def test_bad_target_file_names_file_key_and_form(tmp_path, mutate, words):
    p = tmp_path / "bad.toml"
    p.write_text(mutate(GOOD.format(name="bad")))
    with pytest.raises(UsageError) as e:
        load_target_file(p)
    assert str(p) in str(e.value)
    for w in words:
        assert w in str(e.value)


def test_unknown_target_lists_the_available_ones():
    with pytest.raises(UsageError, match="unknown target 'nosuch'.*rpi4"):
        load_target("nosuch")
