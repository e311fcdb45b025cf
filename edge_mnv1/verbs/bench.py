"""edge-mnv1 bench ARTIFACT_DIR --device URL... [--runs N] [--warmup W] [--report DIR]"""

from edge_mnv1.verbs.parity import add_device_arguments

HELP = ("time the model on one or more devices (the device's own clock or counter) beside "
        "ONNX Runtime and PyTorch eager on this machine, measured in the same run")


def add_arguments(p):
    p.add_argument("artifact", metavar="ARTIFACT_DIR")
    add_device_arguments(p)
    p.add_argument("--runs", type=int, default=50, metavar="N",
                   help="timed runs (default 50); median, p10 and p90 are reported")
    p.add_argument("--rounds", type=int, default=1, metavar="K",
                   help="split the runs into K rounds of (devices, then ONNX Runtime and "
                        "PyTorch), one after the other: on a shared machine the load drifts, "
                        "and rounds let both sides see the same drift; each round's ratio is "
                        "reported (default 1)")
    p.add_argument("--warmup", type=int, default=5, metavar="W",
                   help="untimed runs first (default 5)")
    p.add_argument("--threads", type=int, default=2, metavar="T",
                   help="threads for ONNX Runtime and PyTorch on this machine (default 2)")
    p.add_argument("--checkpoint", metavar="CKPT",
                   help="checkpoint for the PyTorch time (default: the one the model names; "
                        "else the same network with random weights)")
    p.add_argument("--no-host", action="store_true",
                   help="time the devices only, not ONNX Runtime and PyTorch on this machine")
    p.add_argument("--no-count", action="store_true",
                   help="do not count instructions per inference under the target's qemu "
                        "(aarch64 targets; docs/performance.md)")
    p.add_argument("--versus", metavar="ARTIFACT_DIR",
                   help="also time this artifact (same target, e.g. the fp32 build of an int8 "
                        "model) on the same devices in the same run and report the ratio")
    p.add_argument("--report", metavar="DIR", help="write report.json, summary.txt and "
                                                   "latency.png to DIR")


def run(args) -> dict:
    from edge_mnv1.evaluation import fleet
    from edge_mnv1.evaluation.bench import bench

    urls = fleet.device_urls(args.device, args.devices)
    return bench(args.artifact, urls, runs=args.runs, warmup=args.warmup, threads=args.threads,
                 report_dir=args.report, checkpoint=args.checkpoint, host=not args.no_host,
                 count=not args.no_count, versus=args.versus,
                 rounds=args.rounds)
