"""`edge-mnv1 tune`: MetaSchedule over the model's kernels, resumable, within budgets.

- Candidates are built in this process (TVM's LocalBuilder starts a fresh pool per batch
  that re-imports TVM: minutes per batch on this machine kind).
- Records go to compile/tuning/<cpu key>/<model key>/ as MetaSchedule's JSON database,
  one line per measured trial, appended as soon as it is measured: a kill -9 loses at most
  the line being written, which `records.repair_database` drops on the next start, and a rerun
  of the same command continues with the trials still owed.
- Measuring: this machine (LocalRunner), one RPC server (--rpc HOST:PORT) or a pool of
  boards behind TVM's RPC tracker (--tracker HOST:PORT --key K); for aarch64 targets without
  a board, instructions counted under qemu-aarch64 (--measure icount, icount_runner.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import tvm
import tvm.s_tir.meta_schedule as ms
from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
from tvm.s_tir.meta_schedule.builder.local_builder import default_build
from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback
from tvm.ir.utils import derived_object

from edge_mnv1 import log
from edge_mnv1.errors import ToolError, UsageError
from edge_mnv1.artifact.target import Target
from edge_mnv1.compiler import frontend, lowering
from edge_mnv1.onnxio.model_file import load_onnx, model_metadata
from edge_mnv1.compiler.tuning import records
from edge_mnv1.compiler.tuning import seed as seeding
from edge_mnv1.compiler.tvm_target import resolve


# Candidates measured per search round. The evolutionary search costs about as much for 32
# candidates as for 16 (~20 s a round for a 1.0/224 conv on 2 cores, far more than
# measuring them), so 32 nearly doubles the trials that fit in a time budget.
TRIALS_PER_ITER = 32
# The evolutionary search breeds and scores its whole population in C++ every round before a
# candidate is measured (512 by default: seconds per task and round). A round measures at most
# TRIALS_PER_ITER candidates of a task, and fewer when the run owes fewer: the population is
# kept POPULATION_PER_CANDIDATE times what the round may measure (a run owing a few trials per
# task spent 20 s of a 25 s tune of one conv breeding 512).
POPULATION_PER_CANDIDATE = 16
MIN_POPULATION, MAX_POPULATION = 64, 512


class TuningTimeUp(Exception):
    pass


def _export_for(target_triple: str):
    """How a candidate is packaged for the runner: a shared library for the board's CPU."""
    def export(rt_mod) -> str:
        path = os.path.join(tempfile.mkdtemp(prefix="em-tune-"), "candidate.so")
        if target_triple.startswith("aarch64"):
            from tvm.support import cc

            rt_mod.export_library(path, fcompile=cc.cross_compiler("aarch64-linux-gnu-g++"))
        else:
            rt_mod.export_library(path)
        return path
    return export


@derived_object
class InProcessBuilder(PyBuilder):
    """Builds each candidate right here; no worker pool, no re-import of TVM."""

    def __init__(self, export):
        super().__init__()
        self.export = export

    def build(self, build_inputs):
        results = []
        for bi in build_inputs:
            try:
                rt_mod = default_build(bi.mod, bi.target, None)
                results.append(BuilderResult(self.export(rt_mod), None))
            except Exception as e:  # a candidate that does not build is a failed trial
                results.append(BuilderResult(None, f"{type(e).__name__}: {str(e)[:500]}"))
        return results


@derived_object
class Progress(PyMeasureCallback):
    """Progress bar with the best estimated latency; stops cleanly when time is up."""

    def __init__(self, bar, weights, deadline, best, status: Path):
        super().__init__()
        self.bar, self.weights, self.deadline, self.best = bar, weights, deadline, best
        self.status = status

    def estimate_ms(self) -> float:
        return round(sum(self.weights[t] * s for t, s in self.best.items()) * 1e3, 4)

    def write_status(self, stopped: str) -> None:
        """What the parent reports: the child's best estimate so far and why it stopped."""
        tmp = self.status.with_suffix(".tmp")
        tmp.write_text(json.dumps({"best_estimate_ms": self.estimate_ms(), "stopped": stopped}))
        os.replace(tmp, self.status)

    def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
        for r in runner_results:
            if r.run_secs and not r.error_msg:
                secs = sum(float(s) for s in r.run_secs) / len(r.run_secs)
                if secs < self.best.get(task_id, float("inf")):
                    self.best[task_id] = secs
        self.bar.update(len(runner_results))
        self.bar.set_postfix_str(f"best est. {self.estimate_ms():.3f} ms over "
                                 f"{len(self.best)}/{len(self.weights)} kernels")
        self.write_status("trials")
        if time.time() > self.deadline:
            raise TuningTimeUp()


