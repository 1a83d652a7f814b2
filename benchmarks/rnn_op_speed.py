"""Speed of the numba RNN-family kernels against onnxruntime's own ops, one thread.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/rnn_op_speed.py [--hidden 256 512] [--batch 1 32]
        [--ops LSTM GRU] [--reps 50] [--alone]

For each (op, hidden, batch) it times, side by side: onnxruntime's LSTM/GRU node
(intra_op_num_threads=1), the numba op on the same weights (numba.set_num_threads(1)), numba int8
and, for LSTM, onnxruntime's DynamicQuantizeLSTM made by quantize_dynamic (int8 x uint8 VNNI dot
products; onnxruntime has no int8 GRU).  numba int8 is, for LSTM, that same DynamicQuantizeLSTM
node (activations quantized at run time as onnxruntime does, qdot.py) and, for GRU, the
weight-only form rnnkit exports (per-row int8 weights times fp32 activations).  Prints medians
(and minima) in ms, and ratios of medians with the 25-75% range of the per-round ratios
(round-robin: one run of each per round, in a seeded random order), for
numba fp32 / onnxruntime fp32, numba int8 / onnxruntime int8 and numba int8 / the faster fp32.
Never an assertion.  Larger batches run fewer rounds (--reps / (batch/4), at least 10).

"% of peak" (last columns): each runtime's multiply-adds (T*B*G*H*(I + H), 2 ops each) per
median time, as a share of one core's peak measured by ``benchmarks/cpu_peak.py`` at the start of
the run: the fp32 FMA peak for fp32 and for GRU int8 (8-bit weights times fp32 states: fp32 FMAs
on widened weights, or int16 pairs), the int8 ``vpdpbusd`` peak for LSTM int8 (uint8 x int8
products, both runtimes).  Gate math, quantization and memory traffic count as time, not as
arithmetic, so 100% is out of reach; the figure shows how far each row is from the physical limit.

What was measured while writing the kernels (Xeon "emeraldrapids", AVX-512 + VNNI, 2 MB L2, one
thread; one H=256 LSTM step's h @ R^T, 256 x 1024):
- fp32, numba-vectorised 8x64 tiles (the previous kernel): 10-13 us; fp32 64-column blocks with the
  sums in zmm registers over K (LLVM vector IR via @intrinsic, rnn._fma1): 7.7 us, L2-bandwidth
  bound (1 MB in 7.7 us; 8 instead of 4 accumulators, or 128-column blocks: no faster).
- 8-bit: weight-only tiles (widened to fp32 per element) 12-14 us; numba loops over int16 x int16
  -> int32 dot products: LLVM emits ``vpmaddwd``, but only on xmm (the vectorizer sizes vectors by
  the i32 accumulator under the host's ``prefer-256-bit`` tuning), 8 MACs per instruction, as an
  fp32 FMA: 12.0 us with int16 weights, 14.0 us with int8 weights widened in registers (K=512:
  62 / 52 us); pair-wise and interleaved-axpy forms 2-7x slower (no ``vpmaddwd``).  With
  ``NUMBA_CPU_FEATURES=<host>,-prefer-256-bit`` the same loops use zmm (8.0 / 11.1 us), and the old
  fp32 LSTM H=256 B=1 went 1.15x -> 1.05x onnxruntime (process-wide: config.py; not adopted).
- 8-bit pair blocks with LLVM vector IR (sext, mul, even + odd lanes -> ``vpdpwssd`` zmm, sums in
  registers; rnn._madd*): int8 weights 4.4 us, int16 weights 7.7 us (K=512: 19 / 36 us).  With h
  rounded to one int16 part per step the whole int8 LSTM H=256 B=1 ran 0.71 ms, but that differs
  from the dequantized weights by up to 1e-4 after a few steps (FP32 tolerance is 1e-5; the graph
  tests compare int8 graphs with their dequantized twin at FP32); two int16 parts (hi + lo, exact
  to fp32) cost 6.7 us per step and 0.77-0.85 ms for the LSTM, the kernel kept.
- input projection, T=64 x I=128 -> 1024 columns: numpy/OpenBLAS sgemm 0.150 ms, fp32 blocks 0.105
  ms (batch 32: 4.2 vs 3.4 ms); int8: weight-only tiles 0.28 ms, two int16 parts 0.23 ms, int8
  blocks widened to fp32 once per call 0.15-0.20 ms (kept).
- several rows: 4 rows per pass over each weight block; batch 32, H=256 step fp32 292 -> 98 us,
  int8 467 -> 182 us (two int16 parts: 64 rows; batch 8: fp32 24 us, int8 53 us).
int8 wins once the fp32 weights spill out of L2 (H=512: 4 MB fp32 vs 1 MB int8).
"""

