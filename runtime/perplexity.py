"""Corpus perplexity of a language-model bundle, as the literature measures it (``rnnkit eval-lm``).

The whole file is one token stream, the recurrent state carried from its first token to its last
(``streams=1``: batch 1, the number papers report) or across ``streams`` contiguous rows read in
parallel, as training reads its text (each row starts afresh, and the tail of fewer
than ``streams`` tokens is left out).  Every token is predicted, end-of-line tokens included: with
a ``WhitespaceTokenizer`` that counts them, the file starts after an end-of-line token as every
later line does (the state is the one the model has after reading ``<eos>`` from zeros), and a
file without a final newline gets its last line's token; otherwise the first token of a row is
context only.  The loss is the mean negative log-probability in nats, summed in float64;
perplexity is ``exp(loss)``.

Must not import torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .errors import InputError
from .language_model import LanguageModel
from .tokenizer import UNK_ID


@dataclass
class Perplexity:
    loss: float  # mean nats per predicted token
    perplexity: float  # exp(loss)
    tokens: int  # tokens predicted (and counted in the mean)
    streams: int  # parallel rows the file was read in (1: one state across the whole file)
    unknown: int  # predicted tokens that are <unk> (out of the vocabulary, or the corpus's own unknown token)

    def to_dict(self) -> dict:
        return {
            "loss": self.loss,
            "perplexity": self.perplexity,
            "tokens": self.tokens,
            "streams": self.streams,
            "unknown": self.unknown,
        }


def text_ids(model: LanguageModel, text: str) -> tuple[list[int], int | None]:
    """-> (the ids of ``text`` read as a file, the id of the context before its first token or None)."""
    eos = getattr(model.tokenizer, "eos_token", None)
    if eos is None:
        return model.encode_chunk(text), None
    ids = model.encode_chunk(text if text.endswith("\n") else text + "\n")
    return ids, model.tokenizer.token_id(eos)


def perplexity(
    model: LanguageModel,
    text: str,
    streams: int = 1,
    window: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> Perplexity:
    """The perplexity of ``model`` on ``text`` (see the module docstring); ``window``: tokens per
    row and step-graph call (default the bundle's ``max_length`` shared by the rows); ``progress(n)``
    after each call with the tokens it predicted."""
    if isinstance(streams, bool) or not isinstance(streams, (int, np.integer)) or streams < 1:
        raise InputError(f"streams must be an integer >= 1, got {streams!r}")
    ids, context = text_ids(model, text)
    return ids_perplexity(model, np.asarray(ids, np.int64), context, streams, window, progress)


def ids_perplexity(
    model: LanguageModel,
    ids: np.ndarray,
    context: int | None = None,
    streams: int = 1,
    window: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> Perplexity:
    # B x window <= max_length rows of logits per call: a (B, T, V) float64 block stays a few MB
    window = int(window or max(1, model.max_length // streams))
    n = len(ids) // streams
    if n < (1 if context is not None else 2):
        raise InputError(
            f"{len(ids)} tokens cannot fill {streams} stream(s) of at least 2 tokens -- give more text "
            "or fewer --streams"
        )
    rows = ids[: streams * n].reshape(streams, n)
    if context is not None:  # every row's first token is predicted from the end-of-line context
        rows = np.concatenate([np.full((streams, 1), context, np.int64), rows], axis=1)
    state = model.initial_state(streams)
    nll, counted, unknown = 0.0, 0, 0
    for start in range(0, rows.shape[1] - 1, window):
        x = np.ascontiguousarray(rows[:, start : min(start + window, rows.shape[1] - 1)])
        y = rows[:, start + 1 : start + 1 + x.shape[1]]
        logits, state = model.step(x, state)
        z = logits.astype(np.float64)
        z -= z.max(-1, keepdims=True)
        lse = np.log(np.exp(z).sum(-1))
        nll -= float((np.take_along_axis(z, y[..., None], -1)[..., 0] - lse).sum())
        counted += y.size
        unknown += int((y == UNK_ID).sum())
        if progress:
            progress(y.size)
    loss = nll / counted
    return Perplexity(loss, math.exp(min(loss, 700.0)), counted, streams, unknown)
