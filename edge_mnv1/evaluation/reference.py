"""The host-side references an artifact's device outputs are compared with, and the host
baselines its device times are compared with.

- ONNX Runtime on the artifact's own `model.onnx`: always available (the compiler copies the
  model into the artifact).
- PyTorch eager on the checkpoint the model was exported from, when the ONNX metadata names
  it (`edge_mnv1.checkpoint` = {"path", "sha256"}) and the file is there with that hash.

This is the only module of the host runner that imports torch, and only inside functions:
`device/`, parity and bench never import it. Timing runs each engine in a fresh process of
its own (`python -m edge_mnv1.evaluation.reference time ...`): a live thread pool of one runtime in the
same process distorts the other's times.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from edge_mnv1.errors import DeviceError, UsageError
from edge_mnv1.hashing import sha256_file

ONNXRUNTIME = "onnxruntime"
INTEGER = "integer"
PYTORCH = "pytorch"


# -- metadata ----------------------------------------------------------------------------
def onnx_metadata(path: str | Path) -> dict:
    """The model's `edge_mnv1.*` metadata, prefix removed, JSON values decoded."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError, OSError, ...
        raise UsageError(f"{path}: not a readable ONNX model ({e}); recompile the artifact") \
            from None
    meta = {}
    for prop in model.metadata_props:
        if prop.key.startswith("edge_mnv1."):
            key = prop.key.split(".", 1)[1]
            try:
                meta[key] = json.loads(prop.value)
            except json.JSONDecodeError:
                meta[key] = prop.value
    return meta


def artifact_model(artifact: str | Path, manifest: dict) -> Path:
    path = Path(artifact) / "model.onnx"
    if not path.is_file():
        raise UsageError(f"{artifact}: no model.onnx (an artifact from an older compile); "
                         "recompile it with `edge-mnv1 compile` to get the host reference")
    return path


def model_info(artifact: str | Path, manifest: dict) -> dict:
    """What the references need to know: config, preprocessing, checkpoint (any may be None)."""
    meta = dict(manifest.get("model") or {})
    meta.update(onnx_metadata(artifact_model(artifact, manifest)))
    return meta


def find_checkpoint(artifact: str | Path, manifest: dict, meta: dict | None = None,
                    override: str | Path | None = None) -> tuple[Path | None, str]:
    """(checkpoint path or None, a note saying what was found and why it is or is not used).

    An explicit `override` is used as given. Otherwise the metadata's path is looked up as
    written, then next to the source model and next to the artifact; the file must have the
    sha256 the metadata records, or the PyTorch reference would check some other model."""
    if override:
        p = Path(override)
        if not p.is_file():
            raise UsageError(f"--checkpoint {p}: no such file")
        return p, f"checkpoint {p} (given with --checkpoint)"
    meta = meta if meta is not None else model_info(artifact, manifest)
    ck = meta.get("checkpoint")
    if not isinstance(ck, dict) or not ck.get("path"):
        return None, ("the model names no checkpoint (no edge_mnv1.checkpoint metadata); "
                      "ONNX Runtime on the artifact's model.onnx is the reference")
    named = Path(ck["path"])
    source = Path((manifest.get("model") or {}).get("source") or ".")
    candidates = [named] if named.is_absolute() else [
        named, source.parent / named, Path(artifact) / named, Path(artifact) / named.name]
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        return None, (f"checkpoint {named} (named by the model) is not on this machine; "
                      "ONNX Runtime on the artifact's model.onnx is the reference "
                      "(pass --checkpoint CKPT to use PyTorch)")
    want = ck.get("sha256")
    if want and sha256_file(found) != want:
        return None, (f"checkpoint {found} has changed since the model was exported (sha256 "
                      f"differs from the model's metadata); ONNX Runtime on the artifact's "
                      "model.onnx is the reference")
    return found, f"checkpoint {found} (named by the model, sha256 verified)"


# -- references --------------------------------------------------------------------------
class Reference:
    """`run(x)` maps N inputs (N, C, H, W) to N outputs (N, ...) as float or int arrays."""

    name = "reference"
    description = ""

    def run(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError


def ort_session(model_path: str | Path, threads: int = 2, optimize: bool = True):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize \
        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])


