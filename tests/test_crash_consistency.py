"""Crash consistency: commands killed with SIGKILL at random moments leave nothing corrupt.

- tune: the records database stays readable by the next tune and by compile after every
  kill, committed trials are never lost, and the rerun owes only the trials still missing;
- deploy (ssh, emulated Pi): the program on the device is always the old one or the new one,
  whole, and the next deploy completes it;
- parity: a run killed midway leaves a report that says it is partial.

Kill moments come from a seeded RNG over the measured run time, so a failure reproduces.
A tiny network (one conv, 8x8 input) keeps each run cheap.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from compiled import CLI, REPO, cli, cli_json

pytestmark = pytest.mark.slow

TUNE_KILLS = int(os.environ.get("EDGE_MNV1_TUNE_KILLS", "4"))  # more: set the variable
DEPLOY_KILLS = int(os.environ.get("EDGE_MNV1_DEPLOY_KILLS", "12"))
PARITY_KILLS = 4


def one_conv_onnx(root: Path) -> Path:
    """A single 3x3 conv on 1x3x8x8: one kernel to tune, the cheapest real tuning run."""
    import torch

    path = root / "one-conv.onnx"
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1, bias=False)).eval()
    torch.onnx.export(net, torch.zeros(1, 3, 8, 8), str(path), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["out"])
    return path


def tiny_onnx(root: Path, seed: int = 0) -> Path:
    """conv 3->8 + ReLU + global pool + linear 8->4 on 1x3x8x8: four kernels."""
    import torch

    path = root / f"tiny-{seed}.onnx"
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                              torch.nn.Linear(8, 4)).eval()
    torch.onnx.export(net, torch.zeros(1, 3, 8, 8), str(path), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["logits"])
    return path


def start(*args, env=None, stderr=None) -> subprocess.Popen:
    return subprocess.Popen([*CLI, *map(str, args)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=stderr or subprocess.DEVNULL)


def kill_at(proc: subprocess.Popen, moment: float, t0: float) -> bool:
    """SIGKILL at t0 + moment unless the process ended before; True if it was killed."""
    try:
        proc.wait(timeout=max(0.0, t0 + moment - time.monotonic()))
        return False
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return True


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---- tuning --------------------------------------------------------------------------------

def db_lines(path: Path) -> tuple[int, bool]:
    """(whole JSON lines, whether a cut line follows them). Anything else is corruption."""
    if not path.exists():
        return 0, False
    lines = [ln for ln in path.read_bytes().split(b"\n") if ln.strip()]
    whole = 0
    for i, line in enumerate(lines):
        try:
            json.loads(line)
            whole += 1
        except ValueError:
            assert i == len(lines) - 1, f"{path.name}: damaged line {i + 1} is not the last"
            return whole, True
    return whole, False


class ForkServer:
    """tests/fork_server.py: `edge-mnv1` commands as forked children of a process that has
    imported TVM once, so a kill lands in the command's work (see that file)."""

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("fork_server.py"))],
                                     cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.buf = b""
        assert self._read(1800) == {"ready": True}

    def _read(self, timeout: float):
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.proc.stdout], [], [], left)[0]:
                return None
            chunk = os.read(self.proc.stdout.fileno(), 4096)
            assert chunk, "the fork server died"
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def run(self, argv: list, log: Path, env: dict) -> int:
        self.proc.stdin.write(json.dumps({"argv": [str(a) for a in argv], "log": str(log),
                                          "env": env}).encode() + b"\n")
        self.proc.stdin.flush()
        return self._read(60)["pid"]

    def run_until(self, argv: list, log: Path, env: dict, moment: float) -> tuple[int, bool]:
        """(exit code, killed): the command killed with SIGKILL `moment` s after it started,
        unless it ended before."""
        pid = self.run(argv, log, env)
        done = self._read(moment)
        if done is not None:
            return done["exit"], False
        os.kill(pid, signal.SIGKILL)
        return self._read(60)["exit"], True

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


