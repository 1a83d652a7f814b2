"""Interop: the portable int8 form on every ONNX consumer, the manifest's per-file records, export
validation on other consumers (``validate_on``) and re-forming a bundle without torch.

onnx.reference, onnxruntime and numba always run; OpenVINO and tract when installed (the ``test``
extra installs them, so CI runs them too).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import edit_manifest, make_checkpoint, make_lm_checkpoint, make_tagger_checkpoint, synthetic_texts

from rnnkit.export import consumers
from rnnkit.export.validate import parity_feeds
from rnnkit.runtime.errors import BundleError, InputError, ParityError
from rnnkit.runtime.manifest import GRAPH_FILES_KEY, MANIFEST_FILE, LanguageModelIO, graph_ops
from rnnkit.runtime.model import softmax
from rnnkit.runtime.tolerance import INT8

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

CONSUMERS = ("onnxruntime", "numba", "reference", "openvino", "tract")
LENGTHS = (1, 7, 33)  # ragged batches; row 0 full length, the others padded


def _consumer(name: str) -> str:
    if name in ("openvino", "tract"):
        pytest.importorskip(name)
    return name


def _graph(task: str, ckpt: Path):
    from rnnkit.export import task_classify, task_lm, task_tag
    from rnnkit.toolkit.checkpoint import LOADERS

    c = LOADERS[task](ckpt)
    if task == "classify":
        item = task_classify.from_module(c.model, c.tokenizer, c.labels)
    elif task == "tag":
        item = task_tag.from_module(c.model, c.tokenizer, c.charset, c.tags)
    else:
        item = task_lm.from_module(c.model, c.tokenizer)
    return item.graphs[0].build(item.config, item.weights), item.config


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    """(name, fp32 sequence_lens graph, portable int8 graph, ragged feeds): GRU, LSTM and RNN, 1-2 layers."""
    from rnnkit.export.portable import make_portable
    from rnnkit.export.weight_int8 import quantize_weights

    root = tmp_path_factory.mktemp("interop")
    cases = [
        ("classify", make_checkpoint(root / "c", cell="gru", bidirectional=True, pooling="max", layers=2)),
        ("tag", make_tagger_checkpoint(root / "t", cell="rnn", bidirectional=True, chars=True)),
        ("lm", make_lm_checkpoint(root / "l", cell="lstm", layers=2)),
    ]
    out = []
    for task, ckpt in cases:
        fp32, config = _graph(task, ckpt)
        state = (
            {n: (config.layers, config.hidden) for n in LanguageModelIO.state_inputs(config.cell)}
            if task == "lm"
            else None
        )
        feeds = list(
            parity_feeds(
                config.vocab_size,
                getattr(config, "char_vocab_size", 0),
                batch_sizes=(3,),
                lengths=LENGTHS,
                state_shapes=state,
            )
        )
        out.append((f"{task}-{config.cell}", fp32, quantize_weights(make_portable(fp32))[0], feeds))
    return out


def _inputs(model, feed: dict) -> dict:
    names = {i.name for i in model.graph.input}
    return {k: v for k, v in feed.items() if k in names}


@pytest.mark.parametrize("name", CONSUMERS)
def test_portable_int8_agrees_with_fp32_on_every_consumer(graphs, name):
    """Every output of the portable int8 graph on the consumer, padded rows included, is within INT8 of the
    fp32 sequence_lens graph on onnxruntime (probabilities for the head, raw values for state)."""
    _consumer(name)
    for label, fp32, int8, feeds in graphs:
        for feed in feeds:
            expected = consumers.run("onnxruntime", fp32, _inputs(fp32, feed))
            actual = consumers.run(name, int8, _inputs(int8, feed))
            for key, e in expected.items():
                a = actual[key]
                if key == "logits":
                    a, e = softmax(a), softmax(e)
                    if a.ndim == 3:  # a tagger's or LM's padded positions are 0 logits in both
                        real = np.arange(a.shape[1])[None, :] < feed["sequence_lens"][:, None]
                        a, e = a[real], e[real]
                assert INT8.close(a, e), f"{label} {key} on {name}: worst {np.abs(a - e).max():.3g}"


def test_portable_int8_stores_weights_as_int8_in_standard_ops(graphs):
    for label, fp32, int8, _ in graphs:
        types = {t.name: t.data_type for t in int8.graph.initializer}
        ops = graph_ops(int8)
        assert list(ops) == ["ai.onnx"] and "DequantizeLinear" not in ops["ai.onnx"], (label, ops)
        quantized = [n for n, t in types.items() if t == onnx.TensorProto.INT8]
        assert any(".W" in n for n in quantized) and any(".R" in n for n in quantized), (label, quantized)
        assert any("embedding" in n for n in quantized), (label, quantized)
        # biases and the portable LSTM's hold column stay float32 (HOLD would swamp a shared scale)
        floats = [n for n, t in types.items() if t == onnx.TensorProto.FLOAT]
        assert all(not n.endswith("_quantized") for n in floats)
        if label == "lm-lstm":  # its final_c needs the hold column
            assert any(n.endswith(".hold") for n in floats), floats
        inits = {t.name: t for t in int8.graph.initializer}
        for name in quantized:  # one positive scale per channel (a row of W/R or of a table)
            scale = onnx.numpy_helper.to_array(inits[name.replace("_quantized", "_scale")])
            rows = inits[name].dims[0]
            assert scale.shape in ((rows, 1), (1, inits[name].dims[1])) and (scale > 0).all(), (label, name)


# -- export: graph form, int8 format, manifest, validate_on -------------------------------------------


def _export(tmp_path: Path, name: str, **options) -> dict:
    from rnnkit.toolkit.export_checkpoint import DevSet, export_checkpoint

    ckpt = tmp_path / "ckpt"
    if not ckpt.exists():
        make_checkpoint(ckpt, cell="lstm", bidirectional=True, pooling="max")
    texts, labels = synthetic_texts(40, 1)
    return export_checkpoint(
        ckpt,
        tmp_path / name,
        int8=True,
        dev=DevSet(texts, labels, str(tmp_path / "dev.tsv")),
        min_agreement=0.0,
        max_length=40,
        log=lambda m: None,
        **options,
    )


@pytest.fixture(scope="module")
def portable_bundle(tmp_path_factory) -> Path:
    return Path(
        _export(tmp_path_factory.mktemp("portable"), "b", graph_form="portable", int8_format="portable")["path"]
    )


def test_manifest_records_each_graph_file(portable_bundle):
    from rnnkit.runtime.bundle import open_bundle

    manifest = open_bundle(portable_bundle).manifest
    records = manifest[GRAPH_FILES_KEY]
    assert sorted(records) == ["model.int8.onnx", "model.onnx"]
    for file, record in records.items():
        graph = onnx.load(str(portable_bundle / file))
        assert record["ops"] == graph_ops(graph) and list(record["ops"]) == ["ai.onnx"]
        assert record["form"] == "portable" and record["precision"] == ("int8" if ".int8." in file else "fp32")
        assert set(record["validated_on"]) == {"onnxruntime", "numba"}
        assert record["validated_on"]["onnxruntime"] == consumers.version("onnxruntime")
    assert manifest["quantization"]["format"] == "portable"
    text = json.dumps(manifest)
    assert manifest["source"]["checkpoint"] == "ckpt" and str(portable_bundle.parent) not in text


def test_tampered_op_domain_is_refused(portable_bundle, tmp_path):
    import shutil

    from rnnkit.runtime.bundle import open_bundle

    copy = tmp_path / "copy"
    shutil.copytree(portable_bundle, copy)
    edit_manifest(
        copy,
        lambda m: m[GRAPH_FILES_KEY]["model.int8.onnx"]["ops"].update(
            {"ai.onnx": [o for o in m[GRAPH_FILES_KEY]["model.int8.onnx"]["ops"]["ai.onnx"] if o != "Mul"]}
        ),
    )
    with pytest.raises(BundleError, match="uses ops"):
        open_bundle(copy)
    edit_manifest(copy, lambda m: m.pop(GRAPH_FILES_KEY))  # a bundle written before the record: loads
    assert open_bundle(copy).has_int8


def test_validate_on_collects_every_failure_into_one_error(tmp_path):
    """The onnxruntime forms on onnx.reference: the fp32 graph's padded rows differ (sequence_lens is
    ignored) and the int8 graph is refused (com.microsoft ops): both in one ParityError, nothing written."""
    with pytest.raises(ParityError) as info:
        _export(tmp_path, "b", graph_form="onnxruntime", int8_format="onnxruntime", validate_on="reference")
    text = str(info.value)
    assert "2 consumer check(s) failed" in text
    assert "reference" in text and "x model.onnx:" in text and "beyond FP32" in text
    assert "x model.int8.onnx: refused" in text and "com.microsoft" in text
    assert not (tmp_path / "b").exists()


def test_validate_on_records_the_consumers_that_passed(tmp_path):
    result = _export(tmp_path, "b", graph_form="portable", int8_format="portable", validate_on="reference")
    for record in result["manifest"][GRAPH_FILES_KEY].values():
        assert record["validated_on"]["reference"] == consumers.version("reference")


def test_validate_on_a_missing_consumer_names_the_interop_extra(tmp_path, monkeypatch):
    monkeypatch.setattr(consumers, "version", lambda name: None if name == "tract" else "1")
    with pytest.raises(InputError, match=r"rnnkit\[interop\]"):
        _export(tmp_path, "b", validate_on="tract")
    with pytest.raises(InputError, match="unknown"):
        _export(tmp_path, "b", validate_on="tensorrt")


def test_bad_graph_form_and_int8_format_without_int8_are_refused(tmp_path):
    from rnnkit.toolkit.export_checkpoint import CLI_FLAGS, export_checkpoint

    with pytest.raises(InputError, match="graph_form is 'static'"):
        _export(tmp_path, "b", graph_form="static")
    with pytest.raises(InputError, match="--int8-format portable chooses how int8 graphs are written; add --int8"):
        export_checkpoint(tmp_path / "ckpt", tmp_path / "c", int8_format="portable", flags=CLI_FLAGS)
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


# -- re-forming a bundle without torch ------------------------------------------------------------


def test_reform_writes_a_portable_bundle_from_an_onnxruntime_one(tmp_path):
    from rnnkit.export.reform import reform_bundle
    from rnnkit.runtime import load
    from rnnkit.runtime.bundle import open_bundle

    source = Path(_export(tmp_path, "src", graph_form="onnxruntime", int8_format="onnxruntime")["path"])
    before = (source / MANIFEST_FILE).read_bytes()
    out = reform_bundle(source, tmp_path / "portable", log=lambda m: None)
    bundle = open_bundle(out["path"])
    assert (source / MANIFEST_FILE).read_bytes() == before
    assert {r["form"] for r in bundle.manifest[GRAPH_FILES_KEY].values()} == {"portable"}
    assert bundle.manifest["quantization"]["format"] == "portable"
    assert bundle.manifest["reformed"]["from_manifest_sha256"] == json.loads(before)["manifest_sha256"]
    assert "int8_agreement" not in bundle.manifest["validation"]["dev"]
    texts, _ = synthetic_texts(12, 3)
    old, new = (
        load(source, backend="onnxruntime").predict(texts),
        load(out["path"], backend="onnxruntime").predict(texts),
    )
    assert [p.label for p in old] == [p.label for p in new]
    with pytest.raises(InputError, match="cannot be turned back"):
        reform_bundle(out["path"], tmp_path / "back", graph_form="onnxruntime", log=lambda m: None)
    assert not (tmp_path / "back").exists()


@pytest.mark.slow
def test_reform_the_shipped_g2p_bundle_without_torch(tmp_path):
    """The G2P bundle ships without its torch checkpoint: re-formed to portable graphs (fp32 and int8),
    validated against its own graphs, it opens and decodes the same as the source."""
    from rnnkit.export.reform import reform_bundle
    from rnnkit.runtime import load
    from rnnkit.runtime.builtin import find

    source = find("g2p-cmudict")
    if source is None:
        pytest.skip("the G2P bundle is not installed (rnnkit[g2p])")
    out = reform_bundle(source, tmp_path / "g2p", max_length=16, log=lambda m: None)
    records = out["manifest"][GRAPH_FILES_KEY]
    assert sorted(records) == ["decoder.int8.onnx", "decoder.onnx", "encoder.int8.onnx", "encoder.onnx"]
    assert all(list(r["ops"]) == ["ai.onnx"] for r in records.values())
    assert out["manifest"]["source"]["checkpoint"] == "ckpt" and "/" not in out["manifest"]["lexicon"]["from"]
    words = ["cat", "phoneme", "interoperable"]
    for int8 in (False, True):
        old = load(source, backend="onnxruntime", int8=int8).translate(words, beam=1)
        new = load(out["path"], backend="onnxruntime", int8=int8).translate(words, beam=1)
        assert old == new or int8  # int8: the fast and the portable int8 forms may differ on a word
    assert load(out["path"], backend="numba", int8=True).translate(words, beam=1) == new
