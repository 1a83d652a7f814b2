"""Speed of the numba RNN-family kernels against onnxruntime's own ops, one thread.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/rnn_op_speed.py [--hidden 256 512] [--batch 1] [--alone]

For each (op, hidden) it times onnxruntime's LSTM/GRU node (intra_op_num_threads=1) and the
numba op on the same weights (numba.set_num_threads(1)), the numba op with int8 weights
(weight-only, per-row scales, as the graph loader hands QuantizedWeight over) and, for LSTM,
onnxruntime's DynamicQuantizeLSTM made by quantize_dynamic (int8 x uint8 VNNI dot products,
which numba cannot emit).  Prints medians (and minima) over many runs; never an assertion.

What was measured while writing the kernels (Xeon, AVX-512, 2 MB L2; one H=256 LSTM step's
R @ h, 1024x256): fp32 tiles 10-13 us; int8 weight-only tiles 12-14 us; int8 x int8 -> int32
dot products 22-30 us (LLVM emits vpmulld, no vpdpbusd/vpmaddwd), hence weight-only int8.
int8 wins once the fp32 weights spill out of L2 (H=512: 4 MB fp32 vs 1 MB int8).
"""

import argparse
import os
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numba  # noqa: E402
import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from rnnkit.runtime.numba_backend.base import QuantizedWeight  # noqa: E402
from rnnkit.runtime.numba_backend.rnn_ops import OPS  # noqa: E402


def model(op, H, I, W, R, B):
    node = helper.make_node(op, ["X", "W", "R", "B"], ["Y", "Y_h"] + (["Y_c"] if op == "LSTM" else []),
                            hidden_size=H, name="n0")
    outs = [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("Y_h", TensorProto.FLOAT, None)]
    if op == "LSTM":
        outs.append(helper.make_tensor_value_info("Y_c", TensorProto.FLOAT, None))
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, None, I])],
                          outs, [numpy_helper.from_array(W, "W"), numpy_helper.from_array(R, "R"),
                                 numpy_helper.from_array(B, "B")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)], ir_version=10)


def session(m):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])


def time_ms(fns, reps, alone=False):
    """(median, min) ms of each callable: round-robin (fair on a shared, noisy machine, but each run
    starts with the other's weights in L2), or ``alone``: each in its own block of runs (warm)."""
    for f in fns:
        f()
    ts = [[] for _ in fns]
    for f, t in zip(fns, ts):
        for _ in range(reps if alone else 0):
            t0 = time.perf_counter()
            f()
            t.append(time.perf_counter() - t0)
    for _ in range(0 if alone else reps):
        for f, t in zip(fns, ts):
            t0 = time.perf_counter()
            f()
            t.append(time.perf_counter() - t0)
    return [(1e3 * float(np.median(t)), 1e3 * min(t)) for t in ts]


def quantize_rows(w):
    scale = np.maximum(np.abs(w).max(axis=-1), 1e-8) / 127.0
    return QuantizedWeight(np.round(w / scale[..., None]).astype(np.int8), scale.astype(np.float32), None, -1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--input", type=int, default=128)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--alone", action="store_true", help="time each runtime in its own block, not round-robin")
    a = ap.parse_args()
    numba.set_num_threads(1)
    rng = np.random.default_rng(0)
    mode = "each alone" if a.alone else "round-robin"
    print(f"T={a.steps} input={a.input} batch={a.batch}, 1 thread, {mode}, median (min) of {a.reps} runs, ms")
    print(f"{'op':5} {'H':>4} {'ort fp32':>15} {'numba fp32':>15} {'ratio':>5} {'numba int8':>15} {'ort DQLSTM':>15}")
    for op in ("LSTM", "GRU"):
        G = 4 if op == "LSTM" else 3
        for H in a.hidden:
            W = (rng.normal(size=(1, G * H, a.input)) / np.sqrt(a.input)).astype(np.float32)
            R = (rng.normal(size=(1, G * H, H)) / np.sqrt(H)).astype(np.float32)
            B = (0.1 * rng.normal(size=(1, 2 * G * H))).astype(np.float32)
            X = rng.normal(size=(a.steps, a.batch, a.input)).astype(np.float32)
            m = model(op, H, a.input, W, R, B)
            sess = session(m)
            node = m.graph.node[0]
            fp = OPS[("", op)](node, {1: W, 2: R, 3: B})
            q8 = OPS[("", op)](node, {1: quantize_rows(W), 2: quantize_rows(R), 3: B})
            fns = [lambda: sess.run(None, {"X": X}), lambda: fp(X, W, R, B), lambda: q8(X, None, None, B)]
            if op == "LSTM":
                from onnxruntime.quantization import QuantType, quantize_dynamic
                with tempfile.TemporaryDirectory() as d:
                    onnx.save(m, f"{d}/f.onnx")
                    quantize_dynamic(f"{d}/f.onnx", f"{d}/q.onnx", weight_type=QuantType.QInt8)
                    qs = session(onnx.load(f"{d}/q.onnx"))
                fns.append(lambda: qs.run(None, {"X": X}))
            res = time_ms(fns, a.reps, a.alone) + [(float("nan"), float("nan"))]
            cell = [f"{med:7.3f} ({mn:5.3f})" for med, mn in res]
            print(f"{op:5} {H:4d} {cell[0]:>15} {cell[1]:>15} {res[1][0] / res[0][0]:5.2f} {cell[2]:>15} {cell[3]:>15}")


if __name__ == "__main__":
    main()
