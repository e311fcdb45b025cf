"""`edge-mnv1 demo`: the chain so far, one report. Each stage is a function of a shared
context that returns its result; later stages (compile, deploy, parity) append to STAGES."""

import importlib.metadata
import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

from edge_mnv1.model import checkpoint, data
from edge_mnv1.errors import EdgeError
from edge_mnv1.onnxio.export import export
from edge_mnv1.onnxio.model_file import ort_session
from edge_mnv1.log import info
from edge_mnv1.model.network import ModelConfig, cost_summary
from edge_mnv1.onnxio.cost import graph_costs
from edge_mnv1.model.train import DEFAULT_EPOCHS, accuracy, train

HELP = ("the whole chain on emulated devices: train MobileNetV1 (alpha 0.25, 64x64) on digits, "
        "export, compile for rpi4, deploy over ssh to an emulated Pi, parity and bench, then "
        "Cortex-M7 firmware on QEMU over serial; one report")
CONFIG = ModelConfig(alpha=0.25, resolution=64, classes=10)
QUICK_EPOCHS = 6
MIN_ACCURACY = {False: 0.96, True: 0.85}  # test accuracy of the ONNX model (full / --quick)


def add_arguments(p):
    p.add_argument("--out", default="runs/demo", metavar="DIR",
                   help="where the model, the ONNX file and the report go (default runs/demo)")
    p.add_argument("--quick", action="store_true",
                   help=f"train {QUICK_EPOCHS} epochs instead of {DEFAULT_EPOCHS}")
    p.add_argument("--seed", type=int, default=0)


@dataclass
class Context:
    out: Path
    quick: bool
    seed: int
    config: ModelConfig = CONFIG
    results: dict = field(default_factory=dict)  # stage name -> its result

    @property
    def epochs(self) -> int:
        return QUICK_EPOCHS if self.quick else DEFAULT_EPOCHS

    @property
    def ckpt(self) -> Path:
        return self.out / "model.safetensors"

    @property
    def onnx(self) -> Path:
        return self.out / "model.onnx"


def stage_train(ctx: Context) -> dict:
    want = dict(config=ctx.config.to_dict(), data="digits", epochs=ctx.epochs, seed=ctx.seed)
    if ctx.ckpt.is_file():
        try:
            _, _, meta = checkpoint.read_metadata(ctx.ckpt)
        except EdgeError:
            meta = {}
        if {k: meta.get(k) for k in want} == want:
            info(f"demo: reusing {ctx.ckpt} (same config, data, epochs and seed)")
            return dict(meta, reused=True, checkpoint=str(ctx.ckpt),
                        summary=f"reused {ctx.ckpt}: test accuracy {meta['test_accuracy']:.2%}")
    r = train(ctx.config, "digits", ctx.ckpt, epochs=ctx.epochs, seed=ctx.seed)
    return dict(r, reused=False, summary=f"trained {ctx.epochs} epochs in "
                f"{r['train_seconds']:.0f} s: test accuracy {r['test_accuracy']:.2%}")


def stage_export(ctx: Context) -> dict:
    r = export(ctx.ckpt, ctx.onnx, batch="dynamic")
    return dict(r, summary=f"{ctx.onnx}: ONNX Runtime vs PyTorch max abs error "
                f"{r['max_abs_error_vs_torch']:.2g}")


def stage_check(ctx: Context) -> dict:
    """The ONNX model on the whole digits test split against PyTorch, and its MACs."""
    model, config, pp, _ = checkpoint.load_model(ctx.ckpt)
    x, y, _ = data.load_dataset("digits", config, pp, split="test")
    onnx_pred = ort_session(ctx.onnx).run(None, {"input": x})[0].argmax(1)
    torch_acc = accuracy(model, x, y)
    onnx_acc = float((onnx_pred == y).mean())
    macs, graph_macs = cost_summary(config)["macs"], graph_costs(ctx.onnx)["macs"]
    need = MIN_ACCURACY[ctx.quick]
    passed = onnx_acc >= need and onnx_acc == torch_acc and macs == graph_macs
    return dict(test_inputs=len(y), onnx_accuracy=onnx_acc, torch_accuracy=torch_acc,
                min_accuracy=need, cost_model_macs=macs, graph_macs=graph_macs, passed=passed,
                summary=f"ONNX {onnx_acc:.2%} vs PyTorch {torch_acc:.2%} on {len(y)} test "
                        f"digits (need >= {need:.0%}); {graph_macs:,} MACs in the graph, "
                        f"{macs:,} in the cost model")


