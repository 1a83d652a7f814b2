"""Encoder-decoder export: both graphs match torch on both backends for every cell x attention x direction,
the checkers catch broken graphs, bundles carry the contract and are verified, failures write nothing."""

from __future__ import annotations

import json
import shutil
import types
from pathlib import Path

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

from conftest import G2P, edit_manifest, make_seq2seq, rehash  # noqa: E402

from rnnkit.export.exporter import DevSet, export_seq2seq, session_forward  # noqa: E402
from rnnkit.export.quantize import quantize_graph  # noqa: E402
from rnnkit.export.task_seq2seq import (  # noqa: E402  # noqa: E402
    build_decoder_graph,
    build_encoder_graph,
    check_decoder_graph,
    check_encoder_graph,
    check_seq2seq_parity,
    torch_decoder_forward,
    torch_encoder_forward,
)
from rnnkit.runtime import BundleError, InputError, ParityError, UnsupportedError, open_bundle  # noqa: E402
from rnnkit.runtime.backends import open_session  # noqa: E402
from rnnkit.runtime.manifest import MANIFEST_FILE  # noqa: E402
from rnnkit.runtime.manifest import Seq2SeqIO as IO
from rnnkit.runtime.tolerance import FP32, INT8_SEQUENCE  # noqa: E402
from rnnkit.toolkit.configs import ATTENTIONS  # noqa: E402
from rnnkit.toolkit.export_checkpoint import export_checkpoint  # noqa: E402
from rnnkit.toolkit.models import CELLS  # noqa: E402

MATRIX = [(cell, attention, bi) for cell in sorted(CELLS) for attention in ATTENTIONS for bi in (False, True)]
QUIET = dict(log=lambda m: None)
BACKENDS = ("onnxruntime", "numba")


def test_matrix_is_complete():
    """Every registered cell and attention is in the parity matrix (a new one must be added here)."""
    assert {m[0] for m in MATRIX} == set(CELLS) and {m[1] for m in MATRIX} == set(ATTENTIONS)
    assert len(MATRIX) == len(CELLS) * len(ATTENTIONS) * 2


def graphs_and_sessions(model, int8: bool = False):
    c = model.config
    weights = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    graphs = {"encoder": build_encoder_graph(c, weights), "decoder": build_decoder_graph(c, weights)}
    if int8:
        graphs = {name: quantize_graph(g)[0] for name, g in graphs.items()}
    sessions = {
        name: {
            b: session_forward(open_session(g, Path("unused.onnx"), b) if b == "numba" else _ort(g)) for b in BACKENDS
        }
        for name, g in graphs.items()
    }
    return graphs, sessions


def _ort(graph):
    import onnxruntime as ort

    return ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.slow
@pytest.mark.parametrize("cell,attention,bidirectional", MATRIX)
def test_graphs_match_torch_on_both_backends(cell, attention, bidirectional):
    """Ragged batches (a step and a teacher-forced chunk), rows equal alone, padding exactly 0, FP32."""
    model, _, _ = make_seq2seq(cell, attention, bidirectional, layers=2 if bidirectional else 1, train_steps=0)
    graphs, sessions = graphs_and_sessions(model)
    check_encoder_graph(graphs["encoder"], model.config)
    check_decoder_graph(graphs["decoder"], model.config)
    oracles = {"encoder": torch_encoder_forward(model), "decoder": torch_decoder_forward(model)}
    for name in ("encoder", "decoder"):
        report = check_seq2seq_parity(
            name, model.config, "torch", oracles[name], sessions[name], FP32, False, batch_sizes=(1, 3), lengths=(1, 9)
        )
        assert not report.failures, report.failures[:5]
        assert report.cases == 8 and max(report.worst.values()) < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("cell", sorted(CELLS))
