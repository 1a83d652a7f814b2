"""Graph-level tests of the numba backend: multi-node graphs against onnxruntime and
onnx.reference at several shapes, int8 weight handling, refusals, constant folding, and
onnxruntime's com.microsoft quantized matmuls."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

pytest.importorskip("numba")

from rnnkit.runtime.errors import InputError, UnsupportedError  # noqa: E402
from rnnkit.runtime.numba_backend import NumbaBackend, NumbaSession, load_session  # noqa: E402
from rnnkit.runtime.numba_backend import graph as graph_mod  # noqa: E402
from rnnkit.runtime.numba_backend.base import Op, QuantizedWeight  # noqa: E402
from rnnkit.runtime.tolerance import FP32, INT8  # noqa: E402

ort = pytest.importorskip("onnxruntime")
SHAPES = [(1, 1), (3, 7), (5, 20)]


def _model(nodes, inputs, outputs, inits=(), opset=17, ms=False):
    g = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    ops = [helper.make_opsetid("", opset)] + ([helper.make_opsetid("com.microsoft", 1)] if ms else [])
    return helper.make_model(g, opset_imports=ops, ir_version=8)


def _ort(model, feeds):
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, feeds)


def _classifier_head(V=11, E=6, C=3, seed=0):
    """input_ids (B, T) int64, sequence_lens (B,) int32 -> masked mean of embeddings -> Gemm -> LogSoftmax."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.standard_normal((V, E)).astype(np.float32), "emb"),
        numpy_helper.from_array(rng.standard_normal((E, C)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.standard_normal(C).astype(np.float32), "b"),
        numpy_helper.from_array(np.array([1], np.int64), "one"),
        numpy_helper.from_array(np.array([0], np.int64), "zero"),
    ]
    n = helper.make_node
    nodes = [
        n("Gather", ["emb", "input_ids"], ["x"], name="embed"),  # (B, T, E)
        n("Shape", ["input_ids"], ["shape"], start=1, end=2),  # [T]
        n("Squeeze", ["shape", "zero"], ["t"]),
        n("Cast", ["zero"], ["z32"], to=TensorProto.INT64),
        n("Squeeze", ["z32", "zero"], ["z"]),
        n("Squeeze", ["one", "zero"], ["o"]),
        n("Range", ["z", "t", "o"], ["steps"]),  # (T,)
        n("Cast", ["sequence_lens"], ["lens"], to=TensorProto.INT64),
        n("Unsqueeze", ["lens", "one"], ["lens2"]),  # (B, 1)
        n("Less", ["steps", "lens2"], ["mask"]),  # (B, T)
        n("Cast", ["mask"], ["maskf"], to=TensorProto.FLOAT),
        n("Unsqueeze", ["maskf", "two"], ["mask3"]),  # (B, T, 1)
        n("Mul", ["x", "mask3"], ["xm"]),
        n("ReduceSum", ["xm", "one"], ["s"], keepdims=0),  # (B, E)
        n("Cast", ["lens2"], ["lensf"], to=TensorProto.FLOAT),
        n("Div", ["s", "lensf"], ["mean"]),
        n("Gemm", ["mean", "w", "b"], ["logits"], alpha=0.5),
        n("LogSoftmax", ["logits"], ["logp"], axis=-1),
        n("ArgMax", ["logp"], ["label"], axis=1, keepdims=0),
        n("TopK", ["logp", "one"], ["top", "top_i"]),
    ]
    inits.append(numpy_helper.from_array(np.array([2], np.int64), "two"))
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "time"]),
        helper.make_tensor_value_info("sequence_lens", TensorProto.INT32, ["batch"]),
    ]
    outputs = [
        helper.make_tensor_value_info("logp", TensorProto.FLOAT, ["batch", C]),
        helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"]),
        helper.make_tensor_value_info("top_i", TensorProto.INT64, ["batch", 1]),
    ]
    return _model(nodes, inputs, outputs, inits)


