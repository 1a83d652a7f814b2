"""PyTorch encoder-decoder with attention (translation, grapheme-to-phoneme).

Layout (the contract ``rnnkit.export`` reads to write the encoder graph and the decoder step
graph as native ONNX ops):

* ``source_embedding`` -> ``encoder`` (RNN/LSTM/GRU, ``layers``, optionally bidirectional with
  ``hidden // 2`` per direction) over packed source rows -> ``memory`` (B, S, hidden), zero
  past each row's length.  The decoder's initial state for layer ``i`` is the encoder's final
  state of layer ``i``, both directions concatenated (OpenNMT's bridge-free ``brnn`` scheme:
  no extra weights, and the decoder starts from a summary of the whole source).
* ``target_embedding`` -> ``decoder`` (unidirectional, ``layers``, width ``hidden``) ->
  attention over ``memory`` -> ``head``.  Attention follows Luong et al. (2015) in placement:
  it reads the decoder's *output* ``h_t`` after the step, then ``h~_t = tanh(W_c [c_t; h_t])``
  feeds the head.  Scores: ``dot`` is Luong's "general" ``h_t . (W_a m_s)``; ``additive`` is
  Bahdanau's ``v . tanh(W_q h_t + W_k m_s)``.  Both key projections (``W_a m``, ``W_k m``) depend
  on the source only, so the encoder graph computes them once as ``keys`` and each decoder
  step is a matrix-vector product over them.  ``attention="none"``: the head reads ``h_t``.
* No input feeding: the decoder's input at step t is only the embedding of token t-1, so
  teacher-forced training runs the whole target through one RNN call (fast on CPUs) and the
  exported decoder graph can run one step or a whole forced chunk.

Imports torch; never imported by ``rnnkit.runtime`` or at CLI import time.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .configs import Seq2SeqConfig as Seq2SeqConfig
from .models import CELLS

State = tuple[torch.Tensor, ...]  # (h,) or (h, c), each (layers, B, hidden)


class Attention(nn.Module):
    """Scores decoder outputs against precomputed keys and mixes ``memory`` into ``h~``."""

    def __init__(self, kind: str, hidden: int):
        super().__init__()
        self.kind = kind
        if kind == "dot":
            self.key = nn.Linear(hidden, hidden, bias=False)        # W_a
        else:
            self.key = nn.Linear(hidden, hidden, bias=False)        # W_k
            self.query = nn.Linear(hidden, hidden)                  # W_q (+ bias)
            self.v = nn.Linear(hidden, 1, bias=False)
        self.combine = nn.Linear(2 * hidden, hidden)                # W_c over [c_t; h_t]

    def keys(self, memory: torch.Tensor) -> torch.Tensor:
        return self.key(memory)                                     # (B, S, hidden)

    def forward(self, h: torch.Tensor, memory: torch.Tensor, keys: torch.Tensor,
                source_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """h (B, T, H), memory/keys (B, S, H), source_mask (B, S) bool -> (h~ (B, T, H), weights (B, T, S))."""
        if self.kind == "dot":
            scores = torch.bmm(h, keys.transpose(1, 2))                                    # (B, T, S)
        else:
            e = torch.tanh(self.query(h).unsqueeze(2) + keys.unsqueeze(1))                 # (B, T, S, H)
            scores = self.v(e).squeeze(-1)                                                 # (B, T, S)
        scores = scores.masked_fill(~source_mask.unsqueeze(1), float("-inf"))
        weights = torch.softmax(scores, dim=-1)
        context = torch.bmm(weights, memory)                                               # (B, T, H)
        return torch.tanh(self.combine(torch.cat([context, h], dim=-1))), weights


class Seq2Seq(nn.Module):
    def __init__(self, config: Seq2SeqConfig):
        super().__init__()
        self.config = c = config
        self.source_embedding = nn.Embedding(c.source_vocab_size, c.embed, padding_idx=c.padding_idx)
        self.target_embedding = nn.Embedding(c.target_vocab_size, c.embed, padding_idx=c.padding_idx)
        drop = c.dropout if c.layers > 1 else 0.0
        self.encoder = CELLS[c.cell](c.embed, c.encoder_hidden, num_layers=c.layers, batch_first=True,
                                     bidirectional=c.bidirectional, dropout=drop)
        self.decoder = CELLS[c.cell](c.embed, c.hidden, num_layers=c.layers, batch_first=True, dropout=drop)
        self.attention = Attention(c.attention, c.hidden) if c.attention != "none" else None
        self.dropout = nn.Dropout(c.dropout)
        self.head = nn.Linear(c.hidden, c.target_vocab_size)

    # -- encoder ---------------------------------------------------------------------------

    def encode(self, source_ids: torch.Tensor, source_lens: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor | None, State]:
        """source_ids (B, S) int64 padded with <pad>; source_lens (B,) >= 1
        -> memory (B, S, hidden) (0 past each length), keys (B, S, hidden) or None, decoder initial state."""
        c = self.config
        batch, time = source_ids.shape
        x = self.dropout(self.source_embedding(source_ids))
        packed = pack_padded_sequence(x, source_lens.cpu(), batch_first=True, enforce_sorted=False)
        out, final = self.encoder(packed)
        memory, _ = pad_packed_sequence(out, batch_first=True, total_length=time)
        finals = final if isinstance(final, tuple) else (final,)
        state = tuple(self._bridge(f, batch) for f in finals)
        keys = self.attention.keys(memory) if self.attention is not None else None
        return memory, keys, state

    def _bridge(self, final: torch.Tensor, batch: int) -> torch.Tensor:
        """(layers * directions, B, H/D) -> (layers, B, hidden): directions of a layer side by side."""
        c = self.config
        d = final.view(c.layers, c.directions, batch, c.encoder_hidden)
        return torch.cat([d[:, k] for k in range(c.directions)], dim=-1)

    # -- decoder ---------------------------------------------------------------------------

    def decode(self, input_ids: torch.Tensor, state: State, memory: torch.Tensor, keys: torch.Tensor | None,
               source_lens: torch.Tensor) -> tuple[torch.Tensor, State, torch.Tensor | None]:
        """input_ids (B, T): the previous target tokens (<s> first); state from ``encode`` or the
        last call -> logits (B, T, V), the state after the T tokens, attention weights (B, T, S) or None.

        One step is T = 1; teacher forcing passes the whole shifted target at once."""
        c = self.config
        x = self.dropout(self.target_embedding(input_ids))
        hx = state if c.cell == "lstm" else state[0]
        y, final = self.decoder(x, hx)                                                     # (B, T, H)
        weights = None
        if self.attention is not None:
            mask = torch.arange(memory.shape[1], device=memory.device)[None, :] < source_lens[:, None]
            y, weights = self.attention(y, memory, keys, mask)
        logits = self.head(self.dropout(y))
        return logits, (tuple(final) if isinstance(final, tuple) else (final,)), weights

    def forward(self, source_ids: torch.Tensor, source_lens: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: logits (B, T, V) for target ``input_ids`` (B, T) = <s> + target[:-1]."""
        memory, keys, state = self.encode(source_ids, source_lens)
        return self.decode(input_ids, state, memory, keys, source_lens)[0]


@torch.no_grad()
def greedy_decode(model: Seq2Seq, source_ids: torch.Tensor, source_lens: torch.Tensor,
                  max_len: torch.Tensor | int | None = None) -> list[list[int]]:
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
