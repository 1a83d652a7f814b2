"""The numba backend's recurrent step fusion (``passes.fuse_recurrent_step``) on rnnkit's LM step.

The fused step must compute what the unfused plan computes, to fp32 rounding (the same kernels,
compiled again inside one function: with numba's fastmath contraction LLVM may fuse a multiply-add
differently there, 1-ulp differences were seen): every cell, one and two layers, batch 1 and ragged
batches (lengths 0 and longer than T included), one token and chunks, carried random states.  It
must step aside where it does not apply (int8 graphs, a graph whose stack differs, several threads
on a batch, ids outside the table), leaving the plan's results and errors.  The G2P decoder and
tagger-shaped graphs: ``test_numba_passes.py``.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from rnnkit.runtime import load
from rnnkit.runtime.errors import InputError
from rnnkit.runtime.numba_backend import passes
from rnnkit.runtime.numba_backend.graph import NumbaSession
from rnnkit.runtime.tolerance import FP32

CASES = [(cell, layers) for cell in ("lstm", "gru", "rnn") for layers in (1, 2)]


def _feeds(session, vocab, B, T, rng, lens=None):
    state = {
        i.name: rng.standard_normal((i.shape[0], B, i.shape[2])).astype(np.float32)
        for i in session.get_inputs()
        if i.name.startswith("initial_")
    }
    if lens is None:
        lens = rng.integers(0, T + 2, B)
        lens[0] = T
    return {"input_ids": rng.integers(0, vocab, (B, T)), "sequence_lens": np.asarray(lens, np.int32), **state}


def _plan(bundle, feeds):
    """The bundle's graph without the recurrent fusion (every other pass as usual)."""
    twin = NumbaSession(bundle / "model.onnx", threads=1, passes=passes.NAMES - {"fuse_recurrent_step"})
    return twin.run(None, feeds)


def _fused(session):
    """The session's fused step op, with a counter of the calls its fast path declined."""
    op = next(st.op for st in session.program.steps if st.key == ("rnnkit", "FusedRecurrentStep"))
    if not hasattr(op, "declined"):
        fallback, op.declined = op.fallback, []
        op.fallback = lambda *a: op.declined.append(1) or fallback(*a)
    return op


@pytest.mark.parametrize("cell,layers", CASES)
def test_fused_step_computes_what_the_plan_computes(lm_bundles, cell, layers):
    bundle = lm_bundles(cell, layers)
    model = load(bundle, backend="numba", threads=1)
    session = model.session
    assert session.program.fired["fuse_recurrent_step"] == 1, "rnnkit's fp32 LM step graph was not recognised"
    op = _fused(session)
    rng = np.random.default_rng(layers)
    for B, T, lens in ((1, 1, None), (1, 7, None), (4, 5, [5, 0, 7, 2]), (3, 1, [1, 1, 0])):
        feeds = _feeds(session, model.vocab_size, B, T, rng, lens)
        got, want = session.run(None, feeds), _plan(bundle, feeds)
        assert not op.declined
        for name, g, w in zip(session.output_names, got, want):
            assert g.shape == w.shape and g.dtype == w.dtype, name
            assert FP32.close(g, w), f"{cell} x{layers} B={B} T={T} {name}: worst {FP32.worst(g, w):.3g}"


def test_streams_and_generation_go_through_the_fused_step(lm_bundles):
    """A stream run token by token equals the whole text, with the fused step doing every call."""
    model = load(lm_bundles("lstm", 2), backend="numba", threads=1)
    calls = []
    op = _fused(model.session)
    entry = op.entry
    op.entry = lambda *a: calls.append(1) or entry(*a)
    state = model.spawn_state()
    text = "the cat sat"
    stepped = np.stack([state.run(ch)[0] for ch in text])
    whole = model.spawn_state().run(text)
    np.testing.assert_allclose(stepped, whole, rtol=1e-5, atol=1e-5)
    assert len(calls) == len(text) + 1 and not op.declined


def test_int8_graph_runs_on_the_plan(lm_bundles):
    model = load(lm_bundles("lstm", 2), backend="numba", int8=True, threads=1)
    assert model.session.program.fired["fuse_recurrent_step"] == 0  # DynamicQuantizeLSTM: the plan's ops


def test_out_of_range_ids_get_the_plans_error(lm_bundles):
    model = load(lm_bundles("gru", 1), backend="numba", threads=1)
    session = model.session
    feeds = _feeds(session, model.vocab_size, 1, 3, np.random.default_rng(0))
    feeds["input_ids"][0, 1] = model.vocab_size + 5
    op = _fused(session)
    with pytest.raises(InputError, match="Gather"):  # the fallback runs the steps; its Gather names the node
        session.run(None, feeds)
    assert op.declined
    feeds["input_ids"][0, 1] = -1  # negative ids count from the end in ONNX Gather and np.take: both paths agree
    assert FP32.close(session.run(None, feeds)[0], _plan(lm_bundles("gru", 1), feeds)[0])


def test_several_threads_on_a_batch_leave_it_to_the_plan(lm_bundles):
    model = load(lm_bundles("lstm", 1), backend="numba", threads=2)
    session = model.session
    op = _fused(session)
    feeds = _feeds(session, model.vocab_size, 3, 4, np.random.default_rng(1))
    session.run(None, feeds)
    assert len(op.declined) == 1
    one = _feeds(session, model.vocab_size, 1, 4, np.random.default_rng(1))
    session.run(None, one)
    assert len(op.declined) == 1  # batch 1 runs on one thread anyway


@pytest.mark.parametrize("change", ["where_fill", "mask_axis", "extra_output", "reverse_layer"])
def test_what_is_fused_and_what_is_not(lm_bundles, change):
    """The mask and its Where are plan steps around the fused stack, so a changed fill or mask axis
    is still fused (and computed as written); an intermediate that leaves the graph, or layers
    that differ in direction, are not."""
    path = lm_bundles("lstm", 2) / "model.onnx"
    m = onnx.load(path)
    g = m.graph
    if change == "where_fill":  # Where(mask, logits, 1)
        for t in g.initializer:
            if t.name == "zero_f32":
                t.CopyFrom(numpy_helper.from_array(np.array(1.0, np.float32), "zero_f32"))
    elif change == "mask_axis":  # a mask over the wrong axis
        for t in g.initializer:
            if t.name == "axis_time":
                t.CopyFrom(numpy_helper.from_array(np.array(0, np.int64), "axis_time"))
    elif change == "extra_output":  # an intermediate also leaves the graph
        g.output.append(onnx.helper.make_tensor_value_info("time_major", onnx.TensorProto.FLOAT, None))
    else:
        node = next(n for n in g.node if n.op_type == "LSTM")
        node.attribute.append(onnx.helper.make_attribute("direction", "reverse"))
    session = NumbaSession(m, threads=1)
    fused = change in ("where_fill", "mask_axis")
    assert session.program.fired["fuse_recurrent_step"] == int(fused)
    feeds = _feeds(session, 20, 3, 3, np.random.default_rng(2), lens=[3, 1, 2])  # B = T: the wrong axis broadcasts
    got = session.run(None, feeds)
    want = NumbaSession(m, threads=1, passes=()).run(None, feeds)
    for a, e in zip(got, want):
        assert FP32.close(a, e), FP32.worst(a, e)
    if change == "where_fill":
        assert (got[0][1, 1:] == 1.0).all()
