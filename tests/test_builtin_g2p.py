"""The G2P bundle shipped in its own package (packages/rnnkit-g2p-cmudict): opened by name,
verified like any bundle, the same outputs on both backends, its lexicon used only when asked."""

from __future__ import annotations

import json

import pytest

from rnnkit.runtime import load
from rnnkit.runtime.builtin import find
from rnnkit.runtime.bundle import open_bundle
from rnnkit.runtime.errors import BundleError

WORDS = ["cat", "dog", "phoneme", "translation", "rnnkit", "Zyx"]


def test_opens_by_name_and_is_verified():
    bundle = open_bundle("g2p-cmudict")
    assert bundle.path == find("g2p-cmudict") and bundle.task == "seq2seq" and bundle.has_int8
    assert bundle.manifest["lexicon"]["sources"] > 100_000
    with pytest.raises(BundleError, match="no such bundle"):
        open_bundle("g2p-cmudict-nonexistent")


def test_backends_agree_and_known_words_come_out_right():
    outputs = {b: load("g2p-cmudict", backend=b, threads=1).translate(WORDS, beam=5) for b in ("onnxruntime", "numba")}
    assert outputs["onnxruntime"] == outputs["numba"]
    assert outputs["onnxruntime"][:2] == ["K AE T", "D AO G"]
    assert all(out and not any(c.isdigit() for c in out) for out in outputs["onnxruntime"])


def test_int8_encoder_matches_onnxruntime_at_batch_1():
    """int8 LSTMs (DynamicQuantizeLSTM) quantize their activations at run time with onnxruntime's
    rules on both backends: onnxruntime takes one parameter set per batch, numba one per row, the
    same at batch 1, so the int8 encoder's LSTM outputs agree to fp32 accuracy there.  The
    attention keys are a DynamicQuantizeMatMul of those outputs: a 1e-7 difference can move one
    activation across a rounding boundary, one quantization step (INT8 tolerance)."""
    import numpy as np

    from rnnkit.runtime.backends import open_session
    from rnnkit.runtime.tolerance import FP32, INT8

    model = load("g2p-cmudict", backend="onnxruntime", threads=1)
    bundle = open_bundle("g2p-cmudict")
    graph, path = bundle.graph(int8=True, name="encoder"), bundle.model_path(int8=True, name="encoder")
    sessions = {b: open_session(graph, path, b, 1) for b in ("onnxruntime", "numba")}
    names = [o.name for o in sessions["onnxruntime"].get_outputs()]
    for word in WORDS:
        ids = np.array([model.tokenizer.encode(word)], np.int64)
        feeds = {"source_ids": ids, "source_lens": np.array([ids.shape[1]], np.int32)}
        want, got = (dict(zip(names, sessions[b].run(names, feeds))) for b in ("onnxruntime", "numba"))
        for name in names:
            tol = INT8 if name == "keys" else FP32
            assert tol.close(got[name], want[name]), f"{word}: {name} off by {tol.worst(got[name], want[name]):.3g}"


@pytest.mark.slow
def test_lookup_answers_dictionary_words_from_the_lexicon():
    model = load("g2p-cmudict", backend="onnxruntime", threads=1)
    looked = model.nbest(["Hello", "rnnkit"], n=2, beam=2, lookup=True)
    assert [h.output for h in looked[0]] == ["HH AH L OW", "HH EH L OW"] and looked[0][0].score == 0.0
    assert looked[1][0].output == model.translate(["rnnkit"], beam=2)[0] and looked[1][0].score < 0


def test_predict_cli_by_name():
    from click.testing import CliRunner

    from rnnkit.toolkit.cli import cli

    r = CliRunner().invoke(cli, ["predict", "g2p-cmudict", "cat", "--beam", "1"])
    assert r.exit_code == 0, r.output
    line = json.loads(r.output)
    assert line["input"] == "cat" and line["output"] == "K AE T" and -1.0 < line["score"] < 0