@pytest.mark.parametrize("shape", SHAPES)
def test_multi_node_graph_matches_onnxruntime_and_reference(shape):
    model = _classifier_head()
    rng = np.random.default_rng(sum(shape))
    B, T = shape
    feeds = {
        "input_ids": rng.integers(0, 11, shape).astype(np.int64),
        "sequence_lens": rng.integers(1, T + 1, B).astype(np.int32),
    }
    ours = NumbaSession(model).run(None, feeds)
    for oracle in (_ort(model, feeds), ReferenceEvaluator(model).run(None, feeds)):
        for a, e in zip(ours, oracle):
            assert a.dtype == e.dtype and a.shape == e.shape
            assert FP32.close(a, e), FP32.worst(a, e)


def test_session_metadata_and_output_selection():
    s = load_session(_classifier_head(), threads=1)
    assert s.input_names == ["input_ids", "sequence_lens"]
    info = s.get_inputs()[0]
    assert info.shape == ["batch", "time"] and info.dtype == np.int64 and info.type == "tensor(int64)"
    feeds = {"input_ids": np.zeros((2, 3), np.int64), "sequence_lens": np.array([1, 3], np.int32)}
    (label,) = s.run(["label"], feeds)
    assert label.shape == (2,)


def test_constant_folding_leaves_only_runtime_nodes():
    model = _classifier_head()
    s = NumbaSession(model)
    # Cast(zero) -> Squeeze, Squeeze(one) are folded; the runtime plan keeps the rest.
    planned = [op.node.op_type for op, *_ in s._plan]
    assert len(planned) == len(model.graph.node) - 3
    assert planned.count("Cast") == 3


def test_constant_output_is_folded():
    n = helper.make_node
    nodes = [
        n("Constant", [], ["c"], value=numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3))),
        n("Shape", ["c"], ["sh"]),
        n("ReduceSum", ["sh"], ["total"], keepdims=0),
        n("Add", ["x", "total"], ["y"]),
    ]
    model = _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.INT64, [])],
        [
            helper.make_tensor_value_info("y", TensorProto.INT64, []),
            helper.make_tensor_value_info("sh", TensorProto.INT64, [2]),
        ],
    )
    s = NumbaSession(model)
    assert len(s._plan) == 1
    y, sh = s.run(None, {"x": np.array(1, np.int64)})
    assert y == 6 and sh.tolist() == [2, 3]


# ------------------------------------------------------------------ refusals
def test_unknown_ops_are_all_listed_at_load():
    n = helper.make_node
    nodes = [
        n("Foo", ["x"], ["a"], name="first"),
        n("Relu", ["a"], ["b"]),
        n("Bar", ["b"], ["y"], name="second", domain="com.example"),
    ]
    model = _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    with pytest.raises(UnsupportedError) as e:
        NumbaSession(model)
    msg = str(e.value)
    assert "node 'first' (Foo)" in msg and "node 'second' (com.example.Bar)" in msg and "ai.onnx=17" in msg


def test_unsupported_attribute_is_refused():
    node = helper.make_node("Gemm", ["a", "b"], ["y"], name="g", unknown_attr=1)
    model = _model(
        [node],
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, [2, 2]) for k in "ab"],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])],
    )
    with pytest.raises(UnsupportedError, match=r"node 'g' \(Gemm\).*unknown_attr"):
        NumbaSession(model)


def test_bad_feeds_name_the_input():
    s = NumbaSession(_classifier_head())
    good = {"input_ids": np.zeros((2, 3), np.int64), "sequence_lens": np.array([1, 3], np.int32)}
    with pytest.raises(InputError, match=r"input 'input_ids' has dtype int32, expected int64"):
        s.run(None, {**good, "input_ids": good["input_ids"].astype(np.int32)})
    with pytest.raises(InputError, match=r"missing input\(s\) \['sequence_lens'\]"):
        s.run(None, {"input_ids": good["input_ids"]})
    with pytest.raises(InputError, match=r"unknown input\(s\) \['ids'\]"):
        s.run(None, {**good, "ids": good["input_ids"]})
    with pytest.raises(InputError, match=r"input 'sequence_lens' has shape \[2, 1\] \(rank 2\), expected rank 1"):
        s.run(None, {**good, "sequence_lens": good["sequence_lens"][:, None]})
    with pytest.raises(InputError, match="unknown output"):
        s.run(["nope"], good)


def test_bad_model_file(tmp_path):
    from rnnkit.runtime.errors import BundleError

    with pytest.raises(BundleError, match="no such ONNX file"):
        load_session(tmp_path / "missing.onnx")
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    with pytest.raises(BundleError, match="cannot read"):
        load_session(tmp_path / "bad.onnx")


