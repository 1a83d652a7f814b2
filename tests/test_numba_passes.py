"""Each pass of the numba backend (``runtime/numba_backend/passes.py``), through ``NumbaSession``:
the graph computes what onnxruntime computes with the pass and without it (``passes=()`` runs none),
and the pass fired (``session.program.fired``, the step count).  The recurrent step fusion is
checked on the shipped G2P decoder and encoder and on a tagger-shaped graph (bidirectional layers
reading ``sequence_lens``, no carried state, a MatMul + bias head); the LM step in
``test_numba_fused.py``."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

pytest.importorskip("numba")
ort = pytest.importorskip("onnxruntime")

from rnnkit.runtime.builtin import find  # noqa: E402
from rnnkit.runtime.numba_backend import (
    NumbaSession,  # noqa: E402
    passes,  # noqa: E402
)
from rnnkit.runtime.tolerance import FP32  # noqa: E402

G2P = find("g2p-cmudict")  # the rnnkit-g2p-cmudict package (the `g2p` extra)
n = helper.make_node
f32 = np.float32


def _model(nodes, inputs, outputs, inits=()):
    g = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in dict(inits).items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _vi(name, dtype, shape):
    return helper.make_tensor_value_info(name, dtype, shape)


def _onnxruntime(model, feeds):
    """onnxruntime running the graph as written (its own fusions off: it would quantize the
    activations of a DequantizeLinear -> MatMul)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _check(model, feeds, name, exact=True, **kw):
    """With and without pass ``name``: both close to onnxruntime, equal to each other (bit for bit
    where ``exact``); returns the session with the pass."""
    on, off = NumbaSession(model, passes={name}, **kw), NumbaSession(model, passes=(), **kw)
    want = _onnxruntime(model, feeds)
    for got in (on.run(None, feeds), off.run(None, feeds)):
        for a, e in zip(got, want):
            assert a.shape == e.shape and FP32.close(a, e), FP32.worst(a, e)
    for a, b in zip(on.run(None, feeds), off.run(None, feeds)):
        assert np.array_equal(a, b) if exact else FP32.close(a, b)
    return on, off


# ------------------------------------------------------------------ one graph per pass
def test_fold_quantized_weights_keeps_int8_for_the_matmul():
    rng = np.random.default_rng(0)
    q = rng.integers(-127, 128, (6, 9)).astype(np.int8)
    scale = (rng.random(9).astype(f32) + 0.5) / 100
    nodes = [n("DequantizeLinear", ["q", "scale", "zp"], ["w"], axis=1), n("MatMul", ["x", "w"], ["y"])]
    model = _model(
        nodes,
        [_vi("x", TensorProto.FLOAT, ["B", 6])],
        [_vi("y", TensorProto.FLOAT, ["B", 9])],
        {"q": q, "scale": scale, "zp": np.zeros(9, np.int8)},
    )
    on, off = _check(model, {"x": rng.standard_normal((3, 6)).astype(f32)}, "fold_quantized_weights", exact=False)
    assert on.program.fired["fold_quantized_weights"] == 1
    assert on._plan[0].op.packed_matrix().q.dtype == np.int8  # int8 in the kernel, not a float copy
    assert off._plan[0].op.packed_matrix().q.dtype == np.float32


def _head_and_mask():
    """MatMul + bias, a time mask from Shape(ids) and lengths, and an in-place candidate."""
    rng = np.random.default_rng(1)
    inits = {
        "w": rng.standard_normal((4, 5)).astype(f32),
        "b": rng.standard_normal(5).astype(f32),
        "one": np.array(1, np.int64),
        "zero": np.array(0, np.int64),
        "axes2": np.array([2], np.int64),
        "axes0": np.array([0], np.int64),
        "axes1": np.array([1], np.int64),
        "zf": np.array(0, f32),
    }
    nodes = [
        n("MatMul", ["x", "w"], ["z"]),
        n("Add", ["z", "b"], ["head"]),
        n("Tanh", ["head"], ["t"]),
        n("Mul", ["t", "x5"], ["scaled"]),
        n("Shape", ["x"], ["shape"]),
        n("Gather", ["shape", "one"], ["time"]),
        n("Range", ["zero", "time", "one"], ["steps"]),
        n("Unsqueeze", ["steps", "axes0"], ["row"]),
        n("Cast", ["lens"], ["lens64"], to=TensorProto.INT64),
        n("Unsqueeze", ["lens64", "axes1"], ["col"]),
        n("Less", ["row", "col"], ["mask"]),
        n("Unsqueeze", ["mask", "axes2"], ["mask3"]),
        n("Where", ["mask3", "scaled", "zf"], ["y"]),
    ]
    inputs = [
        _vi("x", TensorProto.FLOAT, ["B", "T", 4]),
        _vi("x5", TensorProto.FLOAT, ["B", "T", 5]),
        _vi("lens", TensorProto.INT32, ["B"]),
    ]
    model = _model(nodes, inputs, [_vi("y", TensorProto.FLOAT, ["B", "T", 5])], inits)
    feeds = {
        "x": rng.standard_normal((3, 4, 4)).astype(f32),
        "x5": rng.standard_normal((3, 4, 5)).astype(f32),
        "lens": np.array([4, 1, 2], np.int32),
    }
    return model, feeds


