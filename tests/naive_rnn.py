"""Plain-numpy oracle for the ONNX RNN, GRU and LSTM ops (float64, one step at a time).

Follows the ONNX operator spec (gate orders LSTM i,o,f,c; GRU z,r,h) with onnxruntime's
``sequence_lens`` semantics: ``Y`` is zero at and after a row's length, ``Y_h``/``Y_c`` are the
state after the last step read (forward: t = len-1, reverse: t = 0); a row of length 0 keeps
its initial state.  Deliberately naive: no packing, no fusion, exact np.tanh / exp.
"""

import numpy as np


def _sig(x):
    return 1.0 / (1.0 + np.exp(-x))


def _clip(x, clip):
    return x if clip is None else np.clip(x, -clip, clip)


def _cell(kind, x, h, c, W, R, Wb, Rb, P, clip, lbr, input_forget):
    """One step of one direction for one batch row; returns (h, c)."""
    H = h.shape[0]
    if kind == "RNN":
        return np.tanh(_clip(W @ x + Wb + R @ h + Rb, clip)), c
    if kind == "GRU":
        z = _sig(_clip(W[:H] @ x + Wb[:H] + R[:H] @ h + Rb[:H], clip))
        r = _sig(_clip(W[H : 2 * H] @ x + Wb[H : 2 * H] + R[H : 2 * H] @ h + Rb[H : 2 * H], clip))
        if lbr:
            n = W[2 * H :] @ x + Wb[2 * H :] + r * (R[2 * H :] @ h + Rb[2 * H :])
        else:
            n = W[2 * H :] @ x + Wb[2 * H :] + R[2 * H :] @ (r * h) + Rb[2 * H :]
        n = np.tanh(_clip(n, clip))
        return (1 - z) * n + z * h, c
    return _lstm_gates(W @ x + Wb + R @ h + Rb, c, P, clip, input_forget)


def _lstm_gates(a, c, P, clip=None, input_forget=0):
    """LSTM gate math from the pre-activations a (i, o, f, c) -> (h, c)."""
    H = c.shape[0]
    pi, po, pf = P[:H], P[H : 2 * H], P[2 * H :]
    i = _sig(_clip(a[:H] + pi * c, clip))
    f = 1 - i if input_forget else _sig(_clip(a[2 * H : 3 * H] + pf * c, clip))
    g = np.tanh(_clip(a[3 * H :], clip))
    c = f * c + i * g
    o = _sig(_clip(a[H : 2 * H] + po * c, clip))
    return o * np.tanh(c), c


def _setup(T, Bn, nd, GH, H, B, P, sequence_lens):
    """Defaults (zero biases and peepholes, full lengths) and zeroed outputs Y, Y_h, Y_c (float64)."""
    B = np.zeros((nd, 2 * GH)) if B is None else np.asarray(B, np.float64)
    P = np.zeros((nd, 3 * H)) if P is None else np.asarray(P, np.float64)
    lens = np.full(Bn, T) if sequence_lens is None else np.asarray(sequence_lens)
    return B, P, lens, np.zeros((T, nd, Bn, H)), np.zeros((nd, Bn, H)), np.zeros((nd, Bn, H))