def _runner(rpc: str | None, tracker: str | None, key: str | None, threads: int):
    evaluator = ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=50,
                                          enable_cpu_cache_flush=False)
    if tracker:
        host, port = _host_port(tracker, "--tracker")
        if not key:
            raise UsageError("--tracker needs --key (the device key the boards registered with)")
        cfg = ms.runner.RPCConfig(tracker_host=host, tracker_port=port, tracker_key=key,
                                  session_timeout_sec=60)
        return ms.runner.RPCRunner(rpc_config=cfg, evaluator_config=evaluator, max_workers=1)
    if rpc:
        host, port = _host_port(rpc, "--rpc")

        def connect(_cfg, host=host, port=port):
            from tvm import rpc as tvm_rpc

            return tvm_rpc.connect(host, port, session_timeout=60)

        # RPCConfig insists on tracker fields; a direct server ignores them.
        cfg = ms.runner.RPCConfig(tracker_host=host, tracker_port=port, tracker_key="direct",
                                  session_timeout_sec=60)
        return ms.runner.RPCRunner(rpc_config=cfg, evaluator_config=evaluator,
                                   f_create_session=connect, max_workers=1)
    # On this machine: every run starts with the kernel's weights and output flushed from
    # the caches (its input, the first argument, stays), as in a network whose 17 MB of
    # weights do not stay in cache between layers. Without it the tuner ranked kernels by
    # warm-cache times 16 % below what they took inside the network.
    local = ms.runner.EvaluatorConfig(number=1, repeat=5, min_repeat_ms=0,
                                      enable_cpu_cache_flush=True)
    return ms.runner.LocalRunner(evaluator_config=local, timeout_sec=30)


def _host_port(s: str, flag: str) -> tuple[str, int]:
    host, _, port = s.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"{flag} {s!r}: expected HOST:PORT")
    return host, int(port)


def _plan(model_path: Path, target: Target, rpc, tracker, measure):
    """Checks what can be measured where; returns (model, resolved target, measure)."""
    model = load_onnx(model_path, one_input_output=True)
    resolved = resolve(target)
    if resolved.triple.startswith(("thumb", "arm")) and not (rpc or tracker):
        raise UsageError(f"{target.name}: MCU kernels cannot be measured on this machine; "
                         "compile untuned, or tune a Linux target")
    measure = measure or ("icount" if resolved.triple.startswith("aarch64") and not (rpc or tracker)
                          else "time")
    if measure == "icount" and (rpc or tracker or not resolved.triple.startswith("aarch64")):
        raise UsageError("--measure icount counts aarch64 instructions under qemu-aarch64; it "
                         "takes no --rpc/--tracker and needs an aarch64 target")
    if measure != "icount" and resolved.triple.startswith("aarch64") and not (rpc or tracker):
        raise UsageError(f"{target.name} is an aarch64 board: measure on it through TVM's RPC "
                         "server (--rpc HOST:PORT), a tracker (--tracker HOST:PORT --key K), "
                         "or count instructions under qemu-aarch64 (--measure icount)")
    return model, resolved, measure


def measures_here(target: Target, rpc, tracker, measure) -> bool:
    """Whether candidates are timed on this machine, the one that runs the program."""
    return resolve(target).runs_here and not (rpc or tracker) and measure in (None, "time")


