"""Quantization ops of the numba backend: ONNX's and onnxruntime's ``com.microsoft`` ones.

ONNX: DynamicQuantizeLinear, QuantizeLinear, DequantizeLinear (per tensor, per axis and
blocked), MatMulInteger.  onnxruntime contrib ops (as its ``ContribOperators.md`` defines
them): ``DynamicQuantizeMatMul(A float, B int8|uint8, b_scale, b_zero_point?, bias?)``
quantizes ``A`` to uint8 like DynamicQuantizeLinear and returns
``(A_q - a_zp) @ (B - b_zp) * a_scale * b_scale + bias``; ``MatMulIntegerToFloat(A, B,
a_scale, b_scale, a_zero_point?, b_zero_point?, bias?)`` is the same product for an
already-quantized ``A``.  ``b_scale``/``b_zero_point`` are scalars or per output column.

The integer product runs in ``_qgemm_kernel``: int8/uint8 operands widened to int32 and
accumulated exactly in int32, reading the weight as int8 (a quarter of the fp32 memory
traffic); the zero point of ``B`` is applied afterwards from the row sums of ``A``.

Rounding is round-half-to-even and saturating, as the ONNX spec asks.  Must not import
torch or onnxruntime.
"""

from __future__ import annotations

import numba
import numpy as np

from . import config  # noqa: F401  (sets NUMBA_CACHE_DIR before numba is imported)
from .config import JIT as _JIT
from .ops import NumpyOp, numpy_dtype

# numba wants a mutable set for fastmath; config.JIT holds a frozenset.
JIT = dict(_JIT, fastmath=set(_JIT["fastmath"]))

_INT_RANGES = {np.dtype(t): (np.iinfo(t).min, np.iinfo(t).max) for t in (np.uint8, np.int8, np.uint16, np.int16)}


@numba.njit(parallel=True, **JIT)
def _qgemm_kernel(a, a_zp, b, out):  # pragma: no cover - compiled
    # a (M, K) int8|uint8, a_zp (M,) int32, b (K, N) int8|uint8, out (M, N) int32
    m_rows, k_dim = a.shape
    n_cols = b.shape[1]
    for m in numba.prange(m_rows):
        row = out[m]
        for n in range(n_cols):
            row[n] = 0
        for k in range(k_dim):
            av = np.int32(a[m, k]) - a_zp[m]
            if av != 0:
                for n in range(n_cols):
                    row[n] += av * np.int32(b[k, n])


def qgemm(a: np.ndarray, a_zp, b: np.ndarray, b_zp=None) -> np.ndarray:
    """Exact int32 ``(a - a_zp) @ (b - b_zp)`` for 2-D int8/uint8 ``a`` (M, K) and ``b`` (K, N).

    ``a_zp``: scalar or (M,); ``b_zp``: None, scalar or (N,).
    """
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"qgemm: shapes {a.shape} and {b.shape} do not multiply")
    a = np.ascontiguousarray(a)
    b = np.ascontiguousarray(b)
    a_zp32 = np.broadcast_to(np.asarray(0 if a_zp is None else a_zp, np.int32).reshape(-1), (a.shape[0],))
    a_zp32 = np.ascontiguousarray(a_zp32)
    out = np.empty((a.shape[0], b.shape[1]), np.int32)
    _qgemm_kernel(a, a_zp32, b, out)
    if b_zp is not None and np.any(b_zp):
        row_sums = a.sum(axis=1, dtype=np.int32) - a_zp32 * np.int32(a.shape[1])  # sum_k (a - a_zp)
        out -= row_sums[:, None] * np.asarray(b_zp, np.int32).reshape(1, -1)
    return out


def dynamic_quantize(x: np.ndarray):
    """DynamicQuantizeLinear: uint8 ``y``, float32 ``scale``, uint8 ``zero_point`` (ranges include 0)."""
    x = np.asarray(x, np.float32)
    lo = min(float(x.min()), 0.0) if x.size else 0.0
    hi = max(float(x.max()), 0.0) if x.size else 0.0
    scale = np.float32((np.float32(hi) - np.float32(lo)) / np.float32(255.0))
    if scale == 0:  # all zeros: any scale works; keep y = zp = 0
        return np.zeros(x.shape, np.uint8), np.float32(0.0), np.uint8(0)
    zp = np.uint8(np.clip(np.rint(np.float32(0.0) - np.float32(lo) / scale), 0, 255))
    y = np.clip(np.rint(x / scale) + np.float32(zp), 0, 255).astype(np.uint8)
    return y, scale, zp


