"""The runtime API: both backends agree, batching keeps order, no torch, missing backends named."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import run_python, synthetic_texts

from rnnkit.runtime import InputError, load
from rnnkit.runtime.model import length_buckets, pad
from rnnkit.runtime.tolerance import FP32, INT8


@pytest.mark.parametrize("int8", [False, True])
def test_backends_agree_on_texts(gru_bundle, int8):
    texts, _ = synthetic_texts(50, seed=7)
    tol = INT8 if int8 else FP32
    ort = load(gru_bundle, backend="onnxruntime", int8=int8).predict(texts, batch_size=8)
    nb = load(gru_bundle, backend="numba", int8=int8).predict(texts, batch_size=8)
    assert [p.text for p in nb] == texts
    assert [p.label for p in nb] == [p.label for p in ort]
    a = np.array([list(p.scores.values()) for p in nb])
    b = np.array([list(p.scores.values()) for p in ort])
    assert tol.close(a, b), tol.worst(a, b)


def test_batch_size_does_not_change_answers(gru_bundle):
    texts, _ = synthetic_texts(23, seed=3)
    model = load(gru_bundle, backend="numba")
    one = [p.scores for p in model.predict(texts, batch_size=1)]
    many = [p.scores for p in model.predict(texts, batch_size=16)]
    for x, y in zip(one, many):
        assert FP32.close(np.array(list(x.values())), np.array(list(y.values())))


def test_prediction_fields(gru_bundle):
    [p] = load(gru_bundle).predict("a wonderful film")
    d = p.to_dict()
    assert set(d) == {"text", "label", "score", "scores"}
    assert d["label"] in ("neg", "pos") and abs(sum(d["scores"].values()) - 1) < 1e-5
    assert d["score"] == max(d["scores"].values())


def test_empty_text_is_refused(gru_bundle):
    with pytest.raises(InputError, match=r"text #1 \('   '\) has no tokens"):
        load(gru_bundle).predict(["fine", "   "])


def test_unknown_words_and_long_texts_work(gru_bundle):
    model = load(gru_bundle, backend="numba")
    long_text = " ".join(["wonderful"] * 3000)
    out = model.predict(["zxqv blorf ünïcödé 映画", long_text])
    assert len(out) == 2


def test_length_buckets_cover_every_row_once():
    lengths = [5, 1, 9, 3, 3, 7, 2]
    rows = np.concatenate(list(length_buckets(lengths, 3)))
    assert sorted(rows.tolist()) == list(range(len(lengths)))
    ids, lens = pad([[4, 5], [6]])
    assert ids.tolist() == [[4, 5], [6, 0]] and lens.tolist() == [2, 1]


@pytest.mark.slow
def test_runtime_never_imports_torch(gru_bundle):
    code = (
        "import sys; from rnnkit.runtime import load;"
        "m = load(sys.argv[1], backend='onnxruntime'); m.predict(['good film']);"
        "m = load(sys.argv[1], backend='numba', int8=True); m.predict(['good film']);"
        "print(json.dumps(sorted(k for k in sys.modules if k.split('.')[0] in ('torch', 'rnnkit'))))"
    )
    result = run_python("import json;" + code, str(gru_bundle))
    assert result.returncode == 0, result.stderr
    modules = json.loads(result.stdout)
    assert not any(m == "torch" or m.startswith("torch.") for m in modules)
    assert not any(m.startswith(("rnnkit.export", "rnnkit.toolkit")) for m in modules)


@pytest.mark.slow
def test_cli_predict_never_imports_torch(gru_bundle):
    code = (
        "import sys; from rnnkit.toolkit.cli import cli\n"
        "try:\n    cli(['predict', sys.argv[1], 'good film'], prog_name='rnnkit')\n"
        "except SystemExit as e:\n    assert not e.code, e.code\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    result = run_python(code, str(gru_bundle))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[0])["text"] == "good film"


BLOCK = "import sys; sys.modules[{!r}] = None\n"


@pytest.mark.slow
def test_without_onnxruntime_numba_serves(gru_bundle):
    code = (
        BLOCK.format("onnxruntime") + "from rnnkit.runtime import load\n"
        "m = load(sys.argv[1]); print(m.backend); print(m.predict(['good'])[0].label)\n"
        "try:\n    load(sys.argv[1], backend='onnxruntime')\nexcept Exception as e:\n    print(type(e).__name__, e)\n"
    )
    result = run_python(code, str(gru_bundle))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "numba"
    assert lines[2].startswith("BackendUnavailableError backend 'onnxruntime' needs the package 'onnxruntime'")
    assert "pip install onnxruntime" in lines[2]


@pytest.mark.slow
def test_without_numba_onnxruntime_serves(gru_bundle):
    code = (
        BLOCK.format("numba") + "from rnnkit.runtime import load\n"
        "m = load(sys.argv[1]); print(m.backend); m.predict(['good'])\n"
        "try:\n    load(sys.argv[1], backend='numba')\nexcept Exception as e:\n    print(type(e).__name__, e)\n"
    )
    result = run_python(code, str(gru_bundle))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "onnxruntime"
    assert lines[1].startswith("BackendUnavailableError backend 'numba' needs the package 'numba'")


def test_unknown_backend_named():
    from rnnkit.runtime.backends import resolve

    with pytest.raises(InputError, match=r"backend 'tpu' is unknown; choose one of auto, onnxruntime, numba"):
        resolve("tpu")


# -- one long-input policy: refused past max_length unless truncate=True, which the result states --------


def test_long_text_is_refused_or_truncated_and_says_so(gru_bundle):
    model = load(gru_bundle, backend="numba")
    model.max_length = 5  # as a bundle exported with max_length=5
    long_text, head = "good bad fine weak dull great film", "good bad fine weak dull"
    with pytest.raises(
        InputError,
        match=r"^text #1 has 7 tokens, more than this bundle's max_length 5; split it, "
        r"or pass truncate=True to use its first 5 tokens",
    ):
        model.predict(["fine", long_text])
    short, cut = model.predict(["fine", long_text], truncate=True)
    assert short.truncated == 0 and "truncated" not in short.to_dict()
    assert cut.truncated == 2 and cut.to_dict()["truncated"] == 2
    alone = model.predict(head)[0]  # the first max_length tokens, nothing else
    assert cut.label == alone.label and FP32.close(
        np.array(list(cut.scores.values())), np.array(list(alone.scores.values()))
    )
    with pytest.raises(InputError, match=r"truncate must be True or False, got 5"):
        model.predict([long_text], truncate=5)


def test_long_sentence_is_refused_or_truncated_and_says_so(tag_bundle):
    model = load(tag_bundle, backend="numba")
    model.max_length = 3
    with pytest.raises(
        InputError,
        match=r"^sentence #0 has 4 tokens, more than this bundle's max_length 3; split "
        r"it, or pass truncate=True",
    ):
        model.tag(["The film runs ."])
    cut, empty = model.tag(["The film runs .", []], truncate=True)
    assert cut.tokens == ["The", "film", "runs"] and len(cut.tags) == 3 and cut.truncated == 1
    assert cut.to_dict()["truncated"] == 1 and "truncated" not in empty.to_dict()
    assert cut.tags == model.tag([["The", "film", "runs"]])[0].tags


def test_long_source_is_refused_or_truncated_and_says_so(s2s_bundles):
    model = load(s2s_bundles("gru", "additive", False))
    model.max_length = 5
    with pytest.raises(
        InputError,
        match=r"^text #0 has 9 tokens, more than this bundle's max_length 5; split it, "
        r"or pass truncate=True",
    ):
        model.nbest(["horsefish"])
    cut, whole = model.nbest(["horsefish", "horse"], n=2, beam=2, truncate=True)
    assert [h.output for h in cut] == [h.output for h in whole] and all(h.truncated == 4 for h in cut)
    assert cut[0].to_dict()["truncated"] == 4 and "truncated" not in whole[0].to_dict()
    assert model.translate(["horsefish"], truncate=True) == model.translate(["horse"])


def test_language_model_chunks_long_texts_exactly(lm_bundles):
    """A language model has no length limit: State.run feeds max_length-token chunks, carrying the state."""
    from rnnkit.export.task_lm import MAX_CHUNK

    model = load(lm_bundles("lstm", 1), backend="numba")
    text = "the cat sat on the mat. " * 30  # 720 characters: three chunks of at most 256
    assert model.max_length == MAX_CHUNK < len(text)
    chunked = model.score(text)
    model.max_length = 10_000
    whole = model.score(text)
    assert len(chunked["logprobs"]) == len(text) - 1
    assert np.allclose(chunked["logprobs"], whole["logprobs"], atol=1e-5)
