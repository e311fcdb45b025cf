"""The int8 first convolution (3 input channels, a 3x3 window) on x86's dot product.

The register-blocked default multiplies one widened byte per tap (22 GMAC/s at 1.0/224 on
Zen 4); `vpdpbusd` adds 4 products of 4 consecutive input channels, which a 3-channel
image does not have. So the kernel is rebuilt with its channels padded to 4:

    data    P[n, Y, X, c]   the padded (and, from an NCHW input, transposed) image with a
                            4th channel of 0, the rows each output row reads computed
                            before it (a stage: an inlined padding cannot be tensorized)
    weights W[o, ky, kx, c] with a 4th input channel of 0, prepacked at compile time into
                            the instruction's panels (int8_blocked.prepack)
    acc = sum over ky, kx, c of P * W      one call per tap, pixel and panel of the tile
    the kernel's own requantization epilogue, unchanged

The zero weights make the 4th byte's value irrelevant. Both x86 instructions (int8_x86:
VNNI, and AVX2's `vpmaddwd` on pairs) run it in int8_blocked's micro-kernel (pixels of a
row x panels of output channels), the window's taps unrolled around each call. 27 of the
36 products per pixel and output channel are real; the image stage is a byte copy that
LLVM vectorizes. docs/int8.md has the measurements.
"""

from __future__ import annotations

import tvm
import tvm.s_tir as s_tir
import tvm.te as te
import tvm.tirx as tirx
from tvm.ir.expr import TensorLoad
from tvm_ffi import structural_map

from edge_mnv1 import log
from edge_mnv1.compiler.schedules import blocked, int8_blocked, int8_x86, prepack
from edge_mnv1.compiler.schedules.anatomy import REDUCE, Anatomy, inline_all
from edge_mnv1.compiler.schedules.blocked import ACC_SCOPE
from edge_mnv1.compiler.tvm_target import VectorUnit

DEPTH = 4       # input channels after padding: one step of every x86 dot


def dots_for(int8: str) -> list[int8_blocked.Int8Dot]:
    """int8_x86's dots, and with VNNI its 8-lane form (the first conv of a model with 8
    output channels, alpha 0.25, is one panel of 8, which the 16-lane dot does not divide)."""
    narrow = [int8_blocked.Int8Dot(int8_x86.VNNI_DOT_8x4_INTRIN, lanes=8, depth=4,
                                   k_major=False, rows=8, vectors=2, panel_cost=1,
                                   pixel_cost=1, dot_cost=1)] if int8 == "vnni" else []
    return int8_x86.dots_for(int8) + narrow


def apply(func: tirx.PrimFunc, unit: VectorUnit) -> tirx.PrimFunc | None:
    """The scheduled kernel (its requantization still int64: int8_kernels.finish_integer),
    or None if `func` is not a channels-last uint8 x int8 conv with fewer input channels
    than a dot's step, or the target has no x86 integer kind."""
    if unit.int8 not in ("vnni", "avx2") or not any(
            len(p.shape) == 4 and p.dtype == "int8" and int(p.shape[3]) < DEPTH
            and int(p.shape[1]) * int(p.shape[2]) > 1 for p in func.params):
        return None     # (cheap: no OHWI weight of a window over few input channels)
    parts = _parts(func)
    if parts is None:
        return None
    out_channels, out_width = (int(v) for v in func.params[-1].shape[3:1:-1])
    dot = int8_blocked.shape(dots_for(unit.int8), out_width, out_channels, DEPTH,
                             signed=False)
    if dot is None:
        return None
    int8_x86.register()
    try:
        sch = s_tir.Schedule(_rebuild(*parts))
        _schedule(sch, dot, unit.parallel)
    except (s_tir.ScheduleError, tvm.error.InternalError, ValueError, TypeError) as err:
        log.info(f"default schedule: the int8 first conv kept the generic one: "
                 f"{str(err).strip().splitlines()[-1][:200]}")
        return None
    return sch.mod["main"]