def _verb(ctx: Context, *args) -> dict:
    """Runs a later stage through the CLI itself, as a user would, and reads its --json."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "edge_mnv1.cli", *map(str, args), "--json"]
    info("demo: $ edge-mnv1 " + " ".join(map(str, args)))
    r = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    try:
        out = json.loads(r.stdout)
    except json.JSONDecodeError:
        out = {}
    if r.returncode == 2 or (r.returncode != 0 and not out):
        raise EdgeError(f"edge-mnv1 {args[0]} failed (exit {r.returncode}): {out.get('error', '')}")
    out["passed"] = r.returncode == 0 and out.get("passed", True) is not False
    return out


def stage_compile(ctx: Context) -> dict:
    r = _verb(ctx, "compile", ctx.onnx, "--target", "rpi4", "-o", ctx.out / "rpi4")
    r["summary"] = (f"rpi4 artifact: arena {r['arena_bytes']:,} B (liveness bound "
                    f"{r['liveness_lower_bound']:,}), weights {r['weight_bytes']:,} B, "
                    f"{r['tuning_applied']} kernels from tuning records")
    return r


def stage_parity(ctx: Context) -> dict:
    """Over SSH to an emulated Raspberry Pi 4 (a real sshd; aarch64 under qemu)."""
    r = _verb(ctx, "parity", ctx.out / "rpi4", "--device", "emulated", "--data", "digits",
              "--limit", 100, "--report", ctx.out / "parity-rpi4")
    photos = _verb(ctx, "parity", ctx.out / "rpi4", "--device", "emulated", "--data", "photos",
                   "--report", ctx.out / "parity-rpi4-photos")
    r["photos"] = photos
    r["passed"] = r["passed"] and photos["passed"]
    r["summary"] = (f"emulated Pi over ssh, {r.get('n')} digits: top-1 agreement "
                    f"{r.get('top1_agreement')}, max abs error {r.get('max_abs_error', 0):.2g}; "
                    f"{photos.get('n')} photos: max abs error {photos.get('max_abs_error', 0):.2g}"
                    + ("" if r["passed"] else " FAILED"))
    return r


def stage_bench(ctx: Context) -> dict:
    r = _verb(ctx, "bench", ctx.out / "rpi4", "--device", "emulated", "--runs", 20,
              "--report", ctx.out / "bench-rpi4")
    r["summary"] = (f"emulated Pi median {r.get('device_median_ms')} ms (under qemu: not the "
                    f"board's time), ONNX Runtime here {r.get('onnxruntime_ms')} ms")
    return r


def stage_mcu(ctx: Context) -> dict:
    """The same model as Cortex-M7 firmware on QEMU's mps2-an500, over its UART."""
    c = _verb(ctx, "compile", ctx.onnx, "--target", "mps2-an500", "-o", ctx.out / "mps2-an500")
    r = _verb(ctx, "parity", ctx.out / "mps2-an500", "--device", "emulated", "--data",
              "digits", "--limit", 5, "--report", ctx.out / "parity-mps2-an500")
    r["compile"] = c
    r["summary"] = (f"Cortex-M7 firmware over serial, {r.get('n')} digits: top-1 agreement "
                    f"{r.get('top1_agreement')}, max abs error {r.get('max_abs_error', 0):.2g}"
                    + ("" if r["passed"] else " FAILED"))
    return r


STAGES = [("train", stage_train), ("export", stage_export), ("check", stage_check),
          ("compile", stage_compile), ("parity", stage_parity), ("bench", stage_bench),
          ("mcu", stage_mcu)]


def run(args) -> dict:
    ctx = Context(out=Path(args.out), quick=args.quick, seed=args.seed)
    ctx.out.mkdir(parents=True, exist_ok=True)
    error = None
    for name, stage in STAGES:
        info(f"demo: {name}")
        start = time.perf_counter()
        try:
            ctx.results[name] = stage(ctx)
        except EdgeError as e:  # record the failure in the report, then fail the command
            ctx.results[name] = dict(passed=False, error=str(e), summary=f"FAILED: {e}")
            error = e
        ctx.results[name]["seconds"] = round(time.perf_counter() - start, 2)
        if error:
            break
    report = write_report(ctx)
    if error:
        raise type(error)(f"{error} (report: {report['report_txt']})")
    return report


def write_report(ctx: Context) -> dict:
    passed = all(r.get("passed", True) for r in ctx.results.values())
    report = dict(passed=passed, out=str(ctx.out), config=ctx.config.to_dict(),
                  quick=ctx.quick, edge_mnv1=importlib.metadata.version("edge_mnv1"),
                  python=platform.python_version(),
                  stages=ctx.results,
                  report_json=str(ctx.out / "report.json"), report_txt=str(ctx.out / "report.txt"))
    lines = [f"edge-mnv1 demo: MobileNetV1 alpha {ctx.config.alpha:g}, "
             f"{ctx.config.resolution}x{ctx.config.resolution}, digits -> "
             + ("PASSED" if passed else "FAILED")]
    lines += [f"  {name:<7} {r['summary']} ({r['seconds']:.1f} s)"
              for name, r in ctx.results.items()]
    lines.append(f"report: {report['report_json']}, {report['report_txt']}")
    report["text"] = "\n".join(lines)
    (ctx.out / "report.json").write_text(json.dumps(
        {k: v for k, v in report.items() if k != "text"}, indent=2, default=str) + "\n")
    (ctx.out / "report.txt").write_text(report["text"] + "\n")
    return report
