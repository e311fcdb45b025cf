"""The default schedules as the tuner's starting point.

Before the search, every task whose kernel has a default schedule (compiler/schedules/) gets
that schedule measured and committed to the records database as an ordinary MetaSchedule
record, once per workload. Two things follow:
- compile picks the best record per kernel, so a tuned build is never slower than the
  defaults kernel by kernel (to measurement noise): the seed is one of the candidates;
- the evolutionary search starts from it: it takes part of its first population from the
  database's best records of each workload, replaying their traces and its postprocs, and
  ranks and measures its candidates against them.

For that the default schedule is written into a traced schedule of its own (`_SeedSchedule`)
in which the weight prepacking (prepack.request) comes after an EnterPostproc marker. The
search replays a trace without its postproc part and reruns its postprocs, whose RewriteLayout
lays the weights out for the loop nest (it fails on a kernel whose weights are already
rewritten: the seed would be dropped); compile replays the whole trace, i.e. exactly the
default schedule.

The seed is a member of the first population, not a design space: its tile is constant, so
MetaSchedule's mutators find nothing to change in it. Written as `sample_perfect_tile`
decisions, MutateTileSize did move the tile, but a tile factor mutated to 1 drops a unit loop
from the epilogue's nest (reverse_compute_at without unit loops), the trace's later
`get_loops` then returns fewer loops than recorded, and TVM 0.27 raises that replay error
out of the search's worker loop, which ends the whole search (seen on the classifier).

A kernel is seeded only when replaying its trace gives exactly what compile builds by
default: not the integer dot-product kernels (tensorized, on no trace) nor kernels that
`int8_kernels.finish_integer` rewrites after scheduling; kernels with no default class
(transposes) have nothing to seed. Those are logged and left to the search.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import tvm
import tvm.s_tir as s_tir
import tvm.s_tir.meta_schedule as ms
from tvm.s_tir.meta_schedule.builder import BuilderInput
from tvm.s_tir.meta_schedule.runner import RunnerInput
from tvm_ffi import structural_equal

from edge_mnv1 import log
from edge_mnv1.compiler import schedules
from edge_mnv1.compiler.tvm_target import vector_unit

# Seeds built and measured together: a kill between batches keeps the seeds measured so far.
BATCH = 4
DEVICE = "cpu"  # what the runners call an LLVM target's device (every tunable target is one)


class _SeedSchedule:
    """A traced s_tir.Schedule that writes the weight prepacking as postprocessing (see the
    module's docstring); everything else is passed through to the schedule unchanged."""

    def __init__(self, func):
        self.sch = s_tir.Schedule(func)
        self._postproc = False

    def __getattr__(self, name):
        return getattr(self.sch, name)

    def cache_read(self, *args, **kwargs):
        if not self._postproc:  # prepack.request's copy of the weights: RewriteLayout's job
            self.sch.enter_postproc()
            self._postproc = True
        return self.sch.cache_read(*args, **kwargs)


@dataclass
class Seed:
    task: int               # index into the extracted tasks
    name: str
    mod: tvm.IRModule       # the task's workload
    trace: s_tir.Trace
    scheduled: tvm.IRModule

    def trace_text(self) -> str:
        return _text(self.trace)


def default_seed(task_index: int, name: str, mod: tvm.IRModule,
                 tvm_target: tvm.target.Target) -> Seed | str:
    """The seed of one task, or why it has none."""
    made_in: list[_SeedSchedule] = []

    def new_schedule(func):
        made_in.append(_SeedSchedule(func))
        return made_in[-1]

    made = schedules.apply(mod["main"], vector_unit(tvm_target), new_schedule)
    if made is None:
        return "no default schedule of its class"
    if not made_in or made.kind.endswith("-int8"):
        return "tensorized (no trace to replay)"
    trace = made_in[-1].sch.trace
    replay = s_tir.Schedule(mod)
    trace.apply_to_schedule(replay, remove_postproc=False)
    if not structural_equal(replay.mod["main"], made.func):
        return "rewritten after scheduling (integer requantization)"
    return Seed(task_index, name, mod, trace, replay.mod)


def on_record(db, seed: Seed) -> bool:
    """Whether this exact seed was committed before (a rerun or a resumed tune)."""
    if not db.has_workload(seed.mod):
        return False
    mine = seed.trace_text()
    records = db.get_top_k(db.commit_workload(seed.mod), max(len(db), 1))
    return any(_text(r.trace) == mine for r in records)


def _text(trace: s_tir.Trace) -> str:
    """A trace as the Python that replays it, decisions included: the same text whether the
    trace was just made or read back from the database's JSON."""
    return "\n".join(trace.as_python())


def plan(tasks, tvm_target: tvm.target.Target, db) -> list[Seed]:
    """The seeds the database still lacks."""
    seeds, skipped, known = [], [], 0
    for i, task in enumerate(tasks):
        made = default_seed(i, task.task_name, task.dispatched[0], tvm_target)
        if isinstance(made, str):
            skipped.append(f"{task.task_name} ({made})")
        elif on_record(db, made):
            known += 1
        else:
            seeds.append(made)
    log.info(f"tune: seeds from the default schedules: {len(seeds)} to measure, {known} on "
             f"record, {len(skipped)} kernels without one" +
             (": " + ", ".join(skipped) if skipped else ""))
    return seeds


def measure_and_commit(seeds: list[Seed], builder, runner, db,
                       tvm_target: tvm.target.Target) -> dict[int, float]:
    """Measures each seed with the search's own builder and runner and commits it as a
    tuning record; returns seconds per task index (a seed that fails is logged, not kept)."""
    secs = {}
    for start in range(0, len(seeds), BATCH):
        batch = seeds[start:start + BATCH]
        built = builder.build([BuilderInput(s.scheduled, tvm_target) for s in batch])
        runs = []
        for s, b in zip(batch, built):
            if b.error_msg:
                log.info(f"tune: seed of {s.name} does not build: {b.error_msg[:300]}")
                continue
            args = ms.arg_info.ArgInfo.from_entry_func(s.scheduled, remove_preproc=True)
            runs.append((s, b.artifact_path, args))
        futures = runner.run([RunnerInput(a, DEVICE, args) for _, a, args in runs])
        for (s, artifact, args), future in zip(runs, futures):
            result = future.result()
            shutil.rmtree(Path(artifact).parent, ignore_errors=True)
            if result.error_msg or not result.run_secs:
                log.info(f"tune: seed of {s.name} failed to run: {str(result.error_msg)[:300]}")
                continue
            run_secs = [float(x) for x in result.run_secs]
            db.commit_tuning_record(ms.database.TuningRecord(
                s.trace, db.commit_workload(s.mod), run_secs, tvm_target, args))
            secs[s.task] = sum(run_secs) / len(run_secs)
    return secs
