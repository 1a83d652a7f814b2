"""PyTorch models rnnkit trains: a recurrent text classifier (many-to-one).

The module layout (``embedding`` -> ``rnn`` -> pooling -> ``head``) is the contract the
exporter reads (``rnnkit.export.graph``): it writes the same computation as native ONNX
RNN/LSTM/GRU ops from these weights.  Padded batches go through
``pack_padded_sequence`` so every row gives exactly what it gives alone.

Imports torch; never imported by ``rnnkit.runtime`` or at CLI import time.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .configs import POOLINGS as POOLINGS, ClassifierConfig as ClassifierConfig

CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


class AttentionPooling(nn.Module):
    """Additive self-attention over time (Bahdanau-style scoring, Yang et al. 2016 pooling)."""

    def __init__(self, width: int):
        super().__init__()
        self.proj = nn.Linear(width, width)
        self.v = nn.Linear(width, 1, bias=False)

    def forward(self, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        scores = self.v(torch.tanh(self.proj(y))).squeeze(-1)        # (B, T)
        scores = scores.masked_fill(~mask, float("-inf"))
        alpha = torch.softmax(scores, dim=1)                         # (B, T)
        return (alpha.unsqueeze(-1) * y).sum(dim=1)                  # (B, D*H)


class RecurrentClassifier(nn.Module):
    def __init__(self, config: ClassifierConfig):
        super().__init__()
        self.config = config
        c = config
        self.embedding = nn.Embedding(c.vocab_size, c.embed, padding_idx=c.padding_idx)
        kwargs = dict(num_layers=c.layers, batch_first=True, bidirectional=c.bidirectional,
                      dropout=c.dropout if c.layers > 1 else 0.0)
        self.rnn = CELLS[c.cell](c.embed, c.hidden, **kwargs)
        width = c.hidden * c.directions
        self.attention = AttentionPooling(width) if c.pooling == "attention" else None
        self.dropout = nn.Dropout(c.dropout)
        self.head = nn.Linear(width, c.num_labels)

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """input_ids (B, T) int64 padded with <pad>; lengths (B,) >= 1 -> logits (B, num_labels)."""
        c = self.config
        batch, time = input_ids.shape
        x = self.dropout(self.embedding(input_ids))                   # (B, T, E)
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, state = self.rnn(packed)
        if c.pooling == "last":
            h_n = state[0] if c.cell == "lstm" else state             # (L*D, B, H)
            # forward: state at each row's last real token; reverse: state after reading back to t=0
            pooled = h_n[-c.directions:].transpose(0, 1).reshape(batch, -1)
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
