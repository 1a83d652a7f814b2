"""The numba RNN/GRU/LSTM kernels against ONNX's own conformance cases, a float64 numpy oracle
(tests/naive_rnn.py), onnx.reference.ReferenceEvaluator and onnxruntime; int8 weights;
onnxruntime's DynamicQuantizeLSTM; refusal of what is not implemented.

Each node is driven directly (the graph executor is tested elsewhere): ``run_node`` builds the
op with the node's constant inputs and calls it with the runtime ones, as the executor does.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numba
import numpy as np
import pytest
from naive_rnn import naive_dq_lstm, naive_rnn
from onnx import TensorProto, helper, numpy_helper

from rnnkit.runtime.errors import UnsupportedError
from rnnkit.runtime.numba_backend import rnn
from rnnkit.runtime.numba_backend.base import QuantizedWeight
from rnnkit.runtime.numba_backend.rnn_ops import OPS
from rnnkit.runtime.tolerance import FP32, INT8

GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}
INPUTS = ["X", "W", "R", "B", "sequence_lens", "initial_h", "initial_c", "P"]
OUTPUTS = {"RNN": ["Y", "Y_h"], "GRU": ["Y", "Y_h"], "LSTM": ["Y", "Y_h", "Y_c"]}


def run_node(node, feeds: dict, consts: dict) -> dict:
    """Build the op with ``consts`` (by input name) and run it on ``feeds``; outputs by name."""
    op = OPS[(node.domain, node.op_type)](node, {i: consts[n] for i, n in enumerate(node.input) if n in consts})
    args = []
    for n in node.input:
        v = feeds.get(n, consts.get(n)) if n else None
        args.append(None if isinstance(v, QuantizedWeight) else v)
    return {n: o for n, o in zip(node.output, op(*args)) if n}


def assert_close(got: dict, want: dict, tol, what=""):
    bad = [
        f"{k}: worst {tol.worst(got[k], want[k]):.3g}"
        for k in want
        if got[k].shape != want[k].shape or not tol.close(got[k], want[k])
    ]
    assert not bad, f"{what} outside {tol.name}: {bad}"


# --- ONNX conformance cases ---------------------------------------------------------------------

EXPECTED_CASES = {
    f"test_{c}_{s}"
    for c, ss in {
        "gru": ["defaults", "with_initial_bias", "seq_length", "batchwise", "reverse", "bidirectional"],
        "lstm": ["defaults", "with_initial_bias", "with_peepholes", "batchwise", "reverse", "bidirectional"],
        "simple_rnn": ["defaults", "with_initial_bias", "batchwise", "reverse", "bidirectional"],
    }.items()
    for s in ss
} | {"test_rnn_seq_length"}


def _conformance_cases():
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = collect_testcases(None)
    return [
        c
        for c in cases
        if c.name.startswith(("test_lstm_", "test_gru_", "test_simple_rnn_")) or c.name == "test_rnn_seq_length"
    ]


CASES = _conformance_cases()


def test_conformance_cases_all_present():
    assert {c.name for c in CASES} == EXPECTED_CASES  # fails if the onnx wheel drops or adds cases


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_onnx_conformance(case):
    g = case.model.graph
    node = g.node[0]
    consts = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    assert case.data_sets
    for inputs, outputs in case.data_sets:
        got = run_node(node, dict(zip([i.name for i in g.input], inputs)), consts)
        for o, want in zip(g.output, outputs):
            np.testing.assert_allclose(got[o.name], want, rtol=case.rtol, atol=case.atol, err_msg=o.name)


# --- random cases vs the numpy oracle -----------------------------------------------------------


def random_case(
    rng,
    cell,
    *,
    direction="forward",
    layout=0,
    batch=3,
    T=6,
    I=4,
    H=5,
    lens="ragged",
    initial=True,
    peepholes=False,
    clip=None,
    lbr=0,
    input_forget=0,
    scale=1.0,
):
    """A single-node model's node, feeds and constants (W, R, B, P as constants)."""
    nd = 2 if direction == "bidirectional" else 1
    G = GATES[cell]
    consts = {
        "W": (scale * rng.normal(size=(nd, G * H, I))).astype(np.float32),
        "R": (scale * rng.normal(size=(nd, G * H, H))).astype(np.float32),
        "B": rng.normal(size=(nd, 2 * G * H)).astype(np.float32),
    }
    X = rng.normal(size=(T, batch, I) if layout == 0 else (batch, T, I)).astype(np.float32)
    feeds = {"X": X}
    if lens == "ragged":  # T, 1 and anything between
        feeds["sequence_lens"] = np.array(([T, 1] + list(rng.integers(1, T + 1, size=batch)))[:batch], np.int32)
    elif lens is not None:
        feeds["sequence_lens"] = np.asarray(lens, np.int32)
    state_shape = (nd, batch, H) if layout == 0 else (batch, nd, H)
    if initial:
        feeds["initial_h"] = rng.normal(size=state_shape).astype(np.float32)
        if cell == "LSTM":
            feeds["initial_c"] = rng.normal(size=state_shape).astype(np.float32)
    if peepholes:
        consts["P"] = rng.normal(size=(nd, 3 * H)).astype(np.float32)
    names = INPUTS[: 8 if cell == "LSTM" else 6]
    ins = [n if (n in feeds or n in consts) else "" for n in names]
    while ins[-1] == "":
        ins.pop()
    attrs = dict(hidden_size=H, direction=direction)
    if layout:
        attrs["layout"] = layout
    if clip is not None:
        attrs["clip"] = clip
    if cell == "GRU" and lbr:
        attrs["linear_before_reset"] = lbr
    if cell == "LSTM" and input_forget:
        attrs["input_forget"] = input_forget
    node = helper.make_node(cell, ins, OUTPUTS[cell], name=f"{cell.lower()}_0", **attrs)
    return node, feeds, consts