# ------------------------------------------------------------------ int8 weights
def _int8_weight(rng, rows, cols):
    q = rng.integers(-127, 128, (rows, cols)).astype(np.int8)
    scale = (rng.random(rows).astype(np.float32) + 0.5) / 64
    return q, scale


def _dq_reshape_gru(D=2, H=4, I=5, seed=0):
    """rnnkit's int8 form: DequantizeLinear(W_q [D*3H, I], axis=0) -> Reshape([D, 3H, I]) -> GRU.W (and R)."""
    rng = np.random.default_rng(seed)
    n = helper.make_node
    inits, nodes = [], []
    for name, cols in (("W", I), ("R", H)):
        q, scale = _int8_weight(rng, D * 3 * H, cols)
        inits += [
            numpy_helper.from_array(q, f"{name}_q"),
            numpy_helper.from_array(scale, f"{name}_scale"),
            numpy_helper.from_array(np.zeros(D * 3 * H, np.int8), f"{name}_zp"),
            numpy_helper.from_array(np.array([D, 3 * H, cols], np.int64), f"{name}_shape"),
        ]
        nodes += [
            n("DequantizeLinear", [f"{name}_q", f"{name}_scale", f"{name}_zp"], [f"{name}_flat"], axis=0),
            n("Reshape", [f"{name}_flat", f"{name}_shape"], [name]),
        ]
    inits.append(numpy_helper.from_array(rng.standard_normal((D, 6 * H)).astype(np.float32), "B"))
    nodes.append(
        n(
            "GRU",
            ["X", "W", "R", "B", "sequence_lens"],
            ["Y", "Y_h"],
            hidden_size=H,
            direction="bidirectional" if D == 2 else "forward",
            linear_before_reset=1,
            name="gru",
        )
    )
    inputs = [
        helper.make_tensor_value_info("X", TensorProto.FLOAT, ["T", "B", I]),
        helper.make_tensor_value_info("sequence_lens", TensorProto.INT32, ["B"]),
    ]
    outputs = [
        helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["T", D, "B", H]),
        helper.make_tensor_value_info("Y_h", TensorProto.FLOAT, [D, "B", H]),
    ]
    return _model(nodes, inputs, outputs, inits)


def _dequantized(model):
    """The same graph with every constant DequantizeLinear/Reshape folded to float initializers."""
    values = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    keep = []
    for node in model.graph.node:
        if node.op_type in ("DequantizeLinear", "Reshape") and all(i in values for i in node.input if i):
            values[node.output[0]] = _fold(node, values)
        else:
            keep.append(node)
    used = {i for node in keep for i in node.input}
    inits = [numpy_helper.from_array(v, k) for k, v in values.items() if k in used]
    return _model(keep, list(model.graph.input), list(model.graph.output), inits)


def _fold(node, values):
    g = helper.make_graph(
        [node],
        "f",
        [],
        [onnx.ValueInfoProto(name=node.output[0])],
        [numpy_helper.from_array(values[i], i) for i in node.input if i],
    )
    return ReferenceEvaluator(helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])).run(None, {})[0]


class _Recorder(Op):
    """A fake op that takes a quantized W/R and records what the loader handed it."""

    supported_attributes = frozenset({"hidden_size", "direction", "linear_before_reset"})
    quantized_inputs = frozenset({1, 2})
    seen: dict = {}

    def __init__(self, node, consts):
        super().__init__(node, consts)
        type(self).seen = dict(consts)

    def __call__(self, X, W, R, B, sequence_lens=None):
        T, Bsz, _ = X.shape
        D = W.q.shape[0]
        H = R.q.shape[2]
        return np.zeros((T, D, Bsz, H), np.float32), np.zeros((D, Bsz, H), np.float32)