@pytest.mark.timeout(2400)
def test_tuning_killed_at_random_moments_never_corrupts_the_records(tmp_path, monkeypatch):
    from edge_mnv1.compiler.tuning import records

    onnx = one_conv_onnx(tmp_path)
    root = tmp_path / "tuning"
    monkeypatch.setenv("EDGE_MNV1_TUNING_ROOT", str(root))  # for the commands started here
    env = {"EDGE_MNV1_TUNING_ROOT": str(root)}
    rng = random.Random(20)
    step = budget = 4  # each run owes `step` trials more than are on record

    def tune(trials: int) -> list:
        # --no-settle: the subject is the database; timing whole programs is test_tune's.
        return ["tune", onnx, "--target", "host", "--trials", trials, "--minutes", 10, "--json",
                "--no-settle"]

    server = ForkServer()
    try:
        t0 = time.monotonic()
        code, _ = server.run_until(tune(budget), tmp_path / "tune-0.log", env, 1800)
        run_time = time.monotonic() - t0
        assert code == 0, (tmp_path / "tune-0.log").read_text()[-2000:]
        rec_dir = next(root.rglob(records.RECORDS)).parent
        rec_file, wl_file = rec_dir / records.RECORDS, rec_dir / records.WORKLOADS
        kills = runs = cut_lines = resumed = 0
        while kills < TUNE_KILLS:
            runs += 1
            assert runs <= 3 * TUNE_KILLS, "the runs keep finishing before their kill moment"
            before, _ = db_lines(rec_file)
            budget = before + step
            log = tmp_path / f"tune-{runs}.log"
            # A run's time grows with the database (the search has more to weigh): every
            # fifth run goes to its end and measures it again.
            moment = 3600 if runs % 5 == 0 else rng.uniform(0, run_time)
            t0 = time.monotonic()
            code, killed = server.run_until(tune(budget), log, env, moment)
            kills += killed
            assert killed or code == 0, log.read_text()[-2000:]
            if not killed:
                run_time = max(run_time, time.monotonic() - t0)
            # Only the last line may be cut; no trial on record before the run was lost.
            after, cut = db_lines(rec_file)
            cut_lines += cut
            db_lines(wl_file)
            assert after >= before
            # The run resumed from what was on record and owed only the rest. Only a kill
            # before tune logs its plan may leave the line out.
            m = re.search(r"(\d+) trials on record in .*?, (\d+) to go", log.read_text())
            assert m or killed, f"{log.name} does not say what it owes:\n{log.read_text()[-2000:]}"
            if m:
                assert (int(m.group(1)), int(m.group(2))) == (before, budget - before)
                resumed += 1
            # compile's reader takes the database as the kill left it.
            assert len(records.open_database(rec_dir).get_all_tuning_records()) == after
    finally:
        server.close()
    assert resumed, "no run logged what it owed: the resume check never ran"
    # A write cut mid-line (the rarest kill moment) made on purpose: the same holds, and the
    # reader does not rewrite a file that a tune may be appending to.
    data = rec_file.read_bytes().rstrip(b"\n")
    rec_file.write_bytes(data[:len(data) - len(data.split(b"\n")[-1]) // 2])
    whole, cut = db_lines(rec_file)
    damaged = rec_file.read_bytes()
    assert cut and len(records.open_database(rec_dir).get_all_tuning_records()) == whole
    assert rec_file.read_bytes() == damaged
    # The next run, a whole process from the command line, repairs it and owes the rest.
    final = subprocess.run([*CLI, *map(str, tune(budget))], cwd=REPO, capture_output=True,
                           text=True, timeout=1800)
    assert final.returncode == 0, final.stderr[-2000:]
    r = json.loads(final.stdout)
    from edge_mnv1.compiler.tuning.tune import TRIALS_PER_ITER
    assert r["trials_before"] == whole and budget <= r["trials_after"] < budget + TRIALS_PER_ITER
    assert db_lines(rec_file) == (r["trials_after"], False) and not db_lines(wl_file)[1]
    print(f"tune: {kills} kills in {runs} runs (a run takes {run_time:.0f} s), {cut_lines} cut "
          f"lines seen, {r['trials_after']} trials on record after the last run")
    art = cli_json("compile", onnx, "--target", "host", "-o", tmp_path / "art", "--no-build")
    assert art["tuning_applied"] >= 1


# ---- deploy --------------------------------------------------------------------------------

PART = re.compile(r"^\.(program|manifest\.json)\.part\.\d+$")  # an upload's temporary name


def wait_for_line(proc: subprocess.Popen, log: Path, text: str, timeout: float = 300) -> float:
    """Seconds until `text` shows in the log (or the process ends: then inf)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if text in log.read_text(errors="replace"):
            return time.monotonic()
        if proc.poll() is not None:
            return float("inf")
        time.sleep(0.005)
    raise AssertionError(f"{text!r} did not show in {log} within {timeout} s")


@pytest.mark.ssh
def test_deploy_killed_at_random_moments_leaves_the_old_or_the_new_program(tmp_path):
    from edge_mnv1.emulators.sshd import SshServer

    arts = []
    for seed in (1, 2):  # two artifacts whose programs differ (their weights do)
        arts.append(tmp_path / f"rpi4-{seed}")
        cli("compile", tiny_onnx(tmp_path, seed), "--target", "rpi4", "-o", arts[-1])
    want = {a: (sha(a / "program"), sha(a / "manifest.json")) for a in arts}
    programs = {p for p, _ in want.values()}
    manifests = {m for _, m in want.values()}
    assert len(programs) == 2
    rng = random.Random(21)
    with SshServer(name="crash") as pi:
        url = pi.url("crash")
        d = pi.home / "crash"
        assert cli_json("deploy", arts[0], "--device", url)["passed"]
        # Measure a deploy that replaces both files: its whole time, and the time from the
        # first upload on (the moments that matter most: uploads, renames, the hello).
        log = tmp_path / "deploy-0.log"
        t0 = time.monotonic()
        proc = start("deploy", arts[1], "--device", url, stderr=log.open("wb"))
        t_upload = wait_for_line(proc, log, "uploading program")
        assert proc.wait(timeout=300) == 0, log.read_text()[-2000:]
        whole_run, tail = time.monotonic() - t0, time.monotonic() - t_upload
        kills = leftovers = 0
        for k in range(DEPLOY_KILLS):
            art = arts[k % 2]  # the one that is not there: every deploy has work to do
            log = tmp_path / f"deploy-{k + 1}.log"
            t0 = time.monotonic()
            proc = start("deploy", art, "--device", url, stderr=log.open("wb"))
            if k % 2:  # any moment of the run
                kills += kill_at(proc, rng.uniform(0, whole_run), t0)
            else:      # a moment once the uploads have begun
                origin = wait_for_line(proc, log, ": uploading ")
                kills += kill_at(proc, rng.uniform(0, tail), origin) if origin < float("inf") \
                    else 0
            # The device holds one whole program and manifest of the two, nothing else but
            # the temporary file of an upload that was cut.
            names = sorted(p.name for p in d.iterdir())
            assert "program" in names and "manifest.json" in names, names
            assert sha(d / "program") in programs and sha(d / "manifest.json") in manifests
            assert os.access(d / "program", os.X_OK)
            stray = [n for n in names if n not in ("program", "manifest.json")]
            assert all(PART.match(n) for n in stray), stray
            leftovers = max(leftovers, len(stray))
        # The next deploy completes it: the artifact's files, checked by its hello.
        for art in arts[::-1]:
            r = cli_json("deploy", art, "--device", url)
            assert r["passed"] and r["hello"]["model"]
            assert (sha(d / "program"), sha(d / "manifest.json")) == want[art]
        assert kills >= DEPLOY_KILLS // 2
        print(f"deploy: {kills} kills of {DEPLOY_KILLS} runs (run {whole_run:.1f} s, uploads "
              f"on {tail:.1f} s); at most {leftovers} temporary files left by a kill")


# ---- parity --------------------------------------------------------------------------------

def test_parity_killed_midway_leaves_a_report_that_says_partial(tmp_path):
    art = tmp_path / "host"
    cli("compile", tiny_onnx(tmp_path), "--target", "host", "-o", art)
    # A device that takes ~40 ms a request (every message held 10 ms), so a kill lands midway.
    slow = "faults:delay=1,delay_s=0.01+local"

    def parity(report: Path, log: Path) -> subprocess.Popen:
        return start("parity", art, "--device", slow, "--data", "digits", "--limit", 200,
                     "--report", report, "--json", stderr=log.open("wb"))

    def report_of(d: Path) -> dict:
        r = json.loads((d / "report.json").read_text())
        assert (("PARTIAL" in (d / "summary.txt").read_text()) == r["partial"])
        return r

    def wait_for_report(proc, d: Path) -> float:
        while not (d / "report.json").exists():
            assert proc.poll() is None, "parity ended without a report"
            time.sleep(0.01)
        return time.monotonic()

    rng = random.Random(22)
    proc = parity(tmp_path / "rep-0", tmp_path / "parity-0.log")
    origin = wait_for_report(proc, tmp_path / "rep-0")
    assert report_of(tmp_path / "rep-0")["partial"]  # running: partial from the start
    assert proc.wait(timeout=600) == 0, (tmp_path / "parity-0.log").read_text()[-2000:]
    run_time = time.monotonic() - origin
    done = report_of(tmp_path / "rep-0")
    assert not done["partial"] and done["completed"] == done["requested"] == 200
    def wait_for_progress(proc, d: Path) -> float:
        """When the running report first counts an input done: the device loop has begun."""
        while proc.poll() is None and not json.loads((d / "report.json").read_text())["completed"]:
            time.sleep(0.01)
        return time.monotonic()

    seen = set()
    for k in range(1, PARITY_KILLS + 1):
        d = tmp_path / f"rep-{k}"
        proc = parity(d, tmp_path / f"parity-{k}.log")
        origin = wait_for_report(proc, d)
        if k % 2:  # any moment of the run
            killed = kill_at(proc, rng.uniform(0.1, 0.9) * run_time, origin)
        else:      # inside the device loop (which a busy machine's slow reference could hide)
            killed = kill_at(proc, rng.uniform(0, 1), wait_for_progress(proc, d))
        r = report_of(d)
        if r["partial"]:
            assert killed and not r["passed"]
            k_done = r["completed"]
            # All 200 done but killed before the final report: still (rightly) partial.
            assert 0 <= k_done <= 200 and r["requested"] in (200, None)
            seen.add(k_done)
        else:  # finished (a kill can land after the last write, while the process exits)
            assert r["completed"] == 200 and (d / "outputs.npz").is_file()
    # Killed after the reference and in the device loop alike (the report counts as it goes).
    assert any(k > 0 for k in seen), seen
    print(f"parity: kills after {sorted(seen)} of 200 inputs (run {run_time:.1f} s)")
    # A rerun into a directory holding a complete report marks it partial at once.
    rep = tmp_path / "rep-0"
    proc = parity(rep, tmp_path / "parity-again.log")

    def says_running() -> bool:  # both files rewritten (report.json goes first)
        return "PARTIAL" in (rep / "summary.txt").read_text() and \
            json.loads((rep / "report.json").read_text()).get("finished") is False

    while not says_running() and proc.poll() is None:
        time.sleep(0.01)
    # The run takes seconds: it is still going when its first report appears, and killed there.
    assert kill_at(proc, 0, time.monotonic()), "the rerun ended before its report said partial"
    r = report_of(rep)
    assert r["partial"] and r.get("finished") is False and not r["passed"] and r["completed"] < 200
