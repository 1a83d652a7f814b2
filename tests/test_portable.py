"""Portable graphs (``rnnkit.export.portable.make_portable``) give the sequence_lens graphs' answers on
every ONNX consumer, padded rows included.

Every exported graph type (classifier, tagger, LM step with a non-zero carried state, seq2seq encoder
and decoder step) is written from seeded random weights in the torch ``state_dict`` layout (no
training, no torch), made portable, checked with ``onnx.checker`` (full check) and run on ragged
padded batches at a shape no export uses (B=3, lengths [7, 5, 1], T=7) on onnxruntime, numba,
onnx.reference, OpenVINO and tract (``rnnkit.export.consumers.run``), against the original graph on
onnxruntime, every output (states included) within FP32 (scaled by the output's magnitude).  The
matrix covers each cell uni- and bidirectional and 1 and 2 layers per task without the full
product (LM and decoder steps are forward-only).  On numba, ``restore_sequence_lens`` turns portable
forward, reverse and bidirectional layers back into single nodes reading ``sequence_lens``, with the
original's answers, and leaves every changed pattern to run as written.
"""

from __future__ import annotations

import zlib
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest

from rnnkit.export import consumers
from rnnkit.export.architecture import ClassifierConfig, LMConfig, Seq2SeqConfig, TaggerConfig
from rnnkit.export.portable import HOLD, make_portable
from rnnkit.export.task_classify import build_classifier_graph
from rnnkit.export.task_lm import build_lm_graph
from rnnkit.export.task_seq2seq import build_decoder_graph, build_encoder_graph
from rnnkit.export.task_tag import build_tagger_graph
from rnnkit.runtime.errors import BundleError, UnsupportedError
from rnnkit.runtime.graph_contract import REVERSE_SUFFIX, _describe, check_graph
from rnnkit.runtime.graph_file import OPS
from rnnkit.runtime.tolerance import FP32

GATES = {"rnn": 1, "lstm": 4, "gru": 3}
VOCAB, LABELS, CHARS = 30, 3, 12
LENGTHS, TIME = [7, 5, 1], 7  # B=3, ragged, at a shape no export or parity check uses
SOURCE_LENGTHS, SOURCE_TIME = [6, 1, 4], 6
# (cell, bidirectional, layers): each cell uni- and bidirectional, 1 and 2 layers across the list
STACKS = [
    ("rnn", False, 1),
    ("rnn", True, 2),
    ("lstm", False, 2),
    ("lstm", True, 1),
    ("gru", False, 1),
    ("gru", True, 2),
]
FORWARD = [("rnn", 2), ("lstm", 1), ("lstm", 2), ("gru", 1)]
POOLINGS = ["last", "mean", "attention", "last", "max", "last"]  # "last" with 1 layer: Y is not read at all


