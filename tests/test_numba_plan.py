"""The numba backend's compiled plan (plan.py) and the fast paths that serve it: the memo of
shape/length-only nodes, the MatMul + bias and in-place Add fusions, the feed check's fast path,
constant-operand ops (Slice, Unsqueeze, Squeeze, Reshape, Transpose, Where) and MatMul with a
constant fp32 or int8 weight.  Every optimised run is compared with the same graph run without
optimisation (bit for bit where the arithmetic is the same), with onnx's ReferenceEvaluator and,
for int8, with the dequantized graph."""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

pytest.importorskip("numba")

from rnnkit.runtime.errors import InputError  # noqa: E402
from rnnkit.runtime.numba_backend import (
    NumbaSession,  # noqa: E402
    matvec,  # noqa: E402
)
from rnnkit.runtime.numba_backend import graph as graph_mod  # noqa: E402
from rnnkit.runtime.numba_backend import passes as passes_mod  # noqa: E402
from rnnkit.runtime.numba_backend import plan as plan_mod  # noqa: E402
from rnnkit.runtime.tolerance import FP32  # noqa: E402

n = helper.make_node
V, H = 37, 8


def _model(nodes, inputs, outputs, inits=(), opset=17):
    g = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def _plain(model):
    """The same graph through the unoptimised plan: no pass, no memo, no fusion."""
    return NumbaSession(model, passes=())