import argparse
import logging
import os
import tempfile
import time
import warnings

os.environ.setdefault("OMP_NUM_THREADS", "1")

import cpu_peak  # noqa: E402  (this folder: the per-core peak for the "% of peak" columns)
import numba  # noqa: E402
import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import rnnkit.runtime.numba_backend.config  # noqa: E402,F401  (numba settings before numba loads)
from rnnkit.runtime.numba_backend.base import QuantizedWeight  # noqa: E402
from rnnkit.runtime.numba_backend.rnn_ops import OPS  # noqa: E402


def model(op, H, I, W, R, B):
    node = helper.make_node(
        op, ["X", "W", "R", "B"], ["Y", "Y_h"] + (["Y_c"] if op == "LSTM" else []), hidden_size=H, name="n0"
    )
    outs = [
        helper.make_tensor_value_info("Y", TensorProto.FLOAT, None),
        helper.make_tensor_value_info("Y_h", TensorProto.FLOAT, None),
    ]
    if op == "LSTM":
        outs.append(helper.make_tensor_value_info("Y_c", TensorProto.FLOAT, None))
    g = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, None, I])],
        outs,
        [numpy_helper.from_array(W, "W"), numpy_helper.from_array(R, "R"), numpy_helper.from_array(B, "B")],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)], ir_version=10)


def session(m):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])


def time_ms(fns, reps, alone=False):
    """Per callable, the list of its run times in ms: round-robin (fair on a shared, noisy machine,
    but each run starts with the other's weights in L2; rounds give paired ratios), each round in
    a fresh seeded random order: a run is slower after another kind of kernel or an idle gap (the
    core's frequency and its AMX unit ramp up again; int8 LSTM-256 at B=4: 0.80 ms run after run,
    0.84 right after an fp32 layer, 1.19 after 2 ms idle, onnxruntime's 0.81 / - / 1.08), so no
    runtime may always follow the same one; or ``alone``: each in its own block of runs (warm
    caches)."""
    for f in fns:
        f()
    ts = [[] for _ in fns]
    for f, t in zip(fns, ts):
        for _ in range(reps if alone else 0):
            t0 = time.perf_counter()
            f()
            t.append(1e3 * (time.perf_counter() - t0))
    order = np.random.default_rng(0)
    for _ in range(0 if alone else reps):
        for i in order.permutation(len(fns)):
            t0 = time.perf_counter()
            fns[i]()
            ts[i].append(1e3 * (time.perf_counter() - t0))
    return [np.asarray(t) for t in ts]


def ratio(a, b):
    """median of a / median of b, and the 25-75% range of the per-round ratios a_i / b_i."""
    if a is None or b is None:
        return "       -        "
    r = a / b
    return f"{np.median(a) / np.median(b):4.2f} [{np.percentile(r, 25):4.2f}-{np.percentile(r, 75):4.2f}]"