def test_schedule_prelude_moves_the_mask_first():
    model, feeds = _head_and_mask()
    on, off = _check(model, feeds, "schedule_prelude")
    assert on.program.fired["schedule_prelude"] == on.program.prelude == 8
    assert sorted(st.key[1] for st in on._plan[:8]) == sorted(
        ["Shape", "Gather", "Range", "Unsqueeze", "Cast", "Unsqueeze", "Less", "Unsqueeze"]
    )
    assert on._plan[8].key[1] == "MatMul" and "_memo" in on._body.source


def test_fuse_matmul_bias_removes_the_add():
    model, feeds = _head_and_mask()
    on, off = _check(model, feeds, "fuse_matmul_bias")
    assert on.program.fired["fuse_matmul_bias"] == 1 and len(on._plan) == len(off._plan) - 1
    assert "Add" not in [st.op.node.op_type for st in on._plan]


def test_reuse_inplace_writes_the_mul_into_a_fresh_array():
    model, feeds = _head_and_mask()
    on, _ = _check(model, feeds, "reuse_inplace")
    assert on.program.fired["reuse_inplace"] == 2  # the Add into the MatMul's output, the Mul into Tanh's


def test_liveness_frees_each_value_after_its_last_reader():
    model, feeds = _head_and_mask()
    s = NumbaSession(model, passes=())
    last = s.program.last_use
    assert all(
        k == max(j for j, st in enumerate(s._plan) if any(v == slot for _, v in st.dynamic)) for slot, k in last.items()
    )
    assert s._body.source.count("del v") == len([v for v in last if v not in s.program.output_slots()])


# ------------------------------------------------------------------ the recurrent step fusion
def _g2p_feeds(B, S, rng):
    enc = NumbaSession(G2P / "encoder.onnx", threads=1)
    src = rng.integers(4, 30, (B, S))
    lens = np.maximum(S - np.arange(B), 1).astype(np.int32)
    memory, keys, h, c = enc.run(None, {"source_ids": src, "source_lens": lens})
    return {
        "input_ids": rng.integers(4, 40, (B, 1)),
        "initial_h": h,
        "initial_c": c,
        "memory": memory,
        "keys": keys,
        "source_lens": lens,
    }


@pytest.mark.parametrize("B,S", [(1, 6), (4, 9)])
def test_fusion_fires_on_the_g2p_decoder_step(B, S):
    """The G2P decoder: Gather -> 2 LSTM layers carrying (h, c) sliced from one state input -> the
    batch-major rows that the attention reads; the attention and the head stay plan steps."""
    import onnx

    model = onnx.load(G2P / "decoder.onnx")
    feeds = _g2p_feeds(B, S, np.random.default_rng(B))
    on, off = _check(model, feeds, "fuse_recurrent_step", exact=False, threads=1)
    assert on.program.fired["fuse_recurrent_step"] == 1
    # Gather, Transpose, 4 Slices, 2 LSTMs, 2 x Transpose + Reshape, 2 Concats -> 1 step
    assert len(off._plan) - len(on._plan) == 13


def test_fusion_fires_on_the_g2p_encoder():
    """Bidirectional layers reading source_lens, no initial state, per-layer final states."""
    import onnx

    model = onnx.load(G2P / "encoder.onnx")
    rng = np.random.default_rng(3)
    feeds = {"source_ids": rng.integers(4, 30, (3, 8)), "source_lens": np.array([8, 3, 5], np.int32)}
    on, _ = _check(model, feeds, "fuse_recurrent_step", exact=False, threads=1)
    assert on.program.fired["fuse_recurrent_step"] == 1


