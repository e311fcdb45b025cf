"""`edge-mnv1 compile`: ONNX -> fused, scheduled kernels -> a self-contained artifact.

The stages, each in its own module: frontend (import) -> lowering (fuse, apply records,
default schedules) -> graph (the flat program) -> memory (static plan) -> codegen (kernels)
-> emit (model.c, blobs, headers) -> manifest. Building the device program from the artifact
is CMake's job (edge_mnv1/program.py)."""

from __future__ import annotations

import json
import shutil
import time
import types
from pathlib import Path

import numpy as np

from edge_mnv1 import log
from edge_mnv1.errors import UsageError
from edge_mnv1.hashing import sha256_file
from edge_mnv1.versions import ARTIFACT_FORMAT_VERSION, PROTOCOL_VERSION
from edge_mnv1.artifact.target import Target
from edge_mnv1.compiler import codegen, emit, frontend, graph, lowering, memory
from edge_mnv1.compiler.tuning import records
from edge_mnv1.compiler.tvm_target import resolve



def _golden(model_path: Path, meta: dict, shape: list[int], cases: int, int_model=None):
    """Real digits for the self-test, through the independent reference: ONNX Runtime for a
    float model, the integer reference (exact, uint8 in and out) for a quantized one."""
    from edge_mnv1.model import data

    pp = data.Preprocessing.from_dict(meta["preprocessing"]) if "preprocessing" in meta \
        else data.default_preprocessing("digits", shape[-1])
    cfg = types.SimpleNamespace(resolution=shape[-1])
    x, _, _ = data.load_dataset("digits", cfg, pp, split="test", limit=cases)
    x = x.reshape([cases] + shape[1:]).astype(np.float32)
    if int_model is not None:
        from edge_mnv1.quant.quantize import quantize_input

        q = quantize_input(x, int_model.input_q.scale, int_model.input_q.zero_point)
        return q, np.concatenate([int_model.run(q[i:i + 1]) for i in range(cases)])
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    y = np.concatenate([sess.run(None, {name: x[i:i + 1]})[0] for i in range(cases)])
    return x, y.astype(np.float32)


