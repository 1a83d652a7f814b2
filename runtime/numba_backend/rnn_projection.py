"""The input projection X W^T + biases of the RNN drivers (``rnn._run_rows``), in chunks of steps.

A driver projects the inputs of its active rows a few steps ahead of the recurrence: the rows of
``steps_per_chunk`` consecutive steps (about ``CHUNK_ROWS`` rows) are gathered and projected in one
call, and the steps read their projections while those are still in L2.  The whole sequence's
projection at once (what onnxruntime does) writes 8 MB for an LSTM-256 at batch 32 and reads it
back from memory one step at a time.  fp32 and weight-only 8-bit weights: ``matvec``'s kernels;
uint8 activations (int8 LSTMs): ``qdot``'s, each row quantized with its batch row's parameters over
the whole sequence (``qdot.input_params``).  Either way a row's projection is its own sums, the
same bits whichever rows share the call: a row alone still equals the row in a batch.  The entry
points take the activation quantization ``aq`` as a literal and compile only their own kind (see
``rnn._cell``).  Must not import torch or onnxruntime.
"""

from __future__ import annotations

import numpy as np
from numba import njit, types
from numba.extending import overload

from . import config  # noqa: F401  (sets NUMBA_CACHE_DIR before numba is imported)
from .config import FASTMATH
from .config import JIT as _JIT
from .matvec import PB, _project_any, _widened_rows
from .qdot import batch_rows, input_params, project_u8_rows

JIT = dict(_JIT, fastmath=set(FASTMATH))  # numba takes a set, not config's frozenset

CHUNK_ROWS = 256  # rows projected per call (whole steps; at least one step)


@njit(**JIT)
def steps_per_chunk(aq, Wb, n, steps):
    """Steps whose inputs a driver of ``n`` rows projects in one call.  Weight-only 8-bit weights
    (fp32 states) project the whole sequence at once: above Q16_ROWS rows ``matvec.project`` widens
    every block to fp32 once per call, which chunks would repeat."""
    if not aq and _widened_rows(Wb) > 0:
        return max(steps, 1)
    return max(1, CHUNK_ROWS // max(n, 1))


@njit(**JIT)
def gather(X, layout, s0, s1, L, reverse, b0, Xg, grp, first):
    """Xg[r] = the input of the r-th (step, active row) pair of steps s0..s1-1, step by step and
    rows in order (as the driver visits them), grp[r] its batch row, first[s - s0] step s's first
    r.  Row i (batch row b0 + i) is active at step s < L[i] and reads t = s, or L[i]-1-s when
    ``reverse``.  Returns the number of rows."""
    r = 0
    for s in range(s0, s1):
        first[s - s0] = r
        for i in range(L.shape[0]):
            if s < L[i]:
                t = L[i] - 1 - s if reverse else s
                src = X[t, b0 + i] if layout == 0 else X[b0 + i, t]
                dst = Xg[r]
                for k in range(X.shape[2]):
                    dst[k] = src[k]
                grp[r] = b0 + i
                r += 1
    return r


def project_rows(aq, Xg, r, grp, qp, w, d, xs):
    """xs[:r] = Xg[:r] W_d^T + biases of direction d (its GHp columns); ``grp`` the rows' batch rows
    and ``qp`` their uint8 parameters (``input_params``) when ``aq``."""
    if aq:
        _project_u8(Xg, r, grp, qp, w, d, xs)
    else:
        _project_f32(Xg, r, w, d, xs)


@njit(**JIT)
def _project_u8(Xg, r, grp, qp, w, d, xs):
    GHp = w.ws.shape[0] // w.T1.shape[0]  # a direction's G*H columns padded to whole blocks
    c0, c1 = d * GHp, (d + 1) * GHp
    Wd = w.Wb[c0 // PB : c1 // PB]
    project_u8_rows(Xg[:r], grp[:r], *qp, Wd, w.wzt[d], w.ws[c0:c1], w.bias[c0:c1], xs[:r], 0)


@njit(**JIT)
def _project_f32(Xg, r, w, d, xs):
    GHp = w.ws.shape[0] // w.T1.shape[0]
    c0, c1 = d * GHp, (d + 1) * GHp
    _project_any(Xg[:r], w.Wb[c0 // PB : c1 // PB], w.ws[c0:c1], w.wz[c0:c1], w.bias[c0:c1], xs[:r])


@overload(project_rows, jit_options=dict(JIT, cache=False), prefer_literal=True)
def _project_rows_jit(aq, Xg, r, grp, qp, w, d, xs):
    if isinstance(aq, types.BooleanLiteral):  # one implementation per literal (see rnn._cell)
        if aq.literal_value:
            return lambda aq, Xg, r, grp, qp, w, d, xs: _project_u8(Xg, r, grp, qp, w, d, xs)
        return lambda aq, Xg, r, grp, qp, w, d, xs: _project_f32(Xg, r, w, d, xs)
    return project_rows


def row_params(aq, X, layout):
    """The uint8 parameters of each batch row of X (``qdot.input_params``) when ``aq``, else ()."""
    return input_params(X, layout) if aq else ()


@overload(row_params, jit_options=dict(JIT, cache=False), prefer_literal=True)
def _row_params_jit(aq, X, layout):
    if isinstance(aq, types.BooleanLiteral) and not aq.literal_value:
        return lambda aq, X, layout: ()
    return lambda aq, X, layout: input_params(X, layout)


@njit(**JIT)
def project_every_step(aq, X, layout, w):
    """X (A0, A1, I) W^T + biases of every step and direction as one call per direction,
    (nd, A0*A1, GHp): what the drivers' chunks compute (``PackedRNN.project``, for benchmarks)."""
    A0, A1, I = X.shape
    N = A0 * A1
    grp = batch_rows(A0, A1, layout)
    qp = row_params(aq, X, layout)
    out = np.empty((w.T1.shape[0], N, w.ws.shape[0] // w.T1.shape[0]), np.float32)
    for d in range(out.shape[0]):
        project_rows(aq, X.reshape(N, I), N, grp, qp, w, d, out[d])
    return out
