"""edge-mnv1 fuzz [--seconds N] [--runs N] [--jobs J] [--work DIR] [--json]
edge-mnv1 fuzz --replay FILE|DIR ... [--work DIR]"""

HELP = ("fuzz the device runtime's frame parser and request handler with libFuzzer (ASan + "
        "UBSan, a real compiled model), or replay inputs through it")


def add_arguments(p):
    p.add_argument("--seconds", type=float, metavar="N",
                   help="stop after N seconds (default 60 unless --runs is given)")
    p.add_argument("--runs", type=int, metavar="N", help="stop after N executions")
    p.add_argument("--work", default="runs/fuzz", metavar="DIR",
                   help="work directory: the model, the target, seeds, the growing corpus and "
                        "crashes (default runs/fuzz; kept between runs)")
    p.add_argument("--seed", type=int, default=0, help="libFuzzer's random seed (default 0)")
    p.add_argument("--jobs", type=int, default=1, metavar="J",
                   help="fuzzers side by side on one corpus (default 1); --runs is their total")
    p.add_argument("--replay", nargs="+", metavar="FILE",
                   help="run these inputs (files or directories) once each instead of fuzzing; "
                        "fails if any crashes (e.g. tests/fuzz_regressions)")


def run(args) -> dict:
    from pathlib import Path

    from edge_mnv1.evaluation import fuzzing
    from edge_mnv1.errors import UsageError

    if args.seconds is not None and args.seconds <= 0:
        raise UsageError(f"--seconds {args.seconds}: give a positive number of seconds")
    if args.runs is not None and args.runs <= 0:
        raise UsageError(f"--runs {args.runs}: give a positive number of executions")
    if args.jobs < 1:
        raise UsageError(f"--jobs {args.jobs}: give 1 or more")
    if args.replay:
        return fuzzing.replay(Path(args.work), args.replay)
    return fuzzing.fuzz(Path(args.work), seconds=args.seconds, runs=args.runs, seed=args.seed,
                        jobs=args.jobs)
