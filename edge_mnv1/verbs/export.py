"""`edge-mnv1 export`: checkpoint -> ONNX, checked against PyTorch with ONNX Runtime."""

from edge_mnv1.onnxio.export import DEFAULT_OPSET, export

HELP = "export a checkpoint to ONNX (BN folded) and check it against PyTorch"


def add_arguments(p):
    p.add_argument("checkpoint", metavar="CKPT", help="checkpoint written by `edge-mnv1 train`")
    p.add_argument("-o", "--output", required=True, metavar="MODEL.onnx")
    p.add_argument("--batch", default="1", metavar="N|dynamic",
                   help="static batch size, or `dynamic` for a symbolic batch axis (default 1)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                   help=f"ONNX opset (default {DEFAULT_OPSET})")


def run(args) -> dict:
    r = export(args.checkpoint, args.output, batch=args.batch, opset=args.opset)
    r["text"] = (f"{r['path']}: opset {r['opset']}, batch {r['batch']}, "
                 f"{r['file_bytes']:,} bytes ({r['weight_bytes']:,} of weights); "
                 f"ONNX Runtime vs PyTorch on {r['checked_inputs']} digits: max abs error "
                 f"{r['max_abs_error_vs_torch']:.2g} (allowed {r['tolerance']:.2g}; PyTorch fp32 "
                 f"vs float64: {r['torch_fp32_error_vs_fp64']:.2g})")
    return r