def _rng(*key) -> np.random.Generator:
    """Seeded by the case itself (crc32: stable across processes, unlike hash())."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def _normal(rng, *shape, scale=0.5) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def stack_weights(rng, prefix: str, cell: str, inputs: int, hidden: int, layers: int, directions: int) -> dict:
    """torch ``nn.RNN/LSTM/GRU`` state_dict keys (``{prefix}.weight_ih_l{k}[_reverse]`` ...)."""
    rows, out = GATES[cell] * hidden, {}
    for layer in range(layers):
        width = inputs if layer == 0 else hidden * directions
        for suffix in ("", "_reverse")[:directions]:
            out[f"{prefix}.weight_ih_l{layer}{suffix}"] = _normal(rng, rows, width)
            out[f"{prefix}.weight_hh_l{layer}{suffix}"] = _normal(rng, rows, hidden)
            out[f"{prefix}.bias_ih_l{layer}{suffix}"] = _normal(rng, rows, scale=0.2)
            out[f"{prefix}.bias_hh_l{layer}{suffix}"] = _normal(rng, rows, scale=0.2)
    return out


def linear(rng, name: str, outputs: int, inputs: int, bias: bool = True) -> dict:
    w = {f"{name}.weight": _normal(rng, outputs, inputs)}
    return {**w, f"{name}.bias": _normal(rng, outputs, scale=0.2)} if bias else w


def ids(rng, lengths, time, vocab=VOCAB) -> np.ndarray:
    out = rng.integers(2, vocab, size=(len(lengths), time)).astype(np.int64)
    for row, n in enumerate(lengths):
        out[row, n:] = 0  # <pad>
    return out


# -- the graphs: (name, original graph, feeds, task, architecture, graph record name) ------------------


def classifier(cell, bi, layers, pooling):
    rng = _rng("classify", cell, bi, layers, pooling)
    config = ClassifierConfig(
        VOCAB, LABELS, cell=cell, embed=4, hidden=5, layers=layers, bidirectional=bi, pooling=pooling
    )
    width = 5 * config.directions
    w = {
        "embedding.weight": _normal(rng, VOCAB, 4),
        **stack_weights(rng, "rnn", cell, 4, 5, layers, config.directions),
        **linear(rng, "head", LABELS, width),
    }
    if pooling == "attention":
        w.update(linear(rng, "attention.proj", width, width))
        w.update(linear(rng, "attention.v", 1, width, bias=False))
    feeds = {"input_ids": ids(rng, LENGTHS, TIME), "sequence_lens": np.asarray(LENGTHS, np.int32)}
    return build_classifier_graph(config, w), feeds, "classify", config, "model"


def tagger(cell, bi, layers, chars=False):
    rng = _rng("tag", cell, bi, layers, chars)
    config = TaggerConfig(
        VOCAB,
        4,
        cell=cell,
        embed=4,
        hidden=5,
        layers=layers,
        bidirectional=bi,
        char_vocab_size=CHARS if chars else 0,
        char_embed=3,
        char_filters=4,
        char_kernel=3,
    )
    w = {
        "embedding.weight": _normal(rng, VOCAB, 4),
        **stack_weights(rng, "rnn", cell, config.input_width, 5, layers, config.directions),
        **linear(rng, "head", 4, 5 * config.directions),
    }
    feeds = {"input_ids": ids(rng, LENGTHS, TIME), "sequence_lens": np.asarray(LENGTHS, np.int32)}
    if chars:
        w.update(
            {
                "char_embedding.weight": _normal(rng, CHARS, 3),
                "char_conv.weight": _normal(rng, 4, 3, 3),
                "char_conv.bias": _normal(rng, 4, scale=0.2),
            }
        )
        char_ids = rng.integers(1, CHARS, size=(len(LENGTHS), TIME, 4)).astype(np.int64)
        char_ids[:, :, 3] = 0
        char_ids[feeds["input_ids"] == 0] = 0
        feeds["char_ids"] = char_ids
    return build_tagger_graph(config, w), feeds, "tag", config, "model"


def states(rng, cell, layers, batch, hidden) -> dict:
    """Non-zero carried state, as a caller streaming an LM (or the encoder, for a decoder) passes it."""
    names = ["initial_h", "initial_c"] if cell == "lstm" else ["initial_h"]
    return {n: _normal(rng, layers, batch, hidden, scale=1.0) for n in names}


def language_model(cell, layers):
    rng = _rng("lm", cell, layers)
    config = LMConfig(VOCAB, cell=cell, embed=4, hidden=6, layers=layers)
    w = {
        "embedding.weight": _normal(rng, VOCAB, 4),
        **stack_weights(rng, "rnn", cell, 4, 6, layers, 1),
        **linear(rng, "head", VOCAB, 6),
    }
    feeds = {
        "input_ids": ids(rng, LENGTHS, TIME),
        "sequence_lens": np.asarray(LENGTHS, np.int32),
        **states(rng, cell, layers, len(LENGTHS), 6),
    }
    return build_lm_graph(config, w), feeds, "lm", config, "model"


def seq2seq_weights(config: Seq2SeqConfig, rng) -> dict:
    h = config.hidden
    w = {
        "source_embedding.weight": _normal(rng, VOCAB, 4),
        "target_embedding.weight": _normal(rng, VOCAB, 4),
        **stack_weights(rng, "encoder", config.cell, 4, config.encoder_hidden, config.layers, config.directions),
        **stack_weights(rng, "decoder", config.cell, 4, h, config.layers, 1),
        **linear(rng, "head", VOCAB, h),
    }
    if config.attention != "none":
        w.update({**linear(rng, "attention.key", h, h, bias=False), **linear(rng, "attention.combine", h, 2 * h)})
    if config.attention == "additive":
        w.update({**linear(rng, "attention.query", h, h), **linear(rng, "attention.v", 1, h, bias=False)})
    return w


def seq2seq_config(cell, bi, layers, attention):
    return Seq2SeqConfig(
        VOCAB, VOCAB, cell=cell, embed=4, hidden=6, layers=layers, bidirectional=bi, attention=attention
    )


def encoder(cell, bi, layers, attention):
    rng = _rng("encoder", cell, bi, layers, attention)
    config = seq2seq_config(cell, bi, layers, attention)
    feeds = {"source_ids": ids(rng, SOURCE_LENGTHS, SOURCE_TIME), "source_lens": np.asarray(SOURCE_LENGTHS, np.int32)}
    return build_encoder_graph(config, seq2seq_weights(config, rng)), feeds, "seq2seq", config, "encoder"


def decoder(cell, layers, attention):
    rng = _rng("decoder", cell, layers, attention)
    config = seq2seq_config(cell, False, layers, attention)
    graph = build_decoder_graph(config, seq2seq_weights(config, rng))
    feeds = {"input_ids": ids(rng, [TIME] * 3, TIME), **states(rng, cell, layers, 3, 6)}
    if attention != "none":
        mask = (np.arange(SOURCE_TIME)[None, :] < np.asarray(SOURCE_LENGTHS)[:, None])[..., None]
        feeds["memory"] = _normal(rng, 3, SOURCE_TIME, 6, scale=1.0) * mask
        feeds["keys"] = _normal(rng, 3, SOURCE_TIME, 6, scale=1.0) * mask
        feeds["source_lens"] = np.asarray(SOURCE_LENGTHS, np.int32)
    return graph, feeds, "seq2seq", config, "decoder"


ATTENTIONS = ["dot", "none", "additive"]
CASES = {
    **{
        f"classify-{c}-{'bi' if b else 'uni'}-{n}-{p}": (classifier, (c, b, n, p))
        for (c, b, n), p in zip(STACKS, POOLINGS)
    },
    **{f"tag-{c}-{'bi' if b else 'uni'}-{n}": (tagger, (c, b, n)) for c, b, n in STACKS},
    "tag-lstm-bi-1-chars": (tagger, ("lstm", True, 1, True)),
    **{f"lm-{c}-{n}": (language_model, (c, n)) for c, n in FORWARD},
    **{
        f"encoder-{c}-{'bi' if b else 'uni'}-{n}-{a}": (encoder, (c, b, n, a))
        for (c, b, n), a in zip(STACKS, ATTENTIONS * 2)
    },
    **{f"decoder-{c}-{n}": (decoder, (c, n, a)) for (c, n), a in zip(FORWARD, ATTENTIONS + ["dot"])},
}


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request):
    """One graph type, built once per module: the original, its portable form, feeds, expectations."""
    build, args = CASES[request.param]
    original, feeds, task, config, record = build(*args)
    portable = make_portable(original)
    expected = consumers.run("onnxruntime", original, feeds)
    return SimpleNamespace(
        name=request.param,
        original=original,
        portable=portable,
        feeds=feeds,
        task=task,
        config=config,
        record=record,
        expected=expected,
    )


def _compare(case, got: dict, consumer: str) -> list[str]:
    problems = []
    for name, want in case.expected.items():
        tol = FP32.scaled(want)
        if got[name].shape != want.shape or not tol.close(got[name], want):
            problems.append(
                f"{case.name} on {consumer}: {name} off by {tol.worst(got[name], want):.3g} "
                f"(shape {got[name].shape} vs {want.shape}, {tol.name} atol {tol.atol:.3g})"
            )
    return problems


def test_portable_graph_is_valid_onnx_with_the_same_interface(case):
    onnx.checker.check_model(case.portable, full_check=True)
    for side in ("input", "output"):
        assert [_describe(v) for v in getattr(case.portable.graph, side)] == [
            _describe(v) for v in getattr(case.original.graph, side)
        ], side
    rewritten = [n for n in case.portable.graph.node if n.op_type in ("RNN", "LSTM", "GRU")]
    assert all(len(n.input) < 5 or not n.input[4] for n in rewritten)  # every recurrent node: all T steps
    assert all(
        n.attribute
        and onnx.helper.get_attribute_value(next(a for a in n.attribute if a.name == "direction")) == b"forward"
        for n in rewritten
    )
    ops = {n.op_type for n in case.portable.graph.node}
    assert ops <= OPS[""], ops - OPS[""]
    assert "GatherElements" not in ops  # onnx.reference's is np.choose: at most 64 steps


# onnx.reference's sigmoid overflows exp() on the hold column's -HOLD (giving the exact 0 it means)
@pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")
@pytest.mark.parametrize("consumer", consumers.CONSUMERS)
def test_portable_graph_matches_the_original_on_every_consumer(case, consumer):
    if consumer in ("openvino", "tract"):  # installed by the test extra; everything else must run
        pytest.importorskip(consumer)
    got = consumers.run(consumer, case.portable, case.feeds)
    problems = _compare(case, got, consumer)
    assert not problems, problems


def test_portable_graph_passes_the_bundle_contract(case, tmp_path):
    """``graph_contract.check_graph`` (what opening a bundle runs) accepts the portable graph as it
    accepts the original: recurrent layers paired, hold columns, new ops, shapes at two sizes."""
    for model in (case.original, case.portable):
        record = {
            "inputs": [dict(zip(("name", "dtype", "shape"), _describe(v))) for v in model.graph.input],
            "outputs": [dict(zip(("name", "dtype", "shape"), _describe(v))) for v in model.graph.output],
        }
        graph = record if case.record == "model" else {case.record: record}
        bundle = SimpleNamespace(
            path=tmp_path,
            manifest={"graph": graph, "architecture": case.config.to_dict()},
            charset=object() if getattr(case.config, "use_chars", False) else None,
            task=case.task,
        )
        check_graph(bundle, model, case.record, tmp_path / "model.onnx", int8=False)


# -- what the rewrite fixes, and what it refuses ----------------------------------------------------


def test_reference_is_wrong_on_padded_rows_before_and_right_after():
    """onnx.reference ignores sequence_lens: a bidirectional classifier's padded rows come out wrong
    from the original graph (the test fails if make_portable were a no-op), right from the portable one."""
    original, feeds, *_ = classifier("lstm", True, 1, "last")
    want = consumers.run("onnxruntime", original, feeds)["logits"]
    before = consumers.run("reference", original, feeds)["logits"]
    after = consumers.run("reference", make_portable(original), feeds)["logits"]
    padded = np.asarray(LENGTHS) < TIME
    assert not FP32.close(before[padded], want[padded]), "the reference honoured sequence_lens: nothing to fix"
    assert FP32.close(before[~padded], want[~padded])
    assert FP32.close(after, want), FP32.worst(after, want)


# long ragged rows: the reversal and the state gathers index 100 steps (onnx.reference's GatherElements,
# np.choose, refuses more than 64); the LM carries a non-zero state into rows that end at 100, 37 and 1
LONG_LENGTHS, LONG_TIME = [100, 37, 1], 100


@pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")
@pytest.mark.parametrize("consumer", consumers.CONSUMERS)
@pytest.mark.parametrize(
    "build,args",
    [(tagger, ("lstm", True, 1)), (classifier, ("gru", True, 2, "last")), (language_model, ("lstm", 2))],
    ids=["tagger", "classifier", "lm"],
)
def test_portable_graphs_run_past_64_steps(build, args, consumer):
    """T=100, lengths [100, 37, 1]: every consumer (onnx.reference above all, whose GatherElements
    refuses more than 64 steps) runs the portable graph and matches the sequence_lens graph on
    onnxruntime, reversals (tagger, classifier) and carried LM states included.  (tract's final_c
    drifts by ~7e-7 per padded step, docs/portable-graphs.md: at 99 padded steps this LM's is 9.4e-5
    off, inside FP32 scaled to its |c| of 2.)"""
    if consumer in ("openvino", "tract"):
        pytest.importorskip(consumer)
    original, feeds, *_ = build(*args)
    rng = _rng("long", build.__name__, args)
    feeds = {
        **feeds,
        "input_ids": ids(rng, LONG_LENGTHS, LONG_TIME),
        "sequence_lens": np.asarray(LONG_LENGTHS, np.int32),
    }
    want = consumers.run("onnxruntime", original, feeds)
    got = consumers.run(consumer, make_portable(original), feeds)
    for name, value in want.items():
        assert got[name].shape == value.shape, name
        assert FP32.scaled(value).close(got[name], value), (name, FP32.scaled(value).worst(got[name], value))


def test_hold_column_keeps_each_rows_own_cell_state():
    """An LSTM whose Y_c is read gets the hold column: a separate initializer joined to W in-graph
    (+HOLD on f, -HOLD on i), the pad column joined to X; LSTMs whose Y_c nobody reads get none."""
    lm = make_portable(language_model("lstm", 1)[0])
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in lm.graph.initializer}
    holds = [n for n in inits if n.endswith(".hold")]
    assert holds == ["lstm_0.hold"]
    column = inits["lstm_0.hold"][0, :, 0]
    assert (column[:6] == -HOLD).all() and (column[12:18] == HOLD).all() and not column[6:12].any()
    assert not column[18:].any()
    assert any(n.op_type == "Concat" and "lstm_0.hold" in n.input for n in lm.graph.node)
    classify = make_portable(classifier("lstm", True, 1, "last")[0])
    assert not [t for t in classify.graph.initializer if t.name.endswith(".hold")]


def test_bidirectional_layer_becomes_two_forward_runs_with_their_own_weights():
    portable = make_portable(encoder("gru", True, 2, "dot")[0])
    runs = {n.name: n for n in portable.graph.node if n.op_type == "GRU"}
    assert sorted(runs) == sorted(f"encoder_{k}{half}" for k in (0, 1) for half in ("", REVERSE_SUFFIX))
    inits = {t.name: list(t.dims) for t in portable.graph.initializer}
    assert inits[runs["encoder_0" + REVERSE_SUFFIX].input[1]] == [1, 9, 4]
    assert "encoder_0.W" not in inits  # the (2, ...) originals are gone, sliced per direction


def test_graphs_without_sequence_lens_are_left_alone():
    graph = decoder("lstm", 2, "dot")[0]
    assert make_portable(graph).SerializeToString() == graph.SerializeToString()


def test_layout_1_is_refused_with_the_node_named():
    graph = classifier("gru", False, 1, "last")[0]
    node = next(n for n in graph.graph.node if n.op_type == "GRU")
    next(a for a in node.attribute if a.name == "layout").i = 1
    with pytest.raises(UnsupportedError, match="gru_0.*layout=1"):
        make_portable(graph)


def test_contract_still_refuses_a_lone_reverse_half(tmp_path):
    """Pairing by name is not a loophole: a portable bidirectional graph missing its forward half's
    partner is one layer short or has a one-way layer, and opening it fails."""
    original, feeds, task, config, record = classifier("gru", True, 1, "last")
    portable = make_portable(original)
    reverse = next(n for n in portable.graph.node if n.name == "gru_0" + REVERSE_SUFFIX)
    reverse.name = "gru_0_other"
    io = {
        side: [dict(zip(("name", "dtype", "shape"), _describe(v))) for v in getattr(portable.graph, side[:-1])]
        for side in ("inputs", "outputs")
    }
    bundle = SimpleNamespace(
        path=tmp_path, manifest={"graph": io, "architecture": config.to_dict()}, charset=None, task=task
    )
    with pytest.raises(BundleError, match="recurrent"):
        check_graph(bundle, portable, record, Path(tmp_path / "model.onnx"), int8=False)


# -- numba: portable runs restored to sequence_lens nodes (runtime/numba_backend/unportable.py) -------


def _numba_sessions(graph):
    from rnnkit.runtime.numba_backend.graph import NumbaSession

    return NumbaSession(graph), NumbaSession(graph, passes=())


def _numba_matches(graph, feeds, want: dict, sessions=None) -> list:
    """Every output of ``graph`` on numba, with the passes and without (``passes=()``), against ``want``."""
    problems = []
    for session in sessions or _numba_sessions(graph):
        for name, got in zip(want, session.run(list(want), feeds)):
            if not FP32.scaled(want[name]).close(got, want[name]):
                problems.append((name, session.program.fired, FP32.worst(got, want[name])))
    return problems


@pytest.mark.parametrize(
    "build,args,restored,fused",
    [
        (language_model, ("lstm", 2), 2, 1),
        (language_model, ("gru", 1), 1, 1),
        (tagger, ("rnn", False, 1), 1, 1),
        (tagger, ("gru", False, 2, True), 2, 0),
        (classifier, ("lstm", False, 2, "mean"), 2, 1),
    ],
)
def test_numba_restores_portable_forward_runs(build, args, restored, fused):
    """The forward runs of a portable graph go back to one node reading sequence_lens, the step
    fusion fires on the portable LM step again, and the answers equal the graph run node by node
    (passes=()) and the original on onnxruntime."""
    original, feeds, *_ = build(*args)
    fast, plain = _numba_sessions(make_portable(original))
    assert fast.program.fired["restore_sequence_lens"] == restored
    assert fast.program.fired["fuse_recurrent_step"] == fused
    problems = _numba_matches(None, feeds, consumers.run("onnxruntime", original, feeds), (fast, plain))
    assert not problems, problems


def _step_kinds(session) -> Counter:
    """The program's steps by op, a recurrent step's direction included."""
    return Counter((st.key[1], getattr(st.op, "direction", None)) for st in session.program.steps)


# bidirectional: each cell, 1 and 2 layers, every task with bidirectional layers (the encoder's LSTM
# reads Y_c: the hold column on both halves; the tagger with chars reads a Concat of two embeddings)
BIDIRECTIONAL = [
    (classifier, ("lstm", True, 1, "last")),
    (classifier, ("gru", True, 2, "attention")),
    (classifier, ("rnn", True, 2, "mean")),
    (tagger, ("gru", True, 1)),
    (tagger, ("rnn", True, 2)),
    (tagger, ("lstm", True, 1, True)),
    (encoder, ("lstm", True, 2, "dot")),
    (encoder, ("gru", True, 2, "none")),
    (encoder, ("rnn", True, 1, "additive")),
]


@pytest.mark.parametrize(
    "build,args", BIDIRECTIONAL, ids=lambda v: getattr(v, "__name__", None) or "-".join(map(str, v))
)
def test_numba_restores_portable_bidirectional_layers(build, args):
    """Each bidirectional layer's two portable halves (the forward run, the run on reversed input
    and everything gathered, reversed, concatenated and masked around them) become one bidirectional
    node reading sequence_lens: the program is the sequence_lens graph's, op for op, and the answers
    equal the original on onnxruntime, ragged rows and states included."""
    from rnnkit.runtime.numba_backend.graph import NumbaSession

    original, feeds, *_ = build(*args)
    portable = make_portable(original)
    fast, plain = _numba_sessions(portable)
    layers = args[2]
    assert fast.program.fired["restore_sequence_lens"] == layers
    assert _step_kinds(fast) == _step_kinds(NumbaSession(original))
    # the time gathers (Gather of a computed tensor at computed indices) are gone with their layers
    assert not [st for st in fast.program.steps if st.key[1] == "Gather" and len(st.dynamic) == 2]
    problems = _numba_matches(None, feeds, consumers.run("onnxruntime", original, feeds), (fast, plain))
    assert not problems, problems


def _reverse_direction(graph: onnx.ModelProto) -> onnx.ModelProto:
    for node in graph.graph.node:
        if node.op_type in ("RNN", "GRU", "LSTM"):
            next(a for a in node.attribute if a.name == "direction").s = b"reverse"
    return graph


@pytest.mark.parametrize("build,args", [(classifier, ("gru", False, 1, "mean")), (language_model, ("lstm", 2))])
def test_numba_restores_a_portable_reverse_node(build, args):
    """A direction="reverse" node's portable form (a forward run on reversed input, its Y reversed
    back; the LM: carried states and the hold column) goes back to one reverse node."""
    from rnnkit.runtime.numba_backend.graph import NumbaSession

    original, feeds, *_ = build(*args)
    original = _reverse_direction(original)
    portable = make_portable(original)
    restored = NumbaSession(portable, passes={"restore_sequence_lens"})
    layers = args[-1] if build is language_model else args[2]
    assert restored.program.fired["restore_sequence_lens"] == layers
    assert _step_kinds(restored) == _step_kinds(NumbaSession(original, passes=()))
    fast, plain = _numba_sessions(portable)
    problems = _numba_matches(None, feeds, consumers.run("onnxruntime", original, feeds), (restored, fast, plain))
    assert not problems, problems


def _node(graph: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in graph.graph.node if n.name == name)


def _swap_order(graph, layer):
    """order = Where(valid, t, len-1-t): the valid steps are not reversed, padding maps to negative indices."""
    where = _node(graph, "portable.order")
    where.input[1], where.input[2] = where.input[2], where.input[1]


def _to_identity(node: onnx.NodeProto) -> None:
    node.op_type = "Identity"
    del node.input[1:]
    del node.attribute[:]


def _keep_reverse_output_reversed(graph, layer):
    """The reverse run's Y joined as it comes out, in its own (reversed) time order."""
    y_dir = _node(graph, f"{layer}{REVERSE_SUFFIX}.Y_dir")
    _to_identity(y_dir)
    y_dir.input[0] = _node(graph, f"{layer}{REVERSE_SUFFIX}").output[0]


