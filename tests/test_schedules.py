"""Default schedules (compiler/schedules/): each of MobileNetV1's kernel classes is recognized
from its blocks, vectorized by the target's width, and computes what the plain default does;
anything else keeps the plain default."""

import re

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from edge_mnv1.compiler import lowering, schedules  # noqa: E402
from edge_mnv1.compiler.tvm_target import vector_unit  # noqa: E402

AVX512 = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "skylake-avx512"}
AVX2 = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "haswell"}
NEON = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72", "mattr": ["+neon"]}
M55 = {"kind": "llvm", "mtriple": "thumbv8.1m.main-none-eabihf", "mcpu": "cortex-m55"}
M7 = {"kind": "llvm", "mtriple": "thumbv7em-none-eabihf", "mcpu": "cortex-m7",
      "mfloat-abi": "hard"}
CLASSES = {"conv", "depthwise", "pointwise", "pool", "dense"}


@pytest.mark.parametrize("spec, lanes, registers, parallel", [
    (AVX512, 16, 32, True), (AVX2, 8, 16, True), (NEON, 4, 32, True),
    (M55, 4, 8, False), (M7, 1, 32, False)])
def test_vector_unit_from_the_target(spec, lanes, registers, parallel):
    unit = vector_unit(tvm.target.Target(spec))
    assert (unit.lanes, unit.registers, unit.parallel) == (lanes, registers, parallel)


def _mini_net():
    """MobileNetV1's kernel classes in miniature: the first conv (3x3 stride 2), depthwise
    3x3 stride 1 and 2, pointwise, average pool, classifier."""
    from tvm import relax

    rng = np.random.default_rng(1)

    def const(*shape):
        return relax.const(rng.standard_normal(shape).astype("float32"))

    def conv(x, w, b, stride=1, pad=1, groups=1):
        y = relax.op.nn.conv2d(x, w, strides=stride, padding=pad, groups=groups)
        return relax.op.nn.relu(relax.op.add(y, b))

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 3, 16, 16), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(conv(x, const(8, 3, 3, 3), const(1, 8, 1, 1), stride=2))
            y = bb.emit(conv(y, const(8, 1, 3, 3), const(1, 8, 1, 1), groups=8))
            y = bb.emit(conv(y, const(16, 8, 1, 1), const(1, 16, 1, 1), pad=0))
            y = bb.emit(conv(y, const(16, 1, 3, 3), const(1, 16, 1, 1), stride=2, groups=16))
            y = bb.emit(relax.op.mean(y, axis=[2, 3], keepdims=True))
            y = bb.emit(relax.op.reshape(y, (1, 16)))
            y = bb.emit_output(relax.op.add(relax.op.matmul(y, const(16, 10)), const(10)))
        bb.emit_func_output(y)
    return bb.get()


@pytest.fixture(scope="module")
def kernels():
    """One kernel per class, channels-last with layout-free weights as on the host, and
    channels-first as on rpi4 and the MCUs."""
    mod = _mini_net()
    target = tvm.target.Target(AVX512)
    out = {"module": mod}
    for layout in ("NHWC", "NCHW"):
        fused = lowering.fuse(mod, target, layout=layout, prepack=layout == "NHWC")
        for name, func in lowering.kernels(fused).items():
            made = schedules.apply(func, vector_unit(target))
            out.setdefault((layout, made.kind if made else "plain"), (name, func))
    return out


def _host():
    from edge_mnv1.compiler.tvm_target import host_features
    import tvm.target.codegen as cg

    return tvm.target.Target({"kind": "llvm", "mcpu": cg.llvm_get_system_cpu(),
                              "mattr": [f"+{f}" for f in host_features()]})


def _run(func, target, inputs):
    mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    with tvm.transform.PassContext(opt_level=3):
        fn = tvm.compile(mod, target=target).mod["main"]
    args = [tvm.runtime.tensor(a) for a in inputs]
    fn(*args)
    return args[-1].numpy()


@pytest.mark.parametrize("layout, spec", [("NHWC", AVX512), ("NHWC", AVX2), ("NCHW", NEON),
                                          ("NHWC", NEON)])