def test_dequantize_reshape_reaches_op_as_canonical_quantized_weight(monkeypatch):
    monkeypatch.setitem(graph_mod.OPS, ("", "GRU"), _Recorder)
    model = _dq_reshape_gru(D=2, H=4, I=5)
    s = NumbaSession(model)
    W, R = _Recorder.seen[1], _Recorder.seen[2]
    assert isinstance(W, QuantizedWeight) and isinstance(R, QuantizedWeight)
    assert W.q.dtype == np.int8 and W.q.shape == (2, 12, 5) and W.scale.shape == (2, 12)
    assert R.q.shape == (2, 12, 4) and W.axis == -1 and W.zero_point is None
    floats = {i.name: numpy_helper.to_array(i) for i in _dequantized(model).graph.initializer}
    np.testing.assert_allclose(W.dequantize(), floats["W"], rtol=1e-6)
    np.testing.assert_allclose(R.dequantize(), floats["R"], rtol=1e-6)
    assert [op.node.op_type for op, *_ in s._plan] == ["GRU"]  # DequantizeLinear/Reshape are gone


def test_rnn_ops_declare_quantized_inputs():
    """The RNN kernels read int8 W/R only if their classes ask for them (graph.py docstring)."""
    for op in ("RNN", "GRU", "LSTM"):
        cls = graph_mod.OPS.get(("", op))
        if cls is None:
            pytest.skip("rnn_ops.py has not landed")
        assert {1, 2} <= set(getattr(cls, "quantized_inputs", ())), f"{op} does not declare quantized_inputs"


@pytest.mark.parametrize("shape", [(1, 1), (6, 3)])
@pytest.mark.parametrize("int8_kernel", [False, True])
def test_int8_gru_matches_dequantized_graph(shape, int8_kernel, monkeypatch):
    if ("", "GRU") not in graph_mod.OPS:
        pytest.skip("rnn_ops.py has not landed")
    if int8_kernel:  # make sure the GRU gets QuantizedWeight, whatever rnn_ops declares today
        monkeypatch.setattr(graph_mod.OPS[("", "GRU")], "quantized_inputs", frozenset({1, 2}), raising=False)
    model = _dq_reshape_gru()
    T, B = shape
    rng = np.random.default_rng(T)
    feeds = {
        "X": rng.standard_normal((T, B, 5)).astype(np.float32),
        "sequence_lens": rng.integers(1, T + 1, B).astype(np.int32),
    }
    ours = NumbaSession(model).run(None, feeds)
    for oracle in (NumbaSession(_dequantized(model)).run(None, feeds), _ort(model, feeds)):
        for a, e in zip(ours, oracle):
            assert FP32.close(a, e), FP32.worst(a, e)


def test_quantized_embedding_gather():
    rng = np.random.default_rng(1)
    q, scale = _int8_weight(rng, 10, 4)
    zp = rng.integers(-3, 3, 10).astype(np.int8)
    n = helper.make_node
    nodes = [n("DequantizeLinear", ["q", "scale", "zp"], ["emb"], axis=0), n("Gather", ["emb", "ids"], ["y"])]
    inits = [
        numpy_helper.from_array(q, "q"),
        numpy_helper.from_array(scale, "scale"),
        numpy_helper.from_array(zp, "zp"),
    ]
    model = _model(
        nodes,
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["B", "T"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "T", 4])],
        inits,
    )
    s = NumbaSession(model)
    assert isinstance(s._plan[0][0].consts[0], QuantizedWeight)
    ids = rng.integers(-10, 10, (3, 7)).astype(np.int64)
    (y,) = s.run(None, {"ids": ids})
    (e,) = _ort(model, {"ids": ids})
    assert FP32.close(y, e), FP32.worst(y, e)


# ------------------------------------------------------------------ com.microsoft quantized matmuls
@pytest.mark.parametrize("per_column,zero_point,bias", [(False, False, False), (True, True, True), (True, False, True)])
@pytest.mark.parametrize("btype", [np.int8, np.uint8])
def test_dynamic_quantize_matmul_matches_onnxruntime(per_column, zero_point, bias, btype):
    rng = np.random.default_rng(3)
    K, N = 16, 7
    lo, hi = (-128, 128) if btype == np.int8 else (0, 256)
    b = rng.integers(lo, hi, (K, N)).astype(btype)
    b_scale = (rng.random(N if per_column else 1).astype(np.float32) + 0.5) / 50
    b_zp = (
        rng.integers(lo // 4 if lo else 100, hi // 4 if lo else 150, b_scale.shape).astype(btype)
        if zero_point
        else None
    )
    names = ["A", "B", "b_scale", "b_zp" if zero_point else "", "bias" if bias else ""]
    inits = [numpy_helper.from_array(b, "B"), numpy_helper.from_array(b_scale, "b_scale")]
    if zero_point:
        inits.append(numpy_helper.from_array(b_zp, "b_zp"))
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(N).astype(np.float32), "bias"))
    node = helper.make_node("DynamicQuantizeMatMul", names, ["Y"], domain="com.microsoft")
    model = _model(
        [node],
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, ["B", "T", K])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["B", "T", N])],
        inits,
        ms=True,
    )
    a = rng.standard_normal((2, 5, K)).astype(np.float32)
    (y,) = NumbaSession(model).run(None, {"A": a})
    (e,) = _ort(model, {"A": a})
    assert INT8.close(y, e), INT8.worst(y, e)


