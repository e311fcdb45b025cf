"""`edge-mnv1 compile`: ONNX -> fused, scheduled kernels -> a self-contained artifact.

Named stages, each returning a small value: import (`Source`) -> lower (`Lowered`: fuse,
apply tuning records, default schedules) -> codegen (`Kernels`) -> plan memory
(`MemoryPlan`) -> golden data (`Golden`) -> emit (model.c, blobs, headers) -> the manifest,
built from those values in one place. Building the device program from the artifact is
CMake's job (artifact/build.py); `finish_manifest` then records every file's sha256."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from edge_mnv1 import log
from edge_mnv1.errors import UsageError
from edge_mnv1.hashing import sha256_file
from edge_mnv1.versions import ARTIFACT_FORMAT_VERSION, PROTOCOL_VERSION
from edge_mnv1.artifact.artifact import Artifact, Manifest
from edge_mnv1.artifact.firmware import write_firmware_files
from edge_mnv1.artifact.target import Target
from edge_mnv1.compiler import (codegen, emit, float_arm_m, frontend, graph, integer_arm_m,
                                lowering, memory)
from edge_mnv1.compiler import patches as patch_stage
from edge_mnv1.compiler.tuning import records, transfer
from edge_mnv1.compiler.tuning import settled as settled_records
from edge_mnv1.compiler.tvm_target import ResolvedTarget, resolve
from edge_mnv1.onnxio import support
from edge_mnv1.onnxio.model_file import load_onnx, model_metadata, ort_session
from edge_mnv1.onnxio.model_inputs import fitted_inputs


@dataclass(frozen=True)
class Source:
    """The model as imported: its file, ONNX graph, metadata and Relax module."""

    path: Path
    onnx: onnx.ModelProto
    meta: dict
    shape: list[int]
    relax: object              # tvm.IRModule
    dtype: str
    int_model: object | None   # the integer reference of a quantized (QDQ) model
    declared_shape: list = dataclasses.field(default_factory=list)  # as the file says: ints,
    # and the name of a dynamic batch axis (compiled for batch 1)

    @property
    def dynamic_batch(self) -> bool:
        return bool(self.declared_shape) and not isinstance(self.declared_shape[0], int)

    @property
    def is_integer(self) -> bool:
        return self.int_model is not None


@dataclass(frozen=True)
class Lowered:
    """Every kernel scheduled (by a tuning record or by default), and the flat program."""

    module: object             # tvm.IRModule
    program: graph.Program
    layout: str
    prepack: bool
    prepacked: int             # kernels whose weights records asked for in a blocked layout
    model_key: str
    records_dir: Path
    applied: list[str]
    untuned: list[str]
    tuning_source: dict        # which CPU's records applied: exact, its ISA class, or none


@dataclass(frozen=True)
class Kernels:
    path: Path
    emit: str                  # "llvm" (object file) or "c"
    workspace_bytes: int       # per thread, read back from the code


@dataclass(frozen=True)
class MemoryPlan:
    """The manifest's "memory", in its order."""

    arena_bytes: int
    liveness_lower_bound: int
    sum_of_activations: int
    workspace_bytes_per_thread: int
    workspace_threads: int
    weight_bytes: int
    frame_buffer_bytes: int    # the largest request or reply payload
    tensor_table_bytes: int    # model.c's tensor descriptors and shapes (RAM, 32-bit MCU)
    call_table_bytes: int      # model.c's call sequence and arguments (flash, 32-bit MCU)


@dataclass(frozen=True)
class Golden:
    """The self-test's inputs and expected outputs, and how they were computed."""

    inputs: np.ndarray
    outputs: np.ndarray
    tolerance: float
    reference: str             # "integer" or "onnxruntime"
    note: str = ""             # how the inputs were made for the model's input shape

    @property
    def cases(self) -> int:
        return len(self.inputs)


def compile_artifact(model_path: str | Path, target: Target, out_dir: str | Path, *,
                     use_records: bool = True, tuning_root: Path | None = None,
                     emit_kind: str | None = None, patches: str | None = None,
                     settled: bool = True) -> Artifact:
    """Compiles the model into `out_dir`. The manifest lists no files yet: `finish_manifest`
    hashes them once the program is built. `patches` ("auto", "off", "PxP@K"; default: the
    target file's) runs the first layers tile by tile (compiler/patches.py). settled=False
    applies every record as measured alone (tuning/settled.py: what `tune` compares)."""
    out_dir = Path(out_dir)
    resolved = resolve(target)
    source = import_model(Path(model_path), resolved)
    source, patched = patch_stage.for_source(source, target, patches)
    lowered = lower(source, resolved, use_records, tuning_root, settled)
    lowered.program.input_in_frame_buffer = patched is not None and bool(patched["split"]) \
        or integer_arm_m.reads_input_in_place(target, source.is_integer)
    _prepare_output(out_dir)
    kernels = generate_code(lowered, resolved, emit_kind or target.tvm.get("emit", "llvm"),
                            out_dir)
    plan = plan_memory(lowered.program, kernels, target)
    golden = golden_data(source, cases=1 if target.is_mcu else 3)
    emit_sources(out_dir, source, lowered, plan, golden, resolved)
    manifest = Manifest(dict(manifest_data(source, lowered, kernels, plan, golden, resolved),
                             patches=patched))
    manifest.write(out_dir)
    return Artifact(out_dir, manifest, target=target)


