"""edge-mnv1 profile ARTIFACT_DIR --device URL [--runs N] [--report DIR]"""

HELP = ("per-kernel-call times on a device, with each call's multiply-adds, share of the "
        "total and MACs per tick (GMAC/s when the device counts nanoseconds)")


def add_arguments(p):
    p.add_argument("artifact", metavar="ARTIFACT_DIR")
    p.add_argument("--device", "-d", default="local", metavar="URL",
                   help="device URL (default: local)")
    p.add_argument("--runs", type=int, default=10, metavar="N",
                   help="inferences to sum the per-call ticks over (default 10)")
    p.add_argument("--no-count", action="store_true",
                   help="do not count each call's instructions under the target's qemu "
                        "(aarch64 targets; docs/performance.md)")
    p.add_argument("--report", metavar="DIR", help="write report.json, summary.txt and "
                                                   "profile.png to DIR")


def run(args) -> dict:
    from edge_mnv1.evaluation.profile import profile

    return profile(args.artifact, args.device, runs=args.runs, report_dir=args.report,
                   count=not args.no_count)