class OnnxRuntimeReference(Reference):
    name = ONNXRUNTIME

    def __init__(self, model_path: str | Path, threads: int = 2):
        import onnxruntime as ort

        self.model_path = Path(model_path)
        # A QDQ model as a reference runs unfused: ORT's fused u8s8 kernels saturate on CPUs
        # without VNNI and drift from the model's own QDQ arithmetic.
        optimize = not _is_qdq(self.model_path)
        self.session = ort_session(model_path, threads, optimize)
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.fixed_batch = inp.shape[0] if isinstance(inp.shape[0], int) else None
        level = "ORT_ENABLE_ALL" if optimize else "ORT_DISABLE_ALL, QDQ as written"
        self.description = f"ONNX Runtime {ort.__version__} (CPU, {level}) on {self.model_path}"

    def run(self, x: np.ndarray) -> np.ndarray:
        b = self.fixed_batch or 64
        outs = []
        for i in range(0, len(x), b):
            chunk = x[i:i + b]
            if self.fixed_batch and len(chunk) != self.fixed_batch:  # e.g. batch 1 models
                outs += [self.session.run(None, {self.input_name: chunk[j:j + 1]})[0]
                         for j in range(len(chunk))]
            else:
                outs.append(self.session.run(None, {self.input_name: chunk})[0])
        y = np.concatenate(outs)
        return y.reshape(len(x), -1)


def _is_qdq(path: Path) -> bool:
    import onnx

    return any(n.op_type == "QuantizeLinear" for n in onnx.load(str(path)).graph.node)


class TorchReference(Reference):
    name = PYTORCH

    def __init__(self, checkpoint: str | Path, threads: int = 2):
        import torch

        from edge_mnv1.model.checkpoint import load_model

        self.torch = torch
        torch.set_num_threads(threads)
        self.checkpoint = Path(checkpoint)
        self.model, self.config, self.preprocessing, _ = load_model(checkpoint)
        self.description = f"PyTorch {torch.__version__} eager on {self.checkpoint}"

    def run(self, x: np.ndarray) -> np.ndarray:
        torch = self.torch
        outs = []
        with torch.inference_mode():
            for i in range(0, len(x), 64):
                outs.append(self.model(torch.from_numpy(np.ascontiguousarray(x[i:i + 64])))
                            .float().numpy())
        return np.concatenate(outs).reshape(len(x), -1)


class IntegerReference(Reference):
    """The exact integer arithmetic of an int8 model (edge_mnv1/quantize.py, docs/int8.md):
    uint8 in, uint8 out, the same integers every device must compute."""

    name = INTEGER

    def __init__(self, model_path: str | Path):
        import onnx

        from edge_mnv1.quant import quantize

        self.quantize = quantize
        self.model = quantize.from_onnx(onnx.load(str(model_path)))
        self.description = f"the integer reference (numpy, exact) of {model_path}"

    def run(self, x: np.ndarray) -> np.ndarray:
        q = self.model.input_q
        shape = self.model.input_shape
        return np.stack([self.model.run(self.quantize.quantize_input(
            xi.reshape(shape), q.scale, q.zero_point)).reshape(-1) for xi in x])


def references_for(artifact: str | Path, manifest: dict, checkpoint: str | Path | None = None,
                   threads: int = 2, first: str | None = None) -> tuple[list[Reference], list[str]]:
    """The references for an artifact, the one to judge by first, and notes for the report.

    PyTorch comes first when the checkpoint is known and loads (the model as trained);
    ONNX Runtime is always there (the model as exported, i.e. as the compiler saw it); an
    int8 artifact also has its integer reference. `first` picks the one to judge by."""
    meta = model_info(artifact, manifest)
    refs: list[Reference] = [OnnxRuntimeReference(artifact_model(artifact, manifest), threads)]
    if manifest.get("quantization"):
        refs.append(IntegerReference(artifact_model(artifact, manifest)))
    elif first == INTEGER:
        raise UsageError(f"{artifact}: a float artifact has no integer reference; "
                         "`--reference integer` is for int8 models (edge-mnv1 quantize)")
    path, note = find_checkpoint(artifact, manifest, meta, checkpoint)
    notes = [note]
    if path is not None:
        try:
            ref = TorchReference(path, threads)
        except ImportError as e:
            notes.append(f"PyTorch is not importable here ({e}); ONNX Runtime is the reference")
        except UsageError as e:
            notes.append(f"the checkpoint does not load ({e}); ONNX Runtime is the reference")
        else:
            shape = manifest["input"]["shape"]
            if ref.config.resolution != shape[-1]:
                notes.append(f"checkpoint {path} is for resolution {ref.config.resolution}, the "
                             f"artifact takes {shape[-1]}; ONNX Runtime is the reference")
            else:
                refs.insert(0, ref)
    if first is not None:
        chosen = [r for r in refs if r.name == first]
        if not chosen:
            raise UsageError(f"--reference {first}: not available for {artifact} "
                             f"({'; '.join(notes)})")
        refs.remove(chosen[0])
        refs.insert(0, chosen[0])
    notes.append(f"reference: {refs[0].description}")
    return refs, notes