def _lm_head(seed=0, bias=True):
    """An LM step's tail: embeddings -> MatMul(+Add) head, masked by a time mask built from
    Shape(input_ids) and sequence_lens (the graph_lm.py pattern)."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.standard_normal((V, H)).astype(np.float32), "emb"),
        numpy_helper.from_array(rng.standard_normal((H, V)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.standard_normal(V).astype(np.float32), "b"),
        numpy_helper.from_array(np.array(1, np.int64), "axis_time"),
        numpy_helper.from_array(np.array(0, np.int64), "zero"),
        numpy_helper.from_array(np.array(1, np.int64), "one"),
        numpy_helper.from_array(np.array([0], np.int64), "axes_0"),
        numpy_helper.from_array(np.array([1], np.int64), "axes_1"),
        numpy_helper.from_array(np.array([2], np.int64), "axes_2"),
        numpy_helper.from_array(np.array(0.0, np.float32), "zero_f"),
    ]
    nodes = [
        n("Gather", ["emb", "input_ids"], ["x"]),  # (B, T, H)
        n("MatMul", ["x", "w"], ["z" if bias else "head"]),
    ]
    if bias:
        nodes.append(n("Add", ["z", "b"], ["head"]))
    nodes += [
        n("Shape", ["input_ids"], ["shape"]),
        n("Gather", ["shape", "axis_time"], ["time"]),
        n("Range", ["zero", "time", "one"], ["steps"]),
        n("Unsqueeze", ["steps", "axes_0"], ["steps_row"]),
        n("Cast", ["sequence_lens"], ["lens"], to=TensorProto.INT64),
        n("Unsqueeze", ["lens", "axes_1"], ["lens_col"]),
        n("Less", ["steps_row", "lens_col"], ["mask"]),
        n("Unsqueeze", ["mask", "axes_2"], ["mask3"]),
        n("Where", ["mask3", "head", "zero_f"], ["logits"]),
    ]
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "time"]),
        helper.make_tensor_value_info("sequence_lens", TensorProto.INT32, ["batch"]),
    ]
    outputs = [
        helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "time", V]),
        helper.make_tensor_value_info("steps", TensorProto.INT64, ["time"]),
    ]
    return _model(nodes, inputs, outputs, inits)


def _feeds(rng, B, T):
    return {
        "input_ids": rng.integers(0, V, (B, T)).astype(np.int64),
        "sequence_lens": rng.integers(1, T + 1, B).astype(np.int32),
    }


# ------------------------------------------------------------------ plan vs unoptimised twin
@pytest.mark.parametrize("bias", [True, False])
def test_optimised_plan_equals_plain_plan_and_reference(bias):
    model = _lm_head(bias=bias)
    fast, plain, ref = NumbaSession(model), _plain(model), ReferenceEvaluator(model)
    assert len(plain._plan) == len(model.graph.node)
    if bias:  # the Add went into the MatMul
        assert "Add" not in [st.op.node.op_type for st in fast._plan]
    rng = np.random.default_rng(1)
    # repeated and alternating shapes and lengths: memo hits, misses and evictions
    for B, T in [(1, 1), (1, 1), (3, 5), (1, 1), (2, 7), (3, 5), (1, 30), (1, 1)] * 3:
        feeds = _feeds(rng, B, T)
        got, want = fast.run(None, feeds), plain.run(None, feeds)
        for a, e in zip(got, want):
            assert a.dtype == e.dtype and a.shape == e.shape
            np.testing.assert_array_equal(a, e)
        for a, e in zip(got, ref.run(None, feeds)):
            assert FP32.close(a, e), FP32.worst(a, e)


def test_prelude_runs_shape_and_length_nodes_once_per_signature(monkeypatch):
    s = NumbaSession(_lm_head())
    prelude = [s._plan[k].op.node.op_type for k in passes_mod.prelude_steps(s._plan, 2, frozenset({1}))]
    assert sorted(prelude) == sorted(
        ["Shape", "Gather", "Range", "Unsqueeze", "Cast", "Unsqueeze", "Less", "Unsqueeze"]
    )
    less = graph_mod.OPS[("", "Less")]
    counted = []
    original = less.compute
    monkeypatch.setattr(less, "compute", lambda self, *a: counted.append(1) or original(self, *a))
    s = NumbaSession(_lm_head())
    feeds = _feeds(np.random.default_rng(2), 1, 1)
    for _ in range(5):
        s.run(None, feeds)
    assert len(counted) == 1
    s.run(None, {**feeds, "sequence_lens": np.array([0], np.int32)})  # a new length: the prelude again
    s.run(None, {**feeds, "input_ids": np.zeros((1, 2), np.int64)})  # a new shape: again
    s.run(None, feeds)
    assert len(counted) == 3


def test_memo_values_are_protected_and_outputs_from_it_are_copies():
    s = NumbaSession(_lm_head())
    feeds = _feeds(np.random.default_rng(3), 2, 4)
    _, steps = s.run(None, feeds)
    assert steps.flags.writeable
    steps[:] = 99  # the caller's copy: the next run is unaffected
    _, again = s.run(None, feeds)
    assert again.tolist() == [0, 1, 2, 3]
    memo = s._body.__globals__["_memo"]
    assert memo and all(not v.flags.writeable for values in memo.values() for v in values)


def test_long_length_input_is_not_memoised():
    s = NumbaSession(_lm_head())
    rng = np.random.default_rng(4)
    B = plan_mod.KEY_ELEMENTS + 1
    feeds = _feeds(rng, B, 3)
    got = s.run(None, feeds)
    want = ReferenceEvaluator(_lm_head()).run(None, feeds)
    assert FP32.close(got[0], want[0])
    assert not s._body.__globals__["_memo"]


def test_inplace_add_only_into_a_value_used_once():
    rng = np.random.default_rng(5)
    w = rng.standard_normal((4, 3)).astype(np.float32)
    b = rng.standard_normal(3).astype(np.float32)
    nodes = [
        n("MatMul", ["x", "w"], ["z"]),
        n("Add", ["z", "y"], ["s"]),
        n("Mul", ["s", "b"], ["t"]),
        n("Add", ["z", "t"], ["u"]),
    ]  # z is read twice: never overwritten
    model = _model(
        nodes,
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", 4]),
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", 3]),
        ],
        [
            helper.make_tensor_value_info("u", TensorProto.FLOAT, ["m", 3]),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, ["m", 3]),
        ],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    x = rng.standard_normal((5, 4)).astype(np.float32)
    y = rng.standard_normal((5, 3)).astype(np.float32)
    y0 = y.copy()
    u, z = NumbaSession(model).run(None, {"x": x, "y": y})
    np.testing.assert_array_equal(y, y0)  # a feed is never written
    np.testing.assert_allclose(z, x @ w, rtol=1e-6)
    np.testing.assert_allclose(u, x @ w + (x @ w + y) * b, rtol=1e-5)
    # broadcasting that grows the result cannot go in place: same answer as numpy
    x1 = x[:1]
    u, _ = NumbaSession(model).run(None, {"x": x1, "y": y})
    np.testing.assert_allclose(u, x1 @ w + (x1 @ w + y) * b, rtol=1e-5)


def test_numpy_error_inside_the_plan_names_the_node():
    s = NumbaSession(_lm_head())
    with pytest.raises(InputError, match=r"node '.*' \(Gather\) failed on the given inputs"):
        s.run(None, {"input_ids": np.array([[V + 5]], np.int64), "sequence_lens": np.array([1], np.int32)})


def test_feed_checks_fast_and_slow_path():
    s = NumbaSession(_lm_head())
    good = {"input_ids": np.zeros((2, 3), np.int64), "sequence_lens": np.array([1, 3], np.int32)}
    assert s._fast_feeds(good) is not None
    # lists are converted by the full check, as before
    lists = {"input_ids": [[0, 0, 0], [0, 0, 0]], "sequence_lens": np.array([1, 3], np.int32)}
    assert s._fast_feeds(lists) is None
    np.testing.assert_array_equal(s.run(None, lists)[0], s.run(None, good)[0])
    with pytest.raises(InputError, match=r"input 'input_ids' has dtype int32, expected int64"):
        s.run(None, {**good, "input_ids": good["input_ids"].astype(np.int32)})
    with pytest.raises(InputError, match=r"input 'sequence_lens' has shape \[2, 1\] \(rank 2\), expected rank 1"):
        s.run(None, {**good, "sequence_lens": good["sequence_lens"][:, None]})
    with pytest.raises(InputError, match=r"missing input\(s\) \['sequence_lens'\]"):
        s.run(None, {"input_ids": good["input_ids"]})
    with pytest.raises(InputError, match=r"unknown input\(s\) \['extra'\]"):
        s.run(None, {**good, "extra": good["input_ids"]})
    with pytest.raises(InputError, match="unknown output"):
        s.run(["nope"], good)
    assert [o.shape for o in s.run(["steps", "logits"], good)] == [(3,), (2, 3, V)]


def test_fixed_dims_are_checked_on_the_fast_path():
    model = _model(
        [n("Relu", ["x"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 4])],
    )
    s = NumbaSession(model)
    assert s._fast_feeds({"x": np.zeros((2, 5), np.float32)}) is None
    with pytest.raises(InputError, match=r"input 'x' has shape \[2, 5\], expected \['b', 4\]"):
        s.run(None, {"x": np.zeros((2, 5), np.float32)})


# ------------------------------------------------------------------ constant-operand ops
def _const_vs_input(node_type, x, consts: dict, attrs=None, opset=17):
    """The node with its operands as initializers (the fast paths) and as graph inputs: equal, and
    equal to the ReferenceEvaluator."""
    names = ["x"] + list(consts)
    node = n(node_type, names, ["y"], **(attrs or {}))
    typed = {np.dtype(np.int64): TensorProto.INT64, np.dtype(np.float32): TensorProto.FLOAT}
    out = [helper.make_tensor_value_info("y", typed[x.dtype], None)]
    x_in = helper.make_tensor_value_info("x", typed[x.dtype], None)
    as_const = _model([node], [x_in], out, [numpy_helper.from_array(v, k) for k, v in consts.items()], opset)
    as_input = _model(
        [node],
        [x_in] + [helper.make_tensor_value_info(k, typed[v.dtype], list(v.shape)) for k, v in consts.items()],
        out,
        opset=opset,
    )
    got = NumbaSession(as_const).run(None, {"x": x})[0]
    other = NumbaSession(as_input).run(None, {"x": x, **consts})[0]
    want = ReferenceEvaluator(as_const).run(None, {"x": x})[0]
    assert got.shape == want.shape and other.shape == want.shape
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(other, want)


@pytest.mark.parametrize(
    "starts,ends,axes,steps",
    [
        ([0], [1], [0], [1]),
        ([1, -3], [1000, -1], [1, -1], [1, 2]),
        ([-100], [100], [2], [3]),
        ([5], [1], [1], [1]),
        ([3], [0], [1], [-1]),
        ([-1], [-100], [2], [-2]),
    ],
)
def test_constant_slice(starts, ends, axes, steps):
    x = np.arange(4 * 6 * 5, dtype=np.float32).reshape(4, 6, 5)
    _const_vs_input(
        "Slice",
        x,
        {
            "starts": np.array(starts, np.int64),
            "ends": np.array(ends, np.int64),
            "axes": np.array(axes, np.int64),
            "steps": np.array(steps, np.int64),
        },
    )


@pytest.mark.parametrize("axes", [[0], [-1], [3, 0], [1, -1]])
def test_constant_unsqueeze(axes):
    _const_vs_input("Unsqueeze", np.arange(6, dtype=np.float32).reshape(2, 3), {"axes": np.array(axes, np.int64)})


def test_unsqueeze_repeated_axis_is_an_input_error():
    model = _model(
        [n("Unsqueeze", ["x", "a"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array([0, 0], np.int64), "a")],
    )
    with pytest.raises(InputError, match="repeated axis"):
        NumbaSession(model).run(None, {"x": np.zeros(2, np.float32)})


@pytest.mark.parametrize("axes", [[0], [-1], [0, 2]])
def test_constant_squeeze(axes):
    _const_vs_input("Squeeze", np.zeros((1, 3, 1), np.float32), {"axes": np.array(axes, np.int64)})


@pytest.mark.parametrize("shape,allowzero", [([0, -1], 0), ([3, 0, 2], 0), ([-1], 0), ([2, 3, 2], 1)])
def test_constant_reshape(shape, allowzero):
    _const_vs_input(
        "Reshape",
        np.arange(12, dtype=np.float32).reshape(3, 2, 2),
        {"shape": np.array(shape, np.int64)},
        {"allowzero": allowzero},
    )


def test_where_true_everywhere_returns_x_values():
    rng = np.random.default_rng(6)
    nodes = [n("Where", ["c", "x", "zero"], ["y"]), n("Where", ["c", "k", "zero"], ["z"])]
    k = rng.standard_normal((1, 1, 5)).astype(np.float32)
    model = _model(
        nodes,
        [
            helper.make_tensor_value_info("c", TensorProto.BOOL, [1, 1, 1]),
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 5]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 5]),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 1, 5]),
        ],
        [numpy_helper.from_array(np.array(0.0, np.float32), "zero"), numpy_helper.from_array(k, "k")],
    )
    s = NumbaSession(model)
    x = rng.standard_normal((1, 1, 5)).astype(np.float32)
    for c in (True, False):
        y, z = s.run(None, {"c": np.full((1, 1, 1), c), "x": x})
        np.testing.assert_array_equal(y, x if c else 0 * x)
        np.testing.assert_array_equal(z, k if c else 0 * k)
    z[:] = 7  # the constant itself was not handed out
    np.testing.assert_array_equal(s.run(None, {"c": np.ones((1, 1, 1), bool), "x": x})[1], k)


# ------------------------------------------------------------------ MatMul with a constant weight
def _matmul_model(b_init, dq=None, bias=None):
    nodes, inits = [], []
    if dq is None:
        inits.append(numpy_helper.from_array(b_init, "B"))
    else:
        q, scale, zp, axis = dq
        inits += [
            numpy_helper.from_array(q, "q"),
            numpy_helper.from_array(scale, "s"),
            numpy_helper.from_array(zp, "zp"),
        ]
        nodes.append(n("DequantizeLinear", ["q", "s", "zp"], ["B"], axis=axis))
    nodes.append(n("MatMul", ["A", "B"], ["Y" if bias is None else "Z"]))
    if bias is not None:
        inits.append(numpy_helper.from_array(bias, "bias"))
        nodes.append(n("Add", ["Z", "bias"], ["Y"]))
    return _model(
        nodes,
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
        inits,
        opset=21,
    )


@pytest.mark.parametrize("a_shape", [(1, 40), (40,), (1, 1, 40), (3, 40), (2, 5, 40)])
@pytest.mark.parametrize("bias", [False, True])
def test_matmul_constant_fp32(a_shape, bias):
    rng = np.random.default_rng(7)
    b = rng.standard_normal((40, 70)).astype(np.float32)
    c = rng.standard_normal(70).astype(np.float32) if bias else None
    model = _matmul_model(b, bias=c)
    s = NumbaSession(model)
    assert not any(st.template[1] is b for st in s._plan)  # held once, transposed
    a = rng.standard_normal(a_shape).astype(np.float32)
    (y,) = s.run(None, {"A": a})
    want = a @ b + (0 if c is None else c)
    assert y.shape == want.shape and FP32.close(y, want), FP32.worst(y, want)
    np.testing.assert_array_equal(y, _plain(model).run(None, {"A": a})[0])


def test_matmul_constant_errors_and_other_dtypes():
    b = np.ones((4, 3), np.float32)
    s = NumbaSession(_matmul_model(b))
    with pytest.raises(InputError, match=r"\(MatMul\) failed on the given inputs"):
        s.run(None, {"A": np.ones((2, 5), np.float32)})
    model = _matmul_model(b)  # not valid ONNX (A and B differ in type), but numpy's answer, not a wrong one
    model.graph.input[0].type.tensor_type.elem_type = TensorProto.DOUBLE
    (y,) = NumbaSession(model).run(None, {"A": np.ones((2, 4), np.float64)})
    assert y.dtype == np.float64 and y.tolist() == [[4.0] * 3] * 2


@pytest.mark.parametrize("rows", [1, 2, matvec.Q16_ROWS, matvec.Q16_ROWS + 1, 40])
@pytest.mark.parametrize("kind", ["per-column", "per-tensor", "uint8-zero-point"])
def test_matmul_int8_weight_matches_dequantized(rows, kind):
    rng = np.random.default_rng(rows)
    K, N = 70, 130  # N not a multiple of the 64-column blocks, K not of 8
    if kind == "uint8-zero-point":
        q = rng.integers(0, 256, (K, N)).astype(np.uint8)
        zp = rng.integers(100, 156, N).astype(np.uint8)
        scale = (rng.random(N).astype(np.float32) + 0.5) / 128
    else:
        q = rng.integers(-127, 128, (K, N)).astype(np.int8)
        per_col = kind == "per-column"
        scale = ((rng.random(N if per_col else 1).astype(np.float32) + 0.5) / 128).reshape(-1 if per_col else ())
        zp = np.zeros(scale.shape, np.int8)
    bias = rng.standard_normal(N).astype(np.float32)
    model = _matmul_model(None, dq=(q, scale, zp, 1), bias=bias)
    s = NumbaSession(model)
    unfused = NumbaSession(model, passes=passes_mod.NAMES - {"fuse_matmul_bias"})  # the MatMul op itself
    matmul = next(st.op for st in unfused._plan if st.op.node.op_type == "MatMul")
    assert matmul.packed_matrix().q.dtype == np.int8 and matmul.consts[1] is None  # kept 8-bit, once
    dense = (q.astype(np.float32) - zp.astype(np.float32)) * scale
    np.testing.assert_allclose(matmul._dense(), dense, rtol=1e-6)
    a = rng.standard_normal((rows, K)).astype(np.float32)
    (y,) = s.run(None, {"A": a})
    want = a.astype(np.float64) @ dense + bias
    assert FP32.close(y, want), FP32.worst(y, want)
    (e,) = ReferenceEvaluator(model).run(None, {"A": a})
    assert FP32.close(y, e), FP32.worst(y, e)


def test_project_rows_either_side_of_the_q16_threshold():
    rng = np.random.default_rng(8)
    K, C = 50, 100
    q = rng.integers(-127, 128, (K, C)).astype(np.int8)
    Q = matvec.pack_blocks(q[None])[0]
    scale = (rng.random(C).astype(np.float32) + 0.5) / 100
    zp = rng.integers(-3, 3, C).astype(np.float32)
    bias = rng.standard_normal(C).astype(np.float32)
    X = rng.standard_normal((matvec.Q16_ROWS + 3, K)).astype(np.float32)
    want = X.astype(np.float64) @ ((q - zp) * scale) + bias
    for rows in (1, matvec.Q16_ROWS, matvec.Q16_ROWS + 3):
        small, wide = np.empty((rows, C), np.float32), np.empty((rows, C), np.float32)
        matvec._project_q16(X[:rows], Q, scale, zp, bias, small)
        matvec._project(X[:rows], Q, scale, zp, bias, wide)
        assert FP32.close(small, want[:rows]) and FP32.close(wide, want[:rows])


# ------------------------------------------------------------------ recurrent op input checks
def test_lstm_refuses_state_and_input_of_the_wrong_size():
    rng = np.random.default_rng(9)
    I, Hh = 3, 4
    inits = [
        numpy_helper.from_array(rng.standard_normal((1, 4 * Hh, I)).astype(np.float32), "W"),
        numpy_helper.from_array(rng.standard_normal((1, 4 * Hh, Hh)).astype(np.float32), "R"),
    ]
    model = _model(
        [n("LSTM", ["X", "W", "R", "", "", "h0"], ["Y"], hidden_size=Hh, name="lstm")],
        [
            helper.make_tensor_value_info("X", TensorProto.FLOAT, ["T", "B", "I"]),
            helper.make_tensor_value_info("h0", TensorProto.FLOAT, [1, "B", "H"]),
        ],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
        inits,
    )
    s = NumbaSession(model)
    X = rng.standard_normal((2, 1, I)).astype(np.float32)
    (Y,) = s.run(None, {"X": X, "h0": np.zeros((1, 1, Hh), np.float32)})
    assert Y.shape == (2, 1, 1, Hh)
    with pytest.raises(InputError, match=r"node 'lstm' \(LSTM\).*initial_h has shape \[1, 1, 5\]"):
        s.run(None, {"X": X, "h0": np.zeros((1, 1, Hh + 1), np.float32)})
    with pytest.raises(InputError, match=r"node 'lstm' \(LSTM\).*X has 4 inputs per step"):
        s.run(None, {"X": np.zeros((2, 1, I + 1), np.float32), "h0": np.zeros((1, 1, Hh), np.float32)})