def _read_input_in_order(graph, layer):
    """The reverse run reads X as it is (the Gather of the flattened X replaced by X itself)."""
    reversal = _node(graph, f"{layer}.x_reversed")
    _to_identity(reversal)
    reversal.input[0] = _node(graph, f"{layer}.x_flat").input[0]


def _last_index_without_batch_offsets(graph, layer):
    """Y_h gathered at rows (len_b - 1)*B, all in column b = 0: every row gets row 0's state at its own step."""
    _to_identity(_node(graph, "portable.last_index"))


def _open_input_gate(graph, layer):
    """One unit's input gate no longer shut past the row's end: its c moves on the padding."""
    hold = next(t for t in graph.graph.initializer if t.name == f"{layer}.hold")
    column = onnx.numpy_helper.to_array(hold).copy()
    column[0, 0, 0] = 0.0
    hold.CopyFrom(onnx.numpy_helper.from_array(column, hold.name))


def _reverse_first(graph, layer):
    concat = _node(graph, f"{layer}.Y_concat")
    concat.input[0], concat.input[1] = concat.input[1], concat.input[0]


@pytest.mark.parametrize(
    "tamper,build,args,layer,restored",
    [
        (_swap_order, tagger, ("gru", True, 2), "gru_0", 0),
        (_swap_order, classifier, ("lstm", True, 1, "last"), "lstm_0", 1),  # the forward half alone: Y_h only
        (_keep_reverse_output_reversed, encoder, ("rnn", True, 1, "additive"), "encoder_0", 0),
        (_read_input_in_order, tagger, ("lstm", True, 1), "lstm_0", 0),
        # the second layer is intact, but its time axis is only provable through a restored first layer
        (_open_input_gate, encoder, ("lstm", True, 2, "dot"), "encoder_0", 0),
        (_reverse_first, classifier, ("gru", True, 2, "attention"), "gru_0", 0),
        (_last_index_without_batch_offsets, language_model, ("lstm", 2), "lstm_0", 0),
        (_last_index_without_batch_offsets, classifier, ("gru", True, 1, "last"), "gru_0", 0),
    ],
    ids=[
        "order-swapped",
        "order-swapped-Y_h-only",
        "Y-not-reversed-back",
        "X-not-reversed",
        "hold-changed",
        "halves-swapped",
        "last-index-no-batch-offset",
        "last-index-no-batch-offset-bi",
    ],
)
def test_numba_runs_a_changed_pattern_as_written(tamper, build, args, layer, restored):
    """A portable layer changed anywhere (reversal indices, a side not reversed, the hold column, the
    order of a bidirectional layer's halves, the state gathers' flat indices) is not restored into one
    node (a bidirectional pair is not joined): the graph gives its own answers
    (those of passes=()), which differ from the original's, so a wrong restore would show."""
    original, feeds, *_ = build(*args)
    graph = make_portable(original)
    tamper(graph, layer)
    onnx.checker.check_model(graph)
    fast, plain = _numba_sessions(graph)
    assert fast.program.fired["restore_sequence_lens"] == restored
    own = dict(zip([o.name for o in graph.graph.output], plain.run([o.name for o in graph.graph.output], feeds)))
    want = consumers.run("onnxruntime", original, feeds)
    assert not all(FP32.scaled(want[k]).close(own[k], want[k]) for k in want), "the change changed no answer"
    problems = _numba_matches(None, feeds, own, (fast,))
    assert not problems, problems


def test_numba_leaves_a_changed_hold_column_alone():
    """A hold column that is not exactly -h on i, +h on f, 0 elsewhere is not the portable pattern:
    nothing is restored and the graph runs as written (same answers as passes=())."""
    graph = make_portable(language_model("lstm", 1)[0])
    hold = next(t for t in graph.graph.initializer if t.name == "lstm_0.hold")
    column = onnx.numpy_helper.to_array(hold).copy()
    column[0, 6, 0] = 1.0  # a weight on the output gate
    hold.CopyFrom(onnx.numpy_helper.from_array(column, hold.name))
    feeds = language_model("lstm", 1)[1]
    fast, plain = _numba_sessions(graph)
    assert fast.program.fired["restore_sequence_lens"] == 0
    names = [o.name for o in graph.graph.output]
    for a, b in zip(fast.run(names, feeds), plain.run(names, feeds)):
        assert FP32.scaled(b).close(a, b)
