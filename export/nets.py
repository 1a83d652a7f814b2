"""The torch models rnnkit trains and exports, one class per task.

* ``RecurrentClassifier`` (classify): ``embedding`` -> ``rnn`` -> pooling (last / mean / max /
  ``attention``) -> ``head``.
* ``RecurrentTagger`` (tag): ``embedding`` [+ ``char_embedding`` -> ``char_conv``, a char CNN per
  word: Ma & Hovy 2016 without the CRF; max over the word's real characters, -inf on padding
  chars, so the padded width never changes a word] -> ``rnn`` -> per-token ``head``, 0 past a
  sentence's length.
* ``RecurrentLM`` (lm): ``embedding`` -> unidirectional ``rnn`` -> vocabulary ``head``;
  ``forward(ids, lengths, state)`` takes and returns the recurrent state (``(h, c)`` for LSTM,
  ``(h,)`` otherwise, each ``(layers, B, H)``): the exported graph's ``initial_* -> final_*``.
* ``Seq2Seq`` (seq2seq): ``source_embedding`` -> ``encoder`` (bidirectional: ``hidden // 2`` per
  direction) -> ``memory``; the encoder's per-layer final states, directions side by side, are
  the decoder's initial states (OpenNMT's bridge-free ``brnn``); ``target_embedding`` ->
  ``decoder`` -> ``attention`` over ``memory`` (Luong placement: it reads the decoder's output
  ``h_t``, then ``h~ = tanh(W_c [c_t; h_t])``; scores ``dot`` = Luong's "general" ``h . (W_a m)``,
  ``additive`` = Bahdanau's ``v . tanh(W_q h + W_k m)``) -> ``head``.  Both key projections
  depend on the source only, so ``encode`` computes them once as ``keys``.  No input feeding:
  teacher forcing runs the whole target through one RNN call, and the exported decoder graph
  runs one step or a forced chunk alike.

The attribute names are the contract the graph writers read (``rnnkit.export.task_*`` write the
same computation as native ONNX ops from ``state_dict()``).  Ragged batches go through
``pack_padded_sequence``, so every row gives exactly what it gives alone and a bidirectional
pass never reads padding.  They live in ``rnnkit.export`` (not the toolkit) so that training and
export read one definition while the imports run one way: runtime <- export <- toolkit.

Imports torch; never imported by ``rnnkit.runtime`` or at CLI import time.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .architecture import ClassifierConfig, LMConfig, Seq2SeqConfig, TaggerConfig

CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
State = tuple[torch.Tensor, ...]  # (h,) or (h, c), each (layers, B, H)


class AttentionPooling(nn.Module):
    """Additive self-attention over time (Bahdanau-style scoring, Yang et al. 2016 pooling)."""

    def __init__(self, width: int):
        super().__init__()
        self.proj = nn.Linear(width, width)
        self.v = nn.Linear(width, 1, bias=False)

    def weights(self, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, T) softmax over each row's real tokens: what the pooling sums by (``explain``'s oracle)."""
        scores = self.v(torch.tanh(self.proj(y))).squeeze(-1)  # (B, T)
        scores = scores.masked_fill(~mask, float("-inf"))
        return torch.softmax(scores, dim=1)

    def forward(self, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        alpha = self.weights(y, mask)  # (B, T)
        return (alpha.unsqueeze(-1) * y).sum(dim=1)  # (B, D*H)


class RecurrentClassifier(nn.Module):
    def __init__(self, config: ClassifierConfig):
        super().__init__()
        self.config = config
        c = config
        self.embedding = nn.Embedding(c.vocab_size, c.embed, padding_idx=c.padding_idx)
        kwargs = dict(
            num_layers=c.layers,
            batch_first=True,
            bidirectional=c.bidirectional,
            dropout=c.dropout if c.layers > 1 else 0.0,
        )
        self.rnn = CELLS[c.cell](c.embed, c.hidden, **kwargs)
        width = c.hidden * c.directions
        self.attention = AttentionPooling(width) if c.pooling == "attention" else None
        self.dropout = nn.Dropout(c.dropout)
        self.head = nn.Linear(width, c.num_labels)

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """input_ids (B, T) int64 padded with <pad>; lengths (B,) >= 1 -> logits (B, num_labels)."""
        c = self.config
        batch, time = input_ids.shape
        x = self.dropout(self.embedding(input_ids))  # (B, T, E)
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, state = self.rnn(packed)
        if c.pooling == "last":
            h_n = state[0] if c.cell == "lstm" else state  # (L*D, B, H)
            # forward: state at each row's last real token; reverse: state after reading back to t=0
            pooled = h_n[-c.directions :].transpose(0, 1).reshape(batch, -1)
        else:
            y, _ = pad_packed_sequence(out, batch_first=True, total_length=time)  # (B, T, D*H)
            mask = torch.arange(time, device=y.device)[None, :] < lengths.to(y.device)[:, None]
            if c.pooling == "mean":
                pooled = (y * mask.unsqueeze(-1)).sum(1) / lengths.to(y.dtype).unsqueeze(-1)
            elif c.pooling == "max":
                pooled = y.masked_fill(~mask.unsqueeze(-1), float("-inf")).max(dim=1).values
            else:
                pooled = self.attention(y, mask)
        return self.head(self.dropout(pooled))


class RecurrentTagger(nn.Module):
    def __init__(self, config: TaggerConfig):
        super().__init__()
        self.config = c = config
        self.embedding = nn.Embedding(c.vocab_size, c.embed, padding_idx=c.padding_idx)
        if c.use_chars:
            self.char_embedding = nn.Embedding(c.char_vocab_size, c.char_embed, padding_idx=0)
            self.char_conv = nn.Conv1d(c.char_embed, c.char_filters, c.char_kernel, padding=c.char_kernel // 2)
        kwargs = dict(
            num_layers=c.layers,
            batch_first=True,
            bidirectional=c.bidirectional,
            dropout=c.dropout if c.layers > 1 else 0.0,
        )
        self.rnn = CELLS[c.cell](c.input_width, c.hidden, **kwargs)
        self.dropout = nn.Dropout(c.dropout)
        self.head = nn.Linear(c.hidden * c.directions, c.num_tags)

    def char_features(self, char_ids: torch.Tensor) -> torch.Tensor:
        """char_ids (B, T, C) int64, 0 = padding -> (B, T, F); all-padding words -> 0."""
        b, t, c = char_ids.shape
        flat = char_ids.reshape(b * t, c)
        e = self.char_embedding(flat).transpose(1, 2)  # (N, Ec, C)
        conv = self.char_conv(e)  # (N, F, C)
        mask = (flat != 0).unsqueeze(1)  # (N, 1, C)
        best = conv.masked_fill(~mask, float("-inf")).max(dim=2).values  # (N, F)
        feats = torch.where(mask.any(dim=2), torch.tanh(best), torch.zeros_like(best))
        return feats.reshape(b, t, -1)

    def forward(
        self, input_ids: torch.Tensor, lengths: torch.Tensor, char_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """input_ids (B, T) int64 padded with <pad>; lengths (B,) >= 1; char_ids (B, T, C) or None
        -> logits (B, T, num_tags), 0 at t >= lengths[b]."""
        c = self.config
        batch, time = input_ids.shape
        if c.use_chars != (char_ids is not None):
            raise ValueError(
                "char_ids must be given exactly when the model has character features "
                f"(char_vocab_size={c.char_vocab_size})"
            )
        lengths = lengths.to("cpu", torch.int64)
        if batch and int(lengths.min()) < 1:
            raise ValueError(
                f"every sentence needs >= 1 token, got lengths {lengths.tolist()} "
                "-- drop empty sentences before calling the model"
            )
        x = self.embedding(input_ids)  # (B, T, E)
        if char_ids is not None:
            if char_ids.shape[:2] != input_ids.shape:
                raise ValueError(f"char_ids has shape {tuple(char_ids.shape)}, expected ({batch}, {time}, chars)")
            x = torch.cat([x, self.char_features(char_ids)], dim=-1)  # (B, T, E+F)
        x = self.dropout(x)
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.rnn(packed)
        y, _ = pad_packed_sequence(out, batch_first=True, total_length=time)  # (B, T, D*H)
        logits = self.head(self.dropout(y))  # (B, T, K)
        mask = torch.arange(time)[None, :] < lengths[:, None]  # (B, T)
        return logits.masked_fill(~mask.to(logits.device).unsqueeze(-1), 0.0)


class RecurrentLM(nn.Module):
    def __init__(self, config: LMConfig):
        super().__init__()
        self.config = c = config
        self.embedding = nn.Embedding(c.vocab_size, c.embed, padding_idx=c.padding_idx)
        self.rnn = CELLS[c.cell](
            c.embed, c.hidden, num_layers=c.layers, batch_first=True, dropout=c.dropout if c.layers > 1 else 0.0
        )
        self.dropout = nn.Dropout(c.dropout)
        self.head = nn.Linear(c.hidden, c.vocab_size)

    def initial_state(self, batch: int) -> State:
        c = self.config
        zeros = torch.zeros(c.layers, batch, c.hidden)
        return (zeros, zeros.clone()) if c.cell == "lstm" else (zeros,)

    def forward(
        self, input_ids: torch.Tensor, lengths: torch.Tensor | None = None, state: State | None = None
    ) -> tuple[torch.Tensor, State]:
        """input_ids (B, T) int64; lengths (B,) >= 1 or None (all T); state or None (zeros)
        -> logits (B, T, V), state after each row's last real token."""
        batch, time = input_ids.shape
        state = state if state is not None else self.initial_state(batch)
        hx = state if self.config.cell == "lstm" else state[0]
        x = self.dropout(self.embedding(input_ids))  # (B, T, E)
        if lengths is None:
            y, out = self.rnn(x, hx)  # (B, T, H)
        else:
            packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
            y, out = self.rnn(packed, hx)
            y, _ = pad_packed_sequence(y, batch_first=True, total_length=time)
        logits = self.head(self.dropout(y))  # (B, T, V)
        if lengths is not None:
            mask = torch.arange(time)[None, :] < lengths[:, None]
            logits = logits.masked_fill(~mask[..., None], 0.0)
        return logits, (tuple(out) if isinstance(out, tuple) else (out,))


class Attention(nn.Module):
    """Scores decoder outputs against precomputed keys and mixes ``memory`` into ``h~``."""

    def __init__(self, kind: str, hidden: int):
        super().__init__()
        self.kind = kind
        if kind == "dot":
            self.key = nn.Linear(hidden, hidden, bias=False)  # W_a
        else:
            self.key = nn.Linear(hidden, hidden, bias=False)  # W_k
            self.query = nn.Linear(hidden, hidden)  # W_q (+ bias)
            self.v = nn.Linear(hidden, 1, bias=False)
        self.combine = nn.Linear(2 * hidden, hidden)  # W_c over [c_t; h_t]

    def keys(self, memory: torch.Tensor) -> torch.Tensor:
        return self.key(memory)  # (B, S, hidden)

    def forward(
        self, h: torch.Tensor, memory: torch.Tensor, keys: torch.Tensor, source_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """h (B, T, H), memory/keys (B, S, H), source_mask (B, S) bool -> (h~ (B, T, H), weights (B, T, S))."""
        if self.kind == "dot":
            scores = torch.bmm(h, keys.transpose(1, 2))  # (B, T, S)
        else:
            e = torch.tanh(self.query(h).unsqueeze(2) + keys.unsqueeze(1))  # (B, T, S, H)
            scores = self.v(e).squeeze(-1)  # (B, T, S)
        scores = scores.masked_fill(~source_mask.unsqueeze(1), float("-inf"))
        weights = torch.softmax(scores, dim=-1)
        context = torch.bmm(weights, memory)  # (B, T, H)
        return torch.tanh(self.combine(torch.cat([context, h], dim=-1))), weights


class Seq2Seq(nn.Module):
    def __init__(self, config: Seq2SeqConfig):
        super().__init__()
        self.config = c = config
        self.source_embedding = nn.Embedding(c.source_vocab_size, c.embed, padding_idx=c.padding_idx)
        self.target_embedding = nn.Embedding(c.target_vocab_size, c.embed, padding_idx=c.padding_idx)
        drop = c.dropout if c.layers > 1 else 0.0
        self.encoder = CELLS[c.cell](
            c.embed,
            c.encoder_hidden,
            num_layers=c.layers,
            batch_first=True,
            bidirectional=c.bidirectional,
            dropout=drop,
        )
        self.decoder = CELLS[c.cell](c.embed, c.hidden, num_layers=c.layers, batch_first=True, dropout=drop)
        self.attention = Attention(c.attention, c.hidden) if c.attention != "none" else None
        self.dropout = nn.Dropout(c.dropout)
        self.head = nn.Linear(c.hidden, c.target_vocab_size)

    # -- encoder ---------------------------------------------------------------------------

    def encode(
        self, source_ids: torch.Tensor, source_lens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, State]:
        """source_ids (B, S) int64 padded with <pad>; source_lens (B,) >= 1
        -> memory (B, S, hidden) (0 past each length), keys (B, S, hidden) or None, decoder initial state."""
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

    def decode(
        self,
        input_ids: torch.Tensor,
        state: State,
        memory: torch.Tensor,
        keys: torch.Tensor | None,
        source_lens: torch.Tensor,
    ) -> tuple[torch.Tensor, State, torch.Tensor | None]:
        """input_ids (B, T): the previous target tokens (<s> first); state from ``encode`` or the
        last call -> logits (B, T, V), the state after the T tokens, attention weights (B, T, S) or None.

        One step is T = 1; teacher forcing passes the whole shifted target at once."""
        c = self.config
        x = self.dropout(self.target_embedding(input_ids))
        hx = state if c.cell == "lstm" else state[0]
        y, final = self.decoder(x, hx)  # (B, T, H)
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
