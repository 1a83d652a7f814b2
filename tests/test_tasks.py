"""Task objects: load() returns the task's class, run_batch equals the task's own method, and
another task's method is a helpful AttributeError (runtime/tasks.py, runtime/session.py)."""

from __future__ import annotations

import copy
import pickle

import pytest
from conftest import G2P

from rnnkit.runtime import Classifier, EncoderDecoder, InputError, LanguageModel, Model, RnnkitError, Tagger, load
from rnnkit.runtime.batch import run_items
from rnnkit.runtime.tasks import TASKS


def test_registry_names_every_task_class_once():
    assert {name: t.cls.task for name, t in TASKS.items()} == {name: name for name in TASKS}
    assert set(Model.__subclasses__()) >= {t.cls for t in TASKS.values()}


def test_classifier(gru_bundle):
    model = load(gru_bundle, backend="numba")
    assert type(model) is Classifier and isinstance(model, Model)
    texts = ["a gripping, funny film", "flat", "boring, boring film and a dull plot"]
    assert [r.to_dict() for r in model.run_batch(texts, batch_size=2)] == [p.to_dict() for p in model.predict(texts)]
    assert repr(model).startswith(f"Classifier({str(gru_bundle)!r}, backend='numba'")


def test_tagger(tag_bundle):
    model = load(tag_bundle, backend="numba")
    assert type(model) is Tagger and isinstance(model, Model)
    items = ["The film runs .", ["pre", "tokenised", "words"], []]
    assert [r.to_dict() for r in model.run_batch(items, batch_size=2)] == [t.to_dict() for t in model.tag(items)]


def test_language_model(lm_bundles):
    model = load(lm_bundles("gru", 1), backend="numba")
    assert type(model) is LanguageModel and isinstance(model, Model)
    options = dict(max_tokens=8, temperature=0.8, seed=3)
    lines = [r.to_dict() for r in model.run_batch(["the ", "a c"], **options)]
    assert lines == [{"prompt": p, "text": model.generate_text(p, **options)} for p in ("the ", "a c")]
    results, errors = run_items(model.run_batch, ["the ", "", "a"], batch_size=2)  # an empty prompt is one bad item
    assert errors == [(1, "text ('') has no tokens; a language model needs at least one token of context")]
    assert results[0] is not None and results[2] is not None


@pytest.mark.slow
def test_encoder_decoder(s2s_bundles):
    model = load(s2s_bundles("gru", "none", False), backend="numba")
    assert type(model) is EncoderDecoder and isinstance(model, Model)
    words = list(G2P)[:4]
    lines = [r.to_dict() for r in model.run_batch(words, beam=2, nbest=2)]
    found = model.nbest(words, n=2, beam=2)
    assert [line["output"] for line in lines] == [h[0].output for h in found] == model.translate(words, beam=2)
    assert [line["nbest"] for line in lines] == [[h.to_dict() for h in hs] for hs in found]
    assert "nbest" not in model.run_batch(words[:1])[0].to_dict()


def test_other_tasks_methods_are_helpful_attribute_errors(gru_bundle, tag_bundle):
    classifier, tagger = load(gru_bundle), load(tag_bundle)
    with pytest.raises(
        AttributeError,
        match=r"^a classify bundle has no generate\(\); load a language-model bundle "
        r"\(rnnkit train lm\); this one has predict\(\)$",
    ) as info:
        classifier.generate("ROMEO:")
    assert isinstance(info.value, RnnkitError) and isinstance(info.value, InputError)  # the CLI's "Error:" line
    with pytest.raises(
        AttributeError,
        match=r"a tag bundle has no translate\(\); load an encoder-decoder bundle "
        r"\(rnnkit train seq2seq\)",
    ):
        tagger.translate(["cat"])
    assert not hasattr(classifier, "spawn_state") and hasattr(classifier, "predict") and hasattr(tagger, "logits")
    with pytest.raises(AttributeError, match=r"'Classifier' object has no attribute 'no_such_method'") as plain:
        classifier.no_such_method
    assert not isinstance(plain.value, RnnkitError)  # a typo is a plain AttributeError
    copy.copy(classifier)  # __getattr__ before __init__: plain misses
    with pytest.raises(Exception):
        pickle.dumps(classifier)  # sessions do not pickle; no recursion
