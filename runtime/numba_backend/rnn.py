# Gate orders (ONNX, as packed here): LSTM i,o,f,c (PyTorch i,f,g,o); GRU z,r,h (PyTorch r,z,n,
# i.e. linear_before_reset=1); RNN a single tanh gate.
"""Numba kernels for the ONNX RNN, GRU and LSTM ops (fp32 weights, or int8/uint8 weights).

One driver (``_run_rows``) owns direction, layout, ``sequence_lens`` and the initial state; the
three cells (``_rnn_cell``, ``_gru_cell`` + ``_gru_reset``, ``_lstm_cell``) are only gate math.
The cell kind and the activation quantization are compile-time literals of the driver, so a model
compiles only its own cell and arithmetic (see "Compile-time choices" below).
The driver projects its inputs ``X @ W^T + b`` a chunk of steps ahead of the recurrence
(``rnn_projection``: about CHUNK_ROWS rows per call, read back from L2; ``matvec.project``'s
kernels, 8-bit weights widened to fp32 once per call or, for at most 16 rows, read as 8-bit by
the int16-split mat-vec; ``qdot``'s for uint8 activations); the step loop runs entirely in numba.
``prange`` runs over batch rows only, one contiguous chunk of rows per thread; batch 1 or one
thread takes the serial entry point, one compiled call for the projection, the steps and the
outputs' allocation (no threading overhead).

The mat-vec kernels (packed weight blocks, fp32 FMAs and exact int8 x int16 sums) and the
projection live in ``matvec.py``; onnxruntime's DynamicQuantizeLSTM arithmetic (activations
quantized to uint8 per step, u8 x s8 sums, on AMX tiles where there are some: ``amx.py``) in
``qdot.py``; the tanh/sigmoid approximations in
``activations.py``.

Semantics follow onnxruntime: ``Y`` is zero at and after a row's sequence length; ``Y_h``/``Y_c``
are the state after the last valid step (forward) or after reading back to t=0 (reverse).  A
row of length 0 outputs zeros in ``Y`` and its initial state as ``Y_h``/``Y_c`` (our choice; the
ONNX spec does not say).

Must not import torch or onnxruntime.
"""

from __future__ import annotations

import copy
from typing import NamedTuple

import numba
import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from . import config  # noqa: F401  (sets NUMBA_CACHE_DIR before numba is imported)
from .activations import _ONE, _ZERO, NO_CLIP, _clip, _sigmoid, _tanh, fast_sigmoid, fast_tanh  # noqa: F401
from .config import FASTMATH
from .config import JIT as _JIT
from .matvec import (  # noqa: F401
    PB,
    WIDE_BYTES,
    WIDE_ROWS,
    _as_int8,
    _block_f32,
    _fma1,
    _fma4,
    _k_padded,
    _matvec,
    _matvec_q16,
    _project,
    _project_any,
    pack_blocks,
    project,
    widened,
)
from .qdot import matvec_u8, pack_quads, workspace, zero_point_terms
from .rnn_projection import (  # noqa: F401  (CHUNK_ROWS: tests)
    CHUNK_ROWS,
    gather,
    project_every_step,
    project_rows,
    row_params,
    steps_per_chunk,
)

# numba 0.68 accepts a bool, dict or set for `fastmath`, not config.FASTMATH's frozenset.
JIT = dict(_JIT, fastmath=set(FASTMATH))

RNN, GRU, LSTM = 0, 1, 2  # cell kinds
GATES = {RNN: 1, GRU: 3, LSTM: 4}


