"""edge-mnv1 parity ARTIFACT_DIR --device URL... --data digits|photos|DIR [--report DIR]"""

HELP = ("run real inputs on one or more devices and through the host references (PyTorch when "
        "the checkpoint is known, ONNX Runtime always) and check that the outputs agree")


def add_device_arguments(p, several: bool = True):
    if several:
        p.add_argument("--device", "-d", action="append", metavar="URL",
                       help="device URL, repeatable: local, emulated, ssh://user@host[:port]"
                            "[/dir], serial:///dev/ttyX?baud=N, socket://host:port, "
                            "rfc2217://host:port (default: local)")
        p.add_argument("--devices", metavar="FILE",
                       help="a file of device URLs, one per line (# comments); run in parallel")
    else:
        p.add_argument("--device", "-d", default="local", metavar="URL",
                       help="device URL (default: local)")


def add_arguments(p):
    p.add_argument("artifact", metavar="ARTIFACT_DIR")
    add_device_arguments(p)
    p.add_argument("--data", required=True, metavar="digits|photos|DIR|random",
                   help="inputs: digits (the test split), digits:N, photos, a folder of "
                        "images (one subfolder per class for accuracy), or random[:N] (seeded "
                        "random inputs); fitted to the model's input shape")
    p.add_argument("--limit", type=int, metavar="N", help="use the first N inputs only")
    p.add_argument("--report", metavar="DIR",
                   help="write report.json, summary.txt, outputs.npz and plots to DIR")
    p.add_argument("--checkpoint", metavar="CKPT",
                   help="the PyTorch reference's checkpoint (default: the one the model's "
                        "metadata names, if it is on this machine)")
    p.add_argument("--reference", choices=("pytorch", "onnxruntime", "integer"),
                   help="judge by this reference (default: PyTorch when the checkpoint is "
                        "known, else ONNX Runtime). integer: the exact integer reference of an "
                        "int8 model (edge_mnv1/quant/); the device must match it exactly")
    p.add_argument("--max-abs-error", type=float, metavar="X",
                   help="largest allowed |device - reference| (default: 1e-4 for float32 "
                        "outputs; int8: 0 against the integer reference, only reported "
                        "against float references)")
    p.add_argument("--min-top1", type=float, metavar="F",
                   help="smallest allowed top-1 agreement (default: 1.0 for float32)")
    p.add_argument("--min-cosine", type=float, metavar="C",
                   help="smallest allowed per-input cosine similarity (default: 0.9999 for "
                        "float32)")


def run(args) -> dict:
    from edge_mnv1.evaluation import fleet
    from edge_mnv1.evaluation.parity import parity

    urls = fleet.device_urls(args.device, args.devices)
    return parity(args.artifact, urls, args.data, limit=args.limit, report_dir=args.report,
                  checkpoint=args.checkpoint, max_abs_error=args.max_abs_error,
                  min_top1=args.min_top1, min_cosine=args.min_cosine,
                  reference=args.reference)
