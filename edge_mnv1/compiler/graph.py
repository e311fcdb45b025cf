"""The fused Relax `main` as a flat program: tensors (input, output, activations, weights)
and the kernel calls between them, in order. This is all a static C driver needs."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import tvm
from tvm import relax
from tvm.ir.expr import Constant

from edge_mnv1.errors import UsageError


@dataclass
class TensorInfo:
    index: int
    name: str
    shape: tuple
    dtype: str
    kind: str                 # "input" | "output" | "activation" | "weight"
    data: np.ndarray | None = None
    first: int = -1           # call index that writes it (-1: before the first call)
    last: int = -1            # call index that reads it last
    offset: int = -1          # byte offset in the arena or in the weight blob

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


@dataclass
class CallInfo:
    kernel: str
    args: list[int]           # tensor indices, outputs last
    macs: int = 0


@dataclass
class Program:
    tensors: list[TensorInfo] = field(default_factory=list)
    calls: list[CallInfo] = field(default_factory=list)
    input: int = -1
    output: int = -1
    # A patched program reads its input where the protocol received it (the frame buffer)
    # instead of a copy in the arena, which then holds activations only.
    input_in_frame_buffer: bool = False

    def of_kind(self, kind: str) -> list[TensorInfo]:
        return [t for t in self.tensors if t.kind == kind]


def _shape_dtype(sinfo) -> tuple[tuple, str]:
    return tuple(int(d) for d in sinfo.shape.values), str(sinfo.dtype)


def _macs(args: list[TensorInfo]) -> int:
    """Multiply-adds of a conv or matmul call: output elements x reduction length."""
    out = args[-1]
    # Per-channel constants of the integer path (requantization) are shaped (1, C, ...):
    # a conv or matmul weight leads with its output channels (or, transposed, its inputs).
    weights = [t for t in args[:-1] if t.kind == "weight" and len(t.shape) in (2, 4)
               and t.shape[0] > 1]
    if not weights:
        return 0
    # The largest: integer kernels also take per-channel requantization constants.
    w = max(weights, key=lambda t: int(np.prod(t.shape, dtype=np.int64)))
    cout = w.shape[0] if len(w.shape) == 4 else w.shape[-1]
    pixels = int(np.prod(out.shape, dtype=np.int64)) // cout
    # A depthwise conv fused in before the pointwise one (dw_pw_fusion: stride 1, so the
    # same pixels) adds its own: its weight is (C, 3, 3, 1).
    fused = [t for t in weights if t is not w and len(t.shape) == 4 and t.shape[1:] == (3, 3, 1)]
    return pixels * sum(int(np.prod(t.shape, dtype=np.int64)) for t in [w, *fused])


def extract(mod: tvm.IRModule) -> Program:
    main = mod["main"]
    prog = Program()
    by_var: dict = {}

    def add(name, shape, dtype, kind, data=None) -> TensorInfo:
        t = TensorInfo(len(prog.tensors), name, shape, dtype, kind, data)
        prog.tensors.append(t)
        return t

    if len(main.params) != 1:
        raise UsageError(f"expected a model with one input, found {len(main.params)}")
    p = main.params[0]
    shape, dtype = _shape_dtype(p.ty)
    by_var[p] = add(p.name, shape, dtype, "input")
    prog.input = by_var[p].index

    consts: dict = {}  # the same Constant object passed twice is stored once
    for block in main.body.blocks:
        for binding in block.bindings:
            value = binding.value
            if isinstance(value, relax.Var):
                by_var[binding.var] = by_var[value]
                continue
            if not (isinstance(value, relax.Call) and value.op.name == "relax.call_tir"):
                raise UsageError(f"the compiled graph has an operation the static driver does not "
                                 f"support: {str(value)[:120]}")
            kernel = value.args[0].name_hint
            args = []
            for a in value.args[1].fields:
                if isinstance(a, Constant):
                    t = consts.get(a, (None, None))[1]   # keyed by the node (same_as)
                    if t is None:
                        arr = a.value.numpy()
                        t = add(f"w{len(consts)}", tuple(arr.shape), str(arr.dtype), "weight",
                                np.ascontiguousarray(arr))
                        consts[a] = (a, t)
                    args.append(t)
                elif isinstance(a, relax.Var) and a in by_var:
                    args.append(by_var[a])
                else:
                    raise UsageError(f"kernel {kernel} takes an argument the static driver does "
                                     f"not support: {str(a)[:80]}")
            shape, dtype = _shape_dtype(binding.var.ty)
            out = add(binding.var.name, shape, dtype, "activation")
            by_var[binding.var] = out
            call = CallInfo(kernel, [t.index for t in args] + [out.index], _macs(args + [out]))
            idx = len(prog.calls)
            for t in args:
                t.last = idx
            out.first = idx
            out.last = idx
            prog.calls.append(call)

    ret = main.body.body
    if ret not in by_var:
        raise UsageError("the model's output is not a single tensor computed by a kernel")
    prog.output = by_var[ret].index
    prog.tensors[prog.output].kind = "output"
    # The input and output live for the whole run: bench repeats a run without re-sending
    # the input, and the output is read after the last call.
    end = len(prog.calls)
    prog.tensors[prog.input].last = end
    prog.tensors[prog.output].last = end
    return prog


def carry_macs(imported: Program, compiled: Program) -> int:
    """Copies each call's multiply-adds from the program as imported to the same call after
    tuning records (whose prepacked weights no longer show the conv's shape); returns how
    many weights a tuned schedule stored in a layout of its own."""
    # SplitLayoutRewritePreproc renames a kernel that takes prepacked weights.
    if [c.kernel for c in imported.calls] != \
            [c.kernel.removesuffix("_prepacked") for c in compiled.calls]:
        raise UsageError("internal: applying the tuning records changed the kernel calls")
    repacked = 0
    for before, after in zip(imported.calls, compiled.calls):
        after.macs = before.macs
        for a, b in zip(before.args, after.args):
            ta, tb = imported.tensors[a], compiled.tensors[b]
            repacked += ta.kind == tb.kind == "weight" and ta.shape != tb.shape
    return repacked
