"""Patch-based execution of the early stages, on the imported Relax graph: the output of
spatial step K split into P x P tiles, each computed through steps 1..K from its own input
window (halo included, recomputed), the tiles concatenated into step K's output, the rest of
the network layer by layer (compiler/patch_chain.py reads the steps off the graph,
compiler/patch_plan.py has the arithmetic and the search).

Each spatial op is re-emitted on each tile with the padding of the tile's border (a window
inside the image has none: its halo is real data). The integer graph's first conv, a TE
kernel that pads with the input's zero point (compiler/integer.py), is re-made for each tile
from the integer model's layer; on Cortex-M each layer's call of the runtime's C kernel
(compiler/integer_arm_m.py) is re-made with the tile's shape and pads and the layer's own
constants: a few instructions of wrapper per tile, one copy of the weights and of the C
kernel. A convolution of a window is the same integers (or the same float operations in the
same order), so int8 stays bit-exact and fp32 unchanged.
"""

from __future__ import annotations

import dataclasses

import tvm
from tvm import relax

from edge_mnv1 import log
from edge_mnv1.compiler import integer_arm_m, patch_plan
from edge_mnv1.compiler.patch_chain import Chain, Op, analyse, bindings, shape_of
from edge_mnv1.compiler.patch_plan import Plan, Split

__all__ = ["Chain", "analyse", "apply", "describe", "for_source", "rewrite"]


# ---- the rewrite -------------------------------------------------------------------------

def _subst(expr, env: dict):
    if isinstance(expr, relax.Var):
        return env.get(expr, expr)
    if isinstance(expr, relax.Call):
        return relax.Call(expr.op, [_subst(a, env) for a in expr.args], expr.attrs,
                          expr.ty_args)
    if isinstance(expr, relax.Tuple):
        return relax.Tuple([_subst(f, env) for f in expr.fields])
    if isinstance(expr, relax.TupleGetItem):
        return relax.TupleGetItem(_subst(expr.tuple_value, env), expr.index)
    return expr


def _tile_op(bb, op: Op, x, pads: tuple, env: dict, int_model):
    """`op` on a tile `x` (`env` maps the op's chain input to `x`): the same operation,
    with the tile's padding for a spatial op."""
    v = op.binding.value
    if op.kind == "conv":
        a = v.attrs
        out_dtype = str(op.binding.var.ty.dtype)   # as the full-size conv computed it
        return bb.emit(relax.op.nn.conv2d(
            x, _subst(v.args[1], env), strides=[int(s) for s in a.strides], padding=list(pads),
            dilation=[int(d) for d in a.dilation], groups=int(a.groups),
            data_layout=str(a.data_layout), kernel_layout=str(a.kernel_layout),
            out_layout=str(a.out_layout or a.data_layout), out_dtype=out_dtype))
    if op.kind == "pad":
        widths = [int(w) for w in v.attrs.pad_width]
        h, w = op.in_layout.index("H"), op.in_layout.index("W")
        widths[2 * h], widths[2 * w], widths[2 * h + 1], widths[2 * w + 1] = pads
        return bb.emit(relax.op.nn.pad(x, widths, str(v.attrs.pad_mode),
                                       float(v.attrs.pad_value)))
    if op.kind == "extern":
        layer = dataclasses.replace(op.layer, pads=tuple(pads))
        zp = [int_model.qparams[a].zero_point for a in (layer.x, layer.y)]
        consts = [_subst(c, env) for c in v.args[1].fields[1:]]
        call = integer_arm_m.layer_call(bb, op.feature, layer, x, list(shape_of(x)),
                                        op.in_layout == "NCHW", *zp, consts)
        assert call is not None, f"layer {layer.y}: no C kernel for its tile"  # same kind
        return call
    if op.kind == "te_conv":
        from edge_mnv1.compiler import integer

        layer = dataclasses.replace(op.layer, pads=tuple(pads))
        zx = int_model.qparams[int_model.input].zero_point
        nhwc = op.layout == "NHWC"
        return bb.emit_te(integer._padded_conv(layer, zx, nhwc, nhwc and op.in_layout == "NCHW"),
                          x, _subst(v.args[1].fields[1], env), primfunc_name_hint="conv2d_pad")
    return bb.emit(_subst(v, env))