def _parts(func: tirx.PrimFunc):
    """(func with every stage inlined but the conv's data, data block, conv block,
    epilogue block) if the kernel has the first conv's form; else None."""
    sch = s_tir.Schedule(func)
    root = sch.get_sblock("root")
    convs = [b for b in sch.get_child_blocks(root)
             if any(iv.iter_type == REDUCE for iv in sch.get(b).iter_vars)]
    if len(convs) != 1 or len(sch.get_producers(convs[0])) != 1:
        return None
    keep = {sch.get(convs[0]).name_hint, sch.get(sch.get_producers(convs[0])[0]).name_hint}
    inline_all(sch, frozenset(keep))
    blocks = [sch.get(b) for b in sch.get_child_blocks(root)]
    if len(blocks) != 3 or [b.name_hint in keep for b in blocks] != [True, True, False]:
        return None
    data, conv, epilogue = blocks
    f = sch.mod["main"]
    if not (_is_conv(f, data, conv) and prepack.layout_free(f, _weight(conv, data))
            and _stores_iters(data) and _stores_iters(epilogue)
            and f.params[-1].same_as(epilogue.writes[0].source)
            and f.params[-1].dtype in ("uint8", "int8")):      # a requantized output
        return None
    return f, data, conv, epilogue


def _stores_iters(block) -> bool:
    """The block writes its buffer at its own iterators, in order (a plain elementwise
    stage)."""
    body = block.body
    return (isinstance(body, tirx.BufferStore)
            and len(body.indices) == len(block.iter_vars)
            and all(i.same_as(iv.var) for i, iv in zip(body.indices, block.iter_vars)))


def _weight(conv, data) -> tirx.Buffer:
    return next(r.source for r in conv.reads
                if not r.source.same_as(data.writes[0].source)
                and not r.source.same_as(conv.writes[0].source))


def _is_conv(f: tirx.PrimFunc, data, conv) -> bool:
    """acc[n, y, x, o] += data[n, ., ., c] * w[o, ky, kx, c]: channels-last, int32 from
    uint8 data and int8 weights, fewer input channels than DEPTH."""
    iters = [iv.var for iv in conv.iter_vars]
    kinds = [iv.iter_type for iv in conv.iter_vars]
    if len(iters) != 7 or kinds != [0, 0, 0, 0, REDUCE, REDUCE, REDUCE]:
        return False
    acc, pixels = conv.writes[0].source, data.writes[0].source
    weight = _weight(conv, data)
    if (acc.dtype, pixels.dtype, weight.dtype) != ("int32", "uint8", "int8") \
            or len(conv.reads) != 2 or not any(p.same_as(weight) for p in f.params):
        return False
    w_index = next(r for r in conv.reads if r.source.same_as(weight)).region
    d_index = next(r for r in conv.reads if r.source.same_as(pixels)).region
    channels = int(weight.shape[3])
    return (all(r.min.same_as(iters[i]) for r, i in zip(w_index, (3, 4, 5, 6)))
            and all(r.min.same_as(v) for r, v in zip(conv.writes[0].region, iters[:4]))
            and d_index[3].min.same_as(iters[6]) and len(pixels.shape) == 4
            and channels < DEPTH)


def _rebuild(f: tirx.PrimFunc, data, conv, epilogue) -> tirx.PrimFunc:
    """The kernel in TE with the channels padded to DEPTH (see the module's docstring)."""
    buffers = list(f.params)
    inputs = [te.placeholder(b.shape, b.dtype, b.name) for b in buffers[:-1]]
    tensor_of = {b: t for b, t in zip(buffers, inputs)}
    weight = _weight(conv, data)
    w_in = tensor_of[weight]
    o_n, kh, kw, channels = weight.shape
    pixels = data.writes[0].source

    def padded_image(*i):
        iters = [iv.var for iv in data.iter_vars]
        value = _mapped(data.body.value, dict(zip(iters, i)), tensor_of)
        return tirx.if_then_else(i[3] < channels, value, tirx.const(0, pixels.dtype))
    depth = tirx.const(DEPTH, "int64")
    image = te.compute([*pixels.shape[:3], depth], padded_image, name="image_c4")
    w_pad = te.compute(
        [o_n, kh, kw, depth],
        lambda o, y, x, c: tirx.if_then_else(c < channels, w_in(o, y, x, c),
                                             tirx.const(0, "int8")), name="weight_c4")
    acc_buf = conv.writes[0].source
    axes = [te.reduce_axis((tirx.const(0, "int64"), tirx.const(int(e), "int64")), name=n)
            for e, n in ((kh, "ky"), (kw, "kx"), (DEPTH, "kc"))]
    d_index = [r.min for r in next(r for r in conv.reads if r.source.same_as(pixels)).region]

    def accumulate(*i):
        at = dict(zip([iv.var for iv in conv.iter_vars], [*i, *(ax.var for ax in axes)]))
        where = [_mapped(e, at, {}) for e in d_index[:3]]     # the pixel a tap reads
        ky, kx, kc = axes
        return te.sum(tirx.Cast("int32", image(*where, kc))
                      * tirx.Cast("int32", w_pad(i[3], ky, kx, kc)), axis=axes)
    acc = te.compute(acc_buf.shape, accumulate, name="acc_c4")
    # A stand-in consumer: TE would simplify the epilogue (cast(a + b) into cast(a) +
    # cast(b)), which the requantization rewrite then no longer recognizes, so the
    # kernel's own expression is put back into it below.
    out = te.compute(buffers[-1].shape, lambda *i: tirx.Cast(buffers[-1].dtype, acc(*i)),
                     name="requantized")
    made = te.create_prim_func([*inputs, out])
    made = _with_epilogue(made, f, acc_buf, epilogue)
    return tirx.PrimFunc(made.params, made.body, made.ret_type, f.attrs)


