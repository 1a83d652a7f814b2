"""Tagging bundles end to end: export on both backends, Model.tag, CLI predict, edge cases."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import make_tagger_checkpoint, run_python, synthetic_sentences

from rnnkit.runtime import InputError, load
from rnnkit.toolkit.cli import cli

torch = pytest.importorskip("torch")

MATRIX = [(cell, bi, chars) for cell in ("rnn", "lstm", "gru") for bi in (False, True) for chars in (False, True)]


@pytest.mark.slow
@pytest.mark.parametrize("cell,bidirectional,chars", MATRIX)
def test_tagger_export_validates_on_both_backends(tmp_path, cell, bidirectional, chars):
    from rnnkit.toolkit.export_checkpoint import export_checkpoint

    ckpt = make_tagger_checkpoint(
        tmp_path / "ckpt", cell=cell, bidirectional=bidirectional, chars=chars, layers=2 if chars else 1
    )
    result = export_checkpoint(ckpt, tmp_path / "b", log=lambda m: None)
    v = result["manifest"]["validation"]["fp32"]
    assert v["passed"] and v["cases"] == 28 and max(v["max_abs_diff"].values()) < 1e-5
    assert result["manifest"]["task"] == "tag"


def test_tag_matches_torch_on_both_backends(tag_bundle):
    from rnnkit.toolkit.train_tag import load_tagger_checkpoint

    sentences, _ = synthetic_sentences(20, seed=5)
    # the manifest names the checkpoint folder without its path (no machine paths in a bundle)
    name = json.loads((tag_bundle / "manifest.json").read_text())["source"]["checkpoint"]
    ckpt = load_tagger_checkpoint(tag_bundle.parent / name)
    expected = ckpt.predict(sentences)
    for backend in ("onnxruntime", "numba"):
        got = load(tag_bundle, backend=backend).tag(sentences, batch_size=7)
        assert [g.tags for g in got] == expected
        assert [g.tokens for g in got] == sentences


def test_int8_tags_agree(tag_bundle):
    sentences, _ = synthetic_sentences(20, seed=6)
    ort = [t.tags for t in load(tag_bundle, backend="onnxruntime", int8=True).tag(sentences)]
    nb = [t.tags for t in load(tag_bundle, backend="numba", int8=True).tag(sentences)]
    agree = np.mean([a == b for x, y in zip(ort, nb) for a, b in zip(x, y)])
    assert agree >= 0.95, agree
    manifest = json.loads((tag_bundle / "manifest.json").read_text())
    assert manifest["validation"]["dev"]["unit"] == "tokens" and "int8_agreement" in manifest["validation"]["dev"]


def test_edge_cases(tag_bundle):
    model = load(tag_bundle, backend="numba")
    empty, raw, long = model.tag([[], "The film runs .", ["zzz"] * 3000])
    assert empty.tokens == [] and empty.tags == []
    assert raw.tokens == ["The", "film", "runs", "."] and len(raw.tags) == 4  # surface forms kept
    assert len(long.tags) == 3000
    mixed = model.tag([["映画", "Ünïcode", "ǅ", "🙂"]])[0]
    assert len(mixed.tags) == 4 and all(0 < s <= 1 for s in mixed.scores)
    with pytest.raises(InputError, match=r"sentence #0 has 10001 tokens, more than this bundle's max_length 10000"):
        model.tag([["a"] * 10001])
    with pytest.raises(InputError, match=r"sentence #1: every token must be a non-empty string"):
        model.tag([["ok"], ["fine", ""]])
    with pytest.raises(
        AttributeError,
        match=r"a tag bundle has no predict\(\); load a classifier bundle "
        r"\(rnnkit train classify\); this one has tag\(\)",
    ):
        model.predict(["text"])


def test_tag_on_classifier_bundle_is_refused(gru_bundle):
    with pytest.raises(
        AttributeError,
        match=r"a classify bundle has no tag\(\); load a tagger bundle "
        r"\(rnnkit train tag\); this one has predict\(\)",
    ):
        load(gru_bundle).tag(["a b"])


def test_cli_predict_tags_pretokenized_and_jsonl(tag_bundle, tmp_path):
    from click.testing import CliRunner

    src = tmp_path / "in.txt"
    src.write_text("the film runs .\nthe actor is good !\n")
    result = CliRunner().invoke(
        cli, ["predict", str(tag_bundle), "--input", str(src), "--pretokenized", "--backend", "numba"]
    )
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["tokens"] for r in rows] == [["the", "film", "runs", "."], ["the", "actor", "is", "good", "!"]]
    assert all(len(r["tags"]) == len(r["tokens"]) == len(r["scores"]) for r in rows)
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text(
        json.dumps({"tokens": ["a", "plot", "moves"]}) + "\n" + json.dumps({"text": "This is dull."}) + "\n"
    )
    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(cli, ["predict", str(tag_bundle), "--input", str(jsonl), "--output", str(out)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0]["tokens"] == ["a", "plot", "moves"] and rows[1]["tokens"] == ["This", "is", "dull", "."]


def test_cli_too_long_sentence_names_line(tag_bundle, tmp_path):
    from click.testing import CliRunner

    src = tmp_path / "in.txt"
    src.write_text("fine\n" + "x " * 10001 + "\n")
    # a bad record (docs/records.md): reported by its line, the other sentences are tagged; --strict stops
    result = CliRunner().invoke(cli, ["predict", str(tag_bundle), "--input", str(src), "--pretokenized"])
    assert result.exit_code == 0 and len(result.stdout.splitlines()) == 1
    assert f"bad record {src}:2: sentence has 10001 tokens" in result.stderr
    result = CliRunner().invoke(cli, ["predict", str(tag_bundle), "--input", str(src), "--pretokenized", "--strict"])
    assert result.exit_code == 1 and f"Error: {src}:2: sentence has 10001 tokens" in result.output


@pytest.mark.slow
def test_tagging_runtime_never_imports_torch(tag_bundle):
    code = (
        "import sys; from rnnkit.runtime import load\n"
        "for b in ('onnxruntime', 'numba'):\n    load(sys.argv[1], backend=b).tag(['the film runs .'])\n"
        "assert 'torch' not in sys.modules\nprint('ok')"
    )
    result = run_python(code, str(tag_bundle))
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_cli_inspect_tag_bundle(tag_bundle):
    from click.testing import CliRunner

    result = CliRunner().invoke(cli, ["inspect", str(tag_bundle)])
    assert result.exit_code == 0, result.output
    assert (
        "task=tag" in result.output and "char-cnn=5" in result.output and "unit" not in result.output.split("dev:")[0]
    )
