"""``Model.explain``: occlusion and attention on both backends, against independent oracles (separate
graph calls per occluded text; torch's own attention weights), the errors, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import G2P, make_checkpoint, synthetic_texts

from rnnkit.export.validate import check_parity
from rnnkit.runtime import load
from rnnkit.runtime.errors import InputError, TaskMismatchError
from rnnkit.runtime.explain import Explanation, occluded
from rnnkit.runtime.explain_render import render_html, render_text
from rnnkit.runtime.session import pad
from rnnkit.runtime.tokenizer import UNK_ID
from rnnkit.runtime.tolerance import FP32, INT8_SEQUENCE

BACKENDS = ["onnxruntime", "numba"]
WEIGHTS = ("pooling_weights",)
TEXT = "the film was superb and lovely and the plot dull"


@pytest.fixture(scope="module")
def attention_bundle(tmp_path_factory):
    """A bidirectional LSTM classifier with attention pooling, fp32 + int8, max_length 12 (checkpoint, bundle)."""
    pytest.importorskip("torch")
    from rnnkit.toolkit.export_checkpoint import DevSet, export_checkpoint

    root = tmp_path_factory.mktemp("explain")
    ckpt = make_checkpoint(root / "ckpt", cell="lstm", bidirectional=True, pooling="attention")
    texts, labels = synthetic_texts(30, 1)
    result = export_checkpoint(
        ckpt,
        root / "b",
        int8=True,
        dev=DevSet(texts, labels, "s"),
        min_agreement=0.0,
        max_length=12,
        log=lambda m: None,
    )
    return ckpt, Path(result["path"])


def test_occluded_rows():
    rows = occluded([5, 6, 7])
    assert rows.tolist() == [[5, 6, 7], [UNK_ID, 6, 7], [5, UNK_ID, 7], [5, 6, UNK_ID]]


@pytest.mark.parametrize("backend", BACKENDS)
def test_occlusion_is_the_probability_drop_of_each_unk_variant(attention_bundle, backend):
    model = load(attention_bundle[1], backend=backend)
    (e,) = model.explain([TEXT], method="occlusion")
    ids = model.encode([TEXT])[0]
    predicted = model.predict(TEXT)[0]
    assert e.prediction["label"] == predicted.label
    assert FP32.close(np.float32(e.prediction["score"]), np.float32(predicted.score))
    best = model.labels.index(predicted.label)
    drops = []
    for j in range(len(ids)):  # the oracle: one graph call per variant, no batching
        variant = list(ids)
        variant[j] = UNK_ID
        logits = model.logits(np.array([variant]), np.array([len(ids)], np.int32))[0].astype(np.float64)
        p = np.exp(logits - logits.max())
        drops.append(predicted.score - p[best] / p.sum())
    assert FP32.close(np.array(e.raw, np.float32), np.array(drops, np.float32))
    assert e.tokens == TEXT.split()
    assert abs(sum(abs(s) for s in e.scores) - 1.0) < 1e-9
    assert np.allclose(e.scores, np.array(drops) / np.abs(drops).sum(), atol=FP32.atol)


@pytest.mark.parametrize("backend", BACKENDS)
def test_attention_matches_torch(attention_bundle, backend):
    import torch

    from rnnkit.toolkit.checkpoint import load_checkpoint

    ckpt = load_checkpoint(attention_bundle[0])
    seen = {}
    pooling = ckpt.model.attention

    def record(module, args, output):
        y, mask = args
        scores = module.v(torch.tanh(module.proj(y))).squeeze(-1).masked_fill(~mask, float("-inf"))
        seen["alpha"] = torch.softmax(scores, dim=1)[0].numpy()

    handle = pooling.register_forward_hook(record)
    try:
        ckpt.logits([TEXT])
    finally:
        handle.remove()
    (e,) = load(attention_bundle[1], backend=backend).explain(TEXT, method="attention")
    assert FP32.close(np.array(e.raw, np.float32), seen["alpha"])
    assert abs(sum(e.scores) - 1.0) < 1e-6 and min(e.scores) >= 0


def test_backends_agree_on_the_top_tokens(attention_bundle):
    texts = synthetic_texts(12, 3)[0]
    for method in ("occlusion", "attention"):
        a, b = (load(attention_bundle[1], backend=x).explain(texts, method=method) for x in BACKENDS)
        for x, y in zip(a, b):
            assert FP32.close(np.array(x.raw, np.float32), np.array(y.raw, np.float32))


def test_errors_name_the_text_and_the_method_that_works(attention_bundle, gru_bundle):
    model = load(attention_bundle[1])
    with pytest.raises(InputError, match=r"text #1 \(' '\) has no tokens"):
        model.explain(["good", " "])
    with pytest.raises(InputError, match="more than this bundle's max_length 12"):
        model.explain(["good " * 13])
    assert len(model.explain(["good " * 13], truncate=True)[0].tokens) == 12
    with pytest.raises(InputError, match="method must be one of occlusion, attention"):
        model.explain("good", method="gradient")
    with pytest.raises(InputError, match=r"pools its states by 'max'.*use method='occlusion'"):
        load(gru_bundle).explain("good", method="attention")


def test_tagger_occlusion(tag_bundle):
    model = load(tag_bundle)
    sentence = ["the", "good", "film", "runs", "."]
    (e,) = model.explain([sentence])
    assert e.prediction["tags"] == model.tag([sentence])[0].tags
    assert len(e.alignment) == len(sentence) and all(len(r) == len(sentence) for r in e.alignment)
    (one,) = model.explain([sentence], token=2)
    assert one.prediction["token"] == 2 and one.prediction["tag"] == e.prediction["tags"][2]
    assert one.scores == e.alignment[2]
    with pytest.raises(InputError, match="a tagger has no attention weights; use method='occlusion'"):
        model.explain([sentence], method="attention")
    with pytest.raises(InputError, match="token must be a position in 0..4"):
        model.explain([sentence], token=9)


@pytest.mark.slow  # builds the session's seq2seq bundle (trains it for a second, exports int8)
def test_seq2seq_alignment_and_errors(s2s_bundles):
    model = load(s2s_bundles("lstm", "dot", True))
    words = list(G2P)[:3]
    found = model.explain(words, beam=1)
    for word, e in zip(words, found):
        assert e.prediction["output"] == model.translate([word], beam=1)[0]
        assert e.targets == e.prediction["output"].split()
        assert len(e.alignment) == len(e.targets) and all(len(r) == len(word) for r in e.alignment)
        assert all(abs(sum(r) - 1.0) < 1e-5 for r in e.alignment)
    with pytest.raises(InputError, match="use method='attention'"):
        model.explain(words, method="occlusion")
    # a bundle trained with attention='none' (its architecture says so; no such bundle is built here)
    model.bundle.manifest = {**model.bundle.manifest, "architecture": {**model.bundle.manifest["architecture"]}}
    model.bundle.manifest["architecture"]["attention"] = "none"
    with pytest.raises(InputError, match="attention='none'.*no method works"):
        model.explain(words)


def test_language_models_have_no_explain(lm_bundles):
    with pytest.raises(TaskMismatchError, match="has no explain"):
        load(lm_bundles("gru", 1)).explain("the cat")


def test_packaged_g2p_bundle_explains():
    root = Path(__file__).resolve().parents[1] / "packages/rnnkit-g2p-cmudict/rnnkit_g2p_cmudict/g2p-cmudict"
    model = load(root, backend="onnxruntime")
    (e,) = model.explain("hello")
    assert e.prediction["output"] == model.translate_one("hello")  # the same answer as before explain existed
    assert e.tokens == list("hello") and len(e.alignment) == len(e.targets)


def _explanation(scores) -> Explanation:
    tokens = ["alpha", "beta", "gamma", "delta"][: len(scores)]
    return Explanation(" ".join(tokens), tokens, scores, "occlusion", {"label": "pos", "score": 0.9})


def test_text_form_marks_the_top_tokens():
    e = _explanation([0.1, 0.5, -0.1, 0.3])
    assert render_text(e, top=2) == "pos (0.900)\talpha **beta** gamma **delta**"
    assert "\x1b[1;32mbeta\x1b[0m" in render_text(e, top=1, color=True)


def test_html_page_is_self_contained():
    page = render_html([_explanation([0.1, 0.5, -0.1, 0.3])])
    assert "<link" not in page and "src=" not in page and "url(" not in page
    assert "rgba(22,128,61,1.000)" in page  # the top token at full colour


def test_cli_text_json_html(attention_bundle, tmp_path):
    from rnnkit.toolkit.cli import cli

    bundle = str(attention_bundle[1])
    run = CliRunner().invoke(cli, ["explain", bundle, TEXT, "--top", "2"])
    assert run.exit_code == 0, run.output
    assert run.output.count("**") == 4 and "\x1b[" not in run.output  # not a terminal: plain markers
    run = CliRunner().invoke(cli, ["explain", bundle, "--format", "json", "--method", "attention"], input="good\nbad\n")
    lines = [json.loads(x) for x in run.output.splitlines()]
    assert [x["text"] for x in lines] == ["good", "bad"] and lines[0]["method"] == "attention"
    out = tmp_path / "page.html"
    run = CliRunner().invoke(cli, ["explain", bundle, TEXT, "--format", "html", "--output", str(out)])
    assert run.exit_code == 0 and out.read_text().startswith("<!DOCTYPE html>")
    run = CliRunner().invoke(cli, ["explain", bundle, "", "--method", "attention"])
    assert run.exit_code == 1 and "has no tokens" in run.output


def test_export_declares_and_validates_the_pooling_weights(attention_bundle):
    """The weights are the graph's second output, in the manifest's contract, validated against torch
    (fp32 on both backends, int8 numba against onnxruntime int8) like the logits."""
    manifest = json.loads((attention_bundle[1] / "manifest.json").read_text())
    declared = {"name": "pooling_weights", "dtype": "float32", "shape": ["batch", "time"]}
    assert manifest["graph"]["outputs"][1] == declared
    fp32, int8 = manifest["validation"]["fp32"], manifest["validation"]["int8"]
    assert fp32["passed"] and set(fp32["outputs"]["pooling_weights"]["max_abs_diff"]) == set(BACKENDS)
    assert max(fp32["outputs"]["pooling_weights"]["max_abs_diff"].values()) <= FP32.atol
    assert int8["passed"] and set(int8["outputs"]["pooling_weights"]["max_abs_diff"]) == {"numba"}
    assert manifest["graph_files"]["model.onnx"]["form"] == "portable"


def test_pooling_weights_parity_catches_a_wrong_oracle(attention_bundle):
    from rnnkit.export.pipeline import session_forward
    from rnnkit.export.task_classify import torch_forward_with_weights
    from rnnkit.runtime import backends
    from rnnkit.runtime.bundle import open_bundle
    from rnnkit.toolkit.checkpoint import load_checkpoint

    ckpt = load_checkpoint(attention_bundle[0])
    bundle = open_bundle(attention_bundle[1])
    oracle = torch_forward_with_weights(ckpt.model)
    candidates = {
        b: session_forward(backends.open_session(bundle.graph(), bundle.model_path(), b, 1)) for b in BACKENDS
    }

    def parity(forward):
        return check_parity(
            "torch", forward, candidates, FP32, vocab_size=ckpt.config.vocab_size, lengths=(7,), per_token=WEIGHTS
        )

    assert not parity(oracle).failures
    reversed_weights = parity(lambda feed: (oracle(feed)[0], oracle(feed)[1][:, ::-1]))
    assert any("pooling_weights max |diff|" in f for f in reversed_weights.failures)
    logits_only = parity(lambda feed: oracle(feed)[0])
    assert logits_only.failures and "2 outputs, expected 1" in logits_only.failures[0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_int8_attention_and_predict_unchanged(attention_bundle, backend):
    fp32, int8 = (load(attention_bundle[1], backend=backend, int8=q) for q in (False, True))
    (a,), (b,) = (m.explain(TEXT, method="attention") for m in (fp32, int8))
    assert INT8_SEQUENCE.close(np.array(b.raw), np.array(a.raw)) and abs(sum(b.raw) - 1) < 1e-5
    ids, lengths = pad(fp32.encode([TEXT, "good"]))
    assert fp32.logits(ids, lengths).shape == (2, 2)  # the logits alone, as before the weights were an output
    assert fp32.predict(TEXT)[0].label == a.prediction["label"]


def test_a_bundle_without_the_output_loads_and_points_to_occlusion(attention_bundle, tmp_path):
    """The older contract (logits only: bundles from before, and export_module's): it loads and
    predicts, and attention is refused naming the method that works and how to get attention."""
    from rnnkit.export.oracle import torch_forward
    from rnnkit.export.pipeline import export, numpy_weights
    from rnnkit.export.task_classify import classifier_exportable
    from rnnkit.toolkit.checkpoint import load_checkpoint

    ckpt = load_checkpoint(attention_bundle[0])
    item = classifier_exportable(
        ckpt.config, numpy_weights(ckpt.model), ckpt.tokenizer, ckpt.labels, torch_forward(ckpt.model)
    )
    old = Path(export(item, tmp_path / "old", max_length=12, log=lambda m: None)["path"])
    assert [o["name"] for o in json.loads((old / "manifest.json").read_text())["graph"]["outputs"]] == ["logits"]
    model = load(old)
    assert model.predict(TEXT)[0].label == load(attention_bundle[1]).predict(TEXT)[0].label
    with pytest.raises(
        InputError,
        match=r"no 'pooling_weights' output .* re-export it from the checkpoint with a current rnnkit .*"
        r"use method='occlusion'",
    ):
        model.explain(TEXT, method="attention")
    assert model.explain(TEXT)[0].method == "occlusion"


def test_the_manifest_holds_the_graph_to_the_form_it_declares(attention_bundle, tmp_path):
    import shutil

    from conftest import edit_manifest

    from rnnkit.runtime.bundle import open_bundle
    from rnnkit.runtime.errors import BundleError

    copy = Path(shutil.copytree(attention_bundle[1], tmp_path / "b"))
    declared = json.loads((copy / "manifest.json").read_text())["graph"]["outputs"][1]
    edit_manifest(copy, lambda m: m["graph"]["outputs"].pop())  # the graph still has the output
    with pytest.raises(BundleError, match=r"graph outputs are .*'pooling_weights'.* but manifest.json 'graph' "):
        open_bundle(copy)

    def mean_with_weights(m):
        m["graph"]["outputs"].append(declared)
        m["architecture"]["pooling"] = "mean"

    edit_manifest(copy, mean_with_weights)  # only attention pooling has weights to declare
    with pytest.raises(BundleError, match=r"names \['logits', 'pooling_weights'\] but a classify bundle has \['logi"):
        open_bundle(copy)


def test_cli_explain_never_imports_torch(attention_bundle, tmp_path):
    from conftest import run_python

    png = tmp_path / "plot.png"
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from rnnkit.toolkit.cli import cli\n"
        "args = ['explain', sys.argv[1], 'good film', '--format', 'png', '--output', sys.argv[2]]\n"
        "r = CliRunner().invoke(cli, args)\n"
        "assert r.exit_code == 0, r.output\n"
        "print('torch' in sys.modules)\n"
    )
    run = run_python(code, str(attention_bundle[1]), str(png))
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "False"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_colour_only_on_a_terminal_without_no_color(monkeypatch):
    import sys

    from rnnkit.toolkit.cli_explain import use_color

    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert use_color(None) and not use_color("out.txt")
    monkeypatch.setenv("NO_COLOR", "1")
    assert not use_color(None)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False)
    monkeypatch.delenv("NO_COLOR")
    assert not use_color(None)


@pytest.mark.slow
def test_reform_keeps_the_pooling_weights(attention_bundle, tmp_path):
    """A torch-free re-form (portable int8) validates the weights like an export and records them."""
    from rnnkit.export.reform import reform_bundle

    out = reform_bundle(attention_bundle[1], tmp_path / "r", int8_format="portable", max_length=12, log=lambda m: None)
    validation = out["manifest"]["validation"]
    assert set(validation["fp32"]["outputs"]) == set(WEIGHTS)
    (before,) = load(attention_bundle[1], backend="onnxruntime").explain(TEXT, method="attention")
    for backend in BACKENDS:
        (after,) = load(out["path"], backend=backend).explain(TEXT, method="attention")
        assert after.tokens == before.tokens
        assert FP32.close(np.array(after.raw, np.float32), np.array(before.raw, np.float32))