def tune(model_path: str | Path, target: Target, *, trials: int, minutes: float,
         rpc: str | None = None, tracker: str | None = None, key: str | None = None,
         tuning_root: Path | None = None, seed: int = 0, measure: str | None = None,
         reserve_seconds: float = 0.0) -> dict:
    """`reserve_seconds`: the search stops that much before the budget, for the caller's
    own step after it (evaluation/settle.py)."""
    t0 = time.time()  # the budget covers the whole command, TVM's own set-up included
    model_path = Path(model_path)
    model, resolved, measure = _plan(model_path, target, rpc, tracker, measure)
    lowering.load_intrinsics(resolved.tvm_target)  # what the rules and the records name
    meta = model_metadata(model)
    shape = frontend.input_shape(model)
    # The runner's worker processes inherit this: TVM would otherwise use one thread here.
    threads = target.threads if target.threads > 0 else len(os.sched_getaffinity(0))
    os.environ.setdefault("TVM_NUM_THREADS", str(threads))

    relax_mod, dtype, int_model = frontend.import_model(model, str(model_path), target)
    layout, prepack = lowering.layout_for(target, int_model is not None)
    key_name = records.model_key(meta, shape, dtype, model_path.read_bytes(), layout)
    rec_dir = records.records_dir(resolved.cpu_key, key_name, tuning_root)
    rec_dir.mkdir(parents=True, exist_ok=True)
    done = records.repair_database(rec_dir)
    remaining = max(0, trials - done)
    log.info(f"tune: {key_name} for {resolved.cpu_key}: {done} trials on record in {rec_dir}, "
             f"{remaining} to go (budget {trials} trials, {minutes:g} min)")

    fused = lowering.fuse(relax_mod, resolved.tvm_target, fold_constants=int_model is None,
                          layout=layout, prepack=prepack, fuse_depthwise=target.fuse_depthwise)
    tasks = ms.relax_integration.extract_tasks(fused, resolved.tvm_target)
    if not tasks:
        raise UsageError("no tunable kernels found in the model")
    result = {"records_dir": str(rec_dir), "cpu_key": resolved.cpu_key, "model_key": key_name,
              "measure": measure,
              "tasks": len(tasks), "trials_before": done, "trials_budget": trials}
    if remaining > 0:
        session = _Session(target, resolved, measure, rpc, tracker, key, threads)
        stopped, best_ms = session.run(tasks, rec_dir, remaining,
                                       t0 + minutes * 60 - reserve_seconds, seed)
        result["best_estimate_ms"] = best_ms
    result["trials_after"] = records.repair_database(rec_dir)
    result["stopped_by"] = stopped if remaining > 0 else "already done"
    result["seconds"] = round(time.time() - t0, 1)
    return result


