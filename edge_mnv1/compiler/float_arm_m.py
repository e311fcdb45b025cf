"""fp32 layers on Cortex-M as calls into the runtime's float kernels
(edge_mnv1/runtime/kernels/em_f32_arm_m.c), the float counterpart of compiler/integer_arm_m.py:
on an MCU target whose file names a kernel feature (`features = ["dsp"]` or `["mve"]`), each
NCHW conv2d of the imported float graph, with the bias add and ReLU / clip that follow it, is
replaced by one kernel whose body is a `T.call_extern` to the C kernel with the layer's shape
as arguments. The C file picks its MVE-F (Helium, 4 fp32 lanes) or scalar-FPU path from the
compiler's flags; the feature says which one the weights are packed for ("mve": MVE-F, so a
target naming it must build for a CPU with MVE-F).

Those kernels work channels-last: their outputs are NHWC, a later kernel reads them as they
are, and any other op (pool, reshape, the classifier) reads a transpose back to NCHW (at the
end of MobileNetV1 a few KB). Patch tiles (compiler/patches.py) are rewritten like whole
layers, their concatenations done channels-last. Layers the kernels do not cover (channel
counts not a multiple of the blocks below, batch > 1, dilation) stay TVM's, in NCHW.

The weights are prepacked here in each kernel's order (see the C file); their declared shape
is OHWI's, which is what compiler/graph.py reads the MAC count from.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, tirx
from tvm.ir.expr import Constant

from edge_mnv1.compiler.integer_arm_m import EXTERN_ATTR, FEATURES, extern_call
from edge_mnv1.compiler.patch_chain import bindings, shape_of

# Pointwise outputs per weight panel (EM_PANEL in the C file): two MVE vectors, or the
# four scalar accumulators of a pixel. Pointwise layers need O a multiple of 8 either way.
PANEL = {"mve": 8, "dsp": 4}
BLOCK = 8            # output channels per pass of the pointwise and first-conv kernels
_PREFIX = "f32_"     # the kernels' names; their C symbols are em_f32_<kind>


def applies(target, is_integer: bool) -> bool:
    """A float model compiled for an MCU whose target file names a kernel feature."""
    return (not is_integer and target.is_mcu
            and any(f in FEATURES for f in target.tvm.get("features", ())))


def _op(value) -> str:
    return value.op.name if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op) \
        else ""


def _scalar(x) -> float | None:
    """A clip bound (a FloatImm, or a PrimValue holding one) as a float."""
    v = getattr(x, "value", None)
    v = getattr(v, "value", v)
    return float(v) if isinstance(v, (int, float)) else None


def _vars(value) -> list:
    if isinstance(value, relax.Var):
        return [value]
    if isinstance(value, relax.Call):
        return [v for a in value.args for v in _vars(a)]
    if isinstance(value, relax.Tuple):
        return [v for f in value.fields for v in _vars(f)]
    if isinstance(value, relax.TupleGetItem):
        return _vars(value.tuple_value)
    return []


def _kind(w: np.ndarray, groups: int, strides: tuple, pads: tuple) -> str | None:
    """Which C kernel computes a conv with OIHW weights `w`, or None (TVM's)."""
    o, cg, kh, kw = w.shape
    if groups == 1 and (kh, kw) == (1, 1) and strides == (1, 1) and not any(pads) \
            and o % BLOCK == 0:
        return "pointwise"
    if groups == o and cg == 1 and (kh, kw) == (3, 3) and o % 4 == 0:
        return "depthwise"
    if groups == 1 and o % BLOCK == 0:
        return "conv"
    return None


def pack_weights(w: np.ndarray, kind: str, panel: int) -> np.ndarray:
    """OIHW weights in the kernel's order, shaped like OHWI (compiler/graph.py reads the MAC
    count off a weight's shape)."""
    o, c, kh, kw = w.shape
    if kind == "pointwise":      # panels: [o / panel][c][panel]
        packed = w.reshape(o // panel, panel, c).transpose(0, 2, 1)
    elif kind == "depthwise":    # [3][3][c]
        packed = w[:, 0].transpose(1, 2, 0)
    else:                        # [kh][kw][c][o]
        packed = w.transpose(2, 3, 1, 0)
    return np.ascontiguousarray(packed, dtype=np.float32).reshape(o, kh, kw, c)


class _Rewriter:
    """Re-emits the bindings of `main`, convolutions (with their epilogue) as kernel calls."""

    def __init__(self, found: list, panel: int):
        self.panel = panel
        self.defs = {b.var: b.value for b in found}
        self.users: dict = {}
        for b in found:
            for v in _vars(b.value):
                self.users.setdefault(v, []).append(b)
        self.env: dict = {}      # old var -> new NCHW expression
        self.nhwc: dict = {}     # old var -> new NHWC expression
        self.skip: set = set()   # bindings folded into a kernel call
        self.consts: dict = {}   # (weight, kind, bias, clamp) -> the call's constants

    # ---- activations in either layout ------------------------------------------------
    def nchw(self, bb, v):
        if v in self.env or v not in self.nhwc:
            return self.env.get(v, v)
        self.env[v] = bb.emit(relax.op.permute_dims(self.nhwc[v], [0, 3, 1, 2]))
        return self.env[v]

    def channels_last(self, bb, v):
        if v not in self.nhwc:
            self.nhwc[v] = bb.emit(relax.op.permute_dims(self.nchw(bb, v), [0, 2, 3, 1]))
        return self.nhwc[v]

    def arg(self, bb, a):
        if isinstance(a, relax.Var):
            return self.nchw(bb, a)
        if isinstance(a, relax.Tuple):
            return relax.Tuple([self.arg(bb, f) for f in a.fields])
        return a

    # ---- the epilogue a kernel absorbs ----------------------------------------------------
    def _only_user(self, v):
        users = self.users.get(v, [])
        return users[0] if len(users) == 1 else None

    def _per_channel(self, e, o: int):
        """A [1, o, 1, 1] constant (or reshape of one) as [o] floats, else None."""
        if shape_of(e) != (1, o, 1, 1):
            return None
        if isinstance(e, relax.Var) and _op(self.defs.get(e)) == "relax.reshape":
            e = self.defs[e].args[0]
        return e.value.numpy().reshape(-1) if isinstance(e, Constant) else None

    def epilogue(self, var, o: int):
        """(bias, (lo, hi), the var the layer ends at, the bindings folded in)."""
        bias, clamp, end, folded = np.zeros(o, np.float32), (-np.inf, np.inf), var, []
        nxt = self._only_user(end)
        if nxt is not None and _op(nxt.value) == "relax.add":
            a, b = nxt.value.args
            other = b if a.same_as(end) else a
            found = self._per_channel(other, o)
            if found is not None and shape_of(nxt.var) == shape_of(end):
                bias, end = found.astype(np.float32), nxt.var
                folded.append(nxt.var)
                if isinstance(other, relax.Var) and self._only_user(other) is nxt:
                    folded.append(other)
                nxt = self._only_user(end)
        if nxt is not None and _op(nxt.value) == "relax.nn.relu":
            clamp, end = (0.0, np.inf), nxt.var
            folded.append(nxt.var)
        elif nxt is not None and _op(nxt.value) == "relax.clip" \
                and None not in (bounds := [_scalar(x) for x in nxt.value.args[1:]]):
            clamp, end = tuple(bounds), nxt.var
            folded.append(nxt.var)
        return bias, clamp, end, folded

    # ---- the rewrite ----------------------------------------------------------------------
    def conv(self, bb, b) -> bool:
        """Emits the conv bound by `b` (and its epilogue) as a kernel call, if one fits."""
        v, a = b.value, b.value.attrs
        if str(a.data_layout) != "NCHW" or str(a.kernel_layout) != "OIHW" \
                or any(int(d) != 1 for d in a.dilation) \
                or not isinstance(v.args[1], Constant) or str(b.var.ty.dtype) != "float32":
            return False
        w = v.args[1].value.numpy()
        (n, c, h, wd), (_, o, ho, wo) = shape_of(v.args[0]), shape_of(b.var)
        top, left, bottom, right = (int(p) for p in a.padding)
        sh, sw = (int(s) for s in a.strides)
        kind = _kind(w, int(a.groups), (sh, sw), (top, left, bottom, right))
        if kind is None or n != 1:
            return False
        bias, clamp, end, folded = self.epilogue(b.var, o)
        key = (v.args[1], kind, bias.tobytes(), clamp)
        if key not in self.consts:
            self.consts[key] = [relax.const(pack_weights(w, kind, self.panel), "float32"),
                                relax.const(bias, "float32"),
                                relax.const(np.asarray(clamp, np.float32), "float32")]
        src = v.args[0]
        if kind == "pointwise":
            x, scalars = self.channels_last(bb, src), [h * wd, c, o]
        elif kind == "depthwise":
            x, scalars = self.channels_last(bb, src), [h, wd, c, sh, sw, top, left, ho, wo]
        else:   # read in the layout it is in: strides of channel, row, column
            nhwc = src in self.nhwc
            x = self.nhwc[src] if nhwc else self.nchw(bb, src)
            strides = [1, wd * c, c] if nhwc else [h * wd, wd, 1]
            scalars = [c, h, wd, *strides, o, w.shape[2], w.shape[3], sh, sw, top, left, ho, wo]
        self.nhwc[end] = extern_call(bb, f"em_f32_{kind}", f"{_PREFIX}{kind}",
                                     [x, *self.consts[key]], [n, ho, wo, o], scalars,
                                     dtype="float32")
        self.skip.update(folded)
        return True

    def concat(self, bb, b) -> bool:
        """Tiles already channels-last are joined channels-last."""
        fields = b.value.args[0].fields
        if not all(isinstance(f, relax.Var) and f in self.nhwc for f in fields):
            return False
        axis = [0, 3, 1, 2][int(b.value.attrs.axis)]
        self.nhwc[b.var] = bb.emit(relax.op.concat([self.nhwc[f] for f in fields], axis=axis))
        return True

    def emit(self, bb, b) -> None:
        v, op = b.value, _op(b.value)
        if (op == "relax.nn.conv2d" and self.conv(bb, b)) or \
                (op == "relax.concat" and len(shape_of(b.var)) == 4 and self.concat(bb, b)):
            return
        if isinstance(v, relax.Call):
            v = relax.Call(v.op, [self.arg(bb, a) for a in v.args], v.attrs, v.ty_args)
        elif isinstance(v, (relax.Var, relax.Tuple)):
            v = self.arg(bb, v)
        elif isinstance(v, relax.TupleGetItem):
            v = relax.TupleGetItem(self.arg(bb, v.tuple_value), v.index)
        self.env[b.var] = bb.emit(v)


def rewrite(mod: tvm.IRModule, target) -> tvm.IRModule:
    """The float graph with its convolutions as calls of the runtime's fp32 kernels, their
    weights packed for the target's path (MVE or scalar FPU)."""
    found = bindings(mod)
    main = mod["main"]
    if found is None or not any(_op(b.value) == "relax.nn.conv2d" for b in found):
        return mod
    r = _Rewriter(found, PANEL["mve" if "mve" in target.tvm.get("features", ()) else "dsp"])
    bb = relax.BlockBuilder()
    attrs = dict(main.attrs) if main.attrs is not None else None
    with bb.function("main", list(main.params), attrs=attrs):
        with bb.dataflow():
            for b in found:
                if b.var not in r.skip:
                    r.emit(bb, b)
            out = bb.emit_output(r.arg(bb, main.body.body))
        bb.emit_func_output(out)
    result = bb.get()
    for gv, func in list(result.functions.items()):
        if isinstance(func, tirx.PrimFunc) and gv.name_hint.startswith(_PREFIX):
            result.update_func(gv, func.with_attr(EXTERN_ATTR, True))
    return result
