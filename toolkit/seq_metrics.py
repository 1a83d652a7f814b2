"""Scores of generated sequences against several references (G2P PER/WER, corpus BLEU).

* ``token_error_rate`` (PER for phones): per example the Levenshtein distance to the closest
  reference; corpus rate = sum of those edits / sum of the chosen references' lengths (the
  usual corpus-level definition, not a mean of per-word rates).
* ``sequence_error_rate`` (G2P "WER"): the share of examples whose output equals none of its
  references (a word is right or wrong as a whole).
* ``corpus_bleu``: sacrebleu's default corpus BLEU (13a tokenizer, n-grams up to 4, counts
  clipped by the maximum over references, closest reference length for the brevity penalty,
  ``exp`` smoothing of zero n-gram matches), written out here so that scoring never needs the
  package; ``tests/test_seq_metrics.py`` checks it against ``sacrebleu.corpus_bleu``.
* ``evaluate_outputs(predictions, references)``: all of the above in one dict (what recipes
  and the bundle evaluation report).

Pure stdlib (torch-free).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Sequence

from ..export.validate_seq2seq import edit_distance as edit_distance
from ..runtime.errors import InputError

MAX_ORDER = 4


def _check(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    if len(predictions) != len(references):
        raise InputError(
            f"{len(predictions)} predictions but {len(references)} reference lists -- "
            "give one list of references per prediction"
        )
    for i, refs in enumerate(references):
        if isinstance(refs, str) or not refs:
            raise InputError(f"references #{i} is {refs!r}, expected a non-empty list of strings")


def token_error_rate(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus edit rate over space-separated tokens, each output against its closest reference."""
    _check(predictions, references)
    edits = length = 0
    for hyp, refs in zip(predictions, references):
        h = hyp.split()
        e, n = min((edit_distance(h, r.split()), len(r.split())) for r in refs)
        edits, length = edits + e, length + n
    return edits / max(length, 1)


def sequence_error_rate(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Share of outputs that match none of their references (compared token by token)."""
    _check(predictions, references)
    wrong = sum(hyp.split() not in [r.split() for r in refs] for hyp, refs in zip(predictions, references))
    return wrong / max(len(predictions), 1)


# -- BLEU --------------------------------------------------------------------------------------

_13A = [  # sacrebleu's TokenizerRegexp rules, in order (mteval-v13a's tokenization)
    (re.compile(r"([\{-\~\[-\` -\&\(-\+\:-\@\/])"), r" \1 "),  # punctuation and symbols
    (re.compile(r"([^0-9])([\.,])"), r"\1 \2 "),  # period/comma unless after a digit
    (re.compile(r"([\.,])([^0-9])"), r" \1 \2"),  # period/comma unless before a digit
    (re.compile(r"([0-9])(-)"), r"\1 \2 "),  # dash after a digit
]


def tokenize_13a(line: str) -> str:
    line = line.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    if "&" in line:
        line = line.replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")
    line = f" {line} "
    for regex, repl in _13A:
        line = regex.sub(repl, line)
    return " ".join(line.split())


def _ngrams(tokens: list[str], max_order: int = MAX_ORDER) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for n in range(1, max_order + 1) for i in range(len(tokens) - n + 1))


def bleu_stats(
    predictions: Sequence[str], references: Sequence[Sequence[str]], tokenize=tokenize_13a
) -> tuple[list[int], list[int], int, int]:
    """(matches per order, totals per order, output length, reference length) summed over the corpus."""
    _check(predictions, references)
    correct, total = [0] * MAX_ORDER, [0] * MAX_ORDER
    sys_len = ref_len = 0
    for hyp, refs in zip(predictions, references):
        h = tokenize(hyp).split()
        rs = [tokenize(r).split() for r in refs]
        sys_len += len(h)
        ref_len += min((abs(len(r) - len(h)), len(r)) for r in rs)[1]  # closest, shorter on ties
        best: Counter = Counter()
        for r in rs:
            best |= _ngrams(r)  # max count over references
        for gram, n in _ngrams(h).items():
            total[len(gram) - 1] += n
            correct[len(gram) - 1] += min(n, best[gram])
    return correct, total, sys_len, ref_len


def corpus_bleu(predictions: Sequence[str], references: Sequence[Sequence[str]], smooth: str = "exp") -> float:
    """Corpus BLEU in 0..100; ``references[i]`` lists every reference of ``predictions[i]``;
    ``smooth``: ``exp`` (sacrebleu's default) or ``none``."""
    if smooth not in ("exp", "none"):
        raise InputError(f"smooth must be 'exp' or 'none', got {smooth!r}")
    correct, total, sys_len, ref_len = bleu_stats(predictions, references)
    if not any(correct):  # no match of any order: 0, not a smoothed positive score (sacrebleu #141)
        return 0.0
    precisions, factor = [0.0] * MAX_ORDER, 1.0
    for n in range(MAX_ORDER):
        if total[n] == 0:
            break
        if correct[n] == 0:
            if smooth == "exp":  # 1/2, 1/4, ... of a match for each order without one
                factor *= 2
                precisions[n] = 100.0 / (factor * total[n])
        else:
            precisions[n] = 100.0 * correct[n] / total[n]
    if sys_len == 0 or min(precisions) == 0.0:
        return 0.0
    bp = 1.0 if sys_len >= ref_len else math.exp(1 - ref_len / sys_len)
    return bp * math.exp(sum(math.log(p) for p in precisions) / MAX_ORDER)


def evaluate_outputs(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict:
    """Every score of outputs against their references: ``token_error_rate`` (PER for G2P),
    ``sequence_error_rate`` (G2P WER), ``accuracy`` (1 - that), ``bleu`` (0..100), ``count``."""
    ser = sequence_error_rate(predictions, references)
    return {
        "token_error_rate": token_error_rate(predictions, references),
        "sequence_error_rate": ser,
        "accuracy": 1.0 - ser,
        "bleu": corpus_bleu(predictions, references),
        "count": len(predictions),
    }


__all__ = [
    "edit_distance",
    "token_error_rate",
    "sequence_error_rate",
    "tokenize_13a",
    "bleu_stats",
    "corpus_bleu",
    "evaluate_outputs",
]