def _with_epilogue(made: tirx.PrimFunc, f: tirx.PrimFunc, acc_buf, epilogue) -> tirx.PrimFunc:
    """`made` with its output computed by the original epilogue's expression."""
    out = made.params[-1]
    swap = list(zip(f.params, made.params))

    def on_store(store):
        if not store.buffer.same_as(out):
            return store
        new_acc = store.value.value.source          # the stand-in's cast(acc[...])
        loads = [(acc_buf, new_acc), *swap]
        value = _mapped(epilogue.body.value, dict(zip([iv.var for iv in epilogue.iter_vars],
                                                      store.indices)),
                        {b: (lambda *i, n=n: tirx.BufferLoad(n, list(i))) for b, n in loads})
        return tirx.BufferStore(store.buffer, value, store.indices)
    return structural_map(made, [(tirx.BufferStore, on_store)])


def _mapped(expr, variables: dict, loads: dict):
    """`expr` with its variables and buffer loads replaced (loads: buffer -> callable of
    the indices)."""
    def on_var(v):
        return next((e for k, e in variables.items() if k.same_as(v)), v)

    def on_load(ld):
        source = next((t for b, t in loads.items() if b.same_as(ld.source)), None)
        return ld if source is None else source(*ld.indices)
    return structural_map(expr, [(tirx.Var, on_var), (TensorLoad, on_load)])


def _schedule(sch: s_tir.Schedule, dot: int8_blocked.Int8Dot, parallel: bool) -> None:
    """int8_blocked's micro-kernel with the window's taps outside the dot, in parallel over
    output rows, the padded image rows computed per output row, the weights prepacked."""
    image, w_pad, block, out = (sch.get_sblock(n) for n in
                                ("image_c4", "weight_c4", "acc_c4", "requantized"))
    node = sch.get(block)
    a = Anatomy(kind="conv", block=block, epilogue=out,
                extents=[int(iv.dom.extent) for iv in node.iter_vars],
                spatial=[0, 1, 2, 3], reduce=[4, 5, 6], vector=3, row=2, channel=3,
                weight=sch.get(w_pad).writes[0].source, weight_dims=[3, 4, 5, 6])
    int8_blocked.prepack(sch, a, dot, k_axis=6)
    sch.compute_inline(w_pad)          # the padding joins the compile-time rewrite
    sch.set_scope(block, 0, ACC_SCOPE)
    n, y, x, o, ky, kx, kc = sch.get_loops(block)
    o_out, o_reg, o_lane = sch.split(o, [None, dot.vectors, dot.lanes])
    x_out, x_reg = sch.split(x, [None, dot.rows])
    k_out, k_in = sch.split(kc, [None, dot.depth])
    sch.reorder(n, y, x_out, o_out, ky, kx, k_out, x_reg, o_reg, o_lane, k_in)
    sch.reverse_compute_at(out, o_out, preserve_unit_loops=False)
    row, tile = sch.fuse(n, y), sch.fuse(x_out, o_out)
    if parallel:
        sch.parallel(row)
    # The image rows one output row reads, per row (2.7 KB at 224x224, where the whole
    # image would be 204 KB of workspace). Its padding column apart, its loop is a plain
    # copy of three bytes per pixel, which LLVM vectorizes (byte unpacks).
    sch.compute_at(image, row, preserve_unit_loops=False)
    _, x_loop, c_loop = sch.get_loops(image)[1:]
    sch.unroll(c_loop)
    sch.loop_partition(x_loop, [1, None])
    init = sch.decompose_reduction(block, ky)
    sch.tensorize(o_lane, dot.intrin)
    for loop in (ky, kx, k_out, x_reg, o_reg):
        sch.unroll(loop)
    for stage in (init, out):
        blocked.vectorize_tail(sch, stage, dot.lanes, outer=2)
