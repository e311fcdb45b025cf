"""edge-mnv1 compile MODEL.onnx --target T -o DIR"""

import time
from pathlib import Path

from edge_mnv1 import log

HELP = ("compile an ONNX model for a target into an artifact (kernels, static memory plan, "
        "weights, manifest) and build its device program")


def add_arguments(p):
    p.add_argument("model", metavar="MODEL.onnx", help="a MobileNetV1-family model: from `edge-mnv1 export`, "
                   "`edge-mnv1 quantize`, or your own exporter (any H x W, any channels, "
                   "static or dynamic batch; docs/parity.md)")
    p.add_argument("--target", "-t", required=True,
                   help="target name (a file under targets/) or a path to a target .toml")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="artifact directory")
    p.add_argument("--untuned", action="store_true",
                   help="ignore tuning records (to compare against the tuned build)")
    p.add_argument("--emit", choices=["llvm", "c"], default=None,
                   help="kernels as an LLVM object file or as C for the target's compiler "
                        "(default: the target file's choice)")
    p.add_argument("--no-build", action="store_true", help="write the artifact only")
    p.add_argument("--patches", metavar="auto|off|PxP@K", default=None,
                   help="run the first K spatial layers in P x P tiles of layer K's output "
                        "(halos recomputed) so the arena shrinks below the layer-by-layer "
                        "bound; auto searches P and K within 10%% more MACs (default: the "
                        "target file's [compile] patches, auto on the MCU targets)")
    p.add_argument("--sanitize", metavar="LIST",
                   help="build the Linux program with sanitizers, e.g. address,undefined "
                        "(ASan + UBSan; for tests, not for timing; recorded in the manifest)")


def run(args) -> dict:
    from edge_mnv1.compiler.driver import compile_artifact, finish_manifest
    from edge_mnv1.errors import UsageError
    from edge_mnv1.artifact.build import build_program, check_sanitize
    from edge_mnv1.artifact.target import load_target
    from edge_mnv1.artifact import budget

    t0 = time.time()
    target = load_target(args.target)
    out = Path(args.output)
    if args.sanitize:
        if args.no_build:
            raise UsageError("--sanitize applies to the program: drop --no-build")
        args.sanitize = check_sanitize(target, args.sanitize)  # refused before compiling
    art = compile_artifact(args.model, target, out, use_records=not args.untuned,
                           emit_kind=args.emit, patches=args.patches)
    report = budget.check(art)  # refuses (exit 1) before building if it cannot fit
    program = None
    if not args.no_build:
        log.info(f"compile: building the device program with CMake for {target.name}")
        program = build_program(target, out, sanitize=args.sanitize or "")
        report = budget.check(art, program)
    finish_manifest(art, {"compile_seconds": round(time.time() - t0, 1), "budget": report,
                          "sanitize": args.sanitize or None})
    return _result(art, program)


def _result(art, program: Path | None) -> dict:
    """The verb's result and text, from the finished manifest."""
    from edge_mnv1.artifact.budget import describe

    m = art.manifest
    mem, report, sanitize = m.memory, m["budget"], m["sanitize"]
    text = (f"artifact {art.path} for {m.target_name}: {len(m.kernels)} kernel calls, "
            f"{m.total_macs / 1e6:.2f}M MACs\n"
            f"  arena {mem['arena_bytes']:,} B (liveness bound {mem['liveness_lower_bound']:,} B, "
            f"sum of all tensors {mem['sum_of_activations']:,} B), workspace "
            f"{mem['workspace_bytes_per_thread']:,} B x {mem['workspace_threads']}, weights "
            f"{mem['weight_bytes']:,} B\n"
            f"  tuning records applied to {len(m.tuning['applied'])} kernels, "
            f"{len(m.tuning['untuned'])} untuned\n"
            + (describe(report) + "\n" if report else "")
            + (f"  program: {program}" if program else "  (not built: --no-build)")
            + (f" (sanitizers: {sanitize}; for tests, not for timing)" if sanitize else ""))
    return {"artifact": str(art.path), "target": m.target_name,
            "program": str(program) if program else None,
            "arena_bytes": mem["arena_bytes"], "liveness_lower_bound": mem["liveness_lower_bound"],
            "weight_bytes": mem["weight_bytes"], "workspace_bytes": mem["workspace_bytes_per_thread"],
            "kernels": len(m.kernels), "macs": m.total_macs,
            "tuning_applied": len(m.tuning["applied"]), "budget": report,
            "compile_seconds": m["compile_seconds"], "sanitize": sanitize,
            "text": text}