# -- host baselines for bench ------------------------------------------------------------
def torch_config(meta: dict, model_path: str | Path, manifest: dict) -> dict | None:
    """The model config to build the PyTorch baseline from: the metadata's, or one read off
    the ONNX graph (stem width / 32, input side, output size) when the metadata has none.
    The child process checks the rebuilt network's multiply-adds against the manifest."""
    cfg = meta.get("config")
    if isinstance(cfg, dict) and "alpha" in cfg and "resolution" in cfg:
        return cfg
    try:
        import onnx
        from onnx import numpy_helper

        m = onnx.load(str(model_path), load_external_data=False)
        inits = {t.name: t for t in m.graph.initializer}
        conv = next(n for n in m.graph.node if n.op_type == "Conv")
        width = numpy_helper.to_array(inits[conv.input[1]]).shape[0]
        return {"alpha": width / 32, "resolution": int(manifest["input"]["shape"][-1]),
                "classes": int(np.prod(manifest["output"]["shape"][1:]))}
    except (StopIteration, KeyError, IndexError, ValueError):
        return None


def time_engine(engine: str, *, model: str | Path | None = None, checkpoint: str | None = None,
                config: dict | None = None, expect_macs: int | None = None,
                shape: list[int], runs: int, warmup: int, threads: int,
                timeout: float = 900.0) -> dict:
    """Time `engine` (onnxruntime | pytorch) in a child process of its own.

    Returns {"engine", "times_ms" (one per run), "version", "note"} or raises DeviceError with
    the child's message."""
    spec = {"engine": engine, "model": str(model) if model else None, "checkpoint":
            str(checkpoint) if checkpoint else None, "config": config, "expect_macs": expect_macs,
            "shape": list(shape), "runs": runs, "warmup": warmup, "threads": threads}
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    try:
        proc = subprocess.run([sys.executable, "-m", "edge_mnv1.evaluation.reference", "time",
                               json.dumps(spec)], capture_output=True, text=True, env=env,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        raise DeviceError(f"timing {engine} took longer than {timeout:.0f} s") from None
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise DeviceError(f"timing {engine} failed: {' | '.join(tail) or proc.returncode}")
    return json.loads(lines[-1])


def _time_loop(fn, runs: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        fn()
        times.append((time.perf_counter_ns() - t0) / 1e6)
    return times


def _child_time(spec: dict) -> dict:
    x = np.random.default_rng(0).standard_normal(spec["shape"]).astype(np.float32)
    runs, warmup, threads = int(spec["runs"]), int(spec["warmup"]), int(spec["threads"])
    if spec["engine"] == ONNXRUNTIME:
        import onnxruntime as ort

        sess = ort_session(spec["model"], threads)
        name = sess.get_inputs()[0].name
        feed = {name: x}
        times = _time_loop(lambda: sess.run(None, feed), runs, warmup)
        return {"engine": ONNXRUNTIME, "version": ort.__version__, "times_ms": times,
                "note": f"ONNX Runtime {ort.__version__}, {threads} intra-op threads, "
                        "ORT_ENABLE_ALL, session.run on one input"}
    if spec["engine"] == PYTORCH:
        import torch

        torch.set_num_threads(threads)
        if spec.get("checkpoint"):
            from edge_mnv1.model.checkpoint import load_model

            model = load_model(spec["checkpoint"])[0]
            how = f"checkpoint {spec['checkpoint']}"
        else:
            from edge_mnv1.model.network import MobileNetV1, ModelConfig, cost_summary

            cfg = ModelConfig.from_dict(spec["config"])
            macs = cost_summary(cfg)["macs"]
            if spec.get("expect_macs") and macs != spec["expect_macs"]:
                raise UsageError(f"the reference MobileNetV1 {cfg.to_json()} has {macs} "
                                 f"multiply-adds, the artifact {spec['expect_macs']}: not the "
                                 "same network, so no PyTorch time")
            torch.manual_seed(0)
            model = MobileNetV1(cfg).eval()
            how = (f"MobileNetV1 {cfg.to_json()} with random weights (no checkpoint; same "
                   f"network, {macs:,} multiply-adds, so the same work)")
        t = torch.from_numpy(x)

        def once():
            with torch.inference_mode():
                model(t)

        times = _time_loop(once, runs, warmup)
        return {"engine": PYTORCH, "version": torch.__version__, "times_ms": times,
                "note": f"PyTorch {torch.__version__} eager, torch.set_num_threads({threads}), "
                        f"{how}"}
    raise UsageError(f"unknown engine {spec['engine']!r}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m edge_mnv1.evaluation.reference")
    p.add_argument("command", choices=["time"])
    p.add_argument("spec", help="JSON: engine, model, checkpoint, config, shape, runs, warmup, "
                               "threads")
    a = p.parse_args(argv)
    try:
        result = _child_time(json.loads(a.spec))
    except Exception as e:  # the parent reports it; a traceback helps nobody here
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
