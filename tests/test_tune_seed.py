"""`tune` starts from the default schedules: every kernel with a default has it on record once,
as a MetaSchedule record that replays to exactly the kernel an untuned compile builds, and
that the evolutionary search can replay (its postprocs included) and mutate around."""

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def host(digits_onnx):
    """(resolved host target, fused module, extracted tasks) of the digits 0.25/64 model."""
    import tvm.s_tir.meta_schedule as ms

    from edge_mnv1.artifact.target import load_target
    from edge_mnv1.compiler import frontend, lowering
    from edge_mnv1.compiler.tvm_target import resolve
    from edge_mnv1.onnxio.model_file import load_onnx

    target = load_target("host")
    resolved = resolve(target)
    relax_mod, _, _ = frontend.import_model(load_onnx(digits_onnx, one_input_output=True),
                                            str(digits_onnx), target)
    layout, prepack = lowering.layout_for(target, False)
    fused = lowering.fuse(relax_mod, resolved.tvm_target, layout=layout, prepack=prepack)
    return resolved, fused, ms.relax_integration.extract_tasks(fused, resolved.tvm_target)


@pytest.fixture(scope="module")
def seeded(host, digits_onnx, tmp_path_factory):
    """`tune --trials 1`: the seeds count as trials, so this run measures the seeds alone."""
    from edge_mnv1.artifact.target import load_target
    from edge_mnv1.compiler.tuning.tune import tune

    root = tmp_path_factory.mktemp("seed-tuning")
    return tune(digits_onnx, load_target("host"), trials=1, minutes=10, tuning_root=root)


def expected_seeds(host) -> dict:
    from edge_mnv1.compiler.tuning import seed

    resolved, _, tasks = host
    made = {t.task_name: seed.default_seed(i, t.task_name, t.dispatched[0], resolved.tvm_target)
            for i, t in enumerate(tasks)}
    return {name: s for name, s in made.items() if isinstance(s, seed.Seed)}


def test_every_default_is_seeded_once(host, seeded):
    from pathlib import Path

    from edge_mnv1.compiler.tuning import records, seed

    resolved, _, tasks = host
    seeds = expected_seeds(host)
    # Every MobileNetV1 kernel class has a default; only the layout transposes do not.
    assert all("transpose" in t.task_name for t in tasks if t.task_name not in seeds)
    assert len(seeds) >= len(tasks) - 2
    assert seeded["trials_before"] == 0 and seeded["trials_after"] == len(seeds)
    db = records.open_database(Path(seeded["records_dir"]))
    for s in seeds.values():
        top = db.get_top_k(db.commit_workload(s.mod), 5)
        assert len(top) == 1 and float(top[0].run_secs[0]) > 0
    # A rerun (or a resumed run) finds them all on record and measures none again.
    assert seed.plan(tasks, resolved.tvm_target, db) == []


def test_seed_records_replay_to_the_default_kernels(host, seeded):
    from pathlib import Path

    from tvm_ffi import structural_equal

    from edge_mnv1.compiler import lowering
    from edge_mnv1.compiler.tuning import records

    resolved, fused, _ = host
    tuned, applied = lowering.apply_database(fused, resolved.tvm_target,
                                             records.open_database(Path(seeded["records_dir"])))
    assert len(applied) == len(expected_seeds(host))
    for name in applied:
        func = tuned[name]
        for mark in ("tirx.is_scheduled", "tir.is_scheduled"):
            if mark in func.attrs:
                func = func.without_attr(mark)
        assert structural_equal(func, lowering.default_schedule_for(fused[name],
                                                                    resolved.tvm_target)), name


def test_search_replays_a_seed_and_leaves_it_whole(host, tmp_path):
    import tvm.s_tir as s_tir
    import tvm.s_tir.meta_schedule as ms

    resolved, _, tasks = host
    for seed in [s for s in expected_seeds(host).values() if "conv2d" in s.name][:2]:
        ctx = ms.relax_integration.extracted_tasks_to_tune_contexts(
            [tasks[seed.task]], work_dir=str(tmp_path), space="post-order-apply",
            strategy="evolutionary", num_threads=1, seed=0)[0][0]
        # As PickBestFromDatabase replays it: without its postproc part (the weight
        # prepacking), then the search's postprocs, RewriteLayout among them.
        sch = s_tir.Schedule(seed.mod)
        seed.trace.apply_to_schedule(sch, remove_postproc=True)
        sch.enter_postproc()
        assert all(p.apply(sch) for p in ctx.space_generator.postprocs), seed.name
        # RewriteLayout laid the weights out for the loop nest in the seed's place.
        assert "meta_schedule.layout_rewrite_preproc" in sch.mod.script()
        # No mutator finds a decision to change: the search cannot turn it into a trace that
        # fails to replay (which would end the whole search).
        assert all(m.apply(seed.trace) is None for m in ctx.space_generator.mutator_probs)