def _tagger(cell="GRU", layers=2, hidden=6, embed=5, vocab=11, tags=4, seed=0):
    """rnnkit's word-level tagger graph (export/graph_tagger.py without chars): Gather -> Transpose ->
    bidirectional layers reading sequence_lens -> batch-major -> MatMul + Add -> Where(time mask)."""
    rng = np.random.default_rng(seed)
    G = {"RNN": 1, "GRU": 3, "LSTM": 4}[cell]
    inits = {
        "emb": rng.standard_normal((vocab, embed)).astype(f32),
        "hw": rng.standard_normal((2 * hidden, tags)).astype(f32),
        "hb": rng.standard_normal(tags).astype(f32),
        "shape3": np.array([0, 0, 2 * hidden], np.int64),
        "one": np.array(1, np.int64),
        "zero": np.array(0, np.int64),
        "axes0": np.array([0], np.int64),
        "axes1": np.array([1], np.int64),
        "axes2": np.array([2], np.int64),
        "zf": np.array(0, f32),
    }
    nodes = [n("Gather", ["emb", "ids"], ["e"]), n("Transpose", ["e"], ["x0"], perm=[1, 0, 2])]
    x, width = "x0", embed
    for layer in range(layers):
        for w, shape in (("W", (2, G * hidden, width)), ("R", (2, G * hidden, hidden)), ("B", (2, 2 * G * hidden))):
            inits[f"{w}{layer}"] = (rng.standard_normal(shape) * 0.5).astype(f32)
        nodes.append(
            n(
                cell,
                [x, f"W{layer}", f"R{layer}", f"B{layer}", "lens"],
                [f"Y{layer}"],
                hidden_size=hidden,
                direction="bidirectional",
                **({"linear_before_reset": 1} if cell == "GRU" else {}),
            )
        )
        x, width = f"x{layer + 1}", 2 * hidden
        perm = [0, 2, 1, 3] if layer < layers - 1 else [2, 0, 1, 3]
        nodes += [n("Transpose", [f"Y{layer}"], [f"t{layer}"], perm=perm), n("Reshape", [f"t{layer}", "shape3"], [x])]
    nodes += [
        n("MatMul", [x, "hw"], ["z"]),
        n("Add", ["z", "hb"], ["head"]),
        n("Shape", ["ids"], ["shape"]),
        n("Gather", ["shape", "one"], ["time"]),
        n("Range", ["zero", "time", "one"], ["steps"]),
        n("Unsqueeze", ["steps", "axes0"], ["row"]),
        n("Cast", ["lens"], ["lens64"], to=TensorProto.INT64),
        n("Unsqueeze", ["lens64", "axes1"], ["col"]),
        n("Less", ["row", "col"], ["mask"]),
        n("Unsqueeze", ["mask", "axes2"], ["mask3"]),
        n("Where", ["mask3", "head", "zf"], ["logits"]),
    ]
    inputs = [_vi("ids", TensorProto.INT64, ["B", "T"]), _vi("lens", TensorProto.INT32, ["B"])]
    return _model(nodes, inputs, [_vi("logits", TensorProto.FLOAT, ["B", "T", tags])], inits)


@pytest.mark.parametrize("cell", ["GRU", "LSTM", "RNN"])
def test_fusion_fires_on_a_tagger_graph(cell):
    model = _tagger(cell)
    rng = np.random.default_rng(4)
    for B, T, lens in ((1, 1, [1]), (1, 6, [6]), (4, 7, [7, 1, 0, 4])):
        feeds = {"ids": rng.integers(0, 11, (B, T)), "lens": np.array(lens, np.int32)}
        on, off = _check(model, feeds, "fuse_recurrent_step", exact=False, threads=1)
        assert on.program.fired["fuse_recurrent_step"] == 1
        assert [st.key[1] for st in on._plan if st.key[0] == "rnnkit"] == ["FusedRecurrentStep"]
        assert not {"GRU", "LSTM", "RNN", "MatMul", "Add"} & {st.key[1] for st in on._plan}


def test_every_pass_together_equals_none_on_the_g2p_decoder():
    import onnx

    model = onnx.load(G2P / "decoder.onnx")
    feeds = _g2p_feeds(2, 5, np.random.default_rng(9))
    full = NumbaSession(model, threads=1)
    assert set(full.program.fired) == passes.NAMES
    want = _onnxruntime(model, feeds)
    for a, b, e in zip(full.run(None, feeds), NumbaSession(model, threads=1, passes=()).run(None, feeds), want):
        assert FP32.close(a, b) and FP32.close(a, e), FP32.worst(a, e)
