"""`edge-mnv1 info`: the cost model's per-layer table, or the MACs counted from an ONNX graph
checked against the cost model for the config in its metadata."""

from pathlib import Path

from edge_mnv1.errors import UsageError
from edge_mnv1.onnxio.export import read_model_config
from edge_mnv1.model.network import ModelConfig, cost_summary
from edge_mnv1.onnxio.cost import graph_costs
from edge_mnv1.onnxio.model_file import load_onnx

HELP = "MACs and parameters per layer, from the configuration or from an exported ONNX model"
DEFAULTS = dict(alpha=1.0, resolution=224, classes=1000)  # the paper's baseline network


def add_arguments(p):
    p.add_argument("model", nargs="?", metavar="MODEL.onnx",
                   help="count MACs from this ONNX graph and compare with the cost model")
    p.add_argument("--alpha", type=float, help="width multiplier in (0, 1] (default 1.0)")
    p.add_argument("--resolution", type=int, help="input side in pixels, >= 32 (default 224)")
    p.add_argument("--classes", type=int, help="output classes (default 1000)")
    p.add_argument("--standard-conv", action="store_true",
                   help="full 3x3 convs instead of depthwise separable (paper Table 4)")


def run(args) -> dict:
    if args.model is not None and Path(args.model).is_dir():  # an artifact: its memory budget
        from edge_mnv1.artifact.artifact import Artifact
        from edge_mnv1.artifact.budget import artifact_budget

        art = Artifact.load(args.model)
        result = artifact_budget(art)
        patches = art.manifest.get("patches")
        if patches:
            result["patches"] = patches
            result["text"] += "\n" + patch_table(patches, art.manifest.memory)
        return result
    if args.model is not None:
        given = [f"--{k.replace('_', '-')}" for k in ("alpha", "resolution", "classes",
                                                      "standard_conv") if getattr(args, k)]
        if given:
            raise UsageError(f"{' '.join(given)} with {args.model}: an ONNX model's "
                             "configuration comes from its metadata; give one or the other")
        return onnx_info(args.model)
    config = ModelConfig(**{k: getattr(args, k) if getattr(args, k) is not None else v
                            for k, v in DEFAULTS.items()}, standard_conv=args.standard_conv)
    return config_info(config)


def config_info(config: ModelConfig) -> dict:
    s = cost_summary(config)
    s["text"] = _title(config) + "\n" + layer_table(s["layers"]) + "\n" + _totals(s)
    return s


def onnx_info(path) -> dict:
    proto = load_onnx(path)
    g = graph_costs(proto)
    try:
        config, pp = read_model_config(path)
    except UsageError:
        config = pp = None  # a foreign ONNX model: its graph can still be counted
    result = dict(path=str(path), graph_macs=g["macs"], graph_params=g["params"],
                  batch=g["batch"], graph_layers=g["layers"], macs=g["macs"])
    lines = [f"{path}: {len(g['layers'])} Conv/Gemm/MatMul nodes, batch {g['batch'] or 'dynamic'}",
             _graph_table(g["layers"]),
             f"graph: {g['macs']:,} MACs per input, {g['params']:,} weights and biases"]
    if config is None:
        result.update(config=None, agree=None)
        lines.append("no edge_mnv1 metadata: not compared with the cost model")
    else:
        s = cost_summary(config)
        macs_agree = s["macs"] == g["macs"] and \
            [r["macs"] for r in s["layers"] if r["macs"]] == [r["macs"] for r in g["layers"]]
        params_agree = s["params_folded"] == g["params"]
        result.update(config.to_dict(), config=config.to_dict(), preprocessing=pp.to_dict(),
                      params=s["params"], layers=s["layers"],
                      cost_model=dict(macs=s["macs"], params=s["params"],
                                      params_folded=s["params_folded"]),
                      agree=macs_agree and params_agree, passed=macs_agree and params_agree)
        lines += [_title(config),
                  f"cost model: {s['macs']:,} MACs, {s['params_folded']:,} weights and biases "
                  f"with BN folded ({s['params']:,} trainable parameters)",
                  "graph and cost model " + ("agree layer by layer" if result["agree"]
                                             else "DISAGREE")]
    result["text"] = "\n".join(lines)
    return result


