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

import os
import shutil
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
from edge_mnv1.errors import UsageError
from edge_mnv1.artifact.target import Target
from edge_mnv1.compiler import frontend, lowering
from edge_mnv1.compiler.tuning import records
from edge_mnv1.compiler.tvm_target import resolve


# Candidates measured per search round. The evolutionary search costs about as much for 32
# candidates as for 16 (~20 s a round for a 1.0/224 conv on 2 cores, far more than
# measuring them), so 32 nearly doubles the trials that fit in a time budget.
TRIALS_PER_ITER = 32


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

    def __init__(self, bar, weights, deadline, best):
        super().__init__()
        self.bar, self.weights, self.deadline, self.best = bar, weights, deadline, best

    def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
        for r in runner_results:
            if r.run_secs and not r.error_msg:
                secs = sum(float(s) for s in r.run_secs) / len(r.run_secs)
                if secs < self.best.get(task_id, float("inf")):
                    self.best[task_id] = secs
        self.bar.update(len(runner_results))
        covered = len(self.best)
        est = sum(self.weights[t] * s for t, s in self.best.items()) * 1e3
        self.bar.set_postfix_str(f"best est. {est:.3f} ms over {covered}/{len(self.weights)} kernels")
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


def tune(model_path: str | Path, target: Target, *, trials: int, minutes: float,
         rpc: str | None = None, tracker: str | None = None, key: str | None = None,
         tuning_root: Path | None = None, seed: int = 0, measure: str | None = None) -> dict:
    from tqdm import tqdm

    model_path = Path(model_path)
    model = frontend.load_onnx(model_path)
    meta = frontend.model_metadata(model)
    shape = frontend.input_shape(model)
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
    # The runner's worker processes inherit this: TVM would otherwise use one thread here.
    threads = target.threads if target.threads > 0 else len(os.sched_getaffinity(0))
    os.environ.setdefault("TVM_NUM_THREADS", str(threads))

    relax_mod, dtype, int_model = frontend.import_model(model)
    layout, prepack = lowering.layout_for(target, int_model is not None)
    key_name = records.model_key(meta, shape, dtype, model_path.read_bytes(), layout)
    rec_dir = records.records_dir(resolved.cpu_key, key_name, tuning_root)
    rec_dir.mkdir(parents=True, exist_ok=True)
    done = records.repair_database(rec_dir)
    remaining = max(0, trials - done)
    log.info(f"tune: {key_name} for {resolved.cpu_key}: {done} trials on record in {rec_dir}, "
             f"{remaining} to go (budget {trials} trials, {minutes:g} min)")

    fused = lowering.fuse(relax_mod, resolved.tvm_target, fold_constants=int_model is None,
                          layout=layout, prepack=prepack)
    tasks = ms.relax_integration.extract_tasks(fused, resolved.tvm_target)
    if not tasks:
        raise UsageError("no tunable kernels found in the model")
    result = {"records_dir": str(rec_dir), "cpu_key": resolved.cpu_key, "model_key": key_name,
              "measure": measure,
              "tasks": len(tasks), "trials_before": done, "trials_budget": trials}
    t0 = time.time()
    stopped = "trials"
    if remaining > 0:
        db = records.open_database(rec_dir)
        ctxs, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
            tasks, work_dir=str(rec_dir / "logs"), space="post-order-apply",
            strategy="evolutionary", num_threads=threads, seed=seed)
        if measure == "icount":  # instructions under qemu-aarch64, not seconds (icount_runner.py)
            from edge_mnv1.compiler.tuning.icount_runner import IcountRunner, export_object

            builder, runner = InProcessBuilder(export_object), IcountRunner(target)
        else:
            builder = InProcessBuilder(_export_for(resolved.triple))
            runner = _runner(rpc, tracker, key, threads)
        best: dict = {}
        deadline = t0 + minutes * 60
        with tqdm(total=remaining, desc="tune", unit="trial", file=__import__("sys").stderr) as bar:
            callbacks = ms.measure_callback.MeasureCallback.create("default") + \
                [Progress(bar, [float(w) for w in weights], deadline, best)]
            try:
                ms.tune.tune_tasks(tasks=ctxs, task_weights=weights, work_dir=str(rec_dir / "logs"),
                                   max_trials_global=remaining, num_trials_per_iter=TRIALS_PER_ITER,
                                   builder=builder, runner=runner, database=db,
                                   measure_callbacks=callbacks)
            except Exception as e:
                # Through tvm-ffi the callback's TuningTimeUp may arrive as a bare RuntimeError.
                if "TuningTimeUp" not in f"{type(e).__name__} {e}" and time.time() <= deadline:
                    raise
                stopped = "time"
            finally:
                if measure == "icount":
                    runner.close()
        shutil.rmtree(rec_dir / "logs", ignore_errors=True)
        result["best_estimate_ms"] = round(sum(float(weights[t]) * s for t, s in best.items()) * 1e3, 4)
    result["trials_after"] = records.repair_database(rec_dir)
    result["stopped_by"] = stopped if remaining > 0 else "already done"
    result["seconds"] = round(time.time() - t0, 1)
    return result