def finish_manifest(artifact: Artifact, extra: dict | None = None) -> Artifact:
    """Records the sha256 of every file (each hashed once, after the program is built) and
    `extra` in the manifest."""
    data = artifact.manifest.data
    data.update(extra or {})
    files = {}
    for p in sorted(artifact.path.rglob("*")):
        rel = p.relative_to(artifact.path).as_posix()
        if p.is_file() and rel != "manifest.json" and not rel.startswith("build/"):
            files[rel] = sha256_file(p)
    data["files"] = files
    artifact.manifest.write(artifact.path)
    return artifact


# ---- the stages --------------------------------------------------------------------------

def import_model(path: Path, resolved: ResolvedTarget) -> Source:
    model = load_onnx(path, one_input_output=True)
    support.check_compilable(model, path)
    shape, declared = frontend.input_shape(model, batch=1), support.declared_shape(model)
    log.info(f"compile: importing {path} (input {shape}) for {resolved.target.name} "
             f"({resolved.tvm_target.attrs.get('mcpu', '')})")
    if declared[0] != shape[0]:
        log.info(f"compile: input {model.graph.input[0].name!r} has a dynamic batch axis "
                 f"({declared[0]!r}): compiled for batch 1, the device takes one image per "
                 "request (recorded in the manifest)")
    relax_mod, dtype, int_model = frontend.import_model(model, str(path), resolved.target)
    return Source(path, model, model_metadata(model), shape, relax_mod, dtype, int_model,
                  declared)


def lower(source: Source, resolved: ResolvedTarget, use_records: bool,
          tuning_root: Path | None, settled: bool = True) -> Lowered:
    """Fuse, apply the tuning records for this CPU and model, schedule the rest by default."""
    layout, prepack = lowering.layout_for(resolved.target, source.is_integer)
    relax_mod = float_arm_m.rewrite(source.relax, resolved.target) if float_arm_m.applies(
        resolved.target, source.is_integer) else source.relax    # fp32 C kernels on Cortex-M
    fused = lowering.fuse(relax_mod, resolved.tvm_target, fold_constants=not source.is_integer,
                          layout=layout, prepack=prepack,
                          fuse_depthwise=resolved.target.fuse_depthwise)
    # MACs are read off the graph before records change the weights' layout.
    imported = graph.extract(fused)
    key = records.model_key(source.meta, source.shape, source.dtype, source.path.read_bytes(),
                            layout)
    found = records.find(resolved.cpu_key, key, tuning_root)
    applied, fell_back = [], []
    if use_records:
        fused, applied, fell_back = _apply_records(fused, resolved, found, key, prepack,
                                                   source.path, settled)
    scheduled, defaulted = lowering.apply_default_schedules(fused, resolved.tvm_target)
    prog = graph.extract(scheduled)
    prepacked = graph.carry_macs(imported, prog)
    compiled_shape = list(prog.tensors[prog.input].shape)
    if compiled_shape != source.shape:
        raise UsageError(f"compiled input shape {compiled_shape} differs from the model's "
                         f"{source.shape}")
    tuning_source = {"cpu_key": found.cpu_key if applied else None,
                     "match": found.match if applied else "none", "fell_back": fell_back}
    return Lowered(scheduled, prog, layout, prepack, prepacked, key, found.dir, applied,
                   defaulted, tuning_source)