class _Session:
    """One tuning run: builder, runner, progress, and a deadline kept to the second."""

    def __init__(self, target, resolved, measure, rpc, tracker, key, threads):
        self.target, self.resolved, self.measure, self.threads = target, resolved, measure, threads
        self.rpc, self.tracker, self.key = rpc, tracker, key
        self.runner = None

    def _make_builder_and_runner(self):
        """Made in the search child: the runner's worker pool must belong to it."""
        if self.measure == "icount":  # instructions under qemu-aarch64, not seconds (icount_runner.py)
            from edge_mnv1.compiler.tuning.icount_runner import IcountRunner, export_object

            self.runner = IcountRunner(self.target)
            return InProcessBuilder(export_object), self.runner
        self.runner = _runner(self.rpc, self.tracker, self.key, self.threads)
        return InProcessBuilder(_export_for(self.resolved.triple)), self.runner

    def run(self, tasks, rec_dir: Path, trials: int, deadline: float, seed: int):
        """Tunes until `trials` are measured or the deadline passes; returns (why it stopped,
        best estimated latency in ms).

        The search runs in a forked child that is killed at the deadline: a search round of
        the evolutionary search takes 20-30 s in C++ before any callback looks at the clock,
        and an exception raised into it aborts the process; MetaSchedule's set-up (a minute
        of CPU parsing its tensor intrinsics) happens in the child too, inside the budget. Killing the child is safe by
        design: every measured trial is on record as it is measured, a cut last line is
        dropped by `records.repair_database`."""
        status = rec_dir / "tune-status.json"
        status.unlink(missing_ok=True)
        pid = os.fork()
        if pid == 0:  # the child: never returns
            _die_with_parent()
            code = 0
            try:
                self._search(tasks, rec_dir, trials, deadline, seed, status)
            except BaseException:  # noqa: BLE001 - reported, then the child exits
                import traceback

                traceback.print_exc()
                code = 1
            finally:
                self._close_runner()
                sys.stderr.flush()
            os._exit(code)
        stopped = _wait_or_kill(pid, deadline)
        best = json.loads(status.read_text()) if status.is_file() else {}
        status.unlink(missing_ok=True)
        shutil.rmtree(rec_dir / "logs", ignore_errors=True)
        return stopped or best.get("stopped", "trials"), best.get("best_estimate_ms", 0.0)

    def _search(self, tasks, rec_dir: Path, trials: int, deadline: float, seed: int,
                status: Path) -> None:
        from tqdm import tqdm

        builder, runner = self._make_builder_and_runner()
        db = records.open_database(rec_dir)
        ctxs, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
            tasks, work_dir=str(rec_dir / "logs"), space="post-order-apply",
            strategy=search_strategy(trials, len(tasks)), num_threads=self.threads, seed=seed)
        # The default schedules first, measured like any candidate: the search starts from
        # them and compile keeps them where nothing beats them (seed.py). They count as trials.
        seeded = seeding.measure_and_commit(seeding.plan(tasks, self.resolved.tvm_target, db),
                                            builder, runner, db, self.resolved.tvm_target)
        trials -= len(seeded)
        progress = None
        with tqdm(total=max(trials, 0), desc="tune", unit="trial", file=sys.stderr) as bar:
            progress = Progress(bar, [float(w) for w in weights], deadline, seeded, status)
            progress.write_status("trials")
            if trials <= 0:
                return
            callbacks = ms.measure_callback.MeasureCallback.create("default") + [progress]
            try:
                ms.tune.tune_tasks(tasks=ctxs, task_weights=weights, work_dir=str(rec_dir / "logs"),
                                   max_trials_global=trials, num_trials_per_iter=TRIALS_PER_ITER,
                                   builder=builder, runner=runner, database=db,
                                   measure_callbacks=callbacks)
            except Exception as e:
                # Through tvm-ffi a TuningTimeUp may arrive as a bare RuntimeError.
                if "TuningTimeUp" not in f"{type(e).__name__} {e}" and time.time() <= deadline:
                    raise
                progress.write_status("time")

    def _close_runner(self) -> None:
        """Stops the runner's worker processes: a run stopped mid-round must not leave
        TVM's popen workers (0.5 GB each) behind."""
        if self.runner is None:
            return
        if self.measure == "icount":
            self.runner.close()
        pool = getattr(self.runner, "pool", None)
        if pool is not None:
            pool.shutdown(wait=False)


def search_strategy(trials: int, tasks: int) -> ms.search_strategy.EvolutionarySearch:
    """MetaSchedule's evolutionary search, its population sized by what a round may measure."""
    per_round = min(TRIALS_PER_ITER, max(1, trials // max(1, tasks)))
    population = min(MAX_POPULATION, max(MIN_POPULATION, POPULATION_PER_CANDIDATE * per_round))
    return ms.search_strategy.EvolutionarySearch(population_size=population)


def _die_with_parent() -> None:
    """A killed `tune` (Ctrl-C, kill -9) must not leave its search appending to the records."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _wait_or_kill(pid: int, deadline: float) -> str | None:
    """Waits for the search child; kills it at the deadline (returns "time" then). A Ctrl-C
    or SIGTERM here takes the child with it."""
    try:
        while True:
            done, code = os.waitpid(pid, os.WNOHANG)
            if done:
                if os.WIFSIGNALED(code) or os.WEXITSTATUS(code) != 0:
                    how = (f"signal {os.WTERMSIG(code)}" if os.WIFSIGNALED(code)
                           else f"exit {os.WEXITSTATUS(code)}")
                    raise ToolError(f"tune: the search stopped with {how} (its error is above); "
                                    "the trials measured so far are on record: rerun to go on")
                return None
            if time.time() >= deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return "time"
            time.sleep(0.2)
    except BaseException:
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        raise
