"""Encoder-decoders with attention: ``translate`` / ``nbest`` by greedy or beam search in numpy.

Two graphs (``manifest.Seq2SeqIO``): the encoder runs once per length-bucketed batch of sources,
the decoder one step at a time with its state and the encoder's context fed back
(``rnnkit.runtime.decode``).  Sources outside the vocabulary read as ``<unk>`` (``run_batch``'s
lines name them: ``Translation.unknown``); an empty source
is refused, and so is one over ``max_length`` tokens unless ``truncate=True``.  ``lookup=True``
answers sources found in the bundle's lexicon (``rnnkit export --lexicon``) from it.

Must not import torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from .decode import DEFAULT_ALPHA, Candidate, Steps, beam_search, check_options, greedy, output_limit
from .errors import InputError
from .explain import Explanation, explain_seq2seq
from .lexicon import Lexicon
from .session import Progress, Session, check_batch_size, check_truncate, length_buckets
from .tokenizer import UNK_ID


@dataclass
class Hypothesis:
    """One output of an encoder-decoder for one source."""

    output: str  # the tokens as text (joined by spaces at word level, directly at char level)
    tokens: list[str]  # target tokens, without <s> and </s>
    score: float  # ranking score: log_prob / ((5 + n) / 6) ** alpha, n = tokens + 1 (</s>)
    log_prob: float  # log-probability of the output (</s> included when finished), nats
    finished: bool = True  # False: cut at the output length limit before </s>
    truncated: int = 0  # source tokens dropped from the end before decoding (truncate=True)

    def to_dict(self) -> dict:
        d = {"output": self.output, "score": self.score}
        return {**d, "truncated": self.truncated} if self.truncated else d


@dataclass
class Translation:
    """One source's line (``EncoderDecoder.run_batch``): its best output and score[, the n best]."""

    input: str
    hypotheses: list[Hypothesis]  # best first
    nbest: bool = False  # to_dict lists every hypothesis under "nbest"
    unknown: list[str] = field(default_factory=list)  # the input's characters (or words) outside the source
    # vocabulary, distinct, in order: the model read each as <unk>

    def to_dict(self) -> dict:
        best = self.hypotheses[0]
        line = {"input": self.input, "output": best.output, "score": best.score}
        if best.truncated:  # the same key, only when it applies, as the other tasks' lines
            line["truncated"] = best.truncated
        if self.unknown:  # likewise: the output may be wrong where the model read <unk>
            line["unknown"] = list(self.unknown)
        if self.nbest:
            line["nbest"] = [h.to_dict() for h in self.hypotheses]
        return line


