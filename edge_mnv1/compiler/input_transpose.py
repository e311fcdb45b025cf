"""The input's NCHW -> NHWC transpose folded into the first convolution.

A channels-last compile (lowering.fuse, layout "NHWC") starts with a transpose of the image,
a kernel of its own: 0.04-0.06 ms of the 1.0/224 inference on 2 threads (Zen 4), as much
as four 14x14 depthwise layers. FuseOps keeps it apart, as it fuses no producer into a
convolution. This pass, run between FuseOps and FuseTIR, moves the transpose's call into the
first convolution's fused function, so FuseTIR makes one kernel of both and the default
schedule inlines the transpose into the convolution's reads (each input value is a scalar
broadcast there, so reading it channels-first costs nothing).

Only the shape the importer makes is rewritten: the entry function's first binding is a
transpose of its input, used only as the first argument of the next fused function, whose
body is a chain of call_tir. Anything else is left as it is.
"""

from __future__ import annotations

import tvm
from tvm import relax


def fold(mod: tvm.IRModule) -> tvm.IRModule:
    main = mod["main"]
    blocks = main.body.blocks if isinstance(main.body, relax.SeqExpr) else []
    if len(blocks) != 1 or len(blocks[0].bindings) < 2:
        return mod
    first, second, *rest = blocks[0].bindings
    group = _fused_callee(mod, second.value)
    if not (_is_input_transpose(first, main) and group is not None
            and second.value.args[0].same_as(first.var) and not _used(first.var, rest)):
        return mod
    name = "fused_transpose_" + second.value.op.name_hint.removeprefix("fused_")
    bb = relax.BlockBuilder(mod)
    gv = bb.add_func(_merged(name, first.value, group), name)   # typed from the function
    out = bb.get()
    call = relax.Call(gv, [main.params[0], *second.value.args[1:]])
    bindings = [relax.VarBinding(second.var, call), *rest]
    block = relax.DataflowBlock(bindings)
    out["main"] = relax.Function(main.params, relax.SeqExpr([block], main.body.body),
                                 main.ret_ty, main.is_pure, main.attrs)
    return out


def _fused_callee(mod: tvm.IRModule, call) -> relax.Function | None:
    """The Primitive function `call` calls, if its body is one dataflow block of call_tir."""
    if not (isinstance(call, relax.Call) and isinstance(call.op, relax.GlobalVar)):
        return None
    func = mod[call.op]
    if not (isinstance(func, relax.Function) and (func.attrs or {}).get("Primitive")):
        return None
    body = func.body
    if not (isinstance(body, relax.SeqExpr) and len(body.blocks) == 1):
        return None
    if not all(_is_call_tir(b.value) for b in body.blocks[0].bindings):
        return None
    return func


def _is_call_tir(call) -> bool:
    return (isinstance(call, relax.Call) and call.op.same_as(tvm.ir.Op.get("relax.call_tir"))
            and len(call.args) == 2 and isinstance(call.args[1], relax.Tuple))


def _is_input_transpose(binding, main: relax.Function) -> bool:
    call = binding.value
    return (_is_call_tir(call) and call.args[0].name_hint.startswith("transpose")
            and len(call.args[1].fields) == 1 and call.args[1].fields[0].same_as(main.params[0])
            and float_image(main.params[0]))


def float_image(param: relax.Var) -> bool:
    ty = param.ty
    return isinstance(ty, relax.TensorType) and ty.dtype == "float32" and ty.ndim == 4


def _used(var: relax.Var, bindings) -> bool:
    return any(var.same_as(v) for b in bindings for v in relax.analysis.free_vars(b.value))


def _merged(name: str, transpose: relax.Call, group: relax.Function) -> relax.Function:
    """group(x_nhwc, *p) as a function of the channels-first image: the transpose first."""
    image = transpose.args[1].fields[0]
    x = relax.Var("image", image.ty)
    params = [relax.Var(p.name, p.ty) for p in group.params[1:]]
    bb = relax.BlockBuilder()
    attrs = {k: group.attrs[k] for k in group.attrs.keys()}
    with bb.function(name, [x, *params], attrs=attrs, private=True):
        with bb.dataflow():
            remap = dict(zip(group.params[1:], params))
            remap[group.params[0]] = bb.emit(
                relax.call_tir(transpose.args[0], relax.Tuple([x]), transpose.ty_args[0]))
            bindings = group.body.blocks[0].bindings
            for i, b in enumerate(bindings):
                args = relax.Tuple([remap.get(a, a) for a in b.value.args[1].fields])
                call = relax.call_tir(b.value.args[0], args, b.value.ty_args[0])
                last = i == len(bindings) - 1 and b.var.same_as(group.body.body)
                remap[b.var] = bb.emit_output(call) if last else bb.emit(call)
        bb.emit_func_output(remap[group.body.body])
    return bb.get()[name]
