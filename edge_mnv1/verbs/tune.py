"""edge-mnv1 tune MODEL.onnx --target T [--trials N] [--minutes M] [--rpc H:P | --tracker H:P --key K | --measure icount]"""

HELP = ("auto-tune the model's kernels for a target with MetaSchedule; records are kept under "
        "compile/tuning/ and a rerun continues where an interrupted run stopped")


def add_arguments(p):
    p.add_argument("model", metavar="MODEL.onnx")
    p.add_argument("--target", "-t", required=True)
    p.add_argument("--trials", type=int, default=500,
                   help="total measured trials for this model and CPU, records on file included "
                        "(default 500)")
    p.add_argument("--minutes", type=float, default=30.0, help="time budget of this run (default 30)")
    p.add_argument("--rpc", metavar="HOST:PORT", help="measure on a board running TVM's RPC server")
    p.add_argument("--tracker", metavar="HOST:PORT", help="measure on boards behind a TVM RPC tracker")
    p.add_argument("--key", help="the device key boards registered with the tracker (e.g. rpi4)")
    p.add_argument("--measure", choices=("time", "icount"),
                   help="time: run candidates on this machine or the --rpc/--tracker board; "
                        "icount: count their instructions under qemu-aarch64 (the default for "
                        "aarch64 targets without --rpc/--tracker; docs/performance.md)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-settle", action="store_true",
                   help="skip timing each record against its default in the whole program "
                        "(done after the search when the target runs on this machine; "
                        "docs/performance.md)")


def run(args) -> dict:
    from edge_mnv1.errors import UsageError
    from edge_mnv1.artifact.target import load_target

    if args.trials < 1 or args.minutes <= 0:
        raise UsageError("--trials must be >= 1 and --minutes > 0")
    if args.rpc and args.tracker:
        raise UsageError("give either --rpc or --tracker, not both")
    from edge_mnv1.compiler.tuning.icount_runner import NOMINAL_HZ
    from edge_mnv1.compiler.tuning.tune import measures_here, tune
    from edge_mnv1.evaluation.settle import reserve_seconds

    target = load_target(args.target)
    settle = not args.no_settle and measures_here(target, args.rpc, args.tracker, args.measure)
    r = tune(args.model, target, trials=args.trials, minutes=args.minutes, rpc=args.rpc,
             tracker=args.tracker, key=args.key, seed=args.seed, measure=args.measure,
             reserve_seconds=reserve_seconds(args.minutes) if settle else 0.0)
    if settle:
        r["settle"] = _settle(args, target, r)
    r["text"] = (f"tuned {r['model_key']} for {r['cpu_key']}: {r['trials_after']} trials on record "
                 f"({r['trials_before']} before this run; stopped by {r['stopped_by']}) in "
                 f"{r['records_dir']}" + (f"; best estimate {r['best_estimate_ms']} ms"
                                          if "best_estimate_ms" in r else "")
                 + (f" (instructions at a nominal {NOMINAL_HZ / 1e9:g} GHz, one per cycle)"
                    if r.get("measure") == "icount" and "best_estimate_ms" in r else ""))
    return r


def _settle(args, target, r: dict) -> dict:
    """Each record against its default in the whole program, within what is left of the
    budget (`tune` stopped its search `reserve_seconds` early for this)."""
    import time
    from pathlib import Path
    from edge_mnv1.evaluation.settle import settle

    deadline = time.time() + args.minutes * 60 - r["seconds"]
    out = settle(Path(args.model), target, Path(r["records_dir"]), r["trials_after"], deadline)
    r["seconds"] = round(r["seconds"] + out["seconds"], 1)
    return out