def _concat(bb, tiles: list, split: Split, layout: str):
    h, w = layout.index("H"), layout.index("W")
    p = split.tiles
    rows = [relax.op.concat(tiles[r * p:(r + 1) * p], axis=w) for r in range(p)]
    return bb.emit(relax.op.concat([bb.emit(r) for r in rows], axis=h))


def rewrite(mod: tvm.IRModule, chain: Chain, plan: Plan, int_model=None) -> tvm.IRModule:
    """`mod` with steps 1..K run per tile, as `plan` says."""
    split = plan.split
    last_op = chain.step_end[split.stage - 1]
    ops = chain.ops[:last_op + 1]
    on_chain = {op.binding.var for op in ops}
    main = mod["main"]
    param = main.params[0]
    x = relax.Var(param.name, param.ty)
    env = {param: x}
    bb = relax.BlockBuilder(mod)
    spatial = [i for i, op in enumerate(ops) if op.kind != "pass"]
    with bb.function("main_patched", [x]):
        with bb.dataflow():
            found = bindings(mod)
            cut = ops[-1].binding
            head = found[:found.index(cut) + 1]
            consts = [b for b in head if b.var not in on_chain]
            outs = []
            for t in plan.windows:
                (r0, r1), (c0, c1) = t[0][0], t[0][1]
                cur = bb.emit(relax.op.strided_slice(x, axes=[2, 3], begin=[r0, c0],
                                                     end=[r1, c1]))
                # Computed constants (casts, reshapes) again per tile: FuseOps then folds
                # them into each tile's kernel, as it does into the full-size one.
                tile_env, prev = dict(env), param
                for b in consts:
                    tile_env[b.var] = bb.emit(_subst(b.value, tile_env))
                for i, op in enumerate(ops):
                    tile_env[prev] = cur
                    step = spatial.index(i) if i in spatial else None
                    cur = _tile_op(bb, op, cur, t[step][2] if step is not None else None,
                                   tile_env, int_model)
                    prev = op.binding.var
                outs.append(cur)
            for b in consts:   # for the layers after the cut (unused ones are dropped)
                env[b.var] = bb.emit(_subst(b.value, env))
            env[cut.var] = _concat(bb, outs, split, ops[-1].layout)
            for b in found[len(head):]:
                if isinstance(b.value, relax.Var):
                    env[b.var] = env.get(b.value, b.value)
                else:
                    env[b.var] = bb.emit(_subst(b.value, env))
            out = bb.emit_output(env[main.body.body])
        bb.emit_func_output(out)
    built = bb.get()
    func = built["main_patched"]
    for k, v in (main.attrs or {}).items():
        func = func.with_attr(k, v)
    funcs = {gv: f for gv, f in built.functions.items() if gv.name_hint not in
             ("main", "main_patched")}
    result = tvm.IRModule(funcs, attrs=mod.attrs)
    result["main"] = func.with_attr("global_symbol", "main")
    return integer_arm_m.mark_extern_kernels(result)


