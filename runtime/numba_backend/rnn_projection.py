"""The input projection X W^T + biases of the RNN drivers (``rnn._run_rows``): every step at once,
or, for int8 (uint8-activation) LSTMs from ``STEP_ROWS`` rows, the active rows step by step.

fp32 weights: ``matvec``'s kernels, every direction in one pass.  uint8 activations: ``qdot``'s,
per direction (its zero-point terms are per direction), each row quantized with its batch row's
parameters over the whole sequence (``qdot.input_params``), so a row's projection is the same bits
whichever way it is computed.  The entry points take the activation quantization ``aq`` as a
literal and compile only their own kind (see ``rnn._cell``).  Must not import torch or onnxruntime.
"""

from __future__ import annotations

import numpy as np
from numba import njit, types
from numba.extending import overload

from . import config  # noqa: F401  (sets NUMBA_CACHE_DIR before numba is imported)
from .config import FASTMATH
from .config import JIT as _JIT
from .matvec import PB, _project_any
from .qdot import AMX, input_params, project_u8_rows

JIT = dict(_JIT, fastmath=set(FASTMATH))  # numba takes a set, not config's frozenset

# From this many rows per driver an int8 LSTM projects its inputs step by step (_run_rows).  Measured
# against the whole sequence's projection (H=256, 512): with VNNI products 0.88-0.91x at 16 rows,
# 0.97-1.05x at 8; with AMX tiles (whose 64-row chunks of the whole projection run 2x faster)
# 0.92-1.00x at 32 rows, 1.04-1.11x at 16.
STEP_ROWS = 32 if AMX else 16


def _project_all(aq, X, layout, w, rows):
    """(xw, qp): X (A0, A1, I) W^T + biases for every step and direction, (A0, A1, nd*GHp), what
    drivers of ``rows`` rows read, or an empty xw when they project step by step (int8 LSTMs from
    STEP_ROWS rows); qp the uint8 parameters of each batch row (``qdot.input_params``) when ``aq``,
    else an empty tuple.  fp32: ``_project_any``, every direction in one pass (8.4M MACs at T=64,
    I=128, H=256 LSTM: 0.105 ms vs numpy/OpenBLAS sgemm 0.150 ms; batch 32: 3.4 vs 4.2 ms)."""
    if aq:
        return _project_all_u8(aq, X, layout, w, rows)
    return _project_all_f32(aq, X, layout, w, rows)


def _project_all_f32(aq, X, layout, w, rows):
    A0, A1, I = X.shape
    C = w.ws.shape[0]
    xw = np.empty((A0, A1, C), np.float32)
    _project_any(X.reshape(A0 * A1, I), w.Wb, w.ws, w.wz, w.bias, xw.reshape(A0 * A1, C))
    return xw, ()


@overload(_project_all, jit_options=dict(JIT, cache=False), prefer_literal=True)
def _project_all_jit(aq, X, layout, w, rows):
    if isinstance(aq, types.BooleanLiteral):  # one implementation per literal (see _cell)
        # the implementations themselves, not calls of them: one compiled function less each
        return _project_all_u8 if aq.literal_value else _project_all_f32
    return _project_all


def _project_all_u8(aq, X, layout, w, rows):
    A0, A1, I = X.shape
    nd, GHp = w.wzt.shape[0], w.wzt.shape[2]
    qp = input_params(X, layout)
    if rows >= STEP_ROWS:
        return np.empty((0, 0, nd * GHp), np.float32), qp
    xw = np.empty((A0, A1, nd * GHp), np.float32)
    group = np.empty(A0 * A1, np.int64)  # the batch row of each row of X flattened
    for a in range(A0):
        for b in range(A1):
            group[a * A1 + b] = b if layout == 0 else a
    X2, out = X.reshape(A0 * A1, I), xw.reshape(A0 * A1, nd * GHp)
    for d in range(nd):  # per direction: the zero-point terms are (nd, 2, GHp)
        Wd, zterm, ws, bias, c0 = _direction_u8(w, d)
        project_u8_rows(X2, group, *qp, Wd, zterm, ws, bias, out, c0)
    return xw, qp


@njit(**JIT)
def _direction_u8(w, d):
    """Direction d's part of the uint8 input weights, as ``project_u8_rows`` takes it: the blocks,
    zero-point terms, scales and bias of its GHp columns, and its first column in xw (c0)."""
    GHp = w.wzt.shape[2]
    nb, c0 = GHp // PB, d * GHp
    return w.Wb[d * nb : (d + 1) * nb], w.wzt[d], w.ws[c0 : c0 + GHp], w.bias[c0 : c0 + GHp], c0


def _step_projection(aq, X, layout, Xg, m, bat, tix, qp, w, d, xs):
    """xs[:m] = the active rows' X W^T + biases at this step; only activation-quantized LSTMs
    project step by step (``_project_all``), so fp32 compiles none of it."""
    if aq:
        for a in range(m):
            src = X[tix[a], bat[a]] if layout == 0 else X[bat[a], tix[a]]
            xa = Xg[a]
            for k in range(X.shape[2]):
                xa[k] = src[k]
        Wd, zterm, ws, bias, c0 = _direction_u8(w, d)
        project_u8_rows(Xg[:m], bat[:m], *qp, Wd, zterm, ws, bias, xs[:m], c0)


@overload(_step_projection, jit_options=dict(JIT, cache=False), prefer_literal=True)
def _step_projection_jit(aq, X, layout, Xg, m, bat, tix, qp, w, d, xs):
    if isinstance(aq, types.BooleanLiteral) and not aq.literal_value:
        return lambda aq, X, layout, Xg, m, bat, tix, qp, w, d, xs: None
    return _step_projection
