"""`edge-mnv1 quantize`: float ONNX -> int8 QDQ ONNX, calibrated on real images, judged
by the integer reference (the arithmetic the devices perform) on held-out digits."""

HELP = "post-training int8 quantization (QDQ ONNX), checked by the exact integer reference"


def add_arguments(p):
    p.add_argument("model", metavar="MODEL.onnx", help="float model from `edge-mnv1 export`")
    p.add_argument("--calib", required=True, metavar="digits[:N]|DIR|X.npy",
                   help="calibration images: digits (training split), digits:N (its first N), "
                        "a folder of images, or preprocessed NCHW inputs in a .npy file")
    p.add_argument("--calib-limit", type=int, metavar="N", help="use at most N calibration images")
    p.add_argument("-o", "--output", required=True, metavar="MODEL-int8.onnx")
    p.add_argument("--eval", default="digits", metavar="digits|DIR",
                   help="held-out images for accuracy and top-1 agreement (default: digits' "
                        "test split)")


def run(args) -> dict:
    from pathlib import Path

    from edge_mnv1.errors import UsageError
    from edge_mnv1.onnxio.model_file import is_qdq, load_onnx, model_metadata
    from edge_mnv1.quant import calibrate, qdq
    from edge_mnv1.quant.evaluate import evaluate
    from edge_mnv1.quant.fixedpoint import SCHEME

    model = load_onnx(args.model, one_input_output=True)
    if is_qdq(model):
        raise UsageError(f"{args.model} is already quantized; quantize the float model")
    meta = model_metadata(model)
    calib = calibrate.calibration_inputs(args.calib, model, meta, args.calib_limit)
    qmodel = calibrate.quantize_model(args.model, calib, args.output, args.calib)
    int_model = qdq.from_onnx(qmodel)
    r = {"path": str(Path(args.output)), "calibration_images": int(len(calib)),
         "calibration_set": args.calib, "scheme": SCHEME,
         "input": int_model.input_q.to_dict(), "output": int_model.output_q.to_dict(),
         "integer_layers": len(int_model.layers)}
    r.update(evaluate(args.model, int_model, meta, args.eval))
    acc = (f"accuracy fp32 {r['accuracy_fp32']:.2%}, int8 {r['accuracy_int8']:.2%}, "
           if r["accuracy_fp32"] is not None else "")
    r["text"] = (f"{r['path']}: int8 QDQ, calibrated on {r['calibration_images']} images of "
                 f"{args.calib}; on {r['eval_images']} held-out images: {acc}top-1 agreement "
                 f"{r['top1_agreement']:.2%} (int8 = the integer reference)")
    return r
