"""Two consecutive calls of the entry function merged into one fused function, between FuseOps
and FuseTIR, so that FuseTIR makes one kernel of both (input_transpose, dw_pw_fusion).

A call here is either a call_tir or a call of a fused ("Primitive") function whose body is
one dataflow block of call_tir, which is what FuseOps makes of MobileNetV1. The second call
must take the first's result as its first argument, and nothing else may use that result.
"""

from __future__ import annotations

import tvm
from tvm import relax

_CALL_TIR = "relax.call_tir"


def is_call_tir(call) -> bool:
    return (isinstance(call, relax.Call) and call.op.same_as(tvm.ir.Op.get(_CALL_TIR))
            and len(call.args) == 2 and isinstance(call.args[1], relax.Tuple))


def fused_callee(mod: tvm.IRModule, call) -> relax.Function | None:
    """The Primitive function `call` calls, if its body is one dataflow block of call_tir."""
    if not (isinstance(call, relax.Call) and isinstance(call.op, relax.GlobalVar)):
        return None
    func = mod[call.op]
    if not (isinstance(func, relax.Function) and (func.attrs or {}).get("Primitive")):
        return None
    body = func.body
    if not (isinstance(body, relax.SeqExpr) and len(body.blocks) == 1):
        return None
    if not all(is_call_tir(b.value) for b in body.blocks[0].bindings):
        return None
    return func


def mergeable(mod: tvm.IRModule, first: relax.VarBinding, second: relax.VarBinding,
              later) -> bool:
    """Whether `second` is a fused call on `first`'s result alone, `first` a call_tir or a
    fused call, and no binding in `later` reads that result."""
    if fused_callee(mod, second.value) is None or not (
            is_call_tir(first.value) or fused_callee(mod, first.value) is not None):
        return False
    args = second.value.args
    return (args[0].same_as(first.var)
            and not any(first.var.same_as(a) for a in args[1:])
            and not any(first.var.same_as(v) for b in later
                        for v in relax.analysis.free_vars(b.value)))


def _arguments(call) -> list:
    return list(call.args[1].fields) if is_call_tir(call) else list(call.args)


def _emit_calls(bb, mod, call, args, last: bool):
    """Emits `call`'s work on `args` (new variables); returns the variable of its result."""
    if is_call_tir(call):
        made = relax.call_tir(call.args[0], relax.Tuple(args), call.ty_args[0])
        return bb.emit_output(made) if last else bb.emit(made)
    func = fused_callee(mod, call)
    remap = dict(zip(func.params, args))
    bindings = func.body.blocks[0].bindings
    for i, b in enumerate(bindings):
        made = relax.call_tir(b.value.args[0],
                              relax.Tuple([remap.get(a, a) for a in b.value.args[1].fields]),
                              b.value.ty_args[0])
        out = last and i == len(bindings) - 1 and b.var.same_as(func.body.body)
        remap[b.var] = bb.emit_output(made) if out else bb.emit(made)
    return remap[func.body.body]


def merge(mod: tvm.IRModule, name: str, first: relax.VarBinding, second: relax.VarBinding
          ) -> tuple[tvm.IRModule, relax.VarBinding]:
    """(the module with the merged function added, the binding that calls it in place of the
    two; the caller rewrites the entry function)."""
    outer = _arguments(first.value) + list(second.value.args[1:])
    params = [relax.Var(f"p{i}", a.ty) for i, a in enumerate(outer)]
    n_first = len(_arguments(first.value))
    group = fused_callee(mod, second.value)
    attrs = {k: group.attrs[k] for k in group.attrs.keys()}
    bb = relax.BlockBuilder(mod)
    with bb.function(name, params, attrs=attrs, private=True):
        with bb.dataflow():
            mid = _emit_calls(bb, mod, first.value, params[:n_first], last=False)
            out = _emit_calls(bb, mod, second.value, [mid, *params[n_first:]], last=True)
        bb.emit_func_output(out)
    out = bb.get()
    return out, relax.VarBinding(second.var, relax.Call(out.get_global_var(name), outer))


def with_main_bindings(mod: tvm.IRModule, bindings: list) -> tvm.IRModule:
    """`mod` whose entry function's dataflow block is `bindings`."""
    main = mod["main"]
    out = tvm.IRModule(dict(mod.functions), attrs=mod.attrs)
    block = relax.DataflowBlock(bindings)
    out["main"] = relax.Function(main.params, relax.SeqExpr([block], main.body.body),
                                 main.ret_ty, main.is_pure, main.attrs)
    return out


def main_bindings(mod: tvm.IRModule) -> list | None:
    """The entry function's bindings if its body is one dataflow block, else None."""
    body = mod["main"].body
    if not (isinstance(body, relax.SeqExpr) and len(body.blocks) == 1):
        return None
    return list(body.blocks[0].bindings)
