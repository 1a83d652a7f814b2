"""Where a numba LSTM layer spends its time at batch sizes above 1, 1 thread.

    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 .venv/bin/python benchmarks/lstm_breakdown.py [--hidden H ...] [--batch B ...]

For each hidden size, batch and precision (fp32; int8 = DynamicQuantizeLSTM's arithmetic, uint8
activations x int8 weights), on random weights (T=64, 128 inputs), the medians of:

* layer: ``rnn.run``, the whole op (what ``rnn_op_speed.py`` times);
* projection: the input projection of every step alone (``PackedRNN.project``);
* steps: the T recurrent products alone (fp32 ``_matvec``; int8 ``matvec_u8``: quantize each row,
  the u8 x s8 products, dequantize), and for int8 the products alone (``qdot._dots``, on AMX tiles
  where ``qdot.AMX``);
* gate math: the T x B LSTM cells alone on the projection's output;
* rest: layer - projection - steps - gate math (state copies, outputs, and what the parts cost
  together that they do not alone, such as cache evictions between them).
"""

from __future__ import annotations

import argparse
import time

import common  # noqa: F401  (pins 1 thread before numpy/numba load)
import numpy as np
from common import machine
from numba import njit

from rnnkit.runtime.numba_backend import matvec, qdot, rnn
from rnnkit.runtime.numba_backend.rnn import LSTM, PackedRNN, _lstm_cell

T, INPUT = 64, 128


@njit(cache=False)
def _cells(xw, g, h, c, P, rbh, clip):
    for t in range(xw.shape[0]):
        for b in range(h.shape[0]):
            _lstm_cell(xw[t, b], g[b], h[b], c[b], P, rbh, clip, 0)


@njit(cache=False)
def _steps_f32(V, Q, rs, rz, g):
    for t in range(T):
        rnn._matvec(V, V.shape[0], Q, rs, rz, g, 0, g.shape[1], (t & 1) == 1)


@njit(cache=False)
def _steps_u8(V, Q, zt, ws, g, hq, acc):
    for _ in range(T):
        qdot.matvec_u8(V, V.shape[0], Q, zt, ws, g, 0, g.shape[1], hq, acc)


@njit(cache=False)
def _dots_u8(Q, hq, acc):
    for _ in range(T):
        qdot._dots(Q, hq, hq.shape[0], acc, qdot.VNNI, qdot.AMX)  # the kernels matvec_u8 runs


def median_ms(fn, reps: int = 15) -> float:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e3


def int8(a: np.ndarray):
    """(q, scale, zero point) per output row, symmetric: the form PackedRNN takes for 8-bit weights."""
    s = np.abs(a).max(axis=-1) / 127
    return np.round(a / s[..., None]).astype(np.int8).transpose(0, 2, 1), s.astype(np.float32), np.zeros_like(s)


def breakdown(H: int, B: int, quantized: bool, rng) -> dict:
    W = rng.normal(0, 0.1, (1, 4 * H, INPUT)).astype(np.float32)
    R = rng.normal(0, 0.1, (1, 4 * H, H)).astype(np.float32)
    bias = rng.normal(0, 0.1, (1, 8 * H)).astype(np.float32)
    X = rng.normal(0, 1, (T, B, INPUT)).astype(np.float32)
    if quantized:
        p = PackedRNN(LSTM, H, int8(W), int8(R), bias, None, dynamic=True)
    else:
        p = PackedRNN(LSTM, H, W, R, bias, None)
    out = {"layer": median_ms(lambda: rnn.run(p, X)), "projection": median_ms(lambda: p.project(X))}
    xw = p.project(X)
    g = rng.normal(0, 1, (B, 4 * H)).astype(np.float32)
    h, c = np.zeros((B, H), np.float32), np.zeros((B, H), np.float32)
    out["gate math"] = median_ms(lambda: _cells(xw, g, h, c, p.P[0], p.rbh[0], rnn.NO_CLIP))
    if quantized:
        V = rng.uniform(-1, 1, (B, H)).astype(np.float32)
        hq, acc = qdot.workspace(B, p.T1[0])
        out["steps"] = median_ms(lambda: _steps_u8(V, p.T1[0], p.rzt[0], p.rs[0], g, hq, acc))
        hq[...] = rng.integers(0, 256, hq.shape)
        out["products"] = median_ms(lambda: _dots_u8(p.T1[0], hq, np.empty((B, acc.shape[1]), np.int32)))
    else:
        V = np.zeros((B, matvec._k_padded(p.T1[0])), np.float32)
        V[:, :H] = rng.uniform(-1, 1, (B, H))
        out["steps"] = median_ms(lambda: _steps_f32(V, p.T1[0], p.rs[0], p.rz[0], g))
        out["products"] = out["steps"]
    out["rest"] = out["layer"] - out["projection"] - out["steps"] - out["gate math"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--batch", type=int, nargs="+", default=[4, 32])
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    print(f"# {machine()}; LSTM, T={T}, {INPUT} inputs, medians in ms")
    cols = ("layer", "projection", "steps", "products", "gate math", "rest")
    print("| H | B | precision | " + " | ".join(cols) + " |")
    print("|---|---|---|" + "---|" * len(cols))
    for H in args.hidden:
        for B in args.batch:
            for quantized in (False, True):
                r = breakdown(H, B, quantized, rng)
                cells = " | ".join(f"{r[k]:.2f}" for k in cols)
                print(f"| {H} | {B} | {'int8' if quantized else 'fp32'} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