def compile_artifact(model_path: str | Path, target: Target, out_dir: str | Path, *,
                     use_records: bool = True, tuning_root: Path | None = None,
                     emit_kind: str | None = None) -> dict:
    t_start = time.time()
    model_path = Path(model_path)
    out_dir = Path(out_dir)
    model = frontend.load_onnx(model_path)
    meta = frontend.model_metadata(model)
    shape = frontend.input_shape(model, batch=1)
    resolved = resolve(target)
    emit_kind = emit_kind or target.tvm.get("emit", "llvm")

    log.info(f"compile: importing {model_path} (input {shape}) for {target.name} "
             f"({resolved.tvm_target.attrs.get('mcpu', '')})")
    mod, dtype, int_model = frontend.import_model(model)
    layout, prepack = lowering.layout_for(target, int_model is not None)
    fused = lowering.fuse(mod, resolved.tvm_target, fold_constants=int_model is None,
                          layout=layout, prepack=prepack)
    # MACs are read off the graph before records change the weights' layout.
    imported = graph.extract(fused)

    key = records.model_key(meta, shape, dtype, model_path.read_bytes(), layout)
    rec_dir = records.records_dir(resolved.cpu_key, key, tuning_root)
    applied: list[str] = []
    if use_records and records.has_records(rec_dir):
        fused, applied = lowering.apply_database(fused, resolved.tvm_target,
                                                 records.open_database(rec_dir))
        log.info(f"compile: tuning records from {rec_dir} cover {len(applied)} of "
                 f"{len(lowering.kernels(fused))} kernels")
        if prepack:
            fused = lowering.prepack_weights(fused)
    elif use_records:
        log.info(f"compile: no tuning records for CPU key {resolved.cpu_key!r} and model "
                 f"{key!r} (looked in {rec_dir}); compiling untuned. "
                 f"Run `edge-mnv1 tune {model_path} --target {target.name}` to make them.")
    scheduled, defaulted = lowering.apply_default_schedules(fused)
    prog = graph.extract(scheduled)
    prepacked = graph.carry_macs(imported, prog)

    if out_dir.exists():
        if not (out_dir / "manifest.json").exists() and any(out_dir.iterdir()):
            raise UsageError(f"{out_dir}: exists, is not empty and is not an artifact; "
                             "choose another -o directory")
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)

    kmod = codegen.kernel_module(scheduled)
    threads = target.threads if target.threads > 0 else _cores()
    kernel_path, ws_bytes = codegen.build(kmod, resolved.tvm_target, emit_kind, out_dir,
                                          disable_asserts=target.is_mcu)
    # The kernels' own argument checks stay on Linux; on an MCU they cost flash.
    arena_bytes = memory.plan_arena(prog)
    weight_bytes = memory.plan_weights(prog)
    lower_bound = memory.liveness_lower_bound(prog)

    cases = 1 if target.is_mcu else 3
    gx, gy = _golden(model_path, meta, shape, cases, int_model)
    tolerance = 0.0 if int_model is not None else 1e-4
    inp, outp = prog.tensors[prog.input], prog.tensors[prog.output]
    if list(inp.shape) != shape:
        raise UsageError(f"compiled input shape {inp.shape} differs from the model's {shape}")
    max_payload = max(inp.nbytes, outp.nbytes, 8 + 8 * len(prog.calls), 4 + 8 * 256, 1024)
    hello = {
        "protocol": PROTOCOL_VERSION, "model": key, "target": target.name,
        "input": {"shape": list(inp.shape), "dtype": inp.dtype, "bytes": inp.nbytes},
        "output": {"shape": list(outp.shape), "dtype": outp.dtype, "bytes": outp.nbytes},
        "arena_bytes": arena_bytes, "weight_bytes": weight_bytes,
        "workspace_bytes": ws_bytes * (threads if not target.is_mcu else 1),
        "max_payload": max_payload, "kernels": len(prog.calls),
    }
    weights_section = ".rodata.em_weights"
    emit.copy_abi_headers(out_dir)
    # The model travels with the artifact: the host runner's ONNX Runtime reference.
    shutil.copy(model_path, out_dir / "model.onnx")
    emit.write_blobs(out_dir, prog, gx, gy, weights_section)
    emit.write_model_c(out_dir, prog, arena_bytes=arena_bytes, workspace_bytes=ws_bytes,
                       workspace_threads=1 if target.is_mcu else threads,
                       max_payload=max_payload, hello=hello, golden_cases=cases,
                       golden_tolerance=tolerance, required_features=resolved.required_features,
                       arena_section=".bss.em_arena" if target.is_mcu else None,
                       weights_section=weights_section)
    if target.is_mcu:  # linker script from the target's memory regions, board config header
        from edge_mnv1.artifact.firmware import write_firmware_files
        write_firmware_files(target, out_dir)

    manifest = {
        "format_version": ARTIFACT_FORMAT_VERSION,
        "protocol_version": PROTOCOL_VERSION,
        "target": target.name,
        "target_arch": target.arch,
        "target_kind": target.kind,
        "cpu_key": resolved.cpu_key,
        "tvm_target": json.loads(json.dumps(_target_dict(resolved.tvm_target))),
        "required_cpu_features": list(resolved.required_features),
        "model": {"key": key, "source": str(model_path), "source_sha256": sha256_file(model_path),
                  **meta},
        "input": {"name": model.graph.input[0].name, "shape": list(inp.shape), "dtype": inp.dtype,
                  **({"quantization": int_model.input_q.to_dict()} if int_model else {})},
        "output": {"name": model.graph.output[0].name, "shape": list(outp.shape),
                   "dtype": outp.dtype,
                   **({"quantization": int_model.output_q.to_dict()} if int_model else {})},
        "memory": {"arena_bytes": arena_bytes, "liveness_lower_bound": lower_bound,
                   "sum_of_activations": memory.total_activation_bytes(prog),
                   "workspace_bytes_per_thread": ws_bytes, "workspace_threads":
                   1 if target.is_mcu else threads, "weight_bytes": weight_bytes,
                   "frame_buffer_bytes": max_payload},
        "kernels": [{"call": i, "kernel": c.kernel, "macs": c.macs}
                    for i, c in enumerate(prog.calls)],
        "total_macs": sum(c.macs for c in prog.calls),
        "emit": emit_kind,
        "layout": {"activations": layout, "prepack_weights": prepack,
                   "prepacked_weights": prepacked},
        "tuning": {"records_dir": str(rec_dir), "cpu_key": resolved.cpu_key, "model_key": key,
                   "applied": sorted(applied), "untuned": sorted(defaulted)},
        "golden": {"cases": cases, "tolerance": tolerance,
                   "reference": "integer" if int_model is not None else "onnxruntime"},
        "quantization": int_model.manifest() if int_model is not None else None,
        "tvm_version": _tvm_version(),
        "compile_seconds": None,
        "files": {},
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    manifest["kernel_file"] = kernel_path.name
    return manifest


def finish_manifest(out_dir: Path, extra: dict | None = None) -> dict:
    """Records the sha256 of every file (after the program is built) in the manifest."""
    out_dir = Path(out_dir)
    manifest = json.loads((out_dir / "manifest.json").read_text())
    manifest.update(extra or {})
    files = {}
    for p in sorted(out_dir.rglob("*")):
        rel = p.relative_to(out_dir).as_posix()
        if p.is_file() and rel != "manifest.json" and not rel.startswith("build/"):
            files[rel] = sha256_file(p)
    manifest["files"] = files
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def _target_dict(t) -> dict:
    return {k: (list(v) if hasattr(v, "__len__") and not isinstance(v, str) else
                (v if isinstance(v, (int, float, str, bool)) else str(v)))
            for k, v in t.export().items() if k in ("kind", "mtriple", "mcpu", "mattr", "num-cores")}


def _tvm_version() -> str:
    import tvm

    return tvm.__version__


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0))
