"""Graph writer, graph checker, int8 quantizer and user-module adapter of rnnkit.export.

Oracles: the torch ``RecurrentClassifier`` (eval mode), onnxruntime, and
``onnx.reference.ReferenceEvaluator`` with its RNN/LSTM/GRU taught ``sequence_lens`` (the
stock reference ops ignore it, so we run them row by row on each row's real length).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
import onnx  # noqa: E402
from onnx import helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402
from onnx.reference.op_run import OpRun  # noqa: E402
from onnx.reference.ops.op_gru import GRU as _RefGRU  # noqa: E402
from onnx.reference.ops.op_lstm import LSTM as _RefLSTM  # noqa: E402
from onnx.reference.ops.op_rnn import RNN_14 as _RefRNN  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn.utils.rnn import pack_padded_sequence  # noqa: E402

from rnnkit.export.module import config_from_module, find_parts  # noqa: E402
from rnnkit.export.quantize import quantize_classifier  # noqa: E402
from rnnkit.export.task_classify import build_classifier_graph  # noqa: E402
from rnnkit.export.task_classify import check_classifier_graph as check_graph  # noqa: E402
from rnnkit.runtime.errors import UnsupportedError  # noqa: E402
from rnnkit.runtime.manifest import METADATA_KEYS, OPSET, ClassifierIO  # noqa: E402
from rnnkit.runtime.tolerance import FP32, INT8  # noqa: E402
from rnnkit.toolkit.models import ClassifierConfig, RecurrentClassifier  # noqa: E402

torch.set_num_threads(1)
VOCAB, LABELS = 40, 3


def _ragged(base, name):
    """Reference op that honours sequence_lens: run each row on its own real length, pad Y with 0."""

    def _run(self, X, W, R, B=None, sequence_lens=None, *rest, **attrs):
        time = X.shape[0]
        lens = [time] * X.shape[1] if sequence_lens is None else sequence_lens
        ys, yhs = [], []
        for b, n in enumerate(lens):
            out = base._run(self, X[:n, b : b + 1], W, R, B, None, *rest, **attrs)
            ys.append(np.pad(out[0], [(0, time - n), (0, 0), (0, 0), (0, 0)]))
            yhs.append(out[1])
        return (np.concatenate(ys, 2), np.concatenate(yhs, 1))[: len(self.onnx_node.output)]

    return type(name, (base,), {"op_domain": "", "_run": _run})


class _DequantizeLinear13(OpRun):
    """DequantizeLinear-13 (per-axis); onnx's reference only ships versions 19 and up."""

    op_domain = ""

    def _run(self, x, scale, zero_point=None, axis=None, **_ignored):  # block_size, output_dtype: defaults
        axis = 1 if axis is None else axis
        shape = [1] * x.ndim
        if scale.ndim == 1:
            shape[axis] = -1
        zp = 0 if zero_point is None else zero_point.astype(np.float32).reshape(shape)
        return (((x.astype(np.float32) - zp) * scale.reshape(shape)).astype(np.float32),)


_DequantizeLinear13.__name__ = "DequantizeLinear"


class DynamicQuantizeMatMul(OpRun):
    """onnxruntime's com.microsoft.DynamicQuantizeMatMul, written from ContribOperators.md: A to
    uint8 like DynamicQuantizeLinear (one range for the whole tensor, including 0), exact integer
    product with (B - b_zero_point), times a_scale * b_scale (per column or scalar)."""

    op_domain = "com.microsoft"

    def _run(self, a, b, b_scale, b_zero_point=None, bias=None):
        lo, hi = min(float(a.min()), 0.0), max(float(a.max()), 0.0)
        scale = np.float32((np.float32(hi) - np.float32(lo)) / np.float32(255)) if hi != lo else np.float32(1)
        zp = np.rint(np.clip(np.float32(0) - np.float32(lo) / scale, 0, 255))
        qa = np.clip(np.rint(a.astype(np.float32) / scale) + zp, 0, 255) - zp
        bz = 0 if b_zero_point is None else b_zero_point.astype(np.float64)
        acc = np.matmul(qa.astype(np.float64), b.astype(np.float64) - bz)  # exact: integers < 2^53
        y = acc.astype(np.float32) * (scale * b_scale.astype(np.float32))
        return ((y if bias is None else y + bias).astype(np.float32),)


REF_OPS = [
    _ragged(_RefLSTM, "LSTM"),
    _ragged(_RefGRU, "GRU"),
    _ragged(_RefRNN, "RNN"),
    _DequantizeLinear13,
    DynamicQuantizeMatMul,
]


