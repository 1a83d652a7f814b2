"""Encoder-decoders on the training side: padded batches, greedy decoding in torch, decoded texts.

The model itself (``Seq2Seq``) and its ``Seq2SeqConfig`` live in ``rnnkit.export.nets`` /
``rnnkit.export.architecture``, read by training and export alike; they are re-exported here.
``greedy_decode`` is the torch oracle of the runtime's ONNX decoding and the dev metric of every
training epoch; ``decode_texts`` serves ``Seq2SeqCheckpoint.translate`` and the dev evaluation.

Imports torch; never imported by ``rnnkit.runtime`` or at CLI import time.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from rnnkit.export.architecture import Seq2SeqConfig as Seq2SeqConfig
from rnnkit.export.nets import Attention as Attention
from rnnkit.export.nets import Seq2Seq as Seq2Seq
from rnnkit.runtime.tokenizer import BOS_ID, EOS_ID, CharTokenizer, WordTokenizer, pad_ids

EVAL_BATCH = 256  # pairs per no-grad batch (dev loss and greedy decoding)

Tokenizer = CharTokenizer | WordTokenizer


@torch.no_grad()
def greedy_decode(
    model: Seq2Seq, source_ids: torch.Tensor, source_lens: torch.Tensor, max_len: torch.Tensor | int | None = None
) -> list[list[int]]:
    """Batched greedy decoding: the arg-max token at each step, fed back as the next input.

    ``max_len``: tokens allowed per row (an int or a (B,) tensor; default ``2 * source_len + 10``,
    enough for G2P and sentence translation, and a bound on runaway repetition).  Returns per row
    the ids before ``</s>`` (``</s>`` itself excluded), cut at the row's ``max_len``.  A torch
    oracle for the runtime's ONNX decoding, and the dev metric of every training epoch."""
    c = model.config
    was_training = model.training
    model.eval()
    batch = source_ids.shape[0]
    limit = (2 * source_lens + 10) if max_len is None else torch.as_tensor(max_len).expand(batch)
    memory, keys, state = model.encode(source_ids, source_lens)
    prev = torch.full((batch, 1), c.bos_id, dtype=torch.long)
    done = torch.zeros(batch, dtype=torch.bool)
    steps = []
    for t in range(int(limit.max())):
        logits, state, _ = model.decode(prev, state, memory, keys, source_lens)
        prev = logits[:, -1].argmax(-1, keepdim=True)
        steps.append(prev[:, 0])
        done |= (prev[:, 0] == c.eos_id) | (t + 1 >= limit)
        if bool(done.all()):
            break
    model.train(was_training)
    out = torch.stack(steps, 1).tolist() if steps else [[] for _ in range(batch)]
    rows = []
    for row, n in zip(out, limit.tolist()):
        row = row[:n]
        rows.append(row[: row.index(c.eos_id)] if c.eos_id in row else row)
    return rows


def tensors(sources: list[list[int]], targets: list[list[int]] | None = None):
    """Padded batch: source ids (B, S), lengths int64 (B,), and with targets the decoder input
    ``<s> t`` and the expected output ``t </s>`` (B, T+1)."""
    src, lens = pad_ids(sources)
    out = (torch.from_numpy(src), torch.from_numpy(lens).long())
    if targets is None:
        return out
    inp, _ = pad_ids([[BOS_ID] + t for t in targets])
    gold, _ = pad_ids([t + [EOS_ID] for t in targets])
    return out + (torch.from_numpy(inp), torch.from_numpy(gold))


def by_length(rows: list[list[int]]) -> list[np.ndarray]:
    order = np.argsort([len(r) for r in rows], kind="stable")
    return [order[i : i + EVAL_BATCH] for i in range(0, len(order), EVAL_BATCH)]


def decode_texts(
    model: Seq2Seq, src_tok: Tokenizer, tgt_tok: Tokenizer, sources: Sequence[str], max_len: int | None = None
) -> list[str]:
    """Greedy outputs of ``sources`` (batched by length, returned in input order); a source
    with no tokens gives ''."""
    rows = [src_tok.encode(s) for s in sources]
    out = [""] * len(rows)
    keep = [i for i, r in enumerate(rows) if r]
    for idx in by_length([rows[i] for i in keep]):
        ids = [keep[i] for i in idx]
        src, lens = tensors([rows[i] for i in ids])
        for i, hyp in zip(ids, greedy_decode(model, src, lens, max_len)):
            out[i] = tgt_tok.decode_target(hyp)
    return out
