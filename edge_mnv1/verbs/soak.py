"""edge-mnv1 soak ARTIFACT_DIR --device URL --requests N --faults SPEC [--json]"""

HELP = ("send many infer requests through a fault-injecting link and check every accepted "
        "output bit for bit against the device's fault-free output")


def add_arguments(p):
    p.add_argument("artifact", metavar="ARTIFACT_DIR")
    p.add_argument("--device", "-d", default="local", help="device URL (default: local)")
    p.add_argument("--requests", "-n", type=int, default=1000, metavar="N",
                   help="infer requests through the faulty link (default 1000)")
    p.add_argument("--faults", default="ber=1e-4,seed=0", metavar="SPEC",
                   help="fault rates, e.g. ber=1e-4,drop=1e-5,dup=1e-5,trunc=1e-4,delay=1e-3,"
                        "delay_s=0.2,seed=1 (per bit, per byte, per byte, per message, per "
                        "message; default ber=1e-4,seed=0)")
    p.add_argument("--inputs", type=int, default=8, metavar="K",
                   help="distinct seeded inputs, cycled (default 8)")
    p.add_argument("--timeout", type=float, metavar="S",
                   help="seconds per attempt (default: 5x the slowest clean request, at least "
                        "0.1)")
    p.add_argument("--retries", type=int, default=8, metavar="R",
                   help="resends of a request before it is reported failed (default 8)")
    p.add_argument("--seed", type=int, default=0, help="seed of the inputs (default 0)")


def run(args) -> dict:
    from edge_mnv1.device.faults import FaultSpec
    from edge_mnv1.evaluation.soak import soak

    return soak(args.artifact, args.device, args.requests, FaultSpec.parse(args.faults),
                inputs=args.inputs, timeout=args.timeout, retries=args.retries, seed=args.seed)