def oracle(node, feeds, consts):
    a = {x.name: helper.get_attribute_value(x) for x in node.attribute}
    v = {**feeds, **consts}
    out = naive_rnn(
        node.op_type,
        v["X"],
        v["W"],
        v["R"],
        v.get("B"),
        v.get("sequence_lens"),
        v.get("initial_h"),
        v.get("initial_c"),
        v.get("P"),
        direction=a.get("direction", b"forward").decode(),
        layout=a.get("layout", 0),
        clip=a.get("clip"),
        linear_before_reset=a.get("linear_before_reset", 0),
        input_forget=a.get("input_forget", 0),
    )
    return dict(zip(OUTPUTS[node.op_type], out))


@pytest.mark.parametrize("layout", [0, 1])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("cell", ["RNN", "GRU", "LSTM"])
def test_random_vs_oracle(cell, direction, layout):
    rng = np.random.default_rng(hash((cell, direction, layout)) % 2**32)
    for batch, extra in [
        (1, {}),
        (3, {"clip": 1.5}),
        (4, {"initial": False, "lens": None}),
        (3, {"lbr": 1, "peepholes": True, "input_forget": 1}),
    ]:
        node, feeds, consts = random_case(
            rng,
            cell,
            direction=direction,
            layout=layout,
            batch=batch,
            T=int(rng.integers(1, 9)),
            I=int(rng.integers(1, 7)),
            H=int(rng.integers(1, 19)),
            **extra,
        )
        assert_close(run_node(node, feeds, consts), oracle(node, feeds, consts), FP32, f"{cell} {extra}")


@pytest.mark.parametrize("cell", ["RNN", "GRU", "LSTM"])
def test_length_zero_row_keeps_initial_state(cell):
    node, feeds, consts = random_case(np.random.default_rng(1), cell, direction="bidirectional", lens=[4, 0, 2], T=4)
    got = run_node(node, feeds, consts)
    assert not got["Y"][:, :, 1].any()
    np.testing.assert_array_equal(got["Y_h"][:, 1], feeds["initial_h"][:, 1])
    assert_close(got, oracle(node, feeds, consts), FP32)


@pytest.mark.parametrize("cell", ["GRU", "LSTM"])
def test_long_sequence_fast_activations_stay_in_fp32_tolerance(cell):
    # 400 steps, saturating pre-activations (scale 1): the approximated tanh/sigmoid must not drift
    node, feeds, consts = random_case(
        np.random.default_rng(2), cell, batch=2, T=400, I=16, H=48, lens=None, scale=0.4, peepholes=cell == "LSTM"
    )
    assert_close(run_node(node, feeds, consts), oracle(node, feeds, consts), FP32)


