"""The runtime's public object: a loaded bundle plus a backend session, with task methods.

``load(bundle, backend="auto", int8=False, threads=None) -> Model``;
``Model.predict(texts)`` for classification bundles.  Batches are formed by length
bucketing (texts sorted by token count, so little padding is computed) and results come
back in the caller's order.

Must not import torch.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np

from . import backends
from .bundle import Bundle, open_bundle
from .errors import InputError
from .manifest import ClassifierIO, TaggerIO


@dataclass
class Prediction:
    text: str
    label: str
    score: float                 # probability of `label`
    scores: dict[str, float]     # probability of every label, in the bundle's label order

    def to_dict(self) -> dict:
        return {"text": self.text, "label": self.label, "score": self.score, "scores": self.scores}


@dataclass
class Tagging:
    tokens: list[str]
    tags: list[str]
    scores: list[float]          # probability of each chosen tag

    def to_dict(self) -> dict:
        return {"tokens": self.tokens, "tags": self.tags, "scores": self.scores}


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


class Model:
    def __init__(self, bundle: Bundle, backend: str = "auto", int8: bool = False, threads: int | None = None):
        self.bundle = bundle
        self.backend = backends.resolve(backend)
        self.int8 = int8
        self.threads = threads
        self.tokenizer = bundle.tokenizer
        self.labels = bundle.labels
        self.max_length = int(bundle.manifest["graph"]["max_length"])
        self.session = backends.open_session(bundle.graph(int8), bundle.model_path(int8), self.backend, threads)

    def __repr__(self) -> str:
        return (f"Model({str(self.bundle.path)!r}, task={self.bundle.task!r}, backend={self.backend!r}, "
                f"int8={self.int8})")

    # -- low level -----------------------------------------------------------------------
    def logits(self, input_ids: np.ndarray, lengths: np.ndarray, char_ids: np.ndarray | None = None) -> np.ndarray:
        """(B, T) int64 ids padded with 0, (B,) lengths >= 1 [, (B, T, C) char ids] ->
        (B, num_labels) or (B, T, num_tags) float32."""
        feeds = {ClassifierIO.input_ids: np.ascontiguousarray(input_ids, dtype=np.int64),
                 ClassifierIO.sequence_lens: np.ascontiguousarray(lengths, dtype=np.int32)}
        if char_ids is not None:
            feeds[TaggerIO.char_ids] = np.ascontiguousarray(char_ids, dtype=np.int64)
        return self.session.run([ClassifierIO.logits], feeds)[0]

    def _require_task(self, task: str, method: str) -> None:
        if self.bundle.task != task:
            other = {"classify": "predict()", "tag": "tag()"}[self.bundle.task]
            raise InputError(f"{self.bundle.path}: a {self.bundle.task} bundle has no {method}; use {other}")

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        encoded = []
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise InputError(f"text #{i} is {type(text).__name__}, expected str")
            ids = self.tokenizer.encode(text)[: self.max_length]
            if not ids:
                raise InputError(f"text #{i} ({text!r}) has no tokens; empty or whitespace-only texts "
                                 f"cannot be classified, drop them from the input")
            encoded.append(ids)
        return encoded

    # -- classification ------------------------------------------------------------------
    def predict(self, texts: Sequence[str] | str, batch_size: int = 32,
                progress: Callable[[int], None] | None = None) -> list[Prediction]:
        """Classify texts; ``progress(n)`` is called after each batch with its size."""
        self._require_task("classify", "predict()")
        if isinstance(texts, str):
            texts = [texts]
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        encoded = self.encode(texts)
        probs = np.empty((len(texts), len(self.labels)), dtype=np.float32)
        for rows in length_buckets([len(ids) for ids in encoded], batch_size):
            ids, lengths = pad([encoded[r] for r in rows])
            probs[rows] = softmax(self.logits(ids, lengths))
            if progress:
                progress(len(rows))
        best = probs.argmax(axis=1)
        return [Prediction(text, self.labels[b], float(p[b]), {l: float(x) for l, x in zip(self.labels, p)})
                for text, b, p in zip(texts, best, probs)]

    # -- sequence labelling ----------------------------------------------------------------
    def tag(self, sentences: Sequence[str | Sequence[str]] | str, batch_size: int = 32,
            progress: Callable[[int], None] | None = None) -> list[Tagging]:
        """Tag sentences: raw strings (split by the bundle's tokenizer) or lists of tokens.

        An empty sentence gets an empty result; a sentence longer than the bundle's
        ``max_length`` tokens is refused (split it), never silently cut.
        """
        self._require_task("tag", "tag()")
        if isinstance(sentences, str):
            sentences = [sentences]
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        tokens = []
        for i, s in enumerate(sentences):
            words = self.tokenizer.split(s) if isinstance(s, str) else list(s)
            if not all(isinstance(w, str) and w and not w.isspace() for w in words):
                raise InputError(f"sentence #{i}: every token must be a non-empty string, got {words!r}")
            if len(words) > self.max_length:
                raise InputError(f"sentence #{i} has {len(words)} tokens, more than this bundle's max_length "
                                 f"{self.max_length}; split it (or re-export with a larger --max-length)")
            tokens.append(words)
        results = [Tagging([], [], []) for _ in tokens]
        real = [i for i, t in enumerate(tokens) if t]
        for rows in length_buckets([len(tokens[i]) for i in real], batch_size):
            batch = [tokens[real[r]] for r in rows]
            ids, lengths = pad([self.tokenizer.encode_tokens(t) for t in batch])
            chars = self.bundle.charset.encode_batch(batch) if self.bundle.charset is not None else None
            probs = softmax(self.logits(ids, lengths, chars))                    # (B, T, K)
            for b, words in enumerate(batch):
                p = probs[b, : len(words)]
                best = p.argmax(-1)
                results[real[rows[b]]] = Tagging(words, [self.labels[k] for k in best],
                                                 [float(x) for x in p[np.arange(len(words)), best]])
            if progress:
                progress(len(rows))
        return results

    def warmup(self) -> float:
        """Run one tiny batch (compiles numba kernels or fills caches); returns seconds taken."""
        start = time.perf_counter()
        ids, lengths = pad([[1, 1, 1], [1]])
        chars = np.ones((2, 3, 2), dtype=np.int64) if self.bundle.charset is not None else None
        self.logits(ids, lengths, chars)
        return time.perf_counter() - start


def pad(sequences: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad with <pad> = 0 -> ((B, T) int64, (B,) int32)."""
    lengths = np.array([len(s) for s in sequences], dtype=np.int32)
    ids = np.zeros((len(sequences), int(lengths.max())), dtype=np.int64)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = seq
    return ids, lengths


def length_buckets(lengths: Sequence[int], batch_size: int) -> Iterable[np.ndarray]:
    """Row indices in batches of similar length (stable sort keeps equal lengths in order)."""
    order = np.argsort(np.asarray(lengths), kind="stable")
    for start in range(0, len(order), batch_size):
        yield order[start:start + batch_size]


def load(path: str | os.PathLike, backend: str = "auto", int8: bool = False, threads: int | None = None) -> Model:
    """Open and verify a bundle, then start a session on the chosen backend."""
    return Model(open_bundle(path), backend=backend, int8=int8, threads=threads)
