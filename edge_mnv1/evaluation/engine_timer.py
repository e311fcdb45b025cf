"""The child process that times one host engine (`python -m edge_mnv1.evaluation.engine_timer
time SPEC`, started by baselines.time_engine): a fresh process per engine, so no other
runtime's thread pool is alive beside the one timed. Prints one JSON line: engine, version,
times_ms (one per run), note; on failure a one-line message on stderr and exit 1."""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from edge_mnv1.errors import UsageError
from edge_mnv1.evaluation.references import ONNXRUNTIME, PYTORCH


def time_loop(fn, runs: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        fn()
        times.append((time.perf_counter_ns() - t0) / 1e6)
    return times


def time_onnxruntime(spec: dict, x: np.ndarray, runs: int, warmup: int, threads: int) -> dict:
    import onnxruntime as ort

    from edge_mnv1.onnxio.model_file import ort_session

    sess = ort_session(spec["model"], threads)
    feed = {sess.get_inputs()[0].name: x}
    times = time_loop(lambda: sess.run(None, feed), runs, warmup)
    return {"engine": ONNXRUNTIME, "version": ort.__version__, "times_ms": times,
            "note": f"ONNX Runtime {ort.__version__}, {threads} intra-op threads, "
                    "ORT_ENABLE_ALL, session.run on one input"}


def torch_network(spec: dict):
    """(network, how it was made): the checkpoint's, else MobileNetV1 of the config with
    random weights, refused when its multiply-adds are not the artifact's."""
    import torch

    if spec.get("checkpoint"):
        from edge_mnv1.model.checkpoint import load_model

        return load_model(spec["checkpoint"])[0], f"checkpoint {spec['checkpoint']}"
    from edge_mnv1.model.network import MobileNetV1, ModelConfig, cost_summary

    cfg = ModelConfig.from_dict(spec["config"])
    macs = cost_summary(cfg)["macs"]
    if spec.get("expect_macs") and macs != spec["expect_macs"]:
        raise UsageError(f"the reference MobileNetV1 {cfg.to_json()} has {macs} "
                         f"multiply-adds, the artifact {spec['expect_macs']}: not the "
                         "same network, so no PyTorch time")
    torch.manual_seed(0)
    return MobileNetV1(cfg).eval(), (
        f"MobileNetV1 {cfg.to_json()} with random weights (no checkpoint; same network, "
        f"{macs:,} multiply-adds, so the same work)")


def time_pytorch(spec: dict, x: np.ndarray, runs: int, warmup: int, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    model, how = torch_network(spec)
    t = torch.from_numpy(x)

    def once():
        with torch.inference_mode():
            model(t)

    times = time_loop(once, runs, warmup)
    return {"engine": PYTORCH, "version": torch.__version__, "times_ms": times,
            "note": f"PyTorch {torch.__version__} eager, torch.set_num_threads({threads}), "
                    f"{how}"}


ENGINES = {ONNXRUNTIME: time_onnxruntime, PYTORCH: time_pytorch}


def time_spec(spec: dict) -> dict:
    if spec["engine"] not in ENGINES:
        raise UsageError(f"unknown engine {spec['engine']!r}")
    x = np.random.default_rng(0).standard_normal(spec["shape"]).astype(np.float32)
    return ENGINES[spec["engine"]](spec, x, int(spec["runs"]), int(spec["warmup"]),
                                   int(spec["threads"]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m edge_mnv1.evaluation.engine_timer")
    p.add_argument("command", choices=["time"])
    p.add_argument("spec", help="JSON: engine, model, checkpoint, config, expect_macs, shape, "
                                "runs, warmup, threads")
    a = p.parse_args(argv)
    try:
        result = time_spec(json.loads(a.spec))
    except Exception as e:  # the parent reports it; a traceback helps nobody here
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