@pytest.mark.parametrize("shape", [(1, 1, 200), (1, 3, 200), (2, 5, 200)])
def test_dynamic_quantize_matmul_as_rnnkit_exports_it_equals_onnxruntime(shape):
    """rnnkit's int8 MatMul (symmetric int8 per column, zero points 0): numba's packed u8 x s8
    path computes onnxruntime's numbers to fp32 rounding, one row or many (one activation range
    for the whole tensor on both)."""
    rng = np.random.default_rng(5)
    K, N = shape[-1], 300
    w = rng.standard_normal((K, N)).astype(np.float32)
    scale = (np.abs(w).max(axis=0) / 127).astype(np.float32)
    q = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
    inits = [
        numpy_helper.from_array(q, "B"),
        numpy_helper.from_array(scale, "b_scale"),
        numpy_helper.from_array(np.zeros(N, np.int8), "b_zp"),
    ]
    node = helper.make_node("DynamicQuantizeMatMul", ["A", "B", "b_scale", "b_zp"], ["Y"], domain="com.microsoft")
    model = _model(
        [node],
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, ["B", "T", K])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["B", "T", N])],
        inits,
        ms=True,
    )
    session = NumbaSession(model)
    assert session._plan[0][0]._packed is not None  # the packed path, not the generic integer product
    a = rng.standard_normal(shape).astype(np.float32)
    (y,) = session.run(None, {"A": a})
    (e,) = _ort(model, {"A": a})
    assert FP32.close(y, e), FP32.worst(y, e)


def test_matmul_integer_to_float_matches_onnxruntime():
    rng = np.random.default_rng(4)
    M, K, N = 6, 33, 9
    names = ["A", "B", "a_scale", "b_scale", "a_zp", "b_zp", "bias"]
    inits = [
        numpy_helper.from_array(rng.integers(-128, 128, (K, N)).astype(np.int8), "B"),
        numpy_helper.from_array(np.float32(0.02), "a_scale"),
        numpy_helper.from_array((rng.random(N).astype(np.float32) + 0.5) / 30, "b_scale"),
        numpy_helper.from_array(np.uint8(121), "a_zp"),
        numpy_helper.from_array(rng.integers(-5, 5, N).astype(np.int8), "b_zp"),
        numpy_helper.from_array(rng.standard_normal(N).astype(np.float32), "bias"),
    ]
    node = helper.make_node("MatMulIntegerToFloat", names, ["Y"], domain="com.microsoft")
    model = _model(
        [node],
        [helper.make_tensor_value_info("A", TensorProto.UINT8, [M, K])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [M, N])],
        inits,
        ms=True,
    )
    a = rng.integers(0, 256, (M, K)).astype(np.uint8)
    (y,) = NumbaSession(model).run(None, {"A": a})
    (e,) = _ort(model, {"A": a})
    assert FP32.close(y, e), FP32.worst(y, e)


def test_backend_interface():
    assert NumbaBackend.supports_device("CPU") and not NumbaBackend.supports_device("CUDA")
    node = helper.make_node("Gemm", ["a", "b"], ["y"], transB=1, alpha=2.0)
    a, b = np.ones((2, 3), np.float32), np.full((4, 3), 0.5, np.float32)
    (y,) = NumbaBackend.run_node(node, [a, b])
    np.testing.assert_allclose(y, np.full((2, 4), 3.0, np.float32))
    model = _classifier_head()
    feeds = [np.zeros((1, 2), np.int64), np.array([2], np.int32)]
    assert len(NumbaBackend.run_model(model, feeds)) == 3