def make(cell="gru", bidirectional=False, pooling="last", layers=1, hidden=5, embed=4, seed=0):
    torch.manual_seed(seed)
    config = ClassifierConfig(
        vocab_size=VOCAB,
        num_labels=LABELS,
        cell=cell,
        embed=embed,
        hidden=hidden,
        layers=layers,
        bidirectional=bidirectional,
        pooling=pooling,
    )
    module = RecurrentClassifier(config).eval()
    weights = {k: v.detach().numpy() for k, v in module.state_dict().items()}
    return config, module, weights


def batch(lengths, time=None, seed=1):
    rng = np.random.default_rng(seed)
    time = time or max(lengths)
    ids = rng.integers(2, VOCAB, size=(len(lengths), time)).astype(np.int64)
    for row, n in enumerate(lengths):
        ids[row, n:] = 0  # <pad>
    return {ClassifierIO.input_ids: ids, ClassifierIO.sequence_lens: np.asarray(lengths, np.int32)}


def session(model, optimize=True):
    opts = ort.SessionOptions()
    if not optimize:  # onnxruntime fuses DequantizeLinear->MatMul into a dynamic-int8 MatMul
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def torch_logits(module, feed):
    with torch.no_grad():
        return module(
            torch.from_numpy(feed[ClassifierIO.input_ids]), torch.from_numpy(feed[ClassifierIO.sequence_lens]).long()
        ).numpy()


def assert_close(actual, expected, tol=FP32, what=""):
    assert tol.close(actual, expected), f"{what}: max |diff| {tol.worst(actual, expected):.3g} > {tol.name}"


# (batch, time) shapes: batch 1 and 3, lengths 1, 7, 33, ragged padded batches
SHAPES = [[1], [7], [33, 1, 7], [7, 3, 1]]
MATRIX = list(itertools.product(["rnn", "lstm", "gru"], [False, True], ["last", "mean", "max", "attention"], [1, 2]))


@pytest.mark.slow
@pytest.mark.parametrize(
    "cell,bidirectional,pooling,layers", MATRIX, ids=[f"{c}-{'bi' if b else 'uni'}-{p}-L{n}" for c, b, p, n in MATRIX]
)
def test_graph_matches_torch(cell, bidirectional, pooling, layers):
    config, module, weights = make(cell, bidirectional, pooling, layers)
    model = build_classifier_graph(config, weights)
    check_graph(model, config)
    sess = session(model)
    for lengths in SHAPES:
        feed = batch(lengths)
        expected = torch_logits(module, feed)
        got = sess.run(None, feed)[0]
        assert_close(got, expected, what=f"onnxruntime vs torch at lengths {lengths}")
        for row, n in enumerate(lengths):  # each row alone, unpadded, gives the same logits
            alone = batch([n], seed=1)
            alone[ClassifierIO.input_ids] = feed[ClassifierIO.input_ids][row : row + 1, :n]
            assert_close(sess.run(None, alone)[0], got[row : row + 1], what=f"row {row} alone")
    feed = batch(SHAPES[2])
    ref = ReferenceEvaluator(model, new_ops=REF_OPS).run(None, feed)[0]
    assert_close(ref, torch_logits(module, feed), what="ReferenceEvaluator vs torch")


def test_graph_contract():
    config, _, weights = make("lstm", True, "mean", 2)
    model = build_classifier_graph(config, weights, {"rnnkit.task": "classify"})
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [OPSET]
    props = {p.key: p.value for p in model.metadata_props}
    assert set(props) == set(METADATA_KEYS) and props["rnnkit.task"] == "classify"
    assert model.producer_name == "rnnkit"
    ids, lens = model.graph.input
    assert [d.dim_param for d in ids.type.tensor_type.shape.dim] == ["batch", "time"]
    assert [d.dim_param for d in lens.type.tensor_type.shape.dim] == ["batch"]
    names = [n.name for n in model.graph.node]
    assert {"lstm_0", "lstm_1", "pool_mean", "head"} <= set(names)
    with pytest.raises(UnsupportedError, match="not in METADATA_KEYS"):
        build_classifier_graph(config, weights, {"author": "me"})


# ---------------------------------------------------------------- check_graph catches each trap


def _node(model, op_type):
    return next(n for n in model.graph.node if n.op_type == op_type)


def _set_attr(node, name, value):
    kept = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend(kept + [helper.make_attribute(name, value)])