def test_fast_activations_accuracy():
    x = np.linspace(-40, 40, 800_001).astype(np.float32)
    x64 = x.astype(np.float64)
    assert np.abs(rnn.fast_tanh(x) - np.tanh(x64)).max() < 3e-7
    assert np.abs(rnn.fast_sigmoid(x) - 1 / (1 + np.exp(-x64))).max() < 2e-7
    assert rnn.fast_tanh(np.array([20.0], np.float32))[0] == 1.0  # saturates exactly, as float32 libm
    nan = rnn.fast_tanh(np.array([np.nan], np.float32))[0]
    assert np.isnan(nan)  # fastmath without nnan: a NaN leak still shows


@pytest.mark.parametrize("threads", [1, 2])
def test_threads(threads):
    node, feeds, consts = random_case(np.random.default_rng(3), "LSTM", direction="bidirectional", batch=5, T=7)
    before = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        got = run_node(node, feeds, consts)
    finally:
        numba.set_num_threads(before)
    assert_close(got, oracle(node, feeds, consts), FP32)


# --- vs onnx.reference and onnxruntime ----------------------------------------------------------


def single_node_model(node, feeds, consts):
    g = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape) for n, v in feeds.items()],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in node.output],
        [numpy_helper.from_array(v, n) for n, v in consts.items()],
    )
    return helper.make_model(
        g, opset_imports=[helper.make_opsetid("", 14), helper.make_opsetid("com.microsoft", 1)], ir_version=8
    )


@pytest.mark.parametrize("layout", [0, 1])
@pytest.mark.parametrize("cell,lbr", [("RNN", 0), ("GRU", 0), ("GRU", 1), ("LSTM", 0)])
def test_vs_onnx_reference(cell, lbr, layout):
    from onnx.reference import ReferenceEvaluator

    rng = np.random.default_rng(4)
    for direction in ("forward", "bidirectional"):  # the reference ignores sequence_lens and clip
        node, feeds, consts = random_case(
            rng, cell, direction=direction, layout=layout, lens=None, lbr=lbr, peepholes=cell == "LSTM"
        )
        want = ReferenceEvaluator(single_node_model(node, feeds, consts)).run(None, feeds)
        assert_close(run_node(node, feeds, consts), dict(zip(node.output, want)), FP32, direction)


def _ort(model, feeds):
    ort = pytest.importorskip("onnxruntime")
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))


@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("cell", ["RNN", "GRU", "LSTM"])
def test_vs_onnxruntime(cell, direction):
    rng = np.random.default_rng(5)
    # onnxruntime's CPU RNN ops take layout 0 only; lengths >= 1 (length 0 is ours to define)
    for extra in [{}, {"clip": 0.8, "lbr": 1, "peepholes": True}, {"batch": 1, "input_forget": 1}]:
        node, feeds, consts = random_case(rng, cell, direction=direction, T=7, **extra)
        assert_close(
            run_node(node, feeds, consts), _ort(single_node_model(node, feeds, consts), feeds), FP32, str(extra)
        )


# --- int8 -----------------------------------------------------------------------------------------


def quantize_rows(w, zero_point=False):
    """Symmetric int8 per output row of each direction, as the graph loader hands them over."""
    scale = (np.abs(w).max(axis=-1) / 127.0).astype(np.float32)
    q = np.clip(np.round(w / scale[..., None]), -127, 127).astype(np.int8)
    return QuantizedWeight(q, scale, None, -1)


@pytest.mark.slow
@pytest.mark.parametrize("cell", ["RNN", "GRU", "LSTM"])
def test_quantized_weights_vs_dequantized_oracle(cell):
    # The kernels compute with the dequantized weights to fp32 accuracy (activations split into two
    # int16 parts, rnn._matvec_q16), so the stated tolerance is FP32's, not a quantization error.
    rng = np.random.default_rng(6)
    for direction, lbr in [("forward", 0), ("bidirectional", 1)]:
        node, feeds, consts = random_case(
            rng, cell, direction=direction, lbr=lbr, H=19, I=11, T=9, peepholes=cell == "LSTM"
        )
        qconsts = dict(consts, W=quantize_rows(consts["W"]), R=quantize_rows(consts["R"]))
        deq = dict(consts, W=qconsts["W"].dequantize(), R=qconsts["R"].dequantize())
        got = run_node(node, feeds, qconsts)
        assert_close(got, oracle(node, feeds, deq), FP32, direction)
        assert not np.allclose(deq["R"], consts["R"], atol=1e-6)  # the int8 path was really exercised


