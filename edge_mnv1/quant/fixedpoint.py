"""The int8 scheme and its fixed-point arithmetic: the one rounding rule every device must
reproduce bit for bit (docs/int8.md).

The scheme: int8 symmetric per-channel weights, uint8 asymmetric per-tensor activations
(ReLU folded into the clamp: a ReLU output has zero point 0), int32 bias at scale
s_x * s_w[c]. The reference computes in integers only:

    acc[c]  = bias[c] + sum (x - z_x) * w[c]                       int32
    a       = sat_int32(acc << left)               left  = max(0, 31 - S[c])
    t       = (a * M[c] + 2^30) >> 31              rounding doubling high multiply
    u       = (t + 2^(right-1)) >> right           right = max(0, S[c] - 31); u = t if 0
    y[c]    = clamp(u + z_y, lo, 255)

where M[c] in [2^30, 2^31) and S[c] encode the real multiplier s_x * s_w[c] / s_y to 31
bits, `>>` is arithmetic and both roundings are half up (toward +infinity). This is the
32-bit arithmetic of CMSIS-NN and TFLite: one SQRDMULH and one SRSHR (VQRDMULH, VRSHL on
Helium), so every kernel can compute it without 64-bit registers. Average pooling sums
(x - z_x) and requantizes by s_x / (s_y * H * W). No float enters this arithmetic: the
floats are read once, when the multipliers are derived from the model's scales.
"""

from __future__ import annotations

import math

import numpy as np

from edge_mnv1.errors import UsageError

SCHEME = {
    "weights": "int8, symmetric, per output channel",
    "activations": "uint8, asymmetric, per tensor",
    "bias": "int32 at scale s_x * s_w[c]",
    "requantize": "int32: t = (sat(acc << max(0, 31-S)) * M + 2^30) >> 31, then "
                  "rounding shift right by max(0, S-31); M in [2^30, 2^31), both round half up",
    "calibration": "min-max over the calibration images (ONNX Runtime quantize_static)",
}
MULTIPLIER_BITS = 31
INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1


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


def split_shift(shift) -> tuple[np.ndarray, np.ndarray]:
    """(left, right) from S: a multiplier >= 1 shifts the accumulator left before the high
    multiply (S < 31), a smaller one shifts the product right after it (S > 31)."""
    shift = np.asarray(shift, dtype=np.int64)
    return np.maximum(0, MULTIPLIER_BITS - shift), np.maximum(0, shift - MULTIPLIER_BITS)


def high_multiply(a: np.ndarray, mult) -> np.ndarray:
    """(a * M + 2^30) >> 31: SQRDMULH's rounding doubling high half. |a| < 2^31 and M > 0,
    so it cannot saturate."""
    return (a * np.asarray(mult, np.int64) + (np.int64(1) << 30)) >> MULTIPLIER_BITS


def rounding_shift(t: np.ndarray, right) -> np.ndarray:
    """(t + 2^(right-1)) >> right, t itself for right = 0: SRSHR / VRSHR, half up."""
    right = np.asarray(right, dtype=np.int64)
    return (t + ((np.int64(1) << right) >> 1)) >> right


def requantize(acc: np.ndarray, mult: np.ndarray, shift: np.ndarray, zero_point: int,
               lo: int, hi: int) -> np.ndarray:
    """The one rounding rule of the integer path (channel axis already broadcast); int64
    arrays holding the int32 values every step of a device computes."""
    left, right = split_shift(shift)
    a = np.clip(acc.astype(np.int64) << left, INT32_MIN, INT32_MAX)
    u = rounding_shift(high_multiply(a, mult), right)
    return np.clip(u + zero_point, lo, hi)


def quantize_input(x: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """Float preprocessing output -> the uint8 the device takes (QuantizeLinear: round half
    to even, saturate). This is the host's last float step; the device never sees floats."""
    q = np.rint(np.asarray(x, dtype=np.float32) / np.float32(scale)) + zero_point
    return np.clip(q, 0, 255).astype(np.uint8)


def dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    return ((q.astype(np.int32) - zero_point) * np.float32(scale)).astype(np.float32)