@pytest.mark.parametrize("kind", sorted(CLASSES))
def test_class_recognized_vectorized_and_equal(kernels, layout, spec, kind):
    if (layout, kind) not in kernels:
        pytest.skip(f"no {kind} kernel a default schedule takes in {layout}")
    name, func = kernels[(layout, kind)]
    unit = vector_unit(tvm.target.Target(spec))
    made = schedules.apply(func, unit)
    assert made is not None and made.kind == kind, name
    # The output's contiguous axis, by the widest power of two the unit has that divides it.
    # (Channels-first, the first conv is register-blocked only: tiling.choose says why.)
    lanes = 1 if (layout, kind) == ("NCHW", "conv") else unit.lanes
    while int(func.params[-1].shape[-1]) % lanes:
        lanes //= 2
    widths = {int(w) for w in re.findall(r"T\.vectorized\(T\.int64\((\d+)\)\)",
                                         made.func.script())}
    assert widths == {lanes}, f"{name}: vectorized by {widths}, expected {lanes} lanes"
    if layout == "NHWC" and kind in ("pointwise", "depthwise", "conv"):
        assert made.prepacked, f"{name}: channels-last weights should be asked for in panels"
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal([int(d) for d in p.shape]).astype(p.dtype)
              for p in func.params]
    host = _host()
    want = _run(lowering.default_schedule(func), host, inputs)
    got = _run(made.func, host, inputs)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_unknown_kernel_keeps_the_plain_default(kernels):
    _, transpose = kernels[("NHWC", "plain")]
    assert schedules.apply(transpose, vector_unit(tvm.target.Target(AVX512))) is None

    from tvm.script import tirx as T

    @T.prim_func(private=True, s_tir=True)
    def cumulative(a: T.Buffer((T.int64(8), T.int64(16)), "float32"),
                   b: T.Buffer((T.int64(8), T.int64(16)), "float32")):
        for i, j in T.grid(T.int64(8), T.int64(16)):
            with T.sblock("b"):
                vi, vj = T.axis.remap("SS", [i, j])
                b[vi, vj] = a[vi, vj] * T.float32(2.0)

    assert schedules.apply(cumulative, vector_unit(tvm.target.Target(AVX512))) is None


def test_defaults_prepack_their_weights(kernels):
    """apply_default_schedules folds the panel layouts into the constants (weights.bin)."""
    target = tvm.target.Target(AVX512)
    fused = lowering.fuse(kernels["module"], target, layout="NHWC", prepack=True)
    out, done = lowering.apply_default_schedules(fused, target)
    assert done
    renamed = [n for n in lowering.kernels(out) if n.endswith("_prepacked")]
    assert renamed, "no kernel takes prepacked weights"
    for name in renamed:
        assert "layout_rewrite_preproc" not in lowering.kernels(out)[name].script()


def test_tile_accumulators_are_on_the_stack(kernels):
    """A tile's accumulators are a stack array LLVM keeps in registers, not a workspace that
    TVM 0.27 makes of a "local" buffer: allocated and freed through the runtime per tile
    (rpi4 1.0/224: 0.471 -> 0.456 instructions per multiply-add). Tiles stay under TVM's
    1 KB stack limit: 16 accumulators of 16 AVX-512 lanes would be 1 KB, a workspace again."""
    from edge_mnv1.compiler.schedules import tiling

    target = tvm.target.Target(NEON)
    for kind in sorted(CLASSES):
        name, func = kernels[("NHWC", kind)]
        made = schedules.apply(func, vector_unit(target))
        mod = tvm.IRModule({"main": made.func.with_attr("global_symbol", "main")})
        with tvm.transform.PassContext(opt_level=3):
            ll = tvm.compile(mod, target=target).mod.inspect_source("ll")
        assert "TVMBackendAllocWorkspace" not in ll, f"{name}: accumulators in a workspace"
    # A 112x112 pointwise layer of 64 outputs on AVX-512: the largest tile under 1 KB.
    nv, mr = tiling._best(vector_unit(tvm.target.Target(AVX512)), 16, 64, 112, 4, spare=1)
    assert nv * mr == 14 and nv * mr * 16 * tiling.ACC_BYTES < tiling.STACK_BYTES


def test_depthwise_fused_with_the_pointwise_after_it(monkeypatch):
    """dw_pw_fusion merges the stride-1 depthwise conv with the pointwise one reading it
    (above a size, here 0) and leaves the stride-2 one apart; the fused kernel's default
    schedule (row by row) computes what the plain default does."""
    from edge_mnv1.compiler import dw_pw_fusion
    from edge_mnv1.compiler.schedules import dw_pw

    monkeypatch.setattr(dw_pw_fusion, "MIN_BYTES", 0)
    target = tvm.target.Target(AVX512)
    fused = lowering.fuse(_mini_net(), target, layout="NHWC", prepack=True, fuse_depthwise=True)
    names = list(lowering.kernels(fused))
    merged = [n for n in names if n.startswith("fused_dw_pw_")]
    assert len(merged) == 1, names
    # The stride-2 depthwise conv (16 channels) is still a kernel of its own.
    made = {n: schedules.apply(f, vector_unit(target)) for n, f in lowering.kernels(fused).items()}
    assert [m.kind for m in made.values() if m].count("depthwise") == 1
    func = lowering.kernels(fused)[merged[0]]
    got = made[merged[0]]
    assert got is not None and got.kind == dw_pw.KIND and got.prepacked
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal([int(d) for d in p.shape]).astype(p.dtype)
              for p in func.params]
    want = _run(lowering.default_schedule(func), _host(), inputs)
    np.testing.assert_allclose(_run(got.func, _host(), inputs), want, rtol=1e-5, atol=1e-5)
    unfused = lowering.fuse(_mini_net(), target, layout="NHWC", prepack=True)
    assert not [n for n in lowering.kernels(unfused) if n.startswith("fused_dw_pw_")]
