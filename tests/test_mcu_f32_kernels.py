"""The fp32 Cortex-M kernels (edge_mnv1/runtime/kernels/em_f32_arm_m.c) built for this
machine (their scalar path, the Cortex-M7's) against numpy, with the weights packed by
compiler/float_arm_m.py; borders, strides and the clamps included. Their MVE path and the
whole graph run on the emulated boards in tests/test_mcu.py (parity with ONNX Runtime)."""

from __future__ import annotations

import ctypes
import shutil
import subprocess

import numpy as np
import pytest

from edge_mnv1.artifact.firmware import F32_KERNELS
from edge_mnv1.compiler.float_arm_m import pack_weights

CC = shutil.which("cc") or shutil.which("gcc")
pytestmark = pytest.mark.skipif(CC is None, reason="no C compiler on this machine")


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    so = tmp_path_factory.mktemp("f32") / "em_f32.so"
    subprocess.run([CC, "-O2", "-shared", "-fPIC", "-Wall", "-Werror", str(F32_KERNELS),
                    "-o", str(so), "-lm"], check=True)
    return ctypes.CDLL(str(so))


def _reference(x_nhwc, w_oihw, bias, pads, strides, groups, lo, hi):
    """float64 convolution, NHWC in and out, zero padding (top, left, bottom, right)."""
    top, left, bottom, right = pads
    x = np.pad(x_nhwc.astype(np.float64), [(0, 0), (top, bottom), (left, right), (0, 0)])
    o, cg, kh, kw = w_oihw.shape
    sh, sw = strides
    ho, wo = (x.shape[1] - kh) // sh + 1, (x.shape[2] - kw) // sw + 1
    y = np.zeros((1, ho, wo, o))
    per = o // groups
    for oc in range(o):
        g = oc // per
        for ky in range(kh):
            for kx in range(kw):
                win = x[0, ky:ky + sh * ho:sh, kx:kx + sw * wo:sw, g * cg:(g + 1) * cg]
                y[0, :, :, oc] += win @ w_oihw[oc, :, ky, kx]
    return np.clip(y + bias, lo, hi)


def _ptr(a):
    return a.ctypes.data_as(ctypes.c_void_p)


def _run(fn, x, w, bias, clamp, out_shape, scalars):
    y = np.full(out_shape, np.nan, np.float32)
    args = [np.ascontiguousarray(a, np.float32) for a in (x, w, bias, clamp)]
    fn(*[_ptr(a) for a in args], _ptr(y), *[ctypes.c_int32(int(s)) for s in scalars])
    return y


@pytest.mark.parametrize("stride,pads,clamp", [(1, (1, 1, 1, 1), (0.0, 6.0)),
                                               (2, (0, 0, 1, 1), (0.0, np.inf)),
                                               (2, (1, 1, 1, 1), (-np.inf, np.inf))])
def test_depthwise_matches_numpy(lib, stride, pads, clamp):
    rng = np.random.default_rng(stride)
    h, wd, c = 7, 9, 12
    x = rng.standard_normal((1, h, wd, c)).astype(np.float32)
    w = rng.standard_normal((c, 1, 3, 3)).astype(np.float32)
    b = rng.standard_normal(c).astype(np.float32)
    ref = _reference(x, w, b, pads, (stride, stride), c, *clamp)
    ho, wo = ref.shape[1:3]
    got = _run(lib.em_f32_depthwise, x, pack_weights(w, "depthwise", 4), b, clamp, ref.shape,
               [h, wd, c, stride, stride, pads[0], pads[1], ho, wo])
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pixels,c,o", [(11, 24, 16), (4, 3, 8)])
def test_pointwise_matches_numpy(lib, pixels, c, o):
    rng = np.random.default_rng(pixels)
    x = rng.standard_normal((1, 1, pixels, c)).astype(np.float32)
    w = rng.standard_normal((o, c, 1, 1)).astype(np.float32)
    b = rng.standard_normal(o).astype(np.float32)
    ref = _reference(x, w, b, (0, 0, 0, 0), (1, 1), 1, 0.0, 6.0)
    got = _run(lib.em_f32_pointwise, x, pack_weights(w, "pointwise", 4), b, (0.0, 6.0), ref.shape,
               [pixels, c, o])
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("nchw", [True, False])
def test_first_conv_reads_either_layout(lib, nchw):
    rng = np.random.default_rng(3)
    h, wd, c, o = 9, 8, 3, 16
    x = rng.standard_normal((1, h, wd, c)).astype(np.float32)
    w = rng.standard_normal((o, c, 3, 3)).astype(np.float32)
    b = rng.standard_normal(o).astype(np.float32)
    pads = (1, 1, 1, 1)
    ref = _reference(x, w, b, pads, (2, 2), 1, 0.0, np.inf)
    ho, wo = ref.shape[1:3]
    src = x.transpose(0, 3, 1, 2) if nchw else x
    strides = [h * wd, wd, 1] if nchw else [1, wd * c, c]
    got = _run(lib.em_f32_conv, src, pack_weights(w, "conv", 4), b, (0.0, np.inf), ref.shape,
               [c, h, wd, *strides, o, 3, 3, 2, 2, 1, 1, ho, wo])
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