class RNNWeights(NamedTuple):
    """One RNN/GRU/LSTM node's weights as the kernels read them: the record the drivers take in place
    of a dozen positional arrays.  Built once per node (``PackedRNN``).  A Python caller passes it as
    a plain tuple (``PackedRNN.record``) and the entry points rebuild the record inside compiled code
    (``RNNWeights(*record)``): numba types a plain tuple of arrays in its C dispatcher, a NamedTuple
    through Python (measured: 12 arrays as arguments 0.80 us per call, as a NamedTuple 1.63 us, as a
    tuple rebuilt inside 1.01 us; ``docs/numba-passes.md``)."""

    Wb: np.ndarray  # input weights W^T (I, nd*GHp) in column blocks, the directions side by side, each
    #                 G*H columns padded to whole blocks (GHp); quads when activations are quantized
    ws: np.ndarray  # (nd*GHp,) their per-column scale (ones for fp32)
    wz: np.ndarray  # (nd*GHp,) their per-column zero point (zeros for fp32)
    wzt: np.ndarray  # (nd, 2, GHp) int32 zero-point terms of Wb per direction (activation-quantized LSTM only)
    bias: np.ndarray  # (nd*GHp,) W_b + R_b (GRU linear_before_reset=1: without Rb_h), zero past G*H
    T1: np.ndarray  # per direction: R^T in column blocks (quads when activations are quantized)
    T2: np.ndarray  # per direction: GRU linear_before_reset=0's R_h^T blocks, else empty
    rs: np.ndarray  # (nd, G*H) R's per-column scale
    rz: np.ndarray  # (nd, G*H) R's per-column zero point
    rzt: np.ndarray  # (nd, 2, G*H) int32 zero-point terms of T1 (activation-quantized LSTM only)
    rbh: np.ndarray  # (nd, H) GRU linear_before_reset=1's Rb_h, else zeros
    P: np.ndarray  # (nd, 3, H) LSTM peepholes i, o, f (zeros when absent)


# Cells: elementwise gate math on one row; g holds h @ R^T for the row (gate order as in the header).


@njit(**JIT)
def _rnn_cell(x, g, h, c, P, rbh, clip, flag):
    for j in range(h.shape[0]):
        h[j] = _tanh(_clip(x[j] + g[j], clip))


@njit(**JIT)
def _gru_reset(x, g, h, v, clip):
    """linear_before_reset=0: v = r * h, the input of the second mat-vec (with R_h)."""
    H = h.shape[0]
    for j in range(H):
        v[j] = _sigmoid(_clip(x[H + j] + g[H + j], clip)) * h[j]


@njit(**JIT)
def _gru_cell(x, g, h, c, P, rbh, clip, flag):
    """flag = linear_before_reset: g[2H:] is h @ R_h^T (then r * (. + Rb_h)), else (r*h) @ R_h^T."""
    H = h.shape[0]
    if flag:
        for j in range(H):
            r = _sigmoid(_clip(x[H + j] + g[H + j], clip))
            g[2 * H + j] = r * (g[2 * H + j] + rbh[j])
    for j in range(H):
        z = _sigmoid(_clip(x[j] + g[j], clip))
        n = _tanh(_clip(x[2 * H + j] + g[2 * H + j], clip))
        h[j] = (_ONE - z) * n + z * h[j]


@njit(**JIT)
def _lstm_cell(x, g, h, c, P, rbh, clip, flag):
    """flag = input_forget; P is (3, H) peepholes i, o, f (zeros when absent)."""
    H = h.shape[0]
    coupled = np.float32(flag)  # input_forget: f = 1 - i, as a blend so the loop has no branch
    for j in range(H):
        cp = c[j]
        i = _sigmoid(_clip(x[j] + g[j] + P[0, j] * cp, clip))
        f = _sigmoid(_clip(x[2 * H + j] + g[2 * H + j] + P[2, j] * cp, clip))
        f = f + coupled * (_ONE - i - f)
        cc = _tanh(_clip(x[3 * H + j] + g[3 * H + j], clip))
        cn = f * cp + i * cc
        o = _sigmoid(_clip(x[H + j] + g[H + j] + P[1, j] * cn, clip))
        c[j] = cn
        h[j] = o * _tanh(cn)


# Compile-time choices.  The drivers take the cell ``kind`` and ``aq`` (activations quantized, the
# DynamicQuantizeLSTM arithmetic) as literals (constants of the entry points, ``_entries``), and these
# overloads pick one implementation per literal at typing time: an fp32 LSTM compiles no GRU/RNN
# gate math and no uint8 input projection (numba types and lowers both sides of a runtime ``if``).
# With the element loops that end _run_rows, the first compile of an fp32 LSTM classifier went from
# 14.2 to 8.2 s on an idle 2-core machine (int8: 17.6 -> 10.6 s).  The recurrent product keeps its
# runtime ``if aq`` (see _run_rows).  A non-literal argument (a direct call from Python) gets every
# branch, as before.