@pytest.mark.slow
def test_quantized_weight_per_tensor_with_zero_point():
    rng = np.random.default_rng(7)
    node, feeds, consts = random_case(rng, "GRU", H=6)
    qs = {}
    for k in ("W", "R"):
        w = consts[k]
        scale = np.float32((w.max() - w.min()) / 255)
        zp = np.uint8(np.round(-w.min() / scale))
        qs[k] = QuantizedWeight(
            np.clip(np.round(w / scale) + zp, 0, 255).astype(np.uint8), np.array(scale), np.array(zp)
        )
    deq = dict(consts, W=qs["W"].dequantize(), R=qs["R"].dequantize())
    assert_close(run_node(node, feeds, dict(consts, **qs)), oracle(node, feeds, deq), FP32)


@pytest.mark.slow
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
def test_dynamic_quantize_lstm_vs_onnxruntime(tmp_path, direction, per_channel):
    pytest.importorskip("onnxruntime")
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    rng = np.random.default_rng(8)
    node, feeds, consts = random_case(rng, "LSTM", direction=direction, batch=3, T=8, I=12, H=16, scale=0.3)
    onnx.save(single_node_model(node, feeds, consts), tmp_path / "f.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_dynamic(tmp_path / "f.onnx", tmp_path / "q.onnx", weight_type=QuantType.QInt8, per_channel=per_channel)
    qm = onnx.load(tmp_path / "q.onnx")
    (qnode,) = [n for n in qm.graph.node if n.op_type == "DynamicQuantizeLSTM"]
    assert qnode.domain == "com.microsoft"
    qconsts = {t.name: numpy_helper.to_array(t) for t in qm.graph.initializer}
    assert qconsts[qnode.input[1]].dtype == np.int8
    got = run_node(qnode, feeds, qconsts)
    want = _ort(qm, feeds)
    assert_close({k: got[qnode.output[i]] for i, k in enumerate(node.output)}, want, INT8, "vs onnxruntime")
    # and both stay near the fp32 LSTM
    assert_close({k: got[qnode.output[i]] for i, k in enumerate(node.output)}, oracle(node, feeds, consts), INT8)


def test_dynamic_quantize_lstm_uint8_zero_points_vs_onnxruntime():
    """A hand-built node: uint8 weights, per-tensor W scale and zero point, per-channel R scales."""
    rng = np.random.default_rng(9)
    nd, I, H = 2, 5, 7
    Wf = rng.normal(size=(nd, I, 4 * H)).astype(np.float32) * 0.4
    Rf = rng.normal(size=(nd, H, 4 * H)).astype(np.float32) * 0.4
    w_scale = ((Wf.max(axis=(1, 2)) - Wf.min(axis=(1, 2))) / 255).astype(np.float32)  # [nd]
    w_zp = np.round(-Wf.min(axis=(1, 2)) / w_scale).astype(np.uint8)
    Wq = np.clip(np.round(Wf / w_scale[:, None, None]) + w_zp[:, None, None], 0, 255).astype(np.uint8)
    # per-channel R scales; onnxruntime wants one zero point value per direction ("must be constant")
    r_scale = (np.abs(Rf).max(axis=1) / 127).astype(np.float32)  # [nd, 4H]
    r_zp = np.full((nd, 4 * H), 128, np.uint8)
    Rq = np.clip(np.round(Rf / r_scale[:, None]) + r_zp[:, None], 0, 255).astype(np.uint8)
    consts = {
        "W": Wq,
        "R": Rq,
        "B": rng.normal(size=(nd, 8 * H)).astype(np.float32),
        "P": rng.normal(size=(nd, 3 * H)).astype(np.float32),
        "W_scale": w_scale,
        "W_zero_point": w_zp,
        "R_scale": r_scale,
        "R_zero_point": r_zp,
    }
    node = helper.make_node(
        "DynamicQuantizeLSTM",
        ["X", "W", "R", "B", "sequence_lens", "", "", "P", "W_scale", "W_zero_point", "R_scale", "R_zero_point"],
        ["Y", "Y_h", "Y_c"],
        domain="com.microsoft",
        hidden_size=H,
        direction="bidirectional",
        name="dq_0",
    )
    X = rng.normal(size=(6, 2, I)).astype(np.float32)
    for feeds in (
        {"X": X, "sequence_lens": np.array([6, 3], np.int32)},  # ragged batch
        {"X": X[:, :1], "sequence_lens": np.array([6], np.int32)},
    ):  # batch 1
        got = run_node(node, feeds, consts)
        ort_out = _ort(single_node_model(node, feeds, consts), feeds)
        # X and h quantized to uint8 at run time as onnxruntime does: at batch 1 (one parameter set
        # per matrix = per row) the same numbers to fp32 accuracy ...
        bn = feeds["X"].shape[1]
        assert_close(got, ort_out, FP32 if bn == 1 else INT8, f"batch {bn} vs onnxruntime")
        # ... and per batch row in a batch, where onnxruntime's one set for the whole batch differs
        # by about one activation step: the oracle computes onnxruntime's algorithm row by row
        want = naive_dq_lstm(
            feeds["X"],
            Wq,
            np.broadcast_to(w_scale[:, None], (nd, 4 * H)),
            np.broadcast_to(w_zp[:, None], (nd, 4 * H)).astype(np.float64),
            Rq,
            r_scale,
            r_zp.astype(np.float64),
            consts["B"],
            feeds["sequence_lens"],
            consts["P"],
            direction="bidirectional",
        )
        assert_close(got, dict(zip(["Y", "Y_h", "Y_c"], want)), FP32, "vs the per-row oracle")


# --- refusals and plain-Python kernels -----------------------------------------------------------


@pytest.mark.parametrize(
    "cell,attrs,needle",
    [
        ("RNN", {"activations": ["Relu"]}, "activations"),
        ("GRU", {"activations": ["Sigmoid", "Tanh"], "activation_alpha": [1.0]}, "activation_alpha"),
        ("LSTM", {"layout": 2}, "layout=2"),
        ("GRU", {"direction": "sideways"}, "direction"),
        ("LSTM", {"activations": ["Sigmoid", "Tanh", "Relu"]}, "activations"),
    ],
)
def test_unsupported_attribute_is_refused(cell, attrs, needle):
    _, _, consts = random_case(np.random.default_rng(0), cell)
    node = helper.make_node(cell, ["X", "W", "R", "B"], ["Y"], name="bad_node", hidden_size=5, **attrs)
    with pytest.raises(UnsupportedError, match="node 'bad_node'") as e:
        OPS[("", cell)](node, {1: consts["W"], 2: consts["R"], 3: consts["B"]})
    assert needle in str(e.value)


@pytest.mark.slow
def test_kernels_are_valid_python():
    """NUMBA_DISABLE_JIT=1: the same kernels as plain Python agree with the oracle."""
    code = (
        "import numpy as np, sys; sys.path.insert(0, 'tests')\n"
        "from test_numba_rnn import random_case, run_node, oracle, assert_close\n"
        "from rnnkit.runtime.tolerance import FP32\n"
        "for cell in ('RNN', 'GRU', 'LSTM'):\n"
        "    node, feeds, consts = random_case(np.random.default_rng(0), cell, direction='bidirectional',"
        " T=3, H=3, I=2, batch=2, peepholes=cell == 'LSTM', clip=2.0)\n"
        "    assert_close(run_node(node, feeds, consts), oracle(node, feeds, consts), FP32, cell)\n"
        "print('ok')\n"
    )
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    r = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("K,C", [(19, 70), (259, 1100)])
@pytest.mark.parametrize("rows", [1, 2, 5, 17])
def test_matvec_fp32_blocks(rows, K, C):
    """The fp32 mat-vec over packed blocks (4 rows at once, then one by one), padded K and C (neither
    a multiple of KP nor of PB), forwards and backwards; the same blocks as a projection."""
    from rnnkit.runtime.numba_backend import matvec

    rng = np.random.default_rng(10 + rows)
    M = rng.normal(size=(1, K, C)).astype(np.float32)
    Q = rnn.pack_blocks(M)[0]
    V = np.zeros((rows, Q.shape[1]), np.float32)
    V[:, :K] = rng.normal(size=(rows, K))
    got = np.full((rows, C + 3), 7.0, np.float32)
    ones, zeros = np.ones(C + 3, np.float32), np.zeros(C + 3, np.float32)
    rnn._matvec(V, rows, Q, ones, zeros, got, 3, C)
    want = V[:, :K].astype(np.float64) @ M[0]
    np.testing.assert_allclose(got[:, 3:], want, rtol=1e-5, atol=1e-5 * np.sqrt(K / 19))
    assert (got[:, :3] == 7.0).all()  # columns before c0 untouched
    back = np.full((rows, C + 3), 7.0, np.float32)  # the blocks last to first: the same sums, bit for bit
    rnn._matvec(V, rows, Q, ones, zeros, back, 3, C, True)
    assert np.array_equal(back, got)
    bias = rng.normal(size=C).astype(np.float32)  # the same blocks as a projection (MatMul + bias)
    out = np.empty((rows, C), np.float32)
    matvec._project(V[:, :K], Q, ones, zeros, bias, out)
    np.testing.assert_allclose(out, want + bias, rtol=1e-5, atol=1e-5 * np.sqrt(K / 19))
    ahead = np.empty((rows, C), np.float32)  # with software prefetch (_fma*p): the same sums, bit for bit
    matvec._project(V[:, :K], Q, ones, zeros, bias, ahead, True)
    assert np.array_equal(ahead, out)


def test_prefetch_only_for_weights_between_l2_and_half_the_l3(monkeypatch):
    """matvec.prefetched: weights larger than L2 and at most half the L3 (read from L3 at every call)
    get software prefetch; those that fit in L2, or will come from memory, do not; nor any where
    the cache sizes are unknown."""
    from rnnkit.runtime.numba_backend import matvec

    monkeypatch.setattr(matvec, "_L2", 1 << 20)
    monkeypatch.setattr(matvec, "_L3", 32 << 20)
    assert [matvec.prefetched(n << 20) for n in (1, 2, 10, 16, 17, 20)] == [False, True, True, True, False, False]
    monkeypatch.setattr(matvec, "_L3", 0)
    assert not matvec.prefetched(10 << 20)


@pytest.mark.parametrize("K,hmax", [(19, 1.0), (256, 0.7), (600, 3.0)])
def test_matvec_q16_error_bound(K, hmax):
    """8-bit weights x the state split into two int16 parts: exact int32 sums (no overflow: all
    |h| at the top of the range with q = -128; K = 600 > 512 lowers the int16 cap), and a result
    within fp32 rounding of the float64 product with the dequantized weights."""
    rng = np.random.default_rng(K)
    rows, C = 7, 130  # 14 int16 rows: 4 + 4 + 4 at once, then a pair
    q = rng.integers(-128, 128, size=(1, K, C)).astype(np.int8)
    q[0, :, 0] = -128  # worst case for the int32 bound
    scale = rng.uniform(0.001, 0.01, C).astype(np.float32)
    zp = rng.integers(-2, 3, C).astype(np.float32)
    Q = rnn.pack_blocks(q)[0]
    Kp = Q.shape[1] * 2
    V = np.zeros((rows, Kp), np.float32)
    V[:, :K] = rng.uniform(-hmax, hmax, size=(rows, K))
    V[0, :K] = hmax  # all at the top of the range: the largest possible int32 sum
    V[2] = 0.0  # an all-zero row
    V[5, :K] = -hmax
    V[6, :K] *= 1e-6  # tiny values keep their relative accuracy
    got = np.empty((rows, C), np.float32)
    rnn._matvec(V, rows, Q, scale, zp, got, 0, C)
    qd = q[0].astype(np.float64) - zp
    exact = (V[:, :K].astype(np.float64) @ qd) * scale
    bound = 1e-6 * (np.abs(V[:, :K]).astype(np.float64) @ np.abs(qd)) * scale
    err = np.abs(got - exact)
    assert (err <= bound).all(), (err / np.maximum(bound, 1e-30)).max()
    assert not got[2].any()
    back = np.empty((rows, C), np.float32)  # the blocks last to first: the same sums, bit for bit
    rnn._matvec(V, rows, Q, scale, zp, back, 0, C, True)
    assert np.array_equal(back, got)
    V[1, 3] = np.nan
    rnn._matvec(V, rows, Q, scale, zp, got, 0, C)
    assert np.isnan(got[1]).all() and not np.isnan(got[[0, 2, 3, 4, 5, 6]]).any()


@pytest.mark.slow
@pytest.mark.parametrize("K,C", [(256, 1024), (37, 200), (8, 64)])
def test_u8_dot_kernels_are_exact(K, C):
    """Both lowerings of the uint8 x int8 block product (vpdpbusd where the target has
    AVX512-VNNI, int16 pairs elsewhere) give the exact integer products of onnxruntime's
    quantization of each row (rows of 1 and 4 kernels, K and C not multiples of the blocks)."""
    from naive_rnn import quantize_u8, uint8_params

    from rnnkit.runtime.numba_backend import qdot

    rng = np.random.default_rng(K)
    M = rng.integers(-128, 128, (1, K, C)).astype(np.int8)
    ws, wz = (rng.random(C) * 0.01).astype(np.float32), np.full(C, 3, np.float32)
    Q, zterm = qdot.pack_quads(M)[0], qdot.zero_point_terms(M, wz[None])[0]
    V = np.zeros((5, 4 * Q.shape[1]), np.float32)
    V[:, :K] = rng.standard_normal((5, K))
    V[2, :K] = np.abs(V[2, :K])  # a row with min > 0: its range is widened to 0
    want = np.empty((5, C), np.float32)
    for i in range(5):
        s, z = uint8_params(V[i, :K])
        acc = (quantize_u8(V[i, :K], s, z) - z).astype(np.int64) @ (M[0].astype(np.int64) - 3)
        want[i] = acc.astype(np.float32) * (np.float32(s) * ws)
    for vnni in (True, False) if qdot.VNNI else (False,):
        got = np.zeros((5, C), np.float32)
        qdot.matvec_u8(V, 5, Q, zterm, ws, got, 0, C, *qdot.workspace(5, Q), vnni)
        np.testing.assert_array_equal(got, want, err_msg=f"vnni={vnni}")


@pytest.mark.slow
def test_dynamic_quantize_lstm_rows_do_not_depend_on_their_batch():
    """Activations are quantized per batch row (onnxruntime: per batch matrix), so a row run alone
    equals the same row in a ragged batch, when its padding is zeros as in rnnkit's graphs (the
    range covers the row's padded sequence, as onnxruntime's covers its whole matrix); threads
    and layout change nothing: 32 rows project their inputs CHUNK_ROWS // 32 steps per call, 2
    threads' halves twice as many steps, rows alone the whole sequence at once (K = 64 and groups
    of 16 rows: the AMX tiles where there are some, qdot.AMX)."""
    rng = np.random.default_rng(0)
    H, I, G = 64, 64, 256
    Wq, Rq = (rng.integers(-127, 128, (2, k, G)).astype(np.int8) for k in (I, H))
    scale, zp = np.full((2, G), 0.01, np.float32), np.zeros((2, G), np.float32)
    packed = rnn.PackedRNN(
        rnn.LSTM,
        H,
        (Wq, scale, zp),
        (Rq, scale, zp),
        rng.standard_normal((2, 2 * G)).astype(np.float32),
        None,
        dynamic=True,
    )
    lens = np.resize([9, 3, 5, 1, 9, 7, 2, 4, 6, 8, 1, 9, 5, 2, 7, 3], 32)
    X = rng.standard_normal((9, 32, I)).astype(np.float32)
    for r, n in enumerate(lens):
        X[n:, r] = 0
    batch = rnn.run(packed, X, "bidirectional", sequence_lens=lens, threads=1)
    Y1, h1, c1 = rnn.run(
        packed, np.ascontiguousarray(X.transpose(1, 0, 2)), "bidirectional", layout=1, sequence_lens=lens
    )  # (B, T, nd, H), (B, nd, H)
    for got in (
        rnn.run(packed, X, "bidirectional", sequence_lens=lens, threads=2),
        (Y1.transpose(1, 2, 0, 3), h1.transpose(1, 0, 2), c1.transpose(1, 0, 2)),
    ):
        for g, w in zip(got, batch):
            np.testing.assert_array_equal(g, w)
    for r in (1, 3, 7):
        alone = rnn.run(packed, X[: lens[r], r : r + 1], "bidirectional", sequence_lens=lens[r : r + 1])
        np.testing.assert_array_equal(alone[1], batch[1][:, r : r + 1])
        np.testing.assert_array_equal(alone[0][:, :, 0], batch[0][: lens[r], :, r])


@pytest.mark.parametrize("cell,lbr", [("RNN", 0), ("GRU", 0), ("GRU", 1), ("LSTM", 0)])
def test_fp32_rows_do_not_depend_on_their_batch(cell, lbr):
    """Every row of a ragged bidirectional fp32 batch equals the row run alone bit for bit, whatever
    the threads' chunks (8 rows: one chunk of 8, two of 4, three of 2-3) and the layout, with each
    direction's input weights in their own blocks (G * 24 columns: not a whole number of blocks)."""
    rng = np.random.default_rng(1)
    H, I = 24, 11
    G = GATES[cell] * H
    kind = {"RNN": rnn.RNN, "GRU": rnn.GRU, "LSTM": rnn.LSTM}[cell]
    W, R = (rng.normal(0, 0.4, (2, G, k)).astype(np.float32) for k in (I, H))
    bias = rng.normal(0, 0.3, (2, 2 * G)).astype(np.float32)
    packed = rnn.PackedRNN(kind, H, W, R, bias, None, linear_before_reset=lbr)
    lens = np.array([9, 3, 5, 1, 9, 7, 2, 4])
    X = rng.standard_normal((9, 8, I)).astype(np.float32)
    batch = rnn.run(packed, X, "bidirectional", sequence_lens=lens, threads=1)
    Y1, h1, _ = rnn.run(packed, np.ascontiguousarray(X.transpose(1, 0, 2)), "bidirectional", 1, lens, threads=1)
    for got in (
        rnn.run(packed, X, "bidirectional", sequence_lens=lens, threads=2),
        rnn.run(packed, X, "bidirectional", sequence_lens=lens, threads=3),
        (Y1.transpose(1, 2, 0, 3), h1.transpose(1, 0, 2)),
    ):
        for g, w in zip(got, batch):
            np.testing.assert_array_equal(g, w)
    for r in range(8):
        alone = rnn.run(packed, X[: lens[r], r : r + 1], "bidirectional", sequence_lens=lens[r : r + 1])
        np.testing.assert_array_equal(alone[1], batch[1][:, r : r + 1])
        np.testing.assert_array_equal(alone[0][:, :, 0], batch[0][: lens[r], :, r])
    want = naive_rnn(cell, X, W, R, bias, lens, direction="bidirectional", linear_before_reset=lbr)
    assert FP32.close(batch[0], want[0]), FP32.worst(batch[0], want[0])


@pytest.mark.parametrize("cell,lbr", [("GRU", 0), ("LSTM", 0)])
def test_input_projection_chunks_do_not_change_a_row(cell, lbr):
    """The driver projects its rows' inputs CHUNK_ROWS // rows steps at a time: 16 ragged rows of 40
    steps cross two chunk boundaries (16 steps per chunk) in both directions, where a row alone
    projects its whole sequence at once; the reverse direction's rows read different t at each
    step; GRU linear_before_reset=0 reads its chunk's projection twice per step.  Bit for bit, and
    the float64 oracle to FP32."""
    assert rnn.CHUNK_ROWS // 16 == 16 and 40 > 2 * 16
    rng = np.random.default_rng(3)
    H, I = 20, 7
    G = GATES[cell] * H
    kind = {"GRU": rnn.GRU, "LSTM": rnn.LSTM}[cell]
    W, R = (rng.normal(0, 0.4, (2, G, k)).astype(np.float32) for k in (I, H))
    bias = rng.normal(0, 0.3, (2, 2 * G)).astype(np.float32)
    packed = rnn.PackedRNN(kind, H, W, R, bias, None, linear_before_reset=lbr)
    lens = np.array([40, 17, 33, 1, 16, 32, 39, 2, 40, 15, 31, 24, 8, 40, 0, 35])
    X = rng.standard_normal((40, 16, I)).astype(np.float32)
    batch = rnn.run(packed, X, "bidirectional", sequence_lens=lens, threads=1)
    for r in range(16):
        alone = rnn.run(packed, X[: max(lens[r], 1), r : r + 1], "bidirectional", sequence_lens=lens[r : r + 1])
        np.testing.assert_array_equal(alone[1], batch[1][:, r : r + 1])
        np.testing.assert_array_equal(alone[0][: lens[r], :, 0], batch[0][: lens[r], :, r])
    want = naive_rnn(cell, X, W, R, bias, lens, direction="bidirectional", linear_before_reset=lbr)
    assert FP32.close(batch[0], want[0]), FP32.worst(batch[0], want[0])
