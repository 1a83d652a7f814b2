"""PER / WER against all references, and the hand-written corpus BLEU against sacrebleu (torch-free)."""

from __future__ import annotations

import numpy as np
import pytest

from rnnkit.runtime.errors import InputError
from rnnkit.toolkit.seq_metrics import (
    corpus_bleu,
    edit_distance,
    evaluate_outputs,
    sequence_error_rate,
    token_error_rate,
    tokenize_13a,
)

sacrebleu = pytest.importorskip("sacrebleu")  # in the `test` extra: always runs in CI

WORDS = (
    "le chat chien est sur la table maison il elle a mangé grand petit rouge 3 10,000 1.5 U.S. l'eau "
    "qu'il c'est-à-dire don't \"oui\" (non) & < > - -- . , ! ? ; : / $ %"
).split()


def test_edit_distance():
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance([], ["a", "b"]) == 2
    assert edit_distance(["a", "b"], ["a", "b"]) == 0
    assert edit_distance("ab", "ba") == 2  # plain Levenshtein: no transposition


def test_per_uses_the_closest_reference_and_corpus_sums():
    hyps = ["AE B EY", "K AE T"]
    refs = [["AE B IY", "AE B EY"], ["K AE T S"]]  # first word: second reference matches exactly
    assert token_error_rate(hyps, refs) == pytest.approx((0 + 1) / (3 + 4))
    assert sequence_error_rate(hyps, refs) == 0.5
    scores = evaluate_outputs(hyps, refs)
    assert scores["accuracy"] == 0.5 and scores["count"] == 2
    # the closest reference is the one with fewest edits, and its length is the denominator
    assert token_error_rate(["A"], [["A B C D", "X"]]) == pytest.approx(1 / 1)
    with pytest.raises(InputError, match="2 predictions but 1 reference"):
        token_error_rate(hyps, refs[:1])
    with pytest.raises(InputError, match="non-empty list"):
        sequence_error_rate(["a"], ["a"])  # a bare string is not a list of references


def test_13a_tokenizer_matches_sacrebleu():
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    ref = Tokenizer13a()
    for s in [
        "Hello, world.",
        "It costs $1,000.50 -- really?",
        "U.S.-based & co.",
        "l'eau (chaude) 3-4",
        "a&quot;b &amp; c",
        "end.",
        " spaced   out ",
    ]:
        assert tokenize_13a(s) == ref(s), s


def random_corpus(rng, n, refs_per):
    def sent():
        return " ".join(rng.choice(WORDS, size=int(rng.integers(1, 14))))

    hyps = [sent() for _ in range(n)]
    refs = [[sent() for _ in range(refs_per)] for _ in range(n)]
    # make some n-grams match: copy a stretch of a reference into half of the outputs
    for i in range(0, n, 2):
        w = refs[i][0].split()
        hyps[i] = " ".join(w[: int(rng.integers(1, len(w) + 1))] + hyps[i].split()[:3])
    return hyps, refs


@pytest.mark.parametrize("seed, refs_per", [(0, 1), (1, 2), (2, 3), (3, 1)])
def test_corpus_bleu_matches_sacrebleu(seed, refs_per):
    rng = np.random.default_rng(seed)
    for n in (1, 3, 40):
        hyps, refs = random_corpus(rng, n, refs_per)
        want = sacrebleu.corpus_bleu(hyps, [list(r) for r in zip(*refs)]).score
        assert corpus_bleu(hyps, refs) == pytest.approx(want, abs=1e-9), (n, hyps, refs)


def test_bleu_edge_cases_match_sacrebleu():
    cases = [
        (["the cat sat on the mat"], [["the cat sat on the mat"]]),  # perfect: 100
        (["the cat"], [["the cat sat on the mat"]]),  # no 3-/4-grams: 0
        (["a b c x e"], [["a b c d x y z"]]),  # zero 4-gram matches: exp smoothing
        (["x y z w"], [["a b c d"]]),  # nothing matches
        (["one two three four five six"], [["one two", "one two three four five six seven"]]),  # closest length
        ([""], [["a b c d"]]),  # empty output
    ]
    for hyps, refs in cases:
        want = sacrebleu.corpus_bleu(hyps, [list(r) for r in zip(*refs)]).score
        assert corpus_bleu(hyps, refs) == pytest.approx(want, abs=1e-9), (hyps, refs)
    assert corpus_bleu(["the cat sat on the mat"], [["the cat sat on the mat"]]) == pytest.approx(100.0)
    # without smoothing, a corpus with no 4-gram match scores 0
    assert corpus_bleu(["a b c x e"], [["a b c d x y z"]], smooth="none") == 0.0
    assert corpus_bleu(["a b c x e"], [["a b c d x y z"]]) > 0.0