def _cell(kind, x, g, h, c, P, rbh, clip, flag):
    """The gate math of one row for cell ``kind``."""
    if kind == LSTM:
        _lstm_cell(x, g, h, c, P, rbh, clip, flag)
    elif kind == GRU:
        _gru_cell(x, g, h, c, P, rbh, clip, flag)
    else:
        _rnn_cell(x, g, h, c, P, rbh, clip, flag)


@overload(_cell, jit_options=dict(JIT, cache=False), prefer_literal=True)
def _cell_jit(kind, x, g, h, c, P, rbh, clip, flag):
    if not isinstance(kind, types.IntegerLiteral):
        return _cell
    return _literal_cell(kind.literal_value)


def _literal_cell(k):
    if k == LSTM:
        return lambda kind, x, g, h, c, P, rbh, clip, flag: _lstm_cell(x, g, h, c, P, rbh, clip, flag)
    if k == GRU:
        return lambda kind, x, g, h, c, P, rbh, clip, flag: _gru_cell(x, g, h, c, P, rbh, clip, flag)
    return lambda kind, x, g, h, c, P, rbh, clip, flag: _rnn_cell(x, g, h, c, P, rbh, clip, flag)


def _gru_second_pass(kind, V, m, act, xs, r0, g, h, T2, rs, rz, clip, back):
    """GRU with linear_before_reset=0: V = r * h for the active rows, then g[:, 2H:] = V @ R_h^T
    (xs[r0 + a]: active row a's projected input, as _run_rows reads it)."""
    if kind != GRU:
        return
    H = h.shape[1]
    GH = rs.shape[0]
    for a in range(m):
        _gru_reset(xs[r0 + a, :GH], g[a], h[act[a]], V[a], clip)
    _matvec(V, m, T2, rs, rz, g, 2 * H, H, back)


@overload(_gru_second_pass, jit_options=dict(JIT, cache=False), prefer_literal=True)
def _gru_second_pass_jit(kind, V, m, act, xs, r0, g, h, T2, rs, rz, clip, back):
    if isinstance(kind, types.IntegerLiteral) and kind.literal_value != GRU:
        return lambda kind, V, m, act, xs, r0, g, h, T2, rs, rz, clip, back: None
    return _gru_second_pass


def _u8_product(aq, V, m, T1, rzt, rs, g, GH, hq, acc):
    """``matvec_u8`` for activation-quantized LSTMs, nothing for the others: an fp32 driver then
    compiles none of the uint8 quantization (range, quantize, products, dequantize: ~0.9 s of
    every fp32 first compile while it sat behind a plain runtime branch)."""
    if aq:
        matvec_u8(V, m, T1, rzt, rs, g, 0, GH, hq, acc)


def _u8_product_any(aq, V, m, T1, rzt, rs, g, GH, hq, acc):
    matvec_u8(V, m, T1, rzt, rs, g, 0, GH, hq, acc)


@overload(_u8_product, jit_options=dict(JIT, cache=False), prefer_literal=True)
def _u8_product_jit(aq, V, m, T1, rzt, rs, g, GH, hq, acc):
    if isinstance(aq, types.BooleanLiteral) and not aq.literal_value:
        return lambda aq, V, m, T1, rzt, rs, g, GH, hq, acc: None
    return _u8_product_any


def _state_product(aq, V, m, T1, rs, rz, g, ncols, back):
    """``_matvec`` (fp32 states, fp32 or 8-bit weights) for all but activation-quantized LSTMs, whose
    drivers then compile no int16-split product for their quad-packed weights (0.6 s)."""
    if not aq:
        _matvec(V, m, T1, rs, rz, g, 0, ncols, back)


@overload(_state_product, jit_options=dict(JIT, cache=False), prefer_literal=True)
def _state_product_jit(aq, V, m, T1, rs, rz, g, ncols, back):
    if isinstance(aq, types.BooleanLiteral) and aq.literal_value:
        return lambda aq, V, m, T1, rs, rz, g, ncols, back: None
    return _state_product


