"""The sequence tagger on the training side: padded batches of tagged sentences and batched prediction.

The model itself (``RecurrentTagger``) and its ``TaggerConfig`` live in ``rnnkit.export.nets`` /
``rnnkit.export.architecture``, read by training and export alike; they are re-exported here.
``predict_tag_ids`` is the torch oracle of the runtime's ``Model.tag`` (and of
``TagCheckpoint.predict``), kept out of ``train_tag`` so that checkpoints can predict without
importing the training loop.

Imports torch; never imported by ``rnnkit.runtime`` or at CLI import time.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from rnnkit.export.architecture import TaggerConfig as TaggerConfig
from rnnkit.export.nets import RecurrentTagger as RecurrentTagger
from rnnkit.runtime.charset import CharVocab, word_ids
from rnnkit.runtime.tokenizer import PAD_ID, WordTokenizer
from rnnkit.toolkit.conll import TaggedSentence


class Encoded:
    """Sentences as word-id arrays (+ char-id arrays), tag ids and unseen-word masks."""

    def __init__(self, sentences, tok, charset, tag_id, seen: set[str]):
        self.ids = [np.asarray(word_ids(tok, s.tokens), dtype=np.int64) for s in sentences]
        self.chars = [charset.encode_words(s.tokens) for s in sentences] if charset else None
        self.tags = [np.asarray([tag_id[t] for t in s.tags], dtype=np.int64) for s in sentences]
        self.unseen = [np.asarray([tok.normalize(t) not in seen for t in s.tokens]) for s in sentences]
        self.lengths = np.array([len(x) for x in self.ids])

    def batch(self, idx):
        lens = self.lengths[idx]
        t = int(lens.max())
        ids = np.full((len(idx), t), PAD_ID, dtype=np.int64)
        tags = np.full((len(idx), t), -100, dtype=np.int64)  # cross_entropy's ignore_index
        chars = None
        if self.chars is not None:
            chars = np.zeros((len(idx), t, max(self.chars[i].shape[1] for i in idx)), dtype=np.int64)
        for r, i in enumerate(idx):
            ids[r, : lens[r]] = self.ids[i]
            tags[r, : lens[r]] = self.tags[i]
            if chars is not None:
                c = self.chars[i]
                chars[r, : c.shape[0], : c.shape[1]] = c
        as_t = torch.from_numpy
        return as_t(ids), as_t(lens.astype(np.int64)), (as_t(chars) if chars is not None else None), as_t(tags)


@torch.no_grad()
def predict_encoded(model: RecurrentTagger, data: Encoded, batch_size: int = 128):
    model.eval()
    preds: list[np.ndarray] = [np.zeros(0, np.int64)] * len(data.ids)
    loss_sum, n = 0.0, 0
    order = np.argsort(data.lengths, kind="stable")  # similar lengths together: less padding
    for idx in (order[i : i + batch_size] for i in range(0, len(order), batch_size)):
        ids, lens, chars, tags = data.batch(idx)
        logits = model(ids, lens, chars)
        loss_sum += nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), tags.reshape(-1), ignore_index=-100, reduction="sum"
        ).item()
        n += int(lens.sum())
        best = logits.argmax(-1).numpy()
        for r, i in enumerate(idx):
            preds[i] = best[r, : lens[r]]
    return preds, loss_sum / max(n, 1)


@torch.no_grad()
def predict_tag_ids(
    model: RecurrentTagger,
    tokenizer: WordTokenizer,
    charset: CharVocab | None,
    sentences: Sequence[Sequence[str]],
    batch_size: int = 128,
) -> list[list[int]]:
    """Tag ids per token; an empty sentence gives []. (The torch oracle of ``Model.tag``.)"""
    fake = [TaggedSentence(list(s), ["_"] * len(s), "") for s in sentences]
    live = [i for i, s in enumerate(fake) if s.tokens]
    out: list[list[int]] = [[] for _ in sentences]
    if live:
        data = Encoded([fake[i] for i in live], tokenizer, charset, {"_": 0}, set())
        preds, _ = predict_encoded(model, data, batch_size)
        for i, p in zip(live, preds):
            out[i] = p.tolist()
    return out