def _broadcast_param(param, x_ndim, axis, block_size, x_shape):
    """Reshape a scale/zero point for ``x``: scalar, per ``axis`` (1-D) or blocked along ``axis``."""
    param = np.asarray(param)
    if param.ndim == 0 or (param.ndim == 1 and param.size == 1 and block_size == 0):
        return param.reshape(())
    axis = axis % x_ndim
    if block_size:
        return np.repeat(param, block_size, axis=axis).take(np.arange(x_shape[axis]), axis=axis)
    shape = [1] * x_ndim
    shape[axis] = -1
    return param.reshape(shape)


class QuantizeLinear(NumpyOp):
    supported_attributes = frozenset({"axis", "block_size", "saturate", "output_dtype", "precision"})

    def __init__(self, node, consts):
        super().__init__(node, consts)
        self.out_dtype = None
        if self.attr("output_dtype", 0):
            self.out_dtype = numpy_dtype(self.attr("output_dtype"))
            if self.out_dtype not in _INT_RANGES:
                self.refuse(f"output_dtype {self.attr('output_dtype')} is not supported (only 8/16-bit ints)")
        if self.attr("precision", 0):
            self.refuse(f"precision={self.attr('precision')} is not supported")

    def compute(self, x, scale, zero_point=None):
        dtype = zero_point.dtype if zero_point is not None else (self.out_dtype or np.dtype(np.uint8))
        if dtype not in _INT_RANGES:
            self.refuse(f"quantizing to {dtype} is not supported")
        axis, block = self.attr("axis", 1), self.attr("block_size", 0)
        scale = _broadcast_param(scale, x.ndim, axis, block, x.shape)
        y = np.rint(np.divide(x, scale).astype(np.float32))
        if zero_point is not None:
            y = y + _broadcast_param(zero_point, x.ndim, axis, block, x.shape).astype(np.float32)
        lo, hi = _INT_RANGES[dtype]
        return np.clip(y, lo, hi).astype(dtype)


class DequantizeLinear(NumpyOp):
    supported_attributes = frozenset({"axis", "block_size", "output_dtype"})

    def __init__(self, node, consts):
        super().__init__(node, consts)
        self.out_dtype = numpy_dtype(self.attr("output_dtype", 0)) if self.attr("output_dtype", 0) else None
        if self.attr("output_dtype", 0) and self.out_dtype is None:
            self.refuse(f"output_dtype {self.attr('output_dtype')} is not supported")

    def compute(self, x, scale, zero_point=None):
        axis, block = self.attr("axis", 1), self.attr("block_size", 0)
        y = x.astype(np.float32)
        if zero_point is not None:
            y = y - _broadcast_param(zero_point, x.ndim, axis, block, x.shape).astype(np.float32)
        y = y * _broadcast_param(scale, x.ndim, axis, block, x.shape)
        return y.astype(self.out_dtype or scale.dtype)


class DynamicQuantizeLinear(NumpyOp):
    def __call__(self, x):
        y, scale, zp = dynamic_quantize(x)
        return y, np.asarray(scale, np.float32), np.asarray(zp, np.uint8)


def _matmul_int(a, a_zp, b, b_zp):
    """int32 (a - a_zp) @ (b - b_zp) for N-D ``a`` (..., K) and 2-D ``b``; numpy for the rest."""
    a_zp_scalar = a_zp is None or np.ndim(a_zp) == 0 or np.size(a_zp) == 1
    if b.ndim == 2 and a.ndim >= 1 and (a.ndim == 2 or a_zp_scalar):
        a2 = a.reshape(-1, a.shape[-1]) if a.ndim != 1 else a.reshape(1, -1)
        azp = 0 if a_zp is None else (np.asarray(a_zp).reshape(()) if a_zp_scalar else a_zp)
        out = qgemm(a2, azp, b, b_zp)
        return out.reshape(a.shape[:-1] + (b.shape[1],))
    a32 = a.astype(np.int32)
    if a_zp is not None:
        a32 = a32 - (np.asarray(a_zp, np.int32)[..., None] if np.ndim(a_zp) == 1 else np.int32(a_zp))
    b32 = b.astype(np.int32) - (0 if b_zp is None else np.asarray(b_zp, np.int32))
    return np.matmul(a32, b32)