@njit(**JIT)
def _run_rows(kind, d, b0, b1, reverse, layout, X, qp, w, aq, lens, h0, c0, Y, hn, cn, clip, flag):
    """The driver: one direction d of batch rows b0..b1-1, all rows stepping together.

    X is the input, (T, B, I) for layout 0 or (B, T, I) for layout 1; ``w`` the node's ``RNNWeights``;
    ``qp`` the batch rows' uint8 parameters when ``aq`` (``rnn_projection.row_params``).  At step s
    the rows with s < length are active; forward reads t = s, reverse t = length-1-s.  Their inputs'
    projection X W^T + biases is made a chunk of steps ahead (``rnn_projection``: about CHUNK_ROWS
    rows per call, read back from L2).  ``aq``: the recurrent product quantizes h to uint8 per row
    and step (qdot.matvec_u8, T1 in quads, rzt its zero_point_terms), as onnxruntime's
    DynamicQuantizeLSTM does; else ``_matvec``.
    """
    T1, T2, rs, rz, rzt, rbh, P = w.T1[d], w.T2[d], w.rs[d], w.rz[d], w.rzt[d], w.rbh[d], w.P[d]
    H = h0.shape[2]
    GH = rs.shape[0]
    n = b1 - b0
    T = X.shape[0] if layout == 0 else X.shape[1]
    h = h0[d, b0:b1].copy()  # (n, H)
    c = c0[d, b0:b1].copy()
    L = np.empty(n, np.int64)
    steps = 0
    for i in range(n):
        L[i] = min(max(lens[b0 + i], 0), T)
        steps = max(steps, L[i])
    V = np.zeros((n, 4 * T1.shape[1] if aq else _k_padded(T1)), np.float32)  # padded inputs; cols >= H stay 0
    g = np.empty((n, GH), np.float32)
    act = np.empty(n, np.int64)
    hq, acc = workspace(n if aq else 0, T1)  # matvec_u8's buffers
    tix = np.empty(n, np.int64)
    bat = np.empty(n, np.int64)  # the active rows' batch rows
    cs = steps_per_chunk(aq, w.Wb, n, steps)
    rows = n * min(cs, max(steps, 1))
    xs = np.empty((rows, w.ws.shape[0] // w.T1.shape[0]), np.float32)  # a chunk's projections (GHp wide)
    Xg = np.empty((rows, X.shape[2]), np.float32)  # and their inputs
    grp = np.empty(rows, np.int64)
    first = np.empty(cs, np.int64)  # each step's first row in xs
    two_pass = kind == GRU and flag == 0
    s0 = 0
    for s in range(steps):
        if s % cs == 0:
            s0 = s
            r = gather(X, layout, s, min(s + cs, steps), L, reverse, b0, Xg, grp, first)
            project_rows(aq, Xg, r, grp, qp, w, d, xs)
        m = np.int64(0)  # not the literal 0: calls would compile once more for Literal[int](0)
        for i in range(n):
            if s < L[i]:
                act[m] = i
                bat[m] = b0 + i
                tix[m] = L[i] - 1 - s if reverse else s
                m += 1
        for a in range(m):
            hi = h[act[a]]
            va = V[a]
            for k in range(H):
                va[k] = hi[k]
        back = (s & 1) == 1  # blocks back and forth: what one step read last is still in cache (_matvec)
        # one of the two is a no-op: each is compiled only for its own kind of layer
        _u8_product(aq, V, m, T1, rzt, rs, g, GH, hq, acc)
        _state_product(aq, V, m, T1, rs, rz, g, 2 * H if two_pass else GH, back)
        r0 = first[s - s0]
        if two_pass:
            _gru_second_pass(kind, V, m, act, xs, r0, g, h, T2, rs, rz, clip, back)
        for a in range(m):
            i = act[a]
            _cell(kind, xs[r0 + a, :GH], g[a], h[i], c[i], P, rbh, clip, flag)
            y = Y[tix[a], d, bat[a]] if layout == 0 else Y[bat[a], tix[a], d]
            for j in range(H):
                y[j] = h[i, j]
    for i in range(n):  # onnxruntime: zeros at and after the sequence end
        b = b0 + i
        for t in range(L[i], T):
            y = Y[t, d, b] if layout == 0 else Y[b, t, d]
            for j in range(H):
                y[j] = _ZERO
    for i in range(n):  # element loops: a slice assignment compiles numba's shape-error formatting (~4 s)
        for j in range(H):
            hn[d, b0 + i, j] = h[i, j]
            cn[d, b0 + i, j] = c[i, j]


@njit(**JIT)
def _outputs(X, layout, h0):
    """Y, Y_h, Y_c of an RNN node (Y in the node's layout, the states (nd, B, H)), uninitialised."""
    nd, Bn, H = h0.shape
    A0, A1 = X.shape[0], X.shape[1]
    Y = np.empty((A0, nd, A1, H) if layout == 0 else (A0, A1, nd, H), np.float32)
    return Y, np.empty((nd, Bn, H), np.float32), np.empty((nd, Bn, H), np.float32)


@njit(parallel=True, **JIT)
def _rows_parallel(kind, dirs, layout, X, w, aq, lens, h0, c0, Y, hn, cn, clip, flag, threads):
    """prange over batch only: one contiguous chunk of rows per thread (each projects its own
    rows' inputs)."""
    B = h0.shape[1]
    chunks = min(B, threads)
    qp = row_params(aq, X, layout)
    for d in range(w.T1.shape[0]):
        for ci in prange(chunks):
            _run_rows(
                kind,
                d,
                ci * B // chunks,
                (ci + 1) * B // chunks,
                dirs[d],
                layout,
                X,
                qp,
                w,
                aq,
                lens,
                h0,
                c0,
                Y,
                hn,
                cn,
                clip,
                flag,
            )


def _entries(kind: int, aq: bool):
    """The serial and parallel entry points (and the projection alone, ``PackedRNN.project``) for one
    cell ``kind`` and activation quantization: njit wrappers that pass both on as constants, which
    numba types as literals (an int or bool from a Python caller is not one, and ``numba.literally``
    runs the compiler's front end again on every call from Python: 25 ms).  Closures over an int and
    a bool cache on disk like any function.  ``record`` is ``PackedRNN.record``, the weights as a
    plain tuple (see ``RNNWeights``)."""

    @njit(**JIT)
    def serial(dirs, layout, X, record, lens, h0, c0, clip, flag):
        # the drivers called here, not through a shared serial function: numba re-optimises a
        # callee's code in every caller's module, so each level of calls around the driver
        # lengthens every first compile (two levels less: an fp32 LSTM's 8.6 -> 6.3 s)
        w = RNNWeights(*record)
        qp = row_params(aq, X, layout)
        Y, hn, cn = _outputs(X, layout, h0)
        for d in range(h0.shape[0]):
            _run_rows(kind, d, 0, h0.shape[1], dirs[d], layout, X, qp, w, aq, lens, h0, c0, Y, hn, cn, clip, flag)
        return Y, hn, cn

    @njit(**JIT)
    def parallel(dirs, layout, X, record, lens, h0, c0, Y, hn, cn, clip, flag, threads):
        _rows_parallel(kind, dirs, layout, X, RNNWeights(*record), aq, lens, h0, c0, Y, hn, cn, clip, flag, threads)

    @njit(**JIT)
    def project_all(X, layout, record):
        return project_every_step(aq, X, layout, RNNWeights(*record))

    return serial, parallel, project_all


_ENTRIES = {(k, q): _entries(k, q) for k, q in ((RNN, False), (GRU, False), (LSTM, False), (LSTM, True))}


class PackedRNN:
    """Weights of one RNN/GRU/LSTM node, packed for the kernels (built once per node).

    ``W``/``R``: float arrays ``[nd, G*H, I]``/``[nd, G*H, H]`` (ONNX layout), or tuples
    ``(q, scale, zero_point)`` already transposed to ``[nd, I, G*H]``/``[nd, H, G*H]`` with
    per-column ``scale``/``zero_point`` of shape ``[nd, G*H]`` (float32).  Quantized ``q`` stays
    8-bit in the kernels (uint8 becomes int8 - 128, with the zero point shifted to match).

    ``dynamic=True`` (8-bit W and R, LSTM: onnxruntime's DynamicQuantizeLSTM): activations are
    quantized to uint8 at run time as onnxruntime does (qdot.py), the weights packed in quads for
    ``vpdpbusd``; otherwise 8-bit weights multiply fp32 activations exactly (weight-only int8,
    the ONNX semantics of DequantizeLinear feeding an RNN).
    """

    def __init__(self, kind: int, hidden: int, W, R, B, P, *, linear_before_reset: int = 0, dynamic: bool = False):
        self.kind, self.H = kind, hidden
        GH = GATES[kind] * hidden
        self.lbr = int(linear_before_reset)
        self.aq = bool(dynamic)
        if self.aq and not (kind == LSTM and isinstance(W, tuple) and isinstance(R, tuple)):
            raise ValueError("dynamic (activation-quantized) packing needs an LSTM with 8-bit W and R")
        if isinstance(R, tuple):
            RT, s, z = _as_int8(*R)
            self.rs = np.ascontiguousarray(s, dtype=np.float32)
            self.rz = np.ascontiguousarray(z, dtype=np.float32)
        else:
            R = np.asarray(R, dtype=np.float32)
            RT = R.transpose(0, 2, 1)
            self.rs = np.ones((R.shape[0], GH), np.float32)
            self.rz = np.zeros((R.shape[0], GH), np.float32)
        nd = self.nd = RT.shape[0]
        self.rzt = zero_point_terms(RT, self.rz) if self.aq else np.zeros((nd, 2, GH), np.int32)
        if self.aq:
            self.T1 = pack_quads(RT)
            self.T2 = np.zeros(self.T1.shape[:1] + (0,) + self.T1.shape[2:], self.T1.dtype)
        elif kind == GRU and not self.lbr:
            # (r * h) @ R_h^T is a second mat-vec: R_h gets its own blocks
            self.T1, self.T2 = pack_blocks(RT[:, :, : 2 * hidden]), pack_blocks(RT[:, :, 2 * hidden :])
        else:
            self.T1 = pack_blocks(RT)
            self.T2 = np.zeros(self.T1.shape[:1] + (0,) + self.T1.shape[2:], self.T1.dtype)
        # The input weights per direction, their G*H columns padded to whole blocks (GHp; padding:
        # weights 0, scale 1, zero point 0, bias 0), so a direction's projection is its own blocks.
        GHp = -(-GH // PB) * PB
        sc = np.ones((nd, GHp), np.float32)
        z = np.zeros((nd, GHp), np.float32)
        if isinstance(W, tuple):
            q8, s8, z8 = _as_int8(*W)
            q = np.zeros((nd, q8.shape[1], GHp), np.int8)
            q[:, :, :GH] = q8
            sc[:, :GH] = np.asarray(s8, np.float32).reshape(nd, GH)
            z[:, :GH] = np.asarray(z8, np.float32).reshape(nd, GH)
        else:
            W = np.asarray(W, dtype=np.float32)
            q = np.zeros((nd, W.shape[2], GHp), np.float32)
            q[:, :, :GH] = W.transpose(0, 2, 1)
        self.ws, self.wz = sc.reshape(-1), z.reshape(-1)
        # blocks of (I, nd*GHp), each direction's GHp columns whole blocks of their own (the
        # drivers project one direction at a time)
        qcat = np.ascontiguousarray(np.concatenate(list(q), axis=1))[None]
        self.Wb = (pack_quads if self.aq else pack_blocks)(qcat)[0]
        self.wzt = zero_point_terms(q, z) if self.aq else np.zeros((nd, 2, GHp), np.int32)
        self.I = q.shape[1]  # input size
        B = np.zeros((nd, 2 * GH), np.float32) if B is None else np.asarray(B, np.float32)
        bias = np.zeros((nd, GHp), np.float32)
        bias[:, :GH] = B[:, :GH] + B[:, GH:]
        self.rbh = np.zeros((nd, hidden), np.float32)
        if kind == GRU and self.lbr:  # Rb_h sits inside r * (...): keep it out of the projection
            bias[:, 2 * hidden : GH] = B[:, 2 * hidden : GH]
            self.rbh = np.ascontiguousarray(B[:, GH + 2 * hidden :])
        self.bias = bias.reshape(-1)
        self.P = (
            np.zeros((nd, 3, hidden), np.float32)
            if P is None
            else np.ascontiguousarray(np.asarray(P, np.float32).reshape(nd, 3, hidden))
        )
        self.weights = RNNWeights(
            self.Wb,
            self.ws,
            self.wz,
            self.wzt,
            self.bias,
            self.T1,
            self.T2,
            self.rs,
            self.rz,
            self.rzt,
            self.rbh,
            self.P,
        )
        self.record = tuple(self.weights)  # what the compiled entry points take (see RNNWeights)
        self._twin: PackedRNN | None = None  # fp32 weights for batches of 8-bit ones (batch_twin)

    def project(self, X: np.ndarray, layout: int = 0) -> np.ndarray:
        """X (A0, A1, I) -> X W^T + biases of every step, (A0, A1, nd*GHp) (``layout`` tells which
        axis is the batch, for the per-row activation quantization); what the drivers read."""
        X = np.ascontiguousarray(X, dtype=np.float32)
        out = _ENTRIES[self.kind, self.aq][2](X, int(layout), self.record)  # (nd, A0*A1, GHp)
        return out.transpose(1, 0, 2).reshape(*X.shape[:2], -1)


_F32 = np.dtype(np.float32)
LENGTH_TYPES = (np.dtype(np.int32), np.dtype(np.int64))  # the kernels are compiled for both
DIRS = {
    "forward": np.array([0], np.int64),
    "reverse": np.array([1], np.int64),
    "bidirectional": np.array([0, 1], np.int64),
}  # never written: shared by every call


def _state(v, shape, layout, what):
    """An initial state as a C-contiguous fp32 (nd, B, H) array (zeros when not given)."""
    if type(v) is np.ndarray and not layout and v.dtype == _F32 and v.shape == shape and v.flags.c_contiguous:
        return v  # the carried state of a stream, as the previous step returned it
    if v is None:
        return np.zeros(shape, np.float32)
    if v.dtype != np.float32:
        v = v.astype(np.float32)
    if layout:
        v = v.transpose(1, 0, 2)
    if v.shape != shape:
        raise ValueError(f"{what} has shape {list(v.shape)}, expected {list(shape)} (layout {layout})")
    return v if v.flags.c_contiguous else np.ascontiguousarray(v)


def kernel_scalars(packed: PackedRNN, clip, flag) -> tuple:
    """The drivers' ``clip`` (a float32, ``NO_CLIP`` for none) and ``flag`` (``linear_before_reset``
    for GRU, taken from ``packed``; ``input_forget`` for LSTM) for a node's attributes."""
    return (NO_CLIP if clip is None else np.float32(clip), packed.lbr if packed.kind == GRU else int(bool(flag)))


def batch_twin(packed: PackedRNN, batch: int) -> PackedRNN:
    """What ``run`` runs for ``batch`` rows: ``packed`` itself, or for 8-bit weights times fp32
    states (weight-only int8; not uint8 activations) at more than ``WIDE_ROWS`` rows, and at any
    batch when the fp32 recurrent weights fit in ``WIDE_BYTES`` (L2), a twin with the weights
    widened to fp32 (``matvec.widened``, made once and kept: 4x the 8-bit weights' memory).

    The int16-split product (``_matvec_q16``) runs two int16 rows per row: at batch 32 it took 1.6x
    the fp32 kernel's time (GRU H=256, 64 steps: 10.9 vs 6.8 ms), at batch 4 a GRU H=256 (768 KB
    of fp32 recurrent weights) ran 1.7x its fp32 twin, and at batch 1 1.05x.  Both are the
    dequantized weights' product to fp32 rounding, and the twin runs the fp32 kernels: no compiled
    code of its own (a compiled widening made every first compile 10% longer).  Weights over
    WIDE_BYTES stay 8-bit up to WIDE_ROWS rows, where reading a quarter of the bytes wins (GRU
    H=512, 64 steps, split / fp32 time: 0.84-0.96 at 4-7 rows, 1.02 at 8, 1.14 at 16), so
    there a row alone and in a batch agree to ``FP32`` (as ``project`` already did above
    ``Q16_ROWS`` rows), not bit for bit."""
    if packed.aq or packed.T1.dtype == np.float32:
        return packed
    if batch <= WIDE_ROWS and 4 * (packed.T1.size + packed.T2.size) > WIDE_BYTES:
        return packed
    twin = packed._twin
    if twin is None:
        twin = copy.copy(packed)
        H, nd = packed.H, packed.nd
        c1 = 2 * H if packed.T2.shape[1] else packed.rs.shape[1]  # GRU lbr=0: T1 is [z r], T2 h
        twin.T1 = widened(packed.T1, packed.rs[:, :c1], packed.rz[:, :c1])
        if packed.T2.shape[1]:
            twin.T2 = widened(packed.T2, packed.rs[:, c1:], packed.rz[:, c1:])
        else:
            twin.T2 = np.zeros(twin.T1.shape[:1] + (0,) + twin.T1.shape[2:], np.float32)
        twin.rs, twin.rz = np.ones_like(packed.rs), np.zeros_like(packed.rz)
        twin.Wb = widened(packed.Wb, packed.ws, packed.wz)
        twin.ws, twin.wz = np.ones_like(packed.ws), np.zeros_like(packed.wz)
        w = packed.weights
        twin.weights = RNNWeights(
            twin.Wb, twin.ws, twin.wz, w.wzt, w.bias, twin.T1, twin.T2, twin.rs, twin.rz, w.rzt, w.rbh, w.P
        )
        twin.record = tuple(twin.weights)
        twin._twin = None
        packed._twin = twin
        assert nd == twin.T1.shape[0]
    return twin


def run(
    packed: PackedRNN,
    X,
    direction="forward",
    layout=0,
    sequence_lens=None,
    initial_h=None,
    initial_c=None,
    clip=None,
    flag=None,
    threads=None,
):
    """Run a packed RNN/GRU/LSTM on X; returns (Y, Y_h, Y_c) in the node's ``layout``.

    ``flag`` is ``input_forget`` for LSTM (``linear_before_reset`` is taken from ``packed``).
    """
    if type(X) is not np.ndarray:
        X = np.asarray(X)
    if X.ndim != 3:
        raise ValueError(f"X must be 3-D, got shape {X.shape}")
    if X.shape[2] != packed.I:
        raise ValueError(f"X has {X.shape[2]} inputs per step (shape {list(X.shape)}), W expects {packed.I}")
    T, Bn = (X.shape[0], X.shape[1]) if layout == 0 else (X.shape[1], X.shape[0])
    H, nd = packed.H, packed.nd
    dirs = DIRS[direction]
    if len(dirs) != nd:
        raise ValueError(f"direction {direction!r} needs {len(dirs)} weight sets, W/R have {nd}")
    if sequence_lens is None:
        lens = np.full(Bn, T, np.int64)
    elif type(sequence_lens) is np.ndarray and sequence_lens.shape == (Bn,) and sequence_lens.dtype in LENGTH_TYPES:
        lens = sequence_lens
    else:
        lens = np.asarray(sequence_lens).reshape(-1)
        if lens.dtype not in LENGTH_TYPES:
            lens = lens.astype(np.int64)
        if lens.shape[0] != Bn:
            raise ValueError(f"sequence_lens has {lens.shape[0]} entries for a batch of {Bn}")
    shape = (nd, Bn, H)
    packed = batch_twin(packed, Bn)
    h0 = _state(initial_h, shape, layout, "initial_h")
    c0 = _state(initial_c, shape, layout, "initial_c")
    clipv, fl = kernel_scalars(packed, clip, flag)
    nthreads = 1 if Bn == 1 else numba.get_num_threads() if threads is None else threads
    if X.dtype != _F32 or not X.flags.c_contiguous:
        X = np.ascontiguousarray(X, dtype=np.float32)
    if nthreads > 1:
        Y = np.empty((T, nd, Bn, H) if layout == 0 else (Bn, T, nd, H), np.float32)
        hn = np.empty(shape, np.float32)
        cn = np.empty(shape, np.float32)
        _ENTRIES[packed.kind, packed.aq][1](
            dirs, int(layout), X, packed.record, lens, h0, c0, Y, hn, cn, clipv, fl, nthreads
        )
    else:  # one compiled call: projection, steps and the outputs' allocation
        Y, hn, cn = _ENTRIES[packed.kind, packed.aq][0](dirs, int(layout), X, packed.record, lens, h0, c0, clipv, fl)
    if layout:
        hn, cn = hn.transpose(1, 0, 2), cn.transpose(1, 0, 2)
    return Y, hn, cn