def _apply_records(fused, resolved: ResolvedTarget, found: records.Found, key: str,
                   prepack: bool, model_path: Path, settled: bool = True):
    """(module, kernels a record covered, kernels whose record lost to the default: a
    transferred one timed here, or this CPU's in the whole program as `tune` measured it);
    says so when there are no records to apply."""
    if found.match == "none":
        log.info(f"compile: no tuning records for CPU key {resolved.cpu_key!r} or its ISA class "
                 f"and model {key!r} (looked in {found.dir.parent.parent}); default schedules. "
                 f"Run `edge-mnv1 tune {model_path} --target {resolved.target.name}` to make them.")
        return fused, [], []
    tuned, applied = lowering.apply_database(fused, resolved.tvm_target,
                                             records.open_database(found.dir))
    origin = "this CPU" if found.match == "exact" else f"{found.cpu_key} (same ISA class)"
    log.info(f"compile: tuning records of {origin} from {found.dir} cover {len(applied)} of "
             f"{len(lowering.kernels(tuned))} kernels")
    fell_back: list[str] = []
    if found.match == "exact" and settled:
        tuned, applied, fell_back = settled_records.fall_back(tuned, fused, found.dir, applied)
    if found.match == "isa-class" and resolved.runs_here:
        # Another CPU's tile sizes: keep each record only where it beats the default here.
        defaults = {name: lowering.default_schedule_for(fused[name], resolved.tvm_target)
                    for name in applied}
        verdicts = transfer.compare(tuned, defaults, applied, resolved.tvm_target)
        fell_back = sorted(v.kernel for v in verdicts if not v.keep_record)
        tuned = transfer.fall_back(tuned, fused, verdicts)
        applied = sorted(set(applied) - set(fell_back))
    return (lowering.prepack_weights(tuned) if prepack else tuned), applied, fell_back


def _prepare_output(out_dir: Path) -> None:
    """An empty `out_dir`; a previous artifact there is replaced, anything else refused."""
    if out_dir.exists():
        if not (out_dir / "manifest.json").exists() and any(out_dir.iterdir()):
            raise UsageError(f"{out_dir}: exists, is not empty and is not an artifact; "
                             "choose another -o directory")
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)


def generate_code(lowered: Lowered, resolved: ResolvedTarget, emit_kind: str,
                  out_dir: Path) -> Kernels:
    # The kernels' own argument checks stay on Linux; on an MCU they cost flash.
    path, ws_bytes = codegen.build(codegen.kernel_module(lowered.module), resolved.tvm_target,
                                   emit_kind, out_dir, disable_asserts=resolved.target.is_mcu)
    return Kernels(path, emit_kind, ws_bytes)


def plan_memory(prog: graph.Program, kernels: Kernels, target: Target) -> MemoryPlan:
    """Places every tensor (offsets into the arena and the weight blob) and sizes the rest."""
    inp, outp = prog.tensors[prog.input], prog.tensors[prog.output]
    # A Linux program's pool gives each thread a workspace; firmware runs on one core.
    threads = 1 if target.is_mcu else (target.threads if target.threads > 0
                                       else len(os.sched_getaffinity(0)))
    return MemoryPlan(
        arena_bytes=memory.plan_arena(prog),
        liveness_lower_bound=memory.liveness_lower_bound(prog),
        sum_of_activations=memory.total_activation_bytes(prog),
        workspace_bytes_per_thread=kernels.workspace_bytes, workspace_threads=threads,
        weight_bytes=memory.plan_weights(prog),
        frame_buffer_bytes=max(inp.nbytes, outp.nbytes, 8 + 8 * len(prog.calls), 4 + 8 * 256,
                               1024),
        **memory.table_bytes(prog))


def golden_data(source: Source, cases: int) -> Golden:
    """Real digits for the self-test, fitted to the model's input shape (N x C x H x W,
    onnxio/model_inputs.py), through the independent reference: ONNX Runtime for a float
    model, the integer reference (exact, uint8 in and out) for a quantized one. Each case is
    one whole input of the model (N images for a batch-N model)."""
    shape = source.shape
    batch = shape[0]
    x, _, _, note = fitted_inputs("digits", shape[1:], source.meta.get("preprocessing"),
                                  split="test", limit=cases * batch)
    if len(x) < cases * batch:  # only a huge batch outgrows the test split: repeat it
        x = np.resize(x, (cases * batch, *x.shape[1:]))
    x = x.reshape([cases] + shape).astype(np.float32)
    if source.is_integer:
        from edge_mnv1.quant.fixedpoint import quantize_input

        q_in = source.int_model.input_q
        q = quantize_input(x, q_in.scale, q_in.zero_point)
        y = np.stack([source.int_model.run(q[i]) for i in range(cases)])
        return Golden(q, y, tolerance=0.0, reference="integer", note=note)
    sess = ort_session(source.path)
    name = sess.get_inputs()[0].name
    y = np.stack([sess.run(None, {name: x[i]})[0] for i in range(cases)])
    return Golden(x, y.astype(np.float32), tolerance=1e-4, reference="onnxruntime", note=note)