def naive_rnn(
    kind,
    X,
    W,
    R,
    B=None,
    sequence_lens=None,
    initial_h=None,
    initial_c=None,
    P=None,
    *,
    direction="forward",
    layout=0,
    clip=None,
    linear_before_reset=0,
    input_forget=0,
):
    """kind in {"RNN", "GRU", "LSTM"}; arguments as the ONNX op; returns (Y, Y_h, Y_c) float32."""
    X = np.asarray(X, np.float64)
    if layout:
        X = X.transpose(1, 0, 2)
        initial_h = None if initial_h is None else np.asarray(initial_h).transpose(1, 0, 2)
        initial_c = None if initial_c is None else np.asarray(initial_c).transpose(1, 0, 2)
    T, Bn, _ = X.shape
    nd, GH, _ = W.shape
    H = R.shape[2]
    B, P, lens, Y, Yh, Yc = _setup(T, Bn, nd, GH, H, B, P, sequence_lens)
    for d in range(nd):
        reverse = direction == "reverse" or (direction == "bidirectional" and d == 1)
        for b in range(Bn):
            h = np.zeros(H) if initial_h is None else np.asarray(initial_h[d, b], np.float64)
            c = np.zeros(H) if initial_c is None else np.asarray(initial_c[d, b], np.float64)
            steps = range(lens[b] - 1, -1, -1) if reverse else range(lens[b])
            for t in steps:
                h, c = _cell(
                    kind,
                    X[t, b],
                    h,
                    c,
                    np.asarray(W[d], np.float64),
                    np.asarray(R[d], np.float64),
                    B[d, :GH],
                    B[d, GH:],
                    P[d],
                    clip,
                    linear_before_reset,
                    input_forget,
                )
                Y[t, d, b] = h
            Yh[d, b], Yc[d, b] = h, c
    if layout:
        Y, Yh, Yc = Y.transpose(2, 0, 1, 3), Yh.transpose(1, 0, 2), Yc.transpose(1, 0, 2)
    return Y.astype(np.float32), Yh.astype(np.float32), Yc.astype(np.float32)


def uint8_params(a):
    """onnxruntime's GetQuantizationParameter (uint8) for an fp32 array: (scale, zero point)."""
    a = np.asarray(a, np.float32)
    lo, hi = min(np.float32(a.min()), np.float32(0)), max(np.float32(a.max()), np.float32(0))
    scale = np.float32((hi - lo) / np.float32(255)) if hi != lo else np.float32(1)
    return scale, float(np.rint(np.clip(np.float32(0) - lo / scale, 0, 255)))


def quantize_u8(a, scale, zp):
    """onnxruntime's QuantizeLinear to uint8 (a / scale, round half to even, + zp, saturate), as float64."""
    return np.clip(np.rint(np.asarray(a, np.float32) / scale) + zp, 0, 255).astype(np.float64)


def naive_dq_lstm(X, Wq, w_scale, w_zp, Rq, r_scale, r_zp, B=None, sequence_lens=None, P=None, *, direction="forward"):
    """com.microsoft.DynamicQuantizeLSTM as onnxruntime computes it, one batch row at a time.

    Wq [nd, I, 4H], Rq [nd, H, 4H] 8-bit; scales and zero points [nd, 4H].  X[:, b] is quantized
    to uint8 once for the row's whole sequence, h before every step (the parameters from the
    fp32 values, ``uint8_params``); each product is the exact integer sum times
    fp32(a_scale * w_scale); the gates in float64.  onnxruntime takes one parameter set per
    matrix, i.e. per batch: the same as this at batch 1.  Returns (Y, Y_h, Y_c) float32.
    """
    X = np.asarray(X, np.float32)
    T, Bn, _ = X.shape
    nd, H = Rq.shape[0], Rq.shape[1]
    B, P, lens, Y, Yh, Yc = _setup(T, Bn, nd, 4 * H, H, B, P, sequence_lens)

    def qmatmul(a, q, scale, zp):  # a (K,) or (T, K) fp32 values -> (.., 4H) float64
        s, z = uint8_params(a)
        acc = (quantize_u8(a, s, z) - z) @ (np.asarray(q, np.float64) - zp)
        return (acc.astype(np.float32) * (np.float32(s) * np.asarray(scale, np.float32))).astype(np.float64)

    for d in range(nd):
        reverse = direction == "reverse" or (direction == "bidirectional" and d == 1)
        for b in range(Bn):
            xw = qmatmul(X[:, b], Wq[d], w_scale[d], w_zp[d])
            h, c = np.zeros(H), np.zeros(H)
            for t in range(lens[b] - 1, -1, -1) if reverse else range(lens[b]):
                a = xw[t] + qmatmul(h.astype(np.float32), Rq[d], r_scale[d], r_zp[d]) + B[d, : 4 * H] + B[d, 4 * H :]
                h, c = _lstm_gates(a, c, P[d])
                Y[t, d, b] = h
            Yh[d, b], Yc[d, b] = h, c
    return Y.astype(np.float32), Yh.astype(np.float32), Yc.astype(np.float32)
