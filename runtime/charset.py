"""Character vocabulary for the tagger's character features, and word-id lookup of given tokens.

Shared by training (``rnnkit.toolkit``) and serving (``rnnkit.runtime``), like the tokenizer.
A word becomes char ids after NFKC normalisation with case kept (capitals are the best cue
for proper nouns); ``<pad>`` = 0, ``<unk>`` = 1 for characters never seen in training (other
scripts, emoji).  Words longer than ``max_chars`` (default 32) keep their first
``max_chars // 2`` and last ``max_chars - max_chars // 2`` characters: prefixes and suffixes
carry the morphology, and a fixed cap bounds the ``chars`` axis of a batch.  The vocabulary
is built deterministically (frequency, then code point).

Pure stdlib + numpy: must not import torch, onnxruntime or numba.
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from typing import Iterable, Sequence

import numpy as np

from .errors import BundleError, InputError
from .tokenizer import PAD, UNK, UNK_ID, Normalization, WordTokenizer, pad_ids, ranked_vocab

MAX_CHARS = 32  # cap on characters per word (first 16 + last 16 kept)
CHARSET_KEYS = {"chars", "normalization", "max_chars"}


class CharVocab:
    """``chars[i]`` is the character with id ``i`` (``chars[0]`` = <pad>, ``chars[1]`` = <unk>)."""

    def __init__(
        self, chars: Sequence[str] = (PAD, UNK), normalization: Normalization = "NFKC", max_chars: int = MAX_CHARS
    ):
        self.chars = list(chars)
        self.normalization = normalization
        self.max_chars = int(max_chars)
        self._index = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def build(
        cls, words: Iterable[str], min_freq: int = 1, max_size: int | None = None, max_chars: int = MAX_CHARS
    ) -> "CharVocab":
        counts: Counter[str] = Counter()
        vocab = cls(max_chars=max_chars)
        for w in words:
            counts.update(vocab.normalize(w))
        return cls(ranked_vocab(counts, max_size, min_freq), max_chars=max_chars)

    @property
    def size(self) -> int:
        return len(self.chars)

    def normalize(self, word: str) -> str:
        return unicodedata.normalize(self.normalization, word)

    def encode_word(self, word: str, max_chars: int | None = None) -> list[int]:
        cap = self.max_chars if max_chars is None else max_chars
        w = self.normalize(word)
        if len(w) > cap:  # keep prefix and suffix
            w = w[: cap // 2] + w[len(w) - (cap - cap // 2) :]
        return [self._index.get(c, UNK_ID) for c in w]

    def encode_words(self, words: Sequence[str], max_chars: int | None = None) -> np.ndarray:
        """-> int64 (N, C), C = the longest encoded word (at least 1), padded with 0.
        ``max_chars`` (default: the vocabulary's own) may only lower the cap."""
        cap = self.max_chars if max_chars is None else min(int(max_chars), self.max_chars)
        if cap < 1:
            raise InputError(f"max_chars must be >= 1, got {max_chars}")
        rows = [self.encode_word(w, cap) for w in words]
        for i, (w, r) in enumerate(zip(words, rows)):
            if not r:
                raise InputError(f"word #{i} ({w!r}) is empty -- every token needs at least one character")
        out = np.zeros((len(rows), max((len(r) for r in rows), default=1)), dtype=np.int64)
        for i, r in enumerate(rows):
            out[i, : len(r)] = r
        return out

    def encode_batch(self, sentences: Sequence[Sequence[str]]) -> np.ndarray:
        """-> char_ids int64 (B, T, C) for ``TaggerIO.char_ids``; rows past a sentence are 0."""
        enc = [self.encode_words(s) if len(s) else np.zeros((0, 1), np.int64) for s in sentences]
        t = max((e.shape[0] for e in enc), default=0)
        c = max((e.shape[1] for e in enc), default=1)
        out = np.zeros((len(enc), t, c), dtype=np.int64)
        for i, e in enumerate(enc):
            out[i, : e.shape[0], : e.shape[1]] = e
        return out

    def to_dict(self) -> dict:
        return {"chars": list(self.chars), "normalization": self.normalization, "max_chars": self.max_chars}

    @classmethod
    def from_dict(cls, d: dict, source: str = "manifest.json") -> "CharVocab":
        if not isinstance(d, dict):
            raise BundleError(f"{source}: 'charset' is {type(d).__name__}, expected an object -- re-export the bundle")
        problems = []
        missing = sorted(CHARSET_KEYS - d.keys())
        if missing:
            problems.append(f"'charset' lacks key(s) {', '.join(map(repr, missing))}")
        unknown = sorted(d.keys() - CHARSET_KEYS)
        if unknown:
            problems.append(f"'charset' has unknown key(s) {', '.join(map(repr, unknown))}")
        chars = d.get("chars")
        if "chars" in d:
            if not isinstance(chars, list):
                problems.append(f"'charset.chars' is {type(chars).__name__}, expected a list of strings")
            else:
                if chars[:2] != [PAD, UNK]:
                    problems.append(f"'charset.chars' starts with {chars[:2]!r}, expected {[PAD, UNK]!r}")
                bad = [i for i, c in enumerate(chars[2:], 2) if not isinstance(c, str) or len(c) != 1]
                if bad:
                    problems.append(f"'charset.chars' entries at index {bad[:5]} are not single characters")
                if len(set(map(str, chars))) != len(chars):
                    problems.append("'charset.chars' has duplicate entries")
        if "normalization" in d and d["normalization"] not in ("NFC", "NFKC", "NFD", "NFKD"):
            problems.append(f"'charset.normalization' is {d['normalization']!r}, expected one of NFC, NFKC, NFD, NFKD")
        mc = d.get("max_chars")
        if "max_chars" in d and (not isinstance(mc, int) or isinstance(mc, bool) or mc < 1):
            problems.append(f"'charset.max_chars' is {mc!r}, expected an integer >= 1")
        if problems:
            raise BundleError(
                f"{source}: " + "; ".join(problems) + " -- re-export the bundle or retrain; "
                "the charset section must come from CharVocab.to_dict()"
            )
        return cls(d["chars"], normalization=d["normalization"], max_chars=d["max_chars"])  # all present: checked


def word_ids(tokenizer: WordTokenizer, tokens: Sequence[str]) -> list[int]:
    """Ids of pre-tokenised words: each token normalised as ``WordTokenizer`` normalises text
    (NFKC, optional lower-casing) and looked up whole, never split by the tokenizer's regex."""
    return tokenizer.encode_tokens(tokens)


def encode_sentences(tokenizer: WordTokenizer, sentences: Sequence[Sequence[str]]) -> tuple[np.ndarray, np.ndarray]:
    """-> input_ids int64 (B, T) padded with 0, sequence_lens int32 (B,) (0 for an empty sentence:
    callers must not feed those to a graph, whose RNN ops need lengths >= 1)."""
    if isinstance(sentences, str) or (len(sentences) and isinstance(sentences[0], str)):
        raise InputError("expected a list of sentences, each a list of tokens -- wrap one sentence in a list")
    return pad_ids([word_ids(tokenizer, s) for s in sentences])