def _broken(kind):
    cell = {"lbr0": "gru", "alias": "lstm", "unrolled": "rnn"}.get(kind, "gru")
    config, _, weights = make(cell, bidirectional=True)
    model = build_classifier_graph(config, weights)
    if kind == "lbr0":
        _set_attr(_node(model, "GRU"), "linear_before_reset", 0)
    elif kind == "fixed_time":
        dim = model.graph.input[0].type.tensor_type.shape.dim[1]
        dim.Clear()
        dim.dim_value = 7
    elif kind == "no_seq_lens":
        _node(model, "GRU").input[4] = ""
    elif kind == "alias":  # one state tensor fed as both initial_h and initial_c
        model.graph.input.append(
            helper.make_tensor_value_info("state", onnx.TensorProto.FLOAT, [2, "batch", config.hidden])
        )
        node = _node(model, "LSTM")
        node.input.extend(["state", "state"])
    elif kind == "unrolled":  # the RNN node replaced by a MatMul/Add/Tanh chain over 3 fixed steps
        rnn = _node(model, "RNN")
        steps = []
        for t in range(3):
            steps += [
                helper.make_node("MatMul", [rnn.input[0], rnn.input[1]], [f"u{t}"], name=f"mm_{t}"),
                helper.make_node("MatMul", [f"u{t}", rnn.input[2]], [f"v{t}"], name=f"mm_r{t}"),
                helper.make_node("Tanh", [f"v{t}"], [f"h{t}"], name=f"tanh_{t}"),
            ]
        steps.append(helper.make_node("Identity", ["h2"], [rnn.output[1]], name="y_h"))
        nodes = [n for n in model.graph.node if n is not rnn]
        i = [n.name for n in nodes].index("pool_last_transpose")
        del model.graph.node[:]
        model.graph.node.extend(nodes[:i] + steps + nodes[i:])
    return model, config


@pytest.mark.parametrize(
    "kind,message",
    [
        ("lbr0", "linear_before_reset=0, expected 1"),
        ("fixed_time", "axis 'time' is 7"),
        ("no_seq_lens", "does not read 'sequence_lens'"),
        ("alias", "are the same tensor"),
        ("unrolled", "0 recurrent nodes"),
    ],
)
def test_check_graph_catches(kind, message):
    model, config = _broken(kind)
    with pytest.raises(UnsupportedError, match=message) as err:
        check_graph(model, config)
    if kind == "unrolled":
        assert "7 MatMul/Gemm nodes, expected 1" in str(err.value)


def test_check_graph_lists_every_problem():
    model, config = _broken("lbr0")
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 7
    _node(model, "GRU").input[4] = ""
    _set_attr(_node(model, "GRU"), "hidden_size", 9)
    with pytest.raises(UnsupportedError) as err:
        check_graph(model, config)
    text = str(err.value)
    for needle in ("linear_before_reset=0", "axis 'time' is 7", "sequence_lens", "hidden_size=9"):
        assert needle in text
    with pytest.raises(UnsupportedError, match="do not match cell='lstm'"):
        check_graph(model, ClassifierConfig(VOCAB, LABELS, cell="lstm", embed=4, hidden=5, bidirectional=True))


# ---------------------------------------------------------------- int8


