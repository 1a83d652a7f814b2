"""Fast, vectorisable tanh and sigmoid for the recurrent cells (numba; no SVML needed).

The pip llvmlite has no SVML, so ``np.tanh``/``np.exp`` are scalar libm calls; ``_tanh`` is
Eigen's rational approximation (``generic_fast_tanh_float``) with an exp-series tail, |error| <
3e-7 everywhere and exactly +-1 in saturation; ``_sigmoid`` is 1 / (1 + exp(-x)) with Cephes'
``expf`` (Cody-Waite range reduction, a degree-5 polynomial, the power of two put into the
exponent bits), |error| < 1e-7 and exactly 0 / 1 where float32's sigmoid is.  Both vectorise
(every branch is a select).  Must not import torch or onnxruntime.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from . import config  # noqa: F401  (sets NUMBA_CACHE_DIR before numba is imported)
from .config import FASTMATH
from .config import JIT as _JIT

JIT = dict(_JIT, fastmath=set(FASTMATH))

# Eigen generic_fast_tanh_float: tanh(x) ~ x * P(x^2) / Q(x^2) on [-c, c], +-1 outside.
_CLAMP = np.float32(7.90531110763549805)
_A1 = np.float32(4.89352455891786e-03)
_A3 = np.float32(6.37261928875436e-04)
_A5 = np.float32(1.48572235717979e-05)
_A7 = np.float32(5.12229709037114e-08)
_A9 = np.float32(-8.60467152213735e-11)
_A11 = np.float32(2.00018790482477e-13)
_A13 = np.float32(-2.76076847742355e-16)
_B0 = np.float32(4.89352518554385e-03)
_B2 = np.float32(2.26843463243900e-03)
_B4 = np.float32(1.18534705686654e-04)
_B6 = np.float32(1.19825839466702e-06)
_E_MID = np.float32(17.0)  # tail of tanh: exp(-2|x|) = exp(-17) * exp(17 - 2|x|)
_TWO_E0 = np.float32(2.0 * np.exp(-17.0))
_TAIL_END = np.float32(9.5)
_TWO = np.float32(2.0)
_C2, _C3, _C4 = (np.float32(1.0 / n) for n in (2, 3, 4))
# Cephes expf: exp(x) = 2^n exp(r), n = round(x log2 e), r = x - n ln 2 in two parts (Cody-Waite)
_LOG2E = np.float32(1.44269504088896341)
_LN2_HI = np.float32(0.693359375)
_LN2_LO = np.float32(-2.12194440e-4)
_EXP_LO = np.float32(-87.0)  # 2^n stays a normal float32 (n >= -125)
_EXP_HI = np.float32(88.0)
_P0, _P1, _P2 = np.float32(1.9875691500e-4), np.float32(1.3981999507e-3), np.float32(8.3334519073e-3)
_P3, _P4, _P5 = np.float32(4.1665795894e-2), np.float32(1.6666665459e-1), np.float32(5.0000001201e-1)
_HALF = np.float32(0.5)
_ONE = np.float32(1.0)
_ZERO = np.float32(0.0)
NO_CLIP = np.float32(3.0e38)  # `clip` when the attribute is absent (a no-op clamp keeps one code path)


@njit(**JIT)
def _tanh(x):
    """Eigen's rational tanh on [-c, c], 1 - 2 exp(-2|x|) outside.

    The tail matters: with Eigen's plain clamp a saturated GRU gate z is 1 - 2.7e-7 instead of
    float32's 1 - 1e-10 -> 1.0, and (1 - z) * n leaks 2e-7 into outputs that should be ~0.
    Both branches are computed and selected, so the loop still vectorises.
    """
    big = abs(x) >= _CLAMP
    x_in = x
    x = min(max(x, -_CLAMP), _CLAMP)
    x2 = x * x
    p = x2 * _A13 + _A11
    p = x2 * p + _A9
    p = x2 * p + _A7
    p = x2 * p + _A5
    p = x2 * p + _A3
    p = x2 * p + _A1
    p = x * p
    q = x2 * _B6 + _B4
    q = x2 * q + _B2
    q = x2 * q + _B0
    t = p / q
    # |x| >= c: tanh = 1 - 2 exp(-2|x|) (+ O(e^-4|x|)) = 1 - 2 exp(-17) exp(u), u = 17 - 2|x| in
    # [-2, 1.2], exp(u) by its degree-4 Taylor series: its error (< 0.07 exp(u) at u = -2) times
    # 2 exp(-17) stays under 1.2e-8, a fifth of float32's spacing below 1; past |x| = 9.5 the
    # float32 result is 1 anyway.
    u = _E_MID - _TWO * min(abs(x_in), _TAIL_END)
    e = _ONE + u * (_ONE + u * _C2 * (_ONE + u * _C3 * (_ONE + u * _C4)))
    tail = _ONE - _TWO_E0 * e
    return (tail if x_in > _ZERO else -tail) if big else t


@njit(**JIT)
def _sigmoid(x):
    """1 / (1 + exp(-x)) with Cephes' expf on [-87, 88] (clamped there; relative error ~1e-7):
    one exp and one division, where 0.5 + 0.5 tanh(x / 2) costs the rational's two polynomials,
    its division and the saturation tail (an LSTM cell's gate math, three sigmoids and two tanh:
    1.5-1.7 ms instead of 1.9-2.3 at B=32, H=256, 64 steps).  The exp is written out here, not a
    function of its own: one compiled function less in every first compile."""
    x = min(max(-x, _EXP_LO), _EXP_HI)
    n = np.floor(x * _LOG2E + _HALF)
    r = x - n * _LN2_HI
    r = r - n * _LN2_LO
    p = _P0 * r + _P1
    p = p * r + _P2
    p = p * r + _P3
    p = p * r + _P4
    p = p * r + _P5
    e = p * r * r + r + _ONE
    return _ONE / (_ONE + e * np.int32((np.int32(n) + np.int32(127)) << 23).view(np.float32))


@njit(**JIT)
def _activation_array(x, which, out):
    for i in range(x.shape[0]):
        out[i] = _tanh(x[i]) if which == 0 else _sigmoid(x[i])


def fast_tanh(x: np.ndarray) -> np.ndarray:
    """The kernels' tanh on a 1-D float32 array (for accuracy tests)."""
    x = np.ascontiguousarray(x, np.float32)
    out = np.empty_like(x)
    _activation_array(x, 0, out)
    return out


def fast_sigmoid(x: np.ndarray) -> np.ndarray:
    """The kernels' sigmoid on a 1-D float32 array (for accuracy tests)."""
    x = np.ascontiguousarray(x, np.float32)
    out = np.empty_like(x)
    _activation_array(x, 1, out)
    return out


@njit(**JIT)
def _clip(x, clip):
    return min(max(x, -clip), clip)
