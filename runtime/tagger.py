"""Sequence labelling: ``Tagger.tag(sentences) -> [Tagging]`` over a many-to-many graph.

Sentences are raw strings (split by the bundle's tokenizer, surface forms kept) or token lists;
they are batched by length and run through ``input_ids, sequence_lens[, char_ids] -> logits``
(``manifest.TaggerIO``; ``char_ids`` when the bundle has a character vocabulary).  An empty
sentence gets an empty result; one over ``max_length`` tokens is refused, or with
``truncate=True`` its first ``max_length`` tokens are tagged.

Must not import torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .errors import InputError
from .explain import Explanation, explain_tagger
from .manifest import TaggerIO
from .session import Progress, Session, check_batch_size, check_truncate, length_buckets, pad, softmax


@dataclass
class Tagging:
    tokens: list[str]  # the tokens tagged (the first max_length when truncated)
    tags: list[str]
    scores: list[float]  # probability of each chosen tag
    truncated: int = 0  # tokens dropped from the end of the sentence, untagged (truncate=True)

    def to_dict(self) -> dict:
        d = {"tokens": self.tokens, "tags": self.tags, "scores": self.scores}
        return {**d, "truncated": self.truncated} if self.truncated else d


class Tagger(Session):
    """A ``tag`` bundle: ``tag``, ``logits``, ``explain``."""

    task = "tag"
    noun = "a tagger"
    verb = "tag"

    def __init__(self, bundle, backend: str = "auto", int8: bool = False, threads: int | None = None):
        super().__init__(bundle, backend, int8, threads)
        self.labels = bundle.labels
        self.vocab_size = int(bundle.manifest["architecture"]["vocab_size"])

    def logits(self, input_ids: np.ndarray, lengths: np.ndarray, char_ids: np.ndarray | None = None) -> np.ndarray:
        """(B, T) int64 ids padded with 0, (B,) lengths >= 1[, (B, T, C) char ids] -> (B, T, num_tags) float32."""
        feeds = {
            TaggerIO.input_ids: np.ascontiguousarray(input_ids, dtype=np.int64),
            TaggerIO.sequence_lens: np.ascontiguousarray(lengths, dtype=np.int32),
        }
        if char_ids is not None:
            feeds[TaggerIO.char_ids] = np.ascontiguousarray(char_ids, dtype=np.int64)
        return self._run([TaggerIO.logits], feeds)[0]

    def _tokens(self, sentences, truncate: bool) -> tuple[list[list[str]], list[int]]:
        """Each sentence's tokens (the first ``max_length``) and how many were dropped."""
        tokens, dropped = [], []
        for i, s in enumerate(sentences):
            words = self.tokenizer.split(s) if isinstance(s, str) else list(s)
            if not all(isinstance(w, str) and w and not w.isspace() for w in words):
                raise InputError(f"sentence #{i}: every token must be a non-empty string, got {words!r}")
            dropped.append(self._dropped("sentence", i, len(words), truncate))
            tokens.append(words[: self.max_length])
        return tokens, dropped

    def tag(
        self,
        sentences: Sequence[str | Sequence[str]] | str,
        batch_size: int = 32,
        progress: Progress | None = None,
        truncate: bool = False,
    ) -> list[Tagging]:
        """Tag sentences: raw strings (split by the bundle's tokenizer) or lists of tokens.

        An empty sentence gets an empty result; a sentence longer than the bundle's
        ``max_length`` tokens is refused (split it), never silently cut -- unless ``truncate=True``:
        then its first ``max_length`` tokens are tagged and ``Tagging.truncated`` counts the rest.
        """
        truncate = check_truncate(truncate)
        if isinstance(sentences, str):
            sentences = [sentences]
        batch_size = check_batch_size(batch_size)
        tokens, dropped = self._tokens(sentences, truncate)
        results = [Tagging([], [], [], cut) for cut in dropped]
        real = [i for i, t in enumerate(tokens) if t]
        for rows in length_buckets([len(tokens[i]) for i in real], batch_size):
            batch = [tokens[real[r]] for r in rows]
            ids, lengths = pad([self.tokenizer.encode_tokens(t) for t in batch])
            chars = self.bundle.charset.encode_batch(batch) if self.bundle.charset is not None else None
            probs = softmax(self.logits(ids, lengths, chars))  # (B, T, K)
            for b, words in enumerate(batch):
                p = probs[b, : len(words)]
                best = p.argmax(-1)
                results[real[rows[b]]] = Tagging(
                    words,
                    [self.labels[k] for k in best],
                    [float(x) for x in p[np.arange(len(words)), best]],
                    dropped[real[rows[b]]],
                )
            if progress:
                progress(len(rows))
        return results

    def explain(
        self,
        sentences: Sequence[str | Sequence[str]] | str,
        method: str = "occlusion",
        token: int | None = None,
        truncate: bool = False,
    ) -> list[Explanation]:
        """Which words drive each token's tag, by occlusion (each word replaced by ``<unk>``, one batch
        call per sentence): ``alignment`` row i is the tag of token i; ``scores`` that row for
        ``token=i``, else each word's total effect.  See ``rnnkit.runtime.explain``."""
        return explain_tagger(self, sentences, method, token, check_truncate(truncate))

    def run_batch(
        self,
        items: Sequence[str | Sequence[str]],
        batch_size: int = 32,
        progress: Progress | None = None,
        truncate: bool = False,
    ) -> list[Tagging]:
        """``tag``, as the batch entry point every task object has (``Session.run_batch``)."""
        return self.tag(items, batch_size=batch_size, progress=progress, truncate=truncate)

    def _warm(self) -> None:
        ids, lengths = pad([[1, 1, 1], [1]])
        chars = np.ones((2, 3, 2), dtype=np.int64) if self.bundle.charset is not None else None
        self.logits(ids, lengths, chars)
