"""PyTorch recurrent language model: embedding -> unidirectional RNN/LSTM/GRU stack -> vocabulary head.

The module layout (``embedding``, ``rnn``, ``head``) is the contract ``rnnkit.export.graph_lm``
reads to write the same step function as native ONNX ops.  ``forward(ids, lengths, state)``
takes and returns the recurrent state explicitly (``(h, c)`` for LSTM, ``(h,)`` otherwise, each
``(layers, B, H)``), exactly the exported graph's ``initial_* -> final_*``; ragged batches go
through ``pack_padded_sequence`` so ``final_*`` is the state after each row's last real token,
and logits past a row's length are 0.

Imports torch; never imported by ``rnnkit.runtime`` or at CLI import time.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .configs import LMConfig as LMConfig
from .models import CELLS

State = tuple[torch.Tensor, ...]  # (h,) or (h, c), each (layers, B, H)


class RecurrentLM(nn.Module):
    def __init__(self, config: LMConfig):
        super().__init__()
        self.config = c = config
        self.embedding = nn.Embedding(c.vocab_size, c.embed, padding_idx=c.padding_idx)
        self.rnn = CELLS[c.cell](c.embed, c.hidden, num_layers=c.layers, batch_first=True,
                                 dropout=c.dropout if c.layers > 1 else 0.0)
        self.dropout = nn.Dropout(c.dropout)
        self.head = nn.Linear(c.hidden, c.vocab_size)

    def initial_state(self, batch: int) -> State:
        c = self.config
        zeros = torch.zeros(c.layers, batch, c.hidden)
        return (zeros, zeros.clone()) if c.cell == "lstm" else (zeros,)

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor | None = None,
                state: State | None = None) -> tuple[torch.Tensor, State]:
        """input_ids (B, T) int64; lengths (B,) >= 1 or None (all T); state or None (zeros)
        -> logits (B, T, V), state after each row's last real token."""
        batch, time = input_ids.shape
        state = state if state is not None else self.initial_state(batch)
        hx = state if self.config.cell == "lstm" else state[0]
        x = self.dropout(self.embedding(input_ids))                        # (B, T, E)
        if lengths is None:
            y, out = self.rnn(x, hx)                                       # (B, T, H)
        else:
            packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
            y, out = self.rnn(packed, hx)
            y, _ = pad_packed_sequence(y, batch_first=True, total_length=time)
        logits = self.head(self.dropout(y))                                # (B, T, V)
        if lengths is not None:
            mask = torch.arange(time)[None, :] < lengths[:, None]
            logits = logits.masked_fill(~mask[..., None], 0.0)
        return logits, (tuple(out) if isinstance(out, tuple) else (out,))