def test_int8_graphs_run_on_numba_like_onnxruntime(cell):
    model, _, _ = make_seq2seq(cell, "additive", True, train_steps=0)
    graphs, sessions = graphs_and_sessions(model, int8=True)
    ops = {n.op_type for g in graphs.values() for n in g.graph.node}
    assert ("DynamicQuantizeLSTM" if cell == "lstm" else "DequantizeLinear") in ops
    for name in ("encoder", "decoder"):
        check = check_encoder_graph if name == "encoder" else check_decoder_graph
        check(graphs[name], model.config)
        s = sessions[name]
        report = check_seq2seq_parity(
            name,
            model.config,
            "onnxruntime-int8",
            s["onnxruntime"],
            {"numba": s["numba"]},
            INT8_SEQUENCE,
            True,
            batch_sizes=(3,),
            lengths=(7,),
        )
        assert not report.failures, report.failures[:5]


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_numba_runs_both_graphs_like_onnx_reference(cell):
    """A second oracle for every op the graphs use (batched 3-D/4-D MatMul, Softmax, LogSoftmax, Where, ...):
    onnx.reference on full-length rows (it ignores RNN sequence_lens; ragged rows are checked against torch)."""
    from onnx.reference import ReferenceEvaluator

    model, _, _ = make_seq2seq(cell, "additive", True, train_steps=0)
    graphs, sessions = graphs_and_sessions(model)
    feed = {IO.source_ids: np.array([[3, 4, 5, 6], [6, 7, 8, 2]]), IO.source_lens: np.array([4, 4], np.int32)}
    encoded = sessions["encoder"]["numba"](feed)
    expected = ReferenceEvaluator(graphs["encoder"]).run(None, feed)
    assert all(np.allclose(a, e, atol=1e-6) for a, e in zip(encoded, expected))
    names = IO.encoder_outputs(cell, "additive")
    step = {
        IO.input_ids: np.array([[2, 5, 6], [2, 7, 4]]),
        **dict(zip(names, encoded)),
        IO.source_lens: np.array([4, 2], np.int32),
    }  # attention masking is not an RNN op: ragged
    got = sessions["decoder"]["numba"](step)
    expected = ReferenceEvaluator(graphs["decoder"]).run(None, step)
    assert len(got) == len(expected) and all(np.allclose(a, e, atol=1e-5) for a, e in zip(got, expected))


def test_parity_catches_an_unmasked_attention():
    """A decoder that attends to padding is caught by validation (the check is able to fail)."""
    model, _, _ = make_seq2seq("gru", "dot", False, layers=1, train_steps=0)
    graphs, sessions = graphs_and_sessions(model)
    decoder = graphs["decoder"]
    where = next(n for n in decoder.graph.node if n.name == "attention_masked")
    where.op_type, where.input[:] = "Identity", [where.input[1]]  # scores straight to the softmax
    broken = session_forward(_ort(decoder))
    report = check_seq2seq_parity(
        "decoder",
        model.config,
        "torch",
        torch_decoder_forward(model),
        {"onnxruntime": broken},
        FP32,
        False,
        batch_sizes=(3,),
        lengths=(9,),
    )
    assert any("exactly 0 past a source's length" in f for f in report.failures)
    assert any("row 1 alone vs in batch" in f for f in report.failures)


def test_checkers_list_every_problem():
    model, _, _ = make_seq2seq("lstm", "dot", True, train_steps=0)
    graphs, _ = graphs_and_sessions(model)
    encoder, decoder = graphs["encoder"], graphs["decoder"]
    for node in encoder.graph.node:
        if node.op_type == "LSTM":
            node.input[4] = ""  # sequence_lens dropped
    with pytest.raises(UnsupportedError, match=r"2 problem\(s\)(.|\n)*does not read 'source_lens'"):
        check_encoder_graph(encoder, model.config)
    lstm = next(n for n in decoder.graph.node if n.op_type == "LSTM")
    lstm.input[5] = ""
    decoder.graph.output[0].name = "logits"
    with pytest.raises(UnsupportedError) as info:
        check_decoder_graph(decoder, model.config)
    message = str(info.value)
    assert "graph outputs are ['logits'" in message and "does not read an initial_h" in message


def test_graph_input_shapes_are_symbolic():
    model, _, _ = make_seq2seq("rnn", "additive", False, layers=1, train_steps=0)
    graphs, _ = graphs_and_sessions(model)
    dims = {
        vi.name: [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]
        for g in graphs.values()
        for vi in list(g.graph.input) + list(g.graph.output)
    }
    assert dims[IO.source_ids] == ["batch", "source_time"] and dims[IO.input_ids] == ["batch", "time"]
    assert dims[IO.memory] == ["batch", "source_time", 8] and dims[IO.attention] == ["batch", "time", "source_time"]
    assert dims[IO.log_probs] == ["batch", "time", model.config.target_vocab_size]
    props = {p.key: p.value for p in graphs["decoder"].metadata_props}
    assert props["rnnkit.task"] == "seq2seq" and props["rnnkit.architecture"].endswith("decoder")