def emit_sources(out_dir: Path, source: Source, lowered: Lowered, plan: MemoryPlan,
                 golden: Golden, resolved: ResolvedTarget) -> None:
    """model.c, blobs, ABI headers, the model itself and, for an MCU, the firmware files."""
    target, prog = resolved.target, lowered.program
    emit.copy_abi_headers(out_dir)
    # The model travels with the artifact: the host runner's ONNX Runtime reference.
    shutil.copy(source.path, out_dir / "model.onnx")
    emit.write_blobs(out_dir, prog, golden.inputs, golden.outputs)
    emit.write_model_c(out_dir, prog, arena_bytes=plan.arena_bytes,
                       workspace_bytes=plan.workspace_bytes_per_thread,
                       workspace_threads=plan.workspace_threads,
                       max_payload=plan.frame_buffer_bytes,
                       hello=dict(_hello(lowered, plan, target),
                                  identity=emit.artifact_identity(out_dir, prog)),
                       golden_cases=golden.cases, golden_tolerance=golden.tolerance,
                       required_features=resolved.required_features,
                       arena_section=".bss.em_arena" if target.is_mcu else None)
    if target.is_mcu:  # linker script from the target's memory regions, board config header
        write_firmware_files(target, out_dir)


def _hello(lowered: Lowered, plan: MemoryPlan, target: Target) -> dict:
    """What the program answers to the protocol's hello."""
    prog = lowered.program
    inp, outp = prog.tensors[prog.input], prog.tensors[prog.output]
    return {
        "protocol": PROTOCOL_VERSION, "model": lowered.model_key, "target": target.name,
        "input": {"shape": list(inp.shape), "dtype": inp.dtype, "bytes": inp.nbytes},
        "output": {"shape": list(outp.shape), "dtype": outp.dtype, "bytes": outp.nbytes},
        "arena_bytes": plan.arena_bytes, "weight_bytes": plan.weight_bytes,
        "workspace_bytes": plan.workspace_bytes_per_thread * plan.workspace_threads,
        "max_payload": plan.frame_buffer_bytes, "kernels": len(prog.calls),
    }


def manifest_data(source: Source, lowered: Lowered, kernels: Kernels, plan: MemoryPlan,
                  golden: Golden, resolved: ResolvedTarget) -> dict:
    """manifest.json from the stages' results (the file format: keys and order as read by
    every verb). "compile_seconds" and "files" are filled in by finish_manifest."""
    target, prog, int_model = resolved.target, lowered.program, source.int_model
    inp, outp = prog.tensors[prog.input], prog.tensors[prog.output]

    def tensor(name: str, t: graph.TensorInfo, which: str) -> dict:
        return {"name": name, "shape": list(t.shape), "dtype": t.dtype,
                **({"quantization": getattr(int_model, which).to_dict()}
                   if int_model is not None else {})}

    return {
        "format_version": ARTIFACT_FORMAT_VERSION,
        "protocol_version": PROTOCOL_VERSION,
        "target": target.name,
        "target_arch": target.arch,
        "target_kind": target.kind,
        "cpu_key": resolved.cpu_key,
        "tvm_target": json.loads(json.dumps(_target_dict(resolved.tvm_target))),
        "required_cpu_features": list(resolved.required_features),
        "model": {"key": lowered.model_key, "source": str(source.path),
                  "source_sha256": sha256_file(source.path), **source.meta},
        "identity": emit.artifact_identity(kernels.path.parent, prog),
        "input": {**tensor(source.onnx.graph.input[0].name, inp, "input_q"),
                  "declared_shape": source.declared_shape,
                  "dynamic_batch": source.dynamic_batch},
        "output": tensor(source.onnx.graph.output[0].name, outp, "output_q"),
        "memory": dataclasses.asdict(plan),
        "kernels": [{"call": i, "kernel": c.kernel, "macs": c.macs}
                    for i, c in enumerate(prog.calls)],
        "total_macs": sum(c.macs for c in prog.calls),
        "emit": kernels.emit,
        "layout": {"activations": lowered.layout, "prepack_weights": lowered.prepack,
                   "prepacked_weights": lowered.prepacked},
        "tuning": {"records_dir": str(lowered.records_dir), "cpu_key": resolved.cpu_key,
                   "model_key": lowered.model_key, "applied": sorted(lowered.applied),
                   "untuned": sorted(lowered.untuned), "source": lowered.tuning_source},
        "golden": {"cases": golden.cases, "tolerance": golden.tolerance,
                   "reference": golden.reference, "inputs": golden.note},
        "quantization": int_model.manifest() if int_model is not None else None,
        "tvm_version": _tvm_version(),
        "compile_seconds": None,
        "files": {},
    }


def _target_dict(t) -> dict:
    return {k: (list(v) if hasattr(v, "__len__") and not isinstance(v, str) else
                (v if isinstance(v, (int, float, str, bool)) else str(v)))
            for k, v in t.export().items() if k in ("kind", "mtriple", "mcpu", "mattr", "num-cores")}


def _tvm_version() -> str:
    import tvm

    return tvm.__version__