def _title(c: ModelConfig) -> str:
    kind = "standard-conv MobileNet" if c.standard_conv else "MobileNetV1"
    return f"{kind} alpha {c.alpha:g}, {c.resolution}x{c.resolution}, {c.classes} classes"


def _shape(s) -> str:
    return "x".join("?" if d is None else str(d) for d in s)


def layer_table(rows) -> str:
    head = f"{'layer':<10} {'type':<7} {'s':>1} {'input':>14} {'output':>14} {'MACs':>13} " \
           f"{'params':>11}"
    body = [f"{r['name']:<10} {r['type']:<7} {r['stride']:>1} {_shape(r['in_shape']):>14} "
            f"{_shape(r['out_shape']):>14} {r['macs']:>13,} {r['params']:>11,}" for r in rows]
    return "\n".join([head] + body)


def _graph_table(rows) -> str:
    width = max([len(r["name"]) for r in rows] + [4])
    head = f"{'node':<{width}} {'op':<6} {'output':>16} {'MACs':>13} {'weights':>11}"
    body = [f"{r['name']:<{width}} {r['op']:<6} {_shape(r['out_shape'] or []):>16} "
            f"{r['macs']:>13,} {r['params']:>11,}" for r in rows]
    return "\n".join([head] + body)


def _totals(s) -> str:
    return (f"total: {s['macs']:,} MACs ({s['macs'] / 1e6:.1f}M), {s['params']:,} parameters "
            f"({s['params'] / 1e6:.2f}M; {s['params_without_bn']:,} without BN, "
            f"{s['params_folded']:,} with BN folded into conv biases)")


def patch_table(p: dict, memory: dict) -> str:
    """The plan of compiler/patches.py per layer: sizes, what is live, the split, MACs."""
    split = p["split"]
    lines = [f"patches: {split or 'none (layer by layer)'} (requested {p.get('requested')}): "
             f"arena {memory['arena_bytes']:,} B planned"
             + (" (input read in the frame buffer)" if split else "")
             + f"; layer by layer {p['arena_estimate_layer_by_layer']:,} B (input "
             + ("read in the frame buffer" if p.get("layer_by_layer_input_in_frame_buffer")
                else "copied into the arena")
             + f"); layer-by-layer bound {p['layer_by_layer_bound']:,} B (largest "
             f"input + output of one layer)",
             f"  extra MACs {p['extra_macs']:,} ({p['extra_macs_percent']:.2f} % of "
             f"{p['conv_macs']:,}); tiles {p['tiles']}x{p['tiles']} of layer {p['stage']}'s "
             "output" if split else "  no split beats layer by layer"]
    head = (f"  {'layer':>5} {'op':<4} {'k':>3} {'s':>1} {'in':>9} {'out':>9} "
            f"{'in B':>8} {'out B':>8} {'live B':>8} {'MACs':>11}  per tile")
    lines.append(head)
    for r in p["steps"]:
        hw = lambda v: f"{v[0]}x{v[1]}"  # noqa: E731
        tile = (f"  tile in {r['tile_in_bytes']:,} + out {r['tile_out_bytes']:,} B, "
                f"{r['tile_macs']:,} MACs" if "tile_out_bytes" in r else "")
        lines.append(f"  {r['step']:>5} {r['kind']:<4} {r['kernel'][0]:>3} {r['stride'][0]:>1} "
                     f"{hw(r['in_hw']):>9} {hw(r['out_hw']):>9} {r['in_bytes']:>8,} "
                     f"{r['out_bytes']:>8,} {r['in_bytes'] + r['out_bytes']:>8,} "
                     f"{r['macs']:>11,}{tile}")
    return "\n".join(lines)
