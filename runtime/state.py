"""Streaming state of a language model: feed text as it arrives, never re-run a prefix.

``LanguageModel.spawn_state() -> State``; ``State.run(chunk)`` feeds the chunk's tokens through the
bundle's step graph starting from the carried state and keeps the new state (the graph's
``final_*`` outputs become the next call's ``initial_*`` inputs, as the manifest's ``state``
section records); ``reset()`` returns to the initial (zero) state; ``copy()`` forks a stream
(e.g. to try several continuations of one prefix).  Each ``State`` owns its arrays, so any
number of states from one model run side by side, also from several threads; the model's
session is shared (onnxruntime sessions are thread-safe; numba runs are serialised by the model).

A state needs four things of its model, named by the ``Stepper`` protocol below (implemented by
``rnnkit.runtime.language_model.LanguageModel``); this module depends on nothing else, so the
language model imports it and never the other way round.

Chunking never changes the result: running a text in any chunks equals running it at once
(tested as a property over random chunkings, every cell and layer count).  At char level any
split of the text is a valid chunking; at word level a chunk is tokenized on its own, so split
between words (a word cut in two would become two tokens).

Must not import torch, onnxruntime or numba.
"""

from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np

from .errors import InputError


class Stepper(Protocol):
    """What a ``State`` calls on its model: the step graph, its initial state and the chunk encoder."""

    vocab_size: int  # logits per token
    max_length: int  # the longest chunk one graph call takes (longer chunks run in pieces)

    def initial_state(self, batch: int = 1) -> dict[str, np.ndarray]: ...

    def step(self, input_ids: np.ndarray, state: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]: ...

    def encode_chunk(self, chunk: str | Sequence[int]) -> list[int]: ...


class State:
    """The recurrent state of one stream (batch 1) of a language model, plus its last logits."""

    def __init__(self, model: Stepper):
        self.model = model
        self.reset()

    def reset(self) -> "State":
        """Back to the initial state (zeros, as the manifest's ``state.initial``): nothing was read."""
        self.values: dict[str, np.ndarray] = self.model.initial_state(batch=1)
        self.last_logits: np.ndarray | None = None  # (V,) logits after the last token fed; None before any
        self.tokens = 0  # tokens fed since the last reset
        return self

    def copy(self) -> "State":
        """An independent state with the same history (running one never changes the other)."""
        other = State.__new__(State)
        other.model = self.model
        other.values = {k: v.copy() for k, v in self.values.items()}
        other.last_logits = None if self.last_logits is None else self.last_logits.copy()
        other.tokens = self.tokens
        return other

    __copy__ = copy

    def __deepcopy__(self, memo) -> "State":
        return self.copy()

    def run(self, chunk: str | Sequence[int]) -> np.ndarray:
        """Feed ``chunk`` (text, or token ids) -> logits (t, V) float32, one row per token fed.

        An empty chunk feeds nothing and returns a (0, V) array.  Chunks longer than the bundle's
        ``max_length`` are run in pieces of that size (the state makes that exact)."""
        ids = self.model.encode_chunk(chunk)
        vocab = self.model.vocab_size
        if not ids:
            return np.zeros((0, vocab), np.float32)
        parts = []
        step = self.model.max_length
        for start in range(0, len(ids), step):
            piece = np.asarray([ids[start : start + step]], dtype=np.int64)  # (1, t)
            logits, self.values = self.model.step(piece, self.values)
            parts.append(logits[0])
        logits = parts[0] if len(parts) == 1 else np.concatenate(parts)
        self.last_logits = logits[-1].copy()
        self.tokens += len(ids)
        return logits

    def feed_id(self, token_id: int) -> np.ndarray:
        """Feed one token id -> its logits (V,): the generation step (``run([token_id])[0]``, with
        less Python per call: at a few hundred microseconds per step, that is measurable)."""
        if type(token_id) is not int or not 0 <= token_id < self.model.vocab_size:
            (token_id,) = check_ids([token_id], self.model.vocab_size)
        logits, self.values = self.model.step(np.array([[token_id]], np.int64), self.values)
        logits = logits[0, 0]
        self.last_logits = logits.copy()  # the caller may write into the array it is given
        self.tokens += 1
        return logits

    def __repr__(self) -> str:
        return f"State(tokens={self.tokens}, {', '.join(f'{k}{list(v.shape)}' for k, v in self.values.items())})"


def check_ids(ids: Sequence[int], vocab: int) -> list[int]:
    out = []
    for i in ids:
        if isinstance(i, (bool, np.bool_)) or not isinstance(i, (int, np.integer)) or not 0 <= int(i) < vocab:
            raise InputError(f"token id {i!r} is not an id of this model's vocabulary (0..{vocab - 1})")
        out.append(int(i))
    return out