# -- the bundle --------------------------------------------------------------------------------------


def test_bundle_manifest_records_the_contract(s2s_bundles):
    bundle = s2s_bundles("lstm", "dot", True)
    m = json.loads((bundle / MANIFEST_FILE).read_text())
    assert m["task"] == "seq2seq" and set(m["files"]) == {
        IO.encoder_file,
        IO.decoder_file,
        IO.encoder_int8_file,
        IO.decoder_int8_file,
    }
    assert m["source_tokenizer"]["level"] == "char" and m["target_tokenizer"]["vocab"][:4] == [
        "<pad>",
        "<unk>",
        "<s>",
        "</s>",
    ]
    assert (m["architecture"]["bos_id"], m["architecture"]["eos_id"]) == (2, 3)
    assert m["state"] == [
        {"input": n, "output": o, "dtype": "float32", "shape": [2, "batch", 8], "initial": "encoder"}
        for n, o in (("initial_h", "final_h"), ("initial_c", "final_c"))
    ]
    assert [c["input"] for c in m["context"]] == ["memory", "keys", "source_lens"]
    assert [i["name"] for i in m["graph"]["decoder"]["inputs"]] == list(IO.decoder_inputs("lstm", "dot"))
    for graph in ("encoder", "decoder"):
        fp32 = m["validation"]["fp32"][graph]
        assert fp32["passed"] and fp32["cases"] == 28 and fp32["lengths"] == [1, 7, 33, 200]
        assert fp32["batch_sizes"] == [1, 3, 8] and max(fp32["max_abs_diff"].values()) < 1e-3  # log-probs to -40
        assert m["validation"]["int8"][graph]["passed"]
        assert 0 < m["quantization"][graph]["size_ratio"] < 1
        assert any(op["op"] == "com.microsoft.DynamicQuantizeLSTM" for op in m["quantization"][graph]["ops"])
    dev = m["validation"]["dev"]
    assert dev["sentences"] == len(G2P) and dev["fp32_exact_match"] == 1.0 and dev["fp32_token_error_rate"] == 0.0
    assert {"int8_agreement", "int8_output_agreement", "int8_exact_match", "fp32_loss", "int8_loss"} <= set(dev)
    assert dev["int8_agreement"] > 0.9


def test_open_bundle_verifies_both_graphs(s2s_bundles, tmp_path):
    good = s2s_bundles("lstm", "dot", True)
    b = open_bundle(good)
    assert b.task == "seq2seq" and b.has_int8 and b.graph_names == ["encoder", "decoder"]
    assert b.target_tokenizer.vocab[3] == "</s>" and b.model_path(True, "decoder").name == IO.decoder_int8_file

    def copy() -> Path:
        target = tmp_path / f"b{len(list(tmp_path.iterdir()))}"
        shutil.copytree(good, target)
        return target

    corrupted = copy()
    data = bytearray((corrupted / IO.decoder_file).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (corrupted / IO.decoder_file).write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"decoder.onnx: sha256 does not match"):
        open_bundle(corrupted)
    with pytest.raises(BundleError, match=r"'files' does not list encoder.onnx"):
        open_bundle(edit_manifest(copy(), lambda m: m["files"].pop(IO.encoder_file)))
    with pytest.raises(BundleError, match=r"only part of the int8 graphs"):
        open_bundle(edit_manifest(copy(), lambda m: m["files"].pop(IO.encoder_int8_file)))
    with pytest.raises(BundleError, match=r"'graph.decoder.outputs' names"):
        open_bundle(edit_manifest(copy(), lambda m: m["graph"]["decoder"]["outputs"].pop()))
    with pytest.raises(BundleError, match=r"'state' is"):
        open_bundle(edit_manifest(copy(), lambda m: m["state"][0].update(initial="zeros")))
    with pytest.raises(BundleError, match=r"'target_tokenizer.vocab' has \d+ entries but 'architecture.target_vocab"):
        open_bundle(edit_manifest(copy(), lambda m: m["target_tokenizer"]["vocab"].append("ZZ")))
    with pytest.raises(BundleError, match=r"bos_id=3, eos_id=3"):
        open_bundle(edit_manifest(copy(), lambda m: m["architecture"].update(bos_id=3)))
    swapped = copy()  # a decoder from another model
    model = onnx.load(str(swapped / IO.decoder_file))
    table = next(t for t in model.graph.initializer if t.name == "target_embedding.weight")
    table.dims[0] += 1
    table.raw_data += b"\0" * (4 * table.dims[1])
    onnx.save_model(model, str(swapped / IO.decoder_file))
    rehash(swapped, IO.decoder_file)
    with pytest.raises(BundleError, match=r"target_embedding has \d+ rows but manifest.json 'architecture.target_voc"):
        open_bundle(swapped)


