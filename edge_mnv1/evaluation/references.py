"""The host-side references an artifact's device outputs are compared with.

- ONNX Runtime on the artifact's own `model.onnx`: always available (the compiler copies the
  model into the artifact).
- PyTorch eager on the checkpoint the model was exported from, when the ONNX metadata names
  it (`edge_mnv1.checkpoint` = {"path", "sha256"}) and the file is there with that hash.
- The exact integer reference of an int8 model.

torch is imported only inside functions: `device/`, parity and bench never import it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_mnv1.artifact.artifact import Artifact
from edge_mnv1.errors import UsageError
from edge_mnv1.hashing import sha256_file
from edge_mnv1.onnxio.model_file import is_qdq, load_onnx, model_metadata, ort_session

ONNXRUNTIME = "onnxruntime"
INTEGER = "integer"
PYTORCH = "pytorch"


def artifact_model(art: Artifact) -> Path:
    """The artifact's model.onnx, or a clear error for an artifact without one."""
    if not art.onnx.is_file():
        raise UsageError(f"{art.path}: no model.onnx (an artifact from an older compile); "
                         "recompile it with `edge-mnv1 compile` to get the host reference")
    return art.onnx


def model_info(art: Artifact) -> dict:
    """What the references need to know: config, preprocessing, checkpoint (any may be None):
    the manifest's model entry, then the ONNX model's own metadata over it."""
    meta = dict(art.manifest.model)
    meta.update(model_metadata(load_onnx(artifact_model(art))))
    return meta


def find_checkpoint(art: Artifact, meta: dict | None = None,
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
    meta = meta if meta is not None else model_info(art)
    ck = meta.get("checkpoint")
    if not isinstance(ck, dict) or not ck.get("path"):
        return None, ("the model names no checkpoint (no edge_mnv1.checkpoint metadata); "
                      "ONNX Runtime on the artifact's model.onnx is the reference")
    named = Path(ck["path"])
    source = Path(art.manifest.model.get("source") or ".")
    candidates = [named] if named.is_absolute() else [
        named, source.parent / named, art.path / named, art.path / named.name]
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


class Reference:
    """`run(x)` maps N inputs (N, C, H, W) to N outputs (N, ...) as float or int arrays."""

    name = "reference"
    description = ""

    def run(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class OnnxRuntimeReference(Reference):
    name = ONNXRUNTIME

    def __init__(self, model_path: str | Path, threads: int = 2):
        import onnxruntime as ort

        self.model_path = Path(model_path)
        # A QDQ model as a reference runs unfused: ORT's fused u8s8 kernels saturate on CPUs
        # without VNNI and drift from the model's own QDQ arithmetic.
        optimize = not is_qdq(load_onnx(self.model_path))
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
            k = len(chunk)
            if self.fixed_batch and k != b:  # a static batch N: pad with the last input
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], b - k, axis=0)])
            outs.append(self.session.run(None, {self.input_name: chunk})[0][:k])
        return np.concatenate(outs).reshape(len(x), -1)


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
    """The exact integer arithmetic of an int8 model (edge_mnv1/quant/, docs/int8.md):
    uint8 in, uint8 out, the same integers every device must compute."""

    name = INTEGER

    def __init__(self, model_path: str | Path):
        from edge_mnv1.quant.fixedpoint import quantize_input
        from edge_mnv1.quant.qdq import from_onnx

        self.quantize_input = quantize_input
        self.model = from_onnx(load_onnx(model_path))
        self.description = f"the integer reference (numpy, exact) of {model_path}"

    def run(self, x: np.ndarray) -> np.ndarray:
        q = self.model.input_q
        shape = self.model.input_shape
        return np.stack([self.model.run(self.quantize_input(
            xi.reshape(shape), q.scale, q.zero_point)).reshape(-1) for xi in x])


def _torch_reference(art: Artifact, path: Path, threads: int, notes: list[str]):
    """PyTorch on the checkpoint, or None with a note saying why not."""
    try:
        ref = TorchReference(path, threads)
    except ImportError as e:
        notes.append(f"PyTorch is not importable here ({e}); ONNX Runtime is the reference")
        return None
    except UsageError as e:
        notes.append(f"the checkpoint does not load ({e}); ONNX Runtime is the reference")
        return None
    chw = list(art.manifest.input.shape[1:])
    want = [3, ref.config.resolution, ref.config.resolution]
    if chw != want:
        notes.append(f"checkpoint {path} takes {'x'.join(map(str, want))} inputs, the "
                     f"artifact {'x'.join(map(str, chw))}; ONNX Runtime is the reference")
        return None
    return ref


def references_for(art: Artifact, checkpoint: str | Path | None = None, threads: int = 2,
                   first: str | None = None) -> tuple[list[Reference], list[str]]:
    """The references for an artifact, the one to judge by first, and notes for the report.

    PyTorch comes first when the checkpoint is known and loads (the model as trained);
    ONNX Runtime is always there (the model as exported, i.e. as the compiler saw it); an
    int8 artifact also has its integer reference. `first` picks the one to judge by."""
    model = artifact_model(art)
    refs: list[Reference] = [OnnxRuntimeReference(model, threads)]
    if art.manifest.is_integer:
        refs.append(IntegerReference(model))
    elif first == INTEGER:
        raise UsageError(f"{art.path}: a float artifact has no integer reference; "
                         "`--reference integer` is for int8 models (edge-mnv1 quantize)")
    path, note = find_checkpoint(art, model_info(art), checkpoint)
    notes = [note]
    torch_ref = _torch_reference(art, path, threads, notes) if path is not None else None
    if torch_ref is not None:
        refs.insert(0, torch_ref)
    if first is not None:
        chosen = [r for r in refs if r.name == first]
        if not chosen:
            raise UsageError(f"--reference {first}: not available for {art.path} "
                             f"({'; '.join(notes)})")
        refs.remove(chosen[0])
        refs.insert(0, chosen[0])
    notes.append(f"reference: {refs[0].description}")
    return refs, notes
