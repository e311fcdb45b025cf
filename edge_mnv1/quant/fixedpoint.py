"""The int8 scheme and its fixed-point arithmetic: the one rounding rule every device must
reproduce bit for bit (docs/int8.md).

The scheme: int8 symmetric per-channel weights, uint8 asymmetric per-tensor activations
(ReLU folded into the clamp: a ReLU output has zero point 0), int32 bias at scale
s_x * s_w[c]. The reference computes in integers only:

    acc[c]  = bias[c] + sum (x - z_x) * w[c]                       int32 (held in int64 here)
    y[c]    = clamp(z_y + ((acc[c] * M[c] + 2^(S[c]-1)) >> S[c]), lo, 255)   (int64, arithmetic >>)

where M[c] in [2^30, 2^31) and S[c] encode the real multiplier s_x * s_w[c] / s_y to 31
bits; rounding is half up (toward +infinity). Average pooling sums (x - z_x) and
requantizes by s_x / (s_y * H * W). No float enters this arithmetic: the floats are read
once, when the multipliers are derived from the model's scales.
"""

from __future__ import annotations

import math

import numpy as np

from edge_mnv1.errors import UsageError

SCHEME = {
    "weights": "int8, symmetric, per output channel",
    "activations": "uint8, asymmetric, per tensor",
    "bias": "int32 at scale s_x * s_w[c]",
    "requantize": "int64 (acc * M + 2^(S-1)) >> S, M in [2^30, 2^31): round half up",
    "calibration": "min-max over the calibration images (ONNX Runtime quantize_static)",
}
MULTIPLIER_BITS = 31


def fixed_point(real: float) -> tuple[int, int]:
    """(M, S) with real ~= M * 2^-S, M in [2^30, 2^31): 31 significant bits."""
    if not (real > 0 and math.isfinite(real)):
        raise UsageError(f"requantization multiplier {real!r} is not a positive number; "
                         "the model's scales are damaged: quantize it again")
    frac, exp = math.frexp(real)                      # real = frac * 2^exp, frac in [0.5, 1)
    m = round(frac * (1 << MULTIPLIER_BITS))
    if m == 1 << MULTIPLIER_BITS:
        m //= 2
        exp += 1
    shift = MULTIPLIER_BITS - exp
    if not 1 <= shift <= 62:
        raise UsageError(f"requantization multiplier {real:g} is out of the supported range "
                         "(2^-31 .. 2^30): a layer's scales are degenerate; calibrate with "
                         "more varied images")
    return m, shift


def requantize(acc: np.ndarray, mult: np.ndarray, shift: np.ndarray, zero_point: int,
               lo: int, hi: int) -> np.ndarray:
    """The one rounding rule of the integer path (channel axis already broadcast)."""
    acc = acc.astype(np.int64)
    rounded = (acc * mult + (np.int64(1) << (shift - 1))) >> shift
    return np.clip(rounded + zero_point, lo, hi)


def quantize_input(x: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """Float preprocessing output -> the uint8 the device takes (QuantizeLinear: round half
    to even, saturate). This is the host's last float step; the device never sees floats."""
    q = np.rint(np.asarray(x, dtype=np.float32) / np.float32(scale)) + zero_point
    return np.clip(q, 0, 255).astype(np.uint8)


def dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    return ((q.astype(np.int32) - zero_point) * np.float32(scale)).astype(np.float32)