def apply(mod: tvm.IRModule, spec: str, int_model=None, mac_budget: float | None = None,
          in_place: bool = False) -> tuple[tvm.IRModule, dict | None]:
    """(module, the plan as the manifest records it, or None when run layer by layer).
    `in_place`: the program reads its input in the frame buffer even layer by layer."""
    want = patch_plan.parse(spec)
    if want == "off":
        return mod, None
    chain = analyse(mod, int_model)
    if chain is None:
        if isinstance(want, Split):
            from edge_mnv1.errors import UsageError
            raise UsageError(f"--patches {spec}: the model's first layers are not a chain of "
                             "convolutions this can split; use --patches off")
        log.info("compile: patches: no chain of spatial layers from the input; layer by layer")
        return mod, None
    budget = patch_plan.DEFAULT_MAC_BUDGET if mac_budget is None else mac_budget
    plan = patch_plan.search(chain.steps, chain.input_bytes, budget, in_place) \
        if want == "auto" else patch_plan.plan(chain.steps, chain.input_bytes, want, in_place)
    record = dict(describe(plan, chain), layer_by_layer_input_in_frame_buffer=in_place)
    if plan.split is None:
        log.info(f"compile: patches: no split of the first layers beats layer by layer "
                 f"({plan.arena_layer_by_layer:,} B) within {budget:.0%} more MACs")
        return mod, record
    log.info(f"compile: patches {plan.split}: arena estimate {plan.arena_patched:,} B "
             f"(layer by layer {plan.arena_layer_by_layer:,} B, bound "
             f"{plan.layer_by_layer_bound:,} B), +{record['extra_macs']:,} MACs "
             f"({record['extra_macs_percent']:.2f} %)")
    return rewrite(mod, chain, plan, int_model), record


def describe(plan: Plan, chain: Chain) -> dict:
    """The plan as the manifest's "patches" records it (info and the budget read it)."""
    total = sum(s.macs for s in chain.steps)
    in_hw = chain.steps[0].in_hw
    pixel = [chain.input_bytes // (in_hw[0] * in_hw[1])] + \
        [s.out_pixel_bytes for s in chain.steps]
    steps = []
    for i, s in enumerate(chain.steps):
        row = {"step": i + 1, "kind": s.kind, "kernel": list(s.kernel),
               "stride": list(s.stride), "in_hw": list(s.in_hw), "out_hw": list(s.out_hw),
               "in_bytes": s.in_hw[0] * s.in_hw[1] * pixel[i], "out_bytes": s.out_bytes,
               "macs": s.macs}
        if plan.split and i < plan.split.stage:   # the largest tile's input + output
            tile = max(plan.windows, key=lambda t: patch_plan.area(*t[i][3]))[i]
            row["tile_in_bytes"] = patch_plan.area(tile[0], tile[1]) * pixel[i]
            row["tile_out_bytes"] = patch_plan.area(*tile[3]) * s.out_pixel_bytes
            row["tile_macs"] = sum(patch_plan.area(*t[i][3]) for t in plan.windows) \
                * s.macs_per_pixel
        steps.append(row)
    return {"split": str(plan.split) if plan.split else None,
            "tiles": plan.split.tiles if plan.split else 1,
            "stage": plan.split.stage if plan.split else 0,
            "arena_estimate_patched": plan.arena_patched,
            "arena_estimate_layer_by_layer": plan.arena_layer_by_layer,
            "layer_by_layer_bound": plan.layer_by_layer_bound,
            "input_bytes": chain.input_bytes,
            "conv_macs": total, "extra_macs": plan.extra_macs,
            "extra_macs_percent": round(100 * plan.extra_macs / total, 3) if total else 0.0,
            "tile_windows": [[list(t[0][0]), list(t[0][1])] for t in plan.windows],
            "steps": steps}


def for_source(source, target, spec: str | None):
    """(the compile's Source with its Relax patched, the plan for the manifest or None).
    `spec` None takes the target file's `[compile] patches` (default "off")."""
    from edge_mnv1.errors import UsageError

    given = spec if spec is not None else target.patches
    try:
        mod, record = apply(source.relax, given, source.int_model, in_place=integer_arm_m.
                            reads_input_in_place(target, source.is_integer))
    except UsageError as e:
        if spec is None:   # the default came from the target file: name it
            raise UsageError(f"{target.path}: [compile] patches: {e}") from None
        raise
    if record is not None:
        record["requested"] = given
    return dataclasses.replace(source, relax=mod), record