class MatMulInteger(NumpyOp):
    def compute(self, a, b, a_zero_point=None, b_zero_point=None):
        return _matmul_int(a, a_zero_point, b, b_zero_point)


class _IntMatMulToFloat(NumpyOp):
    """Shared tail: int32 accumulator * (a_scale * b_scale) + bias, in float32."""

    def __init__(self, node, consts):
        super().__init__(node, consts)
        b = consts.get(1)
        if b is not None and b.ndim != 2:
            self.refuse(f"B of rank {b.ndim} is not supported (only 2-D weights)")

    @staticmethod
    def _finish(acc, a_scale, b_scale, bias):
        y = acc.astype(np.float32) * (np.float32(a_scale) * np.asarray(b_scale, np.float32).reshape(-1))
        return y + bias if bias is not None else y


class DynamicQuantizeMatMul(_IntMatMulToFloat):
    """With a constant 2-D int8 ``B`` and constant scale/zero point (rnnkit's int8 MatMuls) the
    weights are packed once for ``qdot.project_u8`` (u8 x s8 ``vpdpbusd`` products, A quantized
    with onnxruntime's rules as one matrix, exactly as here otherwise); anything else runs the
    generic integer product."""

    def __init__(self, node, consts):
        super().__init__(node, consts)
        self._packed = None
        b, scale, zp = consts.get(1), consts.get(2), consts.get(3)
        if (
            b is not None
            and b.ndim == 2
            and b.dtype == np.int8
            and scale is not None
            and (zp is not None or not (len(node.input) > 3 and node.input[3]))
        ):
            from . import qdot  # noqa: PLC0415  (compiles its kernels on first use only)

            n = b.shape[1]
            scale = np.broadcast_to(np.asarray(scale, np.float32).reshape(-1), (n,))
            zp = (
                np.zeros(n, np.float32) if zp is None else np.broadcast_to(np.asarray(zp, np.float32).reshape(-1), (n,))
            )
            try:
                zterm = qdot.zero_point_terms(b[None], zp[None])[0]
            except ValueError:
                return  # too large or odd zero points: the generic path below
            self._packed = (qdot.pack_quads(b[None])[0], zterm, np.ascontiguousarray(scale), np.zeros(n, np.float32))
            self._project_u8 = qdot.project_u8

    def compute(self, a, b, b_scale, b_zero_point=None, bias=None):
        if self._packed is not None and a.ndim >= 1 and a.shape[-1] == b.shape[0]:
            Q, zterm, scale, zeros = self._packed
            a2 = np.ascontiguousarray(a, np.float32).reshape(1, -1, a.shape[-1])  # one group: per tensor
            out = np.empty((a2.shape[1], b.shape[1]), np.float32)
            self._project_u8(a2, 1, Q, zterm, scale, zeros, out)
            out = out.reshape(a.shape[:-1] + (b.shape[1],))
            return out + bias if bias is not None else out
        a_q, a_scale, a_zp = dynamic_quantize(a)
        acc = _matmul_int(a_q, a_zp, b, b_zero_point)
        return self._finish(acc, a_scale, b_scale, bias)


class MatMulIntegerToFloat(_IntMatMulToFloat):
    def compute(self, a, b, a_scale, b_scale, a_zero_point=None, b_zero_point=None, bias=None):
        acc = _matmul_int(a, a_zero_point, b, b_zero_point)
        return self._finish(acc, np.asarray(a_scale, np.float32).reshape(()), b_scale, bias)


OPS = {
    ("", "DequantizeLinear"): DequantizeLinear,
    ("", "DynamicQuantizeLinear"): DynamicQuantizeLinear,
    ("", "MatMulInteger"): MatMulInteger,
    ("", "QuantizeLinear"): QuantizeLinear,
    ("com.microsoft", "DynamicQuantizeMatMul"): DynamicQuantizeMatMul,
    ("com.microsoft", "MatMulIntegerToFloat"): MatMulIntegerToFloat,
}