def test_parity_failure_writes_nothing(tmp_path, monkeypatch):
    from rnnkit.export import task_seq2seq

    model, source, target = make_seq2seq("rnn", "none", False, layers=1, train_steps=0)
    real = task_seq2seq.torch_decoder_forward

    def skewed(module):
        forward = real(module)
        return lambda feed: tuple(x + 1e-3 for x in forward(feed))  # an oracle the graph cannot match

    monkeypatch.setattr(task_seq2seq, "torch_decoder_forward", skewed)
    with pytest.raises(ParityError, match=r"decoder.onnx vs torch: \d+ parity failure"):
        export_seq2seq(model, source, target, tmp_path / "b", **QUIET)
    assert not (tmp_path / "b").exists() and not list(tmp_path.glob(".b.tmp-*"))


def test_int8_dev_gate_fails_export(tmp_path, monkeypatch):
    from rnnkit.export import task_seq2seq

    model, source, target = make_seq2seq("rnn", "none", False, layers=1, train_steps=30)
    real = task_seq2seq.seq2seq_dev_metrics
    monkeypatch.setattr(
        task_seq2seq, "seq2seq_dev_metrics", lambda *a, **k: dict(real(*a, **k), int8_agreement=0.9)
    )  # measured, then forced low
    with pytest.raises(
        ParityError,
        match=r"encoder.int8.onnx, decoder.int8.onnx: int8 agrees with fp32 on 90.00% of "
        r"g2p \(\d+ tokens\), below min_agreement 99.00%",
    ):
        export_seq2seq(model, source, target, tmp_path / "b", int8=True, dev=DevSet(list(G2P), None, "g2p"), **QUIET)
    assert not (tmp_path / "b").exists()


def test_mismatched_tokenizer_is_refused(tmp_path):
    from rnnkit.runtime.tokenizer import WordTokenizer

    model, source, _ = make_seq2seq("rnn", "none", False, layers=1, train_steps=0)
    with pytest.raises(InputError, match=r"the target tokenizer has 5 entries but the model's target vocabulary"):
        export_seq2seq(model, source, WordTokenizer(["<pad>", "<unk>", "<s>", "</s>", "X"]), tmp_path / "b", **QUIET)


def test_export_checkpoint_dispatches_seq2seq(tmp_path, monkeypatch):
    """`rnnkit export` on a seq2seq checkpoint goes through toolkit.checkpoint's seq2seq loader."""
    model, source, target = make_seq2seq("gru", "dot", False, layers=1, train_steps=0)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    meta = {"task": "seq2seq", "training": {"epochs": 1, "history": [1, 2]}}
    (ckpt / "config.json").write_text(json.dumps(meta))
    loaded = types.SimpleNamespace(
        config=model.config, model=model, source_tokenizer=source, target_tokenizer=target, meta=meta
    )
    from rnnkit.toolkit import checkpoint

    monkeypatch.setitem(checkpoint.LOADERS, "seq2seq", lambda path: loaded if Path(path) == ckpt else None)
    result = export_checkpoint(ckpt, tmp_path / "b", **QUIET)
    assert result["manifest"]["task"] == "seq2seq" and result["manifest"]["source"]["training"] == {"epochs": 1}
    assert open_bundle(tmp_path / "b").task == "seq2seq"