class EncoderDecoder(Session):
    """A ``seq2seq`` bundle: ``translate``, ``translate_one``, ``nbest``, ``encode_sources``, ``lexicon``,
    ``explain``."""

    task = "seq2seq"
    noun = "an encoder-decoder"
    verb = "translate"

    def __init__(self, bundle, backend: str = "auto", int8: bool = False, threads: int | None = None):
        super().__init__(bundle, backend, int8, threads)
        arch = bundle.manifest["architecture"]
        self.target_tokenizer = bundle.target_tokenizer
        self.vocab_size = int(arch["target_vocab_size"])
        self._steps = Steps(
            self._graph_run("encoder"),
            self._graph_run("decoder"),
            arch["cell"],
            arch["attention"],
            arch["bos_id"],
            arch["eos_id"],
            self.vocab_size,
        )
        # a beam wider than the tokens that can be generated is clamped to them (no duplicate hypotheses)
        self.max_beam = self.vocab_size - len(self._steps.never)
        self._lexicon: Lexicon | None = None  # read on first lookup

    def encode_sources(self, texts: Sequence[str], truncate: bool = False) -> list[list[int]]:
        """Source texts -> id rows.  Words / characters outside the source vocabulary become ``<unk>``
        (the model was trained with the same cut-off); a text without tokens (empty, or only spaces
        at word level) is refused, and so is a text longer than the bundle's ``max_length`` tokens
        unless ``truncate`` (its first ``max_length`` tokens are used): never silently dropped or cut
        (split long texts, e.g. into sentences)."""
        return self._encode_sources(texts, check_truncate(truncate))[0]

    def _encode_sources(self, texts: Sequence[str], truncate: bool) -> tuple[list[list[int]], list[int]]:
        return self._encode_texts(texts, truncate, "an empty source has no output, drop it from the input")

    def nbest(
        self,
        texts: Sequence[str] | str,
        n: int = 5,
        beam: int | None = None,
        alpha: float = DEFAULT_ALPHA,
        max_output_tokens: int | None = None,
        batch_size: int = 32,
        progress: Progress | None = None,
        lookup: bool = False,
        truncate: bool = False,
    ) -> list[list[Hypothesis]]:
        """The ``n`` best outputs of each text, best first, by beam search of width ``beam`` (default
        ``n``; clamped to the number of target tokens that can be generated); ``beam=1`` is greedy.

        ``alpha``: GNMT length penalty exponent (0: rank by log-probability); ``max_output_tokens``:
        output tokens per text (default ``2 x source tokens + 10``, at most 1024).  Texts are decoded
        ``batch_size`` at a time (``batch_size x beam`` decoder rows), grouped by length;
        ``progress(k)`` is called after each batch of k texts.  ``lookup``: texts found in the bundle's
        lexicon (``rnnkit export --lexicon``) get its outputs (score 0.0), the rest are decoded.
        ``truncate``: a text over ``max_length`` tokens is decoded from its first ``max_length``
        (``Hypothesis.truncated`` counts the rest) instead of refused."""
        truncate = check_truncate(truncate)
        if isinstance(texts, str):
            texts = [texts]
        if lookup:
            return self._nbest_with_lookup(
                list(texts), n, beam, alpha, max_output_tokens, batch_size, progress, truncate
            )
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
            raise InputError(f"n must be an integer >= 1, got {n!r}")
        beam = n if beam is None else beam
        check_options(beam, alpha, max_output_tokens)
        if n > beam:
            raise InputError(f"n={n} outputs need a beam of at least n, got beam={beam}")
        batch_size = check_batch_size(batch_size)
        beam = min(int(beam), self.max_beam)
        sources, dropped = self._encode_sources(texts, truncate)
        results: list[list[Hypothesis]] = [[] for _ in sources]
        for rows in length_buckets([len(s) for s in sources], batch_size):
            batch = [sources[r] for r in rows]
            limits = [output_limit(len(s), max_output_tokens) for s in batch]
            if beam == 1:
                found = [[c] for c in greedy(self._steps, batch, limits, alpha)]
            else:
                found = beam_search(self._steps, batch, limits, beam, alpha)
            for r, candidates in zip(rows, found):
                results[r] = [self._hypothesis(c, dropped[r]) for c in candidates[:n]]
            if progress:
                progress(len(rows))
        return results

    def translate(
        self,
        texts: Sequence[str] | str,
        beam: int = 5,
        alpha: float = DEFAULT_ALPHA,
        max_output_tokens: int | None = None,
        batch_size: int = 32,
        progress: Progress | None = None,
        lookup: bool = False,
        truncate: bool = False,
    ) -> list[str]:
        """The best output of each text (beam search; ``beam=1``: greedy); see ``nbest`` (whose
        hypotheses also say how many tokens ``truncate=True`` dropped from a source)."""
        return [
            h[0].output
            for h in self.nbest(texts, 1, beam, alpha, max_output_tokens, batch_size, progress, lookup, truncate)
        ]

    def translate_one(self, text: str, beam: int = 5, **options) -> str:
        """``translate`` for one text."""
        if not isinstance(text, str):
            raise InputError(
                f"translate_one takes one text (str), got {type(text).__name__}; use translate() for a list"
            )
        return self.translate([text], beam, **options)[0]

    def explain(
        self, texts: Sequence[str] | str, method: str = "attention", beam: int = 5, truncate: bool = False
    ) -> list[Explanation]:
        """Each text's best output (beam search) with the decoder's attention over the source per
        output token (``Explanation.alignment``).  See ``rnnkit.runtime.explain``."""
        return explain_seq2seq(self, texts, method, beam, check_truncate(truncate))

    def run_batch(
        self,
        items: Sequence[str],
        batch_size: int = 32,
        progress: Progress | None = None,
        truncate: bool = False,
        beam: int | None = None,
        nbest: int | None = None,
        alpha: float | None = None,
        max_output_tokens: int | None = None,
        lookup: bool = False,
    ) -> list[Translation]:
        """``nbest`` as lines (``rnnkit predict``'s): the best output of each text, and with ``nbest=N``
        the N best too (``Translation.to_dict``'s "nbest"), and the input's tokens outside the source
        vocabulary (``Translation.unknown``).  ``beam`` defaults to max(5, N), ``alpha`` to
        ``DEFAULT_ALPHA``; the batch entry point every task object has (``Session.run_batch``)."""
        n = nbest or 1
        found = self.nbest(
            items,
            n=n,
            beam=max(5, n) if beam is None else beam,
            alpha=DEFAULT_ALPHA if alpha is None else alpha,
            max_output_tokens=max_output_tokens,
            batch_size=batch_size,
            progress=progress,
            lookup=lookup,
            truncate=truncate,
        )
        return [Translation(text, h, nbest is not None, self.unknown(text)) for text, h in zip(items, found)]

    def unknown(self, text: str) -> list[str]:
        """The characters (a word-level source: the words) of ``text`` outside the source vocabulary,
        distinct, in order of appearance: the model reads each as ``<unk>`` (a digit, an accent, a
        space a G2P model never saw), so its output there is a guess."""
        return self.tokenizer.unknown(text)

    @property
    def lexicon(self) -> Lexicon:
        """The bundle's lexicon (``rnnkit export --lexicon``), read on first use."""
        if self._lexicon is None:
            record = self.bundle.manifest.get("lexicon")
            if not isinstance(record, dict) or record.get("file") not in self.bundle.manifest["files"]:
                raise InputError(
                    f"{self.bundle.path}: this bundle has no lexicon to look words up in; re-export "
                    f"it with a lexicon (export_checkpoint(..., lexicon=FILE); rnnkit export --lexicon "
                    f"FILE), or drop lookup=True"
                )
            self._lexicon = Lexicon.read(self.bundle.path / record["file"], self.bundle.tokenizer.normalize)
        return self._lexicon

    def _nbest_with_lookup(self, texts, n, beam, alpha, max_output_tokens, batch_size, progress, truncate):
        known = [self.lexicon.get(t) if isinstance(t, str) else None for t in texts]
        todo = [i for i, k in enumerate(known) if k is None]
        decoded = self.nbest(
            [texts[i] for i in todo], n, beam, alpha, max_output_tokens, batch_size, progress, truncate=truncate
        )
        results: list[list[Hypothesis]] = [[] for _ in texts]
        for i, found in zip(todo, decoded):
            results[i] = found
        for i, outputs in enumerate(known):
            if outputs is not None:
                results[i] = [
                    Hypothesis(o, o.split() if self.target_tokenizer.level == "word" else list(o), 0.0, 0.0)
                    for o in outputs[:n]
                ]
        if progress and len(texts) > len(todo):
            progress(len(texts) - len(todo))
        return results

    def _hypothesis(self, c: Candidate, truncated: int = 0) -> Hypothesis:
        vocab = self.target_tokenizer.vocab
        return Hypothesis(
            self.target_tokenizer.decode(c.ids), [vocab[i] for i in c.ids], c.score, c.log_prob, c.finished, truncated
        )

    def _warm(self) -> None:
        beam_search(self._steps, [[UNK_ID] * 3], [2], min(2, self.max_beam))
