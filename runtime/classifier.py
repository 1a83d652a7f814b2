"""Text classification: ``Classifier.predict(texts) -> [Prediction]`` over a many-to-one graph.

Texts are tokenized, batched by length (little padding computed), run through the graph's
``input_ids, sequence_lens -> logits`` contract (``manifest.ClassifierIO``) and softmaxed in
numpy; results come back in the caller's order.  A text over the bundle's ``max_length`` tokens
is refused, or with ``truncate=True`` classified on its first ``max_length`` tokens.

Must not import torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .explain import Explanation, explain_classifier
from .manifest import ClassifierIO
from .session import Progress, Session, check_batch_size, check_truncate, length_buckets, pad, softmax


@dataclass
class Prediction:
    text: str
    label: str
    score: float  # probability of `label`
    scores: dict[str, float]  # probability of every label, in the bundle's label order
    truncated: int = 0  # tokens dropped from the end of the text (truncate=True); 0: all were read

    def to_dict(self) -> dict:
        d = {"text": self.text, "label": self.label, "score": self.score, "scores": self.scores}
        return {**d, "truncated": self.truncated} if self.truncated else d


class Classifier(Session):
    """A ``classify`` bundle: ``predict``, ``logits``, ``encode``, ``explain``."""

    task = "classify"
    noun = "a classifier"
    verb = "predict"

    def __init__(self, bundle, backend: str = "auto", int8: bool = False, threads: int | None = None):
        super().__init__(bundle, backend, int8, threads)
        self.labels = bundle.labels
        self.vocab_size = int(bundle.manifest["architecture"]["vocab_size"])

    def logits(self, input_ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """(B, T) int64 ids padded with 0, (B,) lengths >= 1 -> (B, num_labels) float32."""
        feeds = {
            ClassifierIO.input_ids: np.ascontiguousarray(input_ids, dtype=np.int64),
            ClassifierIO.sequence_lens: np.ascontiguousarray(lengths, dtype=np.int32),
        }
        return self._run([ClassifierIO.logits], feeds)[0]

    def encode(self, texts: Sequence[str], truncate: bool = False) -> list[list[int]]:
        """Texts -> id rows; a text over ``max_length`` tokens is refused unless ``truncate``."""
        return self._encode(texts, check_truncate(truncate))[0]

    def _encode(self, texts: Sequence[str], truncate: bool) -> tuple[list[list[int]], list[int]]:
        return self._encode_texts(
            texts, truncate, "empty or whitespace-only texts cannot be classified, drop them from the input"
        )

    def predict(
        self, texts: Sequence[str] | str, batch_size: int = 32, progress: Progress | None = None, truncate: bool = False
    ) -> list[Prediction]:
        """Classify texts; ``progress(n)`` is called after each batch with its size.  A text of more
        than ``max_length`` tokens is refused, or with ``truncate=True`` classified on its first
        ``max_length`` tokens (``Prediction.truncated`` says how many were dropped)."""
        if isinstance(texts, str):
            texts = [texts]
        batch_size = check_batch_size(batch_size)
        encoded, dropped = self._encode(texts, check_truncate(truncate))
        probs = np.empty((len(texts), len(self.labels)), dtype=np.float32)
        for rows in length_buckets([len(ids) for ids in encoded], batch_size):
            ids, lengths = pad([encoded[r] for r in rows])
            probs[rows] = softmax(self.logits(ids, lengths))
            if progress:
                progress(len(rows))
        best = probs.argmax(axis=1)
        return [
            Prediction(text, self.labels[b], float(p[b]), {l: float(x) for l, x in zip(self.labels, p)}, cut)
            for text, b, p, cut in zip(texts, best, probs, dropped)
        ]

    def explain(
        self, texts: Sequence[str] | str, method: str = "occlusion", truncate: bool = False
    ) -> list[Explanation]:
        """Which tokens decided each text's prediction: ``method="occlusion"`` (any classifier: each
        token replaced by ``<unk>``, one batch call per text) or ``"attention"`` (a classifier with
        ``pooling="attention"``: its pooling weights).  See ``rnnkit.runtime.explain``."""
        return explain_classifier(self, texts, method, check_truncate(truncate))

    def run_batch(
        self, items: Sequence[str], batch_size: int = 32, progress: Progress | None = None, truncate: bool = False
    ) -> list[Prediction]:
        """``predict``, as the batch entry point every task object has (``Session.run_batch``)."""
        return self.predict(items, batch_size=batch_size, progress=progress, truncate=truncate)

    def _warm(self) -> None:
        self.logits(*pad([[1, 1, 1], [1]]))
