"""ONNX ``MatMul``, with the constant right-hand side prepared once at load.

A runtime ``B`` is plain ``np.matmul``.  A constant 2-D ``B`` (the classifier or LM head) is
prepared when the node is built:

* float32: packed in column blocks (``matvec.pack_blocks``) and ``A (..., K)`` multiplied as one
  2-D product by ``matvec.project`` (the RNN input projection's kernel: 4 rows per pass over each
  block, sums in registers).  One row (the generation step, the 256 x 10000 LM head, weights from
  L3) 347 us, level with numpy's sgemv (342 us); 7 rows of a 256 x 256 attention projection 10 us
  against 43 us for numpy's ``a @ B^T.T``.  No BLAS call: numpy's OpenBLAS starts its own threads,
  ignores the ``threads`` option and, with another process busy on a core, spun 100x slower
  (G2P decoding at 8 instead of 204 words/s on 2 cores).  The original layout is dropped, so the
  weight is held once.
* int8/uint8 (``DequantizeLinear`` with one scale per tensor or per output column, which the
  graph loader hands over as a ``QuantizedWeight``): stays 8-bit, packed in column blocks
  (``matvec.pack_blocks``), and runs ``matvec.project``: the int16-split mat-vec for up to
  ``Q16_ROWS`` rows (a quarter of fp32's memory traffic, fp32 accuracy with respect to the
  dequantized weights), per-block widening to fp32 above that.  Any other quantized layout is
  dequantized at load.

A following ``Add`` of a constant fp32 bias ``(N,)`` is fused by ``passes.fuse_matmul_bias``
(``with_bias``): the bias is added as the products are written.  Whatever the path, the result
equals ``np.matmul(A, B)`` (dequantized ``B``) to fp32 rounding, with numpy's broadcasting and
errors for the shapes the fast paths do not take.  Must not import torch or onnxruntime.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .base import QuantizedWeight
from .matvec import _as_int8, pack_blocks, prefetched, project
from .ops import NumpyOp


class PackedMatrix(NamedTuple):
    """A constant (K, N) right-hand side as ``matvec.project`` reads it: ``project(A, q, scale, zp,
    bias, out, ahead)`` computes ``A @ M + bias``.  What ``MatMul.packed_matrix`` offers a fusion."""

    q: np.ndarray  # M in column blocks (pack_blocks): fp32, or int8 (uint8 shifted to int8)
    scale: np.ndarray  # (N,) per-column scale (ones for fp32)
    zp: np.ndarray  # (N,) per-column zero point (zeros for fp32)
    ahead: bool  # read with software prefetch (matvec.prefetched)


class MatMul(NumpyOp):
    quantized_inputs = frozenset({1})  # see passes.fold_quantized_weights: consts[1] may be a QuantizedWeight
    fresh_output = True  # always a new array (passes.reuse_inplace may add into it)

    def __init__(self, node, consts):
        super().__init__(node, consts)
        self.q = None
        self.ahead = False  # software prefetch (matvec.prefetched): fp32 weights read from L3
        b = consts.get(1)
        if isinstance(b, QuantizedWeight):
            if not self._pack_quantized(b):
                consts[1] = b = b.dequantize()
        if isinstance(b, np.ndarray) and b.ndim == 2 and b.dtype == np.float32:
            self.K, self.N = b.shape
            self.q = pack_blocks(np.ascontiguousarray(b)[None])[0]
            self.ahead = prefetched(self.q.nbytes)
            self.scale = np.ones(self.N, np.float32)  # unused by fp32 blocks
            self.zp = np.zeros(self.N, np.float32)
            self.zero_bias = np.zeros(self.N, np.float32)
            consts[1] = None  # held once, as blocks: the op ignores its B argument from now on

    def _pack_quantized(self, w: QuantizedWeight) -> bool:
        q = np.asarray(w.q)
        scale = np.asarray(w.scale, np.float32)
        zp = np.zeros((), np.float32) if w.zero_point is None else np.asarray(w.zero_point, np.float32)
        if q.ndim != 2 or q.dtype not in (np.int8, np.uint8):
            return False
        K, N = q.shape
        per_column = scale.shape == (N,) and w.axis in (1, -1) and zp.size in (1, N)
        if not (per_column or (scale.size == 1 and zp.size == 1)):
            return False
        q, scale, zp = _as_int8(q, scale, zp)
        self.q = pack_blocks(np.ascontiguousarray(q)[None])[0]
        self.scale = np.ascontiguousarray(np.broadcast_to(scale.reshape(-1), (N,)), np.float32)
        self.zp = np.ascontiguousarray(np.broadcast_to(zp.reshape(-1), (N,)), np.float32)
        self.zero_bias = np.zeros(N, np.float32)
        self.K, self.N = K, N
        self.consts[1] = None  # the packed blocks are the only copy
        return True

    def compute(self, a, b=None):
        return self.biased(a, b, None)

    def with_bias(self, bias):
        """``f(a, b) = MatMul(a, b) + bias`` in one pass (plan.py fuses a following Add of a
        constant), or None when this node cannot: B not a prepared constant, bias not fp32 (N,)."""
        if self.q is None or not isinstance(bias, np.ndarray) or bias.dtype != np.float32 or bias.shape != (self.N,):
            return None
        return lambda a, b=None: self.biased(a, b, bias)

    def packed_matrix(self) -> PackedMatrix | None:
        """The prepared constant B (see ``base.Op.packed_matrix``), or None when B is a runtime value."""
        return None if self.q is None else PackedMatrix(self.q, self.scale, self.zp, self.ahead)

    def biased(self, a, b, bias):
        """MatMul(a, b) (+ bias (N,) when given)."""
        if self.q is None:
            return np.matmul(a, b)
        if a.dtype != np.float32 or a.ndim == 0 or a.shape[-1] != self.K:
            y = np.matmul(a, self._dense())  # numpy's promotion and shape errors
            return y if bias is None else y + bias
        lead = a.shape[:-1]
        a2 = a.reshape(-1, self.K)
        if not a2.flags.c_contiguous:
            a2 = np.ascontiguousarray(a2)
        out = np.empty((a2.shape[0], self.N), np.float32)
        project(a2, self.q, self.scale, self.zp, self.zero_bias if bias is None else bias, out, self.ahead)
        return out.reshape(lead + (self.N,))

    def _dense(self) -> np.ndarray:
        """B as float32 (K, N), for the inputs the fast paths do not take."""
        if self.q.dtype == np.float32:  # [cb, k, j] = M[k, cb*PB + j]
            ncb, kp, pb = self.q.shape
            return np.ascontiguousarray(self.q.transpose(1, 0, 2).reshape(kp, ncb * pb)[: self.K, : self.N])
        k = np.arange(self.K)
        # unpack the blocks: [cb, kk, 2j + e] = M[2kk + e, cb*PB + j]
        ncb, nkk, two_pb = self.q.shape
        pb = two_pb // 2
        m = self.q.reshape(ncb, nkk, pb, 2).transpose(1, 3, 0, 2).reshape(2 * nkk, ncb * pb)
        return ((m[k, : self.N].astype(np.float32) - self.zp) * self.scale).astype(np.float32)


OPS = {("", "MatMul"): MatMul}