def _inits(model):
    return {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_int8_structure_and_numbers(cell):
    config, _, weights = make(cell, True, "attention", 2, hidden=16, embed=8)
    fp32 = build_classifier_graph(config, weights)
    q, params = quantize_classifier(fp32, min_matmul_elements=1024)  # 32x32 attention proj
    check_graph(q, config)
    ops = [n.op_type for n in q.graph.node]
    inits = _inits(q)
    if cell == "lstm":
        assert ops.count("DynamicQuantizeLSTM") == 2 and "LSTM" not in ops
        assert inits["lstm_0.W_quantized"].shape == (2, 8, 64) and inits["lstm_0.W_scale"].shape == (2, 64)
    else:
        op = cell.upper()
        producers = {o: n for n in q.graph.node for o in n.output}
        for node in (n for n in q.graph.node if n.op_type == op):
            for idx in (1, 2):
                reshape = producers[node.input[idx]]
                dq = producers[reshape.input[0]]
                assert (reshape.op_type, dq.op_type) == ("Reshape", "DequantizeLinear")
                assert inits[dq.input[0]].dtype == np.int8 and inits[dq.input[2]].dtype == np.int8
                assert inits[dq.input[1]].shape == (inits[dq.input[0]].shape[0],)
    assert inits["embedding.weight_quantized"].dtype == np.int8
    assert "attention.proj.W_t_quantized" in inits
    big = [
        k for k, v in inits.items() if v.dtype == np.float32 and v.size >= 256 and not k.endswith((".B", "bias"))
    ]  # biases stay fp32 by design
    assert not {"embedding.weight", f"{cell}_0.W", f"{cell}_0.R", "attention.proj.W_t"} & set(inits)
    assert big == [], f"fp32 copies of big weights left: {big}"
    assert {d["node"] for d in params["ops"]} >= {"embedding", f"{cell}_0", f"{cell}_1", "attention_proj_matmul"}

    feed = batch([33, 1, 7, 20, 5, 33], seed=3)
    want = session(fp32).run(None, feed)[0]
    got = session(q).run(None, feed)[0]
    assert_close(got, want, INT8, f"int8 {cell} vs fp32")
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.8
    if cell != "lstm":  # weight-only form runs in the reference evaluator too
        ref = ReferenceEvaluator(q, new_ops=REF_OPS).run(None, feed)[0]
        plain = session(q, optimize=False).run(None, feed)[0]
        assert_close(ref, plain, FP32, "ReferenceEvaluator vs unoptimized onnxruntime on int8")


def test_int8_per_tensor_and_size_ratio():
    sizes = {}
    for cell in ("lstm", "gru"):
        torch.manual_seed(0)
        config = ClassifierConfig(vocab_size=20000, num_labels=2, cell=cell, embed=128, hidden=256)
        weights = {k: v.numpy() for k, v in RecurrentClassifier(config).state_dict().items()}
        fp32 = build_classifier_graph(config, weights)
        q, params = quantize_classifier(fp32, per_channel=False)
        check_graph(q, config)
        assert params["per_channel"] is False
        sizes[cell] = len(q.SerializeToString()) / len(fp32.SerializeToString())
    assert max(sizes.values()) <= 0.27, sizes


# ---------------------------------------------------------------- users' own modules


class MyNet(nn.Module):
    """A user-style classifier: time-major GRU, dropout, fc on the last layer's final states."""

    def __init__(self, bias=True):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, 6, padding_idx=0)
        self.gru = nn.GRU(6, 5, num_layers=2, bidirectional=True, bias=bias)
        self.drop = nn.Dropout(0.2)
        self.fc = nn.Linear(10, LABELS)

    def forward(self, ids, lengths):
        x = self.emb(ids).transpose(0, 1)  # (T, B, E)
        _, h = self.gru(pack_padded_sequence(x, lengths, enforce_sorted=False))
        return self.fc(self.drop(torch.cat([h[-2], h[-1]], dim=1)))


@pytest.mark.parametrize("bias", [True, False])
def test_config_from_module_matches_user_forward(bias):
    torch.manual_seed(0)
    net = MyNet(bias).eval()
    config, weights = config_from_module(net)
    assert (config.cell, config.layers, config.bidirectional, config.hidden, config.embed) == ("gru", 2, True, 5, 6)
    assert find_parts(net).batch_first is False
    model = build_classifier_graph(config, weights)
    check_graph(model, config)
    feed = batch([7, 1, 4])
    with torch.no_grad():
        want = net(torch.from_numpy(feed[ClassifierIO.input_ids]), torch.tensor([7, 1, 4])).numpy()
    assert_close(session(model).run(None, feed)[0], want, what="user forward vs graph")


class _Two(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb, self.a, self.b, self.fc = nn.Embedding(9, 4), nn.GRU(4, 4), nn.GRU(4, 4), nn.Linear(4, 2)


@pytest.mark.parametrize(
    "build,message",
    [
        (lambda: nn.Sequential(nn.Embedding(9, 4), nn.LSTM(4, 6, proj_size=3), nn.Linear(3, 2)), "proj_size=3"),
        (lambda: nn.Sequential(nn.Embedding(9, 4), nn.RNN(4, 6, nonlinearity="relu"), nn.Linear(6, 2)), "'relu'"),
        (_Two, "found 2 recurrent modules"),
        (lambda: nn.Sequential(nn.Embedding(9, 4), nn.GRU(4, 6)), "no nn.Linear head"),
        (lambda: nn.Sequential(nn.Embedding(9, 4), nn.GRU(4, 6), nn.LayerNorm(6), nn.Linear(6, 2)), "LayerNorm"),
    ],
)
def test_config_from_module_refuses(build, message):
    with pytest.raises(UnsupportedError, match=message):
        config_from_module(build())