def quantize_rows(w):
    scale = np.maximum(np.abs(w).max(axis=-1), 1e-8) / 127.0
    return QuantizedWeight(np.round(w / scale[..., None]).astype(np.int8), scale.astype(np.float32), None, -1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--ops", nargs="+", default=["LSTM", "GRU"])
    ap.add_argument("--input", type=int, default=128)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--reps", type=int, default=50, help="runs per case at batch 1 (fewer for larger batches)")
    ap.add_argument("--alone", action="store_true", help="time each runtime in its own block, not round-robin")
    a = ap.parse_args()
    numba.set_num_threads(1)
    from onnxruntime.quantization import QuantType, quantize_dynamic

    mode = "each alone" if a.alone else "round-robin"
    peak = cpu_peak.peaks(seconds=0.2, repeat=3)
    p8 = peak["amx"] or peak["i8"]  # the int8 kernels' peak: AMX tiles where there are some (qdot._dots)
    i8_peak = f"{p8 / 1e9:.0f} Gop/s ({'AMX' if peak['amx'] else 'VNNI'})" if p8 else "- (no VNNI)"
    print(f"peak per core (cpu_peak.py): fp32 {peak['f32'] / 1e9:.0f} GFLOP/s, int8 {i8_peak}")
    print(
        f"T={a.steps} input={a.input}, 1 thread, {mode}; median (min) ms; ratios: of medians "
        f"[25-75% of per-round ratios]; % of peak of ort fp32, numba fp32, numba int8, ort int8"
    )
    print(
        f"{'op':4} {'H':>4} {'B':>3} {'ort fp32':>15} {'numba fp32':>15} {'numba int8':>15} {'ort int8':>15}"
        f" | {'nb32/ort32':>16} {'nb8/ort8':>16} {'nb8/best32':>16} | {'% of peak':>19}"
    )
    for op in a.ops:
        G = 4 if op == "LSTM" else 3
        for H in a.hidden:
            rng = np.random.default_rng(0)
            W = (rng.normal(size=(1, G * H, a.input)) / np.sqrt(a.input)).astype(np.float32)
            R = (rng.normal(size=(1, G * H, H)) / np.sqrt(H)).astype(np.float32)
            B = (0.1 * rng.normal(size=(1, 2 * G * H))).astype(np.float32)
            m = model(op, H, a.input, W, R, B)
            sess = session(m)
            node = m.graph.node[0]
            fp = OPS[("", op)](node, {1: W, 2: R, 3: B})
            qs = q8 = None
            if op != "LSTM":  # weight-only int8 (LSTM's int8 is the DynamicQuantizeLSTM node below)
                q8 = OPS[("", op)](node, {1: quantize_rows(W), 2: quantize_rows(R), 3: B})
            if op == "LSTM":  # onnxruntime has an int8 LSTM (DynamicQuantizeLSTM), no int8 GRU
                with tempfile.TemporaryDirectory() as d, warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    logging.getLogger().setLevel(logging.ERROR)
                    onnx.save(m, f"{d}/f.onnx")
                    quantize_dynamic(f"{d}/f.onnx", f"{d}/q.onnx", weight_type=QuantType.QInt8)
                    qm = onnx.load(f"{d}/q.onnx")
                qs = session(qm)
                (qnode,) = [n for n in qm.graph.node if n.op_type == "DynamicQuantizeLSTM"]
                inits = {t.name: numpy_helper.to_array(t) for t in qm.graph.initializer}
                dq = OPS[("com.microsoft", "DynamicQuantizeLSTM")](
                    qnode, {i: inits[n] for i, n in enumerate(qnode.input) if n in inits}
                )
            for batch in a.batch:
                X = rng.normal(size=(a.steps, batch, a.input)).astype(np.float32)
                int8 = (lambda: dq(X)) if op == "LSTM" else (lambda: q8(X, None, None, B))
                fns = [lambda: sess.run(None, {"X": X}), lambda: fp(X, W, R, B), int8]
                if qs is not None:
                    fns.append(lambda: qs.run(None, {"X": X}))
                reps = max(10, a.reps // max(1, batch // 4))
                ts = time_ms(fns, reps, a.alone) + [None]
                cell = [f"{np.median(t):7.3f} ({t.min():5.3f})" if t is not None else "-" for t in ts]
                best32 = ts[0] if np.median(ts[0]) < np.median(ts[1]) else ts[1]
                ops = 2.0 * a.steps * batch * G * H * (a.input + H)  # multiply-adds x 2
                i8 = p8 if op == "LSTM" else peak["f32"]  # GRU int8: fp32 states (see above)
                pct = [
                    f"{100 * ops / (1e-3 * np.median(t)) / pk:4.0f}" if t is not None and pk else "   -"
                    for t, pk in zip(ts, (peak["f32"], peak["f32"], i8, p8))
                ]
                print(
                    f"{op:4} {H:4d} {batch:3d} {cell[0]:>15} {cell[1]:>15} {cell[2]:>15} {cell[3]:>15}"
                    f" | {ratio(ts[1], ts[0])} {ratio(ts[2], ts[3])} {ratio(ts[2], best32)} | {' '.join(pct)}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
